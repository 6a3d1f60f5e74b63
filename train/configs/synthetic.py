"""Offline default: ResNet18 from scratch on generated cell images (no network, no files).

  python -m scripts.train --config train/configs/synthetic.py --workdir /tmp/zoo_demo
  python -m scripts.evaluate --workdir /tmp/zoo_demo

Measured: 96.25% test accuracy (sensitivity 0.93, specificity 1.00 for parasitized),
1m45s of CPU time, 4.5 min wall on the 2-core machine shared with other jobs.
"""

from train.configs import base


def get_config():
    """ResNet18 from scratch on 1,600 synthetic cells at 32 px, 3 epochs."""
    c = base.get_config()
    c.model.name = "resnet18"
    c.policy = "scratch"
    c.data.source = "synthetic"
    c.data.synthetic_size = 1600
    c.data.image_size = 32
    c.data.group_regex = r"^(S\d+)_IMG"
    c.data.augment.hflip = True
    c.data.augment.vflip = True
    c.batch_size = 32
    c.epochs = 3
    c.learning_rate = 2e-3
    c.positive_class = "parasitized"
    return base.locked(c)

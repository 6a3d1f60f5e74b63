"""Offline default: ResNet18 from scratch on generated cell images (no network, no files).

  python -m scripts.train --config train/configs/synthetic.py --workdir /tmp/zoo_demo
  python -m scripts.evaluate --workdir /tmp/zoo_demo

Expected: about 98% test accuracy in a couple of minutes on a 2-core CPU (see BENCHMARKS.md).
"""

from train.configs import base


def get_config():
    """Synthetic cells, 48 px, squeezenet-sized budget."""
    c = base.get_config()
    c.model.name = "resnet18"
    c.policy = "scratch"
    c.data.source = "synthetic"
    c.data.synthetic_size = 1600
    c.data.image_size = 48
    c.data.group_regex = r"^(S\d+)_IMG"
    c.data.augment.hflip = True
    c.data.augment.vflip = True
    c.batch_size = 32
    c.epochs = 3
    c.learning_rate = 2e-3
    c.positive_class = "parasitized"
    return base.locked(c)

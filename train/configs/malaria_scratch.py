"""Malaria cells from scratch at a small resolution (any zoo family), grouped by slide.

  python -m scripts.train --config train/configs/malaria_scratch.py --workdir /tmp/m_sq \
      --config.data.source=folder:../shared/data/malaria/cell_images \
      [--config.model.name=resnet18 --config.head.kind=reference]

Measured numbers for each family are in BENCHMARKS.md (malaria section).
"""

from train.configs import base


def get_config():
    """SqueezeNet 1.1 from scratch at 64 px, 4 epochs, flips and 90-degree rotations."""
    c = base.get_config()
    c.model.name = "squeezenet1_1"
    # SqueezeNet's own head (1x1 conv -> ReLU -> pool) died from scratch here (loss stuck
    # at ln 2); a dense head on the pooled features learns at once.
    c.head.kind = "mlp"
    c.policy = "scratch"
    c.data.source = "folder:../shared/data/malaria/cell_images"
    c.data.image_size = 64
    c.data.group_regex = r"^(.+?)_IMG"  # slide prefix, e.g. C100P61ThinF
    c.data.augment.hflip = True
    c.data.augment.vflip = True
    c.data.augment.rotate90 = True
    c.batch_size = 64
    c.epochs = 4
    c.learning_rate = 1e-3
    c.positive_class = "parasitized"
    return base.locked(c)

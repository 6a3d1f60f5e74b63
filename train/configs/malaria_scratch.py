"""Malaria cells from scratch at a small resolution (any zoo family), grouped by slide.

  python -m scripts.train --config train/configs/malaria_scratch.py --workdir /tmp/m_r18 \
      --config.data.source=folder:../shared/data/malaria/cell_images \
      [--config.model.name=squeezenet1_1 --config.data.image_size=64]

Measured numbers for each family are in BENCHMARKS_malaria.md.
"""

from train.configs import base


def get_config():
    """ResNet18 from scratch at 32 px, 4 epochs, flips and 90-degree rotations."""
    c = base.get_config()
    c.model.name = "resnet18"
    c.policy = "scratch"
    c.data.source = "folder:../shared/data/malaria/cell_images"
    c.data.image_size = 32
    c.data.group_regex = r"^(.+?)_IMG"  # slide prefix, e.g. C100P61ThinF
    c.data.augment.hflip = True
    c.data.augment.vflip = True
    c.data.augment.rotate90 = True
    c.batch_size = 64
    c.epochs = 4
    c.learning_rate = 1e-3
    c.positive_class = "parasitized"
    return base.locked(c)

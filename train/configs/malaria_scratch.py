"""Malaria cells from scratch at a small resolution (any zoo family), grouped by slide.

  transfer-zoo train --config malaria_scratch --workdir runs/m_sq \
      [--config.model.name=resnet18 --config.head.kind=reference]

The data is NIH's ``cell_images.zip`` (downloaded once, verified, cached; split by
patient slide), or a local copy: ``--config.data.source=malaria:<zip or folder>`` or
``folder:<cell_images dir>``; ``--config malaria_scratch:tfds`` reads tfds ``malaria``
(stratified by cell, not patient-disjoint). Measured numbers for each family are in
BENCHMARKS.md (malaria section).
"""

from train.configs import base
from train.configs.malaria import malaria_data


def get_config(source: str = ""):
    """SqueezeNet 1.1 from scratch at 64 px, 4 epochs, flips and 90-degree rotations."""
    c = base.get_config()
    c.model.name = "squeezenet1_1"
    # SqueezeNet's own head (1x1 conv -> ReLU -> pool) died from scratch here (loss stuck
    # at ln 2); a dense head on the pooled features learns at once.
    c.head.kind = "mlp"
    c.policy = "scratch"
    malaria_data(c, source)
    c.data.image_size = 64
    c.data.augment.hflip = True
    c.data.augment.vflip = True
    c.data.augment.rotate90 = True
    c.batch_size = 64
    c.epochs = 4
    c.learning_rate = 1e-3
    c.positive_class = "parasitized"
    return base.locked(c)

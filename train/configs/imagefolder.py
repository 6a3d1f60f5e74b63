"""Any folder of class subfolders (``root/<class>/*.png``), transfer from reference weights.

  transfer-zoo train --config imagefolder --workdir runs/mine \
      --config.data.source=folder:/path/to/root [--config.init=weights.h5 offline]

Defaults: stratified 80/10/10 split, the backbone frozen and a small MLP head trained.
"""

from train.configs import base


def get_config():
    """Frozen backbone + MLP head at the model's usual input size."""
    c = base.get_config()
    c.model.name = "resnet18"
    c.head.kind = "mlp"
    c.init = "imagenet"  # the model's reference weights (downloaded once, cached)
    c.policy = "frozen"
    c.data.source = "folder:."
    c.data.image_size = 224
    c.data.augment.hflip = True
    c.data.augment.crop_scale = 0.8
    c.batch_size = 32
    c.epochs = 5
    c.learning_rate = 1e-3
    return base.locked(c)

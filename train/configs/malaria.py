"""The seed task: malaria cell images, patient-disjoint splits by slide.

  python -m scripts.train --config train/configs/malaria.py --workdir /tmp/malaria \
      --config.data.source=folder:../shared/data/malaria/cell_images
  python -m scripts.evaluate --workdir /tmp/malaria --data folder:<other patients' images>

Online, ``--config.data.source=tfds:malaria`` reads the tfds copy (it has no file names,
so set ``--config.data.group_regex=''`` there: stratified, not patient-disjoint).
"""

from train.configs import base


def get_config():
    """ResNet18 from scratch at 64 px, grouped by slide; issue 6 tunes these defaults."""
    c = base.get_config()
    c.model.name = "resnet18"
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

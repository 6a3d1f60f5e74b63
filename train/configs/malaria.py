"""The seed task: malaria cell images, patient-disjoint splits by slide.

Best recipe found (BENCHMARKS_malaria.md): MobileNetV2-0.35 with ImageNet weights at
128 px, two stages in one command: the head on cached frozen features, then fine-tuning.

  python -m scripts.train --config train/configs/malaria.py --workdir /tmp/malaria \
      --config.init=../shared/weights/keras_mobilenet_v2_0.35_224_imagenet_backbone_in_model.h5
  python -m scripts.evaluate --workdir /tmp/malaria --data folder:<other patients' images>

Online, ``config.init='imagenet'`` (the default) downloads the reference weights;
``--config.data.source=tfds:malaria`` reads the tfds copy (it has no file names, so set
``--config.data.group_regex=''`` there: stratified, not patient-disjoint). From-scratch
recipes for the other families: ``train/configs/malaria_scratch.py``.
"""

from train.configs import base


def get_config():
    """MobileNetV2-0.35, ImageNet init, 128 px: frozen head stage, then fine-tuning."""
    c = base.get_config()
    c.model.name = "mobilenetv2"
    c.model.alpha = 0.35
    c.init = "imagenet"
    c.policy = "frozen"
    c.data.source = "folder:../shared/data/malaria/cell_images"
    c.data.image_size = 128
    c.data.group_regex = r"^(.+?)_IMG"  # slide prefix, e.g. C100P61ThinF
    c.data.augment.hflip = True
    c.data.augment.vflip = True
    c.data.augment.rotate90 = True
    # Stage 1 trains the head on cached features (no augmentation); stage 2 fine-tunes
    # stage4..final (backbone at backbone_lr_scale x 1e-3) with batch norm on running stats.
    c.stages = ("frozen epochs=10 augment=off learning_rate=1e-3; "
                "finetune:4 epochs=3 learning_rate=1e-3 freeze_bn_stats=true")
    c.batch_size = 64
    c.epochs = 3
    c.learning_rate = 1e-3
    c.positive_class = "parasitized"
    return base.locked(c)

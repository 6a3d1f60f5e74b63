"""The seed task: malaria cell images, patient-disjoint splits by slide.

Best recipe found (BENCHMARKS.md): MobileNetV2-0.35 with ImageNet weights at 128 px, two
stages in one command: the head on cached frozen features, then fine-tuning.

  transfer-zoo train --config malaria --workdir runs/malaria
  transfer-zoo evaluate --workdir runs/malaria [--data folder:<other patients' images>]

Online, the defaults download what they need once (verified, cached): NIH's official
``cell_images.zip`` (``data.source='malaria'``, 27,558 cells, read with
their file names so that the split is by patient slide) and the Keras ImageNet weights
(``init='imagenet'``). Offline, point them at local copies:

  transfer-zoo train --config malaria --workdir runs/malaria \
      --config.data.source=malaria:/path/to/cell_images.zip \
      --config.init=/path/to/mobilenet_v2_weights.h5     # or folder:<cell_images dir>

``--config malaria:tfds`` reads tfds ``malaria`` instead: it has no file names, so that
split is stratified by cell, not patient-disjoint (optimistic: patients leak into the
test split). From-scratch recipes for the other families: ``malaria_scratch``.
"""

from train.configs import base


def get_config(source: str = ""):
    """MobileNetV2-0.35, ImageNet init, 128 px: frozen head stage, then fine-tuning.

    ``source``: '' (NIH's zip, split by patient) or 'tfds' (tfds malaria, stratified).
    """
    c = base.get_config()
    c.model.name = "mobilenetv2"
    c.model.alpha = 0.35
    c.init = "imagenet"
    c.policy = "frozen"
    malaria_data(c, source)
    c.data.image_size = 128
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


def malaria_data(c, source: str = "") -> None:
    """The malaria data keys: NIH's zip grouped by slide, or tfds (``source='tfds'``)."""
    if source not in ("", "tfds"):
        raise ValueError(f"malaria recipe argument {source!r}: use '' (NIH's cell_images.zip, "
                         "split by patient) or 'tfds' (tfds malaria, not patient-disjoint)")
    if source == "tfds":
        c.data.source = "tfds:malaria"
        c.data.group_regex = ""  # tfds carries no file names: stratified by cell
    else:
        c.data.source = "malaria"
        c.data.group_regex = r"^(.+?)_IMG"  # slide prefix, e.g. C100P61ThinF

"""BCCD blood-cell detection (RBC, WBC, Platelets): YOLOv3 neck and head on an ImageNet
MobileNetV2-0.35, fine-tuned on 205 images, evaluated on the 87 of ``val``.

  transfer-zoo train --config bccd_yolo --workdir /tmp/bccd_yolo
  transfer-zoo evaluate --workdir /tmp/bccd_yolo --split test
  transfer-zoo detect --workdir /tmp/bccd_yolo IMAGE.jpg --out DIR

Online, the defaults download what they need once (verified, cached): the BCCD_Dataset
repository at a pinned commit (``data.source='bccd'``: its own train/val/test split,
``train/public.py``) and the Keras ImageNet weights of MobileNetV2-0.35 (``init='imagenet'``).
Offline, point them at local copies; the figures below were measured with the development
machines' copies:

  python -m scripts.train --config bccd_yolo --workdir /tmp/bccd_yolo \
      --config.data.source=voc:../shared/data/bccd \
      --config.init=../shared/weights/keras_mobilenet_v2_0.35_224_imagenet_backbone_in_model.h5

The backbone's batch norm keeps the ImageNet statistics (Detectron-style frozen BN,
``policy``) while every parameter trains: the backbone at a tenth of the rate, the new neck
and head at the full one. Anchors by k-means on the training boxes at 320x416.

Expected (BENCHMARKS.md): validation VOC mAP@0.5 0.912 (RBC 0.867, WBC 0.991, Platelets
0.877), COCO AP 0.517, after 2,000 steps: 33 minutes at the ~10 images/s it trains on this
2-core CPU (YOLOv3 in PyTorch on the same split: 0.918). ``tests/test_recipes.py`` guards a
150-step version.
"""

from train.configs import base


def get_config():
    """yolo_mobilenetv2 (alpha 0.35), 3 scales, 320x416 letterbox, bf16 compute."""
    c = base.get_config()
    c.model.name = "yolo_mobilenetv2"
    c.model.backbone_options = (("alpha", 0.35),)
    # three scales, strides 32, 16 and 8: the stride-8 one gets the platelet-sized anchors
    c.model.widths = (128, 64, 32)
    c.model.bn_momentum = 0.9  # the new neck's BN statistics settle within ~50 steps
    c.init = "imagenet"  # the backbone's Keras ImageNet weights
    # everything trains; backbone BN layers run on their ImageNet statistics
    c.policy = r"regex:^(?!backbone/.*/mean$)"
    # The pretrained backbone at a tenth of the rate, the new neck and head at the full
    # rate. At the full rate (AdamW 2e-3) the backbone's last layer (1x1 conv, batch norm
    # on fixed ImageNet statistics, ReLU6) died channel by channel: 1,111 of its 1,280
    # channels vary over BCCD images at the ImageNet weights, 16 after 200 steps, none
    # after 1,075, and the stride-32 scale then saw a constant (validation mAP 0.000,
    # issue 24). At 0.1x, 754 are alive after 2,000 steps.
    c.backbone_lr_scale = 0.1
    c.full_rate_groups = "neck"
    # PreciseBN before each validation (train/precise_bn.py): at the peak learning rate the
    # first neck batch norm's moving averages lag its weights by ~6 batch standard
    # deviations, and validation on them read mAP@0.5 0.0004 where recomputed statistics
    # give 0.27 (the "collapse to 0.000" of issue 24); the checkpoints keep the recomputed.
    c.recompute_bn_batches = 16
    c.data.source = "bccd"  # the public BCCD_Dataset, downloaded once (or voc:<folder>)
    c.data.image_size = 320
    c.detection.image_width = 416
    c.detection.classes = ("RBC", "WBC", "Platelets")
    c.detection.val_split = "val"
    c.detection.max_boxes = 60
    c.detection.box_loss = "giou"
    c.detection.match_threshold = 0.25
    c.detection.scale = 0.3
    c.detection.aspect = 0.2
    c.detection.translate = True
    c.detection.eval_every = 4
    c.data.augment.hflip = True
    c.data.augment.vflip = True
    c.data.augment.brightness = 0.2
    c.data.augment.contrast = 0.2
    c.data.augment.saturation = 0.2
    c.batch_size = 8
    c.epochs = 80  # 2,000 steps
    c.optimizer = "adamw"
    c.learning_rate = 2e-3
    c.warmup_steps = 100
    c.weight_decay = 5e-4
    c.grad_clip = 10.0
    c.dtype = "bfloat16"
    c.best_metric = "voc_map50"
    c.checkpoint_every_steps = 100
    c.log_every_steps = 25
    return base.locked(c)

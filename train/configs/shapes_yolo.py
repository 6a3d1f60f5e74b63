"""Detection demo, offline: YOLOv3-tiny learns circles, squares and triangles.

  python -m scripts.train --config train/configs/shapes_yolo.py --workdir /tmp/shapes_yolo
  python -m scripts.detect --workdir /tmp/shapes_yolo IMAGE.png --out /tmp/shapes_yolo/png

Generated images (``train/detection/data.py``: 128 px, 1-4 shapes each), anchors by
k-means on the training boxes, random weights. Expected: validation VOC mAP@0.5 0.92
(200 other generated images) after the 8 epochs, about 3 minutes on 2 free CPU cores.
"""

from train.configs import base


def get_config():
    """YOLOv3-tiny from scratch at 128 px on 1,000 generated images."""
    c = base.get_config()
    c.model.name = "yolov3_tiny"
    c.model.bn_momentum = 0.9  # Darknet's 0.99 settles too slowly for a few hundred steps
    c.policy = "scratch"
    c.data.source = "shapes"
    c.data.image_size = 128
    c.data.synthetic_size = 1000  # training images; val and test get as many
    c.data.augment.hflip = True
    c.detection.box_loss = "giou"
    c.detection.match_threshold = 0.3
    c.detection.scale = 0.2
    c.detection.translate = True
    c.detection.max_boxes = 8
    c.batch_size = 16
    c.epochs = 8
    c.learning_rate = 2e-3
    c.warmup_steps = 50
    c.weight_decay = 5e-4
    c.grad_clip = 10.0
    c.dtype = "bfloat16"
    c.best_metric = "voc_map50"
    c.log_every_steps = 20
    return base.locked(c)

"""Every key a training run understands, with defaults; recipes change values, never add keys.

``python -m scripts.train --config train/configs/<recipe>.py --config.key=value --workdir DIR``.
The config is locked: a misspelt ``--config.batchsize`` is an error that names the key.

Re-running a command on its workdir resumes the run only with the same config, apart from
the keys that change how it reports, checkpoints and reads its data, never what it
computes (``train.workdir.RESUMABLE``: progress, log_every_steps, checkpoint_every_steps,
keep_checkpoints, num_devices, features_dir, data.workers/processes/prefetch/cache/
cache_mb/download/tfds_data_dir, target_sensitivity). Anything else (epochs included: the
learning-rate schedule spans them) is refused; use a new workdir
(``--config.init=<old workdir>`` to go on from it) or ``--overwrite``.
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """The shared defaults of all recipes (a small model on the offline synthetic cells)."""
    c = ml_collections.ConfigDict()
    # Model: `name` is a zoo name; every other key under `model` goes to zoo.create().
    c.model = ml_collections.ConfigDict({"name": "resnet18"})
    # Classifier for the new task, always under the `head` path: `reference` (the model's
    # own top) or `mlp` (global pool -> dense -> activation -> dropout -> dense).
    c.head = ml_collections.ConfigDict(
        {"kind": "reference", "hidden": 256, "activation": "relu", "dropout": 0.2}
    )
    # '' = random weights; a directory = an orbax checkpoint (a training workdir, its
    # checkpoints/ folder, or a pytree of {'params', 'batch_stats'}); 'imagenet' (the
    # model's reference weights), 'keras', 'torchvision' or a weights file (.h5, .pth,
    # .safetensors) = through zoo.pretrained (train.checkpoint.PRETRAINED).
    c.init = ""
    c.init_head = False  # also take `head/` from config.init (same task, same classes)
    # Freezing: frozen | finetune | finetune:N | full | scratch | regex:<trainable path regex>.
    c.policy = "full"
    c.finetune_groups = 2  # finetune: the top N spec groups below the head train too
    c.backbone_lr_scale = 0.1  # learning-rate factor for trainable non-head parameters
    # spec groups that train at the head's full rate although they are not the head, ','-
    # separated: the new layers of a model whose backbone init loads (a detector's 'neck')
    c.full_rate_groups = ""
    # Every batch norm on its running statistics, even where its scale/bias train (the Keras
    # fine-tuning advice: batch statistics of a small new dataset disturb pretrained ones).
    c.freeze_bn_stats = False
    # PreciseBN (train/precise_bn.py): before each validation, the running statistics of the
    # batch norms that train become the mean batch statistics of the current weights over
    # this many training batches (the epoch's last ones); 0 = the moving averages as they
    # are. For short runs from scratch with Keras' momenta (0.99, 0.999), whose averages lag.
    c.recompute_bn_batches = 0
    # Policy 'frozen' with augmentation off: compute the backbone's pooled features once per
    # example and train the head on them (train/features.py); '' dir = <workdir>/features.
    c.cache_features = True
    c.features_dir = ""
    # Several stages in one command, ';'-separated, each 'POLICY key=value ...' over these
    # keys, e.g. 'frozen epochs=5 augment=off; finetune:4 epochs=3 learning_rate=1e-4'
    # (train/stages.py); '' = one stage from the keys above.
    c.stages = ""

    c.optimizer = "adamw"  # adamw | adam | sgd (momentum 0.9, nesterov)
    c.learning_rate = 1e-3
    c.weight_decay = 1e-4  # decoupled, on kernels (ndim > 1) of trainable parameters only
    c.schedule = "cosine"  # cosine | constant
    c.warmup_steps = 0
    c.label_smoothing = 0.0
    c.grad_clip = 0.0  # global-norm clipping of trainable gradients; 0 = off

    c.batch_size = 64  # global, over all devices and processes
    c.epochs = 3
    c.max_steps = 0  # stop after this many steps in total (0 = epochs decide)
    c.seed = 0
    c.dtype = "float32"  # float32 | bfloat16 (compute; parameters stay float32)
    c.num_devices = 0  # 0 = all devices of all processes

    c.data = ml_collections.ConfigDict()
    # synthetic | malaria[:<zip or folder>] | folder:<path> | tfds:<name>
    c.data.source = "synthetic"
    c.data.image_size = 64
    c.data.splits = (0.8, 0.1, 0.1)  # train / validation / test fractions
    c.data.group_regex = ""  # group split key from file names; first group of the match
    c.data.limit = 0  # use at most this many examples (stratified subsample); 0 = all
    c.data.synthetic_size = 2000
    c.data.tfds_split = "train"
    c.data.tfds_data_dir = ""
    c.data.download = True  # tfds may download and prepare (online use)
    c.data.cache = True  # keep resized images in memory after the first epoch (threads only)
    c.data.cache_mb = 2048  # ... up to this many MiB (~14,000 images at 224 px)
    c.data.workers = 2  # decoding / augmentation threads (and folder-scan threads)
    # Worker processes for decoding / augmentation (grain); 0 = the threads above, in this
    # process; -1 = one per core beyond two, at most 8 (none on 2 cores, 1 on 3).
    c.data.processes = -1
    c.data.prefetch = 2  # batches prepared ahead, and copied onto the devices ahead
    c.data.augment = ml_collections.ConfigDict(
        {
            "hflip": True,
            "vflip": False,
            "rotate90": False,  # random multiples of 90 degrees
            "rotation": 0.0,  # random angle in [-rotation, rotation] degrees
            "crop_scale": 1.0,  # random resized crop keeping >= this area fraction
            "brightness": 0.0,  # factors in [1 - x, 1 + x]
            "contrast": 0.0,
            "saturation": 0.0,
            # apply the above inside the jitted step (GPU/TPU: the host only decodes and
            # resizes; train/device_augment.py); other random numbers than the host's
            "device": False,
        }
    )

    # Detectors (zoo spec task 'detection': yolov3, yolov3_tiny, yolo_<backbone>, yolov1)
    # train through the same loop (train/detection/task.py) with these keys; data.source is
    # then voc:<folder> | tfds:<name> (e.g. tfds:voc/2007) | shapes.
    c.detection = ml_collections.ConfigDict(
        {
            "classes": (),  # class names in label order; () = every name in the data, sorted
            "train_split": "train",  # the source's own splits (VOC ImageSets/Main/<split>.txt)
            "val_split": "val",
            "test_split": "",  # '' = the final evaluation uses val_split
            "image_height": 0,  # network input; 0 = data.image_size (multiples of 32)
            "image_width": 0,
            "max_boxes": 100,  # ground truth per image, padded (more are cut, with a warning)
            "anchors": (),  # per scale, coarsest first: ((w, h), ...) in input pixels
            "auto_anchors": True,  # anchors=(): k-means on the training boxes (else the model's)
            "box_loss": "mse",  # mse | giou | ciou
            "ignore_threshold": 0.5,
            "match_threshold": 0.0,  # > 0: also every anchor with a wh-IoU above it
            "box_weight": 1.0,
            "obj_weight": 1.0,
            "noobj_weight": 1.0,
            "cls_weight": 1.0,
            "scale": 0.0,  # augmentation: zoom in [1 - scale, 1 + scale]
            "aspect": 0.0,  # aspect-ratio jitter factor
            "translate": False,  # random placement of the (zoomed) image
            "score_threshold": 0.01,  # evaluation NMS
            "iou_threshold": 0.45,
            "max_detections": 100,
            "eval_every": 1,  # validation mAP every N epochs (and after the last)
        }
    )

    c.positive_class = ""  # sensitivity/specificity/ROC for this class ('' = class 0)
    c.target_sensitivity = 0.95  # evaluation: the threshold reaching it, and its specificity
    # A classifier's final test report (and `evaluate`'s default): test-time augmentation,
    # each image's probabilities averaged over its views: '' none, 'flips' (4), 'dihedral'
    # (8: flips and quarter turns). Validation (checkpoint choice) stays single-view.
    c.tta = ""
    c.best_metric = "accuracy"  # validation metric that picks the best checkpoint
    c.checkpoint_every_steps = 200
    c.keep_checkpoints = 2
    c.log_every_steps = 50
    c.progress = True  # progress bar with images/s and ETA on stderr
    return c


def locked(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Lock a recipe so that unknown keys are errors."""
    c.lock()
    return c


def override(c: ml_collections.ConfigDict, values: dict) -> ml_collections.ConfigDict:
    """Set dotted keys (``{'data.image_size': 96}``) on ``c``, as ``--config.<key>`` would;
    ``augment='off'``: :func:`augment_off` (a frozen run on cached features). A new key
    needs ``c`` unlocked (a locked one refuses it, naming it). Returns ``c``."""
    for key, value in values.items():
        if key == "augment":
            if value != "off":
                raise ValueError(f"augment={value!r}: only 'off' is known")
            augment_off(c)
            continue
        *parents, leaf = key.split(".")
        target = c
        for part in parents:
            target = target[part]
        target[leaf] = value
    return c


def augment_off(c: ml_collections.ConfigDict) -> None:
    """Every ``data.augment`` key to its default: no augmentation (``augment=off`` of a
    row here and of a stage in ``train.stages``)."""
    import dataclasses

    from train.pipeline import Augment

    for f in dataclasses.fields(Augment):
        c.data.augment[f.name] = f.default

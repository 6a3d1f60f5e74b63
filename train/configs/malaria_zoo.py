"""Every zoo classifier on the malaria cells, one row each: the per-family settings of the sweep.

  transfer-zoo train --config malaria_zoo:vgg16 --workdir runs/zoo/vgg16
  transfer-zoo sweep --config malaria_zoo --out runs/zoo [--rows vgg16,resnet50]

A row is ``malaria_zoo:<row>``: the shared settings (``malaria_scratch``'s: NIH's cells split
by patient slide, 64 px, flips and quarter turns, AdamW at 1e-3, 4 epochs; here with the
model's own head and batch-norm statistics recomputed before each validation) with the
row's own in :data:`FAMILIES`
(resolution above the model's minimum, head, learning rate, batch size): data, not code in
the sweep. Rows without weights train from scratch (the CPU here has ImageNet weights for
MobileNet v1 0.25 and v2 0.35 only); online, ``--config.init=imagenet
--config.policy=finetune`` turns any row into transfer learning. The ``*_imagenet_*`` rows
start from the published Keras weights (``init='imagenet'``: downloaded once, or put in
``$TRANSFER_ZOO_CACHE`` under the published file name). BENCHMARKS.md has what each row
reached on held-out slides, with its command. After changing a row's settings, run it
again with ``transfer-zoo sweep ... --rows ROW --overwrite`` (its old run is discarded).
"""

from train.configs import base, malaria_scratch

# Row -> settings over the shared ones. Order: the rows most likely to fall short of 93%
# first (no batch norm, large strides, the deepest), so that a sweep of "all" spends its
# CPU there first.
FAMILIES = {
    # No batch norm: a lower learning rate, and a pooled dense head instead of flattening
    # (VGG's 4096-4096 top holds most of its parameters and learns slowly from scratch).
    "vgg16": {"head.kind": "mlp", "learning_rate": 1e-4},
    "vgg19": {"head.kind": "mlp", "learning_rate": 1e-4},
    # AlexNet's stride-4 11x11 stem leaves a parasite (1-2 px at 64 px) nothing to see: 64 px,
    # 1e-4, 4 epochs reached 0.771 (train 0.867, underfit); 128 px, a warm-up and 6 epochs.
    "alexnet": {"head.kind": "mlp", "data.image_size": 128, "learning_rate": 3e-4,
                "warmup_steps": 100, "epochs": 6},
    # Minimum input 71-75 px: 80 px leaves a 2x2 (or 1x1) last feature map. Xception
    # reached 0.9510 there; Inception v3 0.8802 (training 0.942, validation 0.89: its
    # valid-padded stem leaves a 1x1 map): 128 px (2x2) and 6 epochs, and the same for
    # Inception-ResNet v2, which has that stem (not measured yet).
    "xception": {"data.image_size": 80},
    "inception_v3": {"data.image_size": 128, "epochs": 6},
    "inception_resnet_v2": {"data.image_size": 128, "epochs": 6},
    "densenet121": {},
    "densenet169": {},
    "densenet201": {},
    # The bottleneck ResNets learn more slowly from scratch: resnet50 in 4 epochs reached
    # 0.8704 (training 0.935, validation 0.872 and rising; resnet18 0.962 / 0.946); in 8
    # epochs 0.9063 (training 0.960, validation 0.931: now a generalisation gap). Next to
    # try: 96 px or stronger augmentation (BENCHMARKS); the deeper rows wait for it.
    "resnet50": {"epochs": 8},
    "resnet101": {"epochs": 8},
    "resnet152": {"epochs": 8},
    "resnet50v2": {"epochs": 8},
    "resnet101v2": {"epochs": 8},
    "resnet152v2": {"epochs": 8},
    "googlenet": {},
    "inception_v2": {},
    "darknet53": {},
    "mobilenet": {},
    "mobilenetv2": {},
    "resnet34": {},
    "resnet18": {},  # 0.9597 (BENCHMARKS)
    # SqueezeNet's own head (1x1 conv -> ReLU -> pool) dies from scratch (loss stuck at ln 2).
    "squeezenet1_0": {"head.kind": "mlp"},
    "squeezenet1_1": {"head.kind": "mlp"},  # 0.9564 (0.9586 on 2026-11-22's code, run C)
    # ResNet18 at 96 px for 6 epochs, its test report with test-time augmentation (the 8
    # flips and quarter turns): the best validation accuracy of the table (BENCHMARKS).
    "resnet18_96px_tta": {"model.name": "resnet18", "data.image_size": 96, "epochs": 6,
                          "tta": "dihedral"},
    # The official Keras MobileNet v1 alpha 0.25 weights (ImageNet, 224 px, no top) at 128
    # px: the head on cached frozen features, and the malaria.py two-stage recipe. A pooled
    # dense head: the backbone comes from the no-top file (the with-top one only adds the
    # 1000-class layer a new task replaces anyway).
    "mobilenet_0.25_imagenet_frozen": {
        "model.name": "mobilenet", "model.alpha": 0.25, "init": "imagenet", "head.kind": "mlp",
        "policy": "frozen", "data.image_size": 128, "epochs": 20, "augment": "off"},
    "mobilenet_0.25_imagenet_two_stage": {
        "model.name": "mobilenet", "model.alpha": 0.25, "init": "imagenet", "head.kind": "mlp",
        "policy": "frozen", "data.image_size": 128,
        "stages": "frozen epochs=10 augment=off learning_rate=1e-3; "
                  "finetune:4 epochs=3 learning_rate=1e-3 freeze_bn_stats=true"},
}
ROWS = tuple(FAMILIES)


def get_config(row: str = ""):
    """One row of the zoo table: ``malaria_zoo:<row>`` (a model name, or a weights row)."""
    if row not in FAMILIES:
        raise ValueError(f"malaria_zoo needs a row, --config malaria_zoo:<row> (got {row!r}); "
                         f"rows: {', '.join(ROWS)}")
    c = malaria_scratch.get_config()  # NIH by slide, 64 px, flips and turns, 4 epochs, 1e-3
    c.unlock()
    c.model.name = row
    c.head.kind = "reference"  # the model's own head unless the row says otherwise
    # Keras' batch-norm momenta (0.99, 0.999) lag a short run from scratch: MobileNet v1 went
    # 0.84 in training and 0.51-0.56 in validation on its moving averages. PreciseBN
    # (train/precise_bn.py) sets them from 16 training batches before each validation.
    c.recompute_bn_batches = 16
    return base.locked(base.override(c, FAMILIES[row]))

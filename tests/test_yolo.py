"""YOLO models: Darknet parameter figures, output layout, backbone features, drawings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo import yolo


def shapes(name, size, **kw):
    model = zoo.create(name, **kw)
    x = jax.ShapeDtypeStruct((1, *size, 3), jnp.float32) if isinstance(size, tuple) else \
        jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    v = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
    out = jax.eval_shape(lambda v, x: model.apply(v, x), v, x)
    return v, jax.tree.map(lambda o: o.shape, out)


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_darknet_figures():
    """yolov3.cfg and yolov3-tiny.cfg at 80 classes, BN statistics included (a .weights
    file's floats): 62,001,757 and 8,858,734; darknet53.cfg's classifier 41,645,640."""
    for name, figure in (("yolov3", 62_001_757), ("yolov3_tiny", 8_858_734),
                         ("darknet53", 41_645_640)):
        v, _ = shapes(name, 416)
        assert count(v["params"]) + count(v["batch_stats"]) == figure
    # the neck and head by arithmetic on the cfg = yolov3 minus the Darknet-53 body
    body, _ = shapes("darknet53", 416, include_top=False)
    neck = yolo.neck_head_count((1024, 512, 256), (512, 256, 128), yolo.YOLOV3_ANCHORS, 80,
                                bn_stats=True)
    assert count(body) + neck == 62_001_757


def test_yolov1_count_from_the_paper():
    """Figure 3 of the paper: 24 convs (with biases, no batch norm), FC 4096, FC 7x7x30.

    convs: sum over layers of k*k*c_in*c_out + c_out = 27,262,400 ... computed below;
    FC: 7*7*1024*4096 + 4096 = 205,524,992 and 4096*1470 + 1470 = 6,022,590;
    total 271,703,550.
    """
    cin, convs = 3, 0
    for block in yolo.YOLOV1_BLOCKS:
        for k, f, _ in block:
            convs, cin = convs + k * k * cin * f + f, f
    assert sum(len(b) for b in yolo.YOLOV1_BLOCKS) == 24
    fc = 7 * 7 * 1024 * 4096 + 4096 + 4096 * 7 * 7 * 30 + 7 * 7 * 30
    assert convs + fc == 271_703_550 == zoo.spec("yolov1").reference_params
    v, out = shapes("yolov1", 448)
    assert count(v["params"]) == 271_703_550 and out == (1, 7, 7, 30)


def test_output_layout():
    _, out = shapes("yolov3", 416)
    assert out == ((1, 13, 13, 3, 85), (1, 26, 26, 3, 85), (1, 52, 52, 3, 85))
    _, out = shapes("yolov3_tiny", (320, 416), num_classes=3)
    assert out == ((1, 10, 13, 3, 8), (1, 20, 26, 3, 8))
    _, out = shapes("yolov3_tiny", 416, num_classes=None)
    assert [o[-1] for o in out] == [512, 256], "num_classes=None: the features the head sees"
    _, out = shapes("yolov3", 416, include_top=False)
    assert [o[1:] for o in out] == [(13, 13, 1024), (26, 26, 512), (52, 52, 256)]
    anchors = (((30, 30), (60, 60)), ((10, 10), (20, 20)))
    _, out = shapes("yolov3", 256, num_classes=2, widths=(64, 32), anchors=anchors)
    assert out == ((1, 8, 8, 2, 7), (1, 16, 16, 2, 7)), "two scales, two anchors each"


def test_backbone_features_come_from_the_spec_taps():
    _, out = shapes("yolo_resnet50", 256, include_top=False)
    assert [o[1:] for o in out] == [(8, 8, 2048), (16, 16, 1024), (32, 32, 512)]
    taps = yolo.backbone_taps("resnet18", zoo.spec("resnet18").feature_info(), yolo.STRIDES)
    assert [t.module for t in taps] == ["stage4", "stage3", "stage2"]
    _, out = shapes("yolo_resnet18", 256, include_top=False)
    assert [o[-1] for o in out] == [t.channels for t in taps] == [512, 256, 128]
    # the channels follow the backbone's options: MobileNetV2 at alpha 0.35
    _, out = shapes("yolo_mobilenetv2", 256, include_top=False,
                    backbone_options=(("alpha", 0.35),))
    assert [o[-1] for o in out] == [1280, 32, 16]
    spec = zoo.spec("yolo_resnet50")
    assert spec.group_names[:2] == ("stem", "stage1") and spec.group_names[-2:] == ("neck", "head")
    assert spec.group_of("backbone/stage4/block3/conv3/kernel") == "stage4"
    assert spec.mean == zoo.spec("resnet50").mean and spec.task == "detection"


def test_detector_input_checks():
    with pytest.raises(ValueError, match="multiples of 32.*448x448"):
        shapes("yolov3_tiny", 440)
    with pytest.raises(ValueError, match="pooling must be None"):
        shapes("yolov3_tiny", 64, pooling="avg")
    with pytest.raises(ValueError, match="takes 448x448 images"):
        shapes("yolov1", 512)
    with pytest.raises(ValueError, match="one width and one anchor set per scale"):
        shapes("yolov3", 64, widths=(64, 32))
    with pytest.raises(ValueError, match=r"strides \(32, 16, 8\).*\[4, 8, 16\]"):
        shapes("yolo_resnet18", 256, backbone="squeezenet1_1")  # no stride-32 tap
    _, out = shapes("yolov1", 256, grid=4, num_classes=3)
    assert out == (1, 4, 4, 13)


def test_yolov3_drawing_matches_the_cfg():
    viz = pytest.importorskip("viz")
    g = viz.trace("yolov3")
    # yolov3.cfg: 75 [convolutional], 23 [shortcut], 2 [route] concatenations
    assert sum(n.type == "Conv" for n in g.nodes.values()) == 75
    assert g.count("add", min_inputs=2) == 23 and g.count("concatenate", min_inputs=2) == 2
    assert list(viz.collapse(g, 1).nodes)[1:4] == ["backbone", "neck", "head"]
    g = viz.trace("yolov3_tiny")  # yolov3-tiny.cfg: 13 [convolutional]
    assert sum(n.type == "Conv" for n in g.nodes.values()) == 13


@pytest.mark.slow
def test_tiny_detector_overfits_one_image():
    """A small YOLO learns one shapes image: loss falls and NMS finds the boxes."""
    import optax

    from train.detection import data, decode, loss, metrics

    ex = data.shapes_example(0, 0, size=64)
    anchors = (((24, 24), (16, 16)), ((10, 10), (6, 6)))
    model = zoo.create("yolo_resnet18", num_classes=3, widths=(32, 16), anchors=anchors)
    x = jnp.asarray(ex["image"][None], jnp.float32) / 255
    n = len(ex["boxes"])
    gt = (jnp.asarray(ex["boxes"][None]), jnp.asarray(ex["classes"][None]),
          jnp.ones((1, n), bool))
    v = model.init(jax.random.PRNGKey(0), x)
    tx = optax.adam(3e-3)
    opt = tx.init(v["params"])

    @jax.jit
    def step(params, stats, opt):
        def f(p):
            out, new = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                   mutable=["batch_stats"])
            return loss.yolov3_loss(out, *gt, anchors, (64, 64))[0], new["batch_stats"]
        (value, stats), g = jax.value_and_grad(f, has_aux=True)(params)
        up, opt = tx.update(g, opt)
        return optax.apply_updates(params, up), stats, opt, value

    params, stats = v["params"], v["batch_stats"]
    losses = []
    for _ in range(150):
        params, stats, opt, value = step(params, stats, opt)
        losses.append(float(value))
    assert losses[-1] < 0.05 * losses[0]
    out = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                      mutable=["batch_stats"])[0]
    det = decode.nms(*decode.decode_yolov3(out, anchors, (64, 64)), max_outputs=10,
                     score_threshold=0.3)
    keep = np.asarray(det["valid"][0])
    result = metrics.evaluate(
        [{k: np.asarray(det[k][0])[keep] for k in ("boxes", "scores", "classes")}],
        [{"boxes": ex["boxes"], "classes": ex["classes"]}], data.SHAPES_CLASSES)
    assert result["voc_map50"] > 0.99

"""Darknet ``.weights`` import: a file written here in the Darknet layout, read strictly,
and YOLOv3-tiny's outputs equal an independent PyTorch build of ``yolov3-tiny.cfg``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo.weights import darknet
from zoo.weights.convert import WeightMismatchError

# yolov3-tiny.cfg, layer by layer: ("conv", filters, size, stride, batch_normalize),
# ("max", size, stride), ("route", layers...), ("up",), ("yolo",).
TINY_CFG = [("conv", 16, 3, 1, 1), ("max", 2, 2), ("conv", 32, 3, 1, 1), ("max", 2, 2),
            ("conv", 64, 3, 1, 1), ("max", 2, 2), ("conv", 128, 3, 1, 1), ("max", 2, 2),
            ("conv", 256, 3, 1, 1), ("max", 2, 2), ("conv", 512, 3, 1, 1), ("max", 2, 1),
            ("conv", 1024, 3, 1, 1), ("conv", 256, 1, 1, 1), ("conv", 512, 3, 1, 1),
            ("conv", "out", 1, 1, 0), ("yolo",), ("route", -4), ("conv", 128, 1, 1, 1),
            ("up",), ("route", -1, 8), ("conv", 256, 3, 1, 1), ("conv", "out", 1, 1, 0),
            ("yolo",)]


def write_weights(path, cfg, out_channels, rng, in_channels=3):
    """A .weights file in Darknet's layout with random values (positive variances)."""
    floats, channels, c = [], [], in_channels
    for layer in cfg:
        if layer[0] == "conv":
            _, f, k, _, bn = layer
            f = out_channels if f == "out" else f
            if bn:
                floats += [rng.normal(0, 0.1, f), rng.uniform(0.5, 1.5, f),
                           rng.normal(0, 0.1, f), rng.uniform(0.5, 1.5, f)]
            else:
                floats.append(rng.normal(0, 0.1, f))
            floats.append(rng.normal(0, np.sqrt(2 / (c * k * k)), f * c * k * k))
            c = f
        elif layer[0] == "route":
            c = sum(channels[i if i >= 0 else len(channels) + i] for i in layer[1:])
        channels.append(c)
    with open(path, "wb") as fh:
        np.asarray([0, 2, 5], np.int32).tofile(fh)
        np.asarray([32013312], np.uint64).tofile(fh)
        np.concatenate(floats).astype(np.float32).tofile(fh)


def torch_darknet(cfg, floats, out_channels, x):
    """Run a cfg with PyTorch layers, reading weights in Darknet's order (reference)."""
    import torch
    import torch.nn.functional as F

    pos, outs, c = 0, [], x.shape[1]

    def take(n):
        nonlocal pos
        pos += n
        return torch.from_numpy(floats[pos - n:pos].copy())

    with torch.no_grad():
        for layer in cfg:
            kind = layer[0]
            if kind == "conv":
                _, f, k, s, bn = layer
                f = out_channels if f == "out" else f
                conv = torch.nn.Conv2d(c, f, k, s, padding=k // 2, bias=not bn)
                if bn:
                    norm = torch.nn.BatchNorm2d(f, eps=1e-5).eval()
                    for t in (norm.bias, norm.weight, norm.running_mean, norm.running_var):
                        t.copy_(take(f))
                else:
                    conv.bias.copy_(take(f))
                conv.weight.copy_(take(f * c * k * k).reshape(f, c, k, k))
                x = conv(x)
                x = F.leaky_relu(norm(x), 0.1) if bn else x
                c = f
            elif kind == "max":
                _, size, stride = layer
                if stride == 1:  # Darknet pads size-1 at the end and ignores the padding
                    x = F.pad(x, (0, size - 1, 0, size - 1), mode="replicate")
                x = F.max_pool2d(x, size, stride)
            elif kind == "up":
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            elif kind == "route":
                x = torch.cat([outs[i if i >= 0 else len(outs) + i] for i in layer[1:]], 1)
                c = x.shape[1]
            outs.append(x)
    assert pos == len(floats)
    return [outs[i - 1] for i, layer in enumerate(cfg) if layer[0] == "yolo"]


def test_yolov3_tiny_equals_a_pytorch_build_of_the_cfg(tmp_path):
    torch = pytest.importorskip("torch")
    classes, size = 3, 64
    path = tmp_path / "tiny.weights"
    write_weights(path, TINY_CFG, 3 * (5 + classes), np.random.default_rng(0))
    header, floats = darknet.read_darknet(str(path))
    assert header == (0, 2, 5, 32013312)
    model = zoo.create("yolov3_tiny", num_classes=classes)
    x = np.random.default_rng(1).uniform(0, 1, (1, size, size, 3)).astype(np.float32)
    target = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.asarray(x)))
    variables = darknet.load_darknet(str(path), "yolov3_tiny", target)
    ours = model.apply(variables, jnp.asarray(x))
    ref = torch_darknet(TINY_CFG, floats, 3 * (5 + classes),
                        torch.from_numpy(x.transpose(0, 3, 1, 2)))
    for o, r in zip(ours, ref, strict=True):
        r = r.numpy().transpose(0, 2, 3, 1).reshape(o.shape)  # channel = anchor * 8 + k
        np.testing.assert_allclose(np.asarray(o), r, rtol=1e-4, atol=1e-4)


def test_strict_reading(tmp_path):
    model = zoo.create("yolov3_tiny", num_classes=3)
    target = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))
    path = tmp_path / "tiny.weights"
    write_weights(path, TINY_CFG, 24, np.random.default_rng(0))
    data = path.read_bytes()
    (tmp_path / "short.weights").write_bytes(data[:-40])
    with pytest.raises(WeightMismatchError, match="ends inside head/scale2 kernel"):
        darknet.load_darknet(str(tmp_path / "short.weights"), "yolov3_tiny", target)
    (tmp_path / "long.weights").write_bytes(data + b"\0" * 8)
    with pytest.raises(WeightMismatchError, match="2 floats left over"):
        darknet.load_darknet(str(tmp_path / "long.weights"), "yolov3_tiny", target)
    # an 80-class file (8,858,734 floats: the Darknet figure) for a 3-class model
    write_weights(tmp_path / "coco.weights", TINY_CFG, 255, np.random.default_rng(0))
    assert darknet.read_darknet(str(tmp_path / "coco.weights"))[1].size == 8_858_734
    with pytest.raises(WeightMismatchError, match="another number of classes"):
        darknet.load_darknet(str(tmp_path / "coco.weights"), "yolov3_tiny", target)
    with pytest.raises(ValueError, match="no Darknet layer order"):
        darknet.layer_order("resnet50")


@pytest.mark.parametrize("name", ["darknet53", "yolov3"])
def test_layer_orders_cover_every_variable(name):
    """Every variable of darknet53 / yolov3 is in the cfg order exactly once, and the
    order needs exactly the model's float count (the Darknet figure)."""
    model = zoo.create(name)
    target = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))
    order = darknet.layer_order(name)
    assert len(order) == (53 if name == "darknet53" else 75)  # the cfgs' [convolutional]s
    total = zoo.spec(name).reference_params
    floats = np.broadcast_to(np.float32(0), (total,))  # no memory: a view of one zero
    variables, used = darknet.fill(floats, order, target)
    assert used == total
    assert jax.tree.structure(variables) == jax.tree.structure(jax.tree.map(lambda v: 0,
                                                                            dict(target)))

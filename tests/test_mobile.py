"""Fast convolutions (every formulation equals XLA's) and MobileNet/Xception specifics.

The registry-wide tests (test_zoo, test_parity) cover the default ``alpha``; here every
alpha of the Keras applications is checked, with and without top, plus the real
MobileNetV2-0.35 weights file in ``../shared/weights`` when it is there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as R
from flax import linen as nn
from test_parity import assert_logits_match

import zoo
from zoo import layers, mobilenet, xception
from zoo.backend import conv, options
from zoo.weights import convert

V1_ALPHAS = (0.25, 0.5, 0.75, 1.0)
V2_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
ALPHAS = [("mobilenet", a) for a in V1_ALPHAS] + [("mobilenetv2", a) for a in V2_ALPHAS]
# every alpha is in the slow suite; the quick loop checks one (each Keras build compiles its
# initialisers: seconds per model)
QUICK_ALPHAS = {("mobilenetv2", 0.35)}
SHARED = Path(__file__).resolve().parents[2] / "shared" / "weights"
MOBILENETV2_035 = SHARED / "keras_mobilenet_v2_0.35_224_imagenet_backbone_in_model.h5"

PADDINGS = ["SAME", "VALID", ((1, 0), (0, 2))]


def loss_and_grads(f, w, x):
    """f(w, x), and the gradients of a non-linear scalar of it wrt w and x (jitted)."""
    g = jax.jit(jax.grad(lambda w, x: jnp.sum(jnp.sin(f(w, x))), (0, 1)))(w, x)
    return jax.jit(f)(w, x), g


def latin(strides_dilations, paddings, shapes):
    """The full grid of conv cases, every case not on a Latin-square cover marked slow: the
    quick loop still sees every stride/dilation, every padding and every shape."""
    cases = []
    for k, shape in enumerate(shapes):
        for i, sd in enumerate(strides_dilations):
            for j, padding in enumerate(paddings):
                quick = (i + k) % len(paddings) == j
                marks = () if quick else (pytest.mark.slow,)
                cases.append(pytest.param(*sd, padding, *shape, marks=marks))
    return cases


STRIDES_DILATIONS = [(1, 1), (2, 1), (1, 2)]


def assert_same_function(f, ref, w, x, tol=1e-4):
    """``f`` computes ``ref`` (and its gradients) to float32 rounding: within ``tol`` of
    ``ref``, or, where the two sum in a different order, no further from the float64 result
    than ``ref``'s own float32 result is (x2, plus 1e-6 of the largest value)."""
    ours, xla = loss_and_grads(f, w, x), loss_and_grads(ref, w, x)
    ours, xla = jax.tree.leaves(ours), jax.tree.leaves(xla)
    if all(np.allclose(a, b, rtol=tol, atol=tol) for a, b in zip(ours, xla, strict=True)):
        return
    with jax.enable_x64(True):
        truth = jax.tree.leaves(loss_and_grads(ref, np.float64(w), np.float64(x)))
    for a, b, t in zip(ours, xla, truth, strict=True):
        t = np.asarray(t)
        assert t.dtype == np.float64
        limit = 2 * np.max(np.abs(b - t)) + 1e-6 * max(1.0, np.max(np.abs(t)))
        assert np.max(np.abs(a - t)) <= limit, (np.max(np.abs(a - t)), limit)


# ------------------------------------------------------------ formulations


@pytest.mark.parametrize("stride, dilation, padding, size, multiplier",
                         latin(STRIDES_DILATIONS, PADDINGS, [(7, 1), (8, 1), (9, 2)]))
def test_depthwise_shift_equals_xla(stride, dilation, padding, size, multiplier):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size + 1, 5))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 5, multiplier))
    pads = conv.normalize_padding(padding)
    s, d = (stride, stride), (dilation, dilation)

    def ref(w, x):
        return conv.xla_conv(x, w.reshape(3, 3, 1, 5 * multiplier), s, pads, d, groups=5)

    assert_same_function(lambda w, x: conv.shift_depthwise(x, w, s, pads, d), ref, w, x)


@pytest.mark.parametrize("stride, dilation, padding, size, kernel",
                         latin(STRIDES_DILATIONS, PADDINGS, [(7, 3), (8, 3), (9, 5), (8, 1)]))
def test_conv_matmul_equals_xla(stride, dilation, padding, size, kernel):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size + 1, 4))
    w = jax.random.normal(jax.random.PRNGKey(1), (kernel, kernel, 4, 6))
    pads = conv.normalize_padding(padding)
    s, d = (stride, stride), (dilation, dilation)
    assert_same_function(lambda w, x: conv.matmul_conv(x, w, s, pads, d),
                         lambda w, x: conv.xla_conv(x, w, s, pads, d), w, x)


@pytest.mark.parametrize("stride, dilation, padding, size, kernel, cin",
                         latin(STRIDES_DILATIONS, PADDINGS,
                               [(7, 3, 4), (9, 5, 3), (8, 3, 65), (7, 3, 12), (9, 3, 3)]))
def test_mixed_conv_equals_xla(stride, dilation, padding, size, kernel, cin):
    """XLA's conv ('VALID': padded, then cropped) with the kernel gradient over patches
    (kh*kw*cin <= 576, or 'VALID') or XLA's (above); at stride 1 with 6 outputs, 65 inputs
    take the tap forward and gradients, 12 inputs the tap gradients only; 3x3 over 3
    channels at stride 2 the im2col forward."""
    x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size + 1, cin))
    w = jax.random.normal(jax.random.PRNGKey(1), (kernel, kernel, cin, 6))
    pads = conv.normalize_padding(padding)
    s, d = (stride, stride), (dilation, dilation)
    assert_same_function(lambda w, x: conv.mixed_conv(x, w, s, pads, d),
                         lambda w, x: conv.xla_conv(x, w, s, pads, d), w, x)


@pytest.mark.parametrize("size, pads", [
    ((7, 8), "SAME"), ((8, 7), "VALID"), ((5, 9), ((2, 0), (1, 2))), ((1, 1), "SAME"),
    ((3, 3), ((0, 2), (2, 2))), ((6, 6), ((2, 2), (0, 0)))])
def test_winograd_conv_equals_xla(size, pads):
    """Odd and even outputs (the last tile overhangs), pads 0 to 2 on any side (the input
    gradient then pads dy by 2 - pad), a single pixel."""
    x = jax.random.normal(jax.random.PRNGKey(0), (2, *size, 5))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 5, 4))
    pads = conv.normalize_padding(pads)
    assert_same_function(lambda w, x: conv.winograd_conv(x, w, (1, 1), pads),
                         lambda w, x: conv.xla_conv(x, w, (1, 1), pads), w, x)


@pytest.mark.parametrize("kwargs, message", [
    (dict(strides=(2, 2), padding="SAME"), "stride-1"), (dict(kernel=5), "3x3"),
    (dict(padding=((3, 0), (1, 1))), "pads of 0 to 2")])
def test_winograd_conv_refuses_what_it_cannot_compute(kwargs, message):
    x = jnp.zeros((1, 8, 8, 2))
    w = jnp.zeros((kwargs.pop("kernel", 3),) * 2 + (2, 2))
    args = dict(strides=(1, 1), padding="SAME") | kwargs
    with pytest.raises(ValueError, match=message):
        conv.winograd_conv(x, w, args["strides"], args["padding"])


@pytest.mark.parametrize("size, kernel, strides, padding, path", [
    ((56, 56), (3, 3, 64, 64), 1, "SAME", "winograd"),  # ResNet's 3x3 convolutions
    ((7, 7), (3, 3, 512, 512), 1, "SAME", "winograd"),
    ((73, 73), (3, 3, 80, 192), 1, "VALID", "winograd"),  # Inception's
    ((104, 104), (3, 3, 64, 64), 1, "SAME", "xla"),  # too many pixels
    ((2, 2), (3, 3, 256, 256), 1, "SAME", "im2col"),  # 2x2 out: XLA's is pathological
    ((4, 4), (3, 3, 256, 512), 2, "SAME", "im2col"),  # ResNet's last stage at 64 px
    ((4, 4), (3, 3, 512, 512), 1, "SAME", "xla"),  # 4x4 out: XLA's forward is faster
    ((6, 4), (3, 3, 256, 256), 1, "SAME", "xla"),  # 4 outputs a side: tiles too few
    ((7, 7), (3, 3, 256, 256), 1, "VALID", "xla"),  # 5 outputs: tiles overhang
    ((28, 28), (3, 3, 16, 64), 1, "SAME", "xla"),  # too few channels
    ((28, 28), (3, 3, 64, 64), 1, ((3, 0), (1, 1)), "xla"),  # a pad past 2
    ((28, 28), (3, 3, 64, 64), 2, "SAME", "xla"),
    ((14, 14), (3, 3, 256, 256), 1, "SAME", "winograd"),  # batch 32: 32 x 49 tiles
    ((28, 28), (5, 5, 64, 64), 1, "SAME", "xla"),
    ((56, 56), (3, 3, 128, 32), 1, "SAME", "tap"),  # DenseNet's
    ((56, 56), (3, 3, 64, 32), 1, "SAME", "tap_grad"),
    ((224, 224), (3, 3, 3, 32), 2, "SAME", "im2col")])  # MobileNet's stem
def test_mixed_path_choice(size, kernel, strides, padding, path):
    """Without the native kernels (GPU/TPU lowerings never see ``mixed``; ZOO_NATIVE=off)."""
    s = conv.pair(strides)
    shape = (32, *size, kernel[2])
    assert conv.mixed_path(shape, kernel, s, conv.normalize_padding(padding),
                           native_kernels=False) == path


@pytest.mark.parametrize("size, kernel, strides, padding, path", [
    ((56, 56), (3, 3, 64, 64), 1, "SAME", "native"),  # ResNet's first stage
    ((147, 147), (3, 3, 32, 64), 1, "VALID", "native"),  # Xception's stem
    ((299, 299), (3, 3, 3, 32), 2, "VALID", "native"),
    ((230, 230), (7, 7, 3, 64), 2, "VALID", "native"),  # ResNet's stem
    ((104, 104), (3, 3, 64, 64), 1, "SAME", "native"),
    ((56, 56), (3, 3, 128, 128), 2, "SAME", "native"),  # 1152 values per output
    ((73, 73), (3, 3, 80, 192), 1, "VALID", "winograd"),  # 720 values: Winograd's
    ((14, 14), (3, 3, 256, 256), 1, "SAME", "winograd"),
    ((56, 56), (3, 3, 128, 32), 1, "SAME", "tap_native"),  # DenseNet's
    ((28, 28), (5, 5, 64, 64), 1, "SAME", "xla"),  # 1600 values: too deep
    ((28, 28), (3, 3, 64, 64), 3, "SAME", "xla"),  # column stride 3
    ((17, 17), (7, 1, 128, 192), 1, "SAME", "native"),  # Inception's 17 px blocks
    ((17, 17), (1, 7, 128, 128), 1, "SAME", "xla"),  # 896 values, 17 < 4 * 7 columns
    ((8, 8), (1, 3, 384, 384), 1, "SAME", "xla"),  # 1152 values, 8 < 16 columns
    ((7, 7), (3, 3, 64, 64), 1, "SAME", "native"),  # 576 values: any width
    ((7, 7), (3, 3, 128, 32), 1, "SAME", "tap")])  # DenseNet's last block
def test_mixed_path_choice_with_native_kernels(size, kernel, strides, padding, path):
    s = conv.pair(strides)
    shape = (32, *size, kernel[2])
    assert conv.mixed_path(shape, kernel, s, conv.normalize_padding(padding),
                           native_kernels=True) == path


def test_mixed_path_winograd_needs_enough_tiles_and_float32():
    pads = conv.normalize_padding("SAME")
    assert conv.mixed_path((1, 14, 14, 256), (3, 3, 256, 256), (1, 1), pads) == "xla"
    assert conv.mixed_path((6, 14, 14, 256), (3, 3, 256, 256), (1, 1), pads) == "winograd"
    # float32 only: the transforms would round in bfloat16
    assert conv.mixed_path((6, 14, 14, 256), (3, 3, 256, 256), (1, 1), pads, (1, 1),
                           jnp.bfloat16) == "xla"


def test_mixed_conv_takes_winograd_and_equals_xla():
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 15, 72))  # 648 values per output
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 72, 64)) * 0.1
    pads = conv.normalize_padding("SAME")
    assert conv.mixed_path(x.shape, w.shape, (1, 1), pads) == "winograd"
    jaxpr = str(jax.make_jaxpr(lambda x, w: conv.mixed_conv(x, w, (1, 1), pads))(x, w))
    assert "winograd_conv" in jaxpr
    assert_same_function(lambda w, x: conv.mixed_conv(x, w, (1, 1), pads),
                         lambda w, x: conv.xla_conv(x, w, (1, 1), pads), w, x)


@pytest.mark.parametrize("forward", conv.TAP_FORWARDS)
@pytest.mark.parametrize("kernel, pads", [(3, ((3, 0), (0, 2))), (5, ((0, 0), (1, 4))),
                                          ((3, 1), ((1, 1), (0, 0)))])
def test_tap_conv_equals_xla(kernel, pads, forward):
    """Any explicit padding, also past kernel - 1 (outputs that see only padding)."""
    kh, kw = conv.pair(kernel)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 6, 7, 16))
    w = jax.random.normal(jax.random.PRNGKey(1), (kh, kw, 16, 5))
    assert_same_function(lambda w, x: conv.tap_conv(x, w, pads, forward),
                         lambda w, x: conv.xla_conv(x, w, (1, 1), pads), w, x)


@pytest.mark.parametrize("limit", [1, 2000])
def test_mixed_conv_kernel_gradient_in_chunks_of_images(monkeypatch, limit):
    """A patch matrix above PATCH_GRAD_MAX_SIZE is built per chunk of images: 1 image per
    chunk (limit 1) or 2 of 4 (limit 2000: 36 * 2 * 7 * 8 = 4032 elements for 4 images)."""
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 7, 8, 4))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 4, 6))
    monkeypatch.setattr(conv, "PATCH_GRAD_MAX_SIZE", limit)
    s, pads = (1, 1), conv.normalize_padding("SAME")
    assert_same_function(lambda w, x: conv.mixed_conv(x, w, s, pads),
                         lambda w, x: conv.xla_conv(x, w, s, pads), w, x)


@pytest.mark.parametrize("window, stride, padding", [
    (3, 2, "SAME"), (3, 2, "VALID"), (2, 2, "SAME"), (3, 1, "SAME"), (2, 1, ((0, 1), (0, 1))),
    (3, 2, ((1, 1), (1, 1)))])
def test_max_pool_gradient_equals_xla_with_ties(window, stride, padding):
    """Exactly XLA's gradient (the first maximum of a window takes it), ties included:
    ReLU outputs rounded to integers tie in most windows."""
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 10, 3))
    x = jnp.maximum(jnp.round(2 * x), 0)
    pads = conv.explicit_pads(x.shape[1:3], (window,) * 2, (stride,) * 2, (1, 1),
                              conv.normalize_padding(padding))

    def run(impl):
        f = lambda x: conv.max_pool(x, window, stride, padding, impl=impl)  # noqa: E731
        def loss(x):  # distinct integer weights per output element: a wrong route changes
            y = f(x)  # the gradient, and sums of integers are exact in any order
            return jnp.sum(y * (1 + jnp.arange(y.size).reshape(y.shape)))

        return jax.jit(f)(x), jax.jit(jax.grad(loss))(x)

    y, g = run("matmul")
    ref = nn.max_pool(x, (window,) * 2, (stride,) * 2, pads)
    np.testing.assert_array_equal(y, ref)
    neg = jax.random.normal(jax.random.PRNGKey(1), x.shape) - 3  # padding must not win
    np.testing.assert_array_equal(conv.max_pool(neg, window, stride, padding, impl="matmul"),
                                  nn.max_pool(neg, (window,) * 2, (stride,) * 2, pads))
    np.testing.assert_array_equal(y, run("xla")[0])
    np.testing.assert_array_equal(g, run("xla")[1])
    assert int((g != 0).sum()) > 0


@pytest.mark.parametrize("impl", ["xla", "matmul"])
@pytest.mark.parametrize("size", [7, 8])
def test_keras_same_at_stride_2(impl, size):
    import keras

    x = np.random.default_rng(0).normal(size=(2, size, size, 6)).astype("float32")
    kd = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2)
    ks = keras.layers.SeparableConv2D(4, 3, strides=2, padding="same", depth_multiplier=2)
    kc = keras.layers.Conv2D(4, 3, strides=2, padding="same")
    refs = [np.asarray(k(x)) for k in (kd, ks, kc)]
    mods = [layers.DepthwiseConv(3, 2, depth_multiplier=2, impl=impl),
            layers.SeparableConv(4, 3, 2, depth_multiplier=2, impl=impl),
            layers.Conv(4, 3, 2, impl=impl)]
    for mod, k, ref in zip(mods, (kd, ks, kc), refs, strict=True):
        net = nn.Sequential([mod])  # the layer's path is "layers_0"
        target = jax.eval_shape(lambda n=net: n.init(jax.random.PRNGKey(0), x))
        weights = {k.name: {w.path.rsplit("/", 1)[-1]: np.asarray(w) for w in k.weights}}
        v = convert.from_keras(weights, {k.name: "layers_0"}, target)
        np.testing.assert_allclose(net.apply(v, x), ref, rtol=1e-5, atol=1e-5)


def test_parameter_layout_does_not_depend_on_the_formulation(monkeypatch):
    x = jnp.ones((1, 9, 9, 3))
    mods = [layers.Conv(4, 3), layers.Conv(4, 1), layers.DepthwiseConv(3, depth_multiplier=2),
            layers.SeparableConv(4, 3)]
    shapes = {}
    for impl in conv.CONV_IMPLS:
        monkeypatch.setenv("ZOO_CONV_IMPL", impl)
        shapes[impl] = [jax.tree.map(lambda a: (a.shape, a.dtype), m.init(jax.random.PRNGKey(0), x))
                        for m in mods]
    assert shapes["auto"] == shapes["xla"] == shapes["matmul"]
    assert shapes["auto"][2]["params"]["kernel"][0] == (3, 3, 3, 2)
    assert set(shapes["auto"][3]["params"]) == {"depthwise", "pointwise"}


def test_formulation_choice_and_overrides(monkeypatch):
    monkeypatch.delenv("ZOO_CONV_IMPL", raising=False)
    table = conv.backend_formulations(jax.default_backend())
    assert set(table) == set(conv.KINDS) and all(table[k] in conv.FORMS[k] for k in table)
    if jax.default_backend() == "cpu":
        assert table == {"pointwise": "matmul", "spatial": "mixed", "depthwise": "matmul",
                         "maxpool": "matmul", "avgpool": "matmul"}
    assert conv.formulation("depthwise") == table["depthwise"]
    assert conv.formulation("depthwise", "xla") == "xla"  # a layer's impl wins
    monkeypatch.setenv("ZOO_CONV_IMPL", "xla")
    assert {conv.formulation(k) for k in conv.KINDS} == {"xla"}
    assert conv.formulation("spatial", "matmul") == "matmul"
    monkeypatch.setenv("ZOO_CONV_IMPL", "winograd")
    with pytest.raises(ValueError, match="ZOO_CONV_IMPL"):
        layers.DepthwiseConv(3).init(jax.random.PRNGKey(0), jnp.ones((1, 4, 4, 2)))


def test_use_impl_overrides_the_environment_within_its_block(monkeypatch):
    monkeypatch.setenv("ZOO_CONV_IMPL", "matmul")
    with conv.use_impl("xla"):
        assert conv.formulation("depthwise") == "xla"
        assert conv.formulation("depthwise", "matmul") == "matmul"  # a layer's impl wins
        jaxpr = str(jax.make_jaxpr(layers.DepthwiseConv(3).init)(
            jax.random.PRNGKey(0), jnp.ones((1, 4, 4, 2))))
        assert "conv_general_dilated" in jaxpr
    assert conv.formulation("depthwise") == "matmul"
    with pytest.raises(ValueError, match="not one of"), conv.use_impl("winograd"):
        pass


def test_compiler_options_table_env_and_unknown_options(monkeypatch):
    """The backend's options, ``{}`` under ZOO_COMPILER_OPTIONS=none, and a warning plus
    ``{}`` (never a compile error later) for options this jaxlib does not know."""
    monkeypatch.delenv("ZOO_COMPILER_OPTIONS", raising=False)
    cpu = options.compiler_options("cpu")
    assert cpu == options.COMPILER_OPTIONS["cpu"], (
        "this jaxlib rejects the CPU compiler options: update options.COMPILER_OPTIONS")
    assert zoo.compiler_options() == options.COMPILER_OPTIONS.get(jax.default_backend(), {})
    monkeypatch.setenv("ZOO_COMPILER_OPTIONS", "none")
    assert options.compiler_options("cpu") == {}
    monkeypatch.setenv("ZOO_COMPILER_OPTIONS", "fast")
    with pytest.raises(ValueError, match="ZOO_COMPILER_OPTIONS='fast'"):
        options.compiler_options()
    monkeypatch.delenv("ZOO_COMPILER_OPTIONS")
    for bad in ({"xla_cpu_no_such_flag": "1"},
                {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_NO_SUCH"}):
        monkeypatch.setitem(options.COMPILER_OPTIONS, "cpu", bad)
        with pytest.warns(UserWarning, match="does not accept"):
            assert options.compiler_options("cpu") == {}


def _xla_flags_after(code: str, **env: str | None) -> str:
    """``$XLA_FLAGS`` as a fresh Python process sees it after running ``code`` (``None``
    removes a variable from its environment)."""
    env = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    code += "; import os; print(os.environ.get('XLA_FLAGS', ''))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def test_importing_zoo_first_gives_every_jit_the_compiler_options():
    """``import zoo`` before JAX starts puts the CPU options in ``$XLA_FLAGS`` (a plain
    ``jax.jit`` then gets them); not after JAX started, not under ZOO_COMPILER_OPTIONS=none,
    and a user's own value of the flag is kept."""
    (key, value), = options.COMPILER_OPTIONS["cpu"].items()
    flag = f"--{key}={value}"
    first = _xla_flags_after("import zoo, jax.numpy as jnp; jnp.ones(2).block_until_ready()",
                             XLA_FLAGS=None, ZOO_COMPILER_OPTIONS=None)
    assert first == flag
    assert _xla_flags_after("import jax.numpy as jnp; jnp.ones(2).block_until_ready(); "
                            "import zoo", XLA_FLAGS=None, ZOO_COMPILER_OPTIONS=None) == ""
    assert _xla_flags_after("import zoo", XLA_FLAGS=None, ZOO_COMPILER_OPTIONS="none") == ""
    assert _xla_flags_after("import zoo", XLA_FLAGS=None, ZOO_COMPILER_OPTIONS="off") == ""
    own = f"--{key}=LIBRARY_FUSION_TYPE_REDUCE"
    assert _xla_flags_after("import zoo", XLA_FLAGS=own, ZOO_COMPILER_OPTIONS=None) == own


def test_compiled_with_the_compiler_options_is_the_same_function():
    """A separable conv block's value and gradients, jitted with and without the options."""
    net = nn.Sequential([layers.Conv(8, 3), layers.BatchNorm(use_running_average=False),
                         nn.relu, layers.SeparableConv(16, 3), lambda y: y.mean((1, 2)),
                         nn.Dense(3)])
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 12, 12, 5))
    v = net.init(jax.random.PRNGKey(1), x)

    def loss(p):
        y, _ = net.apply({**v, "params": p}, x, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y))

    f = jax.value_and_grad(loss)
    ref = jax.jit(f)(v["params"])
    out = jax.jit(f, compiler_options=options.compiler_options())(v["params"])
    scale = max(float(np.abs(b).max()) for b in jax.tree.leaves(ref))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale),
                 out, ref)


@pytest.mark.parametrize("name, alpha", [
    ("mobilenet", 0.25), pytest.param("mobilenetv2", 0.35, marks=pytest.mark.slow)])
def test_whole_model_is_the_same_function_under_every_formulation(monkeypatch, name, alpha):
    model = zoo.create(name, alpha=alpha, num_classes=5)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
    v = jax.jit(model.init)(jax.random.PRNGKey(1), x)

    def run():
        def loss(p):
            # inference-mode BN: train-mode BN over 2 images amplifies float32 rounding
            return jnp.sum(jax.nn.log_softmax(model.apply({**v, "params": p}, x))[:, 0])
        return jax.jit(jax.value_and_grad(loss))(v["params"])

    monkeypatch.setenv("ZOO_CONV_IMPL", "xla")
    ref = run()
    monkeypatch.setenv("ZOO_CONV_IMPL", "matmul")
    scale = max(float(np.abs(b).max()) for b in jax.tree.leaves(ref))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * scale),
                 run(), ref)


def test_resnet_with_winograd_layers_is_the_same_function_as_with_xla(monkeypatch):
    """ResNet18 at a batch and size where ``mixed`` takes Winograd for its first stages:
    the whole model (inference-mode BN), value and gradients, as under XLA's convolutions."""
    if jax.default_backend() != "cpu":
        pytest.skip("mixed (and so Winograd) is the CPU table's formulation")
    monkeypatch.delenv("ZOO_CONV_IMPL", raising=False)
    monkeypatch.setenv("ZOO_NATIVE", "off")  # stage 1 would run the native convolution
    model = zoo.create("resnet18", num_classes=5)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 64, 64, 3))
    v = jax.jit(model.init)(jax.random.PRNGKey(1), x)

    def run():
        def loss(p):
            return jnp.sum(jax.nn.log_softmax(model.apply({**v, "params": p}, x))[:, 0])
        f = jax.value_and_grad(loss)
        return jax.jit(f)(v["params"]), str(jax.make_jaxpr(f)(v["params"]))

    (out, jaxpr) = run()
    # 16 px after the stem: 4 x 8 x 8 = 256 tiles, the smallest batch that takes Winograd
    assert "_winograd_forward" in jaxpr, "stage 1 should run Winograd on CPU"
    with conv.use_impl("xla"):
        ref, ref_jaxpr = run()
    assert "winograd" not in ref_jaxpr
    scale = max(float(np.abs(b).max()) for b in jax.tree.leaves(ref))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * scale),
                 out, ref)


# ------------------------------------------------------------ MobileNet, every alpha


def test_make_divisible_and_channels():
    assert [mobilenet.make_divisible(32 * a) for a in V2_ALPHAS] == [16, 16, 24, 32, 40, 48]
    assert mobilenet.make_divisible(1280 * 1.4) == 1792
    v = jax.eval_shape(lambda: zoo.create("mobilenetv2", alpha=0.35).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    assert v["params"]["final"]["conv"]["kernel"].shape == (1, 1, 112, 1280)
    assert v["params"]["head"]["kernel"].shape == (1280, 1000)


def count(model, size=224) -> int:
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    v = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(v))


def keras_mobilenet(name, alpha, size, **kwargs):
    import keras

    ctor = keras.applications.MobileNet if name == "mobilenet" else keras.applications.MobileNetV2
    if kwargs.get("include_top", True):
        kwargs = dict(classifier_activation=None, **kwargs)
    return ctor(input_shape=(size, size, 3), alpha=alpha, weights=None, **kwargs)


@pytest.mark.parametrize("name, alpha", [
    p if p == ("mobilenetv2", 1.4) else pytest.param(*p, marks=pytest.mark.slow)
    for p in ALPHAS])
def test_parameter_parity_every_alpha(name, alpha):
    for kwargs in (dict(classes=1000), dict(include_top=False)):
        kmodel = keras_mobilenet(name, alpha, 224, **kwargs)
        ours = dict(num_classes=kwargs["classes"]) if "classes" in kwargs else kwargs
        assert count(zoo.create(name, alpha=alpha, **ours)) == kmodel.count_params()


def mobilenet_parity(name, alpha, size=40, include_top=True, pooling=None, **options):
    kwargs = dict(classes=10) if include_top else dict(include_top=False, pooling=pooling)
    kmodel = keras_mobilenet(name, alpha, size, **kwargs, **options)
    R.keras_randomize(kmodel)
    model = zoo.create(name, alpha=alpha, num_classes=10, include_top=include_top,
                       pooling=pooling, **options)
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype("float32")
    target = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
    variables = convert.from_keras(R.keras_layers(kmodel), mobilenet.keras_names(model), target)
    assert_logits_match(jax.jit(model.apply)(variables, x), kmodel(x), softmax=include_top)


@pytest.mark.parametrize("name, alpha", [
    p if p in QUICK_ALPHAS else pytest.param(*p, marks=pytest.mark.slow) for p in ALPHAS])
def test_output_parity_every_alpha(name, alpha):
    # 40 px puts odd sizes (5, 3) in front of stride-2 convs: v1 pads them differently
    mobilenet_parity(name, alpha)
    mobilenet_parity(name, alpha, include_top=False, pooling="avg" if alpha < 1 else None)


@pytest.mark.slow
def test_mobilenet_depth_multiplier_and_dropout():
    mobilenet_parity("mobilenet", 0.25, depth_multiplier=2, dropout=0.5)
    model = zoo.create("mobilenet", alpha=0.25, dropout=0.5, num_classes=3)
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 32, 32, 3))
    v = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
    mutable = ("batch_stats",)
    infer = apply(v, x)
    train = [apply(v, x, train=True, mutable=mutable,
                   rngs={"dropout": jax.random.PRNGKey(k)})[0] for k in (1, 2)]
    assert not np.allclose(train[0], train[1]), "dropout is active in training"
    np.testing.assert_array_equal(infer, apply(v, x))


@pytest.mark.skipif(not MOBILENETV2_035.exists(), reason=f"{MOBILENETV2_035} not present")
def test_keras_names_cover_the_real_mobilenetv2_file():
    import h5py

    with h5py.File(MOBILENETV2_035) as f:
        group = f["model_weights"]["sequential_9"]
        found = {}
        for full in group.attrs["weight_names"]:
            full = full.decode()
            layer = full.split("/")[0]
            found.setdefault(layer, {})[full] = np.asarray(group[layer][full.split("/", 1)[1]])
    model = zoo.create("mobilenetv2", alpha=0.35, include_top=False, pooling="avg")
    x = jnp.zeros((1, 96, 96, 3))
    target = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
    variables = convert.from_keras(found, mobilenet.keras_names(model), target)  # strict
    feats = model.apply(variables, x)
    assert feats.shape == (1, 1280) and bool(jnp.all(jnp.isfinite(feats)))


# ------------------------------------------------------------ Xception


def test_xception_auto_named_shortcuts_keras2_and_keras3():
    names = xception.keras_names()
    assert sum("#" in k for k in names) == 8
    k3 = ["conv2d", "batch_normalization"] + [f"{b}_{i}" for i in (1, 2, 3)
                                              for b in ("conv2d", "batch_normalization")]
    k2 = [f"{b}_{i}" for i in (5, 6, 7, 8) for b in ("conv2d", "batch_normalization")]
    for file_names in (k3, k2, list(reversed(k2))):
        resolved = convert.resolve_auto_names(file_names, names)
        assert {resolved[n] for n in file_names} == {v for k, v in names.items() if "#" in k}
    resolved = convert.resolve_auto_names(k2, names)
    assert resolved["conv2d_5"] == "stage1/block1/shortcut_conv"
    assert resolved["batch_normalization_8"] == "stage3/block1/shortcut_bn"


@pytest.mark.parametrize("size, kernel, stride", [((2, 2), (3, 3, 48, 40), 1),
                                                  ((4, 4), (3, 3, 24, 48), 2),
                                                  ((1, 1), (3, 3, 32, 32), 1),
                                                  ((3, 3), (3, 3, 16, 24), 1)])
def test_small_outputs_run_as_one_product_and_equal_xla(size, kernel, stride):
    """At most 3x3 output pixels: im2col (XLA:CPU's convolution is pathological there),
    the same values and gradients as XLA's convolution."""
    x = jax.random.normal(jax.random.PRNGKey(0), (5, *size, kernel[2]))
    w = jax.random.normal(jax.random.PRNGKey(1), kernel) * 0.2
    s, pads = (stride, stride), conv.normalize_padding("SAME")
    assert conv.mixed_path(x.shape, w.shape, s, pads, native_kernels=False) == "im2col"

    def loss(f):
        return lambda w, x: jnp.sum(jnp.sin(f(x, w, s, pads)))

    np.testing.assert_allclose(conv.mixed_conv(x, w, s, pads), conv.xla_conv(x, w, s, pads),
                               rtol=1e-4, atol=1e-4)
    for a, b in zip(jax.grad(loss(conv.mixed_conv), (0, 1))(w, x),
                    jax.grad(loss(conv.xla_conv), (0, 1))(w, x), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)

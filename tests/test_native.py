"""The native CPU kernels (zoo.backend.native): built with the system compiler on first use, equal
to XLA's formulations (values and gradients), used on the CPU only, and a clear error or
a fallback when they cannot be built."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_mobile import assert_same_function

import zoo
from zoo.backend import conv, native

ROOT = Path(__file__).resolve().parents[1]
HAS_CXX = shutil.which(native.compiler()) is not None
needs_cxx = pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler: the native kernels "
                               "cannot be built here (zoo falls back to XLA)")


def lowered(f, *args, platforms=("cpu",)) -> str:
    return jax.jit(f).trace(*args).lower(lowering_platforms=platforms).as_text()


@needs_cxx
def test_kernels_build_into_the_cache_once(monkeypatch, tmp_path):
    monkeypatch.setenv("TRANSFER_ZOO_CACHE", str(tmp_path))
    lib = native.build()
    assert lib.is_file() and tmp_path in lib.parents
    assert lib.parent.name in str(native.library_path())
    stamp = lib.stat().st_mtime_ns
    assert native.build() == lib and lib.stat().st_mtime_ns == stamp  # not rebuilt
    assert not list(lib.parent.glob(".*tmp"))  # no half-written file left behind


def test_missing_compiler_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TRANSFER_ZOO_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler-zoo")
    with pytest.raises(native.NativeBuildError, match="no C.. compiler .* ZOO_NATIVE=off"):
        native.build()


def test_bad_mode_is_rejected(monkeypatch):
    monkeypatch.setenv("ZOO_NATIVE", "fast")
    with pytest.raises(ValueError, match="ZOO_NATIVE='fast' is not one of"):
        native.available()


def _fresh_process(mode: str, tmp_path) -> subprocess.CompletedProcess:
    """``native.available()`` in a new process whose compiler fails (empty cache)."""
    env = dict(os.environ, ZOO_NATIVE=mode, CXX="false", TRANSFER_ZOO_CACHE=str(tmp_path),
               PYTHONPATH=str(ROOT))
    code = "from zoo.backend import native; print('available', native.available())"
    return subprocess.run([sys.executable, "-W", "always", "-c", code], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_failed_build_falls_back_with_a_warning_or_raises_when_required(tmp_path):
    auto = _fresh_process("auto", tmp_path)
    assert auto.returncode == 0, auto.stderr
    assert "available False" in auto.stdout
    assert "using XLA's formulations" in auto.stderr and "failed" in auto.stderr
    on = _fresh_process("on", tmp_path)
    assert on.returncode != 0
    assert "NativeBuildError: ZOO_NATIVE=on but the native kernels are unavailable" in on.stderr
    assert not list(tmp_path.rglob("*.so"))


@needs_cxx
def test_use_mode_overrides_the_environment_within_its_block(monkeypatch):
    monkeypatch.setenv("ZOO_NATIVE", "on")
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 1))
    with native.use_mode("off"):
        assert native.mode() == "off" and not native.available()
        assert "zoo_" not in lowered(jax.grad(_depthwise_and_pool, (0, 1)), x, w)
    assert native.mode() == "on"
    assert "zoo_depthwise_kernel_grad" in lowered(jax.grad(_depthwise_and_pool, (0, 1)), x, w)
    with pytest.raises(ValueError, match="'fast' .for ZOO_NATIVE. is not one of"):
        with native.use_mode("fast"):
            pass


def _depthwise_and_pool(x, w):
    y = conv.shift_depthwise(x, w, (1, 1), "SAME", (1, 1))
    return jnp.sum(jnp.sin(conv.shift_max_pool(y, (3, 3), (2, 2), ((1, 1), (1, 1)))))


@needs_cxx
def test_native_on_cpu_only(monkeypatch):
    """One traced function: the custom calls in its CPU lowering, none for GPU or TPU."""
    monkeypatch.setenv("ZOO_NATIVE", "on")
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 1))
    grad = jax.grad(_depthwise_and_pool, (0, 1))
    cpu = lowered(grad, x, w)
    for target in ("zoo_depthwise_forward", "zoo_depthwise_kernel_grad", "zoo_max_pool",
                   "zoo_max_pool_grad"):
        assert target in cpu
    for platform in ("cuda", "tpu"):
        assert "zoo_" not in lowered(grad, x, w, platforms=(platform,))
    monkeypatch.setenv("ZOO_NATIVE", "off")  # read when a function is traced: a new one
    assert "zoo_" not in lowered(jax.grad(_depthwise_and_pool, (0, 1)), x, w)


@needs_cxx
def test_native_only_for_float32_and_multiplier_1(monkeypatch):
    monkeypatch.setenv("ZOO_NATIVE", "on")
    x = jnp.ones((2, 8, 8, 4))
    f = lambda x, w: conv.shift_depthwise(x, w, (1, 1), "SAME", (1, 1))  # noqa: E731
    assert "zoo_depthwise_forward" in lowered(f, x, jnp.ones((3, 3, 4, 1)))
    assert "zoo_" not in lowered(f, x, jnp.ones((3, 3, 4, 2)))
    assert "zoo_" not in lowered(f, x.astype(jnp.bfloat16),
                                 jnp.ones((3, 3, 4, 1), jnp.bfloat16))


# kernel, stride, dilation, padding, (height, width), channels: 3x3 convs without dilation
# run blocks of output columns (8 at stride 1, 4 at stride 2, then single columns) over
# full and half SIMD vectors of channels plus a generic remainder; other 3x3 ones the
# 32-channel register loop plus the remainder; the rest the generic loop
DEPTHWISE_CASES = [
    (3, 1, 1, "SAME", (5, 29), 56),
    (3, 2, 1, "SAME", (6, 31), 100),
    (3, 2, 1, "VALID", (7, 26), 27),
    (3, 1, 1, ((1, 1), (2, 0)), (4, 21), 16),
    (3, 1, 1, "SAME", (9, 10), 70),
    (3, 2, 1, "SAME", (9, 10), 45),
    (3, 1, 2, "SAME", (8, 9), 33),
    (3, 2, 1, "VALID", (12, 7), 32),
    (3, 1, 1, ((2, 0), (0, 2)), (7, 8), 7),
    (3, (1, 2), 1, ((1, 2), (2, 1)), (6, 9), 40),
    (5, 1, 1, "SAME", (9, 9), 12),
    (5, 2, 1, "SAME", (11, 8), 5),
    ((1, 3), 1, 1, "SAME", (5, 6), 9),
    (3, 1, 1, "SAME", (1, 1), 35),
    (3, 2, 1, "SAME", (2, 3), 64),
]


@pytest.mark.parametrize("kernel, stride, dilation, padding, size, channels", DEPTHWISE_CASES)
def test_depthwise_equals_xla(native_mode, kernel, stride, dilation, padding, size, channels):
    k, s, d = (conv.pair(v) for v in (kernel, stride, dilation))
    x = jax.random.normal(jax.random.PRNGKey(0), (3, *size, channels))
    w = jax.random.normal(jax.random.PRNGKey(1), (*k, channels, 1))
    pads = conv.normalize_padding(padding)

    def ours(w, x):
        return conv.shift_depthwise(x, w, s, pads, d)

    def ref(w, x):
        return conv.xla_conv(x, w.reshape(*k, 1, channels), s, pads, d, groups=channels)

    assert_same_function(ours, ref, w, x)
    text = lowered(jax.grad(lambda w, x: jnp.sum(ours(w, x)), (0, 1)), w, x)
    assert ("zoo_depthwise_kernel_grad" in text) == (native_mode == "on")


# kernel, stride, padding, (height, width), in, out: blocks of 6 output columns (3 without
# AVX-512) and single ones, 4/3/2/1 vectors of output channels and a scalar remainder,
# border columns over the taps inside, rows outside skipped; the tap paths' native forward
NATIVE_CONV_CASES = [
    (3, 1, "VALID", (9, 23), 5, 80),
    (3, 1, "SAME", (7, 20), 16, 91),
    (3, 2, "SAME", (9, 26), 3, 32),
    (3, 2, "VALID", (10, 27), 8, 40),
    (7, 2, "SAME", (12, 30), 3, 24),
    (3, (2, 1), ((1, 2), (0, 2)), (8, 19), 6, 19),
    ((1, 7), 1, "SAME", (5, 17), 12, 48),
    ((7, 1), 1, "SAME", (17, 5), 12, 7),
    (5, 1, ((4, 0), (0, 4)), (6, 14), 4, 20),  # pads up to kernel - 1
    (3, 1, "SAME", (1, 1), 20, 17),
    (3, 1, "SAME", (6, 18), 64, 16),  # few outputs: tap gradients, native forward
    (3, 2, "SAME", (8, 34), 80, 20),  # 720 values per output, 17 columns
]


@pytest.mark.parametrize("kernel, stride, padding, size, cin, cout", NATIVE_CONV_CASES)
def test_native_conv_equals_xla(native_mode, kernel, stride, padding, size, cin, cout):
    """``mixed`` with the native dense convolution (forward, kernel gradient; input
    gradient at stride 1): XLA's values and both gradients; with the kernels off, the paths
    they replace."""
    (kh, kw), s = conv.pair(kernel), conv.pair(stride)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, *size, cin))
    w = jax.random.normal(jax.random.PRNGKey(1), (kh, kw, cin, cout)) * 0.2
    pads = conv.normalize_padding(padding)
    path = conv.mixed_path(x.shape, w.shape, s, pads)
    if native_mode == "on":
        assert path in ("native", "tap_native")
    else:
        assert "native" not in path
    assert_same_function(lambda w, x: conv.mixed_conv(x, w, s, pads),
                         lambda w, x: conv.xla_conv(x, w, s, pads), w, x)
    text = lowered(jax.grad(lambda w, x: jnp.sum(conv.mixed_conv(x, w, s, pads) ** 2),
                            (0, 1)), w, x)
    on, native_path = native_mode == "on", path == "native"
    # forward (and input gradient at stride 1) natively; the kernel gradient too, but for
    # the tap paths (their gradients are two matrix products)
    assert text.count("zoo_conv(") == (1 + (native_path and s == (1, 1))) * on
    assert text.count("zoo_conv_kernel_grad(") == int(on and native_path)


@needs_cxx
def test_native_conv_only_where_it_fits(monkeypatch):
    """Not for bfloat16, dilation, a column stride past 2, or more than
    NATIVE_CONV_MAX_DEPTH kernel values per output; and off with the native kernels."""
    monkeypatch.setenv("ZOO_NATIVE", "on")
    pads = conv.normalize_padding("SAME")
    path = lambda *a, **k: conv.mixed_path((32, 28, 28, 16), *a, **k)  # noqa: E731
    assert path((3, 3, 16, 16), (1, 1), pads) == "native"
    assert path((3, 3, 16, 16), (1, 1), pads, (1, 1), jnp.bfloat16) != "native"
    assert path((3, 3, 16, 16), (1, 1), pads, (2, 2)) != "native"
    assert path((3, 3, 16, 16), (1, 3), pads) != "native"
    assert path((3, 3, 16, 16), (1, 1), pads, native_kernels=False) != "native"
    deep = conv.NATIVE_CONV_MAX_DEPTH // 9 + 1
    assert conv.mixed_path((32, 28, 28, deep), (3, 3, deep, 16), (2, 2), pads) != "native"
    with native.use_mode("off"):
        assert path((3, 3, 16, 16), (1, 1), pads) != "native"
    x, w = jnp.ones((2, 9, 9, 16)), jnp.ones((3, 3, 16, 16))
    f = jax.grad(lambda w, x: jnp.sum(conv.mixed_conv(x, w, (1, 1), pads)), (0, 1))
    assert "zoo_conv(" in lowered(f, w, x) and "zoo_conv_kernel_grad(" in lowered(f, w, x)
    for platform in ("cuda", "tpu"):
        assert "zoo_" not in lowered(f, w, x, platforms=(platform,))


@pytest.mark.parametrize("window, stride, padding, size", [
    (3, 2, "SAME", (147, 20)), (3, 2, "VALID", (9, 10)), (2, 2, "SAME", (7, 9)),
    (3, 1, "SAME", (8, 8)), ((1, 3), (1, 2), ((0, 0), (1, 2)), (5, 9)), (3, 2, "SAME", (1, 1))])
def test_max_pool_equals_xla_exactly(native_mode, window, stride, padding, size):
    """Forward and gradient bit for bit (the first maximum of a window takes the gradient;
    integer-valued inputs tie in most windows, and distinct integer weights per output make
    any wrong route visible while every sum stays exact)."""
    window, stride = conv.pair(window), conv.pair(stride)
    x = jnp.round(2 * jax.random.normal(jax.random.PRNGKey(0), (2, *size, 37)))
    pads = conv.explicit_pads(size, window, stride, (1, 1), conv.normalize_padding(padding))

    def grads(pool):
        def loss(x):
            y = pool(x, window, stride, pads)
            return jnp.sum(y * (1 + jnp.arange(y.size).reshape(y.shape) % 97))
        return jax.jit(lambda x: pool(x, window, stride, pads))(x), jax.jit(jax.grad(loss))(x)

    (y, g), (y_ref, g_ref) = grads(conv.shift_max_pool), grads(conv.xla_max_pool)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(g, g_ref)
    assert ("zoo_max_pool_grad" in lowered(jax.grad(lambda x: jnp.sum(
        conv.shift_max_pool(x, window, stride, pads))), x)) == (native_mode == "on")


def test_max_pool_propagates_nan(native_mode):
    """A NaN in a window makes its maximum NaN (as XLA's), so a diverging run shows."""
    x = jnp.zeros((1, 5, 5, 3)).at[0, 1, 1, 1].set(jnp.nan)
    y = jax.jit(lambda x: conv.shift_max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1))))(x)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(conv.xla_max_pool(
        x, (3, 3), (2, 2), ((1, 1), (1, 1)))))
    assert int(np.isnan(y).sum()) == 4  # pixel (1, 1) is in 2 x 2 of the 3x3/2 windows


def test_native_kernels_under_vmap(native_mode):
    """``vmap`` of a function with the custom calls runs them once per element."""
    xs = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 6, 7, 5))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 5, 1))
    f = jax.grad(_depthwise_and_pool, (0, 1))
    batched = jax.jit(jax.vmap(f, in_axes=(0, None)))(xs, w)
    for i in range(xs.shape[0]):
        for a, b in zip(batched, f(xs[i], w), strict=True):
            np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-5)


@needs_cxx
@pytest.mark.slow  # whole models: 12-40 s each; the kernels' own tests are quick
@pytest.mark.parametrize("name, size", [("mobilenet", 32), ("xception", 71),
                                        ("resnet18", 64)])
def test_model_step_equals_without_native(monkeypatch, name, size):
    """A whole model's output and the gradients of every parameter: the same with the
    native kernels as with XLA's formulations. MobileNet: depthwise at strides 1 and 2;
    Xception: depthwise and max-pool blocks with residuals; the three: native dense
    convolutions (the stems; ResNet18's first stage, with its input gradients).

    Inference-mode batch norm (fused into the native kernels where they run: the
    gradient through a frozen batch norm, as in fine-tuning): in training mode, 2 images
    of 32-71 px give batch norms of 2-50 values, where rounding alone moves results by
    1e-3. The output is compared to float32 rounding, the gradients by direction, leaf by
    leaf: a ReLU input that rounding moves across zero changes a gradient by percents
    (measured: a 1e-7 relative perturbation of the parameters moved Xception's training
    gradients 6% from the float64 ones, with XLA's formulations alone); a wrong kernel
    changes them entirely."""
    overrides = {"alpha": 0.25} if name == "mobilenet" else {}
    model = zoo.create(name, num_classes=3, **overrides)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size, 3))
    variables = model.init(jax.random.PRNGKey(1), x)

    def loss(params):
        return jnp.sum(model.apply({**variables, "params": params}, x) * weights)

    weights = jax.random.normal(jax.random.PRNGKey(3), (2, 3))
    results = {}
    for mode in ("on", "off"):
        monkeypatch.setenv("ZOO_NATIVE", mode)
        step = jax.value_and_grad(loss)
        text = lowered(step, variables["params"])
        assert ("zoo_conv_kernel_grad(" in text) == (mode == "on")
        if name != "resnet18":  # and the inference batch norms fused into the kernels
            assert ("zoo_depthwise_kernel_grad" in text) == (mode == "on")
            assert ("zoo_depthwise_forward_act" in text) == (mode == "on")
        results[mode] = jax.jit(step)(variables["params"])
    (loss_on, grads_on), (loss_off, grads_off) = results["on"], results["off"]
    np.testing.assert_allclose(loss_on, loss_off, rtol=1e-5)
    for on, off in zip(jax.tree.leaves(grads_on), jax.tree.leaves(grads_off), strict=True):
        on, off = np.ravel(on), np.ravel(off)
        cosine = on @ off / (np.linalg.norm(on) * np.linalg.norm(off) + 1e-30)
        assert cosine > 0.99, cosine

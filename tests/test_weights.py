"""Pretrained weight import (issue 4): readers, strict merge, surgery, download, safety.

Quick loop: ``pytest tests/test_weights.py -m "not slow"``. Keras is the reference for
HDF5 files (written by its own legacy writer with random weights); torch, when
installed, writes the ``.pth`` files and gives the reference outputs.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import reference as R
import weight_files as W

import zoo
from zoo.weights.convert import Surgery, WeightMismatchError, adapt_input_kernel, merge
from zoo.weights.keras_h5 import WeightFileError, read_keras_h5
from zoo.weights.torch_files import UnsafePickleError, read_pth

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "weights" / \
    "keras_mobilenet_v2_0.35_224_imagenet_backbone_in_model.h5"
SIZE = 32  # Keras' minimum input: cheap parity checks


def assert_close(ours, ref):
    """The zoo parity bound (tests/test_parity.py): 1e-4 of the logits' scale."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4 * max(1.0, np.abs(ref).max()))


def _cases(reference: str, attr: str, quick: set[str]):
    names = [n for n in zoo.list_models() if zoo.spec(n).reference == reference
             and getattr(zoo.spec(n), attr) is not None]
    return [n if n in quick else pytest.param(n, marks=pytest.mark.slow) for n in names]


def _parity_size(name: str) -> int:
    """A small input side for a model, or its default one if its shapes depend on it (VGG)."""
    import jax

    model, spec = zoo.create(name), zoo.spec(name)
    small = max(SIZE, spec.min_size)
    shapes = [jax.tree.map(lambda a: a.shape, jax.eval_shape(
        model.init, jax.random.key(0), _images(1, n))) for n in (small, spec.input_size)]
    return small if shapes[0] == shapes[1] else spec.input_size


def _images(n=2, size=SIZE, channels=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, size, size, channels)).astype("float32")


def _keras_backbone(km, pooling=None):
    """The include_top=False Keras ResNet50 with the weights of ``km``."""
    base = R.keras_model("resnet50", SIZE, include_top=False, pooling=pooling)
    for layer in base.layers:
        if layer.weights:
            layer.set_weights(km.get_layer(layer.name).get_weights())
    return base


@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    """Keras ResNet50 with random weights, and its legacy weights-only HDF5 file."""
    km = R.keras_model("resnet50", SIZE)
    R.keras_randomize(km)
    path = tmp_path_factory.mktemp("keras") / "resnet50.h5"
    W.save_keras_h5(km, path)
    return km, path


# ---------------------------------------------------------------- Keras HDF5 -> same outputs

@pytest.mark.parametrize("name", _cases("keras", "keras_names", {"resnet50"}))
def test_keras_h5_gives_keras_outputs(name, tmp_path, r50):
    size = _parity_size(name)
    if name == "resnet50":
        km, path = r50
    else:
        km = R.keras_model(name, size)
        R.keras_randomize(km)
        W.save_keras_h5(km, path := tmp_path / f"{name}.h5")
    variables = zoo.pretrained.load(name, path=path)
    x = _images(size=size)
    assert_close(zoo.create(name).apply(variables, x), km(x))


def test_keras1_names_read_like_keras2(r50, tmp_path):
    """The published VGG files still use Keras 1 names ('block1_conv1_W_1:0')."""
    km, path = r50
    W.save_keras1_h5(R.keras_layers(km), old := tmp_path / "keras1.h5")
    assert "conv1_conv_W_1:0" in read_keras_h5(old).groups["conv1_conv"]["conv1_conv"]
    a, b = zoo.pretrained.load("resnet50", path=path), zoo.pretrained.load("resnet50", path=old)
    np.testing.assert_array_equal(a["params"]["stem"]["conv"]["kernel"],
                                  b["params"]["stem"]["conv"]["kernel"])
    np.testing.assert_array_equal(a["batch_stats"]["stage4"]["block3"]["bn3"]["var"],
                                  b["batch_stats"]["stage4"]["block3"]["bn3"]["var"])


def test_nested_full_model_file_takes_the_backbone(r50, tmp_path):
    """A Keras full-model file with the backbone nested in a user model (Keras 3 writer)."""
    import keras

    km, _ = r50
    base = _keras_backbone(km, pooling="avg")
    user = keras.Sequential([keras.Input((SIZE, SIZE, 3)), base, keras.layers.Dense(3)])
    W.save_keras_h5(user, path := tmp_path / "full.h5", full_model=True)
    assert read_keras_h5(path).nested == [base.name]
    with pytest.warns(UserWarning, match="left out"):
        v = zoo.pretrained.load("resnet50", path=path, include_top=False, pooling="avg")
    x = _images()
    assert_close(zoo.create("resnet50", include_top=False, pooling="avg").apply(v, x), base(x))


# ---------------------------------------------------------------- transfer surgery

def test_include_top_false_drops_the_classifier(r50):
    km, path = r50
    v = zoo.pretrained.load("resnet50", path=path, include_top=False, pooling="avg")
    assert "head" not in v["params"]
    base = _keras_backbone(km, pooling="avg")
    x = _images()
    assert_close(zoo.create("resnet50", include_top=False, pooling="avg").apply(v, x), base(x))
    v = zoo.pretrained.load("resnet50", path=path, num_classes=None)
    assert "head" not in v["params"]


def test_new_num_classes_reinitialises_only_the_head(r50):
    _, path = r50
    full = zoo.pretrained.load("resnet50", path=path)
    a = zoo.pretrained.load("resnet50", path=path, num_classes=7, rng=1)
    b = zoo.pretrained.load("resnet50", path=path, num_classes=7, rng=2)
    assert a["params"]["head"]["kernel"].shape == (2048, 7)
    assert not np.allclose(a["params"]["head"]["kernel"], b["params"]["head"]["kernel"])
    for key in ("params", "batch_stats"):
        body = {k: v for k, v in full[key].items() if k != "head"}
        np.testing.assert_equal(body, {k: v for k, v in a[key].items() if k != "head"})


def test_notop_file_needs_a_new_head_or_no_top(tmp_path, r50):
    km, _ = r50
    base = _keras_backbone(km)
    W.save_keras_h5(base, path := tmp_path / "notop.h5")
    with pytest.raises(WeightMismatchError, match=r"missing from the file \(1\): head \["):
        zoo.pretrained.load("resnet50", path=path)  # 1000 classes: the file's head was wanted
    assert zoo.pretrained.load("resnet50", path=path, num_classes=5)["params"]["head"]


def test_grey_model_sums_the_first_conv(r50):
    km, path = r50
    v = zoo.pretrained.load("resnet50", path=path, in_channels=1)
    assert v["params"]["stem"]["conv"]["kernel"].shape == (7, 7, 1, 64)
    grey = _images(channels=1)
    ours = zoo.create("resnet50", in_channels=1).apply(v, grey)
    assert_close(ours, km(np.repeat(grey, 3, axis=-1)))


def test_adapt_input_kernel_rules():
    k = np.random.default_rng(0).normal(size=(3, 3, 3, 8))
    np.testing.assert_allclose(adapt_input_kernel(k, 1), k.sum(2, keepdims=True))
    four = adapt_input_kernel(k, 4)
    np.testing.assert_allclose(four[:, :, 3], k[:, :, 0] * 0.75)
    assert four.shape == (3, 3, 4, 8)


def test_depthwise_layouts_are_matched():
    kernel = np.arange(3 * 3 * 4 * 2, dtype=np.float32).reshape(3, 3, 4, 2)  # Keras (H,W,C,M)
    target = {"params": {"dw": {"kernel": np.zeros((3, 3, 1, 8), np.float32)}}}
    out = merge({("params", "dw", "kernel"): kernel}, target, source="Keras")
    np.testing.assert_array_equal(out["params"]["dw"]["kernel"][0, 0, 0], kernel[0, 0].ravel())


def test_surgery_never_hides_a_mismatch():
    target = {"params": {"a": {"kernel": np.zeros((2, 2))}}}
    bad = {("params", "a", "kernel"): np.zeros((2, 3)), ("params", "b", "kernel"): np.zeros(1)}
    with pytest.raises(WeightMismatchError) as e:
        merge(bad, target, source="Keras", surgery=Surgery(drop=("c",)))
    assert "not in the model (1): b [kernel]" in str(e.value) and "(2, 3)" in str(e.value)


# ---------------------------------------------------------------- bad files

def test_wrong_architecture_is_listed(r50):
    _, path = r50
    with pytest.raises(WeightMismatchError, match=r"from the file \(102\): stage3/block7/bn1 \["):
        zoo.pretrained.load("resnet101", path=path)
    with pytest.raises(WeightMismatchError, match=r"in the file but not in the model.*conv1_conv"):
        zoo.pretrained.load("vgg16", path=path)
    with pytest.raises(WeightFileError, match="vgg16's spec has no torch_names"):
        zoo.pretrained.load("vgg16", path=_tiny_pth(path.parent))
    with pytest.raises(WeightFileError, match="resnet50's spec has no torch_names"):
        zoo.pretrained.load("resnet50", path=_tiny_pth(path.parent))  # a Keras model
    with pytest.raises(WeightMismatchError, match="stem/conv/kernel: torch"):
        zoo.pretrained.load("resnet18", path=_tiny_pth(path.parent))


def _tiny_pth(folder: Path) -> Path:
    W.save_torch_zip({"conv1.weight": np.zeros((1, 1, 1, 1), np.float32)}, p := folder / "t.pth")
    return p


def test_truncated_hdf5_is_a_clear_error(r50, tmp_path):
    _, path = r50
    data = path.read_bytes()
    for cut in (len(data) // 2, 1000):
        (bad := tmp_path / f"cut{cut}.h5").write_bytes(data[:cut])
        with pytest.raises(WeightFileError, match="truncated"):
            zoo.pretrained.load("resnet50", path=bad)


def test_hdf5_that_is_not_keras(tmp_path):
    import h5py

    with h5py.File(path := tmp_path / "x.h5", "w") as f:
        f["a"] = np.zeros(3)
    with pytest.raises(WeightFileError, match="not a Keras"):
        read_keras_h5(path)


# ---------------------------------------------------------------- the real Keras 2 file

@pytest.mark.skipif(not SHARED.exists(), reason=f"{SHARED} absent (../shared not mounted)")
def test_real_keras2_file_layout():
    f = read_keras_h5(SHARED)
    assert f.keras_version == "2.4.0" and f.nested == ["sequential_9", "sequential_11"]
    layers, left_out = f.layers({"Conv1": "stem/conv", "block_1_expand": "x"})
    assert left_out == ["sequential_11"] and "dense_Dense5" not in layers
    assert list(layers["expanded_conv_depthwise"]) == ["expanded_conv_depthwise/depthwise_kernel:0"]
    assert sum(a.size for w in layers.values() for a in w.values()) == 410_208


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.exists(), reason=f"{SHARED} absent (../shared not mounted)")
def test_real_keras2_file_gives_keras_features():
    if "mobilenetv2" not in zoo.list_models():
        pytest.skip("mobilenetv2 is not registered on this branch yet (zoo/mobilenet.py)")
    import h5py
    import keras

    km = keras.applications.MobileNetV2(alpha=0.35, include_top=False, weights=None,
                                        input_shape=(224, 224, 3))
    loaded = 0  # set Keras' weights straight from the file: Keras 3 cannot read it
    with h5py.File(SHARED) as f:
        group = f["model_weights/sequential_9"]
        for layer in km.layers:
            if layer.weights:
                by_name = {w.path.rsplit("/", 1)[-1]: w for w in layer.weights}
                for key, ds in group[layer.name].items():
                    short = key.split(":")[0].replace("depthwise_kernel", "kernel")
                    by_name.pop(short).assign(ds[()])
                    loaded += ds.size
                assert not by_name, f"{layer.name}: {list(by_name)} not in the file"
    assert loaded == km.count_params() == 410_208
    with pytest.warns(UserWarning, match="sequential_11"):
        v = zoo.pretrained.load("mobilenetv2", path=SHARED, alpha=0.35, include_top=False)
    x = _images(size=224, seed=3)
    ours = zoo.create("mobilenetv2", alpha=0.35, include_top=False).apply(v, x)
    assert_close(ours, km(x))


# ---------------------------------------------------------------- torchvision .pth / safetensors

@pytest.mark.skipif(not R.HAVE_TORCH, reason="torch/torchvision not installed")
@pytest.mark.parametrize("name", _cases("torchvision", "torch_names",
                                        {"resnet18", "squeezenet1_1"}))
def test_pth_gives_torchvision_outputs(name, tmp_path):
    import torch

    tm = R.torch_model(name)
    torch.save(tm.state_dict(), zipped := tmp_path / "new.pth")
    torch.save(tm.state_dict(), legacy := tmp_path / "old.pth",
               _use_new_zipfile_serialization=False)
    x = _images(size=64)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    a = zoo.pretrained.load(name, path=zipped)
    assert_close(zoo.create(name).apply(a, x), ref)
    np.testing.assert_equal(a, zoo.pretrained.load(name, path=legacy))
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    save_file(tm.state_dict(), st := tmp_path / "w.safetensors")
    np.testing.assert_equal(a, zoo.pretrained.load(name, path=st))


@pytest.mark.skipif(not R.HAVE_TORCH, reason="torch/torchvision not installed")
def test_torch_grey_features(tmp_path):
    import torch

    tm = R.torch_model("resnet18")
    torch.save(tm.state_dict(), path := tmp_path / "r18.pth")
    v = zoo.pretrained.load("resnet18", path=path, include_top=False, pooling="avg",
                            in_channels=1)
    tm.fc = torch.nn.Identity()
    grey = _images(size=64, channels=1)
    with torch.no_grad():
        ref = tm(torch.from_numpy(np.repeat(grey, 3, -1).transpose(0, 3, 1, 2))).numpy()
    ours = zoo.create("resnet18", include_top=False, pooling="avg", in_channels=1).apply(v, grey)
    assert_close(ours, ref)


def _without_torch(code: str) -> str:
    """Run ``code`` in a fresh interpreter where ``import torch`` fails."""
    prelude = "import sys; sys.modules['torch'] = None\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", prelude + code], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_pth_without_torch(tmp_path):
    """State dicts in torch.save's zip layout, written and read with no torch at all."""
    import jax
    from flax import traverse_util

    rng = np.random.default_rng(0)
    expected, code = {}, "import numpy as np, zoo\nfrom flax.traverse_util import flatten_dict\n"
    for name in ("resnet18", "squeezenet1_1"):
        shapes = jax.eval_shape(zoo.create(name).init, jax.random.key(0), _images(1, 64))
        ref = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)
        W.save_torch_zip(W.torch_state_from_ours(name, ref), path := tmp_path / f"{name}.pth")
        expected[name] = {"/".join(k): a for k, a in traverse_util.flatten_dict(ref).items()}
        code += (f"v = flatten_dict(zoo.pretrained.load({name!r}, path={str(path)!r}))\n"
                 f"np.savez({str(tmp_path / name)!r}, "
                 "**{'/'.join(k): a for k, a in v.items()})\n")
    _without_torch(code)
    for name, flat in expected.items():
        out = np.load(tmp_path / f"{name}.npz")
        assert sorted(out.files) == sorted(flat)
        for k, a in flat.items():
            np.testing.assert_array_equal(out[k], a)


@pytest.mark.skipif(not R.HAVE_TORCH, reason="torch not installed")
def test_torch_written_file_read_without_torch(tmp_path):
    import torch

    state = {"w": torch.arange(6.0).reshape(2, 3).t(), "n": torch.tensor(3)}
    torch.save(state, p := tmp_path / "a.pth")
    out = _without_torch(f"from zoo.weights import read_pth; print(read_pth({str(p)!r}))")
    assert "[0., 3.]" in out and "'n': array(3)" in out


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_malicious_pickle_is_refused_unrun(layout, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(W.Evil(f"touch {marker}"), protocol=2)
    path = tmp_path / "evil.pth"
    if layout == "zip":
        W.save_torch_zip({}, path, pkl=payload)
    else:
        path.write_bytes(payload)
    with pytest.raises(UnsafePickleError, match=r"refusing to unpickle (posix|os)\.system"):
        read_pth(path)
    with pytest.raises(UnsafePickleError):
        zoo.pretrained.load("resnet18", path=path)
    assert not marker.exists()


def test_damaged_pth_is_a_clear_error(tmp_path):
    W.save_torch_zip({"a": np.ones((4, 4), np.float32)}, path := tmp_path / "a.pth")
    with zipfile.ZipFile(path) as z:
        z.extractall(tmp_path / "x")
    (tmp_path / "x/archive/data/0").write_bytes(b"\0" * 10)  # storage cut short
    with zipfile.ZipFile(bad := tmp_path / "bad.pth", "w") as z:
        for f in (tmp_path / "x").rglob("*"):
            if f.is_file():
                z.write(f, f.relative_to(tmp_path / "x"))
    with pytest.raises(WeightFileError, match="truncated"):
        read_pth(bad)
    (junk := tmp_path / "junk.pth").write_bytes(b"not a weights file")
    with pytest.raises(WeightFileError):
        zoo.pretrained.load("resnet18", path=junk)

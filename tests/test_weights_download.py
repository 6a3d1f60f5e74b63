"""Reference weights download (verified, cached, atomic, offline errors) and scripts/convert.py.

No network: the "official" site is a ``file://`` folder or a monkeypatched opener, and
the weight files are written from random variables without Keras.
"""

from __future__ import annotations

import os
import urllib.error

import numpy as np
import pytest
import weight_files as W

import zoo
from zoo import published
from zoo.weights import download


@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    """A Keras 2-style weights file for resnet50 (random values), and its variables."""
    variables = W.random_variables("resnet50")
    path = tmp_path_factory.mktemp("site") / "resnet50.h5"
    W.save_keras_h5_from_ours("resnet50", variables, path)
    return variables, path


def test_file_from_ours_loads_back(r50):
    variables, path = r50
    np.testing.assert_equal(zoo.pretrained.load("resnet50", path=path),
                            {k: dict(v) for k, v in variables.items()})


def test_reference_urls():
    """The specs name the files keras.applications and torchvision download."""
    f = zoo.spec("resnet18").weights()
    assert f.url == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert f.sha256 == "f37072fd"
    f = zoo.spec("mobilenetv2").weights(include_top=False, alpha=0.35)
    assert f.url.endswith("mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_"
                          "0.35_224_no_top.h5")
    f = zoo.spec("mobilenet").weights(alpha=0.25, size=128)
    assert f.url.endswith("mobilenet/mobilenet_2_5_128_tf.h5") and f.md5 is None
    # the SHA-256 Keras publishes (WEIGHTS_HASHES of keras/src/applications/mobilenet.py)
    assert f.sha256 == "fe295db7f78635f1403127e3ba8cdc6237f83262bdb745063a67c1d81190c7f8"
    assert zoo.spec("resnet50").weights().md5 == "2cb95161c43110f7111970584f804107"
    assert zoo.spec("densenet121").weights(include_top=False).url.endswith(
        "densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5")
    with pytest.raises(download.WeightsUnavailableError, match="alpha"):
        zoo.spec("mobilenetv2").weights(alpha=0.3)
    with pytest.raises(download.WeightsUnavailableError, match="no published paper weights"):
        zoo.pretrained.load("inception_v2")  # a paper's table: no file anywhere
    with pytest.raises(download.WeightsUnavailableError, match="torchvision ones"):
        zoo.pretrained.load("resnet18", source="keras")


def test_every_keras_and_torchvision_model_names_its_files():
    for name in zoo.list_models():
        s = zoo.spec(name)
        if s.task == "classification" and s.reference in ("keras", "torchvision"):
            f = s.weights(include_top=False)
            base = download.KERAS if s.reference == "keras" else download.TORCH
            assert f.url.startswith(base) and (f.md5 or f.sha256 or "mobilenet" in name)
            assert s.name_map("keras" if s.reference == "keras" else "torch",
                              zoo.create(name)), name


def test_load_downloads_once_and_verifies(r50, tmp_path, monkeypatch):
    _, path = r50
    site = tmp_path / "site" / "resnet"
    site.mkdir(parents=True)
    name = "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    (site / name).write_bytes(path.read_bytes())
    monkeypatch.setattr(published, "KERAS", (tmp_path / "site").as_uri() + "/")  # its home
    monkeypatch.setitem(download.SHA256, name, download.digests(path)[0])
    monkeypatch.setenv("TRANSFER_ZOO_CACHE", str(cache := tmp_path / "cache"))
    v = zoo.pretrained.load("resnet50")
    assert (cache / name).read_bytes() == path.read_bytes()
    (site / name).unlink()  # a second load must not download again
    np.testing.assert_equal(v, zoo.pretrained.load("resnet50"))
    assert sorted(os.listdir(cache)) == [name]


def test_bad_digest_keeps_nothing(r50, tmp_path):
    _, path = r50
    f = download.WeightFile(path.as_uri(), sha256="0" * 64)
    with pytest.raises(download.WeightsUnavailableError, match="digest mismatch"):
        download.fetch(f, cache=tmp_path / "c")
    assert os.listdir(tmp_path / "c") == []
    f = download.WeightFile(path.as_uri(), md5=download.digests(path)[1])
    assert download.fetch(f, cache=tmp_path / "c").read_bytes() == path.read_bytes()


def test_a_wrong_file_put_in_the_cache_is_refused(r50, tmp_path):
    _, path = r50
    f = download.WeightFile(path.as_uri(), md5=download.digests(path)[1])
    (tmp_path / f.filename).write_bytes(path.read_bytes()[:-10])  # truncated by hand
    with pytest.raises(download.WeightsUnavailableError, match="Delete it to download again"):
        download.fetch(f, cache=tmp_path)
    (tmp_path / f.filename).write_bytes(path.read_bytes())
    assert download.fetch(f, cache=tmp_path).read_bytes() == path.read_bytes()


def test_interrupted_download_keeps_nothing(tmp_path, monkeypatch):
    class Cut:
        headers = {"Content-Length": "100"}
        data = [b"x" * 40, b""]

        def read(self, n):
            return self.data.pop(0)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(download.urllib.request, "urlopen", lambda url, timeout: Cut())
    with pytest.raises(download.WeightsUnavailableError, match="40 of 100 bytes"):
        download.fetch("https://example.invalid/w.h5", cache=tmp_path)
    assert os.listdir(tmp_path) == []


def test_offline_error_names_url_and_cache(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(download.urllib.request, "urlopen", offline)
    monkeypatch.setenv("TRANSFER_ZOO_CACHE", str(tmp_path))
    with pytest.raises(download.WeightsUnavailableError) as e:
        zoo.pretrained.load("resnet18")
    msg = str(e.value)
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    assert str(tmp_path / "resnet18-f37072fd.pth") in msg and "no network" in msg


# ---------------------------------------------------------------- scripts/convert.py

def test_convert_script_writes_a_checkpoint_once(r50, tmp_path):
    from tests.cli import run_script

    variables, path = r50
    out = tmp_path / "ckpt"
    args = ["--model", "resnet50", "--input", path, "--output", out]
    assert f"resnet50: wrote {out} (batch_stats 53,120, params 23,534,592)" in run_script(
        "convert", *args, "--no-top", "--set", "pooling='avg'").stdout
    again = run_script("convert", *args, check=False)
    assert again.returncode == 2 and f"{out} exists; pass --overwrite" in again.stderr
    v = zoo.pretrained.load("resnet50", path=out, num_classes=3)  # no head in it: a new one
    assert v["params"]["head"]["kernel"].shape == (2048, 3)
    np.testing.assert_equal(v["batch_stats"], variables["batch_stats"])
    run_script("convert", *args, "--overwrite")
    np.testing.assert_equal(zoo.pretrained.load("resnet50", path=out), variables)


SHARED_WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              os.pardir, "shared", "weights")


def test_mobilenet_v1_digests_are_pinned_and_the_real_file_verifies(tmp_path):
    """Every MobileNet v1 file has the SHA-256 Keras publishes; the official 0.25 file in
    ../shared/weights verifies against it (as a cache put there by hand), a changed copy
    does not."""
    spec = zoo.spec("mobilenet")
    for alpha in (0.25, 0.5, 0.75, 1.0):
        for size in (128, 160, 192, 224):
            for top in (True, False):
                f = spec.weights(include_top=top, alpha=alpha, size=size)
                assert f.sha256 and len(f.sha256) == 64, f.filename
    f = spec.weights(include_top=False, alpha=0.25, size=224)
    assert f.filename == "mobilenet_2_5_224_tf_no_top.h5"
    if not os.path.exists(os.path.join(SHARED_WEIGHTS, f.filename)):
        pytest.skip("../shared/weights is not beside the checkout")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "has no published digest" warning
        assert download.fetch(f, cache=SHARED_WEIGHTS).name == f.filename
    data = bytearray(open(os.path.join(SHARED_WEIGHTS, f.filename), "rb").read())
    data[len(data) // 2] ^= 1
    (tmp_path / f.filename).write_bytes(bytes(data))
    with pytest.raises(download.WeightsUnavailableError, match="Delete it to download again"):
        download.fetch(f, cache=tmp_path)

"""Cached backbone features: same head as the uncached path, reused, invalidated by changes."""

import dataclasses
import glob
import os

import jax
import numpy as np
import pytest

import zoo
from tests.tiny_model import registered, tiny_config
from train import checkpoint as C
from train import data as D
from train import features as FE
from train import loop
from train import model as M

NO_AUG = {"data.augment.hflip": False, "data.augment.vflip": False, "policy": "frozen",
          "epochs": 1}


@pytest.fixture(scope="module")
def tiny():
    with registered() as name:
        yield name


def _run(workdir, **overrides):
    report = loop.train_and_evaluate(tiny_config(**{**NO_AUG, **overrides}), str(workdir))
    return report, open(os.path.join(workdir, "train.log")).read()


def _head(workdir):
    return C.restore_variables(str(workdir))["params"]["head"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return str(tmp_path_factory.mktemp("features"))


@pytest.mark.parametrize("head", ["reference", "mlp"])
def test_cached_head_equals_uncached(tiny, tmp_path, shared, head):
    kw = {"head.kind": head, "head.dropout": 0.0, "features_dir": shared}
    cached, log1 = _run(tmp_path / "a", **kw)
    assert "cached backbone features" in log1 and "feature cache: computed" in log1
    plain, log2 = _run(tmp_path / "b", **kw, cache_features=False)
    assert "not caching backbone features: config.cache_features is off" in log2
    for x, y in zip(_leaves(_head(tmp_path / "a")), _leaves(_head(tmp_path / "b")), strict=True):
        np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5)
    assert cached["confusion_matrix"] == plain["confusion_matrix"]
    np.testing.assert_allclose(cached["loss"], plain["loss"], rtol=1e-4)


def test_second_run_reuses_the_cache(tiny, tmp_path, shared):
    first, _ = _run(tmp_path / "a", features_dir=shared)
    files = set(glob.glob(os.path.join(shared, f"{tiny}-*.npy")))
    again, log = _run(tmp_path / "b", features_dir=shared, learning_rate=1e-2,
                      init=str(tmp_path / "a"))  # same backbone, read from a checkpoint
    assert "feature cache: reusing" in log and "computed" not in log
    # no new file (the other tests of this module may have added theirs before: with
    # pytest-xdist they may run in this worker or another, in any order)
    assert files and set(glob.glob(os.path.join(shared, f"{tiny}-*.npy"))) == files


def _leaves(tree):
    for k in sorted(tree):
        v = tree[k]
        yield from (_leaves(v) if isinstance(v, dict) else [np.asarray(v).ravel()])


def test_weights_and_preprocessing_change_the_key(tiny):
    config = tiny_config(**NO_AUG)
    source = D.synthetic_source(20)
    model = M.build_model(config, 2)
    variables = M.init_variables(model, 16, 0)
    spec, idx = zoo.spec(tiny), np.arange(10)
    key = FE.cache_key(config, spec, variables, source, idx)
    assert FE.cache_key(config, spec, variables, source, idx) == key
    head = jax.tree.map(lambda x: x + 1, variables["params"]["head"])
    assert FE.cache_key(config, spec, {**variables, "params": {**variables["params"],
                                       "head": head}}, source, idx) == key  # head: no effect
    moved = jax.tree.map(lambda x: x, variables)
    moved["params"]["stem"]["conv"]["kernel"] = moved["params"]["stem"]["conv"]["kernel"] * 1.01
    assert FE.cache_key(config, spec, moved, source, idx) != key
    moved = jax.tree.map(lambda x: x, variables)
    moved["batch_stats"]["stem"]["bn"]["mean"] = moved["batch_stats"]["stem"]["bn"]["mean"] + 1
    assert FE.cache_key(config, spec, moved, source, idx) != key
    assert FE.cache_key(config, spec, variables, source, np.arange(1, 11)) != key
    for k, v in (("data.image_size", 24), ("dtype", "bfloat16"), ("head.kind", "mlp")):
        assert FE.cache_key(tiny_config(**NO_AUG, **{k: v}), spec, variables, source, idx) != key
    other = dataclasses.replace(spec, mean=(0.0, 0.0, 0.0))
    assert FE.cache_key(config, other, variables, source, idx) != key


def test_when_features_are_not_cached(tiny):
    params = {"head": {"kernel": np.zeros((16, 2))}}
    assert FE.unavailable(tiny_config(**NO_AUG), params) is None
    assert "augmentation" in FE.unavailable(tiny_config(**{**NO_AUG, "data.augment.hflip": True}),
                                            params)
    assert "trains part" in FE.unavailable(tiny_config(**{**NO_AUG, "policy": "finetune:1"}),
                                           params)
    conv_head = {"head": {"kernel": np.zeros((1, 1, 16, 2))}}  # squeezenet-like reference head
    assert "head.kind=mlp" in FE.unavailable(tiny_config(**NO_AUG), conv_head)
    assert FE.unavailable(tiny_config(**NO_AUG, **{"head.kind": "mlp"}), conv_head) is None

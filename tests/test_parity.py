"""Output and parameter parity with the references (Keras applications, torchvision).

The reference model gets random weights (biases and BN statistics too), they are copied
into our variables through the family's name map, and both run on the same batch.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import reference as R
from conftest import model_params

import zoo
from zoo.weights import convert

# Classifiers only: a detector on a Keras backbone (yolo_mobilenetv2) has no Keras twin.
CLASSIFIERS = [n for n in zoo.list_models() if zoo.spec(n).task == "classification"]
KERAS = [n for n in CLASSIFIERS if zoo.spec(n).reference == "keras"]
TORCH = [n for n in CLASSIFIERS if zoo.spec(n).reference == "torchvision"]
needs_torch = pytest.mark.skipif(
    not R.HAVE_TORCH, reason="torch/torchvision not installed: `make test` installs them")


def parity_size(name: str) -> int:
    return max(zoo.spec(name).min_size, 48)


def name_map(name: str, model, kind: str) -> dict[str, str]:
    return zoo.spec(name).name_map(kind, model)


def assert_logits_match(ours, ref, *, softmax=True):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    scale = max(1.0, np.abs(ref).max())
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4 * scale)
    if softmax:
        p, q = jax.nn.softmax(ours), jax.nn.softmax(ref)
        assert np.abs(np.asarray(p) - np.asarray(q)).max() <= 1e-4


def keras_parity(name, *, include_top=True, pooling=None, num_classes=10):
    size = parity_size(name)
    kmodel = R.keras_model(name, size, include_top=include_top, num_classes=num_classes,
                           pooling=pooling)
    R.keras_randomize(kmodel)
    model = zoo.create(name, num_classes=num_classes, include_top=include_top, pooling=pooling)
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype("float32")
    target = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
    variables = convert.from_keras(R.keras_layers(kmodel), name_map(name, model, "keras"), target)
    # predict() runs the Keras model jitted: ~4x faster here than an eager kmodel(x)
    ref = kmodel.predict(x, verbose=0)
    assert_logits_match(jax.jit(model.apply)(variables, x), ref, softmax=include_top)
    return kmodel, model


@pytest.mark.parametrize("name", model_params(KERAS, quick={"resnet50", "mobilenetv2"}))
def test_keras_output_parity(name):
    keras_parity(name)


@pytest.mark.parametrize("name, pooling", [
    pytest.param("vgg16", "max", marks=pytest.mark.slow),
    pytest.param("resnet50v2", None, marks=pytest.mark.slow),
    pytest.param("xception", "max", marks=pytest.mark.slow),
    ("resnet50", "avg")])
def test_keras_output_parity_without_top(name, pooling):
    keras_parity(name, include_top=False, pooling=pooling)


@pytest.mark.parametrize("name", model_params(KERAS))
@pytest.mark.parametrize("top", ["notop", "classes"])
def test_keras_parameter_parity_of_variants(name, top):
    spec = zoo.spec(name)
    kwargs = dict(include_top=False) if top == "notop" else dict(num_classes=17)
    kmodel = R.keras_model(name, spec.input_size, **kwargs)
    model = zoo.create(name, **kwargs)
    x = jax.ShapeDtypeStruct((1, spec.input_size, spec.input_size, 3), np.float32)
    v = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
    assert sum(np.prod(a.shape) for a in jax.tree.leaves(v)) == kmodel.count_params()


@needs_torch
@pytest.mark.parametrize("name", model_params(TORCH, quick={"resnet18", "squeezenet1_1"}))
def test_torch_output_parity(name):
    import torch

    size = parity_size(name)
    tmodel = R.torch_model(name, num_classes=10)
    model = zoo.create(name, num_classes=10)
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype("float32")
    target = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
    variables = convert.from_torch(R.torch_state(tmodel), name_map(name, model, "torch"), target)
    with torch.no_grad():
        ref = tmodel(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    assert_logits_match(jax.jit(model.apply)(variables, x), ref)


@needs_torch
@pytest.mark.parametrize("name", model_params(TORCH))
def test_torch_parameter_parity_and_min_size(name):
    import torch

    spec = zoo.spec(name)
    tmodel = R.torch_model(name, num_classes=17)
    top = {t for t, p in name_map(name, zoo.create(name), "torch").items()
           if p.split("/")[0] in ("head", "fc1", "fc2")}
    head_params = {k for k, _ in tmodel.named_parameters() if k.rpartition(".")[0] in top}
    for kwargs, expected in (
        (dict(num_classes=17), R.torch_count(tmodel)),
        (dict(include_top=False),
         sum(p.numel() for k, p in tmodel.named_parameters() if k not in head_params)),
    ):
        model = zoo.create(name, **kwargs)
        x = jax.ShapeDtypeStruct((1, spec.input_size, spec.input_size, 3), np.float32)
        v = jax.eval_shape(lambda x, m=model: m.init(jax.random.PRNGKey(0), x), x)
        assert sum(np.prod(a.shape) for a in jax.tree.leaves(v["params"])) == expected
    # torchvision accepts our declared minimum input size and produces logits from it
    with torch.no_grad():
        out = tmodel(torch.zeros(1, 3, spec.min_size, spec.min_size))
    assert out.shape == (1, 17)


def test_weight_mismatch_is_reported_not_ignored():
    model = zoo.create("resnet18", num_classes=10)
    x = np.zeros((1, 32, 32, 3), np.float32)
    target = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
    good = {"stem/conv": {"kernel": np.zeros((7, 7, 3, 64), np.float32)}}
    with pytest.raises(convert.WeightMismatchError, match=r"missing from the file \(\d+\)"):
        convert.from_keras(good, {"stem/conv": "stem/conv"}, target)
    bad = {"conv1.weight": np.zeros((64, 3, 5, 5), np.float32), "extra.weight": np.zeros(3)}
    with pytest.raises(convert.WeightMismatchError) as err:
        convert.from_torch(bad, {"conv1": "stem/conv"}, target)
    msg = str(err.value)
    assert "extra.weight" in msg and "shape mismatch" in msg and "(5, 5, 3, 64)" in msg

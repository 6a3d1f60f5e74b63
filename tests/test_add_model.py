"""Adding a family is its file plus one registration line (docs/add_a_model.md).

A tiny family is written here as it would be in ``zoo/tinynet.py``, registered inside a
fixture, and put through the registry-wide checks of tests/test_zoo.py (the same
functions the parametrised tests call), freezing by groups, ``features_only`` and a
YOLO detector on it. The fixture unregisters it, so other tests never see it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import jax
import jax.numpy as jnp
import pytest
from flax import linen as nn
from test_zoo import REGISTRY_CHECKS, abstract_vars, check_groups, check_parameter_count

import zoo
from zoo import layers
from zoo.registry import TF, FeatureTap, ModelSpec

# ------------------------------------------------------ what zoo/tinynet.py would hold


class ConvBN(nn.Module):
    """3x3 conv (no bias), batch norm, ReLU."""

    features: int
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = layers.Conv(self.features, 3, self.stride, padding="SAME", use_bias=False,
                        dtype=self.dtype, name="conv")(x)
        x = layers.batch_norm(epsilon=1e-3, momentum=0.99, dtype=self.dtype, name="bn")(
            x, use_running_average=not train)
        return nn.relu(x)


class TinyNet(nn.Module):
    """A stride-2 stem and one stride-2 ConvBN per stage: strides 2 to 32."""

    widths: tuple[int, ...] = (8, 8, 16, 32, 64)  # stem, stage1..4
    num_classes: int | None = 1000
    include_top: bool = True
    pooling: str | None = None
    in_channels: int = 3
    dtype: Any = jnp.float32
    min_size: int = 32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        layers.check_input(x, model="TinyNet", in_channels=self.in_channels,
                           min_size=self.min_size)
        x = ConvBN(self.widths[0], 2, self.dtype, name="stem")(x, train)
        for i, width in enumerate(self.widths[1:], 1):
            x = ConvBN(width, 2, self.dtype, name=f"stage{i}")(x, train)
        return layers.pooled_top(x, include_top=self.include_top, pooling=self.pooling,
                                 num_classes=self.num_classes, dtype=self.dtype)


def tinynet_taps(model: TinyNet) -> tuple[FeatureTap, ...]:
    """Every module's output; the channels follow the ``widths`` option."""
    names = ("stem", *(f"stage{i}" for i in range(1, len(model.widths))))
    pairs = zip(names, model.widths, strict=True)
    return tuple(FeatureTap(n, 2**k, w) for k, (n, w) in enumerate(pairs, 1))


# Parameters only (reference "paper"): conv 3*3*cin*cout and BN scale + bias 2*cout per
# module, then the Dense head: 232 + 592 + 1,184 + 4,672 + 18,560 + 65,000 = 90,240.
SPEC = ModelSpec(
    name="tinynet", builder=TinyNet, family="tinynet", reference="paper",
    reference_name="tests/test_add_model.py", reference_params=90_240,
    input_size=64, min_size=32, **TF,
    groups=(("stem", r"^stem/"), *((f"stage{i}", rf"^stage{i}/") for i in range(1, 5)),
            ("head", r"^head/")),
    feature_taps=tinynet_taps,
    description="a tiny test family: five stride-2 ConvBNs",
)

# ------------------------------------------------------------------------- the tests


@contextlib.contextmanager
def registered(*specs: ModelSpec):
    """The models are in the registry inside this context only."""
    for s in specs:
        zoo.register(s)
    try:
        yield
    finally:
        for s in specs:
            if s.name in zoo.list_models():
                zoo.unregister(s.name)


@pytest.fixture
def tinynet():
    with registered(SPEC):  # zoo/tinynet.py would call zoo.register(SPEC) at import
        yield SPEC.name
    assert "tinynet" not in zoo.list_models()


@pytest.mark.parametrize("check", REGISTRY_CHECKS, ids=lambda c: c.__name__)
def test_registry_wide_checks(tinynet, check):
    check(tinynet)


def test_features_only(tinynet):
    feats = zoo.create(tinynet, features_only=True, out_indices=(-3, -2, -1))
    x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    out = jax.eval_shape(feats.apply, jax.eval_shape(feats.init, jax.random.key(0), x), x)
    assert [o.shape for o in out] == [(2, 8, 8, 16), (2, 4, 4, 32), (2, 2, 2, 64)]
    wide = zoo.create(tinynet, features_only=True, widths=(8, 8, 16, 32, 128))
    assert wide.feature_info[-1] == FeatureTap("stage4", 32, 128)


def test_freezing_by_groups(tinynet):
    from train import freeze

    spec = zoo.spec(tinynet)
    params = abstract_vars(zoo.create(tinynet, num_classes=3), 32)["params"]
    labels = freeze.flat_paths(freeze.param_labels(
        params, spec, freeze.trainable_fn(spec, "finetune", finetune_groups=1)))
    trains = {p.split("/")[0] for p, label in labels.items() if label != "frozen"}
    assert trains == {"stage4", "head"}
    assert {labels["head/kernel"], labels["stage4/conv/kernel"]} == {"head", "backbone"}


def test_a_yolo_detector_on_it(tinynet):
    """YOLOv3's neck and head take the new family's stride 8/16/32 taps, from its spec."""
    from zoo import yolo

    spec = yolo.register_backbone(tinynet)
    try:
        check_parameter_count(spec.name)
        check_groups(spec.name)
        model = zoo.create(spec.name, num_classes=2)
        x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
        out = jax.eval_shape(model.apply, jax.eval_shape(model.init, jax.random.key(0), x), x)
        assert [o.shape for o in out] == [(1, 2, 2, 3, 7), (1, 4, 4, 3, 7), (1, 8, 8, 3, 7)]
    finally:
        zoo.unregister(spec.name)


def test_registration_is_undone():
    with registered(SPEC):
        assert "tinynet" in zoo.list_models()
    assert "tinynet" not in zoo.list_models()
    with pytest.raises(ValueError, match="unknown model"):
        zoo.spec("tinynet")

"""The model registry: ``ModelSpec`` (data about a model), ``create``, ``list_models``, ``spec``.

``create`` builds an ``nn.Module`` and nothing else: no I/O, no parameters. Everything
the rest of the project needs to know about a model (input sizes, the normalisation its
reference weights expect, where its classifier is, how to freeze it in groups, how its
layers are named in the reference's weight files and where those files are, which
intermediate feature maps it exposes) lives in its ``ModelSpec``: code reads it there,
never by looking up module-name strings.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Sequence
from types import EllipsisType
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import linen as nn

REFERENCES = ("keras", "torchvision", "paper", "darknet")
TASKS = ("classification", "detection")

# Normalisations used by the reference weights, in 0-255 pixel units, RGB input.
CAFFE = dict(mean=(123.68, 116.779, 103.939), std=(1.0, 1.0, 1.0), channel_order="BGR")
TF = dict(mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5), channel_order="RGB")
TORCH = dict(
    mean=(0.485 * 255, 0.456 * 255, 0.406 * 255),
    std=(0.229 * 255, 0.224 * 255, 0.225 * 255),
    channel_order="RGB",
)


@dataclasses.dataclass(frozen=True)
class FeatureTap:
    """A feature map a model exposes: the output of one of its submodules (timm's
    ``feature_info`` entry).

    Attributes:
      module: the submodule's path (``stage3``, ``stage2/block12``, ``stem/conv_3``); ``''``
        is the model itself, i.e. its ``include_top=False`` output (used where the last
        feature map is made by layers that are not one submodule, e.g. ``post_bn`` + ReLU).
      stride: how much smaller than the input the map is (timm's ``reduction``).
      channels: its channel count.
    """

    module: str
    stride: int
    channels: int


# A spec's taps: fixed, or computed from the model when options change the widths (alpha).
Taps = tuple[FeatureTap, ...] | Callable[[nn.Module], tuple[FeatureTap, ...]]
NameMap = Callable[[nn.Module], dict[str, str]]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the project knows about one registered model.

    Attributes:
      name: registry name (lowercase, Keras/torchvision-like).
      builder: the module class (or a partial of it) that ``create`` calls.
      family: the ``zoo`` file that defines it (``resnet``, ``vgg``, ...).
      reference: ``keras`` (keras.applications), ``torchvision``, ``paper`` or
        ``darknet`` (a Darknet ``.cfg``).
      reference_name: the reference's own name, e.g. ``keras.applications.ResNet50``.
      reference_params: the reference's parameter count for ``num_classes`` classes
        with top: Keras ``count_params()`` and Darknet (the floats of a ``.weights``
        file) count BN statistics (= our params + batch_stats); torchvision's figure
        and a paper's count parameters only (= our params).
      input_size: default (and pretrained) input resolution.
      min_size: the smallest input side the model accepts.
      mean, std: per-channel normalisation of the reference weights in 0-255 pixel
        units, given for RGB input (see :meth:`normalize`).
      channel_order: ``RGB`` or ``BGR``, the order the reference weights expect.
      head: parameter path of the classifier (re-initialised for a new task).
      groups: ordered ``(name, regex)`` pairs over parameter paths, from the input
        side to the head; every parameter belongs to exactly one group. Freezing
        policies address these ("train the top 2 groups").
      keras_names, torch_names: the reference's name map, ``model -> {reference layer or
        module name: our module path}`` for Keras HDF5 files (``conv1_conv``) and torch
        state dicts (``layer1.0.conv1``); None where no such files exist for the model.
      weights: the published file of the reference, ``weights(include_top=, alpha=,
        size=) -> zoo.published.WeightFile`` (URL and digests); None if none.
      feature_taps: the feature maps the model exposes (:class:`FeatureTap`), one per
        stride, finest first: the last module output at each stride. A tuple, or a
        function of the model where options change the channels (see
        :meth:`feature_info`). ``features_only`` and detection necks (YOLO) read them.
    """

    name: str
    builder: Callable[..., nn.Module]
    family: str
    reference: str
    reference_name: str
    reference_params: int
    input_size: int
    min_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str = "RGB"
    head: str = "head"
    groups: tuple[tuple[str, str], ...] = ()
    description: str = ""
    task: str = "classification"
    num_classes: int = 1000
    keras_names: NameMap | None = None
    torch_names: NameMap | None = None
    weights: Callable[..., Any] | None = None
    feature_taps: Taps = ()

    def __post_init__(self):
        if self.reference not in REFERENCES:
            raise ValueError(f"{self.name}: reference must be one of {REFERENCES}")
        if self.task not in TASKS:
            raise ValueError(f"{self.name}: task must be one of {TASKS}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"{self.name}: channel_order must be RGB or BGR")
        if not self.groups or self.groups[-1][0] != "head":
            raise ValueError(f"{self.name}: groups must end with the 'head' group")
        if not callable(self.feature_taps):
            _check_taps(self.name, self.feature_taps)

    @property
    def counts_batch_stats(self) -> bool:
        """Whether ``reference_params`` counts BN statistics (Keras, Darknet) or not."""
        return self.reference in ("keras", "darknet")

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(g for g, _ in self.groups)

    def group_of(self, path: str) -> str:
        """The group a parameter path ('stage1/block1/conv1/kernel') belongs to."""
        hits = [g for g, rx in self.groups if re.search(rx, path)]
        if len(hits) != 1:
            raise ValueError(
                f"{self.name}: parameter {path!r} matches groups {hits}; it must match exactly "
                f"one of {self.group_names}"
            )
        return hits[0]

    def feature_info(self, model: nn.Module | None = None) -> tuple[FeatureTap, ...]:
        """The model's feature taps, finest first; ``model`` (default: ``builder()``, the
        default width) gives the channels where its options change them."""
        taps = self.feature_taps
        if callable(taps):
            taps = tuple(taps(model if model is not None else self.builder()))
            _check_taps(self.name, taps)
        return taps

    def name_map(self, kind: str, model: nn.Module) -> dict[str, str] | None:
        """``keras`` or ``torch``: the reference name map for ``model`` (None if none)."""
        if kind not in ("keras", "torch"):
            raise ValueError(f"name maps are 'keras' or 'torch', got {kind!r}")
        names = self.keras_names if kind == "keras" else self.torch_names
        return None if names is None else names(model)

    def normalize(self, images: Any) -> jnp.ndarray:
        """RGB pixels in [0, 255] (NHWC, any numeric dtype) -> the input the reference expects."""
        x = jnp.asarray(images, jnp.float32)
        if self.channel_order == "BGR":
            x = x[..., ::-1]
            mean, std = self.mean[::-1], self.std[::-1]
        else:
            mean, std = self.mean, self.std
        return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def _check_taps(name: str, taps: tuple[FeatureTap, ...]) -> None:
    strides = [t.stride for t in taps]
    if not all(isinstance(t, FeatureTap) for t in taps) or strides != sorted(set(strides)):
        raise ValueError(f"{name}: feature taps are FeatureTaps with increasing strides (one "
                         f"per stride, finest first), got {taps}")


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a model to the registry; a name can be registered once."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    if spec.name != spec.name.lower():
        raise ValueError(f"model names are lowercase, got {spec.name!r}")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> ModelSpec:
    """Remove a model from the registry (tests that register a model of their own)."""
    spec(name)  # raises for an unknown name, with close matches
    return _REGISTRY.pop(name)


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names (optionally those matching a regex), sorted."""
    names = sorted(_REGISTRY)
    if pattern is not None:
        names = [n for n in names if re.search(pattern, n)]
    return names


def spec(name: str) -> ModelSpec:
    """The ModelSpec of a registered model; unknown names raise with close matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name).lower(), _REGISTRY, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}{hint} (zoo.list_models() lists all {len(_REGISTRY)})"
        ) from None


def create(
    name: str,
    *,
    num_classes: int | None | EllipsisType = ...,
    include_top: bool = True,
    pooling: str | None = None,
    dtype: Any = jnp.float32,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model as an ``nn.Module`` (no parameters are made).

    Semantics follow ``keras.applications``: ``include_top=False`` drops the
    classifier block and returns the last feature map, globally pooled when
    ``pooling`` is ``'avg'`` or ``'max'``. ``num_classes=None`` keeps the top but not
    its final classifier: the model returns the features the head would see (timm's
    ``num_classes=0``). By default ``num_classes`` is the reference's own
    (``spec(name).num_classes``: 1000 for ImageNet classifiers, 80 for COCO detectors).
    ``dtype`` is the compute dtype; parameters stay float32.
    ``overrides`` set other fields of the family's module (e.g. ``in_channels=1``).

    ``features_only=True`` (timm's) returns a :class:`zoo.features.Features` module whose
    ``__call__(x, *, train=False)`` gives the list of feature maps at the spec's taps
    (``out_indices`` into ``spec(name).feature_info()``, default all; finest first), with
    the same variables as ``create(name, include_top=False)``.
    """
    s = spec(name)
    if features_only:
        if not (include_top and pooling is None and num_classes in (..., None)):
            raise ValueError("features_only=True returns feature maps: leave include_top, "
                             "pooling and num_classes out")
        from zoo.features import Features  # it builds models through this registry

        _check_options(name, s, dict(dtype=dtype, **overrides))
        return Features(name, None if out_indices is None else tuple(out_indices),
                        tuple(sorted(dict(dtype=dtype, **overrides).items())))
    if out_indices is not None:
        raise ValueError("out_indices goes with features_only=True")
    if num_classes is ...:
        num_classes = s.num_classes
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer)
        or num_classes <= 0
    ):
        hint = (" (num_classes=None keeps the top without its classifier, timm's "
                "num_classes=0; include_top=False drops the top)" if num_classes == 0 else "")
        raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}"
                         f"{hint}")
    kwargs = dict(num_classes=num_classes or None, include_top=include_top, pooling=pooling,
                  dtype=dtype, **overrides)
    _check_options(name, s, kwargs)
    return s.builder(**kwargs)


def _check_options(name: str, s: ModelSpec, kwargs: dict[str, Any]) -> None:
    fields = {f.name for f in dataclasses.fields(_module_class(s.builder))}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        settable = sorted(fields - {"parent", "name"})
        raise ValueError(
            f"{name}: unknown option(s) {unknown}; options this model takes: {settable}"
        )


def _module_class(builder) -> type:
    while hasattr(builder, "func"):
        builder = builder.func
    return builder


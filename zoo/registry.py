"""The model registry: ``ModelSpec`` (data about a model), ``create``, ``list_models``, ``spec``.

``create`` builds an ``nn.Module`` and nothing else: no I/O, no parameters. Everything
the rest of the project needs to know about a model (input sizes, the normalisation its
reference weights expect, where its classifier is, how to freeze it in groups) lives in
its ``ModelSpec``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable
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

    def __post_init__(self):
        if self.reference not in REFERENCES:
            raise ValueError(f"{self.name}: reference must be one of {REFERENCES}")
        if self.task not in TASKS:
            raise ValueError(f"{self.name}: task must be one of {TASKS}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"{self.name}: channel_order must be RGB or BGR")
        if not self.groups or self.groups[-1][0] != "head":
            raise ValueError(f"{self.name}: groups must end with the 'head' group")

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

    def normalize(self, images: Any) -> jnp.ndarray:
        """RGB pixels in [0, 255] (NHWC, any numeric dtype) -> the input the reference expects."""
        x = jnp.asarray(images, jnp.float32)
        if self.channel_order == "BGR":
            x = x[..., ::-1]
            mean, std = self.mean[::-1], self.std[::-1]
        else:
            mean, std = self.mean, self.std
        return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a model to the registry; a name can be registered once."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    if spec.name != spec.name.lower():
        raise ValueError(f"model names are lowercase, got {spec.name!r}")
    _REGISTRY[spec.name] = spec
    return spec


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
    """
    s = spec(name)
    if num_classes is ...:
        num_classes = s.num_classes
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer)
        or num_classes < 0
    ):
        raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
    kwargs = dict(num_classes=num_classes or None, include_top=include_top, pooling=pooling,
                  dtype=dtype, **overrides)
    fields = {f.name for f in dataclasses.fields(_module_class(s.builder))}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        settable = sorted(fields - {"parent", "name"})
        raise ValueError(
            f"{name}: unknown option(s) {unknown}; options this model takes: {settable}"
        )
    return s.builder(**kwargs)


def _module_class(builder) -> type:
    while hasattr(builder, "func"):
        builder = builder.func
    return builder


"""Intermediate feature maps at a model's feature taps (timm's ``features_only``).

``zoo.create(name, features_only=True, out_indices=(1, 2, 3))`` returns a
:class:`Features` module; its ``__call__(x, *, train=False)`` gives the list of feature
maps, finest first (timm's order), taken at ``zoo.spec(name).feature_info()``::

    feats = zoo.create("resnet50", features_only=True, out_indices=(1, 2, 3))
    variables = feats.init(key, x)        # == zoo.create("resnet50", include_top=False)'s
    c3, c4, c5 = feats.apply(variables, x)              # strides 8, 16, 32
    [t.channels for t in feats.feature_info]            # [512, 1024, 2048]

The maps are the outputs of the submodules at the taps' paths, caught by interception
(:func:`tap_outputs`) while the whole ``include_top=False`` model runs: its parameters,
paths and pretrained weights (``zoo.pretrained.load(name, include_top=False)``) are those
of the model, unchanged. Layers after the last tap still run; under ``jit`` XLA drops
the work whose results are unused (inference).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from flax import linen as nn

from zoo.registry import FeatureTap, spec


def tap_outputs(net: nn.Module, taps: Sequence[FeatureTap], *args, **kwargs) -> list[jax.Array]:
    """Call ``net(*args, **kwargs)`` and return the outputs of its submodules at the taps'
    paths (relative to ``net``; ``''`` is ``net``'s own output), in the order of ``taps``.

    ``net`` must be bound (created inside another module's ``setup`` or compact method).
    """
    wanted = {t.module for t in taps}
    found: dict[str, Any] = {}

    def grab(next_fun, call_args, call_kwargs, context):
        out = next_fun(*call_args, **call_kwargs)
        m, base = context.module, net.path
        if (context.method_name == "__call__" and m.scope is not None
                and m.path[: len(base)] == base):
            path = "/".join(m.path[len(base):])
            if path in wanted:
                found[path] = out  # a module called twice: its last output
        return out

    with nn.intercept_methods(grab):
        net(*args, **kwargs)
    missing = sorted(wanted - found.keys())
    if missing:
        raise ValueError(f"{type(net).__name__}: no submodule at the feature taps {missing} "
                         "was called; the spec's taps do not match the model")
    return [found[t.module] for t in taps]


class Features(nn.Module):
    """The feature maps of registered model ``model`` at its taps ``out_indices``.

    Made by ``zoo.create(model, features_only=True, ...)``; ``options`` are the model's
    own fields (``dtype``, ``in_channels``, ``alpha``, ...). The model shares this
    module's scope: the variables are exactly the ``include_top=False`` model's.
    """

    model: str
    out_indices: tuple[int, ...] | None = None
    options: tuple[tuple[str, Any], ...] = ()

    def setup(self):
        self.net = spec(self.model).builder(include_top=False, num_classes=None, pooling=None,
                                            **dict(self.options))
        nn.share_scope(self, self.net)

    @property
    def feature_info(self) -> tuple[FeatureTap, ...]:
        """The taps this module returns: module path, stride and channels of each map."""
        s = spec(self.model)
        taps = s.feature_info(s.builder(include_top=False, num_classes=None, pooling=None,
                                        **dict(self.options), parent=None))
        if not taps:
            raise ValueError(f"{self.model} has no feature taps (ModelSpec.feature_taps)")
        if self.out_indices is None:
            return taps
        try:
            return tuple(taps[i] for i in self.out_indices)
        except (IndexError, TypeError):
            raise ValueError(f"{self.model}: out_indices {self.out_indices} do not index its "
                             f"{len(taps)} feature taps {taps}") from None

    def __call__(self, x: jax.Array, *, train: bool = False) -> list[jax.Array]:
        return tap_outputs(self.net, self.feature_info, x, train=train)

"""Parameter counts and FLOPs of models, computed from shapes alone (``jax.eval_shape``,
``jax.make_jaxpr``): no FLOPs spent, no parameter memory."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.extend import core as jcore

from zoo import backend
from zoo.registry import create, list_models, spec


@dataclasses.dataclass(frozen=True)
class Counts:
    name: str
    params: int
    batch_stats: int

    @property
    def reference_total(self) -> int:
        """Our figure in the reference's own convention (Keras counts BN statistics)."""
        s = spec(self.name)
        return self.params + self.batch_stats if s.counts_batch_stats else self.params


def count(name: str, **create_kwargs) -> Counts:
    """Parameter and batch-statistic counts of a model at its default input size."""
    s = spec(name)
    model = create(name, **create_kwargs)
    x = jax.ShapeDtypeStruct((1, s.input_size, s.input_size, 3), jnp.float32)
    v = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
    n = lambda t: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(t))  # noqa: E731
    return Counts(name, n(v.get("params", {})), n(v.get("batch_stats", {})))


def table(names: list[str] | None = None) -> str:
    """A Markdown table: model, reference, sizes, parameter counts, parity with the reference."""
    rows = ["| model | reference | input (min) | params | BN stats | reference count | parity |",
            "|---|---|---|---:|---:|---:|---|"]
    for name in names or list_models():
        s, c = spec(name), count(name)
        ok = "exact" if c.reference_total == s.reference_params else "MISMATCH"
        rows.append(f"| {name} | {s.reference_name} | {s.input_size} ({s.min_size}) | "
                    f"{c.params:,} | {c.batch_stats:,} | {s.reference_params:,} | {ok} |")
    return "\n".join(rows)


def eqn_flops(eqn: jcore.JaxprEqn) -> int:
    """FLOPs of one jaxpr equation: 2 x the multiply-adds of a convolution or matrix product,
    0 for any other primitive; an equation holding sub-jaxprs (jit, remat, custom_vjp, scan,
    cond) counts theirs: a scan's times its length, a cond's largest branch."""
    name = eqn.primitive.name
    if name == "conv_general_dilated":  # per output element: the kernel's window x cin/groups
        out, rhs = eqn.outvars[0].aval.shape, eqn.invars[1].aval.shape
        cout = out[eqn.params["dimension_numbers"].out_spec[1]]
        return int(2 * np.prod(out) * np.prod(rhs) // max(cout, 1))
    if name == "dot_general":
        (contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        return int(2 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[d] for d in contract]))
    if name == "cond":
        return max(jaxpr_flops(b.jaxpr) for b in eqn.params["branches"])
    total = sum(jaxpr_flops(j) for j in jcore.jaxprs_in_params(eqn.params))
    return total * eqn.params["length"] if name == "scan" else total


def jaxpr_flops(jaxpr: jcore.Jaxpr) -> int:
    """FLOPs of every equation of a jaxpr (:func:`eqn_flops`)."""
    return sum(eqn_flops(e) for e in jaxpr.eqns)


def flops(model: str | nn.Module, input_shape: Sequence[int] | None = None,
          **create_kwargs: Any) -> int:
    """FLOPs of one inference forward pass: 2 x the multiply-adds of every convolution and
    matrix product (conv and dense layers, and any other product the model computes).

    ``model`` is a registry name (input: one image at its default size unless
    ``input_shape`` is given; ``create_kwargs`` go to :func:`zoo.create`) or any linen
    module (``input_shape`` required). Every conv is traced in XLA's formulation, so the
    count is the model's, whatever the platform computes (on CPU Winograd's products do
    2.25x fewer multiplies and shifted depthwise products none).
    """
    if isinstance(model, str):
        module = create(model, **create_kwargs)
        if input_shape is None:
            size = spec(model).input_size
            input_shape = (1, size, size, getattr(module, "in_channels", 3))
    elif create_kwargs:
        raise ValueError(f"options {sorted(create_kwargs)} only apply to registry names")
    elif input_shape is None:
        raise ValueError("pass input_shape=(N, H, W, C) for a module that is not registered")
    else:
        module = model
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    with backend.use_impl("xla"):
        variables = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x), x)
        closed = jax.make_jaxpr(lambda v, x: module.apply(v, x))(variables, x)
    return jaxpr_flops(closed.jaxpr)

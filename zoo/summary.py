"""Parameter counts of registered models, computed with ``jax.eval_shape`` (no FLOPs, no memory)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

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

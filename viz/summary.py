"""A text summary in the spirit of Keras ``model.summary()``, from the traced graph."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from flax import linen as nn

from viz.graph import Graph
from viz.policy import Policy, trainable_fn

COLUMNS = ("Layer (type)", "Output shape", "Param #", "Trains", "Connected to")


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(["None", *map(str, shape[1:])]) + ")"


def summarize(
    graph: Graph, trainable: Callable[[str], bool] | None = None, *, width: int = 110
) -> str:
    """The table of a graph view: one row per node, then parameter totals under a policy."""
    from viz.dot import status

    st = status(graph, trainable)
    inc = graph.predecessors()
    rows = []
    for n in graph.nodes.values():
        name = n.id if n.repeat == 1 else f"{n.id} … {n.last} ×{n.repeat}"
        flag = {"trainable": "yes", "frozen": "no", "mixed": "part", None: ""}[st[n.id]]
        rows.append((f"{name} ({n.type})", ", ".join(_shape(s) for s in n.shapes),
                     f"{n.params + n.state:,}", flag, ", ".join(inc[n.id])))
    cols = COLUMNS if trainable is not None else COLUMNS[:3] + COLUMNS[4:]
    if trainable is None:
        rows = [r[:3] + r[4:] for r in rows]
    widths = [max(len(c), *(len(r[k]) for r in rows)) for k, c in enumerate(cols)]
    widths[0] = min(widths[0], 48)

    def line(cells: Sequence[str]) -> str:
        parts = []
        for k, (c, w) in enumerate(zip(cells, widths, strict=True)):
            parts.append(c.rjust(w) if k == 2 else c.ljust(w))
        return "  ".join(parts).rstrip()

    params = graph.variables.get("params", {})
    n_params = sum(params.values())
    n_state = sum(sum(v.values()) for c, v in graph.variables.items() if c != "params")
    n_train = sum(s for p, s in params.items() if trainable is None or trainable(p))
    rule = "─" * min(width, max(len(line(cols)), 40))
    depth = "full depth" if graph.depth is None else f"depth {graph.depth}"
    inp = next(n for n in graph.nodes.values() if n.kind == "input")
    out = [f'Model: "{graph.name}" ({graph.modules[()].type}), input '
           f"{_shape(inp.shapes[0])}, {depth}", rule, line(cols), rule]
    out += [line(r) for r in rows]
    out += [
        rule,
        f"Total params: {n_params + n_state:,} (params {n_params:,} + state {n_state:,})",
        f"Trainable params: {n_train:,}",
        f"Non-trainable params: {n_params + n_state - n_train:,}",
        rule,
    ]
    return "\n".join(out)


def summary(
    model: str | nn.Module | Graph,
    *,
    depth: int | None = None,
    freeze: Policy = None,
    input_shape: Sequence[int] | None = None,
    spec: Any = None,
    **create_kwargs: Any,
) -> str:
    """Keras-like summary of a model at ``depth``; ``freeze`` splits trainable / frozen."""
    from viz.draw import view

    graph = view(model, depth=depth, input_shape=input_shape, **create_kwargs)
    if spec is None and isinstance(model, str):
        spec = model
    return summarize(graph, None if freeze is None else trainable_fn(freeze, spec))

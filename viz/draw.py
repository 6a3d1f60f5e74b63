"""One-call drawing: model -> graph view -> DOT -> ``graphviz.Source`` (and files)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import graphviz
from flax import linen as nn

from viz.dot import INSTALL, GraphvizNotFound, human, render, to_dot
from viz.graph import Graph, collapse, fold
from viz.policy import Policy, trainable_fn
from viz.trace import TraceError, trace


def view(
    model: str | nn.Module | Graph,
    *,
    depth: int | None = None,
    fold_repeats: bool = False,
    trainable: Callable[[str], bool] | None = None,
    input_shape: Sequence[int] | None = None,
    **create_kwargs: Any,
) -> Graph:
    """The graph drawn for a model: traced, optionally folded (``xN``), collapsed to ``depth``."""
    graph = model if isinstance(model, Graph) else trace(model, input_shape, **create_kwargs)
    if fold_repeats:
        graph = fold(graph, trainable)
    return collapse(graph, depth)


def draw(
    model: str | nn.Module | Graph,
    *,
    depth: int | None = None,
    freeze: Policy = None,
    fold_repeats: bool = False,
    rankdir: str = "TB",
    edge_labels: bool = True,
    flops: bool = False,
    input_shape: Sequence[int] | None = None,
    spec: Any = None,
    out: str | Path | None = None,
    format: str | None = None,
    **create_kwargs: Any,
) -> graphviz.Source:
    """Draw a model; renders inline in Jupyter, and to ``out`` (dot/svg/png/pdf) when given.

    ``model`` is a registry name, any linen module (with ``input_shape``) or a traced
    :class:`Graph`. ``depth`` collapses modules below it into single boxes (None: every
    layer). ``freeze`` colours trainable / frozen / mixed parts: a named policy
    (``frozen``, ``finetune:N``, ``full``; needs a registered name or ``spec``), a list of
    group names, a regex over parameter paths or a callable. ``fold_repeats`` draws runs
    of identical chained blocks once, labelled ``xN``.

    A model that fails while tracing (a shape error) is drawn up to the failing module,
    marked with the error, and :class:`~viz.trace.TraceError` is raised after writing
    ``out`` (its ``graph`` and ``source`` hold the partial drawing).
    """
    if spec is None and isinstance(model, str):
        spec = model
    trainable = None if freeze is None else trainable_fn(freeze, spec)
    failed = None
    try:
        graph = view(model, depth=depth, fold_repeats=fold_repeats, trainable=trainable,
                     input_shape=input_shape, **create_kwargs)
    except TraceError as e:  # draw what was traced, marked, then say so
        failed = e
        graph = view(e.graph, depth=depth, fold_repeats=fold_repeats, trainable=trainable)
    text = to_dot(graph, rankdir=rankdir, trainable=trainable, edge_labels=edge_labels,
                  flops=flops)
    written = None
    if out is not None:
        written = render(text, out, format)
    if failed is not None:
        where = f"; the layers up to it are drawn in {written}" if written else ""
        err = TraceError(f"{failed}{where}", failed.graph)
        err.source = graphviz.Source(text)
        raise err from failed
    return graphviz.Source(text)


def gallery(
    out_dir: str | Path,
    names: Sequence[str] | None = None,
    *,
    depths: Sequence[int | None] = (1, None),
    format: str = "svg",
    **draw_kwargs: Any,
) -> Path:
    """Draw every registered model (or ``names``) at each depth into ``out_dir`` + index.md.

    Without the ``dot`` binary the DOT files and an index linking them are still written,
    then :class:`GraphvizNotFound` is raised.
    """
    import zoo

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(names) if names is not None else zoo.list_models()
    missing = format != "dot" and shutil.which("dot") is None
    fmt = "dot" if missing else format
    heads = ["full depth" if d is None else f"depth {d}" for d in depths]
    rows = ["# Model gallery", "",
            "Drawn by `python -m scripts.draw --all`; every edge is a tensor, boxes are "
            "modules, ovals are operations.", "",
            "| model | params (reference) | " + " | ".join(heads) + " |",
            "|---|---|" + "---|" * len(depths)]
    for name in names:
        links, graph = [], trace(name)  # one trace, several views
        for d, head in zip(depths, heads, strict=True):
            stem = f"{name}.{'full' if d is None else f'depth{d}'}"
            draw(graph, depth=d, spec=name, out=out_dir / stem, format=fmt, **draw_kwargs)
            links.append(f"[{head}]({stem}.{fmt})")
        params = zoo.spec(name).reference_params
        rows.append(f"| `{name}` | {human(params)} | " + " | ".join(links) + " |")
    index = out_dir / "index.md"
    index.write_text("\n".join(rows) + "\n")
    if missing:
        raise GraphvizNotFound(
            f"the Graphviz `dot` binary is not on PATH: wrote DOT files and {index} instead "
            f"of {format} drawings. {INSTALL}."
        )
    return index


__all__ = ["GraphvizNotFound", "draw", "gallery", "view"]

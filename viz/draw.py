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
from viz.html import HTML, to_html
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
) -> graphviz.Source | HTML:
    """Draw a model; renders inline in Jupyter, and to ``out`` (dot/svg/png/pdf) when given.

    ``format="html"`` (or an ``out`` ending ``.html``) gives one self-contained interactive
    page instead (:mod:`viz.html`): every layer, clusters expanded to ``depth`` and
    collapsible in place, pan/zoom, search, a details panel; it returns an :class:`HTML`
    that displays inline in Jupyter and Colab.

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
    html = format == "html" or (format is None and out is not None
                                and Path(out).suffix.lower() in (".html", ".htm"))
    # The HTML view holds every layer and starts expanded to ``depth``.
    shown = None if html else depth
    failed = None
    try:
        graph = view(model, depth=shown, fold_repeats=fold_repeats, trainable=trainable,
                     input_shape=input_shape, **create_kwargs)
    except TraceError as e:  # draw what was traced, marked, then say so
        failed = e
        graph = view(e.graph, depth=shown, fold_repeats=fold_repeats, trainable=trainable)
    written = None
    if html:
        result = HTML(to_html(graph, trainable, depth=depth))
        if out is not None:
            target = Path(out)
            if target.suffix.lower() not in (".html", ".htm"):
                target = target.with_name(target.name + ".html")
            written = result.save(target)
    else:
        text = to_dot(graph, rankdir=rankdir, trainable=trainable, edge_labels=edge_labels,
                      flops=flops)
        if out is not None:
            written = render(text, out, format)
        result = graphviz.Source(text)
    if failed is not None:
        where = f"; the layers up to it are drawn in {written}" if written else ""
        err = TraceError(f"{failed}{where}", failed.graph)
        err.source = result
        raise err from failed
    return result


def gallery(
    out_dir: str | Path,
    names: Sequence[str] | None = None,
    *,
    depths: Sequence[int | None] = (1, None),
    format: str = "svg",
    html: bool = True,
    **draw_kwargs: Any,
) -> Path:
    """Draw every registered model (or ``names``) at each depth into ``out_dir`` + index.md.

    With ``html`` each model also gets its interactive page (``<name>.html``, expanded to
    the first of ``depths``), linked beside the drawings in index.md and in index.html.
    Without the ``dot`` binary the DOT files, the pages and the indexes are still written,
    then :class:`GraphvizNotFound` is raised.
    """
    import zoo

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(names) if names is not None else zoo.list_models()
    missing = format != "dot" and shutil.which("dot") is None
    fmt = "dot" if missing else format
    heads = ["full depth" if d is None else f"depth {d}" for d in depths]
    heads += ["interactive"] if html else []
    rows = ["# Model gallery", "",
            "Drawn by `python -m scripts.draw --all`; every edge is a tensor, boxes are "
            "modules, ovals are operations. The interactive pages hold every layer: "
            "expand and collapse modules, search a path, click a node for its details.", "",
            "| model | params (reference) | " + " | ".join(heads) + " |",
            "|---|---|" + "---|" * len(heads)]
    table = []  # (name, params, [(text, href)])
    html_kwargs = {k: v for k, v in draw_kwargs.items() if k in ("freeze", "fold_repeats")}
    for name in names:
        links, graph = [], trace(name)  # one trace, several views
        for d, head in zip(depths, heads, strict=False):
            stem = f"{name}.{'full' if d is None else f'depth{d}'}"
            draw(graph, depth=d, spec=name, out=out_dir / stem, format=fmt, **draw_kwargs)
            links.append((head, f"{stem}.{fmt}"))
        if html:
            draw(graph, depth=depths[0], spec=name, out=out_dir / f"{name}.html",
                 format="html", **html_kwargs)
            links.append(("interactive", f"{name}.html"))
        params = human(zoo.spec(name).reference_params)
        table.append((name, params, links))
        rows.append(f"| `{name}` | {params} | "
                    + " | ".join(f"[{t}]({h})" for t, h in links) + " |")
    index = out_dir / "index.md"
    index.write_text("\n".join(rows) + "\n")
    (out_dir / "index.html").write_text(_index_html(heads, table))
    if missing:
        raise GraphvizNotFound(
            f"the Graphviz `dot` binary is not on PATH: wrote DOT files and {index} instead "
            f"of {format} drawings. {INSTALL}."
        )
    return index


def _index_html(heads: Sequence[str], table) -> str:
    from html import escape

    cells = "".join(f"<th>{escape(h)}</th>" for h in ("model", "params (reference)", *heads))
    rows = "".join(
        f"<tr><td><code>{escape(name)}</code></td><td>{escape(params)}</td>"
        + "".join(f'<td><a href="{escape(href)}">{escape(text)}</a></td>'
                  for text, href in links) + "</tr>"
        for name, params, links in table)
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Model "
            "gallery</title><style>body{font:14px Helvetica,Arial,sans-serif;margin:2em}"
            "td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}</style>"
            f"</head><body><h1>Model gallery</h1><table><tr>{cells}</tr>{rows}</table>"
            "</body></html>\n")


__all__ = ["GraphvizNotFound", "draw", "gallery", "view"]

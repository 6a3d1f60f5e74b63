"""A self-contained interactive HTML view of a :class:`~viz.graph.Graph`.

One file, nothing fetched when it is viewed: the graph is embedded as JSON
(``<script type="application/json" id="zoo-graph">``) and a small dependency-free viewer
(``viewer.js`` beside this module, inlined) lays it out in the browser. Every module is a
cluster that collapses into one node and expands again in place; the view pans (drag)
and zooms (wheel); a search box finds nodes and modules by path; clicking a node shows
its path, type, input and output shapes, parameters and batch statistics, FLOPs and
whether a freezing policy trains it.

:class:`HTML` holds a document and displays inline in Jupyter and Colab (an ``iframe``
with the document as ``srcdoc``).
"""

from __future__ import annotations

import html as html_lib
import json
from collections.abc import Callable
from pathlib import Path

from viz.dot import _caption, status
from viz.graph import Graph

VIEWER = Path(__file__).with_name("viewer.js")


def graph_data(
    graph: Graph, trainable: Callable[[str], bool] | None = None, *, depth: int | None = None
) -> dict:
    """The JSON the viewer draws: every node of ``graph`` (full depth for a traced graph),
    the modules (clusters) with totals, the edges, and the depth initially expanded."""
    st = status(graph, trainable)
    mod_status: dict[str, str | None] = {}
    if trainable is not None:
        flags: dict[str, set[bool]] = {}
        for path in graph.variables.get("params", {}):
            parts = path.split("/")
            for k in range(1, len(parts)):
                flags.setdefault("/".join(parts[:k]), set()).add(bool(trainable(path)))
        mod_status = {p: ("mixed" if len(f) == 2 else "trainable" if True in f else "frozen")
                      for p, f in flags.items()}
    totals: dict[str, dict[str, int]] = {}
    for n in graph.nodes.values():
        for k in range(1, len(n.scope) + 1):
            t = totals.setdefault("/".join(n.scope[:k]), {"flops": 0, "layers": 0})
            t["flops"] += n.flops
            t["layers"] += n.layers
    modules = []
    for path in graph.clusters():
        pid = "/".join(path)
        m = graph.modules.get(path)
        modules.append({
            "path": pid, "type": m.type if m else "", "shapes": list(m.shapes) if m else [],
            "params": m.params if m else 0, "state": m.state if m else 0,
            "repeat": m.repeat if m else 1, "last": m.last if m else "",
            "flops": totals.get(pid, {}).get("flops", 0),
            "layers": totals.get(pid, {}).get("layers", 0),
            "status": mod_status.get(pid),
        })
    nodes = [{
        "id": n.id, "kind": n.kind, "type": n.type, "scope": "/".join(n.scope),
        "shapes": [list(s) for s in n.shapes], "params": n.params, "state": n.state,
        "flops": n.flops, "layers": n.layers, "repeat": n.repeat, "last": n.last,
        "status": st[n.id],
    } for n in graph.nodes.values()]
    edges = [[e.src, e.dst, list(e.shape)] for e in graph.edges]
    error = None
    if graph.error is not None:
        error = dict(zip(("path", "type", "message"), graph.error, strict=True))
    caption = _caption(graph, trainable, True)
    if graph.depth is None:
        caption = caption.replace(" · full depth", " · every layer" + (
            f", expanded to depth {depth}" if depth is not None else ""))
    return {
        "name": graph.name, "caption": caption,
        "policy": trainable is not None, "depth": depth, "nodes": nodes,
        "modules": modules, "edges": edges, "error": error,
    }


def to_html(
    graph: Graph, trainable: Callable[[str], bool] | None = None, *, depth: int | None = None,
    title: str | None = None,
) -> str:
    """The HTML document of a graph; ``depth`` is how deep the clusters start expanded
    (None: all of them), ``trainable`` colours what a policy trains."""
    data = json.dumps(graph_data(graph, trainable, depth=depth), separators=(",", ":"))
    data = data.replace("</", "<\\/")  # never closes the script element
    title = html_lib.escape(title or f"{graph.name} · transfer zoo")
    return TEMPLATE.format(title=title, data=data, script=VIEWER.read_text(),
                           style=STYLE)


class HTML:
    """An HTML document that displays inline in Jupyter and Colab (``_repr_html_``)."""

    def __init__(self, text: str, height: int = 640):
        self.text = text
        self.height = height

    def _repr_html_(self) -> str:
        doc = html_lib.escape(self.text, quote=True)
        return (f'<iframe srcdoc="{doc}" style="width:100%;height:{self.height}px;'
                'border:1px solid #ddd" sandbox="allow-scripts"></iframe>')

    def __str__(self) -> str:
        return self.text

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.text, encoding="utf-8")
        return path


STYLE = """
html,body{margin:0;height:100%;font:13px Helvetica,Arial,sans-serif;color:#222}
#bar{position:absolute;top:0;left:0;right:320px;height:38px;display:flex;gap:6px;
 align-items:center;padding:0 8px;background:#fafafa;border-bottom:1px solid #ddd}
#bar b{white-space:nowrap;overflow:hidden;text-overflow:ellipsis;max-width:40%}
#search{width:220px;padding:3px}
#results{position:absolute;top:38px;left:8px;max-height:50%;overflow:auto;background:#fff;
 border:1px solid #ccc;z-index:2;display:none;min-width:260px}
#results div{padding:2px 6px;cursor:pointer}#results div:hover{background:#e3f2fd}
#canvas{position:absolute;top:39px;left:0;width:calc(100% - 320px);height:calc(100% - 39px);
 cursor:grab}
#panel{position:absolute;top:0;right:0;width:320px;bottom:0;overflow:auto;
 border-left:1px solid #ddd;background:#fcfcfc;padding:8px;box-sizing:border-box}
#panel table{border-collapse:collapse;width:100%}#panel td{vertical-align:top;padding:2px 4px;
 border-bottom:1px solid #eee;word-break:break-all}#panel td:first-child{color:#666;width:90px}
.caption{white-space:pre-line;color:#555;font-size:12px;margin-bottom:8px}
.error{background:#ffcdd2;color:#b71c1c;padding:6px;margin-bottom:8px;white-space:pre-wrap}
svg text{pointer-events:none;font-size:11px}
g.node{cursor:pointer}g.node.selected rect,g.node.selected ellipse{stroke:#1565c0;stroke-width:3}
g.node.hit rect,g.node.hit ellipse{stroke:#ff6f00;stroke-width:3}
g.toggle{cursor:pointer}g.toggle rect{fill:#fff;stroke:#777}
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{style}</style></head>
<body>
<div id="bar"><b id="title"></b>
<input id="search" type="search" placeholder="search a module path" autocomplete="off">
<button id="expand-all">expand all</button><button id="collapse-all">collapse all</button>
<button id="fit">fit</button></div>
<div id="results"></div>
<svg id="canvas" xmlns="http://www.w3.org/2000/svg"><g id="view"></g></svg>
<div id="panel"></div>
<script type="application/json" id="zoo-graph">{data}</script>
<script>
{script}
</script>
</body></html>
"""

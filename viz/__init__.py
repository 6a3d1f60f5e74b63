"""Architecture drawings: trace a model's dataflow, draw it with Graphviz, summarise it.

``viz.draw("resnet50", depth=1, freeze="finetune:1", out="resnet50.svg")`` traces the
model under ``jax.make_jaxpr`` (no FLOPs, no parameter memory), collapses it to depth 1,
colours what the policy trains and writes DOT + SVG; the returned ``graphviz.Source``
renders inline in Jupyter. ``format="html"`` (or ``out="resnet50.html"``) writes one
self-contained interactive page instead (every layer; collapse, search, details), shown
inline by Jupyter and Colab. A model that fails while tracing is drawn up to the failing
module and :class:`TraceError` is raised. ``viz.summary("resnet50")`` is the Keras-like
table.
"""

from viz import dot
from viz.dot import GraphvizNotFound, render, to_dot
from viz.draw import draw, gallery, view
from viz.graph import Edge, Graph, Node, collapse, fold
from viz.html import HTML, to_html
from viz.policy import trainable_fn
from viz.summary import summarize, summary
from viz.trace import TraceError, trace

__all__ = [
    "HTML", "Edge", "Graph", "GraphvizNotFound", "Node", "TraceError", "collapse", "dot", "draw",
    "fold", "gallery",
    "render", "summarize", "summary", "to_dot", "to_html", "trace", "trainable_fn", "view",
]

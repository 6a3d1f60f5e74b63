"""Graphviz DOT text for a :class:`~viz.graph.Graph`, and rendering it with ``dot``.

The text is deterministic: nodes appear in execution order inside nested clusters (one
per module above the drawing depth), edges in dataflow order, and ids are module paths,
so a change to a model shows up as a readable diff of its DOT.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from viz.graph import Graph, Node

FORMATS = ("dot", "svg", "png", "pdf")
COLORS = {"trainable": "#c8e6c9", "frozen": "#cfd8dc", "mixed": "#ffe0b2", None: "#ffffff"}
INSTALL = (
    "Install Graphviz to render it: `apt-get install graphviz` (Debian/Ubuntu), "
    "`brew install graphviz` (macOS) or `conda install -c conda-forge graphviz`"
)


class GraphvizNotFound(RuntimeError):
    """The Graphviz ``dot`` binary is not on PATH (the DOT text was still written)."""


def fmt_shape(shape: tuple[int, ...]) -> str:
    """``(1, 56, 56, 64)`` -> ``56×56×64`` (the batch axis is left out)."""
    dims = shape[1:] if len(shape) > 1 else shape
    return "×".join(str(d) for d in dims) or "scalar"


def human(n: int) -> str:
    """``25636712`` -> ``25.6M``."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def status(graph: Graph, trainable: Callable[[str], bool] | None) -> dict[str, str | None]:
    """Node id -> 'trainable' / 'frozen' / 'mixed' / None (no parameters or no policy)."""
    out: dict[str, str | None] = {i: None for i in graph.nodes}
    if trainable is None:
        return out
    flags: dict[str, set[bool]] = {}
    for path in graph.variables.get("params", {}):
        parts = path.split("/")
        for k in range(1, len(parts)):
            flags.setdefault("/".join(parts[:k]), set()).add(bool(trainable(path)))
    for i, n in graph.nodes.items():
        f = flags.get(i) if n.kind == "module" else None
        if f:
            out[i] = "mixed" if len(f) == 2 else ("trainable" if True in f else "frozen")
    return out


def _q(s: str) -> str:
    """A DOT string literal; newlines become DOT's centred line breaks."""
    s = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + s + '"'


def _title(n: Node) -> str:
    name = n.name if n.repeat == 1 else f"{n.name} … {n.last} ×{n.repeat}"
    if n.kind == "op":
        return n.type
    if n.kind in ("input", "output"):
        return n.name
    return f"{name} : {n.type}"


def node_label(n: Node, *, flops: bool = False) -> str:
    """The lines of a node's label: name and type, output shape, parameters."""
    lines = [_title(n), ", ".join(fmt_shape(s) for s in n.shapes)]
    extra = []
    if n.params or n.state:
        extra.append(f"{human(n.params + n.state)} params")
    if n.layers > 1:
        extra.append(f"{n.layers} layers")
    if flops and n.flops:
        extra.append(f"{human(n.flops)}FLOPs")
    if extra:
        lines.append(" · ".join(extra))
    return "\n".join(x for x in lines if x)


def error_label(graph: Graph, width: int = 60) -> str:
    """The lines of an error node: where the trace failed and the error, wrapped."""
    import textwrap

    where, type_, message = graph.error or ("", "", "")
    lines = [f"failed in {where or graph.name} : {type_}"]
    lines += textwrap.wrap(" ".join(message.split()), width)[:6]
    return "\n".join(lines)


def _attrs(n: Node, fill: str, fan_in: int, flops: bool, graph: Graph | None = None) -> str:
    a = {"label": node_label(n, flops=flops)}
    if n.kind == "error":
        a.update(label=error_label(graph) if graph is not None else f"failed : {n.type}",
                 shape="octagon", style="filled,bold", fillcolor="#ffcdd2", color="#c62828",
                 fontcolor="#b71c1c")
    elif n.kind == "op":
        a.update(shape="ellipse", style="filled", fillcolor="#fff3c4" if fan_in > 1 else "#eeeeee",
                 fontsize="9")
    elif n.kind in ("input", "output"):
        a.update(shape="box", style="filled,bold", fillcolor="#e3f2fd")
    else:
        a.update(shape="box3d" if n.layers > 1 else "box", style="rounded,filled",
                 fillcolor=fill)
    return ", ".join(f"{k}={_q(v)}" for k, v in a.items())


def to_dot(
    graph: Graph,
    *,
    rankdir: str = "TB",
    trainable: Callable[[str], bool] | None = None,
    edge_labels: bool = True,
    flops: bool = False,
    title: str | None = None,
) -> str:
    """The DOT text of a graph; ``trainable`` (a path predicate) colours frozen parts."""
    if rankdir not in ("TB", "LR", "BT", "RL"):
        raise ValueError(f"rankdir must be TB, LR, BT or RL, got {rankdir!r}")
    st = status(graph, trainable)
    fan_in = {i: 0 for i in graph.nodes}
    for _src, dst in {(e.src, e.dst) for e in graph.edges}:
        fan_in[dst] += 1
    lines = [
        f"digraph {_q(graph.name)} {{",
        f"  graph [rankdir={rankdir}, label={_q(title or _caption(graph, trainable, flops))}, "
        'labelloc=t, fontname="Helvetica", fontsize=12, newrank=true, nodesep=0.25, '
        "ranksep=0.3];",
        '  node [fontname="Helvetica", fontsize=10, margin="0.1,0.04"];',
        '  edge [fontname="Helvetica", fontsize=8, color="#555555", arrowsize=0.6];',
    ]
    tree: dict[tuple, list] = {(): []}
    for n in graph.nodes.values():
        for k in range(1, len(n.scope) + 1):
            if n.scope[:k] not in tree:
                tree[n.scope[:k]] = []
                tree[n.scope[: k - 1]].append(("cluster", n.scope[:k]))
        tree[n.scope].append(("node", n.id))

    def emit(scope: tuple, indent: str) -> None:
        for kind, item in tree[scope]:
            if kind == "node":
                n = graph.nodes[item]
                attrs = _attrs(n, COLORS[st[item]], fan_in[item], flops, graph)
                lines.append(f"{indent}{_q(item)} [{attrs}];")
                continue
            m = graph.modules.get(item)
            name = item[-1] if m is None or m.repeat == 1 else f"{item[-1]} … {m.last} ×{m.repeat}"
            label = name if m is None else f"{name} : {m.type}"
            lines.append(f"{indent}subgraph {_q('cluster_' + '/'.join(item))} {{")
            lines.append(f'{indent}  label={_q(label)}; style="rounded"; color="#9e9e9e"; '
                         'fontsize=10; labeljust=l;')
            emit(item, indent + "  ")
            lines.append(f"{indent}}}")

    emit((), "  ")
    for e in graph.edges:
        label = f" [label={_q(fmt_shape(e.shape))}]" if edge_labels else ""
        lines.append(f"  {_q(e.src)} -> {_q(e.dst)}{label};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _caption(graph: Graph, trainable: Callable[[str], bool] | None, flops: bool) -> str:
    params = graph.variables.get("params", {})
    total = sum(sum(v.values()) for v in graph.variables.values())
    inp = [n for n in graph.nodes.values() if n.kind == "input"]
    text = f"{graph.name} · input {fmt_shape(inp[0].shapes[0]) if inp else '?'}"
    text += f" · {human(total)} params"
    text += f" · depth {graph.depth}" if graph.depth is not None else " · full depth"
    if flops:
        text += f" · {human(sum(n.flops for n in graph.nodes.values()))}FLOPs"
    if trainable is not None:
        tr = sum(s for p, s in params.items() if trainable(p))
        text += f"\ntrainable (green) {human(tr)} · frozen (grey) {human(total - tr)}"
    if graph.error is not None:
        text += f"\nPARTIAL: tracing failed in {graph.error[0] or graph.name} ({graph.error[1]})"
    return text


def render(dot: str, out: str | Path, format: str | None = None) -> Path:
    """Write ``<out>.dot`` and, unless ``format`` is dot, ``<out>.<format>`` with ``dot``.

    ``format`` defaults to the suffix of ``out`` (svg when it has none). Raises
    :class:`GraphvizNotFound` when the ``dot`` binary is missing, after writing the DOT.
    """
    out = Path(out)
    suffix = out.suffix.lstrip(".")
    fmt = format or (suffix if suffix in FORMATS else "svg")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    base = out.with_suffix("") if suffix in (*FORMATS, "gv") else out
    base.parent.mkdir(parents=True, exist_ok=True)
    dot_path = base.parent / (base.name + ".dot")
    dot_path.write_text(dot)
    if fmt == "dot":
        return dot_path
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizNotFound(
            f"the Graphviz `dot` binary is not on PATH, so {fmt} was not written; the DOT "
            f"text is in {dot_path}. {INSTALL}, then run `dot -T{fmt} {dot_path} -o "
            f"{base.parent / f'{base.name}.{fmt}'}`."
        )
    target = base.parent / f"{base.name}.{fmt}"
    res = subprocess.run([exe, f"-T{fmt}", str(dot_path), "-o", str(target)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"dot failed on {dot_path}: {res.stderr.strip()}")
    return target

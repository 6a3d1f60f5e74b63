"""The dataflow graph of a traced model, and the two views built from it.

A :class:`Graph` has one node per leaf module call (``Conv``, ``BatchNorm``, ``Dense``),
per operation outside leaf modules (``add``, ``concatenate``, ``relu``, ``max_pool``), plus
``input`` and ``output`` nodes. Every edge is a real tensor. A node's ``path`` is the
module path (``stage1/block1/conv1``) or, for an operation, its enclosing module path plus
the operation's name (``stage1/block1/add``); the ``/``-joined path is its stable id.

:func:`collapse` merges everything below a depth into one node per module;
:func:`fold` replaces runs of identical, chained sibling modules with their first one
marked ``repeat=N`` (drawn ``xN``).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterable

Path = tuple[str, ...]
Shape = tuple[int, ...]


@dataclasses.dataclass
class Node:
    """One box or oval of the drawing."""

    path: Path
    kind: str  # 'input' | 'module' | 'op' | 'output' | 'error' (where a trace failed)
    type: str  # module class name ('Conv') or operation ('add', 'concatenate')
    shapes: tuple[Shape, ...] = ()  # output shapes (batch axis included)
    params: int = 0  # size of the 'params' collection under this node
    state: int = 0  # size of every other collection (batch_stats, ...)
    flops: int = 0  # multiply-adds x 2 of convolutions and matrix products
    prims: tuple[str, ...] = ()  # the jaxpr primitives an operation node stands for
    layers: int = 1  # full-depth nodes merged into this one (collapsed modules)
    repeat: int = 1  # identical modules folded into this one
    last: str = ""  # name of the last folded module (repeat > 1)

    @property
    def id(self) -> str:
        return "/".join(self.path)

    @property
    def scope(self) -> Path:
        return self.path[:-1]

    @property
    def name(self) -> str:
        return self.path[-1]


@dataclasses.dataclass(frozen=True)
class Edge:
    """A tensor flowing from ``src`` to ``dst``; ``var`` numbers the tensor (unique per graph)."""

    src: str
    dst: str
    shape: Shape
    var: int


@dataclasses.dataclass
class Module:
    """A module called during the trace: class name, output shapes, variable sizes."""

    path: Path
    type: str
    shapes: tuple[Shape, ...]
    params: int
    state: int
    leaf: bool
    repeat: int = 1
    last: str = ""


@dataclasses.dataclass
class Graph:
    """Nodes in execution order, edges, the module tree and the variables' sizes."""

    name: str
    nodes: dict[str, Node]
    edges: list[Edge]
    modules: dict[Path, Module]  # every module called, root () included
    variables: dict[str, dict[str, int]]  # collection -> 'a/b/kernel' -> size
    depth: int | None = None  # None: full depth
    # (module path, module type, message) when the model failed while tracing: the graph
    # then ends at an 'error' node inside that module, fed by the call's inputs
    error: tuple[str, str, str] | None = None

    def successors(self) -> dict[str, list[str]]:
        """Node id -> ids of the nodes it feeds (in edge order, without duplicates)."""
        out: dict[str, list[str]] = {n: [] for n in self.nodes}
        for e in self.edges:
            if e.dst not in out[e.src]:
                out[e.src].append(e.dst)
        return out

    def predecessors(self) -> dict[str, list[str]]:
        """Node id -> ids of the nodes that feed it."""
        inc: dict[str, list[str]] = {n: [] for n in self.nodes}
        for e in self.edges:
            if e.src not in inc[e.dst]:
                inc[e.dst].append(e.src)
        return inc

    def count(self, type_: str, *, min_inputs: int = 1) -> int:
        """Number of nodes of a type (e.g. 'add') with at least ``min_inputs`` inputs."""
        inc = self.predecessors()
        return sum(
            1
            for n in self.nodes.values()
            if n.type == type_ and len(inc[n.id]) >= min_inputs
        )

    def disconnected(self) -> list[str]:
        """Ids of nodes not on a path from an input to an output (empty when connected)."""
        fwd = _reach([n.id for n in self.nodes.values() if n.kind == "input"], self.successors())
        bwd = _reach([n.id for n in self.nodes.values() if n.kind == "output"],
                     self.predecessors())
        return [n for n in self.nodes if n not in fwd or n not in bwd]

    def clusters(self) -> list[Path]:
        """Module paths drawn as clusters: the non-root scopes of nodes, in first-use order."""
        seen: dict[Path, None] = {}
        for n in self.nodes.values():
            for k in range(1, len(n.scope) + 1):
                seen.setdefault(n.scope[:k], None)
        return list(seen)


def _reach(starts: Iterable[str], adj: dict[str, list[str]]) -> set[str]:
    seen, todo = set(starts), list(starts)
    while todo:
        for m in adj[todo.pop()]:
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def _within(path: Path, prefix: Path) -> bool:
    return len(path) > len(prefix) and path[: len(prefix)] == prefix


def collapse(graph: Graph, depth: int | None) -> Graph:
    """The view at ``depth``: every node below it merged into one node per module there."""
    if depth is None:
        return graph
    if depth < 1:
        raise ValueError(f"depth must be >= 1 (or None for full depth), got {depth}")
    nodes: dict[str, Node] = {}
    where: dict[str, str] = {}
    for n in graph.nodes.values():
        if len(n.path) <= depth:
            nodes[n.id] = dataclasses.replace(n)
            where[n.id] = n.id
            continue
        top = n.path[:depth]
        if n.kind == "error":  # stays a node of its own, beside the module it failed in
            path = top[:-1] + ("error",)
            nodes["/".join(path)] = dataclasses.replace(n, path=path)
            where[n.id] = "/".join(path)
            continue
        tid = "/".join(top)
        where[n.id] = tid
        if tid in nodes:
            nodes[tid].layers += n.layers
            nodes[tid].flops += n.flops
            continue
        m = graph.modules[top]
        nodes[tid] = Node(top, "module", m.type, m.shapes, m.params, m.state, n.flops,
                          layers=n.layers, repeat=m.repeat, last=m.last)
    edges, seen = [], set()
    for e in graph.edges:
        src, dst = where[e.src], where[e.dst]
        if src != dst and (src, dst, e.var) not in seen:
            seen.add((src, dst, e.var))
            edges.append(Edge(src, dst, e.shape, e.var))
    return Graph(graph.name, nodes, edges, graph.modules, graph.variables, depth,
                 graph.error)


def fold(graph: Graph, trainable: Callable[[str], bool] | None = None) -> Graph:
    """Fold runs of identical, chained sibling modules into their first (``repeat=N``).

    With a ``trainable`` predicate, modules that a freezing policy treats differently
    are not folded together (the drawing colours the first of a run).
    """
    flags: dict[Path, frozenset[bool]] = defaultdict(frozenset)
    if trainable is not None:
        for p in graph.variables.get("params", {}):
            parts = tuple(p.split("/"))
            for k in range(1, len(parts)):
                flags[parts[:k]] |= {bool(trainable(p))}
    nodes = dict(graph.nodes)
    edges = list(graph.edges)
    modules = {p: dataclasses.replace(m) for p, m in graph.modules.items()}
    for parent in sorted(list(modules), key=len):
        if parent not in modules or modules[parent].leaf:
            continue
        kids = [p for p in modules if len(p) == len(parent) + 1 and p[:-1] == parent]
        i = 0
        while i < len(kids):
            sig = _signature(kids[i], nodes, edges, modules), flags[kids[i]]
            j = i
            while (j + 1 < len(kids) and _chained(kids[j], kids[j + 1], nodes, edges)
                   and (_signature(kids[j + 1], nodes, edges, modules), flags[kids[j + 1]])
                   == sig):
                j += 1
            if j > i and sig[0][1]:
                edges = _fold_run(kids[i : j + 1], nodes, edges, modules)
            i = j + 1
    return Graph(graph.name, nodes, edges, modules, graph.variables, graph.depth, graph.error)


def _members(mod: Path, nodes: dict[str, Node]) -> list[str]:
    return [i for i, n in nodes.items() if n.path == mod or _within(n.path, mod)]


def _signature(mod: Path, nodes: dict[str, Node], edges: list[Edge], modules) -> tuple:
    """What makes two sibling modules identical: types, shapes, sizes and wiring inside."""
    ids = _members(mod, nodes)
    inside = set(ids)
    k = len(mod)
    rel = {i: nodes[i].path[k:] for i in ids}
    body = tuple((rel[i], nodes[i].type, nodes[i].shapes, nodes[i].params, nodes[i].state)
                 for i in ids)
    # Inside wiring exactly; outside only which tensors come in and go out (the last
    # module of a run feeds something else than the others do).
    wires = sorted(
        {(rel.get(e.src, ("<in>",)), rel.get(e.dst, ("<out>",)) if e.dst in inside else
          ("<out>",), e.shape) for e in edges if e.src in inside or e.dst in inside}
    )
    return modules[mod].type, body, tuple(wires)


def _chained(a: Path, b: Path, nodes: dict[str, Node], edges: list[Edge]) -> bool:
    """True when b's only inputs come from a, and a's only outputs go to b."""
    ia, ib = set(_members(a, nodes)), set(_members(b, nodes))
    for e in edges:
        if e.dst in ib and e.src not in ib and e.src not in ia:
            return False
        if e.src in ia and e.dst not in ia and e.dst not in ib:
            return False
    return bool(ia and ib)


def _fold_run(run: list[Path], nodes: dict[str, Node], edges: list[Edge], modules) -> list[Edge]:
    first, last = run[0], run[-1]
    gone = {i for mod in run[1:] for i in _members(mod, nodes)}
    k = len(last)
    keep = [e for e in edges if e.src not in gone and e.dst not in gone]
    for e in edges:  # the last module's outputs now leave the first one
        if e.src in gone and e.dst not in gone:
            src = "/".join(first + nodes[e.src].path[k:])
            keep.append(Edge(src, e.dst, e.shape, e.var))
    for i in gone:
        del nodes[i]
    for p in [p for p in modules if any(p == m or _within(p, m) for m in run[1:])]:
        del modules[p]
    modules[first].repeat, modules[first].last = len(run), last[-1]
    for i in _members(first, nodes):
        if nodes[i].path == first:
            nodes[i] = dataclasses.replace(nodes[i], repeat=len(run), last=last[-1])
    order = defaultdict(lambda: len(order))
    for i in nodes:
        order[i]
    keep.sort(key=lambda e: (order[e.src], order[e.dst], e.var))
    return keep

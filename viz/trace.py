"""Trace a Flax linen model into a dataflow :class:`~viz.graph.Graph`, without computing.

The model's ``init_with_output`` runs under :func:`jax.make_jaxpr` on an abstract input,
so a 200-layer model costs no FLOPs and no parameter memory.
:func:`flax.linen.intercept_methods` records every module call (path, class, output
shapes); the module paths Flax puts on each jaxpr equation (``source_info.name_stack``)
attribute the equations to modules. Equations inside a leaf module become that module's
node; equations elsewhere (residual adds, concatenations, activations, pooling, reshapes)
become operation nodes. Only tensors that depend on the input are followed, so parameter
reads and constants never appear as edges.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util
from jax.extend import core as jcore

from viz.graph import Edge, Graph, Module, Node, Path
from zoo import backend
from zoo.summary import eqn_flops

# Primitives that only change dtype or copy: the tensor flows through them unchanged.
TRANSPARENT = {"convert_element_type", "copy", "copy_p", "reduce_precision",
               "optimization_barrier"}
# Elementwise primitives: several in a row (gelu, x * scale + shift) fuse into one node.
ELEMENTWISE = {
    "abs", "add", "and", "atan2", "ceil", "clamp", "cos", "cosh", "div", "eq", "erf", "erfc",
    "erf_inv", "exp", "exp2", "expm1", "floor", "ge", "gt", "integer_pow", "le", "log",
    "log1p", "logistic", "lt", "max", "min", "mul", "ne", "neg", "not", "or", "pow", "rem",
    "round", "rsqrt", "select_n", "sign", "sin", "sinh", "sqrt", "square", "sub", "tan",
    "tanh", "xor",
}
# Primitives that wrap a sub-jaxpr and keep their callee's equations out of sight.
CALLS = {"jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
         "custom_vjp_call_jaxpr", "remat", "remat2", "checkpoint"}
FRIENDLY = {"reduce_window_max": "max_pool", "reduce_window_sum": "sum_pool",
            "reduce_window": "pool", "reduce_sum": "sum", "reduce_max": "max",
            "reduce_min": "min", "dot_general": "matmul", "conv_general_dilated": "conv",
            "logistic": "sigmoid"}
# Fused runs of primitives that are better known by another name.
PATTERNS = [({"sum", "div"}, "mean"), ({"sum_pool", "div"}, "avg_pool"),
            ({"erf"}, "gelu"), ({"erfc"}, "gelu"), ({"tanh", "integer_pow"}, "gelu"),
            ({"sigmoid", "mul"}, "silu")]
# Layer functions whose primitives draw as one node named as the reference names the layer
# (a 2x2 average pool, not the strided adds the backend may compute it with): the trace
# runs each call under a jax.named_scope of that name.
LAYER_FUNCTIONS = {
    "zoo.layers": {"max_pool": "max_pool", "avg_pool": "avg_pool",
                   "adaptive_avg_pool": "adaptive_avg_pool", "global_pool": None},
    "flax.linen": {"max_pool": "max_pool", "avg_pool": "avg_pool", "pool": "pool"},
}
# Modules defined here are each one reference layer (SeparableConv is Keras'
# SeparableConv2D): drawn as one node, the modules they are built of left out.
LAYER_MODULES = ("zoo.layers",)
SCOPE_SEP = "~"  # 'avg_pool~3': the third layer call; the suffix keeps neighbours apart


class TraceError(ValueError):
    """A model failed while tracing (a shape error): ``graph`` is the dataflow up to the
    failing module, which ``graph.error`` names, with the error's message."""

    def __init__(self, message: str, graph: Graph):
        super().__init__(message)
        self.graph = graph


@contextlib.contextmanager
def layer_scopes() -> Iterator[None]:
    """Run the layer functions of :data:`LAYER_FUNCTIONS` under named scopes while tracing."""
    import importlib

    count = iter(range(1, 1 << 30))
    saved = []

    def scoped(fn, name):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            label = name
            if label is None:  # global_pool(x, kind)
                kind = kwargs.get("kind", args[1] if len(args) > 1 else "avg")
                label = f"global_{kind}_pool"
            with jax.named_scope(f"{label}{SCOPE_SEP}{next(count)}"):
                return fn(*args, **kwargs)
        return wrapper

    try:
        for mod_name, fns in LAYER_FUNCTIONS.items():
            mod = importlib.import_module(mod_name)
            for attr, name in fns.items():
                fn = getattr(mod, attr, None)
                if fn is not None:
                    saved.append((mod, attr, fn))
                    setattr(mod, attr, scoped(fn, name))
        yield
    finally:
        for mod, attr, fn in reversed(saved):
            setattr(mod, attr, fn)


def trace(
    model: str | nn.Module,
    input_shape: Sequence[int] | None = None,
    *,
    input_dtype: Any = jnp.float32,
    **create_kwargs: Any,
) -> Graph:
    """The full-depth dataflow graph of a model (a registry name or any linen module).

    ``input_shape`` defaults to one image at the registered input size; it is required
    for a module that is not in the registry. ``create_kwargs`` go to ``zoo.create``
    (e.g. ``dtype=jnp.bfloat16``, ``num_classes=2``). The model is called with
    ``train=False`` when its ``__call__`` takes a ``train`` argument.
    """
    module, name, input_shape = _resolve(model, input_shape, create_kwargs)
    kwargs = {"train": False} if "train" in inspect.signature(module.__call__).parameters else {}
    x = jax.ShapeDtypeStruct(tuple(input_shape), input_dtype)
    calls: dict[Path, Module] = {}
    fail: dict[str, Any] = {}  # the innermost module call that raised: path, inputs, error
    done_vars: dict[str, dict[str, int]] = {}  # variables of the calls that returned
    layers: set[Path] = set()  # calls of LAYER_MODULES' classes

    def record(f, args, fkwargs, ctx):
        path = tuple(ctx.module.path)
        try:
            out = f(*args, **fkwargs)
        except Exception as e:
            if ctx.method_name != "setup" and not ctx.method_name.startswith("<"):
                if not fail:
                    fail.update(path=path, type=type(ctx.module).__name__, error=e, inputs=[
                        a for a in jax.tree.leaves((args, fkwargs))
                        if isinstance(a, jax.core.Tracer)])
                calls.setdefault(path, Module(path, type(ctx.module).__name__, (), 0, 0, False))
            raise
        if ctx.method_name == "setup":
            return out
        with contextlib.suppress(Exception):
            for col, tree in ctx.module.variables.items():
                for k, v in traverse_util.flatten_dict(dict(tree)).items():
                    done_vars.setdefault(col, {})["/".join(path + k)] = int(np.prod(v.shape))
        if type(ctx.module).__module__ in LAYER_MODULES:
            layers.add(path)
        if path not in calls and not ctx.method_name.startswith("<"):
            calls[path] = Module(path, type(ctx.module).__name__, _shapes(out), 0, 0, True)
        # An identity module (Dropout at inference) leaves no equation: give it one.
        ins = {id(a) for a in jax.tree.leaves((args, fkwargs))}
        return jax.tree.map(
            lambda o: jax.lax.optimization_barrier(o)
            if isinstance(o, jax.Array) and id(o) in ins else o,
            out,
        )

    # One trace of init gives both the variables' shapes and the dataflow (tracing apply
    # would also re-trace every initializer to check shapes: twice the time).
    def init(x):
        try:
            return module.init_with_output(jax.random.key(0), x, **kwargs)
        except Exception:
            if not fail:
                raise
            # The dataflow so far is in the trace: end it at the failing call's inputs.
            return fail["inputs"], {}

    # XLA's formulation of every convolution, whatever the backend: one primitive per
    # layer and the model's own FLOPs (on CPU, Winograd's products do 2.25x fewer
    # multiplies and shifted depthwise products none)
    with nn.intercept_methods(record), backend.use_impl("xla"), layer_scopes():
        closed, (out, variables) = jax.make_jaxpr(init, return_shape=True)(x)
    for path in [p for p in calls if p in layers]:
        for sub in [q for q in calls if len(q) > len(path) and q[: len(path)] == path]:
            del calls[sub]
    for path, m in calls.items():
        m.leaf = not any(len(p) > len(path) and p[: len(path)] == path for p in calls)
    if fail:
        calls[fail["path"]].leaf = False
    sizes = {
        col: {"/".join(k): int(np.prod(v.shape)) for k, v in
              traverse_util.flatten_dict(tree).items()}
        for col, tree in variables.items()
    } if not fail else done_vars
    totals: dict[tuple[str, Path], int] = {}
    for col, leaves in sizes.items():
        kind = "params" if col == "params" else "state"
        for key, size in leaves.items():
            parts = tuple(key.split("/"))
            for k in range(len(parts)):
                totals[kind, parts[:k]] = totals.get((kind, parts[:k]), 0) + size
    for path, m in calls.items():
        m.params, m.state = totals.get(("params", path), 0), totals.get(("state", path), 0)
    builder = _Builder(calls)
    if not fail:
        return builder.build(name, closed.jaxpr, len(jax.tree.leaves(out)), sizes)
    where = "/".join(fail["path"]) or name
    message = f"{type(fail['error']).__name__}: {fail['error']}"
    graph = builder.build(name, closed.jaxpr, len(fail["inputs"]), sizes,
                          error=(fail["path"], fail["type"], message))
    raise TraceError(f"{name} failed while tracing, in {where} ({fail['type']}): "
                     f"{' '.join(message.split())}", graph) from fail["error"]


def _resolve(model, input_shape, create_kwargs):
    if isinstance(model, str):
        import zoo

        s = zoo.spec(model)
        module = zoo.create(model, **create_kwargs)
        if input_shape is None:
            c = getattr(module, "in_channels", 3)
            input_shape = (1, s.input_size, s.input_size, c)
        return module, model, input_shape
    if create_kwargs:
        raise ValueError(f"options {sorted(create_kwargs)} only apply to registry names")
    if input_shape is None:
        raise ValueError("pass input_shape=(N, H, W, C) to trace a module that is not registered")
    return model, type(model).__name__, input_shape


def _shapes(tree) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(a.shape) for a in jax.tree.leaves(tree) if hasattr(a, "shape"))


class _Builder:
    """Walks a jaxpr once, turning equations into nodes and activation vars into edges."""

    def __init__(self, modules: dict[Path, Module]):
        self.modules = modules
        self.nodes: dict[str, Node] = {}
        self.edges: list[Edge] = []
        self.ext: dict[str, set[str]] = {}  # op node -> nodes feeding it from outside
        self.tags: dict[str, str | None] = {}  # op node -> jax.named_scope it runs under
        self.seen: set[Edge] = set()
        self.nvars = 0

    def build(self, name: str, jaxpr, n_out: int, sizes, error=None) -> Graph:
        """Walk ``jaxpr`` (input x; outputs: n_out model outputs, then variables).

        ``error``: (path, type, message) of the module call that failed; the outputs are
        then its inputs, and they feed one ``error`` node inside that module."""
        (x,) = jaxpr.invars
        self.nodes["input"] = Node(("input",), "input", "Input", (tuple(x.aval.shape),))
        env = {x: self._act("input", x)}
        self._walk(jaxpr, env, ())
        outs = [self._read(env, v) for v in jaxpr.outvars[:n_out]]
        if error is not None:
            path, type_, message = error
            eid = "/".join(path + ("error",))
            self.nodes[eid] = Node(path + ("error",), "error", type_,
                                   tuple(tuple(v.aval.shape) for v in jaxpr.outvars[:n_out]))
            for act in outs:
                if act is not None:
                    self._edge(act, eid)
            self._finish_ops()
            return Graph(name, self.nodes, self.edges, self.modules, sizes,
                         error=("/".join(path), type_, message))
        for k, (v, act) in enumerate(zip(jaxpr.outvars[:n_out], outs, strict=True)):
            oid = "output" if len(outs) == 1 else f"output_{k}"
            self.nodes[oid] = Node((oid,), "output", "Output", (tuple(v.aval.shape),))
            if act is not None:
                self._edge(act, oid)
        self._finish_ops()
        return Graph(name, self.nodes, self.edges, self.modules, sizes)

    def _act(self, node: str, var) -> tuple[str, int, tuple[int, ...]]:
        self.nvars += 1
        return node, self.nvars, tuple(var.aval.shape)

    @staticmethod
    def _read(env, v):
        return env.get(v) if isinstance(v, jcore.Var) else None

    def _edge(self, act, dst: str) -> None:
        src, var, shape = act
        if src != dst:
            e = Edge(src, dst, shape, var)
            if e not in self.seen:
                self.seen.add(e)
                self.edges.append(e)

    def _scope(self, stack: tuple[str, ...]) -> Path:
        """The innermost module whose path is a prefix of the name stack (minus its root)."""
        path: Path = ()
        for part in stack[1:]:
            # Flax names a scope 'module.method' when a method other than __call__ runs.
            for cand in (part, part.rsplit(".", 1)[0]):
                if path + (cand,) in self.modules:
                    path += (cand,)
                    break
            else:
                break
        return path

    def _walk(self, jaxpr, env, prefix: tuple[str, ...]) -> None:
        for eqn in jaxpr.eqns:
            acts = [a for a in (self._read(env, v) for v in eqn.invars) if a is not None]
            if not acts:
                for o in eqn.outvars:
                    env[o] = None
                continue
            stack = prefix + _parts(eqn)
            scope = self._scope(stack)
            sub = _subjaxpr(eqn)
            if sub is not None and self._has_modules(sub, stack, scope):
                inner = {iv: self._read(env, ov) for iv, ov in zip(sub.invars, eqn.invars,
                                                                   strict=False)}
                inner.update({c: None for c in sub.constvars})
                self._walk(sub, inner, stack)
                for o, io in zip(eqn.outvars, sub.outvars, strict=True):
                    env[o] = self._read(inner, io)
                continue
            if scope and self.modules[scope].leaf:
                node = self._module_node(scope)
            elif eqn.primitive.name in TRANSPARENT and len(acts) == 1:
                for o in eqn.outvars:
                    env[o] = acts[0]
                continue
            else:
                # Code under a jax.named_scope (einsum puts its spec there) is one node.
                rest = stack[1 + len(scope) :]
                node = self._op_node(eqn, scope, acts, rest[0] if rest else None)
            self.nodes[node].flops += eqn_flops(eqn)
            for a in acts:
                self._edge(a, node)
            for o in eqn.outvars:
                env[o] = self._act(node, o)

    def _has_modules(self, sub, stack, scope) -> bool:
        for e in sub.eqns:
            full = stack + _parts(e)
            if len(self._scope(full)) > len(scope):
                return True
            inner = _subjaxpr(e)
            if inner is not None and self._has_modules(inner, full, scope):
                return True
        return False

    def _module_node(self, path: Path) -> str:
        nid = "/".join(path)
        if nid not in self.nodes:
            m = self.modules[path]
            self.nodes[nid] = Node(path, "module", m.type, m.shapes, m.params, m.state)
        return nid

    def _op_node(self, eqn, scope: Path, acts, tag: str | None) -> str:
        label = _label(eqn) if tag is None else (
            "einsum" if "->" in tag else tag.split(SCOPE_SEP)[0])
        srcs = list(dict.fromkeys(a[0] for a in acts))
        if tag is not None or eqn.primitive.name in ELEMENTWISE:
            # Fuse into an operation node of this scope (and named scope) when the
            # equation adds no new input: gelu, x * scale + shift, mean = sum / n.
            cands = [s for s in srcs if s in self.ext and self.nodes[s].scope == scope
                     and self.tags[s] == tag]
            if len(cands) == 1 and all(s == cands[0] or s in self.ext[cands[0]] for s in srcs):
                node = self.nodes[cands[0]]
                if tag is None:
                    node.prims += (label,)
                return node.id
        path = scope + (f"#{len(self.ext)}",)  # renamed by _finish_ops
        nid = "/".join(path)
        self.nodes[nid] = Node(path, "op", label, prims=(label,))
        self.ext[nid] = set(srcs)
        self.tags[nid] = tag
        return nid

    def _finish_ops(self) -> None:
        """Name operation nodes ``scope/label`` (``_1``, ``_2`` for repeats) and set shapes."""
        rename, taken, counts = {}, set(self.nodes), {}
        out_shapes: dict[str, list] = {}
        in_rank: dict[str, int] = {}
        for e in self.edges:
            out_shapes.setdefault(e.src, [])
            if e.shape not in out_shapes[e.src]:
                out_shapes[e.src].append(e.shape)
            in_rank[e.dst] = max(in_rank.get(e.dst, 0), len(e.shape))
        for nid, n in self.nodes.items():
            if n.kind != "op":
                continue
            n.type = _pattern(n.prims, in_rank.get(nid, 0), out_shapes.get(nid, []))
            base = "/".join(n.scope + (n.type,))
            k = counts.get(base, 0)
            new = base if k == 0 else f"{base}_{k}"
            while new in taken:
                k += 1
                new = f"{base}_{k}"
            counts[base] = k + 1
            taken.add(new)
            rename[nid] = new
            n.path = n.scope + (new.rsplit("/", 1)[-1],)
            n.shapes = tuple(out_shapes.get(nid, []))
        self.nodes = {rename.get(i, i): n for i, n in self.nodes.items()}
        self.edges = [Edge(rename.get(e.src, e.src), rename.get(e.dst, e.dst), e.shape, e.var)
                      for e in self.edges]


def _parts(eqn) -> tuple[str, ...]:
    """The name stack of an equation as a tuple ('ResNet', 'stage1', 'block1', 'conv1')."""
    s = str(eqn.source_info.name_stack)
    return tuple(s.split("/")) if s else ()


def _subjaxpr(eqn):
    """The callee of a call-like equation (jit, remat, custom_jvp), or None."""
    if eqn.primitive.name not in CALLS:
        return None
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        j = eqn.params.get(key)
        if j is not None:
            j = getattr(j, "jaxpr", j)
            if hasattr(j, "eqns") and len(j.invars) == len(eqn.invars):
                return j
    return None


def _label(eqn) -> str:
    """A short name for an equation: a jitted function's name, else the primitive's."""
    name = eqn.primitive.name
    strides = eqn.params.get("strides") if name == "slice" else None
    if (strides and len(strides) == 4 and strides[0] == strides[3] == 1
            and max(strides[1:3]) > 1 and not any(eqn.params["start_indices"])):
        # x[:, ::s, ::s, :] is a 1x1 max pool of stride s (Keras ResNetV2's shortcut)
        return "max_pool"
    if name in CALLS:
        if eqn.params.get("name"):
            return str(eqn.params["name"]).strip("_") or name
        sub = _subjaxpr(eqn)
        if sub is not None and len(sub.eqns) == 1:
            return _label(sub.eqns[0])
    return FRIENDLY.get(name, name)


def _pattern(prims: tuple[str, ...], in_rank: int, shapes) -> str:
    """The display name of a fused run of primitives."""
    have = set(prims)
    for need, name in PATTERNS:
        if need <= have:
            return name
    if prims == ("reshape",) and in_rank > 2 and shapes and len(shapes[0]) == 2:
        return "flatten"
    return prims[0]


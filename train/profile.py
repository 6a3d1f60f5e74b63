"""Where one jitted inference or training step of a zoo model spends its time, per XLA op.

:func:`profile` runs the step of :func:`train.bench.ours_functions` (random data, SGD on
cross-entropy) once to compile and warm up, then once under ``jax.profiler.trace`` (with a
Perfetto trace), and sums the duration of every executed XLA thunk grouped by its kind
(``ynn_fusion``, ``transpose_copy_fusion``, ...) and by the JAX op it came from
(``op_name`` in the compiled HLO, ``transpose(jvp(...))`` marking the backward pass), the
largest first. On XLA:CPU independent thunks can run concurrently, so the sum can exceed
the step's wall time. Under ``zoo.compiler_options()`` XLA:CPU's matrix products (``dot``
thunks) return before their work in Eigen's threads is done, so their time lands on the
thunks after them: run with ``ZOO_COMPILER_OPTIONS=none`` to see the products as YNNPACK
fusions of their own. This is how the training-step formulations in BENCHMARKS.md were
found. ``python -m scripts.profile`` is the command line.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

import jax

from train.bench import ours_functions


def op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the JAX ``op_name`` it was lowered from."""
    names = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%(\S+) = .*?op_name=\"([^\"]+)\"", line)
        if m:
            names[m.group(1)] = m.group(2)
    return names


def summarise(events: list[dict], names: dict[str, str], top: int) -> list[tuple]:
    """(ms, count, thunk kind, op name) rows: durations summed per kind and op name."""
    skip = ("ThunkExecutor", "$", "SlinkyThreadPool", "PjitFunction", "end: ")
    rows = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("ph") != "X" or e["name"].startswith(skip) or e["name"] not in names:
            continue
        kind = re.sub(r"\.\d+$", "", e["name"])
        op = re.sub(r"\d+", "#", names[e["name"]])  # block3/conv2 and block4/conv2 together
        rows[(kind, op)][0] += e.get("dur", 0) / 1e3
        rows[(kind, op)][1] += 1
    out = [(ms, n, kind, op) for (kind, op), (ms, n) in rows.items()]
    return sorted(out, reverse=True)[:top]


def profile(model: str, *, mode: str = "train", batch: int = 32, top: int = 25,
            trace_dir: str | None = None) -> str:
    """The report, printed and returned: the untraced step's time, then the ``top`` rows
    of :func:`summarise` of one traced step. The trace is kept in ``trace_dir`` if given."""
    fn, fn_args = ours_functions(model, batch)[mode]
    compiled = fn.lower(*fn_args).compile()
    names = op_names(compiled.as_text())
    jax.block_until_ready(compiled(*fn_args))
    t = time.perf_counter()
    jax.block_until_ready(compiled(*fn_args))
    wall = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        trace_dir = trace_dir or tmp
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            jax.block_until_ready(compiled(*fn_args))
        files = glob.glob(os.path.join(trace_dir, "**", "*.json.gz"), recursive=True)
        if not files:
            raise RuntimeError(f"no Perfetto trace was written under {trace_dir}")
        with gzip.open(max(files, key=os.path.getmtime)) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    lines = [f"{model} {mode}, batch {batch}: step {wall * 1e3:.0f} ms (untraced)",
             f"{'ms':>9} {'count':>5}  {'thunk kind':28s} op"]
    lines += [f"{ms:9.1f} {n:5d}  {kind[:28]:28s} {op[-100:]}"
              for ms, n, kind, op in summarise(events, names, top)]
    text = "\n".join(lines)
    print(text)
    return text

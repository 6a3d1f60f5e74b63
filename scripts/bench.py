"""Time inference and one SGD training step: the zoo vs Keras applications on JAX and TensorFlow.

    python -m scripts.bench [--models resnet50,mobilenet,...] [--batch 32] [--rounds 3]
        [--tf-python /path/to/python-with-tensorflow] [--json bench.json] [--markdown bench.md]
    python -m scripts.bench --convs    # each conv formulation at typical shapes (zoo.backend.conv)

Each framework runs each model in a fresh process of its own, as a user's script would
(timed after other models in the same process, ours ran 5-10% slower and TensorFlow ~10%
faster: BENCHMARKS.md, session 9; ``--shared-process`` runs one process per framework and
round instead). ``ours``: the zoo under jit with
``zoo.compiler_options()``, as ``train`` runs it; ``keras-jax``:
``keras.applications`` with ``KERAS_BACKEND=jax``; ``keras-tf``: the same on TensorFlow,
skipped with a note when no interpreter with TensorFlow is found: install the ``bench``
extra, or pass ``--tf-python``. All use float32, random data, batch 32, 224 px (299
for Xception). Inference is a forward pass in inference mode; a training step is a
forward and backward pass in training mode (batch statistics), softmax cross-entropy on
integer labels and a plain SGD update. Times are the median of ``--repeats`` runs after
``--warmup`` runs (compilation excluded); with ``--rounds N`` the frameworks run in turn
N times and each reports the median of its rounds, so a drift of the machine's speed
over minutes (BENCHMARKS.md) hits every framework alike. GFLOP/s counts 2 FLOPs per
multiply-add of the conv and dense layers (from the zoo's model, shapes only); a training
step counts 3x the forward FLOPs.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_MODELS = ("resnet50", "mobilenet", "mobilenetv2", "densenet121", "xception")
FRAMEWORKS = ("ours", "keras-jax", "keras-tf")
KERAS_NAMES = {"resnet50": "ResNet50", "mobilenet": "MobileNet", "mobilenetv2": "MobileNetV2",
               "densenet121": "DenseNet121", "xception": "Xception",
               "inception_v3": "InceptionV3", "vgg16": "VGG16"}
SIZES = {"xception": 299, "inception_v3": 299}


def size_of(name: str) -> int:
    return SIZES.get(name, 224)


def _time(fn, warmup: int, repeats: int) -> float:
    """Median seconds of ``fn()`` (which must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# ------------------------------------------------------------------ workers


def ours_functions(name: str, batch: int):
    """The zoo model's jitted inference and SGD step, and their arguments (random data)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import zoo

    size = size_of(name)
    model = zoo.create(name)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, size, size, 3)).astype("float32"))
    y = jnp.asarray(rng.integers(0, 1000, batch))
    variables = model.init(jax.random.PRNGKey(0), x[:1])
    params, stats = variables["params"], variables.get("batch_stats", {})
    jit = functools.partial(jax.jit, compiler_options=zoo.compiler_options())
    infer = jit(lambda p, s, x: model.apply({"params": p, "batch_stats": s}, x))

    @jit
    def step(p, s, x, y):
        def loss(p):
            logits, upd = model.apply({"params": p, "batch_stats": s}, x, train=True,
                                      mutable=["batch_stats"],
                                      rngs={"dropout": jax.random.PRNGKey(1)})
            logp = jax.nn.log_softmax(logits)
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], 1)), upd["batch_stats"]

        (value, s), g = jax.value_and_grad(loss, has_aux=True)(p)
        return jax.tree.map(lambda a, b: a - 0.01 * b, p, g), s, value

    return dict(infer=(infer, (params, stats, x)), train=(step, (params, stats, x, y)))


def bench_ours(name: str, batch: int, warmup: int, repeats: int, modes=("infer", "train")):
    """The zoo model under jax.jit: inference and one SGD step."""
    fns = ours_functions(name, batch)
    infer, infer_args = fns["infer"]
    step, (params, stats, x, y) = fns["train"]
    state = [params, stats]

    def train():
        state[0], state[1], value = step(state[0], state[1], x, y)
        value.block_until_ready()

    run = dict(infer=lambda: infer(*infer_args).block_until_ready(), train=train)
    for mode in modes:
        yield mode, _time(run[mode], warmup, repeats)


def bench_keras(name: str, batch: int, warmup: int, repeats: int, modes=("infer", "train")):
    """The keras.applications model: ``predict_on_batch`` and ``train_on_batch`` (SGD)."""
    import keras
    import numpy as np

    size = size_of(name)
    ctor = getattr(keras.applications, KERAS_NAMES[name])
    model = ctor(weights=None, input_shape=(size, size, 3), classifier_activation=None)
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, size, size, 3)).astype("float32")
    y = rng.integers(0, 1000, batch)
    run = dict(infer=lambda: model.predict_on_batch(x), train=lambda: model.train_on_batch(x, y))
    for mode in modes:
        yield mode, _time(run[mode], warmup, repeats)


def worker(framework: str, models: list[str], batch: int, warmup: int, repeats: int,
           out: str, modes: tuple[str, ...] = ("infer", "train")) -> None:
    """Run one framework's timings in this process and write them to ``out`` as JSON."""
    if framework == "ours":
        import zoo

        version, bench = _versions("jax", "flax"), bench_ours
        available = set(zoo.list_models())
    else:
        version, bench = _versions("keras", "jax", "tensorflow", "tensorflow-cpu"), bench_keras
        available = set(KERAS_NAMES)
    results = {"version": version, "models": {}}
    for name in models:
        if name not in available:
            results["models"][name] = {"skipped": f"{name} is not available in {framework}"}
            continue
        print(f"  {framework:9s} {name} ...", file=sys.stderr, flush=True)
        results["models"][name] = {}
        for mode, seconds in bench(name, batch, warmup, repeats, modes):
            results["models"][name][mode] = seconds  # saved at once: a later OOM loses less
            Path(out).write_text(json.dumps(results))
    Path(out).write_text(json.dumps(results))


def _versions(*packages: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for p in packages:
        try:
            found.append(f"{p} {version(p)}")
        except PackageNotFoundError:
            pass
    return ", ".join(found)


# (batch, size, in, out, kernel, stride, padding, depthwise): shapes from the five models
CONV_SHAPES = (
    (32, 224, 3, 32, 3, 2, "SAME", False), (32, 224, 3, 64, 7, 2, "SAME", False),
    (32, 147, 32, 64, 3, 1, "VALID", False), (32, 56, 64, 64, 3, 1, "SAME", False),
    (32, 28, 128, 128, 3, 1, "SAME", False), (32, 14, 256, 256, 3, 1, "SAME", False),
    (32, 56, 256, 64, 1, 1, "SAME", False), (32, 28, 512, 128, 1, 1, "SAME", False),
    (32, 112, 32, 32, 3, 1, "SAME", True), (32, 112, 96, 96, 3, 2, "SAME", True),
    (32, 56, 144, 144, 3, 1, "SAME", True), (32, 14, 576, 576, 3, 1, "SAME", True),
    (32, 19, 728, 728, 3, 1, "SAME", True), (32, 7, 512, 512, 3, 1, "SAME", False),
    (32, 73, 80, 192, 3, 1, "VALID", False), (32, 112, 128, 128, 3, 1, "SAME", False),
)


def _run(f, *args) -> None:
    import jax

    jax.block_until_ready(f(*args))


def _conv_impls(k: int, cin: int, s: tuple[int, int], pad: str, depthwise: bool) -> dict:
    from zoo.backend import conv, native

    if depthwise:
        def xla(x, w):
            return conv.xla_conv(x, w.reshape(k, k, 1, cin), s, pad, groups=cin)

        shift = functools.partial(_swap, conv.shift_depthwise, s, pad)
        impls = {"xla": xla, "matmul (shift, XLA)": _under_native("off", shift)}
        if native.available():
            impls["matmul (shift, native)"] = _under_native("on", shift)
        return impls
    impls = {"xla": functools.partial(_swap, conv.xla_conv, s, pad),
             "matmul": functools.partial(_swap, conv.matmul_conv, s, pad),
             "mixed": functools.partial(_swap, conv.mixed_conv, s, pad)}
    if k == 3 and s == (1, 1):
        impls["winograd"] = functools.partial(_swap, conv.winograd_conv, s, pad)
    return impls


def _swap(f, s, pad, x, w):
    return f(x, w, s, pad)


def _under_native(mode: str, f):
    """``f`` traced with the native kernels ``mode`` (its gradient too: see bench_convs)."""
    from zoo.backend import native

    def run(*args):
        with native.use_mode(mode):
            return f(*args)

    run.native_mode = mode
    return run


def bench_convs(warmup: int, repeats: int) -> str:
    """GFLOP/s of each formulation (forward; forward + both gradients) at CONV_SHAPES."""
    import jax
    import jax.numpy as jnp

    lines = ["| input | kernel | formulation | forward GFLOP/s | fwd+grad GFLOP/s |",
             "|---|---|---|---|---|"]
    from zoo.backend import conv

    jit = functools.partial(jax.jit, compiler_options=conv.compiler_options())
    for n, size, cin, cout, k, stride, pad, depthwise in CONV_SHAPES:
        x = jax.random.normal(jax.random.PRNGKey(0), (n, size, size, cin))
        shape = (k, k, cin, 1) if depthwise else (k, k, cin, cout)
        w = jax.random.normal(jax.random.PRNGKey(1), shape) * 0.1
        for label, f in _conv_impls(k, cin, (stride, stride), pad, depthwise).items():
            if label == "mixed":
                label += f" ({conv.mixed_path(x.shape, shape, (stride, stride), pad)})"
            fwd = jit(f)
            macs = fwd(x, w).size * k * k * (1 if depthwise else cin)
            grad = jax.grad(lambda x, w, f=f: jnp.sum(f(x, w) ** 2), (0, 1))
            if hasattr(f, "native_mode"):  # the backward pass is traced after f returns
                grad = _under_native(f.native_mode, grad)
            grad = jit(grad)
            t_f = _time(functools.partial(_run, fwd, x, w), warmup, repeats)
            t_g = _time(functools.partial(_run, grad, x, w), warmup, repeats)
            kind = f"{k}x{k}/{stride} {pad}" + (" depthwise" if depthwise else f" -> {cout}")
            lines.append(f"| {n}x{size}x{size}x{cin} | {kind} | {label} | "
                         f"{2 * macs / t_f / 1e9:.1f} | {6 * macs / t_g / 1e9:.1f} |")
            print(lines[-1], flush=True)
    return "\n".join(lines)


# ------------------------------------------------------------------ driver


def model_flops(name: str) -> float:
    """FLOPs of one forward pass of one image: 2 x multiply-adds of conv and dense layers."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import linen as nn

    import zoo
    from zoo import layers

    macs = []

    def count(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        mod = context.module
        if context.method_name == "__call__" and isinstance(mod, layers.Conv | nn.Conv | nn.Dense):
            kernel = mod.variables["params"]["kernel"]
            macs.append(np.prod(out.shape[:-1]) * np.prod(kernel.shape))
        elif context.method_name == "__call__" and isinstance(mod, layers.DepthwiseConv):
            k = mod.variables["params"]["kernel"]
            macs.append(np.prod(out.shape) * k.shape[0] * k.shape[1])
        return out

    model = zoo.create(name)
    size = size_of(name)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    v = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
    with nn.intercept_methods(count):
        jax.eval_shape(lambda v, x: model.apply(v, x), v, x)
    return 2.0 * float(sum(macs))


def find_tf_python(explicit: str | None) -> str | None:
    """An interpreter with TensorFlow and Keras: ``--tf-python``, this one, or None."""
    if explicit:
        return explicit
    if importlib.util.find_spec("tensorflow") is not None:
        return sys.executable
    return None


def run_worker(framework: str, python: str, args, models: list[str]) -> dict:
    env = dict(os.environ, KERAS_BACKEND="tensorflow" if framework == "keras-tf" else "jax",
               TF_CPP_MIN_LOG_LEVEL="2")
    if args.hugepages:  # glibc madvises huge pages for large allocations (BENCHMARKS.md)
        env["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                      env.get("PYTHONPATH")]))
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [python, str(Path(__file__).resolve()), "--worker", framework,
               "--models", ",".join(models), "--batch", str(args.batch),
               "--warmup", str(args.warmup), "--repeats", str(args.repeats),
               "--modes", args.modes, "--out", out.name]
        proc = subprocess.run(cmd, env=env)
        text = Path(out.name).read_text()
    if not text:
        return {"error": f"worker exited with {proc.returncode} before any result"}
    result = json.loads(text)
    if proc.returncode:
        result["error"] = f"worker exited with {proc.returncode}"
    return result


def merge_workers(parts: list[dict]) -> dict:
    """The results of one framework's round when each model ran in its own worker: one
    result as :func:`run_worker` returns it (the first error kept)."""
    merged = {"version": next((p["version"] for p in parts if p.get("version")), None),
              "models": {}}
    for part in parts:
        merged["models"].update(part.get("models", {}))
        if "error" in part and "error" not in merged:
            merged["error"] = part["error"]
    return merged


def merge_rounds(runs: list[dict]) -> dict:
    """One framework's results over several rounds: per model and mode the median of the
    rounds' times (each itself a median of repeats); every round's times kept in
    ``rounds``. A model skipped or failed in every round keeps the first round's entry."""
    merged = {"version": runs[0].get("version"), "models": {}, "rounds": runs}
    errors = [r["error"] for r in runs if "error" in r]
    if errors and len(errors) == len(runs) and not any(r.get("models") for r in runs):
        return {"error": errors[0], "rounds": runs}
    for run in runs:
        for name, entry in run.get("models", {}).items():
            slot = merged["models"].setdefault(name, {})
            for mode, value in entry.items():
                if isinstance(value, float):
                    slot.setdefault(mode, []).append(value)
                else:
                    slot.setdefault(mode, value)
    for entry in merged["models"].values():
        for mode, value in entry.items():
            if isinstance(value, list):
                entry[mode] = statistics.median(value)
    if errors:
        merged["error"] = errors[0]
    return merged


def table(results: dict, flops: dict, batch: int) -> str:
    """Markdown: img/s and GFLOP/s per framework and mode, and our speed-up ratios."""
    fws = [f for f in FRAMEWORKS if f in results and "models" in results[f]]
    head = ["model", "mode"] + [f"{f} img/s (GFLOP/s)" for f in fws]
    head += [f"ours / {f}" for f in fws if f != "ours"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in flops:
        for mode, mult in (("infer", 1), ("train", 3)):
            row, speed = [name, mode], {}
            for f in fws:
                r = results[f]["models"].get(name, {})
                if mode not in r:
                    row.append(r.get("skipped", "n/a") if "skipped" in r else "n/a")
                    continue
                speed[f] = batch / r[mode]
                row.append(f"{speed[f]:.1f} ({mult * flops[name] * speed[f] / 1e9:.0f})")
            for f in fws:
                if f != "ours":
                    ok = "ours" in speed and f in speed
                    row.append(f"{speed['ours'] / speed[f]:.2f}x" if ok else "n/a")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--modes", default="infer,train", help="infer, train or both")
    parser.add_argument("--hugepages", action="store_true",
                        help="run every framework with GLIBC_TUNABLES=glibc.malloc.hugetlb=1")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the frameworks this many times in turn and report each "
                             "one's median over the rounds (the machine's speed drifts)")
    parser.add_argument("--shared-process", action="store_true",
                        help="time all models of a framework in one process per round "
                             "(default: a fresh process per model)")
    parser.add_argument("--tf-python", default=None,
                        help="an interpreter with tensorflow and keras for the keras-tf column")
    parser.add_argument("--json", default=None, help="write all results here")
    parser.add_argument("--markdown", default=None, help="write the table here")
    parser.add_argument("--convs", action="store_true",
                        help="time each convolution formulation instead of the models")
    parser.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    if args.worker:
        return worker(args.worker, models, args.batch, args.warmup, args.repeats, args.out,
                      tuple(args.modes.split(",")))
    if args.convs:
        text = bench_convs(args.warmup, args.repeats)
        if args.markdown:
            Path(args.markdown).write_text(text + "\n")
        return None

    import zoo

    known = set(zoo.list_models())
    flops = {m: (model_flops(m) if m in known else float("nan")) for m in models}
    results, notes, pythons = {}, [], {}
    for fw in args.frameworks.split(","):
        python = find_tf_python(args.tf_python) if fw == "keras-tf" else sys.executable
        if python is None:
            notes.append("keras-tf skipped: TensorFlow is not installed (install the "
                         "`bench` extra or pass --tf-python)")
            continue
        pythons[fw] = python
    runs = {fw: [] for fw in pythons}
    for r in range(args.rounds):  # frameworks alternate: drift of the machine hits all
        for fw, python in pythons.items():
            print(f"{fw}:" + (f" round {r + 1}/{args.rounds}" if args.rounds > 1 else ""),
                  file=sys.stderr, flush=True)
            if args.shared_process:
                runs[fw].append(run_worker(fw, python, args, models))
            else:
                runs[fw].append(merge_workers([run_worker(fw, python, args, [m])
                                               for m in models]))
            if "error" in runs[fw][-1]:
                notes.append(f"{fw} (round {r + 1}): {runs[fw][-1]['error']}")
    results = {fw: merge_rounds(rs) for fw, rs in runs.items()}
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    meta = dict(batch=args.batch, repeats=args.repeats, rounds=args.rounds,
                hugepages=args.hugepages,
                cpus=os.cpu_count(),
                machine=platform.processor() or platform.machine(),
                load_after=[round(x, 2) for x in load] if load else None,
                versions={f: r.get("version") for f, r in results.items()}, notes=notes)
    text = table(results, flops, args.batch)
    text += "\n\n" + "\n".join(f"- {k}: {v}" for k, v in meta.items() if v)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(meta=meta, flops=flops, results=results),
                                              indent=1))


if __name__ == "__main__":
    main()

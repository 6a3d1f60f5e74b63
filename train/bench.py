"""Time inference and one SGD training step: the zoo vs Keras applications on JAX and
TensorFlow (:func:`compare`), and each conv formulation at the models' shapes
(:func:`bench_convs`). ``python -m scripts.bench`` is the command line.

Each framework runs each model in a fresh process of its own, as a user's script would
(timed after other models in the same process, ours ran 5-10% slower and TensorFlow ~10%
faster: BENCHMARKS.md, session 9; ``shared_process=True`` runs one process per framework
and round instead). ``ours``: the zoo under jit with ``zoo.compiler_options()``, as
``train`` runs it; ``keras-jax``: ``keras.applications`` with ``KERAS_BACKEND=jax``;
``keras-tf``: the same on TensorFlow, skipped with a note when no interpreter with
TensorFlow is found: install the ``bench`` extra, or pass ``tf_python``. All use float32,
random data, batch 32, 224 px (299 for Xception). Inference is a forward pass in inference
mode; a training step is a forward and backward pass in training mode (batch statistics),
softmax cross-entropy on integer labels and a plain SGD update. Times are the median of
``repeats`` runs after ``warmup`` runs (compilation excluded); with ``rounds=N`` the
frameworks run in turn N times and each reports the median of its rounds, so a drift of
the machine's speed over minutes (BENCHMARKS.md) hits every framework alike. GFLOP/s
counts 2 FLOPs per multiply-add of the conv and dense layers (``zoo.summary.flops``, shapes
only); a training step counts 3x the forward FLOPs.

This module imports only the standard library at the top: a worker for ``keras-tf`` runs
it in another interpreter, one with TensorFlow and Keras and maybe nothing else.
"""

from __future__ import annotations

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
from collections.abc import Sequence
from pathlib import Path

DEFAULT_MODELS = ("resnet50", "mobilenet", "mobilenetv2", "densenet121", "xception")
FRAMEWORKS = ("ours", "keras-jax", "keras-tf", "torch")  # torch: train/bench_torch.py
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


def ours_functions(name: str, batch: int, *, size: int | None = None, dtype: str = "float32"):
    """The zoo model's jitted inference and SGD step, and their arguments (random data):
    ``size`` px (default: the benchmark's), computing in ``dtype`` (parameters float32)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import zoo

    size = size or size_of(name)
    model = zoo.create(name, dtype=getattr(jnp, dtype))
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
    elif framework == "torch":
        from train.bench_torch import TORCH_NAMES, bench_torch

        version, bench = _versions("torch", "torchvision"), bench_torch
        available = set(TORCH_NAMES)
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
        size = {"size": size_of(name)} if framework == "torch" else {}
        for mode, seconds in bench(name, batch, warmup, repeats, modes, **size):
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


def bench_convs(warmup: int = 2, repeats: int = 5, markdown_path: str | None = None) -> str:
    """GFLOP/s of each formulation (forward; forward + both gradients) at CONV_SHAPES: a
    Markdown table, its rows printed as they come, written to ``markdown_path`` if given."""
    import jax
    import jax.numpy as jnp

    lines = ["| input | kernel | formulation | forward GFLOP/s | fwd+grad GFLOP/s |",
             "|---|---|---|---|---|"]
    import zoo
    from zoo.backend import conv

    jit = functools.partial(jax.jit, compiler_options=zoo.compiler_options())
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
    text = "\n".join(lines)
    if markdown_path:
        Path(markdown_path).write_text(text + "\n")
    return text


# ------------------------------------------------------------------ driver


def model_flops(name: str) -> float:
    """FLOPs of one forward pass of one image at the benchmark's size (``zoo.summary.flops``)."""
    from zoo import summary

    size = size_of(name)
    return float(summary.flops(name, (1, size, size, 3)))


def find_tf_python(explicit: str | None) -> str | None:
    """An interpreter with TensorFlow and Keras: ``--tf-python``, this one, or None."""
    if explicit:
        return explicit
    if importlib.util.find_spec("tensorflow") is not None:
        return sys.executable
    return None


# A worker is a fresh interpreter, perhaps another one (``tf_python``: a virtual environment
# with TensorFlow and without this package): the folder holding ``train`` goes at the end of
# its path, after that interpreter's own packages, and the job comes as JSON.
_WORKER = ("import json, sys; sys.path.append(sys.argv[1]); from train import bench; "
           "bench.worker(**json.loads(sys.argv[2]))")


def run_worker(framework: str, python: str, models: Sequence[str], *, batch: int = 32,
               warmup: int = 2, repeats: int = 5, modes: Sequence[str] = ("infer", "train"),
               hugepages: bool = False) -> dict:
    """Time ``models`` in one new ``python`` process: :func:`worker`'s results, with
    ``error`` set when it failed (a crash after some models keeps theirs)."""
    env = dict(os.environ, KERAS_BACKEND="tensorflow" if framework == "keras-tf" else "jax",
               TF_CPP_MIN_LOG_LEVEL="2")
    if framework != "ours":  # Keras as its users run it: without the flags `import zoo` set
        env.pop("XLA_FLAGS", None)
        if os.environ.get("ZOO_USER_XLA_FLAGS") is not None:
            env["XLA_FLAGS"] = os.environ["ZOO_USER_XLA_FLAGS"]
    if hugepages:  # glibc madvises huge pages for large allocations (BENCHMARKS.md)
        env["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        job = dict(framework=framework, models=list(models), batch=batch, warmup=warmup,
                   repeats=repeats, modes=list(modes), out=out.name)
        root = str(Path(__file__).resolve().parents[1])
        proc = subprocess.run([python, "-c", _WORKER, root, json.dumps(job)], env=env)
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




def compare(models: Sequence[str] = DEFAULT_MODELS, frameworks: Sequence[str] = FRAMEWORKS, *,
            batch: int = 32, warmup: int = 2, repeats: int = 5,
            modes: Sequence[str] = ("infer", "train"), rounds: int = 1,
            hugepages: bool = False, shared_process: bool = False,
            tf_python: str | None = None, json_path: str | None = None,
            markdown_path: str | None = None) -> dict:
    """Time each model in each framework (a fresh worker process per model, or per
    framework and round with ``shared_process``), ``rounds`` times in turn; print the
    Markdown table and write it and the JSON when paths are given. Returns the JSON's
    content: ``meta``, ``flops`` per model and ``results`` per framework."""
    import zoo

    known = set(zoo.list_models())
    flops = {m: (model_flops(m) if m in known else float("nan")) for m in models}
    notes, pythons = [], {}
    for fw in frameworks:
        python = find_tf_python(tf_python) if fw == "keras-tf" else sys.executable
        if python is None:
            notes.append("keras-tf skipped: TensorFlow is not installed (install the "
                         "`bench` extra or pass --tf-python)")
            continue
        pythons[fw] = python
    run = functools.partial(run_worker, batch=batch, warmup=warmup, repeats=repeats,
                            modes=modes, hugepages=hugepages)
    runs = {fw: [] for fw in pythons}
    for r in range(rounds):  # frameworks alternate: drift of the machine hits all
        for fw, python in pythons.items():
            print(f"{fw}:" + (f" round {r + 1}/{rounds}" if rounds > 1 else ""),
                  file=sys.stderr, flush=True)
            if shared_process:
                runs[fw].append(run(fw, python, models))
            else:
                runs[fw].append(merge_workers([run(fw, python, [m]) for m in models]))
            if "error" in runs[fw][-1]:
                notes.append(f"{fw} (round {r + 1}): {runs[fw][-1]['error']}")
    results = {fw: merge_rounds(rs) for fw, rs in runs.items()}
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    meta = dict(batch=batch, repeats=repeats, rounds=rounds, hugepages=hugepages,
                cpus=os.cpu_count(),
                machine=platform.processor() or platform.machine(),
                load_after=[round(x, 2) for x in load] if load else None,
                versions={f: r.get("version") for f, r in results.items()}, notes=notes)
    text = table(results, flops, batch)
    text += "\n\n" + "\n".join(f"- {k}: {v}" for k, v in meta.items() if v)
    print(text)
    if markdown_path:
        Path(markdown_path).write_text(text + "\n")
    report = dict(meta=meta, flops=flops, results=results)
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=1))
    return report


# ------------------------------------------------------------------ device check

DEVICE_CHECK_MODELS = ("resnet50", "mobilenetv2")
DEVICE_CHECK_DTYPES = ("float32", "bfloat16")
# ResNet50 training img/s, NVIDIA DeepLearningExamples (PyTorch): the anchors of issue 19
RESNET50_ANCHORS = {"A100 TF32": 938, "A100 AMP": 2470, "V100 FP32": 367}
TIMM_NAMES = {"resnet50": "resnet50", "mobilenetv2": "mobilenetv2_100"}


def _step_timing(step, state, x, y, warmup: int, repeats: int) -> dict:
    """Where a training step's time goes: ``blocked`` (ms per step, waiting for each),
    ``pipelined`` (ms per step over ``repeats`` steps dispatched back to back: the device's
    pace when the host keeps ahead) and ``dispatch`` (ms of host time to enqueue one)."""
    import jax

    params, stats = state

    def one():
        nonlocal params, stats
        params, stats, value = step(params, stats, x, y)
        return value

    for _ in range(warmup):
        jax.block_until_ready(one())
    blocked = _time(lambda: jax.block_until_ready(one()), 0, repeats)
    t = time.perf_counter()
    values = [one() for _ in range(repeats)]
    dispatched = time.perf_counter() - t
    jax.block_until_ready(values)
    total = time.perf_counter() - t
    return dict(blocked=1e3 * blocked, pipelined=1e3 * total / repeats,
                dispatch=1e3 * dispatched / repeats)


def _profile_summary(fn, args, top: int = 8) -> list[tuple[float, str]]:
    """(ms, event name) of the ``top`` longest kinds of event in a ``jax.profiler`` trace of
    one call (names with their digits folded: ``fusion.12`` and ``fusion.7`` together); on
    a GPU the kernels, on the CPU XLA's thunks."""
    import glob
    import gzip
    import re

    import jax

    jax.block_until_ready(fn(*args))
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            jax.block_until_ready(fn(*args))
        files = glob.glob(os.path.join(tmp, "**", "*.json.gz"), recursive=True)
        if not files:
            raise RuntimeError("jax.profiler wrote no Perfetto trace")
        with gzip.open(files[0]) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    sums: dict[str, float] = {}
    skip = ("PjitFunction", "ThunkExecutor", "$", "end: ", "SlinkyThreadPool")
    for e in events:
        if e.get("ph") == "X" and not e["name"].startswith(skip):
            name = re.sub(r"\d+", "#", e["name"])[:90]
            sums[name] = sums.get(name, 0.0) + e.get("dur", 0) / 1e3
    return sorted(((ms, n) for n, ms in sums.items()), reverse=True)[:top]


def _timm_peer(name: str, batch: int, size: int, dtype: str, warmup: int,
               repeats: int) -> dict:
    """timm's model on the same device (CUDA if torch sees one, else the CPU), channels_last,
    bf16 by autocast: img/s of an SGD training step and of inference; ``skipped`` with the
    reason when timm or torch is missing."""
    try:
        import timm
        import torch
    except ImportError as e:
        return {"skipped": f"timm/torch not installed ({e.name})"}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    model = timm.create_model(TIMM_NAMES[name], num_classes=1000).to(
        device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(batch, 3, size, size, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)
    cast = dict(device_type=device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def train():
        model.train()
        with torch.autocast(**cast):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()

    def infer():
        model.eval()
        with torch.no_grad(), torch.autocast(**cast):
            model(x)
        sync()

    return {"device": device, "torch": torch.__version__, "timm": timm.__version__,
            "train": batch / _time(train, warmup, repeats),
            "infer": batch / _time(infer, warmup, repeats)}


def _short_training(model: str, batch: int, size: int, steps: int, workdir: str) -> dict:
    """A real run of ``train.loop.train_and_evaluate`` on synthetic data (the project's
    pipeline, steps, checkpoints and final evaluation): wall seconds, img/s over the run
    (compilation included) and the report's accuracy."""
    from train import loop
    from train.configs import synthetic

    config = synthetic.get_config()
    config.model.name = model
    config.data.image_size = size
    config.data.synthetic_size = max(int(steps * batch / 0.8) + batch, 64)
    config.batch_size = batch
    config.epochs = 1
    config.max_steps = steps
    config.progress = False
    config.checkpoint_every_steps = steps
    t = time.perf_counter()
    report = loop.train_and_evaluate(config, workdir, overwrite=True)
    seconds = time.perf_counter() - t
    accuracy = report.get("accuracy") if isinstance(report, dict) else None
    return dict(model=model, batch=batch, size=size, steps=steps, seconds=seconds,
                img_per_s=steps * batch / seconds, accuracy=accuracy)


def device_check(*, small: bool | None = None, models: Sequence[str] = DEVICE_CHECK_MODELS,
                 dtypes: Sequence[str] = DEVICE_CHECK_DTYPES, train_model: str | None = None,
                 training: bool = True, json_path: str | None = None) -> dict:
    """The accelerator check (``python -m scripts.bench --device-check``): on JAX's default
    device, each model's training step (SGD, batch statistics) and inference at batch 256,
    224 px, in each dtype: img/s and where a step's time goes (blocked, pipelined and host
    dispatch ms per step; the longest events of a ``jax.profiler`` trace of the first); timm
    on the same device as the peer; a short real training through ``train.loop`` on
    synthetic data (``train_model``, default the last model; ``training=False`` skips it).
    ``small`` (the default without an accelerator): batch 4 at 64 px and a few steps, to
    check the path on a CPU. Prints a report and returns its data."""
    import jax

    accelerator = jax.default_backend() != "cpu"
    small = (not accelerator) if small is None else small
    batch, size, warmup, repeats = (4, 64, 1, 2) if small else (256, 224, 3, 10)
    device = jax.devices()[0]
    out = {"device": f"{device.platform} {device.device_kind}", "count": jax.device_count(),
           "small": small, "batch": batch, "size": size, "versions": _versions("jax", "jaxlib"),
           "models": {}, "anchors_resnet50_train": RESNET50_ANCHORS}
    lines = [f"device check on {out['device']} (x{out['count']}), batch {batch}, {size} px"
             + (" (small: not a measurement)" if small else ""),
             "| model | dtype | train img/s | infer img/s | step ms blocked / pipelined / "
             "host dispatch | timm train / infer img/s |", "|---|---|---|---|---|---|"]
    print(lines[0], flush=True)
    for name in models:
        for dtype in dtypes:
            fns = ours_functions(name, batch, size=size, dtype=dtype)
            infer, infer_args = fns["infer"]
            step, (params, stats, x, y) = fns["train"]
            timing = _step_timing(step, (params, stats), x, y, warmup, repeats)
            infer_s = _time(functools.partial(_run, infer, *infer_args), warmup, repeats)
            entry = dict(train=1e3 * batch / timing["blocked"], infer=batch / infer_s,
                         step_ms=timing)
            if name == models[0] and dtype == dtypes[0]:
                try:
                    entry["profile"] = _profile_summary(step, (params, stats, x, y))
                except Exception as e:  # a profiler that cannot trace here is not a failure
                    entry["profile"] = f"unavailable: {type(e).__name__}: {e}"
            entry["timm"] = _timm_peer(name, batch, size, dtype, warmup, repeats)
            out["models"][f"{name} {dtype}"] = entry
            t = entry["timm"]
            peer = t["skipped"] if "skipped" in t else f"{t['train']:.0f} / {t['infer']:.0f}"
            lines.append(f"| {name} | {dtype} | {entry['train']:.1f} | {entry['infer']:.1f} | "
                         f"{timing['blocked']:.1f} / {timing['pipelined']:.1f} / "
                         f"{timing['dispatch']:.2f} | {peer} |")
            print(lines[-1], flush=True)
    first = out["models"][f"{models[0]} {dtypes[0]}"]
    if isinstance(first.get("profile"), list):
        lines.append(f"\nlongest events of one {models[0]} {dtypes[0]} training step (ms):")
        lines += [f"  {ms:9.2f}  {n}" for ms, n in first["profile"]]
    else:
        lines.append(f"\nprofile: {first.get('profile')}")
    if training:
        with tempfile.TemporaryDirectory() as workdir:
            run = _short_training(train_model or models[-1], 8 if small else 128,
                                  32 if small else size, 3 if small else 30, workdir)
        out["training"] = run
        lines.append(f"\ntrain.loop on synthetic data: {run['model']} {run['steps']} steps of "
                     f"{run['batch']} at {run['size']} px in {run['seconds']:.1f} s "
                     f"({run['img_per_s']:.1f} img/s with compilation), accuracy "
                     f"{run['accuracy']}")
    lines.append("anchors, ResNet50 training img/s (NVIDIA DeepLearningExamples, PyTorch): "
                 + ", ".join(f"{k} {v}" for k, v in RESNET50_ANCHORS.items()))
    text = "\n".join(lines)
    print(text, flush=True)
    out["text"] = text
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=1, default=str))
    return out

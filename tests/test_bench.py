"""train/bench.py and scripts/bench.py: several rounds of one framework merge into medians;
each model times in its own worker process; the conv table's depthwise rows (XLA, shifted
multiply-adds with the native kernels off and on); the one FLOP counter (zoo.summary)."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import linen as nn

import viz
from tests.cli import ROOT, run_script
from train import bench
from zoo import summary


def test_rounds_merge_into_medians():
    runs = [{"version": "v", "models": {"a": {"infer": 1.0, "train": 4.0},
                                        "b": {"skipped": "b is not available"}}},
            {"version": "v", "models": {"a": {"infer": 3.0, "train": 5.0}}},
            {"version": "v", "models": {"a": {"infer": 2.0}}, "error": "worker exited with 9"}]
    merged = bench.merge_rounds(runs)
    assert merged["models"]["a"] == {"infer": 2.0, "train": 4.5}  # a round that lost train
    assert merged["models"]["b"] == {"skipped": "b is not available"}
    assert merged["rounds"] == runs and merged["version"] == "v"
    assert merged["error"] == "worker exited with 9"  # reported, results kept
    failed = bench.merge_rounds([{"error": "worker exited with 1 before any result"}])
    assert failed["error"].startswith("worker exited with 1") and "models" not in failed


def test_conv_table_times_the_depthwise_conv_with_and_without_native_kernels():
    """``--convs`` rows for a depthwise conv: XLA's grouped conv, the shifted multiply-adds
    traced with the native kernels off and (where they build) on; all the same numbers."""
    import numpy as np

    from zoo.backend import native

    impls = bench._conv_impls(3, 5, (1, 1), "SAME", depthwise=True)
    expected = {"xla", "matmul (shift, XLA)"} | (
        {"matmul (shift, native)"} if native.available() else set())
    assert set(impls) == expected
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 8, 5))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 5, 1))
    for label, f in impls.items():
        np.testing.assert_allclose(jax.jit(f)(x, w), impls["xla"](x, w), rtol=1e-5, atol=1e-5)
        grad = jax.grad(lambda x, w, f=f: jnp.sum(f(x, w) ** 2), (0, 1))
        if hasattr(f, "native_mode"):
            grad = bench._under_native(f.native_mode, grad)
            text = jax.jit(grad).trace(x, w).lower().as_text()
            assert ("zoo_depthwise_kernel_grad" in text) == (f.native_mode == "on"), label


def test_conv_table_runs_end_to_end(monkeypatch, tmp_path):
    """``--convs`` at two tiny shapes (a 3x3 conv and a depthwise one): one row per
    formulation, GFLOP/s figures, the Markdown file written."""
    monkeypatch.setattr(bench, "CONV_SHAPES", ((2, 8, 8, 4, 3, 1, "SAME", False),
                                               (2, 8, 8, 4, 3, 1, "SAME", True)))
    out = tmp_path / "convs.md"
    table = bench.bench_convs(warmup=0, repeats=1, markdown_path=str(out))
    rows = [r.split("|") for r in table.splitlines()[2:] if r.startswith("|")]
    assert out.read_text().strip() == table.strip()
    labels = {r[3].strip().split(" (")[0] for r in rows}
    assert {"xla", "matmul", "mixed", "winograd"} <= labels  # the 3x3 conv's formulations
    assert all(float(r[4]) >= 0 and float(r[5]) >= 0 for r in rows)  # GFLOP/s figures


def test_workers_of_one_round_merge():
    parts = [{"version": "v", "models": {"a": {"infer": 1.0}}},
             {"error": "worker exited with 9 before any result"},
             {"version": "v", "models": {"c": {"infer": 2.0}}, "error": "worker exited with 1"}]
    merged = bench.merge_workers(parts)
    assert merged["models"] == {"a": {"infer": 1.0}, "c": {"infer": 2.0}}
    assert merged["version"] == "v" and merged["error"].startswith("worker exited with 9")


def test_each_model_times_in_its_own_process(tmp_path, capsys, monkeypatch):
    """End to end, two small models: one worker process each, both in the table and the
    JSON (the workers are real; the spy only records what each was given)."""
    out, given, real = tmp_path / "b.json", [], bench.run_worker
    monkeypatch.setattr(bench, "run_worker", lambda fw, python, models, **kw: (
        given.append(list(models)), real(fw, python, models, **kw))[1])
    report = bench.compare(["squeezenet1_1", "alexnet"], ["ours"], batch=1, warmup=0,
                           repeats=1, modes=["infer"], json_path=str(out))
    results = json.loads(out.read_text())["results"]["ours"]
    assert results == report["results"]["ours"]
    assert set(results["models"]) == {"squeezenet1_1", "alexnet"}
    assert all(r["models"][m]["infer"] > 0 for r in results["rounds"]
               for m in ("squeezenet1_1", "alexnet"))
    assert "| squeezenet1_1 | infer |" in capsys.readouterr().out
    assert given == [["squeezenet1_1"], ["alexnet"]]


def test_script_writes_the_table_and_rejects_bad_flags(tmp_path):
    md, js = tmp_path / "b.md", tmp_path / "b.json"
    run_script("bench", "--models", "squeezenet1_1", "--frameworks", "ours", "--batch", "1",
               "--warmup", "0", "--repeats", "1", "--modes", "infer", "--json", js,
               "--markdown", md)
    assert md.read_text().startswith("| model | mode | ours img/s (GFLOP/s) |")
    assert json.loads(js.read_text())["results"]["ours"]["models"]["squeezenet1_1"]["infer"] > 0
    bad = run_script("bench", "--frameworks", "ours,nope", check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "--frameworks takes some of ours,keras-jax,keras-tf" in bad.stderr


def test_worker_module_needs_no_jax():
    """A keras-tf worker imports train.bench in an interpreter with TensorFlow only."""
    code = ("import sys, train.bench; "
            "print(sorted(m for m in ('jax', 'flax', 'zoo', 'viz') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        x = nn.Conv(4, (3, 3), feature_group_count=4, name="depthwise")(x)
        x = jax.checkpoint(lambda y: y @ jnp.ones((4, 5)))(x)  # a product inside a remat
        x = jax.lax.scan(lambda c, _: (c @ jnp.ones((5, 5)), None), x, None, length=3)[0]
        return nn.Dense(2, name="head")(x.mean(axis=(1, 2)))


def test_flops_of_a_tiny_model_by_hand():
    expected = (2 * 8 * 8 * 4 * 3 * 3 * 3  # conv: 8x8x4 outputs, 3x3x3 multiply-adds each
                + 2 * 8 * 8 * 4 * 3 * 3  # depthwise: 3x3 each
                + 2 * 8 * 8 * 5 * 4  # the product under jax.checkpoint
                + 3 * 2 * 8 * 8 * 5 * 5  # the scan's product, 3 times
                + 2 * 2 * 5)  # head
    assert summary.flops(Net(), (1, 8, 8, 3)) == expected == 30_612


def test_bench_and_drawings_count_the_same_flops():
    """One counter: the benchmark's GFLOP per image (BENCHMARKS.md) and the drawings'."""
    per_image = {"resnet50": 7.72, "mobilenet": 1.14, "mobilenetv2": 0.60, "xception": 16.71}
    assert {m: round(bench.model_flops(m) / 1e9, 2) for m in per_image} == per_image
    g = viz.trace("mobilenetv2")
    assert sum(n.flops for n in g.nodes.values()) == bench.model_flops("mobilenetv2")


def test_device_check_runs_small_on_a_cpu(capsys):
    """Without an accelerator the device check runs at its small sizes: both dtypes, img/s,
    where a step's time goes (blocked, pipelined, host dispatch; the longest profiler
    events), the timm peer or why it is missing, and the report names it no measurement."""
    from tests import tiny_model

    with tiny_model.registered():
        out = bench.device_check(models=(tiny_model.NAME,), training=False)
    assert out["small"] and (out["batch"], out["size"]) == (4, 64)
    assert set(out["models"]) == {f"{tiny_model.NAME} float32", f"{tiny_model.NAME} bfloat16"}
    for entry in out["models"].values():
        assert entry["train"] > 0 and entry["infer"] > 0
        assert all(entry["step_ms"][k] > 0 for k in ("blocked", "pipelined", "dispatch"))
        timm = entry["timm"]
        assert "skipped" in timm or (timm["train"] > 0 and timm["infer"] > 0)
    profile = out["models"][f"{tiny_model.NAME} float32"]["profile"]
    assert isinstance(profile, list) and profile and all(ms >= 0 for ms, _ in profile)
    printed = capsys.readouterr().out
    assert "small: not a measurement" in printed and "A100 AMP 2470" in printed


@pytest.mark.slow
def test_device_check_script_on_a_cpu(tmp_path):
    """``scripts.bench --device-check`` here: ResNet50 and MobileNetV2 at the small sizes in
    both dtypes, and a real short training through train.loop."""
    js = tmp_path / "device.json"
    run_script("bench", "--device-check", "--json", js)
    out = json.loads(js.read_text())
    assert out["small"] and len(out["models"]) == 4
    assert all(e["train"] > 0 and e["infer"] > 0 for e in out["models"].values())
    assert out["training"]["model"] == "mobilenetv2" and out["training"]["img_per_s"] > 0
    assert out["training"]["accuracy"] is not None

"""scripts/bench.py: several rounds of one framework merge into medians; the conv table's
depthwise rows (XLA, shifted multiply-adds with the native kernels off and on)."""

from __future__ import annotations

from scripts import bench


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
    import jax
    import jax.numpy as jnp
    import numpy as np

    from scripts import bench
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
    monkeypatch.setattr(bench, "run_worker", lambda fw, python, args, models: (
        given.append(list(models)), real(fw, python, args, models))[1])
    bench.main(["--models", "squeezenet1_1,alexnet", "--frameworks", "ours", "--batch", "1",
                "--warmup", "0", "--repeats", "1", "--modes", "infer", "--json", str(out)])
    import json

    results = json.loads(out.read_text())["results"]["ours"]
    assert set(results["models"]) == {"squeezenet1_1", "alexnet"}
    assert all(r["models"][m]["infer"] > 0 for r in results["rounds"]
               for m in ("squeezenet1_1", "alexnet"))
    assert "| squeezenet1_1 | infer |" in capsys.readouterr().out
    assert given == [["squeezenet1_1"], ["alexnet"]]

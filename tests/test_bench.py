"""scripts/bench.py: several rounds of one framework merge into medians."""

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

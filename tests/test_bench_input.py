"""The input benchmark (loader img/s, loop vs bare step) and the PyTorch peer run end to end
on small sizes; what they report is consistent with what they timed."""

import json

import pytest

from tests.cli import run_script
from train import bench, bench_input


def test_loader_rates_for_threads_and_processes():
    rows = bench_input.loader_rates("synthetic", images=48, image_size=32, batch=8,
                                    threads=(1, 2), processes=(1,))
    got = {(r["mode"], r["workers"], r["epoch"]) for r in rows}
    assert got == {("threads", 1, "first (decode)"), ("threads", 1, "cached"),
                   ("threads", 2, "first (decode)"), ("threads", 2, "cached"),
                   ("processes", 1, "first (decode)"), ("processes", 1, "second (decode)")}
    assert all(r["images_per_s"] > 0 for r in rows)
    assert "| threads | 2 | cached |" in bench_input.report(rows, [])


@pytest.mark.slow  # two short trainings of resnet18 (compiles)
def test_end_to_end_against_the_bare_step(tmp_path):
    r = bench_input.end_to_end("resnet18", 32, batch=8, steps=6, repeats=2,
                               source_spec="synthetic")
    assert r["bare"] > 0 and r["loop"] > 0 and r["ratio"] == r["loop"] / r["bare"]
    assert "| resnet18 | 32 | 8 | 2 threads |" in bench_input.report([], [r])


@pytest.mark.slow  # torch and the zoo in worker processes: about a minute
def test_the_pytorch_peer_in_the_same_table(tmp_path):
    out = tmp_path / "b.json"
    report = bench.compare(["squeezenet1_1"], ["ours", "torch"], batch=1, warmup=0,
                           repeats=1, modes=["infer"], json_path=str(out))
    torch = json.loads(out.read_text())["results"]["torch"]["models"]["squeezenet1_1"]
    assert torch["infer"] > 0 and torch["infer_layout"] in ("NCHW", "channels_last")
    assert "torch" in report["meta"]["versions"]["torch"]
    row = next(r for r in bench.table(report["results"], report["flops"], 1).splitlines()
               if r.startswith("| squeezenet1_1 | infer |"))
    assert row.count("x |") == 1  # ours / torch


def test_script_input_mode_flag_is_documented():
    out = run_script("bench", "--help", check=False)
    assert "--[no]input" in out.stdout + out.stderr

"""train/profile.py and scripts/profile.py: per-op times of one real jitted step, from a
real profiler trace."""

from __future__ import annotations

from tests.cli import run_script
from train import profile


def test_summarise_groups_thunks_by_kind_and_op():
    names = {"ynn_fusion.3": "jit(step)/block1/conv2/dot_general",
             "ynn_fusion.7": "jit(step)/block12/conv2/dot_general",
             "add_fusion": "jit(step)/transpose(jvp(M))/block1/add"}
    events = [dict(ph="X", name="ynn_fusion.3", dur=3000),
              dict(ph="X", name="ynn_fusion.7", dur=2000),
              dict(ph="X", name="add_fusion", dur=4000),
              dict(ph="X", name="ThunkExecutor", dur=9e9),  # the executor's own span
              dict(ph="i", name="add_fusion", dur=1e9)]  # not a complete event
    rows = profile.summarise(events, names, top=10)
    assert rows == [(5.0, 2, "ynn_fusion", "jit(step)/block#/conv#/dot_general"),
                    (4.0, 1, "add_fusion", "jit(step)/transpose(jvp(M))/block#/add")]
    assert profile.op_names('  %ynn_fusion.3 = f32[2]{0} fusion(%a), metadata={op_name="x/y"}') \
        == {"ynn_fusion.3": "x/y"}


def test_profile_of_a_training_step():
    out = run_script("profile", "--model", "squeezenet1_1", "--batch", "1", "--top", "500")
    out = out.stdout.splitlines()
    assert out[0].startswith("squeezenet1_1 train, batch 1: step ")
    rows = [line.split() for line in out[2:]]
    assert len(rows) > 10
    times = [float(r[0]) for r in rows]
    assert times == sorted(times, reverse=True) and times[0] > 0
    ops = " ".join(r[3] for r in rows)
    assert "transpose(jvp(SqueezeNet))" in ops  # the backward pass is in the trace
    assert "fire#/expand#x#" in ops  # layer names of the model, numbers folded


def test_unknown_model_is_one_clear_line():
    bad = run_script("profile", "--model", "squeezenet1", check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "flag --model=squeezenet1: unknown model 'squeezenet1'; did you mean squeezenet1_" \
        in bad.stderr

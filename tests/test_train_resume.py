"""Exact resume: a run SIGKILLed mid-epoch and started again with the same command ends with
parameters bit-identical to an uninterrupted run (CPU)."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from train import checkpoint as C
from train import freeze as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Dropout (MLP head), augmentation and batch norm all depend on the restored RNG, data
# position and statistics; checkpoints every 3 steps, 9 steps per epoch, 2 epochs.
RUNNER = """
import os, signal, sys
from tests.tiny_model import register, tiny_config
from train import loop, pipeline
register()
workdir, kill_after = sys.argv[1], int(sys.argv[2])
if kill_after:
    original, served = pipeline.Loader.epoch, [0]
    def epoch(self, *args, **kwargs):
        for batch in original(self, *args, **kwargs):
            if self.train:
                served[0] += 1
                if served[0] > kill_after:  # kill_after steps are done: die hard
                    os.kill(os.getpid(), signal.SIGKILL)
            yield batch
    pipeline.Loader.epoch = epoch
config = tiny_config(**{"head.kind": "mlp", "head.hidden": 8, "head.dropout": 0.5,
                        "data.augment.rotate90": True, "data.augment.brightness": 0.2})
loop.train_and_evaluate(config, workdir)
"""


def run(workdir, kill_after=0):
    # The three runs share a persistent compilation cache: only the first one compiles.
    cache = {"JAX_COMPILATION_CACHE_DIR": str(workdir.parent / "jax_cache"),
             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    return subprocess.run([sys.executable, "-c", RUNNER, str(workdir), str(kill_after)],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT, **cache},
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # three training subprocesses: ~25 s of CPU
def test_sigkill_then_rerun_is_bit_identical(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    first = run(killed, kill_after=8)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    steps = C.Checkpoints.steps(str(killed / "checkpoints" / "last"))
    assert steps and steps[-1] < 18, steps  # it really stopped mid-run
    resumed = run(killed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step" in open(killed / "train.log").read()
    done = run(straight)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = C.restore_variables(str(straight / "checkpoints" / "last")), C.restore_variables(
        str(killed / "checkpoints" / "last"))
    for col in ("params", "batch_stats"):
        fa, fb = F.flat_paths(a[col]), F.flat_paths(b[col])
        assert fa.keys() == fb.keys()
        for path in fa:
            np.testing.assert_array_equal(fa[path], fb[path], err_msg=f"{col} {path}")
    assert open(straight / "eval_test.json").read() == open(killed / "eval_test.json").read()

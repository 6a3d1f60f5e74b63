"""Run a script as its users do: ``python -m scripts.<name> ...`` in a fresh process (the
scripts define absl flags at import, so two of them cannot share a test process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m scripts.<name> *args`` from the repository root; stdout and stderr
    captured as text. ``check``: fail with the script's stderr when it exits non-zero."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH")])))
    cache = jax.config.jax_compilation_cache_dir  # the test session's (conftest.py)
    if cache:
        env.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
    proc = subprocess.run([sys.executable, "-m", f"scripts.{name}", *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(f"scripts.{name} exited with {proc.returncode}:\n"
                             f"{proc.stderr[-4000:]}")
    return proc

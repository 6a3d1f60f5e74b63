"""The ``transfer-zoo`` command and the installed distribution.

Quick: the dispatcher (commands, each script's own ``--help``, recipes by name, one-line
errors) and the check that names a local ``train.py`` shadowing the package. Slow: the
wheel is built from a copy of the checkout, installed into a fresh virtual environment
outside it (its dependencies visible through a ``.pth`` line to this environment's
site-packages, so nothing is downloaded), and its ``transfer-zoo`` lists the models and
trains one epoch from a folder that holds a ``train.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHADOW = "raise SystemExit('the user train.py was imported')\n"
TINY = ["--config.epochs=1", "--config.data.synthetic_size=64", "--config.data.image_size=32",
        "--config.batch_size=16", "--config.progress=false"]


def _env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cache = jax.config.jax_compilation_cache_dir  # the test session's (conftest.py)
    if cache:
        env.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
    return env | extra


def _run(cmd, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env or _env(), text=True,
                          capture_output=True, timeout=timeout)


def _dispatch(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    """``python -m scripts ARGS`` (what ``transfer-zoo ARGS`` runs) from the checkout."""
    return _run([sys.executable, "-m", "scripts", *args], cwd,
                _env(PYTHONPATH=str(ROOT)))


def test_commands_and_recipes_are_listed():
    proc = _dispatch("--help")
    assert proc.returncode == 0, proc.stderr
    for name in ("models", "draw", "train", "evaluate", "predict", "detect", "convert",
                 "anchors", "bench", "profile", "sweep", "ensemble"):
        assert f"\n  {name} " in proc.stdout
    for recipe in ("malaria", "malaria_scratch", "synthetic", "imagefolder"):
        assert f"\n  {recipe} " in proc.stdout
    assert "\n  main " not in proc.stdout and "\n  cli " not in proc.stdout


def test_each_command_shows_its_own_flags():
    proc = _dispatch("train", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--workdir" in proc.stdout and "--config" in proc.stdout
    assert "malaria_scratch" in proc.stdout  # the recipes the config flag knows by name
    assert "--pattern" not in proc.stdout  # models' flag: not defined in train's process
    proc = _dispatch("draw", "--help")
    assert "--depth" in proc.stdout and "--workdir" not in proc.stdout


def test_unknown_command_and_recipe_are_one_line():
    proc = _dispatch("modles")
    assert proc.returncode == 2 and "did you mean models" in proc.stderr
    proc = _dispatch("train", "--config", "malria", "--workdir", "unused")
    assert proc.returncode != 0
    assert "neither a file nor a recipe name" in proc.stderr and "malaria" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_recipe_by_name_trains(tmp_path):
    proc = _dispatch("train", "--config", "synthetic", "--workdir", tmp_path / "w", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "w" / "eval_test.json").exists()
    cfg = (tmp_path / "w" / "config.json").read_text()
    assert '"synthetic_size": 64' in cfg


def test_a_local_train_py_is_named_not_imported(tmp_path):
    (tmp_path / "train.py").write_text(SHADOW)
    proc = _run([sys.executable, "-m", "scripts.models"], tmp_path,
                _env(PYTHONPATH=str(ROOT)))
    assert proc.returncode != 0 and "user train.py was imported" not in proc.stderr
    assert f"'train' resolves to {tmp_path / 'train.py'}" in proc.stderr
    assert "shadows it" in proc.stderr and "Traceback" not in proc.stderr


def test_console_command_ignores_the_current_folder(tmp_path):
    exe = Path(sys.executable).parent / "transfer-zoo"
    if not exe.exists():
        pytest.skip(f"{exe} is not installed (pip install -e . makes it)")
    (tmp_path / "train.py").write_text(SHADOW)
    proc = _run([exe, "models", "--pattern", "^alexnet$"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "| alexnet |" in proc.stdout


# ------------------------------------------------------------------- the wheel


def _copy_checkout(dest: Path) -> Path:
    """The project's sources without build outputs, environments or workdirs (the build
    writes build/ and *.egg-info next to the sources: not in the shared checkout)."""
    ignore = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info",
                                    "__pycache__", ".pytest_cache", ".ruff_cache", "workdirs",
                                    "out", "tests", "docs", "notebooks")
    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    src = _copy_checkout(tmp_path / "src")
    proc = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                 "--no-index", "-w", tmp_path / "dist", src], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("transfer_zoo-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = z.read(info).decode()
        entry = z.read(info.replace("METADATA", "entry_points.txt")).decode()
    for path in ("scripts/main.py", "train/configs/malaria.py", "train/public.py",
                 "zoo/backend/native/__init__.py"):
        assert path in names, path
    assert any(n.startswith("zoo/backend/native/") and n.endswith(".cc") for n in names)
    assert not any(n.startswith("tests/") for n in names)
    assert "transfer-zoo = scripts.main:run" in entry
    for req in ("Requires-Dist: numpy>=2", "Requires-Dist: importlib_resources",
                "License-Expression: Apache-2.0"):
        assert req in meta, req
    assert "Requires-Dist: chex" not in meta.split("Provides-Extra")[0]
    assert any(n.endswith("licenses/LICENSE") for n in names)

    venv = tmp_path / "venv"
    proc = _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path)
    assert proc.returncode == 0, proc.stderr
    py, exe = venv / "bin" / "python", venv / "bin" / "transfer-zoo"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     tmp_path).stdout.strip())
    # the dependencies (jax, flax, ...) from this environment, after the venv's own
    # site-packages; its editable hook of the checkout is not loaded (a .pth line adds a
    # path, it does not process the .pth files in it)
    (site / "zz_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    proc = _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps",
                 "--no-index", wheel], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert exe.exists()

    user = tmp_path / "user"
    user.mkdir()
    (user / "train.py").write_text(SHADOW)
    where = _run([py, "-c", "import scripts, train, viz, zoo; "
                  "print('\\n'.join(m.__file__ for m in (scripts, train, viz, zoo)))"],
                 tmp_path / "dist")
    assert where.returncode == 0, where.stderr
    for f in where.stdout.split():
        assert Path(f).is_relative_to(site), f  # the installed copy, not the checkout

    proc = _run([exe, "models", "--pattern", "^resnet18$"], user)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| resnet18 |" in proc.stdout and "1 models" in proc.stdout
    proc = _run([exe, "train", "--config", "synthetic", "--workdir", user / "run", *TINY], user)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (user / "run" / "eval_test.json").exists()
    proc = _run([exe, "evaluate", "--workdir", user / "run"], user)
    assert proc.returncode == 0 and "accuracy" in proc.stdout, proc.stderr[-3000:]
    # python -m from that folder would import the user's train.py: named in one line
    proc = _run([py, "-m", "scripts.models"], user)
    assert proc.returncode != 0 and "shadows it" in proc.stderr

"""notebooks/quickstart.ipynb runs from top to bottom (nbclient, a real Jupyter kernel),
offline, on a tiny generated configuration set by overriding its parameters cell, as
papermill would: install skipped, synthetic cells, random weights, one epoch per stage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

import jax  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


def _with_parameters(nb, **params):
    """Insert a cell after the one tagged ``parameters`` that sets ``params`` (papermill's
    convention), so that the notebook's own defaults stay what a Colab user runs."""
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", ()))
    source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, cell)
    return nb


def test_notebook_defaults_are_the_real_run():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", ()))
    for line in ('DATA = "malaria"', 'INIT = "imagenet"', "INSTALL = True", "UPLOAD = True"):
        assert line in params
    assert "colab.research.google.com/github/" in nb.cells[0].source


@pytest.mark.slow
def test_quickstart_notebook_runs_offline(tmp_path, monkeypatch):
    nb = _with_parameters(nbformat.read(NOTEBOOK, as_version=4), INSTALL=False,
                          DATA="synthetic", SYNTHETIC_SIZE=96, INIT="", IMAGE_SIZE=32,
                          BATCH_SIZE=16, FROZEN_EPOCHS=1, FINETUNE_EPOCHS=1,
                          WORKDIR=str(tmp_path / "run"), UPLOAD=True)
    cache = jax.config.jax_compilation_cache_dir  # the test session's (conftest.py)
    if cache:
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", cache)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH")])))
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", ())]
    assert not [o for o in outputs if o.output_type == "error"]
    svgs = [o for o in outputs if "image/svg+xml" in o.get("data", {})]
    assert len(svgs) == 2  # the model drawn inline, before and after training
    assert "trainable" in svgs[0]["data"]["image/svg+xml"] or "frozen" in svgs[0]["data"][
        "image/svg+xml"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 4  # curves, confusion, ROC, the predicted image
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "not in Colab" in text and "cell.png: " in text
    assert "accuracy" in text
    run = tmp_path / "run"
    assert (run / "stage1").is_dir() and (run / "stage2").is_dir()
    splits = json.loads((run / "splits.json").read_text())
    assert splits["info"]["group_regex"] == r"^(.+?)_IMG"  # the recipe's patient split

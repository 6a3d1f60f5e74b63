"""notebooks/quickstart.ipynb runs from top to bottom (nbclient, a real Jupyter kernel),
offline, on a tiny generated configuration set by overriding its parameters cell, as
papermill would: install skipped, synthetic cells, random weights, one epoch per stage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
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
    run = tmp_path / "run"

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", ())]
    assert not [o for o in outputs if o.output_type == "error"]
    svgs = [o for o in outputs if "image/svg+xml" in o.get("data", {})]
    assert len(svgs) == 2  # the model drawn inline, before and after training
    assert "trainable" in svgs[0]["data"]["image/svg+xml"] or "frozen" in svgs[0]["data"][
        "image/svg+xml"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 9  # curves, 5-6 evaluation figures, the predicted image, Grad-CAM
    # The figures are the objects the code returned, shown inline, not PNG files read back:
    # each is the figure task.evaluate also saved, pixel for pixel.
    assert "Image(filename=" not in "".join(c.source for c in nb.cells)
    cell = next(c for c in nb.cells if "figures" in c.metadata.get("tags", ()))
    shown = [_png(o["data"]["image/png"]) for o in cell.outputs
             if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    saved = [run / f for f in ("curves.png", "confusion_test.png", "roc_test.png",
                               "pr_test.png", "reliability_test.png", "errors_test.png",
                               "gradcam_test.png") if (run / f).exists()]
    assert len(saved) >= 6 and len(shown) == len(saved), (len(shown), saved)
    for image, path in zip(shown, saved, strict=True):
        assert np.array_equal(image, _png(path.read_bytes())), path.name
    last = [o for o in nb.cells[-1].outputs if "image/png" in o.get("data", {})]
    assert last and last[-1].output_type == "execute_result"  # the Grad-CAM figure
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "not in Colab" in text and "cell.png: " in text
    assert "accuracy" in text
    assert (run / "stage1").is_dir() and (run / "stage2").is_dir()
    splits = json.loads((run / "splits.json").read_text())
    assert splits["info"]["group_regex"] == r"^(.+?)_IMG"  # the recipe's patient split
    # TensorBoard's HPARAMS tab: the whole run (its stages) and each stage as a run
    from tests.tensorboard_events import hparams

    _, start, _, scalars = hparams(str(run))
    assert start.hparams["stages"].string_value.startswith("frozen epochs=1")
    assert "test/accuracy" in scalars and "validation/best_accuracy" in scalars
    _, start, _, _ = hparams(str(run / "stage2"))
    assert start.hparams["policy"].string_value == "finetune:4"


def _png(data):
    """Pixels of a PNG (base64 text as a notebook stores it, or bytes)."""
    import base64
    import io

    from PIL import Image

    raw = base64.b64decode(data) if isinstance(data, str) else data
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGBA"))

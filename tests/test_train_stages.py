"""Two-stage recipe in one command: frozen head on cached features, then fine-tuning."""

import json
import os

import pytest

from tests.tiny_model import registered, tiny_config
from train import ensemble, loop, stages
from train import evaluate as E

STAGES = "frozen epochs=1 augment=off learning_rate=1e-2; finetune:1 epochs=1 learning_rate=1e-3"


@pytest.fixture(scope="module")
def tiny():
    with registered() as name:
        yield name


def test_two_stages_in_one_run(tiny, tmp_path):
    workdir = str(tmp_path)
    report = loop.train_and_evaluate(tiny_config(stages=STAGES, tta="dihedral"), workdir)
    log = open(os.path.join(workdir, "train.log")).read()
    assert "===== stage 1" in log and "===== stage 2" in log
    assert "cached backbone features" in log  # stage 1: frozen, no augmentation
    # test-time augmentation needs images: not in stage 1's report, in the last stage's
    assert "test-time augmentation 'dihedral' is off in this run's report" in log
    assert report["tta"] == "dihedral"
    first = json.load(open(os.path.join(workdir, "stage1", "eval_test.json")))
    assert "tta" not in first and "augmentation" not in first["data"]
    assert "policy finetune:1, init" in log and "stage1" in log  # stage 2 starts from stage 1
    rows = [json.loads(x) for x in open(os.path.join(workdir, "history.jsonl"))]
    val = [(r["stage"], r["epoch"]) for r in rows if r["split"] == "validation"]
    assert val == [(1, 1), (2, 2)]
    steps = [r["step"] for r in rows if r["split"] == "train"]
    assert steps == sorted(steps) and steps[1] > steps[0]
    for name in ("curves.png", "history.csv", "stages.json", "eval_test.json", "config.json"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    done = json.load(open(os.path.join(workdir, "stages.json")))
    assert [d["policy"] for d in done] == ["frozen", "finetune:1"]
    assert done[1]["test"]["accuracy"] == report["accuracy"]
    top = json.load(open(os.path.join(workdir, "eval_test.json")))
    assert os.path.isfile(os.path.join(workdir, top["predictions"]))  # the CSV it names
    assert os.path.isfile(os.path.join(workdir, "confusion_test.png"))
    # An ensemble reads the top workdir like any run (it failed: the CSV was in stage2/).
    assert ensemble.read_member(workdir, "test")["labels"].size == report["num_examples"]
    again = E.evaluate(workdir)  # the top workdir evaluates as the last stage
    assert again["confusion_matrix"] == report["confusion_matrix"]


def test_stage_parsing_and_errors():
    base = tiny_config()
    cs = stages.stage_configs(tiny_config(stages=STAGES + " data.augment.rotation=5"), "/w")
    assert [c.policy for c in cs] == ["frozen", "finetune:1"]
    assert not cs[0].data.augment.hflip and cs[0].data.augment.crop_scale == 1.0
    assert cs[1].data.augment.hflip == base.data.augment.hflip
    assert cs[1].data.augment.rotation == 5.0 and cs[1].learning_rate == 1e-3
    assert cs[1].init == "/w/stage1" and cs[1].init_head and cs[0].init == base.init
    assert cs[0].features_dir == "/w/features" and not cs[0].stages
    with pytest.raises(ValueError, match="unknown key"):
        stages.stage_configs(tiny_config(stages="frozen epoch=1"), "/w")
    with pytest.raises(ValueError, match="POLICY key=value"):
        stages.parse("frozen 3")
    with pytest.raises(ValueError, match="only the first"):
        stages.stage_configs(tiny_config(stages="frozen; scratch"), "/w")


def test_stages_and_loop_do_not_import_each_other():
    """train.stages makes configs and merges outputs; only the loop runs stages."""
    import subprocess
    import sys

    code = "import sys, train.stages; print('train.loop' in sys.modules)"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": root}, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]

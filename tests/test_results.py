"""What a researcher inspects after a run, on a really trained tiny net: the per-image
predictions CSV, the decision metrics in the JSON, the plots as matplotlib objects."""

import csv
import json
import os

import numpy as np
import pytest

from tests import tensorboard_events
from tests.tiny_model import registered, tiny_config
from train import evaluate as E
from train import loop
from train import metrics as M


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    with registered():
        workdir = str(tmp_path_factory.mktemp("results"))
        report = loop.train_and_evaluate(tiny_config(), workdir)
        yield workdir, report


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predictions_csv_one_row_per_test_image(trained):
    workdir, report = trained
    path = os.path.join(workdir, "predictions_test.csv")
    assert report["predictions"] == path
    # the JSON names it relative to the run directory: a copied run writes the same JSON
    saved = json.load(open(os.path.join(workdir, "eval_test.json")))
    assert saved["predictions"] == "predictions_test.csv"
    rows = _rows(path)
    splits = json.load(open(os.path.join(workdir, "splits.json")))
    assert [r["file"] for r in rows] == splits["files"]["test"]
    for r in rows:  # synthetic keys S007_IMG_00123.png: group S007 by data.group_regex
        assert r["group"] == r["file"].split("_")[0]
        p = np.array([float(r["p_parasitized"]), float(r["p_uninfected"])])
        assert p.sum() == pytest.approx(1, abs=1e-5)
        assert r["predicted"] == ("parasitized", "uninfected")[int(p.argmax())]
        assert r["correct"] == str(int(r["predicted"] == r["true"]))
    # The CSV agrees with the JSON it sits beside.
    saved = json.load(open(os.path.join(workdir, "eval_test.json")))
    assert np.mean([r["correct"] == "1" for r in rows]) == pytest.approx(saved["accuracy"])
    cm = saved["confusion_matrix"]
    assert sum(r["true"] == r["predicted"] == "parasitized" for r in rows) == cm[0][0]


def test_json_has_decision_metrics_that_match_the_csv(trained):
    workdir, _ = trained
    saved = json.load(open(os.path.join(workdir, "eval_test.json")))
    rows = _rows(os.path.join(workdir, "predictions_test.csv"))
    y = np.array([r["true"] == "parasitized" for r in rows])
    s = np.array([float(r["p_parasitized"]) for r in rows])
    t = saved["at_target_sensitivity"]
    assert t["target"] == 0.95 and t["sensitivity"] >= 0.95
    called = s >= t["threshold"] - 1e-6  # the CSV holds 6 decimals
    assert called[y].mean() >= 0.95
    assert t["specificity"] == pytest.approx((~called[~y]).mean())
    op = saved["operating_point"]
    assert op["sensitivity"] == saved["sensitivity"] and op["threshold"] == 0.5
    assert saved["pr_auc"] == pytest.approx(M.pr_auc(s, y), abs=1e-4)
    assert 0 <= saved["balanced_accuracy"] <= 1
    for key in ("accuracy", "sensitivity", "specificity"):
        lo, hi = saved["intervals"][key]
        assert lo <= saved[key] <= hi, key
    groups = {r["group"] for r in rows}
    assert set(saved["per_group"]) == groups and saved["groups"]["count"] == len(groups)
    for g, d in saved["per_group"].items():
        mine = [r["correct"] == "1" for r in rows if r["group"] == g]
        assert d["n"] == len(mine) and d["accuracy"] == pytest.approx(np.mean(mine))


def test_evaluate_again_writes_the_same_predictions_and_keeps_other_ones(trained):
    workdir, _ = trained
    with registered():
        report = E.evaluate(workdir, split="validation")
    path = os.path.join(workdir, "predictions_validation.csv")
    assert report["predictions"] == path and os.path.exists(path)
    grid = os.path.join(workdir, "gradcam_validation.png")  # tiny net: no taps, its stage2
    assert report["gradcam"] == grid and os.path.getsize(grid) > 1000
    assert ("validation/gradcam", "image") in _events(workdir)
    first = open(path).read()
    with registered():
        E.evaluate(workdir, split="validation")
    assert open(path).read() == first and not os.path.exists(
        os.path.join(workdir, "predictions_validation.1.csv"))
    with open(path, "a") as f:  # someone's edited copy is kept, not overwritten
        f.write("edited\n")
    with registered():
        E.evaluate(workdir, split="validation")
    assert open(path).read() == first
    assert open(os.path.join(workdir, "predictions_validation.1.csv")).read().endswith("edited\n")


def test_run_draws_every_plot_and_logs_the_learning_rate(trained):
    workdir, _ = trained
    for kind in ("curves.png", "confusion_test.png", "roc_test.png", "pr_test.png",
                 "reliability_test.png"):
        assert os.path.getsize(os.path.join(workdir, kind)) > 1000, kind
    rows = [json.loads(line) for line in open(os.path.join(workdir, "history.jsonl"))]
    steps = [r for r in rows if r["split"] == "train_step"]
    total = max(r["step"] for r in rows if r["split"] == "train")
    config = tiny_config()
    from train import freeze as F

    lr = F.schedule(config, total)
    assert steps and all(r["learning_rate"] == pytest.approx(float(lr(r["step"] - 1)))
                         for r in steps)
    assert len({r["learning_rate"] for r in steps}) > 1  # warm-up and decay are visible
    from train import plots

    fig = plots.plot_history(rows)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "accuracy", "validation", "learning rate (head)"]
    labels = fig.axes[2].get_legend_handles_labels()[1]
    assert labels == ["sensitivity", "specificity", "roc_auc"]


def test_evaluation_figures_are_objects_with_the_operating_points(trained):
    workdir, _ = trained
    saved = json.load(open(os.path.join(workdir, "eval_test.json")))
    rows = _rows(os.path.join(workdir, "predictions_test.csv"))
    names = saved["class_names"]
    probs = np.array([[float(r[f"p_{n}"]) for n in names] for r in rows])
    labels = np.array([names.index(r["true"]) for r in rows])
    from train import data as D

    source = D.synthetic_source(96, seed=tiny_config().seed)
    splits = json.load(open(os.path.join(workdir, "splits.json")))
    figs = E.write_plots(saved, probs, labels, str(workdir), "again", source=source,
                         indices=np.asarray(splits["test"]))
    from matplotlib.figure import Figure

    assert all(isinstance(f, Figure) for f in figs.values())
    # Confusion: row-normalised fractions with the counts.
    cm = np.array(saved["confusion_matrix"])
    texts = [t.get_text() for t in figs["confusion"].axes[0].texts]
    assert texts[0] == f"{cm[0, 0] / cm[0].sum():.2f}\n({cm[0, 0]})"
    # ROC: the model's operating point sits at (1 - specificity, sensitivity).
    lines = figs["roc"].axes[0].get_lines()
    point = [ln for ln in lines if ln.get_label() == "model's decision"][0]
    op = saved["operating_point"]
    assert point.get_xdata()[0] == pytest.approx(1 - op["specificity"])
    assert point.get_ydata()[0] == pytest.approx(op["sensitivity"])
    assert any(ln.get_label().startswith("sensitivity >= 0.95") for ln in lines)
    assert "AP" in figs["pr"].axes[0].get_legend_handles_labels()[1][0]
    assert "ECE" in figs["reliability"].axes[0].get_title()
    # Errors: the most confident mistakes, most confident first, each titled true/pred.
    wrong = [r for r in rows if r["correct"] == "0"]
    if not wrong:
        assert "errors" not in figs
        return
    wrong.sort(key=lambda r: -max(float(r[f"p_{n}"]) for n in names))
    titled = [ax.get_title() for ax in figs["errors"].axes if ax.get_title()]
    assert len(titled) == min(len(wrong), E.ERRORS_SHOWN)
    first = titled[0].split("\n")
    assert first[0] == wrong[0]["file"] and first[1] == f"true {wrong[0]['true']}"
    assert os.path.getsize(os.path.join(workdir, "errors_again.png")) > 1000


def test_plots_leave_pyplot_and_the_backend_alone(tmp_path):
    import subprocess
    import sys

    # rcParams read raw: get_backend() itself would import pyplot to resolve 'auto'.
    code = ("import sys, numpy as np, matplotlib as m; get = lambda: dict.__getitem__("
            "m.rcParams, 'backend'); b = get(); from train import plots; "
            "f = plots.plot_confusion(np.array([[3, 1], [0, 4]]), ['a', 'b'], sys.argv[1]); "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot'; "
            "assert get() == b, (b, get()); print(type(f).__name__)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c.png")], cwd=root,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "Figure" and (tmp_path / "c.png").stat().st_size > 1000


def _script(name, *args):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys; from tests.tiny_model import register; register(); "
            f"from scripts import {name}; sys.argv = sys.argv[1:]; {name}.run()")
    return subprocess.run([sys.executable, "-c", code, name, *args], cwd=root,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": root})


def test_evaluate_and_predict_commands_are_quiet(trained):
    workdir, _ = trained
    proc = _script("evaluate", "--workdir", workdir, "--split", "validation")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith("synthetic (validation split): accuracy")
    assert "at sensitivity" in lines[0]
    assert lines[1] == f"results: {os.path.join(workdir, 'eval_validation.json')}"
    assert lines[2] == f"per image: {os.path.join(workdir, 'predictions_validation.csv')}"
    assert proc.stderr.strip() == "", proc.stderr[:2000]  # no absl/orbax/jax INFO lines
    loud = _script("evaluate", "--workdir", workdir, "--split", "validation", "--verbose")
    assert loud.returncode == 0 and "orbax" in loud.stderr  # --verbose shows them
    image = os.path.join(workdir, "errors_test.png")  # any image file will do
    proc = _script("predict", "--workdir", workdir, image)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"{image}\t") and len(proc.stdout.splitlines()) == 1
    assert proc.stderr.strip() == "", proc.stderr[:2000]
    out = os.path.join(workdir, "my_predictions.csv")
    proc = _script("predict", "--workdir", workdir, "--out", out, image, "/no/such.png")
    assert proc.returncode == 2 and "/no/such.png" in proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("1 images: parasitized ")
    assert lines[0].endswith("; 1 unreadable") and lines[1] == f"per image: {out}"
    rows = _rows(out)
    assert [r["file"] for r in rows] == [image, "/no/such.png"]
    assert rows[0]["predicted"] in ("parasitized", "uninfected") and rows[1]["error"]
    assert float(rows[0]["p_parasitized"]) + float(rows[0]["p_uninfected"]) == pytest.approx(1)


def test_evaluation_restores_only_the_model_variables(trained):
    workdir, _ = trained
    from train import checkpoint as C

    best = os.path.join(workdir, "checkpoints", "best")
    step, full = C.restore_newest(best)
    again, mine = E.restore_model_variables(best)
    assert again == step and set(mine) == {"params", "batch_stats"}
    import jax

    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), full, mine)
    assert all(jax.tree.leaves(same)) and jax.tree.structure(full) == jax.tree.structure(mine)


@pytest.fixture(scope="module")
def dots(tmp_path_factory):
    """A tiny net trained until it finds the stained dots (test accuracy ~0.96, ~20 s)."""
    with registered():
        workdir = str(tmp_path_factory.mktemp("dots"))
        config = tiny_config(**{"data.image_size": 32, "data.synthetic_size": 800,
                                "epochs": 12, "batch_size": 32, "warmup_steps": 10,
                                "learning_rate": 1e-2, "checkpoint_every_steps": 1000,
                                "log_every_steps": 50})
        report = loop.train_and_evaluate(config, workdir)
        assert report["accuracy"] >= 0.9, report["accuracy"]
        yield workdir


def test_gradcam_maximum_falls_on_the_stained_dot(dots):
    from train import data as D
    from train import explain
    from train.pipeline import resize

    n = 20  # new cells (seed 99), each drawn with and without its dots: the difference
    sick = [D.synthetic_cell(True, 99, i, 64) for i in range(n)]  # locates the dots
    well = [D.synthetic_cell(False, 99, i, 64) for i in range(n)]
    with registered():
        shown, cams, probs = explain.explain_images(dots, sick, tap="stage2",
                                                    classes=np.zeros(n, int))
    assert cams.shape == (n, 32, 32) and cams.min() >= 0
    assert cams.max(axis=(1, 2)) == pytest.approx(np.ones(n))
    on_dot, dot_area = [], []
    for a, b, cam in zip(sick, well, cams, strict=True):
        diff = np.abs(a.astype(float) - b.astype(float)).mean(-1).clip(0, 255)
        diff = resize(np.repeat(diff.astype(np.uint8)[..., None], 3, -1), 32)[..., 0]
        dot = diff >= 0.4 * diff.max()
        y, x = np.unravel_index(cam.argmax(), cam.shape)
        on_dot.append(dot[y, x])
        dot_area.append(dot.mean())
    # Chance (the maximum anywhere) would land on a dot about mean(dot_area) of the time.
    assert np.mean(dot_area) < 0.1
    assert np.mean(on_dot) >= 0.6, (np.mean(on_dot), np.mean(dot_area))


def test_explain_command_writes_overlays(dots, tmp_path):
    from train import data as D

    path = tmp_path / "cell.png"
    from PIL import Image

    Image.fromarray(D.synthetic_cell(True, 5, 1, 64)).save(path)
    bad = tmp_path / "empty.png"
    bad.write_bytes(b"")
    proc = _script("explain", "--workdir", dots, "--tap", "stage2", "--out", str(tmp_path / "o"),
                   str(path), str(bad))
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stdout.splitlines()
    assert len(line) == 1 and line[0].split("\t")[0] == str(path)
    assert line[0].split("\t")[3] == str(tmp_path / "o" / "cell_cam.png")
    assert (tmp_path / "o" / "cell_cam.png").stat().st_size > 1000
    assert (tmp_path / "o" / "grid.png").stat().st_size > 1000
    assert "empty.png" in proc.stderr and "Traceback" not in proc.stderr


def _gradcam_layer(name):
    import jax

    import zoo
    from train import explain

    spec = zoo.spec(name)
    tap = explain.last_tap(spec)
    if tap is None:  # the last map a submodule makes, traced: no FLOPs
        model = zoo.create(name, num_classes=3)
        x = np.zeros((1, spec.min_size, spec.min_size, 3), np.float32)
        tap = explain.last_spatial_module(model, jax.eval_shape(model.init,
                                                                jax.random.PRNGKey(0), x), x)
    return tap


def _classifiers():
    import zoo

    # the zoo's own: another module's fixture may have the tests' tiny net registered in this
    # xdist worker meanwhile (family "tests")
    return [n for n in zoo.list_models()
            if zoo.spec(n).task == "classification" and zoo.spec(n).family != "tests"]


def test_gradcam_layer_of_a_model_and_its_heat_map():
    import jax

    import zoo
    from train import explain

    with_taps = [n for n in _classifiers() if explain.last_tap(zoo.spec(n))]
    assert len(with_taps) >= len(_classifiers()) - 7 and "resnet18" in with_taps
    assert _gradcam_layer("resnet18") == "stage4" and _gradcam_layer("alexnet") == "conv5"
    model = zoo.create("resnet18", num_classes=3)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    cams, probs = explain.gradcam(model, variables, x)
    assert cams.shape == (2, 32, 32) and probs.shape == (2, 3)
    assert probs == pytest.approx(np.asarray(jax.nn.softmax(model.apply(variables, x))),
                                  abs=1e-5)
    with pytest.raises(ValueError, match="no submodule 'nope'"):
        explain.gradcam(model, variables, x, "nope")


@pytest.mark.slow
def test_every_classifier_has_a_gradcam_layer():
    found = {n: _gradcam_layer(n) for n in _classifiers()}
    assert all(t and not t.startswith("head") for t in found.values()), found
    assert found["densenet121"] == "post_bn" and found["resnet50v2"] == "post_bn"


def _events(workdir):
    """(tag, kind) of every value in the workdir's TensorBoard event files (TFRecord)."""
    return tensorboard_events.tags(workdir)


def test_tensorboard_has_learning_rate_config_and_pictures(trained):
    workdir, _ = trained
    found = _events(workdir)
    tags = {t for t, _ in found}
    assert "train_step/learning_rate" in tags
    assert not any(t.endswith("/epoch") for t in tags)  # no noise tags
    assert any(t.startswith("config") for t in tags)  # the config as text
    assert ("test/errors", "image") in found or not any(
        r["correct"] == "0" for r in _rows(os.path.join(workdir, "predictions_test.csv")))
    assert ("test/confusion", "image") in found


def test_tensorboard_hparams_hold_the_config_and_final_numbers(trained):
    workdir, report = trained
    experiment, start, end, scalars = tensorboard_events.hparams(workdir)
    assert experiment is not None and start is not None and end is not None
    config = tiny_config()
    hp = start.hparams
    assert hp["model.name"].string_value == "tiny_test_net"
    assert hp["policy"].string_value == config.policy
    assert hp["optimizer"].string_value == config.optimizer
    assert hp["schedule"].string_value == config.schedule
    assert hp["learning_rate"].number_value == pytest.approx(config.learning_rate)
    for key in ("batch_size", "epochs", "seed"):
        assert hp[key].number_value == config[key], key
    assert hp["data.image_size"].number_value == config.data.image_size
    assert hp["init"].string_value == config.init
    assert {i.name for i in experiment.hparam_infos} == set(hp)
    # The final numbers: the test report's, and the best validation accuracy of the history.
    tags = {m.name.tag for m in experiment.metric_infos}
    for key in ("accuracy", "roc_auc", "sensitivity", "specificity", "balanced_accuracy"):
        assert f"test/{key}" in tags
        assert scalars[f"test/{key}"] == pytest.approx(report[key], abs=1e-6), key
    spec = "test/specificity_at_sensitivity_0.95"
    assert scalars[spec] == pytest.approx(report["at_target_sensitivity"]["specificity"])
    rows = [json.loads(line) for line in open(os.path.join(workdir, "history.jsonl"))]
    best = max(r["accuracy"] for r in rows if r["split"] == "validation")
    assert "validation/best_accuracy" in tags
    assert scalars["validation/best_accuracy"] == pytest.approx(best)
    assert tags <= set(scalars)  # every metric the tab lists has its value


def test_hparams_of_another_config_and_without_numbers(tmp_path):
    from train import logs

    config = tiny_config(**{"data.augment.rotation": 15.0, "data.augment.vflip": True})
    with config.unlocked():  # a model option, as mobilenetv2's alpha
        config.model.alpha = 0.5
    hp = logs.hparams(config)
    assert hp["model.options"] == "alpha=0.5"
    assert hp["data.augment"] == "hflip rotation=15 vflip"
    assert set(hp) == set(logs.HPARAMS)  # every run the same columns
    metrics = logs.final_metrics({"data": "x (validation split)", "accuracy": 0.5,
                                  "num_examples": 10, "roc_auc": float("nan")}, [], "loss",
                                 minimize=True)
    assert metrics == {"validation/accuracy": 0.5}  # no counts, no NaN, no history
    assert logs.add_hparams(str(tmp_path), config, metrics, 7)
    _, start, _, scalars = tensorboard_events.hparams(str(tmp_path))
    assert start.hparams["model.options"].string_value == "alpha=0.5"
    assert scalars == {"validation/accuracy": 0.5}


def test_the_run_draws_a_gradcam_grid_of_test_images_and_returns_its_figures(trained):
    workdir, report = trained
    grid = os.path.join(workdir, "gradcam_test.png")
    assert report["gradcam"] == grid and os.path.getsize(grid) > 1000
    assert ("test/gradcam", "image") in _events(workdir)
    from matplotlib.figure import Figure

    figures = report["figures"]
    assert {"confusion", "roc", "pr", "reliability", "gradcam"} <= set(figures)
    assert all(isinstance(f, Figure) for f in figures.values())
    from train import explain

    titled = [ax for ax in figures["gradcam"].axes if ax.get_title()]
    assert len(titled) == min(explain.GRID_SIZE, report["num_examples"])
    assert all(ax.get_title().startswith("true ") for ax in titled)
    assert "figures" not in json.load(open(os.path.join(workdir, "eval_test.json")))


def test_figures_show_inline_without_pyplot_or_the_inline_backend(tmp_path):
    """IPython (Jupyter, Colab) displays a returned figure as a PNG through its
    ``_repr_png_``: the pixels of the PNG the plot function saved."""
    from IPython.core.formatters import DisplayFormatter

    from tests.test_notebook import _png
    from train import plots

    path = tmp_path / "c.png"
    fig = plots.plot_confusion(np.array([[3, 1], [0, 4]]), ["a", "b"], str(path))
    data, _ = DisplayFormatter().format(fig)
    assert np.array_equal(_png(data["image/png"]), _png(path.read_bytes()))


def test_curves_of_a_staged_history_mark_the_stages():
    from train import plots

    rows = [{"step": s, "split": split, "epoch": e, "stage": st, "loss": 1.0 / s,
             "accuracy": 0.5} for s, e, st in ((1, 1, 1), (2, 2, 1), (3, 3, 2), (4, 4, 3))
            for split in ("train", "validation")]
    fig = plots.plot_history(rows)
    dashed = [ln.get_xdata()[0] for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "--"]
    assert dashed == [2.5, 3.5]
    assert not [ln for ln in plots.plot_history(rows, boundaries=[1.5]).axes[0].get_lines()
                if ln.get_linestyle() == "--" and ln.get_xdata()[0] != 1.5]


def test_tensorboard_writers_in_one_second_keep_each_others_events(tmp_path):
    """tensorboardX names an event file by the second: the final figures, the Grad-CAM grid
    and the hparams, written one after the other, must not truncate each other's file."""
    from train import logs, plots

    fig = plots.plot_confusion(np.array([[3, 1], [0, 4]]), ["a", "b"])
    for tag in ("one", "two", "three"):
        logs.add_figures(str(tmp_path), {tag: fig})
    logs.add_hparams(str(tmp_path), tiny_config(), {"test/accuracy": 0.75})
    found = tensorboard_events.tags(str(tmp_path))
    assert {("one", "image"), ("two", "image"), ("three", "image")} <= found
    assert ("test/accuracy", "simple_value") in found


def test_tta_views_are_the_symmetries_of_the_square():
    from train import step as T

    x = np.random.default_rng(0).normal(size=(2, 5, 5, 3)).astype(np.float32)
    want = [np.rot90(y, k, axes=(1, 2)) for y in (x, x[:, ::-1]) for k in range(4)]
    got = [np.asarray(v) for v in T.tta_views(x, "dihedral")]
    assert len(got) == 8 and np.array_equal(got[0], x)
    for w in want:  # each symmetry exactly once
        assert sum(np.array_equal(g, w) for g in got) == 1
    flips = [np.asarray(v) for v in T.tta_views(x, "flips")]
    assert len(flips) == 4 and all(any(np.array_equal(f, w) for w in want) for f in flips)
    assert len({f.tobytes() for f in flips}) == 4
    with pytest.raises(ValueError, match="must be square"):
        T.tta_views(np.zeros((1, 4, 6, 3)), "dihedral")
    assert len(T.tta_views(np.zeros((1, 4, 6, 3)), "flips")) == 4
    with pytest.raises(ValueError, match="'flips', 'dihedral'"):
        T.make_eval_step(None, None, tta="rot")


def test_evaluate_with_tta_averages_the_views_beside_the_plain_report(trained):
    import zoo
    from train import model as Mo
    from train import step as T

    workdir, _ = trained
    plain_json = os.path.join(workdir, "eval_validation.json")
    with registered():
        plain = E.evaluate(workdir, split="validation")
        before = open(plain_json).read()
        report = E.evaluate(workdir, split="validation", tta="dihedral")
        run = E.load_run(workdir)
        model = Mo.build_model(run["config"], len(run["class_names"]))
        norm = zoo.spec(run["config"].model.name).normalize
        size = run["config"].data.image_size
        x = np.random.default_rng(1).integers(0, 256, (3, size, size, 3)).astype(np.uint8)
        one = T.make_eval_step(model, norm)
        mean = np.mean([one(run["state"], {"image": v}) for v in
                        [np.rot90(y, k, axes=(1, 2)) for y in (x, x[:, ::-1])
                         for k in range(4)]], axis=0)
        tta = np.asarray(T.make_eval_step(model, norm, tta="dihedral")(run["state"],
                                                                         {"image": x}))
    np.testing.assert_allclose(tta, mean, rtol=1e-5, atol=1e-6)
    assert not np.allclose(tta, one(run["state"], {"image": x}), atol=1e-4)  # not invariant
    # its own files; the plain report is left as it was
    assert report["tta"] == "dihedral" and "test-time augmentation dihedral x8" in report["data"]
    assert report["json"] == os.path.join(workdir, "eval_validation_dihedral.json")
    assert report["predictions"] == os.path.join(workdir, "predictions_validation_dihedral.csv")
    assert open(plain_json).read() == before and "tta" not in plain
    a, b = _rows(plain["predictions"]), _rows(report["predictions"])
    assert [r["file"] for r in a] == [r["file"] for r in b]
    assert [r["p_parasitized"] for r in a] != [r["p_parasitized"] for r in b]
    proc = _script("evaluate", "--workdir", workdir, "--tta", "rot")
    assert proc.returncode != 0 and "--tta" in proc.stderr and "dihedral" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_tta_is_the_runs_final_report_and_evaluates_default(tmp_path):
    workdir = str(tmp_path / "tta")
    with registered():
        report = loop.train_and_evaluate(tiny_config(tta="flips"), workdir)
        again = E.evaluate(workdir)  # the run's own choice, into the run's own files
        plain = E.evaluate(workdir, tta="none")
    assert report["tta"] == "flips" and "(test split, test-time augmentation flips x4)" in \
        report["data"]
    assert again["json"] == os.path.join(workdir, "eval_test.json")
    assert again["confusion_matrix"] == report["confusion_matrix"] and again["tta"] == "flips"
    assert not [f for f in os.listdir(workdir) if f.startswith("eval_test.1")]  # same numbers
    assert plain["json"] == os.path.join(workdir, "eval_test_plain.json") and "tta" not in plain
    probs = lambda r: [x["p_parasitized"] for x in _rows(r["predictions"])]  # noqa: E731
    assert probs(again) == probs(report) != probs(plain)

"""Evaluate a training workdir's best (else last) checkpoint; print and write JSON.

  python -m scripts.evaluate --workdir /tmp/zoo_demo [--data folder:/path/to/images]
  python -m scripts.evaluate --workdir /tmp/bccd_yolo --data voc:../shared/data/bccd --split val

A detection workdir reports VOC mAP@0.5 and COCO AP@[.5:.95] per class in
``eval_<split>.json``; ``--split`` is then a split of the data (a VOC ImageSets/Main name).

A classification workdir's ``splits.json`` records the data it was trained on; when the
data changed (files added, removed or renamed), evaluating its splits is refused with what
changed (the saved indices would point at other images), unless ``--rederive``. A
detection workdir's ``splits.json`` records each split's files (and, for a VOC folder, the
hash of each image and annotation): a split whose files were added, removed or changed is
refused the same way, and ``--rederive`` evaluates the recorded files found again by name.
A previous ``eval_<name>.json`` with other numbers is kept as ``eval_<name>.<n>.json``.

``--tta flips|dihedral|none`` (classifiers): test-time augmentation, each image's
probabilities averaged over its 4 flips or its 8 flips and quarter turns, in one batch
through the model. Left out, the run's own ``config.tta`` applies (what training's report
used); another choice writes ``eval_<name>_<tta>.json`` (``_plain`` for none, and its CSV and
plots) beside the run's own.

It prints one summary line and the paths of what it wrote: ``eval_<name>.json`` and, for a
classifier, ``predictions_<name>.csv`` (one row per image) beside the plots
(``confusion``, ``roc``, ``pr``, ``reliability``, ``errors_<name>.png``). ``--print_json``
prints the report itself instead; ``--verbose`` shows the libraries' INFO lines.
"""

import json

from absl import app, flags

from scripts import cli
from train import logs, task

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training workdir.")
flags.DEFINE_string("data", None, "Data source (default: the run's own, its test split).")
flags.DEFINE_string("split", None, "Split of the run's own source: train, validation, test, all.")
flags.DEFINE_string("positive_class", None, "Class for sensitivity/specificity/ROC AUC.")
flags.DEFINE_enum("checkpoint", "best", ["best", "last"], "Which checkpoint.")
flags.DEFINE_bool("rederive", False, "When the run's data changed since training: find the "
                  "split's files again by name (new files are left out) instead of refusing.")
flags.DEFINE_enum("tta", None, ["none", "flips", "dihedral"], "A classifier's test-time "
                  "augmentation: the mean probability over each image's flips (4 views) or "
                  "flips and quarter turns (dihedral, 8). Default: the run's config.tta; "
                  "another is written as eval_<name>_<tta>.json (none: _plain).")
flags.DEFINE_bool("print_json", False, "Print the whole report as JSON (for a pipe).")
flags.mark_flag_as_required("workdir")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logs.quiet(FLAGS.verbose)
    report = task.evaluate(FLAGS.workdir, FLAGS.data, split=FLAGS.split,
                           positive_class=FLAGS.positive_class, which=FLAGS.checkpoint,
                           rederive=FLAGS.rederive, tta=FLAGS.tta)
    if FLAGS.print_json:
        print(json.dumps({k: v for k, v in report.items() if k != "figures"}, indent=2))
        return
    print(task.summary(report))
    for what, key in (("results", "json"), ("per image", "predictions")):
        if report.get(key):
            print(f"{what}: {report[key]}")


def run(argv=None):
    """The script with one-line errors (``scripts/cli.py``)."""
    cli.run(main, argv)


if __name__ == "__main__":
    run()

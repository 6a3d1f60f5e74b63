"""Evaluate a training workdir's best (else last) checkpoint; print and write JSON.

  python -m scripts.evaluate --workdir /tmp/zoo_demo [--data folder:/path/to/images]
  python -m scripts.evaluate --workdir /tmp/bccd_yolo --data voc:../shared/data/bccd --split val

A detection workdir reports VOC mAP@0.5 and COCO AP@[.5:.95] per class in
``eval_<split>.json``; ``--split`` is then a split of the data (a VOC ImageSets/Main name).
"""

import json

from absl import app, flags

from train import task

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training workdir.")
flags.DEFINE_string("data", None, "Data source (default: the run's own, its test split).")
flags.DEFINE_string("split", None, "Split of the run's own source: train, validation, test, all.")
flags.DEFINE_string("positive_class", None, "Class for sensitivity/specificity/ROC AUC.")
flags.DEFINE_enum("checkpoint", "best", ["best", "last"], "Which checkpoint.")
flags.mark_flag_as_required("workdir")


def main(argv):
    del argv
    report = task.evaluate(FLAGS.workdir, FLAGS.data, split=FLAGS.split,
                           positive_class=FLAGS.positive_class, which=FLAGS.checkpoint)
    print(json.dumps(report, indent=2))
    print(task.summary(report))


if __name__ == "__main__":
    app.run(main)

"""Class and probability per image from a training workdir (a detector: its detections,
one line each: path, class, score, box in original pixels).

  python -m scripts.predict --workdir /tmp/zoo_demo cell1.png cell2.png [--out preds.csv]

A file that cannot be read (missing, empty, truncated, a folder) is named on stderr and
the others are still predicted; the exit status is then 2. Library INFO lines (orbax,
absl) are hidden unless ``--verbose``.
"""

import sys

from absl import app, flags

from scripts import cli
from train import evaluate as classification_eval
from train import logs, task

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training workdir.")
flags.DEFINE_enum("checkpoint", "best", ["best", "last"], "Which checkpoint.")
flags.DEFINE_string("out", None, "Write a CSV (file, predicted, p_<class>..., error) "
                    "and print one summary line and its path instead of a line per image.")
flags.mark_flag_as_required("workdir")


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("give one or more image files")
    logs.quiet(FLAGS.verbose)
    failed = 0
    results = task.predict(FLAGS.workdir, argv[1:], FLAGS.checkpoint)
    if FLAGS.out:
        if any("detections" in r for r in results):
            raise app.UsageError("--out writes a classifier's predictions; a detector's "
                                 "go to stdout, one line per box")
        print(classification_eval.write_predictions(results, FLAGS.out))
        print(f"per image: {FLAGS.out}")
    for r in results if not FLAGS.out else [r for r in results if "error" in r]:
        if "error" in r:  # named on stderr; the other files are still predicted
            print(f"error: {r['error']}", file=sys.stderr)
            failed += 1
        elif "detections" not in r:
            print(f"{r['path']}\t{r['class']}\t{r['probability']:.4f}")
        for d in r.get("detections", ()):
            print(f"{r['path']}\t{d['class']}\t{d['score']:.4f}\t{d['box']}")
    if failed:
        print(f"error: {failed} of {len(argv) - 1} file(s) could not be read", file=sys.stderr)
        return 2
    return 0


def run(argv=None):
    """The script with one-line errors (``scripts/cli.py``)."""
    cli.run(main, argv)


if __name__ == "__main__":
    run()

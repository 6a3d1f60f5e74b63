"""Class and probability per image from a training workdir (a detector: its detections,
one line each: path, class, score, box in original pixels).

  python -m scripts.predict --workdir /tmp/zoo_demo cell1.png cell2.png

A file that cannot be read (missing, empty, truncated, a folder) is named on stderr and
the others are still predicted; the exit status is then 2. Library INFO lines (orbax,
absl) are hidden unless ``--verbose``.
"""

import sys

from absl import app, flags

from scripts import cli
from train import logs, task

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training workdir.")
flags.DEFINE_enum("checkpoint", "best", ["best", "last"], "Which checkpoint.")
flags.mark_flag_as_required("workdir")


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("give one or more image files")
    logs.quiet(FLAGS.verbose)
    failed = 0
    for r in task.predict(FLAGS.workdir, argv[1:], FLAGS.checkpoint):
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

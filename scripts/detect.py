"""Draw a trained detector's boxes, with class and score, on images (PNGs).

  python -m scripts.detect --workdir /tmp/bccd_yolo IMAGE.jpg [IMAGE ...] --out /tmp/boxes \
      [--score 0.25] [--checkpoint best|last]

Prints one JSON line per image: its detections in original pixel coordinates. A file that
cannot be read (missing, empty, truncated, a folder, not an image) is named on stderr in
one line and the others are still detected; the exit status is then 2.
"""

import json
import sys

from absl import app, flags

from scripts import cli
from train import logs
from train.detection import evaluate

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A detection training workdir.")
flags.DEFINE_string("out", None, "Folder for the PNGs (none: print only).")
flags.DEFINE_float("score", 0.25, "Minimum score drawn.")
flags.DEFINE_enum("checkpoint", "best", ["best", "last"], "Which checkpoint.")
flags.mark_flag_as_required("workdir")


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("give one or more image files")
    logs.quiet(FLAGS.verbose)
    failed = 0
    for r in evaluate.detect_files(FLAGS.workdir, argv[1:], FLAGS.out,
                                   score_threshold=FLAGS.score, which=FLAGS.checkpoint):
        if "error" in r:  # named on stderr; the other files are still detected
            print(f"error: {r['error']}", file=sys.stderr)
            failed += 1
        else:
            print(json.dumps(r))
    if failed:
        print(f"error: {failed} of {len(argv) - 1} file(s) could not be read", file=sys.stderr)
        return 2
    return 0


def run(argv=None):
    """The script with one-line errors (``scripts/cli.py``)."""
    cli.run(main, argv)


if __name__ == "__main__":
    run()

"""Draw a trained detector's boxes, with class and score, on images (PNGs).

  python -m scripts.detect --workdir /tmp/bccd_yolo IMAGE.jpg [IMAGE ...] --out /tmp/boxes \
      [--score 0.25] [--checkpoint best|last]

Prints one JSON line per image: its detections in original pixel coordinates.
"""

import json

from absl import app, flags

from scripts import cli
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
    for r in evaluate.detect_files(FLAGS.workdir, argv[1:], FLAGS.out,
                                   score_threshold=FLAGS.score, which=FLAGS.checkpoint):
        print(json.dumps(r))


def run(argv=None):
    """The script with one-line errors (``scripts/cli.py``)."""
    cli.run(main, argv)


if __name__ == "__main__":
    run()

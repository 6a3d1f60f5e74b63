"""Grad-CAM heat maps of a trained classifier: where it looked in each image.

  python -m scripts.explain --workdir /tmp/zoo_demo cell1.png cell2.png [--out DIR]
  transfer-zoo explain --workdir /tmp/zoo_demo cell1.png

Writes ``<stem>_cam.png`` (the image with the heat map of its predicted class on top)
per file and ``grid.png`` of them all into ``--out`` (default ``<workdir>/explain``),
and prints one line per image: path, class, probability, overlay. The layer is the
model's last feature tap (``ModelSpec.feature_taps``) unless ``--tap`` names another
module path. A file that cannot be read is named on stderr (exit status 2).
"""

import sys

from absl import app, flags

from scripts import cli
from train import explain, logs

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A classification training workdir.")
flags.DEFINE_string("out", None, "Folder for the overlays (default <workdir>/explain).")
flags.DEFINE_string("tap", None, "Module path of the feature map (default: the last tap).")
flags.DEFINE_enum("checkpoint", "best", ["best", "last"], "Which checkpoint.")
flags.mark_flag_as_required("workdir")


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("give one or more image files")
    logs.quiet(FLAGS.verbose)
    failed = 0
    for r in explain.explain_files(FLAGS.workdir, argv[1:], FLAGS.out, tap=FLAGS.tap,
                                   which=FLAGS.checkpoint):
        if "error" in r:
            print(f"error: {r['error']}", file=sys.stderr)
            failed += 1
        else:
            print(f"{r['path']}\t{r['class']}\t{r['probability']:.4f}\t{r['overlay']}")
    if failed:
        print(f"error: {failed} of {len(argv) - 1} file(s) could not be read", file=sys.stderr)
        return 2
    return 0


def run(argv=None):
    """The script with one-line errors (``scripts/cli.py``)."""
    cli.run(main, argv)


if __name__ == "__main__":
    run()

"""Anchor boxes for a detection dataset by k-means on IoU distance (Darknet's recipe).

    python -m scripts.anchors --data voc:../shared/data/bccd --split train --size 416 \
        [--height 320 --width 416] [--scales 3,3,3]

Prints the anchors per output scale (coarsest first), in input pixels after letterboxing,
as a Python literal for ``config.detection.anchors``, and the mean best IoU of the boxes.
"""

from absl import app, flags

from scripts import cli
from train.detection.anchors import kmeans_anchors, letterboxed_sizes, split_scales
from train.detection.data import open_detection_source

FLAGS = flags.FLAGS
flags.DEFINE_string("data", None, "voc:<folder>, tfds:<name> or shapes.")
flags.DEFINE_string("split", "train", "Split of the data.")
flags.DEFINE_integer("size", 416, "Square input side.", lower_bound=1)
flags.DEFINE_integer("height", 0, "Input height (default: size).", lower_bound=0)
flags.DEFINE_integer("width", 0, "Input width (default: size).", lower_bound=0)
flags.DEFINE_list("scales", ["3", "3", "3"], "Anchors per output scale, coarsest first "
                  "(yolov3: 3,3,3; yolov3_tiny: 3,3).")
flags.DEFINE_integer("seed", 0, "k-means seed.")
flags.mark_flag_as_required("data")
flags.register_validator("scales", lambda v: bool(v) and all(n.isdigit() and int(n) > 0
                                                             for n in v),
                         "--scales takes positive integers, e.g. 3,3,3")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    hw = (FLAGS.height or FLAGS.size, FLAGS.width or FLAGS.size)
    per_scale = tuple(int(n) for n in FLAGS.scales)
    wh = letterboxed_sizes(open_detection_source(FLAGS.data, split=FLAGS.split), hw)
    anchors, fit = kmeans_anchors(wh, sum(per_scale), seed=FLAGS.seed)
    print(f"# {len(wh)} boxes of {FLAGS.data} ({FLAGS.split}) letterboxed to {hw[0]}x{hw[1]}; "
          f"mean best IoU {fit:.3f}")
    print(f"anchors = {split_scales(anchors, per_scale)!r}")


def run(argv=None):
    """The script with one-line errors (``scripts/cli.py``)."""
    cli.run(main, argv)


if __name__ == "__main__":
    run()

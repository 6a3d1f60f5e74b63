"""Anchor boxes for a detection dataset by k-means on IoU distance (Darknet's recipe).

    python -m scripts.anchors --data voc:../shared/data/bccd --split train --size 416 \
        [--height 320 --width 416] [--scales 3,3,3]

Prints the anchors per output scale (coarsest first), in input pixels after letterboxing,
as a Python literal for ``config.model.anchors``, and the mean best IoU of the boxes.
"""

from __future__ import annotations

import argparse

from train.detection.anchors import kmeans_anchors, letterboxed_sizes, split_scales
from train.detection.data import open_detection_source


def main(argv: list[str] | None = None) -> tuple:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="voc:<folder>, tfds:<name> or shapes")
    parser.add_argument("--split", default="train")
    parser.add_argument("--size", type=int, default=416, help="square input side")
    parser.add_argument("--height", type=int, default=0, help="input height (default: size)")
    parser.add_argument("--width", type=int, default=0, help="input width (default: size)")
    parser.add_argument("--scales", default="3,3,3",
                        help="anchors per output scale, coarsest first (yolov3: 3,3,3; "
                             "yolov3_tiny: 3,3)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    per_scale = tuple(int(n) for n in args.scales.split(","))
    hw = (args.height or args.size, args.width or args.size)
    source = open_detection_source(args.data, split=args.split)
    wh = letterboxed_sizes(source, hw)
    anchors, fit = kmeans_anchors(wh, sum(per_scale), seed=args.seed)
    result = split_scales(anchors, per_scale)
    print(f"# {len(wh)} boxes of {args.data} ({args.split}) letterboxed to {hw[0]}x{hw[1]}; "
          f"mean best IoU {fit:.3f}")
    print(f"anchors = {result!r}")
    return result


if __name__ == "__main__":
    main()

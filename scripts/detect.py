"""Draw a trained detector's boxes, with class and score, on images (PNGs).

  python -m scripts.detect --workdir /tmp/bccd_yolo IMAGE.jpg [IMAGE ...] --out /tmp/boxes \
      [--score 0.25] [--checkpoint best|last]

Prints one JSON line per image: its detections in original pixel coordinates.
"""

from __future__ import annotations

import argparse
import json

from train.detection import evaluate


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--workdir", required=True, help="a detection training workdir")
    parser.add_argument("--out", default=None, help="folder for the PNGs (none: print only)")
    parser.add_argument("--score", type=float, default=0.25, help="minimum score drawn")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    args = parser.parse_args(argv)
    results = evaluate.detect_files(args.workdir, args.images, args.out,
                                    score_threshold=args.score, which=args.checkpoint)
    for r in results:
        print(json.dumps(r))
    return results


if __name__ == "__main__":
    main()

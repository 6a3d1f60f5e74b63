"""Draw model architectures with Graphviz.

    python -m scripts.draw --model resnet50 --depth 1 --freeze finetune:1 --out resnet50.svg
    python -m scripts.draw --all --out gallery/        # every model, depth 1 and full, index.md

Without the Graphviz ``dot`` binary the DOT files are still written and the command
exits with status 2 and says how to install it.
"""

from __future__ import annotations

import argparse
import sys

import viz
import zoo


def main(argv: list[str] | None = None) -> int:
    """Parse flags, draw (or print a summary), return the exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="registered name (see zoo.list_models())")
    what.add_argument("--all", action="store_true", help="gallery of every model + index.md")
    p.add_argument("--pattern", help="with --all: only models matching this regex")
    p.add_argument("--depth", type=int, help="collapse modules below this depth (default: full;"
                   " --all draws depth 1 and full)")
    p.add_argument("--freeze", help="colour a policy: frozen, finetune:N, full, or a regex "
                   "over parameter paths")
    p.add_argument("--format", choices=viz.dot.FORMATS, help="default: --out suffix, else svg")
    p.add_argument("--rankdir", choices=("TB", "LR"), default="TB")
    p.add_argument("--fold", action="store_true", help="draw repeated identical blocks once, xN")
    p.add_argument("--no-edge-labels", action="store_true", help="leave tensor shapes off edges")
    p.add_argument("--flops", action="store_true", help="show FLOPs of each node")
    p.add_argument("--summary", action="store_true", help="also print the text summary")
    p.add_argument("--out", required=True, help="output file (--model) or directory (--all)")
    args = p.parse_args(argv)
    kw = dict(freeze=args.freeze, fold_repeats=args.fold, rankdir=args.rankdir,
              edge_labels=not args.no_edge_labels, flops=args.flops)
    try:
        if args.all:
            depths = (1, None) if args.depth is None else (args.depth,)
            index = viz.gallery(args.out, zoo.list_models(args.pattern), depths=depths,
                                format=args.format or "svg", **kw)
            print(f"wrote {index}")
        else:
            if args.summary:
                print(viz.summary(args.model, depth=args.depth, freeze=args.freeze))
            viz.draw(args.model, depth=args.depth, out=args.out, format=args.format, **kw)
            print(f"wrote {args.out}")
    except viz.GraphvizNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

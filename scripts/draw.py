"""Draw model architectures with Graphviz.

    python -m scripts.draw --model resnet50 --depth 1 --freeze finetune:1 --out resnet50.svg
    python -m scripts.draw --all --out gallery/        # every model, depth 1 and full, index.md

Without the Graphviz ``dot`` binary the DOT files are still written and the command
exits with status 2 and says how to install it. A model that fails while tracing (a shape
error, e.g. with ``--input_shape``) is drawn up to the failing module, marked with the
error, and the command exits with status 2 and the error in one line.
"""

import sys

from absl import app, flags

import viz
import zoo
from scripts import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Registered name (see zoo.list_models()).")
flags.DEFINE_bool("all", False, "Gallery of every model + index.md.")
flags.DEFINE_string("pattern", None, "With --all: only models matching this regex.")
flags.DEFINE_integer("depth", None, "Collapse modules below this depth (default: full; --all "
                     "draws depth 1 and full).", lower_bound=0)
flags.DEFINE_string("freeze", None, "Colour a policy: frozen, finetune:N, full, or a regex over "
                    "parameter paths.")
flags.DEFINE_enum("format", None, [*viz.dot.FORMATS, "html"], "Default: the --out suffix, "
                  "else svg. html: one self-contained interactive page (every layer, expanded "
                  "to --depth; collapse, search, details).")
flags.DEFINE_enum("rankdir", "TB", ["TB", "LR"], "Top to bottom or left to right.")
flags.DEFINE_bool("fold", False, "Draw repeated identical blocks once, xN.")
flags.DEFINE_bool("no-edge-labels", False, "Leave tensor shapes off edges.")
flags.DEFINE_bool("flops", False, "Show FLOPs of each node.")
flags.DEFINE_bool("summary", False, "Also print the text summary.")
flags.DEFINE_list("input_shape", None, "With --model: the input H,W,C (or N,H,W,C) to trace "
                  "with instead of the registered size.")
flags.DEFINE_string("out", None, "Output file (--model) or directory (--all).")
flags.mark_flag_as_required("out")
flags.register_multi_flags_validator(["model", "all"], lambda f: (f["model"] is None) == f["all"],
                                     "give one of --model NAME or --all")
cli.check_model_flag()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    kw = dict(freeze=FLAGS.freeze, fold_repeats=FLAGS.fold, rankdir=FLAGS.rankdir,
              edge_labels=not FLAGS["no-edge-labels"].value, flops=FLAGS.flops)
    try:
        if FLAGS.all:
            depths = (1, None) if FLAGS.depth is None else (FLAGS.depth,)
            index = viz.gallery(FLAGS.out, zoo.list_models(FLAGS.pattern), depths=depths,
                                format=FLAGS.format or "svg", **kw)
            print(f"wrote {index}")
        else:
            if FLAGS.summary:
                print(viz.summary(FLAGS.model, depth=FLAGS.depth, freeze=FLAGS.freeze))
            viz.draw(FLAGS.model, depth=FLAGS.depth, out=FLAGS.out, format=FLAGS.format,
                     input_shape=_input_shape(FLAGS.input_shape), **kw)
            print(f"wrote {FLAGS.out}")
    except viz.GraphvizNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _input_shape(dims):
    if dims is None:
        return None
    try:
        shape = tuple(int(d) for d in dims)
    except ValueError:
        raise ValueError(f"--input_shape takes integers H,W,C or N,H,W,C, got "
                         f"{','.join(dims)}") from None
    if len(shape) not in (3, 4) or min(shape) < 1:
        raise ValueError(f"--input_shape takes H,W,C or N,H,W,C (positive), got {shape}")
    return shape if len(shape) == 4 else (1, *shape)


def run(argv=None):
    """The script with one-line errors (``scripts/cli.py``)."""
    cli.run(main, argv)


if __name__ == "__main__":
    run()

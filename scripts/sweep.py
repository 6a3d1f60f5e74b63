"""Train every row of a recipe (each model of the zoo, say), one workdir each, and tabulate them.

  transfer-zoo sweep --config malaria_zoo --out runs/zoo                 # all rows
  transfer-zoo sweep --config malaria_zoo --out runs/zoo --rows vgg16,resnet50 \
      --set data.source=folder:../shared/data/malaria/cell_images
  transfer-zoo sweep --config malaria_zoo --list                         # the rows

Each row is an ordinary training command (``transfer-zoo train --config <recipe>:<row>
--workdir <out>/<row>``), run in its own process. Run the same command again to resume: a
finished row is skipped, an interrupted or failed one goes on from its newest checkpoint.
``<out>/sweep.md`` and ``sweep.csv`` hold the table (test accuracy, sensitivity,
specificity, ROC AUC, wall time, img/s and each row's command), rewritten after every row.
"""

import os
import sys

from absl import app, flags

from scripts import cli
from train import sweep

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "A recipe with rows (a module-level ROWS): a name, e.g. "
                    "malaria_zoo, or a path to a recipe file.")
flags.DEFINE_string("out", None, "Folder of the sweep: a workdir per row, sweep.json/.csv/.md.")
flags.DEFINE_list("rows", ["all"], "The rows to run, in this order (default: all of them).")
flags.DEFINE_multi_string("set", [], "KEY=VALUE for every row, as --config.KEY=VALUE of "
                          "train (e.g. data.source=folder:cells); repeat for several.")
flags.DEFINE_bool("overwrite", False, "Run every row again with --overwrite: a row whose "
                  "workdir holds a run with another config (its recipe changed) starts again, "
                  "an unchanged finished one only re-evaluates.")
flags.DEFINE_bool("keep_going", True, "Go on with the next row when one fails (it is "
                  "recorded, and run again by the next sweep).")
flags.DEFINE_bool("list", False, "Print the recipe's rows and exit.")
flags.DEFINE_bool("dry_run", False, "Print each row's training command and exit.")
flags.mark_flag_as_required("config")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = [sys.executable, "-m", "scripts.train"]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    rows = sweep.select(sweep.recipe_rows(FLAGS.config), FLAGS.rows)
    if FLAGS.list:
        print("\n".join(rows))
        return 0
    if not FLAGS.out:
        raise app.UsageError("--out is required: the folder of the sweep's workdirs")
    if FLAGS.dry_run:
        overrides = sweep.check_overrides(FLAGS.set)
        for row in rows:
            command = sweep.row_command(TRAIN, FLAGS.config, row, FLAGS.out, overrides,
                                        FLAGS.overwrite)
            print(sweep.shown(command, TRAIN, "transfer-zoo train"))
        return 0
    # the rows' processes import this checkout's (or installation's) packages, from any cwd
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = ROOT + (os.pathsep + path if path else "")
    table = sweep.run(FLAGS.config, FLAGS.out, TRAIN, rows=rows, sets=FLAGS.set,
                      overwrite=FLAGS.overwrite, keep_going=FLAGS.keep_going)
    print(sweep.markdown(table), end="")
    failed = [r["row"] for r in table if r["row"] in rows and r["status"] != "done"]
    print(f"table: {os.path.join(FLAGS.out, 'sweep.md')} (and sweep.csv)")
    if failed:
        print(f"error: {len(failed)} row(s) did not finish: {', '.join(failed)}; run the same "
              "command again to retry them", file=sys.stderr)
        return 1
    return 0


def run(argv=None):
    """The script with one-line errors (``scripts/cli.py``)."""
    cli.run(main, argv)


if __name__ == "__main__":
    run()

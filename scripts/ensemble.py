"""Average the class probabilities of several trained classifiers on the same split.

  transfer-zoo ensemble --workdirs runs/zoo/squeezenet1_1,runs/zoo/resnet18,runs/mv2 \
      --out runs/ensemble [--split test]

The members must have been evaluated on the same images (the same data, seed and
``group_regex``: their ``predictions_<split>.csv``); nothing is run again. The ensemble's
``eval_<split>.json`` (with each member's accuracy), ``predictions_<split>.csv`` and plots
go to ``--out``; one summary line is printed. A member ``W@NAME`` uses that run's
``predictions_<NAME>.csv`` instead (``runs/a@test_dihedral``: its test-time augmented
results, or ``runs/b@test_plain``: the plain ones of a run whose own report used it).
"""

from absl import app, flags

from scripts import cli
from train import ensemble, evaluate, logs

FLAGS = flags.FLAGS
flags.DEFINE_list("workdirs", None, "Two or more evaluated training workdirs (W@NAME: "
                  "that run's predictions_<NAME>.csv instead of --split's).")
flags.DEFINE_string("out", None, "Folder for the ensemble's results.")
flags.DEFINE_string("split", "test", "The split the members were evaluated on.")
flags.DEFINE_string("positive_class", None, "Class for sensitivity/specificity/ROC AUC "
                    "(default: the first member's).")
flags.DEFINE_bool("print_json", False, "Print the whole report as JSON (for a pipe).")
flags.mark_flags_as_required(["workdirs", "out"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logs.quiet(FLAGS.verbose)
    report = ensemble.ensemble(FLAGS.workdirs, FLAGS.out, FLAGS.split, FLAGS.positive_class)
    if FLAGS.print_json:
        print(ensemble.dumps(report))
        return
    print(evaluate.summary(report))
    print(ensemble.members_line(report))
    print(f"results: {report['json']}")


def run(argv=None):
    """The script with one-line errors (``scripts/cli.py``)."""
    cli.run(main, argv)


if __name__ == "__main__":
    run()

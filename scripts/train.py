"""Train a zoo model on its task, image classification or detection (resumes when the
workdir has a run with the same config: another config is refused unless ``--overwrite``;
only one run at a time per workdir). The model's task picks the data, loss and metrics; one loop
(``train/loop.py``) trains them all. Detection recipes: ``train/configs/bccd_yolo.py``,
``shapes_yolo.py``.

  python -m scripts.train --config train/configs/synthetic.py --workdir /tmp/zoo_demo \
      [--config.model.name=squeezenet1_1 --config.epochs=5 ...]
"""

from absl import app, flags
from ml_collections import config_flags

from scripts import cli
from train import loop

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A recipe: train/configs/<recipe>.py, or a path.",
                                lock_config=True)
cli.recipes_by_name(FLAGS["config"])  # --config malaria, as well as a path
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.DEFINE_bool("overwrite", False, "Discard a run with another config in --workdir and "
                  "start again (once the new config's checks have passed).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    loop.train_and_evaluate(FLAGS.config, FLAGS.workdir, overwrite=FLAGS.overwrite)


def run(argv=None):
    """The script with one-line errors (``scripts/cli.py``)."""
    cli.run(main, argv)


if __name__ == "__main__":
    run()

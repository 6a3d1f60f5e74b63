"""Train a zoo model on its task, image classification or detection (resumes when the
workdir has a run). The model's task picks the data, loss and metrics; one loop
(``train/loop.py``) trains them all. Detection recipes: ``train/configs/bccd_yolo.py``,
``shapes_yolo.py``.

  python -m scripts.train --config train/configs/synthetic.py --workdir /tmp/zoo_demo \
      [--config.model.name=squeezenet1_1 --config.epochs=5 ...]
"""

from absl import app, flags
from ml_collections import config_flags

from train import loop

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A train/configs/<recipe>.py file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)

"""Train a zoo model on an image classification or detection task (resumes when the workdir
has a run). Detectors (``yolov3``, ``yolov3_tiny``, ``yolo_<backbone>``, ``yolov1``) train
through ``train/detection/loop.py``: see ``train/configs/bccd_yolo.py``, ``shapes_yolo.py``.

  python -m scripts.train --config train/configs/synthetic.py --workdir /tmp/zoo_demo \
      [--config.model.name=squeezenet1_1 --config.epochs=5 ...]
"""

from absl import app, flags
from ml_collections import config_flags

import zoo
from train import loop

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A train/configs/<recipe>.py file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    if zoo.spec(FLAGS.config.model.name).task == "detection":
        from train.detection import loop as detection

        detection.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    else:
        loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)

"""Class and probability per image from a training workdir.

  python -m scripts.predict --workdir /tmp/zoo_demo cell1.png cell2.png
"""

from absl import app, flags

from train import evaluate

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training workdir.")
flags.DEFINE_enum("checkpoint", "best", ["best", "last"], "Which checkpoint.")
flags.mark_flag_as_required("workdir")


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("give one or more image files")
    for r in evaluate.predict(FLAGS.workdir, argv[1:], FLAGS.checkpoint):
        print(f"{r['path']}\t{r['class']}\t{r['probability']:.4f}")


if __name__ == "__main__":
    app.run(main)

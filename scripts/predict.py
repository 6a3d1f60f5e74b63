"""Class and probability per image from a training workdir (a detector: its detections,
one line each: path, class, score, box in original pixels).

  python -m scripts.predict --workdir /tmp/zoo_demo cell1.png cell2.png
"""

from absl import app, flags

from train import task

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training workdir.")
flags.DEFINE_enum("checkpoint", "best", ["best", "last"], "Which checkpoint.")
flags.mark_flag_as_required("workdir")


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("give one or more image files")
    for r in task.predict(FLAGS.workdir, argv[1:], FLAGS.checkpoint):
        if "detections" not in r:
            print(f"{r['path']}\t{r['class']}\t{r['probability']:.4f}")
        for d in r.get("detections", ()):
            print(f"{r['path']}\t{d['class']}\t{d['score']:.4f}\t{d['box']}")


if __name__ == "__main__":
    app.run(main)

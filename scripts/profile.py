"""Where one jitted inference or training step of a zoo model spends its time, per XLA op.

    python -m scripts.profile --model resnet50 [--mode train|infer] [--batch 32] [--top 25]
        [--trace-dir DIR]

Prints the step's time, then the summed time of each XLA thunk kind and JAX op of one
profiled step, the largest first (how to read it: train/profile.py).
"""

from absl import app, flags

from scripts import cli
from train import profile

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A zoo model name.")
flags.DEFINE_enum("mode", "train", ["train", "infer"], "A training step or inference.")
flags.DEFINE_integer("batch", 32, "Images per batch.", lower_bound=1)
flags.DEFINE_integer("top", 25, "Rows to print.", lower_bound=1)
flags.DEFINE_string("trace-dir", None, "Keep the trace here (default: a temporary directory).")
flags.mark_flag_as_required("model")
cli.check_model_flag()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    profile.profile(FLAGS.model, mode=FLAGS.mode, batch=FLAGS.batch, top=FLAGS.top,
                    trace_dir=FLAGS["trace-dir"].value)


def run(argv=None):
    """The script with one-line errors (``scripts/cli.py``)."""
    cli.run(main, argv)


if __name__ == "__main__":
    run()

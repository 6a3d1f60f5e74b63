"""Time inference and one SGD training step: the zoo vs Keras applications on JAX and TensorFlow.

    python -m scripts.bench [--models resnet50,mobilenet,...] [--batch 32] [--rounds 3]
        [--tf-python /path/to/python-with-tensorflow] [--json bench.json] [--markdown bench.md]
    python -m scripts.bench --convs    # each conv formulation at typical shapes (zoo.backend.conv)
    python -m scripts.bench --device-check    # on a GPU/TPU: batch 256, bf16 and float32, timm
    python -m scripts.bench --input    # the loader's img/s, and the loop against the bare step

Each model runs in a fresh process per framework; what is timed and how: train/bench.py
and BENCHMARKS.md.
"""

from absl import app, flags

from scripts import cli
from train import bench, bench_input

FLAGS = flags.FLAGS
flags.DEFINE_list("models", list(bench.DEFAULT_MODELS), "Models, comma-separated.")
flags.DEFINE_list("frameworks", list(bench.FRAMEWORKS), "Some of: " + ",".join(bench.FRAMEWORKS))
flags.DEFINE_integer("batch", 32, "Images per batch.", lower_bound=1)
flags.DEFINE_integer("warmup", 2, "Untimed runs first (compilation among them).", lower_bound=0)
flags.DEFINE_integer("repeats", 5, "Timed runs; the median is reported.", lower_bound=1)
flags.DEFINE_list("modes", ["infer", "train"], "infer, train or both.")
flags.DEFINE_bool("hugepages", False,
                  "Run every framework with GLIBC_TUNABLES=glibc.malloc.hugetlb=1.")
flags.DEFINE_integer("rounds", 1, "Run the frameworks this many times in turn and report each "
                     "one's median over the rounds (the machine's speed drifts).", lower_bound=1)
flags.DEFINE_bool("shared-process", False, "Time all models of a framework in one process per "
                  "round (default: a fresh process per model).")
flags.DEFINE_string("tf-python", None,
                    "An interpreter with tensorflow and keras for the keras-tf column.")
flags.DEFINE_string("json", None, "Write all results here.")
flags.DEFINE_string("markdown", None, "Write the table here.")
flags.DEFINE_bool("convs", False, "Time each convolution formulation instead of the models.")
flags.DEFINE_bool("input", False, "Time the input pipeline (threads, worker processes) and "
                  "training through the loop against the bare step (train/bench_input.py).")
flags.DEFINE_bool("device-check", False, "The accelerator check: ResNet50 and MobileNetV2 "
                  "training and inference at batch 256 in float32 and bfloat16, timm as the "
                  "peer, a short run of train.loop (train/bench.py device_check); small "
                  "sizes when JAX has no accelerator.")
flags.DEFINE_bool("device-check-small", False, "--device-check at its small sizes even on an "
                  "accelerator (a quick check of the path).")
flags.register_validator("frameworks", lambda v: set(v) <= set(bench.FRAMEWORKS),
                         "--frameworks takes some of " + ",".join(bench.FRAMEWORKS))
flags.register_validator("modes", lambda v: bool(v) and set(v) <= {"infer", "train"},
                         "--modes takes infer, train or infer,train")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS["device-check"].value or FLAGS["device-check-small"].value:
        bench.device_check(small=True if FLAGS["device-check-small"].value else None,
                           json_path=FLAGS.json)
        return
    if FLAGS.input:
        bench_input.run(json_path=FLAGS.json, markdown_path=FLAGS.markdown)
        return
    if FLAGS.convs:
        bench.bench_convs(FLAGS.warmup, FLAGS.repeats, markdown_path=FLAGS.markdown)
        return
    bench.compare(FLAGS.models, FLAGS.frameworks, batch=FLAGS.batch, warmup=FLAGS.warmup,
                  repeats=FLAGS.repeats, modes=FLAGS.modes, rounds=FLAGS.rounds,
                  hugepages=FLAGS.hugepages, shared_process=FLAGS["shared-process"].value,
                  tf_python=FLAGS["tf-python"].value, json_path=FLAGS.json,
                  markdown_path=FLAGS.markdown)


def run(argv=None):
    """The script with one-line errors (``scripts/cli.py``)."""
    cli.run(main, argv)


if __name__ == "__main__":
    run()

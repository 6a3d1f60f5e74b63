"""Convert a reference weights file into an orbax checkpoint of ``{'params', 'batch_stats'}``.

    python -m scripts.convert --model resnet50 --input resnet50_weights.h5 --output ckpt/r50
    python -m scripts.convert --model mobilenetv2 --set alpha=0.35 --no-top \\
        --input model.h5 --output ckpt/mnv2
    python -m scripts.convert --model resnet18 --output ckpt/r18       # official file, cached

The input is anything :func:`zoo.pretrained.load` reads (Keras ``.h5``, ``.pth``,
``.safetensors``); without ``--input`` the official file is downloaded (once). An
existing output is an error unless ``--overwrite`` is given. Restore with
``orbax.checkpoint.StandardCheckpointer().restore(path)`` or pass the directory as
``path=`` to ``zoo.pretrained.load``.
"""

import ast
from pathlib import Path

from absl import app, flags

import zoo.pretrained
from scripts import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Zoo model name (zoo.list_models()).")
flags.DEFINE_string("input", None, "Weights file; default: the official one.")
flags.DEFINE_string("output", None, "Checkpoint directory to create.")
flags.DEFINE_string("source", None, "keras or torchvision (default: the reference).")
flags.DEFINE_bool("no-top", False, "Drop the classifier (include_top=False).")
flags.DEFINE_integer("num-classes", None, "New number of classes (re-initialises the head only).",
                     lower_bound=1)
flags.DEFINE_multi_string("set", [], "Other zoo.create option KEY=VALUE, e.g. alpha=0.35 or "
                          "in_channels=1; repeatable.")
flags.DEFINE_bool("overwrite", False, "Replace an existing output.")
flags.mark_flags_as_required(["model", "output"])
flags.register_validator("set", lambda v: all("=" in kv for kv in v), "--set takes KEY=VALUE")
cli.check_model_flag()


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    options = {k: _value(v) for k, v in (kv.split("=", 1) for kv in FLAGS.set)}
    options["include_top"] = not FLAGS["no-top"].value
    if FLAGS["num-classes"].value is not None:
        options["num_classes"] = FLAGS["num-classes"].value
    counts = zoo.pretrained.save(FLAGS.model, FLAGS.output, source=FLAGS.source,
                                 path=FLAGS.input, overwrite=FLAGS.overwrite, **options)
    out = Path(FLAGS.output).resolve()
    print(f"{FLAGS.model}: wrote {out} ({', '.join(f'{c} {n:,}' for c, n in counts.items())})")


def run(argv=None):
    """The script with one-line errors (``scripts/cli.py``)."""
    cli.run(main, argv)


if __name__ == "__main__":
    run()

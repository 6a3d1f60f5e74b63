"""List the zoo's models with their parameter counts and reference parity.

    python -m scripts.models [--pattern REGEX]
"""

from absl import app, flags

import zoo
from scripts import cli
from zoo.summary import table

FLAGS = flags.FLAGS
flags.DEFINE_string("pattern", None, "Only models whose name matches this regex.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    names = zoo.list_models(FLAGS.pattern)
    if not names:
        raise app.UsageError(f"no model matches {FLAGS.pattern!r}; models: "
                             f"{', '.join(zoo.list_models())}")
    print(table(names))
    print(f"\n{len(names)} models; counts computed with jax.eval_shape (no FLOPs, no memory).")


def run(argv=None):
    """The script with one-line errors (``scripts/cli.py``)."""
    cli.run(main, argv)


if __name__ == "__main__":
    run()

"""List the zoo's models with their parameter counts and reference parity.

    python -m scripts.models [--pattern REGEX]
"""

from __future__ import annotations

import argparse

import zoo
from zoo.summary import table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pattern", default=None, help="only models whose name matches")
    args = parser.parse_args(argv)
    names = zoo.list_models(args.pattern)
    if not names:
        parser.error(f"no model matches {args.pattern!r}; models: {', '.join(zoo.list_models())}")
    print(table(names))
    print(f"\n{len(names)} models; counts computed with jax.eval_shape (no FLOPs, no memory).")


if __name__ == "__main__":
    main()

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

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import jax
import numpy as np


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="zoo model name (zoo.list_models())")
    p.add_argument("--input", default=None, help="weights file; default: the official one")
    p.add_argument("--output", required=True, help="checkpoint directory to create")
    p.add_argument("--source", default=None, help="keras or torchvision (default: reference)")
    p.add_argument("--no-top", dest="include_top", action="store_false",
                   help="drop the classifier (include_top=False)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="new number of classes (re-initialises the head only)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="other zoo.create option, e.g. alpha=0.35 or in_channels=1")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    """Run the conversion; returns the checkpoint path."""
    import orbax.checkpoint as ocp

    import zoo

    args = parse(argv)
    out = Path(args.output).resolve()
    if out.exists() and not args.overwrite:
        raise SystemExit(f"{out} exists; pass --overwrite to replace it")
    kwargs = dict(kv.split("=", 1) for kv in args.set)
    kwargs = {k: _value(v) for k, v in kwargs.items()}
    kwargs["include_top"] = args.include_top
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    variables = zoo.pretrained.load(args.model, source=args.source, path=args.input, **kwargs)
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(out, variables, force=args.overwrite)
    ckpt.wait_until_finished()
    counts = {c: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(t))
              for c, t in variables.items()}
    print(f"{args.model}: wrote {out} ({', '.join(f'{c} {n:,}' for c, n in counts.items())})")
    return out


if __name__ == "__main__":
    main()

"""Thin command-line entry points: ``transfer-zoo <command>`` or ``python -m scripts.<command>``.

The project's top-level packages have generic names (``zoo``, ``train``, ``viz``,
``scripts``). A ``train.py`` in the folder ``python`` runs from, or another distribution's
``train`` package, would be imported in their place and fail deep inside with
``cannot import name 'loop' from 'train'``; this check names the culprit instead.
The ``transfer-zoo`` console command never puts the current folder on ``sys.path``.
"""

import importlib.util
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _check_siblings() -> None:
    for name in ("zoo", "train", "viz"):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        origin = getattr(spec, "origin", None) or ""
        if spec is not None and origin.endswith("__init__.py") and os.path.samefile(
                os.path.dirname(os.path.dirname(origin)), _ROOT):
            continue
        where = origin if origin and origin != "namespace" else (
            ", ".join(getattr(spec, "submodule_search_locations", None) or []) or "nowhere")
        message = (
            f"'{name}' resolves to {where}, not to transfer-zoo's {os.path.join(_ROOT, name)}: "
            f"a local file or folder named '{name}' (or another package of that name) shadows "
            "it. Rename it, run from another folder, or use the transfer-zoo command")
        if sys.argv[:1] == ["-m"]:  # python -m scripts[.X] (argv[0] while it is located)
            print(f"error: {message}", file=sys.stderr)
            raise SystemExit(2)
        raise ImportError(message)


_check_siblings()

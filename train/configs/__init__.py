"""Training recipes: ml_collections ``get_config()`` files (see ``base.py`` for every key).

Each ``<name>.py`` here is a recipe that ``transfer-zoo train --config <name>`` finds by
name (a path to any recipe file still works; ``<name>:<arg>`` passes ``arg`` to its
``get_config``). :func:`recipes` lists them, :func:`resolve` turns a name into its path.
"""

from __future__ import annotations

import ast
import os

HERE = os.path.dirname(os.path.abspath(__file__))
_NOT_RECIPES = {"__init__", "base"}


def recipes() -> dict[str, str]:
    """Recipe name -> the first line of its docstring, for every packaged recipe."""
    out = {}
    for file in sorted(os.listdir(HERE)):
        name, ext = os.path.splitext(file)
        if ext != ".py" or name in _NOT_RECIPES:
            continue
        with open(os.path.join(HERE, file), encoding="utf-8") as f:
            doc = ast.get_docstring(ast.parse(f.read())) or ""
        out[name] = _first_sentence(doc)
    return out


def path(name: str) -> str:
    """The file of the packaged recipe ``name`` (ValueError listing them if unknown)."""
    file = os.path.join(HERE, f"{name}.py")
    if name in _NOT_RECIPES or not os.path.isfile(file):
        raise ValueError(f"no recipe {name!r}; recipes: {', '.join(recipes())}")
    return file


def resolve(value: str) -> str:
    """A ``--config`` value with a recipe name replaced by its packaged file.

    ``malaria`` -> ``.../train/configs/malaria.py``, ``malaria:tfds`` ->
    ``.../malaria.py:tfds``; an existing file (with or without ``:arg``) is kept as it is.
    """
    file, sep, arg = value.partition(":")
    if os.path.isfile(file) or os.path.isfile(value):
        return value
    stem = file[:-3] if file.endswith(".py") and os.sep not in file else file
    if stem and os.sep not in stem and "/" not in stem and os.path.isfile(
            os.path.join(HERE, f"{stem}.py")) and stem not in _NOT_RECIPES:
        return path(stem) + sep + arg
    raise ValueError(f"--config {value!r} is neither a file nor a recipe name; recipes: "
                     f"{', '.join(recipes())} (or a path to a recipe .py file)")


def _first_sentence(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    para = " ".join(doc.strip().split("\n\n")[0].split())
    return para.split(". ")[0].rstrip(".").replace("``", "")

"""``transfer-zoo``: one command, a subcommand per script in ``scripts/``.

    transfer-zoo models
    transfer-zoo draw --model resnet50 --depth 1 --out resnet50.svg
    transfer-zoo train --config malaria --workdir runs/malaria     # a recipe by name
    transfer-zoo train --help                                      # train's own flags

``transfer-zoo <command> ARGS`` runs exactly what ``python -m scripts.<command> ARGS``
runs: the command's module is imported alone (its absl flags, nothing else's) and its
``main`` is run by absl. A ``--config`` flag also takes a packaged recipe's name
(``train/configs/<name>.py``, optionally ``<name>:<arg>``) besides a path.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
_NOT_COMMANDS = {"__init__", "__main__", "main", "cli"}
_HELP = ("-h", "--help", "-help", "--helpshort", "-?")


def commands() -> dict[str, str]:
    """Subcommand -> the first line of its script's docstring (read without importing it:
    each script defines flags at import, and two of them cannot share a process)."""
    out = {}
    for file in sorted(os.listdir(HERE)):
        name, ext = os.path.splitext(file)
        if ext == ".py" and name not in _NOT_COMMANDS:
            with open(os.path.join(HERE, file), encoding="utf-8") as f:
                doc = ast.get_docstring(ast.parse(f.read())) or ""
            out[name] = _first_sentence(doc)
    return out


def usage(prog: str) -> str:
    """The command list, and the recipes ``--config`` knows by name."""
    from train import configs

    width = max(map(len, commands()))
    lines = [f"usage: {prog} <command> [flags]   ({prog} <command> --help: its flags)", "",
             "commands:"]
    lines += [f"  {n:<{width}}  {_short(d)}" for n, d in commands().items()]
    lines += ["", "recipes (transfer-zoo train --config NAME[:ARG], or a path to a .py file):"]
    width = max(map(len, configs.recipes()))
    lines += [f"  {n:<{width}}  {_short(d)}" for n, d in configs.recipes().items()]
    return "\n".join(lines)


def _help(prog: str, module) -> str:
    from absl import flags

    text = [f"usage: {prog} [flags]", "", (module.__doc__ or "").strip(), "", "flags:"]
    text.append(flags.FLAGS.module_help(module) or "  (none)")
    if "config" in flags.FLAGS:
        text.append("  --config.KEY=VALUE: override any key of the recipe "
                    "(train/configs/base.py lists them)")
    shared = sys.modules.get("scripts.cli")  # flags every script shares (--verbose)
    if shared is not None and flags.FLAGS.get_flags_for_module(shared):
        text.append(flags.FLAGS.module_help(shared))
    return "\n".join(text)


def run(argv: list[str] | None = None) -> int:
    """The console entry point: ``transfer-zoo <command> [flags]``."""
    argv = list(sys.argv if argv is None else argv)
    prog = os.path.basename(argv[0]) if argv and argv[0] else "transfer-zoo"
    if prog in ("__main__.py", "main.py"):
        prog = "python -m scripts"
    args = argv[1:]
    if not args or args[0] in (*_HELP, "help", "--helpfull"):
        print(usage(prog))
        return 0 if args else 2
    name, rest = args[0], args[1:]
    known = commands()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        print(f"{prog}: no command {name!r}{hint} Commands: {', '.join(known)}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"scripts.{name}")
    except ImportError as e:  # a shadowed package (scripts/__init__.py), a missing dependency
        print(f"{prog} {name}: {e}", file=sys.stderr)
        return 2

    from absl import app, flags

    if "config" in flags.FLAGS and hasattr(flags.FLAGS["config"].parser, "_lock_config"):
        from scripts import cli

        cli.recipes_by_name(flags.FLAGS["config"])
    options = rest[:rest.index("--")] if "--" in rest else rest
    if any(a in _HELP for a in options):
        print(_help(f"{prog} {name}", module))
        return 0
    sys.argv = [f"{prog} {name}", *rest]  # absl's messages name the program so
    runner = getattr(module, "run", None)  # a script may wrap its main (scripts/cli.py)
    try:
        if callable(runner):
            return runner(sys.argv) or 0
        app.run(module.main, argv=sys.argv)
    except flags.Error as e:  # a bad flag or flag value: one line, as absl's own parser does
        print(f"{prog} {name}: {e} ({prog} {name} --help lists its flags)", file=sys.stderr)
        return 2
    return 0


def _first_sentence(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    para = " ".join(doc.strip().split("\n\n")[0].split())
    return para.split(". ")[0].rstrip(".").replace("``", "")


def _short(text: str, width: int = 76) -> str:
    return text if len(text) <= width else text[:width - 3].rstrip() + "..."


if __name__ == "__main__":
    sys.exit(run())

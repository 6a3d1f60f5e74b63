"""What the command-line scripts share: bad input and ordinary faults as one clear line.

Every script ends with ``run(main)`` (``cli.run``) instead of ``absl.app.run(main)``:
the project's own errors (:class:`train.errors.UserError`, and the ``ValueError``/
``OSError``/``RuntimeError`` that the project's code raises with a message for the user),
a bad ``--config`` override and a full disk are printed as one line, ``error: ...``,
with exit status 2. ``--verbose`` shows the traceback instead. Anything else (a bug) keeps
its traceback.

``scripts/main.py`` (the ``transfer-zoo`` command) calls a script's ``run(argv)``.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable

from absl import app, flags

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_bool("verbose", False, "Show the full traceback of an error.")

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# The project's packages, beside this one in a checkout and in site-packages alike.
PACKAGES = ("zoo", "train", "viz", "scripts")


def _known_model(name: str | None) -> bool:
    import zoo

    if name is not None:
        try:
            zoo.spec(name)
        except ValueError as e:  # its message lists the close matches
            raise flags.ValidationError(str(e)) from None
    return True


class _quiet_threads:
    """``sys.excepthook``/``sys.unraisablehook`` that print an exception raised outside the
    main thread (a native library's callback thread: tensorstore's, when orbax's event loop
    has already closed after a failed write) as one warning line, and nothing once the error
    line is out; the main thread's exceptions keep their traceback."""

    ended = False

    def __init__(self, hook):
        self.hook = hook

    def __call__(self, *args):
        import threading

        if threading.current_thread() is threading.main_thread():
            return self.hook(*args)
        kind, value = (args[0].exc_type, args[0].exc_value) if len(args) == 1 else args[:2]
        if not _quiet_threads.ended:
            print(f"warning: a background thread failed: {kind.__name__}: {value}",
                  file=sys.stderr)


def check_model_flag(name: str = "model") -> None:
    """Validate flag ``name`` as a registered model (unset passes: mark it required)."""
    flags.register_validator(name, _known_model)


def recipes_by_name(flag) -> None:
    """Let a config-file flag take a packaged recipe's name (``train/configs/<name>.py``,
    ``NAME:ARG`` passing ARG to its ``get_config``) besides a path, and list the recipes in
    its help. Applying it twice changes nothing."""
    from train import configs

    if getattr(flag.parser, "recipes_by_name", False):
        return
    parse = flag.parser.parse
    flag.parser.parse = lambda value: parse(configs.resolve(value))
    flag.parser.recipes_by_name = True
    flag.help = (f"{flag.help.rstrip('.')}; or a recipe name: {', '.join(configs.recipes())} "
                 "(NAME:ARG passes ARG to its get_config).")


def _chain(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _ours(e: BaseException) -> bool:
    """Whether ``e`` was raised by this project's code: its last frame is in one of the
    project's packages (checked out or installed), not in a library."""
    tb, last = e.__traceback__, None
    while tb is not None:
        last, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    if last is None:
        return False
    last = os.path.abspath(last)
    return any(last.startswith(os.path.join(ROOT, package) + os.sep) for package in PACKAGES)


def one_line(text: str, limit: int = 800) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _message(e: BaseException) -> str:
    if e.args and isinstance(e.args[0], BaseException):  # wrapped (ml_collections does)
        return _message(e.args[0])
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    return str(e) or type(e).__name__


def explain(e: BaseException) -> str | None:
    """The one line for an error a user can fix; None for anything else (a bug)."""
    from train.errors import UserError

    for x in _chain(e):
        full = isinstance(x, OSError) and x.errno in DISK_FULL
        if full or "No space left on device" in str(x) or "File too large" in str(x):
            where = f" writing {x.filename}" if getattr(x, "filename", None) else ""
            why = (os.strerror(x.errno) if isinstance(x, OSError) and x.errno
                   else "No space left on device")
            return (f"disk full{where} ({why}): free some space or use another --workdir or "
                    "--out, then run the same command again (a training run resumes from its "
                    "newest complete checkpoint)")
    if isinstance(e, UserError):
        return one_line(_message(e))
    if isinstance(e, ValueError | OSError | RuntimeError | KeyError) and _ours(e):
        return one_line(_message(e))
    return None


def _no_traceback(record: logging.LogRecord) -> bool:
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True


def _verbose(argv: list[str]) -> bool:
    return any(a in ("--verbose", "-verbose", "--verbose=true", "--verbose=1") for a in argv)


def _parse(argv: list[str]) -> list[str]:
    """absl's flag parsing, a failure (a bad flag, a ``--config`` file or override that
    does not load) as one line and exit status 2."""
    try:
        return FLAGS(argv)
    except flags.Error as e:  # a flag's own check (a validator, a required flag, a type)
        if _verbose(argv):
            raise
        print(f"error: {one_line(str(e))} (--helpfull lists the flags)", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # noqa: BLE001
        if _verbose(argv):
            raise
        text = one_line(_message(e))
        if isinstance(e, AttributeError | KeyError) and "config." in " ".join(argv):
            text = (f"unknown --config key {text} (train/configs/base.py lists the keys)")
        print(f"error: {text}", file=sys.stderr)
        sys.exit(2)


def run(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> None:
    """``absl.app.run(main)`` with the project's errors as one line and exit status 2."""

    def wrapped(args: list[str]) -> int | None:
        try:
            return main(args)
        except (SystemExit, KeyboardInterrupt, app.UsageError):
            raise
        except Exception as e:  # noqa: BLE001
            line = explain(e)
            if line is None or FLAGS.verbose:
                raise
            # the process is ending: what libraries' threads say from now on is noise (orbax's
            # unfinished writes after a full disk), so the error stays the last line
            logging.disable(logging.CRITICAL)
            _quiet_threads.ended = True
            print(f"error: {line}", file=sys.stderr, flush=True)
            return 2

    if not _verbose(sys.argv if argv is None else argv):
        logging.raiseExceptions = False  # a full disk: no "Logging error" tracebacks
        from absl import logging as absl_logging

        # libraries' background threads (orbax) log their failures with tracebacks before
        # the error reaches this process's main thread: their message lines are enough
        absl_logging.get_absl_handler().addFilter(_no_traceback)
        sys.excepthook = _quiet_threads(sys.excepthook)
        sys.unraisablehook = _quiet_threads(sys.unraisablehook)
    app.run(wrapped, argv=argv, flags_parser=_parse)

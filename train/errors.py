"""The project's own errors: things a user can fix, said in one line (what, why, the fix).

The command-line entry points (``scripts/cli.py``) print a :class:`UserError` as one line
and exit with status 2; ``--verbose`` shows the traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, files or machine, with its fix in the message."""


class WorkdirError(UserError, ValueError):
    """A workdir that does not fit the command: another run's, a changed config or data."""


class WorkdirBusy(UserError):
    """Another process holds the workdir's lock."""


class CheckpointError(UserError, OSError):
    """No readable checkpoint (each one tried is named)."""


class ImageError(UserError, OSError):
    """An image file that cannot be decoded (the file is named)."""

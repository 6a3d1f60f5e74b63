"""Choices read when a function is traced: an environment variable, overridden for the code
in a ``with`` block by a context manager (a contextvar, so threads and async tasks each see
their own). ``zoo.backend.conv.use_impl`` (``$ZOO_CONV_IMPL``) and ``zoo.backend.native.use_mode``
(``$ZOO_NATIVE``) are two."""

from __future__ import annotations

import contextlib
import contextvars
import os


class Setting:
    """``$env`` (one of ``choices``; ``default`` when unset), or :meth:`use`'s value."""

    def __init__(self, env: str, choices: tuple[str, ...], default: str):
        self.env, self.choices, self.default = env, choices, default
        self._override: contextvars.ContextVar[str | None] = contextvars.ContextVar(
            env.lower(), default=None)

    def get(self) -> str:
        value = self._override.get() or os.environ.get(self.env, self.default)
        if value not in self.choices:
            raise ValueError(f"{self.env}={value!r} is not one of {self.choices}")
        return value

    @contextlib.contextmanager
    def use(self, value: str):
        """Within the block, :meth:`get` gives ``value`` whatever ``$env`` says."""
        if value not in self.choices:
            raise ValueError(f"{value!r} (for {self.env}) is not one of {self.choices}")
        token = self._override.set(value)
        try:
            yield
        finally:
            self._override.reset(token)

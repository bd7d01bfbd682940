"""Errors that name the file and what is wrong with it."""

from __future__ import annotations

from pathlib import Path


class Pretrain3DError(Exception):
    """Base class of every error pretrain3d raises on purpose."""


class DataError(Pretrain3DError):
    """A data file is missing, truncated, corrupt or inconsistent.

    The message always starts with the offending path so a user can find it.
    """

    def __init__(self, path: str | Path, problem: str, hint: str | None = None):
        self.path = Path(path)
        self.problem = problem
        self.hint = hint
        msg = f"{self.path}: {problem}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)

    def __reduce__(self):
        # Rebuild from the fields, so the error survives crossing a process boundary (workers).
        return (type(self), (self.path, self.problem, self.hint))


class ConfigError(Pretrain3DError):
    """params.yaml (or an overlay) does not validate."""

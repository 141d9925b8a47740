"""User-facing errors.

Every mistake a user can make (a missing or corrupt file, a PET/CT grid mismatch, an empty
mask, a prompt outside the volume, a checkpoint with wrong keys or one that would execute
code when unpickled) raises a :class:`SamL1dflError`.  The command line prints its message
as one line (``error: <file>: <problem>``) and exits with status 2; Python callers can catch
it, or ``ValueError`` for the input errors.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, NoReturn


class SamL1dflError(Exception):
    """Base class of the errors that the CLI reports as a single line."""


class InputError(SamL1dflError, ValueError):
    """Something the user gave us is unusable. The message names the file and the problem."""

    def __init__(self, path: "str | os.PathLike | None", problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        msg = problem if self.path is None else f"{self.path}: {problem}"
        super().__init__(msg)


class CheckpointError(InputError):
    """A checkpoint is unreadable, unsafe to unpickle, or does not fit the model."""


class PromptError(InputError):
    """A prompt file is malformed or its prompts do not fit the image."""


class ConfigError(InputError):
    """A configuration file or override is invalid."""


def run_script(main: "Callable[[], int | None]") -> NoReturn:
    """Run a script's ``main()`` and exit with its status; a user mistake (:class:`SamL1dflError`)
    prints one ``error:`` line and exits 2 (what ``sam-l1dfl`` itself does)."""
    try:
        code = main()
    except SamL1dflError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code or 0)


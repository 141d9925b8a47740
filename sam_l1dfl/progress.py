"""Progress display, one rule for the whole package: a bar on a terminal, plain lines in a log.

:func:`progress` is the one factory every stage uses (training, embedding and crop caches,
inference, evaluation, the CNN, export).  It returns

* a ``tqdm`` bar when the stream (standard error) is a terminal;
* a :class:`PlainProgress` when it is not (a log file, a pipe, a batch job): the same ``tqdm``
  interface, but every line it writes ends in a newline and none holds a ``\\r`` or a cursor
  movement: one line when the stage starts, at most one every ``interval`` seconds while it runs
  (default 30), and one when it ends;
* a disabled ``tqdm`` (writes nothing) when ``enabled`` is false (``--quiet``), or on processes
  other than the local main one (pass ``enabled=... and accelerator.is_local_main_process``).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable

from tqdm import tqdm

#: Seconds between two plain progress lines.
PLAIN_INTERVAL = 30.0
_PLAIN_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}{postfix}]"


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (a ``\\r`` bar can redraw itself there)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class PlainProgress(tqdm):
    """A ``tqdm`` that writes whole lines (for logs): at the start, every ``interval`` seconds at
    most, and at the end; never ``\\r``."""

    def __init__(self, *args, interval: float = PLAIN_INTERVAL, **kwargs):
        self._interval = float(interval)
        self._last_line = None  # time of the last line written
        self._last_n = None
        kwargs.setdefault("bar_format", _PLAIN_FORMAT)
        kwargs.setdefault("mininterval", min(self._interval, 1.0))
        super().__init__(*args, **kwargs)

    def _line(self) -> None:
        self.fp.write(str(self).strip() + "\n")
        self.fp.flush()
        self._last_line, self._last_n = time.monotonic(), self.n

    def display(self, msg=None, pos=None):  # tqdm calls this on every refresh
        if msg == "":  # a request to erase the bar: there is none
            return False
        if self._last_line is None or time.monotonic() - self._last_line >= self._interval:
            self._line()
        return True

    def clear(self, nolock=False):  # nothing to erase between lines (tqdm.write calls this)
        return None

    def close(self):
        if not self.disable and self._last_n != self.n:
            self._line()
        self.leave = False  # tqdm's own close would add a blank line or a '\r'
        super().close()


def progress(iterable: "Iterable | None" = None, *, enabled: bool = True, file=None,
             interval: float = PLAIN_INTERVAL, **kwargs) -> tqdm:
    """A progress bar over ``iterable`` (or a manual one: ``total=``, ``.update(n)``).

    ``kwargs`` are ``tqdm``'s (``desc``, ``total``, ``unit``, ``initial``, ...).  See the module
    docstring for what is drawn where; ``file`` defaults to standard error.
    """
    stream = sys.stderr if file is None else file
    if not enabled:
        return tqdm(iterable, disable=True, **{k: v for k, v in kwargs.items() if k in ("total", "initial")})
    if is_terminal(stream):
        kwargs.setdefault("dynamic_ncols", True)
        return tqdm(iterable, file=stream, **kwargs)
    kwargs.pop("dynamic_ncols", None)
    return PlainProgress(iterable, file=stream, interval=interval, **kwargs)


__all__ = ["PLAIN_INTERVAL", "PlainProgress", "is_terminal", "progress"]

"""The one parser of ``--device`` (``sam-l1dfl infer``, ``infer-auto``, ``finetune``).

:func:`parse_device` accepts ``cpu``, ``cuda``, ``cuda:N``, ``gpu`` (meaning ``cuda``) and ``mps``,
in any case, and refuses anything else, or a device this machine does not have, with one
:class:`~sam_l1dfl.errors.InputError` line.  ``None`` stays ``None`` (each stage's default:
CUDA when available, else the CPU).

:func:`cpu_threads` sets torch's CPU thread count for a block and puts it back afterwards (a job
run in-process must not leave the caller's process on another thread count).

torch is imported on first use, so light commands (the sweep's planning and status) can use this
module without loading it.
"""

from __future__ import annotations

import contextlib
import re

from sam_l1dfl.errors import InputError

DEVICE_NAMES = ("cpu", "cuda", "cuda:N", "gpu", "mps")

_CUDA = re.compile(r"(?:cuda|gpu)(?::(\d+))?")


def parse_device(spec: "str | None") -> "str | None":
    """``spec`` as a ``torch.device`` string (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``)."""
    if spec is None:
        return None
    import torch

    s = str(spec).strip().lower()
    if s == "cpu":
        return "cpu"
    if s == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(None, f"--device {spec}: MPS is not available on this machine")
        return "mps"
    m = _CUDA.fullmatch(s)
    if m is None:
        raise InputError(None, f"--device {spec}: not a device; use one of {', '.join(DEVICE_NAMES)}")
    if not torch.cuda.is_available():
        raise InputError(None, f"--device {spec}: CUDA is not available on this machine; use --device cpu")
    if m.group(1) is None:
        return "cuda"
    index, n = int(m.group(1)), torch.cuda.device_count()
    if index >= n:
        raise InputError(None, f"--device {spec}: this machine has {n} CUDA device(s) (cuda:0 to cuda:{n - 1})")
    return f"cuda:{index}"


@contextlib.contextmanager
def cpu_threads(n: "int | None"):
    """``torch.set_num_threads(n)`` inside the block, the previous count after it (``n`` None or
    0: unchanged)."""
    if not n:
        yield
        return
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(prev)


__all__ = ["DEVICE_NAMES", "cpu_threads", "parse_device"]

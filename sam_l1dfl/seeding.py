"""Seeds derived from names and numbers: the one :func:`seed_of` of the package.

Randomness that must not depend on how a batch is split over processes, nor on a resume (the
training clicks, crop jitter, augmentation) seeds a ``torch.Generator`` per item from
``seed_of("what", seed, epoch, index)``.  It lives here, below ``prompts`` and ``training``, so
that both can use it without importing each other.
"""

from __future__ import annotations

import hashlib
from typing import Any


def seed_of(*parts: Any) -> int:
    """A 63-bit seed from ``parts`` (SHA-256 of their ``repr``): stable across runs and machines."""
    h = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


__all__ = ["seed_of"]

"""Sessions and their leases, as nnInteractive's remote protocol describes them.

A client ``/claim`` s a session and gets a lease token, which rides on every later request in the
``X-Lease-Token`` header.  At most ``max_sessions`` leases exist at once (a claim past that is
refused: 503).  A session is reaped, and its token answered with 410 from then on, when either
clock runs out:

- **idle**: no user action (an image, a click, a reset, ...) for ``idle_timeout`` seconds;
  heartbeats do not count;
- **liveness**: no request at all, heartbeats included, for ``liveness_timeout`` seconds (a
  crashed client).

A timeout of 0 turns that clock off.  Each lease holds its own
:class:`~sam_l1dfl.inference.interactive.InteractiveSession` and a lock, so one session's calls
run one at a time while other sessions go on.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .wire import WireError


#: ``remaining_seconds`` of a server whose idle clock is off.
NEVER = 1e9


@dataclass
class Lease:
    """One claimed session: its token, session object, lock, clocks and target buffer (shape, dtype)."""

    token: str
    session: object
    created: float
    last_active: float
    last_seen: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    target: "tuple[tuple[int, ...], str] | None" = None


class LeaseRegistry:
    """The leases of one server; ``factory()`` makes a new session, ``clock`` tells the time."""

    def __init__(self, factory: Callable[[], object], max_sessions: int = 1, idle_timeout: float = 600.0,
                 liveness_timeout: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 log: Callable[[str], None] = lambda msg: None):
        self.factory = factory
        self.max_sessions = int(max_sessions)
        self.idle_timeout = float(idle_timeout)
        self.liveness_timeout = float(liveness_timeout)
        self.clock = clock
        self.log = log
        self._leases: dict[str, Lease] = {}
        self._mu = threading.Lock()

    def __len__(self) -> int:
        return len(self._leases)

    def leases(self) -> list[Lease]:
        with self._mu:
            return list(self._leases.values())

    def claim(self) -> Lease:
        """A new lease; 503 at capacity (after reaping what has expired)."""
        self.reap()
        with self._mu:
            if len(self._leases) >= self.max_sessions:
                raise WireError(503, f"the server is at capacity ({self.max_sessions} session(s)); try again later")
            now = self.clock()
            lease = Lease(secrets.token_hex(16), self.factory(), now, now, now)
            self._leases[lease.token] = lease
            n = len(self._leases)
        self.log(f"session {lease.token[:8]} claimed ({n}/{self.max_sessions})")
        return lease

    def get(self, token: "str | None", *, active: bool = False, seen: bool = True) -> Lease:
        """The lease of ``token`` (410 when unknown or reaped); marks it seen, and active with ``active``."""
        self.reap()
        with self._mu:
            lease = self._leases.get(token or "")
        if lease is None:
            raise WireError(410, "lease token missing" if not token else "lease expired or unknown")
        now = self.clock()
        if seen:
            lease.last_seen = now
        if active:
            lease.last_active = now
        return lease

    def release(self, token: "str | None") -> bool:
        with self._mu:
            lease = self._leases.pop(token or "", None)
        if lease is not None:
            self.log(f"session {lease.token[:8]} released ({len(self._leases)}/{self.max_sessions})")
        return lease is not None

    def remaining(self, lease: Lease) -> float:
        """Seconds until the idle reap (:data:`NEVER` when that clock is off: JSON has no infinity)."""
        if self.idle_timeout <= 0:
            return NEVER
        return max(0.0, self.idle_timeout - (self.clock() - lease.last_active))

    def _expired(self, lease: Lease, now: float) -> "str | None":
        if self.idle_timeout > 0 and now - lease.last_active > self.idle_timeout:
            return f"idle for more than {self.idle_timeout:g} s"
        if self.liveness_timeout > 0 and now - lease.last_seen > self.liveness_timeout:
            return f"no request for more than {self.liveness_timeout:g} s"
        return None

    def reap(self) -> list[str]:
        """Drop the expired leases; their tokens."""
        now = self.clock()
        with self._mu:
            gone = {t: why for t, l in self._leases.items() if (why := self._expired(l, now))}
            for t in gone:
                del self._leases[t]
        for t, why in gone.items():
            self.log(f"session {t[:8]} reaped: {why}")
        return list(gone)


__all__ = ["NEVER", "Lease", "LeaseRegistry"]

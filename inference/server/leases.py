"""Leases: which client holds which session, and when a session is given up.

`claim` hands out a random token (the client sends it in `X-Lease-Token`), or refuses when every slot is
taken (503). A session goes when its client releases it, when no real interaction came for the idle
timeout, or when nothing at all came (not even a heartbeat) for the liveness timeout: a crashed client
frees its slot quickly. A request on a token that is gone, or was never given, gets 410.
"""
from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .wire import ClientError

S = TypeVar("S")


@dataclass
class Lease(Generic[S]):
    session: S
    last_active: float  # the last real interaction: the idle timeout counts from here
    last_seen: float  # the last request of any kind, heartbeats included: the liveness timeout counts from here
    lock: threading.Lock = field(default_factory=threading.Lock)  # one request of a session at a time


class Leases(Generic[S]):
    def __init__(self, new_session: Callable[[], S], max_sessions: int, idle_timeout: float,
                 liveness_timeout: float, clock: Callable[[], float] = time.monotonic):
        self.new_session, self.max_sessions = new_session, max_sessions
        self.idle_timeout, self.liveness_timeout = idle_timeout, liveness_timeout
        self.clock = clock
        self._leases: dict[str, Lease[S]] = {}
        self._guard = threading.Lock()

    def __len__(self) -> int:
        with self._guard:
            return len(self._leases)

    def claim(self) -> str:
        """A new session's token; ClientError 503 when the server is full."""
        self.sweep()
        with self._guard:
            if len(self._leases) >= self.max_sessions:
                raise ClientError(503, f"server is at capacity ({self.max_sessions} sessions): try again later")
            token = secrets.token_hex(16)
            now = self.clock()
            self._leases[token] = Lease(self.new_session(), now, now)
            return token

    def get(self, token: str | None, active: bool = True) -> Lease[S]:
        """The lease of `token`, marked seen (and active: a real interaction); ClientError 410 when it is gone."""
        lease = self.peek(token)
        now = self.clock()
        lease.last_seen = now
        if active:
            lease.last_active = now
        return lease

    def peek(self, token: str | None) -> Lease[S]:
        """The lease of `token` without marking it; ClientError 410 when it is gone or expired."""
        if not token:
            raise ClientError(410, "lease token missing: claim a session first (POST /claim)")
        with self._guard:
            lease = self._leases.get(token)
            if lease is not None and self._expired(lease, self.clock()):
                del self._leases[token]
                lease = None
        if lease is None:
            raise ClientError(410, "lease expired or unknown: claim a new session")
        return lease

    def release(self, token: str | None) -> bool:
        with self._guard:
            return self._leases.pop(token or "", None) is not None

    def sweep(self) -> int:
        """Drop idle and dead sessions; how many went."""
        now = self.clock()
        with self._guard:
            gone = [token for token, lease in self._leases.items() if self._expired(lease, now)]
            for token in gone:
                del self._leases[token]
        return len(gone)

    def remaining(self, lease: Lease[S]) -> float:
        """Seconds until the idle timeout."""
        return max(0.0, self.idle_timeout - (self.clock() - lease.last_active))

    def _expired(self, lease: Lease[S], now: float) -> bool:
        return now - lease.last_seen > self.liveness_timeout or now - lease.last_active > self.idle_timeout

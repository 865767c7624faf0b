"""Time, as services read it: the system clock, or one a test moves by hand.

Every rule with a deadline (quota periods, approval expiry, elevation
lifetimes, reservations, maintenance windows, rate-limit refills) reads the
time from a :class:`Clock` handed to its service, never from
``datetime.now`` directly, so tests drive expiries exactly with a
:class:`ManualClock` instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for rate limits and waits)."""
        ...


class SystemClock:
    """The machine's clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK: Clock = SystemClock()


class ManualClock:
    """A clock that moves only when told to (tests). Thread-safe.

    ``monotonic()`` moves with ``now()``: advancing by ten seconds advances
    both by ten seconds.
    """

    def __init__(self, start: datetime | None = None) -> None:
        moment = start or datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
        if moment.tzinfo is None:
            raise ValueError("a ManualClock needs an aware start time")
        self._lock = threading.Lock()
        self._now = moment.astimezone(UTC)
        self._monotonic = 1000.0

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._monotonic

    def advance(self, seconds: float = 0.0, **delta: float) -> datetime:
        """Move forward by ``seconds`` (plus any ``timedelta`` keywords: ``minutes=5``)."""
        step = timedelta(seconds=seconds, **delta)
        if step < timedelta(0):
            raise ValueError("a clock only moves forward")
        with self._lock:
            self._now += step
            self._monotonic += step.total_seconds()
            return self._now

    def set(self, moment: datetime) -> datetime:
        """Jump forward to ``moment``."""
        if moment.tzinfo is None:
            raise ValueError("pass an aware datetime")
        return self.advance((moment - self.now()).total_seconds())

"""Checkpoints inside a sandbox child, for measuring where a job's time goes.

Off unless the parent asked for them (``Sandbox(trace=...)``, which only
benchmarks and diagnostics do). When on, a child records
``time.perf_counter_ns()`` at named points and sends them back beside its
answer; the parent hands them to its trace callback and never puts them in a
job's result. ``perf_counter_ns`` reads ``CLOCK_MONOTONIC`` on Linux, one clock
for every process, so the child's checkpoints line up with the parent's.

State is per process: each sandbox child is a fresh process, and the
forkserver never turns tracing on, so no checkpoint outlives its job.
"""

from __future__ import annotations

import time

#: At most this many checkpoints are kept (and accepted by the parent).
MAX_CHECKPOINTS = 64

_checkpoints: list[tuple[str, int]] | None = None


def enable() -> None:
    """Start recording in this process."""
    global _checkpoints
    _checkpoints = []


def checkpoint(name: str) -> None:
    """Record ``name`` now; nothing when tracing is off."""
    if _checkpoints is not None and len(_checkpoints) < MAX_CHECKPOINTS:
        _checkpoints.append((name, time.perf_counter_ns()))


def recorded() -> list[tuple[str, int]] | None:
    """What was recorded so far; None when tracing is off."""
    return None if _checkpoints is None else list(_checkpoints)

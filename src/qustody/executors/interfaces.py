"""The execution plane's interfaces.

A :class:`Backend` is what runs a circuit: a local simulator, a noisy
emulator, a provider's QPU adapter, a Ray task. Its ``run`` is called INSIDE a
sandbox child process, never in the control plane, so an implementation must
be picklable (the sandbox sends the backend object to the child when it starts
it; the job's data travels separately, as JSON) and must not rely on state
created in the parent after start-up (database handles, keys, tokens).

A backend may also define ``warm_up(idle: Callable[[], bool]) -> None``: the
sandbox calls it in a process started before its job is known (a spare),
after hardening and before any request is read, so that the job does not pay
for first-use costs. It must work only on constants of the server (never on
anything a job or tenant sent), leave nothing a job could observe but warmer
caches, and return as soon as ``idle()`` is false (a job is waiting).

An :class:`Executor` is what the control plane calls: it takes one job's
:class:`~qustody.domain.models.ExecutionRequest`, runs it on a backend in
isolation and returns an outcome; it never raises for a job's own failure.
"""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable

from qustody.domain.models import (
    BackendInfo,
    ExecutionFailure,
    ExecutionRequest,
    ExecutionResult,
)


@runtime_checkable
class Backend(Protocol):
    """A target that executes circuits; see the module docstring."""

    @property
    def info(self) -> BackendInfo:
        """What the catalogue shows and what validation checks against."""
        ...

    def run(self, request: ExecutionRequest) -> ExecutionResult:
        """Execute one job. Called in the sandbox child.

        Raises :class:`~qustody.executors.errors.BackendError` for a failure
        the backend understands (it becomes an ``ExecutionFailure`` with that
        code); anything else becomes ``execution_error``.
        """
        ...


class Executor(Protocol):
    """Runs jobs in isolation; thread-safe."""

    def execute(
        self,
        request: ExecutionRequest,
        cancel_event: threading.Event | None = None,
    ) -> ExecutionResult | ExecutionFailure:
        """Run one job; setting ``cancel_event`` stops it (code ``cancelled``)."""
        ...

    def close(self) -> None:
        """Stop running jobs and release processes; idempotent."""
        ...

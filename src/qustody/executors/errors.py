"""Errors of the execution plane.

Two kinds live here:

* :class:`QustodyError` subclasses that reach a caller (an unknown backend
  name, a sandbox that was shut down);
* plain exceptions that never leave the execution plane: they are raised
  inside a sandbox child or a parser process and turned into an
  :class:`~qustody.domain.models.ExecutionFailure` or a jobs error by the code
  that owns that boundary.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from qustody.domain.errors import QustodyError


class FailureCode(StrEnum):
    """Stable codes of :class:`~qustody.domain.models.ExecutionFailure`."""

    #: The job ran past its wall-clock limit and was killed by the parent.
    TIMEOUT = "sandbox_timeout"
    #: The job used up its CPU-seconds limit (``RLIMIT_CPU``).
    CPU_LIMIT = "sandbox_cpu_limit"
    #: The job needed more memory than its budget allows.
    MEMORY_LIMIT = "sandbox_memory_limit"
    #: The sandbox process died without a result (signal, abort, segfault).
    CRASHED = "sandbox_crashed"
    #: The backend refused or failed the job (bad circuit, simulator error).
    EXECUTION_ERROR = "execution_error"
    #: The job was cancelled while it ran.
    CANCELLED = "cancelled"
    #: The result was larger than the sandbox may send back.
    OUTPUT_TOO_LARGE = "sandbox_output_too_large"
    #: The sandbox process answered something that is not a well-formed result.
    PROTOCOL_ERROR = "sandbox_protocol_error"
    #: The request names a backend this executor does not have.
    UNKNOWN_BACKEND = "unknown_backend"


class UnknownBackend(QustodyError):
    code = "unknown_backend"
    status = 422
    title = "Unknown backend"

    def __init__(self, name: str, available: Iterable[str]) -> None:
        names = sorted(available)
        listed = ", ".join(names) if names else "none"
        super().__init__(
            f"backend {name!r} does not exist; available backends: {listed}",
            field="backend",
            extra={"backend": name, "available": listed},
        )


class SandboxUnavailable(QustodyError):
    """The sandbox was closed, or its process pool could not be started."""

    code = "sandbox_unavailable"
    status = 503
    title = "Sandbox unavailable"


class BackendError(Exception):
    """Raised by a backend inside the sandbox for a failure it understands.

    The sandbox child reports it as an ``ExecutionFailure`` with ``code`` and
    ``detail``; ``detail`` is written for the person who submitted the job.
    """

    def __init__(self, code: FailureCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class QasmError(Exception):
    """OpenQASM text refused by the scanner or by a Qiskit loader.

    ``message`` never contains text read from a file other than the program
    itself; ``line`` and ``column`` are 1-based, None when not known.
    """

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column

    def located(self) -> str:
        """The message prefixed with its position, as a person reads it."""
        if self.line is None:
            return self.message
        if self.column is None:
            return f"line {self.line}: {self.message}"
        return f"line {self.line}, column {self.column}: {self.message}"


class QasmForbiddenInclude(QasmError):
    """An ``include`` of anything but the version's standard gate library."""

    def __init__(self, name: str, allowed: str, *, line: int, column: int) -> None:
        super().__init__(
            f"include {name!r} is not allowed; only {allowed!r} may be included",
            line=line,
            column=column,
        )
        self.name = name
        self.allowed = allowed

"""Errors the SDK raises.

Every error is a :class:`QustodyClientError` with a stable ``code``: callers match on
``code``, never on message text. Refusals by the gateway arrive as RFC 9457
problem+json documents and become :class:`QustodyAPIError`, which keeps every member
of the document. No error message ever contains the bearer token: the SDK never puts
request headers into an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qustody.client.models import Job


class QustodyClientError(Exception):
    """Root of every error the SDK raises."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


class QustodyAPIError(QustodyClientError):
    """The gateway refused a request (any non-2xx answer).

    ``status``, ``code``, ``title``, ``detail``, ``field``, ``request_id``, ``type`` and
    ``instance`` are the problem+json members; any other members (``job_id`` on a
    rejected submission, ``line`` on a circuit error, ...) are in ``extras``. An answer
    that is not problem+json (a proxy's HTML page, say) still becomes this error, with
    ``code`` ``"http_error"``.
    """

    def __init__(
        self,
        *,
        status: int,
        code: str,
        title: str,
        detail: str,
        field: str | None = None,
        request_id: str | None = None,
        problem_type: str | None = None,
        instance: str | None = None,
        extras: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(code, detail)
        self.status = status
        self.title = title
        self.field = field
        self.request_id = request_id
        self.type = problem_type
        self.instance = instance
        self.extras: Mapping[str, object] = MappingProxyType(dict(extras or {}))

    def __str__(self) -> str:
        text = f"{self.code} (HTTP {self.status}): {self.detail}"
        if self.field:
            text += f" [field: {self.field}]"
        if self.request_id:
            text += f" [request_id: {self.request_id}]"
        return text

    def __repr__(self) -> str:
        return (
            f"QustodyAPIError(status={self.status}, code={self.code!r}, "
            f"detail={self.detail!r}, request_id={self.request_id!r})"
        )


class StepUpRequired(QustodyAPIError):
    """The gateway wants a stronger or more recent sign-in (HTTP 401,
    ``insufficient_user_authentication``, RFC 9470).

    Sign in again asking the identity provider for :attr:`acr_values` and
    :attr:`max_age` (``qustody login --max-age N``), then retry with the new token.
    """

    @property
    def acr_values(self) -> str | None:
        """Space-separated ACR values to ask for, if the gateway named any."""
        value = self.extras.get("acr_values")
        return value if isinstance(value, str) and value else None

    @property
    def max_age(self) -> int | None:
        """How many seconds old the new sign-in may be at most, if limited."""
        value = self.extras.get("max_age")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


class QustodyConnectionError(QustodyClientError):
    """The gateway could not be reached, or did not answer in time."""

    def __init__(self, detail: str) -> None:
        super().__init__("connection_error", detail)


class QustodyProtocolError(QustodyClientError):
    """The gateway answered with something the REST contract does not allow."""

    def __init__(self, detail: str) -> None:
        super().__init__("protocol_error", detail)


class QustodyTimeoutError(QustodyClientError):
    """A job did not reach a terminal state within the time a caller allowed."""

    def __init__(self, job: Job, timeout: float) -> None:
        super().__init__(
            "wait_timeout",
            f"job {job.id} is still {job.state.value} after {timeout:g} s; "
            "wait longer, or cancel it",
        )
        self.job = job
        self.timeout = timeout


class QustodyJobError(QustodyClientError):
    """A job ended without a result (failed, cancelled or rejected)."""

    def __init__(self, job: Job) -> None:
        if job.error is not None:
            code, detail = job.error.code, job.error.detail
        else:
            code, detail = f"job_{job.state.value}", "no detail given"
        super().__init__(code, f"job {job.id} ended {job.state.value}: {detail}")
        self.job = job


class CircuitConversionError(QustodyClientError, ValueError):
    """A circuit cannot be turned into OpenQASM for submission."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(code, detail)

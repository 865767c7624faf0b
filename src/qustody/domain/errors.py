"""The one error root.

Every refusal Qustody makes is a :class:`QustodyError` with a stable ``code``
(part of the public API: clients and tests match on it), an HTTP status and a
``detail`` written for a person: it names the field, the limit and the fix.
The API turns these into RFC 9457 problem+json in exactly one place; the CLI
prints ``detail`` and exits non-zero in exactly one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar


class QustodyError(Exception):
    """Base of every error Qustody reports to a caller."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"

    def __init__(
        self,
        detail: str,
        *,
        field: str | None = None,
        extra: Mapping[str, str | int | None] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.extra: dict[str, str | int | None] = dict(extra or {})


class InvalidRequest(QustodyError):
    code = "invalid_request"
    status = 422
    title = "Invalid request"


class MalformedJSON(QustodyError):
    code = "malformed_json"
    status = 400
    title = "Malformed JSON body"


class NotFound(QustodyError):
    code = "not_found"
    status = 404
    title = "Not found"


class Conflict(QustodyError):
    code = "conflict"
    status = 409
    title = "Conflict"


class AuthenticationError(QustodyError):
    code = "unauthenticated"
    status = 401
    title = "Authentication required"


class Forbidden(QustodyError):
    code = "forbidden"
    status = 403
    title = "Forbidden"


class ServiceUnavailable(QustodyError):
    code = "unavailable"
    status = 503
    title = "Service unavailable"


class ConfigurationError(QustodyError):
    """Refused configuration; raised at start-up, never to an API caller."""

    code = "configuration_error"
    status = 500
    title = "Configuration error"


class InsecureDevelopmentWarning(UserWarning):
    """Emitted when a development-only convenience (local keyring, dev token
    issuer, demo tenant) is constructed. Production mode refuses them."""

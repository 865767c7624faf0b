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
        extra: Mapping[str, str | int | list[str] | None] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.extra: dict[str, str | int | list[str] | None] = dict(extra or {})


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


class StepUpRequired(AuthenticationError):
    """The policy wants a stronger or more recent sign-in (RFC 9470).

    The API answers 401 with :attr:`www_authenticate` as its challenge; the
    problem body carries ``acr_values`` and ``max_age`` too, so a client can
    sign in again asking the identity provider for them.
    """

    code = "insufficient_user_authentication"
    title = "Stronger authentication required"

    def __init__(
        self,
        detail: str,
        *,
        acr_values: str,
        max_age: int | None,
        description: str,
        policy_ids: list[str],
    ) -> None:
        super().__init__(
            detail,
            extra={"acr_values": acr_values, "max_age": max_age, "policy_ids": policy_ids},
        )
        self.acr_values = acr_values
        self.max_age = max_age
        self.description = description

    @property
    def www_authenticate(self) -> str:
        """The ``WWW-Authenticate`` value (RFC 6750 section 3, RFC 9470 section 3)."""
        params = [
            'error="insufficient_user_authentication"',
            f'error_description="{_quotable(self.description)}"',
        ]
        if self.acr_values:
            params.append(f'acr_values="{_quotable(self.acr_values)}"')
        if self.max_age is not None:
            # Quoted, as in RFC 9470's own example (an auth-param may be either form).
            params.append(f'max_age="{self.max_age}"')
        return "Bearer " + ", ".join(params)


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


def _quotable(text: str) -> str:
    """``text`` fit for an RFC 6750 quoted auth-param: printable ASCII without ``"`` or ``\\``."""
    return "".join(c for c in text if " " <= c <= "~" and c not in '"\\')

"""Local accounts in the SDK (embedded mode without an identity provider; development only).

Sign in with a password (and a TOTP code once enrolled) for a Qustody token::

    from qustody.client.accounts import sign_in_local

    signed_in = sign_in_local(url, tenant="demo", username="alice", password=..., totp="123456")
    client = Client(url, signed_in.token)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from qustody import __version__
from qustody.client._http import api_error_from_answer
from qustody.client._transport import Transport
from qustody.client.errors import QustodyConnectionError, QustodyProtocolError


@dataclass(frozen=True, slots=True)
class LocalSignIn:
    """The answer of ``POST /v1/auth/local``. ``repr`` hides the token."""

    token: str
    expires_at: datetime
    principal_id: str
    tenant_id: str
    #: How the sign-in went (RFC 8176): ``pwd``, plus ``otp`` and ``mfa`` with TOTP.
    amr: tuple[str, ...]

    def __repr__(self) -> str:
        return (
            f"LocalSignIn(principal_id={self.principal_id!r}, amr={self.amr!r}, token=<redacted>)"
        )


@dataclass(frozen=True, slots=True)
class TotpEnrollment:
    """A new TOTP secret, shown once. ``repr`` hides it."""

    otpauth_uri: str
    secret: str

    def __repr__(self) -> str:
        return "TotpEnrollment(<redacted>)"


def sign_in_local(
    url: str,
    *,
    tenant: str,
    username: str,
    password: str,
    totp: str | None = None,
    timeout: float = 30.0,
    transport: httpx.BaseTransport | None = None,
) -> LocalSignIn:
    """A Qustody token for a local account's password (and current TOTP code).

    Raises :class:`~qustody.client.errors.QustodyAPIError` with code
    ``totp_required`` when the account has TOTP and no code was given,
    ``invalid_credentials`` when anything is wrong.
    """
    base = url.strip().rstrip("/").removesuffix("/v1")
    body: dict[str, Any] = {"tenant": tenant, "username": username, "password": password}
    if totp:
        body["totp"] = totp
    try:
        with httpx.Client(
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            headers={"User-Agent": f"qustody-sdk/{__version__}", "Accept": "application/json"},
        ) as http:
            response = http.post(f"{base}/v1/auth/local", json=body)
    except httpx.TransportError as exc:
        raise QustodyConnectionError(
            f"cannot reach the gateway at {base}: {type(exc).__name__}"
        ) from None
    if not response.is_success:
        raise api_error_from_answer(
            status=response.status_code,
            reason=response.reason_phrase,
            content_type=response.headers.get("content-type"),
            body=response.content,
            request_id_header=response.headers.get("x-request-id"),
        )
    document = _object(response, "POST /v1/auth/local")
    try:
        return LocalSignIn(
            token=str(document["token"]),
            expires_at=datetime.fromisoformat(str(document["expires_at"])),
            principal_id=str(document["principal_id"]),
            tenant_id=str(document["tenant_id"]),
            amr=tuple(str(a) for a in document.get("amr") or ()),
        )
    except (KeyError, ValueError):
        raise QustodyProtocolError("POST /v1/auth/local answered without a token") from None


def _object(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        document = response.json()
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise QustodyProtocolError(f"{what} answered without a JSON object")
    return document


class AccountMethods(Transport):
    """The :class:`~qustody.client.Client` methods for local-account credentials.

    ``principal`` is ``me``, a principal id, or a principal name of your tenant.
    """

    def set_password(self, password: str, principal: str = "me") -> None:
        """Set a local account's password (yours, or as tenant admin anyone's)."""
        self._request(
            "PUT", f"/principals/{_segment(principal)}/password", json={"password": password}
        )

    def enroll_totp(self, principal: str = "me") -> TotpEnrollment:
        """A new TOTP secret, in force once :meth:`confirm_totp` gets a code from it."""
        answer = self._json("POST", f"/principals/{_segment(principal)}/totp")
        if not isinstance(answer, dict):
            raise QustodyProtocolError("POST /v1/principals/…/totp answered without a JSON object")
        return TotpEnrollment(str(answer.get("otpauth_uri", "")), str(answer.get("secret", "")))

    def confirm_totp(self, code: str, principal: str = "me") -> None:
        self._request(
            "POST", f"/principals/{_segment(principal)}/totp/confirm", json={"code": code}
        )


def _segment(value: str) -> str:
    if not value:
        raise ValueError("a principal must not be empty")
    return quote(value, safe="")

"""Credentials in the SDK: workload token exchange, API keys, trust rules, revocation.

A CI job needs no stored secret::

    from qustody.client import Client
    from qustody.client.identity import exchange_token

    issued = exchange_token(url, ci_oidc_token, audience="acme")
    client = Client(url, issued.access_token)

With a :class:`~qustody.client.dpop.DpopKey`, the token is bound to the key
and the client proves possession on every request::

    key = DpopKey.generate()
    issued = exchange_token(url, ci_oidc_token, audience="acme", dpop_key=key)
    client = Client(url, issued.access_token, dpop_key=key)
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
from qustody.client.dpop import DpopAuth, DpopKey
from qustody.client.errors import QustodyConnectionError, QustodyProtocolError

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 (a URN)
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105


@dataclass(frozen=True, slots=True)
class ExchangedToken:
    """A Qustody token from ``POST /v1/auth/token``. ``repr`` hides the token."""

    access_token: str
    #: ``Bearer``, or ``DPoP`` when bound to the key the exchange was made with.
    token_type: str
    expires_in: int
    scope: str

    def __repr__(self) -> str:
        return (
            f"ExchangedToken(token_type={self.token_type!r}, expires_in={self.expires_in}, "
            f"scope={self.scope!r}, access_token=<redacted>)"
        )


def exchange_token(
    url: str,
    subject_token: str,
    *,
    audience: str | None = None,
    scope: str | None = None,
    subject_token_type: str = JWT_TOKEN_TYPE,
    dpop_key: DpopKey | None = None,
    timeout: float = 30.0,
    transport: httpx.BaseTransport | None = None,
) -> ExchangedToken:
    """Exchange a workload's token (or a person's ID token) for a Qustody token
    (RFC 8693). ``audience`` names the tenant (``acme``) or one of its trust
    rules (``acme/deploy``) when the token's issuer serves several tenants."""
    base = url.strip().rstrip("/").removesuffix("/v1")
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject_token.strip(),
        "subject_token_type": subject_token_type,
    }
    if audience is not None:
        form["audience"] = audience
    if scope is not None:
        form["scope"] = scope
    headers = {"Accept": "application/json", "User-Agent": f"qustody-sdk/{__version__}"}
    # With a DPoP key the token request carries a proof, and the token is bound to it.
    auth = DpopAuth(None, dpop_key) if dpop_key is not None else None
    try:
        with httpx.Client(
            timeout=timeout, transport=transport, follow_redirects=False, auth=auth
        ) as http:
            response = http.post(f"{base}/v1/auth/token", data=form, headers=headers)
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
    try:
        answer = response.json()
        return ExchangedToken(
            access_token=str(answer["access_token"]),
            token_type=str(answer["token_type"]),
            expires_in=int(answer["expires_in"]),
            scope=str(answer.get("scope", "")),
        )
    except (ValueError, KeyError, TypeError):
        raise QustodyProtocolError(
            "POST /v1/auth/token answered without a token response"
        ) from None


def _segment(value: str) -> str:
    if not value:
        raise ValueError("an identifier in a URL path must not be empty")
    return quote(value, safe="")


def _items(document: object, what: str) -> list[dict[str, Any]]:
    items = document.get("items") if isinstance(document, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise QustodyProtocolError(f"the {what} answer has no list of items")
    return items


def _object(document: object, what: str) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise QustodyProtocolError(f"{what} answered without a JSON object")
    return document


class IdentityMethods(Transport):
    """The :class:`~qustody.client.Client` methods for credentials."""

    # -- API keys ------------------------------------------------------------------

    def create_api_key(
        self,
        principal: str,
        name: str,
        *,
        expires_in_days: int,
        scopes: list[str] | None = None,
    ) -> dict[str, Any]:
        """A new API key for ``principal``; the answer's ``key`` is shown this once."""
        body: dict[str, Any] = {
            "principal": principal,
            "name": name,
            "expires_in_days": expires_in_days,
        }
        if scopes is not None:
            body["scopes"] = scopes
        return _object(self._json("POST", "/api-keys", json=body), "POST /v1/api-keys")

    def api_keys(self, principal: str | None = None) -> list[dict[str, Any]]:
        """Your tenant's API keys (or one principal's): names and dates, never secrets."""
        params: dict[str, str | int] = {"principal": principal} if principal else {}
        return _items(self._json("GET", "/api-keys", params=params), "API key list")

    def revoke_api_key(self, key_id: str) -> None:
        self._request("DELETE", f"/api-keys/{_segment(key_id)}")

    # -- trust rules -----------------------------------------------------------------

    def add_trust_rule(
        self,
        name: str,
        *,
        issuer: str,
        audience: str,
        conditions: dict[str, Any],
        principal: str,
        scopes: list[str] | None = None,
        ttl_seconds: int | None = None,
    ) -> dict[str, Any]:
        """Let tokens of ``issuer`` for ``audience`` whose claims meet
        ``conditions`` be exchanged for tokens of the workload ``principal``."""
        body: dict[str, Any] = {
            "name": name,
            "issuer": issuer,
            "audience": audience,
            "conditions": conditions,
            "principal": principal,
        }
        if scopes is not None:
            body["scopes"] = scopes
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        return _object(self._json("POST", "/trust-rules", json=body), "POST /v1/trust-rules")

    def trust_rules(self) -> list[dict[str, Any]]:
        return _items(self._json("GET", "/trust-rules"), "trust rule list")

    def delete_trust_rule(self, rule: str) -> None:
        """Delete a trust rule by id or name."""
        self._request("DELETE", f"/trust-rules/{_segment(rule)}")

    # -- revocation --------------------------------------------------------------------

    def revoke_tokens(
        self, *, principal: str | None = None, issued_before: datetime | None = None
    ) -> dict[str, Any]:
        """Revoke every token and API key of ``principal``, or every one of your
        tenant's issued before ``issued_before`` (an aware datetime); from the
        next request on."""
        if (principal is None) == (issued_before is None):
            raise ValueError("give exactly one of principal and issued_before")
        body: dict[str, Any] = (
            {"principal": principal}
            if principal is not None
            else {"issued_before": _aware(issued_before).isoformat()}
        )
        return _object(self._json("POST", "/tokens:revoke", json=body), "POST /v1/tokens:revoke")


def _aware(value: datetime | None) -> datetime:
    if value is None or value.tzinfo is None:
        raise ValueError("issued_before must be an aware datetime (with a time zone)")
    return value


__all__ = ["DpopKey", "ExchangedToken", "IdentityMethods", "exchange_token"]

"""Webhooks in the SDK: manage endpoints, and verify what a receiver gets.

A receiver checks each request before trusting it (Standard Webhooks)::

    from qustody.client.webhooks import verify, WebhookVerificationError

    try:
        event = verify(body, request.headers, secret="whsec_...")
    except WebhookVerificationError:
        return 400

:func:`verify` needs nothing but the standard library: it imports no server
code and no HTTP library.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from qustody.client._transport import Transport
from qustody.client.errors import QustodyClientError, QustodyProtocolError
from qustody.client.models import _Reader

#: Requests older (or newer) than this are refused: a replayed request
#: carries its old timestamp, which the signature covers.
TOLERANCE_SECONDS = 5 * 60
SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)


class WebhookVerificationError(QustodyClientError):
    """The request was not signed by the gateway with this secret, or is too old."""

    def __init__(self, detail: str) -> None:
        super().__init__("webhook_unverified", detail)


def _key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("the secret is not a whsec_ base64 secret") from None


def verify(
    body: bytes,
    headers: Mapping[str, str],
    secret: str,
    *,
    tolerance_seconds: int = TOLERANCE_SECONDS,
    now: float | None = None,
) -> dict[str, Any]:
    """The event of a webhook request, once its signature is verified.

    ``body`` is the raw request body (bytes, exactly as received);
    ``headers`` its headers (any mapping; names compared without case).
    Raises :class:`WebhookVerificationError` when a header is missing, the
    timestamp is further than ``tolerance_seconds`` from ``now``, or no
    ``v1`` signature of the header's list matches (compared in constant time).
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    message_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (message_id and stamp and signatures):
        raise WebhookVerificationError(
            "the request lacks webhook-id, webhook-timestamp or webhook-signature"
        )
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a number of seconds") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise WebhookVerificationError(
            f"webhook-timestamp is {int(current - timestamp)} seconds off; at most "
            f"{tolerance_seconds} are accepted"
        )
    signed = f"{message_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest())
    matched = False
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        # Every candidate is compared, so the time taken says nothing of which matched.
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            matched = True
    if not matched:
        raise WebhookVerificationError("no webhook-signature matches this secret and body")
    try:
        event = json.loads(body)
    except ValueError:
        raise WebhookVerificationError("the body is not JSON") from None
    if not isinstance(event, dict):
        raise WebhookVerificationError("the body is not a JSON object")
    return event


@dataclass(frozen=True, slots=True)
class Webhook:
    id: str
    url: str
    kinds: tuple[str, ...]
    platform: bool
    description: str | None
    created_at: datetime
    #: Only in the answer to :meth:`WebhookMethods.add_webhook`: shown once.
    secret: str | None = None

    def __repr__(self) -> str:
        return f"Webhook(id={self.id!r}, url={self.url!r}, kinds={self.kinds!r})"

    @classmethod
    def from_json(cls, data: object) -> Webhook:
        r = _Reader(data, "webhook")
        kinds = data.get("kinds") if isinstance(data, Mapping) else None
        if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
            raise QustodyProtocolError("webhook.kinds is not a list of strings")
        return cls(
            id=r.req_str("id"),
            url=r.req_str("url"),
            kinds=tuple(kinds),
            platform=r.req_bool("platform"),
            description=r.opt_str("description"),
            created_at=r.req_time("created_at"),
            secret=r.opt_str("secret"),
        )


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    id: str
    alert_id: str
    kind: str
    attempts: int
    #: ``pending``, ``delivered`` or ``failed``.
    state: str
    last_status: int | None
    last_error: str | None
    next_attempt_at: datetime | None

    @classmethod
    def from_json(cls, data: object) -> WebhookDelivery:
        r = _Reader(data, "webhook delivery")
        return cls(
            id=r.req_str("id"),
            alert_id=r.req_str("alert_id"),
            kind=r.req_str("kind"),
            attempts=r.req_int("attempts"),
            state=r.req_str("state"),
            last_status=r.opt_int("last_status"),
            last_error=r.opt_str("last_error"),
            next_attempt_at=r.opt_time("next_attempt_at"),
        )


class WebhookMethods(Transport):
    """The :class:`~qustody.client.Client` methods for webhook endpoints."""

    def add_webhook(
        self, url: str, *, kinds: list[str] | None = None, description: str | None = None
    ) -> Webhook:
        """Register an endpoint; the answer's ``secret`` is shown this once."""
        body: dict[str, Any] = {"url": url, "kinds": kinds or []}
        if description is not None:
            body["description"] = description
        return Webhook.from_json(self._json("POST", "/webhooks", json=body))

    def list_webhooks(self) -> list[Webhook]:
        """Your tenant's endpoints (never their secrets)."""
        return [Webhook.from_json(i) for i in _items(self._json("GET", "/webhooks"))]

    def remove_webhook(self, webhook_id: str) -> None:
        self._request("DELETE", f"/webhooks/{quote(webhook_id, safe='')}")

    def test_webhook(self, webhook_id: str) -> str:
        """Queue a ``webhook.test`` alert for the endpoint; its delivery id."""
        answer = self._json("POST", f"/webhooks/{quote(webhook_id, safe='')}/test")
        return _Reader(answer, "webhook test").req_str("delivery_id")

    def webhook_deliveries(self, webhook_id: str) -> list[WebhookDelivery]:
        """The endpoint's newest deliveries: pending, delivered or failed."""
        answer = self._json("GET", f"/webhooks/{quote(webhook_id, safe='')}/deliveries")
        return [WebhookDelivery.from_json(i) for i in _items(answer)]


def _items(answer: object) -> list[object]:
    items = answer.get("items") if isinstance(answer, Mapping) else None
    if not isinstance(items, list):
        raise QustodyProtocolError("expected a JSON object with an items list")
    return items

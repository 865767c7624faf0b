"""Signed webhooks: alerts (budget thresholds, break-glass, ...) delivered to
endpoints a tenant admin (or, for platform alerts, a platform admin) registers.

Signing follows the Standard Webhooks scheme: each request carries
``webhook-id`` (the same on every retry of one delivery), ``webhook-timestamp``
(seconds since the epoch) and ``webhook-signature: v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">``, keyed with the endpoint's secret (``whsec_`` and
the key in base64). The secret is made by the gateway, shown once, and stored
sealed under the tenant's ``secret`` key ring (the secrets vault's keys).

Delivery is at least once. A worker's :class:`WebhookDeliverer` (system
scope) matches new alerts to endpoints (``webhook_fanout``), then sends what is
due (``webhook_deliveries``): an attempt has a time limit, follows no
redirect and reads no response body; a failure is retried with exponential
back-off up to a cap, and after ``max_attempts`` the delivery is given up and
shown as failed. ``alert:send`` is recorded once per delivery: delivered, or
given up.

Destinations: ``https`` only, except plain ``http`` to a loopback address in
development mode. Link-local (``169.254.0.0/16``, cloud metadata), loopback,
multicast and unspecified addresses are refused in production, when an
endpoint is added and again before each attempt.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import httpx
from sqlalchemy import delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from qustody.audit.recorder import Actor, Target, record
from qustody.domain.clock import Clock
from qustody.domain.errors import InvalidRequest
from qustody.domain.ids import looks_like_id, new_id
from qustody.domain.models import Principal, RequestContext, Resource
from qustody.domain.periodic import Periodic
from qustody.domain.vocabulary import Action, Role
from qustody.keys.service import KeyScope, KeyService, Purpose
from qustody.policy.guard import Guard, not_found
from qustody.policy.misses import records_misses
from qustody.storage import models as m
from qustody.storage.db import SYSTEM, Database, utc

log = logging.getLogger("qustody.webhooks")

SECRET_FIELD = "webhook_secret"  # noqa: S105 (a field name, not a secret)
SECRET_PREFIX = "whsec_"  # noqa: S105
#: Back-off after the n-th failed attempt: BASE * 2**(n-1), at most CAP.
BACKOFF_BASE_SECONDS = 5.0
BACKOFF_CAP_SECONDS = 3600.0
MAX_ENDPOINTS = 20
MAX_KINDS = 16
_KIND = re.compile(r"[a-z0-9_.*-]{1,64}")
TEST_KIND = "webhook.test"
_ACTOR = Actor.system("webhooks")


# -- signing (pure) ------------------------------------------------------------------------


def new_secret() -> str:
    """A signing secret: ``whsec_`` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<signature>`` for one request (Standard Webhooks)."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def kind_matches(patterns: Iterable[str], kind: str) -> bool:
    """Whether ``kind`` is wanted by an endpoint's ``patterns`` (none: every kind)."""
    wanted = list(patterns)
    return not wanted or any(fnmatch.fnmatchcase(kind, p) for p in wanted)


def backoff(attempts: int) -> float:
    """Seconds to wait after ``attempts`` failed attempts."""
    return float(min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(0, attempts - 1)))


# -- destinations ---------------------------------------------------------------------------


def _refused_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if address.is_link_local:
        return "link-local (cloud metadata services live there)"
    if address.is_loopback:
        return "loopback"
    if address.is_multicast or address.is_unspecified or address.is_reserved:
        return "not a unicast host address"
    return None


def check_destination(url: str, *, production: bool) -> str:
    """``url`` if alerts may be sent there; else an InvalidRequest naming why."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.username or parts.password or not host or parts.fragment:
        raise InvalidRequest(
            "url must be an absolute https URL without user name, password or fragment "
            "(https://alerts.example.com/qustody).",
            field="url",
        )
    try:
        literal: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    loopback = host == "localhost" or (literal is not None and literal.is_loopback)
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback and not production):
        raise InvalidRequest(
            f"url uses {parts.scheme or 'no scheme'!r}; webhooks are sent over https only "
            "(plain http only to a loopback address, in development mode).",
            field="url",
        )
    if not production:
        if literal is not None and literal.is_link_local:
            raise InvalidRequest(
                f"url names {host}, a link-local address; use the receiver's own address.",
                field="url",
            )
        return url
    try:
        resolved = {
            str(info[4][0])
            for info in socket.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
        }
    except (OSError, UnicodeError):
        raise InvalidRequest(
            f"url's host {host!r} does not resolve; check the name.", field="url"
        ) from None
    for text in sorted(resolved):
        why = _refused_address(ipaddress.ip_address(text.split("%", 1)[0]))
        if why is not None:
            raise InvalidRequest(
                f"url's host {host!r} resolves to {text}, which is {why}; alerts are never sent "
                "there. Use a receiver on a routable address.",
                field="url",
            )
    return url


def _check_kinds(kinds: list[str]) -> list[str]:
    if len(kinds) > MAX_KINDS:
        raise InvalidRequest(
            f"kinds has {len(kinds)} patterns; at most {MAX_KINDS} are allowed.", field="kinds"
        )
    for kind in kinds:
        if not _KIND.fullmatch(kind):
            raise InvalidRequest(
                f"kinds has {kind[:80]!r}; a pattern is 1 to 64 of a-z 0-9 . _ - and * "
                "(budget.*, breakglass.invoked).",
                field="kinds",
            )
    return sorted(set(kinds))


# -- the service ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    tenant_id: str
    platform: bool
    url: str
    kinds: list[str]
    description: str | None
    created_at: datetime
    created_by: str


@dataclass(frozen=True, slots=True)
class NewEndpoint:
    endpoint: Endpoint
    #: Shown once: the receiver verifies signatures with it.
    secret: str

    def __repr__(self) -> str:
        return f"NewEndpoint({self.endpoint.id}, <secret redacted>)"


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    alert_id: str
    kind: str
    attempts: int
    #: ``pending``, ``delivered`` or ``failed``.
    state: str
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    failed_at: datetime | None
    last_status: int | None
    last_error: str | None
    created_at: datetime


def _endpoint(row: object) -> Endpoint:
    r = row
    return Endpoint(
        r.id,  # type: ignore[attr-defined]
        r.tenant_id,  # type: ignore[attr-defined]
        bool(r.platform),  # type: ignore[attr-defined]
        r.url,  # type: ignore[attr-defined]
        list(r.kinds),  # type: ignore[attr-defined]
        r.description,  # type: ignore[attr-defined]
        utc(r.created_at),  # type: ignore[attr-defined]
        r.created_by,  # type: ignore[attr-defined]
    )


@dataclass(frozen=True, slots=True)
class _Attempt:
    delivery_id: str
    endpoint_id: str
    tenant_id: str
    alert_id: str
    kind: str
    url: str
    secret: str
    body: bytes
    attempts: int

    def __repr__(self) -> str:
        return f"_Attempt({self.delivery_id}, <secret redacted>)"


class WebhookService:
    def __init__(
        self,
        db: Database,
        guard: Guard,
        keys: KeyService,
        clock: Clock,
        *,
        production: bool,
        timeout_seconds: float = 10.0,
        max_attempts: int = 8,
    ) -> None:
        self._db = db
        self._guard = guard
        self._keys = keys
        self._clock = clock
        self._production = production
        self._timeout = timeout_seconds
        self.max_attempts = max_attempts
        insert_ = sqlite_insert if db.is_sqlite else pg_insert
        self._fanout_insert = insert_(m.WEBHOOK_FANOUT).on_conflict_do_nothing(
            index_elements=["alert_id"]
        )

    # -- endpoints (tenant admins; platform admins for platform alerts) ----------------------

    @staticmethod
    def _resource(caller: Principal) -> tuple[Resource, bool]:
        if Role.PLATFORM_ADMIN in caller.tenant_roles:
            return Resource("platform", "platform", None), True
        return Resource("tenant", caller.tenant_id, caller.tenant_id), False

    def add(
        self,
        caller: Principal,
        request: RequestContext,
        *,
        url: str,
        kinds: list[str],
        description: str | None = None,
    ) -> NewEndpoint:
        """Register an endpoint; its signing secret is returned once."""
        resource, platform = self._resource(caller)
        decision = self._guard.check(caller, Action.WEBHOOK_SET, resource, request)
        check_destination(url, production=self._production)
        patterns = _check_kinds(kinds)
        now = self._clock.now()
        endpoint = Endpoint(
            new_id("whk"), caller.tenant_id, platform, url, patterns, description, now, caller.id
        )
        secret = new_secret()
        with self._db.writing() as connection:
            count = len(
                connection.execute(
                    select(m.WEBHOOK_ENDPOINTS.c.id).where(
                        m.WEBHOOK_ENDPOINTS.c.tenant_id == caller.tenant_id
                    )
                ).all()
            )
            if count >= MAX_ENDPOINTS:
                raise InvalidRequest(
                    f"the tenant has {count} webhook endpoints, the most allowed; remove one "
                    "(`qustody webhook remove`) first.",
                    field="url",
                )
            connection.execute(
                insert(m.WEBHOOK_ENDPOINTS),
                {
                    "id": endpoint.id,
                    "tenant_id": endpoint.tenant_id,
                    "platform": platform,
                    "url": url,
                    "kinds": patterns,
                    "description": description,
                    "created_at": now,
                    "created_by": caller.id,
                },
            )
            self._keys.seal(
                connection,
                KeyScope(caller.tenant_id, None, Purpose.SECRET),
                endpoint.id,
                SECRET_FIELD,
                secret.encode(),
            )
            record(
                connection,
                Action.WEBHOOK_SET,
                actor=Actor.of(caller),
                target=Target("webhook", endpoint.id, caller.tenant_id),
                decision=decision,
                request=request,
                # The host only: a URL's path or query may hold a receiver's token.
                reason=f"endpoint added: host {urlsplit(url).hostname}, kinds "
                f"{','.join(patterns) or '*'}{' (platform alerts)' if platform else ''}",
            )
        return NewEndpoint(endpoint, secret)

    def endpoints(self, caller: Principal, request: RequestContext) -> list[Endpoint]:
        resource, _ = self._resource(caller)
        self._guard.check(caller, Action.WEBHOOK_LIST, resource, request)
        with self._db.reading() as connection:
            rows = connection.execute(
                select(m.WEBHOOK_ENDPOINTS)
                .where(m.WEBHOOK_ENDPOINTS.c.tenant_id == caller.tenant_id)
                .order_by(m.WEBHOOK_ENDPOINTS.c.created_at, m.WEBHOOK_ENDPOINTS.c.id)
            ).all()
        return [_endpoint(r) for r in rows]

    def _own(self, connection: Connection, caller: Principal, endpoint_id: str) -> Endpoint:
        row = (
            connection.execute(
                select(m.WEBHOOK_ENDPOINTS).where(
                    m.WEBHOOK_ENDPOINTS.c.id == endpoint_id,
                    m.WEBHOOK_ENDPOINTS.c.tenant_id == caller.tenant_id,
                )
            ).first()
            if looks_like_id(endpoint_id)
            else None
        )
        if row is None:
            raise not_found("webhook", endpoint_id[:64])
        return _endpoint(row)

    @records_misses(Action.WEBHOOK_DELETE)
    def remove(self, caller: Principal, request: RequestContext, endpoint_id: str) -> None:
        resource, _ = self._resource(caller)
        decision = self._guard.check(caller, Action.WEBHOOK_DELETE, resource, request)
        with self._db.writing() as connection:
            endpoint = self._own(connection, caller, endpoint_id)
            connection.execute(
                delete(m.WEBHOOK_DELIVERIES).where(
                    m.WEBHOOK_DELIVERIES.c.endpoint_id == endpoint.id
                )
            )
            connection.execute(
                delete(m.SEALED_OBJECTS).where(
                    m.SEALED_OBJECTS.c.object_id == endpoint.id,
                    m.SEALED_OBJECTS.c.field == SECRET_FIELD,
                )
            )
            connection.execute(
                delete(m.WEBHOOK_ENDPOINTS).where(m.WEBHOOK_ENDPOINTS.c.id == endpoint.id)
            )
            record(
                connection,
                Action.WEBHOOK_DELETE,
                actor=Actor.of(caller),
                target=Target("webhook", endpoint.id, caller.tenant_id),
                decision=decision,
                request=request,
                reason="endpoint removed; its secret and pending deliveries deleted",
            )

    @records_misses(Action.WEBHOOK_LIST)
    def deliveries(
        self, caller: Principal, request: RequestContext, endpoint_id: str, *, limit: int = 50
    ) -> list[Delivery]:
        """The endpoint's newest deliveries: pending, delivered or failed."""
        resource, _ = self._resource(caller)
        self._guard.check(caller, Action.WEBHOOK_LIST, resource, request)
        d, a = m.WEBHOOK_DELIVERIES, m.ALERTS
        with self._db.reading() as connection:
            self._own(connection, caller, endpoint_id)
            rows = connection.execute(
                select(d, a.c.kind)
                .join(a, a.c.id == d.c.alert_id)
                .where(d.c.endpoint_id == endpoint_id)
                .order_by(d.c.created_at.desc(), d.c.id.desc())
                .limit(max(1, min(limit, 200)))
            ).all()
        return [
            Delivery(
                r.id,
                r.alert_id,
                r.kind,
                r.attempts,
                "delivered" if r.delivered_at else "failed" if r.failed_at else "pending",
                utc(r.next_attempt_at),
                utc(r.delivered_at),
                utc(r.failed_at),
                r.last_status,
                r.last_error,
                utc(r.created_at),
            )
            for r in rows
        ]

    @records_misses(Action.WEBHOOK_SET)
    def test(self, caller: Principal, request: RequestContext, endpoint_id: str) -> str:
        """Queue a ``webhook.test`` alert for this endpoint alone; its delivery id."""
        resource, _ = self._resource(caller)
        decision = self._guard.check(caller, Action.WEBHOOK_SET, resource, request)
        now = self._clock.now()
        alert_id, delivery_id = new_id("alr"), new_id("msg")
        with self._db.writing() as connection:
            endpoint = self._own(connection, caller, endpoint_id)
            connection.execute(
                insert(m.ALERTS),
                {
                    "id": alert_id,
                    "tenant_id": endpoint.tenant_id,
                    "kind": TEST_KIND,
                    "payload": {"endpoint_id": endpoint.id, "requested_by": caller.id},
                    "created_at": now,
                },
            )
            connection.execute(
                insert(m.WEBHOOK_FANOUT),
                {"alert_id": alert_id, "tenant_id": endpoint.tenant_id, "at": now},
            )
            self._queue(connection, delivery_id, endpoint.tenant_id, alert_id, endpoint.id, now)
            record(
                connection,
                Action.WEBHOOK_SET,
                actor=Actor.of(caller),
                target=Target("webhook", endpoint.id, caller.tenant_id),
                decision=decision,
                request=request,
                reason=f"test alert {alert_id} queued",
            )
        return delivery_id

    @staticmethod
    def _queue(
        connection: Connection,
        delivery_id: str,
        tenant_id: str,
        alert_id: str,
        endpoint_id: str,
        now: datetime,
    ) -> None:
        connection.execute(
            insert(m.WEBHOOK_DELIVERIES),
            {
                "id": delivery_id,
                "tenant_id": tenant_id,
                "alert_id": alert_id,
                "endpoint_id": endpoint_id,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            },
        )

    # -- delivery (workers, system scope) -----------------------------------------------------

    def step(self) -> int:
        """Match new alerts to endpoints, then send what is due; attempts made."""
        self.fan_out()
        return self.deliver_due()

    def fan_out(self, limit: int = 200) -> int:
        """Queue a delivery of each new alert to every endpoint that wants it."""
        now = self._clock.now()
        a, f, e = m.ALERTS, m.WEBHOOK_FANOUT, m.WEBHOOK_ENDPOINTS
        queued = 0
        with self._db.writing(scope=SYSTEM) as connection:
            alerts = connection.execute(
                select(a.c.id, a.c.tenant_id, a.c.kind)
                .where(~select(f.c.alert_id).where(f.c.alert_id == a.c.id).exists())
                .order_by(a.c.created_at, a.c.id)
                .limit(limit)
            ).all()
            if not alerts:
                return 0
            endpoints = connection.execute(
                select(e.c.id, e.c.tenant_id, e.c.platform, e.c.kinds)
            ).all()
            for alert in alerts:
                claimed = connection.execute(
                    self._fanout_insert,
                    {"alert_id": alert.id, "tenant_id": alert.tenant_id, "at": now},
                )
                if claimed.rowcount == 0:  # another worker has it
                    continue
                for endpoint in endpoints:
                    mine = (
                        endpoint.platform
                        if alert.tenant_id is None
                        else endpoint.tenant_id == alert.tenant_id
                    )
                    if mine and kind_matches(endpoint.kinds, alert.kind):
                        self._queue(
                            connection,
                            new_id("msg"),
                            endpoint.tenant_id,
                            alert.id,
                            endpoint.id,
                            now,
                        )
                        queued += 1
        return queued

    def deliver_due(self, limit: int = 20) -> int:
        """Send the deliveries whose time has come; attempts made."""
        attempts = self._claim(limit)
        for attempt in attempts:
            status, error = self._send(attempt)
            self._settle(attempt, status, error)
        return len(attempts)

    def _claim(self, limit: int) -> list[_Attempt]:
        now = self._clock.now()
        d, a, e = m.WEBHOOK_DELIVERIES, m.ALERTS, m.WEBHOOK_ENDPOINTS
        # Held for the attempt's time limit and a margin; a worker that dies
        # mid-attempt leaves it to be tried again then.
        lease = now + timedelta(seconds=self._timeout + 30)
        claimed: list[_Attempt] = []
        with self._db.writing(scope=SYSTEM) as connection:
            query = (
                select(
                    d.c.id,
                    d.c.tenant_id,
                    d.c.alert_id,
                    d.c.endpoint_id,
                    d.c.attempts,
                    a.c.kind,
                    a.c.payload,
                    a.c.tenant_id.label("alert_tenant_id"),
                    a.c.created_at.label("alert_created_at"),
                    e.c.url,
                )
                .join(a, a.c.id == d.c.alert_id)
                .join(e, e.c.id == d.c.endpoint_id)
                .where(
                    d.c.delivered_at.is_(None),
                    d.c.failed_at.is_(None),
                    d.c.next_attempt_at <= now,
                )
                .order_by(d.c.next_attempt_at, d.c.id)
                .limit(limit)
            )
            if not self._db.is_sqlite:
                query = query.with_for_update(of=d, skip_locked=True)
            for row in connection.execute(query).all():
                secret = self._keys.open(connection, row.tenant_id, row.endpoint_id, SECRET_FIELD)
                connection.execute(
                    update(d)
                    .where(d.c.id == row.id)
                    .values(attempts=row.attempts + 1, next_attempt_at=lease)
                )
                if secret is None:  # removed in between
                    continue
                body = {
                    "type": row.kind,
                    "timestamp": utc(row.alert_created_at).isoformat(),
                    "data": {
                        "alert_id": row.alert_id,
                        "tenant_id": row.alert_tenant_id,
                        **dict(row.payload),
                    },
                }
                claimed.append(
                    _Attempt(
                        row.id,
                        row.endpoint_id,
                        row.tenant_id,
                        row.alert_id,
                        row.kind,
                        row.url,
                        secret.decode(),
                        json.dumps(body, separators=(",", ":"), sort_keys=True).encode(),
                        row.attempts + 1,
                    )
                )
        return claimed

    def _send(self, attempt: _Attempt) -> tuple[int | None, str | None]:
        """One POST: the status, or why none came. The response body is never read."""
        try:
            check_destination(attempt.url, production=self._production)
        except InvalidRequest as refused:
            return None, refused.detail[:256]
        timestamp = int(self._clock.now().timestamp())
        headers = {
            "content-type": "application/json",
            "user-agent": "Qustody-Webhooks",
            "webhook-id": attempt.delivery_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(attempt.secret, attempt.delivery_id, timestamp, attempt.body),
        }
        try:
            with (
                httpx.Client(
                    timeout=self._timeout, follow_redirects=False, trust_env=False
                ) as client,
                client.stream("POST", attempt.url, content=attempt.body, headers=headers) as sent,
            ):
                status = sent.status_code
        except httpx.TimeoutException:
            return None, f"no answer within {self._timeout:g} seconds"
        except httpx.HTTPError as failed:
            return None, f"could not connect ({type(failed).__name__})"
        if 200 <= status < 300:
            return status, None
        if 300 <= status < 400:
            return status, f"answered {status}, a redirect; redirects are not followed"
        return status, f"answered {status}"

    def _settle(self, attempt: _Attempt, status: int | None, error: str | None) -> None:
        now = self._clock.now()
        d = m.WEBHOOK_DELIVERIES
        with self._db.writing(scope=SYSTEM) as connection:
            if error is None:
                values: dict[str, object] = {"delivered_at": now, "next_attempt_at": None}
            elif attempt.attempts >= self.max_attempts:
                values = {"failed_at": now, "next_attempt_at": None}
            else:
                values = {"next_attempt_at": now + timedelta(seconds=backoff(attempt.attempts))}
            changed = connection.execute(
                update(d)
                .where(d.c.id == attempt.delivery_id, d.c.delivered_at.is_(None))
                .values(last_status=status, last_error=error, **values)
            ).rowcount
            if changed and (error is None or "failed_at" in values):
                record(
                    connection,
                    Action.ALERT_SEND,
                    actor=_ACTOR,
                    outcome="success" if error is None else "failure",
                    target=Target("webhook", attempt.endpoint_id, attempt.tenant_id),
                    reason=(
                        f"alert {attempt.alert_id} ({attempt.kind}) "
                        + (
                            f"delivered as {attempt.delivery_id}"
                            if error is None
                            else f"given up as {attempt.delivery_id}: {error}"
                        )
                        + f" after {attempt.attempts} attempt(s)"
                    )[:512],
                )


class WebhookDeliverer(Periodic):
    """A thread delivering alerts every ``interval`` seconds (run by workers,
    beside the checkpointer). Several may run at once: fan-out and claims
    serialise in the database."""

    def __init__(self, service: WebhookService, interval: float) -> None:
        super().__init__("webhook-deliverer", interval)
        self._service = service

    def round(self) -> None:
        while self._service.step() and not self.stopping:
            pass

    def stop(self, timeout: float = 15.0) -> None:
        super().stop(timeout)


def endpoint_payload(endpoint: Endpoint) -> Mapping[str, object]:
    """An endpoint as the API and CLI show it (never its secret)."""
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "kinds": endpoint.kinds,
        "platform": endpoint.platform,
        "description": endpoint.description,
        "created_at": endpoint.created_at,
        "created_by": endpoint.created_by,
    }

"""Signed webhook delivery to a real HTTP receiver on loopback: delivery and
signature, retry after a 500, giving up, kinds, tenant isolation, and the
secret shown once. Retries are driven by a ManualClock and the delivery
loop's step; nothing sleeps."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import select

from qustody.api.app import Runtime, build_runtime
from qustody.client.webhooks import verify
from qustody.domain.clock import ManualClock
from qustody.domain.errors import Forbidden, InvalidRequest
from qustody.domain.vocabulary import Action
from qustody.governance.alerts import raise_alert
from qustody.governance.webhooks import WebhookService, check_destination
from qustody.storage.db import SYSTEM
from qustody.storage.models import AUDIT_EVENTS
from support import Tenancy, ctx, make_settings, seed


@dataclass
class Receiver:
    url: str
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    #: Statuses to answer, in order; then 204.
    answers: list[int] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            state.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            status = state.answers.pop(0) if state.answers else 204
            self.send_response(status)
            if status in (301, 302):
                self.send_header("location", "http://127.0.0.1:9/elsewhere")
            self.send_header("content-length", "15")
            self.end_headers()
            self.wfile.write(b"receiver's body")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def hooked(tmp_path: Path, database_url: str, clock: ManualClock) -> Iterator[Runtime]:
    settings = make_settings(tmp_path, database_url, webhook_max_attempts=3)
    rt = build_runtime(settings, clock=clock)
    try:
        yield rt
    finally:
        rt.close()


def _service(runtime: Runtime) -> WebhookService:
    assert runtime.services.webhooks is not None
    return runtime.services.webhooks


def _alert(runtime: Runtime, tenant_id: str | None, kind: str, clock: ManualClock) -> str:
    with runtime.services.db.writing(scope=SYSTEM) as connection:
        return raise_alert(
            connection, tenant_id=tenant_id, kind=kind, payload={"percent": 80}, at=clock.now()
        )


def _sends(runtime: Runtime, outcome: str) -> list[str]:
    with runtime.services.db.reading(scope=SYSTEM) as connection:
        return [
            r.reason
            for r in connection.execute(
                select(AUDIT_EVENTS.c.reason).where(
                    AUDIT_EVENTS.c.event_type == Action.ALERT_SEND.value,
                    AUDIT_EVENTS.c.outcome == outcome,
                )
            )
        ]


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_alerts_are_signed_retried_and_kept_to_their_tenant(
    hooked: Runtime, receiver: Receiver, clock: ManualClock
) -> None:
    tenancy: Tenancy = seed(hooked)
    service = _service(hooked)
    created = service.add(tenancy.tenant_admin, ctx(), url=receiver.url, kinds=["budget.*"])
    outsider_admin = tenancy.principal("globex-admin", "globex")
    service.add(outsider_admin, ctx(), url=receiver.url + "/globex", kinds=[])
    acme = tenancy.tenant_admin.tenant_id

    alert_id = _alert(hooked, acme, "budget.threshold", clock)
    _alert(hooked, acme, "breakglass.invoked", clock)  # not a kind acme's endpoint wants
    receiver.answers = [500]
    assert service.step() == 1
    assert len(receiver.received) == 1
    clock.advance(4)
    assert service.step() == 0  # back-off: not yet
    clock.advance(1)
    assert service.step() == 1
    assert len(receiver.received) == 2
    (first_headers, _first_body), (headers, body) = receiver.received
    # The same webhook-id on the retry; a signature the SDK verifies.
    assert first_headers["webhook-id"] == headers["webhook-id"]
    event = verify(body, headers, created.secret, now=clock.now().timestamp())
    assert event["type"] == "budget.threshold"
    assert event["data"]["alert_id"] == alert_id
    assert event["data"]["tenant_id"] == acme
    assert event["data"]["percent"] == 80
    # Globex's endpoint took every kind, yet got none of acme's alerts.
    assert all("/globex" not in h.get("host", "") for h, _ in receiver.received)
    assert len(receiver.received) == 2
    sent = _sends(hooked, "success")
    assert len(sent) == 1
    assert "after 2 attempt(s)" in sent[0]
    deliveries = service.deliveries(tenancy.tenant_admin, ctx(), created.endpoint.id)
    assert [(d.state, d.attempts, d.last_status) for d in deliveries] == [("delivered", 2, 204)]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_delivery_gives_up_after_its_attempts_and_shows_failed(
    hooked: Runtime, receiver: Receiver, clock: ManualClock
) -> None:
    tenancy = seed(hooked)
    service = _service(hooked)
    created = service.add(tenancy.tenant_admin, ctx(), url=receiver.url, kinds=[])
    receiver.answers = [500, 302, 503]
    delivery_id = service.test(tenancy.tenant_admin, ctx(), created.endpoint.id)
    for _ in range(3):
        service.step()
        clock.advance(3600)
    assert service.step() == 0
    assert len(receiver.received) == 3  # the redirect was not followed
    (delivery,) = service.deliveries(tenancy.tenant_admin, ctx(), created.endpoint.id)
    assert delivery.id == delivery_id
    assert delivery.state == "failed"
    assert delivery.attempts == 3
    assert delivery.last_status == 503
    assert "receiver's body" not in (delivery.last_error or "")
    failed = _sends(hooked, "failure")
    assert len(failed) == 1
    assert "given up" in failed[0]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_platform_alerts_go_to_platform_endpoints_and_secrets_never_list(
    hooked: Runtime, receiver: Receiver, clock: ManualClock
) -> None:
    tenancy = seed(hooked)
    service = _service(hooked)
    root = tenancy.principal("root", "platform")
    platform = service.add(root, ctx(), url=receiver.url, kinds=["breakglass.*"])
    assert platform.endpoint.platform
    service.add(tenancy.tenant_admin, ctx(), url=receiver.url + "/acme", kinds=[])
    _alert(hooked, None, "breakglass.invoked", clock)
    service.step()
    assert len(receiver.received) == 1
    headers, body = receiver.received[0]
    assert (
        verify(body, headers, platform.secret, now=clock.now().timestamp())["data"]["tenant_id"]
        is None
    )
    listed = service.endpoints(root, ctx())
    assert [e.id for e in listed] == [platform.endpoint.id]
    assert listed[0].platform
    assert platform.secret not in repr(listed)
    assert platform.secret not in repr(platform)
    # A developer may not manage endpoints; removing deletes the secret with it.
    with pytest.raises(Forbidden, match="may not webhook:list"):
        service.endpoints(tenancy.developer, ctx())
    service.remove(root, ctx(), platform.endpoint.id)
    assert service.endpoints(root, ctx()) == []


def test_destinations_are_https_and_never_link_local() -> None:
    assert check_destination("https://alerts.example.com/x", production=False)
    assert check_destination("http://127.0.0.1:8000/x", production=False)
    for url, production in (
        ("http://alerts.example.com/x", False),
        ("http://127.0.0.1:8000/x", True),
        ("https://169.254.169.254/latest/meta-data", False),
        ("https://169.254.169.254/latest/meta-data", True),
        ("https://user:pw@alerts.example.com/", False),
        ("ftp://alerts.example.com/", False),
    ):
        with pytest.raises(InvalidRequest) as refused:
            check_destination(url, production=production)
        assert refused.value.field == "url"

"""Revoking all of a principal's credentials, or all of a tenant's issued
before a time: refused from the very next request, over HTTP, on SQLite and
PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from qustody.storage import models as m
from support import Tenancy
from workload_support import LiveGateway, auth, live_gateway


@pytest.fixture
def live(tmp_path: Path, database_url: str) -> Iterator[tuple[LiveGateway, Tenancy]]:
    with live_gateway(tmp_path, database_url) as served:
        yield served


def _events(gateway: LiveGateway, request_id: str) -> list[m.AuditEvent]:
    with gateway.services.db.read() as session:
        return list(
            session.scalars(select(m.AuditEvent).where(m.AuditEvent.request_id == request_id))
        )


def test_all_of_a_principal_is_refused_on_the_next_request(
    live: tuple[LiveGateway, Tenancy],
) -> None:
    gateway, tenancy = live
    admin = tenancy.token_for("acme-admin")
    dev_tokens = [tenancy.token_for("acme-dev") for _ in range(2)]
    with gateway.http() as http:
        key = http.post(
            "/v1/api-keys",
            json={"principal": "acme-dev", "name": "laptop", "expires_in_days": 30},
            headers=auth(admin),
        ).json()["key"]
        for credential in [*dev_tokens, key]:
            assert http.get("/v1/projects", headers=auth(credential)).status_code == 200

        answer = http.post("/v1/tokens:revoke", json={"principal": "acme-dev"}, headers=auth(admin))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["principal_id"] == tenancy.developer.id
        assert body["tokens"] >= 2
        assert body["api_keys"] == 1

        for credential in [*dev_tokens, key]:
            refused = http.get("/v1/projects", headers=auth(credential))
            assert refused.status_code == 401
            assert refused.json()["code"] == "revoked_token"
        # A token issued after the revocation works at once; others are untouched.
        assert http.get("/v1/projects", headers=auth(tenancy.token_for("acme-dev"))).is_success
        assert http.get("/v1/projects", headers=auth(tenancy.token_for("acme-view"))).is_success
        assert http.get("/v1/projects", headers=auth(admin)).is_success
        listed = http.get(
            "/v1/api-keys", params={"principal": "acme-dev"}, headers=auth(admin)
        ).json()
        assert listed["items"][0]["revoked_at"] is not None

    (event,) = _events(gateway, answer.headers["x-request-id"])
    assert event.event_type == "token:revoke"
    assert event.resource_type == "principal"
    assert event.resource_id == tenancy.developer.id
    assert event.reason is not None
    assert "tokens=" in event.reason
    assert "api_keys=1" in event.reason
    assert key not in event.reason


def test_a_member_revokes_its_own_tokens_but_no_one_elses(
    live: tuple[LiveGateway, Tenancy],
) -> None:
    gateway, tenancy = live
    viewer = tenancy.token_for("acme-view")
    with gateway.http() as http:
        other = http.post("/v1/tokens:revoke", json={"principal": "acme-dev"}, headers=auth(viewer))
        assert other.status_code == 403
        whole = http.post(
            "/v1/tokens:revoke",
            json={"issued_before": datetime.now(UTC).isoformat()},
            headers=auth(viewer),
        )
        assert whole.status_code == 403
        own = http.post("/v1/tokens:revoke", json={"principal": "acme-view"}, headers=auth(viewer))
        assert own.status_code == 200
        assert http.get("/v1/projects", headers=auth(viewer)).status_code == 401
        # Another tenant's principal is not found, as if it did not exist.
        foreign = http.post(
            "/v1/tokens:revoke",
            json={"principal": "globex-dev"},
            headers=auth(tenancy.token_for("acme-admin")),
        )
        assert foreign.status_code == 404


def test_a_tenant_before_a_time_is_refused_on_the_next_request(
    live: tuple[LiveGateway, Tenancy],
) -> None:
    gateway, tenancy = live
    admin = tenancy.token_for("acme-admin")
    dev = tenancy.token_for("acme-dev")
    outsider = tenancy.token_for("globex-dev", "globex")
    with gateway.http() as http:
        key = http.post(
            "/v1/api-keys",
            json={"principal": "acme-view", "name": "ci", "expires_in_days": 7},
            headers=auth(admin),
        ).json()["key"]
        before = datetime.now(UTC)
        answer = http.post(
            "/v1/tokens:revoke", json={"issued_before": before.isoformat()}, headers=auth(admin)
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["principal_id"] is None
        assert body["tenant_id"] == tenancy.tenant_admin.tenant_id
        assert body["api_keys"] == 1
        for credential in (admin, dev, key):
            refused = http.get("/v1/projects", headers=auth(credential))
            assert refused.status_code == 401, credential[:8]
            assert refused.json()["code"] == "revoked_token"
        # Another tenant is untouched; new tokens of this one work.
        assert http.get("/v1/projects", headers=auth(outsider)).is_success
        admin = tenancy.token_for("acme-admin")
        assert http.get("/v1/projects", headers=auth(admin)).is_success

        # An earlier cut-off never brings back what a later one revoked.
        earlier = http.post(
            "/v1/tokens:revoke",
            json={"issued_before": (before - timedelta(hours=1)).isoformat()},
            headers=auth(admin),
        ).json()
        assert datetime.fromisoformat(earlier["not_before"]) == datetime.fromisoformat(
            body["not_before"]
        )
        assert http.get("/v1/projects", headers=auth(key)).status_code == 401

        for bad in (
            {"issued_before": (datetime.now(UTC) + timedelta(hours=1)).isoformat()},
            {"issued_before": "2020-01-01T00:00:00"},  # no time zone
            {},
            {"principal": "acme-dev", "issued_before": before.isoformat()},
        ):
            refused = http.post("/v1/tokens:revoke", json=bad, headers=auth(admin))
            assert refused.status_code == 422, (bad, refused.text)

    (event,) = _events(gateway, answer.headers["x-request-id"])
    assert (event.event_type, event.resource_type) == ("token:revoke", "tenant")
    assert event.reason is not None
    assert event.reason.startswith("issued before ")


def test_the_operator_revokes_every_tenant(live: tuple[LiveGateway, Tenancy]) -> None:
    gateway, tenancy = live
    tokens = [tenancy.token_for("acme-dev"), tenancy.token_for("globex-dev", "globex")]
    done = gateway.services.revocation.revoke_everywhere(datetime.now(UTC))
    assert len(done) == 3  # platform, acme, globex
    with gateway.http() as http:
        for token in tokens:
            assert http.get("/v1/projects", headers=auth(token)).status_code == 401
        assert http.get("/v1/projects", headers=auth(tenancy.token_for("acme-dev"))).is_success
    with gateway.services.db.read() as session:
        events = session.scalars(
            select(m.AuditEvent).where(
                m.AuditEvent.event_type == "token:revoke", m.AuditEvent.actor_id == "cli:operator"
            )
        ).all()
    assert len(events) == 3

"""API keys: the format a secret scanner checks offline, storage as a digest
only, mandatory expiry, scopes, revocation, last use; over HTTP on SQLite and
PostgreSQL. A key never appears in the audit log or the server's logs."""

from __future__ import annotations

import logging
import secrets
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from qustody.identity.apikeys import (
    BASE62,
    KEY_PATTERN,
    MAX_DAYS,
    checksum,
    digest,
    generate,
    is_well_formed,
)
from qustody.settings import load_settings
from qustody.storage import models as m
from support import Tenancy
from workload_support import LiveGateway, auth, live_gateway

# -- the format --------------------------------------------------------------------------


def test_a_generated_key_validates_and_carries_160_bits_or_more() -> None:
    keys = {generate() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert is_well_formed(key)
        assert KEY_PATTERN.fullmatch(key)
        assert key.startswith("qst_")
        assert len(key) == 42
    # 32 random base62 characters: log2(62**32) = 190.5 bits.
    assert 62**32 > 2**160


def test_the_checksum_is_crc32_in_base62_of_everything_before_it() -> None:
    key = generate()
    body, tail = key[:-6], key[-6:]
    value = 0
    for char in tail:
        value = value * 62 + BASE62.index(char)
    assert value == zlib.crc32(body.encode())
    # Pinned, so a scanner written against the documented format keeps matching.
    assert zlib.crc32(b"qst_" + b"A" * 32) == 2983978564
    assert checksum("qst_" + "A" * 32) == "3FwT8W"  # 2983978564 in base62


def test_a_random_string_with_the_prefix_fails_the_checksum() -> None:
    """No false positives: strings that merely look like keys are not keys."""
    random_ones = ["qst_" + "".join(secrets.choice(BASE62) for _ in range(38)) for _ in range(2000)]
    # A 32-bit checksum lets through about one string in four billion.
    assert sum(is_well_formed(s) for s in random_ones) == 0
    key = generate()
    for position in range(4, len(key)):  # any one character changed breaks it
        changed = BASE62[(BASE62.index(key[position]) + 1) % 62]
        assert not is_well_formed(key[:position] + changed + key[position + 1 :])
    for malformed in ("qst_", key + "0", key[:-1], "qsk_" + key[4:], key.replace("qst_", "QST_")):
        assert not is_well_formed(malformed)


def test_lifetime_is_capped_at_90_days() -> None:
    assert MAX_DAYS == 90
    assert load_settings({}).api_key_max_days == 90
    with pytest.raises(Exception, match="within 1 to 90 days"):
        load_settings({"QUSTODY_API_KEY_MAX_DAYS": "365"})


# -- over HTTP ---------------------------------------------------------------------------


@pytest.fixture
def live(tmp_path: Path, database_url: str) -> Iterator[tuple[LiveGateway, Tenancy]]:
    with live_gateway(tmp_path, database_url) as served:
        yield served


def test_a_key_is_shown_once_stored_as_a_digest_and_works_within_its_scopes(
    live: tuple[LiveGateway, Tenancy], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gateway, tenancy = live
    admin = auth(tenancy.token_for("acme-admin"))
    with gateway.http() as http:
        created = http.post(
            "/v1/api-keys",
            json={
                "principal": "acme-dev",
                "name": "build-farm",
                "scopes": ["project", "job"],
                "expires_in_days": 30,
            },
            headers=admin,
        )
        assert created.status_code == 201, created.text
        body = created.json()
        key = body["key"]
        assert is_well_formed(key)
        assert body["principal"] == "acme-dev"
        assert body["scopes"] == ["job", "project"]
        expires = datetime.fromisoformat(body["expires_at"])
        assert timedelta(days=29, hours=23) < expires - datetime.now(UTC) <= timedelta(days=30)

        assert http.get("/v1/projects", headers=auth(key)).status_code == 200
        # Outside its scopes: refused, whatever the principal's roles allow.
        assert http.get("/v1/backends", headers=auth(key)).status_code == 403
        # A key cannot be DPoP-bound.
        assert http.get("/v1/projects", headers={"Authorization": f"DPoP {key}"}).status_code == 401
        listed = http.get("/v1/api-keys", headers=admin).json()["items"]
        assert [k["id"] for k in listed] == [body["id"]]
        assert "key" not in listed[0]
        assert listed[0]["last_used_at"] is not None

    with gateway.services.db.read() as session:
        stored = session.get(m.ApiKey, body["id"])
        assert stored is not None
        assert stored.digest == digest(key)
        events = session.scalars(select(m.AuditEvent)).all()
    dumped = " ".join(str(e.__dict__) for e in events)
    assert "apikey:create" in dumped
    assert key not in dumped
    assert key[4:20] not in dumped
    assert digest(key) not in dumped
    assert key not in caplog.text
    assert key[4:20] not in caplog.text


def test_last_use_is_written_at_most_once_a_minute(live: tuple[LiveGateway, Tenancy]) -> None:
    gateway, tenancy = live
    with gateway.http() as http:
        body = http.post(
            "/v1/api-keys",
            json={"principal": "acme-view", "name": "dash", "expires_in_days": 1},
            headers=auth(tenancy.token_for("acme-admin")),
        ).json()
        assert http.get("/v1/projects", headers=auth(body["key"])).is_success
        with gateway.services.db.read() as session:
            first = session.get(m.ApiKey, body["id"]).last_used_at  # type: ignore[union-attr]
        assert first is not None
        for _ in range(3):
            assert http.get("/v1/projects", headers=auth(body["key"])).is_success
        with gateway.services.db.read() as session:
            assert session.get(m.ApiKey, body["id"]).last_used_at == first  # type: ignore[union-attr]
        # A minute later (moved back here), the next use is recorded.
        with gateway.services.db.write() as session:
            session.execute(
                update(m.ApiKey)
                .where(m.ApiKey.id == body["id"])
                .values(last_used_at=datetime.now(UTC) - timedelta(seconds=61))
            )
        assert http.get("/v1/projects", headers=auth(body["key"])).is_success
        with gateway.services.db.read() as session:
            later = session.get(m.ApiKey, body["id"]).last_used_at  # type: ignore[union-attr]
        assert later is not None
        assert later.replace(tzinfo=UTC) > first.replace(tzinfo=UTC)


def test_revoked_expired_and_deprovisioned_keys_are_refused(
    live: tuple[LiveGateway, Tenancy],
) -> None:
    gateway, tenancy = live
    admin = auth(tenancy.token_for("acme-admin"))

    def new_key(principal: str) -> dict[str, str]:
        answer = http.post(
            "/v1/api-keys",
            json={"principal": principal, "name": "k", "expires_in_days": 5},
            headers=admin,
        )
        assert answer.status_code == 201, answer.text
        body: dict[str, str] = answer.json()
        return body

    with gateway.http() as http:
        revoked, expired, orphan = new_key("acme-dev"), new_key("acme-dev"), new_key("acme-view")
        assert http.delete(f"/v1/api-keys/{revoked['id']}", headers=admin).status_code == 204
        with gateway.services.db.write() as session:
            session.execute(
                update(m.ApiKey)
                .where(m.ApiKey.id == expired["id"])
                .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
            session.execute(
                update(m.Principal).where(m.Principal.id == tenancy.viewer.id).values(active=False)
            )
        for key, code in (
            (revoked, "revoked_token"),
            (expired, "expired_token"),
            (orphan, "revoked_token"),
        ):
            refused = http.get("/v1/projects", headers=auth(key["key"]))
            assert refused.status_code == 401
            assert refused.json()["code"] == code
        # A key with a wrong checksum is refused without a lookup; one never issued too.
        bad = revoked["key"][:-1] + ("0" if revoked["key"][-1] != "0" else "1")
        assert http.get("/v1/projects", headers=auth(bad)).json()["code"] == "malformed_token"
        assert http.get("/v1/projects", headers=auth(generate())).json()["code"] == "invalid_token"

    with gateway.services.db.read() as session:
        failures = session.scalars(
            select(m.AuditEvent).where(m.AuditEvent.event_type == "auth:fail")
        ).all()
        revocations = session.scalars(
            select(m.AuditEvent).where(m.AuditEvent.event_type == "apikey:revoke")
        ).all()
    assert {f.reason for f in failures} >= {"revoked_token", "expired_token", "malformed_token"}
    assert [r.resource_id for r in revocations] == [revoked["id"]]
    for event in [*failures, *revocations]:
        assert revoked["key"] not in str(event.__dict__)


def test_creation_is_checked_and_kept_within_the_tenant(
    live: tuple[LiveGateway, Tenancy],
) -> None:
    gateway, tenancy = live
    admin = auth(tenancy.token_for("acme-admin"))
    with gateway.http() as http:
        for body, field in (
            ({"principal": "acme-dev", "name": "k", "expires_in_days": 91}, "expires_in_days"),
            ({"principal": "acme-dev", "name": "k", "expires_in_days": 0}, "expires_in_days"),
            ({"principal": "acme-dev", "name": "k"}, "expires_in_days"),
            ({"principal": "acme-dev", "name": "no spaces", "expires_in_days": 1}, "name"),
            (
                {"principal": "acme-dev", "name": "k", "expires_in_days": 1, "scopes": ["nope"]},
                "scopes",
            ),
        ):
            refused = http.post("/v1/api-keys", json=body, headers=admin)
            assert refused.status_code == 422, refused.text
            assert refused.json()["field"] == field
        # Only tenant admins create keys; another tenant's principals do not exist here.
        dev = auth(tenancy.token_for("acme-dev"))
        own = {"principal": "acme-dev", "name": "k", "expires_in_days": 1}
        assert http.post("/v1/api-keys", json=own, headers=dev).status_code == 403
        foreign = {"principal": "globex-dev", "name": "k", "expires_in_days": 1}
        assert http.post("/v1/api-keys", json=foreign, headers=admin).status_code == 404
        # A token narrowed to some scopes cannot mint a broader key.
        narrow = http.post(
            "/v1/tokens", json={"scopes": ["apikey"], "ttl_seconds": 60}, headers=admin
        ).json()["token"]
        broad = http.post("/v1/api-keys", json=own, headers=auth(narrow))
        assert broad.status_code == 422
        assert broad.json()["field"] == "scopes"
        # Another tenant's admin neither sees nor revokes acme's keys.
        key_id = http.post("/v1/api-keys", json=own, headers=admin).json()["id"]
        globex = auth(tenancy.token_for("globex-admin", "globex"))
        assert http.get("/v1/api-keys", headers=globex).json()["items"] == []
        assert http.delete(f"/v1/api-keys/{key_id}", headers=globex).status_code == 404
        assert http.delete("/v1/api-keys/not-an-id", headers=admin).status_code == 404


def test_the_maximum_lifetime_setting_is_enforced(tmp_path: Path, database_url: str) -> None:
    from qustody.api.app import build_runtime
    from support import ctx, make_settings, seed

    runtime = build_runtime(make_settings(tmp_path, database_url, api_key_max_days=30))
    try:
        tenancy = seed(runtime)
        service = runtime.services.api_keys
        with pytest.raises(Exception, match="1 to 30 days") as caught:
            service.create(
                tenancy.tenant_admin,
                ctx(),
                principal_name="acme-dev",
                name="k",
                scopes=None,
                expires_in_days=31,
            )
        assert getattr(caught.value, "field", None) == "expires_in_days"
        made = service.create(
            tenancy.tenant_admin,
            ctx(),
            principal_name="acme-dev",
            name="k",
            scopes=None,
            expires_in_days=30,
        )
        assert "key=<redacted>" in repr(made)
        assert made.key not in repr(made)
        principal = service.authenticate(made.key)
        assert (principal.name, principal.auth_method) == ("acme-dev", "api-key")
        assert principal.token_id == made.info.id
        assert principal.dpop_jkt is None
    finally:
        runtime.close()


def test_a_key_expires_by_the_runtimes_clock(tmp_path: Path, database_url: str) -> None:
    from qustody.api.app import build_runtime
    from qustody.domain.clock import ManualClock
    from qustody.domain.errors import QustodyError
    from support import ctx, make_settings, seed

    clock = ManualClock(datetime.now(UTC))
    runtime = build_runtime(make_settings(tmp_path, database_url), clock=clock)
    try:
        tenancy = seed(runtime)
        service = runtime.services.api_keys
        made = service.create(
            tenancy.tenant_admin,
            ctx(),
            principal_name="acme-dev",
            name="k",
            scopes=None,
            expires_in_days=2,
        )
        assert made.info.expires_at == clock.now() + timedelta(days=2)
        clock.advance(days=2, seconds=-1)
        assert service.authenticate(made.key).name == "acme-dev"
        clock.advance(1)
        with pytest.raises(QustodyError) as caught:
            service.authenticate(made.key)
        assert caught.value.code == "expired_token"
    finally:
        runtime.close()

"""Tokens and administration on real SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import pytest
from joserfc import jwt
from joserfc.jwk import OKPKey
from sqlalchemy import select, text

from qustody.domain.errors import Forbidden, InvalidRequest, NotFound
from qustody.domain.vocabulary import Role
from qustody.identity.errors import (
    AlreadyInitialized,
    ExpiredToken,
    InvalidToken,
    InvalidTTL,
    MalformedToken,
    NameTaken,
    RevokedToken,
)
from qustody.identity.tokens import ALGORITHM
from qustody.storage import models as m
from support import Tenancy, ctx


def test_token_round_trip_builds_the_principal(tenancy: Tenancy) -> None:
    dev = tenancy.developer
    assert dev.name == "acme-dev"
    assert dev.scopes == frozenset({"*"})
    assert dev.roles_for(dev.project_roles[0][0]) == frozenset({Role.DEVELOPER})
    assert "token=<redacted>" in repr(
        tenancy.runtime.services.admin.operator_token("acme-dev", "acme")
    )


def test_tokens_live_at_most_the_configured_maximum(tenancy: Tenancy) -> None:
    services = tenancy.runtime.services
    with pytest.raises(InvalidTTL) as caught:
        services.admin.issue_token(
            tenancy.developer, ctx(), principal_name=None, scopes=None, ttl_seconds=3600
        )
    assert caught.value.field == "ttl_seconds"
    assert "900" in caught.value.detail


def test_expired_forged_revoked_and_malformed_tokens_are_refused(tenancy: Tenancy) -> None:
    services = tenancy.runtime.services
    tokens = services.tokens
    issued = services.admin.issue_token(
        tenancy.developer, ctx(), principal_name=None, scopes=["job"], ttl_seconds=1
    )
    time.sleep(1.2)
    with pytest.raises(ExpiredToken):
        tokens.authenticate(issued.token)

    # Same claims, signed by a key Qustody does not hold.
    live = services.admin.operator_token("acme-dev", "acme")
    claims = json.loads(base64.urlsafe_b64decode(live.token.split(".")[1] + "=="))
    forged = jwt.encode(
        {"alg": ALGORITHM}, claims, OKPKey.generate_key("Ed25519"), algorithms=[ALGORITHM]
    )
    with pytest.raises(InvalidToken):
        tokens.authenticate(forged)

    # alg=none and tampered payloads
    header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    with pytest.raises((InvalidToken, MalformedToken)):
        tokens.authenticate(f"{header}.{live.token.split('.')[1]}.")
    parts = live.token.split(".")
    tampered = dict(claims, tid=tenancy.outsider.tenant_id)
    body = base64.urlsafe_b64encode(json.dumps(tampered).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidToken):
        tokens.authenticate(f"{parts[0]}.{body}.{parts[2]}")
    with pytest.raises(MalformedToken):
        tokens.authenticate("not a jwt")

    services.admin.revoke_token(tenancy.developer, ctx(), live.jti)
    with pytest.raises(RevokedToken):
        tokens.authenticate(live.token)


def test_scopes_narrow_what_a_token_may_do(tenancy: Tenancy) -> None:
    services = tenancy.runtime.services
    narrow = services.admin.issue_token(
        tenancy.developer, ctx(), principal_name=None, scopes=["backend"], ttl_seconds=60
    )
    caller = services.tokens.authenticate(narrow.token)
    assert caller.scopes == frozenset({"backend"})
    with pytest.raises(Forbidden):
        services.admin.list_projects(caller, ctx())
    # without the token scope it cannot mint tokens at all
    with pytest.raises(Forbidden):
        services.admin.issue_token(caller, ctx(), principal_name=None, scopes=None, ttl_seconds=60)
    # and with it, only narrower ones
    minter = services.tokens.authenticate(
        services.admin.issue_token(
            tenancy.developer,
            ctx(),
            principal_name=None,
            scopes=["backend", "token"],
            ttl_seconds=60,
        ).token
    )
    with pytest.raises(InvalidRequest, match="exceed"):
        services.admin.issue_token(minter, ctx(), principal_name=None, scopes=["*"], ttl_seconds=60)
    narrower = services.admin.issue_token(
        minter, ctx(), principal_name=None, scopes=None, ttl_seconds=60
    )
    assert narrower.scopes == ("backend", "token")


def test_platform_is_initialized_once(tenancy: Tenancy) -> None:
    with pytest.raises(AlreadyInitialized):
        tenancy.runtime.services.admin.init_platform("second")


def test_names_are_unique(tenancy: Tenancy) -> None:
    admin = tenancy.runtime.services.admin
    with pytest.raises(NameTaken):
        admin.create_project(
            tenancy.tenant_admin,
            ctx(),
            "research",
            __import__("qustody.domain.vocabulary", fromlist=["DataClass"]).DataClass.PUBLIC,
        )


def test_roles_decide_administration(tenancy: Tenancy) -> None:
    admin = tenancy.runtime.services.admin
    from qustody.domain.vocabulary import DataClass

    with pytest.raises(Forbidden):
        admin.create_project(tenancy.developer, ctx(), "sneaky", DataClass.PUBLIC)
    with pytest.raises(Forbidden):
        admin.add_member(
            tenancy.developer,
            ctx(),
            principal_name="mallory",
            role=Role.TENANT_ADMIN,
            project_ref=None,
        )
    member = admin.add_member(
        tenancy.tenant_admin, ctx(), principal_name="bob", role=Role.VIEWER, project_ref="research"
    )
    assert member.role == "viewer"
    assert member.project_id == tenancy.project_id


def test_other_tenants_look_missing(tenancy: Tenancy) -> None:
    admin = tenancy.runtime.services.admin
    with pytest.raises(NotFound) as foreign:
        admin.get_project(tenancy.developer, ctx(), tenancy.outsider_project_id)
    with pytest.raises(NotFound) as missing:
        admin.get_project(tenancy.developer, ctx(), "prj_01JZZZZZZZZZZZZZZZZZZZZZZZ")
    assert foreign.value.detail.replace(
        tenancy.outsider_project_id, "X"
    ) == missing.value.detail.replace("prj_01JZZZZZZZZZZZZZZZZZZZZZZZ", "X")
    names = {p.name for p in admin.list_projects(tenancy.outsider, ctx())}
    assert names == {"research"}
    with pytest.raises(NotFound):
        admin.get_tenant(tenancy.developer, ctx(), tenancy.outsider.tenant_id)


def test_audit_rows_cannot_be_changed_or_deleted(tenancy: Tenancy) -> None:
    db = tenancy.runtime.services.db
    with db.read() as session:
        count = len(session.scalars(select(m.AuditEvent.seq)).all())
    assert count > 5
    for statement in ("UPDATE audit_events SET outcome = 'success'", "DELETE FROM audit_events"):
        with pytest.raises(Exception, match="append-only"), db.write() as session:
            session.execute(text(statement))
    with db.read() as session:
        assert len(session.scalars(select(m.AuditEvent.seq)).all()) == count


def test_denials_are_audited_without_secrets(tenancy: Tenancy) -> None:
    from qustody.domain.vocabulary import DataClass

    admin = tenancy.runtime.services.admin
    with pytest.raises(Forbidden):
        admin.create_project(tenancy.viewer, ctx(), "nope", DataClass.PUBLIC)
    with tenancy.runtime.services.db.read() as session:
        denied = session.scalars(select(m.AuditEvent).where(m.AuditEvent.outcome == "denied")).all()
    assert denied
    event = denied[-1]
    assert event.event_type == "project:create"
    assert event.actor_id == tenancy.viewer.id
    assert event.decision == "deny"
    assert event.at <= datetime.now(UTC).replace(tzinfo=event.at.tzinfo)

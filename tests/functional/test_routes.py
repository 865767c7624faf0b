"""Pin the security surface: every route names its Cedar action, needs a token,
and a denial is audited under exactly that action."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import select

from qustody.api.routes import (
    accounts,
    admin,
    approvals,
    audit,
    credentials,
    elevation,
    health,
    jobs,
    login,
    policies,
    token_exchange,
)
from qustody.api.routes.common import ACTION_KEY
from qustody.domain.vocabulary import Action
from qustody.storage import models as m
from support import Gateway, auth

ROUTES = [
    r
    for mod in (
        admin,
        health,
        jobs,
        audit,
        login,
        policies,
        credentials,
        token_exchange,
        accounts,
        approvals,
        elevation,
    )
    for r in mod.router.routes
    if isinstance(r, APIRoute)
]
#: Public routes: health, and what witnesses and auditors fetch without an account.
PUBLIC = {
    ("GET", "/v1/health"),
    ("GET", "/v1/ready"),
    ("GET", audit.KEY_PATH),
    ("GET", "/v1/audit/checkpoint"),
    ("GET", "/v1/audit/proofs/consistency"),
    # Single sign-on: how a person gets a token in the first place.
    ("GET", "/v1/auth/providers"),
    ("GET", "/v1/auth/login/{provider}"),
    ("GET", "/v1/auth/callback"),
    # Token exchange (RFC 8693): the subject token is the credential.
    ("POST", "/v1/auth/token"),
    # Local accounts (development only): the password is the credential.
    ("POST", "/v1/auth/local"),
}


def _routes() -> list[tuple[str, str, Action | None]]:
    out = []
    for route in ROUTES:
        extra = route.openapi_extra or {}
        assert ACTION_KEY in extra, f"{route.path} declares no action"
        action = extra[ACTION_KEY]
        for method in sorted(route.methods):
            out.append((method, route.path, Action(action) if action else None))
    return out


def test_every_route_declares_an_action_or_is_public() -> None:
    for method, path, action in _routes():
        if (method, path) in PUBLIC:
            assert action is None
        else:
            assert action is not None, path


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "job_01JZZZZZZZZZZZZZZZZZZZZZZZ", path)


@pytest.mark.parametrize(("method", "path", "action"), _routes())
def test_every_private_route_needs_a_token(
    http: httpx.Client, method: str, path: str, action: Action | None
) -> None:
    query = "?from=0&to=0" if path.endswith("/consistency") else ""
    response = http.request(method, _concrete(path) + query, json={} if method == "POST" else None)
    if action is None and path == "/v1/auth/callback":
        # A sign-in callback without a sign-in to finish.
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_login_state"
    elif action is None and path == "/v1/auth/local":
        # No credentials at all: refused before anything else.
        assert response.status_code == 422
        assert response.json()["code"] == "missing_field"
    elif action is None and path == "/v1/auth/token":
        # OAuth's form, not JSON: refused before anything else.
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_request"
    elif action is None:
        # 404: no checkpoint signed yet (the first comes a few seconds after start);
        # no identity provider of that name.
        assert response.status_code in (200, 503, 404), response.text
    else:
        assert response.status_code == 401
        assert response.json()["code"] == "missing_token"


def test_openapi_is_3_1_and_documents_actions(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    documented = {
        (method.upper(), path): op.get(ACTION_KEY)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
    }
    for method, path, action in _routes():
        assert documented[(method, path)] == (action.value if action else None)


# Bodies that pass request validation, so the call reaches the policy check.
BODIES = {
    "/v1/jobs": {"project": "research", "backend": "aer-statevector", "qasm": "OPENQASM 2.0;"},
    "/v1/tenants": {"name": "neverland", "admin_name": "peter"},
    "/v1/projects": {"name": "denied", "data_class": "public"},
    "/v1/members": {"principal": "eve", "role": "viewer", "project": "research"},
    "/v1/tokens": {},
    "/v1/tokens:revoke": {"principal": "acme-dev"},
    "/v1/api-keys": {"principal": "acme-dev", "name": "denied", "expires_in_days": 1},
    "/v1/trust-rules": {
        "name": "denied",
        "issuer": "https://ci.example",
        "audience": "qustody",
        "conditions": {"repository": "acme/app"},
        "principal": "acme-dev",
    },
    "/v1/policies": {"text": ""},
    "/v1/quotas": {"metric": "queued_jobs", "limit": 1},
    "/v1/budgets": {"period": "day", "limit": 1},
    "/v1/backends/{name}/price": {"per_shot": 1},
    "/v1/jobs:estimate": {
        "project": "research",
        "backend": "aer-statevector",
        "qasm": "OPENQASM 2.0;",
    },
    "/v1/principals/{principal}/password": {"password": "a long enough password"},
    "/v1/approvals": {"action": "key:rotate", "reason": "a denied request", "ticket": "X-1"},
    "/v1/elevations": {
        "role": "tenant-admin",
        "duration_seconds": 600,
        "reason": "a denied request",
        "ticket": "X-1",
    },
    "/v1/breakglass": {"reason": "a denied emergency elevation request"},
    "/v1/breakglass/{grant_id}:review": {"notes": "denied"},
    "/v1/principals/{principal}/totp/confirm": {"code": "123456"},
}


def test_denials_are_audited_under_the_routes_action(http: httpx.Client, gateway: Gateway) -> None:
    """A token scoped to nothing but ``tenant`` is denied everywhere else; each
    denial must land in the audit log as the route's own action."""
    issued = http.post(
        "/v1/tokens",
        json={"scopes": ["tenant"], "ttl_seconds": 300},
        headers=auth(gateway.developer_token),
    ).json()
    narrow = auth(issued["token"])
    job_id = http.post(
        "/v1/jobs",
        json={
            "project": "research",
            "backend": "aer-statevector",
            "shots": 10,
            "qasm": 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[1];\ncreg c[1];\nmeasure q -> c;',
        },
        headers=auth(gateway.developer_token),
    ).json()["id"]
    checked = 0
    for method, path, action in _routes():
        if action is None or action.resource == "tenant":
            continue
        concrete = re.sub(r"\{job_id\}", job_id, path)
        concrete = re.sub(r"\{project\}", "research", concrete)
        concrete = re.sub(r"\{name\}", "aer-statevector", concrete)
        concrete = re.sub(r"\{jti\}", issued["jti"], concrete)
        concrete = re.sub(r"\{seq\}", "1", concrete)
        concrete = re.sub(r"\{key_id\}", "apk_01JZZZZZZZZZZZZZZZZZZZZZZZ", concrete)
        concrete = re.sub(r"\{rule\}", "denied", concrete)
        concrete = re.sub(r"\{version\}", "1", concrete)
        concrete = re.sub(r"\{principal\}", "acme-dev", concrete)
        response = http.request(method, concrete, json=BODIES.get(path), headers=narrow)
        assert response.status_code in (403, 404), (method, path, response.text)
        request_id = response.json()["request_id"]
        with gateway.tenancy.runtime.services.db.read() as session:
            events = session.scalars(
                select(m.AuditEvent).where(m.AuditEvent.request_id == request_id)
            ).all()
        assert [e.event_type for e in events] == [action.value], (method, path)
        assert events[0].outcome == "denied"
        checked += 1
    assert checked >= 12

"""Workload identity over HTTP against a real gateway: a CI job's OIDC token
(from an issuer on loopback standing in for GitHub Actions) exchanged for a
Qustody token through per-tenant trust rules (RFC 8693), optionally bound to
a DPoP key (RFC 9449); trust rules and exchange through the CLI and SDK."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from joserfc.jwk import RSAKey
from sqlalchemy import select

from qustody.client import Client
from qustody.client.dpop import DpopKey
from qustody.client.errors import QustodyAPIError
from qustody.client.identity import exchange_token
from qustody.identity.workload import NOT_ACCEPTED
from qustody.storage import models as m
from support import Gateway, auth, qustody
from workload_support import CI_AUDIENCE, CiIssuer

TOKEN_URL = "/v1/auth/token"
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT = "urn:ietf:params:oauth:token-type:jwt"


@pytest.fixture
def ci() -> Iterator[CiIssuer]:
    issuer = CiIssuer()
    yield issuer
    issuer.close()


def workload(http: httpx.Client, admin_token: str, role: str = "developer") -> str:
    """A new workload principal of the admin's tenant, developer on ``research``."""
    name = f"ci-{secrets.token_hex(4)}"
    answer = http.post(
        "/v1/members",
        json={"principal": name, "role": role, "project": "research", "kind": "workload"},
        headers=auth(admin_token),
    )
    assert answer.status_code == 201, answer.text
    return name


def add_rule(
    http: httpx.Client,
    admin_token: str,
    ci: CiIssuer,
    principal: str,
    conditions: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    body = {
        "name": f"rule-{secrets.token_hex(4)}",
        "issuer": ci.url,
        "audience": CI_AUDIENCE,
        "conditions": conditions,
        "principal": principal,
        **extra,
    }
    answer = http.post("/v1/trust-rules", json=body, headers=auth(admin_token))
    assert answer.status_code == 201, answer.text
    rule: dict[str, Any] = answer.json()
    return rule


def exchange(http: httpx.Client, subject: str, **form: str) -> httpx.Response:
    return http.post(
        TOKEN_URL,
        data={"grant_type": GRANT, "subject_token": subject, "subject_token_type": JWT, **form},
    )


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=="))
    return decoded


def refused(answer: httpx.Response, error: str) -> dict[str, Any]:
    """An OAuth refusal that is also RFC 9457 problem+json."""
    assert answer.status_code == (503 if error == "temporarily_unavailable" else 400), answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = answer.json()
    assert body["error"] == error
    assert body["code"] == error
    assert body["error_description"] == body["detail"]
    return body


def test_a_ci_token_becomes_a_short_lived_qustody_token(
    gateway: Gateway, http: httpx.Client, ci: CiIssuer
) -> None:
    admin = gateway.tenant_admin_token
    name = workload(http, admin)
    rule = add_rule(
        http,
        admin,
        ci,
        name,
        {"repository": "acme/app", "ref": {"glob": "refs/heads/release/*"}},
        scopes=["job", "project", "result"],
        ttl_seconds=600,
    )
    subject = ci.token(ref="refs/heads/release/2.1", environment=None)
    answer = exchange(http, subject)
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert body["token_type"] == "Bearer"
    assert 595 <= body["expires_in"] <= 600
    assert body["scope"] == "job project result"
    claims = claims_of(body["access_token"])
    assert claims["aud"] == "qustody-api"  # one audience
    assert claims["exp"] - claims["iat"] <= 900
    assert "cnf" not in claims

    # The token works as the workload, within its scopes.
    token = body["access_token"]
    assert http.get("/v1/projects", headers=auth(token)).status_code == 200
    assert http.get("/v1/backends", headers=auth(token)).status_code == 403

    # Audited with the rule, issuer and subject; never the token.
    with gateway.tenancy.runtime.services.db.read() as session:
        (event,) = session.scalars(
            select(m.AuditEvent).where(
                m.AuditEvent.event_type == "token:exchange",
                m.AuditEvent.request_id == answer.headers["x-request-id"],
            )
        ).all()
        issued = session.get(m.IssuedToken, claims["jti"])
    assert event.outcome == "success"
    assert event.reason is not None
    assert f"rule={rule['id']}" in event.reason
    assert f"issuer={ci.url}" in event.reason
    assert "subject=repo:acme/app:ref:refs/heads/release/2.1" in event.reason
    assert event.decision == "allow"
    assert event.policy_ids == "workload-token-exchange"
    assert subject.split(".")[2] not in str(event.__dict__)
    assert token.split(".")[2] not in str(event.__dict__)
    assert issued is not None
    assert (issued.auth_method, issued.source) == ("token-exchange", rule["id"])


def test_every_condition_must_hold(gateway: Gateway, http: httpx.Client, ci: CiIssuer) -> None:
    admin = gateway.tenant_admin_token
    name = workload(http, admin)
    add_rule(
        http,
        admin,
        ci,
        name,
        {
            "repository": "acme/app",
            "environment": ["prod", "staging"],
            "ref": {"glob": "refs/heads/release/*"},
        },
    )
    good = {"ref": "refs/heads/release/1.0", "environment": "staging"}
    assert exchange(http, ci.token(**good)).status_code == 200
    for bad in (
        {**good, "repository": "evil/app"},
        {**good, "repository": "acme/app-fork"},
        {**good, "environment": "dev"},
        {**good, "environment": None},  # an absent claim fails its condition
        {**good, "ref": "refs/heads/main"},
        {**good, "ref": "refs/heads/release/1/hotfix"},  # '*' stops at '/'
    ):
        answer = exchange(http, ci.token(**bad))
        body = refused(answer, "invalid_grant")
        # One answer whatever failed, so no tenant's rules are told; the
        # audit log has the reason.
        assert body["detail"] == NOT_ACCEPTED
        with gateway.tenancy.runtime.services.db.read() as session:
            reason = session.scalars(
                select(m.AuditEvent.reason).where(
                    m.AuditEvent.request_id == answer.headers["x-request-id"]
                )
            ).one()
        assert "conditions of no trust rule" in (reason or "")


def test_scope_narrows_and_never_widens(gateway: Gateway, http: httpx.Client, ci: CiIssuer) -> None:
    admin = gateway.tenant_admin_token
    name = workload(http, admin)
    add_rule(http, admin, ci, name, {"repository": "acme/app"}, scopes=["job", "result"])
    narrowed = exchange(http, ci.token(), scope="job")
    assert narrowed.status_code == 200
    assert narrowed.json()["scope"] == "job"
    refused(exchange(http, ci.token(), scope="job audit"), "invalid_scope")
    refused(exchange(http, ci.token(), scope="nonsense"), "invalid_scope")


def test_a_token_lands_only_in_a_tenant_whose_rule_it_meets(
    gateway: Gateway, http: httpx.Client, ci: CiIssuer
) -> None:
    """The same issuer in two tenants: the request names the tenant, and a
    tenant whose rule the token does not meet is never reached."""
    acme_admin = gateway.tenant_admin_token
    globex_admin = gateway.tenancy.token_for("globex-admin", "globex")
    acme_bot = workload(http, acme_admin)
    globex_bot = workload(http, globex_admin)
    add_rule(http, acme_admin, ci, acme_bot, {"repository_owner": "acme"})
    add_rule(http, globex_admin, ci, globex_bot, {"repository_owner": ["acme", "globex"]})

    # Both accept an acme repository's token: the caller must choose.
    body = refused(exchange(http, ci.token()), "invalid_target")
    assert "acme" in body["error_description"]
    assert "globex" in body["error_description"]
    # The gateway's own audience names no tenant.
    refused(exchange(http, ci.token(), audience="qustody-api"), "invalid_target")
    into_acme = exchange(http, ci.token(), audience="acme")
    assert into_acme.status_code == 200
    assert claims_of(into_acme.json()["access_token"])["tid"] == gateway.tenancy.developer.tenant_id
    into_globex = exchange(http, ci.token(), audience="globex")
    assert claims_of(into_globex.json()["access_token"])["tid"] == (
        gateway.tenancy.outsider.tenant_id
    )
    # A globex repository's token meets globex's rule only: alone, it lands there...
    globex_repo = ci.token(repository="globex/app")
    assert claims_of(exchange(http, globex_repo).json()["access_token"])["tid"] == (
        gateway.tenancy.outsider.tenant_id
    )
    # ...and naming acme gets it refused, not issued there.
    refused(exchange(http, globex_repo, audience="acme"), "invalid_grant")
    # A tenant that does not exist answers like one whose rules the token does not meet.
    absent = refused(exchange(http, globex_repo, audience="no-such-tenant"), "invalid_grant")
    unmet = refused(exchange(http, globex_repo, audience="acme"), "invalid_grant")
    assert absent["detail"].replace("no-such-tenant", "acme") == unmet["detail"]
    refused(exchange(http, ci.token(), audience="Not A Name"), "invalid_target")


def test_two_rules_of_one_tenant_need_the_rule_named(
    gateway: Gateway, http: httpx.Client, ci: CiIssuer
) -> None:
    admin = gateway.tenant_admin_token
    reader, deployer = workload(http, admin, "viewer"), workload(http, admin)
    add_rule(http, admin, ci, reader, {"repository": "acme/app"})
    deploy = add_rule(http, admin, ci, deployer, {"ref": "refs/heads/main"})
    main = ci.token(ref="refs/heads/main", environment=None)
    body = refused(exchange(http, main, audience="acme"), "invalid_target")
    assert deploy["name"] in body["error_description"]
    chosen = exchange(http, main, audience=f"acme/{deploy['name']}")
    assert chosen.status_code == 200
    assert claims_of(chosen.json()["access_token"])["sub"] == deploy["principal_id"]
    # A branch only the reader's rule accepts needs no choosing.
    assert exchange(http, ci.token(ref="refs/heads/dev"), audience="acme").status_code == 200


def test_bad_subject_tokens_are_refused(gateway: Gateway, http: httpx.Client, ci: CiIssuer) -> None:
    admin = gateway.tenant_admin_token
    add_rule(http, admin, ci, workload(http, admin), {"repository": "acme/app"})
    stranger = RSAKey.generate_key(2048, parameters={"kid": "ci-1"})
    request_ids = []
    for subject in (
        ci.token(lifetime=-120),  # expired
        ci.token(audience="https://someone-else.example"),
        ci.token(key=stranger),  # not the issuer's key
        ci.token(iss="https://token.actions.githubusercontent.com"),  # no rule names it
        "not-a-jwt",
    ):
        answer = exchange(http, subject)
        body = refused(answer, "invalid_grant")
        if subject != "not-a-jwt":
            # A trusted issuer's bad token and an issuer no tenant trusts get
            # the same answer: the caller learns nothing of the trust rules.
            assert body["detail"] == NOT_ACCEPTED
        assert CI_AUDIENCE not in body["detail"]  # no rule's configuration is told
        request_ids.append(answer.headers["x-request-id"])
    with gateway.tenancy.runtime.services.db.read() as session:
        failures = session.scalars(
            select(m.AuditEvent).where(m.AuditEvent.request_id.in_(request_ids))
        ).all()
    assert len(failures) == 5
    for failure in failures:
        assert (failure.event_type, failure.outcome) == ("token:exchange", "failure")
        assert (failure.reason or "").startswith("invalid_grant: ")


def test_malformed_requests_get_oauth_errors(gateway: Gateway, http: httpx.Client) -> None:
    base = {"grant_type": GRANT, "subject_token": "x.y.z", "subject_token_type": JWT}
    refused(http.post(TOKEN_URL, json=base), "invalid_request")  # JSON, not a form
    refused(http.post(TOKEN_URL, data={**base, "grant_type": "password"}), "unsupported_grant_type")
    refused(
        http.post(TOKEN_URL, data={**base, "subject_token_type": "urn:x"}),
        "unsupported_token_type",
    )
    missing = refused(http.post(TOKEN_URL, data={"grant_type": GRANT}), "invalid_request")
    assert missing["field"] == "subject_token"
    twice = http.post(
        TOKEN_URL,
        content=urlencode([*base.items(), ("scope", "job"), ("scope", "result")]),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert refused(twice, "invalid_request")["field"] == "scope"
    refused(
        http.post(TOKEN_URL, data={**base, "resource": "https://elsewhere.example"}),
        "invalid_target",
    )
    refused(http.post(TOKEN_URL, data={**base, "actor_token": "a"}), "invalid_request")


def test_trust_rules_are_checked_audited_and_deleted(
    gateway: Gateway, http: httpx.Client, ci: CiIssuer
) -> None:
    admin = gateway.tenant_admin_token
    name = workload(http, admin)
    base = {
        "name": f"r-{secrets.token_hex(3)}",
        "issuer": ci.url,
        "audience": CI_AUDIENCE,
        "conditions": {"repository": "acme/app"},
        "principal": name,
    }
    for change, field in (
        ({"conditions": {}}, "conditions"),
        ({"conditions": {"ref": {"glob": "**"}}}, "conditions.ref"),
        ({"conditions": {"aud": "x"}}, "conditions.aud"),
        ({"conditions": {"ref": {"regex": ".*"}}}, "conditions.ref"),
        ({"conditions": {"ref": 42}}, "conditions.ref"),
        ({"issuer": "http://ci.example.com"}, "issuer"),
        ({"ttl_seconds": 901}, "ttl_seconds"),
        ({"principal": "acme-dev"}, "principal"),  # a person, not a workload
        ({"name": "Bad Name"}, "name"),
    ):
        answer = http.post("/v1/trust-rules", json={**base, **change}, headers=auth(admin))
        assert answer.status_code == 422, (change, answer.text)
        assert answer.json()["field"] == field, (change, answer.json())
    developer = http.post("/v1/trust-rules", json=base, headers=auth(gateway.developer_token))
    assert developer.status_code == 403
    created = http.post("/v1/trust-rules", json=base, headers=auth(admin))
    assert created.status_code == 201
    again = http.post("/v1/trust-rules", json=base, headers=auth(admin))
    assert again.status_code == 409
    listed = http.get("/v1/trust-rules", headers=auth(admin)).json()["items"]
    assert base["name"] in [r["name"] for r in listed]
    # Another tenant sees none of them and cannot delete them.
    globex = auth(gateway.tenancy.token_for("globex-admin", "globex"))
    assert base["name"] not in [
        r["name"] for r in http.get("/v1/trust-rules", headers=globex).json()["items"]
    ]
    assert http.delete(f"/v1/trust-rules/{base['name']}", headers=globex).status_code == 404

    assert exchange(http, ci.token()).status_code == 200
    assert http.delete(f"/v1/trust-rules/{base['name']}", headers=auth(admin)).status_code == 204
    refused(exchange(http, ci.token()), "invalid_grant")
    with gateway.tenancy.runtime.services.db.read() as session:
        kinds = session.scalars(
            select(m.AuditEvent.event_type).where(m.AuditEvent.resource_id == created.json()["id"])
        ).all()
    assert {"trustrule:set", "trustrule:delete"} <= set(kinds)


# -- DPoP ------------------------------------------------------------------------------


def test_a_dpop_bound_token_needs_a_fresh_proof_of_its_key(
    gateway: Gateway, http: httpx.Client, ci: CiIssuer
) -> None:
    admin = gateway.tenant_admin_token
    add_rule(http, admin, ci, workload(http, admin), {"repository": "acme/app"})
    key = DpopKey.generate()
    issued = exchange_token(gateway.url, ci.token(), dpop_key=key)
    assert issued.token_type == "DPoP"
    assert "access_token=<redacted>" in repr(issued)
    assert claims_of(issued.access_token)["cnf"] == {"jkt": key.thumbprint}

    # The SDK proves possession on each request.
    with Client(gateway.url, issued.access_token, dpop_key=key) as client:
        assert [p.name for p in client.projects()] == ["research"]
        assert client.projects()  # a second request, a second proof

    token = issued.access_token
    url = f"{gateway.url}/v1/projects"
    # As a plain bearer token: refused, with a DPoP challenge.
    plain = http.get("/v1/projects", headers=auth(token))
    assert plain.status_code == 401
    assert plain.json()["code"] == "dpop_required"
    assert plain.headers["www-authenticate"].startswith('DPoP error="invalid_token"')
    assert 'algs="ES256 EdDSA Ed25519 RS256 PS256"' in plain.headers["www-authenticate"]

    def presented(proof: str | None, *, scheme: str = "DPoP") -> httpx.Response:
        headers = {"Authorization": f"{scheme} {token}"}
        if proof is not None:
            headers["DPoP"] = proof
        return http.get("/v1/projects", headers=headers)

    assert presented(None).json()["code"] == "invalid_dpop_proof"
    good = key.proof("GET", url, access_token=token)
    assert presented(good).status_code == 200
    replayed = presented(good)
    assert replayed.status_code == 401
    assert replayed.json()["code"] == "dpop_proof_replayed"
    assert replayed.headers["www-authenticate"].startswith('DPoP error="invalid_dpop_proof"')
    other_key = DpopKey.generate()
    assert (
        presented(other_key.proof("GET", url, access_token=token)).json()["code"]
        == "dpop_key_mismatch"
    )
    for proof in (
        key.proof("POST", url, access_token=token),  # another method
        key.proof("GET", f"{gateway.url}/v1/jobs", access_token=token),  # another URL
        key.proof("GET", url),  # no ath
        key.proof("GET", url, access_token=token + "x"),  # another token's ath
    ):
        assert presented(proof).json()["code"] == "invalid_dpop_proof"
    # A proof for the query-less URL covers a request with a query.
    with_query = http.get(
        "/v1/projects",
        params={"x": "1"},
        headers={
            "Authorization": f"DPoP {token}",
            "DPoP": key.proof("GET", url, access_token=token),
        },
    )
    assert with_query.status_code == 200
    # An unbound token is refused with the DPoP scheme.
    unbound = http.get(
        "/v1/projects",
        headers={
            "Authorization": f"DPoP {gateway.developer_token}",
            "DPoP": key.proof("GET", url, access_token=gateway.developer_token),
        },
    )
    assert unbound.json()["code"] == "token_not_dpop_bound"


def test_a_bad_proof_on_the_token_request_is_refused(
    gateway: Gateway, http: httpx.Client, ci: CiIssuer
) -> None:
    admin = gateway.tenant_admin_token
    add_rule(http, admin, ci, workload(http, admin), {"repository": "acme/app"})
    key = DpopKey.generate()
    form = {"grant_type": GRANT, "subject_token": ci.token(), "subject_token_type": JWT}
    wrong_url = key.proof("POST", f"{gateway.url}/v1/auth/other")
    answer = http.post(TOKEN_URL, data=form, headers={"DPoP": wrong_url})
    assert refused(answer, "invalid_dpop_proof")["field"] == "DPoP"
    good = key.proof("POST", f"{gateway.url}{TOKEN_URL}")
    assert http.post(TOKEN_URL, data=form, headers={"DPoP": good}).json()["token_type"] == "DPoP"
    refused(http.post(TOKEN_URL, data=form, headers={"DPoP": good}), "invalid_dpop_proof")


# -- the CLI ---------------------------------------------------------------------------


def test_the_cli_adds_rules_and_exchanges_without_a_stored_secret(
    gateway: Gateway, http: httpx.Client, ci: CiIssuer, tmp_path: Path
) -> None:
    admin = gateway.tenant_admin_token
    name = workload(http, admin)
    rule = f"gha-{secrets.token_hex(3)}"
    added = qustody(
        gateway,
        admin,
        "trust-rules",
        "add",
        rule,
        "--issuer",
        ci.url,
        "--audience",
        CI_AUDIENCE,
        "--principal",
        name,
        "--claim",
        "repository=acme/app",
        "--claim",
        "environment=prod",
        "--claim",
        "environment=staging",
        "--claim-glob",
        "ref=refs/heads/*",
        "--scope",
        "project",
        "--ttl",
        "300",
        "--json",
    )
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["conditions"] == {
        "repository": "acme/app",
        "environment": ["prod", "staging"],
        "ref": {"glob": "refs/heads/*"},
    }
    listed = qustody(gateway, admin, "trust-rules", "list")
    assert rule in listed.stdout

    token_file = tmp_path / "ci-token"
    token_file.write_text(ci.token())
    exchanged = qustody(
        gateway, None, "token", "exchange", "--subject-token-file", str(token_file), "--json"
    )
    assert exchanged.returncode == 0, exchanged.stderr
    out = json.loads(exchanged.stdout)
    assert out["scope"] == "project"
    assert out["expires_in"] <= 300
    assert qustody(gateway, out["access_token"], "project", "list").returncode == 0

    # With a DPoP key, through the CLI too.
    key_file = tmp_path / "dpop.pem"
    made = qustody(gateway, None, "dpop", "keygen", str(key_file))
    assert made.returncode == 0, made.stderr
    assert key_file.stat().st_mode & 0o777 == 0o600
    bound = qustody(
        gateway,
        None,
        "--dpop-key",
        str(key_file),
        "token",
        "exchange",
        "--subject-token-file",
        str(token_file),
    )
    assert bound.returncode == 0, bound.stderr
    bound_token = bound.stdout.strip()
    assert claims_of(bound_token)["cnf"]["jkt"] == made.stdout.strip()
    assert qustody(gateway, bound_token, "project", "list").returncode == 1
    assert (
        qustody(gateway, bound_token, "--dpop-key", str(key_file), "project", "list").returncode
        == 0
    )

    deleted = qustody(gateway, admin, "trust-rules", "delete", rule)
    assert deleted.returncode == 0, deleted.stderr
    failed = qustody(gateway, None, "token", "exchange", "--subject-token-file", str(token_file))
    assert failed.returncode == 1
    assert "[invalid_grant]" in failed.stderr


def test_the_sdk_reports_oauth_errors(gateway: Gateway, ci: CiIssuer) -> None:
    with pytest.raises(QustodyAPIError) as caught:
        exchange_token(gateway.url, ci.token())
    assert caught.value.code == "invalid_grant"
    assert caught.value.extras["error"] == "invalid_grant"
    assert caught.value.status == 400

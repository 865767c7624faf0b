"""DPoP at the API edge, on SQLite and PostgreSQL: a tenant that requires DPoP
by policy refuses bearer tokens and API keys and accepts a DPoP-bound token
presented with a proof; the proof is spent once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qustody.client import Client
from qustody.client.dpop import DpopKey
from qustody.client.errors import QustodyAPIError
from qustody.client.identity import exchange_token
from support import Tenancy
from workload_support import CI_AUDIENCE, CiIssuer, LiveGateway, auth, live_gateway

DPOP_ONLY = '@id("dpop-only")\nforbid (principal, action, resource) unless { context.dpop };'


@pytest.fixture
def live(tmp_path: Path, database_url: str) -> Iterator[tuple[LiveGateway, Tenancy]]:
    with live_gateway(tmp_path, database_url) as served:
        yield served


def bound_token(gateway: LiveGateway, tenancy: Tenancy, key: DpopKey) -> str:
    """A token of acme-dev bound to ``key`` (as a DPoP token request would issue it)."""
    developer = tenancy.developer
    with gateway.services.db.write() as session:
        issued = gateway.services.tokens.issue(
            session,
            principal_id=developer.id,
            tenant_id=developer.tenant_id,
            jkt=key.thumbprint,
        )
    token: str = issued.token
    return token


def test_a_tenant_that_requires_dpop_accepts_only_proven_tokens(
    live: tuple[LiveGateway, Tenancy],
) -> None:
    gateway, tenancy = live
    key = DpopKey.generate("Ed25519")
    with gateway.http() as http:
        admin = auth(tenancy.token_for("acme-admin"))
        api_key = http.post(
            "/v1/api-keys",
            json={"principal": "acme-dev", "name": "k", "expires_in_days": 1},
            headers=admin,
        ).json()["key"]
        put = http.put("/v1/policies", json={"text": DPOP_ONLY}, headers=admin)
        assert put.status_code == 200, put.text

        for credential in (tenancy.token_for("acme-dev"), api_key):
            refused = http.get("/v1/projects", headers=auth(credential))
            assert refused.status_code == 403, refused.text
            assert "dpop-only" in refused.text
        # Another tenant is not bound by acme's policy.
        outsider = auth(tenancy.token_for("globex-dev", "globex"))
        assert http.get("/v1/projects", headers=outsider).status_code == 200

    token = bound_token(gateway, tenancy, key)
    with Client(gateway.url, token, dpop_key=key) as client:
        assert [p.name for p in client.projects()] == ["research"]
    with Client(gateway.url, token) as plain, pytest.raises(QustodyAPIError) as caught:
        plain.projects()
    assert (caught.value.status, caught.value.code) == (401, "dpop_required")
    # A proof made for one request is not good for a second.
    proof = key.proof("GET", f"{gateway.url}/v1/projects", access_token=token)
    with gateway.http() as http:
        headers = {"Authorization": f"DPoP {token}", "DPoP": proof}
        assert http.get("/v1/projects", headers=headers).status_code == 200
        again = http.get("/v1/projects", headers=headers)
        assert (again.status_code, again.json()["code"]) == (401, "dpop_proof_replayed")
        # Two proof headers are one too many.
        fresh = key.proof("GET", f"{gateway.url}/v1/projects", access_token=token)
        doubled = http.get(
            "/v1/projects",
            headers=[("Authorization", f"DPoP {token}"), ("DPoP", fresh), ("DPoP", fresh)],
        )
        assert doubled.json()["code"] == "invalid_dpop_proof"


def test_a_tenant_can_require_dpop_for_workload_exchanges(
    live: tuple[LiveGateway, Tenancy],
) -> None:
    gateway, tenancy = live
    ci = CiIssuer()
    try:
        with gateway.http() as http:
            admin = auth(tenancy.token_for("acme-admin"))
            assert http.post(
                "/v1/members",
                json={
                    "principal": "ci",
                    "role": "developer",
                    "project": "research",
                    "kind": "workload",
                },
                headers=admin,
            ).is_success
            rule = http.post(
                "/v1/trust-rules",
                json={
                    "name": "gha",
                    "issuer": ci.url,
                    "audience": CI_AUDIENCE,
                    "conditions": {"repository": "acme/app"},
                    "principal": "ci",
                },
                headers=admin,
            )
            assert rule.status_code == 201, rule.text
            assert exchange_token(gateway.url, ci.token()).token_type == "Bearer"
            policy = (
                '@id("exchange-with-dpop")\n'
                'forbid (principal, action == Qustody::Action::"token:exchange", resource)\n'
                "unless { context.dpop };"
            )
            assert http.put("/v1/policies", json={"text": policy}, headers=admin).is_success
        with pytest.raises(QustodyAPIError) as caught:
            exchange_token(gateway.url, ci.token())
        assert caught.value.code == "invalid_grant"
        assert "exchange-with-dpop" in caught.value.detail
        key = DpopKey.generate()
        issued = exchange_token(gateway.url, ci.token(), dpop_key=key)
        assert issued.token_type == "DPoP"
        with Client(gateway.url, issued.access_token, dpop_key=key) as client:
            assert [p.name for p in client.projects()] == ["research"]
    finally:
        ci.close()


def test_with_server_nonces_the_sdk_retries_once_with_the_nonce(
    tmp_path: Path, database_url: str
) -> None:
    with live_gateway(tmp_path, database_url, dpop_nonces=True) as (gateway, tenancy):
        key = DpopKey.generate()
        token = bound_token(gateway, tenancy, key)
        url = f"{gateway.url}/v1/projects"
        with gateway.http() as http:
            asked = http.get(
                "/v1/projects",
                headers={
                    "Authorization": f"DPoP {token}",
                    "DPoP": key.proof("GET", url, access_token=token),
                },
            )
            assert (asked.status_code, asked.json()["code"]) == (401, "use_dpop_nonce")
            assert asked.headers["www-authenticate"].startswith('DPoP error="use_dpop_nonce"')
            nonce = asked.headers["dpop-nonce"]
            given = http.get(
                "/v1/projects",
                headers={
                    "Authorization": f"DPoP {token}",
                    "DPoP": key.proof("GET", url, access_token=token, nonce=nonce),
                },
            )
            assert given.status_code == 200
        # The SDK takes the nonce from the refusal and retries, once.
        with Client(gateway.url, token, dpop_key=key) as client:
            assert [p.name for p in client.projects()] == ["research"]
            assert [p.name for p in client.projects()] == ["research"]

        # The token endpoint asks the same way (400, as OAuth errors are).
        ci = CiIssuer()
        try:
            with gateway.http() as http:
                admin = auth(tenancy.token_for("acme-admin"))
                assert http.post(
                    "/v1/members",
                    json={
                        "principal": "ci",
                        "role": "viewer",
                        "project": "research",
                        "kind": "workload",
                    },
                    headers=admin,
                ).is_success
                assert http.post(
                    "/v1/trust-rules",
                    json={
                        "name": "gha",
                        "issuer": ci.url,
                        "audience": CI_AUDIENCE,
                        "conditions": {"repository": "acme/app"},
                        "principal": "ci",
                    },
                    headers=admin,
                ).is_success
                form = {
                    "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                    "subject_token": ci.token(),
                    "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                }
                refused = http.post(
                    "/v1/auth/token",
                    data=form,
                    headers={"DPoP": key.proof("POST", f"{gateway.url}/v1/auth/token")},
                )
                assert refused.status_code == 400
                assert refused.json()["error"] == "use_dpop_nonce"
                assert refused.headers["dpop-nonce"]
            issued = exchange_token(gateway.url, ci.token(), dpop_key=key)
            assert issued.token_type == "DPoP"
        finally:
            ci.close()

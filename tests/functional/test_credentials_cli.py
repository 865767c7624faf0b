"""The real CLI against a real gateway: API keys, revoking all of a
principal's credentials, and the operator's revocation of a whole tenant."""

from __future__ import annotations

import json
import secrets

import httpx

from qustody.identity.apikeys import is_well_formed
from support import Gateway, auth, qustody


def _tenant(http: httpx.Client, gateway: Gateway) -> tuple[str, str]:
    """A tenant of its own (revoking it touches no other test), and its admin's token."""
    name = f"rev-{secrets.token_hex(4)}"
    created = http.post(
        "/v1/tenants",
        json={"name": name, "admin_name": f"{name}-admin"},
        headers=auth(gateway.token_for("platform-admin")),
    )
    assert created.status_code == 201, created.text
    token: str = created.json()["admin"]["token"]
    return name, token


def test_api_keys_from_the_cli(gateway: Gateway, http: httpx.Client) -> None:
    _, admin = _tenant(http, gateway)
    added = http.post(
        "/v1/members",
        json={"principal": "legacy-bot", "role": "tenant-admin", "kind": "workload"},
        headers=auth(admin),
    )
    assert added.status_code == 201, added.text
    created = qustody(
        gateway,
        admin,
        "api-keys",
        "create",
        "legacy-bot",
        "--name",
        "farm",
        "--expires-in-days",
        "7",
        "--scope",
        "project",
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert is_well_formed(key)
    assert key not in created.stderr
    assert "shown once" in created.stderr
    assert qustody(gateway, key, "project", "list").returncode == 0
    listed = qustody(gateway, admin, "api-keys", "list", "--json")
    (row,) = json.loads(listed.stdout)
    assert (row["name"], row["principal"], row["scopes"]) == ("farm", "legacy-bot", ["project"])
    assert key not in listed.stdout
    too_long = qustody(
        gateway,
        admin,
        "api-keys",
        "create",
        "legacy-bot",
        "--name",
        "x",
        "--expires-in-days",
        "365",
    )
    assert too_long.returncode == 1
    assert "[invalid_request]" in too_long.stderr
    revoked = qustody(gateway, admin, "api-keys", "revoke", row["id"])
    assert revoked.returncode == 0, revoked.stderr
    refused = qustody(gateway, key, "project", "list")
    assert refused.returncode == 1
    assert "[revoked_token]" in refused.stderr


def test_token_revoke_all_of_a_principal_and_before_a_time(
    gateway: Gateway, http: httpx.Client
) -> None:
    name, admin = _tenant(http, gateway)
    for member in ("alice", "bob"):
        assert http.post(
            "/v1/members",
            json={"principal": member, "role": "tenant-admin"},
            headers=auth(admin),
        ).is_success
    alice = gateway.tenancy.token_for("alice", name)
    bob = gateway.tenancy.token_for("bob", name)

    usage = qustody(gateway, admin, "token", "revoke")
    assert usage.returncode != 0
    assert "give one of" in usage.stderr

    done = qustody(gateway, admin, "token", "revoke", "--all-of", "alice")
    assert done.returncode == 0, done.stderr
    assert "of alice" in done.stderr
    assert qustody(gateway, alice, "project", "list").returncode == 1
    assert qustody(gateway, bob, "project", "list").returncode == 0

    naive = qustody(gateway, admin, "token", "revoke", "--before", "2030-01-01T00:00:00")
    assert naive.returncode != 0
    assert "time zone" in naive.stderr
    everyone = qustody(gateway, admin, "token", "revoke", "--before", "now")
    assert everyone.returncode == 0, everyone.stderr
    for token in (admin, bob):
        refused = qustody(gateway, token, "project", "list")
        assert refused.returncode == 1
        assert "[revoked_token]" in refused.stderr


def test_the_operator_revokes_a_tenant_on_the_gateway_host(
    gateway: Gateway, http: httpx.Client
) -> None:
    name, admin = _tenant(http, gateway)
    other = gateway.developer_token
    assert http.get("/v1/projects", headers=auth(admin)).is_success
    done = qustody(gateway, None, "admin", "revoke", "--before", "now", "--tenant", name)
    assert done.returncode == 0, done.stderr
    assert "token(s)" in done.stderr
    refused = http.get("/v1/projects", headers=auth(admin))
    assert (refused.status_code, refused.json()["code"]) == (401, "revoked_token")
    assert http.get("/v1/projects", headers=auth(other)).is_success  # acme untouched
    unknown = qustody(gateway, None, "admin", "revoke", "--before", "now", "--tenant", "nope-x")
    assert unknown.returncode == 1
    assert "does not exist" in unknown.stderr

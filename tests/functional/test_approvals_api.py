"""Approvals, elevation and break-glass over real HTTP and the real CLI.

A tenant's own ``@approvals`` forbids hold a job in one project for two
approvers and key rotation for one; the tenant's policies are emptied again
afterwards (the gateway is shared).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from qustody.client import Client, QustodyAPIError
from support import Gateway, auth, ghz_qasm2, qustody

LAB = "approvals-lab"
JUSTIFIED = {"reason": "calibration run for the quarterly review", "ticket": "CHG-7001"}


def _policies(project_id: str) -> str:
    return (
        '@id("lab-jobs-need-two")\n@approvals("2")\n'
        'forbid (principal, action == Qustody::Action::"job:submit", '
        f'resource == Qustody::Project::"{project_id}")\n'
        "unless { context has approved && context.approved };\n"
        '@id("rotation-needs-one")\n@approvals("1")\n'
        'forbid (principal, action == Qustody::Action::"key:rotate", resource)\n'
        "unless { context has approved && context.approved };\n"
    )


@pytest.fixture(scope="module")
def tenant(gateway: Gateway) -> Iterator[dict[str, str]]:
    """acme with a second admin, a developer in the lab project and the forbids."""
    admin = auth(gateway.tenant_admin_token)
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        lab = http.post("/v1/projects", json={"name": LAB, "data_class": "internal"}, headers=admin)
        assert lab.status_code == 201, lab.text
        for body in (
            {"principal": "acme-dev", "role": "developer", "project": LAB},
            {"principal": "acme-admin2", "role": "tenant-admin"},
        ):
            added = http.post("/v1/members", json=body, headers=admin)
            assert added.status_code == 201, added.text
        put = http.put("/v1/policies", json={"text": _policies(lab.json()["id"])}, headers=admin)
        assert put.status_code == 200, put.text
        try:
            yield {
                "admin": gateway.tenant_admin_token,
                "admin2": gateway.tenancy.token_for("acme-admin2"),
                "dev": gateway.developer_token,
            }
        finally:
            http.put("/v1/policies", json={"text": ""}, headers=admin)


def test_a_held_job_waits_for_two_other_approvers_then_runs(
    gateway: Gateway, tenant: dict[str, str]
) -> None:
    job = {"project": LAB, "backend": "aer-statevector", "shots": 64, "qasm": ghz_qasm2(2)}
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        dev = auth(tenant["dev"])
        # Without a reason and a ticket: refused, saying how to ask.
        refused = http.post("/v1/jobs", json=job, headers=dev)
        assert refused.status_code == 403, refused.text
        assert refused.json()["code"] == "approval_required"
        assert "lab-jobs-need-two" in refused.json()["detail"]

        held = http.post("/v1/jobs", json=job | {"approval": JUSTIFIED}, headers=dev)
        assert held.status_code == 202, held.text
        assert held.json()["state"] == "awaiting_approval"
        approval_id = held.json()["approval_id"]

        # A developer decides nothing, its own request least of all.
        own = http.post(f"/v1/approvals/{approval_id}:approve", json={}, headers=dev)
        assert own.status_code == 403, own.text
        assert own.json()["code"] == "forbidden"

    # Two admins approve, one through the CLI.
    first = qustody(gateway, tenant["admin"], "approval", "approve", approval_id, "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["approvals"] == 1
    listed = qustody(gateway, tenant["admin2"], "approval", "list", "--to-approve", "--json")
    assert approval_id in {a["id"] for a in json.loads(listed.stdout)}
    second = qustody(gateway, tenant["admin2"], "approval", "approve", approval_id, "--json")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["state"] == "approved"

    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        deadline = time.monotonic() + 60
        while True:
            state = http.get(f"/v1/jobs/{held.json()['id']}", headers=dev).json()["state"]
            if state in ("completed", "failed", "rejected", "cancelled"):
                break
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
        assert state == "completed"


def test_an_approval_for_a_held_action_is_spent_once(
    gateway: Gateway, tenant: dict[str, str]
) -> None:
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        admin = auth(tenant["admin"])
        held = http.post("/v1/keys/rotate", json={}, headers=admin)
        assert held.status_code == 403, held.text
        assert held.json()["code"] == "approval_required"
    asked = qustody(
        gateway,
        tenant["admin"],
        "approval",
        "request",
        "key:rotate",
        "--reason",
        JUSTIFIED["reason"],
        "--ticket",
        JUSTIFIED["ticket"],
        "--json",
    )
    assert asked.returncode == 0, asked.stderr
    approval_id = json.loads(asked.stdout)["id"]
    # An admin may approve, but never its own request (the Cedar four-eyes rule).
    own = qustody(gateway, tenant["admin"], "approval", "approve", approval_id)
    assert own.returncode == 1
    assert "'approval-never-own'" in own.stderr
    assert "[forbidden]" in own.stderr
    approved = qustody(gateway, tenant["admin2"], "approval", "approve", approval_id)
    assert approved.returncode == 0, approved.stderr

    # The SDK sends it in Qustody-Approval; the gateway spends it once.
    with Client(gateway.url, tenant["admin"]) as client:
        with client.approved(approval_id):
            assert client.rotate_keys()
            with pytest.raises(QustodyAPIError) as again:
                client.rotate_keys()
        assert client.approval(approval_id).state == "used"
    assert again.value.code == "approval_invalid"
    assert "used already" in again.value.detail


def test_an_elevation_is_approved_listed_and_revoked(
    gateway: Gateway, tenant: dict[str, str]
) -> None:
    asked = qustody(
        gateway,
        tenant["dev"],
        "elevate",
        "request",
        "viewer",
        "--project",
        "research",
        "--for",
        "30m",
        "--reason",
        JUSTIFIED["reason"],
        "--ticket",
        JUSTIFIED["ticket"],
        "--json",
    )
    assert asked.returncode == 0, asked.stderr
    approval_id = json.loads(asked.stdout)["id"]
    assert qustody(gateway, tenant["admin"], "approval", "approve", approval_id).returncode == 0
    active = qustody(gateway, tenant["dev"], "elevate", "list", "--active", "--json")
    grants = [g for g in json.loads(active.stdout) if g["approval_id"] == approval_id]
    assert len(grants) == 1
    assert grants[0]["active"]
    revoked = qustody(gateway, tenant["dev"], "elevate", "revoke", grants[0]["id"])
    assert revoked.returncode == 0, revoked.stderr
    after = qustody(gateway, tenant["dev"], "elevate", "list", "--active", "--json")
    assert grants[0]["id"] not in {g["id"] for g in json.loads(after.stdout)}


def test_break_glass_is_for_platform_operators_only(
    gateway: Gateway, tenant: dict[str, str]
) -> None:
    refused = qustody(
        gateway,
        tenant["admin"],
        "breakglass",
        "invoke",
        "--reason",
        "the primary HSM is down and jobs are stuck",
        "--for",
        "15m",
    )
    assert refused.returncode == 1
    assert "may not breakglass:invoke" in refused.stderr
    assert "[forbidden]" in refused.stderr

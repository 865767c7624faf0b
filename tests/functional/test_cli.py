"""The real ``qustody`` command against the real gateway."""

from __future__ import annotations

import json
from pathlib import Path

from support import Gateway, qustody

GHZ = Path(__file__).resolve().parents[2] / "examples" / "ghz.qasm"


def test_submit_wait_result_and_listings(gateway: Gateway) -> None:
    token = gateway.developer_token
    submitted = qustody(
        gateway,
        token,
        "submit",
        str(GHZ),
        "--backend",
        "aer-statevector",
        "--shots",
        "200",
        "--project",
        "research",
        "--seed",
        "11",
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert job_id.startswith("job_")

    waited = qustody(gateway, token, "jobs", "wait", job_id, "--timeout", "90")
    assert waited.returncode == 0, waited.stderr
    assert "completed" in waited.stdout
    assert "running" in waited.stderr or "queued" in waited.stderr or "completed" in waited.stderr

    result = json.loads(qustody(gateway, token, "result", job_id, "--json").stdout)
    assert set(result["counts"]) <= {"00000", "11111"}
    assert sum(result["counts"].values()) == 200

    listed = json.loads(qustody(gateway, token, "jobs", "list", "--json", "--limit", "5").stdout)
    assert job_id in {j["id"] for j in listed}
    shown = json.loads(qustody(gateway, token, "jobs", "show", job_id, "--json").stdout)
    assert [t["to_state"] for t in shown["transitions"]][-1] == "completed"
    table = qustody(gateway, token, "backends", "list")
    assert "aer-stabilizer" in table.stdout
    assert json.loads(qustody(gateway, token, "backends", "list", "--json").stdout)


def test_admin_flow_through_the_cli(gateway: Gateway) -> None:
    root = gateway.token_for("platform-admin")
    created = qustody(gateway, root, "tenant", "create", "initech", "--admin", "lumbergh")
    assert created.returncode == 0, created.stderr
    tenant_token = created.stdout.strip()
    assert (
        qustody(
            gateway, tenant_token, "project", "create", "tps", "--data-class", "confidential"
        ).returncode
        == 0
    )
    added = qustody(
        gateway,
        tenant_token,
        "member",
        "add",
        "milton",
        "--role",
        "developer",
        "--project",
        "tps",
        "--json",
    )
    assert json.loads(added.stdout)["role"] == "developer"
    members = json.loads(qustody(gateway, tenant_token, "member", "list", "--json").stdout)
    assert {m["name"] for m in members} == {"lumbergh", "milton"}
    milton = qustody(
        gateway,
        tenant_token,
        "token",
        "issue",
        "--principal",
        "milton",
        "--scope",
        "job",
        "--scope",
        "result",
        "--ttl",
        "300",
        "--json",
    )
    issued = json.loads(milton.stdout)
    assert issued["scopes"] == ["job", "result"]
    projects = json.loads(qustody(gateway, issued["token"], "jobs", "list", "--json").stdout)
    assert projects == []
    tenants = json.loads(qustody(gateway, root, "tenant", "list", "--json").stdout)
    assert "initech" in {t["name"] for t in tenants}


def test_errors_print_detail_and_code_without_a_trace(gateway: Gateway) -> None:
    out = qustody(
        gateway,
        gateway.developer_token,
        "submit",
        str(GHZ),
        "--backend",
        "nope",
        "--project",
        "research",
    )
    assert out.returncode == 1
    assert "[unknown_backend]" in out.stderr
    assert "Traceback" not in out.stderr
    viewer = qustody(
        gateway,
        gateway.viewer_token,
        "submit",
        str(GHZ),
        "--backend",
        "aer-statevector",
        "--project",
        "research",
    )
    assert "[forbidden]" in viewer.stderr
    no_token = qustody(gateway, None, "jobs", "list")
    assert no_token.returncode != 0
    assert "token" in no_token.stderr.lower()

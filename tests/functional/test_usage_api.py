"""Usage, quotas and estimates over HTTP and the CLI, against the shared gateway:
the 80 % warning header, the 429 with Retry-After at the limit, an estimate
that stores nothing, and ``qustody usage``."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from support import Gateway, auth, qustody

ONE_QUBIT = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[1];\ncreg c[1];\nh q[0];\nmeasure q -> c;'
#: A backend few other tests use; its quota is removed again at the end.
BACKEND = "aer-stabilizer"


@pytest.fixture
def http(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        yield client


def test_usage_warning_header_429_and_estimate(http: httpx.Client, gateway: Gateway) -> None:
    root = auth(gateway.tenancy.runtime.services.admin.operator_token("root").token)
    dev = auth(gateway.developer_token)
    tenant_id = gateway.tenancy.developer.tenant_id
    quota = {"metric": "shots_per_day", "tenant": tenant_id, "backend": BACKEND}
    # What today's jobs on the backend already used, then room for 1 000 more shots.
    first = http.put("/v1/quotas", json={**quota, "limit": 10**9}, headers=root)
    assert first.status_code == 200, first.text
    used = first.json()["used"]
    try:
        assert http.put("/v1/quotas", json={**quota, "limit": used + 1000}, headers=root).is_success
        job = {"project": "research", "backend": BACKEND, "shots": 850, "qasm": ONE_QUBIT}
        accepted = http.post("/v1/jobs", json=job, headers=dev)
        assert accepted.status_code == 202, accepted.text
        assert "shots_per_day" in accepted.headers["Qustody-Quota-Warning"]
        assert [w["code"] for w in accepted.json()["warnings"]] == ["quota_warning"]

        estimate = http.post("/v1/jobs:estimate", json={**job, "shots": 200}, headers=dev)
        assert estimate.status_code == 200, estimate.text
        body = estimate.json()
        assert body["admitted"] is False
        assert body["refusal"]["code"] == "quota_exceeded"
        assert body["estimated_cost"] == 0  # the local simulators are free unless priced

        refused = http.post("/v1/jobs", json={**job, "shots": 200}, headers=dev)
        assert refused.status_code == 429
        problem = refused.json()
        assert refused.headers["content-type"] == "application/problem+json"
        assert problem["code"] == "quota_exceeded"
        assert (problem["quota"], problem["scope"], problem["limit"], problem["used"]) == (
            "shots_per_day",
            f"backend:{BACKEND}",
            used + 1000,
            used + 850,
        )
        assert problem["resets_at"]
        assert int(refused.headers["Retry-After"]) > 0

        answer = http.get("/v1/usage", params={"backend": BACKEND}, headers=dev).json()
        assert [(q["metric"], q["used"]) for q in answer["quotas"]] == [
            ("shots_per_day", used + 850)
        ]
        cli = qustody(gateway, gateway.viewer_token, "usage", "--backend", BACKEND, "--json")
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout)["quotas"][0]["limit"] == used + 1000
        table = qustody(gateway, gateway.viewer_token, "usage")
        assert table.returncode == 0, table.stderr
        assert "shots_per_day" in table.stdout
    finally:
        http.put("/v1/quotas", json={**quota, "limit": None}, headers=root)

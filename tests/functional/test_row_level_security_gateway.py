"""A gateway on PostgreSQL, as a role that row-level security binds, over real HTTP.

``qustody serve`` (API plus embedded worker process) connects as the test
run's role (neither a superuser nor ``BYPASSRLS``, ``tests/conftest.py``), so
every request's transactions run in its caller's tenant scope, the worker's
and the audit checkpointer's in system scope, and the platform admin's
cross-tenant operations in the system scope their services ask for.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from qustody.api.app import build_runtime
from support import Gateway, auth, free_port, ghz_qasm2, make_settings, seed, wait_ready

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def pg_gateway(postgres_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("rls-gateway")
    runtime = build_runtime(make_settings(root, postgres_server))
    server: subprocess.Popen[bytes] | None = None
    try:
        tenancy = seed(runtime)
        port = free_port()
        gateway = Gateway(f"http://127.0.0.1:{port}", tenancy, root / "data", postgres_server)
        with (root / "server.log").open("wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "qustody.cli", "serve", "--port", str(port)],
                env=gateway.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_ready(gateway.url, server, root / "server.log", timeout=180)
        yield gateway
        assert "row-level security" not in (root / "server.log").read_text(errors="replace")
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)
        runtime.close()
        _empty(postgres_server)


def _empty(database_url: str) -> None:
    dsn = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


@pytest.fixture
def http(pg_gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=pg_gateway.url, timeout=60) as client:
        yield client


def _events(answer: httpx.Response) -> list[dict[str, object]]:
    assert answer.status_code == 200, answer.text
    records = [json.loads(line) for line in answer.text.splitlines() if line.strip()]
    return [record["event"] for record in records if record["type"] == "event"]


def test_a_job_runs_end_to_end_in_its_tenants_scope(
    pg_gateway: Gateway, http: httpx.Client
) -> None:
    developer = auth(pg_gateway.developer_token)
    submitted = http.post(
        "/v1/jobs",
        json={
            "project": "research",
            "backend": "aer-statevector",
            "shots": 64,
            "qasm": ghz_qasm2(3),
            "name": "isolated",
        },
        headers=developer,
    )
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    done = http.get(f"/v1/jobs/{job_id}", params={"wait": 30}, headers=developer)
    for _ in range(5):  # the worker is another process; give it a few rounds
        if done.json()["state"] == "completed":
            break
        done = http.get(f"/v1/jobs/{job_id}", params={"wait": 30}, headers=developer)
    assert done.json()["state"] == "completed", done.text
    result = http.get(f"/v1/jobs/{job_id}/result", headers=developer)
    assert result.status_code == 200, result.text
    assert set(result.json()["counts"]) <= {"000", "111"}
    listed = http.get("/v1/jobs", headers=developer).json()["items"]
    assert job_id in {job["id"] for job in listed}

    outsider = auth(pg_gateway.token_for("outsider"))
    assert http.get(f"/v1/jobs/{job_id}", headers=outsider).status_code == 404
    assert http.get(f"/v1/jobs/{job_id}/result", headers=outsider).status_code == 404
    theirs = http.get("/v1/jobs", headers=outsider).json()["items"]
    assert job_id not in {job["id"] for job in theirs}


def test_a_tenant_admin_exports_only_their_tenants_events(
    pg_gateway: Gateway, http: httpx.Client
) -> None:
    acme = pg_gateway.tenancy.tenant_admin.tenant_id
    events = _events(http.get("/v1/audit/export", headers=auth(pg_gateway.tenant_admin_token)))
    assert events
    assert {event["tenant_id"] for event in events} == {acme}


def test_platform_admin_operations_span_tenants(pg_gateway: Gateway, http: httpx.Client) -> None:
    root = auth(pg_gateway.token_for("platform-admin"))
    created = http.post(
        "/v1/tenants", json={"name": "initech", "admin_name": "initech-admin"}, headers=root
    )
    assert created.status_code in (200, 201), created.text
    listed = http.get("/v1/tenants", headers=root)
    assert listed.status_code == 200, listed.text
    tenants = {tenant["name"]: tenant["id"] for tenant in listed.json()["items"]}
    assert set(tenants) >= {"platform", "acme", "globex", "initech"}
    one = http.get(f"/v1/tenants/{tenants['globex']}", headers=root)
    assert one.status_code == 200, one.text
    assert http.post("/v1/audit/checkpoint", headers=root).status_code == 200
    events = _events(http.get("/v1/audit/export", params={"scope": "platform"}, headers=root))
    owners = {event["tenant_id"] for event in events}
    assert owners >= {None, tenants["platform"], tenants["acme"], tenants["globex"]}

    # A tenant admin reaches their own tenant only.
    admin = auth(pg_gateway.tenant_admin_token)
    acme = pg_gateway.tenancy.tenant_admin.tenant_id
    assert http.get(f"/v1/tenants/{acme}", headers=admin).status_code == 200
    assert http.get(f"/v1/tenants/{tenants['globex']}", headers=admin).status_code == 404


def test_sign_ins_that_find_the_tenant_themselves_work(
    pg_gateway: Gateway, http: httpx.Client
) -> None:
    """An API key and a local account are looked up before any tenant is
    known (system scope); what they then do runs in their tenant's scope."""
    admin = auth(pg_gateway.tenant_admin_token)
    acme = pg_gateway.tenancy.tenant_admin.tenant_id
    created = http.post(
        "/v1/api-keys",
        json={"principal": "acme-dev", "name": "robot", "expires_in_days": 7},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    keyed = http.get("/v1/jobs", headers=auth(created.json()["key"]))
    assert keyed.status_code == 200, keyed.text
    assert {job["tenant_id"] for job in keyed.json()["items"]} <= {acme}

    password = "correct horse battery staple 42"
    assert (
        http.put(
            "/v1/principals/acme-view/password", json={"password": password}, headers=admin
        ).status_code
        == 204
    )
    signed_in = http.post(
        "/v1/auth/local",
        json={"tenant": "acme", "username": "acme-view", "password": password},
    )
    assert signed_in.status_code == 200, signed_in.text
    assert signed_in.json()["tenant_id"] == acme
    projects = http.get("/v1/projects", headers=auth(signed_in.json()["token"]))
    assert projects.status_code == 200, projects.text


def test_a_tenant_admin_writes_policies_and_provisions_users(
    pg_gateway: Gateway, http: httpx.Client
) -> None:
    admin = auth(pg_gateway.tenant_admin_token)
    text = '@id("no-prod")\nforbid (principal, action, resource) when { principal.tenant == "" };'
    stored = http.put("/v1/policies", json={"text": text}, headers=admin)
    assert stored.status_code == 200, stored.text
    assert http.get("/v1/policies", headers=admin).json()["text"] == text
    # The policies are in force for the tenant's next decision, read in its scope.
    assert http.get("/v1/jobs", headers=auth(pg_gateway.developer_token)).status_code == 200

    user = {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "acme-scim",
        "externalId": "idp-42",
    }
    created = http.post("/scim/v2/Users", json=user, headers=admin)
    assert created.status_code == 201, created.text
    found = http.get("/scim/v2/Users", params={"filter": 'userName eq "acme-scim"'}, headers=admin)
    assert found.status_code == 200, found.text
    assert found.json()["totalResults"] == 1
    outsider = auth(pg_gateway.token_for("outsider"))
    theirs = http.get(
        "/scim/v2/Users", params={"filter": 'userName eq "acme-scim"'}, headers=outsider
    )
    assert theirs.status_code in (200, 403), theirs.text
    if theirs.status_code == 200:
        assert theirs.json()["totalResults"] == 0


def test_a_caller_without_a_token_reaches_no_tenant_data(
    pg_gateway: Gateway, http: httpx.Client
) -> None:
    assert http.get("/v1/jobs").status_code == 401
    assert http.get("/v1/audit/checkpoint").status_code in (200, 404)  # public, global

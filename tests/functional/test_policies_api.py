"""Tenant policies and MFA step-up over real HTTP, against a real ``qustody
serve`` that enforces step-up as production does; the real CLI and SDK."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from qustody.api.app import build_runtime
from qustody.client import Client, QustodyAPIError, StepUpRequired
from qustody.identity.tokens import SignIn
from support import Gateway, auth, free_port, ghz_qasm2, make_settings, qustody, seed, wait_ready

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
SMALL_JOBS = """// small jobs in dev
@id("dev-max-3-qubits")
forbid (principal, action == Qustody::Action::"job:submit", resource)
when
{
  context has backend && context.backend.environment == "dev" &&
  context has qubits && context.qubits > 3
};
"""
CHALLENGE = (
    'Bearer error="insufficient_user_authentication", '
    'error_description="policy:set needs a multi-factor sign-in at most 900 seconds before '
    'the request", acr_values="mfa", max_age="900"'
)


@pytest.fixture(scope="module")
def strict_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway with QUSTODY_STEP_UP=true (what production mode enforces)."""
    root = tmp_path_factory.mktemp("strict-gateway")
    database_url = f"sqlite:///{root / 'data' / 'qustody.db'}"
    runtime = build_runtime(make_settings(root, database_url, step_up=True))
    tenancy = seed(runtime)
    port = free_port()
    gw = Gateway(f"http://127.0.0.1:{port}", tenancy, root / "data", database_url)
    log = (root / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "qustody.cli", "serve", "--port", str(port)],
        env={**gw.env(), "QUSTODY_STEP_UP": "true"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(gw.url, server, root / "server.log")
        yield gw
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        runtime.close()


@pytest.fixture
def http(strict_gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=strict_gateway.url, timeout=30) as client:
        yield client


def sign_in(gateway: Gateway, name: str, tenant: str = "acme", *, mfa: bool = True) -> str:
    """A token as an OIDC sign-in a minute ago would give ``name`` (with or without MFA)."""
    services = gateway.tenancy.runtime.services
    principal = gateway.tenancy.principal(name, tenant)
    how = SignIn(
        method="oidc",
        source="https://idp.example",
        acr="mfa" if mfa else None,
        amr=("otp", "pwd") if mfa else ("pwd",),
        auth_time=datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1),
    )
    with services.db.write() as session:
        issued = services.tokens.issue(
            session, principal_id=principal.id, tenant_id=principal.tenant_id, sign_in=how
        )
    return issued.token


def test_a_privileged_action_without_fresh_mfa_gets_the_rfc_9470_challenge(
    http: httpx.Client, strict_gateway: Gateway
) -> None:
    weak = sign_in(strict_gateway, "acme-admin", mfa=False)
    response = http.put("/v1/policies", json={"text": SMALL_JOBS}, headers=auth(weak))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == CHALLENGE
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "insufficient_user_authentication"
    assert (body["acr_values"], body["max_age"]) == ("mfa", 900)
    assert body["policy_ids"] == ["step-up-privileged"]
    # The admin-issued token (no sign-in at all) gets the same answer.
    admin_token = strict_gateway.tenant_admin_token
    again = http.post("/v1/keys/rotate", json={}, headers=auth(admin_token))
    assert again.status_code == 401
    assert 'error="insufficient_user_authentication"' in again.headers["www-authenticate"]
    # Reading needs no step-up.
    assert http.get("/v1/policies", headers=auth(weak)).status_code == 200


def test_policies_round_trip_over_http(http: httpx.Client, strict_gateway: Gateway) -> None:
    strong = auth(sign_in(strict_gateway, "acme-admin"))
    start = http.get("/v1/policies", headers=strong).json()["version"]

    stored = http.put(
        "/v1/policies",
        json={"text": SMALL_JOBS, "comment": "small jobs", "base_version": start},
        headers=strong,
    )
    assert stored.status_code == 200, stored.text
    version = stored.json()["version"]
    assert version == start + 1
    current = http.get("/v1/policies", headers=strong).json()
    assert (current["version"], current["text"], current["comment"]) == (
        version,
        SMALL_JOBS,
        "small jobs",
    )
    listed = http.get("/v1/policies/versions", headers=strong).json()["items"]
    assert listed[0]["version"] == version
    assert "text" not in listed[0]
    one = http.get(f"/v1/policies/versions/{version}", headers=strong).json()
    assert one["text"] == SMALL_JOBS
    diff = http.get("/v1/policies/diff", params={"from": 0, "to": version}, headers=strong).json()
    assert diff["diff"].startswith(f"--- v0\n+++ v{version}\n")

    permit = SMALL_JOBS + '\n@id("everyone-submits")\npermit (principal, action, resource);\n'
    refused = http.put("/v1/policies", json={"text": permit}, headers=strong)
    assert refused.status_code == 422
    problem = refused.json()
    assert problem["code"] == "invalid_policy"
    assert (problem["field"], problem["line"], problem["policy_id"]) == (
        "text",
        10,
        "everyone-submits",
    )
    assert 'policy "everyone-submits" at line 10 is a permit' in problem["detail"]

    stale = http.put(
        "/v1/policies", json={"text": SMALL_JOBS, "base_version": start}, headers=strong
    )
    assert stale.status_code == 409
    missing = http.get("/v1/policies/versions/999", headers=strong)
    assert missing.status_code == 404
    developer = http.get("/v1/policies", headers=auth(strict_gateway.developer_token))
    assert developer.status_code == 403
    assert developer.json()["policy_ids"] == []


def test_a_denial_names_the_rule_and_a_foreign_job_stays_not_found(
    http: httpx.Client, strict_gateway: Gateway
) -> None:
    strong = auth(sign_in(strict_gateway, "acme-admin"))
    assert http.put("/v1/policies", json={"text": SMALL_JOBS}, headers=strong).status_code == 200
    developer = auth(strict_gateway.developer_token)
    job = {"project": "research", "backend": "aer-stabilizer", "shots": 10}

    small = http.post("/v1/jobs", json={**job, "qasm": ghz_qasm2(3)}, headers=developer)
    assert small.status_code == 202, small.text
    big = http.post("/v1/jobs", json={**job, "qasm": ghz_qasm2(8)}, headers=developer)
    assert big.status_code == 403
    assert big.json()["policy_ids"] == ["dev-max-3-qubits"]
    assert "the policy 'dev-max-3-qubits' forbids it" in big.json()["detail"]

    # Globex: acme's rule does not apply to it, and acme's job is not found.
    outsider = auth(strict_gateway.token_for("outsider"))
    theirs = http.post("/v1/jobs", json={**job, "qasm": ghz_qasm2(8)}, headers=outsider)
    assert theirs.status_code == 202, theirs.text
    foreign = http.get(f"/v1/jobs/{small.json()['id']}", headers=outsider).json()
    missing = http.get("/v1/jobs/job_01JZZZZZZZZZZZZZZZZZZZZZZZ", headers=outsider).json()
    assert foreign["code"] == missing["code"] == "not_found"
    assert "policy_ids" not in foreign
    assert foreign["detail"].replace(small.json()["id"], "ID") == missing["detail"].replace(
        "job_01JZZZZZZZZZZZZZZZZZZZZZZZ", "ID"
    )


def test_an_sdk_version_rule_reaches_the_sdk(strict_gateway: Gateway) -> None:
    rule = """
    @id("sdk-at-least-99")
    forbid (principal, action == Qustody::Action::"job:submit", resource)
    when { context has sdk_version_number && context.sdk_version_number < 99000000 };
    """
    with Client(strict_gateway.url, sign_in(strict_gateway, "acme-admin")) as admin:
        admin.set_policy(rule, comment="upgrade to 99")
    qasm = ghz_qasm2(2)
    sdk = Client(strict_gateway.url, strict_gateway.developer_token)
    with sdk, pytest.raises(QustodyAPIError) as caught:
        sdk.submit(qasm, backend="aer-statevector", project="research", shots=10)
    assert caught.value.status == 403
    assert caught.value.extras["policy_ids"] == ["sdk-at-least-99"]
    plain = httpx.post(
        f"{strict_gateway.url}/v1/jobs",
        json={"project": "research", "backend": "aer-statevector", "shots": 10, "qasm": qasm},
        headers={**auth(strict_gateway.developer_token), "User-Agent": "curl/8.5"},
    )
    assert plain.status_code == 202, plain.text


def test_the_sdk_raises_step_up_required(strict_gateway: Gateway) -> None:
    with Client(strict_gateway.url, sign_in(strict_gateway, "acme-admin", mfa=False)) as client:
        with pytest.raises(StepUpRequired) as caught:
            client.set_policy(SMALL_JOBS)
        assert client.policy().version >= 0
    error = caught.value
    assert (error.status, error.code) == (401, "insufficient_user_authentication")
    assert (error.acr_values, error.max_age) == ("mfa", 900)


def test_the_cli_gets_sets_lists_and_diffs(strict_gateway: Gateway, tmp_path: Path) -> None:
    strong = sign_in(strict_gateway, "acme-admin")
    policy_file = tmp_path / "tenant.cedar"
    policy_file.write_text((EXAMPLES / "tenant-policies.cedar").read_text())
    stored = qustody(strict_gateway, strong, "policy", "set", str(policy_file), "-m", "examples")
    assert stored.returncode == 0, stored.stderr
    assert "in force" in stored.stdout
    shown = qustody(strict_gateway, strong, "policy", "get")
    assert shown.returncode == 0, shown.stderr
    assert '@id("researchers-no-prod-qpu")' in shown.stdout
    history = qustody(strict_gateway, strong, "policy", "history")
    assert history.returncode == 0, history.stderr
    assert "examples" in history.stdout
    diff = qustody(strict_gateway, strong, "policy", "diff")
    assert diff.returncode == 0, diff.stderr
    assert '+@id("dev-max-30-qubits")' in diff.stdout


def test_the_cli_says_how_to_step_up(strict_gateway: Gateway, tmp_path: Path) -> None:
    policy_file = tmp_path / "tenant.cedar"
    policy_file.write_text(SMALL_JOBS)
    weak = sign_in(strict_gateway, "acme-admin", mfa=False)
    refused = qustody(strict_gateway, weak, "policy", "set", str(policy_file))
    assert refused.returncode == 1
    assert "[insufficient_user_authentication]" in refused.stderr
    assert "qustody login --max-age 900 --acr mfa" in refused.stderr


def test_policy_test_runs_the_documented_cases_offline(tmp_path: Path) -> None:
    passing = subprocess.run(
        [
            sys.executable,
            "-m",
            "qustody.cli",
            "policy",
            "test",
            str(EXAMPLES / "policy-cases.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert passing.returncode == 0, passing.stdout + passing.stderr
    assert "12 of 12 cases as expected" in passing.stdout

    cases = tmp_path / "cases.json"
    cases.write_text(
        '{"cases": [{"name": "viewers submit", "action": "job:submit",'
        ' "principal": {"roles": ["viewer"]}, "resource": {"type": "project", "id": "p"},'
        ' "expect": "allow"}]}'
    )
    failing = subprocess.run(
        [sys.executable, "-m", "qustody.cli", "policy", "test", str(cases)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert failing.returncode == 1
    assert "MISMATCH" in failing.stdout
    assert "0 of 1 cases as expected; 1 mismatched" in failing.stdout

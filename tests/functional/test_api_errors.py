"""The bad-input suite: every refusal is problem+json with its own stable code,
and no response carries a stack trace or file content."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import OKPKey
from sqlalchemy import text

from support import Gateway, auth

GOOD = (
    'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\n'
    "h q[0];\ncx q[0],q[1];\nmeasure q -> c;\n"
)
LEAKS = (
    "Traceback",
    'File "',
    "root:x:0:0",
    "/etc/passwd:",
    "sqlalchemy",
    "psycopg",
    "site-packages",
)


def check_problem(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, object] = response.json()
    assert body["code"] == code, body
    assert body["status"] == status
    assert body["type"] == f"urn:qustody:problem:{code}"
    assert isinstance(body["detail"], str)
    assert body["detail"]
    for leak in LEAKS:
        assert leak not in response.text, leak
    return body


def job(**overrides: object) -> dict[str, object]:
    return {
        "project": "research",
        "backend": "aer-statevector",
        "shots": 100,
        "qasm": GOOD,
    } | overrides


@pytest.fixture
def dev(gateway: Gateway) -> dict[str, str]:
    return auth(gateway.developer_token)


def test_malformed_json(http: httpx.Client, dev: dict[str, str]) -> None:
    r = http.post(
        "/v1/jobs",
        content=b'{"project": "research", ',
        headers=dev | {"content-type": "application/json"},
    )
    check_problem(r, 400, "malformed_json")


def test_wrong_type(http: httpx.Client, dev: dict[str, str]) -> None:
    body = check_problem(
        http.post("/v1/jobs", json=job(shots="many"), headers=dev), 422, "invalid_type"
    )
    assert body["field"] == "shots"


def test_missing_field(http: httpx.Client, dev: dict[str, str]) -> None:
    payload = job()
    del payload["qasm"]
    body = check_problem(http.post("/v1/jobs", json=payload, headers=dev), 422, "missing_field")
    assert body["field"] == "qasm"


def test_unknown_field(http: httpx.Client, dev: dict[str, str]) -> None:
    check_problem(http.post("/v1/jobs", json=job(pickle="x"), headers=dev), 422, "unknown_field")


def test_unknown_backend(http: httpx.Client, dev: dict[str, str]) -> None:
    body = check_problem(
        http.post("/v1/jobs", json=job(backend="ibm_quantum_falcon"), headers=dev),
        422,
        "unknown_backend",
    )
    assert body["field"] == "backend"
    assert "aer-statevector" in str(body["detail"])


def test_too_many_shots(http: httpx.Client, dev: dict[str, str]) -> None:
    body = check_problem(
        http.post("/v1/jobs", json=job(shots=10**9), headers=dev), 422, "too_many_shots"
    )
    assert body["field"] == "shots"
    assert "100000" in str(body["detail"]).replace(",", "")


def test_forbidden_include(http: httpx.Client, dev: dict[str, str]) -> None:
    qasm = 'OPENQASM 2.0;\ninclude "/etc/passwd";\nqreg q[1];\n'
    body = check_problem(
        http.post("/v1/jobs", json=job(qasm=qasm), headers=dev), 422, "forbidden_include"
    )
    assert str(body["job_id"]).startswith("job_")


def test_malformed_circuit_names_the_line(http: httpx.Client, dev: dict[str, str]) -> None:
    qasm = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\nh q[0]\ncx q[0] q[1];\n'
    body = check_problem(
        http.post("/v1/jobs", json=job(qasm=qasm), headers=dev), 422, "invalid_circuit"
    )
    assert "line" in str(body["detail"]).lower()


def test_oversize_register(http: httpx.Client, dev: dict[str, str]) -> None:
    qasm = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[10000000];\n'
    started = time.monotonic()
    r = http.post("/v1/jobs", json=job(qasm=qasm), headers=dev)
    check_problem(r, 422, "too_many_qubits")
    assert (
        time.monotonic() - started < 30
    )  # refused before parsing; generous bound, not a benchmark


def test_oversize_circuit(http: httpx.Client, dev: dict[str, str]) -> None:
    qasm = GOOD + "// " + "x" * (1024 * 1024) + "\n"
    body = check_problem(
        http.post("/v1/jobs", json=job(qasm=qasm), headers=dev), 413, "circuit_too_large"
    )
    assert body["field"] == "qasm"


def test_oversize_body(http: httpx.Client, dev: dict[str, str]) -> None:
    r = http.post(
        "/v1/jobs",
        content=b"x" * (3 * 1024 * 1024),
        headers=dev | {"content-type": "application/json"},
    )
    check_problem(r, 413, "request_too_large")


def test_missing_token(http: httpx.Client) -> None:
    r = http.get("/v1/jobs")
    check_problem(r, 401, "missing_token")
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_malformed_token(http: httpx.Client) -> None:
    check_problem(http.get("/v1/jobs", headers=auth("abc def")), 401, "malformed_token")


def test_forged_token(http: httpx.Client, gateway: Gateway) -> None:
    real = gateway.developer_token
    claims = json.loads(base64.urlsafe_b64decode(real.split(".")[1] + "=="))
    forged = jwt.encode(
        {"alg": "Ed25519"}, claims, OKPKey.generate_key("Ed25519"), algorithms=["Ed25519"]
    )
    check_problem(http.get("/v1/jobs", headers=auth(forged)), 401, "invalid_token")


def test_expired_token(http: httpx.Client, gateway: Gateway) -> None:
    short = http.post("/v1/tokens", json={"ttl_seconds": 1}, headers=auth(gateway.developer_token))
    assert short.status_code == 201, short.text
    time.sleep(1.5)
    check_problem(http.get("/v1/jobs", headers=auth(short.json()["token"])), 401, "expired_token")


def test_revoked_token(http: httpx.Client, gateway: Gateway) -> None:
    issued = http.post(
        "/v1/tokens", json={"ttl_seconds": 300}, headers=auth(gateway.developer_token)
    ).json()
    assert (
        http.delete(f"/v1/tokens/{issued['jti']}", headers=auth(issued["token"])).status_code == 204
    )
    check_problem(http.get("/v1/jobs", headers=auth(issued["token"])), 401, "revoked_token")


def test_token_ttl_over_limit(http: httpx.Client, dev: dict[str, str]) -> None:
    body = check_problem(
        http.post("/v1/tokens", json={"ttl_seconds": 86400}, headers=dev), 422, "invalid_ttl"
    )
    assert body["field"] == "ttl_seconds"


def test_unknown_job_and_route(http: httpx.Client, dev: dict[str, str]) -> None:
    check_problem(
        http.get("/v1/jobs/job_01JZZZZZZZZZZZZZZZZZZZZZZZ", headers=dev), 404, "not_found"
    )
    check_problem(http.get("/v1/jobs/../../etc/passwd", headers=dev), 404, "no_such_endpoint")
    check_problem(http.get("/v1/nothing", headers=dev), 404, "no_such_endpoint")
    check_problem(http.put("/v1/jobs", headers=dev), 405, "method_not_allowed")


def test_forbidden_role(http: httpx.Client, gateway: Gateway) -> None:
    r = http.post("/v1/jobs", json=job(), headers=auth(gateway.viewer_token))
    check_problem(r, 403, "forbidden")


def test_invalid_query(http: httpx.Client, dev: dict[str, str]) -> None:
    check_problem(http.get("/v1/jobs?limit=100000", headers=dev), 422, "invalid_request")
    check_problem(http.get("/v1/jobs?state=exploded", headers=dev), 422, "invalid_request")
    check_problem(http.get("/v1/jobs?cursor=%27%3BDROP", headers=dev), 422, "invalid_request")


def test_garbage_bytes_never_500(http: httpx.Client, dev: dict[str, str]) -> None:
    for body in (b"\xff\xfe\x00", b"[]", b"null", b'"str"', b"{}", b'{"qasm": null}'):
        r = http.post("/v1/jobs", content=body, headers=dev | {"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (body, r.text)
        check_problem(r, r.status_code, r.json()["code"])


def test_no_token_or_payload_reaches_logs_or_audit(http: httpx.Client, gateway: Gateway) -> None:
    """After a full job and a few refusals, neither the server's log nor the
    audit table holds a token, the circuit or the counts."""
    token = gateway.developer_token
    marker = "qreg redactme[2]"
    qasm = (
        GOOD.replace("qreg q[2]", marker).replace("q[", "redactme[").replace("q ->", "redactme ->")
    )
    submitted = http.post("/v1/jobs", json=job(qasm=qasm, memory=True), headers=auth(token))
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    deadline = time.monotonic() + 60
    while http.get(f"/v1/jobs/{job_id}", headers=auth(token)).json()["state"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    counts = http.get(f"/v1/jobs/{job_id}/result", headers=auth(token)).json()["counts"]
    http.get("/v1/jobs", headers=auth(token + "x"))  # a failed authentication
    http.get("/v1/jobs", headers=auth("garbage"))

    log = (gateway.data_dir.parent / "server.log").read_text(errors="replace")
    with gateway.tenancy.runtime.services.db.read() as session:
        rows = session.execute(text("SELECT * FROM audit_events")).all()
    audit = "\n".join(repr(tuple(row)) for row in rows)
    for haystack in (log, audit):
        assert token not in haystack
        assert token.split(".")[2] not in haystack  # not even the signature
        assert "redactme" not in haystack
        assert "OPENQASM" not in haystack
        assert json.dumps(counts) not in haystack


def test_waiting_for_a_job(http: httpx.Client, dev: dict[str, str]) -> None:
    job_id = http.post("/v1/jobs", json=job(), headers=dev).json()["id"]
    done = http.get(f"/v1/jobs/{job_id}", params={"wait": 30}, headers=dev, timeout=60)
    assert done.json()["state"] == "completed"
    body = check_problem(
        http.get(f"/v1/jobs/{job_id}", params={"wait": 31}, headers=dev), 422, "invalid_request"
    )
    assert body["field"] == "wait"

"""Keys, the secrets vault and sealed exports over real HTTP and the real CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from qustody.crypto.sealed import XWingPrivateKey, open_sealed, read_private_key
from support import Gateway, auth, qustody

ONE_QUBIT = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[1];\ncreg c[1];\nh q[0];\nmeasure q -> c;'


def _finished_job(http: httpx.Client, token: str, **extra: object) -> str:
    body = {"project": "research", "backend": "aer-automatic", "shots": 32, "qasm": ONE_QUBIT}
    answer = http.post("/v1/jobs", json=body | extra, headers=auth(token))
    assert answer.status_code == 202, answer.text
    job_id = str(answer.json()["id"])
    deadline = time.monotonic() + 120
    while True:
        done = http.get(f"/v1/jobs/{job_id}", params={"wait": 30}, headers=auth(token)).json()
        if done["state"] in ("completed", "failed") or time.monotonic() > deadline:
            break
    assert done["state"] == "completed", done
    return job_id


def test_job_name_and_labels_round_trip_and_bad_labels_name_the_field(
    gateway: Gateway, http: httpx.Client
) -> None:
    token = gateway.developer_token
    job_id = _finished_job(http, token, name="bell check", labels={"team": "qec"})
    shown = http.get(f"/v1/jobs/{job_id}", headers=auth(token)).json()
    assert shown["name"] == "bell check"
    assert shown["labels"] == {"team": "qec"}
    bad = http.post(
        "/v1/jobs",
        json={
            "project": "research",
            "backend": "aer-automatic",
            "qasm": ONE_QUBIT,
            "labels": {"no spaces allowed": "x"},
        },
        headers=auth(token),
    )
    assert bad.status_code == 422
    assert bad.headers["content-type"].startswith("application/problem+json")
    assert "labels" in bad.json()["detail"]


def test_secrets_are_write_only_and_tenant_scoped(gateway: Gateway, http: httpx.Client) -> None:
    admin = auth(gateway.tenant_admin_token)
    value = "ibm-api-token-4f1c9a7e0b"
    put = http.put("/v1/secrets/ibm-quantum", json={"value": value}, headers=admin)
    assert put.status_code == 200, put.text
    assert value not in put.text
    listed = http.get("/v1/secrets", headers=admin)
    assert [s["name"] for s in listed.json()["items"]] == ["ibm-quantum"]
    assert value not in listed.text
    # There is no route that reads a value back.
    assert http.get("/v1/secrets/ibm-quantum", headers=admin).status_code == 405
    assert (
        http.put(
            "/v1/secrets/ibm-quantum", json={"value": "x"}, headers=auth(gateway.developer_token)
        ).status_code
        == 403
    )
    outsider = http.get("/v1/secrets", headers=auth(gateway.token_for("outsider")))
    assert outsider.status_code == 403
    bad = http.put("/v1/secrets/Bad Name", json={"value": "x"}, headers=admin)
    assert bad.status_code == 422
    assert bad.json()["field"] == "name"
    assert http.delete("/v1/secrets/ibm-quantum", headers=admin).status_code == 204
    assert http.delete("/v1/secrets/ibm-quantum", headers=admin).status_code == 404
    events = http.get("/v1/audit/events", params={"action": "secret:set"}, headers=admin)
    assert events.status_code == 200
    assert value not in events.text


def test_sealed_result_and_audit_export_open_only_with_the_tenants_key(
    gateway: Gateway, http: httpx.Client, tmp_path: Path
) -> None:
    admin_token = gateway.tenant_admin_token
    admin = auth(admin_token)
    job_id = _finished_job(http, gateway.developer_token)
    key_file = tmp_path / "export.key"
    generated = qustody(gateway, None, "export-key", "generate", "--out", str(key_file))
    assert generated.returncode == 0, generated.stderr
    public_key = generated.stdout.strip()
    registered = qustody(gateway, admin_token, "export-key", "set", public_key)
    assert registered.returncode == 0, registered.stderr
    key = read_private_key(key_file)
    assert key.fingerprint in registered.stdout

    sealed = http.get(f"/v1/jobs/{job_id}/result", params={"sealed": "true"}, headers=admin)
    assert sealed.status_code == 200
    assert sealed.headers["content-type"] == "application/vnd.qustody.sealed"
    clear = http.get(f"/v1/jobs/{job_id}/result", headers=admin).json()
    header, plaintext = open_sealed(sealed.content, key)
    assert json.loads(plaintext) == clear
    assert header.metadata == {"job_id": job_id}
    assert b'"counts"' not in sealed.content

    out = tmp_path / "result.sealed"
    saved = qustody(gateway, admin_token, "result", job_id, "--sealed", str(out))
    assert saved.returncode == 0, saved.stderr
    opened = qustody(gateway, None, "unseal", str(out), "--key", str(key_file))
    assert opened.returncode == 0, opened.stderr
    assert json.loads(opened.stdout) == clear

    export = http.get("/v1/audit/export", params={"sealed": "true"}, headers=admin)
    assert export.status_code == 200
    _, lines = open_sealed(export.content, key)
    first = json.loads(lines.splitlines()[0])
    assert first["format"] == "qustody-audit-export/1"
    assert first["scope"] == "tenant"

    wrong = qustody(gateway, None, "export-key", "generate", "--out", str(tmp_path / "other.key"))
    assert wrong.returncode == 0
    refused = qustody(gateway, None, "unseal", str(out), "--key", str(tmp_path / "other.key"))
    assert refused.returncode != 0
    assert key.fingerprint in refused.stderr
    assert XWingPrivateKey.generate().fingerprint not in refused.stderr


def test_sealed_export_without_a_registered_key_is_a_clear_404(
    gateway: Gateway, http: httpx.Client
) -> None:
    outsider = auth(gateway.token_for("outsider"))
    jobs = http.get("/v1/jobs", headers=outsider).json()["items"]
    if not jobs:
        body = {"project": "research", "backend": "aer-automatic", "shots": 8, "qasm": ONE_QUBIT}
        job_id = http.post("/v1/jobs", json=body, headers=outsider).json()["id"]
        http.get(f"/v1/jobs/{job_id}", params={"wait": 30}, headers=outsider)
    else:
        job_id = jobs[0]["id"]
    answer = http.get(f"/v1/jobs/{job_id}/result", params={"sealed": "true"}, headers=outsider)
    assert answer.status_code == 404
    assert answer.json()["code"] == "export_key_missing"
    assert "PUT /v1/export-key" in answer.json()["detail"]


def test_rotation_through_the_api_is_finished_by_the_workers_rewrapper(
    gateway: Gateway, http: httpx.Client
) -> None:
    admin = auth(gateway.tenant_admin_token)
    _finished_job(http, gateway.developer_token)
    assert http.get("/v1/keys", headers=auth(gateway.developer_token)).status_code == 403
    rotated = http.post("/v1/keys/rotate", json={"project_id": gateway.project_id}, headers=admin)
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["rotated"]
    deadline = time.monotonic() + 90
    while True:
        rings = http.get("/v1/keys", headers=admin).json()["items"]
        retiring = [v for r in rings for v in r["versions"] if v["state"] == "retiring"]
        if not retiring or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert retiring == [], "the embedded worker's rewrapper retired every old version"
    payload = next(r for r in rings if r["ring"].endswith(f"{gateway.project_id}.payload"))
    states = {v["version"]: v["state"] for v in payload["versions"]}
    assert states[payload["current_version"]] == "current"
    assert "retired" in states.values()
    status = qustody(gateway, None, "keys", "status", "--tenant", "acme", "--json")
    assert status.returncode == 0, status.stderr
    assert {r["ring"] for r in json.loads(status.stdout)} == {r["ring"] for r in rings}
    # Results sealed before the rotation still open.
    jobs = http.get("/v1/jobs", params={"state": "completed"}, headers=admin).json()["items"]
    for job in jobs:
        assert http.get(f"/v1/jobs/{job['id']}/result", headers=admin).status_code == 200


def test_cli_refuses_bad_local_input_without_a_traceback(gateway: Gateway, tmp_path: Path) -> None:
    admin_token = gateway.tenant_admin_token
    binary = tmp_path / "binary.secret"
    binary.write_bytes(b"\xff\xfe\x00credential")
    refused = qustody(gateway, admin_token, "secrets", "set", "bin", "--from-file", str(binary))
    assert refused.returncode != 0
    assert "not UTF-8" in refused.stderr
    assert "Traceback" not in refused.stderr
    missing = qustody(gateway, admin_token, "export-key", "set", str(tmp_path / "nope.pub"))
    assert missing.returncode != 0
    assert "qustody-xwing-pub" in missing.stderr
    assert "Traceback" not in missing.stderr
    existing = tmp_path / "already.json"
    existing.write_text("keep me")
    key_file = tmp_path / "k.key"
    assert qustody(gateway, None, "export-key", "generate", "--out", str(key_file)).returncode == 0
    for args in (
        ("unseal", str(existing), "--key", str(key_file), "--out", str(existing)),
        ("result", "job_01J0000000000000000000000", "--sealed", str(existing)),
    ):
        answer = qustody(gateway, admin_token, *args)
        assert answer.returncode != 0
        assert "already exists" in answer.stderr
        assert "Traceback" not in answer.stderr
    assert existing.read_text() == "keep me"

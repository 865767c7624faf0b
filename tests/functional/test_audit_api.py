"""The audit log over real HTTP and the real CLI: checkpoints and the key anyone
can fetch, a tenant's own events with proofs, exports that verify offline, and
a witness that cosigns."""

from __future__ import annotations

import base64
import json
import socket
import threading
from pathlib import Path

import httpx
import pytest

from ocsf_schema import assert_valid
from qustody.audit.events import event_leaf_hash
from qustody.audit.merkle import verify_consistency, verify_inclusion
from qustody.audit.note import Checkpoint, Verifier, open_note
from support import Gateway, auth, qustody

ONE_QUBIT = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[1];\ncreg c[1];\nh q[0];\nmeasure q -> c;'


def _key(http: httpx.Client) -> Verifier:
    answer = http.get("/.well-known/qustody/audit-log-key")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return Verifier.parse(answer.text.strip())


def _issue(http: httpx.Client, gateway: Gateway) -> Checkpoint:
    answer = http.post("/v1/audit/checkpoint", headers=auth(gateway.token_for("platform-admin")))
    assert answer.status_code == 200, answer.text
    text, _ = open_note(answer.text, _key(http))
    return Checkpoint.parse(text)


@pytest.fixture(scope="module")
def finished_job(gateway: Gateway) -> str:
    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        job = http.post(
            "/v1/jobs",
            json={
                "project": "research",
                "backend": "aer-statevector",
                "shots": 50,
                "qasm": ONE_QUBIT,
            },
            headers=auth(gateway.developer_token),
        ).json()
        done = http.get(f"/v1/jobs/{job['id']}?wait=30", headers=auth(gateway.developer_token))
        assert done.json()["state"] == "completed"
        return str(job["id"])


def test_a_tenant_sees_its_jobs_events_with_proofs(
    http: httpx.Client, gateway: Gateway, finished_job: str
) -> None:
    checkpoint = _issue(http, gateway)
    # The public checkpoint is now the one just issued (or a later one).
    public = Checkpoint.parse(open_note(http.get("/v1/audit/checkpoint").text, _key(http))[0])
    assert public.size >= checkpoint.size
    page = http.get(
        "/v1/audit/events", params={"job": finished_job}, headers=auth(gateway.tenant_admin_token)
    ).json()
    types = [item["event"]["event_type"] for item in page["items"]]
    assert types[:5] == ["job:submit", "job:validate", "job:queue", "job:start", "job:complete"]
    signed = Checkpoint.parse(open_note(page["checkpoint"], _key(http))[0])
    for item in page["items"]:
        event = item["event"]
        assert event["tenant_id"] == gateway.tenancy.tenant_admin.tenant_id
        assert item["proof"]["size"] == signed.size
        path = [base64.b64decode(h) for h in item["proof"]["path"]]
        leaf = event_leaf_hash(event)
        assert base64.b64decode(item["leaf"]) == leaf
        verify_inclusion(event["seq"] - 1, signed.size, leaf, path, signed.root_hash)
    # The same event, alone, under that checkpoint.
    seq = page["items"][0]["event"]["seq"]
    one = http.get(
        f"/v1/audit/events/{seq}",
        params={"size": signed.size},
        headers=auth(gateway.tenant_admin_token),
    )
    assert one.status_code == 200
    assert one.json()["item"]["event"]["event_type"] == "job:submit"


def test_other_tenants_and_other_roles_see_nothing(
    http: httpx.Client, gateway: Gateway, finished_job: str
) -> None:
    _issue(http, gateway)
    mine = http.get(
        "/v1/audit/events", params={"job": finished_job}, headers=auth(gateway.tenant_admin_token)
    ).json()["items"]
    seq = mine[0]["event"]["seq"]
    outsider = auth(gateway.tenancy.token_for("globex-admin", "globex"))
    theirs = http.get("/v1/audit/events", params={"job": finished_job}, headers=outsider)
    assert theirs.status_code == 200
    assert theirs.json()["items"] == []
    probe = http.get(f"/v1/audit/events/{seq}", headers=outsider)
    assert probe.status_code == 404
    assert (
        http.get("/v1/audit/events/99999999", headers=outsider).json()["code"]
        == (probe.json()["code"])
    )
    denied = http.get("/v1/audit/events", headers=auth(gateway.developer_token))
    assert denied.status_code == 403
    assert denied.json()["code"] == "forbidden"
    export = http.get(
        "/v1/audit/export", params={"scope": "platform"}, headers=auth(gateway.tenant_admin_token)
    )
    assert export.status_code == 403


def test_consistency_proofs_link_checkpoints(
    http: httpx.Client, gateway: Gateway, finished_job: str
) -> None:
    first = _issue(http, gateway)
    http.get("/v1/jobs", headers=auth(gateway.developer_token))  # a few more events
    second = _issue(http, gateway)
    assert second.size > first.size
    proof = http.get(
        "/v1/audit/proofs/consistency", params={"from": first.size, "to": second.size}
    ).json()
    assert (proof["from"], proof["to"]) == (first.size, second.size)
    path = [base64.b64decode(h) for h in proof["path"]]
    verify_consistency(first.size, second.size, first.root_hash, second.root_hash, path)
    beyond = http.get("/v1/audit/proofs/consistency", params={"from": 1, "to": second.size + 10**6})
    assert beyond.status_code == 422
    assert "beyond" in beyond.json()["detail"]


def test_exports_verify_offline_with_thequstody(
    http: httpx.Client, gateway: Gateway, finished_job: str, tmp_path: Path
) -> None:
    key = tmp_path / "log.vkey"
    key.write_text(_key(http).encode() + "\n")
    for scope, token in (
        ("platform", gateway.token_for("platform-admin")),
        ("tenant", gateway.tenant_admin_token),
    ):
        out = tmp_path / f"{scope}.jsonl"
        exported = qustody(gateway, token, "audit", "export", "--scope", scope, "--out", str(out))
        assert exported.returncode == 0, exported.stderr
        checked = qustody(gateway, None, "audit", "verify", str(out), "--key", str(key))
        assert checked.returncode == 0, checked.stderr
        assert checked.stdout.startswith("OK:")
        assert f"({scope} export)" in checked.stdout
    # One altered character in the export is named.
    lines = (tmp_path / "platform.jsonl").read_text().splitlines()
    lines[3] = lines[3].replace('"outcome":"success"', '"outcome":"failure"', 1)
    (tmp_path / "bent.jsonl").write_text("\n".join(lines) + "\n")
    bent = qustody(
        gateway, None, "audit", "verify", str(tmp_path / "bent.jsonl"), "--key", str(key)
    )
    assert bent.returncode == 1
    assert "first bad entry: line 4" in bent.stderr


def test_a_witness_cosigns_as_the_log_grows(
    http: httpx.Client, gateway: Gateway, finished_job: str, tmp_path: Path
) -> None:
    vkey = _key(http).encode()
    witness_key = tmp_path / "witness.key"
    made = qustody(
        gateway,
        None,
        "audit",
        "keygen",
        "--witness",
        "--origin",
        "w1.example",
        "--out",
        str(witness_key),
    )
    assert made.returncode == 0, made.stderr
    witness_vkey = made.stdout.strip()
    state = tmp_path / "state"
    cosigned = []
    for _ in range(2):
        _issue(http, gateway)
        seen = qustody(
            gateway,
            None,
            "audit",
            "witness",
            "--once",
            "--log-key",
            vkey,
            "--key",
            str(witness_key),
            "--state",
            str(state),
        )
        assert seen.returncode == 0, seen.stderr
        cosigned.append(seen.stdout)
        http.get("/v1/jobs", headers=auth(gateway.developer_token))  # the log grows
    _, verified = open_note(cosigned[-1], Verifier.parse(witness_vkey))
    assert [v.name for v in verified] == ["w1.example"]
    notes = []
    for i, note in enumerate(cosigned):
        notes.append(tmp_path / f"seen{i}.note")
        notes[-1].write_text(note)
    compared = qustody(
        gateway,
        None,
        "audit",
        "compare",
        *map(str, notes),
        "--log-key",
        vkey,
        "--witness-key",
        witness_vkey,
        "--fetch-proofs",
    )
    assert compared.returncode == 0, compared.stderr


def test_an_ocsf_export_validates_against_the_published_schema(
    http: httpx.Client, gateway: Gateway, finished_job: str
) -> None:
    answer = http.get(
        "/v1/audit/export",
        params={"format": "ocsf"},
        headers=auth(gateway.tenant_admin_token),
    )
    assert answer.status_code == 200
    events = [json.loads(line) for line in answer.text.splitlines()]
    assert events
    tenant = gateway.tenancy.tenant_admin.tenant_id
    for event in events:
        assert_valid(event)
        assert event["metadata"]["tenant_uid"] == tenant
    assert {e["unmapped"]["event_type"] for e in events} >= {"job:submit", "job:complete"}


def test_the_siem_command_sends_one_tenants_events(gateway: Gateway, finished_job: str) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    received = bytearray()

    def receive() -> None:
        connection, _ = server.accept()
        with connection:
            while chunk := connection.recv(65536):
                received.extend(chunk)

    reader = threading.Thread(target=receive)
    reader.start()
    tenant = gateway.tenancy.tenant_admin.tenant_id
    sent = qustody(
        gateway,
        None,
        "audit",
        "siem",
        "--no-tls",
        "--host",
        "127.0.0.1",
        "--port",
        str(server.getsockname()[1]),
        "--tenant",
        tenant,
    )
    reader.join(30)
    server.close()
    assert sent.returncode == 0, sent.stderr
    last_seq = int(sent.stdout.split()[-1])
    frames = []
    buffer = bytes(received)
    while buffer:
        length, _, rest = buffer.partition(b" ")
        frames.append(rest[: int(length)])
        buffer = rest[int(length) :]
    assert frames
    for message in frames:
        assert message.startswith(b"<")
        assert f'tenant="{tenant}"'.encode() in message
    ocsf_events = [json.loads(m[m.index(b"] {") + 2 :]) for m in frames]
    assert ocsf_events[-1]["metadata"]["uid"] == str(last_seq)
    for event in ocsf_events:
        assert_valid(event)

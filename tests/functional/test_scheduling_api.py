"""Scheduling over HTTP and the CLI: a session, a pause, a backend's queue."""

from __future__ import annotations

import httpx

from support import Gateway, auth, ghz_qasm2, qustody

SV = "aer-statevector"


def test_sessions_pauses_and_queues_end_to_end(gateway: Gateway, http: httpx.Client) -> None:
    dev, admin = gateway.developer_token, gateway.token_for("platform-admin")
    outsider = gateway.token_for("outsider")
    opened = qustody(gateway, dev, "session", "open", SV, "--ttl", "600")
    assert opened.returncode == 0, opened.stderr
    session_id = opened.stdout.strip()
    assert session_id.startswith("ses_")

    refused = http.post(f"/v1/backends/{SV}/pause", json={"reason": "x"}, headers=auth(dev))
    assert refused.status_code == 403
    paused = http.post(
        f"/v1/backends/{SV}/pause", json={"reason": "firmware update"}, headers=auth(admin)
    )
    assert paused.status_code == 200, paused.text
    try:
        listed = http.get("/v1/backends", headers=auth(dev)).json()["items"]
        assert {b["name"]: b["paused"] for b in listed}[SV] is True
        job = {"project": "research", "backend": SV, "shots": 8, "qasm": ghz_qasm2(2)}
        submitted = http.post(
            "/v1/jobs", json=job | {"session": session_id, "priority": 7}, headers=auth(dev)
        )
        assert submitted.status_code == 202, submitted.text
        body = submitted.json()
        assert (body["session_id"], body["priority"]) == (session_id, 7)
        assert http.get(f"/v1/jobs/{body['id']}", headers=auth(dev)).json()["queue_position"] == 1
        ours = http.get(f"/v1/backends/{SV}/queue", headers=auth(dev)).json()
        assert ours["status"] == "paused"
        assert [j["id"] for j in ours["jobs"]] == [body["id"]]
        theirs = http.get(f"/v1/backends/{SV}/queue", headers=auth(outsider)).json()
        assert theirs["jobs"] == []
        assert body["id"] not in str(theirs)
        # Another tenant cannot join the session; a priority out of range is a 422.
        joined = http.post("/v1/jobs", json=job | {"session": session_id}, headers=auth(outsider))
        assert joined.status_code == 404
        assert (
            http.post("/v1/jobs", json=job | {"priority": 10}, headers=auth(dev)).status_code == 422
        )
    finally:
        resumed = http.post(f"/v1/backends/{SV}/resume", headers=auth(admin))
        assert resumed.status_code == 200
    done = http.get(f"/v1/jobs/{body['id']}", params={"wait": 30}, headers=auth(dev)).json()
    assert done["state"] == "completed"
    closed = qustody(gateway, dev, "session", "close", session_id)
    assert closed.returncode == 0, closed.stderr
    after = http.post("/v1/jobs", json=job | {"session": session_id}, headers=auth(dev))
    assert after.status_code == 409
    assert after.json()["code"] == "session_closed"


def test_an_operator_sets_a_tenants_fair_queuing_weight(
    gateway: Gateway, http: httpx.Client
) -> None:
    refused = qustody(gateway, None, "admin", "share", "--tenant", "acme", "--weight", "0")
    assert refused.returncode != 0
    assert "between 1 and 1000" in refused.stderr
    missing = qustody(gateway, None, "admin", "share", "--tenant", "nobody", "--weight", "2")
    assert missing.returncode != 0
    assert "no tenant named 'nobody'" in missing.stderr

    shared = qustody(gateway, None, "admin", "share", "--tenant", "acme", "--weight", "3")
    assert shared.returncode == 0, shared.stderr
    admin = auth(gateway.tenant_admin_token)
    page = http.get("/v1/audit/events", params={"action": "queue:share"}, headers=admin).json()
    recorded = [(i["event"]["actor_id"], i["event"]["reason"]) for i in page["items"]]
    assert ("cli:operator", "weight=3") in recorded

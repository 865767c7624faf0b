"""Rate limits and webhooks over real HTTP: a 429 with Retry-After from a
gateway on loopback, and `qustody webhook` delivering a signed test alert."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import uvicorn

from qustody.api.app import build_runtime, create_app
from qustody.client.webhooks import verify
from support import Gateway, free_port, make_settings, qustody


@pytest.fixture
def limited_gateway(tmp_path: Path) -> Iterator[str]:
    settings = make_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'qustody.db'}",
        rate_limit_address_per_second=0.5,
        rate_limit_address_burst=2,
    )
    runtime = build_runtime(settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, runtime=runtime), port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        runtime.close()


def test_an_address_over_its_limit_gets_429_with_retry_after(limited_gateway: str) -> None:
    with httpx.Client(base_url=limited_gateway) as http:
        answers = [http.get("/v1/health") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    refused = answers[2]
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["retry-after"]) in (1, 2)
    assert refused.headers["ratelimit-policy"] == '"address";q=2;w=4'
    assert refused.json()["code"] == "rate_limited"
    assert refused.headers["x-request-id"] == refused.json()["request_id"]


def test_the_cli_registers_an_endpoint_and_a_test_alert_arrives_signed(gateway: Gateway) -> None:
    received: list[tuple[dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        token = gateway.tenant_admin_token
        added = qustody(gateway, token, "webhook", "add", url, "--json")
        assert added.returncode == 0, added.stderr
        created = json.loads(added.stdout)
        listed = qustody(gateway, token, "webhook", "list")
        assert created["id"] in listed.stdout
        assert created["secret"] not in listed.stdout
        tested = qustody(gateway, token, "webhook", "test", created["id"])
        assert tested.returncode == 0, tested.stderr
        deadline = time.monotonic() + 60  # the embedded worker's next delivery round
        while not received and time.monotonic() < deadline:
            time.sleep(0.2)
        headers, body = received[0]
        assert verify(body, headers, created["secret"])["type"] == "webhook.test"
        removed = qustody(gateway, token, "webhook", "remove", created["id"])
        assert removed.returncode == 0, removed.stderr
    finally:
        server.shutdown()
        server.server_close()

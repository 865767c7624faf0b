"""A real gateway over real HTTP: ``qustody serve`` in a subprocess, embedded worker."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from qustody.api.app import build_runtime
from support import Gateway, free_port, make_settings, seed


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("gateway")
    database_url = f"sqlite:///{root / 'data' / 'qustody.db'}"
    runtime = build_runtime(make_settings(root, database_url))  # type: ignore[arg-type]
    tenancy = seed(runtime)
    port = free_port()
    gw = Gateway(f"http://127.0.0.1:{port}", tenancy, root / "data", database_url)
    log = (root / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "qustody.cli", "serve", "--port", str(port)],
        env=gw.env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{gw.url}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((root / "server.log").read_text()[-3000:])
            time.sleep(0.2)
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
def http(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        yield client

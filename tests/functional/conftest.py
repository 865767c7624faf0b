"""A real gateway over real HTTP: ``qustody serve`` in a subprocess, embedded worker."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from qustody.api.app import build_runtime
from support import Gateway, free_port, make_settings, seed, wait_ready


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
def http(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        yield client

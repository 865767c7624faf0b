"""``qustody serve --api-processes 2``: two API processes share the port, one
embedded worker serves both, and every job submitted through either one runs
exactly once, on SQLite, with each held wait answered when its job finishes."""

from __future__ import annotations

import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from sqlalchemy import func, select

from qustody.api.app import build_runtime
from qustody.storage import models as m
from support import Gateway, auth, free_port, ghz_qasm2, make_settings, seed, wait_ready

JOBS = 24


def test_two_api_processes_and_one_worker(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'data' / 'qustody.db'}"
    runtime = build_runtime(make_settings(tmp_path, database_url))
    tenancy = seed(runtime)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = Gateway(url, tenancy, tmp_path / "data", database_url).env()
    argv = [sys.executable, "-m", "qustody.cli", "serve", "--port", str(port)]
    with (tmp_path / "server.log").open("ab") as log:
        server = subprocess.Popen(
            [*argv, "--api-processes", "2"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    headers = auth(tenancy.token_for("acme-dev"))
    body = {"project": "research", "backend": "aer-statevector", "shots": 64}

    def submit_and_wait(n: int) -> tuple[str, str]:
        # A fresh connection each time, so both processes take submissions.
        with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
            job = http.post("/v1/jobs", json=body | {"qasm": ghz_qasm2(2 + n % 4)})
            assert job.status_code == 202, job.text
            job_id = job.json()["id"]
            done = http.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
            return job_id, done["state"]

    try:
        wait_ready(url, server, tmp_path / "server.log")
        with ThreadPoolExecutor(6) as pool:
            outcomes = list(pool.map(submit_and_wait, range(JOBS)))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    assert [state for _, state in outcomes] == ["completed"] * JOBS, outcomes
    with runtime.services.db.read() as session:
        completions = session.scalar(
            select(func.count()).where(m.JobTransition.to_state == "completed")
        )
    runtime.close()
    assert completions == JOBS
    assert server.returncode == 0

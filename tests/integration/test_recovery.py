"""Nothing is lost: a worker killed mid-job; the job completes exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select

from qustody.jobs.service import SubmitRequest
from qustody.storage import models as m
from support import Tenancy, ctx, ghz_qasm2, slow_qasm2

# A circuit that keeps the sandbox busy for a few seconds (deep statevector work).
SLOW = slow_qasm2(20, 600)


BELL = ghz_qasm2(2)


def _worker_process(
    tmp_path: Path, database_url: str, idle_poll: str = "0.5"
) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        QUSTODY_DATA_DIR=str(tmp_path / "data"),
        QUSTODY_DATABASE_URL=database_url,
        QUSTODY_LEASE_SECONDS="2",
        QUSTODY_IDLE_POLL_SECONDS=idle_poll,
    )
    with (tmp_path / "worker.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "qustody.cli", "worker", "--slots", "1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _state(tenancy: Tenancy, job_id: str) -> str:
    return tenancy.runtime.services.jobs.get(tenancy.developer, ctx(), job_id).state


def _wait_for(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_sigkill_mid_job_then_restart_completes_exactly_once(
    tenancy: Tenancy, tmp_path: Path, database_url: str
) -> None:
    jobs = tenancy.runtime.services.jobs
    job_id = jobs.submit(
        tenancy.developer,
        ctx(),
        SubmitRequest(project="research", backend="aer-statevector", shots=64, qasm=SLOW),
    ).id
    first = _worker_process(tmp_path, database_url)
    try:
        _wait_for(lambda: _state(tenancy, job_id) == "running", 60)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
    assert _state(tenancy, job_id) == "running"  # nobody has finished it

    second = _worker_process(tmp_path, database_url)
    try:
        _wait_for(lambda: _state(tenancy, job_id) in {"completed", "failed"}, 120)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    job = jobs.get(tenancy.developer, ctx(), job_id)
    assert job.state == "completed", job.error_detail
    states = [t.to_state for t in job.transitions or ()]
    assert states.count("completed") == 1
    assert states.count("running") == 2  # first attempt, then the re-run
    assert "queued" in states[states.index("running") + 1 :]
    with tenancy.runtime.services.db.read() as session:
        results = session.scalars(
            select(m.SealedObject).where(
                m.SealedObject.object_id == job_id, m.SealedObject.field == "result"
            )
        ).all()
        row = session.get(m.Job, job_id)
    assert len(results) == 1
    assert row is not None
    assert row.attempts == 2
    assert sum(jobs.result(tenancy.developer, ctx(), job_id).counts.values()) == 64


def test_a_standalone_worker_is_woken_not_polled(
    tenancy: Tenancy, tmp_path: Path, database_url: str
) -> None:
    """Across processes: NOTIFY on PostgreSQL, a datagram socket on SQLite."""
    worker = _worker_process(tmp_path, database_url, idle_poll="3600")
    try:
        log = tmp_path / "worker.log"
        _wait_for(lambda: "slot(s)" in log.read_text(errors="replace"), 60)
        time.sleep(1)  # started, found nothing, now asleep on its notifier
        job_id = tenancy.runtime.services.jobs.submit(
            tenancy.developer,
            ctx(),
            SubmitRequest(project="research", backend="aer-statevector", shots=8, qasm=BELL),
        ).id
        _wait_for(lambda: _state(tenancy, job_id) == "completed", 120)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)

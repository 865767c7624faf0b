"""Several workers, notification-driven pick-up, and cancelling a running job."""

from __future__ import annotations

import time
from collections import Counter

from sqlalchemy import select

from qustody.jobs.service import SubmitRequest
from qustody.storage import models as m
from support import Tenancy, ctx, ghz_qasm2, slow_qasm2

GHZ2 = ghz_qasm2(2)
# Busy for long enough to be cancelled while running.
SLOW = slow_qasm2(22, 1500)


def _submit(tenancy: Tenancy, qasm: str = GHZ2) -> str:
    spec = SubmitRequest(project="research", backend="aer-statevector", shots=32, qasm=qasm)
    return tenancy.runtime.services.jobs.submit(tenancy.developer, ctx(), spec).id


def _states(tenancy: Tenancy) -> Counter[str]:
    with tenancy.runtime.services.db.read() as session:
        return Counter(session.scalars(select(m.Job.state)).all())


def _until(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def test_several_workers_never_run_a_job_twice(tenancy: Tenancy) -> None:
    runtime = tenancy.runtime
    pairs = [runtime.make_worker(slots=2) for _ in range(3)]
    ids = [_submit(tenancy) for _ in range(24)]
    try:
        for worker, _ in pairs:
            worker.start()
        _until(lambda: _states(tenancy)["completed"] == len(ids), 240)
    finally:
        for worker, sandbox in pairs:
            worker.stop()
            sandbox.close()
    with runtime.services.db.read() as session:
        jobs = session.scalars(select(m.Job).where(m.Job.id.in_(ids))).all()
        starts = session.scalars(
            select(m.JobTransition.job_id).where(m.JobTransition.to_state == "running")
        ).all()
        results = session.scalars(
            select(m.SealedObject.object_id).where(m.SealedObject.field == "result")
        ).all()
    assert all(job.attempts == 1 for job in jobs)
    assert Counter(starts) == Counter(dict.fromkeys(ids, 1))
    assert sorted(results) == sorted(ids)
    assert len({job.worker_id for job in jobs}) >= 2  # the work was shared


def test_pick_up_is_notified_not_polled(tenancy: Tenancy) -> None:
    """With an idle poll of an hour, only a notification can start the job."""
    runtime = tenancy.runtime
    worker, sandbox = runtime.make_worker(slots=1)
    worker._idle_poll = 3600.0
    worker.start()
    try:
        time.sleep(0.5)  # the slot is now asleep on the notifier
        job_id = _submit(tenancy)
        _until(lambda: _states(tenancy)["completed"] == 1, 120)
    finally:
        worker.stop()
        sandbox.close()
    assert runtime.services.jobs.get(tenancy.developer, ctx(), job_id).state == "completed"


def test_cancel_a_running_job(tenancy: Tenancy) -> None:
    runtime = tenancy.runtime
    worker, sandbox = runtime.make_worker(slots=1)
    worker.start()
    try:
        job_id = _submit(tenancy, SLOW)
        jobs = runtime.services.jobs
        _until(lambda: jobs.get(tenancy.developer, ctx(), job_id).state == "running", 60)
        jobs.cancel(tenancy.developer, ctx(), job_id)
        _until(lambda: jobs.get(tenancy.developer, ctx(), job_id).state == "cancelled", 60)
    finally:
        worker.stop()
        sandbox.close()
    job = jobs.get(tenancy.developer, ctx(), job_id)
    assert [t.to_state for t in job.transitions or ()][-2:] == ["running", "cancelled"]


def test_a_stopping_worker_gives_its_job_back(tenancy: Tenancy) -> None:
    runtime = tenancy.runtime
    jobs = runtime.services.jobs
    worker, sandbox = runtime.make_worker(slots=1)
    worker.start()
    try:
        job_id = _submit(tenancy, SLOW)
        _until(lambda: jobs.get(tenancy.developer, ctx(), job_id).state == "running", 60)
    finally:
        worker.stop()
        sandbox.close()
    job = jobs.get(tenancy.developer, ctx(), job_id)
    assert job.state == "queued"
    assert (job.transitions or ())[-1].reason == "worker stopped"

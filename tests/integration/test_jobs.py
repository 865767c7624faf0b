"""A job's whole path through the services and a real worker, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from qustody.domain.errors import Forbidden, NotFound, QustodyError
from qustody.executors.sandbox import Sandbox, SandboxLimits
from qustody.jobs.service import SubmitRequest
from qustody.jobs.worker import Worker
from qustody.storage import models as m
from support import Tenancy, ctx, ghz_qasm2, slow_qasm2

GHZ3 = ghz_qasm2(3)


def submit(tenancy: Tenancy, qasm: str = GHZ3, **kw: object) -> str:
    principal = kw.pop("principal", None) or tenancy.developer
    spec = SubmitRequest(
        project=str(kw.pop("project", "research")),
        backend=str(kw.pop("backend", "aer-statevector")),
        shots=int(kw.pop("shots", 256)),  # type: ignore[call-overload]
        qasm=qasm,
        **kw,  # type: ignore[arg-type]
    )
    return tenancy.runtime.services.jobs.submit(principal, ctx(), spec).id  # type: ignore[arg-type]


@pytest.fixture
def worker(tenancy: Tenancy) -> Worker:
    w, sandbox = tenancy.runtime.make_worker(slots=1)
    yield w  # type: ignore[misc]
    w.stop()
    sandbox.close()


def run_one(worker: Worker) -> None:
    claimed = worker.claim()
    assert claimed is not None
    worker.run_claimed(claimed)


def test_a_job_travels_end_to_end(tenancy: Tenancy, worker: Worker) -> None:
    jobs = tenancy.runtime.services.jobs
    job_id = submit(tenancy, seed=7)
    assert jobs.get(tenancy.developer, ctx(), job_id).state == "queued"
    run_one(worker)
    job = jobs.get(tenancy.developer, ctx(), job_id)
    assert job.state == "completed"
    assert [t.to_state for t in job.transitions or ()] == [
        "submitted",
        "validated",
        "queued",
        "running",
        "completed",
    ]
    result = jobs.result(tenancy.viewer, ctx(), job_id)
    assert set(result.counts) <= {"000", "111"}
    assert sum(result.counts.values()) == 256
    assert result.metadata["seed"] == 7
    assert result.metadata["backend"] == "aer-statevector"
    assert result.clbit_registers == [("c", 3)]


def test_payloads_are_stored_only_encrypted(tenancy: Tenancy, worker: Worker) -> None:
    job_id = submit(
        tenancy,
        GHZ3.replace("qreg q[3]", "qreg secretname[3]")
        .replace(" q[", " secretname[")
        .replace("q ->", "secretname ->"),
    )
    run_one(worker)
    db = tenancy.runtime.services.db
    with db.read() as session:
        sealed = session.scalars(
            select(m.SealedObject).where(m.SealedObject.object_id == job_id)
        ).all()
        audit = session.scalars(select(m.AuditEvent)).all()
    assert {s.field for s in sealed} == {"circuit", "result"}
    for blob in sealed:
        assert b"secretname" not in blob.body
        assert b"OPENQASM" not in blob.body
        assert b"counts" not in blob.body
    dumped = json.dumps(
        [{c.name: str(getattr(e, c.name)) for c in m.AuditEvent.__table__.columns} for e in audit]
    )
    assert "secretname" not in dumped
    assert "OPENQASM" not in dumped


def test_rejected_circuit_leaves_a_rejected_job(tenancy: Tenancy) -> None:
    with pytest.raises(QustodyError) as caught:
        submit(tenancy, 'OPENQASM 2.0;\ninclude "/etc/passwd";\nqreg q[1];')
    assert caught.value.code == "forbidden_include"
    job_id = str(caught.value.extra["job_id"])
    job = tenancy.runtime.services.jobs.get(tenancy.developer, ctx(), job_id)
    assert job.state == "rejected"
    assert job.error_code == "forbidden_include"
    assert "root:" not in (job.error_detail or "")


def test_tenants_cannot_see_each_others_jobs(tenancy: Tenancy) -> None:
    jobs = tenancy.runtime.services.jobs
    job_id = submit(tenancy)
    with pytest.raises(NotFound) as foreign:
        jobs.get(tenancy.outsider, ctx(), job_id)
    with pytest.raises(NotFound) as missing:
        jobs.get(tenancy.outsider, ctx(), "job_01JZZZZZZZZZZZZZZZZZZZZZZZ")
    assert foreign.value.detail.replace(job_id, "X") == missing.value.detail.replace(
        "job_01JZZZZZZZZZZZZZZZZZZZZZZZ", "X"
    )
    for call in (jobs.cancel, jobs.result):
        with pytest.raises(NotFound):
            call(tenancy.outsider, ctx(), job_id)
    assert jobs.list_jobs(tenancy.outsider, ctx()).items == []
    with pytest.raises(NotFound):
        submit(tenancy, principal=tenancy.outsider, project=tenancy.project_id)


def test_viewers_read_but_do_not_submit_or_cancel(tenancy: Tenancy) -> None:
    jobs = tenancy.runtime.services.jobs
    job_id = submit(tenancy)
    assert jobs.get(tenancy.viewer, ctx(), job_id).id == job_id
    with pytest.raises(Forbidden):
        submit(tenancy, principal=tenancy.viewer)
    with pytest.raises(Forbidden):
        jobs.cancel(tenancy.viewer, ctx(), job_id)


def test_cancel_a_queued_job(tenancy: Tenancy, worker: Worker) -> None:
    jobs = tenancy.runtime.services.jobs
    job_id = submit(tenancy)
    assert jobs.cancel(tenancy.developer, ctx(), job_id).state == "cancelled"
    assert worker.claim() is None
    with pytest.raises(QustodyError) as caught:
        jobs.result(tenancy.developer, ctx(), job_id)
    assert caught.value.code == "job_cancelled"


def test_list_filters_and_paginates(tenancy: Tenancy) -> None:
    jobs = tenancy.runtime.services.jobs
    ids = [submit(tenancy) for _ in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        page = jobs.list_jobs(tenancy.developer, ctx(), limit=2, cursor=cursor)
        seen.extend(j.id for j in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == sorted(ids, reverse=True)
    assert len(jobs.list_jobs(tenancy.viewer, ctx(), state="queued", project="research").items) == 5
    assert jobs.list_jobs(tenancy.developer, ctx(), state="completed").items == []
    with pytest.raises(QustodyError) as caught:
        jobs.list_jobs(tenancy.developer, ctx(), state="bogus")
    assert caught.value.field == "state"


def test_a_failed_execution_fails_the_job_not_the_worker(tenancy: Tenancy) -> None:
    """A sandbox that overruns its wall-clock limit fails that job, with the
    reason; the same worker then runs the next job."""
    runtime = tenancy.runtime
    sandbox = Sandbox(SandboxLimits(wall_seconds=0.5), registry=runtime.services.registry)
    worker = Worker(runtime.services.db, runtime.keys, sandbox, runtime.notifier, lease_seconds=30)
    slow = slow_qasm2(22, 1500)
    try:
        failing = submit(tenancy, slow, shots=16)
        fine = submit(tenancy, GHZ3, shots=16)
        run_one(worker)
        run_one(worker)
    finally:
        sandbox.close()
    jobs = runtime.services.jobs
    failed = jobs.get(tenancy.developer, ctx(), failing)
    assert failed.state == "failed"
    assert failed.error_code == "sandbox_timeout"
    assert failed.error_detail
    assert jobs.get(tenancy.developer, ctx(), fine).state == "completed"
    with pytest.raises(QustodyError) as caught:
        jobs.result(tenancy.developer, ctx(), failing)
    assert caught.value.code == "job_failed"

"""The scheduler: fair queuing, priority and FIFO, pauses, maintenance windows,
reservations, concurrency limits, caps, sessions, and claims racing.

Claims are driven one at a time (no sandbox): a claimed job is ``running``
until the test finishes it. Every window and lifetime is driven by a
ManualClock.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from qustody.api.app import Runtime, build_runtime
from qustody.audit.recorder import Actor
from qustody.domain.clock import ManualClock
from qustody.domain.errors import QustodyError
from qustody.domain.models import ExecutionFailure, Principal
from qustody.governance import quotas
from qustody.governance.backends import BackendControl, set_share
from qustody.governance.quotas import RunningCap
from qustody.governance.reservations import ReservationConflict, Reservations
from qustody.governance.sessions import SessionCheck, Sessions
from qustody.jobs.scheduler import Scheduler, queue_positions
from qustody.jobs.service import SubmitRequest
from qustody.jobs.worker import Worker
from qustody.storage import models as m
from qustody.storage.db import Database
from support import Tenancy, ctx, ghz_qasm2, make_settings, seed

GHZ = ghz_qasm2(2)
SV, STAB = "aer-statevector", "aer-stabilizer"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def runtime(tmp_path: Path, database_url: str, clock: ManualClock) -> Iterator[Runtime]:
    rt = build_runtime(make_settings(tmp_path, database_url), clock=clock)
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture
def tenancy(runtime: Runtime) -> Tenancy:
    return seed(runtime)


def control(tenancy: Tenancy, clock: ManualClock) -> BackendControl:
    services = tenancy.runtime.services
    return BackendControl(services.db, services.jobs._guard, services.registry.names, clock=clock)


def root(tenancy: Tenancy) -> Principal:
    return tenancy.principal("root", "platform")


def submit(
    tenancy: Tenancy,
    who: Principal,
    backend: str = SV,
    priority: int = 0,
    session: str | None = None,
) -> str:
    spec = SubmitRequest(
        project="research",
        backend=backend,
        shots=8,
        qasm=GHZ,
        priority=priority,
        session=session,
    )
    return tenancy.runtime.services.jobs.submit(who, ctx(), spec).id


def worker(
    tenancy: Tenancy, clock: ManualClock, concurrency: int = 0, db: Database | None = None
) -> Worker:
    runtime = tenancy.runtime
    return Worker(
        db or runtime.services.db,
        runtime.keys,
        None,  # type: ignore[arg-type]  # claims only: nothing runs
        runtime.notifier,
        clock=clock,
        scheduler=Scheduler(default_concurrency=concurrency),
    )


def claim_ids(w: Worker, n: int) -> list[str | None]:
    out: list[str | None] = []
    for _ in range(n):
        claimed = w.claim()
        out.append(claimed.job_id if claimed else None)
    return out


def finish(w: Worker, job_id: str) -> None:
    w._finish(job_id, 1, ExecutionFailure("test_done", "finished by the test"))


def tenant_of(tenancy: Tenancy, job_ids: list[str | None]) -> list[str]:
    with tenancy.runtime.services.db.read() as session:
        owner = dict(session.execute(select(m.Job.id, m.Job.tenant_id)).all())
    acme = tenancy.developer.tenant_id
    return ["A" if owner[j] == acme else "B" for j in job_ids if j]


def test_priority_then_first_queued_within_a_tenant(tenancy: Tenancy, clock: ManualClock) -> None:
    dev = tenancy.developer
    order = []
    for priority in (0, 5, 0, 5, 9):
        order.append((priority, submit(tenancy, dev, priority=priority)))
        clock.advance(1)
    expected = [j for _, j in sorted(order, key=lambda pj: -pj[0])]  # stable: FIFO within
    with tenancy.runtime.services.db.reading() as connection:
        positions = queue_positions(connection, dev.tenant_id)
    assert [j for j, _ in sorted(positions.items(), key=lambda kv: kv[1])] == expected
    assert claim_ids(worker(tenancy, clock), 6) == [*expected, None]


def test_weighted_fair_queuing_gives_starts_in_proportion(
    tenancy: Tenancy, clock: ManualClock
) -> None:
    """Two tenants with deep queues and weights 2:1 get two starts to one,
    whoever queued first."""
    set_share(tenancy.runtime.services.db, tenancy.developer.tenant_id, 2, actor=Actor.system("t"))
    for _ in range(14):
        submit(tenancy, tenancy.outsider)  # B queues first
    for _ in range(14):
        submit(tenancy, tenancy.developer)
    starts = tenant_of(tenancy, claim_ids(worker(tenancy, clock), 18))
    assert Counter(starts) == {"A": 12, "B": 6}
    # Throughout, not just in the end: every window of three starts holds two of A's.
    assert all(Counter(starts[i : i + 3])["A"] == 2 for i in range(0, 18, 3))


def test_a_tenant_back_from_idle_has_no_credit_saved_up(
    tenancy: Tenancy, clock: ManualClock
) -> None:
    w = worker(tenancy, clock)
    for _ in range(8):
        submit(tenancy, tenancy.developer)
    claim_ids(w, 6)  # A alone for a while
    for _ in range(6):
        submit(tenancy, tenancy.outsider)
    starts = tenant_of(tenancy, claim_ids(w, 4))
    assert Counter(starts) == {"A": 2, "B": 2}  # alternating, not B four times


def test_a_paused_backend_queues_but_starts_nothing(tenancy: Tenancy, clock: ManualClock) -> None:
    ops = control(tenancy, clock)
    ops.pause(root(tenancy), ctx(), SV, "firmware update")
    on_sv = submit(tenancy, tenancy.developer, SV)
    on_stab = submit(tenancy, tenancy.developer, STAB)
    w = worker(tenancy, clock)
    assert claim_ids(w, 2) == [on_stab, None]
    assert w._held_back
    state = ops.resume(root(tenancy), ctx(), SV)
    assert not state.paused
    assert claim_ids(w, 1) == [on_sv]
    with pytest.raises(QustodyError) as refused:
        ops.pause(tenancy.tenant_admin, ctx(), SV, "not mine to pause")
    assert refused.value.status == 403


def test_nothing_starts_inside_a_maintenance_window(tenancy: Tenancy, clock: ManualClock) -> None:
    ops = control(tenancy, clock)
    now = clock.now()
    window = ops.add_maintenance(
        root(tenancy),
        ctx(),
        SV,
        starts_at=now + timedelta(minutes=10),
        ends_at=now + timedelta(minutes=40),
        reason="calibration",
    )
    w = worker(tenancy, clock)
    first = submit(tenancy, tenancy.developer)
    assert claim_ids(w, 1) == [first]  # before the window
    clock.advance(minutes=10)
    inside = submit(tenancy, tenancy.developer)
    assert claim_ids(w, 1) == [None]
    assert ops.state(SV).maintenance == window
    clock.advance(minutes=30)  # the window's end
    assert claim_ids(w, 1) == [inside]
    with pytest.raises(QustodyError, match="ends_at") as refused:
        ops.add_maintenance(
            root(tenancy), ctx(), SV, starts_at=now, ends_at=now, reason="backwards"
        )
    assert refused.value.status == 422


def test_concurrency_limit_per_backend(tenancy: Tenancy, clock: ManualClock) -> None:
    ops = control(tenancy, clock)
    ops.set_concurrency(root(tenancy), ctx(), SV, 2)
    ids = [submit(tenancy, tenancy.developer) for _ in range(3)]
    other = submit(tenancy, tenancy.developer, STAB)
    w = worker(tenancy, clock)
    assert claim_ids(w, 4) == [ids[0], ids[1], other, None]
    finish(w, ids[0])
    assert claim_ids(w, 1) == [ids[2]]
    # The deployment's default applies where no limit was set.
    assert claim_ids(worker(tenancy, clock, concurrency=1), 1) == [None]


def test_running_caps_hold_back_a_tenant_not_others(
    tenancy: Tenancy, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    acme = tenancy.developer.tenant_id
    caps = [RunningCap(acme, None, None, 1)]
    monkeypatch.setattr("qustody.jobs.scheduler.running_caps", lambda c, at: caps)
    assert quotas.running_caps is not None
    a1, a2 = submit(tenancy, tenancy.developer), submit(tenancy, tenancy.developer)
    b1 = submit(tenancy, tenancy.outsider)
    w = worker(tenancy, clock)
    assert sorted(claim_ids(w, 3), key=str) == sorted([a1, b1, None], key=str)
    finish(w, a1)
    assert claim_ids(w, 1) == [a2]


def test_a_reservation_holds_the_backend_for_its_tenant(
    tenancy: Tenancy, clock: ManualClock
) -> None:
    services = tenancy.runtime.services
    reservations = Reservations(
        services.db, services.jobs._guard, services.registry.names, clock=clock
    )
    now = clock.now()
    held = reservations.create(
        tenancy.tenant_admin,
        ctx(),
        backend=SV,
        starts_at=now + timedelta(hours=1),
        ends_at=now + timedelta(hours=2),
        reason="calibration campaign",
    )
    globex_admin = tenancy.principal("globex-admin", "globex")
    with pytest.raises(ReservationConflict) as clash:
        reservations.create(
            globex_admin,
            ctx(),
            backend=SV,
            starts_at=now + timedelta(minutes=90),
            ends_at=now + timedelta(hours=3),
            reason="overlaps",
        )
    assert held.id not in clash.value.detail
    assert acme_name not in clash.value.detail
    with pytest.raises(QustodyError) as too_long:
        reservations.create(
            tenancy.tenant_admin,
            ctx(),
            backend=STAB,
            starts_at=now,
            ends_at=now + timedelta(hours=25),
            reason="too long",
        )
    assert too_long.value.field == "ends_at"
    with pytest.raises(QustodyError):
        reservations.create(
            tenancy.developer,
            ctx(),
            backend=STAB,
            starts_at=now,
            ends_at=now + timedelta(hours=1),
            reason="no",
        )
    w = worker(tenancy, clock)
    clock.advance(hours=1)
    theirs = submit(tenancy, tenancy.outsider)
    ours = submit(tenancy, tenancy.developer)
    assert claim_ids(w, 2) == [ours, None]  # B waits during A's window
    clock.advance(hours=1)
    assert claim_ids(w, 1) == [theirs]
    assert [r.id for r in reservations.list(globex_admin, ctx())] == []
    assert reservations.cancel(tenancy.tenant_admin, ctx(), held.id).cancelled_at is not None


acme_name = "acme"


def test_reservations_racing_for_one_window(tenancy: Tenancy, clock: ManualClock) -> None:
    services = tenancy.runtime.services
    reservations = Reservations(
        services.db, services.jobs._guard, services.registry.names, clock=clock
    )
    admins = [tenancy.tenant_admin, tenancy.principal("globex-admin", "globex")] * 2
    now = clock.now()
    outcomes: list[str] = []
    barrier = threading.Barrier(len(admins))

    def take(admin: Principal) -> None:
        barrier.wait()
        try:
            reservations.create(
                admin,
                ctx(),
                backend=SV,
                starts_at=now + timedelta(hours=1),
                ends_at=now + timedelta(hours=2),
                reason="race",
            )
            outcomes.append("won")
        except ReservationConflict:
            outcomes.append("refused")

    threads = [threading.Thread(target=take, args=(a,)) for a in admins]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["refused", "refused", "refused", "won"]


def test_sessions_admit_their_owners_jobs_until_they_end(
    tenancy: Tenancy, clock: ManualClock
) -> None:
    services = tenancy.runtime.services
    sessions = Sessions(
        services.db,
        services.jobs._guard,
        services.registry.names,
        max_ttl_seconds=3600,
        clock=clock,
    )
    services.jobs.admission.append(SessionCheck())
    dev = tenancy.developer
    ses = sessions.create(dev, ctx(), backend=SV, max_ttl_seconds=600)
    with pytest.raises(QustodyError, match="max_ttl_seconds"):
        sessions.create(dev, ctx(), backend=SV, max_ttl_seconds=7200)
    # Queued before, priority 9: still the session's jobs go first once it has started.
    batch = submit(tenancy, dev, priority=9)
    first = submit(tenancy, dev, session=ses.id)
    w = worker(tenancy, clock)
    assert claim_ids(w, 1) == [batch]
    assert claim_ids(w, 1) == [first]
    second = submit(tenancy, dev, session=ses.id)
    submit(tenancy, dev, priority=9)
    assert claim_ids(w, 1) == [second]
    for who, backend, code in (
        (tenancy.outsider, SV, "not_found"),  # another tenant's session
        (tenancy.tenant_admin, SV, "not_found"),  # another principal's
        (dev, STAB, "session_backend_mismatch"),
    ):
        with pytest.raises(QustodyError) as refused:
            submit(tenancy, who, backend, session=ses.id)
        assert refused.value.code == code
    clock.advance(600)
    with pytest.raises(QustodyError) as expired:
        submit(tenancy, dev, session=ses.id)
    assert expired.value.code == "session_expired"
    assert sessions.get(dev, ctx(), ses.id).state == "expired"
    assert sessions.expire_due() == 1
    assert sessions.expire_due() == 0
    other = sessions.create(dev, ctx(), backend=SV)
    assert sessions.close(dev, ctx(), other.id).state == "closed"
    with pytest.raises(QustodyError) as closed:
        submit(tenancy, dev, session=other.id)
    assert closed.value.code == "session_closed"
    assert {s.id for s in sessions.list(dev, ctx())} == {ses.id, other.id}
    with services.db.read() as session:
        events = session.scalars(
            select(m.AuditEvent.event_type).where(m.AuditEvent.event_type.like("session:%"))
        ).all()
    assert Counter(events) == {"session:create": 2, "session:expire": 1, "session:close": 1}


def test_workers_racing_never_exceed_a_limit_nor_claim_twice(
    tenancy: Tenancy, clock: ManualClock, database_url: str
) -> None:
    """Several workers (threads, and a second engine) claim while several
    submitters submit: at most the limit runs, and no job starts twice."""
    control(tenancy, clock).set_concurrency(root(tenancy), ctx(), SV, 3)
    second = Database(database_url)
    workers = [worker(tenancy, clock) for _ in range(3)] + [worker(tenancy, clock, db=second)]
    for _ in range(4):
        submit(tenancy, tenancy.developer)
    claimed: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(workers) + 2)

    def claim_all(w: Worker) -> None:
        barrier.wait()
        for _ in range(6):
            got = w.claim()
            if got is not None:
                with lock:
                    claimed.append(got.job_id)

    def submit_some(who: Principal) -> None:
        barrier.wait()
        for _ in range(3):
            submit(tenancy, who)

    threads = [threading.Thread(target=claim_all, args=(w,)) for w in workers] + [
        threading.Thread(target=submit_some, args=(p,))
        for p in (tenancy.developer, tenancy.outsider)
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        second.dispose()
    assert len(claimed) == len(set(claimed)) == 3
    with tenancy.runtime.services.db.read() as session:
        running = session.scalars(select(m.Job.id).where(m.Job.state == "running")).all()
    assert sorted(running) == sorted(claimed)

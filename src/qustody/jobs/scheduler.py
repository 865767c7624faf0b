"""Which queued job starts next.

A worker asks :meth:`Scheduler.pick` inside its claim transaction. The
decision, in order:

1. **Where a job may start.** Nothing starts on a paused backend or one
   inside a maintenance window; during a reservation only the holding
   tenant's jobs start on the reserved backend; a backend runs at most its
   concurrency limit of jobs (``backend_states.max_running``, else
   ``QUSTODY_BACKEND_CONCURRENCY``; 0: no limit but the workers' slots); and
   no start may exceed a ``concurrent_jobs`` quota of the tenant, project or
   backend (:func:`qustody.governance.quotas.running_caps`). Jobs held back
   stay queued; they start when what held them back is gone.
2. **Which tenant.** Weighted fair queuing across tenants, by start-time fair
   queuing (Goyal, Vin and Cheng, SIGCOMM 1996) over job starts: each start
   costs the tenant ``1 / weight``; a tenant's next start tag is
   ``max(its last finish tag, virtual time)``, and the tenant with the
   smallest start tag among those with a startable job goes next; the virtual
   time becomes that start tag. Over a busy period, tenants with weights 2
   and 1 get two starts and one. A tenant idle for a while comes back at the
   current virtual time, not with credit saved up. The unit is a job start,
   not shots or seconds: a job's run time is unknown until it has run, and
   shots mean different times on different backends.
3. **Which of its jobs.** Jobs of one of its sessions that has already
   started run first (a hybrid loop's next step does not wait behind the
   tenant's batch), then higher ``priority``, then first queued, then id.

Race safety: on PostgreSQL the claim locks the one ``scheduler_clock`` row
first, so decisions are taken one at a time across workers and processes
and each sees the running counts its predecessors committed; the job row is
taken ``FOR UPDATE SKIP LOCKED`` (a cancel in flight is passed over). On
SQLite, ``BEGIN IMMEDIATE`` serialises the claim transactions already.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, case, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from qustody.domain.vocabulary import JobState
from qustody.governance.backends import backend_states
from qustody.governance.quotas import RunningCap, running_caps
from qustody.storage import models as m

_QUEUED = JobState.QUEUED.value
_RUNNING = JobState.RUNNING.value
_CLOCK = m.SCHEDULER_CLOCK
_SHARES = m.TENANT_SHARES
_JOBS = m.JOBS


@dataclass(frozen=True, slots=True)
class Group:
    """Queued jobs of one tenant and project for one backend."""

    tenant_id: str
    project_id: str
    backend: str


@dataclass(slots=True)
class Outcome:
    """What one pick found: the job (or None), and whether queued jobs were
    held back (then a job finishing, or a window ending, may free them)."""

    job: m.Job | None
    held_back: bool


class Scheduler:
    def __init__(self, *, default_concurrency: int = 0) -> None:
        #: Jobs one backend runs at once unless its state says otherwise (0: no limit).
        self.default_concurrency = default_concurrency

    def pick(self, session: Session, now: datetime) -> Outcome:
        """Choose the next job to start and charge its tenant's share; the
        caller moves it to ``running`` in the same transaction."""
        connection = session.connection()
        virtual_time = _lock_clock(connection)
        groups = [
            Group(*row)
            for row in connection.execute(
                select(_JOBS.c.tenant_id, _JOBS.c.project_id, _JOBS.c.backend)
                .where(_JOBS.c.state == _QUEUED)
                .distinct()
            )
        ]
        if not groups:
            return Outcome(None, held_back=False)
        startable = self._startable(connection, groups, now)
        held_back = len(startable) < len(groups)
        if not startable:
            return Outcome(None, held_back=True)
        by_tenant: dict[str, list[Group]] = defaultdict(list)
        for group in startable:
            by_tenant[group.tenant_id].append(group)
        shares = {
            row.tenant_id: (max(1, row.weight), row.finish_tag)
            for row in connection.execute(
                select(_SHARES).where(_SHARES.c.tenant_id.in_(list(by_tenant)))
            )
        }

        def start_tag(tenant_id: str) -> tuple[float, str]:
            finish = shares.get(tenant_id, (1, 0.0))[1]
            return (max(finish, virtual_time), tenant_id)

        for tenant_id in sorted(by_tenant, key=start_tag):
            job = _next_of(session, tenant_id, by_tenant[tenant_id], now)
            if job is None:
                continue  # every candidate is locked by a cancel in flight
            weight, _ = shares.get(tenant_id, (1, 0.0))
            start = start_tag(tenant_id)[0]
            _charge(connection, tenant_id, tenant_id in shares, start, start + 1.0 / weight)
            if job.session_id is not None:
                connection.execute(
                    update(m.JOB_SESSIONS)
                    .where(
                        m.JOB_SESSIONS.c.id == job.session_id,
                        m.JOB_SESSIONS.c.started_at.is_(None),
                    )
                    .values(started_at=now)
                )
            return Outcome(job, held_back)
        return Outcome(None, held_back=True)

    def _startable(self, connection: Connection, groups: list[Group], now: datetime) -> list[Group]:
        """The groups whose next job may start now (rule 1 of the module)."""
        backends = {g.backend for g in groups}
        states = backend_states(connection, backends, now)
        holders = dict(
            connection.execute(
                select(m.RESERVATIONS.c.backend, m.RESERVATIONS.c.tenant_id).where(
                    m.RESERVATIONS.c.backend.in_(sorted(backends)),
                    m.RESERVATIONS.c.starts_at <= now,
                    m.RESERVATIONS.c.ends_at > now,
                    m.RESERVATIONS.c.cancelled_at.is_(None),
                )
            ).all()
        )
        running: Counter[Group] = Counter()
        for tenant_id, project_id, backend, count in connection.execute(
            select(_JOBS.c.tenant_id, _JOBS.c.project_id, _JOBS.c.backend, func.count())
            .where(_JOBS.c.state == _RUNNING)
            .group_by(_JOBS.c.tenant_id, _JOBS.c.project_id, _JOBS.c.backend)
        ):
            running[Group(tenant_id, project_id, backend)] = int(count)
        on_backend: Counter[str] = Counter()
        for group, count in running.items():
            on_backend[group.backend] += count
        caps = running_caps(connection, now)
        startable = []
        for group in groups:
            state = states[group.backend]
            if not state.accepting_starts:
                continue
            if holders.get(group.backend, group.tenant_id) != group.tenant_id:
                continue
            limit = state.max_running or self.default_concurrency
            if limit and on_backend[group.backend] >= limit:
                continue
            if any(_binds(cap, group) and _used(cap, running) >= cap.limit for cap in caps):
                continue
            startable.append(group)
        return startable


def _binds(cap: RunningCap, group: Group) -> bool:
    return (
        cap.tenant_id == group.tenant_id
        and cap.project_id in (None, group.project_id)
        and cap.backend in (None, group.backend)
    )


def _used(cap: RunningCap, running: Counter[Group]) -> int:
    return sum(count for group, count in running.items() if _binds(cap, group))


def _lock_clock(connection: Connection) -> float:
    """The virtual time, its row locked until the transaction ends (PostgreSQL)."""
    value = connection.execute(
        select(_CLOCK.c.virtual_time).where(_CLOCK.c.id == 1).with_for_update()
    ).scalar()
    if value is None:  # a database whose row was removed by hand
        connection.execute(insert(_CLOCK).values(id=1, virtual_time=0.0))
        return 0.0
    return float(value)


def _charge(
    connection: Connection, tenant_id: str, known: bool, start: float, finish: float
) -> None:
    if known:
        connection.execute(
            update(_SHARES).where(_SHARES.c.tenant_id == tenant_id).values(finish_tag=finish)
        )
    else:
        connection.execute(insert(_SHARES).values(tenant_id=tenant_id, weight=1, finish_tag=finish))
    connection.execute(update(_CLOCK).where(_CLOCK.c.id == 1).values(virtual_time=start))


def _next_of(session: Session, tenant_id: str, groups: list[Group], now: datetime) -> m.Job | None:
    """The tenant's next job among ``groups`` (rule 3 of the module)."""
    started = session.scalars(
        select(m.JobSession.id).where(
            m.JobSession.tenant_id == tenant_id,
            m.JobSession.state == "open",
            m.JobSession.started_at.is_not(None),
            m.JobSession.expires_at > now,
        )
    ).all()
    # Without a started session the order is the index's: no sort of the queue.
    order = [m.Job.priority.desc(), m.Job.queued_at, m.Job.id]
    if started:
        order.insert(0, case((m.Job.session_id.in_(started), 0), else_=1))
    return session.scalar(
        select(m.Job)
        .where(
            m.Job.state == _QUEUED,
            m.Job.tenant_id == tenant_id,
            or_(
                *(
                    and_(m.Job.project_id == g.project_id, m.Job.backend == g.backend)
                    for g in groups
                )
            ),
        )
        .order_by(*order)
        .limit(1)
        .with_for_update(skip_locked=True)
    )


def queue_positions(
    connection: Connection, tenant_id: str, backend: str | None = None
) -> dict[str, int]:
    """1-based positions of ``tenant_id``'s queued jobs, per backend, in the
    order the scheduler starts them (sessions aside): only that tenant's
    jobs are counted, so a position says nothing of other tenants."""
    query = select(_JOBS.c.id, _JOBS.c.backend).where(
        _JOBS.c.state == _QUEUED, _JOBS.c.tenant_id == tenant_id
    )
    if backend is not None:
        query = query.where(_JOBS.c.backend == backend)
    seen: Counter[str] = Counter()
    positions: dict[str, int] = {}
    for job_id, job_backend in connection.execute(
        query.order_by(_JOBS.c.priority.desc(), _JOBS.c.queued_at, _JOBS.c.id)
    ):
        seen[job_backend] += 1
        positions[job_id] = seen[job_backend]
    return positions

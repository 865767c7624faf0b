"""What a caller may see of a backend's queue, without side channels.

A tenant sees its own queued jobs with their positions (counted among its own
jobs only, in the order the scheduler starts them) and, for the rest of the
backend, one aggregate word: ``paused``, ``maintenance``, ``reserved`` (by
another tenant, now), ``busy`` (at least ``QUSTODY_BUSY_QUEUE_DEPTH`` jobs
queued, all tenants together) or ``normal``. Never another tenant's counts,
ids or positions: the aggregate is read in the system scope and reduced to
that word before it leaves this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.engine import Connection

from qustody.domain.clock import SYSTEM_CLOCK, Clock
from qustody.domain.models import Principal, RequestContext, Resource
from qustody.domain.vocabulary import Action, JobState
from qustody.executors.registry import BackendRegistry
from qustody.governance.backends import BackendControl, backend_states
from qustody.governance.reservations import Reservations, reserved_now
from qustody.governance.sessions import Sessions
from qustody.jobs.scheduler import queue_positions
from qustody.policy.facts import backend_attributes
from qustody.policy.guard import Guard, not_found
from qustody.policy.misses import records_misses
from qustody.storage import models as m
from qustody.storage.db import SYSTEM, Database, utc

_JOBS = m.JOBS


@dataclass(frozen=True, slots=True)
class QueuedJob:
    id: str
    position: int
    priority: int
    queued_at: datetime | None
    session_id: str | None


@dataclass(frozen=True, slots=True)
class BackendQueue:
    backend: str
    #: ``paused``, ``maintenance``, ``reserved``, ``busy`` or ``normal``.
    status: str
    #: The backend is reserved for the caller's tenant now.
    reserved_for_you: bool
    #: The caller's tenant's queued jobs on it, first to start first.
    jobs: tuple[QueuedJob, ...]


class QueueReader:
    def __init__(
        self,
        db: Database,
        guard: Guard,
        registry: BackendRegistry,
        *,
        busy_depth: int = 10,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._db = db
        self._guard = guard
        self._registry = registry
        self._busy_depth = busy_depth
        self._clock = clock

    @records_misses(Action.QUEUE_READ)
    def backend_queue(
        self, caller: Principal, request: RequestContext, backend: str
    ) -> BackendQueue:
        if backend not in self._registry:
            raise not_found("backend", backend[:64])
        info = self._registry.get(backend).info
        self._guard.check(
            caller,
            Action.QUEUE_READ,
            Resource("backend", info.name, None, attributes=backend_attributes(info)),
            request,
        )
        now = self._clock.now()
        tenant_id = caller.tenant_id
        # The aggregate: read across tenants, reduced to one word here.
        with self._db.reading(scope=SYSTEM) as connection:
            state = backend_states(connection, [backend], now)[backend]
            holder = reserved_now(connection, backend, now)
            depth = connection.execute(
                select(func.count())
                .select_from(_JOBS)
                .where(_JOBS.c.state == JobState.QUEUED.value, _JOBS.c.backend == backend)
            ).scalar_one()
        if state.paused:
            status = "paused"
        elif state.maintenance is not None:
            status = "maintenance"
        elif holder is not None and holder != tenant_id:
            status = "reserved"
        elif depth >= self._busy_depth:
            status = "busy"
        else:
            status = "normal"
        with self._db.reading() as connection:
            positions = queue_positions(connection, tenant_id, backend)
            rows = connection.execute(
                select(_JOBS.c.id, _JOBS.c.priority, _JOBS.c.queued_at, _JOBS.c.session_id).where(
                    _JOBS.c.id.in_(list(positions)), _JOBS.c.tenant_id == tenant_id
                )
            ).all()
        jobs = sorted(
            (
                QueuedJob(r.id, positions[r.id], r.priority or 0, utc(r.queued_at), r.session_id)
                for r in rows
            ),
            key=lambda j: j.position,
        )
        return BackendQueue(backend, status, holder == tenant_id, tuple(jobs))


def queue_position(connection: Connection, job: m.Job) -> int | None:
    """A queued job's 1-based position among its own tenant's queued jobs on
    its backend (None once it is not queued)."""
    if job.state != JobState.QUEUED.value or job.queued_at is None:
        return None
    priority = job.priority or 0
    ahead = connection.execute(
        select(func.count())
        .select_from(_JOBS)
        .where(
            _JOBS.c.state == JobState.QUEUED.value,
            _JOBS.c.tenant_id == job.tenant_id,
            _JOBS.c.backend == job.backend,
            or_(
                _JOBS.c.priority > priority,
                and_(
                    _JOBS.c.priority == priority,
                    or_(
                        _JOBS.c.queued_at < job.queued_at,
                        and_(_JOBS.c.queued_at == job.queued_at, _JOBS.c.id < job.id),
                    ),
                ),
            ),
        )
    ).scalar_one()
    return int(ahead) + 1


@dataclass(slots=True)
class Scheduling:
    """The scheduling services an app is built with."""

    backends: BackendControl
    reservations: Reservations
    sessions: Sessions
    queue: QueueReader

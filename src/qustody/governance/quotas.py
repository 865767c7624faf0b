"""Quotas per tenant, project and backend.

A quota limits one :class:`Metric` for one :class:`Scope` of a tenant: the
tenant as a whole, one of its projects, or its use of one backend.

- ``queued_jobs`` (queued or awaiting approval), ``jobs_per_day`` and
  ``shots_per_day`` are checked at submission by :class:`QuotaCheck`, in the
  job's own transaction. The check locks the quota rows that apply (``FOR
  UPDATE``, in id order) before it counts, so two API processes racing for
  the last unit serialise and one of them is refused; SQLite serialises
  writers already. Days are the tenant's (``tenants.timezone``).
- ``concurrent_jobs`` (running at once) is enforced by the scheduler, which
  reads :func:`running_caps` and starts no job that would exceed one.

At 80 % after admission the job carries a ``quota_warning`` notice; at 100 %
the submission is refused with ``quota_exceeded`` (HTTP 429), naming the
quota, its limit, what is used and when it resets (with ``Retry-After``).

Who sets them (docs/quotas-and-budgets.md): platform admins set a tenant's
tenant-wide and per-backend quotas (``quota:set`` on the tenant); tenant
admins set their projects' quotas (``quota:set`` on the project), at most
the tenant-wide quota of the same metric.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Select,
    String,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.engine import Connection, Row
from sqlalchemy.sql.elements import ColumnElement

from qustody.domain.errors import QustodyError
from qustody.domain.vocabulary import JobState
from qustody.governance.admission import Admitted, Notice, Submission
from qustody.governance.periods import Period, bounds, tenant_zone
from qustody.storage import models as m

_Q = m.QUOTAS
_J = m.JOBS
#: Percent used (after admission) from which a submission is warned.
WARN_PERCENT = 80
#: The largest limit a quota may have.
MAX_LIMIT = 10**12


class Metric(StrEnum):
    CONCURRENT_JOBS = "concurrent_jobs"
    QUEUED_JOBS = "queued_jobs"
    JOBS_PER_DAY = "jobs_per_day"
    SHOTS_PER_DAY = "shots_per_day"

    @property
    def daily(self) -> bool:
        return self in (Metric.JOBS_PER_DAY, Metric.SHOTS_PER_DAY)


#: Waiting for a worker: what ``queued_jobs`` counts.
WAITING = (JobState.QUEUED.value, JobState.AWAITING_APPROVAL.value)


@dataclass(frozen=True, slots=True)
class Scope:
    """What a quota or budget covers: the tenant (neither set), one project, or one backend."""

    project_id: str | None = None
    backend: str | None = None

    @property
    def key(self) -> str:
        if self.project_id is not None:
            return f"project:{self.project_id}"
        if self.backend is not None:
            return f"backend:{self.backend}"
        return "tenant"

    def covers(self, project_id: str | None, backend: str | None) -> bool:
        return (self.project_id is None or self.project_id == project_id) and (
            self.backend is None or self.backend == backend
        )

    def describe(self) -> str:
        if self.project_id is not None:
            return f"project {self.project_id}"
        if self.backend is not None:
            return f"backend {self.backend}"
        return "the tenant"

    @staticmethod
    def keys_for(project_id: str, backend: str) -> list[str]:
        """The scopes whose quotas and budgets a job of ``project_id`` on ``backend`` counts in."""
        return ["tenant", f"project:{project_id}", f"backend:{backend}"]

    @staticmethod
    def key_parameters(project_id: str, backend: str) -> dict[str, str]:
        """:meth:`keys_for` as the parameters of :data:`SCOPE_KEYS`."""
        return {"project_scope": f"project:{project_id}", "backend_scope": f"backend:{backend}"}


#: The scopes a job counts in, as bound parameters (with :meth:`Scope.key_parameters`),
#: so statements that use them are built once.
SCOPE_KEYS: tuple[ColumnElement[str], ...] = (
    literal("tenant"),
    bindparam("project_scope", type_=String()),
    bindparam("backend_scope", type_=String()),
)


@dataclass(frozen=True, slots=True)
class QuotaStanding:
    """A quota and how much of it is used at a moment."""

    id: str
    metric: Metric
    scope: Scope
    limit: int
    used: int
    #: When the count starts again (per-day quotas); None for queued and running jobs.
    resets_at: datetime | None

    @property
    def percent(self) -> float:
        return 100.0 if self.limit == 0 else round(100.0 * self.used / self.limit, 1)


class QuotaExceeded(QustodyError):
    code = "quota_exceeded"
    status = 429
    title = "Quota exceeded"

    def __init__(self, standing: QuotaStanding, wanted: int, at: datetime) -> None:
        quota = standing.metric.value
        if standing.resets_at is not None:
            when = f"it resets at {standing.resets_at.isoformat()} (the tenant's midnight)"
        elif standing.metric is Metric.QUEUED_JOBS:
            when = "a place frees up when one of the waiting jobs starts or is cancelled"
        else:
            when = "a place frees up when a running job finishes"
        super().__init__(
            f"the {quota} quota of {standing.scope.describe()} is {standing.limit} and "
            f"{standing.used} are used; this job needs {wanted} more. {when[0].upper()}{when[1:]}; "
            "retry then, or ask your administrator to raise the quota (see GET /v1/usage).",
            field="shots" if standing.metric is Metric.SHOTS_PER_DAY else None,
            extra={
                "quota": quota,
                "scope": standing.scope.key,
                "limit": standing.limit,
                "used": standing.used,
                "resets_at": standing.resets_at.isoformat() if standing.resets_at else None,
            },
        )
        #: Sent by the API as response headers.
        self.response_headers: dict[str, str] = {}
        if standing.resets_at is not None:
            wait = max(1, math.ceil((standing.resets_at - at).total_seconds()))
            self.response_headers["Retry-After"] = str(wait)


def _scope_of(row: Row[tuple[object, ...]]) -> Scope:
    return Scope(project_id=row.project_id, backend=row.backend)


def measure(
    connection: Connection, tenant_id: str, rows: Sequence[Row[tuple[object, ...]]], at: datetime
) -> list[QuotaStanding]:
    """How much of each quota in ``rows`` (of ``tenant_id``) is used at ``at``."""
    metrics = {Metric(r.metric) for r in rows}
    waiting: list[Row[tuple[object, ...]]] = []
    running: list[Row[tuple[object, ...]]] = []
    daily: list[Row[tuple[object, ...]]] = []
    day: tuple[datetime, datetime] | None = None
    if Metric.QUEUED_JOBS in metrics or Metric.CONCURRENT_JOBS in metrics:
        waiting = _tally(connection, tenant_id, _J.c.state.in_(WAITING))
        if Metric.CONCURRENT_JOBS in metrics:
            running = _tally(connection, tenant_id, _J.c.state == JobState.RUNNING.value)
    if any(metric.daily for metric in metrics):
        day = bounds(at, tenant_zone(connection, tenant_id), Period.DAY)
        daily = _tally(
            connection,
            tenant_id,
            and_(_J.c.created_at >= day[0], _J.c.state != JobState.REJECTED.value),
        )
    standings = []
    for row in rows:
        metric, scope = Metric(row.metric), _scope_of(row)
        if metric is Metric.QUEUED_JOBS:
            used, resets = _sum(waiting, scope, "jobs"), None
        elif metric is Metric.CONCURRENT_JOBS:
            used, resets = _sum(running, scope, "jobs"), None
        else:
            column = "jobs" if metric is Metric.JOBS_PER_DAY else "shots"
            used, resets = _sum(daily, scope, column), day[1] if day else None
        standings.append(QuotaStanding(row.id, metric, scope, int(row.maximum), used, resets))
    return standings


def _tally(
    connection: Connection, tenant_id: str, condition: object
) -> list[Row[tuple[object, ...]]]:
    """Jobs and shots of the tenant matching ``condition``, per project and backend."""
    return list(
        connection.execute(
            select(
                _J.c.project_id,
                _J.c.backend,
                func.count().label("jobs"),
                func.coalesce(func.sum(_J.c.shots), 0).label("shots"),
            )
            .where(_J.c.tenant_id == tenant_id, condition)  # type: ignore[arg-type]
            .group_by(_J.c.project_id, _J.c.backend)
        )
    )


def _sum(tally: Iterable[Row[tuple[object, ...]]], scope: Scope, column: str) -> int:
    return sum(int(getattr(r, column)) for r in tally if scope.covers(r.project_id, r.backend))


def applicable(
    connection: Connection,
    tenant_id: str,
    project_id: str,
    backend: str,
    *,
    lock: bool = False,
    metrics: Iterable[Metric] = (Metric.QUEUED_JOBS, Metric.JOBS_PER_DAY, Metric.SHOTS_PER_DAY),
) -> list[Row[tuple[object, ...]]]:
    """The quotas a job of ``project_id`` on ``backend`` counts in; locked
    (``FOR UPDATE``, in id order) with ``lock``."""
    wanted = tuple(metrics)
    query = _APPLICABLE[lock] if wanted == _ADMITTED_METRICS else _applicable(wanted, lock)
    return list(
        connection.execute(
            query, {"tenant_id": tenant_id, **Scope.key_parameters(project_id, backend)}
        )
    )


def _applicable(metrics: tuple[Metric, ...], lock: bool) -> Select[Any]:
    query = (
        select(_Q)
        .where(
            _Q.c.tenant_id == bindparam("tenant_id"),
            _Q.c.scope.in_(SCOPE_KEYS),
            _Q.c.metric.in_([m_.value for m_ in metrics]),
        )
        .order_by(_Q.c.id)
    )
    return query.with_for_update() if lock else query


#: What a submission counts against (``concurrent_jobs`` is the scheduler's).
_ADMITTED_METRICS = (Metric.QUEUED_JOBS, Metric.JOBS_PER_DAY, Metric.SHOTS_PER_DAY)
# Built once, plain and locked: building one costs more than running it.
_APPLICABLE = {lock: _applicable(_ADMITTED_METRICS, lock) for lock in (False, True)}


class QuotaCheck:
    """Counts a submission against its quotas (an :class:`AdmissionCheck`)."""

    def prepare(self, connection: Connection, submission: Submission, admitted: Admitted) -> bool:
        return bool(
            applicable(
                connection, submission.tenant_id, submission.project_id, submission.backend.name
            )
        )

    def admit(self, connection: Connection, submission: Submission, admitted: Admitted) -> None:
        rows = applicable(
            connection,
            submission.tenant_id,
            submission.project_id,
            submission.backend.name,
            lock=True,
        )
        if not rows:
            return
        standings = measure(connection, submission.tenant_id, rows, submission.at)
        for standing in standings:
            wanted = _wanted(standing.metric, submission.shots)
            if standing.used + wanted > standing.limit:
                raise QuotaExceeded(standing, wanted, submission.at)
        for standing in standings:
            after = standing.used + _wanted(standing.metric, submission.shots)
            if after * 100 >= WARN_PERCENT * standing.limit:
                admitted.notices.append(warning(standing, after))


def _wanted(metric: Metric, shots: int) -> int:
    return shots if metric is Metric.SHOTS_PER_DAY else 1


def warning(standing: QuotaStanding, used: int) -> Notice:
    percent = 100 if standing.limit == 0 else math.floor(100 * used / standing.limit)
    resets = f"; it resets at {standing.resets_at.isoformat()}" if standing.resets_at else ""
    return Notice(
        "quota_warning",
        f"{standing.metric.value} of {standing.scope.describe()}: {used} of {standing.limit} "
        f"used ({percent}%){resets}.",
    )


# -- reads and writes of the quota table ------------------------------------------


def store(
    connection: Connection,
    *,
    tenant_id: str,
    scope: Scope,
    metric: Metric,
    limit: int | None,
    at: datetime,
    by: str,
    new_id: str,
) -> None:
    """Set (``limit``) or remove (None) the quota of ``metric`` for ``scope``."""
    where = and_(_Q.c.tenant_id == tenant_id, _Q.c.scope == scope.key, _Q.c.metric == metric.value)
    if limit is None:
        connection.execute(delete(_Q).where(where))
        return
    changed = connection.execute(
        update(_Q).where(where).values(maximum=limit, updated_at=at, updated_by=by)
    ).rowcount
    if not changed:
        connection.execute(
            insert(_Q).values(
                id=new_id,
                tenant_id=tenant_id,
                scope=scope.key,
                project_id=scope.project_id,
                backend=scope.backend,
                metric=metric.value,
                maximum=limit,
                updated_at=at,
                updated_by=by,
            )
        )


def tenant_quotas(connection: Connection, tenant_id: str) -> list[Row[tuple[object, ...]]]:
    return list(
        connection.execute(
            select(_Q)
            .where(_Q.c.tenant_id == tenant_id)
            .order_by(case((_Q.c.scope == "tenant", 0), else_=1), _Q.c.scope, _Q.c.metric)
        )
    )


@dataclass(frozen=True, slots=True)
class RunningCap:
    """At most ``limit`` jobs of ``tenant_id`` running at once, narrowed to
    one project and/or one backend when those are set."""

    tenant_id: str
    project_id: str | None
    backend: str | None
    limit: int


def running_caps(connection: Connection, at: datetime) -> list[RunningCap]:
    """Every ``concurrent_jobs`` quota in force at ``at`` (the scheduler
    starts no job that would exceed one). Quotas have no start or end, so
    ``at`` changes nothing today; it is there for windows to come."""
    del at
    rows = connection.execute(
        select(_Q.c.tenant_id, _Q.c.project_id, _Q.c.backend, _Q.c.maximum).where(
            _Q.c.metric == Metric.CONCURRENT_JOBS.value
        )
    )
    return [RunningCap(r.tenant_id, r.project_id, r.backend, int(r.maximum)) for r in rows]


__all__ = [
    "MAX_LIMIT",
    "Metric",
    "QuotaCheck",
    "QuotaExceeded",
    "QuotaStanding",
    "RunningCap",
    "Scope",
    "applicable",
    "measure",
    "running_caps",
    "store",
    "tenant_quotas",
]

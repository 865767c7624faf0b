"""Spending limits (budgets) per tenant, project and backend, per period.

A budget caps what one :class:`~qustody.governance.quotas.Scope` of a tenant
may spend per day, ISO week or month of the tenant's time zone. What counts
against it, for the jobs submitted in the period:

- *spent*: the cost charged to jobs that have finished (``jobs.cost``);
- *reserved*: the estimate of jobs not finished yet (``jobs.estimated_cost``
  of jobs waiting or running), so that money promised to queued jobs is not
  promised twice.

:class:`BudgetCheck` runs at submission in the job's transaction: it prices
the job (:mod:`qustody.governance.costs`), stores the estimate on it, locks
the budgets that apply (``FOR UPDATE``, in id order, after the quotas) and
refuses with ``budget_exceeded`` (HTTP 402) a job whose estimate exceeds
what is left, before it runs. When the job finishes, :func:`settle` replaces
the reservation with the charge.

Each budget has thresholds (percent; 50, 80 and 100 by default). The first
time in a period that spent + reserved reaches one, an alert
``budget.threshold`` is raised (:func:`qustody.governance.alerts.raise_alert`)
and ``budget:alert`` recorded, in the transaction that crossed it; a row of
``budget_crossings`` makes sure it is raised once per threshold and period.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, bindparam, case, func, insert, select
from sqlalchemy.engine import Connection, Row
from sqlalchemy.orm import Session

from qustody.audit.recorder import Actor, Target, event_row, record_rows
from qustody.domain.errors import QustodyError
from qustody.domain.vocabulary import Action, JobState
from qustody.governance.admission import Admitted, Notice, Submission
from qustody.governance.alerts import raise_alert
from qustody.governance.costs import price_at, units
from qustody.governance.periods import Period, bounds, tenant_zone
from qustody.governance.quotas import SCOPE_KEYS, WARN_PERCENT, Scope
from qustody.storage import models as m

_B = m.BUDGETS
_C = m.BUDGET_CROSSINGS
_J = m.JOBS
DEFAULT_THRESHOLDS = (50, 80, 100)
#: States whose estimate is reserved (the job may still run and be charged).
OPEN = (
    JobState.SUBMITTED.value,
    JobState.VALIDATED.value,
    JobState.AWAITING_APPROVAL.value,
    JobState.QUEUED.value,
    JobState.RUNNING.value,
)
#: Who raises budget alerts, in the audit log.
ACTOR = Actor.system("budgets")


@dataclass(frozen=True, slots=True)
class BudgetStanding:
    id: str
    tenant_id: str
    scope: Scope
    period: Period
    limit: int
    spent: int
    reserved: int
    period_start: datetime
    resets_at: datetime
    thresholds: tuple[int, ...]

    @property
    def committed(self) -> int:
        return self.spent + self.reserved

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.committed)

    @property
    def percent(self) -> float:
        return 100.0 if self.limit == 0 else round(100.0 * self.committed / self.limit, 1)


class BudgetExceeded(QustodyError):
    """402: the request is fine; the money for it is not there until the period resets."""

    code = "budget_exceeded"
    status = 402
    title = "Spending limit reached"

    def __init__(self, standing: BudgetStanding, estimate: int) -> None:
        super().__init__(
            f"this job is estimated at {units(estimate)}; the {standing.period.value}ly budget of "
            f"{standing.scope.describe()} is {units(standing.limit)}, of which "
            f"{units(standing.spent)} is spent and {units(standing.reserved)} reserved for "
            f"unfinished jobs, leaving {units(standing.remaining)}. It resets at "
            f"{standing.resets_at.isoformat()}; submit fewer shots, wait for the reset, or ask a "
            "tenant admin to raise the budget (see GET /v1/usage).",
            field="shots",
            extra={
                "budget": standing.id,
                "scope": standing.scope.key,
                "period": standing.period.value,
                "limit": standing.limit,
                "spent": standing.spent,
                "reserved": standing.reserved,
                "estimate": estimate,
                "resets_at": standing.resets_at.isoformat(),
            },
        )


def applicable(
    connection: Connection, tenant_id: str, project_id: str, backend: str, *, lock: bool = False
) -> list[Row[Any]]:
    """The budgets a job of ``project_id`` on ``backend`` draws on; locked with ``lock``."""
    return list(
        connection.execute(
            _APPLICABLE[lock], {"tenant_id": tenant_id, **Scope.key_parameters(project_id, backend)}
        )
    )


def _applicable(lock: bool) -> Select[Any]:
    query = (
        select(_B)
        .where(_B.c.tenant_id == bindparam("tenant_id"), _B.c.scope.in_(SCOPE_KEYS))
        .order_by(_B.c.id)
    )
    return query.with_for_update() if lock else query


# Built once, plain and locked: building one costs more than running it.
_APPLICABLE = {lock: _applicable(lock) for lock in (False, True)}


def tenant_budgets(connection: Connection, tenant_id: str) -> list[Row[Any]]:
    return list(
        connection.execute(
            select(_B)
            .where(_B.c.tenant_id == tenant_id)
            .order_by(case((_B.c.scope == "tenant", 0), else_=1), _B.c.scope, _B.c.period)
        )
    )


def standings(
    connection: Connection, tenant_id: str, rows: Sequence[Row[Any]], at: datetime
) -> list[BudgetStanding]:
    """What each budget in ``rows`` has spent and reserved in its period at ``at``."""
    if not rows:
        return []
    tz = tenant_zone(connection, tenant_id)
    tallies: dict[Period, tuple[datetime, datetime, list[Row[Any]]]] = {}
    result = []
    for row in rows:
        period = Period(row.period)
        if period not in tallies:
            start, end = bounds(at, tz, period)
            tallies[period] = (start, end, _spending(connection, tenant_id, start, end))
        start, end, tally = tallies[period]
        scope = Scope(project_id=row.project_id, backend=row.backend)
        mine = [t for t in tally if scope.covers(t.project_id, t.backend)]
        result.append(
            BudgetStanding(
                id=row.id,
                tenant_id=tenant_id,
                scope=scope,
                period=period,
                limit=int(row.maximum),
                spent=sum(int(t.spent) for t in mine),
                reserved=sum(int(t.reserved) for t in mine),
                period_start=start,
                resets_at=end,
                thresholds=tuple(int(t) for t in row.thresholds),
            )
        )
    return result


def _spending(
    connection: Connection, tenant_id: str, start: datetime, end: datetime
) -> list[Row[Any]]:
    """Spent and reserved per project and backend, for jobs submitted in ``[start, end)``."""
    spent = case((_J.c.cost.is_not(None), _J.c.cost), else_=0)
    reserved = case(
        (and_(_J.c.cost.is_(None), _J.c.state.in_(OPEN)), func.coalesce(_J.c.estimated_cost, 0)),
        else_=0,
    )
    return list(
        connection.execute(
            select(
                _J.c.project_id,
                _J.c.backend,
                func.coalesce(func.sum(spent), 0).label("spent"),
                func.coalesce(func.sum(reserved), 0).label("reserved"),
            )
            .where(_J.c.tenant_id == tenant_id, _J.c.created_at >= start, _J.c.created_at < end)
            .group_by(_J.c.project_id, _J.c.backend)
        )
    )


class BudgetCheck:
    """Prices a submission and reserves it against its budgets (an :class:`AdmissionCheck`)."""

    def prepare(self, connection: Connection, submission: Submission, admitted: Admitted) -> bool:
        price = price_at(connection, submission.backend.name, submission.at)
        admitted.values["estimated_cost"] = price.estimate(submission.shots)
        return bool(
            applicable(
                connection, submission.tenant_id, submission.project_id, submission.backend.name
            )
        )

    def admit(self, connection: Connection, submission: Submission, admitted: Admitted) -> None:
        estimate = admitted.values.get("estimated_cost")
        if not isinstance(estimate, int):
            estimate = price_at(connection, submission.backend.name, submission.at).estimate(
                submission.shots
            )
            admitted.values["estimated_cost"] = estimate
        rows = applicable(
            connection,
            submission.tenant_id,
            submission.project_id,
            submission.backend.name,
            lock=True,
        )
        if not rows:
            return
        found = standings(connection, submission.tenant_id, rows, submission.at)
        for standing in found:
            if standing.committed + estimate > standing.limit:
                raise BudgetExceeded(standing, estimate)
        for standing in found:
            after = standing.committed + estimate
            cross(connection, standing, after, submission.at)
            if estimate and after * 100 >= WARN_PERCENT * standing.limit:
                admitted.notices.append(
                    Notice(
                        "budget_warning",
                        f"the {standing.period.value}ly budget of {standing.scope.describe()} is "
                        f"{units(after)} of {units(standing.limit)} committed with this job; it "
                        f"resets at {standing.resets_at.isoformat()}.",
                    )
                )


def cross(connection: Connection, standing: BudgetStanding, committed: int, at: datetime) -> None:
    """Raise the alert of each threshold that ``committed`` reaches and that
    has not been alerted on in this period (the caller holds the budget's lock)."""
    reached = [t for t in standing.thresholds if committed * 100 >= t * standing.limit]
    if not reached:
        return
    done = set(
        connection.execute(
            select(_C.c.threshold).where(
                _C.c.budget_id == standing.id, _C.c.period_start == standing.period_start
            )
        ).scalars()
    )
    events = []
    for threshold in sorted(set(reached) - done):
        alert_id = raise_alert(
            connection,
            tenant_id=standing.tenant_id,
            kind="budget.threshold",
            payload={
                "budget_id": standing.id,
                "scope": standing.scope.key,
                "period": standing.period.value,
                "period_start": standing.period_start.isoformat(),
                "resets_at": standing.resets_at.isoformat(),
                "threshold_percent": threshold,
                "limit": standing.limit,
                "committed": committed,
            },
            at=at,
        )
        connection.execute(
            insert(_C).values(
                budget_id=standing.id,
                period_start=standing.period_start,
                threshold=threshold,
                tenant_id=standing.tenant_id,
                alert_id=alert_id,
                at=at,
            )
        )
        events.append(
            event_row(
                Action.BUDGET_ALERT,
                actor=ACTOR,
                target=Target("budget", standing.id, standing.tenant_id),
                reason=(
                    f"{threshold}% of the {standing.period.value}ly budget of "
                    f"{standing.scope.key} reached: {committed} of {standing.limit} micro-units "
                    f"committed (alert {alert_id})"
                ),
                at=at,
            )
        )
    if events:
        record_rows(connection, events)


def settle(
    session: Session,
    job: m.Job,
    *,
    execution_seconds: float | None,
    completed: bool,
    at: datetime,
) -> None:
    """Charge a job that ran (the worker, as it records the outcome): its
    reservation becomes its cost at the price in force when it was
    submitted, and any threshold the charge reaches raises its alert."""
    connection = session.connection()
    price = price_at(connection, job.backend, job.created_at)
    job.cost = price.charge(job.shots, execution_seconds, completed=completed)
    session.flush()
    rows = applicable(connection, job.tenant_id, job.project_id, job.backend, lock=True)
    for standing in standings(connection, job.tenant_id, rows, job.created_at):
        cross(connection, standing, standing.committed, at)

"""Reservations: a tenant holds a backend exclusively for a time window.

A tenant admin reserves a backend for ``[starts_at, ends_at)`` (at most
``QUSTODY_RESERVATION_MAX_HOURS``); during the window the scheduler starts
only that tenant's jobs on it, and other tenants' jobs wait in the queue.
Two tenants' reservations of one backend never overlap: the check and the
insert run under the backend's state row lock on PostgreSQL (and under
SQLite's writer lock), so of two racing requests for overlapping windows one
wins and the other is refused. The overlap check reads every tenant's
reservations (the system scope), and the refusal names no other tenant and
no times of theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from qustody.audit.recorder import Actor, Target, record
from qustody.domain.clock import SYSTEM_CLOCK, Clock
from qustody.domain.errors import Conflict
from qustody.domain.ids import looks_like_id, new_id
from qustody.domain.models import Principal, RequestContext, Resource
from qustody.domain.vocabulary import Action
from qustody.governance.backends import checked_reason, checked_window, lock_backend
from qustody.policy.guard import Guard, not_found
from qustody.policy.misses import records_misses
from qustody.storage import models as m
from qustody.storage.db import SYSTEM, Database, utc

_TABLE = m.RESERVATIONS


class ReservationConflict(Conflict):
    code = "reservation_conflict"
    title = "The backend is already reserved then"


@dataclass(frozen=True, slots=True)
class ReservationView:
    id: str
    tenant_id: str
    backend: str
    starts_at: datetime
    ends_at: datetime
    reason: str
    created_by: str
    created_at: datetime
    cancelled_at: datetime | None


class Reservations:
    def __init__(
        self,
        db: Database,
        guard: Guard,
        known: Callable[[], Collection[str]],
        *,
        max_hours: int = 24,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._db = db
        self._guard = guard
        self._known = known
        self._longest = timedelta(hours=max_hours)
        self._clock = clock

    @records_misses(Action.RESERVATION_CREATE)
    def create(
        self,
        caller: Principal,
        request: RequestContext,
        *,
        backend: str,
        starts_at: datetime,
        ends_at: datetime,
        reason: str,
    ) -> ReservationView:
        if backend not in self._known():
            raise not_found("backend", backend[:64])
        reason = checked_reason(reason)
        now = self._clock.now()
        starts_at, ends_at = checked_window(starts_at, ends_at, now, self._longest)
        tenant = Resource("tenant", caller.tenant_id, caller.tenant_id)
        decision = self._guard.check(caller, Action.RESERVATION_CREATE, tenant, request)
        row = {
            "id": new_id("rsv"),
            "tenant_id": caller.tenant_id,
            "backend": backend,
            "starts_at": starts_at,
            "ends_at": ends_at,
            "reason": reason,
            "created_at": now,
            "created_by": caller.id,
            "cancelled_at": None,
        }
        # The system scope: the overlap check must see other tenants' windows.
        with self._db.writing(scope=SYSTEM) as connection:
            lock_backend(connection, backend)
            clash = _overlapping(connection, backend, starts_at, ends_at)
            if clash is not None:
                ours = clash.tenant_id == caller.tenant_id
                raise ReservationConflict(
                    f"backend {backend} is already reserved during part of "
                    f"{starts_at.isoformat()}..{ends_at.isoformat()}"
                    + (
                        f" by your tenant's reservation {clash.id}; change or cancel it."
                        if ours
                        else "; choose another window (GET /v1/backends/"
                        f"{backend}/queue shows whether it is reserved now)."
                    ),
                    field="starts_at",
                )
            connection.execute(insert(_TABLE), row)
            record(
                connection,
                Action.RESERVATION_CREATE,
                actor=Actor.of(caller),
                target=Target("reservation", str(row["id"]), caller.tenant_id),
                decision=decision,
                request=request,
                reason=f"backend={backend} {starts_at.isoformat()}..{ends_at.isoformat()}",
            )
        return _view(row)

    def list(
        self, caller: Principal, request: RequestContext, *, include_past: bool = False
    ) -> list[ReservationView]:
        """The tenant's reservations not yet over (or all of them)."""
        tenant = Resource("tenant", caller.tenant_id, caller.tenant_id)
        self._guard.check(caller, Action.RESERVATION_LIST, tenant, request)
        query = select(_TABLE).where(_TABLE.c.tenant_id == caller.tenant_id)
        if not include_past:
            query = query.where(
                _TABLE.c.ends_at > self._clock.now(), _TABLE.c.cancelled_at.is_(None)
            )
        with self._db.reading() as connection:
            rows = connection.execute(query.order_by(_TABLE.c.starts_at).limit(500)).all()
        return [_view(r._mapping) for r in rows]

    @records_misses(Action.RESERVATION_CANCEL)
    def cancel(
        self, caller: Principal, request: RequestContext, reservation_id: str
    ) -> ReservationView:
        if not looks_like_id(reservation_id):
            raise not_found("reservation", reservation_id[:64])
        tenant = Resource("tenant", caller.tenant_id, caller.tenant_id)
        decision = self._guard.check(caller, Action.RESERVATION_CANCEL, tenant, request)
        now = self._clock.now()
        with self._db.writing() as connection:
            row = connection.execute(
                select(_TABLE).where(
                    _TABLE.c.id == reservation_id, _TABLE.c.tenant_id == caller.tenant_id
                )
            ).first()
            if row is None:
                raise not_found("reservation", reservation_id)
            values = dict(row._mapping)
            if values["cancelled_at"] is None:
                connection.execute(
                    update(_TABLE).where(_TABLE.c.id == reservation_id).values(cancelled_at=now)
                )
                values["cancelled_at"] = now
                record(
                    connection,
                    Action.RESERVATION_CANCEL,
                    actor=Actor.of(caller),
                    target=Target("reservation", reservation_id, caller.tenant_id),
                    decision=decision,
                    request=request,
                    reason=f"backend={values['backend']}",
                )
        return _view(values)


def _overlapping(
    connection: Connection, backend: str, starts_at: datetime, ends_at: datetime
) -> ReservationView | None:
    row = connection.execute(
        select(_TABLE)
        .where(
            _TABLE.c.backend == backend,
            _TABLE.c.cancelled_at.is_(None),
            _TABLE.c.starts_at < ends_at,
            _TABLE.c.ends_at > starts_at,
        )
        .limit(1)
    ).first()
    return None if row is None else _view(row._mapping)


def reserved_now(connection: Connection, backend: str, at: datetime) -> str | None:
    """The tenant holding ``backend`` at ``at``, if any (the caller's scope
    must see every tenant's reservations)."""
    value = connection.execute(
        select(_TABLE.c.tenant_id).where(
            _TABLE.c.backend == backend,
            _TABLE.c.cancelled_at.is_(None),
            _TABLE.c.starts_at <= at,
            _TABLE.c.ends_at > at,
        )
    ).scalar()
    return None if value is None else str(value)


def _view(row: object) -> ReservationView:
    values = dict(row)  # type: ignore[call-overload]
    return ReservationView(
        id=values["id"],
        tenant_id=values["tenant_id"],
        backend=values["backend"],
        starts_at=utc(values["starts_at"]),
        ends_at=utc(values["ends_at"]),
        reason=values["reason"],
        created_by=values["created_by"],
        created_at=utc(values["created_at"]),
        cancelled_at=utc(values["cancelled_at"]),
    )

"""Backend operations: pause and resume, maintenance windows, concurrency.

Platform admins run these (``backend:pause``, ``backend:resume``,
``backend:maintain``). A paused backend, or one inside a maintenance window,
still accepts submissions: its jobs queue and nothing starts on it until it
is resumed or the window ends. Each change and its audit event commit
together; ``on_change`` then wakes the workers (a resumed backend's jobs
start at once, not at the next poll).

:func:`backend_states` is what the scheduler and ``GET /v1/backends`` read.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from qustody.audit.recorder import Actor, Target, record
from qustody.domain.clock import SYSTEM_CLOCK, Clock
from qustody.domain.errors import InvalidRequest
from qustody.domain.ids import looks_like_id, new_id
from qustody.domain.models import Decision, Principal, RequestContext, Resource
from qustody.domain.vocabulary import Action
from qustody.policy.guard import Guard, not_found
from qustody.policy.misses import records_misses
from qustody.storage import models as m
from qustody.storage.db import SYSTEM, Database, utc

#: The longest maintenance window one request may declare.
MAX_MAINTENANCE = timedelta(days=7)
MAX_REASON = 500
#: The most jobs one backend may be allowed to run at once.
MAX_CONCURRENCY = 10_000


@dataclass(frozen=True, slots=True)
class MaintenanceView:
    id: str
    backend: str
    starts_at: datetime
    ends_at: datetime
    reason: str
    created_by: str
    cancelled_at: datetime | None


@dataclass(frozen=True, slots=True)
class BackendState:
    """A backend's operating state at one instant."""

    backend: str
    paused: bool
    reason: str | None
    #: The window in force now, if any.
    maintenance: MaintenanceView | None
    #: The concurrency limit set for this backend; None: the deployment's default.
    max_running: int | None

    @property
    def accepting_starts(self) -> bool:
        return not self.paused and self.maintenance is None


def backend_states(
    connection: Connection, backends: Iterable[str], at: datetime
) -> dict[str, BackendState]:
    """The state of each of ``backends`` at ``at`` (a backend never paused
    and never limited has the default state)."""
    names = sorted(set(backends))
    stored = {
        row.backend: row
        for row in connection.execute(
            select(m.BACKEND_STATES).where(m.BACKEND_STATES.c.backend.in_(names))
        )
    }
    windows: dict[str, MaintenanceView] = {}
    for row in connection.execute(
        select(m.MAINTENANCE_WINDOWS)
        .where(
            m.MAINTENANCE_WINDOWS.c.backend.in_(names),
            m.MAINTENANCE_WINDOWS.c.ends_at > at,
            m.MAINTENANCE_WINDOWS.c.starts_at <= at,
            m.MAINTENANCE_WINDOWS.c.cancelled_at.is_(None),
        )
        .order_by(m.MAINTENANCE_WINDOWS.c.ends_at.desc())
    ):
        windows.setdefault(row.backend, _window(row))
    states: dict[str, BackendState] = {}
    for name in names:
        found = stored.get(name)
        states[name] = BackendState(
            backend=name,
            paused=bool(found.paused) if found else False,
            reason=found.reason if found else None,
            maintenance=windows.get(name),
            max_running=found.max_running if found else None,
        )
    return states


def lock_backend(connection: Connection, backend: str) -> None:
    """Hold ``backend``'s state row until the transaction ends (created if
    missing): on PostgreSQL, transactions that decide something about one
    backend (a reservation) take turns. SQLite's writer lock does it already."""
    table = m.BACKEND_STATES
    if connection.dialect.name == "postgresql":
        connection.execute(
            pg_insert(table).values(backend=backend, paused=False).on_conflict_do_nothing()
        )
        connection.execute(
            select(table.c.backend).where(table.c.backend == backend).with_for_update()
        )
        return
    if (
        connection.execute(select(table.c.backend).where(table.c.backend == backend)).first()
        is None
    ):
        connection.execute(insert(table).values(backend=backend, paused=False))


class BackendControl:
    """Pause, resume, maintenance windows and concurrency limits (platform admins)."""

    def __init__(
        self,
        db: Database,
        guard: Guard,
        known: Callable[[], Collection[str]],
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._db = db
        self._guard = guard
        self._known = known
        self._clock = clock
        self._on_change = on_change

    def _resource(self, backend: str) -> Resource:
        if backend not in self._known():
            raise not_found("backend", backend[:64])
        return Resource("backend", backend, None)

    def states(self, backends: Iterable[str]) -> dict[str, BackendState]:
        """For answers about backends (the caller was authorized already)."""
        with self._db.reading() as connection:
            return backend_states(connection, backends, self._clock.now())

    def state(self, backend: str) -> BackendState:
        return self.states([backend])[backend]

    @records_misses(Action.BACKEND_PAUSE)
    def pause(
        self, caller: Principal, request: RequestContext, backend: str, reason: str
    ) -> BackendState:
        """Start nothing more on ``backend`` (running jobs finish; new ones queue)."""
        resource = self._resource(backend)
        reason = checked_reason(reason)
        decision = self._guard.check(caller, Action.BACKEND_PAUSE, resource, request)
        self._set(caller, backend, Action.BACKEND_PAUSE, decision, request, reason, paused=True)
        return self.state(backend)

    @records_misses(Action.BACKEND_RESUME)
    def resume(self, caller: Principal, request: RequestContext, backend: str) -> BackendState:
        resource = self._resource(backend)
        decision = self._guard.check(caller, Action.BACKEND_RESUME, resource, request)
        self._set(caller, backend, Action.BACKEND_RESUME, decision, request, None, paused=False)
        self._on_change()
        return self.state(backend)

    @records_misses(Action.BACKEND_MAINTAIN)
    def set_concurrency(
        self, caller: Principal, request: RequestContext, backend: str, max_running: int | None
    ) -> BackendState:
        """At most ``max_running`` of ``backend``'s jobs run at once (None: the default)."""
        resource = self._resource(backend)
        if max_running is not None and not 1 <= max_running <= MAX_CONCURRENCY:
            raise InvalidRequest(
                f"max_running is {max_running}; it must be between 1 and {MAX_CONCURRENCY}, "
                "or null for the deployment's default (QUSTODY_BACKEND_CONCURRENCY).",
                field="max_running",
            )
        decision = self._guard.check(caller, Action.BACKEND_MAINTAIN, resource, request)
        with self._db.writing() as connection:
            lock_backend(connection, backend)
            connection.execute(
                update(m.BACKEND_STATES)
                .where(m.BACKEND_STATES.c.backend == backend)
                .values(max_running=max_running, updated_at=self._clock.now(), updated_by=caller.id)
            )
            record(
                connection,
                Action.BACKEND_MAINTAIN,
                actor=Actor.of(caller),
                target=Target("backend", backend),
                decision=decision,
                request=request,
                reason=f"max_running={'default' if max_running is None else max_running}",
            )
        self._on_change()
        return self.state(backend)

    def _set(
        self,
        caller: Principal,
        backend: str,
        action: Action,
        decision: Decision,
        request: RequestContext,
        reason: str | None,
        *,
        paused: bool,
    ) -> None:
        with self._db.writing() as connection:
            lock_backend(connection, backend)
            connection.execute(
                update(m.BACKEND_STATES)
                .where(m.BACKEND_STATES.c.backend == backend)
                .values(
                    paused=paused,
                    reason=reason,
                    updated_at=self._clock.now(),
                    updated_by=caller.id,
                )
            )
            record(
                connection,
                action,
                actor=Actor.of(caller),
                target=Target("backend", backend),
                decision=decision,
                request=request,
                reason=reason,
            )

    @records_misses(Action.BACKEND_MAINTAIN)
    def add_maintenance(
        self,
        caller: Principal,
        request: RequestContext,
        backend: str,
        *,
        starts_at: datetime,
        ends_at: datetime,
        reason: str,
    ) -> MaintenanceView:
        """Declare a window during which nothing starts on ``backend``."""
        resource = self._resource(backend)
        reason = checked_reason(reason)
        starts_at, ends_at = checked_window(starts_at, ends_at, self._clock.now(), MAX_MAINTENANCE)
        decision = self._guard.check(caller, Action.BACKEND_MAINTAIN, resource, request)
        now = self._clock.now()
        row = {
            "id": new_id("mnt"),
            "backend": backend,
            "starts_at": starts_at,
            "ends_at": ends_at,
            "reason": reason,
            "created_at": now,
            "created_by": caller.id,
            "cancelled_at": None,
        }
        with self._db.writing() as connection:
            connection.execute(insert(m.MAINTENANCE_WINDOWS), row)
            record(
                connection,
                Action.BACKEND_MAINTAIN,
                actor=Actor.of(caller),
                target=Target("backend", backend),
                decision=decision,
                request=request,
                reason=f"maintenance {row['id']} {starts_at.isoformat()}..{ends_at.isoformat()}",
            )
        return MaintenanceView(str(row["id"]), backend, starts_at, ends_at, reason, caller.id, None)

    @records_misses(Action.BACKEND_READ)
    def list_maintenance(
        self, caller: Principal, request: RequestContext, backend: str
    ) -> list[MaintenanceView]:
        """Windows not yet over (anyone who may read the backend may see them)."""
        resource = self._resource(backend)
        self._guard.check(caller, Action.BACKEND_READ, resource, request)
        with self._db.reading() as connection:
            rows = connection.execute(
                select(m.MAINTENANCE_WINDOWS)
                .where(
                    m.MAINTENANCE_WINDOWS.c.backend == backend,
                    m.MAINTENANCE_WINDOWS.c.ends_at > self._clock.now(),
                    m.MAINTENANCE_WINDOWS.c.cancelled_at.is_(None),
                )
                .order_by(m.MAINTENANCE_WINDOWS.c.starts_at)
            ).all()
        return [_window(r) for r in rows]

    @records_misses(Action.BACKEND_MAINTAIN)
    def cancel_maintenance(
        self, caller: Principal, request: RequestContext, backend: str, window_id: str
    ) -> MaintenanceView:
        resource = self._resource(backend)
        decision = self._guard.check(caller, Action.BACKEND_MAINTAIN, resource, request)
        if not looks_like_id(window_id):
            raise not_found("maintenance window", window_id[:64])
        now = self._clock.now()
        with self._db.writing() as connection:
            row = connection.execute(
                select(m.MAINTENANCE_WINDOWS).where(
                    m.MAINTENANCE_WINDOWS.c.id == window_id,
                    m.MAINTENANCE_WINDOWS.c.backend == backend,
                )
            ).first()
            if row is None:
                raise not_found("maintenance window", window_id)
            if row.cancelled_at is None:
                connection.execute(
                    update(m.MAINTENANCE_WINDOWS)
                    .where(m.MAINTENANCE_WINDOWS.c.id == window_id)
                    .values(cancelled_at=now)
                )
                record(
                    connection,
                    Action.BACKEND_MAINTAIN,
                    actor=Actor.of(caller),
                    target=Target("backend", backend),
                    decision=decision,
                    request=request,
                    reason=f"maintenance {window_id} cancelled",
                )
        self._on_change()
        view = _window(row)
        return MaintenanceView(
            view.id,
            view.backend,
            view.starts_at,
            view.ends_at,
            view.reason,
            view.created_by,
            view.cancelled_at or now,
        )


def _window(row: object) -> MaintenanceView:
    return MaintenanceView(
        id=row.id,  # type: ignore[attr-defined]
        backend=row.backend,  # type: ignore[attr-defined]
        starts_at=utc(row.starts_at),  # type: ignore[attr-defined]
        ends_at=utc(row.ends_at),  # type: ignore[attr-defined]
        reason=row.reason,  # type: ignore[attr-defined]
        created_by=row.created_by,  # type: ignore[attr-defined]
        cancelled_at=utc(row.cancelled_at),  # type: ignore[attr-defined]
    )


def checked_reason(reason: str) -> str:
    reason = reason.strip()
    if not reason or len(reason) > MAX_REASON:
        raise InvalidRequest(
            f"reason must be 1 to {MAX_REASON} characters; say why, for the people whose "
            "jobs will wait.",
            field="reason",
        )
    return reason


def checked_window(
    starts_at: datetime, ends_at: datetime, now: datetime, longest: timedelta
) -> tuple[datetime, datetime]:
    """A window's bounds as aware UTC times, checked: it ends after it
    starts, it is not over, and it lasts at most ``longest``."""
    for name, value in (("starts_at", starts_at), ("ends_at", ends_at)):
        if value.tzinfo is None:
            raise InvalidRequest(
                f"{name} has no time zone; give it as RFC 3339 with an offset "
                "(2026-01-05T09:00:00Z).",
                field=name,
            )
    if ends_at <= starts_at:
        raise InvalidRequest(
            f"ends_at ({ends_at.isoformat()}) is not after starts_at ({starts_at.isoformat()}); "
            "give an end later than the start.",
            field="ends_at",
        )
    if ends_at <= now:
        raise InvalidRequest(
            f"ends_at ({ends_at.isoformat()}) is already past; give a window in the future.",
            field="ends_at",
        )
    if ends_at - starts_at > longest:
        hours = longest.total_seconds() / 3600
        raise InvalidRequest(
            f"the window lasts {(ends_at - starts_at).total_seconds() / 3600:g} hours; "
            f"at most {hours:g} hours are allowed: split it or shorten it.",
            field="ends_at",
        )
    return starts_at, ends_at


#: The largest fair-queuing weight a tenant may be given.
MAX_WEIGHT = 1000


def set_share(db: Database, tenant_id: str, weight: int, *, actor: Actor) -> None:
    """Give ``tenant_id`` a fair-queuing ``weight`` (default 1): over a busy
    period its jobs start ``weight`` times as often as a weight-1 tenant's.
    An operator action (``qustody admin share``), recorded as ``queue:share``."""
    if not 1 <= weight <= MAX_WEIGHT:
        raise InvalidRequest(
            f"weight is {weight}; it must be between 1 and {MAX_WEIGHT} (1 is everyone's "
            "default share).",
            field="weight",
        )
    table = m.TENANT_SHARES
    with db.writing(scope=SYSTEM) as connection:
        if (
            connection.execute(select(m.TENANTS.c.id).where(m.TENANTS.c.id == tenant_id)).first()
            is None
        ):
            raise not_found("tenant", tenant_id[:64])
        changed = connection.execute(
            update(table).where(table.c.tenant_id == tenant_id).values(weight=weight)
        ).rowcount
        if not changed:
            connection.execute(
                insert(table).values(tenant_id=tenant_id, weight=weight, finish_tag=0.0)
            )
        record(
            connection,
            Action.QUEUE_SHARE,
            actor=actor,
            target=Target("tenant", tenant_id, tenant_id),
            reason=f"weight={weight}",
        )

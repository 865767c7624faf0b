"""Sessions: a hybrid loop's jobs under one principal, on one backend, for a
bounded time (as Qiskit Runtime sessions).

A principal opens a session on a backend with a maximum lifetime (at most
``QUSTODY_SESSION_MAX_TTL_SECONDS``) and gets a ``ses_`` id; jobs submitted
with ``session`` must be that principal's, for that backend, while the
session is open and unexpired (:class:`SessionCheck`, run in the
submission's transaction). Once one of its jobs has started, the session's
next jobs run ahead of the tenant's other queued jobs
(:mod:`qustody.jobs.scheduler`), so a loop's steps do not wait behind a
batch. A session ends when its owner (or a tenant admin) closes it, or when
its lifetime is over: :meth:`Sessions.expire_due` records the expiry (a
worker calls it as it keeps its leases), and a submission after the end is
refused (``session_expired``, ``session_closed``) whether or not the expiry
was recorded yet. Jobs accepted while the session was open still run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection
from datetime import datetime, timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from qustody.audit.recorder import Actor, Target, record
from qustody.domain.clock import SYSTEM_CLOCK, Clock
from qustody.domain.errors import Conflict, InvalidRequest
from qustody.domain.ids import PrincipalId, TenantId, looks_like_id, new_id
from qustody.domain.models import Principal, RequestContext, Resource
from qustody.domain.vocabulary import Action
from qustody.governance.admission import Admitted, Submission
from qustody.policy.guard import Guard, not_found
from qustody.policy.misses import records_misses
from qustody.storage import models as m
from qustody.storage.db import SYSTEM, Database, utc

_TABLE = m.JOB_SESSIONS
OPEN, CLOSED, EXPIRED = "open", "closed", "expired"


class SessionExpired(Conflict):
    code = "session_expired"
    title = "The session has expired"


class SessionClosed(Conflict):
    code = "session_closed"
    title = "The session is closed"


class SessionMismatch(InvalidRequest):
    code = "session_backend_mismatch"
    title = "The job's backend is not the session's"


@dataclasses.dataclass(frozen=True, slots=True)
class SessionView:
    id: str
    tenant_id: str
    principal_id: str
    backend: str
    state: str
    created_at: datetime
    expires_at: datetime
    started_at: datetime | None
    closed_at: datetime | None


class Sessions:
    def __init__(
        self,
        db: Database,
        guard: Guard,
        known: Callable[[], Collection[str]],
        *,
        max_ttl_seconds: int = 28800,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._db = db
        self._guard = guard
        self._known = known
        self.max_ttl_seconds = max_ttl_seconds
        self._clock = clock

    @records_misses(Action.SESSION_CREATE)
    def create(
        self,
        caller: Principal,
        request: RequestContext,
        *,
        backend: str,
        max_ttl_seconds: int | None = None,
    ) -> SessionView:
        if backend not in self._known():
            raise not_found("backend", backend[:64])
        ttl = self.max_ttl_seconds if max_ttl_seconds is None else max_ttl_seconds
        if not 1 <= ttl <= self.max_ttl_seconds:
            raise InvalidRequest(
                f"max_ttl_seconds is {ttl}; a session lives 1 to {self.max_ttl_seconds} "
                "seconds here (QUSTODY_SESSION_MAX_TTL_SECONDS): ask for less, or open a "
                "new session when this one ends.",
                field="max_ttl_seconds",
            )
        decision = self._guard.check(caller, Action.SESSION_CREATE, _owner(caller), request)
        now = self._clock.now()
        row = {
            "id": new_id("ses"),
            "tenant_id": caller.tenant_id,
            "principal_id": caller.id,
            "backend": backend,
            "state": OPEN,
            "created_at": now,
            "expires_at": now + timedelta(seconds=ttl),
            "started_at": None,
            "closed_at": None,
        }
        with self._db.writing() as connection:
            connection.execute(insert(_TABLE), row)
            record(
                connection,
                Action.SESSION_CREATE,
                actor=Actor.of(caller),
                target=Target("session", str(row["id"]), caller.tenant_id),
                decision=decision,
                request=request,
                reason=f"backend={backend} max_ttl_seconds={ttl}",
            )
        return _view(row)

    def _load(self, connection: Connection, caller: Principal, session_id: str) -> SessionView:
        if not looks_like_id(session_id):
            raise not_found("session", session_id[:64])
        row = connection.execute(
            select(_TABLE).where(_TABLE.c.id == session_id, _TABLE.c.tenant_id == caller.tenant_id)
        ).first()
        if row is None:
            raise not_found("session", session_id)
        return _view(row._mapping)

    @records_misses(Action.SESSION_READ)
    def get(self, caller: Principal, request: RequestContext, session_id: str) -> SessionView:
        with self._db.reading() as connection:
            found = self._load(connection, caller, session_id)
        self._guard.check(caller, Action.SESSION_READ, _owner_of(found), request)
        return self._as_of(found)

    def list(self, caller: Principal, request: RequestContext) -> list[SessionView]:
        """The caller's own sessions (a tenant admin's: every session of the tenant)."""
        admin = self._guard.decide(
            caller, Action.SESSION_READ, Resource("principal", "*", caller.tenant_id), request
        ).allowed
        self._guard.check(caller, Action.SESSION_READ, _owner(caller), request)
        query = select(_TABLE).where(_TABLE.c.tenant_id == caller.tenant_id)
        if not admin:
            query = query.where(_TABLE.c.principal_id == caller.id)
        with self._db.reading() as connection:
            rows = connection.execute(query.order_by(_TABLE.c.created_at.desc()).limit(200)).all()
        return [self._as_of(_view(r._mapping)) for r in rows]

    @records_misses(Action.SESSION_CLOSE)
    def close(self, caller: Principal, request: RequestContext, session_id: str) -> SessionView:
        with self._db.reading() as connection:
            found = self._load(connection, caller, session_id)
        decision = self._guard.check(caller, Action.SESSION_CLOSE, _owner_of(found), request)
        now = self._clock.now()
        with self._db.writing() as connection:
            changed = connection.execute(
                update(_TABLE)
                .where(_TABLE.c.id == found.id, _TABLE.c.state == OPEN)
                .values(state=CLOSED, closed_at=now)
            ).rowcount
            if changed:
                record(
                    connection,
                    Action.SESSION_CLOSE,
                    actor=Actor.of(caller),
                    target=Target("session", found.id, found.tenant_id),
                    decision=decision,
                    request=request,
                    reason=f"backend={found.backend}",
                )
            found = self._load(connection, caller, session_id)
        return self._as_of(found)

    def expire_due(self) -> int:
        """Record the expiry of every open session whose lifetime is over
        (background upkeep, in the system scope); returns how many."""
        now = self._clock.now()
        with self._db.writing(scope=SYSTEM) as connection:
            due = connection.execute(
                select(_TABLE.c.id, _TABLE.c.tenant_id, _TABLE.c.backend)
                .where(_TABLE.c.state == OPEN, _TABLE.c.expires_at <= now)
                .limit(500)
            ).all()
            for session_id, tenant_id, backend in due:
                connection.execute(
                    update(_TABLE)
                    .where(_TABLE.c.id == session_id, _TABLE.c.state == OPEN)
                    .values(state=EXPIRED, closed_at=now)
                )
                record(
                    connection,
                    Action.SESSION_EXPIRE,
                    actor=Actor.system("scheduler"),
                    target=Target("session", session_id, tenant_id),
                    reason=f"backend={backend} lifetime over",
                )
        return len(due)

    def _as_of(self, found: SessionView) -> SessionView:
        """As seen now: an open session past its lifetime reads as expired."""
        if found.state == OPEN and found.expires_at <= self._clock.now():
            return dataclasses.replace(found, state=EXPIRED)
        return found


class SessionCheck:
    """Admission: a job that names a session must be its owner's, for its
    backend, while it is open and unexpired."""

    def prepare(self, connection: Connection, submission: Submission, admitted: Admitted) -> bool:
        """Everything is checked here (a session closed concurrently: the job
        is ordered before the close); nothing to do under the write lock."""
        self.admit(connection, submission, admitted)
        return False

    def admit(self, connection: Connection, submission: Submission, admitted: Admitted) -> None:
        del admitted
        session_id = submission.session_id
        if session_id is None:
            return
        row = None
        if looks_like_id(session_id):
            row = connection.execute(
                select(_TABLE).where(
                    _TABLE.c.id == session_id, _TABLE.c.tenant_id == submission.tenant_id
                )
            ).first()
        # Another principal's session reads as missing: its id tells nothing.
        if row is None or row.principal_id != submission.caller.id:
            error = not_found("session", session_id[:64])
            error.field = "session"
            raise error
        if row.state == CLOSED:
            raise SessionClosed(
                f"session {session_id} was closed at {utc(row.closed_at).isoformat()}; open a "
                "new session (POST /v1/sessions) or submit without one.",
                field="session",
            )
        expires_at = utc(row.expires_at)
        if row.state == EXPIRED or expires_at <= submission.at:
            raise SessionExpired(
                f"session {session_id} expired at {expires_at.isoformat()} (its maximum "
                "lifetime); open a new session (POST /v1/sessions) or submit without one.",
                field="session",
            )
        if row.backend != submission.backend.name:
            raise SessionMismatch(
                f"session {session_id} is for backend {row.backend}, and this job is for "
                f"{submission.backend.name}; submit it to {row.backend} or open a session "
                f"for {submission.backend.name}.",
                field="backend",
            )


def _owner(caller: Principal) -> Resource:
    return Resource("principal", caller.id, TenantId(caller.tenant_id))


def _owner_of(found: SessionView) -> Resource:
    return Resource("principal", PrincipalId(found.principal_id), TenantId(found.tenant_id))


def _view(row: object) -> SessionView:
    values = dict(row)  # type: ignore[call-overload]
    return SessionView(
        id=values["id"],
        tenant_id=values["tenant_id"],
        principal_id=values["principal_id"],
        backend=values["backend"],
        state=values["state"],
        created_at=utc(values["created_at"]),
        expires_at=utc(values["expires_at"]),
        started_at=utc(values["started_at"]),
        closed_at=utc(values["closed_at"]),
    )

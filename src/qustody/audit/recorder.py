"""Writing audit events.

An event is written on the caller's session, inside the same transaction as
the state change it describes: both commit or neither does. Events carry
identifiers and SHA-256 digests, never payloads, secrets or tokens; the
types here have no field that could hold one.

The Merkle tree, signed checkpoints and exports build on this table later;
its rows are append-only (database triggers refuse UPDATE and DELETE).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Connection, bindparam, insert, update
from sqlalchemy.orm import Session

from qustody.domain.models import Decision, Principal, RequestContext
from qustody.domain.vocabulary import Action
from qustody.storage.db import before_commit
from qustody.storage.models import AUDIT_EVENTS, AUDIT_HEAD

Outcome = Literal["success", "failure", "denied"]

_INSERT_EVENTS = insert(AUDIT_EVENTS)
_PENDING = "audit.pending"
_ADVANCE_HEAD = (
    update(AUDIT_HEAD)
    .where(AUDIT_HEAD.c.id == 1)
    .values(size=AUDIT_HEAD.c.size + bindparam("n"))
    .returning(AUDIT_HEAD.c.size)
)

#: Where events are written: a session's transaction or a bare connection's.
Transaction = Session | Connection


def connection_of(transaction: Transaction) -> Connection:
    return transaction.connection() if isinstance(transaction, Session) else transaction


@dataclass(frozen=True, slots=True)
class Actor:
    """Who caused an event: a principal, or the system itself (a worker)."""

    id: str
    tenant_id: str | None = None
    auth_method: str | None = None
    token_id: str | None = None
    auth_strength: str | None = None

    @classmethod
    def of(cls, principal: Principal) -> Actor:
        return cls(
            principal.id,
            principal.tenant_id,
            principal.auth_method,
            principal.token_id,
            principal.auth_strength,
        )

    @classmethod
    def system(cls, name: str) -> Actor:
        return cls(name, None, "system", None, "system")


@dataclass(frozen=True, slots=True)
class Target:
    type: str
    id: str | None
    tenant_id: str | None = None


def event_row(
    event_type: Action,
    *,
    actor: Actor,
    outcome: Outcome = "success",
    target: Target | None = None,
    decision: Decision | None = None,
    request: RequestContext | None = None,
    job_id: str | None = None,
    approval_id: str | None = None,
    payload_sha256: str | None = None,
    reason: str | None = None,
    at: datetime | None = None,
) -> dict[str, object]:
    """The column values of one audit event (see :func:`record`)."""
    return {
        "at": at or datetime.now(UTC),
        "event_type": event_type.value,
        "tenant_id": target.tenant_id if target else actor.tenant_id,
        "actor_id": actor.id,
        "actor_tenant_id": actor.tenant_id,
        "auth_method": actor.auth_method,
        "auth_strength": actor.auth_strength,
        "token_id": actor.token_id,
        "client_addr": request.client_addr if request else None,
        "user_agent": (request.user_agent or "")[:256] or None if request else None,
        "resource_type": target.type if target else None,
        "resource_id": target.id if target else None,
        "decision": None if decision is None else ("allow" if decision.allowed else "deny"),
        # The column holds 512 characters; a tenant's own forbids may name more.
        "policy_ids": ",".join(decision.policy_ids)[:512] if decision else None,
        "outcome": outcome,
        "reason": reason[:512] if reason else None,
        "request_id": request.request_id if request else None,
        "job_id": job_id,
        "approval_id": approval_id,
        "payload_sha256": payload_sha256,
    }


def record_rows(transaction: Transaction, rows: list[dict[str, object]]) -> None:
    """Append events built by :func:`event_row`, in order, in ``transaction``.

    In a :meth:`~qustody.storage.db.Database.write`/``writing`` transaction the
    events are held and written as its last step, numbered then from the
    audit head (:func:`_append`): one counter update per transaction, and the
    head's row lock held only from there to the commit. Elsewhere (a
    migration, a test's own transaction) they are written at once.
    """
    if not rows:
        return
    connection = connection_of(transaction)
    hooks = before_commit(connection, _PENDING, _write_pending)
    if hooks is None:
        _append(connection, rows)
    else:
        hooks.state.setdefault(_PENDING, []).extend(rows)


def _write_pending(connection: Connection, state: dict[str, Any]) -> None:
    rows = state.pop(_PENDING, [])
    if rows:
        _append(connection, rows)


def _append(connection: Connection, rows: list[dict[str, object]]) -> None:
    """Number ``rows`` from the audit head and insert them.

    Advancing the head locks its row until the transaction ends (PostgreSQL;
    SQLite has one writer anyway), so numbers follow commit order and a
    rollback leaves no hole.
    """
    last = connection.execute(_ADVANCE_HEAD, {"n": len(rows)}).scalar_one()
    first = int(last) - len(rows) + 1
    # The table, not the mapped class: skips the ORM's bulk-insert path.
    connection.execute(_INSERT_EVENTS, [{**row, "seq": first + i} for i, row in enumerate(rows)])


def record(
    session: Transaction,
    event_type: Action,
    *,
    actor: Actor,
    outcome: Outcome = "success",
    target: Target | None = None,
    decision: Decision | None = None,
    request: RequestContext | None = None,
    job_id: str | None = None,
    approval_id: str | None = None,
    payload_sha256: str | None = None,
    reason: str | None = None,
    at: datetime | None = None,
) -> None:
    """Append one event in the session's transaction (``at``: when it
    happened, by the caller's clock; the system clock when omitted)."""
    record_rows(
        session,
        [
            event_row(
                event_type,
                actor=actor,
                outcome=outcome,
                target=target,
                decision=decision,
                request=request,
                job_id=job_id,
                approval_id=approval_id,
                payload_sha256=payload_sha256,
                reason=reason,
                at=at,
            )
        ],
    )

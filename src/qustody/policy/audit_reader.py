"""The audit log as a principal may read it: their tenant's events, with proofs.

Every read goes through the guard: ``audit:read`` and ``audit:export`` on the
caller's own tenant (tenant admins), ``audit:export`` of the whole log on the
platform (platform admins). The query itself is pinned to the caller's
tenant, so a missing filter cannot widen it; another tenant's event answers
exactly like a missing one. Each search, proof and export is recorded in the
log it reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select

from qustody.audit.export import WITH_LEAF, Record, event_record, export_records
from qustody.audit.log import AuditLog, StoredCheckpoint, proof_text
from qustody.audit.recorder import Actor, Target, record
from qustody.domain.errors import InvalidRequest
from qustody.domain.models import Decision, Principal, RequestContext, Resource
from qustody.domain.vocabulary import Action
from qustody.policy.guard import Guard, not_found
from qustody.policy.misses import records_misses
from qustody.storage.db import Database
from qustody.storage.models import AUDIT_EVENTS

MAX_PAGE = 500


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Filters of an event search; all optional, combined with AND."""

    actor: str | None = None
    action: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    job_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    decision: str | None = None
    outcome: str | None = None
    #: Return events after this seq (the previous page's ``next``).
    after: int = 0
    limit: int = 100


@dataclass(frozen=True, slots=True)
class EventPage:
    """Events (export-shaped records, each with its inclusion proof when the
    checkpoint covers it) and the checkpoint the proofs lead to."""

    checkpoint: StoredCheckpoint | None
    events: list[Record]
    next_after: int | None


class AuditReader:
    def __init__(self, db: Database, guard: Guard, log: AuditLog) -> None:
        self._db = db
        self._guard = guard
        self._log = log

    def search(self, caller: Principal, request: RequestContext, query: EventQuery) -> EventPage:
        """The caller's tenant's events matching ``query``, oldest first, with proofs."""
        decision = self._guard.check(caller, Action.AUDIT_READ, _own_tenant(caller), request)
        if not 1 <= query.limit <= MAX_PAGE:
            raise InvalidRequest(
                f"limit is {query.limit}; it must be between 1 and {MAX_PAGE}. Page with "
                "after=<the previous page's next>.",
                field="limit",
            )
        checkpoint = self._log.latest_checkpoint()
        conditions = [AUDIT_EVENTS.c.tenant_id == caller.tenant_id]
        for column, value in (
            (AUDIT_EVENTS.c.actor_id, query.actor),
            (AUDIT_EVENTS.c.event_type, query.action),
            (AUDIT_EVENTS.c.resource_type, query.resource_type),
            (AUDIT_EVENTS.c.resource_id, query.resource_id),
            (AUDIT_EVENTS.c.job_id, query.job_id),
            (AUDIT_EVENTS.c.decision, query.decision),
            (AUDIT_EVENTS.c.outcome, query.outcome),
        ):
            if value is not None:
                conditions.append(column == value)
        if query.since is not None:
            conditions.append(AUDIT_EVENTS.c.at >= query.since)
        if query.until is not None:
            conditions.append(AUDIT_EVENTS.c.at < query.until)
        found = self._rows(
            WITH_LEAF.where(AUDIT_EVENTS.c.seq > query.after, *conditions)
            .order_by(AUDIT_EVENTS.c.seq)
            .limit(query.limit)
        )
        events = self._with_proofs(found, checkpoint)
        self._record(caller, request, decision, f"events={len(events)}")
        more = len(found) == query.limit
        return EventPage(checkpoint, events, found[-1].seq if more else None)

    @records_misses(Action.AUDIT_READ)
    def event(
        self, caller: Principal, request: RequestContext, seq: int, size: int | None
    ) -> tuple[Record, StoredCheckpoint]:
        """One of the caller's tenant's events with its inclusion proof in the
        tree of checkpoint ``size`` (default: the latest)."""
        decision = self._guard.check(caller, Action.AUDIT_READ, _own_tenant(caller), request)
        checkpoint = (
            self._log.latest_checkpoint() if size is None else self._log.checkpoint_at(size)
        )
        if checkpoint is None:
            raise not_found("checkpoint", str(size) if size is not None else "latest")
        rows = self._rows(
            WITH_LEAF.where(AUDIT_EVENTS.c.seq == seq, AUDIT_EVENTS.c.tenant_id == caller.tenant_id)
        )
        events = self._with_proofs(rows, checkpoint)
        if not events:
            raise not_found("audit event", str(seq))
        if "proof" not in events[0]:
            raise InvalidRequest(
                f"event {seq} is not in the tree of checkpoint {checkpoint.size} yet; ask "
                "again with a later checkpoint (one is signed every few seconds).",
                field="size",
            )
        self._record(caller, request, decision, f"proof seq={seq}")
        return events[0], checkpoint

    def issue_checkpoint(self, caller: Principal, request: RequestContext) -> str:
        """Sign a checkpoint now if the log grew (platform admins); the latest note."""
        decision = self._guard.check(
            caller, Action.AUDIT_CHECKPOINT, Resource("platform", "platform", None), request
        )
        self._record(caller, request, decision, "on demand")
        latest = self._log.checkpoint()
        if latest is None:
            raise not_found("checkpoint", "latest")
        return latest.note

    def export(
        self, caller: Principal, request: RequestContext, *, whole_log: bool
    ) -> Iterator[Record]:
        """An export for ``qustody audit verify``: the whole log (platform
        admins) or the caller's tenant's events with proofs."""
        target = Resource("platform", "platform", None) if whole_log else _own_tenant(caller)
        decision = self._guard.check(caller, Action.AUDIT_EXPORT, target, request)
        self._record(caller, request, decision, f"scope={target.type}")
        return export_records(
            self._db, self._log, tenant_id=None if whole_log else caller.tenant_id
        )

    def _rows(self, query: Select[Any]) -> list[Any]:
        with self._db.reading() as connection:
            return list(connection.execute(query).all())

    def _with_proofs(self, rows: list[Any], checkpoint: StoredCheckpoint | None) -> list[Record]:
        covered = [row.seq for row in rows if checkpoint and row.seq <= checkpoint.size]
        proofs = self._log.inclusion_proofs(covered, checkpoint.size) if checkpoint else {}
        records = []
        for row in rows:
            item = event_record(row)
            if row.seq in proofs and checkpoint is not None:
                item["proof"] = {"size": checkpoint.size, "path": proof_text(proofs[row.seq])}
            records.append(item)
        return records

    def _record(
        self, caller: Principal, request: RequestContext, decision: Decision, reason: str
    ) -> None:
        with self._db.writing() as connection:
            record(
                connection,
                decision.action,
                actor=Actor.of(caller),
                target=Target("audit", None, caller.tenant_id),
                decision=decision,
                request=request,
                reason=reason,
            )


def _own_tenant(caller: Principal) -> Resource:
    return Resource("tenant", caller.tenant_id, caller.tenant_id)

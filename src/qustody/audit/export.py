"""Exports of the audit log that an auditor verifies offline (``qustody audit verify``).

An export is JSON Lines, one record per line, each with a ``type``:

- ``log``: the first line: format, origin, the log's verifier key (for
  reference only: a verifier must get the key from somewhere it trusts), and
  the scope (``platform``: every event; ``tenant``: one tenant's events).
- ``event``: an event's fields (exactly those its canonical encoding covers)
  and ``leaf``, the leaf hash the log's tree recorded for it when it was
  integrated (base64). In a tenant export each event also carries ``proof``:
  its inclusion proof in the tree of the export's checkpoint.
- ``checkpoint``: a signed checkpoint note. A platform export carries every
  checkpoint, each right after the event it ends with; a tenant export its
  one checkpoint right after the header, before the events it proves. Either
  way the verifier reads the export once, front to back.

A platform export lists events ``1..n`` with no gaps, so the verifier can
rebuild the whole tree; a tenant export cannot (other tenants' events are
left out), so it relies on the inclusion proofs instead.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

from sqlalchemy import and_, select

from qustody.audit.events import FIELDS, FORMAT, utc_text
from qustody.audit.log import AuditLog, StoredCheckpoint, proof_text
from qustody.storage.db import SYSTEM, Database, tenant
from qustody.storage.models import AUDIT_EVENTS, AUDIT_TREE

EXPORT_FORMAT = "qustody-audit-export/1"
#: Events read per query while exporting.
_PAGE = 2000

Record = dict[str, Any]

_EVENT_COLUMNS = [AUDIT_EVENTS.c[name] for name in FIELDS]
#: Events with the leaf hash the tree recorded for each (``hash``; NULL until integrated).
WITH_LEAF = select(*_EVENT_COLUMNS, AUDIT_TREE.c.hash).outerjoin(
    AUDIT_TREE, and_(AUDIT_TREE.c.level == 0, AUDIT_TREE.c.idx == AUDIT_EVENTS.c.seq - 1)
)


def event_record(row: Any) -> Record:
    """An ``event`` record from a row of events joined with their stored leaves."""
    event: dict[str, object] = {"v": FORMAT}
    for name in FIELDS:
        value = getattr(row, name)
        event[name] = utc_text(value) if name == "at" else value
    leaf = row.hash
    return {
        "type": "event",
        "event": event,
        "leaf": base64.b64encode(bytes(leaf)).decode() if leaf is not None else None,
    }


def events_with_leaves(
    db: Database, *, tenant_id: str | None, upto: int, after: int = 0
) -> Iterator[Any]:
    """Stored events ``after < seq <= upto`` with their recorded leaves, by seq, page by page."""
    while True:
        query = WITH_LEAF.where(AUDIT_EVENTS.c.seq > after, AUDIT_EVENTS.c.seq <= upto)
        if tenant_id is not None:
            query = query.where(AUDIT_EVENTS.c.tenant_id == tenant_id)
        # The whole log spans every tenant (and the platform's own events).
        with db.reading(scope=SYSTEM if tenant_id is None else tenant(tenant_id)) as connection:
            rows = connection.execute(query.order_by(AUDIT_EVENTS.c.seq).limit(_PAGE)).all()
        yield from rows
        if len(rows) < _PAGE:
            return
        after = rows[-1].seq


def export_records(
    db: Database, log: AuditLog, *, tenant_id: str | None = None
) -> Iterator[Record]:
    """The export of the whole log, or of ``tenant_id``'s events, up to a fresh checkpoint.

    Signs a checkpoint first when this process holds the log key, so the
    export covers everything recorded until now.
    """
    latest = log.checkpoint()
    verifier = log.verifier
    yield {
        "type": "log",
        "format": EXPORT_FORMAT,
        "origin": log.origin,
        "verifier_key": verifier.encode() if verifier else None,
        "scope": "platform" if tenant_id is None else "tenant",
        "tenant_id": tenant_id,
        "size": latest.size if latest else 0,
    }
    if latest is None:
        return
    if tenant_id is None:
        yield from _platform_records(db, log, latest)
    else:
        yield from _tenant_records(db, log, latest, tenant_id)


def _platform_records(db: Database, log: AuditLog, latest: StoredCheckpoint) -> Iterator[Record]:
    checkpoints = iter(log.checkpoints())
    pending = next(checkpoints, None)
    for row in events_with_leaves(db, tenant_id=None, upto=latest.size):
        yield event_record(row)
        while pending is not None and pending.size <= row.seq:
            yield checkpoint_record(pending)
            pending = next(checkpoints, None)
    while pending is not None and pending.size <= latest.size:
        # Only if events were deleted: the checkpoints still say what was signed.
        yield checkpoint_record(pending)
        pending = next(checkpoints, None)


def _tenant_records(
    db: Database, log: AuditLog, latest: StoredCheckpoint, tenant_id: str
) -> Iterator[Record]:
    yield checkpoint_record(latest)
    page: list[Any] = []

    def flush() -> Iterator[Record]:
        proofs = log.inclusion_proofs([row.seq for row in page], latest.size)
        for row in page:
            record = event_record(row)
            record["proof"] = {"size": latest.size, "path": proof_text(proofs[row.seq])}
            yield record
        page.clear()

    for row in events_with_leaves(db, tenant_id=tenant_id, upto=latest.size):
        page.append(row)
        if len(page) == 200:
            yield from flush()
    yield from flush()


def checkpoint_record(checkpoint: StoredCheckpoint) -> Record:
    return {"type": "checkpoint", "note": checkpoint.note}

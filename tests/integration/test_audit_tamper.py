"""Someone with full database access (triggers dropped) rewrites the audit log;
``verify`` must notice every kind of rewrite and say where it happened."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from qustody.audit.export import export_records
from qustody.audit.log import AuditLog
from qustody.audit.note import Signer, sign
from qustody.audit.recorder import Actor, Target, event_row, record_rows
from qustody.audit.verify import Report, verify_export
from qustody.domain.vocabulary import Action
from qustody.storage.db import Database

ORIGIN = "gateway.example/audit"
EVENTS = 30  # events recorded before the tampering; checkpoints at 10, 20 and 30


def _record(db: Database, count: int, start: int) -> None:
    rows = [
        event_row(
            Action.JOB_SUBMIT,
            actor=Actor(f"prn_{i % 3}", "ten_a", "qustody-token", f"jti-{i}", "aal1"),
            target=Target("job", f"job_{i}", "ten_a"),
            job_id=f"job_{i}",
            payload_sha256=f"{i:064x}",
            reason=f"backend=aer shots={100 + i}",
        )
        for i in range(start, start + count)
    ]
    with db.writing() as connection:
        record_rows(connection, rows)


@pytest.fixture
def signer() -> Signer:
    return Signer.generate(ORIGIN)


@pytest.fixture
def log(db: Database, signer: Signer) -> AuditLog:
    log = AuditLog(db, signer)
    for start in range(0, EVENTS, 10):
        _record(db, 10, start)
        log.checkpoint()
    return log


def _export(db: Database, log: AuditLog, tenant: str | None = None) -> list[str]:
    return [json.dumps(r) for r in export_records(db, log, tenant_id=tenant)]


def _verify(db: Database, log: AuditLog, signer: Signer, **kwargs: object) -> Report:
    return verify_export(_export(db, log), signer.verifier, **kwargs)  # type: ignore[arg-type]


_TRIGGERS = {
    "audit_events": ("audit_events_no_update", "audit_events_no_delete"),
    "audit_tree": ("audit_tree_no_update", "audit_tree_no_delete"),
    "audit_checkpoints": ("audit_checkpoints_no_update", "audit_checkpoints_no_delete"),
    "audit_head": ("audit_head_grows_update", "audit_head_grows_delete"),
    "audit_tree_head": ("audit_tree_head_grows_update", "audit_tree_head_grows_delete"),
}


def _tamper(db: Database, *statements: str) -> None:
    """Run ``statements`` as an intruder would: every audit trigger dropped first."""
    with db.engine.begin() as connection:
        for table, triggers in _TRIGGERS.items():
            for trigger in triggers:
                on = "" if db.is_sqlite else f" ON {table}"
                connection.execute(text(f"DROP TRIGGER IF EXISTS {trigger}{on}"))
        for statement in statements:
            connection.execute(text(statement))


def _first(report: Report) -> tuple[str, int | None]:
    assert not report.ok
    assert report.first is not None
    return report.first.kind, report.first.seq


def test_an_untouched_log_verifies(db: Database, log: AuditLog, signer: Signer) -> None:
    report = _verify(db, log, signer)
    assert report.ok, report.problems
    assert (report.events, report.checkpoints, report.verified_size) == (EVENTS, 3, EVENTS)


@pytest.mark.parametrize(
    ("column", "value"),
    [("reason", "'backend=aer shots=101'"), ("actor_id", "'prn_9'"), ("outcome", "'failure'")],
)
def test_one_changed_field_is_located(
    db: Database, log: AuditLog, signer: Signer, column: str, value: str
) -> None:
    _tamper(db, f"UPDATE audit_events SET {column} = {value} WHERE seq = 14")  # noqa: S608
    assert _first(_verify(db, log, signer)) == ("altered", 14)


def test_one_changed_byte_is_located(db: Database, log: AuditLog, signer: Signer) -> None:
    # A single character of the payload digest: "...00e" becomes "...00f".
    _tamper(
        db,
        "UPDATE audit_events SET payload_sha256 = REPLACE(payload_sha256, 'e', 'f') WHERE seq = 15",
    )
    assert _first(_verify(db, log, signer)) == ("altered", 15)


def test_a_deleted_row_is_located(db: Database, log: AuditLog, signer: Signer) -> None:
    _tamper(db, "DELETE FROM audit_events WHERE seq = 7")
    report = _verify(db, log, signer)
    assert _first(report) == ("sequence", 8)
    assert "event 7 was expected" in report.first.message  # type: ignore[union-attr]


def test_a_deleted_and_renumbered_row_is_located(
    db: Database, log: AuditLog, signer: Signer
) -> None:
    _tamper(
        db,
        "DELETE FROM audit_events WHERE seq = 7",
        "UPDATE audit_events SET seq = seq - 1 WHERE seq > 7",
    )
    assert _first(_verify(db, log, signer)) == ("altered", 7)


def test_an_inserted_row_is_located(db: Database, log: AuditLog, signer: Signer) -> None:
    # Make room after event 11 and slip a forged event in as number 12.
    _tamper(
        db,
        "UPDATE audit_events SET seq = seq + 1000 WHERE seq > 11",
        "UPDATE audit_events SET seq = seq - 999 WHERE seq > 1000",
        "INSERT INTO audit_events (seq, at, event_type, outcome, actor_id) "
        "SELECT 12, at, 'job:cancel', 'success', 'prn_0' FROM audit_events WHERE seq = 11",
    )
    assert _first(_verify(db, log, signer)) == ("altered", 12)


def test_two_swapped_rows_are_located(db: Database, log: AuditLog, signer: Signer) -> None:
    _tamper(
        db,
        "UPDATE audit_events SET seq = -1 WHERE seq = 22",
        "UPDATE audit_events SET seq = 22 WHERE seq = 25",
        "UPDATE audit_events SET seq = 25 WHERE seq = -1",
    )
    # Each event's seq is part of what its leaf commits to: 22 no longer fits.
    assert _first(_verify(db, log, signer)) == ("altered", 22)


def test_a_truncated_tail_is_detected(db: Database, log: AuditLog, signer: Signer) -> None:
    _tamper(db, "DELETE FROM audit_events WHERE seq > 26")
    report = _verify(db, log, signer)
    assert _first(report) == ("truncated", 27)
    assert "events 27..30 are missing" in report.first.message  # type: ignore[union-attr]


def test_a_truncated_tail_with_its_checkpoint_is_caught_by_a_held_checkpoint(
    db: Database, log: AuditLog, signer: Signer
) -> None:
    held = log.latest_checkpoint()
    assert held is not None
    assert held.size == EVENTS
    _tamper(
        db,
        "DELETE FROM audit_events WHERE seq > 26",
        "DELETE FROM audit_checkpoints WHERE size > 20",
    )
    report = _verify(db, log, signer, held=[held.note])
    assert not report.ok
    assert any(p.kind == "truncated" for p in report.problems)


def test_the_tree_rewritten_too_is_located_between_checkpoints(
    db: Database, log: AuditLog, signer: Signer
) -> None:
    # The intruder also fixes up the recorded leaf: only the signed roots remain.
    _tamper(
        db,
        "UPDATE audit_events SET reason = 'nothing to see' WHERE seq = 17",
        "UPDATE audit_tree SET hash = X'00' WHERE level = 0 AND idx = 16"
        if db.is_sqlite
        else "UPDATE audit_tree SET hash = '\\x00'::bytea WHERE level = 0 AND idx = 16",
    )
    report = _verify(db, log, signer)
    assert _first(report) == ("rewritten", 11)
    assert "between event 11 and event 20" in report.first.message  # type: ignore[union-attr]


def test_a_fork_after_a_checkpoint_is_caught(db: Database, log: AuditLog, signer: Signer) -> None:
    """An intruder holding the key rewrites history after checkpoint 20, rebuilds
    the tree and re-signs checkpoint 30; a checkpoint a witness kept disagrees."""
    witnessed = log.latest_checkpoint()
    assert witnessed is not None
    _tamper(
        db,
        "DELETE FROM audit_events WHERE seq > 20",
        "DELETE FROM audit_tree",
        "UPDATE audit_tree_head SET size = 0",
        "UPDATE audit_head SET size = 20",
        "DELETE FROM audit_checkpoints WHERE size > 20",
    )
    _record(db, 10, start=500)  # a different history for events 21..30
    forged = log.checkpoint()
    assert forged is not None
    assert forged.size == EVENTS
    assert forged.root != witnessed.root
    # The export alone is self-consistent (the intruder signed it) ...
    assert _verify(db, log, signer).ok
    # ... but not with what the witness holds.
    report = _verify(db, log, signer, held=[witnessed.note])
    kinds = [p.kind for p in report.problems]
    assert kinds == ["rewritten", "fork"]
    rewritten = next(p for p in report.problems if p.kind == "rewritten")
    assert "between event 21 and event 30" in rewritten.message


def test_a_forged_checkpoint_signature_is_refused(
    db: Database, log: AuditLog, signer: Signer
) -> None:
    lines = _export(db, log)
    intruder = Signer.generate(ORIGIN)  # same name, different key
    forged = json.loads(lines[-1])
    forged["note"] = sign(forged["note"].split("\n\n")[0] + "\n", intruder)
    report = verify_export([*lines[:-1], json.dumps(forged)], signer.verifier)
    assert _first(report)[0] == "signature"


def test_a_tenant_export_verifies_by_inclusion_proofs(
    db: Database, log: AuditLog, signer: Signer
) -> None:
    _record_other_tenant(db)
    lines = _export(db, log, tenant="ten_b")
    report = verify_export(lines, signer.verifier)
    assert report.ok, report.problems
    assert (report.scope, report.events) == ("tenant", 3)
    # An event of the tenant changed after the fact no longer proves in.
    _tamper(db, "UPDATE audit_events SET outcome = 'failure' WHERE seq = 32")
    assert _first(verify_export(_export(db, log, tenant="ten_b"), signer.verifier)) == (
        "altered",
        32,
    )


def _record_other_tenant(db: Database) -> None:
    rows = [
        event_row(
            Action.JOB_SUBMIT, actor=Actor("prn_b", "ten_b"), target=Target("job", f"j{i}", "ten_b")
        )
        for i in range(3)
    ]
    with db.writing() as connection:
        record_rows(connection, rows)


def test_the_export_is_read_once_front_to_back(db: Database, log: AuditLog, signer: Signer) -> None:
    lines = _export(db, log)
    assert verify_export(iter(lines), signer.verifier).ok  # a one-pass stream suffices
    checkpoint = next(i for i, line in enumerate(lines) if '"type": "checkpoint"' in line)
    moved = [*lines[:checkpoint], *lines[checkpoint + 1 :], lines[checkpoint]]
    report = verify_export(moved, signer.verifier)
    assert _first(report)[0] == "format"
    assert "right after the event it ends with" in report.first.message  # type: ignore[union-attr]

"""The stored Merkle tree over audit events: the integrator, signed checkpoints
and proofs, checked against the in-memory tree and the RFC 9162 verifiers."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.exc import DBAPIError

from qustody.audit.events import event_leaf_hash
from qustody.audit.log import AuditLog, AuditLogError, load_log_signer
from qustody.audit.merkle import MerkleTree, verify_consistency, verify_inclusion
from qustody.audit.note import Checkpoint, Signer, open_note
from qustody.audit.recorder import Actor, event_row, record_rows
from qustody.domain.errors import ConfigurationError, InvalidRequest
from qustody.domain.vocabulary import Action
from qustody.storage import models as m
from qustody.storage.db import Database

ORIGIN = "gateway.example/audit"


def _record(db: Database, count: int, label: str = "e") -> None:
    rows = [
        event_row(Action.AUTH_FAIL, actor=Actor("t"), reason=f"{label}{i}") for i in range(count)
    ]
    with db.writing() as connection:
        record_rows(connection, rows)


def _reference(db: Database) -> MerkleTree:
    with db.reading() as connection:
        rows = connection.execute(select(m.AUDIT_EVENTS).order_by(m.AUDIT_EVENTS.c.seq)).all()
    return MerkleTree([event_leaf_hash(row._mapping) for row in rows])


@pytest.fixture
def signer() -> Signer:
    return Signer.generate(ORIGIN)


def test_the_stored_tree_matches_the_in_memory_one(db: Database, signer: Signer) -> None:
    log = AuditLog(db, signer, batch=4)  # small batches: many frontiers loaded and extended
    assert log.integrate() == 0
    for count in (1, 2, 5, 8, 1, 13):
        _record(db, count)
        log.integrate()
    reference = _reference(db)
    size = reference.size
    assert log.tree_size() == size == 30
    for n in range(size + 1):
        assert log.root(n) == reference.root(n)
    proofs = log.inclusion_proofs(list(range(1, size + 1)), size)
    for seq, path in proofs.items():
        assert path == reference.inclusion_proof(seq - 1, size)
        verify_inclusion(seq - 1, size, reference.subtree(seq - 1, seq), path, reference.root())
    for old in range(size + 1):
        for new in (old, size, min(size, old + 7)):
            path = log.consistency_proof(old, new)
            assert path == reference.consistency_proof(old, new)
            verify_consistency(old, new, reference.root(old), reference.root(new), path)


def test_checkpoints_are_signed_when_the_tree_grew(db: Database, signer: Signer) -> None:
    log = AuditLog(db, signer)
    assert log.checkpoint() is None  # an empty log has nothing to sign
    _record(db, 3)
    first = log.checkpoint()
    assert first is not None
    assert log.checkpoint() == first  # no growth, no new checkpoint
    _record(db, 4)
    second = log.checkpoint()
    assert second is not None
    assert (first.size, second.size) == (3, 7)
    text_, verified = open_note(second.note, signer.verifier)
    assert verified == [signer.verifier]
    checkpoint = Checkpoint.parse(text_)
    assert (checkpoint.origin, checkpoint.size, checkpoint.root_hash) == (
        ORIGIN,
        7,
        _reference(db).root(),
    )
    assert [c.size for c in log.checkpoints()] == [3, 7]
    assert log.checkpoint_at(3) == first
    verify_consistency(3, 7, first.root, second.root, log.consistency_proof(3, 7))


def test_a_reader_without_the_key_signs_nothing(db: Database) -> None:
    _record(db, 2)
    assert AuditLog(db).checkpoint() is None
    assert AuditLog(db).tree_size() == 2  # it still integrates


def test_proofs_refuse_sizes_beyond_the_tree(db: Database, signer: Signer) -> None:
    log = AuditLog(db, signer)
    _record(db, 3)
    log.integrate()
    _record(db, 2)  # not integrated yet
    with pytest.raises(InvalidRequest, match="size=5 is beyond it"):
        log.inclusion_proofs([1], 5)
    with pytest.raises(InvalidRequest, match="event 4 is not in a tree of 3"):
        log.inclusion_proofs([4], 3)
    with pytest.raises(InvalidRequest, match="from=3 and to=2"):
        log.consistency_proof(3, 2)


def test_the_integrator_stops_at_a_gap(db: Database, signer: Signer) -> None:
    _record(db, 2)
    with db.writing() as connection:  # bypasses the head: event 3 never exists
        row = event_row(Action.AUTH_FAIL, actor=Actor("t"), reason="orphan")
        connection.execute(insert(m.AUDIT_EVENTS), {**row, "seq": 4})
    log = AuditLog(db, signer)
    with pytest.raises(AuditLogError, match="audit event 3 is missing"):
        log.integrate()
    assert log.tree_size() == 0  # the batch rolled back as a whole


@pytest.mark.parametrize(
    ("table", "column"), [("audit_tree", "level"), ("audit_checkpoints", "size")]
)
def test_tree_and_checkpoints_are_append_only(
    db: Database, signer: Signer, table: str, column: str
) -> None:
    _record(db, 2)
    AuditLog(db, signer).checkpoint()
    rewrites = (f"UPDATE {table} SET {column} = {column}", f"DELETE FROM {table}")  # noqa: S608
    for statement in rewrites:
        with pytest.raises(DBAPIError, match="append-only"), db.writing() as connection:
            connection.execute(text(statement))
    with pytest.raises(DBAPIError, match="only grows"), db.writing() as connection:
        connection.execute(text("UPDATE audit_tree_head SET size = 0"))


def test_concurrent_integrators_and_writers_agree(db: Database, signer: Signer) -> None:
    logs = [AuditLog(db, signer, batch=5) for _ in range(2)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def integrate(log: AuditLog) -> None:
        try:
            while not stop.is_set():
                log.checkpoint()
        except BaseException as exc:  # noqa: BLE001 (reported by the test below)
            errors.append(exc)

    threads = [threading.Thread(target=integrate, args=(log,)) for log in logs]
    for thread in threads:
        thread.start()
    for batch in range(40):
        _record(db, 1 + batch % 4, label=f"b{batch}-")
    stop.set()
    for thread in threads:
        thread.join(60)
    assert not errors
    final = logs[0].checkpoint()
    reference = _reference(db)
    assert final is not None
    assert (final.size, final.root) == (reference.size, reference.root())
    for checkpoint in logs[0].checkpoints():  # every one ever signed fits the final tree
        assert checkpoint.root == reference.root(checkpoint.size)


def test_the_signing_key_file(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "log.key"
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_log_signer(path, ORIGIN, create=False)
    made = load_log_signer(path, ORIGIN, create=True)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_log_signer(path, None, create=False).verifier == made.verifier
    assert load_log_signer(path, None, create=True, new_origin="other/audit").name == ORIGIN
    with pytest.raises(ConfigurationError, match="origin cannot change"):
        load_log_signer(path, "elsewhere.example/audit", create=False)
    path.chmod(0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        load_log_signer(path, ORIGIN, create=False)

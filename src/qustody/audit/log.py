"""The audit log as a verifiable log: a Merkle tree stored beside the events,
and signed checkpoints over it.

- The *integrator* (:meth:`AuditLog.integrate`) reads events the tree does
  not cover yet, in sequence order, hashes each one's canonical encoding into
  a leaf (event ``seq`` is leaf ``seq - 1``) and stores every complete
  subtree the new leaves finish. Recording an event stays one insert; the
  hashing happens beside the request path, a few milliseconds later.
- A *checkpoint* (:meth:`AuditLog.checkpoint`) is the C2SP tlog-checkpoint
  note ``origin / size / root``, signed with the log's Ed25519 key. One is
  issued whenever the tree has grown since the last (every few seconds, by the
  worker) and on demand. Checkpoints are kept, append-only.
- Proofs (:meth:`AuditLog.inclusion_proofs`, :meth:`AuditLog.consistency_proof`)
  are built from the stored nodes with O(log n) lookups, fetched in one query.

Whoever holds a checkpoint and the public key can check any proof offline;
someone who rewrites an event after it was checkpointed cannot make its proof
(or any later checkpoint) agree with what was signed.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, bindparam, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError

from qustody.audit.events import EventFields, as_utc, event_leaf_hash
from qustody.audit.merkle import (
    HASH_SIZE,
    Frontier,
    Node,
    ProofError,
    consistency_path,
    inclusion_path,
    subtree_hash,
)
from qustody.audit.note import Checkpoint, Signer, Verifier, sign
from qustody.crypto.files import check_private, create_private
from qustody.domain.errors import ConfigurationError, InvalidRequest
from qustody.domain.periodic import Periodic
from qustody.storage.db import SYSTEM, Database
from qustody.storage.models import (
    AUDIT_CHECKPOINTS,
    AUDIT_EVENTS,
    AUDIT_TREE,
    AUDIT_TREE_HEAD,
)

T = TypeVar("T")
logger = logging.getLogger("qustody.audit")

#: Events hashed into the tree per transaction.
INTEGRATE_BATCH = 1000
#: Node indexes per lookup (SQLite binds at most a few thousand parameters).
_LOOKUP_CHUNK = 400

_TREE_SIZE = select(AUDIT_TREE_HEAD.c.size).where(AUDIT_TREE_HEAD.c.id == 1)
_INSERT_NODES = insert(AUDIT_TREE)
# PostgreSQL looks up ``(level, idx) IN (...)`` on the primary key in one
# round trip; SQLite scans the table for a row-value IN, so there it is one
# level at a time, ``level = ? AND idx IN (...)``. Each shape compiles once.
_NODES_BY_KEY = select(AUDIT_TREE.c.level, AUDIT_TREE.c.idx, AUDIT_TREE.c.hash).where(
    tuple_(AUDIT_TREE.c.level, AUDIT_TREE.c.idx).in_(bindparam("keys", expanding=True))
)
_NODES = select(AUDIT_TREE.c.idx, AUDIT_TREE.c.hash).where(
    AUDIT_TREE.c.level == bindparam("level"),
    AUDIT_TREE.c.idx.in_(bindparam("indexes", expanding=True)),
)
_INSERT_CHECKPOINT = insert(AUDIT_CHECKPOINTS)


class AuditLogError(RuntimeError):
    """The stored log is not what the integrator can extend: a gap or a rewritten node."""


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    size: int
    root: bytes
    note: str
    issued_at: datetime

    @classmethod
    def of(cls, row: Sequence[Any]) -> StoredCheckpoint:
        return cls(int(row[0]), bytes(row[1]), row[2], as_utc(row[3]))


def default_origin(public_url: str) -> str:
    """The log's origin for a gateway at ``public_url``: its host and path, plus ``/audit``."""
    bare = public_url.split("://", 1)[-1].rstrip("/")
    return f"{bare}/audit"


def load_log_signer(
    path: Path, origin: str | None, *, create: bool, new_origin: str | None = None
) -> Signer:
    """The log's checkpoint-signing key, a C2SP signer key string in ``path`` (0600).

    The key's name is the log's origin, fixed when the key is made: witnesses
    and verifiers bind the two, so it must not change with the gateway's URL.
    ``origin``, when given, must match the key's. With ``create``
    (development) a missing key is generated for ``origin or new_origin``.
    """
    if not path.exists():
        name = origin or new_origin
        if not create or name is None:
            raise ConfigurationError(
                f"audit log signing key file {path} does not exist; create one with "
                "`qustody audit keygen --origin <origin> --out <file>` (readable only "
                "by the gateway)."
            )
        # Racing processes agree on one key: the first file created stands.
        create_private(path, (Signer.generate(name).encode() + "\n").encode())
    check_private(path, "audit log signing key file")
    signer = Signer.parse(path.read_text().strip())
    if origin is not None and signer.name != origin:
        raise ConfigurationError(
            f"the audit log key in {path} signs for origin {signer.name!r}, but "
            f"QUSTODY_AUDIT_ORIGIN is {origin!r}; a log's origin cannot change (unset "
            "QUSTODY_AUDIT_ORIGIN or point QUSTODY_AUDIT_KEY_FILE at the right key)."
        )
    return signer


class AuditLog:
    """The stored tree over the audit events, its checkpoints and proofs."""

    def __init__(
        self,
        db: Database,
        signer: Signer | None = None,
        *,
        batch: int = INTEGRATE_BATCH,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._db = db
        self._signer = signer
        self._batch = batch
        self._clock = clock

    @property
    def origin(self) -> str | None:
        return self._signer.name if self._signer else None

    @property
    def verifier(self) -> Verifier | None:
        return self._signer.verifier if self._signer else None

    # -- growing the tree --------------------------------------------------------------

    def integrate(self) -> int:
        """Hash every event the tree does not cover yet into it; returns the tree size."""
        while True:
            size, added = self._integrate_batch()
            if added < self._batch:
                return size

    def _integrate_batch(self) -> tuple[int, int]:
        # Every tenant's events, and the platform's: system scope, whoever asks.
        with self._db.writing(scope=SYSTEM) as connection:
            # The row lock (PostgreSQL) serializes integrators; SQLite has one writer.
            size = int(connection.execute(_TREE_SIZE.with_for_update()).scalar_one())
            events = connection.execute(
                select(AUDIT_EVENTS)
                .where(AUDIT_EVENTS.c.seq > size)
                .order_by(AUDIT_EVENTS.c.seq)
                .limit(self._batch)
            ).all()
            if not events:
                return size, 0
            frontier = _with_nodes(connection, lambda node: Frontier(size, node))
            nodes: list[dict[str, object]] = []
            for row in events:
                if row.seq != frontier.size + 1:
                    raise AuditLogError(
                        f"audit event {frontier.size + 1} is missing (the next stored event "
                        f"is {row.seq}); the log cannot grow past a gap. Run "
                        "`qustody audit verify` on an export to locate the damage."
                    )
                leaf = event_leaf_hash(cast(EventFields, row._mapping))
                nodes.extend(
                    {"level": level, "idx": index, "hash": value}
                    for level, index, value in frontier.append(leaf)
                )
            connection.execute(_INSERT_NODES, nodes)
            connection.execute(
                update(AUDIT_TREE_HEAD).where(AUDIT_TREE_HEAD.c.id == 1).values(size=frontier.size)
            )
            return frontier.size, len(events)

    def tree_size(self) -> int:
        with self._db.reading() as connection:
            return int(connection.execute(_TREE_SIZE).scalar_one())

    # -- checkpoints ------------------------------------------------------------------------

    def checkpoint(self) -> StoredCheckpoint | None:
        """Integrate, then sign a checkpoint if the tree grew since the last one.

        Returns the newest checkpoint (new or not), or ``None`` for an empty
        log. Without a signing key (a read-only process) nothing is signed.
        """
        size = self.integrate()
        latest = self.latest_checkpoint()
        if self._signer is None or size == 0 or (latest and latest.size >= size):
            return latest
        try:
            with self._db.writing() as connection:
                root = _with_nodes(connection, lambda node: subtree_hash(node, 0, size))
                text = Checkpoint(self._signer.name, size, root).text()
                stored = StoredCheckpoint(size, root, sign(text, self._signer), self._clock())
                connection.execute(
                    _INSERT_CHECKPOINT,
                    {
                        "size": stored.size,
                        "root": stored.root,
                        "note": stored.note,
                        "issued_at": stored.issued_at,
                    },
                )
        except IntegrityError:  # another process signed this size first
            return self.latest_checkpoint()
        return stored

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        with self._db.reading() as connection:
            row = connection.execute(
                select(*_CHECKPOINT_COLUMNS).order_by(AUDIT_CHECKPOINTS.c.size.desc()).limit(1)
            ).first()
        return StoredCheckpoint.of(row) if row else None

    def checkpoints(self) -> Iterator[StoredCheckpoint]:
        """Every checkpoint the log issued, smallest first."""
        with self._db.reading() as connection:
            for row in connection.execute(
                select(*_CHECKPOINT_COLUMNS).order_by(AUDIT_CHECKPOINTS.c.size)
            ):
                yield StoredCheckpoint.of(row)

    def checkpoint_at(self, size: int) -> StoredCheckpoint | None:
        with self._db.reading() as connection:
            row = connection.execute(
                select(*_CHECKPOINT_COLUMNS).where(AUDIT_CHECKPOINTS.c.size == size)
            ).first()
        return StoredCheckpoint.of(row) if row else None

    # -- proofs -------------------------------------------------------------------------------

    def inclusion_proofs(self, seqs: Sequence[int], size: int) -> dict[int, list[bytes]]:
        """The audit path of each event ``seq`` in the tree of ``size`` events."""
        for seq in seqs:
            if not 1 <= seq <= size:
                raise InvalidRequest(
                    f"event {seq} is not in a tree of {size} events; ask for a proof "
                    "against a checkpoint at least as large as the event's seq.",
                    field="size",
                )
        with self._db.reading() as connection:
            self._check_size(connection, size)
            return _with_nodes(
                connection,
                lambda node: {
                    seq: inclusion_path(seq - 1, size, lambda a, b: subtree_hash(node, a, b))
                    for seq in seqs
                },
            )

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        """The proof that the tree of ``old`` events is a prefix of the tree of ``new``."""
        if not 0 <= old <= new:
            raise InvalidRequest(
                f"a consistency proof goes from a smaller tree to a larger one; "
                f"from={old} and to={new} are not 0 <= from <= to.",
                field="from",
            )
        with self._db.reading() as connection:
            self._check_size(connection, new)
            return _with_nodes(
                connection,
                lambda node: consistency_path(old, new, lambda a, b: subtree_hash(node, a, b)),
            )

    def root(self, size: int) -> bytes:
        with self._db.reading() as connection:
            self._check_size(connection, size)
            return _with_nodes(connection, lambda node: subtree_hash(node, 0, size))

    @staticmethod
    def _check_size(connection: Connection, size: int) -> None:
        tree = int(connection.execute(_TREE_SIZE).scalar_one())
        if size > tree:
            raise InvalidRequest(
                f"the tree holds {tree} events so far; size={size} is beyond it. Use the "
                "size of a published checkpoint (GET /v1/audit/checkpoint).",
                field="size",
            )


class Checkpointer(Periodic):
    """A thread that signs a checkpoint every ``interval`` seconds while the log grows.

    Run by workers; several may run at once (one per worker), since
    integrating and signing serialize on the tree head and a size is signed
    once. A failure is logged (without event content) and retried.
    """

    def __init__(self, log: AuditLog, interval: float) -> None:
        super().__init__("audit-checkpointer", interval)
        self._log = log

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        self.round()  # what was recorded up to now, signed before leaving

    def round(self) -> None:
        try:
            self._log.checkpoint()
        except AuditLogError as exc:  # its message names seqs and nodes, no content
            logger.error("audit log: %s", exc)
        except Exception as exc:  # noqa: BLE001 (kept alive; the next round retries)
            logger.warning("audit checkpoint failed: %s", type(exc).__name__)


_CHECKPOINT_COLUMNS = (
    AUDIT_CHECKPOINTS.c.size,
    AUDIT_CHECKPOINTS.c.root,
    AUDIT_CHECKPOINTS.c.note,
    AUDIT_CHECKPOINTS.c.issued_at,
)
_PLACEHOLDER = bytes(HASH_SIZE)


def _with_nodes(connection: Connection, compute: Callable[[Node], T]) -> T:
    """Run ``compute`` over stored nodes, fetching all it needs in one query.

    Which nodes a proof or root needs depends only on sizes and indexes, not
    on hash values, so a first pass with placeholder hashes lists them; the
    second pass runs on the fetched hashes.
    """
    wanted: set[tuple[int, int]] = set()

    def note_key(level: int, index: int) -> bytes:
        wanted.add((level, index))
        return _PLACEHOLDER

    compute(note_key)
    nodes = _fetch_nodes(connection, wanted)

    def stored(level: int, index: int) -> bytes:
        try:
            return nodes[(level, index)]
        except KeyError:
            raise AuditLogError(
                f"the stored tree lacks node ({level}, {index}); it was deleted or never written"
            ) from None

    return compute(stored)


def _fetch_nodes(
    connection: Connection, keys: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], bytes]:
    wanted = sorted(set(keys))
    found: dict[tuple[int, int], bytes] = {}
    if connection.dialect.name == "postgresql":  # one round trip on the primary key
        for start in range(0, len(wanted), _LOOKUP_CHUNK):
            keys = wanted[start : start + _LOOKUP_CHUNK]
            for level, index, value in connection.execute(_NODES_BY_KEY, {"keys": keys}):
                found[(int(level), int(index))] = bytes(value)
        return found
    by_level: dict[int, list[int]] = {}
    for level, index in wanted:
        by_level.setdefault(level, []).append(index)
    for level, indexes in by_level.items():
        for start in range(0, len(indexes), _LOOKUP_CHUNK):
            chunk = indexes[start : start + _LOOKUP_CHUNK]
            for index, value in connection.execute(_NODES, {"level": level, "indexes": chunk}):
                found[(level, int(index))] = bytes(value)
    return found


def proof_text(path: Sequence[bytes]) -> list[str]:
    """A proof path as base64 strings (the API's and the export's form)."""
    return [base64.b64encode(h).decode() for h in path]


def proof_bytes(path: Sequence[object], what: str) -> list[bytes]:
    """The inverse of :func:`proof_text`, refusing anything that is not base64 hashes."""
    hashes: list[bytes] = []
    for item in path:
        try:
            value = base64.b64decode(str(item), validate=True)
        except binascii.Error:
            raise ProofError(f"{what} holds something that is not base64") from None
        if len(value) != HASH_SIZE:
            raise ProofError(f"{what} holds a {len(value)}-byte hash; hashes are {HASH_SIZE}")
        hashes.append(value)
    return hashes

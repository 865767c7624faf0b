"""The offline verifier: is this export the log the key holder signed, complete and unaltered?

``verify_export`` needs nothing but the export's lines and the log's public
key (plus, optionally, checkpoints kept elsewhere: by witnesses, or from an
earlier export). For a platform export it

1. checks every checkpoint's signature and origin;
2. reads events in order, checking sequence continuity from 1;
3. recomputes each event's leaf from its fields and rebuilds the tree,
   comparing the root at each checkpoint's size with the signed root — equal
   roots at successive sizes prove the checkpoints consistent with each
   other, since one sequence of leaves produced them all;
4. checks checkpoints held elsewhere the same way: a different root at the
   same size is a fork (or a log that showed two histories).

When a root does not match, the verifier locates the damage: if the leaf
hashes the log recorded still produce the signed root, the first event whose
fields no longer hash to its recorded leaf is the altered one; otherwise the
tree was rewritten too, and the damage lies between the last checkpoint that
matched and this one.

A tenant export (the tenant's events only) is checked by each event's
inclusion proof under the export's checkpoint instead.

Memory stays O(log n): the tree is carried as its right edge.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qustody.audit.events import FORMAT, EventEncodingError, event_leaf_hash
from qustody.audit.export import EXPORT_FORMAT
from qustody.audit.log import proof_bytes
from qustody.audit.merkle import HASH_SIZE, Frontier, ProofError, verify_inclusion
from qustody.audit.note import Checkpoint, NoteError, Verifier, open_note

#: Problems listed in a report after the first (the first is what matters).
MAX_PROBLEMS = 20


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong, located: the export line and the event, where known."""

    kind: str
    message: str
    line: int | None = None
    seq: int | None = None

    def __str__(self) -> str:
        where = [f"line {self.line}"] if self.line else []
        if self.seq is not None:
            where.append(f"event {self.seq}")
        return f"{', '.join(where) + ': ' if where else ''}{self.message} [{self.kind}]"


@dataclass(slots=True)
class Report:
    scope: str = "platform"
    events: int = 0
    checkpoints: int = 0
    #: Size of the largest checkpoint verified against the events.
    verified_size: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> Problem | None:
        return self.problems[0] if self.problems else None

    def add(self, problem: Problem) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)


@dataclass(frozen=True, slots=True)
class _Signed:
    size: int
    root: bytes
    line: int | None  # None: held outside the export
    source: str


class _Stop(Exception):
    """The export cannot be read further."""


def verify_export(
    lines: Iterable[str],
    log_key: Verifier,
    *,
    held: Sequence[str] = (),
    witness_keys: Sequence[Verifier] = (),
) -> Report:
    """Verify an export (its lines) against the log's key and checkpoints ``held`` elsewhere.

    ``held`` are checkpoint notes from witnesses or earlier exports; with
    ``witness_keys`` each must also carry a valid cosignature of one of them.
    """
    report = Report()
    records = iter(_records(lines, report))
    first = next(records, None)
    if first is None:
        return report
    header = first[1]
    if header.get("type") != "log" or header.get("format") != EXPORT_FORMAT:
        report.add(Problem("format", f"the export does not start with a {EXPORT_FORMAT} header", 1))
        return report
    report.scope = str(header.get("scope"))
    check: _PlatformCheck | _TenantCheck = (
        _TenantCheck(report) if report.scope == "tenant" else _PlatformCheck(report)
    )
    for index, note in enumerate(held, 1):
        checkpoint = _open(note, log_key, witness_keys, report, None, f"held checkpoint {index}")
        if checkpoint is not None:
            check.signed(_Signed(checkpoint.size, checkpoint.root_hash, None, f"held {index}"))
    try:
        for number, record in records:
            kind = record.get("type")
            if kind == "checkpoint":
                checkpoint = _open(str(record.get("note", "")), log_key, (), report, number)
                if checkpoint is not None:
                    check.signed(_Signed(checkpoint.size, checkpoint.root_hash, number, "export"))
            elif kind == "event":
                check.event(number, record)
            else:
                report.add(Problem("format", f"a record of unknown type {kind!r}", number))
                raise _Stop
    except _Stop:
        return report
    check.finish()
    return report


def _records(lines: Iterable[str], report: Report) -> Iterable[tuple[int, Mapping[str, Any]]]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            report.add(Problem("format", "the line is not JSON", number))
            return
        if not isinstance(record, dict):
            report.add(Problem("format", "the line is not a JSON object", number))
            return
        yield number, record


def _open(
    note: str,
    log_key: Verifier,
    witness_keys: Sequence[Verifier],
    report: Report,
    line: int | None,
    what: str = "the checkpoint",
) -> Checkpoint | None:
    try:
        text, _ = open_note(note, log_key)
        if witness_keys:
            _, cosigners = open_note(note, *witness_keys)
            if not cosigners:
                raise NoteError("no witness cosignature verifies")
        checkpoint = Checkpoint.parse(text)
    except NoteError as error:
        report.add(Problem("signature", f"{what} does not verify: {error}", line))
        return None
    if checkpoint.origin != log_key.name:
        report.add(
            Problem(
                "signature",
                f"{what} is for origin {checkpoint.origin!r}, not {log_key.name!r}",
                line,
            )
        )
        return None
    return checkpoint


class _Checkpoints:
    """The signed checkpoints seen so far, by size; two roots for one size is a fork."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.by_size: dict[int, _Signed] = {}

    def add(self, checkpoint: _Signed) -> bool:
        """Record ``checkpoint``; False when it contradicts one already seen."""
        self.report.checkpoints += 1
        other = self.by_size.setdefault(checkpoint.size, checkpoint)
        if other.root == checkpoint.root:
            return True
        self.report.add(
            Problem(
                "fork",
                f"two checkpoints of size {checkpoint.size} with different roots "
                f"({other.source} and {checkpoint.source}): the log signed two histories",
                checkpoint.line or other.line,
            )
        )
        return False


def _event_fields(record: Mapping[str, Any], report: Report, line: int) -> Mapping[str, Any]:
    event = record.get("event")
    if not isinstance(event, dict) or event.get("v") != FORMAT:
        report.add(Problem("format", f"the event is not an event of format {FORMAT}", line))
        raise _Stop
    seq = event.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        report.add(Problem("format", "the event has no integer seq", line))
        raise _Stop
    return event


def _leaf(fields: Mapping[str, Any], report: Report, line: int) -> bytes:
    try:
        return event_leaf_hash(fields)
    except EventEncodingError as error:
        report.add(Problem("format", f"the event cannot be encoded: {error}", line, fields["seq"]))
        raise _Stop from None


def _recorded(record: Mapping[str, Any]) -> bytes | None:
    value = record.get("leaf")
    if not isinstance(value, str):
        return None
    try:
        leaf = base64.b64decode(value, validate=True)
    except binascii.Error:
        return None
    return leaf if len(leaf) == HASH_SIZE else None


class _PlatformCheck:
    """Rebuilds the whole tree from the events, one at a time, checking each
    signed root when the tree reaches its size."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.known = _Checkpoints(report)
        #: Checkpoints of sizes the tree has not reached yet (held ones, mostly).
        self.pending: dict[int, list[_Signed]] = {}
        self.computed = Frontier(0, _no_node)  # the tree of the events' fields
        # The tree of the leaves the log recorded: the same as ``computed`` until
        # the first event that does not hash to its recorded leaf, kept apart from there.
        self.recorded: Frontier | None = None
        self.recorded_intact = True
        self.first_mismatch: tuple[int, int] | None = None  # (line, seq)
        self.last_good = 0
        self.last_line: int | None = None
        #: Set once the damage is located: later events are not checked, but
        #: later checkpoints still are (against each other: forks).
        self.located = False

    def signed(self, checkpoint: _Signed) -> None:
        self.known.add(checkpoint)
        size = self.computed.size
        if self.located:
            return
        if checkpoint.size > size:
            self.pending.setdefault(checkpoint.size, []).append(checkpoint)
        elif checkpoint.size == size:
            self._check([checkpoint])
        else:
            self.report.add(
                Problem(
                    "format",
                    f"the checkpoint of size {checkpoint.size} comes after event {size}; an "
                    "export places each checkpoint right after the event it ends with",
                    checkpoint.line,
                )
            )
            raise _Stop

    def event(self, line: int, record: Mapping[str, Any]) -> None:
        if self.located:
            return
        report = self.report
        fields = _event_fields(record, report, line)
        expected = self.computed.size + 1
        if fields["seq"] != expected:
            report.add(
                Problem(
                    "sequence",
                    f"event {fields['seq']} where event {expected} was expected: an event "
                    "is missing, inserted or out of order here",
                    line,
                    fields["seq"],
                )
            )
            raise _Stop
        leaf = _leaf(fields, report, line)
        stored = _recorded(record)
        if stored is None:
            self.recorded_intact = False
        elif stored != leaf and self.first_mismatch is None:
            self.first_mismatch = (line, expected)
            self.recorded = self.computed.copy()
        self.computed.append(leaf)
        if self.recorded is not None and self.recorded_intact and stored is not None:
            self.recorded.append(stored)
        report.events += 1
        self.last_line = line
        self._check(self.pending.pop(self.computed.size, []))

    def _check(self, checkpoints: Sequence[_Signed]) -> None:
        """Compare the tree, now of the checkpoints' size, with their signed roots."""
        if not checkpoints:
            return
        root = self.computed.root()
        bad = next((c for c in checkpoints if c.root != root), None)
        if bad is None:
            self.last_good = self.report.verified_size = self.computed.size
            return
        recorded_root = (self.recorded or self.computed).root() if self.recorded_intact else None
        _locate(bad, self.last_good, self.first_mismatch, recorded_root == bad.root, self.report)
        self.located = True

    def finish(self) -> None:
        size = self.computed.size
        if self.located:
            return
        if self.pending:
            beyond = max(self.pending)
            self.report.add(
                Problem(
                    "truncated",
                    f"the export ends at event {size}, but a checkpoint of size {beyond} was "
                    f"signed: events {size + 1}..{beyond} are missing",
                    self.last_line,
                    size + 1,
                )
            )
        elif self.first_mismatch is not None:
            line, seq = self.first_mismatch
            self.report.add(
                Problem(
                    "altered",
                    "the event's fields do not hash to the leaf the log recorded for it (not "
                    "yet covered by a checkpoint)",
                    line,
                    seq,
                )
            )


def _no_node(level: int, index: int) -> bytes:
    raise ProofError("an empty tree has no nodes")


def _locate(
    bad: _Signed,
    last_good: int,
    first_mismatch: tuple[int, int] | None,
    recorded_match: bool,
    report: Report,
) -> None:
    where = f"the checkpoint of size {bad.size} ({bad.source})"
    if recorded_match and first_mismatch is not None:
        line, seq = first_mismatch
        report.add(
            Problem(
                "altered",
                f"the event's fields do not hash to the leaf the log recorded, and the "
                f"recorded leaves do produce the root signed in {where}: this event was "
                "changed after it was logged",
                line,
                seq,
            )
        )
        return
    report.add(
        Problem(
            "rewritten",
            f"the events up to {bad.size} do not produce the root signed in {where}, and "
            f"neither do the recorded leaves: history was rewritten (or forked) between "
            f"event {last_good + 1} and event {bad.size}; the log matched its checkpoints "
            f"up to size {last_good}",
            bad.line,
            last_good + 1,
        )
    )


class _TenantCheck:
    """Checks each event by its inclusion proof under a checkpoint seen before it
    (a tenant export puts its checkpoint first)."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.known = _Checkpoints(report)
        self.previous = 0

    def signed(self, checkpoint: _Signed) -> None:
        self.known.add(checkpoint)

    def event(self, line: int, record: Mapping[str, Any]) -> None:
        report = self.report
        fields = _event_fields(record, report, line)
        seq = fields["seq"]
        if seq <= self.previous:
            report.add(Problem("sequence", f"event {seq} is out of order", line, seq))
            raise _Stop
        self.previous = seq
        leaf = _leaf(fields, report, line)
        proof = record.get("proof")
        size = proof.get("size") if isinstance(proof, dict) else None
        signed = self.known.by_size.get(size) if isinstance(size, int) else None
        if not isinstance(proof, dict) or signed is None:
            report.add(
                Problem(
                    "proof",
                    "the event has no inclusion proof under a checkpoint listed before it",
                    line,
                    seq,
                )
            )
            return
        try:
            path = proof_bytes(list(proof.get("path") or []), "the inclusion proof")
            verify_inclusion(seq - 1, signed.size, leaf, path, signed.root)
        except ProofError as error:
            report.add(
                Problem(
                    "altered",
                    f"the event is not in the tree of checkpoint {signed.size} as it stands: "
                    f"{error}",
                    line,
                    seq,
                )
            )
            return
        report.events += 1
        report.verified_size = max(report.verified_size, signed.size)

    def finish(self) -> None:
        """Nothing more to check: each event was checked on its own."""

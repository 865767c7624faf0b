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
    records = list(_records(lines, report))
    if not records:
        return report
    _, header = records[0]
    if header.get("type") != "log" or header.get("format") != EXPORT_FORMAT:
        report.add(Problem("format", f"the export does not start with a {EXPORT_FORMAT} header", 1))
        return report
    report.scope = str(header.get("scope"))
    signed: list[_Signed] = []
    for number, record in records:
        if record.get("type") == "checkpoint":
            checkpoint = _open(str(record.get("note", "")), log_key, (), report, number)
            if checkpoint is not None:
                signed.append(_Signed(checkpoint.size, checkpoint.root_hash, number, "export"))
    for index, note in enumerate(held, 1):
        checkpoint = _open(note, log_key, witness_keys, report, None, f"held checkpoint {index}")
        if checkpoint is not None:
            signed.append(_Signed(checkpoint.size, checkpoint.root_hash, None, f"held {index}"))
    report.checkpoints = len(signed)
    _same_size_same_root(signed, report)
    events = [(n, r) for n, r in records if r.get("type") == "event"]
    if report.scope == "tenant":
        _verify_tenant(events, signed, report)
    else:
        _verify_platform(events, signed, report)
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


def _same_size_same_root(signed: Sequence[_Signed], report: Report) -> None:
    seen: dict[int, _Signed] = {}
    for checkpoint in signed:
        other = seen.setdefault(checkpoint.size, checkpoint)
        if other.root != checkpoint.root:
            report.add(
                Problem(
                    "fork",
                    f"two checkpoints of size {checkpoint.size} with different roots "
                    f"({other.source} and {checkpoint.source}): the log signed two histories",
                    checkpoint.line or other.line,
                )
            )


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


def _leaf(fields: Mapping[str, Any], report: Report, line: int) -> bytes | None:
    try:
        return event_leaf_hash(fields)
    except EventEncodingError as error:
        report.add(Problem("format", f"the event cannot be encoded: {error}", line, fields["seq"]))
        return None


def _recorded(record: Mapping[str, Any]) -> bytes | None:
    value = record.get("leaf")
    if not isinstance(value, str):
        return None
    try:
        leaf = base64.b64decode(value, validate=True)
    except binascii.Error:
        return None
    return leaf if len(leaf) == HASH_SIZE else None


def _verify_platform(
    events: Sequence[tuple[int, Mapping[str, Any]]], signed: Sequence[_Signed], report: Report
) -> None:
    by_size: dict[int, list[_Signed]] = {}
    for checkpoint in signed:
        by_size.setdefault(checkpoint.size, []).append(checkpoint)
    computed = Frontier(0, _no_node)  # the tree of the events' fields
    # The tree of the leaves the log recorded: the same as ``computed`` until
    # the first event that does not hash to its recorded leaf, kept apart from there.
    recorded: Frontier | None = None
    recorded_intact = True
    first_mismatch: tuple[int, int] | None = None  # (line, seq) of the first differing leaf
    last_good = 0
    try:
        for line, record in events:
            fields = _event_fields(record, report, line)
            expected = computed.size + 1
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
            if leaf is None:
                raise _Stop
            stored = _recorded(record)
            if stored is None:
                recorded_intact = False
            elif stored != leaf and first_mismatch is None:
                first_mismatch = (line, expected)
                recorded = computed.copy()
            computed.append(leaf)
            if recorded is not None and recorded_intact and stored is not None:
                recorded.append(stored)
            report.events += 1
            bad = _mismatch(computed, by_size)
            if bad is None:
                if computed.size in by_size:
                    last_good = computed.size
                continue
            recorded_root = (recorded or computed).root() if recorded_intact else None
            _locate(bad, last_good, first_mismatch, recorded_root == bad.root, report)
            raise _Stop
    except _Stop:
        return
    report.verified_size = max((s.size for s in signed if s.size <= computed.size), default=0)
    beyond = sorted({s.size for s in signed if s.size > computed.size})
    if beyond:
        report.add(
            Problem(
                "truncated",
                f"the export ends at event {computed.size}, but a checkpoint of size "
                f"{beyond[-1]} was signed: events {computed.size + 1}..{beyond[-1]} are missing",
                events[-1][0] if events else None,
                computed.size + 1,
            )
        )
    elif first_mismatch is not None:
        line, seq = first_mismatch
        report.add(
            Problem(
                "altered",
                "the event's fields do not hash to the leaf the log recorded for it (not yet "
                "covered by a checkpoint)",
                line,
                seq,
            )
        )


def _no_node(level: int, index: int) -> bytes:
    raise ProofError("an empty tree has no nodes")


def _mismatch(tree: Frontier, by_size: Mapping[int, list[_Signed]]) -> _Signed | None:
    """The first checkpoint of the tree's size whose root differs from the tree's, if any."""
    for checkpoint in by_size.get(tree.size, ()):
        if tree.root() != checkpoint.root:
            return checkpoint
    return None


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


def _verify_tenant(
    events: Sequence[tuple[int, Mapping[str, Any]]], signed: Sequence[_Signed], report: Report
) -> None:
    roots = {s.size: s.root for s in signed}
    previous = 0
    for line, record in events:
        try:
            fields = _event_fields(record, report, line)
        except _Stop:
            return
        seq = fields["seq"]
        if seq <= previous:
            report.add(Problem("sequence", f"event {seq} is out of order", line, seq))
            return
        previous = seq
        leaf = _leaf(fields, report, line)
        proof = record.get("proof")
        if leaf is None:
            return
        if not isinstance(proof, dict) or proof.get("size") not in roots:
            report.add(
                Problem("proof", "the event has no inclusion proof under a checkpoint", line, seq)
            )
            continue
        size = proof["size"]
        try:
            path = proof_bytes(list(proof.get("path") or []), "the inclusion proof")
            verify_inclusion(seq - 1, size, leaf, path, roots[size])
        except ProofError as error:
            report.add(
                Problem(
                    "altered",
                    f"the event is not in the tree of checkpoint {size} as it stands: {error}",
                    line,
                    seq,
                )
            )
            continue
        report.events += 1
        report.verified_size = max(report.verified_size, size)

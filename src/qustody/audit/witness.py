"""A witness of the audit log: it cosigns checkpoints only while the log's
history stays one append-only tree (c2sp.org/tlog-cosignature, RFC 9162).

A log could sign one history for some readers and a different one for
others (a *split view*); every checkpoint would verify on its own. A witness
breaks that: it keeps the last checkpoint it accepted and cosigns a new one
only after checking, in this order,

1. the log's Ed25519 signature, with the log's verifier key;
2. the checkpoint's syntax and its origin (the log this witness follows);
3. the history: a larger tree must come with a valid RFC 9162 consistency
   proof from the accepted one, a tree of the same size must have the same
   root, and a smaller tree is a rollback.

Then it cosigns (cosignature/v1, the time from its clock) and replaces its
state file atomically. A refusal raises a :class:`WitnessError` saying which
check failed, and leaves the state as it was.

**Trust on first use.** A witness with no state accepts the first
checkpoint it sees as is (after checks 1 and 2): there is nothing yet to be
consistent with. Start a witness while the log is known to be honest, and
never hand it an empty state directory afterwards: a witness whose state is
lost must start under a new key, or it could cosign a fork of what it
cosigned before.

A witness that saw one branch refuses the other; witnesses that each saw a
different branch are caught by :func:`compare`, which checks their cosigned
checkpoints against each other (the notes travel as files: gossip).

The state directory (mode 0700) holds ``checkpoint.note``, the last accepted
checkpoint with the log's signature and this witness's cosignature, and
``lock``, whose ``flock`` keeps two witness processes from interleaving.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import stat
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import ClassVar, Protocol

import httpx

from qustody.audit.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    ProofError,
    consistency_path,
    verify_consistency,
)
from qustody.audit.note import (
    COSIGNATURE_V1,
    ED25519,
    MAX_NOTE_BYTES,
    Checkpoint,
    NoteError,
    Signature,
    Signer,
    Verifier,
    cosign,
    cosignature_time,
    open_note,
    split,
)
from qustody.crypto.files import replace_atomically
from qustody.domain.errors import ConfigurationError, QustodyError

STATE_FILE = "checkpoint.note"
LOCK_FILE = "lock"
LOCK_WAIT_SECONDS = 10.0
_MAX_PROOF_BYTES = 64 * 1024

#: Fetches the consistency proof from tree size ``old`` to ``new``.
Consistency = Callable[[int, int], Sequence[bytes]]


# -- errors ---------------------------------------------------------------------------------


class WitnessError(QustodyError, ValueError):
    """The witness refused a checkpoint, or could not do its work."""

    code: ClassVar[str] = "witness_refused"
    status: ClassVar[int] = 409
    title: ClassVar[str] = "Checkpoint refused by the witness"


class BadCheckpoint(WitnessError):
    """The note or the checkpoint in it is malformed."""

    code = "bad_checkpoint"
    status = 400
    title = "Malformed checkpoint"


class BadSignature(BadCheckpoint):
    """The checkpoint is not validly signed by the log (or a cosignature is bad)."""

    code = "bad_log_signature"
    status = 403
    title = "Checkpoint signature does not verify"


class WrongOrigin(BadCheckpoint):
    """The checkpoint is for another log than the one the witness follows."""

    code = "wrong_origin"
    status = 404
    title = "Checkpoint of another log"


class Rollback(WitnessError):
    """The log showed a smaller tree than one the witness accepted."""

    code = "rollback"
    title = "Log rolled back"


class Inconsistent(WitnessError):
    """Two checkpoints of the log cannot both be true: a forked history.

    ``evidence`` holds the signed notes that show it, where the witness has
    them (the accepted one first): keep them, they are the log's own word."""

    code = "inconsistent_checkpoint"
    title = "Log history forked"

    def __init__(
        self,
        detail: str,
        *,
        extra: Mapping[str, str | int | None] | None = None,
        evidence: tuple[str, ...] = (),
    ) -> None:
        super().__init__(detail, extra=extra)
        self.evidence = evidence


#: The same refusal, named for what it reveals.
SplitView = Inconsistent


class BadProof(WitnessError):
    """The log served a consistency proof of the wrong shape."""

    code = "malformed_proof"
    status = 422
    title = "Malformed consistency proof"


class LogUnreachable(WitnessError):
    """The log did not answer, or answered with an error."""

    code = "log_unreachable"
    status = 502
    title = "Log unreachable"


class WitnessStateError(WitnessError):
    """The witness's state directory cannot be used as it is."""

    code = "witness_state"
    status = 500
    title = "Witness state unusable"


class WitnessBusy(WitnessStateError):
    """Another witness process holds the state directory's lock."""

    code = "witness_busy"
    status = 503
    title = "Witness busy"


# -- checking checkpoints ---------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _same_key(a: Verifier | Signature, b: Verifier) -> bool:
    return a.name == b.name and a.key_id == b.key_id


def _vkey_label(verifier: Verifier) -> str:
    return f"{verifier.name}+{verifier.key_id.hex()}"


@dataclass(frozen=True)
class _Opened:
    checkpoint: Checkpoint
    text: str
    signatures: list[Signature]
    witnesses: list[Verifier]  # the known witness keys whose cosignature verified


def _open_checkpoint(
    note: str, log: Verifier, witnesses: Sequence[Verifier] = (), *, where: str = "the checkpoint"
) -> _Opened:
    """Parse ``note`` as a checkpoint the ``log`` key signed; check any
    cosignature by one of ``witnesses`` it carries."""
    try:
        text, signatures = split(note)
    except NoteError as error:
        raise BadCheckpoint(f"{where} is not a signed note: {error}") from None
    if not any(_same_key(s, log) for s in signatures):
        raise BadSignature(
            f"{where} carries no signature by the log key {_vkey_label(log)}; "
            "check the log's verifier key"
        )
    others = [w for w in witnesses if not _same_key(w, log)]
    try:
        _, verified = open_note(note, log, *others)
    except NoteError as error:
        raise BadSignature(f"{where} does not verify: {error}") from None
    try:
        checkpoint = Checkpoint.parse(text)
    except NoteError as error:
        raise BadCheckpoint(f"{where} is malformed: {error}") from None
    if checkpoint.size == 0 and checkpoint.root_hash != EMPTY_ROOT:
        raise BadCheckpoint(
            f"{where} has size 0 but root {_b64(checkpoint.root_hash)}; "
            f"the empty tree's root is {_b64(EMPTY_ROOT)}"
        )
    return _Opened(checkpoint, text, signatures, [v for v in verified if not _same_key(v, log)])


def _history(old: Checkpoint, new: Checkpoint) -> dict[str, str | int | None]:
    return {
        "old_size": old.size,
        "old_root": _b64(old.root_hash),
        "new_size": new.size,
        "new_root": _b64(new.root_hash),
    }


def _check_same_root(old: Checkpoint, new: Checkpoint, evidence: tuple[str, ...] = ()) -> None:
    if old.root_hash != new.root_hash:
        raise Inconsistent(
            f"the log signed two different roots for tree size {new.size}: "
            f"{_b64(old.root_hash)} and {_b64(new.root_hash)}; it is showing different "
            "histories (a split view)",
            extra=_history(old, new),
            evidence=evidence,
        )


def _check_extends(
    old: Checkpoint, new: Checkpoint, consistency: Consistency, evidence: tuple[str, ...] = ()
) -> None:
    """Raise unless the log proves the tree ``new`` (larger) extends ``old``."""
    if old.size == 0:
        return  # every tree extends the empty one
    try:
        path = list(consistency(old.size, new.size))
    except ProofError as error:  # the proof source refused the sizes
        raise BadProof(
            f"the log gave no consistency proof from size {old.size} to {new.size}: {error}",
            extra=_history(old, new),
        ) from None
    # The proof's length is fixed by the two sizes alone (RFC 9162, 2.1.4).
    wanted = len(consistency_path(old.size, new.size, lambda _start, _end: EMPTY_ROOT))
    if len(path) != wanted:
        raise BadProof(
            f"the consistency proof from size {old.size} to {new.size} has {len(path)} "
            f"hashes; RFC 9162 needs exactly {wanted}",
            extra=_history(old, new),
        )
    for i, node in enumerate(path):
        if len(node) != HASH_SIZE:
            raise BadProof(
                f"hash {i} of the consistency proof from size {old.size} to {new.size} is "
                f"{len(node)} bytes long; SHA-256 hashes are {HASH_SIZE}",
                extra=_history(old, new),
            )
    try:
        verify_consistency(old.size, new.size, old.root_hash, new.root_hash, path)
    except ProofError as error:
        raise Inconsistent(
            f"the tree of size {new.size} (root {_b64(new.root_hash)}) does not extend the "
            f"tree of size {old.size} (root {_b64(old.root_hash)}): {error}; the log forked "
            "its history (a split view) or served a forged proof",
            extra=_history(old, new),
            evidence=evidence,
        ) from None


# -- the witness ----------------------------------------------------------------------------


class LogClient(Protocol):
    """Where a witness reads the log: its latest checkpoint and its proofs."""

    def latest_checkpoint(self) -> str:
        """The log's latest checkpoint, as signed note text."""
        ...

    def consistency(self, old: int, new: int) -> list[bytes]:
        """The RFC 9162 consistency proof from tree size ``old`` to ``new``."""
        ...


@dataclass(frozen=True)
class Accepted:
    """The last checkpoint a witness accepted, as it stored it."""

    checkpoint: Checkpoint
    note: str  # the log's signature and, normally, this witness's cosignature
    cosigned_at: int | None  # the time of this witness's cosignature on ``note``

    @property
    def size(self) -> int:
        return self.checkpoint.size

    @property
    def root_hash(self) -> bytes:
        return self.checkpoint.root_hash


class Witness:
    """A witness of one log, keeping its state in ``state_dir``.

    ``clock`` returns POSIX seconds (default :func:`time.time`); cosignatures
    carry its value rounded down. ``lock_wait`` bounds how long a call waits
    for another witness process working on the same directory.
    """

    def __init__(
        self,
        state_dir: Path,
        signer: Signer,
        log: Verifier,
        origin: str,
        *,
        clock: Callable[[], float] = time.time,
        lock_wait: float = LOCK_WAIT_SECONDS,
    ) -> None:
        if signer.kind != COSIGNATURE_V1:
            raise ConfigurationError(
                f"the witness key {signer.name!r} has type {signer.kind:#04x}; witnesses "
                f"cosign with type {COSIGNATURE_V1:#04x} (cosignature/v1) keys"
            )
        if log.kind != ED25519:
            raise ConfigurationError(
                f"the log key {log.name!r} has type {log.kind:#04x}; logs sign checkpoints "
                f"with type {ED25519:#04x} (Ed25519) keys"
            )
        if not origin or "\n" in origin:
            raise ConfigurationError("the log origin must be one non-empty line")
        self._dir = Path(state_dir)
        self._signer = signer
        self._log = log
        self._origin = origin
        self._clock = clock
        self._lock_wait = lock_wait
        self._prepare_dir()

    def __repr__(self) -> str:
        return f"Witness({self._signer.name!r}, origin={self._origin!r}, state_dir={self._dir!s})"

    @property
    def verifier(self) -> Verifier:
        """This witness's verifier key: what readers need to check its cosignatures."""
        return self._signer.verifier

    @property
    def state_file(self) -> Path:
        return self._dir / STATE_FILE

    def _prepare_dir(self) -> None:
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = self._dir.stat()
        if not stat.S_ISDIR(info.st_mode):
            raise ConfigurationError(f"witness state directory {self._dir} is not a directory")
        if info.st_uid != os.geteuid():
            raise ConfigurationError(
                f"witness state directory {self._dir} belongs to user {info.st_uid}; "
                "run the witness as its owner"
            )
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise ConfigurationError(
                f"witness state directory {self._dir} is open to other users (mode {mode:o}); "
                f"run: chmod 700 {self._dir}"
            )

    def state(self) -> Accepted | None:
        """The last checkpoint this witness accepted, or None before the first."""
        try:
            stored = self.state_file.read_text("utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as error:
            raise WitnessStateError(
                f"cannot read witness state {self.state_file}: {error}"
            ) from None
        try:
            opened = _open_checkpoint(stored, self._log, [self.verifier], where="the stored state")
        except WitnessError as error:
            raise WitnessStateError(
                f"witness state {self.state_file} does not verify ({error.detail}); it was "
                "changed outside the witness: restore it from backup, or retire this "
                "witness key and start a new witness"
            ) from None
        if opened.checkpoint.origin != self._origin:
            raise WitnessStateError(
                f"witness state {self.state_file} follows the log {opened.checkpoint.origin!r}, "
                f"not {self._origin!r}; give each log its own state directory"
            )
        mine = [s for s in opened.signatures if _same_key(s, self.verifier)]
        cosigned_at = cosignature_time(mine[0]) if mine else None
        return Accepted(opened.checkpoint, stored, cosigned_at)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the state directory's ``flock``, waiting at most ``lock_wait``
        seconds (polling: a blocking ``flock`` cannot time out)."""
        path = self._dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + self._lock_wait
            nap = 0.001
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise WitnessBusy(
                            f"another witness process holds {path} (waited {self._lock_wait:g} "
                            "s); run one witness per state directory"
                        ) from None
                    time.sleep(nap)
                    nap = min(nap * 2, 0.05)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def observe(self, note: str, consistency: Consistency) -> str:
        """Check the log's checkpoint ``note`` against the accepted one and,
        if the log's history holds, cosign it and make it the new state.

        ``consistency`` fetches a proof between two tree sizes from the log;
        it is called only when the tree grew. Returns the note as stored: the
        checkpoint, the log's signature and this witness's cosignature.
        """
        opened = _open_checkpoint(note, self._log)
        new = opened.checkpoint
        if new.origin != self._origin:
            raise WrongOrigin(
                f"the checkpoint is for the log {new.origin[:200]!r}; this witness follows "
                f"{self._origin!r}"
            )
        with self._locked():
            accepted = self.state()
            if accepted is not None:
                self._check_history(accepted, new, note, consistency)
            timestamp = int(self._clock())
            log_signature = next(s for s in opened.signatures if _same_key(s, self._log))
            cosignature = cosign(opened.text, self._signer, timestamp)
            cosigned = f"{opened.text}\n{log_signature.line()}{cosignature.line()}"
            replace_atomically(self.state_file, cosigned.encode())
        return cosigned

    def _check_history(
        self, accepted: Accepted, new: Checkpoint, note: str, consistency: Consistency
    ) -> None:
        old = accepted.checkpoint
        evidence = (accepted.note, note)
        if new.size < old.size:
            raise Rollback(
                f"the log's checkpoint has size {new.size}, smaller than size {old.size} "
                f"(root {_b64(old.root_hash)}) that this witness accepted; a log only grows",
                extra=_history(old, new),
            )
        if new.size == old.size:
            _check_same_root(old, new, evidence)
        else:
            _check_extends(old, new, consistency, evidence)

    def run_once(self, client: LogClient) -> str:
        """Fetch the log's latest checkpoint and :meth:`observe` it."""
        return self.observe(client.latest_checkpoint(), client.consistency)


# -- comparing witnesses (split views) ----------------------------------------------------


@dataclass(frozen=True)
class Sighting:
    """One checkpoint and the witnesses that cosigned it."""

    checkpoint: Checkpoint
    witnesses: tuple[str, ...]

    def describe(self) -> str:
        who = ", ".join(self.witnesses)
        return f"size {self.checkpoint.size} root {_b64(self.checkpoint.root_hash)} ({who})"


@dataclass(frozen=True)
class Conflict:
    """Two cosigned checkpoints that one honest log could not both have signed."""

    first: Sighting  # the smaller tree (or the same size)
    second: Sighting
    reason: str

    def __str__(self) -> str:
        return f"{self.first.describe()} vs {self.second.describe()}: {self.reason}"


def compare(
    checkpoint_notes: Sequence[str],
    log_verifier: Verifier,
    witness_verifiers: Sequence[Verifier],
    consistency: Consistency | None = None,
) -> list[Conflict]:
    """The conflicts between checkpoints that witnesses cosigned; none if the
    witnesses saw one history.

    Each note must carry a valid log signature and at least one valid
    cosignature by a key in ``witness_verifiers``, and all must be of one
    log (origin); otherwise :class:`BadCheckpoint` is raised, since such a
    note is no evidence of what a witness saw.

    Two checkpoints of one size with different roots always conflict. Two
    of different sizes conflict unless ``consistency`` (a proof source, e.g.
    :meth:`LogClient.consistency`) yields a valid proof between them; without
    a proof source, checkpoints of different sizes are not compared.
    """
    if not witness_verifiers:
        raise ConfigurationError("compare needs the verifier key of at least one witness")
    seen: dict[tuple[int, bytes], tuple[Checkpoint, set[str]]] = {}
    origin: str | None = None
    for number, note in enumerate(checkpoint_notes, 1):
        where = f"checkpoint note {number}"
        opened = _open_checkpoint(note, log_verifier, witness_verifiers, where=where)
        if not opened.witnesses:
            names = ", ".join(_vkey_label(w) for w in witness_verifiers)
            raise BadCheckpoint(
                f"{where} carries no cosignature by a known witness ({names}); "
                "it is no evidence of what a witness saw"
            )
        checkpoint = opened.checkpoint
        if origin is None:
            origin = checkpoint.origin
        elif checkpoint.origin != origin:
            raise WrongOrigin(
                f"{where} is for the log {checkpoint.origin[:200]!r}, note 1 for {origin!r}; "
                "compare the checkpoints of one log at a time"
            )
        key = (checkpoint.size, checkpoint.root_hash)
        seen.setdefault(key, (checkpoint, set()))[1].update(w.name for w in opened.witnesses)
    sightings = [Sighting(cp, tuple(sorted(names))) for cp, names in seen.values()]
    sightings.sort(key=lambda s: (s.checkpoint.size, s.checkpoint.root_hash))
    fetch = _cached(consistency) if consistency is not None else None
    conflicts: list[Conflict] = []
    for a, b in combinations(sightings, 2):
        try:
            if a.checkpoint.size == b.checkpoint.size:
                _check_same_root(a.checkpoint, b.checkpoint)
            elif fetch is not None:
                _check_extends(a.checkpoint, b.checkpoint, fetch)
        except (Inconsistent, BadProof) as error:
            conflicts.append(Conflict(a, b, error.detail))
    return conflicts


def _cached(consistency: Consistency) -> Consistency:
    proofs: dict[tuple[int, int], Sequence[bytes]] = {}

    def fetch(old: int, new: int) -> Sequence[bytes]:
        if (old, new) not in proofs:
            proofs[old, new] = consistency(old, new)
        return proofs[old, new]

    return fetch


# -- reading a Qustody gateway's log over HTTP ---------------------------------------------


class HttpLogClient:
    """A :class:`LogClient` for a Qustody gateway: ``GET /v1/audit/checkpoint``
    (a signed note, text/plain) and ``GET /v1/audit/proofs/consistency?from=A&to=B``
    (JSON ``{"from": A, "to": B, "path": [base64, ...]}``).

    Answers are read up to a size limit, so a hostile log cannot exhaust the
    witness's memory. The bearer token, if any, never shows in ``repr``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._base_url = base_url
        self._http = httpx.Client(
            base_url=base_url, headers=headers, timeout=timeout, transport=transport
        )

    def __repr__(self) -> str:
        return f"HttpLogClient({self._base_url!r})"

    def __enter__(self) -> HttpLogClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _get(self, path: str, params: dict[str, int], limit: int) -> bytes:
        try:
            with self._http.stream("GET", path, params=params) as response:
                if response.status_code != httpx.codes.OK:
                    hint = "; check the token" if response.status_code in (401, 403) else ""
                    raise LogUnreachable(
                        f"the log at {self._base_url} answered {response.status_code} "
                        f"to GET {path}{hint}"
                    )
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise LogUnreachable(
                            f"the log's answer to GET {path} is larger than {limit} bytes"
                        )
                return bytes(body)
        except httpx.HTTPError as error:
            raise LogUnreachable(
                f"GET {path} on the log at {self._base_url} failed: {error}"
            ) from None

    def latest_checkpoint(self) -> str:
        body = self._get("/v1/audit/checkpoint", {}, MAX_NOTE_BYTES)
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise BadCheckpoint("the log's checkpoint is not UTF-8 text") from None

    def consistency(self, old: int, new: int) -> list[bytes]:
        params = {"from": old, "to": new}
        body = self._get("/v1/audit/proofs/consistency", params, _MAX_PROOF_BYTES)
        return _parse_proof(body, old, new)


def _parse_proof(body: bytes, old: int, new: int) -> list[bytes]:
    wrong = BadProof(
        f"the log's consistency proof from size {old} to {new} is not "
        '{"from": old, "to": new, "path": [base64 hashes]}'
    )
    try:
        document = json.loads(body)
    except ValueError:
        raise wrong from None
    if not isinstance(document, dict):
        raise wrong
    path = document.get("path")
    sizes = (document.get("from"), document.get("to"))
    if any(type(size) is not int for size in sizes) or sizes != (old, new):
        raise wrong
    if not isinstance(path, list) or not all(isinstance(node, str) for node in path):
        raise wrong
    try:
        return [base64.b64decode(node, validate=True) for node in path]
    except binascii.Error:
        raise wrong from None

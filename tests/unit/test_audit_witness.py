"""The witness against honest logs and a log that shows two histories.

Logs here are real: an RFC 9162 tree (:class:`MerkleTree`) whose checkpoints
a real Ed25519 key signs; only the clock is injected.
"""

from __future__ import annotations

import base64
import fcntl
import os
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from qustody.audit.merkle import EMPTY_ROOT, MerkleTree, leaf_hash
from qustody.audit.note import (
    COSIGNATURE_V1,
    Checkpoint,
    Signer,
    cosign,
    cosignature_time,
    open_note,
    sign,
    split,
)
from qustody.audit.witness import (
    BadCheckpoint,
    BadProof,
    BadSignature,
    Consistency,
    HttpLogClient,
    Inconsistent,
    LogClient,
    LogUnreachable,
    Rollback,
    Witness,
    WitnessBusy,
    WitnessError,
    WitnessStateError,
    WrongOrigin,
    compare,
)
from qustody.domain.errors import ConfigurationError, QustodyError

ORIGIN = "qustody.example/audit"
NOW = 1_700_000_000
LOG_KEY = Signer.generate(ORIGIN)


class Log:
    """An honest log: a Merkle tree and a key that signs its checkpoints."""

    def __init__(self, leaves: int = 0, *, tag: str = "", signer: Signer = LOG_KEY) -> None:
        self.tree = MerkleTree()
        self.signer = signer
        self.origin = ORIGIN
        self.proofs: list[tuple[int, int]] = []
        self.grow(leaves, tag=tag)

    def grow(self, n: int, *, tag: str = "") -> Log:
        for _ in range(n):
            self.tree.append(leaf_hash(f"event {self.tree.size}{tag}".encode()))
        return self

    def checkpoint(self, size: int | None = None) -> str:
        size = self.tree.size if size is None else size
        return sign(Checkpoint(self.origin, size, self.tree.root(size)).text(), self.signer)

    def latest_checkpoint(self) -> str:
        return self.checkpoint()

    def consistency(self, old: int, new: int) -> list[bytes]:
        self.proofs.append((old, new))
        return self.tree.consistency_proof(old, new)


def forked(prefix: int, a: int, b: int) -> tuple[Log, Log]:
    """One log key, two histories: the same ``prefix`` leaves, then different ones."""
    return Log(prefix).grow(a - prefix, tag="/h1"), Log(prefix).grow(b - prefix, tag="/h2")


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        self.now += 60.5
        return self.now


KEYS: dict[str, Signer] = {}


def witness_at(state: Path, name: str = "witness.example/w1", *, lock_wait: float = 10) -> Witness:
    """A witness keeping its state in ``state``; one key per name across tests."""
    signer = KEYS.setdefault(name, Signer.generate(name, COSIGNATURE_V1))
    return Witness(state, signer, LOG_KEY.verifier, ORIGIN, clock=Clock(), lock_wait=lock_wait)


def stored(witness: Witness) -> str:
    """The cosigned note ``witness`` keeps."""
    state = witness.state()
    assert state is not None
    return state.note


def refused(witness: Witness, note: str, proofs: Consistency, error: type[WitnessError]) -> str:
    """Show ``note`` to ``witness``: it must refuse with ``error`` and keep its state."""
    before = witness.state_file.read_bytes() if witness.state_file.exists() else None
    with pytest.raises(error) as caught:
        witness.observe(note, proofs)
    after = witness.state_file.read_bytes() if witness.state_file.exists() else None
    assert after == before
    assert [p.name for p in witness.state_file.parent.iterdir() if p.name.endswith(".tmp")] == []
    return caught.value.detail


# -- honest logs ----------------------------------------------------------------------------


def test_first_contact_is_trusted_and_cosigned(tmp_path: Path) -> None:
    log, witness = Log(5), witness_at(tmp_path / "w")
    assert witness.state() is None
    cosigned = witness.observe(log.checkpoint(), log.consistency)
    assert log.proofs == []  # nothing to be consistent with yet
    text, verified = open_note(cosigned, LOG_KEY.verifier, witness.verifier)
    assert {v.name for v in verified} == {ORIGIN, "witness.example/w1"}
    assert text == split(log.checkpoint())[0]
    (cosig,) = [s for s in split(cosigned)[1] if s.name == "witness.example/w1"]
    assert cosignature_time(cosig) == NOW + 60
    state = witness.state()
    assert state is not None
    assert (state.size, state.root_hash, state.note) == (5, log.tree.root(), cosigned)
    assert state.cosigned_at == NOW + 60
    assert witness.state_file.read_text() == cosigned


def test_honest_growth_is_cosigned_with_a_proof_each_time(tmp_path: Path) -> None:
    log, witness = Log(3), witness_at(tmp_path / "w")
    witness.observe(log.checkpoint(), log.consistency)
    for grow, proof in ((4, (3, 7)), (0, None), (9, (7, 16)), (1, (16, 17))):
        log.proofs.clear()
        cosigned = witness.observe(log.grow(grow).checkpoint(), log.consistency)
        assert log.proofs == ([] if proof is None else [proof])
        open_note(cosigned, witness.verifier)
        state = witness.state()
        assert state is not None
        assert (state.size, state.root_hash) == (log.tree.size, log.tree.root())
        last = state.cosigned_at
    assert last == NOW + 302  # the clock's fifth reading, 302.5 s on, rounded down


def test_other_signatures_on_the_note_are_not_carried(tmp_path: Path) -> None:
    log, witness = Log(4), witness_at(tmp_path / "w")
    stranger = Signer.generate("witness.example/other", COSIGNATURE_V1)
    text = split(log.checkpoint())[0]
    note = log.checkpoint() + cosign(text, stranger, 1).line()
    cosigned = witness.observe(note, log.consistency)
    assert [s.name for s in split(cosigned)[1]] == [ORIGIN, "witness.example/w1"]


def test_an_empty_log_then_growth_needs_no_proof(tmp_path: Path) -> None:
    log, witness = Log(0), witness_at(tmp_path / "w")
    witness.observe(log.checkpoint(), log.consistency)
    witness.observe(log.grow(3).checkpoint(), log.consistency)
    assert log.proofs == []
    lying = sign(Checkpoint(ORIGIN, 0, leaf_hash(b"x")).text(), LOG_KEY)
    assert "empty tree" in refused(
        witness_at(tmp_path / "v"), lying, log.consistency, BadCheckpoint
    )


def test_state_survives_a_restart(tmp_path: Path) -> None:
    log = Log(6)
    first = witness_at(tmp_path / "w")
    cosigned = first.observe(log.checkpoint(), log.consistency)
    again = witness_at(tmp_path / "w")
    state = again.state()
    assert state is not None
    assert (state.size, state.note) == (6, cosigned)
    refused(again, log.checkpoint(4), log.consistency, Rollback)
    again.observe(log.grow(2).checkpoint(), log.consistency)
    assert log.proofs == [(6, 8)]


def test_run_once_reads_the_log_through_its_client(tmp_path: Path) -> None:
    log: LogClient = Log(2)
    witness = witness_at(tmp_path / "w")
    assert witness.run_once(log).startswith(f"{ORIGIN}\n2\n")


# -- refusals -------------------------------------------------------------------------------


def test_a_different_root_for_the_same_size_is_refused(tmp_path: Path) -> None:
    one, other = forked(4, 8, 8)
    witness = witness_at(tmp_path / "w")
    accepted = witness.observe(one.checkpoint(), one.consistency)
    with pytest.raises(Inconsistent) as caught:
        witness.observe(other.checkpoint(), other.consistency)
    detail = caught.value.detail
    assert "size 8" in detail
    assert base64.b64encode(one.tree.root()).decode() in detail
    assert base64.b64encode(other.tree.root()).decode() in detail
    assert caught.value.evidence == (accepted, other.checkpoint())
    assert caught.value.extra["old_size"] == caught.value.extra["new_size"] == 8
    refused(witness, other.checkpoint(), other.consistency, Inconsistent)


def test_a_rollback_is_refused(tmp_path: Path) -> None:
    log, witness = Log(10), witness_at(tmp_path / "w")
    witness.observe(log.checkpoint(), log.consistency)
    detail = refused(witness, log.checkpoint(9), log.consistency, Rollback)
    assert "size 9, smaller than size 10" in detail


def test_a_bad_log_signature_is_refused(tmp_path: Path) -> None:
    log, witness = Log(3), witness_at(tmp_path / "w")
    witness.observe(log.checkpoint(), log.consistency)
    impostor = Log(5, signer=Signer.generate(ORIGIN))  # same name, another key
    assert "no signature by the log key" in refused(
        witness, impostor.checkpoint(), log.consistency, BadSignature
    )
    good = log.grow(2).checkpoint()
    size_changed = good.replace(f"{ORIGIN}\n5\n", f"{ORIGIN}\n6\n")
    assert "does not verify" in refused(witness, size_changed, log.consistency, BadSignature)
    for malformed in (good.replace("\n\n", "\n"), "", good[:-1]):
        refused(witness, malformed, log.consistency, BadCheckpoint)
    unparsable = sign(f"{ORIGIN}\nfive\n{base64.b64encode(EMPTY_ROOT).decode()}\n", LOG_KEY)
    assert "malformed" in refused(witness, unparsable, log.consistency, BadCheckpoint)


def test_a_checkpoint_of_another_log_is_refused(tmp_path: Path) -> None:
    log, witness = Log(3), witness_at(tmp_path / "w")
    log.origin = "qustody.example/other"
    detail = refused(witness, log.checkpoint(), log.consistency, WrongOrigin)
    assert "'qustody.example/other'" in detail
    assert witness.state() is None


def _flip(node: bytes) -> bytes:
    return bytes([node[0] ^ 1]) + node[1:]


@pytest.mark.parametrize(
    ("bend", "error", "says"),
    [
        (lambda path: [_flip(path[0]), *path[1:]], Inconsistent, "does not extend"),
        (lambda path: path[::-1], Inconsistent, "does not extend"),
        (lambda path: path[:-1], BadProof, "needs exactly 5"),
        (lambda path: [*path, path[0]], BadProof, "needs exactly 5"),
        (lambda path: [], BadProof, "has 0 hashes"),
        (lambda path: [path[0][:31], *path[1:]], BadProof, "31 bytes"),
    ],
    ids=["forged", "reordered", "short", "long", "empty", "truncated-hash"],
)
def test_a_bent_consistency_proof_is_refused(
    tmp_path: Path, bend: Callable[[list[bytes]], list[bytes]], error: type[WitnessError], says: str
) -> None:
    log, witness = Log(5), witness_at(tmp_path / "w")
    witness.observe(log.checkpoint(), log.consistency)
    log.grow(6)
    assert len(log.tree.consistency_proof(5, 11)) == 5

    def bent(old: int, new: int) -> list[bytes]:
        return bend(log.consistency(old, new))

    assert says in refused(witness, log.checkpoint(), bent, error)


def test_a_proof_between_other_sizes_or_none_at_all_is_refused(tmp_path: Path) -> None:
    log, witness = Log(5), witness_at(tmp_path / "w")
    witness.observe(log.checkpoint(), log.consistency)
    log.grow(6)
    refused(witness, log.checkpoint(), lambda _old, _new: log.consistency(3, 11), Inconsistent)
    detail = refused(witness, log.checkpoint(), lambda _old, new: log.consistency(5, 40), BadProof)
    assert "no consistency proof from size 5 to 11" in detail
    witness.observe(log.checkpoint(), log.consistency)  # the honest proof still passes


# -- the state directory ------------------------------------------------------------------------


def test_the_state_directory_is_private_and_locked(tmp_path: Path) -> None:
    log, witness = Log(3), witness_at(tmp_path / "w", lock_wait=0.05)
    witness.observe(log.checkpoint(), log.consistency)
    assert (tmp_path / "w").stat().st_mode & 0o777 == 0o700
    assert witness.state_file.stat().st_mode & 0o777 == 0o600
    fd = os.open(tmp_path / "w" / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        detail = refused(witness, log.grow(1).checkpoint(), log.consistency, WitnessBusy)
        assert "one witness per state directory" in detail
    finally:
        os.close(fd)
    witness.observe(log.checkpoint(), log.consistency)
    (tmp_path / "open").mkdir(mode=0o755)
    os.chmod(tmp_path / "open", 0o755)  # noqa: S103 (the directory must be open to others)
    with pytest.raises(ConfigurationError, match="chmod 700"):
        witness_at(tmp_path / "open")


def test_witnesses_sharing_a_directory_take_turns(tmp_path: Path) -> None:
    log = Log(1)
    witness_at(tmp_path / "w").observe(log.checkpoint(), log.consistency)
    notes = [log.grow(1).checkpoint() for _ in range(24)]  # sizes 2 to 25, shown out of order
    outcomes: list[str] = []

    def show(note: str) -> None:
        try:  # each thread has its own witness, lock file descriptor and clock
            witness_at(tmp_path / "w").observe(note, log.tree.consistency_proof)
            outcomes.append("cosigned")
        except Rollback:
            outcomes.append("rollback")

    threads = [threading.Thread(target=show, args=(n,)) for n in notes[::2] + notes[1::2]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(outcomes) == 24
    # Each observe reads, checks and writes under the lock, so the largest tree,
    # which no other can roll back, is the one kept whatever the order.
    state = witness_at(tmp_path / "w").state()
    assert state is not None
    assert state.size == 25


def test_a_tampered_state_is_refused(tmp_path: Path) -> None:
    log, witness = Log(3), witness_at(tmp_path / "w")
    witness.observe(log.checkpoint(), log.consistency)
    stored = witness.state_file.read_text()
    witness.state_file.write_text(stored.replace(f"{ORIGIN}\n3\n", f"{ORIGIN}\n2\n"))
    with pytest.raises(WitnessStateError, match="changed outside the witness"):
        witness.state()
    with pytest.raises(WitnessStateError):
        witness.observe(log.grow(1).checkpoint(), log.consistency)


def test_keys_of_the_wrong_type_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="0x04"):
        Witness(tmp_path, Signer.generate("w"), LOG_KEY.verifier, ORIGIN)
    cosigner = Signer.generate("w", COSIGNATURE_V1)
    with pytest.raises(ConfigurationError, match="0x01"):
        Witness(tmp_path, cosigner, cosigner.verifier, ORIGIN)


def test_errors_share_the_qustody_root() -> None:
    assert issubclass(Inconsistent, QustodyError)
    assert issubclass(BadProof, ValueError)
    assert {Rollback.code, Inconsistent.code, BadSignature.code} == {
        "rollback",
        "inconsistent_checkpoint",
        "bad_log_signature",
    }


# -- split views ----------------------------------------------------------------------------------


def test_a_split_view_is_caught(tmp_path: Path) -> None:
    h1, h2 = forked(6, 9, 12)
    a, b = (
        witness_at(tmp_path / "a", "witness.example/a"),
        witness_at(tmp_path / "b", "witness.example/b"),
    )
    # Each witness alone sees an honest-looking log, and cosigns.
    for witness, log in ((a, h1), (b, h2)):
        witness.observe(log.checkpoint(5), log.consistency)
        witness.observe(log.checkpoint(), log.consistency)
    notes = [stored(a), stored(b)]
    keys = [a.verifier, b.verifier]
    # Gossip: the two cosigned checkpoints cannot both be true.
    # Whichever history serves the proof, none links them.
    for proofs, says in ((h2.consistency, "does not extend"), (h1.consistency, "no consistency")):
        (conflict,) = compare(notes, LOG_KEY.verifier, keys, proofs)
        assert (conflict.first.checkpoint.size, conflict.second.checkpoint.size) == (9, 12)
        assert conflict.first.witnesses == ("witness.example/a",)
        assert conflict.second.witnesses == ("witness.example/b",)
        assert says in str(conflict)
    # Witness A, shown the other history, refuses it.
    detail = refused(a, h2.checkpoint(), h2.consistency, Inconsistent)
    assert "size 12" in detail
    assert "size 9" in detail
    # Without a proof source, only a same-size fork is visible.
    assert compare(notes, LOG_KEY.verifier, keys) == []
    c = witness_at(tmp_path / "c", "witness.example/c")
    c.observe(h2.checkpoint(9), h2.consistency)
    notes.append(stored(c))
    (conflict,) = compare(notes, LOG_KEY.verifier, [*keys, c.verifier])
    assert "two different roots for tree size 9" in conflict.reason


def test_honest_witnesses_agree(tmp_path: Path) -> None:
    log = Log(7)
    witnesses = [witness_at(tmp_path / n, f"witness.example/{n}") for n in "abc"]
    notes = [witnesses[0].observe(log.checkpoint(), log.consistency)]
    notes.append(witnesses[1].observe(log.checkpoint(), log.consistency))
    notes.append(witnesses[2].observe(log.grow(5).checkpoint(), log.consistency))
    keys = [w.verifier for w in witnesses]
    assert compare(notes, LOG_KEY.verifier, keys, log.consistency) == []
    assert log.proofs == [(7, 12)]  # one proof for the one pair of sizes


def test_compare_refuses_notes_that_are_no_evidence(tmp_path: Path) -> None:
    log = Log(4)
    witness = witness_at(tmp_path / "w")
    cosigned = witness.observe(log.checkpoint(), log.consistency)
    stranger = witness_at(tmp_path / "s", "witness.example/stranger")
    with pytest.raises(BadCheckpoint, match="note 1 carries no cosignature by a known witness"):
        compare([cosigned], LOG_KEY.verifier, [stranger.verifier])
    with pytest.raises(BadCheckpoint, match="note 2"):
        compare([cosigned, log.checkpoint()], LOG_KEY.verifier, [witness.verifier])
    forged = cosigned.replace(f"{ORIGIN}\n4\n", f"{ORIGIN}\n3\n")
    with pytest.raises(BadSignature):
        compare([forged], LOG_KEY.verifier, [witness.verifier])
    other = Log(4)
    other.origin = "qustody.example/other"
    text = split(other.checkpoint())[0]
    elsewhere = other.checkpoint() + cosign(text, KEYS["witness.example/w1"], NOW).line()
    with pytest.raises(WrongOrigin):
        compare([cosigned, elsewhere], LOG_KEY.verifier, [witness.verifier])
    with pytest.raises(ConfigurationError):
        compare([cosigned], LOG_KEY.verifier, [])


# -- the HTTP client -------------------------------------------------------------------------------


def _gateway(log: Log, seen: list[httpx.Request]) -> httpx.MockTransport:
    """The two endpoints of a Qustody gateway, answered from ``log``."""

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/audit/checkpoint":
            return httpx.Response(200, text=log.checkpoint())
        if request.url.path == "/v1/audit/proofs/consistency":
            old, new = int(request.url.params["from"]), int(request.url.params["to"])
            path = [base64.b64encode(h).decode() for h in log.consistency(old, new)]
            return httpx.Response(200, json={"from": old, "to": new, "path": path})
        return httpx.Response(404)

    return httpx.MockTransport(answer)


def test_the_http_client_follows_the_gateway_endpoints(tmp_path: Path) -> None:
    log, seen = Log(3), list[httpx.Request]()
    witness = witness_at(tmp_path / "w")
    with HttpLogClient(
        "https://gw.example", token="s3cret", transport=_gateway(log, seen)
    ) as client:
        assert "s3cret" not in repr(client)
        witness.run_once(client)
        log.grow(4)
        witness.run_once(client)
    assert [r.url.path for r in seen][-2:] == [
        "/v1/audit/checkpoint",
        "/v1/audit/proofs/consistency",
    ]
    assert dict(seen[-1].url.params) == {"from": "3", "to": "7"}
    assert {r.headers["authorization"] for r in seen} == {"Bearer s3cret"}


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"from": 3, "to": 8, "path": []}',
        b'{"from": true, "to": 7, "path": []}',
        b'{"from": 3, "to": 7, "path": [1]}',
        b'{"from": 3, "to": 7, "path": ["not base64!"]}',
        b'{"from": 3, "to": 7}',
    ],
)
def test_the_http_client_refuses_malformed_proofs(body: bytes) -> None:
    transport = httpx.MockTransport(lambda _request: httpx.Response(200, content=body))
    with (
        HttpLogClient("https://gw.example", transport=transport) as client,
        pytest.raises(BadProof),
    ):
        client.consistency(3, 7)


def test_the_http_client_reports_an_unreachable_or_refusing_log() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    for transport, says in (
        (httpx.MockTransport(down), "connection refused"),
        (httpx.MockTransport(lambda _r: httpx.Response(401)), "answered 401"),
        (httpx.MockTransport(lambda _r: httpx.Response(200, content=b"x" * (2 << 20))), "larger"),
    ):
        with (
            HttpLogClient("https://gw.example", transport=transport) as client,
            pytest.raises(LogUnreachable, match=says),
        ):
            client.latest_checkpoint()
    bad = httpx.MockTransport(lambda _r: httpx.Response(200, content=b"\xff\n"))
    with HttpLogClient("https://gw.example", transport=bad) as client, pytest.raises(BadCheckpoint):
        client.latest_checkpoint()


def test_proofs_round_trip_through_json() -> None:
    log = Log(9)
    seen: list[httpx.Request] = []
    with HttpLogClient("https://gw.example", transport=_gateway(log, seen)) as client:
        assert client.consistency(4, 9) == log.tree.consistency_proof(4, 9)

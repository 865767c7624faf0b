"""Signed notes, checkpoints and cosignatures against the Go ``sumdb/note``
reference vector (Ed25519 is deterministic, so signing must reproduce it byte
for byte) and against every way a note can be bent."""

from __future__ import annotations

import base64

import pytest

from qustody.audit.merkle import EMPTY_ROOT
from qustody.audit.note import (
    COSIGNATURE_V1,
    Checkpoint,
    NoteError,
    Signer,
    Verifier,
    cosign,
    cosignature_time,
    open_note,
    sign,
    split,
)

# golang.org/x/mod/sumdb/note: its documented example key pair and signed note.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n\u2014 PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def test_reproduces_the_go_reference_note() -> None:
    signer = Signer.parse(GO_SKEY)
    assert signer.verifier.encode() == GO_VKEY
    assert signer.encode() == GO_SKEY
    assert Verifier.parse(GO_VKEY).key_id.hex() == "c74f20a3"
    assert sign(GO_TEXT, signer) == GO_NOTE
    text, verified = open_note(GO_NOTE, Verifier.parse(GO_VKEY))
    assert text == GO_TEXT
    assert [v.name for v in verified] == ["PeterNeumann"]
    assert "AYEK" not in repr(signer)  # the private key never shows


def test_bent_notes_are_refused() -> None:
    verifier = Verifier.parse(GO_VKEY)
    for bent in (
        GO_NOTE.replace("cryptography", "cryptographY"),  # text changed
        GO_NOTE.replace("x08go", "x08gp"),  # signature changed
        GO_NOTE.replace("\n\n", "\n"),  # no blank line
        GO_NOTE[:-1],  # no final newline
        GO_NOTE.replace("\u2014", "-"),  # not an em dash
        GO_NOTE.replace("problem,", "problem,\x07"),  # a control character
    ):
        with pytest.raises(NoteError):
            open_note(bent, verifier)


def test_unknown_keys_are_ignored_but_one_known_key_is_needed() -> None:
    other = Signer.generate("example.com/other")
    both = sign(GO_TEXT, Signer.parse(GO_SKEY), other)
    assert len(split(both)[1]) == 2
    _, verified = open_note(both, Verifier.parse(GO_VKEY))
    assert [v.name for v in verified] == ["PeterNeumann"]
    with pytest.raises(NoteError, match="known key"):
        open_note(GO_NOTE, other.verifier)
    # Same name, different key: an unknown key, ignored, not a failure of the known one.
    impostor = Signer.generate("PeterNeumann")
    _, verified = open_note(sign(GO_TEXT, impostor, Signer.parse(GO_SKEY)), Verifier.parse(GO_VKEY))
    assert len(verified) == 1


def test_bad_keys_are_refused() -> None:
    for bad in (
        GO_VKEY.replace("c74f20a3", "c74f20a4"),  # key ID does not match the key
        GO_VKEY.replace("ARpc", "Apc"),  # not base64 of 33 bytes
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # a space
        "",
    ):
        with pytest.raises(NoteError):
            Verifier.parse(bad)
    with pytest.raises(NoteError):
        Signer.parse(GO_SKEY.replace("PRIVATE+KEY+", ""))


def test_checkpoints_round_trip_and_refuse_malformed_text() -> None:
    checkpoint = Checkpoint("qustody.example/audit", 8, EMPTY_ROOT)
    text = checkpoint.text()
    assert text == f"qustody.example/audit\n8\n{base64.b64encode(EMPTY_ROOT).decode()}\n"
    assert Checkpoint.parse(text) == checkpoint
    assert Checkpoint.parse(text + "ext\n").extensions == ("ext",)
    root = base64.b64encode(EMPTY_ROOT).decode()
    for bad in (
        f"origin\n08\n{root}\n",  # leading zero
        f"origin\n-1\n{root}\n",
        "origin\n8\nAAAA\n",  # not 32 bytes
        f"origin\n8\n{root}",  # no final newline
        f"\n8\n{root}\n",  # empty origin
        "origin\n8\n",
    ):
        with pytest.raises(NoteError):
            Checkpoint.parse(bad)


def test_cosignatures_sign_the_time_and_the_checkpoint() -> None:
    log = Signer.generate("qustody.example/audit")
    witness = Signer.generate("witness.example/w1", COSIGNATURE_V1)
    text = Checkpoint("qustody.example/audit", 3, EMPTY_ROOT).text()
    cosig = cosign(text, witness, 1_700_000_000)
    assert cosignature_time(cosig) == 1_700_000_000
    note = sign(text, log) + cosig.line()
    _, verified = open_note(note, log.verifier, witness.verifier)
    assert {v.name for v in verified} == {log.name, witness.name}
    # The witness's key is not a log key: a 0x01 verifier of it does not match the ID.
    plain = Verifier(witness.name, 0x01, witness.private_key.public_key())
    assert plain.key_id != witness.verifier.key_id
    # A cosignature moved to another checkpoint, or with its time changed, fails.
    other = Checkpoint("qustody.example/audit", 4, EMPTY_ROOT).text()
    with pytest.raises(NoteError):
        open_note(sign(other, log) + cosig.line(), witness.verifier)
    blob = bytearray(cosig.signature)
    blob[7] ^= 1
    moved = type(cosig)(cosig.name, cosig.key_id, bytes(blob))
    with pytest.raises(NoteError):
        open_note(sign(text, log) + moved.line(), witness.verifier)
    with pytest.raises(NoteError):
        cosign(text, log, 1)  # a log key does not cosign

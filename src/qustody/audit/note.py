"""Signed notes, checkpoints and cosignatures, as the C2SP specifications define them.

- A *signed note* (c2sp.org/signed-note) is UTF-8 text ending in a newline,
  a blank line, then signature lines ``— <key name> base64(key ID || signature)``.
  Qustody signs with Ed25519 (signature type ``0x01``): the key ID is the
  first four bytes of ``SHA-256(name || "\\n" || 0x01 || public key)``.
- A *checkpoint* (c2sp.org/tlog-checkpoint) is a note whose text is the log's
  origin, its tree size and the base64 root hash, one per line.
- A *cosignature* (c2sp.org/tlog-cosignature, Ed25519 type ``0x04``) is a
  witness's timestamped signature over ``cosignature/v1\\ntime <t>\\n`` and the
  checkpoint text: "as of time t, this is the largest consistent tree I saw".

Keys travel as *verifier keys* (``<name>+<hex key ID>+base64(type || key)``)
and signer keys (``PRIVATE+KEY+<name>+<hex key ID>+base64(type || seed)``),
the encodings the Go ``sumdb/note`` package and the transparency-dev tools use.

Pure functions over :mod:`cryptography`'s Ed25519: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from qustody.audit.merkle import HASH_SIZE

ED25519 = 0x01
COSIGNATURE_V1 = 0x04
_DASH = "\u2014 "
MAX_SIGNATURES = 16
MAX_NOTE_BYTES = 1 << 20


class NoteError(ValueError):
    """A note, key or checkpoint is malformed, or its signatures do not verify."""


def key_id(name: str, kind: int, public_key: bytes) -> bytes:
    """The 4-byte key ID: ``SHA-256(name || "\\n" || kind || public key)[:4]``."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([kind]) + public_key).digest()[:4]


def _check_name(name: str) -> None:
    if not name or any(c.isspace() or c == "+" for c in name):
        raise NoteError(f"key name {name[:80]!r} is empty or has a space or '+'")


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class Verifier:
    """A public key that can check signatures on notes: name, type and key."""

    name: str
    kind: int
    public_key: Ed25519PublicKey = field(repr=False)

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.kind, _raw(self.public_key))

    def encode(self) -> str:
        """The verifier key string (``name+hexid+base64``)."""
        material = base64.b64encode(bytes([self.kind]) + _raw(self.public_key)).decode()
        return f"{self.name}+{self.key_id.hex()}+{material}"

    @classmethod
    def parse(cls, vkey: str) -> Verifier:
        """A verifier key string, ``name+hexid+base64(type || public key)``."""
        name, wanted, kind, key = _parse_key(vkey, "verifier")
        verifier = cls(name, kind, Ed25519PublicKey.from_public_bytes(key))
        if verifier.key_id != wanted:
            raise NoteError(f"verifier key for {name!r} has a key ID that does not match its key")
        return verifier


def _parse_key(encoded: str, what: str) -> tuple[str, bytes, int, bytes]:
    """``name+hexid+base64(type || 32 bytes)``: the name, key ID, type and key bytes."""
    name, _, rest = encoded.partition("+")
    hex_id, _, material = rest.partition("+")
    _check_name(name)
    try:
        raw = base64.b64decode(material, validate=True)
        wanted = bytes.fromhex(hex_id)
    except (binascii.Error, ValueError):
        raise NoteError(f"the {what} key for {name!r} is not name+hex+base64") from None
    if len(wanted) != 4 or len(raw) != 33 or raw[0] not in (ED25519, COSIGNATURE_V1):
        raise NoteError(f"the {what} key for {name!r} is not an Ed25519 key of type 0x01 or 0x04")
    return name, wanted, raw[0], raw[1:]


@dataclass(frozen=True)
class Signer:
    """A private Ed25519 key that signs notes (``kind`` 0x01) or cosigns (0x04).
    Its ``repr`` never shows the key."""

    name: str
    kind: int
    private_key: Ed25519PrivateKey = field(repr=False)

    def __post_init__(self) -> None:
        _check_name(self.name)
        if self.kind not in (ED25519, COSIGNATURE_V1):
            raise NoteError(f"signature type {self.kind:#04x} is not supported")

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.name, self.kind, self.private_key.public_key())

    def encode(self) -> str:
        """The signer key string (``PRIVATE+KEY+name+hexid+base64``): a secret."""
        seed = self.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        material = base64.b64encode(bytes([self.kind]) + seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier.key_id.hex()}+{material}"

    @classmethod
    def generate(cls, name: str, kind: int = ED25519) -> Signer:
        return cls(name, kind, Ed25519PrivateKey.generate())

    @classmethod
    def parse(cls, skey: str) -> Signer:
        """A signer key string, ``PRIVATE+KEY+name+hexid+base64(type || seed)``."""
        prefix = "PRIVATE+KEY+"
        if not skey.startswith(prefix):
            raise NoteError("a signer key starts with PRIVATE+KEY+")
        name, wanted, kind, seed = _parse_key(skey[len(prefix) :], "signer")
        signer = cls(name, kind, Ed25519PrivateKey.from_private_bytes(seed))
        if signer.verifier.key_id != wanted:
            raise NoteError(f"signer key for {name!r} has a key ID that does not match its key")
        return signer


# -- notes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    name: str
    key_id: bytes
    signature: bytes  # after the key ID (for cosignatures: timestamp || signature)

    def line(self) -> str:
        return f"{_DASH}{self.name} {base64.b64encode(self.key_id + self.signature).decode()}\n"


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("a note's text must end with a newline")
    if any(c < " " and c != "\n" for c in text):
        raise NoteError("a note must not contain control characters other than newline")


def sign(text: str, *signers: Signer) -> str:
    """``text`` as a signed note with an Ed25519 signature of each signer."""
    _check_text(text)
    lines = []
    for signer in signers:
        if signer.kind != ED25519:
            raise NoteError("notes are signed with type 0x01 keys; use cosign() for 0x04")
        sig = signer.private_key.sign(text.encode())
        lines.append(Signature(signer.name, signer.verifier.key_id, sig).line())
    return text + "\n" + "".join(lines)


def split(note: str) -> tuple[str, list[Signature]]:
    """The text and the signature lines of ``note``, parsed but not verified."""
    if len(note.encode()) > MAX_NOTE_BYTES:
        raise NoteError(f"the note is larger than {MAX_NOTE_BYTES} bytes")
    cut = note.rfind("\n\n")
    if cut < 0:
        raise NoteError("the note has no blank line before its signatures")
    text, block = note[: cut + 1], note[cut + 2 :]
    _check_text(text)
    if not block.endswith("\n"):
        raise NoteError("the note's last signature line must end with a newline")
    signatures: list[Signature] = []
    for line in block[:-1].split("\n"):
        if not line.startswith(_DASH):
            raise NoteError("a signature line must start with an em dash and a space")
        name, _, encoded = line[len(_DASH) :].partition(" ")
        _check_name(name)
        try:
            blob = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise NoteError(f"the signature of {name!r} is not base64") from None
        if len(blob) < 5:
            raise NoteError(f"the signature of {name!r} is too short")
        signatures.append(Signature(name, blob[:4], blob[4:]))
    if not signatures or len(signatures) > MAX_SIGNATURES:
        raise NoteError(f"a note carries 1 to {MAX_SIGNATURES} signatures")
    return text, signatures


def _matches(sig: Signature, verifier: Verifier) -> bool:
    return sig.name == verifier.name and sig.key_id == verifier.key_id


def open_note(note: str, *verifiers: Verifier) -> tuple[str, list[Verifier]]:
    """The text of ``note`` and the known keys whose signature verified.

    Signatures by unknown keys are ignored; a signature by a known key that
    fails to verify rejects the whole note; so does a note no known key signed.
    """
    text, signatures = split(note)
    verified: list[Verifier] = []
    for sig in signatures:
        for verifier in verifiers:
            if not _matches(sig, verifier):
                continue
            if verifier.kind == ED25519:
                _check(verifier, sig.signature, text.encode())
            else:
                _check_cosignature(verifier, sig.signature, text)
            verified.append(verifier)
    if not verified:
        raise NoteError("no signature on the note is by a known key")
    return text, verified


def _check(verifier: Verifier, signature: bytes, message: bytes) -> None:
    try:
        verifier.public_key.verify(signature, message)
    except InvalidSignature:
        raise NoteError(f"the signature of {verifier.name!r} does not verify") from None


# -- cosignatures (c2sp.org/tlog-cosignature, Ed25519) ----------------------------------------


def cosigned_message(text: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n{text}".encode()


def cosign(text: str, signer: Signer, timestamp: int) -> Signature:
    """A witness's cosignature of checkpoint ``text`` at ``timestamp`` (POSIX seconds)."""
    if signer.kind != COSIGNATURE_V1:
        raise NoteError("cosignatures are made with type 0x04 keys")
    if not 0 <= timestamp < 1 << 63:
        raise NoteError("a cosignature's timestamp must be between 0 and 2**63 - 1")
    _check_text(text)
    sig = signer.private_key.sign(cosigned_message(text, timestamp))
    return Signature(signer.name, signer.verifier.key_id, struct.pack(">Q", timestamp) + sig)


def cosignature_time(sig: Signature) -> int:
    return _timestamp(sig.name, sig.signature)


def _timestamp(name: str, blob: bytes) -> int:
    if len(blob) != 8 + 64:
        raise NoteError(f"the cosignature of {name!r} is not a timestamp and a signature")
    return int(struct.unpack(">Q", blob[:8])[0])


def _check_cosignature(verifier: Verifier, blob: bytes, text: str) -> None:
    timestamp = _timestamp(verifier.name, blob)
    _check(verifier, blob[8:], cosigned_message(text, timestamp))


# -- checkpoints (c2sp.org/tlog-checkpoint) ----------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode()]
        return "\n".join([*lines, *self.extensions]) + "\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        _check_text(text)
        lines = text[:-1].split("\n")
        if len(lines) < 3 or any(not line for line in lines):
            raise NoteError("a checkpoint is an origin, a size and a root hash, non-empty lines")
        origin, size_line, root_line, *extensions = lines
        if not size_line.isdigit() or (size_line != "0" and size_line.startswith("0")):
            raise NoteError(f"the checkpoint size {size_line[:32]!r} is not a decimal number")
        try:
            root = base64.b64decode(root_line, validate=True)
        except binascii.Error:
            raise NoteError("the checkpoint root hash is not base64") from None
        if len(root) != HASH_SIZE:
            raise NoteError(f"the checkpoint root hash is not {HASH_SIZE} bytes")
        return cls(origin, int(size_line), root, tuple(extensions))

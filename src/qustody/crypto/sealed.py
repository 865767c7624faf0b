"""Sealed exports: a file that only one tenant's private key can open.

Result bundles and audit exports leave Qustody sealed to a public key that
the tenant registered. Sealing is HPKE (RFC 9180) in base mode with the
X-Wing KEM, so the gateway needs no secret to seal, keeps no key that could
open an export later, and the export can cross any untrusted channel.

Why X-Wing
----------
An attacker can copy an export today and keep it ("harvest now, decrypt
later"). Research data and results must stay confidential for years, often
decades, which is longer than classical public-key cryptography is expected
to last: the first quantum computer big enough to run Shor's algorithm
recovers an X25519 or RSA key from its public half and opens every
recording made under it, retroactively. Nothing done after the recording
can protect it, so the key exchange must already resist quantum attack
when the export is made.

X-Wing (draft-connolly-cfrg-xwing-kem; HPKE KEM id ``0x647a``, also called
MLKEM768-X25519) combines ML-KEM-768 (FIPS 203, a lattice KEM designed to
resist quantum attack) with X25519 (RFC 7748) and hashes both shared
secrets together with SHA3-256. It is a hybrid: an export stays
confidential as long as *either* part holds, so a future break of the
young ML-KEM costs nothing compared with X25519 alone, and a quantum
computer breaking X25519 still faces ML-KEM.

Suite: KEM X-Wing (``0x647a``), KDF HKDF-SHA256 (``0x0001``), AEAD
AES-256-GCM (``0x0002``). AES-256-GCM over ChaCha20-Poly1305: both are
single-message here (HPKE derives a fresh key and nonce for every export,
so nonce reuse cannot happen), both have a 256-bit key, which keeps a wide
margin against Grover-style quantum key search; AES-256-GCM is the
FIPS-approved one (NIST SP 800-38D; also in CNSA 2.0), is the cipher the
rest of Qustody uses (:mod:`qustody.crypto.envelope`), and is
hardware-accelerated on the servers that seal.

Keys
----
The private key is the 32-byte X-Wing decapsulation key of the draft
(section 5.2): ``SHAKE256(seed, 96 bytes)`` gives the 64-byte ML-KEM-768
seed ``d || z`` and the 32-byte X25519 private key. The public key is the
1216-byte X-Wing encapsulation key: the ML-KEM-768 encapsulation key (1184
bytes) then the X25519 public key (32 bytes). Both are the encodings of the
draft, so other X-Wing implementations can use the same keys.

Public key text (what a tenant admin uploads)::

    qustody-xwing-pub:<base64url of the 1216 bytes, no padding>

Private key file (written 0600, never replaced; one line of JSON)::

    {"fingerprint":"<32 hex>","format":"qustody-xwing-private-key",
     "kem":"X-Wing","seed":"<base64url, 32 bytes, no padding>","version":1}

The fingerprint is the first 16 bytes of SHA-256 over the 1216 public key
bytes, as 32 lowercase hex digits (128 bits: enough that nobody can make a
second key with the same fingerprint). It names a key in messages, in the
sealed file's header and for comparing an uploaded key by eye.

Sealed file, format 1 (all of it bytes; ``\\n`` is one 0x0A byte)::

    qustody-sealed/1\\n
    <header: canonical JSON, ASCII, one line>\\n
    <enc: the 1120-byte X-Wing ciphertext><AES-256-GCM ciphertext and 16-byte tag>

The header is compact JSON with sorted keys and no spaces, ASCII only
(``json.dumps(h, sort_keys=True, separators=(",", ":"), ensure_ascii=True)``)
with exactly these fields::

    {"content_type": "application/zip",            # type/subtype, no parameters
     "created_at": "2026-05-01T12:00:00Z",         # UTC, whole seconds
     "metadata": {"job_id": "job_…"},              # at most 64 string pairs
     "recipient": "<fingerprint of the public key it was sealed to>",
     "suite": {"aead": "0x0002", "kdf": "0x0001", "kem": "0x647a"}}

The part after the header is the output of HPKE single-shot ``Seal`` in base
mode (RFC 9180 section 6.1): ``enc || ct``, with ``info`` = every byte
before ``enc`` (the magic line, the header line and both newlines) and
empty ``aad``. Because ``info`` enters the key schedule, changing any
header byte, including the recipient and the format line, makes the file
fail to open, exactly like changing a ciphertext byte.

The header is authenticated but **not encrypted**: anyone holding the file
can read the content type, time and metadata, so metadata must never hold
anything confidential. It is also not authenticated *until* the file opens:
:func:`read_sealed_header` shows it for choosing a key, and a damaged
recipient field can make an opener name the wrong key.

Limits: the plaintext is at most :data:`MAX_PLAINTEXT_BYTES` (256 MiB) and
the header line at most :data:`MAX_HEADER_BYTES` (64 KiB). Sealing and
opening hold the whole export in memory (plaintext plus ciphertext), so the
limit bounds a worker's memory; larger exports must be split. It is far
below AES-GCM's own per-message limit (about 64 GiB).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn, final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from qustody.crypto.files import check_private, create_private
from qustody.crypto.interfaces import KeyMaterial
from qustody.domain.errors import InvalidRequest, QustodyError

FORMAT_VERSION = 1
MAGIC = b"qustody-sealed/1\n"
_MAGIC_PREFIX = b"qustody-sealed/"
_MAGIC_LINE_RE = re.compile(rb"qustody-sealed/([0-9]{1,9})\n")

PUBLIC_KEY_PREFIX = "qustody-xwing-pub:"
PRIVATE_KEY_FORMAT = "qustody-xwing-private-key"
PRIVATE_KEY_VERSION = 1

#: HPKE identifiers (IANA "Hybrid Public Key Encryption" registry).
KEM_ID = 0x647A  # X-Wing (MLKEM768-X25519)
KDF_ID = 0x0001  # HKDF-SHA256
AEAD_ID = 0x0002  # AES-256-GCM
#: The header's ``suite`` field, the only one format 1 allows.
HPKE_SUITE_IDS: Mapping[str, str] = MappingProxyType(
    {"aead": f"0x{AEAD_ID:04x}", "kdf": f"0x{KDF_ID:04x}", "kem": f"0x{KEM_ID:04x}"}
)

SEED_BYTES = 32
PUBLIC_KEY_BYTES = 1216
_MLKEM_PUBLIC_BYTES = 1184
ENC_BYTES = 1120
TAG_BYTES = 16
FINGERPRINT_HEX_CHARS = 32

MAX_PLAINTEXT_BYTES = 256 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
#: The largest file :func:`open_sealed` reads.
MAX_SEALED_BYTES = len(MAGIC) + MAX_HEADER_BYTES + 1 + ENC_BYTES + MAX_PLAINTEXT_BYTES + TAG_BYTES
MAX_METADATA_ENTRIES = 64
MAX_METADATA_VALUE_CHARS = 1024
_MAX_PRIVATE_KEY_FILE_BYTES = 4096

_CONTENT_TYPE_RE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
)
_METADATA_KEY_RE = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CREATED_AT_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_FINGERPRINT_RE = re.compile(rf"[0-9a-f]{{{FINGERPRINT_HEX_CHARS}}}")
_BASE64URL_RE = re.compile(r"[A-Za-z0-9_-]*")
_WHITESPACE_RE = re.compile(r"\s+")
_HEADER_FIELDS = frozenset({"content_type", "created_at", "metadata", "recipient", "suite"})
_KEY_FILE_FIELDS = frozenset({"fingerprint", "format", "kem", "seed", "version"})

_HPKE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


class SealedExportError(QustodyError):
    """Base of the errors of sealed exports."""

    code = "sealed_export_error"
    status = 422
    title = "Sealed export error"


class SealedExportWrongKey(SealedExportError):
    """The export was sealed to another public key than the private key given."""

    code = "sealed_export_wrong_key"
    title = "Sealed export is for another key"

    def __init__(self, sealed_for: str, key_given: str) -> None:
        super().__init__(
            f"this export was sealed for the key with fingerprint {sealed_for}, but the "
            f"private key given has fingerprint {key_given}: open it with the private key "
            f"whose fingerprint is {sealed_for}",
            extra={"sealed_for": sealed_for, "key_given": key_given},
        )
        self.sealed_for = sealed_for
        self.key_given = key_given


class SealedExportCorrupt(SealedExportError):
    """The file is not a sealed export, or was changed or damaged after sealing.

    A failed integrity check gets the same message whatever was changed.
    """

    code = "sealed_export_corrupt"
    title = "Sealed export damaged"

    def __init__(self, reason: str = "it was changed or damaged after it was sealed") -> None:
        super().__init__(
            f"the sealed export cannot be opened: {reason}. Nothing of its content was "
            "released; download the export again or ask for a new one"
        )


class SealedExportUnsupportedVersion(SealedExportError):
    """The file is a sealed export of a format this version cannot read."""

    code = "sealed_export_unsupported_version"
    title = "Sealed export format not supported"

    def __init__(self, version: int) -> None:
        super().__init__(
            f"the export is in sealed format {version}; this version of Qustody reads "
            f"format {FORMAT_VERSION} only: upgrade Qustody to open it",
            extra={"version": version, "supported": FORMAT_VERSION},
        )
        self.version = version


class SealedExportTooLarge(SealedExportError):
    """The export exceeds what can be sealed or opened in one piece."""

    code = "sealed_export_too_large"
    status = 413
    title = "Sealed export too large"

    def __init__(self, size: int, limit: int, what: str) -> None:
        super().__init__(
            f"the {what} is {size} bytes; at most {limit} bytes are allowed: "
            "export a smaller selection or split it into several exports",
            extra={"size": size, "limit": limit},
        )


class SealedExportInvalidKey(SealedExportError):
    """A public key text or private key file that cannot be used."""

    code = "sealed_export_invalid_key"
    title = "Invalid sealed-export key"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail, field=field)


# --------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------


def key_fingerprint(public_key_bytes: bytes) -> str:
    """The fingerprint of a 1216-byte X-Wing public key: 32 hex digits."""
    return hashlib.sha256(public_key_bytes).hexdigest()[:FINGERPRINT_HEX_CHARS]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes | None:
    """Decode unpadded (or padded) base64url; None when it is not base64url."""
    text = text.rstrip("=")
    if not _BASE64URL_RE.fullmatch(text) or len(text) % 4 == 1:
        return None
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def _invalid_public_key(problem: str) -> SealedExportInvalidKey:
    return SealedExportInvalidKey(
        f"public_key {problem}; paste the whole line that `keygen` printed, which starts "
        f"with {PUBLIC_KEY_PREFIX!r}",
        field="public_key",
    )


@final
class XWingPublicKey:
    """A validated X-Wing public key (the recipient of sealed exports).

    Build one with :meth:`from_text` (what a tenant uploads) or
    :meth:`from_bytes`; both refuse anything that is not a usable key.
    """

    __slots__ = ("_fingerprint", "_hpke_key", "_raw")

    def __init__(self, raw: bytes, hpke_key: hpke.MLKEM768X25519PublicKey) -> None:
        self._raw = raw
        self._hpke_key = hpke_key
        self._fingerprint = key_fingerprint(raw)

    @classmethod
    def from_bytes(cls, raw: bytes) -> XWingPublicKey:
        """Parse the 1216-byte encapsulation key (ML-KEM-768 key then X25519 key)."""
        if len(raw) != PUBLIC_KEY_BYTES:
            raise _invalid_public_key(
                f"decodes to {len(raw)} bytes, but an X-Wing public key is "
                f"{PUBLIC_KEY_BYTES} bytes (was it cut off while copying?)"
            )
        try:
            # FIPS 203 section 7.2 encapsulation key check happens here.
            mlkem_key = mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM_PUBLIC_BYTES])
        except ValueError:
            raise _invalid_public_key(
                "is not a valid X-Wing public key (its ML-KEM-768 part fails the FIPS 203 "
                "encapsulation key check)"
            ) from None
        x_key = x25519.X25519PublicKey.from_public_bytes(raw[_MLKEM_PUBLIC_BYTES:])
        try:
            # A low-order X25519 point gives an all-zero shared secret; refuse it now
            # rather than at the first export.
            x25519.X25519PrivateKey.generate().exchange(x_key)
        except ValueError:
            raise _invalid_public_key(
                "is not a valid X-Wing public key (its X25519 part is a low-order point)"
            ) from None
        return cls(bytes(raw), hpke.MLKEM768X25519PublicKey(mlkem_key, x_key))

    @classmethod
    def from_text(cls, text: str) -> XWingPublicKey:
        """Parse ``qustody-xwing-pub:<base64url>``.

        Whitespace around the text and line breaks inside it (from mail or a
        terminal) are ignored.
        """
        compact = _WHITESPACE_RE.sub("", text)
        if PRIVATE_KEY_FORMAT in compact or '"seed"' in compact:
            raise SealedExportInvalidKey(
                "public_key is a private key file; upload the public key line (it starts "
                f"with {PUBLIC_KEY_PREFIX!r}) and keep the private key file to yourself. "
                "Anyone who saw it can open your exports: generate a new key pair",
                field="public_key",
            )
        if not compact:
            raise _invalid_public_key("is empty")
        if not compact.startswith(PUBLIC_KEY_PREFIX):
            raise _invalid_public_key(f"does not start with {PUBLIC_KEY_PREFIX!r}")
        raw = _unb64url(compact[len(PUBLIC_KEY_PREFIX) :])
        if raw is None:
            raise _invalid_public_key(
                "is not base64url after the prefix (allowed: A-Z a-z 0-9 - _)"
            )
        return cls.from_bytes(raw)

    def to_text(self) -> str:
        """The one-line text form: ``qustody-xwing-pub:<base64url>``."""
        return PUBLIC_KEY_PREFIX + _b64url(self._raw)

    @property
    def raw(self) -> bytes:
        """The 1216-byte X-Wing encapsulation key."""
        return self._raw

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def hpke_key(self) -> hpke.MLKEM768X25519PublicKey:
        """The key as the ``cryptography`` HPKE API takes it."""
        return self._hpke_key

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, XWingPublicKey):
            return NotImplemented
        return self._raw == other._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"XWingPublicKey(fingerprint={self._fingerprint!r})"


@final
class XWingPrivateKey:
    """An X-Wing private key. Does not print: ``repr`` shows the fingerprint only;
    pickling and copying are refused."""

    __slots__ = ("_hpke_key", "_public_key", "_seed")

    def __init__(self, seed: KeyMaterial) -> None:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"an X-Wing private key is {SEED_BYTES} bytes")
        # draft-connolly-cfrg-xwing-kem section 5.2, expandDecapsulationKey.
        expanded = hashlib.shake_256(seed.reveal()).digest(96)
        mlkem_key = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
        x_key = x25519.X25519PrivateKey.from_private_bytes(expanded[64:])
        self._seed = seed
        self._hpke_key = hpke.MLKEM768X25519PrivateKey(mlkem_key, x_key)
        mlkem_public = mlkem_key.public_key()
        x_public = x_key.public_key()
        raw = mlkem_public.public_bytes_raw() + x_public.public_bytes_raw()
        self._public_key = XWingPublicKey(raw, hpke.MLKEM768X25519PublicKey(mlkem_public, x_public))

    @classmethod
    def generate(cls) -> XWingPrivateKey:
        """A fresh key pair from the operating system's random generator."""
        return cls(KeyMaterial(os.urandom(SEED_BYTES)))

    @classmethod
    def from_seed(cls, seed: bytes) -> XWingPrivateKey:
        """The key pair of a 32-byte X-Wing decapsulation key (for tests and interop)."""
        return cls(KeyMaterial(bytes(seed)))

    @property
    def public_key(self) -> XWingPublicKey:
        return self._public_key

    @property
    def fingerprint(self) -> str:
        return self._public_key.fingerprint

    @property
    def hpke_key(self) -> hpke.MLKEM768X25519PrivateKey:
        """The key as the ``cryptography`` HPKE API takes it."""
        return self._hpke_key

    def to_file_bytes(self) -> bytes:
        """The private key file's content (one line of JSON). Secret: write it with
        :func:`write_private_key`, which makes the file owner-only."""
        document = {
            "fingerprint": self.fingerprint,
            "format": PRIVATE_KEY_FORMAT,
            "kem": "X-Wing",
            "seed": _b64url(self._seed.reveal()),
            "version": PRIVATE_KEY_VERSION,
        }
        return _canonical_json(document) + b"\n"

    def __repr__(self) -> str:
        return f"XWingPrivateKey(fingerprint={self.fingerprint!r}, <redacted>)"

    __str__ = __repr__

    def __format__(self, format_spec: str) -> str:
        return repr(self)

    def __reduce__(self) -> NoReturn:
        raise TypeError("private keys cannot be pickled or copied")


def write_private_key(path: Path, key: XWingPrivateKey) -> None:
    """Write ``key`` to a new owner-only (0600) file; never replaces a file."""
    if not create_private(path, key.to_file_bytes()):
        raise SealedExportInvalidKey(
            f"{path} already exists; a private key file is never overwritten (exports "
            "sealed to it would become unreadable): choose another path"
        )


def read_private_key(path: Path) -> XWingPrivateKey:
    """Read a private key file written by :func:`write_private_key`.

    Raises :class:`~qustody.domain.errors.ConfigurationError` when other users
    can read or write the file, and :class:`SealedExportInvalidKey` when it is
    missing or damaged.
    """
    try:
        check_private(path, "sealed-export private key")
        with path.open("rb") as handle:
            data = handle.read(_MAX_PRIVATE_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise SealedExportInvalidKey(
            f"no private key file at {path}: give the path of the file that `keygen` wrote"
        ) from None
    return parse_private_key(data, source=str(path))


def parse_private_key(data: bytes, *, source: str = "the private key file") -> XWingPrivateKey:
    """Parse the content of a private key file."""

    def damaged(problem: str) -> SealedExportInvalidKey:
        return SealedExportInvalidKey(
            f"{source} is not a usable sealed-export private key: {problem}. Restore it "
            "from your backup; without it, exports sealed to it cannot be opened"
        )

    if len(data) > _MAX_PRIVATE_KEY_FILE_BYTES:
        raise damaged(f"it is larger than {_MAX_PRIVATE_KEY_FILE_BYTES} bytes")
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise damaged("it is not JSON") from None
    if not isinstance(document, dict) or document.get("format") != PRIVATE_KEY_FORMAT:
        raise damaged(f"its format is not {PRIVATE_KEY_FORMAT!r}")
    if document.get("version") != PRIVATE_KEY_VERSION:
        raise damaged(
            f"it is version {document.get('version')!r}; this version of Qustody reads "
            f"version {PRIVATE_KEY_VERSION}"
        )
    if set(document) != _KEY_FILE_FIELDS or document["kem"] != "X-Wing":
        raise damaged(f"it must have exactly the fields {sorted(_KEY_FILE_FIELDS)}")
    seed = _unb64url(document["seed"]) if isinstance(document["seed"], str) else None
    if seed is None or len(seed) != SEED_BYTES:
        raise damaged(f"its seed is not {SEED_BYTES} bytes of base64url")
    key = XWingPrivateKey(KeyMaterial(seed))
    if document["fingerprint"] != key.fingerprint:
        raise damaged("its seed does not match its fingerprint")
    return key


# --------------------------------------------------------------------------------------
# Sealed files
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SealedHeader:
    """The cleartext header of a sealed export.

    From :func:`open_sealed` it is authenticated; from
    :func:`read_sealed_header` it is only what the file claims.
    """

    version: int
    recipient: str
    content_type: str
    created_at: datetime
    metadata: Mapping[str, str]


def _canonical_json(document: Mapping[str, Any]) -> bytes:
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _check_content_type(content_type: str) -> str:
    if not isinstance(content_type, str) or not _CONTENT_TYPE_RE.fullmatch(content_type):
        raise InvalidRequest(
            f"content_type {content_type!r} is not a media type: give type/subtype without "
            "parameters, such as 'application/zip' or 'application/x-ndjson'",
            field="content_type",
        )
    return content_type


def _check_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise InvalidRequest(
            f"metadata has {len(metadata)} entries; at most {MAX_METADATA_ENTRIES} are allowed",
            field="metadata",
        )
    checked: dict[str, str] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not _METADATA_KEY_RE.fullmatch(key):
            raise InvalidRequest(
                f"metadata key {key!r} is not allowed: use 1-64 characters a-z, 0-9, '_', "
                "'.' or '-', starting with a letter",
                field="metadata",
            )
        if not isinstance(value, str):
            raise InvalidRequest(f"metadata[{key!r}] must be a string", field="metadata")
        if len(value) > MAX_METADATA_VALUE_CHARS or _CONTROL_RE.search(value):
            raise InvalidRequest(
                f"metadata[{key!r}] must be at most {MAX_METADATA_VALUE_CHARS} characters "
                "without control characters",
                field="metadata",
            )
        checked[key] = value
    return checked


def _format_time(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("created_at must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def seal(
    plaintext: bytes,
    recipient: XWingPublicKey,
    *,
    content_type: str,
    metadata: Mapping[str, str] | None = None,
    created_at: datetime | None = None,
) -> bytes:
    """Seal ``plaintext`` so that only ``recipient``'s private key opens it.

    ``content_type`` and ``metadata`` go into the header in clear (authenticated,
    not encrypted): never put anything confidential there.
    """
    if len(plaintext) > MAX_PLAINTEXT_BYTES:
        raise SealedExportTooLarge(len(plaintext), MAX_PLAINTEXT_BYTES, "export")
    header = {
        "content_type": _check_content_type(content_type),
        "created_at": _format_time(created_at or datetime.now(UTC)),
        "metadata": _check_metadata(metadata or {}),
        "recipient": recipient.fingerprint,
        "suite": dict(HPKE_SUITE_IDS),
    }
    header_line = _canonical_json(header)
    if len(header_line) > MAX_HEADER_BYTES:
        raise InvalidRequest(
            f"the header would be {len(header_line)} bytes; at most {MAX_HEADER_BYTES} are "
            "allowed: shorten the metadata",
            field="metadata",
        )
    info = MAGIC + header_line + b"\n"
    return info + _HPKE.encrypt(plaintext, recipient.hpke_key, info=info)


def _parse_header(line: bytes) -> SealedHeader:
    try:
        document = json.loads(line.decode("ascii"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise SealedExportCorrupt("its header is not JSON") from None
    if not isinstance(document, dict) or set(document) != _HEADER_FIELDS:
        raise SealedExportCorrupt(
            f"its header must have exactly the fields {sorted(_HEADER_FIELDS)}"
        )
    try:
        canonical = _canonical_json(document)
    except ValueError:
        canonical = b""
    if canonical != line:
        raise SealedExportCorrupt("its header is not in canonical form")
    if document["suite"] != HPKE_SUITE_IDS:
        raise SealedExportCorrupt(
            "its header names an HPKE suite other than X-Wing, HKDF-SHA256, AES-256-GCM"
        )
    recipient = document["recipient"]
    if not isinstance(recipient, str) or not _FINGERPRINT_RE.fullmatch(recipient):
        raise SealedExportCorrupt("its header's recipient is not a key fingerprint")
    created_at = document["created_at"]
    try:
        if not isinstance(created_at, str) or not _CREATED_AT_RE.fullmatch(created_at):
            raise ValueError
        moment = datetime.fromisoformat(created_at)
    except ValueError:
        raise SealedExportCorrupt("its header's created_at is not a UTC time") from None
    metadata = document["metadata"]
    try:
        if not isinstance(metadata, dict):
            raise InvalidRequest("metadata is not an object")
        content_type = _check_content_type(document["content_type"])
        checked = _check_metadata(metadata)
    except InvalidRequest:
        raise SealedExportCorrupt(
            "its header's content_type or metadata is not what Qustody writes"
        ) from None
    return SealedHeader(
        version=FORMAT_VERSION,
        recipient=recipient,
        content_type=content_type,
        created_at=moment,
        metadata=MappingProxyType(checked),
    )


def _split(data: bytes) -> tuple[SealedHeader, int]:
    """Parse the magic line and header; return the header and where ``enc`` starts."""
    if len(data) > MAX_SEALED_BYTES:
        raise SealedExportTooLarge(len(data), MAX_SEALED_BYTES, "sealed file")
    if not data.startswith(_MAGIC_PREFIX):
        raise SealedExportCorrupt("it is not a Qustody sealed export (no 'qustody-sealed/' line)")
    magic = _MAGIC_LINE_RE.match(data)
    if magic is None:
        raise SealedExportCorrupt("its first line is not 'qustody-sealed/<version>'")
    version = int(magic.group(1))
    if version != FORMAT_VERSION:
        raise SealedExportUnsupportedVersion(version)
    start = magic.end()
    end = data.find(b"\n", start, start + MAX_HEADER_BYTES + 1)
    if end < 0:
        raise SealedExportCorrupt(
            f"its header line is missing, cut off or longer than {MAX_HEADER_BYTES} bytes"
        )
    header = _parse_header(data[start:end])
    if len(data) - (end + 1) < ENC_BYTES + TAG_BYTES:
        raise SealedExportCorrupt("it is cut off after the header")
    return header, end + 1


def read_sealed_header(data: bytes) -> SealedHeader:
    """The header a sealed export claims, without opening it.

    Not authenticated: use it to pick a key or to show what a file says it
    is, never to decide anything that matters. :func:`open_sealed` returns the
    authenticated header.
    """
    return _split(data)[0]


def open_sealed(data: bytes, private_key: XWingPrivateKey) -> tuple[SealedHeader, bytes]:
    """Open a sealed export: check its format, its recipient and its integrity,
    and return the (now authenticated) header and the plaintext."""
    header, body = _split(data)
    if header.recipient != private_key.fingerprint:
        raise SealedExportWrongKey(header.recipient, private_key.fingerprint)
    view = memoryview(data)
    try:
        plaintext = _HPKE.decrypt(view[body:], private_key.hpke_key, info=view[:body])
    except (InvalidTag, ValueError):
        raise SealedExportCorrupt from None
    return header, plaintext

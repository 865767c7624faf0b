"""The local keyring: versioned KEKs of every key ring, in a file sealed by a master key.

For development and the embedded deployment only; production uses an HSM.

Data keys are wrapped with AES key wrap (RFC 3394, NIST SP 800-38F "KW"), not
AES-GCM. KW is the standard construction for wrapping keys: deterministic,
so it needs no nonce and has no per-key usage limit (a long-lived KEK that
wraps one DEK per stored value never approaches GCM's 2^32 random-nonce
bound), and it is what PKCS#11 HSMs offer as ``CKM_AES_KEY_WRAP``, so the HSM
provider wraps the same way. KW has no associated data; it needs none: its
integrity check ties a wrapped DEK to the one KEK version that wrapped it,
and the envelope's GCM tag binds the value to its tenant, ring, object and
field (see :mod:`qustody.crypto.envelope`).

Keyring file format, version 1 (JSON, written 0600, replaced atomically)::

    {"format": "qustody-keyring", "version": 1,
     "master_key_fingerprint": "<16 hex>",
     "nonce": "<base64, 12 bytes>", "ciphertext": "<base64>"}

``ciphertext`` is AES-256-GCM, associated data ``b"qustody-keyring\\x00v1"``,
over the JSON document (``version`` 2; version 1, written before key rings
had projects and data classes, named the same map ``tenants`` and is read
the same way)::

    {"version": 2, "rings": {"<ring>": {
        "keys": {"1": {"material": "<base64, 32 bytes>", "created_at": "<ISO 8601>"}}}}}

Which version of a ring is current is not kept here: the database records it
(:mod:`qustody.keys`). Destroying a key removes its material from the file;
copies of the file in backups still hold it, so shredding with this provider
is only as final as the deletion of those backups (an HSM destroys in place).

The encryption key and the fingerprint are two HKDF-SHA256 (RFC 5869)
subkeys of the master key, so the fingerprint says "wrong master key" apart
from "file damaged" without revealing anything about the key.

Several processes on one machine (API, worker) may share the file: every
read-modify-write holds an exclusive ``flock`` on ``<file>.lock`` and re-reads
the file first, and readers notice a changed file and reload.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import threading
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from qustody.crypto.errors import (
    DecryptionError,
    KeyringCorrupted,
    KeyUnavailable,
    MasterKeyMismatch,
)
from qustody.crypto.files import check_private, create_private, replace_atomically
from qustody.crypto.interfaces import KeyMaterial, check_ring, key_id, parse_key_id
from qustody.domain.errors import ConfigurationError, InsecureDevelopmentWarning

MASTER_KEY_ENV = "QUSTODY_MASTER_KEY"
PROVIDER_NAME = "local"
KEYRING_FORMAT = "qustody-keyring"
KEYRING_VERSION = 1
_DOCUMENT_VERSION = 2
KEY_BYTES = 32
_NONCE_BYTES = 12
_KEYRING_AAD = b"qustody-keyring\x00v1"
_HKDF_ENCRYPTION_INFO = b"qustody keyring v1: file encryption"
_HKDF_FINGERPRINT_INFO = b"qustody keyring v1: master key fingerprint"
_GENERATE_HINT = (
    'generate one with: python -c "import base64, secrets; '
    'print(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())"'
)


def parse_master_key(text: str, *, source: str) -> KeyMaterial:
    """Decode a master key written as base64 or URL-safe base64 of 32 bytes
    (padding optional). ``source`` names where it came from, for the error."""
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        raw = base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise ConfigurationError(
            f"{source} must be the base64 encoding of exactly {KEY_BYTES} random bytes; "
            + _GENERATE_HINT
        )
    return KeyMaterial(raw)


def _hkdf(master: KeyMaterial, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(
        master.reveal()
    )


def _read_or_create_master_key_file(path: Path, *, create: bool) -> KeyMaterial:
    """Read the master key file; when it is missing and ``create`` is set,
    create it (0600) with a fresh random key. Creation is atomic
    (``link`` of a complete temporary file), so racing processes agree."""
    if not path.exists():
        if not create:
            raise ConfigurationError(
                f"master key file {path} does not exist; set {MASTER_KEY_ENV} or restore "
                "the file from backup"
            )
        # Racing processes agree on one key: the first file created stands.
        create_private(path, base64.urlsafe_b64encode(os.urandom(KEY_BYTES)) + b"\n")
    check_private(path, "master key file")
    return parse_master_key(path.read_text("ascii"), source=f"master key file {path}")


@dataclass(frozen=True, slots=True)
class _Entry:
    material: KeyMaterial
    created_at: str


#: ``(ring, version)`` → key.
_Keys = dict[tuple[str, int], _Entry]


_Stamp = tuple[int, int, int, int]


class LocalKeyring:
    """A :class:`~qustody.crypto.interfaces.KeyProvider` backed by a sealed
    keyring file. Emits :class:`InsecureDevelopmentWarning`; refused with
    ``production=True``.

    Use :meth:`open_or_create` to resolve the master key from the
    environment or a master-key file.
    """

    def __init__(self, path: Path, master_key: KeyMaterial, *, production: bool = False) -> None:
        _refuse_in_production(production)
        warnings.warn(
            f"the local keyring ({path}) keeps key-encryption keys in a file on this machine; "
            "it is for development and embedded use only. Use an HSM (PKCS#11) key provider in "
            "production",
            InsecureDevelopmentWarning,
            stacklevel=2,
        )
        if len(master_key) != KEY_BYTES:
            raise ConfigurationError(f"the keyring master key must be {KEY_BYTES} bytes")
        self._path = Path(path)
        self._lock_path = self._path.with_name(self._path.name + ".lock")
        self._file_key = AESGCM(_hkdf(master_key, _HKDF_ENCRYPTION_INFO))
        self._fingerprint = _hkdf(master_key, _HKDF_FINGERPRINT_INFO)[:8].hex()
        self._mutex = threading.RLock()
        self._keys: _Keys = {}
        self._stamp: _Stamp | None = None
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._mutex, self._file_lock():
            if self._path.exists():
                self._load()
            else:
                self._store({})

    @classmethod
    def open_or_create(
        cls,
        path: Path,
        *,
        master_key_file: Path | None = None,
        environ: Mapping[str, str] | None = None,
        production: bool = False,
    ) -> LocalKeyring:
        """Open the keyring at ``path``, creating it if missing.

        The master key comes from ``QUSTODY_MASTER_KEY`` in ``environ``
        (default ``os.environ``) when set, else from ``master_key_file``,
        which is created (0600, random key) when neither it nor the keyring
        exists yet. A keyring without its master key is an error, never
        silently replaced.
        """
        _refuse_in_production(production)
        env = os.environ if environ is None else environ
        path = Path(path)
        encoded = env.get(MASTER_KEY_ENV)
        if encoded:
            master_key = parse_master_key(encoded, source=MASTER_KEY_ENV)
        elif master_key_file is None:
            raise ConfigurationError(
                f"the local keyring needs a master key: set {MASTER_KEY_ENV} or configure "
                "a master key file"
            )
        else:
            master_key_file = Path(master_key_file)
            if path.exists() and not master_key_file.exists():
                raise ConfigurationError(
                    f"keyring {path} exists but its master key file {master_key_file} does "
                    f"not; restore the master key file or set {MASTER_KEY_ENV}"
                )
            master_key = _read_or_create_master_key_file(master_key_file, create=True)
        return cls(path, master_key, production=production)

    # KeyProvider

    @property
    def name(self) -> str:
        return PROVIDER_NAME

    @property
    def is_development(self) -> bool:
        return True

    @property
    def path(self) -> Path:
        return self._path

    def create_key(self, ring: str, version: int) -> str:
        check_ring(ring)
        wanted = key_id(PROVIDER_NAME, ring, version)
        with self._mutex:
            self._reload_if_changed()
            if (ring, version) in self._keys:
                return wanted
            with self._file_lock():
                self._load()  # another process may have created it meanwhile
                if (ring, version) not in self._keys:
                    entry = _Entry(
                        KeyMaterial(os.urandom(KEY_BYTES)),
                        datetime.now(UTC).isoformat(timespec="seconds"),
                    )
                    self._store({**self._keys, (ring, version): entry})
        return wanted

    def has_key(self, key_id: str) -> bool:
        return self._find(self._ref(key_id)) is not None

    def wrap(self, key_id: str, dek: bytes) -> bytes:
        if len(dek) != KEY_BYTES:
            raise ValueError(f"data keys must be {KEY_BYTES} bytes")
        return aes_key_wrap(self._kek(key_id).reveal(), dek)

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        try:
            return aes_key_unwrap(self._kek(key_id).reveal(), wrapped)
        except (InvalidUnwrap, ValueError):
            raise DecryptionError from None

    def rewrap(self, key_id: str, wrapped: bytes, new_key_id: str) -> bytes:
        return self.wrap(new_key_id, self.unwrap(key_id, wrapped))

    def destroy_key(self, key_id: str) -> bool:
        ref = self._ref(key_id)
        with self._mutex, self._file_lock():
            self._load()
            if ref not in self._keys:
                return False
            keys = dict(self._keys)
            del keys[ref]
            self._store(keys)
        return True

    # internals

    def _ref(self, key_id: str) -> tuple[str, int]:
        ref = parse_key_id(key_id)
        if ref is None or ref.provider != PROVIDER_NAME:
            raise KeyUnavailable(key_id, f"it does not belong to the {PROVIDER_NAME} keyring")
        return ref.ring, ref.version

    def _find(self, ref: tuple[str, int]) -> KeyMaterial | None:
        with self._mutex:
            self._reload_if_changed()
            entry = self._keys.get(ref)
        return None if entry is None else entry.material

    def _kek(self, key_id: str) -> KeyMaterial:
        kek = self._find(self._ref(key_id))
        if kek is None:
            raise KeyUnavailable(
                key_id, f"the keyring {self._path} has no such key (never created, or destroyed)"
            )
        return kek

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _reload_if_changed(self) -> None:
        try:
            stamp = _stamp(os.stat(self._path))
        except FileNotFoundError:
            raise KeyringCorrupted(
                f"keyring file {self._path} has disappeared; restore it from backup"
            ) from None
        if stamp != self._stamp:
            self._load()

    def _load(self) -> None:
        with open(self._path, "rb") as handle:
            stamp = _stamp(os.fstat(handle.fileno()))
            content = handle.read()
        self._keys = self._decode(content)
        self._stamp = stamp

    def _store(self, keys: _Keys) -> None:
        replace_atomically(self._path, self._encode(keys))
        self._keys = keys
        self._stamp = _stamp(os.stat(self._path))

    def _corrupted(self, why: str) -> KeyringCorrupted:
        return KeyringCorrupted(
            f"keyring file {self._path} {why}; it was modified or damaged. Restore it from "
            "backup; do not edit it by hand"
        )

    def _encode(self, keys: _Keys) -> bytes:
        rings: dict[str, dict[str, dict[str, dict[str, str]]]] = {}
        for (ring, version), entry in sorted(keys.items()):
            rings.setdefault(ring, {"keys": {}})["keys"][str(version)] = {
                "material": base64.b64encode(entry.material.reveal()).decode("ascii"),
                "created_at": entry.created_at,
            }
        document = {"version": _DOCUMENT_VERSION, "rings": rings}
        nonce = os.urandom(_NONCE_BYTES)
        ciphertext = self._file_key.encrypt(
            nonce, json.dumps(document, separators=(",", ":")).encode("utf-8"), _KEYRING_AAD
        )
        outer = {
            "format": KEYRING_FORMAT,
            "version": KEYRING_VERSION,
            "master_key_fingerprint": self._fingerprint,
            "nonce": base64.b64encode(nonce).decode("ascii"),
            "ciphertext": base64.b64encode(ciphertext).decode("ascii"),
        }
        return json.dumps(outer, indent=2).encode("utf-8") + b"\n"

    def _decode(self, content: bytes) -> _Keys:
        try:
            outer = json.loads(content)
        except ValueError:
            raise self._corrupted("is not valid JSON") from None
        if not isinstance(outer, dict) or outer.get("format") != KEYRING_FORMAT:
            raise self._corrupted("is not a Qustody keyring")
        if outer.get("version") != KEYRING_VERSION:
            raise KeyringCorrupted(
                f"keyring file {self._path} has format version {outer.get('version')!r}; this "
                f"release reads version {KEYRING_VERSION} only"
            )
        if outer.get("master_key_fingerprint") != self._fingerprint:
            raise MasterKeyMismatch(
                f"keyring file {self._path} was sealed with a different master key than the "
                f"one configured ({MASTER_KEY_ENV} or the master key file); configure the "
                "master key this keyring was created with"
            )
        try:
            nonce = base64.b64decode(outer["nonce"], validate=True)
            ciphertext = base64.b64decode(outer["ciphertext"], validate=True)
            plaintext = self._file_key.decrypt(nonce, ciphertext, _KEYRING_AAD)
        except (KeyError, TypeError, ValueError, binascii.Error, InvalidTag):
            raise self._corrupted("failed its integrity check") from None
        try:
            return _parse_document(json.loads(plaintext))
        except (AttributeError, KeyError, TypeError, ValueError, binascii.Error):
            # Authentic but unparseable: written by a broken or newer release.
            raise self._corrupted("has an invalid structure") from None


def _parse_document(document: Any) -> _Keys:
    version = document["version"]
    if version == _DOCUMENT_VERSION:
        rings = document["rings"]
    elif version == 1:
        rings = document["tenants"]  # version 1: one ring per tenant, named by its id
    else:
        raise ValueError("unsupported keyring document version")
    keys: _Keys = {}
    for ring, entry in rings.items():
        check_ring(ring)
        for version_text, key in entry["keys"].items():
            number = int(version_text)
            material = base64.b64decode(key["material"], validate=True)
            if number < 1 or len(material) != KEY_BYTES:
                raise ValueError("bad key")
            keys[ring, number] = _Entry(KeyMaterial(material), str(key["created_at"]))
    return keys


def _refuse_in_production(production: bool) -> None:
    if production:
        raise ConfigurationError(
            "the local keyring is a development key provider and is refused in production "
            "mode; configure an HSM key provider (PKCS#11) instead"
        )


def _stamp(st: os.stat_result) -> _Stamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

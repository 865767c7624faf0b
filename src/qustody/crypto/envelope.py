"""Envelope encryption of stored values.

Each stored value gets a fresh 256-bit data key (DEK). The value is sealed
with AES-256-GCM (NIST SP 800-38D) under the DEK and a random 96-bit nonce;
the DEK is wrapped by the tenant's key-encryption key through the
:class:`~qustody.crypto.interfaces.KeyProvider`. One DEK encrypts exactly one
message, so random nonces are far inside GCM's limits.

Envelope format, version 1 (all integers big-endian)::

    offset      size  field
    0           1     format version, 0x01
    1           1     n = length of key id (1..255)
    2           n     key id, ASCII (e.g. ``local:ten_01JC…:v1``)
    2+n         2     m = length of wrapped DEK (1..65535)
    4+n         m     wrapped DEK (opaque to this module; provider-defined)
    4+n+m       12    nonce
    16+n+m      ...   AES-256-GCM ciphertext, then the 16-byte tag

Associated data (authenticated, not stored)::

    lp("qustody-envelope") || lp(tenant_id) || lp(object_id) || lp(field) || header

where ``lp(x)`` is a 2-byte length then the UTF-8 bytes of ``x`` and
``header`` is every byte before the ciphertext (version, key id, wrapped DEK,
nonce). So the tag covers every byte of the blob, and a blob opened under
another tenant, object or field fails, as does one whose key id or wrapped
DEK was swapped.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qustody.crypto.errors import DecryptionError
from qustody.crypto.interfaces import KeyProvider
from qustody.domain.ids import TenantId

FORMAT_VERSION = 1
DEK_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_AAD_LABEL = b"qustody-envelope"
_U16 = struct.Struct(">H")


@dataclass(frozen=True, slots=True)
class SealedBlob:
    """A sealed value: the key id (for a database column, so rotation can
    find what each key protects) and the self-describing envelope bytes."""

    key_id: str
    data: bytes

    def __repr__(self) -> str:
        return f"SealedBlob(key_id={self.key_id!r}, data=<{len(self.data)} bytes>)"

    @classmethod
    def from_bytes(cls, data: bytes) -> SealedBlob:
        """Rebuild a blob from stored envelope bytes (reads the key id from
        the header). Raises DecryptionError when the header is malformed."""
        return cls(_parse(data).key_id, data)


@dataclass(frozen=True, slots=True)
class _Parsed:
    key_id: str
    wrapped: bytes
    nonce: bytes
    header_end: int


def _parse(data: bytes) -> _Parsed:
    try:
        if data[0] != FORMAT_VERSION:
            raise DecryptionError
        n = data[1]
        key_id = data[2 : 2 + n].decode("ascii")
        (m,) = _U16.unpack_from(data, 2 + n)
        wrapped = data[4 + n : 4 + n + m]
        nonce = data[4 + n + m : 16 + n + m]
        header_end = 16 + n + m
    except (IndexError, UnicodeDecodeError, struct.error):
        raise DecryptionError from None
    if n == 0 or m == 0 or len(wrapped) != m or len(data) < header_end + TAG_BYTES:
        raise DecryptionError
    return _Parsed(key_id, wrapped, nonce, header_end)


def _lp(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("envelope context values must be at most 65535 bytes")
    return _U16.pack(len(raw)) + raw


def _aad(tenant_id: str, object_id: str, field: str, header: bytes) -> bytes:
    return b"".join(
        (_U16.pack(len(_AAD_LABEL)), _AAD_LABEL, _lp(tenant_id), _lp(object_id), _lp(field), header)
    )


class _DekCache:
    """A small LRU of unwrapped DEKs (as ready ciphers), with a TTL.

    Keyed by (tenant, key id, wrapped DEK). Entries hold only AESGCM objects,
    which do not expose their key; nothing here is ever logged.
    """

    def __init__(self, max_entries: int, ttl_seconds: float, clock: Callable[[], float]) -> None:
        self._max = max_entries
        self._ttl = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str, bytes], tuple[float, AESGCM]] = OrderedDict()

    def get(self, key: tuple[str, str, bytes]) -> AESGCM | None:
        if self._max == 0:
            return None
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            expires, cipher = entry
            if expires <= now:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return cipher

    def put(self, key: tuple[str, str, bytes], cipher: AESGCM) -> None:
        if self._max == 0:
            return
        expires = self._clock() + self._ttl
        with self._lock:
            self._entries[key] = (expires, cipher)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class Envelope:
    """Seals and opens stored values for one key provider.

    ``cache_size`` and ``cache_ttl_seconds`` bound the in-memory cache of
    unwrapped DEKs used by :meth:`open` (0 disables it). The cache saves a
    provider round trip (an HSM call) when the same value is read repeatedly.
    """

    def __init__(
        self,
        provider: KeyProvider,
        *,
        cache_size: int = 1024,
        cache_ttl_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if cache_size < 0 or cache_ttl_seconds < 0:
            raise ValueError("cache_size and cache_ttl_seconds must not be negative")
        self._provider = provider
        self._cache = _DekCache(cache_size, cache_ttl_seconds, clock)

    @property
    def provider(self) -> KeyProvider:
        return self._provider

    def seal(self, tenant_id: TenantId, object_id: str, field: str, plaintext: bytes) -> SealedBlob:
        """Encrypt ``plaintext`` for ``field`` of ``object_id`` owned by
        ``tenant_id``, under a fresh DEK wrapped by the tenant's current key."""
        dek = AESGCM.generate_key(bit_length=8 * DEK_BYTES)
        key_id, wrapped = self._provider.wrap(tenant_id, dek)
        raw_key_id = key_id.encode("utf-8")
        if (
            not key_id.isascii()
            or not 0 < len(raw_key_id) <= 0xFF
            or not 0 < len(wrapped) <= 0xFFFF
        ):
            raise ValueError(
                f"key provider {self._provider.name!r} returned a key id or wrapped key that "
                "the envelope format cannot hold (ASCII key id of 1-255 bytes, wrapped key of "
                "1-65535 bytes)"
            )
        nonce = os.urandom(NONCE_BYTES)
        header = b"".join(
            (
                bytes((FORMAT_VERSION, len(raw_key_id))),
                raw_key_id,
                _U16.pack(len(wrapped)),
                wrapped,
                nonce,
            )
        )
        ciphertext = AESGCM(dek).encrypt(
            nonce, plaintext, _aad(tenant_id, object_id, field, header)
        )
        return SealedBlob(key_id, header + ciphertext)

    def open(
        self, tenant_id: TenantId, object_id: str, field: str, blob: SealedBlob | bytes
    ) -> bytes:
        """Decrypt a value sealed by :meth:`seal` with the same tenant, object
        and field.

        Raises DecryptionError for any tampering or mismatch (including a
        ``SealedBlob.key_id`` that disagrees with the envelope) and
        KeyUnavailable when the key it names cannot be used.
        """
        data = blob.data if isinstance(blob, SealedBlob) else blob
        parsed = _parse(data)
        if isinstance(blob, SealedBlob) and blob.key_id != parsed.key_id:
            raise DecryptionError
        cache_key = (str(tenant_id), parsed.key_id, parsed.wrapped)
        cipher = self._cache.get(cache_key)
        if cipher is None:
            dek = self._provider.unwrap(tenant_id, parsed.key_id, parsed.wrapped)
            if len(dek) != DEK_BYTES:
                raise DecryptionError
            cipher = AESGCM(dek)
            fresh = True
        else:
            fresh = False
        header = data[: parsed.header_end]
        try:
            plaintext = cipher.decrypt(
                parsed.nonce,
                data[parsed.header_end :],
                _aad(tenant_id, object_id, field, header),
            )
        except InvalidTag:
            raise DecryptionError from None
        if fresh:
            # Cache only DEKs that proved themselves by opening a value.
            self._cache.put(cache_key, cipher)
        return plaintext

    def clear_cache(self) -> None:
        """Drop every cached DEK (after a key is destroyed, or on fork)."""
        self._cache.clear()

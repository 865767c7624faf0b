"""Envelope encryption of stored values.

Each stored value gets a fresh 256-bit data key (DEK). The value is sealed
with AES-256-GCM (NIST SP 800-38D) under the DEK and a random 96-bit nonce;
the DEK is wrapped by a key-encryption key (KEK) through a
:class:`~qustody.crypto.interfaces.KeyProvider`. One DEK encrypts exactly one
message, so random nonces are far inside GCM's limits.

A sealed value has three parts, stored side by side (``sealed_objects``)::

    key_id    the KEK version that wraps the DEK  (pkcs11:ten_A.prj_B.payload:v2)
    wrapped   the wrapped DEK (AES key wrap: 40 bytes)
    body      0x02 (format version) || 12-byte nonce || AES-256-GCM ciphertext || 16-byte tag

Associated data (authenticated, not stored)::

    lp("qustody-envelope/2") || lp(tenant_id) || lp(ring) || lp(object_id) || lp(field)
        || body[:13]

where ``lp(x)`` is a 2-byte big-endian length then the UTF-8 bytes of ``x``
and ``ring`` is the key ring named by ``key_id`` (tenant, project and data
class). A body opened under another tenant, ring, object or field fails; a
ring whose first part is not the tenant is refused before any key is used.

The KEK *version* is deliberately outside the associated data: rotation moves
a DEK to the ring's new version by rewrapping it (:meth:`Envelope.rewrap`),
which changes ``key_id`` and ``wrapped`` but not one byte of ``body``, so no
payload is decrypted to rotate. Binding the version would force exactly
that. Swapping in another version's wrapped DEK gains nothing: AES key wrap
has its own integrity check, so it unwraps only under the version that
wrapped it, and yields the same DEK.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qustody.crypto.errors import DecryptionError, KeyUnavailable
from qustody.crypto.interfaces import KeyProvider, parse_key_id

FORMAT_VERSION = 2
DEK_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_PREFIX_BYTES = 1 + NONCE_BYTES
_AAD_LABEL = "qustody-envelope/2"
_U16 = struct.Struct(">H")


@dataclass(frozen=True, slots=True)
class SealedBlob:
    """A sealed value: the KEK version, the wrapped DEK and the encrypted body."""

    key_id: str
    wrapped: bytes
    body: bytes

    def __repr__(self) -> str:
        return (
            f"SealedBlob(key_id={self.key_id!r}, wrapped=<{len(self.wrapped)} bytes>, "
            f"body=<{len(self.body)} bytes>)"
        )


def _lp(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("envelope context values must be at most 65535 bytes")
    return _U16.pack(len(raw)) + raw


def _aad(tenant_id: str, ring: str, object_id: str, field: str, prefix: bytes) -> bytes:
    return b"".join(
        (_lp(_AAD_LABEL), _lp(tenant_id), _lp(ring), _lp(object_id), _lp(field), prefix)
    )


def _ring_of(tenant_id: str, key_id: str) -> str | None:
    """The ring a key id names when it is one of ``tenant_id``'s, else None."""
    ref = parse_key_id(key_id)
    if ref is None or ref.ring.split(".", 1)[0] != tenant_id:
        return None
    return ref.ring


class _DekCache:
    """A small LRU of unwrapped DEKs (as ready ciphers), with a TTL.

    Keyed by (key id, wrapped DEK). Entries hold only AESGCM objects,
    which do not expose their key; nothing here is ever logged.
    """

    def __init__(self, max_entries: int, ttl_seconds: float, clock: Callable[[], float]) -> None:
        self._max = max_entries
        self._ttl = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, bytes], tuple[float, AESGCM]] = OrderedDict()

    def get(self, key: tuple[str, bytes]) -> AESGCM | None:
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

    def put(self, key: tuple[str, bytes], cipher: AESGCM) -> None:
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

    def forget(self, key_ids: Iterable[str]) -> None:
        doomed = set(key_ids)
        with self._lock:
            for key in [key for key in self._entries if key[0] in doomed]:
                del self._entries[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class Envelope:
    """Seals and opens stored values with the key providers it is given.

    ``providers`` maps each provider's name (the first part of its key ids)
    to the provider. ``cache_size`` and ``cache_ttl_seconds`` bound the
    in-memory cache of unwrapped DEKs used by :meth:`open` (0 disables it);
    providers named in ``uncached`` never have their DEKs cached, so a key
    disabled at its source (a customer's own HSM) stops opening data at once.
    """

    def __init__(
        self,
        providers: Mapping[str, KeyProvider] | KeyProvider,
        *,
        cache_size: int = 1024,
        cache_ttl_seconds: float = 60.0,
        uncached: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if cache_size < 0 or cache_ttl_seconds < 0:
            raise ValueError("cache_size and cache_ttl_seconds must not be negative")
        if not isinstance(providers, Mapping):
            providers = {providers.name: providers}
        for name, provider in providers.items():
            if provider.name != name:
                raise ValueError(f"provider {provider.name!r} registered as {name!r}")
        self._providers = dict(providers)
        self._uncached = frozenset(uncached)
        self._cache = _DekCache(cache_size, cache_ttl_seconds, clock)

    @property
    def providers(self) -> Mapping[str, KeyProvider]:
        return self._providers

    def add_provider(self, provider: KeyProvider, *, cached: bool = True) -> None:
        """Register another provider (a tenant's own HSM), once."""
        if provider.name in self._providers:
            raise ValueError(f"a key provider named {provider.name!r} is already registered")
        self._providers[provider.name] = provider
        if not cached:
            self._uncached = self._uncached | {provider.name}

    def provider_for(self, key_id: str) -> KeyProvider:
        ref = parse_key_id(key_id)
        provider = None if ref is None else self._providers.get(ref.provider)
        if provider is None:
            raise KeyUnavailable(key_id, "no configured key provider holds it")
        return provider

    def seal(
        self, key_id: str, tenant_id: str, object_id: str, field: str, plaintext: bytes
    ) -> SealedBlob:
        """Encrypt ``plaintext`` for ``field`` of ``object_id`` owned by
        ``tenant_id``, under a fresh DEK wrapped by ``key_id``."""
        ring = _ring_of(tenant_id, key_id)
        if ring is None:  # a caller's bug, not bad data
            raise ValueError(f"key {key_id!r} is not a key of one of tenant {tenant_id!r}'s rings")
        dek = AESGCM.generate_key(bit_length=8 * DEK_BYTES)
        wrapped = self.provider_for(key_id).wrap(key_id, dek)
        prefix = bytes((FORMAT_VERSION,)) + os.urandom(NONCE_BYTES)
        ciphertext = AESGCM(dek).encrypt(
            prefix[1:], plaintext, _aad(tenant_id, ring, object_id, field, prefix)
        )
        return SealedBlob(key_id, wrapped, prefix + ciphertext)

    def open(self, tenant_id: str, object_id: str, field: str, blob: SealedBlob) -> bytes:
        """Decrypt a value sealed by :meth:`seal` with the same tenant, object
        and field.

        Raises DecryptionError for any tampering or mismatch and
        KeyUnavailable when the key it names cannot be used.
        """
        ring = _ring_of(tenant_id, blob.key_id)
        if ring is None:
            raise DecryptionError  # damaged, or moved from another tenant
        body = blob.body
        if len(body) < _PREFIX_BYTES + TAG_BYTES or body[0] != FORMAT_VERSION:
            raise DecryptionError
        cache_key = (blob.key_id, blob.wrapped)
        cipher = self._cache.get(cache_key)
        fresh = cipher is None
        if cipher is None:
            dek = self.provider_for(blob.key_id).unwrap(blob.key_id, blob.wrapped)
            if len(dek) != DEK_BYTES:
                raise DecryptionError
            cipher = AESGCM(dek)
        prefix = body[:_PREFIX_BYTES]
        try:
            plaintext = cipher.decrypt(
                prefix[1:], body[_PREFIX_BYTES:], _aad(tenant_id, ring, object_id, field, prefix)
            )
        except InvalidTag:
            raise DecryptionError from None
        if fresh and self._provider_name(blob.key_id) not in self._uncached:
            # Cache only DEKs that proved themselves by opening a value.
            self._cache.put(cache_key, cipher)
        return plaintext

    def rewrap(self, blob: SealedBlob, new_key_id: str) -> SealedBlob:
        """The same value with its DEK wrapped under ``new_key_id``, another
        version of the same ring; the body is not touched (nor decrypted)."""
        old, new = parse_key_id(blob.key_id), parse_key_id(new_key_id)
        if old is None or new is None or old.ring != new.ring:
            raise ValueError("a data key is rewrapped only within its own key ring")
        if old.provider == new.provider:
            wrapped = self.provider_for(new_key_id).rewrap(blob.key_id, blob.wrapped, new_key_id)
        else:  # a ring moving to another provider (a tenant bringing its own HSM)
            dek = self.provider_for(blob.key_id).unwrap(blob.key_id, blob.wrapped)
            wrapped = self.provider_for(new_key_id).wrap(new_key_id, dek)
        return SealedBlob(new_key_id, wrapped, blob.body)

    def forget(self, key_ids: Iterable[str]) -> None:
        """Drop cached DEKs of these keys (destroyed or disabled)."""
        self._cache.forget(key_ids)

    def clear_cache(self) -> None:
        """Drop every cached DEK."""
        self._cache.clear()

    def _provider_name(self, key_id: str) -> str:
        return key_id.split(":", 1)[0]

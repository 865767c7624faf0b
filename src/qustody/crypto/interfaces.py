"""Interfaces of the crypto module.

Key hierarchy (envelope encryption, NIST SP 800-57 terms)::

    root (master key / HSM)  ──protects──►  KEK ring, versioned
        one ring per tenant, project and data class: ``ten_….prj_….payload``
        key ids ``<provider>:<ring>:v<n>`` (``pkcs11:ten_A.prj_B.payload:v2``)
                                        │ wraps (AES key wrap, RFC 3394)
                                        ▼
                                     DEK (256-bit, fresh per stored object)
                                        │ AES-256-GCM
                                        ▼
                                     payload (circuit, result, metadata, secret)

A :class:`KeyProvider` owns the KEKs and never hands them out: callers give it
a DEK to wrap, a wrapped DEK to unwrap, or a wrapped DEK to move to another
version of its ring (rewrap). The local keyring does that in this process; a
PKCS#11 provider does it inside the token, where the KEKs are created
non-extractable. Which version of a ring is current, and what each version
still protects, is recorded in the database by :mod:`qustody.keys`; a
provider only creates, uses and destroys the versions it is told to.

Key ids are never secret. :func:`key_id` and :func:`parse_key_id` are the one
place their syntax lives.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import NoReturn, Protocol, final

#: Ring names: dot-separated parts of letters, digits, ``_`` and ``-``.
RING_PATTERN = r"[A-Za-z0-9_-]{1,64}(?:\.[A-Za-z0-9_-]{1,64}){0,3}"
_KEY_ID_RE = re.compile(rf"([a-z][a-z0-9-]{{0,31}}):({RING_PATTERN}):v([1-9][0-9]{{0,8}})")
_RING_RE = re.compile(RING_PATTERN)


@final
class KeyMaterial:
    """Secret key bytes that do not print.

    ``repr``, ``str`` and f-strings show only the length; pickling and copying
    are refused; equality is constant-time. Call :meth:`reveal` at the one
    place the raw bytes go into a cipher.
    """

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        if not isinstance(value, bytes):
            raise TypeError("key material must be bytes")
        self._value = value

    def reveal(self) -> bytes:
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return f"KeyMaterial(<redacted {len(self._value)} bytes>)"

    __str__ = __repr__

    def __format__(self, format_spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyMaterial):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    __hash__ = None  # type: ignore[assignment]  # secrets are not dict keys

    def __reduce__(self) -> NoReturn:
        raise TypeError("key material cannot be pickled or copied")


@dataclass(frozen=True, slots=True)
class KeyRef:
    """A parsed key id: which provider, which ring, which version."""

    provider: str
    ring: str
    version: int

    def __str__(self) -> str:
        return key_id(self.provider, self.ring, self.version)


def check_ring(ring: str) -> str:
    """Return ``ring`` if it is a valid ring name, else raise ValueError."""
    if not _RING_RE.fullmatch(ring):
        raise ValueError(
            "key ring names are 1-4 dot-separated parts of 1-64 letters, digits, '_' or '-'"
        )
    return ring


def key_id(provider: str, ring: str, version: int) -> str:
    """The key id of ``version`` of ``ring`` held by ``provider``."""
    text = f"{provider}:{check_ring(ring)}:v{version}"
    if not _KEY_ID_RE.fullmatch(text):
        raise ValueError(f"invalid key id parts: provider {provider!r}, version {version!r}")
    return text


def parse_key_id(text: str) -> KeyRef | None:
    """Split a key id into its parts; None when it is not a key id."""
    match = _KEY_ID_RE.fullmatch(text)
    if match is None:
        return None
    return KeyRef(match.group(1), match.group(2), int(match.group(3)))


class KeyProvider(Protocol):
    """Holds versioned key-encryption keys and wraps data keys with them.

    Implementations: :class:`qustody.crypto.local.LocalKeyring` (development
    and embedded use) and :class:`qustody.crypto.pkcs11.Pkcs11Provider`
    (any PKCS#11 HSM). The interface is small enough for a Vault/OpenBao
    transit or cloud KMS adapter: each method is one remote call.

    Every method taking a ``key_id`` accepts only ids of this provider
    (``parse_key_id(key_id).provider == self.name``).

    Errors: :class:`~qustody.crypto.errors.KeyUnavailable` when a key does
    not exist, was destroyed or disabled, or the provider cannot be reached;
    :class:`~qustody.crypto.errors.DecryptionError` when a wrapped key fails
    its integrity check.
    """

    @property
    def name(self) -> str:
        """Short provider name, the first part of its key ids (``local``)."""
        ...

    @property
    def is_development(self) -> bool:
        """True for providers that production mode must refuse."""
        ...

    def create_key(self, ring: str, version: int) -> str:
        """Create ``version`` of ``ring`` (a fresh random 256-bit KEK) and
        return its key id. Idempotent: an existing version is kept as it is.
        Safe to race with other processes."""
        ...

    def has_key(self, key_id: str) -> bool:
        """Whether the key exists and can be used."""
        ...

    def wrap(self, key_id: str, dek: bytes) -> bytes:
        """Wrap a 32-byte data key under ``key_id``."""
        ...

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        """Recover a data key wrapped under ``key_id``."""
        ...

    def rewrap(self, key_id: str, wrapped: bytes, new_key_id: str) -> bytes:
        """Move a wrapped data key from ``key_id`` to ``new_key_id``.

        An HSM does this inside the token: the data key is unwrapped into a
        session object that is never extractable and wrapped again, so it
        never enters this process.
        """
        ...

    def destroy_key(self, key_id: str) -> bool:
        """Destroy the key irreversibly. True when it existed; False when
        there was nothing to destroy. What it wrapped can never be
        unwrapped again (crypto-shredding)."""
        ...

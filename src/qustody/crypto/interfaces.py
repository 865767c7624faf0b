"""Interfaces of the crypto module.

Key hierarchy (envelope encryption, NIST SP 800-57 terms)::

    master key / HSM  ──protects──►  tenant KEK (versioned: local:ten_…:v1, v2, …)
                                        │ wraps
                                        ▼
                                     DEK (256-bit, fresh per stored object)
                                        │ AES-256-GCM
                                        ▼
                                     payload (circuit, result, metadata field)

A :class:`KeyProvider` owns the KEKs and never hands them out: callers give it
a DEK to wrap or a wrapped DEK to unwrap. The local keyring does that in this
process; a PKCS#11 provider does it inside an HSM. Key ids are opaque strings
chosen by the provider, unique across providers (prefixed with the provider's
name), stable for the life of the key, and never secret.
"""

from __future__ import annotations

import hmac
from typing import NoReturn, Protocol, final

from qustody.domain.ids import TenantId


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


class KeyProvider(Protocol):
    """Holds per-tenant key-encryption keys and wraps data keys with them.

    Implementations: :class:`qustody.crypto.local.LocalKeyring` (development
    and embedded use); a PKCS#11 HSM provider for production.

    Errors: :class:`~qustody.crypto.errors.KeyUnavailable` when a key is
    unknown or the provider cannot be reached;
    :class:`~qustody.crypto.errors.DecryptionError` when a wrapped key fails
    its integrity check or names another tenant's key.
    """

    @property
    def name(self) -> str:
        """Short provider name, also the prefix of its key ids (``local``)."""
        ...

    @property
    def is_development(self) -> bool:
        """True for providers that production mode must refuse."""
        ...

    def ensure_tenant_key(self, tenant_id: TenantId) -> str:
        """Return the tenant's current key id, creating version 1 if the
        tenant has no key yet. Idempotent and safe to race."""
        ...

    def current_key_id(self, tenant_id: TenantId) -> str:
        """The key id new data for this tenant is wrapped under.

        Raises KeyUnavailable when the tenant has no key.
        """
        ...

    def wrap(self, tenant_id: TenantId, dek: bytes) -> tuple[str, bytes]:
        """Wrap a 32-byte data key under the tenant's current KEK.

        Returns ``(key_id, wrapped)``. Raises KeyUnavailable when the tenant
        has no key (keys are created by :meth:`ensure_tenant_key`, never
        implicitly).
        """
        ...

    def unwrap(self, tenant_id: TenantId, key_id: str, wrapped: bytes) -> bytes:
        """Recover a data key wrapped under ``key_id``, which must belong to
        ``tenant_id``. Older key versions stay usable for unwrapping."""
        ...

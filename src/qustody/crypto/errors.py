"""Errors raised by the crypto module.

Decryption failures say nothing about *why* they failed: a caller who can
tell "wrong tenant" from "bad tag" from "bad format" has an oracle. The
operator learns what they need from the stable ``code`` and the row that was
being read, not from the message.
"""

from __future__ import annotations

from qustody.domain.errors import ConfigurationError, QustodyError, ServiceUnavailable

_GENERIC_DECRYPTION_DETAIL = (
    "a stored value could not be decrypted; it is damaged or does not belong here. "
    "Report this to the operator: the data may need to be restored from backup"
)


class DecryptionError(QustodyError):
    """A ciphertext failed to open: tampered, truncated, moved to another
    row, field or tenant, or sealed under a different key.

    The detail is deliberately generic and the same for every cause.
    """

    code = "decryption_failed"
    status = 500
    title = "Stored data could not be decrypted"

    def __init__(self, detail: str = _GENERIC_DECRYPTION_DETAIL) -> None:
        super().__init__(detail)


class KeyUnavailable(ServiceUnavailable):
    """The key a ciphertext names (or a tenant's current key) cannot be used
    right now: unknown to the provider, not yet created, or the provider is
    unreachable. Retrying may help once the provider is fixed."""

    code = "key_unavailable"
    status = 503
    title = "Encryption key unavailable"

    def __init__(self, key_id: str, reason: str) -> None:
        super().__init__(
            f"encryption key {key_id!r} is not available: {reason}",
            extra={"key_id": key_id},
        )
        self.key_id = key_id


class KeyringError(ConfigurationError):
    """The local keyring file cannot be used as configured."""

    code = "keyring_error"
    title = "Keyring error"


class MasterKeyMismatch(KeyringError):
    """The keyring file was sealed under a different master key."""

    code = "master_key_mismatch"
    title = "Wrong master key for keyring"


class KeyringCorrupted(KeyringError):
    """The keyring file failed its integrity check or does not parse."""

    code = "keyring_corrupted"
    title = "Keyring file corrupted"

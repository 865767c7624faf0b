"""Envelope encryption: real AES-GCM and key wrap under a real local keyring."""

from __future__ import annotations

import copy
import os
import pickle  # noqa: TID251  # only to prove key material refuses it
from pathlib import Path

import pytest

from qustody.crypto.envelope import FORMAT_VERSION, Envelope, SealedBlob
from qustody.crypto.errors import DecryptionError, KeyUnavailable
from qustody.crypto.interfaces import KeyMaterial, KeyProvider
from qustody.crypto.local import LocalKeyring
from qustody.domain.errors import QustodyError
from qustody.domain.ids import TenantId, new_job_id, new_tenant_id


def _keyring(directory: Path) -> LocalKeyring:
    return LocalKeyring(directory / "keyring.json", KeyMaterial(os.urandom(32)))


class CountingProvider:
    """Delegates to a real keyring and counts unwraps (to observe the cache)."""

    def __init__(self, inner: LocalKeyring) -> None:
        self.inner = inner
        self.unwraps = 0

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def is_development(self) -> bool:
        return self.inner.is_development

    def ensure_tenant_key(self, tenant_id: TenantId) -> str:
        return self.inner.ensure_tenant_key(tenant_id)

    def current_key_id(self, tenant_id: TenantId) -> str:
        return self.inner.current_key_id(tenant_id)

    def wrap(self, tenant_id: TenantId, dek: bytes) -> tuple[str, bytes]:
        return self.inner.wrap(tenant_id, dek)

    def unwrap(self, tenant_id: TenantId, key_id: str, wrapped: bytes) -> bytes:
        self.unwraps += 1
        return self.inner.unwrap(tenant_id, key_id, wrapped)


@pytest.fixture
def keyring(tmp_path: Path) -> LocalKeyring:
    return _keyring(tmp_path)


@pytest.fixture
def tenant(keyring: LocalKeyring) -> TenantId:
    tenant_id = new_tenant_id()
    keyring.ensure_tenant_key(tenant_id)
    return tenant_id


@pytest.fixture
def envelope(keyring: LocalKeyring) -> Envelope:
    return Envelope(keyring)


def test_local_keyring_is_a_key_provider(keyring: LocalKeyring) -> None:
    provider: KeyProvider = keyring  # checked by mypy
    assert provider.name == "local"
    assert provider.is_development


@pytest.mark.parametrize("size", [0, 1, 1024, 4096, 1 << 20])
def test_round_trip(envelope: Envelope, tenant: TenantId, size: int) -> None:
    job = new_job_id()
    plaintext = os.urandom(size)
    blob = envelope.seal(tenant, job, "circuit", plaintext)
    assert blob.key_id == f"local:{tenant}:v1"
    assert blob.data[0] == FORMAT_VERSION
    assert size < 16 or plaintext not in blob.data
    assert envelope.open(tenant, job, "circuit", blob) == plaintext
    assert envelope.open(tenant, job, "circuit", blob.data) == plaintext
    assert SealedBlob.from_bytes(blob.data) == blob


def test_fresh_data_key_and_nonce_per_seal(envelope: Envelope, tenant: TenantId) -> None:
    a = envelope.seal(tenant, "job_1", "circuit", b"same")
    b = envelope.seal(tenant, "job_1", "circuit", b"same")
    assert a.data != b.data


def test_a_fresh_envelope_opens_what_another_sealed(
    keyring: LocalKeyring, tenant: TenantId
) -> None:
    blob = Envelope(keyring).seal(tenant, "job_1", "result", b"counts")
    assert Envelope(keyring).open(tenant, "job_1", "result", blob) == b"counts"


def test_moved_to_another_object_fails(envelope: Envelope, tenant: TenantId) -> None:
    blob = envelope.seal(tenant, "job_1", "circuit", b"OPENQASM 3;")
    with pytest.raises(DecryptionError):
        envelope.open(tenant, "job_2", "circuit", blob)


def test_moved_to_another_field_fails(envelope: Envelope, tenant: TenantId) -> None:
    blob = envelope.seal(tenant, "job_1", "circuit", b"OPENQASM 3;")
    with pytest.raises(DecryptionError):
        envelope.open(tenant, "job_1", "result", blob)


def test_moved_to_another_tenant_fails(
    envelope: Envelope, keyring: LocalKeyring, tenant: TenantId
) -> None:
    other = new_tenant_id()
    keyring.ensure_tenant_key(other)
    blob = envelope.seal(tenant, "job_1", "circuit", b"OPENQASM 3;")
    envelope.open(tenant, "job_1", "circuit", blob)  # warms the cache for the owner
    with pytest.raises(DecryptionError):
        envelope.open(other, "job_1", "circuit", blob)


def test_context_fields_do_not_run_together(envelope: Envelope, tenant: TenantId) -> None:
    # Length-prefixed associated data: ("job_1", "xcircuit") != ("job_1x", "circuit").
    blob = envelope.seal(tenant, "job_1", "xcircuit", b"payload")
    with pytest.raises(DecryptionError):
        envelope.open(tenant, "job_1x", "circuit", blob)


def _key_id_span(data: bytes) -> range:
    return range(2, 2 + data[1])


def test_every_flipped_byte_fails(tenant: TenantId, keyring: LocalKeyring) -> None:
    envelope = Envelope(keyring)
    blob = envelope.seal(tenant, "job_1", "result", b'{"counts": {"00": 512, "11": 512}}')
    envelope.open(tenant, "job_1", "result", blob)  # the cache is warm: it must not help
    key_id_span = _key_id_span(blob.data)
    for index in range(len(blob.data)):
        for mask in (0x01, 0x80, 0xFF):
            damaged = bytearray(blob.data)
            damaged[index] ^= mask
            data = bytes(damaged)
            # As stored with its key id column: always a decryption failure.
            with pytest.raises(DecryptionError):
                envelope.open(tenant, "job_1", "result", SealedBlob(blob.key_id, data))
            # As bare bytes: a damaged key id may instead name a key that does
            # not exist, which is reported as unavailable. Never plaintext.
            expected: type[QustodyError] | tuple[type[QustodyError], ...] = (
                (DecryptionError, KeyUnavailable) if index in key_id_span else DecryptionError
            )
            with pytest.raises(expected):
                envelope.open(tenant, "job_1", "result", data)


def test_every_truncation_and_extension_fails(envelope: Envelope, tenant: TenantId) -> None:
    blob = envelope.seal(tenant, "job_1", "result", b"0123456789")
    for length in range(len(blob.data)):
        with pytest.raises(DecryptionError):
            envelope.open(tenant, "job_1", "result", blob.data[:length])
    with pytest.raises(DecryptionError):
        envelope.open(tenant, "job_1", "result", blob.data + b"\x00")


def test_wrong_key_encryption_key_fails(tmp_path: Path, tenant: TenantId) -> None:
    # Two keyrings, each with its own v1 key for the same tenant id.
    first, second = _keyring(tmp_path / "a"), _keyring(tmp_path / "b")
    first.ensure_tenant_key(tenant)
    second.ensure_tenant_key(tenant)
    blob = Envelope(first).seal(tenant, "job_1", "circuit", b"payload")
    with pytest.raises(DecryptionError):
        Envelope(second).open(tenant, "job_1", "circuit", blob)


def test_spliced_wrapped_key_fails(envelope: Envelope, tenant: TenantId) -> None:
    a = envelope.seal(tenant, "job_1", "circuit", b"payload a")
    b = envelope.seal(tenant, "job_1", "circuit", b"payload b")
    n = a.data[1]
    wrapped = slice(4 + n, 4 + n + 40)  # 32-byte DEK under RFC 3394: 40 bytes
    spliced = a.data[: wrapped.start] + b.data[wrapped] + a.data[wrapped.stop :]
    with pytest.raises(DecryptionError):
        envelope.open(tenant, "job_1", "circuit", spliced)


def _with_key_id(data: bytes, key_id: str) -> bytes:
    raw = key_id.encode("ascii")
    return bytes((data[0], len(raw))) + raw + data[2 + data[1] :]


def test_unknown_key_version_is_unavailable(envelope: Envelope, tenant: TenantId) -> None:
    blob = envelope.seal(tenant, "job_1", "circuit", b"payload")
    with pytest.raises(KeyUnavailable) as caught:
        envelope.open(tenant, "job_1", "circuit", _with_key_id(blob.data, f"local:{tenant}:v2"))
    assert caught.value.code == "key_unavailable"
    assert caught.value.status == 503


def test_key_of_another_provider_is_unavailable(envelope: Envelope, tenant: TenantId) -> None:
    blob = envelope.seal(tenant, "job_1", "circuit", b"payload")
    with pytest.raises(KeyUnavailable):
        envelope.open(tenant, "job_1", "circuit", _with_key_id(blob.data, f"hsm:{tenant}:v1"))


def test_decryption_error_reveals_nothing(envelope: Envelope, tenant: TenantId) -> None:
    blob = envelope.seal(tenant, "job_1", "circuit", b"payload")
    details = set()
    for object_id, data in (
        ("job_2", blob.data),  # wrong context
        ("job_1", b"\x02" + blob.data[1:]),  # unknown format version
        ("job_1", blob.data[:-1]),  # truncated tag
    ):
        with pytest.raises(DecryptionError) as caught:
            envelope.open(tenant, object_id, "circuit", data)
        assert caught.value.code == "decryption_failed"
        assert caught.value.status == 500
        assert tenant not in caught.value.detail
        assert "job_" not in caught.value.detail
        details.add(caught.value.detail)
    assert len(details) == 1  # the same words whatever went wrong


def test_open_reuses_cached_data_key(keyring: LocalKeyring, tenant: TenantId) -> None:
    provider = CountingProvider(keyring)
    envelope = Envelope(provider)
    blob = envelope.seal(tenant, "job_1", "result", b"counts")
    for _ in range(3):
        assert envelope.open(tenant, "job_1", "result", blob) == b"counts"
    assert provider.unwraps == 1
    envelope.clear_cache()
    envelope.open(tenant, "job_1", "result", blob)
    assert provider.unwraps == 2


def test_cache_entries_expire(keyring: LocalKeyring, tenant: TenantId) -> None:
    now = [1000.0]
    provider = CountingProvider(keyring)
    envelope = Envelope(provider, cache_ttl_seconds=30, clock=lambda: now[0])
    blob = envelope.seal(tenant, "job_1", "result", b"counts")
    envelope.open(tenant, "job_1", "result", blob)
    now[0] += 29
    envelope.open(tenant, "job_1", "result", blob)
    assert provider.unwraps == 1
    now[0] += 2
    envelope.open(tenant, "job_1", "result", blob)
    assert provider.unwraps == 2


def test_cache_is_bounded(keyring: LocalKeyring, tenant: TenantId) -> None:
    provider = CountingProvider(keyring)
    envelope = Envelope(provider, cache_size=2)
    blobs = [envelope.seal(tenant, f"job_{i}", "result", b"x") for i in range(3)]
    for i, blob in enumerate(blobs):
        envelope.open(tenant, f"job_{i}", "result", blob)
    assert provider.unwraps == 3
    envelope.open(tenant, "job_2", "result", blobs[2])  # still cached
    assert provider.unwraps == 3
    envelope.open(tenant, "job_0", "result", blobs[0])  # evicted first
    assert provider.unwraps == 4


def test_cache_can_be_disabled(keyring: LocalKeyring, tenant: TenantId) -> None:
    provider = CountingProvider(keyring)
    envelope = Envelope(provider, cache_size=0)
    blob = envelope.seal(tenant, "job_1", "result", b"counts")
    envelope.open(tenant, "job_1", "result", blob)
    envelope.open(tenant, "job_1", "result", blob)
    assert provider.unwraps == 2


def test_failed_open_is_not_cached(keyring: LocalKeyring, tenant: TenantId) -> None:
    provider = CountingProvider(keyring)
    envelope = Envelope(provider)
    blob = envelope.seal(tenant, "job_1", "result", b"counts")
    with pytest.raises(DecryptionError):
        envelope.open(tenant, "job_1", "circuit", blob)
    envelope.open(tenant, "job_1", "result", blob)
    assert provider.unwraps == 2


def test_seal_for_tenant_without_key_is_unavailable(envelope: Envelope) -> None:
    with pytest.raises(KeyUnavailable):
        envelope.seal(new_tenant_id(), "job_1", "circuit", b"payload")


def test_key_material_never_prints() -> None:
    secret = os.urandom(32)
    key = KeyMaterial(secret)
    for shown in (repr(key), str(key), f"{key}", f"{key!r}", f"{[key]}"):
        assert "redacted" in shown
        assert secret.hex() not in shown
        assert repr(secret) not in shown
    assert key.reveal() == secret
    assert len(key) == 32


def test_key_material_compares_but_does_not_pickle_or_hash() -> None:
    secret = os.urandom(32)
    assert KeyMaterial(secret) == KeyMaterial(secret)
    assert KeyMaterial(secret) != KeyMaterial(os.urandom(32))
    with pytest.raises(TypeError):
        pickle.dumps(KeyMaterial(secret))
    with pytest.raises(TypeError):
        copy.copy(KeyMaterial(secret))
    with pytest.raises(TypeError):
        hash(KeyMaterial(secret))


def test_sealed_blob_repr_shows_no_bytes(envelope: Envelope, tenant: TenantId) -> None:
    blob = envelope.seal(tenant, "job_1", "circuit", b"payload")
    assert repr(blob) == f"SealedBlob(key_id='local:{tenant}:v1', data=<{len(blob.data)} bytes>)"

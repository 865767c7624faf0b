"""Envelope encryption: real AES-GCM and key wrap under a real local keyring."""

from __future__ import annotations

import copy
import os
import pickle  # noqa: TID251  # only to prove key material refuses it
from collections import Counter
from pathlib import Path

import pytest

from qustody.crypto.envelope import FORMAT_VERSION, Envelope, SealedBlob
from qustody.crypto.errors import DecryptionError, KeyUnavailable
from qustody.crypto.interfaces import (
    KeyMaterial,
    KeyProvider,
    KeyRef,
    check_ring,
    key_id,
    parse_key_id,
)
from qustody.crypto.local import LocalKeyring
from qustody.domain.ids import new_job_id, new_project_id, new_tenant_id

NONCE_BYTES = 12
TAG_BYTES = 16
PREFIX_BYTES = 1 + NONCE_BYTES
WRAPPED_BYTES = 40  # a 32-byte DEK under RFC 3394 key wrap


def _keyring(directory: Path) -> LocalKeyring:
    return LocalKeyring(directory / "keyring.json", KeyMaterial(os.urandom(32)))


def _ring(tenant: str, purpose: str = "payload") -> str:
    return f"{tenant}.{new_project_id()}.{purpose}"


class CountingProvider:
    """Delegates to a real keyring and counts every call (to observe the cache
    and to prove that some refusals happen before any provider is asked).

    With ``name`` other than ``local`` it stands for a second provider (a
    tenant's own HSM): its key ids carry that name and are translated to the
    inner keyring's ids on the way in.
    """

    def __init__(self, inner: LocalKeyring, name: str = "local") -> None:
        self.inner = inner
        self._name = name
        self.calls: Counter[str] = Counter()

    @property
    def unwraps(self) -> int:
        return self.calls["unwrap"]

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def _in(self, outer_id: str) -> str:
        provider, rest = outer_id.split(":", 1)
        assert provider == self._name
        return f"{self.inner.name}:{rest}"

    def _out(self, inner_id: str) -> str:
        return f"{self._name}:{inner_id.split(':', 1)[1]}"

    @property
    def name(self) -> str:
        return self._name

    @property
    def is_development(self) -> bool:
        return self.inner.is_development

    def create_key(self, ring: str, version: int) -> str:
        self.calls["create_key"] += 1
        return self._out(self.inner.create_key(ring, version))

    def has_key(self, key_id: str) -> bool:
        self.calls["has_key"] += 1
        return self.inner.has_key(self._in(key_id))

    def wrap(self, key_id: str, dek: bytes) -> bytes:
        self.calls["wrap"] += 1
        return self.inner.wrap(self._in(key_id), dek)

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        self.calls["unwrap"] += 1
        return self.inner.unwrap(self._in(key_id), wrapped)

    def rewrap(self, key_id: str, wrapped: bytes, new_key_id: str) -> bytes:
        self.calls["rewrap"] += 1
        return self.inner.rewrap(self._in(key_id), wrapped, self._in(new_key_id))

    def destroy_key(self, key_id: str) -> bool:
        self.calls["destroy_key"] += 1
        return self.inner.destroy_key(self._in(key_id))


@pytest.fixture
def keyring(tmp_path: Path) -> LocalKeyring:
    return _keyring(tmp_path)


@pytest.fixture
def tenant() -> str:
    return new_tenant_id()


@pytest.fixture
def ring(tenant: str) -> str:
    return _ring(tenant)


@pytest.fixture
def key(keyring: LocalKeyring, ring: str) -> str:
    """Version 1 of the tenant's payload ring."""
    return keyring.create_key(ring, 1)


@pytest.fixture
def envelope(keyring: LocalKeyring) -> Envelope:
    return Envelope(keyring)


@pytest.fixture
def counting(keyring: LocalKeyring) -> CountingProvider:
    return CountingProvider(keyring)


def _flipped(data: bytes, index: int, mask: int) -> bytes:
    damaged = bytearray(data)
    damaged[index] ^= mask
    return bytes(damaged)


# The provider interface and key ids


def test_providers_satisfy_the_interface(keyring: LocalKeyring) -> None:
    local: KeyProvider = keyring  # checked by mypy
    counting: KeyProvider = CountingProvider(keyring)
    assert local.name == counting.name == "local"
    assert local.is_development


def test_key_id_syntax(tenant: str) -> None:
    ring = f"{tenant}.prj_1.payload"
    text = key_id("pkcs11", ring, 12)
    assert text == f"pkcs11:{ring}:v12"
    assert parse_key_id(text) == KeyRef("pkcs11", ring, 12)
    assert str(KeyRef("pkcs11", ring, 12)) == text
    for bad in (
        f"local:{ring}:v0",
        f"local:{ring}:1",
        f"local:{ring}:version1",
        f"Local:{ring}:v1",
        "local::v1",
        f"local:{ring}",
        "local:a.b.c.d.e:v1",
        f"local:{ring}:v1:extra",
        "",
    ):
        assert parse_key_id(bad) is None, bad
    with pytest.raises(ValueError, match="key ring names"):
        key_id("local", "a:b", 1)
    with pytest.raises(ValueError, match="invalid key id"):
        key_id("local", ring, 0)
    with pytest.raises(ValueError, match="invalid key id"):
        key_id("HSM", ring, 1)
    for bad_ring in ("", "a..b", ".a", "a.", "a b", "a.b.c.d.e", "x" * 65):
        with pytest.raises(ValueError, match="key ring names"):
            check_ring(bad_ring)
    assert check_ring("ten_A.prj_B.payload") == "ten_A.prj_B.payload"


# Sealing and opening


@pytest.mark.parametrize("size", [0, 1, 1024, 4096, 1 << 20])
def test_round_trip(envelope: Envelope, key: str, tenant: str, size: int) -> None:
    job = new_job_id()
    plaintext = os.urandom(size)
    blob = envelope.seal(key, tenant, job, "circuit", plaintext)
    assert blob.key_id == key
    assert len(blob.wrapped) == WRAPPED_BYTES
    assert blob.body[0] == FORMAT_VERSION == 2
    assert len(blob.body) == PREFIX_BYTES + size + TAG_BYTES
    assert size < 16 or plaintext not in blob.body
    assert envelope.open(tenant, job, "circuit", blob) == plaintext


def test_fresh_data_key_and_nonce_per_seal(envelope: Envelope, key: str, tenant: str) -> None:
    a = envelope.seal(key, tenant, "job_1", "circuit", b"same")
    b = envelope.seal(key, tenant, "job_1", "circuit", b"same")
    assert a.wrapped != b.wrapped  # a different DEK (key wrap is deterministic)
    assert a.body[1:PREFIX_BYTES] != b.body[1:PREFIX_BYTES]
    assert a.body != b.body


def test_a_fresh_envelope_opens_what_another_sealed(
    keyring: LocalKeyring, key: str, tenant: str
) -> None:
    blob = Envelope(keyring).seal(key, tenant, "job_1", "result", b"counts")
    assert Envelope(keyring).open(tenant, "job_1", "result", blob) == b"counts"


def test_seal_under_a_key_that_does_not_exist_is_unavailable(
    envelope: Envelope, ring: str, tenant: str
) -> None:
    missing = key_id("local", ring, 1)
    with pytest.raises(KeyUnavailable) as caught:
        envelope.seal(missing, tenant, "job_1", "circuit", b"payload")
    assert caught.value.key_id == missing
    assert caught.value.code == "key_unavailable"
    assert caught.value.status == 503


def test_seal_under_another_tenants_ring_is_refused(
    keyring: LocalKeyring, counting: CountingProvider, tenant: str
) -> None:
    other_key = keyring.create_key(_ring(new_tenant_id()), 1)
    envelope = Envelope(counting)
    for bad in (other_key, "not a key id", f"local:{tenant}x.prj.payload:v1"):
        with pytest.raises(ValueError, match="is not a key of one of tenant"):
            envelope.seal(bad, tenant, "job_1", "circuit", b"payload")
    assert counting.total == 0  # refused before any key was used (a bug, not bad data)


def test_sealed_blob_repr_shows_no_bytes(envelope: Envelope, key: str, tenant: str) -> None:
    blob = envelope.seal(key, tenant, "job_1", "circuit", b"payload")
    assert repr(blob) == (
        f"SealedBlob(key_id={key!r}, wrapped=<40 bytes>, body=<{len(blob.body)} bytes>)"
    )


# Associated data: a body opens only where it was sealed


def test_moved_to_another_object_fails(envelope: Envelope, key: str, tenant: str) -> None:
    blob = envelope.seal(key, tenant, "job_1", "circuit", b"OPENQASM 3;")
    envelope.open(tenant, "job_1", "circuit", blob)  # the cache is warm: it must not help
    with pytest.raises(DecryptionError):
        envelope.open(tenant, "job_2", "circuit", blob)


def test_moved_to_another_field_fails(envelope: Envelope, key: str, tenant: str) -> None:
    blob = envelope.seal(key, tenant, "job_1", "circuit", b"OPENQASM 3;")
    envelope.open(tenant, "job_1", "circuit", blob)
    with pytest.raises(DecryptionError):
        envelope.open(tenant, "job_1", "result", blob)


def test_context_fields_do_not_run_together(envelope: Envelope, key: str, tenant: str) -> None:
    # Length-prefixed associated data: ("job_1", "xcircuit") != ("job_1x", "circuit").
    blob = envelope.seal(key, tenant, "job_1", "xcircuit", b"payload")
    with pytest.raises(DecryptionError):
        envelope.open(tenant, "job_1x", "circuit", blob)
    with pytest.raises(DecryptionError):
        envelope.open(tenant, "job_", "1xcircuit", blob)


def test_opened_as_another_tenant_fails_before_any_provider_call(
    keyring: LocalKeyring, counting: CountingProvider, key: str, tenant: str
) -> None:
    other = new_tenant_id()
    keyring.create_key(_ring(other), 1)
    envelope = Envelope(counting)
    blob = envelope.seal(key, tenant, "job_1", "circuit", b"OPENQASM 3;")
    envelope.open(tenant, "job_1", "circuit", blob)  # warms the cache for the owner
    before = counting.total
    with pytest.raises(DecryptionError):
        envelope.open(other, "job_1", "circuit", blob)
    assert counting.total == before


def test_key_id_naming_another_tenants_ring_is_refused_before_any_provider_call(
    keyring: LocalKeyring, counting: CountingProvider, key: str, tenant: str
) -> None:
    other = new_tenant_id()
    other_key = keyring.create_key(_ring(other), 1)
    envelope = Envelope(counting)
    blob = envelope.seal(key, tenant, "job_1", "circuit", b"payload")
    other_blob = envelope.seal(other_key, other, "job_1", "circuit", b"theirs")
    before = counting.total
    for relabelled in (
        SealedBlob(other_key, blob.wrapped, blob.body),
        SealedBlob(other_key, other_blob.wrapped, other_blob.body),
        other_blob,
    ):
        with pytest.raises(DecryptionError):
            envelope.open(tenant, "job_1", "circuit", relabelled)
    # A ring whose first part only starts with the tenant id is not the tenant's.
    lookalike = keyring.create_key(f"{tenant}x.prj_1.payload", 1)
    with pytest.raises(DecryptionError):
        envelope.open(tenant, "job_1", "circuit", SealedBlob(lookalike, blob.wrapped, blob.body))
    assert counting.total == before


def test_tenant_is_bound_even_when_the_data_key_is_moved_to_its_ring(
    keyring: LocalKeyring, envelope: Envelope, key: str, tenant: str
) -> None:
    # An insider with the provider rewraps tenant A's DEK under tenant B's
    # ring and relabels the blob: the key unwraps, the associated data does not match.
    other = new_tenant_id()
    other_key = keyring.create_key(_ring(other), 1)
    blob = envelope.seal(key, tenant, "job_1", "circuit", b"payload")
    moved = SealedBlob(other_key, keyring.rewrap(key, blob.wrapped, other_key), blob.body)
    with pytest.raises(DecryptionError):
        envelope.open(other, "job_1", "circuit", moved)


def test_opened_under_another_ring_of_the_tenant_fails(
    keyring: LocalKeyring, envelope: Envelope, key: str, tenant: str
) -> None:
    # Another project's ring, same version: the KEK differs, so AES-KW refuses.
    other_key = keyring.create_key(_ring(tenant), 1)
    secrets_key = keyring.create_key(f"{tenant}.secrets", 1)
    blob = envelope.seal(key, tenant, "job_1", "circuit", b"payload")
    envelope.open(tenant, "job_1", "circuit", blob)
    for relabel in (other_key, secrets_key):
        with pytest.raises(DecryptionError):
            envelope.open(tenant, "job_1", "circuit", SealedBlob(relabel, blob.wrapped, blob.body))
        # Even with the DEK moved to that ring, the ring is in the associated data.
        moved = SealedBlob(relabel, keyring.rewrap(key, blob.wrapped, relabel), blob.body)
        with pytest.raises(DecryptionError):
            envelope.open(tenant, "job_1", "circuit", moved)


def test_every_flipped_body_byte_fails(envelope: Envelope, key: str, tenant: str) -> None:
    blob = envelope.seal(key, tenant, "job_1", "result", b'{"counts": {"00": 512, "11": 512}}')
    envelope.open(tenant, "job_1", "result", blob)  # the cache is warm: it must not help
    body = blob.body
    # Every position: version byte, nonce, ciphertext and tag.
    assert len(body) > PREFIX_BYTES + TAG_BYTES
    for index in range(len(body)):
        for mask in (0x01, 0x80, 0xFF):
            damaged = SealedBlob(blob.key_id, blob.wrapped, _flipped(body, index, mask))
            with pytest.raises(DecryptionError):
                envelope.open(tenant, "job_1", "result", damaged)
    assert envelope.open(tenant, "job_1", "result", blob).startswith(b'{"counts"')


def test_every_flipped_wrapped_byte_fails(keyring: LocalKeyring, key: str, tenant: str) -> None:
    envelope = Envelope(keyring)
    blob = envelope.seal(key, tenant, "job_1", "result", b"counts")
    envelope.open(tenant, "job_1", "result", blob)
    for index in range(len(blob.wrapped)):
        for mask in (0x01, 0x80):
            damaged = SealedBlob(blob.key_id, _flipped(blob.wrapped, index, mask), blob.body)
            with pytest.raises(DecryptionError):
                envelope.open(tenant, "job_1", "result", damaged)


def test_old_format_version_is_refused(envelope: Envelope, key: str, tenant: str) -> None:
    blob = envelope.seal(key, tenant, "job_1", "result", b"counts")
    for version in (0, 1, 3, 0xFF):
        body = bytes((version,)) + blob.body[1:]
        with pytest.raises(DecryptionError):
            envelope.open(tenant, "job_1", "result", SealedBlob(blob.key_id, blob.wrapped, body))


def test_swapped_wrapped_keys_fail(envelope: Envelope, key: str, tenant: str) -> None:
    a = envelope.seal(key, tenant, "job_1", "circuit", b"payload a")
    b = envelope.seal(key, tenant, "job_2", "circuit", b"payload b")
    envelope.open(tenant, "job_1", "circuit", a)
    envelope.open(tenant, "job_2", "circuit", b)  # both DEKs cached
    with pytest.raises(DecryptionError):
        envelope.open(tenant, "job_1", "circuit", SealedBlob(a.key_id, b.wrapped, a.body))
    with pytest.raises(DecryptionError):
        envelope.open(tenant, "job_2", "circuit", SealedBlob(b.key_id, a.wrapped, b.body))
    # Same object and field, two values: the DEK still belongs to one body only.
    c = envelope.seal(key, tenant, "job_1", "circuit", b"payload c")
    with pytest.raises(DecryptionError):
        envelope.open(tenant, "job_1", "circuit", SealedBlob(a.key_id, c.wrapped, a.body))


def test_every_truncation_and_extension_fails(envelope: Envelope, key: str, tenant: str) -> None:
    blob = envelope.seal(key, tenant, "job_1", "result", b"0123456789")
    envelope.open(tenant, "job_1", "result", blob)
    for length in range(len(blob.body)):
        short = SealedBlob(blob.key_id, blob.wrapped, blob.body[:length])
        with pytest.raises(DecryptionError):
            envelope.open(tenant, "job_1", "result", short)
    for extra in (b"\x00", blob.body[-TAG_BYTES:]):
        long = SealedBlob(blob.key_id, blob.wrapped, blob.body + extra)
        with pytest.raises(DecryptionError):
            envelope.open(tenant, "job_1", "result", long)
    for length in (0, 8, 32, 39):
        cut = SealedBlob(blob.key_id, blob.wrapped[:length], blob.body)
        with pytest.raises(DecryptionError):
            Envelope(envelope.providers).open(tenant, "job_1", "result", cut)


def test_wrong_key_encryption_key_fails(tmp_path: Path, tenant: str) -> None:
    # Two keyrings, each with its own v1 of the same ring.
    ring = _ring(tenant)
    first, second = _keyring(tmp_path / "a"), _keyring(tmp_path / "b")
    key = first.create_key(ring, 1)
    assert second.create_key(ring, 1) == key
    blob = Envelope(first).seal(key, tenant, "job_1", "circuit", b"payload")
    with pytest.raises(DecryptionError):
        Envelope(second).open(tenant, "job_1", "circuit", blob)


def test_unknown_key_version_is_unavailable(
    envelope: Envelope, key: str, ring: str, tenant: str
) -> None:
    blob = envelope.seal(key, tenant, "job_1", "circuit", b"payload")
    missing = key_id("local", ring, 2)
    with pytest.raises(KeyUnavailable) as caught:
        envelope.open(tenant, "job_1", "circuit", SealedBlob(missing, blob.wrapped, blob.body))
    assert caught.value.key_id == missing
    assert caught.value.status == 503


def test_key_of_an_unconfigured_provider_is_unavailable(
    envelope: Envelope, key: str, ring: str, tenant: str
) -> None:
    blob = envelope.seal(key, tenant, "job_1", "circuit", b"payload")
    with pytest.raises(KeyUnavailable, match="no configured key provider"):
        envelope.open(
            tenant, "job_1", "circuit", SealedBlob(f"pkcs11:{ring}:v1", blob.wrapped, blob.body)
        )
    with pytest.raises(KeyUnavailable):
        envelope.provider_for("pkcs11:ten_A:v1")
    with pytest.raises(KeyUnavailable):
        envelope.provider_for("not a key id")
    assert envelope.provider_for(key).name == "local"


def test_decryption_error_reveals_nothing(
    keyring: LocalKeyring, envelope: Envelope, key: str, ring: str, tenant: str
) -> None:
    other_tenant = new_tenant_id()
    other_tenant_key = keyring.create_key(_ring(other_tenant), 1)
    other_ring_key = keyring.create_key(_ring(tenant), 1)
    v2 = keyring.create_key(ring, 2)
    blob = envelope.seal(key, tenant, "job_1", "circuit", b"payload")
    other = envelope.seal(key, tenant, "job_2", "circuit", b"other")
    envelope.open(tenant, "job_1", "circuit", blob)

    def relabel(new_key: str) -> SealedBlob:
        return SealedBlob(new_key, blob.wrapped, blob.body)

    def body(new_body: bytes) -> SealedBlob:
        return SealedBlob(blob.key_id, blob.wrapped, new_body)

    cases: list[tuple[str, str, str, SealedBlob]] = [
        (other_tenant, "job_1", "circuit", blob),  # another tenant
        (tenant, "job_2", "circuit", blob),  # another object
        (tenant, "job_1", "result", blob),  # another field
        (tenant, "job_1", "circuit", relabel(other_ring_key)),  # another ring
        (tenant, "job_1", "circuit", relabel(other_tenant_key)),  # another tenant's ring
        (tenant, "job_1", "circuit", relabel(v2)),  # wrapped under v1, named v2
        (tenant, "job_1", "circuit", relabel("garbage")),  # not a key id
        (tenant, "job_1", "circuit", body(b"\x01" + blob.body[1:])),  # format version
        (tenant, "job_1", "circuit", body(blob.body[:-1])),  # truncated tag
        (tenant, "job_1", "circuit", body(b"")),  # empty
        (tenant, "job_1", "circuit", body(_flipped(blob.body, 5, 1))),  # nonce
        (tenant, "job_1", "circuit", body(_flipped(blob.body, -1, 1))),  # tag
        (tenant, "job_1", "circuit", SealedBlob(key, other.wrapped, blob.body)),  # swapped DEK
    ]
    details = set()
    for tenant_id, object_id, field, damaged in cases:
        with pytest.raises(DecryptionError) as caught:
            envelope.open(tenant_id, object_id, field, damaged)
        error = caught.value
        assert error.code == "decryption_failed"
        assert error.status == 500
        for secret in (tenant, other_tenant, ring, "job_", "circuit", "local:"):
            assert secret not in error.detail
        details.add(error.detail)
    assert len(details) == 1  # the same words whatever went wrong


# Rotation: rewrap moves the data key, never the body


def test_rewrap_to_the_next_version_keeps_the_body(
    keyring: LocalKeyring, envelope: Envelope, key: str, ring: str, tenant: str
) -> None:
    blob = envelope.seal(key, tenant, "job_1", "circuit", b"OPENQASM 3;")
    v2 = keyring.create_key(ring, 2)
    moved = envelope.rewrap(blob, v2)
    assert moved.key_id == v2
    assert moved.body == blob.body  # byte-identical: no payload was decrypted
    assert moved.wrapped != blob.wrapped
    assert len(moved.wrapped) == WRAPPED_BYTES
    assert envelope.open(tenant, "job_1", "circuit", moved) == b"OPENQASM 3;"
    assert Envelope(keyring).open(tenant, "job_1", "circuit", moved) == b"OPENQASM 3;"
    # Back again: the same DEK under the same KEK gives the same wrapped bytes.
    assert envelope.rewrap(moved, key) == blob


def test_rewrap_never_reads_the_body(
    counting: CountingProvider, key: str, ring: str, tenant: str
) -> None:
    envelope = Envelope(counting)
    blob = envelope.seal(key, tenant, "job_1", "circuit", b"payload")
    v2 = counting.create_key(ring, 2)
    for body in (b"", b"not a body at all"):
        moved = envelope.rewrap(SealedBlob(key, blob.wrapped, body), v2)
        assert moved.body == body
        assert moved.wrapped == envelope.rewrap(blob, v2).wrapped
    assert counting.calls["rewrap"] == 4
    assert counting.unwraps == 0  # the provider moved it; the envelope never saw the DEK


def test_after_destroying_the_old_version_only_the_rewrapped_value_opens(
    keyring: LocalKeyring, counting: CountingProvider, key: str, ring: str, tenant: str
) -> None:
    envelope = Envelope(counting)
    blob = envelope.seal(key, tenant, "job_1", "circuit", b"payload")
    v2 = keyring.create_key(ring, 2)
    moved = envelope.rewrap(blob, v2)
    assert envelope.open(tenant, "job_1", "circuit", blob) == b"payload"  # cached under v1
    assert envelope.open(tenant, "job_1", "circuit", moved) == b"payload"  # cached under v2

    assert counting.destroy_key(key) is True
    assert counting.has_key(key) is False
    assert counting.has_key(v2) is True
    envelope.forget([key])  # as the key service does after destroying a version
    unwraps = counting.unwraps
    with pytest.raises(KeyUnavailable) as caught:
        envelope.open(tenant, "job_1", "circuit", blob)
    assert caught.value.key_id == key
    assert envelope.open(tenant, "job_1", "circuit", moved) == b"payload"
    assert counting.unwraps == unwraps + 1  # the v2 entry survived forgetting v1
    with pytest.raises(KeyUnavailable):
        Envelope(keyring).open(tenant, "job_1", "circuit", blob)
    assert Envelope(keyring).open(tenant, "job_1", "circuit", moved) == b"payload"
    with pytest.raises(KeyUnavailable):
        envelope.rewrap(blob, v2)  # nothing left to move it with


def test_rewrap_across_rings_is_refused(
    keyring: LocalKeyring, counting: CountingProvider, key: str, tenant: str
) -> None:
    envelope = Envelope(counting)
    blob = envelope.seal(key, tenant, "job_1", "circuit", b"payload")
    before = counting.total
    other_project = keyring.create_key(_ring(tenant), 2)
    other_tenant = keyring.create_key(_ring(new_tenant_id()), 1)
    for target in (other_project, other_tenant, f"{tenant}.secrets", "garbage"):
        with pytest.raises(ValueError, match="own key ring"):
            envelope.rewrap(blob, target)
    with pytest.raises(ValueError, match="own key ring"):
        envelope.rewrap(SealedBlob("garbage", blob.wrapped, blob.body), key)
    assert counting.total == before


def test_wrapped_key_of_one_version_named_as_another_fails(
    keyring: LocalKeyring, envelope: Envelope, key: str, ring: str, tenant: str
) -> None:
    blob = envelope.seal(key, tenant, "job_1", "circuit", b"payload")
    v2 = keyring.create_key(ring, 2)
    relabelled = SealedBlob(v2, blob.wrapped, blob.body)
    with pytest.raises(DecryptionError):  # AES-KW's integrity check, not GCM's
        envelope.open(tenant, "job_1", "circuit", relabelled)
    with pytest.raises(DecryptionError):
        keyring.unwrap(v2, blob.wrapped)
    moved = envelope.rewrap(blob, v2)
    with pytest.raises(DecryptionError):
        envelope.open(tenant, "job_1", "circuit", SealedBlob(key, moved.wrapped, moved.body))


def test_rewrap_to_another_provider(tmp_path: Path, ring: str, tenant: str) -> None:
    # A ring moving to a tenant's own HSM: the DEK is unwrapped by the old
    # provider and wrapped by the new one; the body stays as it is.
    local = _keyring(tmp_path / "local")
    hsm = CountingProvider(_keyring(tmp_path / "hsm"), name="hsm")
    key = local.create_key(ring, 1)
    envelope = Envelope(local)
    envelope.add_provider(hsm)
    assert envelope.provider_for(key) is local
    blob = envelope.seal(key, tenant, "job_1", "circuit", b"payload")
    v2 = hsm.create_key(ring, 2)
    assert v2 == f"hsm:{ring}:v2"
    moved = envelope.rewrap(blob, v2)
    assert moved.key_id == v2
    assert moved.body == blob.body
    assert hsm.calls["wrap"] == 1
    assert envelope.provider_for(v2) is hsm
    assert envelope.open(tenant, "job_1", "circuit", moved) == b"payload"
    with pytest.raises(ValueError, match="already registered"):
        envelope.add_provider(hsm)


# The cache of unwrapped data keys


def test_open_reuses_cached_data_key(counting: CountingProvider, key: str, tenant: str) -> None:
    envelope = Envelope(counting)
    blob = envelope.seal(key, tenant, "job_1", "result", b"counts")
    for _ in range(3):
        assert envelope.open(tenant, "job_1", "result", blob) == b"counts"
    assert counting.unwraps == 1
    envelope.clear_cache()
    envelope.open(tenant, "job_1", "result", blob)
    assert counting.unwraps == 2


def test_cache_entries_expire(counting: CountingProvider, key: str, tenant: str) -> None:
    now = [1000.0]
    envelope = Envelope(counting, cache_ttl_seconds=30, clock=lambda: now[0])
    blob = envelope.seal(key, tenant, "job_1", "result", b"counts")
    envelope.open(tenant, "job_1", "result", blob)
    now[0] += 29
    envelope.open(tenant, "job_1", "result", blob)
    assert counting.unwraps == 1
    now[0] += 1  # the expiry instant itself is expired
    envelope.open(tenant, "job_1", "result", blob)
    assert counting.unwraps == 2
    now[0] += 29.5  # a hit does not extend the entry's life
    envelope.open(tenant, "job_1", "result", blob)
    assert counting.unwraps == 2
    now[0] += 1
    envelope.open(tenant, "job_1", "result", blob)
    assert counting.unwraps == 3


def test_cache_is_a_bounded_lru(counting: CountingProvider, key: str, tenant: str) -> None:
    envelope = Envelope(counting, cache_size=2)
    blobs = [envelope.seal(key, tenant, f"job_{i}", "result", b"x") for i in range(3)]
    for i in (0, 1):
        envelope.open(tenant, f"job_{i}", "result", blobs[i])
    assert counting.unwraps == 2
    envelope.open(tenant, "job_0", "result", blobs[0])  # a hit makes job_0 most recent
    assert counting.unwraps == 2
    envelope.open(tenant, "job_2", "result", blobs[2])  # evicts job_1, the least recent
    assert counting.unwraps == 3
    envelope.open(tenant, "job_0", "result", blobs[0])
    envelope.open(tenant, "job_2", "result", blobs[2])
    assert counting.unwraps == 3
    envelope.open(tenant, "job_1", "result", blobs[1])
    assert counting.unwraps == 4


def test_cache_can_be_disabled(counting: CountingProvider, key: str, tenant: str) -> None:
    for envelope in (Envelope(counting, cache_size=0), Envelope(counting, cache_ttl_seconds=0)):
        blob = envelope.seal(key, tenant, "job_1", "result", b"counts")
        before = counting.unwraps
        envelope.open(tenant, "job_1", "result", blob)
        envelope.open(tenant, "job_1", "result", blob)
        assert counting.unwraps == before + 2


def test_negative_cache_settings_are_refused(keyring: LocalKeyring) -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        Envelope(keyring, cache_size=-1)
    with pytest.raises(ValueError, match="must not be negative"):
        Envelope(keyring, cache_ttl_seconds=-1)


def test_failed_open_is_not_cached(counting: CountingProvider, key: str, tenant: str) -> None:
    envelope = Envelope(counting)
    blob = envelope.seal(key, tenant, "job_1", "result", b"counts")
    with pytest.raises(DecryptionError):
        envelope.open(tenant, "job_1", "circuit", blob)
    envelope.open(tenant, "job_1", "result", blob)
    assert counting.unwraps == 2
    envelope.open(tenant, "job_1", "result", blob)
    assert counting.unwraps == 2


def test_uncached_provider_unwraps_on_every_open(
    counting: CountingProvider, key: str, tenant: str
) -> None:
    envelope = Envelope(counting, uncached=["local"])
    blob = envelope.seal(key, tenant, "job_1", "result", b"counts")
    for expected in (1, 2, 3):
        assert envelope.open(tenant, "job_1", "result", blob) == b"counts"
        assert counting.unwraps == expected
    # A key disabled at its source stops opening data at once.
    counting.inner.destroy_key(key)
    with pytest.raises(KeyUnavailable):
        envelope.open(tenant, "job_1", "result", blob)


def test_uncached_applies_only_to_the_providers_named(
    tmp_path: Path, ring: str, tenant: str
) -> None:
    local = CountingProvider(_keyring(tmp_path / "local"))
    hsm = CountingProvider(_keyring(tmp_path / "hsm"), name="hsm")
    envelope = Envelope({"local": local})
    envelope.add_provider(hsm, cached=False)
    local_blob = envelope.seal(local.create_key(ring, 1), tenant, "job_1", "result", b"a")
    hsm_blob = envelope.seal(hsm.create_key(ring, 2), tenant, "job_1", "result", b"b")
    for _ in range(3):
        assert envelope.open(tenant, "job_1", "result", local_blob) == b"a"
        assert envelope.open(tenant, "job_1", "result", hsm_blob) == b"b"
    assert local.unwraps == 1
    assert hsm.unwraps == 3


def test_forget_drops_only_the_keys_named(
    keyring: LocalKeyring, counting: CountingProvider, key: str, ring: str, tenant: str
) -> None:
    other = keyring.create_key(_ring(tenant), 1)
    envelope = Envelope(counting)
    a = envelope.seal(key, tenant, "job_1", "result", b"a")
    b = envelope.seal(other, tenant, "job_1", "result", b"b")
    envelope.open(tenant, "job_1", "result", a)
    envelope.open(tenant, "job_1", "result", b)
    assert counting.unwraps == 2
    envelope.forget([key, key_id("local", ring, 7)])
    envelope.open(tenant, "job_1", "result", b)
    assert counting.unwraps == 2
    envelope.open(tenant, "job_1", "result", a)
    assert counting.unwraps == 3


def test_providers_are_registered_under_their_own_names(keyring: LocalKeyring) -> None:
    with pytest.raises(ValueError, match="registered as"):
        Envelope({"pkcs11": keyring})
    assert Envelope({"local": keyring}).providers == {"local": keyring}
    assert Envelope(keyring).providers == {"local": keyring}


# Key material


def test_key_material_never_prints() -> None:
    secret = os.urandom(32)
    key = KeyMaterial(secret)
    for shown in (repr(key), str(key), f"{key}", f"{key!r}", f"{key:>80}", f"{[key]}"):
        assert "redacted" in shown
        assert secret.hex() not in shown
        assert repr(secret) not in shown
    assert key.reveal() == secret
    assert len(key) == 32


def test_key_material_compares_but_does_not_pickle_copy_or_hash() -> None:
    secret = os.urandom(32)
    assert KeyMaterial(secret) == KeyMaterial(secret)
    assert KeyMaterial(secret) != KeyMaterial(os.urandom(32))
    assert KeyMaterial(secret) != secret
    with pytest.raises(TypeError):
        pickle.dumps(KeyMaterial(secret))
    with pytest.raises(TypeError):
        copy.copy(KeyMaterial(secret))
    with pytest.raises(TypeError):
        copy.deepcopy(KeyMaterial(secret))
    with pytest.raises(TypeError):
        hash(KeyMaterial(secret))


def test_key_material_is_bytes_only() -> None:
    with pytest.raises(TypeError):
        KeyMaterial(bytearray(32))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        KeyMaterial("0" * 32)  # type: ignore[arg-type]

"""The local keyring: real files in tmp_path, real processes for the races."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap, aes_key_wrap

from qustody.crypto.envelope import Envelope
from qustody.crypto.errors import (
    DecryptionError,
    KeyringCorrupted,
    KeyUnavailable,
    MasterKeyMismatch,
)
from qustody.crypto.interfaces import KeyMaterial, KeyProvider, key_id
from qustody.crypto.local import MASTER_KEY_ENV, LocalKeyring
from qustody.domain.errors import ConfigurationError, InsecureDevelopmentWarning
from qustody.domain.ids import new_project_id, new_tenant_id

DEK = bytes(range(32))

# The on-disk format, written out here so that a change to it fails a test.
_FILE_AAD = b"qustody-keyring\x00v1"
_ENCRYPTION_INFO = b"qustody keyring v1: file encryption"
_FINGERPRINT_INFO = b"qustody keyring v1: master key fingerprint"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _env_key(key: bytes | None = None) -> dict[str, str]:
    key = os.urandom(32) if key is None else key
    return {MASTER_KEY_ENV: base64.urlsafe_b64encode(key).decode()}


def _ring(tenant: str | None = None, purpose: str = "payload") -> str:
    return f"{tenant or new_tenant_id()}.{new_project_id()}.{purpose}"


def _subkey(master: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master)


def _seal_document(path: Path, master: bytes, document: Any) -> None:
    """Write a keyring file holding ``document``, the way the keyring writes it."""
    nonce = os.urandom(12)
    plaintext = json.dumps(document, separators=(",", ":")).encode()
    ciphertext = AESGCM(_subkey(master, _ENCRYPTION_INFO)).encrypt(nonce, plaintext, _FILE_AAD)
    outer = {
        "format": "qustody-keyring",
        "version": 1,
        "master_key_fingerprint": _subkey(master, _FINGERPRINT_INFO)[:8].hex(),
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(ciphertext).decode(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(outer, indent=2) + "\n")
    path.chmod(0o600)


def _open_document(path: Path, master: bytes) -> Any:
    """The decrypted inner document of a keyring file."""
    outer = json.loads(path.read_text())
    plaintext = AESGCM(_subkey(master, _ENCRYPTION_INFO)).decrypt(
        base64.b64decode(outer["nonce"]), base64.b64decode(outer["ciphertext"]), _FILE_AAD
    )
    return json.loads(plaintext)


def _material(path: Path, master: bytes, ring: str, version: int) -> bytes:
    entry = _open_document(path, master)["rings"][ring]["keys"][str(version)]
    return base64.b64decode(entry["material"])


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "data" / "keyring.json", tmp_path / "data" / "master.key"


@pytest.fixture
def master() -> bytes:
    return os.urandom(32)


@pytest.fixture
def keyring(tmp_path: Path, master: bytes) -> LocalKeyring:
    return LocalKeyring(tmp_path / "keyring.json", KeyMaterial(master))


def test_is_a_development_key_provider(keyring: LocalKeyring, tmp_path: Path) -> None:
    provider: KeyProvider = keyring  # checked by mypy
    assert provider.name == "local"
    assert provider.is_development
    assert keyring.path == tmp_path / "keyring.json"


# Files and the master key


def test_open_or_create_makes_private_files(paths: tuple[Path, Path]) -> None:
    keyring_path, master_path = paths
    keyring = LocalKeyring.open_or_create(keyring_path, master_key_file=master_path, environ={})
    keyring.create_key(_ring(), 1)
    assert _mode(keyring_path) == 0o600
    assert _mode(master_path) == 0o600
    assert _mode(keyring_path.with_name("keyring.json.lock")) == 0o600
    assert _mode(keyring_path.parent) & 0o077 == 0
    assert len(base64.urlsafe_b64decode(master_path.read_text())) == 32
    leftovers = [p.name for p in keyring_path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_keys_persist_across_reopen(paths: tuple[Path, Path]) -> None:
    keyring_path, master_path = paths
    ring = _ring()
    first = LocalKeyring.open_or_create(keyring_path, master_key_file=master_path, environ={})
    assert first.create_key(ring, 1) == f"local:{ring}:v1"
    wrapped = first.wrap(f"local:{ring}:v1", DEK)

    again = LocalKeyring.open_or_create(keyring_path, master_key_file=master_path, environ={})
    assert again.has_key(f"local:{ring}:v1")
    assert again.unwrap(f"local:{ring}:v1", wrapped) == DEK
    assert again.wrap(f"local:{ring}:v1", DEK) == wrapped  # RFC 3394 is deterministic
    assert _mode(keyring_path) == 0o600  # still, after a rewrite


def test_create_key_is_idempotent_and_versions_are_distinct_keys(
    keyring: LocalKeyring, tmp_path: Path, master: bytes
) -> None:
    ring = _ring()
    v1 = keyring.create_key(ring, 1)
    wrapped = keyring.wrap(v1, DEK)
    before = (tmp_path / "keyring.json").read_bytes()
    assert keyring.create_key(ring, 1) == v1
    assert (tmp_path / "keyring.json").read_bytes() == before  # nothing rewritten
    assert keyring.wrap(v1, DEK) == wrapped  # the same KEK
    v2 = keyring.create_key(ring, 2)
    assert v2 == key_id("local", ring, 2)
    assert keyring.wrap(v2, DEK) != wrapped
    assert keyring.create_key(ring, 7) == f"local:{ring}:v7"  # versions need not be dense
    materials = {_material(tmp_path / "keyring.json", master, ring, v) for v in (1, 2, 7)}
    assert len(materials) == 3
    assert all(len(m) == 32 for m in materials)
    # The file's keys really are the KEKs: unwrap with the raw material.
    assert aes_key_unwrap(_material(tmp_path / "keyring.json", master, ring, 1), wrapped) == DEK


def test_keyring_file_is_sealed(paths: tuple[Path, Path]) -> None:
    keyring_path, master_path = paths
    tenant = new_tenant_id()
    ring = _ring(tenant)
    keyring = LocalKeyring.open_or_create(keyring_path, master_key_file=master_path, environ={})
    keyring.create_key(ring, 1)
    content = keyring_path.read_text()
    outer = json.loads(content)
    assert set(outer) == {"format", "version", "master_key_fingerprint", "nonce", "ciphertext"}
    assert outer["format"] == "qustody-keyring"
    assert outer["version"] == 1
    assert tenant not in content
    assert "payload" not in content
    assert "material" not in content
    master = base64.urlsafe_b64decode(master_path.read_text())
    document = _open_document(keyring_path, master)
    assert document["version"] == 2
    assert set(document["rings"]) == {ring}
    assert set(document["rings"][ring]["keys"]) == {"1"}
    assert base64.b64encode(_material(keyring_path, master, ring, 1)).decode() not in content


@pytest.mark.parametrize(
    "encode",
    [
        base64.urlsafe_b64encode,
        base64.b64encode,
        lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"="),
    ],
)
def test_master_key_from_environment(tmp_path: Path, encode: Callable[[bytes], bytes]) -> None:
    raw = os.urandom(32)
    env = {MASTER_KEY_ENV: encode(raw).decode() + "\n"}
    path = tmp_path / "keyring.json"
    ring = _ring()
    keyring = LocalKeyring.open_or_create(path, environ=env)
    keyring.create_key(ring, 1)
    reopened = LocalKeyring(path, KeyMaterial(raw))
    assert reopened.has_key(f"local:{ring}:v1")


def test_environment_wins_over_master_key_file(paths: tuple[Path, Path]) -> None:
    keyring_path, master_path = paths
    LocalKeyring.open_or_create(keyring_path, master_key_file=master_path, environ={})
    with pytest.raises(MasterKeyMismatch):
        LocalKeyring.open_or_create(keyring_path, master_key_file=master_path, environ=_env_key())


def test_missing_master_key_file_is_not_replaced(paths: tuple[Path, Path]) -> None:
    keyring_path, master_path = paths
    LocalKeyring.open_or_create(keyring_path, environ=_env_key())
    # The keyring exists; a master key file is never invented for it.
    with pytest.raises(ConfigurationError, match="master key file"):
        LocalKeyring.open_or_create(keyring_path, master_key_file=master_path, environ={})
    assert not master_path.exists()


@pytest.mark.parametrize("value", ["", "not base64!", base64.b64encode(b"short").decode()])
def test_bad_master_key_in_environment(tmp_path: Path, value: str) -> None:
    env = {MASTER_KEY_ENV: value or " "}
    with pytest.raises(ConfigurationError, match=MASTER_KEY_ENV) as caught:
        LocalKeyring.open_or_create(tmp_path / "keyring.json", environ=env)
    if value:
        assert value not in caught.value.detail
    assert not (tmp_path / "keyring.json").exists()


def test_bad_master_key_length(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="32 bytes"):
        LocalKeyring(tmp_path / "keyring.json", KeyMaterial(os.urandom(16)))
    assert not (tmp_path / "keyring.json").exists()


def test_no_master_key_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=MASTER_KEY_ENV):
        LocalKeyring.open_or_create(tmp_path / "keyring.json", environ={})


def test_wrong_master_key(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    LocalKeyring.open_or_create(path, environ=_env_key()).create_key(_ring(), 1)
    with pytest.raises(MasterKeyMismatch, match="different master key") as caught:
        LocalKeyring.open_or_create(path, environ=_env_key())
    assert caught.value.code == "master_key_mismatch"
    assert isinstance(caught.value, ConfigurationError)


def test_permissive_master_key_file_is_refused(paths: tuple[Path, Path]) -> None:
    keyring_path, master_path = paths
    LocalKeyring.open_or_create(keyring_path, master_key_file=master_path, environ={})
    master_path.chmod(0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        LocalKeyring.open_or_create(keyring_path, master_key_file=master_path, environ={})


# A damaged keyring file: corruption is told apart from a wrong master key


def _tamper(path: Path, field: str) -> None:
    outer = json.loads(path.read_text())
    raw = bytearray(base64.b64decode(outer[field]))
    raw[len(raw) // 2] ^= 0x01
    outer[field] = base64.b64encode(bytes(raw)).decode()
    path.write_text(json.dumps(outer))


@pytest.mark.parametrize("field", ["ciphertext", "nonce"])
def test_tampered_keyring_file(tmp_path: Path, field: str) -> None:
    path, env = tmp_path / "keyring.json", _env_key()
    LocalKeyring.open_or_create(path, environ=env).create_key(_ring(), 1)
    _tamper(path, field)
    with pytest.raises(KeyringCorrupted, match="integrity check") as caught:
        LocalKeyring.open_or_create(path, environ=env)
    assert caught.value.code == "keyring_corrupted"
    assert not isinstance(caught.value, MasterKeyMismatch)


def test_changed_fingerprint_reads_as_a_wrong_master_key(tmp_path: Path) -> None:
    path, env = tmp_path / "keyring.json", _env_key()
    LocalKeyring.open_or_create(path, environ=env).create_key(_ring(), 1)
    outer = json.loads(path.read_text())
    outer["master_key_fingerprint"] = "0" * 16
    path.write_text(json.dumps(outer))
    with pytest.raises(MasterKeyMismatch):
        LocalKeyring.open_or_create(path, environ=env)


def test_newer_file_format_is_refused(tmp_path: Path) -> None:
    path, env = tmp_path / "keyring.json", _env_key()
    LocalKeyring.open_or_create(path, environ=env)
    outer = json.loads(path.read_text())
    outer["version"] = 2
    path.write_text(json.dumps(outer))
    with pytest.raises(KeyringCorrupted, match="format version 2"):
        LocalKeyring.open_or_create(path, environ=env)


@pytest.mark.parametrize(
    "content",
    [b"", b"not json", b"[]", b'{"format": "something-else"}', b'{"format": "qustody-keyring"}'],
)
def test_garbage_keyring_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "keyring.json"
    path.write_bytes(content)
    with pytest.raises(KeyringCorrupted):
        LocalKeyring.open_or_create(path, environ=_env_key())


_GOOD_KEY = {"material": base64.b64encode(bytes(32)).decode(), "created_at": "2026-01-01"}


@pytest.mark.parametrize(
    "document",
    [
        {"version": 3, "rings": {}},
        {"rings": {}},
        {"version": 2, "tenants": {}},
        {"version": 2, "rings": []},
        {"version": 2, "rings": {"bad:ring": {"keys": {"1": _GOOD_KEY}}}},
        {"version": 2, "rings": {"ten_A.payload": {"keys": {"0": _GOOD_KEY}}}},
        {"version": 2, "rings": {"ten_A.payload": {"keys": {"v1": _GOOD_KEY}}}},
        {"version": 2, "rings": {"ten_A.payload": {"keys": {"1": {"material": "AAAA"}}}}},
        {
            "version": 2,
            "rings": {
                "ten_A.payload": {"keys": {"1": {"material": "AAAA", "created_at": "2026-01-01"}}}
            },
        },
        {"version": 2, "rings": {"ten_A.payload": {}}},
        [],
    ],
)
def test_authentic_but_invalid_document(tmp_path: Path, master: bytes, document: Any) -> None:
    path = tmp_path / "keyring.json"
    _seal_document(path, master, document)
    with pytest.raises(KeyringCorrupted, match="invalid structure"):
        LocalKeyring(path, KeyMaterial(master))


def test_tamper_seen_by_a_running_keyring(tmp_path: Path) -> None:
    path, env = tmp_path / "keyring.json", _env_key()
    keyring = LocalKeyring.open_or_create(path, environ=env)
    key = keyring.create_key(_ring(), 1)
    _tamper(path, "ciphertext")
    with pytest.raises(KeyringCorrupted):
        keyring.wrap(key, DEK)


def test_deleted_keyring_file_is_reported(tmp_path: Path) -> None:
    path, env = tmp_path / "keyring.json", _env_key()
    keyring = LocalKeyring.open_or_create(path, environ=env)
    key = keyring.create_key(_ring(), 1)
    path.unlink()
    with pytest.raises(KeyringCorrupted, match="disappeared"):
        keyring.has_key(key)


# Production and warnings


def test_production_mode_is_refused(paths: tuple[Path, Path]) -> None:
    keyring_path, master_path = paths
    with pytest.raises(ConfigurationError, match="HSM"):
        LocalKeyring.open_or_create(
            keyring_path, master_key_file=master_path, environ={}, production=True
        )
    with pytest.raises(ConfigurationError, match="HSM"):
        LocalKeyring(keyring_path, KeyMaterial(os.urandom(32)), production=True)
    assert not keyring_path.parent.exists()


def test_construction_warns(tmp_path: Path) -> None:
    with pytest.warns(InsecureDevelopmentWarning, match="development"):
        LocalKeyring(tmp_path / "keyring.json", KeyMaterial(os.urandom(32)))
    with pytest.warns(InsecureDevelopmentWarning):
        LocalKeyring.open_or_create(
            tmp_path / "other.json", master_key_file=tmp_path / "master.key", environ={}
        )


# Using keys


def test_unwrap_checks_ring_and_version(keyring: LocalKeyring) -> None:
    tenant = new_tenant_id()
    ring, other_project, other_tenant = _ring(tenant), _ring(tenant), _ring()
    key = keyring.create_key(ring, 1)
    for other in (other_project, other_tenant):
        keyring.create_key(other, 1)
    wrapped = keyring.wrap(key, DEK)
    assert keyring.unwrap(key, wrapped) == DEK
    for other in (other_project, other_tenant):
        with pytest.raises(DecryptionError):  # AES-KW's integrity check
            keyring.unwrap(f"local:{other}:v1", wrapped)
    with pytest.raises(KeyUnavailable, match="no such key"):
        keyring.unwrap(f"local:{ring}:v2", wrapped)
    for foreign in (f"pkcs11:{ring}:v1", f"local:{ring}:version1", f"local:{ring}", "garbage"):
        with pytest.raises(KeyUnavailable, match="does not belong"):
            keyring.unwrap(foreign, wrapped)
    for damaged in (wrapped[:-8], wrapped[:-1], wrapped + b"\x00", bytes(40), b""):
        with pytest.raises(DecryptionError):
            keyring.unwrap(key, damaged)


def test_key_never_created(keyring: LocalKeyring) -> None:
    missing = f"local:{_ring()}:v1"
    assert keyring.has_key(missing) is False
    with pytest.raises(KeyUnavailable, match="never created, or destroyed") as caught:
        keyring.wrap(missing, DEK)
    assert caught.value.key_id == missing
    with pytest.raises(KeyUnavailable):
        keyring.unwrap(missing, bytes(40))
    assert keyring.destroy_key(missing) is False


def test_ids_of_other_providers_are_refused(keyring: LocalKeyring) -> None:
    ring = _ring()
    keyring.create_key(ring, 1)
    foreign = f"pkcs11:{ring}:v1"
    with pytest.raises(KeyUnavailable):
        keyring.has_key(foreign)
    with pytest.raises(KeyUnavailable):
        keyring.wrap(foreign, DEK)
    with pytest.raises(KeyUnavailable):
        keyring.destroy_key(foreign)
    assert keyring.has_key(f"local:{ring}:v1")  # destroy_key refused: it is still there


def test_bad_arguments(keyring: LocalKeyring) -> None:
    for ring in ("", "ten:with:colons", "a..b", "a b", "a.b.c.d.e", "x" * 65):
        with pytest.raises(ValueError, match="key ring names"):
            keyring.create_key(ring, 1)
    ring = _ring()
    for version in (0, -1, 10**9):
        with pytest.raises(ValueError, match="invalid key id"):
            keyring.create_key(ring, version)
    key = keyring.create_key(ring, 1)
    for dek in (b"short", DEK + b"\x00", b""):
        with pytest.raises(ValueError, match="32 bytes"):
            keyring.wrap(key, dek)


def test_rewrap_moves_a_data_key_between_versions(keyring: LocalKeyring) -> None:
    ring = _ring()
    v1, v2 = keyring.create_key(ring, 1), keyring.create_key(ring, 2)
    wrapped = keyring.wrap(v1, DEK)
    moved = keyring.rewrap(v1, wrapped, v2)
    assert moved != wrapped
    assert moved == keyring.wrap(v2, DEK)
    assert keyring.unwrap(v2, moved) == DEK
    with pytest.raises(DecryptionError):
        keyring.rewrap(v2, wrapped, v1)  # not wrapped under v2
    with pytest.raises(KeyUnavailable):
        keyring.rewrap(v1, wrapped, f"local:{ring}:v3")


# Destroying keys (crypto-shredding)


def test_destroy_key(tmp_path: Path, master: bytes) -> None:
    path = tmp_path / "keyring.json"
    keyring = LocalKeyring(path, KeyMaterial(master))
    ring, other_ring = _ring(), _ring()
    v1, v2 = keyring.create_key(ring, 1), keyring.create_key(ring, 2)
    other = keyring.create_key(other_ring, 1)
    wrapped = keyring.wrap(v1, DEK)
    doomed = base64.b64encode(_material(path, master, ring, 1)).decode()
    kept = {(r, v): _material(path, master, r, v) for r, v in ((ring, 2), (other_ring, 1))}

    assert keyring.destroy_key(v1) is True
    assert keyring.has_key(v1) is False
    assert keyring.destroy_key(v1) is False
    with pytest.raises(KeyUnavailable):
        keyring.unwrap(v1, wrapped)
    with pytest.raises(KeyUnavailable):
        keyring.wrap(v1, DEK)

    # A fresh instance on the same file: the key is gone from the file itself.
    fresh = LocalKeyring(path, KeyMaterial(master))
    assert fresh.has_key(v1) is False
    assert fresh.has_key(v2)
    assert fresh.has_key(other)
    with pytest.raises(KeyUnavailable):
        fresh.unwrap(v1, wrapped)
    assert fresh.destroy_key(v1) is False
    document = _open_document(path, master)
    assert set(document["rings"][ring]["keys"]) == {"2"}
    assert doomed not in json.dumps(document)
    assert {(r, v): _material(path, master, r, v) for r, v in kept} == kept
    assert _mode(path) == 0o600

    # The last version of a ring goes, and the ring with it.
    assert fresh.destroy_key(v2) is True
    assert set(_open_document(path, master)["rings"]) == {other_ring}


def test_destroy_is_seen_by_another_instance(tmp_path: Path, master: bytes) -> None:
    path = tmp_path / "keyring.json"
    api, worker = LocalKeyring(path, KeyMaterial(master)), LocalKeyring(path, KeyMaterial(master))
    tenant = new_tenant_id()
    key = api.create_key(_ring(tenant), 1)
    blob = Envelope(api).seal(key, tenant, "job_1", "circuit", b"payload")
    assert Envelope(worker).open(tenant, "job_1", "circuit", blob) == b"payload"
    assert worker.destroy_key(key) is True
    assert api.has_key(key) is False
    with pytest.raises(KeyUnavailable):
        Envelope(api).open(tenant, "job_1", "circuit", blob)
    assert api.destroy_key(key) is False


def test_sees_keys_created_by_another_instance(tmp_path: Path, master: bytes) -> None:
    path = tmp_path / "keyring.json"
    api, worker = LocalKeyring(path, KeyMaterial(master)), LocalKeyring(path, KeyMaterial(master))
    tenant = new_tenant_id()
    ring = _ring(tenant)
    key = api.create_key(ring, 1)
    assert worker.has_key(key)
    blob = Envelope(api).seal(key, tenant, "job_1", "circuit", b"payload")
    assert Envelope(worker).open(tenant, "job_1", "circuit", blob) == b"payload"
    # A new version created by one is used by the other; neither loses the other's keys.
    v2 = worker.create_key(ring, 2)
    later = api.create_key(_ring(), 1)
    assert worker.unwrap(later, api.wrap(later, DEK)) == DEK
    assert api.unwrap(v2, worker.wrap(v2, DEK)) == DEK
    fresh = LocalKeyring(path, KeyMaterial(master))
    assert all(fresh.has_key(k) for k in (key, v2, later))


# Keyring files written before key rings (document version 1)


def test_reads_a_version_1_document(tmp_path: Path, master: bytes) -> None:
    path = tmp_path / "keyring.json"
    tenant, other = new_tenant_id(), new_tenant_id()
    materials = {
        (tenant, 1): os.urandom(32),
        (tenant, 2): os.urandom(32),
        (other, 1): os.urandom(32),
    }

    def entry(raw: bytes) -> dict[str, str]:
        return {
            "material": base64.b64encode(raw).decode(),
            "created_at": "2026-01-01T00:00:00+00:00",
        }

    _seal_document(
        path,
        master,
        {
            "version": 1,
            "tenants": {
                tenant: {
                    "current": 2,
                    "keys": {"1": entry(materials[tenant, 1]), "2": entry(materials[tenant, 2])},
                },
                other: {"current": 1, "keys": {"1": entry(materials[other, 1])}},
            },
        },
    )
    keyring = LocalKeyring(path, KeyMaterial(master))
    for (ring, version), raw in materials.items():
        kid = key_id("local", ring, version)  # ring = tenant id
        assert keyring.has_key(kid)
        wrapped = keyring.wrap(kid, DEK)
        assert wrapped == aes_key_wrap(raw, DEK)  # the very key from the old file
        assert keyring.unwrap(kid, aes_key_wrap(raw, DEK)) == DEK
    assert not keyring.has_key(key_id("local", tenant, 3))

    # The envelope addresses a tenant-wide ring named by the tenant id.
    blob = Envelope(keyring).seal(f"local:{tenant}:v2", tenant, "job_1", "result", b"counts")
    assert Envelope(keyring).open(tenant, "job_1", "result", blob) == b"counts"

    # The next write upgrades the document and keeps every old key.
    new_ring = _ring(tenant)
    keyring.create_key(new_ring, 1)
    document = _open_document(path, master)
    assert document["version"] == 2
    assert "tenants" not in document
    assert set(document["rings"]) == {tenant, other, new_ring}
    for (ring, version), raw in materials.items():
        assert _material(path, master, ring, version) == raw
    reopened = LocalKeyring(path, KeyMaterial(master))
    assert reopened.has_key(key_id("local", other, 1))
    assert Envelope(reopened).open(tenant, "job_1", "result", blob) == b"counts"


# Several processes on one file


_RACER = textwrap.dedent(
    """
    import json, os, sys, time, warnings
    from pathlib import Path
    from qustody.crypto.local import LocalKeyring

    warnings.simplefilter("ignore")
    keyring_path, master_path, ready, go, order, count = sys.argv[1:7]
    rings = [f"ten_race{i:02d}.prj_x.payload" for i in range(int(count))]
    if order == "reverse":
        rings.reverse()
    Path(ready).touch()
    while not os.path.exists(go):
        time.sleep(0.0005)
    keyring = LocalKeyring.open_or_create(
        Path(keyring_path), master_key_file=Path(master_path), environ={}
    )
    out = {}
    for ring in rings:
        for version in (1, 2):
            key_id = keyring.create_key(ring, version)
            out[key_id] = keyring.wrap(key_id, bytes(range(32))).hex()
    print(json.dumps(out))
    """
)


def test_concurrent_creation_from_processes(paths: tuple[Path, Path], tmp_path: Path) -> None:
    keyring_path, master_path = paths
    go = tmp_path / "go"
    rings = 20
    orders = ("forward", "reverse", "forward", "reverse")
    env = {k: v for k, v in os.environ.items() if k != MASTER_KEY_ENV}
    readies = [tmp_path / f"ready_{i}" for i in range(len(orders))]
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(keyring_path), str(master_path), str(ready),
             str(go), order, str(rings)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        for ready, order in zip(readies, orders, strict=True)
    ]  # fmt: skip
    # Open the gate once every interpreter is waiting at it (however long
    # starting them takes); a racer that died early is reported below.
    while not all(ready.exists() for ready in readies):
        if any(racer.poll() is not None for racer in racers):
            break
        time.sleep(0.01)
    go.touch()
    results = []
    for racer in racers:
        stdout, stderr = racer.communicate(timeout=240)
        assert racer.returncode == 0, stderr
        results.append(json.loads(stdout))

    # Every process saw the same single key per ring and version: deterministic
    # key wrap of the same DEK gives the same bytes only under the same KEK.
    assert all(result == results[0] for result in results)
    assert len(results[0]) == 2 * rings
    assert len(set(results[0].values())) == 2 * rings
    keyring = LocalKeyring.open_or_create(keyring_path, master_key_file=master_path, environ={})
    for kid, wrapped in results[0].items():
        assert keyring.unwrap(kid, bytes.fromhex(wrapped)) == DEK
        ring = kid.split(":")[1]
        with pytest.raises(KeyUnavailable):
            keyring.unwrap(f"local:{ring}:v3", bytes.fromhex(wrapped))
    assert _mode(keyring_path) == 0o600
    assert _mode(master_path) == 0o600

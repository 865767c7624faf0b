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
from pathlib import Path

import pytest

from qustody.crypto.envelope import Envelope
from qustody.crypto.errors import (
    DecryptionError,
    KeyringCorrupted,
    KeyUnavailable,
    MasterKeyMismatch,
)
from qustody.crypto.interfaces import KeyMaterial
from qustody.crypto.local import MASTER_KEY_ENV, LocalKeyring
from qustody.domain.errors import ConfigurationError, InsecureDevelopmentWarning
from qustody.domain.ids import TenantId, new_tenant_id

DEK = bytes(range(32))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _env_key(key: bytes | None = None) -> dict[str, str]:
    key = os.urandom(32) if key is None else key
    return {MASTER_KEY_ENV: base64.urlsafe_b64encode(key).decode()}


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "data" / "keyring.json", tmp_path / "data" / "master.key"


def test_open_or_create_makes_private_files(paths: tuple[Path, Path]) -> None:
    keyring_path, master_path = paths
    keyring = LocalKeyring.open_or_create(keyring_path, master_key_file=master_path, environ={})
    keyring.ensure_tenant_key(new_tenant_id())
    assert _mode(keyring_path) == 0o600
    assert _mode(master_path) == 0o600
    assert _mode(keyring_path.with_name("keyring.json.lock")) == 0o600
    assert len(base64.urlsafe_b64decode(master_path.read_text())) == 32
    leftovers = [p.name for p in keyring_path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_tenant_keys_persist_across_reopen(paths: tuple[Path, Path]) -> None:
    keyring_path, master_path = paths
    tenant = new_tenant_id()
    first = LocalKeyring.open_or_create(keyring_path, master_key_file=master_path, environ={})
    assert first.ensure_tenant_key(tenant) == f"local:{tenant}:v1"
    assert first.ensure_tenant_key(tenant) == f"local:{tenant}:v1"
    key_id, wrapped = first.wrap(tenant, DEK)

    again = LocalKeyring.open_or_create(keyring_path, master_key_file=master_path, environ={})
    assert again.current_key_id(tenant) == key_id
    assert again.unwrap(tenant, key_id, wrapped) == DEK
    assert again.wrap(tenant, DEK) == (key_id, wrapped)  # RFC 3394 is deterministic


def test_keyring_file_is_sealed(paths: tuple[Path, Path]) -> None:
    keyring_path, master_path = paths
    tenant = new_tenant_id()
    keyring = LocalKeyring.open_or_create(keyring_path, master_key_file=master_path, environ={})
    keyring.ensure_tenant_key(tenant)
    content = keyring_path.read_text()
    outer = json.loads(content)
    assert outer["format"] == "qustody-keyring"
    assert outer["version"] == 1
    assert tenant not in content
    assert "material" not in content


@pytest.mark.parametrize(
    "encode",
    [
        base64.urlsafe_b64encode,
        base64.b64encode,
        lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"="),
    ],
)
def test_master_key_from_environment(tmp_path: Path, encode: object) -> None:
    assert callable(encode)
    raw = os.urandom(32)
    env = {MASTER_KEY_ENV: encode(raw).decode() + "\n"}
    path = tmp_path / "keyring.json"
    tenant = new_tenant_id()
    keyring = LocalKeyring.open_or_create(path, environ=env)
    keyring.ensure_tenant_key(tenant)
    reopened = LocalKeyring(path, KeyMaterial(raw))
    assert reopened.current_key_id(tenant) == f"local:{tenant}:v1"


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


def test_no_master_key_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=MASTER_KEY_ENV):
        LocalKeyring.open_or_create(tmp_path / "keyring.json", environ={})


def test_wrong_master_key(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    LocalKeyring.open_or_create(path, environ=_env_key()).ensure_tenant_key(new_tenant_id())
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


def _tamper(path: Path, field: str) -> None:
    outer = json.loads(path.read_text())
    raw = bytearray(base64.b64decode(outer[field]))
    raw[len(raw) // 2] ^= 0x01
    outer[field] = base64.b64encode(bytes(raw)).decode()
    path.write_text(json.dumps(outer))


@pytest.mark.parametrize("field", ["ciphertext", "nonce"])
def test_tampered_keyring_file(tmp_path: Path, field: str) -> None:
    path, env = tmp_path / "keyring.json", _env_key()
    LocalKeyring.open_or_create(path, environ=env).ensure_tenant_key(new_tenant_id())
    _tamper(path, field)
    with pytest.raises(KeyringCorrupted, match="integrity check") as caught:
        LocalKeyring.open_or_create(path, environ=env)
    assert caught.value.code == "keyring_corrupted"


@pytest.mark.parametrize(
    "content",
    [b"", b"not json", b"[]", b'{"format": "something-else"}', b'{"format": "qustody-keyring"}'],
)
def test_garbage_keyring_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "keyring.json"
    path.write_bytes(content)
    with pytest.raises(KeyringCorrupted):
        LocalKeyring.open_or_create(path, environ=_env_key())


def test_tamper_seen_by_a_running_keyring(tmp_path: Path) -> None:
    path, env = tmp_path / "keyring.json", _env_key()
    keyring = LocalKeyring.open_or_create(path, environ=env)
    tenant = new_tenant_id()
    keyring.ensure_tenant_key(tenant)
    _tamper(path, "ciphertext")
    with pytest.raises(KeyringCorrupted):
        keyring.wrap(tenant, DEK)


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


def test_unwrap_checks_tenant_and_version(tmp_path: Path) -> None:
    keyring = LocalKeyring(tmp_path / "keyring.json", KeyMaterial(os.urandom(32)))
    tenant, other = new_tenant_id(), new_tenant_id()
    keyring.ensure_tenant_key(tenant)
    keyring.ensure_tenant_key(other)
    key_id, wrapped = keyring.wrap(tenant, DEK)
    with pytest.raises(DecryptionError):
        keyring.unwrap(other, key_id, wrapped)
    with pytest.raises(KeyUnavailable):
        keyring.unwrap(tenant, f"local:{tenant}:v2", wrapped)
    with pytest.raises(DecryptionError):
        keyring.unwrap(tenant, f"local:{tenant}:version1", wrapped)
    with pytest.raises(KeyUnavailable):
        keyring.unwrap(tenant, f"pkcs11:{tenant}:v1", wrapped)
    with pytest.raises(DecryptionError):
        keyring.unwrap(tenant, key_id, wrapped[:-8])
    with pytest.raises(DecryptionError):
        keyring.unwrap(tenant, key_id, bytes(40))


def test_tenant_without_key(tmp_path: Path) -> None:
    keyring = LocalKeyring(tmp_path / "keyring.json", KeyMaterial(os.urandom(32)))
    tenant = new_tenant_id()
    with pytest.raises(KeyUnavailable, match="ensure_tenant_key"):
        keyring.current_key_id(tenant)
    with pytest.raises(KeyUnavailable):
        keyring.wrap(tenant, DEK)


def test_bad_arguments(tmp_path: Path) -> None:
    keyring = LocalKeyring(tmp_path / "keyring.json", KeyMaterial(os.urandom(32)))
    with pytest.raises(ValueError, match="tenant ids"):
        keyring.ensure_tenant_key(TenantId("ten:with:colons"))
    tenant = new_tenant_id()
    keyring.ensure_tenant_key(tenant)
    with pytest.raises(ValueError, match="32 bytes"):
        keyring.wrap(tenant, b"short")


def test_sees_keys_created_by_another_instance(tmp_path: Path) -> None:
    path, master = tmp_path / "keyring.json", KeyMaterial(os.urandom(32))
    api, worker = LocalKeyring(path, master), LocalKeyring(path, master)
    tenant = new_tenant_id()
    api.ensure_tenant_key(tenant)
    assert worker.current_key_id(tenant) == f"local:{tenant}:v1"
    blob = Envelope(api).seal(tenant, "job_1", "circuit", b"payload")
    assert Envelope(worker).open(tenant, "job_1", "circuit", blob) == b"payload"
    # A key created elsewhere is found on an unwrap miss, without a stat change.
    later = new_tenant_id()
    api.ensure_tenant_key(later)
    key_id, wrapped = api.wrap(later, DEK)
    assert worker.unwrap(later, key_id, wrapped) == DEK


_RACER = textwrap.dedent(
    """
    import json, os, sys, time, warnings
    from pathlib import Path
    from qustody.crypto.local import LocalKeyring
    from qustody.domain.ids import TenantId

    warnings.simplefilter("ignore")
    keyring_path, master_path, go, order = sys.argv[1:5]
    tenants = [TenantId(f"ten_race_{i:02d}") for i in range(int(sys.argv[5]))]
    if order == "reverse":
        tenants.reverse()
    while not os.path.exists(go):
        time.sleep(0.0005)
    keyring = LocalKeyring.open_or_create(
        Path(keyring_path), master_key_file=Path(master_path), environ={}
    )
    out = {}
    for tenant in tenants:
        key_id = keyring.ensure_tenant_key(tenant)
        out[tenant] = [key_id, keyring.wrap(tenant, bytes(range(32)))[1].hex()]
    print(json.dumps(out))
    """
)


def test_concurrent_creation_from_processes(paths: tuple[Path, Path], tmp_path: Path) -> None:
    keyring_path, master_path = paths
    go = tmp_path / "go"
    tenants = 25
    env = {k: v for k, v in os.environ.items() if k != MASTER_KEY_ENV}
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(keyring_path), str(master_path), str(go), order,
             str(tenants)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        for order in ("forward", "reverse", "forward")
    ]  # fmt: skip
    time.sleep(0.5)  # let every interpreter start and wait at the gate
    go.touch()
    results = []
    for racer in racers:
        stdout, stderr = racer.communicate(timeout=120)
        assert racer.returncode == 0, stderr
        results.append(json.loads(stdout))

    # Every process saw the same single v1 key per tenant: deterministic key
    # wrap of the same DEK gives the same bytes only under the same KEK.
    assert results[0] == results[1] == results[2]
    keyring = LocalKeyring.open_or_create(keyring_path, master_key_file=master_path, environ={})
    for tenant, (key_id, wrapped) in results[0].items():
        assert key_id == f"local:{tenant}:v1"
        assert keyring.unwrap(TenantId(tenant), key_id, bytes.fromhex(wrapped)) == DEK
        with pytest.raises(KeyUnavailable):
            keyring.unwrap(TenantId(tenant), f"local:{tenant}:v2", bytes.fromhex(wrapped))
    assert len(results[0]) == tenants
    assert _mode(keyring_path) == 0o600
    assert _mode(master_path) == 0o600

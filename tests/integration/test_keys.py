"""Key rings, rotation with a background rewrap, disabling and crypto-shredding,
on real SQLite and PostgreSQL with the real local keyring."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from qustody.api.app import Runtime
from qustody.audit.recorder import Actor
from qustody.crypto.errors import KeyUnavailable
from qustody.domain.errors import NotFound
from qustody.domain.ids import new_id
from qustody.domain.vocabulary import DataClass
from qustody.jobs.service import SubmitRequest
from qustody.keys.errors import DataDestroyed, KeysDisabled
from qustody.keys.service import KeyScope, KeyService, Purpose
from qustody.storage import models as m
from support import Tenancy, ctx, ghz_qasm2

OPERATOR = Actor.system("cli:operator")


def _tenant_id(runtime: Runtime, name: str) -> str:
    with runtime.services.db.reading() as connection:
        return str(connection.execute(select(m.Tenant.id).where(m.Tenant.name == name)).scalar())


def _seal_many(keys: KeyService, scope: KeyScope, count: int) -> dict[str, bytes]:
    values = {}
    with keys._db.writing() as connection:
        for i in range(count):
            object_id = new_id("obj")
            values[object_id] = f"value {i} of {scope.ring}".encode()
            keys.seal(connection, scope, object_id, "value", values[object_id])
    return values


def _open_all(keys: KeyService, tenant_id: str, values: dict[str, bytes]) -> None:
    with keys._db.reading() as connection:
        for object_id, plaintext in values.items():
            assert keys.open(connection, tenant_id, object_id, "value") == plaintext


def _events(runtime: Runtime, event_type: str) -> list[m.AuditEvent]:
    with runtime.services.db.read() as session:
        return list(
            session.scalars(select(m.AuditEvent).where(m.AuditEvent.event_type == event_type))
        )


def test_jobs_seal_circuit_and_metadata_under_project_rings(
    runtime: Runtime, tenancy: Tenancy
) -> None:
    jobs = runtime.services.jobs
    view = jobs.submit(
        tenancy.developer,
        ctx(),
        SubmitRequest(
            project="research",
            backend="aer-automatic",
            shots=16,
            qasm=ghz_qasm2(3),
            name="ghz-calibration-run",
            labels={"experiment": "tomography-alpha"},
        ),
    )
    shown = jobs.get(tenancy.developer, ctx(), view.id)
    assert shown.name == "ghz-calibration-run"
    assert shown.labels == {"experiment": "tomography-alpha"}
    listed = jobs.list_jobs(tenancy.developer, ctx())
    assert [j.labels for j in listed.items if j.id == view.id] == [
        {"experiment": "tomography-alpha"}
    ]
    with runtime.services.db.read() as session:
        rows = session.execute(
            select(m.SealedObject.field, m.SealedObject.key_id).where(
                m.SealedObject.object_id == view.id
            )
        ).all()
    tenant = tenancy.developer.tenant_id
    assert dict(rows) == {
        "circuit": f"local:{tenant}.{tenancy.project_id}.payload:v1",
        "metadata": f"local:{tenant}.{tenancy.project_id}.metadata:v1",
    }
    database = runtime.services.settings.data_dir / "qustody.db"
    if database.exists():  # SQLite: nothing of the metadata is anywhere in the file
        raw = database.read_bytes() + Path(f"{database}-wal").read_bytes()
        for secret in (b"ghz-calibration-run", b"tomography-alpha", b"experiment"):
            assert secret not in raw
    assert len(_events(runtime, "key:create")) == 2


def test_rotation_rewraps_without_touching_bodies_and_retires_the_old_version(
    runtime: Runtime, tenancy: Tenancy
) -> None:
    keys = runtime.keys
    tenant = tenancy.developer.tenant_id
    scope = KeyScope(tenant, tenancy.project_id, Purpose.PAYLOAD)
    values = _seal_many(keys, scope, 40)
    with runtime.services.db.read() as session:
        bodies = dict(session.execute(select(m.SealedObject.object_id, m.SealedObject.body)).all())

    rotated = keys.rotate(OPERATOR, tenant, tenancy.project_id)
    assert rotated == [f"local:{scope.ring}:v2"]
    before = {r.ring: r for r in keys.rings(tenant)}[scope.ring]
    assert [(v.version, v.state, v.objects) for v in before.versions] == [
        (1, "retiring", 40),
        (2, "current", 0),
    ]
    _open_all(keys, tenant, values)  # old versions still open during the rewrap

    progress = keys.rewrap_all(batch=16)
    assert progress.moved == 40
    assert progress.retired == [f"local:{scope.ring}:v1"]
    after = {r.ring: r for r in keys.rings(tenant)}[scope.ring]
    assert [(v.version, v.state, v.objects) for v in after.versions] == [
        (1, "retired", 0),
        (2, "current", 40),
    ]
    with runtime.services.db.read() as session:
        assert (
            dict(session.execute(select(m.SealedObject.object_id, m.SealedObject.body)).all())
            == bodies
        )
    _open_all(keys, tenant, values)
    provider = keys.envelope.providers["local"]
    assert not provider.has_key(f"local:{scope.ring}:v1")  # retired keys are destroyed
    assert [e.event_type for e in _events(runtime, "key:rotate")] == ["key:rotate"]
    assert len(_events(runtime, "key:retire")) == 1


def test_rotation_under_concurrent_writes_and_a_failure_mid_rewrap(
    runtime: Runtime, tenancy: Tenancy
) -> None:
    keys = runtime.keys
    tenant = tenancy.developer.tenant_id
    scope = KeyScope(tenant, tenancy.project_id, Purpose.PAYLOAD)
    values = _seal_many(keys, scope, 60)
    keys.rotate(OPERATOR, tenant, tenancy.project_id)

    written: dict[str, bytes] = {}
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            written.update(_seal_many(keys, scope, 3))

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for thread in threads:
        thread.start()
    provider = keys.envelope.providers["local"]
    original = provider.rewrap
    calls = {"n": 0}

    def failing_rewrap(key_id: str, wrapped: bytes, new_key_id: str) -> bytes:
        calls["n"] += 1
        if calls["n"] == 25:
            raise KeyUnavailable(key_id, "simulated provider outage mid-batch")
        return original(key_id, wrapped, new_key_id)

    provider.rewrap = failing_rewrap  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyUnavailable):
            keys.rewrap_all(batch=10)
    finally:
        provider.rewrap = original  # type: ignore[method-assign]
    partial = {r.ring: r for r in keys.rings(tenant)}[scope.ring]
    assert partial.versions[0].objects == 40  # two batches committed, the third rolled back
    keys.rewrap_all(batch=10)
    stop.set()
    for thread in threads:
        thread.join()
    final = {r.ring: r for r in keys.rings(tenant)}[scope.ring]
    assert [(v.version, v.state) for v in final.versions] == [(1, "retired"), (2, "current")]
    assert final.versions[1].objects == 60 + len(written)
    _open_all(keys, tenant, values | written)


_REWRAP_CHILD = textwrap.dedent(
    """
    import sys, time
    from qustody.api.app import build_runtime
    from qustody.settings import load_settings
    runtime = build_runtime(load_settings())
    provider = runtime.keys.envelope.providers["local"]
    original = provider.rewrap
    def slow(*args):
        time.sleep(0.01)
        return original(*args)
    provider.rewrap = slow
    print("ready", flush=True)
    runtime.keys.rewrap_all(batch=5)
    """
)


def test_a_rewrap_killed_midway_resumes_and_loses_nothing(
    runtime: Runtime, tenancy: Tenancy, database_url: str
) -> None:
    keys = runtime.keys
    tenant = tenancy.developer.tenant_id
    scope = KeyScope(tenant, tenancy.project_id, Purpose.PAYLOAD)
    values = _seal_many(keys, scope, 120)
    keys.rotate(OPERATOR, tenant, tenancy.project_id)
    old_key = f"local:{scope.ring}:v1"
    env = {
        **os.environ,
        **runtime.services.settings.environment(),
        "QUSTODY_DATABASE_URL": database_url,
    }
    child = subprocess.Popen([sys.executable, "-c", _REWRAP_CHILD], env=env, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready"
        query = select(func.count()).where(m.SealedObject.key_id == old_key)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait for a few committed batches, then kill
            with runtime.services.db.reading() as connection:
                left = connection.execute(query).scalar_one()
            if left <= 100:
                break
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(30)
        if child.stdout is not None:
            child.stdout.close()
    with runtime.services.db.reading() as connection:
        left = connection.execute(query).scalar_one()
    assert 0 < left < 120, "the kill landed mid-rewrap"
    _open_all(keys, tenant, values)
    progress = keys.rewrap_all()
    assert progress.moved == left
    assert progress.retired == [old_key]
    _open_all(keys, tenant, values)


def test_destroying_a_project_shreds_exactly_its_data(runtime: Runtime, tenancy: Tenancy) -> None:
    keys = runtime.keys
    tenant = tenancy.developer.tenant_id
    admin = runtime.services.admin
    boss = tenancy.tenant_admin
    other = admin.create_project(boss, ctx(), "other", DataClass.INTERNAL).id
    doomed_payload = _seal_many(keys, KeyScope(tenant, tenancy.project_id, Purpose.PAYLOAD), 12)
    doomed_meta = _seal_many(keys, KeyScope(tenant, tenancy.project_id, Purpose.METADATA), 5)
    kept = _seal_many(keys, KeyScope(tenant, other, Purpose.PAYLOAD), 7)
    keys.rotate(OPERATOR, tenant, tenancy.project_id)  # a retiring version is destroyed too

    certificate = keys.destroy(OPERATOR, tenant, tenancy.project_id, "project closed")

    content = certificate.content
    assert content["objects"] == 17
    assert content["tenant_id"] == tenant
    assert content["project_id"] == tenancy.project_id
    assert content["actor"] == "cli:operator"
    destroyed = {k["key_id"]: k for k in content["keys"]}  # type: ignore[attr-defined]
    ring = f"{tenant}.{tenancy.project_id}"
    assert set(destroyed) == {
        f"local:{ring}.payload:v1",
        f"local:{ring}.payload:v2",
        f"local:{ring}.metadata:v1",
        f"local:{ring}.metadata:v2",
    }
    assert destroyed[f"local:{ring}.payload:v1"]["objects"] == 12
    assert all(k["verified_absent"] for k in destroyed.values())
    assert hashlib.sha256(certificate.document.encode()).hexdigest() == certificate.sha256
    (event,) = _events(runtime, "key:destroy")
    assert event.payload_sha256 == certificate.sha256
    assert event.resource_id == certificate.id

    # Every affected object: refused by the gateway, and cryptographically gone.
    provider = keys.envelope.providers["local"]
    with runtime.services.db.reading() as connection:
        for object_id in doomed_payload | doomed_meta:
            with pytest.raises(DataDestroyed):
                keys.open(connection, tenant, object_id, "value")
        rows = connection.execute(
            select(m.SealedObject.key_id, m.SealedObject.wrapped_dek).where(
                m.SealedObject.object_id.in_(list(doomed_payload | doomed_meta))
            )
        ).all()
    assert len(rows) == 17
    for key, wrapped in rows:
        with pytest.raises(KeyUnavailable):
            provider.unwrap(key, wrapped)
    _open_all(keys, tenant, kept)
    with runtime.services.db.writing() as connection, pytest.raises(DataDestroyed):
        keys.seal(
            connection, KeyScope(tenant, tenancy.project_id, Purpose.PAYLOAD), "obj_x", "v", b"x"
        )
    assert keys.certificates(tenant)[0].document == certificate.document
    again = keys.destroy(OPERATOR, tenant, tenancy.project_id, "repeat")
    assert again.content["keys"] == []


def test_destroying_a_tenant_stops_new_rings(runtime: Runtime, tenancy: Tenancy) -> None:
    keys = runtime.keys
    tenant = tenancy.developer.tenant_id
    values = _seal_many(keys, KeyScope(tenant, tenancy.project_id, Purpose.PAYLOAD), 3)
    certificate = keys.destroy(OPERATOR, tenant, None, "tenant offboarded")
    assert certificate.content["objects"] == 3
    late = runtime.services.admin.create_project(
        tenancy.tenant_admin, ctx(), "late", DataClass.INTERNAL
    ).id
    with runtime.services.db.writing() as connection, pytest.raises(DataDestroyed):
        keys.seal(connection, KeyScope(tenant, late, Purpose.PAYLOAD), "obj_y", "v", b"y")
    with runtime.services.db.reading() as connection:
        for object_id in values:
            with pytest.raises(DataDestroyed):
                keys.open(connection, tenant, object_id, "value")
    # The other tenant is untouched.
    globex = _tenant_id(runtime, "globex")
    kept = _seal_many(keys, KeyScope(globex, tenancy.outsider_project_id, Purpose.PAYLOAD), 2)
    _open_all(keys, globex, kept)


def test_disabling_a_tenants_keys_blocks_reads_and_writes_at_once(
    runtime: Runtime, tenancy: Tenancy
) -> None:
    keys = runtime.keys
    tenant = tenancy.developer.tenant_id
    scope = KeyScope(tenant, tenancy.project_id, Purpose.PAYLOAD)
    values = _seal_many(keys, scope, 3)
    _open_all(keys, tenant, values)  # the DEKs are now cached
    assert keys.set_enabled(OPERATOR, tenant, False, "incident 42") == 1
    with runtime.services.db.reading() as connection:
        for object_id in values:
            with pytest.raises(KeysDisabled) as refused:
                keys.open(connection, tenant, object_id, "value")
    assert "qustody keys enable" in refused.value.detail
    with runtime.services.db.writing() as connection, pytest.raises(KeysDisabled):
        keys.seal(connection, scope, "obj_z", "value", b"z")
    assert keys.set_enabled(OPERATOR, tenant, True, "incident 42 closed") == 1
    _open_all(keys, tenant, values)
    reasons = [e.reason for e in _events(runtime, "key:disable") + _events(runtime, "key:enable")]
    assert reasons == [
        "1 key rings disabled: incident 42",
        "1 key rings active: incident 42 closed",
    ]


def test_destroyed_job_data_fails_the_job_read_with_a_clear_error(
    runtime: Runtime, tenancy: Tenancy
) -> None:
    jobs = runtime.services.jobs
    view = jobs.submit(
        tenancy.developer,
        ctx(),
        SubmitRequest(project="research", backend="aer-automatic", shots=8, qasm=ghz_qasm2(2)),
    )
    runtime.keys.destroy(OPERATOR, tenancy.developer.tenant_id, tenancy.project_id, "test")
    worker, sandbox = runtime.make_worker(slots=1)
    try:
        assert worker.claim() is None  # its circuit can't be opened: failed at claim
    finally:
        sandbox.close()
    shown = jobs.get(tenancy.developer, ctx(), view.id)
    assert shown.state == "failed"
    assert shown.error_code == "data_destroyed"
    assert json.dumps(shown.error_detail).count("crypto-shredded") == 1


def test_a_secret_opens_only_for_its_tenant_and_each_use_is_recorded(
    runtime: Runtime, tenancy: Tenancy
) -> None:
    vault = runtime.services.tenant_keys
    value = b"provider-credential-93f1"
    vault.set_secret(tenancy.tenant_admin, ctx(), "qpu-token", value)
    tenant = tenancy.tenant_admin.tenant_id
    opened = vault.use_secret(tenant, "qpu-token", job_id="job_test")
    assert opened.reveal() == value
    assert value.decode() not in repr(opened)
    with pytest.raises(NotFound):
        vault.use_secret(_tenant_id(runtime, "globex"), "qpu-token", job_id="job_test")
    (use,) = _events(runtime, "secret:use")
    assert use.job_id == "job_test"
    assert use.tenant_id == tenant
    with runtime.services.db.read() as session:
        stored = session.scalars(
            select(m.SealedObject.key_id).where(m.SealedObject.field == "value")
        )
        assert list(stored) == [f"local:{tenant}.secret:v1"]
    # Replacing a secret reseals it; deleting it removes the sealed value too.
    vault.set_secret(tenancy.tenant_admin, ctx(), "qpu-token", b"rotated-credential")
    assert vault.use_secret(tenant, "qpu-token", job_id="job_2").reveal() == b"rotated-credential"
    vault.delete_secret(tenancy.tenant_admin, ctx(), "qpu-token")
    with runtime.services.db.read() as session:
        assert (
            session.scalar(
                select(func.count())
                .select_from(m.SealedObject)
                .where(m.SealedObject.field == "value")
            )
            == 0
        )
    with pytest.raises(NotFound):
        vault.use_secret(tenant, "qpu-token", job_id="job_3")

"""The gateway on a PKCS#11 HSM (SoftHSM2): a whole job, rotation and shredding
with keys that never leave the token, and a tenant's own key that it can
switch off."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from qustody.api.app import Runtime, build_runtime
from qustody.audit.recorder import Actor
from qustody.crypto.errors import KeyUnavailable
from qustody.crypto.files import create_private
from qustody.jobs.service import SubmitRequest
from qustody.keys.errors import CustomerKeyUnavailable, DataDestroyed
from qustody.keys.service import KeyScope, Purpose
from qustody.storage import models as m
from softhsm import SoftHsm, Token
from support import Tenancy, ctx, ghz_qasm2, make_settings, seed

OPERATOR = Actor.system("cli:operator")


def _hsm_settings(
    tmp_path: Path, database_url: str, softhsm: SoftHsm, token: Token, **extra: object
) -> object:
    pin_file = tmp_path / "hsm.pin"
    if not pin_file.exists():
        create_private(pin_file, token.pin.encode() + b"\n")
    return make_settings(
        tmp_path,
        database_url,
        key_provider="pkcs11",
        pkcs11_module=str(softhsm.module),
        pkcs11_token_label=token.label,
        pkcs11_pin_file=pin_file,
        **extra,
    )


@pytest.fixture
def hsm_runtime(
    tmp_path: Path, database_url: str, softhsm: SoftHsm, hsm_token: Token
) -> Iterator[Runtime]:
    runtime = build_runtime(_hsm_settings(tmp_path, database_url, softhsm, hsm_token))  # type: ignore[arg-type]
    try:
        yield runtime
    finally:
        runtime.close()


def _run_one_job(runtime: Runtime, tenancy: Tenancy) -> str:
    view = runtime.services.jobs.submit(
        tenancy.developer,
        ctx(),
        SubmitRequest(
            project="research",
            backend="aer-automatic",
            shots=64,
            qasm=ghz_qasm2(3),
            name="hsm job",
        ),
    )
    worker, sandbox = runtime.make_worker(slots=1)
    try:
        claimed = worker.claim()
        assert claimed is not None
        worker.run_claimed(claimed)
    finally:
        sandbox.close()
    return view.id


def test_a_job_on_the_hsm_rotation_and_shredding(hsm_runtime: Runtime) -> None:
    tenancy = seed(hsm_runtime)
    job_id = _run_one_job(hsm_runtime, tenancy)
    result = hsm_runtime.services.jobs.result(tenancy.developer, ctx(), job_id)
    assert sum(result.counts.values()) == 64
    assert hsm_runtime.services.jobs.get(tenancy.developer, ctx(), job_id).name == "hsm job"
    keys = hsm_runtime.keys
    tenant = tenancy.developer.tenant_id
    with hsm_runtime.services.db.read() as session:
        key_ids = set(session.scalars(select(m.SealedObject.key_id)))
    assert key_ids == {
        f"pkcs11:{tenant}.{tenancy.project_id}.payload:v1",
        f"pkcs11:{tenant}.{tenancy.project_id}.metadata:v1",
    }

    keys.rotate(OPERATOR, tenant, tenancy.project_id)
    progress = keys.rewrap_all()
    assert progress.moved == 3  # circuit, result, metadata: rewrapped inside the token
    assert sorted(progress.retired) == sorted(key_ids)
    assert (
        hsm_runtime.services.jobs.result(tenancy.developer, ctx(), job_id).counts == result.counts
    )

    certificate = keys.destroy(OPERATOR, tenant, tenancy.project_id, "end of project")
    assert certificate.content["objects"] == 3
    provider = keys.envelope.providers["pkcs11"]
    with hsm_runtime.services.db.reading() as connection:
        rows = connection.execute(select(m.SealedObject.key_id, m.SealedObject.wrapped_dek)).all()
    for key, wrapped in rows:  # the token itself no longer has the keys
        assert not provider.has_key(key)
        with pytest.raises(KeyUnavailable):
            provider.unwrap(key, wrapped)
    with pytest.raises(DataDestroyed):
        hsm_runtime.services.jobs.result(tenancy.developer, ctx(), job_id)


def test_a_customer_key_switched_off_in_the_customers_token_stops_reads_at_once(
    tmp_path: Path, database_url: str, softhsm: SoftHsm, hsm_token: Token
) -> None:
    settings = _hsm_settings(tmp_path, database_url, softhsm, hsm_token)
    first = build_runtime(settings)  # type: ignore[arg-type]
    try:
        tenancy = seed(first)
    finally:
        first.close()
    acme = tenancy.developer.tenant_id
    customer = softhsm.init_token("acme-own")
    pin_file = tmp_path / "acme.pin"
    create_private(pin_file, customer.pin.encode())
    keys_file = tmp_path / "customer-keys.json"
    keys_file.write_text(
        json.dumps(
            {
                acme: {
                    "name": "cmk-acme",
                    "module": str(softhsm.module),
                    "token_label": customer.label,
                    "pin_file": str(pin_file),
                }
            }
        )
    )
    runtime = build_runtime(
        _hsm_settings(tmp_path, database_url, softhsm, hsm_token, customer_keys_file=keys_file)  # type: ignore[arg-type]
    )
    try:
        tenancy.runtime = runtime
        job_id = _run_one_job(runtime, tenancy)
        jobs = runtime.services.jobs
        result = jobs.result(tenancy.developer, ctx(), job_id)
        ring = KeyScope(acme, tenancy.project_id, Purpose.PAYLOAD).ring
        assert {r.ring: r.provider for r in runtime.keys.rings(acme)}[ring] == "cmk-acme"
        # The other tenant stays on the platform's HSM.
        assert all(r.provider == "pkcs11" for r in runtime.keys.rings(tenancy.outsider.tenant_id))

        label = f"qustody/cmk-acme:{ring}:v1"
        assert softhsm.token_tool(customer, "set", label, "unwrap=false") == 1
        with pytest.raises(CustomerKeyUnavailable) as refused:
            jobs.result(tenancy.developer, ctx(), job_id)
        assert refused.value.status == 423
        assert "tenant's own key" in refused.value.detail
        with runtime.services.db.read() as session:
            failures = list(
                session.scalars(select(m.AuditEvent).where(m.AuditEvent.event_type == "key:fail"))
            )
        assert len(failures) == 1
        assert failures[0].outcome == "failure"
        assert failures[0].tenant_id == acme

        assert softhsm.token_tool(customer, "set", label, "unwrap=true") == 1
        assert jobs.result(tenancy.developer, ctx(), job_id).counts == result.counts
    finally:
        runtime.close()

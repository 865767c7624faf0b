"""Quotas: counted at submission in the job's transaction, per tenant, project
and backend; per day in the tenant's time zone, driven by a manual clock;
racing submitters on both databases never exceed one."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select, update

from qustody.api.app import Runtime, build_runtime
from qustody.domain.clock import ManualClock
from qustody.domain.errors import InvalidRequest, NotFound, QustodyError
from qustody.domain.models import Principal
from qustody.governance.quotas import QuotaExceeded, running_caps
from qustody.governance.usage import UsageService
from qustody.jobs.service import SubmitRequest
from qustody.storage import models as m
from qustody.storage.db import system_scope
from support import Tenancy, ctx, ghz_qasm2, make_settings, seed

GHZ2 = ghz_qasm2(2)
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)  # 18:00 in Tokyo


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def rt(tmp_path: Path, database_url: str, clock: ManualClock) -> Iterator[Runtime]:
    runtime = build_runtime(make_settings(tmp_path, database_url), clock=clock)
    try:
        yield runtime
    finally:
        runtime.close()


@pytest.fixture
def acme(rt: Runtime) -> Tenancy:
    return seed(rt)


def root(acme: Tenancy) -> Principal:
    services = acme.runtime.services
    return services.tokens.authenticate(services.admin.operator_token("root").token)


def usage(acme: Tenancy) -> UsageService:
    assert acme.runtime.services.usage is not None
    return acme.runtime.services.usage


def submit(
    acme: Tenancy,
    *,
    shots: int = 100,
    backend: str = "aer-statevector",
    who: Principal | None = None,
) -> tuple[str, ...]:
    job = acme.runtime.services.jobs.submit(
        who or acme.developer,
        ctx(),
        SubmitRequest(project="research", backend=backend, shots=shots, qasm=GHZ2),
    )
    return tuple(code for code, _ in job.warnings)


def acme_id(acme: Tenancy) -> str:
    return acme.developer.tenant_id


def test_queued_jobs_warns_at_80_percent_and_refuses_at_the_limit(acme: Tenancy) -> None:
    usage(acme).set_quota(
        root(acme), ctx(), metric="queued_jobs", limit=5, tenant_ref=acme_id(acme)
    )
    assert [submit(acme) for _ in range(3)] == [(), (), ()]
    assert submit(acme) == ("quota_warning",)  # 4 of 5
    assert submit(acme) == ("quota_warning",)  # 5 of 5
    with pytest.raises(QuotaExceeded) as refused:
        submit(acme)
    error = refused.value
    assert error.status == 429
    assert error.extra == {
        "quota": "queued_jobs",
        "scope": "tenant",
        "limit": 5,
        "used": 5,
        "resets_at": None,
    }
    assert "queued_jobs quota of the tenant is 5" in error.detail
    assert error.response_headers == {}  # no reset time, no Retry-After
    with acme.runtime.services.db.reading() as connection:
        denied = (
            connection.execute(
                select(m.AUDIT_EVENTS.c.reason).where(
                    m.AUDIT_EVENTS.c.event_type == "job:submit",
                    m.AUDIT_EVENTS.c.outcome == "denied",
                )
            )
            .scalars()
            .all()
        )
        jobs = connection.execute(select(m.JOBS.c.id)).scalars().all()
    assert [r for r in denied if r and r.startswith("quota_exceeded")]
    assert len(jobs) == 5  # the refused job left nothing behind

    # A place frees up when a waiting job is cancelled.
    first = acme.runtime.services.jobs.list_jobs(acme.developer, ctx()).items[-1]
    acme.runtime.services.jobs.cancel(acme.developer, ctx(), first.id)
    assert submit(acme) == ("quota_warning",)


def test_jobs_per_day_resets_at_the_tenants_midnight(acme: Tenancy, clock: ManualClock) -> None:
    with system_scope(), acme.runtime.services.db.writing() as connection:
        connection.execute(
            update(m.TENANTS).where(m.TENANTS.c.id == acme_id(acme)).values(timezone="Asia/Tokyo")
        )
    # A tenant admin sets its project's quota.
    usage(acme).set_quota(
        acme.tenant_admin, ctx(), metric="jobs_per_day", limit=2, project="research"
    )
    submit(acme)
    submit(acme)
    with pytest.raises(QuotaExceeded) as refused:
        submit(acme)
    midnight = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)  # 00:00 on the 6th in Tokyo
    assert refused.value.extra["resets_at"] == midnight.isoformat()
    assert refused.value.extra["scope"] == f"project:{acme.project_id}"
    assert refused.value.response_headers == {"Retry-After": str(6 * 3600)}
    clock.advance(hours=5, minutes=59)
    with pytest.raises(QuotaExceeded):
        submit(acme)
    clock.advance(minutes=1)
    assert submit(acme) == ()
    standing = usage(acme).usage(acme.developer, ctx()).quotas
    assert [(q.metric.value, q.used, q.limit) for q in standing] == [("jobs_per_day", 1, 2)]
    assert standing[0].resets_at == datetime(2026, 1, 6, 15, 0, tzinfo=UTC)


def test_shots_per_day_on_one_backend(acme: Tenancy) -> None:
    usage(acme).set_quota(
        root(acme),
        ctx(),
        metric="shots_per_day",
        limit=1000,
        tenant_ref=acme_id(acme),
        backend="aer-statevector",
    )
    assert submit(acme, shots=700) == ()
    assert submit(acme, shots=100) == ("quota_warning",)
    with pytest.raises(QuotaExceeded) as refused:
        submit(acme, shots=201)
    assert refused.value.field == "shots"
    assert refused.value.extra["used"] == 800
    assert submit(acme, shots=200) == ("quota_warning",)  # exactly the limit
    assert submit(acme, shots=5000, backend="aer-automatic") == ()  # another backend


def test_who_sets_which_quota(acme: Tenancy) -> None:
    service, boss = usage(acme), acme.tenant_admin
    # Tenant-wide and per-backend quotas are the platform's; project quotas the tenant's.
    with pytest.raises(QustodyError):
        service.set_quota(boss, ctx(), metric="queued_jobs", limit=100)
    with pytest.raises(QustodyError):
        service.set_quota(acme.developer, ctx(), metric="queued_jobs", limit=1, project="research")
    with pytest.raises(QustodyError):
        service.set_quota(acme.outsider, ctx(), metric="queued_jobs", limit=1, project="research")
    service.set_quota(root(acme), ctx(), metric="queued_jobs", limit=10, tenant_ref=acme_id(acme))
    # A project's quota stays within the tenant's.
    with pytest.raises(InvalidRequest) as refused:
        service.set_quota(boss, ctx(), metric="queued_jobs", limit=11, project="research")
    assert refused.value.field == "limit"
    assert service.set_quota(boss, ctx(), metric="queued_jobs", limit=10, project="research")
    with pytest.raises(InvalidRequest):
        service.set_quota(boss, ctx(), metric="coffee", limit=1, project="research")
    with pytest.raises(NotFound):
        service.set_quota(
            root(acme),
            ctx(),
            metric="queued_jobs",
            limit=1,
            tenant_ref="ten_01NOPE0000000000000000000",
        )
    # Removing one.
    assert (
        service.set_quota(boss, ctx(), metric="queued_jobs", limit=None, project="research") is None
    )
    assert [q.scope.key for q in service.usage(boss, ctx()).quotas] == ["tenant"]
    # Another tenant sees none of acme's quotas.
    assert service.usage(acme.outsider, ctx()).quotas == []


def test_running_caps_are_the_concurrent_jobs_quotas(acme: Tenancy) -> None:
    usage(acme).set_quota(
        root(acme), ctx(), metric="concurrent_jobs", limit=2, tenant_ref=acme_id(acme)
    )
    usage(acme).set_quota(
        acme.tenant_admin, ctx(), metric="concurrent_jobs", limit=1, project="research"
    )
    with acme.runtime.services.db.reading() as connection:
        caps = running_caps(connection, START)
    assert sorted((c.project_id or "", c.limit) for c in caps) == [
        ("", 2),
        (acme.project_id, 1),
    ]
    # Checked by the scheduler, not at submission.
    assert [submit(acme) for _ in range(3)] == [(), (), ()]


def test_racing_submitters_never_exceed_a_quota(acme: Tenancy) -> None:
    usage(acme).set_quota(
        root(acme), ctx(), metric="jobs_per_day", limit=5, tenant_ref=acme_id(acme)
    )
    accepted: list[int] = []
    refused: list[str] = []
    gate = threading.Barrier(8)

    def one() -> None:
        gate.wait()
        try:
            submit(acme)
            accepted.append(1)
        except QustodyError as error:
            refused.append(error.code)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(accepted) == 5
    assert refused == ["quota_exceeded"] * 3
    with acme.runtime.services.db.reading() as connection:
        assert len(connection.execute(select(m.JOBS.c.id)).all()) == 5

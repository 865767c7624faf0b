"""Prices, estimates, charges and spending limits: a job is priced at
submission, reserved against its budgets and refused before it runs when the
estimate exceeds what is left; thresholds alert once per period; a finished
job's reservation becomes its charge. Periods driven by a manual clock, on
both databases."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from qustody.api.app import Runtime, build_runtime
from qustody.domain.clock import ManualClock
from qustody.domain.errors import InvalidRequest, QustodyError
from qustody.domain.models import Principal
from qustody.governance.budgets import BudgetExceeded
from qustody.governance.costs import Price
from qustody.governance.usage import PriceChange, UsageService
from qustody.jobs.service import SubmitRequest
from qustody.storage import models as m
from support import Tenancy, ctx, ghz_qasm2, make_settings, seed

GHZ2 = ghz_qasm2(2)
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
BACKEND = "aer-statevector"


def test_prices_estimate_and_charge_in_micro_units() -> None:
    per_shot = Price(BACKEND, per_task=1_000, per_shot=10)
    assert per_shot.estimate(100) == 2_000
    assert per_shot.charge(100, 0.5, completed=True) == 2_000
    assert per_shot.charge(100, 0.5, completed=False) == 1_000  # failed or stopped: the task
    per_second = Price(
        BACKEND, per_second=1_000_000, shot_microseconds=1_000, overhead_microseconds=500_000
    )
    assert per_second.estimate(1000) == 1_500_000  # 0.5 s + 1000 x 1 ms
    assert per_second.charge(1000, 0.25, completed=True) == 250_000
    assert Price(BACKEND, per_second=3).charge(1, 0.5, completed=True) == 2  # rounded up
    assert Price(BACKEND).estimate(10**6) == 0  # unpriced backends are free


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


def spec(shots: int = 100) -> SubmitRequest:
    return SubmitRequest(project="research", backend=BACKEND, shots=shots, qasm=GHZ2)


def submit(acme: Tenancy, shots: int = 100) -> tuple[str, tuple[str, ...]]:
    job = acme.runtime.services.jobs.submit(acme.developer, ctx(), spec(shots))
    assert job.estimated_cost == 1_000 + 10 * shots
    return job.id, tuple(code for code, _ in job.warnings)


def count(acme: Tenancy, table: object, *where: object) -> int:
    with acme.runtime.services.db.reading() as connection:
        return int(
            connection.execute(select(func.count()).select_from(table).where(*where)).scalar() or 0
        )  # type: ignore[arg-type]


@pytest.fixture
def priced(acme: Tenancy) -> Tenancy:
    usage(acme).set_price(root(acme), ctx(), BACKEND, PriceChange(per_task=1_000, per_shot=10))
    usage(acme).set_budget(acme.tenant_admin, ctx(), period="day", limit=10_000)
    return acme


def test_a_budget_reserves_estimates_alerts_once_per_threshold_and_refuses_beyond(
    priced: Tenancy, clock: ManualClock
) -> None:
    acme = priced
    assert submit(acme)[1] == ()  # 2 000 of 10 000
    assert submit(acme)[1] == ()  # 4 000
    assert submit(acme)[1] == ()  # 6 000: 50 % crossed
    assert submit(acme)[1] == ("budget_warning",)  # 8 000: 80 %
    assert submit(acme)[1] == ("budget_warning",)  # 10 000: 100 %
    with pytest.raises(BudgetExceeded) as refused:
        submit(acme, shots=1)
    error = refused.value
    assert error.status == 402
    assert {
        k: error.extra[k] for k in ("scope", "period", "limit", "spent", "reserved", "estimate")
    } == {
        "scope": "tenant",
        "period": "day",
        "limit": 10_000,
        "spent": 0,
        "reserved": 10_000,
        "estimate": 1_010,
    }
    assert error.extra["resets_at"] == "2026-01-06T00:00:00+00:00"
    assert count(acme, m.JOBS) == 5
    with acme.runtime.services.db.reading() as connection:
        alerts = (
            connection.execute(select(m.ALERTS.c.payload).order_by(m.ALERTS.c.created_at))
            .scalars()
            .all()
        )
    assert [a["threshold_percent"] for a in alerts] == [50, 80, 100]
    assert count(acme, m.AUDIT_EVENTS, m.AUDIT_EVENTS.c.event_type == "budget:alert") == 3

    # The standing, as GET /v1/usage shows it.
    (standing,) = usage(acme).usage(acme.viewer, ctx()).budgets
    assert (standing.spent, standing.reserved, standing.remaining) == (0, 10_000, 0)

    # A job cancelled before it ran frees its reservation; no threshold alerts twice.
    first = acme.runtime.services.jobs.list_jobs(acme.developer, ctx()).items[-1]
    acme.runtime.services.jobs.cancel(acme.developer, ctx(), first.id)
    assert submit(acme)[1] == ("budget_warning",)
    assert count(acme, m.ALERTS) == 3

    # The next day is a new period.
    clock.advance(days=1)
    for _ in range(3):
        submit(acme)
    assert count(acme, m.ALERTS) == 4


def test_a_finished_job_is_charged_and_its_reservation_released(priced: Tenancy) -> None:
    acme = priced
    job_id, _ = submit(acme, shots=200)  # estimate 3 000
    worker, sandbox = acme.runtime.make_worker(slots=1)
    try:
        claimed = worker.claim()
        assert claimed is not None
        worker.run_claimed(claimed)
    finally:
        worker.stop()
        sandbox.close()
    job = acme.runtime.services.jobs.get(acme.developer, ctx(), job_id)
    assert (job.state, job.estimated_cost, job.cost) == ("completed", 3_000, 3_000)
    (standing,) = usage(acme).budgets(acme.tenant_admin, ctx())
    assert (standing.spent, standing.reserved) == (3_000, 0)


def test_prices_are_versioned_and_never_backdated(acme: Tenancy, clock: ManualClock) -> None:
    service, admin = usage(acme), root(acme)
    service.set_price(admin, ctx(), BACKEND, PriceChange(per_shot=1))
    later = START + timedelta(hours=1)
    service.set_price(admin, ctx(), BACKEND, PriceChange(per_shot=2, effective_at=later))
    with pytest.raises(InvalidRequest) as refused:
        service.set_price(
            admin, ctx(), BACKEND, PriceChange(per_shot=3, effective_at=START - timedelta(1))
        )
    assert refused.value.field == "effective_at"
    assert [p.per_shot for p in service.prices(acme.developer, ctx(), BACKEND)] == [2, 1]
    early = acme.runtime.services.jobs.submit(acme.developer, ctx(), spec(100))
    clock.set(later)
    late = acme.runtime.services.jobs.submit(acme.developer, ctx(), spec(100))
    assert (early.estimated_cost, late.estimated_cost) == (100, 200)
    # Only platform admins price backends; only tenant admins set budgets.
    with pytest.raises(QustodyError):
        service.set_price(acme.tenant_admin, ctx(), BACKEND, PriceChange(per_shot=0))
    with pytest.raises(QustodyError):
        service.set_budget(acme.developer, ctx(), period="day", limit=1)
    with pytest.raises(InvalidRequest):
        service.set_budget(acme.tenant_admin, ctx(), period="fortnight", limit=1)


def test_an_estimate_answers_without_storing_anything(priced: Tenancy) -> None:
    acme = priced
    estimates = acme.runtime.services.estimates
    assert estimates is not None
    usage(acme).set_budget(
        acme.tenant_admin, ctx(), period="month", limit=5_000, project="research"
    )
    fits = estimates.estimate(acme.developer, ctx(), spec(100))
    assert (fits.estimated_cost, fits.admitted, fits.refusal) == (2_000, True, None)
    assert sorted((b.period.value, b.remaining) for b in fits.budgets) == [
        ("day", 10_000),
        ("month", 5_000),
    ]
    too_big = estimates.estimate(acme.developer, ctx(), spec(500))
    assert too_big.admitted is False
    assert too_big.refusal is not None
    assert too_big.refusal.code == "budget_exceeded"
    assert count(acme, m.JOBS) == 0
    assert count(acme, m.ALERTS) == 0
    assert count(acme, m.AUDIT_EVENTS, m.AUDIT_EVENTS.c.event_type == "job:estimate") == 2
    with pytest.raises(QustodyError):
        estimates.estimate(acme.viewer, ctx(), spec(100))

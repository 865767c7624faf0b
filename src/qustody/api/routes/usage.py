"""Usage, quotas, spending limits, prices and estimates (docs/quotas-and-budgets.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import Field

from qustody.api import schemas
from qustody.api.auth import CallerDep
from qustody.api.routes.common import secured
from qustody.api.state import services_of
from qustody.domain.vocabulary import Action
from qustody.governance.budgets import BudgetStanding
from qustody.governance.costs import MAX_AMOUNT, MICRO, Price
from qustody.governance.quotas import MAX_LIMIT, QuotaStanding
from qustody.governance.usage import PriceChange, UsageService
from qustody.jobs.estimate import Estimator
from qustody.jobs.service import SubmitRequest

router = APIRouter(prefix="/v1", tags=["usage"])


def _usage(request: Request) -> UsageService:
    usage = services_of(request).usage
    assert usage is not None
    return usage


# -- models -------------------------------------------------------------------------


class QuotaOut(schemas.Response):
    metric: str
    #: ``tenant``, ``project:<id>`` or ``backend:<name>``.
    scope: str
    project_id: str | None
    backend: str | None
    limit: int
    used: int
    percent: float
    resets_at: datetime | None

    @classmethod
    def of(cls, q: QuotaStanding) -> QuotaOut:
        return cls(
            metric=q.metric.value,
            scope=q.scope.key,
            project_id=q.scope.project_id,
            backend=q.scope.backend,
            limit=q.limit,
            used=q.used,
            percent=q.percent,
            resets_at=q.resets_at,
        )


class BudgetOut(schemas.Response):
    id: str
    scope: str
    project_id: str | None
    backend: str | None
    period: str
    #: Amounts in micro-units of the platform's currency.
    limit: int
    spent: int
    reserved: int
    remaining: int
    percent: float
    thresholds: list[int]
    period_start: datetime
    resets_at: datetime

    @classmethod
    def of(cls, b: BudgetStanding) -> BudgetOut:
        return cls(
            id=b.id,
            scope=b.scope.key,
            project_id=b.scope.project_id,
            backend=b.scope.backend,
            period=b.period.value,
            limit=b.limit,
            spent=b.spent,
            reserved=b.reserved,
            remaining=b.remaining,
            percent=b.percent,
            thresholds=list(b.thresholds),
            period_start=b.period_start,
            resets_at=b.resets_at,
        )


class UsageOut(schemas.Response):
    at: datetime
    currency_unit: str = "micro"
    quotas: list[QuotaOut]
    budgets: list[BudgetOut]


class QuotaPut(schemas.Request):
    metric: Annotated[
        str,
        Field(
            max_length=32,
            description="concurrent_jobs, queued_jobs, jobs_per_day or shots_per_day",
        ),
    ]
    limit: Annotated[int | None, Field(ge=0, le=MAX_LIMIT, description="null removes it")]
    tenant: Annotated[
        str | None,
        Field(max_length=64, description="Platform admins: the tenant (id); else yours"),
    ] = None
    project: Annotated[
        str | None, Field(min_length=1, max_length=128, description="A project of yours")
    ] = None
    backend: Annotated[str | None, Field(min_length=1, max_length=64)] = None


class BudgetPut(schemas.Request):
    period: Annotated[str, Field(max_length=16, description="day, week or month")]
    limit: Annotated[
        int | None, Field(ge=0, le=MAX_AMOUNT, description="Micro-units; null removes it")
    ]
    thresholds: Annotated[
        list[int] | None, Field(max_length=10, description="Percentages that alert (50, 80, 100)")
    ] = None
    project: Annotated[str | None, Field(min_length=1, max_length=128)] = None
    backend: Annotated[str | None, Field(min_length=1, max_length=64)] = None


class BudgetList(schemas.Response):
    items: list[BudgetOut]


class PricePut(schemas.Request):
    per_task: Annotated[int, Field(ge=0, le=MAX_AMOUNT, description="Micro-units per job")] = 0
    per_shot: Annotated[int, Field(ge=0, le=MAX_AMOUNT, description="Micro-units per shot")] = 0
    per_second: Annotated[
        int, Field(ge=0, le=MAX_AMOUNT, description="Micro-units per second of execution")
    ] = 0
    seconds_per_shot: Annotated[
        float, Field(ge=0, le=86_400, description="Per-second estimates: time per shot")
    ] = 0.0
    overhead_seconds: Annotated[
        float, Field(ge=0, le=86_400, description="Per-second estimates: time per job")
    ] = 0.0
    effective_at: Annotated[
        datetime | None, Field(description="From when (RFC 3339); now by default, never earlier")
    ] = None


class PriceOut(schemas.Response):
    backend: str
    version: str | None
    per_task: int
    per_shot: int
    per_second: int
    seconds_per_shot: float
    overhead_seconds: float
    effective_at: datetime | None

    @classmethod
    def of(cls, p: Price) -> PriceOut:
        return cls(
            backend=p.backend,
            version=p.version_id,
            per_task=p.per_task,
            per_shot=p.per_shot,
            per_second=p.per_second,
            seconds_per_shot=p.shot_microseconds / MICRO,
            overhead_seconds=p.overhead_microseconds / MICRO,
            effective_at=p.effective_at,
        )


class PriceList(schemas.Response):
    items: list[PriceOut]


class Refusal(schemas.Response):
    code: str
    status: int
    detail: str


class EstimateOut(schemas.Response):
    backend: str
    shots: int
    num_qubits: int
    currency_unit: str = "micro"
    estimated_cost: int
    price: PriceOut
    quotas: list[QuotaOut]
    #: Each budget the job would draw on, as it stands before the job.
    budgets: list[BudgetOut]
    admitted: bool
    refusal: Refusal | None
    warnings: list[schemas.JobWarning]


# -- routes -------------------------------------------------------------------------


@router.get("/usage", response_model=UsageOut, openapi_extra=secured(Action.USAGE_READ))
def get_usage(
    caller: CallerDep,
    request: Request,
    project: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    backend: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
) -> UsageOut:
    """Every quota and spending limit of your tenant (narrowed to a project or
    backend), what is used, spent and reserved, and when each resets."""
    usage = _usage(request).usage(
        caller.principal, caller.request, project=project, backend=backend
    )
    return UsageOut(
        at=usage.at,
        quotas=[QuotaOut.of(q) for q in usage.quotas],
        budgets=[BudgetOut.of(b) for b in usage.budgets],
    )


@router.put("/quotas", response_model=QuotaOut | None, openapi_extra=secured(Action.QUOTA_SET))
def put_quota(body: QuotaPut, caller: CallerDep, request: Request) -> QuotaOut | None:
    """Set or remove a quota: platform admins a tenant's (tenant-wide, or on
    one backend), tenant admins one of their projects'."""
    standing = _usage(request).set_quota(
        caller.principal,
        caller.request,
        metric=body.metric,
        limit=body.limit,
        tenant_ref=body.tenant,
        project=body.project,
        backend=body.backend,
    )
    return None if standing is None else QuotaOut.of(standing)


@router.get("/budgets", response_model=BudgetList, openapi_extra=secured(Action.BUDGET_READ))
def list_budgets(caller: CallerDep, request: Request) -> BudgetList:
    """Your tenant's spending limits, as spent and reserved now."""
    found = _usage(request).budgets(caller.principal, caller.request)
    return BudgetList(items=[BudgetOut.of(b) for b in found])


@router.put("/budgets", response_model=BudgetOut | None, openapi_extra=secured(Action.BUDGET_SET))
def put_budget(body: BudgetPut, caller: CallerDep, request: Request) -> BudgetOut | None:
    """Set or remove a spending limit of your tenant, one project or one backend."""
    standing = _usage(request).set_budget(
        caller.principal,
        caller.request,
        period=body.period,
        limit=body.limit,
        thresholds=body.thresholds,
        project=body.project,
        backend=body.backend,
    )
    return None if standing is None else BudgetOut.of(standing)


@router.get(
    "/backends/{name}/price",
    response_model=PriceList,
    openapi_extra=secured(Action.BACKEND_READ),
)
def get_prices(name: str, caller: CallerDep, request: Request) -> PriceList:
    """Every version of a backend's price, newest first (none: it is free)."""
    prices = _usage(request).prices(caller.principal, caller.request, name)
    return PriceList(items=[PriceOut.of(p) for p in prices])


@router.put(
    "/backends/{name}/price", response_model=PriceOut, openapi_extra=secured(Action.COST_SET)
)
def put_price(name: str, body: PricePut, caller: CallerDep, request: Request) -> PriceOut:
    """Publish a new version of a backend's price (platform admins)."""
    price = _usage(request).set_price(
        caller.principal,
        caller.request,
        name,
        PriceChange(
            per_task=body.per_task,
            per_shot=body.per_shot,
            per_second=body.per_second,
            seconds_per_shot=body.seconds_per_shot,
            overhead_seconds=body.overhead_seconds,
            effective_at=body.effective_at,
        ),
    )
    return PriceOut.of(price)


@router.post(
    "/jobs:estimate", response_model=EstimateOut, openapi_extra=secured(Action.JOB_ESTIMATE)
)
def estimate_job(body: schemas.JobSubmit, caller: CallerDep, request: Request) -> EstimateOut:
    """What the job would cost, the budgets it would draw on, and whether it
    would be admitted now; nothing is stored but an audit event."""
    estimator: Estimator | None = services_of(request).estimates
    assert estimator is not None
    spec = SubmitRequest(
        project=body.project,
        backend=body.backend,
        shots=body.shots,
        qasm=body.qasm,
        memory=body.memory,
        seed=body.seed,
        priority=body.priority,
        session=body.session,
    )
    found = estimator.estimate(caller.principal, caller.request, spec)
    refusal = found.refusal
    return EstimateOut(
        backend=found.backend,
        shots=found.shots,
        num_qubits=found.num_qubits,
        estimated_cost=found.estimated_cost,
        price=PriceOut.of(found.price),
        quotas=[QuotaOut.of(q) for q in found.quotas],
        budgets=[BudgetOut.of(b) for b in found.budgets],
        admitted=found.admitted,
        refusal=None
        if refusal is None
        else Refusal(code=refusal.code, status=refusal.status, detail=refusal.detail),
        warnings=[schemas.JobWarning(code=n.code, detail=n.detail) for n in found.warnings],
    )

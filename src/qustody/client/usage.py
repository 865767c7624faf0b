"""Usage, quotas, spending limits, prices and estimates in the SDK
(docs/quotas-and-budgets.md). Amounts are integers in micro-units of the
platform's currency (1 000 000 is one unit)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from qustody.client._transport import Transport
from qustody.client.models import _Reader


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    metric: str
    #: ``tenant``, ``project:<id>`` or ``backend:<name>``.
    scope: str
    limit: int
    used: int
    percent: float
    #: When a per-day quota starts again; None for queued and running jobs.
    resets_at: datetime | None

    @classmethod
    def from_json(cls, data: object) -> QuotaUsage:
        r = _Reader(data, "quota")
        return cls(
            metric=r.req_str("metric"),
            scope=r.req_str("scope"),
            limit=r.req_int("limit"),
            used=r.req_int("used"),
            percent=r.opt_float("percent") or 0.0,
            resets_at=r.opt_time("resets_at"),
        )


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    id: str
    scope: str
    period: str
    limit: int
    spent: int
    reserved: int
    remaining: int
    percent: float
    resets_at: datetime

    @classmethod
    def from_json(cls, data: object) -> BudgetUsage:
        r = _Reader(data, "budget")
        return cls(
            id=r.req_str("id"),
            scope=r.req_str("scope"),
            period=r.req_str("period"),
            limit=r.req_int("limit"),
            spent=r.req_int("spent"),
            reserved=r.req_int("reserved"),
            remaining=r.req_int("remaining"),
            percent=r.opt_float("percent") or 0.0,
            resets_at=r.req_time("resets_at"),
        )


@dataclass(frozen=True, slots=True)
class Usage:
    at: datetime
    quotas: list[QuotaUsage]
    budgets: list[BudgetUsage]

    @classmethod
    def from_json(cls, data: object) -> Usage:
        r = _Reader(data, "usage")
        return cls(
            at=r.req_time("at"),
            quotas=[QuotaUsage.from_json(q.raw_object()) for q in r.obj_list("quotas")],
            budgets=[BudgetUsage.from_json(b.raw_object()) for b in r.obj_list("budgets")],
        )


@dataclass(frozen=True, slots=True)
class Estimate:
    backend: str
    shots: int
    estimated_cost: int
    budgets: list[BudgetUsage]
    #: Whether a submission now would be accepted; else the problem's code and detail.
    admitted: bool
    refusal_code: str | None
    refusal_detail: str | None

    @classmethod
    def from_json(cls, data: object) -> Estimate:
        r = _Reader(data, "estimate")
        refusal = r.obj("refusal") if r.raw("refusal") is not None else None
        return cls(
            backend=r.req_str("backend"),
            shots=r.req_int("shots"),
            estimated_cost=r.req_int("estimated_cost"),
            budgets=[BudgetUsage.from_json(b.raw_object()) for b in r.obj_list("budgets")],
            admitted=r.req_bool("admitted"),
            refusal_code=refusal.req_str("code") if refusal else None,
            refusal_detail=refusal.req_str("detail") if refusal else None,
        )


class UsageMethods(Transport):
    """The :class:`~qustody.client.Client` methods for usage, quotas, budgets and prices."""

    def usage(self, *, project: str | None = None, backend: str | None = None) -> Usage:
        """Your tenant's quotas and budgets, as used now."""
        params: dict[str, str | int] = {}
        if project is not None:
            params["project"] = project
        if backend is not None:
            params["backend"] = backend
        return Usage.from_json(self._json("GET", "/usage", params=params or None))

    def estimate(self, qasm: str, *, project: str, backend: str, shots: int = 1024) -> Estimate:
        """What a job would cost and whether it would be admitted; nothing is stored."""
        body = {"project": project, "backend": backend, "shots": shots, "qasm": qasm}
        return Estimate.from_json(self._json("POST", "/jobs:estimate", json=body))

    def set_quota(
        self,
        metric: str,
        limit: int | None,
        *,
        tenant: str | None = None,
        project: str | None = None,
        backend: str | None = None,
    ) -> QuotaUsage | None:
        """Set (``limit`` None: remove) a quota."""
        body: dict[str, Any] = {"metric": metric, "limit": limit}
        for key, value in (("tenant", tenant), ("project", project), ("backend", backend)):
            if value is not None:
                body[key] = value
        answer = self._json("PUT", "/quotas", json=body)
        return None if answer is None else QuotaUsage.from_json(answer)

    def set_budget(
        self,
        period: str,
        limit: int | None,
        *,
        thresholds: list[int] | None = None,
        project: str | None = None,
        backend: str | None = None,
    ) -> BudgetUsage | None:
        """Set (``limit`` None: remove) a spending limit, in micro-units."""
        body: dict[str, Any] = {"period": period, "limit": limit}
        for key, value in (("thresholds", thresholds), ("project", project), ("backend", backend)):
            if value is not None:
                body[key] = value
        answer = self._json("PUT", "/budgets", json=body)
        return None if answer is None else BudgetUsage.from_json(answer)

    def set_price(self, backend: str, **price: int | float | str) -> dict[str, object]:
        """Publish a new version of a backend's price (platform admins):
        ``per_task``, ``per_shot``, ``per_second`` (micro-units),
        ``seconds_per_shot``, ``overhead_seconds``, ``effective_at``."""
        answer = self._json("PUT", f"/backends/{quote(backend, safe='')}/price", json=price)
        return dict(_Reader(answer, "price").raw_object())

"""Usage, quotas, budgets and prices as callers see and set them.

- ``usage``: every quota and budget that applies to the caller's tenant
  (narrowed to a project or backend on request), with what is used, spent
  and reserved, and when each resets (``GET /v1/usage``).
- ``set_quota``: platform admins set a tenant's tenant-wide and per-backend
  quotas; tenant admins their projects' quotas, at most the tenant-wide
  quota of the same metric.
- ``set_budget`` / ``budgets``: tenant admins set and read their tenant's
  spending limits.
- ``set_price`` / ``prices``: platform admins publish a new version of a
  backend's price; every member reads them.

Every change is audited in its own transaction; every refusal goes through
the guard.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, delete, insert, select, update

from qustody.audit.recorder import Actor, Target, record
from qustody.domain.clock import SYSTEM_CLOCK, Clock
from qustody.domain.errors import InvalidRequest
from qustody.domain.ids import ProjectId, TenantId, looks_like_id, new_id
from qustody.domain.models import BackendInfo, Principal, RequestContext, Resource
from qustody.domain.vocabulary import Action, Role
from qustody.executors.registry import BackendRegistry
from qustody.governance import budgets as b
from qustody.governance import costs, quotas
from qustody.governance.costs import MAX_AMOUNT, MICRO, Price
from qustody.governance.periods import Period
from qustody.governance.quotas import MAX_LIMIT, Metric, QuotaStanding, Scope
from qustody.identity.admin import AdminService
from qustody.policy.facts import backend_attributes
from qustody.policy.guard import Guard, not_found
from qustody.policy.misses import records_misses
from qustody.storage import models as m
from qustody.storage.db import Database, tenant

#: Most thresholds a budget may have.
MAX_THRESHOLDS = 10


@dataclass(frozen=True, slots=True)
class Usage:
    at: datetime
    quotas: list[QuotaStanding]
    budgets: list[b.BudgetStanding]


@dataclass(frozen=True, slots=True)
class PriceChange:
    """A new version of a backend's price, as a platform admin sends it."""

    per_task: int = 0
    per_shot: int = 0
    per_second: int = 0
    seconds_per_shot: float = 0.0
    overhead_seconds: float = 0.0
    effective_at: datetime | None = None


class UsageService:
    def __init__(
        self,
        db: Database,
        guard: Guard,
        admin: AdminService,
        registry: BackendRegistry,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._db = db
        self._guard = guard
        self._admin = admin
        self._registry = registry
        self._clock = clock

    # -- usage ----------------------------------------------------------------------

    @records_misses(Action.USAGE_READ)
    def usage(
        self,
        caller: Principal,
        request: RequestContext,
        *,
        project: str | None = None,
        backend: str | None = None,
    ) -> Usage:
        """The quotas and budgets of the caller's tenant, as used at this moment."""
        tenant_id = caller.tenant_id
        project_id = None
        if project is not None:
            project_id = self._project(caller, project)
            self._guard.check(caller, Action.USAGE_READ, _project(tenant_id, project_id), request)
        else:
            self._guard.check(caller, Action.USAGE_READ, _tenant(tenant_id), request)
        if backend is not None:
            self._backend(backend)
        visible = self._visible_projects(caller)
        now = self._clock.now()

        def shown(scope: Scope) -> bool:
            if scope.project_id is not None and (
                (visible is not None and scope.project_id not in visible)
                or (project_id is not None and scope.project_id != project_id)
            ):
                return False
            return scope.backend is None or backend is None or scope.backend == backend

        with self._db.reading() as connection:
            rows = [
                r
                for r in quotas.tenant_quotas(connection, tenant_id)
                if shown(Scope(r.project_id, r.backend))
            ]
            quota_list = quotas.measure(connection, tenant_id, rows, now)
            budget_rows = [
                r
                for r in b.tenant_budgets(connection, tenant_id)
                if shown(Scope(r.project_id, r.backend))
            ]
            budget_list = b.standings(connection, tenant_id, budget_rows, now)
        return Usage(now, quota_list, budget_list)

    def _visible_projects(self, caller: Principal) -> set[str] | None:
        """Projects whose quotas the caller sees (None: all of the tenant's)."""
        if Role.TENANT_ADMIN in caller.tenant_roles:
            return None
        return {pid for pid, _ in caller.project_roles}

    # -- quotas ---------------------------------------------------------------------

    @records_misses(Action.QUOTA_SET)
    def set_quota(
        self,
        caller: Principal,
        request: RequestContext,
        *,
        metric: str,
        limit: int | None,
        tenant_ref: str | None = None,
        project: str | None = None,
        backend: str | None = None,
    ) -> QuotaStanding | None:
        """Set (or with ``limit`` None remove) a quota; answers it as used now."""
        kind = _metric(metric)
        if limit is not None and not 0 <= limit <= MAX_LIMIT:
            raise InvalidRequest(
                f"limit is {limit}; it must be between 0 and {MAX_LIMIT} (or null to remove).",
                field="limit",
            )
        if project is not None and backend is not None:
            raise InvalidRequest(
                "a quota covers a tenant, one project or one backend; send project or backend, "
                "not both.",
                field="backend",
            )
        if project is not None:
            if tenant_ref is not None and tenant_ref != caller.tenant_id:
                raise InvalidRequest(
                    "project quotas are set within your own tenant; leave tenant out.",
                    field="tenant",
                )
            tenant_id: str = caller.tenant_id
            project_id = self._project(caller, project)
            scope = Scope(project_id=project_id)
            decision = self._guard.check(
                caller, Action.QUOTA_SET, _project(tenant_id, project_id), request
            )
        else:
            tenant_id = tenant_ref or caller.tenant_id
            if not looks_like_id(tenant_id):
                raise not_found("tenant", tenant_id[:80])
            if backend is not None:
                self._backend(backend)
            scope = Scope(backend=backend)
            decision = self._guard.check(caller, Action.QUOTA_SET, _tenant(tenant_id), request)
        now = self._clock.now()
        with self._db.writing(scope=tenant(tenant_id)) as connection:
            if (
                connection.execute(
                    select(m.TENANTS.c.id).where(m.TENANTS.c.id == tenant_id)
                ).first()
                is None
            ):
                raise not_found("tenant", tenant_id)
            if scope.project_id is not None and limit is not None:
                ceiling = connection.execute(
                    select(m.QUOTAS.c.maximum).where(
                        m.QUOTAS.c.tenant_id == tenant_id,
                        m.QUOTAS.c.scope == "tenant",
                        m.QUOTAS.c.metric == kind.value,
                    )
                ).scalar()
                if ceiling is not None and limit > ceiling:
                    raise InvalidRequest(
                        f"limit is {limit}; the tenant's own {kind.value} quota is {ceiling}, and "
                        "a project's may not exceed it. Ask your platform admin to raise the "
                        "tenant's quota first.",
                        field="limit",
                    )
            quotas.store(
                connection,
                tenant_id=tenant_id,
                scope=scope,
                metric=kind,
                limit=limit,
                at=now,
                by=caller.id,
                new_id=new_id("quo"),
            )
            record(
                connection,
                Action.QUOTA_SET,
                actor=Actor.of(caller),
                target=Target("quota", f"{scope.key}/{kind.value}", tenant_id),
                decision=decision,
                request=request,
                reason=f"{kind.value} of {scope.key}: "
                + ("removed" if limit is None else f"limit {limit}"),
            )
            if limit is None:
                return None
            rows = [
                r
                for r in quotas.tenant_quotas(connection, tenant_id)
                if r.scope == scope.key and r.metric == kind.value
            ]
            return quotas.measure(connection, tenant_id, rows, now)[0]

    # -- budgets --------------------------------------------------------------------

    @records_misses(Action.BUDGET_SET)
    def set_budget(
        self,
        caller: Principal,
        request: RequestContext,
        *,
        period: str,
        limit: int | None,
        thresholds: Sequence[int] | None = None,
        project: str | None = None,
        backend: str | None = None,
    ) -> b.BudgetStanding | None:
        """Set (or with ``limit`` None remove) a spending limit of the caller's tenant."""
        try:
            every = Period(period)
        except ValueError:
            raise InvalidRequest(
                f"period {period[:16]!r} is not one of {[p.value for p in Period]}.",
                field="period",
            ) from None
        if limit is not None and not 0 <= limit <= MAX_AMOUNT:
            raise InvalidRequest(
                f"limit is {limit} micro-units; it must be between 0 and {MAX_AMOUNT} "
                "(or null to remove).",
                field="limit",
            )
        marks = sorted(set(b.DEFAULT_THRESHOLDS if thresholds is None else thresholds))
        if len(marks) > MAX_THRESHOLDS or any(not 1 <= t <= 1000 for t in marks):
            raise InvalidRequest(
                f"thresholds must be at most {MAX_THRESHOLDS} percentages between 1 and 1000.",
                field="thresholds",
            )
        if project is not None and backend is not None:
            raise InvalidRequest(
                "a budget covers a tenant, one project or one backend; send project or backend, "
                "not both.",
                field="backend",
            )
        tenant_id = caller.tenant_id
        scope = Scope()
        if project is not None:
            scope = Scope(project_id=self._project(caller, project))
        elif backend is not None:
            self._backend(backend)
            scope = Scope(backend=backend)
        decision = self._guard.check(caller, Action.BUDGET_SET, _tenant(tenant_id), request)
        now = self._clock.now()
        with self._db.writing() as connection:
            where = and_(
                m.BUDGETS.c.tenant_id == tenant_id,
                m.BUDGETS.c.scope == scope.key,
                m.BUDGETS.c.period == every.value,
            )
            if limit is None:
                ids = list(connection.execute(select(m.BUDGETS.c.id).where(where)).scalars())
                if ids:
                    connection.execute(
                        delete(m.BUDGET_CROSSINGS).where(m.BUDGET_CROSSINGS.c.budget_id.in_(ids))
                    )
                    connection.execute(delete(m.BUDGETS).where(where))
            else:
                values = {
                    "maximum": limit,
                    "thresholds": marks,
                    "updated_at": now,
                    "updated_by": caller.id,
                }
                if not connection.execute(update(m.BUDGETS).where(where).values(values)).rowcount:
                    connection.execute(
                        insert(m.BUDGETS).values(
                            id=new_id("bud"),
                            tenant_id=tenant_id,
                            scope=scope.key,
                            project_id=scope.project_id,
                            backend=scope.backend,
                            period=every.value,
                            **values,
                        )
                    )
            record(
                connection,
                Action.BUDGET_SET,
                actor=Actor.of(caller),
                target=Target("budget", f"{scope.key}/{every.value}", tenant_id),
                decision=decision,
                request=request,
                reason=f"{every.value}ly budget of {scope.key}: "
                + ("removed" if limit is None else f"limit {limit} thresholds {marks}"),
            )
            if limit is None:
                return None
            rows = [
                r
                for r in b.tenant_budgets(connection, tenant_id)
                if r.scope == scope.key and r.period == every.value
            ]
            return b.standings(connection, tenant_id, rows, now)[0]

    def budgets(self, caller: Principal, request: RequestContext) -> list[b.BudgetStanding]:
        """Every spending limit of the caller's tenant, as spent now."""
        self._guard.check(caller, Action.BUDGET_READ, _tenant(caller.tenant_id), request)
        now = self._clock.now()
        with self._db.reading() as connection:
            rows = b.tenant_budgets(connection, caller.tenant_id)
            return b.standings(connection, caller.tenant_id, rows, now)

    # -- prices ---------------------------------------------------------------------

    def set_price(
        self, caller: Principal, request: RequestContext, backend: str, change: PriceChange
    ) -> Price:
        """Publish a new version of ``backend``'s price, in force from its
        ``effective_at`` (now by default, never earlier: jobs already
        submitted keep the price they were estimated at)."""
        self._backend(backend)
        decision = self._guard.check(caller, Action.COST_SET, _PRICES, request)
        now = self._clock.now()
        effective = change.effective_at or now
        if effective.tzinfo is None:
            raise InvalidRequest(
                "effective_at has no time zone; send an RFC 3339 time with Z or an offset.",
                field="effective_at",
            )
        if effective < now:
            raise InvalidRequest(
                f"effective_at {effective.isoformat()} is in the past; a price takes effect now "
                "or later, so jobs already submitted keep theirs.",
                field="effective_at",
            )
        for name in ("per_task", "per_shot", "per_second"):
            amount = getattr(change, name)
            if not 0 <= amount <= MAX_AMOUNT:
                raise InvalidRequest(
                    f"{name} is {amount} micro-units; it must be between 0 and {MAX_AMOUNT}.",
                    field=name,
                )
        for name in ("seconds_per_shot", "overhead_seconds"):
            seconds = getattr(change, name)
            if not 0 <= seconds <= 86_400:
                raise InvalidRequest(
                    f"{name} is {seconds}; it must be between 0 and 86400 seconds.", field=name
                )
        version = new_id("prc")
        with self._db.writing() as connection:
            taken = connection.execute(
                select(m.BACKEND_PRICES.c.id).where(
                    m.BACKEND_PRICES.c.backend == backend,
                    m.BACKEND_PRICES.c.effective_at == effective,
                )
            ).first()
            if taken is not None:
                raise InvalidRequest(
                    f"backend {backend} already has a price taking effect at "
                    f"{effective.isoformat()}; choose another effective_at.",
                    field="effective_at",
                )
            connection.execute(
                insert(m.BACKEND_PRICES).values(
                    id=version,
                    backend=backend,
                    per_task=change.per_task,
                    per_shot=change.per_shot,
                    per_second=change.per_second,
                    shot_microseconds=round(change.seconds_per_shot * MICRO),
                    overhead_microseconds=round(change.overhead_seconds * MICRO),
                    effective_at=effective,
                    created_at=now,
                    created_by=caller.id,
                )
            )
            record(
                connection,
                Action.COST_SET,
                actor=Actor.of(caller),
                target=Target("backend", backend),
                decision=decision,
                request=request,
                reason=(
                    f"price {version} from {effective.isoformat()}: per_task={change.per_task} "
                    f"per_shot={change.per_shot} per_second={change.per_second}"
                ),
            )
            return next(p for p in costs.versions(connection, backend) if p.version_id == version)

    def prices(self, caller: Principal, request: RequestContext, backend: str) -> list[Price]:
        """Every version of ``backend``'s price, newest first (none: it is free)."""
        info = self._backend(backend)
        self._guard.check(
            caller,
            Action.BACKEND_READ,
            Resource("backend", backend, None, attributes=backend_attributes(info)),
            request,
        )
        with self._db.reading() as connection:
            return costs.versions(connection, backend)

    def price_now(self, backend: str) -> Price:
        with self._db.reading() as connection:
            return costs.price_at(connection, backend, self._clock.now())

    # -- helpers --------------------------------------------------------------------

    def _project(self, caller: Principal, ref: str) -> str:
        with self._db.read() as session:
            return self._admin.find_project(session, caller.tenant_id, ref).id

    def _backend(self, name: str) -> BackendInfo:
        if name not in self._registry:
            raise not_found("backend", name[:64])
        return self._registry.get(name).info


_PRICES = Resource("platform", "prices", None)


def _tenant(tenant_id: str) -> Resource:
    return Resource("tenant", tenant_id, TenantId(tenant_id))


def _project(tenant_id: str, project_id: str) -> Resource:
    return Resource("project", project_id, TenantId(tenant_id), project_id=ProjectId(project_id))


def _metric(value: str) -> Metric:
    try:
        return Metric(value)
    except ValueError:
        raise InvalidRequest(
            f"metric {value[:32]!r} is not a quota metric; use one of {[k.value for k in Metric]}.",
            field="metric",
        ) from None

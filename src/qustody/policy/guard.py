"""The one place services ask the policy engine.

:meth:`Guard.check` returns the :class:`Decision` when the engine allows. When
it denies, the denial is written to the audit log in its own transaction (the
request's own transaction is about to roll back, and a denial must never be
lost) and the caller gets:

- ``404`` when the resource belongs to another tenant, identical to a missing
  one, so a probe cannot tell someone else's job from a missing one;
- ``401`` with an RFC 9470 step-up challenge when only step-up forbids denied
  and a fresh multi-factor sign-in would be allowed;
- ``403`` otherwise, naming the forbids that denied (``policy_ids``), or saying
  that no policy permits the action (Cedar's default deny). Only the caller's
  own tenant's policies and the platform's are ever evaluated for it, so a
  denial cannot name another tenant's rule.

Before deciding, the guard brings the caller's tenant's policies up to date
(see :mod:`qustody.policy.tenant_policies`) and adds the request's facts (the
SDK version the client announces).
"""

from __future__ import annotations

from collections.abc import Mapping

from qustody.audit.recorder import Actor, Target, record
from qustody.domain.errors import Forbidden, NotFound, StepUpRequired
from qustody.domain.models import Decision, Principal, RequestContext, Resource
from qustody.domain.vocabulary import Action
from qustody.policy.engine import StepUp
from qustody.policy.facts import sdk_context
from qustody.policy.interfaces import PolicyEngine, TenantPolicySource
from qustody.storage.db import Database


class Guard:
    def __init__(
        self,
        engine: PolicyEngine,
        db: Database,
        *,
        tenant_policies: TenantPolicySource | None = None,
    ) -> None:
        self.engine = engine
        self._db = db
        self._tenant_policies = tenant_policies

    def decide(
        self,
        principal: Principal,
        action: Action,
        resource: Resource,
        request: RequestContext | None = None,
        *,
        context: Mapping[str, object] | None = None,
    ) -> Decision:
        """The engine's decision, neither recorded nor raised (to filter lists)."""
        if self._tenant_policies is not None:
            self._tenant_policies.refresh(principal.tenant_id)
        facts = sdk_context(request.user_agent) if request is not None else {}
        if context:
            facts.update(context)
        return self.engine.authorize(principal, action, resource, context=facts or None)

    def check(
        self,
        principal: Principal,
        action: Action,
        resource: Resource,
        request: RequestContext | None,
        *,
        context: Mapping[str, object] | None = None,
    ) -> Decision:
        decision = self.decide(principal, action, resource, request, context=context)
        if decision.allowed:
            return decision
        foreign = resource.tenant_id is not None and resource.tenant_id != principal.tenant_id
        step_up = None if foreign else self.engine.step_up(principal.tenant_id, decision)
        with self._db.write() as session:
            record(
                session,
                action,
                actor=Actor.of(principal),
                outcome="denied",
                # A denied probe of another tenant is recorded under the prober's
                # tenant: the other tenant's log must not learn of its resource ids.
                target=Target(resource.type, None if foreign else resource.id, principal.tenant_id),
                decision=decision,
                request=request,
                job_id=resource.id if resource.type == "job" and not foreign else None,
                reason=None if step_up is None else _step_up_reason(step_up),
            )
        if foreign:
            raise not_found(resource.type, resource.id)
        if step_up is not None:
            raise step_up_required(action, step_up)
        raise denied(principal, action, resource, decision)


def denied(
    principal: Principal, action: Action, resource: Resource, decision: Decision
) -> Forbidden:
    """The ``403``: which rule denied, or that none permits."""
    ids = list(decision.policy_ids)
    if ids:
        named = ", ".join(f"'{policy_id}'" for policy_id in ids)
        rule = "policy" if len(ids) == 1 else "policies"
        detail = (
            f"{principal.name} may not {action.value} on this {resource.type}: the {rule} "
            f"{named} forbid{'s' if len(ids) == 1 else ''} it. Your tenant's own policies are "
            "shown by `qustody policy get`; the platform's are described in docs/policies.md."
        )
    else:
        detail = (
            f"{principal.name} may not {action.value} on this {resource.type}: no policy "
            "permits it; ask a tenant admin for a role that allows it."
        )
    return Forbidden(detail, extra={"policy_ids": ids})


def step_up_required(action: Action, step_up: StepUp) -> StepUpRequired:
    """The ``401`` asking for a stronger or more recent sign-in (RFC 9470)."""
    within = (
        f" at most {step_up.max_age} seconds before the request"
        if step_up.max_age is not None
        else ""
    )
    return StepUpRequired(
        f"{action.value} needs a multi-factor sign-in{within} "
        f"({', '.join(step_up.policy_ids)}); sign in again with your second factor and retry "
        "with the new token.",
        acr_values=step_up.acr_values,
        max_age=step_up.max_age,
        description=f"{action.value} needs a multi-factor sign-in{within}",
        policy_ids=list(step_up.policy_ids),
    )


def _step_up_reason(step_up: StepUp) -> str:
    age = "" if step_up.max_age is None else f" max_age={step_up.max_age}"
    return f"step-up required: acr_values={step_up.acr_values or '-'}{age}"


def not_found(resource_type: str, resource_id: str) -> NotFound:
    """The one "not found" answer, identical for missing and foreign resources."""
    return NotFound(
        f"{resource_type} {resource_id} does not exist or is not visible to you; check the id.",
        extra={"resource_type": resource_type},
    )

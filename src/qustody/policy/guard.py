"""The one place services ask the policy engine.

:meth:`Guard.check` returns the :class:`Decision` when the engine allows. When
it denies, the denial is written to the audit log in its own transaction (the
request's own transaction is about to roll back, and a denial must never be
lost) and the caller gets:

- ``404`` when the resource belongs to another tenant, identical to a missing
  one, so a probe cannot tell someone else's job from a missing one;
- ``401`` with an RFC 9470 step-up challenge when only step-up forbids denied
  and a fresh multi-factor sign-in would be allowed;
- ``403`` ``approval_required`` when ``@approvals`` forbids held it and the
  same request, approved, would be allowed: the caller asks for approval
  (``POST /v1/approvals``) and retries with ``Qustody-Approval: apr_...``,
  which the guard spends (once) before allowing; a job submission may
  instead be held (:meth:`Guard.check_held`) until approvers approve it;
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
from qustody.policy.engine import ApprovalNeed, StepUp
from qustody.policy.errors import ApprovalRequired
from qustody.policy.facts import sdk_context
from qustody.policy.interfaces import ApprovalSpender, PolicyEngine, TenantPolicySource
from qustody.storage.db import Database


class Guard:
    def __init__(
        self,
        engine: PolicyEngine,
        db: Database,
        *,
        tenant_policies: TenantPolicySource | None = None,
        approvals: ApprovalSpender | None = None,
    ) -> None:
        self.engine = engine
        self._db = db
        self._tenant_policies = tenant_policies
        #: Spends ``Qustody-Approval`` requests; set once governance is built.
        self.approvals = approvals

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

    def needs_approval(
        self,
        principal: Principal,
        action: Action,
        resource: Resource,
        request: RequestContext | None = None,
        *,
        context: Mapping[str, object] | None = None,
    ) -> tuple[Decision, ApprovalNeed | None]:
        """The decision, and when approval forbids alone hold it (the request,
        approved, would be allowed) what approval it waits for. Neither
        recorded nor raised: for creating approval requests."""
        decision = self.decide(principal, action, resource, request, context=context)
        if decision.allowed:
            return decision, None
        need = self.engine.approval(principal.tenant_id, decision)
        if need is None:
            return decision, None
        lifted = self.decide(
            principal, action, resource, request, context={**(context or {}), "approved": True}
        )
        return (decision, need) if lifted.allowed else (lifted, None)

    def check(
        self,
        principal: Principal,
        action: Action,
        resource: Resource,
        request: RequestContext | None,
        *,
        context: Mapping[str, object] | None = None,
    ) -> Decision:
        decision, _ = self.check_held(principal, action, resource, request, context=context)
        return decision

    def check_held(
        self,
        principal: Principal,
        action: Action,
        resource: Resource,
        request: RequestContext | None,
        *,
        context: Mapping[str, object] | None = None,
        may_hold: bool = False,
    ) -> tuple[Decision, ApprovalNeed | None]:
        """:meth:`check`, and for what approval policies hold: with
        ``may_hold``, the allowing decision (as if approved) and the approval
        it waits for, for the caller to hold the request (a job); without, a
        ``Qustody-Approval`` on the request is spent, or ``approval_required``
        raised."""
        decision = self.decide(principal, action, resource, request, context=context)
        if decision.allowed:
            return decision, None
        need = None
        if resource.tenant_id is None or resource.tenant_id == principal.tenant_id:
            need = self.engine.approval(principal.tenant_id, decision)
        if need is not None:
            lifted = self.decide(
                principal, action, resource, request, context={**(context or {}), "approved": True}
            )
            if not lifted.allowed:
                # Approval would not be enough: the caller hears the real reason.
                decision, need = lifted, None
            elif may_hold:
                return lifted, need
            elif request is not None and request.approval_id and self.approvals is not None:
                self.approvals.spend(principal, action, resource, request.approval_id, request)
                return lifted, None
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
                reason=_approval_reason(need)
                if need is not None
                else None
                if step_up is None
                else _step_up_reason(step_up),
            )
        if foreign:
            raise not_found(resource.type, resource.id)
        if need is not None:
            raise approval_required(action, resource, need)
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


def approval_required(action: Action, resource: Resource, need: ApprovalNeed) -> ApprovalRequired:
    """The ``403`` saying which policy holds the action and how to ask for approval."""
    rule = ", ".join(f"'{policy_id}'" for policy_id in need.policy_ids)
    approvers = "one approver" if need.approvers == 1 else f"{need.approvers} approvers"
    how = (
        "resubmit with an approval reason and ticket (`qustody submit --reason ... --ticket "
        "...`); the job then waits in awaiting_approval"
        if action is Action.JOB_SUBMIT
        else f"ask for approval (`qustody approval request {action.value} "
        f"{resource.type}:{resource.id} --reason ... --ticket ...`, POST /v1/approvals) and "
        "retry with the header `Qustody-Approval: <approval id>` once it is approved"
    )
    return ApprovalRequired(
        f"{action.value} on this {resource.type} needs approval by {approvers} other than "
        f"you ({rule}); {how}. A request stays open {need.ttl_seconds} seconds.",
        extra={
            "policy_ids": list(need.policy_ids),
            "approvers": need.approvers,
            "ttl_seconds": need.ttl_seconds,
        },
    )


def _approval_reason(need: ApprovalNeed) -> str:
    return f"approval required: approvers={need.approvers} ttl={need.ttl_seconds}"


def _step_up_reason(step_up: StepUp) -> str:
    age = "" if step_up.max_age is None else f" max_age={step_up.max_age}"
    return f"step-up required: acr_values={step_up.acr_values or '-'}{age}"


def not_found(resource_type: str, resource_id: str) -> NotFound:
    """The one "not found" answer, identical for missing and foreign resources."""
    return NotFound(
        f"{resource_type} {resource_id} does not exist or is not visible to you; check the id.",
        extra={"resource_type": resource_type},
    )

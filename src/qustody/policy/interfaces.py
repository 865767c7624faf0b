"""What the rest of Qustody asks of the policy module."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from qustody.domain.ids import TenantId
from qustody.domain.models import Decision, Principal, Resource
from qustody.domain.vocabulary import Action

if TYPE_CHECKING:
    from qustody.domain.models import RequestContext
    from qustody.policy.engine import ApprovalNeed, StepUp


class PolicyEngine(Protocol):
    """Decides whether a principal may perform an action on a resource.

    Implementations deny by default: with no policy that permits, or with any
    doubt (an unusable resource description, a forbid that could not be
    evaluated), the answer is a denial. They never raise for a denial; they
    raise :class:`~qustody.policy.errors.PolicyError` only when the caller hands
    them something they cannot evaluate at all.
    """

    def authorize(
        self,
        principal: Principal,
        action: Action,
        resource: Resource,
        *,
        context: Mapping[str, object] | None = None,
    ) -> Decision:
        """Decide ``action`` by ``principal`` on ``resource``.

        ``context`` adds request facts (a submission's backend, qubits and
        shots; the client's SDK version) to those the engine derives itself
        from the principal and the resource. The returned :class:`Decision`
        names the policies that decided it.
        """
        ...

    def step_up(self, tenant_id: TenantId, decision: Decision) -> StepUp | None:
        """The sign-in that would lift ``decision``, a denial for a principal of
        ``tenant_id``: only when step-up policies alone denied it."""
        ...

    def approval(self, tenant_id: TenantId, decision: Decision) -> ApprovalNeed | None:
        """The approval that ``decision``, a denial for a principal of
        ``tenant_id``, waits for: only when approval (and step-up) forbids
        alone denied it."""
        ...


class ApprovalSpender(Protocol):
    """Spends an approved request (``Qustody-Approval: apr_...``) on the
    action it was approved for (implemented by ``qustody.governance``)."""

    def spend(
        self,
        principal: Principal,
        action: Action,
        resource: Resource,
        approval_id: str,
        request: RequestContext | None,
    ) -> None:
        """Mark the request used, once, and audit it; raise a
        :class:`~qustody.domain.errors.QustodyError` when it is not the
        caller's, not for this action and resource, not approved, expired or
        spent already."""
        ...


class TenantPolicySource(Protocol):
    """Keeps a process's copy of tenants' own policies current."""

    def refresh(self, tenant_id: TenantId) -> None:
        """Load ``tenant_id``'s newest policies if they changed (cheap when not due)."""
        ...

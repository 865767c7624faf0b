"""The one place services ask the policy engine.

:meth:`Guard.check` returns the :class:`Decision` when the engine allows. When
it denies, the denial is written to the audit log in its own transaction (the
request's own transaction is about to roll back, and a denial must never be
lost) and the caller gets ``403``, or ``404`` when the resource belongs to
another tenant, so a probe cannot tell someone else's job from a missing one.
"""

from __future__ import annotations

from collections.abc import Mapping

from qustody.audit.recorder import Actor, Target, record
from qustody.domain.errors import Forbidden, NotFound
from qustody.domain.models import Decision, Principal, RequestContext, Resource
from qustody.domain.vocabulary import Action
from qustody.policy.interfaces import PolicyEngine
from qustody.storage.db import Database


class Guard:
    def __init__(self, engine: PolicyEngine, db: Database) -> None:
        self.engine = engine
        self._db = db

    def check(
        self,
        principal: Principal,
        action: Action,
        resource: Resource,
        request: RequestContext | None,
        *,
        context: Mapping[str, object] | None = None,
    ) -> Decision:
        decision = self.engine.authorize(principal, action, resource, context=context)
        if decision.allowed:
            return decision
        foreign = resource.tenant_id is not None and resource.tenant_id != principal.tenant_id
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
            )
        if foreign:
            raise not_found(resource.type, resource.id)
        raise Forbidden(
            f"{principal.name} may not {action.value} on this {resource.type}; "
            "ask a tenant admin for a role that allows it."
        )


def not_found(resource_type: str, resource_id: str) -> NotFound:
    """The one "not found" answer, identical for missing and foreign resources."""
    return NotFound(
        f"{resource_type} {resource_id} does not exist or is not visible to you; check the id.",
        extra={"resource_type": resource_type},
    )

"""Break-glass: emergency elevation without approval, reviewed afterwards.

A platform operator (a platform admin, ``breakglass-operators`` in
``07-approvals.cedar``) takes a role in their own tenant at once, with a
mandatory reason, for at most an hour (``breakglass-max-duration``; the
setting ``QUSTODY_BREAKGLASS_MAX_SECONDS`` caps it too). Tenancy stays
absolute: break-glass never crosses into another tenant (the cross-tenant
guardrail has no exception for it); it lifts an operator to the roles the
platform tenant's own administration needs (``tenant-admin`` by default)
without waiting for approvers.

In the same transaction as the grant: the ``breakglass:invoke`` audit event
and an immediate ``breakglass.invoked`` alert for the platform's operators
(delivered by signed webhook). Every break-glass grant is flagged for review:
another operator (never the invoker, a Cedar forbid) reviews it with notes
(``breakglass:review``); unreviewed ones show in :meth:`BreakGlassService.report`
(``qustody breakglass report``, ``GET /v1/breakglass?unreviewed=true``).
"""

from __future__ import annotations

from sqlalchemy import select, update

from qustody.audit.recorder import Actor, Target, record
from qustody.domain.clock import SYSTEM_CLOCK, Clock
from qustody.domain.errors import Conflict, InvalidRequest
from qustody.domain.ids import looks_like_id
from qustody.domain.models import Principal, RequestContext, Resource
from qustody.domain.vocabulary import Action, Role
from qustody.governance.alerts import raise_alert
from qustody.governance.elevation import (
    GrantView,
    grant_resource,
    grant_view,
    insert_grant,
    parse_role,
)
from qustody.policy.guard import Guard, not_found
from qustody.policy.misses import records_misses
from qustody.storage import models as m
from qustody.storage.db import Database

__all__ = ["BreakGlassService"]

_GRANTS = m.ACCESS_GRANTS
MIN_REASON = 20
MAX_REASON = 512
MAX_NOTES = 1024


class BreakGlassService:
    def __init__(
        self,
        db: Database,
        guard: Guard,
        *,
        max_seconds: int = 3600,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._db = db
        self._guard = guard
        self._max_seconds = max_seconds
        self._clock = clock

    def invoke(
        self,
        caller: Principal,
        request: RequestContext,
        *,
        reason: str,
        role: str = Role.TENANT_ADMIN.value,
        duration_seconds: int = 3600,
        ticket: str | None = None,
    ) -> GrantView:
        reason = reason.strip()
        if not MIN_REASON <= len(reason) <= MAX_REASON:
            raise InvalidRequest(
                f"reason has {len(reason)} characters; break-glass needs {MIN_REASON} to "
                f"{MAX_REASON} saying what the emergency is (reviewers read it).",
                field="reason",
            )
        wanted = parse_role(role)
        if not 60 <= duration_seconds <= self._max_seconds:
            raise InvalidRequest(
                f"duration_seconds is {duration_seconds}; break-glass lasts 60 to "
                f"{self._max_seconds} seconds.",
                field="duration_seconds",
            )
        tenant = Resource("tenant", caller.tenant_id, caller.tenant_id)
        decision = self._guard.check(
            caller,
            Action.BREAKGLASS_INVOKE,
            tenant,
            request,
            context={"elevation_role": wanted.value, "duration_seconds": duration_seconds},
        )
        now = self._clock.now()
        with self._db.writing() as connection:
            values = insert_grant(
                connection,
                tenant_id=caller.tenant_id,
                principal_id=caller.id,
                role=wanted.value,
                project_id=None,
                approval_id=None,
                breakglass=True,
                reason=reason,
                ticket=(ticket or "")[:128] or None,
                starts_at=now,
                duration_seconds=duration_seconds,
            )
            grant_id = str(values["id"])
            alert_id = raise_alert(
                connection,
                tenant_id=caller.tenant_id,
                kind="breakglass.invoked",
                payload={
                    "grant_id": grant_id,
                    "principal_id": caller.id,
                    "role": wanted.value,
                    "reason": reason,
                    "expires_at": values["expires_at"].isoformat(),  # type: ignore[attr-defined]
                    "review_required": True,
                },
                at=now,
            )
            record(
                connection,
                Action.BREAKGLASS_INVOKE,
                actor=Actor.of(caller),
                target=Target("grant", grant_id, caller.tenant_id),
                decision=decision,
                request=request,
                reason=(
                    f"{wanted.value} for {duration_seconds}s; alert {alert_id}; "
                    f"review required; {reason}"
                ),
                at=now,
            )
            row = connection.execute(select(_GRANTS).where(_GRANTS.c.id == grant_id)).one()
        return grant_view(row, now)

    @records_misses(Action.BREAKGLASS_REVIEW)
    def review(
        self, caller: Principal, request: RequestContext, grant_id: str, notes: str
    ) -> GrantView:
        notes = notes.strip()
        if not 1 <= len(notes) <= MAX_NOTES:
            raise InvalidRequest(
                f"notes have {len(notes)} characters; give 1 to {MAX_NOTES} (what was done, "
                "whether it was justified).",
                field="notes",
            )
        if not looks_like_id(grant_id):
            raise not_found("grant", grant_id[:64])
        with self._db.reading() as connection:
            row = connection.execute(
                select(_GRANTS).where(
                    _GRANTS.c.id == grant_id,
                    _GRANTS.c.tenant_id == caller.tenant_id,
                    _GRANTS.c.breakglass.is_(True),
                )
            ).one_or_none()
        if row is None:
            raise not_found("grant", grant_id)
        decision = self._guard.check(caller, Action.BREAKGLASS_REVIEW, grant_resource(row), request)
        now = self._clock.now()
        with self._db.writing() as connection:
            done = connection.execute(
                update(_GRANTS)
                .where(_GRANTS.c.id == row.id, _GRANTS.c.reviewed_at.is_(None))
                .values(reviewed_by=caller.id, reviewed_at=now, review_notes=notes)
            )
            if not done.rowcount:
                raise Conflict(f"break-glass {row.id} was reviewed already.", field="grant")
            record(
                connection,
                Action.BREAKGLASS_REVIEW,
                actor=Actor.of(caller),
                target=Target("grant", row.id, row.tenant_id),
                decision=decision,
                request=request,
                reason=notes[:400],
                at=now,
            )
            fresh = connection.execute(select(_GRANTS).where(_GRANTS.c.id == row.id)).one()
        return grant_view(fresh, now)

    def listing(
        self, caller: Principal, request: RequestContext, *, unreviewed: bool = False
    ) -> list[GrantView]:
        """Break-glass grants of the caller's tenant (unreviewed ones: the report)."""
        tenant = Resource("tenant", caller.tenant_id, caller.tenant_id)
        self._guard.check(caller, Action.BREAKGLASS_LIST, tenant, request)
        now = self._clock.now()
        query = select(_GRANTS).where(
            _GRANTS.c.tenant_id == caller.tenant_id, _GRANTS.c.breakglass.is_(True)
        )
        if unreviewed:
            query = query.where(_GRANTS.c.reviewed_at.is_(None))
        with self._db.reading() as connection:
            rows = connection.execute(query.order_by(_GRANTS.c.id.desc()).limit(200)).all()
        return [grant_view(row, now) for row in rows]

    def report(self, caller: Principal, request: RequestContext) -> list[GrantView]:
        """Unreviewed break-glass: what still needs an after-the-fact review."""
        return self.listing(caller, request, unreviewed=True)

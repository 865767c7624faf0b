"""Just-in-time elevation: a role for a bounded time, once approved.

A principal asks for a role (``tenant-admin``, ``developer`` or ``viewer``)
tenant-wide or on one project, for ``duration_seconds`` with a ticket and a
reason. The request is an approval request of kind ``elevation``; it needs
as many approvers as the policy's ``@approvals`` on ``elevation:request``
say (the platform's default: one, :data:`DEFAULT_APPROVERS`). Policy bounds
the duration (``elevation-max-duration``: 8 hours; tenants may narrow it
with their own forbid on ``context.duration_seconds``).

Once approved, a grant row is active from the approval until approval +
duration. :func:`qustody.identity.tokens.roles_of` unions active grants with
memberships at every authentication, so the role vanishes when the time is
up with nothing to do; the sweep only records ``elevation:expire``. A grant
can be revoked early by its holder or a tenant admin.

A backend is not a scope of roles in Qustody's model (roles are tenant-wide
or per project); an elevation on a backend is asked as a role on the project
whose jobs use it, and policy on ``context.backend`` keeps narrowing what
the role may submit where.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection, Row

from qustody.audit.recorder import Actor, Target, record
from qustody.domain.clock import SYSTEM_CLOCK, Clock
from qustody.domain.errors import Conflict, InvalidRequest
from qustody.domain.ids import PrincipalId, ProjectId, TenantId, looks_like_id, new_id
from qustody.domain.models import Principal, RequestContext, Resource
from qustody.domain.vocabulary import Action, Role
from qustody.governance.approvals import ApprovalService, ApprovalView, Justification
from qustody.identity.admin import AdminService
from qustody.policy.engine import DEFAULT_APPROVAL_TTL, ApprovalNeed
from qustody.policy.guard import Guard, not_found
from qustody.policy.misses import records_misses
from qustody.storage import models as m
from qustody.storage.db import Database, utc

__all__ = ["ElevationService", "GrantView", "grant_resource"]

_GRANTS = m.ACCESS_GRANTS
#: Approvers an elevation needs when no ``@approvals`` policy on
#: ``elevation:request`` says otherwise.
DEFAULT_APPROVERS = 1
_ROLES = (Role.TENANT_ADMIN, Role.DEVELOPER, Role.VIEWER)


@dataclass(frozen=True, slots=True)
class GrantView:
    id: str
    tenant_id: str
    principal_id: str
    role: str
    project_id: str | None
    approval_id: str | None
    breakglass: bool
    reason: str
    ticket: str | None
    starts_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    active: bool
    reviewed_by: str | None
    reviewed_at: datetime | None
    review_notes: str | None


def grant_view(row: Row[tuple[object, ...]], now: datetime) -> GrantView:
    expires = utc(row.expires_at)
    return GrantView(
        id=row.id,
        tenant_id=row.tenant_id,
        principal_id=row.principal_id,
        role=row.role,
        project_id=row.project_id,
        approval_id=row.approval_id,
        breakglass=bool(row.breakglass),
        reason=row.reason,
        ticket=row.ticket,
        starts_at=utc(row.starts_at),
        expires_at=expires,
        revoked_at=utc(row.revoked_at),
        active=row.revoked_at is None and utc(row.starts_at) <= now < expires,
        reviewed_by=row.reviewed_by,
        reviewed_at=utc(row.reviewed_at),
        review_notes=row.review_notes,
    )


def grant_resource(row: Row[tuple[object, ...]] | GrantView) -> Resource:
    """A grant as the policies see it: ``owner`` is its holder."""
    return Resource(
        "grant",
        row.id,
        TenantId(row.tenant_id),
        project_id=ProjectId(row.project_id) if row.project_id else None,
        owner_id=PrincipalId(row.principal_id),
        attributes={"breakglass": bool(row.breakglass), "role": row.role},
    )


def parse_role(role: str) -> Role:
    if role not in {r.value for r in _ROLES}:
        raise InvalidRequest(
            f"role {role[:32]!r} cannot be granted for a time; use one of "
            f"{[r.value for r in _ROLES]}.",
            field="role",
        )
    return Role(role)


def insert_grant(
    connection: Connection,
    *,
    tenant_id: str,
    principal_id: str,
    role: str,
    project_id: str | None,
    approval_id: str | None,
    breakglass: bool,
    reason: str,
    ticket: str | None,
    starts_at: datetime,
    duration_seconds: int,
) -> dict[str, object]:
    values: dict[str, object] = {
        "id": new_id("grt"),
        "tenant_id": tenant_id,
        "principal_id": principal_id,
        "role": role,
        "project_id": project_id,
        "approval_id": approval_id,
        "breakglass": breakglass,
        "reason": reason,
        "ticket": ticket,
        "starts_at": starts_at,
        "expires_at": starts_at + timedelta(seconds=duration_seconds),
    }
    connection.execute(insert(_GRANTS), values)
    return values


class ElevationService:
    def __init__(
        self,
        db: Database,
        guard: Guard,
        admin: AdminService,
        approvals: ApprovalService,
        *,
        max_seconds: int = 8 * 3600,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._db = db
        self._guard = guard
        self._admin = admin
        self._approvals = approvals
        self._max_seconds = max_seconds
        self._clock = clock
        approvals.activate = self._activate

    @records_misses(Action.ELEVATION_REQUEST)
    def request(
        self,
        caller: Principal,
        request: RequestContext,
        *,
        role: str,
        project: str | None,
        duration_seconds: int,
        justification: Justification,
    ) -> ApprovalView:
        wanted = parse_role(role)
        if not 60 <= duration_seconds <= self._max_seconds:
            raise InvalidRequest(
                f"duration_seconds is {duration_seconds}; give 60 to {self._max_seconds} "
                "(the platform's longest elevation).",
                field="duration_seconds",
            )
        project_id = None
        if project is not None:
            project_id = self._admin.project_scope(caller.tenant_id, project).id
        elif wanted is not Role.TENANT_ADMIN:
            raise InvalidRequest(
                f"{wanted.value} is a project role; name the project.", field="project"
            )
        tenant = Resource("tenant", caller.tenant_id, caller.tenant_id)
        context = {"elevation_role": wanted.value, "duration_seconds": duration_seconds}
        decision, need = self._guard.needs_approval(
            caller, Action.ELEVATION_REQUEST, tenant, request, context=context
        )
        if not decision.allowed and need is None:
            # Refused outright (too long, a forbidden role): recorded and raised.
            self._guard.check(caller, Action.ELEVATION_REQUEST, tenant, request, context=context)
        need = need or ApprovalNeed(DEFAULT_APPROVERS, DEFAULT_APPROVAL_TTL, ())
        target = Resource(
            "tenant" if project_id is None else "project",
            project_id or caller.tenant_id,
            caller.tenant_id,
            project_id=ProjectId(project_id) if project_id else None,
        )
        return self._approvals.open_request(
            caller,
            request,
            kind="elevation",
            action=Action.ELEVATION_REQUEST,
            resource=target,
            justification=justification,
            need=need,
            role=wanted.value,
            duration_seconds=duration_seconds,
        )

    def _activate(
        self, connection: Connection, row: Row[tuple[object, ...]], actor: Actor, at: datetime
    ) -> None:
        """Write the grant of an approved elevation, in the approving transaction."""
        values = insert_grant(
            connection,
            tenant_id=row.tenant_id,
            principal_id=row.requester_id,
            role=str(row.role),
            project_id=row.project_id,
            approval_id=row.id,
            breakglass=False,
            reason=row.reason,
            ticket=row.ticket,
            starts_at=at,
            duration_seconds=int(row.duration_seconds or 0),
        )
        record(
            connection,
            Action.ELEVATION_ACTIVATE,
            actor=actor,
            target=Target("grant", str(values["id"]), row.tenant_id),
            approval_id=row.id,
            reason=(
                f"{row.role} for {row.requester_id} on "
                f"{row.project_id or 'the tenant'} until "
                f"{values['expires_at'].isoformat()}"  # type: ignore[attr-defined]
            ),
            at=at,
        )

    def listing(
        self,
        caller: Principal,
        request: RequestContext,
        *,
        active: bool = False,
        mine: bool = False,
        breakglass: bool | None = None,
    ) -> list[GrantView]:
        tenant = Resource("tenant", caller.tenant_id, caller.tenant_id)
        self._guard.check(caller, Action.ELEVATION_LIST, tenant, request)
        now = self._clock.now()
        query = select(_GRANTS).where(_GRANTS.c.tenant_id == caller.tenant_id)
        if active:
            query = query.where(
                _GRANTS.c.starts_at <= now,
                _GRANTS.c.expires_at > now,
                _GRANTS.c.revoked_at.is_(None),
            )
        # Members see their own grants; tenant admins see the tenant's.
        if mine or Role.TENANT_ADMIN not in caller.tenant_roles:
            query = query.where(_GRANTS.c.principal_id == caller.id)
        if breakglass is not None:
            query = query.where(_GRANTS.c.breakglass == breakglass)
        with self._db.reading() as connection:
            rows = connection.execute(query.order_by(_GRANTS.c.id.desc()).limit(200)).all()
        return [grant_view(row, now) for row in rows]

    @records_misses(Action.ELEVATION_REVOKE)
    def revoke(self, caller: Principal, request: RequestContext, grant_id: str) -> GrantView:
        if not looks_like_id(grant_id):
            raise not_found("grant", grant_id[:64])
        with self._db.reading() as connection:
            row = connection.execute(
                select(_GRANTS).where(
                    _GRANTS.c.id == grant_id, _GRANTS.c.tenant_id == caller.tenant_id
                )
            ).one_or_none()
        if row is None:
            raise not_found("grant", grant_id)
        decision = self._guard.check(caller, Action.ELEVATION_REVOKE, grant_resource(row), request)
        now = self._clock.now()
        with self._db.writing() as connection:
            done = connection.execute(
                update(_GRANTS)
                .where(
                    _GRANTS.c.id == row.id,
                    _GRANTS.c.revoked_at.is_(None),
                    _GRANTS.c.expires_at > now,
                )
                .values(revoked_at=now, revoked_by=caller.id)
            )
            if not done.rowcount:
                raise Conflict(
                    f"grant {row.id} has already ended (revoked or expired).", field="grant"
                )
            record(
                connection,
                Action.ELEVATION_REVOKE,
                actor=Actor.of(caller),
                target=Target("grant", row.id, row.tenant_id),
                decision=decision,
                request=request,
                approval_id=row.approval_id,
                at=now,
            )
            fresh = connection.execute(select(_GRANTS).where(_GRANTS.c.id == row.id)).one()
        return grant_view(fresh, now)

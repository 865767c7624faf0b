"""Just-in-time elevation and break-glass (docs/approvals.md).

``POST /v1/elevations`` asks for a role for a time: an approval request of
kind ``elevation`` (approve it with ``POST /v1/approvals/{id}:approve``);
approval activates a grant that ends by itself. ``POST /v1/breakglass``
takes one at once, alerting the platform's operators, for review afterwards.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter
from fastapi import Request as HttpRequest
from pydantic import Field

from qustody.api.auth import CallerDep
from qustody.api.routes.approvals import ApprovalOut, Reason, Ticket
from qustody.api.routes.common import secured
from qustody.api.schemas import Request, Response
from qustody.api.state import services_of
from qustody.domain.errors import ServiceUnavailable
from qustody.domain.vocabulary import Action, Role
from qustody.governance.approvals import Justification
from qustody.governance.breakglass import MAX_NOTES, BreakGlassService
from qustody.governance.elevation import ElevationService, GrantView

router = APIRouter(prefix="/v1", tags=["elevation"])

Duration = Annotated[int, Field(ge=60, le=7 * 24 * 3600, description="Seconds")]


def _elevations(request: HttpRequest) -> ElevationService:
    service = services_of(request).elevations
    if service is None:
        raise ServiceUnavailable("elevation is not configured in this process.")
    return service


def _breakglass(request: HttpRequest) -> BreakGlassService:
    service = services_of(request).breakglass
    if service is None:
        raise ServiceUnavailable("break-glass is not configured in this process.")
    return service


class ElevationAsk(Request):
    #: ``tenant-admin`` (tenant-wide), ``developer`` or ``viewer`` (on a project).
    role: Annotated[str, Field(min_length=1, max_length=32)]
    #: The project (name or id) the role is for; none for ``tenant-admin``.
    project: Annotated[str | None, Field(min_length=1, max_length=128)] = None
    duration_seconds: Duration
    reason: Reason
    ticket: Ticket


class BreakGlassAsk(Request):
    #: What the emergency is: at least 20 characters; reviewers read it.
    reason: Reason
    role: Annotated[str, Field(min_length=1, max_length=32)] = Role.TENANT_ADMIN.value
    duration_seconds: Duration = 3600
    ticket: Annotated[str | None, Field(min_length=1, max_length=128)] = None


class Review(Request):
    notes: Annotated[str, Field(min_length=1, max_length=MAX_NOTES)]


class GrantOut(Response):
    id: str
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
    #: Whether the role is in force now.
    active: bool
    #: Break-glass only: the after-the-fact review.
    review_required: bool
    reviewed_by: str | None
    reviewed_at: datetime | None
    review_notes: str | None

    @classmethod
    def of(cls, view: GrantView) -> GrantOut:
        data = {name: getattr(view, name) for name in cls.model_fields if name != "review_required"}
        return cls(**data, review_required=view.breakglass and view.reviewed_at is None)


class GrantList(Response):
    items: list[GrantOut]


@router.post(
    "/elevations",
    status_code=201,
    response_model=ApprovalOut,
    openapi_extra=secured(Action.ELEVATION_REQUEST),
)
def request_elevation(body: ElevationAsk, caller: CallerDep, request: HttpRequest) -> ApprovalOut:
    """Ask for a role for a time; it is active once approved, until it expires."""
    view = _elevations(request).request(
        caller.principal,
        caller.request,
        role=body.role,
        project=body.project,
        duration_seconds=body.duration_seconds,
        justification=Justification(body.reason, body.ticket),
    )
    return ApprovalOut.of(view)


@router.get("/elevations", response_model=GrantList, openapi_extra=secured(Action.ELEVATION_LIST))
def list_elevations(
    caller: CallerDep,
    request: HttpRequest,
    active: bool = False,
    mine: bool = False,
) -> GrantList:
    """Grants of your tenant (tenant admins) or your own, newest first;
    ``active``: only those in force now."""
    views = _elevations(request).listing(caller.principal, caller.request, active=active, mine=mine)
    return GrantList(items=[GrantOut.of(v) for v in views])


@router.post(
    "/elevations/{grant_id}:revoke",
    response_model=GrantOut,
    openapi_extra=secured(Action.ELEVATION_REVOKE),
)
def revoke_elevation(grant_id: str, caller: CallerDep, request: HttpRequest) -> GrantOut:
    """End a grant early (its holder, or a tenant admin)."""
    return GrantOut.of(_elevations(request).revoke(caller.principal, caller.request, grant_id))


@router.post(
    "/breakglass",
    status_code=201,
    response_model=GrantOut,
    openapi_extra=secured(Action.BREAKGLASS_INVOKE),
)
def invoke_breakglass(body: BreakGlassAsk, caller: CallerDep, request: HttpRequest) -> GrantOut:
    """Take an emergency role at once (platform operators): alerted now,
    reviewed afterwards by another operator."""
    view = _breakglass(request).invoke(
        caller.principal,
        caller.request,
        reason=body.reason,
        role=body.role,
        duration_seconds=body.duration_seconds,
        ticket=body.ticket,
    )
    return GrantOut.of(view)


@router.get("/breakglass", response_model=GrantList, openapi_extra=secured(Action.BREAKGLASS_LIST))
def list_breakglass(caller: CallerDep, request: HttpRequest, unreviewed: bool = False) -> GrantList:
    """Break-glass grants, newest first; ``unreviewed``: those still to review (the report)."""
    views = _breakglass(request).listing(caller.principal, caller.request, unreviewed=unreviewed)
    return GrantList(items=[GrantOut.of(v) for v in views])


@router.post(
    "/breakglass/{grant_id}:review",
    response_model=GrantOut,
    openapi_extra=secured(Action.BREAKGLASS_REVIEW),
)
def review_breakglass(
    grant_id: str, body: Review, caller: CallerDep, request: HttpRequest
) -> GrantOut:
    """Record the after-the-fact review (another operator, never the invoker)."""
    view = _breakglass(request).review(caller.principal, caller.request, grant_id, body.notes)
    return GrantOut.of(view)

"""Approvals: ask, list, read, approve, deny, withdraw (docs/approvals.md).

A held job asks for its approval when submitted (``approval`` in the body of
``POST /v1/jobs``); any other held action is asked for here and, once
approved, retried with ``Qustody-Approval: apr_...``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi import Request as HttpRequest
from pydantic import Field

from qustody.api.auth import CallerDep
from qustody.api.routes.common import secured
from qustody.api.schemas import Request, Response
from qustody.api.state import services_of
from qustody.domain.errors import ServiceUnavailable
from qustody.domain.vocabulary import Action
from qustody.governance.approvals import (
    MAX_COMMENT,
    MAX_PAGE,
    MAX_REASON,
    ApprovalService,
    ApprovalView,
    Justification,
)

router = APIRouter(prefix="/v1", tags=["approvals"])

Reason = Annotated[
    str, Field(min_length=1, max_length=MAX_REASON, description="Why; approvers read it")
]
Ticket = Annotated[
    str, Field(min_length=1, max_length=128, description="The change or incident ticket")
]


def _approvals(request: HttpRequest) -> ApprovalService:
    service = services_of(request).approvals
    if service is None:
        raise ServiceUnavailable("approvals are not configured in this process.")
    return service


class ApprovalAsk(Request):
    #: The held action: ``key:rotate``, ``policy:set``, ``audit:export``,
    #: ``result:read`` ... (``GET`` the 403's detail for which).
    action: Annotated[str, Field(min_length=1, max_length=64)]
    #: ``tenant`` for a tenant-wide action, a job id for one on a job.
    resource: Annotated[str, Field(min_length=1, max_length=64)] = "tenant"
    reason: Reason
    ticket: Ticket


class Vote(Request):
    comment: Annotated[str | None, Field(max_length=MAX_COMMENT)] = None


class VoteOut(Response):
    approver_id: str
    verdict: str
    comment: str | None
    at: datetime


class ApprovalOut(Response):
    id: str
    #: ``job``, ``action`` or ``elevation``.
    kind: str
    action: str
    resource_type: str
    resource_id: str
    project_id: str | None
    requester_id: str
    reason: str
    ticket: str
    #: Distinct approvers needed, and approvals so far.
    required: int
    approvals: int
    #: The policies that hold the action.
    policy_ids: list[str]
    #: ``pending``, ``approved``, ``used``, ``denied``, ``cancelled`` or ``expired``.
    state: str
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    used_at: datetime | None
    #: For an elevation: the role and for how long.
    role: str | None
    duration_seconds: int | None
    votes: list[VoteOut]

    @classmethod
    def of(cls, view: ApprovalView) -> ApprovalOut:
        data = {name: getattr(view, name) for name in cls.model_fields if name not in ("votes",)}
        data["policy_ids"] = list(view.policy_ids)
        votes = [VoteOut(approver_id=a, verdict=v, comment=c, at=at) for a, v, c, at in view.votes]
        return cls(**data, votes=votes)


class ApprovalList(Response):
    items: list[ApprovalOut]


@router.post(
    "/approvals",
    status_code=201,
    response_model=ApprovalOut,
    openapi_extra=secured(Action.APPROVAL_REQUEST),
)
def request_approval(body: ApprovalAsk, caller: CallerDep, request: HttpRequest) -> ApprovalOut:
    """Ask approval for an action a policy holds; once approved, retry the
    action with its id in the ``Qustody-Approval`` header (once)."""
    view = _approvals(request).request(
        caller.principal,
        caller.request,
        action=body.action,
        resource=body.resource,
        justification=Justification(body.reason, body.ticket),
    )
    return ApprovalOut.of(view)


@router.get("/approvals", response_model=ApprovalList, openapi_extra=secured(Action.APPROVAL_LIST))
def list_approvals(
    caller: CallerDep,
    request: HttpRequest,
    state: Annotated[str | None, Query(max_length=16)] = None,
    mine: bool = False,
    to_approve: Annotated[bool, Query(alias="to-approve")] = False,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> ApprovalList:
    """Requests of your tenant you may read, newest first: your own
    (``mine``), those waiting for your vote (``to-approve``), by ``state``."""
    views = _approvals(request).listing(
        caller.principal,
        caller.request,
        state=state,
        mine=mine,
        to_approve=to_approve,
        limit=limit,
    )
    return ApprovalList(items=[ApprovalOut.of(v) for v in views])


@router.get(
    "/approvals/{approval_id}",
    response_model=ApprovalOut,
    openapi_extra=secured(Action.APPROVAL_READ),
)
def get_approval(approval_id: str, caller: CallerDep, request: HttpRequest) -> ApprovalOut:
    """One request, with its votes."""
    return ApprovalOut.of(_approvals(request).get(caller.principal, caller.request, approval_id))


@router.post(
    "/approvals/{approval_id}:approve",
    response_model=ApprovalOut,
    openapi_extra=secured(Action.APPROVAL_APPROVE),
)
def approve(
    approval_id: str, caller: CallerDep, request: HttpRequest, body: Vote | None = None
) -> ApprovalOut:
    """Approve (never your own request); the N-th distinct approval decides it."""
    comment = body.comment if body is not None else None
    view = _approvals(request).approve(caller.principal, caller.request, approval_id, comment)
    return ApprovalOut.of(view)


@router.post(
    "/approvals/{approval_id}:deny",
    response_model=ApprovalOut,
    openapi_extra=secured(Action.APPROVAL_DENY),
)
def deny(
    approval_id: str, caller: CallerDep, request: HttpRequest, body: Vote | None = None
) -> ApprovalOut:
    """Deny: one denial decides it (a held job is rejected)."""
    comment = body.comment if body is not None else None
    view = _approvals(request).deny(caller.principal, caller.request, approval_id, comment)
    return ApprovalOut.of(view)


@router.post(
    "/approvals/{approval_id}:cancel",
    response_model=ApprovalOut,
    openapi_extra=secured(Action.APPROVAL_CANCEL),
)
def cancel(approval_id: str, caller: CallerDep, request: HttpRequest) -> ApprovalOut:
    """Withdraw your own pending (or approved, unused) request; a held job is cancelled."""
    return ApprovalOut.of(_approvals(request).cancel(caller.principal, caller.request, approval_id))

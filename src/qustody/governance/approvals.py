"""Approvals: N-of-M, never by the requester, expiring, audited.

A policy holds an action for approval with an ``@approvals("N")`` forbid
(see ``policies/07-approvals.cedar`` and :class:`~qustody.policy.guard.Guard`).
What is held becomes an **approval request**, of one of three kinds:

- ``job``: a submission held by policy waits in ``awaiting_approval``; the
  request is written in the job's own transaction (:func:`hold_job`). When
  the N-th distinct approver approves, the job moves to ``queued`` in that
  same transaction and the workers are woken; a denial or the expiry rejects
  it (``approval_denied``, ``approval_expired``); withdrawing cancels it.
- ``action``: any other held action (key rotation, a policy change, reading
  a restricted result). Once approved, the requester retries the action with
  ``Qustody-Approval: apr_...``; the guard spends it (:meth:`ApprovalService.spend`):
  once, by the requester, for that action on that resource, before it expires.
- ``elevation``: a just-in-time role (:mod:`qustody.governance.elevation`);
  approval activates the grant.

Approvers are whoever the policy lets ``approval:approve`` (by default the
tenant's admins); a Cedar forbid keeps the requester from approving their
own request whatever their roles. N counts distinct approvers: one vote per
approver and request (a unique constraint), counted under the request's row
lock, so two approvers taking the last slot at once queue the job once. One
denial denies.

Every step is audited with the request's id: ``approval:request``,
``approval:approve``, ``approval:deny``, ``approval:cancel``,
``approval:expire`` (by :meth:`ApprovalService.sweep`, or found expired when
read or voted on), ``approval:use``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection, Row

from qustody.audit.recorder import Actor, Target, event_row, record, record_rows
from qustody.domain.clock import SYSTEM_CLOCK, Clock
from qustody.domain.errors import Conflict, InvalidRequest
from qustody.domain.ids import PrincipalId, ProjectId, TenantId, looks_like_id, new_id
from qustody.domain.models import Decision, Principal, RequestContext, Resource
from qustody.domain.periodic import Periodic
from qustody.domain.vocabulary import Action, DataClass, JobState
from qustody.policy.engine import ApprovalNeed
from qustody.policy.errors import ApprovalInvalid
from qustody.policy.facts import job_attributes
from qustody.policy.guard import Guard, not_found
from qustody.policy.misses import records_misses
from qustody.storage import models as m
from qustody.storage.db import Database, system_scope, utc

__all__ = [
    "ApprovalService",
    "ApprovalSweeper",
    "ApprovalView",
    "Justification",
    "hold_job",
    "withdraw_job",
]

logger = logging.getLogger(__name__)
_REQUESTS = m.APPROVAL_REQUESTS
_VOTES = m.APPROVAL_VOTES
_GRANTS = m.ACCESS_GRANTS
_TICKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/#-]{0,127}")
MIN_REASON = 8
MAX_REASON = 512
MAX_COMMENT = 512
MAX_PAGE = 200
#: How many expired requests one sweep settles (the next sweep takes the rest).
SWEEP_BATCH = 200
#: Actions a request of kind ``action`` may name: those the guard can spend
#: an approval on (tenant-wide actions, and reading a job's result).
_TENANT_ACTIONS = frozenset(
    {
        Action.KEY_ROTATE,
        Action.POLICY_SET,
        Action.AUDIT_EXPORT,
        Action.SECRET_SET,
        Action.SECRET_DELETE,
        Action.EXPORTKEY_SET,
        Action.TRUSTRULE_SET,
        Action.TRUSTRULE_DELETE,
    }
)
_JOB_ACTIONS = frozenset({Action.RESULT_READ, Action.JOB_READ, Action.JOB_CANCEL})

Kind = Literal["action", "job", "elevation"]


@dataclass(frozen=True, slots=True)
class Justification:
    """Why, and under which ticket: every request carries both."""

    reason: str
    ticket: str

    def __post_init__(self) -> None:
        reason = self.reason.strip()
        if not MIN_REASON <= len(reason) <= MAX_REASON:
            raise InvalidRequest(
                f"reason has {len(reason)} characters; give {MIN_REASON} to {MAX_REASON} "
                "saying why this is needed (approvers and auditors read it).",
                field="reason",
            )
        if not _TICKET.fullmatch(self.ticket):
            raise InvalidRequest(
                "ticket must be the id of the change or incident ticket: 1 to 128 letters, "
                "digits and . _ : / # - (e.g. CHG-1234).",
                field="ticket",
            )
        object.__setattr__(self, "reason", reason)


@dataclass(frozen=True, slots=True)
class ApprovalView:
    id: str
    tenant_id: str
    kind: str
    action: str
    resource_type: str
    resource_id: str
    project_id: str | None
    requester_id: str
    reason: str
    ticket: str
    required: int
    approvals: int
    policy_ids: tuple[str, ...]
    state: str
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    used_at: datetime | None
    role: str | None
    duration_seconds: int | None
    votes: tuple[tuple[str, str, str | None, datetime], ...] = ()


def _view(
    row: Row[tuple[object, ...]] | m.ApprovalRequest, votes: Sequence[Row[tuple[object, ...]]] = ()
) -> ApprovalView:
    r = row
    return ApprovalView(
        id=r.id,
        tenant_id=r.tenant_id,
        kind=r.kind,
        action=r.action,
        resource_type=r.resource_type,
        resource_id=r.resource_id,
        project_id=r.project_id,
        requester_id=r.requester_id,
        reason=r.reason,
        ticket=r.ticket,
        required=r.required,
        approvals=r.approvals,
        policy_ids=tuple(p for p in r.policy_ids.split(",") if p),
        state=r.state,
        created_at=utc(r.created_at),
        expires_at=utc(r.expires_at),
        decided_at=utc(r.decided_at),
        used_at=utc(r.used_at),
        role=r.role,
        duration_seconds=r.duration_seconds,
        votes=tuple((v.approver_id, v.verdict, v.comment, utc(v.at)) for v in votes),
    )


def approval_resource(row: Row[tuple[object, ...]] | ApprovalView) -> Resource:
    """The request as the policies see it: ``owner`` is its requester."""
    return Resource(
        "approval",
        row.id,
        TenantId(row.tenant_id),
        project_id=ProjectId(row.project_id) if row.project_id else None,
        owner_id=PrincipalId(row.requester_id),
        attributes={"kind": row.kind, "action": row.action},
    )


def insert_request(
    connection: Connection,
    *,
    kind: Kind,
    caller: Principal,
    action: Action,
    resource: Resource,
    justification: Justification,
    need: ApprovalNeed,
    at: datetime,
    request: RequestContext | None,
    role: str | None = None,
    duration_seconds: int | None = None,
    job_id: str | None = None,
    approval_id: str | None = None,
) -> dict[str, object]:
    """Write a pending request and its ``approval:request`` event in the
    caller's transaction; returns the row's values."""
    values: dict[str, object] = {
        "id": approval_id or new_id("apr"),
        "tenant_id": caller.tenant_id,
        "kind": kind,
        "action": action.value,
        "resource_type": resource.type,
        "resource_id": resource.id,
        "project_id": resource.project_id,
        "requester_id": caller.id,
        "reason": justification.reason,
        "ticket": justification.ticket,
        "required": need.approvers,
        "approvals": 0,
        "policy_ids": ",".join(need.policy_ids)[:512],
        "state": "pending",
        "created_at": at,
        "expires_at": at + timedelta(seconds=need.ttl_seconds),
        "decided_at": None,
        "used_at": None,
        "role": role,
        "duration_seconds": duration_seconds,
    }
    connection.execute(insert(_REQUESTS), values)
    record(
        connection,
        Action.APPROVAL_REQUEST,
        actor=Actor.of(caller),
        target=Target("approval", str(values["id"]), caller.tenant_id),
        request=request,
        approval_id=str(values["id"]),
        job_id=job_id,
        reason=(
            f"{action.value} on {resource.type} {resource.id}; needs {need.approvers}; "
            f"ticket={justification.ticket}; {justification.reason}"
        ),
        at=at,
    )
    return values


def hold_job(
    connection: Connection,
    *,
    caller: Principal,
    job_id: str,
    project_id: str,
    justification: Justification,
    need: ApprovalNeed,
    at: datetime,
    request: RequestContext | None,
) -> str:
    """The approval request a held job waits for, in the job's transaction;
    returns its id (``jobs.approval_id``)."""
    values = insert_request(
        connection,
        kind="job",
        caller=caller,
        action=Action.JOB_SUBMIT,
        resource=Resource("job", job_id, caller.tenant_id, project_id=ProjectId(project_id)),
        justification=justification,
        need=need,
        at=at,
        request=request,
        job_id=job_id,
    )
    return str(values["id"])


def withdraw_job(connection: Connection, approval_id: str, actor: Actor, at: datetime) -> None:
    """The held job was cancelled: its pending request goes with it."""
    done = connection.execute(
        update(_REQUESTS)
        .where(_REQUESTS.c.id == approval_id, _REQUESTS.c.state == "pending")
        .values(state="cancelled", decided_at=at)
    )
    if done.rowcount:
        tenant_id = connection.execute(
            select(_REQUESTS.c.tenant_id).where(_REQUESTS.c.id == approval_id)
        ).scalar_one()
        record(
            connection,
            Action.APPROVAL_CANCEL,
            actor=actor,
            target=Target("approval", approval_id, tenant_id),
            approval_id=approval_id,
            reason="the held job was cancelled",
            at=at,
        )


def _job_to(
    connection: Connection,
    job_id: str,
    to: JobState,
    *,
    actor: Actor,
    at: datetime,
    approval_id: str,
    reason: str,
    error_code: str | None = None,
) -> bool:
    """Move a held job on (``queued``, ``rejected``, ``cancelled``): a
    conditional update, so it happens once whoever races for it."""
    values: dict[str, object] = {"state": to.value, "updated_at": at}
    if to is JobState.QUEUED:
        values["queued_at"] = at
    else:
        values.update(finished_at=at, error_code=error_code)
        if error_code:
            values["error_detail"] = reason
    done = connection.execute(
        update(m.JOBS)
        .where(m.JOBS.c.id == job_id, m.JOBS.c.state == JobState.AWAITING_APPROVAL.value)
        .values(**values)
    )
    if not done.rowcount:
        return False
    tenant_id = connection.execute(
        select(m.JOBS.c.tenant_id).where(m.JOBS.c.id == job_id)
    ).scalar_one()
    connection.execute(
        insert(m.JOB_TRANSITIONS),
        {
            "job_id": job_id,
            "tenant_id": tenant_id,
            "from_state": JobState.AWAITING_APPROVAL.value,
            "to_state": to.value,
            "actor": actor.id,
            "reason": error_code or reason,
            "at": at,
        },
    )
    event = {
        JobState.QUEUED: Action.JOB_QUEUE,
        JobState.REJECTED: Action.JOB_REJECT,
        JobState.CANCELLED: Action.JOB_CANCEL,
    }[to]
    record(
        connection,
        event,
        actor=actor,
        outcome="success" if to is JobState.QUEUED else "failure",
        target=Target("job", job_id, tenant_id),
        job_id=job_id,
        approval_id=approval_id,
        reason=reason,
        at=at,
    )
    return True


#: Called in an approving transaction for an ``elevation`` request: writes its grant.
Activator = Callable[[Connection, Row[tuple[object, ...]], Actor, datetime], None]


class ApprovalService:
    """Requests, votes, withdrawal, spending and expiry of approvals.

    ``on_queued`` is called after a commit that queued a held job (it wakes
    the workers); ``activate`` writes an approved elevation's grant.
    """

    def __init__(
        self,
        db: Database,
        guard: Guard,
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_queued: Callable[[], None] = lambda: None,
    ) -> None:
        self._db = db
        self._guard = guard
        self._clock = clock
        self._on_queued = on_queued
        self.activate: Activator | None = None

    # -- asking ------------------------------------------------------------------

    @records_misses(Action.APPROVAL_REQUEST)
    def request(
        self,
        caller: Principal,
        request: RequestContext,
        *,
        action: str,
        resource: str,
        justification: Justification,
    ) -> ApprovalView:
        """Ask approval for ``action`` on ``resource`` (``tenant`` or a job id)."""
        tenant = Resource("tenant", caller.tenant_id, caller.tenant_id)
        self._guard.check(caller, Action.APPROVAL_REQUEST, tenant, request)
        wanted = self._action(action)
        target = self._target(caller, wanted, resource)
        decision, need = self._guard.needs_approval(caller, wanted, target, request)
        if need is None:
            if decision.allowed:
                raise Conflict(
                    f"{wanted.value} on this {target.type} needs no approval for you; do it "
                    "without one.",
                    field="action",
                )
            raise InvalidRequest(
                f"{wanted.value} on this {target.type} is refused to you even when approved "
                f"({', '.join(decision.policy_ids) or 'no policy permits it'}); an approval "
                "cannot help.",
                field="action",
            )
        now = self._clock.now()
        with self._db.writing() as connection:
            values = insert_request(
                connection,
                kind="action",
                caller=caller,
                action=wanted,
                resource=target,
                justification=justification,
                need=need,
                at=now,
                request=request,
            )
        return self._read(caller, str(values["id"]))

    def open_request(
        self,
        caller: Principal,
        request: RequestContext,
        *,
        kind: Kind,
        action: Action,
        resource: Resource,
        justification: Justification,
        need: ApprovalNeed,
        role: str | None = None,
        duration_seconds: int | None = None,
    ) -> ApprovalView:
        """A request for something already authorized as needing approval
        (an elevation), in its own transaction."""
        now = self._clock.now()
        with self._db.writing() as connection:
            values = insert_request(
                connection,
                kind=kind,
                caller=caller,
                action=action,
                resource=resource,
                justification=justification,
                need=need,
                at=now,
                request=request,
                role=role,
                duration_seconds=duration_seconds,
            )
        return self._read(caller, str(values["id"]))

    @staticmethod
    def _action(action: str) -> Action:
        try:
            wanted = Action(action)
        except ValueError:
            wanted = None
        if wanted is None or wanted not in _TENANT_ACTIONS | _JOB_ACTIONS:
            allowed = sorted(a.value for a in _TENANT_ACTIONS | _JOB_ACTIONS)
            raise InvalidRequest(
                f"action {action[:40]!r} cannot be approved ahead; use one of {allowed} "
                "(a job asks for approval when submitted with a reason and ticket, an "
                "elevation through POST /v1/elevations).",
                field="action",
            )
        return wanted

    def _target(self, caller: Principal, action: Action, resource: str) -> Resource:
        if action in _TENANT_ACTIONS:
            if resource not in ("tenant", caller.tenant_id):
                raise InvalidRequest(
                    f"{action.value} is aimed at your tenant; give resource 'tenant'.",
                    field="resource",
                )
            return Resource("tenant", caller.tenant_id, caller.tenant_id)
        job_id = resource.removeprefix("job:")
        if not looks_like_id(job_id):
            raise InvalidRequest(
                f"{action.value} is aimed at a job; give its id (job_...).", field="resource"
            )
        with self._db.reading() as connection:
            row = connection.execute(
                select(
                    m.JOBS.c.id,
                    m.JOBS.c.tenant_id,
                    m.JOBS.c.project_id,
                    m.JOBS.c.backend,
                    m.JOBS.c.num_qubits,
                    m.JOBS.c.shots,
                    m.PROJECTS.c.data_class,
                )
                .join(m.PROJECTS, m.PROJECTS.c.id == m.JOBS.c.project_id)
                .where(m.JOBS.c.id == job_id, m.JOBS.c.tenant_id == caller.tenant_id)
            ).one_or_none()
        if row is None:
            raise not_found("job", job_id[:64])
        return Resource(
            "job",
            row.id,
            TenantId(row.tenant_id),
            project_id=ProjectId(row.project_id),
            data_class=DataClass(row.data_class) if row.data_class else None,
            attributes=job_attributes(row.backend, row.num_qubits, row.shots),
        )

    # -- reading -----------------------------------------------------------------

    def _row(
        self, connection: Connection, caller: Principal, approval_id: str
    ) -> Row[tuple[object, ...]]:
        if not looks_like_id(approval_id):
            raise not_found("approval", approval_id[:64])
        row = connection.execute(
            select(_REQUESTS).where(
                _REQUESTS.c.id == approval_id, _REQUESTS.c.tenant_id == caller.tenant_id
            )
        ).one_or_none()
        if row is None:
            raise not_found("approval", approval_id)
        return row

    def _read(self, caller: Principal, approval_id: str) -> ApprovalView:
        with self._db.reading() as connection:
            row = self._row(connection, caller, approval_id)
            votes = connection.execute(
                select(_VOTES).where(_VOTES.c.approval_id == row.id).order_by(_VOTES.c.id)
            ).all()
        return _view(row, votes)

    @records_misses(Action.APPROVAL_READ)
    def get(self, caller: Principal, request: RequestContext, approval_id: str) -> ApprovalView:
        self._expire_if_due(caller, approval_id)
        found = self._read(caller, approval_id)
        self._guard.check(caller, Action.APPROVAL_READ, approval_resource(found), request)
        return found

    def listing(
        self,
        caller: Principal,
        request: RequestContext,
        *,
        state: str | None = None,
        mine: bool = False,
        to_approve: bool = False,
        limit: int = 50,
    ) -> list[ApprovalView]:
        """Requests the caller may read: its own (``mine``), those it may
        approve and has not voted on (``to_approve``), or both."""
        tenant = Resource("tenant", caller.tenant_id, caller.tenant_id)
        self._guard.check(caller, Action.APPROVAL_LIST, tenant, request)
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit is {limit}; give 1 to {MAX_PAGE}.", field="limit")
        states = ("pending", "approved", "used", "denied", "cancelled", "expired")
        if state is not None and state not in states:
            raise InvalidRequest(
                f"state {state[:20]!r} is not an approval state; use one of {list(states)}.",
                field="state",
            )
        query = select(_REQUESTS).where(_REQUESTS.c.tenant_id == caller.tenant_id)
        if state is not None:
            query = query.where(_REQUESTS.c.state == state)
        if mine:
            query = query.where(_REQUESTS.c.requester_id == caller.id)
        if to_approve:
            voted = select(_VOTES.c.approval_id).where(_VOTES.c.approver_id == caller.id)
            query = query.where(
                _REQUESTS.c.state == "pending",
                _REQUESTS.c.requester_id != caller.id,
                _REQUESTS.c.id.not_in(voted),
            )
        with self._db.reading() as connection:
            rows = connection.execute(query.order_by(_REQUESTS.c.id.desc()).limit(limit)).all()
        action = Action.APPROVAL_APPROVE if to_approve else Action.APPROVAL_READ
        return [
            _view(row)
            for row in rows
            if self._guard.decide(caller, action, approval_resource(row), request).allowed
        ]

    # -- deciding ----------------------------------------------------------------

    @records_misses(Action.APPROVAL_APPROVE)
    def approve(
        self, caller: Principal, request: RequestContext, approval_id: str, comment: str | None
    ) -> ApprovalView:
        return self._vote(caller, request, approval_id, "approve", comment)

    @records_misses(Action.APPROVAL_DENY)
    def deny(
        self, caller: Principal, request: RequestContext, approval_id: str, comment: str | None
    ) -> ApprovalView:
        return self._vote(caller, request, approval_id, "deny", comment)

    def _vote(
        self,
        caller: Principal,
        request: RequestContext,
        approval_id: str,
        verdict: Literal["approve", "deny"],
        comment: str | None,
    ) -> ApprovalView:
        if comment is not None and len(comment) > MAX_COMMENT:
            raise InvalidRequest(
                f"comment has {len(comment)} characters; at most {MAX_COMMENT}.", field="comment"
            )
        self._expire_if_due(caller, approval_id)
        found = self._read(caller, approval_id)
        action = Action.APPROVAL_APPROVE if verdict == "approve" else Action.APPROVAL_DENY
        decision = self._guard.check(caller, action, approval_resource(found), request)
        now = self._clock.now()
        actor = Actor.of(caller)
        queued = False
        with self._db.writing() as connection:
            row = connection.execute(
                select(_REQUESTS).where(_REQUESTS.c.id == found.id).with_for_update()
            ).one()
            if row.state != "pending":
                raise Conflict(
                    f"approval {row.id} is {row.state}; only a pending request takes votes.",
                    field="state",
                )
            if utc(row.expires_at) <= now:
                raise Conflict(
                    f"approval {row.id} expired at {utc(row.expires_at).isoformat()}; ask again.",
                    field="expires_at",
                )
            already = connection.execute(
                select(_VOTES.c.verdict).where(
                    _VOTES.c.approval_id == row.id, _VOTES.c.approver_id == caller.id
                )
            ).first()
            if already is not None:
                raise Conflict(
                    f"you already voted ({already.verdict}) on approval {row.id}; N-of-M counts "
                    "each approver once.",
                    field="approver",
                )
            connection.execute(
                insert(_VOTES),
                {
                    "approval_id": row.id,
                    "tenant_id": row.tenant_id,
                    "approver_id": caller.id,
                    "verdict": verdict,
                    "comment": comment,
                    "at": now,
                },
            )
            events = [
                event_row(
                    action,
                    actor=actor,
                    target=Target("approval", row.id, row.tenant_id),
                    decision=decision,
                    request=request,
                    approval_id=row.id,
                    reason=f"{verdict} {row.approvals + (verdict == 'approve')}/{row.required}",
                    at=now,
                )
            ]
            record_rows(connection, events)
            if verdict == "deny":
                connection.execute(
                    update(_REQUESTS)
                    .where(_REQUESTS.c.id == row.id)
                    .values(state="denied", decided_at=now)
                )
                if row.kind == "job":
                    _job_to(
                        connection,
                        row.resource_id,
                        JobState.REJECTED,
                        actor=actor,
                        at=now,
                        approval_id=row.id,
                        reason="an approver denied the approval request",
                        error_code="approval_denied",
                    )
            else:
                count = row.approvals + 1
                approved = count >= row.required
                connection.execute(
                    update(_REQUESTS)
                    .where(_REQUESTS.c.id == row.id)
                    .values(
                        approvals=count,
                        **({"state": "approved", "decided_at": now} if approved else {}),
                    )
                )
                if approved and row.kind == "job":
                    queued = _job_to(
                        connection,
                        row.resource_id,
                        JobState.QUEUED,
                        actor=actor,
                        at=now,
                        approval_id=row.id,
                        reason=f"approved by {count} of {row.required} approvers",
                    )
                elif approved and row.kind == "elevation" and self.activate is not None:
                    self.activate(connection, row, actor, now)
        if queued:
            self._on_queued()
        return self._read(caller, found.id)

    @records_misses(Action.APPROVAL_CANCEL)
    def cancel(self, caller: Principal, request: RequestContext, approval_id: str) -> ApprovalView:
        """Withdraw one's own request (a held job is cancelled with it)."""
        found = self._read(caller, approval_id)
        decision = self._guard.check(
            caller, Action.APPROVAL_CANCEL, approval_resource(found), request
        )
        now = self._clock.now()
        actor = Actor.of(caller)
        with self._db.writing() as connection:
            done = connection.execute(
                update(_REQUESTS)
                .where(
                    _REQUESTS.c.id == found.id,
                    _REQUESTS.c.state.in_(("pending", "approved")),
                    _REQUESTS.c.used_at.is_(None),
                )
                .values(state="cancelled", decided_at=now)
            )
            if not done.rowcount:
                raise Conflict(
                    f"approval {found.id} is {found.state}; only a pending or unused approved "
                    "request can be withdrawn.",
                    field="state",
                )
            record(
                connection,
                Action.APPROVAL_CANCEL,
                actor=actor,
                target=Target("approval", found.id, found.tenant_id),
                decision=decision,
                request=request,
                approval_id=found.id,
                at=now,
            )
            if found.kind == "job":
                _job_to(
                    connection,
                    found.resource_id,
                    JobState.CANCELLED,
                    actor=actor,
                    at=now,
                    approval_id=found.id,
                    reason="the approval request was withdrawn",
                )
        return self._read(caller, found.id)

    # -- spending (Qustody-Approval) -------------------------------------------------

    def spend(
        self,
        principal: Principal,
        action: Action,
        resource: Resource,
        approval_id: str,
        request: RequestContext | None,
    ) -> None:
        now = self._clock.now()
        problem: str | None = None
        with self._db.writing() as connection:
            row = (
                connection.execute(
                    select(_REQUESTS)
                    .where(
                        _REQUESTS.c.id == approval_id, _REQUESTS.c.tenant_id == principal.tenant_id
                    )
                    .with_for_update()
                ).one_or_none()
                if looks_like_id(approval_id)
                else None
            )
            if row is None or row.kind != "action":
                problem = f"approval {approval_id[:64]} does not exist or is not yours"
            elif row.requester_id != principal.id:
                problem = f"approval {row.id} was asked for by someone else; ask for your own"
            elif row.action != action.value or (row.resource_type, row.resource_id) != (
                resource.type,
                resource.id,
            ):
                problem = (
                    f"approval {row.id} is for {row.action} on {row.resource_type} "
                    f"{row.resource_id}, not {action.value} on this {resource.type}"
                )
            elif row.state == "used":
                problem = f"approval {row.id} was used already; each approval is spent once"
            elif row.state != "approved":
                problem = f"approval {row.id} is {row.state}, not approved"
            elif utc(row.expires_at) <= now:
                problem = f"approval {row.id} expired at {utc(row.expires_at).isoformat()}"
            else:
                connection.execute(
                    update(_REQUESTS)
                    .where(_REQUESTS.c.id == row.id, _REQUESTS.c.state == "approved")
                    .values(state="used", used_at=now)
                )
            record(
                connection,
                Action.APPROVAL_USE,
                actor=Actor.of(principal),
                outcome="denied" if problem else "success",
                # A reference to nothing of the caller's tenant is not
                # written down: it may be another tenant's id.
                target=Target("approval", row.id if row is not None else None, principal.tenant_id),
                request=request,
                approval_id=row.id if row is not None else None,
                reason=(
                    "no approval by that reference is visible to the caller"
                    if row is None
                    else problem or f"{action.value} on {resource.type} {resource.id}"
                ),
                at=now,
            )
        if problem is not None:
            raise ApprovalInvalid(
                f"{problem}; ask for approval with `qustody approval request` and retry with "
                "its id in the Qustody-Approval header once approved.",
                field="Qustody-Approval",
            )

    # -- expiry --------------------------------------------------------------------

    def _expire_if_due(self, caller: Principal, approval_id: str) -> None:
        """Settle one of the caller's tenant's requests found past its expiry
        before it is read or voted on."""
        if not looks_like_id(approval_id):
            return
        now = self._clock.now()
        with self._db.reading() as connection:
            due = connection.execute(
                select(_REQUESTS.c.id).where(
                    _REQUESTS.c.id == approval_id,
                    _REQUESTS.c.tenant_id == caller.tenant_id,
                    _REQUESTS.c.state.in_(("pending", "approved")),
                    _REQUESTS.c.expires_at <= now,
                )
            ).first()
        if due is not None:
            with self._db.writing() as connection:
                self._expire(connection, [approval_id], now)

    def sweep(self) -> int:
        """Expire what is due (requests, and record grants that ended);
        returns how many. Run by workers in their upkeep, across tenants."""
        now = self._clock.now()
        with system_scope():
            with self._db.reading() as connection:
                ids = list(
                    connection.execute(
                        select(_REQUESTS.c.id)
                        .where(
                            _REQUESTS.c.state.in_(("pending", "approved")),
                            _REQUESTS.c.expires_at <= now,
                        )
                        .limit(SWEEP_BATCH)
                    ).scalars()
                )
                grants = (
                    connection.execute(
                        select(_GRANTS.c.id)
                        .where(
                            _GRANTS.c.expires_at <= now,
                            _GRANTS.c.expired_at.is_(None),
                            _GRANTS.c.revoked_at.is_(None),
                        )
                        .limit(SWEEP_BATCH)
                    )
                    .scalars()
                    .all()
                )
            count = 0
            if ids or grants:
                with self._db.writing() as connection:
                    count = self._expire(connection, ids, now) + _expire_grants(
                        connection, list(grants), now
                    )
        return count

    def _expire(self, connection: Connection, ids: Sequence[str], now: datetime) -> int:
        count = 0
        system = Actor("system")
        for approval_id in ids:
            row = connection.execute(
                select(_REQUESTS).where(_REQUESTS.c.id == approval_id).with_for_update()
            ).one()
            if row.state not in ("pending", "approved") or utc(row.expires_at) > now:
                continue
            # An approved job or elevation request is done; only unused action approvals lapse.
            if row.state == "approved" and row.kind != "action":
                continue
            connection.execute(
                update(_REQUESTS).where(_REQUESTS.c.id == row.id).values(state="expired")
            )
            record(
                connection,
                Action.APPROVAL_EXPIRE,
                actor=system,
                target=Target("approval", row.id, row.tenant_id),
                approval_id=row.id,
                reason=f"{row.state} request expired at {utc(row.expires_at).isoformat()}",
                at=now,
            )
            if row.kind == "job":
                _job_to(
                    connection,
                    row.resource_id,
                    JobState.REJECTED,
                    actor=system,
                    at=now,
                    approval_id=row.id,
                    reason="the approval request expired before enough approvers approved",
                    error_code="approval_expired",
                )
            count += 1
        return count


def _expire_grants(connection: Connection, ids: Sequence[str], now: datetime) -> int:
    """Record grants that ended by themselves (access already ended at ``expires_at``)."""
    count = 0
    for grant_id in ids:
        row = connection.execute(select(_GRANTS).where(_GRANTS.c.id == grant_id)).one()
        done = connection.execute(
            update(_GRANTS)
            .where(_GRANTS.c.id == grant_id, _GRANTS.c.expired_at.is_(None))
            .values(expired_at=now)
        )
        if not done.rowcount:
            continue
        record(
            connection,
            Action.ELEVATION_EXPIRE,
            actor=Actor("system"),
            target=Target("grant", row.id, row.tenant_id),
            approval_id=row.approval_id,
            reason=(
                f"{'break-glass ' if row.breakglass else ''}{row.role} of "
                f"{row.principal_id} ended at {utc(row.expires_at).isoformat()}"
            ),
            at=now,
        )
        count += 1
    return count


def decision_of(action: Action) -> Decision:
    """A system decision (for events recorded without a caller's policy check)."""
    return Decision(allowed=True, action=action)


class ApprovalSweeper(Periodic):
    """The thread workers run to expire approval requests and record ended
    grants every ``interval`` seconds (access ends at ``expires_at`` anyway)."""

    def __init__(self, approvals: ApprovalService, interval: float = 5.0) -> None:
        super().__init__("approval-sweeper", interval)
        self._approvals = approvals

    def round(self) -> None:
        self._approvals.sweep()

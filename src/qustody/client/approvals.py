"""Approvals, just-in-time elevation and break-glass in the SDK.

An action a policy holds for approval raises :class:`QustodyAPIError` with
code ``approval_required``. Ask for approval, have it approved by others,
then retry the action once with the approval::

    asked = client.request_approval("key:rotate", reason="yearly rotation", ticket="CHG-1")
    # ... two tenant admins run client.approve(asked.id) ...
    with client.approved(asked.id):
        client.rotate_keys()

A held job is asked for when submitted: ``client.submit(..., reason=..., ticket=...)``
stores it in ``awaiting_approval`` until its approvers approve.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from qustody.client._transport import Transport
from qustody.client.models import _Reader

if TYPE_CHECKING:
    import httpx

#: The header that carries an approved request's id on the retried action.
APPROVAL_HEADER = "Qustody-Approval"


def _segment(value: str) -> str:
    return quote(value, safe="")


def _items(answer: object) -> list[object]:
    items = _Reader(answer, "list").raw("items")
    return list(items) if isinstance(items, list) else []


@dataclass(frozen=True, slots=True)
class Vote:
    approver_id: str
    verdict: str
    comment: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class Approval:
    """An approval request: ``kind`` ``job``, ``action`` or ``elevation``."""

    id: str
    kind: str
    action: str
    resource_type: str
    resource_id: str
    requester_id: str
    reason: str
    ticket: str
    required: int
    approvals: int
    policy_ids: tuple[str, ...]
    state: str
    created_at: datetime
    expires_at: datetime
    role: str | None
    duration_seconds: int | None
    votes: tuple[Vote, ...]

    @classmethod
    def from_json(cls, data: object) -> Approval:
        r = _Reader(data, "approval")
        ids = r.raw("policy_ids")
        votes = r.raw("votes") if r.has("votes") else []
        return cls(
            id=r.req_str("id"),
            kind=r.req_str("kind"),
            action=r.req_str("action"),
            resource_type=r.req_str("resource_type"),
            resource_id=r.req_str("resource_id"),
            requester_id=r.req_str("requester_id"),
            reason=r.req_str("reason"),
            ticket=r.req_str("ticket"),
            required=r.req_int("required"),
            approvals=r.req_int("approvals"),
            policy_ids=tuple(str(i) for i in ids) if isinstance(ids, list) else (),
            state=r.req_str("state"),
            created_at=r.req_time("created_at"),
            expires_at=r.req_time("expires_at"),
            role=r.opt_str("role"),
            duration_seconds=r.opt_int("duration_seconds"),
            votes=tuple(
                Vote(
                    v.req_str("approver_id"),
                    v.req_str("verdict"),
                    v.opt_str("comment"),
                    v.req_time("at"),
                )
                for v in (_Reader(item, "vote") for item in votes or [])
            )
            if isinstance(votes, list)
            else (),
        )


@dataclass(frozen=True, slots=True)
class Grant:
    """A role held for a time: an approved elevation, or break-glass."""

    id: str
    principal_id: str
    role: str
    project_id: str | None
    approval_id: str | None
    breakglass: bool
    reason: str
    starts_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    active: bool
    review_required: bool
    reviewed_by: str | None

    @classmethod
    def from_json(cls, data: object) -> Grant:
        r = _Reader(data, "grant")
        return cls(
            id=r.req_str("id"),
            principal_id=r.req_str("principal_id"),
            role=r.req_str("role"),
            project_id=r.opt_str("project_id"),
            approval_id=r.opt_str("approval_id"),
            breakglass=r.req_bool("breakglass"),
            reason=r.req_str("reason"),
            starts_at=r.req_time("starts_at"),
            expires_at=r.req_time("expires_at"),
            revoked_at=r.opt_time("revoked_at"),
            active=r.req_bool("active"),
            review_required=r.req_bool("review_required"),
            reviewed_by=r.opt_str("reviewed_by"),
        )


class ApprovalMethods(Transport):
    """The :class:`~qustody.client.Client` methods for approvals, elevation and break-glass."""

    if TYPE_CHECKING:
        _http: httpx.Client

    # -- approvals -------------------------------------------------------------------

    def request_approval(
        self, action: str, *, reason: str, ticket: str, resource: str = "tenant"
    ) -> Approval:
        """Ask approval for ``action`` on ``resource`` (``tenant``, or a job id)."""
        body = {"action": action, "resource": resource, "reason": reason, "ticket": ticket}
        return Approval.from_json(self._json("POST", "/approvals", json=body))

    def approvals(
        self,
        *,
        state: str | None = None,
        mine: bool = False,
        to_approve: bool = False,
        limit: int = 50,
    ) -> list[Approval]:
        """Requests you may read, newest first (``to_approve``: waiting for your vote)."""
        params: dict[str, str | int] = {"limit": limit}
        if state is not None:
            params["state"] = state
        if mine:
            params["mine"] = "true"
        if to_approve:
            params["to-approve"] = "true"
        answer = self._json("GET", "/approvals", params=params)
        return [Approval.from_json(i) for i in _items(answer)]

    def approval(self, approval_id: str) -> Approval:
        return Approval.from_json(self._json("GET", f"/approvals/{_segment(approval_id)}"))

    def approve(self, approval_id: str, comment: str | None = None) -> Approval:
        """Approve someone else's request (never your own)."""
        return self._vote(approval_id, "approve", comment)

    def deny(self, approval_id: str, comment: str | None = None) -> Approval:
        return self._vote(approval_id, "deny", comment)

    def cancel_approval(self, approval_id: str) -> Approval:
        """Withdraw your own request (a held job is cancelled with it)."""
        return Approval.from_json(self._json("POST", f"/approvals/{_segment(approval_id)}:cancel"))

    def _vote(self, approval_id: str, verdict: str, comment: str | None) -> Approval:
        body: dict[str, Any] = {} if comment is None else {"comment": comment}
        answer = self._json("POST", f"/approvals/{_segment(approval_id)}:{verdict}", json=body)
        return Approval.from_json(answer)

    def use_approval(self, approval_id: str | None) -> None:
        """Send ``approval_id`` with every request from now on (``None``: stop)."""
        if approval_id is None:
            self._http.headers.pop(APPROVAL_HEADER, None)
        else:
            self._http.headers[APPROVAL_HEADER] = approval_id

    @contextmanager
    def approved(self, approval_id: str) -> Iterator[None]:
        """Send ``approval_id`` with the requests made inside the block; the
        gateway spends it on the held action (once)."""
        self.use_approval(approval_id)
        try:
            yield
        finally:
            self.use_approval(None)

    # -- elevation -------------------------------------------------------------------

    def request_elevation(
        self,
        role: str,
        *,
        duration_seconds: int,
        reason: str,
        ticket: str,
        project: str | None = None,
    ) -> Approval:
        """Ask for ``role`` (on ``project``) for a time; active once approved."""
        body: dict[str, Any] = {
            "role": role,
            "duration_seconds": duration_seconds,
            "reason": reason,
            "ticket": ticket,
        }
        if project is not None:
            body["project"] = project
        return Approval.from_json(self._json("POST", "/elevations", json=body))

    def elevations(self, *, active: bool = False, mine: bool = False) -> list[Grant]:
        params: dict[str, str | int] = {}
        if active:
            params["active"] = "true"
        if mine:
            params["mine"] = "true"
        return [Grant.from_json(i) for i in _items(self._json("GET", "/elevations", params=params))]

    def revoke_elevation(self, grant_id: str) -> Grant:
        return Grant.from_json(self._json("POST", f"/elevations/{_segment(grant_id)}:revoke"))

    # -- break-glass -------------------------------------------------------------------

    def invoke_breakglass(
        self,
        *,
        reason: str,
        role: str = "tenant-admin",
        duration_seconds: int = 3600,
        ticket: str | None = None,
    ) -> Grant:
        """Take an emergency role at once (platform operators); alerted, reviewed later."""
        body: dict[str, Any] = {
            "reason": reason,
            "role": role,
            "duration_seconds": duration_seconds,
        }
        if ticket is not None:
            body["ticket"] = ticket
        return Grant.from_json(self._json("POST", "/breakglass", json=body))

    def breakglass(self, *, unreviewed: bool = False) -> list[Grant]:
        params: dict[str, str | int] = {"unreviewed": "true"} if unreviewed else {}
        return [Grant.from_json(i) for i in _items(self._json("GET", "/breakglass", params=params))]

    def review_breakglass(self, grant_id: str, notes: str) -> Grant:
        answer = self._json(
            "POST", f"/breakglass/{_segment(grant_id)}:review", json={"notes": notes}
        )
        return Grant.from_json(answer)

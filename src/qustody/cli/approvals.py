"""``qustody approval``, ``qustody elevate``, ``qustody breakglass``::

    qustody approval request key:rotate --reason "yearly rotation" --ticket CHG-1234
    qustody approval list [--to-approve | --mine] [--state pending]
    qustody approval show apr_...
    qustody approval approve apr_... [--comment "checked the change"]
    qustody approval deny apr_... [--comment ...]
    qustody approval cancel apr_...
    qustody --approval apr_... keys rotate        # spend it on the held action, once

    qustody elevate request developer --project research --for 2h --reason ... --ticket ...
    qustody elevate list [--active] [--mine]
    qustody elevate revoke grt_...

    qustody breakglass invoke --reason "..." [--role tenant-admin] [--for 30m]
    qustody breakglass report                      # unreviewed break-glass
    qustody breakglass review grt_... --notes "..."

A job held for approval is asked for at submission:
``qustody submit job.qasm ... --reason ... --ticket ...``.
"""

from __future__ import annotations

import re
from typing import Protocol

import click

from qustody.cli.output import emit_json, table
from qustody.client import Client
from qustody.client.approvals import Approval, Grant

_DURATION = re.compile(r"(\d+)([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class Gateway(Protocol):
    url: str

    def client(self) -> Client: ...


def _seconds(text: str) -> int:
    found = _DURATION.fullmatch(text.strip())
    if found is None:
        raise click.BadParameter(f"{text!r}: give seconds, or a number and s, m, h or d (90m)")
    return int(found.group(1)) * _UNIT[found.group(2)]


def _show(view: Approval, as_json: bool) -> None:
    if as_json:
        emit_json(view)
        return
    click.echo(f"{view.id}  {view.state}  {view.approvals}/{view.required} approvals")
    click.echo(f"  {view.kind}: {view.action} on {view.resource_type} {view.resource_id}")
    if view.role:
        click.echo(f"  role {view.role} for {view.duration_seconds}s")
    click.echo(f"  asked by {view.requester_id}; ticket {view.ticket}: {view.reason}")
    click.echo(f"  held by {', '.join(view.policy_ids) or '-'}; expires {view.expires_at}")
    for vote in view.votes:
        click.echo(f"  {vote.verdict} by {vote.approver_id} at {vote.at}: {vote.comment or ''}")


def _grants(rows: list[Grant], as_json: bool) -> None:
    if as_json:
        emit_json(rows)
        return
    table(
        [
            (
                g.id,
                g.principal_id,
                g.role,
                g.project_id or "tenant",
                g.expires_at,
                "active" if g.active else "ended",
                "REVIEW" if g.review_required else "",
            )
            for g in rows
        ],
        ["id", "principal", "role", "scope", "expires", "state", "review"],
    )


# -- approvals ------------------------------------------------------------------------


@click.group()
def approval() -> None:
    """Approval requests: ask, list, show, approve, deny, withdraw."""


@approval.command("request")
@click.argument("action")
@click.option("--resource", default="tenant", show_default=True, help="'tenant' or a job id.")
@click.option("--reason", required=True, help="Why (approvers read it).")
@click.option("--ticket", required=True, help="The change ticket (CHG-1234).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def approval_request(
    ctx: Gateway, action: str, resource: str, reason: str, ticket: str, as_json: bool
) -> None:
    """Ask approval for ACTION (key:rotate, policy:set, result:read ...)."""
    with ctx.client() as client:
        view = client.request_approval(action, resource=resource, reason=reason, ticket=ticket)
    _show(view, as_json)
    if not as_json:
        click.echo(f"once approved: qustody --approval {view.id} <the command>", err=True)


@approval.command("list")
@click.option("--state", default=None, help="pending, approved, used, denied, cancelled, expired")
@click.option("--mine", is_flag=True, help="Only your own requests.")
@click.option("--to-approve", is_flag=True, help="Only those waiting for your vote.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def approval_list(
    ctx: Gateway, state: str | None, mine: bool, to_approve: bool, as_json: bool
) -> None:
    """Requests you may read, newest first."""
    with ctx.client() as client:
        rows = client.approvals(state=state, mine=mine, to_approve=to_approve)
    if as_json:
        emit_json(rows)
        return
    table(
        [
            (a.id, a.state, f"{a.approvals}/{a.required}", a.action, a.resource_id, a.requester_id)
            for a in rows
        ],
        ["id", "state", "votes", "action", "resource", "requester"],
    )


@approval.command("show")
@click.argument("approval_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def approval_show(ctx: Gateway, approval_id: str, as_json: bool) -> None:
    """One request, with its votes."""
    with ctx.client() as client:
        _show(client.approval(approval_id), as_json)


@approval.command("approve")
@click.argument("approval_id")
@click.option("--comment", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def approval_approve(ctx: Gateway, approval_id: str, comment: str | None, as_json: bool) -> None:
    """Approve someone else's request."""
    with ctx.client() as client:
        _show(client.approve(approval_id, comment), as_json)


@approval.command("deny")
@click.argument("approval_id")
@click.option("--comment", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def approval_deny(ctx: Gateway, approval_id: str, comment: str | None, as_json: bool) -> None:
    """Deny a request (a held job is rejected)."""
    with ctx.client() as client:
        _show(client.deny(approval_id, comment), as_json)


@approval.command("cancel")
@click.argument("approval_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def approval_cancel(ctx: Gateway, approval_id: str, as_json: bool) -> None:
    """Withdraw your own request (a held job is cancelled)."""
    with ctx.client() as client:
        _show(client.cancel_approval(approval_id), as_json)


# -- elevation ------------------------------------------------------------------------


@click.group()
def elevate() -> None:
    """Just-in-time elevation: ask for a role for a time, list, revoke."""


@elevate.command("request")
@click.argument("role")
@click.option("--project", default=None, help="The project (none for tenant-admin).")
@click.option("--for", "duration", required=True, help="How long: 3600, 90m, 2h.")
@click.option("--reason", required=True)
@click.option("--ticket", required=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def elevate_request(
    ctx: Gateway,
    role: str,
    project: str | None,
    duration: str,
    reason: str,
    ticket: str,
    as_json: bool,
) -> None:
    """Ask for ROLE for a time; active once approved, gone when it expires."""
    with ctx.client() as client:
        view = client.request_elevation(
            role,
            project=project,
            duration_seconds=_seconds(duration),
            reason=reason,
            ticket=ticket,
        )
    _show(view, as_json)


@elevate.command("list")
@click.option("--active", is_flag=True, help="Only grants in force now.")
@click.option("--mine", is_flag=True, help="Only your own.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def elevate_list(ctx: Gateway, active: bool, mine: bool, as_json: bool) -> None:
    """Grants (yours; a tenant admin sees the tenant's)."""
    with ctx.client() as client:
        _grants(client.elevations(active=active, mine=mine), as_json)


@elevate.command("revoke")
@click.argument("grant_id")
@click.pass_obj
def elevate_revoke(ctx: Gateway, grant_id: str) -> None:
    """End a grant now."""
    with ctx.client() as client:
        client.revoke_elevation(grant_id)
    click.echo(f"revoked {grant_id}")


# -- break-glass ----------------------------------------------------------------------


@click.group()
def breakglass() -> None:
    """Emergency elevation for platform operators: invoke, report, review."""


@breakglass.command("invoke")
@click.option("--reason", required=True, help="What the emergency is (20 characters or more).")
@click.option("--role", default="tenant-admin", show_default=True)
@click.option("--for", "duration", default="1h", show_default=True, help="At most 1h.")
@click.option("--ticket", default=None, help="The incident ticket, if there is one yet.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def breakglass_invoke(
    ctx: Gateway, reason: str, role: str, duration: str, ticket: str | None, as_json: bool
) -> None:
    """Take ROLE at once: the operators are alerted, and it must be reviewed."""
    with ctx.client() as client:
        grant = client.invoke_breakglass(
            reason=reason, role=role, duration_seconds=_seconds(duration), ticket=ticket
        )
    if as_json:
        emit_json(grant)
        return
    click.echo(f"{grant.id}  {grant.role} until {grant.expires_at}; review required")


@breakglass.command("report")
@click.option("--all", "everything", is_flag=True, help="Reviewed ones too.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def breakglass_report(ctx: Gateway, everything: bool, as_json: bool) -> None:
    """Break-glass still to review (with --all: every one)."""
    with ctx.client() as client:
        _grants(client.breakglass(unreviewed=not everything), as_json)


@breakglass.command("review")
@click.argument("grant_id")
@click.option("--notes", required=True, help="What was done, and whether it was justified.")
@click.pass_obj
def breakglass_review(ctx: Gateway, grant_id: str, notes: str) -> None:
    """Record the after-the-fact review (not by the invoker)."""
    with ctx.client() as client:
        client.review_breakglass(grant_id, notes)
    click.echo(f"reviewed {grant_id}")

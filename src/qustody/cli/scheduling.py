"""``qustody backend|reservation|session|queue``: scheduling from the command line.

Platform admins operate backends; tenant admins reserve them; anyone who
submits jobs opens sessions and looks at a backend's queue (their own
tenant's jobs, and busy or normal for the rest)::

    qustody backend pause aer-statevector --reason "firmware update"
    qustody backend resume aer-statevector
    qustody backend maintenance aer-statevector --start 2026-01-05T22:00Z \
        --end 2026-01-06T02:00Z --reason calibration
    qustody backend concurrency aer-statevector 4
    qustody reservation create aer-statevector --start ... --end ... --reason "campaign"
    qustody reservation list | cancel RSV_ID
    qustody session open aer-statevector --ttl 3600 | close SES_ID | list
    qustody queue aer-statevector
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

import click

from qustody.cli.output import emit_json, table
from qustody.client import Client


class Gateway(Protocol):
    def client(self) -> Client: ...


def _moment(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an RFC 3339 time (2026-01-05T22:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        raise click.BadParameter(f"{value!r} has no time zone; add Z or an offset")
    return moment


@click.group()
def backend() -> None:
    """Operate a backend (platform admins): pause, resume, maintenance, concurrency."""


@backend.command("pause")
@click.argument("name")
@click.option("--reason", required=True, help="Why: shown to the people whose jobs wait.")
@click.pass_obj
def backend_pause(ctx: Gateway, name: str, reason: str) -> None:
    """Start nothing more on NAME; submissions still queue."""
    emit_json(ctx.client().pause_backend(name, reason))


@backend.command("resume")
@click.argument("name")
@click.pass_obj
def backend_resume(ctx: Gateway, name: str) -> None:
    emit_json(ctx.client().resume_backend(name))


@backend.command("maintenance")
@click.argument("name")
@click.option("--start", "start", required=True, help="RFC 3339 time, with a zone.")
@click.option("--end", "end", required=True, help="RFC 3339 time, with a zone.")
@click.option("--reason", required=True)
@click.pass_obj
def backend_maintenance(ctx: Gateway, name: str, start: str, end: str, reason: str) -> None:
    """Declare a window during which nothing starts on NAME."""
    emit_json(
        ctx.client().add_maintenance(
            name, starts_at=_moment(start), ends_at=_moment(end), reason=reason
        )
    )


@backend.command("concurrency")
@click.argument("name")
@click.argument("max_running", type=int, required=False)
@click.pass_obj
def backend_concurrency(ctx: Gateway, name: str, max_running: int | None) -> None:
    """At most MAX_RUNNING of NAME's jobs at once (none: the deployment's default)."""
    emit_json(ctx.client().set_backend_concurrency(name, max_running))


@click.group()
def reservation() -> None:
    """Hold a backend for your tenant during a time window (tenant admins)."""


@reservation.command("create")
@click.argument("name")
@click.option("--start", "start", required=True)
@click.option("--end", "end", required=True)
@click.option("--reason", required=True)
@click.pass_obj
def reservation_create(ctx: Gateway, name: str, start: str, end: str, reason: str) -> None:
    made = ctx.client().reserve(name, starts_at=_moment(start), ends_at=_moment(end), reason=reason)
    click.echo(made.id)


@reservation.command("list")
@click.pass_obj
def reservation_list(ctx: Gateway) -> None:
    table(
        [
            (
                r.id,
                r.backend,
                r.starts_at.isoformat() if r.starts_at else "",
                r.ends_at.isoformat() if r.ends_at else "",
                r.reason,
            )
            for r in ctx.client().reservations()
        ],
        ["id", "backend", "starts", "ends", "reason"],
    )


@reservation.command("cancel")
@click.argument("reservation_id")
@click.pass_obj
def reservation_cancel(ctx: Gateway, reservation_id: str) -> None:
    ctx.client().cancel_reservation(reservation_id)
    click.echo(f"reservation {reservation_id} cancelled", err=True)


@click.group()
def session() -> None:
    """Sessions: a hybrid loop's jobs on one backend, with a maximum lifetime."""


@session.command("open")
@click.argument("name")
@click.option("--ttl", "ttl", type=int, default=None, help="Seconds (default: the maximum).")
@click.pass_obj
def session_open(ctx: Gateway, name: str, ttl: int | None) -> None:
    """Open a session on backend NAME; prints its id (pass it to submit --session)."""
    click.echo(ctx.client().open_session(name, max_ttl_seconds=ttl).id)


@session.command("close")
@click.argument("session_id")
@click.pass_obj
def session_close(ctx: Gateway, session_id: str) -> None:
    closed = ctx.client().close_session(session_id)
    click.echo(f"session {closed.id} {closed.state}", err=True)


@session.command("list")
@click.pass_obj
def session_list(ctx: Gateway) -> None:
    table(
        [
            (s.id, s.backend, s.state, s.expires_at.isoformat() if s.expires_at else "")
            for s in ctx.client().list_sessions()
        ],
        ["id", "backend", "state", "expires"],
    )


@click.command("queue")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def queue(ctx: Gateway, name: str, as_json: bool) -> None:
    """Backend NAME's status and your tenant's queued jobs on it, next first."""
    found = ctx.client().backend_queue(name)
    if as_json:
        emit_json(
            {
                "backend": found.backend,
                "status": found.status,
                "reserved_for_you": found.reserved_for_you,
                "jobs": [
                    {"id": j.id, "position": j.position, "priority": j.priority} for j in found.jobs
                ],
            }
        )
        return
    click.echo(
        f"{found.backend}: {found.status}"
        + (" (reserved for your tenant now)" if found.reserved_for_you else "")
    )
    table([(j.position, j.id, j.priority) for j in found.jobs], ["#", "job", "priority"])

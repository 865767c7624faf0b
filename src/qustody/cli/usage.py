"""``qustody usage``, ``qustody quota`` and ``qustody budget``: what your
tenant has used of its quotas and spending limits, and setting them::

    qustody usage [--project research] [--backend aer-statevector] [--json]
    qustody quota set queued_jobs 50 --tenant ten_...          # platform admins
    qustody quota set jobs_per_day 200 --project research      # tenant admins
    qustody budget set month 250000000 --thresholds 50,80,100  # tenant admins

Amounts are micro-units of the platform's currency (1 000 000 is one unit).
"""

from __future__ import annotations

from typing import Protocol

import click

from qustody.cli.output import emit_json, table
from qustody.client import Client


class Gateway(Protocol):
    url: str

    def client(self) -> Client: ...


@click.command("usage")
@click.option("--project", default=None, help="Narrow to one project (name or id).")
@click.option("--backend", default=None, help="Narrow to one backend.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def usage(ctx: Gateway, project: str | None, backend: str | None, as_json: bool) -> None:
    """Your tenant's quotas and spending limits: used, spent, reserved, and when they reset."""
    with ctx.client() as client:
        found = client.usage(project=project, backend=backend)
    if as_json:
        emit_json(found)
        return
    table(
        [
            (q.metric, q.scope, q.used, q.limit, f"{q.percent:g}%", q.resets_at or "-")
            for q in found.quotas
        ],
        ["quota", "scope", "used", "limit", "percent", "resets_at"],
    )
    click.echo()
    table(
        [
            (b.period, b.scope, b.spent, b.reserved, b.limit, f"{b.percent:g}%", b.resets_at)
            for b in found.budgets
        ],
        ["budget", "scope", "spent", "reserved", "limit", "percent", "resets_at"],
    )


@click.group()
def quota() -> None:
    """Quotas: set or remove one."""


@quota.command("set")
@click.argument("metric")
@click.argument("limit")
@click.option("--tenant", default=None, help="Platform admins: the tenant's id.")
@click.option("--project", default=None, help="Tenant admins: one of your projects.")
@click.option("--backend", default=None, help="Platform admins: one backend.")
@click.pass_obj
def quota_set(
    ctx: Gateway,
    metric: str,
    limit: str,
    tenant: str | None,
    project: str | None,
    backend: str | None,
) -> None:
    """Set METRIC's quota to LIMIT ('none' removes it)."""
    value = None if limit == "none" else _count(limit)
    with ctx.client() as client:
        client.set_quota(metric, value, tenant=tenant, project=project, backend=backend)
    click.echo(f"{metric}: {'removed' if value is None else value}")


@click.group()
def budget() -> None:
    """Spending limits: set or remove one."""


@budget.command("set")
@click.argument("period")
@click.argument("limit")
@click.option("--thresholds", default=None, help="Alerting percentages, e.g. 50,80,100.")
@click.option("--project", default=None)
@click.option("--backend", default=None)
@click.pass_obj
def budget_set(
    ctx: Gateway,
    period: str,
    limit: str,
    thresholds: str | None,
    project: str | None,
    backend: str | None,
) -> None:
    """Set the PERIOD (day, week, month) budget to LIMIT micro-units ('none' removes it)."""
    value = None if limit == "none" else _count(limit)
    marks = [_count(t) for t in thresholds.split(",")] if thresholds else None
    with ctx.client() as client:
        client.set_budget(period, value, thresholds=marks, project=project, backend=backend)
    click.echo(f"{period}ly budget: {'removed' if value is None else value}")


def _count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise click.BadParameter(f"{text[:20]!r} is not a whole number") from None

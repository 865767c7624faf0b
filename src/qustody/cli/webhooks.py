"""``qustody webhook``: where your tenant's alerts are delivered (tenant admins;
platform admins for the platform's alerts)::

    qustody webhook add https://alerts.example.com/qustody --kind 'budget.*'
    qustody webhook list
    qustody webhook deliveries whk_...
    qustody webhook test whk_...
    qustody webhook remove whk_...
"""

from __future__ import annotations

from typing import Protocol

import click

from qustody.cli.output import emit_json, table
from qustody.client import Client


class Gateway(Protocol):
    url: str

    def client(self) -> Client: ...


@click.group()
def webhook() -> None:
    """Signed webhook endpoints for alerts: add, list, deliveries, test, remove."""


@webhook.command("add")
@click.argument("url")
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    help="An alert kind or pattern to deliver (budget.*, breakglass.invoked); repeatable. "
    "None: every kind.",
)
@click.option("--description", default=None, help="What the endpoint is for.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def webhook_add(
    ctx: Gateway, url: str, kinds: tuple[str, ...], description: str | None, as_json: bool
) -> None:
    """Register URL; prints its signing secret once (give it to the receiver)."""
    with ctx.client() as client:
        created = client.add_webhook(url, kinds=list(kinds), description=description)
    if as_json:
        emit_json({"id": created.id, "url": created.url, "secret": created.secret})
        return
    click.echo(f"{created.id}  {created.url}")
    click.echo(f"signing secret (shown once): {created.secret}")


@webhook.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def webhook_list(ctx: Gateway, as_json: bool) -> None:
    """Your tenant's endpoints (never their secrets)."""
    with ctx.client() as client:
        rows = client.list_webhooks()
    if as_json:
        emit_json(
            [
                {"id": w.id, "url": w.url, "kinds": list(w.kinds), "platform": w.platform}
                for w in rows
            ]
        )
        return
    table(
        [(w.id, w.url, ",".join(w.kinds) or "*", w.platform) for w in rows],
        ["id", "url", "kinds", "platform"],
    )


@webhook.command("deliveries")
@click.argument("webhook_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def webhook_deliveries(ctx: Gateway, webhook_id: str, as_json: bool) -> None:
    """The endpoint's newest deliveries: pending, delivered, failed."""
    with ctx.client() as client:
        rows = client.webhook_deliveries(webhook_id)
    if as_json:
        emit_json(rows)
        return
    table(
        [(d.id, d.kind, d.state, d.attempts, d.last_status, d.last_error) for d in rows],
        ["id", "kind", "state", "attempts", "status", "error"],
    )


@webhook.command("test")
@click.argument("webhook_id")
@click.pass_obj
def webhook_test(ctx: Gateway, webhook_id: str) -> None:
    """Send a webhook.test alert to the endpoint (by the next delivery round)."""
    with ctx.client() as client:
        delivery_id = client.test_webhook(webhook_id)
    click.echo(f"test alert queued as {delivery_id}; `qustody webhook deliveries {webhook_id}`")


@webhook.command("remove")
@click.argument("webhook_id")
@click.pass_obj
def webhook_remove(ctx: Gateway, webhook_id: str) -> None:
    """Remove the endpoint, its secret and its pending deliveries."""
    with ctx.client() as client:
        client.remove_webhook(webhook_id)
    click.echo(f"removed {webhook_id}")

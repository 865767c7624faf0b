"""``qustody account``: local accounts, for embedded mode without an identity provider.

A development convenience (the gateway refuses local accounts in production
mode); with an identity provider, use ``qustody login``. Passwords are never
taken from the command line, where they would land in shell history and
``ps``: they are asked for, or read from standard input with
``--password-stdin``.

- ``qustody account sign-in --tenant T --username U`` prints a Qustody token
  (``export QUSTODY_TOKEN=$(qustody account sign-in ...)``); the TOTP code is
  asked for when the account has one.
- ``qustody account password [--principal P]`` sets your password (or, as a
  tenant admin, anyone's in your tenant).
- ``qustody account totp-enroll [--principal P]`` shows a new TOTP secret
  once and confirms it with a code from the authenticator app.
"""

from __future__ import annotations

import sys
from typing import Protocol

import click

from qustody.cli.output import emit_json
from qustody.client import Client
from qustody.client.accounts import sign_in_local
from qustody.client.errors import QustodyAPIError


class Gateway(Protocol):
    url: str

    def client(self) -> Client: ...


def _interactive() -> bool:
    return sys.stdin.isatty()


def _password(prompt: str, *, from_stdin: bool, confirm: bool) -> str:
    if from_stdin:
        value = sys.stdin.readline().rstrip("\r\n")
    elif _interactive():
        value = click.prompt(prompt, hide_input=True, confirmation_prompt=confirm, err=True)
    else:
        raise click.UsageError(
            "standard input is not a terminal: pass --password-stdin and write the password "
            "to standard input"
        )
    if not value:
        raise click.UsageError("the password is empty")
    return value


@click.group()
def account() -> None:
    """Local accounts (embedded mode without an identity provider; development only)."""


@account.command("sign-in")
@click.option("--tenant", required=True, help="Your tenant's name.")
@click.option("--username", required=True, help="Your principal name in the tenant.")
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from standard input (scripts)."
)
@click.option("--totp", "code", default=None, help="The current TOTP code (else asked for).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def sign_in(
    ctx: Gateway,
    tenant: str,
    username: str,
    password_stdin: bool,
    code: str | None,
    as_json: bool,
) -> None:
    """Sign in with a local account's password (and TOTP code); print a token."""
    password = _password("Password", from_stdin=password_stdin, confirm=False)
    try:
        signed_in = sign_in_local(
            ctx.url, tenant=tenant, username=username, password=password, totp=code
        )
    except QustodyAPIError as error:
        if error.code != "totp_required" or code is not None or not _interactive():
            raise
        code = click.prompt("TOTP code", err=True)
        signed_in = sign_in_local(
            ctx.url, tenant=tenant, username=username, password=password, totp=code
        )
    if as_json:
        emit_json(
            {
                "token": signed_in.token,
                "expires_at": signed_in.expires_at,
                "principal_id": signed_in.principal_id,
                "tenant_id": signed_in.tenant_id,
                "amr": list(signed_in.amr),
            }
        )
        return
    how = "password and TOTP" if "otp" in signed_in.amr else "password"
    click.echo(
        f"signed in as {username} ({how}); the token expires {signed_in.expires_at:%H:%M:%S} UTC:",
        err=True,
    )
    click.echo(signed_in.token)


@account.command("password")
@click.option(
    "--principal", default="me", show_default=True, help="'me', or a principal of your tenant."
)
@click.option("--password-stdin", is_flag=True, help="Read the new password from standard input.")
@click.pass_obj
def password(ctx: Gateway, principal: str, password_stdin: bool) -> None:
    """Set a local account's password (at least 15 characters)."""
    value = _password("New password", from_stdin=password_stdin, confirm=True)
    with ctx.client() as client:
        client.set_password(value, principal)
    click.echo(f"password set for {principal}", err=True)


@account.command("totp-enroll")
@click.option(
    "--principal", default="me", show_default=True, help="'me', or a principal of your tenant."
)
@click.pass_obj
def totp_enroll(ctx: Gateway, principal: str) -> None:
    """Show a new TOTP secret once, then confirm it with a code from your app."""
    with ctx.client() as client:
        enrollment = client.enroll_totp(principal)
        click.echo("Add this to your authenticator app (shown once):", err=True)
        click.echo(enrollment.otpauth_uri)
        click.echo(f"secret (to type in by hand): {enrollment.secret}", err=True)
        if not _interactive():
            click.echo("then confirm with `qustody account totp-confirm --code <code>`", err=True)
            return
        code = click.prompt("Code from the app, to confirm", err=True)
        client.confirm_totp(code, principal)
    click.echo("TOTP enrolled: sign-in now asks for a code", err=True)


@account.command("totp-confirm")
@click.option("--code", required=True, help="The current code from the authenticator app.")
@click.option(
    "--principal", default="me", show_default=True, help="'me', or a principal of your tenant."
)
@click.pass_obj
def totp_confirm(ctx: Gateway, code: str, principal: str) -> None:
    """Put an enrolled TOTP secret in force."""
    with ctx.client() as client:
        client.confirm_totp(code, principal)
    click.echo("TOTP enrolled: sign-in now asks for a code", err=True)

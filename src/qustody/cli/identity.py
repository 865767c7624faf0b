"""Credentials from the command line: workload trust rules, API keys, token
exchange and revocation, DPoP keys.

::

    qustody trust-rules add gha-deploy --issuer https://token.actions.githubusercontent.com \\
        --audience https://qustody.example/acme --principal ci-deploy \\
        --claim repository=acme/app --claim-glob ref='refs/heads/release/*' --scope job
    qustody trust-rules list | delete NAME
    qustody token exchange --audience acme < "$CI_OIDC_TOKEN_FILE"   # prints a Qustody token
    qustody api-keys create ci-legacy --name build --expires-in-days 30 --scope job
    qustody api-keys list | revoke ID
    qustody token revoke --all-of NAME | --before 2030-01-01T00:00:00Z
    qustody admin revoke --before now [--tenant acme]   # operator, on the gateway host
    qustody dpop keygen dpop-key.pem                     # then --dpop-key dpop-key.pem

Secrets never come from the command line (shell history, ``ps``): a subject
token is read from a file or standard input, and an API key is printed once,
alone on standard output.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast

import click

from qustody.cli.output import emit_json, table
from qustody.client import Client
from qustody.client.dpop import Algorithm, DpopKey
from qustody.client.identity import exchange_token


class Gateway(Protocol):
    url: str

    def client(self) -> Client: ...


def parse_time(value: str, what: str) -> datetime:
    """``now`` or an ISO 8601 time with a time zone."""
    if value.strip().lower() == "now":
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 time; e.g. 2030-01-01T12:00:00Z, or now", param_hint=what
        ) from None
    if parsed.tzinfo is None:
        raise click.BadParameter(
            f"{value!r} has no time zone; add one (Z for UTC)", param_hint=what
        )
    return parsed


def _pairs(values: tuple[str, ...], option: str) -> dict[str, list[str]]:
    claims: dict[str, list[str]] = {}
    for item in values:
        claim, sep, value = item.partition("=")
        if not sep or not claim or not value:
            raise click.BadParameter(f"{item!r} is not CLAIM=VALUE", param_hint=option)
        claims.setdefault(claim, []).append(value)
    return claims


def conditions_of(exact: tuple[str, ...], globs: tuple[str, ...]) -> dict[str, Any]:
    """``--claim`` and ``--claim-glob`` as a rule's conditions; a claim given
    twice allows either value."""
    conditions: dict[str, Any] = {}
    for claim, values in _pairs(exact, "--claim").items():
        conditions[claim] = values[0] if len(values) == 1 else values
    for claim, patterns in _pairs(globs, "--claim-glob").items():
        if claim in conditions:
            raise click.BadParameter(
                f"claim {claim!r} has both exact values and globs; use one kind",
                param_hint="--claim-glob",
            )
        conditions[claim] = {"glob": patterns[0] if len(patterns) == 1 else patterns}
    if not conditions:
        raise click.UsageError(
            "a trust rule needs at least one --claim or --claim-glob condition (e.g. "
            "--claim repository=acme/app); without one it would accept every token of its issuer"
        )
    return conditions


# -- trust rules -------------------------------------------------------------------------


@click.group("trust-rules")
def trust_rules() -> None:
    """Workload identity: which external tokens become tokens of which workload."""


@trust_rules.command("add")
@click.argument("name")
@click.option("--issuer", required=True, help="The issuer URL (https).")
@click.option("--audience", required=True, help="The 'aud' the workload's token carries.")
@click.option("--principal", required=True, help="A workload principal of your tenant.")
@click.option("--claim", "claims", multiple=True, help="CLAIM=VALUE, exact (repeat).")
@click.option(
    "--claim-glob", "globs", multiple=True, help="CLAIM=PATTERN ('*' within a path segment)."
)
@click.option("--scope", "scopes", multiple=True, help="Repeat: job, result, ... (default all).")
@click.option("--ttl", type=int, default=None, help="Token lifetime in seconds (at most 900).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def trust_rules_add(
    ctx: Gateway,
    name: str,
    issuer: str,
    audience: str,
    principal: str,
    claims: tuple[str, ...],
    globs: tuple[str, ...],
    scopes: tuple[str, ...],
    ttl: int | None,
    as_json: bool,
) -> None:
    """Add a trust rule: tokens of ISSUER for AUDIENCE whose claims match."""
    conditions = conditions_of(claims, globs)
    with ctx.client() as client:
        rule = client.add_trust_rule(
            name,
            issuer=issuer,
            audience=audience,
            conditions=conditions,
            principal=principal,
            scopes=list(scopes) or None,
            ttl_seconds=ttl,
        )
    if as_json:
        emit_json(rule)
    else:
        click.echo(f"trust rule {rule['name']} ({rule['id']}) added for {rule['principal']}")


@trust_rules.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def trust_rules_list(ctx: Gateway, as_json: bool) -> None:
    with ctx.client() as client:
        rules = client.trust_rules()
    if as_json:
        emit_json(rules)
        return
    table(
        [
            (
                r["name"],
                r["issuer"],
                r["audience"],
                r["principal"],
                " ".join(r["scopes"]),
                r["ttl_seconds"],
                " ".join(f"{k}={v}" for k, v in sorted(r["conditions"].items())),
            )
            for r in rules
        ],
        ["name", "issuer", "audience", "principal", "scopes", "ttl", "conditions"],
    )


@trust_rules.command("delete")
@click.argument("rule")
@click.pass_obj
def trust_rules_delete(ctx: Gateway, rule: str) -> None:
    """Delete a trust rule (by name or id)."""
    with ctx.client() as client:
        client.delete_trust_rule(rule)
    click.echo(f"trust rule {rule} deleted", err=True)


# -- API keys ----------------------------------------------------------------------------


@click.group("api-keys")
def api_keys() -> None:
    """API keys, only where federation is impossible (they expire within 90 days)."""


@api_keys.command("create")
@click.argument("principal")
@click.option("--name", required=True, help="A label for people.")
@click.option("--expires-in-days", type=int, required=True, help="1 to 90.")
@click.option("--scope", "scopes", multiple=True, help="Repeat: job, result, ... (default all).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def api_keys_create(
    ctx: Gateway,
    principal: str,
    name: str,
    expires_in_days: int,
    scopes: tuple[str, ...],
    as_json: bool,
) -> None:
    """Create an API key for PRINCIPAL; the key is printed once, on standard output."""
    with ctx.client() as client:
        created = client.create_api_key(
            principal, name, expires_in_days=expires_in_days, scopes=list(scopes) or None
        )
    if as_json:
        emit_json(created)
        return
    click.echo(
        f"API key {created['id']} for {created['principal']} (expires {created['expires_at']}); "
        "shown once:",
        err=True,
    )
    click.echo(created["key"])


@api_keys.command("list")
@click.option("--principal", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def api_keys_list(ctx: Gateway, principal: str | None, as_json: bool) -> None:
    with ctx.client() as client:
        keys = client.api_keys(principal)
    if as_json:
        emit_json(keys)
        return
    table(
        [
            (
                k["id"],
                k["name"],
                k["principal"],
                " ".join(k["scopes"]),
                k["expires_at"],
                k["last_used_at"] or "-",
                "revoked" if k["revoked_at"] else "active",
            )
            for k in keys
        ],
        ["id", "name", "principal", "scopes", "expires", "last used", "state"],
    )


@api_keys.command("revoke")
@click.argument("key_id")
@click.pass_obj
def api_keys_revoke(ctx: Gateway, key_id: str) -> None:
    with ctx.client() as client:
        client.revoke_api_key(key_id)
    click.echo(f"API key {key_id} revoked", err=True)


# -- token exchange and revocation (subcommands of `qustody token`) -----------------------


@click.command("exchange")
@click.option(
    "--subject-token-file",
    type=click.File("r"),
    default="-",
    show_default=True,
    help="Where the workload's token is read from ('-': standard input).",
)
@click.option("--audience", default=None, help="The tenant (or TENANT/RULE) to exchange into.")
@click.option("--scope", default=None, help="Space-separated scopes, within the rule's.")
@click.option("--id-token", is_flag=True, help="The subject token is a person's ID token.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def token_exchange(
    ctx: Gateway,
    subject_token_file: Any,
    audience: str | None,
    scope: str | None,
    id_token: bool,
    as_json: bool,
) -> None:
    """Exchange a workload's token (a CI job's OIDC token) for a Qustody token (RFC 8693).

    Needs no Qustody credential: the workload's token is the credential. With
    --dpop-key the token is bound to that key.
    """
    from qustody.client.identity import ID_TOKEN_TYPE, JWT_TOKEN_TYPE

    subject = subject_token_file.read().strip()
    if not subject:
        raise click.UsageError("no subject token: pipe it in, or use --subject-token-file")
    issued = exchange_token(
        ctx.url,
        subject,
        audience=audience,
        scope=scope,
        subject_token_type=ID_TOKEN_TYPE if id_token else JWT_TOKEN_TYPE,
        dpop_key=dpop_key_of(ctx),
    )
    if as_json:
        emit_json(
            {
                "access_token": issued.access_token,
                "token_type": issued.token_type,
                "expires_in": issued.expires_in,
                "scope": issued.scope,
            }
        )
    else:
        click.echo(issued.access_token)


def revoke_many(ctx: Gateway, all_of: str | None, before: str | None) -> None:
    """``qustody token revoke --all-of NAME | --before TIME``."""
    with ctx.client() as client:
        if all_of is not None:
            done = client.revoke_tokens(principal=all_of)
        else:
            assert before is not None
            done = client.revoke_tokens(issued_before=parse_time(before, "--before"))
    whose = f"of {all_of}" if all_of else "of your tenant"
    click.echo(
        f"revoked {done['tokens']} live token(s) and {done['api_keys']} API key(s) {whose} "
        f"issued before {done['not_before']}; refused from the next request on",
        err=True,
    )


def dpop_key_of(ctx: object) -> DpopKey | None:
    path = getattr(ctx, "dpop_key", None)
    return load_dpop_key(path) if path is not None else None


def load_dpop_key(path: Path) -> DpopKey:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise click.ClickException(
            f"{path} is readable by others (mode {mode:o}); chmod 600 it: it holds a private key"
        )
    try:
        return DpopKey.load(path)
    except (ValueError, TypeError) as error:
        raise click.ClickException(f"{path} is not a usable DPoP key: {error}") from None


# -- DPoP keys ---------------------------------------------------------------------------


@click.group("dpop")
def dpop() -> None:
    """Keys for sender-constrained (DPoP) tokens."""


@dpop.command("keygen")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--algorithm",
    type=click.Choice(["ES256", "Ed25519", "PS256"]),
    default="ES256",
    show_default=True,
)
def dpop_keygen(path: Path, algorithm: str) -> None:
    """Make a DPoP key pair in PATH (a new file, owner-only); print its thumbprint."""
    key = DpopKey.generate(cast(Algorithm, algorithm))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise click.ClickException(f"{path} already exists; choose a new file") from None
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_pem())
    click.echo(f"DPoP key written to {path}; use it with --dpop-key {path}", err=True)
    click.echo(key.thumbprint)


# -- the operator's lever ---------------------------------------------------------------------


@click.command("revoke")
@click.option("--before", required=True, help="ISO 8601 time with a zone, or 'now'.")
@click.option("--tenant", default=None, help="One tenant's name (default: every tenant).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
def admin_revoke(before: str, tenant: str | None, data_dir: Path | None) -> None:
    """Revoke every token and API key issued before a time, platform-wide or in one
    tenant (operator, on the gateway host; audited as cli:operator)."""
    from qustody.api.app import build_runtime
    from qustody.settings import load_settings

    cut = parse_time(before, "--before")
    settings = load_settings() if data_dir is None else load_settings(data_dir=data_dir)
    runtime = build_runtime(settings)
    try:
        done = runtime.services.revocation.revoke_everywhere(cut, tenant_name=tenant)
    finally:
        runtime.close()
    for revoked in done:
        click.echo(
            f"tenant {revoked.tenant_id}: {revoked.tokens} token(s) and {revoked.api_keys} "
            f"API key(s) revoked; cut-off {revoked.not_before.isoformat()}",
            err=True,
        )

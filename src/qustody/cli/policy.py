"""``qustody policy``: your tenant's own Cedar policies.

``test`` works offline, for a tenant's CI: it decides a table of cases with
the shipped platform policies plus the tenant's policy files and exits
non-zero when any decision differs from the expected one. ``get``, ``set``,
``history`` and ``diff`` talk to a gateway (tenant admins)::

    qustody policy test cases.toml --policies tenant.cedar
    qustody policy get [--version N] [--out FILE]
    qustody policy set tenant.cedar --comment "no prod QPUs for interns"
    qustody policy history
    qustody policy diff 3 4
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import click

from qustody.cli.output import emit_json, table
from qustody.client import Client

if TYPE_CHECKING:
    from qustody.policy.cases import Outcome


class Gateway(Protocol):
    url: str

    def client(self) -> Client: ...


@click.group()
def policy() -> None:
    """Your tenant's Cedar policies: test offline, read, set, history, diff."""


@policy.command("test")
@click.argument("cases", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--policies",
    "-p",
    "policy_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A tenant policy file (Cedar); repeatable. Added to those the cases file names.",
)
@click.option(
    "--step-up/--no-step-up",
    default=True,
    show_default=True,
    help="Include the platform's MFA step-up policies (production always does).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcomes as JSON.")
def policy_test(cases: Path, policy_files: tuple[Path, ...], step_up: bool, as_json: bool) -> None:
    """Decide every case in CASES (TOML or JSON) and compare with its expectation.

    Loads the platform policies shipped with this Qustody and the tenant policy
    files; exits 1 when any case's decision (or deciding policy) differs.
    """
    # Loaded here: the engine (and cedarpy) cost other commands nothing.
    from qustody.policy.cases import read_cases, run_cases
    from qustody.policy.engine import CedarPolicyEngine

    loaded = read_cases(cases)
    files = (*loaded.policy_files, *policy_files)
    for path in files:
        if not path.is_file():
            raise click.UsageError(f"policy file {path} (named in {cases}) does not exist")
    engine = CedarPolicyEngine(
        step_up=step_up,
        tenant_policies={loaded.tenant: {str(p): p.read_text(encoding="utf-8") for p in files}},
    )
    outcomes = run_cases(engine, loaded.cases, loaded.tenant)
    failed = [o for o in outcomes if not o.ok]
    if as_json:
        emit_json([_json(o) for o in outcomes])
    else:
        table(
            [
                (
                    o.case.number,
                    o.case.name[:60],
                    o.case.action.value,
                    _expected(o),
                    o.got,
                    ", ".join(o.decision.policy_ids) or "(no policy permits)",
                    "ok" if o.ok else "MISMATCH",
                )
                for o in outcomes
            ],
            ["#", "case", "action", "expected", "got", "deciding policies", "result"],
        )
        click.echo(
            f"{len(outcomes) - len(failed)} of {len(outcomes)} cases as expected"
            + (f"; {len(failed)} mismatched" if failed else "")
            + f" ({len(files)} tenant policy file{'s' if len(files) != 1 else ''})"
        )
        for outcome in failed:
            for error in outcome.errors:
                click.echo(f"  case {outcome.case.number}: {error}", err=True)
    if failed:
        raise SystemExit(1)


def _expected(outcome: Outcome) -> str:
    wanted = outcome.case.policies
    if wanted is None:
        return outcome.case.expect
    return f"{outcome.case.expect} by {', '.join(sorted(wanted)) or '(no policy)'}"


def _json(outcome: Outcome) -> dict[str, object]:
    return {
        "case": outcome.case.number,
        "name": outcome.case.name,
        "action": outcome.case.action.value,
        "expect": outcome.case.expect,
        "expect_policies": None if outcome.case.policies is None else sorted(outcome.case.policies),
        "got": outcome.got,
        "policy_ids": list(outcome.decision.policy_ids),
        "errors": list(outcome.errors),
        "ok": outcome.ok,
    }


@policy.command("get")
@click.option("--version", "version", type=int, default=None, help="An older version.")
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Write the text to this file."
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def policy_get(ctx: Gateway, version: int | None, out: Path | None, as_json: bool) -> None:
    """Print your tenant's policies in force (or one version)."""
    with ctx.client() as client:
        found = client.policy() if version is None else client.policy_version(version)
    if as_json:
        emit_json(found)
        return
    text = found.text or ""
    if out is not None:
        if out.exists():
            raise click.ClickException(f"{out} already exists; choose a new file")
        out.write_text(text, encoding="utf-8")
        click.echo(f"version {found.version} written to {out}", err=True)
        return
    click.echo(f"// version {found.version}" + (f": {found.comment}" if found.comment else ""))
    click.echo(text, nl=not text.endswith("\n"))


@policy.command("set")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--comment", "-m", default=None, help="Why; kept with the version.")
@click.option(
    "--base-version",
    type=int,
    default=None,
    help="The version you edited: refused if someone changed the policies since.",
)
@click.pass_obj
def policy_set(ctx: Gateway, file: Path, comment: str | None, base_version: int | None) -> None:
    """Store FILE (Cedar forbids) as your tenant's next policy version."""
    text = file.read_text(encoding="utf-8")
    with ctx.client() as client:
        stored = client.set_policy(text, comment=comment, base_version=base_version)
    click.echo(f"policies version {stored.version} in force (sha256 {stored.sha256[:16]}…)")


@policy.command("history")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def policy_history(ctx: Gateway, as_json: bool) -> None:
    """Every version of your tenant's policies, newest first."""
    with ctx.client() as client:
        versions = client.policy_versions()
    if as_json:
        emit_json(versions)
        return
    table(
        [(v.version, v.created_at, v.created_by, v.sha256[:16], v.comment) for v in versions],
        ["version", "created", "by", "sha256", "comment"],
    )


@policy.command("diff")
@click.argument("from_version", type=int, required=False)
@click.argument("to_version", type=int, required=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def policy_diff(
    ctx: Gateway, from_version: int | None, to_version: int | None, as_json: bool
) -> None:
    """A unified diff between versions A and B (default: the newest and the one before)."""
    with ctx.client() as client:
        diff = client.policy_diff(from_version, to_version)
    if as_json:
        emit_json(diff)
        return
    click.echo(diff.diff or f"(versions {diff.from_version} and {diff.to_version} are the same)")

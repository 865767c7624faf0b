"""``qustody audit``: export, verify and witness the tamper-evident audit log.

``verify``, ``keygen`` and ``compare`` work offline with nothing but files and
keys; ``export``, ``events``, ``checkpoint`` and ``witness`` talk to a gateway.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Protocol

import click

from qustody.audit.note import COSIGNATURE_V1, ED25519, NoteError, Signer, Verifier
from qustody.audit.verify import verify_export
from qustody.audit.witness import HttpLogClient, Witness, WitnessError, compare
from qustody.cli.output import emit_json
from qustody.client import Client
from qustody.domain.errors import ConfigurationError


class Gateway(Protocol):
    """What the top-level ``qustody`` group hands its commands (``--url``, ``--token``)."""

    url: str

    def client(self) -> Client: ...


@click.group()
def audit() -> None:
    """The tamper-evident audit log: export, verify offline, witness."""


def _verifier(value: str) -> Verifier:
    """A verifier key given inline (``name+id+base64``) or as a file holding one."""
    text = Path(value).read_text().strip() if Path(value).is_file() else value.strip()
    try:
        return Verifier.parse(text)
    except NoteError as error:
        raise click.BadParameter(f"not a verifier key: {error}") from None


@audit.command()
@click.option("--origin", required=True, help="The log's origin, or the witness's name.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Signer key file.")
@click.option("--witness", is_flag=True, help="A witness's cosigning key (cosignature/v1).")
def keygen(origin: str, out: Path, witness: bool) -> None:
    """Make a signing key (0600) and print its verifier key, to publish."""
    signer = Signer.generate(origin, COSIGNATURE_V1 if witness else ED25519)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with out.open("x") as handle:
            out.chmod(0o600)
            handle.write(signer.encode() + "\n")
    except FileExistsError:
        raise click.UsageError(f"{out} exists; a key is never overwritten") from None
    click.echo(signer.verifier.encode())


@audit.command()
@click.argument("export_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key", "log_key", required=True, help="The log's verifier key, or a file of it.")
@click.option(
    "--checkpoint",
    "held",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A checkpoint kept elsewhere (a witness's, an earlier export's); repeatable.",
)
@click.option(
    "--witness-key", multiple=True, help="Require held checkpoints cosigned by one of these."
)
@click.option("--json", "as_json", is_flag=True)
def verify(
    export_file: Path,
    log_key: str,
    held: tuple[Path, ...],
    witness_key: tuple[str, ...],
    as_json: bool,
) -> None:
    """Check an export offline: every leaf, the tree, each signature, the
    checkpoints' consistency and the sequence; name the first bad entry."""
    with export_file.open(encoding="utf-8") as lines:
        report = verify_export(
            lines,
            _verifier(log_key),
            held=[p.read_text() for p in held],
            witness_keys=[_verifier(k) for k in witness_key],
        )
    if as_json:
        emit_json(
            {
                "ok": report.ok,
                "scope": report.scope,
                "events": report.events,
                "checkpoints": report.checkpoints,
                "verified_size": report.verified_size,
                "problems": [
                    {"kind": p.kind, "line": p.line, "seq": p.seq, "message": p.message}
                    for p in report.problems
                ],
            }
        )
    elif report.ok:
        click.echo(
            f"OK: {report.events} events ({report.scope} export), {report.checkpoints} "
            f"checkpoints, verified up to size {report.verified_size}"
        )
    else:
        click.echo(f"FAILED: first bad entry: {report.first}", err=True)
        for problem in report.problems[1:]:
            click.echo(f"  also: {problem}", err=True)
    if not report.ok:
        sys.exit(1)


@audit.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option(
    "--scope",
    type=click.Choice(["tenant", "platform"]),
    default="tenant",
    show_default=True,
    help="Your tenant's events with proofs, or the whole log (platform admins).",
)
@click.option(
    "--format",
    "form",
    type=click.Choice(["qustody", "ocsf"]),
    default="qustody",
    show_default=True,
    help="For `qustody audit verify`, or OCSF events for a SIEM.",
)
@click.option("--sealed", is_flag=True, help="Sealed to your tenant's export key.")
@click.pass_obj
def export(ctx: Gateway, out: Path | None, scope: str, form: str, sealed: bool) -> None:
    """Download an export (JSON Lines); without --out, stream it to stdout."""
    with ctx.client() as client:
        if out is None:
            client.audit_export(sys.stdout.buffer, scope=scope, form=form, sealed=sealed)
            return
        with out.open("wb") as handle:
            written = client.audit_export(handle, scope=scope, form=form, sealed=sealed)
    click.echo(f"{written} bytes written to {out}", err=True)


@audit.command()
@click.option("--actor")
@click.option("--action")
@click.option("--job")
@click.option("--resource-type")
@click.option("--resource-id")
@click.option("--since", help="ISO 8601 time.")
@click.option("--until", help="ISO 8601 time.")
@click.option("--decision", type=click.Choice(["allow", "deny"]))
@click.option("--after", type=int, default=0)
@click.option("--limit", type=int, default=100, show_default=True)
@click.pass_obj
def events(ctx: Gateway, /, **filters: Any) -> None:
    """Search your tenant's audit events (JSON, each with its inclusion proof)."""
    given = {k: v for k, v in filters.items() if v is not None}
    with ctx.client() as client:
        emit_json(client.audit_events(**given))


@audit.command()
@click.option("--issue", is_flag=True, help="Have the gateway sign one now (platform admins).")
@click.pass_obj
def checkpoint(ctx: Gateway, issue: bool) -> None:
    """Print the latest signed checkpoint."""
    with ctx.client() as client:
        click.echo(
            client.issue_audit_checkpoint() if issue else client.audit_checkpoint(), nl=False
        )


@audit.command()
@click.option("--log-key", required=True, help="The log's verifier key, or a file of it.")
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="This witness's signer key file (from `audit keygen --witness`).",
)
@click.option("--state", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--interval", type=float, default=10.0, show_default=True)
@click.option("--once", is_flag=True, help="Check the latest checkpoint once and exit.")
@click.pass_obj
def witness(
    ctx: Gateway, log_key: str, key_file: Path, state: Path, interval: float, once: bool
) -> None:
    """Follow a log: check each new checkpoint's consistency with the last one
    seen, cosign it, and refuse (exit 2) a log that rewrote or forked history."""
    verifier = _verifier(log_key)
    try:
        signer = Signer.parse(key_file.read_text().strip())
    except NoteError as error:
        raise ConfigurationError(f"{key_file} is not a signer key: {error}") from None
    follower = Witness(state, signer, verifier, verifier.name)
    with HttpLogClient(ctx.url) as client:
        while True:
            try:
                cosigned = follower.run_once(client)
            except WitnessError as error:
                click.echo(f"REFUSED: {error.detail} [{error.code}]", err=True)
                sys.exit(2)
            click.echo(cosigned, nl=False)
            if once:
                return
            time.sleep(interval)


@audit.command("compare")
@click.argument(
    "notes", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--log-key", required=True, help="The log's verifier key, or a file of it.")
@click.option("--witness-key", multiple=True, required=True, help="Witness verifier keys.")
@click.option("--fetch-proofs", is_flag=True, help="Ask the gateway for consistency proofs.")
@click.pass_obj
def compare_command(
    ctx: Gateway,
    notes: tuple[Path, ...],
    log_key: str,
    witness_key: tuple[str, ...],
    fetch_proofs: bool,
) -> None:
    """Compare cosigned checkpoints from several witnesses: a log that showed
    them different histories (a split view) is reported, exit 2."""
    texts = [p.read_text() for p in notes]
    verifiers = [_verifier(k) for k in witness_key]
    if fetch_proofs:
        with HttpLogClient(ctx.url) as client:
            conflicts = compare(texts, _verifier(log_key), verifiers, client.consistency)
    else:
        conflicts = compare(texts, _verifier(log_key), verifiers)
    for conflict in conflicts:
        click.echo(f"SPLIT VIEW: {conflict}", err=True)
    if conflicts:
        sys.exit(2)
    click.echo(f"consistent: {len(texts)} checkpoints")


@audit.command()
@click.option("--host", required=True, help="The SIEM's syslog receiver.")
@click.option("--port", type=int, default=6514, show_default=True)
@click.option("--tls/--no-tls", default=True, show_default=True, help="RFC 5425 TLS, verified.")
@click.option(
    "--ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="CA bundle that signed the SIEM's certificate (default: the system's).",
)
@click.option("--tenant", "tenant_id", default=None, help="Only this tenant's events (its id).")
@click.option("--after", type=int, default=0, show_default=True, help="Send events after this seq.")
@click.option("--follow", is_flag=True, help="Keep sending new events as they are recorded.")
@click.option("--interval", type=float, default=2.0, show_default=True)
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
def siem(
    host: str,
    port: int,
    tls: bool,
    ca: Path | None,
    tenant_id: str | None,
    after: int,
    follow: bool,
    interval: float,
    data_dir: Path | None,
) -> None:
    """Send audit events from this gateway's database to a SIEM: RFC 5424
    syslog carrying OCSF, over TLS (or TCP). Prints the last seq sent, to
    resume from with --after."""
    import ssl

    from qustody import __version__
    from qustody.audit.export import events_with_leaves
    from qustody.audit.siem import SyslogSender
    from qustody.settings import load_settings
    from qustody.storage.db import Database

    settings = load_settings(None, **({"data_dir": data_dir} if data_dir else {}))
    context: bool | ssl.SSLContext = False
    if tls:
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
    db = Database(settings.resolved_database_url)
    try:
        with SyslogSender(
            host, port, tls=context, tenant_id=tenant_id, product_version=__version__
        ) as sender:
            while True:
                rows = list(events_with_leaves(db, tenant_id=tenant_id, upto=2**62, after=after))
                if rows:
                    sender.send(row._mapping for row in rows)
                    after = rows[-1].seq
                    click.echo(after)
                if not follow:
                    return
                time.sleep(interval)
    finally:
        db.dispose()

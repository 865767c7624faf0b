"""``qustody secrets``, ``qustody export-key`` and ``qustody unseal``.

Secrets are write-only: ``set`` reads the value from a file or standard
input (never from the command line, where it would land in shell history
and ``ps``), and nothing reads it back. An export key pair is made locally;
only its public half goes to the gateway; ``unseal`` opens sealed exports
offline with the private half.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Protocol

import click

from qustody.cli.output import emit_json, table
from qustody.client import Client
from qustody.crypto.sealed import (
    XWingPrivateKey,
    open_sealed,
    read_private_key,
    read_sealed_header,
    write_private_key,
)


class Gateway(Protocol):
    url: str

    def client(self) -> Client: ...


def refuse_existing(path: Path | None) -> None:
    """Output files are new files: an existing one is refused, never overwritten."""
    if path is not None and path.exists():
        raise click.ClickException(f"{path} already exists; choose a new file")


@click.group()
def secrets() -> None:
    """Your tenant's write-only secrets (provider credentials)."""


@secrets.command("set")
@click.argument("name")
@click.option(
    "--from-file",
    "source",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Read the value from this file (default: standard input).",
)
@click.pass_obj
def secrets_set(ctx: Gateway, name: str, source: Path | None) -> None:
    """Store or replace a secret; its value is read from a file or stdin."""
    raw = source.read_bytes() if source is not None else sys.stdin.buffer.read()
    try:
        value = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise click.ClickException(
            "the secret value is not UTF-8 text; encode a binary credential (base64) first"
        ) from None
    with ctx.client() as client:
        info = client.set_secret(name, value)
    click.echo(
        f"secret {info['name']} stored (updated {info['updated_at']}); it cannot be read back"
    )


@secrets.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def secrets_list(ctx: Gateway, as_json: bool) -> None:
    with ctx.client() as client:
        items = client.secrets()
    if as_json:
        emit_json(items)
        return
    table(
        [(i["name"], i["updated_at"], i["updated_by"]) for i in items],
        ["name", "updated at", "updated by"],
    )


@secrets.command("delete")
@click.argument("name")
@click.pass_obj
def secrets_delete(ctx: Gateway, name: str) -> None:
    with ctx.client() as client:
        client.delete_secret(name)
    click.echo(f"secret {name} deleted")


@click.group("export-key")
def export_key() -> None:
    """Your tenant's key pair for sealed exports (HPKE, X-Wing)."""


@export_key.command("generate")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Private key file.")
def export_key_generate(out: Path) -> None:
    """Make a key pair: the private key goes to --out (0600), the public key to stdout."""
    key = XWingPrivateKey.generate()
    write_private_key(out, key)
    click.echo(f"private key written to {out}; keep it offline and backed up", err=True)
    click.echo(key.public_key.to_text())


@export_key.command("set")
@click.argument("public_key")
@click.pass_obj
def export_key_set(ctx: Gateway, public_key: str) -> None:
    """Register PUBLIC_KEY (the text, or a file holding it) for your tenant."""
    text = public_key
    if not public_key.startswith("qustody-xwing-pub:"):
        path = Path(public_key)
        if not path.is_file():
            raise click.BadParameter(
                "give the public key text (qustody-xwing-pub:...) or a file holding it",
                param_hint="PUBLIC_KEY",
            )
        text = path.read_text("utf-8", errors="replace")
    with ctx.client() as client:
        info = client.set_export_key(text.strip())
    click.echo(f"export key {info['fingerprint']} registered")


@export_key.command("show")
@click.pass_obj
def export_key_show(ctx: Gateway) -> None:
    with ctx.client() as client:
        info = client.export_key()
    click.echo(f"fingerprint {info['fingerprint']}")
    click.echo(info["public_key"])


@click.command()
@click.argument("sealed_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--key",
    "key_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Your export private key file.",
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="A new file (default: stdout)."
)
def unseal(sealed_file: Path, key_file: Path, out: Path | None) -> None:
    """Open a sealed export (offline) with your export private key."""
    refuse_existing(out)
    data = sealed_file.read_bytes()
    header = read_sealed_header(data)
    _, plaintext = open_sealed(data, read_private_key(key_file))
    click.echo(
        f"{header.content_type}, sealed {header.created_at} for key {header.recipient}", err=True
    )
    if out is None:
        sys.stdout.buffer.write(plaintext)
    else:
        with out.open("xb") as handle:
            handle.write(plaintext)

"""``qustody keys``: operator commands for tenants' key rings, on the gateway host.

They act on the local database and key providers (like ``qustody admin``)
and are recorded in the audit log as the operator (``cli:operator``)::

    qustody keys status  --tenant acme
    qustody keys rotate  --tenant acme [--project p] [--wait]
    qustody keys rewrap                        # run the background rewrap now
    qustody keys disable --tenant acme --reason "incident 42"
    qustody keys enable  --tenant acme --reason "incident 42 closed"
    qustody keys destroy --tenant acme [--project p] --reason "contract ended" --yes
    qustody keys certificates --tenant acme
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select

from qustody.audit.recorder import Actor
from qustody.cli.output import emit_json, table
from qustody.keys.service import KeyService, RewrapProgress
from qustody.storage import models as m

OPERATOR = Actor.system("cli:operator")


@click.group()
def keys() -> None:
    """Tenants' encryption keys: status, rotation, disabling, crypto-shredding."""


@contextlib.contextmanager
def _runtime(data_dir: Path | None) -> Iterator[Any]:
    from qustody.api.app import build_runtime
    from qustody.settings import load_settings

    settings = load_settings() if data_dir is None else load_settings(data_dir=data_dir)
    runtime = build_runtime(settings)
    try:
        yield runtime
    finally:
        runtime.close()


def _ids(runtime: Any, tenant: str, project: str | None) -> tuple[str, str | None]:
    """Tenant and project ids from their names (or ids)."""
    with runtime.services.db.reading() as connection:
        tenant_id = connection.execute(
            select(m.Tenant.id).where((m.Tenant.name == tenant) | (m.Tenant.id == tenant))
        ).scalar()
        if tenant_id is None:
            raise click.ClickException(f"no tenant named {tenant!r}")
        if project is None:
            return tenant_id, None
        project_id = connection.execute(
            select(m.Project.id).where(
                m.Project.tenant_id == tenant_id,
                (m.Project.name == project) | (m.Project.id == project),
            )
        ).scalar()
        if project_id is None:
            raise click.ClickException(f"tenant {tenant!r} has no project named {project!r}")
        return tenant_id, project_id


_tenant_option = click.option("--tenant", required=True, help="Tenant name or id.")
_project_option = click.option("--project", default=None, help="Only this project's rings.")
_data_dir_option = click.option("--data-dir", type=click.Path(path_type=Path), default=None)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@keys.command()
@_tenant_option
@_project_option
@_data_dir_option
@_json_option
def status(tenant: str, project: str | None, data_dir: Path | None, as_json: bool) -> None:
    """Each key ring, its versions and how many stored values each protects."""
    with _runtime(data_dir) as runtime:
        tenant_id, project_id = _ids(runtime, tenant, project)
        rings = runtime.keys.rings(tenant_id, project_id)
    if as_json:
        emit_json(rings)
        return
    rows = [
        (ring.ring, ring.provider, ring.state, f"v{v.version}", v.state, v.objects)
        for ring in rings
        for v in ring.versions
    ]
    table(rows, ["ring", "provider", "ring state", "version", "state", "objects"])
    pending = sum(ring.pending for ring in rings)
    if pending:
        click.echo(f"{pending} stored values wait to be rewrapped to current versions.")


@keys.command()
@_tenant_option
@_project_option
@click.option(
    "--wait", is_flag=True, help="Rewrap here, showing progress, instead of leaving it to workers."
)
@_data_dir_option
def rotate(tenant: str, project: str | None, wait: bool, data_dir: Path | None) -> None:
    """Start new key versions; existing data keys are rewrapped in the background."""
    with _runtime(data_dir) as runtime:
        tenant_id, project_id = _ids(runtime, tenant, project)
        for key in runtime.keys.rotate(OPERATOR, tenant_id, project_id):
            click.echo(f"new current key {key}")
        if wait:
            _rewrap(runtime.keys)


@keys.command()
@_data_dir_option
def rewrap(data_dir: Path | None) -> None:
    """Move every data key of retiring versions now (resumes an interrupted run)."""
    with _runtime(data_dir) as runtime:
        _rewrap(runtime.keys)


def _rewrap(service: KeyService) -> None:
    def show(progress: RewrapProgress) -> None:
        click.echo(f"rewrapped {progress.moved}, {progress.remaining} left", err=True)

    total = service.rewrap_all(on_progress=show)
    for key in total.retired:
        click.echo(f"retired {key}")
    click.echo(f"done: {total.moved} data keys rewrapped, {len(total.retired)} versions retired")


_reason_option = click.option("--reason", required=True, help="Why; recorded in the audit log.")


def _set_enabled(tenant: str, reason: str, data_dir: Path | None, enabled: bool) -> int:
    with _runtime(data_dir) as runtime:
        tenant_id, _ = _ids(runtime, tenant, None)
        changed: int = runtime.keys.set_enabled(OPERATOR, tenant_id, enabled, reason)
    return changed


@keys.command()
@_tenant_option
@_reason_option
@_data_dir_option
def disable(tenant: str, reason: str, data_dir: Path | None) -> None:
    """Make every key ring of a tenant unusable at once (reversible)."""
    changed = _set_enabled(tenant, reason, data_dir, False)
    click.echo(f"{changed} key rings disabled; the tenant's data can't be read or written.")


@keys.command()
@_tenant_option
@_reason_option
@_data_dir_option
def enable(tenant: str, reason: str, data_dir: Path | None) -> None:
    """Enable a tenant's disabled key rings again."""
    click.echo(f"{_set_enabled(tenant, reason, data_dir, True)} key rings enabled.")


@keys.command()
@_tenant_option
@_project_option
@click.option("--reason", required=True, help="Why; recorded in the certificate.")
@click.option("--yes", is_flag=True, help="Confirm: this can never be undone.")
@_data_dir_option
@_json_option
def destroy(
    tenant: str,
    project: str | None,
    reason: str,
    yes: bool,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Crypto-shred a tenant or project: destroy its keys, print the certificate."""
    scope = f"project {project!r} of tenant {tenant!r}" if project else f"tenant {tenant!r}"
    if not yes:
        raise click.ClickException(
            f"destroying the keys of {scope} makes its stored data unreadable forever; "
            "add --yes to confirm"
        )
    with _runtime(data_dir) as runtime:
        tenant_id, project_id = _ids(runtime, tenant, project)
        certificate = runtime.keys.destroy(OPERATOR, tenant_id, project_id, reason)
    if as_json:
        emit_json(certificate.content | {"sha256": certificate.sha256, "id": certificate.id})
        return
    content = certificate.content
    click.echo(f"certificate of destruction {certificate.id} (sha256 {certificate.sha256})")
    click.echo(
        f"{len(content['keys'])} keys destroyed, "
        f"{content['objects']} stored values unreadable; recorded as audit event key:destroy"
    )


@keys.command()
@_tenant_option
@_data_dir_option
def certificates(tenant: str, data_dir: Path | None) -> None:
    """Print a tenant's certificates of destruction (JSON Lines)."""
    with _runtime(data_dir) as runtime:
        tenant_id, _ = _ids(runtime, tenant, None)
        for certificate in runtime.keys.certificates(tenant_id):
            click.echo(certificate.document)

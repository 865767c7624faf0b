"""The ``qustody`` command.

Server-side commands (``serve``, ``worker``, ``admin``) act on the local
database and keys; everything else talks to a gateway over HTTP through the
SDK, with ``--url``/``QUSTODY_URL`` and ``--token``/``QUSTODY_TOKEN``.
Errors are printed in exactly one place, :func:`main`: the ``detail`` and
the ``code``, never a stack trace, and the exit status is non-zero.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from qustody.cli.accounts import account
from qustody.cli.approvals import approval, breakglass, elevate
from qustody.cli.audit import audit
from qustody.cli.identity import (
    admin_revoke,
    api_keys,
    dpop,
    dpop_key_of,
    revoke_many,
    token_exchange,
    trust_rules,
)
from qustody.cli.keys import keys
from qustody.cli.login import login, logout, stored_token
from qustody.cli.output import emit_json, table
from qustody.cli.policy import policy
from qustody.cli.scheduling import backend, queue, reservation, session
from qustody.cli.usage import budget, quota, usage
from qustody.cli.vault import export_key, refuse_existing, secrets, unseal
from qustody.cli.webhooks import webhook
from qustody.client import Client
from qustody.client.errors import QustodyClientError, QustodyTimeoutError, StepUpRequired
from qustody.domain.errors import InsecureDevelopmentWarning, QustodyError

DEFAULT_URL = "http://127.0.0.1:8080"


class CliContext:
    def __init__(
        self,
        url: str,
        token: str | None,
        dpop_key: Path | None = None,
        approval: str | None = None,
    ) -> None:
        self.url = url
        self._token = token
        #: A DPoP key file: tokens are bound to it and each request proves it.
        self.dpop_key = dpop_key
        #: An approved request (apr_...) to spend on the held action this command does.
        self.approval = approval

    def client(self) -> Client:
        if not self._token:
            self._token = stored_token(self.url)  # from `qustody login`
        if not self._token:
            raise click.UsageError(
                "no token: run `qustody login`, pass --token or set QUSTODY_TOKEN (get one "
                "with `qustody admin token` on the gateway host, or from your tenant admin)"
            )
        client = Client(self.url, self._token, dpop_key=dpop_key_of(self))
        client.use_approval(self.approval)
        return client


pass_ctx = click.make_pass_decorator(CliContext)


@click.group()
@click.option(
    "--url", envvar="QUSTODY_URL", default=DEFAULT_URL, show_default=True, help="Gateway URL."
)
@click.option(
    "--token",
    envvar="QUSTODY_TOKEN",
    default=None,
    show_default=False,
    help="Bearer token (or QUSTODY_TOKEN).",
)
@click.option(
    "--dpop-key",
    envvar="QUSTODY_DPOP_KEY",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="DPoP key file (`qustody dpop keygen`) for sender-constrained tokens.",
)
@click.option(
    "--approval",
    envvar="QUSTODY_APPROVAL",
    default=None,
    help="An approved request (apr_...) for the held action this command does; spent once.",
)
@click.pass_context
def cli(
    ctx: click.Context, url: str, token: str | None, dpop_key: Path | None, approval: str | None
) -> None:
    """Qustody: a security gateway for quantum jobs."""
    ctx.obj = CliContext(url, token, dpop_key, approval)


# -- server side ------------------------------------------------------------------------


def _settings(**overrides: Any) -> Any:
    from qustody.settings import load_settings

    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--embedded/--no-embedded",
    default=True,
    show_default=True,
    help="Run a worker inside the server process.",
)
@click.option("--demo", is_flag=True, help="Create a demo tenant and print its admin token.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
@click.option(
    "--api-processes",
    type=int,
    default=None,
    help="API processes sharing the port (default 1, or QUSTODY_API_PROCESSES).",
)
def serve(
    host: str,
    port: int,
    embedded: bool,
    demo: bool,
    data_dir: Path | None,
    api_processes: int | None,
) -> None:
    """Start the gateway (API, and a worker in embedded mode)."""
    import uvicorn

    from qustody.api.app import WorkerProcess, build_runtime, create_app

    settings = _settings(
        embedded_worker=embedded,
        data_dir=data_dir,
        # Behind a proxy, QUSTODY_PUBLIC_URL names the address clients use (DPoP
        # proofs and sign-in redirects name it); else this listener is it.
        public_url=None if os.environ.get("QUSTODY_PUBLIC_URL") else f"http://{host}:{port}",
        api_processes=api_processes,
    )
    runtime = build_runtime(settings, listen=True)  # workers and waiting requests
    lines = []
    if demo:
        from qustody.cli.demo import ensure_demo

        lines = ensure_demo(runtime.services)
    click.echo(f"Qustody {settings.mode} gateway on {settings.public_url}")
    click.echo(f"  API docs: {settings.public_url}/docs   database: {_redact_url(settings)}")
    for line in lines:
        click.echo(line)
    if settings.api_processes == 1:
        try:
            app = create_app(settings, runtime=runtime)
            uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
        finally:
            runtime.close()
        return
    # Several API processes: this one prepared the database and keys above;
    # it starts the one embedded worker and supervises the API processes,
    # which build their apps from the settings passed in the environment.
    runtime.close()
    worker = WorkerProcess(settings) if settings.embedded_worker else None
    os.environ.update(replace(settings, embedded_worker=False).environment())
    if worker is not None:
        worker.start()
    try:
        uvicorn.run(
            "qustody.api.app:app_from_environment",
            factory=True,
            workers=settings.api_processes,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
        )
    finally:
        if worker is not None:
            worker.stop()


def _redact_url(settings: Any) -> str:
    url: str = settings.resolved_database_url
    if "@" in url:  # hide credentials
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


@cli.command()
@click.option("--slots", type=int, default=None, help="Jobs run at once (default: CPUs, max 4).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
@click.option(
    "--exit-with-parent",
    is_flag=True,
    hidden=True,
    help="Stop when the process that started this one dies (used by serve).",
)
def worker(slots: int | None, data_dir: Path | None, exit_with_parent: bool) -> None:
    """Run a standalone worker that claims and executes queued jobs."""
    from qustody.api.app import build_runtime

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if exit_with_parent:
        _exit_with_parent(stop)
    runtime = build_runtime(_settings(data_dir=data_dir), listen=True)
    w, sandbox = runtime.make_worker(slots=slots)
    checkpointer = runtime.make_checkpointer()
    rewrapper = runtime.make_rewrapper()
    deliverer = runtime.make_deliverer()
    sweeper = runtime.make_approval_sweeper()
    w.start()
    sweeper.start()
    checkpointer.start()
    rewrapper.start()
    deliverer.start()
    click.echo(f"{w.id} running {w.slots} slot(s); Ctrl-C to stop", err=True)
    stop.wait()
    w.stop()
    deliverer.stop()
    sweeper.stop()
    rewrapper.stop()
    checkpointer.stop()
    sandbox.close()
    runtime.close()


def _exit_with_parent(stop: threading.Event) -> None:
    """SIGTERM this process when its parent dies; a watcher thread as a fallback."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)

    def watch() -> None:
        while not stop.wait(0.5):
            if os.getppid() != parent:
                stop.set()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    if os.getppid() != parent:  # it died before the signal was armed
        stop.set()


@cli.group()
def admin() -> None:
    """Operator commands on the gateway host (act on the local database)."""


@admin.command("init")
@click.option("--name", default="admin", show_default=True, help="The first platform admin.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
def admin_init(name: str, data_dir: Path | None) -> None:
    """Create the platform tenant and its first admin; print its token once."""
    from qustody.api.app import build_runtime

    runtime = build_runtime(_settings(data_dir=data_dir))
    try:
        principal, token = runtime.services.admin.init_platform(name)
    finally:
        runtime.close()
    click.echo(f"platform admin {principal.name} ({principal.id}) created.", err=True)
    click.echo(f"token (expires {token.expires_at:%H:%M:%S} UTC; shown once):", err=True)
    click.echo(token.token)


@admin.command("token")
@click.option("--principal", "principal_name", default="admin", show_default=True)
@click.option("--tenant", default="platform", show_default=True)
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
def admin_token(principal_name: str, tenant: str, data_dir: Path | None) -> None:
    """Issue a token for a principal (operator break-in; audited)."""
    from qustody.api.app import build_runtime

    runtime = build_runtime(_settings(data_dir=data_dir))
    try:
        token = runtime.services.admin.operator_token(principal_name, tenant)
    finally:
        runtime.close()
    click.echo(token.token)


@admin.command("share")
@click.option("--tenant", required=True, help="Tenant name or id.")
@click.option("--weight", type=int, required=True, help="Fair-queuing weight, 1-1000 (default 1).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
def admin_share(tenant: str, weight: int, data_dir: Path | None) -> None:
    """Give a tenant a share of the backends: over a busy period its jobs
    start WEIGHT times as often as a weight-1 tenant's (audited as queue:share)."""
    from sqlalchemy import select

    from qustody.api.app import build_runtime
    from qustody.audit.recorder import Actor
    from qustody.domain.errors import QustodyError
    from qustody.governance.backends import set_share
    from qustody.storage import models as m
    from qustody.storage.db import SYSTEM

    runtime = build_runtime(_settings(data_dir=data_dir))
    try:
        db = runtime.services.db
        with db.reading(scope=SYSTEM) as connection:
            tenant_id = connection.execute(
                select(m.TENANTS.c.id).where(
                    (m.TENANTS.c.name == tenant) | (m.TENANTS.c.id == tenant)
                )
            ).scalar()
        if tenant_id is None:
            raise click.ClickException(f"no tenant named {tenant!r}")
        try:
            set_share(db, tenant_id, weight, actor=Actor.system("cli:operator"))
        except QustodyError as error:
            raise click.ClickException(error.detail) from error
    finally:
        runtime.close()
    click.echo(f"tenant {tenant}: fair-queuing weight {weight}", err=True)


# -- tenants, projects, members, tokens -----------------------------------------------


@cli.group()
def tenant() -> None:
    """Tenants (platform admin)."""


@tenant.command("create")
@click.argument("name")
@click.option("--admin", "admin_name", required=True, help="Name of the tenant's first admin.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def tenant_create(ctx: CliContext, name: str, admin_name: str, as_json: bool) -> None:
    created = ctx.client().create_tenant(name, admin_name)
    if as_json:
        emit_json(created)
        return
    click.echo(f"tenant {created.tenant.name} ({created.tenant.id}) created", err=True)
    click.echo(f"tenant admin {created.admin.name}; token (shown once):", err=True)
    click.echo(created.admin.token)


@tenant.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def tenant_list(ctx: CliContext, as_json: bool) -> None:
    rows = ctx.client().tenants()
    if as_json:
        emit_json(rows)
    else:
        table([(t.id, t.name, t.created_at) for t in rows], ["id", "name", "created"])


@cli.group()
def project() -> None:
    """Projects of your tenant."""


@project.command("create")
@click.argument("name")
@click.option(
    "--data-class",
    type=click.Choice(["public", "internal", "confidential", "restricted"]),
    default="internal",
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def project_create(ctx: CliContext, name: str, data_class: str, as_json: bool) -> None:
    row = ctx.client().create_project(name, data_class)
    if as_json:
        emit_json(row)
    else:
        click.echo(f"project {row.name} ({row.id}) created, data class {row.data_class}")


@project.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def project_list(ctx: CliContext, as_json: bool) -> None:
    rows = ctx.client().projects()
    if as_json:
        emit_json(rows)
    else:
        table([(p.id, p.name, p.data_class) for p in rows], ["id", "name", "data class"])


@cli.group()
def member() -> None:
    """Members and their roles."""


@member.command("add")
@click.argument("principal")
@click.option("--role", type=click.Choice(["tenant-admin", "developer", "viewer"]), required=True)
@click.option("--project", default=None, help="Project id or name (not for tenant-admin).")
@click.option("--kind", type=click.Choice(["user", "workload"]), default="user")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def member_add(
    ctx: CliContext, principal: str, role: str, project: str | None, kind: str, as_json: bool
) -> None:
    row = ctx.client().add_member(principal, role, project=project, kind=kind)
    if as_json:
        emit_json(row)
    else:
        click.echo(
            f"{row.name} is {row.role}" + (f" on {row.project_id}" if row.project_id else "")
        )


@member.command("list")
@click.option("--project", default=None)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def member_list(ctx: CliContext, project: str | None, as_json: bool) -> None:
    rows = ctx.client().members(project)
    if as_json:
        emit_json(rows)
    else:
        table(
            [(r.name, r.kind, r.role, r.project_id) for r in rows],
            ["principal", "kind", "role", "project"],
        )


@cli.group()
def token() -> None:
    """Short-lived, scoped tokens."""


@token.command("issue")
@click.option("--principal", default=None, help="A member of your tenant (tenant admin only).")
@click.option("--scope", "scopes", multiple=True, help="Repeat: job, result, backend, ...")
@click.option("--ttl", type=int, default=None, help="Seconds, at most 900.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def token_issue(
    ctx: CliContext, principal: str | None, scopes: tuple[str, ...], ttl: int | None, as_json: bool
) -> None:
    issued = ctx.client().issue_token(principal, list(scopes) or None, ttl)
    if as_json:
        emit_json(issued)
    else:
        click.echo(issued.token)


@token.command("revoke")
@click.argument("jti", required=False)
@click.option("--all-of", default=None, help="Every token and API key of this principal.")
@click.option("--before", default=None, help="Every one of your tenant's issued before (or 'now').")
@pass_ctx
def token_revoke(ctx: CliContext, jti: str | None, all_of: str | None, before: str | None) -> None:
    """Revoke one token (JTI), all of a principal's (--all-of), or all issued before a time."""
    if sum(x is not None for x in (jti, all_of, before)) != 1:
        raise click.UsageError("give one of: a token's JTI, --all-of NAME, --before TIME")
    if jti is None:
        revoke_many(ctx, all_of, before)
        return
    ctx.client().revoke_token(jti)
    click.echo(f"token {jti} revoked", err=True)


token.add_command(token_exchange)


# -- jobs -----------------------------------------------------------------------------


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--backend", required=True)
@click.option("--shots", type=int, default=1024, show_default=True)
@click.option("--project", required=True, help="Project id or name.")
@click.option("--memory", is_flag=True, help="Also return per-shot bitstrings.")
@click.option("--seed", type=int, default=None)
@click.option(
    "--priority", type=click.IntRange(0, 9), default=0, help="0-9, among your tenant's jobs."
)
@click.option("--session", "session_id", default=None, help="A session of yours (ses_...).")
@click.option("--reason", default=None, help="Why, for a job a policy holds for approval.")
@click.option("--ticket", default=None, help="The change ticket, for a job held for approval.")
@click.option("--wait", "wait_", is_flag=True, help="Wait for the job and print its result.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def submit(
    ctx: CliContext,
    file: Path,
    backend: str,
    shots: int,
    project: str,
    memory: bool,
    seed: int | None,
    priority: int,
    session_id: str | None,
    reason: str | None,
    ticket: str | None,
    wait_: bool,
    as_json: bool,
) -> None:
    """Submit an OpenQASM 2 or 3 file (with --reason and --ticket where a
    policy holds the job for approval: it then waits for its approvers)."""
    client = ctx.client()
    job = client.submit(
        file.read_text(),
        backend=backend,
        shots=shots,
        project=project,
        memory=memory,
        seed=seed,
        priority=priority,
        session=session_id,
        reason=reason,
        ticket=ticket,
    )
    if job.approval_id and not as_json:
        click.echo(
            f"held for approval {job.approval_id}: `qustody approval show {job.approval_id}`",
            err=True,
        )
    if not wait_:
        if as_json:
            emit_json(job)
        else:
            click.echo(job.id)
        return
    _wait(client, job.id, None)
    _print_result(client, job.id, as_json)


def _wait(client: Client, job_id: str, timeout: float | None) -> Any:
    """Wait for a job, showing progress on stderr: each state change on a line
    of its own, and on a terminal a ticking clock while the state stays put."""
    started = time.monotonic()
    live = sys.stderr.isatty()
    last: list[str] = []

    def progress(job: Any) -> None:
        line = f"  {time.monotonic() - started:6.1f}s  {job.id}  {job.state.value}"
        changed = not last or last[-1] != job.state.value
        if live:  # rewrite the line in place; a new state starts a new line
            click.echo(("\n" if changed and last else "\r") + line, err=True, nl=False)
        elif changed:
            click.echo(line, err=True)
        if changed:
            last.append(job.state.value)

    while True:
        remaining = None if timeout is None else timeout - (time.monotonic() - started)
        step = 1.0 if remaining is None else max(0.01, min(1.0, remaining))
        try:
            job = client.wait(job_id, timeout=step, on_progress=progress)
        except QustodyTimeoutError as pending:
            if remaining is not None and remaining <= step:
                raise
            progress(pending.job)
            continue
        if live:
            click.echo("", err=True)
        return job


def _print_result(client: Client, job_id: str, as_json: bool) -> None:
    result = client.result(job_id)
    if as_json:
        emit_json(result)
        return
    total = sum(result.counts.values()) or 1
    rows = sorted(result.counts.items(), key=lambda kv: (-kv[1], kv[0]))
    table([(k, v, f"{v / total:.3f}") for k, v in rows], ["outcome", "count", "p"])
    meta = result.metadata
    click.echo(
        f"backend {meta.backend}, {meta.shots} shots, seed {meta.seed}, "
        f"{meta.simulator}, {meta.execution_seconds}s",
        err=True,
    )


@cli.group()
def jobs() -> None:
    """List, inspect, wait for and cancel jobs."""


@jobs.command("list")
@click.option("--state", default=None)
@click.option("--backend", default=None)
@click.option("--project", default=None)
@click.option("--limit", type=int, default=50, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def jobs_list(
    ctx: CliContext,
    state: str | None,
    backend: str | None,
    project: str | None,
    limit: int,
    as_json: bool,
) -> None:
    import itertools

    rows = list(
        itertools.islice(
            ctx.client().jobs(state=state, backend=backend, project=project, limit=min(limit, 200)),
            limit,
        )
    )
    if as_json:
        emit_json(rows)
    else:
        table(
            [(j.id, j.state, j.backend, j.shots, j.created_at) for j in rows],
            ["id", "state", "backend", "shots", "created"],
        )


@jobs.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def jobs_show(ctx: CliContext, job_id: str, as_json: bool) -> None:
    job = ctx.client().job(job_id)
    if as_json:
        emit_json(job)
        return
    click.echo(f"{job.id}  {job.state.value}  backend {job.backend}  shots {job.shots}")
    if job.circuit:
        c = job.circuit
        click.echo(
            f"circuit {c.format}, {c.num_qubits} qubits, {c.gate_count} gates, "
            f"depth {c.depth}, sha256 {c.sha256}"
        )
    if job.error:
        click.echo(f"error {job.error.code}: {job.error.detail}")
    table(
        [(t.at, t.from_state, t.to_state, t.actor, t.reason) for t in job.transitions],
        ["at", "from", "to", "actor", "reason"],
    )


@jobs.command("wait")
@click.argument("job_id")
@click.option("--timeout", type=float, default=None, help="Seconds.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def jobs_wait(ctx: CliContext, job_id: str, timeout: float | None, as_json: bool) -> None:
    job = _wait(ctx.client(), job_id, timeout)
    if as_json:
        emit_json(job)
    else:
        click.echo(f"{job.id} {job.state.value}")
    if job.state.value != "completed":
        sys.exit(1)


@jobs.command("cancel")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def jobs_cancel(ctx: CliContext, job_id: str, as_json: bool) -> None:
    job = ctx.client().cancel(job_id)
    if as_json:
        emit_json(job)
    else:
        click.echo(f"{job.id} {job.state.value}")


@cli.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--sealed",
    "sealed_out",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the result sealed to your tenant's export key to this file.",
)
@pass_ctx
def result(ctx: CliContext, job_id: str, as_json: bool, sealed_out: Path | None) -> None:
    """Print the result of a completed job (or save it sealed)."""
    if sealed_out is not None:
        refuse_existing(sealed_out)
        with ctx.client() as client:
            sealed = client.sealed_result(job_id)
        with sealed_out.open("xb") as handle:
            handle.write(sealed)
        click.echo(f"sealed result written to {sealed_out}; open it with `qustody unseal`")
        return
    _print_result(ctx.client(), job_id, as_json)


@cli.group()
def backends() -> None:
    """Backends and their limits."""


@backends.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def backends_list(ctx: CliContext, as_json: bool) -> None:
    rows = ctx.client().backends()
    if as_json:
        emit_json(rows)
    else:
        table(
            [(b.name, b.method, b.max_qubits, b.max_shots, b.online) for b in rows],
            ["name", "method", "max qubits", "max shots", "online"],
        )


cli.add_command(account)
cli.add_command(audit)
cli.add_command(trust_rules)
cli.add_command(api_keys)
cli.add_command(dpop)
admin.add_command(admin_revoke)
cli.add_command(keys)
cli.add_command(login)
cli.add_command(logout)
cli.add_command(secrets)
cli.add_command(export_key)
cli.add_command(unseal)
cli.add_command(policy)
cli.add_command(webhook)
for _group in (approval, elevate, breakglass):
    cli.add_command(_group)
for _command in (backend, reservation, session, queue):
    cli.add_command(_command)
for _command in (usage, quota, budget):
    cli.add_command(_command)


def main() -> None:
    """Entry point: the one place errors are printed."""
    warnings.simplefilter("default", InsecureDevelopmentWarning)
    warnings.formatwarning = lambda message, category, *_a, **_k: f"warning: {message}\n"
    try:
        cli.main(standalone_mode=False, prog_name="qustody")
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except QustodyError as error:
        click.echo(f"error: {error.detail} [{error.code}]", err=True)
        sys.exit(1)
    except StepUpRequired as error:
        click.echo(f"error: {error.detail} [{error.code}]", err=True)
        flags = f" --max-age {error.max_age}" if error.max_age is not None else ""
        flags += "".join(f" --acr {acr}" for acr in (error.acr_values or "").split())
        click.echo(f"step up: sign in again with `qustody login{flags}`, then retry", err=True)
        sys.exit(1)
    except QustodyClientError as error:
        click.echo(f"error: {error.detail} [{error.code}]", err=True)
        sys.exit(1)

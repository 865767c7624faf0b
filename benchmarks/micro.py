"""Micro-benchmarks of the gateway's building blocks, in this process.

- ``policy``: Cedar decision latency with 50 tenants of 10 policies each,
  over a mix of principals, actions and resources (allows and denies),
  against the shipped policies alone. Goal: p99 <= 0.5 ms.
- ``encryption``: the envelope cost of one job, per key provider: seal the
  circuit (1 KiB) and open the result (4 KiB), with a warm and a cold DEK
  cache. Goal: under 0.2 ms per job (warm).
- ``audit``: audit events appended inside real write transactions, one per
  transaction and 100 per transaction, on SQLite and PostgreSQL.
  Goal: >= 5,000 appends/s. (Verification and proof figures of the Merkle
  tree are in :mod:`benchmarks.merkle`.)
- ``growth``: ``JobService.submit``/``get``/``list_jobs`` as a real developer,
  with 1 against 1,000 tenants and 10^3 against 10^6 jobs of *other* tenants
  (bulk-loaded with their last transition, not through the service; no worker
  runs, so submitted jobs stay queued), and creating a tenant with 1 against
  1,000 tenants. Goal: flat, big/small p50 <= 1.5.

Run them through ``benchmarks/run.py`` (``--only policy,growth``).
"""

from __future__ import annotations

import base64
import contextlib
import gc
import itertools
import json
import os
import random
import secrets
import shutil
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import insert, literal, make_url, text

from benchmarks.harness import Benchmark, Config, Measurement, latency, rate, ratio
from qustody.api.app import Runtime, build_runtime
from qustody.audit.export import export_records
from qustody.audit.log import AuditLog
from qustody.audit.note import Signer
from qustody.audit.recorder import Actor, Target, event_row, record, record_rows
from qustody.audit.verify import verify_export
from qustody.crypto.envelope import Envelope
from qustody.crypto.interfaces import KeyProvider, parse_key_id
from qustody.crypto.local import LocalKeyring
from qustody.domain.errors import InsecureDevelopmentWarning
from qustody.domain.ids import (
    PrincipalId,
    ProjectId,
    TenantId,
    new_job_id,
    new_principal_id,
    new_project_id,
    new_request_id,
    new_tenant_id,
)
from qustody.domain.models import Decision, Principal, RequestContext, Resource
from qustody.domain.vocabulary import Action, DataClass, Role
from qustody.jobs.circuits import default_parser_pool
from qustody.jobs.service import SubmitRequest
from qustody.policy.engine import CedarPolicyEngine
from qustody.settings import load_settings
from qustody.storage import models as m
from qustody.storage.db import Database

__all__ = [
    "BENCHMARKS",
    "bench_audit",
    "bench_encryption",
    "bench_growth",
    "bench_policy",
    "policy_workload",
    "tenant_policies",
]

FLAT = 1.5
GHZ3 = """OPENQASM 2.0;
include "qelib1.inc";
qreg q[3];
creg c[3];
h q[0];
cx q[0], q[1];
cx q[1], q[2];
measure q -> c;
"""


def _ms(start_ns: int, end_ns: int) -> float:
    return (end_ns - start_ns) / 1e6


def _workdir(config: Config, name: str) -> Path:
    """A fresh directory of this benchmark's own (the workdir is shared)."""
    path = config.workdir / f"micro-{name}-{secrets.token_hex(3)}"
    path.mkdir(parents=True)
    return path


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the development-mode warning (local keyring) while building things."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureDevelopmentWarning)
        yield


# ---------------------------------------------------------------------------------------
# Databases
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_database(server: str) -> Iterator[str]:
    """A fresh database ``qustody_bench_<random>`` on ``server``, dropped afterwards.

    ``server`` is a SQLAlchemy URL; a database named in it is ignored.
    """
    url = make_url(server)
    name = f"qustody_bench_{secrets.token_hex(4)}"
    admin = url.set(drivername="postgresql", database="postgres").render_as_string(
        hide_password=False
    )
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextlib.contextmanager
def _database_url(config: Config, kind: str, directory: Path, name: str) -> Iterator[str]:
    """A fresh, empty database: a SQLite file (removed afterwards) or a PostgreSQL database."""
    if kind == "SQLite":
        path = directory / f"{name}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            for leftover in (
                path,
                path.with_name(path.name + "-wal"),
                path.with_name(path.name + "-shm"),
            ):
                leftover.unlink(missing_ok=True)
    elif config.postgres:
        with postgres_database(config.postgres) as url:
            yield url
    else:
        raise ValueError(f"no database of kind {kind!r} is configured")


def _database_kinds(config: Config) -> list[str]:
    return ["SQLite", "PostgreSQL"] if config.postgres else ["SQLite"]


# ---------------------------------------------------------------------------------------
# policy
# ---------------------------------------------------------------------------------------

_BACKENDS = ("aer-statevector", "aer-stabilizer", "aer-automatic")
#: ``context.backend`` of a submission to each (policy/facts.py's shape).
_BACKEND_FACTS = {
    name: {
        "name": name,
        "simulator": True,
        "provider": "qiskit-aer",
        "environment": "dev",
        "region": "local",
        "max_qubits": 26,
        "max_shots": 100_000,
    }
    for name in _BACKENDS
}
_REGIONS = ("eu-west-1", "eu-central-1", "us-east-1")


def _ci_principal(tenant: TenantId) -> PrincipalId:
    return PrincipalId(f"usr_{tenant.removeprefix('ten_')}_ci")


def tenant_policies(tenant: TenantId, index: int) -> str:
    """Ten policies a tenant might write for itself (they validate against the schema).

    Parameters vary by ``index`` so the tenants' sets are not identical.
    """
    denied_backend = _BACKENDS[index % len(_BACKENDS)]
    region = _REGIONS[index % len(_REGIONS)]
    pilot_end = f"{2030 + index % 5}-06-30T00:00:00Z"
    ci = _ci_principal(tenant)
    return f"""
// Restricted data is handled in production only.
@id("{tenant}/restricted-in-prod-only")
forbid (
  principal,
  action in
    [Qustody::Action::"job:submit",
     Qustody::Action::"job:read",
     Qustody::Action::"result:read"],
  resource
)
when
{{
  context has data_class && context.data_class == "restricted" &&
  !(context has environment && context.environment == "prod")
}};

// A backend this tenant has not been cleared for.
@id("{tenant}/not-on-{denied_backend}")
forbid (principal, action == Qustody::Action::"job:submit", resource is Qustody::Project)
when {{ context has backend && context.backend.name == "{denied_backend}" }};

// Data residency: submissions from the tenant's region only.
@id("{tenant}/residency")
forbid (principal, action == Qustody::Action::"job:submit", resource)
when {{ context has region && context.region != "{region}" }};

// Automation does not cancel jobs.
@id("{tenant}/workloads-do-not-cancel")
forbid (principal, action == Qustody::Action::"job:cancel", resource is Qustody::Job)
when {{ principal has kind && principal.kind == "workload" }};

// Confidential results need a second factor, except for the CI pipeline.
@id("{tenant}/confidential-results-need-mfa")
forbid (principal, action == Qustody::Action::"result:read", resource is Qustody::Job)
when
{{
  resource has data_class && resource.data_class == "confidential" &&
  context.auth_method != "mfa"
}}
unless {{ principal == Qustody::Principal::"{ci}" }};

// Only a job's owner (or a tenant admin) cancels it.
@id("{tenant}/owners-cancel-own-jobs")
forbid (principal, action == Qustody::Action::"job:cancel", resource is Qustody::Job)
when {{ resource has owner && resource.owner != principal }}
unless {{ context.roles.contains("tenant-admin") }};

// Submissions end with the pilot.
@id("{tenant}/pilot-ends")
forbid (principal, action == Qustody::Action::"job:submit", resource is Qustody::Project)
when {{ context.now >= datetime("{pilot_end}") }};

// The CI pipeline reads no confidential or restricted jobs.
@id("{tenant}/ci-reads-no-secrets")
forbid (
  principal == Qustody::Principal::"{ci}",
  action in
    [Qustody::Action::"job:read",
     Qustody::Action::"job:list",
     Qustody::Action::"result:read"],
  resource
)
when {{ context has data_class && ["confidential", "restricted"].contains(context.data_class) }};

// Members of restricted projects are added with a second factor only.
@id("{tenant}/restricted-members-need-mfa")
forbid (principal, action == Qustody::Action::"member:add", resource is Qustody::Project)
when
{{
  resource has data_class && resource.data_class == "restricted" &&
  context.auth_method != "mfa"
}};

// Automation does not mint tokens.
@id("{tenant}/workloads-do-not-mint-tokens")
forbid (principal, action == Qustody::Action::"token:issue", resource)
when {{ principal has kind && principal.kind == "workload" }};
"""


PolicyRequest = tuple[Principal, Action, Resource, dict[str, object] | None]


@dataclass(frozen=True, slots=True)
class _TenantWorld:
    tenant: TenantId
    projects: dict[DataClass, ProjectId]
    admin: Principal
    developer: Principal
    narrow_developer: Principal  # a token narrowed to the "job" scope
    viewer: Principal
    ci: Principal


def _tenant_world(tenant: TenantId) -> _TenantWorld:
    projects = {dc: new_project_id() for dc in DataClass}
    everywhere = tuple((pid, Role.DEVELOPER) for pid in projects.values())

    def who(
        kind: str,
        *,
        tenant_roles: frozenset[Role] = frozenset(),
        project_roles: tuple[tuple[ProjectId, Role], ...] = (),
        scopes: frozenset[str] = frozenset({"*"}),
        principal_id: PrincipalId | None = None,
    ) -> Principal:
        return Principal(
            id=principal_id or new_principal_id(),
            tenant_id=tenant,
            name=f"{kind}-{secrets.token_hex(2)}",
            kind="workload" if kind == "ci" else "user",
            token_id=f"tok_{secrets.token_hex(8)}",
            scopes=scopes,
            auth_method="qustody-token",
            tenant_roles=tenant_roles,
            project_roles=project_roles,
        )

    internal = projects[DataClass.INTERNAL]
    return _TenantWorld(
        tenant=tenant,
        projects=projects,
        admin=who("admin", tenant_roles=frozenset({Role.TENANT_ADMIN})),
        developer=who("dev", project_roles=everywhere),
        narrow_developer=who("dev", project_roles=everywhere, scopes=frozenset({"job"})),
        viewer=who("viewer", project_roles=((internal, Role.VIEWER),)),
        ci=who("ci", project_roles=everywhere, principal_id=_ci_principal(tenant)),
    )


def _with_auth(principal: Principal, auth_method: str) -> Principal:
    return Principal(
        id=principal.id,
        tenant_id=principal.tenant_id,
        name=principal.name,
        kind=principal.kind,
        token_id=principal.token_id,
        scopes=principal.scopes,
        auth_method=auth_method,
        tenant_roles=principal.tenant_roles,
        project_roles=principal.project_roles,
    )


def policy_workload(tenants: list[TenantId], count: int, seed: int = 7) -> list[PolicyRequest]:
    """A reproducible mix of ``count`` requests over ``tenants``: roles, actions,
    resource types, contexts; own-tenant and cross-tenant; allows and denies."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not a secret
    worlds = [_tenant_world(t) for t in tenants]
    now = datetime.now(UTC)

    def job(world: _TenantWorld, data_class: DataClass, owner: Principal) -> Resource:
        return Resource(
            "job",
            new_job_id(),
            world.tenant,
            project_id=world.projects[data_class],
            data_class=data_class,
            owner_id=owner.id,
        )

    def project(world: _TenantWorld, data_class: DataClass) -> Resource:
        pid = world.projects[data_class]
        return Resource("project", pid, world.tenant, project_id=pid, data_class=data_class)

    def data_class() -> DataClass:
        return rng.choice(list(DataClass))

    def environment() -> dict[str, object]:
        return {"environment": rng.choice(("prod", "prod", "staging"))}

    def make(w: _TenantWorld, other: _TenantWorld) -> PolicyRequest:
        kind = rng.randrange(14)
        if kind == 0:  # developer submits to a project, from some region, to some backend
            context: dict[str, object] = {
                "backend": _BACKEND_FACTS[rng.choice(_BACKENDS)],
                "qubits": rng.randrange(1, 27),
                "shots": 1000,
                **environment(),
            }
            if rng.random() < 0.5:
                context["region"] = rng.choice(_REGIONS)
            return w.developer, Action.JOB_SUBMIT, project(w, data_class()), context
        if kind == 1:
            return w.developer, Action.JOB_READ, job(w, data_class(), w.developer), environment()
        if kind == 2:  # confidential results, with or without a second factor
            caller = _with_auth(w.developer, rng.choice(("mfa", "qustody-token")))
            return caller, Action.RESULT_READ, job(w, DataClass.CONFIDENTIAL, w.developer), None
        if kind == 3:  # a viewer tries to submit (no permit; the pilot forbid too, after it ends)
            context = {"backend": _BACKEND_FACTS[rng.choice(_BACKENDS)], "now": now}
            return w.viewer, Action.JOB_SUBMIT, project(w, DataClass.INTERNAL), context
        if kind == 4:  # a viewer cancels its own job, or someone else's
            owner = rng.choice((w.viewer, w.developer))
            return w.viewer, Action.JOB_CANCEL, job(w, DataClass.INTERNAL, owner), None
        if kind == 5:
            return w.ci, Action.JOB_READ, job(w, data_class(), w.developer), environment()
        if kind == 6:
            return w.ci, Action.JOB_CANCEL, job(w, DataClass.INTERNAL, w.ci), None
        if kind == 7:
            target = Resource("principal", w.ci.id, w.tenant, owner_id=w.ci.id)
            return w.ci, Action.TOKEN_ISSUE, target, None
        if kind == 8:  # a tenant admin adds a member, with or without a second factor
            caller = _with_auth(w.admin, rng.choice(("mfa", "qustody-token")))
            return caller, Action.MEMBER_ADD, project(w, data_class()), None
        if kind == 9:  # probing another tenant's job
            return (
                w.developer,
                Action.JOB_READ,
                job(other, DataClass.INTERNAL, other.developer),
                None,
            )
        if kind == 10:
            return w.developer, Action.JOB_LIST, project(w, data_class()), None
        if kind == 11:
            return (
                w.viewer,
                Action.BACKEND_READ,
                Resource("backend", rng.choice(_BACKENDS), None),
                None,
            )
        if kind == 12:  # a token narrowed to "job" asks for a result
            return (
                w.narrow_developer,
                Action.RESULT_READ,
                job(w, DataClass.INTERNAL, w.developer),
                None,
            )
        return w.admin, Action.JOB_CANCEL, job(w, data_class(), w.developer), None

    requests = []
    for _ in range(count):
        world, other = rng.sample(worlds, 2) if len(worlds) > 1 else (worlds[0], worlds[0])
        requests.append(make(world, other))
    return requests


def _decide(
    engines: dict[str, CedarPolicyEngine], requests: list[PolicyRequest], rounds: int
) -> dict[str, tuple[list[float], int, int]]:
    """Per engine: latencies (ms) of every decision, and the allowed and errored
    counts of one pass. Rounds alternate between the engines, so that drift on a
    busy machine hits them alike."""
    counts: dict[str, tuple[int, int]] = {}
    for name, engine in engines.items():  # warm the per-action policy subsets
        allowed = errored = 0
        for caller, action, resource, context in requests:
            decision = engine.authorize(caller, action, resource, context=context)
            allowed += decision.allowed
            errored += bool(decision.errors)
        counts[name] = (allowed, errored)
    samples: dict[str, list[float]] = {name: [] for name in engines}
    clock = time.perf_counter_ns
    gc.collect()
    for _ in range(rounds):
        for name, engine in engines.items():
            out = samples[name]
            for caller, action, resource, context in requests:
                start = clock()
                engine.authorize(caller, action, resource, context=context)
                out.append(_ms(start, clock()))
    return {name: (samples[name], *counts[name]) for name in engines}


def bench_policy(config: Config) -> list[Measurement]:
    tenants = [new_tenant_id() for _ in range(50)]
    requests = policy_workload(tenants, config.scale(1_000, 200))
    rounds = config.scale(10, 1)
    rows: list[Measurement] = []
    start = time.perf_counter_ns()
    loaded = CedarPolicyEngine(
        tenant_policies={t: tenant_policies(t, i) for i, t in enumerate(tenants)}
    )
    load_ms = _ms(start, time.perf_counter_ns())
    engines = {
        "50 tenants x 10 policies + shipped": loaded,
        "shipped policies only": CedarPolicyEngine(),
    }
    for case, (samples, allowed, errored) in _decide(engines, requests, rounds).items():
        rows += latency("policy", f"decision, {case}", samples, goals={"p99": 0.5})
        share = 100 * allowed / len(requests)
        rows.append(Measurement("policy", f"decision mix, {case}", "allowed", share, "%"))
        if errored:
            rows.append(
                Measurement("policy", f"decision mix, {case}", "errored", errored, "decisions")
            )
    rows.append(
        Measurement("policy", "engine load, 50 tenants x 10 policies", "once", load_ms, "ms")
    )
    return rows


# ---------------------------------------------------------------------------------------
# encryption
# ---------------------------------------------------------------------------------------


def _local_provider(directory: Path) -> KeyProvider:
    with _quiet():
        return LocalKeyring.open_or_create(
            directory / "keyring.json", master_key_file=directory / "master.key", environ={}
        )


_SOFTHSM_MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
)


def _pkcs11_provider(directory: Path) -> KeyProvider | None:
    """A Pkcs11Provider over a fresh SoftHSM2 token (None when SoftHSM2 is missing).

    SoftHSM2 reads ``SOFTHSM2_CONF`` once, when the library is first loaded in
    the process, so this sets it before the first provider exists.
    """
    from qustody.crypto.pkcs11 import Pkcs11Provider

    module = next((p for p in _SOFTHSM_MODULES if Path(p).is_file()), None)
    if module is None or shutil.which("softhsm2-util") is None:
        return None
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    os.environ.setdefault("SOFTHSM2_CONF", str(conf))
    label, pin = f"bench-{secrets.token_hex(4)}", secrets.token_hex(8)
    subprocess.run(  # noqa: S603 (fixed arguments)
        ["softhsm2-util", "--init-token", "--free", "--label", label,  # noqa: S607
         "--so-pin", secrets.token_hex(8), "--pin", pin],
        check=True, capture_output=True, env=os.environ,
    )  # fmt: skip
    return Pkcs11Provider(module, label, pin)


#: Key providers to measure: name -> factory (given a directory of its own).
KEY_PROVIDERS: dict[str, Callable[[Path], KeyProvider | None]] = {
    "local": _local_provider,
    "pkcs11": _pkcs11_provider,
}

CIRCUIT_BYTES = 1024
RESULT_BYTES = 4096


def _payload(prefix: bytes, size: int) -> bytes:
    body = prefix + b"\n" + secrets.token_hex(size).encode()
    return body[:size]


def _per_job(
    api: Envelope, worker: Envelope, keys: list[tuple[str, str]], count: int
) -> tuple[list[float], list[float], list[float]]:
    """The crypto of one job as the gateway does it, (total, seals, opens) in ms:
    the API seals the circuit; the worker (another process: its own DEK cache)
    opens it and seals the result; the API opens the result when it is read.
    Every open here is the first of its value, so each unwraps its DEK."""
    circuit = _payload(GHZ3.encode(), CIRCUIT_BYTES)
    result = _payload(b'{"counts": {"000": 510, "111": 514}}', RESULT_BYTES)
    job_ids = [new_job_id() for _ in range(count)]
    total, seals, opens = [], [], []
    clock = time.perf_counter_ns
    gc.collect()
    for i in range(count):
        tenant, key = keys[i % len(keys)]
        job = job_ids[i]
        t0 = clock()
        sealed_circuit = api.seal(key, tenant, job, "circuit", circuit)
        t1 = clock()
        worker.open(tenant, job, "circuit", sealed_circuit)
        t2 = clock()
        sealed_result = worker.seal(key, tenant, job, "result", result)
        t3 = clock()
        api.open(tenant, job, "result", sealed_result)
        t4 = clock()
        total.append(_ms(t0, t4))
        seals += [_ms(t0, t1), _ms(t2, t3)]
        opens += [_ms(t1, t2), _ms(t3, t4)]
    return total, seals, opens


def bench_encryption(config: Config) -> list[Measurement]:
    count = config.scale(5_000, 100)
    rows: list[Measurement] = []
    goals = {"local": 0.2, "pkcs11": 2.0}
    for name, factory in KEY_PROVIDERS.items():
        provider = factory(_workdir(config, f"encryption-{name}"))
        if provider is None:
            continue
        keys = []
        for _ in range(10):
            tenant = new_tenant_id()
            ring = f"{tenant}.{new_project_id()}.payload"
            keys.append((str(tenant), provider.create_key(ring, 1)))
        api, worker = Envelope(provider), Envelope(provider)
        _per_job(api, worker, keys, 50)  # warm up
        total, seals, opens = _per_job(api, worker, keys, count)
        case = f"{name} provider"
        rows += latency(
            "encryption",
            f"{case}: per job (seal 1 KiB circuit, open it, seal 4 KiB result, open it)",
            total,
            goals={"p50": goals[name], "p99": goals[name]},
        )
        rows += latency("encryption", f"{case}: seal (wrap a fresh DEK)", seals)
        rows += latency("encryption", f"{case}: first open (unwrap its DEK)", opens)
        # A result read again: its DEK comes from the API process's cache.
        tenant, key = keys[0]
        blob = api.seal(key, tenant, "job_warm", "result", _payload(b"{}", RESULT_BYTES))
        api.open(tenant, "job_warm", "result", blob)
        warm = []
        for _ in range(count):
            t0 = time.perf_counter_ns()
            api.open(tenant, "job_warm", "result", blob)
            warm.append(_ms(t0, time.perf_counter_ns()))
        rows += latency("encryption", f"{case}: open 4 KiB result again (cached DEK)", warm)
        rewrapped = []
        new_key = provider.create_key(parse_key_id(key).ring, 2)  # type: ignore[union-attr]
        for _ in range(min(count, 1000)):
            sealed = api.seal(key, tenant, "job_r", "result", b"x")
            t0 = time.perf_counter_ns()
            api.rewrap(sealed, new_key)
            rewrapped.append(_ms(t0, time.perf_counter_ns()))
        rows += latency("encryption", f"{case}: rewrap one DEK to a new version", rewrapped)
    return rows


# ---------------------------------------------------------------------------------------
# audit
# ---------------------------------------------------------------------------------------

_EVENT_TYPES = (Action.JOB_SUBMIT, Action.JOB_VALIDATE, Action.JOB_QUEUE)


def _append(
    db: Database, per_transaction: int, transactions: int, *, batched: bool = False
) -> tuple[int, float, list[float]]:
    """Append ``per_transaction`` events in each of ``transactions`` write transactions,
    one ``record()`` call per event, or one ``record_rows()`` per transaction (``batched``).

    Returns (events, seconds, per-transaction latencies in ms).
    """
    tenant = new_tenant_id()
    actor = Actor(new_principal_id(), tenant, "qustody-token", f"tok_{secrets.token_hex(8)}")
    decision = Decision(True, Action.JOB_SUBMIT, ("developer-project",))
    request = RequestContext(new_request_id(), "10.20.30.40", "qustody-sdk/0.1 python-httpx/0.28")
    digest = secrets.token_hex(32)
    job_ids = [new_job_id() for _ in range(per_transaction * transactions)]
    latencies: list[float] = []
    clock = time.perf_counter_ns
    gc.collect()
    start = clock()
    for t in range(transactions):
        t0 = clock()
        with db.write() as session:
            rows = []
            for k in range(per_transaction):
                job_id = job_ids[t * per_transaction + k]
                event: dict[str, Any] = {
                    "actor": actor,
                    "target": Target("job", job_id, tenant),
                    "decision": decision,
                    "request": request,
                    "job_id": job_id,
                    "payload_sha256": digest,
                    "reason": "backend=aer-statevector shots=1024",
                }
                event_type = _EVENT_TYPES[k % len(_EVENT_TYPES)]
                if batched:
                    rows.append(event_row(event_type, **event))
                else:
                    record(session, event_type, **event)
            if batched:
                record_rows(session, rows)
        latencies.append(_ms(t0, clock()))
    seconds = (clock() - start) / 1e9
    return per_transaction * transactions, seconds, latencies


def bench_audit(config: Config) -> list[Measurement]:
    rows: list[Measurement] = []
    directory = _workdir(config, "audit")
    for kind in _database_kinds(config):
        with _database_url(config, kind, directory, "audit") as url:
            db = Database(url)
            try:
                db.migrate()
                _append(db, 1, 20)  # warm: connections, compiled statements
                _append(db, 10, 2, batched=True)
                for per_transaction, transactions, batched in (
                    (1, config.scale(5_000, 50), False),
                    (100, config.scale(100, 3), False),
                    (100, config.scale(100, 3), True),
                ):
                    events, seconds, latencies = _append(
                        db, per_transaction, transactions, batched=batched
                    )
                    how = (
                        "1 event per transaction"
                        if per_transaction == 1
                        else f"{per_transaction} events per transaction, "
                        + ("one record_rows()" if batched else "record() each")
                    )
                    case = f"{kind}, {how}"
                    rows.append(rate("audit", case, events, seconds, "appends/s", at_least=5_000))
                    rows += [
                        r
                        for r in latency("audit", f"{case}: transaction", latencies)
                        if r.metric in ("p50", "p99")
                    ]
            finally:
                db.dispose()
    return rows


def bench_audit_log(config: Config) -> list[Measurement]:
    """The stored, verifiable log: how fast the integrator hashes recorded events
    into the tree (it must outpace recording), what a checkpoint and proofs from
    the database cost, and how fast ``qustody audit verify`` checks an export."""
    rows: list[Measurement] = []
    directory = _workdir(config, "auditlog")
    events = config.scale(100_000, 300)
    for kind in _database_kinds(config):
        with _database_url(config, kind, directory, "auditlog") as url:
            db = Database(url)
            try:
                db.migrate()
                signer = Signer.generate("bench.example/audit")
                log = AuditLog(db, signer)
                _append(
                    db, 1000 if events >= 1000 else events, max(1, events // 1000), batched=True
                )
                t0 = time.perf_counter()
                size = log.integrate()
                integrated = time.perf_counter() - t0
                rows.append(
                    rate(
                        "auditlog",
                        f"{kind}, {size:,} events: integrate into the stored tree",
                        size,
                        integrated,
                        "events/s",
                        at_least=5_000,
                    )
                )
                signing: list[float] = []
                for _ in range(config.scale(50, 3)):
                    _append(db, 10, 1, batched=True)
                    t0 = time.perf_counter()
                    log.checkpoint()
                    signing.append((time.perf_counter() - t0) * 1000)
                case = f"{kind}, integrate 10 events and sign a checkpoint"
                rows += [r for r in latency("auditlog", case, signing) if r.metric == "p50"]
                latest = log.latest_checkpoint()
                assert latest is not None
                rng = random.Random(9162)  # noqa: S311 - reproducible probes, not a secret
                inclusion: list[float] = []
                consistency: list[float] = []
                for _ in range(config.scale(500, 10)):
                    seq = rng.randrange(1, latest.size + 1)
                    t0 = time.perf_counter()
                    log.inclusion_proofs([seq], latest.size)
                    t1 = time.perf_counter()
                    log.consistency_proof(rng.randrange(1, latest.size), latest.size)
                    t2 = time.perf_counter()
                    inclusion.append((t1 - t0) * 1000)
                    consistency.append((t2 - t1) * 1000)
                n = f"{latest.size:,} events"
                rows += latency(
                    "auditlog",
                    f"{kind}, {n}: inclusion proof from the database",
                    inclusion,
                    goals={"p99": 5.0},
                )
                rows += [
                    r
                    for r in latency(
                        "auditlog", f"{kind}, {n}: consistency proof from the database", consistency
                    )
                    if r.metric in ("p50", "p99")
                ]
                t0 = time.perf_counter()
                lines = [json.dumps(r) for r in export_records(db, log)]
                exported = time.perf_counter() - t0
                rows.append(
                    rate(
                        "auditlog",
                        f"{kind}, {n}: export",
                        latest.size,
                        exported,
                        "events/s",
                        at_least=None,
                    )
                )
                t0 = time.perf_counter()
                report = verify_export(lines, signer.verifier)
                checked = time.perf_counter() - t0
                assert report.ok, report.first
                rows.append(
                    rate(
                        "auditlog",
                        f"{kind}, {n}: qustody audit verify (parse, re-encode, hash, "
                        "check every checkpoint)",
                        report.events,
                        checked,
                        "events/s",
                        # A million-event log (a busy gateway's day) in under a minute.
                        at_least=20_000,
                    )
                )
            finally:
                db.dispose()
    return rows


# ---------------------------------------------------------------------------------------
# growth
# ---------------------------------------------------------------------------------------


#: RFC 4648 base32 to Crockford's alphabet, which the gateway's ids use.
_TO_CROCKFORD = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
)


def _id_at(prefix: str, moment: datetime, rng: random.Random) -> str:
    """An id of the gateway's shape (48-bit milliseconds, 80 random bits, 26 Crockford
    base32 characters) whose time part is ``moment``; fast, for bulk rows."""
    value = (int(moment.timestamp() * 1000) << 80) | rng.getrandbits(80)
    # 130 bits as 26 characters: shift to 160 bits, encode, keep the first 26.
    encoded = base64.b32encode((value << 30).to_bytes(20, "big")).translate(_TO_CROCKFORD)
    return f"{prefix}_{encoded[:26].decode()}"


def _ctx() -> RequestContext:
    return RequestContext(new_request_id(), "127.0.0.1", "qustody-bench")


@dataclass
class _Deployment:
    """A runtime with one measured tenant (``bench``) and bulk data of others."""

    label: str
    runtime: Runtime
    root: Principal
    developer: Principal
    job_ids: list[str] = field(default_factory=list)
    seed_seconds: float = 0.0


def _seed_measured_tenant(runtime: Runtime) -> tuple[Principal, Principal]:
    """The platform, and tenant ``bench`` with project ``research`` and a developer,
    all through the services. Returns (platform admin, developer)."""
    services = runtime.services
    admin, tokens = services.admin, services.tokens
    admin.init_platform("root")
    root = tokens.authenticate(admin.operator_token("root").token)
    admin.create_tenant(root, _ctx(), "bench", "bench-admin")
    boss = tokens.authenticate(admin.operator_token("bench-admin", "bench").token)
    admin.create_project(boss, _ctx(), "research", DataClass.INTERNAL)
    admin.add_member(
        boss, _ctx(), principal_name="bench-dev", role=Role.DEVELOPER, project_ref="research"
    )
    developer = tokens.authenticate(admin.operator_token("bench-dev", "bench").token)
    return root, developer


def _bulk_tenants(runtime: Runtime, count: int) -> list[tuple[str, str, str]]:
    """``count`` other tenants, each with a project, a developer and a key.

    Returns (tenant, project, principal) ids.
    """
    now = datetime.now(UTC)
    owners = [(new_tenant_id(), new_project_id(), new_principal_id()) for _ in range(count)]
    tables: list[tuple[Any, list[dict[str, object]]]] = [
        (m.Tenant.__table__, [
            {"id": t, "name": f"other-{i:06d}", "created_at": now}
            for i, (t, _, _) in enumerate(owners)
        ]),
        (m.Project.__table__, [
            {"id": p, "tenant_id": t, "name": "research", "data_class": "internal",
             "created_at": now}
            for t, p, _ in owners
        ]),
        (m.Principal.__table__, [
            {"id": u, "tenant_id": t, "name": "dev", "kind": "user", "created_at": now}
            for t, _, u in owners
        ]),
        (m.Membership.__table__, [
            {"tenant_id": t, "principal_id": u, "project_id": p, "role": "developer",
             "created_at": now}
            for t, p, u in owners
        ]),
    ]  # fmt: skip
    if owners:
        with runtime.services.db.write() as session:
            connection = session.connection()
            for table, rows in tables:
                connection.execute(insert(table), rows)
    return owners


#: Columns that vary per bulk job row; the others are the same for every row.
_JOB_COLUMNS = (
    "id", "tenant_id", "project_id", "principal_id", "state", "circuit_sha256",
    "created_at", "updated_at", "queued_at", "started_at", "finished_at",
)  # fmt: skip
_JOB_CONSTANTS: dict[str, object] = {
    "backend": "aer-statevector",
    "shots": 1024,
    "circuit_format": "qasm2",
    "num_qubits": 5,
    "num_clbits": 5,
    "gate_count": 10,
    "depth": 6,
    "options": {"memory": False, "seed": None},
    "attempts": 1,
    "cancel_requested": False,
}
_STATES = ("completed", "completed", "completed", "completed", "failed", "cancelled")


def _job_rows(
    owners: list[tuple[str, str, str]], count: int, rng: random.Random, now: datetime
) -> Iterator[tuple[object, ...]]:
    """The varying columns (``_JOB_COLUMNS``) of ``count`` minimal valid job rows,
    created in time order over the last 30 days and the next hour, so that some of
    other tenants' jobs are newer than the measured tenant's, as in real life."""
    first = now - timedelta(days=30)
    step = (timedelta(days=30, hours=1) / count).total_seconds()
    for i in range(count):
        tenant, project, principal = owners[i % len(owners)]
        at = first + timedelta(seconds=i * step)
        yield (
            _id_at("job", at, rng), tenant, project, principal, _STATES[i % len(_STATES)],
            f"{i:064x}", at, at, at, at, at,
        )  # fmt: skip


def _transition(job: tuple[object, ...]) -> tuple[object, ...]:
    """The last transition of a bulk job row (``_TRANSITION_COLUMNS``)."""
    job_id, tenant, _, principal, state, _, at = job[:7]
    return job_id, tenant, "running", state, principal, at


_TRANSITION_COLUMNS = ("job_id", "tenant_id", "from_state", "to_state", "actor", "at")


def _bulk_jobs(db: Database, owners: list[tuple[str, str, str]], count: int) -> None:
    """``count`` jobs of ``owners``, each with its last transition (``get`` reads the
    transitions), in one transaction: COPY on PostgreSQL, batched executemany of
    SQLAlchemy core inserts on SQLite."""
    if not count:
        return
    now = datetime.now(UTC)

    def jobs() -> Iterator[tuple[object, ...]]:
        # The same rows on every call: the ids come from a seeded generator.
        rng = random.Random(count)  # noqa: S311 - ids for bulk rows, not secrets
        return _job_rows(owners, count, rng, now)

    if not db.is_sqlite:
        constants = tuple(
            json.dumps(v) if isinstance(v, dict) else v for v in _JOB_CONSTANTS.values()
        )
        raw = db.engine.raw_connection()
        try:
            conn: psycopg.Connection[Any] = raw.driver_connection  # type: ignore[assignment]
            # Row-level security refuses COPY into its tables: COPY into a
            # temporary table, then INSERT ... SELECT in system scope.
            with conn.transaction(), conn.cursor() as cursor:
                cursor.execute("SELECT set_config('qustody.tenant_id', 'system', true)")
                for table, columns, rows in (
                    ("jobs", (*_JOB_COLUMNS, *_JOB_CONSTANTS),
                     ((*row, *constants) for row in jobs())),
                    ("job_transitions", _TRANSITION_COLUMNS, map(_transition, jobs())),
                ):  # fmt: skip
                    names = sql.SQL(", ").join(map(sql.Identifier, columns))
                    staged = sql.Identifier(f"bulk_{table}")
                    cursor.execute(
                        sql.SQL(
                            "CREATE TEMPORARY TABLE {} ON COMMIT DROP AS SELECT {} FROM {} "
                            "WITH NO DATA"
                        ).format(staged, names, sql.Identifier(table))
                    )
                    with cursor.copy(
                        sql.SQL("COPY {} ({}) FROM STDIN").format(staged, names)
                    ) as copy:
                        for row in rows:
                            copy.write_row(row)
                    cursor.execute(
                        sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(
                            sql.Identifier(table), names, names, staged
                        )
                    )
        finally:
            raw.close()
        return
    job_table = m.Job.__table__
    add_jobs = insert(job_table).values(
        {name: literal(value, job_table.c[name].type) for name, value in _JOB_CONSTANTS.items()}
    )
    add_transitions = insert(m.JobTransition.__table__)
    rows = jobs()
    with db.write() as session:
        connection = session.connection()
        while batch := list(itertools.islice(rows, 20_000)):
            connection.execute(add_jobs, [dict(zip(_JOB_COLUMNS, r, strict=True)) for r in batch])
            connection.execute(
                add_transitions,
                [dict(zip(_TRANSITION_COLUMNS, _transition(r), strict=True)) for r in batch],
            )


def _deployment(
    label: str, url: str, directory: Path, other_tenants: int, foreign_jobs: int
) -> _Deployment:
    start = time.perf_counter()
    with _quiet():
        runtime = build_runtime(
            load_settings({}, data_dir=directory, database_url=url, embedded_worker=False)
        )
    try:
        root, developer = _seed_measured_tenant(runtime)
        owners = _bulk_tenants(runtime, other_tenants)
        _bulk_jobs(runtime.services.db, owners, foreign_jobs)
        db = runtime.services.db
        if not db.is_sqlite:
            # What autovacuum would have done after such a load.
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("ANALYZE"))
    except BaseException:
        runtime.close()
        raise
    return _Deployment(label, runtime, root, developer, seed_seconds=time.perf_counter() - start)


_OPS = ("submit", "get", "list")


def _exercise(
    deployments: list[_Deployment], rounds: int, per_round: int, *, tenant_creates: int = 0
) -> dict[str, dict[str, list[float]]]:
    """Interleave the measured calls over ``deployments`` (so drift hits all alike).

    Returns label -> operation -> latencies (ms).
    """
    spec = SubmitRequest(project="research", backend="aer-statevector", shots=1024, qasm=GHZ3)
    samples: dict[str, dict[str, list[float]]] = {
        d.label: {op: [] for op in (*_OPS, "tenant create")} for d in deployments
    }
    rng = random.Random(11)  # noqa: S311 - which job to read, not a secret
    clock = time.perf_counter_ns
    for d in deployments:  # warm: compiled statements, connection pools, parser
        for _ in range(5):
            d.job_ids.append(d.runtime.services.jobs.submit(d.developer, _ctx(), spec).id)
        d.runtime.services.jobs.get(d.developer, _ctx(), d.job_ids[-1])
        d.runtime.services.jobs.list_jobs(d.developer, _ctx(), limit=50)
    gc.collect()
    for r in range(rounds):
        order = deployments if r % 2 == 0 else deployments[::-1]
        for d in order:
            jobs, out = d.runtime.services.jobs, samples[d.label]
            for _ in range(per_round):
                t0 = clock()
                view = jobs.submit(d.developer, _ctx(), spec)
                out["submit"].append(_ms(t0, clock()))
                d.job_ids.append(view.id)
        for d in order:
            jobs, out = d.runtime.services.jobs, samples[d.label]
            for _ in range(per_round):
                job_id = rng.choice(d.job_ids)
                t0 = clock()
                jobs.get(d.developer, _ctx(), job_id)
                out["get"].append(_ms(t0, clock()))
                t0 = clock()
                jobs.list_jobs(d.developer, _ctx(), limit=50)
                out["list"].append(_ms(t0, clock()))
    for r in range(tenant_creates):
        for d in deployments if r % 2 == 0 else deployments[::-1]:
            name = f"late-{r}-{secrets.token_hex(3)}"
            t0 = clock()
            d.runtime.services.admin.create_tenant(d.root, _ctx(), name, "admin")
            samples[d.label]["tenant create"].append(_ms(t0, clock()))
    return samples


def _growth_rows(
    kind: str, small: _Deployment, big: _Deployment, samples: dict[str, dict[str, list[float]]]
) -> list[Measurement]:
    rows: list[Measurement] = []
    for op in (*_OPS, "tenant create"):
        a, b = samples[big.label][op], samples[small.label][op]
        if not a or not b:
            continue
        for d, values in ((small, b), (big, a)):
            rows += [
                r for r in latency("growth", f"{kind} {op}, {d.label}", values)
                if r.metric == "p50"
            ]  # fmt: skip
        rows.append(
            ratio(
                "growth",
                f"{kind} {op}, {big.label} / {small.label} (goal: flat)",
                a,
                b,
                at_most=FLAT,
            )
        )
    return rows


def bench_growth(config: Config) -> list[Measurement]:
    """Per-request cost against other tenants' data: (a) tenants, (b) stored jobs."""
    default_parser_pool().start()  # validation's parser processes, started once
    few_tenants, many_tenants = config.scale(1, 1), config.scale(1_000, 10)
    few_jobs, many_jobs = config.scale(1_000, 10), config.scale(1_000_000, 100)
    job_owners = config.scale(100, 5)  # other tenants holding the jobs in (b)
    rounds, per_round = config.scale(10, 1), config.scale(20, 3)
    directory = _workdir(config, "growth")
    rows: list[Measurement] = []

    def plural(n: int, word: str) -> str:
        return f"{n:,} {word}{'' if n == 1 else 's'}"

    experiments = (
        # (name, (label, other tenants, foreign jobs) small, then big)
        ("tenants", (plural(few_tenants, "tenant"), few_tenants - 1, 0),
         (plural(many_tenants, "tenant"), many_tenants - 1, 0), True),
        ("jobs", (f"{few_jobs:,} foreign jobs", job_owners, few_jobs),
         (f"{many_jobs:,} foreign jobs", job_owners, many_jobs), False),
    )  # fmt: skip
    for kind in _database_kinds(config):
        for name, small_spec, big_spec, creates in experiments:
            with contextlib.ExitStack() as stack:
                built: list[_Deployment] = []
                for label, others, jobs in (small_spec, big_spec):
                    url = stack.enter_context(
                        _database_url(config, kind, directory, f"{name}-{len(built)}")
                    )
                    place = directory / f"{kind}-{name}-{len(built)}"
                    deployment = _deployment(label, url, place, others, jobs)
                    stack.callback(deployment.runtime.close)
                    built.append(deployment)
                small, big = built
                samples = _exercise(
                    built, rounds, per_round, tenant_creates=config.scale(10, 2) if creates else 0
                )
                rows += _growth_rows(kind, small, big, samples)
                rows.append(
                    Measurement(
                        "growth", f"{kind} seeding, {big.label}", "once", big.seed_seconds, "s"
                    )
                )
    return rows


BENCHMARKS: dict[str, Benchmark] = {
    "policy": bench_policy,
    "encryption": bench_encryption,
    "audit": bench_audit,
    "auditlog": bench_audit_log,
    "growth": bench_growth,
}

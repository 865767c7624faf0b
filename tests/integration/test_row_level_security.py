"""Row-level security on PostgreSQL: a query that forgets its tenant filter
still sees, and writes, one tenant's rows only.

The gateway connects as a role of this test run that owns the database and
is neither a superuser nor ``BYPASSRLS`` (``tests/conftest.py``), as in
production. Tenants ``acme`` and ``globex`` get rows in every tenant-owned
table, through the services wherever a service writes the table (run in
their tenant's scope, as the API binds it) and by direct inserts for the
rest; then deliberately unfiltered queries read each table in each scope.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
import uvicorn
from alembic import command
from alembic.config import Config
from fastapi import FastAPI
from psycopg import sql
from sqlalchemy import Table, insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from qustody.api.app import Runtime, create_app
from qustody.api.auth import CallerDep
from qustody.audit.recorder import Actor, event_row, record_rows
from qustody.crypto.sealed import XWingPrivateKey
from qustody.domain.errors import ConfigurationError, InsecureDevelopmentWarning
from qustody.domain.vocabulary import Action, DataClass, Role
from qustody.jobs.service import SubmitRequest
from qustody.keys.service import Purpose
from qustody.policy.audit_reader import EventQuery
from qustody.storage import models as m
from qustody.storage.db import (
    MIGRATIONS,
    NO_TENANT,
    SYSTEM,
    Database,
    current_scope,
    scope_bound,
    system_scope,
    tenant,
    tenant_scope,
)
from support import Tenancy, auth, ctx, free_port, ghz_qasm2

pytestmark = pytest.mark.postgres

#: Tables that hold no tenant's data, and why; every other table must carry
#: ``tenant_id`` and a row-level security policy.
GLOBAL_TABLES = {
    "audit_head": "a counter",
    "audit_tree": "hashes of the audit log's Merkle tree",
    "audit_tree_head": "a counter",
    "audit_checkpoints": "signed tree heads",
    "dpop_proofs": "proof ids seen, before any tenant is known",
    "login_requests": "browser sign-ins in flight, before any tenant is known",
    "backend_prices": "the platform's price list of its backends, the same for every tenant",
    "rate_limit_buckets": "brute-force buckets keyed by digests of addresses and account names, "
    "checked before any tenant is known",
    "backend_states": "the platform's backends: paused or not, their concurrency limits",
    "maintenance_windows": "the platform's maintenance windows of its shared backends",
    "scheduler_clock": "the fair queue's virtual time, one number",
}

#: A valid tenant policy that changes no decision.
NEVER_FORBIDS = (
    '@id("never")\nforbid (principal, action, resource) when { principal.tenant == "" };'
)


@pytest.fixture
def database_url(postgres_url: str) -> str:
    """This module runs on PostgreSQL only (SQLite has no row-level security)."""
    return postgres_url


def tenant_tables() -> dict[str, Table]:
    """Every table whose rows belong to a tenant, from the models."""
    return {
        name: table
        for name, table in m.Base.metadata.tables.items()
        if "tenant_id" in table.c or name == "tenants"
    }


def _owner(table: str) -> str:
    return "id" if table == "tenants" else "tenant_id"


# -- the schema ----------------------------------------------------------------------------


def test_every_tenant_owned_table_has_a_forced_policy(db: Database) -> None:
    tables = tenant_tables()
    with db.reading(scope=SYSTEM) as connection:
        flags = {
            row.relname: (row.relrowsecurity, row.relforcerowsecurity)
            for row in connection.execute(
                text(
                    "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class "
                    "WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"
                )
            )
        }
        policies = {
            row.tablename: (row.cmd, row.qual, row.with_check)
            for row in connection.execute(
                text("SELECT tablename, cmd, qual, with_check FROM pg_policies")
            )
        }
    for name in m.Base.metadata.tables:
        if name in tables:
            continue
        assert name in GLOBAL_TABLES, (
            f"table {name} has no tenant_id: give it one and a policy (a migration like "
            "0006), or list it in GLOBAL_TABLES with the reason it holds no tenant's data"
        )
    for name in tables:
        assert flags.get(name) == (True, True), f"{name}: row-level security not enabled+forced"
        assert name in policies, f"{name} has no row-level security policy"
        cmd, qual, check = policies[name]
        assert cmd == "ALL"
        for expression in (qual, check):
            assert "qustody.tenant_id" in expression
            assert _owner(name) in expression
    for name in GLOBAL_TABLES:
        assert flags[name] == (False, False), f"{name} is global; it needs no policy"


def _secured(db: Database) -> set[str]:
    with db.reading(scope=SYSTEM) as connection:
        return set(
            connection.execute(
                text(
                    "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
                    "AND relrowsecurity AND relforcerowsecurity"
                )
            ).scalars()
        )


def test_the_migration_goes_down_and_up_again(db: Database) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    assert _secured(db) == set(tenant_tables())
    for target, expected in (("0005", set()), ("head", set(tenant_tables()))):
        with db.writing(scope=SYSTEM) as connection:
            config.attributes["connection"] = connection
            if target == "head":
                command.upgrade(config, target)
            else:
                command.downgrade(config, target)
        assert _secured(db) == expected


def test_a_scope_is_a_tenant_id_or_a_reserved_value(db: Database) -> None:
    for bad in (SYSTEM, NO_TENANT, "ten_x'; SET ROLE postgres; --", "ten x", "é"):
        with pytest.raises(ValueError, match="not a tenant id"):
            tenant(bad)
    with pytest.raises(ValueError, match="not a database scope"), db.reading(scope="x'y") as c:
        c.execute(text("SELECT 1"))
    assert tenant("ten_01M80CD05F0XVRXY80R0FQN9AV") == "ten_01M80CD05F0XVRXY80R0FQN9AV"


def test_the_gateway_role_is_bound_by_row_level_security(db: Database) -> None:
    with db.reading() as connection:
        superuser, bypass = connection.execute(
            text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
        ).one()
    assert (superuser, bypass) == (False, False)
    db.check_isolation(production=True)  # no complaint


# -- seeding every table for two tenants -------------------------------------------------------


@dataclass
class Seeded:
    tenancy: Tenancy
    tenants: dict[str, str]  # name -> id

    @property
    def runtime(self) -> Runtime:
        return self.tenancy.runtime

    @property
    def db(self) -> Database:
        return self.runtime.services.db


def _tenant_rows(connection: object, tenant_id: str, principal_id: str, project_id: str) -> None:
    """Rows for the tables whose services other parts of Qustody build."""
    now = datetime.now(UTC)
    later = now + timedelta(days=30)
    short = tenant_id[-8:].lower()
    rows: list[tuple[Table, dict[str, object]]] = [
        (
            m.FEDERATED_IDENTITIES,
            {
                "tenant_id": tenant_id,
                "principal_id": principal_id,
                "issuer": "https://idp.example",
                "subject": f"user-{short}",
                "created_at": now,
            },
        ),
        (
            m.TRUST_RULES,
            {
                "id": f"trl_{short}",
                "tenant_id": tenant_id,
                "name": "ci",
                "issuer": "https://ci.example",
                "audience": "qustody",
                "conditions": {"repository": f"org/{short}"},
                "principal_id": principal_id,
                "scopes": "jobs:submit",
                "ttl_seconds": 600,
                "enabled": True,
                "created_at": now,
                "created_by": principal_id,
            },
        ),
        (
            m.API_KEYS,
            {
                "id": f"key_{short}",
                "tenant_id": tenant_id,
                "principal_id": principal_id,
                "name": "robot",
                "digest": hashlib.sha256(short.encode()).hexdigest(),
                "scopes": "jobs:read",
                "created_at": now,
                "created_by": principal_id,
                "expires_at": later,
            },
        ),
        (
            m.LOCAL_ACCOUNTS,
            {
                "principal_id": principal_id,
                "tenant_id": tenant_id,
                "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
                "created_at": now,
                "updated_at": now,
            },
        ),
        (
            m.SCIM_GROUPS,
            {
                "id": f"grp_{short}",
                "tenant_id": tenant_id,
                "display_name": "researchers",
                "role": Role.DEVELOPER.value,
                "project_id": project_id,
                "created_at": now,
                "updated_at": now,
            },
        ),
        (
            m.SCIM_GROUP_MEMBERS,
            {"group_id": f"grp_{short}", "principal_id": principal_id, "tenant_id": tenant_id},
        ),
        (
            m.TENANT_POLICIES,
            {
                "tenant_id": tenant_id,
                "version": 1,
                "text": NEVER_FORBIDS,
                "sha256": "0" * 64,
                "created_at": now,
                "created_by": principal_id,
            },
        ),
        (
            m.ALERTS,
            {
                "id": f"alr_{short}",
                "tenant_id": tenant_id,
                "kind": "budget.threshold",
                "payload": {"threshold": 80},
                "created_at": now,
            },
        ),
    ]
    rows += [
        (
            m.APPROVAL_REQUESTS,
            {
                "id": f"apr_{short}",
                "tenant_id": tenant_id,
                "kind": "action",
                "action": "key:rotate",
                "resource_type": "tenant",
                "resource_id": tenant_id,
                "requester_id": principal_id,
                "reason": "rotate after the audit",
                "ticket": "CHG-1",
                "required": 1,
                "approvals": 0,
                "policy_ids": "approval-keys-and-policy",
                "state": "pending",
                "created_at": now,
                "expires_at": now,
            },
        ),
        (
            m.APPROVAL_VOTES,
            {
                "approval_id": f"apr_{short}",
                "tenant_id": tenant_id,
                "approver_id": principal_id,
                "verdict": "deny",
                "at": now,
            },
        ),
        (
            m.ACCESS_GRANTS,
            {
                "id": f"grt_{short}",
                "tenant_id": tenant_id,
                "principal_id": principal_id,
                "role": "viewer",
                "breakglass": False,
                "reason": "on call",
                "starts_at": now,
                "expires_at": now,
            },
        ),
    ]
    rows += [
        (
            m.WEBHOOK_ENDPOINTS,
            {
                "id": f"whk_{short}",
                "tenant_id": tenant_id,
                "platform": False,
                "url": "https://alerts.example.com/hook",
                "kinds": ["budget.*"],
                "created_at": now,
                "created_by": principal_id,
            },
        ),
        (m.WEBHOOK_FANOUT, {"alert_id": f"alr_{short}", "tenant_id": tenant_id, "at": now}),
        (
            m.WEBHOOK_DELIVERIES,
            {
                "id": f"msg_{short}",
                "tenant_id": tenant_id,
                "alert_id": f"alr_{short}",
                "endpoint_id": f"whk_{short}",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            },
        ),
    ]
    rows += [
        (
            m.QUOTAS,
            {
                "id": f"quo_{short}",
                "tenant_id": tenant_id,
                "scope": "tenant",
                "metric": "queued_jobs",
                "maximum": 10,
                "updated_at": now,
                "updated_by": principal_id,
            },
        ),
        (
            m.BUDGETS,
            {
                "id": f"bud_{short}",
                "tenant_id": tenant_id,
                "scope": "tenant",
                "period": "month",
                "maximum": 10_000_000,
                "thresholds": [50, 80, 100],
                "updated_at": now,
                "updated_by": principal_id,
            },
        ),
        (
            m.BUDGET_CROSSINGS,
            {
                "budget_id": f"bud_{short}",
                "period_start": now,
                "threshold": 50,
                "tenant_id": tenant_id,
                "alert_id": f"alr_{short}",
                "at": now,
            },
        ),
    ]
    # (tenant_shares: the worker's claim of the tenant's job made its row.)
    rows += [
        (
            m.RESERVATIONS,
            {
                "id": f"rsv_{short}",
                "tenant_id": tenant_id,
                "backend": "aer-statevector",
                "starts_at": now,
                "ends_at": now,
                "reason": "seeded",
                "created_at": now,
                "created_by": principal_id,
            },
        ),
        (
            m.JOB_SESSIONS,
            {
                "id": f"ses_{short}",
                "tenant_id": tenant_id,
                "principal_id": principal_id,
                "backend": "aer-statevector",
                "state": "open",
                "created_at": now,
                "expires_at": now,
            },
        ),
    ]
    for table, values in rows:
        connection.execute(insert(table), values)  # type: ignore[attr-defined]


@pytest.fixture
def seeded(tenancy: Tenancy) -> Iterator[Seeded]:
    runtime = tenancy.runtime
    services = runtime.services
    tenants: dict[str, str] = {}
    worker, sandbox = runtime.make_worker(slots=1)
    try:
        for name, admin_name, developer in (
            ("acme", "acme-admin", tenancy.developer),
            ("globex", "globex-admin", tenancy.outsider),
        ):
            tenant_id = developer.tenant_id
            tenants[name] = tenant_id
            admin = tenancy.principal(admin_name, name)
            project = tenancy.project_id if name == "acme" else tenancy.outsider_project_id
            # As the API runs them: bound to the caller's tenant.
            with tenant_scope(tenant_id):
                services.admin.create_project(admin, ctx(), "scratch", DataClass.INTERNAL)
                services.tenant_keys.set_secret(admin, ctx(), "provider-token", b"s3cret")
                services.tenant_keys.set_export_key(
                    admin, ctx(), XWingPrivateKey.generate().public_key.to_text()
                )
                services.tenant_keys.rotate(admin, ctx(), None)
                job = services.jobs.submit(
                    developer,
                    ctx(),
                    SubmitRequest(
                        project="research",
                        backend="aer-statevector",
                        shots=16,
                        qasm=ghz_qasm2(2),
                        name=f"{name} job",
                    ),
                )
            # The worker runs in system scope (its own process's default).
            claimed = worker.claim()
            assert claimed is not None
            assert claimed.job_id == job.id
            worker.run_claimed(claimed)
            with tenant_scope(tenant_id):
                assert services.jobs.result(developer, ctx(), job.id).counts
                assert services.jobs.get(developer, ctx(), job.id).state == "completed"
                scratch = services.admin.get_project(admin, ctx(), "scratch")
            # Crypto-shredding is an operator's command: system scope.
            with system_scope():
                runtime.keys.destroy(Actor.system("cli:operator"), tenant_id, scratch.id, "test")
            with services.db.writing(scope=SYSTEM) as connection:
                _tenant_rows(connection, tenant_id, developer.id, project)
        yield Seeded(tenancy, tenants)
    finally:
        worker.stop()
        sandbox.close()


# -- reading -------------------------------------------------------------------------------


def _owners(db: Database, table: str, scope: str) -> list[str | None]:
    """Each row's owner, by a query with no tenant filter at all."""
    with db.reading(scope=scope) as connection:
        return list(
            connection.execute(text(f"SELECT {_owner(table)} FROM {table}")).scalars()  # noqa: S608
        )


def test_an_unfiltered_query_sees_only_the_scoped_tenants_rows(seeded: Seeded) -> None:
    acme, globex = seeded.tenants["acme"], seeded.tenants["globex"]
    for table in tenant_tables():
        everything = set(_owners(seeded.db, table, SYSTEM))
        assert {acme, globex} <= everything, (
            f"seed {table} for both tenants in this test, so its isolation is checked"
        )
        for tenant_id in (acme, globex):
            seen = set(_owners(seeded.db, table, tenant_id))
            assert seen == {tenant_id}, f"{table} under {tenant_id}'s scope showed {seen}"


def test_the_platforms_own_audit_events_are_for_the_system_only(seeded: Seeded) -> None:
    # config:load (recorded at start-up) belongs to no tenant.
    assert None in _owners(seeded.db, "audit_events", SYSTEM)
    for tenant_id in seeded.tenants.values():
        assert None not in _owners(seeded.db, "audit_events", tenant_id)


def test_without_a_tenant_nothing_is_visible(seeded: Seeded) -> None:
    for table in tenant_tables():
        assert _owners(seeded.db, table, NO_TENANT) == [], table
    # A connection that bypasses the service layer sets no scope at all.
    url = make_url(seeded.runtime.services.settings.resolved_database_url)
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as connection:
        for table in tenant_tables():
            count = connection.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            ).fetchone()
            assert count == (0,), table


def test_a_request_starts_with_no_tenant_and_token_checks_still_work(seeded: Seeded) -> None:
    services = seeded.runtime.services
    token = seeded.tenancy.token_for("acme-dev")
    with scope_bound(NO_TENANT):
        principal = services.tokens.authenticate(token)  # scoped by the token's tenant
        assert principal.tenant_id == seeded.tenants["acme"]
        with services.db.reading() as connection:
            assert connection.execute(text("SELECT count(*) FROM jobs")).scalar() == 0


# -- writing -------------------------------------------------------------------------------


def _refused(db: Database, scope: str, statement: str, **params: object) -> None:
    with pytest.raises(ProgrammingError, match="row-level security"), db.writing(scope=scope) as c:
        c.execute(text(statement), params)


def test_writes_into_another_tenant_are_refused(seeded: Seeded) -> None:
    db = seeded.db
    acme, globex = seeded.tenants["acme"], seeded.tenants["globex"]
    now = datetime.now(UTC)
    _refused(
        db,
        acme,
        "INSERT INTO projects (id, tenant_id, name, data_class, created_at) "
        "VALUES ('prj_x', :t, 'planted', 'internal', :now)",
        t=globex,
        now=now,
    )
    _refused(db, acme, "UPDATE projects SET tenant_id = :t", t=globex)
    _refused(db, acme, "UPDATE jobs SET tenant_id = :t", t=globex)
    _refused(
        db, acme, "INSERT INTO tenants (id, name, created_at) VALUES ('ten_x', 'x', :now)", now=now
    )
    # The audit log: neither another tenant's events nor the platform's.
    for owner in (globex, None):
        row = event_row(Action.JOB_READ, actor=Actor("planted", owner))
        with (
            pytest.raises(ProgrammingError, match="row-level security"),
            db.writing(scope=acme) as connection,
        ):
            record_rows(connection, [row])

    # Another tenant's rows are out of reach: nothing matches.
    with db.writing(scope=acme) as connection:
        for statement in (
            "UPDATE jobs SET shots = 1 WHERE tenant_id = :t",
            "DELETE FROM secrets WHERE tenant_id = :t",
            "DELETE FROM memberships WHERE tenant_id = :t",
            "UPDATE tenants SET name = 'renamed' WHERE id = :t",
        ):
            assert connection.execute(text(statement), {"t": globex}).rowcount == 0, statement
    assert _owners(db, "secrets", SYSTEM).count(globex) == 1


# -- the services, scoped as the API scopes them ------------------------------------------------


def test_tenant_services_work_in_their_tenants_scope(seeded: Seeded) -> None:
    services = seeded.runtime.services
    tenancy = seeded.tenancy
    acme = seeded.tenants["acme"]
    admin = tenancy.principal("acme-admin")
    with tenant_scope(acme):
        page = services.jobs.list_jobs(tenancy.developer, ctx())
        assert [job.tenant_id for job in page.items] == [acme]
        assert {p.name for p in services.admin.list_projects(admin, ctx())} >= {"research"}
        members = services.admin.list_members(admin, ctx(), None)
        assert {member.name for member in members} >= {"acme-admin"}
        issued = services.admin.issue_token(
            admin, ctx(), principal_name="acme-view", scopes=None, ttl_seconds=60
        )
        services.admin.revoke_token(admin, ctx(), issued.jti)
        rings = services.tenant_keys.rings(admin, ctx())
        assert {ring.purpose for ring in rings} >= {Purpose.PAYLOAD.value, Purpose.SECRET.value}
        assert services.tenant_keys.use_secret(acme, "provider-token", job_id="job_x")
        events = services.audit.search(admin, ctx(), EventQuery(limit=500)).events
        assert events
        assert {event["event"]["tenant_id"] for event in events} == {acme}  # type: ignore[index]
        exported = list(services.audit.export(admin, ctx(), whole_log=False))
        assert exported[0]["tenant_id"] == acme


def test_platform_admin_operations_span_tenants_from_the_platform_scope(
    seeded: Seeded,
) -> None:
    services = seeded.runtime.services
    root = seeded.tenancy.principal("root", "platform")
    globex = seeded.tenants["globex"]
    with tenant_scope(root.tenant_id):  # as the API binds a platform admin's request
        names = {tenant.name for tenant in services.admin.list_tenants(root, ctx())}
        assert names >= {"platform", "acme", "globex"}
        assert services.admin.get_tenant(root, ctx(), globex).name == "globex"
        created = services.admin.create_tenant(root, ctx(), "initech", "initech-admin")
        assert services.audit.issue_checkpoint(root, ctx())
        records = list(services.audit.export(root, ctx(), whole_log=True))
    owners = {r["event"]["tenant_id"] for r in records if r["type"] == "event"}  # type: ignore[index]
    assert owners >= {None, root.tenant_id, globex, created.tenant.id}
    with tenant_scope(created.tenant.id):
        boss = services.tokens.authenticate(created.token.token)
        assert services.admin.get_tenant(boss, ctx(), created.tenant.id).name == "initech"


# -- the API binds the caller's tenant -------------------------------------------------------


def test_each_request_runs_in_its_callers_tenant_scope(seeded: Seeded) -> None:
    """Sync handlers run in a thread pool: the binding must reach that thread."""
    runtime = seeded.runtime
    with pytest.warns(InsecureDevelopmentWarning):
        app = create_app(runtime.services.settings, runtime=runtime)

    @app.get("/test/scope")
    def scope_of_caller(caller: CallerDep) -> dict[str, str]:
        with runtime.services.db.reading() as connection:
            owners = connection.execute(text("SELECT DISTINCT tenant_id FROM jobs")).scalars()
            return {"scope": current_scope(), "jobs_of": ",".join(owners)}

    @app.get("/test/anonymous")
    def scope_of_anonymous() -> dict[str, str]:
        return {"scope": current_scope()}

    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        for name, tenant in (("acme-dev", "acme"), ("globex-dev", "globex")):
            token = seeded.tenancy.token_for(name, tenant)
            answer = client.get("/test/scope", headers=auth(token))
            assert answer.status_code == 200, answer.text
            tenant_id = seeded.tenants[tenant]
            assert answer.json() == {"scope": tenant_id, "jobs_of": tenant_id}
            jobs = client.get("/v1/jobs", headers=auth(token)).json()["items"]
            assert [job["tenant_id"] for job in jobs] == [tenant_id]
        assert client.get("/test/anonymous").json() == {"scope": NO_TENANT}
        assert client.get("/test/scope").status_code == 401
    assert current_scope() == SYSTEM  # nothing leaked into the test's own context


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """``app`` behind a real uvicorn server on a loopback port, in a thread."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the server stopped"
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


# -- the role ------------------------------------------------------------------------------------


def test_production_refuses_a_role_that_ignores_row_level_security(
    postgres_server: str, postgres_admin_dsn: str
) -> None:
    superuser = make_url(postgres_admin_dsn).set(drivername="postgresql+psycopg")
    role = f"qustody_bypass_{make_url(postgres_server).database}"[:63]
    bypass = make_url(postgres_server).set(username=role, password="bypass-password")
    with psycopg.connect(postgres_admin_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN BYPASSRLS PASSWORD 'bypass-password'").format(
                sql.Identifier(role)
            )
        )
    try:
        for url, what in ((superuser, "a superuser"), (bypass, "bypass row-level security")):
            database = Database(url.render_as_string(hide_password=False))
            try:
                with pytest.raises(ConfigurationError, match=what):
                    database.check_isolation(production=True)
                with pytest.warns(InsecureDevelopmentWarning, match="BYPASSRLS"):
                    database.check_isolation(production=False)
            finally:
                database.dispose()
    finally:
        with psycopg.connect(postgres_admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))

"""Shared fixtures: real databases (SQLite files and a fresh PostgreSQL database per run)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

PG_ADMIN_DSN = os.environ.get("QUSTODY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_available() -> str | None:
    try:
        with psycopg.connect(PG_ADMIN_DSN, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL at {PG_ADMIN_DSN} is not reachable ({type(exc).__name__})"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, dropped afterwards.

    Yields a SQLAlchemy URL. Skips when no server answers, except in CI
    (``CI=true``), where a missing server is a failure.
    """
    problem = _pg_available()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    name = f"qustody_test_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """An empty schema-less database per test: tables are dropped after each test."""
    yield postgres_server
    with psycopg.connect(
        postgres_server.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True
    ) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'qustody.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


# -- a gateway built in-process, on a real database ------------------------------------

from dataclasses import dataclass  # noqa: E402

from qustody.api.app import Runtime, build_runtime  # noqa: E402
from qustody.domain.models import Principal, RequestContext  # noqa: E402
from qustody.domain.vocabulary import DataClass, Role  # noqa: E402
from qustody.settings import load_settings  # noqa: E402


@dataclass
class Tenancy:
    """A tenant ``acme`` with project ``research`` and one principal per role,
    plus a second tenant ``globex`` to test isolation against."""

    runtime: Runtime
    tenant_admin: Principal
    developer: Principal
    viewer: Principal
    outsider: Principal  # developer in tenant globex
    project_id: str
    outsider_project_id: str

    def token_for(self, name: str, tenant: str = "acme") -> str:
        return self.runtime.services.admin.operator_token(name, tenant).token

    def principal(self, name: str, tenant: str = "acme") -> Principal:
        return self.runtime.services.tokens.authenticate(self.token_for(name, tenant))


def ctx() -> RequestContext:
    return RequestContext(request_id="req_test", client_addr="127.0.0.1", user_agent="pytest")


def seed(runtime: Runtime) -> Tenancy:
    services = runtime.services
    admin = services.admin
    admin.init_platform("root")
    root = services.tokens.authenticate(admin.operator_token("root").token)
    projects: dict[str, str] = {}
    for tenant, tadmin in (("acme", "acme-admin"), ("globex", "globex-admin")):
        admin.create_tenant(root, ctx(), tenant, tadmin)
        boss = services.tokens.authenticate(admin.operator_token(tadmin, tenant).token)
        project = admin.create_project(boss, ctx(), "research", DataClass.INTERNAL)
        projects[tenant] = project.id
        for name, role in (("dev", Role.DEVELOPER), ("view", Role.VIEWER)):
            admin.add_member(
                boss, ctx(), principal_name=f"{tenant}-{name}", role=role, project_ref="research"
            )
    tenancy = Tenancy(runtime, None, None, None, None, projects["acme"], projects["globex"])  # type: ignore[arg-type]
    tenancy.tenant_admin = tenancy.principal("acme-admin")
    tenancy.developer = tenancy.principal("acme-dev")
    tenancy.viewer = tenancy.principal("acme-view")
    tenancy.outsider = tenancy.principal("globex-dev", "globex")
    return tenancy


def make_settings(tmp_path: Path, database_url: str, **overrides: object) -> object:
    return load_settings(
        {},
        data_dir=tmp_path / "data",
        database_url=database_url,
        embedded_worker=False,
        lease_seconds=2.0,
        idle_poll_seconds=0.5,
        **overrides,
    )


@pytest.fixture
def runtime(tmp_path: Path, database_url: str) -> Iterator[Runtime]:
    rt = build_runtime(make_settings(tmp_path, database_url))  # type: ignore[arg-type]
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture
def tenancy(runtime: Runtime) -> Tenancy:
    return seed(runtime)

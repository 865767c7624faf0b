"""Shared fixtures: real databases (SQLite files and a fresh PostgreSQL database per run)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import URL, make_url

from qustody.api.app import Runtime, build_runtime
from qustody.storage.db import Database
from support import Tenancy, make_settings, seed

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

    Yields a SQLAlchemy URL that connects as a role of this run, created
    with the database and owning it: not a superuser and without
    ``BYPASSRLS``, so row-level security binds it as it binds the gateway in
    production (``CREATEDB`` lets the benchmarks' smoke runs make their own
    databases). Skips when no server answers, except in CI (``CI=true``),
    where a missing server is a failure.
    """
    problem = _pg_available()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    name = f"qustody_test_{os.getpid()}_{secrets.token_hex(4)}"
    password = secrets.token_hex(16)
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN CREATEDB NOSUPERUSER NOBYPASSRLS PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(name)
            )
        )
    admin = conninfo_to_dict(PG_ADMIN_DSN)
    host = str(admin.get("host") or "127.0.0.1")
    socket_dir = host.startswith("/")  # a Unix socket's directory goes in the query
    url = URL.create(
        "postgresql+psycopg",
        username=name,
        password=password,
        host=None if socket_dir else host,
        port=int(admin.get("port") or 5432),
        database=name,
        query={"host": host} if socket_dir else {},
    )
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def postgres_admin_dsn(postgres_server: str) -> str:
    """The administrative connection (a superuser) that made the run's role and
    database, as a libpq DSN: for tests of what such a role may not do."""
    return PG_ADMIN_DSN


@pytest.fixture(scope="session")
def postgres_template(postgres_server: str) -> Iterator[str]:
    """A database of this run's role, migrated once, that each test copies
    (``CREATE DATABASE … TEMPLATE`` takes ~0.07 s where migrating a fresh
    schema takes ~0.7 s). Yields its name."""
    url = make_url(postgres_server)
    name = f"{url.database}_template"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(str(url.username))
            )
        )
    template = Database(url.set(database=name).render_as_string(hide_password=False))
    template.migrate()
    template.dispose()  # a template may have no connections while it is copied
    try:
        yield name
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def postgres_url(postgres_server: str, postgres_template: str) -> Iterator[str]:
    """A database of its own per test, at the newest schema (a copy of the
    run's migrated template), dropped afterwards."""
    url = make_url(postgres_server)
    name = f"{url.database}_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
                sql.Identifier(name),
                sql.Identifier(postgres_template),
                sql.Identifier(str(url.username)),
            )
        )
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'qustody.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """A migrated database, without the rest of a runtime."""
    database = Database(database_url)
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def runtime(tmp_path: Path, database_url: str) -> Iterator[Runtime]:
    rt = build_runtime(make_settings(tmp_path, database_url))
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture
def tenancy(runtime: Runtime) -> Tenancy:
    return seed(runtime)


# PKCS#11: SoftHSM2 tokens in a private directory for this test run.

from qustody.crypto.pkcs11 import Pkcs11Provider  # noqa: E402
from softhsm import SoftHsm, Token, find_module, softhsm_problem  # noqa: E402


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """SoftHSM2 with its own token directory; ``SOFTHSM2_CONF`` points at it
    for the whole run (SoftHSM2 reads it when the library is first loaded).

    Skips when SoftHSM2 is not installed, except in CI (``CI=true``), where
    that is a failure.
    """
    problem = softhsm_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    module = find_module()
    assert module is not None
    hsm = SoftHsm.create(tmp_path_factory.mktemp("softhsm"), module)
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(hsm.config)
    try:
        yield hsm
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous


@pytest.fixture
def hsm_token(softhsm: SoftHsm) -> Token:
    """A fresh, empty SoftHSM2 token for the platform's keys."""
    return softhsm.init_token("platform")


@pytest.fixture
def pkcs11_provider(softhsm: SoftHsm, hsm_token: Token) -> Iterator[Pkcs11Provider]:
    """A :class:`Pkcs11Provider` logged in to a fresh token."""
    provider = Pkcs11Provider(softhsm.module, hsm_token.label, hsm_token.pin)
    try:
        yield provider
    finally:
        provider.close()


# OpenID Connect: a real provider (panva/oidc-provider on Node.js) on loopback.

from oidc import TestIdp, oidc_provider_problem, start_idp  # noqa: E402


@pytest.fixture(scope="session")
def oidc_idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestIdp]:
    """The test OpenID provider, one per run. Skips when Node.js or the
    provider package is missing, except in CI (``CI=true``): a failure there."""
    problem = oidc_provider_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    idp = start_idp(tmp_path_factory.mktemp("oidc-provider"))
    try:
        yield idp
    finally:
        idp.stop()

"""Engines, transactions and migrations for SQLite (embedded) and PostgreSQL.

SQLite runs in WAL mode with a busy timeout; a write transaction starts with
``BEGIN IMMEDIATE`` so two writers queue on the database lock instead of
failing half-way with "database is locked" when a read lock is upgraded.

Tenant scope (PostgreSQL). Every tenant-owned table has a row-level security
policy (migration 0006) keyed on the transaction-local setting
``qustody.tenant_id``, which each transaction sets as its first statement:

- a tenant id: the transaction sees and writes that tenant's rows only;
- :data:`SYSTEM`: every row (workers, the audit integrator, the key
  rewrapper, platform-admin operations, sign-in lookups before the tenant
  is known);
- :data:`NO_TENANT` (or no setting at all, as for any connection that
  bypasses this class): no tenant's rows.

Which scope a transaction gets: the ``scope=`` its caller passes to
:meth:`Database.write` (and ``read``, ``reading``, ``writing``); else the scope
bound to the current context (:func:`tenant_scope`, :func:`system_scope`,
:func:`bind_scope`); else :data:`SYSTEM`. Processes that serve no request
(the worker, CLI commands, start-up) are the platform itself; the API binds
:data:`NO_TENANT` at the start of each request and the caller's tenant once
the caller is authenticated, so request paths never run unbound. SQLite has
no row-level security: there the scope is not sent.
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, overload

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, sessionmaker

from qustody.domain.errors import (
    ConfigurationError,
    InsecureDevelopmentWarning,
    ServiceUnavailable,
)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_WRITE = "qustody_write"
_SCOPE = "qustody_scope"
#: How long a SQLite writer waits for its turn before the request gets a 503.
WRITER_WAIT_SECONDS = 30.0

#: The scope that sees every tenant's rows (and the platform's own audit events).
SYSTEM = "system"
#: The scope that sees no tenant's rows: a request before its caller is known.
NO_TENANT = ""
#: The setting the row-level security policies read (migration 0006).
SCOPE_SETTING = "qustody.tenant_id"
#: What a scope may look like: it is spelled into the statement that begins
#: each transaction (tenant ids are ``ten_`` and a ULID).
_SCOPE_VALUE = re.compile(r"[A-Za-z0-9_-]{0,64}")
_bound: ContextVar[str | None] = ContextVar("qustody_tenant_scope", default=None)


def tenant(tenant_id: str) -> str:
    """``tenant_id`` as a scope; refuses the reserved values, so no id can
    pass for :data:`SYSTEM` or :data:`NO_TENANT`, and anything that is not
    shaped like an id."""
    if (
        not isinstance(tenant_id, str)
        or tenant_id in (SYSTEM, NO_TENANT)
        or not _SCOPE_VALUE.fullmatch(tenant_id)
    ):
        raise ValueError(f"{tenant_id[:80]!r} is not a tenant id")
    return tenant_id


def current_scope() -> str:
    """The scope bound to this context; :data:`SYSTEM` when none is."""
    bound = _bound.get()
    return SYSTEM if bound is None else bound


def bind_scope(scope: str) -> None:
    """Bind ``scope`` for the rest of the current context (a request's task:
    the threads that run its handler get a copy). Prefer the ``with`` forms."""
    _bound.set(scope)


@contextmanager
def scope_bound(scope: str) -> Iterator[None]:
    """Transactions begun inside (in this context) get ``scope``."""
    token = _bound.set(scope)
    try:
        yield
    finally:
        _bound.reset(token)


def tenant_scope(tenant_id: str) -> AbstractContextManager[None]:
    """Transactions begun inside see ``tenant_id``'s rows only."""
    return scope_bound(tenant(tenant_id))


def system_scope() -> AbstractContextManager[None]:
    """Transactions begun inside see every tenant's rows."""
    return scope_bound(SYSTEM)


def _postgres_connect(dbapi_connection: Any, _record: object) -> None:
    # psycopg opens no transaction of its own; _postgres_begin does. (An
    # isolation_level option would switch autocommit off again; none is used.)
    dbapi_connection.autocommit = True


def _postgres_begin(conn: Connection) -> None:
    """Begin the transaction in its scope: one round trip, as psycopg's own
    ``BEGIN`` was (the scope costs no extra one)."""
    scope = conn.get_execution_options().get(_SCOPE)
    statement = _begin_in(current_scope() if scope is None else scope)
    cursor = conn.connection.cursor()
    try:
        # No parameters: the simple query protocol, which carries both statements.
        cursor.execute(statement)
    finally:
        cursor.close()


@functools.lru_cache(maxsize=4096)
def _begin_in(scope: str) -> str:
    if not _SCOPE_VALUE.fullmatch(scope):
        raise ValueError(f"{scope[:80]!r} is not a database scope")
    return f"BEGIN; SELECT set_config('{SCOPE_SETTING}', '{scope}', true)"


def _sqlite_pragmas(dbapi_connection: Any, _record: object) -> None:
    # pysqlite's own transaction handling is switched off; we emit BEGIN ourselves.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get(_WRITE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Database:
    """One database, with a session factory for reads and one for writes."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        # hide_parameters: bound values never appear in error messages or logs.
        kwargs: dict[str, Any] = {"echo": echo, "hide_parameters": True}
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs.update(pool_pre_ping=True, pool_size=10, max_overflow=20)
        self.engine: Engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        else:
            event.listen(self.engine, "connect", _postgres_connect)
            event.listen(self.engine, "begin", _postgres_begin)
        self._writer_lock = threading.Lock() if self.is_sqlite else None
        self._writer_file = _sqlite_lock_file(self.engine) if self.is_sqlite else None
        self._writer_fd: tuple[int, int] | None = None  # (pid, fd), opened lazily
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write_engine = self.engine.execution_options(**{_WRITE: True})
        self._write = sessionmaker(self._write_engine, expire_on_commit=False)

    @contextmanager
    def write(self, *, scope: str | None = None) -> Iterator[Session]:
        """A write transaction: committed on success, rolled back on any error.

        On SQLite, writers queue for the single writer slot first (see
        :meth:`_writer_queue`). Actions registered with :func:`before_commit`
        run last, inside the transaction. ``scope``: whose rows it sees
        (module docstring); by default the bound scope.
        """
        with (
            self._writer_queue(),
            self._write() as session,
            session.begin(),
            _transaction_hooks(session.connection(**_options(scope))) as hooks,
        ):
            yield session
            hooks.run()

    @contextmanager
    def _writer_queue(self) -> Iterator[None]:
        """On SQLite, queue for the single writer slot: threads of this process
        on a lock, processes (API replicas, the worker) on an ``flock`` of a
        file beside the database, retried after naps of at most 2 ms where
        SQLite's own busy handler sleeps with back-off up to tens of ms. After
        :data:`WRITER_WAIT_SECONDS` the write fails with a 503."""
        if self._writer_lock is None:
            yield
            return
        deadline = time.monotonic() + WRITER_WAIT_SECONDS
        if not self._writer_lock.acquire(timeout=WRITER_WAIT_SECONDS):
            raise _busy()
        try:
            fd = self._writer_descriptor()
            if fd is not None:
                _flock_until(fd, deadline)
            try:
                yield
            finally:
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._writer_lock.release()

    def _writer_descriptor(self) -> int | None:
        if self._writer_file is None:
            return None
        pid = os.getpid()
        if self._writer_fd is None or self._writer_fd[0] != pid:
            # A forked child gets its own open file: flock belongs to the open file.
            fd = os.open(self._writer_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._writer_fd = (pid, fd)
        return self._writer_fd[1]

    @contextmanager
    def read(self, *, scope: str | None = None) -> Iterator[Session]:
        with self._read() as session, session.begin():
            if scope is not None:
                session.connection(**_options(scope))
            yield session

    @contextmanager
    def reading(self, *, scope: str | None = None) -> Iterator[Connection]:
        """A read transaction on a bare connection, for Core queries on hot paths.

        A session costs about three times the work of the query it runs;
        per-request lookups (token, project) use this instead.
        """
        with self.engine.connect() as connection:
            if scope is not None:
                connection.execution_options(**{_SCOPE: scope})
            try:
                yield connection
            finally:
                connection.rollback()

    @contextmanager
    def writing(self, *, scope: str | None = None) -> Iterator[Connection]:
        """:meth:`write` on a bare connection, for Core-only write paths."""
        with self._writer_queue(), self._write_engine.connect() as connection:
            if scope is not None:
                connection.execution_options(**{_SCOPE: scope})
            with connection.begin(), _transaction_hooks(connection) as hooks:
                yield connection
                hooks.run()

    def migrate(self) -> None:
        """Bring the schema to the newest revision (idempotent)."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.set_main_option("path_separator", "os")
        with self.engine.connect() as connection:
            connection.execution_options(**{_SCOPE: SYSTEM})
            with connection.begin():
                config.attributes["connection"] = connection
                command.upgrade(config, "head")

    def check_isolation(self, *, production: bool) -> None:
        """Refuse (production) or warn about (development) a PostgreSQL role
        that row-level security does not bind: a superuser, or one with
        ``BYPASSRLS``, sees every tenant's rows whatever the scope."""
        if self.is_sqlite:
            return
        with self.reading() as connection:
            role, superuser, bypass = connection.execute(
                text(
                    "SELECT rolname, rolsuper, rolbypassrls FROM pg_roles "
                    "WHERE rolname = current_user"
                )
            ).one()
        if not (superuser or bypass):
            return
        what = "a superuser" if superuser else "allowed to bypass row-level security"
        problem = (
            f"the database role {role!r} is {what}, so row-level security cannot keep "
            "tenants apart; connect as a role without SUPERUSER and BYPASSRLS that owns "
            f"the database (CREATE ROLE qustody LOGIN; ALTER DATABASE ... OWNER TO qustody)."
        )
        if production:
            raise ConfigurationError(problem)
        warnings.warn(problem, InsecureDevelopmentWarning, stacklevel=2)

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
        if self._writer_fd is not None and self._writer_fd[0] == os.getpid():
            os.close(self._writer_fd[1])
        self._writer_fd = None


def _options(scope: str | None) -> dict[str, Any]:
    return {} if scope is None else {"execution_options": {_SCOPE: scope}}


def _busy() -> ServiceUnavailable:
    return ServiceUnavailable(
        f"the database has been busy for {WRITER_WAIT_SECONDS:g} seconds; try again shortly."
    )


def _flock_until(fd: int, deadline: float) -> None:
    """Take the writer file lock by ``deadline``: at once if it is free, else by
    polling with naps of at most 2 ms. (A blocking ``flock`` cannot time out,
    and a writer hung in another process must end in a 503, not in a request
    that never answers.)"""
    nap = 0.0002
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise _busy() from None
            time.sleep(nap)
            nap = min(nap * 2, 0.002)


_HOOKS = "qustody.transaction_hooks"


#: An action run just before commit, given the connection and the
#: transaction's scratch space.
CommitAction = Callable[[Connection, dict[str, Any]], None]


class TransactionHooks:
    """Per-transaction scratch space and actions to run just before commit."""

    def __init__(self, connection: Connection) -> None:
        self.state: dict[str, Any] = {}
        self._actions: dict[str, CommitAction] = {}
        self._connection = connection

    def run(self) -> None:
        for action in self._actions.values():
            action(self._connection, self.state)


@contextmanager
def _transaction_hooks(connection: Connection) -> Iterator[TransactionHooks]:
    # ``Connection.info`` belongs to the pooled DB-API connection and outlives
    # this transaction: whatever happens, the hooks leave with it.
    hooks = TransactionHooks(connection)
    connection.info[_HOOKS] = hooks
    try:
        yield hooks
    finally:
        connection.info.pop(_HOOKS, None)


def before_commit(
    connection: Connection, key: str, action: CommitAction
) -> TransactionHooks | None:
    """Run ``action`` once (per ``key``) as the last step of this write
    transaction, and return the transaction's hooks (their ``state`` is
    scratch space that ends with it). None when ``connection`` is not in a
    :meth:`Database.write`/:meth:`Database.writing` transaction: then nothing
    would run the action, and the caller must act at once."""
    hooks = connection.info.get(_HOOKS)
    if not isinstance(hooks, TransactionHooks):
        return None
    hooks._actions.setdefault(key, action)
    return hooks


def _sqlite_lock_file(engine: Engine) -> Path | None:
    """``<database>-writer.lock`` for a file database; None in memory."""
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).with_name(Path(database).name + "-writer.lock")


@overload
def utc(value: datetime) -> datetime: ...
@overload
def utc(value: None) -> None: ...
def utc(value: datetime | None) -> datetime | None:
    """A stored time as an aware UTC datetime: SQLite hands back naive ones,
    which are UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)

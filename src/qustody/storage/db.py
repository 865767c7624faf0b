"""Engines, transactions and migrations for SQLite (embedded) and PostgreSQL.

SQLite runs in WAL mode with a busy timeout; a write transaction starts with
``BEGIN IMMEDIATE`` so two writers queue on the database lock instead of
failing half-way with "database is locked" when a read lock is upgraded.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, sessionmaker

from qustody.domain.errors import ServiceUnavailable

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_WRITE = "qustody_write"
#: How long a SQLite writer waits for its turn before the request gets a 503.
WRITER_WAIT_SECONDS = 30.0


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
        self._writer_lock = threading.Lock() if self.is_sqlite else None
        self._writer_file = _sqlite_lock_file(self.engine) if self.is_sqlite else None
        self._writer_fd: tuple[int, int] | None = None  # (pid, fd), opened lazily
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write_engine = self.engine.execution_options(**{_WRITE: True})
        self._write = sessionmaker(self._write_engine, expire_on_commit=False)

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction: committed on success, rolled back on any error.

        On SQLite, writers queue for the single writer slot first (see
        :meth:`_writer_queue`). Actions registered with :func:`before_commit`
        run last, inside the transaction.
        """
        with (
            self._writer_queue(),
            self._write() as session,
            session.begin(),
            _transaction_hooks(session.connection()) as hooks,
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
    def read(self) -> Iterator[Session]:
        with self._read() as session, session.begin():
            yield session

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A read transaction on a bare connection, for Core queries on hot paths.

        A session costs about three times the work of the query it runs;
        per-request lookups (token, project) use this instead.
        """
        with self.engine.connect() as connection:
            try:
                yield connection
            finally:
                connection.rollback()

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """:meth:`write` on a bare connection, for Core-only write paths."""
        with (
            self._writer_queue(),
            self._write_engine.begin() as connection,
            _transaction_hooks(connection) as hooks,
        ):
            yield connection
            hooks.run()

    def migrate(self) -> None:
        """Bring the schema to the newest revision (idempotent)."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.set_main_option("path_separator", "os")
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
        if self._writer_fd is not None and self._writer_fd[0] == os.getpid():
            os.close(self._writer_fd[1])
        self._writer_fd = None


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

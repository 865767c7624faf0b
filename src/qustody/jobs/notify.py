"""Waking workers when a job is queued, so pick-up never waits on a poll.

In embedded mode the API and the worker share a process: a condition variable
does it. On PostgreSQL, ``NOTIFY qustody_jobs`` reaches every worker process
that ``LISTEN``s, on any machine. Workers still poll rarely as a safety net
(a notification sent while a worker was reconnecting is otherwise lost).
"""

from __future__ import annotations

import logging
import select
import threading
from typing import Protocol

import psycopg

CHANNEL = "qustody_jobs"
log = logging.getLogger(__name__)


class Notifier(Protocol):
    def notify(self) -> None:
        """Say that work is waiting (called after the queuing transaction commits)."""

    def wait(self, timeout: float) -> bool:
        """Block until notified or ``timeout``; True when notified."""

    def close(self) -> None: ...


class LocalNotifier:
    """Within one process: a counter under a condition variable."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending = 0

    def notify(self) -> None:
        with self._cond:
            self._pending += 1
            self._cond.notify_all()

    def wait(self, timeout: float) -> bool:
        with self._cond:
            if self._pending == 0:
                self._cond.wait(timeout)
            woke = self._pending > 0
            self._pending = 0
            return woke

    def close(self) -> None:
        self.notify()


def _libpq_dsn(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


class PostgresNotifier:
    """``NOTIFY`` to publish; a background ``LISTEN`` connection to receive.

    Local notifications are delivered too, so an embedded worker wakes even
    before the round trip through the server.
    """

    def __init__(self, database_url: str, *, listen: bool) -> None:
        self._dsn = _libpq_dsn(database_url)
        self._local = LocalNotifier()
        self._send_lock = threading.Lock()
        self._sender: psycopg.Connection[tuple[object, ...]] | None = None
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        if listen:
            self._listener = threading.Thread(target=self._listen, name="pg-listen", daemon=True)
            self._listener.start()

    def notify(self) -> None:
        self._local.notify()
        with self._send_lock:
            try:
                if self._sender is None or self._sender.closed:
                    self._sender = psycopg.connect(self._dsn, autocommit=True)
                self._sender.execute(f"NOTIFY {CHANNEL}")
            except psycopg.Error as exc:
                # Workers fall back to their idle poll; the job is safely queued.
                log.warning("could not publish job notification: %s", type(exc).__name__)
                self._sender = None

    def wait(self, timeout: float) -> bool:
        return self._local.wait(timeout)

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._local.notify()  # (re)connected: look for work missed meanwhile
                    while not self._stop.is_set():
                        ready, _, _ = select.select([conn.fileno()], [], [], 0.5)
                        if not ready:
                            continue
                        if any(True for _ in conn.notifies(timeout=0, stop_after=100)):
                            self._local.notify()
            except psycopg.Error as exc:
                log.warning("job notification listener reconnecting: %s", type(exc).__name__)
                self._stop.wait(1.0)

    def close(self) -> None:
        self._stop.set()
        self._local.close()
        if self._listener is not None:
            self._listener.join(timeout=2)
        with self._send_lock:
            if self._sender is not None:
                self._sender.close()
                self._sender = None


def notifier_for(database_url: str, *, listen: bool) -> Notifier:
    if database_url.startswith("postgresql"):
        return PostgresNotifier(database_url, listen=listen)
    return LocalNotifier()

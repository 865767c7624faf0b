"""Waking workers when a job is queued, so pick-up never waits on a poll.

In embedded mode the API and the worker share a process: a condition variable
does it. On PostgreSQL, ``NOTIFY qustody_jobs`` reaches every worker process
that ``LISTEN``s, on any machine. On SQLite, standalone workers on the same
machine each bind a Unix datagram socket in ``<data dir>/notify/`` and the
publisher sends one empty datagram to each. Workers still poll rarely as a
safety net (a notification sent while a worker was restarting is otherwise
lost).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import select
import socket
import threading
from pathlib import Path
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


class SocketDirNotifier:
    """Same-machine processes: one Unix datagram socket per listening process.

    The directory is private to the gateway's user (0700); a datagram carries
    no data, it only wakes the receiver, which then looks in the database.
    """

    def __init__(self, directory: Path, *, listen: bool) -> None:
        self._dir = directory
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._local = LocalNotifier()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._path: Path | None = None
        self._thread: threading.Thread | None = None
        if listen:
            self._path = self._dir / f"{os.getpid()}-{secrets.token_hex(4)}.sock"
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.bind(str(self._path))
            self._thread = threading.Thread(target=self._receive, name="notify", daemon=True)
            self._thread.start()

    def notify(self) -> None:
        self._local.notify()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as out:
            out.setblocking(False)
            for peer in self._dir.glob("*.sock"):
                if peer == self._path:
                    continue
                try:
                    out.sendto(b"", str(peer))
                except (ConnectionRefusedError, FileNotFoundError):
                    with contextlib.suppress(OSError):
                        peer.unlink()  # its process is gone
                except (BlockingIOError, OSError):
                    pass  # a busy peer will find the job on its next look

    def wait(self, timeout: float) -> bool:
        return self._local.wait(timeout)

    def _receive(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], 0.5)
            if ready:
                with contextlib.suppress(OSError):
                    while True:
                        self._sock.recv(16, socket.MSG_DONTWAIT)
                self._local.notify()

    def close(self) -> None:
        self._stop.set()
        self._local.close()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()


def notifier_for(database_url: str, *, listen: bool, data_dir: Path) -> Notifier:
    if database_url.startswith("postgresql"):
        return PostgresNotifier(database_url, listen=listen)
    return SocketDirNotifier(data_dir / "notify", listen=listen)

"""Two signals between processes, so nobody waits on a polling interval.

- ``queued``: a job is waiting; it wakes workers.
- ``finished``: a job reached a terminal state; it wakes API requests that
  wait for a job (``GET /v1/jobs/{id}?wait=``).

In embedded mode the API and the worker share a process: condition variables
do it. On PostgreSQL, ``NOTIFY`` on two channels reaches every process that
``LISTEN``s, on any machine. On SQLite, processes on the same machine each bind
a Unix datagram socket in ``<data dir>/notify/`` and a publisher sends one
byte to each. Waiters still re-check now and then as a safety net (a signal
sent while a process was restarting is otherwise lost).
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

QUEUED_CHANNEL = "qustody_jobs"
FINISHED_CHANNEL = "qustody_jobs_finished"
_QUEUED, _FINISHED = b"q", b"f"
log = logging.getLogger(__name__)


class Notifier(Protocol):
    def notify(self) -> None:
        """Work is waiting (call after the queuing transaction commits)."""

    def wait(self, timeout: float) -> bool:
        """A worker blocks until work may be waiting, or ``timeout``; True when woken."""

    def finished(self) -> None:
        """A job reached a terminal state (call after that transaction commits)."""

    def finished_generation(self) -> int:
        """A counter of ``finished`` signals seen; read it before checking a job."""

    def wait_finished(self, generation: int, timeout: float) -> None:
        """Block until a ``finished`` signal newer than ``generation``, or ``timeout``."""

    def close(self) -> None: ...


class LocalNotifier:
    """Within one process: a work counter and a broadcast generation."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending = 0
        self._generation = 0

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

    def finished(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def finished_generation(self) -> int:
        with self._cond:
            return self._generation

    def wait_finished(self, generation: int, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._generation != generation, timeout)

    def close(self) -> None:
        # Wake this process's waiters so they see the stop; publish nothing.
        LocalNotifier.notify(self)
        LocalNotifier.finished(self)


class _Relay(LocalNotifier):
    """A local notifier that also publishes each signal to other processes."""

    def _publish(self, signal: bytes) -> None:
        raise NotImplementedError

    def notify(self) -> None:
        super().notify()
        self._publish(_QUEUED)

    def finished(self) -> None:
        super().finished()
        self._publish(_FINISHED)

    def _received(self, signal: bytes) -> None:
        (super().notify if signal == _QUEUED else super().finished)()


def _libpq_dsn(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


class PostgresNotifier(_Relay):
    """``NOTIFY`` to publish; a background ``LISTEN`` connection to receive."""

    def __init__(self, database_url: str, *, listen: bool) -> None:
        super().__init__()
        self._dsn = _libpq_dsn(database_url)
        self._send_lock = threading.Lock()
        self._sender: psycopg.Connection[tuple[object, ...]] | None = None
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        if listen:
            self._listener = threading.Thread(target=self._listen, name="pg-listen", daemon=True)
            self._listener.start()

    def _publish(self, signal: bytes) -> None:
        channel = QUEUED_CHANNEL if signal == _QUEUED else FINISHED_CHANNEL
        with self._send_lock:
            try:
                if self._sender is None or self._sender.closed:
                    self._sender = psycopg.connect(self._dsn, autocommit=True)
                self._sender.execute(f"NOTIFY {channel}")
            except psycopg.Error as exc:
                # Waiters fall back to their safety re-check; nothing is lost.
                log.warning("could not publish a job signal: %s", type(exc).__name__)
                self._sender = None

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {QUEUED_CHANNEL}")
                    conn.execute(f"LISTEN {FINISHED_CHANNEL}")
                    # (Re)connected: look for anything missed meanwhile.
                    self._received(_QUEUED)
                    self._received(_FINISHED)
                    while not self._stop.is_set():
                        ready, _, _ = select.select([conn.fileno()], [], [], 0.5)
                        if not ready:
                            continue
                        seen = {n.channel for n in conn.notifies(timeout=0, stop_after=100)}
                        if QUEUED_CHANNEL in seen:
                            self._received(_QUEUED)
                        if FINISHED_CHANNEL in seen:
                            self._received(_FINISHED)
            except psycopg.Error as exc:
                log.warning("job signal listener reconnecting: %s", type(exc).__name__)
                self._stop.wait(1.0)

    def close(self) -> None:
        self._stop.set()
        super().close()
        if self._listener is not None:
            self._listener.join(timeout=2)
        with self._send_lock:
            if self._sender is not None:
                self._sender.close()
                self._sender = None


class SocketDirNotifier(_Relay):
    """Same-machine processes: one Unix datagram socket per listening process.

    The directory is private to the gateway's user (0700); a datagram carries
    one byte naming the signal, nothing else.
    """

    def __init__(self, directory: Path, *, listen: bool) -> None:
        super().__init__()
        self._dir = directory
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._path: Path | None = None
        self._thread: threading.Thread | None = None
        self._out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._out.setblocking(False)
        self._out_lock = threading.Lock()
        if listen:
            self._path = self._dir / f"{os.getpid()}-{secrets.token_hex(4)}.sock"
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.bind(str(self._path))
            self._thread = threading.Thread(target=self._receive, name="notify", daemon=True)
            self._thread.start()

    def _publish(self, signal: bytes) -> None:
        with self._out_lock:
            for peer in self._dir.glob("*.sock"):
                if peer == self._path:
                    continue
                try:
                    self._out.sendto(signal, str(peer))
                except (ConnectionRefusedError, FileNotFoundError):
                    with contextlib.suppress(OSError):
                        peer.unlink()  # its process is gone
                except OSError:
                    pass  # a busy peer will find the job on its next look

    def _receive(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], 0.5)
            if not ready:
                continue
            seen: set[bytes] = set()
            with contextlib.suppress(OSError):
                while True:
                    seen.add(self._sock.recv(16, socket.MSG_DONTWAIT)[:1])
            for signal in seen & {_QUEUED, _FINISHED}:
                self._received(signal)

    def close(self) -> None:
        self._stop.set()
        super().close()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()
        self._out.close()
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()


def notifier_for(database_url: str, *, listen: bool, data_dir: Path) -> Notifier:
    if database_url.startswith("postgresql"):
        return PostgresNotifier(database_url, listen=listen)
    return SocketDirNotifier(data_dir / "notify", listen=listen)

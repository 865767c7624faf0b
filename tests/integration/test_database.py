"""The SQLite writer queue: threads of one process and separate processes take
turns at the single writer slot, and none fails with "database is locked"."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from qustody.domain.errors import ServiceUnavailable
from qustody.storage import db as storage_db
from qustody.storage import models as m
from qustody.storage.db import Database

WRITES = 60


def _tenant_rows(prefix: str, n: int) -> list[dict[str, object]]:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return [
        {"id": f"ten_{prefix}{i:04d}", "name": f"{prefix}-{i}", "created_at": now} for i in range(n)
    ]


def _write_many(url: str, prefix: str) -> None:
    db = Database(url)
    try:
        for row in _tenant_rows(prefix, WRITES):
            with db.writing() as connection:
                connection.execute(insert(m.Tenant.__table__), row)
    finally:
        db.dispose()


def test_processes_and_threads_queue_for_the_writer_slot(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    Database(url).migrate()
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_write_many, args=(url, f"p{n}")) for n in range(2)]
    threads = [threading.Thread(target=_write_many, args=(url, f"t{n}")) for n in range(2)]
    for worker in [*processes, *threads]:
        worker.start()
    for thread in threads:
        thread.join(120)
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    db = Database(url)
    with db.reading() as connection:
        count = connection.execute(select(func.count()).select_from(m.Tenant.__table__)).scalar()
    assert count == 4 * WRITES


def test_a_writer_in_another_process_holds_the_queue(tmp_path: Path) -> None:
    """The queue is an ``flock`` beside the database: while someone else holds
    it, a write waits; when they let go, it goes through."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    db = Database(url)
    db.migrate()
    lock_file = tmp_path / "q.db-writer.lock"
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)  # another open file: another "process"
    fcntl.flock(fd, fcntl.LOCK_EX)
    done = threading.Event()

    def write() -> None:
        with db.writing() as connection:
            connection.execute(insert(m.Tenant.__table__), _tenant_rows("w", 1))
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert not done.wait(0.5), "the write did not wait for the writer queue"
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    writer.join(30)
    assert done.is_set()


def test_a_writer_that_never_lets_go_ends_in_service_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer hung in another process must not hang this one for ever: after
    the wait bound, the write fails with 503 ``unavailable``, writing nothing."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    db = Database(url)
    db.migrate()
    monkeypatch.setattr(storage_db, "WRITER_WAIT_SECONDS", 0.3)
    fd = os.open(tmp_path / "q.db-writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(ServiceUnavailable, match="busy"), db.writing() as connection:
            connection.execute(insert(m.Tenant.__table__), _tenant_rows("x", 1))
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    with db.reading() as connection:
        assert (
            connection.execute(select(func.count()).select_from(m.Tenant.__table__)).scalar() == 0
        )
    with db.writing() as connection:  # and the queue works again once it is free
        connection.execute(insert(m.Tenant.__table__), _tenant_rows("y", 1))

"""Audit events are numbered without gaps, in commit order, however many
writers record at once and however many of their transactions roll back; the
head that hands out the numbers only grows."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from qustody.audit.recorder import Actor, event_row, record_rows
from qustody.domain.vocabulary import Action
from qustody.storage import models as m
from qustody.storage.db import Database

THREADS = 4
TRANSACTIONS = 30


class _Rollback(Exception):
    pass


def test_concurrent_writers_leave_no_gaps(db: Database) -> None:
    committed: list[list[str]] = []
    lock = threading.Lock()

    def writer(w: int) -> None:
        for t in range(TRANSACTIONS):
            reasons = [f"w{w}-t{t}-e{e}" for e in range(1 + (w + t) % 3)]
            rows = [event_row(Action.AUTH_FAIL, actor=Actor("bench"), reason=r) for r in reasons]
            try:
                with db.writing() as connection:
                    record_rows(connection, rows)
                    if t % 5 == 4:
                        raise _Rollback  # recorded, then rolled back: its numbers return
            except _Rollback:
                continue
            with lock:
                committed.append(reasons)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    with db.reading() as connection:
        events = connection.execute(
            select(m.AUDIT_EVENTS.c.seq, m.AUDIT_EVENTS.c.reason).order_by(m.AUDIT_EVENTS.c.seq)
        ).all()
        head = connection.execute(select(m.AUDIT_HEAD.c.size)).scalar_one()
    expected = sum(len(r) for r in committed)
    assert [seq for seq, _ in events] == list(range(1, expected + 1))
    assert head == expected
    # Each transaction's events are consecutive, in the order it recorded them.
    position = {reason: seq for seq, reason in events}
    for reasons in committed:
        numbers = [position[r] for r in reasons]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))


def test_the_head_only_grows(db: Database) -> None:
    with db.writing() as connection:
        record_rows(connection, [event_row(Action.AUTH_FAIL, actor=Actor("t"))])
    for statement in ("UPDATE audit_head SET size = 0", "DELETE FROM audit_head"):
        with pytest.raises(DBAPIError, match="only grows"), db.writing() as connection:
            connection.execute(text(statement))
    with db.writing() as connection:  # growing is what recording does
        record_rows(connection, [event_row(Action.AUTH_FAIL, actor=Actor("t"))])
    with db.reading() as connection:
        assert connection.execute(select(m.AUDIT_HEAD.c.size)).scalar_one() == 2

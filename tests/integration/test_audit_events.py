"""An audit event's canonical bytes are fixed, and the same after a round trip
through SQLite or PostgreSQL, so its leaf hash can be recomputed by anyone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from qustody.audit.events import EventEncodingError, canonical, event_leaf_hash
from qustody.audit.recorder import Actor, Target, event_row, record_rows
from qustody.domain.models import RequestContext
from qustody.domain.vocabulary import Action
from qustody.storage import models as m
from qustody.storage.db import Database

AT = datetime(2026, 11, 21, 22, 37, 29, 123456, tzinfo=UTC)


def _event(**changes: object) -> dict[str, object]:
    row = event_row(
        Action.JOB_SUBMIT,
        actor=Actor("prn_1", "ten_1", "qustody-token", "jti-1", "aal2"),
        target=Target("job", "job_1", "ten_1"),
        request=RequestContext("req_1", "10.0.0.1", "qustody-cli/1 \u00e9"),
        job_id="job_1",
        approval_id="apr_1",
        payload_sha256="ab" * 32,
        reason="backend=aer shots=1024",
        at=AT,
    )
    return {**row, "seq": 7, **changes}


def test_the_encoding_is_fixed() -> None:
    assert canonical(_event()) == (
        b'{"actor_id":"prn_1","actor_tenant_id":"ten_1","approval_id":"apr_1",'
        b'"at":"2026-11-21T22:37:29.123456Z","auth_method":"qustody-token",'
        b'"auth_strength":"aal2","client_addr":"10.0.0.1","decision":null,'
        b'"event_type":"job:submit","job_id":"job_1","outcome":"success",'
        b'"payload_sha256":"' + b"ab" * 32 + b'","policy_ids":null,'
        b'"reason":"backend=aer shots=1024","request_id":"req_1","resource_id":"job_1",'
        b'"resource_type":"job","seq":7,"tenant_id":"ten_1","token_id":"jti-1",'
        b'"user_agent":"qustody-cli/1 \\u00e9","v":1}'
    )
    # The same instant in another zone, or naive (as SQLite returns it), encodes the same.
    plus_two = AT.astimezone(timezone(timedelta(hours=2)))
    assert canonical(_event(at=plus_two)) == canonical(_event())
    assert canonical(_event(at=AT.replace(tzinfo=None))) == canonical(_event())
    # Any change moves the leaf.
    assert event_leaf_hash(_event(outcome="failure")) != event_leaf_hash(_event())
    with pytest.raises(EventEncodingError):
        canonical({k: v for k, v in _event().items() if k != "reason"})
    with pytest.raises(EventEncodingError):
        canonical(_event(reason=1.5))


def test_the_encoding_survives_the_database(db: Database) -> None:
    written = [_event(), _event(reason=None, at=datetime.now(UTC))]
    with db.writing() as connection:
        record_rows(connection, [{k: v for k, v in e.items() if k != "seq"} for e in written])
    with db.reading() as connection:
        rows = connection.execute(select(m.AUDIT_EVENTS).order_by(m.AUDIT_EVENTS.c.seq)).all()
    assert [r.seq for r in rows] == [1, 2]
    for row, event in zip(rows, written, strict=True):
        assert canonical(row._mapping) == canonical({**event, "seq": row.seq})

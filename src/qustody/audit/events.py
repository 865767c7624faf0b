"""The canonical bytes of an audit event: what its Merkle leaf commits to.

An event is encoded as compact JSON with sorted keys, a fixed set of fields
for its format version (``"v"``), every timestamp in UTC as
``YYYY-MM-DDTHH:MM:SS.ffffffZ`` and only ASCII (anything else escaped). The
same bytes come out whether the event is read back from SQLite or PostgreSQL,
so anyone holding the fields can recompute the leaf; changing any field of a
stored event changes its leaf hash and breaks every proof through it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime

from qustody.audit.merkle import leaf_hash

FORMAT = 1

#: The fields an event of format 1 commits to, besides ``v``.
FIELDS = (
    "seq",
    "at",
    "event_type",
    "tenant_id",
    "actor_id",
    "actor_tenant_id",
    "auth_method",
    "auth_strength",
    "token_id",
    "client_addr",
    "user_agent",
    "resource_type",
    "resource_id",
    "decision",
    "policy_ids",
    "outcome",
    "reason",
    "request_id",
    "job_id",
    "approval_id",
    "payload_sha256",
)


#: An event's fields by name: a stored row's mapping, an export line's object.
EventFields = Mapping[str, object]


class EventEncodingError(ValueError):
    """An event lacks a field of its format, or holds a value JSON cannot carry."""


def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive time (as SQLite returns them) is taken as UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def utc_text(moment: datetime) -> str:
    """``moment`` in UTC, to the microsecond."""
    return as_utc(moment).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


#: The document's keys in sorted order, so it is built sorted and dumped as is.
_KEYS = tuple(sorted((*FIELDS, "v")))
_PLAIN = (str, int, type(None))
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)


def canonical(event: EventFields) -> bytes:
    """The canonical encoding of ``event`` (a stored row or an export line)."""
    document: dict[str, object] = {}
    for name in _KEYS:
        if name == "v":
            document["v"] = FORMAT
            continue
        try:
            value = event[name]
        except KeyError:
            raise EventEncodingError(f"the event has no {name!r} field") from None
        if isinstance(value, datetime):
            value = utc_text(value)
        elif not isinstance(value, _PLAIN) or isinstance(value, bool):
            raise EventEncodingError(f"field {name!r} holds a {type(value).__name__}")
        document[name] = value
    return _ENCODER.encode(document).encode()


def event_leaf_hash(event: EventFields) -> bytes:
    return leaf_hash(canonical(event))

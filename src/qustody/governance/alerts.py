"""Alerts: raised in the transaction of what caused them, delivered later.

:func:`raise_alert` writes a row to ``alerts`` inside the caller's
transaction: a budget crossing its threshold or a break-glass elevation
commits together with its alert, or neither does, so an alert is never
lost to a crash between the two. Delivery (signed webhooks, retries) reads
the table afterwards.

An alert's payload names what happened (ids, amounts, thresholds, reasons
given), never a token, secret or job payload.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import insert

from qustody.audit.recorder import Transaction, connection_of
from qustody.domain.ids import new_id
from qustody.storage import models as m

_INSERT = insert(m.ALERTS)


def raise_alert(
    transaction: Transaction,
    *,
    tenant_id: str | None,
    kind: str,
    payload: Mapping[str, object],
    at: datetime,
) -> str:
    """Queue an alert of ``kind`` (e.g. ``budget.threshold``,
    ``breakglass.invoked``) for ``tenant_id`` (None: the platform's
    operators); returns its id."""
    alert_id = new_id("alr")
    connection_of(transaction).execute(
        _INSERT,
        {
            "id": alert_id,
            "tenant_id": tenant_id,
            "kind": kind,
            "payload": dict(payload),
            "created_at": at,
        },
    )
    return alert_id

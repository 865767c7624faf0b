"""What a job costs: a price per backend, an estimate before it runs, a charge after.

Amounts are integers in micro-units of the platform's currency (1 000 000
is one unit), so sums never round. A backend's price has three parts, any of
which may be zero:

- ``per_task``: charged once per job;
- ``per_shot``: charged per shot;
- ``per_second``: charged per second of execution. The estimate uses the
  price's own model, ``overhead + shots x time per shot``; the charge uses
  the execution time the sandbox measured.

Prices are versioned: each version is in force from its ``effective_at``
until the next one's, and a job is estimated and charged at the version in
force when it was submitted, so a price change never reprices jobs already
accepted. A backend without a price costs nothing (:data:`FREE`): the local
Aer simulators are free unless the platform admin sets a price for them.

What is charged (docs/quotas-and-budgets.md): a completed job its full price;
a job that failed or was cancelled while running its ``per_task`` part only
(it held the backend); a job that never ran (rejected, cancelled while
queued or awaiting approval) nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection, Row

from qustody.storage import models as m

_P = m.BACKEND_PRICES
#: Micro-units in one unit of the platform's currency.
MICRO = 1_000_000
#: The largest price component accepted (a million units).
MAX_AMOUNT = 10**12


@dataclass(frozen=True, slots=True)
class Price:
    backend: str
    per_task: int = 0
    per_shot: int = 0
    per_second: int = 0
    #: The per-second estimate's model, in microseconds.
    shot_microseconds: int = 0
    overhead_microseconds: int = 0
    #: None for the default (no price set).
    effective_at: datetime | None = None
    version_id: str | None = None

    def estimate(self, shots: int) -> int:
        """What a job of ``shots`` shots is expected to cost."""
        seconds_micro = self.overhead_microseconds + self.shot_microseconds * shots
        return self.per_task + self.per_shot * shots + _per_second(self.per_second, seconds_micro)

    def charge(self, shots: int, execution_seconds: float | None, *, completed: bool) -> int:
        """What a job that ran is charged: in full when it completed, else its per-task part."""
        if not completed:
            return self.per_task
        seconds_micro = round((execution_seconds or 0.0) * MICRO)
        return self.per_task + self.per_shot * shots + _per_second(self.per_second, seconds_micro)


def _per_second(per_second: int, microseconds: int) -> int:
    """``per_second`` x seconds, rounded up to a whole micro-unit."""
    return math.ceil(per_second * microseconds / MICRO) if per_second and microseconds else 0


def free(backend: str) -> Price:
    """The price of a backend nobody has priced."""
    return Price(backend)


def price_at(connection: Connection, backend: str, at: datetime) -> Price:
    """The version of ``backend``'s price in force at ``at``."""
    row = connection.execute(_PRICE_AT, {"backend": backend, "at": at}).first()
    return free(backend) if row is None else price_of(row)


# Built once: building a statement costs more than running it.
_PRICE_AT = (
    select(_P)
    .where(_P.c.backend == bindparam("backend"), _P.c.effective_at <= bindparam("at"))
    .order_by(_P.c.effective_at.desc())
    .limit(1)
)


def price_of(row: Row[Any]) -> Price:
    return Price(
        backend=row.backend,
        per_task=int(row.per_task),
        per_shot=int(row.per_shot),
        per_second=int(row.per_second),
        shot_microseconds=int(row.shot_microseconds),
        overhead_microseconds=int(row.overhead_microseconds),
        effective_at=row.effective_at,
        version_id=row.id,
    )


def versions(connection: Connection, backend: str) -> list[Price]:
    """Every version of ``backend``'s price, newest first."""
    rows = connection.execute(
        select(_P).where(_P.c.backend == backend).order_by(_P.c.effective_at.desc())
    )
    return [price_of(r) for r in rows]


def units(amount: int) -> str:
    """``amount`` micro-units as units, for messages (``1.250000``)."""
    sign = "-" if amount < 0 else ""
    whole, fraction = divmod(abs(amount), MICRO)
    return f"{sign}{whole}.{fraction:06d}"

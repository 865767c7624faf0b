"""Periods in a tenant's time: days, ISO weeks and months.

Quotas per day and budgets per period start and reset at midnight in the
tenant's time zone (``tenants.timezone``, an IANA name), not in UTC: a team
in Tokyo gets its day's jobs back at its own midnight. Times go in and come
out as aware UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.engine import Connection

from qustody.storage import models as m


class Period(StrEnum):
    DAY = "day"
    WEEK = "week"  # ISO: Monday to Sunday
    MONTH = "month"


def zone(name: str | None) -> ZoneInfo:
    """The tenant's zone; UTC for a name this machine does not know."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def tenant_zone(connection: Connection, tenant_id: str) -> ZoneInfo:
    name = connection.execute(
        select(m.TENANTS.c.timezone).where(m.TENANTS.c.id == tenant_id)
    ).scalar()
    return zone(name)


def bounds(at: datetime, tz: ZoneInfo, period: Period) -> tuple[datetime, datetime]:
    """The period holding ``at``: its start and the start of the next, in UTC."""
    local = at.astimezone(tz)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period is Period.DAY:
        start, end = midnight, _add_days(midnight, 1)
    elif period is Period.WEEK:
        start = _add_days(midnight, -local.weekday())
        end = _add_days(start, 7)
    else:
        start = midnight.replace(day=1)
        end = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else start.replace(month=start.month + 1)
        )
    return _utc(start, tz), _utc(end, tz)


def _add_days(local_midnight: datetime, days: int) -> datetime:
    """Local midnight ``days`` later (wall-clock arithmetic, so a DST change
    in between still lands on midnight)."""
    return (local_midnight.replace(tzinfo=None) + timedelta(days=days)).replace(
        tzinfo=local_midnight.tzinfo
    )


def _utc(local: datetime, tz: ZoneInfo) -> datetime:
    return local.replace(tzinfo=tz).astimezone(UTC)

"""Quotas per tenant, project and backend.

(Built by the quotas change; what the scheduler needs is declared here first.)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Connection


@dataclass(frozen=True, slots=True)
class RunningCap:
    """At most ``limit`` jobs of ``tenant_id`` running at once, narrowed to
    one project and/or one backend when those are set."""

    tenant_id: str
    project_id: str | None
    backend: str | None
    limit: int


def running_caps(connection: Connection, at: datetime) -> list[RunningCap]:
    """Every ``concurrent_jobs`` quota in force at ``at`` (the scheduler
    starts no job that would exceed one)."""
    del connection, at
    return []

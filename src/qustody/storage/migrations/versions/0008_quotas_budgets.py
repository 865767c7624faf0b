"""Quotas, usage, costs and spending limits.

- ``quotas``: a limit per metric for a tenant, a project or a tenant's use
  of a backend (``qustody.governance.quotas``).
- ``backend_prices``: versioned prices per backend, each in force from its
  ``effective_at`` (platform-wide: no tenant, no row-level security).
- ``budgets``: spending limits per tenant, project or backend per period;
  ``budget_crossings``: thresholds already alerted on, one per period.
- ``jobs`` gain an index on ``(tenant_id, created_at)``: usage per day and
  spending per period count a tenant's jobs since a time.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from qustody.storage.isolation import isolate, release

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_ID = sa.String(length=40)
_AT = sa.DateTime(timezone=True)
_TENANT_TABLES = ("quotas", "budgets", "budget_crossings")


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    parent = target.split(".")[0]
    return sa.ForeignKeyConstraint([column], [target], name=op.f(f"fk_{table}_{column}_{parent}"))


def _scoped(table: str) -> list[Any]:
    """The columns (and their keys) a quota and a budget share."""
    return [
        sa.Column("id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("scope", sa.String(length=80), nullable=False),
        sa.Column("project_id", _ID, nullable=True),
        sa.Column("backend", sa.String(length=64), nullable=True),
        _fk(table, "tenant_id", "tenants.id"),
        _fk(table, "project_id", "projects.id"),
    ]


def upgrade() -> None:
    op.create_table(
        "quotas",
        *_scoped("quotas"),
        sa.Column("metric", sa.String(length=32), nullable=False),
        sa.Column("maximum", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", _AT, nullable=False),
        sa.Column("updated_by", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quotas")),
        sa.UniqueConstraint(
            "tenant_id", "scope", "metric", name=op.f("uq_quotas_tenant_id_scope_metric")
        ),
    )
    op.create_index(op.f("ix_quotas_tenant_id"), "quotas", ["tenant_id"])
    op.create_table(
        "backend_prices",
        sa.Column("id", _ID, nullable=False),
        sa.Column("backend", sa.String(length=64), nullable=False),
        sa.Column("per_task", sa.BigInteger(), nullable=False),
        sa.Column("per_shot", sa.BigInteger(), nullable=False),
        sa.Column("per_second", sa.BigInteger(), nullable=False),
        sa.Column("shot_microseconds", sa.BigInteger(), nullable=False),
        sa.Column("overhead_microseconds", sa.BigInteger(), nullable=False),
        sa.Column("effective_at", _AT, nullable=False),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backend_prices")),
        sa.UniqueConstraint(
            "backend", "effective_at", name=op.f("uq_backend_prices_backend_effective_at")
        ),
    )
    op.create_index(op.f("ix_backend_prices_backend"), "backend_prices", ["backend"])
    op.create_table(
        "budgets",
        *_scoped("budgets"),
        sa.Column("period", sa.String(length=8), nullable=False),
        sa.Column("maximum", sa.BigInteger(), nullable=False),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("updated_at", _AT, nullable=False),
        sa.Column("updated_by", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budgets")),
        sa.UniqueConstraint(
            "tenant_id", "scope", "period", name=op.f("uq_budgets_tenant_id_scope_period")
        ),
    )
    op.create_index(op.f("ix_budgets_tenant_id"), "budgets", ["tenant_id"])
    op.create_table(
        "budget_crossings",
        sa.Column("budget_id", _ID, nullable=False),
        sa.Column("period_start", _AT, nullable=False),
        sa.Column("threshold", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("alert_id", _ID, nullable=False),
        sa.Column("at", _AT, nullable=False),
        _fk("budget_crossings", "budget_id", "budgets.id"),
        _fk("budget_crossings", "tenant_id", "tenants.id"),
        sa.PrimaryKeyConstraint(
            "budget_id", "period_start", "threshold", name=op.f("pk_budget_crossings")
        ),
    )
    op.create_index(op.f("ix_budget_crossings_tenant_id"), "budget_crossings", ["tenant_id"])
    op.create_index(op.f("ix_jobs_tenant_id_created_at"), "jobs", ["tenant_id", "created_at"])
    for table in _TENANT_TABLES:
        isolate(table)


def downgrade() -> None:
    for table in reversed(_TENANT_TABLES):
        release(table)
    op.drop_index(op.f("ix_jobs_tenant_id_created_at"), table_name="jobs")
    op.drop_table("budget_crossings")
    op.drop_table("budgets")
    op.drop_table("backend_prices")
    op.drop_table("quotas")

"""Scheduling: backend state, maintenance windows, fair shares, reservations and sessions.

- ``backend_states``: a backend paused (and why) and its concurrency limit;
  its row is what a reservation on that backend locks.
- ``maintenance_windows``: times during which nothing starts on a backend.
- ``scheduler_clock``: the fair queue's virtual time, one row, locked by
  every claim on PostgreSQL so scheduling decisions are taken one at a time.
- ``tenant_shares``: each tenant's weight and the finish tag of its last
  started job (weighted fair queuing).
- ``reservations``: a backend held for one tenant during a time window.
- ``job_sessions``: a principal's jobs on one backend under a maximum lifetime.
- ``jobs`` gain an index on ``(state, tenant_id, backend, project_id)``: the
  scheduler asks which tenants have jobs waiting for which backends.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from qustody.storage.isolation import isolate, release

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_ID = sa.String(length=40)
_AT = sa.DateTime(timezone=True)
_TENANT_TABLES = ("tenant_shares", "reservations", "job_sessions")


def upgrade() -> None:
    op.create_table(
        "backend_states",
        sa.Column("backend", sa.String(length=64), nullable=False),
        sa.Column("paused", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("max_running", sa.Integer(), nullable=True),
        sa.Column("updated_at", _AT, nullable=True),
        sa.Column("updated_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("backend", name=op.f("pk_backend_states")),
    )
    op.create_table(
        "maintenance_windows",
        sa.Column("id", _ID, nullable=False),
        sa.Column("backend", sa.String(length=64), nullable=False),
        sa.Column("starts_at", _AT, nullable=False),
        sa.Column("ends_at", _AT, nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("cancelled_at", _AT, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_maintenance_windows")),
    )
    op.create_index(
        "ix_maintenance_windows_backend_ends_at", "maintenance_windows", ["backend", "ends_at"]
    )
    scheduler_clock = op.create_table(
        "scheduler_clock",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("virtual_time", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scheduler_clock")),
    )
    op.bulk_insert(scheduler_clock, [{"id": 1, "virtual_time": 0.0}])
    op.create_table(
        "tenant_shares",
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("weight", sa.Integer(), server_default="1", nullable=False),
        sa.Column("finish_tag", sa.Float(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_tenant_shares_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_tenant_shares")),
    )
    op.create_table(
        "reservations",
        sa.Column("id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("backend", sa.String(length=64), nullable=False),
        sa.Column("starts_at", _AT, nullable=False),
        sa.Column("ends_at", _AT, nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("created_by", _ID, nullable=False),
        sa.Column("cancelled_at", _AT, nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_reservations_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reservations")),
    )
    op.create_index("ix_reservations_tenant_id", "reservations", ["tenant_id"])
    op.create_index("ix_reservations_backend_ends_at", "reservations", ["backend", "ends_at"])
    op.create_table(
        "job_sessions",
        sa.Column("id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("principal_id", _ID, nullable=False),
        sa.Column("backend", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("expires_at", _AT, nullable=False),
        sa.Column("started_at", _AT, nullable=True),
        sa.Column("closed_at", _AT, nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_job_sessions_tenant_id_tenants")
        ),
        sa.ForeignKeyConstraint(
            ["principal_id"],
            ["principals.id"],
            name=op.f("fk_job_sessions_principal_id_principals"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_sessions")),
    )
    op.create_index("ix_job_sessions_tenant_id", "job_sessions", ["tenant_id"])
    op.create_index("ix_job_sessions_expires_at", "job_sessions", ["expires_at"])
    op.create_index(
        "ix_jobs_state_tenant_id_backend", "jobs", ["state", "tenant_id", "backend", "project_id"]
    )
    for table in _TENANT_TABLES:
        isolate(table)


def downgrade() -> None:
    for table in reversed(_TENANT_TABLES):
        release(table)
    op.drop_index("ix_jobs_state_tenant_id_backend", table_name="jobs")
    op.drop_table("job_sessions")
    op.drop_table("reservations")
    op.drop_table("tenant_shares")
    op.drop_table("scheduler_clock")
    op.drop_table("maintenance_windows")
    op.drop_table("backend_states")

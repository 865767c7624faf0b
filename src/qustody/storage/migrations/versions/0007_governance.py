"""Governance, shared ground: what jobs carry for quotas, costs, approvals,
priorities and sessions, and the alerts table.

- ``jobs.state`` and the transition states widen to 24 characters
  (``awaiting_approval``).
- ``jobs`` gain ``priority`` (within a tenant's queue), ``session_id``,
  ``approval_id`` (the request a held job waits for), and ``estimated_cost``
  and ``cost`` in micro-units of the platform's currency.
- ``alerts``: alerts raised in the transaction of what caused them (budget
  thresholds, break-glass), delivered by signed webhook.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from qustody.storage.isolation import isolate, release

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_ID = sa.String(length=40)
_AT = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.alter_column(
            "state", existing_type=sa.String(length=16), type_=sa.String(length=24)
        )
        batch_op.add_column(sa.Column("priority", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("session_id", _ID, nullable=True))
        batch_op.add_column(sa.Column("approval_id", _ID, nullable=True))
        batch_op.add_column(sa.Column("estimated_cost", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("cost", sa.BigInteger(), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_session_id"), ["session_id"])
    with op.batch_alter_table("job_transitions") as batch_op:
        batch_op.alter_column(
            "from_state",
            existing_type=sa.String(length=16),
            type_=sa.String(length=24),
            existing_nullable=True,
        )
        batch_op.alter_column(
            "to_state", existing_type=sa.String(length=16), type_=sa.String(length=24)
        )
    op.create_table(
        "alerts",
        sa.Column("id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=True),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", _AT, nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_alerts_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    with op.batch_alter_table("alerts") as batch_op:
        batch_op.create_index(batch_op.f("ix_alerts_created_at"), ["created_at"])
    isolate("alerts")


def downgrade() -> None:
    release("alerts")
    op.drop_table("alerts")
    with op.batch_alter_table("job_transitions") as batch_op:
        batch_op.alter_column(
            "to_state", existing_type=sa.String(length=24), type_=sa.String(length=16)
        )
        batch_op.alter_column(
            "from_state",
            existing_type=sa.String(length=24),
            type_=sa.String(length=16),
            existing_nullable=True,
        )
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_session_id"))
        for column in ("cost", "estimated_cost", "approval_id", "session_id", "priority"):
            batch_op.drop_column(column)
        batch_op.alter_column(
            "state", existing_type=sa.String(length=24), type_=sa.String(length=16)
        )

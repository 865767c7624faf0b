"""Approvals, just-in-time elevation and break-glass.

- ``approval_requests``: what a policy held for approval (an action on a
  resource, a job, an elevation), its reason and ticket, how many distinct
  approvers it needs, its state and expiry.
- ``approval_votes``: one verdict per approver and request (the unique
  constraint is what makes N-of-M count distinct approvers).
- ``access_grants``: roles held for a bounded time (approved elevations,
  break-glass), with the after-the-fact review of break-glass.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from qustody.storage.isolation import isolate, release

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_ID = sa.String(length=40)
_AT = sa.DateTime(timezone=True)
_TABLES = ("approval_requests", "approval_votes", "access_grants")


def upgrade() -> None:
    op.create_table(
        "approval_requests",
        sa.Column("id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("resource_type", sa.String(length=16), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("project_id", _ID, nullable=True),
        sa.Column("requester_id", _ID, nullable=False),
        sa.Column("reason", sa.String(length=512), nullable=False),
        sa.Column("ticket", sa.String(length=128), nullable=False),
        sa.Column("required", sa.Integer(), nullable=False),
        sa.Column("approvals", sa.Integer(), nullable=False),
        sa.Column("policy_ids", sa.String(length=512), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("expires_at", _AT, nullable=False),
        sa.Column("decided_at", _AT, nullable=True),
        sa.Column("used_at", _AT, nullable=True),
        sa.Column("role", sa.String(length=32), nullable=True),
        sa.Column("duration_seconds", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_approval_requests_tenant_id_tenants")
        ),
        sa.ForeignKeyConstraint(
            ["requester_id"],
            ["principals.id"],
            name=op.f("fk_approval_requests_requester_id_principals"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_requests")),
    )
    with op.batch_alter_table("approval_requests") as batch_op:
        batch_op.create_index(batch_op.f("ix_approval_requests_tenant_id"), ["tenant_id"])
        batch_op.create_index(batch_op.f("ix_approval_requests_requester_id"), ["requester_id"])
        batch_op.create_index("ix_approval_requests_state_expires_at", ["state", "expires_at"])
    op.create_table(
        "approval_votes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("approval_id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("approver_id", _ID, nullable=False),
        sa.Column("verdict", sa.String(length=8), nullable=False),
        sa.Column("comment", sa.String(length=512), nullable=True),
        sa.Column("at", _AT, nullable=False),
        sa.ForeignKeyConstraint(
            ["approval_id"],
            ["approval_requests.id"],
            name=op.f("fk_approval_votes_approval_id_approval_requests"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_approval_votes_tenant_id_tenants")
        ),
        sa.ForeignKeyConstraint(
            ["approver_id"],
            ["principals.id"],
            name=op.f("fk_approval_votes_approver_id_principals"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_votes")),
        sa.UniqueConstraint(
            "approval_id", "approver_id", name=op.f("uq_approval_votes_approval_id_approver_id")
        ),
    )
    op.create_table(
        "access_grants",
        sa.Column("id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("principal_id", _ID, nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("project_id", _ID, nullable=True),
        sa.Column("approval_id", _ID, nullable=True),
        sa.Column("breakglass", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(length=512), nullable=False),
        sa.Column("ticket", sa.String(length=128), nullable=True),
        sa.Column("starts_at", _AT, nullable=False),
        sa.Column("expires_at", _AT, nullable=False),
        sa.Column("revoked_at", _AT, nullable=True),
        sa.Column("revoked_by", _ID, nullable=True),
        sa.Column("expired_at", _AT, nullable=True),
        sa.Column("reviewed_by", _ID, nullable=True),
        sa.Column("reviewed_at", _AT, nullable=True),
        sa.Column("review_notes", sa.String(length=1024), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_access_grants_tenant_id_tenants")
        ),
        sa.ForeignKeyConstraint(
            ["principal_id"],
            ["principals.id"],
            name=op.f("fk_access_grants_principal_id_principals"),
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_access_grants_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_access_grants")),
    )
    with op.batch_alter_table("access_grants") as batch_op:
        batch_op.create_index(batch_op.f("ix_access_grants_tenant_id"), ["tenant_id"])
        batch_op.create_index(
            "ix_access_grants_principal_id_expires_at", ["principal_id", "expires_at"]
        )
    for table in _TABLES:
        isolate(table)


def downgrade() -> None:
    for table in reversed(_TABLES):
        release(table)
        op.drop_table(table)

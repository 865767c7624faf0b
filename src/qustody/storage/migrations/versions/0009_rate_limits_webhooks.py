"""Rate limits and signed webhook delivery.

- ``rate_limit_buckets``: the brute-force buckets every API process shares
  (sign-in and token endpoints), one row per bucket holding the time it is
  full again; a row whose time has passed is the same as no row, and is
  deleted. Keys are SHA-256 digests: no address or account name is stored.
- ``webhook_endpoints``: where a tenant's (or, for the platform tenant, the
  operators') alerts are delivered, filtered by kind; the signing secret is
  sealed under the tenant's ``secret`` key ring, never stored in clear.
- ``webhook_fanout``: which alerts have been matched to endpoints.
- ``webhook_deliveries``: one alert to one endpoint: attempts, the next
  attempt, delivered or given up, the last status and error (never a
  response body).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from qustody.storage.isolation import isolate, release

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_ID = sa.String(length=40)
_AT = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "rate_limit_buckets",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("full_at", sa.Float(), nullable=False),
        sa.Column("reported_until", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_rate_limit_buckets")),
    )
    with op.batch_alter_table("rate_limit_buckets") as batch_op:
        batch_op.create_index(batch_op.f("ix_rate_limit_buckets_full_at"), ["full_at"])
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("platform", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("kinds", sa.JSON(), nullable=False),
        sa.Column("description", sa.String(length=256), nullable=True),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_webhook_endpoints_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoints")),
    )
    with op.batch_alter_table("webhook_endpoints") as batch_op:
        batch_op.create_index(batch_op.f("ix_webhook_endpoints_tenant_id"), ["tenant_id"])
    op.create_table(
        "webhook_fanout",
        sa.Column("alert_id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=True),
        sa.Column("at", _AT, nullable=False),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["alerts.id"], name=op.f("fk_webhook_fanout_alert_id_alerts")
        ),
        sa.PrimaryKeyConstraint("alert_id", name=op.f("pk_webhook_fanout")),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("alert_id", _ID, nullable=False),
        sa.Column("endpoint_id", _ID, nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", _AT, nullable=True),
        sa.Column("delivered_at", _AT, nullable=True),
        sa.Column("failed_at", _AT, nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=256), nullable=True),
        sa.Column("created_at", _AT, nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_webhook_deliveries_tenant_id_tenants")
        ),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["alerts.id"], name=op.f("fk_webhook_deliveries_alert_id_alerts")
        ),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoints.id"],
            name=op.f("fk_webhook_deliveries_endpoint_id_webhook_endpoints"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint(
            "alert_id", "endpoint_id", name=op.f("uq_webhook_deliveries_alert_id_endpoint_id")
        ),
    )
    with op.batch_alter_table("webhook_deliveries") as batch_op:
        batch_op.create_index(
            batch_op.f("ix_webhook_deliveries_next_attempt_at"), ["next_attempt_at"]
        )
        batch_op.create_index(batch_op.f("ix_webhook_deliveries_endpoint_id"), ["endpoint_id"])
    for table in ("webhook_endpoints", "webhook_fanout", "webhook_deliveries"):
        isolate(table)


def downgrade() -> None:
    for table in ("webhook_deliveries", "webhook_fanout", "webhook_endpoints"):
        release(table)
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_fanout")
    op.drop_table("webhook_endpoints")
    op.drop_table("rate_limit_buckets")

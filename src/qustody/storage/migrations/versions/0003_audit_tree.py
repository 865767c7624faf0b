"""The audit log's Merkle tree and its signed checkpoints.

- ``audit_events`` gains the actor's authentication strength and a link to an
  approval (both part of the event's canonical encoding).
- ``audit_tree`` stores every complete subtree hash, so any inclusion or
  consistency proof needs O(log n) lookups; ``audit_tree_head`` says how many
  events the stored tree covers and only grows.
- ``audit_checkpoints`` keeps every checkpoint the log signed.

All three are append-only (triggers refuse UPDATE and DELETE; the tree head
refuses a decrease).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from qustody.storage.append_only import (
    allow_rewrites,
    create_counter,
    drop_only_grows,
    forbid_rewrites,
    only_grows,
)

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_APPEND_ONLY = ("audit_tree", "audit_checkpoints")
_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch_op:
        batch_op.add_column(sa.Column("auth_strength", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("approval_id", sa.String(length=40), nullable=True))
    op.create_table(
        "audit_tree",
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("idx", _SEQ, nullable=False),
        sa.Column("hash", sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint("level", "idx", name=op.f("pk_audit_tree")),
    )
    create_counter("audit_tree_head")
    op.execute("INSERT INTO audit_tree_head (id, size) VALUES (1, 0)")
    op.create_table(
        "audit_checkpoints",
        sa.Column("size", _SEQ, nullable=False),
        sa.Column("root", sa.LargeBinary(length=32), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("size", name=op.f("pk_audit_checkpoints")),
    )
    forbid_rewrites(_APPEND_ONLY)
    only_grows("audit_tree_head")


def downgrade() -> None:
    allow_rewrites(_APPEND_ONLY, drop_function=False)
    drop_only_grows("audit_tree_head")
    for table in ("audit_checkpoints", "audit_tree_head", "audit_tree"):
        op.drop_table(table)
    with op.batch_alter_table("audit_events") as batch_op:
        batch_op.drop_column("approval_id")
        batch_op.drop_column("auth_strength")

"""The audit log's head: one counter row that hands out gap-free sequence numbers.

Every transaction that records audit events advances ``audit_head.size`` by
the number of events and numbers them ``size - n + 1 .. size``. The row lock
on the counter (PostgreSQL) or the single writer (SQLite) orders those
transactions, so sequence numbers follow commit order and a rolled-back
transaction leaves no hole: event ``seq`` is Merkle leaf ``seq - 1``. The
counter only grows (a trigger refuses a decrease or a delete).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

from qustody.storage.append_only import create_counter, drop_only_grows, only_grows

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_counter("audit_head")
    # Events recorded before this revision keep their numbers.
    op.execute(
        "INSERT INTO audit_head (id, size) SELECT 1, COALESCE(MAX(seq), 0) FROM audit_events"
    )
    only_grows("audit_head")


def downgrade() -> None:
    drop_only_grows("audit_head")
    op.drop_table("audit_head")

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

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_audit_head_single_row")),
        sa.CheckConstraint("size >= 0", name=op.f("ck_audit_head_size")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
    )
    # Events recorded before this revision keep their numbers.
    op.execute(
        "INSERT INTO audit_head (id, size) SELECT 1, COALESCE(MAX(seq), 0) FROM audit_events"
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE OR REPLACE FUNCTION qustody_audit_head_grows() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN "
            "IF TG_OP = 'DELETE' OR NEW.size < OLD.size THEN "
            "RAISE EXCEPTION 'the audit head only grows: % refused', TG_OP; END IF; "
            "RETURN NEW; END $$"
        )
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_head_grows_{operation.lower()} BEFORE {operation} "
                "ON audit_head FOR EACH ROW EXECUTE FUNCTION qustody_audit_head_grows()"
            )
    else:
        op.execute(
            "CREATE TRIGGER audit_head_grows_update BEFORE UPDATE ON audit_head "
            "WHEN NEW.size < OLD.size BEGIN SELECT RAISE(ABORT, "
            "'the audit head only grows: UPDATE refused'); END"
        )
        op.execute(
            "CREATE TRIGGER audit_head_grows_delete BEFORE DELETE ON audit_head "
            "BEGIN SELECT RAISE(ABORT, 'the audit head only grows: DELETE refused'); END"
        )


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for operation in ("update", "delete"):
        suffix = " ON audit_head" if postgres else ""
        op.execute(f"DROP TRIGGER IF EXISTS audit_head_grows_{operation}{suffix}")
    if postgres:
        op.execute("DROP FUNCTION IF EXISTS qustody_audit_head_grows()")
    op.drop_table("audit_head")

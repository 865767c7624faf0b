"""Triggers that make tables append-only inside the database itself.

Used by migrations: a ``BEFORE UPDATE`` and a ``BEFORE DELETE`` trigger per
table abort the statement, on SQLite and PostgreSQL alike, so neither a bug
nor a careless script can rewrite the audit log. Someone with the power to
drop triggers can still rewrite rows; the Merkle tree and signed
checkpoints are what catch that.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from alembic import op

_FUNCTION = "qustody_audit_append_only"


def forbid_rewrites(tables: Iterable[str]) -> None:
    """Refuse UPDATE and DELETE on each of ``tables``."""
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute(
            f"CREATE OR REPLACE FUNCTION {_FUNCTION}() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION "
            "'audit log is append-only: % on % refused', TG_OP, TG_TABLE_NAME; END $$"
        )
    for table in tables:
        for operation in ("UPDATE", "DELETE"):
            name = f"{table}_no_{operation.lower()}"
            if postgres:
                op.execute(
                    f"CREATE TRIGGER {name} BEFORE {operation} ON {table} "
                    f"FOR EACH ROW EXECUTE FUNCTION {_FUNCTION}()"
                )
            else:
                op.execute(
                    f"CREATE TRIGGER {name} BEFORE {operation} ON {table} "
                    "BEGIN SELECT RAISE(ABORT, "
                    f"'audit log is append-only: {operation} refused'); END"
                )


def allow_rewrites(tables: Iterable[str], *, drop_function: bool) -> None:
    """Drop the triggers :func:`forbid_rewrites` created (migrations' downgrade)."""
    postgres = op.get_bind().dialect.name == "postgresql"
    for table in tables:
        for operation in ("update", "delete"):
            suffix = f" ON {table}" if postgres else ""
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{operation}{suffix}")
    if postgres and drop_function:
        op.execute(f"DROP FUNCTION IF EXISTS {_FUNCTION}()")


def create_counter(table: str) -> None:
    """A one-row table (``id`` 1) whose ``size`` only grows; see :func:`only_grows`."""
    op.create_table(
        table,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f(f"ck_{table}_single_row")),
        sa.CheckConstraint("size >= 0", name=op.f(f"ck_{table}_size")),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{table}")),
    )


def only_grows(table: str) -> None:
    """Let the one-row counter ``table`` (column ``size``) only grow, never shrink or vanish."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"CREATE OR REPLACE FUNCTION qustody_{table}_grows() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN "
            "IF TG_OP = 'DELETE' OR NEW.size < OLD.size THEN "
            f"RAISE EXCEPTION '{table} only grows: % refused', TG_OP; END IF; "
            "RETURN NEW; END $$"
        )
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_grows_{operation.lower()} BEFORE {operation} "
                f"ON {table} FOR EACH ROW EXECUTE FUNCTION qustody_{table}_grows()"
            )
    else:
        op.execute(
            f"CREATE TRIGGER {table}_grows_update BEFORE UPDATE ON {table} "
            "WHEN NEW.size < OLD.size BEGIN SELECT RAISE(ABORT, "
            f"'{table} only grows: UPDATE refused'); END"
        )
        op.execute(
            f"CREATE TRIGGER {table}_grows_delete BEFORE DELETE ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{table} only grows: DELETE refused'); END"
        )


def drop_only_grows(table: str) -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for operation in ("update", "delete"):
        suffix = f" ON {table}" if postgres else ""
        op.execute(f"DROP TRIGGER IF EXISTS {table}_grows_{operation}{suffix}")
    if postgres:
        op.execute(f"DROP FUNCTION IF EXISTS qustody_{table}_grows()")

"""Row-level security for tables added after revision 0006.

Revision 0006 put every tenant table of its time under one PostgreSQL
policy; a later migration that adds a table with ``tenant_id`` calls
:func:`isolate` for it (and :func:`release` on the way down), so every
tenant's rows stay visible only to that tenant's transactions (or to
``system``). SQLite has no row-level security: both do nothing there.
"""

from __future__ import annotations

from alembic import op

POLICY = "tenant_isolation"
_SCOPE = "current_setting('qustody.tenant_id', true)"


def _visible(column: str) -> str:
    return f"({column} = {_SCOPE} OR {_SCOPE} = 'system')"


def isolate(table: str, column: str = "tenant_id") -> None:
    """Force the tenant-isolation policy onto ``table``."""
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY {POLICY} ON {table} USING {_visible(column)} WITH CHECK {_visible(column)}"
    )


def release(table: str) -> None:
    """Undo :func:`isolate` (before the table is dropped, or on downgrade)."""
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP POLICY IF EXISTS {POLICY} ON {table}")
    op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")

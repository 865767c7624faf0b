"""Row-level security: a tenant's rows are visible to that tenant's transactions only.

Every table with a ``tenant_id`` column (and ``tenants`` itself, by ``id``)
gets a policy keyed on the transaction-local setting ``qustody.tenant_id``
that :class:`qustody.storage.db.Database` sets as each transaction's first
statement:

- a tenant id: only that tenant's rows, for reading and for writing (the
  ``WITH CHECK`` half refuses an insert or update that would place a row in
  another tenant);
- ``system``: every row, and the platform's own audit events (``tenant_id``
  null), which no tenant sees;
- empty or unset (a connection that bypasses the service layer): no rows.

``FORCE`` makes the policies bind the tables' owner too, which is the role
the gateway connects as; only superusers and ``BYPASSRLS`` roles escape
them, and production refuses to run as one. Foreign-key and unique checks
are not filtered by policies (PostgreSQL's rule), so constraints keep
working across tenants.

Global tables stay without a policy: the audit log's counters, tree and
checkpoints (hashes and signatures, no tenant data), DPoP proofs seen and
browser sign-ins in flight (neither belongs to a tenant until sign-in ends).

SQLite has no row-level security; this revision does nothing there.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

#: Tables whose rows belong to the tenant named in their ``tenant_id``.
TENANT_TABLES = (
    "projects",
    "principals",
    "memberships",
    "issued_tokens",
    "jobs",
    "job_transitions",
    "sealed_objects",
    "key_rings",
    "key_versions",
    "destruction_certificates",
    "secrets",
    "export_keys",
    "federated_identities",
    "trust_rules",
    "api_keys",
    "local_accounts",
    "scim_groups",
    "scim_group_members",
    "tenant_policies",
    "audit_events",
)
POLICY = "tenant_isolation"
_SCOPE = "current_setting('qustody.tenant_id', true)"


def _visible(column: str) -> str:
    return f"({column} = {_SCOPE} OR {_SCOPE} = 'system')"


def _tables() -> list[tuple[str, str]]:
    return [("tenants", "id"), *((table, "tenant_id") for table in TENANT_TABLES)]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in _tables():
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY {POLICY} ON {table} "
            f"USING {_visible(column)} WITH CHECK {_visible(column)}"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, _column in _tables():
        op.execute(f"DROP POLICY IF EXISTS {POLICY} ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")

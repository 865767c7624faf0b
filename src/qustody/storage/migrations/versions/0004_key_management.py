"""Key management: versioned key rings, rewrappable envelopes, secrets.

- ``key_rings`` and ``key_versions`` record which KEK version of each
  tenant/project/purpose ring is current, which are being rewrapped away,
  retired or destroyed (the key material lives in the key provider).
- ``sealed_objects`` is rebuilt for envelope format 2: the wrapped data key
  sits in its own column beside the key id, so rotation rewraps it without
  touching (or decrypting) the body. Format 1 was never released; a database
  that still holds format-1 values is refused with a clear error rather than
  left with values no release can rewrap.
- ``destruction_certificates`` (append-only) keeps what each crypto-shredding
  destroyed; ``secrets`` names a tenant's sealed credentials; ``export_keys``
  holds tenants' public keys for sealed exports.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from qustody.storage.append_only import allow_rewrites, forbid_rewrites

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_ID = sa.String(length=40)
_KEY_ID = sa.String(length=200)
_RING = sa.String(length=160)
_AT = sa.DateTime(timezone=True)


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    parent = target.split(".")[0]
    return sa.ForeignKeyConstraint([column], [target], name=op.f(f"fk_{table}_{column}_{parent}"))


def _index(table: str, *columns: str) -> None:
    with op.batch_alter_table(table) as batch_op:
        batch_op.create_index(batch_op.f(f"ix_{table}_{'_'.join(columns)}"), list(columns))


def upgrade() -> None:
    held = op.get_bind().execute(sa.text("SELECT count(*) FROM sealed_objects")).scalar_one()
    if held:
        raise RuntimeError(
            f"this database holds {held} values sealed in envelope format 1 by a pre-release "
            "build; they cannot be rewrapped. Start this release with a new data directory "
            "or database (format 1 was never part of a release)"
        )
    op.drop_table("sealed_objects")
    op.create_table(
        "key_rings",
        sa.Column("ring", _RING, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("project_id", _ID, nullable=True),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("current_version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("updated_at", _AT, nullable=False),
        _fk("key_rings", "project_id", "projects.id"),
        _fk("key_rings", "tenant_id", "tenants.id"),
        sa.PrimaryKeyConstraint("ring", name=op.f("pk_key_rings")),
    )
    _index("key_rings", "tenant_id")
    op.create_table(
        "key_versions",
        sa.Column("key_id", _KEY_ID, nullable=False),
        sa.Column("id", _ID, nullable=False),
        sa.Column("ring", _RING, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("retired_at", _AT, nullable=True),
        sa.Column("destroyed_at", _AT, nullable=True),
        _fk("key_versions", "ring", "key_rings.ring"),
        _fk("key_versions", "tenant_id", "tenants.id"),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_key_versions")),
        sa.UniqueConstraint("id", name=op.f("uq_key_versions_id")),
        sa.UniqueConstraint("ring", "version", name=op.f("uq_key_versions_ring_version")),
    )
    _index("key_versions", "tenant_id")
    op.create_table(
        "sealed_objects",
        sa.Column("object_id", _ID, nullable=False),
        sa.Column("field", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("project_id", _ID, nullable=True),
        sa.Column("key_id", _KEY_ID, nullable=False),
        sa.Column("wrapped_dek", sa.LargeBinary(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("plaintext_sha256", sa.String(length=64), nullable=True),
        sa.Column("created_at", _AT, nullable=False),
        _fk("sealed_objects", "key_id", "key_versions.key_id"),
        _fk("sealed_objects", "project_id", "projects.id"),
        _fk("sealed_objects", "tenant_id", "tenants.id"),
        sa.PrimaryKeyConstraint("object_id", "field", name=op.f("pk_sealed_objects")),
    )
    _index("sealed_objects", "key_id")
    _index("sealed_objects", "tenant_id")
    op.create_table(
        "destruction_certificates",
        sa.Column("id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("project_id", _ID, nullable=True),
        sa.Column("issued_at", _AT, nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        _fk("destruction_certificates", "project_id", "projects.id"),
        _fk("destruction_certificates", "tenant_id", "tenants.id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_destruction_certificates")),
    )
    _index("destruction_certificates", "tenant_id")
    forbid_rewrites(["destruction_certificates"])
    op.create_table(
        "secrets",
        sa.Column("id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("updated_at", _AT, nullable=False),
        sa.Column("updated_by", sa.String(length=64), nullable=False),
        _fk("secrets", "tenant_id", "tenants.id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_secrets")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_secrets_tenant_id_name")),
    )
    _index("secrets", "tenant_id")
    op.create_table(
        "export_keys",
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        _fk("export_keys", "tenant_id", "tenants.id"),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_export_keys")),
    )


def downgrade() -> None:
    allow_rewrites(["destruction_certificates"], drop_function=False)
    for table in (
        "export_keys",
        "secrets",
        "destruction_certificates",
        "sealed_objects",
        "key_versions",
        "key_rings",
    ):
        op.drop_table(table)
    op.create_table(
        "sealed_objects",
        sa.Column("object_id", _ID, nullable=False),
        sa.Column("field", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("key_id", sa.String(length=80), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.Column("plaintext_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", _AT, nullable=False),
        _fk("sealed_objects", "tenant_id", "tenants.id"),
        sa.PrimaryKeyConstraint("object_id", "field", name=op.f("pk_sealed_objects")),
    )
    _index("sealed_objects", "tenant_id")

"""Identity federation and policy-as-code.

- ``principals`` gain what SCIM and sign-in need (active flag, display name,
  external id, e-mail, a version for ETags) and ``tokens_not_before``: every
  token of the principal issued before it is revoked. ``tenants`` gain the
  same cut-off for the whole tenant, and a time zone for policies that speak
  of tenant time.
- ``issued_tokens`` record how the token was earned: the sign-in's ``acr``,
  ``amr`` and ``auth_time`` (for MFA step-up), the DPoP key thumbprint a
  sender-constrained token is bound to, and where it came from.
- ``federated_identities`` map an external issuer's subject to a principal;
  ``login_requests`` hold a browser sign-in's state between the redirect to
  the identity provider and its callback.
- ``trust_rules`` map an external issuer plus claim conditions to a service
  principal (RFC 8693 token exchange); ``dpop_proofs`` remember proofs seen,
  so a replayed one is refused.
- ``api_keys`` hold only a digest of each key; ``local_accounts`` the
  Argon2id hash of an embedded-mode password (the TOTP secret is sealed).
- ``scim_groups`` and ``scim_group_members``: a tenant's groups as its
  identity provider provisions them, each optionally granting a role.
- ``tenant_policies``: every version of each tenant's Cedar policies
  (append-only; the newest is in force).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from qustody.storage.append_only import allow_rewrites, forbid_rewrites

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_ID = sa.String(length=40)
_AT = sa.DateTime(timezone=True)


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    parent = target.split(".")[0]
    return sa.ForeignKeyConstraint([column], [target], name=op.f(f"fk_{table}_{column}_{parent}"))


def _index(table: str, *columns: str) -> None:
    with op.batch_alter_table(table) as batch_op:
        batch_op.create_index(batch_op.f(f"ix_{table}_{'_'.join(columns)}"), list(columns))


def upgrade() -> None:
    with op.batch_alter_table("principals") as batch_op:
        batch_op.add_column(
            sa.Column("active", sa.Boolean(), server_default=sa.true(), nullable=False)
        )
        batch_op.add_column(sa.Column("display_name", sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column("external_id", sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column("email", sa.String(length=320), nullable=True))
        batch_op.add_column(sa.Column("version", sa.Integer(), server_default="1", nullable=False))
        batch_op.add_column(sa.Column("updated_at", _AT, nullable=True))
        batch_op.add_column(sa.Column("tokens_not_before", _AT, nullable=True))
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.add_column(
            sa.Column("timezone", sa.String(length=64), server_default="UTC", nullable=False)
        )
        batch_op.add_column(sa.Column("tokens_not_before", _AT, nullable=True))
    with op.batch_alter_table("issued_tokens") as batch_op:
        batch_op.add_column(
            sa.Column(
                "auth_method",
                sa.String(length=32),
                server_default="qustody-token",
                nullable=False,
            )
        )
        batch_op.add_column(sa.Column("source", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("acr", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("amr", sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column("auth_time", _AT, nullable=True))
        batch_op.add_column(sa.Column("jkt", sa.String(length=64), nullable=True))
    _index("issued_tokens", "principal_id", "issued_at")

    op.create_table(
        "federated_identities",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("principal_id", _ID, nullable=False),
        sa.Column("issuer", sa.String(length=512), nullable=False),
        sa.Column("subject", sa.String(length=256), nullable=False),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("last_login_at", _AT, nullable=True),
        _fk("federated_identities", "principal_id", "principals.id"),
        _fk("federated_identities", "tenant_id", "tenants.id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_federated_identities")),
        sa.UniqueConstraint(
            "issuer", "subject", name=op.f("uq_federated_identities_issuer_subject")
        ),
    )
    _index("federated_identities", "tenant_id")
    _index("federated_identities", "principal_id")
    op.create_table(
        "login_requests",
        sa.Column("state", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("code_verifier", sa.String(length=128), nullable=False),
        sa.Column("redirect_uri", sa.String(length=1024), nullable=False),
        sa.Column("return_to", sa.String(length=1024), nullable=True),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("expires_at", _AT, nullable=False),
        sa.Column("used_at", _AT, nullable=True),
        sa.PrimaryKeyConstraint("state", name=op.f("pk_login_requests")),
    )
    _index("login_requests", "expires_at")
    op.create_table(
        "trust_rules",
        sa.Column("id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("issuer", sa.String(length=512), nullable=False),
        sa.Column("audience", sa.String(length=512), nullable=False),
        sa.Column("conditions", sa.JSON(), nullable=False),
        sa.Column("principal_id", _ID, nullable=False),
        sa.Column("scopes", sa.String(length=512), nullable=False),
        sa.Column("ttl_seconds", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        _fk("trust_rules", "principal_id", "principals.id"),
        _fk("trust_rules", "tenant_id", "tenants.id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trust_rules")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_trust_rules_tenant_id_name")),
    )
    _index("trust_rules", "tenant_id")
    _index("trust_rules", "issuer")
    op.create_table(
        "dpop_proofs",
        sa.Column("jkt", sa.String(length=64), nullable=False),
        sa.Column("jti", sa.String(length=128), nullable=False),
        sa.Column("expires_at", _AT, nullable=False),
        sa.PrimaryKeyConstraint("jkt", "jti", name=op.f("pk_dpop_proofs")),
    )
    _index("dpop_proofs", "expires_at")
    op.create_table(
        "api_keys",
        sa.Column("id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("principal_id", _ID, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.String(length=512), nullable=False),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("expires_at", _AT, nullable=False),
        sa.Column("revoked_at", _AT, nullable=True),
        sa.Column("last_used_at", _AT, nullable=True),
        _fk("api_keys", "principal_id", "principals.id"),
        _fk("api_keys", "tenant_id", "tenants.id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("digest", name=op.f("uq_api_keys_digest")),
    )
    _index("api_keys", "tenant_id")
    _index("api_keys", "principal_id")
    op.create_table(
        "local_accounts",
        sa.Column("principal_id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("password_hash", sa.String(length=256), nullable=False),
        sa.Column("totp_enabled", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("totp_last_step", sa.BigInteger(), nullable=True),
        sa.Column("failed_attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("locked_until", _AT, nullable=True),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("updated_at", _AT, nullable=False),
        _fk("local_accounts", "principal_id", "principals.id"),
        _fk("local_accounts", "tenant_id", "tenants.id"),
        sa.PrimaryKeyConstraint("principal_id", name=op.f("pk_local_accounts")),
    )
    _index("local_accounts", "tenant_id")
    op.create_table(
        "scim_groups",
        sa.Column("id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("display_name", sa.String(length=256), nullable=False),
        sa.Column("external_id", sa.String(length=256), nullable=True),
        sa.Column("role", sa.String(length=32), nullable=True),
        sa.Column("project_id", _ID, nullable=True),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("updated_at", _AT, nullable=False),
        _fk("scim_groups", "project_id", "projects.id"),
        _fk("scim_groups", "tenant_id", "tenants.id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scim_groups")),
        sa.UniqueConstraint(
            "tenant_id", "display_name", name=op.f("uq_scim_groups_tenant_id_display_name")
        ),
    )
    _index("scim_groups", "tenant_id")
    op.create_table(
        "scim_group_members",
        sa.Column("group_id", _ID, nullable=False),
        sa.Column("principal_id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        _fk("scim_group_members", "group_id", "scim_groups.id"),
        _fk("scim_group_members", "principal_id", "principals.id"),
        _fk("scim_group_members", "tenant_id", "tenants.id"),
        sa.PrimaryKeyConstraint("group_id", "principal_id", name=op.f("pk_scim_group_members")),
    )
    _index("scim_group_members", "principal_id")
    _index("scim_group_members", "tenant_id")
    op.create_table(
        "tenant_policies",
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("comment", sa.String(length=500), nullable=True),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        _fk("tenant_policies", "tenant_id", "tenants.id"),
        sa.PrimaryKeyConstraint("tenant_id", "version", name=op.f("pk_tenant_policies")),
    )
    forbid_rewrites(["tenant_policies"])


def downgrade() -> None:
    allow_rewrites(["tenant_policies"], drop_function=False)
    for table in (
        "tenant_policies",
        "scim_group_members",
        "scim_groups",
        "local_accounts",
        "api_keys",
        "dpop_proofs",
        "trust_rules",
        "login_requests",
        "federated_identities",
    ):
        op.drop_table(table)
    with op.batch_alter_table("issued_tokens") as batch_op:
        batch_op.drop_index(batch_op.f("ix_issued_tokens_principal_id_issued_at"))
        for column in ("jkt", "auth_time", "amr", "acr", "source", "auth_method"):
            batch_op.drop_column(column)
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.drop_column("tokens_not_before")
        batch_op.drop_column("timezone")
    with op.batch_alter_table("principals") as batch_op:
        for column in (
            "tokens_not_before",
            "updated_at",
            "version",
            "email",
            "external_id",
            "display_name",
            "active",
        ):
            batch_op.drop_column(column)

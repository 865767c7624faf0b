"""Tables.

Every row that belongs to a tenant carries ``tenant_id``, and every query on
such a table goes through :mod:`qustody.storage.repositories`, which scopes it.
Payloads (circuits, results) never appear here in clear: ``sealed_objects``
holds only envelope-encrypted bytes.
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Id = String(40)
Timestamp = DateTime(timezone=True)
#: ``<provider>:<ring>:v<n>`` (:func:`qustody.crypto.interfaces.key_id`).
KeyIdType = String(200)
#: A 64-bit number that SQLite still treats as its rowid alias.
Seq = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    #: IANA time zone for policies that speak of "tenant time".
    timezone: Mapped[str] = mapped_column(String(64), server_default="UTC", default="UTC")
    #: Every token of the tenant issued before this instant is revoked.
    tokens_not_before: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


class Project(Base):
    __tablename__ = "projects"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    data_class: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class Principal(Base):
    __tablename__ = "principals"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    #: False once deprovisioned (SCIM ``active: false``, or deleted): no sign-in.
    active: Mapped[bool] = mapped_column(Boolean, server_default=true(), default=True)
    display_name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    #: The identity provider's own id for this user (SCIM ``externalId``).
    external_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    #: Bumped on every change; the SCIM ETag.
    version: Mapped[int] = mapped_column(Integer, server_default="1", default=1)
    updated_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    #: Every token of this principal issued before this instant is revoked.
    tokens_not_before: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


class Membership(Base):
    """A role held by a principal: tenant-wide when ``project_id`` is null."""

    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("principal_id", "project_id", "role"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"), index=True)
    principal_id: Mapped[str] = mapped_column(Id, ForeignKey("principals.id"), index=True)
    project_id: Mapped[str | None] = mapped_column(Id, ForeignKey("projects.id"), nullable=True)
    role: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class IssuedToken(Base):
    """What was issued, for revocation and review; never the token itself."""

    __tablename__ = "issued_tokens"
    __table_args__ = (
        Index("ix_issued_tokens_principal_id_issued_at", "principal_id", "issued_at"),
    )
    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"), index=True)
    principal_id: Mapped[str] = mapped_column(Id, ForeignKey("principals.id"), index=True)
    scopes: Mapped[str] = mapped_column(String(512))
    issued_at: Mapped[datetime] = mapped_column(Timestamp)
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    #: How the holder authenticated to get it (``qustody-token``, ``oidc``,
    #: ``token-exchange``, ``api-key``, ``local``).
    auth_method: Mapped[str] = mapped_column(
        String(32), server_default="qustody-token", default="qustody-token"
    )
    #: Where it came from (an issuer, a trust rule, an API key id); no secrets.
    source: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: The sign-in's assurance (OIDC ``acr``, space-separated ``amr``, ``auth_time``).
    acr: Mapped[str | None] = mapped_column(String(128), nullable=True)
    amr: Mapped[str | None] = mapped_column(String(256), nullable=True)
    auth_time: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    #: The DPoP key thumbprint (RFC 7638) a sender-constrained token is bound to.
    jkt: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_tenant_id_id", "tenant_id", "id"),
        Index("ix_jobs_state_queued_at", "state", "queued_at"),
        # The scheduler's view of the queue: whose jobs wait, for which backend.
        Index("ix_jobs_state_tenant_id_backend", "state", "tenant_id", "backend", "project_id"),
        # Quotas per day and budgets per period count a tenant's jobs since a time.
        Index("ix_jobs_tenant_id_created_at", "tenant_id", "created_at"),
    )
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"))
    project_id: Mapped[str] = mapped_column(Id, ForeignKey("projects.id"))
    principal_id: Mapped[str] = mapped_column(Id, ForeignKey("principals.id"))
    backend: Mapped[str] = mapped_column(String(64))
    shots: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(24))
    circuit_format: Mapped[str] = mapped_column(String(16))
    circuit_sha256: Mapped[str] = mapped_column(String(64))
    num_qubits: Mapped[int] = mapped_column(Integer)
    num_clbits: Mapped[int] = mapped_column(Integer)
    gate_count: Mapped[int] = mapped_column(Integer)
    depth: Mapped[int] = mapped_column(Integer)
    options: Mapped[dict[str, object]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)
    queued_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: Higher runs first among the same tenant's queued jobs (0 by default).
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: The session (a hybrid loop's jobs under one principal) it belongs to.
    session_id: Mapped[str | None] = mapped_column(Id, nullable=True, index=True)
    #: The approval request a held job waits for (state ``awaiting_approval``).
    approval_id: Mapped[str | None] = mapped_column(Id, nullable=True)
    #: Cost in micro-units of the platform's currency: estimated before it
    #: runs, and as charged once it has run.
    estimated_cost: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cost: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class JobTransition(Base):
    __tablename__ = "job_transitions"
    id: Mapped[int] = mapped_column(Seq, primary_key=True)
    job_id: Mapped[str] = mapped_column(Id, ForeignKey("jobs.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"))
    from_state: Mapped[str | None] = mapped_column(String(24), nullable=True)
    to_state: Mapped[str] = mapped_column(String(24))
    actor: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    at: Mapped[datetime] = mapped_column(Timestamp)


class SealedObject(Base):
    """An envelope-encrypted value (:mod:`qustody.crypto.envelope`).

    ``(object_id, field)`` and the tenant are bound into the ciphertext's
    associated data, so a body moved to another row fails to open.
    ``key_id`` and ``wrapped_dek`` change when rotation rewraps the data key;
    ``body`` never does. ``plaintext_sha256`` is kept for circuits and
    results only (provenance), never for secrets.
    """

    __tablename__ = "sealed_objects"
    object_id: Mapped[str] = mapped_column(Id, primary_key=True)
    field: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"), index=True)
    project_id: Mapped[str | None] = mapped_column(Id, ForeignKey("projects.id"), nullable=True)
    key_id: Mapped[str] = mapped_column(KeyIdType, ForeignKey("key_versions.key_id"), index=True)
    wrapped_dek: Mapped[bytes] = mapped_column(LargeBinary)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    plaintext_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class KeyRing(Base):
    """The versioned key-encryption keys of one tenant, project and purpose.

    ``state``: ``active``; ``disabled`` (nothing opens or seals until
    enabled); ``destroying`` then ``destroyed`` (crypto-shredded, final).
    """

    __tablename__ = "key_rings"
    ring: Mapped[str] = mapped_column(String(160), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"), index=True)
    project_id: Mapped[str | None] = mapped_column(Id, ForeignKey("projects.id"), nullable=True)
    purpose: Mapped[str] = mapped_column(String(16))
    provider: Mapped[str] = mapped_column(String(32))
    current_version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)


class KeyVersion(Base):
    """One version of a ring's KEK, held by a key provider.

    ``state``: ``current`` (new data); ``retiring`` (rewrap moving its data
    keys away); ``retired`` (nothing referenced it any more; destroyed in the
    provider); ``destroyed`` (crypto-shredded with its ring).
    """

    __tablename__ = "key_versions"
    __table_args__ = (UniqueConstraint("ring", "version"),)
    key_id: Mapped[str] = mapped_column(KeyIdType, primary_key=True)
    id: Mapped[str] = mapped_column(Id, unique=True)
    ring: Mapped[str] = mapped_column(String(160), ForeignKey("key_rings.ring"))
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    retired_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    destroyed_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


class DestructionCertificate(Base):
    """What a crypto-shredding destroyed, as a canonical JSON document whose
    SHA-256 is in the audit log. Append-only."""

    __tablename__ = "destruction_certificates"
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"), index=True)
    project_id: Mapped[str | None] = mapped_column(Id, ForeignKey("projects.id"), nullable=True)
    issued_at: Mapped[datetime] = mapped_column(Timestamp)
    document: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))


class Secret(Base):
    """A tenant's stored credential; its value is sealed (field ``value``)
    and never read back through the API."""

    __tablename__ = "secrets"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_by: Mapped[str] = mapped_column(String(64))


class ExportKey(Base):
    """A tenant's public key (HPKE, X-Wing) that exports may be sealed to."""

    __tablename__ = "export_keys"
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"), primary_key=True)
    public_key: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    created_by: Mapped[str] = mapped_column(String(64))


class FederatedIdentity(Base):
    """An external issuer's subject, signed in as a principal of a tenant."""

    __tablename__ = "federated_identities"
    __table_args__ = (UniqueConstraint("issuer", "subject"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"), index=True)
    principal_id: Mapped[str] = mapped_column(Id, ForeignKey("principals.id"), index=True)
    issuer: Mapped[str] = mapped_column(String(512))
    subject: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    last_login_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


class LoginRequest(Base):
    """A browser sign-in between the redirect to the identity provider and
    its callback: single use, minutes long."""

    __tablename__ = "login_requests"
    state: Mapped[str] = mapped_column(String(64), primary_key=True)
    provider: Mapped[str] = mapped_column(String(64))
    nonce: Mapped[str] = mapped_column(String(64))
    code_verifier: Mapped[str] = mapped_column(String(128))
    redirect_uri: Mapped[str] = mapped_column(String(1024))
    return_to: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    expires_at: Mapped[datetime] = mapped_column(Timestamp, index=True)
    used_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


class TrustRule(Base):
    """Workload identity: tokens of ``issuer`` for ``audience`` whose claims
    meet ``conditions`` are exchanged for a token of ``principal_id``."""

    __tablename__ = "trust_rules"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    issuer: Mapped[str] = mapped_column(String(512), index=True)
    audience: Mapped[str] = mapped_column(String(512))
    conditions: Mapped[dict[str, object]] = mapped_column(JSON)
    principal_id: Mapped[str] = mapped_column(Id, ForeignKey("principals.id"))
    scopes: Mapped[str] = mapped_column(String(512))
    ttl_seconds: Mapped[int] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=true(), default=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    created_by: Mapped[str] = mapped_column(String(64))


class DpopProof(Base):
    """A DPoP proof already seen (RFC 9449 section 11.1), kept until it expires."""

    __tablename__ = "dpop_proofs"
    jkt: Mapped[str] = mapped_column(String(64), primary_key=True)
    jti: Mapped[str] = mapped_column(String(128), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(Timestamp, index=True)


class ApiKey(Base):
    """An API key: only the SHA-256 of its secret is stored."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"), index=True)
    principal_id: Mapped[str] = mapped_column(Id, ForeignKey("principals.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    created_by: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


class LocalAccount(Base):
    """Embedded mode's own sign-in (development only): an Argon2id password
    hash; the TOTP secret is sealed (field ``totp`` of the principal)."""

    __tablename__ = "local_accounts"
    principal_id: Mapped[str] = mapped_column(Id, ForeignKey("principals.id"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"), index=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    totp_enabled: Mapped[bool] = mapped_column(Boolean, server_default=false(), default=False)
    #: The last TOTP time step accepted: a code is good once.
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    failed_attempts: Mapped[int] = mapped_column(Integer, server_default="0", default=0)
    locked_until: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)


class ScimGroup(Base):
    """A group the tenant's identity provider provisions; its members hold
    ``role`` (in ``project_id``, or tenant-wide) while they are members."""

    __tablename__ = "scim_groups"
    __table_args__ = (UniqueConstraint("tenant_id", "display_name"),)
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"), index=True)
    display_name: Mapped[str] = mapped_column(String(256))
    external_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    role: Mapped[str | None] = mapped_column(String(32), nullable=True)
    project_id: Mapped[str | None] = mapped_column(Id, ForeignKey("projects.id"), nullable=True)
    version: Mapped[int] = mapped_column(Integer, server_default="1", default=1)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)


class ScimGroupMember(Base):
    __tablename__ = "scim_group_members"
    group_id: Mapped[str] = mapped_column(Id, ForeignKey("scim_groups.id"), primary_key=True)
    principal_id: Mapped[str] = mapped_column(
        Id, ForeignKey("principals.id"), primary_key=True, index=True
    )
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"), index=True)


class TenantPolicy(Base):
    """One version of a tenant's Cedar policies; append-only, newest in force."""

    __tablename__ = "tenant_policies"
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    comment: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    created_by: Mapped[str] = mapped_column(String(64))


class AuditEvent(Base):
    """Append-only: database triggers refuse UPDATE and DELETE."""

    __tablename__ = "audit_events"
    seq: Mapped[int] = mapped_column(Seq, primary_key=True)
    at: Mapped[datetime] = mapped_column(Timestamp)
    event_type: Mapped[str] = mapped_column(String(48), index=True)
    tenant_id: Mapped[str | None] = mapped_column(Id, nullable=True, index=True)
    actor_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    actor_tenant_id: Mapped[str | None] = mapped_column(Id, nullable=True)
    auth_method: Mapped[str | None] = mapped_column(String(32), nullable=True)
    #: How strongly the actor authenticated (``aal1``/``aal2``/``aal3``, or ``system``).
    auth_strength: Mapped[str | None] = mapped_column(String(16), nullable=True)
    token_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    client_addr: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user_agent: Mapped[str | None] = mapped_column(String(256), nullable=True)
    resource_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    resource_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    decision: Mapped[str | None] = mapped_column(String(8), nullable=True)
    policy_ids: Mapped[str | None] = mapped_column(String(512), nullable=True)
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(512), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    job_id: Mapped[str | None] = mapped_column(Id, nullable=True, index=True)
    approval_id: Mapped[str | None] = mapped_column(Id, nullable=True)
    payload_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)


class _Counter:
    """One row (``id`` 1) holding a ``size`` that only grows (a trigger refuses less)."""

    @declared_attr.directive
    def __table_args__(cls) -> tuple[CheckConstraint, ...]:  # noqa: N805
        return (
            CheckConstraint("id = 1", name="single_row"),
            CheckConstraint("size >= 0", name="size"),
        )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)


class AuditHead(_Counter, Base):
    """The number of audit events, advanced by each recording transaction."""

    __tablename__ = "audit_head"


class AuditTreeNode(Base):
    """The hash of one complete subtree of the audit log's Merkle tree.

    ``(level, idx)`` covers leaves ``[idx * 2**level, (idx + 1) * 2**level)``;
    level 0 holds the leaf hashes. Written once by the integrator, never
    changed (triggers refuse UPDATE and DELETE).
    """

    __tablename__ = "audit_tree"
    level: Mapped[int] = mapped_column(Integer, primary_key=True)
    idx: Mapped[int] = mapped_column(Seq, primary_key=True)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditTreeHead(_Counter, Base):
    """How many events the stored tree covers."""

    __tablename__ = "audit_tree_head"


class AuditCheckpoint(Base):
    """A signed checkpoint (C2SP tlog-checkpoint note) the log issued; append-only."""

    __tablename__ = "audit_checkpoints"
    size: Mapped[int] = mapped_column(Seq, primary_key=True)
    root: Mapped[bytes] = mapped_column(LargeBinary(32))
    note: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[datetime] = mapped_column(Timestamp)


class Alert(Base):
    """An alert to deliver (budget thresholds, break-glass, ...): written in
    the transaction of what raised it, so none is lost; delivered later by
    signed webhook (``qustody.governance.alerts``)."""

    __tablename__ = "alerts"
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    #: None for platform alerts (for operators only).
    tenant_id: Mapped[str | None] = mapped_column(Id, ForeignKey("tenants.id"), nullable=True)
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, object]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(Timestamp, index=True)


# -- governance: quotas, usage, costs and budgets (revision 0008) -------------


class Quota(Base):
    """A limit on one metric (``qustody.governance.quotas.Metric``) for a
    tenant as a whole, one of its projects, or its use of one backend."""

    __tablename__ = "quotas"
    __table_args__ = (UniqueConstraint("tenant_id", "scope", "metric"),)
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"), index=True)
    #: ``tenant``, ``project:<project id>`` or ``backend:<backend name>``.
    scope: Mapped[str] = mapped_column(String(80))
    project_id: Mapped[str | None] = mapped_column(Id, ForeignKey("projects.id"), nullable=True)
    backend: Mapped[str | None] = mapped_column(String(64), nullable=True)
    metric: Mapped[str] = mapped_column(String(32))
    maximum: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_by: Mapped[str] = mapped_column(String(64))


class BackendPrice(Base):
    """One version of a backend's price, in force from ``effective_at`` until
    the next version's; a job is charged at the version in force when it was
    submitted. Amounts in micro-units of the platform's currency."""

    __tablename__ = "backend_prices"
    __table_args__ = (UniqueConstraint("backend", "effective_at"),)
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    backend: Mapped[str] = mapped_column(String(64), index=True)
    per_task: Mapped[int] = mapped_column(BigInteger)
    per_shot: Mapped[int] = mapped_column(BigInteger)
    per_second: Mapped[int] = mapped_column(BigInteger)
    #: For per-second prices, the estimate's model: overhead + shots x time per shot.
    shot_microseconds: Mapped[int] = mapped_column(BigInteger)
    overhead_microseconds: Mapped[int] = mapped_column(BigInteger)
    effective_at: Mapped[datetime] = mapped_column(Timestamp)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    created_by: Mapped[str] = mapped_column(String(64))


class Budget(Base):
    """A spending limit for a tenant, one of its projects or its use of one
    backend, per day, week or month of the tenant's time zone."""

    __tablename__ = "budgets"
    __table_args__ = (UniqueConstraint("tenant_id", "scope", "period"),)
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"), index=True)
    #: ``tenant``, ``project:<project id>`` or ``backend:<backend name>``.
    scope: Mapped[str] = mapped_column(String(80))
    project_id: Mapped[str | None] = mapped_column(Id, ForeignKey("projects.id"), nullable=True)
    backend: Mapped[str | None] = mapped_column(String(64), nullable=True)
    period: Mapped[str] = mapped_column(String(8))
    maximum: Mapped[int] = mapped_column(BigInteger)
    #: Percentages whose crossing raises one alert per period (``[50, 80, 100]``).
    thresholds: Mapped[list[int]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_by: Mapped[str] = mapped_column(String(64))


class BudgetCrossing(Base):
    """A budget threshold crossed in one period: its alert was raised once."""

    __tablename__ = "budget_crossings"
    budget_id: Mapped[str] = mapped_column(Id, ForeignKey("budgets.id"), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(Timestamp, primary_key=True)
    threshold: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"), index=True)
    alert_id: Mapped[str] = mapped_column(Id)
    at: Mapped[datetime] = mapped_column(Timestamp)


# -- governance: rate limits and webhook delivery (revision 0009) -------------


class RateLimitBucket(Base):
    """A brute-force bucket shared by every API process: the time (seconds
    since the epoch) it is full again. ``key`` is a SHA-256 digest of the
    limit and what it counts (an address, an account), never the value."""

    __tablename__ = "rate_limit_buckets"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    full_at: Mapped[float] = mapped_column(Float, index=True)
    #: Until when a refusal has been recorded (one audit event per window).
    reported_until: Mapped[float | None] = mapped_column(Float, nullable=True)


class WebhookEndpoint(Base):
    """Where alerts of a tenant (or, ``platform``, the operators') go; the
    signing secret is sealed (``sealed_objects``, field ``webhook_secret``)."""

    __tablename__ = "webhook_endpoints"
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"), index=True)
    platform: Mapped[bool] = mapped_column(Boolean, server_default=false(), default=False)
    url: Mapped[str] = mapped_column(String(2048))
    #: Kind patterns (``budget.*``, ``breakglass.invoked``); empty: every kind.
    kinds: Mapped[list[str]] = mapped_column(JSON)
    description: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    created_by: Mapped[str] = mapped_column(String(64))


class WebhookFanout(Base):
    """An alert already matched to the endpoints that want it."""

    __tablename__ = "webhook_fanout"
    alert_id: Mapped[str] = mapped_column(Id, ForeignKey("alerts.id"), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(Id, nullable=True)
    at: Mapped[datetime] = mapped_column(Timestamp)


class WebhookDelivery(Base):
    """One alert to one endpoint; its id is the ``webhook-id`` of every attempt."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (UniqueConstraint("alert_id", "endpoint_id"),)
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    #: The endpoint's tenant.
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"))
    alert_id: Mapped[str] = mapped_column(Id, ForeignKey("alerts.id"))
    endpoint_id: Mapped[str] = mapped_column(
        Id, ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True
    )
    attempts: Mapped[int] = mapped_column(Integer, server_default="0", default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True, index=True)
    delivered_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    failed_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)


# -- governance: approvals, elevation and break-glass (revision 0010) ---------


class ApprovalRequest(Base):
    """A request to do something a policy holds for approval (``@approvals``):
    one action on one resource, a held job, or a just-in-time elevation.

    ``state``: ``pending`` → ``approved`` (enough distinct approvers) →
    ``used`` (an action request, spent once); or ``denied``, ``cancelled``,
    ``expired``. A job's or an elevation's request ends at ``approved``.
    """

    __tablename__ = "approval_requests"
    __table_args__ = (Index("ix_approval_requests_state_expires_at", "state", "expires_at"),)
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"), index=True)
    #: ``action``, ``job`` or ``elevation``.
    kind: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(32))
    resource_type: Mapped[str] = mapped_column(String(16))
    resource_id: Mapped[str] = mapped_column(String(64))
    project_id: Mapped[str | None] = mapped_column(Id, nullable=True)
    requester_id: Mapped[str] = mapped_column(Id, ForeignKey("principals.id"), index=True)
    reason: Mapped[str] = mapped_column(String(512))
    ticket: Mapped[str] = mapped_column(String(128))
    #: How many distinct approvers it needs (N of the tenant's M approvers).
    required: Mapped[int] = mapped_column(Integer)
    approvals: Mapped[int] = mapped_column(Integer, default=0)
    #: The policies that held it (``@approvals`` forbids), comma-separated.
    policy_ids: Mapped[str] = mapped_column(String(512))
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    decided_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    used_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    #: An elevation: the role asked for, and for how long once approved.
    role: Mapped[str | None] = mapped_column(String(32), nullable=True)
    duration_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ApprovalVote(Base):
    """One approver's verdict on a request; one per approver (N-of-M counts
    distinct approvers)."""

    __tablename__ = "approval_votes"
    __table_args__ = (UniqueConstraint("approval_id", "approver_id"),)
    id: Mapped[int] = mapped_column(Seq, primary_key=True, autoincrement=True)
    approval_id: Mapped[str] = mapped_column(Id, ForeignKey("approval_requests.id"))
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"))
    approver_id: Mapped[str] = mapped_column(Id, ForeignKey("principals.id"))
    #: ``approve`` or ``deny``.
    verdict: Mapped[str] = mapped_column(String(8))
    comment: Mapped[str | None] = mapped_column(String(512), nullable=True)
    at: Mapped[datetime] = mapped_column(Timestamp)


class AccessGrant(Base):
    """A role held for a bounded time: a just-in-time elevation once approved,
    or a break-glass elevation taken at once. ``roles_of`` counts it while
    ``starts_at <= now < expires_at`` and it is not revoked: it ends by
    itself. ``expired_at`` only records that the expiry was audited."""

    __tablename__ = "access_grants"
    __table_args__ = (
        Index("ix_access_grants_principal_id_expires_at", "principal_id", "expires_at"),
    )
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"), index=True)
    principal_id: Mapped[str] = mapped_column(Id, ForeignKey("principals.id"))
    role: Mapped[str] = mapped_column(String(32))
    #: None: the role tenant-wide.
    project_id: Mapped[str | None] = mapped_column(Id, ForeignKey("projects.id"), nullable=True)
    approval_id: Mapped[str | None] = mapped_column(Id, nullable=True)
    breakglass: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str] = mapped_column(String(512))
    ticket: Mapped[str | None] = mapped_column(String(128), nullable=True)
    starts_at: Mapped[datetime] = mapped_column(Timestamp)
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(Id, nullable=True)
    expired_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    #: Break-glass: reviewed after the fact by another operator.
    reviewed_by: Mapped[str | None] = mapped_column(Id, nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    review_notes: Mapped[str | None] = mapped_column(String(1024), nullable=True)


# -- governance: scheduling, reservations and sessions (revision 0011) --------


class BackendState(Base):
    """A backend's operating state, set by platform admins: paused or not and
    its concurrency limit. A reservation on a backend locks its row, so two
    overlapping reservations cannot both be taken."""

    __tablename__ = "backend_states"
    backend: Mapped[str] = mapped_column(String(64), primary_key=True)
    paused: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: Why it was paused (for the people whose jobs wait).
    reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    #: At most this many of its jobs run at once; None: the deployment's default.
    max_running: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    updated_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class MaintenanceWindow(Base):
    """A time during which no job starts on a backend (jobs still queue)."""

    __tablename__ = "maintenance_windows"
    __table_args__ = (Index("ix_maintenance_windows_backend_ends_at", "backend", "ends_at"),)
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    backend: Mapped[str] = mapped_column(String(64))
    starts_at: Mapped[datetime] = mapped_column(Timestamp)
    ends_at: Mapped[datetime] = mapped_column(Timestamp)
    reason: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    created_by: Mapped[str] = mapped_column(String(64))
    cancelled_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


class SchedulerClock(Base):
    """The fair queue's virtual time (one row, ``id`` 1): the start tag of the
    last job started. Claims lock this row on PostgreSQL, so scheduling
    decisions are taken one at a time, as SQLite's single writer does."""

    __tablename__ = "scheduler_clock"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    virtual_time: Mapped[float] = mapped_column(Float, default=0.0)


class TenantShare(Base):
    """A tenant's share of the backends (``weight``, default 1) and the finish
    tag of its last started job, for weighted fair queuing."""

    __tablename__ = "tenant_shares"
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"), primary_key=True)
    weight: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    finish_tag: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")


class Reservation(Base):
    """A backend held for one tenant during ``[starts_at, ends_at)``: only
    that tenant's jobs start on it then."""

    __tablename__ = "reservations"
    __table_args__ = (Index("ix_reservations_backend_ends_at", "backend", "ends_at"),)
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"), index=True)
    backend: Mapped[str] = mapped_column(String(64))
    starts_at: Mapped[datetime] = mapped_column(Timestamp)
    ends_at: Mapped[datetime] = mapped_column(Timestamp)
    reason: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    created_by: Mapped[str] = mapped_column(Id)
    cancelled_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


class JobSession(Base):
    """A session: one principal's jobs on one backend (a hybrid loop), with a
    maximum lifetime; once one of its jobs has started, the rest run ahead of
    the tenant's other jobs."""

    __tablename__ = "job_sessions"
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Id, ForeignKey("tenants.id"), index=True)
    principal_id: Mapped[str] = mapped_column(Id, ForeignKey("principals.id"))
    backend: Mapped[str] = mapped_column(String(64))
    #: ``open``, ``closed`` or ``expired``.
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    expires_at: Mapped[datetime] = mapped_column(Timestamp, index=True)
    started_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


# The tables themselves, for Core inserts on hot paths (no ORM unit of work).
AUDIT_EVENTS = cast(Table, AuditEvent.__table__)
JOB_TRANSITIONS = cast(Table, JobTransition.__table__)
SEALED_OBJECTS = cast(Table, SealedObject.__table__)
JOBS = cast(Table, Job.__table__)
PROJECTS = cast(Table, Project.__table__)
PRINCIPALS = cast(Table, Principal.__table__)
MEMBERSHIPS = cast(Table, Membership.__table__)
ISSUED_TOKENS = cast(Table, IssuedToken.__table__)
AUDIT_HEAD = cast(Table, AuditHead.__table__)
AUDIT_TREE = cast(Table, AuditTreeNode.__table__)
AUDIT_TREE_HEAD = cast(Table, AuditTreeHead.__table__)
AUDIT_CHECKPOINTS = cast(Table, AuditCheckpoint.__table__)
KEY_RINGS = cast(Table, KeyRing.__table__)
KEY_VERSIONS = cast(Table, KeyVersion.__table__)
DESTRUCTION_CERTIFICATES = cast(Table, DestructionCertificate.__table__)
SECRETS = cast(Table, Secret.__table__)
EXPORT_KEYS = cast(Table, ExportKey.__table__)
TENANTS = cast(Table, Tenant.__table__)
FEDERATED_IDENTITIES = cast(Table, FederatedIdentity.__table__)
LOGIN_REQUESTS = cast(Table, LoginRequest.__table__)
TRUST_RULES = cast(Table, TrustRule.__table__)
DPOP_PROOFS = cast(Table, DpopProof.__table__)
API_KEYS = cast(Table, ApiKey.__table__)
LOCAL_ACCOUNTS = cast(Table, LocalAccount.__table__)
SCIM_GROUPS = cast(Table, ScimGroup.__table__)
SCIM_GROUP_MEMBERS = cast(Table, ScimGroupMember.__table__)
TENANT_POLICIES = cast(Table, TenantPolicy.__table__)
ALERTS = cast(Table, Alert.__table__)
# -- governance tables (0008) --
QUOTAS = cast(Table, Quota.__table__)
BACKEND_PRICES = cast(Table, BackendPrice.__table__)
BUDGETS = cast(Table, Budget.__table__)
BUDGET_CROSSINGS = cast(Table, BudgetCrossing.__table__)
# -- governance tables (0009) --
RATE_LIMIT_BUCKETS = cast(Table, RateLimitBucket.__table__)
WEBHOOK_ENDPOINTS = cast(Table, WebhookEndpoint.__table__)
WEBHOOK_FANOUT = cast(Table, WebhookFanout.__table__)
WEBHOOK_DELIVERIES = cast(Table, WebhookDelivery.__table__)
# -- governance tables (0010) --
APPROVAL_REQUESTS = cast(Table, ApprovalRequest.__table__)
APPROVAL_VOTES = cast(Table, ApprovalVote.__table__)
ACCESS_GRANTS = cast(Table, AccessGrant.__table__)
# -- governance tables (0011) --
BACKEND_STATES = cast(Table, BackendState.__table__)
MAINTENANCE_WINDOWS = cast(Table, MaintenanceWindow.__table__)
SCHEDULER_CLOCK = cast(Table, SchedulerClock.__table__)
TENANT_SHARES = cast(Table, TenantShare.__table__)
RESERVATIONS = cast(Table, Reservation.__table__)
JOB_SESSIONS = cast(Table, JobSession.__table__)

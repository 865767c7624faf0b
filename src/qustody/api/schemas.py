"""Request and response bodies. Requests are strict: no type coercion, no unknown fields."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from qustody.domain.vocabulary import DataClass, Role
from qustody.jobs.views import JobView, ResultView
from qustody.keys.service import RingStatus

#: Largest request body the API reads (the circuit limit is checked separately).
MAX_BODY_BYTES = 2 * 1024 * 1024
#: An export sealed to a tenant's public key (:mod:`qustody.crypto.sealed`).
SEALED_MEDIA_TYPE = "application/vnd.qustody.sealed"
#: Job labels: at most this many, keys like Kubernetes label names.
MAX_LABELS = 32
LABEL_KEY_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$"


class Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class Response(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# -- jobs ---------------------------------------------------------------------------


class JobApproval(Request):
    reason: Annotated[str, Field(min_length=1, max_length=512, description="Approvers read it")]
    ticket: Annotated[str, Field(min_length=1, max_length=128, description="e.g. CHG-1234")]


class JobSubmit(Request):
    project: Annotated[str, Field(min_length=1, max_length=128)]
    backend: Annotated[str, Field(min_length=1, max_length=64)]
    shots: Annotated[int, Field(description="1 ≤ shots ≤ the backend's max_shots")] = 1024
    qasm: Annotated[str, Field(description="OpenQASM 2 or 3 source", max_length=MAX_BODY_BYTES)]
    memory: bool = False
    seed: Annotated[int | None, Field(ge=0, le=2**63 - 1)] = None
    name: Annotated[
        str | None,
        Field(min_length=1, max_length=200, description="A name for people; stored encrypted"),
    ] = None
    labels: Annotated[
        dict[
            Annotated[str, Field(pattern=LABEL_KEY_PATTERN)], Annotated[str, Field(max_length=256)]
        ],
        Field(max_length=MAX_LABELS, description="Key-value labels; stored encrypted"),
    ] = {}
    priority: Annotated[
        int,
        Field(ge=0, le=9, description="0-9; higher starts first among your tenant's own jobs"),
    ] = 0
    session: Annotated[
        str | None,
        Field(min_length=1, max_length=64, description="A session of yours (ses_...) to join"),
    ] = None
    approval: Annotated[
        JobApproval | None,
        Field(description="Why and under which ticket, for a job a policy holds for approval"),
    ] = None


class CircuitSummary(Response):
    format: str
    sha256: str
    num_qubits: int
    num_clbits: int
    gate_count: int
    depth: int


class JobError(Response):
    code: str
    detail: str | None


class Transition(Response):
    from_: Annotated[str | None, Field(serialization_alias="from")]
    to: str
    at: datetime
    actor: str
    reason: str | None


class JobWarning(Response):
    code: str
    detail: str


class Job(Response):
    id: str
    tenant_id: str
    project_id: str
    principal_id: str
    backend: str
    shots: int
    state: str
    circuit: CircuitSummary
    created_at: datetime
    updated_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    error: JobError | None
    name: str | None = None
    labels: dict[str, str] = {}
    transitions: list[Transition] | None = None
    priority: int = 0
    session_id: str | None = None
    approval_id: str | None = None
    #: Micro-units of the platform's currency (1 000 000 = one unit).
    estimated_cost: int | None = None
    cost: int | None = None
    #: Present in the answer to a submission: e.g. a quota 80 % used.
    warnings: list[JobWarning] = []
    #: Queued: its place among your tenant's queued jobs on its backend (1: next).
    queue_position: int | None = None

    @classmethod
    def of(cls, job: JobView) -> Job:
        return cls(
            id=job.id,
            tenant_id=job.tenant_id,
            project_id=job.project_id,
            principal_id=job.principal_id,
            backend=job.backend,
            shots=job.shots,
            state=job.state,
            circuit=CircuitSummary(
                format=job.circuit_format,
                sha256=job.circuit_sha256,
                num_qubits=job.num_qubits,
                num_clbits=job.num_clbits,
                gate_count=job.gate_count,
                depth=job.depth,
            ),
            created_at=job.created_at,
            updated_at=job.updated_at,
            queued_at=job.queued_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            error=JobError(code=job.error_code, detail=job.error_detail)
            if job.error_code
            else None,
            name=job.name,
            labels=dict(job.labels),
            transitions=None
            if job.transitions is None
            else [
                Transition(
                    from_=t.from_state, to=t.to_state, at=t.at, actor=t.actor, reason=t.reason
                )
                for t in job.transitions
            ],
            priority=job.priority,
            session_id=job.session_id,
            approval_id=job.approval_id,
            estimated_cost=job.estimated_cost,
            cost=job.cost,
            warnings=[JobWarning(code=code, detail=detail) for code, detail in job.warnings],
            queue_position=job.queue_position,
        )


class JobList(Response):
    items: list[Job]
    next_cursor: str | None


class Result(Response):
    job_id: str
    counts: dict[str, int]
    memory: list[str] | None
    clbit_registers: list[tuple[str, int]]
    metadata: dict[str, str | int | float | bool | None]

    @classmethod
    def of(cls, result: ResultView) -> Result:
        return cls(
            job_id=result.job_id,
            counts=result.counts,
            memory=result.memory,
            clbit_registers=result.clbit_registers,
            metadata=result.metadata,
        )


# -- backends -------------------------------------------------------------------------


class Backend(Response):
    name: str
    description: str
    provider: str
    simulator: bool
    max_qubits: int
    max_shots: int
    basis_gates: list[str]
    method: str
    online: bool
    #: Operating state (docs/scheduling.md): jobs queue but do not start while
    #: a backend is paused or inside a maintenance window.
    paused: bool = False
    maintenance: bool = False


class BackendList(Response):
    items: list[Backend]


# -- tenants, projects, members, tokens ------------------------------------------------


class TenantCreate(Request):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    admin_name: Annotated[str, Field(min_length=1, max_length=128)]


class Tenant(Response):
    id: str
    name: str
    created_at: datetime


class TenantList(Response):
    items: list[Tenant]


class IssuedTokenOut(Response):
    token: str
    jti: str
    principal_id: str
    expires_at: datetime
    scopes: list[str]


class TenantAdmin(Response):
    principal_id: str
    name: str
    token: str
    expires_at: datetime


class TenantCreated(Response):
    tenant: Tenant
    admin: TenantAdmin


class ProjectCreate(Request):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    # Enums arrive as JSON strings; strict mode would demand enum instances.
    data_class: Annotated[DataClass, Field(strict=False)] = DataClass.INTERNAL


class Project(Response):
    id: str
    tenant_id: str
    name: str
    data_class: str
    created_at: datetime


class ProjectList(Response):
    items: list[Project]


class MemberAdd(Request):
    principal: Annotated[str, Field(min_length=1, max_length=128)]
    role: Annotated[Role, Field(strict=False)]
    project: Annotated[str | None, Field(max_length=128)] = None
    kind: Annotated[str, Field(max_length=16)] = "user"


class Member(Response):
    principal_id: str
    name: str
    kind: str
    role: str
    project_id: str | None


class MemberList(Response):
    items: list[Member]


class TokenIssue(Request):
    principal: Annotated[str | None, Field(max_length=128)] = None
    scopes: Annotated[list[str] | None, Field(max_length=32)] = None
    ttl_seconds: int | None = None


class Health(Response):
    status: str


class Readiness(Response):
    status: str
    checks: dict[str, str]


class InclusionProof(Response):
    """An RFC 9162 audit path (base64 hashes, leaf to root) in the tree of ``size`` events."""

    size: int
    path: list[str]


class AuditEvent(Response):
    """An audit event exactly as its Merkle leaf encodes it (``event``), the leaf
    hash the log recorded, and its inclusion proof once a checkpoint covers it."""

    event: dict[str, str | int | None]
    leaf: str | None
    proof: InclusionProof | None = None


class AuditEventPage(Response):
    checkpoint: str | None = Field(description="The signed checkpoint the proofs lead to")
    items: list[AuditEvent]
    next: int | None = Field(description="Pass as `after` for the next page")


class AuditEventProof(Response):
    checkpoint: str
    item: AuditEvent


class ConsistencyProof(Response):
    from_size: int = Field(serialization_alias="from")
    to_size: int = Field(serialization_alias="to")
    path: list[str]


# -- keys, secrets, export key ------------------------------------------------------


class KeyVersion(Response):
    key_id: str
    version: int
    state: str
    objects: int
    created_at: datetime


class KeyRing(Response):
    ring: str
    project_id: str | None
    purpose: str
    provider: str
    state: str
    current_version: int
    versions: list[KeyVersion]


class KeyRingList(Response):
    items: list[KeyRing]

    @classmethod
    def of(cls, rings: list[RingStatus]) -> KeyRingList:
        return cls(
            items=[
                KeyRing(
                    ring=r.ring,
                    project_id=r.project_id,
                    purpose=r.purpose,
                    provider=r.provider,
                    state=r.state,
                    current_version=r.current_version,
                    versions=[KeyVersion.model_validate(v) for v in r.versions],
                )
                for r in rings
            ]
        )


class KeysRotate(Request):
    project_id: Annotated[str | None, Field(max_length=64)] = None


class KeysRotated(Response):
    rotated: list[str]


class SecretPut(Request):
    value: Annotated[str, Field(min_length=1, max_length=65536, description="Write-only")]


class Secret(Response):
    name: str
    created_at: datetime
    updated_at: datetime
    updated_by: str


class SecretList(Response):
    items: list[Secret]


class ExportKeyPut(Request):
    public_key: Annotated[str, Field(min_length=1, max_length=4096)]


class ExportKey(Response):
    public_key: str
    fingerprint: str
    created_at: datetime
    created_by: str

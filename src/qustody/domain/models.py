"""Value objects shared across layers. Pure data; no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from qustody.domain.ids import JobId, PrincipalId, ProjectId, TenantId
from qustody.domain.vocabulary import Action, DataClass, Role


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as established by a verified token.

    Built only by the identity layer; code past authentication never sees a
    raw token or a claims dict.
    """

    id: PrincipalId
    tenant_id: TenantId
    name: str
    kind: Literal["user", "workload", "operator"]
    token_id: str | None
    scopes: frozenset[str]
    auth_method: str
    #: Roles held tenant-wide (``tenant-admin``, ``platform-admin``).
    tenant_roles: frozenset[Role] = frozenset()
    #: Roles held per project.
    project_roles: tuple[tuple[ProjectId, Role], ...] = ()
    #: Authentication assurance (NIST SP 800-63B): ``aal1`` single factor,
    #: ``aal2`` multi-factor; MFA-backed sign-in raises it.
    auth_strength: str = "aal1"
    #: From the sign-in (OIDC ``acr``, ``amr``, ``auth_time``), carried by the
    #: Qustody token; ``None``/empty when the token came from elsewhere.
    acr: str | None = None
    amr: frozenset[str] = frozenset()
    auth_time: datetime | None = None
    #: The JWK thumbprint a sender-constrained (DPoP, RFC 9449) token is bound
    #: to; set only once this request's DPoP proof has been verified.
    dpop_jkt: str | None = None

    def roles_for(self, project_id: ProjectId | None) -> frozenset[Role]:
        roles = set(self.tenant_roles)
        if project_id is not None:
            roles.update(role for pid, role in self.project_roles if pid == project_id)
        return frozenset(roles)


@dataclass(frozen=True, slots=True)
class Resource:
    """What an action is aimed at, as the policy engine sees it.

    ``tenant_id`` is None only for platform resources (the backend catalogue,
    the tenant list).
    """

    type: Literal[
        "platform", "tenant", "project", "job", "backend", "principal", "token", "approval", "grant"
    ]
    id: str
    tenant_id: TenantId | None
    project_id: ProjectId | None = None
    data_class: DataClass | None = None
    owner_id: PrincipalId | None = None
    #: More attributes of the resource's Cedar entity, as the policy schema
    #: declares them for its type (a job's ``backend``, ``qubits``, ``shots``;
    #: a backend's ``simulator``, ``environment``, ...).
    attributes: Mapping[str, str | int | bool] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    action: Action
    #: Ids of the policies that decided (the permits that allowed, or the
    #: forbids that denied; empty when nothing permitted: default deny).
    policy_ids: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Where a request came from; travels with it for audit."""

    request_id: str
    client_addr: str | None = None
    user_agent: str | None = None
    #: An approved request (``Qustody-Approval: apr_...``) the caller spends
    #: on an action a policy holds for approval.
    approval_id: str | None = None


@dataclass(frozen=True, slots=True)
class CircuitInfo:
    """A circuit that passed validation, in the form the executor receives.

    ``source`` is the client's OpenQASM text, byte for byte; it is stored only
    encrypted, and ``sha256`` is what the audit log carries instead.
    """

    format: Literal["qasm2", "qasm3"]
    source: str
    sha256: str
    num_qubits: int
    num_clbits: int
    gate_count: int
    depth: int
    #: Classical registers in declaration order: (name, size).
    clbit_registers: tuple[tuple[str, int], ...] = ()
    #: Distinct operation names used (e.g. ``h``, ``cx``, ``measure``).
    operations: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class BackendInfo:
    name: str
    description: str
    provider: str
    simulator: bool
    max_qubits: int
    max_shots: int
    basis_gates: tuple[str, ...]
    method: str
    online: bool = True
    #: Where it runs, for policies: ``dev``, ``staging`` or ``prod``, and a region name.
    environment: str = "dev"
    region: str = "local"


@dataclass(frozen=True, slots=True)
class ExecutionRequest:
    """Everything a sandbox receives: one job's circuit and options, nothing else."""

    job_id: JobId
    backend: str
    circuit: str
    circuit_format: Literal["qasm2", "qasm3"]
    shots: int
    seed: int | None = None
    memory: bool = False


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    counts: dict[str, int]
    memory: list[str] | None
    clbit_registers: tuple[tuple[str, int], ...]
    backend: str
    shots: int
    seed: int
    method: str
    simulator_version: str
    execution_seconds: float
    metadata: dict[str, str | int | float | bool] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ExecutionFailure:
    code: str
    detail: str

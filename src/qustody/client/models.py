"""Typed values built from the gateway's JSON answers (see ``docs/api.md``).

Each type has a ``from_json`` constructor that checks the shape the REST contract
promises and raises :class:`~qustody.client.errors.QustodyProtocolError`, naming the
member, when an answer does not fit. Code past this module never sees a raw dict.
Secrets (issued tokens) are kept out of ``repr``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from qustody.client.errors import QustodyProtocolError


class JobState(enum.StrEnum):
    """Lifecycle states of a job, as the gateway names them."""

    SUBMITTED = "submitted"
    VALIDATED = "validated"
    AWAITING_APPROVAL = "awaiting_approval"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def is_terminal(self) -> bool:
        """Whether the job can no longer change state."""
        return self in _TERMINAL_STATES


_TERMINAL_STATES = frozenset(
    {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.REJECTED}
)


class _Reader:
    """Typed access to one JSON object, naming the offending member on error."""

    def __init__(self, data: object, what: str) -> None:
        if not isinstance(data, Mapping):
            raise QustodyProtocolError(f"expected a JSON object for {what}, got {_kind(data)}")
        self._data: Mapping[str, object] = data
        self._what = what

    def _fail(self, key: str, expected: str) -> QustodyProtocolError:
        value = self._data.get(key)
        return QustodyProtocolError(f"{self._what}.{key} should be {expected}, got {_kind(value)}")

    def raw(self, key: str) -> object:
        return self._data.get(key)

    def raw_object(self) -> Mapping[str, object]:
        return self._data

    def has(self, key: str) -> bool:
        return self._data.get(key) is not None

    def req_str(self, key: str) -> str:
        value = self._data.get(key)
        if not isinstance(value, str):
            raise self._fail(key, "a string")
        return value

    def opt_str(self, key: str) -> str | None:
        return None if self._data.get(key) is None else self.req_str(key)

    def req_int(self, key: str) -> int:
        value = self._data.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._fail(key, "an integer")
        return value

    def opt_int(self, key: str) -> int | None:
        return None if self._data.get(key) is None else self.req_int(key)

    def opt_float(self, key: str) -> float | None:
        value = self._data.get(key)
        if value is None:
            return None
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self._fail(key, "a number")
        return float(value)

    def req_bool(self, key: str) -> bool:
        value = self._data.get(key)
        if not isinstance(value, bool):
            raise self._fail(key, "true or false")
        return value

    def req_time(self, key: str) -> datetime:
        text = self.req_str(key)
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            raise self._fail(key, "an RFC 3339 timestamp") from None

    def opt_time(self, key: str) -> datetime | None:
        return None if self._data.get(key) is None else self.req_time(key)

    def str_list(self, key: str) -> tuple[str, ...]:
        value = self._data.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._fail(key, "a list of strings")
        return tuple(value)

    def obj(self, key: str) -> _Reader:
        return _Reader(self._data.get(key), f"{self._what}.{key}")

    def obj_list(self, key: str) -> list[_Reader]:
        value = self._data.get(key)
        if not isinstance(value, list):
            raise self._fail(key, "a list")
        return [_Reader(v, f"{self._what}.{key}[{i}]") for i, v in enumerate(value)]

    def mapping(self, key: str) -> Mapping[str, object]:
        value = self._data.get(key)
        if value is None:
            return MappingProxyType({})
        if not isinstance(value, Mapping):
            raise self._fail(key, "an object")
        return MappingProxyType(dict(value))


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return type(value).__name__


def items_of(data: object, what: str) -> list[_Reader]:
    """The ``items`` list of a ``{"items": [...]}`` answer."""
    return _Reader(data, what).obj_list("items")


# --------------------------------------------------------------------------- jobs


@dataclass(frozen=True, slots=True)
class CircuitInfo:
    """What the gateway learnt about a submitted circuit."""

    format: str
    sha256: str
    num_qubits: int
    num_clbits: int
    gate_count: int
    depth: int

    @classmethod
    def _parse(cls, r: _Reader) -> CircuitInfo:
        return cls(
            format=r.req_str("format"),
            sha256=r.req_str("sha256"),
            num_qubits=r.req_int("num_qubits"),
            num_clbits=r.req_int("num_clbits"),
            gate_count=r.req_int("gate_count"),
            depth=r.req_int("depth"),
        )


@dataclass(frozen=True, slots=True)
class JobError:
    """Why a job failed or was rejected."""

    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class Transition:
    """One recorded state change of a job."""

    from_state: JobState | None
    to_state: JobState
    at: datetime
    actor: str | None
    reason: str | None


def _state(r: _Reader, key: str) -> JobState:
    text = r.req_str(key)
    try:
        return JobState(text)
    except ValueError:
        raise QustodyProtocolError(f"unknown job state {text!r} in {key}") from None


@dataclass(frozen=True, slots=True)
class Job:
    """A job as the gateway reports it."""

    id: str
    tenant_id: str
    project_id: str
    principal_id: str
    backend: str
    shots: int
    state: JobState
    circuit: CircuitInfo | None
    created_at: datetime
    updated_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    error: JobError | None
    transitions: tuple[Transition, ...] = ()
    name: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    #: The approval request a held job waits for (``awaiting_approval``).
    approval_id: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.state.is_terminal

    @classmethod
    def from_json(cls, data: object) -> Job:
        r = _Reader(data, "job")
        error = None
        if r.has("error"):
            e = r.obj("error")
            error = JobError(code=e.req_str("code"), detail=e.opt_str("detail") or "")
        transitions = tuple(
            Transition(
                from_state=_state(t, "from") if t.has("from") else None,
                to_state=_state(t, "to"),
                at=t.req_time("at"),
                actor=t.opt_str("actor"),
                reason=t.opt_str("reason"),
            )
            for t in (r.obj_list("transitions") if r.has("transitions") else [])
        )
        return cls(
            id=r.req_str("id"),
            tenant_id=r.req_str("tenant_id"),
            project_id=r.req_str("project_id"),
            principal_id=r.req_str("principal_id"),
            backend=r.req_str("backend"),
            shots=r.req_int("shots"),
            state=_state(r, "state"),
            circuit=CircuitInfo._parse(r.obj("circuit")) if r.has("circuit") else None,
            created_at=r.req_time("created_at"),
            updated_at=r.req_time("updated_at"),
            queued_at=r.opt_time("queued_at"),
            started_at=r.opt_time("started_at"),
            finished_at=r.opt_time("finished_at"),
            error=error,
            transitions=transitions,
            name=r.opt_str("name"),
            labels={str(k): str(v) for k, v in r.mapping("labels").items()}
            if r.has("labels")
            else {},
            approval_id=r.opt_str("approval_id"),
        )


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of ``GET /v1/jobs``."""

    items: tuple[Job, ...]
    next_cursor: str | None

    @classmethod
    def from_json(cls, data: object) -> JobPage:
        r = _Reader(data, "job list")
        return cls(
            items=tuple(Job.from_json(item.raw_object()) for item in r.obj_list("items")),
            next_cursor=r.opt_str("next_cursor"),
        )


# -------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class ClbitRegister:
    """A classical register of the submitted circuit, in declaration order."""

    name: str
    size: int


@dataclass(frozen=True, slots=True)
class ResultMetadata:
    """How a result was produced."""

    backend: str
    shots: int
    seed: int | None
    method: str | None
    simulator: str | None
    execution_seconds: float | None
    queue_seconds: float | None
    extras: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))


_METADATA_KEYS = frozenset(
    {"backend", "shots", "seed", "method", "simulator", "execution_seconds", "queue_seconds"}
)


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of a completed job.

    ``counts`` and ``memory`` keys follow Qiskit's convention: bit 0 rightmost, one
    space between registers, the last-declared register leftmost. ``memory`` holds one
    string per shot, or ``None`` when the job was submitted without ``memory=True``.
    """

    job_id: str
    counts: Mapping[str, int]
    memory: tuple[str, ...] | None
    clbit_registers: tuple[ClbitRegister, ...]
    metadata: ResultMetadata

    @property
    def num_clbits(self) -> int:
        return sum(reg.size for reg in self.clbit_registers)

    @property
    def shots(self) -> int:
        return self.metadata.shots

    @classmethod
    def from_json(cls, data: object) -> Result:
        r = _Reader(data, "result")
        counts_obj = r.mapping("counts")
        counts: dict[str, int] = {}
        for key, value in counts_obj.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise QustodyProtocolError(f"result.counts[{key!r}] should be a count")
            counts[key] = value
        memory = r.str_list("memory") if r.has("memory") else None
        registers = []
        raw_registers = r.raw("clbit_registers")
        if not isinstance(raw_registers, list):
            raise QustodyProtocolError("result.clbit_registers should be a list")
        for i, pair in enumerate(raw_registers):
            if (
                not isinstance(pair, list | tuple)
                or len(pair) != 2
                or not isinstance(pair[0], str)
                or not isinstance(pair[1], int)
                or isinstance(pair[1], bool)
                or pair[1] < 0
            ):
                raise QustodyProtocolError(
                    f"result.clbit_registers[{i}] should be a [name, size] pair"
                )
            registers.append(ClbitRegister(name=pair[0], size=pair[1]))
        m = r.obj("metadata")
        metadata = ResultMetadata(
            backend=m.req_str("backend"),
            shots=m.req_int("shots"),
            seed=m.opt_int("seed"),
            method=m.opt_str("method"),
            simulator=m.opt_str("simulator"),
            execution_seconds=m.opt_float("execution_seconds"),
            queue_seconds=m.opt_float("queue_seconds"),
            extras=MappingProxyType(
                {k: v for k, v in m.raw_object().items() if k not in _METADATA_KEYS}
            ),
        )
        return cls(
            job_id=r.req_str("job_id"),
            counts=MappingProxyType(counts),
            memory=memory,
            clbit_registers=tuple(registers),
            metadata=metadata,
        )


# ------------------------------------------------------------------------- backends


@dataclass(frozen=True, slots=True)
class Backend:
    """A backend the gateway can run jobs on."""

    name: str
    description: str
    provider: str
    simulator: bool
    max_qubits: int
    max_shots: int
    basis_gates: tuple[str, ...]
    method: str | None
    online: bool

    @classmethod
    def from_json(cls, data: object) -> Backend:
        r = _Reader(data, "backend")
        return cls(
            name=r.req_str("name"),
            description=r.opt_str("description") or "",
            provider=r.req_str("provider"),
            simulator=r.req_bool("simulator"),
            max_qubits=r.req_int("max_qubits"),
            max_shots=r.req_int("max_shots"),
            basis_gates=r.str_list("basis_gates"),
            method=r.opt_str("method"),
            online=r.req_bool("online"),
        )


# ------------------------------------------------------- tenants, projects, members


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    created_at: datetime

    @classmethod
    def from_json(cls, data: object) -> Tenant:
        r = _Reader(data, "tenant")
        return cls(id=r.req_str("id"), name=r.req_str("name"), created_at=r.req_time("created_at"))


@dataclass(frozen=True, slots=True)
class IssuedCredential:
    """A new tenant's first admin and the token it can start with."""

    principal_id: str
    name: str
    token: str = field(repr=False)
    expires_at: datetime | None

    @classmethod
    def from_json(cls, data: object) -> IssuedCredential:
        r = _Reader(data, "admin")
        return cls(
            principal_id=r.req_str("principal_id"),
            name=r.req_str("name"),
            token=r.req_str("token"),
            expires_at=r.opt_time("expires_at"),
        )


@dataclass(frozen=True, slots=True)
class TenantCreated:
    tenant: Tenant
    admin: IssuedCredential

    @classmethod
    def from_json(cls, data: object) -> TenantCreated:
        r = _Reader(data, "tenant creation")
        return cls(
            tenant=Tenant.from_json(r.raw("tenant")),
            admin=IssuedCredential.from_json(r.raw("admin")),
        )


@dataclass(frozen=True, slots=True)
class Project:
    id: str
    tenant_id: str
    name: str
    data_class: str
    created_at: datetime

    @classmethod
    def from_json(cls, data: object) -> Project:
        r = _Reader(data, "project")
        return cls(
            id=r.req_str("id"),
            tenant_id=r.req_str("tenant_id"),
            name=r.req_str("name"),
            data_class=r.req_str("data_class"),
            created_at=r.req_time("created_at"),
        )


@dataclass(frozen=True, slots=True)
class Member:
    principal_id: str
    name: str
    kind: str
    role: str
    project_id: str | None

    @classmethod
    def from_json(cls, data: object) -> Member:
        r = _Reader(data, "member")
        return cls(
            principal_id=r.req_str("principal_id"),
            name=r.req_str("name"),
            kind=r.req_str("kind"),
            role=r.req_str("role"),
            project_id=r.opt_str("project_id"),
        )


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token minted by ``POST /v1/tokens``. ``token`` is kept out of ``repr``."""

    token: str = field(repr=False)
    jti: str
    principal_id: str
    expires_at: datetime
    scopes: tuple[str, ...]

    @classmethod
    def from_json(cls, data: object) -> IssuedToken:
        r = _Reader(data, "token")
        return cls(
            token=r.req_str("token"),
            jti=r.req_str("jti"),
            principal_id=r.req_str("principal_id"),
            expires_at=r.req_time("expires_at"),
            scopes=r.str_list("scopes") if r.has("scopes") else (),
        )


# --------------------------------------------------------------------------- health


@dataclass(frozen=True, slots=True)
class Health:
    status: str

    @classmethod
    def from_json(cls, data: object) -> Health:
        return cls(status=_Reader(data, "health").req_str("status"))


@dataclass(frozen=True, slots=True)
class Readiness:
    status: str
    checks: Mapping[str, object]

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    @classmethod
    def from_json(cls, data: object) -> Readiness:
        r = _Reader(data, "readiness")
        return cls(status=r.req_str("status"), checks=r.mapping("checks"))


__all__ = [
    "Backend",
    "CircuitInfo",
    "ClbitRegister",
    "Health",
    "IssuedCredential",
    "IssuedToken",
    "Job",
    "JobError",
    "JobPage",
    "JobState",
    "Member",
    "Project",
    "Readiness",
    "Result",
    "ResultMetadata",
    "Tenant",
    "TenantCreated",
    "Transition",
    "items_of",
]

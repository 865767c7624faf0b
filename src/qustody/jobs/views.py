"""What the jobs service hands back: plain data, built from rows, no ORM objects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class TransitionView:
    from_state: str | None
    to_state: str
    at: datetime
    actor: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class JobView:
    id: str
    tenant_id: str
    project_id: str
    principal_id: str
    backend: str
    shots: int
    state: str
    circuit_format: str
    circuit_sha256: str
    num_qubits: int
    num_clbits: int
    gate_count: int
    depth: int
    created_at: datetime
    updated_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    error_code: str | None
    error_detail: str | None
    #: User-supplied metadata, stored sealed (never in a clear column).
    name: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    transitions: tuple[TransitionView, ...] | None = None
    priority: int = 0
    session_id: str | None = None
    #: The approval request it waits for (state ``awaiting_approval``).
    approval_id: str | None = None
    #: In micro-units of the platform's currency.
    estimated_cost: int | None = None
    cost: int | None = None
    #: What the submitter should know though the job was accepted, as
    #: (code, detail) pairs; only in the answer to the submission.
    warnings: tuple[tuple[str, str], ...] = ()
    #: A queued job's place among its own tenant's queued jobs on its backend
    #: (1: next of theirs); other tenants' jobs are never counted.
    queue_position: int | None = None


@dataclass(frozen=True, slots=True)
class JobPage:
    items: list[JobView]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class ResultView:
    job_id: str
    counts: dict[str, int]
    memory: list[str] | None
    clbit_registers: list[tuple[str, int]]
    metadata: dict[str, str | int | float | bool | None]

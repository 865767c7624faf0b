"""The jobs service: submit, read, list, cancel, result.

Every method authorizes through the guard, and every state change commits in
one transaction with its job transition rows and its audit events. The
circuit and the result are stored only sealed under the tenant's key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from qustody.audit.recorder import (
    Actor,
    Outcome,
    Target,
    event_row,
    record,
    record_rows,
)
from qustody.domain.clock import SYSTEM_CLOCK, Clock
from qustody.domain.errors import InvalidRequest, QustodyError
from qustody.domain.ids import ProjectId, TenantId, looks_like_id, new_job_id
from qustody.domain.models import (
    BackendInfo,
    CircuitInfo,
    Decision,
    Principal,
    RequestContext,
    Resource,
)
from qustody.domain.vocabulary import (
    TRANSITION_EVENT,
    TRANSITIONS,
    Action,
    DataClass,
    JobState,
    Role,
)
from qustody.executors.registry import BackendRegistry
from qustody.governance.admission import AdmissionCheck, Admitted, Submission
from qustody.governance.approvals import Justification, hold_job, withdraw_job
from qustody.identity.admin import AdminService
from qustody.jobs.circuits import CircuitLimits, check_against_backend
from qustody.jobs.errors import JobNotFinished
from qustody.jobs.notify import Notifier
from qustody.jobs.queue import queue_position
from qustody.jobs.views import JobPage, JobView, ResultView, TransitionView
from qustody.keys.service import KeyScope, KeyService, Purpose
from qustody.policy.facts import backend_attributes, job_attributes, submission_context
from qustody.policy.guard import Guard, not_found
from qustody.policy.misses import records_misses
from qustody.storage import models as m
from qustody.storage.db import Database

MAX_PAGE = 200
MAX_WAIT_SECONDS = 30.0
CIRCUIT_FIELD = "circuit"
RESULT_FIELD = "result"
#: A job's user-supplied metadata (name, labels), sealed under its project's metadata ring.
METADATA_FIELD = "metadata"

# Statements built once: building one costs more than running it.
_INSERT_JOB = insert(m.JOBS)
_INSERT_TRANSITIONS = insert(m.JOB_TRANSITIONS)

#: Validates untrusted OpenQASM under size, time and memory bounds.
CircuitValidator = Callable[[str, CircuitLimits], CircuitInfo]


@dataclass(frozen=True, slots=True)
class SubmitRequest:
    project: str
    backend: str
    shots: int
    qasm: str
    memory: bool = False
    seed: int | None = None
    name: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    #: Higher runs first among the tenant's own queued jobs.
    priority: int = 0
    #: A session (``ses_...``) the job joins.
    session: str | None = None
    #: Why and under which ticket, for a job a policy holds for approval: with
    #: it such a job waits in ``awaiting_approval``; without, it is refused.
    approval: Justification | None = None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def transition_rows(
    job: m.Job,
    path: list[JobState],
    *,
    actor: Actor,
    at: datetime,
    reason: str | None = None,
    decision: Decision | None = None,
    request: RequestContext | None = None,
    outcome: Outcome = "success",
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """The transition rows and audit events for moving ``job`` along ``path``
    (from its current state), checked against the lifecycle graph. The last
    step carries ``reason``, ``decision`` and ``outcome``."""
    transitions: list[dict[str, object]] = []
    events: list[dict[str, object]] = []
    current = JobState(job.state)
    for n, to in enumerate(path):
        if to not in TRANSITIONS[current]:
            raise RuntimeError(f"illegal job transition {current} -> {to} for {job.id}")
        last = n == len(path) - 1
        transitions.append(
            {
                "job_id": job.id,
                "tenant_id": job.tenant_id,
                "from_state": current.value,
                "to_state": to.value,
                "actor": actor.id,
                "reason": reason if last else None,
                "at": at,
            }
        )
        events.append(
            event_row(
                TRANSITION_EVENT[to],
                actor=actor,
                outcome=outcome if last else "success",
                target=Target("job", job.id, job.tenant_id),
                decision=decision if last else None,
                request=request,
                job_id=job.id,
                reason=reason if last else None,
                at=at,
            )
        )
        current = to
    return transitions, events


def transition(
    session: Session,
    job: m.Job,
    to: JobState,
    *,
    actor: Actor,
    at: datetime,
    reason: str | None = None,
    decision: Decision | None = None,
    request: RequestContext | None = None,
    outcome: Outcome = "success",
) -> None:
    """Move a stored ``job`` to ``to``: the row, the transition and the audit event together."""
    transitions, events = transition_rows(
        job,
        [to],
        actor=actor,
        at=at,
        reason=reason,
        decision=decision,
        request=request,
        outcome=outcome,
    )
    job.state = to.value
    job.updated_at = at
    session.connection().execute(_INSERT_TRANSITIONS, transitions)
    record_rows(session, events)


def job_resource(job: m.Job, data_class: str | None = None) -> Resource:
    return Resource(
        "job",
        job.id,
        TenantId(job.tenant_id),
        project_id=ProjectId(job.project_id),
        data_class=DataClass(data_class) if data_class else None,
        owner_id=None,
        attributes=job_attributes(job.backend, job.num_qubits, job.shots),
    )


def view(
    job: m.Job,
    transitions: list[m.JobTransition] | None = None,
    metadata: Mapping[str, object] | None = None,
    warnings: tuple[tuple[str, str], ...] = (),
) -> JobView:
    labels = (metadata or {}).get("labels") or {}
    name = (metadata or {}).get("name")
    return JobView(
        id=job.id,
        tenant_id=job.tenant_id,
        project_id=job.project_id,
        principal_id=job.principal_id,
        backend=job.backend,
        shots=job.shots,
        state=job.state,
        circuit_format=job.circuit_format,
        circuit_sha256=job.circuit_sha256,
        num_qubits=job.num_qubits,
        num_clbits=job.num_clbits,
        gate_count=job.gate_count,
        depth=job.depth,
        created_at=job.created_at,
        updated_at=job.updated_at,
        queued_at=job.queued_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        error_code=job.error_code,
        error_detail=job.error_detail,
        name=name if isinstance(name, str) else None,
        labels=dict(labels) if isinstance(labels, dict) else {},
        transitions=None
        if transitions is None
        else tuple(
            TransitionView(t.from_state, t.to_state, t.at, t.actor, t.reason) for t in transitions
        ),
        priority=job.priority or 0,
        session_id=job.session_id,
        approval_id=job.approval_id,
        estimated_cost=job.estimated_cost,
        cost=job.cost,
        warnings=warnings,
    )


class JobService:
    def __init__(
        self,
        db: Database,
        guard: Guard,
        keys: KeyService,
        registry: BackendRegistry,
        admin: AdminService,
        notifier: Notifier,
        validate: CircuitValidator,
        limits: CircuitLimits,
        *,
        admission: Sequence[AdmissionCheck] = (),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._db = db
        self._guard = guard
        self._keys = keys
        self._registry = registry
        self._admin = admin
        self._notifier = notifier
        self._validate = validate
        self._limits = limits
        #: Governance checks run in the submission's transaction (quotas, budgets, sessions).
        self.admission: list[AdmissionCheck] = list(admission)
        self._clock = clock
        #: Project id -> data class, for policies on jobs (a project's class never changes).
        self._data_classes: dict[str, str] = {}

    # -- submit -----------------------------------------------------------------

    @records_misses(Action.JOB_SUBMIT)
    def submit(self, caller: Principal, request: RequestContext, spec: SubmitRequest) -> JobView:
        backend = self._registry.get(spec.backend)
        resource = self._admin.project_scope(caller.tenant_id, spec.project)
        source = spec.qasm.encode("utf-8", errors="surrogatepass")
        digest = sha256_hex(source)
        actor = Actor.of(caller)
        info: CircuitInfo | None = None
        refusal: QustodyError | None = None
        try:
            info = self._validate(spec.qasm, self._limits)
            check_against_backend(info, backend.info, spec.shots)
        except QustodyError as error:
            # A refused circuit still leaves a job, ``rejected``, with its hash only.
            info, refusal = None, error
        # Decided once the circuit's size is known: policies may limit qubits.
        # Validation is bounded (size, time, memory), so an unauthorized
        # caller costs no more than an authorized one.
        qubits = info.num_qubits if info else None
        decision, held = self._guard.check_held(
            caller,
            Action.JOB_SUBMIT,
            resource,
            request,
            context=submission_context(backend.info, qubits=qubits, shots=spec.shots),
            may_hold=spec.approval is not None,
        )
        now = self._clock.now()
        job = m.Job(
            id=new_job_id(),
            tenant_id=caller.tenant_id,
            project_id=resource.id,
            principal_id=caller.id,
            backend=backend.info.name,
            shots=spec.shots,
            state=JobState.SUBMITTED.value,
            circuit_format=info.format if info else "unknown",
            circuit_sha256=digest,
            num_qubits=info.num_qubits if info else 0,
            num_clbits=info.num_clbits if info else 0,
            gate_count=info.gate_count if info else 0,
            depth=info.depth if info else 0,
            options={"memory": spec.memory, "seed": spec.seed},
            created_at=now,
            updated_at=now,
            attempts=0,
            cancel_requested=False,
            priority=spec.priority,
            session_id=spec.session,
        )
        metadata = _metadata_bytes(spec)
        submitted = event_row(
            Action.JOB_SUBMIT,
            actor=actor,
            target=Target("job", job.id, job.tenant_id),
            decision=decision,
            request=request,
            job_id=job.id,
            payload_sha256=digest,
            reason=f"backend={backend.info.name} shots={spec.shots}",
            at=now,
        )
        if refusal is not None or info is None:
            path = [JobState.REJECTED]
            job.error_code = refusal.code if refusal else "invalid_circuit"
            job.error_detail = _stored_refusal(refusal)
            job.finished_at = now
            transitions, events = transition_rows(
                job, path, actor=actor, at=now, reason=job.error_code, outcome="failure"
            )
        elif held is not None:
            transitions, events = transition_rows(
                job,
                [JobState.VALIDATED, JobState.AWAITING_APPROVAL],
                actor=actor,
                at=now,
                reason=f"held for approval by {held.approvers} ({', '.join(held.policy_ids)})",
            )
        else:
            job.queued_at = now
            transitions, events = transition_rows(
                job, [JobState.VALIDATED, JobState.QUEUED], actor=actor, at=now
            )
        first = {
            "job_id": job.id,
            "tenant_id": job.tenant_id,
            "from_state": None,
            "to_state": JobState.SUBMITTED.value,
            "actor": actor.id,
            "reason": None,
            "at": now,
        }
        job.state = str(transitions[-1]["to_state"])
        admitted = Admitted()
        # One transaction: the governance checks (quotas, budgets, sessions),
        # the job, its sealed circuit, its transitions and their audit
        # events, as Core inserts on a bare connection (the ORM's unit of
        # work costs more than the rest of a submission).
        try:
            pending = self._prepare(caller, job, backend.info, admitted) if refusal is None else []
            with self._db.writing() as connection:
                if pending:
                    self._admit(connection, caller, job, backend.info, admitted, pending)
                if refusal is None and held is not None and spec.approval is not None:
                    job.approval_id = hold_job(
                        connection,
                        caller=caller,
                        job_id=job.id,
                        project_id=job.project_id,
                        justification=spec.approval,
                        need=held,
                        at=now,
                        request=request,
                    )
                connection.execute(_INSERT_JOB, {c.key: getattr(job, c.key) for c in m.JOBS.c})
                if info is not None:
                    self._keys.seal(
                        connection,
                        KeyScope(job.tenant_id, job.project_id, Purpose.PAYLOAD),
                        job.id,
                        CIRCUIT_FIELD,
                        source,
                        plaintext_sha256=digest,
                    )
                if metadata is not None:
                    self._keys.seal(
                        connection,
                        KeyScope(job.tenant_id, job.project_id, Purpose.METADATA),
                        job.id,
                        METADATA_FIELD,
                        metadata,
                    )
                connection.execute(_INSERT_TRANSITIONS, [first, *transitions])
                record_rows(connection, [submitted, *events])
        except QustodyError as error:
            if error.status >= 500:
                raise
            self._record_refusal(caller, request, job, error)
            raise
        result = view(
            job,
            metadata={"name": spec.name, "labels": dict(spec.labels)},
            warnings=tuple((n.code, n.detail) for n in admitted.notices),
        )
        if refusal is not None:
            refusal.extra["job_id"] = job.id
            raise refusal
        if held is None:
            self._notifier.notify()
        return result

    def _prepare(
        self, caller: Principal, job: m.Job, backend: BackendInfo, admitted: Admitted
    ) -> list[AdmissionCheck]:
        """The governance checks' first step, before the write transaction
        (see :mod:`qustody.governance.admission`): those that must still run
        in it. The values they set (``estimated_cost``) go on the job."""
        if not self.admission:
            return []
        submission = _submission(caller, job, backend)
        try:
            with self._db.reading() as connection:
                pending = [
                    check
                    for check in self.admission
                    if check.prepare(connection, submission, admitted)
                ]
        finally:
            for column, value in admitted.values.items():
                setattr(job, column, value)
        return pending

    def _admit(
        self,
        connection: Connection,
        caller: Principal,
        job: m.Job,
        backend: BackendInfo,
        admitted: Admitted,
        checks: list[AdmissionCheck],
    ) -> None:
        """Run the governance ``checks`` on ``job`` inside its insert's
        transaction; the values they set go on the job."""
        submission = _submission(caller, job, backend)
        for check in checks:
            check.admit(connection, submission, admitted)
        for column, value in admitted.values.items():
            setattr(job, column, value)

    def _record_refusal(
        self, caller: Principal, request: RequestContext, job: m.Job, error: QustodyError
    ) -> None:
        """A submission a governance check refused: recorded as a denied
        ``job:submit`` in its own transaction (the job's rolled back)."""
        with self._db.writing() as connection:
            record(
                connection,
                Action.JOB_SUBMIT,
                actor=Actor.of(caller),
                outcome="denied",
                target=Target("project", job.project_id, job.tenant_id),
                request=request,
                payload_sha256=job.circuit_sha256,
                reason=f"{error.code}: backend={job.backend} shots={job.shots}",
            )

    # -- reads --------------------------------------------------------------------

    def _resource(self, job: m.Job) -> Resource:
        """The job as the policies see it, with its project's data class."""
        data_class = self._data_classes.get(job.project_id)
        if data_class is None:
            with self._db.reading() as connection:
                data_class = connection.execute(
                    select(m.PROJECTS.c.data_class).where(m.PROJECTS.c.id == job.project_id)
                ).scalar()
            if data_class is not None:
                self._data_classes[job.project_id] = data_class
        return job_resource(job, data_class)

    def _metadata(self, job: m.Job) -> dict[str, object] | None:
        """The job's name and labels, opened from their sealed form."""
        with self._db.reading() as connection:
            return _parse_metadata(
                self._keys.open(connection, job.tenant_id, job.id, METADATA_FIELD)
            )

    def _load(self, session: Session, caller: Principal, job_id: str) -> m.Job:
        """A job of the caller's tenant, or the same 404 whether missing or foreign."""
        if not looks_like_id(job_id):
            raise not_found("job", job_id[:64])
        job = session.scalar(
            select(m.Job).where(m.Job.id == job_id, m.Job.tenant_id == caller.tenant_id)
        )
        if job is None:
            raise not_found("job", job_id)
        return job

    @records_misses(Action.JOB_READ)
    def get(
        self, caller: Principal, request: RequestContext, job_id: str, *, wait: float = 0.0
    ) -> JobView:
        """The job and its transitions. With ``wait`` (seconds, at most
        :data:`MAX_WAIT_SECONDS`), answer as soon as the job is terminal, or
        when the time is up, whichever comes first."""
        if not 0 <= wait <= MAX_WAIT_SECONDS:
            raise InvalidRequest(
                f"wait is {wait:g} seconds; it must be between 0 and {MAX_WAIT_SECONDS}.",
                field="wait",
            )
        deadline = time.monotonic() + wait
        checked = False
        while True:
            generation = self._notifier.finished_generation()
            with self._db.read() as session:
                job = self._load(session, caller, job_id)
                transitions = list(
                    session.scalars(
                        select(m.JobTransition)
                        .where(m.JobTransition.job_id == job.id)
                        .order_by(m.JobTransition.id)
                    )
                )
            if not checked:
                self._guard.check(caller, Action.JOB_READ, self._resource(job), request)
                checked = True
            remaining = deadline - time.monotonic()
            if JobState(job.state).terminal or remaining <= 0:
                found = view(job, transitions, self._metadata(job))
                if job.state == JobState.QUEUED.value:
                    with self._db.reading() as connection:
                        position = queue_position(connection, job)
                    found = dataclasses.replace(found, queue_position=position)
                return found
            # Woken by any job finishing; re-check at least every second in
            # case a signal from another process was lost.
            self._notifier.wait_finished(generation, min(remaining, 1.0))

    @records_misses(Action.JOB_LIST)
    def list_jobs(
        self,
        caller: Principal,
        request: RequestContext,
        *,
        state: str | None = None,
        backend: str | None = None,
        project: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(
                f"limit is {limit}; it must be between 1 and {MAX_PAGE}.", field="limit"
            )
        if state is not None and state not in JobState.__members__.values():
            raise InvalidRequest(
                f"state {state[:32]!r} is not a job state; use one of "
                f"{[s.value for s in JobState]}.",
                field="state",
            )
        if cursor is not None and not looks_like_id(cursor):
            raise InvalidRequest(
                "cursor is not valid; pass the next_cursor value of the previous page.",
                field="cursor",
            )
        with self._db.read() as session:
            query = select(m.Job).where(m.Job.tenant_id == caller.tenant_id)
            if project is not None:
                found = self._admin.find_project(session, caller.tenant_id, project)
                self._guard.check(
                    caller,
                    Action.JOB_LIST,
                    Resource(
                        "project",
                        found.id,
                        TenantId(found.tenant_id),
                        project_id=ProjectId(found.id),
                    ),
                    request,
                )
                query = query.where(m.Job.project_id == found.id)
            else:
                query = query.where(m.Job.project_id.in_(self._listable_projects(caller, request)))
            if state is not None:
                query = query.where(m.Job.state == state)
            if backend is not None:
                query = query.where(m.Job.backend == backend[:64])
            if cursor is not None:
                query = query.where(m.Job.id < cursor)
            rows = list(session.scalars(query.order_by(m.Job.id.desc()).limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        with self._db.reading() as connection:
            sealed = self._keys.open_many(
                connection, caller.tenant_id, [j.id for j in rows], METADATA_FIELD
            )
        return JobPage(
            [view(j, metadata=_parse_metadata(sealed.get(j.id))) for j in rows],
            rows[-1].id if more and rows else None,
        )

    def _listable_projects(self, caller: Principal, request: RequestContext) -> list[str]:
        """Projects whose jobs the caller may list; the policy decides per project."""
        tenant = Resource("tenant", caller.tenant_id, caller.tenant_id)
        if Role.TENANT_ADMIN in caller.tenant_roles:
            self._guard.check(caller, Action.JOB_LIST, tenant, request)
            with self._db.read() as session:
                return list(
                    session.scalars(
                        select(m.Project.id).where(m.Project.tenant_id == caller.tenant_id)
                    )
                )
        allowed: list[str] = [
            pid
            for pid in sorted({pid for pid, _ in caller.project_roles})
            if self._guard.decide(
                caller,
                Action.JOB_LIST,
                Resource("project", pid, caller.tenant_id, project_id=pid),
                request,
            ).allowed
        ]
        if not allowed:
            self._guard.check(caller, Action.JOB_LIST, tenant, request)  # records the denial
        return allowed

    # -- backends -----------------------------------------------------------------

    def backends(self, caller: Principal, request: RequestContext) -> list[BackendInfo]:
        self._guard.check(
            caller, Action.BACKEND_LIST, Resource("platform", "backends", None), request
        )
        return [backend.info for backend in self._registry.list()]

    def backend(self, caller: Principal, request: RequestContext, name: str) -> BackendInfo:
        if name not in self._registry:
            raise not_found("backend", name[:64])
        info = self._registry.get(name).info
        self._guard.check(
            caller,
            Action.BACKEND_READ,
            Resource("backend", info.name, None, attributes=backend_attributes(info)),
            request,
        )
        return info

    # -- cancel -------------------------------------------------------------------

    @records_misses(Action.JOB_CANCEL)
    def cancel(self, caller: Principal, request: RequestContext, job_id: str) -> JobView:
        with self._db.read() as session:
            job = self._load(session, caller, job_id)
        decision = self._guard.check(caller, Action.JOB_CANCEL, self._resource(job), request)
        now = self._clock.now()
        with self._db.write() as session:
            job = self._load(session, caller, job_id)
            state = JobState(job.state)
            if state in (JobState.QUEUED, JobState.VALIDATED, JobState.AWAITING_APPROVAL):
                if state is JobState.AWAITING_APPROVAL and job.approval_id:
                    withdraw_job(session.connection(), job.approval_id, Actor.of(caller), now)
                transition(
                    session,
                    job,
                    JobState.CANCELLED,
                    actor=Actor.of(caller),
                    at=now,
                    decision=decision,
                    request=request,
                    reason="cancelled before it ran",
                )
                job.finished_at = now
            elif state is JobState.RUNNING and not job.cancel_requested:
                # The worker running it sees the flag, stops the sandbox and
                # records the transition to cancelled.
                session.execute(
                    update(m.Job).where(m.Job.id == job.id).values(cancel_requested=True)
                )
                job.cancel_requested = True
                record(
                    session,
                    Action.JOB_CANCEL,
                    actor=Actor.of(caller),
                    target=Target("job", job.id, job.tenant_id),
                    decision=decision,
                    request=request,
                    job_id=job.id,
                    reason="cancel requested while running",
                )
            result = view(job)
        if result.state == JobState.CANCELLED:
            self._notifier.finished()
        return result

    # -- result -------------------------------------------------------------------

    @records_misses(Action.RESULT_READ)
    def result(self, caller: Principal, request: RequestContext, job_id: str) -> ResultView:
        with self._db.read() as session:
            job = self._load(session, caller, job_id)
            digest = session.scalar(
                select(m.SealedObject.plaintext_sha256).where(
                    m.SealedObject.object_id == job.id, m.SealedObject.field == RESULT_FIELD
                )
            )
        decision = self._guard.check(caller, Action.RESULT_READ, self._resource(job), request)
        state = JobState(job.state)
        payload = None
        if state is JobState.COMPLETED:
            with self._db.reading() as connection:
                payload = self._keys.open(connection, job.tenant_id, job.id, RESULT_FIELD)
        if payload is None:
            raise JobNotFinished.for_state(job.id, state, job.error_code)
        data = json.loads(payload)
        with self._db.write() as session:
            record(
                session,
                Action.RESULT_READ,
                actor=Actor.of(caller),
                target=Target("job", job.id, job.tenant_id),
                decision=decision,
                request=request,
                job_id=job.id,
                payload_sha256=digest,
            )
        return ResultView(
            job_id=job.id,
            counts={str(k): int(v) for k, v in data["counts"].items()},
            memory=data.get("memory"),
            clbit_registers=[(str(n), int(s)) for n, s in data["clbit_registers"]],
            metadata=dict(data["metadata"]),
        )


def _submission(caller: Principal, job: m.Job, backend: BackendInfo) -> Submission:
    """What the governance checks know of ``job``."""
    return Submission(
        caller=caller,
        tenant_id=job.tenant_id,
        project_id=job.project_id,
        backend=backend,
        shots=job.shots,
        num_qubits=job.num_qubits,
        priority=job.priority,
        session_id=job.session_id,
        at=job.created_at,
        state=job.state,
    )


def _metadata_bytes(spec: SubmitRequest) -> bytes | None:
    """What of a submission is user-supplied metadata, as sealed: None when empty."""
    if spec.name is None and not spec.labels:
        return None
    document = {"name": spec.name, "labels": dict(spec.labels)}
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode("utf-8")


def _stored_refusal(refusal: QustodyError | None) -> str | None:
    """What a rejected job keeps of why: the title and the line, never the
    refusal's own detail, which may quote the circuit (gate names, includes)
    and is for the submitter's answer only; the circuit itself is not stored."""
    if refusal is None:
        return None
    line = refusal.extra.get("line")
    where = f" at line {line}" if isinstance(line, int) else ""
    return (
        f"{refusal.title}{where} ({refusal.code}); the submitter was told the details at "
        "submission, and the circuit was not stored"
    )


def _parse_metadata(raw: bytes | None) -> dict[str, object] | None:
    if raw is None:
        return None
    parsed: dict[str, object] = json.loads(raw)
    return parsed

"""What a job would cost, and whether it would be admitted, before it is submitted.

``POST /v1/jobs:estimate`` takes the body of a submission. The circuit is
validated by the same validator, under the same limits, as a submission; the
policy decides ``job:estimate`` on the project. The governance checks then
run exactly as they would for the job (quotas counted, the estimate reserved
against the budgets) inside a transaction that is always rolled back: the
answer is what a submission at this moment would meet, and nothing is
stored but the ``job:estimate`` audit event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from qustody.audit.recorder import Actor, Target, record
from qustody.domain.clock import SYSTEM_CLOCK, Clock
from qustody.domain.errors import NotFound, QustodyError
from qustody.domain.models import CircuitInfo, Principal, RequestContext
from qustody.domain.vocabulary import Action, JobState
from qustody.executors.registry import BackendRegistry
from qustody.governance import budgets, quotas
from qustody.governance.admission import AdmissionCheck, Admitted, Notice, Submission
from qustody.governance.costs import Price, price_at
from qustody.identity.admin import AdminService
from qustody.jobs.circuits import CircuitLimits, check_against_backend
from qustody.jobs.service import CircuitValidator, SubmitRequest, sha256_hex
from qustody.policy.facts import submission_context
from qustody.policy.guard import Guard
from qustody.policy.misses import records_misses
from qustody.storage.db import Database


@dataclass(frozen=True, slots=True)
class Estimate:
    backend: str
    shots: int
    num_qubits: int
    #: Micro-units of the platform's currency.
    estimated_cost: int
    price: Price
    quotas: list[quotas.QuotaStanding]
    budgets: list[budgets.BudgetStanding]
    #: Whether a submission now would be accepted; if not, the refusal it would get.
    admitted: bool
    refusal: QustodyError | None
    warnings: list[Notice]


class _DryRun(Exception):
    """Rolls the estimate's transaction back, whatever the checks wrote."""


class Estimator:
    def __init__(
        self,
        db: Database,
        guard: Guard,
        registry: BackendRegistry,
        admin: AdminService,
        validate: CircuitValidator,
        limits: CircuitLimits,
        admission: Sequence[AdmissionCheck],
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._db = db
        self._guard = guard
        self._registry = registry
        self._admin = admin
        self._validate = validate
        self._limits = limits
        #: The jobs service's own list: checks added to it later apply here too.
        self._admission = admission
        self._clock = clock

    @records_misses(Action.JOB_ESTIMATE)
    def estimate(self, caller: Principal, request: RequestContext, spec: SubmitRequest) -> Estimate:
        backend = self._registry.get(spec.backend).info
        resource = self._admin.project_scope(caller.tenant_id, spec.project)
        info: CircuitInfo | None = None
        invalid: QustodyError | None = None
        try:
            info = self._validate(spec.qasm, self._limits)
            check_against_backend(info, backend, spec.shots)
        except QustodyError as error:
            invalid = error
        # Decided whether or not the circuit is valid, as for a submission: a
        # caller the policy refuses learns nothing about the circuit.
        decision = self._guard.check(
            caller,
            Action.JOB_ESTIMATE,
            resource,
            request,
            context=submission_context(
                backend, qubits=info.num_qubits if info else None, shots=spec.shots
            ),
        )
        if invalid is not None or info is None:
            raise invalid or RuntimeError("validation returned nothing")
        now = self._clock.now()
        submission = Submission(
            caller=caller,
            tenant_id=caller.tenant_id,
            project_id=resource.id,
            backend=backend,
            shots=spec.shots,
            num_qubits=info.num_qubits,
            priority=spec.priority,
            session_id=spec.session,
            at=now,
            state=JobState.QUEUED.value,
        )
        admitted = Admitted()
        refusal: QustodyError | None = None
        result: Estimate | None = None
        try:
            with self._db.writing() as connection:
                price = price_at(connection, backend.name, now)
                quota_rows = quotas.applicable(
                    connection, caller.tenant_id, resource.id, backend.name
                )
                quota_list = quotas.measure(connection, caller.tenant_id, quota_rows, now)
                budget_rows = budgets.applicable(
                    connection, caller.tenant_id, resource.id, backend.name
                )
                budget_list = budgets.standings(connection, caller.tenant_id, budget_rows, now)
                try:
                    for check in self._admission:
                        if check.prepare(connection, submission, admitted):
                            check.admit(connection, submission, admitted)
                except QustodyError as error:
                    # A reference the caller cannot see (a session) is refused
                    # as it would be anywhere, not reported as a would-be refusal.
                    if error.status >= 500 or isinstance(error, NotFound):
                        raise
                    refusal = error
                result = Estimate(
                    backend=backend.name,
                    shots=spec.shots,
                    num_qubits=info.num_qubits,
                    estimated_cost=price.estimate(spec.shots),
                    price=price,
                    quotas=quota_list,
                    budgets=budget_list,
                    admitted=refusal is None,
                    refusal=refusal,
                    warnings=list(admitted.notices),
                )
                raise _DryRun
        except _DryRun:
            pass
        assert result is not None
        with self._db.writing() as connection:
            record(
                connection,
                Action.JOB_ESTIMATE,
                actor=Actor.of(caller),
                target=Target("project", resource.id, caller.tenant_id),
                decision=decision,
                request=request,
                payload_sha256=sha256_hex(spec.qasm.encode("utf-8", errors="surrogatepass")),
                reason=(
                    f"backend={backend.name} shots={spec.shots} estimate={result.estimated_cost} "
                    + ("admitted" if refusal is None else f"refused: {refusal.code}")
                ),
            )
        return result

"""Qiskit integration: gateway backends as :class:`qiskit.providers.BackendV2`.

Existing Qiskit code keeps working unchanged::

    backend = QustodyProvider(url, token, project="research").get_backend("aer-statevector")
    counts = backend.run(circuit, shots=1024).result().get_counts()

Each circuit handed to :meth:`QustodyBackend.run` becomes one gateway job; the
:class:`QustodyJob` returned groups them and its :meth:`~QustodyJob.result` builds a
:class:`qiskit.result.Result` with one experiment per circuit, in order.
"""

# Qiskit ships no type information: its names are typed Any, and subclassing them
# needs the ``misc`` ignores below.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, Self

import httpx
from qiskit import QuantumCircuit
from qiskit.circuit import (
    BreakLoopOp,
    ContinueLoopOp,
    ForLoopOp,
    IfElseOp,
    SwitchCaseOp,
    WhileLoopOp,
)
from qiskit.circuit.library import get_standard_gate_name_mapping
from qiskit.providers import BackendV2, JobStatus, JobV1, Options
from qiskit.result import Result as QiskitResult
from qiskit.transpiler import Target

from qustody.client._convert import circuit_to_qasm, to_experiment_dict
from qustody.client.client import DEFAULT_TIMEOUT, Client
from qustody.client.errors import QustodyClientError, QustodyJobError
from qustody.client.models import Backend, Job, JobState

_CONTROL_FLOW = {
    "if_else": IfElseOp,
    "while_loop": WhileLoopOp,
    "for_loop": ForLoopOp,
    "switch_case": SwitchCaseOp,
    "break_loop": BreakLoopOp,
    "continue_loop": ContinueLoopOp,
}

_JOB_STATUS = {
    JobState.SUBMITTED: JobStatus.INITIALIZING,
    JobState.VALIDATED: JobStatus.VALIDATING,
    JobState.QUEUED: JobStatus.QUEUED,
    JobState.RUNNING: JobStatus.RUNNING,
    JobState.COMPLETED: JobStatus.DONE,
    JobState.FAILED: JobStatus.ERROR,
    JobState.REJECTED: JobStatus.ERROR,
    JobState.CANCELLED: JobStatus.CANCELLED,
}


def job_status(state: JobState) -> Any:
    """The :class:`qiskit.providers.JobStatus` for one gateway job state."""
    return _JOB_STATUS[state]


def combined_status(states: Iterable[JobState]) -> Any:
    """One :class:`~qiskit.providers.JobStatus` for a group of gateway jobs.

    Until every job is terminal the group reports the furthest-along live state
    (running, then queued, validating, initializing); once all are terminal it is
    ``ERROR`` if any failed or was rejected, ``CANCELLED`` if any was cancelled, else
    ``DONE``.
    """
    seen = set(states)
    live = [s for s in seen if not s.is_terminal]
    if live:
        for state in (JobState.RUNNING, JobState.QUEUED, JobState.VALIDATED):
            if state in live:
                return _JOB_STATUS[state]
        return JobStatus.INITIALIZING
    if seen & {JobState.FAILED, JobState.REJECTED}:
        return JobStatus.ERROR
    if JobState.CANCELLED in seen:
        return JobStatus.CANCELLED
    return JobStatus.DONE


def build_target(info: Backend) -> Any:
    """A :class:`~qiskit.transpiler.Target` with the backend's basis on all-to-all qubits.

    Basis gate names Qiskit does not know as standard gates or control flow
    (simulator-only instructions such as ``save_statevector``) are left out.
    """
    gates = get_standard_gate_name_mapping()
    target = Target(description=f"Qustody backend {info.name}", num_qubits=info.max_qubits)
    for name in (*info.basis_gates, "measure"):
        if name in target.operation_names:
            continue
        if name in gates:
            target.add_instruction(gates[name], properties=None, name=name)
        elif name in _CONTROL_FLOW:
            target.add_instruction(_CONTROL_FLOW[name], name=name)
    return target


class QustodyProvider:
    """Entry point for Qiskit users: the backends of one gateway, for one project."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        project: str,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._client = Client(url, token, timeout=timeout, transport=transport)
        self._project = project

    @classmethod
    def from_client(cls, client: Client, *, project: str) -> QustodyProvider:
        """A provider over an existing :class:`Client`."""
        provider = cls.__new__(cls)
        provider._client = client
        provider._project = project
        return provider

    @property
    def client(self) -> Client:
        return self._client

    @property
    def project(self) -> str:
        return self._project

    def __repr__(self) -> str:
        return f"QustodyProvider(url={self._client.url!r}, project={self._project!r})"

    def close(self) -> None:
        """Close the HTTP connections (backends and jobs from this provider stop working)."""
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def backends(self, name: str | None = None) -> list[QustodyBackend]:
        """All backends of the gateway (or the one called ``name``)."""
        return [
            QustodyBackend(self, info)
            for info in self._client.backends()
            if name is None or info.name == name
        ]

    def get_backend(self, name: str) -> QustodyBackend:
        """One backend; an unknown name raises :class:`QustodyAPIError`."""
        return QustodyBackend(self, self._client.backend(name))


class QustodyBackend(BackendV2):  # type: ignore[misc]
    """A gateway backend, runnable from Qiskit."""

    def __init__(self, provider: QustodyProvider, info: Backend) -> None:
        super().__init__(
            provider=provider,
            name=info.name,
            description=info.description,
            backend_version=None,
        )
        self._info = info
        self._target = build_target(info)

    def __repr__(self) -> str:
        return f"<QustodyBackend(name={self.name!r}, project={self.project!r})>"

    @property
    def info(self) -> Backend:
        """What the gateway reports about this backend."""
        return self._info

    @property
    def client(self) -> Client:
        return self._qustody_provider.client

    @property
    def project(self) -> str:
        return self._qustody_provider.project

    @property
    def _qustody_provider(self) -> QustodyProvider:
        provider: QustodyProvider = self._provider
        return provider

    @property
    def target(self) -> Any:
        return self._target

    @property
    def max_circuits(self) -> None:
        return None  # each circuit becomes its own gateway job

    @classmethod
    def _default_options(cls) -> Any:
        return Options(shots=1024, memory=False, seed_simulator=None, session=None, priority=0)

    def run(self, run_input: Any, **options: Any) -> QustodyJob:
        """Submit one circuit or a list of circuits; returns at once.

        Options: ``shots``, ``memory``, ``seed_simulator``, ``session`` (a
        ``ses_`` id from :meth:`Client.open_session`: the jobs join that session)
        and ``priority`` (0-9, among your tenant's own jobs); defaults from
        :attr:`options`. Every circuit is exported before any is submitted; if a
        submission is refused, the jobs already submitted for this call are cancelled
        and the refusal is raised.
        """
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(
                f"unknown run option(s) {', '.join(unknown)} for backend {self.name}; "
                f"supported: {', '.join(sorted(self.options))}"
            )
        merged = {key: self.options[key] for key in self.options} | options
        shots = merged["shots"]
        if not isinstance(shots, int) or isinstance(shots, bool):
            raise TypeError(f"shots must be an integer, not {type(shots).__name__}")
        circuits = self._circuits(run_input)
        programs = [circuit_to_qasm(circuit) for circuit in circuits]
        jobs: list[Job] = []
        try:
            for qasm in programs:
                jobs.append(
                    self.client.submit(
                        qasm,
                        backend=self.name,
                        shots=shots,
                        project=self.project,
                        memory=bool(merged["memory"]),
                        seed=merged["seed_simulator"],
                        priority=int(merged["priority"] or 0),
                        session=merged["session"],
                    )
                )
        except QustodyClientError:
            for job in jobs:
                cancel_quietly(self.client, job.id)
            raise
        return QustodyJob(self, jobs, circuits)

    @staticmethod
    def _circuits(run_input: Any) -> list[Any]:
        circuits = [run_input] if isinstance(run_input, QuantumCircuit) else list(run_input)
        if not circuits:
            raise ValueError("run_input is empty; pass a QuantumCircuit or a list of them")
        for i, circuit in enumerate(circuits):
            if not isinstance(circuit, QuantumCircuit):
                raise TypeError(
                    f"run_input[{i}] is a {type(circuit).__name__}; "
                    "QustodyBackend runs qiskit.QuantumCircuit objects"
                )
        return circuits


def cancel_quietly(client: Client, job_id: str) -> None:
    # Best effort: the refusal being raised matters more than a failed clean-up.
    with contextlib.suppress(QustodyClientError):
        client.cancel(job_id)


def wait_all(client: Client, job_ids: Sequence[str], timeout: float | None) -> list[Job]:
    """Wait for every job, sharing one deadline; returns them terminal, in order."""
    deadline = None if timeout is None else time.monotonic() + timeout
    finished = []
    for job_id in job_ids:
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        finished.append(client.wait(job_id, timeout=remaining))
    return finished


class QustodyJob(JobV1):  # type: ignore[misc]
    """The gateway jobs of one :meth:`QustodyBackend.run` call.

    ``job_id()`` is the gateway job id for a single circuit, and the ids joined by
    commas for several; :attr:`job_ids` lists them.
    """

    def __init__(self, backend: QustodyBackend, jobs: Sequence[Job], circuits: Sequence[Any]):
        super().__init__(backend, ",".join(job.id for job in jobs))
        self._client = backend.client
        self._jobs = list(jobs)
        self._circuits = list(circuits)
        self._result: Any = None

    def __repr__(self) -> str:
        return f"<QustodyJob(job_id={self.job_id()!r})>"

    @property
    def job_ids(self) -> list[str]:
        return [job.id for job in self._jobs]

    def jobs(self) -> list[Job]:
        """The gateway jobs, as last fetched."""
        return list(self._jobs)

    def submit(self) -> None:
        raise RuntimeError("QustodyJob is submitted by QustodyBackend.run(); do not resubmit")

    def refresh(self) -> list[Job]:
        self._jobs = [job if job.is_terminal else self._client.job(job.id) for job in self._jobs]
        return self.jobs()

    def status(self) -> Any:
        return combined_status(job.state for job in self.refresh())

    def cancel(self) -> bool:
        """Cancel every job that is not finished; returns whether all ended cancelled."""
        self._jobs = [job if job.is_terminal else self._client.cancel(job.id) for job in self._jobs]
        return all(job.state is JobState.CANCELLED for job in self._jobs)

    def result(self, timeout: float | None = None) -> Any:
        """Wait for every job, then return a :class:`qiskit.result.Result`.

        Raises :class:`QustodyJobError` if a job failed, was rejected or cancelled,
        and :class:`QustodyTimeoutError` when ``timeout`` seconds pass first.
        """
        if self._result is not None:
            return self._result
        self._jobs = wait_all(self._client, self.job_ids, timeout)
        for job in self._jobs:
            if job.state is not JobState.COMPLETED:
                raise QustodyJobError(job)
        experiments = [
            to_experiment_dict(
                self._client.result(job.id),
                name=str(circuit.name),
                circuit_metadata=circuit.metadata,
            )
            for job, circuit in zip(self._jobs, self._circuits, strict=True)
        ]
        self._result = QiskitResult.from_dict(
            {
                "backend_name": self._backend.name,
                "backend_version": self._backend.backend_version,
                "job_id": self.job_id(),
                "success": True,
                "status": "COMPLETED",
                "results": experiments,
            }
        )
        return self._result

"""A Qiskit ``SamplerV2`` primitive that runs on a Qustody gateway.

Each parameter binding of each pub becomes one gateway job, submitted with
``memory=True``; the per-shot memory of every job is packed into one
:class:`qiskit.primitives.BitArray` per classical register, with shape
``pub.shape + (shots, ...)``: the same layout Qiskit's own samplers produce.
"""

# Qiskit ships no type information: its names are typed Any, and subclassing them
# needs the ``misc`` ignores below.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from qiskit.primitives import (
    BasePrimitiveJob,
    BaseSamplerV2,
    DataBin,
    PrimitiveResult,
    SamplerPub,
    SamplerPubResult,
)
from qiskit.providers import JobStatus

from qustody.client._convert import bit_arrays, circuit_to_qasm
from qustody.client.errors import QustodyClientError, QustodyJobError
from qustody.client.models import Job, JobState, Result
from qustody.client.qiskit_provider import (
    QustodyBackend,
    cancel_quietly,
    combined_status,
    wait_all,
)


@dataclass(frozen=True)
class _PubJobs:
    """The gateway jobs of one pub: an object array of job ids shaped like the pub."""

    pub: Any
    job_ids: npt.NDArray[np.object_]


class QustodySampler(BaseSamplerV2):  # type: ignore[misc]
    """``SamplerV2`` over a :class:`QustodyBackend`.

    ``seed`` (else the backend's ``seed_simulator`` option) is sent with every job, so
    a run can be reproduced.
    """

    def __init__(
        self, backend: QustodyBackend, *, default_shots: int = 1024, seed: int | None = None
    ) -> None:
        if default_shots < 1:
            raise ValueError("default_shots must be at least 1")
        self._backend = backend
        self._default_shots = default_shots
        self._seed = seed

    @property
    def backend(self) -> QustodyBackend:
        return self._backend

    @property
    def default_shots(self) -> int:
        return self._default_shots

    def __repr__(self) -> str:
        return f"<QustodySampler(backend={self._backend.name!r})>"

    def run(self, pubs: Iterable[Any], *, shots: int | None = None) -> QustodySamplerJob:
        """Submit every binding of every pub; returns at once.

        All circuits are bound and exported before anything is submitted; if a
        submission is refused, the jobs already submitted are cancelled and the refusal
        is raised.
        """
        if shots is None:
            shots = self._default_shots
        coerced = [SamplerPub.coerce(pub, shots) for pub in pubs]
        if any(len(pub.circuit.cregs) == 0 for pub in coerced):
            warnings.warn(
                "a circuit has no classical registers, so its result will hold no data; "
                "add measurements",
                UserWarning,
                stacklevel=2,
            )
        programs = []
        for pub in coerced:
            bound = pub.parameter_values.bind_all(pub.circuit)
            qasm = np.empty(bound.shape, dtype=object)
            for index in np.ndindex(bound.shape):
                qasm[index] = circuit_to_qasm(bound[index])
            programs.append((pub, qasm))
        seed = self._seed if self._seed is not None else self._backend.options.seed_simulator
        client = self._backend.client
        submitted: list[Job] = []
        pub_jobs = []
        try:
            for pub, qasm in programs:
                ids = np.empty(qasm.shape, dtype=object)
                for index in np.ndindex(qasm.shape):
                    job = client.submit(
                        qasm[index],
                        backend=self._backend.name,
                        shots=int(pub.shots),
                        project=self._backend.project,
                        memory=True,
                        seed=seed,
                    )
                    submitted.append(job)
                    ids[index] = job.id
                pub_jobs.append(_PubJobs(pub=pub, job_ids=ids))
        except QustodyClientError:
            for job in submitted:
                cancel_quietly(client, job.id)
            raise
        return QustodySamplerJob(self._backend, pub_jobs)


class QustodySamplerJob(BasePrimitiveJob):  # type: ignore[misc]
    """The gateway jobs of one :meth:`QustodySampler.run` call."""

    def __init__(self, backend: QustodyBackend, pub_jobs: Sequence[_PubJobs]) -> None:
        super().__init__(job_id=f"sampler-{uuid.uuid4().hex}")
        self._backend = backend
        self._pub_jobs = list(pub_jobs)
        self._states: dict[str, JobState] = {
            str(job_id): JobState.SUBMITTED for pj in pub_jobs for job_id in pj.job_ids.flat
        }
        self._result: Any = None

    def __repr__(self) -> str:
        return f"<QustodySamplerJob(job_id={self.job_id()!r}, jobs={len(self._states)})>"

    @property
    def job_ids(self) -> list[str]:
        """Gateway job ids, pub by pub, each pub's in C order of its bindings."""
        return list(self._states)

    def _refresh(self) -> None:
        client = self._backend.client
        for job_id, state in self._states.items():
            if not state.is_terminal:
                self._states[job_id] = client.job(job_id).state

    def status(self) -> Any:
        self._refresh()
        return combined_status(self._states.values())

    def done(self) -> bool:
        return bool(self.status() == JobStatus.DONE)

    def running(self) -> bool:
        return bool(self.status() == JobStatus.RUNNING)

    def cancelled(self) -> bool:
        return bool(self.status() == JobStatus.CANCELLED)

    def in_final_state(self) -> bool:
        return bool(self.status() in (JobStatus.DONE, JobStatus.CANCELLED, JobStatus.ERROR))

    def cancel(self) -> None:
        client = self._backend.client
        for job_id, state in self._states.items():
            if not state.is_terminal:
                self._states[job_id] = client.cancel(job_id).state

    def result(self, timeout: float | None = None) -> Any:
        """Wait for every job, then assemble a ``PrimitiveResult`` of ``SamplerPubResult``.

        Raises :class:`QustodyJobError` if a job failed, was rejected or cancelled,
        and :class:`QustodyTimeoutError` when ``timeout`` seconds pass first.
        """
        if self._result is not None:
            return self._result
        client = self._backend.client
        for job in wait_all(client, self.job_ids, timeout):
            self._states[job.id] = job.state
            if job.state is not JobState.COMPLETED:
                raise QustodyJobError(job)
        pub_results = []
        for pj in self._pub_jobs:
            results = np.empty(pj.job_ids.shape, dtype=object)
            for index in np.ndindex(pj.job_ids.shape):
                fetched: Result = client.result(str(pj.job_ids[index]))
                results[index] = fetched
            registers = [(str(creg.name), int(creg.size)) for creg in pj.pub.circuit.cregs]
            data = DataBin(**bit_arrays(results, registers, int(pj.pub.shots)), shape=pj.pub.shape)
            pub_results.append(
                SamplerPubResult(
                    data,
                    metadata={
                        "shots": int(pj.pub.shots),
                        "circuit_metadata": pj.pub.circuit.metadata,
                        "job_ids": [str(job_id) for job_id in pj.job_ids.flat],
                    },
                )
            )
        self._result = PrimitiveResult(pub_results, metadata={"version": 2})
        return self._result

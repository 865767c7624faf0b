"""Unchanged Qiskit code running on a real gateway through the SDK (fixture: ``gateway``)."""

# Qiskit ships no type information.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister, transpile
from qiskit.circuit import Parameter
from qiskit.primitives import BitArray
from qiskit.providers import BackendV2, JobStatus

from qustody.client import (
    CircuitConversionError,
    QustodyAPIError,
    QustodyBackend,
    QustodyJobError,
    QustodyProvider,
    QustodySampler,
)

BACKEND = "aer-statevector"
WAIT_S = 120.0


@pytest.fixture
def provider(gateway: Any) -> Iterator[QustodyProvider]:
    with QustodyProvider(
        gateway.url, gateway.developer_token, project=gateway.project_id
    ) as developer:
        yield developer


@pytest.fixture
def backend(provider: QustodyProvider) -> QustodyBackend:
    return provider.get_backend(BACKEND)


def ghz(n: int) -> QuantumCircuit:
    circuit = QuantumCircuit(n, n, name=f"ghz{n}")
    circuit.h(0)
    for qubit in range(n - 1):
        circuit.cx(qubit, qubit + 1)
    circuit.measure(range(n), range(n))
    return circuit


def test_ghz3_counts_through_backend_run(backend: QustodyBackend) -> None:
    counts = backend.run(ghz(3), shots=1024).result().get_counts()

    assert set(counts) <= {"000", "111"}
    assert sum(counts.values()) == 1024
    assert counts.get("000", 0) > 0
    assert counts.get("111", 0) > 0


def test_backend_is_a_qiskit_backend_v2(
    gateway: Any, provider: QustodyProvider, backend: QustodyBackend
) -> None:
    assert BACKEND in {b.name for b in provider.backends()}

    assert isinstance(backend, BackendV2)
    assert backend.name == BACKEND
    assert backend.num_qubits == backend.info.max_qubits
    assert "measure" in backend.target.operation_names
    assert backend.options.shots == 1024
    assert backend.options.memory is False
    assert gateway.developer_token not in repr(provider)

    # Transpiling against the target keeps the circuit in the backend's basis.
    compiled = transpile(ghz(3), backend=backend, seed_transpiler=1)
    assert set(compiled.count_ops()) <= set(backend.target.operation_names) | {"barrier"}
    counts = backend.run(compiled, shots=256).result().get_counts()
    assert set(counts) <= {"000", "111"}


def test_several_classical_registers_keep_qiskit_formatting(backend: QustodyBackend) -> None:
    # a = [q0] always 1; b = [q1, q2] always "10"; c = [q1] always 0.
    qr = QuantumRegister(3, "q")
    a, b, c = ClassicalRegister(1, "a"), ClassicalRegister(2, "b"), ClassicalRegister(1, "c")
    circuit = QuantumCircuit(qr, a, b, c, name="registers")
    circuit.x(0)
    circuit.x(2)
    circuit.measure(0, a[0])
    circuit.measure(1, b[0])
    circuit.measure(2, b[1])
    circuit.measure(1, c[0])

    result = backend.run(circuit, shots=100).result()

    assert result.get_counts() == {"0 10 1": 100}
    assert result.get_counts(circuit) == {"0 10 1": 100}


def test_memory_when_asked_for(backend: QustodyBackend) -> None:
    job = backend.run(ghz(3), shots=40, memory=True, seed_simulator=99)
    result = job.result(timeout=WAIT_S)

    memory = result.get_memory()
    assert len(memory) == 40
    assert set(memory) <= {"000", "111"}
    assert Counter(memory) == Counter(result.get_counts())
    assert job.status() == JobStatus.DONE
    assert job.job_id().startswith("job_")


def test_a_list_of_circuits_gives_one_experiment_each(backend: QustodyBackend) -> None:
    flip = QuantumCircuit(2, 2, name="flip")
    flip.x(1)
    flip.measure([0, 1], [0, 1])

    job = backend.run([ghz(2), flip], shots=64)
    result = job.result(timeout=WAIT_S)

    assert len(job.job_ids) == 2
    assert set(result.get_counts(0)) <= {"00", "11"}
    assert result.get_counts(1) == {"10": 64}
    assert result.get_counts(flip) == {"10": 64}
    assert len(result.get_counts()) == 2


def test_unbound_parameters_are_refused_before_submission(backend: QustodyBackend) -> None:
    theta = Parameter("theta")
    circuit = QuantumCircuit(1, 1)
    circuit.ry(theta, 0)
    circuit.measure(0, 0)

    with pytest.raises(CircuitConversionError, match="theta") as info:
        backend.run(circuit)
    assert info.value.code == "unbound_parameters"

    counts = backend.run(circuit.assign_parameters([math.pi]), shots=32).result().get_counts()
    assert counts == {"1": 32}


def test_refusals_surface_as_api_errors(backend: QustodyBackend) -> None:
    with pytest.raises(QustodyAPIError) as info:
        backend.run(ghz(2), shots=backend.info.max_shots + 1)
    assert info.value.code == "too_many_shots"

    with pytest.raises(ValueError, match="unknown run option"):
        backend.run(ghz(2), shots=8, optimization_level=3)


def test_a_cancelled_job_has_no_result(backend: QustodyBackend) -> None:
    job = backend.run(ghz(3), shots=min(100_000, backend.info.max_shots))
    job.cancel()
    # Cancelled while queued, while running, or too late: only the first two
    # may end without a result, and then the job says so.
    try:
        result = job.result(timeout=WAIT_S)
    except QustodyJobError as error:
        assert error.code == "job_cancelled"  # noqa: PT017 (either outcome is valid)
        assert job.status() == JobStatus.CANCELLED
    else:  # the worker finished first
        assert result.success


# ------------------------------------------------------------------------ sampler


def test_sampler_ry_probabilities_follow_sin_squared(backend: QustodyBackend) -> None:
    shots = 4000
    theta = Parameter("theta")
    circuit = QuantumCircuit(1)
    circuit.ry(theta, 0)
    circuit.measure_all()
    angles = np.array([0.0, math.pi / 2, math.pi])

    sampler = QustodySampler(backend, seed=2024)
    job = sampler.run([(circuit, angles.reshape(3, 1))], shots=shots)
    result = job.result(timeout=WAIT_S)

    assert job.status() == JobStatus.DONE
    assert len(result) == 1
    meas = result[0].data.meas
    assert isinstance(meas, BitArray)
    assert meas.shape == (3,)
    assert meas.num_shots == shots
    assert meas.num_bits == 1
    assert result[0].metadata["shots"] == shots

    p_one = meas.bitcount().sum(axis=-1) / shots
    expected = np.sin(angles / 2) ** 2
    # 5 standard deviations of a binomial proportion at p = 1/2 and 4000 shots ≈ 0.04.
    np.testing.assert_allclose(p_one, expected, atol=0.04)
    assert p_one[0] == 0.0
    assert p_one[2] == 1.0


def test_sampler_keeps_bindings_shape_and_registers(backend: QustodyBackend) -> None:
    theta = Parameter("theta")
    qr = QuantumRegister(2, "q")
    alpha, beta = ClassicalRegister(1, "alpha"), ClassicalRegister(1, "beta")
    circuit = QuantumCircuit(qr, alpha, beta)
    circuit.ry(theta, 0)
    circuit.x(1)
    circuit.measure(0, alpha[0])
    circuit.measure(1, beta[0])
    values = np.array([[0.0, math.pi], [math.pi, 0.0]]).reshape(2, 2, 1)

    result = QustodySampler(backend, default_shots=16).run([(circuit, values)]).result()

    data = result[0].data
    assert data.shape == (2, 2)
    assert data.alpha.shape == (2, 2)
    assert data.alpha.num_shots == 16
    assert data.alpha.bitcount().sum(axis=-1).tolist() == [[0, 16], [16, 0]]
    assert data.beta.get_counts() == {"1": 64}


def test_sampler_runs_unparameterized_pubs_with_pub_shots(backend: QustodyBackend) -> None:
    result = QustodySampler(backend).run([ghz(3), (ghz(2), None, 10)]).result()

    assert result[0].data.c.num_shots == 1024
    assert set(result[0].data.c.get_counts()) <= {"000", "111"}
    assert result[1].data.c.num_shots == 10
    assert result[1].data.c.shape == ()

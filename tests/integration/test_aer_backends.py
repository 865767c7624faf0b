"""The Aer backends and their registry, run for real in the sandbox."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from qiskit import qasm2
from qiskit_aer import AerSimulator

from qustody.domain.errors import ConfigurationError
from qustody.domain.ids import new_job_id
from qustody.domain.models import ExecutionFailure, ExecutionRequest, ExecutionResult
from qustody.executors.aer import (
    STABILIZER_MAX_QUBITS,
    STATEVECTOR_MAX_QUBITS,
    AerBackend,
    aer_backends,
)
from qustody.executors.errors import UnknownBackend
from qustody.executors.registry import BackendRegistry, default_registry
from qustody.executors.sandbox import Sandbox, SandboxLimits
from support import ghz_qasm2, ghz_qasm3

GHZ2 = ghz_qasm2(5)

GHZ3 = ghz_qasm3(5)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxLimits(cpu_seconds=30, wall_seconds=60)) as box:
        yield box


def run(
    sandbox: Sandbox,
    circuit: str,
    *,
    backend: str = "aer-statevector",
    fmt: str = "qasm2",
    shots: int = 1000,
    seed: int | None = None,
    memory: bool = False,
) -> ExecutionResult:
    outcome = sandbox.execute(
        ExecutionRequest(
            job_id=new_job_id(),
            backend=backend,
            circuit=circuit,
            circuit_format="qasm2" if fmt == "qasm2" else "qasm3",
            shots=shots,
            seed=seed,
            memory=memory,
        )
    )
    assert isinstance(outcome, ExecutionResult), outcome
    return outcome


def ghz(n: int) -> str:
    gates = "".join(f"cx q[{i}],q[{i + 1}];\n" for i in range(n - 1))
    return (
        f'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[{n}];\ncreg c[{n}];\n'
        f"h q[0];\n{gates}measure q -> c;\n"
    )


# -- registry --------------------------------------------------------------------------


def test_default_registry_has_the_three_aer_backends() -> None:
    registry = default_registry()
    assert registry.names() == ["aer-statevector", "aer-stabilizer", "aer-automatic"]
    infos = {backend.info.name: backend.info for backend in registry.list()}
    assert {info.method for info in infos.values()} == {"statevector", "stabilizer", "automatic"}
    assert all(info.max_shots == 100_000 and info.simulator for info in infos.values())
    assert infos["aer-statevector"].max_qubits == STATEVECTOR_MAX_QUBITS
    assert infos["aer-stabilizer"].max_qubits == STABILIZER_MAX_QUBITS
    assert "t" not in infos["aer-stabilizer"].basis_gates
    assert {"h", "cx", "s"} <= set(infos["aer-stabilizer"].basis_gates)
    assert {"t", "ccx", "rz"} <= set(infos["aer-statevector"].basis_gates)


def test_statevector_fits_the_default_memory_budget() -> None:
    assert SandboxLimits().memory_bytes // 2 >= 16 * 2**STATEVECTOR_MAX_QUBITS


def test_unknown_backend_error() -> None:
    with pytest.raises(UnknownBackend) as caught:
        default_registry().get("aer-nope")
    error = caught.value
    assert (error.code, error.status, error.field) == ("unknown_backend", 422, "backend")
    assert "aer-statevector" in error.detail
    assert "aer-nope" in error.detail


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ConfigurationError):
        BackendRegistry([*aer_backends(), aer_backends()[0]])


# -- execution -------------------------------------------------------------------------


@pytest.mark.parametrize(("circuit", "fmt"), [(GHZ2, "qasm2"), (GHZ3, "qasm3")])
def test_ghz5(circuit: str, fmt: str, sandbox: Sandbox) -> None:
    result = run(sandbox, circuit, fmt=fmt, shots=2000)
    assert set(result.counts) == {"00000", "11111"}
    assert sum(result.counts.values()) == 2000
    assert result.clbit_registers == (("c", 5),)
    assert result.backend == "aer-statevector"
    assert result.method == "statevector"
    assert result.simulator_version.startswith("qiskit-aer ")
    assert result.execution_seconds > 0
    assert result.memory is None


def test_seed_reproduces(sandbox: Sandbox) -> None:
    first = run(sandbox, GHZ2, seed=1234, memory=True)
    second = run(sandbox, GHZ2, seed=1234, memory=True)
    assert first.seed == second.seed == 1234
    assert first.counts == second.counts
    assert first.memory == second.memory


def test_missing_seed_is_chosen_and_reported(sandbox: Sandbox) -> None:
    first = run(sandbox, GHZ2, memory=True)
    again = run(sandbox, GHZ2, seed=first.seed, memory=True)
    assert again.memory == first.memory


def test_a_job_leaves_nothing_behind_for_the_next(sandbox: Sandbox) -> None:
    # Job B, then other jobs with other circuits, seeds, shots, options and
    # formats (or no seed), then B again: B sees exactly what it saw first.
    first = run(sandbox, GHZ2, shots=64, seed=99, memory=True)
    run(sandbox, ghz(8), shots=5000, seed=1, memory=True)
    run(sandbox, GHZ3, fmt="qasm3", shots=10)
    run(sandbox, ghz(3), shots=7)
    again = run(sandbox, GHZ2, shots=64, seed=99, memory=True)
    assert again.memory == first.memory
    assert again.counts == first.counts
    assert again.metadata == first.metadata | {"time_taken": again.metadata["time_taken"]}


@pytest.mark.parametrize("backend", aer_backends(), ids=lambda b: b.info.name)
def test_run_in_process_matches_aer_run(backend: AerBackend) -> None:
    # The backend calls Aer's job function in its own thread; the result must be
    # what AerSimulator.run gives for the same seed (and the hook must exist in
    # this Aer, or the slower public path is being used).
    assert hasattr(AerSimulator, "_execute_circuits_job")
    job = ExecutionRequest(new_job_id(), backend.info.name, GHZ2, "qasm2", 200, 5, True)
    result = backend.run(job)
    circuit = qasm2.loads(GHZ2)
    simulator = AerSimulator(method=backend.info.method)
    expected = simulator.run(circuit, shots=200, seed_simulator=5, memory=True).result()
    assert result.memory == expected.get_memory(0)
    assert result.counts == expected.get_counts(0)


def test_warm_up_runs_in_process_and_stops_when_asked() -> None:
    backend = aer_backends()[0]
    calls: list[bool] = []

    def idle() -> bool:
        calls.append(True)
        return len(calls) < 3

    backend.warm_up(idle)  # loads the first program, runs it, then stops
    assert len(calls) == 3
    backend.warm_up(lambda: True)


def test_memory(sandbox: Sandbox) -> None:
    result = run(sandbox, GHZ2, shots=300, memory=True)
    assert result.memory is not None
    assert len(result.memory) == 300
    assert set(result.memory) <= {"00000", "11111"}
    assert {shot: result.memory.count(shot) for shot in set(result.memory)} == result.counts


def test_registers_are_space_separated_and_listed_in_order(sandbox: Sandbox) -> None:
    circuit = (
        'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[3];\ncreg a[1];\ncreg b[2];\n'
        "x q[0];\nmeasure q[0] -> a[0];\nmeasure q[1] -> b[0];\nmeasure q[2] -> b[1];\n"
    )
    result = run(sandbox, circuit, shots=10)
    assert result.clbit_registers == (("a", 1), ("b", 2))
    assert result.counts == {"00 1": 10}  # Qiskit's order: last register first


def test_stabilizer_runs_200_qubit_ghz(sandbox: Sandbox) -> None:
    result = run(sandbox, ghz(200), backend="aer-stabilizer", shots=100, seed=7)
    assert set(result.counts) <= {"0" * 200, "1" * 200}
    assert sum(result.counts.values()) == 100
    assert result.method == "stabilizer"


def test_automatic_picks_a_method(sandbox: Sandbox) -> None:
    result = run(sandbox, GHZ2, backend="aer-automatic", shots=100)
    assert set(result.counts) <= {"00000", "11111"}
    assert result.metadata["configured_method"] == "automatic"
    assert result.method in ("stabilizer", "statevector")


def test_openqasm3_control_flow(sandbox: Sandbox) -> None:
    circuit = (
        'OPENQASM 3;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\n'
        "x q[0];\nc[0] = measure q[0];\nif (c[0]) { x q[1]; }\nc[1] = measure q[1];\n"
    )
    result = run(sandbox, circuit, fmt="qasm3", shots=50)
    assert result.counts == {"11": 50}


def test_non_clifford_on_stabilizer_is_an_execution_error(sandbox: Sandbox) -> None:
    circuit = (
        'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[1];\ncreg c[1];\nt q[0];\nmeasure q -> c;\n'
    )
    outcome = sandbox.execute(
        ExecutionRequest(new_job_id(), "aer-stabilizer", circuit, "qasm2", shots=10)
    )
    assert isinstance(outcome, ExecutionFailure)
    assert outcome.code == "execution_error"


def test_the_child_refuses_includes_too(sandbox: Sandbox) -> None:
    # Validation refuses this first; the child checks again before any loader runs.
    circuit = 'OPENQASM 2.0;\ninclude "/etc/passwd";\nqreg q[1];\n'
    outcome = sandbox.execute(
        ExecutionRequest(new_job_id(), "aer-statevector", circuit, "qasm2", 1)
    )
    assert isinstance(outcome, ExecutionFailure)
    assert outcome.code == "execution_error"
    assert "/etc/passwd" in outcome.detail
    assert "root:" not in outcome.detail


def test_shots_outside_the_backend_range_fail(sandbox: Sandbox) -> None:
    outcome = sandbox.execute(ExecutionRequest(new_job_id(), "aer-statevector", GHZ2, "qasm2", 0))
    assert isinstance(outcome, ExecutionFailure)
    assert outcome.code == "execution_error"

"""Pure conversions of the SDK: JSON → typed values → Qiskit objects. No network."""

# Qiskit ships no type information.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx
import numpy as np
import pytest
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister
from qiskit.circuit import Parameter
from qiskit.primitives import BitArray, SamplerPub
from qiskit.providers import JobStatus
from qiskit.result import Result as QiskitResult

from qustody.client import (
    CircuitConversionError,
    ClbitRegister,
    Client,
    IssuedToken,
    Job,
    JobState,
    QustodyConnectionError,
    QustodyProtocolError,
    Result,
)
from qustody.client._convert import (
    bit_arrays,
    bitstring_to_hex,
    circuit_to_qasm,
    match_registers,
    packed_registers,
    to_experiment_dict,
    unbound_parameter_names,
)
from qustody.client._http import api_error_from_answer
from qustody.client.models import Backend
from qustody.client.qiskit_provider import build_target, combined_status

TOKEN = "eyJhbGciOiJFZERTQSJ9.sentinel-token-value.signature"
T = "2026-11-21T20:00:00Z"


def result_json(
    counts: dict[str, int],
    registers: list[list[Any]],
    memory: list[str] | None = None,
    shots: int | None = None,
) -> dict[str, Any]:
    return {
        "job_id": "job_01",
        "counts": counts,
        "memory": memory,
        "clbit_registers": registers,
        "metadata": {
            "backend": "aer-statevector",
            "shots": shots if shots is not None else sum(counts.values()),
            "seed": 123,
            "method": "statevector",
            "simulator": "qiskit-aer 0.18.2",
            "execution_seconds": 0.004,
            "queue_seconds": 0.01,
            "worker": "w1",
        },
    }


def job_json(**overrides: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "id": "job_01",
        "tenant_id": "ten_1",
        "project_id": "prj_1",
        "principal_id": "usr_1",
        "backend": "aer-statevector",
        "shots": 1024,
        "state": "queued",
        "circuit": {
            "format": "qasm2",
            "sha256": "ab" * 32,
            "num_qubits": 2,
            "num_clbits": 2,
            "gate_count": 4,
            "depth": 3,
        },
        "created_at": T,
        "updated_at": T,
        "queued_at": T,
        "started_at": None,
        "finished_at": None,
        "error": None,
    }
    job.update(overrides)
    return job


def as_qiskit(result: Result, name: str = "circ") -> Any:
    return QiskitResult.from_dict(
        {
            "backend_name": "aer-statevector",
            "backend_version": "1",
            "job_id": result.job_id,
            "success": True,
            "results": [to_experiment_dict(result, name=name)],
        }
    )


# ----------------------------------------------------------------- JSON → Result


def test_result_with_several_registers_and_memory_round_trips_through_qiskit() -> None:
    memory = ["01 1", "10 0", "01 1", "00 1"]
    parsed = Result.from_json(
        result_json({"01 1": 2, "10 0": 1, "00 1": 1}, [["a", 1], ["b", 2]], memory)
    )

    assert parsed.clbit_registers == (ClbitRegister("a", 1), ClbitRegister("b", 2))
    assert parsed.num_clbits == 3
    assert parsed.memory == tuple(memory)
    assert parsed.metadata.seed == 123
    assert parsed.metadata.extras == {"worker": "w1"}

    qiskit_result = as_qiskit(parsed)
    assert qiskit_result.get_counts() == {"01 1": 2, "10 0": 1, "00 1": 1}
    assert qiskit_result.get_counts("circ") == qiskit_result.get_counts(0)
    assert qiskit_result.get_memory() == memory


def test_result_keeps_leading_zeros_of_a_single_register() -> None:
    parsed = Result.from_json(result_json({"000": 500, "111": 524}, [["c", 3]]))

    assert parsed.memory is None
    assert as_qiskit(parsed).get_counts() == {"000": 500, "111": 524}


def test_bitstring_to_hex_ignores_register_spaces() -> None:
    assert bitstring_to_hex("10 1", 3) == "0x5"
    assert bitstring_to_hex("000", 3) == "0x0"
    assert bitstring_to_hex("", 0) == "0x0"


@pytest.mark.parametrize("bad", ["0120", "01", "0 1 1 0 1"])
def test_malformed_bitstrings_are_a_protocol_error(bad: str) -> None:
    with pytest.raises(QustodyProtocolError):
        bitstring_to_hex(bad, 3)


def test_result_with_wrong_member_types_names_the_member() -> None:
    data = result_json({"00": 1}, [["c", 2]])
    data["metadata"]["shots"] = "many"

    with pytest.raises(QustodyProtocolError, match=r"metadata\.shots"):
        Result.from_json(data)


# --------------------------------------------------------------------- JSON → Job


def test_job_parses_transitions_and_error() -> None:
    job = Job.from_json(
        job_json(
            state="failed",
            error={"code": "execution_failed", "detail": "boom"},
            transitions=[
                {"from": None, "to": "submitted", "at": T, "actor": "usr_1", "reason": None},
                {"from": "running", "to": "failed", "at": T, "actor": "worker:1", "reason": "x"},
            ],
        )
    )

    assert job.state is JobState.FAILED
    assert job.is_terminal
    assert job.error is not None
    assert job.error.code == "execution_failed"
    assert [t.to_state for t in job.transitions] == [JobState.SUBMITTED, JobState.FAILED]
    assert job.transitions[0].from_state is None
    assert job.created_at.tzinfo is not None


def test_unknown_job_state_is_a_protocol_error() -> None:
    with pytest.raises(QustodyProtocolError, match="unknown job state"):
        Job.from_json(job_json(state="teleported"))


def test_job_states_map_to_qiskit_statuses() -> None:
    assert combined_status([JobState.QUEUED, JobState.COMPLETED]) == JobStatus.QUEUED
    assert combined_status([JobState.RUNNING, JobState.QUEUED]) == JobStatus.RUNNING
    assert combined_status([JobState.SUBMITTED]) == JobStatus.INITIALIZING
    assert combined_status([JobState.COMPLETED, JobState.COMPLETED]) == JobStatus.DONE
    assert combined_status([JobState.COMPLETED, JobState.REJECTED]) == JobStatus.ERROR
    assert combined_status([JobState.COMPLETED, JobState.CANCELLED]) == JobStatus.CANCELLED


# -------------------------------------------------------------- circuits → QASM


def test_parameterized_circuit_is_detected_and_refused() -> None:
    theta, phi = Parameter("theta"), Parameter("phi")
    circuit = QuantumCircuit(1, 1)
    circuit.ry(theta, 0)
    circuit.rz(phi, 0)
    circuit.measure(0, 0)

    assert unbound_parameter_names(circuit) == ["phi", "theta"]
    with pytest.raises(CircuitConversionError, match="assign_parameters") as info:
        circuit_to_qasm(circuit)
    assert info.value.code == "unbound_parameters"

    bound = circuit.assign_parameters({theta: 0.5, phi: 0.25})
    assert unbound_parameter_names(bound) == []
    assert circuit_to_qasm(bound).startswith("OPENQASM 2.0;")


def test_circuits_export_as_qasm2_when_possible_else_qasm3() -> None:
    plain = QuantumCircuit(QuantumRegister(2, "q"), ClassicalRegister(1, "a"))
    plain.h(0)
    plain.measure(0, 0)
    assert circuit_to_qasm(plain).startswith("OPENQASM 2.0;")

    dynamic = QuantumCircuit(1, 1)
    dynamic.measure(0, 0)
    with dynamic.if_test((dynamic.clbits[0], 1)):
        dynamic.x(0)
    assert circuit_to_qasm(dynamic).startswith("OPENQASM 3.0;")


def test_non_circuits_are_refused() -> None:
    with pytest.raises(TypeError, match="QuantumCircuit"):
        circuit_to_qasm(42)


# ------------------------------------------------------------ memory → BitArray


def test_packed_registers_match_bit_array_layout() -> None:
    memory = ["01 1", "10 0", "11 1"]
    registers = [ClbitRegister("a", 1), ClbitRegister("b", 2)]

    packed = packed_registers(memory, registers)

    assert packed["a"].shape == (3, 1)
    assert BitArray(packed["a"], 1).get_bitstrings() == ["1", "0", "1"]
    assert BitArray(packed["b"], 2).get_bitstrings() == ["01", "10", "11"]


def test_packed_registers_wider_than_a_byte() -> None:
    shots = ["1000000001 1", "0000000010 0"]
    registers = [ClbitRegister("flag", 1), ClbitRegister("wide", 10)]

    packed = packed_registers(shots, registers)

    assert packed["wide"].shape == (2, 2)
    assert BitArray(packed["wide"], 10).get_bitstrings() == ["1000000001", "0000000010"]
    assert BitArray(packed["wide"], 10).get_int_counts() == {513: 1, 2: 1}


def test_bit_arrays_are_shaped_like_the_bindings() -> None:
    theta = Parameter("theta")
    circuit = QuantumCircuit(QuantumRegister(1, "q"), ClassicalRegister(1, "meas"))
    circuit.ry(theta, 0)
    circuit.measure(0, 0)
    pub = SamplerPub.coerce((circuit, np.zeros((2, 3, 1))), 4)
    assert pub.shape == (2, 3)
    assert pub.parameter_values.bind_all(circuit).shape == (2, 3)

    results = np.empty(pub.shape, dtype=object)
    for index in np.ndindex(pub.shape):
        ones = index[0] * 3 + index[1]  # 0..5 shots measure 1, capped at 4
        memory = ["1" if i < ones else "0" for i in range(4)]
        results[index] = Result.from_json(result_json({}, [["meas", 1]], memory=memory, shots=4))

    arrays = bit_arrays(results, [("meas", 1)], shots=4)

    meas = arrays["meas"]
    assert meas.shape == (2, 3)
    assert meas.num_shots == 4
    assert meas.num_bits == 1
    assert meas.array.shape == (2, 3, 4, 1)
    assert meas[1, 0].get_counts() == {"1": 3, "0": 1}
    assert meas.bitcount().sum(axis=-1).tolist() == [[0, 1, 2], [3, 4, 4]]


def test_bit_arrays_refuse_a_result_without_memory() -> None:
    results = np.empty((), dtype=object)
    results[()] = Result.from_json(result_json({"0": 4}, [["meas", 1]]))

    with pytest.raises(QustodyProtocolError, match="no memory"):
        bit_arrays(results, [("meas", 1)], shots=4)


def test_registers_match_by_name_then_by_position() -> None:
    reported = [ClbitRegister("a", 1), ClbitRegister("b", 2)]

    by_name = match_registers([("b", 2), ("a", 1)], reported)
    assert [(name, reg.name) for name, reg in by_name] == [("b", "b"), ("a", "a")]

    renamed = match_registers([("A", 1), ("B", 2)], reported)
    assert [(name, reg.name) for name, reg in renamed] == [("A", "a"), ("B", "b")]

    with pytest.raises(QustodyProtocolError, match="do not match"):
        match_registers([("a", 3)], reported)


# --------------------------------------------------------------------- backends


def test_target_holds_known_basis_gates_and_measure() -> None:
    info = Backend.from_json(
        {
            "name": "aer-statevector",
            "description": "Aer",
            "provider": "aer",
            "simulator": True,
            "max_qubits": 5,
            "max_shots": 1000,
            "basis_gates": ["cx", "h", "rz", "if_else", "save_statevector"],
            "method": "statevector",
            "online": True,
        }
    )

    target = build_target(info)

    assert target.num_qubits == 5
    assert set(target.operation_names) == {"cx", "h", "rz", "if_else", "measure"}


# ----------------------------------------------------------------------- errors


def test_problem_json_becomes_an_api_error_with_every_member() -> None:
    body = {
        "type": "urn:qustody:problem:too_many_shots",
        "title": "Too many shots",
        "status": 422,
        "code": "too_many_shots",
        "detail": "shots is 2000000; backend aer-statevector allows at most 1000000.",
        "field": "shots",
        "request_id": "req_01",
        "instance": "/v1/jobs",
        "job_id": "job_09",
    }

    error = api_error_from_answer(
        status=422,
        reason="Unprocessable Entity",
        content_type="application/problem+json",
        body=json.dumps(body).encode(),
    )

    assert (error.status, error.code, error.field, error.request_id) == (
        422,
        "too_many_shots",
        "shots",
        "req_01",
    )
    assert error.title == "Too many shots"
    assert error.type == "urn:qustody:problem:too_many_shots"
    assert error.instance == "/v1/jobs"
    assert error.extras == {"job_id": "job_09"}
    assert "too_many_shots" in str(error)
    assert "allows at most 1000000" in str(error)


def test_html_error_page_gives_a_clean_error() -> None:
    error = api_error_from_answer(
        status=502,
        reason="Bad Gateway",
        content_type="text/html",
        body=b"<html><body>" + b"x" * 10_000 + b"</body></html>",
        request_id_header="req_proxy",
    )

    assert error.code == "http_error"
    assert error.status == 502
    assert error.request_id == "req_proxy"
    assert "<html>" not in str(error)
    assert len(str(error)) < 200


def test_non_problem_json_and_broken_json_give_clean_errors() -> None:
    plain = api_error_from_answer(
        status=404, reason="Not Found", content_type="application/json", body=b'{"detail": "x"}'
    )
    assert (plain.code, plain.detail) == ("http_error", "x")

    broken = api_error_from_answer(
        status=500, reason="Server Error", content_type="application/json", body=b"{oops"
    )
    assert broken.code == "http_error"
    assert "oops" in broken.detail


# ------------------------------------------------------------------------ secrets


def test_token_is_never_shown() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = Client("https://gateway.example/v1/", TOKEN, transport=httpx.MockTransport(refuse))

    assert repr(client) == "Client(url='https://gateway.example')"
    assert TOKEN not in str(vars(client))
    with pytest.raises(QustodyConnectionError) as info:
        client.backends()
    assert TOKEN not in str(info.value)
    assert TOKEN not in repr(info.value)
    assert info.value.code == "connection_error"

    issued = IssuedToken.from_json(
        {"token": TOKEN, "jti": "jti_1", "principal_id": "usr_1", "expires_at": T, "scopes": []}
    )
    assert TOKEN not in repr(issued)


def test_client_refuses_a_token_that_could_smuggle_headers() -> None:
    with pytest.raises(ValueError, match="whitespace"):
        Client("https://gateway.example", "abc\r\nX-Evil: 1")
    with pytest.raises(ValueError, match="http"):
        Client("gateway.example", TOKEN)


def test_importing_the_client_does_not_load_qiskit() -> None:
    probe = "import sys, qustody.client; print('qiskit' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"

"""Pure conversions between Qiskit objects and the gateway's JSON (no I/O).

* circuits → OpenQASM text for ``POST /v1/jobs``;
* a :class:`~qustody.client.models.Result` → the dictionary form of a
  :class:`qiskit.result.ExperimentResult` (hexadecimal counts and memory plus a header
  with ``creg_sizes`` and ``memory_slots``, so that Qiskit itself re-inserts the
  register spaces when a caller asks for counts or memory);
* per-shot memory strings → packed bit arrays, one per classical register, laid out
  as :class:`qiskit.primitives.BitArray` expects.
"""

# Qiskit ships no type information; every name taken from it is typed Any here.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from qiskit import QuantumCircuit, qasm2, qasm3
from qiskit.primitives.containers import BitArray
from qiskit.qasm2 import QASM2ExportError
from qiskit.qasm3 import QASM3ExporterError

from qustody.client.errors import CircuitConversionError, QustodyProtocolError
from qustody.client.models import ClbitRegister, Result

# ------------------------------------------------------------------------- circuits

_SHOWN = 10  # parameter names quoted in an error message


def unbound_parameter_names(circuit: QuantumCircuit) -> list[str]:
    """Names of the parameters a circuit still has, in Qiskit's sorted order."""
    return [str(p.name) for p in circuit.parameters]


def circuit_to_qasm(circuit: QuantumCircuit) -> str:
    """Export ``circuit`` as OpenQASM 2 when it can be, else as OpenQASM 3.

    Raises :class:`CircuitConversionError` for a circuit with unbound parameters (the
    gateway runs concrete circuits only) and for one neither exporter can write.
    """
    if not isinstance(circuit, QuantumCircuit):
        raise TypeError(
            f"circuit must be OpenQASM text or a qiskit.QuantumCircuit, "
            f"not {type(circuit).__name__}"
        )
    names = unbound_parameter_names(circuit)
    if names:
        shown = ", ".join(names[:_SHOWN]) + (", …" if len(names) > _SHOWN else "")
        raise CircuitConversionError(
            "unbound_parameters",
            f"circuit {circuit.name!r} has {len(names)} unbound parameter(s): {shown}. "
            "Bind them first with circuit.assign_parameters(...), or run it through "
            "QustodySampler with parameter values.",
        )
    try:
        return str(qasm2.dumps(circuit))
    except QASM2ExportError:
        pass  # not expressible in OpenQASM 2 (control flow, ...): try OpenQASM 3
    try:
        return str(qasm3.dumps(circuit))
    except QASM3ExporterError as exc:
        raise CircuitConversionError(
            "unexportable_circuit",
            f"circuit {circuit.name!r} cannot be written as OpenQASM 2 or 3: {exc}",
        ) from exc


# -------------------------------------------------------------------------- results


def _strip(bitstring: str, width: int, where: str) -> str:
    bits = bitstring.replace(" ", "")
    if len(bits) != width or bits.strip("01"):
        raise QustodyProtocolError(
            f"{where} {bitstring!r} is not a {width}-bit string of 0s and 1s "
            "(registers separated by spaces)"
        )
    return bits


def bitstring_to_hex(bitstring: str, width: int) -> str:
    """``'10 1'`` (3 bits) → ``'0x5'``: the form Qiskit's result classes store."""
    bits = _strip(bitstring, width, "bitstring")
    return hex(int(bits, 2)) if bits else "0x0"


def to_experiment_dict(
    result: Result, *, name: str, circuit_metadata: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``ExperimentResult.from_dict`` form of one gateway result."""
    width = result.num_clbits
    counts: dict[str, int] = {}
    for key, count in result.counts.items():
        hex_key = bitstring_to_hex(key, width)
        counts[hex_key] = counts.get(hex_key, 0) + count
    data: dict[str, Any] = {"counts": counts}
    if result.memory is not None:
        data["memory"] = [bitstring_to_hex(shot, width) for shot in result.memory]
    header: dict[str, Any] = {
        "name": name,
        "creg_sizes": [[reg.name, reg.size] for reg in result.clbit_registers],
        "memory_slots": width,
        "metadata": dict(circuit_metadata or {}),
    }
    experiment: dict[str, Any] = {
        "shots": result.metadata.shots,
        "success": True,
        "status": "DONE",
        "data": data,
        "header": header,
        "job_id": result.job_id,
        "metadata": {
            "backend": result.metadata.backend,
            "method": result.metadata.method,
            "simulator": result.metadata.simulator,
            "queue_seconds": result.metadata.queue_seconds,
            **dict(result.metadata.extras),
        },
    }
    if result.metadata.seed is not None:
        experiment["seed_simulator"] = result.metadata.seed
    if result.metadata.execution_seconds is not None:
        experiment["time_taken"] = result.metadata.execution_seconds
    return experiment


# ----------------------------------------------------------------------- bit arrays


def packed_registers(
    memory: Sequence[str], registers: Sequence[ClbitRegister]
) -> dict[str, npt.NDArray[np.uint8]]:
    """Per-shot memory strings → one ``(shots, ceil(size / 8))`` uint8 array per register.

    Each row holds one shot of one register, packed big-endian with clbit 0 as the
    least significant bit of the last byte: the layout of ``BitArray.array``.
    """
    width = sum(reg.size for reg in registers)
    rows = [_strip(shot, width, f"memory[{i}]") for i, shot in enumerate(memory)]
    flat = np.frombuffer("".join(rows).encode("ascii"), dtype=np.uint8) - ord("0")
    bits: npt.NDArray[np.uint8] = flat.reshape(len(rows), width)
    packed: dict[str, npt.NDArray[np.uint8]] = {}
    right = width  # registers are laid out right to left in declaration order
    for reg in registers:
        columns = bits[:, right - reg.size : right]
        right -= reg.size
        padded = np.pad(columns, ((0, 0), (-reg.size % 8, 0)))
        packed[reg.name] = np.packbits(padded, axis=-1)
    return packed


def match_registers(
    circuit_registers: Sequence[tuple[str, int]], result_registers: Sequence[ClbitRegister]
) -> list[tuple[str, ClbitRegister]]:
    """Pair each classical register of a circuit with the register the gateway reported.

    Registers are paired by name; when the exporter renamed them (OpenQASM 2 allows
    fewer names than Qiskit), by position, provided the sizes agree.
    """
    by_name = {reg.name: reg for reg in result_registers}
    if all(name in by_name and by_name[name].size == size for name, size in circuit_registers):
        return [(name, by_name[name]) for name, size in circuit_registers]
    if len(circuit_registers) == len(result_registers) and all(
        size == reg.size for (_, size), reg in zip(circuit_registers, result_registers, strict=True)
    ):
        return [
            (name, reg) for (name, _), reg in zip(circuit_registers, result_registers, strict=True)
        ]
    raise QustodyProtocolError(
        f"the gateway reported classical registers "
        f"{[(r.name, r.size) for r in result_registers]}, which do not match the "
        f"circuit's {list(circuit_registers)}"
    )


def bit_arrays(
    results: npt.NDArray[np.object_],
    circuit_registers: Sequence[tuple[str, int]],
    shots: int,
) -> dict[str, Any]:
    """One :class:`BitArray` per circuit register, shaped ``results.shape + (shots, …)``.

    ``results`` holds one :class:`Result` (submitted with ``memory=True``) per parameter
    binding, in the shape of the pub's bindings array.
    """
    shape = tuple(results.shape)
    arrays = {
        name: np.zeros((*shape, shots, -(-size // 8)), dtype=np.uint8)
        for name, size in circuit_registers
    }
    for index in np.ndindex(shape):
        result = results[index]
        if not isinstance(result, Result):
            raise TypeError(f"results{list(index)} is a {type(result).__name__}, not a Result")
        if result.memory is None:
            raise QustodyProtocolError(f"result of job {result.job_id} carries no memory")
        if len(result.memory) != shots:
            raise QustodyProtocolError(
                f"result of job {result.job_id} has {len(result.memory)} shots of "
                f"memory; {shots} were asked for"
            )
        packed = packed_registers(result.memory, result.clbit_registers)
        for name, reg in match_registers(circuit_registers, result.clbit_registers):
            arrays[name][index] = packed[reg.name]
    return {name: BitArray(arrays[name], size) for name, size in circuit_registers}

"""Errors of the jobs layer.

Every class has a stable ``code`` (clients match on it) and builds a
``detail`` that names the field, the limit and the fix.
"""

from __future__ import annotations

from collections.abc import Iterable

from qustody.domain.errors import QustodyError

# --------------------------------------------------------------------------------------
# Circuit validation (field "qasm")
# --------------------------------------------------------------------------------------


class CircuitTooLarge(QustodyError):
    code = "circuit_too_large"
    status = 413
    title = "Circuit too large"

    def __init__(self, size: int, limit: int, unit: str = "bytes") -> None:
        super().__init__(
            f"qasm has {size} {unit}; at most {limit} {unit} are allowed: "
            "submit a smaller program or split it into several jobs",
            field="qasm",
            extra={"size": size, "limit": limit, "unit": unit},
        )


class ForbiddenInclude(QustodyError):
    code = "forbidden_include"
    status = 422
    title = "Forbidden include"

    def __init__(self, name: str, allowed: str, *, line: int | None, column: int | None) -> None:
        shown = name if len(name) <= 80 else name[:79] + "…"
        where = f" (line {line})" if line is not None else ""
        super().__init__(
            f"qasm includes {shown!r}{where}; only {allowed!r} may be included: "
            "define the gates you need in the program itself",
            field="qasm",
            extra={"line": line, "column": column, "allowed": allowed},
        )


class InvalidCircuit(QustodyError):
    code = "invalid_circuit"
    status = 422
    title = "Invalid circuit"

    def __init__(self, problem: str, *, line: int | None = None, column: int | None = None) -> None:
        if line is None:
            where = ""
        elif column is None:
            where = f" at line {line}"
        else:
            where = f" at line {line}, column {column}"
        super().__init__(
            f"qasm is not a valid OpenQASM program{where}: {problem}; fix it and submit again",
            field="qasm",
            extra={"line": line, "column": column},
        )
        self.problem = problem
        self.line = line
        self.column = column


class TooManyQubits(QustodyError):
    code = "too_many_qubits"
    status = 422
    title = "Too many qubits"

    def __init__(self, count: int, limit: int, *, scope: str = "this deployment") -> None:
        super().__init__(
            f"qasm uses {count} qubits; {scope} allows at most {limit}: "
            "use fewer qubits or another backend",
            field="qasm",
            extra={"qubits": count, "limit": limit},
        )


class TooManyClbits(QustodyError):
    code = "too_many_clbits"
    status = 422
    title = "Too many classical bits"

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(
            f"qasm declares {count} classical bits; at most {limit} are allowed: "
            "measure into fewer bits",
            field="qasm",
            extra={"clbits": count, "limit": limit},
        )


class TooManyGates(QustodyError):
    code = "too_many_gates"
    status = 422
    title = "Too many gates"

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(
            f"qasm has {count} operations; at most {limit} are allowed: "
            "simplify the circuit or split it into several jobs",
            field="qasm",
            extra={"gates": count, "limit": limit},
        )


class CircuitTooDeep(QustodyError):
    code = "circuit_too_deep"
    status = 422
    title = "Circuit too deep"

    def __init__(self, depth: int, limit: int) -> None:
        super().__init__(
            f"qasm has depth {depth}; at most {limit} is allowed: "
            "parallelise the circuit or split it into several jobs",
            field="qasm",
            extra={"depth": depth, "limit": limit},
        )


class CircuitParseTimeout(QustodyError):
    code = "circuit_parse_timeout"
    status = 422
    title = "Circuit took too long to parse"

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"qasm took longer than {seconds:g} s to parse: "
            "simplify the program (fewer statements, loops or nested gate definitions)",
            field="qasm",
            extra={"limit_seconds": f"{seconds:g}"},
        )


class CircuitParseResources(QustodyError):
    code = "circuit_parse_resources"
    status = 422
    title = "Circuit needed too many resources to parse"

    def __init__(self, memory_mib: int) -> None:
        super().__init__(
            f"qasm needed more than the {memory_mib} MiB of memory allowed for parsing, or "
            "crashed the parser: simplify the program (fewer and smaller registers, "
            "shallower expressions)",
            field="qasm",
            extra={"limit_mib": memory_mib},
        )


# --------------------------------------------------------------------------------------
# Circuit against backend
# --------------------------------------------------------------------------------------


class InvalidShots(QustodyError):
    code = "invalid_shots"
    status = 422
    title = "Invalid shots"

    def __init__(self, shots: int) -> None:
        super().__init__(
            f"shots is {shots}; it must be at least 1", field="shots", extra={"shots": shots}
        )


class TooManyShots(QustodyError):
    code = "too_many_shots"
    status = 422
    title = "Too many shots"

    def __init__(self, shots: int, limit: int, backend: str) -> None:
        super().__init__(
            f"shots is {shots}; backend {backend} allows at most {limit}: "
            "lower shots or submit several jobs",
            field="shots",
            extra={"shots": shots, "limit": limit, "backend": backend},
        )


class UnsupportedOperation(QustodyError):
    code = "unsupported_operation"
    status = 422
    title = "Unsupported operation"

    def __init__(self, operations: Iterable[str], backend: str) -> None:
        names = sorted(operations)
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        super().__init__(
            f"qasm uses {shown}, which backend {backend} does not support: "
            "rewrite the circuit with the backend's basis gates or choose another backend",
            field="qasm",
            extra={"operations": ",".join(names[:50]), "backend": backend},
        )


# -- lifecycle ------------------------------------------------------------------------


class JobNotFinished(QustodyError):
    """A result was asked for a job that has none (yet, or ever)."""

    code = "result_not_ready"
    status = 409
    title = "Result not ready"

    @classmethod
    def for_state(cls, job_id: str, state: str, error_code: str | None) -> JobNotFinished:
        if state == "failed":
            return _JobFailed(
                f"job {job_id} failed ({error_code}); it has no result. See the job's error.",
                extra={"state": state},
            )
        if state in ("cancelled", "rejected"):
            error = _JobCancelled if state == "cancelled" else _JobRejected
            return error(f"job {job_id} was {state}; it has no result.", extra={"state": state})
        return cls(
            f"job {job_id} is {state}; wait until it is completed, e.g. `qustody jobs wait`.",
            extra={"state": state},
        )


class _JobFailed(JobNotFinished):
    code = "job_failed"
    title = "Job failed"


class _JobCancelled(JobNotFinished):
    code = "job_cancelled"
    title = "Job cancelled"


class _JobRejected(JobNotFinished):
    code = "job_rejected"
    title = "Job rejected"

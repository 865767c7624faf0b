"""Safe validation of untrusted OpenQASM: ``validate_circuit`` and ``check_against_backend``.

Qiskit's loaders are not built for hostile input: they open any file an
``include`` names, allocate whatever a register declaration asks for, can
recurse without bound, and fail with a zoo of exception types, Rust panics
(``BaseException``) among them. So validation runs in three stages:

1. **Before parsing, in this process** (pure Python, linear time): byte size,
   version, ``include`` statements (only ``qelib1.inc`` / ``stdgates.inc``;
   comments and strings are lexed, so neither hides nor fakes one), declared
   register sizes against the qubit and clbit limits, statement count. Nothing
   huge reaches a parser.
2. **Parsing, in a parser process** (:class:`CircuitParserPool`): a few
   long-lived processes forked from the sandbox's forkserver (Qiskit already
   imported), hardened like a sandbox (no environment, no inherited
   descriptors) and limited by ``RLIMIT_AS``. Requests and answers are JSON
   over a socket pair. A parse that runs past its time limit gets its process
   killed and replaced; one that exhausts memory or crashes the process is
   refused the same way. The process uses the same loader as the sandbox
   child (:func:`qustody.executors.aer.load_circuit`), so what is validated is
   what runs.
3. **After parsing, here**: qubits, clbits, gate count, depth against the
   limits; the SHA-256 of the source; classical registers; operation names
   (custom gates expanded to the standard gates they use).

Why processes rather than threads: a parse cannot be interrupted from another
thread, a memory limit applies to a whole process, and a panic or a stack
overflow in native code must not take the API server with it. Long-lived
rather than one process per parse: a round trip to a warm process costs tens
of microseconds, a fork milliseconds.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from qustody.domain.errors import ConfigurationError, ServiceUnavailable
from qustody.domain.models import BackendInfo, CircuitInfo
from qustody.executors.aer import QasmFormat, load_circuit, scan_qasm
from qustody.executors.errors import QasmError, QasmForbiddenInclude
from qustody.executors.sandbox import (
    acquire_forkserver,
    harden_process,
    release_forkserver,
    start_isolated_process,
    terminate_isolated_process,
)
from qustody.jobs.errors import (
    CircuitParseResources,
    CircuitParseTimeout,
    CircuitTooDeep,
    CircuitTooLarge,
    ForbiddenInclude,
    InvalidCircuit,
    InvalidShots,
    TooManyClbits,
    TooManyGates,
    TooManyQubits,
    TooManyShots,
    UnsupportedOperation,
)

if TYPE_CHECKING:
    from qiskit import QuantumCircuit

__all__ = [
    "CircuitLimits",
    "CircuitParserPool",
    "ParsedCircuit",
    "check_against_backend",
    "default_parser_pool",
    "validate_circuit",
]

log = logging.getLogger(__name__)

_MIB = 1024 * 1024
#: Operations every backend accepts whatever its basis.
_ALWAYS_SUPPORTED = frozenset({"measure", "barrier"})
#: Largest answer a parser process may send.
_MAX_REPLY_BYTES = 4 * _MIB
#: Operation names reported per circuit, at most.
_MAX_OPERATION_NAMES = 10_000


@dataclass(frozen=True, slots=True)
class CircuitLimits:
    """Tenant-independent ceilings applied to every submitted circuit."""

    #: Size of the OpenQASM text, UTF-8 encoded.
    max_bytes: int = 1_048_576
    max_qubits: int = 1_000
    max_clbits: int = 1_000
    #: Top-level operations (``QuantumCircuit.size()``, barriers excluded).
    max_gates: int = 100_000
    max_depth: int = 100_000
    #: Statements (semicolons) in the text: bounds the parser's work.
    max_statements: int = 100_000
    parse_timeout_seconds: float = 5.0

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_qubits", "max_clbits", "max_gates", "max_depth",
                     "max_statements"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"circuit limit {name} must be a positive integer")
        if not self.parse_timeout_seconds > 0:
            raise ConfigurationError("circuit limit parse_timeout_seconds must be positive")


@dataclass(frozen=True, slots=True)
class ParsedCircuit:
    """What a parser process reports about a circuit it loaded."""

    num_qubits: int
    num_clbits: int
    gate_count: int
    depth: int
    clbit_registers: tuple[tuple[str, int], ...]
    operations: frozenset[str]


# --------------------------------------------------------------------------------------
# Parser process (child side)
# --------------------------------------------------------------------------------------


@functools.cache
def _standard_gate_classes() -> dict[str, type]:
    """Qiskit's standard instruction names and their classes (``h`` -> ``HGate``)."""
    from qiskit.circuit.library import get_standard_gate_name_mapping

    return {name: op.base_class for name, op in get_standard_gate_name_mapping().items()}


def _operation_names(circuit: QuantumCircuit) -> list[str]:
    """Names of the operations a circuit runs, custom gates replaced by theirs.

    Each custom gate's definition is visited once (by name), so nested
    definitions cannot blow this up; control-flow blocks are visited too.
    """
    from qiskit.circuit import ControlFlowOp

    standard = _standard_gate_classes()
    names: set[str] = set()
    expanded: set[str] = set()
    pending = [circuit]
    while pending:
        current = pending.pop()
        for instruction in current.data:
            operation = instruction.operation
            name = operation.name
            if isinstance(operation, ControlFlowOp):
                names.add(name)
                pending.extend(operation.blocks)
                continue
            if name == "barrier" or operation.base_class is standard.get(name):
                names.add(name)
                continue
            if name in expanded:
                continue
            expanded.add(name)
            definition = operation.definition
            if definition is None:
                names.add(name)  # opaque: no backend can run it
            else:
                pending.append(definition)
    return sorted(names)[:_MAX_OPERATION_NAMES]


def _reply(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _parse_request(data: bytes) -> tuple[bytes, bool]:
    """Parse one request; returns (answer, keep this process)."""
    try:
        request = json.loads(data)
        fmt: QasmFormat = "qasm2" if request["format"] == "qasm2" else "qasm3"
        circuit = load_circuit(str(request["source"]), fmt)
        answer = {
            "ok": True,
            "num_qubits": circuit.num_qubits,
            "num_clbits": circuit.num_clbits,
            "gate_count": circuit.size(),
            "depth": circuit.depth(),
            "clbit_registers": [[register.name, register.size] for register in circuit.cregs],
            "operations": _operation_names(circuit),
        }
        return _reply(answer), True
    except QasmError as exc:
        invalid = {"ok": False, "kind": "invalid", "message": exc.message}
        return _reply({**invalid, "line": exc.line, "column": exc.column}), True
    except MemoryError:
        # The heap may be in pieces: answer, then let a fresh process take over.
        return _reply({"ok": False, "kind": "resources", "retire": True}), False
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        problem = f"the circuit could not be analysed ({type(exc).__name__})"
        return _reply({"ok": False, "kind": "invalid", "message": problem, "retire": True}), False


_WARM_UP = (
    'OPENQASM 2.0;\ninclude "qelib1.inc";\ngate g a, b { h a; cx a, b; }\nqreg q[2];\ncreg c[2];\n'
    "g q[0], q[1];\nmeasure q -> c;\n"
)


def _parser_main(conn: Connection, memory_bytes: int) -> None:
    """Entry point of a parser process: harden, then answer requests until EOF."""
    try:
        harden_process([conn.fileno()], threads=1, memory_bytes=memory_bytes, cpu_seconds=None)
    except BaseException:  # noqa: BLE001 - never parse in a half-hardened process
        os._exit(70)
    # Build lazy state (gate tables, loader caches) before the first real request.
    _parse_request(_reply({"format": "qasm2", "source": _WARM_UP}))
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            os._exit(0)
        answer, keep = _parse_request(data)
        try:
            conn.send_bytes(answer)
        except OSError:
            os._exit(0)
        if not keep:
            os._exit(0)


# --------------------------------------------------------------------------------------
# Parser pool (parent side)
# --------------------------------------------------------------------------------------


class _Worker:
    __slots__ = ("conn", "parses", "process")

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.parses = 0

    def stop(self) -> None:
        self.conn.close()
        terminate_isolated_process(self.process)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _decode_parsed(answer: dict[str, Any]) -> ParsedCircuit:
    fields = ("num_qubits", "num_clbits", "gate_count", "depth")
    registers = answer.get("clbit_registers")
    operations = answer.get("operations")
    if not (
        all(_is_int(answer.get(name)) for name in fields)
        and isinstance(registers, list)
        and all(
            isinstance(r, list) and len(r) == 2 and isinstance(r[0], str) and _is_int(r[1])
            for r in registers
        )
        and isinstance(operations, list)
        and all(isinstance(name, str) for name in operations)
    ):
        raise ValueError("malformed parser answer")
    return ParsedCircuit(
        num_qubits=answer["num_qubits"],
        num_clbits=answer["num_clbits"],
        gate_count=answer["gate_count"],
        depth=answer["depth"],
        clbit_registers=tuple((name, size) for name, size in registers),
        operations=frozenset(operations),
    )


class CircuitParserPool:
    """Long-lived, memory-limited parser processes; thread-safe.

    ``size`` processes at most; each parses one program at a time and is
    replaced after ``max_parses_per_process`` parses, after a timeout, and
    after running out of memory or crashing.
    """

    def __init__(
        self,
        size: int = 2,
        *,
        memory_bytes: int = 512 * _MIB,
        max_parses_per_process: int = 10_000,
    ) -> None:
        if size < 1 or memory_bytes < _MIB or max_parses_per_process < 1:
            raise ConfigurationError("parser pool size, memory and recycling must be positive")
        self.size = size
        self.memory_bytes = memory_bytes
        self.max_parses_per_process = max_parses_per_process
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._live = 0
        self._started = False
        self._closed = False

    @property
    def memory_mib(self) -> int:
        return self.memory_bytes // _MIB

    def start(self) -> None:
        """Start the forkserver and the processes now rather than on first use."""
        with self._cond:
            if self._closed:
                raise ServiceUnavailable("the circuit parser pool is closed")
            if self._started:
                return
            acquire_forkserver()
            self._started = True
            missing = self.size - self._live
            self._live += missing
        spawned: list[_Worker] = []
        try:
            for _ in range(missing):
                spawned.append(self._spawn())
        finally:
            with self._cond:
                self._live -= missing - len(spawned)
                self._idle.extend(spawned)
                self._cond.notify_all()

    def close(self) -> None:
        """Stop every process; parses in flight fail; idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            idle, self._idle = self._idle, []
            started = self._started
            self._cond.notify_all()
        for worker in idle:
            worker.stop()
        if started:
            release_forkserver()

    def __enter__(self) -> CircuitParserPool:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _spawn(self) -> _Worker:
        parent_end, child_end = multiprocessing.Pipe(duplex=True)
        try:
            process = start_isolated_process(
                _parser_main, (child_end, self.memory_bytes), name="qustody-qasm-parser"
            )
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        return _Worker(process, parent_end)

    def _acquire(self, deadline: float) -> _Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise ServiceUnavailable("the circuit parser pool is closed")
                if self._idle:
                    return self._idle.pop()
                if self._live < self.size:
                    self._live += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._cond.wait(remaining):
                    raise ServiceUnavailable(
                        "every circuit parser is busy; retry in a moment", field="qasm"
                    )
        try:
            return self._spawn()
        except BaseException:
            with self._cond:
                self._live -= 1
                self._cond.notify()
            raise

    def _release(self, worker: _Worker, *, reuse: bool) -> None:
        if reuse and worker.parses < self.max_parses_per_process:
            with self._cond:
                if not self._closed:
                    self._idle.append(worker)
                    self._cond.notify()
                    return
        worker.stop()
        with self._cond:
            self._live -= 1
            self._cond.notify()

    def parse(self, source: str, fmt: QasmFormat, *, timeout: float) -> ParsedCircuit:
        """Parse in a parser process; raises the jobs errors for every failure."""
        self.start()
        request = _reply({"format": fmt, "source": source})
        deadline = time.monotonic() + timeout
        for attempt in range(2):
            worker = self._acquire(deadline + 5.0)
            reuse = False
            try:
                try:
                    worker.conn.send_bytes(request)
                except OSError:
                    if attempt == 0:  # died while idle (killed from outside): once more
                        continue
                    raise CircuitParseResources(self.memory_mib) from None
                worker.parses += 1
                if not worker.conn.poll(max(0.0, deadline - time.monotonic())):
                    raise CircuitParseTimeout(timeout)
                try:
                    answer = json.loads(worker.conn.recv_bytes(_MAX_REPLY_BYTES))
                except (EOFError, OSError, ValueError):
                    # The process died mid-parse: out of memory in native code
                    # (Rust aborts), a stack overflow, or a crash.
                    raise CircuitParseResources(self.memory_mib) from None
                if not isinstance(answer, dict):
                    raise CircuitParseResources(self.memory_mib)
                reuse = answer.get("retire") is not True
                return self._interpret(answer)
            finally:
                self._release(worker, reuse=reuse)
        raise CircuitParseResources(self.memory_mib)

    def _interpret(self, answer: dict[str, Any]) -> ParsedCircuit:
        if answer.get("ok") is True:
            try:
                return _decode_parsed(answer)
            except ValueError:
                raise CircuitParseResources(self.memory_mib) from None
        if answer.get("kind") == "invalid":
            line, column = answer.get("line"), answer.get("column")
            raise InvalidCircuit(
                str(answer.get("message", "could not be parsed"))[:300],
                line=line if _is_int(line) else None,
                column=column if _is_int(column) else None,
            )
        raise CircuitParseResources(self.memory_mib)


_default_pool: CircuitParserPool | None = None
_default_pool_lock = threading.Lock()


def default_parser_pool() -> CircuitParserPool:
    """The process-wide pool ``validate_circuit`` uses unless given another."""
    global _default_pool
    with _default_pool_lock:
        if _default_pool is None:
            _default_pool = CircuitParserPool(size=max(1, min(4, os.cpu_count() or 1)))
            atexit.register(_default_pool.close)
        return _default_pool


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def _encoded(source: str, limits: CircuitLimits) -> bytes:
    if len(source) > limits.max_bytes:  # each character is at least one byte
        raise CircuitTooLarge(len(source), limits.max_bytes)
    try:
        data = source.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidCircuit(
            f"the text contains an unpaired surrogate at character {exc.start}"
        ) from None
    if len(data) > limits.max_bytes:
        raise CircuitTooLarge(len(data), limits.max_bytes)
    return data


def validate_circuit(
    source: str,
    limits: CircuitLimits,
    *,
    pool: CircuitParserPool | None = None,
) -> CircuitInfo:
    """Check untrusted OpenQASM against ``limits``; the circuit's description or an error.

    Raises (all :class:`~qustody.domain.errors.QustodyError`, field ``qasm``):
    ``circuit_too_large``, ``forbidden_include``, ``invalid_circuit``,
    ``too_many_qubits``, ``too_many_clbits``, ``too_many_gates``,
    ``circuit_too_deep``, ``circuit_parse_timeout``, ``circuit_parse_resources``.
    """
    data = _encoded(source, limits)
    try:
        scan = scan_qasm(source)
    except QasmError as exc:
        raise InvalidCircuit(exc.message, line=exc.line, column=exc.column) from None
    for include in scan.includes:
        allowed = "qelib1.inc" if scan.format == "qasm2" else "stdgates.inc"
        if include.name != allowed:
            raise ForbiddenInclude(include.name, allowed, line=include.line, column=include.column)
    if scan.empty:
        raise InvalidCircuit("the program is empty")
    if scan.statements > limits.max_statements:
        raise CircuitTooLarge(scan.statements, limits.max_statements, "statements")
    if scan.declared_qubits > limits.max_qubits:
        raise TooManyQubits(scan.declared_qubits, limits.max_qubits)
    if scan.declared_clbits > limits.max_clbits:
        raise TooManyClbits(scan.declared_clbits, limits.max_clbits)

    parser = pool if pool is not None else default_parser_pool()
    try:
        parsed = parser.parse(source, scan.format, timeout=limits.parse_timeout_seconds)
    except QasmForbiddenInclude as exc:  # pragma: no cover - refused above already
        raise ForbiddenInclude(exc.name, exc.allowed, line=exc.line, column=exc.column) from None

    if parsed.num_qubits == 0:
        raise InvalidCircuit("the program uses no qubits")
    if parsed.num_qubits > limits.max_qubits:
        raise TooManyQubits(parsed.num_qubits, limits.max_qubits)
    if parsed.num_clbits > limits.max_clbits:
        raise TooManyClbits(parsed.num_clbits, limits.max_clbits)
    if parsed.gate_count > limits.max_gates:
        raise TooManyGates(parsed.gate_count, limits.max_gates)
    if parsed.depth > limits.max_depth:
        raise CircuitTooDeep(parsed.depth, limits.max_depth)
    return CircuitInfo(
        format=scan.format,
        source=source,
        sha256=hashlib.sha256(data).hexdigest(),
        num_qubits=parsed.num_qubits,
        num_clbits=parsed.num_clbits,
        gate_count=parsed.gate_count,
        depth=parsed.depth,
        clbit_registers=parsed.clbit_registers,
        operations=parsed.operations,
    )


def check_against_backend(info: CircuitInfo, backend: BackendInfo, shots: int) -> None:
    """Refuse a validated circuit a backend cannot run with ``shots`` shots.

    Raises ``invalid_shots``, ``too_many_shots`` (field ``shots``),
    ``too_many_qubits`` (the backend's limit) or ``unsupported_operation``.
    """
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise InvalidShots(shots if isinstance(shots, int) else 0)
    if shots > backend.max_shots:
        raise TooManyShots(shots, backend.max_shots, backend.name)
    if info.num_qubits > backend.max_qubits:
        raise TooManyQubits(info.num_qubits, backend.max_qubits, scope=f"backend {backend.name}")
    unsupported = _unsupported(info.operations, backend.basis_gates)
    if unsupported:
        raise UnsupportedOperation(unsupported, backend.name)


def _unsupported(operations: Iterable[str], basis: Iterable[str]) -> list[str]:
    allowed = _ALWAYS_SUPPORTED | frozenset(basis)
    return sorted(name for name in operations if name not in allowed)

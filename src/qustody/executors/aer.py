"""Qiskit Aer backends, and the OpenQASM front-end every Qiskit-based backend shares.

Two layers:

* The **front-end** (:func:`scan_qasm`, :func:`load_circuit`) turns untrusted
  OpenQASM text into a ``QuantumCircuit``. :func:`scan_qasm` is a pure,
  linear-time lexical pass (no Qiskit): version, ``include`` statements,
  declared register sizes, statement count. :func:`load_circuit` refuses any
  include but the version's standard library *before* a Qiskit loader sees
  the text (Qiskit's loaders open whatever file an include names), then parses.
  The control plane validates with exactly this function (in its parser
  processes) and the sandbox child loads with it again, so what was validated
  is what runs.
* The **backends** (:class:`AerBackend`, :func:`aer_backends`) run a circuit on
  ``AerSimulator``. ``run`` executes inside the sandbox child.

Qiskit is imported lazily, inside functions: the control plane imports this
module for :func:`scan_qasm` without paying for Qiskit; the sandbox's
forkserver preloads Qiskit, and builds one ``AerSimulator`` per method
(:func:`preload_simulators`), so children find both ready. A child passes every
per-job setting (shots, seed, memory budget, threads) as run options, which
Aer applies to that run only: nothing a job sets is stored on the simulator,
and the simulator a child inherits has never run anything.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import secrets
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from qustody.domain.models import BackendInfo, ExecutionRequest, ExecutionResult
from qustody.executors._trace import checkpoint
from qustody.executors.errors import BackendError, FailureCode, QasmError, QasmForbiddenInclude

if TYPE_CHECKING:
    from qiskit import QuantumCircuit
    from qiskit.result import Result
    from qiskit_aer import AerSimulator

QasmFormat = Literal["qasm2", "qasm3"]

#: The only file each version may include.
ALLOWED_INCLUDES: dict[QasmFormat, str] = {"qasm2": "qelib1.inc", "qasm3": "stdgates.inc"}

MAX_SHOTS = 100_000

# --------------------------------------------------------------------------------------
# Lexical scan
# --------------------------------------------------------------------------------------

# The scanner must never see *less* than a Qiskit loader does, or a declaration or
# an include could hide from it. So where loaders disagree it picks the reading
# that exposes more text:
# * a line comment ends at any line-break character (the OpenQASM 3 reference
#   loader ends it at "\r", the Rust loaders do not);
# * string literals have no escapes and cannot span lines;
# * block comments do not nest, and OpenQASM 2 has none (Qiskit's OpenQASM 2
#   loader rejects them);
# * annotations and pragmas are scanned like code;
# * a keyword counts unless a letter or "_" precedes it: "2include" is a number
#   followed by a keyword to a lexer, so it counts here too.
# Reading more than a loader can only over-count or refuse, never let through.
# The scan masks comments and strings first, then searches the masked text
# with regular expressions: a few microseconds for a small program, linear in
# its size, and no per-token Python work.
_LINE_BREAK = "\\n\\r\\v\\f\\x1c\\x1d\\x1e\\x85\\u2028\\u2029"
_COMMENTS_AND_STRINGS = rf"""
    (?P<comment>//[^{_LINE_BREAK}]*)
  | (?P<string>"[^"{_LINE_BREAK}]*"|'[^'{_LINE_BREAK}]*')
  | (?P<badstring>["'])
"""
_BLOCK_COMMENTS = r"""
  | (?P<blockcomment>/\*.*?\*/)
  | (?P<openblock>/\*)
"""
# The lookahead lets the engine skip most positions at once.
_MASK_V2 = re.compile(rf"(?=[/\"'])(?:{_COMMENTS_AND_STRINGS})", re.VERBOSE | re.DOTALL)
_MASK_V3 = re.compile(
    rf"(?=[/\"'])(?:{_COMMENTS_AND_STRINGS}{_BLOCK_COMMENTS})", re.VERBOSE | re.DOTALL
)
_PREAMBLE = re.compile(rf"(?:\s+|//[^{_LINE_BREAK}]*|/\*.*?\*/)*", re.DOTALL)
_NOT_A_LINE_BREAK = re.compile(r"[^\n]")
_HEADER = re.compile(r"\s*OPENQASM(?!\w)")
_HEADER_VERSION = re.compile(r"\s*([0-9][0-9.]*)\s*;")
_KEYWORD = re.compile(r"(include|qreg|creg|qubit|bit)(?!\w)")
#: A keyword preceded by one of these is the tail of an identifier.
_IDENTIFIER_CHAR = re.compile(r"[^\W\d]")
_FOLLOWING_STRING = re.compile(r"\s*[\"']")
_OLD_STYLE_NAME = re.compile(r"\s*(?:[^\W\d]\w*)?")
_DESIGNATOR_OPEN = re.compile(r"\s*\[")
#: Bounded, so that many unclosed "[" cannot make the scan quadratic.
_DESIGNATOR_BODY = re.compile(r"([^\]]{0,64})\]")
_HARDWARE_QUBIT = re.compile(r"\$(\d+)")
_INT_LITERAL = re.compile(r"\d[\d_]*|0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+")
#: Sizes with more digits than this are reported as this value: over any limit.
_HUGE = 10**18


@dataclass(frozen=True, slots=True)
class QasmInclude:
    name: str
    line: int
    column: int


@dataclass(frozen=True, slots=True)
class QasmScan:
    """What a lexical pass learns about an OpenQASM program without parsing it.

    Sizes are upper bounds: the scan may over-count (a ``bit[8]`` cast counts
    as a declaration), never under-count.
    """

    format: QasmFormat
    #: The header's version text (``"2.0"``, ``"3"``), None without a header.
    version: str | None
    includes: tuple[QasmInclude, ...]
    declared_qubits: int
    declared_clbits: int
    #: Semicolons outside comments and strings.
    statements: int
    #: Nothing but whitespace and comments.
    empty: bool


def _position(source: str, offset: int) -> tuple[int, int]:
    line = source.count("\n", 0, offset) + 1
    column = offset - (source.rfind("\n", 0, offset) + 1) + 1
    return line, column


def _error_at(source: str, offset: int, message: str) -> QasmError:
    line, column = _position(source, offset)
    return QasmError(message, line=line, column=column)


def _mask(source: str, pattern: re.Pattern[str]) -> tuple[str, dict[int, str]]:
    """Blank out comments (newlines kept) and string contents (quotes kept).

    Offsets are preserved. Returns the masked text and the strings by offset.
    """
    pieces: list[str] = []
    strings: dict[int, str] = {}
    last = 0
    for match in pattern.finditer(source):
        kind = match.lastgroup
        start, end = match.span()
        if kind == "openblock":
            raise _error_at(source, start, "unterminated block comment")
        if kind == "badstring":
            raise _error_at(
                source, start, "unterminated string literal (strings end on the same line)"
            )
        pieces.append(source[last:start])
        text = match.group()
        if kind == "string":
            strings[start] = text[1:-1]
            pieces.append(text[0] + " " * (len(text) - 2) + text[-1])
        else:
            pieces.append(_NOT_A_LINE_BREAK.sub(" ", text))
        last = end
    if not strings and last == 0:
        return source, strings
    pieces.append(source[last:])
    return "".join(pieces), strings


def _int_literal(text: str) -> int | None:
    if not _INT_LITERAL.fullmatch(text):
        return None
    digits = text.replace("_", "")
    if len(digits) > 18:
        return _HUGE
    if digits[:2].lower() in ("0x", "0o", "0b"):
        return int(digits, 0)
    return int(digits, 10)


def _detect_version(source: str) -> tuple[QasmFormat, str | None]:
    # The header comes first in either version; OpenQASM 3 comment rules apply to
    # whatever precedes it (the OpenQASM 2 loader rejects a leading block comment).
    preamble = _PREAMBLE.match(source)
    header = _HEADER.match(source, preamble.end() if preamble else 0)
    if header is None:
        return "qasm3", None
    version = _HEADER_VERSION.match(source, header.end())
    if version is None:
        raise _error_at(
            source, header.start(), "malformed header; write 'OPENQASM 2.0;' or 'OPENQASM 3.0;'"
        )
    text = version.group(1)
    if text in ("2", "2.0"):
        return "qasm2", text
    if text.split(".", 1)[0] == "3":
        return "qasm3", text
    raise _error_at(
        source, version.start(1), f"unsupported OpenQASM version {text[:20]!r}; use 2.0 or 3"
    )


def scan_qasm(source: str) -> QasmScan:
    """Lexical pass over an OpenQASM 2 or 3 program; linear time, no Qiskit.

    Raises :class:`QasmError` for text no loader could accept (unterminated
    comment or string, malformed header, a register size that is not an integer
    literal, an ``include`` without a file name).
    """
    fmt, version = _detect_version(source)
    masked, strings = _mask(source, _MASK_V2 if fmt == "qasm2" else _MASK_V3)
    includes: list[QasmInclude] = []
    qubits = clbits = 0
    for match in _KEYWORD.finditer(masked):
        keyword, offset = match.group(1), match.start()
        if offset and _IDENTIFIER_CHAR.match(masked, offset - 1):
            continue
        if keyword == "include":
            quote = _FOLLOWING_STRING.match(masked, match.end())
            name = strings.get(quote.end() - 1) if quote else None
            if name is None:
                raise _error_at(source, offset, "include must be followed by a quoted file name")
            line, column = _position(source, offset)
            includes.append(QasmInclude(name, line, column))
            continue
        if fmt == "qasm2" and keyword in ("qubit", "bit"):
            continue  # plain identifiers in OpenQASM 2
        after = match.end()
        if keyword in ("qreg", "creg"):
            # qreg NAME[SIZE];  (OpenQASM 3 also accepts qreg NAME; for one bit)
            name_match = _OLD_STYLE_NAME.match(masked, after)
            after = name_match.end() if name_match else after
        # qubit[SIZE] NAME;  or  qubit NAME;
        size = 1
        opening = _DESIGNATOR_OPEN.match(masked, after)
        if opening is not None:
            body = _DESIGNATOR_BODY.match(masked, opening.end())
            literal = _int_literal(body.group(1).strip()) if body else None
            if literal is None:
                raise _error_at(
                    source, opening.end(), "register sizes must be non-negative integer literals"
                )
            size = literal
        if keyword in ("qreg", "qubit"):
            qubits = min(_HUGE, qubits + size)
        else:
            clbits = min(_HUGE, clbits + size)
    hardware = [match.group(1) for match in _HARDWARE_QUBIT.finditer(masked)]
    if hardware:
        highest = max(_HUGE if len(digits) > 18 else int(digits) for digits in hardware)
        qubits = min(_HUGE, qubits + highest + 1)
    return QasmScan(
        format=fmt,
        version=version,
        includes=tuple(includes),
        declared_qubits=qubits,
        declared_clbits=clbits,
        statements=masked.count(";"),
        empty=not masked.strip(),
    )


def check_includes(scan: QasmScan) -> None:
    """Refuse any include but the version's standard gate library."""
    allowed = ALLOWED_INCLUDES[scan.format]
    for include in scan.includes:
        if include.name != allowed:
            raise QasmForbiddenInclude(
                include.name[:200], allowed, line=include.line, column=include.column
            )


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------

_QASM2_POSITION = re.compile(r"<input>:(\d+),(\d+): (.*)", re.DOTALL)
_QASM3_REF_POSITION = re.compile(r"(\d+),(\d+): (.*)", re.DOTALL)
_QASM3_ANTLR_POSITION = re.compile(r"L(\d+):C(\d+): (.*)", re.DOTALL)
# The Rust OpenQASM 3 loader prints diagnostics (ariadne reports) to stdout; the
# exception only says "see printed errors". Only reports about the program
# itself ("no file") are used: a report about another file could quote it.
_RUST_DIAGNOSTIC = re.compile(r"Error: ([^\n]*)\n[^\n]*?\[no file:(\d+):(\d+)\]")
_RUST_FAST_PATH_VERSIONS = frozenset({None, "3.0", "3.1"})
_MAX_MESSAGE = 240


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _clean(message: str) -> str:
    """One line, control characters escaped, at most _MAX_MESSAGE characters."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", " ".join(message.split()))
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def _is_interrupt(exc: BaseException) -> bool:
    return isinstance(exc, KeyboardInterrupt | SystemExit)


@contextlib.contextmanager
def _output_captured() -> Iterator[list[str]]:
    """Point fds 1 and 2 at an anonymous memory file for the block; yields a
    one-element list that holds what was written (first 64 KiB) afterwards.

    The Rust OpenQASM 3 loader prints its diagnostics to stdout. Process-wide:
    use only in a single-threaded sandbox or parser process.
    """
    captured: list[str] = [""]
    try:
        sink = os.memfd_create("qustody-qasm-diagnostics", os.MFD_CLOEXEC)
    except OSError:
        yield captured
        return
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(sink, 1)
        os.dup2(sink, 2)
        yield captured
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        os.lseek(sink, 0, os.SEEK_SET)
        captured[0] = os.read(sink, 65536).decode("utf-8", "replace")
        os.close(sink)


def _message(exc: BaseException) -> str:
    # QiskitError.__str__ is the repr of its message; use the message itself.
    message = getattr(exc, "message", None)
    return message if isinstance(message, str) else str(exc)


def _qasm2_error(exc: BaseException) -> QasmError:
    message = _message(exc)
    match = _QASM2_POSITION.match(message)
    if match:
        return QasmError(
            _clean(match.group(3)), line=int(match.group(1)), column=int(match.group(2)) + 1
        )
    if type(exc).__name__ == "QASM2ParseError" and re.match(r"[^:\s]+:\d+,\d+: ", message):
        # Reported against another file (an include): never quote it.
        return QasmError("error in an included file")
    if type(exc).__name__ == "PanicException":
        return QasmError(f"the OpenQASM 2 loader failed on this program ({_clean(message)})")
    return QasmError(f"the program could not be parsed ({type(exc).__name__}: {_clean(message)})")


def _qasm3_error(exc: BaseException, rust_diagnostics: str) -> QasmError:
    message = _message(exc)
    for pattern in (_QASM3_REF_POSITION, _QASM3_ANTLR_POSITION):
        match = pattern.match(message)
        if match:
            return QasmError(
                _clean(match.group(3)), line=int(match.group(1)), column=int(match.group(2)) + 1
            )
    for match in _RUST_DIAGNOSTIC.finditer(rust_diagnostics):
        text = match.group(1)
        if "FLOAT_NUMBER" in text:  # the Rust loader wants "OPENQASM 3.0", not "3"
            continue
        return QasmError(_clean(text), line=int(match.group(2)), column=int(match.group(3)))
    detail = _clean(message) or "syntax error"
    return QasmError(f"the program could not be parsed ({type(exc).__name__}: {detail})")


def _load_qasm2(source: str) -> QuantumCircuit:
    from qiskit import qasm2

    try:
        return qasm2.loads(
            source,
            include_path=(qasm2.LEGACY_INCLUDE_PATH[0],),
            custom_instructions=qasm2.LEGACY_CUSTOM_INSTRUCTIONS,
        )
    except BaseException as exc:
        if _is_interrupt(exc):
            raise
        raise _qasm2_error(exc) from None


def _load_qasm3(source: str, version: str | None) -> QuantumCircuit:
    from qiskit import qasm3
    from qiskit.exceptions import ExperimentalWarning

    diagnostics = ""
    if version in _RUST_FAST_PATH_VERSIONS:
        # Fast path: the native loader is ~20x faster but covers less of the
        # language (no loops, conditionals, hardware qubits...); whatever it
        # refuses, or panics on, goes to the reference loader.
        with _output_captured() as captured:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ExperimentalWarning)
                    return qasm3.loads_experimental(source)
            except BaseException as exc:
                if _is_interrupt(exc):
                    raise
        diagnostics = captured[0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return qasm3.loads(source)
    except BaseException as exc:
        if _is_interrupt(exc):
            raise
        raise _qasm3_error(exc, diagnostics) from None


def load_circuit(source: str, fmt: QasmFormat | None = None) -> QuantumCircuit:
    """Parse untrusted OpenQASM into a circuit, or raise :class:`QasmError`.

    Includes are checked before any loader runs. ``fmt``, when given, must
    match the program's header. Every loader failure, Rust panics included,
    becomes a :class:`QasmError` whose message quotes nothing but the program.
    Redirects fds 1 and 2 while the OpenQASM 3 fast path runs: call it in a sandbox
    or parser process, not in a multi-threaded server.
    """
    scan = scan_qasm(source)
    if fmt is not None and fmt != scan.format:
        raise QasmError(
            f"the program's header says {scan.format} but it was submitted as {fmt}", line=1
        )
    check_includes(scan)
    if scan.format == "qasm2":
        return _load_qasm2(source)
    return _load_qasm3(source, scan.version)


# --------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------

#: Instructions every Aer method accepts besides its gates.
_AER_DIRECTIVES = ("reset", "delay", "store", "if_else", "for_loop", "while_loop",
                   "switch_case", "break_loop", "continue_loop")  # fmt: skip
#: Standard gates (Qiskit's names) that the statevector method runs, natively or
#: through Aer's own decomposition.
_UNIVERSAL_GATES = (
    "ccx", "ccz", "ch", "cp", "crx", "cry", "crz", "cs", "csdg", "cswap", "csx", "cu", "cu1",
    "cu3", "cx", "cy", "cz", "dcx", "ecr", "h", "id", "iswap", "p", "r", "rccx", "rcccx", "rx",
    "rxx", "ry", "ryy", "rz", "rzx", "rzz", "s", "sdg", "swap", "sx", "sxdg", "t", "tdg", "u",
    "u1", "u2", "u3", "c3sx", "x", "xx_minus_yy", "xx_plus_yy", "y", "z",
)  # fmt: skip
#: Clifford gates only: what the stabilizer method can run for any parameters.
_CLIFFORD_GATES = ("cx", "cy", "cz", "ecr", "h", "id", "s", "sdg", "swap", "sx", "sxdg",
                   "x", "y", "z")  # fmt: skip

#: A statevector of n qubits takes 16 * 2**n bytes: 26 qubits are 1 GiB, which
#: fits the default sandbox budget of 2 GiB (``SandboxLimits.memory_bytes``)
#: with room for Aer's working memory; 27 would need all of it. Deployments
#: that lower the budget get a clean ``sandbox_memory_limit`` failure instead.
STATEVECTOR_MAX_QUBITS = 26
#: The stabilizer tableau is O(n^2) bits, so memory is no concern; time is
#: (about n^2 per measured qubit per shot) and the CPU limit bounds it.
STABILIZER_MAX_QUBITS = 1000


class AerBackend:
    """``AerSimulator`` with one simulation method. Picklable; no state."""

    __slots__ = ("_info",)

    def __init__(self, info: BackendInfo) -> None:
        self._info = info

    def __getstate__(self) -> BackendInfo:
        return self._info

    def __setstate__(self, state: BackendInfo) -> None:
        self._info = state

    def __repr__(self) -> str:
        return f"AerBackend({self._info.name!r}, method={self._info.method!r})"

    @property
    def info(self) -> BackendInfo:
        return self._info

    def run(self, request: ExecutionRequest) -> ExecutionResult:
        info = self._info
        if not 1 <= request.shots <= info.max_shots:
            raise BackendError(
                FailureCode.EXECUTION_ERROR,
                f"shots is {request.shots}; backend {info.name} allows 1 to {info.max_shots}",
            )
        try:
            circuit = load_circuit(request.circuit, request.circuit_format)
        except QasmError as exc:
            raise BackendError(
                FailureCode.EXECUTION_ERROR, f"the circuit could not be loaded: {exc.located()}"
            ) from None
        checkpoint("circuit_loaded")
        if circuit.num_qubits > info.max_qubits:
            raise BackendError(
                FailureCode.EXECUTION_ERROR,
                f"circuit has {circuit.num_qubits} qubits; backend {info.name} allows at most "
                f"{info.max_qubits}",
            )
        return _run_aer(info, circuit, request)

    def warm_up(self, idle: Callable[[], bool]) -> None:
        """Load and run fixed programs once, before this process receives a job.

        The sandbox calls it in a process started ahead of demand (a spare),
        after hardening and before the job arrives: the first load and the
        first simulation in a freshly forked process pay for copying the
        pages they write (reference counts, caches), several milliseconds
        that the job would otherwise wait for. The programs are constants, so
        every job still starts from the same state. Stops as soon as ``idle()``
        is false (a job is waiting): what is left, the job pays for.
        """
        simulator = _simulator(self._info.method)
        for source, fmt, simulate in _WARM_UP_PROGRAMS:
            if not idle():
                return
            circuit = load_circuit(source, fmt)
            checkpoint(f"warmed_up_{fmt}")
            if not simulate or not idle():
                continue
            result = _execute(
                simulator,
                circuit,
                {"shots": 2, "memory": True, "seed_simulator": 0,
                 "max_parallel_threads": _threads()},
            )  # fmt: skip
            result.get_counts(0)
            result.get_memory(0)
            checkpoint("warmed_up_simulator")


#: What :meth:`AerBackend.warm_up` does: load one program per OpenQASM version
#: (each a Clifford circuit that every method accepts) and simulate the first.
#: Simulating the second too would cost about a millisecond of CPU per process
#: and save its job almost nothing: the simulation path is the same.
_WARM_UP_PROGRAMS: tuple[tuple[str, QasmFormat, bool], ...] = (
    ('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\nh q[0];\ncx q[0],q[1];\n'
     "measure q -> c;\n", "qasm2", True),
    ('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\nh q[0];\ncx q[0], q[1];\n'
     "c = measure q;\n", "qasm3", False),
)  # fmt: skip

#: The methods of :func:`aer_backends`.
AER_METHODS = ("statevector", "stabilizer", "automatic")

#: Simulators built once by the sandbox forkserver, by method (see
#: :func:`preload_simulators`); empty in every other process.
_PRELOADED: dict[str, AerSimulator] = {}


def preload_simulators(methods: tuple[str, ...] = AER_METHODS) -> None:
    """Build one ``AerSimulator`` per method, for processes forked from this one.

    For the sandbox forkserver only, before it forks: a child then uses the
    simulator it inherited instead of building one per job (about a
    millisecond in a fresh child). Building runs no simulation and starts no
    thread; a child passes every per-job setting as a run option, so the
    inherited object is never changed by a job.
    """
    from qiskit_aer import AerSimulator

    for method in methods:
        if method not in _PRELOADED:
            _PRELOADED[method] = AerSimulator(method=method)


def _simulator(method: str) -> AerSimulator:
    simulator = _PRELOADED.get(method)
    if simulator is not None:
        return simulator
    from qiskit_aer import AerSimulator

    return AerSimulator(method=method)


def _execute(simulator: AerSimulator, circuit: QuantumCircuit, options: dict[str, Any]) -> Result:
    """Run one circuit with per-run options, in this thread.

    ``AerSimulator.run`` hands the work to a thread pool and returns a job to
    wait on; in a sandbox child that means starting a thread per job. Aer's
    job runs ``_execute_circuits_job(circuits, parameter_binds, run_options,
    job_id)`` in that thread; calling it here does the same work without the
    thread. Should a future Aer drop that method, ``run`` is used.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        execute = getattr(simulator, "_execute_circuits_job", None)
        if execute is None:
            return simulator.run(circuit, **options).result()
        result: Result = execute([circuit], None, dict(options), "qustody")
        return result


def _threads() -> int:
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
    except ValueError:
        return 1


def _memory_budget_mb() -> int | None:
    """Address space left under ``RLIMIT_AS``, in MiB, with 20% headroom."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        # Unbuffered: a text-mode open costs a freshly forked child ~1 ms.
        fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        try:
            used = int(os.read(fd, 256).split()[0]) * resource.getpagesize()
        finally:
            os.close(fd)
    except (OSError, ValueError, IndexError):
        return None
    return max(1, int((soft - used) * 0.8) // (1024 * 1024))


def _run_aer(
    info: BackendInfo, circuit: QuantumCircuit, request: ExecutionRequest
) -> ExecutionResult:
    import qiskit_aer
    from qiskit.exceptions import QiskitError

    seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
    options: dict[str, Any] = {
        "shots": request.shots,
        "memory": request.memory,
        "seed_simulator": seed,
        "max_parallel_threads": _threads(),
    }
    budget = _memory_budget_mb()
    if budget is not None:
        options["max_memory_mb"] = budget
    simulator = _simulator(info.method)
    started = time.perf_counter()
    result = _execute(simulator, circuit, options)
    elapsed = time.perf_counter() - started
    checkpoint("simulated")
    if not result.success:
        statuses = [str(result.status)] + [str(r.status) for r in result.results]
        message = " ".join(statuses)
        if "Insufficient memory" in message:
            raise BackendError(
                FailureCode.MEMORY_LIMIT,
                f"the {info.method} simulation of {circuit.num_qubits} qubits needs more memory "
                f"than the sandbox allows ({budget} MiB); use fewer qubits or the "
                "aer-stabilizer backend for Clifford circuits",
            )
        raise BackendError(FailureCode.EXECUTION_ERROR, f"the simulator failed: {_clean(message)}")
    try:
        counts = {str(key): int(value) for key, value in result.get_counts(0).items()}
    except QiskitError:
        counts = {}
    memory: list[str] | None = None
    if request.memory:
        try:
            memory = [str(shot) for shot in result.get_memory(0)]
        except QiskitError:
            memory = []
    raw = result.results[0].metadata if result.results else {}
    metadata: dict[str, str | int | float | bool] = {"configured_method": info.method}
    for key in ("time_taken", "required_memory_mb", "measure_sampling", "parallel_shots",
                "num_qubits"):  # fmt: skip
        value = raw.get(key)
        if isinstance(value, str | int | float | bool):
            metadata[key] = value
    method = raw.get("method")
    return ExecutionResult(
        counts=counts,
        memory=memory,
        clbit_registers=tuple((register.name, register.size) for register in circuit.cregs),
        backend=info.name,
        shots=request.shots,
        seed=seed,
        method=method if isinstance(method, str) else info.method,
        simulator_version=f"qiskit-aer {qiskit_aer.__version__}",
        execution_seconds=elapsed,
        metadata=metadata,
    )


def aer_backends() -> tuple[AerBackend, AerBackend, AerBackend]:
    """``aer-statevector``, ``aer-stabilizer`` and ``aer-automatic``."""
    universal = tuple(sorted(_UNIVERSAL_GATES)) + _AER_DIRECTIVES
    return (
        AerBackend(
            BackendInfo(
                name="aer-statevector",
                description="Qiskit Aer, exact statevector simulation (any gate, up to "
                f"{STATEVECTOR_MAX_QUBITS} qubits)",
                provider="qiskit-aer",
                simulator=True,
                max_qubits=STATEVECTOR_MAX_QUBITS,
                max_shots=MAX_SHOTS,
                basis_gates=universal,
                method="statevector",
            )
        ),
        AerBackend(
            BackendInfo(
                name="aer-stabilizer",
                description="Qiskit Aer, Clifford (stabilizer) simulation: Clifford gates only, "
                f"up to {STABILIZER_MAX_QUBITS} qubits",
                provider="qiskit-aer",
                simulator=True,
                max_qubits=STABILIZER_MAX_QUBITS,
                max_shots=MAX_SHOTS,
                basis_gates=tuple(sorted(_CLIFFORD_GATES)) + _AER_DIRECTIVES,
                method="stabilizer",
            )
        ),
        AerBackend(
            BackendInfo(
                name="aer-automatic",
                description="Qiskit Aer, method chosen per circuit (stabilizer for Clifford "
                f"circuits, statevector otherwise), up to {STATEVECTOR_MAX_QUBITS} qubits",
                provider="qiskit-aer",
                simulator=True,
                # A non-Clifford circuit falls back to a statevector: same bound.
                max_qubits=STATEVECTOR_MAX_QUBITS,
                max_shots=MAX_SHOTS,
                basis_gates=universal,
                method="automatic",
            )
        ),
    )

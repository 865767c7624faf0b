"""Child side of the sandbox: process hardening, the job entry point, the wire format.

Everything here runs in processes forked from Qustody's forkserver, except the
codecs, which the parent uses too. This module is also the first module the
forkserver preloads: when it is imported *by the forkserver* (and only then) it
scrubs the forkserver's own environment before Qiskit is imported, so that no
secret from the parent's environment is copied into any child (see
:func:`_bootstrap_forkserver`).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import json
import math
import os
import resource
import select
import signal
import sys
from collections.abc import Collection, Mapping
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any, NamedTuple

from qustody.domain.ids import JobId
from qustody.domain.models import ExecutionFailure, ExecutionRequest, ExecutionResult
from qustody.executors import _trace
from qustody.executors._trace import checkpoint
from qustody.executors.errors import BackendError, FailureCode
from qustody.executors.interfaces import Backend

#: Exit status of a child that could not harden itself; it never ran the job.
EXIT_SETUP_FAILED = 70

#: Variables copied into a child's environment when the parent has them.
#: Locale and time zone only: nothing that could carry a credential.
ENV_PASSTHROUGH = ("LANG", "LC_ALL", "LC_CTYPE", "TZ")

#: What the forkserver imports once, after scrubbing its environment, so that a
#: child starts with Qiskit and Aer loaded.
PRELOAD_MODULES = (
    "qiskit",
    "qiskit.qasm2",
    "qiskit.qasm3",
    "qiskit_qasm3_import",
    "openqasm3.parser",
    "qiskit_aer",
    "qustody.executors.aer",
    # The parent pickles the process object by reference to its class.
    "qustody.executors.sandbox",
)

_MIB = 1024 * 1024
_M_ARENA_MAX = -8  # glibc mallopt parameter


class ChildConfig(NamedTuple):
    """What a sandbox child needs besides the job; picklable, no secrets."""

    cpu_seconds: int
    memory_bytes: int
    threads: int
    max_request_bytes: int
    max_output_bytes: int
    #: Warm the backend up (``backend.warm_up()``) before reading the request:
    #: set for processes started ahead of demand, whose warm-up nobody waits for.
    warm_up: bool = False
    #: Record checkpoints (:mod:`qustody.executors._trace`) and send them back.
    trace: bool = False


#: Set in the forkserver once it has scrubbed its environment and wiped the
#: original strings; its children inherit the flag with the wiped memory.
_environment_block_wiped = False


# --------------------------------------------------------------------------------------
# Hardening
# --------------------------------------------------------------------------------------


def minimal_environment(threads: int) -> dict[str, str]:
    """The whole environment a sandboxed process gets."""
    env = {key: os.environ[key] for key in ENV_PASSTHROUGH if key in os.environ}
    env.update(
        {
            "PATH": "/usr/bin:/bin",
            # Thread pools sized once, before anything starts them.
            "OMP_NUM_THREADS": str(threads),
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "RAYON_NUM_THREADS": str(threads),
            # Qiskit must not start process pools of its own in here.
            "QISKIT_PARALLEL": "FALSE",
            "QISKIT_SETTINGS": "/nonexistent",
            "RUST_BACKTRACE": "0",
            # Qiskit's Rust code allocates through mimalloc, which by default
            # reserves 1 GiB of address space up front and then grows inside it
            # unseen by RLIMIT_AS. Small reservations make RLIMIT_AS bind
            # (to within 32 MiB). Read when Qiskit is first imported, which is
            # why the forkserver sets this environment before importing it.
            "MIMALLOC_ARENA_RESERVE": "32MiB",
        }
    )
    return env


def _wipe_initial_environment_block() -> bool:
    """Zero the environment strings the kernel placed on the initial stack.

    ``os.environ.clear()`` unsets the variables, but the original strings stay
    in memory and ``/proc/<pid>/environ`` keeps showing them, in this process
    and in every process forked from it. Nothing points into that block once
    the variables are unset (they are copied by Python at start-up and by the
    C library when set again), so it is overwritten with zeros.
    """
    try:
        with open("/proc/self/stat", "rb") as stat:
            raw = stat.read()
        fields = raw[raw.rindex(b")") + 2 :].split()
        # Fields 50 and 51 of proc(5) (env_start, env_end); fields[0] is field 3.
        start, end = int(fields[47]), int(fields[48])
    except (OSError, ValueError, IndexError):
        return False
    if 0 < start < end and end - start < 16 * _MIB:
        ctypes.memset(start, 0, end - start)
        return True
    return False


def reset_environment(threads: int) -> None:
    """Replace the environment with :func:`minimal_environment`."""
    env = minimal_environment(threads)
    if _environment_block_wiped and dict(os.environ) == env:
        return  # forked from the scrubbed forkserver, with the same thread count
    os.environ.clear()
    os.environ.update(env)
    if not _environment_block_wiped:
        # A process forked from Qustody's forkserver shares its wiped block.
        _wipe_initial_environment_block()


def _redirect_stdio() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def _close_fds(keep: Collection[int]) -> None:
    low = 3
    for fd in sorted({fd for fd in keep if fd >= 3}):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, max(low, resource.getrlimit(resource.RLIMIT_NOFILE)[1], 1 << 16))


_libc: ctypes.CDLL | None = None


def _limit_malloc_arenas() -> None:
    # glibc reserves a 64 MiB arena of address space per thread that allocates;
    # under RLIMIT_AS that is budget spent on nothing.
    global _libc
    with contextlib.suppress(OSError, AttributeError):
        if _libc is None:
            _libc = ctypes.CDLL(None)  # once, in the forkserver; children inherit it
        _libc.mallopt(_M_ARENA_MAX, 1)


def address_space_bytes() -> int:
    """Current virtual size of this process (``VmSize``)."""
    # Unbuffered: a text-mode open costs a freshly forked child ~1 ms.
    fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return int(os.read(fd, 256).split()[0]) * resource.getpagesize()
    finally:
        os.close(fd)


def harden_process(
    keep_fds: Collection[int],
    *,
    threads: int,
    memory_bytes: int | None,
    cpu_seconds: int | None,
    max_open_files: int = 64,
) -> int | None:
    """Turn a freshly forked process into a sandbox; returns the RLIMIT_AS set.

    Ignores SIGINT (the parent decides when the process ends), leaves the
    parent's session, points stdio at /dev/null, closes every other inherited
    descriptor but ``keep_fds``, replaces the environment, moves to ``/``,
    forbids core dumps, and sets the limits: ``RLIMIT_CPU`` (SIGXCPU at
    ``cpu_seconds``, SIGKILL one second later) and ``RLIMIT_AS`` at the
    address space in use now, after the preloaded imports, plus
    ``memory_bytes``.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.setsid()
    _redirect_stdio()
    _close_fds(keep_fds)
    reset_environment(threads)
    os.chdir("/")
    os.umask(0o077)
    sys.dont_write_bytecode = True
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    files = max(max_open_files, *(fd + 1 for fd in keep_fds)) if keep_fds else max_open_files
    resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))
    _limit_malloc_arenas()
    if cpu_seconds is not None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    if memory_bytes is None:
        return None
    ceiling = address_space_bytes() + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))
    return ceiling


# --------------------------------------------------------------------------------------
# Wire format (JSON; never pickle what a client sent)
# --------------------------------------------------------------------------------------


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode(
        "utf-8"
    )


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise ValueError(what)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def encode_request(request: ExecutionRequest) -> bytes:
    return _dumps(
        {
            "job_id": request.job_id,
            "backend": request.backend,
            "circuit": request.circuit,
            "circuit_format": request.circuit_format,
            "shots": request.shots,
            "seed": request.seed,
            "memory": request.memory,
        }
    )


def decode_request(data: bytes) -> ExecutionRequest:
    obj = json.loads(data)
    _require(isinstance(obj, dict), "request is not an object")
    _require(isinstance(obj.get("job_id"), str), "job_id")
    _require(isinstance(obj.get("backend"), str), "backend")
    _require(isinstance(obj.get("circuit"), str), "circuit")
    fmt = obj.get("circuit_format")
    _require(fmt in ("qasm2", "qasm3"), "circuit_format")
    _require(_is_int(obj.get("shots")), "shots")
    seed = obj.get("seed")
    _require(seed is None or _is_int(seed), "seed")
    _require(isinstance(obj.get("memory"), bool), "memory")
    return ExecutionRequest(
        job_id=JobId(obj["job_id"]),
        backend=obj["backend"],
        circuit=obj["circuit"],
        circuit_format="qasm2" if fmt == "qasm2" else "qasm3",
        shots=obj["shots"],
        seed=seed,
        memory=obj["memory"],
    )


def encode_failure(code: FailureCode, detail: str) -> bytes:
    return _dumps({"ok": False, "code": str(code), "detail": detail[:4000]})


def _with_trace(reply: bytes) -> bytes:
    """Append this process's checkpoints to an encoded answer when tracing."""
    checkpoint("answer_encoded")
    recorded = _trace.recorded()
    if recorded is None:
        return reply
    # Every answer is a JSON object: insert one more member before its "}".
    return reply[:-1] + b',"trace":' + _dumps(recorded) + b"}"


def encode_result(result: ExecutionResult) -> bytes:
    return _dumps(
        {
            "ok": True,
            "counts": result.counts,
            "memory": result.memory,
            "clbit_registers": [list(register) for register in result.clbit_registers],
            "backend": result.backend,
            "shots": result.shots,
            "seed": result.seed,
            "method": result.method,
            "simulator_version": result.simulator_version,
            "execution_seconds": result.execution_seconds,
            "metadata": result.metadata,
        }
    )


def _decode_metadata(value: object) -> dict[str, str | int | float | bool]:
    _require(isinstance(value, dict), "metadata")
    assert isinstance(value, dict)  # for the type checker: _require raised otherwise
    out: dict[str, str | int | float | bool] = {}
    for key, item in value.items():
        _require(isinstance(key, str) and isinstance(item, str | int | float | bool), "metadata")
        out[key] = item
    return out


Checkpoints = tuple[tuple[str, int], ...]


def _decode_trace(value: object) -> Checkpoints | None:
    """A child's checkpoints, or None when absent or malformed (never fatal)."""
    if not isinstance(value, list) or len(value) > _trace.MAX_CHECKPOINTS:
        return None
    out: list[tuple[str, int]] = []
    for item in value:
        if not (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and len(item[0]) <= 64
            and _is_int(item[1])
        ):
            return None
        out.append((item[0], item[1]))
    return tuple(out)


def decode_outcome(data: bytes) -> ExecutionResult | ExecutionFailure:
    """Parse a child's answer; :class:`ValueError` for anything malformed.

    The parent trusts the child no more than the job it ran: every field is
    type-checked, failure codes must be known ones.
    """
    return decode_reply(data)[0]


def decode_reply(data: bytes) -> tuple[ExecutionResult | ExecutionFailure, Checkpoints | None]:
    """:func:`decode_outcome`, and the child's checkpoints when it sent any."""
    obj = json.loads(data)
    _require(isinstance(obj, dict) and isinstance(obj.get("ok"), bool), "not an outcome")
    trace = _decode_trace(obj.pop("trace", None))
    return _decode_outcome(obj), trace


def _decode_outcome(obj: Any) -> ExecutionResult | ExecutionFailure:
    if not obj["ok"]:
        code, detail = obj.get("code"), obj.get("detail")
        _require(code in {str(c) for c in FailureCode}, "unknown failure code")
        _require(isinstance(detail, str), "detail")
        return ExecutionFailure(code=str(code), detail=str(detail)[:4000])
    counts = obj.get("counts")
    _require(isinstance(counts, dict), "counts")
    assert isinstance(counts, dict)
    for key, value in counts.items():
        _require(isinstance(key, str) and _is_int(value) and value >= 0, "counts")
    memory = obj.get("memory")
    _require(
        memory is None
        or (isinstance(memory, list) and all(isinstance(shot, str) for shot in memory)),
        "memory",
    )
    registers = obj.get("clbit_registers")
    _require(isinstance(registers, list), "clbit_registers")
    assert isinstance(registers, list)
    for register in registers:
        _require(
            isinstance(register, list)
            and len(register) == 2
            and isinstance(register[0], str)
            and _is_int(register[1]),
            "clbit_registers",
        )
    for key in ("backend", "method", "simulator_version"):
        _require(isinstance(obj.get(key), str), key)
    _require(_is_int(obj.get("shots")) and _is_int(obj.get("seed")), "shots/seed")
    seconds = obj.get("execution_seconds")
    _require(
        isinstance(seconds, int | float)
        and not isinstance(seconds, bool)
        and math.isfinite(seconds),
        "execution_seconds",
    )
    return ExecutionResult(
        counts=dict(counts),
        memory=None if memory is None else list(memory),
        clbit_registers=tuple((str(name), int(size)) for name, size in registers),
        backend=obj["backend"],
        shots=obj["shots"],
        seed=obj["seed"],
        method=obj["method"],
        simulator_version=obj["simulator_version"],
        execution_seconds=float(seconds),
        metadata=_decode_metadata(obj.get("metadata", {})),
    )


# --------------------------------------------------------------------------------------
# The job entry point
# --------------------------------------------------------------------------------------


def _run_job(conn: Connection, backend: Backend, config: ChildConfig) -> bytes:
    try:
        data = conn.recv_bytes(config.max_request_bytes)
        checkpoint("request_read")
        request = decode_request(data)
    except (OSError, EOFError, ValueError) as exc:
        return encode_failure(FailureCode.PROTOCOL_ERROR, f"bad request ({type(exc).__name__})")
    checkpoint("request_decoded")
    budget_mib = config.memory_bytes // _MIB
    try:
        result: object = backend.run(request)
        checkpoint("executed")
        if not isinstance(result, ExecutionResult):
            return encode_failure(FailureCode.PROTOCOL_ERROR, "the backend returned no result")
        reply = encode_result(result)
    except BackendError as exc:
        return encode_failure(exc.code, exc.detail)
    except MemoryError:
        return encode_failure(
            FailureCode.MEMORY_LIMIT,
            f"the job needed more memory than the sandbox allows ({budget_mib} MiB); "
            "use fewer qubits or shots",
        )
    except BaseException as exc:  # noqa: BLE001 - report every failure, Rust panics included
        return encode_failure(
            FailureCode.EXECUTION_ERROR,
            f"the backend failed: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}",
        )
    if len(reply) > config.max_output_bytes:
        return encode_failure(
            FailureCode.OUTPUT_TOO_LARGE,
            f"the result is {len(reply)} bytes; the sandbox returns at most "
            f"{config.max_output_bytes}; use fewer shots or memory=false",
        )
    return reply


def sandbox_main(
    conn: Connection, diagnostics: Connection, backend: Backend, config: ChildConfig
) -> None:
    """Entry point of a sandbox child: harden, (warm up,) read one request, answer, exit.

    ``diagnostics`` becomes the child's stderr: the parent keeps its last few
    KiB only to tell an allocation failure (Rust and C++ abort on one) from
    other crashes, and never shows it to anyone.

    With ``config.warm_up`` (a process started before its job was known) the
    backend runs its fixed warm-up programs after hardening and before the
    request is read: no job data is in the process yet, and every job finds
    the same state.
    """
    if config.trace:
        _trace.enable()
    checkpoint("child_started")
    try:
        harden_process(
            [conn.fileno(), diagnostics.fileno()],
            threads=config.threads,
            memory_bytes=config.memory_bytes,
            cpu_seconds=config.cpu_seconds,
        )
        os.dup2(diagnostics.fileno(), 2)
        diagnostics.close()
    except BaseException:  # noqa: BLE001 - never run a job in a half-hardened process
        os._exit(EXIT_SETUP_FAILED)
    checkpoint("hardened")
    if config.warm_up:
        _warm_up(backend, conn.fileno())
        checkpoint("warmed_up")
    try:
        reply = _with_trace(_run_job(conn, backend, config))
    except MemoryError:
        reply = encode_failure(FailureCode.MEMORY_LIMIT, "out of memory while reporting")
    with contextlib.suppress(OSError):
        conn.send_bytes(reply)
    # Skip interpreter and multiprocessing clean-up: nothing to flush, and no
    # handler inherited from the forkserver should run in here.
    os._exit(0)


_WARM_UP_REQUEST = encode_request(
    ExecutionRequest(
        job_id=JobId("warm-up"),
        backend="warm-up",
        circuit="OPENQASM 2.0;",
        circuit_format="qasm2",
        shots=1,
    )
)
_WARM_UP_RESULT = ExecutionResult(
    counts={"0": 1},
    memory=["0"],
    clbit_registers=(("c", 1),),
    backend="warm-up",
    shots=1,
    seed=0,
    method="warm-up",
    simulator_version="warm-up",
    execution_seconds=0.0,
    metadata={"warm-up": True},
)


def _warm_up(backend: Backend, request_fd: int) -> None:
    """Run the codecs and the backend's ``warm_up(idle)`` once, while no request
    is waiting on ``request_fd``; a failure is ignored (the job then pays for
    what was not warmed)."""

    poller = select.poll()
    poller.register(request_fd, select.POLLIN)

    def idle() -> bool:
        return not poller.poll(0)

    warm_up = getattr(backend, "warm_up", None)
    try:
        decode_request(_WARM_UP_REQUEST)
        decode_outcome(encode_result(_WARM_UP_RESULT))
        if callable(warm_up):
            warm_up(idle)
    except BaseException:  # noqa: BLE001, S110 - Rust panics too; the job reports its own
        pass


# --------------------------------------------------------------------------------------
# Forkserver bootstrap
# --------------------------------------------------------------------------------------


def _imported_by_forkserver() -> bool:
    """True only while ``multiprocessing.forkserver.main`` preloads this module."""
    forkserver = sys.modules.get("multiprocessing.forkserver")
    main = getattr(forkserver, "main", None)
    code = getattr(main, "__code__", None)
    if code is None:
        return False
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


def _bootstrap_forkserver(env: Mapping[str, str] | None = None) -> None:
    """Scrub the forkserver, then load Qiskit into it.

    The forkserver is started by the parent with the parent's environment
    (``multiprocessing`` gives no way to pass another), so it may hold the
    database URL, key passphrases or tokens. Replace the environment with the
    minimal one (also sizing thread pools before numpy and Aer read it) and
    wipe the original strings from memory, so no child can read them back.

    Then import :data:`PRELOAD_MODULES`, build what every child would build
    again (one simulator per Aer method, the C library handle, the loaders'
    lazy state), and move every object into the garbage collector's permanent
    generation (``gc.freeze``): otherwise the first full collection in each
    child walks the ~100 MB of Qiskit objects, taking ~35 ms and un-sharing
    their copy-on-write pages.
    """
    global _environment_block_wiped, _libc
    os.environ.clear()
    os.environ.update(env if env is not None else minimal_environment(1))
    _environment_block_wiped = _wipe_initial_environment_block()
    for name in PRELOAD_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    _warm_up_loaders()
    _preload_simulators()
    with contextlib.suppress(OSError):
        _libc = ctypes.CDLL(None)
    gc.collect()
    gc.freeze()


def _preload_simulators() -> None:
    try:
        from qustody.executors.aer import preload_simulators
    except ImportError:
        return
    with contextlib.suppress(Exception):
        preload_simulators()


_WARM_UP_PROGRAMS = (
    ('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\nh q[0];\ncx q[0],q[1];\n'
     "measure q -> c;\n", "qasm2"),
    ('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\nh q[0];\ncx q[0], q[1];\n'
     "c = measure q;\n", "qasm3"),
    # "3" rather than "3.0" takes the reference (ANTLR) loader: warms its caches too.
    ('OPENQASM 3;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\nh q[0];\ncx q[0], q[1];\n'
     "c = measure q;\n", "qasm3"),
)  # fmt: skip


def _warm_up_loaders() -> None:
    """Parse a few tiny programs so lazy loader state exists before the fork.

    Parsing only: no simulator runs here (OpenMP's thread pool must not exist
    in a process that forks).
    """
    try:
        from qustody.executors.aer import load_circuit
    except ImportError:
        return
    for source, fmt in _WARM_UP_PROGRAMS:
        with contextlib.suppress(Exception):
            load_circuit(source, "qasm2" if fmt == "qasm2" else "qasm3")


if _imported_by_forkserver():
    _bootstrap_forkserver()

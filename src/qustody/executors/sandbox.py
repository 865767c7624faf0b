"""Run each job in a fresh, limited process forked from a pre-warmed forkserver.

How a job runs
--------------
1. The job gets a new process from Qustody's forkserver. The forkserver
   imported Qiskit and Aer once, when it started, and built one simulator per
   Aer method, so the fork costs milliseconds and no state survives from one
   job (or tenant) to the next: every job gets a copy of the same clean
   memory image, which has never run a job. Every process runs one job, then
   exits.
2. The child hardens itself before it reads anything (:func:`harden_process`):
   stdio to /dev/null, every inherited descriptor but its own socket closed,
   the environment replaced by a minimal whitelist, no core dumps, new session,
   and the limits: ``RLIMIT_CPU``, and ``RLIMIT_AS`` at the address space the
   preloaded imports use plus the memory budget (the baseline is measured in
   the child, so the budget is what the job itself may allocate).
3. The parent sends the job's :class:`ExecutionRequest` as JSON over a socket
   pair (framed like ``Connection.send_bytes``); the child answers with JSON.
   Client data is never pickled: only the backend object (server code and its
   catalogue entry) and the limits are pickled, by ``multiprocessing``, to start
   the child.
4. The parent enforces the wall-clock limit and cancellation by killing the
   child, and reads the child's answer without ever blocking past the
   deadline. A child that dies without answering is classified from its exit
   status.

Spares: the work that no job needs to wait for
----------------------------------------------
Starting a process (the forkserver round trip, the fork, multiprocessing's
bootstrap, hardening) and its first steps in Qiskit (a freshly forked process
copies every page it writes, several milliseconds for the first circuit load
and simulation) do not depend on the job. So once a backend has run a job, the
sandbox keeps ``spares`` processes for it (two by default) already started,
hardened and warmed up: the backend's ``warm_up()`` loads and runs fixed
programs, constants of the server, before the process has read any request,
and stops as soon as a request is waiting. A job takes the oldest spare (or starts a process when
there is none); once it has its answer, a replacement starts in the
background, so that it never competes with the job for the CPU. A spare is a
fresh process that has seen no job: each job still runs alone in a process of
its own, which exits after answering. The job returns as soon as its answer is
read; the process's exit status is collected in the background too
(:class:`_Housekeeper`).

The environment, and when the forkserver starts
-----------------------------------------------
``multiprocessing`` starts the forkserver with the environment of the parent
*at that moment*, and every child is a copy of the forkserver. Two defences:
the forkserver's first preloaded module (``qustody.executors._child``) replaces
the forkserver's environment with the minimal one and zeroes the original
strings in memory before Qiskit is imported, and every child resets its
environment again (wiping the strings too, unless it was forked from a
forkserver that did). Create the :class:`Sandbox` (or call :func:`acquire_forkserver`) early,
at process start, so the forkserver also never sees state the parent builds
later (opened key files, decrypted secrets: a fork copies memory, and the
forkserver is forked from nothing but the interpreter, which is the point).

The forkserver is process-wide (``multiprocessing`` keeps one); Qustody's users
of it (sandboxes, the circuit parser pool) hold a reference through
:func:`acquire_forkserver` and the last :func:`release_forkserver` stops it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import multiprocessing
import os
import select
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import forkserver, popen_forkserver, reduction, util
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext, ForkServerProcess
from multiprocessing.context import set_spawning_popen as _set_spawning_popen
from multiprocessing.process import BaseProcess
from typing import Any, cast

from qustody.domain.errors import ConfigurationError
from qustody.domain.models import ExecutionFailure, ExecutionRequest, ExecutionResult
from qustody.executors import _child
from qustody.executors._child import (
    EXIT_SETUP_FAILED,
    Checkpoints,
    ChildConfig,
    decode_reply,
    encode_request,
    harden_process,
)
from qustody.executors.errors import FailureCode, SandboxUnavailable, UnknownBackend
from qustody.executors.interfaces import Backend
from qustody.executors.registry import BackendRegistry, default_registry

__all__ = [
    "FORKSERVER_PRELOAD",
    "Sandbox",
    "SandboxLimits",
    "SandboxTrace",
    "acquire_forkserver",
    "harden_process",
    "process_exitcode",
    "release_forkserver",
    "start_isolated_process",
    "terminate_isolated_process",
]

log = logging.getLogger(__name__)

_MIB = 1024 * 1024
_GIB = 1024 * _MIB

#: Imported once by the forkserver. ``_child`` first: it scrubs the forkserver's
#: environment before anything else (numpy, Aer) reads it, then imports the rest
#: itself and freezes the garbage collector (see ``_child._bootstrap_forkserver``).
FORKSERVER_PRELOAD: tuple[str, ...] = ("qustody.executors._child", *_child.PRELOAD_MODULES)

#: How often a waiting parent looks at the cancel event (a ``threading.Event``
#: has no descriptor to poll); the answer, the child's exit and shutdown wake
#: it at once.
_POLL_SECONDS = 0.02
#: How long a process that answered (or was killed) may take to report its
#: exit before it is killed (again).
_EXIT_GRACE_SECONDS = 2.0
#: How long ``Sandbox.close`` waits for retired processes to be collected.
_CLOSE_TIMEOUT_SECONDS = 10.0
#: How long a job waits for a spare that is being started before starting a
#: process of its own (starting one takes a few milliseconds either way; a
#: second process would only compete with the first for the CPU).
_SPARE_WAIT_SECONDS = 0.25
#: While processes are exiting, how often the housekeeper looks for new work.
_HOUSEKEEPER_TICK_SECONDS = 0.01


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """Per-job limits. Each job gets all of them; N concurrent jobs use N times."""

    #: CPU seconds (RLIMIT_CPU): SIGXCPU at this, SIGKILL one second later.
    cpu_seconds: int = 120
    #: Memory the job may allocate above the preloaded interpreter (RLIMIT_AS).
    memory_bytes: int = 2 * _GIB
    #: Wall-clock seconds from start to answer; the parent kills the child after.
    wall_seconds: float = 300.0
    #: Simulator threads per job (Aer's ``max_parallel_threads``, OMP_NUM_THREADS).
    threads: int = 1
    #: Largest answer (JSON) a child may send back.
    max_output_bytes: int = 64 * _MIB
    #: Largest request (JSON) a child accepts.
    max_request_bytes: int = 16 * _MIB

    def __post_init__(self) -> None:
        for name in ("cpu_seconds", "memory_bytes", "threads", "max_output_bytes",
                     "max_request_bytes"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"sandbox limit {name} must be a positive integer")
        if not self.wall_seconds > 0:
            raise ConfigurationError("sandbox limit wall_seconds must be positive")
        if self.max_request_bytes > 0x7FFFFFFF:
            raise ConfigurationError("sandbox limit max_request_bytes must be below 2 GiB")

    def child_config(self) -> ChildConfig:
        return ChildConfig(
            cpu_seconds=self.cpu_seconds,
            memory_bytes=self.memory_bytes,
            threads=self.threads,
            max_request_bytes=self.max_request_bytes,
            max_output_bytes=self.max_output_bytes,
        )


# --------------------------------------------------------------------------------------
# The forkserver and its processes
# --------------------------------------------------------------------------------------

_forkserver_lock = threading.Lock()
_forkserver_users = 0
#: Serialises Process.start() and exit-status reads: multiprocessing polls
#: other children while starting one, and two threads reading one status pipe
#: would lose the status.
_process_lock = threading.Lock()


def acquire_forkserver() -> ForkServerContext:
    """Start (or share) the forkserver with Qustody's preload; pair with release."""
    global _forkserver_users
    with _forkserver_lock:
        context = multiprocessing.get_context("forkserver")
        server = forkserver._forkserver
        if _forkserver_users == 0:
            if getattr(server, "_forkserver_pid", None) is not None:
                log.warning(
                    "the multiprocessing forkserver was started before Qustody's sandbox; "
                    "its children import Qiskit per job and keep its environment"
                )
            context.set_forkserver_preload(list(FORKSERVER_PRELOAD))
        _forkserver_users += 1
        try:
            forkserver.ensure_running()
        except OSError as exc:
            _forkserver_users -= 1
            raise SandboxUnavailable(f"the sandbox forkserver could not start: {exc}") from None
        return context


def release_forkserver() -> None:
    """Drop one reference; the last one stops the forkserver."""
    global _forkserver_users
    with _forkserver_lock:
        if _forkserver_users == 0:
            return
        _forkserver_users -= 1
        if _forkserver_users == 0:
            # ForkServer._stop is what CPython's own tests use; there is no public API.
            stop: Callable[[], None] | None = getattr(forkserver._forkserver, "_stop", None)
            if stop is not None:
                stop()


class _IsolatedPopen(popen_forkserver.Popen):
    """Start a forkserver child with minimal preparation data.

    The stock launcher sends the child the parent's ``sys.argv``, working
    directory and ``multiprocessing`` authkey, and has it re-run the parent's
    ``__main__`` script (on Python 3.11 the forkserver never preloads it), which
    would import the whole server into every job. This launcher sends only the
    process name, ``sys.path`` and a fresh random authkey (the process object
    carries the same fresh key, see :func:`start_isolated_process`).
    """

    def _launch(self, process_obj: Any) -> None:
        preparation = {
            "name": process_obj.name,
            "authkey": bytes(process_obj.authkey),
            # Absolute entries only: the child moves to "/" before it imports more.
            "sys_path": [os.path.abspath(entry) for entry in sys.path if entry],
        }
        buffer = io.BytesIO()
        _set_spawning_popen(self)
        try:
            reduction.dump(preparation, buffer)
            reduction.dump(process_obj, buffer)
        finally:
            _set_spawning_popen(None)
        fds: list[int] = self._fds  # type: ignore[attr-defined]
        self.sentinel, data_w = forkserver.connect_to_new_process(fds)
        # Like the stock launcher: keep a duplicate of the data pipe as the
        # child's "parent alive" sentinel, closed when this object goes.
        parent_w = os.dup(data_w)
        self.finalizer = util.Finalize(self, _close_fds, (parent_w, self.sentinel))
        with open(data_w, "wb", closefd=True) as stream:
            stream.write(buffer.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


def _close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class _IsolatedProcess(ForkServerProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> _IsolatedPopen:  # noqa: N802 - multiprocessing's name
        return _IsolatedPopen(process_obj)


def start_isolated_process(
    target: Callable[..., object], args: Sequence[object], *, name: str
) -> BaseProcess:
    """Start ``target(*args)`` in a forkserver child; the caller must hold a
    forkserver reference. ``target`` and ``args`` are pickled: pass only server
    objects and :class:`~multiprocessing.connection.Connection` ends, never
    client data."""
    process = _IsolatedProcess(target=target, args=tuple(args), name=name, daemon=True)
    # The process object travels to the child with its own copy of this
    # process's multiprocessing authkey (an HMAC key); give it a fresh one.
    process.authkey = os.urandom(32)
    with _process_lock:
        process.start()
    return process


def process_exitcode(process: BaseProcess, timeout: float = 0.0) -> int | None:
    """The exit status once the process has ended (negative: killed by a signal)."""
    if timeout > 0:
        multiprocessing.connection.wait([process.sentinel], timeout)
    with _process_lock:
        return process.exitcode


def _kill(process: BaseProcess) -> None:
    """SIGKILL the process unless its exit was already reported.

    The forkserver, not this process, reaps the child, so a pid could in
    principle be reused between the child's exit and this call; checking the
    reported status first keeps that window to the few microseconds between
    the forkserver's ``waitpid`` and its status write.
    """
    if process.pid is None or process_exitcode(process) is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGKILL)


def terminate_isolated_process(process: BaseProcess) -> int | None:
    """Kill a process started by :func:`start_isolated_process` and reap it."""
    _kill(process)
    return _reap(process)


def _reap(process: BaseProcess) -> int | None:
    code = process_exitcode(process, timeout=5.0)
    if code is None:
        _kill(process)
        code = process_exitcode(process, timeout=5.0)
    if code is not None:
        with _process_lock:
            process.join(0)
            process.close()
    return code


# --------------------------------------------------------------------------------------
# The sandbox
# --------------------------------------------------------------------------------------


class _Frame:
    """Incremental reader of one ``Connection.send_bytes`` frame."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buffer = bytearray()
        self.size: int | None = None
        self.too_large = False

    def feed(self, data: bytes) -> None:
        self.buffer += data
        if self.size is None and len(self.buffer) >= 4:
            (size,) = struct.unpack("!i", self.buffer[:4])
            header = 4
            if size == -1:
                if len(self.buffer) < 12:
                    return
                (size,) = struct.unpack("!Q", self.buffer[4:12])
                header = 12
            if size < 0 or size > self.limit:
                self.too_large = True
                return
            del self.buffer[:header]
            self.size = size

    @property
    def complete(self) -> bool:
        return self.size is not None and len(self.buffer) >= self.size

    def payload(self) -> bytes:
        assert self.size is not None
        return bytes(self.buffer[: self.size])


def _failure(code: FailureCode, detail: str) -> ExecutionFailure:
    return ExecutionFailure(code=str(code), detail=detail)


def _readable(fd: int) -> bool:
    """Whether ``fd`` is readable now (poll: descriptors may exceed FD_SETSIZE)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


@dataclass(frozen=True, slots=True)
class SandboxTrace:
    """Where one job's time went, for benchmarks and diagnostics only.

    ``checkpoints`` are ``(name, time.perf_counter_ns())`` pairs in time order,
    from both processes (``perf_counter_ns`` reads ``CLOCK_MONOTONIC``, one
    clock for all processes on Linux). The parent's: ``execute`` (the call),
    ``process_ready`` (a process holds the job: a spare taken, or a new one
    started), ``request_sent``, ``answer_read``, ``decoded``. The child's:
    ``child_started``, ``hardened``, ``warmed_up`` (spares only; Aer's
    warm-up adds ``warmed_up_qasm2``, ``warmed_up_simulator``,
    ``warmed_up_qasm3`` as far as it got), ``request_read``,
    ``request_decoded``, the backend's own (Aer: ``circuit_loaded``,
    ``simulated``), ``executed``, ``answer_encoded``. With ``spare`` the
    child's first checkpoints precede ``execute``: that work was done before
    the job arrived. Never part of a job's result.
    """

    job_id: str
    backend: str
    spare: bool
    checkpoints: tuple[tuple[str, int], ...]


class _Child:
    """A sandbox process and the parent's ends of its two channels."""

    __slots__ = ("backend", "conn", "diagnostics", "process")

    def __init__(
        self, process: BaseProcess, conn: Connection, diagnostics: Connection, backend: Backend
    ) -> None:
        self.process = process
        self.conn = conn
        self.diagnostics = diagnostics
        self.backend = backend

    def close_channels(self) -> None:
        for channel in (self.conn, self.diagnostics):
            with contextlib.suppress(OSError):
                channel.close()


class Sandbox:
    """Runs jobs, one fresh process each; thread-safe, N jobs from N threads.

    ``execute`` never raises for a job's failure: it returns an
    :class:`ExecutionFailure` whose ``code`` is one of
    :class:`~qustody.executors.errors.FailureCode`.

    ``spares`` is how many processes to keep started, hardened and warmed up
    for each backend that has run a job (0: start every process on demand);
    ``trace``, when given, is called with a :class:`SandboxTrace` after each
    job (benchmarks and diagnostics only).
    """

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        registry: BackendRegistry | None = None,
        *,
        start: bool = True,
        spares: int = 2,
        trace: Callable[[SandboxTrace], None] | None = None,
    ) -> None:
        if isinstance(spares, bool) or not isinstance(spares, int) or not 0 <= spares <= 16:
            raise ConfigurationError("sandbox spares must be an integer from 0 to 16")
        self.limits = limits or SandboxLimits()
        self.registry = registry if registry is not None else default_registry()
        self.spares = spares
        self._trace = trace
        self._lock = threading.Lock()
        #: Notified when a spare was added (or failed to start), and on close.
        self._spare_added = threading.Condition(self._lock)
        self._live: set[BaseProcess] = set()
        #: Spares by backend name, oldest first, and how many are being started.
        self._idle: dict[str, list[_Child]] = {}
        self._starting: dict[str, int] = {}
        self._closing = threading.Event()
        self._context: ForkServerContext | None = None
        self._housekeeper: _Housekeeper | None = None
        if start:
            self.start()

    def start(self) -> None:
        """Start the forkserver now (it takes about a second: it imports Qiskit)."""
        with self._lock:
            if self._closing.is_set():
                raise SandboxUnavailable("the sandbox is closed")
            if self._context is None:
                self._context = acquire_forkserver()
                self._housekeeper = _Housekeeper(self)

    def close(self) -> None:
        """Kill running jobs (they report ``cancelled``) and spares, release the forkserver."""
        with self._lock:
            if self._closing.is_set():
                return
            self._closing.set()
            live = list(self._live)
            idle = [child for children in self._idle.values() for child in children]
            self._idle.clear()
            context, self._context = self._context, None
            housekeeper = self._housekeeper
            self._spare_added.notify_all()
        for process in live:
            _kill(process)
        for child in idle:
            self._discard(child)
        if housekeeper is not None:
            housekeeper.stop(_CLOSE_TIMEOUT_SECONDS)
        if context is not None:
            release_forkserver()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def execute(
        self,
        request: ExecutionRequest,
        cancel_event: threading.Event | None = None,
    ) -> ExecutionResult | ExecutionFailure:
        """Run one job in a fresh sandbox process; see the module docstring."""
        stamps: list[tuple[str, int]] | None = None
        if self._trace is not None:
            stamps = [("execute", time.perf_counter_ns())]
        self.start()
        try:
            backend = self.registry.get(request.backend)
        except UnknownBackend as exc:
            return _failure(FailureCode.UNKNOWN_BACKEND, exc.detail)
        if cancel_event is not None and cancel_event.is_set():
            return _failure(FailureCode.CANCELLED, "the job was cancelled before it started")
        payload = encode_request(request)
        if len(payload) > self.limits.max_request_bytes:
            return _failure(
                FailureCode.EXECUTION_ERROR,
                f"the job is {len(payload)} bytes; the sandbox accepts at most "
                f"{self.limits.max_request_bytes}",
            )
        child = self._take_spare(request.backend, backend)
        spare = child is not None
        if child is None:
            child = self._start_child(backend, warm_up=False)
        if stamps is not None:
            stamps.append(("process_ready", time.perf_counter_ns()))
        process = child.process
        with self._lock:
            self._live.add(process)
            closing = self._closing.is_set()
        if closing:
            _kill(process)
        try:
            outcome, child_stamps = _Supervision(self, child, stamps).run(payload, cancel_event)
        finally:
            with self._lock:
                self._live.discard(process)
            child.close_channels()
            # Only now: a replacement started while the job ran would have
            # competed with it for the CPU. One wake-up for both chores: each
            # is a point where the housekeeper could take the GIL.
            self._retire(process, spares_for=(request.backend, backend))
        if stamps is not None:
            self._report(request, spare, stamps, child_stamps)
        return outcome

    # -- processes ---------------------------------------------------------------------

    def _start_child(self, backend: Backend, *, warm_up: bool) -> _Child:
        """Start a sandbox process for ``backend``; it hardens itself and waits."""
        config = self.limits.child_config()._replace(warm_up=warm_up, trace=self._trace is not None)
        parent_end, child_end = multiprocessing.Pipe(duplex=True)
        diagnostics, child_diagnostics = multiprocessing.Pipe(duplex=False)
        try:
            process = start_isolated_process(
                _child.sandbox_main,
                (child_end, child_diagnostics, backend, config),
                name="qustody-sandbox",
            )
        except BaseException as exc:
            parent_end.close()
            diagnostics.close()
            if isinstance(exc, OSError):
                raise SandboxUnavailable(f"could not start a sandbox process: {exc}") from None
            raise
        finally:
            child_end.close()
            child_diagnostics.close()
        return _Child(process, parent_end, diagnostics, backend)

    def _take_spare(self, name: str, backend: Backend) -> _Child | None:
        """The oldest live spare started for this backend, if any (waiting a
        little for one that is being started)."""
        deadline = time.monotonic() + _SPARE_WAIT_SECONDS
        while True:
            with self._lock:
                while (
                    not self._idle.get(name)
                    and self._starting.get(name, 0) > 0
                    and not self._closing.is_set()
                ):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._spare_added.wait(remaining)
                idle = self._idle.get(name)
                if not idle:
                    return None
                child = idle.pop(0)
            # A readable sentinel means the exit was reported: checked without
            # _process_lock, which a spare being started may hold.
            if child.backend is backend and not _readable(child.process.sentinel):
                return child
            self._discard(child)

    def _missing_spares(self, name: str) -> int:
        """How many spares to start for this backend now; counted as starting.
        Call with ``self._lock`` held."""
        if self.spares == 0 or self._closing.is_set() or self._housekeeper is None:
            return 0
        missing = self.spares - len(self._idle.get(name, ())) - self._starting.get(name, 0)
        if missing <= 0:
            return 0
        self._starting[name] = self._starting.get(name, 0) + missing
        return missing

    def _start_spare(self, name: str, backend: Backend) -> None:
        """Called by the housekeeper."""
        child: _Child | None = None
        try:
            child = self._start_child(backend, warm_up=True)
        except Exception as exc:  # noqa: BLE001 - a job that needs it starts its own
            log.warning("could not start a spare sandbox process: %s", exc)
        with self._lock:
            self._starting[name] = max(0, self._starting.get(name, 0) - 1)
            keep = child is not None and not self._closing.is_set()
            if keep:
                assert child is not None
                self._idle.setdefault(name, []).append(child)
            self._spare_added.notify_all()
        if child is not None and not keep:
            self._discard(child)

    def _housekeeper_exited(self, housekeeper: _Housekeeper) -> None:
        """Called by the housekeeper's thread as it ends: no spare is coming."""
        with self._lock:
            if self._housekeeper is housekeeper:
                self._housekeeper = None
            self._starting.clear()
            self._spare_added.notify_all()

    def _discard(self, child: _Child) -> None:
        _kill(child.process)
        child.close_channels()
        self._retire(child.process)

    def _retire(
        self, process: BaseProcess, *, spares_for: tuple[str, Backend] | None = None
    ) -> None:
        """Collect the process's exit status, in the background when possible;
        with ``spares_for``, also start that backend's missing spares."""
        spawns: list[tuple[str, Backend]] = []
        with self._lock:
            housekeeper = self._housekeeper
            if spares_for is not None:
                spawns = [spares_for] * self._missing_spares(spares_for[0])
        if housekeeper is None or not housekeeper.submit(process, spawns):
            if spawns:
                name = spawns[0][0]
                with self._lock:
                    self._starting[name] = max(0, self._starting.get(name, 0) - len(spawns))
                    self._spare_added.notify_all()
            _reap(process)

    def _report(
        self,
        request: ExecutionRequest,
        spare: bool,
        stamps: list[tuple[str, int]],
        child_stamps: tuple[tuple[str, int], ...] | None,
    ) -> None:
        assert self._trace is not None
        checkpoints = sorted([*stamps, *(child_stamps or ())], key=lambda item: item[1])
        trace = SandboxTrace(request.job_id, request.backend, spare, tuple(checkpoints))
        try:
            self._trace(trace)
        except Exception:
            log.exception("the sandbox trace callback failed")


class _Housekeeper:
    """A sandbox's background thread: starts spares and collects exit statuses.

    Both are kept off the jobs' critical path. A job takes a spare that was
    started while earlier jobs ran, and returns as soon as its answer is read;
    its process exits on its own and the exit status (multiprocessing's
    forkserver reports it over the process's sentinel) is collected here. A
    process that has not exited ``_EXIT_GRACE_SECONDS`` after it was retired
    is killed.

    Work is handed over with a condition variable, not a pipe: notifying does
    not release the GIL, so the returning job's thread keeps it instead of
    waiting for this thread's burst of work. While processes are exiting,
    this thread waits on their sentinels, looking for new work at least every
    ``_HOUSEKEEPER_TICK_SECONDS``.
    """

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox
        self._cond = threading.Condition()
        self._spawns: list[tuple[str, Backend]] = []
        #: Retired processes: when to kill them (or give up), and whether killed.
        self._dying: dict[BaseProcess, tuple[float, bool]] = {}
        self._stopping = False
        self._exited = False
        self._thread = threading.Thread(
            target=self._run, name="qustody-sandbox-housekeeper", daemon=True
        )
        self._thread.start()

    def submit(self, process: BaseProcess, spawns: list[tuple[str, Backend]]) -> bool:
        """Collect ``process`` and start ``spawns`` in the background; False
        (and nothing done) once this thread is gone or stopping."""
        with self._cond:
            if self._exited or (spawns and self._stopping):
                return False
            self._dying[process] = (time.monotonic() + _EXIT_GRACE_SECONDS, False)
            self._spawns.extend(spawns)
            self._cond.notify()
        return True

    def stop(self, timeout: float) -> None:
        """Start no more spares; return once every retired process is collected."""
        with self._cond:
            self._stopping = True
            self._spawns.clear()
            self._cond.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("sandbox processes were still exiting when the sandbox closed")

    def _run(self) -> None:
        try:
            while self._step():
                pass
        except Exception:
            log.exception("the sandbox housekeeper failed; processes are now collected inline")
        finally:
            with self._cond:
                self._exited = True
                dying, self._dying = list(self._dying), {}
            self._sandbox._housekeeper_exited(self)
            for process in dying:
                with contextlib.suppress(Exception):
                    _reap(process)

    def _step(self) -> bool:
        """Start the spares asked for, collect or kill retired processes, wait;
        False once stopping and nothing is left to collect."""
        with self._cond:
            while not (self._spawns or self._dying or self._stopping):
                self._cond.wait()
            spawns, self._spawns = self._spawns, []
        for name, backend in spawns:
            self._sandbox._start_spare(name, backend)
        now = time.monotonic()
        with self._cond:
            if self._stopping and not self._dying and not self._spawns:
                return False
            dying = list(self._dying.items())
        waiting: dict[int, BaseProcess] = {}
        deadline = now + _HOUSEKEEPER_TICK_SECONDS
        for process, (due, killed) in dying:
            if due <= now:
                if killed:  # no status 5 s after SIGKILL: leave it to multiprocessing
                    log.warning("sandbox process %s did not report its exit", process.pid)
                    with self._cond:
                        del self._dying[process]
                    continue
                _kill(process)
                due = now + 5.0
                with self._cond:
                    self._dying[process] = (due, True)
            waiting[process.sentinel] = process
            deadline = min(deadline, due)
        if not waiting:
            return True
        for fd in multiprocessing.connection.wait(list(waiting), max(0.0, deadline - now)):
            process = waiting[cast(int, fd)]
            _reap(process)
            with self._cond:
                self._dying.pop(process, None)
        return True


#: Marks of an allocation failure in a dying process's stderr: Rust's
#: ``handle_alloc_error``, C++'s ``std::bad_alloc``, Python's MemoryError.
_ALLOCATION_FAILURE = (b"memory allocation of", b"bad_alloc", b"MemoryError", b"out of memory")
_DIAGNOSTICS_TAIL = 8192


class _Supervision:
    """The parent's side of one job: feed the request, watch the child, read the answer.

    Never blocks past the wall-clock deadline: both sockets are non-blocking
    and multiplexed with the child's exit sentinel in one poll loop. The
    answer, the child's exit and a shutdown (which kills the child) wake the
    loop at once; a cancellation is noticed within ``_POLL_SECONDS``.
    """

    def __init__(
        self, sandbox: Sandbox, child: _Child, stamps: list[tuple[str, int]] | None
    ) -> None:
        self.sandbox = sandbox
        self.limits = sandbox.limits
        self.process = child.process
        self.fd = child.conn.fileno()
        self.diagnostics_fd = child.diagnostics.fileno()
        self.stamps = stamps
        self.tail = bytearray()
        self.frame = _Frame(self.limits.max_output_bytes + 1024)

    def _stamp(self, name: str) -> None:
        if self.stamps is not None:
            self.stamps.append((name, time.perf_counter_ns()))

    def _send(self, outgoing: memoryview) -> memoryview:
        """Write what the socket takes now; the rest is returned."""
        before = 0
        while outgoing:
            # Stamped before the write that completes the request: the child
            # may read it (and stamp request_read) before this thread runs
            # again, so a stamp taken after the write could come later.
            before = time.perf_counter_ns()
            try:
                sent = os.write(self.fd, outgoing[: 1 << 16])
            except BlockingIOError:
                return outgoing
            except OSError:  # the child is gone; its exit status says why
                return memoryview(b"")
            outgoing = outgoing[sent:]
        if self.stamps is not None and before:
            self.stamps.append(("request_sent", before))
        return outgoing

    def run(
        self, payload: bytes, cancel_event: threading.Event | None
    ) -> tuple[ExecutionResult | ExecutionFailure, Checkpoints | None]:
        limits, process, frame = self.limits, self.process, self.frame
        deadline = time.monotonic() + limits.wall_seconds
        os.set_blocking(self.fd, False)
        os.set_blocking(self.diagnostics_fd, False)
        # Small requests fit the socket buffer: sent here, without a poll round.
        outgoing = self._send(memoryview(struct.pack("!i", len(payload)) + payload))
        poller = select.poll()
        poller.register(process.sentinel, select.POLLIN)
        poller.register(self.fd, select.POLLIN | (select.POLLOUT if outgoing else 0))
        poller.register(self.diagnostics_fd, select.POLLIN)
        child_gone = False
        while not frame.complete:
            if self.sandbox._closing.is_set():
                _kill(process)
                return _failure(
                    FailureCode.CANCELLED, "the sandbox was shut down while the job ran"
                ), None
            if cancel_event is not None and cancel_event.is_set():
                _kill(process)
                return _failure(FailureCode.CANCELLED, "the job was cancelled while it ran"), None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _kill(process)
                return _failure(
                    FailureCode.TIMEOUT,
                    f"the job ran longer than the wall-clock limit of {limits.wall_seconds:g} s; "
                    "use fewer shots or a smaller circuit",
                ), None
            if child_gone:
                break
            for ready, mask in poller.poll(min(remaining, _POLL_SECONDS) * 1000):
                if ready == process.sentinel:
                    child_gone = True
                    poller.unregister(process.sentinel)
                elif ready == self.diagnostics_fd:
                    if not self._read_diagnostics():
                        poller.unregister(self.diagnostics_fd)
                    continue
                elif mask & select.POLLOUT and outgoing:
                    outgoing = self._send(outgoing)
                    if not outgoing:
                        poller.modify(self.fd, select.POLLIN)
                if ready == self.fd and mask & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    if not _drain(self.fd, frame):
                        child_gone = True
                    if frame.too_large:
                        _kill(process)
                        return _failure(
                            FailureCode.OUTPUT_TOO_LARGE,
                            f"the result is larger than the {limits.max_output_bytes} bytes the "
                            "sandbox returns; use fewer shots or memory=false",
                        ), None
            if child_gone and not frame.complete:
                _drain(self.fd, frame)  # it may have answered just before exiting
        if not frame.complete:
            self._read_diagnostics()
            return self._classify(), None
        self._stamp("answer_read")
        try:
            outcome, child_stamps = decode_reply(frame.payload())
        except ValueError:
            return _failure(
                FailureCode.PROTOCOL_ERROR, "the sandbox answered a malformed result"
            ), None
        self._stamp("decoded")
        return outcome, child_stamps

    def _read_diagnostics(self) -> bool:
        """Keep the last few KiB the child wrote to stderr; False at end of stream."""
        while True:
            try:
                data = os.read(self.diagnostics_fd, 1 << 16)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            self.tail += data
            del self.tail[:-_DIAGNOSTICS_TAIL]

    def _classify(self) -> ExecutionFailure:
        """Why a child died without answering, from its exit status (and stderr tail)."""
        code = process_exitcode(self.process, timeout=5.0)
        limits = self.limits
        budget = limits.memory_bytes // _MIB
        if code is None:
            _kill(self.process)
            return _failure(FailureCode.CRASHED, "the sandbox closed its channel without a result")
        if code == -signal.SIGXCPU:
            return _failure(
                FailureCode.CPU_LIMIT,
                f"the job used more than its CPU limit of {limits.cpu_seconds} s; "
                "use fewer shots or a smaller circuit",
            )
        if any(mark in self.tail for mark in _ALLOCATION_FAILURE):
            return _failure(
                FailureCode.MEMORY_LIMIT,
                f"the job needed more memory than the sandbox allows ({budget} MiB); "
                "use fewer qubits or shots",
            )
        if code == -signal.SIGKILL:
            return _failure(
                FailureCode.CRASHED,
                "the sandbox was killed (SIGKILL): the CPU hard limit or the system's "
                "out-of-memory killer",
            )
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return _failure(FailureCode.CRASHED, f"the sandbox crashed ({name})")
        if code == EXIT_SETUP_FAILED:
            return _failure(FailureCode.CRASHED, "the sandbox process could not be set up")
        return _failure(
            FailureCode.CRASHED, f"the sandbox exited with status {code} without a result"
        )


def _drain(fd: int, frame: _Frame) -> bool:
    """Read what is available into ``frame``; False at end of stream."""
    while not frame.complete and not frame.too_large:
        try:
            data = os.read(fd, 1 << 20)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        frame.feed(data)
    return True

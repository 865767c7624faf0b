"""The sandbox: fresh forkserver children, limits, failures, cancellation, isolation.

The misbehaving backends below are real backends: the sandbox pickles them to
the child by reference to this module, which the child imports; they run
inside the child exactly like the Aer backends do.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from qiskit_aer import AerSimulator

from qustody.domain.errors import ConfigurationError
from qustody.domain.ids import new_job_id
from qustody.domain.models import (
    BackendInfo,
    ExecutionFailure,
    ExecutionRequest,
    ExecutionResult,
)
from qustody.executors import aer
from qustody.executors._child import decode_reply, encode_failure
from qustody.executors.aer import AerBackend, aer_backends
from qustody.executors.errors import FailureCode, SandboxUnavailable
from qustody.executors.interfaces import Backend
from qustody.executors.registry import BackendRegistry
from qustody.executors.sandbox import Sandbox, SandboxLimits, SandboxTrace

MIB = 1024 * 1024
GHZ5 = """OPENQASM 2.0;
include "qelib1.inc";
qreg q[5];
creg c[5];
h q[0];
cx q[0],q[1];
cx q[1],q[2];
cx q[2],q[3];
cx q[3],q[4];
measure q -> c;
"""


#: Jobs run by the process this module is loaded in (a sandbox child loads it
#: when it unpickles its backend): a fresh process must report exactly one.
_jobs_run = 0


class FaultBackend:
    """Does one bad thing inside the sandbox child (or reports what it sees there)."""

    def __init__(self, fault: str, amount: int = 0) -> None:
        self.fault = fault
        self.amount = amount
        self._info = BackendInfo(
            name=f"fault-{fault}",
            description="test-only backend",
            provider="tests",
            simulator=True,
            max_qubits=1,
            max_shots=1,
            basis_gates=(),
            method=fault,
        )

    @property
    def info(self) -> BackendInfo:
        return self._info

    def run(self, request: ExecutionRequest) -> ExecutionResult:
        metadata: dict[str, str | int | float | bool] = {}
        if self.fault == "abort":
            os.abort()
        elif self.fault == "segfault":
            ctypes.string_at(0)
        elif self.fault == "allocate":
            block = bytearray(self.amount)
            metadata["allocated"] = len(block)
        elif self.fault == "rust-allocate":
            from qiskit import qasm2

            # Two million gates, allocated by Qiskit's Rust code.
            qasm2.loads('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[1000];\n' + "h q;\n" * 2000)
        elif self.fault == "sleep":
            time.sleep(self.amount)
        elif self.fault == "spin":
            while True:
                pass
        elif self.fault == "probe":
            metadata = _probe()
        elif self.fault == "whoami":
            metadata = _whoami()
        return ExecutionResult(
            counts={},
            memory=None,
            clbit_registers=(),
            backend=self._info.name,
            shots=request.shots,
            seed=0,
            method=self.fault,
            simulator_version="test",
            execution_seconds=0.0,
            metadata=metadata,
        )


def _probe() -> dict[str, str | int | float | bool]:
    with open("/proc/self/environ", "rb") as own:
        own_block = own.read()
    with open(f"/proc/{os.getppid()}/environ", "rb") as parent:
        forkserver_block = parent.read()
    return {
        "environ": json.dumps(dict(os.environ)),
        "proc_environ": own_block.decode("utf-8", "replace"),
        "forkserver_environ": forkserver_block.decode("utf-8", "replace"),
        "fds": ",".join(sorted(os.listdir("/proc/self/fd"))),
        "cwd": os.getcwd(),
        "core": resource.getrlimit(resource.RLIMIT_CORE)[1],
        "cpu": resource.getrlimit(resource.RLIMIT_CPU)[0],
        "address_space": resource.getrlimit(resource.RLIMIT_AS)[0],
        "argv": json.dumps(sys.argv),
        "authkey": bytes(multiprocessing.current_process().authkey).hex(),
    }


def _whoami() -> dict[str, str | int | float | bool]:
    global _jobs_run
    _jobs_run += 1
    return {"pid": os.getpid(), "ppid": os.getppid(), "jobs_run": _jobs_run}


class AerProbe(AerBackend):
    """Aer's warm-up, then reports the simulator a job would use instead of running."""

    __slots__ = ()

    def run(self, request: ExecutionRequest) -> ExecutionResult:
        simulator = aer._PRELOADED[self.info.method]
        return ExecutionResult(
            counts={},
            memory=None,
            clbit_registers=(),
            backend=self.info.name,
            shots=request.shots,
            seed=0,
            method=self.info.method,
            simulator_version="test",
            execution_seconds=0.0,
            metadata={
                **_whoami(),
                "preloaded": ",".join(sorted(aer._PRELOADED)),
                "options": _options(simulator),
            },
        )


def _options(simulator: AerSimulator) -> str:
    return repr(sorted(simulator.options.__dict__.items()))


def aer_probe() -> AerProbe:
    info = aer_backends()[0].info
    return AerProbe(
        BackendInfo(
            name="aer-probe",
            description="test-only backend",
            provider="tests",
            simulator=True,
            max_qubits=info.max_qubits,
            max_shots=info.max_shots,
            basis_gates=info.basis_gates,
            method="statevector",
        )
    )


def registry() -> BackendRegistry:
    backends: list[Backend] = [
        *aer_backends(),
        FaultBackend("abort"),
        FaultBackend("segfault"),
        FaultBackend("allocate", 512 * MIB),
        FaultBackend("rust-allocate"),
        FaultBackend("sleep", 30),
        FaultBackend("spin"),
        FaultBackend("probe"),
        FaultBackend("whoami"),
        aer_probe(),
    ]
    return BackendRegistry(backends)


def request(
    backend: str,
    circuit: str = GHZ5,
    *,
    shots: int = 1,
    seed: int | None = None,
    memory: bool = False,
) -> ExecutionRequest:
    return ExecutionRequest(
        job_id=new_job_id(),
        backend=backend,
        circuit=circuit,
        circuit_format="qasm2",
        shots=shots,
        seed=seed,
        memory=memory,
    )


LIMITS = SandboxLimits(cpu_seconds=5, memory_bytes=256 * MIB, wall_seconds=20)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(LIMITS, registry()) as box:
        yield box


def failure(outcome: ExecutionResult | ExecutionFailure) -> ExecutionFailure:
    assert isinstance(outcome, ExecutionFailure), outcome
    return outcome


def still_works(sandbox: Sandbox) -> None:
    outcome = sandbox.execute(request("aer-statevector", shots=100))
    assert isinstance(outcome, ExecutionResult), outcome
    assert set(outcome.counts) <= {"00000", "11111"}


def test_runs_a_job(sandbox: Sandbox) -> None:
    still_works(sandbox)


def test_memory_limit_python_allocation(sandbox: Sandbox) -> None:
    outcome = failure(sandbox.execute(request("fault-allocate")))
    assert outcome.code == "sandbox_memory_limit"
    assert "256 MiB" in outcome.detail
    still_works(sandbox)


def test_memory_limit_leaves_the_budget_usable() -> None:
    # Half the budget is there to use: the limit is measured from the baseline.
    box_registry = BackendRegistry([FaultBackend("allocate", 128 * MIB)])
    with Sandbox(LIMITS, box_registry) as box:
        outcome = box.execute(request("fault-allocate"))
    assert isinstance(outcome, ExecutionResult), outcome
    assert outcome.metadata["allocated"] == 128 * MIB


def test_memory_limit_native_allocation(sandbox: Sandbox) -> None:
    # Rust aborts when an allocation fails; the sandbox still names the cause.
    outcome = failure(sandbox.execute(request("fault-rust-allocate")))
    assert outcome.code == "sandbox_memory_limit"
    still_works(sandbox)


def test_memory_limit_statevector_too_big(sandbox: Sandbox) -> None:
    circuit = (
        'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[26];\ncreg c[26];\nh q;\nmeasure q -> c;\n'
    )
    outcome = failure(sandbox.execute(request("aer-statevector", circuit, shots=10)))
    assert outcome.code == "sandbox_memory_limit"
    assert "aer-stabilizer" in outcome.detail
    still_works(sandbox)


def test_abort_is_a_crash_and_the_sandbox_carries_on(sandbox: Sandbox) -> None:
    outcome = failure(sandbox.execute(request("fault-abort")))
    assert outcome.code == "sandbox_crashed"
    assert "SIGABRT" in outcome.detail
    still_works(sandbox)


def test_segfault_is_a_crash(sandbox: Sandbox) -> None:
    outcome = failure(sandbox.execute(request("fault-segfault")))
    assert outcome.code == "sandbox_crashed"
    assert "SIGSEGV" in outcome.detail
    still_works(sandbox)


def test_wall_clock_limit() -> None:
    limits = SandboxLimits(cpu_seconds=5, memory_bytes=256 * MIB, wall_seconds=0.5)
    with Sandbox(limits, registry()) as box:
        started = time.monotonic()
        outcome = failure(box.execute(request("fault-sleep")))
        assert time.monotonic() - started < 3
        assert outcome.code == "sandbox_timeout"
        assert "0.5 s" in outcome.detail
        still_works(box)


def test_cpu_limit() -> None:
    limits = SandboxLimits(cpu_seconds=1, memory_bytes=256 * MIB, wall_seconds=10)
    with Sandbox(limits, registry()) as box:
        outcome = failure(box.execute(request("fault-spin")))
        assert outcome.code == "sandbox_cpu_limit"
        assert "1 s" in outcome.detail
        still_works(box)


def test_cancellation(sandbox: Sandbox) -> None:
    cancel = threading.Event()
    timer = threading.Timer(0.3, cancel.set)
    timer.start()
    started = time.monotonic()
    outcome = failure(sandbox.execute(request("fault-sleep"), cancel_event=cancel))
    timer.join()
    assert time.monotonic() - started < 3
    assert outcome.code == "cancelled"
    assert failure(sandbox.execute(request("fault-sleep"), cancel_event=cancel)).code == "cancelled"
    still_works(sandbox)


def test_jobs_run_concurrently_from_threads(sandbox: Sandbox) -> None:
    outcomes: list[ExecutionResult | ExecutionFailure] = []
    lock = threading.Lock()

    def run(seed: int) -> None:
        outcome = sandbox.execute(request("aer-statevector", shots=200, seed=seed))
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(outcomes) == 6
    assert all(isinstance(outcome, ExecutionResult) for outcome in outcomes), outcomes


def test_output_limit() -> None:
    limits = SandboxLimits(cpu_seconds=5, memory_bytes=256 * MIB, max_output_bytes=10_000)
    with Sandbox(limits, registry()) as box:
        outcome = failure(box.execute(request("aer-statevector", shots=5000, memory=True)))
    assert outcome.code == "sandbox_output_too_large"


def test_unknown_backend(sandbox: Sandbox) -> None:
    outcome = failure(sandbox.execute(request("no-such-backend")))
    assert outcome.code == "unknown_backend"
    assert "aer-statevector" in outcome.detail


def test_closed_sandbox_refuses() -> None:
    box = Sandbox(LIMITS, registry())
    box.close()
    box.close()
    with pytest.raises(SandboxUnavailable):
        box.execute(request("aer-statevector"))


def test_child_is_hardened(sandbox: Sandbox) -> None:
    outcome = sandbox.execute(request("fault-probe"))
    assert isinstance(outcome, ExecutionResult), outcome
    seen = outcome.metadata
    environ = json.loads(str(seen["environ"]))
    assert set(environ) <= {
        "PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS", "RAYON_NUM_THREADS", "QISKIT_PARALLEL", "QISKIT_SETTINGS",
        "RUST_BACKTRACE", "MIMALLOC_ARENA_RESERVE",
    }  # fmt: skip
    # stdio, the job's socket, its stderr channel, and the descriptor listing itself.
    assert len(str(seen["fds"]).split(",")) <= 5
    assert seen["cwd"] == "/"
    assert seen["core"] == 0
    assert seen["cpu"] == LIMITS.cpu_seconds
    assert 0 < int(seen["address_space"]) < 2 * 1024 * MIB
    assert json.loads(str(seen["argv"])) == ["-c"]
    assert seen["authkey"] != bytes(multiprocessing.current_process().authkey).hex()


SECRET_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from test_sandbox import FaultBackend, request
from qustody.executors.registry import BackendRegistry
from qustody.executors.sandbox import Sandbox, SandboxLimits
with Sandbox(SandboxLimits(), BackendRegistry([FaultBackend("probe")])) as box:
    outcome = box.execute(request("fault-probe"))
print(json.dumps(outcome.metadata))
"""


def test_parent_secrets_do_not_reach_the_child() -> None:
    # A fresh interpreter, so the forkserver starts with the secret in its environment.
    secret = "qustody-test-secret-7f3a9c"
    env = {**os.environ, "QUSTODY_TEST_SECRET": secret}
    script = SECRET_SCRIPT.format(tests=str(Path(__file__).parent))
    completed = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    seen = json.loads(completed.stdout.strip().splitlines()[-1])
    assert "QUSTODY_TEST_SECRET" not in json.loads(seen["environ"])
    assert secret not in seen["proc_environ"]
    assert secret not in seen["forkserver_environ"]


# -- one fresh process per job, spares, tracing --------------------------------------


def traced_sandbox(
    traces: list[SandboxTrace], limits: SandboxLimits = LIMITS, spares: int = 1
) -> Sandbox:
    return Sandbox(limits, registry(), spares=spares, trace=traces.append)


def warm_spare_job(
    box: Sandbox, traces: list[SandboxTrace], job: ExecutionRequest
) -> ExecutionResult:
    """Run ``job`` (a new request each try) until it lands on a spare that had
    finished warming up before the job arrived; retried, never timed."""
    for _ in range(50):
        outcome = box.execute(replace(job, job_id=new_job_id()))
        assert isinstance(outcome, ExecutionResult), outcome
        trace = traces[-1]
        points = dict(trace.checkpoints)
        if trace.spare and points.get("warmed_up", points["execute"]) < points["execute"]:
            return outcome
        time.sleep(0.2)
    pytest.fail("no job found a warmed-up spare")


@pytest.mark.parametrize("spares", [0, 1, 3])
def test_every_job_gets_a_fresh_process(spares: int) -> None:
    with Sandbox(LIMITS, registry(), spares=spares) as box:
        seen = []
        for _ in range(6):
            outcome = box.execute(request("fault-whoami"))
            assert isinstance(outcome, ExecutionResult), outcome
            seen.append(outcome.metadata)
    pids = [meta["pid"] for meta in seen]
    assert len(set(pids)) == len(pids)
    assert os.getpid() not in pids
    # Each process ran exactly one job, and all were forked by the one forkserver.
    assert {meta["jobs_run"] for meta in seen} == {1}
    assert len({meta["ppid"] for meta in seen}) == 1
    # Each answered and exited; close() collected every one of them, spares included.
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)


def test_concurrent_jobs_never_share_a_process() -> None:
    seen: list[ExecutionResult | ExecutionFailure] = []
    lock = threading.Lock()
    with Sandbox(LIMITS, registry(), spares=2) as box:

        def run() -> None:
            for _ in range(3):
                outcome = box.execute(request("fault-whoami"))
                with lock:
                    seen.append(outcome)

        threads = [threading.Thread(target=run) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    results = [outcome for outcome in seen if isinstance(outcome, ExecutionResult)]
    assert len(results) == 12, seen
    assert len({r.metadata["pid"] for r in results}) == 12
    assert {r.metadata["jobs_run"] for r in results} == {1}


def test_a_spare_is_hardened_like_any_child() -> None:
    traces: list[SandboxTrace] = []
    with traced_sandbox(traces) as box:
        outcome = warm_spare_job(box, traces, request("fault-probe"))
    seen = outcome.metadata
    assert set(json.loads(str(seen["environ"]))) <= {
        "PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS", "RAYON_NUM_THREADS", "QISKIT_PARALLEL", "QISKIT_SETTINGS",
        "RUST_BACKTRACE", "MIMALLOC_ARENA_RESERVE",
    }  # fmt: skip
    assert len(str(seen["fds"]).split(",")) <= 5
    assert seen["cwd"] == "/"
    assert seen["core"] == 0
    assert seen["cpu"] == LIMITS.cpu_seconds
    assert 0 < int(seen["address_space"]) < 2 * 1024 * MIB


def test_the_preloaded_simulator_is_untouched_when_a_job_starts() -> None:
    # The forkserver built one simulator per method; a spare ran Aer's warm-up
    # on it (shots 2, seed 0, memory) as run options, which must not stick.
    traces: list[SandboxTrace] = []
    with traced_sandbox(traces) as box:
        outcome = warm_spare_job(box, traces, request("aer-probe"))
    seen = outcome.metadata
    assert seen["jobs_run"] == 1
    assert seen["preloaded"] == "automatic,stabilizer,statevector"
    # Every option (seed, shots, memory, budget, threads...) as a new simulator has it.
    assert seen["options"] == _options(AerSimulator(method="statevector"))


def test_warm_spares_and_cold_processes_give_identical_results() -> None:
    job = request("aer-statevector", shots=300, seed=4321, memory=True)
    with Sandbox(LIMITS, registry(), spares=0) as cold:
        expected = cold.execute(job)
    assert isinstance(expected, ExecutionResult), expected
    traces: list[SandboxTrace] = []
    with traced_sandbox(traces) as box:
        warm = warm_spare_job(box, traces, job)
    assert warm.memory == expected.memory
    assert warm.counts == expected.counts
    assert warm.seed == expected.seed == 4321


def test_the_wall_clock_starts_with_the_job_not_the_spare() -> None:
    limits = SandboxLimits(cpu_seconds=5, memory_bytes=256 * MIB, wall_seconds=1.0)
    traces: list[SandboxTrace] = []
    with traced_sandbox(traces, limits) as box:
        still_works(box)
        time.sleep(1.5)  # the spare waits longer than a job may run
        outcome = box.execute(request("aer-statevector", shots=10))
        assert isinstance(outcome, ExecutionResult), outcome
        assert traces[-1].spare


def test_the_trace_has_both_sides_and_the_result_has_none_of_it() -> None:
    traces: list[SandboxTrace] = []
    with traced_sandbox(traces) as box:
        job = request("aer-statevector", shots=10)
        outcome = box.execute(job)
    assert isinstance(outcome, ExecutionResult), outcome
    (trace,) = traces
    assert trace.job_id == job.job_id
    assert trace.backend == "aer-statevector"
    assert not trace.spare
    names = [name for name, _ in trace.checkpoints]
    for name in ("execute", "process_ready", "request_sent", "child_started", "hardened",
                 "request_read", "request_decoded", "circuit_loaded", "simulated", "executed",
                 "answer_encoded", "answer_read", "decoded"):  # fmt: skip
        assert name in names
    stamps = [stamp for _, stamp in trace.checkpoints]
    assert stamps == sorted(stamps)
    assert names.index("request_read") < names.index("simulated") < names.index("answer_read")
    assert set(outcome.metadata) <= {
        "configured_method", "time_taken", "required_memory_mb", "measure_sampling",
        "parallel_shots", "num_qubits",
    }  # fmt: skip


def test_a_malformed_trace_is_ignored_not_fatal() -> None:
    reply = encode_failure(FailureCode.EXECUTION_ERROR, "no")
    traced = reply[:-1] + b',"trace":[["x",1],["y","not a number"]]}'
    outcome, checkpoints = decode_reply(traced)
    assert isinstance(outcome, ExecutionFailure)
    assert checkpoints is None
    good = reply[:-1] + b',"trace":[["x",1],["y",2]]}'
    assert decode_reply(good)[1] == (("x", 1), ("y", 2))


@pytest.mark.parametrize("spares", [-1, 17, True, 1.5])
def test_spares_must_be_a_small_count(spares: object) -> None:
    with pytest.raises(ConfigurationError):
        Sandbox(LIMITS, registry(), start=False, spares=spares)  # type: ignore[arg-type]


def test_close_stops_the_spares() -> None:
    box = Sandbox(LIMITS, registry(), spares=2)
    still_works(box)
    deadline = time.monotonic() + 30
    while sum(len(children) for children in box._idle.values()) < 2:
        assert time.monotonic() < deadline, "the spares never started"
        time.sleep(0.05)
    pids = [child.process.pid for children in box._idle.values() for child in children]
    box.close()
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

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
from pathlib import Path

import pytest

from qustody.domain.ids import new_job_id
from qustody.domain.models import (
    BackendInfo,
    ExecutionFailure,
    ExecutionRequest,
    ExecutionResult,
)
from qustody.executors.aer import aer_backends
from qustody.executors.errors import SandboxUnavailable
from qustody.executors.interfaces import Backend
from qustody.executors.registry import BackendRegistry
from qustody.executors.sandbox import Sandbox, SandboxLimits

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

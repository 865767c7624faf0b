"""What one job costs in the execution sandbox, and where that time goes.

``sandbox``: three cases, interleaved in one loop (the order rotates every
iteration):

- empty job: a request the backend refuses before loading anything (shots 0),
  so the whole cost is the sandbox's own: take a process, JSON both ways,
  answer read back;
- GHZ-5, 1024 shots, through ``Sandbox.execute`` (OpenQASM 2 source, as the
  gateway sends it);
- the same circuit on a warm ``AerSimulator`` in this process (already a
  ``QuantumCircuit``), as ``benchmarks.gateway`` measures "direct";

p50/p90/p99 of each and the p50 ratio sandbox/direct, in two rhythms:

- back to back: each call right after the previous one. Every job needs a
  fresh process, so the machine is then busy starting processes, and the
  sandbox's background work (spares starting, processes exiting) runs beside
  the next calls, "direct" included;
- paced: a pause of ``PAUSE_MS`` before every call (of every case), roughly
  what a job spends in the gateway outside the sandbox; spares have time to
  warm up, and "direct" runs on a quiet machine.

A traced pass of each rhythm (``Sandbox(trace=...)``) gives the median of each
step on a GHZ-5 job's critical path, from the parent's and the child's
checkpoints, and how often the job found a spare process already warmed up.

    .venv/bin/python -m benchmarks.sandbox [--smoke]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from qiskit import QuantumCircuit, qasm2
from qiskit_aer import AerSimulator

from benchmarks.harness import Config, Measurement, latency, ratio, table
from qustody.domain.ids import new_job_id
from qustody.domain.models import ExecutionFailure, ExecutionRequest, ExecutionResult
from qustody.executors.registry import default_registry
from qustody.executors.sandbox import Sandbox, SandboxLimits, SandboxTrace

NAME = "sandbox"
#: The pause before each call in the paced rhythm.
PAUSE_MS = 20
RHYTHMS = (("back to back", 0), (f"{PAUSE_MS} ms apart", PAUSE_MS))
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
SHOTS = 1024
CASE = f"GHZ-5, {SHOTS} shots"

#: The steps of a job's critical path, as pairs of checkpoints (see SandboxTrace).
STEPS = (
    ("execute", "process_ready", "take a process (a spare, or start one)"),
    ("process_ready", "request_sent", "send the request"),
    ("request_sent", "request_read", "child reads the request (waits if still starting)"),
    ("request_read", "request_decoded", "decode the request (JSON)"),
    ("request_decoded", "circuit_loaded", "load the circuit (scan, parse OpenQASM)"),
    ("circuit_loaded", "simulated", "simulate (Aer)"),
    ("simulated", "executed", "build the result"),
    ("executed", "answer_encoded", "encode the answer (JSON)"),
    ("answer_encoded", "answer_read", "send the answer, parent wakes and reads"),
    ("answer_read", "decoded", "decode and check the answer"),
    ("decoded", "returned", "hand the process to the reaper, return"),
)

Case = Callable[[], None]


def _request(shots: int) -> ExecutionRequest:
    return ExecutionRequest(
        job_id=new_job_id(),
        backend="aer-statevector",
        circuit=GHZ5,
        circuit_format="qasm2",
        shots=shots,
    )


def _checked(outcome: ExecutionResult | ExecutionFailure, *, ok: bool) -> None:
    if isinstance(outcome, ExecutionResult) != ok:
        raise RuntimeError(f"unexpected sandbox outcome: {outcome}")


def _interleaved(cases: dict[str, Case], runs: int, pause_ms: float) -> dict[str, list[float]]:
    """Each case once per iteration, the order rotating; milliseconds."""
    names = list(cases)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for i in range(runs):
        for k in range(len(names)):
            name = names[(i + k) % len(names)]
            if pause_ms:
                time.sleep(pause_ms / 1000)
            started = time.perf_counter()
            cases[name]()
            samples[name].append((time.perf_counter() - started) * 1000)
    return samples


def _cases(box: Sandbox, direct: Case, after_ghz: Case | None = None) -> dict[str, Case]:
    def empty() -> None:
        _checked(box.execute(_request(0)), ok=False)

    def sandboxed() -> None:
        _checked(box.execute(_request(SHOTS)), ok=True)
        if after_ghz is not None:
            after_ghz()

    cases = {"empty": empty, "sandbox": sandboxed, "direct": direct}
    for _ in range(3):  # the first job of a backend starts its spares
        for case in cases.values():
            case()
    return cases


def _traced(direct: Case, runs: int, pause_ms: float) -> list[tuple[SandboxTrace, int]]:
    """GHZ-5 jobs' traces, and when each call returned, in the given rhythm."""
    traces: list[SandboxTrace] = []
    collected: list[tuple[SandboxTrace, int]] = []

    def keep() -> None:
        collected.append((traces[-1], time.perf_counter_ns()))

    with Sandbox(SandboxLimits(), default_registry(), trace=traces.append) as box:
        cases = _cases(box, direct, keep)
        collected.clear()
        _interleaved(cases, runs, pause_ms)
    return collected


def _steps(rhythm: str, traces: list[tuple[SandboxTrace, int]]) -> list[Measurement]:
    rows: list[Measurement] = []
    points = [dict(trace.checkpoints) | {"returned": returned} for trace, returned in traces]
    for start, end, what in STEPS:
        values = [(p[end] - p[start]) / 1e6 for p in points if start in p and end in p]
        if values:
            median = statistics.median(values)
            rows.append(Measurement(NAME, f"{CASE}, {rhythm}, step: {what}", "p50", median, "ms"))
    ready = [
        trace.spare and p.get("warmed_up", sys.maxsize) < p["execute"]
        for (trace, _), p in zip(traces, points, strict=True)
    ]
    if ready:
        share = 100 * sum(ready) / len(ready)
        case = f"{CASE}, {rhythm}, jobs that found a warm spare"
        rows.append(Measurement(NAME, case, "share", share, "%"))
    return rows


def bench_sandbox(config: Config) -> list[Measurement]:
    runs = config.scale(300, 4)
    traced_runs = config.scale(100, 3)
    simulator = AerSimulator(method="statevector", max_parallel_threads=1)
    circuit: QuantumCircuit = qasm2.loads(GHZ5)

    def direct() -> None:
        simulator.run(circuit, shots=SHOTS).result().get_counts()

    rows: list[Measurement] = []
    # This sandbox also keeps the forkserver running for the traced ones.
    with Sandbox(SandboxLimits(), default_registry()) as box:
        cases = _cases(box, direct)
        for rhythm, pause_ms in RHYTHMS:
            samples = _interleaved(cases, runs, pause_ms)
            rows += latency(NAME, f"empty job round trip, {rhythm}", samples["empty"])
            rows += latency(NAME, f"{CASE}, Sandbox.execute, {rhythm}", samples["sandbox"])
            rows += latency(NAME, f"{CASE}, direct AerSimulator, {rhythm}", samples["direct"])
            rows.append(
                ratio(
                    NAME,
                    f"{CASE}, sandbox/direct, {rhythm}",
                    samples["sandbox"],
                    samples["direct"],
                    at_most=None,
                )
            )
        for rhythm, pause_ms in RHYTHMS:
            rows += _steps(rhythm, _traced(direct, traced_runs, pause_ms))
    return rows


BENCHMARKS = {NAME: bench_sandbox}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="qustody-bench-") as tmp:
        print(table(bench_sandbox(Config(Path(tmp), smoke="--smoke" in sys.argv[1:]))))

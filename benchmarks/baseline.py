"""End-to-end latency of one job through the gateway against Aer run directly.

A first measurement of what the gateway costs; the full benchmark suite grows
from here. Starts ``qustody serve --demo`` on a free port in a temporary data
directory, then interleaves, for GHZ-5 and GHZ-12 with 1024 shots:

- gateway: HTTP submit with a real token, policy, validation, encryption,
  audit, queue, sandbox, Aer, and the result fetched back (the SDK polls every
  2 ms, so polling adds at most that);
- direct: the same circuit on a warm ``AerSimulator`` in this process.

    .venv/bin/python benchmarks/baseline.py [--runs 40]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qiskit import QuantumCircuit, qasm2
from qiskit_aer import AerSimulator

from qustody.client import Client


def ghz(n: int) -> QuantumCircuit:
    qc = QuantumCircuit(n, n)
    qc.h(0)
    for i in range(n - 1):
        qc.cx(i, i + 1)
    qc.measure(range(n), range(n))
    return qc


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUSTODY_")}
        env["QUSTODY_DATA_DIR"] = str(Path(tmp) / "data")
        server = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "qustody.cli", "serve", "--demo", "--port", str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            token = ""
            assert server.stdout is not None
            for line in server.stdout:
                if "developer (alice)" in line:
                    token = re.sub(r".*QUSTODY_TOKEN=", "", line).strip()
                    break
            client = Client(f"http://127.0.0.1:{port}", token)
            deadline = time.monotonic() + 30
            while True:
                try:
                    client.health()
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            sim = AerSimulator(method="statevector", max_parallel_threads=1)
            print(f"{'circuit':8} {'path':8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
            for n in (5, 12):
                circuit = ghz(n)
                text = qasm2.dumps(circuit)
                sim.run(circuit, shots=1024).result()  # warm
                client.result(
                    client.wait(
                        client.submit(
                            text, backend="aer-statevector", shots=1024, project="research"
                        ).id,
                        poll_interval=0.002,
                    ).id
                )
                gateway, direct = [], []
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    job = client.submit(
                        text, backend="aer-statevector", shots=1024, project="research"
                    )
                    client.wait(job.id, poll_interval=0.002)
                    client.result(job.id)
                    gateway.append((time.perf_counter() - t0) * 1000)
                    t0 = time.perf_counter()
                    sim.run(circuit, shots=1024).result().get_counts()
                    direct.append((time.perf_counter() - t0) * 1000)
                for name, values in (("gateway", gateway), ("direct", direct)):
                    print(
                        f"GHZ-{n:<4} {name:8} {pct(values, 50):8.1f} {pct(values, 90):8.1f} "
                        f"{pct(values, 99):8.1f}"
                    )
                ratio = statistics.median(gateway) / statistics.median(direct)
                print(f"GHZ-{n:<4} ratio p50 gateway/direct: {ratio:.1f}")
        finally:
            server.terminate()
            server.wait(20)


if __name__ == "__main__":
    main()

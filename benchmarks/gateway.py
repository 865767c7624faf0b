"""Benchmarks through the real gateway: ``qustody serve`` in a subprocess, real HTTP.

- ``e2e``: one job end to end (HTTP submit with a real token, policy,
  validation, encryption, audit, queue, sandbox, Aer, result fetched back)
  against the same circuit on a warm ``AerSimulator`` in this process,
  interleaved, for GHZ-5 and GHZ-12 with 1024 shots.
- ``throughput``: jobs accepted per second with 8 concurrent keep-alive
  clients (no worker running, so execution does not compete), SQLite with one
  API process and with one per core, PostgreSQL with one per core, with the
  p99 submit latency (the load comes from :mod:`benchmarks.load`, which costs
  the gateway's two cores little); then the execution rate of the worker pool for
  GHZ-5 jobs, against the rate of the simulator alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
from qiskit import QuantumCircuit, qasm2
from qiskit_aer import AerSimulator

from benchmarks.harness import Config, Measurement, latency, rate, ratio
from benchmarks.load import build_post, hammer
from qustody.client import Client

ROOT = Path(__file__).resolve().parent.parent


def ghz(n: int) -> QuantumCircuit:
    qc = QuantumCircuit(n, n)
    qc.h(0)
    for i in range(n - 1):
        qc.cx(i, i + 1)
    qc.measure(range(n), range(n))
    return qc


@dataclass
class Gateway:
    url: str
    token: str
    process: subprocess.Popen[str]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def postgres_database(server: str) -> Iterator[str]:
    """A fresh database on ``server`` (a SQLAlchemy URL without a database), dropped after."""
    name = f"qustody_bench_{secrets.token_hex(4)}"
    admin = server.replace("postgresql+psycopg://", "postgresql://", 1).rstrip("/") + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server.rstrip('/')}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def running_gateway(
    workdir: Path,
    *,
    database_url: str | None = None,
    embedded: bool = True,
    api_processes: int = 1,
) -> Iterator[Gateway]:
    """``qustody serve --demo`` on a free port; yields its URL and a developer token."""
    data = workdir / f"gw-{secrets.token_hex(3)}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUSTODY_")}
    env["QUSTODY_DATA_DIR"] = str(data)
    # Throughput is measured, not the rate limits: one token sends thousands a second.
    for name in ("PRINCIPAL", "TENANT", "ADDRESS", "SIGN_IN"):
        env[f"QUSTODY_RATE_LIMIT_{name}_PER_SECOND"] = "1000000"
        env[f"QUSTODY_RATE_LIMIT_{name}_BURST"] = "10000000"
    if database_url:
        env["QUSTODY_DATABASE_URL"] = database_url
    port = _free_port()
    argv = [sys.executable, "-m", "qustody.cli", "serve", "--demo", "--port", str(port)]
    if not embedded:
        argv.append("--no-embedded")
    if api_processes != 1:
        argv += ["--api-processes", str(api_processes)]
    drain: threading.Thread | None = None
    process = subprocess.Popen(  # noqa: S603
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
    )
    try:
        token = ""
        assert process.stdout is not None
        for line in process.stdout:
            if "developer (alice)" in line:
                token = re.sub(r".*QUSTODY_TOKEN=", "", line).strip()
                break
        if not token:
            raise RuntimeError("the gateway did not start")
        # Drain the server's output so it never blocks on a full pipe.
        drain = threading.Thread(target=process.stdout.read, daemon=True)
        drain.start()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v1/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway did not become ready")
            time.sleep(0.05)
        yield Gateway(url, token, process)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        if drain is not None:
            drain.join(10)
        if process.stdout is not None:
            process.stdout.close()


def bench_e2e(config: Config) -> list[Measurement]:
    runs = config.scale(60, 3)
    rows: list[Measurement] = []
    sim = AerSimulator(method="statevector", max_parallel_threads=1)
    with running_gateway(config.workdir) as gateway, Client(gateway.url, gateway.token) as client:
        for n in (5, 12):
            circuit = ghz(n)
            text = qasm2.dumps(circuit)

            def through_gateway(text: str = text) -> None:
                job = client.submit(text, backend="aer-statevector", shots=1024, project="research")
                client.wait(job.id)
                client.result(job.id)

            def direct(circuit: QuantumCircuit = circuit) -> None:
                sim.run(circuit, shots=1024).result().get_counts()

            through_gateway()  # warm both paths
            direct()
            gateway_ms, direct_ms = [], []
            for _ in range(runs):
                t0 = time.perf_counter()
                through_gateway()
                gateway_ms.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                direct()
                direct_ms.append((time.perf_counter() - t0) * 1000)
            case = f"GHZ-{n}, 1024 shots"
            rows += latency("e2e gateway", case, gateway_ms)
            rows += latency("e2e direct Aer", case, direct_ms)
            rows.append(
                ratio(
                    "e2e",
                    case + ", gateway/direct",
                    gateway_ms,
                    direct_ms,
                    at_most=2.0 if n == 5 else None,
                )
            )
    return rows


def _database_cases(config: Config) -> Iterator[tuple[str, str | None, int]]:
    """(name, database URL, API processes): SQLite with one API process and
    with one per core; PostgreSQL with one per core."""
    cores = max(1, os.cpu_count() or 1)
    yield "SQLite", None, 1
    if cores > 1:
        yield "SQLite", None, cores
    if config.postgres:
        with postgres_database(config.postgres) as url:
            yield "PostgreSQL", url, cores


def bench_throughput(config: Config) -> list[Measurement]:
    seconds = 30.0 if not config.smoke else 1.0
    clients = 8 if not config.smoke else 2
    body = {
        "project": "research",
        "backend": "aer-statevector",
        "shots": 1024,
        "qasm": qasm2.dumps(ghz(5)),
    }
    rows: list[Measurement] = []
    for name, url, processes in _database_cases(config):
        with running_gateway(
            config.workdir, database_url=url, embedded=False, api_processes=processes
        ) as gateway:
            request = build_post(gateway.url, "/v1/jobs", gateway.token, body)
            hammer(gateway.url, request, clients=clients, seconds=min(2.0, seconds))  # warm
            started = time.perf_counter()
            load = hammer(gateway.url, request, clients=clients, seconds=seconds)
            elapsed = time.perf_counter() - started
        plural = "es" if processes > 1 else ""
        case = f"{name}, {processes} API process{plural}, {clients} clients, {seconds:g} s, GHZ-5"
        rows.append(
            rate(
                "submit",
                case,
                load.ok,
                elapsed,
                "jobs/s",
                at_least=1000 if name == "SQLite" else None,
            )
        )
        rows += [r for r in latency("submit latency", case, load.latencies_ms) if r.metric == "p99"]
        if load.refused:
            statuses = ", ".join(f"{k}: {v}" for k, v in sorted(load.statuses.items()))
            rows.append(
                Measurement(
                    "submit", f"{case} (statuses {statuses})", "refused", load.refused, "requests"
                )
            )
    rows += _execution_rate(config)
    return rows


def _execution_rate(config: Config) -> list[Measurement]:
    """Drain N queued GHZ-5 jobs with the embedded worker pool; compare with Aer alone."""
    count = config.scale(200, 4)
    circuit = ghz(5)
    text = qasm2.dumps(circuit)
    with running_gateway(config.workdir) as gateway, Client(gateway.url, gateway.token) as client:
        started = time.perf_counter()
        ids = [
            client.submit(text, backend="aer-statevector", shots=1024, project="research").id
            for _ in range(count)
        ]
        for job_id in ids:
            client.wait(job_id)
        elapsed = time.perf_counter() - started
    sim = AerSimulator(method="statevector", max_parallel_threads=1)
    sim.run(circuit, shots=1024).result()
    t0 = time.perf_counter()
    for _ in range(count):
        sim.run(circuit, shots=1024).result().get_counts()
    direct = time.perf_counter() - t0
    return [
        rate(
            "execute",
            f"worker pool, {count} GHZ-5 jobs, submit to last result",
            count,
            elapsed,
            "jobs/s",
            at_least=None,
        ),
        rate(
            "execute",
            f"Aer alone, {count} GHZ-5 runs, one thread",
            count,
            direct,
            "jobs/s",
            at_least=None,
        ),
    ]


BENCHMARKS = {"e2e": bench_e2e, "throughput": bench_throughput}

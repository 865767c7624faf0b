"""The benchmark suite's frame: what a measurement is, how results print and save.

A benchmark is a function ``(Config) -> list[Measurement]``. It measures, it
never asserts: a missed goal is reported (``met: false``), not raised, so the
suite cannot fail CI on a slow machine. ``Config.smoke`` asks for the tiniest
counts, which the test suite uses to keep the benchmark code from rotting.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Measurement:
    benchmark: str
    case: str
    metric: str
    value: float
    unit: str
    #: The goal as text (e.g. "<= 0.5") and whether it was met; None when the
    #: measurement has no goal of its own.
    goal: str | None = None
    met: bool | None = None


@dataclass(frozen=True, slots=True)
class Config:
    workdir: Path
    smoke: bool = False
    #: A PostgreSQL server URL (``postgresql+psycopg://user@host:port``) for
    #: benchmarks that compare with PostgreSQL; None skips those cases.
    postgres: str | None = None
    only: frozenset[str] = field(default_factory=frozenset)

    def scale(self, full: int, smoke: int) -> int:
        return smoke if self.smoke else full


Benchmark = Callable[[Config], list[Measurement]]


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def latency(
    benchmark: str,
    case: str,
    values_ms: Sequence[float],
    *,
    goals: dict[str, float] | None = None,
) -> list[Measurement]:
    """p50/p90/p99 rows (milliseconds); ``goals`` maps a metric to its upper bound."""
    rows = []
    for metric, p in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0)):
        value = percentile(values_ms, p)
        bound = (goals or {}).get(metric)
        rows.append(
            Measurement(
                benchmark,
                case,
                metric,
                value,
                "ms",
                None if bound is None else f"<= {bound:g}",
                None if bound is None else value <= bound,
            )
        )
    return rows


def rate(
    benchmark: str, case: str, count: int, seconds: float, unit: str, *, at_least: float | None
) -> Measurement:
    value = count / seconds if seconds > 0 else math.nan
    return Measurement(
        benchmark,
        case,
        "rate",
        value,
        unit,
        None if at_least is None else f">= {at_least:g}",
        None if at_least is None else value >= at_least,
    )


def ratio(
    benchmark: str, case: str, a: Sequence[float], b: Sequence[float], *, at_most: float | None
) -> Measurement:
    value = statistics.median(a) / statistics.median(b)
    return Measurement(
        benchmark,
        case,
        "p50 ratio",
        value,
        "x",
        None if at_most is None else f"<= {at_most:g}",
        None if at_most is None else value <= at_most,
    )


def environment() -> dict[str, object]:
    versions = {}
    for name in (
        "qiskit",
        "qiskit-aer",
        "fastapi",
        "uvicorn",
        "sqlalchemy",
        "cedarpy",
        "cryptography",
        "joserfc",
        "psycopg",
    ):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def table(rows: Sequence[Measurement]) -> str:
    """A Markdown table (it reads fine in a terminal and pastes into BENCHMARKS.md)."""
    lines = [
        "| benchmark | case | metric | value | unit | goal | met |",
        "|---|---|---|---:|---|---|---|",
    ]
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(
            f"| {r.benchmark} | {r.case} | {r.metric} | {_fmt(r.value)} | {r.unit} "
            f"| {r.goal or ''} | {met} |"
        )
    return "\n".join(lines)


def save(path: Path, rows: Sequence[Measurement], command: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "environment": environment(),
        "command": command,
        "results": [asdict(r) for r in rows],
    }
    path.write_text(json.dumps(document, indent=2, allow_nan=True) + "\n")

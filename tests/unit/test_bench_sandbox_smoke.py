"""The sandbox benchmark runs at smoke scale and returns well-formed measurements.

No timing is asserted: this only keeps the benchmark code from rotting.
"""

from __future__ import annotations

import math
from pathlib import Path

from benchmarks.harness import Config, Measurement
from benchmarks.sandbox import BENCHMARKS, CASE, RHYTHMS, STEPS, bench_sandbox


def test_bench_sandbox_smoke(tmp_path: Path) -> None:
    rows = bench_sandbox(Config(workdir=tmp_path, smoke=True))
    assert rows
    for row in rows:
        assert isinstance(row, Measurement)
        assert row.benchmark == "sandbox"
        assert row.case
        assert row.metric
        assert row.unit
        assert math.isfinite(row.value), row
        assert row.value >= 0, row
        assert (row.goal is None) == (row.met is None), row
    latencies = {(row.case, row.metric) for row in rows if row.unit == "ms"}
    for rhythm, _ in RHYTHMS:
        for case in (
            f"empty job round trip, {rhythm}",
            f"{CASE}, Sandbox.execute, {rhythm}",
            f"{CASE}, direct AerSimulator, {rhythm}",
        ):
            assert {(case, "p50"), (case, "p90"), (case, "p99")} <= latencies
        (ratio,) = [row for row in rows if row.case == f"{CASE}, sandbox/direct, {rhythm}"]
        assert ratio.metric == "p50 ratio"
        assert ratio.unit == "x"
        assert ratio.value > 0
        steps = [row.case for row in rows if row.case.startswith(f"{CASE}, {rhythm}, step: ")]
        assert steps == [f"{CASE}, {rhythm}, step: {what}" for _, _, what in STEPS]
        (share,) = [row for row in rows if row.metric == "share" and rhythm in row.case]
        assert share.unit == "%"
        assert 0 <= share.value <= 100


def test_the_benchmark_is_exported() -> None:
    assert set(BENCHMARKS) == {"sandbox"}
    assert BENCHMARKS["sandbox"] is bench_sandbox

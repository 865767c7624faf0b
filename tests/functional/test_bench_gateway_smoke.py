"""The gateway benchmarks run once with tiny counts, so their code cannot rot.
Nothing here looks at how fast anything was."""

from __future__ import annotations

import math
from pathlib import Path

from benchmarks.gateway import bench_e2e, bench_throughput
from benchmarks.harness import Config, Measurement, table


def _well_formed(rows: list[Measurement]) -> None:
    assert rows
    for row in rows:
        assert row.unit
        assert math.isfinite(row.value)
        assert row.value >= 0
        assert (row.goal is None) == (row.met is None)
    assert "| benchmark |" in table(rows)


def test_e2e_smoke(tmp_path: Path) -> None:
    rows = bench_e2e(Config(tmp_path, smoke=True))
    _well_formed(rows)
    assert {r.benchmark for r in rows} >= {"e2e gateway", "e2e direct Aer", "e2e"}


def test_throughput_smoke(tmp_path: Path, postgres_server: str) -> None:
    server = postgres_server.rsplit("/", 1)[0]
    rows = bench_throughput(Config(tmp_path, smoke=True, postgres=server))
    _well_formed(rows)
    cases = {r.case for r in rows if r.benchmark == "submit"}
    assert any(c.startswith("SQLite") for c in cases)
    assert any(c.startswith("PostgreSQL") for c in cases)

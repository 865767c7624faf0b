"""Run the benchmark suite: print a table, write a JSON file.

    python3 scripts/dev.py bench [--smoke] [--only e2e,policy] [--postgres URL] [--out FILE]

Nothing here fails on a slow machine: missed goals are reported, not raised.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.harness import Benchmark, Config, Measurement, save, table

#: Modules that export a ``BENCHMARKS`` dict, in the order they run.
MODULES = ("benchmarks.gateway", "benchmarks.sandbox", "benchmarks.micro", "benchmarks.merkle")
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432"


def registry() -> dict[str, Benchmark]:
    found: dict[str, Benchmark] = {}
    for name in MODULES:
        module = importlib.import_module(name)
        found.update(module.BENCHMARKS)
    return found


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts, to check it runs")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("QUSTODY_BENCH_PG", DEFAULT_POSTGRES),
        help="PostgreSQL server URL ('' to skip)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    benchmarks = registry()
    only = {n.strip() for n in args.only.split(",") if n.strip()}
    unknown = only - set(benchmarks)
    if unknown:
        parser.error(f"unknown benchmarks {sorted(unknown)}; choose from {sorted(benchmarks)}")
    out = args.out or Path("bench-results") / (
        datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + ("-smoke" if args.smoke else "") + ".json"
    )
    rows: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="qustody-bench-") as tmp:
        config = Config(
            Path(tmp), smoke=args.smoke, postgres=args.postgres or None, only=frozenset(only)
        )
        for name, bench in benchmarks.items():
            if only and name not in only:
                continue
            print(f"-- {name}", file=sys.stderr, flush=True)
            rows += bench(config)
    print(table(rows))
    save(out, rows, "python3 scripts/dev.py bench " + shlex.join(argv))
    print(f"\nwritten to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

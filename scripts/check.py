"""The whole test command: lint, format, types, import layers, then pytest.

Run through ``python3 scripts/dev.py test`` (which prepares the environment).
Extra arguments go to pytest, e.g. ``scripts/dev.py test -k sandbox``.

The whole suite runs on every core (pytest-xdist, at most four workers),
each test module on one worker so module-scoped gateways start once: most
of the suite waits on databases, sandboxes and subprocess gateways, so two
workers on two cores take a little over half the time of one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

STEPS: list[tuple[str, list[str]]] = [
    ("ruff check", [str(BIN / "ruff"), "check", "src", "tests", "scripts", "benchmarks"]),
    (
        "ruff format",
        [str(BIN / "ruff"), "format", "--check", "src", "tests", "scripts", "benchmarks"],
    ),
    ("mypy --strict", [str(BIN / "mypy")]),
    ("import layers", [str(BIN / "lint-imports")]),
]
#: pytest's arguments for the whole suite.
WHOLE_SUITE = ["-q", "-n", "auto", "--maxprocesses=4", "--dist=loadscope"]


def main(pytest_args: list[str]) -> int:
    if not pytest_args:
        for name, argv in STEPS:
            print(f"== {name}", flush=True)
            if subprocess.run(argv, cwd=ROOT, check=False).returncode != 0:
                print(f"== {name} failed", flush=True)
                return 1
    print("== pytest", flush=True)
    argv = [sys.executable, "-m", "pytest", *(pytest_args or WHOLE_SUITE)]
    return subprocess.run(argv, cwd=ROOT, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

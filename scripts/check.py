"""The whole test command: lint, format, types, import layers, then pytest.

Run through ``python3 scripts/dev.py test`` (which prepares the environment).
Extra arguments go to pytest, e.g. ``scripts/dev.py test -k sandbox``.
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


def main(pytest_args: list[str]) -> int:
    if not pytest_args:
        for name, argv in STEPS:
            print(f"== {name}", flush=True)
            if subprocess.run(argv, cwd=ROOT, check=False).returncode != 0:
                print(f"== {name} failed", flush=True)
                return 1
    print("== pytest", flush=True)
    argv = [sys.executable, "-m", "pytest", *(pytest_args or ["-q"])]
    return subprocess.run(argv, cwd=ROOT, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

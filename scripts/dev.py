#!/usr/bin/env python3
"""Bootstrap for the two README commands: ``serve`` and ``test``.

Needs only Python 3.11+. Creates a project-local virtual environment in
``.venv`` from ``requirements.lock`` (every package pinned and hash-checked),
re-installs when the lock file changes, then runs the requested command
inside it.

    python3 scripts/dev.py serve     # embedded gateway with a demo tenant
    python3 scripts/dev.py test      # lint, types, layers and the whole test suite
    python3 scripts/dev.py bench     # the benchmark suite: a table and a JSON file
    python3 scripts/dev.py run ARGS  # any command inside the environment
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
LOCK = ROOT / "requirements.lock"
STAMP = VENV / ".qustody-lock-sha256"


def _bin(name: str) -> Path:
    sub = "Scripts" if os.name == "nt" else "bin"
    return VENV / sub / name


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for path in (LOCK, ROOT / "pyproject.toml"):
        digest.update(path.read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def ensure_environment() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 (this script runs before the venv exists)
        sys.exit(f"Qustody needs Python 3.11 or newer; this is {sys.version.split()[0]}.")
    wanted = _fingerprint()
    if STAMP.exists() and STAMP.read_text().strip() == wanted:
        return
    print(f"qustody: preparing {VENV.relative_to(ROOT)} from {LOCK.name} ...", flush=True)
    if not _bin("python").exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    pip = [str(_bin("python")), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--require-hashes", "--no-deps", "-r", str(LOCK)], check=True)
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-build-isolation", "-e", str(ROOT)], check=True
    )
    STAMP.write_text(wanted + "\n")


def _exec(argv: list[str]) -> None:
    env = dict(os.environ, VIRTUAL_ENV=str(VENV))
    env["PATH"] = f"{_bin('python').parent}{os.pathsep}{env.get('PATH', '')}"
    os.chdir(ROOT)
    os.execvpe(argv[0], argv, env)


def main(args: list[str]) -> None:
    command = args[0] if args else "help"
    if command in {"help", "-h", "--help"}:
        print(__doc__)
        return
    ensure_environment()
    if command == "serve":
        _exec([str(_bin("qustody")), "serve", "--embedded", "--demo", *args[1:]])
    elif command == "test":
        _exec([str(_bin("python")), str(ROOT / "scripts" / "check.py"), *args[1:]])
    elif command == "bench":
        _exec([str(_bin("python")), "-m", "benchmarks.run", *args[1:]])
    elif command == "run":
        _exec([str(_bin(args[1])) if _bin(args[1]).exists() else args[1], *args[2:]])
    else:
        sys.exit(f"unknown command {command!r}; try: serve, test, bench, run")


if __name__ == "__main__":
    main(sys.argv[1:])

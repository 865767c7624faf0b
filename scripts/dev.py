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
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
LOCK = ROOT / "requirements.lock"
STAMP = VENV / ".qustody-lock-sha256"
# SoftHSM2, the PKCS#11 token the HSM key provider's tests run against
# (tests/softhsm.py looks in the same places).
SOFTHSM_MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)
SOFTHSM_PACKAGE = "softhsm2"  # Debian and Ubuntu: the library and softhsm2-util


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


def _softhsm_installed() -> bool:
    has_module = any(Path(path).is_file() for path in SOFTHSM_MODULES)
    return has_module and shutil.which("softhsm2-util") is not None


def ensure_softhsm() -> None:
    """Install SoftHSM2 with apt-get when it is missing and this is root on
    Debian or Ubuntu; otherwise say that the PKCS#11 tests will be skipped."""
    if _softhsm_installed():
        return
    apt = shutil.which("apt-get")
    if apt is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        print(
            "qustody: note: SoftHSM2 is not installed, so the PKCS#11 tests will be skipped "
            "(and fail under CI=true); install it with `sudo apt-get install softhsm2`, "
            "`dnf install softhsm` or `brew install softhsm`",
            flush=True,
        )
        return
    print(
        f"qustody: installing SoftHSM2 for the PKCS#11 tests: apt-get install {SOFTHSM_PACKAGE}",
        flush=True,
    )

    def apt_get(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [apt, "-qq", *args],
            check=False,
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    install = ("install", "-y", "--no-install-recommends", SOFTHSM_PACKAGE)
    done = apt_get(*install)
    if done.returncode != 0:  # stale or missing package lists: refresh them once
        apt_get("update")
        done = apt_get(*install)
    if done.returncode != 0 or not _softhsm_installed():
        print(done.stdout[-2000:], end="")
        print(
            f"qustody: note: installing {SOFTHSM_PACKAGE} failed, so the PKCS#11 tests will "
            "be skipped (and fail under CI=true)",
            flush=True,
        )


OIDC_PROVIDER = ROOT / "tests" / "oidc_provider"  # the OpenID provider the tests run against


def ensure_oidc_provider() -> None:
    """``npm ci`` the test OpenID provider (panva/oidc-provider) when its
    packages are missing or its lock file changed; without npm, say that the
    OpenID Connect tests will be skipped."""
    lock = OIDC_PROVIDER / "package-lock.json"
    stamp = OIDC_PROVIDER / "node_modules" / ".qustody-lock-sha256"
    wanted = hashlib.sha256(lock.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == wanted:
        return
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        print(
            "qustody: note: Node.js and npm are not installed, so the OpenID Connect tests "
            "(a real provider, tests/oidc_provider) will be skipped (and fail under CI=true); "
            "install Node.js 20 or newer",
            flush=True,
        )
        return
    print("qustody: installing the test OpenID provider: npm ci in tests/oidc_provider", flush=True)
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=OIDC_PROVIDER,
        check=False,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if done.returncode != 0:
        print(done.stdout[-2000:], end="")
        print(
            "qustody: note: npm ci failed, so the OpenID Connect tests will be skipped "
            "(and fail under CI=true)",
            flush=True,
        )
        return
    stamp.write_text(wanted + "\n")


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
    if command in {"serve", "test", "bench"}:
        ensure_softhsm()
    if command == "test":
        ensure_oidc_provider()
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

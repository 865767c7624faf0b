"""Helpers shared by the integration and functional tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import Engine, create_engine

from qustody.api.app import Runtime
from qustody.domain.models import Principal, RequestContext
from qustody.domain.vocabulary import DataClass, Role
from qustody.settings import Settings, load_settings


@dataclass
class Tenancy:
    """A tenant ``acme`` with project ``research`` and one principal per role,
    plus a second tenant ``globex`` to test isolation against."""

    runtime: Runtime
    tenant_admin: Principal
    developer: Principal
    viewer: Principal
    outsider: Principal  # developer in tenant globex
    project_id: str
    outsider_project_id: str

    def token_for(self, name: str, tenant: str = "acme") -> str:
        return self.runtime.services.admin.operator_token(name, tenant).token

    def principal(self, name: str, tenant: str = "acme") -> Principal:
        return self.runtime.services.tokens.authenticate(self.token_for(name, tenant))


def ctx() -> RequestContext:
    return RequestContext(request_id="req_test", client_addr="127.0.0.1", user_agent="pytest")


def seed(runtime: Runtime) -> Tenancy:
    services = runtime.services
    admin = services.admin
    admin.init_platform("root")
    root = services.tokens.authenticate(admin.operator_token("root").token)
    projects: dict[str, str] = {}
    for tenant, tadmin in (("acme", "acme-admin"), ("globex", "globex-admin")):
        admin.create_tenant(root, ctx(), tenant, tadmin)
        boss = services.tokens.authenticate(admin.operator_token(tadmin, tenant).token)
        project = admin.create_project(boss, ctx(), "research", DataClass.INTERNAL)
        projects[tenant] = project.id
        for name, role in (("dev", Role.DEVELOPER), ("view", Role.VIEWER)):
            admin.add_member(
                boss, ctx(), principal_name=f"{tenant}-{name}", role=role, project_ref="research"
            )
    tenancy = Tenancy(runtime, None, None, None, None, projects["acme"], projects["globex"])  # type: ignore[arg-type]
    tenancy.tenant_admin = tenancy.principal("acme-admin")
    tenancy.developer = tenancy.principal("acme-dev")
    tenancy.viewer = tenancy.principal("acme-view")
    tenancy.outsider = tenancy.principal("globex-dev", "globex")
    return tenancy


#: Tests send hundreds of requests a second from one address and principal:
#: limits far above that (the rate-limit tests set their own, small ones).
TEST_RATE_LIMITS: dict[str, object] = {
    f"rate_limit_{name}_{unit}": value
    for name in ("principal", "tenant", "address", "sign_in")
    for unit, value in (("per_second", 100_000.0), ("burst", 1_000_000))
}


def make_settings(tmp_path: Path, database_url: str, **overrides: object) -> Settings:
    return load_settings(  # type: ignore[arg-type]
        {},
        data_dir=tmp_path / "data",
        database_url=database_url,
        embedded_worker=False,
        lease_seconds=2.0,
        idle_poll_seconds=0.5,
        **{**TEST_RATE_LIMITS, **overrides},
    )


ROLE_PRINCIPALS = {
    "tenant-admin": ("acme-admin", "acme"),
    "developer": ("acme-dev", "acme"),
    "viewer": ("acme-view", "acme"),
    "outsider": ("globex-dev", "globex"),
    "platform-admin": ("root", "platform"),
}


@dataclass
class Gateway:
    url: str
    tenancy: Tenancy
    data_dir: Path
    database_url: str

    def token_for(self, role: str) -> str:
        name, tenant = ROLE_PRINCIPALS[role]
        return self.tenancy.token_for(name, tenant)

    @property
    def tenant_admin_token(self) -> str:
        return self.token_for("tenant-admin")

    @property
    def developer_token(self) -> str:
        return self.token_for("developer")

    @property
    def viewer_token(self) -> str:
        return self.token_for("viewer")

    @property
    def project_id(self) -> str:
        return self.tenancy.project_id

    def env(self, token: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUSTODY_")}
        env.update(
            QUSTODY_URL=self.url,
            QUSTODY_DATA_DIR=str(self.data_dir),
            QUSTODY_DATABASE_URL=self.database_url,
        )
        env.update({f"QUSTODY_{k.upper()}": str(v) for k, v in TEST_RATE_LIMITS.items()})
        if token:
            env["QUSTODY_TOKEN"] = token
        return env


def qustody(gateway: Gateway, token: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real CLI against ``gateway`` as the holder of ``token``."""
    return subprocess.run(
        [sys.executable, "-m", "qustody.cli", *args],
        env=gateway.env(token),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_ready(url: str, server: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    """Until ``url`` answers its health check; the server's log tail if it dies first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(log.read_text()[-3000:])
        time.sleep(0.1)


def inspection_engine(database_url: str) -> Engine:
    """An engine for a test that inspects everything stored: on PostgreSQL its
    connections default to the ``system`` row-level security scope, which the
    gateway's own transactions never inherit (each sets its scope)."""
    if database_url.startswith("sqlite"):
        return create_engine(database_url)
    return create_engine(database_url, connect_args={"options": "-c qustody.tenant_id=system"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- circuits the tests share ------------------------------------------------------------


def ghz_qasm2(n: int) -> str:
    """An n-qubit GHZ state, measured, in OpenQASM 2."""
    chain = "".join(f"cx q[{i}], q[{i + 1}];\n" for i in range(n - 1))
    return (
        f'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[{n}];\ncreg c[{n}];\n'
        f"h q[0];\n{chain}measure q -> c;\n"
    )


def ghz_qasm3(n: int) -> str:
    """The same GHZ state in OpenQASM 3."""
    chain = "".join(f"cx q[{i}], q[{i + 1}];\n" for i in range(n - 1))
    return (
        f'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[{n}] q;\nbit[{n}] c;\n'
        f"h q[0];\n{chain}c = measure q;\n"
    )


def slow_qasm2(qubits: int, layers: int) -> str:
    """A deep statevector circuit that keeps a sandbox busy for a few seconds."""
    body = "".join(
        f"h q[{i % qubits}];\ncx q[{i % qubits}], q[{(i + 1) % qubits}];\n" for i in range(layers)
    )
    return (
        f'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[{qubits}];\ncreg c[{qubits}];\n'
        f"{body}measure q -> c;\n"
    )

"""Stand-ins for what lies outside this machine, and a gateway in a thread.

``CiIssuer`` plays a CI platform's OIDC issuer (GitHub Actions at
token.actions.githubusercontent.com): a discovery document and a JWKS served
over real HTTP on loopback, and tokens signed with joserfc carrying the claims
GitHub puts in its tokens. ``LiveGateway`` serves a :class:`Runtime` built on
any database (SQLite or PostgreSQL) with uvicorn on a loopback port, so HTTP
tests run on both.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from joserfc import jwt
from joserfc.jwk import RSAKey

from jwks_issuer import LoopbackIssuer
from qustody.api.app import Runtime, build_runtime, create_app
from support import Tenancy, make_settings, seed

CI_AUDIENCE = "https://qustody.example/acme"


class CiIssuer(LoopbackIssuer):
    """A CI platform's issuer on loopback, with tokens like GitHub Actions'."""

    def __init__(self) -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": "ci-1", "use": "sig"})
        super().__init__([self.key], {"id_token_signing_alg_values_supported": ["RS256"]})

    def token(
        self,
        *,
        repository: str = "acme/app",
        ref: str = "refs/heads/main",
        environment: str | None = "prod",
        audience: str | list[str] = CI_AUDIENCE,
        lifetime: int = 300,
        key: RSAKey | None = None,
        **claims: object,
    ) -> str:
        """A token as a GitHub Actions job gets it (``sub`` built the same way)."""
        now = int(time.time())
        sub = f"repo:{repository}:" + (
            f"environment:{environment}" if environment else f"ref:{ref}"
        )
        body: dict[str, object] = {
            "iss": self.url,
            "aud": audience,
            "sub": sub,
            "repository": repository,
            "repository_owner": repository.split("/")[0],
            "ref": ref,
            "environment": environment,
            "workflow": "ci",
            "event_name": "push",
            "jti": f"ci-{now}-{repository}-{ref}",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
        }
        body.update(claims)
        signer = key or self.key
        header = {"alg": "RS256", "kid": signer.kid, "typ": "JWT"}
        return jwt.encode(
            header, {k: v for k, v in body.items() if v is not None}, signer, algorithms=["RS256"]
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveGateway:
    """A gateway app on a loopback port, in this process, with its runtime."""

    def __init__(self, runtime: Runtime, url: str, server: uvicorn.Server) -> None:
        self.runtime = runtime
        self.url = url
        self._server = server

    @property
    def services(self) -> Any:
        return self.runtime.services

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


@contextmanager
def live_gateway(
    tmp_path: Path, database_url: str, **overrides: object
) -> Iterator[tuple[LiveGateway, Tenancy]]:
    """Seed a runtime on ``database_url`` (settings ``overrides``) and serve it
    over HTTP on loopback.

    ``public_url`` is the address served, as DPoP's ``htu`` needs."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = make_settings(tmp_path, database_url, public_url=url, **overrides)
    runtime = build_runtime(settings)
    tenancy = seed(runtime)
    app = create_app(settings, runtime=runtime)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test gateway did not start")
        time.sleep(0.02)
    try:
        yield LiveGateway(runtime, url, server), tenancy
    finally:
        server.should_exit = True
        thread.join(30)
        runtime.close()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}

"""A real OpenID provider for the tests: panva/oidc-provider (tests/oidc_provider),
started on loopback, driven headlessly with httpx (no browser)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx

PROVIDER_DIR = Path(__file__).resolve().parent / "oidc_provider"
MFA_ACR = "urn:qustody:test:mfa"
PWD_ACR = "urn:qustody:test:pwd"


def oidc_provider_problem() -> str | None:
    """Why the test provider cannot run here, or None."""
    if shutil.which("node") is None:
        return "Node.js is not installed, so the OpenID provider tests are skipped"
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        return (
            "the test OpenID provider is not installed; run `python3 scripts/dev.py test` "
            "(it runs `npm ci` in tests/oidc_provider)"
        )
    return None


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def claims_of(jwt: str) -> dict[str, Any]:
    """A JWT's claims, unverified (for assertions only)."""
    payload = jwt.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


def header_of(jwt: str) -> dict[str, Any]:
    head = jwt.split(".")[0]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    return decoded


@dataclass
class TestIdp:
    """The running provider and its test-only controls."""

    __test__ = False  # not a test class, despite its name

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def control(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = httpx.post(f"{self.url}/test/{path}", json=body or {}, timeout=30)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def add_client(self, **client: Any) -> None:
        self.control("clients", client)

    def add_user(self, user_id: str, **claims: Any) -> str:
        self.control("users", {"id": user_id, **claims})
        return user_id

    def disable(self, user_id: str) -> None:
        self.control(f"users/{user_id}/disable")

    def enable(self, user_id: str) -> None:
        self.control(f"users/{user_id}/enable")

    def rotate(self, *, retire: bool = False) -> list[str]:
        kids: list[str] = self.control("rotate", {"retire": retire})["keys"]
        return kids

    def id_token_ttl(self, seconds: int) -> None:
        self.control("config", {"id_token_ttl": seconds})

    def tamper(self, *, key: str = "current", **claims: Any) -> None:
        """The next ID token the token endpoint returns gets these claims
        (None removes one), signed by the current key or a stranger's."""
        self.control("tamper", {"claims": claims, "key": key})

    def keys(self) -> list[dict[str, Any]]:
        state: list[dict[str, Any]] = httpx.get(f"{self.url}/test/state", timeout=30).json()["keys"]
        return state

    def sign_in(
        self,
        browser: httpx.Client,
        authorization_url: str,
        *,
        login: str,
        amr: str = "pwd",
        acr: str | None = None,
    ) -> str:
        """Go through the provider's sign-in from ``authorization_url`` as a
        browser would; return the redirect back to the client (with ``code``
        and ``state``, or ``error``), not followed."""
        url = authorization_url
        for _ in range(12):
            if not url.startswith(self.url):
                return url
            path = urlsplit(url).path
            if path.startswith("/interaction/") and not path.endswith("/login"):
                details = browser.get(url)
                if details.status_code == 200 and details.json()["prompt"]["name"] == "login":
                    form = {"login": login, "amr": amr}
                    if acr:
                        form["acr"] = acr
                    response = browser.post(url + "/login", data=form)
                else:
                    response = details
            else:
                response = browser.get(url)
            if response.status_code not in (302, 303):
                raise AssertionError(
                    f"the provider answered {response.status_code}: {response.text}"
                )
            url = urljoin(url, response.headers["location"])
        raise AssertionError("the sign-in did not come back to the client")

    def code_flow(
        self,
        client_id: str,
        *,
        login: str,
        redirect_uri: str = "http://127.0.0.1:9/callback",
        client_secret: str | None = None,
        amr: str = "pwd",
        acr: str | None = None,
        nonce: str = "n-0S6_WzA2Mj",
        extra: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """A whole authorization code flow with PKCE as ``client_id``; the
        token response (``id_token`` among others)."""
        meta = httpx.get(f"{self.url}/.well-known/openid-configuration", timeout=30).json()
        verifier, challenge = pkce_pair()
        query = {
            "client_id": client_id,
            "response_type": "code",
            "scope": "openid email profile groups",
            "redirect_uri": redirect_uri,
            "state": "s",
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            **(extra or {}),
        }
        with httpx.Client(timeout=30) as browser:
            back = self.sign_in(
                browser,
                meta["authorization_endpoint"] + "?" + urlencode(query),
                login=login,
                amr=amr,
                acr=acr,
            )
        params = {k: v[0] for k, v in parse_qs(urlsplit(back).query).items()}
        if "code" not in params:
            raise AssertionError(f"no code: {params}")
        form = {
            "grant_type": "authorization_code",
            "code": params["code"],
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        auth = None
        if client_secret is None:
            form["client_id"] = client_id
        else:
            auth = httpx.BasicAuth(client_id, client_secret)
        response = httpx.post(meta["token_endpoint"], data=form, auth=auth, timeout=30)
        response.raise_for_status()
        tokens: dict[str, Any] = response.json()
        return tokens

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def start_idp(workdir: Path, timeout: float = 60) -> TestIdp:
    """Start the provider on a free loopback port; wait until it says ready."""
    log = workdir / "oidc-provider.log"
    out = log.open("wb")
    process = subprocess.Popen(
        ["node", str(PROVIDER_DIR / "server.js"), "--port", "0"],
        cwd=PROVIDER_DIR,
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NODE_ENV": "test"},
    )
    out.close()
    deadline = time.monotonic() + timeout
    while True:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("ready "):
                return TestIdp(line.split()[1], process, log)
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(
                "the test OpenID provider did not start:\n" + log.read_text()[-3000:]
            )
        time.sleep(0.05)


# -- a gateway's configuration for the test provider --------------------------------

#: The clients the tests register: the gateway's (confidential), the CLI's
#: (native, public) and an unrelated application of the same provider.
WEB, CLI, OTHER = "qustody-web", "qustody-cli", "other-app"
WEB_SECRET = "web-secret-" + "x" * 24
OTHER_SECRET = "other-secret-" + "y" * 24


def providers_file(tmp_path: Path, idp: TestIdp, **overrides: Any) -> Path:
    secret = tmp_path / "web-secret"
    secret.write_text(WEB_SECRET)
    secret.chmod(0o600)
    provider = {
        "name": "test",
        "display_name": "Test IdP",
        "issuer": idp.url,
        "client_id": WEB,
        "client_secret_file": str(secret),
        "cli_client_id": CLI,
        "scopes": ["openid", "email", "profile", "groups"],
        "tenant": {"claim": "org", "values": {"acme-corp": "acme", "globex-inc": "globex"}},
        "roles": [
            {
                "claim": "groups",
                "value": "quantum-devs",
                "role": "developer",
                "project": "research",
            },
            {"claim": "groups", "value": "qustody-admins", "role": "tenant-admin"},
        ],
        "mfa": {"acr": [MFA_ACR]},
        **overrides,
    }
    path = tmp_path / "oidc-providers.json"
    path.write_text(json.dumps({"providers": [provider]}))
    return path


def register_clients(idp: TestIdp, redirect_uri: str) -> None:
    idp.add_client(
        client_id=WEB,
        client_secret=WEB_SECRET,
        redirect_uris=[redirect_uri],
        response_types=["code"],
        grant_types=["authorization_code"],
        token_endpoint_auth_method="client_secret_basic",
    )
    idp.add_client(
        client_id=CLI,
        application_type="native",
        token_endpoint_auth_method="none",
        redirect_uris=["http://127.0.0.1/callback"],
        response_types=["code"],
        grant_types=["authorization_code"],
    )
    idp.add_client(
        client_id=OTHER,
        client_secret=OTHER_SECRET,
        redirect_uris=["http://127.0.0.1:9/callback"],
        response_types=["code"],
        grant_types=["authorization_code"],
        token_endpoint_auth_method="client_secret_basic",
    )

"""Single sign-on over real HTTP: a gateway (``qustody serve``) configured with a
real OpenID provider (panva/oidc-provider), both on loopback; the browser is
httpx, the CLI is the real ``qustody login``."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import select, update

from oidc import (
    CLI,
    MFA_ACR,
    OTHER,
    OTHER_SECRET,
    WEB_SECRET,
    TestIdp,
    claims_of,
    header_of,
    providers_file,
    register_clients,
)
from qustody.api.app import Runtime, build_runtime
from qustody.storage import models as m
from support import Gateway, auth, free_port, make_settings, seed, wait_ready

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
#: Every secret the tests see; none may reach the server log or the audit log.
SEEN: set[str] = {WEB_SECRET}


class SsoGateway:
    def __init__(self, gateway: Gateway, runtime: Runtime, log: Path, root: Path) -> None:
        self.gateway = gateway
        self.runtime = runtime
        self.log = log
        self.root = root

    @property
    def url(self) -> str:
        return self.gateway.url


def _debug_site(directory: Path) -> Path:
    """Every logger of the gateway's processes at DEBUG, so the log check means something."""
    directory.mkdir()
    (directory / "sitecustomize.py").write_text(
        textwrap.dedent(
            """\
            import logging, sys
            logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
            logging.getLogger("sqlalchemy").setLevel(logging.DEBUG)
            """
        )
    )
    return directory


@pytest.fixture(scope="module")
def sso(tmp_path_factory: pytest.TempPathFactory, oidc_idp: TestIdp) -> Iterator[SsoGateway]:
    root = tmp_path_factory.mktemp("oidc-gateway")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    register_clients(oidc_idp, url + "/v1/auth/callback")
    database_url = f"sqlite:///{root / 'data' / 'qustody.db'}"
    runtime = build_runtime(make_settings(root, database_url, public_url=url))
    tenancy = seed(runtime)
    gateway = Gateway(url, tenancy, root / "data", database_url)
    env = gateway.env()
    env.update(
        QUSTODY_OIDC_PROVIDERS_FILE=str(providers_file(root, oidc_idp)),
        QUSTODY_JWKS_MIN_REFRESH_SECONDS="0",
        QUSTODY_JWT_LEEWAY_SECONDS="0",
        PYTHONPATH=os.pathsep.join(
            p for p in (str(_debug_site(root / "site")), env.get("PYTHONPATH")) if p
        ),
    )
    log = root / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "qustody.cli", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(url, server, log, timeout=120)
        yield SsoGateway(gateway, runtime, log, root)
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        runtime.close()


def new_user(idp: TestIdp, *, groups: list[str] | None = None) -> str:
    user = f"p{secrets.token_hex(4)}"
    groups = ["quantum-devs"] if groups is None else groups
    return idp.add_user(user, email=f"{user}@acme.example", org="acme-corp", groups=groups)


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def browser_login(
    sso: SsoGateway,
    idp: TestIdp,
    user: str,
    *,
    browser: httpx.Client | None = None,
    accept: str = "application/json",
    **sign_in: Any,
) -> tuple[httpx.Response, str]:
    """Start at the gateway, sign in at the provider, come back: the callback's
    answer and the callback URL."""
    own = browser is None
    client = browser or httpx.Client(timeout=30)
    try:
        start = client.get(f"{sso.url}/v1/auth/login/test")
        assert start.status_code == 302, start.text
        back = idp.sign_in(client, start.headers["location"], login=user, **sign_in)
        assert back.startswith(f"{sso.url}/v1/auth/callback?")
        SEEN.add(query_of(back).get("code", "-"))
        answer = client.get(back, headers={"Accept": accept})
        if answer.status_code == 200 and accept == "application/json":
            SEEN.add(answer.json()["token"])
        return answer, back
    finally:
        if own:
            client.close()


def exchange(sso: SsoGateway, id_token: str) -> httpx.Response:
    SEEN.add(id_token)
    response = httpx.post(
        f"{sso.url}/v1/auth/token",
        data={
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": id_token,
            "subject_token_type": ID_TOKEN_TYPE,
        },
        timeout=30,
    )
    if response.status_code == 200:
        SEEN.add(response.json()["access_token"])
    return response


def last_failure(sso: SsoGateway) -> m.AuditEvent:
    with sso.runtime.services.db.read() as session:
        event = session.scalar(
            select(m.AuditEvent)
            .where(m.AuditEvent.event_type == "auth:fail")
            .order_by(m.AuditEvent.seq.desc())
            .limit(1)
        )
    assert event is not None
    return event


def test_providers_are_listed(sso: SsoGateway, oidc_idp: TestIdp) -> None:
    listing = httpx.get(f"{sso.url}/v1/auth/providers", timeout=30)
    assert listing.status_code == 200
    (provider,) = listing.json()["items"]
    assert provider == {
        "name": "test",
        "display_name": "Test IdP",
        "issuer": oidc_idp.url,
        "login_url": f"{sso.url}/v1/auth/login/test",
        "cli_client_id": CLI,
        "scopes": ["openid", "email", "profile", "groups"],
        "mfa_acr_values": [MFA_ACR],
    }
    missing = httpx.get(f"{sso.url}/v1/auth/login/nobody", timeout=30)
    assert missing.status_code == 404
    assert missing.json()["code"] == "unknown_provider"


def test_browser_login_with_pkce(sso: SsoGateway, oidc_idp: TestIdp) -> None:
    user = new_user(oidc_idp)
    with httpx.Client(timeout=30) as browser:
        start = browser.get(f"{sso.url}/v1/auth/login/test")
        assert start.status_code == 302
        location = start.headers["location"]
        assert location.startswith(f"{oidc_idp.url}/auth?")
        query = query_of(location)
        assert query["code_challenge_method"] == "S256"
        assert len(query["code_challenge"]) == 43
        assert query["redirect_uri"] == f"{sso.url}/v1/auth/callback"
        assert len(query["state"]) >= 43
        assert len(query["nonce"]) >= 43
        cookie = start.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "samesite=lax" in cookie.lower()
        assert "Path=/v1/auth/callback" in cookie
        back = oidc_idp.sign_in(browser, location, login=user, amr="pwd otp", acr=MFA_ACR)
        assert query_of(back)["iss"] == oidc_idp.url  # RFC 9207, checked by the gateway
        answer = browser.get(back)
        assert answer.status_code == 200, answer.text
        signed_in = answer.json()
        SEEN.add(signed_in["token"])
        assert signed_in["token_type"] == "Bearer"
        claims = claims_of(signed_in["token"])
        assert claims["acr"] == MFA_ACR
        assert set(claims["amr"]) == {"pwd", "otp", "mfa"}
        assert claims["exp"] - claims["iat"] <= 900
        assert "auth_time" in claims
        projects = httpx.get(f"{sso.url}/v1/projects", headers=auth(signed_in["token"]), timeout=30)
        assert projects.status_code == 200
        assert [p["name"] for p in projects.json()["items"]] == ["research"]
        # The state is single use.
        replay = browser.get(back)
        assert replay.status_code == 401
        assert replay.json()["code"] == "invalid_login_state"
        assert signed_in["token"] not in replay.text
    # A browser gets a page without scripts.
    page, _ = browser_login(sso, oidc_idp, user, accept="text/html")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == "default-src 'none'"
    assert "<script" not in page.text
    SEEN.add(page.text.split("<pre", 1)[1].split(">", 1)[1].split("</pre>", 1)[0])


def test_the_callback_must_come_back_to_the_same_browser(
    sso: SsoGateway, oidc_idp: TestIdp
) -> None:
    user = new_user(oidc_idp)
    with httpx.Client(timeout=30) as victim_browser:
        start = victim_browser.get(f"{sso.url}/v1/auth/login/test")
        back = oidc_idp.sign_in(victim_browser, start.headers["location"], login=user)
    SEEN.add(query_of(back)["code"])
    # Someone else's browser, lured to the callback URL (login CSRF).
    answer = httpx.get(back, timeout=30)
    assert answer.status_code == 401
    assert answer.json()["code"] == "invalid_login_state"


def test_expired_login_request(sso: SsoGateway, oidc_idp: TestIdp) -> None:
    user = new_user(oidc_idp)
    with httpx.Client(timeout=30) as browser:
        start = browser.get(f"{sso.url}/v1/auth/login/test")
        state = query_of(start.headers["location"])["state"]
        with sso.runtime.services.db.write() as session:
            session.execute(
                update(m.LoginRequest)
                .where(m.LoginRequest.state == state)
                .values(expires_at=m.LoginRequest.created_at)
            )
        back = oidc_idp.sign_in(browser, start.headers["location"], login=user)
        SEEN.add(query_of(back)["code"])
        answer = browser.get(back)
    assert answer.status_code == 401
    assert answer.json()["code"] == "invalid_login_state"
    assert "expired" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        ({"nonce": "another-sign-in"}, "nonce_mismatch"),
        ({"aud": "someone-else"}, "wrong_audience"),
        ({"key": "stranger"}, "unknown_key"),
        ({"exp": 1_000_000_000, "iat": 999_999_000}, "expired_token"),
        ({"iss": "http://127.0.0.1:9"}, "wrong_issuer"),
    ],
)
def test_a_bad_id_token_from_the_provider_is_refused(
    sso: SsoGateway, oidc_idp: TestIdp, tamper: dict[str, Any], code: str
) -> None:
    user = new_user(oidc_idp)
    with httpx.Client(timeout=30) as browser:
        start = browser.get(f"{sso.url}/v1/auth/login/test")
        oidc_idp.tamper(**tamper)
        back = oidc_idp.sign_in(browser, start.headers["location"], login=user)
        SEEN.add(query_of(back)["code"])
        answer = browser.get(back)
    assert answer.status_code == 401, answer.text
    assert answer.json()["code"] == code
    assert answer.headers["www-authenticate"].startswith("Bearer")
    failure = last_failure(sso)
    assert failure.reason == f"{code} provider=test"
    assert failure.outcome == "failure"


def test_a_user_disabled_at_the_provider_cannot_sign_in(sso: SsoGateway, oidc_idp: TestIdp) -> None:
    user = new_user(oidc_idp)
    first, _ = browser_login(sso, oidc_idp, user)
    assert first.status_code == 200
    oidc_idp.disable(user)
    answer, back = browser_login(sso, oidc_idp, user)
    assert query_of(back)["error"] == "access_denied"
    assert answer.status_code == 401
    assert answer.json()["code"] == "idp_refused"
    assert last_failure(sso).reason == "idp_refused provider=test"


def test_a_principal_deactivated_in_qustody_cannot_sign_in(
    sso: SsoGateway, oidc_idp: TestIdp
) -> None:
    user = new_user(oidc_idp)
    first, _ = browser_login(sso, oidc_idp, user)
    signed_in = first.json()
    with sso.runtime.services.db.write() as session:
        session.execute(
            update(m.Principal)
            .where(m.Principal.id == signed_in["principal_id"])
            .values(active=False)
        )
    answer, _ = browser_login(sso, oidc_idp, user)
    assert answer.status_code == 403
    assert answer.json()["code"] == "principal_inactive"
    failure = last_failure(sso)
    assert failure.actor_id == signed_in["principal_id"]
    assert failure.tenant_id == signed_in["tenant_id"]
    # Its earlier token stopped working too.
    refused = httpx.get(f"{sso.url}/v1/projects", headers=auth(signed_in["token"]), timeout=30)
    assert refused.status_code == 401


def test_token_exchange_of_an_id_token(sso: SsoGateway, oidc_idp: TestIdp) -> None:
    user = new_user(oidc_idp)
    answer = exchange(sso, oidc_idp.code_flow(CLI, login=user, amr="pwd hwk")["id_token"])
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert 0 < body["expires_in"] <= 900
    assert claims_of(body["access_token"])["amr"] == ["pwd", "hwk", "mfa"]
    projects = httpx.get(f"{sso.url}/v1/projects", headers=auth(body["access_token"]), timeout=30)
    assert projects.status_code == 200
    # An ID token for another application of the same provider.
    other = oidc_idp.code_flow(OTHER, login=user, client_secret=OTHER_SECRET)
    refused = exchange(sso, other["id_token"])
    assert refused.status_code == 400
    assert refused.json()["code"] == "invalid_grant"
    assert last_failure(sso).reason == "wrong_audience provider=test"


def test_an_expired_id_token_is_refused(sso: SsoGateway, oidc_idp: TestIdp) -> None:
    user = new_user(oidc_idp)
    oidc_idp.id_token_ttl(1)
    try:
        id_token = oidc_idp.code_flow(CLI, login=user)["id_token"]
    finally:
        oidc_idp.id_token_ttl(600)
    while time.time() < claims_of(id_token)["exp"] + 1:
        time.sleep(0.2)
    refused = exchange(sso, id_token)
    assert refused.status_code == 400
    assert "expired" in refused.json()["detail"]
    assert last_failure(sso).reason == "expired_token provider=test"


def test_key_rotation_at_the_provider(sso: SsoGateway, oidc_idp: TestIdp) -> None:
    user = new_user(oidc_idp)
    old = oidc_idp.code_flow(CLI, login=user)["id_token"]
    assert exchange(sso, old).status_code == 200
    new_kid = oidc_idp.rotate()[0]
    new = oidc_idp.code_flow(CLI, login=user)["id_token"]
    assert header_of(new)["kid"] == new_kid
    assert exchange(sso, new).status_code == 200  # the new key id is fetched
    assert exchange(sso, old).status_code == 200  # the old key is still published
    oidc_idp.rotate(retire=True)
    oidc_idp.tamper(key="stranger")  # an unknown key id: the gateway fetches the set again
    assert exchange(sso, oidc_idp.code_flow(CLI, login=user)["id_token"]).status_code == 400
    assert last_failure(sso).reason == "unknown_key provider=test"
    assert exchange(sso, old).status_code == 400  # its key was rotated out
    assert last_failure(sso).reason == "unknown_key provider=test"
    assert exchange(sso, new).status_code == 200


def _cli(sso: SsoGateway, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = sso.gateway.env()
    env["QUSTODY_CONFIG_DIR"] = str(config)
    return subprocess.run(
        [sys.executable, "-m", "qustody.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _cli_login(
    sso: SsoGateway, idp: TestIdp, config: Path, user: str, *args: str, **sign_in: Any
) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run `qustody login --no-browser`; play the browser at the provider while it waits."""
    env = sso.gateway.env()
    env["QUSTODY_CONFIG_DIR"] = str(config)
    process = subprocess.Popen(
        [sys.executable, "-m", "qustody.cli", "login", "--no-browser", "--timeout", "60", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines = []
    url = ""
    for line in process.stderr:
        lines.append(line)
        if line.startswith(f"  {idp.url}/auth?"):
            url = line.strip()
            break
    assert url, "".join(lines)
    with httpx.Client(timeout=30) as browser:
        back = idp.sign_in(browser, url, login=user, **sign_in)
        assert back.startswith("http://127.0.0.1:")
        assert urlsplit(back).path == "/callback"
        SEEN.add(query_of(back).get("code", "-"))
        landed = httpx.get(back, timeout=30)
        assert landed.status_code == 200
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), url


def test_cli_login_end_to_end(sso: SsoGateway, oidc_idp: TestIdp, tmp_path: Path) -> None:
    config = tmp_path / "config"
    user = new_user(oidc_idp)
    no_token = _cli(sso, config, "project", "list", "--json")
    assert no_token.returncode != 0
    assert "qustody login" in no_token.stderr
    done, url = _cli_login(sso, oidc_idp, config, user)
    assert done.returncode == 0, done.stderr
    assert "Signed in to" in done.stdout
    query = query_of(url)
    assert query["client_id"] == CLI
    assert query["code_challenge_method"] == "S256"
    assert query["redirect_uri"].startswith("http://127.0.0.1:")
    assert "prompt" not in query
    stored = config / "credentials.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    entry = json.loads(stored.read_text())["gateways"][sso.url]
    SEEN.add(entry["token"])
    assert claims_of(entry["token"])["amr"] == ["pwd"]
    listed = _cli(sso, config, "project", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "research" in listed.stdout
    # Step-up: a fresh multi-factor sign-in on request.
    done, url = _cli_login(
        sso, oidc_idp, config, user, "--max-age", "0", "--acr", MFA_ACR, amr="pwd otp", acr=MFA_ACR
    )
    assert done.returncode == 0, done.stderr
    query = query_of(url)
    assert (query["prompt"], query["max_age"], query["acr_values"]) == ("login", "0", MFA_ACR)
    entry = json.loads(stored.read_text())["gateways"][sso.url]
    SEEN.add(entry["token"])
    assert claims_of(entry["token"])["acr"] == MFA_ACR
    assert "mfa" in claims_of(entry["token"])["amr"]
    # Logging out forgets the token.
    out = _cli(sso, config, "logout")
    assert out.returncode == 0
    assert sso.url not in json.loads(stored.read_text())["gateways"]
    assert _cli(sso, config, "project", "list").returncode != 0


def test_cli_login_refused_for_a_disabled_user(
    sso: SsoGateway, oidc_idp: TestIdp, tmp_path: Path
) -> None:
    user = new_user(oidc_idp)
    oidc_idp.disable(user)
    done, _ = _cli_login(sso, oidc_idp, tmp_path / "config", user)
    assert done.returncode != 0
    assert "access_denied" in done.stderr
    assert not (tmp_path / "config" / "credentials.json").exists()


def test_no_token_or_secret_in_the_logs_or_the_audit_log(sso: SsoGateway) -> None:
    """Last in this module: every token, code and secret seen above."""
    secrets_seen = {s for s in SEEN if len(s) >= 20}
    assert len(secrets_seen) > 20
    log = sso.log.read_text(errors="replace")
    assert "DEBUG" in log
    with sso.runtime.services.db.read() as session:
        events = session.scalars(select(m.AuditEvent)).all()
        rows = json.dumps([{k: str(v) for k, v in vars(e).items()} for e in events])
        logins = [e for e in events if e.event_type in ("auth:login", "auth:fail")]
    assert len(logins) > 10
    for secret in secrets_seen:
        assert secret not in log
        assert secret not in rows
        # Nor any part of a JWT (its signature, its claims) on its own.
        for part in secret.split("."):
            if len(part) > 40:
                assert part not in log
                assert part not in rows

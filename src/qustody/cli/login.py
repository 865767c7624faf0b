"""``qustody login`` and ``qustody logout``: single sign-on for the CLI.

``login`` signs in at the gateway's identity provider as a native app (RFC
8252): it listens on ``127.0.0.1`` at a random port, sends the browser to the
provider with an authorization code request (PKCE S256, ``state``, ``nonce``),
redeems the code itself, checks the nonce, and exchanges the ID token at the
gateway (``POST /v1/auth/token``, RFC 8693) for a short-lived Qustody token.
The token is kept in ``credentials.json`` (mode 0600) in
``$QUSTODY_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/qustody`` or
``~/.config/qustody``, keyed by gateway URL; other commands use it when no
``--token``/``QUSTODY_TOKEN`` is given.

For step-up (a privileged action asked for a fresh multi-factor sign-in),
``--max-age`` and ``--acr`` ask the provider to authenticate again
(``prompt=login``, ``max_age``, ``acr_values``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import threading
import webbrowser
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlencode, urlsplit

import click
import httpx

from qustody.identity.external_jwt import check_url

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 (a URN)
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105 (a URN, not a secret)
CREDENTIALS = "credentials.json"


class _HasUrl(Protocol):
    url: str


# -- the credentials file ----------------------------------------------------------------


def config_dir() -> Path:
    explicit = os.environ.get("QUSTODY_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "qustody"


def _key(url: str) -> str:
    return url.rstrip("/")


def _read() -> dict[str, Any]:
    path = config_dir() / CREDENTIALS
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        raise click.ClickException(
            f"{path} is not readable JSON; delete it and run `qustody login` again."
        ) from None
    gateways = data.get("gateways") if isinstance(data, dict) else None
    return gateways if isinstance(gateways, dict) else {}


def _write(gateways: dict[str, Any]) -> Path:
    directory = config_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / CREDENTIALS
    temporary = directory / f".{CREDENTIALS}.{secrets.token_hex(4)}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump({"gateways": gateways}, out, indent=2)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def stored_token(url: str) -> str | None:
    """The token ``qustody login`` stored for ``url``, while it is valid."""
    entry = _read().get(_key(url))
    if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
        return None
    try:
        expires = datetime.fromisoformat(str(entry.get("expires_at")))
    except ValueError:
        return None
    if expires <= datetime.now(UTC) + timedelta(seconds=5):
        raise click.UsageError(
            f"your sign-in to {_key(url)} expired at {expires:%H:%M:%S %Z}; run `qustody login`."
        )
    token: str = entry["token"]
    return token


# -- the sign-in -------------------------------------------------------------------------


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _claims(jwt: str) -> dict[str, Any]:
    """A JWT's claims, unverified: the gateway verifies the signature; the
    CLI only compares the nonce it chose."""
    try:
        payload = jwt.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, UnicodeDecodeError):
        raise click.ClickException("the identity provider returned a malformed ID token") from None
    if not isinstance(claims, dict):
        raise click.ClickException("the identity provider returned a malformed ID token")
    return claims


def _problem(response: httpx.Response, what: str) -> click.ClickException:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if isinstance(body, dict) and "detail" in body:
        return click.ClickException(f"{what}: {body['detail']} [{body.get('code', '?')}]")
    if isinstance(body, dict) and "error" in body:
        return click.ClickException(f"{what}: {body['error']}")
    return click.ClickException(f"{what}: HTTP {response.status_code}")


def _get_json(http: httpx.Client, url: str, what: str) -> dict[str, Any]:
    try:
        response = http.get(url)
    except httpx.HTTPError as e:
        raise click.ClickException(f"{what}: {url} could not be reached ({e})") from None
    if response.status_code != 200:
        raise _problem(response, what)
    body = response.json()
    if not isinstance(body, dict):
        raise click.ClickException(f"{what}: {url} did not answer a JSON object")
    return body


def _choose(providers: list[dict[str, Any]], name: str | None) -> dict[str, Any]:
    usable = [p for p in providers if p.get("cli_client_id")]
    if name is not None:
        chosen = [p for p in providers if p.get("name") == name]
        if not chosen:
            names = ", ".join(str(p.get("name")) for p in providers) or "none"
            raise click.UsageError(
                f"the gateway has no identity provider {name!r} (it has: {names})"
            )
        if not chosen[0].get("cli_client_id"):
            raise click.UsageError(
                f"identity provider {name!r} has no client for the CLI (cli_client_id); "
                "sign in with a browser at its login_url instead"
            )
        return chosen[0]
    if len(usable) == 1:
        return usable[0]
    if not usable:
        raise click.UsageError(
            "the gateway has no identity provider the CLI can sign in with; ask your "
            "administrator, or use --token"
        )
    names = ", ".join(str(p["name"]) for p in usable)
    raise click.UsageError(f"choose an identity provider with --provider ({names})")


class _Callback:
    """The loopback redirect listener (RFC 8252 section 7.3): one answer, then done."""

    def __init__(self, state: str) -> None:
        self.params: dict[str, str] | None = None
        self.done = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                params = {k: v[0] for k, v in parse_qs(parts.query).items()}
                got = params.get("state", "")
                if parts.path != "/callback" or not hmac.compare_digest(got, state):
                    self._answer(400, "This is not the sign-in Qustody is waiting for.")
                    return
                outer.params = params
                if "error" in params:
                    self._answer(200, "Sign-in refused. You can close this window.")
                else:
                    self._answer(
                        200, "Signed in. You can close this window and return to the terminal."
                    )
                outer.done.set()

            def _answer(self, status: int, text: str) -> None:
                body = (
                    f"<!doctype html><meta charset=utf-8><title>Qustody</title><p>{text}</p>"
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.redirect_uri = f"http://127.0.0.1:{self.server.server_address[1]}/callback"

    @contextlib.contextmanager
    def running(self) -> Iterator[_Callback]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


def _authorize(
    http: httpx.Client,
    provider: dict[str, Any],
    *,
    open_browser: bool,
    max_age: int | None,
    acr: tuple[str, ...],
    timeout: float,
) -> str:
    """The authorization code flow with PKCE at the provider; its ID token."""
    issuer = check_url(str(provider["issuer"]), what="issuer", allow_insecure_loopback=True)
    meta = _get_json(http, issuer.rstrip("/") + "/.well-known/openid-configuration", "discovery")
    if meta.get("issuer") != issuer:
        raise click.ClickException(
            f"the identity provider's metadata names issuer {meta.get('issuer')!r}, not {issuer}"
        )
    endpoints = {}
    for name in ("authorization_endpoint", "token_endpoint"):
        endpoints[name] = check_url(str(meta.get(name)), what=name, allow_insecure_loopback=True)
    state, nonce, verifier = (
        secrets.token_urlsafe(32),
        secrets.token_urlsafe(32),
        secrets.token_urlsafe(64),
    )
    callback = _Callback(state)
    query = {
        "response_type": "code",
        "client_id": provider["cli_client_id"],
        "redirect_uri": callback.redirect_uri,
        "scope": " ".join(provider.get("scopes") or ["openid"]),
        "state": state,
        "nonce": nonce,
        "code_challenge": _s256(verifier),
        "code_challenge_method": "S256",
    }
    if max_age is not None or acr:
        query["prompt"] = "login"
    if max_age is not None:
        query["max_age"] = str(max_age)
    if acr:
        query["acr_values"] = " ".join(acr)
    url = endpoints["authorization_endpoint"] + "?" + urlencode(query)
    with callback.running():
        click.echo(f"Sign in at {provider.get('display_name') or provider['name']}:", err=True)
        click.echo(f"  {url}", err=True)
        if open_browser:
            webbrowser.open(url)
        if not callback.done.wait(timeout):
            raise click.ClickException(f"no sign-in came back within {timeout:g} seconds")
    params = callback.params or {}
    if "error" in params:
        raise click.ClickException(
            f"the identity provider refused the sign-in: {params['error'][:64]}"
        )
    if "iss" in params and params["iss"] != issuer:
        raise click.ClickException("the sign-in came back from another identity provider")
    try:
        response = http.post(
            endpoints["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": params.get("code", ""),
                "redirect_uri": callback.redirect_uri,
                "code_verifier": verifier,
                "client_id": provider["cli_client_id"],
            },
        )
    except httpx.HTTPError as e:
        raise click.ClickException(f"the identity provider could not be reached ({e})") from None
    if response.status_code != 200:
        raise _problem(response, "the identity provider refused the code")
    id_token = response.json().get("id_token")
    if not isinstance(id_token, str):
        raise click.ClickException("the identity provider returned no ID token")
    got = _claims(id_token).get("nonce")
    if not isinstance(got, str) or not hmac.compare_digest(got, nonce):
        raise click.ClickException("the ID token's nonce is not this sign-in's; sign in again")
    return id_token


def _exchange(http: httpx.Client, gateway: str, id_token: str) -> dict[str, Any]:
    try:
        response = http.post(
            f"{gateway}/v1/auth/token",
            data={
                "grant_type": TOKEN_EXCHANGE,
                "subject_token": id_token,
                "subject_token_type": ID_TOKEN_TYPE,
            },
        )
    except httpx.HTTPError as e:
        raise click.ClickException(f"the gateway could not be reached ({e})") from None
    if response.status_code != 200:
        raise _problem(response, "the gateway refused the sign-in")
    body = response.json()
    if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
        raise click.ClickException("the gateway answered the sign-in without a token")
    return body


@click.command()
@click.option("--provider", "provider_name", default=None, help="Identity provider name.")
@click.option(
    "--max-age",
    type=click.IntRange(min=0),
    default=None,
    help="Ask for a sign-in at most this many seconds old (step-up; prompts again).",
)
@click.option(
    "--acr",
    multiple=True,
    help="Ask for this authentication context class, e.g. multi-factor (step-up).",
)
@click.option("--no-browser", is_flag=True, help="Print the sign-in URL only.")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds to wait.")
@click.pass_context
def login(
    ctx: click.Context,
    provider_name: str | None,
    max_age: int | None,
    acr: tuple[str, ...],
    no_browser: bool,
    timeout: float,
) -> None:
    """Sign in with your identity provider and keep a short-lived token."""
    obj: _HasUrl = ctx.obj
    gateway = _key(obj.url)
    with httpx.Client(timeout=30, follow_redirects=False) as http:
        listing = _get_json(http, f"{gateway}/v1/auth/providers", "listing identity providers")
        provider = _choose(list(listing.get("items") or []), provider_name)
        id_token = _authorize(
            http,
            provider,
            open_browser=not no_browser,
            max_age=max_age,
            acr=acr,
            timeout=timeout,
        )
        issued = _exchange(http, gateway, id_token)
    expires_in = issued.get("expires_in")
    lifetime = int(expires_in) if isinstance(expires_in, int) and expires_in > 0 else 300
    expires = (datetime.now(UTC) + timedelta(seconds=lifetime)).replace(microsecond=0)
    gateways = _read()
    gateways[gateway] = {
        "token": issued["access_token"],
        "expires_at": expires.isoformat(),
        "provider": provider["name"],
        "issuer": provider["issuer"],
    }
    path = _write(gateways)
    click.echo(f"Signed in to {gateway} through {provider['name']} until {expires:%H:%M:%S %Z}.")
    click.echo(f"Token kept in {path}.", err=True)


@click.command()
@click.pass_context
def logout(ctx: click.Context) -> None:
    """Forget the token `qustody login` kept for this gateway."""
    obj: _HasUrl = ctx.obj
    gateways = _read()
    if gateways.pop(_key(obj.url), None) is None:
        click.echo(f"Not signed in to {_key(obj.url)}.")
        return
    _write(gateways)
    click.echo(f"Signed out of {_key(obj.url)}.")

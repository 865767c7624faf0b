"""Local accounts end to end: the real CLI and HTTP against a real gateway
(development mode, where local accounts are on)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import httpx

from qustody.identity.local_accounts import totp_code, totp_step
from support import Gateway, auth, qustody

PASSWORD = "a long passphrase for the cli"


def _cli(
    gateway: Gateway, token: str | None, stdin: str, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qustody.cli", *args],
        env=gateway.env(token),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_password_sign_in_and_totp_through_the_cli(gateway: Gateway) -> None:
    admin = gateway.tenant_admin_token
    # A tenant admin sets the viewer's password; the password never is an argument.
    done = _cli(
        gateway,
        admin,
        PASSWORD + "\n",
        "account",
        "password",
        "--principal",
        "acme-view",
        "--password-stdin",
    )
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr

    wrong = _cli(
        gateway,
        None,
        "not the passphrase at all\n",
        "account",
        "sign-in",
        "--tenant",
        "acme",
        "--username",
        "acme-view",
        "--password-stdin",
    )
    assert wrong.returncode == 1
    assert "[invalid_credentials]" in wrong.stderr
    signed_in = _cli(
        gateway,
        None,
        PASSWORD + "\n",
        "account",
        "sign-in",
        "--tenant",
        "acme",
        "--username",
        "acme-view",
        "--password-stdin",
    )
    assert signed_in.returncode == 0, signed_in.stderr
    token = signed_in.stdout.strip()
    listed = qustody(gateway, token, "project", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "research" in listed.stdout

    # TOTP: enrolled by the viewer itself, confirmed with a code of the new secret.
    enrolled = _cli(gateway, token, "", "account", "totp-enroll")
    assert enrolled.returncode == 0, enrolled.stderr
    uri = enrolled.stdout.strip()
    assert uri.startswith("otpauth://totp/")
    secret = parse_qs(urlsplit(uri).query)["secret"][0]
    step = totp_step(datetime.now(UTC))
    confirmed = _cli(
        gateway, token, "", "account", "totp-confirm", "--code", totp_code(secret, step)
    )
    assert confirmed.returncode == 0, confirmed.stderr

    needs_code = _cli(
        gateway,
        None,
        PASSWORD + "\n",
        "account",
        "sign-in",
        "--tenant",
        "acme",
        "--username",
        "acme-view",
        "--password-stdin",
    )
    assert needs_code.returncode == 1
    assert "[totp_required]" in needs_code.stderr
    # A later step's code: the confirming one is spent; one step ahead is accepted.
    later = max(step + 1, totp_step(datetime.now(UTC)))
    with_code = _cli(
        gateway,
        None,
        PASSWORD + "\n",
        "account",
        "sign-in",
        "--tenant",
        "acme",
        "--username",
        "acme-view",
        "--password-stdin",
        "--totp",
        totp_code(secret, later),
        "--json",
    )
    assert with_code.returncode == 0, with_code.stderr
    assert json.loads(with_code.stdout)["amr"] == ["pwd", "otp", "mfa"]


def test_sign_in_over_http_answers_problems_not_500s(gateway: Gateway) -> None:
    url = f"{gateway.url}/v1/auth/local"
    for body, status, code in (
        ({}, 422, "missing_field"),
        ({"tenant": "acme", "username": "x", "password": 5}, 422, "invalid_type"),
        ({"tenant": "acme", "username": "x", "password": "p", "extra": 1}, 422, "unknown_field"),
        (
            {"tenant": "acme", "username": "nobody", "password": "whatever it is"},
            401,
            "invalid_credentials",
        ),
        ({"tenant": "a" * 65, "username": "x", "password": "p"}, 422, "invalid_request"),
    ):
        response = httpx.post(url, json=body, timeout=30)
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == code
    # The credential routes need a token, and name only principals of the caller's tenant.
    anonymous = httpx.put(
        f"{gateway.url}/v1/principals/me/password", json={"password": PASSWORD}, timeout=30
    )
    assert anonymous.status_code == 401
    foreign = httpx.put(
        f"{gateway.url}/v1/principals/globex-dev/password",
        json={"password": PASSWORD},
        headers=auth(gateway.tenant_admin_token),
        timeout=30,
    )
    assert foreign.status_code == 404
    denied = httpx.put(
        f"{gateway.url}/v1/principals/acme-admin/password",
        json={"password": PASSWORD},
        headers=auth(gateway.developer_token),
        timeout=30,
    )
    assert denied.status_code == 403

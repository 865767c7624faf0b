"""Rate limits through the app: per principal and per tenant, anonymous by
address, brute force on sign-in and token endpoints shared by two app
instances over one database, and the audit record once per window.
Refills are driven by a ManualClock; nothing sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from qustody.api.app import Runtime, build_runtime, create_app
from qustody.domain.clock import ManualClock
from qustody.domain.vocabulary import Action
from qustody.storage.db import SYSTEM
from qustody.storage.models import AUDIT_EVENTS, RATE_LIMIT_BUCKETS
from support import auth, ctx, make_settings, seed

PASSWORD = "correct horse battery staple"

SMALL = {
    "rate_limit_principal_per_second": 1.0,
    "rate_limit_principal_burst": 3,
    "rate_limit_tenant_per_second": 1.0,
    "rate_limit_tenant_burst": 5,
    "rate_limit_address_per_second": 1.0,
    "rate_limit_address_burst": 3,
    "rate_limit_sign_in_per_second": 0.1,
    "rate_limit_sign_in_burst": 3,
}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def limited(tmp_path: Path, database_url: str, clock: ManualClock) -> Iterator[Runtime]:
    rt = build_runtime(make_settings(tmp_path, database_url, **SMALL), clock=clock)
    try:
        yield rt
    finally:
        rt.close()


class _Client:
    """Requests to an app in this process, from ``address`` (no sockets)."""

    _last: tuple[Runtime, FastAPI] | None = None
    _other: tuple[Runtime, FastAPI] | None = None

    def __init__(self, runtime: Runtime, address: str) -> None:
        # One app per runtime (two at a time), built once: building costs.
        for cached in (_Client._last, _Client._other):
            if cached is not None and cached[0] is runtime:
                app = cached[1]
                break
        else:
            app = create_app(runtime.services.settings, runtime=runtime)
            _Client._other, _Client._last = _Client._last, (runtime, app)
        self._app, self._address = app, address

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self._app, client=(self._address, 50000))
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
                return await http.request(method, path, **kwargs)

        return asyncio.run(send())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)


def _client(runtime: Runtime, address: str = "203.0.113.9") -> _Client:
    return _Client(runtime, address)


def _exceeded(runtime: Runtime) -> int:
    with runtime.services.db.reading(scope=SYSTEM) as connection:
        return int(
            connection.execute(
                select(func.count())
                .select_from(AUDIT_EVENTS)
                .where(AUDIT_EVENTS.c.event_type == Action.RATELIMIT_EXCEED.value)
            ).scalar_one()
        )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_principal_gets_its_burst_then_429_with_retry_after(
    limited: Runtime, clock: ManualClock
) -> None:
    tenancy = seed(limited)
    client = _client(limited)
    headers = auth(tenancy.token_for("acme-dev"))
    assert [client.get("/v1/projects", headers=headers).status_code for _ in range(3)] == [200] * 3
    refused = client.get("/v1/projects", headers=headers)
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["ratelimit-policy"] == '"principal";q=3;w=3'
    problem = refused.json()
    assert problem["code"] == "rate_limited"
    assert problem["limit"] == "principal"
    assert "principal limit (1 a second, bursts of 3)" in problem["detail"]
    for _ in range(5):
        assert client.get("/v1/projects", headers=headers).status_code == 429
    assert _exceeded(limited) == 1  # once per bucket per window, not per refusal
    clock.advance(1)
    assert client.get("/v1/projects", headers=headers).status_code == 200


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_tenant_bucket_binds_principals_together(limited: Runtime) -> None:
    tenancy = seed(limited)
    client = _client(limited)
    answers = [
        client.get("/v1/projects", headers=auth(tenancy.token_for(name))).status_code
        for name in ("acme-dev", "acme-dev", "acme-view", "acme-view", "acme-admin")
    ]
    assert answers == [200] * 5  # each principal within its own burst of 3
    refused = client.get("/v1/projects", headers=auth(tenancy.token_for("acme-admin")))
    assert refused.status_code == 429
    assert refused.json()["limit"] == "tenant"
    # Another tenant has a bucket of its own.
    other = client.get("/v1/projects", headers=auth(tenancy.token_for("globex-dev", "globex")))
    assert other.status_code == 200


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_anonymous_calls_and_failed_tokens_count_per_address(
    limited: Runtime, clock: ManualClock
) -> None:
    seed(limited)
    client, elsewhere = _client(limited), _client(limited, "198.51.100.7")
    assert [client.get("/v1/health").status_code for _ in range(3)] == [200] * 3
    assert client.get("/v1/health").status_code == 429
    assert elsewhere.get("/v1/health").status_code == 200
    clock.advance(3)
    # Guessing tokens: each failure takes a token of the address; then even
    # the next guess is refused before it is checked.
    bad = {"Authorization": "Bearer not-a-token"}
    assert [client.get("/v1/projects", headers=bad).status_code for _ in range(3)] == [401] * 3
    assert client.get("/v1/projects", headers=bad).status_code == 429


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_local_sign_in_is_limited_per_account_across_addresses_and_instances(
    tmp_path: Path, database_url: str, limited: Runtime, clock: ManualClock
) -> None:
    tenancy = seed(limited)
    limited.services.local_accounts.set_password(tenancy.developer, ctx(), "me", PASSWORD)
    # A second app instance (another API process or replica) on the same database.
    second = build_runtime(make_settings(tmp_path / "second", database_url, **SMALL), clock=clock)
    try:
        attempt = {"tenant": "acme", "username": "acme-dev", "password": "wrong-guess-1234"}
        answers = [
            _client(rt, f"203.0.113.{n}").post("/v1/auth/local", json=attempt).status_code
            for n, rt in enumerate((limited, second, limited), start=1)
        ]
        assert answers == [401, 401, 401]
        # A fourth address, the other instance: the account's bucket is spent.
        refused = _client(second, "203.0.113.99").post(
            "/v1/auth/local", json={**attempt, "password": PASSWORD}
        )
        assert refused.status_code == 429
        assert refused.json()["limit"] == "sign-in"
        assert "this account" in refused.json()["detail"]
        assert refused.headers["retry-after"] == "10"
        assert "wrong-guess" not in refused.text
        # Another account from a fresh address is not held back by it.
        other = _client(second, "203.0.113.100").post(
            "/v1/auth/local", json={**attempt, "username": "acme-view"}
        )
        assert other.status_code == 401
        assert _exceeded(limited) == 1
        clock.advance(10)
        signed_in = _client(limited, "203.0.113.101").post(
            "/v1/auth/local", json={**attempt, "password": PASSWORD}
        )
        assert signed_in.status_code == 200
    finally:
        second.close()


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_token_exchange_is_limited_per_address_across_instances(
    tmp_path: Path, database_url: str, limited: Runtime, clock: ManualClock
) -> None:
    second = build_runtime(make_settings(tmp_path / "second", database_url, **SMALL), clock=clock)
    try:
        form = {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": "not-a-jwt",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        }
        answers = [
            _client(rt).post("/v1/auth/token", data=form).status_code
            for rt in (limited, second, limited, second)
        ]
        assert 429 not in answers[:3]
        assert answers[3] == 429
        clock.advance(60)
        # Full buckets are the same as none: a later sweep deletes them.
        limited.services.rate_limits.shared.SWEEP_EVERY = 1  # type: ignore[union-attr,misc]
        assert _client(limited).post("/v1/auth/token", data=form).status_code != 429
        with limited.services.db.reading(scope=SYSTEM) as connection:
            rows = connection.execute(select(RATE_LIMIT_BUCKETS.c.full_at)).all()
        assert all(r.full_at >= clock.now().timestamp() for r in rows)
    finally:
        second.close()

"""OIDC sign-in against a real OpenID provider (panva/oidc-provider on loopback),
on SQLite and PostgreSQL: ID tokens verified per RFC 8725, mapped to tenants,
principals and roles, each outcome audited."""

from __future__ import annotations

import json
import secrets
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
    WEB,
    TestIdp,
    claims_of,
    header_of,
    providers_file,
    register_clients,
)
from qustody.api.app import Runtime, build_runtime
from qustody.domain.errors import ConfigurationError, QustodyError
from qustody.identity.errors import (
    ExpiredToken,
    IdentityConflict,
    IdentityProviderRefused,
    InvalidLoginState,
    InvalidToken,
    NonceMismatch,
    NoRoleMapped,
    NoTenantMapped,
    PrincipalInactive,
    UnknownKey,
    UntrustedIssuer,
    WrongAudience,
)
from qustody.identity.oidc import load_providers
from qustody.storage import models as m
from support import ctx, make_settings, seed

PUBLIC_URL = "http://127.0.0.1:8080"


@pytest.fixture
def sso(tmp_path: Path, database_url: str, oidc_idp: TestIdp) -> Iterator[Runtime]:
    register_clients(oidc_idp, PUBLIC_URL + "/v1/auth/callback")
    settings = make_settings(
        tmp_path,
        database_url,
        oidc_providers_file=providers_file(tmp_path, oidc_idp),
        jwks_min_refresh_seconds=0.0,
        jwt_leeway_seconds=0,
        public_url=PUBLIC_URL,
    )
    runtime = build_runtime(settings)
    seed(runtime)
    try:
        yield runtime
    finally:
        runtime.close()


def new_user(idp: TestIdp, *, org: str = "acme-corp", groups: list[str] | None = None) -> str:
    user = f"u{secrets.token_hex(4)}"
    groups = ["quantum-devs"] if groups is None else groups
    return idp.add_user(user, email=f"{user}@acme.example", name="Ada", org=org, groups=groups)


def cli_id_token(idp: TestIdp, user: str, **kwargs: Any) -> str:
    token: str = idp.code_flow(CLI, login=user, **kwargs)["id_token"]
    return token


def events(runtime: Runtime, event_type: str) -> list[m.AuditEvent]:
    with runtime.services.db.read() as session:
        return list(
            session.scalars(
                select(m.AuditEvent)
                .where(m.AuditEvent.event_type == event_type)
                .order_by(m.AuditEvent.seq)
            )
        )


def refused(runtime: Runtime, error: type[QustodyError], id_token: str) -> QustodyError:
    before = len(events(runtime, "auth:fail"))
    with pytest.raises(error) as caught:
        runtime.services.oidc.sign_in_with_id_token(id_token, request=ctx(), jkt=None)
    failures = events(runtime, "auth:fail")
    assert len(failures) == before + 1
    assert failures[-1].reason is not None
    assert failures[-1].reason.startswith(caught.value.code)
    assert id_token not in json.dumps([str(vars(e)) for e in failures])
    return caught.value


def test_first_sign_in_creates_the_principal_with_mapped_roles(
    sso: Runtime, oidc_idp: TestIdp
) -> None:
    user = new_user(oidc_idp)
    id_token = cli_id_token(oidc_idp, user)
    issued = sso.services.oidc.sign_in_with_id_token(id_token, request=ctx(), jkt=None)
    principal = sso.services.tokens.authenticate(issued.token)
    assert principal.name == f"{user}@acme.example"
    assert principal.auth_method == "oidc"
    assert principal.auth_strength == "aal1"
    assert principal.amr == {"pwd"}
    assert principal.auth_time is not None
    assert [role.value for _, role in principal.project_roles] == ["developer"]
    assert not principal.tenant_roles
    claims = claims_of(issued.token)
    assert claims["exp"] - claims["iat"] <= 900
    with sso.services.db.read() as session:
        link = session.scalar(
            select(m.FederatedIdentity).where(m.FederatedIdentity.subject == user)
        )
        assert link is not None
        assert link.issuer == oidc_idp.url
        assert link.principal_id == principal.id
        row = session.get(m.Principal, principal.id)
        assert row is not None
        assert row.email == f"{user}@acme.example"
        assert row.display_name == "Ada"
    login = events(sso, "auth:login")[-1]
    assert login.actor_id == principal.id
    assert login.auth_method == "oidc"
    assert login.token_id == issued.jti
    assert login.reason is not None
    assert "provider=test" in login.reason
    assert "created" in login.reason
    assert events(sso, "user:create")[-1].resource_id == principal.id
    assert events(sso, "member:add")[-1].resource_id == principal.id
    # A second sign-in finds the same principal.
    again = sso.services.oidc.sign_in_with_id_token(
        cli_id_token(oidc_idp, user), request=ctx(), jkt=None
    )
    assert again.principal_id == principal.id
    assert "created" not in (events(sso, "auth:login")[-1].reason or "")


def test_mfa_by_amr_or_acr_reaches_the_token(sso: Runtime, oidc_idp: TestIdp) -> None:
    user = new_user(oidc_idp)
    oidc = sso.services.oidc
    by_amr = oidc.sign_in_with_id_token(
        cli_id_token(oidc_idp, user, amr="pwd otp"), request=ctx(), jkt=None
    )
    principal = sso.services.tokens.authenticate(by_amr.token)
    assert principal.auth_strength == "aal2"
    assert {"pwd", "otp", "mfa"} <= principal.amr
    by_acr = oidc.sign_in_with_id_token(
        cli_id_token(oidc_idp, user, acr=MFA_ACR), request=ctx(), jkt=None
    )
    principal = sso.services.tokens.authenticate(by_acr.token)
    assert principal.acr == MFA_ACR
    assert principal.auth_strength == "aal2"
    assert claims_of(by_acr.token)["acr"] == MFA_ACR


def test_mfa_methods_the_provider_does_not_count_are_dropped(
    tmp_path: Path, database_url: str, oidc_idp: TestIdp
) -> None:
    register_clients(oidc_idp, PUBLIC_URL + "/v1/auth/callback")
    settings = make_settings(
        tmp_path,
        database_url,
        oidc_providers_file=providers_file(tmp_path, oidc_idp, mfa={"amr": ["hwk"]}),
    )
    runtime = build_runtime(settings)
    seed(runtime)
    try:
        user = new_user(oidc_idp)
        issued = runtime.services.oidc.sign_in_with_id_token(
            cli_id_token(oidc_idp, user, amr="pwd sms"), request=ctx(), jkt=None
        )
        principal = runtime.services.tokens.authenticate(issued.token)
        assert principal.amr == {"pwd"}
        assert principal.auth_strength == "aal1"
    finally:
        runtime.close()


def test_wrong_audience(sso: Runtime, oidc_idp: TestIdp) -> None:
    user = new_user(oidc_idp)
    id_token = oidc_idp.code_flow(OTHER, login=user, client_secret=OTHER_SECRET)["id_token"]
    assert claims_of(id_token)["aud"] == OTHER
    error = refused(sso, WrongAudience, id_token)
    assert error.status == 401
    assert error.code == "wrong_audience"


def test_expired_id_token(sso: Runtime, oidc_idp: TestIdp) -> None:
    user = new_user(oidc_idp)
    oidc_idp.id_token_ttl(1)
    try:
        id_token = cli_id_token(oidc_idp, user)
    finally:
        oidc_idp.id_token_ttl(600)
    expires = claims_of(id_token)["exp"]
    assert expires - claims_of(id_token)["iat"] == 1
    while time.time() < expires + 1:
        time.sleep(0.2)
    assert refused(sso, ExpiredToken, id_token).code == "expired_token"


def test_unknown_key_id(sso: Runtime, oidc_idp: TestIdp) -> None:
    user = new_user(oidc_idp)
    oidc_idp.tamper(key="stranger")
    id_token = cli_id_token(oidc_idp, user)
    assert header_of(id_token)["kid"] == "k-stranger"
    assert refused(sso, UnknownKey, id_token).code == "unknown_key"


def test_key_rotation(sso: Runtime, oidc_idp: TestIdp) -> None:
    oidc = sso.services.oidc
    user = new_user(oidc_idp)
    old = cli_id_token(oidc_idp, user)
    oidc.sign_in_with_id_token(old, request=ctx(), jkt=None)
    # The provider publishes a new key beside the old one and signs with it:
    # the gateway fetches the new key id, and the old key's tokens still work.
    kids = oidc_idp.rotate()
    new = cli_id_token(oidc_idp, user)
    assert header_of(new)["kid"] == kids[0] != header_of(old)["kid"]
    oidc.sign_in_with_id_token(new, request=ctx(), jkt=None)
    oidc.sign_in_with_id_token(old, request=ctx(), jkt=None)
    # The old key is retired. Once the gateway next fetches the key set (an
    # unknown key id makes it), tokens signed with the old key are refused.
    oidc_idp.rotate(retire=True)
    oidc_idp.tamper(key="stranger")
    refused(sso, UnknownKey, cli_id_token(oidc_idp, user))
    refused(sso, UnknownKey, old)
    oidc.sign_in_with_id_token(new, request=ctx(), jkt=None)


def test_principal_deactivated_in_qustody(sso: Runtime, oidc_idp: TestIdp) -> None:
    user = new_user(oidc_idp)
    first = sso.services.oidc.sign_in_with_id_token(
        cli_id_token(oidc_idp, user), request=ctx(), jkt=None
    )
    with sso.services.db.write() as session:
        session.execute(
            update(m.Principal).where(m.Principal.id == first.principal_id).values(active=False)
        )
    error = refused(sso, PrincipalInactive, cli_id_token(oidc_idp, user))
    assert error.status == 403
    failure = events(sso, "auth:fail")[-1]
    assert failure.actor_id == first.principal_id
    assert failure.tenant_id == first.tenant_id


def test_disabled_at_the_provider(sso: Runtime, oidc_idp: TestIdp) -> None:
    user = new_user(oidc_idp)
    oidc_idp.disable(user)
    start = sso.services.oidc.begin_login("test")
    with httpx.Client(timeout=30) as browser:
        back = oidc_idp.sign_in(browser, start.authorization_url, login=user)
    params = {k: v[0] for k, v in parse_qs(urlsplit(back).query).items()}
    assert params["error"] == "access_denied"
    with pytest.raises(IdentityProviderRefused):
        sso.services.oidc.complete_login(
            state=params["state"],
            code=None,
            error=params["error"],
            issuer=params.get("iss"),
            browser_state=start.state,
            request=ctx(),
        )
    assert (events(sso, "auth:fail")[-1].reason or "").startswith("idp_refused")


def test_tenant_and_role_mapping_refusals(sso: Runtime, oidc_idp: TestIdp) -> None:
    stranger = new_user(oidc_idp, org="initech")
    assert refused(sso, NoTenantMapped, cli_id_token(oidc_idp, stranger)).status == 403
    roleless = new_user(oidc_idp, groups=["marketing"])
    refused(sso, NoRoleMapped, cli_id_token(oidc_idp, roleless))
    # An existing principal of the same name is never taken over silently.
    squatter = f"u{secrets.token_hex(4)}"
    oidc_idp.add_user(squatter, email="acme-dev", org="acme-corp", groups=["quantum-devs"])
    refused(sso, IdentityConflict, cli_id_token(oidc_idp, squatter))
    # Another tenant's people land in their own tenant.
    globex = new_user(oidc_idp, org="globex-inc")
    issued = sso.services.oidc.sign_in_with_id_token(
        cli_id_token(oidc_idp, globex), request=ctx(), jkt=None
    )
    with sso.services.db.read() as session:
        tenant = session.get(m.Tenant, issued.tenant_id)
        assert tenant is not None
        assert tenant.name == "globex"


def test_id_tokens_for_exchange_are_fresh_and_ours(sso: Runtime, oidc_idp: TestIdp) -> None:
    user = new_user(oidc_idp)
    now = int(time.time())
    oidc_idp.tamper(iat=now - 600)
    assert "600" not in str(refused(sso, InvalidToken, cli_id_token(oidc_idp, user)))
    oidc_idp.tamper(aud=[CLI, OTHER], azp=OTHER)
    refused(sso, InvalidToken, cli_id_token(oidc_idp, user))
    oidc_idp.tamper(aud=[CLI, OTHER], azp=None)
    refused(sso, InvalidToken, cli_id_token(oidc_idp, user))
    oidc_idp.tamper(iss="https://idp.example")
    refused(sso, UntrustedIssuer, cli_id_token(oidc_idp, user))


def _browser_login(runtime: Runtime, idp: TestIdp, user: str) -> tuple[dict[str, str], str]:
    start = runtime.services.oidc.begin_login("test")
    query = {k: v[0] for k, v in parse_qs(urlsplit(start.authorization_url).query).items()}
    assert query["code_challenge_method"] == "S256"
    assert query["client_id"] == WEB
    assert query["redirect_uri"] == PUBLIC_URL + "/v1/auth/callback"
    with httpx.Client(timeout=30) as browser:
        back = idp.sign_in(browser, start.authorization_url, login=user)
    assert back.startswith(PUBLIC_URL + "/v1/auth/callback?")
    return {k: v[0] for k, v in parse_qs(urlsplit(back).query).items()}, start.state


def test_browser_login_single_use_state_and_nonce(sso: Runtime, oidc_idp: TestIdp) -> None:
    oidc = sso.services.oidc
    user = new_user(oidc_idp)
    params, state = _browser_login(sso, oidc_idp, user)

    def complete(*, same_browser: bool = True) -> str:
        issued = oidc.complete_login(
            state=params["state"],
            code=params["code"],
            error=None,
            issuer=params["iss"],
            browser_state=state if same_browser else None,
            request=ctx(),
        )
        return issued.principal_id

    with pytest.raises(InvalidLoginState):
        complete(same_browser=False)  # not the browser that started it
    assert complete()
    with pytest.raises(InvalidLoginState):
        complete()  # replayed
    # An expired login request.
    params, state = _browser_login(sso, oidc_idp, user)
    with sso.services.db.write() as session:
        session.execute(
            update(m.LoginRequest)
            .where(m.LoginRequest.state == state)
            .values(expires_at=m.LoginRequest.created_at)
        )
    with pytest.raises(InvalidLoginState):
        complete()
    # A nonce the provider did not echo.
    params, state = _browser_login(sso, oidc_idp, user)
    oidc_idp.tamper(nonce="not-the-one-we-sent")
    with pytest.raises(NonceMismatch):
        complete()
    # A response naming another issuer (RFC 9207 mix-up).
    params, state = _browser_login(sso, oidc_idp, user)
    params["iss"] = "https://idp.example"
    with pytest.raises(IdentityProviderRefused):
        complete()
    reasons = [e.reason or "" for e in events(sso, "auth:fail")[-5:]]
    assert [r.split()[0] for r in reasons] == [
        "invalid_login_state",
        "invalid_login_state",
        "invalid_login_state",
        "nonce_mismatch",
        "idp_refused",
    ]


def test_the_providers_file_is_checked(tmp_path: Path, oidc_idp: TestIdp) -> None:
    def load(**overrides: Any) -> None:
        load_providers(
            providers_file(tmp_path, oidc_idp, **overrides), allow_insecure_loopback=True
        )

    load()
    cases: list[dict[str, Any]] = [
        {"surprise": 1},
        {"name": "Not A Name"},
        {"tenant": {}},
        {"tenant": {"fixed": "acme", "claim": "org"}},
        {"roles": [{"claim": "g", "value": "v", "role": "platform-admin"}]},
        {"roles": [{"claim": "g", "value": "v", "role": "developer"}]},
        {"roles": [{"claim": "g", "value": "v", "role": "wizard", "project": "p"}]},
        {"scopes": ["email"]},
        {"algorithms": ["HS256"]},
        {"issuer": "http://idp.example"},
        {"jit": "yes"},
        {"token_ttl_seconds": 0},
        {"mfa": {"acr": "one"}},
    ]
    for bad in cases:
        with pytest.raises(ConfigurationError):
            load(**bad)
    # Plain http to loopback is a development convenience only.
    with pytest.raises(ConfigurationError):
        load_providers(providers_file(tmp_path, oidc_idp), allow_insecure_loopback=False)
    secret = tmp_path / "web-secret"
    secret.chmod(0o644)
    with pytest.raises(ConfigurationError):
        load_providers(tmp_path / "oidc-providers.json", allow_insecure_loopback=True)

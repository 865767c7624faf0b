"""Single sign-on for people: OpenID Connect providers.

Providers come from a JSON file (``QUSTODY_OIDC_PROVIDERS_FILE``; format in
docs/identity-oidc.md). Two ways in, both ending in a short-lived Qustody
token:

* the browser: :meth:`OidcService.begin_login` sends the browser to the
  provider with an authorization code request (PKCE S256, ``state``,
  ``nonce``; the request is kept in ``login_requests``, single use, minutes
  long) and :meth:`OidcService.complete_login` takes the callback, exchanges
  the code at the provider's token endpoint and verifies the ID token;
* the CLI (``qustody login``): it runs the code flow itself against the
  provider (RFC 8252 loopback redirect) and hands the ID token to the
  gateway's token-exchange endpoint, which calls
  :meth:`OidcService.sign_in_with_id_token`.

Either way the ID token is verified per RFC 8725 by
:class:`~qustody.identity.external_jwt.JwtVerifier`, then mapped: the
provider's tenant mapping names the tenant, the ``(issuer, sub)`` pair finds
the principal in ``federated_identities`` (created on first sign-in with the
mapped roles when ``jit`` is on), and an inactive principal (deprovisioned by
SCIM) is refused. Each sign-in is audited as ``auth:login``, each refusal as
``auth:fail``; neither event holds a token.

Roles: a principal created on first sign-in gets the mapped roles. Later
sign-ins leave an existing principal's roles alone, unless the provider says
``"sync_roles": true``, in which case mapped roles it lacks are added. Sign-in
never removes a role: that is SCIM's or a tenant admin's job.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from qustody.audit.recorder import Actor, Target, record
from qustody.crypto.files import check_private
from qustody.domain.errors import ConfigurationError, QustodyError
from qustody.domain.ids import new_principal_id
from qustody.domain.models import RequestContext
from qustody.domain.vocabulary import Action, Role
from qustody.identity.errors import (
    IdentityConflict,
    IdentityProviderRefused,
    InvalidLoginState,
    InvalidToken,
    IssuerUnavailable,
    MalformedToken,
    NonceMismatch,
    NoRoleMapped,
    NoTenantMapped,
    PrincipalInactive,
    SignInRefused,
    UnknownProvider,
    UntrustedIssuer,
)
from qustody.identity.external_jwt import (
    DEFAULT_ALGORITHMS,
    SUPPORTED_ALGORITHMS,
    JwtVerifier,
    VerifiedJwt,
    check_url,
)
from qustody.identity.tokens import MFA_METHODS, IssuedToken, SignIn, TokenService, assurance
from qustody.storage import models as m
from qustody.storage.db import SYSTEM, Database, utc

log = logging.getLogger("qustody.oidc")

#: How long a browser has between leaving for the provider and coming back.
LOGIN_TTL_SECONDS = 600
#: An ID token handed to the token-exchange endpoint must be this fresh: the
#: CLI exchanges it the moment the provider issues it.
MAX_ID_TOKEN_AGE_SECONDS = 300
CALLBACK_PATH = "/v1/auth/callback"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_PRINCIPAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_PROVIDER_KEYS = frozenset(
    {
        "name",
        "display_name",
        "issuer",
        "client_id",
        "client_secret_file",
        "audience",
        "cli_client_id",
        "scopes",
        "algorithms",
        "tenant",
        "roles",
        "name_claim",
        "jit",
        "sync_roles",
        "link_by_name",
        "mfa",
        "token_ttl_seconds",
    }
)


# -- configuration ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TenantMapping:
    """Which tenant a sign-in belongs to: a fixed tenant, or a claim whose
    value names it (optionally through ``values``, claim value -> tenant name,
    which then also acts as an allow-list)."""

    fixed: str | None = None
    claim: str | None = None
    values: Mapping[str, str] | None = None

    def tenant_name(self, claims: Mapping[str, object]) -> str | None:
        if self.fixed is not None:
            return self.fixed
        value = claims.get(self.claim or "")  # the parser requires fixed or claim
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if not isinstance(value, str) or not value:
            return None
        return self.values.get(value) if self.values is not None else value


@dataclass(frozen=True, slots=True)
class RoleRule:
    """Grant ``role`` (on ``project``, by name, for project roles) when the
    ID token's ``claim`` equals ``value`` or is a list that contains it."""

    claim: str
    value: str
    role: Role
    project: str | None = None

    def matches(self, claims: Mapping[str, object]) -> bool:
        held = claims.get(self.claim)
        if isinstance(held, list):
            return self.value in held
        return held == self.value


@dataclass(frozen=True, slots=True)
class MfaRule:
    """Which ``acr`` values and ``amr`` methods count as multi-factor."""

    acr: frozenset[str] = frozenset()
    amr: frozenset[str] = MFA_METHODS

    def satisfied(self, acr: str | None, amr: Sequence[str]) -> bool:
        return (acr is not None and acr in self.acr) or bool(self.amr.intersection(amr))


@dataclass(frozen=True, slots=True)
class OidcProvider:
    name: str
    issuer: str
    client_id: str
    audience: str
    tenant: TenantMapping
    display_name: str = ""
    client_secret: str | None = field(default=None, repr=False)
    cli_client_id: str | None = None
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    roles: tuple[RoleRule, ...] = ()
    name_claim: str = "email"
    jit: bool = True
    sync_roles: bool = False
    link_by_name: bool = False
    mfa: MfaRule = MfaRule()
    token_ttl_seconds: int | None = None

    @property
    def id_token_audiences(self) -> frozenset[str]:
        """Audiences an ID token handed over by a client may name."""
        return frozenset({self.audience} | ({self.cli_client_id} if self.cli_client_id else set()))


def _fail(source: str, what: str) -> ConfigurationError:
    return ConfigurationError(f"OIDC providers file {source}: {what}")


def _string(entry: Mapping[str, Any], key: str, source: str, *, default: str | None = None) -> str:
    value = entry.get(key, default)
    if not isinstance(value, str) or not value:
        raise _fail(source, f"'{key}' must be a non-empty string.")
    return value


def _strings(entry: Mapping[str, Any], key: str, source: str) -> tuple[str, ...] | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(source, f"'{key}' must be a list of non-empty strings.")
    return tuple(value)


def _tenant_mapping(value: object, source: str) -> TenantMapping:
    if not isinstance(value, dict) or set(value) - {"fixed", "claim", "values"}:
        raise _fail(source, '\'tenant\' must be {"fixed": NAME} or {"claim": CLAIM}.')
    fixed, claim, values = value.get("fixed"), value.get("claim"), value.get("values")
    if (fixed is None) == (claim is None):
        raise _fail(source, "'tenant' needs exactly one of 'fixed' and 'claim'.")
    if fixed is not None and (not isinstance(fixed, str) or not _NAME.fullmatch(fixed)):
        raise _fail(source, "'tenant.fixed' must be a tenant name.")
    if claim is not None and (not isinstance(claim, str) or not claim):
        raise _fail(source, "'tenant.claim' must be a claim name.")
    if values is not None and (
        not isinstance(values, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in values.items())
    ):
        raise _fail(source, "'tenant.values' must map claim values to tenant names.")
    return TenantMapping(fixed=fixed, claim=claim, values=values)


def _role_rule(value: object, source: str) -> RoleRule:
    if not isinstance(value, dict) or set(value) - {"claim", "value", "role", "project"}:
        raise _fail(source, "each of 'roles' must be {claim, value, role[, project]}.")
    claim, wanted = _string(value, "claim", source), _string(value, "value", source)
    try:
        role = Role(_string(value, "role", source))
    except ValueError:
        raise _fail(
            source,
            f"role {value.get('role')!r} is not known; use tenant-admin, developer or viewer.",
        ) from None
    project = value.get("project")
    if role is Role.PLATFORM_ADMIN:
        raise _fail(source, "platform-admin cannot be granted by sign-in.")
    if role is Role.TENANT_ADMIN and project is not None:
        raise _fail(source, "tenant-admin is tenant-wide; remove 'project'.")
    if role is not Role.TENANT_ADMIN and not isinstance(project, str):
        raise _fail(source, f"{role.value} is a project role; name its 'project'.")
    return RoleRule(claim, wanted, role, project)


def _provider(
    entry: object, index: int, path: Path, *, allow_insecure_loopback: bool
) -> OidcProvider:
    source = f"{path} (provider {index})"
    if not isinstance(entry, dict):
        raise _fail(source, "each provider must be a JSON object.")
    unknown = sorted(set(entry) - _PROVIDER_KEYS)
    if unknown:
        raise _fail(source, f"unknown keys {unknown}; the known keys are {sorted(_PROVIDER_KEYS)}.")
    name = _string(entry, "name", source)
    if not _NAME.fullmatch(name):
        raise _fail(source, f"name {name!r} must be lower-case letters, digits, '.', '_', '-'.")
    source = f"{path} (provider {name!r})"
    issuer = check_url(
        _string(entry, "issuer", source),
        what=f"OIDC provider {name!r} issuer",
        allow_insecure_loopback=allow_insecure_loopback,
    )
    client_id = _string(entry, "client_id", source)
    secret = None
    if entry.get("client_secret_file") is not None:
        secret_path = Path(_string(entry, "client_secret_file", source))
        check_private(secret_path, f"OIDC provider {name!r} client secret file")
        secret = secret_path.read_text().strip()
        if not secret:
            raise _fail(source, f"the client secret file {secret_path} is empty.")
    scopes = _strings(entry, "scopes", source) or ("openid", "email", "profile")
    if "openid" not in scopes:
        raise _fail(source, "'scopes' must include 'openid'.")
    mfa_entry = entry.get("mfa", {})
    if not isinstance(mfa_entry, dict) or set(mfa_entry) - {"acr", "amr"}:
        raise _fail(source, '\'mfa\' must be {"acr": [...], "amr": [...]}.')
    mfa = MfaRule(
        acr=frozenset(_strings(mfa_entry, "acr", source) or ()),
        amr=frozenset(_strings(mfa_entry, "amr", source) or MFA_METHODS),
    )
    roles = entry.get("roles", [])
    if not isinstance(roles, list):
        raise _fail(source, "'roles' must be a list.")
    flags = {}
    for flag, default in (("jit", True), ("sync_roles", False), ("link_by_name", False)):
        flags[flag] = entry.get(flag, default)
        if not isinstance(flags[flag], bool):
            raise _fail(source, f"'{flag}' must be true or false.")
    ttl = entry.get("token_ttl_seconds")
    if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 1):
        raise _fail(source, "'token_ttl_seconds' must be a positive integer.")
    algorithms = _strings(entry, "algorithms", source) or DEFAULT_ALGORITHMS
    if not set(algorithms) <= SUPPORTED_ALGORITHMS:
        raise _fail(
            source,
            f"'algorithms' may name only {sorted(SUPPORTED_ALGORITHMS)} (never 'none' or HS*).",
        )
    cli_client_id = entry.get("cli_client_id")
    if cli_client_id is not None:
        cli_client_id = _string(entry, "cli_client_id", source)
    if "tenant" not in entry:
        raise _fail(source, "'tenant' is missing; map sign-ins to a tenant.")
    return OidcProvider(
        name=name,
        display_name=str(entry.get("display_name") or name),
        issuer=issuer,
        client_id=client_id,
        client_secret=secret,
        audience=_string(entry, "audience", source, default=client_id),
        cli_client_id=cli_client_id,
        scopes=scopes,
        algorithms=algorithms,
        tenant=_tenant_mapping(entry["tenant"], source),
        roles=tuple(_role_rule(r, source) for r in roles),
        name_claim=_string(entry, "name_claim", source, default="email"),
        jit=flags["jit"],
        sync_roles=flags["sync_roles"],
        link_by_name=flags["link_by_name"],
        mfa=mfa,
        token_ttl_seconds=ttl,
    )


def load_providers(path: Path, *, allow_insecure_loopback: bool) -> tuple[OidcProvider, ...]:
    """Parse the providers file; anything unknown or unsafe is refused."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigurationError(
            f"OIDC providers file {path} could not be read as JSON ({type(e).__name__}); "
            "fix QUSTODY_OIDC_PROVIDERS_FILE."
        ) from None
    if isinstance(document, dict) and set(document) == {"providers"}:
        document = document["providers"]
    if not isinstance(document, list):
        raise _fail(str(path), 'expected {"providers": [...]}.')
    providers = tuple(
        _provider(entry, i, path, allow_insecure_loopback=allow_insecure_loopback)
        for i, entry in enumerate(document)
    )
    names = [p.name for p in providers]
    issuers = [p.issuer for p in providers]
    if len(set(names)) != len(names) or len(set(issuers)) != len(issuers):
        raise _fail(str(path), "provider names and issuers must be unique.")
    return providers


# -- the service --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoginStart:
    """Where to send the browser, and the state to bind to it (a cookie)."""

    authorization_url: str
    state: str
    expires_at: datetime

    def __repr__(self) -> str:
        return "LoginStart(<redacted>)"


def _s256(verifier: str) -> str:
    """PKCE code challenge (RFC 7636 section 4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _unverified_issuer(token: str) -> str:
    """The ``iss`` of a JWT, read before verification only to pick the
    provider whose keys then verify it."""
    parts = token.split(".") if isinstance(token, str) and len(token) < 16 * 1024 else []
    if len(parts) != 3:
        raise MalformedToken("the ID token is not a compact signed JWT.")
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        raise MalformedToken("the ID token's claims are not base64url-encoded JSON.") from None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    if not isinstance(issuer, str):
        raise MalformedToken("the ID token names no issuer ('iss').")
    return issuer


@dataclass(slots=True)
class _Attempt:
    """What a sign-in attempt got to know, for the ``auth:fail`` event if it fails."""

    provider: OidcProvider | None = None
    principal_id: str | None = None
    tenant_id: str | None = None


@dataclass(frozen=True, slots=True)
class _Assurance:
    acr: str | None
    amr: tuple[str, ...]
    auth_time: datetime | None


class OidcService:
    def __init__(
        self,
        db: Database,
        tokens: TokenService,
        verifier: JwtVerifier,
        providers: Iterable[OidcProvider],
        *,
        public_url: str,
    ) -> None:
        self._db = db
        self._tokens = tokens
        self._verifier = verifier
        self._providers = {p.name: p for p in providers}
        self._by_issuer = {p.issuer: p for p in self._providers.values()}
        self.redirect_uri = public_url.rstrip("/") + CALLBACK_PATH
        for provider in self._providers.values():
            verifier.issuer(provider.issuer, algorithms=provider.algorithms)
            ttl = provider.token_ttl_seconds
            if ttl is not None and ttl > tokens.max_ttl_seconds:
                raise ConfigurationError(
                    f"OIDC provider {provider.name!r}: token_ttl_seconds is {ttl}; Qustody "
                    f"tokens live at most {tokens.max_ttl_seconds} seconds."
                )

    @property
    def providers(self) -> tuple[OidcProvider, ...]:
        return tuple(self._providers.values())

    def provider(self, name: str) -> OidcProvider:
        found = self._providers.get(name)
        if found is None:
            raise UnknownProvider(
                f"no identity provider is named {name[:64]!r}; GET /v1/auth/providers lists them."
            )
        return found

    # -- the browser ----------------------------------------------------------------

    def begin_login(self, provider_name: str) -> LoginStart:
        """Record a login request and build the provider's authorization URL.

        Not audited: nothing is granted yet (the callback records the outcome);
        expired requests are swept here so anonymous callers cannot pile them up.
        """
        provider = self.provider(provider_name)
        endpoint = self._verifier.issuer(provider.issuer).endpoint("authorization_endpoint")
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        code_verifier = secrets.token_urlsafe(64)
        now = datetime.now(UTC)
        expires = now + timedelta(seconds=LOGIN_TTL_SECONDS)
        with self._db.write(scope=SYSTEM) as session:
            session.execute(delete(m.LoginRequest).where(m.LoginRequest.expires_at < now))
            session.add(
                m.LoginRequest(
                    state=state,
                    provider=provider.name,
                    nonce=nonce,
                    code_verifier=code_verifier,
                    redirect_uri=self.redirect_uri,
                    created_at=now,
                    expires_at=expires,
                )
            )
        query = {
            "response_type": "code",
            "client_id": provider.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": " ".join(provider.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": _s256(code_verifier),
            "code_challenge_method": "S256",
        }
        separator = "&" if "?" in endpoint else "?"
        return LoginStart(endpoint + separator + urlencode(query), state, expires)

    def complete_login(
        self,
        *,
        state: str | None,
        code: str | None,
        error: str | None,
        issuer: str | None,
        browser_state: str | None,
        request: RequestContext,
    ) -> IssuedToken:
        """The provider's redirect back: check ``state`` (once, unexpired, this
        browser's), exchange ``code``, verify the ID token, sign in."""
        attempt = _Attempt()
        try:
            login = self._take_login(state, browser_state)
            provider = attempt.provider = self.provider(login.provider)
            if issuer is not None and issuer != provider.issuer:
                # RFC 9207: the response came from another provider (mix-up attack).
                raise IdentityProviderRefused(
                    f"the sign-in response names issuer {issuer[:200]!r}, not {provider.issuer}."
                )
            if error is not None:
                shown = error if _ERROR_CODE.fullmatch(error) else "invalid"
                raise IdentityProviderRefused(
                    f"the identity provider refused the sign-in ({shown}); sign in again or "
                    "ask your identity provider's administrator."
                )
            if not code:
                raise InvalidLoginState("the sign-in response has no 'code'; sign in again.")
            id_token = self._redeem(provider, code, login.code_verifier, login.redirect_uri)
            verified = self._verify(provider, id_token, audiences=[provider.audience])
            self._check_oidc_claims(verified, provider, client_ids={provider.client_id})
            nonce = verified.claims.get("nonce")
            if not isinstance(nonce, str) or not hmac.compare_digest(nonce, login.nonce):
                raise NonceMismatch(
                    "the ID token's nonce does not match this sign-in; sign in again."
                )
            return self._sign_in(provider, verified, attempt, request=request, jkt=None)
        except QustodyError as refusal:
            self._record_failure(refusal, attempt, request)
            raise

    def _take_login(self, state: str | None, browser_state: str | None) -> m.LoginRequest:
        """Mark the login request used, in its own transaction: a replayed or
        failed callback cannot use it again."""
        again = "start the sign-in again."
        if not state or len(state) > 64:
            raise InvalidLoginState(f"the sign-in response has no valid 'state'; {again}")
        if browser_state is None or not hmac.compare_digest(browser_state.encode(), state.encode()):
            # The callback must come back to the browser that started it
            # (RFC 6749 section 10.12: login CSRF).
            raise InvalidLoginState(
                "this browser did not start the sign-in (its sign-in cookie is missing or "
                f"belongs to another sign-in); {again}"
            )
        now = datetime.now(UTC)
        with self._db.write(scope=SYSTEM) as session:
            taken = session.execute(
                update(m.LoginRequest)
                .where(m.LoginRequest.state == state, m.LoginRequest.used_at.is_(None))
                .values(used_at=now)
            )
            login = session.get(m.LoginRequest, state)
            if login is None or getattr(taken, "rowcount", 0) != 1:
                raise InvalidLoginState(f"the sign-in was already used or is unknown; {again}")
            if utc(login.expires_at) <= now:
                raise InvalidLoginState(f"the sign-in expired; {again}")
            session.expunge(login)
            return login

    def _redeem(self, provider: OidcProvider, code: str, verifier: str, redirect_uri: str) -> str:
        """The authorization code grant (RFC 6749 4.1.3) with the PKCE verifier."""
        endpoint = self._verifier.issuer(provider.issuer).endpoint("token_endpoint")
        form = {
            "grant_type": "authorization_code",
            "code": code[:2048],
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        auth: httpx.BasicAuth | None = None
        if provider.client_secret is None:
            form["client_id"] = provider.client_id
        else:
            # client_secret_basic: both parts form-encoded first (RFC 6749 2.3.1).
            auth = httpx.BasicAuth(
                urlencode({"": provider.client_id})[1:], urlencode({"": provider.client_secret})[1:]
            )
        try:
            response = self._verifier.http.post(
                endpoint,
                data=form,
                auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT,
                headers={"Accept": "application/json"},
            )
        except httpx.HTTPError as e:
            raise IssuerUnavailable(
                f"identity provider {provider.issuer} could not be reached to redeem the "
                f"sign-in ({type(e).__name__}); try again."
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise IssuerUnavailable(
                f"identity provider {provider.issuer} answered the token request with "
                f"{response.status_code} and no JSON; try again later."
            )
        if response.status_code != 200:
            error = body.get("error")
            shown = error if isinstance(error, str) and _ERROR_CODE.fullmatch(error) else "invalid"
            raise IdentityProviderRefused(
                f"the identity provider refused to redeem the sign-in ({shown}); sign in again."
            )
        id_token = body.get("id_token")
        if not isinstance(id_token, str):
            raise IdentityProviderRefused(
                "the identity provider returned no ID token; check that the 'openid' scope is "
                "allowed for this client."
            )
        return id_token

    # -- the CLI (through token exchange) -------------------------------------------

    def sign_in_with_id_token(
        self, id_token: str, *, request: RequestContext, jkt: str | None
    ) -> IssuedToken:
        """A Qustody token for an ID token a client obtained itself (``qustody
        login``). The client checked its nonce; here it must be fresh, for one
        of the provider's client ids, and valid per RFC 8725."""
        attempt = _Attempt()
        try:
            issuer = _unverified_issuer(id_token)
            provider = attempt.provider = self._by_issuer.get(issuer)
            if provider is None:
                raise UntrustedIssuer(
                    "the ID token's issuer is not a configured identity provider; "
                    "GET /v1/auth/providers lists them."
                )
            verified = self._verify(provider, id_token, audiences=provider.id_token_audiences)
            self._check_oidc_claims(verified, provider, client_ids=provider.id_token_audiences)
            issued_at = verified.claims.get("iat")
            if (
                not isinstance(issued_at, int | float)
                or self._verifier.now() - float(issued_at) > MAX_ID_TOKEN_AGE_SECONDS
            ):
                raise InvalidToken(
                    f"the ID token was issued more than {MAX_ID_TOKEN_AGE_SECONDS} seconds ago; "
                    "run `qustody login` again for a fresh one."
                )
            return self._sign_in(provider, verified, attempt, request=request, jkt=jkt)
        except QustodyError as refusal:
            self._record_failure(refusal, attempt, request)
            raise

    # -- shared -----------------------------------------------------------------------

    def _verify(
        self, provider: OidcProvider, id_token: str, *, audiences: Iterable[str]
    ) -> VerifiedJwt:
        return self._verifier.verify(id_token, issuer=provider.issuer, audiences=set(audiences))

    @staticmethod
    def _check_oidc_claims(
        verified: VerifiedJwt, provider: OidcProvider, *, client_ids: Iterable[str]
    ) -> None:
        """OpenID Connect Core 3.1.3.7: with several audiences, ``azp`` must
        name the client; when present it must be one of ours."""
        claims = verified.claims
        aud, azp = claims.get("aud"), claims.get("azp")
        if isinstance(aud, list) and len(aud) > 1 and azp is None:
            raise InvalidToken("the ID token has several audiences and no 'azp'; it is refused.")
        if azp is not None and azp not in set(client_ids):
            raise InvalidToken(
                f"the ID token was issued to another client ('azp'); {provider.name} "
                "sign-ins must use Qustody's client."
            )

    def _assurance(self, provider: OidcProvider, claims: Mapping[str, object]) -> _Assurance:
        """``acr``/``amr``/``auth_time`` as the provider asserted them. ``amr``
        is normalized so the token's assurance follows the provider's MFA
        rule: multi-factor methods are kept (and ``mfa`` added) only when the
        rule counts this sign-in as MFA."""
        acr = claims.get("acr")
        acr = acr[:256] if isinstance(acr, str) else None
        raw = claims.get("amr")
        amr = [a[:32] for a in raw if isinstance(a, str)] if isinstance(raw, list) else []
        mfa = provider.mfa.satisfied(acr, amr)
        kept = [a for a in amr if mfa or a not in MFA_METHODS]
        if mfa and "mfa" not in kept:
            kept.append("mfa")
        auth_time = claims.get("auth_time")
        when = (
            datetime.fromtimestamp(int(auth_time), UTC)
            if isinstance(auth_time, int | float) and not isinstance(auth_time, bool)
            else None
        )
        return _Assurance(acr, tuple(dict.fromkeys(kept[:16])), when)

    def _sign_in(
        self,
        provider: OidcProvider,
        verified: VerifiedJwt,
        attempt: _Attempt,
        *,
        request: RequestContext,
        jkt: str | None,
    ) -> IssuedToken:
        claims = verified.claims
        tenant_name = provider.tenant.tenant_name(claims)
        if tenant_name is None:
            raise NoTenantMapped(
                f"the identity provider {provider.name} did not say which tenant this person "
                f"belongs to (claim {provider.tenant.claim!r}); ask your administrator."
            )
        how = self._assurance(provider, claims)
        try:
            return self._sign_in_once(provider, verified, tenant_name, how, attempt, request, jkt)
        except IntegrityError:
            # Two first sign-ins of one person at once: the other created the
            # principal; this one now finds it.
            return self._sign_in_once(provider, verified, tenant_name, how, attempt, request, jkt)

    def _sign_in_once(
        self,
        provider: OidcProvider,
        verified: VerifiedJwt,
        tenant_name: str,
        how: _Assurance,
        attempt: _Attempt,
        request: RequestContext,
        jkt: str | None,
    ) -> IssuedToken:
        now = datetime.now(UTC)
        rules = [r for r in provider.roles if r.matches(verified.claims)]
        with self._db.write(scope=SYSTEM) as session:
            tenant = session.scalar(select(m.Tenant).where(m.Tenant.name == tenant_name[:64]))
            if tenant is None:
                raise NoTenantMapped(
                    f"no tenant is named {tenant_name[:64]!r}; ask your administrator to "
                    "create it or fix the provider's tenant mapping."
                )
            link = session.scalar(
                select(m.FederatedIdentity).where(
                    m.FederatedIdentity.issuer == provider.issuer,
                    m.FederatedIdentity.subject == verified.subject[:256],
                )
            )
            created = False
            if link is not None:
                principal = session.get(m.Principal, link.principal_id)
                if principal is None or principal.tenant_id != tenant.id:
                    raise IdentityConflict(
                        f"this identity belongs to another tenant than {tenant_name!r}; ask "
                        "your administrator."
                    )
            else:
                principal, created = self._first_sign_in(
                    session, provider, verified, tenant, bool(rules), now
                )
                link = m.FederatedIdentity(
                    tenant_id=tenant.id,
                    principal_id=principal.id,
                    issuer=provider.issuer,
                    subject=verified.subject[:256],
                    created_at=now,
                )
                session.add(link)
            attempt.principal_id, attempt.tenant_id = principal.id, tenant.id
            if not principal.active:
                raise PrincipalInactive(
                    f"principal {principal.name!r} is deactivated in tenant {tenant_name!r}; "
                    "ask your tenant admin."
                )
            actor = Actor.system(f"oidc:{provider.name}")
            if created or provider.sync_roles:
                self._grant(session, principal, rules, actor, request, now)
            has_role = session.scalar(
                select(m.Membership.id).where(m.Membership.principal_id == principal.id).limit(1)
            )
            if has_role is None:
                raise NoRoleMapped(
                    f"{principal.name!r} has no role in tenant {tenant_name!r} and the identity "
                    "provider's groups map to none; ask your tenant admin."
                )
            link.last_login_at = now
            token = self._tokens.issue(
                session,
                principal_id=principal.id,
                tenant_id=tenant.id,
                ttl_seconds=provider.token_ttl_seconds,
                sign_in=SignIn(
                    method="oidc",
                    source=provider.issuer,
                    acr=how.acr,
                    amr=how.amr,
                    auth_time=how.auth_time,
                ),
                jkt=jkt,
            )
            record(
                session,
                Action.AUTH_LOGIN,
                actor=Actor(principal.id, tenant.id, "oidc", token.jti, assurance(how.amr)),
                target=Target("token", token.jti, tenant.id),
                request=request,
                reason=(
                    f"provider={provider.name} acr={how.acr or '-'} amr={' '.join(how.amr) or '-'}"
                    f"{' created' if created else ''}{' dpop' if jkt else ''}"
                ),
            )
            return token

    def _first_sign_in(
        self,
        session: Session,
        provider: OidcProvider,
        verified: VerifiedJwt,
        tenant: m.Tenant,
        has_rules: bool,
        now: datetime,
    ) -> tuple[m.Principal, bool]:
        """The principal for an identity seen for the first time: an existing
        one of the same name (only with ``link_by_name``) or a new one (``jit``)."""
        name = verified.claims.get(provider.name_claim)
        if not isinstance(name, str) or not _PRINCIPAL_NAME.fullmatch(name):
            raise SignInRefused(
                f"the ID token's {provider.name_claim!r} claim is missing or not usable as a "
                "principal name (letters, digits, '.', '_', '@', '+', '-'); ask your "
                "administrator to fix the provider's name_claim."
            )
        existing = session.scalar(
            select(m.Principal).where(m.Principal.tenant_id == tenant.id, m.Principal.name == name)
        )
        if existing is not None:
            linked = session.scalar(
                select(m.FederatedIdentity.id).where(
                    m.FederatedIdentity.principal_id == existing.id,
                    m.FederatedIdentity.issuer == provider.issuer,
                )
            )
            if not provider.link_by_name or linked is not None:
                raise IdentityConflict(
                    f"a principal named {name!r} already exists in tenant {tenant.name!r} and "
                    "is not linked to this identity; ask your tenant admin."
                )
            return existing, False
        if not provider.jit:
            raise SignInRefused(
                f"{name!r} is not provisioned in tenant {tenant.name!r}; ask your tenant admin."
            )
        if not has_rules:
            raise NoRoleMapped(
                f"the identity provider's claims map {name!r} to no role in tenant "
                f"{tenant.name!r}; ask your administrator."
            )
        display = verified.claims.get("name")
        email = verified.claims.get("email")
        principal = m.Principal(
            id=new_principal_id(),
            tenant_id=tenant.id,
            name=name,
            kind="user",
            created_at=now,
            display_name=display[:256] if isinstance(display, str) else None,
            email=email[:320] if isinstance(email, str) else None,
        )
        session.add(principal)
        session.flush()
        record(
            session,
            Action.USER_CREATE,
            actor=Actor.system(f"oidc:{provider.name}"),
            target=Target("principal", principal.id, tenant.id),
            reason=f"first sign-in through {provider.name}",
        )
        return principal, True

    def _grant(
        self,
        session: Session,
        principal: m.Principal,
        rules: Sequence[RoleRule],
        actor: Actor,
        request: RequestContext,
        now: datetime,
    ) -> None:
        held = {
            (ms.project_id, ms.role)
            for ms in session.scalars(
                select(m.Membership).where(m.Membership.principal_id == principal.id)
            )
        }
        for rule in rules:
            project_id = None
            if rule.project is not None:
                project_id = session.scalar(
                    select(m.Project.id).where(
                        m.Project.tenant_id == principal.tenant_id, m.Project.name == rule.project
                    )
                )
                if project_id is None:
                    log.warning(
                        "OIDC role mapping names project %r, which tenant %s does not have",
                        rule.project,
                        principal.tenant_id,
                    )
                    continue
            if (project_id, rule.role.value) in held:
                continue
            held.add((project_id, rule.role.value))
            session.add(
                m.Membership(
                    tenant_id=principal.tenant_id,
                    principal_id=principal.id,
                    project_id=project_id,
                    role=rule.role.value,
                    created_at=now,
                )
            )
            record(
                session,
                Action.MEMBER_ADD,
                actor=actor,
                target=Target("principal", principal.id, principal.tenant_id),
                request=request,
                reason=f"role={rule.role.value} project={project_id or '-'} by sign-in mapping",
            )
        session.flush()

    def _record_failure(
        self, refusal: QustodyError, attempt: _Attempt, request: RequestContext
    ) -> None:
        """``auth:fail``, in a transaction of its own (the sign-in's rolled back).
        It names the principal when the identity was known (a deactivated
        one, say), so the tenant sees the attempt in its own audit log."""
        provider = attempt.provider.name if attempt.provider else "-"
        with self._db.write(scope=SYSTEM) as session:
            record(
                session,
                Action.AUTH_FAIL,
                actor=Actor(attempt.principal_id or "anonymous", attempt.tenant_id, "oidc"),
                outcome="failure",
                target=(
                    Target("principal", attempt.principal_id, attempt.tenant_id)
                    if attempt.principal_id
                    else None
                ),
                request=request,
                reason=f"{refusal.code} provider={provider}",
            )

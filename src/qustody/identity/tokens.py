"""Qustody-issued bearer tokens.

A token is a JWT signed with Ed25519 (alg ``Ed25519``, the fully specified
EdDSA identifier of RFC 9864), living at most 15 minutes, bound to one
principal (``sub``) and one tenant (``tid``), with a ``jti`` recorded at issue
so it can be revoked and so a token Qustody never issued is refused even if
its signature verifies.

The raw token string stops here: :meth:`TokenService.authenticate` returns a
:class:`~qustody.domain.models.Principal` and nothing downstream sees the
token or its claims.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey
from sqlalchemy import and_, bindparam, or_, select, union_all
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from qustody.crypto.files import check_private, create_private
from qustody.domain.clock import SYSTEM_CLOCK, Clock
from qustody.domain.errors import ConfigurationError
from qustody.domain.ids import PrincipalId, ProjectId, TenantId
from qustody.domain.models import Principal
from qustody.domain.vocabulary import SCOPES, Role
from qustody.identity.errors import (
    ExpiredToken,
    InvalidScope,
    InvalidToken,
    InvalidTTL,
    MalformedToken,
    RevokedToken,
)
from qustody.storage import models as m
from qustody.storage.db import Database, tenant, utc

ALGORITHM = "Ed25519"
#: The JOSE ``typ`` of a Qustody access token (RFC 9068).
TOKEN_TYPE = "at+jwt"  # noqa: S105 (a media type, not a secret)

# Every request runs these two lookups: Core statements on a bare connection
# (a third of the cost of the same queries through an ORM session).
_ISSUED = m.ISSUED_TOKENS
_PRINCIPALS = m.PRINCIPALS
_TENANTS = m.TENANTS
_TOKEN_AND_PRINCIPAL = (
    select(
        _ISSUED.c.jti,
        _ISSUED.c.principal_id,
        _ISSUED.c.tenant_id,
        _ISSUED.c.scopes,
        _ISSUED.c.revoked_at,
        _ISSUED.c.issued_at,
        _ISSUED.c.auth_method,
        _ISSUED.c.acr,
        _ISSUED.c.amr,
        _ISSUED.c.auth_time,
        _ISSUED.c.jkt,
        _PRINCIPALS.c.tenant_id.label("principal_tenant_id"),
        _PRINCIPALS.c.name,
        _PRINCIPALS.c.kind,
        _PRINCIPALS.c.active,
        _PRINCIPALS.c.tokens_not_before.label("principal_not_before"),
        _TENANTS.c.tokens_not_before.label("tenant_not_before"),
    )
    .join(_PRINCIPALS, _PRINCIPALS.c.id == _ISSUED.c.principal_id)
    .join(_TENANTS, _TENANTS.c.id == _PRINCIPALS.c.tenant_id)
    .where(_ISSUED.c.jti == bindparam("jti"))
)
# The roles a principal holds: its own memberships, and the roles of the SCIM
# groups it is a member of, while it is one (qustody.identity.scim). A group's
# grant counts only when coherent: tenant-admin tenant-wide, a project role
# in a project; anything else grants nothing.
_GROUPS = m.SCIM_GROUPS
_GROUP_MEMBERS = m.SCIM_GROUP_MEMBERS
_MEMBERSHIPS = union_all(
    select(m.MEMBERSHIPS.c.role, m.MEMBERSHIPS.c.project_id).where(
        m.MEMBERSHIPS.c.principal_id == bindparam("principal")
    ),
    select(_GROUPS.c.role, _GROUPS.c.project_id)
    .join(
        _GROUP_MEMBERS,
        and_(
            _GROUP_MEMBERS.c.group_id == _GROUPS.c.id,
            _GROUP_MEMBERS.c.tenant_id == _GROUPS.c.tenant_id,
        ),
    )
    .where(
        _GROUP_MEMBERS.c.principal_id == bindparam("principal"),
        or_(
            and_(_GROUPS.c.role == Role.TENANT_ADMIN.value, _GROUPS.c.project_id.is_(None)),
            and_(
                _GROUPS.c.role.in_((Role.DEVELOPER.value, Role.VIEWER.value)),
                _GROUPS.c.project_id.is_not(None),
            ),
        ),
    ),
    # Just-in-time elevations and break-glass: active from approval (or
    # invocation) until they expire or are revoked; nothing ends them but time.
    select(m.ACCESS_GRANTS.c.role, m.ACCESS_GRANTS.c.project_id).where(
        m.ACCESS_GRANTS.c.principal_id == bindparam("principal"),
        m.ACCESS_GRANTS.c.starts_at <= bindparam("now"),
        m.ACCESS_GRANTS.c.expires_at > bindparam("now"),
        m.ACCESS_GRANTS.c.revoked_at.is_(None),
    ),
)
_COMPACT_JWS = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
MAX_TOKEN_BYTES = 4096


class SigningKey:
    """The Ed25519 key that signs tokens. Its ``repr`` never shows key material."""

    def __init__(self, key: OKPKey) -> None:
        if key.curve_name != "Ed25519" or not key.is_private:
            raise ConfigurationError("the token signing key must be an Ed25519 private key")
        self._key = key
        self.kid = key.thumbprint()

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r})"

    def derived_secret(self, purpose: str) -> bytes:
        """A 32-byte secret for ``purpose`` (HKDF-SHA256 of the key), the same
        in every process holding the key, revealing nothing of it."""
        private = self._key.private_key
        if not isinstance(private, Ed25519PrivateKey):  # checked at construction
            raise ConfigurationError("the token signing key must be an Ed25519 private key")
        kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode())
        return kdf.derive(private.private_bytes_raw())

    @property
    def jwk(self) -> OKPKey:
        return self._key

    @classmethod
    def load(cls, path: Path, *, create: bool) -> SigningKey:
        """Load a PEM key; with ``create`` (development), make one if absent."""
        if not path.exists():
            if not create:
                raise ConfigurationError(
                    f"token signing key file {path} does not exist; create an Ed25519 "
                    "private key (PEM) there, readable only by the gateway."
                )
            # Racing processes agree on one key: the first file created stands.
            create_private(path, OKPKey.generate_key("Ed25519").as_pem(private=True))
        check_private(path, "token signing key file")
        return cls(OKPKey.import_key(path.read_bytes()))


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A freshly issued token. ``repr`` hides the token itself."""

    token: str
    jti: str
    principal_id: str
    tenant_id: str
    scopes: tuple[str, ...]
    expires_at: datetime

    def __repr__(self) -> str:
        return (
            f"IssuedToken(jti={self.jti!r}, principal_id={self.principal_id!r}, token=<redacted>)"
        )


#: ``amr`` values (RFC 8176) that are a second factor or a multi-factor
#: method in themselves.
MFA_METHODS = frozenset({"mfa", "otp", "hwk", "swk", "sms", "fpt", "face", "iris", "pop"})


def assurance(amr: Iterable[str]) -> str:
    """NIST SP 800-63B assurance level from a sign-in's ``amr``: ``aal2`` when
    it names a multi-factor method, else ``aal1``."""
    return "aal2" if MFA_METHODS.intersection(amr) else "aal1"


@dataclass(frozen=True, slots=True)
class SignIn:
    """How the holder of a token authenticated, carried into the token."""

    #: ``qustody-token`` (issued by an admin), ``oidc``, ``token-exchange``,
    #: ``api-key``, ``local``.
    method: str = "qustody-token"
    #: Where it came from: an issuer, a trust rule id, an API key id. No secrets.
    source: str | None = None
    acr: str | None = None
    amr: tuple[str, ...] = ()
    auth_time: datetime | None = None


def parse_scopes(scopes: Iterable[str] | None) -> tuple[str, ...]:
    wanted = tuple(sorted(set(scopes or ("*",))))
    unknown = [s for s in wanted if s not in SCOPES]
    if unknown or not wanted:
        raise InvalidScope(
            f"scopes {unknown} are not known; use any of {sorted(SCOPES)} ('*' for all)",
            field="scopes",
        )
    return wanted


class TokenService:
    def __init__(
        self,
        db: Database,
        key: SigningKey,
        *,
        issuer: str,
        audience: str,
        max_ttl_seconds: int = 900,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._db = db
        self._key = key
        self._issuer = issuer
        self._audience = audience
        self.max_ttl_seconds = max_ttl_seconds
        #: When elevations are in force (a ManualClock in tests).
        self._clock = clock

    def derived_secret(self, purpose: str) -> bytes:
        """See :meth:`SigningKey.derived_secret` (DPoP nonces use one)."""
        return self._key.derived_secret(purpose)

    def issue(
        self,
        session: Session,
        *,
        principal_id: str,
        tenant_id: str,
        scopes: Iterable[str] | None = None,
        ttl_seconds: int | None = None,
        sign_in: SignIn | None = None,
        jkt: str | None = None,
    ) -> IssuedToken:
        """Sign a token and record its ``jti`` on ``session`` (commit with the caller).

        ``sign_in`` says how the holder authenticated (its ``acr``, ``amr`` and
        ``auth_time`` become claims, for step-up); ``jkt`` binds the token to a
        DPoP key (claim ``cnf.jkt``, RFC 9449): it is then usable only with a
        proof signed by that key.
        """
        how = sign_in or SignIn()
        ttl = self.max_ttl_seconds if ttl_seconds is None else ttl_seconds
        if not 1 <= ttl <= self.max_ttl_seconds:
            raise InvalidTTL(
                f"ttl_seconds is {ttl}; tokens live between 1 and {self.max_ttl_seconds} "
                "seconds. Ask for a shorter lifetime.",
                field="ttl_seconds",
            )
        scope_list = parse_scopes(scopes)
        # The record keeps the exact instant, so a revocation cut-off in this
        # same second refuses only the tokens issued before it.
        issued = datetime.now(UTC)
        now = issued.replace(microsecond=0)
        expires = now + timedelta(seconds=ttl)
        jti = secrets.token_urlsafe(18)
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": principal_id,
            "tid": tenant_id,
            "jti": jti,
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int(expires.timestamp()),
            "scope": " ".join(scope_list),
        }
        if how.acr is not None:
            claims["acr"] = how.acr
        if how.amr:
            claims["amr"] = list(how.amr)
        if how.auth_time is not None:
            claims["auth_time"] = int(how.auth_time.timestamp())
        if jkt is not None:
            claims["cnf"] = {"jkt": jkt}
        header = {"alg": ALGORITHM, "kid": self._key.kid, "typ": TOKEN_TYPE}
        token = jwt.encode(header, claims, self._key.jwk, algorithms=[ALGORITHM])
        session.add(
            m.IssuedToken(
                jti=jti,
                tenant_id=tenant_id,
                principal_id=principal_id,
                scopes=" ".join(scope_list),
                issued_at=issued,
                expires_at=expires,
                auth_method=how.method,
                source=how.source,
                acr=how.acr,
                amr=" ".join(how.amr) or None,
                auth_time=how.auth_time,
                jkt=jkt,
            )
        )
        return IssuedToken(token, jti, principal_id, tenant_id, scope_list, expires)

    def _claims(self, token: str) -> dict[str, object]:
        if len(token) > MAX_TOKEN_BYTES or not _COMPACT_JWS.fullmatch(token):
            raise MalformedToken(
                "the bearer token is not a compact JWT; send the token Qustody issued, "
                "as 'Authorization: Bearer <token>'."
            )
        try:
            decoded = jwt.decode(token, self._key.jwk, algorithms=[ALGORITHM])
        except JoseError:
            raise InvalidToken(
                "the bearer token's signature does not verify; ask Qustody for a new token."
            ) from None
        except (ValueError, TypeError):
            raise MalformedToken(
                "the bearer token could not be decoded; send the token Qustody issued."
            ) from None
        if decoded.header.get("typ") != TOKEN_TYPE:
            # RFC 8725 section 3.11: a JWT of another kind (an ID token, a DPoP
            # proof) signed by the same key is not an access token.
            raise InvalidToken("the bearer token is not a Qustody access token.")
        claims = dict(decoded.claims)
        now = int(datetime.now(UTC).timestamp())
        try:
            iat, nbf, exp = (int(claims[name]) for name in ("iat", "nbf", "exp"))
            subject, tenant, jti = (str(claims[name]) for name in ("sub", "tid", "jti"))
        except (KeyError, TypeError, ValueError):
            raise InvalidToken(
                "the bearer token lacks required claims; ask for a new token."
            ) from None
        if claims.get("iss") != self._issuer or claims.get("aud") != self._audience:
            raise InvalidToken("the bearer token was issued for another service.")
        if exp - iat > self.max_ttl_seconds:
            raise InvalidToken(
                f"the bearer token lives longer than {self.max_ttl_seconds} seconds; "
                "Qustody refuses long-lived tokens."
            )
        if exp <= now:
            raise ExpiredToken("the bearer token has expired; ask Qustody for a new token.")
        if nbf > now + 5:
            raise InvalidToken("the bearer token is not valid yet; check the clock.")
        claims.update(sub=subject, tid=tenant, jti=jti)
        return claims

    def authenticate(self, token: str) -> Principal:
        """Verify ``token`` and build the :class:`Principal` it stands for."""
        claims = self._claims(token)
        try:
            # The signed tenant claim scopes the lookup (row-level security).
            scope = tenant(str(claims["tid"]))
        except ValueError:
            raise InvalidToken("the bearer token names no tenant; ask for a new token.") from None
        with self._db.reading(scope=scope) as connection:
            row = connection.execute(_TOKEN_AND_PRINCIPAL, {"jti": claims["jti"]}).one_or_none()
            if row is None:
                raise InvalidToken("Qustody has no record of issuing this token.")
            if row.principal_id != claims["sub"] or row.tenant_id != claims["tid"]:
                raise InvalidToken("the bearer token's claims do not match its record.")
            if row.revoked_at is not None or cut_off(row.issued_at, row):
                raise RevokedToken("the bearer token was revoked; ask Qustody for a new token.")
            if not row.active:
                raise RevokedToken(
                    "the bearer token's principal is deactivated; ask your tenant admin."
                )
            tenant_roles, project_roles = roles_of(connection, row.principal_id, self._clock.now())
        amr = frozenset((row.amr or "").split())
        return Principal(
            id=PrincipalId(row.principal_id),
            tenant_id=TenantId(row.principal_tenant_id),
            name=row.name,
            kind="workload" if row.kind == "workload" else "user",
            token_id=row.jti,
            scopes=frozenset(row.scopes.split()),
            auth_method=row.auth_method,
            tenant_roles=tenant_roles,
            project_roles=project_roles,
            auth_strength=assurance(amr),
            acr=row.acr,
            amr=amr,
            auth_time=utc(row.auth_time),
            # The thumbprint the token is bound to: the API layer verifies this
            # request's DPoP proof against it before the principal goes further.
            dpop_jkt=row.jkt,
        )

    def revoke(self, session: Session, jti: str) -> m.IssuedToken | None:
        row = session.get(m.IssuedToken, jti)
        if row is not None and row.revoked_at is None:
            row.revoked_at = datetime.now(UTC)
        return row


def roles_of(
    connection: Connection, principal_id: str, now: datetime | None = None
) -> tuple[frozenset[Role], tuple[tuple[ProjectId, Role], ...]]:
    """The roles a principal holds at ``now`` (default: the system clock):
    tenant-wide, and per project (its own memberships, those of its SCIM
    groups, and its active elevations). One query."""
    at = now or datetime.now(UTC)
    memberships = connection.execute(_MEMBERSHIPS, {"principal": principal_id, "now": at}).all()
    tenant_roles = frozenset(Role(ms.role) for ms in memberships if ms.project_id is None)
    project_roles = tuple(
        (ProjectId(ms.project_id), Role(ms.role)) for ms in memberships if ms.project_id is not None
    )
    return tenant_roles, project_roles


def cut_off(issued_at: datetime | None, row: Any) -> bool:
    """Whether a credential issued at ``issued_at`` predates its principal's or
    tenant's revocation cut-off (``row.principal_not_before``,
    ``row.tenant_not_before``)."""
    issued = utc(issued_at)
    for cut in (row.principal_not_before, row.tenant_not_before):
        cut = utc(cut)
        if cut is not None and issued is not None and issued < cut:
            return True
    return False

"""API keys, for the few callers that cannot federate.

A key reads ``qst_`` + 32 characters of base62 randomness (190 bits) + a
6-character base62 CRC32 checksum of everything before it: 42 characters,
``qst_[0-9A-Za-z]{38}``. The checksum lets a secret scanner confirm a match
offline, so a string that merely looks like a key is not reported (no false
positives), and lets Qustody refuse a mistyped key without a lookup.

Qustody stores only the key's SHA-256. Every key expires (at most 90 days,
``api_key_max_days``), is scoped, can be revoked, and records when it was last
used (at most once a minute, so a busy key does not write on every request).
A key is refused, like a token, once its principal is deactivated or the
principal's or tenant's revocation cut-off passes its creation.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, or_, select, update

from qustody.audit.recorder import Actor, Target, record
from qustody.domain.clock import SYSTEM_CLOCK, Clock
from qustody.domain.errors import InvalidRequest
from qustody.domain.ids import PrincipalId, TenantId, looks_like_id, new_id
from qustody.domain.models import Principal, RequestContext, Resource
from qustody.domain.vocabulary import Action
from qustody.identity.errors import ExpiredToken, InvalidToken, MalformedToken, RevokedToken
from qustody.identity.tokens import assurance, cut_off, parse_scopes, roles_of
from qustody.policy.guard import Guard, not_found
from qustody.policy.misses import records_misses
from qustody.storage import models as m
from qustody.storage.db import SYSTEM, Database, tenant, utc

PREFIX = "qst_"
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_CHARS = 32
CHECKSUM_CHARS = 6
KEY_CHARS = len(PREFIX) + RANDOM_CHARS + CHECKSUM_CHARS
#: What a secret scanner looks for (then it checks :func:`checksum`).
KEY_PATTERN = re.compile(rf"{PREFIX}[0-9A-Za-z]{{{RANDOM_CHARS + CHECKSUM_CHARS}}}")
#: The longest lifetime any key may have, whatever the settings say.
MAX_DAYS = 90
#: ``last_used_at`` is written at most this often per key.
LAST_USED_EVERY = timedelta(seconds=60)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

_KEYS = m.API_KEYS
_PRINCIPALS = m.PRINCIPALS
_TENANTS = m.TENANTS
_KEY_AND_PRINCIPAL = (
    select(
        _KEYS.c.id,
        _KEYS.c.tenant_id,
        _KEYS.c.principal_id,
        _KEYS.c.scopes,
        _KEYS.c.created_at,
        _KEYS.c.expires_at,
        _KEYS.c.revoked_at,
        _KEYS.c.last_used_at,
        _PRINCIPALS.c.tenant_id.label("principal_tenant_id"),
        _PRINCIPALS.c.name,
        _PRINCIPALS.c.kind,
        _PRINCIPALS.c.active,
        _PRINCIPALS.c.tokens_not_before.label("principal_not_before"),
        _TENANTS.c.tokens_not_before.label("tenant_not_before"),
    )
    .join(_PRINCIPALS, _PRINCIPALS.c.id == _KEYS.c.principal_id)
    .join(_TENANTS, _TENANTS.c.id == _PRINCIPALS.c.tenant_id)
    .where(_KEYS.c.digest == bindparam("digest"))
)


# -- the format (pure) ---------------------------------------------------------------


def _base62(value: int, width: int) -> str:
    digits = []
    while value:
        value, digit = divmod(value, 62)
        digits.append(BASE62[digit])
    return "".join(reversed(digits)).rjust(width, "0")


def checksum(body: str) -> str:
    """The 6-character checksum of a key's first 36 characters: their CRC32
    (ISO-HDLC, as :func:`zlib.crc32`) in base62, most significant digit first,
    ``0``-padded."""
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_CHARS)


def generate() -> str:
    body = PREFIX + "".join(secrets.choice(BASE62) for _ in range(RANDOM_CHARS))
    return body + checksum(body)


def is_well_formed(key: str) -> bool:
    """Whether ``key`` has the shape of a Qustody API key and a matching checksum."""
    if len(key) != KEY_CHARS or not KEY_PATTERN.fullmatch(key):
        return False
    return secrets.compare_digest(checksum(key[:-CHECKSUM_CHARS]), key[-CHECKSUM_CHARS:])


def digest(key: str) -> str:
    """What is stored: the hex SHA-256 of the key (high-entropy: no salt or stretching needed)."""
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def looks_like_key(credential: str) -> bool:
    """Whether a presented credential is meant as an API key (it has the prefix)."""
    return credential.startswith(PREFIX)


# -- the service -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    id: str
    name: str
    principal_id: str
    principal_name: str
    scopes: tuple[str, ...]
    created_at: datetime
    created_by: str
    expires_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


@dataclass(frozen=True, slots=True)
class NewApiKey:
    """A key just created: the only time its secret exists outside the caller's hands."""

    key: str
    info: ApiKeyInfo

    def __repr__(self) -> str:
        return f"NewApiKey(id={self.info.id!r}, key=<redacted>)"


def _info(row: m.ApiKey, principal_name: str) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=row.id,
        name=row.name,
        principal_id=row.principal_id,
        principal_name=principal_name,
        scopes=tuple(row.scopes.split()),
        created_at=utc(row.created_at) or row.created_at,
        created_by=row.created_by,
        expires_at=utc(row.expires_at) or row.expires_at,
        revoked_at=utc(row.revoked_at),
        last_used_at=utc(row.last_used_at),
    )


class ApiKeyService:
    def __init__(
        self, db: Database, guard: Guard, *, max_days: int = MAX_DAYS, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        if not 1 <= max_days <= MAX_DAYS:
            raise ValueError(f"max_days must be between 1 and {MAX_DAYS}")
        self._db = db
        self._guard = guard
        self.max_days = max_days
        #: When elevations are in force (a ManualClock in tests).
        self._clock = clock

    # -- administration ------------------------------------------------------------

    @records_misses(Action.APIKEY_CREATE)
    def create(
        self,
        caller: Principal,
        request: RequestContext,
        *,
        principal_name: str,
        name: str,
        scopes: Sequence[str] | None,
        expires_in_days: int,
    ) -> NewApiKey:
        """A new key for ``principal_name`` of the caller's tenant; its secret is returned once."""
        if not _NAME.fullmatch(name):
            raise InvalidRequest(
                f"name {name[:80]!r} is not allowed; use letters, digits, '.', '_' and '-', "
                "1 to 64 characters.",
                field="name",
            )
        if not 1 <= expires_in_days <= self.max_days:
            raise InvalidRequest(
                f"expires_in_days is {expires_in_days}; an API key lives 1 to {self.max_days} "
                "days. Ask for a shorter lifetime, and rotate the key before it expires.",
                field="expires_in_days",
            )
        wanted = parse_scopes(scopes)
        target = self._principal(caller, principal_name)
        decision = self._guard.check(
            caller,
            Action.APIKEY_CREATE,
            Resource("principal", target.id, caller.tenant_id, owner_id=PrincipalId(target.id)),
            request,
        )
        if "*" not in caller.scopes and not set(wanted) <= caller.scopes:
            raise InvalidRequest(
                f"scopes {sorted(set(wanted) - caller.scopes)} exceed this token's scopes "
                f"{sorted(caller.scopes)}; a key can only be as broad as the token creating it.",
                field="scopes",
            )
        if not target.active:
            raise InvalidRequest(
                f"principal {target.name} is deactivated; an API key for it would not work.",
                field="principal",
            )
        key = generate()
        now = self._clock.now()
        row = m.ApiKey(
            id=new_id("apk"),
            tenant_id=caller.tenant_id,
            principal_id=target.id,
            name=name,
            digest=digest(key),
            scopes=" ".join(wanted),
            created_at=now,
            created_by=caller.id,
            expires_at=now + timedelta(days=expires_in_days),
        )
        with self._db.write() as session:
            session.add(row)
            session.flush()
            record(
                session,
                Action.APIKEY_CREATE,
                actor=Actor.of(caller),
                target=Target("apikey", row.id, caller.tenant_id),
                decision=decision,
                request=request,
                reason=(
                    f"for={target.name} name={name} scopes={' '.join(wanted)} "
                    f"expires={row.expires_at:%Y-%m-%dT%H:%M:%SZ}"
                ),
            )
        return NewApiKey(key, _info(row, target.name))

    @records_misses(Action.APIKEY_LIST)
    def list_keys(
        self, caller: Principal, request: RequestContext, *, principal_name: str | None = None
    ) -> list[ApiKeyInfo]:
        """The tenant's keys (or one principal's), newest first; never a secret."""
        if principal_name is None:
            resource = Resource("tenant", caller.tenant_id, caller.tenant_id)
            target_id = None
        else:
            target = self._principal(caller, principal_name)
            target_id = target.id
            resource = Resource(
                "principal", target.id, caller.tenant_id, owner_id=PrincipalId(target.id)
            )
        self._guard.check(caller, Action.APIKEY_LIST, resource, request)
        with self._db.read() as session:
            query = (
                select(m.ApiKey, m.Principal.name)
                .join(m.Principal, m.Principal.id == m.ApiKey.principal_id)
                .where(m.ApiKey.tenant_id == caller.tenant_id)
            )
            if target_id is not None:
                query = query.where(m.ApiKey.principal_id == target_id)
            rows = session.execute(query.order_by(m.ApiKey.created_at.desc())).all()
            return [_info(key, name) for key, name in rows]

    @records_misses(Action.APIKEY_REVOKE)
    def revoke(self, caller: Principal, request: RequestContext, key_id: str) -> ApiKeyInfo:
        """Revoke a key of the caller's tenant (authorized on the tenant, before
        the lookup, so a probe learns nothing of which ids exist)."""
        decision = self._guard.check(
            caller,
            Action.APIKEY_REVOKE,
            Resource("tenant", caller.tenant_id, caller.tenant_id),
            request,
        )
        with self._db.read() as session:
            found = (
                session.execute(
                    select(m.ApiKey, m.Principal.name)
                    .join(m.Principal, m.Principal.id == m.ApiKey.principal_id)
                    .where(m.ApiKey.tenant_id == caller.tenant_id, m.ApiKey.id == key_id)
                ).one_or_none()
                if looks_like_id(key_id)
                else None
            )
        if found is None:
            raise not_found("apikey", key_id[:64])
        key, principal_name = found
        now = self._clock.now()
        with self._db.write() as session:
            session.execute(
                update(m.ApiKey)
                .where(m.ApiKey.id == key.id, m.ApiKey.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            record(
                session,
                Action.APIKEY_REVOKE,
                actor=Actor.of(caller),
                target=Target("apikey", key.id, caller.tenant_id),
                decision=decision,
                request=request,
                reason=f"for={principal_name} name={key.name}",
            )
            revoked = session.get(m.ApiKey, key.id)
            assert revoked is not None
            return _info(revoked, principal_name)

    def _principal(self, caller: Principal, name: str) -> m.Principal:
        with self._db.read() as session:
            row = session.scalar(
                select(m.Principal).where(
                    m.Principal.tenant_id == caller.tenant_id, m.Principal.name == name[:128]
                )
            )
        if row is None:
            raise not_found("principal", name[:80])
        return row

    # -- authentication ------------------------------------------------------------

    def authenticate(self, key: str) -> Principal:
        """The principal an API key stands for, with the key's scopes."""
        if not is_well_formed(key):
            raise MalformedToken(
                "the credential starts with 'qst_' but is not a Qustody API key (its checksum "
                "does not match); copy the whole key as it was shown when created."
            )
        now = self._clock.now()
        # The tenant is known only once the key is found.
        with self._db.reading(scope=SYSTEM) as connection:
            row = connection.execute(_KEY_AND_PRINCIPAL, {"digest": digest(key)}).one_or_none()
            if row is None:
                raise InvalidToken("Qustody has no record of this API key.")
            if row.revoked_at is not None or cut_off(row.created_at, row):
                raise RevokedToken("the API key was revoked; ask your tenant admin for a new one.")
            expires = utc(row.expires_at)
            if expires is None or expires <= now:
                raise ExpiredToken(
                    "the API key has expired; ask your tenant admin for a new one "
                    "(keys live at most 90 days)."
                )
            if not row.active:
                raise RevokedToken("the API key's principal is deactivated; ask your tenant admin.")
            tenant_roles, project_roles = roles_of(connection, row.principal_id, self._clock.now())
        last_used = utc(row.last_used_at)
        if last_used is None or now - last_used >= LAST_USED_EVERY:
            self._touch(row.id, row.tenant_id, now)
        return Principal(
            id=PrincipalId(row.principal_id),
            tenant_id=TenantId(row.principal_tenant_id),
            name=row.name,
            kind="workload" if row.kind == "workload" else "user",
            # Audit events name the key (never its secret) as the credential used.
            token_id=row.id,
            scopes=frozenset(row.scopes.split()),
            auth_method="api-key",
            tenant_roles=tenant_roles,
            project_roles=project_roles,
            auth_strength=assurance(()),
        )

    def _touch(self, key_id: str, tenant_id: str, now: datetime) -> None:
        """Record a use, unless another request did within the last minute."""
        with self._db.writing(scope=tenant(tenant_id)) as connection:
            connection.execute(
                update(_KEYS)
                .where(
                    _KEYS.c.id == key_id,
                    or_(
                        _KEYS.c.last_used_at.is_(None),
                        _KEYS.c.last_used_at < now - LAST_USED_EVERY,
                    ),
                )
                .values(last_used_at=now)
            )

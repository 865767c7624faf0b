"""Local accounts: embedded mode's own sign-in, for development only.

Where no identity provider is configured, a person can sign in with a
password and, once enrolled, a TOTP code (RFC 6238) and get a short-lived
Qustody token like any other sign-in. This is a development convenience:
constructing the service warns (:class:`InsecureDevelopmentWarning`), and
production mode refuses the setting that switches it on.

- Passwords are hashed with Argon2id at the parameters RFC 9106 recommends
  for memory-constrained systems (t=3, m=64 MiB, p=4); a hash made with
  other parameters is replaced at the next good sign-in.
- The TOTP secret (160 random bits) is sealed under the tenant's ``secret``
  key ring as field ``totp`` of the principal; a new secret waits as
  ``totp_pending`` until a code from it confirms the enrolment, so enrolling
  again never leaves the account without its second factor.
- A code is good once: the time step it was accepted at is kept
  (``totp_last_step``) and that step and earlier ones are refused after.
  One step of clock drift either way is accepted.
- After :data:`MAX_FAILURES` wrong passwords or codes in a row the account is
  locked for :data:`LOCK_SECONDS`; a locked account answers exactly as a
  wrong password does.
- An unknown tenant or user costs the same Argon2 verification (against a
  dummy hash) and gets the same answer as a wrong password.

Every sign-in writes ``auth:login`` or ``auth:fail`` (with a reason code,
never the username, the password or the code); setting a password and
enrolling TOTP write ``account:set``.
"""

from __future__ import annotations

import hmac
import re
import secrets
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyotp
from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Row, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from qustody.audit.recorder import Actor, Target, record
from qustody.domain.errors import (
    AuthenticationError,
    Conflict,
    Forbidden,
    InsecureDevelopmentWarning,
    InvalidRequest,
)
from qustody.domain.ids import PrincipalId, TenantId, looks_like_id
from qustody.domain.models import Principal, RequestContext, Resource
from qustody.domain.vocabulary import Action
from qustody.identity.tokens import IssuedToken, SignIn, TokenService, assurance
from qustody.keys.service import KeyScope, KeyService, Purpose
from qustody.policy.guard import Guard, not_found
from qustody.policy.misses import records_misses
from qustody.storage import models as m
from qustody.storage.db import SYSTEM, Database, utc
from qustody.storage.db import tenant as tenant_scope

#: Sealed fields of a principal: the TOTP secret in force, and one awaiting confirmation.
TOTP_FIELD = "totp"
TOTP_PENDING_FIELD = "totp_pending"
TOTP_FIELDS = (TOTP_FIELD, TOTP_PENDING_FIELD)
#: NIST SP 800-63B-4: at least 15 characters for a password that may be the only factor.
MIN_PASSWORD_LENGTH = 15
MAX_PASSWORD_LENGTH = 256
MAX_FAILURES = 5
LOCK_SECONDS = 15 * 60
TOTP_DIGITS = 6
TOTP_PERIOD = 30
#: Time steps accepted either side of now (RFC 6238 section 5.2).
TOTP_DRIFT = 1
#: RFC 9106 section 4, second recommended option: Argon2id, t=3, m=64 MiB, p=4.
PASSWORD_PARAMETERS = profiles.RFC_9106_LOW_MEMORY

_LA = m.LOCAL_ACCOUNTS
_P = m.PRINCIPALS
_CODE = re.compile(r"^[0-9]{6}$")
_OK = "ok"
#: Outcomes that count towards the lockout.
_COUNTED = frozenset({"wrong_password", "wrong_code", "replayed_code"})


class LocalAccountsDisabled(Forbidden):
    code = "local_accounts_disabled"
    title = "Local accounts are switched off"


class InvalidCredentials(AuthenticationError):
    code = "invalid_credentials"
    title = "Sign-in failed"


class TotpRequired(AuthenticationError):
    code = "totp_required"
    title = "A TOTP code is required"


class WeakPassword(InvalidRequest):
    code = "weak_password"
    title = "Password not accepted"


class NoLocalAccount(Conflict):
    code = "no_local_account"
    title = "No local account"


class TotpNotPending(Conflict):
    code = "totp_not_pending"
    title = "No TOTP enrolment to confirm"


class InvalidTotpCode(InvalidRequest):
    code = "invalid_totp_code"
    title = "Wrong TOTP code"


class SecondFactorRequired(Forbidden):
    code = "second_factor_required"
    title = "Sign in with your second factor first"


@dataclass(frozen=True, slots=True)
class SignedIn:
    token: IssuedToken
    amr: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TotpEnrollment:
    """A new TOTP secret, returned once; ``repr`` hides it."""

    secret: str
    uri: str

    def __repr__(self) -> str:
        return "TotpEnrollment(<redacted>)"


# -- RFC 6238, pure --------------------------------------------------------------------


def totp_step(at: datetime) -> int:
    """The time step of ``at`` (RFC 6238 section 4.2: T0 = 0, X = 30 s)."""
    return int(at.timestamp()) // TOTP_PERIOD


def totp_code(secret: str, step: int) -> str:
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_PERIOD).generate_otp(step)


def match_totp(secret: str, code: str, at: datetime, last_step: int | None) -> int | None:
    """The time step ``code`` belongs to, within :data:`TOTP_DRIFT` steps of
    ``at`` and later than ``last_step``; ``None`` if there is none.

    Every candidate step is computed and compared in constant time, so the
    answer's timing does not tell which step (if any) matched.
    """
    if not _CODE.fullmatch(code):
        return None
    now = totp_step(at)
    found = None
    for step in range(now - TOTP_DRIFT, now + TOTP_DRIFT + 1):
        if hmac.compare_digest(totp_code(secret, step), code) and found is None:
            found = step
    if found is None or (last_step is not None and found <= last_step):
        return None
    return found


def check_password(password: str) -> str:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise WeakPassword(
            f"the password has {len(password)} characters; use {MIN_PASSWORD_LENGTH} to "
            f"{MAX_PASSWORD_LENGTH} (a passphrase of a few words is easiest).",
            field="password",
        )
    if not password.strip():
        raise WeakPassword("the password is only whitespace; choose another.", field="password")
    return password


# -- the service -----------------------------------------------------------------------


class LocalAccounts:
    def __init__(
        self,
        db: Database,
        guard: Guard,
        tokens: TokenService,
        keys: KeyService,
        *,
        enabled: bool,
        hasher: PasswordHasher | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._db = db
        self._guard = guard
        self._tokens = tokens
        self._keys = keys
        self.enabled = enabled
        self._hasher = hasher or PasswordHasher.from_parameters(PASSWORD_PARAMETERS)
        self._clock = clock
        self._dummy: str | None = None
        if enabled:
            warnings.warn(
                "local accounts are enabled: passwords and TOTP kept by the gateway, for "
                "development without an identity provider. Production mode refuses them "
                "(QUSTODY_LOCAL_ACCOUNTS).",
                InsecureDevelopmentWarning,
                stacklevel=2,
            )

    # -- sign-in ------------------------------------------------------------------------

    def sign_in(
        self,
        request: RequestContext,
        *,
        tenant: str,
        username: str,
        password: str,
        code: str | None = None,
    ) -> SignedIn:
        """A Qustody token for the right password (and code, once enrolled)."""
        self._check_enabled()
        now = self._clock()
        # The tenant is not known until the account is found: system scope.
        with self._db.reading(scope=SYSTEM) as connection:
            account = connection.execute(
                select(_LA, _P.c.name, _P.c.active, _P.c.kind)
                .join(_P, _P.c.id == _LA.c.principal_id)
                .join(m.TENANTS, m.TENANTS.c.id == _P.c.tenant_id)
                .where(m.TENANTS.c.name == tenant[:64], _P.c.name == username[:128])
            ).first()
        if account is None or _locked(account, now):
            self._burn(password)
            self._failed(request, account, "locked" if account is not None else "unknown_account")
            raise _invalid()
        password_ok = self._verify(account.password_hash, password)
        rehash = password_ok and self._hasher.check_needs_rehash(account.password_hash)
        new_hash = self._hasher.hash(password) if rehash else None
        with self._db.write(scope=tenant_scope(account.tenant_id)) as session:
            current = session.execute(
                select(_LA).where(_LA.c.principal_id == account.principal_id).with_for_update()
            ).first()
            outcome = self._decide(session, account, current, password_ok, code, now)
            if outcome in _COUNTED:
                _count_failure(session, account.principal_id, now)
            if outcome is _OK and current is not None:
                return self._succeed(session, request, current, new_hash, now)
        if outcome == "totp_required":
            raise TotpRequired(
                "this account has TOTP: send the current 6-digit code from your "
                "authenticator app as 'totp'."
            )
        self._failed(request, account, outcome)
        raise _invalid()

    def _decide(
        self,
        session: Session,
        account: Row[Any],
        current: Row[Any] | None,
        password_ok: bool,
        code: str | None,
        now: datetime,
    ) -> str:
        """``ok``, ``totp_required``, or why the sign-in fails."""
        if current is None or current.password_hash != account.password_hash:
            return "account_changed"  # a new password was set meanwhile
        if _locked(current, now):
            return "locked"
        if not password_ok:
            return "wrong_password"
        if not account.active or account.kind != "user":
            return "inactive"
        if not current.totp_enabled:
            return _OK
        if not code:
            return "totp_required"
        return self._check_code(session, current, code, now) or _OK

    def _check_code(
        self, session: Session, account: Row[Any], code: str, now: datetime
    ) -> str | None:
        secret = self._keys.open(session, account.tenant_id, account.principal_id, TOTP_FIELD)
        if secret is None:
            return "totp_missing"
        step = match_totp(secret.decode(), code, now, account.totp_last_step)
        if step is None:
            replayed = match_totp(secret.decode(), code, now, None) is not None
            return "replayed_code" if replayed else "wrong_code"
        session.execute(
            update(_LA)
            .where(_LA.c.principal_id == account.principal_id)
            .values(totp_last_step=step)
        )
        return None

    def _succeed(
        self,
        session: Session,
        request: RequestContext,
        account: Row[Any],
        new_hash: str | None,
        now: datetime,
    ) -> SignedIn:
        values: dict[str, object] = {"failed_attempts": 0, "locked_until": None}
        if new_hash is not None:
            values.update(password_hash=new_hash, updated_at=now)
        session.execute(
            update(_LA).where(_LA.c.principal_id == account.principal_id).values(**values)
        )
        amr = ("pwd", "otp", "mfa") if account.totp_enabled else ("pwd",)
        token = self._tokens.issue(
            session,
            principal_id=account.principal_id,
            tenant_id=account.tenant_id,
            sign_in=SignIn(method="local", source="local", amr=amr, auth_time=now),
        )
        record(
            session,
            Action.AUTH_LOGIN,
            actor=Actor(
                account.principal_id, account.tenant_id, "local", token.jti, assurance(amr)
            ),
            target=Target("token", token.jti, account.tenant_id),
            request=request,
            reason="local sign-in" + (" with TOTP" if account.totp_enabled else ""),
        )
        return SignedIn(token, amr)

    def _failed(self, request: RequestContext, account: Row[Any] | None, reason: str) -> None:
        with self._db.write(scope=SYSTEM) as session:
            record(
                session,
                Action.AUTH_FAIL,
                actor=Actor("anonymous", auth_method="local"),
                outcome="failure",
                target=Target("principal", account.principal_id, account.tenant_id)
                if account is not None
                else None,
                request=request,
                reason=f"local sign-in: {reason}",
            )

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def _burn(self, password: str) -> None:
        """Spend what a real verification costs, so an unknown or locked
        account cannot be told from a wrong password by the answer's time."""
        if self._dummy is None:
            self._dummy = self._hasher.hash(secrets.token_urlsafe(16))
        self._verify(self._dummy, password)

    # -- credentials --------------------------------------------------------------------

    @records_misses(Action.ACCOUNT_SET)
    def set_password(
        self, caller: Principal, request: RequestContext, principal_ref: str, password: str
    ) -> None:
        """Set (or replace) a principal's password; unlocks the account."""
        self._check_enabled()
        check_password(password)
        target = self._target(caller, principal_ref)
        decision = self._guard.check(caller, Action.ACCOUNT_SET, _resource(target), request)
        password_hash = self._hasher.hash(password)
        now = self._clock()
        try:
            with self._db.write() as session:
                exists = session.execute(
                    select(_LA.c.principal_id)
                    .where(_LA.c.principal_id == target.id)
                    .with_for_update()
                ).first()
                if exists is None:
                    session.execute(
                        insert(_LA),
                        {
                            "principal_id": target.id,
                            "tenant_id": target.tenant_id,
                            "password_hash": password_hash,
                            "totp_enabled": False,
                            "failed_attempts": 0,
                            "created_at": now,
                            "updated_at": now,
                        },
                    )
                else:
                    session.execute(
                        update(_LA)
                        .where(_LA.c.principal_id == target.id)
                        .values(
                            password_hash=password_hash,
                            failed_attempts=0,
                            locked_until=None,
                            updated_at=now,
                        )
                    )
                record(
                    session,
                    Action.ACCOUNT_SET,
                    actor=Actor.of(caller),
                    target=Target("principal", target.id, target.tenant_id),
                    decision=decision,
                    request=request,
                    reason="password set" if exists is None else "password replaced",
                )
        except IntegrityError:
            raise Conflict("the password was set by a concurrent request; try again.") from None

    @records_misses(Action.ACCOUNT_SET)
    def enroll_totp(
        self, caller: Principal, request: RequestContext, principal_ref: str
    ) -> TotpEnrollment:
        """A new TOTP secret, pending until :meth:`confirm_totp`; the one in
        force (if any) stays in force until then."""
        self._check_enabled()
        target = self._target(caller, principal_ref)
        decision = self._guard.check(caller, Action.ACCOUNT_SET, _resource(target), request)
        secret = pyotp.random_base32(32)
        with self._db.write() as session:
            account = session.execute(
                select(_LA).where(_LA.c.principal_id == target.id).with_for_update()
            ).first()
            if account is None:
                raise NoLocalAccount(
                    "set a password for this principal first (`qustody account password`).",
                )
            if account.totp_enabled and caller.id == target.id and "otp" not in caller.amr:
                raise SecondFactorRequired(
                    "TOTP is already enrolled: sign in with your current code "
                    "(`qustody account sign-in`), then enrol again; or ask a tenant admin."
                )
            _delete_sealed(session, target.id, TOTP_PENDING_FIELD)
            self._keys.seal(
                session,
                _secret_scope(target.tenant_id),
                target.id,
                TOTP_PENDING_FIELD,
                secret.encode(),
            )
            tenant = session.execute(
                select(m.TENANTS.c.name).where(m.TENANTS.c.id == target.tenant_id)
            ).scalar_one()
            record(
                session,
                Action.ACCOUNT_SET,
                actor=Actor.of(caller),
                target=Target("principal", target.id, target.tenant_id),
                decision=decision,
                request=request,
                reason="totp enrolment started",
            )
        uri = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_PERIOD).provisioning_uri(
            name=f"{target.name}@{tenant}", issuer_name="Qustody"
        )
        return TotpEnrollment(secret, uri)

    @records_misses(Action.ACCOUNT_SET)
    def confirm_totp(
        self, caller: Principal, request: RequestContext, principal_ref: str, code: str
    ) -> None:
        """Put the pending secret in force, given a current code from it."""
        self._check_enabled()
        target = self._target(caller, principal_ref)
        decision = self._guard.check(caller, Action.ACCOUNT_SET, _resource(target), request)
        now = self._clock()
        with self._db.write() as session:
            account = session.execute(
                select(_LA).where(_LA.c.principal_id == target.id).with_for_update()
            ).first()
            pending = (
                self._keys.open(session, target.tenant_id, target.id, TOTP_PENDING_FIELD)
                if account is not None
                else None
            )
            if account is None or pending is None:
                raise TotpNotPending(
                    "there is no TOTP enrolment to confirm; start one with "
                    "`qustody account totp-enroll`."
                )
            step = match_totp(pending.decode(), code, now, None)
            if step is None:
                raise InvalidTotpCode(
                    "the code does not match the new secret; check the authenticator app "
                    "shows the entry just added and its clock is right, then try the current code.",
                    field="code",
                )
            _delete_sealed(session, target.id, TOTP_FIELD)
            _delete_sealed(session, target.id, TOTP_PENDING_FIELD)
            self._keys.seal(
                session, _secret_scope(target.tenant_id), target.id, TOTP_FIELD, pending
            )
            session.execute(
                update(_LA)
                .where(_LA.c.principal_id == target.id)
                .values(totp_enabled=True, totp_last_step=step, updated_at=now)
            )
            record(
                session,
                Action.ACCOUNT_SET,
                actor=Actor.of(caller),
                target=Target("principal", target.id, target.tenant_id),
                decision=decision,
                request=request,
                reason="totp enrolled",
            )

    # -- helpers ------------------------------------------------------------------------

    def _check_enabled(self) -> None:
        if not self.enabled:
            raise LocalAccountsDisabled(
                "local accounts are switched off on this gateway; sign in through your "
                "identity provider (they are a development convenience, "
                "QUSTODY_LOCAL_ACCOUNTS, refused in production)."
            )

    def _target(self, caller: Principal, ref: str) -> _Target:
        """A principal of the caller's tenant by id, name or ``me``; 404 otherwise."""
        if ref == "me":
            ref = caller.id
        column = _P.c.id if looks_like_id(ref) else _P.c.name
        with self._db.reading() as connection:
            row = connection.execute(
                select(_P.c.id, _P.c.tenant_id, _P.c.name, _P.c.kind).where(
                    _P.c.tenant_id == caller.tenant_id, column == ref[:128]
                )
            ).first()
        if row is None or row.name.startswith("~"):
            raise not_found("principal", ref[:64])
        if row.kind != "user":
            raise InvalidRequest(
                "local accounts are for people; a workload signs in with token exchange or "
                "an API key.",
                field="principal",
            )
        return _Target(PrincipalId(row.id), TenantId(row.tenant_id), row.name)


@dataclass(frozen=True, slots=True)
class _Target:
    id: PrincipalId
    tenant_id: TenantId
    name: str


def _resource(target: _Target) -> Resource:
    return Resource("principal", target.id, target.tenant_id, owner_id=target.id)


def _secret_scope(tenant_id: str) -> KeyScope:
    return KeyScope(tenant_id, None, Purpose.SECRET)


def _delete_sealed(session: Session, principal_id: str, field_name: str) -> None:
    session.execute(
        delete(m.SEALED_OBJECTS).where(
            m.SEALED_OBJECTS.c.object_id == principal_id, m.SEALED_OBJECTS.c.field == field_name
        )
    )


def _locked(account: Row[Any], now: datetime) -> bool:
    until = utc(account.locked_until)
    return until is not None and until > now


def _count_failure(session: Session, principal_id: str, now: datetime) -> None:
    failures = session.execute(
        update(_LA)
        .where(_LA.c.principal_id == principal_id)
        .values(failed_attempts=_LA.c.failed_attempts + 1)
        .returning(_LA.c.failed_attempts)
    ).scalar_one()
    if failures >= MAX_FAILURES:
        session.execute(
            update(_LA)
            .where(_LA.c.principal_id == principal_id)
            .values(failed_attempts=0, locked_until=now + timedelta(seconds=LOCK_SECONDS))
        )


def _invalid() -> InvalidCredentials:
    return InvalidCredentials(
        "the tenant, username, password or code is wrong (or the account is locked for a "
        f"while after {MAX_FAILURES} failures); check them and try again."
    )

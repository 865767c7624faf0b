"""Local accounts on real SQLite and PostgreSQL: passwords (Argon2id), TOTP,
replay, lockout, rehashing, authorization, and secrets kept out of the audit
log, the logs and the database."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from qustody.api.app import Runtime
from qustody.cli.demo import ensure_demo
from qustody.domain.errors import Forbidden, InvalidRequest, NotFound
from qustody.domain.vocabulary import Role
from qustody.identity.local_accounts import (
    LOCK_SECONDS,
    MAX_FAILURES,
    PASSWORD_PARAMETERS,
    InvalidCredentials,
    InvalidTotpCode,
    LocalAccounts,
    LocalAccountsDisabled,
    NoLocalAccount,
    SecondFactorRequired,
    SignedIn,
    TotpNotPending,
    TotpRequired,
    WeakPassword,
    totp_code,
    totp_step,
)
from qustody.storage import models as m
from support import Tenancy, ctx

PASSWORD = "correct horse battery staple"


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    # The middle of a 30-second step, so a step either way is a clean offset.
    return Clock(datetime.fromtimestamp(1_800_000_015, UTC))


def _accounts(tenancy: Tenancy, clock: Clock, **kwargs: object) -> LocalAccounts:
    services = tenancy.runtime.services
    return LocalAccounts(
        services.db,
        services.local_accounts._guard,
        services.tokens,
        tenancy.runtime.keys,
        enabled=True,
        clock=clock,
        **kwargs,  # type: ignore[arg-type]
    )


def _sign_in(
    accounts: LocalAccounts, password: str = PASSWORD, code: str | None = None
) -> SignedIn:
    return accounts.sign_in(ctx(), tenant="acme", username="acme-dev", password=password, code=code)


def _enroll(tenancy: Tenancy, accounts: LocalAccounts, clock: Clock) -> str:
    """Enrol TOTP for acme-dev (by itself); returns the secret."""
    enrollment = accounts.enroll_totp(tenancy.developer, ctx(), "me")
    secret = parse_qs(urlsplit(enrollment.uri).query)["secret"][0]
    assert secret == enrollment.secret
    accounts.confirm_totp(tenancy.developer, ctx(), "me", totp_code(secret, totp_step(clock.now)))
    return secret


def test_the_right_password_signs_in_and_a_wrong_one_does_not(
    tenancy: Tenancy, clock: Clock
) -> None:
    services = tenancy.runtime.services
    accounts = _accounts(tenancy, clock)
    accounts.set_password(tenancy.developer, ctx(), "me", PASSWORD)
    signed_in = _sign_in(accounts)
    assert signed_in.amr == ("pwd",)
    principal = services.tokens.authenticate(signed_in.token.token)
    assert principal.id == tenancy.developer.id
    assert principal.auth_method == "local"
    assert principal.amr == frozenset({"pwd"})
    assert principal.auth_strength == "aal1"
    assert principal.auth_time == clock.now.replace(microsecond=0)
    with pytest.raises(InvalidCredentials) as wrong:
        _sign_in(accounts, "correct horse battery stapler")
    assert wrong.value.status == 401
    # Unknown user, unknown tenant, no local account: the same answer.
    for tenant, user in (("acme", "nobody"), ("nowhere", "acme-dev"), ("acme", "acme-view")):
        with pytest.raises(InvalidCredentials) as other:
            accounts.sign_in(ctx(), tenant=tenant, username=user, password=PASSWORD)
        assert other.value.detail == wrong.value.detail
    with services.db.read() as session:
        issued = session.get(m.IssuedToken, signed_in.token.jti)
        assert issued is not None
        assert (issued.auth_method, issued.source, issued.amr) == ("local", "local", "pwd")


def test_totp_codes_right_wrong_replayed_and_drifted(tenancy: Tenancy, clock: Clock) -> None:
    services = tenancy.runtime.services
    accounts = _accounts(tenancy, clock)
    accounts.set_password(tenancy.developer, ctx(), "me", PASSWORD)
    secret = _enroll(tenancy, accounts, clock)
    # A password alone is no longer enough; the answer says a code is missing.
    with pytest.raises(TotpRequired):
        _sign_in(accounts)
    # The code that confirmed the enrolment was used: not again.
    step = totp_step(clock.now)
    with pytest.raises(InvalidCredentials):
        _sign_in(accounts, code=totp_code(secret, step))
    clock.advance(30)
    with pytest.raises(InvalidCredentials):
        _sign_in(accounts, code="000000" if totp_code(secret, step + 1) != "000000" else "111111")
    signed_in = _sign_in(accounts, code=totp_code(secret, step + 1))
    assert signed_in.amr == ("pwd", "otp", "mfa")
    principal = services.tokens.authenticate(signed_in.token.token)
    assert principal.auth_strength == "aal2"
    assert {"otp", "mfa"} <= principal.amr
    # Replayed within its window: refused.
    with pytest.raises(InvalidCredentials):
        _sign_in(accounts, code=totp_code(secret, step + 1))
    # One step of clock drift either way is accepted, two are not.
    clock.advance(60)
    assert _sign_in(accounts, code=totp_code(secret, step + 2)).amr[1] == "otp"  # one behind
    assert _sign_in(accounts, code=totp_code(secret, step + 4)).amr[1] == "otp"  # one ahead
    clock.advance(120)
    with pytest.raises(InvalidCredentials):
        _sign_in(accounts, code=totp_code(secret, totp_step(clock.now) - 2))
    with pytest.raises(InvalidCredentials):
        _sign_in(accounts, code=totp_code(secret, totp_step(clock.now) + 2))
    with services.db.read() as session:
        account = session.get(m.LocalAccount, tenancy.developer.id)
        assert account is not None
        assert account.totp_enabled
        assert account.totp_last_step == step + 4


def test_enrolling_again_keeps_the_old_secret_until_confirmed(
    tenancy: Tenancy, clock: Clock
) -> None:
    accounts = _accounts(tenancy, clock)
    with pytest.raises(NoLocalAccount):
        accounts.enroll_totp(tenancy.developer, ctx(), "me")
    with pytest.raises(TotpNotPending):
        accounts.confirm_totp(tenancy.developer, ctx(), "me", "123456")
    accounts.set_password(tenancy.developer, ctx(), "me", PASSWORD)
    old = _enroll(tenancy, accounts, clock)
    # The developer's token came from no TOTP sign-in: it cannot replace the factor.
    with pytest.raises(SecondFactorRequired):
        accounts.enroll_totp(tenancy.developer, ctx(), "me")
    # A tenant admin can (a lost phone); the old secret stays in force meanwhile.
    new = accounts.enroll_totp(tenancy.tenant_admin, ctx(), "acme-dev")
    clock.advance(30)
    assert _sign_in(accounts, code=totp_code(old, totp_step(clock.now))).amr[1] == "otp"
    with pytest.raises(InvalidTotpCode) as wrong:
        accounts.confirm_totp(tenancy.tenant_admin, ctx(), "acme-dev", "000000")
    assert wrong.value.field == "code"
    clock.advance(30)
    accounts.confirm_totp(
        tenancy.tenant_admin, ctx(), "acme-dev", totp_code(new.secret, totp_step(clock.now))
    )
    clock.advance(30)
    with pytest.raises(InvalidCredentials):
        _sign_in(accounts, code=totp_code(old, totp_step(clock.now)))
    assert _sign_in(accounts, code=totp_code(new.secret, totp_step(clock.now))).amr[1] == "otp"


def test_repeated_failures_lock_the_account_for_a_while(tenancy: Tenancy, clock: Clock) -> None:
    services = tenancy.runtime.services
    accounts = _accounts(tenancy, clock)
    accounts.set_password(tenancy.developer, ctx(), "me", PASSWORD)
    for _ in range(MAX_FAILURES):
        with pytest.raises(InvalidCredentials):
            _sign_in(accounts, "wrong password, long enough")
    # Locked: even the right password gets the same answer as a wrong one.
    with pytest.raises(InvalidCredentials):
        _sign_in(accounts)
    clock.advance(LOCK_SECONDS - 1)
    with pytest.raises(InvalidCredentials):
        _sign_in(accounts)
    clock.advance(2)
    assert _sign_in(accounts).amr == ("pwd",)
    with services.db.read() as session:
        account = session.get(m.LocalAccount, tenancy.developer.id)
        assert account is not None
        assert account.failed_attempts == 0
        reasons = session.scalars(
            select(m.AuditEvent.reason).where(m.AuditEvent.event_type == "auth:fail")
        ).all()
    assert reasons.count("local sign-in: wrong_password") == MAX_FAILURES
    assert reasons.count("local sign-in: locked") == 2
    # A tenant admin setting a new password unlocks at once.
    for _ in range(MAX_FAILURES):
        with pytest.raises(InvalidCredentials):
            _sign_in(accounts, "wrong password, long enough")
    accounts.set_password(tenancy.tenant_admin, ctx(), "acme-dev", PASSWORD + "!")
    assert _sign_in(accounts, PASSWORD + "!").amr == ("pwd",)


def test_a_deactivated_principal_cannot_sign_in(tenancy: Tenancy, clock: Clock) -> None:
    services = tenancy.runtime.services
    accounts = _accounts(tenancy, clock)
    accounts.set_password(tenancy.developer, ctx(), "me", PASSWORD)
    with services.db.write() as session:
        principal = session.get(m.Principal, tenancy.developer.id)
        assert principal is not None
        principal.active = False
    with pytest.raises(InvalidCredentials):
        _sign_in(accounts)


def test_hashes_are_argon2id_and_replaced_when_the_parameters_change(
    tenancy: Tenancy, clock: Clock
) -> None:
    services = tenancy.runtime.services
    cheap = _accounts(
        tenancy, clock, hasher=PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    )
    cheap.set_password(tenancy.developer, ctx(), "me", PASSWORD)

    def stored() -> str:
        with services.db.read() as session:
            account = session.get(m.LocalAccount, tenancy.developer.id)
            assert account is not None
            return account.password_hash

    assert stored().startswith("$argon2id$v=19$m=8192,t=1,p=1$")
    _sign_in(_accounts(tenancy, clock))
    p = PASSWORD_PARAMETERS
    assert stored().startswith(
        f"$argon2id$v=19$m={p.memory_cost},t={p.time_cost},p={p.parallelism}$"
    )
    assert _sign_in(_accounts(tenancy, clock)).amr == ("pwd",)


def test_who_may_set_credentials(tenancy: Tenancy, clock: Clock) -> None:
    accounts = _accounts(tenancy, clock)
    with pytest.raises(WeakPassword):
        accounts.set_password(tenancy.developer, ctx(), "me", "short")
    # Not someone else's, unless tenant admin; never another tenant's.
    with pytest.raises(Forbidden):
        accounts.set_password(tenancy.developer, ctx(), "acme-view", PASSWORD)
    with pytest.raises(Forbidden):
        accounts.enroll_totp(tenancy.developer, ctx(), tenancy.viewer.id)
    accounts.set_password(tenancy.tenant_admin, ctx(), "acme-view", PASSWORD)
    with pytest.raises(NotFound) as foreign:
        accounts.set_password(tenancy.tenant_admin, ctx(), "globex-dev", PASSWORD)
    with pytest.raises(NotFound) as missing:
        accounts.set_password(tenancy.tenant_admin, ctx(), "no-such-user", PASSWORD)
    assert foreign.value.detail.replace("globex-dev", "X") == missing.value.detail.replace(
        "no-such-user", "X"
    )
    with pytest.raises(NotFound):
        accounts.set_password(tenancy.outsider, ctx(), tenancy.developer.id, PASSWORD)
    tenancy.runtime.services.admin.add_member(
        tenancy.tenant_admin,
        ctx(),
        principal_name="ci-bot",
        role=Role.DEVELOPER,
        project_ref="research",
        kind="workload",
    )
    with pytest.raises(InvalidRequest) as workload:
        accounts.set_password(tenancy.tenant_admin, ctx(), "ci-bot", PASSWORD)
    assert workload.value.field == "principal"


def test_switched_off_local_accounts_refuse_everything(tenancy: Tenancy, clock: Clock) -> None:
    services = tenancy.runtime.services
    off = LocalAccounts(
        services.db,
        services.local_accounts._guard,
        services.tokens,
        tenancy.runtime.keys,
        enabled=False,
    )
    for call in (
        lambda: off.sign_in(ctx(), tenant="acme", username="acme-dev", password=PASSWORD),
        lambda: off.set_password(tenancy.developer, ctx(), "me", PASSWORD),
        lambda: off.enroll_totp(tenancy.developer, ctx(), "me"),
        lambda: off.confirm_totp(tenancy.developer, ctx(), "me", "123456"),
    ):
        with pytest.raises(LocalAccountsDisabled) as caught:
            call()
        assert caught.value.status == 403
        assert "QUSTODY_LOCAL_ACCOUNTS" in caught.value.detail


def test_secrets_stay_out_of_audit_logs_and_the_database(
    tenancy: Tenancy, clock: Clock, caplog: pytest.LogCaptureFixture, database_url: str
) -> None:
    services = tenancy.runtime.services
    caplog.set_level(logging.DEBUG)
    accounts = _accounts(tenancy, clock)
    accounts.set_password(tenancy.developer, ctx(), "me", PASSWORD)
    secret = _enroll(tenancy, accounts, clock)
    clock.advance(30)
    code = totp_code(secret, totp_step(clock.now))
    _sign_in(accounts, code=code)
    with pytest.raises(InvalidCredentials):
        _sign_in(accounts, code=code)  # replayed
    with pytest.raises(InvalidCredentials):
        accounts.sign_in(ctx(), tenant="acme", username="who-is-this", password=PASSWORD)
    markers = [PASSWORD, secret, "who-is-this"]
    with services.db.read() as session:
        events = session.scalars(select(m.AuditEvent)).all()
        sealed = session.scalars(
            select(m.SealedObject).where(m.SealedObject.object_id == tenancy.developer.id)
        ).all()
    kinds = {e.event_type for e in events}
    assert {"auth:login", "auth:fail", "account:set"} <= kinds
    for event in events:
        text = " ".join(str(getattr(event, c.key)) for c in m.AuditEvent.__table__.columns)
        for marker in markers:
            assert marker not in text, event.event_type
        assert "acme-dev" not in text  # the username neither
    assert [s.field for s in sealed] == ["totp"]
    assert all(secret.encode() not in s.body for s in sealed)
    for record in caplog.records:
        for marker in markers:
            assert marker not in record.getMessage()
    if database_url.startswith("sqlite"):
        raw = Path(database_url.removeprefix("sqlite:///")).read_bytes()
        for marker in markers[:-1]:
            assert marker.encode() not in raw
        wal = Path(database_url.removeprefix("sqlite:///") + "-wal")
        if wal.exists():
            for marker in markers[:-1]:
                assert marker.encode() not in wal.read_bytes()


def test_the_demo_admin_gets_a_password_shown_once(runtime: Runtime) -> None:
    lines = ensure_demo(runtime.services)
    at = next(i for i, line in enumerate(lines) if "password, shown once" in line)
    password = lines[at + 1].strip()
    assert len(password) >= 20
    signed_in = runtime.services.local_accounts.sign_in(
        ctx(), tenant="demo", username="demo-admin", password=password
    )
    assert signed_in.amr == ("pwd",)
    again = ensure_demo(runtime.services)
    assert not any(password in line for line in again)
    assert any("the password shown when the demo was made" in line for line in again)

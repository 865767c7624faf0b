"""Local accounts, the pure parts: RFC 6238 TOTP, the password rule, the setting."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from qustody.domain.errors import ConfigurationError
from qustody.identity.local_accounts import (
    MIN_PASSWORD_LENGTH,
    TOTP_DRIFT,
    WeakPassword,
    check_password,
    match_totp,
    totp_code,
    totp_step,
)
from qustody.settings import load_settings

# RFC 6238 Appendix B: the SHA-1 seed, and (time, 8-digit TOTP) pairs. A
# 6-digit code is the same value modulo 10**6 (RFC 4226 section 5.3), so its
# last six digits.
RFC_6238_SEED = base64.b32encode(b"12345678901234567890").decode()
RFC_6238_SHA1 = [
    (59, "94287082"),
    (1111111109, "07081804"),
    (1111111111, "14050471"),
    (1234567890, "89005924"),
    (2000000000, "69279037"),
    (20000000000, "65353130"),
]


def _at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@pytest.mark.parametrize(("seconds", "expected"), RFC_6238_SHA1)
def test_codes_match_the_rfc_6238_test_vectors(seconds: int, expected: str) -> None:
    assert totp_code(RFC_6238_SEED, totp_step(_at(seconds))) == expected[-6:]


def test_steps_are_thirty_seconds_from_the_epoch() -> None:
    assert totp_step(_at(0)) == 0
    assert totp_step(_at(29)) == 0
    assert totp_step(_at(30)) == 1
    assert totp_step(_at(59)) == 1


def test_a_code_is_accepted_within_one_step_of_drift_and_not_beyond() -> None:
    now = _at(1_700_000_000)
    step = totp_step(now)
    for offset in range(-TOTP_DRIFT, TOTP_DRIFT + 1):
        assert match_totp(RFC_6238_SEED, totp_code(RFC_6238_SEED, step + offset), now, None) == (
            step + offset
        )
    for offset in (-TOTP_DRIFT - 1, TOTP_DRIFT + 1):
        assert match_totp(RFC_6238_SEED, totp_code(RFC_6238_SEED, step + offset), now, None) is None


def test_a_code_is_good_once_and_never_an_older_one() -> None:
    now = _at(1_700_000_000)
    step = totp_step(now)
    code = totp_code(RFC_6238_SEED, step)
    assert match_totp(RFC_6238_SEED, code, now, step - 1) == step
    assert match_totp(RFC_6238_SEED, code, now, step) is None  # replayed
    earlier = totp_code(RFC_6238_SEED, step - 1)
    assert match_totp(RFC_6238_SEED, earlier, now, step) is None  # older than the last
    # ... and a later one still works after a replay attempt.
    later = now + timedelta(seconds=30)
    assert match_totp(RFC_6238_SEED, totp_code(RFC_6238_SEED, step + 1), later, step) == step + 1


@pytest.mark.parametrize("code", ["", "12345", "1234567", "12345a", " 123456", "１２３４５６"])
def test_codes_are_six_ascii_digits(code: str) -> None:
    assert match_totp(RFC_6238_SEED, code, _at(1_700_000_000), None) is None


def test_passwords_have_at_least_fifteen_characters() -> None:
    assert check_password("x" * MIN_PASSWORD_LENGTH)
    with pytest.raises(WeakPassword) as caught:
        check_password("x" * (MIN_PASSWORD_LENGTH - 1))
    assert caught.value.field == "password"
    assert "15" in caught.value.detail
    assert "x" * 5 not in caught.value.detail  # never echoes the password
    with pytest.raises(WeakPassword):
        check_password(" " * 20)


def test_local_accounts_default_on_in_development_and_are_refused_in_production() -> None:
    assert load_settings({}).local_accounts_enabled
    assert not load_settings({"QUSTODY_LOCAL_ACCOUNTS": "false"}).local_accounts_enabled
    production = {
        "QUSTODY_MODE": "production",
        "QUSTODY_DATABASE_URL": "postgresql+psycopg://db/qustody",
        "QUSTODY_KEY_PROVIDER": "pkcs11",
        "QUSTODY_PKCS11_MODULE": "/usr/lib/softhsm/libsofthsm2.so",
        "QUSTODY_PKCS11_TOKEN_LABEL": "qustody",
    }
    assert not load_settings(production).local_accounts_enabled
    assert not load_settings(
        {**production, "QUSTODY_LOCAL_ACCOUNTS": "false"}
    ).local_accounts_enabled
    with pytest.raises(ConfigurationError) as caught:
        load_settings({**production, "QUSTODY_LOCAL_ACCOUNTS": "true"})
    assert "QUSTODY_LOCAL_ACCOUNTS" in caught.value.detail
    assert "development convenience" in caught.value.detail

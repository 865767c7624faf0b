"""The PKCS#11 key provider against a real SoftHSM2 token.

What a customer or HSM administrator does to a token (pre-create a key,
disable it, destroy it, change the PIN) happens in a separate process, the
way their own tooling would do it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from qustody.crypto.errors import DecryptionError, KeyUnavailable
from qustody.crypto.interfaces import KeyMaterial, KeyProvider
from qustody.crypto.pkcs11 import HsmError, Pkcs11Provider, reinitialize_module
from qustody.domain.errors import ConfigurationError
from softhsm import SoftHsm, Token

RING = "ten_acme.prj_research.payload"

# RFC 3394 §4.6: 256 bits of key data wrapped with a 256-bit KEK.
RFC3394_KEK = bytes(range(32))
RFC3394_KEY = bytes.fromhex("00112233445566778899aabbccddeeff000102030405060708090a0b0c0d0e0f")
RFC3394_WRAPPED = bytes.fromhex(
    "28c9f404c4b810f4cbccb35cfb87f8263f5786e2d80ed326cbc7f0e71a99f43bfb988b9b7a02dd21"
)


def label_of(key_id: str) -> str:
    return "qustody/" + key_id


@pytest.fixture
def customer_token(softhsm: SoftHsm) -> Token:
    """A second token, the customer's own (bring your own key)."""
    return softhsm.init_token("customer")


@pytest.fixture
def customer(softhsm: SoftHsm, customer_token: Token) -> Iterator[Pkcs11Provider]:
    provider = Pkcs11Provider(
        softhsm.module,
        customer_token.label,
        KeyMaterial(customer_token.pin.encode()),
        name="cmk-acme",
    )
    yield provider
    provider.close()


def test_is_a_production_key_provider(pkcs11_provider: Pkcs11Provider) -> None:
    provider: KeyProvider = pkcs11_provider
    assert provider.name == "pkcs11"
    assert provider.is_development is False


def test_create_key_is_idempotent(pkcs11_provider: Pkcs11Provider) -> None:
    key_id = pkcs11_provider.create_key(RING, 1)
    assert key_id == f"pkcs11:{RING}:v1"
    assert not pkcs11_provider.has_key(f"pkcs11:{RING}:v2")
    dek = os.urandom(32)
    wrapped = pkcs11_provider.wrap(key_id, dek)

    assert pkcs11_provider.create_key(RING, 1) == key_id  # the same key, not a new one
    assert pkcs11_provider.has_key(key_id)
    assert pkcs11_provider.unwrap(key_id, wrapped) == dek


def test_wrap_unwrap_round_trip(pkcs11_provider: Pkcs11Provider) -> None:
    key_id = pkcs11_provider.create_key(RING, 1)
    deks = [os.urandom(32) for _ in range(5)]
    wrapped = [pkcs11_provider.wrap(key_id, dek) for dek in deks]

    assert all(len(item) == 40 for item in wrapped)  # RFC 3394: one block longer
    assert len(set(wrapped)) == len(deks)
    assert [pkcs11_provider.unwrap(key_id, item) for item in wrapped] == deks
    assert pkcs11_provider.wrap(key_id, deks[0]) == wrapped[0]  # key wrap is deterministic


def test_kek_is_generated_non_extractable_in_the_token(
    softhsm: SoftHsm, hsm_token: Token, pkcs11_provider: Pkcs11Provider
) -> None:
    key_id = pkcs11_provider.create_key(RING, 1)

    (attributes,) = softhsm.token_tool(hsm_token, "attributes", label_of(key_id))
    assert attributes["KEY_TYPE"] == "AES"
    assert attributes["VALUE_LEN"] == 32
    assert attributes["ID"] == hashlib.sha256(label_of(key_id).encode()).digest()[:16].hex()
    for name in ("TOKEN", "PRIVATE", "SENSITIVE", "ALWAYS_SENSITIVE", "NEVER_EXTRACTABLE"):
        assert attributes[name] is True, name
    assert attributes["LOCAL"] is True  # generated in the token, never imported
    for name in ("EXTRACTABLE", "COPYABLE", "ENCRYPT", "DECRYPT", "SIGN", "VERIFY", "DERIVE"):
        assert attributes[name] is False, name
    assert attributes["WRAP"] is True
    assert attributes["UNWRAP"] is True
    assert attributes["VALUE"] == "refused: AttributeSensitive"


def test_wrapping_is_rfc3394_key_wrap(softhsm: SoftHsm, customer_token: Token) -> None:
    """A customer imports a known KEK (RFC 3394's test vector) into their
    token; the provider adopts it and wraps exactly as RFC 3394 says."""
    key_id = f"cmk-acme:{RING}:v1"
    softhsm.token_tool(customer_token, "import", label_of(key_id), f"value={RFC3394_KEK.hex()}")
    with Pkcs11Provider(
        softhsm.module, customer_token.label, customer_token.pin, name="cmk-acme"
    ) as provider:
        assert provider.create_key(RING, 1) == key_id

        assert provider.wrap(key_id, RFC3394_KEY) == RFC3394_WRAPPED
        assert provider.unwrap(key_id, RFC3394_WRAPPED) == RFC3394_KEY
        dek = os.urandom(32)
        assert provider.wrap(key_id, dek) == aes_key_wrap(RFC3394_KEK, dek)


@pytest.mark.parametrize("position", [0, 7, 8, 39])
def test_tampered_wrapped_key_fails_integrity_check(
    pkcs11_provider: Pkcs11Provider, position: int
) -> None:
    key_id = pkcs11_provider.create_key(RING, 1)
    wrapped = bytearray(pkcs11_provider.wrap(key_id, os.urandom(32)))
    wrapped[position] ^= 0x01

    with pytest.raises(DecryptionError):
        pkcs11_provider.unwrap(key_id, bytes(wrapped))
    with pytest.raises(DecryptionError):
        pkcs11_provider.rewrap(key_id, bytes(wrapped), pkcs11_provider.create_key(RING, 2))


@pytest.mark.parametrize("length", [0, 32, 39, 41, 48])
def test_wrapped_key_of_wrong_length_is_refused(
    pkcs11_provider: Pkcs11Provider, length: int
) -> None:
    key_id = pkcs11_provider.create_key(RING, 1)
    with pytest.raises(DecryptionError):
        pkcs11_provider.unwrap(key_id, os.urandom(length))


def test_data_keys_must_be_32_bytes(pkcs11_provider: Pkcs11Provider) -> None:
    key_id = pkcs11_provider.create_key(RING, 1)
    with pytest.raises(ValueError, match="32 bytes"):
        pkcs11_provider.wrap(key_id, os.urandom(16))


def test_rewrap_moves_a_data_key_to_the_new_version(pkcs11_provider: Pkcs11Provider) -> None:
    v1 = pkcs11_provider.create_key(RING, 1)
    v2 = pkcs11_provider.create_key(RING, 2)
    dek = os.urandom(32)
    wrapped = pkcs11_provider.wrap(v1, dek)

    rewrapped = pkcs11_provider.rewrap(v1, wrapped, v2)

    assert len(rewrapped) == 40
    assert rewrapped != wrapped
    assert rewrapped == pkcs11_provider.wrap(v2, dek)
    assert pkcs11_provider.unwrap(v2, rewrapped) == dek
    with pytest.raises(DecryptionError):
        pkcs11_provider.unwrap(v1, rewrapped)  # only under the new version
    with pytest.raises(DecryptionError):
        pkcs11_provider.unwrap(v2, wrapped)
    with pytest.raises(KeyUnavailable, match="missing"):
        pkcs11_provider.rewrap(v1, wrapped, f"pkcs11:{RING}:v3")  # never created


def test_destroy_key_shreds_what_it_wrapped(pkcs11_provider: Pkcs11Provider) -> None:
    key_id = pkcs11_provider.create_key(RING, 1)
    dek = os.urandom(32)
    wrapped = pkcs11_provider.wrap(key_id, dek)

    assert pkcs11_provider.destroy_key(key_id) is True

    assert not pkcs11_provider.has_key(key_id)
    with pytest.raises(KeyUnavailable, match="missing from PKCS#11 token"):
        pkcs11_provider.unwrap(key_id, wrapped)
    with pytest.raises(KeyUnavailable):
        pkcs11_provider.wrap(key_id, dek)
    assert pkcs11_provider.destroy_key(key_id) is False
    # Creating the version again makes a new key: the old data stays unreadable.
    assert pkcs11_provider.create_key(RING, 1) == key_id
    with pytest.raises(DecryptionError):
        pkcs11_provider.unwrap(key_id, wrapped)


def test_destroy_by_another_provider_is_noticed(
    softhsm: SoftHsm, hsm_token: Token, pkcs11_provider: Pkcs11Provider
) -> None:
    key_id = pkcs11_provider.create_key(RING, 1)
    wrapped = pkcs11_provider.wrap(key_id, os.urandom(32))  # handle cached
    with Pkcs11Provider(softhsm.module, hsm_token.label, hsm_token.pin) as other:
        assert other.destroy_key(key_id)
    with pytest.raises(KeyUnavailable, match="missing"):
        pkcs11_provider.unwrap(key_id, wrapped)


def test_customer_key_is_adopted(
    softhsm: SoftHsm, customer_token: Token, customer: Pkcs11Provider
) -> None:
    key_id = f"cmk-acme:{RING}:v1"
    softhsm.token_tool(customer_token, "generate", label_of(key_id))

    assert customer.create_key(RING, 1) == key_id

    dek = os.urandom(32)
    assert customer.unwrap(key_id, customer.wrap(key_id, dek)) == dek
    (attributes,) = softhsm.token_tool(customer_token, "attributes", label_of(key_id))
    assert attributes["ID"] == ""  # the customer's key as it was: adopted, not replaced


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        (["extractable=true"], "cannot be a key-encryption key: it can be exported"),
        (["sensitive=false"], "cannot be a key-encryption key: its value can be read"),
        (["bits=128"], "cannot be a key-encryption key: it is not 256 bits long"),
        (["unwrap=false"], r"is disabled \(CKA_UNWRAP is false\)"),
        (["wrap=false", "unwrap=false"], r"is disabled \(CKA_WRAP is false, CKA_UNWRAP is false\)"),
    ],
)
def test_unfit_customer_key_is_refused(
    softhsm: SoftHsm,
    customer_token: Token,
    customer: Pkcs11Provider,
    settings: list[str],
    problem: str,
) -> None:
    key_id = f"cmk-acme:{RING}:v1"
    softhsm.token_tool(customer_token, "generate", label_of(key_id), *settings)

    with pytest.raises(HsmError, match=problem) as refused:
        customer.create_key(RING, 1)
    assert isinstance(refused.value, ConfigurationError)
    assert customer_token.label in refused.value.detail
    assert not customer.has_key(key_id)


def test_two_keys_with_one_label_are_refused(
    softhsm: SoftHsm, customer_token: Token, customer: Pkcs11Provider
) -> None:
    key_id = f"cmk-acme:{RING}:v1"
    softhsm.token_tool(customer_token, "generate", label_of(key_id))
    softhsm.token_tool(customer_token, "generate", label_of(key_id))

    with pytest.raises(HsmError, match="holds 2 keys labelled"):
        customer.create_key(RING, 1)
    with pytest.raises(KeyUnavailable, match="holds 2 keys labelled"):
        customer.wrap(key_id, os.urandom(32))


def test_customer_disabling_the_key_stops_unwrap_at_once(
    softhsm: SoftHsm, customer_token: Token, customer: Pkcs11Provider
) -> None:
    key_id = customer.create_key(RING, 1)
    dek = os.urandom(32)
    wrapped = customer.wrap(key_id, dek)
    assert customer.unwrap(key_id, wrapped) == dek  # handle cached

    assert softhsm.token_tool(customer_token, "set", label_of(key_id), "unwrap=false") == 1
    with pytest.raises(KeyUnavailable) as disabled:
        customer.unwrap(key_id, wrapped)
    assert disabled.value.detail.endswith(
        f"the key is disabled in PKCS#11 token '{customer_token.label}' (CKA_UNWRAP is false)"
    )
    assert not customer.has_key(key_id)
    assert len(customer.wrap(key_id, dek)) == 40  # wrapping alone is still allowed

    softhsm.token_tool(customer_token, "set", label_of(key_id), "unwrap=true")
    assert customer.unwrap(key_id, wrapped) == dek

    assert softhsm.token_tool(customer_token, "destroy", label_of(key_id)) == 1
    with pytest.raises(KeyUnavailable, match="missing from PKCS#11 token"):
        customer.unwrap(key_id, wrapped)


def test_changed_pin_makes_keys_unavailable_after_restart(
    softhsm: SoftHsm, customer_token: Token, customer: Pkcs11Provider
) -> None:
    key_id = customer.create_key(RING, 1)
    wrapped = customer.wrap(key_id, os.urandom(32))
    new_pin = "the-customer-s-new-pin"
    softhsm.token_tool(customer_token, "set-pin", new_pin)
    customer.unwrap(key_id, wrapped)  # the login of this process still stands

    reinitialize_module(softhsm.module)  # the HSM restarts: every session is gone
    with pytest.raises(KeyUnavailable, match="rejected the PIN") as refused:
        customer.unwrap(key_id, wrapped)
    for text in (str(refused.value), repr(refused.value), refused.value.detail):
        assert customer_token.pin not in text
        assert new_pin not in text

    # A rejected PIN is not tried again (that would count down to a lockout) ...
    softhsm.token_tool(customer_token, "set-pin", customer_token.pin, pin=new_pin)
    with pytest.raises(KeyUnavailable, match="rejected the PIN"):
        customer.unwrap(key_id, wrapped)
    # ... until a provider is configured again (SoftHSM2 rereads PINs when it initialises).
    reinitialize_module(softhsm.module)
    with Pkcs11Provider(
        softhsm.module, customer_token.label, customer_token.pin, name="cmk-acme"
    ) as again:
        assert len(again.unwrap(key_id, wrapped)) == 32


def test_wrong_pin_is_refused_at_construction_without_showing_it(
    softhsm: SoftHsm, hsm_token: Token
) -> None:
    wrong = "wrong-pin-31415"
    with pytest.raises(HsmError, match="rejected the PIN") as refused:
        Pkcs11Provider(softhsm.module, hsm_token.label, wrong)
    for text in (str(refused.value), repr(refused.value), refused.value.detail):
        assert wrong not in text
        assert hsm_token.label in text
    with Pkcs11Provider(softhsm.module, hsm_token.label, hsm_token.pin) as provider:
        assert provider.create_key(RING, 1)  # the right PIN still works


def test_unknown_token_and_module_are_configuration_errors(
    softhsm: SoftHsm, hsm_token: Token, tmp_path: Path
) -> None:
    with pytest.raises(HsmError, match="no PKCS#11 token 'no-such-token'"):
        Pkcs11Provider(softhsm.module, "no-such-token", hsm_token.pin)
    with pytest.raises(HsmError, match="does not exist"):
        Pkcs11Provider(tmp_path / "libnothing.so", hsm_token.label, hsm_token.pin)
    with pytest.raises(HsmError, match="provider name"):
        Pkcs11Provider(softhsm.module, hsm_token.label, hsm_token.pin, name="Not Valid")


def test_pin_file(softhsm: SoftHsm, hsm_token: Token, tmp_path: Path) -> None:
    pin_file = tmp_path / "hsm.pin"
    pin_file.write_text(hsm_token.pin + "\n")
    pin_file.chmod(0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        Pkcs11Provider.from_pin_file(softhsm.module, hsm_token.label, pin_file)
    with pytest.raises(HsmError, match="does not exist"):
        Pkcs11Provider.from_pin_file(softhsm.module, hsm_token.label, tmp_path / "missing")

    pin_file.chmod(0o600)
    with Pkcs11Provider.from_pin_file(softhsm.module, hsm_token.label, pin_file) as provider:
        key_id = provider.create_key(RING, 1)
        assert provider.has_key(key_id)


def test_secrets_never_print(
    softhsm: SoftHsm,
    hsm_token: Token,
    pkcs11_provider: Pkcs11Provider,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    key_id = pkcs11_provider.create_key(RING, 1)
    dek = os.urandom(32)
    wrapped = pkcs11_provider.wrap(key_id, dek)
    texts = [repr(pkcs11_provider), str(pkcs11_provider), f"{pkcs11_provider}"]
    for action in (
        lambda: pkcs11_provider.unwrap(key_id, wrapped[:-1] + bytes([wrapped[-1] ^ 1])),
        lambda: pkcs11_provider.unwrap(f"pkcs11:{RING}:v9", wrapped),
        lambda: Pkcs11Provider(softhsm.module, hsm_token.label, "another-pin"),
    ):
        with pytest.raises((DecryptionError, KeyUnavailable, HsmError)) as raised:
            action()
        texts += [str(raised.value), repr(raised.value), str(raised.value.extra)]
    reinitialize_module(softhsm.module)  # logs the lost session
    assert pkcs11_provider.unwrap(key_id, wrapped) == dek
    texts.append(caplog.text)

    assert repr(pkcs11_provider) == (
        f"Pkcs11Provider(name='pkcs11', module='{softhsm.module.resolve()}', "
        f"token='{hsm_token.label}')"
    )
    for text in texts:
        for secret in (hsm_token.pin, dek.hex(), wrapped.hex(), repr(dek), repr(wrapped)):
            assert secret not in text


def test_key_ids_of_other_providers_are_unavailable(pkcs11_provider: Pkcs11Provider) -> None:
    pkcs11_provider.create_key(RING, 1)
    for key_id in (f"local:{RING}:v1", f"cmk-acme:{RING}:v1", "pkcs11:bad ring:v1", "nonsense"):
        with pytest.raises(KeyUnavailable, match="does not belong to the pkcs11 provider"):
            pkcs11_provider.unwrap(key_id, os.urandom(40))
        with pytest.raises(KeyUnavailable):
            pkcs11_provider.wrap(key_id, os.urandom(32))
        with pytest.raises(KeyUnavailable):
            pkcs11_provider.has_key(key_id)


def test_two_tokens_side_by_side(
    softhsm: SoftHsm, pkcs11_provider: Pkcs11Provider, customer: Pkcs11Provider
) -> None:
    platform_key = pkcs11_provider.create_key(RING, 1)
    customer_key = customer.create_key(RING, 1)
    assert (platform_key, customer_key) == (f"pkcs11:{RING}:v1", f"cmk-acme:{RING}:v1")
    dek = os.urandom(32)

    for _ in range(3):  # interleaved, through one loaded library
        platform_wrapped = pkcs11_provider.wrap(platform_key, dek)
        customer_wrapped = customer.wrap(customer_key, dek)
        assert pkcs11_provider.unwrap(platform_key, platform_wrapped) == dek
        assert customer.unwrap(customer_key, customer_wrapped) == dek

    assert platform_wrapped != customer_wrapped  # two different KEKs
    with pytest.raises(KeyUnavailable):
        customer.unwrap(platform_key, platform_wrapped)
    with pytest.raises(DecryptionError):
        customer.unwrap(customer_key, platform_wrapped)
    assert not customer.has_key(f"cmk-acme:{RING}:v2")
    assert customer.destroy_key(customer_key)
    assert pkcs11_provider.unwrap(platform_key, platform_wrapped) == dek


def test_providers_sharing_a_token_share_its_login(
    softhsm: SoftHsm, hsm_token: Token, pkcs11_provider: Pkcs11Provider
) -> None:
    key_id = pkcs11_provider.create_key(RING, 1)
    dek = os.urandom(32)
    with pytest.raises(HsmError, match="different PIN"):
        Pkcs11Provider(softhsm.module, hsm_token.label, "not-the-pin")
    second = Pkcs11Provider(softhsm.module, hsm_token.label, hsm_token.pin)
    wrapped = second.wrap(key_id, dek)
    second.close()

    assert pkcs11_provider.unwrap(key_id, wrapped) == dek  # still logged in
    with pytest.raises(KeyUnavailable, match="closed"):
        second.unwrap(key_id, wrapped)


def test_lost_session_is_reopened(softhsm: SoftHsm, pkcs11_provider: Pkcs11Provider) -> None:
    key_id = pkcs11_provider.create_key(RING, 1)
    dek = os.urandom(32)
    wrapped = pkcs11_provider.wrap(key_id, dek)

    reinitialize_module(softhsm.module)

    assert pkcs11_provider.unwrap(key_id, wrapped) == dek
    assert pkcs11_provider.wrap(key_id, dek) == wrapped


def test_threads_share_the_provider(pkcs11_provider: Pkcs11Provider) -> None:
    keys = [pkcs11_provider.create_key(RING, version) for version in (1, 2)]
    failures: list[str] = []

    def hammer(worker: int) -> None:
        try:
            for round_ in range(150):
                key_id = keys[(worker + round_) % 2]
                dek = os.urandom(32)
                wrapped = pkcs11_provider.wrap(key_id, dek)
                if pkcs11_provider.unwrap(key_id, wrapped) != dek:
                    failures.append(f"worker {worker}: wrong data key")
                if round_ % 10 == 0:
                    other = keys[1] if key_id == keys[0] else keys[0]
                    moved = pkcs11_provider.rewrap(key_id, wrapped, other)
                    if pkcs11_provider.unwrap(other, moved) != dek:
                        failures.append(f"worker {worker}: wrong rewrapped key")
        except Exception as exc:  # noqa: BLE001 (reported below)
            failures.append(f"worker {worker}: {exc!r}")

    threads = [threading.Thread(target=hammer, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_forked_child_initialises_the_module_again(pkcs11_provider: Pkcs11Provider) -> None:
    key_id = pkcs11_provider.create_key(RING, 1)
    dek = os.urandom(32)
    wrapped = pkcs11_provider.wrap(key_id, dek)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        try:
            ok = pkcs11_provider.unwrap(key_id, wrapped) == dek
            ok = ok and pkcs11_provider.wrap(key_id, dek) == wrapped
            os.write(write, b"ok" if ok else b"wrong data key")
        except BaseException as exc:  # noqa: BLE001
            os.write(write, repr(exc).encode()[:1000])
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)

    assert answer == b"ok"
    assert pkcs11_provider.unwrap(key_id, wrapped) == dek  # the parent is unaffected


def test_hsm_work_per_job_is_under_two_milliseconds(pkcs11_provider: Pkcs11Provider) -> None:
    """A job seals its circuit and result (2 wraps) and opens them (2 unwraps)."""
    key_id = pkcs11_provider.create_key(RING, 1)
    deks = [os.urandom(32) for _ in range(2)]
    jobs = 200
    start = time.perf_counter()
    for _ in range(jobs):
        wrapped = [pkcs11_provider.wrap(key_id, dek) for dek in deks]
        assert [pkcs11_provider.unwrap(key_id, item) for item in wrapped] == deks
    per_job = (time.perf_counter() - start) / jobs
    assert per_job < 0.002, f"{per_job * 1e6:.0f} µs of HSM work per job"

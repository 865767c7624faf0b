"""External JWT verification against an issuer served on loopback (RFC 8725 checks)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import warnings
from collections.abc import Iterator

import pytest
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, OKPKey, RSAKey

from jwks_issuer import LoopbackIssuer
from qustody.domain.errors import ConfigurationError
from qustody.identity.errors import (
    DisallowedAlgorithm,
    ExpiredToken,
    InvalidToken,
    IssuerUnavailable,
    MalformedToken,
    TokenNotYetValid,
    UnknownKey,
    WrongAudience,
    WrongIssuer,
    WrongTokenType,
)
from qustody.identity.external_jwt import JwtVerifier, check_url

AUDIENCE = "qustody-test"


class Issuer(LoopbackIssuer):
    """A minimal issuer whose keys and metadata the test changes."""

    def sign(
        self,
        key: RSAKey | ECKey | OKPKey,
        alg: str,
        *,
        typ: str | None = "JWT",
        **claims: object,
    ) -> str:
        now = int(time.time())
        body: dict[str, object] = {
            "iss": self.url,
            "sub": "alice",
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 300,
        }
        body.update(claims)
        header: dict[str, object] = {"alg": alg}
        if key.kid is not None:
            header["kid"] = key.kid
        if typ is not None:
            header["typ"] = typ
        with warnings.catch_warnings():
            # joserfc warns that "EdDSA" is deprecated (RFC 9864); providers still sign with it.
            warnings.simplefilter("ignore", SecurityWarning)
            return jwt.encode(
                header, {k: v for k, v in body.items() if v is not None}, key, algorithms=[alg]
            )


def rsa(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig"})


@pytest.fixture
def idp() -> Iterator[Issuer]:
    issuer = Issuer()
    issuer.keys = [rsa("k1")]
    yield issuer
    issuer.close()


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(clock: Clock) -> Iterator[JwtVerifier]:
    v = JwtVerifier(allow_insecure_loopback=True, min_refresh_seconds=30, clock=clock)
    yield v
    v.http.close()


def test_a_good_token_verifies(idp: Issuer, verifier: JwtVerifier) -> None:
    token = idp.sign(idp.keys[0], "RS256", email="alice@example.com")
    verified = verifier.verify(token, issuer=idp.url, audiences=[AUDIENCE])
    assert verified.subject == "alice"
    assert verified.issuer == idp.url
    assert verified.kid == "k1"
    assert verified.claims["email"] == "alice@example.com"
    assert token not in repr(verified)
    # An audience list naming us among others is fine.
    token = idp.sign(idp.keys[0], "RS256", aud=["other", AUDIENCE])
    assert verifier.verify(token, issuer=idp.url, audiences=["x", AUDIENCE]).subject == "alice"


@pytest.mark.parametrize("curve_alg", [("EC", "ES256"), ("OKP", "EdDSA"), ("OKP", "Ed25519")])
def test_ec_and_edwards_keys_verify(
    idp: Issuer, verifier: JwtVerifier, curve_alg: tuple[str, str]
) -> None:
    kty, alg = curve_alg
    key: ECKey | OKPKey = (
        ECKey.generate_key("P-256", parameters={"kid": "ec"})
        if kty == "EC"
        else OKPKey.generate_key("Ed25519", parameters={"kid": "ed"})
    )
    idp.keys = [key]
    assert verifier.verify(idp.sign(key, alg), issuer=idp.url, audiences=[AUDIENCE]).subject


def test_wrong_audience_issuer_and_type(idp: Issuer, verifier: JwtVerifier) -> None:
    key = idp.keys[0]
    with pytest.raises(WrongAudience) as e:
        verifier.verify(
            idp.sign(key, "RS256", aud="someone-else"), issuer=idp.url, audiences=[AUDIENCE]
        )
    assert e.value.code == "wrong_audience"
    with pytest.raises(WrongAudience):
        verifier.verify(idp.sign(key, "RS256", aud=None), issuer=idp.url, audiences=[AUDIENCE])
    with pytest.raises(WrongIssuer):
        verifier.verify(
            idp.sign(key, "RS256", iss="https://evil.example"), issuer=idp.url, audiences=[AUDIENCE]
        )
    with pytest.raises(WrongTokenType):
        verifier.verify(idp.sign(key, "RS256", typ="at+jwt"), issuer=idp.url, audiences=[AUDIENCE])
    # An expected type is compared as RFC 7515 says: no case, optional application/ prefix.
    token = idp.sign(key, "RS256", typ="application/CI+JWT")
    assert verifier.verify(token, issuer=idp.url, audiences=[AUDIENCE], typ="ci+jwt").subject
    with pytest.raises(WrongTokenType):
        verifier.verify(idp.sign(key, "RS256"), issuer=idp.url, audiences=[AUDIENCE], typ="ci+jwt")
    # No typ at all is an ID token's usual header.
    assert verifier.verify(idp.sign(key, "RS256", typ=None), issuer=idp.url, audiences=[AUDIENCE])


def test_times_are_checked_with_a_small_leeway(
    idp: Issuer, verifier: JwtVerifier, clock: Clock
) -> None:
    key = idp.keys[0]
    now = int(clock.now)
    with pytest.raises(ExpiredToken) as e:
        verifier.verify(idp.sign(key, "RS256", exp=now - 31), issuer=idp.url, audiences=[AUDIENCE])
    assert e.value.code == "expired_token"
    # Within the 30-second leeway.
    assert verifier.verify(
        idp.sign(key, "RS256", exp=now - 10), issuer=idp.url, audiences=[AUDIENCE]
    )
    with pytest.raises(TokenNotYetValid):
        verifier.verify(idp.sign(key, "RS256", nbf=now + 120), issuer=idp.url, audiences=[AUDIENCE])
    with pytest.raises(TokenNotYetValid):
        verifier.verify(idp.sign(key, "RS256", iat=now + 120), issuer=idp.url, audiences=[AUDIENCE])
    with pytest.raises(InvalidToken):
        verifier.verify(idp.sign(key, "RS256", exp=None), issuer=idp.url, audiences=[AUDIENCE])
    with pytest.raises(InvalidToken):
        verifier.verify(idp.sign(key, "RS256", exp="soon"), issuer=idp.url, audiences=[AUDIENCE])


def test_none_and_hmac_are_refused(idp: Issuer, verifier: JwtVerifier) -> None:
    # The classic confusion: the issuer's public key used as an HMAC secret.
    # (joserfc itself refuses to import a PEM public key as an HMAC key, so the
    # forgery is made by hand.)
    public_pem = idp.keys[0].as_pem(private=False)
    _, payload, _ = idp.sign(idp.keys[0], "RS256").split(".")
    signing_input = _b64({"alg": "HS256", "kid": "k1"}) + "." + payload
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    forged = signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    with pytest.raises(DisallowedAlgorithm) as e:
        verifier.verify(forged, issuer=idp.url, audiences=[AUDIENCE])
    assert e.value.code == "disallowed_algorithm"
    unsigned = _b64({"alg": "none", "kid": "k1"}) + "." + payload + ".x"
    with pytest.raises(DisallowedAlgorithm):
        verifier.verify(unsigned, issuer=idp.url, audiences=[AUDIENCE])
    with pytest.raises(ConfigurationError):
        verifier.issuer("http://127.0.0.1:1/other", algorithms=["HS256"])
    with pytest.raises(ConfigurationError):
        verifier.issuer("http://127.0.0.1:1/other", algorithms=["none"])


def test_a_pinned_algorithm_list_is_enforced(idp: Issuer, verifier: JwtVerifier) -> None:
    verifier.issuer(idp.url, algorithms=["ES256"])
    with pytest.raises(DisallowedAlgorithm):
        verifier.verify(idp.sign(idp.keys[0], "RS256"), issuer=idp.url, audiences=[AUDIENCE])
    with pytest.raises(ConfigurationError):
        verifier.issuer(idp.url, algorithms=["RS256"])


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_bad_signatures_and_malformed_tokens(idp: Issuer, verifier: JwtVerifier) -> None:
    token = idp.sign(idp.keys[0], "RS256")
    header, payload, signature = token.split(".")
    tampered = (
        header + "." + _b64({"iss": idp.url, "sub": "mallory", "aud": AUDIENCE}) + "." + signature
    )
    with pytest.raises(InvalidToken) as e:
        verifier.verify(tampered, issuer=idp.url, audiences=[AUDIENCE])
    assert e.value.code == "invalid_token"
    for bad in ("", "a.b", "not a token", "x" * 20000, "!!.!!.!!", "e30.e30.e30x!"):
        with pytest.raises(MalformedToken):
            verifier.verify(bad, issuer=idp.url, audiences=[AUDIENCE])
    with pytest.raises(MalformedToken):
        verifier.verify("bm90anNvbg.e30.e30", issuer=idp.url, audiences=[AUDIENCE])
    crit = (
        _b64({"alg": "RS256", "kid": "k1", "crit": ["exp"], "exp": 1})
        + "."
        + payload
        + "."
        + signature
    )
    with pytest.raises(InvalidToken):
        verifier.verify(crit, issuer=idp.url, audiences=[AUDIENCE])
    # An embedded key (jwk header) is never trusted.
    attacker = rsa("k1")
    idp_keys = idp.keys
    forged = jwt.encode(
        {"alg": "RS256", "kid": "k1", "jwk": attacker.as_dict(private=False)},
        {
            "iss": idp.url,
            "sub": "x",
            "aud": AUDIENCE,
            "iat": int(time.time()),
            "exp": int(time.time()) + 60,
        },
        attacker,
    )
    assert idp.keys is idp_keys
    with pytest.raises(InvalidToken):
        verifier.verify(forged, issuer=idp.url, audiences=[AUDIENCE])


def test_unknown_kid_refetches_at_most_once_per_interval(
    idp: Issuer, verifier: JwtVerifier, clock: Clock
) -> None:
    good = idp.sign(idp.keys[0], "RS256")
    verifier.verify(good, issuer=idp.url, audiences=[AUDIENCE])
    assert idp.jwks_fetches == 1
    stranger = rsa("k-unknown")
    for _ in range(5):
        with pytest.raises(UnknownKey) as e:
            verifier.verify(idp.sign(stranger, "RS256"), issuer=idp.url, audiences=[AUDIENCE])
        assert e.value.code == "unknown_key"
    # The first unknown kid came right after the first fetch: no refetch within 30 s.
    assert idp.jwks_fetches == 1
    clock.now += 31
    for _ in range(5):
        with pytest.raises(UnknownKey):
            verifier.verify(idp.sign(stranger, "RS256"), issuer=idp.url, audiences=[AUDIENCE])
    assert idp.jwks_fetches == 2


def test_key_rotation(idp: Issuer, verifier: JwtVerifier, clock: Clock) -> None:
    old = idp.keys[0]
    old_token = idp.sign(old, "RS256")
    verifier.verify(old_token, issuer=idp.url, audiences=[AUDIENCE])
    # The issuer publishes a new key beside the old and signs with it.
    new = rsa("k2")
    idp.keys = [new, old]
    clock.now += 31
    new_token = idp.sign(new, "RS256")
    assert verifier.verify(new_token, issuer=idp.url, audiences=[AUDIENCE]).kid == "k2"
    assert verifier.verify(old_token, issuer=idp.url, audiences=[AUDIENCE]).kid == "k1"
    # The old key is retired; after the next refetch, tokens it signed are refused.
    idp.keys = [new]
    clock.now += 31
    with pytest.raises(UnknownKey):
        verifier.verify(idp.sign(rsa("k3"), "RS256"), issuer=idp.url, audiences=[AUDIENCE])
    with pytest.raises(UnknownKey):
        verifier.verify(old_token, issuer=idp.url, audiences=[AUDIENCE])
    assert verifier.verify(new_token, issuer=idp.url, audiences=[AUDIENCE])


def test_a_stale_jwks_is_fetched_again(idp: Issuer, verifier: JwtVerifier, clock: Clock) -> None:
    old_token = idp.sign(idp.keys[0], "RS256")
    verifier.verify(old_token, issuer=idp.url, audiences=[AUDIENCE])
    idp.keys = [rsa("k2")]
    clock.now += 3601
    with pytest.raises(UnknownKey):
        verifier.verify(old_token, issuer=idp.url, audiences=[AUDIENCE])


def test_keys_without_kid_only_when_unambiguous(idp: Issuer, verifier: JwtVerifier) -> None:
    only = OKPKey.generate_key("Ed25519")
    idp.keys = [only]
    token = idp.sign(only, "EdDSA")
    assert verifier.verify(token, issuer=idp.url, audiences=[AUDIENCE]).kid is None
    other = JwtVerifier(allow_insecure_loopback=True)
    idp.keys = [only, OKPKey.generate_key("Ed25519")]
    with pytest.raises(UnknownKey):
        other.verify(token, issuer=idp.url, audiences=[AUDIENCE])
    other.http.close()


def test_metadata_must_name_the_same_issuer(idp: Issuer, verifier: JwtVerifier) -> None:
    idp.metadata_issuer = "https://evil.example"
    with pytest.raises(IssuerUnavailable) as e:
        verifier.verify(idp.sign(idp.keys[0], "RS256"), issuer=idp.url, audiences=[AUDIENCE])
    assert e.value.status == 503


def test_an_unreachable_issuer_is_unavailable(verifier: JwtVerifier) -> None:
    token = _b64({"alg": "RS256", "kid": "x"}) + "." + _b64({}) + ".sig"
    with pytest.raises(IssuerUnavailable):
        verifier.verify(token, issuer="http://127.0.0.1:9", audiences=[AUDIENCE])


def test_plain_http_only_on_loopback_in_development(idp: Issuer) -> None:
    strict = JwtVerifier()
    with pytest.raises(ConfigurationError):
        strict.issuer(idp.url)
    strict.http.close()
    assert check_url("https://idp.example", what="issuer", allow_insecure_loopback=False)
    with pytest.raises(ConfigurationError):
        check_url("http://idp.example", what="issuer", allow_insecure_loopback=True)
    with pytest.raises(ConfigurationError):
        check_url("ftp://idp.example", what="issuer", allow_insecure_loopback=True)
    assert check_url("http://[::1]:8/x", what="issuer", allow_insecure_loopback=True)

"""DPoP proofs (RFC 9449) checked against the RFC's own examples, RFC 7638 and
RFC 8037 thumbprint vectors, and joserfc as an independent implementation."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

from qustody.identity.dpop import (
    ALGORITHM_NAMES,
    access_token_hash,
    check_proof,
    normalise_htu,
    thumbprint,
)
from qustody.identity.errors import DpopError, DpopKeyMismatch, InvalidDpopProof

# RFC 9449 figure 4 (section 4.1): a proof for a token request.
RFC_TOKEN_REQUEST_PROOF = (
    "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgt"
    "MzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VO"
    "SmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRj"
    "IiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0Ijox"
    "NTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK"
    "70nfbV37xRZT3Lg"
)
# RFC 9449 figure 13 (section 7.1): a proof for a protected resource, with `ath`.
RFC_RESOURCE_PROOF = (
    "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgt"
    "MzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VO"
    "SmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiJlMWozVl9iS2ljOC1MQUVC"
    "IiwiaHRtIjoiR0VUIiwiaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5leGFtcGxlLm9yZy9wcm90ZWN0ZWRyZXNv"
    "dXJjZSIsImlhdCI6MTU2MjI2MjYxOCwiYXRoIjoiZlVIeU8ycjJaM0RaNTNFc05yV0JiMHhXWG9hTnk1OUlp"
    "S0NBcWtzbVFFbyJ9.2oW9RP35yRqzhrtNP86L-Ey71EOptxRimPPToA1plemAgR6pxHF8y6-yqyVnmcw6Fy1dq"
    "d-jfxSYoMxhAJpLjA"
)
# RFC 9449 section 7.1: the access token of figure 12 and its `ath`.
RFC_ACCESS_TOKEN = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
RFC_ATH = "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
# RFC 9449 figure 9 (section 6.1): the thumbprint of the examples' key.
RFC_JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
RFC_JWK = {
    "kty": "EC",
    "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
    "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA",
    "crv": "P-256",
}
# RFC 7638 section 3.1: an RSA key and its thumbprint.
RFC7638_JWK = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
    "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FD"
    "W2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4v"
    "MQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
# RFC 8037 appendix A.3: an Ed25519 key and its thumbprint.
RFC8037_JWK = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"

URL = "https://gateway.example/v1/jobs"


def test_thumbprints_match_rfc_7638_8037_and_9449() -> None:
    assert thumbprint(RFC7638_JWK) == RFC7638_THUMBPRINT
    assert thumbprint(RFC8037_JWK) == RFC8037_THUMBPRINT
    assert thumbprint(RFC_JWK) == RFC_JKT
    with pytest.raises(ValueError, match="key type"):
        thumbprint({"kty": "oct", "k": "AAAA"})
    with pytest.raises(ValueError, match="'y'"):
        thumbprint({"kty": "EC", "crv": "P-256", "x": "AAAA"})


@pytest.mark.parametrize(
    "key",
    [
        ECKey.generate_key("P-256"),
        OKPKey.generate_key("Ed25519"),
        RSAKey.generate_key(2048),
    ],
    ids=["ec", "okp", "rsa"],
)
def test_thumbprint_agrees_with_joserfc(key: ECKey | OKPKey | RSAKey) -> None:
    assert thumbprint(key.as_dict(private=False)) == key.thumbprint()


def test_ath_matches_rfc_9449() -> None:
    assert access_token_hash(RFC_ACCESS_TOKEN) == RFC_ATH


def test_rfc_token_request_proof_verifies() -> None:
    proof = check_proof(
        RFC_TOKEN_REQUEST_PROOF,
        method="POST",
        url="https://server.example.com/token",
        access_token=None,
        bound_jkt=None,
        now=1562262616,
    )
    assert (proof.jkt, proof.jti, proof.iat) == (RFC_JKT, "-BwC3ESc6acc2lTc", 1562262616)


def test_rfc_resource_proof_verifies_with_its_token_and_binding() -> None:
    proof = check_proof(
        RFC_RESOURCE_PROOF,
        method="GET",
        url="https://resource.example.org/protectedresource",
        access_token=RFC_ACCESS_TOKEN,
        bound_jkt=RFC_JKT,
        now=1562262618,
    )
    assert (proof.jkt, proof.jti) == (RFC_JKT, "e1j3V_bKic8-LAEB")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": "POST"}, "htm"),
        ({"url": "https://resource.example.org/other"}, "htu"),
        ({"url": "http://resource.example.org/protectedresource"}, "htu"),
        ({"access_token": RFC_ACCESS_TOKEN + "x"}, "ath"),
        ({"now": 1562262618 + 301}, "older than 300"),
        ({"now": 1562262618 - 61}, "future"),
    ],
)
def test_rfc_resource_proof_is_refused_for_another_request(
    change: dict[str, Any], message: str
) -> None:
    arguments: dict[str, Any] = {
        "method": "GET",
        "url": "https://resource.example.org/protectedresource",
        "access_token": RFC_ACCESS_TOKEN,
        "bound_jkt": RFC_JKT,
        "now": 1562262618,
    }
    with pytest.raises(InvalidDpopProof, match=message):
        check_proof(RFC_RESOURCE_PROOF, **{**arguments, **change})


def test_a_proof_by_another_key_than_the_binding_is_refused() -> None:
    with pytest.raises(DpopKeyMismatch) as caught:
        check_proof(
            RFC_RESOURCE_PROOF,
            method="GET",
            url="https://resource.example.org/protectedresource",
            access_token=RFC_ACCESS_TOKEN,
            bound_jkt=RFC8037_THUMBPRINT,
            now=1562262618,
        )
    assert caught.value.status == 401
    assert caught.value.www_authenticate.startswith('DPoP error="invalid_dpop_proof"')


def test_htu_ignores_query_fragment_case_and_default_port() -> None:
    assert normalise_htu("HTTPS://Server.Example.com:443/token?x=1#frag") == (
        "https://server.example.com/token"
    )
    assert normalise_htu("http://127.0.0.1:8080") == "http://127.0.0.1:8080/"
    assert normalise_htu("http://[::1]:80/a") == "http://[::1]/a"
    for bad in ("ftp://example.com/", "/relative", "https://"):
        with pytest.raises(ValueError, match="absolute http"):
            normalise_htu(bad)


# -- proofs made here with joserfc -----------------------------------------------------


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def make_proof(
    key: ECKey | OKPKey | RSAKey | OctKey,
    alg: str,
    *,
    header: dict[str, Any] | None = None,
    claims: dict[str, Any] | None = None,
    jwk: dict[str, Any] | None = None,
) -> str:
    public = key.as_dict(private=False) if not isinstance(key, OctKey) else {}
    protected = {"typ": "dpop+jwt", "alg": alg, "jwk": public if jwk is None else jwk}
    payload = {"jti": "j-1", "htm": "GET", "htu": URL, "iat": int(time.time())}
    protected.update(header or {})
    payload.update(claims or {})
    body = json.dumps({k: v for k, v in payload.items() if v is not None}).encode()
    return jws.serialize_compact(
        {k: v for k, v in protected.items() if v is not None},
        body,
        key,
        algorithms=[alg],
    )


def _check(proof: str, **overrides: Any) -> str:
    arguments: dict[str, Any] = {
        "method": "GET",
        "url": URL,
        "access_token": None,
        "bound_jkt": None,
        "now": time.time(),
    }
    return check_proof(proof, **{**arguments, **overrides}).jkt


@pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")
@pytest.mark.parametrize(
    ("key", "alg"),
    [
        (ECKey.generate_key("P-256"), "ES256"),
        (OKPKey.generate_key("Ed25519"), "EdDSA"),
        (OKPKey.generate_key("Ed25519"), "Ed25519"),
        (RSAKey.generate_key(2048), "RS256"),
        (RSAKey.generate_key(2048), "PS256"),
    ],
)
def test_each_allowed_algorithm_verifies(key: ECKey | OKPKey | RSAKey, alg: str) -> None:
    assert _check(make_proof(key, alg)) == key.thumbprint()
    assert alg in ALGORITHM_NAMES.split()


def test_the_challenge_advertises_the_allowed_algorithms() -> None:
    assert DpopError.algorithms == ALGORITHM_NAMES


@pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")
def test_symmetric_none_and_unlisted_algorithms_are_refused() -> None:
    secret = OctKey.generate_key(256)
    hs = make_proof(secret, "HS256", jwk={"kty": "oct", "k": secret.as_dict()["k"]})
    with pytest.raises(InvalidDpopProof, match="algorithm 'HS256'"):
        _check(hs)
    ec = ECKey.generate_key("P-384")
    with pytest.raises(InvalidDpopProof, match="algorithm 'ES384'"):
        _check(make_proof(ec, "ES384"))
    good = make_proof(ECKey.generate_key("P-256"), "ES256")
    head, body, _ = good.split(".")
    none_header = json.loads(base64.urlsafe_b64decode(head + "=="))
    none_header["alg"] = "none"
    with pytest.raises(InvalidDpopProof):
        _check(f"{_b64(none_header)}.{body}.")
    with pytest.raises(InvalidDpopProof, match="algorithm 'none'"):
        _check(f"{_b64(none_header)}.{body}.AAAA")


def test_a_key_that_does_not_fit_the_algorithm_is_refused() -> None:
    okp = OKPKey.generate_key("Ed25519")
    ec = ECKey.generate_key("P-256")
    # Signed by the EC key, but the header claims an Ed25519 key.
    proof = make_proof(ec, "ES256", jwk=okp.as_dict(private=False))
    with pytest.raises(InvalidDpopProof, match="P-256 key"):
        _check(proof)
    p384 = ECKey.generate_key("P-384")
    with pytest.raises(InvalidDpopProof, match="P-256 key"):
        _check(make_proof(ec, "ES256", jwk=p384.as_dict(private=False)))


def test_a_signature_by_another_key_is_refused() -> None:
    signer, other = ECKey.generate_key("P-256"), ECKey.generate_key("P-256")
    with pytest.raises(InvalidDpopProof, match="signature"):
        _check(make_proof(signer, "ES256", jwk=other.as_dict(private=False)))


def test_a_tampered_payload_is_refused() -> None:
    proof = make_proof(ECKey.generate_key("P-256"), "ES256")
    head, _, signature = proof.split(".")
    forged = _b64({"jti": "j-2", "htm": "GET", "htu": URL, "iat": int(time.time())})
    with pytest.raises(InvalidDpopProof, match="signature"):
        _check(f"{head}.{forged}.{signature}")


def test_a_private_jwk_is_refused() -> None:
    key = ECKey.generate_key("P-256")
    with pytest.raises(InvalidDpopProof, match="private key"):
        _check(make_proof(key, "ES256", jwk=key.as_dict(private=True)))


@pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")  # the test's own import
def test_a_short_rsa_key_is_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (refused)
    key = RSAKey.import_key(short)
    with pytest.raises(InvalidDpopProof, match="2048 bits"):
        _check(make_proof(key, "RS256"))


@pytest.mark.parametrize(
    ("header", "claims", "message"),
    [
        ({"typ": "JWT"}, {}, "typ"),
        ({"typ": None}, {}, "typ"),
        ({"jwk": None}, {}, "'jwk'"),
        ({}, {"jti": None}, "jti"),
        ({}, {"jti": ""}, "jti"),
        ({}, {"jti": "x" * 129}, "jti"),
        ({}, {"htm": None}, "htm"),
        ({}, {"htm": "get"}, "htm"),
        ({}, {"htu": None}, "htu"),
        ({}, {"htu": "not a url"}, "htu"),
        ({}, {"iat": None}, "iat"),
        ({}, {"iat": "1700000000"}, "iat"),
        ({}, {"iat": True}, "iat"),
    ],
)
def test_missing_or_wrong_members_are_refused(
    header: dict[str, Any], claims: dict[str, Any], message: str
) -> None:
    key = ECKey.generate_key("P-256")
    if header.get("jwk", "") is None:
        proof = make_proof(key, "ES256", header={"jwk": None})
    else:
        proof = make_proof(key, "ES256", header=header, claims=claims)
    with pytest.raises(InvalidDpopProof, match=message):
        _check(proof)


def test_ath_is_required_when_a_token_is_presented() -> None:
    key = ECKey.generate_key("P-256")
    without = make_proof(key, "ES256")
    with pytest.raises(InvalidDpopProof, match="ath"):
        _check(without, access_token="tok")
    with_ath = make_proof(key, "ES256", claims={"ath": access_token_hash("tok")})
    assert _check(with_ath, access_token="tok", bound_jkt=key.thumbprint()) == key.thumbprint()


def test_query_and_fragment_do_not_matter_but_the_path_does() -> None:
    key = ECKey.generate_key("P-256")
    proof = make_proof(key, "ES256", claims={"htu": URL + "?page=2#top"})
    assert _check(proof, url=URL + "?page=3") == key.thumbprint()
    with pytest.raises(InvalidDpopProof, match="htu"):
        _check(proof, url=URL + "/x")


@pytest.mark.parametrize(
    "garbage",
    ["", "a.b", "a.b.c.d", "!!!.b.c", "x" * 9000, "eyJ9.eyJ9.AAAA", "W10.W10.AAAA"],
)
def test_garbage_is_refused_without_a_crash(garbage: str) -> None:
    with pytest.raises(InvalidDpopProof):
        _check(garbage)

"""DPoP: sender-constrained tokens (RFC 9449).

A client holds a key pair and signs a small JWT, the *proof*, for every
request: it names the HTTP method (``htm``) and URL (``htu``), carries a
fresh ``jti`` and an ``iat``, and, when it accompanies an access token, the
token's hash (``ath``). A token bound to the key (claim ``cnf.jkt``, the
key's RFC 7638 thumbprint) is usable only with such a proof, so a stolen
token alone is worthless.

:func:`check_proof` is the pure part: it parses one proof and applies the
checks of RFC 9449 section 4.3 (well-formed JWT, ``typ``, an allowed
asymmetric ``alg``, a public ``jwk`` whose type fits the algorithm, the
signature, ``htm``, ``htu``, ``iat`` within the window, ``ath``, and the
key binding). :class:`DpopVerifier` adds the one check that needs state:
each ``jti`` is accepted once per key (section 11.1), remembered in the
``dpop_proofs`` table until the proof would be too old anyway. The primary
key ``(jkt, jti)`` decides a race: of two requests replaying one proof, in
one process or many, on SQLite or PostgreSQL, exactly one insert succeeds.

Optionally (section 8), proofs must also carry a nonce the server handed out
(:class:`NonceSource`): a proof without a current one is refused with
``use_dpop_nonce`` and a fresh nonce in the ``DPoP-Nonce`` header, so a proof
cannot be made in advance. Nonces need no storage: each is a time window
and its MAC under a key every API process derives from the same secret.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry
from sqlalchemy import delete, insert
from sqlalchemy.exc import IntegrityError

from qustody.identity.errors import (
    DpopKeyMismatch,
    InvalidDpopProof,
    ReplayedDpopProof,
    UseDpopNonce,
)
from qustody.storage.db import Database
from qustody.storage.models import DPOP_PROOFS

#: The JOSE ``typ`` of a proof (RFC 9449 section 4.2).
PROOF_TYPE = "dpop+jwt"
#: Allowed ``alg`` values and the key each needs: ``(kty, crv)``, ``crv`` None for RSA.
#: ``EdDSA`` and ``Ed25519`` (RFC 9864's fully specified name) both mean Ed25519 here.
ALGORITHMS: Mapping[str, tuple[str, str | None]] = {
    "ES256": ("EC", "P-256"),
    "EdDSA": ("OKP", "Ed25519"),
    "Ed25519": ("OKP", "Ed25519"),
    "RS256": ("RSA", None),
    "PS256": ("RSA", None),
}
#: For ``WWW-Authenticate: DPoP algs="..."`` (RFC 9449 section 7.1).
ALGORITHM_NAMES = " ".join(ALGORITHMS)
MIN_RSA_BITS = 2048
MAX_PROOF_BYTES = 8192
MAX_JTI_CHARS = 128
#: Proof lifetime: a proof is accepted while ``now - MAX_AGE <= iat <= now + LEEWAY``.
DEFAULT_MAX_AGE_SECONDS = 300
DEFAULT_LEEWAY_SECONDS = 60
#: Private members (RFC 7518 section 6): a proof's ``jwk`` must have none.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
#: Members of each key type that its thumbprint covers (RFC 7638 section 3.2).
_THUMBPRINT_MEMBERS: Mapping[str, tuple[str, ...]] = {
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
    "RSA": ("e", "kty", "n"),
}
_COMPACT_JWS = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_PURGE_EVERY_SECONDS = 60.0

# RFC 9864 deprecates the polymorphic "EdDSA" for "Ed25519" and joserfc warns
# on each use; clients still send it, and the key in the proof fixes the
# curve (checked to be Ed25519), so it is accepted quietly.
_EDDSA = copy.copy(JWSRegistry.algorithms["EdDSA"])
_EDDSA.security_warning = None


class _Registry(JWSRegistry):
    # (joserfc keeps its algorithm table in a class attribute.)
    algorithms = {**JWSRegistry.algorithms, "EdDSA": _EDDSA}  # noqa: RUF012
    # The header embeds the key: an RSA key's is longer than joserfc's default 512.
    max_header_length = 2048


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(jwk: Mapping[str, object]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK: the required members
    in lexicographic order, as JSON without whitespace, hashed."""
    kty = jwk.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise ValueError(f"key type {kty!r} has no thumbprint here; use EC, OKP or RSA")
    values = {}
    for name in members:
        value = jwk.get(name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"the JWK lacks its {name!r} member")
        values[name] = value
    canonical = json.dumps(values, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def access_token_hash(access_token: str) -> str:
    """``ath``: base64url of the SHA-256 of the access token's ASCII bytes (section 4.2)."""
    return b64url(hashlib.sha256(access_token.encode("ascii")).digest())


def normalise_htu(url: str) -> str:
    """A URL as ``htu`` compares it: no query or fragment (section 4.3), scheme
    and host in lower case, the scheme's default port and an empty path
    normalised (RFC 3986 sections 6.2.2 and 6.2.3)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError("not an absolute http(s) URL")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port  # ValueError for a port out of range
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path or '/'}"


@dataclass(frozen=True, slots=True)
class Proof:
    """A proof that passed every stateless check."""

    #: Thumbprint of the proof's key: what a token is bound to (``cnf.jkt``).
    jkt: str
    jti: str
    iat: int
    nonce: str | None = None


def _refuse(detail: str) -> InvalidDpopProof:
    return InvalidDpopProof(f"the DPoP proof {detail}")


def _segment(text: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError):
        raise _refuse(f"has a {what} that is not base64url-encoded JSON") from None
    if not isinstance(value, dict):
        raise _refuse(f"has a {what} that is not a JSON object")
    return value


def _public_key(header: Mapping[str, Any], alg: str) -> tuple[ECKey | OKPKey | RSAKey, str]:
    """The proof's embedded key, checked to be public and to fit ``alg``; and its thumbprint."""
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise _refuse("has no 'jwk' header; embed the public key that signed it")
    if _PRIVATE_MEMBERS.intersection(jwk):
        raise _refuse("embeds a private key; put only the public key in 'jwk'")
    kty, crv = ALGORITHMS[alg]
    if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
        raise _refuse(f"is signed with {alg}, which needs a {crv or kty} key in 'jwk'")
    try:
        jkt = thumbprint(jwk)
        key: ECKey | OKPKey | RSAKey
        if kty == "EC":
            key = ECKey.import_key(jwk)
        elif kty == "OKP":
            key = OKPKey.import_key(jwk)
        else:
            modulus = base64.urlsafe_b64decode(str(jwk["n"]) + "===")
            if int.from_bytes(modulus, "big").bit_length() < MIN_RSA_BITS:
                raise _refuse(f"uses an RSA key shorter than {MIN_RSA_BITS} bits")
            key = RSAKey.import_key(jwk)
    except (ValueError, TypeError, KeyError, binascii.Error, JoseError):
        raise _refuse("embeds a 'jwk' that is not a valid public key") from None
    return key, jkt


def check_proof(
    proof: str,
    *,
    method: str,
    url: str,
    access_token: str | None,
    bound_jkt: str | None,
    now: float,
    max_age_seconds: int = DEFAULT_MAX_AGE_SECONDS,
    leeway_seconds: int = DEFAULT_LEEWAY_SECONDS,
) -> Proof:
    """Apply RFC 9449 section 4.3's stateless checks to ``proof`` for a request
    ``method url``. With ``access_token``, the proof must carry its ``ath``;
    with ``bound_jkt``, it must be signed by that key. Raises
    :class:`InvalidDpopProof` (or :class:`DpopKeyMismatch`) naming the check
    that failed; never echoes the proof."""
    proof = proof.strip()
    if len(proof) > MAX_PROOF_BYTES or not _COMPACT_JWS.fullmatch(proof):
        raise _refuse(f"is not a compact JWS of at most {MAX_PROOF_BYTES} bytes")
    encoded_header, encoded_claims, _ = proof.split(".")
    header = _segment(encoded_header, "header")
    claims = _segment(encoded_claims, "payload")
    if header.get("typ") != PROOF_TYPE:
        raise _refuse(f"must have typ '{PROOF_TYPE}'")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        raise _refuse(f"uses algorithm {str(alg)[:20]!r}; use one of {ALGORITHM_NAMES}")
    key, jkt = _public_key(header, alg)
    try:
        jws.deserialize_compact(
            proof, key, registry=_Registry(algorithms=[alg], strict_check_header=False)
        )
    except JoseError:
        raise _refuse("signature does not verify with its 'jwk'") from None
    except (ValueError, TypeError):
        raise _refuse("could not be decoded") from None

    jti, htm, htu, iat = (claims.get(name) for name in ("jti", "htm", "htu", "iat"))
    if not isinstance(jti, str) or not 1 <= len(jti) <= MAX_JTI_CHARS:
        raise _refuse(f"needs a 'jti' of 1 to {MAX_JTI_CHARS} characters, unique per proof")
    if not isinstance(htm, str) or htm != method.upper():
        raise _refuse(f"is for another HTTP method; set 'htm' to {method.upper()!r}")
    expected = normalise_htu(url)
    try:
        matches = isinstance(htu, str) and normalise_htu(htu) == expected
    except ValueError:
        matches = False
    if not matches:
        raise _refuse(f"is for another URL; set 'htu' to {expected!r}")
    if isinstance(iat, bool) or not isinstance(iat, int | float):
        raise _refuse("needs a numeric 'iat' (seconds since the epoch)")
    if iat < now - max_age_seconds:
        raise _refuse(f"is older than {max_age_seconds} seconds; make a new proof per request")
    if iat > now + leeway_seconds:
        raise _refuse("is issued in the future ('iat'); check the client's clock")
    if access_token is not None:
        ath = claims.get("ath")
        if (
            not isinstance(ath, str)
            or not access_token.isascii()
            or not hmac.compare_digest(ath.encode(), access_token_hash(access_token).encode())
        ):
            raise _refuse(
                "does not carry this access token's hash; set 'ath' to the base64url "
                "SHA-256 of the token"
            )
    if bound_jkt is not None and not hmac.compare_digest(jkt.encode(), bound_jkt.encode()):
        raise DpopKeyMismatch(
            "the DPoP proof is signed by another key than the one this token is bound to; "
            "sign proofs with the key the token was issued for."
        )
    nonce = claims.get("nonce")
    return Proof(jkt, jti, int(iat), nonce if isinstance(nonce, str) else None)


class NonceSource:
    """Server nonces (RFC 9449 section 8) without storage.

    A nonce is ``base64url(window || HMAC-SHA256(key, window)[:16])`` where
    ``window`` is the current ``window_seconds``-long period (8 bytes, big
    endian); one of this window or the previous is accepted. Processes that
    share ``secret`` (derived from the token signing key) share nonces.
    """

    _LABEL = b"qustody dpop nonce v1"

    def __init__(
        self,
        secret: bytes,
        *,
        window_seconds: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(secret) < 32:
            raise ValueError("a nonce secret needs at least 32 bytes")
        self._key = hmac.new(secret, self._LABEL, hashlib.sha256).digest()
        self.window_seconds = window_seconds
        self._clock = clock

    def _nonce(self, window: int) -> str:
        stamp = window.to_bytes(8, "big")
        return b64url(stamp + hmac.new(self._key, stamp, hashlib.sha256).digest()[:16])

    def current(self) -> str:
        return self._nonce(int(self._clock() // self.window_seconds))

    def accepts(self, nonce: str | None) -> bool:
        if nonce is None or len(nonce) > 64:
            return False
        window = int(self._clock() // self.window_seconds)
        return any(
            hmac.compare_digest(nonce.encode(), self._nonce(w).encode())
            for w in (window, window - 1)
        )


class DpopVerifier:
    """Verifies proofs and refuses a replayed one (see the module docstring).

    With ``nonces``, a proof must also carry a current server nonce.
    ``clock`` returns seconds since the epoch; tests pass a fixed one.
    """

    def __init__(
        self,
        db: Database,
        *,
        nonces: NonceSource | None = None,
        max_age_seconds: int = DEFAULT_MAX_AGE_SECONDS,
        leeway_seconds: int = DEFAULT_LEEWAY_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self.nonces = nonces
        self.max_age_seconds = max_age_seconds
        self.leeway_seconds = leeway_seconds
        self._clock = clock
        self._purged_at = 0.0
        self._purge_lock = threading.Lock()

    def verify(
        self,
        proof: str,
        *,
        method: str,
        url: str,
        access_token: str | None,
        bound_jkt: str | None,
    ) -> str:
        """Check ``proof`` for a request ``method url`` and spend its ``jti``;
        returns the thumbprint (``jkt``) of the key that signed it."""
        now = self._clock()
        checked = check_proof(
            proof,
            method=method,
            url=url,
            access_token=access_token,
            bound_jkt=bound_jkt,
            now=now,
            max_age_seconds=self.max_age_seconds,
            leeway_seconds=self.leeway_seconds,
        )
        if self.nonces is not None and not self.nonces.accepts(checked.nonce):
            raise UseDpopNonce(
                "the DPoP proof needs the server's current nonce; make a new proof with the "
                "'nonce' claim set to the DPoP-Nonce header of this answer.",
                nonce=self.nonces.current(),
            )
        self._spend(checked, now)
        return checked.jkt

    def _spend(self, proof: Proof, now: float) -> None:
        """Record the proof's ``jti`` once; a second use fails on the primary key."""
        expires = datetime.fromtimestamp(proof.iat + self.max_age_seconds, UTC)
        purge = self._purge_due(now)
        try:
            with self._db.writing() as connection:
                connection.execute(
                    insert(DPOP_PROOFS).values(jkt=proof.jkt, jti=proof.jti, expires_at=expires)
                )
                if purge:
                    connection.execute(
                        delete(DPOP_PROOFS).where(
                            DPOP_PROOFS.c.expires_at < datetime.fromtimestamp(now, UTC)
                        )
                    )
        except IntegrityError:
            raise ReplayedDpopProof(
                "this DPoP proof was already used; make a new proof, with a new 'jti', "
                "for every request."
            ) from None

    def _purge_due(self, now: float) -> bool:
        """Whether this request also clears expired proofs (once a minute per process)."""
        with self._purge_lock:
            if now - self._purged_at < _PURGE_EVERY_SECONDS:
                return False
            self._purged_at = now
            return True

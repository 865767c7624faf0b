"""Verification of JWTs that other issuers sign (OIDC ID tokens, CI tokens).

Follows RFC 8725 (JWT best current practices):

* each issuer has a pinned list of algorithms (default ``RS256``, ``ES256``,
  ``EdDSA``/``Ed25519``); ``none`` and the HMAC family are refused outright,
  so a public key can never be used as an HMAC secret (section 3.1-3.2);
* ``iss`` must equal the issuer exactly, ``aud`` must name one of the
  expected audiences, ``exp``/``nbf``/``iat`` are checked with a small
  leeway, and an expected ``typ`` is compared (section 3.11);
* keys come only from the issuer's own JWKS, found through its metadata
  (OpenID Connect Discovery 1.0 section 4); ``jku``, ``x5u`` and ``jwk``
  headers in a token are ignored.

The JWKS is cached per issuer and fetched again when a token names an
unknown ``kid``, at most once per ``min_refresh_seconds`` (so tokens with
made-up key ids cannot make Qustody hammer the identity provider), and when
older than ``max_age_seconds``. A refetch replaces the whole set, so keys
the issuer rotated out disappear.

Issuer metadata and keys must come over https; plain http is allowed only
for a loopback address and only when the verifier is built with
``allow_insecure_loopback`` (development mode).
"""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import json
import re
import threading
import time
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from qustody.domain.errors import ConfigurationError, InsecureDevelopmentWarning
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

#: Asymmetric signature algorithms an issuer may be pinned to.
SUPPORTED_ALGORITHMS = frozenset(
    {
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES384",
        "ES512",
        "EdDSA",
        "Ed25519",
    }
)
DEFAULT_ALGORITHMS = ("RS256", "ES256", "EdDSA", "Ed25519")
#: ID tokens with many groups get large; anything beyond this is refused unread.
MAX_TOKEN_BYTES = 16 * 1024
#: A metadata document or JWKS larger than this is refused.
MAX_DOCUMENT_BYTES = 512 * 1024
DEFAULT_LEEWAY_SECONDS = 30
DEFAULT_MIN_REFRESH_SECONDS = 30.0
DEFAULT_MAX_AGE_SECONDS = 3600.0
_COMPACT_JWS = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
_KEY_TYPES: Mapping[str, type[RSAKey] | type[ECKey] | type[OKPKey]] = {
    "RSA": RSAKey,
    "EC": ECKey,
    "OKP": OKPKey,
}
_KEY_TYPE_OF_ALG = {
    **dict.fromkeys(("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"), "RSA"),
    **dict.fromkeys(("ES256", "ES384", "ES512"), "EC"),
    **dict.fromkeys(("EdDSA", "Ed25519"), "OKP"),
}
JsonObject = Mapping[str, Any]
Key = RSAKey | ECKey | OKPKey

# RFC 9864 deprecates the polymorphic "EdDSA" in favour of "Ed25519", and
# joserfc warns on every use; identity providers still sign with it, and the
# key (an OKP key of the issuer's JWKS) fixes the curve, so it is accepted
# quietly when an issuer is pinned to it.
_EDDSA = copy.copy(JWSRegistry.algorithms["EdDSA"])
_EDDSA.security_warning = None


class _Registry(JWSRegistry):
    # (joserfc keeps its algorithm table in a class attribute.)
    algorithms = {**JWSRegistry.algorithms, "EdDSA": _EDDSA}  # noqa: RUF012
    # Providers add header parameters of their own (x5t, ...); they are ignored,
    # and "crit" is refused before this registry sees the token.
    max_header_length = 2048


@dataclass(frozen=True, slots=True)
class VerifiedJwt:
    """A JWT whose signature, issuer, audience and times were checked."""

    issuer: str
    subject: str
    claims: Mapping[str, object]
    kid: str | None

    def __repr__(self) -> str:
        return f"VerifiedJwt(issuer={self.issuer!r}, subject={self.subject!r}, kid={self.kid!r})"


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, what: str, allow_insecure_loopback: bool) -> str:
    """Refuse a URL that is not https (or, in development, http on loopback)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and is_loopback_url(url) and allow_insecure_loopback:
        return url
    if parts.scheme == "http" and is_loopback_url(url):
        raise ConfigurationError(
            f"{what} {url!r} uses plain http; that is allowed for a loopback address in "
            "development mode only. Use https."
        )
    raise ConfigurationError(f"{what} {url!r} is not an https URL; use https://<host>/...")


def _b64_json(segment: str) -> object:
    padded = segment + "=" * (-len(segment) % 4)
    try:
        return json.loads(base64.urlsafe_b64decode(padded))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise MalformedToken("the token's header is not base64url-encoded JSON.") from None


def _number(claims: Mapping[str, object], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken(f"the token's '{name}' claim is missing or not a number.")
    return float(value)


def _typ_matches(actual: object, expected: str) -> bool:
    """Compare JOSE ``typ`` values as RFC 7515 section 4.1.9 says: without
    case and with the ``application/`` prefix optional."""
    if not isinstance(actual, str):
        return False
    a = actual.lower().removeprefix("application/")
    return a == expected.lower().removeprefix("application/")


class ExternalIssuer:
    """One issuer: its URL, pinned algorithms, metadata and cached keys.

    Thread-safe: gateway requests verify tokens from several threads.
    """

    def __init__(
        self,
        url: str,
        *,
        algorithms: Iterable[str] = DEFAULT_ALGORITHMS,
        http: httpx.Client,
        allow_insecure_loopback: bool = False,
        min_refresh_seconds: float = DEFAULT_MIN_REFRESH_SECONDS,
        max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = check_url(url, what="issuer", allow_insecure_loopback=allow_insecure_loopback)
        if self.url.startswith("http://"):
            warnings.warn(
                f"issuer {self.url} is trusted over plain http (loopback, development mode); "
                "production refuses it.",
                InsecureDevelopmentWarning,
                stacklevel=2,
            )
        algs = tuple(dict.fromkeys(algorithms))
        refused = [a for a in algs if a not in SUPPORTED_ALGORITHMS]
        if refused or not algs:
            raise ConfigurationError(
                f"issuer {url!r}: algorithms {refused or '[]'} are not allowed; pin one or "
                f"more of {sorted(SUPPORTED_ALGORITHMS)} (never 'none' or HS*)."
            )
        self.algorithms = algs
        self._http = http
        self._insecure_loopback = allow_insecure_loopback
        self._min_refresh = min_refresh_seconds
        self._max_age = max_age_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._metadata: JsonObject | None = None
        self._metadata_at = 0.0
        self._keys: dict[str | None, list[Key]] = {}
        self._keys_at: float | None = None
        self._refresh_attempt_at: float | None = None

    def __repr__(self) -> str:
        return f"ExternalIssuer({self.url!r}, algorithms={self.algorithms!r})"

    # -- metadata -------------------------------------------------------

    def metadata(self) -> JsonObject:
        """The issuer's OpenID Connect discovery document (cached)."""
        with self._lock:
            return self._metadata_locked()

    def endpoint(self, name: str) -> str:
        """An endpoint URL from the metadata (``authorization_endpoint``, ...)."""
        value = self.metadata().get(name)
        if not isinstance(value, str):
            raise IssuerUnavailable(
                f"identity provider {self.url} publishes no {name}; check its configuration."
            )
        return self._checked(value, name)

    def _checked(self, url: str, what: str) -> str:
        try:
            return check_url(url, what=what, allow_insecure_loopback=self._insecure_loopback)
        except ConfigurationError as e:
            raise IssuerUnavailable(
                f"identity provider {self.url}: {e.detail}",
            ) from None

    def _metadata_locked(self) -> JsonObject:
        now = self._clock()
        if self._metadata is not None and now - self._metadata_at < self._max_age:
            return self._metadata
        document = self._fetch(self.url.rstrip("/") + "/.well-known/openid-configuration")
        if document.get("issuer") != self.url:
            # OpenID Connect Discovery 1.0 section 4.3: the issuer in the
            # document must be exactly the one it was fetched for.
            raise IssuerUnavailable(
                f"identity provider {self.url} publishes metadata for issuer "
                f"{document.get('issuer')!r}; the two must be identical. Fix the issuer URL "
                "(trailing slash included)."
            )
        self._metadata, self._metadata_at = MappingProxyType(dict(document)), now
        return self._metadata

    def _fetch(self, url: str) -> JsonObject:
        self._checked(url, "URL")
        try:
            with self._http.stream(
                "GET", url, headers={"Accept": "application/json"}, follow_redirects=False
            ) as response:
                if response.status_code != 200:
                    raise IssuerUnavailable(
                        f"identity provider {self.url}: GET {url} answered "
                        f"{response.status_code}; try again later."
                    )
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise IssuerUnavailable(
                            f"identity provider {self.url}: {url} is larger than "
                            f"{MAX_DOCUMENT_BYTES} bytes."
                        )
        except httpx.HTTPError as e:
            raise IssuerUnavailable(
                f"identity provider {self.url} could not be reached ({type(e).__name__}); "
                "try again later."
            ) from None
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise IssuerUnavailable(f"identity provider {self.url}: {url} is not a JSON object.")
        return document

    # -- keys -----------------------------------------------------------

    def key(self, kid: str | None, alg: str) -> Key:
        """The issuer's key for ``kid`` usable with ``alg``, fetching the JWKS
        when it is unknown (rate-limited) or stale."""
        with self._lock:
            now = self._clock()
            stale = self._keys_at is None or now - self._keys_at >= self._max_age
            if stale:
                self._refresh_locked(now)
            found = self._select(kid, alg)
            if found is None and not stale and self._may_refresh(now):
                self._refresh_locked(now)
                found = self._select(kid, alg)
        if found is None:
            raise UnknownKey(
                f"the token is signed with a key (kid {kid!r}) that {self.url} does not "
                "publish; get a new token from the identity provider."
            )
        return found

    def refresh(self) -> None:
        """Fetch the JWKS now (an operator's nudge after a known rotation)."""
        with self._lock:
            self._refresh_locked(self._clock())

    def _may_refresh(self, now: float) -> bool:
        last = self._refresh_attempt_at
        return last is None or now - last >= self._min_refresh

    def _refresh_locked(self, now: float) -> None:
        self._refresh_attempt_at = now
        jwks_uri = self._metadata_locked().get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise IssuerUnavailable(f"identity provider {self.url} publishes no jwks_uri.")
        document = self._fetch(self._checked(jwks_uri, "jwks_uri"))
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise IssuerUnavailable(f"identity provider {self.url}: its JWKS has no 'keys' list.")
        keys: dict[str | None, list[Key]] = {}
        for entry in entries:
            key = self._import(entry)
            if key is not None:
                keys.setdefault(key.kid, []).append(key)
        self._keys, self._keys_at = keys, now

    @staticmethod
    def _import(entry: object) -> Key | None:
        """A public signing key from a JWKS entry; anything else is skipped."""
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            return None
        key_type = _KEY_TYPES.get(str(entry.get("kty")))
        if key_type is None:
            return None
        public = {k: v for k, v in entry.items() if k not in {"d", "p", "q", "dp", "dq", "qi"}}
        try:
            return key_type.import_key(public)
        except (JoseError, ValueError, TypeError):
            return None

    def _select(self, kid: str | None, alg: str) -> Key | None:
        if kid is not None:
            candidates = self._keys.get(kid, [])
        else:
            # RFC 7515 leaves kid optional; without one, only an unambiguous
            # key is used.
            candidates = [k for ks in self._keys.values() for k in ks]
        fitting = [
            k
            for k in candidates
            if k.key_type == _KEY_TYPE_OF_ALG[alg] and k.get("alg") in (None, alg)
        ]
        return fitting[0] if len(fitting) == 1 or (kid is not None and fitting) else None


class JwtVerifier:
    """Verifies JWTs of external issuers, registered lazily by URL.

    Callers decide which issuers to trust (an OIDC provider list, a tenant's
    trust rules) before calling :meth:`verify`; this class only checks that a
    token really comes from the issuer named and is meant for us.
    """

    def __init__(
        self,
        *,
        http: httpx.Client | None = None,
        allow_insecure_loopback: bool = False,
        leeway_seconds: int = DEFAULT_LEEWAY_SECONDS,
        min_refresh_seconds: float = DEFAULT_MIN_REFRESH_SECONDS,
        max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
        max_token_bytes: int = MAX_TOKEN_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http or httpx.Client(timeout=httpx.Timeout(5.0), follow_redirects=False)
        self.allow_insecure_loopback = allow_insecure_loopback
        self._leeway = leeway_seconds
        self._min_refresh = min_refresh_seconds
        self._max_age = max_age_seconds
        self._max_bytes = max_token_bytes
        self._clock = clock
        self._issuers: dict[str, ExternalIssuer] = {}
        self._lock = threading.Lock()

    @property
    def http(self) -> httpx.Client:
        return self._http

    def close(self) -> None:
        self._http.close()

    def now(self) -> float:
        return self._clock()

    def issuer(self, url: str, *, algorithms: Iterable[str] | None = None) -> ExternalIssuer:
        """The issuer at ``url``, registered on first use.

        ``algorithms`` pins its algorithms at registration; a later call with
        a different list for the same URL is a configuration error.
        """
        with self._lock:
            known = self._issuers.get(url)
            if known is None:
                known = ExternalIssuer(
                    url,
                    algorithms=algorithms or DEFAULT_ALGORITHMS,
                    http=self._http,
                    allow_insecure_loopback=self.allow_insecure_loopback,
                    min_refresh_seconds=self._min_refresh,
                    max_age_seconds=self._max_age,
                    clock=self._clock,
                )
                self._issuers[url] = known
            elif algorithms is not None and tuple(dict.fromkeys(algorithms)) != known.algorithms:
                raise ConfigurationError(
                    f"issuer {url!r} is configured twice with different algorithms "
                    f"({known.algorithms} and {tuple(algorithms)}); configure one list."
                )
            return known

    def verify(
        self,
        token: str,
        *,
        issuer: str,
        audiences: Collection[str],
        typ: str | None = None,
    ) -> VerifiedJwt:
        """Check ``token`` against ``issuer`` and return its verified claims.

        With ``typ`` given, the JOSE header's ``typ`` must be that type; with
        none, it must be absent or ``JWT`` (so an access token, a logout
        token or a DPoP proof is not taken for an ID token).
        """
        if not audiences:
            raise ValueError("verify() needs at least one expected audience")
        header = self._header(token)
        alg = header.get("alg")
        source = self.issuer(issuer)
        if not isinstance(alg, str) or alg not in source.algorithms:
            raise DisallowedAlgorithm(
                f"the token is signed with {alg!r}; {issuer} is pinned to "
                f"{list(source.algorithms)}."
            )
        actual_typ = header.get("typ")
        if typ is not None and not _typ_matches(actual_typ, typ):
            raise WrongTokenType(f"the token's type is {actual_typ!r}; expected {typ!r}.")
        if typ is None and actual_typ is not None and not _typ_matches(actual_typ, "JWT"):
            raise WrongTokenType(
                f"the token's type is {actual_typ!r}; expected an ID token (typ 'JWT')."
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise MalformedToken("the token's 'kid' header is not a string.")
        key = source.key(kid, alg)
        try:
            decoded = jwt.decode(
                token, key, registry=_Registry(algorithms=[alg], strict_check_header=False)
            )
        except JoseError:
            raise InvalidToken(
                f"the token's signature does not verify with {issuer}'s key {kid!r}."
            ) from None
        except (ValueError, TypeError):
            raise MalformedToken("the token could not be decoded.") from None
        claims = dict(decoded.claims)
        self._check_claims(claims, issuer=issuer, audiences=audiences)
        return VerifiedJwt(
            issuer=issuer,
            subject=str(claims["sub"]),
            claims=MappingProxyType(claims),
            kid=kid,
        )

    def _header(self, token: str) -> dict[str, object]:
        if not isinstance(token, str) or len(token) > self._max_bytes:
            raise MalformedToken(
                f"the token is larger than {self._max_bytes} bytes; send a compact JWT."
            )
        if not _COMPACT_JWS.fullmatch(token):
            raise MalformedToken("the token is not a compact signed JWT (three base64url parts).")
        header = _b64_json(token.split(".", 1)[0])
        if not isinstance(header, dict):
            raise MalformedToken("the token's header is not a JSON object.")
        if "crit" in header:
            # No extension is understood here, so none may be critical (RFC 7515 4.1.11).
            raise InvalidToken("the token carries critical header extensions Qustody refuses.")
        return header

    def _check_claims(
        self, claims: dict[str, object], *, issuer: str, audiences: Collection[str]
    ) -> None:
        if claims.get("iss") != issuer:
            raise WrongIssuer(f"the token's issuer is not {issuer}.")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise InvalidToken("the token has no subject ('sub' claim).")
        aud = claims.get("aud")
        named = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not any(isinstance(a, str) and a in audiences for a in named):
            raise WrongAudience(
                f"the token is not meant for this service: its audience must include one of "
                f"{sorted(audiences)}. Ask the identity provider for a token for that audience."
            )
        now = self._clock()
        exp = _number(claims, "exp")
        iat = _number(claims, "iat")
        nbf = _number(claims, "nbf") if "nbf" in claims else None
        if exp + self._leeway <= now:
            raise ExpiredToken(
                "the token has expired; sign in again at the identity provider for a new one."
            )
        if nbf is not None and nbf - self._leeway > now:
            raise TokenNotYetValid("the token is not valid yet ('nbf'); check the clocks.")
        if iat - self._leeway > now:
            raise TokenNotYetValid("the token was issued in the future ('iat'); check the clocks.")

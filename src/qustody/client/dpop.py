"""DPoP on the client side (RFC 9449): a key pair and a fresh proof per request.

A token issued against a DPoP proof is bound to the proof's key: the gateway
accepts it only with a new proof, signed by that key, for each request. A
stolen token alone is then useless. Opt in with ``Client(url, token,
dpop_key=key)``; get a bound token by passing the same key when exchanging
(:func:`qustody.client.identity.exchange_token`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Generator
from pathlib import Path
from typing import Literal

import httpx
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from joserfc import jws
from joserfc.jwk import ECKey, OKPKey, RSAKey

#: Algorithms the gateway accepts, and the default for new keys.
Algorithm = Literal["ES256", "Ed25519", "RS256", "PS256"]
DEFAULT_ALGORITHM: Algorithm = "ES256"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class DpopKey:
    """A client's DPoP key pair. ``repr`` shows the thumbprint, never the key."""

    def __init__(self, key: ECKey | OKPKey | RSAKey, algorithm: Algorithm | None = None) -> None:
        if not key.is_private:
            raise ValueError("a DPoP key must be a private key: proofs are signed with it")
        if isinstance(key, ECKey):
            if key.curve_name != "P-256":
                raise ValueError("an EC DPoP key must be on P-256 (ES256)")
            algorithm = algorithm or "ES256"
        elif isinstance(key, OKPKey):
            if key.curve_name != "Ed25519":
                raise ValueError("an OKP DPoP key must be Ed25519")
            algorithm = algorithm or "Ed25519"
        else:
            algorithm = algorithm or "PS256"
        kinds = {"ES256": "EC", "Ed25519": "OKP", "RS256": "RSA", "PS256": "RSA"}
        if kinds[algorithm] != key.key_type:
            raise ValueError(f"algorithm {algorithm} does not fit a {key.key_type} key")
        self._key: ECKey | OKPKey | RSAKey = key
        self.algorithm: Algorithm = algorithm
        self._public: dict[str, object] = dict(key.as_dict(private=False))
        self.thumbprint: str = key.thumbprint()

    def __repr__(self) -> str:
        return f"DpopKey(algorithm={self.algorithm!r}, thumbprint={self.thumbprint!r})"

    @classmethod
    def generate(cls, algorithm: Algorithm = DEFAULT_ALGORITHM) -> DpopKey:
        if algorithm == "ES256":
            return cls(ECKey.generate_key("P-256"), algorithm)
        if algorithm == "Ed25519":
            return cls(OKPKey.generate_key("Ed25519"), algorithm)
        return cls(RSAKey.generate_key(3072), algorithm)

    @classmethod
    def from_pem(cls, pem: bytes, algorithm: Algorithm | None = None) -> DpopKey:
        """A key from PKCS#8 PEM (unencrypted): EC P-256, Ed25519 or RSA."""
        private = load_pem_private_key(pem, password=None)
        if isinstance(private, ec.EllipticCurvePrivateKey):
            return cls(ECKey.import_key(private), algorithm)
        if isinstance(private, ed25519.Ed25519PrivateKey):
            return cls(OKPKey.import_key(private), algorithm)
        if isinstance(private, rsa.RSAPrivateKey):
            return cls(RSAKey.import_key(private), algorithm)
        raise ValueError("a DPoP key must be an EC P-256, Ed25519 or RSA private key")

    @classmethod
    def load(cls, path: Path) -> DpopKey:
        return cls.from_pem(path.read_bytes())

    def private_pem(self) -> bytes:
        """The private key as PKCS#8 PEM (keep it owner-only)."""
        pem: bytes = self._key.as_pem(private=True)
        return pem

    def proof(
        self,
        method: str,
        url: str,
        *,
        access_token: str | None = None,
        nonce: str | None = None,
    ) -> str:
        """A proof for one request ``method url`` (query and fragment dropped)."""
        target = httpx.URL(url).copy_with(query=None, fragment=None)
        claims: dict[str, object] = {
            "jti": secrets.token_urlsafe(18),
            "htm": method.upper(),
            "htu": str(target),
            "iat": int(time.time()),
        }
        if access_token is not None:
            claims["ath"] = _b64url(hashlib.sha256(access_token.encode("ascii")).digest())
        if nonce is not None:
            claims["nonce"] = nonce
        header = {"typ": "dpop+jwt", "alg": self.algorithm, "jwk": self._public}
        payload = json.dumps(claims, separators=(",", ":")).encode()
        return jws.serialize_compact(header, payload, self._key, algorithms=[self.algorithm])


class DpopAuth(httpx.Auth):
    """httpx authentication: ``Authorization: DPoP <token>`` and a new proof per
    request (``token`` None: only the proof, as for the token endpoint).

    When the gateway asks for a server nonce (RFC 9449 section 8: a 400 or 401
    carrying ``DPoP-Nonce``), the request is made once more with a proof
    carrying it, and later proofs carry the newest nonce the gateway gave.
    """

    def __init__(self, token: str | None, key: DpopKey) -> None:
        self._token = token
        self._key = key
        self._nonce: str | None = None

    def __repr__(self) -> str:
        return f"DpopAuth(key={self._key!r})"

    def _sign(self, request: httpx.Request) -> None:
        request.headers["DPoP"] = self._key.proof(
            request.method, str(request.url), access_token=self._token, nonce=self._nonce
        )
        if self._token is not None:
            request.headers["Authorization"] = f"DPoP {self._token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self._sign(request)
        response = yield request
        nonce = response.headers.get("dpop-nonce")
        if nonce is None or nonce == self._nonce:
            return
        self._nonce = nonce
        if response.status_code in (400, 401):
            self._sign(request)
            yield request

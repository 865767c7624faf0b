"""Authentication errors. Each has its own stable code; none echoes the token."""

from __future__ import annotations

from typing import ClassVar

from qustody.domain.errors import (
    AuthenticationError,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    QustodyError,
    ServiceUnavailable,
)


class MissingToken(AuthenticationError):
    code = "missing_token"
    title = "Missing bearer token"


class MalformedToken(AuthenticationError):
    code = "malformed_token"
    title = "Malformed bearer token"


class InvalidToken(AuthenticationError):
    """Bad signature, wrong issuer or audience, or a token Qustody never issued."""

    code = "invalid_token"
    title = "Invalid bearer token"


class ExpiredToken(AuthenticationError):
    code = "expired_token"
    title = "Expired bearer token"


class UnknownKey(InvalidToken):
    """A JWT signed with a key its issuer does not publish (any more)."""

    code = "unknown_key"
    title = "Unknown signing key"


class DisallowedAlgorithm(InvalidToken):
    code = "disallowed_algorithm"
    title = "Signing algorithm not allowed"


class WrongIssuer(InvalidToken):
    code = "wrong_issuer"
    title = "Token from another issuer"


class UntrustedIssuer(InvalidToken):
    """An issuer that no configuration (provider, trust rule) names."""

    code = "untrusted_issuer"
    title = "Untrusted token issuer"


class WrongAudience(InvalidToken):
    code = "wrong_audience"
    title = "Token for another audience"


class WrongTokenType(InvalidToken):
    code = "wrong_token_type"
    title = "Wrong kind of token"


class TokenNotYetValid(InvalidToken):
    code = "token_not_yet_valid"
    title = "Token not valid yet"


class IssuerUnavailable(ServiceUnavailable):
    """An external issuer's metadata or keys could not be fetched."""

    code = "issuer_unavailable"
    title = "Identity provider unavailable"


class RevokedToken(AuthenticationError):
    code = "revoked_token"
    title = "Revoked bearer token"


class InvalidScope(InvalidRequest):
    code = "invalid_scope"
    title = "Invalid token scope"


class InvalidTTL(InvalidRequest):
    code = "invalid_ttl"
    title = "Invalid token lifetime"


class AlreadyInitialized(Conflict):
    code = "already_initialized"
    title = "Already initialized"


class NameTaken(Conflict):
    code = "name_taken"
    title = "Name already in use"


# -- DPoP (RFC 9449) ------------------------------------------------------------


def _quoted(text: str) -> str:
    """``text`` as an auth-param value (RFC 6750 section 3: no quote or backslash)."""
    return "".join(c if " " <= c <= "~" and c not in '"\\' else " " for c in text)[:200]


class DpopError(AuthenticationError):
    """A refusal of RFC 9449; answered with a ``DPoP`` challenge."""

    #: The ``error`` of the ``WWW-Authenticate: DPoP`` challenge.
    challenge_error: ClassVar[str] = "invalid_dpop_proof"
    #: Signature algorithms proofs may use (``algs`` of the challenge).
    algorithms: ClassVar[str] = "ES256 EdDSA Ed25519 RS256 PS256"

    @property
    def www_authenticate(self) -> str:
        return (
            f'DPoP error="{self.challenge_error}", '
            f'error_description="{_quoted(self.detail)}", algs="{self.algorithms}"'
        )


class InvalidDpopProof(DpopError):
    code = "invalid_dpop_proof"
    title = "Invalid DPoP proof"


class ReplayedDpopProof(InvalidDpopProof):
    code = "dpop_proof_replayed"
    title = "Replayed DPoP proof"


class DpopKeyMismatch(InvalidDpopProof):
    """A valid proof, but by another key than the token is bound to."""

    code = "dpop_key_mismatch"
    title = "DPoP key mismatch"


class UseDpopNonce(DpopError):
    """The proof lacks the server's current nonce (RFC 9449 section 8); the
    answer carries a fresh one in ``DPoP-Nonce``."""

    challenge_error = "use_dpop_nonce"
    code = "use_dpop_nonce"
    title = "DPoP nonce required"

    def __init__(self, detail: str, *, nonce: str) -> None:
        super().__init__(detail)
        self.nonce = nonce

    @property
    def response_headers(self) -> dict[str, str]:
        return {"DPoP-Nonce": self.nonce}


class DpopRequired(DpopError):
    """A DPoP-bound token presented without a proof (as a plain bearer token)."""

    challenge_error = "invalid_token"
    code = "dpop_required"
    title = "DPoP proof required"


class TokenNotDpopBound(DpopError):
    """``Authorization: DPoP`` with a token that is not bound to a key."""

    challenge_error = "invalid_token"
    code = "token_not_dpop_bound"
    title = "Token not DPoP-bound"


# -- the token endpoint (RFC 6749 section 5.2, RFC 8693 section 2.2.2) -----------


class OAuthError(QustodyError):
    """A refusal of ``POST /v1/auth/token``: problem+json whose body also
    carries OAuth's ``error`` (the same as ``code``) and ``error_description``,
    so OAuth clients understand it."""

    status = 400

    def __init__(
        self,
        detail: str,
        *,
        field: str | None = None,
        extra: dict[str, str | int | None] | None = None,
    ) -> None:
        super().__init__(
            detail,
            field=field,
            extra={"error": self.code, "error_description": detail, **(extra or {})},
        )


class TokenRequestInvalid(OAuthError):
    code = "invalid_request"
    title = "Invalid token request"


class InvalidGrant(OAuthError):
    """The subject token is invalid, or no trust rule accepts it."""

    code = "invalid_grant"
    title = "Subject token refused"


class InvalidTarget(OAuthError):
    code = "invalid_target"
    title = "Unknown or ambiguous target"


class UnsupportedTokenType(OAuthError):
    code = "unsupported_token_type"
    title = "Unsupported token type"


class UnsupportedGrantType(OAuthError):
    code = "unsupported_grant_type"
    title = "Unsupported grant type"


class TokenRequestScope(OAuthError):
    code = "invalid_scope"
    title = "Invalid token scope"


class TemporarilyUnavailable(OAuthError):
    """The issuer of a subject token could not be reached to verify it."""

    code = "temporarily_unavailable"
    status = 503
    title = "Issuer unavailable"


class TokenRequestNonce(OAuthError):
    """The token request's proof lacks the server's current nonce; the answer
    carries one in ``DPoP-Nonce`` (RFC 9449 section 8)."""

    code = "use_dpop_nonce"
    title = "DPoP nonce required"

    def __init__(self, detail: str, *, nonce: str) -> None:
        super().__init__(detail, field="DPoP")
        self.nonce = nonce

    @property
    def response_headers(self) -> dict[str, str]:
        return {"DPoP-Nonce": self.nonce}


class TokenRequestDpop(OAuthError):
    """A token request's DPoP proof was refused (RFC 9449 section 5)."""

    code = "invalid_dpop_proof"
    title = "Invalid DPoP proof"


# -- single sign-on (OIDC) ------------------------------------------------------


class UnknownProvider(NotFound):
    code = "unknown_provider"
    title = "Unknown identity provider"


class InvalidLoginState(AuthenticationError):
    """A sign-in callback whose ``state`` is unknown, used, expired or not this browser's."""

    code = "invalid_login_state"
    title = "Invalid or expired sign-in"


class NonceMismatch(InvalidToken):
    code = "nonce_mismatch"
    title = "ID token nonce mismatch"


class IdentityProviderRefused(AuthenticationError):
    """The identity provider answered the sign-in with an error (RFC 6749 4.1.2.1)."""

    code = "idp_refused"
    title = "Sign-in refused by the identity provider"


class SignInRefused(Forbidden):
    """Authenticated by the identity provider, but not allowed into Qustody."""

    code = "sign_in_refused"
    title = "Sign-in refused"


class PrincipalInactive(SignInRefused):
    code = "principal_inactive"
    title = "Principal deactivated"


class NoTenantMapped(SignInRefused):
    code = "no_tenant_mapped"
    title = "No tenant for this identity"


class NoRoleMapped(SignInRefused):
    code = "no_role_mapped"
    title = "No role for this identity"


class IdentityConflict(SignInRefused):
    code = "identity_conflict"
    title = "Identity does not match its principal"

"""Authentication errors. Each has its own stable code; none echoes the token."""

from __future__ import annotations

from qustody.domain.errors import (
    AuthenticationError,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
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

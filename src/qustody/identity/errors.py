"""Authentication errors. Each has its own stable code; none echoes the token."""

from __future__ import annotations

from qustody.domain.errors import AuthenticationError, Conflict, InvalidRequest


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

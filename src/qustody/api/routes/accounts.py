"""Local accounts (embedded mode, development only): sign-in, password, TOTP.

``POST /v1/auth/local`` is public: it is how a person without an identity
provider gets a token. The credential routes take ``me``, a principal id or
a principal name of the caller's tenant.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from qustody.api.auth import CallerDep, request_context
from qustody.api.routes.common import PUBLIC, secured
from qustody.api.state import services_of
from qustody.domain.vocabulary import Action
from qustody.identity.local_accounts import MAX_PASSWORD_LENGTH

router = APIRouter(prefix="/v1", tags=["local accounts"])


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class LocalSignIn(_Request):
    tenant: Annotated[str, Field(min_length=1, max_length=64)]
    username: Annotated[str, Field(min_length=1, max_length=128)]
    password: Annotated[str, Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)]
    #: The current code of the authenticator app, once TOTP is enrolled.
    totp: Annotated[str | None, Field(max_length=16)] = None

    def __repr__(self) -> str:
        return f"LocalSignIn(tenant={self.tenant!r}, <credentials redacted>)"


class LocalSignedIn(BaseModel):
    token: str
    token_type: str = "Bearer"  # noqa: S105 (the scheme name, not a secret)
    expires_at: datetime
    principal_id: str
    tenant_id: str
    #: How the holder signed in (RFC 8176): ``pwd``, plus ``otp`` and ``mfa`` with TOTP.
    amr: list[str]


class PasswordSet(_Request):
    password: Annotated[str, Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)]

    def __repr__(self) -> str:
        return "PasswordSet(<redacted>)"


class TotpEnrolled(BaseModel):
    """Shown once: add it to an authenticator app, then confirm with a code."""

    otpauth_uri: str
    secret: str


class TotpConfirm(_Request):
    code: Annotated[str, Field(min_length=1, max_length=16)]


@router.post("/auth/local", response_model=LocalSignedIn, openapi_extra=PUBLIC)
def sign_in_local(body: LocalSignIn, request: Request) -> LocalSignedIn:
    """Sign in with a local account's password (and TOTP code): a Qustody token.

    Limited against guessing: per client address and per account, in buckets
    every API process shares (429 with Retry-After when spent)."""
    services = services_of(request)
    context = request_context(request)
    if services.rate_limits is not None:
        refused = services.rate_limits.charge_sign_in(
            context, account=f"{body.tenant}/{body.username}"
        )
        if refused is not None:
            raise refused
    signed_in = services.local_accounts.sign_in(
        context,
        tenant=body.tenant,
        username=body.username,
        password=body.password,
        code=body.totp,
    )
    token = signed_in.token
    return LocalSignedIn(
        token=token.token,
        expires_at=token.expires_at,
        principal_id=token.principal_id,
        tenant_id=token.tenant_id,
        amr=list(signed_in.amr),
    )


@router.put(
    "/principals/{principal}/password",
    status_code=204,
    openapi_extra=secured(Action.ACCOUNT_SET),
)
def set_password(
    principal: str, body: PasswordSet, caller: CallerDep, request: Request
) -> Response:
    """Set a local account's password (your own, or as tenant admin anyone's)."""
    services_of(request).local_accounts.set_password(
        caller.principal, caller.request, principal, body.password
    )
    return Response(status_code=204)


@router.post(
    "/principals/{principal}/totp",
    status_code=201,
    response_model=TotpEnrolled,
    openapi_extra=secured(Action.ACCOUNT_SET),
)
def enroll_totp(principal: str, caller: CallerDep, request: Request) -> TotpEnrolled:
    """A new TOTP secret, shown once; it is in force once confirmed with a code."""
    enrollment = services_of(request).local_accounts.enroll_totp(
        caller.principal, caller.request, principal
    )
    return TotpEnrolled(otpauth_uri=enrollment.uri, secret=enrollment.secret)


@router.post(
    "/principals/{principal}/totp/confirm",
    status_code=204,
    openapi_extra=secured(Action.ACCOUNT_SET),
)
def confirm_totp(
    principal: str, body: TotpConfirm, caller: CallerDep, request: Request
) -> Response:
    """Put the enrolled secret in force, given its current code."""
    services_of(request).local_accounts.confirm_totp(
        caller.principal, caller.request, principal, body.code
    )
    return Response(status_code=204)

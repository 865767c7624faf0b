"""``POST /v1/auth/token``: OAuth 2.0 token exchange (RFC 8693).

A public route: its caller proves who it is with the token it exchanges. The
request is form-encoded, as OAuth requires. Refusals are problem+json that
also carry OAuth's ``error`` and ``error_description`` (RFC 6749 section
5.2), so both Qustody's SDK and OAuth client libraries read them.

``subject_token_type``:

- ``urn:ietf:params:oauth:token-type:jwt``: a workload's token (a CI job's),
  accepted by a tenant's trust rule (:mod:`qustody.identity.workload`);
  ``audience`` names the tenant (``<tenant>`` or ``<tenant>/<rule>``) when
  the token's issuer serves several.
- ``urn:ietf:params:oauth:token-type:id_token``: a person's ID token from a
  configured OpenID provider (:meth:`OidcService.sign_in_with_id_token`).

A ``DPoP`` header with a proof (RFC 9449 section 5) binds the issued token to
the proof's key: ``token_type`` is then ``DPoP``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from qustody.api.auth import public_url_of, request_context
from qustody.api.routes.common import PUBLIC
from qustody.api.state import Services, services_of
from qustody.domain.errors import AuthenticationError, QustodyError
from qustody.identity.dpop import normalise_htu
from qustody.identity.errors import (
    InvalidDpopProof,
    InvalidGrant,
    InvalidTarget,
    OAuthError,
    TemporarilyUnavailable,
    TokenRequestDpop,
    TokenRequestInvalid,
    TokenRequestNonce,
    TokenRequestScope,
    UnsupportedGrantType,
    UnsupportedTokenType,
    UseDpopNonce,
)
from qustody.identity.tokens import IssuedToken

router = APIRouter(prefix="/v1/auth", tags=["sign-in"])

# URNs of RFC 8693 section 3, not secrets.
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
FORM = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 64 * 1024
MAX_FIELDS = 32

Form = dict[str, list[str]]


class TokenResponse(BaseModel):
    """RFC 8693 section 2.2.1."""

    access_token: str
    issued_token_type: str
    #: ``Bearer``, or ``DPoP`` for a token bound to the request's DPoP key.
    token_type: str
    expires_in: int
    scope: str


async def read_form(request: Request) -> Form:
    """The form body: UTF-8 ``application/x-www-form-urlencoded``; parameters
    sent without a value count as omitted (RFC 6749 section 3.1)."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != FORM:
        raise TokenRequestInvalid(
            f"the token endpoint takes a form; send Content-Type: {FORM}.", field="body"
        )
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise TokenRequestInvalid(f"the form is larger than {MAX_FORM_BYTES} bytes.", field="body")
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=bool(body),
            max_num_fields=MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        raise TokenRequestInvalid(
            f"the form is not UTF-8 {FORM} with at most {MAX_FIELDS} fields.", field="body"
        ) from None
    form: Form = {}
    for name, value in pairs:
        if value:
            form.setdefault(name, []).append(value)
    return form


def _one(form: Form, name: str) -> str | None:
    values = form.get(name, [])
    if len(values) > 1:
        raise TokenRequestInvalid(
            f"{name} is given {len(values)} times; give it once (RFC 6749 section 3.2).",
            field=name,
        )
    return values[0] if values else None


def _required(form: Form, name: str) -> str:
    value = _one(form, name)
    if value is None:
        raise TokenRequestInvalid(f"{name} is required.", field=name)
    return value


def _binding(request: Request, services: Services) -> str | None:
    """The thumbprint of the request's DPoP proof, if it sent one."""
    proofs = request.headers.getlist("dpop")
    if not proofs:
        return None
    if len(proofs) > 1:
        raise TokenRequestDpop("send one DPoP header, not several.", field="DPoP")
    try:
        return services.dpop.verify(
            proofs[0],
            method=request.method,
            url=public_url_of(request, services.settings),
            access_token=None,
            bound_jkt=None,
        )
    except UseDpopNonce as error:
        raise TokenRequestNonce(error.detail, nonce=error.nonce) from None
    except InvalidDpopProof as error:
        raise TokenRequestDpop(error.detail, field="DPoP") from None


def _check_resource(resource: str | None, services: Services) -> None:
    """``resource``, if given, must be this gateway (its public URL, or its API)."""
    if resource is None:
        return
    public = services.settings.public_url.rstrip("/")
    try:
        named = normalise_htu(resource).rstrip("/")
        ours = {normalise_htu(public).rstrip("/"), normalise_htu(public + "/v1").rstrip("/")}
    except ValueError:
        named, ours = "", set()
    if named not in ours:
        raise InvalidTarget(
            f"resource must be this gateway ({public}); Qustody issues tokens for itself only.",
            field="resource",
        )


def _sign_in_with_id_token(
    services: Services, request: Request, id_token: str, jkt: str | None
) -> IssuedToken:
    try:
        return services.oidc.sign_in_with_id_token(
            id_token, request=request_context(request), jkt=jkt
        )
    except OAuthError:
        raise
    except AuthenticationError as error:
        raise InvalidGrant(error.detail, field="subject_token") from None
    except QustodyError as error:
        if error.status >= 500:
            raise TemporarilyUnavailable(error.detail) from None
        raise InvalidGrant(error.detail, field="subject_token") from None


_FORM_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            FORM: {
                "schema": {
                    "type": "object",
                    "required": ["grant_type", "subject_token", "subject_token_type"],
                    "properties": {
                        "grant_type": {"type": "string", "enum": [TOKEN_EXCHANGE]},
                        "subject_token": {"type": "string"},
                        "subject_token_type": {
                            "type": "string",
                            "enum": [JWT_TYPE, ID_TOKEN_TYPE],
                        },
                        "audience": {
                            "type": "string",
                            "description": "<tenant> or <tenant>/<trust rule> (workloads)",
                        },
                        "resource": {"type": "string", "description": "this gateway's URL"},
                        "scope": {"type": "string", "description": "space-separated scopes"},
                        "requested_token_type": {"type": "string", "enum": [ACCESS_TOKEN_TYPE]},
                    },
                }
            }
        },
    }
}


@router.post(
    "/token",
    response_model=TokenResponse,
    openapi_extra={**PUBLIC, **_FORM_SCHEMA},
)
def token(request: Request, form: Annotated[Form, Depends(read_form)]) -> TokenResponse:
    services = services_of(request)
    grant_type = _required(form, "grant_type")
    if grant_type != TOKEN_EXCHANGE:
        raise UnsupportedGrantType(
            f"grant_type {grant_type[:80]!r} is not supported; use {TOKEN_EXCHANGE}.",
            field="grant_type",
        )
    subject_token = _required(form, "subject_token")
    subject_type = _required(form, "subject_token_type")
    if "actor_token" in form or "actor_token_type" in form:
        raise TokenRequestInvalid(
            "delegation (actor_token) is not supported; exchange the subject token alone.",
            field="actor_token",
        )
    requested = _one(form, "requested_token_type")
    if requested not in (None, ACCESS_TOKEN_TYPE):
        raise TokenRequestInvalid(
            f"requested_token_type must be {ACCESS_TOKEN_TYPE} (or left out).",
            field="requested_token_type",
        )
    if len(form.get("audience", [])) > 1 or len(form.get("resource", [])) > 1:
        raise InvalidTarget(
            "a Qustody token has one audience; give at most one audience and one resource.",
            field="audience",
        )
    audience = _one(form, "audience")
    if audience == services.settings.audience:
        audience = None  # the gateway itself (every token's audience): no tenant named
    _check_resource(_one(form, "resource"), services)
    scope = _one(form, "scope")
    jkt = _binding(request, services)
    if subject_type == JWT_TYPE:
        exchanged = services.workload.exchange(
            subject_token,
            audience=audience,
            scope=scope,
            jkt=jkt,
            request=request_context(request),
        )
        issued = exchanged.issued
    elif subject_type == ID_TOKEN_TYPE:
        if audience is not None:
            raise InvalidTarget(
                "a person's tenant comes from the identity provider's mapping; leave audience out.",
                field="audience",
            )
        if scope is not None:
            raise TokenRequestScope(
                "scope is not taken with an ID token: a person's token carries their roles; "
                "narrow it afterwards with POST /v1/tokens.",
                field="scope",
            )
        issued = _sign_in_with_id_token(services, request, subject_token, jkt)
    else:
        raise UnsupportedTokenType(
            f"subject_token_type {subject_type[:100]!r} is not supported; use {JWT_TYPE} "
            f"(a workload's token) or {ID_TOKEN_TYPE} (a person's ID token).",
            field="subject_token_type",
        )
    remaining = (issued.expires_at - datetime.now(UTC)).total_seconds()
    return TokenResponse(
        access_token=issued.token,
        issued_token_type=ACCESS_TOKEN_TYPE,
        token_type="DPoP" if jkt else "Bearer",
        expires_in=max(0, int(remaining)),
        scope=" ".join(issued.scopes),
    )

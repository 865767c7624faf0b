"""Single sign-on: the providers, the redirect to one, and its callback.

Public routes (no bearer token: this is how a person gets one). The callback
answers JSON, or a minimal page without scripts when a browser asks for HTML.
"""

from __future__ import annotations

import html
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel

from qustody.api.auth import request_context
from qustody.api.routes.common import PUBLIC
from qustody.api.state import services_of
from qustody.identity.oidc import CALLBACK_PATH, LOGIN_TTL_SECONDS

router = APIRouter(prefix="/v1/auth", tags=["sign-in"])

#: Binds a sign-in to the browser that started it (RFC 6749 section 10.12).
LOGIN_COOKIE = "qustody_login"


class Provider(BaseModel):
    name: str
    display_name: str
    issuer: str
    #: Where a browser starts signing in.
    login_url: str
    #: The public client ``qustody login`` uses (RFC 8252), if the provider has one.
    cli_client_id: str | None
    scopes: list[str]
    #: ``acr`` values this provider counts as multi-factor (for step-up).
    mfa_acr_values: list[str]


class ProviderList(BaseModel):
    items: list[Provider]


class SignedIn(BaseModel):
    token: str
    token_type: str = "Bearer"  # noqa: S105 (the scheme name, not a secret)
    expires_at: datetime
    principal_id: str
    tenant_id: str


@router.get("/providers", response_model=ProviderList, openapi_extra=PUBLIC)
def list_providers(request: Request) -> ProviderList:
    services = services_of(request)
    base = services.settings.public_url.rstrip("/")
    return ProviderList(
        items=[
            Provider(
                name=p.name,
                display_name=p.display_name,
                issuer=p.issuer,
                login_url=f"{base}/v1/auth/login/{p.name}",
                cli_client_id=p.cli_client_id,
                scopes=list(p.scopes),
                mfa_acr_values=sorted(p.mfa.acr),
            )
            for p in services.oidc.providers
        ]
    )


@router.get(
    "/login/{provider}",
    status_code=302,
    response_class=RedirectResponse,
    openapi_extra=PUBLIC,
    responses={302: {"description": "To the identity provider's authorization endpoint"}},
)
def login(provider: str, request: Request) -> RedirectResponse:
    services = services_of(request)
    start = services.oidc.begin_login(provider[:64])
    response = RedirectResponse(start.authorization_url, status_code=302)
    response.set_cookie(
        LOGIN_COOKIE,
        start.state,
        max_age=LOGIN_TTL_SECONDS,
        path=CALLBACK_PATH,
        httponly=True,
        samesite="lax",  # sent on the provider's top-level redirect back
        secure=services.settings.public_url.startswith("https://"),
    )
    return response


@router.get(
    "/callback",
    response_model=SignedIn,
    openapi_extra=PUBLIC,
    responses={200: {"content": {"text/html": {}}}},
)
def callback(
    request: Request,
    state: Annotated[str | None, Query(max_length=128)] = None,
    code: Annotated[str | None, Query(max_length=2048)] = None,
    error: Annotated[str | None, Query(max_length=256)] = None,
    iss: Annotated[str | None, Query(max_length=512)] = None,
) -> Response:
    services = services_of(request)
    issued = services.oidc.complete_login(
        state=state,
        code=code,
        error=error,
        issuer=iss,
        browser_state=request.cookies.get(LOGIN_COOKIE),
        request=request_context(request),
    )
    body = SignedIn(
        token=issued.token,
        expires_at=issued.expires_at,
        principal_id=issued.principal_id,
        tenant_id=issued.tenant_id,
    )
    response: Response
    if "text/html" in request.headers.get("accept", ""):
        response = HTMLResponse(
            _page(body),
            headers={
                "Content-Security-Policy": "default-src 'none'",
                "Referrer-Policy": "no-referrer",
            },
        )
    else:
        response = JSONResponse(body.model_dump(mode="json"))
    response.delete_cookie(LOGIN_COOKIE, path=CALLBACK_PATH)
    return response


def _page(signed_in: SignedIn) -> str:
    token = html.escape(signed_in.token)
    expires = html.escape(signed_in.expires_at.isoformat())
    return (
        "<!doctype html><html lang=en><meta charset=utf-8><title>Signed in to Qustody</title>"
        "<h1>Signed in</h1><p>Your Qustody token (valid until "
        f"{expires}):</p><pre style='white-space:pre-wrap;word-break:break-all'>{token}</pre>"
        "<p>Use it as <code>Authorization: Bearer &lt;token&gt;</code> or "
        "<code>export QUSTODY_TOKEN=&lt;token&gt;</code>. For the CLI, "
        "<code>qustody login</code> does this for you.</p></html>"
    )

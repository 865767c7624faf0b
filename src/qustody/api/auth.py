"""Authentication at the edge: the credential becomes a Principal here.

Accepted: ``Authorization: Bearer <Qustody token>``, ``Authorization: DPoP
<DPoP-bound token>`` with a ``DPoP`` proof header (RFC 9449), and
``Authorization: Bearer qst_...`` (an API key). A token bound to a DPoP key
is refused without a valid proof of that key, and the principal carries
``dpop_jkt`` only when this request's proof verified.

The raw credential never travels past :func:`authenticate`. Failures are
written to the audit log (``auth:fail``) without it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated

from fastapi import Depends, Request

from qustody.api.ratelimit import charge_caller
from qustody.api.state import Services, services_of
from qustody.audit.recorder import Actor, record
from qustody.domain.errors import AuthenticationError
from qustody.domain.models import Principal, RequestContext
from qustody.domain.vocabulary import Action
from qustody.identity.apikeys import looks_like_key
from qustody.identity.errors import (
    DpopRequired,
    InvalidDpopProof,
    MissingToken,
    TokenNotDpopBound,
)
from qustody.settings import Settings
from qustody.storage.db import SYSTEM, bind_scope, system_scope, tenant


@dataclass(frozen=True, slots=True)
class Caller:
    principal: Principal
    request: RequestContext


def request_context(request: Request) -> RequestContext:
    client = request.client.host if request.client else None
    return RequestContext(
        request_id=request.state.request_id,
        client_addr=client,
        user_agent=request.headers.get("user-agent"),
        approval_id=(request.headers.get("qustody-approval") or "").strip()[:64] or None,
    )


def public_url_of(request: Request, settings: Settings) -> str:
    """The URL a client addressed, as DPoP's ``htu`` names it: the gateway's
    public URL (``QUSTODY_PUBLIC_URL``, not the ``Host`` header a client
    chooses) and the request's path as the client sent it (percent-encoding kept)."""
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) and raw else request.url.path
    return settings.public_url.rstrip("/") + path


def _principal(request: Request, services: Services) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, credential = header.partition(" ")
    scheme, credential = scheme.lower(), credential.strip()
    if scheme not in ("bearer", "dpop") or not credential:
        raise MissingToken(
            "this endpoint needs 'Authorization: Bearer <token>' (or 'DPoP <token>' with a "
            "DPoP proof); get a token with `qustody token issue` or from your tenant admin."
        )
    # The tenant is not known yet: sign-in lookups run in system scope.
    with system_scope():
        if looks_like_key(credential):
            if scheme != "bearer":
                raise TokenNotDpopBound(
                    "an API key is not bound to a DPoP key; send it as "
                    "'Authorization: Bearer qst_...'."
                )
            return services.api_keys.authenticate(credential)
        principal = services.tokens.authenticate(credential)
    if scheme == "bearer":
        if principal.dpop_jkt is not None:
            raise DpopRequired(
                "this token is bound to a DPoP key; send it as 'Authorization: DPoP <token>' "
                "with a 'DPoP' header holding a proof signed by that key (RFC 9449)."
            )
        return principal
    if principal.dpop_jkt is None:
        raise TokenNotDpopBound(
            "this token is not bound to a DPoP key; send it as 'Authorization: Bearer <token>', "
            "or get a DPoP-bound token by sending a DPoP proof when asking for it."
        )
    proofs = request.headers.getlist("dpop")
    if len(proofs) != 1:
        raise InvalidDpopProof(
            f"the request carries {len(proofs)} 'DPoP' headers; send exactly one proof, made "
            "for this request, with the token."
        )
    jkt = services.dpop.verify(
        proofs[0],
        method=request.method,
        url=public_url_of(request, services.settings),
        access_token=credential,
        bound_jkt=principal.dpop_jkt,
    )
    return replace(principal, dpop_jkt=jkt)


def authenticate(request: Request) -> Caller:
    services = services_of(request)
    context = request_context(request)
    try:
        principal = _principal(request, services)
    except AuthenticationError as error:
        with services.db.write(scope=SYSTEM) as session:
            record(
                session,
                Action.AUTH_FAIL,
                actor=Actor("anonymous"),
                outcome="failure",
                request=context,
                reason=error.code,
            )
        raise
    request.state.principal_id = principal.id
    return Caller(principal, context)


async def tenant_bound(
    request: Request, caller: Annotated[Caller, Depends(authenticate)]
) -> Caller:
    """The caller, with its tenant bound as the database scope for the rest of
    the request (row-level security, :mod:`qustody.storage.db`).

    Async on purpose: it runs in the request's own task, whose context the
    threads that run the handler copy; a sync dependency runs in a copy of
    its own, and a binding made there would end with it.
    """
    await charge_caller(request, caller)  # the principal's and the tenant's rate limits
    bind_scope(tenant(caller.principal.tenant_id))
    return caller


CallerDep = Annotated[Caller, Depends(tenant_bound)]

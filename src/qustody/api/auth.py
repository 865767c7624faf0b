"""Authentication at the edge: the bearer token becomes a Principal here.

The raw token never travels past :func:`authenticate`. Failures are written
to the audit log (``auth:fail``) without the token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from qustody.api.state import services_of
from qustody.audit.recorder import Actor, record
from qustody.domain.errors import AuthenticationError
from qustody.domain.models import Principal, RequestContext
from qustody.domain.vocabulary import Action
from qustody.identity.errors import MissingToken
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
    )


def authenticate(request: Request) -> Caller:
    services = services_of(request)
    context = request_context(request)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    try:
        if scheme.lower() != "bearer" or not token.strip():
            raise MissingToken(
                "this endpoint needs 'Authorization: Bearer <token>'; get a token with "
                "`qustody token issue` or from your tenant admin."
            )
        # The tenant is not known yet: sign-in lookups run in system scope.
        with system_scope():
            principal = services.tokens.authenticate(token.strip())
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


async def tenant_bound(caller: Annotated[Caller, Depends(authenticate)]) -> Caller:
    """The caller, with its tenant bound as the database scope for the rest of
    the request (row-level security, :mod:`qustody.storage.db`).

    Async on purpose: it runs in the request's own task, whose context the
    threads that run the handler copy; a sync dependency runs in a copy of
    its own, and a binding made there would end with it.
    """
    bind_scope(tenant(caller.principal.tenant_id))
    return caller


CallerDep = Annotated[Caller, Depends(tenant_bound)]

"""Rate limits at the edge (:mod:`qustody.governance.ratelimit` holds the buckets).

- :class:`RateLimitEdge`, a plain ASGI middleware: sign-in and token
  endpoints (``/v1/auth/*``, ``POST /v1/tokens``) take a token of the shared
  sign-in bucket of the client address; a request without credentials takes
  one of its address's bucket; a request with credentials that did not
  authenticate (or reached a public route) takes one afterwards, and an
  address whose bucket such failures emptied is refused before anything runs.
- :func:`charge_caller`, run by :func:`qustody.api.auth.tenant_bound` once
  the caller is known: the principal's bucket and its tenant's.

Refusals are 429 problem+json (code ``rate_limited``) with ``Retry-After``
and the ``RateLimit-Policy``/``RateLimit`` headers. A refused bucket is
recorded once per window (``ratelimit:exceed``), never once per request.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from qustody.api.state import Services
from qustody.domain.models import RequestContext
from qustody.governance.ratelimit import RateLimited, RateLimits

if TYPE_CHECKING:
    from fastapi import Request

    from qustody.api.auth import Caller

#: ``POST /v1/auth/local`` charges its own bucket (address and account) in
#: its handler, where the account's name is known.
_OWN_BUCKET = frozenset({"/v1/auth/local"})


def _is_sign_in(method: str, path: str) -> bool:
    if path.startswith("/v1/auth/"):
        return path not in _OWN_BUCKET
    return method == "POST" and path == "/v1/tokens"


def _context(scope: Scope, address: str) -> RequestContext:
    headers = dict(scope.get("headers") or [])
    agent = headers.get(b"user-agent")
    return RequestContext(
        request_id=str(scope.get("state", {}).get("request_id", "")),
        client_addr=address,
        user_agent=agent.decode("latin-1")[:256] if agent else None,
    )


class RateLimitEdge:
    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limits = self.services.rate_limits
        if scope["type"] != "http" or limits is None:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else "-"
        if _is_sign_in(scope["method"], scope["path"]):
            refused = await run_in_threadpool(limits.charge_sign_in, _context(scope, address))
            if refused is not None:
                await _refuse(scope, send, refused)
                return
        credentials = any(name == b"authorization" for name, _ in scope.get("headers") or [])
        if not credentials:
            error = await _charge_address(limits, scope, address)
            if error is not None:
                await _refuse(scope, send, error)
                return
            await self.app(scope, receive, send)
            return
        exhausted = limits.address_exhausted(address)
        if exhausted is not None:
            await _refuse(scope, send, exhausted)
            return
        await self.app(scope, receive, send)
        if "principal_id" not in scope.get("state", {}):
            await _charge_address(limits, scope, address)


async def _charge_address(limits: RateLimits, scope: Scope, address: str) -> RateLimited | None:
    """Charge ``address``; the refusal, if any (recorded once per window)."""
    refused = limits.charge_address(address)
    if refused is None:
        return None
    error, report = refused
    if report:
        await run_in_threadpool(
            limits.report, error, principal=None, request=_context(scope, address)
        )
    return error


async def _refuse(scope: Scope, send: Send, error: RateLimited) -> None:
    body = json.dumps(
        {
            "type": f"urn:qustody:problem:{error.code}",
            "title": error.title,
            "status": error.status,
            "code": error.code,
            "detail": error.detail,
            "instance": scope["path"],
            "request_id": scope.get("state", {}).get("request_id"),
            **error.extra,
        }
    ).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in error.response_headers.items()),
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def charge_caller(request: Request, caller: Caller) -> None:
    """Charge the authenticated caller's and its tenant's buckets, or raise 429."""
    services: Services = request.app.state.services
    limits = services.rate_limits
    if limits is None:
        return
    refused = limits.charge_caller(caller.principal)
    if refused is None:
        return
    error, report = refused
    if report:
        await run_in_threadpool(
            limits.report, error, principal=caller.principal, request=caller.request
        )
    raise error

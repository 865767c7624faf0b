"""Each request's database scope (row-level security, :mod:`qustody.storage.db`).

A request starts in :data:`~qustody.storage.db.NO_TENANT` scope: until its
caller is authenticated, its transactions see no tenant's rows.
Authentication runs its lookups in system scope and then binds the caller's
tenant (:func:`qustody.api.auth.tenant_bound`) for the rest of the request,
so every query a handler or service runs is held to that tenant by the
database itself, whatever filter the query has or lacks. A route that
legitimately spans tenants (the tenant catalogue, the whole audit log) asks
for system scope explicitly in its service.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from qustody.storage.db import NO_TENANT, scope_bound


class RequestScope:
    """Bind :data:`NO_TENANT` around each HTTP request (a plain ASGI middleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with scope_bound(NO_TENANT):
            await self.app(scope, receive, send)

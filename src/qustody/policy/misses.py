"""Lookups that find nothing are denials too.

A service looks ids and names up in the caller's own tenant only, so another
tenant's object and a missing one both come back as nothing, and the caller
gets the one not-found answer (:func:`qustody.policy.guard.not_found`). Such
a miss is recorded like any denial, in the caller's own tenant's log: the
action, the resource type, the request; never the id or name asked for, so
neither tenant's log can tell a probe of another tenant's object from a typo.

Mark a service method ``(self, caller, request, ...)`` with
:func:`records_misses`; the event is written after the method's own
transactions have ended (a denial must never wait on, or roll back with, the
request's transaction). The guard records its own refusals, including the
not-found it answers for another tenant's resource: a method that passes such
a resource to :meth:`~qustody.policy.guard.Guard.check` records that miss
twice, so look the resource up in the caller's tenant first.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from qustody.audit.recorder import Actor, Target, record
from qustody.domain.errors import NotFound
from qustody.domain.models import Principal, RequestContext
from qustody.domain.vocabulary import Action
from qustody.storage.db import Database


def record_miss(
    db: Database,
    principal: Principal,
    action: Action,
    missing: NotFound,
    request: RequestContext | None,
) -> None:
    """Record ``missing`` as a denial of ``action`` in ``principal``'s tenant's log.

    Only the not-found answers of lookups (those naming a ``resource_type``)
    count; "you have no export key yet" is not a probe.
    """
    resource_type = missing.extra.get("resource_type")
    if not isinstance(resource_type, str):
        return
    with db.write() as session:
        record(
            session,
            action,
            actor=Actor.of(principal),
            outcome="denied",
            target=Target(resource_type, None, principal.tenant_id),
            request=request,
            reason=f"no {resource_type} by that reference is visible to the caller",
        )


class _Service(Protocol):
    _db: Database


_S = TypeVar("_S", bound=_Service)
_P = ParamSpec("_P")
_R = TypeVar("_R")
_Method = Callable[Concatenate[_S, Principal, RequestContext, _P], _R]


def records_misses(action: Action) -> Callable[[_Method[_S, _P, _R]], _Method[_S, _P, _R]]:
    """Make a service method record each not-found it answers as a denial of ``action``."""

    def decorate(method: _Method[_S, _P, _R]) -> _Method[_S, _P, _R]:
        @functools.wraps(method)
        def recording(
            self: _S,
            caller: Principal,
            request: RequestContext,
            /,
            *args: _P.args,
            **kwargs: _P.kwargs,
        ) -> _R:
            try:
                return method(self, caller, request, *args, **kwargs)
            except NotFound as missing:
                record_miss(self._db, caller, action, missing, request)
                raise

        return recording

    return decorate

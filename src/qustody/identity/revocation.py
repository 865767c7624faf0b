"""Revocation of many credentials at once: all of a principal's, or all of a
tenant's issued before a time.

One token is revoked by its ``jti`` (:meth:`AdminService.revoke_token`). For
more, the service moves a *cut-off*: ``principals.tokens_not_before`` or
``tenants.tokens_not_before``. Every token and API key issued before it is
refused by the very next request that presents it, in every API process,
because authentication reads the cut-off with the credential
(:meth:`TokenService.authenticate`, :meth:`ApiKeyService.authenticate`). A
cut-off only ever moves forward: revoking "before" an earlier time never
brings back what a later cut-off revoked. The tokens and keys it catches are
also marked revoked, so listings and reviews show them so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from qustody.audit.recorder import Actor, Target, record
from qustody.domain.errors import InvalidRequest
from qustody.domain.ids import PrincipalId
from qustody.domain.models import Principal, RequestContext, Resource
from qustody.domain.vocabulary import Action
from qustody.policy.guard import Guard, not_found
from qustody.policy.misses import records_misses
from qustody.storage import models as m
from qustody.storage.db import Database, utc

#: A cut-off this far in the future (client clocks run ahead) counts as now.
CLOCK_LEEWAY = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class Revoked:
    """What one revocation did."""

    tenant_id: str
    #: The principal whose credentials were revoked; None for a whole tenant.
    principal_id: str | None
    #: The cut-off now in force: credentials issued before it are refused.
    not_before: datetime
    #: Live tokens and unrevoked API keys that it caught.
    tokens: int
    api_keys: int


def _later(current: datetime | None, cut: datetime) -> datetime:
    current = utc(current)
    return cut if current is None or cut > current else current


def cut_off_principal(
    session: Session, principal_id: str, at: datetime
) -> tuple[datetime, int, int]:
    """Revoke every token and API key of ``principal_id`` issued before ``at``,
    in ``session``'s transaction (SCIM deprovisioning calls this too).

    Returns the cut-off in force and the numbers of live tokens and keys caught."""
    principal = session.get(m.Principal, principal_id)
    if principal is None:
        raise not_found("principal", principal_id)
    cut = _later(principal.tokens_not_before, at)
    principal.tokens_not_before = cut
    tokens = _mark_tokens(session, at, cut, m.IssuedToken.principal_id == principal_id)
    keys = _mark_keys(session, at, cut, m.ApiKey.principal_id == principal_id)
    return cut, tokens, keys


def cut_off_tenant(
    session: Session, tenant_id: str, before: datetime, now: datetime
) -> tuple[datetime, int, int]:
    """Revoke every token and API key of ``tenant_id`` issued before ``before``."""
    tenant = session.get(m.Tenant, tenant_id)
    if tenant is None:
        raise not_found("tenant", tenant_id)
    cut = _later(tenant.tokens_not_before, before)
    tenant.tokens_not_before = cut
    tokens = _mark_tokens(session, now, cut, m.IssuedToken.tenant_id == tenant_id)
    keys = _mark_keys(session, now, cut, m.ApiKey.tenant_id == tenant_id)
    return cut, tokens, keys


def _mark_tokens(session: Session, now: datetime, cut: datetime, owner: ColumnElement[bool]) -> int:
    result = session.execute(
        update(m.IssuedToken)
        .where(
            owner,
            m.IssuedToken.revoked_at.is_(None),
            m.IssuedToken.expires_at > now,
            m.IssuedToken.issued_at < cut,
        )
        .values(revoked_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def _mark_keys(session: Session, now: datetime, cut: datetime, owner: ColumnElement[bool]) -> int:
    result = session.execute(
        update(m.ApiKey)
        .where(
            owner,
            m.ApiKey.revoked_at.is_(None),
            m.ApiKey.expires_at > now,
            m.ApiKey.created_at < cut,
        )
        .values(revoked_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def _reason(revoked: Revoked) -> str:
    return (
        f"not_before={revoked.not_before:%Y-%m-%dT%H:%M:%S.%fZ} tokens={revoked.tokens} "
        f"api_keys={revoked.api_keys}"
    )


class RevocationService:
    def __init__(self, db: Database, guard: Guard) -> None:
        self._db = db
        self._guard = guard

    @records_misses(Action.TOKEN_REVOKE)
    def revoke_principal(
        self, caller: Principal, request: RequestContext, principal_name: str
    ) -> Revoked:
        """Revoke every token and API key of a principal of the caller's tenant."""
        with self._db.read() as session:
            target = session.scalar(
                select(m.Principal).where(
                    m.Principal.tenant_id == caller.tenant_id,
                    m.Principal.name == principal_name[:128],
                )
            )
        if target is None:
            raise not_found("principal", principal_name[:80])
        decision = self._guard.check(
            caller,
            Action.TOKEN_REVOKE,
            Resource("principal", target.id, caller.tenant_id, owner_id=PrincipalId(target.id)),
            request,
        )
        now = datetime.now(UTC)
        with self._db.write() as session:
            cut, tokens, keys = cut_off_principal(session, target.id, now)
            revoked = Revoked(caller.tenant_id, target.id, cut, tokens, keys)
            record(
                session,
                Action.TOKEN_REVOKE,
                actor=Actor.of(caller),
                target=Target("principal", target.id, caller.tenant_id),
                decision=decision,
                request=request,
                reason=f"all of {target.name}: {_reason(revoked)}",
            )
        return revoked

    def revoke_tenant(
        self, caller: Principal, request: RequestContext, issued_before: datetime
    ) -> Revoked:
        """Revoke every token and API key of the caller's tenant issued before a time."""
        now = datetime.now(UTC)
        before = _check_time(issued_before, now)
        decision = self._guard.check(
            caller,
            Action.TOKEN_REVOKE,
            Resource("tenant", caller.tenant_id, caller.tenant_id),
            request,
        )
        with self._db.write() as session:
            cut, tokens, keys = cut_off_tenant(session, caller.tenant_id, before, now)
            revoked = Revoked(caller.tenant_id, None, cut, tokens, keys)
            record(
                session,
                Action.TOKEN_REVOKE,
                actor=Actor.of(caller),
                target=Target("tenant", caller.tenant_id, caller.tenant_id),
                decision=decision,
                request=request,
                reason=f"issued before {before:%Y-%m-%dT%H:%M:%S.%fZ}: {_reason(revoked)}",
            )
        return revoked

    def revoke_everywhere(
        self, issued_before: datetime, *, tenant_name: str | None = None
    ) -> list[Revoked]:
        """The operator's lever (``qustody admin revoke``, on the gateway host):
        every tenant's tokens and keys issued before a time, or one tenant's."""
        now = datetime.now(UTC)
        before = _check_time(issued_before, now)
        results = []
        with self._db.write() as session:
            query = select(m.Tenant.id).order_by(m.Tenant.name)
            if tenant_name is not None:
                query = query.where(m.Tenant.name == tenant_name)
            tenant_ids = session.scalars(query).all()
            if tenant_name is not None and not tenant_ids:
                raise not_found("tenant", tenant_name[:80])
            for tenant_id in tenant_ids:
                cut, tokens, keys = cut_off_tenant(session, tenant_id, before, now)
                revoked = Revoked(tenant_id, None, cut, tokens, keys)
                record(
                    session,
                    Action.TOKEN_REVOKE,
                    actor=Actor.system("cli:operator"),
                    target=Target("tenant", tenant_id, tenant_id),
                    reason=f"operator: issued before {before:%Y-%m-%dT%H:%M:%S.%fZ}: "
                    + _reason(revoked),
                )
                results.append(revoked)
        return results


def _check_time(value: datetime, now: datetime) -> datetime:
    if value.tzinfo is None:
        raise InvalidRequest(
            "issued_before has no time zone; give an ISO 8601 time with one, e.g. "
            "2030-01-01T12:00:00Z.",
            field="issued_before",
        )
    if value > now + CLOCK_LEEWAY:
        raise InvalidRequest(
            "issued_before is in the future; a cut-off there would also refuse tokens not "
            "issued yet. Give a past time, or now.",
            field="issued_before",
        )
    return min(value.astimezone(UTC), now)

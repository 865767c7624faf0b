"""A tenant's own Cedar policies: versioned, audited, in force in every API process.

Tenant admins write forbids that narrow what the platform's policies allow
their tenant (``GET``/``PUT /v1/policies``). Every change is a new row of
``tenant_policies`` (append-only; the newest version is in force), checked
against the schema before it is stored, and recorded as ``policy:set`` with
its diff.

Every API process holds the policies in its own engine. A process that stores
a version installs it at once; the others notice it through
:class:`TenantPolicyLoader`, which asks the database for a tenant's newest
version number (and time zone) at most once per :data:`REFRESH_SECONDS`, on
that tenant's next decision: a change is in force everywhere within about a
second, and a decision pays for the lookup at most once a second per tenant.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, func, insert, select
from sqlalchemy.exc import IntegrityError

from qustody.audit.recorder import Actor, Target, record
from qustody.domain.errors import Conflict, InvalidRequest
from qustody.domain.ids import TenantId
from qustody.domain.models import Principal, RequestContext, Resource
from qustody.domain.vocabulary import Action
from qustody.policy.engine import CedarPolicyEngine
from qustody.policy.errors import InvalidPolicy, PolicyError
from qustody.policy.guard import Guard, not_found
from qustody.policy.misses import records_misses
from qustody.storage import models as m
from qustody.storage.db import Database, tenant, utc

log = logging.getLogger("qustody.policy")

#: How often a process looks for a newer version of one tenant's policies.
REFRESH_SECONDS = 1.0
#: Largest policy text a tenant may store.
MAX_POLICY_BYTES = 64 * 1024
MAX_COMMENT = 500
#: The name a tenant's stored policies go by in refusals ("... policy "x" at line 3").
SOURCE = "tenant policies"
#: Room the diff gets in a ``policy:set`` event's reason (the column holds 512).
_EVENT_DIFF_CHARS = 380

_T = m.TENANT_POLICIES


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    """One version of a tenant's policies. Version 0 is "none yet" (empty text)."""

    version: int
    text: str
    sha256: str
    comment: str | None
    created_at: datetime | None
    created_by: str | None


@dataclass(frozen=True, slots=True)
class PolicyDiff:
    from_version: int
    to_version: int
    #: A unified diff of the text, old to new ("" when they are the same).
    diff: str


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def unified_diff(old: PolicyVersion, new: PolicyVersion) -> str:
    lines = difflib.unified_diff(
        old.text.splitlines(keepends=True),
        new.text.splitlines(keepends=True),
        fromfile=f"v{old.version}",
        tofile=f"v{new.version}",
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


_NONE = PolicyVersion(0, "", sha256_hex(""), None, None, None)


class TenantPolicyLoader:
    """Keeps the engine's copy of each tenant's policies current in this process.

    :meth:`refresh` is called by the guard before each decision; it costs a
    dictionary lookup, and one indexed query at most every ``interval``
    seconds per tenant. Stored policies that no longer load (a schema change
    made them invalid) lock the tenant down to reading and replacing them,
    rather than silently dropping its forbids.
    """

    def __init__(
        self,
        db: Database,
        engine: CedarPolicyEngine,
        *,
        interval: float = REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._engine = engine
        self._interval = interval
        self._clock = clock
        self._checked: dict[TenantId, float] = {}
        self._loaded: dict[TenantId, tuple[int, str]] = {}
        self._lock = threading.Lock()

    def refresh(self, tenant_id: TenantId) -> None:
        """Bring ``tenant_id``'s policies and time zone up to date, if due."""
        now = self._clock()
        checked = self._checked.get(tenant_id)
        if checked is not None and now - checked < self._interval:
            return
        self._checked[tenant_id] = now
        # The tenant's own scope, whatever the request has bound (a token
        # exchange decides before any caller is known): its forbids must load.
        with self._db.reading(scope=tenant(tenant_id)) as connection:
            row = connection.execute(
                select(
                    m.TENANTS.c.timezone,
                    select(func.max(_T.c.version))
                    .where(_T.c.tenant_id == tenant_id)
                    .scalar_subquery()
                    .label("version"),
                ).where(m.TENANTS.c.id == tenant_id)
            ).one_or_none()
            if row is None:
                return
            wanted = (int(row.version or 0), str(row.timezone or "UTC"))
            if self._loaded.get(tenant_id) == wanted:
                return
            text = _text(connection, tenant_id, wanted[0])
        self.install(tenant_id, wanted[0], text, wanted[1])

    def install(self, tenant_id: TenantId, version: int, text: str, timezone: str) -> None:
        """Put one version in force in this process."""
        with self._lock:
            if self._loaded.get(tenant_id, (-1, ""))[0] > version:
                return  # a newer one got here first
            try:
                self._engine.set_tenant_timezone(tenant_id, timezone)
            except PolicyError:
                log.error("tenant %s has an unknown time zone; its local time is UTC", tenant_id)
                self._engine.set_tenant_timezone(tenant_id, None)
            try:
                self._engine.replace_tenant_policies(tenant_id, {SOURCE: text} if text else None)
            except PolicyError as error:
                log.error(
                    "tenant %s's policies v%d do not load (%s); the tenant may only read "
                    "and replace them until they do",
                    tenant_id,
                    version,
                    error.code,
                )
                self._engine.fail_closed(tenant_id)
            self._loaded[tenant_id] = (version, timezone)
            self._checked[tenant_id] = self._clock()


def _text(connection: Connection, tenant_id: str, version: int) -> str:
    if version == 0:
        return ""
    text = connection.execute(
        select(_T.c.text).where(_T.c.tenant_id == tenant_id, _T.c.version == version)
    ).scalar()
    return str(text or "")


class TenantPolicies:
    """The API's view of a tenant's policies: read, version, diff, replace."""

    def __init__(
        self, db: Database, guard: Guard, engine: CedarPolicyEngine, loader: TenantPolicyLoader
    ) -> None:
        self._db = db
        self._guard = guard
        self._engine = engine
        self._loader = loader

    def current(self, caller: Principal, request: RequestContext) -> PolicyVersion:
        """The version in force (version 0, empty, when the tenant has none)."""
        self._guard.check(caller, Action.POLICY_READ, _tenant(caller), request)
        with self._db.reading() as connection:
            return _newest(connection, caller.tenant_id)

    def versions(self, caller: Principal, request: RequestContext) -> list[PolicyVersion]:
        """Every version, newest first (texts left out: ask for one version)."""
        self._guard.check(caller, Action.POLICY_READ, _tenant(caller), request)
        with self._db.reading() as connection:
            rows = connection.execute(
                select(_T.c.version, _T.c.sha256, _T.c.comment, _T.c.created_at, _T.c.created_by)
                .where(_T.c.tenant_id == caller.tenant_id)
                .order_by(_T.c.version.desc())
            ).all()
        return [
            PolicyVersion(r.version, "", r.sha256, r.comment, utc(r.created_at), r.created_by)
            for r in rows
        ]

    @records_misses(Action.POLICY_READ)
    def version(self, caller: Principal, request: RequestContext, version: int) -> PolicyVersion:
        self._guard.check(caller, Action.POLICY_READ, _tenant(caller), request)
        with self._db.reading() as connection:
            return _version(connection, caller.tenant_id, version)

    def diff(
        self,
        caller: Principal,
        request: RequestContext,
        from_version: int | None = None,
        to_version: int | None = None,
    ) -> PolicyDiff:
        """A unified diff between two versions (0 is the empty start); by
        default, of the newest version against the one before it."""
        self._guard.check(caller, Action.POLICY_READ, _tenant(caller), request)
        with self._db.reading() as connection:
            if to_version is None:
                to_version = _newest(connection, caller.tenant_id).version
            if from_version is None:
                from_version = max(0, to_version - 1)
            old = _version(connection, caller.tenant_id, from_version, field="from")
            new = _version(connection, caller.tenant_id, to_version, field="to")
        return PolicyDiff(old.version, new.version, unified_diff(old, new))

    def replace(
        self,
        caller: Principal,
        request: RequestContext,
        text: str,
        *,
        comment: str | None = None,
        base_version: int | None = None,
    ) -> PolicyVersion:
        """Store ``text`` as the tenant's next version and put it in force.

        Refused with ``422`` (naming the policy and its line) when it does not
        parse, holds a permit or does not validate against the schema; with
        ``409`` when ``base_version`` is given and is not the newest version.
        """
        size = len(text.encode("utf-8", errors="surrogatepass"))
        if size > MAX_POLICY_BYTES:
            raise InvalidRequest(
                f"the policy text is {size} bytes; at most {MAX_POLICY_BYTES} are accepted. "
                "Split rules less finely, or remove comments.",
                field="text",
            )
        if comment is not None and len(comment) > MAX_COMMENT:
            raise InvalidRequest(
                f"comment is {len(comment)} characters; at most {MAX_COMMENT}.", field="comment"
            )
        for field, value in (("text", text), ("comment", comment or "")):
            if "\x00" in value:
                raise InvalidRequest(
                    f"{field} contains a NUL character, which cannot be stored; remove it.",
                    field=field,
                )
        decision = self._guard.check(caller, Action.POLICY_SET, _tenant(caller), request)
        try:
            ids = self._engine.check_tenant_policies({SOURCE: text})
        except PolicyError as error:
            raise InvalidPolicy.of(error) from None
        now = datetime.now(UTC)
        try:
            with self._db.writing() as connection:
                old = _newest(connection, caller.tenant_id)
                if base_version is not None and base_version != old.version:
                    raise _stale(base_version, old.version)
                new = PolicyVersion(
                    old.version + 1, text, sha256_hex(text), comment or None, now, caller.id
                )
                connection.execute(
                    insert(_T),
                    {
                        "tenant_id": caller.tenant_id,
                        "version": new.version,
                        "text": new.text,
                        "sha256": new.sha256,
                        "comment": new.comment,
                        "created_at": now,
                        "created_by": caller.id,
                    },
                )
                record(
                    connection,
                    Action.POLICY_SET,
                    actor=Actor.of(caller),
                    target=Target("policy", f"v{new.version}", caller.tenant_id),
                    decision=decision,
                    request=request,
                    payload_sha256=new.sha256,
                    reason=_event_reason(old, new, len(ids)),
                )
                timezone = connection.execute(
                    select(m.TENANTS.c.timezone).where(m.TENANTS.c.id == caller.tenant_id)
                ).scalar()
        except IntegrityError:
            # Another change took the same version number first (PostgreSQL).
            raise _stale(base_version, None) from None
        self._loader.install(caller.tenant_id, new.version, new.text, str(timezone or "UTC"))
        return new


def _tenant(caller: Principal) -> Resource:
    return Resource("tenant", caller.tenant_id, caller.tenant_id)


def _row_version(row: object) -> PolicyVersion:
    return PolicyVersion(
        int(getattr(row, "version")),  # noqa: B009 - a Row, typed as object here
        str(getattr(row, "text")),  # noqa: B009
        str(getattr(row, "sha256")),  # noqa: B009
        getattr(row, "comment"),  # noqa: B009
        utc(getattr(row, "created_at")),  # noqa: B009
        getattr(row, "created_by"),  # noqa: B009
    )


def _newest(connection: Connection, tenant_id: str) -> PolicyVersion:
    row = connection.execute(
        select(_T).where(_T.c.tenant_id == tenant_id).order_by(_T.c.version.desc()).limit(1)
    ).first()
    return _NONE if row is None else _row_version(row)


def _version(
    connection: Connection, tenant_id: str, version: int, *, field: str = "version"
) -> PolicyVersion:
    if version == 0:
        return _NONE
    row = connection.execute(
        select(_T).where(_T.c.tenant_id == tenant_id, _T.c.version == version)
    ).first()
    if row is None and field == "version":
        raise not_found("policy version", str(version))
    if row is None:
        raise InvalidRequest(
            f"{field} is {version}, which is not a version of your tenant's policies; "
            "list them with GET /v1/policies/versions (0 is the empty start).",
            field=field,
        )
    return _row_version(row)


def _stale(base_version: int | None, newest: int | None) -> Conflict:
    now_at = f"v{newest}" if newest is not None else "a newer version"
    return Conflict(
        f"the policies changed while you edited them (you started from v{base_version}, "
        f"they are now at {now_at}); fetch them again, reapply your change and retry.",
        field="base_version",
    )


def _event_reason(old: PolicyVersion, new: PolicyVersion, policies: int) -> str:
    """The ``policy:set`` event's reason: the versions, the size of the change
    and as much of the diff as fits; the whole diff is ``GET
    /v1/policies/diff?from=<old>&to=<new>`` (both versions are kept)."""
    diff = unified_diff(old, new)
    body = [line for line in diff.splitlines() if not line.startswith(("---", "+++"))]
    added = sum(1 for line in body if line.startswith("+"))
    removed = sum(1 for line in body if line.startswith("-"))
    head = (
        f"v{old.version}->v{new.version}, {policies} policies, +{added} -{removed} lines, "
        f"diff sha256 {sha256_hex(diff)[:16]}: "
    )
    excerpt = "\n".join(body)
    room = max(0, _EVENT_DIFF_CHARS - len(head))
    if len(excerpt) > room:
        excerpt = excerpt[: max(0, room - 1)] + "…"
    return head + excerpt

"""SCIM 2.0 provisioning (RFC 7643, RFC 7644) of a tenant's users and groups.

A tenant's identity provider creates, updates and deprovisions the tenant's
people here. The tenant is always the caller's own (its token's); a SCIM id
of another tenant is "not found" exactly like a missing one.

- A **User** is a principal of kind ``user``: ``userName`` is its name,
  ``displayName``, ``emails`` (the primary one is kept), ``externalId`` and
  ``active`` are stored beside it. Other attributes an identity provider
  sends (``name``, ``phoneNumbers``, the enterprise extension...) are
  accepted and dropped: Qustody keeps no personal data it does not use.
- A **Group** is a ``scim_groups`` row with its members. The Qustody
  extension (``urn:qustody:params:scim:schemas:extension:2.0:Group``) gives
  it a ``role`` and a ``project``; its members hold that role while they are
  members (see ``_MEMBERSHIPS`` in :mod:`qustody.identity.tokens`). The
  grant is in force when it is coherent: ``tenant-admin`` without a project,
  ``developer`` or ``viewer`` with one; a group whose role and project do not
  fit together grants nothing.
- **Deprovisioning** (``active: false``, or DELETE) cuts the user off at
  once: every token issued before now stops working on its next request
  (``tokens_not_before``), its API keys are revoked, and its roles and group
  memberships are removed. DELETE does the same and keeps the principal row,
  deactivated, with its name replaced by a tombstone and its personal data
  erased, so audit events that name its id still resolve; the identity
  provider may then create a user of the same ``userName`` again.

Every change writes its audit event (``user:*``, ``group:*``) in the same
transaction, with ids only: names and e-mail addresses are personal data and
stay out of the audit log.

Parsing, validating and PATCH application are scim2-models' (its models are
subclassed here to publish only what Qustody stores); the storage, the
filter translation (:mod:`qustody.identity.scim_filter`), authorization and
audit are Qustody's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

from scim2_models import Meta, PatchOp, Resource, SearchRequest
from sqlalchemy import ColumnElement, Row, and_, delete, exists, func, insert, not_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from qustody.audit.recorder import Actor, Target, record
from qustody.domain.ids import looks_like_id, new_id
from qustody.domain.models import Decision, Principal, RequestContext
from qustody.domain.models import Resource as Guarded
from qustody.domain.vocabulary import Action
from qustody.identity import scim_errors as errors
from qustody.identity.admin import _PRINCIPAL_NAME
from qustody.identity.local_accounts import TOTP_FIELDS
from qustody.identity.scim_filter import Attribute, MultiValued, Translator
from qustody.identity.scim_resources import (
    GRANT_SCHEMA,
    GRANTABLE_ROLES,
    GROUP_SCHEMA,
    MAX_RESULTS,
    USER_SCHEMA,
    Discovery,
    EmailAddress,
    Grant,
    Group,
    GroupResource,
    Member,
    User,
    apply_patch,
    check_version,
    discovery_documents,
    etag,
)
from qustody.policy.guard import Guard, not_found
from qustody.policy.misses import records_misses
from qustody.storage import models as m
from qustody.storage.db import Database, utc

#: A deleted user's name: a prefix no principal name can start with, and its id.
TOMBSTONE = "~deleted:"
#: Results per page when the client does not say.
DEFAULT_COUNT = 100

_EMAIL = re.compile(r"^[^@\s]{1,256}@[^@\s]{1,255}$")

_P = m.PRINCIPALS
_G = m.SCIM_GROUPS
_GM = m.SCIM_GROUP_MEMBERS


# -- what the service returns --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a query (RFC 7644 section 3.4.2.4)."""

    total: int
    start_index: int
    resources: Sequence[Resource[Any]]


@dataclass(frozen=True, slots=True)
class _UserFields:
    user_name: str
    display_name: str | None
    email: str | None
    external_id: str | None
    active: bool | None


@dataclass(frozen=True, slots=True)
class _GroupFields:
    display_name: str
    external_id: str | None
    role: str | None
    project: str | None
    members: frozenset[str]


# -- the service ----------------------------------------------------------------------


class ScimService:
    """Users and groups of the caller's tenant, for its identity provider.

    ``base_url`` is where the SCIM endpoints are served (``.../scim/v2``); it
    makes the ``meta.location`` and member ``$ref`` URLs.
    """

    def __init__(self, db: Database, guard: Guard, *, base_url: str) -> None:
        self._db = db
        self._guard = guard
        self.base_url = base_url.rstrip("/")
        self._users = Translator(_USER_ATTRIBUTES, core_schema=USER_SCHEMA)
        self._groups = Translator(
            _GROUP_ATTRIBUTES,
            core_schema=GROUP_SCHEMA,
            extensions={GRANT_SCHEMA: _GRANT_ATTRIBUTES},
        )

    # -- discovery ----------------------------------------------------------------------

    def discovery(self, caller: Principal, request: RequestContext) -> Discovery:
        """What this endpoint supports, for the caller's tenant: the ``project``
        of the group extension lists the tenant's projects as canonical values."""
        self._guard.check(caller, Action.USER_LIST, _tenant(caller), request)
        with self._db.reading() as connection:
            projects = connection.execute(
                select(m.PROJECTS.c.name)
                .where(m.PROJECTS.c.tenant_id == caller.tenant_id)
                .order_by(m.PROJECTS.c.name)
            ).scalars()
            project_names = list(projects)
        return discovery_documents(self.base_url, project_names)

    def unsupported(
        self, caller: Principal, request: RequestContext, action: Action, detail: str
    ) -> NoReturn:
        """Refuse a feature the service provider configuration declares
        unsupported, once the caller is known to be allowed ``action``."""
        self._guard.check(caller, action, _tenant(caller), request)
        raise errors.NotSupported(detail)

    # -- users --------------------------------------------------------------------------

    def create_user(self, caller: Principal, request: RequestContext, user: User) -> User:
        fields = _user_fields(user)
        decision = self._guard.check(caller, Action.USER_CREATE, _tenant(caller), request)
        now = datetime.now(UTC)
        with self._writing() as session:
            self._check_user_name(session, caller.tenant_id, fields.user_name, None)
            principal_id = new_id("usr")
            session.execute(
                insert(_P),
                {
                    "id": principal_id,
                    "tenant_id": caller.tenant_id,
                    "name": fields.user_name,
                    "kind": "user",
                    "created_at": now,
                    "updated_at": now,
                    "active": True if fields.active is None else fields.active,
                    "display_name": fields.display_name,
                    "email": fields.email,
                    "external_id": fields.external_id,
                    "version": 1,
                },
            )
            record(
                session,
                Action.USER_CREATE,
                actor=Actor.of(caller),
                target=Target("principal", principal_id, caller.tenant_id),
                decision=decision,
                request=request,
                reason=None if fields.active is not False else "created deactivated",
            )
            row = self._user_row(session, caller.tenant_id, principal_id)
        return self._user(row)

    @records_misses(Action.USER_READ)
    def get_user(self, caller: Principal, request: RequestContext, user_id: str) -> User:
        self._guard.check(caller, Action.USER_READ, _tenant(caller), request)
        with self._db.read() as session:
            row = self._user_row(session, caller.tenant_id, user_id)
        return self._user(row)

    def list_users(
        self, caller: Principal, request: RequestContext, query: SearchRequest[Any]
    ) -> Page:
        self._guard.check(caller, Action.USER_LIST, _tenant(caller), request)
        where = and_(_P.c.tenant_id == caller.tenant_id, _USER_SCOPE)
        if query.filter:
            where = and_(where, self._users.condition(str(query.filter)))
        order = _order(query, _USER_SORT, _P.c.id)
        start, count = _window(query)
        with self._db.read() as session:
            total = session.execute(select(func.count()).select_from(_P).where(where)).scalar_one()
            rows = (
                session.execute(
                    select(_P).where(where).order_by(*order).offset(start - 1).limit(count)
                ).all()
                if count
                else []
            )
        return Page(int(total), start, [self._user(row) for row in rows])

    @records_misses(Action.USER_UPDATE)
    def replace_user(
        self,
        caller: Principal,
        request: RequestContext,
        user_id: str,
        user: User,
        if_match: str | None,
    ) -> User:
        fields = _user_fields(user)
        decision = self._guard.check(caller, Action.USER_UPDATE, _tenant(caller), request)
        with self._writing() as session:
            row = self._user_row(session, caller.tenant_id, user_id, lock=True)
            check_version(row.version, if_match)
            self._update_user(session, caller, request, decision, row, fields)
            row = self._user_row(session, caller.tenant_id, row.id)
        return self._user(row)

    @records_misses(Action.USER_UPDATE)
    def patch_user(
        self,
        caller: Principal,
        request: RequestContext,
        user_id: str,
        patch: PatchOp[Any],
        if_match: str | None,
    ) -> User:
        decision = self._guard.check(caller, Action.USER_UPDATE, _tenant(caller), request)
        with self._writing() as session:
            row = self._user_row(session, caller.tenant_id, user_id, lock=True)
            check_version(row.version, if_match)
            user = self._user(row)
            apply_patch(patch, user)
            if user.active is None:
                raise errors.MutabilityViolation(
                    "active cannot be removed: a user is active or not. Replace it with "
                    "true or false (false deprovisions the user).",
                    field="active",
                )
            self._update_user(session, caller, request, decision, row, _user_fields(user))
            row = self._user_row(session, caller.tenant_id, row.id)
        return self._user(row)

    @records_misses(Action.USER_DELETE)
    def delete_user(
        self, caller: Principal, request: RequestContext, user_id: str, if_match: str | None
    ) -> None:
        decision = self._guard.check(caller, Action.USER_DELETE, _tenant(caller), request)
        now = datetime.now(UTC)
        with self._writing() as session:
            row = self._user_row(session, caller.tenant_id, user_id, lock=True)
            check_version(row.version, if_match)
            _refuse_self(caller, row.id)
            summary = _deprovision(session, row.id, now)
            # The row stays for the audit log; the person's data goes.
            session.execute(
                delete(m.LOCAL_ACCOUNTS).where(m.LOCAL_ACCOUNTS.c.principal_id == row.id)
            )
            session.execute(
                delete(m.SEALED_OBJECTS).where(
                    m.SEALED_OBJECTS.c.object_id == row.id,
                    m.SEALED_OBJECTS.c.field.in_(TOTP_FIELDS),
                )
            )
            session.execute(
                delete(m.FEDERATED_IDENTITIES).where(
                    m.FEDERATED_IDENTITIES.c.principal_id == row.id
                )
            )
            session.execute(
                update(_P)
                .where(_P.c.id == row.id)
                .values(
                    name=f"{TOMBSTONE}{row.id}",
                    display_name=None,
                    email=None,
                    external_id=None,
                    version=_P.c.version + 1,
                    updated_at=now,
                )
            )
            record(
                session,
                Action.USER_DELETE,
                actor=Actor.of(caller),
                target=Target("principal", row.id, caller.tenant_id),
                decision=decision,
                request=request,
                reason=f"deleted; {summary}",
            )

    # -- groups -------------------------------------------------------------------------

    def create_group(self, caller: Principal, request: RequestContext, group: Group) -> Group:
        decision = self._guard.check(caller, Action.GROUP_CREATE, _tenant(caller), request)
        now = datetime.now(UTC)
        with self._writing() as session:
            fields = self._group_fields(session, caller.tenant_id, group)
            self._check_group_name(session, caller.tenant_id, fields.display_name, None)
            group_id = new_id("grp")
            session.execute(
                insert(_G),
                {
                    "id": group_id,
                    "tenant_id": caller.tenant_id,
                    "display_name": fields.display_name,
                    "external_id": fields.external_id,
                    "role": fields.role,
                    "project_id": fields.project,
                    "version": 1,
                    "created_at": now,
                    "updated_at": now,
                },
            )
            _add_members(session, caller.tenant_id, group_id, fields.members)
            record(
                session,
                Action.GROUP_CREATE,
                actor=Actor.of(caller),
                target=Target("group", group_id, caller.tenant_id),
                decision=decision,
                request=request,
                reason=_grant_summary(fields.role, fields.project, len(fields.members), 0),
            )
            return self._group(session, self._group_row(session, caller.tenant_id, group_id))

    @records_misses(Action.GROUP_READ)
    def get_group(
        self, caller: Principal, request: RequestContext, group_id: str, *, members: bool = True
    ) -> Group:
        self._guard.check(caller, Action.GROUP_READ, _tenant(caller), request)
        with self._db.read() as session:
            row = self._group_row(session, caller.tenant_id, group_id)
            return self._group(session, row, with_members=members)

    def list_groups(
        self,
        caller: Principal,
        request: RequestContext,
        query: SearchRequest[Any],
        *,
        members: bool = True,
    ) -> Page:
        self._guard.check(caller, Action.GROUP_LIST, _tenant(caller), request)
        where: ColumnElement[bool] = _G.c.tenant_id == caller.tenant_id
        if query.filter:
            where = and_(where, self._groups.condition(str(query.filter)))
        order = _order(query, _GROUP_SORT, _G.c.id)
        start, count = _window(query)
        with self._db.read() as session:
            total = session.execute(select(func.count()).select_from(_G).where(where)).scalar_one()
            rows = (
                session.execute(
                    select(_G).where(where).order_by(*order).offset(start - 1).limit(count)
                ).all()
                if count
                else []
            )
            listed = self._members_of(session, [row.id for row in rows]) if members else {}
            projects = self._project_names(session, rows)
            resources = [
                self._group(session, row, with_members=members, members=listed, projects=projects)
                for row in rows
            ]
        return Page(int(total), start, resources)

    @records_misses(Action.GROUP_UPDATE)
    def replace_group(
        self,
        caller: Principal,
        request: RequestContext,
        group_id: str,
        group: Group,
        if_match: str | None,
    ) -> Group:
        decision = self._guard.check(caller, Action.GROUP_UPDATE, _tenant(caller), request)
        with self._writing() as session:
            row = self._group_row(session, caller.tenant_id, group_id, lock=True)
            check_version(row.version, if_match)
            fields = self._group_fields(session, caller.tenant_id, group)
            self._update_group(session, caller, request, decision, row, fields)
            return self._group(session, self._group_row(session, caller.tenant_id, row.id))

    @records_misses(Action.GROUP_UPDATE)
    def patch_group(
        self,
        caller: Principal,
        request: RequestContext,
        group_id: str,
        patch: PatchOp[Any],
        if_match: str | None,
        *,
        members: bool = True,
    ) -> Group:
        decision = self._guard.check(caller, Action.GROUP_UPDATE, _tenant(caller), request)
        with self._writing() as session:
            row = self._group_row(session, caller.tenant_id, group_id, lock=True)
            check_version(row.version, if_match)
            group = self._group(session, row)
            apply_patch(patch, group)
            fields = self._group_fields(session, caller.tenant_id, group)
            self._update_group(session, caller, request, decision, row, fields)
            return self._group(
                session, self._group_row(session, caller.tenant_id, row.id), with_members=members
            )

    @records_misses(Action.GROUP_DELETE)
    def delete_group(
        self, caller: Principal, request: RequestContext, group_id: str, if_match: str | None
    ) -> None:
        decision = self._guard.check(caller, Action.GROUP_DELETE, _tenant(caller), request)
        with self._writing() as session:
            row = self._group_row(session, caller.tenant_id, group_id, lock=True)
            check_version(row.version, if_match)
            removed = _count(session.execute(delete(_GM).where(_GM.c.group_id == row.id)))
            session.execute(delete(_G).where(_G.c.id == row.id))
            record(
                session,
                Action.GROUP_DELETE,
                actor=Actor.of(caller),
                target=Target("group", row.id, caller.tenant_id),
                decision=decision,
                request=request,
                reason=_grant_summary(row.role, row.project_id, 0, removed),
            )

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        """A write transaction; a uniqueness race lost to a concurrent request
        (the database's constraint, not the check before it) is a 409."""
        try:
            with self._db.write() as session:
                yield session
        except IntegrityError:
            raise errors.Uniqueness(
                "a concurrent request took the same userName or displayName, or changed "
                "the same members; read the resource again and retry."
            ) from None

    # -- users: storage -----------------------------------------------------------------

    @staticmethod
    def _user_row(
        session: Session, tenant_id: str, user_id: str, *, lock: bool = False
    ) -> Row[Any]:
        row = None
        if looks_like_id(user_id):
            query = select(_P).where(_P.c.tenant_id == tenant_id, _P.c.id == user_id, _USER_SCOPE)
            row = session.execute(query.with_for_update() if lock else query).first()
        if row is None:
            raise not_found("user", user_id[:64])
        return row

    def _user(self, row: Row[Any]) -> User:
        return User(
            id=row.id,
            external_id=row.external_id,
            user_name=row.name,
            display_name=row.display_name,
            active=bool(row.active),
            emails=[EmailAddress(value=row.email)] if row.email else None,
            meta=self._meta("User", row.id, row.created_at, row.updated_at, row.version),
        )

    def _meta(
        self,
        kind: str,
        resource_id: str,
        created: datetime,
        updated: datetime | None,
        version: int,
    ) -> Meta:
        return Meta(
            resource_type=kind,
            created=utc(created),
            last_modified=utc(updated or created),
            location=f"{self.base_url}/{kind}s/{resource_id}",
            version=etag(version),
        )

    @staticmethod
    def _check_user_name(
        session: Session, tenant_id: str, user_name: str, principal_id: str | None
    ) -> None:
        """``userName`` is unique in the tenant, ignoring case (RFC 7643 section 4.1.1)."""
        query = select(_P.c.id).where(
            _P.c.tenant_id == tenant_id, func.lower(_P.c.name) == user_name.lower()
        )
        if principal_id is not None:
            query = query.where(_P.c.id != principal_id)
        if session.execute(query.limit(1)).first() is not None:
            raise errors.Uniqueness(
                "userName is already taken by another principal of this tenant; choose "
                "another or update that user.",
                field="userName",
            )

    def _update_user(
        self,
        session: Session,
        caller: Principal,
        request: RequestContext,
        decision: Decision,
        row: Row[Any],
        fields: _UserFields,
    ) -> None:
        now = datetime.now(UTC)
        active = bool(row.active) if fields.active is None else fields.active
        changed = [
            name
            for name, old, new in (
                ("userName", row.name, fields.user_name),
                ("displayName", row.display_name, fields.display_name),
                ("emails", row.email, fields.email),
                ("externalId", row.external_id, fields.external_id),
                ("active", bool(row.active), active),
            )
            if old != new
        ]
        if not changed:
            return
        if fields.user_name != row.name:
            self._check_user_name(session, caller.tenant_id, fields.user_name, row.id)
        notes = [f"changed {', '.join(changed)}"]
        if row.active and not active:
            _refuse_self(caller, row.id)
            notes.append(f"deactivated; {_deprovision(session, row.id, now)}")
        elif active and not row.active:
            notes.append("reactivated; earlier tokens stay revoked and roles must be granted again")
        session.execute(
            update(_P)
            .where(_P.c.id == row.id)
            .values(
                name=fields.user_name,
                display_name=fields.display_name,
                email=fields.email,
                external_id=fields.external_id,
                active=active,
                version=_P.c.version + 1,
                updated_at=now,
            )
        )
        record(
            session,
            Action.USER_UPDATE,
            actor=Actor.of(caller),
            target=Target("principal", row.id, caller.tenant_id),
            decision=decision,
            request=request,
            reason="; ".join(notes),
        )

    # -- groups: storage ----------------------------------------------------------------

    @staticmethod
    def _group_row(
        session: Session, tenant_id: str, group_id: str, *, lock: bool = False
    ) -> Row[Any]:
        row = None
        if looks_like_id(group_id):
            query = select(_G).where(_G.c.tenant_id == tenant_id, _G.c.id == group_id)
            row = session.execute(query.with_for_update() if lock else query).first()
        if row is None:
            raise not_found("group", group_id[:64])
        return row

    @staticmethod
    def _members_of(session: Session, group_ids: Sequence[str]) -> dict[str, list[str]]:
        members: dict[str, list[str]] = {group_id: [] for group_id in group_ids}
        if group_ids:
            rows = session.execute(
                select(_GM.c.group_id, _GM.c.principal_id)
                .where(_GM.c.group_id.in_(group_ids))
                .order_by(_GM.c.principal_id)
            ).all()
            for group_id, principal_id in rows:
                members[group_id].append(principal_id)
        return members

    @staticmethod
    def _project_names(session: Session, rows: Iterable[Row[Any]]) -> dict[str, str]:
        ids = {row.project_id for row in rows if row.project_id}
        if not ids:
            return {}
        found = session.execute(
            select(m.PROJECTS.c.id, m.PROJECTS.c.name).where(m.PROJECTS.c.id.in_(ids))
        ).all()
        return {str(project_id): str(name) for project_id, name in found}

    def _group(
        self,
        session: Session,
        row: Row[Any],
        *,
        with_members: bool = True,
        members: Mapping[str, list[str]] | None = None,
        projects: Mapping[str, str] | None = None,
    ) -> Group:
        listed: list[str] = []
        if with_members:
            listed = (members if members is not None else self._members_of(session, [row.id]))[
                row.id
            ]
        names = projects if projects is not None else self._project_names(session, [row])
        group = GroupResource(
            id=row.id,
            external_id=row.external_id,
            display_name=row.display_name,
            members=[
                Member(value=member, ref=f"{self.base_url}/Users/{member}", type="User")
                for member in listed
            ]
            or None,
            meta=self._meta("Group", row.id, row.created_at, row.updated_at, row.version),
        )
        if row.role is not None or row.project_id is not None:
            group[Grant] = Grant(
                role=row.role, project=names.get(row.project_id) if row.project_id else None
            )
        return group

    def _group_fields(self, session: Session, tenant_id: str, group: Group) -> _GroupFields:
        display_name = (group.display_name or "").strip()
        if not display_name or len(display_name) > 256:
            raise errors.ScimError(
                "displayName is required and holds 1 to 256 characters.", field="displayName"
            )
        grant = group[Grant] if isinstance(group, GroupResource) else None
        role = grant.role if grant is not None else None
        if role is not None and role not in GRANTABLE_ROLES:
            raise errors.ScimError(
                f"role {role[:40]!r} is not a role a group can grant; use one of "
                f"{', '.join(GRANTABLE_ROLES)}.",
                field="role",
            )
        project = grant.project if grant is not None else None
        project_id = None
        if project is not None:
            column = m.PROJECTS.c.id if looks_like_id(project) else m.PROJECTS.c.name
            project_id = session.execute(
                select(m.PROJECTS.c.id).where(
                    m.PROJECTS.c.tenant_id == tenant_id, column == project[:128]
                )
            ).scalar()
            if project_id is None:
                raise errors.ScimError(
                    f"project {project[:64]!r} does not exist in this tenant; name one of "
                    "the tenant's projects (by name or id).",
                    field="project",
                )
        wanted: set[str] = set()
        for member in group.members or []:
            if member.type is not None and member.type != "User":
                raise errors.ScimError(
                    "a group's members are users; groups do not nest.", field="members"
                )
            value = member.value or (str(member.ref).rsplit("/", 1)[-1] if member.ref else None)
            if not value:
                raise errors.ScimError(
                    "each member needs a value: the id of a user.", field="members"
                )
            wanted.add(value[:64])
        known = (
            set(
                session.execute(
                    select(_P.c.id).where(
                        _P.c.tenant_id == tenant_id, _P.c.id.in_(wanted), _USER_SCOPE
                    )
                ).scalars()
            )
            if wanted
            else set()
        )
        unknown = sorted(wanted - known)
        if unknown:
            raise errors.ScimError(
                f"members {', '.join(unknown[:5])} are not users of this tenant; add users "
                "by their SCIM id.",
                field="members",
            )
        external_id = group.external_id
        if external_id is not None and len(external_id) > 256:
            raise errors.ScimError("externalId holds at most 256 characters.", field="externalId")
        return _GroupFields(display_name, external_id, role, project_id, frozenset(wanted))

    @staticmethod
    def _check_group_name(
        session: Session, tenant_id: str, display_name: str, group_id: str | None
    ) -> None:
        query = select(_G.c.id).where(
            _G.c.tenant_id == tenant_id, func.lower(_G.c.display_name) == display_name.lower()
        )
        if group_id is not None:
            query = query.where(_G.c.id != group_id)
        if session.execute(query.limit(1)).first() is not None:
            raise errors.Uniqueness(
                "a group of this displayName already exists in this tenant; choose another "
                "name or update that group.",
                field="displayName",
            )

    def _update_group(
        self,
        session: Session,
        caller: Principal,
        request: RequestContext,
        decision: Decision,
        row: Row[Any],
        fields: _GroupFields,
    ) -> None:
        current = frozenset(self._members_of(session, [row.id])[row.id])
        added, removed = fields.members - current, current - fields.members
        same = (
            row.display_name == fields.display_name
            and row.external_id == fields.external_id
            and row.role == fields.role
            and row.project_id == fields.project
        )
        if same and not added and not removed:
            return
        if fields.display_name != row.display_name:
            self._check_group_name(session, caller.tenant_id, fields.display_name, row.id)
        if removed:
            session.execute(
                delete(_GM).where(_GM.c.group_id == row.id, _GM.c.principal_id.in_(removed))
            )
        _add_members(session, caller.tenant_id, row.id, added)
        session.execute(
            update(_G)
            .where(_G.c.id == row.id)
            .values(
                display_name=fields.display_name,
                external_id=fields.external_id,
                role=fields.role,
                project_id=fields.project,
                version=_G.c.version + 1,
                updated_at=datetime.now(UTC),
            )
        )
        record(
            session,
            Action.GROUP_UPDATE,
            actor=Actor.of(caller),
            target=Target("group", row.id, caller.tenant_id),
            decision=decision,
            request=request,
            reason=_grant_summary(fields.role, fields.project, len(added), len(removed)),
        )


# -- helpers -------------------------------------------------------------------------


def _tenant(caller: Principal) -> Guarded:
    return Guarded("tenant", caller.tenant_id, caller.tenant_id)


def _refuse_self(caller: Principal, principal_id: str) -> None:
    if caller.id == principal_id:
        raise errors.MutabilityViolation(
            "a principal cannot deprovision itself; ask another tenant admin.", field="active"
        )


def _user_fields(user: User) -> _UserFields:
    user_name = user.user_name or ""
    if not _PRINCIPAL_NAME.fullmatch(user_name):
        raise errors.ScimError(
            f"userName {user_name[:80]!r} is not allowed; use 1 to 128 letters, digits, '.', "
            "'_', '@', '+' and '-', starting with a letter or digit.",
            field="userName",
        )
    display_name = user.display_name
    if display_name is not None and len(display_name) > 256:
        raise errors.ScimError("displayName holds at most 256 characters.", field="displayName")
    emails = [e for e in user.emails or [] if e.value]
    chosen = next((e for e in emails if e.primary), emails[0] if emails else None)
    email = chosen.value if chosen is not None else None
    if email is not None and (len(email) > 320 or not _EMAIL.fullmatch(email)):
        raise errors.ScimError(
            "emails.value is not an e-mail address (name@domain, at most 320 characters).",
            field="emails",
        )
    external_id = user.external_id
    if external_id is not None and len(external_id) > 256:
        raise errors.ScimError("externalId holds at most 256 characters.", field="externalId")
    return _UserFields(user_name, display_name, email, external_id, user.active)


def _add_members(session: Session, tenant_id: str, group_id: str, members: Iterable[str]) -> None:
    rows = [
        {"group_id": group_id, "principal_id": member, "tenant_id": tenant_id}
        for member in sorted(members)
    ]
    if rows:
        session.execute(insert(_GM), rows)


def _grant_summary(role: str | None, project_id: str | None, added: int, removed: int) -> str:
    return f"role={role or '-'} project={project_id or '-'} members +{added} -{removed}"


def _deprovision(session: Session, principal_id: str, now: datetime) -> str:
    """Cut a user off at once: tokens, API keys, roles and group memberships.

    Returns a summary (counts only) for the audit event.
    """
    session.execute(
        update(_P).where(_P.c.id == principal_id).values(active=False, tokens_not_before=now)
    )
    keys = _count(
        session.execute(
            update(m.API_KEYS)
            .where(m.API_KEYS.c.principal_id == principal_id, m.API_KEYS.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
    )
    roles = _count(
        session.execute(delete(m.MEMBERSHIPS).where(m.MEMBERSHIPS.c.principal_id == principal_id))
    )
    left = select(_GM.c.group_id).where(_GM.c.principal_id == principal_id)
    session.execute(
        update(_G).where(_G.c.id.in_(left)).values(version=_G.c.version + 1, updated_at=now)
    )
    groups = _count(session.execute(delete(_GM).where(_GM.c.principal_id == principal_id)))
    return (
        f"tokens issued before now revoked, {keys} API keys revoked, {roles} roles and "
        f"{groups} group memberships removed"
    )


def _count(result: object) -> int:
    """Rows an UPDATE or DELETE touched."""
    return int(getattr(result, "rowcount", 0) or 0)


def _window(query: SearchRequest[Any]) -> tuple[int, int]:
    start = query.start_index or 1
    count = DEFAULT_COUNT if query.count is None else min(query.count, MAX_RESULTS)
    return start, count


def _order(
    query: SearchRequest[Any], sortable: Mapping[str, ColumnElement[Any]], tiebreak: Any
) -> list[Any]:
    if query.sort_by is None:
        return [tiebreak]
    key = str(query.sort_by).lower()
    for prefix in (USER_SCHEMA.lower() + ":", GROUP_SCHEMA.lower() + ":"):
        key = key.removeprefix(prefix)
    column = sortable.get(key)
    if column is None:
        raise errors.ScimError(
            f"sorting by {str(query.sort_by)[:80]!r} is not supported; sort by one of "
            f"{', '.join(sorted(sortable))}.",
            field="sortBy",
        )
    descending = query.sort_order == SearchRequest.SortOrder.descending
    ordered = column.desc().nulls_first() if descending else column.asc().nulls_last()
    return [ordered, tiebreak]


#: Users are the tenant's people, not its workloads, and not the deleted.
_USER_SCOPE = and_(_P.c.kind == "user", not_(_P.c.name.startswith(TOMBSTONE)))

_LAST_MODIFIED_USER = func.coalesce(_P.c.updated_at, _P.c.created_at)
_USER_ATTRIBUTES: Mapping[str, Attribute | MultiValued] = {
    "id": Attribute(_P.c.id, case_exact=True),
    "externalid": Attribute(_P.c.external_id, case_exact=True),
    "username": Attribute(_P.c.name),
    "displayname": Attribute(_P.c.display_name),
    "active": Attribute(_P.c.active, kind="boolean"),
    "emails": MultiValued({"value": Attribute(_P.c.email)}),
    "meta.created": Attribute(_P.c.created_at, kind="datetime"),
    "meta.lastmodified": Attribute(_LAST_MODIFIED_USER, kind="datetime"),
}
_USER_SORT: Mapping[str, ColumnElement[Any]] = {
    "id": _P.c.id,
    "externalid": _P.c.external_id,
    "username": func.lower(_P.c.name),
    "displayname": func.lower(_P.c.display_name),
    "emails": func.lower(_P.c.email),
    "emails.value": func.lower(_P.c.email),
    "active": _P.c.active,
    "meta.created": _P.c.created_at,
    "meta.lastmodified": _LAST_MODIFIED_USER,
}


def _members_holding(condition: ColumnElement[bool]) -> ColumnElement[bool]:
    return exists().where(_GM.c.group_id == _G.c.id, condition)


_GROUP_ATTRIBUTES: Mapping[str, Attribute | MultiValued] = {
    "id": Attribute(_G.c.id, case_exact=True),
    "externalid": Attribute(_G.c.external_id, case_exact=True),
    "displayname": Attribute(_G.c.display_name),
    "members": MultiValued(
        {"value": Attribute(_GM.c.principal_id, case_exact=True)}, _members_holding
    ),
    "meta.created": Attribute(_G.c.created_at, kind="datetime"),
    "meta.lastmodified": Attribute(_G.c.updated_at, kind="datetime"),
}
_GRANT_ATTRIBUTES: Mapping[str, Attribute | MultiValued] = {
    "role": Attribute(_G.c.role, case_exact=True),
}
_GROUP_SORT: Mapping[str, ColumnElement[Any]] = {
    "id": _G.c.id,
    "externalid": _G.c.external_id,
    "displayname": func.lower(_G.c.display_name),
    "meta.created": _G.c.created_at,
    "meta.lastmodified": _G.c.updated_at,
}

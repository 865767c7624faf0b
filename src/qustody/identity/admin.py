"""Tenants, projects, members and tokens: the administration services.

Each method authorizes through the :class:`~qustody.policy.guard.Guard`,
changes state and writes its audit event in one transaction.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from qustody.audit.recorder import Actor, Target, record
from qustody.domain.errors import InvalidRequest
from qustody.domain.ids import (
    PrincipalId,
    ProjectId,
    TenantId,
    looks_like_id,
    new_principal_id,
    new_project_id,
    new_tenant_id,
)
from qustody.domain.models import Principal, RequestContext, Resource
from qustody.domain.vocabulary import Action, DataClass, Role
from qustody.identity.errors import AlreadyInitialized, NameTaken
from qustody.identity.tokens import IssuedToken, SignIn, TokenService
from qustody.policy.guard import Guard, not_found
from qustody.policy.misses import records_misses
from qustody.storage import models as m
from qustody.storage.db import SYSTEM, Database

PLATFORM_TENANT = "platform"

_PROJECT_COLUMNS = select(m.PROJECTS.c.id, m.PROJECTS.c.tenant_id, m.PROJECTS.c.data_class)
_PROJECT_BY_ID = _PROJECT_COLUMNS.where(
    m.PROJECTS.c.tenant_id == bindparam("tenant"), m.PROJECTS.c.id == bindparam("ref")
)
_PROJECT_BY_NAME = _PROJECT_COLUMNS.where(
    m.PROJECTS.c.tenant_id == bindparam("tenant"), m.PROJECTS.c.name == bindparam("ref")
)
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}[a-z0-9]$|^[a-z0-9]$")
_PRINCIPAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")


def _check_name(value: str, field: str, pattern: re.Pattern[str] = _NAME) -> str:
    if not pattern.fullmatch(value):
        raise InvalidRequest(
            f"{field} {value[:80]!r} is not allowed; use lower-case letters, digits, '.', '_' "
            "and '-', 1 to 64 characters, starting and ending with a letter or digit.",
            field=field,
        )
    return value


@dataclass(frozen=True, slots=True)
class Member:
    principal_id: str
    name: str
    kind: str
    role: str
    project_id: str | None


@dataclass(frozen=True, slots=True)
class NewTenant:
    tenant: m.Tenant
    admin: m.Principal
    token: IssuedToken


class AdminService:
    def __init__(self, db: Database, guard: Guard, tokens: TokenService) -> None:
        self._db = db
        self._guard = guard
        self._tokens = tokens

    # -- bootstrap (local operator, no token yet) ---------------------------------

    def init_platform(self, admin_name: str) -> tuple[m.Principal, IssuedToken]:
        """Create the platform tenant and its first platform admin, once."""
        _check_name(admin_name, "admin_name", _PRINCIPAL_NAME)
        now = datetime.now(UTC)
        with self._db.write(scope=SYSTEM) as session:
            if session.scalar(select(m.Tenant).where(m.Tenant.name == PLATFORM_TENANT)):
                raise AlreadyInitialized(
                    "Qustody is already initialized; ask the platform admin for a token "
                    "(`qustody admin token`)."
                )
            tenant = m.Tenant(id=new_tenant_id(), name=PLATFORM_TENANT, created_at=now)
            admin = self._new_principal(session, tenant.id, admin_name, "user", now, tenant=tenant)
            _grant(session, admin, None, Role.PLATFORM_ADMIN, now)
            token = self._tokens.issue(session, principal_id=admin.id, tenant_id=tenant.id)
            record(
                session,
                Action.ADMIN_INIT,
                actor=Actor.system("cli:operator"),
                target=Target("principal", admin.id, tenant.id),
            )
            return admin, token

    def operator_token(
        self, principal_name: str, tenant_name: str = PLATFORM_TENANT
    ) -> IssuedToken:
        """A token for a principal, issued by the local operator (who holds the database)."""
        with self._db.write(scope=SYSTEM) as session:
            row = session.execute(
                select(m.Principal)
                .join(m.Tenant, m.Tenant.id == m.Principal.tenant_id)
                .where(m.Tenant.name == tenant_name, m.Principal.name == principal_name)
            ).scalar_one_or_none()
            if row is None:
                raise not_found("principal", f"{tenant_name}/{principal_name}")
            token = self._tokens.issue(session, principal_id=row.id, tenant_id=row.tenant_id)
            record(
                session,
                Action.TOKEN_ISSUE,
                actor=Actor.system("cli:operator"),
                target=Target("token", token.jti, row.tenant_id),
            )
            return token

    # -- tenants ----------------------------------------------------------------

    def create_tenant(
        self, caller: Principal, request: RequestContext, name: str, admin_name: str
    ) -> NewTenant:
        _check_name(name, "name")
        _check_name(admin_name, "admin_name", _PRINCIPAL_NAME)
        decision = self._guard.check(
            caller, Action.TENANT_CREATE, Resource("platform", "platform", None), request
        )
        now = datetime.now(UTC)
        try:
            # A platform admin writes a new tenant's rows: system scope.
            with self._db.write(scope=SYSTEM) as session:
                tenant = m.Tenant(id=new_tenant_id(), name=name, created_at=now)
                session.add(tenant)
                session.flush()
                admin = self._new_principal(session, tenant.id, admin_name, "user", now)
                _grant(session, admin, None, Role.TENANT_ADMIN, now)
                token = self._tokens.issue(session, principal_id=admin.id, tenant_id=tenant.id)
                record(
                    session,
                    Action.TENANT_CREATE,
                    actor=Actor.of(caller),
                    target=Target("tenant", tenant.id, tenant.id),
                    decision=decision,
                    request=request,
                )
                return NewTenant(tenant, admin, token)
        except IntegrityError:
            raise NameTaken(
                f"a tenant named {name!r} already exists; choose another name.", field="name"
            ) from None

    def list_tenants(self, caller: Principal, request: RequestContext) -> Sequence[m.Tenant]:
        self._guard.check(
            caller, Action.TENANT_LIST, Resource("platform", "platform", None), request
        )
        with self._db.read(scope=SYSTEM) as session:
            return session.scalars(select(m.Tenant).order_by(m.Tenant.created_at)).all()

    def get_tenant(self, caller: Principal, request: RequestContext, tenant_id: str) -> m.Tenant:
        if not looks_like_id(tenant_id):
            raise not_found("tenant", tenant_id[:80])
        # A tenant's id is all the decision needs, so it comes first: another
        # tenant's id is refused and audited whether or not it exists.
        self._guard.check(
            caller, Action.TENANT_READ, Resource("tenant", tenant_id, TenantId(tenant_id)), request
        )
        # Platform admins read any tenant; everyone else their own at most.
        scope = SYSTEM if Role.PLATFORM_ADMIN in caller.tenant_roles else None
        with self._db.read(scope=scope) as session:
            tenant = session.get(m.Tenant, tenant_id)
        if tenant is None:
            raise not_found("tenant", tenant_id)
        return tenant

    # -- projects ---------------------------------------------------------------

    def create_project(
        self, caller: Principal, request: RequestContext, name: str, data_class: DataClass
    ) -> m.Project:
        _check_name(name, "name")
        decision = self._guard.check(
            caller,
            Action.PROJECT_CREATE,
            Resource("tenant", caller.tenant_id, caller.tenant_id),
            request,
        )
        project = m.Project(
            id=new_project_id(),
            tenant_id=caller.tenant_id,
            name=name,
            data_class=data_class.value,
            created_at=datetime.now(UTC),
        )
        try:
            with self._db.write() as session:
                session.add(project)
                session.flush()
                record(
                    session,
                    Action.PROJECT_CREATE,
                    actor=Actor.of(caller),
                    target=Target("project", project.id, caller.tenant_id),
                    decision=decision,
                    request=request,
                )
        except IntegrityError:
            raise NameTaken(
                f"a project named {name!r} already exists in this tenant; choose another name.",
                field="name",
            ) from None
        return project

    def find_project(self, session: Session, tenant_id: str, ref: str) -> m.Project:
        """A project of ``tenant_id`` by id or name; 404 otherwise (scoped query)."""
        column = m.Project.id if looks_like_id(ref) else m.Project.name
        project = session.scalar(
            select(m.Project).where(m.Project.tenant_id == tenant_id, column == ref)
        )
        if project is None:
            raise not_found("project", ref[:80])
        return project

    def project_scope(self, tenant_id: str, ref: str) -> Resource:
        """:func:`project_resource` of :meth:`find_project`, by prepared Core
        statements on a bare connection: every submission runs this lookup."""
        query = _PROJECT_BY_ID if looks_like_id(ref) else _PROJECT_BY_NAME
        with self._db.reading() as connection:
            row = connection.execute(query, {"tenant": tenant_id, "ref": ref}).one_or_none()
        if row is None:
            raise not_found("project", ref[:80])
        return project_resource(row)

    def list_projects(self, caller: Principal, request: RequestContext) -> Sequence[m.Project]:
        self._guard.check(
            caller,
            Action.PROJECT_LIST,
            Resource("tenant", caller.tenant_id, caller.tenant_id),
            request,
        )
        with self._db.read() as session:
            query = select(m.Project).where(m.Project.tenant_id == caller.tenant_id)
            if Role.TENANT_ADMIN not in caller.tenant_roles:
                visible = {pid for pid, _ in caller.project_roles}
                query = query.where(m.Project.id.in_(visible))
            return session.scalars(query.order_by(m.Project.name)).all()

    @records_misses(Action.PROJECT_READ)
    def get_project(self, caller: Principal, request: RequestContext, ref: str) -> m.Project:
        with self._db.read() as session:
            project = self.find_project(session, caller.tenant_id, ref)
        self._guard.check(caller, Action.PROJECT_READ, project_resource(project), request)
        return project

    # -- members ----------------------------------------------------------------

    @records_misses(Action.MEMBER_ADD)
    def add_member(
        self,
        caller: Principal,
        request: RequestContext,
        *,
        principal_name: str,
        role: Role,
        project_ref: str | None,
        kind: str = "user",
    ) -> Member:
        _check_name(principal_name, "principal", _PRINCIPAL_NAME)
        if kind not in {"user", "workload"}:
            raise InvalidRequest(
                f"kind {kind[:20]!r} is not known; use 'user' or 'workload'.", field="kind"
            )
        if role is Role.PLATFORM_ADMIN:
            raise InvalidRequest(
                "the platform-admin role cannot be granted through the API; it belongs to "
                "the platform tenant set up by `qustody admin init`.",
                field="role",
            )
        if role is Role.TENANT_ADMIN and project_ref is not None:
            raise InvalidRequest(
                "tenant-admin is a tenant-wide role; leave project empty.", field="project"
            )
        if role is not Role.TENANT_ADMIN and project_ref is None:
            raise InvalidRequest(
                f"{role.value} is a project role; name the project it applies to.",
                field="project",
            )
        project, resource = self._project_or_tenant(caller, project_ref)
        # Authorize before the write transaction: a denial is recorded in a
        # transaction of its own, which must not wait on ours.
        decision = self._guard.check(caller, Action.MEMBER_ADD, resource, request)
        now = datetime.now(UTC)
        project_id = project.id if project else None
        with self._db.write() as session:
            principal = session.scalar(
                select(m.Principal).where(
                    m.Principal.tenant_id == caller.tenant_id, m.Principal.name == principal_name
                )
            ) or self._new_principal(session, caller.tenant_id, principal_name, kind, now)
            exists = session.scalar(
                select(m.Membership).where(
                    m.Membership.principal_id == principal.id,
                    m.Membership.project_id == project_id
                    if project_id
                    else m.Membership.project_id.is_(None),
                    m.Membership.role == role.value,
                )
            )
            if exists is None:
                _grant(session, principal, project_id, role, now)
                record(
                    session,
                    Action.MEMBER_ADD,
                    actor=Actor.of(caller),
                    target=Target("principal", principal.id, caller.tenant_id),
                    decision=decision,
                    request=request,
                    reason=f"role={role.value} project={project_id or '-'}",
                )
            return Member(principal.id, principal.name, principal.kind, role.value, project_id)

    @records_misses(Action.MEMBER_LIST)
    def list_members(
        self, caller: Principal, request: RequestContext, project_ref: str | None
    ) -> list[Member]:
        project, resource = self._project_or_tenant(caller, project_ref)
        self._guard.check(caller, Action.MEMBER_LIST, resource, request)
        with self._db.read() as session:
            query = (
                select(m.Membership, m.Principal)
                .join(m.Principal, m.Principal.id == m.Membership.principal_id)
                .where(m.Membership.tenant_id == caller.tenant_id)
            )
            if project is not None:
                query = query.where(m.Membership.project_id == project.id)
            rows = session.execute(query.order_by(m.Principal.name)).all()
            return [Member(p.id, p.name, p.kind, ms.role, ms.project_id) for ms, p in rows]

    # -- tokens -----------------------------------------------------------------

    @records_misses(Action.TOKEN_ISSUE)
    def issue_token(
        self,
        caller: Principal,
        request: RequestContext,
        *,
        principal_name: str | None,
        scopes: Sequence[str] | None,
        ttl_seconds: int | None,
    ) -> IssuedToken:
        """Issue a token to the caller (down-scoping) or, for a tenant admin, to a member."""
        if principal_name is None or principal_name == caller.name:
            target_id, target_name = caller.id, caller.name
        else:
            with self._db.read() as session:
                row = session.scalar(
                    select(m.Principal).where(
                        m.Principal.tenant_id == caller.tenant_id,
                        m.Principal.name == principal_name[:128],
                    )
                )
            if row is None:
                raise not_found("principal", principal_name[:80])
            target_id, target_name = PrincipalId(row.id), row.name
        decision = self._guard.check(
            caller,
            Action.TOKEN_ISSUE,
            Resource("principal", target_id, caller.tenant_id, owner_id=target_id),
            request,
        )
        wanted = scopes
        if target_id == caller.id and "*" not in caller.scopes:
            # A token can only mint tokens narrower than itself.
            wanted = scopes or sorted(caller.scopes)
            extra = set(wanted) - set(caller.scopes)
            if extra:
                raise InvalidRequest(
                    f"scopes {sorted(extra)} exceed this token's scopes "
                    f"{sorted(caller.scopes)}; ask for fewer.",
                    field="scopes",
                )
        # A token one mints for oneself is no stronger than one's own: it keeps
        # the sign-in's acr, amr and auth_time (step-up ages from that sign-in).
        own = target_id == caller.id
        sign_in = (
            SignIn(acr=caller.acr, amr=tuple(sorted(caller.amr)), auth_time=caller.auth_time)
            if own
            else None
        )
        with self._db.write() as session:
            token = self._tokens.issue(
                session,
                principal_id=target_id,
                tenant_id=caller.tenant_id,
                scopes=wanted,
                ttl_seconds=ttl_seconds,
                sign_in=sign_in,
            )
            record(
                session,
                Action.TOKEN_ISSUE,
                actor=Actor.of(caller),
                target=Target("token", token.jti, caller.tenant_id),
                decision=decision,
                request=request,
                reason=f"for={target_name} scopes={' '.join(token.scopes)}",
            )
            return token

    @records_misses(Action.TOKEN_REVOKE)
    def revoke_token(self, caller: Principal, request: RequestContext, jti: str) -> None:
        with self._db.read() as session:
            row = session.get(m.IssuedToken, jti[:64])
        if row is None or row.tenant_id != caller.tenant_id:
            raise not_found("token", jti[:64])
        decision = self._guard.check(
            caller,
            Action.TOKEN_REVOKE,
            Resource(
                "token", row.jti, TenantId(row.tenant_id), owner_id=PrincipalId(row.principal_id)
            ),
            request,
        )
        with self._db.write() as session:
            self._tokens.revoke(session, row.jti)
            record(
                session,
                Action.TOKEN_REVOKE,
                actor=Actor.of(caller),
                target=Target("token", row.jti, row.tenant_id),
                decision=decision,
                request=request,
            )

    # -- helpers ----------------------------------------------------------------

    def _project_or_tenant(
        self, caller: Principal, project_ref: str | None
    ) -> tuple[m.Project | None, Resource]:
        """The named project of the caller's tenant and its resource, or the tenant's."""
        if project_ref is None:
            return None, Resource("tenant", caller.tenant_id, caller.tenant_id)
        with self._db.read() as session:
            project = self.find_project(session, caller.tenant_id, project_ref)
        return project, project_resource(project)

    @staticmethod
    def _new_principal(
        session: Session,
        tenant_id: str,
        name: str,
        kind: str,
        now: datetime,
        *,
        tenant: m.Tenant | None = None,
    ) -> m.Principal:
        if tenant is not None:
            session.add(tenant)
            session.flush()
        principal = m.Principal(
            id=new_principal_id(), tenant_id=tenant_id, name=name, kind=kind, created_at=now
        )
        session.add(principal)
        session.flush()
        return principal


def _grant(
    session: Session, principal: m.Principal, project_id: str | None, role: Role, now: datetime
) -> None:
    session.add(
        m.Membership(
            tenant_id=principal.tenant_id,
            principal_id=principal.id,
            project_id=project_id,
            role=role.value,
            created_at=now,
        )
    )
    session.flush()


class _ProjectLike(Protocol):
    id: str
    tenant_id: str
    data_class: str


def project_resource(project: _ProjectLike) -> Resource:
    return Resource(
        "project",
        project.id,
        TenantId(project.tenant_id),
        project_id=ProjectId(project.id),
        data_class=DataClass(project.data_class),
    )

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from qustody.api import schemas
from qustody.api.auth import CallerDep
from qustody.api.routes.common import secured
from qustody.api.state import services_of
from qustody.domain.vocabulary import Action
from qustody.identity.tokens import IssuedToken

router = APIRouter(prefix="/v1", tags=["administration"])


@router.post(
    "/tenants",
    status_code=201,
    response_model=schemas.TenantCreated,
    openapi_extra=secured(Action.TENANT_CREATE),
)
def create_tenant(
    body: schemas.TenantCreate, caller: CallerDep, request: Request
) -> schemas.TenantCreated:
    created = services_of(request).admin.create_tenant(
        caller.principal, caller.request, body.name, body.admin_name
    )
    return schemas.TenantCreated(
        tenant=schemas.Tenant.model_validate(created.tenant),
        admin=schemas.TenantAdmin(
            principal_id=created.admin.id,
            name=created.admin.name,
            token=created.token.token,
            expires_at=created.token.expires_at,
        ),
    )


@router.get(
    "/tenants", response_model=schemas.TenantList, openapi_extra=secured(Action.TENANT_LIST)
)
def list_tenants(caller: CallerDep, request: Request) -> schemas.TenantList:
    rows = services_of(request).admin.list_tenants(caller.principal, caller.request)
    return schemas.TenantList(items=[schemas.Tenant.model_validate(r) for r in rows])


@router.get(
    "/tenants/{tenant_id}", response_model=schemas.Tenant, openapi_extra=secured(Action.TENANT_READ)
)
def get_tenant(tenant_id: str, caller: CallerDep, request: Request) -> schemas.Tenant:
    row = services_of(request).admin.get_tenant(caller.principal, caller.request, tenant_id)
    return schemas.Tenant.model_validate(row)


@router.post(
    "/projects",
    status_code=201,
    response_model=schemas.Project,
    openapi_extra=secured(Action.PROJECT_CREATE),
)
def create_project(
    body: schemas.ProjectCreate, caller: CallerDep, request: Request
) -> schemas.Project:
    row = services_of(request).admin.create_project(
        caller.principal, caller.request, body.name, body.data_class
    )
    return schemas.Project.model_validate(row)


@router.get(
    "/projects", response_model=schemas.ProjectList, openapi_extra=secured(Action.PROJECT_LIST)
)
def list_projects(caller: CallerDep, request: Request) -> schemas.ProjectList:
    rows = services_of(request).admin.list_projects(caller.principal, caller.request)
    return schemas.ProjectList(items=[schemas.Project.model_validate(r) for r in rows])


@router.get(
    "/projects/{project}",
    response_model=schemas.Project,
    openapi_extra=secured(Action.PROJECT_READ),
)
def get_project(project: str, caller: CallerDep, request: Request) -> schemas.Project:
    row = services_of(request).admin.get_project(caller.principal, caller.request, project)
    return schemas.Project.model_validate(row)


@router.post(
    "/members",
    status_code=201,
    response_model=schemas.Member,
    openapi_extra=secured(Action.MEMBER_ADD),
)
def add_member(body: schemas.MemberAdd, caller: CallerDep, request: Request) -> schemas.Member:
    member = services_of(request).admin.add_member(
        caller.principal,
        caller.request,
        principal_name=body.principal,
        role=body.role,
        project_ref=body.project,
        kind=body.kind,
    )
    return schemas.Member.model_validate(member)


@router.get(
    "/members", response_model=schemas.MemberList, openapi_extra=secured(Action.MEMBER_LIST)
)
def list_members(
    caller: CallerDep,
    request: Request,
    project: Annotated[str | None, Query(max_length=128)] = None,
) -> schemas.MemberList:
    rows = services_of(request).admin.list_members(caller.principal, caller.request, project)
    return schemas.MemberList(items=[schemas.Member.model_validate(r) for r in rows])


@router.post(
    "/tokens",
    status_code=201,
    response_model=schemas.IssuedTokenOut,
    openapi_extra=secured(Action.TOKEN_ISSUE),
)
def issue_token(
    body: schemas.TokenIssue, caller: CallerDep, request: Request
) -> schemas.IssuedTokenOut:
    issued: IssuedToken = services_of(request).admin.issue_token(
        caller.principal,
        caller.request,
        principal_name=body.principal,
        scopes=body.scopes,
        ttl_seconds=body.ttl_seconds,
    )
    return schemas.IssuedTokenOut(
        token=issued.token,
        jti=issued.jti,
        principal_id=issued.principal_id,
        expires_at=issued.expires_at,
        scopes=list(issued.scopes),
    )


@router.delete("/tokens/{jti}", status_code=204, openapi_extra=secured(Action.TOKEN_REVOKE))
def revoke_token(jti: str, caller: CallerDep, request: Request) -> Response:
    services_of(request).admin.revoke_token(caller.principal, caller.request, jti)
    return Response(status_code=204)

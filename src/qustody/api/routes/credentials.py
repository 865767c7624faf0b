"""API keys, workload trust rules, and revocation of many credentials at once."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Self

from fastapi import APIRouter, Query, Request, Response
from pydantic import Field, model_validator

from qustody.api.auth import CallerDep
from qustody.api.routes.common import secured
from qustody.api.schemas import Request as RequestBody
from qustody.api.schemas import Response as ResponseBody
from qustody.api.state import services_of
from qustody.domain.vocabulary import Action
from qustody.identity.apikeys import ApiKeyInfo
from qustody.identity.workload import TrustRuleInfo

router = APIRouter(prefix="/v1", tags=["credentials"])

Name = Annotated[str, Field(min_length=1, max_length=128)]
Scopes = Annotated[list[Annotated[str, Field(max_length=32)]] | None, Field(max_length=32)]


# -- API keys ----------------------------------------------------------------------------


class ApiKeyCreate(RequestBody):
    principal: Annotated[Name, Field(description="The principal of your tenant the key acts as")]
    name: Annotated[str, Field(min_length=1, max_length=64, description="A label for people")]
    scopes: Scopes = None
    expires_in_days: Annotated[
        int, Field(description="Mandatory: 1 to api_key_max_days (at most 90)")
    ]


class ApiKey(ResponseBody):
    id: str
    name: str
    principal_id: str
    principal: str
    scopes: list[str]
    created_at: datetime
    created_by: str
    expires_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreated(ApiKey):
    #: The secret: shown this once, never stored (only its SHA-256 is).
    key: str


class ApiKeyList(ResponseBody):
    items: list[ApiKey]


def _api_key(info: ApiKeyInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "name": info.name,
        "principal_id": info.principal_id,
        "principal": info.principal_name,
        "scopes": list(info.scopes),
        "created_at": info.created_at,
        "created_by": info.created_by,
        "expires_at": info.expires_at,
        "revoked_at": info.revoked_at,
        "last_used_at": info.last_used_at,
    }


@router.post(
    "/api-keys",
    status_code=201,
    response_model=ApiKeyCreated,
    openapi_extra=secured(Action.APIKEY_CREATE),
)
def create_api_key(body: ApiKeyCreate, caller: CallerDep, request: Request) -> ApiKeyCreated:
    created = services_of(request).api_keys.create(
        caller.principal,
        caller.request,
        principal_name=body.principal,
        name=body.name,
        scopes=body.scopes,
        expires_in_days=body.expires_in_days,
    )
    return ApiKeyCreated(key=created.key, **_api_key(created.info))


@router.get("/api-keys", response_model=ApiKeyList, openapi_extra=secured(Action.APIKEY_LIST))
def list_api_keys(
    caller: CallerDep,
    request: Request,
    principal: Annotated[str | None, Query(max_length=128)] = None,
) -> ApiKeyList:
    rows = services_of(request).api_keys.list_keys(
        caller.principal, caller.request, principal_name=principal
    )
    return ApiKeyList(items=[ApiKey(**_api_key(r)) for r in rows])


@router.delete("/api-keys/{key_id}", status_code=204, openapi_extra=secured(Action.APIKEY_REVOKE))
def revoke_api_key(key_id: str, caller: CallerDep, request: Request) -> Response:
    services_of(request).api_keys.revoke(caller.principal, caller.request, key_id)
    return Response(status_code=204)


# -- trust rules -------------------------------------------------------------------------


class TrustRuleCreate(RequestBody):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    issuer: Annotated[str, Field(min_length=1, max_length=512, description="https URL")]
    audience: Annotated[
        str, Field(min_length=1, max_length=512, description="The 'aud' the token must carry")
    ]
    conditions: Annotated[
        dict[str, Any],
        Field(description="claim → exact value, list of values, or {'glob': pattern}"),
    ]
    principal: Annotated[Name, Field(description="A workload principal of your tenant")]
    scopes: Scopes = None
    ttl_seconds: Annotated[int | None, Field(description="1 to 900 (the default)")] = None


class TrustRule(ResponseBody):
    id: str
    name: str
    issuer: str
    audience: str
    conditions: dict[str, Any]
    principal_id: str
    principal: str
    scopes: list[str]
    ttl_seconds: int
    enabled: bool
    created_at: datetime
    created_by: str


class TrustRuleList(ResponseBody):
    items: list[TrustRule]


def _trust_rule(info: TrustRuleInfo) -> TrustRule:
    return TrustRule(
        id=info.id,
        name=info.name,
        issuer=info.issuer,
        audience=info.audience,
        conditions=info.conditions,
        principal_id=info.principal_id,
        principal=info.principal_name,
        scopes=list(info.scopes),
        ttl_seconds=info.ttl_seconds,
        enabled=info.enabled,
        created_at=info.created_at,
        created_by=info.created_by,
    )


@router.post(
    "/trust-rules",
    status_code=201,
    response_model=TrustRule,
    openapi_extra=secured(Action.TRUSTRULE_SET),
)
def create_trust_rule(body: TrustRuleCreate, caller: CallerDep, request: Request) -> TrustRule:
    info = services_of(request).workload.create_rule(
        caller.principal,
        caller.request,
        name=body.name,
        issuer=body.issuer,
        audience=body.audience,
        conditions=body.conditions,
        principal_name=body.principal,
        scopes=body.scopes,
        ttl_seconds=body.ttl_seconds,
    )
    return _trust_rule(info)


@router.get(
    "/trust-rules", response_model=TrustRuleList, openapi_extra=secured(Action.TRUSTRULE_LIST)
)
def list_trust_rules(caller: CallerDep, request: Request) -> TrustRuleList:
    rows = services_of(request).workload.list_rules(caller.principal, caller.request)
    return TrustRuleList(items=[_trust_rule(r) for r in rows])


@router.delete(
    "/trust-rules/{rule}", status_code=204, openapi_extra=secured(Action.TRUSTRULE_DELETE)
)
def delete_trust_rule(rule: str, caller: CallerDep, request: Request) -> Response:
    services_of(request).workload.delete_rule(caller.principal, caller.request, rule)
    return Response(status_code=204)


# -- revoking many -----------------------------------------------------------------------


class TokensRevoke(RequestBody):
    """Exactly one of: a principal (all its tokens and API keys), or a time
    (all of the tenant's tokens and API keys issued before it)."""

    principal: Name | None = None
    issued_before: Annotated[
        datetime | None, Field(strict=False, description="ISO 8601 with a time zone")
    ] = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.principal is None) == (self.issued_before is None):
            raise ValueError("give exactly one of principal and issued_before")
        return self


class TokensRevoked(ResponseBody):
    tenant_id: str
    principal_id: str | None
    #: Credentials issued before this instant are refused from the next request on.
    not_before: datetime
    tokens: int
    api_keys: int


@router.post(
    "/tokens:revoke", response_model=TokensRevoked, openapi_extra=secured(Action.TOKEN_REVOKE)
)
def revoke_tokens(body: TokensRevoke, caller: CallerDep, request: Request) -> TokensRevoked:
    revocation = services_of(request).revocation
    if body.principal is not None:
        done = revocation.revoke_principal(caller.principal, caller.request, body.principal)
    else:
        assert body.issued_before is not None  # the validator saw to it
        done = revocation.revoke_tenant(caller.principal, caller.request, body.issued_before)
    return TokensRevoked.model_validate(done)

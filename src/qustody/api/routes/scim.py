"""SCIM 2.0 endpoints (RFC 7644) under ``/scim/v2``, for a tenant's identity provider.

A sub-application of its own, mounted by the app factory: SCIM speaks its own
media type (``application/scim+json``) and its own error format (RFC 7644
section 3.12), for every refusal under ``/scim/v2``, unknown paths and
methods included. The tenant is the caller's (its token's); it never comes
from the URL. Handlers parse, call one :class:`~qustody.identity.scim.ScimService`
method and render what it returns.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Body, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from scim2_models import (
    Context,
    Error,
    ListResponse,
    ResourceType,
    ResponseParameters,
    Schema,
)
from scim2_models import Resource as ScimResource
from starlette.exceptions import HTTPException as StarletteHTTPException

from qustody.api.auth import CallerDep
from qustody.api.routes.common import secured
from qustody.api.state import Services, services_of
from qustody.domain.errors import NotFound, QustodyError
from qustody.domain.vocabulary import Action
from qustody.identity.scim import Page
from qustody.identity.scim_errors import InvalidSyntax
from qustody.identity.scim_resources import (
    GroupResource,
    User,
    etag,
    parse_patch,
    parse_projection,
    parse_query,
    parse_resource,
)

log = logging.getLogger("qustody.api.scim")

SCIM_JSON = "application/scim+json"
PREFIX = "/scim/v2"
#: The header that carries Qustody's stable error code beside a SCIM error body.
CODE_HEADER = "Qustody-Error-Code"

router = APIRouter(tags=["scim"])

JsonBody = Annotated[dict[str, Any], Body()]
IfMatch = Annotated[str | None, Header(alias="If-Match", max_length=256)]
IfNoneMatch = Annotated[str | None, Header(alias="If-None-Match", max_length=256)]
Attributes = Annotated[str | None, Query(max_length=2048)]
ExcludedAttributes = Annotated[str | None, Query(alias="excludedAttributes", max_length=2048)]


class ScimResponse(JSONResponse):
    media_type = SCIM_JSON


def _render(
    resource: ScimResource[Any],
    context: Context,
    projection: ResponseParameters[Any] | None = None,
    *,
    status: int = 200,
) -> ScimResponse:
    meta = resource.meta
    headers = {}
    if meta is not None:
        if meta.version:
            headers["ETag"] = meta.version
        if status == 201 and meta.location:
            headers["Location"] = str(meta.location)
    body = resource.model_dump(scim_ctx=context, response_parameters=projection)
    return ScimResponse(body, status_code=status, headers=headers)


def _page(
    model: type[ScimResource[Any]],
    page: Page,
    context: Context,
    projection: ResponseParameters[Any],
) -> ScimResponse:
    listing = ListResponse[model](  # type: ignore[valid-type]
        total_results=page.total,
        start_index=page.start_index,
        items_per_page=len(page.resources),
        resources=list(page.resources),
    )
    return ScimResponse(listing.model_dump(scim_ctx=context, response_parameters=projection))


def _not_modified(resource: ScimResource[Any], if_none_match: str | None) -> bool:
    version = resource.meta.version if resource.meta else None
    if not if_none_match or not version:
        return False
    tags = {tag.strip() for tag in if_none_match.split(",")}
    return "*" in tags or version in tags


def _wants_members(projection: ResponseParameters[Any]) -> bool:
    """Whether a group's members are to be read (``excludedAttributes=members``
    is how identity providers skip large groups)."""

    def names(paths: Any) -> set[str]:
        return {str(path).lower().rsplit(":", 1)[-1].split(".")[0] for path in paths or ()}

    if projection.attributes:
        return "members" in names(projection.attributes)
    return "members" not in names(projection.excluded_attributes)


# -- discovery (RFC 7644 section 4) ----------------------------------------------------


@router.get("/ServiceProviderConfig", openapi_extra=secured(Action.USER_LIST))
def service_provider_config(caller: CallerDep, request: Request) -> ScimResponse:
    found = services_of(request).scim.discovery(caller.principal, caller.request)
    return _render(found.config, Context.RESOURCE_QUERY_RESPONSE)


@router.get("/ResourceTypes", openapi_extra=secured(Action.USER_LIST))
def resource_types(caller: CallerDep, request: Request) -> ScimResponse:
    found = services_of(request).scim.discovery(caller.principal, caller.request)
    return _page(
        ResourceType,
        Page(len(found.resource_types), 1, found.resource_types),
        Context.RESOURCE_QUERY_RESPONSE,
        ResponseParameters(),
    )


@router.get("/ResourceTypes/{name}", openapi_extra=secured(Action.USER_LIST))
def resource_type(name: str, caller: CallerDep, request: Request) -> ScimResponse:
    found = services_of(request).scim.discovery(caller.principal, caller.request)
    for item in found.resource_types:
        if item.id == name:
            return _render(item, Context.RESOURCE_QUERY_RESPONSE)
    raise _missing("resource type", name)


@router.get("/Schemas", openapi_extra=secured(Action.USER_LIST))
def schemas(caller: CallerDep, request: Request) -> ScimResponse:
    found = services_of(request).scim.discovery(caller.principal, caller.request)
    return _page(
        Schema,
        Page(len(found.schemas), 1, found.schemas),
        Context.RESOURCE_QUERY_RESPONSE,
        ResponseParameters(),
    )


@router.get("/Schemas/{urn}", openapi_extra=secured(Action.USER_LIST))
def schema(urn: str, caller: CallerDep, request: Request) -> ScimResponse:
    found = services_of(request).scim.discovery(caller.principal, caller.request)
    for item in found.schemas:
        if item.id == urn:
            return _render(item, Context.RESOURCE_QUERY_RESPONSE)
    raise _missing("schema", urn)


def _missing(kind: str, name: str) -> QustodyError:
    return NotFound(f"{kind} {name[:120]!r} is not served here; see /scim/v2/ResourceTypes.")


# -- users ---------------------------------------------------------------------------


@router.post("/Users", status_code=201, openapi_extra=secured(Action.USER_CREATE))
def create_user(
    body: JsonBody,
    caller: CallerDep,
    request: Request,
    attributes: Attributes = None,
    excluded: ExcludedAttributes = None,
) -> ScimResponse:
    projection = parse_projection(User, attributes, excluded)
    user = parse_resource(User, body, Context.RESOURCE_CREATION_REQUEST)
    created = services_of(request).scim.create_user(caller.principal, caller.request, user)
    return _render(created, Context.RESOURCE_CREATION_RESPONSE, projection, status=201)


@router.get("/Users", openapi_extra=secured(Action.USER_LIST))
def list_users(caller: CallerDep, request: Request) -> ScimResponse:
    query = parse_query(User, _query_params(request))
    page = services_of(request).scim.list_users(caller.principal, caller.request, query)
    return _page(User, page, Context.SEARCH_RESPONSE, query)


@router.post("/Users/.search", openapi_extra=secured(Action.USER_LIST))
def search_users(body: JsonBody, caller: CallerDep, request: Request) -> ScimResponse:
    query = parse_query(User, body)
    page = services_of(request).scim.list_users(caller.principal, caller.request, query)
    return _page(User, page, Context.SEARCH_RESPONSE, query)


@router.get("/Users/{user_id}", openapi_extra=secured(Action.USER_READ))
def get_user(
    user_id: str,
    caller: CallerDep,
    request: Request,
    attributes: Attributes = None,
    excluded: ExcludedAttributes = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    projection = parse_projection(User, attributes, excluded)
    user = services_of(request).scim.get_user(caller.principal, caller.request, user_id)
    if _not_modified(user, if_none_match):
        return Response(status_code=304, headers={"ETag": etag_of(user)})
    return _render(user, Context.RESOURCE_QUERY_RESPONSE, projection)


@router.put("/Users/{user_id}", openapi_extra=secured(Action.USER_UPDATE))
def replace_user(
    user_id: str,
    body: JsonBody,
    caller: CallerDep,
    request: Request,
    if_match: IfMatch = None,
    attributes: Attributes = None,
    excluded: ExcludedAttributes = None,
) -> ScimResponse:
    projection = parse_projection(User, attributes, excluded)
    user = parse_resource(User, body, Context.RESOURCE_REPLACEMENT_REQUEST)
    replaced = services_of(request).scim.replace_user(
        caller.principal, caller.request, user_id, user, if_match
    )
    return _render(replaced, Context.RESOURCE_REPLACEMENT_RESPONSE, projection)


@router.patch("/Users/{user_id}", openapi_extra=secured(Action.USER_UPDATE))
def patch_user(
    user_id: str,
    body: JsonBody,
    caller: CallerDep,
    request: Request,
    if_match: IfMatch = None,
    attributes: Attributes = None,
    excluded: ExcludedAttributes = None,
) -> ScimResponse:
    projection = parse_projection(User, attributes, excluded)
    patch = parse_patch(User, body)
    patched = services_of(request).scim.patch_user(
        caller.principal, caller.request, user_id, patch, if_match
    )
    return _render(patched, Context.RESOURCE_PATCH_RESPONSE, projection)


@router.delete("/Users/{user_id}", status_code=204, openapi_extra=secured(Action.USER_DELETE))
def delete_user(
    user_id: str, caller: CallerDep, request: Request, if_match: IfMatch = None
) -> Response:
    services_of(request).scim.delete_user(caller.principal, caller.request, user_id, if_match)
    return Response(status_code=204)


# -- groups --------------------------------------------------------------------------


@router.post("/Groups", status_code=201, openapi_extra=secured(Action.GROUP_CREATE))
def create_group(
    body: JsonBody,
    caller: CallerDep,
    request: Request,
    attributes: Attributes = None,
    excluded: ExcludedAttributes = None,
) -> ScimResponse:
    projection = parse_projection(GroupResource, attributes, excluded)
    group = parse_resource(GroupResource, body, Context.RESOURCE_CREATION_REQUEST)
    created = services_of(request).scim.create_group(caller.principal, caller.request, group)
    return _render(created, Context.RESOURCE_CREATION_RESPONSE, projection, status=201)


@router.get("/Groups", openapi_extra=secured(Action.GROUP_LIST))
def list_groups(caller: CallerDep, request: Request) -> ScimResponse:
    query = parse_query(GroupResource, _query_params(request))
    page = services_of(request).scim.list_groups(
        caller.principal, caller.request, query, members=_wants_members(query)
    )
    return _page(GroupResource, page, Context.SEARCH_RESPONSE, query)


@router.post("/Groups/.search", openapi_extra=secured(Action.GROUP_LIST))
def search_groups(body: JsonBody, caller: CallerDep, request: Request) -> ScimResponse:
    query = parse_query(GroupResource, body)
    page = services_of(request).scim.list_groups(
        caller.principal, caller.request, query, members=_wants_members(query)
    )
    return _page(GroupResource, page, Context.SEARCH_RESPONSE, query)


@router.get("/Groups/{group_id}", openapi_extra=secured(Action.GROUP_READ))
def get_group(
    group_id: str,
    caller: CallerDep,
    request: Request,
    attributes: Attributes = None,
    excluded: ExcludedAttributes = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    projection = parse_projection(GroupResource, attributes, excluded)
    group = services_of(request).scim.get_group(
        caller.principal, caller.request, group_id, members=_wants_members(projection)
    )
    if _not_modified(group, if_none_match):
        return Response(status_code=304, headers={"ETag": etag_of(group)})
    return _render(group, Context.RESOURCE_QUERY_RESPONSE, projection)


@router.put("/Groups/{group_id}", openapi_extra=secured(Action.GROUP_UPDATE))
def replace_group(
    group_id: str,
    body: JsonBody,
    caller: CallerDep,
    request: Request,
    if_match: IfMatch = None,
    attributes: Attributes = None,
    excluded: ExcludedAttributes = None,
) -> ScimResponse:
    projection = parse_projection(GroupResource, attributes, excluded)
    group = parse_resource(GroupResource, body, Context.RESOURCE_REPLACEMENT_REQUEST)
    replaced = services_of(request).scim.replace_group(
        caller.principal, caller.request, group_id, group, if_match
    )
    return _render(replaced, Context.RESOURCE_REPLACEMENT_RESPONSE, projection)


@router.patch("/Groups/{group_id}", openapi_extra=secured(Action.GROUP_UPDATE))
def patch_group(
    group_id: str,
    body: JsonBody,
    caller: CallerDep,
    request: Request,
    if_match: IfMatch = None,
    attributes: Attributes = None,
    excluded: ExcludedAttributes = None,
) -> Response:
    projection = parse_projection(GroupResource, attributes, excluded)
    patch = parse_patch(GroupResource, body)
    patched = services_of(request).scim.patch_group(
        caller.principal,
        caller.request,
        group_id,
        patch,
        if_match,
        members=_wants_members(projection),
    )
    return _render(patched, Context.RESOURCE_PATCH_RESPONSE, projection)


@router.delete("/Groups/{group_id}", status_code=204, openapi_extra=secured(Action.GROUP_DELETE))
def delete_group(
    group_id: str, caller: CallerDep, request: Request, if_match: IfMatch = None
) -> Response:
    services_of(request).scim.delete_group(caller.principal, caller.request, group_id, if_match)
    return Response(status_code=204)


# -- declared unsupported in ServiceProviderConfig ---------------------------------------


@router.post("/Bulk", openapi_extra=secured(Action.USER_UPDATE))
def bulk(caller: CallerDep, request: Request) -> Response:
    services_of(request).scim.unsupported(
        caller.principal,
        caller.request,
        Action.USER_UPDATE,
        "bulk operations are not supported (ServiceProviderConfig bulk.supported).",
    )


@router.post("/.search", openapi_extra=secured(Action.USER_LIST))
def search_everything(caller: CallerDep, request: Request) -> Response:
    services_of(request).scim.unsupported(
        caller.principal,
        caller.request,
        Action.USER_LIST,
        "searching users and groups at once is not supported; use /Users/.search and "
        "/Groups/.search.",
    )


@router.get("/Me", openapi_extra=secured(Action.USER_READ))
def me(caller: CallerDep, request: Request) -> Response:
    services_of(request).scim.unsupported(
        caller.principal,
        caller.request,
        Action.USER_READ,
        "/Me is not supported; read the user at /Users/{id}.",
    )


# -- the application -------------------------------------------------------------------


def etag_of(resource: ScimResource[Any]) -> str:
    return resource.meta.version if resource.meta and resource.meta.version else etag(0)


def _query_params(request: Request) -> Mapping[str, str]:
    return dict(request.query_params)


def error_response(
    request: Request,
    *,
    status: int,
    detail: str,
    code: str,
    scim_type: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> ScimResponse:
    """A SCIM error message (RFC 7644 section 3.12)."""
    body = Error(status=status, scim_type=scim_type, detail=detail).model_dump(
        scim_ctx=Context.RESOURCE_QUERY_RESPONSE
    )
    # The request id travels in X-Request-Id, which every answer carries.
    return ScimResponse(body, status_code=status, headers={CODE_HEADER: code, **(headers or {})})


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(QustodyError)
    async def qustody_error(request: Request, exc: QustodyError) -> ScimResponse:
        if exc.status >= 500 and exc.status != 501:
            log.error(
                "SCIM request %s failed: %s", getattr(request.state, "request_id", "-"), exc.code
            )
        status = 400 if exc.status == 422 else exc.status
        scim_type = getattr(exc, "scim_type", None)
        if scim_type is None and status == 400:
            scim_type = "invalidValue"
        challenge = getattr(exc, "www_authenticate", None)
        if not isinstance(challenge, str):
            challenge = 'Bearer realm="qustody"' if status == 401 else None
        headers = {"WWW-Authenticate": challenge} if challenge else None
        return error_response(
            request,
            status=status,
            detail=exc.detail,
            code=exc.code,
            scim_type=scim_type if isinstance(scim_type, str) else None,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> ScimResponse:
        first = exc.errors()[0] if exc.errors() else {}
        location = tuple(first.get("loc", ()))
        if first.get("type") == "json_invalid":
            # The location is ("body", <character offset>).
            at = f" at character {location[-1]}" if len(location) > 1 else ""
            problem = f"the request body is not valid JSON{at}"
        else:
            where = ".".join(str(p) for p in location if p not in ("body", "query", "header"))
            problem = f"{where or 'the request'} is malformed: {first.get('msg', 'not accepted')}"
        refusal = InvalidSyntax(f"{problem}; send a SCIM message as application/scim+json.")
        return error_response(
            request,
            status=400,
            detail=refusal.detail,
            code=refusal.code,
            scim_type=InvalidSyntax.scim_type,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> ScimResponse:
        if exc.status_code == 404:
            detail, code = (
                f"{request.url.path} is not a SCIM endpoint; see {PREFIX}/ResourceTypes.",
                "no_such_endpoint",
            )
        elif exc.status_code == 405:
            detail, code = (
                f"{request.method} is not allowed on {request.url.path}.",
                "method_not_allowed",
            )
        else:
            detail, code = str(exc.detail)[:200], "http_error"
        return error_response(request, status=exc.status_code, detail=detail, code=code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> ScimResponse:
        # Logged with its type only: exception text may carry request data.
        log.error(
            "unhandled %s in SCIM request %s",
            type(exc).__name__,
            getattr(request.state, "request_id", "-"),
        )
        return error_response(
            request,
            status=500,
            detail="the gateway failed to handle this request; quote the X-Request-Id "
            "to your operator.",
            code="internal_error",
        )


def create_scim_app(services: Services) -> FastAPI:
    """The SCIM application, to mount at :data:`PREFIX`."""
    app = FastAPI(
        title="Qustody SCIM 2.0",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = services
    app.include_router(router)
    _install_errors(app)
    return app

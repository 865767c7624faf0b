"""SCIM 2.0 resources as Qustody serves them (RFC 7643), and the messages around them.

The models subclass scim2-models' so that the schemas Qustody publishes list
exactly the attributes it stores: a client (or a conformance tester) reading
``/Schemas`` sees what a round trip keeps. Parsing is tolerant of attributes
Qustody does not store (an identity provider sends ``name``,
``phoneNumbers``, the enterprise extension...): they are dropped, never
kept. Parsing and PATCH application are scim2-models'; a refusal becomes the
Qustody error for its ``scimType`` (:mod:`qustody.identity.scim_errors`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from pydantic import Field, ValidationError
from scim2_models import (
    URN,
    AuthenticationScheme,
    Bulk,
    CaseExact,
    ChangePassword,
    ComplexAttribute,
    Context,
    Error,
    ETag,
    Extension,
    Filter,
    Meta,
    Mutability,
    Patch,
    PatchOp,
    Reference,
    Required,
    Resource,
    ResourceType,
    ResponseParameters,
    Schema,
    SCIMException,
    ScimPolicy,
    SearchRequest,
    ServiceProviderConfig,
    Sort,
    Uniqueness,
)

from qustody.domain.errors import QustodyError
from qustody.domain.vocabulary import Role
from qustody.identity import scim_errors as errors

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
GRANT_SCHEMA = "urn:qustody:params:scim:schemas:extension:2.0:Group"
#: Results per page at most (``filter.maxResults``).
MAX_RESULTS = 200
#: Roles a group can grant; platform-admin belongs to the platform tenant alone.
GRANTABLE_ROLES = (Role.TENANT_ADMIN.value, Role.DEVELOPER.value, Role.VIEWER.value)
#: Identity providers send attributes Qustody does not store; they are dropped.
TOLERANT = ScimPolicy(unknown=ScimPolicy.Unknown.ignore)

_ETAG = re.compile(r'^(?:W/)?"([0-9]{1,18})"$')


# -- the resources, as Qustody publishes them ---------------------------------------


class EmailAddress(ComplexAttribute):
    """An e-mail address of a user. Qustody keeps one: the one a request marks
    ``primary``, else the first. ``primary`` is read, never returned (nor
    published in the schema): the one address kept is the user's address."""

    value: Annotated[str | None, Required.true] = None
    primary: bool | None = None


class User(Resource[Any]):
    """User Account"""

    __schema__ = URN(USER_SCHEMA)

    user_name: Annotated[str | None, Required.true, Uniqueness.server] = None
    display_name: str | None = None
    active: bool | None = None
    emails: list[EmailAddress] | None = None


class Member(ComplexAttribute):
    """A member of a group: a user of the tenant (groups do not nest)."""

    value: Annotated[str | None, Mutability.immutable, CaseExact.true] = None
    ref: Annotated[Reference[User] | None, Mutability.immutable] = Field(
        None, serialization_alias="$ref", validation_alias="$ref"
    )
    type: Annotated[str | None, Mutability.immutable] = Field(None, examples=["User"])


class Grant(Extension):
    """Qustody Group: the role a group's members hold"""

    __schema__ = URN(GRANT_SCHEMA)

    role: str | None = Field(None, examples=list(GRANTABLE_ROLES))
    project: str | None = None


class Group(Resource[Any]):
    """Group"""

    __schema__ = URN(GROUP_SCHEMA)

    display_name: Annotated[str | None, Required.true] = None
    members: list[Member] | None = None


#: A group as served, with the Qustody extension.
GroupResource: type[Group] = Group[Grant]  # type: ignore[misc]
_Model = TypeVar("_Model", bound=Resource[Any])


@dataclass(frozen=True, slots=True)
class Discovery:
    """The three discovery documents (RFC 7644 section 4) of the caller's tenant."""

    config: ServiceProviderConfig
    resource_types: tuple[ResourceType, ...]
    schemas: tuple[Schema, ...]


# -- parsing ---------------------------------------------------------------------------


def parse_resource(model: type[_Model], body: Mapping[str, Any], context: Context) -> _Model:
    """A request body as ``model``, or the SCIM refusal for it."""
    try:
        return model.model_validate(dict(body), scim_ctx=context, scim_policy=TOLERANT)
    except ValidationError as exc:
        raise _refusal(exc) from None


def parse_patch(model: type[Resource[Any]], body: Mapping[str, Any]) -> PatchOp[Any]:
    """A PATCH body (RFC 7644 section 3.5.2) for resources of ``model``."""
    try:
        patch: PatchOp[Any] = PatchOp[model].model_validate(  # type: ignore[valid-type]
            dict(body), scim_ctx=Context.RESOURCE_PATCH_REQUEST, scim_policy=TOLERANT
        )
    except ValidationError as exc:
        raise _refusal(exc) from None
    return patch


def parse_query(model: type[Resource[Any]], params: Mapping[str, Any]) -> SearchRequest[Any]:
    """Query parameters or a ``.search`` body (RFC 7644 sections 3.4.2, 3.4.3)."""
    try:
        query: SearchRequest[Any] = SearchRequest[model].model_validate(  # type: ignore[valid-type]
            dict(params), scim_ctx=Context.SEARCH_REQUEST, scim_policy=TOLERANT
        )
    except ValidationError as exc:
        raise _refusal(exc) from None
    return query


def parse_projection(
    model: type[Resource[Any]], attributes: str | None, excluded: str | None
) -> ResponseParameters[Any]:
    """``attributes`` / ``excludedAttributes`` (RFC 7644 section 3.9)."""
    params = {
        key: value
        for key, value in (("attributes", attributes), ("excludedAttributes", excluded))
        if value
    }
    try:
        projection: ResponseParameters[Any] = ResponseParameters[model].model_validate(  # type: ignore[valid-type]
            params
        )
    except ValidationError as exc:
        raise _refusal(exc) from None
    return projection


_KEYWORDS: Mapping[str, type[QustodyError]] = {
    "invalidFilter": errors.InvalidFilter,
    "invalidSyntax": errors.InvalidSyntax,
    "invalidPath": errors.InvalidPath,
    "noTarget": errors.NoTarget,
    "mutability": errors.MutabilityViolation,
    "tooMany": errors.TooMany,
    "uniqueness": errors.Uniqueness,
}


def _refusal(exc: ValidationError | SCIMException) -> QustodyError:
    """The Qustody error for scim2-models' refusal of a payload."""
    if isinstance(exc, SCIMException):
        keyword, detail = exc.scim_type or "invalidValue", exc.detail or str(exc)
    else:
        first = Error.from_validation_errors(exc)[0]
        keyword, detail = first.scim_type or "invalidValue", first.detail or "invalid value"
    kind = _KEYWORDS.get(keyword, errors.ScimError)
    return kind(f"{detail[:300]}; see RFC 7643 and /scim/v2/Schemas for what is accepted.")


def etag(version: int) -> str:
    return f'W/"{version}"'


def check_version(version: int, if_match: str | None) -> None:
    """RFC 7644 section 3.14: ``If-Match`` must name the current version (or ``*``)."""
    if if_match is None:
        return
    tags = [tag.strip() for tag in if_match.split(",") if tag.strip()]
    if "*" in tags:
        return
    for tag in tags:
        match = _ETAG.fullmatch(tag)
        if match is not None and int(match.group(1)) == version:
            return
    raise errors.VersionMismatch(
        f"If-Match names another version; the resource is now at {etag(version)}. "
        "Read it again and retry."
    )


def apply_patch(patch: PatchOp[Any], resource: Resource[Any]) -> None:
    """Apply ``patch`` to ``resource`` (in place, all or nothing)."""
    try:
        patch.patch(resource, TOLERANT)
    except (SCIMException, ValidationError) as exc:
        raise _refusal(exc) from None


# -- discovery documents -----------------------------------------------------------


def discovery_documents(base_url: str, project_names: Sequence[str]) -> Discovery:
    """The discovery documents of a tenant (its projects are the canonical values
    of the group extension's ``project``)."""
    return Discovery(
        config=_service_provider_config(base_url),
        resource_types=_resource_types(base_url),
        schemas=_schemas(base_url, project_names),
    )


def _service_provider_config(base_url: str) -> ServiceProviderConfig:
    return ServiceProviderConfig(
        documentation_uri="https://qustody.dev/docs/identity-provisioning",
        patch=Patch(supported=True),
        bulk=Bulk(supported=False, max_operations=0, max_payload_size=0),
        filter=Filter(supported=True, max_results=MAX_RESULTS),
        change_password=ChangePassword(supported=False),
        sort=Sort(supported=True),
        etag=ETag(supported=True),
        authentication_schemes=[
            AuthenticationScheme(
                type="oauthbearertoken",
                name="Qustody bearer token",
                description="A Qustody token (or API key) of a principal holding tenant-admin, "
                "with the scopes 'user' and 'group' at least.",
                primary=True,
            )
        ],
        meta=Meta(
            resource_type="ServiceProviderConfig", location=f"{base_url}/ServiceProviderConfig"
        ),
    )


def _resource_types(base_url: str) -> tuple[ResourceType, ...]:
    types = []
    for model, name, description in (
        (User, "User", "A person of the tenant"),
        (GroupResource, "Group", "A group of the tenant's users, which may grant a role"),
    ):
        resource_type = ResourceType.from_resource(model)
        resource_type.name = name
        resource_type.id = name
        resource_type.description = description
        resource_type.meta = Meta(
            resource_type="ResourceType", location=f"{base_url}/ResourceTypes/{name}"
        )
        types.append(resource_type)
    return tuple(types)


def _schemas(base_url: str, project_names: Sequence[str]) -> tuple[Schema, ...]:
    described = (
        (User, "User", "User Account"),
        (Group, "Group", "Group"),
        (Grant, "QustodyGroup", "The role a group grants its members, and where"),
        (ServiceProviderConfig, "ServiceProviderConfig", "Service Provider Configuration"),
        (ResourceType, "ResourceType", "Resource Type"),
        (Schema, "Schema", "Schema"),
    )
    schemas = []
    for model, name, description in described:
        schema = model.to_schema()
        schema.name = name
        schema.description = description
        schema.meta = Meta(resource_type="Schema", location=f"{base_url}/Schemas/{schema.id}")
        for attribute in schema.attributes or []:
            if model is Grant and attribute.name == "project" and project_names:
                attribute.canonical_values = list(project_names)
            if model is User and attribute.name == "emails":
                attribute.description = (
                    "E-mail addresses; Qustody keeps one: the one marked primary, else the first."
                )
                attribute.sub_attributes = [
                    sub for sub in attribute.sub_attributes or [] if sub.name == "value"
                ]
        schemas.append(schema)
    return tuple(schemas)

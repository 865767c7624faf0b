"""A tenant's own Cedar policies: read, replace, versions, diffs (docs/policies.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from pydantic import Field

from qustody.api import schemas
from qustody.api.auth import CallerDep
from qustody.api.routes.common import secured
from qustody.api.state import services_of
from qustody.domain.vocabulary import Action
from qustody.policy.tenant_policies import MAX_COMMENT, MAX_POLICY_BYTES, PolicyVersion

router = APIRouter(prefix="/v1", tags=["policies"])


class PolicyPut(schemas.Request):
    text: Annotated[
        str,
        Field(
            max_length=MAX_POLICY_BYTES,
            description="Cedar policies: forbids only, each with a unique @id; empty for none",
        ),
    ]
    comment: Annotated[
        str | None, Field(max_length=MAX_COMMENT, description="Why; kept with the version")
    ] = None
    base_version: Annotated[
        int | None,
        Field(ge=0, description="The version you edited; refused with 409 if no longer newest"),
    ] = None


class PolicyVersionSummary(schemas.Response):
    version: int
    sha256: str
    comment: str | None
    created_at: datetime | None
    created_by: str | None


class PolicyVersionOut(PolicyVersionSummary):
    text: str


class PolicyVersionList(schemas.Response):
    items: list[PolicyVersionSummary]


class PolicyDiffOut(schemas.Response):
    from_version: int
    to_version: int
    diff: str


def _out(version: PolicyVersion) -> PolicyVersionOut:
    return PolicyVersionOut.model_validate(version)


@router.get("/policies", response_model=PolicyVersionOut, openapi_extra=secured(Action.POLICY_READ))
def get_policies(caller: CallerDep, request: Request) -> PolicyVersionOut:
    """Your tenant's policies in force, and their version (0 and empty: none yet)."""
    return _out(services_of(request).policies.current(caller.principal, caller.request))


@router.put("/policies", response_model=PolicyVersionOut, openapi_extra=secured(Action.POLICY_SET))
def put_policies(body: PolicyPut, caller: CallerDep, request: Request) -> PolicyVersionOut:
    """Store a new version of your tenant's policies and put it in force.

    Forbids only: they narrow what the platform's policies allow. The text is
    validated against the schema first; a refusal (422) names the policy and
    its line."""
    version = services_of(request).policies.replace(
        caller.principal,
        caller.request,
        body.text,
        comment=body.comment,
        base_version=body.base_version,
    )
    return _out(version)


@router.get(
    "/policies/versions",
    response_model=PolicyVersionList,
    openapi_extra=secured(Action.POLICY_READ),
)
def list_policy_versions(caller: CallerDep, request: Request) -> PolicyVersionList:
    """Every version of your tenant's policies, newest first (without their text)."""
    versions = services_of(request).policies.versions(caller.principal, caller.request)
    return PolicyVersionList(items=[PolicyVersionSummary.model_validate(v) for v in versions])


@router.get(
    "/policies/versions/{version}",
    response_model=PolicyVersionOut,
    openapi_extra=secured(Action.POLICY_READ),
)
def get_policy_version(
    version: Annotated[int, Path(ge=0, le=2**31 - 1)], caller: CallerDep, request: Request
) -> PolicyVersionOut:
    """One version of your tenant's policies, with its text."""
    return _out(services_of(request).policies.version(caller.principal, caller.request, version))


@router.get(
    "/policies/diff", response_model=PolicyDiffOut, openapi_extra=secured(Action.POLICY_READ)
)
def diff_policies(
    caller: CallerDep,
    request: Request,
    from_version: Annotated[int | None, Query(alias="from", ge=0, le=2**31 - 1)] = None,
    to_version: Annotated[int | None, Query(alias="to", ge=0, le=2**31 - 1)] = None,
) -> PolicyDiffOut:
    """A unified diff between two versions (0: the empty start); by default the
    newest version against the one before it."""
    diff = services_of(request).policies.diff(
        caller.principal, caller.request, from_version, to_version
    )
    return PolicyDiffOut(from_version=diff.from_version, to_version=diff.to_version, diff=diff.diff)

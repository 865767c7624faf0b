"""Tenant key management: key rings, the write-only secrets vault, the export key."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from qustody.api import schemas
from qustody.api.auth import CallerDep
from qustody.api.routes.common import secured
from qustody.api.state import services_of
from qustody.domain.vocabulary import Action

router = APIRouter(prefix="/v1", tags=["keys"])


@router.get("/keys", response_model=schemas.KeyRingList, openapi_extra=secured(Action.KEY_LIST))
def list_key_rings(caller: CallerDep, request: Request) -> schemas.KeyRingList:
    """Your tenant's key rings, their versions and how many stored values each protects."""
    rings = services_of(request).tenant_keys.rings(caller.principal, caller.request)
    return schemas.KeyRingList.of(rings)


@router.post(
    "/keys/rotate", response_model=schemas.KeysRotated, openapi_extra=secured(Action.KEY_ROTATE)
)
def rotate_keys(
    body: schemas.KeysRotate, caller: CallerDep, request: Request
) -> schemas.KeysRotated:
    """New current versions for your tenant's rings (or one project's); existing
    data keys are rewrapped in the background, then the old versions retire."""
    rotated = services_of(request).tenant_keys.rotate(
        caller.principal, caller.request, body.project_id
    )
    return schemas.KeysRotated(rotated=rotated)


@router.get(
    "/secrets", response_model=schemas.SecretList, openapi_extra=secured(Action.SECRET_LIST)
)
def list_secrets(caller: CallerDep, request: Request) -> schemas.SecretList:
    """Names and dates of your tenant's secrets; values are never returned."""
    items = services_of(request).tenant_keys.list_secrets(caller.principal, caller.request)
    return schemas.SecretList(items=[schemas.Secret.model_validate(i) for i in items])


@router.put(
    "/secrets/{name}", response_model=schemas.Secret, openapi_extra=secured(Action.SECRET_SET)
)
def put_secret(
    name: str, body: schemas.SecretPut, caller: CallerDep, request: Request
) -> schemas.Secret:
    """Store or replace a secret (a provider credential). Write-only: sealed
    under your tenant's keys and opened only for the execution that uses it."""
    info = services_of(request).tenant_keys.set_secret(
        caller.principal, caller.request, name, body.value.encode("utf-8")
    )
    return schemas.Secret.model_validate(info)


@router.delete("/secrets/{name}", status_code=204, openapi_extra=secured(Action.SECRET_DELETE))
def delete_secret(name: str, caller: CallerDep, request: Request) -> Response:
    services_of(request).tenant_keys.delete_secret(caller.principal, caller.request, name)
    return Response(status_code=204)


@router.get(
    "/export-key", response_model=schemas.ExportKey, openapi_extra=secured(Action.EXPORTKEY_READ)
)
def get_export_key(caller: CallerDep, request: Request) -> schemas.ExportKey:
    """The public key (X-Wing) your tenant's sealed exports are encrypted to."""
    info = services_of(request).tenant_keys.export_key(caller.principal, caller.request)
    return schemas.ExportKey.model_validate(info)


@router.put(
    "/export-key", response_model=schemas.ExportKey, openapi_extra=secured(Action.EXPORTKEY_SET)
)
def put_export_key(
    body: schemas.ExportKeyPut, caller: CallerDep, request: Request
) -> schemas.ExportKey:
    """Register your tenant's export public key (``qustody-xwing-pub:…``, made by
    ``qustody export-key generate``); exports asked for ``sealed`` use it."""
    info = services_of(request).tenant_keys.set_export_key(
        caller.principal, caller.request, body.public_key
    )
    return schemas.ExportKey.model_validate(info)

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from qustody.api import schemas
from qustody.api.routes.common import PUBLIC
from qustody.api.state import services_of

router = APIRouter(prefix="/v1", tags=["health"])


@router.get("/health", response_model=schemas.Health, openapi_extra=PUBLIC)
def health() -> schemas.Health:
    """Liveness: the process answers."""
    return schemas.Health(status="ok")


@router.get("/ready", response_model=schemas.Readiness, openapi_extra=PUBLIC)
def ready(request: Request) -> JSONResponse:
    """Readiness: the database answers. Reveals no versions, paths or errors."""
    try:
        services_of(request).db.ping()
    except Exception:  # noqa: BLE001 (any failure means "not ready"; details stay in logs)
        body = schemas.Readiness(status="unavailable", checks={"database": "failing"})
        return JSONResponse(body.model_dump(), status_code=503)
    return JSONResponse(schemas.Readiness(status="ready", checks={"database": "ok"}).model_dump())

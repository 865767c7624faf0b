"""Scheduling routes: backend operations, a backend's queue, reservations, sessions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter
from fastapi import Request as HttpRequest
from pydantic import Field

from qustody.api.auth import CallerDep
from qustody.api.routes.common import secured
from qustody.api.schemas import Request, Response
from qustody.api.state import services_of
from qustody.domain.errors import ServiceUnavailable
from qustody.domain.vocabulary import Action
from qustody.jobs.queue import Scheduling

router = APIRouter(prefix="/v1", tags=["scheduling"])

Moment = Annotated[datetime, Field(strict=False, description="RFC 3339, with an offset")]
Reason = Annotated[str, Field(min_length=1, max_length=500)]


def _scheduling(request: HttpRequest) -> Scheduling:
    scheduling = services_of(request).scheduling
    if scheduling is None:
        raise ServiceUnavailable("scheduling is not configured in this process.")
    return scheduling


# -- bodies ------------------------------------------------------------------------------


class PauseBody(Request):
    reason: Reason


class ConcurrencyBody(Request):
    max_running: Annotated[
        int | None, Field(ge=1, le=10_000, description="null: the deployment's default")
    ]


class MaintenanceBody(Request):
    starts_at: Moment
    ends_at: Moment
    reason: Reason


class ReservationBody(Request):
    backend: Annotated[str, Field(min_length=1, max_length=64)]
    starts_at: Moment
    ends_at: Moment
    reason: Reason


class SessionBody(Request):
    backend: Annotated[str, Field(min_length=1, max_length=64)]
    max_ttl_seconds: Annotated[int | None, Field(ge=1)] = None


class MaintenanceOut(Response):
    id: str
    backend: str
    starts_at: datetime
    ends_at: datetime
    reason: str
    cancelled_at: datetime | None


class MaintenanceList(Response):
    items: list[MaintenanceOut]


class BackendStateOut(Response):
    backend: str
    paused: bool
    reason: str | None
    maintenance: MaintenanceOut | None
    max_running: int | None


class QueuedJobOut(Response):
    id: str
    position: int
    priority: int
    queued_at: datetime | None
    session_id: str | None


class BackendQueueOut(Response):
    backend: str
    status: Annotated[str, Field(description="paused, maintenance, reserved, busy or normal")]
    reserved_for_you: bool
    jobs: list[QueuedJobOut]


class ReservationOut(Response):
    id: str
    backend: str
    starts_at: datetime
    ends_at: datetime
    reason: str
    created_by: str
    created_at: datetime
    cancelled_at: datetime | None


class ReservationList(Response):
    items: list[ReservationOut]


class SessionOut(Response):
    id: str
    principal_id: str
    backend: str
    state: str
    created_at: datetime
    expires_at: datetime
    started_at: datetime | None
    closed_at: datetime | None


class SessionList(Response):
    items: list[SessionOut]


# -- backends ----------------------------------------------------------------------------


@router.post(
    "/backends/{name}/pause",
    response_model=BackendStateOut,
    openapi_extra=secured(Action.BACKEND_PAUSE),
)
def pause_backend(
    name: str, body: PauseBody, caller: CallerDep, request: HttpRequest
) -> BackendStateOut:
    state = _scheduling(request).backends.pause(caller.principal, caller.request, name, body.reason)
    return BackendStateOut.model_validate(state)


@router.post(
    "/backends/{name}/resume",
    response_model=BackendStateOut,
    openapi_extra=secured(Action.BACKEND_RESUME),
)
def resume_backend(name: str, caller: CallerDep, request: HttpRequest) -> BackendStateOut:
    state = _scheduling(request).backends.resume(caller.principal, caller.request, name)
    return BackendStateOut.model_validate(state)


@router.put(
    "/backends/{name}/concurrency",
    response_model=BackendStateOut,
    openapi_extra=secured(Action.BACKEND_MAINTAIN),
)
def set_concurrency(
    name: str, body: ConcurrencyBody, caller: CallerDep, request: HttpRequest
) -> BackendStateOut:
    state = _scheduling(request).backends.set_concurrency(
        caller.principal, caller.request, name, body.max_running
    )
    return BackendStateOut.model_validate(state)


@router.post(
    "/backends/{name}/maintenance",
    status_code=201,
    response_model=MaintenanceOut,
    openapi_extra=secured(Action.BACKEND_MAINTAIN),
)
def add_maintenance(
    name: str, body: MaintenanceBody, caller: CallerDep, request: HttpRequest
) -> MaintenanceOut:
    window = _scheduling(request).backends.add_maintenance(
        caller.principal,
        caller.request,
        name,
        starts_at=body.starts_at,
        ends_at=body.ends_at,
        reason=body.reason,
    )
    return MaintenanceOut.model_validate(window)


@router.get(
    "/backends/{name}/maintenance",
    response_model=MaintenanceList,
    openapi_extra=secured(Action.BACKEND_READ),
)
def list_maintenance(name: str, caller: CallerDep, request: HttpRequest) -> MaintenanceList:
    windows = _scheduling(request).backends.list_maintenance(caller.principal, caller.request, name)
    return MaintenanceList(items=[MaintenanceOut.model_validate(w) for w in windows])


@router.post(
    "/backends/{name}/maintenance/{window_id}/cancel",
    response_model=MaintenanceOut,
    openapi_extra=secured(Action.BACKEND_MAINTAIN),
)
def cancel_maintenance(
    name: str, window_id: str, caller: CallerDep, request: HttpRequest
) -> MaintenanceOut:
    window = _scheduling(request).backends.cancel_maintenance(
        caller.principal, caller.request, name, window_id
    )
    return MaintenanceOut.model_validate(window)


@router.get(
    "/backends/{name}/queue",
    response_model=BackendQueueOut,
    openapi_extra=secured(Action.QUEUE_READ),
)
def backend_queue(name: str, caller: CallerDep, request: HttpRequest) -> BackendQueueOut:
    queue = _scheduling(request).queue.backend_queue(caller.principal, caller.request, name)
    return BackendQueueOut.model_validate(queue)


# -- reservations ------------------------------------------------------------------------


@router.post(
    "/reservations",
    status_code=201,
    response_model=ReservationOut,
    openapi_extra=secured(Action.RESERVATION_CREATE),
)
def create_reservation(
    body: ReservationBody, caller: CallerDep, request: HttpRequest
) -> ReservationOut:
    made = _scheduling(request).reservations.create(
        caller.principal,
        caller.request,
        backend=body.backend,
        starts_at=body.starts_at,
        ends_at=body.ends_at,
        reason=body.reason,
    )
    return ReservationOut.model_validate(made)


@router.get(
    "/reservations",
    response_model=ReservationList,
    openapi_extra=secured(Action.RESERVATION_LIST),
)
def list_reservations(caller: CallerDep, request: HttpRequest) -> ReservationList:
    found = _scheduling(request).reservations.list(caller.principal, caller.request)
    return ReservationList(items=[ReservationOut.model_validate(r) for r in found])


@router.post(
    "/reservations/{reservation_id}/cancel",
    response_model=ReservationOut,
    openapi_extra=secured(Action.RESERVATION_CANCEL),
)
def cancel_reservation(
    reservation_id: str, caller: CallerDep, request: HttpRequest
) -> ReservationOut:
    done = _scheduling(request).reservations.cancel(
        caller.principal, caller.request, reservation_id
    )
    return ReservationOut.model_validate(done)


# -- sessions ----------------------------------------------------------------------------


@router.post(
    "/sessions",
    status_code=201,
    response_model=SessionOut,
    openapi_extra=secured(Action.SESSION_CREATE),
)
def create_session(body: SessionBody, caller: CallerDep, request: HttpRequest) -> SessionOut:
    made = _scheduling(request).sessions.create(
        caller.principal,
        caller.request,
        backend=body.backend,
        max_ttl_seconds=body.max_ttl_seconds,
    )
    return SessionOut.model_validate(made)


@router.get("/sessions", response_model=SessionList, openapi_extra=secured(Action.SESSION_READ))
def list_sessions(caller: CallerDep, request: HttpRequest) -> SessionList:
    found = _scheduling(request).sessions.list(caller.principal, caller.request)
    return SessionList(items=[SessionOut.model_validate(s) for s in found])


@router.get(
    "/sessions/{session_id}", response_model=SessionOut, openapi_extra=secured(Action.SESSION_READ)
)
def get_session(session_id: str, caller: CallerDep, request: HttpRequest) -> SessionOut:
    found = _scheduling(request).sessions.get(caller.principal, caller.request, session_id)
    return SessionOut.model_validate(found)


@router.post(
    "/sessions/{session_id}/close",
    response_model=SessionOut,
    openapi_extra=secured(Action.SESSION_CLOSE),
)
def close_session(session_id: str, caller: CallerDep, request: HttpRequest) -> SessionOut:
    done = _scheduling(request).sessions.close(caller.principal, caller.request, session_id)
    return SessionOut.model_validate(done)

"""Webhook endpoints for alerts: add (the signing secret is shown once), list,
remove, their deliveries, and a test alert."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import Field

from qustody.api.auth import CallerDep
from qustody.api.routes.common import secured
from qustody.api.schemas import Request as RequestBody
from qustody.api.schemas import Response as ResponseBody
from qustody.api.state import services_of
from qustody.domain.errors import ServiceUnavailable
from qustody.domain.vocabulary import Action
from qustody.governance.webhooks import Endpoint, WebhookService

router = APIRouter(prefix="/v1", tags=["webhooks"])


class WebhookAdd(RequestBody):
    #: ``https://...`` (plain ``http`` to loopback in development mode only).
    url: Annotated[str, Field(min_length=8, max_length=2048)]
    #: Alert kinds wanted (``budget.*``, ``breakglass.invoked``); empty: every kind.
    kinds: Annotated[list[str], Field(default_factory=list, max_length=16)]
    description: Annotated[str | None, Field(max_length=256)] = None


class Webhook(ResponseBody):
    id: str
    url: str
    kinds: list[str]
    #: Receives the platform's alerts (those of no tenant).
    platform: bool
    description: str | None
    created_at: datetime
    created_by: str

    @classmethod
    def of(cls, endpoint: Endpoint) -> Webhook:
        return cls.model_validate(endpoint)


class WebhookCreated(Webhook):
    #: The signing secret (``whsec_...``), shown this once: give it to the receiver.
    secret: str


class WebhookList(ResponseBody):
    items: list[Webhook]


class WebhookDelivery(ResponseBody):
    #: The ``webhook-id`` of every attempt of this delivery.
    id: str
    alert_id: str
    kind: str
    attempts: int
    #: ``pending``, ``delivered`` or ``failed`` (given up).
    state: str
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    failed_at: datetime | None
    last_status: int | None
    last_error: str | None
    created_at: datetime


class WebhookDeliveryList(ResponseBody):
    items: list[WebhookDelivery]


class WebhookTestQueued(ResponseBody):
    delivery_id: str


def _service(request: Request) -> WebhookService:
    service = services_of(request).webhooks
    if service is None:
        raise ServiceUnavailable("webhooks are not configured on this gateway.")
    return service


@router.post(
    "/webhooks",
    status_code=201,
    response_model=WebhookCreated,
    openapi_extra=secured(Action.WEBHOOK_SET),
)
def add_webhook(body: WebhookAdd, caller: CallerDep, request: Request) -> WebhookCreated:
    """Register an endpoint for your tenant's alerts (as platform admin: the
    platform's); the answer holds its signing secret, shown this once."""
    created = _service(request).add(
        caller.principal,
        caller.request,
        url=body.url,
        kinds=body.kinds,
        description=body.description,
    )
    return WebhookCreated(**Webhook.of(created.endpoint).model_dump(), secret=created.secret)


@router.get("/webhooks", response_model=WebhookList, openapi_extra=secured(Action.WEBHOOK_LIST))
def list_webhooks(caller: CallerDep, request: Request) -> WebhookList:
    """Your tenant's endpoints (never their secrets)."""
    endpoints = _service(request).endpoints(caller.principal, caller.request)
    return WebhookList(items=[Webhook.of(e) for e in endpoints])


@router.delete(
    "/webhooks/{webhook_id}", status_code=204, openapi_extra=secured(Action.WEBHOOK_DELETE)
)
def remove_webhook(webhook_id: str, caller: CallerDep, request: Request) -> Response:
    _service(request).remove(caller.principal, caller.request, webhook_id)
    return Response(status_code=204)


@router.get(
    "/webhooks/{webhook_id}/deliveries",
    response_model=WebhookDeliveryList,
    openapi_extra=secured(Action.WEBHOOK_LIST),
)
def list_deliveries(
    webhook_id: str,
    caller: CallerDep,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> WebhookDeliveryList:
    """The endpoint's newest deliveries: pending (with the next attempt),
    delivered, or failed after the last attempt (with the last status or error)."""
    rows = _service(request).deliveries(caller.principal, caller.request, webhook_id, limit=limit)
    return WebhookDeliveryList(items=[WebhookDelivery.model_validate(r) for r in rows])


@router.post(
    "/webhooks/{webhook_id}/test",
    status_code=202,
    response_model=WebhookTestQueued,
    openapi_extra=secured(Action.WEBHOOK_SET),
)
def test_webhook(webhook_id: str, caller: CallerDep, request: Request) -> WebhookTestQueued:
    """Queue a ``webhook.test`` alert for this endpoint alone."""
    delivery_id = _service(request).test(caller.principal, caller.request, webhook_id)
    return WebhookTestQueued(delivery_id=delivery_id)

"""The audit log over HTTP: the key, checkpoints and proofs anyone may check,
and a tenant's own events, each with its inclusion proof.

The verifying key, the latest checkpoint and consistency proofs are public,
as in Certificate Transparency: witnesses and auditors fetch them without an
account, and they reveal only the number of events and hashes. Events are
read through the guard, a tenant's own only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse

from qustody import __version__
from qustody.api import schemas
from qustody.api.auth import CallerDep
from qustody.api.routes.common import PUBLIC, secured
from qustody.api.schemas import SEALED_MEDIA_TYPE
from qustody.api.state import services_of
from qustody.audit import ocsf
from qustody.audit.export import Record
from qustody.audit.log import proof_text
from qustody.domain.errors import NotFound
from qustody.domain.vocabulary import Action
from qustody.policy.audit_reader import EventQuery

router = APIRouter(tags=["audit"])

KEY_PATH = "/.well-known/qustody/audit-log-key"
_NOTE = "text/plain; charset=utf-8"


@router.get(KEY_PATH, response_class=PlainTextResponse, openapi_extra=PUBLIC)
def log_key(request: Request) -> PlainTextResponse:
    """The verifier key of the log's checkpoints (C2SP note key, ``origin+id+base64``)."""
    verifier = services_of(request).audit_log.verifier
    if verifier is None:
        raise NotFound("this gateway has no audit log key configured.")
    return PlainTextResponse(verifier.encode() + "\n", media_type=_NOTE)


@router.get("/v1/audit/checkpoint", response_class=PlainTextResponse, openapi_extra=PUBLIC)
def latest_checkpoint(request: Request) -> PlainTextResponse:
    """The latest signed checkpoint (C2SP tlog-checkpoint note)."""
    checkpoint = services_of(request).audit_log.latest_checkpoint()
    if checkpoint is None:
        raise NotFound(
            "the audit log has no checkpoint yet; one is signed a few seconds after the "
            "first event, or ask a platform admin for one (POST /v1/audit/checkpoint)."
        )
    return PlainTextResponse(checkpoint.note, media_type=_NOTE)


@router.post(
    "/v1/audit/checkpoint",
    response_class=PlainTextResponse,
    openapi_extra=secured(Action.AUDIT_CHECKPOINT),
)
def issue_checkpoint(caller: CallerDep, request: Request) -> PlainTextResponse:
    """Sign a checkpoint now (if the log grew), and return the latest."""
    note = services_of(request).audit.issue_checkpoint(caller.principal, caller.request)
    return PlainTextResponse(note, media_type=_NOTE)


@router.get(
    "/v1/audit/proofs/consistency",
    response_model=schemas.ConsistencyProof,
    response_model_by_alias=True,
    openapi_extra=PUBLIC,
)
def consistency(
    request: Request,
    from_size: Annotated[int, Query(alias="from", ge=0)],
    to_size: Annotated[int, Query(alias="to", ge=0)],
) -> schemas.ConsistencyProof:
    """The RFC 9162 proof that the tree of ``from`` events is a prefix of the tree of ``to``."""
    path = services_of(request).audit_log.consistency_proof(from_size, to_size)
    return schemas.ConsistencyProof(from_size=from_size, to_size=to_size, path=proof_text(path))


@router.get(
    "/v1/audit/events",
    response_model=schemas.AuditEventPage,
    openapi_extra=secured(Action.AUDIT_READ),
)
def search_events(
    caller: CallerDep,
    request: Request,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=48)] = None,
    resource_type: Annotated[str | None, Query(max_length=32)] = None,
    resource_id: Annotated[str | None, Query(max_length=64)] = None,
    job: Annotated[str | None, Query(max_length=40)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    decision: Literal["allow", "deny"] | None = None,
    outcome: Literal["success", "failure", "denied"] | None = None,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> schemas.AuditEventPage:
    """Your tenant's audit events, oldest first, each with its inclusion proof."""
    query = EventQuery(
        actor=actor,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        job_id=job,
        since=since,
        until=until,
        decision=decision,
        outcome=outcome,
        after=after,
        limit=limit,
    )
    page = services_of(request).audit.search(caller.principal, caller.request, query)
    return schemas.AuditEventPage(
        checkpoint=page.checkpoint.note if page.checkpoint else None,
        items=[schemas.AuditEvent.model_validate(e) for e in page.events],
        next=page.next_after,
    )


@router.get(
    "/v1/audit/events/{seq}",
    response_model=schemas.AuditEventProof,
    openapi_extra=secured(Action.AUDIT_READ),
)
def event_proof(
    seq: int,
    caller: CallerDep,
    request: Request,
    size: Annotated[int | None, Query(ge=1, description="A checkpoint's size")] = None,
) -> schemas.AuditEventProof:
    """One of your tenant's events with its inclusion proof under a checkpoint."""
    item, checkpoint = services_of(request).audit.event(caller.principal, caller.request, seq, size)
    return schemas.AuditEventProof(
        checkpoint=checkpoint.note, item=schemas.AuditEvent.model_validate(item)
    )


@router.get("/v1/audit/export", openapi_extra=secured(Action.AUDIT_EXPORT))
def export(
    caller: CallerDep,
    request: Request,
    scope: Literal["tenant", "platform"] = "tenant",
    form: Annotated[Literal["qustody", "ocsf"], Query(alias="format")] = "qustody",
    sealed: Annotated[
        bool, Query(description="Sealed to your tenant's export key (HPKE, X-Wing)")
    ] = False,
) -> Response:
    """An export as JSON Lines: for ``qustody audit verify`` (events, leaves,
    proofs and checkpoints), or as OCSF events for a SIEM. Your tenant's
    events, or, for platform admins, the whole log. With ``sealed``, the
    whole export is encrypted to your tenant's export key."""
    services = services_of(request)
    records = services.audit.export(caller.principal, caller.request, whole_log=scope == "platform")
    lines = _ocsf_lines(records) if form == "ocsf" else _lines(records)
    if not sealed:
        return StreamingResponse(lines, media_type="application/jsonl")
    bundle = services.tenant_keys.seal_export(
        caller.principal.tenant_id,
        b"".join(lines),
        content_type="application/jsonl",
        metadata={"export": f"audit/{scope}/{form}"},
    )
    return Response(bundle, media_type=SEALED_MEDIA_TYPE)


def _lines(records: Iterator[Record]) -> Iterator[bytes]:
    for item in records:
        yield json.dumps(item, separators=(",", ":")).encode() + b"\n"


def _ocsf_lines(records: Iterator[Record]) -> Iterator[bytes]:
    for item in records:
        if item["type"] == "event":
            yield ocsf.dumps(ocsf.to_ocsf(item["event"], product_version=__version__)).encode()
            yield b"\n"

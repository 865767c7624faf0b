from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from qustody.api import schemas
from qustody.api.auth import CallerDep
from qustody.api.routes.common import secured
from qustody.api.schemas import SEALED_MEDIA_TYPE
from qustody.api.state import services_of
from qustody.domain.vocabulary import Action
from qustody.governance.approvals import Justification
from qustody.jobs.service import SubmitRequest

router = APIRouter(prefix="/v1", tags=["jobs"])
#: Notices of an accepted job that are also sent as response headers.
WARNING_HEADERS = {
    "quota_warning": "Qustody-Quota-Warning",
    "budget_warning": "Qustody-Budget-Warning",
}


@router.post(
    "/jobs",
    status_code=202,
    response_model=schemas.Job,
    openapi_extra=secured(Action.JOB_SUBMIT),
)
def submit_job(
    body: schemas.JobSubmit, caller: CallerDep, request: Request, response: Response
) -> schemas.Job:
    spec = SubmitRequest(
        project=body.project,
        backend=body.backend,
        shots=body.shots,
        qasm=body.qasm,
        memory=body.memory,
        seed=body.seed,
        name=body.name,
        labels=body.labels,
        priority=body.priority,
        session=body.session,
        approval=Justification(body.approval.reason, body.approval.ticket)
        if body.approval is not None
        else None,
    )
    job = services_of(request).jobs.submit(caller.principal, caller.request, spec)
    # Quotas and budgets at 80 % or more, also as headers a client can watch.
    for code, header in WARNING_HEADERS.items():
        details = [detail for kind, detail in job.warnings if kind == code]
        if details:
            response.headers[header] = " ".join(details)
    return schemas.Job.of(job)


@router.get("/jobs", response_model=schemas.JobList, openapi_extra=secured(Action.JOB_LIST))
def list_jobs(
    caller: CallerDep,
    request: Request,
    state: Annotated[str | None, Query(max_length=24)] = None,
    backend: Annotated[str | None, Query(max_length=64)] = None,
    project: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> schemas.JobList:
    page = services_of(request).jobs.list_jobs(
        caller.principal,
        caller.request,
        state=state,
        backend=backend,
        project=project,
        limit=limit,
        cursor=cursor,
    )
    return schemas.JobList(
        items=[schemas.Job.of(j) for j in page.items], next_cursor=page.next_cursor
    )


@router.get("/jobs/{job_id}", response_model=schemas.Job, openapi_extra=secured(Action.JOB_READ))
def get_job(
    job_id: str,
    caller: CallerDep,
    request: Request,
    wait: Annotated[
        float,
        Query(ge=0, le=30, description="Seconds to wait for the job to finish before answering"),
    ] = 0.0,
) -> schemas.Job:
    job = services_of(request).jobs.get(caller.principal, caller.request, job_id, wait=wait)
    return schemas.Job.of(job)


@router.post(
    "/jobs/{job_id}/cancel", response_model=schemas.Job, openapi_extra=secured(Action.JOB_CANCEL)
)
def cancel_job(job_id: str, caller: CallerDep, request: Request) -> schemas.Job:
    return schemas.Job.of(
        services_of(request).jobs.cancel(caller.principal, caller.request, job_id)
    )


@router.get(
    "/jobs/{job_id}/result",
    response_model=schemas.Result,
    openapi_extra=secured(Action.RESULT_READ),
    responses={200: {"content": {SEALED_MEDIA_TYPE: {}}}},
)
def get_result(
    job_id: str,
    caller: CallerDep,
    request: Request,
    sealed: Annotated[
        bool, Query(description="Sealed to your tenant's export key (HPKE, X-Wing)")
    ] = False,
) -> schemas.Result | Response:
    services = services_of(request)
    result = schemas.Result.of(services.jobs.result(caller.principal, caller.request, job_id))
    if not sealed:
        return result
    bundle = services.tenant_keys.seal_export(
        caller.principal.tenant_id,
        result.model_dump_json().encode("utf-8"),
        content_type="application/vnd.qustody.result+json",
        metadata={"job_id": result.job_id},
    )
    return Response(bundle, media_type=SEALED_MEDIA_TYPE)


@router.get(
    "/backends", response_model=schemas.BackendList, openapi_extra=secured(Action.BACKEND_LIST)
)
def list_backends(caller: CallerDep, request: Request) -> schemas.BackendList:
    services = services_of(request)
    infos = services.jobs.backends(caller.principal, caller.request)
    items = [_backend(i) for i in infos]
    if services.scheduling is not None:
        states = services.scheduling.backends.states(i.name for i in items)
        for item in items:
            item.paused = states[item.name].paused
            item.maintenance = states[item.name].maintenance is not None
    return schemas.BackendList(items=items)


@router.get(
    "/backends/{name}", response_model=schemas.Backend, openapi_extra=secured(Action.BACKEND_READ)
)
def get_backend(name: str, caller: CallerDep, request: Request) -> schemas.Backend:
    services = services_of(request)
    item = _backend(services.jobs.backend(caller.principal, caller.request, name))
    if services.scheduling is not None:
        state = services.scheduling.backends.state(item.name)
        item.paused, item.maintenance = state.paused, state.maintenance is not None
    return item


def _backend(info: object) -> schemas.Backend:
    return schemas.Backend.model_validate(info, from_attributes=True)

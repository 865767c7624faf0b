"""RFC 9457 problem+json: the one place errors become HTTP responses.

Every refusal carries a stable ``code``. Nothing here ever includes a stack
trace, an exception message from a library, or the content of a request body.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from qustody.domain.errors import QustodyError

log = logging.getLogger("qustody.api")
PROBLEM_JSON = "application/problem+json"


def problem_response(
    request: Request,
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    field: str | None = None,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:qustody:problem:{code}",
        "title": title,
        "status": status,
        "code": code,
        "detail": detail,
        "instance": request.url.path,
        "request_id": getattr(request.state, "request_id", None),
    }
    if field is not None:
        body["field"] = field
    for key, value in (extra or {}).items():
        body.setdefault(key, value)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field_name(loc: Sequence[str | int]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


#: pydantic error types that mean "wrong type" rather than "bad value".
_TYPE_ERRORS = ("_type", "_parsing", "model_attributes_type", "dict_type", "list_type")


def _validation_problem(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return problem_response(
            request,
            status=400,
            code="malformed_json",
            title="Malformed JSON body",
            detail="the request body is not valid JSON; send a JSON object "
            "with Content-Type: application/json.",
            field="body",
        )
    first = errors[0]
    field = _field_name(first.get("loc", ()))
    kind = str(first.get("type", ""))
    message = str(first.get("msg", "invalid value"))
    if kind == "missing":
        code, title = "missing_field", "Missing field"
        detail = f"{field} is required; add it to the request."
    elif kind.endswith(_TYPE_ERRORS):
        code, title = "invalid_type", "Wrong type"
        detail = f"{field} has the wrong type: {message}. Send the type the API documents."
    elif kind == "extra_forbidden":
        code, title = "unknown_field", "Unknown field"
        detail = f"{field} is not a field of this request; remove it or check its spelling."
    else:
        code, title = "invalid_request", "Invalid request"
        detail = f"{field}: {message}."
    others = [_field_name(e.get("loc", ())) for e in errors[1:6]]
    extra: dict[str, Any] = {"other_fields": others} if others else {}
    return problem_response(
        request, status=422, code=code, title=title, detail=detail, field=field, extra=extra
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(QustodyError)
    async def qustody_error(request: Request, exc: QustodyError) -> JSONResponse:
        if exc.status >= 500:
            log.error("request %s failed: %s", getattr(request.state, "request_id", "-"), exc.code)
        # An error may name its own challenge (DPoP, step-up); else the bearer one.
        challenge = getattr(exc, "www_authenticate", None)
        if not isinstance(challenge, str):
            challenge = 'Bearer realm="qustody"' if exc.status == 401 else None
        headers = {"WWW-Authenticate": challenge} if challenge else {}
        # And headers of its own (DPoP-Nonce with a use_dpop_nonce refusal).
        more = getattr(exc, "response_headers", None)
        if isinstance(more, dict):
            headers.update(more)
        return problem_response(
            request,
            status=exc.status,
            code=exc.code,
            title=exc.title,
            detail=exc.detail,
            field=exc.field,
            extra=dict(exc.extra),
            headers=headers or None,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_problem(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return problem_response(
                request,
                status=404,
                code="no_such_endpoint",
                title="No such endpoint",
                detail=f"{request.url.path} is not an API endpoint; see /openapi.json.",
            )
        if exc.status_code == 405:
            return problem_response(
                request,
                status=405,
                code="method_not_allowed",
                title="Method not allowed",
                detail=f"{request.method} is not allowed on {request.url.path}; see /openapi.json.",
            )
        return problem_response(
            request,
            status=exc.status_code,
            code="http_error",
            title="HTTP error",
            detail=str(exc.detail)[:200],
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged with its type only: exception text may carry payload fragments.
        log.error(
            "unhandled %s in request %s",
            type(exc).__name__,
            getattr(request.state, "request_id", "-"),
        )
        return problem_response(
            request,
            status=500,
            code="internal_error",
            title="Internal error",
            detail="the gateway failed to handle this request; quote the request_id "
            "to your operator.",
        )

"""Turning a refused HTTP answer into a :class:`QustodyAPIError` (pure, no I/O)."""

from __future__ import annotations

import json

from qustody.client.errors import QustodyAPIError, StepUpRequired

PROBLEM_TYPE_PREFIX = "urn:qustody:problem:"
#: The problem code of a step-up challenge (RFC 9470's error code).
STEP_UP_CODE = "insufficient_user_authentication"
_KNOWN_MEMBERS = frozenset(
    {"type", "title", "status", "code", "detail", "field", "request_id", "instance"}
)
_MAX_SNIPPET = 300


def api_error_from_answer(
    *,
    status: int,
    reason: str,
    content_type: str | None,
    body: bytes,
    request_id_header: str | None = None,
) -> QustodyAPIError:
    """Build the error for a non-2xx answer.

    An RFC 9457 problem+json body keeps every member (unknown ones go to ``extras``);
    any other body (HTML from a proxy, plain text, a JSON array) still yields a clean
    error with ``code`` ``"http_error"`` and a short, single-line ``detail``.
    """
    reason = reason or "HTTP error"
    document: object = None
    if content_type is not None and "json" in content_type.lower():
        try:
            document = json.loads(body)
        except ValueError:  # covers JSONDecodeError and UnicodeDecodeError
            document = None
    if isinstance(document, dict):
        return _from_problem(document, status, reason, request_id_header)
    return QustodyAPIError(
        status=status,
        code="http_error",
        title=reason,
        detail=_non_json_detail(status, reason, body),
        request_id=request_id_header,
    )


def _from_problem(
    document: dict[str, object], status: int, reason: str, request_id_header: str | None
) -> QustodyAPIError:
    def text(key: str) -> str | None:
        value = document.get(key)
        return value if isinstance(value, str) and value else None

    problem_type = text("type")
    code = text("code")
    if code is None and problem_type is not None and problem_type.startswith(PROBLEM_TYPE_PREFIX):
        code = problem_type.removeprefix(PROBLEM_TYPE_PREFIX)
    title = text("title") or reason
    detail = text("detail")
    if detail is None:
        raw_detail = document.get("detail")
        detail = _snippet(json.dumps(raw_detail)) if raw_detail is not None else title
    kind = StepUpRequired if code == STEP_UP_CODE else QustodyAPIError
    return kind(
        status=status,
        code=code or "http_error",
        title=title,
        detail=detail,
        field=text("field"),
        request_id=text("request_id") or request_id_header,
        problem_type=problem_type,
        instance=text("instance"),
        extras={k: v for k, v in document.items() if k not in _KNOWN_MEMBERS},
    )


def _non_json_detail(status: int, reason: str, body: bytes) -> str:
    head = f"the gateway answered HTTP {status} {reason} without a problem+json body"
    text = body.decode("utf-8", errors="replace").strip()
    if not text or text.startswith("<"):  # empty, or an HTML page: say nothing more
        return head
    return f"{head}: {_snippet(text)}"


def _snippet(text: str) -> str:
    one_line = " ".join(text.split())
    if len(one_line) > _MAX_SNIPPET:
        return one_line[: _MAX_SNIPPET - 1] + "…"
    return one_line

"""Identifiers.

Ids are time-ordered (48-bit millisecond timestamp, then 80 random bits),
Crockford base32, with a short type prefix: ``job_01JC...``. Time order makes
cursor pagination by id stable and keeps B-tree inserts local.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import NewType

TenantId = NewType("TenantId", str)
ProjectId = NewType("ProjectId", str)
PrincipalId = NewType("PrincipalId", str)
JobId = NewType("JobId", str)
RequestId = NewType("RequestId", str)

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ID_RE = re.compile(r"^[a-z]{2,4}_[0-9A-HJKMNP-TV-Z]{26}$")


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    millis = time.time_ns() // 1_000_000
    value = (millis << 80) | secrets.randbits(80)
    return f"{prefix}_{_encode(value, 26)}"


def looks_like_id(value: str) -> bool:
    """Cheap shape check for ids taken from URLs before they reach a query."""
    return bool(_ID_RE.fullmatch(value))


def new_tenant_id() -> TenantId:
    return TenantId(new_id("ten"))


def new_project_id() -> ProjectId:
    return ProjectId(new_id("prj"))


def new_principal_id() -> PrincipalId:
    return PrincipalId(new_id("usr"))


def new_job_id() -> JobId:
    return JobId(new_id("job"))


def new_request_id() -> RequestId:
    return RequestId(new_id("req"))

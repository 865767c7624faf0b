"""Your tenant's own Cedar policies, as the gateway answers about them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from qustody.client.models import _Reader


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    """One version of a tenant's policies; ``version`` 0 with empty text: none yet.

    Listings leave ``text`` out (``None``); ask for one version to read it.
    """

    version: int
    sha256: str
    comment: str | None
    created_at: datetime | None
    created_by: str | None
    text: str | None

    @classmethod
    def from_json(cls, data: object) -> PolicyVersion:
        r = _Reader(data, "policy version")
        return cls(
            version=r.req_int("version"),
            sha256=r.req_str("sha256"),
            comment=r.opt_str("comment"),
            created_at=r.opt_time("created_at"),
            created_by=r.opt_str("created_by"),
            text=r.opt_str("text"),
        )


@dataclass(frozen=True, slots=True)
class PolicyDiff:
    """A unified diff between two versions (``""`` when they are the same)."""

    from_version: int
    to_version: int
    diff: str

    @classmethod
    def from_json(cls, data: object) -> PolicyDiff:
        r = _Reader(data, "policy diff")
        return cls(r.req_int("from_version"), r.req_int("to_version"), r.req_str("diff"))

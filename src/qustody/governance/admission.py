"""Admission: the governance checks a job passes at submission.

The jobs service builds a :class:`Submission` once the circuit is validated
and the policy allows it, then runs each :class:`AdmissionCheck` in the very
transaction that inserts the job: a quota counted or a budget reserved
commits with the job, or neither does, and two submissions racing for the
last unit of a quota serialise on the check's own locks.

Each check runs in two steps. :meth:`~AdmissionCheck.prepare` reads, before
the write transaction begins, what needs no lock (a price) and says whether
any rule applies to this submission at all; only then does
:meth:`~AdmissionCheck.admit` run inside the write transaction, lock what it
counts and decide. A tenant with no quotas, budgets or session pays for
three indexed reads and no time inside the database's write lock (on SQLite
that lock is the whole database's). A rule created between the two steps
applies from the next submission: this one is ordered before it.

A check refuses by raising a :class:`~qustody.domain.errors.QustodyError`
(a problem with a stable code, naming the limit and when it resets); the
jobs service then records the refusal in the audit log in a transaction of
its own and answers with it. A check may also add :class:`Notice` s (an 80 %
warning) and set job columns it owns (``estimated_cost``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from sqlalchemy.engine import Connection

from qustody.domain.models import BackendInfo, Principal


@dataclass(frozen=True, slots=True)
class Submission:
    """What a check knows of the job about to be accepted."""

    caller: Principal
    tenant_id: str
    project_id: str
    backend: BackendInfo
    shots: int
    num_qubits: int
    priority: int
    session_id: str | None
    at: datetime
    #: The job's state once admitted: ``queued``, or ``awaiting_approval``.
    state: str


@dataclass(frozen=True, slots=True)
class Notice:
    """Something the submitter should know though the job was accepted
    (e.g. a quota 80 % used); sent back with the job."""

    code: str
    detail: str


@dataclass(slots=True)
class Admitted:
    """What the checks add to an accepted job."""

    notices: list[Notice] = field(default_factory=list)
    #: Job columns set by checks (``estimated_cost``), by column name.
    values: dict[str, object] = field(default_factory=dict)


class AdmissionCheck(Protocol):
    def prepare(self, connection: Connection, submission: Submission, admitted: Admitted) -> bool:
        """Before the write transaction, read only: set what needs no lock
        (values such as ``estimated_cost``) and answer whether :meth:`admit`
        must run (whether any of this check's rules applies); may refuse."""
        ...

    def admit(self, connection: Connection, submission: Submission, admitted: Admitted) -> None:
        """In the write transaction: accept (optionally adding notices and
        values) or raise a QustodyError."""
        ...

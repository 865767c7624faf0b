"""Scheduling in the SDK: sessions, reservations, a backend's queue and its operations.

A session groups a hybrid loop's jobs on one backend; once one has started,
the rest run ahead of your tenant's other queued jobs::

    with client.session("aer-statevector", max_ttl_seconds=600) as session:
        for step in range(10):
            job = client.submit(qasm, backend="aer-statevector", project="research",
                                session=session.id)
            ...
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from qustody.client._transport import Transport
from qustody.client.models import _Reader


def _segment(value: str) -> str:
    return quote(value, safe="")


def _items(answer: object) -> list[object]:
    items = _Reader(answer, "list").raw("items")
    return list(items) if isinstance(items, list) else []


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    backend: str
    state: str
    expires_at: datetime | None
    started_at: datetime | None

    @classmethod
    def from_json(cls, data: object) -> Session:
        r = _Reader(data, "session")
        return cls(
            r.req_str("id"),
            r.req_str("backend"),
            r.req_str("state"),
            r.opt_time("expires_at"),
            r.opt_time("started_at"),
        )


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    backend: str
    starts_at: datetime | None
    ends_at: datetime | None
    reason: str
    cancelled_at: datetime | None

    @classmethod
    def from_json(cls, data: object) -> Reservation:
        r = _Reader(data, "reservation")
        return cls(
            r.req_str("id"),
            r.req_str("backend"),
            r.opt_time("starts_at"),
            r.opt_time("ends_at"),
            r.req_str("reason"),
            r.opt_time("cancelled_at"),
        )


@dataclass(frozen=True, slots=True)
class QueuedJob:
    id: str
    position: int
    priority: int


@dataclass(frozen=True, slots=True)
class BackendQueue:
    """Your tenant's queued jobs on a backend, and one word for the rest:
    ``paused``, ``maintenance``, ``reserved``, ``busy`` or ``normal``."""

    backend: str
    status: str
    reserved_for_you: bool
    jobs: tuple[QueuedJob, ...]

    @classmethod
    def from_json(cls, data: object) -> BackendQueue:
        r = _Reader(data, "backend queue")
        jobs = []
        listed = r.raw("jobs")
        for item in listed if isinstance(listed, list) else []:
            j = _Reader(item, "queued job")
            jobs.append(QueuedJob(j.req_str("id"), j.req_int("position"), j.req_int("priority")))
        return cls(
            r.req_str("backend"),
            r.req_str("status"),
            bool(r.raw("reserved_for_you")),
            tuple(jobs),
        )


class SchedulingMethods(Transport):
    """The :class:`~qustody.client.Client` methods for sessions, reservations and queues."""

    def open_session(self, backend: str, *, max_ttl_seconds: int | None = None) -> Session:
        body: dict[str, Any] = {"backend": backend}
        if max_ttl_seconds is not None:
            body["max_ttl_seconds"] = max_ttl_seconds
        return Session.from_json(self._json("POST", "/sessions", json=body))

    def close_session(self, session_id: str) -> Session:
        return Session.from_json(self._json("POST", f"/sessions/{_segment(session_id)}/close"))

    def get_session(self, session_id: str) -> Session:
        return Session.from_json(self._json("GET", f"/sessions/{_segment(session_id)}"))

    def list_sessions(self) -> list[Session]:
        return [Session.from_json(i) for i in _items(self._json("GET", "/sessions"))]

    @contextmanager
    def session(self, backend: str, *, max_ttl_seconds: int | None = None) -> Iterator[Session]:
        """Open a session, and close it when the block ends (like Qiskit Runtime's)."""
        opened = self.open_session(backend, max_ttl_seconds=max_ttl_seconds)
        try:
            yield opened
        finally:
            self.close_session(opened.id)

    def reserve(
        self, backend: str, *, starts_at: datetime, ends_at: datetime, reason: str
    ) -> Reservation:
        body = {
            "backend": backend,
            "starts_at": starts_at.isoformat(),
            "ends_at": ends_at.isoformat(),
            "reason": reason,
        }
        return Reservation.from_json(self._json("POST", "/reservations", json=body))

    def reservations(self) -> list[Reservation]:
        return [Reservation.from_json(i) for i in _items(self._json("GET", "/reservations"))]

    def cancel_reservation(self, reservation_id: str) -> Reservation:
        path = f"/reservations/{_segment(reservation_id)}/cancel"
        return Reservation.from_json(self._json("POST", path))

    def backend_queue(self, backend: str) -> BackendQueue:
        return BackendQueue.from_json(self._json("GET", f"/backends/{_segment(backend)}/queue"))

    def pause_backend(self, backend: str, reason: str) -> dict[str, object]:
        """Platform admins: start nothing more on ``backend`` (jobs still queue)."""
        path = f"/backends/{_segment(backend)}/pause"
        return dict(
            _Reader(self._json("POST", path, json={"reason": reason}), "state").raw_object()
        )

    def resume_backend(self, backend: str) -> dict[str, object]:
        path = f"/backends/{_segment(backend)}/resume"
        return dict(_Reader(self._json("POST", path), "state").raw_object())

    def add_maintenance(
        self, backend: str, *, starts_at: datetime, ends_at: datetime, reason: str
    ) -> dict[str, object]:
        body = {
            "starts_at": starts_at.isoformat(),
            "ends_at": ends_at.isoformat(),
            "reason": reason,
        }
        path = f"/backends/{_segment(backend)}/maintenance"
        return dict(_Reader(self._json("POST", path, json=body), "window").raw_object())

    def set_backend_concurrency(self, backend: str, max_running: int | None) -> dict[str, object]:
        path = f"/backends/{_segment(backend)}/concurrency"
        answer = self._json("PUT", path, json={"max_running": max_running})
        return dict(_Reader(answer, "state").raw_object())

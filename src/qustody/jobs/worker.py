"""The execution plane's driver: claim a queued job, run it in a sandbox, record the outcome.

Claiming is one transaction in which the scheduler
(:mod:`qustody.jobs.scheduler`: fair queuing, pauses, maintenance,
reservations, concurrency limits) picks the job, taken ``FOR UPDATE SKIP
LOCKED`` on PostgreSQL after the scheduler's own lock (on SQLite ``BEGIN
IMMEDIATE`` serialises writers), and that moves it to ``running``, stamps
this worker's id, bumps ``attempts`` and sets a lease.
The worker renews its leases while the sandbox runs. A worker that dies
(SIGKILL, power loss) stops renewing; any worker then re-queues the job when
the lease expires, so it runs again and completes exactly once.

Recording the outcome is fenced: the final UPDATE matches on
``(id, state='running', worker_id, attempts)``, so a worker that lost its
lease cannot overwrite the outcome of the attempt that replaced it, and the
result row, the state change and the audit event commit together: a result
is never half-written.

The sandbox receives only the decrypted circuit and options of one job; it
holds no database handle, no keys and no tokens.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, cast

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from qustody.audit.recorder import Actor
from qustody.domain.clock import SYSTEM_CLOCK, Clock
from qustody.domain.errors import QustodyError
from qustody.domain.ids import JobId, new_id
from qustody.domain.models import ExecutionFailure, ExecutionRequest, ExecutionResult
from qustody.domain.vocabulary import JobState
from qustody.executors.sandbox import Sandbox
from qustody.governance.budgets import settle
from qustody.jobs.notify import Notifier
from qustody.jobs.scheduler import Scheduler
from qustody.jobs.service import (
    CIRCUIT_FIELD,
    RESULT_FIELD,
    sha256_hex,
    transition,
)
from qustody.keys.service import KeyScope, KeyService, Purpose
from qustody.storage import models as m
from qustody.storage.db import Database

log = logging.getLogger(__name__)
_RANDOM = random.SystemRandom()


@dataclass(frozen=True, slots=True)
class Claimed:
    job_id: str
    tenant_id: str
    attempt: int
    request: ExecutionRequest
    queued_at: datetime | None


class Worker:
    def __init__(
        self,
        db: Database,
        keys: KeyService,
        sandbox: Sandbox,
        notifier: Notifier,
        *,
        slots: int = 1,
        lease_seconds: float = 30.0,
        idle_poll_seconds: float = 5.0,
        worker_id: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        scheduler: Scheduler | None = None,
        start_jitter_ms: int = 0,
        upkeep: Sequence[Callable[[], object]] = (),
    ) -> None:
        self._db = db
        self._keys = keys
        self._sandbox = sandbox
        self._notifier = notifier
        self._clock = clock
        #: Chooses which queued job starts next (fair queuing, pauses, reservations, caps).
        self._scheduler = scheduler or Scheduler()
        #: Queued jobs were held back at the last claim (a finishing job may free them).
        self._held_back = False
        #: A random delay of up to this many milliseconds before each claim, so the
        #: moment a job starts tells its tenant little about when others' jobs end.
        self._jitter = max(0, start_jitter_ms) / 1000.0
        #: Done as the leases are kept (recording expired sessions).
        self._upkeep = tuple(upkeep)
        self.slots = slots
        self.lease = timedelta(seconds=lease_seconds)
        self._idle_poll = idle_poll_seconds
        self.id = (
            worker_id or f"worker:{socket.gethostname()[:24]}:{os.getpid()}:{new_id('w')[-6:]}"
        )
        self._actor = Actor.system(self.id)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: dict[str, threading.Event] = {}
        self._running_lock = threading.Lock()

    # -- life cycle ---------------------------------------------------------------

    def start(self) -> None:
        self.requeue_expired()
        for n in range(self.slots):
            t = threading.Thread(target=self._slot_loop, name=f"{self.id}:slot{n}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._lease_loop, name=f"{self.id}:lease", daemon=True)
        t.start()
        self._threads.append(t)
        log.info("worker %s started with %d slot(s)", self.id, self.slots)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        with self._running_lock:
            for cancel in self._running.values():
                cancel.set()
        self._notifier.notify()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()

    def _slot_loop(self) -> None:
        while not self._stop.is_set():
            if self._jitter and self._stop.wait(_RANDOM.uniform(0.0, self._jitter)):
                break
            try:
                claimed = self.claim()
            except Exception:
                log.exception("claiming a job failed; retrying")
                self._stop.wait(1.0)
                continue
            if claimed is None:
                self._notifier.wait(self._idle_poll)
                continue
            self.run_claimed(claimed)

    def _lease_loop(self) -> None:
        period = max(0.2, self.lease.total_seconds() / 3)
        while not self._stop.wait(period):
            try:
                self.renew_leases()
                self.requeue_expired()
                for task in self._upkeep:
                    task()
            except Exception:
                log.exception("lease upkeep failed; retrying")

    # -- steps (public so tests can drive them one at a time) ---------------------

    def claim(self) -> Claimed | None:
        now = self._clock.now()
        with self._db.write() as session:
            picked = self._scheduler.pick(session, now)
            self._held_back = picked.held_back
            job = picked.job
            if job is None:
                return None
            transition(session, job, JobState.RUNNING, actor=self._actor, at=now)
            job.attempts += 1
            job.worker_id = self.id
            job.started_at = now
            job.lease_expires_at = now + self.lease
            claimed_job = (job.id, job.tenant_id, job.attempts, job.queued_at, job.backend)
            options = dict(job.options)
            shots, fmt = job.shots, job.circuit_format
        try:
            with self._db.reading() as connection:
                source = self._keys.open(connection, claimed_job[1], claimed_job[0], CIRCUIT_FIELD)
        except QustodyError as error:  # keys disabled, destroyed, or refused by their HSM
            self._finish(claimed_job[0], claimed_job[2], ExecutionFailure(error.code, error.detail))
            return None
        if source is None:
            self._finish(
                claimed_job[0],
                claimed_job[2],
                ExecutionFailure("payload_missing", "the job's circuit is missing from storage"),
            )
            return None
        seed = options.get("seed")
        request = ExecutionRequest(
            job_id=JobId(claimed_job[0]),
            backend=claimed_job[4],
            circuit=source.decode("utf-8"),
            circuit_format=cast(Literal["qasm2", "qasm3"], fmt),
            shots=shots,
            seed=int(seed) if isinstance(seed, int) else None,
            memory=bool(options.get("memory", False)),
        )
        return Claimed(claimed_job[0], claimed_job[1], claimed_job[2], request, claimed_job[3])

    def run_claimed(self, claimed: Claimed) -> None:
        cancel = threading.Event()
        with self._running_lock:
            self._running[claimed.job_id] = cancel
        try:
            outcome = self._sandbox.execute(claimed.request, cancel_event=cancel)
        except Exception as exc:  # a bug in our own executor code, not in the job
            log.exception("sandbox raised for %s", claimed.job_id)
            outcome = ExecutionFailure("executor_error", f"executor error: {type(exc).__name__}")
        finally:
            with self._running_lock:
                self._running.pop(claimed.job_id, None)
        stopped = isinstance(outcome, ExecutionFailure) and outcome.code == "cancelled"
        if stopped and self._stop.is_set():
            self._give_back(claimed)  # shutting down: the job runs again elsewhere
            return
        self._finish(claimed.job_id, claimed.attempt, outcome, queued_at=claimed.queued_at)
        if self._held_back:
            # A job held back by a concurrency limit or cap may start now, on any worker.
            self._notifier.notify()

    def _give_back(self, claimed: Claimed) -> None:
        """Re-queue a job this worker stopped on shutdown (fenced like ``_finish``)."""
        now = self._clock.now()
        with self._db.write() as session:
            job = session.scalar(
                select(m.Job).where(
                    m.Job.id == claimed.job_id,
                    m.Job.state == JobState.RUNNING.value,
                    m.Job.worker_id == self.id,
                    m.Job.attempts == claimed.attempt,
                )
            )
            if job is None or job.cancel_requested:
                return  # lost the lease, or a cancel: lease expiry settles it
            job.worker_id = None
            job.lease_expires_at = None
            job.started_at = None
            job.queued_at = now
            transition(
                session, job, JobState.QUEUED, actor=self._actor, at=now, reason="worker stopped"
            )
        self._notifier.notify()

    def _finish(
        self,
        job_id: str,
        attempt: int,
        outcome: ExecutionResult | ExecutionFailure,
        *,
        queued_at: datetime | None = None,
    ) -> None:
        now = self._clock.now()
        with self._db.write() as session:
            job = session.scalar(
                select(m.Job).where(
                    m.Job.id == job_id,
                    m.Job.state == JobState.RUNNING.value,
                    m.Job.worker_id == self.id,
                    m.Job.attempts == attempt,
                )
            )
            if job is None:
                log.warning("lost the lease on %s; its outcome is discarded", job_id)
                return
            job.finished_at = now
            job.lease_expires_at = None
            if isinstance(outcome, ExecutionResult):
                self._store_result(session, job, outcome, now, queued_at)
                transition(session, job, JobState.COMPLETED, actor=self._actor, at=now)
            elif outcome.code == "cancelled" and job.cancel_requested:
                transition(
                    session,
                    job,
                    JobState.CANCELLED,
                    actor=self._actor,
                    at=now,
                    reason="stopped while running",
                )
            else:
                job.error_code = outcome.code
                job.error_detail = outcome.detail[:2000]
                transition(
                    session,
                    job,
                    JobState.FAILED,
                    actor=self._actor,
                    at=now,
                    reason=outcome.code,
                    outcome="failure",
                )
            # The estimate reserved against its budgets becomes the charge.
            ran = outcome if isinstance(outcome, ExecutionResult) else None
            settle(
                session,
                job,
                execution_seconds=ran.execution_seconds if ran else None,
                completed=ran is not None,
                at=now,
            )
        self._notifier.finished()

    def _store_result(
        self,
        session: Session,
        job: m.Job,
        result: ExecutionResult,
        now: datetime,
        queued_at: datetime | None,
    ) -> None:
        started = job.started_at or now
        metadata: dict[str, object] = {
            "backend": result.backend,
            "shots": result.shots,
            "seed": result.seed,
            "method": result.method,
            "simulator": result.simulator_version,
            "execution_seconds": round(result.execution_seconds, 6),
            "queue_seconds": round((started - queued_at).total_seconds(), 6) if queued_at else None,
            "attempt": job.attempts,
            **result.metadata,
        }
        payload = json.dumps(
            {
                "counts": result.counts,
                "memory": result.memory,
                "clbit_registers": [list(r) for r in result.clbit_registers],
                "metadata": metadata,
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
        self._keys.seal(
            session,
            KeyScope(job.tenant_id, job.project_id, Purpose.PAYLOAD),
            job.id,
            RESULT_FIELD,
            payload,
            plaintext_sha256=sha256_hex(payload),
        )

    def renew_leases(self) -> None:
        """Extend the leases of jobs this worker runs; pass on cancel requests."""
        with self._running_lock:
            running = list(self._running)
        if not running:
            return
        now = self._clock.now()
        with self._db.write() as session:
            session.execute(
                update(m.Job)
                .where(m.Job.id.in_(running), m.Job.worker_id == self.id)
                .values(lease_expires_at=now + self.lease)
            )
            cancelled = session.scalars(
                select(m.Job.id).where(m.Job.id.in_(running), m.Job.cancel_requested.is_(True))
            ).all()
        with self._running_lock:
            for job_id in cancelled:
                if job_id in self._running:
                    self._running[job_id].set()

    def requeue_expired(self) -> int:
        """Put back jobs whose worker stopped renewing its lease."""
        now = self._clock.now()
        cancelled = 0
        with self._db.write() as session:
            stale = session.scalars(
                select(m.Job)
                .where(m.Job.state == JobState.RUNNING.value, m.Job.lease_expires_at < now)
                .with_for_update(skip_locked=True)
            ).all()
            for job in stale:
                reason = f"lease of {job.worker_id} expired"
                job.worker_id = None
                job.lease_expires_at = None
                job.started_at = None
                if job.cancel_requested:
                    job.finished_at = now
                    cancelled += 1
                    transition(
                        session, job, JobState.CANCELLED, actor=self._actor, at=now, reason=reason
                    )
                    continue
                job.queued_at = now
                transition(session, job, JobState.QUEUED, actor=self._actor, at=now, reason=reason)
            count = len(stale)
        if cancelled:
            self._notifier.finished()
        if count > cancelled:
            log.warning("re-queued %d job(s) whose worker stopped", count - cancelled)
            self._notifier.notify()
        return count

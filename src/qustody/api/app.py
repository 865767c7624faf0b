"""The app factory: the one place implementations are chosen.

``build_services(settings)`` wires storage, keys, identity, policy, the
backend registry and the jobs service; ``create_app(settings)`` puts the
HTTP API in front of them and, in embedded mode, runs a worker in-process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from sqlalchemy import select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qustody import __version__
from qustody.api import problems
from qustody.api.isolation import RequestScope
from qustody.api.ratelimit import RateLimitEdge
from qustody.api.routes import (
    accounts,
    admin,
    approvals,
    audit,
    credentials,
    elevation,
    health,
    jobs,
    keys,
    login,
    policies,
    scheduling,
    scim,
    token_exchange,
    usage,
    webhooks,
)
from qustody.api.schemas import MAX_BODY_BYTES
from qustody.api.state import Services
from qustody.audit.log import AuditLog, Checkpointer, default_origin, load_log_signer
from qustody.audit.recorder import Actor, Target, record
from qustody.domain.clock import SYSTEM_CLOCK, Clock
from qustody.domain.errors import InsecureDevelopmentWarning
from qustody.domain.ids import new_request_id
from qustody.domain.vocabulary import Action
from qustody.executors.registry import default_registry
from qustody.executors.sandbox import Sandbox, SandboxLimits
from qustody.governance.approvals import ApprovalService, ApprovalSweeper
from qustody.governance.backends import BackendControl
from qustody.governance.breakglass import BreakGlassService
from qustody.governance.budgets import BudgetCheck
from qustody.governance.elevation import ElevationService
from qustody.governance.quotas import QuotaCheck
from qustody.governance.ratelimit import RateLimits, limits_from
from qustody.governance.reservations import Reservations
from qustody.governance.sessions import SessionCheck, Sessions
from qustody.governance.usage import UsageService
from qustody.governance.webhooks import WebhookDeliverer, WebhookService
from qustody.identity.admin import AdminService
from qustody.identity.apikeys import ApiKeyService
from qustody.identity.dpop import DpopVerifier, NonceSource
from qustody.identity.external_jwt import JwtVerifier
from qustody.identity.local_accounts import LocalAccounts
from qustody.identity.oidc import OidcService, load_providers
from qustody.identity.revocation import RevocationService
from qustody.identity.scim import ScimService
from qustody.identity.tokens import SigningKey, TokenService
from qustody.identity.workload import WorkloadIdentity
from qustody.jobs.circuits import CircuitLimits, default_parser_pool, validate_circuit
from qustody.jobs.estimate import Estimator
from qustody.jobs.notify import Notifier, notifier_for
from qustody.jobs.queue import QueueReader, Scheduling
from qustody.jobs.scheduler import Scheduler
from qustody.jobs.service import JobService
from qustody.jobs.worker import Worker
from qustody.keys.config import open_key_service
from qustody.keys.maintenance import Rewrapper
from qustody.keys.service import KeyService
from qustody.keys.tenant import TenantKeys
from qustody.policy.audit_reader import AuditReader
from qustody.policy.engine import CedarPolicyEngine
from qustody.policy.guard import Guard
from qustody.policy.tenant_policies import TenantPolicies, TenantPolicyLoader
from qustody.settings import Settings, load_settings
from qustody.storage.db import Database
from qustody.storage.models import AUDIT_EVENTS

log = logging.getLogger("qustody")


@dataclass(slots=True)
class Runtime:
    """Everything a process built from settings owns, for orderly shutdown."""

    services: Services
    keys: KeyService
    notifier: Notifier
    #: The time every governance rule reads (a ManualClock in tests).
    clock: Clock = SYSTEM_CLOCK

    def make_checkpointer(self) -> Checkpointer:
        """The thread that signs checkpoints as the audit log grows (run by workers)."""
        settings = self.services.settings
        return Checkpointer(self.services.audit_log, settings.audit_checkpoint_seconds)

    def make_deliverer(self) -> WebhookDeliverer:
        """The thread that delivers alerts to webhook endpoints (run by workers)."""
        settings = self.services.settings
        assert self.services.webhooks is not None  # build_runtime sets it
        return WebhookDeliverer(self.services.webhooks, settings.webhook_poll_seconds)

    def make_approval_sweeper(self) -> ApprovalSweeper:
        """The thread that expires approval requests and records ended grants (workers)."""
        assert self.services.approvals is not None  # build_runtime sets it
        return ApprovalSweeper(self.services.approvals)

    def make_rewrapper(self) -> Rewrapper:
        """The thread that moves data keys off retiring key versions (run by workers)."""
        return Rewrapper(self.keys, self.services.settings.rewrap_seconds)

    def make_worker(self, *, slots: int | None = None) -> tuple[Worker, Sandbox]:
        settings = self.services.settings
        sandbox = Sandbox(
            SandboxLimits(
                cpu_seconds=settings.sandbox.cpu_seconds,
                memory_bytes=settings.sandbox.memory_mb * 1024 * 1024,
                wall_seconds=settings.sandbox.wall_seconds,
            ),
            registry=self.services.registry,
        )
        worker = Worker(
            self.services.db,
            self.keys,
            sandbox,
            self.notifier,
            slots=slots or settings.worker_slots,
            lease_seconds=settings.lease_seconds,
            idle_poll_seconds=settings.idle_poll_seconds,
            clock=self.clock,
            scheduler=Scheduler(default_concurrency=settings.backend_concurrency),
            start_jitter_ms=settings.start_jitter_ms,
            upkeep=[self.services.scheduling.sessions.expire_due]
            if self.services.scheduling
            else [],
        )
        return worker, sandbox

    def close(self) -> None:
        self.notifier.close()
        self.services.jwt_verifier.close()
        self.services.db.dispose()


def build_runtime(
    settings: Settings, *, listen: bool = False, clock: Clock = SYSTEM_CLOCK
) -> Runtime:
    settings.check()
    development = settings.mode != "production"
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    db = Database(settings.resolved_database_url)
    db.migrate()
    db.check_isolation(production=not development)
    keys = open_key_service(settings, db)
    tokens = TokenService(
        db,
        SigningKey.load(settings.resolved_signing_key_file, create=development),
        issuer=settings.issuer,
        audience=settings.audience,
        max_ttl_seconds=settings.token_max_ttl_seconds,
        clock=clock,
    )
    engine = CedarPolicyEngine(
        step_up=settings.step_up_enforced, approvals=settings.approvals_enforced
    )
    if not settings.approvals_enforced:
        warnings.warn(
            "The platform's approval policies are off (development mode): production QPU jobs, "
            "restricted exports, key rotation and policy changes need no approvers. Set "
            "QUSTODY_APPROVALS=true to hold them for approval, as production does.",
            InsecureDevelopmentWarning,
            stacklevel=2,
        )
    if not settings.step_up_enforced:
        warnings.warn(
            "MFA step-up is off (development mode): privileged actions take any valid token. "
            "Set QUSTODY_STEP_UP=true to require a fresh multi-factor sign-in, as production does.",
            InsecureDevelopmentWarning,
            stacklevel=2,
        )
    policy_loader = TenantPolicyLoader(db, engine)
    guard = Guard(engine, db, tenant_policies=policy_loader)
    admin_service = AdminService(db, guard, tokens)
    # External JWTs (OIDC ID tokens, CI tokens): plain http only to loopback, in development.
    verifier = JwtVerifier(
        allow_insecure_loopback=development,
        leeway_seconds=settings.jwt_leeway_seconds,
        min_refresh_seconds=settings.jwks_min_refresh_seconds,
    )
    registry = default_registry()
    notifier = notifier_for(
        settings.resolved_database_url, listen=listen, data_dir=settings.data_dir
    )
    jobs_service = JobService(
        db,
        guard,
        keys,
        registry,
        admin_service,
        notifier,
        validate_circuit,
        CircuitLimits(),
        clock=clock,
    )
    # Quotas before budgets: each locks its rows, always in this order.
    jobs_service.admission.extend([QuotaCheck(), BudgetCheck()])
    jobs_service.admission.append(SessionCheck())
    signer = load_log_signer(
        settings.resolved_audit_key_file,
        settings.audit_origin or None,
        create=development,
        new_origin=default_origin(settings.public_url),
    )
    audit_log = AuditLog(db, signer)
    audit = AuditReader(db, guard, audit_log)
    _record_configuration(db, settings)
    services = Services(
        settings,
        db,
        tokens,
        admin_service,
        jobs_service,
        registry,
        audit_log,
        audit,
        TenantKeys(db, guard, keys),
        policies=TenantPolicies(db, guard, engine, policy_loader),
        jwt_verifier=verifier,
        oidc=OidcService(
            db,
            tokens,
            verifier,
            load_providers(settings.oidc_providers_file, allow_insecure_loopback=development)
            if settings.oidc_providers_file
            else (),
            public_url=settings.public_url,
        ),
        dpop=DpopVerifier(
            db,
            nonces=NonceSource(tokens.derived_secret("qustody dpop nonces"))
            if settings.dpop_nonces
            else None,
        ),
        api_keys=ApiKeyService(db, guard, max_days=settings.api_key_max_days, clock=clock),
        workload=WorkloadIdentity(db, guard, tokens, verifier),
        revocation=RevocationService(db, guard),
        scim=ScimService(db, guard, base_url=f"{settings.public_url.rstrip('/')}/scim/v2"),
        local_accounts=LocalAccounts(
            db, guard, tokens, keys, enabled=settings.local_accounts_enabled
        ),
        rate_limits=RateLimits(
            db,
            clock,
            limits_from(settings),
            processes=settings.api_processes,
            max_buckets=settings.rate_limit_max_buckets,
        ),
        webhooks=WebhookService(
            db,
            guard,
            keys,
            clock,
            production=not development,
            timeout_seconds=settings.webhook_timeout_seconds,
            max_attempts=settings.webhook_max_attempts,
        ),
    )
    services.scheduling = Scheduling(
        backends=BackendControl(db, guard, registry.names, clock=clock, on_change=notifier.notify),
        reservations=Reservations(
            db, guard, registry.names, max_hours=settings.reservation_max_hours, clock=clock
        ),
        sessions=Sessions(
            db, guard, registry.names, max_ttl_seconds=settings.session_max_ttl_seconds, clock=clock
        ),
        queue=QueueReader(db, guard, registry, busy_depth=settings.busy_queue_depth, clock=clock),
    )
    approval_service = ApprovalService(db, guard, clock=clock, on_queued=notifier.notify)
    guard.approvals = approval_service
    services.approvals = approval_service
    services.elevations = ElevationService(
        db,
        guard,
        admin_service,
        approval_service,
        max_seconds=settings.elevation_max_seconds,
        clock=clock,
    )
    services.breakglass = BreakGlassService(
        db, guard, max_seconds=settings.breakglass_max_seconds, clock=clock
    )
    services.usage = UsageService(db, guard, admin_service, registry, clock=clock)
    services.estimates = Estimator(
        db,
        guard,
        registry,
        admin_service,
        validate_circuit,
        CircuitLimits(),
        jobs_service.admission,
        clock=clock,
    )
    return Runtime(services, keys, notifier, clock)


def _record_configuration(db: Database, settings: Settings) -> None:
    """Record ``config:load`` when a process starts with settings unlike the last recorded.

    The event holds the SHA-256 of the settings (credentials in the database
    URL removed first) and the mode, never the values: an auditor can match a
    configuration they hold against the log, and sees every change.
    """
    values = settings.environment()
    if "QUSTODY_DATABASE_URL" in values:
        values["QUSTODY_DATABASE_URL"] = _without_credentials(values["QUSTODY_DATABASE_URL"])
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
    with db.writing() as connection:
        last = connection.execute(
            select(AUDIT_EVENTS.c.payload_sha256)
            .where(AUDIT_EVENTS.c.event_type == Action.CONFIG_LOAD.value)
            .order_by(AUDIT_EVENTS.c.seq.desc())
            .limit(1)
        ).scalar()
        if last != digest:
            record(
                connection,
                Action.CONFIG_LOAD,
                actor=Actor.system("gateway"),
                target=Target("platform", "configuration"),
                payload_sha256=digest,
                reason=f"mode={settings.mode}",
            )


def _without_credentials(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rsplit('@', 1)[1]}" if "@" in rest else url


_SECURITY_HEADERS = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff")]


class RequestId:
    """Give each request an id (``request.state.request_id``, ``X-Request-Id``).

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` costs a task
    and a stream per request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        extra = [(b"x-request-id", request_id.encode()), *_SECURITY_HEADERS]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class WorkerProcess:
    """The embedded worker: ``qustody worker`` as a child of the API process.

    A process of its own, so executing jobs (claiming, decrypting, the
    sandbox's process management) never holds the API's interpreter lock. It
    is told to exit when its parent dies (Linux ``PR_SET_PDEATHSIG``), and a
    worker that stops gives its running jobs back to the queue.
    """

    def __init__(self, settings: Settings) -> None:
        # The parent's environment (QUSTODY_MASTER_KEY, if the keyring's master
        # key comes from there), with the settings this app was built with on top.
        self._env = {**os.environ, **settings.environment()}
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "qustody.cli", "worker", "--exit-with-parent"],
            env=self._env,
        )

    def stop(self, timeout: float = 30.0) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes before the app reads them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _too_large(send, self.limit)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge:
            await _too_large(send, self.limit)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps(
        {
            "type": "urn:qustody:problem:request_too_large",
            "title": "Request too large",
            "status": 413,
            "code": "request_too_large",
            "detail": f"the request body is larger than {limit} bytes; send a smaller circuit.",
            "field": "body",
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings, *, runtime: Runtime | None = None) -> FastAPI:
    """The HTTP API. With ``settings.embedded_worker`` it also runs a worker process."""
    rt = runtime or build_runtime(settings, listen=True)  # held waits hear jobs finish

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Start the circuit parsers now, not on the first submission.
        default_parser_pool().start()
        worker = WorkerProcess(settings) if settings.embedded_worker else None
        if worker is not None:
            worker.start()
        try:
            yield
        finally:
            if worker is not None:
                worker.stop()
            if runtime is None:
                rt.close()

    app = FastAPI(
        title="Qustody",
        version=__version__,
        summary="A security gateway for quantum jobs",
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.services = rt.services
    problems.install(app)
    for router in (health.router, jobs.router, admin.router, audit.router, keys.router):
        app.include_router(router)
    app.include_router(policies.router)
    app.include_router(login.router)
    app.include_router(accounts.router)
    app.include_router(credentials.router)
    app.include_router(token_exchange.router)
    app.include_router(usage.router)
    app.include_router(webhooks.router)
    app.include_router(scheduling.router)
    app.include_router(approvals.router)
    app.include_router(elevation.router)
    app.mount(scim.PREFIX, scim.create_scim_app(rt.services))

    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(RateLimitEdge, services=rt.services)  # before any work for the request
    app.add_middleware(RequestScope)  # no tenant's rows until the caller is known
    app.add_middleware(RequestId)  # outermost: every answer carries its id
    if settings.mode != "production":
        warnings.warn(
            "Qustody is running in development mode: local keyring, SQLite allowed, "
            "tokens signed with a key created on this machine. Do not use it for real data.",
            InsecureDevelopmentWarning,
            stacklevel=2,
        )
    return app


def app_from_environment() -> FastAPI:
    """The app of one API process of ``qustody serve --api-processes N``.

    ``serve`` prepares the database and starts the embedded worker once, then
    starts N processes that each call this with the settings it put in the
    environment (``embedded_worker`` off: one worker serves them all).
    """
    return create_app(load_settings())

"""The services an app was built with, reachable from a request."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from qustody.audit.log import AuditLog
from qustody.executors.registry import BackendRegistry
from qustody.governance.approvals import ApprovalService
from qustody.governance.breakglass import BreakGlassService
from qustody.governance.elevation import ElevationService
from qustody.governance.ratelimit import RateLimits
from qustody.governance.usage import UsageService
from qustody.governance.webhooks import WebhookService
from qustody.identity.admin import AdminService
from qustody.identity.apikeys import ApiKeyService
from qustody.identity.dpop import DpopVerifier
from qustody.identity.external_jwt import JwtVerifier
from qustody.identity.local_accounts import LocalAccounts
from qustody.identity.oidc import OidcService
from qustody.identity.revocation import RevocationService
from qustody.identity.scim import ScimService
from qustody.identity.tokens import TokenService
from qustody.identity.workload import WorkloadIdentity
from qustody.jobs.estimate import Estimator
from qustody.jobs.queue import Scheduling
from qustody.jobs.service import JobService
from qustody.keys.tenant import TenantKeys
from qustody.policy.audit_reader import AuditReader
from qustody.policy.tenant_policies import TenantPolicies
from qustody.settings import Settings
from qustody.storage.db import Database


@dataclass(slots=True)
class Services:
    settings: Settings
    db: Database
    tokens: TokenService
    admin: AdminService
    jobs: JobService
    registry: BackendRegistry
    audit_log: AuditLog
    audit: AuditReader
    tenant_keys: TenantKeys
    policies: TenantPolicies
    jwt_verifier: JwtVerifier
    oidc: OidcService
    scim: ScimService
    local_accounts: LocalAccounts
    dpop: DpopVerifier
    api_keys: ApiKeyService
    workload: WorkloadIdentity
    revocation: RevocationService
    #: Approvals, just-in-time elevation and break-glass (docs/approvals.md).
    approvals: ApprovalService | None = None
    elevations: ElevationService | None = None
    breakglass: BreakGlassService | None = None
    #: Token buckets (qustody.api.ratelimit); None: no limits (tools, some tests).
    rate_limits: RateLimits | None = None
    webhooks: WebhookService | None = None
    #: Backend operations, reservations, sessions and queue views (docs/scheduling.md).
    scheduling: Scheduling | None = None
    #: Usage, quotas, budgets and prices (docs/quotas-and-budgets.md).
    usage: UsageService | None = None
    estimates: Estimator | None = None


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services

"""The demo tenant that ``qustody serve --demo`` sets up (development only).

It goes through the same services, policy checks and audit events as the
API: the platform admin creates tenant ``demo``; its admin creates project
``research`` and makes ``alice`` a developer there.
"""

from __future__ import annotations

import secrets
import warnings

from sqlalchemy import select

from qustody.api.state import Services
from qustody.domain.errors import ConfigurationError, InsecureDevelopmentWarning
from qustody.domain.ids import new_request_id
from qustody.domain.models import Principal, RequestContext
from qustody.domain.vocabulary import DataClass, Role
from qustody.identity.admin import PLATFORM_TENANT
from qustody.storage import models as m

DEMO_TENANT = "demo"
DEMO_ADMIN = "demo-admin"
DEMO_PROJECT = "research"
DEMO_DEVELOPER = "alice"
PLATFORM_ADMIN = "admin"


def ensure_demo(services: Services) -> list[str]:
    """Create what is missing of the demo setup; return lines to print (with tokens)."""
    if services.settings.mode == "production":
        raise ConfigurationError(
            "the demo tenant is a development convenience; refused in production"
        )
    warnings.warn(
        "demo tenant enabled: for trying Qustody out, not for real data",
        InsecureDevelopmentWarning,
        stacklevel=2,
    )
    admin = services.admin
    context = RequestContext(
        request_id=new_request_id(), client_addr="local", user_agent="qustody serve --demo"
    )
    with services.db.read() as session:
        platform = session.scalar(select(m.Tenant).where(m.Tenant.name == PLATFORM_TENANT))
        demo = session.scalar(select(m.Tenant).where(m.Tenant.name == DEMO_TENANT))
    if platform is None:
        admin.init_platform(PLATFORM_ADMIN)
    if demo is None:
        root = services.tokens.authenticate(admin.operator_token(PLATFORM_ADMIN).token)
        admin.create_tenant(root, context, DEMO_TENANT, DEMO_ADMIN)
    tenant_admin = services.tokens.authenticate(admin.operator_token(DEMO_ADMIN, DEMO_TENANT).token)
    with services.db.read() as session:
        has_project = session.scalar(
            select(m.Project).where(
                m.Project.tenant_id == tenant_admin.tenant_id, m.Project.name == DEMO_PROJECT
            )
        )
    if has_project is None:
        admin.create_project(tenant_admin, context, DEMO_PROJECT, DataClass.INTERNAL)
    admin.add_member(
        tenant_admin,
        context,
        principal_name=DEMO_DEVELOPER,
        role=Role.DEVELOPER,
        project_ref=DEMO_PROJECT,
    )
    admin_token = admin.operator_token(DEMO_ADMIN, DEMO_TENANT)
    dev_token = admin.operator_token(DEMO_DEVELOPER, DEMO_TENANT)
    minutes = services.settings.token_max_ttl_seconds // 60
    return [
        f"Demo tenant '{DEMO_TENANT}', project '{DEMO_PROJECT}'. Tokens live {minutes} minutes;",
        "get fresh ones with `qustody admin token --tenant demo --principal alice`.",
        f"  tenant admin ({DEMO_ADMIN}):  export QUSTODY_TOKEN={admin_token.token}",
        f"  developer ({DEMO_DEVELOPER}):       export QUSTODY_TOKEN={dev_token.token}",
        *_demo_password(services, tenant_admin, context),
        "Try: qustody submit examples/ghz.qasm --backend aer-statevector "
        f"--project {DEMO_PROJECT} --wait",
    ]


def _demo_password(
    services: Services, tenant_admin: Principal, context: RequestContext
) -> list[str]:
    """A local-account password for the demo admin, made and shown once (when
    local accounts are on): `qustody account sign-in` then works without the operator."""
    if not services.local_accounts.enabled:
        return []
    with services.db.read() as session:
        exists = session.get(m.LocalAccount, tenant_admin.id)
    if exists is not None:
        return [
            f"  {DEMO_ADMIN} signs in with `qustody account sign-in --tenant {DEMO_TENANT} "
            f"--username {DEMO_ADMIN}` (the password shown when the demo was made)."
        ]
    password = secrets.token_urlsafe(18)
    services.local_accounts.set_password(tenant_admin, context, "me", password)
    return [
        f"  {DEMO_ADMIN} also has a local account (development only); its password, shown once:",
        f"      {password}",
        f"    qustody account sign-in --tenant {DEMO_TENANT} --username {DEMO_ADMIN}",
    ]

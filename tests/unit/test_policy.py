"""The Cedar policy engine, with the shipped policies, against real cedarpy.

The matrices below are the authorization contract: every role against every
action, in its own tenant and against another tenant's resources.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import cedarpy
import pytest

from qustody.domain.errors import QustodyError
from qustody.domain.ids import PrincipalId, ProjectId, TenantId
from qustody.domain.models import Decision, Principal, Resource
from qustody.domain.vocabulary import Action, DataClass, Role
from qustody.policy import engine as engine_module
from qustody.policy.engine import CedarPolicyEngine, default_policies, default_schema
from qustody.policy.errors import PolicyError
from qustody.policy.interfaces import PolicyEngine

PLATFORM = TenantId("ten_platform")
TENANT_A = TenantId("ten_a")
TENANT_B = TenantId("ten_b")
PROJECT_1 = ProjectId("prj_1")  # in tenant A; the project roles below are held here
PROJECT_2 = ProjectId("prj_2")  # in tenant A; nobody but the tenant admin holds a role here
PROJECT_B = ProjectId("prj_b")  # in tenant B

ROLES = ("platform-admin", "tenant-admin", "developer", "viewer", "nobody")

#: What each role may do to resources of its own tenant (and its own project).
ALLOWED: Mapping[str, frozenset[Action]] = {
    "platform-admin": frozenset(
        {
            Action.BREAKGLASS_INVOKE,
            Action.BREAKGLASS_LIST,
            Action.BREAKGLASS_REVIEW,
            Action.TENANT_CREATE,
            Action.TENANT_LIST,
            Action.TENANT_READ,
            Action.BACKEND_LIST,
            Action.BACKEND_READ,
            Action.TOKEN_ISSUE,
            Action.TOKEN_REVOKE,
            Action.AUDIT_CHECKPOINT,
            Action.ACCOUNT_SET,
            Action.BACKEND_PAUSE,
            Action.BACKEND_RESUME,
            Action.BACKEND_MAINTAIN,
            Action.QUOTA_SET,
            Action.COST_SET,
        }
    ),
    "tenant-admin": frozenset(
        {
            Action.APPROVAL_REQUEST,
            Action.APPROVAL_LIST,
            Action.APPROVAL_READ,
            Action.APPROVAL_APPROVE,
            Action.APPROVAL_DENY,
            Action.ELEVATION_REQUEST,
            Action.ELEVATION_LIST,
            Action.ELEVATION_REVOKE,
            Action.USAGE_READ,
            Action.BUDGET_SET,
            Action.BUDGET_READ,
            Action.JOB_ESTIMATE,
            Action.QUEUE_READ,
            Action.RESERVATION_CREATE,
            Action.RESERVATION_LIST,
            Action.RESERVATION_CANCEL,
            Action.SESSION_CREATE,
            Action.SESSION_READ,
            Action.SESSION_CLOSE,
            Action.TENANT_READ,
            Action.PROJECT_CREATE,
            Action.PROJECT_LIST,
            Action.PROJECT_READ,
            Action.MEMBER_ADD,
            Action.MEMBER_LIST,
            Action.TOKEN_ISSUE,
            Action.TOKEN_REVOKE,
            Action.BACKEND_LIST,
            Action.BACKEND_READ,
            Action.JOB_SUBMIT,
            Action.JOB_LIST,
            Action.JOB_READ,
            Action.JOB_CANCEL,
            Action.RESULT_READ,
            Action.AUDIT_READ,
            Action.AUDIT_EXPORT,
            Action.KEY_LIST,
            Action.KEY_ROTATE,
            Action.SECRET_SET,
            Action.SECRET_LIST,
            Action.SECRET_DELETE,
            Action.EXPORTKEY_SET,
            Action.EXPORTKEY_READ,
            Action.TRUSTRULE_SET,
            Action.TRUSTRULE_LIST,
            Action.TRUSTRULE_DELETE,
            Action.APIKEY_LIST,
            Action.APIKEY_REVOKE,
            Action.USER_CREATE,
            Action.USER_READ,
            Action.USER_LIST,
            Action.USER_UPDATE,
            Action.USER_DELETE,
            Action.GROUP_CREATE,
            Action.GROUP_READ,
            Action.GROUP_LIST,
            Action.GROUP_UPDATE,
            Action.GROUP_DELETE,
            Action.POLICY_READ,
            Action.POLICY_SET,
            Action.APIKEY_CREATE,
            Action.ACCOUNT_SET,
            Action.WEBHOOK_SET,
            Action.WEBHOOK_LIST,
            Action.WEBHOOK_DELETE,
        }
    ),
    "developer": frozenset(
        {
            Action.APPROVAL_REQUEST,
            Action.APPROVAL_LIST,
            Action.ELEVATION_REQUEST,
            Action.ELEVATION_LIST,
            Action.USAGE_READ,
            Action.JOB_ESTIMATE,
            Action.QUEUE_READ,
            Action.RESERVATION_LIST,
            Action.SESSION_CREATE,
            Action.SESSION_READ,
            Action.SESSION_CLOSE,
            Action.TENANT_READ,
            Action.PROJECT_LIST,
            Action.PROJECT_READ,
            Action.TOKEN_ISSUE,
            Action.TOKEN_REVOKE,
            Action.BACKEND_LIST,
            Action.BACKEND_READ,
            Action.JOB_SUBMIT,
            Action.JOB_LIST,
            Action.JOB_READ,
            Action.JOB_CANCEL,
            Action.RESULT_READ,
            Action.ACCOUNT_SET,
        }
    ),
    "viewer": frozenset(
        {
            Action.APPROVAL_REQUEST,
            Action.APPROVAL_LIST,
            Action.ELEVATION_REQUEST,
            Action.ELEVATION_LIST,
            Action.USAGE_READ,
            Action.QUEUE_READ,
            Action.RESERVATION_LIST,
            Action.SESSION_READ,
            Action.SESSION_CLOSE,
            Action.TENANT_READ,
            Action.PROJECT_LIST,
            Action.PROJECT_READ,
            Action.TOKEN_ISSUE,
            Action.TOKEN_REVOKE,
            Action.BACKEND_LIST,
            Action.BACKEND_READ,
            Action.JOB_LIST,
            Action.JOB_READ,
            Action.RESULT_READ,
            Action.ACCOUNT_SET,
        }
    ),
    "nobody": frozenset(),
}

#: The permit that allows, per role and action (the matrix checks these ids).
ALLOWED_BY: Mapping[tuple[str, Action], str] = {
    ("platform-admin", Action.BREAKGLASS_INVOKE): "breakglass-operators",
    ("platform-admin", Action.BREAKGLASS_LIST): "breakglass-operators",
    ("platform-admin", Action.BREAKGLASS_REVIEW): "breakglass-review",
    ("tenant-admin", Action.APPROVAL_READ): "approval-tenant-admins-decide",
    ("tenant-admin", Action.APPROVAL_APPROVE): "approval-tenant-admins-decide",
    ("tenant-admin", Action.APPROVAL_DENY): "approval-tenant-admins-decide",
    ("tenant-admin", Action.ELEVATION_REVOKE): "elevation-revoke",
    ("platform-admin", Action.TENANT_CREATE): "platform-admin-tenant-catalogue",
    ("platform-admin", Action.TENANT_LIST): "platform-admin-tenant-catalogue",
    ("platform-admin", Action.TENANT_READ): "platform-admin-tenant-read",
    ("tenant-admin", Action.PROJECT_CREATE): "tenant-admin-tenant",
    ("tenant-admin", Action.MEMBER_ADD): "tenant-admin-tenant",
    ("tenant-admin", Action.MEMBER_LIST): "tenant-admin-tenant",
    ("tenant-admin", Action.PROJECT_READ): "tenant-admin-projects",
    ("tenant-admin", Action.JOB_LIST): "tenant-admin-projects",
    ("tenant-admin", Action.JOB_SUBMIT): "tenant-admin-projects",
    ("tenant-admin", Action.JOB_READ): "tenant-admin-jobs",
    ("tenant-admin", Action.JOB_CANCEL): "tenant-admin-jobs",
    ("tenant-admin", Action.RESULT_READ): "tenant-admin-jobs",
    ("tenant-admin", Action.AUDIT_READ): "tenant-admin-tenant",
    ("tenant-admin", Action.AUDIT_EXPORT): "tenant-admin-tenant",
    ("tenant-admin", Action.KEY_LIST): "tenant-admin-tenant",
    ("tenant-admin", Action.KEY_ROTATE): "tenant-admin-tenant",
    ("tenant-admin", Action.SECRET_SET): "tenant-admin-tenant",
    ("tenant-admin", Action.WEBHOOK_SET): "tenant-admin-webhooks",
    ("tenant-admin", Action.WEBHOOK_LIST): "tenant-admin-webhooks",
    ("tenant-admin", Action.WEBHOOK_DELETE): "tenant-admin-webhooks",
    ("tenant-admin", Action.SECRET_LIST): "tenant-admin-tenant",
    ("tenant-admin", Action.SECRET_DELETE): "tenant-admin-tenant",
    ("tenant-admin", Action.EXPORTKEY_SET): "tenant-admin-tenant",
    ("tenant-admin", Action.EXPORTKEY_READ): "tenant-admin-tenant",
    ("tenant-admin", Action.TRUSTRULE_SET): "tenant-admin-identity",
    ("tenant-admin", Action.TRUSTRULE_LIST): "tenant-admin-identity",
    ("tenant-admin", Action.TRUSTRULE_DELETE): "tenant-admin-identity",
    ("tenant-admin", Action.APIKEY_LIST): "tenant-admin-identity",
    ("tenant-admin", Action.APIKEY_REVOKE): "tenant-admin-identity",
    ("tenant-admin", Action.USER_CREATE): "tenant-admin-identity",
    ("tenant-admin", Action.USER_READ): "tenant-admin-identity",
    ("tenant-admin", Action.USER_LIST): "tenant-admin-identity",
    ("tenant-admin", Action.USER_UPDATE): "tenant-admin-identity",
    ("tenant-admin", Action.USER_DELETE): "tenant-admin-identity",
    ("tenant-admin", Action.GROUP_CREATE): "tenant-admin-identity",
    ("tenant-admin", Action.GROUP_READ): "tenant-admin-identity",
    ("tenant-admin", Action.GROUP_LIST): "tenant-admin-identity",
    ("tenant-admin", Action.GROUP_UPDATE): "tenant-admin-identity",
    ("tenant-admin", Action.GROUP_DELETE): "tenant-admin-identity",
    ("tenant-admin", Action.POLICY_READ): "tenant-admin-identity",
    ("tenant-admin", Action.POLICY_SET): "tenant-admin-identity",
    ("tenant-admin", Action.APIKEY_CREATE): "tenant-admin-principal-credentials",
    ("tenant-admin", Action.ACCOUNT_SET): "tenant-admin-principal-credentials",
    ("platform-admin", Action.AUDIT_CHECKPOINT): "platform-admin-audit",
    ("developer", Action.PROJECT_READ): "developer-project",
    ("developer", Action.JOB_SUBMIT): "developer-project",
    ("developer", Action.JOB_LIST): "developer-project",
    ("developer", Action.JOB_READ): "developer-jobs",
    ("developer", Action.JOB_CANCEL): "developer-jobs",
    ("developer", Action.RESULT_READ): "developer-jobs",
    ("viewer", Action.PROJECT_READ): "viewer-project",
    ("viewer", Action.JOB_LIST): "viewer-project",
    ("viewer", Action.JOB_READ): "viewer-jobs",
    ("viewer", Action.RESULT_READ): "viewer-jobs",
    ("platform-admin", Action.QUOTA_SET): "platform-admin-quotas",
    ("platform-admin", Action.COST_SET): "platform-admin-prices",
    ("tenant-admin", Action.BUDGET_SET): "tenant-admin-tenant",
    ("tenant-admin", Action.BUDGET_READ): "tenant-admin-tenant",
    ("tenant-admin", Action.JOB_ESTIMATE): "tenant-admin-projects",
    ("developer", Action.JOB_ESTIMATE): "developer-project",
    ("platform-admin", Action.BACKEND_PAUSE): "platform-admin-backend-operations",
    ("platform-admin", Action.BACKEND_RESUME): "platform-admin-backend-operations",
    ("platform-admin", Action.BACKEND_MAINTAIN): "platform-admin-backend-operations",
    ("tenant-admin", Action.RESERVATION_CREATE): "tenant-admin-reservations",
    ("tenant-admin", Action.RESERVATION_CANCEL): "tenant-admin-reservations",
    ("tenant-admin", Action.SESSION_READ): "tenant-admin-sessions",
    ("tenant-admin", Action.SESSION_CLOSE): "tenant-admin-sessions",
}
_MEMBER_PERMITS: Mapping[Action, str] = {
    Action.APPROVAL_REQUEST: "approval-members-ask",
    Action.APPROVAL_LIST: "approval-members-ask",
    Action.ELEVATION_REQUEST: "approval-members-ask",
    Action.ELEVATION_LIST: "approval-members-ask",
    Action.PROJECT_LIST: "member-own-tenant",
    Action.BACKEND_LIST: "member-backend-catalogue",
    Action.BACKEND_READ: "member-backend-read",
    Action.TOKEN_ISSUE: "member-own-principal-tokens",
    Action.TOKEN_REVOKE: "member-own-tokens",
    Action.ACCOUNT_SET: "member-own-account",
    Action.USAGE_READ: "member-own-tenant",
    Action.QUEUE_READ: "member-backend-queue",
    Action.RESERVATION_LIST: "member-reservations",
    Action.SESSION_CREATE: "submitter-own-sessions",
    Action.SESSION_READ: "member-own-sessions",
    Action.SESSION_CLOSE: "member-own-sessions",
}


def expected_permits(role: str, action: Action) -> set[str]:
    permits = set()
    if (role, action) in ALLOWED_BY:
        permits.add(ALLOWED_BY[role, action])
    if action in _MEMBER_PERMITS:
        permits.add(_MEMBER_PERMITS[action])
    if action is Action.TENANT_READ and role in ("tenant-admin", "developer", "viewer"):
        permits.add("member-own-tenant")
    if action is Action.TENANT_READ and role == "tenant-admin":
        permits.add("tenant-admin-tenant")
    if action is Action.PROJECT_LIST and role == "tenant-admin":
        permits.add("tenant-admin-tenant")
    if action is Action.TOKEN_ISSUE and role == "tenant-admin":
        permits.add("tenant-admin-principal-tokens")
    if action is Action.TOKEN_REVOKE and role == "tenant-admin":
        permits.add("tenant-admin-tokens")
    return permits


def principal(
    role: str,
    *,
    tenant: TenantId | None = None,
    scopes: frozenset[str] = frozenset({"*"}),
    ident: str | None = None,
    mfa: bool = True,
    kind: Literal["user", "workload", "operator"] = "user",
) -> Principal:
    """A principal holding ``role``; by default a person who signed in a
    minute ago with a second factor (so step-up forbids do not apply)."""
    tenant_roles: frozenset[Role] = frozenset()
    project_roles: tuple[tuple[ProjectId, Role], ...] = ()
    if role == "platform-admin":
        tenant_roles = frozenset({Role.PLATFORM_ADMIN})
    elif role == "tenant-admin":
        tenant_roles = frozenset({Role.TENANT_ADMIN})
    elif role in ("developer", "viewer"):
        project_roles = ((PROJECT_1, Role(role)),)
    home = tenant or (PLATFORM if role == "platform-admin" else TENANT_A)
    return Principal(
        id=PrincipalId(ident or f"usr_{role}"),
        tenant_id=home,
        name=role,
        kind=kind,
        token_id="tok_current",
        scopes=scopes,
        auth_method="oidc",
        tenant_roles=tenant_roles,
        project_roles=project_roles,
        auth_strength="aal2" if mfa else "aal1",
        acr="mfa" if mfa else None,
        amr=frozenset({"pwd", "otp"} if mfa else {"pwd"}),
        # Signed in a minute before the call: the step-up rules' 900 s never
        # run out, however long the suite takes to get here.
        auth_time=datetime.now(UTC) - timedelta(minutes=1),
    )


def resource_for(
    action: Action,
    tenant: TenantId,
    owner: PrincipalId,
    project: ProjectId = PROJECT_1,
) -> Resource:
    """The resource each action aims at (as the schema's ``appliesTo`` says)."""
    match action:
        case (
            Action.APPROVAL_READ
            | Action.APPROVAL_APPROVE
            | Action.APPROVAL_DENY
            | Action.APPROVAL_CANCEL
            | Action.APPROVAL_EXPIRE
            | Action.APPROVAL_USE
        ):
            # Someone else's request (one's own is never one's to approve).
            return Resource(
                type="approval", id="apr_1", tenant_id=tenant, owner_id=PrincipalId("usr_other")
            )
        case (
            Action.ELEVATION_ACTIVATE
            | Action.ELEVATION_REVOKE
            | Action.ELEVATION_EXPIRE
            | Action.BREAKGLASS_REVIEW
        ):
            return Resource(
                type="grant", id="grt_1", tenant_id=tenant, owner_id=PrincipalId("usr_other")
            )
        case (
            Action.APPROVAL_REQUEST
            | Action.APPROVAL_LIST
            | Action.ELEVATION_REQUEST
            | Action.ELEVATION_LIST
            | Action.BREAKGLASS_INVOKE
            | Action.BREAKGLASS_LIST
        ):
            return Resource(type="tenant", id=tenant, tenant_id=tenant)
        case (
            Action.TENANT_CREATE
            | Action.TENANT_LIST
            | Action.BACKEND_LIST
            | Action.AUTH_FAIL
            | Action.AUTH_LOGIN
            | Action.ADMIN_INIT
            | Action.AUDIT_CHECKPOINT
            | Action.CONFIG_LOAD
            | Action.COST_SET
        ):
            return Resource(type="platform", id="platform", tenant_id=None)
        case (
            Action.TENANT_READ
            | Action.AUDIT_READ
            | Action.AUDIT_EXPORT
            | Action.PROJECT_CREATE
            | Action.PROJECT_LIST
            | Action.MEMBER_ADD
            | Action.MEMBER_LIST
            | Action.KEY_LIST
            | Action.KEY_CREATE
            | Action.KEY_ROTATE
            | Action.KEY_RETIRE
            | Action.KEY_DISABLE
            | Action.KEY_ENABLE
            | Action.KEY_DESTROY
            | Action.KEY_FAIL
            | Action.SECRET_SET
            | Action.SECRET_LIST
            | Action.SECRET_DELETE
            | Action.SECRET_USE
            | Action.EXPORTKEY_SET
            | Action.EXPORTKEY_READ
            | Action.TRUSTRULE_SET
            | Action.TRUSTRULE_LIST
            | Action.TRUSTRULE_DELETE
            | Action.APIKEY_LIST
            | Action.APIKEY_REVOKE
            | Action.USER_CREATE
            | Action.USER_READ
            | Action.USER_LIST
            | Action.USER_UPDATE
            | Action.USER_DELETE
            | Action.GROUP_CREATE
            | Action.GROUP_READ
            | Action.GROUP_LIST
            | Action.GROUP_UPDATE
            | Action.GROUP_DELETE
            | Action.POLICY_READ
            | Action.POLICY_SET
            | Action.WEBHOOK_SET
            | Action.WEBHOOK_LIST
            | Action.WEBHOOK_DELETE
            | Action.ALERT_SEND
            | Action.RATELIMIT_EXCEED
            | Action.USAGE_READ
            | Action.QUOTA_SET
            | Action.QUOTA_EXCEED
            | Action.BUDGET_SET
            | Action.BUDGET_READ
            | Action.BUDGET_ALERT
            | Action.RESERVATION_CREATE
            | Action.RESERVATION_LIST
            | Action.RESERVATION_CANCEL
            | Action.QUEUE_SHARE
        ):
            return Resource(type="tenant", id=tenant, tenant_id=tenant)
        case (
            Action.SESSION_CREATE
            | Action.SESSION_READ
            | Action.SESSION_CLOSE
            | Action.SESSION_EXPIRE
        ):
            return Resource(type="principal", id=owner, tenant_id=tenant)
        case Action.TOKEN_EXCHANGE | Action.APIKEY_CREATE | Action.ACCOUNT_SET:
            return Resource(type="principal", id=owner, tenant_id=tenant)
        case Action.PROJECT_READ | Action.JOB_SUBMIT | Action.JOB_LIST | Action.JOB_ESTIMATE:
            return Resource(
                type="project",
                id=project,
                tenant_id=tenant,
                project_id=project,
                data_class=DataClass.INTERNAL,
            )
        case Action.TOKEN_ISSUE:
            return Resource(type="principal", id=owner, tenant_id=tenant)
        case Action.TOKEN_REVOKE:
            return Resource(type="token", id="tok_1", tenant_id=tenant, owner_id=owner)
        case (
            Action.BACKEND_READ
            | Action.BACKEND_PAUSE
            | Action.BACKEND_RESUME
            | Action.BACKEND_MAINTAIN
            | Action.QUEUE_READ
        ):
            return Resource(type="backend", id="aer-simulator", tenant_id=None)
        case _:
            return Resource(
                type="job",
                id="job_1",
                tenant_id=tenant,
                project_id=project,
                data_class=DataClass.INTERNAL,
                owner_id=owner,
            )


@pytest.fixture(scope="module")
def engine() -> CedarPolicyEngine:
    # check_requests: every request the tests make must also conform to the schema.
    # The platform's @approvals forbids are tested in tests/integration/test_approvals.py.
    return CedarPolicyEngine(platform_tenant_id=PLATFORM, check_requests=True, approvals=False)


def test_engine_satisfies_the_protocol(engine: CedarPolicyEngine) -> None:
    as_protocol: PolicyEngine = engine
    assert as_protocol.authorize is not None


# -- the role x action matrix, same tenant ----------------------------------------------


@pytest.mark.parametrize("action", list(Action), ids=str)
@pytest.mark.parametrize("role", ROLES)
def test_role_action_matrix(engine: CedarPolicyEngine, role: str, action: Action) -> None:
    caller = principal(role)
    decision = engine.authorize(caller, action, resource_for(action, caller.tenant_id, caller.id))

    assert decision.action is action
    assert decision.errors == ()
    if action in ALLOWED[role]:
        assert decision.allowed, f"{role} should be allowed {action}"
        assert set(decision.policy_ids) == expected_permits(role, action)
    else:
        assert not decision.allowed, f"{role} should not be allowed {action}"
        assert decision.policy_ids == (), "a denial with no forbid is the default deny"


def test_project_roles_do_not_reach_another_project(engine: CedarPolicyEngine) -> None:
    for role in ("developer", "viewer"):
        caller = principal(role)
        for action in (Action.PROJECT_READ, Action.JOB_LIST, Action.JOB_READ, Action.RESULT_READ):
            other = resource_for(action, TENANT_A, caller.id, project=PROJECT_2)
            assert not engine.authorize(caller, action, other).allowed, (role, action)
    admin = principal("tenant-admin")
    job = resource_for(Action.JOB_CANCEL, TENANT_A, admin.id, project=PROJECT_2)
    assert engine.authorize(admin, Action.JOB_CANCEL, job).allowed


def test_roles_in_several_projects_apply_per_project(engine: CedarPolicyEngine) -> None:
    caller = Principal(
        id=PrincipalId("usr_mixed"),
        tenant_id=TENANT_A,
        name="mixed",
        kind="user",
        token_id=None,
        scopes=frozenset({"*"}),
        auth_method="oidc",
        project_roles=((PROJECT_1, Role.VIEWER), (PROJECT_2, Role.DEVELOPER)),
    )
    in_1 = resource_for(Action.JOB_CANCEL, TENANT_A, caller.id, project=PROJECT_1)
    in_2 = resource_for(Action.JOB_CANCEL, TENANT_A, caller.id, project=PROJECT_2)
    assert not engine.authorize(caller, Action.JOB_CANCEL, in_1).allowed
    assert engine.authorize(caller, Action.JOB_CANCEL, in_2).allowed
    assert engine.authorize(caller, Action.JOB_READ, in_1).allowed


def test_member_admin_actions_on_a_project(engine: CedarPolicyEngine) -> None:
    project = Resource(type="project", id=PROJECT_1, tenant_id=TENANT_A, project_id=PROJECT_1)
    for action in (Action.MEMBER_ADD, Action.MEMBER_LIST):
        assert engine.authorize(principal("tenant-admin"), action, project).allowed
        assert not engine.authorize(principal("developer"), action, project).allowed


def test_job_submit_aimed_at_the_new_job(engine: CedarPolicyEngine) -> None:
    job = Resource(type="job", id="job_new", tenant_id=TENANT_A, project_id=PROJECT_1)
    assert engine.authorize(principal("developer"), Action.JOB_SUBMIT, job).allowed
    assert not engine.authorize(principal("viewer"), Action.JOB_SUBMIT, job).allowed


def test_job_list_across_the_tenant_is_for_tenant_admins(engine: CedarPolicyEngine) -> None:
    tenant = Resource(type="tenant", id=TENANT_A, tenant_id=TENANT_A)
    assert engine.authorize(principal("tenant-admin"), Action.JOB_LIST, tenant).allowed
    assert not engine.authorize(principal("developer"), Action.JOB_LIST, tenant).allowed


# -- tokens: on oneself, or any principal of the tenant for a tenant admin -------------------


@pytest.mark.parametrize("role", ["platform-admin", "developer", "viewer"])
def test_tokens_only_for_oneself(engine: CedarPolicyEngine, role: str) -> None:
    caller = principal(role)
    someone = Resource(type="principal", id="usr_someone", tenant_id=caller.tenant_id)
    their_token = Resource(
        type="token", id="tok_9", tenant_id=caller.tenant_id, owner_id=PrincipalId("usr_someone")
    )
    ownerless = Resource(type="token", id="tok_8", tenant_id=caller.tenant_id)
    assert not engine.authorize(caller, Action.TOKEN_ISSUE, someone).allowed
    assert not engine.authorize(caller, Action.TOKEN_REVOKE, someone).allowed
    assert not engine.authorize(caller, Action.TOKEN_REVOKE, their_token).allowed
    assert not engine.authorize(caller, Action.TOKEN_REVOKE, ownerless).allowed
    myself = Resource(type="principal", id=caller.id, tenant_id=caller.tenant_id)
    assert engine.authorize(caller, Action.TOKEN_REVOKE, myself).allowed


def test_tenant_admin_manages_tokens_of_its_tenant(engine: CedarPolicyEngine) -> None:
    admin = principal("tenant-admin")
    someone = Resource(type="principal", id="usr_someone", tenant_id=TENANT_A)
    their_token = Resource(
        type="token", id="tok_9", tenant_id=TENANT_A, owner_id=PrincipalId("usr_someone")
    )
    decision = engine.authorize(admin, Action.TOKEN_ISSUE, someone)
    assert decision.allowed
    assert decision.policy_ids == ("tenant-admin-principal-tokens",)
    assert engine.authorize(admin, Action.TOKEN_REVOKE, their_token).allowed


def test_nobody_gets_no_token(engine: CedarPolicyEngine) -> None:
    caller = principal("nobody")
    myself = Resource(type="principal", id=caller.id, tenant_id=TENANT_A)
    assert not engine.authorize(caller, Action.TOKEN_ISSUE, myself).allowed


# -- cross-tenant ---------------------------------------------------------------------------


def foreign_resource(action: Action, caller: Principal) -> Resource | None:
    """Tenant B's resource for ``action``; None where the action aims at the platform."""
    target = resource_for(action, TENANT_B, PrincipalId("usr_in_b"), project=PROJECT_B)
    if target.type == "platform":
        return None
    if target.type == "backend":
        # A backend private to tenant B.
        return Resource(type="backend", id="b-private-qpu", tenant_id=TENANT_B)
    if target.type == "token":
        # Even a token "owned" by the caller, if it lives in another tenant.
        return Resource(type="token", id="tok_b", tenant_id=TENANT_B, owner_id=caller.id)
    return target


#: Every action that aims at something a tenant owns (the rest aim at the platform).
TENANT_ACTIONS = [
    action
    for action in Action
    if resource_for(action, TENANT_B, PrincipalId("usr_x")).type != "platform"
]


@pytest.mark.parametrize("action", TENANT_ACTIONS, ids=str)
@pytest.mark.parametrize("role", ROLES)
def test_cross_tenant_is_denied(engine: CedarPolicyEngine, role: str, action: Action) -> None:
    caller = principal(role)
    target = foreign_resource(action, caller)
    assert target is not None
    decision = engine.authorize(caller, action, target)

    if role == "platform-admin" and action is Action.TENANT_READ:
        assert decision.allowed
        assert decision.policy_ids == ("platform-admin-tenant-read",)
        return
    if role == "platform-admin" and action is Action.QUOTA_SET:
        # A tenant's tenant-wide and per-backend quotas are the platform's to set.
        assert decision.allowed
        assert decision.policy_ids == ("platform-admin-quotas",)
        return
    assert not decision.allowed, f"{role} must not {action} in another tenant"
    assert decision.policy_ids == ("forbid-cross-tenant",)
    assert decision.errors == ()


@pytest.mark.parametrize(
    "action", [Action.JOB_READ, Action.JOB_CANCEL, Action.RESULT_READ, Action.PROJECT_READ]
)
@pytest.mark.parametrize("role", ["tenant-admin", "platform-admin"])
def test_admins_cannot_touch_another_tenants_jobs_and_projects(
    engine: CedarPolicyEngine, role: str, action: Action
) -> None:
    caller = principal(role)
    target = resource_for(action, TENANT_B, PrincipalId("usr_in_b"), project=PROJECT_B)
    decision = engine.authorize(caller, action, target)
    assert not decision.allowed
    assert "forbid-cross-tenant" in decision.policy_ids


def test_platform_admin_cannot_administer_another_tenant(engine: CedarPolicyEngine) -> None:
    caller = principal("platform-admin")
    tenant_b = Resource(type="tenant", id=TENANT_B, tenant_id=TENANT_B)
    for action in (Action.MEMBER_ADD, Action.MEMBER_LIST, Action.PROJECT_CREATE):
        assert not engine.authorize(caller, action, tenant_b).allowed
    assert engine.authorize(caller, Action.TENANT_READ, tenant_b).allowed


def test_only_platform_admins_export_the_whole_audit_log(engine: CedarPolicyEngine) -> None:
    platform = Resource(type="platform", id="platform", tenant_id=None)
    decision = engine.authorize(principal("platform-admin"), Action.AUDIT_EXPORT, platform)
    assert decision.allowed
    assert decision.policy_ids == ("platform-admin-audit",)
    for role in ("tenant-admin", "developer", "viewer"):
        assert not engine.authorize(principal(role), Action.AUDIT_EXPORT, platform).allowed
    tenant_b = Resource(type="tenant", id=TENANT_B, tenant_id=TENANT_B)
    for action in (Action.AUDIT_READ, Action.AUDIT_EXPORT):
        assert not engine.authorize(principal("platform-admin"), action, tenant_b).allowed


def test_platform_admin_holds_no_tenant_powers_in_its_own_tenant(
    engine: CedarPolicyEngine,
) -> None:
    caller = principal("platform-admin")
    job = resource_for(Action.JOB_READ, PLATFORM, caller.id)
    assert not engine.authorize(caller, Action.JOB_READ, job).allowed


def test_platform_admin_role_counts_only_in_the_platform_tenant(
    engine: CedarPolicyEngine,
) -> None:
    impostor = principal("platform-admin", tenant=TENANT_A, ident="usr_impostor")
    platform = Resource(type="platform", id="platform", tenant_id=None)
    tenant_b = Resource(type="tenant", id=TENANT_B, tenant_id=TENANT_B)
    assert not engine.authorize(impostor, Action.TENANT_CREATE, platform).allowed
    decision = engine.authorize(impostor, Action.TENANT_READ, tenant_b)
    assert not decision.allowed
    assert decision.policy_ids == ("forbid-cross-tenant",)
    # Without a configured platform tenant, the identity layer is trusted.
    trusting = CedarPolicyEngine()
    assert trusting.authorize(impostor, Action.TENANT_CREATE, platform).allowed


def test_both_forbids_are_reported(engine: CedarPolicyEngine) -> None:
    caller = principal("developer", scopes=frozenset({"backend"}))
    target = resource_for(Action.JOB_READ, TENANT_B, PrincipalId("usr_in_b"), project=PROJECT_B)
    decision = engine.authorize(caller, Action.JOB_READ, target)
    assert not decision.allowed
    assert decision.policy_ids == ("forbid-cross-tenant", "forbid-scope-not-granted")


# -- scopes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("action", sorted(ALLOWED["tenant-admin"]), ids=str)
def test_scope_narrows_what_roles_allow(engine: CedarPolicyEngine, action: Action) -> None:
    for scopes in ({"job"}, {"backend", "result"}, set()):
        caller = principal("tenant-admin", scopes=frozenset(scopes))
        decision = engine.authorize(caller, action, resource_for(action, TENANT_A, caller.id))
        if action.resource in scopes:
            assert decision.allowed, (scopes, action)
        else:
            assert not decision.allowed, (scopes, action)
            assert decision.policy_ids == ("forbid-scope-not-granted",)


def test_wildcard_scope_covers_everything_roles_allow(engine: CedarPolicyEngine) -> None:
    caller = principal("tenant-admin", scopes=frozenset({"*"}))
    for action in ALLOWED["tenant-admin"]:
        assert engine.authorize(caller, action, resource_for(action, TENANT_A, caller.id)).allowed


def test_scope_grants_nothing_the_roles_do_not(engine: CedarPolicyEngine) -> None:
    caller = principal("viewer", scopes=frozenset({"job"}))
    job = resource_for(Action.JOB_CANCEL, TENANT_A, caller.id)
    assert not engine.authorize(caller, Action.JOB_CANCEL, job).allowed


# -- deny by default, decisions, fail closed ------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_empty_policy_set_denies_everything(role: str) -> None:
    empty = CedarPolicyEngine("")
    assert empty.policy_ids() == ()
    caller = principal(role)
    for action in Action:
        decision = empty.authorize(
            caller, action, resource_for(action, caller.tenant_id, caller.id)
        )
        assert decision == Decision(allowed=False, action=action)


def test_comment_only_policy_text_denies() -> None:
    engine = CedarPolicyEngine({"a.cedar": "// nothing here yet\n", "b.cedar": ""})
    caller = principal("tenant-admin")
    target = resource_for(Action.JOB_READ, TENANT_A, caller.id)
    assert not engine.authorize(caller, Action.JOB_READ, target).allowed


def test_shipped_policy_ids(engine: CedarPolicyEngine) -> None:
    ids = engine.policy_ids()
    assert len(ids) == len(set(ids))
    assert {"forbid-cross-tenant", "forbid-scope-not-granted"} <= set(ids)
    assert set(ALLOWED_BY.values()) | set(_MEMBER_PERMITS.values()) <= set(ids)


FORBID_IF_EU = """
@id("allow-all")
permit (principal, action, resource);

@id("forbid-eu")
forbid (principal, action, resource) when { context.region == "eu" };
"""


def test_a_forbid_that_cannot_be_evaluated_denies() -> None:
    # Cedar skips a policy whose evaluation errors; for a forbid, the engine denies.
    engine = CedarPolicyEngine(FORBID_IF_EU, validate=False)
    caller = principal("developer")
    job = resource_for(Action.JOB_READ, TENANT_A, caller.id)

    assert engine.authorize(caller, Action.JOB_READ, job, context={"region": "us"}).allowed
    refused = engine.authorize(caller, Action.JOB_READ, job, context={"region": "eu"})
    assert not refused.allowed
    assert refused.policy_ids == ("forbid-eu",)

    broken = engine.authorize(caller, Action.JOB_READ, job)  # no region: the forbid errors
    assert not broken.allowed
    assert broken.policy_ids == ("forbid-eu",)
    assert len(broken.errors) == 1
    assert "forbid-eu" in broken.errors[0]


def test_a_permit_that_cannot_be_evaluated_does_not_deny() -> None:
    text = """
    @id("allow-eu")
    permit (principal, action, resource) when { context.region == "eu" };

    @id("allow-developers")
    permit (principal, action, resource) when { context.roles.contains("developer") };
    """
    engine = CedarPolicyEngine(text, validate=False)
    caller = principal("developer")
    job = resource_for(Action.JOB_READ, TENANT_A, caller.id)
    decision = engine.authorize(caller, Action.JOB_READ, job)
    assert decision.allowed
    assert decision.policy_ids == ("allow-developers",)
    assert len(decision.errors) == 1
    assert "allow-eu" in decision.errors[0]


def test_policy_index_changes_no_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-(action, resource type) subsets, with only the context keys their
    policies read, decide exactly as the whole set with the whole context."""

    def whole_set(book: object, action: Action, entity_type: str) -> tuple[cedarpy.PolicySet, None]:
        assert isinstance(book, engine_module._PolicyBook)
        document = {
            "staticPolicies": {pid: p.body for pid, p in book.policies.items()},
            "templates": {},
            "templateLinks": [],
        }
        return cedarpy.PolicySet.from_json_str(json.dumps(document)), None

    examples = Path(__file__).resolve().parents[2] / "docs" / "examples" / "tenant-policies.cedar"
    pruning = CedarPolicyEngine(
        platform_tenant_id=PLATFORM, tenant_policies={TENANT_A: examples.read_text()}
    )
    pruning.set_tenant_timezone(TENANT_A, "Europe/Berlin")
    late = {"now": datetime(2025, 3, 4, 20, 30, tzinfo=UTC), "sdk_version_number": 1000}
    cases = []
    for role in ROLES:
        for caller in (principal(role), principal(role, mfa=False)):
            for action in Action:
                for target in (
                    resource_for(action, caller.tenant_id, caller.id),
                    foreign_resource(action, caller),
                ):
                    if target is not None:
                        cases.extend(
                            ((caller, action, target, None), (caller, action, target, late))
                        )
    indexed = [pruning.authorize(c, a, t, context=x) for c, a, t, x in cases]
    assert {d.allowed for d in indexed} == {True, False}
    monkeypatch.setattr(engine_module._PolicyBook, "subset", whole_set)
    assert [pruning.authorize(c, a, t, context=x) for c, a, t, x in cases] == indexed


# -- resources the engine refuses to evaluate -----------------------------------------------


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (Resource(type="job", id="job_1", tenant_id=None), "has no tenant_id"),
        (Resource(type="token", id="tok_1", tenant_id=None), "has no tenant_id"),
        (Resource(type="tenant", id=TENANT_A, tenant_id=TENANT_B), "its own id"),
        (Resource(type="platform", id="platform", tenant_id=TENANT_A), "belong to no tenant"),
        (
            Resource(type="principal", id="usr_tenant-admin", tenant_id=TENANT_B),
            "belongs to ten_a",
        ),
    ],
)
def test_unusable_resources_are_denied(
    engine: CedarPolicyEngine, target: Resource, message: str
) -> None:
    decision = engine.authorize(principal("tenant-admin"), Action.TOKEN_ISSUE, target)
    assert not decision.allowed
    assert decision.policy_ids == ()
    assert len(decision.errors) == 1
    assert message in decision.errors[0]


def test_tenant_resource_without_tenant_id_is_its_own_tenant(engine: CedarPolicyEngine) -> None:
    tenant = Resource(type="tenant", id=TENANT_A, tenant_id=None)
    assert engine.authorize(principal("developer"), Action.TENANT_READ, tenant).allowed
    other = Resource(type="tenant", id=TENANT_B, tenant_id=None)
    assert not engine.authorize(principal("developer"), Action.TENANT_READ, other).allowed


# -- context --------------------------------------------------------------------------------


TIME_FENCE = """
@id("allow-developers")
permit (principal, action, resource) when { context.roles.contains("developer") };

@id("forbid-after-2030")
forbid (principal, action, resource)
when { context has now && context.now >= datetime("2030-01-01") };

@id("forbid-prod-restricted")
forbid (principal, action, resource)
when {
  context has environment && context.environment == "prod" &&
  context has data_class && context.data_class == "restricted"
};
"""


def test_context_values_reach_the_policies() -> None:
    engine = CedarPolicyEngine(TIME_FENCE, check_requests=True)
    caller = principal("developer")
    job = resource_for(Action.JOB_READ, TENANT_A, caller.id)
    now = datetime(2029, 12, 31, 23, 0, tzinfo=UTC)
    assert engine.authorize(caller, Action.JOB_READ, job, context={"now": now}).allowed
    later = engine.authorize(
        caller, Action.JOB_READ, job, context={"now": now + timedelta(hours=2)}
    )
    assert later.policy_ids == ("forbid-after-2030",)

    restricted = Resource(
        type="job",
        id="job_r",
        tenant_id=TENANT_A,
        project_id=PROJECT_1,
        data_class=DataClass.RESTRICTED,
    )
    prod = engine.authorize(caller, Action.JOB_READ, restricted, context={"environment": "prod"})
    assert prod.policy_ids == ("forbid-prod-restricted",)
    dev = engine.authorize(caller, Action.JOB_READ, restricted, context={"environment": "dev"})
    assert dev.allowed


def test_extra_context_keys_pass_through(engine: CedarPolicyEngine) -> None:
    relaxed = CedarPolicyEngine(platform_tenant_id=PLATFORM)
    caller = principal("developer")
    job = resource_for(Action.JOB_READ, TENANT_A, caller.id)
    context = {"ticket": "INC-1", "attempt": 2, "labels": ["a", "b"], "meta": {"x": True}}
    assert relaxed.authorize(caller, Action.JOB_READ, job, context=context).allowed
    # A schema-checking engine refuses keys the schema does not declare.
    with pytest.raises(PolicyError, match="ticket"):
        engine.authorize(caller, Action.JOB_READ, job, context=context)


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"roles": ["tenant-admin"]}, "computed by the policy engine"),
        ({"scopes": ["*"]}, "computed by the policy engine"),
        ({"required_scope": "job"}, "computed by the policy engine"),
        ({"data_class": "public"}, "computed by the policy engine"),
        ({"now": datetime(2030, 1, 1)}, "naive datetime"),  # noqa: DTZ001 - the point of the test
        ({"score": 0.5}, "Cedar cannot express"),
        ({"region": None}, "omit the key"),
        ({"big": 2**64}, "64-bit"),
        ({"meta": {"__entity": {"type": "X", "id": "y"}}}, "not starting with '__'"),
    ],
)
def test_context_the_engine_refuses(
    engine: CedarPolicyEngine, context: dict[str, object], message: str
) -> None:
    caller = principal("developer")
    with pytest.raises(PolicyError, match=re.escape(message)):
        engine.authorize(
            caller,
            Action.JOB_READ,
            resource_for(Action.JOB_READ, TENANT_A, caller.id),
            context=context,
        )


# -- tenant policies (more in test_policy_tenants.py) ---------------------------------------


TENANT_A_RULES = """
@id("ten_a/no-prod-cancel")
forbid (principal, action == Qustody::Action::"job:cancel", resource)
when { context has environment && context.environment == "prod" };

@id("ten_a/no-backend-list-for-viewers")
forbid (principal, action == Qustody::Action::"backend:list", resource is Qustody::Platform)
when { context.all_roles.contains("viewer") };
"""


def test_tenant_policies_apply_to_that_tenant_only() -> None:
    engine = CedarPolicyEngine(tenant_policies={TENANT_A: TENANT_A_RULES})
    prod = {"environment": "prod"}
    developer_a = principal("developer")
    developer_b = principal("developer", tenant=TENANT_B, ident="usr_b_developer")
    job_a = resource_for(Action.JOB_CANCEL, TENANT_A, developer_a.id)
    job_b = resource_for(Action.JOB_CANCEL, TENANT_B, developer_b.id)

    denied = engine.authorize(developer_a, Action.JOB_CANCEL, job_a, context=prod)
    assert denied.policy_ids == ("ten_a/no-prod-cancel",)
    assert engine.authorize(developer_b, Action.JOB_CANCEL, job_b, context=prod).allowed

    platform = Resource(type="platform", id="platform", tenant_id=None)
    viewer_a = principal("viewer")
    viewer_b = principal("viewer", tenant=TENANT_B, ident="usr_b_viewer")
    assert not engine.authorize(viewer_a, Action.BACKEND_LIST, platform).allowed
    assert engine.authorize(viewer_b, Action.BACKEND_LIST, platform).allowed
    assert "ten_a/no-prod-cancel" in engine.policy_ids(TENANT_A)
    assert "ten_a/no-prod-cancel" not in engine.policy_ids(TENANT_B)


def test_tenant_policies_cannot_lift_the_guardrails() -> None:
    grant_all = '@id("ten_a/grant-all")\npermit (principal, action, resource);'
    with pytest.raises(PolicyError, match="may only forbid"):
        CedarPolicyEngine(tenant_policies={TENANT_A: grant_all})


def test_replacing_tenant_policies() -> None:
    engine = CedarPolicyEngine(tenant_policies={TENANT_A: TENANT_A_RULES})
    viewer = principal("viewer")
    platform = Resource(type="platform", id="platform", tenant_id=None)
    with pytest.raises(PolicyError, match="reuses"):
        engine.replace_tenant_policies(
            TENANT_A, '@id("forbid-cross-tenant")\nforbid (principal, action, resource);'
        )
    with pytest.raises(PolicyError, match="does not validate"):
        engine.replace_tenant_policies(
            TENANT_A, '@id("x")\nforbid (principal, action, resource) when { context.nope };'
        )
    # A refused update leaves the tenant's policies as they were.
    assert not engine.authorize(viewer, Action.BACKEND_LIST, platform).allowed
    engine.replace_tenant_policies(TENANT_A, None)
    assert engine.authorize(viewer, Action.BACKEND_LIST, platform).allowed
    assert engine.policy_ids(TENANT_A) == engine.policy_ids()


# -- loading: errors ------------------------------------------------------------------------


def test_malformed_policy_text_is_a_policy_error_naming_the_line() -> None:
    text = """
    @id("fine")
    permit (principal, action, resource);

    // the next one is broken
    @id("broken")
    permit (principal, action, resource) when { context.roles.contains( };
    """
    with pytest.raises(PolicyError) as caught:
        CedarPolicyEngine(text)
    error = caught.value
    assert isinstance(error, QustodyError)
    assert error.code == "policy_error"
    assert "policy at line 6 does not parse" in error.detail


def test_unterminated_policy_is_found() -> None:
    with pytest.raises(PolicyError, match=r"mine\.cedar, policy at line 2"):
        CedarPolicyEngine({"mine.cedar": '\n@id("x")\npermit (principal, action, resource)'})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("permit (principal, action, resource);", 'has no @id("...") annotation'),
        ('@id("")\npermit (principal, action, resource);', 'has no @id("...") annotation'),
        ('@id("has space")\npermit (principal, action, resource);', "letters, digits"),
        (
            '@id("twice")\npermit (principal, action, resource);\n'
            '@id("twice")\nforbid (principal, action, resource);',
            'reuses @id("twice")',
        ),
        ('@id("t")\npermit (principal == ?principal, action, resource);', "template"),
        (
            '@id("typo")\npermit (principal, action, resource) when { context.role == "x" };',
            'policy "typo" at line 1: attribute `role` in context not found',
        ),
        (
            '@id("no-such-action")\n'
            'permit (principal, action == Qustody::Action::"job:destroy", resource);',
            "does not validate",
        ),
    ],
)
def test_refused_policy_sets(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(message)):
        CedarPolicyEngine(text)


def test_duplicate_ids_across_files() -> None:
    one = '@id("same")\npermit (principal, action, resource);'
    with pytest.raises(PolicyError, match=r"b\.cedar.*a\.cedar"):
        CedarPolicyEngine({"a.cedar": one, "b.cedar": one})


def test_malformed_schema_is_a_policy_error() -> None:
    with pytest.raises(PolicyError, match="schema does not parse"):
        CedarPolicyEngine("", schema="namespace Qustody { entity ")


# -- the shipped schema and policies --------------------------------------------------------


def test_shipped_policies_validate_against_the_schema() -> None:
    schema = cedarpy.Schema.from_str(default_schema())
    text = "\n".join(default_policies().values())
    result = cedarpy.validate_policies(text, schema)
    assert result.validation_passed, [str(error) for error in result.errors]
    assert len(cedarpy.PolicySet.from_str(text)) == len(
        CedarPolicyEngine(approvals=True).policy_ids()
    )


def test_shipped_policies_are_package_data() -> None:
    names = list(default_policies())
    assert names == sorted(names)
    assert "00-guardrails.cedar" in names
    assert "namespace Qustody" in default_schema()


def test_schema_actions_are_exactly_the_vocabulary() -> None:
    rendered = str(cedarpy.Schema.from_str(default_schema()))
    declared = set(re.findall(r'action "([^"]+)"', rendered))
    assert declared == {action.value for action in Action}


def test_ids_with_cedar_syntax_in_them_are_just_ids(engine: CedarPolicyEngine) -> None:
    caller = principal("developer")
    odd_id = 'job_1" || true; permit (principal, action, resource'
    mine = Resource(type="job", id=odd_id, tenant_id=TENANT_A, project_id=PROJECT_1)
    theirs = Resource(type="job", id=odd_id, tenant_id=TENANT_B, project_id=PROJECT_1)
    assert engine.authorize(caller, Action.JOB_READ, mine).allowed
    assert not engine.authorize(caller, Action.JOB_READ, theirs).allowed

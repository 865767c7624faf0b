"""A tenant can require DPoP by policy: ``context.dpop`` is true only when the
request's proof of the token's key verified (Principal.dpop_jkt)."""

from __future__ import annotations

from dataclasses import replace

from qustody.domain.ids import PrincipalId, ProjectId, TenantId
from qustody.domain.models import Principal, Resource
from qustody.domain.vocabulary import Action, DataClass, Role
from qustody.policy.engine import CedarPolicyEngine

ACME = TenantId("ten_01JACMEACMEACMEACMEACMEAC")
GLOBEX = TenantId("ten_01JG1ZZZZZZZZZZZZZZZZZZZZZ")
PROJECT = ProjectId("prj_01JZZZZZZZZZZZZZZZZZZZZZZZ")
OTHER_PROJECT = ProjectId("prj_01JYYYYYYYYYYYYYYYYYYYYYYY")
DPOP_ONLY = '@id("acme-dpop-only")\nforbid (principal, action, resource) unless { context.dpop };'


def _principal(tenant: TenantId, project: ProjectId) -> Principal:
    return Principal(
        id=PrincipalId("usr_01JZZZZZZZZZZZZZZZZZZZZZZZ"),
        tenant_id=tenant,
        name="ci-bot",
        kind="workload",
        token_id="jti-1",
        scopes=frozenset({"*"}),
        auth_method="token-exchange",
        project_roles=((project, Role.DEVELOPER),),
    )


def test_a_tenant_forbid_unless_dpop_refuses_bearer_and_accepts_dpop() -> None:
    engine = CedarPolicyEngine(tenant_policies={ACME: DPOP_ONLY})
    bearer = _principal(ACME, PROJECT)
    project = Resource("project", PROJECT, ACME, project_id=PROJECT, data_class=DataClass.INTERNAL)

    refused = engine.authorize(bearer, Action.PROJECT_READ, project)
    assert not refused.allowed
    assert refused.policy_ids == ("acme-dpop-only",)

    proven = replace(bearer, dpop_jkt="0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I")
    allowed = engine.authorize(proven, Action.PROJECT_READ, project)
    assert allowed.allowed

    # Another tenant's principals are not bound by acme's policy.
    outsider = _principal(GLOBEX, OTHER_PROJECT)
    theirs = Resource(
        "project", OTHER_PROJECT, GLOBEX, project_id=OTHER_PROJECT, data_class=DataClass.INTERNAL
    )
    assert engine.authorize(outsider, Action.PROJECT_READ, theirs).allowed

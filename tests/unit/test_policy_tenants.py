"""Tenant policies (forbids only, per tenant), MFA step-up, the request facts
policies see, and the offline case runner, against real cedarpy."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from qustody.domain.errors import ConfigurationError
from qustody.domain.ids import PrincipalId, ProjectId, TenantId
from qustody.domain.models import BackendInfo, Principal, Resource
from qustody.domain.vocabulary import Action, DataClass, Role
from qustody.policy.cases import CaseError, parse_cases, read_cases, run_cases
from qustody.policy.engine import CedarPolicyEngine, StepUp
from qustody.policy.errors import PolicyError
from qustody.policy.facts import backend_attributes, sdk_context, submission_context
from qustody.settings import Settings, load_settings

ACME = TenantId("ten_acme")
GLOBEX = TenantId("ten_globex")
RESEARCH = ProjectId("prj_research")
GLOBEX_PROJECT = ProjectId("prj_globex")
NOW = datetime(2025, 3, 4, 10, 0, tzinfo=UTC)
EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"

DEV_SIMULATOR = BackendInfo(
    name="aer-stabilizer",
    description="a simulator",
    provider="qiskit-aer",
    simulator=True,
    max_qubits=1000,
    max_shots=100_000,
    basis_gates=("h", "cx"),
    method="stabilizer",
)
PROD_QPU = BackendInfo(
    name="ibm-eagle",
    description="a quantum computer",
    provider="ibm",
    simulator=False,
    max_qubits=127,
    max_shots=100_000,
    basis_gates=("ecr", "rz", "sx", "x"),
    method="hardware",
    environment="prod",
    region="us-east",
)
STAGING_QPU = BackendInfo(
    name="qpu-staging",
    description="a test quantum computer",
    provider="acme-labs",
    simulator=False,
    max_qubits=20,
    max_shots=10_000,
    basis_gates=("rz", "sx", "x", "cz"),
    method="hardware",
    environment="staging",
)


def person(
    role: Role,
    *,
    tenant: TenantId = ACME,
    mfa: bool = True,
    signed_in: timedelta | None = timedelta(minutes=1),
    kind: str = "user",
    name: str | None = None,
    dpop: bool = False,
) -> Principal:
    tenant_wide = role in (Role.TENANT_ADMIN, Role.PLATFORM_ADMIN)
    home_project = RESEARCH if tenant == ACME else GLOBEX_PROJECT
    return Principal(
        id=PrincipalId(f"usr_{tenant}_{name or role.value}"),
        tenant_id=tenant,
        name=name or role.value,
        kind="workload" if kind == "workload" else "user",
        token_id="tok_1",
        scopes=frozenset({"*"}),
        auth_method="oidc",
        tenant_roles=frozenset({role}) if tenant_wide else frozenset(),
        project_roles=() if tenant_wide else ((home_project, role),),
        auth_strength="aal2" if mfa else "aal1",
        acr="mfa" if mfa else None,
        amr=frozenset({"pwd", "otp"} if mfa else {"pwd"}),
        auth_time=None if signed_in is None else NOW - signed_in,
        dpop_jkt="jkt" if dpop else None,
    )


def project(tenant: TenantId = ACME, data_class: DataClass = DataClass.INTERNAL) -> Resource:
    pid = RESEARCH if tenant == ACME else ProjectId("prj_globex")
    return Resource("project", pid, tenant, project_id=pid, data_class=data_class)


def job(tenant: TenantId = ACME, data_class: DataClass = DataClass.INTERNAL) -> Resource:
    pid = RESEARCH if tenant == ACME else ProjectId("prj_globex")
    return Resource(
        "job",
        "job_1",
        tenant,
        project_id=pid,
        data_class=data_class,
        attributes={"backend": "aer-stabilizer", "qubits": 5, "shots": 100},
    )


def tenant_resource(tenant: TenantId = ACME) -> Resource:
    return Resource("tenant", tenant, tenant)


def submit_context(backend: BackendInfo, qubits: int = 5) -> dict[str, object]:
    return {**submission_context(backend, qubits=qubits, shots=100), "now": NOW}


@pytest.fixture(scope="module")
def engine() -> CedarPolicyEngine:
    return CedarPolicyEngine(check_requests=True)


EXAMPLE_POLICIES = (EXAMPLES / "tenant-policies.cedar").read_text()


# -- tenant policies narrow, for their own tenant only -------------------------------------


def test_a_tenant_permit_is_refused_naming_the_policy_and_line() -> None:
    engine = CedarPolicyEngine()
    text = (
        '// mine\n@id("no-cancel")\nforbid (principal, action == Qustody::Action::"job:cancel",'
        ' resource);\n\n@id("let-viewers-submit")\npermit (principal, action, resource);\n'
    )
    with pytest.raises(PolicyError) as caught:
        engine.check_tenant_policies({"tenant policies": text})
    error = caught.value
    assert 'policy "let-viewers-submit" at line 5 is a permit' in error.detail
    assert "may only forbid" in error.detail
    assert error.extra == {"line": 5, "policy_id": "let-viewers-submit"}
    with pytest.raises(PolicyError, match="may only forbid"):
        engine.replace_tenant_policies(ACME, text)
    assert engine.policy_ids(ACME) == engine.policy_ids()


def test_a_tenant_forbid_cannot_affect_another_tenants_principals() -> None:
    lockdown = '@id("acme-lockdown")\nforbid (principal, action, resource);'
    engine = CedarPolicyEngine(tenant_policies={ACME: lockdown}, check_requests=True)
    acme_dev = person(Role.DEVELOPER)
    globex_dev = person(Role.DEVELOPER, tenant=GLOBEX)
    ctx = {"now": NOW}

    refused = engine.authorize(acme_dev, Action.JOB_READ, job(ACME), context=ctx)
    assert refused.policy_ids == ("acme-lockdown",)
    # Globex's principals, on their own resources and on the platform: untouched.
    assert engine.authorize(globex_dev, Action.JOB_READ, job(GLOBEX), context=ctx).allowed
    platform = Resource("platform", "backends", None)
    assert engine.authorize(globex_dev, Action.BACKEND_LIST, platform, context=ctx).allowed
    # Probing acme's job, a globex principal meets the guardrail, never acme's rule.
    probe = engine.authorize(globex_dev, Action.JOB_READ, job(ACME), context=ctx)
    assert probe.policy_ids == ("forbid-cross-tenant",)
    assert "acme-lockdown" not in engine.policy_ids(GLOBEX)


def test_tenant_policies_can_reuse_each_others_ids_but_not_the_platforms() -> None:
    rule = (
        '@id("no-cancel")\nforbid (principal, action == Qustody::Action::"job:cancel", resource);'
    )
    engine = CedarPolicyEngine(tenant_policies={ACME: rule, GLOBEX: rule})
    assert "no-cancel" in engine.policy_ids(ACME)
    assert "no-cancel" in engine.policy_ids(GLOBEX)
    # Step-up ids stay reserved even on an engine that leaves step-up out.
    relaxed = CedarPolicyEngine(step_up=False)
    with pytest.raises(PolicyError, match="reuses"):
        relaxed.check_tenant_policies(
            '@id("step-up-privileged")\nforbid (principal, action, resource);'
        )


def test_unloadable_tenant_policies_fail_closed() -> None:
    engine = CedarPolicyEngine(check_requests=True)
    engine.fail_closed(ACME)
    admin = person(Role.TENANT_ADMIN)
    ctx = {"now": NOW}
    denied = engine.authorize(admin, Action.JOB_READ, job(), context=ctx)
    assert denied.policy_ids == ("tenant-policies-unloadable",)
    assert engine.authorize(admin, Action.POLICY_READ, tenant_resource(), context=ctx).allowed
    assert engine.authorize(admin, Action.POLICY_SET, tenant_resource(), context=ctx).allowed
    other = person(Role.DEVELOPER, tenant=GLOBEX)
    assert engine.authorize(other, Action.JOB_READ, job(GLOBEX), context=ctx).allowed


# -- the four examples of docs/examples/tenant-policies.cedar ------------------------------


@pytest.fixture(scope="module")
def examples() -> CedarPolicyEngine:
    engine = CedarPolicyEngine(tenant_policies={ACME: EXAMPLE_POLICIES}, check_requests=True)
    engine.set_tenant_timezone(ACME, "Europe/Berlin")
    return engine


def test_researchers_may_use_simulators_but_not_prod_qpus(examples: CedarPolicyEngine) -> None:
    dev = person(Role.DEVELOPER)
    target = project()
    assert examples.authorize(
        dev, Action.JOB_SUBMIT, target, context=submit_context(DEV_SIMULATOR)
    ).allowed
    refused = examples.authorize(dev, Action.JOB_SUBMIT, target, context=submit_context(PROD_QPU))
    assert refused.policy_ids == ("researchers-no-prod-qpu",)
    # A QPU that is not production is another matter.
    assert examples.authorize(
        dev, Action.JOB_SUBMIT, target, context=submit_context(STAGING_QPU)
    ).allowed
    # Tenant admins are not researchers.
    admin = person(Role.TENANT_ADMIN)
    assert examples.authorize(
        admin, Action.JOB_SUBMIT, target, context=submit_context(PROD_QPU)
    ).allowed


@pytest.mark.parametrize(
    ("utc", "allowed"),
    [
        (datetime(2025, 3, 4, 6, 59, tzinfo=UTC), False),  # 07:59 in Berlin (winter, UTC+1)
        (datetime(2025, 3, 4, 7, 0, tzinfo=UTC), True),  # 08:00
        (datetime(2025, 3, 4, 18, 59, tzinfo=UTC), True),  # 19:59
        (datetime(2025, 3, 4, 19, 0, tzinfo=UTC), False),  # 20:00
        (datetime(2025, 7, 4, 18, 30, tzinfo=UTC), False),  # 20:30 in summer (UTC+2)
        (datetime(2025, 7, 4, 6, 30, tzinfo=UTC), True),  # 08:30 in summer
    ],
)
def test_restricted_projects_only_in_tenant_office_hours(
    examples: CedarPolicyEngine, utc: datetime, allowed: bool
) -> None:
    dev = person(Role.DEVELOPER, signed_in=None, mfa=True)
    dev = Principal(**{**_fields(dev), "auth_time": utc - timedelta(minutes=1)})
    decision = examples.authorize(
        dev, Action.RESULT_READ, job(data_class=DataClass.RESTRICTED), context={"now": utc}
    )
    assert decision.allowed is allowed
    if not allowed:
        assert decision.policy_ids == ("restricted-office-hours",)
    # Internal data knows no office hours.
    assert examples.authorize(dev, Action.RESULT_READ, job(), context={"now": utc}).allowed


def test_the_office_hours_follow_the_tenants_time_zone() -> None:
    engine = CedarPolicyEngine(tenant_policies={ACME: EXAMPLE_POLICIES})
    late = datetime(2025, 3, 4, 19, 30, tzinfo=UTC)
    dev = Principal(**{**_fields(person(Role.DEVELOPER)), "auth_time": late})
    restricted = job(data_class=DataClass.RESTRICTED)
    late_utc = {"now": late}
    assert engine.authorize(dev, Action.JOB_READ, restricted, context=late_utc).allowed  # UTC
    engine.set_tenant_timezone(ACME, "Asia/Tokyo")  # 04:30 the next morning
    assert not engine.authorize(dev, Action.JOB_READ, restricted, context=late_utc).allowed
    engine.set_tenant_timezone(ACME, "America/Los_Angeles")  # 11:30
    assert engine.authorize(dev, Action.JOB_READ, restricted, context=late_utc).allowed
    with pytest.raises(PolicyError, match="IANA time zone"):
        engine.set_tenant_timezone(ACME, "Mars/Olympus_Mons")


@pytest.mark.parametrize(
    ("user_agent", "allowed"),
    [
        ("qustody-sdk/1.1.9", False),
        ("qustody-sdk/0.1.0 python-httpx/0.27", False),
        ("qustody-sdk/1.2.0", True),
        ("qustody-sdk/2.0.0rc1", True),
        ("curl/8.5.0", True),  # announces no SDK version
        (None, True),
    ],
)
def test_old_sdk_versions_are_refused(
    examples: CedarPolicyEngine, user_agent: str | None, allowed: bool
) -> None:
    context = {**submit_context(DEV_SIMULATOR), **sdk_context(user_agent)}
    decision = examples.authorize(
        person(Role.DEVELOPER), Action.JOB_SUBMIT, project(), context=context
    )
    assert decision.allowed is allowed
    if not allowed:
        assert decision.policy_ids == ("sdk-at-least-1.2",)


@pytest.mark.parametrize(
    ("backend", "qubits", "allowed"),
    [(DEV_SIMULATOR, 30, True), (DEV_SIMULATOR, 31, False), (STAGING_QPU, 20, True)],
)
def test_at_most_30_qubits_in_dev(
    examples: CedarPolicyEngine, backend: BackendInfo, qubits: int, allowed: bool
) -> None:
    context = submit_context(backend, qubits)
    decision = examples.authorize(
        person(Role.DEVELOPER), Action.JOB_SUBMIT, project(), context=context
    )
    assert decision.allowed is allowed
    if not allowed:
        assert decision.policy_ids == ("dev-max-30-qubits",)


def test_a_submission_whose_circuit_did_not_parse_has_no_qubits(
    examples: CedarPolicyEngine,
) -> None:
    context = {**submission_context(DEV_SIMULATOR, qubits=None, shots=10), "now": NOW}
    assert "qubits" not in context
    assert examples.authorize(
        person(Role.DEVELOPER), Action.JOB_SUBMIT, project(), context=context
    ).allowed


# -- MFA step-up -------------------------------------------------------------------------


PRIVILEGED = {
    Action.POLICY_SET: tenant_resource(),
    Action.KEY_ROTATE: tenant_resource(),
    Action.SECRET_SET: tenant_resource(),
    Action.SECRET_DELETE: tenant_resource(),
    Action.EXPORTKEY_SET: tenant_resource(),
    Action.AUDIT_EXPORT: tenant_resource(),
}


@pytest.mark.parametrize("action", list(PRIVILEGED), ids=str)
def test_privileged_actions_need_a_fresh_multi_factor_sign_in(
    engine: CedarPolicyEngine, action: Action
) -> None:
    target = PRIVILEGED[action]
    ctx = {"now": NOW}
    fresh = engine.authorize(person(Role.TENANT_ADMIN), action, target, context=ctx)
    assert fresh.allowed
    for who in (
        person(Role.TENANT_ADMIN, mfa=False),
        person(Role.TENANT_ADMIN, signed_in=timedelta(seconds=901)),
        person(Role.TENANT_ADMIN, signed_in=None),  # auth_time unknown
    ):
        decision = engine.authorize(who, action, target, context=ctx)
        assert not decision.allowed
        assert decision.policy_ids == ("step-up-privileged",)
        assert engine.step_up(ACME, decision) == StepUp("mfa", 900, ("step-up-privileged",))
    just_in_time = person(Role.TENANT_ADMIN, signed_in=timedelta(seconds=900))
    assert engine.authorize(just_in_time, action, target, context=ctx).allowed


def test_a_platform_admins_audit_export_needs_step_up_too(engine: CedarPolicyEngine) -> None:
    root = person(Role.PLATFORM_ADMIN, tenant=TenantId("ten_platform"), mfa=False)
    platform = Resource("platform", "platform", None)
    decision = engine.authorize(root, Action.AUDIT_EXPORT, platform, context={"now": NOW})
    assert engine.step_up(root.tenant_id, decision) is not None


def test_step_up_is_offered_only_where_it_would_help(engine: CedarPolicyEngine) -> None:
    # A developer may not change policies, MFA or not: a plain denial, not a
    # request to sign in again only to be refused after.
    decision = engine.authorize(
        person(Role.DEVELOPER, mfa=False),
        Action.POLICY_SET,
        tenant_resource(),
        context={"now": NOW},
    )
    assert not decision.allowed
    assert decision.policy_ids == ()
    assert engine.step_up(ACME, decision) is None
    # Another tenant's resource: the guardrail decides, no step-up offered.
    foreign = engine.authorize(
        person(Role.TENANT_ADMIN, mfa=False),
        Action.KEY_ROTATE,
        tenant_resource(GLOBEX),
        context={"now": NOW},
    )
    assert "forbid-cross-tenant" in foreign.policy_ids
    assert engine.step_up(ACME, foreign) is None


def test_workloads_are_not_asked_to_step_up(engine: CedarPolicyEngine) -> None:
    ci = person(Role.DEVELOPER, kind="workload", mfa=False, signed_in=None, name="ci")
    context = submit_context(PROD_QPU)
    assert engine.authorize(ci, Action.JOB_SUBMIT, project(), context=context).allowed
    restricted = job(data_class=DataClass.RESTRICTED)
    assert engine.authorize(ci, Action.RESULT_READ, restricted, context={"now": NOW}).allowed


@pytest.mark.parametrize(
    ("backend", "data_class", "needs"),
    [
        (DEV_SIMULATOR, DataClass.INTERNAL, None),
        (PROD_QPU, DataClass.INTERNAL, "step-up-qpu-and-prod"),
        (STAGING_QPU, DataClass.INTERNAL, "step-up-qpu-and-prod"),
        (DEV_SIMULATOR, DataClass.RESTRICTED, "step-up-restricted-data"),
    ],
)
def test_jobs_on_qpus_prod_and_restricted_data_need_step_up(
    engine: CedarPolicyEngine, backend: BackendInfo, data_class: DataClass, needs: str | None
) -> None:
    stale = person(Role.DEVELOPER, signed_in=timedelta(hours=2))
    target = project(data_class=data_class)
    decision = engine.authorize(stale, Action.JOB_SUBMIT, target, context=submit_context(backend))
    if needs is None:
        assert decision.allowed
        return
    assert decision.policy_ids == (needs,)
    assert engine.step_up(ACME, decision) == StepUp("mfa", 900, (needs,))
    fresh = person(Role.DEVELOPER)
    assert engine.authorize(
        fresh, Action.JOB_SUBMIT, target, context=submit_context(backend)
    ).allowed


@pytest.mark.parametrize("action", [Action.JOB_READ, Action.RESULT_READ])
def test_reading_restricted_jobs_needs_step_up(engine: CedarPolicyEngine, action: Action) -> None:
    stale = person(Role.VIEWER, mfa=False)
    restricted = job(data_class=DataClass.RESTRICTED)
    decision = engine.authorize(stale, action, restricted, context={"now": NOW})
    assert decision.policy_ids == ("step-up-restricted-data",)
    assert engine.authorize(stale, action, job(), context={"now": NOW}).allowed


def test_step_up_can_be_left_out_in_development() -> None:
    relaxed = CedarPolicyEngine(step_up=False, check_requests=True)
    assert not relaxed.step_up_enforced
    ids = relaxed.policy_ids()
    assert not any(policy_id.startswith("step-up-") for policy_id in ids)
    admin = person(Role.TENANT_ADMIN, mfa=False, signed_in=None)
    assert relaxed.authorize(
        admin, Action.KEY_ROTATE, tenant_resource(), context={"now": NOW}
    ).allowed


def test_a_tenant_may_ask_for_its_own_step_up() -> None:
    rule = """
    @id("confidential-results-within-5-minutes")
    @step_up("phr mfa")
    @max_age("300")
    forbid (principal, action == Qustody::Action::"result:read", resource)
    when { context has data_class && context.data_class == "confidential" }
    unless { context.mfa && context has auth_age && context.auth_age <= 300 };
    """
    engine = CedarPolicyEngine(tenant_policies={ACME: rule})
    confidential = job(data_class=DataClass.CONFIDENTIAL)
    ten_minutes = person(Role.DEVELOPER, signed_in=timedelta(minutes=10))
    decision = engine.authorize(ten_minutes, Action.RESULT_READ, confidential, context={"now": NOW})
    assert engine.step_up(ACME, decision) == StepUp(
        "mfa phr", 300, ("confidential-results-within-5-minutes",)
    )
    assert engine.authorize(
        person(Role.DEVELOPER), Action.RESULT_READ, confidential, context={"now": NOW}
    ).allowed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '@id("a")\n@step_up("mfa")\n@max_age("600")\n'
            "forbid (principal, action, resource)\n"
            "unless { context has auth_age && context.auth_age <= 900 };",
            "do not test `context.auth_age <= 600`",
        ),
        (
            '@id("b")\n@step_up("mfa")\npermit (principal, action, resource);',
            "belongs on a forbid",
        ),
        (
            '@id("c")\n@max_age("60")\nforbid (principal, action, resource);',
            "@max_age without @step_up",
        ),
        (
            '@id("d")\n@step_up("mfa")\n@max_age("ten")\nforbid (principal, action, resource);',
            "whole seconds",
        ),
        (
            '@id("e")\n@step_up("a\\"b")\nforbid (principal, action, resource);',
            "printable ASCII",
        ),
    ],
)
def test_step_up_annotations_are_checked(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(message)):
        CedarPolicyEngine({"mine.cedar": text})


# -- the facts policies see ----------------------------------------------------------------


FACTS = """
@id("allow-all-for-test")
permit (principal, action, resource);

@id("needs-dpop")
forbid (principal, action == Qustody::Action::"job:cancel", resource) unless { context.dpop };

@id("needs-otp")
forbid (principal, action == Qustody::Action::"result:read", resource)
unless { context.amr.contains("otp") && context has acr && context.acr == "mfa" };

@id("small-jobs-only")
forbid (principal, action == Qustody::Action::"job:read", resource is Qustody::Job)
when { resource has qubits && resource.qubits > 4 };

@id("no-qpu-reads")
forbid (principal, action == Qustody::Action::"backend:read", resource is Qustody::Backend)
when { resource has simulator && !resource.simulator };
"""


def test_sign_in_facts_reach_the_policies() -> None:
    engine = CedarPolicyEngine(FACTS, check_requests=True)
    ctx = {"now": NOW}
    assert engine.authorize(
        person(Role.DEVELOPER, dpop=True), Action.JOB_CANCEL, job(), context=ctx
    ).allowed
    assert not engine.authorize(
        person(Role.DEVELOPER), Action.JOB_CANCEL, job(), context=ctx
    ).allowed
    assert engine.authorize(person(Role.DEVELOPER), Action.RESULT_READ, job(), context=ctx).allowed
    no_otp = person(Role.DEVELOPER, mfa=False)
    assert not engine.authorize(no_otp, Action.RESULT_READ, job(), context=ctx).allowed


def test_resource_attributes_reach_the_policies() -> None:
    engine = CedarPolicyEngine(FACTS, check_requests=True)
    ctx = {"now": NOW}
    assert engine.authorize(
        person(Role.DEVELOPER), Action.JOB_READ, job(), context=ctx
    ).policy_ids == ("small-jobs-only",)
    qpu = Resource("backend", PROD_QPU.name, None, attributes=backend_attributes(PROD_QPU))
    sim = Resource(
        "backend", DEV_SIMULATOR.name, None, attributes=backend_attributes(DEV_SIMULATOR)
    )
    assert not engine.authorize(person(Role.VIEWER), Action.BACKEND_READ, qpu, context=ctx).allowed
    assert engine.authorize(person(Role.VIEWER), Action.BACKEND_READ, sim, context=ctx).allowed
    # The engine's own attributes cannot be passed in.
    spoofed = Resource("job", "job_2", ACME, project_id=RESEARCH, attributes={"tenant": "x"})
    decision = engine.authorize(person(Role.DEVELOPER), Action.JOB_READ, spoofed, context=ctx)
    assert not decision.allowed
    assert "derives from the resource's own fields" in decision.errors[0]


@pytest.mark.parametrize("key", ["mfa", "auth_age", "acr", "amr", "dpop", "local_hour"])
def test_sign_in_and_time_facts_cannot_be_passed_in(engine: CedarPolicyEngine, key: str) -> None:
    with pytest.raises(PolicyError, match="computed by the policy engine"):
        engine.authorize(person(Role.DEVELOPER), Action.JOB_READ, job(), context={key: 1})


def test_sdk_versions_from_the_user_agent() -> None:
    assert sdk_context("qustody-sdk/1.2.3") == {
        "sdk_version": "1.2.3",
        "sdk_version_number": 1002003,
    }
    assert sdk_context("MyApp/2 qustody-sdk/0.10.0+local") == {
        "sdk_version": "0.10.0",
        "sdk_version_number": 10000,
    }
    assert sdk_context("qustody-sdk/2.0.0rc1")["sdk_version"] == "2.0.0"
    assert sdk_context("qustody-sdk/0.1.0.dev3")["sdk_version_number"] == 1000
    for other in (
        None,
        "",
        "curl/8",
        "not-qustody-sdk/1.2.3",
        "qustody-sdk/1.2",
        "qustody-sdk/1.2.34567",
    ):
        assert sdk_context(other) == {}, other


# -- schema validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '@id("unguarded")\nforbid (principal, action, resource) when { context.qubits > 30 };',
            'policy "unguarded" at line 1: unable to guarantee safety of access to optional '
            "attribute `qubits`",
        ),
        (
            '@id("typo")\nforbid (principal, action, resource)\nwhen { context.backend.simulatr };',
            "That attribute is not in the schema",
        ),
        (
            '@id("wrong-type")\n'
            'forbid (principal, action, resource) when { context.local_hour == "8" };',
            'policy "wrong-type" at line 1',
        ),
    ],
)
def test_tenant_policies_are_validated_against_the_schema(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(message)) as caught:
        CedarPolicyEngine().check_tenant_policies(text)
    assert caught.value.extra["line"] == 1


# -- the case runner -------------------------------------------------------------------------


def test_the_documented_cases_pass() -> None:
    loaded = read_cases(EXAMPLES / "policy-cases.toml")
    sources = {str(p): p.read_text() for p in loaded.policy_files}
    engine = CedarPolicyEngine(tenant_policies={loaded.tenant: sources}, check_requests=True)
    outcomes = run_cases(engine, loaded.cases, loaded.tenant)
    assert len(outcomes) >= 10
    assert [o.case.number for o in outcomes if not o.ok] == []
    assert {o.got for o in outcomes} == {"allow", "deny", "step-up"}


def test_a_mismatch_is_reported() -> None:
    document = {
        "cases": [
            {
                "action": "job:submit",
                "principal": {"roles": ["viewer"]},
                "resource": {"type": "project", "id": "prj_1"},
                "expect": "allow",
            },
            {
                "action": "job:read",
                "principal": {"roles": ["developer"]},
                "resource": {"type": "job", "project": "prj_1"},
                "expect": "allow",
                "policy": "viewer-jobs",
            },
        ]
    }
    loaded = parse_cases(document, base=Path())
    outcomes = run_cases(CedarPolicyEngine(), loaded.cases, loaded.tenant)
    assert [o.ok for o in outcomes] == [False, False]
    assert outcomes[1].got == "allow"  # allowed, but by developer-jobs


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({}, "has no cases"),
        (
            {"cases": [{"action": "job:fly", "resource": {"type": "job"}, "expect": "allow"}]},
            "not a Qustody action",
        ),
        (
            {"cases": [{"action": "job:read", "resource": {"type": "job"}, "expect": "maybe"}]},
            "expect is 'maybe'",
        ),
        (
            {"cases": [{"action": "job:read", "resource": {"type": "rocket"}, "expect": "deny"}]},
            "type is 'rocket'",
        ),
        (
            {
                "cases": [
                    {
                        "action": "job:read",
                        "resource": {"type": "job"},
                        "expect": "deny",
                        "colour": 1,
                    }
                ]
            },
            "unknown key 'colour'",
        ),
        (
            {
                "cases": [
                    {
                        "action": "job:read",
                        "principal": {"roles": ["boss"]},
                        "resource": {"type": "job"},
                        "expect": "deny",
                    }
                ]
            },
            "role 'boss'",
        ),
        (
            {
                "cases": [
                    {
                        "action": "job:read",
                        "resource": {"type": "job"},
                        "expect": "deny",
                        "now": "yesterday",
                    }
                ]
            },
            "ISO 8601",
        ),
        ({"cases": [], "extra": 1}, "unknown key 'extra'"),
    ],
)
def test_bad_case_files_name_the_case_and_the_fix(
    document: dict[str, object], message: str
) -> None:
    with pytest.raises(CaseError, match=re.escape(message)):
        parse_cases(document, base=Path())


def _fields(principal: Principal) -> dict[str, object]:
    return {name: getattr(principal, name) for name in Principal.__slots__}  # type: ignore[attr-defined]


# -- the setting ---------------------------------------------------------------------------


def test_step_up_is_on_in_production_and_cannot_be_turned_off_there() -> None:
    assert not Settings().step_up_enforced  # development: off unless asked for
    assert Settings(step_up=True).step_up_enforced
    assert Settings(mode="production").step_up_enforced
    assert load_settings({"QUSTODY_STEP_UP": "true"}).step_up is True
    assert load_settings({"QUSTODY_STEP_UP": "false"}).step_up is False
    with pytest.raises(ConfigurationError, match="not a valid bool"):
        load_settings({"QUSTODY_STEP_UP": "sometimes"})
    with pytest.raises(ConfigurationError, match="QUSTODY_STEP_UP=false is refused"):
        Settings(mode="production", step_up=False).check()
    # Unset, it travels to child processes as unset (each decides by its mode).
    assert "QUSTODY_STEP_UP" not in Settings().environment()
    assert Settings(step_up=True).environment()["QUSTODY_STEP_UP"] == "true"

"""Tenant policies through the services, on SQLite and PostgreSQL: versions
appended and audited with their diff, refusals naming the policy and line,
every process noticing a new version, step-up and named denials at the guard,
and the facts of a job submission reaching the policies."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, select, update

from qustody.api.app import Runtime, build_runtime
from qustody.domain.errors import (
    Conflict,
    Forbidden,
    InsecureDevelopmentWarning,
    InvalidRequest,
    NotFound,
    StepUpRequired,
)
from qustody.domain.ids import ProjectId, TenantId
from qustody.domain.models import Principal, Resource
from qustody.domain.vocabulary import Action, DataClass
from qustody.identity.tokens import SignIn
from qustody.jobs.service import SubmitRequest
from qustody.policy.engine import CedarPolicyEngine
from qustody.policy.errors import InvalidPolicy
from qustody.policy.tenant_policies import TenantPolicyLoader, sha256_hex
from qustody.storage import models as m
from qustody.storage.db import NO_TENANT, scope_bound
from support import Tenancy, ctx, ghz_qasm2, make_settings, seed

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
NO_CANCEL = """// v1
@id("no-cancel-on-prod")
forbid (principal, action == Qustody::Action::"job:cancel", resource)
when { context has environment && context.environment == "prod" };
"""
SMALL_JOBS = """// v2: small jobs in dev
@id("no-cancel-on-prod")
forbid (principal, action == Qustody::Action::"job:cancel", resource)
when { context has environment && context.environment == "prod" };

@id("dev-max-3-qubits")
forbid (principal, action == Qustody::Action::"job:submit", resource)
when
{
  context has backend && context.backend.environment == "dev" &&
  context has qubits && context.qubits > 3
};
"""


@pytest.fixture
def strict(tmp_path: Path, database_url: str) -> Iterator[Runtime]:
    """A runtime that enforces MFA step-up, as production does."""
    rt = build_runtime(make_settings(tmp_path, database_url, step_up=True))
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture
def people(strict: Runtime) -> Tenancy:
    return seed(strict)


def signed_in(
    tenancy: Tenancy, name: str, tenant: str = "acme", *, mfa: bool = True, age: int = 60
) -> Principal:
    """``name`` as after an OIDC sign-in ``age`` seconds ago, with or without MFA."""
    services = tenancy.runtime.services
    base = tenancy.principal(name, tenant)
    how = SignIn(
        method="oidc",
        source="https://idp.example",
        acr="mfa" if mfa else None,
        amr=("otp", "pwd") if mfa else ("pwd",),
        auth_time=datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=age),
    )
    with services.db.write() as session:
        token = services.tokens.issue(
            session, principal_id=base.id, tenant_id=base.tenant_id, sign_in=how
        )
    return services.tokens.authenticate(token.token)


def policy_events(tenancy: Tenancy) -> list[m.AuditEvent]:
    with tenancy.runtime.services.db.read() as session:
        return list(
            session.scalars(
                select(m.AuditEvent)
                .where(m.AuditEvent.event_type == Action.POLICY_SET.value)
                .order_by(m.AuditEvent.seq)
            )
        )


def test_versions_are_appended_audited_and_diffed(people: Tenancy) -> None:
    policies = people.runtime.services.policies
    admin = signed_in(people, "acme-admin")

    assert policies.current(admin, ctx()).version == 0
    first = policies.replace(admin, ctx(), NO_CANCEL, comment="prod jobs run to the end")
    second = policies.replace(admin, ctx(), SMALL_JOBS, base_version=1)
    assert (first.version, second.version) == (1, 2)

    current = policies.current(admin, ctx())
    assert (current.version, current.text, current.sha256) == (
        2,
        SMALL_JOBS,
        sha256_hex(SMALL_JOBS),
    )
    history = policies.versions(admin, ctx())
    assert [v.version for v in history] == [2, 1]
    assert history[1].comment == "prod jobs run to the end"
    assert history[0].created_by == admin.id
    assert policies.version(admin, ctx(), 1).text == NO_CANCEL

    diff = policies.diff(admin, ctx(), 1, 2).diff
    assert diff.startswith("--- v1\n+++ v2\n")
    assert "-// v1\n" in diff
    assert '+@id("dev-max-3-qubits")\n' in diff
    assert policies.diff(admin, ctx()).diff == diff  # default: newest against the one before
    added = policies.diff(admin, ctx(), 0, 1).diff.splitlines()[3:]
    assert added == ["+" + line for line in NO_CANCEL.splitlines()]

    events = policy_events(people)
    assert [e.resource_id for e in events] == ["v1", "v2"]
    assert [e.payload_sha256 for e in events] == [sha256_hex(NO_CANCEL), sha256_hex(SMALL_JOBS)]
    assert all(e.outcome == "success" and e.decision == "allow" for e in events)
    assert all(e.tenant_id == admin.tenant_id and e.actor_id == admin.id for e in events)
    assert events[1].reason is not None
    assert events[1].reason.startswith("v1->v2, 2 policies, +")
    assert "dev-max-3-qubits" in events[1].reason
    assert len(events[1].reason) <= 512


def test_a_long_diff_is_cut_in_the_event_and_whole_in_the_api(people: Tenancy) -> None:
    policies = people.runtime.services.policies
    admin = signed_in(people, "acme-admin")
    rules = "".join(
        f'@id("no-{n}")\nforbid (principal, action == Qustody::Action::"job:cancel", resource)\n'
        f'when {{ context has region && context.region == "region-{n}" }};\n'
        for n in range(40)
    )
    policies.replace(admin, ctx(), rules)
    (event,) = policy_events(people)
    assert event.reason is not None
    assert len(event.reason) <= 512
    assert event.reason.endswith("…")
    assert policies.diff(admin, ctx(), 0, 1).diff.count("\n+@id(") == 40


def test_a_refused_policy_is_not_stored(people: Tenancy) -> None:
    policies = people.runtime.services.policies
    admin = signed_in(people, "acme-admin")
    text = NO_CANCEL + '\n@id("let-viewers-cancel")\npermit (principal, action, resource);\n'
    with pytest.raises(InvalidPolicy) as caught:
        policies.replace(admin, ctx(), text)
    assert caught.value.status == 422
    assert caught.value.field == "text"
    assert caught.value.extra == {"line": 6, "policy_id": "let-viewers-cancel"}
    assert 'policy "let-viewers-cancel" at line 6 is a permit' in caught.value.detail
    unguarded = '@id("big")\nforbid (principal, action, resource) when { context.qubits > 3 };'
    with pytest.raises(InvalidPolicy, match='policy "big" at line 1'):
        policies.replace(admin, ctx(), unguarded)
    for text, field in (("// a\x00b\n", "text"), ("", "comment")):
        with pytest.raises(InvalidRequest) as nul:
            policies.replace(admin, ctx(), text, comment="x\x00" if field == "comment" else None)
        assert nul.value.field == field
    assert policies.current(admin, ctx()).version == 0
    assert policy_events(people) == []


def test_a_stale_edit_is_refused(people: Tenancy) -> None:
    policies = people.runtime.services.policies
    admin = signed_in(people, "acme-admin")
    policies.replace(admin, ctx(), NO_CANCEL)
    with pytest.raises(Conflict, match=r"started from v0, they are now at v1"):
        policies.replace(admin, ctx(), SMALL_JOBS, base_version=0)
    with pytest.raises(NotFound):
        policies.version(admin, ctx(), 7)


def test_only_tenant_admins_with_a_fresh_second_factor_change_policies(people: Tenancy) -> None:
    policies = people.runtime.services.policies
    with pytest.raises(StepUpRequired) as caught:
        policies.replace(signed_in(people, "acme-admin", mfa=False), ctx(), NO_CANCEL)
    assert (caught.value.acr_values, caught.value.max_age) == ("mfa", 900)
    with pytest.raises(StepUpRequired):
        policies.replace(signed_in(people, "acme-admin", age=3600), ctx(), NO_CANCEL)
    with pytest.raises(Forbidden) as denied:
        policies.replace(signed_in(people, "acme-dev"), ctx(), NO_CANCEL)
    assert denied.value.extra["policy_ids"] == []
    # Reading needs no step-up.
    assert policies.current(signed_in(people, "acme-admin", mfa=False), ctx()).version == 0
    with people.runtime.services.db.read() as session:
        refusals = session.scalars(
            select(m.AuditEvent).where(
                m.AuditEvent.event_type == Action.POLICY_SET.value,
                m.AuditEvent.outcome == "denied",
            )
        ).all()
    assert [e.policy_ids for e in refusals] == ["step-up-privileged", "step-up-privileged", ""]
    assert refusals[0].reason == "step-up required: acr_values=mfa max_age=900"


def test_another_process_notices_a_new_version_within_a_second(people: Tenancy) -> None:
    services = people.runtime.services
    admin = signed_in(people, "acme-admin")
    clock = [1000.0]
    other_engine = CedarPolicyEngine(step_up=True)
    other = TenantPolicyLoader(services.db, other_engine, clock=lambda: clock[0])
    dev = signed_in(people, "acme-dev")
    job = Resource("job", "job_x", dev.tenant_id, project_id=ProjectId(people.project_id))
    prod = {"environment": "prod"}

    other.refresh(dev.tenant_id)
    assert other_engine.authorize(dev, Action.JOB_CANCEL, job, context=prod).allowed
    services.policies.replace(admin, ctx(), NO_CANCEL)
    clock[0] += 0.5
    other.refresh(dev.tenant_id)  # not due yet: no query
    assert other_engine.authorize(dev, Action.JOB_CANCEL, job, context=prod).allowed
    clock[0] += 0.5
    other.refresh(dev.tenant_id)
    denied = other_engine.authorize(dev, Action.JOB_CANCEL, job, context=prod)
    assert denied.policy_ids == ("no-cancel-on-prod",)
    # ... and only for that tenant's principals.
    outsider = signed_in(people, "globex-dev", "globex")
    theirs = Resource(
        "job", "job_y", outsider.tenant_id, project_id=ProjectId(people.outsider_project_id)
    )
    other.refresh(outsider.tenant_id)
    assert other_engine.authorize(outsider, Action.JOB_CANCEL, theirs, context=prod).allowed


def test_a_tenants_policies_load_whatever_scope_the_request_has_bound(people: Tenancy) -> None:
    services = people.runtime.services
    services.policies.replace(signed_in(people, "acme-admin"), ctx(), NO_CANCEL)
    dev = signed_in(people, "acme-dev")
    engine = CedarPolicyEngine()
    loader = TenantPolicyLoader(services.db, engine)
    with scope_bound(NO_TENANT):  # as before a request's caller is known
        loader.refresh(dev.tenant_id)
    job = Resource("job", "job_x", dev.tenant_id, project_id=ProjectId(people.project_id))
    denied = engine.authorize(dev, Action.JOB_CANCEL, job, context={"environment": "prod"})
    assert denied.policy_ids == ("no-cancel-on-prod",)


def test_stored_policies_that_no_longer_load_lock_the_tenant_down(people: Tenancy) -> None:
    services = people.runtime.services
    dev = signed_in(people, "acme-dev")
    broken = '@id("gone")\nforbid (principal, action, resource) when { context.removed_key };'
    with services.db.write() as session:
        session.execute(
            insert(m.TENANT_POLICIES),
            {
                "tenant_id": dev.tenant_id,
                "version": 1,
                "text": broken,
                "sha256": sha256_hex(broken),
                "created_at": datetime.now(UTC),
                "created_by": "test",
            },
        )
    engine = CedarPolicyEngine()
    loader = TenantPolicyLoader(services.db, engine)
    loader.refresh(dev.tenant_id)
    job = Resource("job", "job_x", dev.tenant_id, project_id=ProjectId(people.project_id))
    assert engine.authorize(dev, Action.JOB_READ, job).policy_ids == ("tenant-policies-unloadable",)
    admin = signed_in(people, "acme-admin")
    tenant = Resource("tenant", admin.tenant_id, admin.tenant_id)
    assert engine.authorize(admin, Action.POLICY_SET, tenant).allowed


def test_local_time_follows_the_tenants_time_zone(people: Tenancy) -> None:
    services = people.runtime.services
    admin = signed_in(people, "acme-admin")
    evenings = """
    @id("no-reads-after-20h")
    forbid (principal, action == Qustody::Action::"job:read", resource)
    unless { context.local_hour < 20 };
    """
    services.policies.replace(admin, ctx(), evenings)
    with services.db.write() as session:
        session.execute(
            update(m.Tenant).where(m.Tenant.id == admin.tenant_id).values(timezone="Asia/Tokyo")
        )
    clock = [0.0]
    engine = CedarPolicyEngine()
    loader = TenantPolicyLoader(services.db, engine, clock=lambda: clock[0])
    loader.refresh(admin.tenant_id)
    job = Resource("job", "job_x", admin.tenant_id, project_id=ProjectId(people.project_id))
    noon_utc = {"now": datetime(2025, 3, 4, 12, 0, tzinfo=UTC)}  # 21:00 in Tokyo
    refused = engine.authorize(admin, Action.JOB_READ, job, context=noon_utc)
    assert refused.policy_ids == ("no-reads-after-20h",)
    with services.db.write() as session:
        session.execute(
            update(m.Tenant).where(m.Tenant.id == admin.tenant_id).values(timezone="Europe/Lisbon")
        )
    clock[0] += 1
    loader.refresh(admin.tenant_id)
    assert engine.authorize(admin, Action.JOB_READ, job, context=noon_utc).allowed


# -- the guard: denials name the rule; foreign stays not-found -------------------------------


def test_denials_name_the_rule_and_nothing_of_other_tenants(people: Tenancy) -> None:
    services = people.runtime.services
    guard = services.jobs._guard
    admin = signed_in(people, "acme-admin")
    services.policies.replace(admin, ctx(), NO_CANCEL)
    dev = signed_in(people, "acme-dev")
    job = Resource("job", "job_x", dev.tenant_id, project_id=ProjectId(people.project_id))

    with pytest.raises(Forbidden) as named:
        guard.check(dev, Action.JOB_CANCEL, job, ctx(), context={"environment": "prod"})
    assert "the policy 'no-cancel-on-prod' forbids it" in named.value.detail
    assert named.value.extra["policy_ids"] == ["no-cancel-on-prod"]

    viewer = signed_in(people, "acme-view")
    with pytest.raises(Forbidden) as default_deny:
        guard.check(viewer, Action.JOB_CANCEL, job, ctx())
    assert "no policy permits it" in default_deny.value.detail
    assert default_deny.value.extra["policy_ids"] == []

    # Globex probing acme's job: the same not-found as a missing job, no rule named.
    outsider = signed_in(people, "globex-dev", "globex")
    with pytest.raises(NotFound) as foreign:
        guard.check(outsider, Action.JOB_CANCEL, job, ctx(), context={"environment": "prod"})
    with pytest.raises(NotFound) as missing:
        services.jobs.cancel(outsider, ctx(), "job_01JZZZZZZZZZZZZZZZZZZZZZZZ")
    assert foreign.value.detail.replace("job_x", "ID") == missing.value.detail.replace(
        "job_01JZZZZZZZZZZZZZZZZZZZZZZZ", "ID"
    )
    assert foreign.value.extra == missing.value.extra == {"resource_type": "job"}


def test_a_denial_by_many_long_named_forbids_is_still_recorded(people: Tenancy) -> None:
    services = people.runtime.services
    admin = signed_in(people, "acme-admin")
    names = [f"no-cancels-{n}-" + "x" * 110 for n in range(6)]
    text = "".join(
        f'@id("{name}")\nforbid (principal, action == Qustody::Action::"job:cancel", resource);\n'
        for name in names
    )
    services.policies.replace(admin, ctx(), text)
    dev = signed_in(people, "acme-dev")
    job = Resource("job", "job_x", dev.tenant_id, project_id=ProjectId(people.project_id))
    with pytest.raises(Forbidden) as caught:
        services.jobs._guard.check(dev, Action.JOB_CANCEL, job, ctx())
    assert caught.value.extra["policy_ids"] == sorted(names)
    with services.db.read() as session:
        event = session.scalars(
            select(m.AuditEvent).where(m.AuditEvent.event_type == Action.JOB_CANCEL.value)
        ).one()
    assert event.outcome == "denied"
    assert event.policy_ids is not None
    assert event.policy_ids.startswith(sorted(names)[0])
    assert len(event.policy_ids) == 512


# -- job submissions: backend, qubits and data class reach the policies --------------------


def test_a_submission_is_decided_with_its_qubits_and_backend(people: Tenancy) -> None:
    services = people.runtime.services
    admin = signed_in(people, "acme-admin")
    services.policies.replace(admin, ctx(), SMALL_JOBS)
    dev = signed_in(people, "acme-dev")

    def submit(qubits: int, backend: str) -> str:
        spec = SubmitRequest(project="research", backend=backend, shots=10, qasm=ghz_qasm2(qubits))
        return services.jobs.submit(dev, ctx(), spec).id

    assert submit(3, "aer-stabilizer")
    with pytest.raises(Forbidden) as caught:
        submit(4, "aer-stabilizer")
    assert caught.value.extra["policy_ids"] == ["dev-max-3-qubits"]
    # Globex's developers are not bound by acme's rule.
    outsider = signed_in(people, "globex-dev", "globex")
    spec = SubmitRequest(project="research", backend="aer-stabilizer", shots=10, qasm=ghz_qasm2(5))
    assert services.jobs.submit(outsider, ctx(), spec).id


def test_restricted_projects_need_a_fresh_second_factor(people: Tenancy) -> None:
    services = people.runtime.services
    admin = signed_in(people, "acme-admin")
    services.admin.create_project(admin, ctx(), "vault", DataClass.RESTRICTED)
    spec = SubmitRequest(project="vault", backend="aer-statevector", shots=10, qasm=ghz_qasm2(2))
    job_id = services.jobs.submit(admin, ctx(), spec).id
    assert services.jobs.get(admin, ctx(), job_id).id == job_id
    stale = signed_in(people, "acme-admin", age=3600)
    with pytest.raises(StepUpRequired) as caught:
        services.jobs.get(stale, ctx(), job_id)
    assert caught.value.extra["policy_ids"] == ["step-up-restricted-data"]
    with pytest.raises(StepUpRequired):
        services.jobs.submit(stale, ctx(), spec)
    # Internal projects do not ask for it.
    internal = SubmitRequest(
        project="research", backend="aer-statevector", shots=10, qasm=ghz_qasm2(2)
    )
    assert services.jobs.submit(stale, ctx(), internal).id


# -- tokens one mints for oneself --------------------------------------------------------------


def test_a_token_minted_for_oneself_is_no_stronger_than_ones_own(people: Tenancy) -> None:
    admin = people.runtime.services.admin
    tokens = people.runtime.services.tokens
    strong = signed_in(people, "acme-admin", age=120)
    minted = tokens.authenticate(
        admin.issue_token(strong, ctx(), principal_name=None, scopes=["job"], ttl_seconds=60).token
    )
    assert (minted.acr, minted.amr, minted.auth_time) == (strong.acr, strong.amr, strong.auth_time)
    assert minted.auth_strength == "aal2"
    weak = signed_in(people, "acme-admin", mfa=False)
    from_weak = tokens.authenticate(
        admin.issue_token(weak, ctx(), principal_name=None, scopes=None, ttl_seconds=60).token
    )
    assert (from_weak.amr, from_weak.auth_strength) == (frozenset({"pwd"}), "aal1")
    # A token for someone else carries no sign-in of the issuer.
    for_dev = tokens.authenticate(
        admin.issue_token(
            strong, ctx(), principal_name="acme-dev", scopes=None, ttl_seconds=60
        ).token
    )
    assert (for_dev.acr, for_dev.amr, for_dev.auth_time) == (None, frozenset(), None)


def test_the_example_policies_load_from_the_api_path(people: Tenancy) -> None:
    policies = people.runtime.services.policies
    admin = signed_in(people, "acme-admin")
    text = (EXAMPLES / "tenant-policies.cedar").read_text()
    assert policies.replace(admin, ctx(), text).version == 1
    assert TenantId(admin.tenant_id)


def test_a_development_gateway_without_step_up_says_so(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'q.db'}")
    with pytest.warns(InsecureDevelopmentWarning, match="MFA step-up is off"):
        runtime = build_runtime(settings)
    runtime.close()

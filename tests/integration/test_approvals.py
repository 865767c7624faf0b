"""Approvals, just-in-time elevation and break-glass, on both databases.

Every expiry is driven by a ManualClock. Jobs are held by a tenant's own
``@approvals`` forbid (the platform's prod-QPU rule needs a QPU backend the
test registry does not have; the mechanism is the same).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from qustody.api.app import Runtime, build_runtime
from qustody.domain.clock import ManualClock
from qustody.domain.errors import QustodyError
from qustody.domain.models import Principal, RequestContext
from qustody.domain.vocabulary import Role
from qustody.governance.approvals import ApprovalService, Justification
from qustody.identity.tokens import roles_of
from qustody.jobs.service import SubmitRequest
from qustody.storage import models as m
from qustody.storage.db import system_scope
from support import Tenancy, ctx, ghz_qasm2, make_settings, seed

HOLD_JOBS = """
@id("acme-jobs-need-two")
@approvals("2")
@approval_ttl("3600")
forbid (principal, action == Qustody::Action::"job:submit", resource)
unless { context has approved && context.approved };
"""
HOLD_EXPORTS = """
@id("acme-results-need-one")
@approvals("1")
forbid (principal, action == Qustody::Action::"result:read", resource)
unless { context has approved && context.approved };
"""
WHY = Justification("calibration run for the quarterly review", "CHG-1042")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def runtime(tmp_path: Path, database_url: str, clock: ManualClock) -> Iterator[Runtime]:
    rt = build_runtime(make_settings(tmp_path, database_url), clock=clock)
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture
def tenancy(runtime: Runtime) -> Tenancy:
    t = seed(runtime)
    admin = runtime.services.admin
    for name in ("acme-admin2", "acme-admin3"):
        admin.add_member(
            t.tenant_admin, ctx(), principal_name=name, role=Role.TENANT_ADMIN, project_ref=None
        )
    return t


def approvals(t: Tenancy) -> ApprovalService:
    service = t.runtime.services.approvals
    assert service is not None
    return service


def policy(t: Tenancy, text: str) -> None:
    t.runtime.services.policies.replace(t.tenant_admin, ctx(), text)


def submit(t: Tenancy, who: Principal, justification: Justification | None = WHY) -> str:
    spec = SubmitRequest(
        project="research",
        backend="aer-statevector",
        shots=8,
        qasm=ghz_qasm2(2),
        approval=justification,
    )
    return t.runtime.services.jobs.submit(who, ctx(), spec).id


def state(t: Tenancy, job_id: str) -> tuple[str, str | None]:
    with t.runtime.services.db.reading() as c:
        row = c.execute(
            select(m.JOBS.c.state, m.JOBS.c.error_code).where(m.JOBS.c.id == job_id)
        ).one()
    return row.state, row.error_code


def events(t: Tenancy, approval_id: str) -> list[str]:
    with t.runtime.services.db.reading() as c:
        return list(
            c.execute(
                select(m.AUDIT_EVENTS.c.event_type)
                .where(m.AUDIT_EVENTS.c.approval_id == approval_id)
                .order_by(m.AUDIT_EVENTS.c.seq)
            ).scalars()
        )


def test_a_held_job_needs_n_distinct_approvers_never_its_requester(tenancy: Tenancy) -> None:
    t = tenancy
    policy(t, HOLD_JOBS)
    with pytest.raises(QustodyError) as refused:
        submit(t, t.developer, None)
    assert refused.value.code == "approval_required"
    assert refused.value.extra["approvers"] == 2
    assert "acme-jobs-need-two" in refused.value.detail

    job_id = submit(t, t.developer)
    assert state(t, job_id) == ("awaiting_approval", None)
    job = t.runtime.services.jobs.get(t.developer, ctx(), job_id)
    assert job.approval_id is not None
    service = approvals(t)
    pending = service.get(t.developer, ctx(), job.approval_id)
    assert (pending.kind, pending.required, pending.state) == ("job", 2, "pending")

    # The requester can never approve, even as a tenant admin (the Cedar rule).
    admin_job = submit(t, t.tenant_admin)
    admin_request = t.runtime.services.jobs.get(t.tenant_admin, ctx(), admin_job).approval_id
    assert admin_request is not None
    with pytest.raises(QustodyError) as own:
        service.approve(t.tenant_admin, ctx(), admin_request, None)
    assert own.value.status == 403
    assert "approval-never-own" in own.value.detail
    # A developer is no approver.
    with pytest.raises(QustodyError):
        service.approve(t.viewer, ctx(), job.approval_id, None)

    service.approve(t.tenant_admin, ctx(), job.approval_id, "ok")
    with pytest.raises(QustodyError) as twice:
        service.approve(t.tenant_admin, ctx(), job.approval_id, None)
    assert twice.value.code == "conflict"
    assert state(t, job_id)[0] == "awaiting_approval"
    done = service.approve(t.principal("acme-admin2"), ctx(), job.approval_id, None)
    assert (done.state, done.approvals) == ("approved", 2)
    assert state(t, job_id)[0] == "queued"
    assert events(t, job.approval_id) == [
        "approval:request",
        "approval:approve",
        "approval:approve",
        "job:queue",
    ]
    # Listed for approvers until they vote, then no more.
    waiting = service.listing(t.principal("acme-admin2"), ctx(), to_approve=True)
    assert [a.id for a in waiting] == [admin_request]


def test_a_denial_rejects_and_an_expiry_rejects_the_held_job(
    tenancy: Tenancy, clock: ManualClock
) -> None:
    t = tenancy
    policy(t, HOLD_JOBS)
    service = approvals(t)
    denied = submit(t, t.developer)
    denied_request = t.runtime.services.jobs.get(t.developer, ctx(), denied).approval_id
    assert denied_request is not None
    service.deny(t.tenant_admin, ctx(), denied_request, "not this quarter")
    assert state(t, denied) == ("rejected", "approval_denied")

    expiring = submit(t, t.developer)
    cancelled = submit(t, t.developer)
    cancelled_request = t.runtime.services.jobs.get(t.developer, ctx(), cancelled).approval_id
    assert cancelled_request is not None
    t.runtime.services.jobs.cancel(t.developer, ctx(), cancelled)
    assert state(t, cancelled)[0] == "cancelled"
    assert service.get(t.developer, ctx(), cancelled_request).state == "cancelled"

    clock.advance(3599)
    assert service.sweep() == 0
    clock.advance(1)
    assert service.sweep() == 1
    assert state(t, expiring) == ("rejected", "approval_expired")
    request = t.runtime.services.jobs.get(t.developer, ctx(), expiring).approval_id
    assert request is not None
    with pytest.raises(QustodyError) as late:
        service.approve(t.tenant_admin, ctx(), request, None)
    assert late.value.code == "conflict"
    assert "approval:expire" in events(t, request)


def test_an_approved_action_is_spent_once_by_its_requester(tenancy: Tenancy) -> None:
    t = tenancy
    job_id = submit(t, t.developer, None)
    worker, sandbox = t.runtime.make_worker(slots=1)
    try:
        claimed = worker.claim()
        assert claimed is not None
        worker.run_claimed(claimed)
    finally:
        sandbox.close()
    assert state(t, job_id)[0] == "completed"
    policy(t, HOLD_EXPORTS)
    jobs = t.runtime.services.jobs
    with pytest.raises(QustodyError) as held:
        jobs.result(t.developer, ctx(), job_id)
    assert held.value.code == "approval_required"

    service = approvals(t)
    asked = service.request(
        t.developer, ctx(), action="result:read", resource=job_id, justification=WHY
    )
    with_header = RequestContext("req_x", approval_id=asked.id)
    with pytest.raises(QustodyError) as early:
        jobs.result(t.developer, with_header, job_id)
    assert early.value.code == "approval_invalid"
    service.approve(t.tenant_admin, ctx(), asked.id, None)
    # Someone else cannot spend it.
    with pytest.raises(QustodyError) as other:
        jobs.result(t.principal("acme-admin2"), with_header, job_id)
    assert other.value.code == "approval_invalid"
    assert jobs.result(t.developer, with_header, job_id).counts
    with pytest.raises(QustodyError) as again:
        jobs.result(t.developer, with_header, job_id)
    assert again.value.code == "approval_invalid"
    assert "used already" in again.value.detail
    assert events(t, asked.id)[-1] == "approval:use"


def test_two_approvers_racing_for_the_last_slot_queue_the_job_once(tenancy: Tenancy) -> None:
    t = tenancy
    policy(t, HOLD_JOBS)
    service = approvals(t)
    job_id = submit(t, t.developer)
    request = t.runtime.services.jobs.get(t.developer, ctx(), job_id).approval_id
    assert request is not None
    service.approve(t.tenant_admin, ctx(), request, None)
    racers = [t.principal("acme-admin2"), t.principal("acme-admin3")]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(racers))

    def vote(who: Principal) -> None:
        barrier.wait()
        try:
            service.approve(who, ctx(), request, None)
            outcomes.append("ok")
        except QustodyError as error:
            outcomes.append(error.code)

    threads = [threading.Thread(target=vote, args=(p,)) for p in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["conflict", "ok"]
    assert state(t, job_id)[0] == "queued"
    with t.runtime.services.db.reading() as c:
        queued = c.execute(
            select(m.JOB_TRANSITIONS.c.id).where(
                m.JOB_TRANSITIONS.c.job_id == job_id, m.JOB_TRANSITIONS.c.to_state == "queued"
            )
        ).all()
    assert len(queued) == 1


def test_an_elevation_is_active_once_approved_and_gone_when_it_expires(
    tenancy: Tenancy, clock: ManualClock
) -> None:
    t = tenancy
    elevations = t.runtime.services.elevations
    assert elevations is not None
    service = approvals(t)
    with pytest.raises(QustodyError) as too_long:
        elevations.request(
            t.viewer,
            ctx(),
            role="developer",
            project="research",
            duration_seconds=9 * 3600,
            justification=WHY,
        )
    assert too_long.value.code == "invalid_request"
    asked = elevations.request(
        t.viewer,
        ctx(),
        role="developer",
        project="research",
        duration_seconds=3600,
        justification=WHY,
    )
    assert asked.kind == "elevation"

    def roles() -> set[Role]:
        # As every request authenticates: the runtime's clock decides what is in force.
        caller = t.runtime.services.tokens.authenticate(t.token_for("acme-view"))
        return {role for _, role in caller.project_roles}

    assert roles() == {Role.VIEWER}
    service.approve(t.tenant_admin, ctx(), asked.id, None)
    assert roles() == {Role.VIEWER, Role.DEVELOPER}
    active = elevations.listing(t.viewer, ctx(), active=True)
    assert [(g.role, g.active) for g in active] == [("developer", True)]
    clock.advance(3600)
    assert roles() == {Role.VIEWER}
    assert elevations.listing(t.viewer, ctx(), active=True) == []
    assert service.sweep() == 1  # the expiry is recorded; access had already ended
    with t.runtime.services.db.reading() as c:
        kinds = set(
            c.execute(
                select(m.AUDIT_EVENTS.c.event_type).where(
                    m.AUDIT_EVENTS.c.event_type.like("elevation:%")
                )
            ).scalars()
        )
    assert kinds == {"elevation:activate", "elevation:expire"}


def test_break_glass_alerts_at_once_and_waits_for_another_operators_review(
    tenancy: Tenancy, clock: ManualClock
) -> None:
    t = tenancy
    breakglass = t.runtime.services.breakglass
    assert breakglass is not None
    root = t.principal("root", "platform")
    with pytest.raises(QustodyError) as not_operator:
        breakglass.invoke(t.tenant_admin, ctx(), reason="x" * 30, duration_seconds=600)
    assert not_operator.value.status == 403
    with pytest.raises(QustodyError) as short:
        breakglass.invoke(root, ctx(), reason="oops", duration_seconds=600)
    assert short.value.field == "reason"
    with pytest.raises(QustodyError):
        breakglass.invoke(root, ctx(), reason="key provider outage INC-7", duration_seconds=7200)
    grant = breakglass.invoke(
        root, ctx(), reason="key provider outage, INC-7 on call", duration_seconds=900
    )
    assert grant.breakglass
    assert grant.active
    assert grant.role == "tenant-admin"
    with t.runtime.services.db.reading() as c:
        alert = c.execute(select(m.ALERTS).where(m.ALERTS.c.kind == "breakglass.invoked")).one()
        _, _ = roles_of(c, root.id, clock.now())
        tenant_roles, _ = roles_of(c, root.id, clock.now())
    assert alert.payload["grant_id"] == grant.id
    assert Role.TENANT_ADMIN in tenant_roles
    assert [g.id for g in breakglass.report(root, ctx())] == [grant.id]
    with pytest.raises(QustodyError) as own:
        breakglass.review(root, ctx(), grant.id, "all fine")
    assert own.value.status == 403
    with system_scope(), t.runtime.services.db.write() as session:
        session.add(
            m.Principal(
                id="prn_root2",
                tenant_id=root.tenant_id,
                name="root2",
                kind="user",
                created_at=clock.now(),
            )
        )
        session.flush()
        session.add(
            m.Membership(
                tenant_id=root.tenant_id,
                principal_id="prn_root2",
                project_id=None,
                role=Role.PLATFORM_ADMIN.value,
                created_at=clock.now(),
            )
        )
    reviewer = t.principal("root2", "platform")
    reviewed = breakglass.review(reviewer, ctx(), grant.id, "rotation was needed; fine")
    assert reviewed.reviewed_by == reviewer.id
    assert breakglass.report(root, ctx()) == []
    clock.advance(900)
    with t.runtime.services.db.reading() as c:
        tenant_roles, _ = roles_of(c, root.id, clock.now())
    assert Role.TENANT_ADMIN not in tenant_roles

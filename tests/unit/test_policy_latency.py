"""Decision latency with many tenants' policies loaded.

Prints p50/p99 (run with ``-s`` to see them). The assertion is deliberately
loose, on the median only, so a busy test machine cannot make it flaky; it
catches regressions of an order of magnitude, such as evaluating every tenant's
policies for every request.
"""

from __future__ import annotations

import random
import time

from qustody.domain.ids import PrincipalId, ProjectId, TenantId
from qustody.domain.models import Principal, Resource
from qustody.domain.vocabulary import Action, DataClass, Role
from qustody.policy.engine import CedarPolicyEngine

TENANTS = 50
POLICIES_PER_TENANT = 10
_ACTIONS = [
    "job:submit",
    "job:read",
    "job:list",
    "job:cancel",
    "result:read",
    "project:read",
    "project:list",
    "backend:read",
    "token:issue",
    "member:list",
]


def tenant_policies(tenant: int) -> str:
    """Ten policies of one tenant, half of them on the hot actions."""
    policies = []
    for number in range(POLICIES_PER_TENANT):
        effect = "forbid" if number % 3 == 2 else "permit"
        action = _ACTIONS[number]
        policies.append(
            f'@id("ten_{tenant}/rule-{number}")\n'
            f'{effect} (principal, action == Qustody::Action::"{action}", resource)\n'
            f'when {{ context has environment && context.environment == "env-{number}" }};\n'
        )
    return "\n".join(policies)


def test_decision_latency_with_50_tenants_of_10_policies() -> None:
    engine = CedarPolicyEngine(
        tenant_policies={TenantId(f"ten_{t}"): tenant_policies(t) for t in range(TENANTS)}
    )
    rng = random.Random(7)  # noqa: S311 - a reproducible workload mix, not a secret
    requests = []
    for index in range(2_000):
        tenant = TenantId(f"ten_{rng.randrange(TENANTS)}")
        project = ProjectId(f"prj_{tenant}")
        caller = Principal(
            id=PrincipalId(f"usr_{index}"),
            tenant_id=tenant,
            name="dev",
            kind="user",
            token_id="tok",
            scopes=frozenset({"job", "result"}),
            auth_method="oidc",
            project_roles=((project, Role.DEVELOPER),),
        )
        job = Resource(
            type="job",
            id=f"job_{index}",
            tenant_id=tenant,
            project_id=project,
            data_class=DataClass.INTERNAL,
            owner_id=caller.id,
        )
        action = rng.choice([Action.JOB_READ, Action.JOB_CANCEL, Action.RESULT_READ])
        requests.append((caller, action, job, {"environment": "prod"}))

    for caller, action, job, context in requests:  # warm the per-action policy subsets
        assert engine.authorize(caller, action, job, context=context).allowed
    samples = []
    for _ in range(5):
        for caller, action, job, context in requests:
            start = time.perf_counter_ns()
            engine.authorize(caller, action, job, context=context)
            samples.append(time.perf_counter_ns() - start)
    samples.sort()
    p50 = samples[len(samples) // 2] / 1e6
    p99 = samples[int(len(samples) * 0.99)] / 1e6
    print(f"\ndecision latency over {len(samples)} decisions: p50 {p50:.3f} ms, p99 {p99:.3f} ms")
    assert p50 < 1.0

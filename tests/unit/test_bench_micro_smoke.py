"""The micro-benchmarks run, at smoke scale, and return well-formed measurements.

No timing is asserted: this only keeps the benchmark code from rotting.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
from benchmarks.harness import Config, Measurement
from benchmarks.micro import BENCHMARKS, _id_at, policy_workload, tenant_policies

from qustody.domain.ids import looks_like_id, new_tenant_id
from qustody.policy.engine import CedarPolicyEngine


def check(name: str, rows: list[Measurement]) -> None:
    assert rows, f"{name} returned no measurements"
    for row in rows:
        assert isinstance(row, Measurement)
        assert row.benchmark == name
        assert row.case, row
        assert row.metric, row
        assert row.unit, row
        assert math.isfinite(row.value), row
        assert row.value > 0, row
        assert (row.goal is None) == (row.met is None), row


@pytest.mark.parametrize("name", ["policy", "encryption"])
def test_in_process_benchmarks(name: str, tmp_path: Path) -> None:
    check(name, BENCHMARKS[name](Config(workdir=tmp_path, smoke=True)))


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
@pytest.mark.parametrize("name", ["audit", "auditlog", "growth"])
def test_database_benchmarks(
    name: str, database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server = request.getfixturevalue("postgres_server") if database == "postgres" else None
    rows = BENCHMARKS[name](Config(workdir=tmp_path, smoke=True, postgres=server))
    check(name, rows)
    kinds = {row.case.split(" ", 1)[0].rstrip(",") for row in rows}
    assert kinds == ({"SQLite", "PostgreSQL"} if server else {"SQLite"})
    if name == "growth":
        assert any(row.metric == "p50 ratio" and row.goal for row in rows)


def test_every_benchmark_is_exported() -> None:
    assert set(BENCHMARKS) == {"policy", "encryption", "audit", "auditlog", "growth"}


def test_tenant_policies_validate_and_the_mix_conforms_to_the_schema() -> None:
    tenants = [new_tenant_id() for _ in range(5)]
    # check_requests: every request, entity and context is checked against the schema.
    engine = CedarPolicyEngine(
        tenant_policies={t: tenant_policies(t, i) for i, t in enumerate(tenants)},
        check_requests=True,
    )
    assert len(engine.policy_ids(tenants[0])) == len(engine.policy_ids()) + 10
    decisions = [
        engine.authorize(caller, action, resource, context=context)
        for caller, action, resource, context in policy_workload(tenants, 300)
    ]
    assert not [d for d in decisions if d.errors]
    allowed = sum(d.allowed for d in decisions)
    assert 0 < allowed < len(decisions)
    # The tenants' own policies decide some of them.
    assert any("/" in pid for d in decisions for pid in d.policy_ids)


def test_bulk_ids_have_the_gateways_shape() -> None:
    rng = random.Random(1)  # noqa: S311 - not a secret
    assert looks_like_id(_id_at("job", datetime.now(UTC), rng))


def test_merkle_benchmark(tmp_path: Path) -> None:
    from benchmarks.merkle import BENCHMARKS as MERKLE

    check("merkle", MERKLE["merkle"](Config(workdir=tmp_path, smoke=True)))

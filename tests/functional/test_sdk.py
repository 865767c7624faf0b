"""The SDK's Client against a real gateway over real HTTP (fixture: ``gateway``)."""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from qustody.client import (
    ClbitRegister,
    Client,
    JobState,
    QustodyAPIError,
    QustodyConnectionError,
)

BACKEND = "aer-statevector"
WAIT_S = 120.0

BELL_QASM2 = """OPENQASM 2.0;
include "qelib1.inc";
qreg q[2];
creg c[2];
h q[0];
cx q[0],q[1];
measure q[0] -> c[0];
measure q[1] -> c[1];
"""

# Two registers: a = [q0] is always 1, b = [q1, q2] is always "10" (b[1] = q2 = 1).
TWO_REGISTERS_QASM3 = """OPENQASM 3.0;
include "stdgates.inc";
qubit[3] q;
bit[1] a;
bit[2] b;
x q[0];
x q[2];
a[0] = measure q[0];
b[0] = measure q[1];
b[1] = measure q[2];
"""


@pytest.fixture
def client(gateway: Any) -> Iterator[Client]:
    with Client(gateway.url, gateway.developer_token) as developer:
        yield developer


def test_health_and_readiness(gateway: Any) -> None:
    with Client(gateway.url, None) as anonymous:
        assert anonymous.health().status == "ok"
        assert anonymous.ready().ready


def test_backends_are_listed_and_described(client: Client) -> None:
    names = [backend.name for backend in client.backends()]
    assert BACKEND in names

    backend = client.backend(BACKEND)
    assert backend.name == BACKEND
    assert backend.max_qubits > 0
    assert backend.max_shots >= 1024
    assert backend.basis_gates


def test_submit_wait_result_with_qasm2_text(client: Client, gateway: Any) -> None:
    seen: list[JobState] = []

    job = client.submit(BELL_QASM2, backend=BACKEND, shots=1000, project=gateway.project_id)
    assert job.id.startswith("job_")
    assert job.backend == BACKEND
    assert job.shots == 1000
    assert job.project_id == gateway.project_id
    assert job.circuit is not None
    assert (job.circuit.format, job.circuit.num_qubits, job.circuit.num_clbits) == ("qasm2", 2, 2)

    done = client.wait(job.id, timeout=WAIT_S, on_progress=lambda j: seen.append(j.state))
    assert done.state is JobState.COMPLETED
    assert done.finished_at is not None
    assert seen[-1] is JobState.COMPLETED
    assert len(seen) == len(set(seen)), "on_progress is called on state changes only"

    result = client.result(job.id)
    assert result.job_id == job.id
    assert set(result.counts) <= {"00", "11"}
    assert sum(result.counts.values()) == 1000
    assert result.memory is None
    assert result.clbit_registers == (ClbitRegister("c", 2),)
    assert result.metadata.backend == BACKEND
    assert result.metadata.shots == 1000

    detailed = client.job(job.id)
    assert detailed.transitions
    assert detailed.transitions[-1].to_state is JobState.COMPLETED


def test_qasm3_text_with_two_registers_and_memory(client: Client, gateway: Any) -> None:
    job = client.submit(
        TWO_REGISTERS_QASM3,
        backend=BACKEND,
        shots=64,
        project=gateway.project_id,
        memory=True,
        seed=7,
    )
    assert job.circuit is not None
    assert job.circuit.format == "qasm3"
    assert client.wait(job.id, timeout=WAIT_S).state is JobState.COMPLETED

    result = client.result(job.id)
    assert result.clbit_registers == (ClbitRegister("a", 1), ClbitRegister("b", 2))
    assert result.counts == {"10 1": 64}
    assert result.memory == ("10 1",) * 64
    assert result.metadata.seed == 7


def test_seeded_jobs_are_reproducible(client: Client, gateway: Any) -> None:
    counts = []
    for _ in range(2):
        job = client.submit(
            BELL_QASM2, backend=BACKEND, shots=200, project=gateway.project_id, seed=1234
        )
        client.wait(job.id, timeout=WAIT_S)
        counts.append(dict(client.result(job.id).counts))
    assert counts[0] == counts[1]


def test_memory_agrees_with_counts(client: Client, gateway: Any) -> None:
    job = client.submit(
        BELL_QASM2, backend=BACKEND, shots=50, project=gateway.project_id, memory=True
    )
    client.wait(job.id, timeout=WAIT_S)

    result = client.result(job.id)
    assert result.memory is not None
    assert len(result.memory) == 50
    assert Counter(result.memory) == Counter(dict(result.counts))


def test_job_list_pages_through_next_cursor(client: Client, gateway: Any) -> None:
    submitted = {
        client.submit(BELL_QASM2, backend=BACKEND, shots=10, project=gateway.project_id).id
        for _ in range(3)
    }

    listed = [job.id for job in client.jobs(project=gateway.project_id, limit=1)]
    assert submitted <= set(listed)
    assert len(listed) == len(set(listed)), "pages must not repeat jobs"

    first_page_only = list(itertools.islice(client.jobs(limit=2), 2))
    assert len(first_page_only) == 2

    for job_id in submitted:
        client.wait(job_id, timeout=WAIT_S)
    completed = {job.id for job in client.jobs(state=JobState.COMPLETED, backend=BACKEND)}
    assert submitted <= completed


def test_cancel_ends_the_job(client: Client, gateway: Any) -> None:
    shots = min(100_000, client.backend(BACKEND).max_shots)
    job = client.submit(BELL_QASM2, backend=BACKEND, shots=shots, project=gateway.project_id)

    client.cancel(job.id)
    final = client.wait(job.id, timeout=WAIT_S)

    # The worker may have finished it before the request arrived.
    assert final.state in {JobState.CANCELLED, JobState.COMPLETED}
    if final.state is JobState.CANCELLED:
        with pytest.raises(QustodyAPIError) as info:
            client.result(job.id)
        assert info.value.code == "job_cancelled"
        assert info.value.status == 409


# ----------------------------------------------------------------------- refusals


def test_unknown_backend_is_refused_with_its_code(client: Client, gateway: Any) -> None:
    with pytest.raises(QustodyAPIError) as info:
        client.submit(BELL_QASM2, backend="no-such-backend", project=gateway.project_id)
    assert info.value.code == "unknown_backend"
    assert info.value.status >= 400
    assert info.value.request_id

    with pytest.raises(QustodyAPIError) as lookup:
        client.backend("no-such-backend")
    # docs/api.md names no code for a lookup; either stable code is a clean refusal.
    assert lookup.value.code in {"unknown_backend", "not_found"}
    assert lookup.value.status == 404


def test_too_many_shots_is_refused_naming_the_field(client: Client, gateway: Any) -> None:
    limit = client.backend(BACKEND).max_shots

    with pytest.raises(QustodyAPIError) as info:
        client.submit(BELL_QASM2, backend=BACKEND, shots=limit + 1, project=gateway.project_id)

    error = info.value
    assert error.status == 422
    assert error.code == "too_many_shots"
    assert error.field == "shots"
    assert str(limit) in error.detail


def test_a_viewer_cannot_submit(gateway: Any) -> None:
    with (
        Client(gateway.url, gateway.viewer_token) as viewer,
        pytest.raises(QustodyAPIError) as info,
    ):
        viewer.submit(BELL_QASM2, backend=BACKEND, project=gateway.project_id)
    assert info.value.status == 403
    assert info.value.code == "forbidden"
    assert gateway.viewer_token not in str(info.value)


def test_a_viewer_can_still_read(gateway: Any) -> None:
    with Client(gateway.url, gateway.viewer_token) as viewer:
        assert BACKEND in {backend.name for backend in viewer.backends()}


def test_result_of_an_unknown_job_is_refused(client: Client) -> None:
    with pytest.raises(QustodyAPIError) as info:
        client.result("job_does_not_exist")
    assert info.value.status == 404


def test_a_bad_token_is_refused_without_echoing_it(gateway: Any) -> None:
    bogus = "not.a.token"
    with Client(gateway.url, bogus) as stranger, pytest.raises(QustodyAPIError) as info:
        stranger.backends()
    assert info.value.status == 401
    assert bogus not in str(info.value)
    assert bogus not in repr(info.value)


def test_an_unreachable_gateway_is_a_connection_error() -> None:
    with (
        Client("http://127.0.0.1:9", "t", timeout=2.0) as nowhere,
        pytest.raises(QustodyConnectionError) as info,
    ):
        nowhere.health()
    assert info.value.code == "connection_error"


# ------------------------------------------------------------------ administration


def test_tenant_admin_manages_projects_members_and_tokens(gateway: Any) -> None:
    suffix = uuid.uuid4().hex[:8]
    with Client(gateway.url, gateway.tenant_admin_token) as admin:
        project = admin.create_project(f"sdk-{suffix}", "internal")
        assert project.name == f"sdk-{suffix}"
        assert project.data_class == "internal"
        assert project.id in {p.id for p in admin.projects()}

        member = admin.add_member(f"sdk-dev-{suffix}", "developer", project=project.id)
        assert (member.name, member.role, member.kind) == (f"sdk-dev-{suffix}", "developer", "user")
        assert member.principal_id in {m.principal_id for m in admin.members(project=project.id)}

        issued = admin.issue_token(principal=f"sdk-dev-{suffix}", ttl_seconds=300)
        assert issued.principal_id == member.principal_id
        assert issued.token not in repr(issued)

    with Client(gateway.url, issued.token) as developer:
        assert developer.backends()
        developer.revoke_token(issued.jti)
        with pytest.raises(QustodyAPIError) as info:
            developer.backends()
        assert info.value.status == 401

"""Pure pieces: ids, the lifecycle graph, settings refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from qustody.domain.errors import ConfigurationError
from qustody.domain.ids import looks_like_id, new_job_id
from qustody.domain.vocabulary import SCOPES, TRANSITION_EVENT, TRANSITIONS, Action, JobState
from qustody.settings import load_settings


def test_ids_are_time_ordered_and_shaped() -> None:
    ids = [new_job_id() for _ in range(200)]
    assert all(looks_like_id(i) for i in ids)
    assert len(set(ids)) == len(ids)
    # the millisecond prefix orders ids created at least a millisecond apart
    assert [i[:14] for i in ids] == sorted(i[:14] for i in ids)
    for bad in ("job_", "job_../../etc", "JOB_01ARZ3NDEKTSV4RRFFQ69G5FAV", "x" * 40, ""):
        assert not looks_like_id(bad)


def test_lifecycle_graph() -> None:
    reachable = {JobState.SUBMITTED}
    frontier = [JobState.SUBMITTED]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in reachable:
                reachable.add(nxt)
                frontier.append(nxt)
    assert reachable == set(JobState)
    assert all(not TRANSITIONS[s] for s in JobState if s.terminal)
    assert set(TRANSITION_EVENT) == set(JobState)


def test_vocabulary_is_resource_colon_action() -> None:
    for action in Action:
        resource, _, verb = action.value.partition(":")
        assert resource
        assert verb
        assert resource in SCOPES


def test_production_refuses_development_conveniences(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="PostgreSQL"):
        load_settings({"QUSTODY_MODE": "production", "QUSTODY_DATA_DIR": str(tmp_path)})
    with pytest.raises(ConfigurationError, match="keyring"):
        load_settings(
            {
                "QUSTODY_MODE": "production",
                "QUSTODY_DATABASE_URL": "postgresql+psycopg://db/qustody",
            }
        )
    with pytest.raises(ConfigurationError, match="unknown"):
        load_settings({"QUSTODY_MODE": "production", "QUSTODY_DATBASE_URL": "typo"})


def test_settings_parse_and_refuse_bad_values() -> None:
    settings = load_settings({"QUSTODY_LEASE_SECONDS": "2.5", "QUSTODY_WORKER_SLOTS": "3"})
    assert settings.lease_seconds == 2.5
    assert settings.worker_slots == 3
    assert load_settings({"QUSTODY_SANDBOX_MEMORY_MB": "512"}).sandbox.memory_mb == 512
    with pytest.raises(ConfigurationError, match="QUSTODY_WORKER_SLOTS"):
        load_settings({"QUSTODY_WORKER_SLOTS": "many"})
    with pytest.raises(ConfigurationError, match="900"):
        load_settings({"QUSTODY_TOKEN_MAX_TTL_SECONDS": "86400"})
    assert load_settings({"QUSTODY_API_PROCESSES": "2"}).api_processes == 2
    for bad in ("0", "65"):
        with pytest.raises(
            ConfigurationError, match=r"QUSTODY_API_PROCESSES\) is .* between 1 and 64"
        ):
            load_settings({"QUSTODY_API_PROCESSES": bad})
    every = load_settings({"QUSTODY_AUDIT_CHECKPOINT_SECONDS": "1.5"}).audit_checkpoint_seconds
    assert every == 1.5
    with pytest.raises(ConfigurationError, match=r"AUDIT_CHECKPOINT_SECONDS is 0\.0"):
        load_settings({"QUSTODY_AUDIT_CHECKPOINT_SECONDS": "0"})


def test_the_embedded_worker_gets_the_apps_settings_and_the_master_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qustody.api.app import WorkerProcess

    monkeypatch.setenv("QUSTODY_MASTER_KEY", "from-the-environment")
    monkeypatch.setenv("QUSTODY_LEASE_SECONDS", "99")
    settings = load_settings({}, data_dir=tmp_path, lease_seconds=7.0, worker_slots=2)
    env = WorkerProcess(settings)._env
    assert env["QUSTODY_MASTER_KEY"] == "from-the-environment"
    assert env["QUSTODY_LEASE_SECONDS"] == "7.0"  # the app's settings win
    assert env["QUSTODY_DATA_DIR"] == str(tmp_path)
    child = load_settings({k: v for k, v in env.items() if k.startswith("QUSTODY_")})
    assert (child.lease_seconds, child.worker_slots, child.data_dir) == (7.0, 2, tmp_path)
    assert child.sandbox == settings.sandbox

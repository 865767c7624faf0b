"""Audit events as OCSF: every event type has a class, and every emitted event
validates against the JSON Schema of its class (see ``ocsf_schema``)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import fields
from datetime import UTC, datetime, timedelta, timezone

import pytest

from ocsf_schema import assert_valid, published_schema
from qustody.audit import ocsf
from qustody.audit.events import FIELDS, utc_text
from qustody.audit.ocsf import (
    CLASSES,
    OCSF_VERSION,
    OTHER,
    UNKNOWN,
    OcsfMappingError,
    for_tenant,
    rule_for,
    to_ocsf,
    write_jsonl,
)
from qustody.audit.recorder import Actor, Target, event_row
from qustody.domain.models import Decision, RequestContext
from qustody.domain.vocabulary import Action

AT = datetime(2026, 11, 21, 22, 37, 29, 123456, tzinfo=UTC)
VERSION = "0.1.0"

# -- events ---------------------------------------------------------------------------


def _event(action: str | Action = Action.JOB_SUBMIT, seq: int = 7, **changes: object) -> dict:
    row = event_row(
        Action.JOB_SUBMIT,
        actor=Actor("prn_1", "ten_1", "qustody-token", "jti-1"),
        target=Target("job", "job_1", "ten_1"),
        decision=Decision(True, Action.JOB_SUBMIT, ("tenant-developer", "project-quota")),
        request=RequestContext("req_1", "203.0.113.9", "qustody-cli/0.1 \u00e9"),
        job_id="job_1",
        payload_sha256="ab" * 32,
        reason="backend=aer shots=1024",
        at=AT,
    )
    # Fields being added by the audit format work are present or None.
    row.setdefault("auth_strength", None)
    row.setdefault("approval_id", None)
    return {**row, "event_type": str(action), "seq": seq, **changes}


def _variants(action: Action) -> Iterator[dict]:
    """The shapes an event of ``action`` takes: allowed, denied, a foreign probe, system."""
    yield _event(action)
    yield _event(action, decision="deny", outcome="denied", policy_ids=None, reason=None)
    yield _event(
        action,
        outcome="denied",
        decision="deny",
        resource_id=None,
        job_id=None,
        payload_sha256=None,
        client_addr="2001:db8::7",
    )
    yield _event(
        action,
        actor_id="worker:1",
        actor_tenant_id=None,
        auth_method="system",
        token_id=None,
        decision=None,
        policy_ids=None,
        client_addr=None,
        user_agent=None,
        request_id=None,
        outcome="failure",
    )


@pytest.mark.parametrize("action", list(Action), ids=str)
def test_every_action_maps_to_a_class_and_validates(action: Action) -> None:
    rule = rule_for(action.value)
    assert rule.ocsf_class in CLASSES
    assert rule.activity_id in rule.ocsf_class.activities
    for event in _variants(action):
        emitted = to_ocsf(event, product_version=VERSION)
        assert emitted["class_uid"] == rule.ocsf_class.uid
        assert emitted["activity_id"] == rule.activity_id
        assert emitted["metadata"]["event_code"] == action.value
        assert_valid(emitted)


@pytest.mark.parametrize(
    ("event_type", "class_uid", "activity_id"),
    [
        # today's vocabulary
        ("auth:fail", 3002, 1),
        ("token:issue", 3004, 1),
        ("token:revoke", 3004, 9),
        ("admin:init", 3001, 1),
        ("member:add", 3005, 1),
        ("member:list", 3004, 2),
        ("tenant:create", 3004, 1),
        ("tenant:list", 3004, 2),
        ("project:read", 3004, 2),
        ("job:submit", 3004, 1),
        ("job:cancel", 3004, 3),
        ("job:start", 3004, 3),
        ("job:complete", 3004, 3),
        ("job:reject", 3004, 3),
        ("result:read", 6003, 2),
        ("backend:list", 6003, 2),
        # types that later work adds
        ("auth:signin", 3002, 1),
        ("auth:signout", 3002, 2),
        ("auth:mfa-challenge", 3002, OTHER),
        ("token:exchange", 3002, 1),
        ("principal:create", 3001, 1),
        ("principal:disable", 3001, 5),
        ("principal:delete", 3001, 6),
        ("principal:list", 3004, 2),
        ("session:elevate", 3003, 1),
        ("grant:create", 3005, 1),
        ("grant:revoke", 3005, 2),
        ("role:assign", 3005, 1),
        ("key:create", 3004, 1),
        ("key:rotate", 3004, 3),
        ("key:destroy", 3004, 4),
        ("policy:update", 3004, 3),
        ("approval:request", 3004, 1),
        ("approval:approve", 3004, 3),
        ("apikey:create", 3004, 1),
        ("apikey:revoke", 3004, 9),
        ("config:update", 3004, 3),
        ("tenant:suspend", 3004, 12),
        # unknown resources are API activity, unknown verbs Other
        ("widget:read", 6003, 2),
        ("widget:frobnicate", 6003, OTHER),
        ("job:teleport", 3004, OTHER),
    ],
)
def test_rule_table(event_type: str, class_uid: int, activity_id: int) -> None:
    rule = rule_for(event_type)
    assert (rule.ocsf_class.uid, rule.activity_id) == (class_uid, activity_id)
    emitted = to_ocsf(
        _event(event_type, resource_type=event_type.split(":")[0]), product_version=VERSION
    )
    assert (emitted["class_uid"], emitted["activity_id"]) == (class_uid, activity_id)
    if activity_id == OTHER:
        assert emitted["activity_name"] == event_type
    assert_valid(emitted)


def test_class_and_activity_captions_are_the_schemas() -> None:
    by_uid = {c["uid"]: c for c in published_schema()["classes"].values()}
    for klass in CLASSES:
        published = by_uid[klass.uid]
        assert published["caption"] == klass.name
        assert published["category_uid"] == klass.category_uid
        assert published["category_name"] == klass.category_name
        enum = published["attributes"]["activity_id"]["enum"]
        assert {int(k): v["caption"] for k, v in enum.items()} == dict(klass.activities)


def test_the_fields_land_where_the_module_says() -> None:
    event = _event(auth_strength="aal2", approval_id="apr_1")
    emitted = to_ocsf(event, product_version=VERSION)
    assert_valid(emitted)
    assert emitted["time"] == 1795300649123  # epoch milliseconds of AT
    assert emitted["metadata"] == {
        "version": OCSF_VERSION,
        "product": {"name": "Qustody", "vendor_name": "Qustody", "version": VERSION},
        "uid": "7",
        "sequence": 7,
        "log_name": "audit",
        "event_code": "job:submit",
        "correlation_uid": "req_1",
        "tenant_uid": "ten_1",
        "profiles": ["security_control"],
    }
    assert emitted["actor"] == {
        "user": {"uid": "prn_1", "org": {"uid": "ten_1"}},
        "session": {"credential_uid": "jti-1", "is_mfa": True},
    }
    assert emitted["src_endpoint"] == {"ip": "203.0.113.9"}
    assert emitted["http_request"] == {"user_agent": "qustody-cli/0.1 \u00e9", "uid": "req_1"}
    assert emitted["entity"] == {"type": "job", "type_id": 99, "uid": "job_1"}
    assert emitted["authorizations"] == [
        {"decision": "allowed", "policy": {"uid": "tenant-developer"}},
        {"decision": "allowed", "policy": {"uid": "project-quota"}},
    ]
    assert (emitted["action_id"], emitted["disposition_id"]) == (1, 1)
    assert (emitted["status_id"], emitted["status"], emitted["severity_id"]) == (1, "Success", 1)
    assert emitted["message"] == "backend=aer shots=1024"
    assert emitted["unmapped"] == {
        "seq": 7,
        "event_type": "job:submit",
        "tenant_id": "ten_1",
        "job_id": "job_1",
        "approval_id": "apr_1",
        "payload_sha256": "ab" * 32,
        "auth_method": "qustody-token",
        "auth_strength": "aal2",
    }


def test_a_denial_is_a_blocked_failure() -> None:
    emitted = to_ocsf(
        _event(outcome="denied", decision="deny", policy_ids=None), product_version=VERSION
    )
    assert_valid(emitted)
    assert (emitted["status_id"], emitted["status_code"], emitted["severity_id"]) == (
        2,
        "denied",
        3,
    )
    assert (emitted["action_id"], emitted["action"]) == (2, "Denied")
    assert (emitted["disposition_id"], emitted["disposition"]) == (2, "Blocked")
    assert emitted["authorizations"] == [{"decision": "denied"}]
    assert emitted["status_detail"] == "backend=aer shots=1024"


def test_a_failed_sign_in() -> None:
    row = event_row(
        Action.AUTH_FAIL,
        actor=Actor("anonymous"),
        outcome="failure",
        request=RequestContext("req_9", "198.51.100.4", "curl/8"),
        reason="expired_token",
        at=AT,
    )
    emitted = to_ocsf({"auth_strength": None, **row, "seq": 1}, product_version=VERSION)
    assert_valid(emitted)
    assert (emitted["class_uid"], emitted["activity_name"]) == (3002, "Logon")
    assert emitted["user"] == {"uid": "anonymous"}
    assert (emitted["status"], emitted["severity_id"]) == ("Failure", 3)
    assert emitted["status_detail"] == "expired_token"
    assert "profiles" not in emitted["metadata"]


def test_authentication_records_the_method_and_strength() -> None:
    emitted = to_ocsf(
        _event("auth:signin", auth_method="oidc", auth_strength="aal1"), product_version=VERSION
    )
    assert_valid(emitted)
    assert (emitted["auth_protocol_id"], emitted["auth_protocol"]) == (4, "OpenID")
    assert emitted["is_mfa"] is False
    assert emitted["service"] == {"name": "Qustody", "version": VERSION}
    other = to_ocsf(_event("token:exchange"), product_version=VERSION)
    assert (other["auth_protocol_id"], other["auth_protocol"]) == (99, "qustody-token")


def test_a_grant_names_the_user_and_the_role() -> None:
    emitted = to_ocsf(
        _event(
            Action.MEMBER_ADD,
            resource_type="principal",
            resource_id="prn_9",
            job_id=None,
            reason="role=developer project=prj_1",
        ),
        product_version=VERSION,
    )
    assert_valid(emitted)
    assert emitted["user"] == {"uid": "prn_9", "org": {"uid": "ten_1"}}
    assert emitted["privileges"] == ["developer"]
    account = to_ocsf(
        _event(Action.ADMIN_INIT, resource_type="principal", resource_id="prn_1"),
        product_version=VERSION,
    )
    assert account["user"] == {"uid": "prn_1", "org": {"uid": "ten_1"}}


@pytest.mark.parametrize(
    ("resource_type", "entity"),
    [
        ("tenant", {"type": "Organization", "type_id": 4, "uid": "x_1", "org": {"uid": "x_1"}}),
        ("policy", {"type": "Policy", "type_id": 5, "uid": "x_1", "policy": {"uid": "x_1"}}),
        ("principal", {"type": "User", "type_id": 2, "uid": "x_1", "user": {"uid": "x_1"}}),
        ("key", {"type": "key", "type_id": 99, "uid": "x_1"}),
    ],
)
def test_managed_entities(resource_type: str, entity: dict) -> None:
    emitted = to_ocsf(
        _event(f"{resource_type}:read", resource_type=resource_type, resource_id="x_1"),
        product_version=VERSION,
    )
    assert_valid(emitted)
    assert emitted["entity"] == entity


def test_a_withheld_target_is_unknown() -> None:
    emitted = to_ocsf(
        _event(outcome="denied", decision="deny", resource_id=None), product_version=VERSION
    )
    assert_valid(emitted)
    assert emitted["entity"] == {"type": "job", "type_id": 99, "name": UNKNOWN}


@pytest.mark.parametrize(
    ("client_addr", "endpoint"),
    [
        ("203.0.113.9", {"ip": "203.0.113.9"}),
        ("2001:DB8:0:0::1", {"ip": "2001:db8::1"}),
        ("[::1]", {"ip": "::1"}),
        ("fe80::1%eth0", {"ip": "fe80::1"}),
        ("testclient", None),
        (None, None),
    ],
)
def test_the_source_is_an_ip_address_or_nothing(
    client_addr: str | None, endpoint: dict | None
) -> None:
    emitted = to_ocsf(_event(client_addr=client_addr), product_version=VERSION)
    assert_valid(emitted)
    assert emitted.get("src_endpoint") == endpoint
    # API Activity requires a source: one it cannot name is unknown.
    api = to_ocsf(_event(Action.RESULT_READ, client_addr=client_addr), product_version=VERSION)
    assert_valid(api)
    assert api["src_endpoint"] == (endpoint or {"name": UNKNOWN})
    assert api["api"] == {"operation": "result:read", "request": {"uid": "req_1"}}
    assert api["resources"] == [{"type": "job", "uid": "job_1"}]


def test_nothing_beyond_the_event_is_emitted() -> None:
    secret = "s3cr3t-token-value"
    event = {**_event(), "token": secret, "payload": secret, "circuit": secret}
    assert secret not in json.dumps(to_ocsf(event, product_version=VERSION))
    # Every text in the output is an event value, the product's name and version, or the
    # schema's own vocabulary (captions, the profile's name, "unknown").
    emitted = to_ocsf(_event(), product_version=VERSION)
    fixed = {VERSION, OCSF_VERSION, "Qustody", "audit", "security_control", UNKNOWN}
    fixed |= {"allowed", "denied", "Allowed", "Denied", "Blocked", "Success", "Failure"}
    fixed |= {"Informational", "Low", "Medium", "Entity Management: Create"}
    fixed |= {c.name for c in CLASSES} | {c.category_name for c in CLASSES}
    fixed |= {a for c in CLASSES for a in c.activities.values()}
    fixed |= {"7"}  # the seq, as text
    values = {v for v in _event().values() if isinstance(v, str)}
    values |= set(_event()["policy_ids"].split(","))
    assert set(_texts(emitted)) <= fixed | values


def _texts(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)


def test_a_stored_row_and_its_export_line_map_the_same() -> None:
    stored = _event(at=AT.astimezone(timezone(timedelta(hours=2))))
    exported = {**_event(), "at": utc_text(AT)}
    naive = _event(at=AT.replace(tzinfo=None))
    expected = to_ocsf(_event(), product_version=VERSION)
    for event in (stored, exported, naive):
        assert to_ocsf(event, product_version=VERSION) == expected


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"seq": None}, "seq"),
        ({"seq": "7"}, "seq"),
        ({"at": None}, "'at'"),
        ({"at": "yesterday"}, "'at'"),
        ({"event_type": None}, "event_type"),
        ({"actor_id": None}, "actor_id"),
        ({"reason": 1.5}, "reason"),
    ],
)
def test_a_malformed_event_is_refused(changes: dict, field: str) -> None:
    with pytest.raises(OcsfMappingError, match=field):
        to_ocsf(_event(**changes), product_version=VERSION)


def test_json_lines() -> None:
    events = [
        _event(seq=1),
        _event(seq=2, tenant_id="ten_2"),
        _event(seq=3, tenant_id=None),
        _event(seq=4),
    ]
    out = io.StringIO()
    assert write_jsonl(events, out, product_version=VERSION) == 4
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert out.getvalue().endswith("\n")
    parsed = [json.loads(line) for line in lines]
    # Compact and ASCII only.
    assert lines == [json.dumps(p, separators=(",", ":"), ensure_ascii=True) for p in parsed]
    assert [p["metadata"]["uid"] for p in parsed] == ["1", "2", "3", "4"]
    for p in parsed:
        assert_valid(p)
    # One tenant's export: by the event's tenant, platform events left out.
    only = io.StringIO()
    assert write_jsonl(events, only, product_version=VERSION, tenant_id="ten_1") == 2
    assert [json.loads(line)["metadata"]["uid"] for line in only.getvalue().splitlines()] == [
        "1",
        "4",
    ]
    assert [e["seq"] for e in for_tenant(events, "ten_2")] == [2]
    assert [e["seq"] for e in for_tenant(events, None)] == [1, 2, 3, 4]


def test_every_audit_field_is_mapped() -> None:
    """A field added to the audit format fails here until the mapping places it."""
    read = {f.name for f in fields(ocsf._Fields)}
    unmapped_only = {"seq", "job_id", "approval_id", "payload_sha256"}
    assert set(FIELDS) <= read | unmapped_only
    assert read <= set(FIELDS) | {"auth_strength", "approval_id"}

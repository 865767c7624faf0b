"""Audit events as OCSF events, for SIEMs.

Each audit event becomes one event of the Open Cybersecurity Schema Framework,
schema version :data:`OCSF_VERSION`, in one of six classes:

=====  =======================  ====================================================
uid    class                    Qustody events
=====  =======================  ====================================================
3002   Authentication           ``auth:*`` (sign-in, sign-out, failed sign-in) and
                                ``token:exchange`` (signing in with an outside token)
3001   Account Change           accounts: ``principal:*``, ``user:*``, ``admin:init``
3003   Authorize Session        ``session:*`` (privileges added to a session)
3005   User Access Management   who may do what: ``member:*``, ``role:*``, ``grant:*``
3004   Entity Management        managed objects: ``tenant``, ``project``, ``job``
                                (requests and lifecycle), ``key``, ``policy``,
                                ``token``, ``apikey``, ``approval``, ``config``, and
                                reads of account and access records
6003   API Activity             data and catalogue reads (``result``, ``backend``)
                                and any resource this table does not name
=====  =======================  ====================================================

A type is looked up in :data:`EVENT_RULES` first, then by its ``resource``
half in :data:`RESOURCE_RULES`, whose verb table gives the activity (its
``action`` half); a read of a record that its class cannot express (a member
list) is an Entity Management read, and an unknown resource is API Activity.
An activity the class has no name for is ``99`` (Other), with the event type
as its name. So types added later map without a change here, and a rule added
here only sharpens them. ``metadata.event_code`` always carries the Qustody
event type.

Credentials (``token``, ``apikey``) are managed entities rather than account
changes: Account Change must name the account changed, and a credential event
names the credential, not its owner.

Where Qustody's fields go:

- ``actor.user``: ``uid`` = actor_id, ``org.uid`` = actor_tenant_id (a tenant
  is an OCSF organization: "Oracle Cloud Tenancies and similar constructs"),
  ``type_id`` System for the system actor; ``actor.session``: the token id as
  ``credential_uid``, ``is_mfa`` from auth_strength (``aal2`` and up);
- ``metadata``: ``uid`` = seq as text, ``sequence`` = seq, ``correlation_uid``
  = request_id, ``tenant_uid`` = tenant_id, ``log_name`` ``audit``;
- ``src_endpoint.ip`` from client_addr when it is an IP address;
  ``http_request``: ``user_agent`` and ``uid`` = request_id;
- a policy decision: the ``security_control`` profile's ``authorizations``
  (one per deciding policy, ``policy.uid`` from policy_ids), ``action_id``
  (Allowed/Denied) and ``disposition_id`` (Allowed/Blocked);
- ``status_id``: success, or failure for ``failure`` and ``denied`` outcomes,
  with the outcome in ``status_code`` and the reason in ``status_detail``
  (``message`` on success);
- ``unmapped``: seq, event_type, tenant_id, job_id, approval_id,
  payload_sha256, auth_method, auth_strength (those present).

Only event fields are read, and each lands in a field of its own kind: no
payload, secret or token can reach the output because none is in an event.
Where a class requires an identifier the event does not hold (the target of a
denied probe into another tenant is withheld), the name is :data:`UNKNOWN`.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Final

from qustody.domain.errors import QustodyError

#: The OCSF schema version every event declares (``metadata.version``).
OCSF_VERSION: Final = "1.5.0"
PRODUCT_NAME: Final = "Qustody"
LOG_NAME: Final = "audit"
#: Stands in for an identifier a class requires and the event does not hold.
UNKNOWN: Final = "unknown"
OTHER: Final = 99

_IAM = (3, "Identity & Access Management")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


class OcsfMappingError(QustodyError):
    """An audit event lacks a field the mapping needs, or holds a value of the wrong kind."""

    code = "ocsf_mapping_failed"
    title = "Audit event cannot be mapped to OCSF"


@dataclass(frozen=True, slots=True)
class OcsfClass:
    """An OCSF event class: its ids, captions and the activities it names."""

    uid: int
    name: str
    category_uid: int
    category_name: str
    #: activity_id to its caption, as the schema defines them.
    activities: Mapping[int, str]


API_ACTIVITY = OcsfClass(
    6003,
    "API Activity",
    6,
    "Application Activity",
    {0: "Unknown", 1: "Create", 2: "Read", 3: "Update", 4: "Delete", OTHER: "Other"},
)
AUTHENTICATION = OcsfClass(
    3002,
    "Authentication",
    *_IAM,
    {
        0: "Unknown",
        1: "Logon",
        2: "Logoff",
        3: "Authentication Ticket",
        4: "Service Ticket Request",
        5: "Service Ticket Renew",
        6: "Preauth",
        OTHER: "Other",
    },
)
ACCOUNT_CHANGE = OcsfClass(
    3001,
    "Account Change",
    *_IAM,
    {
        0: "Unknown",
        1: "Create",
        2: "Enable",
        3: "Password Change",
        4: "Password Reset",
        5: "Disable",
        6: "Delete",
        7: "Attach Policy",
        8: "Detach Policy",
        9: "Lock",
        10: "MFA Factor Enable",
        11: "MFA Factor Disable",
        12: "Unlock",
        OTHER: "Other",
    },
)
AUTHORIZE_SESSION = OcsfClass(
    3003,
    "Authorize Session",
    *_IAM,
    {0: "Unknown", 1: "Assign Privileges", 2: "Assign Groups", OTHER: "Other"},
)
ENTITY_MANAGEMENT = OcsfClass(
    3004,
    "Entity Management",
    *_IAM,
    {
        0: "Unknown",
        1: "Create",
        2: "Read",
        3: "Update",
        4: "Delete",
        5: "Move",
        6: "Enroll",
        7: "Unenroll",
        8: "Enable",
        9: "Disable",
        10: "Activate",
        11: "Deactivate",
        12: "Suspend",
        13: "Resume",
        OTHER: "Other",
    },
)
USER_ACCESS = OcsfClass(
    3005,
    "User Access Management",
    *_IAM,
    {0: "Unknown", 1: "Assign Privileges", 2: "Revoke Privileges", OTHER: "Other"},
)

CLASSES: Final = (
    API_ACTIVITY,
    AUTHENTICATION,
    ACCOUNT_CHANGE,
    AUTHORIZE_SESSION,
    ENTITY_MANAGEMENT,
    USER_ACCESS,
)


@dataclass(frozen=True, slots=True)
class Rule:
    """Where one event type goes: a class and one of its activities."""

    ocsf_class: OcsfClass
    activity_id: int

    def activity_name(self, event_type: str) -> str:
        """The activity's caption; for Other, the event type itself (OCSF: source specific)."""
        if self.activity_id == OTHER:
            return event_type
        return self.ocsf_class.activities[self.activity_id]


_READS = {"read": 2, "list": 2, "get": 2, "export": 2}
_CRUD = {
    **_READS,
    **dict.fromkeys(("create", "add", "submit", "issue", "register", "request", "init"), 1),
    **dict.fromkeys(("update", "set", "edit", "rotate"), 3),
    **dict.fromkeys(("delete", "remove", "destroy", "purge"), 4),
}
API_VERBS: Final[Mapping[str, int]] = {**_CRUD, "cancel": 3, "revoke": 4}
#: A job's lifecycle transitions and an approval's decision update the entity.
ENTITY_VERBS: Final[Mapping[str, int]] = {
    **_CRUD,
    **dict.fromkeys(("move", "rename"), 5),
    "enroll": 6,
    "unenroll": 7,
    "enable": 8,
    **dict.fromkeys(("disable", "revoke"), 9),
    "activate": 10,
    "deactivate": 11,
    "suspend": 12,
    "resume": 13,
    **dict.fromkeys(
        ("validate", "queue", "start", "complete", "fail", "reject", "cancel", "approve", "deny"),
        3,
    ),
}
ACCOUNT_VERBS: Final[Mapping[str, int]] = {
    **dict.fromkeys(("create", "add", "register", "init"), 1),
    "enable": 2,
    **dict.fromkeys(("disable", "suspend"), 5),
    **dict.fromkeys(("delete", "remove", "destroy"), 6),
    "attach": 7,
    "detach": 8,
    "lock": 9,
    "unlock": 12,
}
AUTH_VERBS: Final[Mapping[str, int]] = {
    **dict.fromkeys(("signin", "login", "logon", "fail", "exchange"), 1),
    **dict.fromkeys(("signout", "logout", "logoff"), 2),
}
SESSION_VERBS: Final[Mapping[str, int]] = dict.fromkeys(("elevate", "assign", "grant"), 1)
ACCESS_VERBS: Final[Mapping[str, int]] = {
    **dict.fromkeys(("add", "assign", "grant", "create"), 1),
    **dict.fromkeys(("remove", "revoke", "unassign", "delete"), 2),
}

#: The rule for one exact event type, ahead of :data:`RESOURCE_RULES`.
EVENT_RULES: Final[Mapping[str, Rule]] = {
    # A failed sign-in: the logon that did not happen.
    "auth:fail": Rule(AUTHENTICATION, 1),
    # RFC 8693 token exchange: signing in with a token from an outside issuer.
    "token:exchange": Rule(AUTHENTICATION, 1),
    # Creates the platform's first admin account.
    "admin:init": Rule(ACCOUNT_CHANGE, 1),
}

#: The class of each resource (the ``resource`` half) and its verb table.
RESOURCE_RULES: Final[Mapping[str, tuple[OcsfClass, Mapping[str, int]]]] = {
    "auth": (AUTHENTICATION, AUTH_VERBS),
    "principal": (ACCOUNT_CHANGE, ACCOUNT_VERBS),
    "user": (ACCOUNT_CHANGE, ACCOUNT_VERBS),
    "session": (AUTHORIZE_SESSION, SESSION_VERBS),
    "member": (USER_ACCESS, ACCESS_VERBS),
    "role": (USER_ACCESS, ACCESS_VERBS),
    "grant": (USER_ACCESS, ACCESS_VERBS),
    **dict.fromkeys(
        (
            "tenant",
            "project",
            "job",
            "key",
            "policy",
            "token",
            "apikey",
            "approval",
            "config",
        ),
        (ENTITY_MANAGEMENT, ENTITY_VERBS),
    ),
    "result": (API_ACTIVITY, API_VERBS),
    "backend": (API_ACTIVITY, API_VERBS),
}


def rule_for(event_type: str) -> Rule:
    """The class and activity of ``event_type`` (see the module's table)."""
    exact = EVENT_RULES.get(event_type)
    if exact is not None:
        return exact
    resource, _, verb = event_type.partition(":")
    ocsf_class, verbs = RESOURCE_RULES.get(resource, (API_ACTIVITY, API_VERBS))
    if verb in verbs:
        return Rule(ocsf_class, verbs[verb])
    if verb in _READS:
        # Only API Activity and Entity Management can read (their tables name the
        # reads); reading account or access records changes nothing: an entity read.
        return Rule(ENTITY_MANAGEMENT, _READS[verb])
    return Rule(ocsf_class, OTHER)


# -- field helpers --------------------------------------------------------------------


def _text(event: Mapping[str, object], name: str) -> str | None:
    value = event.get(name)
    if value is None or isinstance(value, str):
        return value
    raise OcsfMappingError(f"audit field {name!r} holds a {type(value).__name__}, not text")


def _required_text(event: Mapping[str, object], name: str) -> str:
    value = _text(event, name)
    if not value:
        raise OcsfMappingError(f"the audit event has no {name!r}; export rows as stored")
    return value


def event_seq(event: Mapping[str, object]) -> int:
    seq = event.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise OcsfMappingError("the audit event's 'seq' must be a positive integer")
    return seq


def event_time(event: Mapping[str, object]) -> datetime:
    """The event's ``at`` in UTC: a stored datetime (naive is UTC) or its canonical text."""
    at = event.get("at")
    if isinstance(at, str):
        try:
            at = datetime.fromisoformat(at)
        except ValueError:
            raise OcsfMappingError(
                f"the audit event's 'at' is not an ISO 8601 time: {at!r}"
            ) from None
    if not isinstance(at, datetime):
        raise OcsfMappingError("the audit event has no 'at' time")
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _ip(client_addr: str | None) -> str | None:
    """``client_addr`` as an IP address (zone id dropped), or None if it is not one."""
    if not client_addr:
        return None
    try:
        address = ipaddress.ip_address(client_addr.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    return str(address)


def _is_mfa(auth_strength: str | None) -> bool | None:
    """NIST SP 800-63B: AAL2 and AAL3 need two factors; AAL1 one."""
    if auth_strength is None:
        return None
    return auth_strength.lower() in {"aal2", "aal3"}


def _privileges(reason: str | None) -> list[str]:
    """The roles a grant names in its reason (``role=NAME``), as recorded by Qustody."""
    if not reason:
        return []
    return [word[5:] for word in reason.split() if word.startswith("role=") and len(word) > 5]


_AUTH_PROTOCOLS = {"oidc": (4, "OpenID"), "openid": (4, "OpenID"), "saml": (5, "SAML")}
_STATUS = {"success": (1, "Success"), "failure": (2, "Failure"), "denied": (2, "Failure")}
_SEVERITY = {1: "Informational", 2: "Low", 3: "Medium"}


def _severity_id(outcome: str, ocsf_class: OcsfClass) -> int:
    """Success is informational; a policy denial or failed sign-in medium; other failures low."""
    if outcome == "success":
        return 1
    if outcome == "denied" or ocsf_class is AUTHENTICATION:
        return 3
    return 2


# -- the mapping ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Fields:
    """The audit fields, read and checked once."""

    seq: int
    at: datetime
    event_type: str
    outcome: str
    tenant_id: str | None
    actor_id: str
    actor_tenant_id: str | None
    auth_method: str | None
    auth_strength: str | None
    token_id: str | None
    client_addr: str | None
    user_agent: str | None
    resource_type: str | None
    resource_id: str | None
    decision: str | None
    policy_ids: str | None
    reason: str | None
    request_id: str | None

    @classmethod
    def of(cls, event: Mapping[str, object]) -> _Fields:
        return cls(
            seq=event_seq(event),
            at=event_time(event),
            event_type=_required_text(event, "event_type"),
            outcome=_required_text(event, "outcome"),
            tenant_id=_text(event, "tenant_id"),
            actor_id=_required_text(event, "actor_id"),
            actor_tenant_id=_text(event, "actor_tenant_id"),
            auth_method=_text(event, "auth_method"),
            auth_strength=_text(event, "auth_strength"),
            token_id=_text(event, "token_id"),
            client_addr=_text(event, "client_addr"),
            user_agent=_text(event, "user_agent"),
            resource_type=_text(event, "resource_type"),
            resource_id=_text(event, "resource_id"),
            decision=_text(event, "decision"),
            policy_ids=_text(event, "policy_ids"),
            reason=_text(event, "reason"),
            request_id=_text(event, "request_id"),
        )


def _org(tenant_id: str | None) -> dict[str, object]:
    return {"org": {"uid": tenant_id}} if tenant_id else {}


def _actor_user(f: _Fields) -> dict[str, object]:
    user: dict[str, object] = {"uid": f.actor_id, **_org(f.actor_tenant_id)}
    if f.auth_method == "system":
        user.update(type_id=3, type="System")
    return user


def _target_user(f: _Fields) -> dict[str, object]:
    """The account an event acts on, when its target is one."""
    if f.resource_type in {"principal", "user"} and f.resource_id:
        return {"uid": f.resource_id, **_org(f.tenant_id)}
    return {"name": UNKNOWN, **_org(f.tenant_id)}


def _resource(f: _Fields) -> list[dict[str, object]]:
    if not f.resource_type:
        return []
    if f.resource_id:
        return [{"type": f.resource_type, "uid": f.resource_id}]
    return [{"type": f.resource_type, "name": UNKNOWN}]


#: Qustody resource types that are OCSF managed-entity types (type_id, caption, attribute).
_ENTITY_TYPES = {
    "tenant": (4, "Organization", "org"),
    "policy": (5, "Policy", "policy"),
    "principal": (2, "User", "user"),
    "user": (2, "User", "user"),
}


def _entity(f: _Fields) -> dict[str, object]:
    entity_type = f.resource_type or UNKNOWN
    type_id, caption, attribute = _ENTITY_TYPES.get(entity_type, (OTHER, entity_type, None))
    entity: dict[str, object] = {"type": caption, "type_id": type_id}
    if not f.resource_id:
        entity["name"] = UNKNOWN
        return entity
    entity["uid"] = f.resource_id
    if attribute is not None:
        entity[attribute] = {"uid": f.resource_id}
    return entity


def _actor(f: _Fields) -> dict[str, object]:
    actor: dict[str, object] = {"user": _actor_user(f)}
    session: dict[str, object] = {}
    if f.token_id:
        session["credential_uid"] = f.token_id
    is_mfa = _is_mfa(f.auth_strength)
    if is_mfa is not None:
        session["is_mfa"] = is_mfa
    if session:
        actor["session"] = session
    return actor


def _authorization(f: _Fields) -> dict[str, object]:
    """The ``security_control`` profile's view of a policy decision."""
    if f.decision is None:
        return {}
    allowed = f.decision == "allow"
    verdict = "allowed" if allowed else "denied"
    policies = [p for p in (f.policy_ids or "").split(",") if p]
    return {
        "action_id": 1 if allowed else 2,
        "action": "Allowed" if allowed else "Denied",
        "disposition_id": 1 if allowed else 2,
        "disposition": "Allowed" if allowed else "Blocked",
        "authorizations": [{"decision": verdict, "policy": {"uid": p}} for p in policies]
        or [{"decision": verdict}],
    }


def _class_fields(f: _Fields, ocsf_class: OcsfClass, product_version: str) -> dict[str, object]:
    """What each class adds, including its required attributes."""
    if ocsf_class is API_ACTIVITY:
        api: dict[str, object] = {"operation": f.event_type}
        if f.request_id:
            api["request"] = {"uid": f.request_id}
        out: dict[str, object] = {"api": api}
        if resources := _resource(f):
            out["resources"] = resources
        return out
    if ocsf_class is AUTHENTICATION:
        out = {
            "user": _actor_user(f),
            "service": {"name": PRODUCT_NAME, "version": product_version},
        }
        if f.auth_method:
            protocol_id, protocol = _AUTH_PROTOCOLS.get(f.auth_method, (OTHER, f.auth_method))
            out.update(auth_protocol_id=protocol_id, auth_protocol=protocol)
        is_mfa = _is_mfa(f.auth_strength)
        if is_mfa is not None:
            out["is_mfa"] = is_mfa
        return out
    if ocsf_class is ACCOUNT_CHANGE:
        return {"user": _target_user(f)}
    if ocsf_class is AUTHORIZE_SESSION:
        target_is_user = f.resource_type in {"principal", "user"} and f.resource_id
        # The schema wants exactly one of privileges and group; Qustody grants roles.
        return {
            "user": _target_user(f) if target_is_user else _actor_user(f),
            "privileges": _privileges(f.reason),
        }
    if ocsf_class is USER_ACCESS:
        out = {"user": _target_user(f), "privileges": _privileges(f.reason)}
        if f.resource_type not in {"principal", "user"} and (resources := _resource(f)):
            out["resources"] = resources
        return out
    return {"entity": _entity(f)}


def _src_endpoint(f: _Fields, required: bool) -> dict[str, object]:
    ip = _ip(f.client_addr)
    if ip is not None:
        return {"src_endpoint": {"ip": ip}}
    return {"src_endpoint": {"name": UNKNOWN}} if required else {}


def _unmapped(event: Mapping[str, object], f: _Fields) -> dict[str, object]:
    unmapped: dict[str, object] = {"seq": f.seq, "event_type": f.event_type}
    for name in ("tenant_id", "job_id", "approval_id", "payload_sha256"):
        if (value := _text(event, name)) is not None:
            unmapped[name] = value
    if f.auth_method is not None:
        unmapped["auth_method"] = f.auth_method
    if f.auth_strength is not None:
        unmapped["auth_strength"] = f.auth_strength
    return unmapped


def to_ocsf(event: Mapping[str, object], *, product_version: str) -> dict[str, object]:
    """The OCSF event for one audit event (a stored row, or one read back from an export).

    ``product_version`` is Qustody's version, recorded in ``metadata.product``.
    """
    f = _Fields.of(event)
    rule = rule_for(f.event_type)
    ocsf_class = rule.ocsf_class
    activity_name = rule.activity_name(f.event_type)
    severity_id = _severity_id(f.outcome, ocsf_class)
    status_id, status = _STATUS.get(f.outcome, (OTHER, f.outcome))
    authorization = _authorization(f)

    metadata: dict[str, object] = {
        "version": OCSF_VERSION,
        "product": {"name": PRODUCT_NAME, "vendor_name": PRODUCT_NAME, "version": product_version},
        "uid": str(f.seq),
        "sequence": f.seq,
        "log_name": LOG_NAME,
        "event_code": f.event_type,
    }
    if f.request_id:
        metadata["correlation_uid"] = f.request_id
    if f.tenant_id:
        metadata["tenant_uid"] = f.tenant_id
    if authorization:
        metadata["profiles"] = ["security_control"]

    out: dict[str, object] = {
        "class_uid": ocsf_class.uid,
        "class_name": ocsf_class.name,
        "category_uid": ocsf_class.category_uid,
        "category_name": ocsf_class.category_name,
        "activity_id": rule.activity_id,
        "activity_name": activity_name,
        "type_uid": ocsf_class.uid * 100 + rule.activity_id,
        "type_name": f"{ocsf_class.name}: {activity_name}",
        "severity_id": severity_id,
        "severity": _SEVERITY[severity_id],
        "status_id": status_id,
        "status": status,
        "status_code": f.outcome,
        "time": (f.at - _EPOCH) // _MILLISECOND,
        "timezone_offset": 0,
        "metadata": metadata,
        "actor": _actor(f),
        **_src_endpoint(f, required=ocsf_class is API_ACTIVITY),
    }
    http_request: dict[str, object] = {}
    if f.user_agent:
        http_request["user_agent"] = f.user_agent
    if f.request_id:
        http_request["uid"] = f.request_id
    if http_request:
        out["http_request"] = http_request
    if f.reason:
        out["message" if f.outcome == "success" else "status_detail"] = f.reason
    out.update(_class_fields(f, ocsf_class, product_version))
    out.update(authorization)
    out["unmapped"] = _unmapped(event, f)
    return out


# -- JSON Lines -----------------------------------------------------------------------


def dumps(ocsf_event: Mapping[str, object]) -> str:
    """One OCSF event as compact JSON, ASCII only (safe on any stream or transport)."""
    return json.dumps(ocsf_event, separators=(",", ":"), ensure_ascii=True)


def for_tenant(
    events: Iterable[Mapping[str, object]], tenant_id: str | None
) -> Iterator[Mapping[str, object]]:
    """The events of one tenant (by the event's ``tenant_id``), or every event for None."""
    for event in events:
        if tenant_id is None or event.get("tenant_id") == tenant_id:
            yield event


def write_jsonl(
    events: Iterable[Mapping[str, object]],
    out: IO[str],
    *,
    product_version: str,
    tenant_id: str | None = None,
) -> int:
    """Write one OCSF event per line to ``out`` (a file or stdout); returns how many.

    With ``tenant_id``, only that tenant's events are written.
    """
    written = 0
    for event in for_tenant(events, tenant_id):
        out.write(dumps(to_ocsf(event, product_version=product_version)) + "\n")
        written += 1
    out.flush()
    return written

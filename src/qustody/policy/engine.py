"""The Cedar policy engine.

Every API action is a Cedar action (``Qustody::Action::"job:submit"``); the
engine turns a :class:`Principal`, an :class:`Action` and a :class:`Resource`
into a Cedar request and asks `cedarpy <https://pypi.org/project/cedarpy/>`_.

The policy set is parsed and checked once, when the engine is built: every
policy must parse, carry a unique ``@id("...")`` annotation (the name a
:class:`Decision` reports) and validate against the schema. Per decision the
engine only builds two small entities and a context.

The Cedar model (``policies/qustody.cedarschema`` is the authority):

- principal ``Qustody::Principal::"<principal id>"`` with ``tenant``,
  ``kind`` and ``platform_admin``;
- resource ``Qustody::<Type>::"<id>"`` for the :class:`Resource` types
  (``Platform``, ``Tenant``, ``Project``, ``Job``, ``Backend``, ``Principal``,
  ``Token``); every tenant-scoped resource carries ``tenant``, platform
  resources none;
- context ``roles`` (the roles that apply to the resource: tenant-wide roles plus
  the roles of the resource's project), ``all_roles`` (every role held in the
  tenant), ``scopes`` and ``required_scope`` (the token's scopes and the one the
  action needs), ``auth_method``, ``data_class`` when the resource has one, and
  whatever the caller adds.

Fail closed: Cedar skips a policy whose evaluation errors, which for a forbid
would mean allowing what it forbids; this engine denies instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from importlib import resources
from typing import Literal

import cedarpy

from qustody.domain.ids import ProjectId, TenantId
from qustody.domain.models import Decision, Principal, Resource
from qustody.domain.vocabulary import Action, Role
from qustody.policy.errors import PolicyError

__all__ = [
    "CedarPolicyEngine",
    "default_policies",
    "default_schema",
]

NAMESPACE = "Qustody"
_PRINCIPAL_TYPE = f"{NAMESPACE}::Principal"
_ACTION_TYPE = f"{NAMESPACE}::Action"
_ENTITY_TYPES: Mapping[str, str] = {
    "platform": f"{NAMESPACE}::Platform",
    "tenant": f"{NAMESPACE}::Tenant",
    "project": f"{NAMESPACE}::Project",
    "job": f"{NAMESPACE}::Job",
    "backend": f"{NAMESPACE}::Backend",
    "principal": f"{NAMESPACE}::Principal",
    "token": f"{NAMESPACE}::Token",
}
#: Resource types that always belong to a tenant; one without a tenant id is a bug.
_TENANT_SCOPED = frozenset({"tenant", "project", "job", "principal", "token"})
#: Resource types that may name an owner (the schema declares ``owner`` on them).
_OWNED = frozenset({"project", "job", "token"})
#: Context keys the engine computes; a caller may not set them.
_RESERVED_CONTEXT = frozenset(
    {"roles", "all_roles", "scopes", "required_scope", "auth_method", "data_class"}
)
_CEDAR_LONG_MIN, _CEDAR_LONG_MAX = -(2**63), 2**63 - 1
_POLICY_IN_ERROR = re.compile(r"policy `([^`]+)`")
_POLICY_FILES_SUFFIX = ".cedar"
_SCHEMA_FILE = "qustody.cedarschema"


def _policy_dir() -> resources.abc.Traversable:
    return resources.files("qustody.policy").joinpath("policies")


def default_policies() -> dict[str, str]:
    """The shipped policies: file name → Cedar text, in file-name order."""
    files = sorted(
        (entry for entry in _policy_dir().iterdir() if entry.name.endswith(_POLICY_FILES_SUFFIX)),
        key=lambda entry: entry.name,
    )
    return {entry.name: entry.read_text(encoding="utf-8") for entry in files}


def default_schema() -> str:
    """The shipped Cedar schema, in Cedar schema syntax."""
    return _policy_dir().joinpath(_SCHEMA_FILE).read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class _Policy:
    cedar_id: str
    id: str
    effect: Literal["permit", "forbid"]


class CedarPolicyEngine:
    """A :class:`~qustody.policy.interfaces.PolicyEngine` backed by Cedar.

    ``policies`` is Cedar text, a mapping of source name (a file name) to Cedar
    text, or ``None`` for the shipped policies. An empty policy set is allowed
    and denies everything. ``schema`` (Cedar schema syntax) defaults to the
    shipped schema; with ``validate`` (the default) every policy is checked
    against it at load time.

    ``platform_tenant_id``, when given, is the only tenant whose principals'
    ``platform-admin`` role counts; elsewhere the role is ignored. Without it,
    the identity layer is trusted to grant that role only there.

    Raises :class:`PolicyError` at construction for text that does not parse, a
    policy without a unique ``@id``, a template, or a validation failure.
    """

    def __init__(
        self,
        policies: str | Mapping[str, str] | None = None,
        *,
        schema: str | None = None,
        validate: bool = True,
        platform_tenant_id: TenantId | None = None,
    ) -> None:
        if policies is None:
            sources: Mapping[str, str] = default_policies()
        elif isinstance(policies, str):
            sources = {"<policies>": policies}
        else:
            sources = policies
        self._platform_tenant_id = platform_tenant_id
        self._policy_set, self._policies = _load(sources)
        if validate:
            _validate(
                "\n".join(sources.values()),
                schema if schema is not None else default_schema(),
                self._policies,
            )

    @property
    def policy_ids(self) -> tuple[str, ...]:
        """The ``@id`` of every loaded policy, in load order."""
        return tuple(policy.id for policy in self._policies.values())

    def authorize(
        self,
        principal: Principal,
        action: Action,
        resource: Resource,
        *,
        context: Mapping[str, object] | None = None,
    ) -> Decision:
        resource_entity, problem = _resource_entity(principal, resource)
        if problem is not None:
            return Decision(allowed=False, action=action, errors=(problem,))

        platform_admin = self._is_platform_admin(principal)
        project_id = resource.project_id
        if project_id is None and resource.type == "project":
            project_id = ProjectId(resource.id)
        roles = principal.roles_for(project_id)
        all_roles = principal.tenant_roles.union(role for _, role in principal.project_roles)
        if not platform_admin:
            roles = roles - {Role.PLATFORM_ADMIN}
            all_roles = all_roles - {Role.PLATFORM_ADMIN}

        cedar_context = _caller_context(context) if context else {}
        cedar_context["roles"] = [role.value for role in roles]
        cedar_context["all_roles"] = [role.value for role in all_roles]
        cedar_context["scopes"] = list(principal.scopes)
        cedar_context["required_scope"] = action.resource
        cedar_context["auth_method"] = principal.auth_method
        if resource.data_class is not None:
            cedar_context["data_class"] = resource.data_class.value

        principal_uid = {"type": _PRINCIPAL_TYPE, "id": principal.id}
        entities: list[dict[str, object]] = [
            {
                "uid": principal_uid,
                "attrs": {
                    "tenant": principal.tenant_id,
                    "kind": principal.kind,
                    "platform_admin": platform_admin,
                },
                "parents": [],
            }
        ]
        if resource_entity is not None:
            entities.append(resource_entity)
        request = {
            "principal": principal_uid,
            "action": {"type": _ACTION_TYPE, "id": action.value},
            "resource": {"type": _ENTITY_TYPES[resource.type], "id": resource.id},
            "context": cedar_context,
        }
        try:
            result = cedarpy.is_authorized(request, self._policy_set, entities)
        except ValueError as exc:
            return Decision(
                allowed=False, action=action, errors=(f"Cedar refused the request: {exc}",)
            )
        return self._decision(action, result)

    def _is_platform_admin(self, principal: Principal) -> bool:
        if Role.PLATFORM_ADMIN not in principal.tenant_roles:
            return False
        return self._platform_tenant_id is None or principal.tenant_id == self._platform_tenant_id

    def _decision(self, action: Action, result: cedarpy.AuthzResult) -> Decision:
        allowed = result.allowed
        errors: list[str] = []
        failed_forbids: list[str] = []
        for error in result.diagnostics.errors:
            match = _POLICY_IN_ERROR.search(error)
            policy = self._policies.get(match.group(1)) if match else None
            if policy is None:
                # An error we cannot attribute to a permit: deny.
                allowed = False
                errors.append(error)
                continue
            errors.append(error.replace(f"`{policy.cedar_id}`", f"`{policy.id}`", 1))
            if policy.effect == "forbid":
                allowed = False
                failed_forbids.append(policy.id)
        deciding = [self._policies[r].id for r in result.diagnostics.reasons if r in self._policies]
        if result.allowed and not allowed:
            # Cedar allowed only because a forbid could not be evaluated.
            deciding = []
        policy_ids = tuple(sorted({*deciding, *failed_forbids}))
        return Decision(allowed=allowed, action=action, policy_ids=policy_ids, errors=tuple(errors))


def _resource_entity(
    principal: Principal, resource: Resource
) -> tuple[dict[str, object] | None, str | None]:
    """The resource as a Cedar entity, or why it cannot be one.

    Returns ``(None, None)`` when the resource is the calling principal itself,
    which is already in the entity set.
    """
    kind = resource.type
    if kind not in _ENTITY_TYPES:
        return None, f"resource type {kind!r} is not one the policy schema knows"
    tenant_id = resource.tenant_id
    if kind == "tenant":
        if tenant_id is not None and tenant_id != resource.id:
            return None, (
                f"tenant resource {resource.id} carries tenant_id {tenant_id}; "
                "a tenant's tenant_id is its own id"
            )
        tenant_id = TenantId(resource.id)
    elif kind in _TENANT_SCOPED and tenant_id is None:
        return None, (
            f"{kind} resource {resource.id} has no tenant_id; "
            "tenant-scoped resources must name their tenant"
        )
    elif kind == "platform" and tenant_id is not None:
        return None, (
            f"platform resource {resource.id} carries tenant_id {tenant_id}; "
            "platform resources belong to no tenant"
        )
    if kind == "principal" and resource.id == principal.id:
        if tenant_id != principal.tenant_id:
            return None, (
                f"principal resource {resource.id} names tenant {tenant_id}, "
                f"but that principal belongs to {principal.tenant_id}"
            )
        return None, None

    attrs: dict[str, object] = {}
    if tenant_id is not None:
        attrs["tenant"] = tenant_id
    if kind == "job" and resource.project_id is not None:
        attrs["project"] = resource.project_id
    if kind in {"project", "job"} and resource.data_class is not None:
        attrs["data_class"] = resource.data_class.value
    if kind in _OWNED and resource.owner_id is not None:
        attrs["owner"] = {"__entity": {"type": _PRINCIPAL_TYPE, "id": resource.owner_id}}
    entity = {
        "uid": {"type": _ENTITY_TYPES[kind], "id": resource.id},
        "attrs": attrs,
        "parents": [],
    }
    return entity, None


def _caller_context(context: Mapping[str, object]) -> dict[str, object]:
    reserved = sorted(_RESERVED_CONTEXT.intersection(context))
    if reserved:
        raise PolicyError(
            f"context key {reserved[0]!r} is computed by the policy engine from the principal, "
            "the action and the resource; remove it from the context you pass",
            field=f"context.{reserved[0]}",
        )
    return {key: _cedar_value(value, f"context.{key}") for key, value in context.items()}


def _cedar_value(value: object, path: str) -> object:
    """A Python value as Cedar JSON (strings, Longs, Booleans, sets, records, datetimes)."""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if not _CEDAR_LONG_MIN <= value <= _CEDAR_LONG_MAX:
            raise PolicyError(f"{path} is {value}, outside Cedar's 64-bit Long range", field=path)
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise PolicyError(
                f"{path} is a naive datetime; pass an aware one (e.g. datetime.now(UTC))",
                field=path,
            )
        utc = value.astimezone(UTC)
        stamp = f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"
        return {"__extn": {"fn": "datetime", "arg": stamp}}
    if isinstance(value, Mapping):
        record: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str) or key.startswith("__"):
                raise PolicyError(
                    f"{path} has key {key!r}; record keys must be strings not starting with '__'",
                    field=path,
                )
            record[key] = _cedar_value(item, f"{path}.{key}")
        return record
    if isinstance(value, list | tuple | set | frozenset):
        return [_cedar_value(item, f"{path}[]") for item in value]
    raise PolicyError(
        f"{path} is a {type(value).__name__}, which Cedar cannot express; pass a string, int, "
        "bool, aware datetime, or a list or mapping of those (omit the key for 'no value')",
        field=path,
    )


# -- loading ---------------------------------------------------------------


def _parse(text: str, name: str) -> cedarpy.PolicySet:
    try:
        return cedarpy.PolicySet.from_str(text)
    except ValueError as exc:
        raise PolicyError(_parse_failure(text, name, exc)) from exc


def _parse_failure(text: str, name: str, exc: ValueError) -> str:
    """Name the statement that does not parse: Cedar's own message has no position."""
    for line, statement in _statements(text):
        try:
            cedarpy.PolicySet.from_str(statement)
        except ValueError as statement_exc:
            return (
                f"{name}, policy at line {line}: {statement_exc}; "
                "fix the Cedar syntax (https://docs.cedarpolicy.com/policies/syntax-policy.html)"
            )
    return f"{name} does not parse: {exc}"


def _statements(text: str) -> Iterator[tuple[int, str]]:
    """Split Cedar text at top-level ``;`` (outside strings and comments).

    Yields the line of each statement's first code line and the statement; a
    trailing fragment without ``;`` is yielded too, so an unterminated policy
    is found.
    """
    start = 0
    index = 0
    in_string = False
    while index < len(text):
        char = text[index]
        if in_string:
            if char == "\\":
                index += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif text.startswith("//", index):
            newline = text.find("\n", index)
            index = len(text) if newline < 0 else newline
            continue
        elif char == ";":
            yield _first_code_line(text, start), text[start : index + 1]
            start = index + 1
        index += 1
    if _code_lines(text[start:]):
        yield _first_code_line(text, start), text[start:]


def _code_lines(fragment: str) -> list[str]:
    return [
        line for line in fragment.splitlines() if line.strip() and not line.strip().startswith("//")
    ]


def _first_code_line(text: str, start: int) -> int:
    line = text.count("\n", 0, start) + 1
    for offset, content in enumerate(text[start:].splitlines()):
        if content.strip() and not content.strip().startswith("//"):
            return line + offset
    return line


def _load(sources: Mapping[str, str]) -> tuple[cedarpy.PolicySet, dict[str, _Policy]]:
    """Parse and check every source; map Cedar's positional ids to ``@id`` annotations.

    Cedar names the policies of a parse ``policy0``, ``policy1``, ...; each
    source is checked on its own first, so that an error names its file and line.
    """
    seen: dict[str, str] = {}
    for name, text in sources.items():
        _parse(text, name)
        lines = [line for line, _ in _statements(text)]
        for position, (_, body) in enumerate(_static_policies(text, name)):
            where = f"{name}, policy at line {lines[position] if position < len(lines) else '?'}"
            policy_id = _annotation_id(body)
            if policy_id is None:
                raise PolicyError(
                    f'{where} has no @id("...") annotation; every policy needs a unique @id, '
                    "the name decisions and the audit log report"
                )
            if policy_id in seen:
                raise PolicyError(
                    f'{where} reuses @id("{policy_id}") of a policy in {seen[policy_id]}; '
                    "policy ids must be unique"
                )
            seen[policy_id] = name
    combined = "\n".join(sources.values())
    policy_set = _parse(combined, "the combined policy set")
    policies: dict[str, _Policy] = {}
    for cedar_id, body in _static_policies(combined, "the combined policy set"):
        policy_id = _annotation_id(body)
        effect = body.get("effect")
        if policy_id is None or effect not in ("permit", "forbid"):  # checked above
            raise PolicyError(f"policy {cedar_id} of the combined set could not be identified")
        policies[cedar_id] = _Policy(
            cedar_id=cedar_id, id=policy_id, effect="permit" if effect == "permit" else "forbid"
        )
    return policy_set, policies


def _static_policies(text: str, name: str) -> list[tuple[str, dict[str, object]]]:
    """The policies of ``text`` as Cedar JSON, in source order."""
    est = json.loads(cedarpy.policies_to_json_str(text))
    if est.get("templates"):
        raise PolicyError(
            f"{name} contains a template (a policy with ?principal or ?resource); "
            "templates are not supported, write the policy for concrete entities"
        )
    static: dict[str, dict[str, object]] = est.get("staticPolicies", {})
    return sorted(static.items(), key=lambda item: int(item[0].removeprefix("policy")))


def _annotation_id(body: Mapping[str, object]) -> str | None:
    annotations = body.get("annotations")
    policy_id = annotations.get("id") if isinstance(annotations, dict) else None
    return policy_id if isinstance(policy_id, str) and policy_id.strip() else None


def _validate(text: str, schema_text: str, policies: Mapping[str, _Policy]) -> None:
    try:
        schema = cedarpy.Schema.from_str(schema_text)
    except ValueError as exc:
        raise PolicyError(f"the Cedar schema does not parse: {exc}") from exc
    result = cedarpy.validate_policies(text, schema)
    if result.validation_passed:
        return
    problems = []
    for error in result.errors:
        policy = policies.get(error.policy_id)
        label = policy.id if policy is not None else error.policy_id or "policies"
        problems.append(f"{label}: {error.error}")
    raise PolicyError(
        "policies do not validate against the schema: "
        + "; ".join(problems)
        + ". Fix the policy, or extend the schema if it names a new attribute"
    )

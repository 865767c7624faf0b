"""The Cedar policy engine.

Every API action is a Cedar action (``Qustody::Action::"job:submit"``); the
engine turns a :class:`Principal`, an :class:`Action` and a :class:`Resource`
into a Cedar request and asks `cedarpy <https://pypi.org/project/cedarpy/>`_.

The policy set is parsed and checked once, when the engine is built: every
policy must parse, carry a unique ``@id("...")`` annotation (the name a
:class:`Decision` reports) and validate against the schema. Per decision the
engine builds two small entities and a context, and hands Cedar only the
policies that can apply: the shared ones plus those of the caller's tenant,
narrowed to the ones whose scope admits the action and the resource type.

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
from importlib.resources.abc import Traversable
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
_POLICY_IN_ERROR = re.compile(r"[^`]*\bpolicy `([^`]+)`")
_POLICY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")
_POLICY_FILES_SUFFIX = ".cedar"
_SCHEMA_FILE = "qustody.cedarschema"
_ACTIONS = frozenset(action.value for action in Action)


def _policy_dir() -> Traversable:
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
    #: The ``@id`` annotation; also the id Cedar reports, see :class:`_PolicyBook`.
    id: str
    #: Where it was loaded from (a file name).
    source: str
    effect: Literal["permit", "forbid"]
    #: Cedar JSON (EST) of the policy, as Cedar produced it.
    body: Mapping[str, object]
    #: The actions its scope can match; ``None`` when it can match any.
    actions: frozenset[str] | None
    #: The resource entity types its scope can match; ``None`` for any.
    resource_types: frozenset[str] | None

    def may_apply(self, action: Action, entity_type: str) -> bool:
        return (self.actions is None or action.value in self.actions) and (
            self.resource_types is None or entity_type in self.resource_types
        )


class _PolicyBook:
    """One policy set as evaluated: the shared policies plus one tenant's.

    Cedar evaluates every policy of a set for every request (about a
    microsecond each), so the book hands Cedar, for each action and resource
    type, only the policies whose scope can match them. Leaving out a policy
    whose scope cannot match changes nothing: Cedar checks the scope before the
    conditions, so such a policy neither applies nor errors.

    The subsets are built on first use from Cedar's own JSON form of the
    policies, keyed by their ``@id``, so Cedar reports the ``@id`` itself.
    """

    __slots__ = ("_subsets", "policies")

    def __init__(self, policies: Mapping[str, _Policy]) -> None:
        self.policies = dict(policies)
        self._subsets: dict[tuple[Action, str], cedarpy.PolicySet] = {}

    def policy_set(self, action: Action, entity_type: str) -> cedarpy.PolicySet:
        key = (action, entity_type)
        subset = self._subsets.get(key)
        if subset is None:
            chosen = {
                policy_id: policy.body
                for policy_id, policy in self.policies.items()
                if policy.may_apply(action, entity_type)
            }
            document = {"staticPolicies": chosen, "templates": {}, "templateLinks": []}
            subset = cedarpy.PolicySet.from_json_str(json.dumps(document))
            self._subsets[key] = subset
        return subset


class CedarPolicyEngine:
    """A :class:`~qustody.policy.interfaces.PolicyEngine` backed by Cedar.

    ``policies`` are the policies every request is decided by: Cedar text, a
    mapping of source name (a file name) to Cedar text, or ``None`` for the
    shipped policies. An empty policy set is allowed and denies everything.

    ``tenant_policies`` adds policies of one tenant (same forms, keyed by tenant
    id). They are evaluated, together with the shared ones, only for that
    tenant's principals: a tenant's policy cannot grant anything to anyone else,
    and one tenant's policies cost the others nothing. See
    :meth:`replace_tenant_policies` to change them at run time.

    ``schema`` (Cedar schema syntax) defaults to the shipped schema; with
    ``validate`` (the default) every policy is checked against it when loaded.
    With ``check_requests`` every request, its entities and its context are
    checked against it too, and one that does not conform raises
    :class:`PolicyError`: slower, and it refuses context keys the schema does
    not declare; meant for tests and development.

    ``platform_tenant_id``, when given, is the only tenant whose principals'
    ``platform-admin`` role counts; elsewhere the role is ignored. Without it,
    the identity layer is trusted to grant that role only there.

    Raises :class:`PolicyError` when loading text that does not parse, a policy
    without a unique ``@id``, a template, or a policy that does not validate.
    """

    def __init__(
        self,
        policies: str | Mapping[str, str] | None = None,
        *,
        tenant_policies: Mapping[TenantId, str | Mapping[str, str]] | None = None,
        schema: str | None = None,
        validate: bool = True,
        check_requests: bool = False,
        platform_tenant_id: TenantId | None = None,
    ) -> None:
        self._platform_tenant_id = platform_tenant_id
        self._schema = _parse_schema(default_schema() if schema is None else schema)
        self._validate = validate
        self._check_requests = check_requests
        sources = _sources(default_policies() if policies is None else policies, "policies")
        self._base = _PolicyBook(self._load(sources, taken={}))
        self._books: dict[TenantId, _PolicyBook] = {}
        for tenant_id, tenant_sources in (tenant_policies or {}).items():
            self.replace_tenant_policies(tenant_id, tenant_sources)

    def replace_tenant_policies(
        self, tenant_id: TenantId, policies: str | Mapping[str, str] | None
    ) -> None:
        """Set the policies of one tenant; ``None`` or empty text removes them.

        The new set is parsed and validated before it replaces the old one, so
        a refused update (:class:`PolicyError`) leaves the tenant's policies as
        they were.
        """
        sources = _sources(policies or "", "policies")
        named = {f"tenant {tenant_id}: {name}": text for name, text in sources.items()}
        own = self._load(named, taken=self._base.policies)
        if own:
            self._books[tenant_id] = _PolicyBook({**self._base.policies, **own})
        else:
            self._books.pop(tenant_id, None)

    def policy_ids(self, tenant_id: TenantId | None = None) -> tuple[str, ...]:
        """The ``@id`` of every policy that decides for ``tenant_id``'s principals
        (the shared policies alone when ``None``), in load order."""
        book = self._base if tenant_id is None else self._books.get(tenant_id, self._base)
        return tuple(policy.id for policy in book.policies.values())

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
        entity_type = _ENTITY_TYPES[resource.type]
        request = {
            "principal": principal_uid,
            "action": {"type": _ACTION_TYPE, "id": action.value},
            "resource": {"type": entity_type, "id": resource.id},
            "context": cedar_context,
        }
        book = self._books.get(principal.tenant_id, self._base)
        policy_set = book.policy_set(action, entity_type)
        schema = self._schema if self._check_requests else None
        try:
            result = cedarpy.is_authorized(request, policy_set, entities, schema)
        except ValueError as exc:
            if self._check_requests:
                raise PolicyError(f"request does not conform to the policy schema: {exc}") from exc
            return Decision(
                allowed=False, action=action, errors=(f"Cedar refused the request: {exc}",)
            )
        if self._check_requests:
            refused = [e for e in result.diagnostics.errors if not _POLICY_IN_ERROR.match(e)]
            if refused:
                raise PolicyError(f"request does not conform to the policy schema: {refused[0]}")
        return _decision(action, result, book.policies)

    def _load(self, sources: Mapping[str, str], taken: Mapping[str, _Policy]) -> dict[str, _Policy]:
        policies = _load(sources, taken)
        if self._validate:
            for name, text in sources.items():
                _validate(text, name, self._schema)
        return policies

    def _is_platform_admin(self, principal: Principal) -> bool:
        if Role.PLATFORM_ADMIN not in principal.tenant_roles:
            return False
        return self._platform_tenant_id is None or principal.tenant_id == self._platform_tenant_id


def _decision(
    action: Action, result: cedarpy.AuthzResult, policies: Mapping[str, _Policy]
) -> Decision:
    """Cedar's answer as a :class:`Decision`, failing closed on evaluation errors.

    Cedar skips a policy whose evaluation errors. For a permit that is right;
    for a forbid it would allow what the forbid exists to refuse, so an error
    in a forbid (or one not traceable to a permit) denies.
    """
    allowed = result.allowed
    errors = tuple(result.diagnostics.errors)
    failed_forbids: list[str] = []
    for error in errors:
        match = _POLICY_IN_ERROR.match(error)
        policy = policies.get(match.group(1)) if match else None
        if policy is None or policy.effect == "forbid":
            allowed = False
            if policy is not None:
                failed_forbids.append(policy.id)
    if allowed == result.allowed:
        # Cedar's reasons: the permits that allowed, or the forbids that denied.
        deciding = {*result.diagnostics.reasons, *failed_forbids}
    else:
        # Cedar allowed only because a forbid could not be evaluated.
        deciding = set(failed_forbids)
    return Decision(
        allowed=allowed, action=action, policy_ids=tuple(sorted(deciding)), errors=errors
    )


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


def _sources(policies: str | Mapping[str, str], name: str) -> dict[str, str]:
    return {name: policies} if isinstance(policies, str) else dict(policies)


def _load(sources: Mapping[str, str], taken: Mapping[str, _Policy]) -> dict[str, _Policy]:
    """Parse and check every source; key its policies by their ``@id``.

    ``taken`` are policies already loaded, whose ids the new ones may not reuse.
    """
    policies: dict[str, _Policy] = {}
    for name, text in sources.items():
        _parse(text, name)
        lines = [line for line, _ in _statements(text)]
        for position, (_, body) in enumerate(_static_policies(text, name)):
            line = lines[position] if position < len(lines) else "?"
            where = f"{name}, policy at line {line}"
            policy_id = _annotation_id(body)
            if policy_id is None:
                raise PolicyError(
                    f'{where} has no @id("...") annotation; every policy needs a unique @id '
                    "(letters, digits and . _ : / -), the name decisions and the audit log report"
                )
            if not _POLICY_ID.fullmatch(policy_id):
                raise PolicyError(
                    f'{where} has @id("{policy_id}"); use letters, digits and . _ : / - only'
                )
            other = policies.get(policy_id) or taken.get(policy_id)
            if other is not None:
                raise PolicyError(
                    f'{where} reuses @id("{policy_id}") of a policy in {other.source}; '
                    "policy ids must be unique"
                )
            effect = body.get("effect")
            if effect not in ("permit", "forbid"):
                raise PolicyError(f"{where} has an unknown effect {effect!r}")
            policies[policy_id] = _Policy(
                id=policy_id,
                source=name,
                effect="permit" if effect == "permit" else "forbid",
                body=body,
                actions=_scope_actions(body.get("action")),
                resource_types=_scope_types(body.get("resource")),
            )
    return policies


def _parse(text: str, name: str) -> None:
    try:
        cedarpy.PolicySet.from_str(text)
    except ValueError as exc:
        raise PolicyError(_parse_failure(text, name, exc)) from exc


def _parse_failure(text: str, name: str, exc: ValueError) -> str:
    """Name the statement that does not parse: Cedar's own message has no position."""
    for line, statement in _statements(text):
        try:
            cedarpy.PolicySet.from_str(statement)
        except ValueError as statement_exc:
            return (
                f"{name}, policy at line {line} does not parse: {statement_exc}; fix the Cedar "
                "syntax (https://docs.cedarpolicy.com/policies/syntax-policy.html)"
            )
    return f"{name} does not parse: {exc}"


def _statements(text: str) -> Iterator[tuple[int, str]]:
    """Split Cedar text at top-level ``;`` (outside strings and comments).

    Yields the line of each statement's first line of code, and the statement.
    A trailing fragment without ``;`` is yielded too, so that an unterminated
    policy is found.
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
    if _first_code_line(text, start, default=0):
        yield _first_code_line(text, start), text[start:]


def _first_code_line(text: str, start: int, default: int | None = None) -> int:
    """The line number of the first line after ``start`` that is not blank or a comment."""
    line = text.count("\n", 0, start) + 1
    for offset, content in enumerate(text[start:].splitlines()):
        stripped = content.strip()
        if stripped and not stripped.startswith("//"):
            return line + offset
    return line if default is None else default


def _static_policies(text: str, name: str) -> list[tuple[str, dict[str, object]]]:
    """The policies of ``text`` in Cedar's JSON form, in source order."""
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


def _scope_actions(scope: object) -> frozenset[str] | None:
    """The actions an action scope (``action == A``, ``action in [A, B]``) can match.

    ``None`` (any action) for ``action`` alone and for anything not understood.
    The engine puts no action groups in its requests, so ``in`` matches only
    the actions listed.
    """
    if not isinstance(scope, dict):
        return None
    if scope.get("op") == "==" or (scope.get("op") == "in" and "entity" in scope):
        entities = [scope.get("entity")]
    elif scope.get("op") == "in" and isinstance(scope.get("entities"), list):
        entities = scope["entities"]
    else:
        return None
    actions = set()
    for entity in entities:
        if not isinstance(entity, dict) or entity.get("type") != _ACTION_TYPE:
            return None
        if entity.get("id") not in _ACTIONS:
            return None
        actions.add(str(entity["id"]))
    return frozenset(actions)


def _scope_types(scope: object) -> frozenset[str] | None:
    """The resource types a resource scope (``resource is T``, ``resource == T::"x"``) can match."""
    if not isinstance(scope, dict):
        return None
    if scope.get("op") == "is" and isinstance(scope.get("entity_type"), str):
        return frozenset({scope["entity_type"]})
    entity = scope.get("entity")
    if scope.get("op") == "==" and isinstance(entity, dict) and isinstance(entity.get("type"), str):
        return frozenset({entity["type"]})
    return None


def _parse_schema(text: str) -> cedarpy.Schema:
    try:
        return cedarpy.Schema.from_str(text)
    except ValueError as exc:
        raise PolicyError(f"the Cedar schema does not parse: {exc}") from exc


def _validate(text: str, name: str, schema: cedarpy.Schema) -> None:
    result = cedarpy.validate_policies(text, schema)
    if result.validation_passed:
        return
    ids = {cedar_id: _annotation_id(body) for cedar_id, body in _static_policies(text, name)}
    problems = [
        f"{ids.get(error.policy_id) or error.policy_id or name}: {error.error}"
        for error in result.errors
    ]
    raise PolicyError(
        f"{name} does not validate against the policy schema: "
        + "; ".join(problems)
        + ". Fix the policy, or extend the schema if it uses a new attribute"
    )

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
  resources none; :attr:`Resource.attributes` adds what the schema declares
  for the type (a job's ``backend`` and ``qubits``, a backend's ``simulator``);
- context, computed here: ``roles`` (the roles that apply to the resource:
  tenant-wide roles plus the roles of the resource's project), ``all_roles``
  (every role held in the tenant), ``scopes`` and ``required_scope`` (the
  token's scopes and the one the action needs), ``auth_method``, how the
  caller signed in (``mfa``, ``auth_age``, ``acr``, ``amr``, ``dpop``), the
  time (``now``, and ``local_hour``, ``local_minute``, ``local_weekday`` in the
  tenant's time zone), ``data_class`` when the resource has one; and whatever
  the caller adds (``backend``, ``qubits``, ``shots``, ``sdk_version``, ...).

Platform policies may permit and forbid. A tenant's own policies may only
forbid: evaluated only for that tenant's principals, they can narrow what the
platform allows there and nothing else.

A forbid annotated ``@step_up("<acr values>")`` (and ``@max_age("<seconds>")``)
is lifted by signing in again more strongly: when only such forbids deny, and
a fresh multi-factor sign-in would be allowed, :meth:`CedarPolicyEngine.step_up`
says what to ask for (RFC 9470).

Fail closed: Cedar skips a policy whose evaluation errors, which for a forbid
would mean allowing what it forbids; this engine denies instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from enum import Enum
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import cedarpy

from qustody.domain.ids import ProjectId, TenantId
from qustody.domain.models import Decision, Principal, Resource
from qustody.domain.vocabulary import Action, Role
from qustody.policy.errors import PolicyError

__all__ = [
    "ApprovalNeed",
    "CedarPolicyEngine",
    "StepUp",
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
    "approval": f"{NAMESPACE}::Approval",
    "grant": f"{NAMESPACE}::Grant",
}
#: Resource types that always belong to a tenant; one without a tenant id is a bug.
_TENANT_SCOPED = frozenset({"tenant", "project", "job", "principal", "token", "approval", "grant"})
#: Resource types that may name an owner (the schema declares ``owner`` on them).
_OWNED = frozenset({"project", "job", "token", "approval", "grant"})
#: Entity attributes the engine sets from a Resource's own fields.
_ENGINE_ATTRIBUTES = frozenset({"tenant", "project", "data_class", "owner"})
#: Context keys the engine computes; a caller may not set them.
_RESERVED_CONTEXT = frozenset(
    {
        "roles",
        "all_roles",
        "scopes",
        "required_scope",
        "auth_method",
        "data_class",
        "mfa",
        "auth_age",
        "acr",
        "amr",
        "dpop",
        "local_hour",
        "local_minute",
        "local_weekday",
    }
)
#: Context keys computed only when a policy that may apply reads them.
_SIGN_IN_KEYS = frozenset({"mfa", "auth_age", "acr", "amr", "dpop"})
_LOCAL_TIME_KEYS = frozenset({"local_hour", "local_minute", "local_weekday"})
#: Assurance levels (NIST SP 800-63B) that mean a multi-factor sign-in.
_MULTI_FACTOR = frozenset({"aal2", "aal3"})
_CEDAR_LONG_MIN, _CEDAR_LONG_MAX = -(2**63), 2**63 - 1
_POLICY_IN_ERROR = re.compile(r"[^`]*\bpolicy `([^`]+)`")
_POLICY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")
#: ``@step_up`` values: ACR values as an RFC 6750 quoted string may carry them.
_ACR_VALUES = re.compile(r"([\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*)?")
#: The longest ``@max_age`` a step-up policy may name: a day.
MAX_STEP_UP_AGE = 86_400
#: The most approvers an ``@approvals`` policy may ask for.
MAX_APPROVERS = 10
#: The longest an approval request may stay open (``@approval_ttl``): 30 days.
MAX_APPROVAL_TTL = 30 * 86_400
#: How long a request stays open when its policy names no ``@approval_ttl``.
DEFAULT_APPROVAL_TTL = 86_400
_POLICY_FILES_SUFFIX = ".cedar"
_SCHEMA_FILE = "qustody.cedarschema"
_ACTIONS = frozenset(action.value for action in Action)
#: What a tenant whose stored policies no longer load may still do: read and
#: replace them. Everything else is refused (fail closed).
_LOCKOUT = """
@id("tenant-policies-unloadable")
forbid (principal, action, resource)
unless
{
  action in [Qustody::Action::"policy:read", Qustody::Action::"policy:set"]
};
"""


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
class StepUp:
    """What a denial asks of the caller's sign-in (RFC 9470 section 3).

    Reported only when step-up forbids alone denied and the same request,
    made after a fresh multi-factor sign-in, would be allowed.
    """

    #: Space-separated ACR values to ask the identity provider for ("" for none).
    acr_values: str
    #: The longest a sign-in may lie in the past, in seconds, or ``None``.
    max_age: int | None
    policy_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ApprovalNeed:
    """What a denial asks for instead: approval by ``approvers`` distinct
    approvers, within ``ttl_seconds`` of the request.

    Reported only when the forbids that denied are ``@approvals`` forbids
    (possibly with step-up forbids, which the request must still meet)."""

    approvers: int
    ttl_seconds: int
    policy_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Policy:
    #: The ``@id`` annotation; also the id Cedar reports, see :class:`_PolicyBook`.
    id: str
    #: Where it was loaded from (a file name).
    source: str
    #: The line of its first line of code in that source.
    line: int
    effect: Literal["permit", "forbid"]
    #: Cedar JSON (EST) of the policy, as Cedar produced it.
    body: Mapping[str, object]
    #: The actions its scope can match; ``None`` when it can match any.
    actions: frozenset[str] | None
    #: The resource entity types its scope can match; ``None`` for any.
    resource_types: frozenset[str] | None
    #: ``@step_up``: the ACR values a stronger sign-in should meet; ``None``
    #: for a policy that no sign-in lifts.
    step_up: str | None = None
    #: ``@max_age``: how recent that sign-in must be, in seconds.
    max_age: int | None = None
    #: ``@approvals``: how many distinct approvers lift this forbid; ``None``
    #: for a policy no approval lifts.
    approvals: int | None = None
    #: ``@approval_ttl``: how long such a request stays open, in seconds.
    approval_ttl: int | None = None

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

    Each subset also knows which context keys its policies read: Cedar parses
    every key it is handed (the time, a datetime, costs as much as several
    policies), and a key no policy of the subset reads cannot change its
    decision, so the engine leaves such keys out.
    """

    __slots__ = ("_subsets", "policies")

    def __init__(self, policies: Mapping[str, _Policy]) -> None:
        self.policies = dict(policies)
        self._subsets: dict[
            tuple[Action, str], tuple[cedarpy.PolicySet, frozenset[str] | None]
        ] = {}

    def subset(
        self, action: Action, entity_type: str
    ) -> tuple[cedarpy.PolicySet, frozenset[str] | None]:
        """The policies that can apply, and the context keys they read (``None``: any)."""
        key = (action, entity_type)
        subset = self._subsets.get(key)
        if subset is None:
            chosen = {
                policy_id: policy.body
                for policy_id, policy in self.policies.items()
                if policy.may_apply(action, entity_type)
            }
            document = {"staticPolicies": chosen, "templates": {}, "templateLinks": []}
            subset = (
                cedarpy.PolicySet.from_json_str(json.dumps(document)),
                _context_keys(chosen.values()),
            )
            self._subsets[key] = subset
        return subset


def _context_keys(bodies: Iterable[Mapping[str, object]]) -> frozenset[str] | None:
    """The context keys ``bodies`` (Cedar JSON) read, or ``None`` when one of
    them uses ``context`` other than as ``context.key`` or ``context has key``."""
    keys: set[str] = set()
    loose = False

    def walk(node: object) -> None:
        nonlocal loose
        if isinstance(node, list):
            for child in node:
                walk(child)
        elif isinstance(node, Mapping):
            if node.get("Var") == "context":
                loose = True  # a use not consumed as a key access below
                return
            for operator, operand in node.items():
                if (
                    operator in (".", "has")
                    and isinstance(operand, Mapping)
                    and operand.get("left") == {"Var": "context"}
                    and isinstance(operand.get("attr"), str)
                ):
                    keys.add(operand["attr"])
                else:
                    walk(operand)

    for body in bodies:
        walk(body.get("conditions", []))
    return None if loose else frozenset(keys)


class CedarPolicyEngine:
    """A :class:`~qustody.policy.interfaces.PolicyEngine` backed by Cedar.

    ``policies`` are the policies every request is decided by: Cedar text, a
    mapping of source name (a file name) to Cedar text, or ``None`` for the
    shipped policies. An empty policy set is allowed and denies everything.

    ``step_up`` keeps the policies annotated ``@step_up`` among them; without
    it they are left out (a development convenience: privileged actions then
    need no fresh multi-factor sign-in).

    ``approvals`` keeps the platform's ``@approvals`` policies (the app sets
    it from ``QUSTODY_APPROVALS``, on in production); tenants' own
    ``@approvals`` policies apply either way.

    ``tenant_policies`` adds policies of one tenant (same forms, keyed by tenant
    id). They may only forbid, and are evaluated, together with the shared
    ones, only for that tenant's principals: a tenant's policy can narrow what
    the platform allows its own principals and nothing else, and one tenant's
    policies cost the others nothing. See :meth:`replace_tenant_policies` to
    change them at run time.

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
        step_up: bool = True,
        approvals: bool = False,
    ) -> None:
        self._platform_tenant_id = platform_tenant_id
        self._schema = _parse_schema(default_schema() if schema is None else schema)
        self._validate = validate
        self._check_requests = check_requests
        self.step_up_enforced = step_up
        sources = _sources(default_policies() if policies is None else policies, "policies")
        # Every shipped id stays reserved, the step-up ones included when left out.
        self._shipped = self._load(sources, taken={}, tenant=False)
        self.approvals_enforced = approvals
        self._base = _PolicyBook(
            {
                pid: p
                for pid, p in self._shipped.items()
                if (step_up or p.step_up is None) and (approvals or p.approvals is None)
            }
        )
        self._books: dict[TenantId, _PolicyBook] = {}
        self._zones: dict[TenantId, tzinfo] = {}
        for tenant_id, tenant_sources in (tenant_policies or {}).items():
            self.replace_tenant_policies(tenant_id, tenant_sources)

    # -- tenants --------------------------------------------------------------------

    def check_tenant_policies(self, policies: str | Mapping[str, str]) -> tuple[str, ...]:
        """Check a tenant's policies as :meth:`replace_tenant_policies` would,
        without installing them; returns their ids.

        Raises :class:`PolicyError` naming the source, the policy and its line;
        its ``extra`` holds ``policy_id`` and ``line`` where known.
        """
        return tuple(self._load(_sources(policies, "policies"), self._shipped, tenant=True))

    def replace_tenant_policies(
        self, tenant_id: TenantId, policies: str | Mapping[str, str] | None
    ) -> None:
        """Set the policies of one tenant; ``None`` or empty text removes them.

        The new set is parsed and validated before it replaces the old one, so
        a refused update (:class:`PolicyError`) leaves the tenant's policies as
        they were.
        """
        own = self._load(_sources(policies or "", "policies"), self._shipped, tenant=True)
        self._install(tenant_id, own)

    def fail_closed(self, tenant_id: TenantId) -> None:
        """Refuse everything to the tenant's principals but reading and replacing
        its policies: for when its stored policies cannot be loaded."""
        lockout = _load({"lockout": _LOCKOUT}, {}, tenant=True)
        self._install(tenant_id, lockout)

    def set_tenant_timezone(self, tenant_id: TenantId, name: str | None) -> None:
        """The IANA time zone (``Europe/Berlin``) of the tenant's local-time
        context keys; ``None`` or ``UTC`` for UTC. Raises :class:`PolicyError`
        for a zone this machine does not know."""
        if name is None or name == "UTC":
            self._zones.pop(tenant_id, None)
            return
        try:
            self._zones[tenant_id] = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise PolicyError(
                f"time zone {name[:64]!r} is not an IANA time zone name (e.g. Europe/Berlin)",
                field="timezone",
            ) from None

    def policy_ids(self, tenant_id: TenantId | None = None) -> tuple[str, ...]:
        """The ``@id`` of every policy that decides for ``tenant_id``'s principals
        (the shared policies alone when ``None``), in load order."""
        return tuple(policy.id for policy in self._book(tenant_id).policies.values())

    def _install(self, tenant_id: TenantId, own: Mapping[str, _Policy]) -> None:
        if own:
            self._books[tenant_id] = _PolicyBook({**self._base.policies, **own})
        else:
            self._books.pop(tenant_id, None)

    def _book(self, tenant_id: TenantId | None) -> _PolicyBook:
        return self._base if tenant_id is None else self._books.get(tenant_id, self._base)

    # -- decisions ------------------------------------------------------------------

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

        entity_type = _ENTITY_TYPES[resource.type]
        book = self._book(principal.tenant_id)
        policy_set, reads = book.subset(action, entity_type)
        if self._check_requests:
            reads = None  # every key, so that the whole request is checked

        moment = _moment(context)
        cedar_context = _caller_context(context) if context else {}
        if reads is None or "now" in reads:
            cedar_context.setdefault("now", _cedar_datetime(moment))
        cedar_context["roles"] = [role.value for role in roles]
        cedar_context["all_roles"] = [role.value for role in all_roles]
        cedar_context["scopes"] = list(principal.scopes)
        cedar_context["required_scope"] = action.resource
        cedar_context["auth_method"] = principal.auth_method
        if reads is None or not _SIGN_IN_KEYS.isdisjoint(reads):
            cedar_context.update(_sign_in_context(principal, moment))
        if reads is None or not _LOCAL_TIME_KEYS.isdisjoint(reads):
            local = moment.astimezone(self._zones.get(principal.tenant_id, UTC))
            cedar_context["local_hour"] = local.hour
            cedar_context["local_minute"] = local.minute
            cedar_context["local_weekday"] = local.isoweekday()
        if resource.data_class is not None:
            cedar_context["data_class"] = resource.data_class.value
        if reads is not None:
            cedar_context = {k: v for k, v in cedar_context.items() if k in reads}

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
            "resource": {"type": entity_type, "id": resource.id},
            "context": cedar_context,
        }
        decision = self._evaluate(action, request, policy_set, entities, book)
        stepped = _stepped_up(decision, book)
        if stepped is None:
            return decision
        # Only step-up forbids deny: would a fresh multi-factor sign-in be
        # allowed? If not, the caller is told the real reason, not to sign in again.
        acr = stepped.acr_values.split()
        request["context"] = {
            **cedar_context,
            "mfa": True,
            "auth_age": 0,
            "amr": sorted({*principal.amr, "mfa"}),
            **({"acr": acr[0]} if acr else {}),
        }
        again = self._evaluate(action, request, policy_set, entities, book)
        return decision if again.allowed else again

    def step_up(self, tenant_id: TenantId, decision: Decision) -> StepUp | None:
        """What sign-in would lift ``decision`` (a denial :meth:`authorize` made
        for a principal of ``tenant_id``), or ``None`` when none would."""
        return _stepped_up(decision, self._book(tenant_id))

    def approval(self, tenant_id: TenantId, decision: Decision) -> ApprovalNeed | None:
        """What approval ``decision`` (a denial for a principal of
        ``tenant_id``) waits for: ``None`` unless every forbid that denied is
        an ``@approvals`` or ``@step_up`` forbid and at least one is the former.
        Whether the request is then allowed is for the caller to ask again,
        with ``context.approved`` set."""
        return _approval_need(decision, self._book(tenant_id))

    def _evaluate(
        self,
        action: Action,
        request: Mapping[str, object],
        policy_set: cedarpy.PolicySet,
        entities: list[dict[str, object]],
        book: _PolicyBook,
    ) -> Decision:
        schema = self._schema if self._check_requests else None
        try:
            result = cedarpy.is_authorized(dict(request), policy_set, entities, schema)
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

    def _load(
        self, sources: Mapping[str, str], taken: Mapping[str, _Policy], *, tenant: bool
    ) -> dict[str, _Policy]:
        policies = _load(sources, taken, tenant=tenant)
        if self._validate:
            for name, text in sources.items():
                _validate(text, name, self._schema)
        return policies

    def _is_platform_admin(self, principal: Principal) -> bool:
        if Role.PLATFORM_ADMIN not in principal.tenant_roles:
            return False
        return self._platform_tenant_id is None or principal.tenant_id == self._platform_tenant_id


def _stepped_up(decision: Decision, book: _PolicyBook) -> StepUp | None:
    """The step-up that ``decision`` names: every policy that denied is a step-up forbid."""
    if decision.allowed or not decision.policy_ids:
        return None
    policies = [book.policies.get(policy_id) for policy_id in decision.policy_ids]
    acr: set[str] = set()
    ages: list[int] = []
    for policy in policies:
        if policy is None or policy.step_up is None:
            return None
        acr.update(policy.step_up.split())
        if policy.max_age is not None:
            ages.append(policy.max_age)
    return StepUp(" ".join(sorted(acr)), min(ages) if ages else None, decision.policy_ids)


def _approval_need(decision: Decision, book: _PolicyBook) -> ApprovalNeed | None:
    if decision.allowed or not decision.policy_ids:
        return None
    approvers: list[int] = []
    ttls: list[int] = []
    held: list[str] = []
    for policy_id in decision.policy_ids:
        policy = book.policies.get(policy_id)
        if policy is None or (policy.approvals is None and policy.step_up is None):
            return None
        if policy.approvals is not None:
            approvers.append(policy.approvals)
            ttls.append(policy.approval_ttl or DEFAULT_APPROVAL_TTL)
            held.append(policy_id)
    if not approvers:
        return None
    return ApprovalNeed(max(approvers), min(ttls), tuple(held))


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


# -- the request ---------------------------------------------------------------


def _moment(context: Mapping[str, object] | None) -> datetime:
    """The decision's time: the caller's ``now`` (a what-if, a test), else the clock."""
    given = context.get("now") if context else None
    if given is None:
        return datetime.now(UTC)
    if not isinstance(given, datetime):
        raise PolicyError(
            f"context.now is a {type(given).__name__}; pass an aware datetime", field="context.now"
        )
    if given.tzinfo is None:
        raise PolicyError(
            "context.now is a naive datetime; pass an aware one (e.g. datetime.now(UTC))",
            field="context.now",
        )
    return given


def _sign_in_context(principal: Principal, moment: datetime) -> dict[str, object]:
    """How the caller signed in: ``mfa``, ``amr``, ``dpop``, ``acr`` and ``auth_age``."""
    values: dict[str, object] = {
        "mfa": principal.auth_strength in _MULTI_FACTOR,
        "amr": sorted(principal.amr),
        # Set only once this request's DPoP proof has been verified.
        "dpop": principal.dpop_jkt is not None,
    }
    if principal.acr is not None:
        values["acr"] = principal.acr
    if principal.auth_time is not None:
        auth_time = principal.auth_time
        if auth_time.tzinfo is None:
            auth_time = auth_time.replace(tzinfo=UTC)
        values["auth_age"] = max(0, int((moment - auth_time).total_seconds()))
    return values


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
    reserved = sorted(_ENGINE_ATTRIBUTES.intersection(resource.attributes))
    if reserved:
        return None, (
            f"{kind} resource {resource.id} sets attribute {reserved[0]!r}, which the engine "
            "derives from the resource's own fields"
        )

    attrs: dict[str, object] = {
        key: _cedar_value(value, f"resource.{key}") for key, value in resource.attributes.items()
    }
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


def _cedar_datetime(value: datetime) -> dict[str, object]:
    stamp = value.astimezone(UTC).isoformat(timespec="milliseconds").removesuffix("+00:00")
    return {"__extn": {"fn": "datetime", "arg": stamp + "Z"}}


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
        return _cedar_datetime(value)
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


def _load(
    sources: Mapping[str, str], taken: Mapping[str, _Policy], *, tenant: bool
) -> dict[str, _Policy]:
    """Parse and check every source; key its policies by their ``@id``.

    ``taken`` are policies already loaded, whose ids the new ones may not reuse.
    A ``tenant`` set may hold forbids only.
    """
    policies: dict[str, _Policy] = {}
    for name, text in sources.items():
        _parse(text, name)
        lines = [line for line, _ in _statements(text)]
        for position, (_, body) in enumerate(_static_policies(text, name)):
            line = lines[position] if position < len(lines) else 0
            where = f"{name}, policy at line {line}"
            policy_id = _annotation(body, "id")
            if policy_id is None or not policy_id.strip():
                raise _refused(
                    f'{where} has no @id("...") annotation; every policy needs a unique @id '
                    "(letters, digits and . _ : / -), the name decisions and the audit log report",
                    line=line,
                )
            if not _POLICY_ID.fullmatch(policy_id):
                raise _refused(
                    f'{where} has @id("{policy_id[:130]}"); use letters, digits and . _ : / - '
                    "only, at most 128 characters",
                    line=line,
                )
            where = f'{name}, policy "{policy_id}" at line {line}'
            other = policies.get(policy_id) or taken.get(policy_id)
            if other is not None:
                raise _refused(
                    f'{where} reuses @id("{policy_id}") of a policy in {other.source}; '
                    "policy ids must be unique",
                    line=line,
                    policy_id=policy_id,
                )
            effect = body.get("effect")
            if effect not in ("permit", "forbid"):
                raise _refused(f"{where} has an unknown effect {effect!r}", line=line)
            if tenant and effect == "permit":
                raise _refused(
                    f"{where} is a permit; a tenant's policies may only forbid (narrow what "
                    "the platform's policies allow). Write it as a forbid, e.g. "
                    "`forbid (...) unless { <when it is allowed> };`",
                    line=line,
                    policy_id=policy_id,
                )
            step_up, max_age = _step_up_annotations(body, where, line, policy_id)
            approvals, approval_ttl = _approval_annotations(body, where, line, policy_id)
            policies[policy_id] = _Policy(
                id=policy_id,
                source=name,
                line=line,
                effect="permit" if effect == "permit" else "forbid",
                body=body,
                actions=_scope_actions(body.get("action")),
                resource_types=_scope_types(body.get("resource")),
                step_up=step_up,
                max_age=max_age,
                approvals=approvals,
                approval_ttl=approval_ttl,
            )
    return policies


def _approval_annotations(
    body: Mapping[str, object], where: str, line: int, policy_id: str
) -> tuple[int | None, int | None]:
    """``@approvals("<N>")`` and ``@approval_ttl("<seconds>")``, checked.

    An approval policy is a forbid that reads ``context.approved`` (the
    guard sets it once a matching request is approved), so that an approval
    can lift it at all.
    """
    count_text = _annotation(body, "approvals")
    ttl_text = _annotation(body, "approval_ttl")
    if count_text is None:
        if ttl_text is not None:
            raise _refused(
                f'{where} has @approval_ttl without @approvals; add @approvals("<N>")',
                line=line,
                policy_id=policy_id,
            )
        return None, None
    if body.get("effect") != "forbid":
        raise _refused(
            f"{where} has @approvals, which belongs on a forbid (the refusal approval lifts)",
            line=line,
            policy_id=policy_id,
        )
    if not count_text.isdigit() or not 1 <= int(count_text) <= MAX_APPROVERS:
        raise _refused(
            f'{where} has @approvals("{count_text[:20]}"); give a number of approvers from 1 '
            f"to {MAX_APPROVERS}",
            line=line,
            policy_id=policy_id,
        )
    ttl = None
    if ttl_text is not None:
        if not ttl_text.isdigit() or not 60 <= int(ttl_text) <= MAX_APPROVAL_TTL:
            raise _refused(
                f'{where} has @approval_ttl("{ttl_text[:20]}"); give whole seconds from 60 to '
                f"{MAX_APPROVAL_TTL}",
                line=line,
                policy_id=policy_id,
            )
        ttl = int(ttl_text)
    read = _context_keys([body])
    if read is not None and "approved" not in read:
        raise _refused(
            f"{where} has @approvals but never reads context.approved; end it with "
            "`unless { context has approved && context.approved }` so an approval can lift it",
            line=line,
            policy_id=policy_id,
        )
    return int(count_text), ttl


def _step_up_annotations(
    body: Mapping[str, object], where: str, line: int, policy_id: str
) -> tuple[str | None, int | None]:
    """``@step_up("<acr values>")`` and ``@max_age("<seconds>")``, checked.

    A step-up policy is a forbid; its ``@max_age`` must be the ``N`` its own
    conditions test with ``context.auth_age <= N``, so that what the 401 tells
    the caller to get is what the policy then accepts.
    """
    step_up = _annotation(body, "step_up")
    max_age_text = _annotation(body, "max_age")
    if step_up is not None:
        if body.get("effect") != "forbid":
            raise _refused(
                f"{where} has @step_up, which belongs on a forbid (the refusal a stronger "
                "sign-in lifts)",
                line=line,
                policy_id=policy_id,
            )
        if not _ACR_VALUES.fullmatch(step_up):
            raise _refused(
                f'{where} has @step_up("{step_up[:64]}"); give ACR values separated by single '
                'spaces, printable ASCII without quotes or backslashes (e.g. @step_up("mfa"))',
                line=line,
                policy_id=policy_id,
            )
    if max_age_text is None:
        return step_up, None
    if step_up is None:
        raise _refused(
            f'{where} has @max_age without @step_up; add @step_up("<acr values>")',
            line=line,
            policy_id=policy_id,
        )
    if not max_age_text.isdigit() or not 0 <= int(max_age_text) <= MAX_STEP_UP_AGE:
        raise _refused(
            f'{where} has @max_age("{max_age_text[:20]}"); give whole seconds from 0 to '
            f"{MAX_STEP_UP_AGE}",
            line=line,
            policy_id=policy_id,
        )
    max_age = int(max_age_text)
    if max_age not in _auth_age_limits(body):
        raise _refused(
            f'{where} has @max_age("{max_age}") but its conditions do not test '
            f"`context.auth_age <= {max_age}`; make the two agree",
            line=line,
            policy_id=policy_id,
        )
    return step_up, max_age


def _auth_age_limits(node: object) -> set[int]:
    """Every ``N`` of a ``context.auth_age <= N`` in a policy's JSON form."""
    found: set[int] = set()
    if isinstance(node, Mapping):
        compared = node.get("<=")
        if isinstance(compared, Mapping):
            left, right = compared.get("left"), compared.get("right")
            if left == {".": {"left": {"Var": "context"}, "attr": "auth_age"}} and isinstance(
                right, Mapping
            ):
                value = right.get("Value")
                if isinstance(value, int) and not isinstance(value, bool):
                    found.add(value)
        for child in node.values():
            found |= _auth_age_limits(child)
    elif isinstance(node, list):
        for child in node:
            found |= _auth_age_limits(child)
    return found


def _refused(detail: str, *, line: int, policy_id: str | None = None) -> PolicyError:
    extra: dict[str, str | int | list[str] | None] = {"line": line}
    if policy_id is not None:
        extra["policy_id"] = policy_id
    return PolicyError(detail, extra=extra)


def _parse(text: str, name: str) -> None:
    try:
        cedarpy.PolicySet.from_str(text)
    except ValueError as exc:
        raise _parse_failure(text, name, exc) from exc


def _parse_failure(text: str, name: str, exc: ValueError) -> PolicyError:
    """Name the statement that does not parse: Cedar's own message has no position."""
    for line, statement in _statements(text):
        try:
            cedarpy.PolicySet.from_str(statement)
        except ValueError as statement_exc:
            return _refused(
                f"{name}, policy at line {line} does not parse: {statement_exc}; fix the Cedar "
                "syntax (https://docs.cedarpolicy.com/policies/syntax-policy.html)",
                line=line,
            )
    return PolicyError(f"{name} does not parse: {exc}")


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


def _annotation(body: Mapping[str, object], key: str) -> str | None:
    annotations = body.get("annotations")
    value = annotations.get(key) if isinstance(annotations, dict) else None
    return value if isinstance(value, str) else None


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


#: Cedar's validation messages name the policy by its position and repeat per
#: action; these strip both, so each problem is told once, under the @id.
_VALIDATION_POLICY = re.compile(r"^for policy `[^`]*`, ")
_VALIDATION_ACTION = re.compile(r' for Qustody::Action::"[^"]*"')


def _validate(text: str, name: str, schema: cedarpy.Schema) -> None:
    result = cedarpy.validate_policies(text, schema)
    if result.validation_passed:
        return
    lines = [line for line, _ in _statements(text)]
    where: dict[str, tuple[str | None, int]] = {}
    for position, (cedar_id, body) in enumerate(_static_policies(text, name)):
        where[cedar_id] = (_annotation(body, "id"), lines[position] if position < len(lines) else 0)
    problems: dict[str, tuple[str | None, int]] = {}
    for error in result.errors:
        policy_id, line = where.get(error.policy_id, (None, 0))
        message = _VALIDATION_ACTION.sub("", _VALIDATION_POLICY.sub("", error.error))
        label = f'policy "{policy_id or error.policy_id}" at line {line}: {message}'
        problems.setdefault(label, (policy_id, line))
    # Cedar reports in no fixed order: by line, then text, so a refusal reads the same twice.
    labels = sorted(problems, key=lambda label: (problems[label][1], label))
    first_id, first_line = problems[labels[0]]
    raise _refused(
        f"{name} does not validate against the policy schema: "
        + "; ".join(labels[:5])
        + (f" (and {len(labels) - 5} more)" if len(labels) > 5 else "")
        + f". {_validation_hint(labels)}",
        line=first_line,
        policy_id=first_id,
    )


def _validation_hint(messages: list[str]) -> str:
    if any("not found" in message for message in messages):
        return (
            "That attribute is not in the schema: see docs/policies.md for the entities "
            "and context keys policies can use"
        )
    if any("optional attribute" in message for message in messages):
        return (
            "Test an optional attribute before using it (`context has qubits && "
            "context.qubits > 30`)"
        )
    return "Fix the policy, or extend the schema if it uses a new attribute"

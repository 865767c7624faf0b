"""Policy test cases: a table of requests and the decisions they must get.

``qustody policy test CASES`` reads a TOML or JSON file of cases, decides each
one offline with the shipped platform policies plus the tenant's own policy
files, and reports every case whose decision (or deciding policy) differs
from the expected one, so a tenant can test its policies in its own CI. The
format is documented in ``docs/policies.md``; in short::

    policies = ["tenant.cedar"]          # optional; relative to this file

    [defaults]                           # optional; merged into every case
    timezone = "Europe/Berlin"
    now = 2025-03-04T10:00:00Z
    principal = { mfa = true, auth_age = 60 }

    [[cases]]
    name = "no prod QPUs for developers"
    action = "job:submit"
    principal = { roles = ["developer"] }
    resource = { type = "project", id = "research", data_class = "internal" }
    context = { backend = { name = "ibm-qpu", simulator = false, environment = "prod" } }
    expect = "deny"                      # "allow", "deny" or "step-up"
    policy = "no-prod-qpu"               # optional: the deciding policy id(s)
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from qustody.domain.errors import QustodyError
from qustody.domain.ids import PrincipalId, ProjectId, TenantId
from qustody.domain.models import Decision, Principal, Resource
from qustody.domain.vocabulary import Action, DataClass, Role
from qustody.policy.engine import CedarPolicyEngine
from qustody.policy.facts import sdk_context

Expectation = Literal["allow", "deny", "step-up"]
EXPECTATIONS: tuple[Expectation, ...] = ("allow", "deny", "step-up")
#: The tenant the cases' principals belong to (unless a case says otherwise).
DEFAULT_TENANT = TenantId("my-tenant")
_KINDS = ("user", "workload", "operator")
_RESOURCE_TYPES = ("platform", "tenant", "project", "job", "backend", "principal", "token")
_RESOURCE_KEYS = frozenset({"type", "id", "tenant", "project", "data_class", "owner", "attributes"})
_PRINCIPAL_KEYS = frozenset(
    {
        "id",
        "name",
        "tenant",
        "kind",
        "roles",
        "project_roles",
        "scopes",
        "auth_method",
        "mfa",
        "acr",
        "amr",
        "auth_age",
        "auth_time",
        "dpop",
    }
)
_CASE_KEYS = frozenset(
    {
        "name",
        "action",
        "principal",
        "resource",
        "context",
        "expect",
        "policy",
        "policies",
        "now",
        "timezone",
        "sdk_version",
        "user_agent",
    }
)


class CaseError(QustodyError):
    """A cases file that cannot be run: it names the case and the key to fix."""

    code = "invalid_cases"
    status = 422
    title = "Invalid policy test cases"


@dataclass(frozen=True, slots=True)
class Case:
    number: int
    name: str
    principal: Principal
    action: Action
    resource: Resource
    context: Mapping[str, object]
    expect: Expectation
    #: The policy ids that must decide it (exactly), or ``None`` for any.
    policies: frozenset[str] | None
    timezone: str | None


@dataclass(frozen=True, slots=True)
class CaseFile:
    cases: tuple[Case, ...]
    #: Tenant policy files the cases file names, resolved against its folder.
    policy_files: tuple[Path, ...] = ()
    tenant: TenantId = DEFAULT_TENANT


@dataclass(frozen=True, slots=True)
class Outcome:
    case: Case
    decision: Decision
    got: Expectation
    errors: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        decided = self.got == self.case.expect or (
            self.case.expect == "deny" and self.got == "step-up"
        )
        wanted = self.case.policies
        return decided and (wanted is None or wanted == frozenset(self.decision.policy_ids))


def read_cases(path: Path) -> CaseFile:
    """Parse a ``.toml`` or ``.json`` cases file (see the module docstring)."""
    raw = path.read_bytes()
    try:
        if path.suffix.lower() == ".json":
            document = json.loads(raw)
        else:
            document = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise CaseError(
            f"{path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}: "
            f"{error}; write the cases as documented in docs/policies.md."
        ) from None
    return parse_cases(document, base=path.parent, source=str(path))


def parse_cases(document: object, *, base: Path, source: str = "cases") -> CaseFile:
    top = _table(document, source)
    unknown = sorted(set(top) - {"policies", "defaults", "cases", "tenant"})
    if unknown:
        raise CaseError(
            f"{source} has unknown key {unknown[0]!r}; use 'policies', 'tenant', 'defaults' "
            "and 'cases'."
        )
    tenant = TenantId(_text(top.get("tenant", DEFAULT_TENANT), f"{source}: tenant"))
    files = tuple(base / name for name in _texts(top.get("policies", []), f"{source}: policies"))
    defaults = _table(top.get("defaults", {}), f"{source}: defaults")
    raw_cases = top.get("cases")
    if not isinstance(raw_cases, list) or not raw_cases:
        raise CaseError(f"{source} has no cases; add [[cases]] tables (TOML) or a 'cases' list.")
    cases = tuple(
        _case(n, _merge(defaults, _table(raw, f"case {n}")), tenant)
        for n, raw in enumerate(raw_cases, start=1)
    )
    return CaseFile(cases, files, tenant)


def run_cases(engine: CedarPolicyEngine, cases: Sequence[Case], tenant: TenantId) -> list[Outcome]:
    """Decide every case with ``engine`` (whose tenant policies are ``tenant``'s)."""
    outcomes = []
    for case in cases:
        engine.set_tenant_timezone(tenant, case.timezone)
        decision = engine.authorize(
            case.principal, case.action, case.resource, context=case.context
        )
        if decision.allowed:
            got: Expectation = "allow"
        elif engine.step_up(case.principal.tenant_id, decision) is not None:
            got = "step-up"
        else:
            got = "deny"
        outcomes.append(Outcome(case, decision, got, decision.errors))
    return outcomes


# -- one case -------------------------------------------------------------------------


def _case(number: int, raw: Mapping[str, object], tenant: TenantId) -> Case:
    label = f"case {number}" + (f" ({raw['name']})" if isinstance(raw.get("name"), str) else "")
    unknown = sorted(set(raw) - _CASE_KEYS)
    if unknown:
        raise CaseError(
            f"{label} has unknown key {unknown[0]!r}; a case has {sorted(_CASE_KEYS)}.",
            field=unknown[0],
        )
    action_name = _text(raw.get("action"), f"{label}: action")
    try:
        action = Action(action_name)
    except ValueError:
        raise CaseError(
            f"{label}: action {action_name!r} is not a Qustody action; use one of "
            f"{sorted(a.value for a in Action)}.",
            field="action",
        ) from None
    expect = raw.get("expect")
    if expect not in EXPECTATIONS:
        raise CaseError(
            f"{label}: expect is {expect!r}; use 'allow', 'deny' or 'step-up'.", field="expect"
        )
    now = _datetime(raw.get("now"), f"{label}: now") if "now" in raw else datetime.now(UTC)
    principal = _principal(
        _table(raw.get("principal", {}), f"{label}: principal"), tenant, now, label
    )
    resource = _resource(_table(raw.get("resource"), f"{label}: resource"), principal, label)
    context = dict(_table(raw.get("context", {}), f"{label}: context"))
    context["now"] = now
    if "sdk_version" in raw:
        context.update(sdk_context(f"qustody-sdk/{_text(raw['sdk_version'], label)}"))
        if "sdk_version" not in context:
            raise CaseError(f"{label}: sdk_version must look like 1.2.3", field="sdk_version")
    if "user_agent" in raw:
        context.update(sdk_context(_text(raw["user_agent"], f"{label}: user_agent")))
    wanted = raw.get("policy", raw.get("policies"))
    policies = None if wanted is None else frozenset(_texts(wanted, f"{label}: policy"))
    timezone = raw.get("timezone")
    return Case(
        number=number,
        name=_text(raw.get("name", f"case {number}"), f"{label}: name"),
        principal=principal,
        action=action,
        resource=resource,
        context=context,
        expect=expect,
        policies=policies,
        timezone=None if timezone is None else _text(timezone, f"{label}: timezone"),
    )


def _principal(raw: Mapping[str, object], tenant: TenantId, now: datetime, label: str) -> Principal:
    where = f"{label}: principal"
    unknown = sorted(set(raw) - _PRINCIPAL_KEYS)
    if unknown:
        raise CaseError(
            f"{where} has unknown key {unknown[0]!r}; use {sorted(_PRINCIPAL_KEYS)}.",
            field=f"principal.{unknown[0]}",
        )
    kind = raw.get("kind", "user")
    if kind not in _KINDS:
        raise CaseError(f"{where}: kind is {kind!r}; use one of {_KINDS}.", field="principal.kind")
    tenant_roles = frozenset(_role(r, where) for r in _texts(raw.get("roles", []), where))
    project_roles = tuple(
        (ProjectId(project), _role(role, where))
        for project, roles in _table(raw.get("project_roles", {}), where).items()
        for role in _texts(roles, f"{where}: project_roles.{project}")
    )
    mfa = raw.get("mfa", False)
    if not isinstance(mfa, bool):
        raise CaseError(f"{where}: mfa must be true or false.", field="principal.mfa")
    amr = frozenset(_texts(raw.get("amr", ["pwd", "otp"] if mfa else ["pwd"]), where))
    auth_time: datetime | None = None
    if "auth_time" in raw:
        auth_time = _datetime(raw["auth_time"], f"{where}: auth_time")
    elif "auth_age" in raw:
        age = raw["auth_age"]
        if not isinstance(age, int) or isinstance(age, bool) or age < 0:
            raise CaseError(f"{where}: auth_age must be whole seconds (>= 0).", field="auth_age")
        auth_time = now - timedelta(seconds=age)
    dpop = raw.get("dpop", False)
    acr = raw.get("acr")
    return Principal(
        id=PrincipalId(_text(raw.get("id", "usr_test"), f"{where}: id")),
        tenant_id=TenantId(_text(raw.get("tenant", tenant), f"{where}: tenant")),
        name=_text(raw.get("name", "tester"), f"{where}: name"),
        kind=kind,  # type: ignore[arg-type]  # checked against _KINDS above
        token_id="tok_test",  # noqa: S106 (a token id, not a secret)
        scopes=frozenset(_texts(raw.get("scopes", ["*"]), f"{where}: scopes")),
        auth_method=_text(raw.get("auth_method", "oidc"), f"{where}: auth_method"),
        tenant_roles=tenant_roles,
        project_roles=project_roles,
        auth_strength="aal2" if mfa else "aal1",
        acr=None if acr is None else _text(acr, f"{where}: acr"),
        amr=amr,
        auth_time=auth_time,
        dpop_jkt="case-jkt" if dpop is True else None,
    )


def _resource(raw: Mapping[str, object], principal: Principal, label: str) -> Resource:
    where = f"{label}: resource"
    kind = raw.get("type")
    if kind not in _RESOURCE_TYPES:
        raise CaseError(
            f"{where}: type is {kind!r}; use one of {_RESOURCE_TYPES}.", field="resource.type"
        )
    platform_level = kind in ("platform", "backend")
    default_tenant = None if platform_level else principal.tenant_id
    tenant = raw.get("tenant", default_tenant)
    default_id = {"platform": "platform", "tenant": tenant, "principal": principal.id}
    resource_id = raw.get("id", default_id.get(str(kind), f"{kind}-1"))
    data_class = raw.get("data_class")
    if data_class is not None and data_class not in {d.value for d in DataClass}:
        raise CaseError(
            f"{where}: data_class is {data_class!r}; use one of {[d.value for d in DataClass]}.",
            field="resource.data_class",
        )
    attributes = dict(_table(raw.get("attributes", {}), f"{where}: attributes"))
    attributes.update({k: v for k, v in raw.items() if k not in _RESOURCE_KEYS})
    for key, value in attributes.items():
        if not isinstance(value, str | int | bool):
            raise CaseError(
                f"{where}: attribute {key!r} must be a string, whole number or boolean.",
                field=f"resource.{key}",
            )
    project = raw.get("project")
    owner = raw.get("owner")
    return Resource(
        type=kind,  # type: ignore[arg-type]  # checked against _RESOURCE_TYPES above
        id=_text(resource_id, f"{where}: id"),
        tenant_id=None if tenant is None else TenantId(_text(tenant, f"{where}: tenant")),
        project_id=None if project is None else ProjectId(_text(project, f"{where}: project")),
        data_class=None if data_class is None else DataClass(data_class),
        owner_id=None if owner is None else PrincipalId(_text(owner, f"{where}: owner")),
        attributes=attributes,  # type: ignore[arg-type]  # checked above
    )


# -- small parsers --------------------------------------------------------------------


#: Default tables a case's own table is merged into key by key (a case's
#: ``resource`` replaces the default one: its keys depend on its type).
_MERGED = frozenset({"principal", "context"})


def _merge(defaults: Mapping[str, object], case: Mapping[str, object]) -> dict[str, object]:
    """``case`` over ``defaults``; ``principal`` and ``context`` merge key by key."""
    merged = dict(defaults)
    for key, value in case.items():
        base = merged.get(key)
        if key in _MERGED and isinstance(base, dict) and isinstance(value, dict):
            merged[key] = {**base, **value}
        else:
            merged[key] = value
    return merged


def _table(value: object, where: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise CaseError(f"{where} must be a table (TOML) or an object (JSON).")
    return value


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise CaseError(f"{where} must be a non-empty string.")
    return value


def _texts(value: object, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CaseError(f"{where} must be a string or a list of strings.")
    return list(value)


def _role(name: str, where: str) -> Role:
    try:
        return Role(name)
    except ValueError:
        raise CaseError(
            f"{where}: role {name!r} is not a Qustody role; use one of {[r.value for r in Role]}."
        ) from None


def _datetime(value: object, where: str) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise CaseError(f"{where} is not an ISO 8601 date and time.") from None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise CaseError(f"{where} must be a date and time with a UTC offset (…Z or …+02:00).")
    return value

"""Workload identity: a CI job's token exchanged for a Qustody token (RFC 8693).

A workload (a GitHub Actions job, a GitLab pipeline, a Kubernetes service
account) holds a short-lived JWT from its platform's issuer. A tenant admin
writes *trust rules*: tokens of this ``issuer``, for this ``audience``, whose
claims meet these ``conditions``, become a token of this workload principal,
with at most these ``scopes``, for at most ``ttl_seconds`` (900 at most). The
workload then needs no stored secret: ``POST /v1/auth/token`` takes its
platform's token and answers with a Qustody token for one audience.

Conditions (every one must hold; a claim that is absent or not a string
fails its condition)::

    {"repository": "acme/app"}                      exact value
    {"environment": ["prod", "staging"]}            one of these values
    {"ref": {"glob": "refs/heads/release/*"}}       a glob, or {"glob": [..]}

In a glob, ``*`` matches any run of characters except ``/``, ``**`` any run
including ``/``; every other character matches itself (no ``?``, no classes,
no escapes) and the pattern covers the whole value. Matching is
case-sensitive.

Which tenant: an issuer may appear in rules of several tenants. The token's
issuer selects the enabled rules naming it, in every tenant, and the token is
verified (signature, ``iss``, ``exp``...) by the issuer's own keys, the same
way whichever tenant the request names. A rule then applies only if it
belongs to the tenant (or is the rule) the request's ``audience`` names
(``<tenant>`` or ``<tenant>/<rule>``), if any, the token's ``aud`` includes
the rule's audience, and its claims meet the rule's conditions. Exactly one
rule may apply: when rules of several tenants (or several rules of one) do,
the request must name one. So a token only ever lands in a tenant one of whose
rules it satisfies; a named tenant that does not exist, has no rule for the
issuer, or has rules the token does not meet, answer alike; and only issuers
named by some rule are ever contacted.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from qustody.audit.recorder import Actor, Target, record
from qustody.domain.errors import (
    AuthenticationError,
    ConfigurationError,
    Forbidden,
    InvalidRequest,
    ServiceUnavailable,
)
from qustody.domain.ids import PrincipalId, TenantId, looks_like_id, new_id
from qustody.domain.models import Principal, RequestContext, Resource
from qustody.domain.vocabulary import Action
from qustody.identity.errors import (
    InvalidGrant,
    InvalidTarget,
    NameTaken,
    OAuthError,
    TemporarilyUnavailable,
    TokenRequestScope,
    WrongAudience,
)
from qustody.identity.external_jwt import JwtVerifier, VerifiedJwt, check_url
from qustody.identity.tokens import IssuedToken, SignIn, TokenService, parse_scopes, roles_of
from qustody.policy.guard import Guard, not_found
from qustody.policy.misses import records_misses
from qustody.storage import models as m
from qustody.storage.db import SYSTEM, Database, tenant, tenant_scope, utc

#: A rule's token lives at most this long, whatever else is configured.
MAX_TTL_SECONDS = 900
MAX_CONDITIONS = 16
MAX_VALUES = 32
MAX_VALUE_CHARS = 256
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}[a-z0-9]$|^[a-z0-9]$")
_CLAIM = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
#: Claims the token's verification covers; a condition on them would mislead.
_RESERVED_CLAIMS = frozenset({"iss", "aud", "exp", "nbf", "iat", "jti"})


# -- conditions (pure) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Condition:
    claim: str
    values: tuple[str, ...]
    glob: bool = False

    def holds(self, claims: Mapping[str, object]) -> bool:
        value = claims.get(self.claim)
        if not isinstance(value, str):
            return False
        if self.glob:
            return any(glob_matches(pattern, value) for pattern in self.values)
        return value in self.values

    def as_json(self) -> object:
        values: object = self.values[0] if len(self.values) == 1 else list(self.values)
        return {"glob": values} if self.glob else values


def glob_regex(pattern: str) -> re.Pattern[str]:
    """``*`` → any run without ``/``; ``**`` → any run; everything else literal."""
    parts = []
    for index, chunk in enumerate(pattern.split("**")):
        if index:
            parts.append(".*")
        parts.append("[^/]*".join(re.escape(piece) for piece in chunk.split("*")))
    return re.compile("".join(parts), re.DOTALL)


def glob_matches(pattern: str, value: str) -> bool:
    return glob_regex(pattern).fullmatch(value) is not None


def _values(raw: object, field: str) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else [raw]
    if not items or len(items) > MAX_VALUES:
        raise InvalidRequest(
            f"{field} lists {len(items)} values; give 1 to {MAX_VALUES}.", field=field
        )
    for item in items:
        if not isinstance(item, str) or not 1 <= len(item) <= MAX_VALUE_CHARS:
            raise InvalidRequest(
                f"{field} must be strings of 1 to {MAX_VALUE_CHARS} characters "
                "(claims are compared as strings).",
                field=field,
            )
    return tuple(dict.fromkeys(items))


def parse_conditions(raw: object) -> tuple[Condition, ...]:
    """A rule's ``conditions`` object, checked; see the module docstring."""
    if not isinstance(raw, dict) or not raw:
        raise InvalidRequest(
            "conditions must be a non-empty object of claim → value, e.g. "
            '{"repository": "acme/app", "ref": {"glob": "refs/heads/release/*"}}: a rule '
            "without conditions would accept every token of its issuer.",
            field="conditions",
        )
    if len(raw) > MAX_CONDITIONS:
        raise InvalidRequest(
            f"conditions names {len(raw)} claims; at most {MAX_CONDITIONS}.", field="conditions"
        )
    conditions = []
    for claim, spec in raw.items():
        field = f"conditions.{str(claim)[:64]}"
        if not isinstance(claim, str) or not _CLAIM.fullmatch(claim):
            raise InvalidRequest(
                f"claim name {str(claim)[:64]!r} is not allowed; use letters, digits and _ . : -",
                field="conditions",
            )
        if claim in _RESERVED_CLAIMS:
            raise InvalidRequest(
                f"{claim!r} is checked with the token itself (issuer, audience, times); "
                "remove the condition.",
                field=field,
            )
        if isinstance(spec, dict):
            if set(spec) != {"glob"}:
                raise InvalidRequest(
                    f"{field} must be a string, a list of strings, or {{'glob': pattern}}.",
                    field=field,
                )
            patterns = _values(spec["glob"], field)
            if any(not pattern.replace("*", "") for pattern in patterns):
                raise InvalidRequest(
                    f"{field}: a glob of only '*' matches anything; name the values to allow.",
                    field=field,
                )
            conditions.append(Condition(claim, patterns, glob=True))
        else:
            conditions.append(Condition(claim, _values(spec, field)))
    return tuple(conditions)


def conditions_json(conditions: Sequence[Condition]) -> dict[str, object]:
    return {c.claim: c.as_json() for c in conditions}


def _unverified_issuer(token: str) -> str:
    """The ``iss`` a JWT claims, to find the rules to verify it by. Trusted for
    nothing else: the verification that follows is what counts."""
    parts = token.split(".")
    if len(parts) != 3 or len(token) > 16 * 1024:
        raise InvalidGrant("subject_token is not a compact JWT.", field="subject_token")
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        raise InvalidGrant(
            "subject_token's payload is not base64url-encoded JSON.", field="subject_token"
        ) from None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    if not isinstance(issuer, str) or not issuer:
        raise InvalidGrant("subject_token names no issuer ('iss').", field="subject_token")
    return issuer


def _audiences(claims: Mapping[str, object]) -> set[str]:
    aud = claims.get("aud")
    named = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    return {a for a in named if isinstance(a, str)}


# -- the service -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrustRuleInfo:
    id: str
    name: str
    issuer: str
    audience: str
    conditions: dict[str, object]
    principal_id: str
    principal_name: str
    scopes: tuple[str, ...]
    ttl_seconds: int
    enabled: bool
    created_at: datetime
    created_by: str


@dataclass(frozen=True, slots=True)
class Exchanged:
    """A token issued for a workload, and what it was issued on."""

    issued: IssuedToken
    rule_id: str
    #: ``DPoP`` when bound to a key, else ``Bearer``.
    token_type: str


def _info(row: m.TrustRule, principal_name: str) -> TrustRuleInfo:
    return TrustRuleInfo(
        id=row.id,
        name=row.name,
        issuer=row.issuer,
        audience=row.audience,
        conditions=dict(row.conditions),
        principal_id=row.principal_id,
        principal_name=principal_name,
        scopes=tuple(row.scopes.split()),
        ttl_seconds=row.ttl_seconds,
        enabled=row.enabled,
        created_at=utc(row.created_at),
        created_by=row.created_by,
    )


class WorkloadIdentity:
    """Trust rules (administration) and the exchange itself."""

    def __init__(
        self,
        db: Database,
        guard: Guard,
        tokens: TokenService,
        verifier: JwtVerifier,
    ) -> None:
        self._db = db
        self._guard = guard
        self._tokens = tokens
        self._verifier = verifier

    @property
    def max_ttl_seconds(self) -> int:
        return min(MAX_TTL_SECONDS, self._tokens.max_ttl_seconds)

    # -- trust rules -------------------------------------------------------------------

    @records_misses(Action.TRUSTRULE_SET)
    def create_rule(
        self,
        caller: Principal,
        request: RequestContext,
        *,
        name: str,
        issuer: str,
        audience: str,
        conditions: object,
        principal_name: str,
        scopes: Sequence[str] | None,
        ttl_seconds: int | None,
    ) -> TrustRuleInfo:
        if not _NAME.fullmatch(name):
            raise InvalidRequest(
                f"name {name[:80]!r} is not allowed; use lower-case letters, digits, '.', '_' "
                "and '-', 1 to 64 characters, starting and ending with a letter or digit.",
                field="name",
            )
        try:
            check_url(
                issuer,
                what="issuer",
                allow_insecure_loopback=self._verifier.allow_insecure_loopback,
            )
        except ConfigurationError as error:
            raise InvalidRequest(error.detail, field="issuer") from None
        if len(issuer) > 512 or issuer != issuer.strip():
            raise InvalidRequest("issuer must be at most 512 characters.", field="issuer")
        if (
            not 1 <= len(audience) <= 512
            or not audience.isprintable()
            or audience.strip() != (audience)
        ):
            raise InvalidRequest(
                "audience must be 1 to 512 printable characters: the 'aud' the workload's "
                "token carries (e.g. the audience your CI job asks its issuer for).",
                field="audience",
            )
        parsed = parse_conditions(conditions)
        wanted = parse_scopes(scopes)
        ttl = self.max_ttl_seconds if ttl_seconds is None else ttl_seconds
        if not 1 <= ttl <= self.max_ttl_seconds:
            raise InvalidRequest(
                f"ttl_seconds is {ttl}; exchanged tokens live 1 to {self.max_ttl_seconds} seconds.",
                field="ttl_seconds",
            )
        decision = self._guard.check(
            caller,
            Action.TRUSTRULE_SET,
            Resource("tenant", caller.tenant_id, caller.tenant_id),
            request,
        )
        if "*" not in caller.scopes and not set(wanted) <= caller.scopes:
            raise InvalidRequest(
                f"scopes {sorted(set(wanted) - caller.scopes)} exceed this token's scopes "
                f"{sorted(caller.scopes)}; a rule can only grant what its author's token holds.",
                field="scopes",
            )
        with self._db.read() as session:
            target = session.scalar(
                select(m.Principal).where(
                    m.Principal.tenant_id == caller.tenant_id,
                    m.Principal.name == principal_name[:128],
                )
            )
        if target is None:
            raise not_found("principal", principal_name[:80])
        if target.kind != "workload":
            raise InvalidRequest(
                f"principal {target.name} is a {target.kind}; trust rules map to workload "
                "principals (add one with `qustody member add NAME --kind workload ...`).",
                field="principal",
            )
        row = m.TrustRule(
            id=new_id("tru"),
            tenant_id=caller.tenant_id,
            name=name,
            issuer=issuer,
            audience=audience,
            conditions=conditions_json(parsed),
            principal_id=target.id,
            scopes=" ".join(wanted),
            ttl_seconds=ttl,
            enabled=True,
            created_at=datetime.now(UTC),
            created_by=caller.id,
        )
        try:
            with self._db.write() as session:
                session.add(row)
                session.flush()
                record(
                    session,
                    Action.TRUSTRULE_SET,
                    actor=Actor.of(caller),
                    target=Target("trustrule", row.id, caller.tenant_id),
                    decision=decision,
                    request=request,
                    reason=(
                        f"name={name} principal={target.name} scopes={row.scopes} ttl={ttl} "
                        f"issuer={issuer} audience={audience[:100]} conditions="
                        + json.dumps(row.conditions, separators=(",", ":"), sort_keys=True)
                    ),
                )
        except IntegrityError:
            raise NameTaken(
                f"a trust rule named {name!r} already exists in this tenant; delete it first "
                "or choose another name.",
                field="name",
            ) from None
        return _info(row, target.name)

    def list_rules(self, caller: Principal, request: RequestContext) -> list[TrustRuleInfo]:
        self._guard.check(
            caller,
            Action.TRUSTRULE_LIST,
            Resource("tenant", caller.tenant_id, caller.tenant_id),
            request,
        )
        with self._db.read() as session:
            rows = session.execute(
                select(m.TrustRule, m.Principal.name)
                .join(m.Principal, m.Principal.id == m.TrustRule.principal_id)
                .where(m.TrustRule.tenant_id == caller.tenant_id)
                .order_by(m.TrustRule.name)
            ).all()
            return [_info(rule, name) for rule, name in rows]

    @records_misses(Action.TRUSTRULE_DELETE)
    def delete_rule(self, caller: Principal, request: RequestContext, ref: str) -> None:
        """Delete a rule of the caller's tenant, by id or name."""
        decision = self._guard.check(
            caller,
            Action.TRUSTRULE_DELETE,
            Resource("tenant", caller.tenant_id, caller.tenant_id),
            request,
        )
        column = m.TrustRule.id if looks_like_id(ref) else m.TrustRule.name
        with self._db.write() as session:
            row = session.scalar(
                select(m.TrustRule).where(
                    m.TrustRule.tenant_id == caller.tenant_id, column == ref[:64]
                )
            )
            if row is None:
                raise not_found("trustrule", ref[:64])
            session.execute(delete(m.TrustRule).where(m.TrustRule.id == row.id))
            record(
                session,
                Action.TRUSTRULE_DELETE,
                actor=Actor.of(caller),
                target=Target("trustrule", row.id, caller.tenant_id),
                decision=decision,
                request=request,
                reason=f"name={row.name} issuer={row.issuer}",
            )

    # -- the exchange ------------------------------------------------------------------

    def exchange(
        self,
        subject_token: str,
        *,
        audience: str | None,
        scope: str | None,
        jkt: str | None,
        request: RequestContext,
    ) -> Exchanged:
        """A Qustody token for a workload's external JWT (see the module docstring).

        Every outcome is audited as ``token:exchange``, with the rule, issuer
        and subject where known, never the token. Raises :class:`OAuthError`s.
        """
        verified: VerifiedJwt | None = None
        rule: m.TrustRule | None = None
        try:
            tenant_named, rule_named = _target(audience)
            issuer = _unverified_issuer(subject_token)
            try:
                candidates = self._candidates(issuer)
                verified = self._verify(subject_token, issuer, candidates)
                rule = self._choose(verified, candidates, tenant_named, rule_named)
            except (InvalidGrant, TemporarilyUnavailable) as error:
                refusal: OAuthError = error
            else:
                return self._issue(rule, verified, scope, jkt, request)
        except OAuthError as error:
            self._record_failure(error, verified, rule, request)
            raise
        # Whether any tenant trusts this issuer, whether the issuer answered,
        # and whether the token met a rule's conditions are the tenants'
        # configuration: the caller gets one answer for all of them, the audit
        # log the exact reason.
        self._record_failure(refusal, verified, rule, request)
        raise InvalidGrant(NOT_ACCEPTED, field="subject_token")

    def _candidates(self, issuer: str) -> list[tuple[m.TrustRule, str]]:
        """Enabled rules of every tenant naming ``issuer``, each with its tenant's
        name (before the tenant is known, in system scope).

        Deliberately not narrowed to the tenant the request names: the token
        is verified the same way whichever tenant is named, so the answer
        never tells whether a named tenant exists or trusts this issuer."""
        query = (
            select(m.TrustRule, m.Tenant.name)
            .join(m.Tenant, m.Tenant.id == m.TrustRule.tenant_id)
            .where(m.TrustRule.issuer == issuer, m.TrustRule.enabled.is_(True))
            .order_by(m.TrustRule.id)
        )
        with self._db.read(scope=SYSTEM) as session:
            rows = [(rule, name) for rule, name in session.execute(query)]
        if not rows:
            raise InvalidGrant(
                f"no trust rule accepts tokens of issuer {issuer[:200]!r}; ask the tenant admin "
                "for one (`qustody trust-rules add`).",
                field="subject_token",
            )
        return rows

    def _verify(
        self, token: str, issuer: str, candidates: Sequence[tuple[m.TrustRule, str]]
    ) -> VerifiedJwt:
        audiences = {rule.audience for rule, _ in candidates}
        try:
            return self._verifier.verify(token, issuer=issuer, audiences=audiences)
        except WrongAudience:
            # The verifier's own message lists the audiences expected: other
            # tenants' rules' configuration.
            raise InvalidGrant(
                "subject_token refused: its audience ('aud') is not one a trust rule accepts; "
                "ask your issuer for a token for the audience your tenant's rule names.",
                field="subject_token",
            ) from None
        except AuthenticationError as error:
            raise InvalidGrant(
                f"subject_token refused: {error.detail}", field="subject_token"
            ) from None
        except ServiceUnavailable as error:
            raise TemporarilyUnavailable(error.detail) from None
        except ConfigurationError as error:
            raise InvalidGrant(
                f"the trust rules' issuer cannot be used: {error.detail}", field="subject_token"
            ) from None

    def _choose(
        self,
        verified: VerifiedJwt,
        candidates: Sequence[tuple[m.TrustRule, str]],
        tenant_named: str | None,
        rule_named: str | None,
    ) -> m.TrustRule:
        """The one rule the token meets, of the named tenant (and name) if any.

        A tenant or rule that does not exist, one without rules for this
        issuer, and one whose rules the token does not meet all get the same
        answer."""
        audiences = _audiences(verified.claims)
        matching = [
            (rule, tenant_name)
            for rule, tenant_name in candidates
            if (tenant_named is None or tenant_name == tenant_named)
            and (rule_named is None or rule.name == rule_named)
            and rule.audience in audiences
            and all(c.holds(verified.claims) for c in parse_conditions(rule.conditions))
        ]
        if not matching:
            where = f" of tenant {tenant_named!r}" if tenant_named else ""
            named = f" named {rule_named!r}" if rule_named else ""
            raise InvalidGrant(
                f"the token of {verified.issuer[:200]} (subject {verified.subject[:200]!r}) "
                f"meets the conditions of no trust rule{named}{where}; check the rule's "
                "audience and claim conditions against the token's claims.",
                field="subject_token",
            )
        tenants = sorted({name for _, name in matching})
        if len(tenants) > 1:
            raise InvalidTarget(
                f"trust rules of several tenants ({', '.join(tenants)}) accept this token; "
                "name one with audience=<tenant>.",
                field="audience",
            )
        if len(matching) > 1:
            names = sorted(rule.name for rule, _ in matching)
            raise InvalidTarget(
                f"trust rules {', '.join(names)} of tenant {tenants[0]} all accept this token; "
                f"name one with audience={tenants[0]}/<rule>.",
                field="audience",
            )
        return matching[0][0]

    def _issue(
        self,
        rule: m.TrustRule,
        verified: VerifiedJwt,
        scope: str | None,
        jkt: str | None,
        request: RequestContext,
    ) -> Exchanged:
        allowed = tuple(rule.scopes.split())
        if scope is None:
            wanted = allowed
        else:
            try:
                wanted = parse_scopes(scope.split())
            except InvalidRequest as error:
                raise TokenRequestScope(error.detail, field="scope") from None
            if "*" not in allowed and not set(wanted) <= set(allowed):
                raise TokenRequestScope(
                    f"scope {' '.join(sorted(set(wanted) - set(allowed)))!r} exceeds what "
                    f"trust rule {rule.name} grants ({' '.join(allowed)}); ask for less.",
                    field="scope",
                )
        with tenant_scope(rule.tenant_id):
            workload = self._workload(rule, jkt)
            try:
                decision = self._guard.check(
                    workload,
                    Action.TOKEN_EXCHANGE,
                    Resource("principal", workload.id, workload.tenant_id, owner_id=workload.id),
                    request,
                )
            except (Forbidden, AuthenticationError) as error:
                # A denial (recorded by the guard), or a step-up no workload can give.
                raise InvalidGrant(f"policy refuses the exchange: {error.detail}") from None
            with self._db.write(scope=tenant(rule.tenant_id)) as session:
                issued = self._tokens.issue(
                    session,
                    principal_id=workload.id,
                    tenant_id=workload.tenant_id,
                    scopes=wanted,
                    ttl_seconds=min(rule.ttl_seconds, self.max_ttl_seconds),
                    sign_in=SignIn(method="token-exchange", source=rule.id),
                    jkt=jkt,
                )
                record(
                    session,
                    Action.TOKEN_EXCHANGE,
                    actor=Actor.of(workload),
                    target=Target("token", issued.jti, workload.tenant_id),
                    decision=decision,
                    request=request,
                    reason=_describe(rule.id, verified) + (" dpop" if jkt else ""),
                )
        return Exchanged(issued, rule.id, "DPoP" if jkt else "Bearer")

    def _workload(self, rule: m.TrustRule, jkt: str | None) -> Principal:
        """The rule's principal, as the policy sees it deciding the exchange.

        Its ``scopes`` are ``token``: the external token is good for getting a
        Qustody token and nothing else."""
        with self._db.read() as session:
            row = session.get(m.Principal, rule.principal_id)
            tenant_roles, project_roles = roles_of(session.connection(), rule.principal_id)
        if row is None or row.tenant_id != rule.tenant_id or not row.active:
            raise InvalidGrant(
                f"trust rule {rule.name}'s principal is deactivated or gone; ask the tenant "
                "admin to fix the rule.",
            )
        return Principal(
            id=PrincipalId(row.id),
            tenant_id=TenantId(row.tenant_id),
            name=row.name,
            kind="workload" if row.kind == "workload" else "user",
            token_id=None,
            scopes=frozenset({"token"}),
            auth_method="token-exchange",
            tenant_roles=tenant_roles,
            project_roles=project_roles,
            dpop_jkt=jkt,
        )

    def _record_failure(
        self,
        error: OAuthError,
        verified: VerifiedJwt | None,
        rule: m.TrustRule | None,
        request: RequestContext,
    ) -> None:
        described = _describe(rule.id if rule else None, verified) if verified else "unverified"
        with self._db.write(scope=SYSTEM) as session:
            record(
                session,
                Action.TOKEN_EXCHANGE,
                actor=Actor("anonymous"),
                outcome="failure",
                target=Target("trustrule", rule.id, rule.tenant_id) if rule else None,
                request=request,
                # The refusal as this module worded it: issuer, subject, rule and
                # claim names at most, never the token.
                reason=f"{error.code}: {described}: {error.detail[:300]}",
            )


#: The one answer to a workload token no trust rule accepts, whatever the reason.
NOT_ACCEPTED = (
    "subject_token was not accepted: no trust rule accepts it. A rule of the tenant you name "
    "must trust its issuer ('iss') and audience ('aud'), its signature and lifetime must "
    "verify, and its claims must meet the rule's conditions; the gateway's audit log records "
    "which one failed (ask your tenant admin)."
)


def _describe(rule_id: str | None, verified: VerifiedJwt) -> str:
    rule = f"rule={rule_id} " if rule_id else ""
    return f"{rule}issuer={verified.issuer[:200]} subject={verified.subject[:150]}"


def _target(audience: str | None) -> tuple[str | None, str | None]:
    """``audience`` as (tenant name, rule name): ``<tenant>`` or ``<tenant>/<rule>``."""
    if audience is None:
        return None, None
    tenant_name, _, rule_name = audience.partition("/")
    if not _NAME.fullmatch(tenant_name) or (rule_name and not _NAME.fullmatch(rule_name)):
        raise InvalidTarget(
            f"audience {audience[:100]!r} is not '<tenant>' or '<tenant>/<trust rule>'.",
            field="audience",
        )
    return tenant_name, rule_name or None

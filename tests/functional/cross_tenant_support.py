"""The cross-tenant red team's table and its yardsticks.

For every id-bearing parameter of every route (path, query, body, header) the
table says which of tenant A's values tenant B's principals try in it and
what they must get back. A parameter that names no tenant object is in
:data:`NOT_TENANT_IDS`, with the reason. ``test_cross_tenant`` walks the
app's own route table and fails on any parameter in neither, so a route
added later cannot slip past the suite.

What "refused exactly like not-found" means here: B asks with A's value and
with a *twin*, a value of the same shape that exists nowhere (an id with the
same type prefix and timestamp, a name with the same letters-digits-dashes
pattern). The two answers must be the same in status, headers and body once
each value is replaced by a placeholder; the same holds for what B's own
audit log records about the two requests. A's value may then be anywhere in
A's data: B cannot tell it from nothing.
"""

from __future__ import annotations

import base64
import enum
import json
import re
import secrets
import string
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from joserfc import jwt
from joserfc.jwk import ECKey

ONE_QUBIT = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[1];\ncreg c[1];\nh q[0];\nmeasure q -> c;'


class Expect(enum.Enum):
    """What B must get for one of A's values."""

    #: A direct reference (a path id, a body field naming an object): answered
    #: like a nonexistent value (404, or the same 403 where B's role may not
    #: ask at all) and recorded in B's log as a denial.
    REFUSED = "refused"
    #: A list filter: the answer to a nonexistent value (an empty page, or
    #: the same refusal as :attr:`REFUSED`).
    FILTER = "filter"
    #: A pagination cursor: the page a nonexistent cursor at the same
    #: position gives (ids are time-ordered; log positions are global).
    POSITION = "position"
    #: A name in the caller's own namespace: B's request acts on B's object
    #: of that name (created if need be), exactly as for any other name, and
    #: A's object is untouched. Run last: B then owns objects with A's names.
    OWN = "own"


@dataclass(frozen=True, slots=True)
class Probe:
    """One parameter of one route, the kinds of A's values tried in it, and
    the rest of a request that reaches the lookup."""

    method: str
    path: str
    #: ``path:NAME``, ``query:NAME``, ``header:NAME`` or ``body:NAME`` (a
    #: path into the JSON body, ``/`` between keys; ``[]`` marks an array's items).
    param: str
    kinds: tuple[str, ...]
    expect: Expect
    query: Mapping[str, str] = field(default_factory=dict)
    body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Add ``until=<start of the campaign>`` so two searches of a growing log compare.
    until_start: bool = False
    #: Send the body form-encoded (OAuth's token endpoint), not as JSON.
    form: bool = False
    #: A public route (sign-in): no caller, so nothing of B's log to check; what
    #: it records belongs to the tenant signed in to, if any.
    public: bool = False

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.method, self.path, self.param)

    def request(self, value: str, *, until: str | None = None) -> dict[str, Any]:
        """Keyword arguments for :meth:`httpx.Client.request` carrying ``value``."""
        where, _, name = self.param.partition(":")
        url = self.path
        params = dict(self.query)
        headers = dict(self.headers)
        fresh = secrets.token_hex(4)  # names unique to this request, where the body asks
        body = (
            json.loads(json.dumps(self.body).replace("{fresh}", fresh))
            if self.body is not None
            else None
        )
        if self.until_start and until is not None:
            params["until"] = until
        if where == "path":
            url = url.replace("{" + name + "}", quote(value, safe=""))
        elif where == "query":
            params[name] = value
        elif where == "header":
            headers[name] = value
        elif where == "body":
            body = _put(body if body is not None else {}, name, value)
        else:
            raise AssertionError(f"unknown parameter location in {self.param}")
        assert "{" not in url, f"{self.path}: fill every other path parameter"
        if body is None:
            sent: dict[str, Any] = {}
        elif self.form:
            sent = {"data": body}
        else:
            sent = {"json": body}
        return {"method": self.method, "url": url, "params": params, "headers": headers, **sent}


def _put(body: Any, where: str, value: str) -> Any:
    """``body`` with ``value`` at ``where`` (``a/b``, ``a[]/b``: the first item)."""
    head, _, rest = where.partition("/")
    if head.endswith("[]"):
        items = body.setdefault(head[:-2], [{}])
        items[0] = _put(items[0], rest, value) if rest else value
    elif rest:
        body[head] = _put(body.get(head, {}), rest, value)
    else:
        body[head] = value
    return body


# -- the table ----------------------------------------------------------------------------

REFUSED, FILTER, POSITION, OWN = Expect
PROJECT = ("project_id", "project_name")
PRINCIPAL = ("principal_id", "principal_name")
#: A's trust rule trusts this issuer; nothing answers there (so no key set is fetched).
CI_ISSUER = "https://127.0.0.1:9/alpha-ci"
SCIM = "urn:ietf:params:scim:schemas:core:2.0:"
GRANT = "urn:qustody:params:scim:schemas:extension:2.0:Group"
SCIM_USER = {
    "schemas": [SCIM + "User"],
    "userName": "xt-user-{fresh}",
    "externalId": "xt-ext-{fresh}",
}
SCIM_DEACTIVATE = {
    "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
    "Operations": [{"op": "replace", "path": "active", "value": False}],
}
SCIM_GROUP = {
    "schemas": [SCIM + "Group", GRANT],
    "displayName": "xt-group-{fresh}",
    "externalId": "xt-ext-{fresh}",
    GRANT: {"role": "viewer", "project": "research"},
}
SCIM_GROUP_PATCH = {
    "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
    "Operations": [{"op": "replace", "path": "displayName", "value": "xt-renamed"}],
}
SCIM_SEARCH = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"]}


def workload_token(issuer: str = CI_ISSUER) -> str:
    """A CI job's token as A's trust rule would expect it, signed by a key of
    nobody's: the exchange can refuse it only after choosing a rule."""
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": "qustody",
        "sub": "repo:alpha/qec:ref:refs/heads/main",
        "repository": "alpha/qec",
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
    }
    header = {"alg": "ES256", "kid": "xt-probe", "typ": "JWT"}
    return jwt.encode(header, claims, ECKey.generate_key("P-256"))


WORKLOAD_TOKEN = workload_token()
TRUST_RULE = {
    "issuer": CI_ISSUER,
    "audience": "qustody",
    "conditions": {"repository": "alpha/qec"},
    "scopes": ["job"],
}

QUOTA = {"metric": "queued_jobs", "limit": 1}
JUSTIFIED = {"reason": "a red-team probe of approvals", "ticket": "XT-1"}
APPROVAL_ASK = {"action": "result:read", **JUSTIFIED}
ELEVATION_ASK = {"role": "viewer", "duration_seconds": 600, **JUSTIFIED}
BUDGET = {"period": "day", "limit": 1}
ESTIMATE = {"backend": "aer-statevector", "shots": 8, "qasm": ONE_QUBIT}

PROBES: list[Probe] = [
    # jobs
    Probe(
        "POST",
        "/v1/jobs",
        "body:project",
        PROJECT,
        REFUSED,
        body={"backend": "aer-statevector", "shots": 8, "qasm": ONE_QUBIT},
    ),
    Probe("GET", "/v1/jobs", "query:project", PROJECT, FILTER),
    Probe("GET", "/v1/jobs", "query:cursor", ("job_id",), POSITION),
    Probe("GET", "/v1/jobs/{job_id}", "path:job_id", ("job_id",), REFUSED),
    Probe("GET", "/v1/jobs/{job_id}", "path:job_id", ("job_id",), REFUSED, query={"wait": "1"}),
    Probe("POST", "/v1/jobs/{job_id}/cancel", "path:job_id", ("job_id",), REFUSED),
    Probe("GET", "/v1/jobs/{job_id}/result", "path:job_id", ("job_id",), REFUSED),
    Probe(
        "POST",
        "/v1/jobs",
        "body:session",
        ("session_id",),
        REFUSED,
        body={"project": "research", "backend": "aer-statevector", "shots": 8, "qasm": ONE_QUBIT},
    ),
    # usage, quotas, budgets and estimates
    Probe("GET", "/v1/usage", "query:project", PROJECT, FILTER),
    Probe("PUT", "/v1/quotas", "body:project", PROJECT, REFUSED, body=QUOTA),
    Probe("PUT", "/v1/quotas", "body:tenant", ("tenant_id",), REFUSED, body=QUOTA),
    Probe("PUT", "/v1/budgets", "body:project", PROJECT, REFUSED, body=BUDGET),
    Probe("POST", "/v1/jobs:estimate", "body:project", PROJECT, REFUSED, body=ESTIMATE),
    Probe(
        "POST",
        "/v1/jobs:estimate",
        "body:session",
        ("session_id",),
        REFUSED,
        body={"project": "research", **ESTIMATE},
    ),
    # scheduling: sessions and reservations
    Probe("GET", "/v1/sessions/{session_id}", "path:session_id", ("session_id",), REFUSED),
    Probe("POST", "/v1/sessions/{session_id}/close", "path:session_id", ("session_id",), REFUSED),
    Probe(
        "POST",
        "/v1/reservations/{reservation_id}/cancel",
        "path:reservation_id",
        ("reservation_id",),
        REFUSED,
    ),
    Probe(
        "GET",
        "/v1/jobs/{job_id}/result",
        "path:job_id",
        ("job_id",),
        REFUSED,
        query={"sealed": "true"},
    ),
    # tenants, projects, members, tokens
    Probe("GET", "/v1/tenants/{tenant_id}", "path:tenant_id", ("tenant_id",), REFUSED),
    Probe(
        "POST",
        "/v1/tenants",
        "body:name",
        ("tenant_name",),
        REFUSED,
        body={"admin_name": "xt-boss"},
    ),
    Probe(
        "POST",
        "/v1/tenants",
        "body:admin_name",
        ("principal_name",),
        REFUSED,
        body={"name": "xt-new"},
    ),
    Probe("GET", "/v1/projects/{project}", "path:project", PROJECT, REFUSED),
    Probe(
        "POST", "/v1/projects", "body:name", ("project_name",), OWN, body={"data_class": "public"}
    ),
    Probe(
        "POST",
        "/v1/members",
        "body:project",
        PROJECT,
        REFUSED,
        body={"principal": "xt-probe-user", "role": "viewer"},
    ),
    Probe(
        "POST",
        "/v1/members",
        "body:principal",
        ("principal_name",),
        OWN,
        body={"role": "viewer", "project": "research"},
    ),
    Probe("GET", "/v1/members", "query:project", PROJECT, FILTER),
    Probe(
        "POST",
        "/v1/tokens",
        "body:principal",
        ("principal_name",),
        REFUSED,
        body={"ttl_seconds": 60},
    ),
    Probe("DELETE", "/v1/tokens/{jti}", "path:jti", ("jti",), REFUSED),
    # keys, the secrets vault
    Probe("POST", "/v1/keys/rotate", "body:project_id", ("project_id",), REFUSED, body={}),
    Probe("DELETE", "/v1/secrets/{name}", "path:name", ("secret_name",), REFUSED),
    Probe("PUT", "/v1/secrets/{name}", "path:name", ("secret_name",), OWN, body={"value": "b-own"}),
    # API keys, trust rules, revocation
    Probe(
        "POST",
        "/v1/api-keys",
        "body:principal",
        ("principal_name",),
        REFUSED,
        body={"name": "xt-probe-key", "expires_in_days": 7},
    ),
    Probe(
        "POST",
        "/v1/api-keys",
        "body:name",
        ("apikey_name",),
        OWN,
        body={"principal": "bravo-ci-bot", "expires_in_days": 7},
    ),
    Probe("GET", "/v1/api-keys", "query:principal", ("principal_name",), FILTER),
    Probe("DELETE", "/v1/api-keys/{key_id}", "path:key_id", ("apikey_id",), REFUSED),
    # webhook endpoints
    Probe("DELETE", "/v1/webhooks/{webhook_id}", "path:webhook_id", ("webhook_id",), REFUSED),
    Probe(
        "GET",
        "/v1/webhooks/{webhook_id}/deliveries",
        "path:webhook_id",
        ("webhook_id",),
        REFUSED,
    ),
    Probe("POST", "/v1/webhooks/{webhook_id}/test", "path:webhook_id", ("webhook_id",), REFUSED),
    # approvals, elevations, break-glass
    Probe("GET", "/v1/approvals/{approval_id}", "path:approval_id", ("approval_id",), REFUSED),
    *(
        Probe(
            "POST",
            f"/v1/approvals/{{approval_id}}:{verb}",
            "path:approval_id",
            ("approval_id",),
            REFUSED,
            body={"comment": "probe"} if verb != "cancel" else None,
        )
        for verb in ("approve", "deny", "cancel")
    ),
    Probe("POST", "/v1/approvals", "body:resource", ("job_id",), REFUSED, body=APPROVAL_ASK),
    Probe("POST", "/v1/elevations", "body:project", PROJECT, REFUSED, body=ELEVATION_ASK),
    Probe("POST", "/v1/elevations/{grant_id}:revoke", "path:grant_id", ("grant_id",), REFUSED),
    Probe(
        "POST",
        "/v1/breakglass/{grant_id}:review",
        "path:grant_id",
        ("grant_id",),
        REFUSED,
        body={"notes": "probe"},
    ),
    Probe(
        "POST",
        "/v1/trust-rules",
        "body:principal",
        ("principal_name",),
        REFUSED,
        body={"name": "xt-probe-rule", **TRUST_RULE},
    ),
    Probe(
        "POST",
        "/v1/trust-rules",
        "body:name",
        ("trustrule_name",),
        OWN,
        body={"principal": "bravo-ci-bot", **TRUST_RULE},
    ),
    Probe(
        "DELETE", "/v1/trust-rules/{rule}", "path:rule", ("trustrule_id", "trustrule_name"), REFUSED
    ),
    Probe("POST", "/v1/tokens:revoke", "body:principal", ("principal_name",), REFUSED, body={}),
    # local accounts
    *(
        Probe(method, path, "path:principal", PRINCIPAL, REFUSED, body=body)
        for method, path, body in (
            ("PUT", "/v1/principals/{principal}/password", {"password": "bravo-horse-battery"}),
            ("POST", "/v1/principals/{principal}/totp", None),
            ("POST", "/v1/principals/{principal}/totp/confirm", {"code": "123456"}),
        )
    ),
    # sign-in: anyone may try; a wrong password must not tell a real account from none
    Probe(
        "POST",
        "/v1/auth/local",
        "body:tenant",
        ("tenant_name",),
        REFUSED,
        body={"username": "acme-dev", "password": "not-the-password-0451"},
        public=True,
    ),
    Probe(
        "POST",
        "/v1/auth/local",
        "body:username",
        ("principal_name",),
        REFUSED,
        body={"tenant": "acme", "password": "not-the-password-0451"},
        public=True,
    ),
    Probe(
        "POST",
        "/v1/auth/token",
        "body:audience",
        ("exchange_audience",),
        REFUSED,
        body={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "subject_token": WORKLOAD_TOKEN,
        },
        form=True,
        public=True,
    ),
    # ... nor whether any tenant trusts the token's issuer
    Probe(
        "POST",
        "/v1/auth/token",
        "body:subject_token",
        ("workload_token",),
        REFUSED,
        body={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        },
        form=True,
        public=True,
    ),
    # tenant policies
    Probe("GET", "/v1/policies/versions/{version}", "path:version", ("policy_version",), REFUSED),
    Probe("GET", "/v1/policies/diff", "query:from", ("policy_version",), FILTER),
    Probe("GET", "/v1/policies/diff", "query:to", ("policy_version",), FILTER, query={"from": "0"}),
    # A forbid of B's that names A's principal must bind nobody of A's (A's
    # requests after the campaign check it).
    Probe("PUT", "/v1/policies", "body:text", ("forbid_text",), OWN, body={"comment": "red team"}),
    # SCIM (RFC 7644), mounted at /scim/v2: users are principals, ids are theirs
    *(
        Probe(
            method, "/scim/v2/Users/{user_id}", "path:user_id", ("principal_id",), REFUSED, body=b
        )
        for method, b in (
            ("GET", None),
            ("PUT", SCIM_USER),
            ("PATCH", SCIM_DEACTIVATE),
            ("DELETE", None),
        )
    ),
    *(
        Probe(method, "/scim/v2/Groups/{group_id}", "path:group_id", ("group_id",), REFUSED, body=b)
        for method, b in (
            ("GET", None),
            ("PUT", SCIM_GROUP),
            ("PATCH", SCIM_GROUP_PATCH),
            ("DELETE", None),
        )
    ),
    Probe("POST", "/scim/v2/Users", "body:userName", ("principal_name",), OWN, body=SCIM_USER),
    Probe("POST", "/scim/v2/Users", "body:externalId", ("external_id",), OWN, body=SCIM_USER),
    Probe("POST", "/scim/v2/Groups", "body:displayName", ("group_name",), OWN, body=SCIM_GROUP),
    Probe("POST", "/scim/v2/Groups", "body:externalId", ("external_id",), OWN, body=SCIM_GROUP),
    # Another tenant's user in one's own group, another tenant's project in its grant.
    Probe(
        "POST",
        "/scim/v2/Groups",
        "body:members[]/value",
        ("principal_id",),
        REFUSED,
        body=SCIM_GROUP,
    ),
    Probe("POST", "/scim/v2/Groups", f"body:{GRANT}/project", PROJECT, REFUSED, body=SCIM_GROUP),
    *(
        Probe("GET", path, "query:filter", (kind,), FILTER)
        for path, kind in (("/scim/v2/Users", "user_filter"), ("/scim/v2/Groups", "group_filter"))
    ),
    *(
        Probe("POST", path, "body:filter", (kind,), FILTER, body=SCIM_SEARCH)
        for path, kind in (
            ("/scim/v2/Users/.search", "user_filter"),
            ("/scim/v2/Groups/.search", "group_filter"),
        )
    ),
    # the audit log
    Probe("GET", "/v1/audit/events", "query:actor", ("actor_id",), FILTER, until_start=True),
    Probe(
        "GET", "/v1/audit/events", "query:resource_id", ("resource_id",), FILTER, until_start=True
    ),
    Probe("GET", "/v1/audit/events", "query:job", ("job_id",), FILTER, until_start=True),
    Probe(
        "GET", "/v1/audit/events", "query:after", ("audit_position",), POSITION, until_start=True
    ),
    Probe("GET", "/v1/audit/events/{seq}", "path:seq", ("audit_seq",), REFUSED),
]

_VOCABULARY = "a value of a fixed vocabulary, the same for every tenant"
_PLATFORM_BACKEND = "a backend name: backends are the platform's, shared by every tenant"
_TIME = "a time bound"
_PAGE_SIZE = "a page size"
_FLAG = "a flag"

#: Parameters that name no tenant's object, and why.
NOT_TENANT_IDS: dict[tuple[str, str, str], str] = {
    ("POST", "/v1/jobs", "body:backend"): _PLATFORM_BACKEND,
    ("POST", "/v1/jobs", "body:shots"): "a count",
    ("POST", "/v1/jobs", "body:qasm"): "the circuit the caller submits",
    ("POST", "/v1/jobs", "body:memory"): _FLAG,
    ("POST", "/v1/jobs", "body:seed"): "a simulator seed",
    ("POST", "/v1/jobs", "body:name"): "the new job's own display name, sealed with it, "
    "never looked up",
    ("POST", "/v1/jobs", "body:labels"): "the new job's own labels, sealed with it",
    ("GET", "/v1/jobs", "query:state"): _VOCABULARY + " (job states)",
    ("GET", "/v1/jobs", "query:backend"): _PLATFORM_BACKEND,
    ("GET", "/v1/jobs", "query:limit"): _PAGE_SIZE,
    ("GET", "/v1/jobs/{job_id}", "query:wait"): "seconds to wait for the job to finish",
    ("GET", "/v1/jobs/{job_id}/result", "query:sealed"): _FLAG,
    ("GET", "/v1/backends/{name}", "path:name"): _PLATFORM_BACKEND,
    ("POST", "/v1/jobs", "body:priority"): "a number from 0 to 9, ordering the caller's own jobs",
    ("POST", "/v1/backends/{name}/pause", "path:name"): _PLATFORM_BACKEND,
    ("POST", "/v1/backends/{name}/pause", "body:reason"): "free text the operator gives",
    ("POST", "/v1/backends/{name}/resume", "path:name"): _PLATFORM_BACKEND,
    ("PUT", "/v1/backends/{name}/concurrency", "path:name"): _PLATFORM_BACKEND,
    ("PUT", "/v1/backends/{name}/concurrency", "body:max_running"): "a count",
    ("POST", "/v1/backends/{name}/maintenance", "path:name"): _PLATFORM_BACKEND,
    ("POST", "/v1/backends/{name}/maintenance", "body:starts_at"): _TIME,
    ("POST", "/v1/backends/{name}/maintenance", "body:ends_at"): _TIME,
    ("POST", "/v1/backends/{name}/maintenance", "body:reason"): "free text the operator gives",
    ("GET", "/v1/backends/{name}/maintenance", "path:name"): _PLATFORM_BACKEND,
    ("POST", "/v1/backends/{name}/maintenance/{window_id}/cancel", "path:name"): _PLATFORM_BACKEND,
    ("POST", "/v1/backends/{name}/maintenance/{window_id}/cancel", "path:window_id"): "a "
    "maintenance window: the platform's, on a shared backend, declared by platform admins",
    ("GET", "/v1/backends/{name}/queue", "path:name"): _PLATFORM_BACKEND + "; the answer "
    "lists the caller's own tenant's jobs only",
    ("POST", "/v1/reservations", "body:backend"): _PLATFORM_BACKEND,
    ("POST", "/v1/reservations", "body:starts_at"): _TIME,
    ("POST", "/v1/reservations", "body:ends_at"): _TIME,
    ("POST", "/v1/reservations", "body:reason"): "free text kept with the caller's reservation",
    ("POST", "/v1/sessions", "body:backend"): _PLATFORM_BACKEND,
    ("POST", "/v1/sessions", "body:max_ttl_seconds"): "a lifetime",
    ("POST", "/v1/projects", "body:data_class"): _VOCABULARY + " (data classes)",
    ("POST", "/v1/members", "body:role"): _VOCABULARY + " (roles)",
    ("POST", "/v1/members", "body:kind"): _VOCABULARY + " (principal kinds)",
    ("POST", "/v1/tokens", "body:scopes"): _VOCABULARY + " (token scopes)",
    ("POST", "/v1/tokens", "body:ttl_seconds"): "a lifetime",
    ("PUT", "/v1/secrets/{name}", "body:value"): "the secret's value, write-only",
    ("PUT", "/v1/export-key", "body:public_key"): "public key material the caller brings; "
    "a tenant may register any public key, another's included, and only seals its own "
    "exports to it",
    ("GET", "/v1/audit/events", "query:action"): _VOCABULARY + " (actions)",
    ("GET", "/v1/audit/events", "query:resource_type"): _VOCABULARY + " (resource types)",
    ("GET", "/v1/audit/events", "query:since"): _TIME,
    ("GET", "/v1/audit/events", "query:until"): _TIME,
    ("GET", "/v1/audit/events", "query:decision"): _VOCABULARY + " (allow, deny)",
    ("GET", "/v1/audit/events", "query:outcome"): _VOCABULARY + " (outcomes)",
    ("GET", "/v1/audit/events", "query:limit"): _PAGE_SIZE,
    ("GET", "/v1/audit/events/{seq}", "query:size"): "the size of a signed checkpoint; "
    "checkpoints are public and cover the whole platform's log",
    ("GET", "/v1/audit/export", "query:scope"): _VOCABULARY + " (tenant, platform)",
    ("GET", "/v1/audit/export", "query:format"): _VOCABULARY + " (export formats)",
    ("GET", "/v1/audit/export", "query:sealed"): _FLAG,
    ("GET", "/v1/audit/proofs/consistency", "query:from"): "a public tree size (no account)",
    ("GET", "/v1/audit/proofs/consistency", "query:to"): "a public tree size (no account)",
    ("POST", "/v1/api-keys", "body:scopes"): _VOCABULARY + " (token scopes)",
    ("POST", "/v1/api-keys", "body:expires_in_days"): "a lifetime",
    (
        "POST",
        "/v1/trust-rules",
        "body:issuer",
    ): "an external issuer (a CI's), not a tenant's object",
    ("POST", "/v1/trust-rules", "body:audience"): "the audience the external token carries",
    ("POST", "/v1/trust-rules", "body:conditions"): "claims of the external token to match",
    ("POST", "/v1/trust-rules", "body:scopes"): _VOCABULARY + " (token scopes)",
    ("POST", "/v1/trust-rules", "body:ttl_seconds"): "a lifetime",
    ("POST", "/v1/tokens:revoke", "body:issued_before"): "a time; the cut-off is the caller's "
    "tenant's (the campaign ends with B cutting off all its tokens; A's keep working)",
    ("PUT", "/v1/principals/{principal}/password", "body:password"): "the new password",
    ("POST", "/v1/principals/{principal}/totp/confirm", "body:code"): "a one-time code",
    ("POST", "/v1/auth/local", "body:password"): "the password tried",
    ("POST", "/v1/auth/local", "body:totp"): "a one-time code",
    ("PUT", "/v1/policies", "body:base_version"): "the caller's own tenant's version counter "
    "(409 unless its newest)",
    ("PUT", "/v1/policies", "body:comment"): "free text kept with the caller's new version",
    ("GET", "/v1/auth/login/{provider}", "path:provider"): "an identity provider the platform "
    "operator configured, shared by the tenants it maps",
    ("GET", "/v1/auth/callback", "query:state"): "a sign-in attempt's one-time handle, usable "
    "only from the browser holding its cookie; it names no tenant's object",
    ("GET", "/v1/auth/callback", "query:code"): "the identity provider's one-time code, "
    "redeemed only with its attempt's PKCE verifier",
    ("GET", "/v1/auth/callback", "query:error"): "the identity provider's error code",
    ("GET", "/v1/auth/callback", "query:iss"): "the identity provider's issuer",
    ("POST", "/v1/auth/token", "body:grant_type"): _VOCABULARY + " (OAuth grant types)",
    ("POST", "/v1/auth/token", "body:subject_token_type"): _VOCABULARY + " (token types)",
    ("POST", "/v1/auth/token", "body:requested_token_type"): _VOCABULARY + " (token types)",
    ("POST", "/v1/auth/token", "body:scope"): _VOCABULARY + " (token scopes)",
    ("POST", "/v1/auth/token", "body:resource"): "this gateway's own URL (anything else is "
    "refused)",
}

#: Parameters the OpenAPI documents leave out (a handler reads them itself), by route.
UNDOCUMENTED: dict[tuple[str, str], tuple[str, ...]] = {
    (method, f"/scim/v2/{kind}"): (
        "query:filter",
        "query:startIndex",
        "query:count",
        "query:sortBy",
        "query:sortOrder",
        "query:attributes",
        "query:excludedAttributes",
    )
    for method in ("GET",)
    for kind in ("Users", "Groups")
}
_SEARCH_FIELDS = tuple(
    f"body:{name}"
    for name in (
        "schemas",
        "filter",
        "startIndex",
        "count",
        "sortBy",
        "sortOrder",
        "attributes",
        "excludedAttributes",
    )
)
_USER_FIELDS = (
    "body:schemas",
    "body:userName",
    "body:externalId",
    "body:displayName",
    "body:active",
    "body:emails",
    "body:name",
)
_GROUP_FIELDS = (
    "body:schemas",
    "body:displayName",
    "body:externalId",
    "body:members[]/value",
    f"body:{GRANT}/role",
    f"body:{GRANT}/project",
)
#: Bodies the documents call free-form (``body:*``), with the fields their
#: handlers read: each field needs a probe or a reason like any parameter.
OPAQUE_BODIES: dict[tuple[str, str], tuple[str, ...]] = {
    ("POST", "/scim/v2/Users"): _USER_FIELDS,
    ("PUT", "/scim/v2/Users/{user_id}"): _USER_FIELDS,
    ("PATCH", "/scim/v2/Users/{user_id}"): ("body:schemas", "body:Operations"),
    ("POST", "/scim/v2/Groups"): _GROUP_FIELDS,
    ("PUT", "/scim/v2/Groups/{group_id}"): _GROUP_FIELDS,
    ("PATCH", "/scim/v2/Groups/{group_id}"): ("body:schemas", "body:Operations"),
    ("POST", "/scim/v2/Users/.search"): _SEARCH_FIELDS,
    ("POST", "/scim/v2/Groups/.search"): _SEARCH_FIELDS,
}

_NO_BODY = "the handler reads no body"
_SCIM_VOCABULARY = "a SCIM name from the protocol's fixed vocabulary"
_PROJECTION = "attribute names to return (SCIM's vocabulary)"
_ETAG = "a version tag, compared only with the caller's own resource's"
#: Parameters that name no tenant's object wherever they occur under a path prefix.
NOT_TENANT_IDS_UNDER: dict[tuple[str, str], str] = {
    ("/scim/v2/", param): why
    for where in ("query", "body")
    for param, why in (
        (f"{where}:attributes", _PROJECTION),
        (f"{where}:excludedAttributes", _PROJECTION),
        (f"{where}:startIndex", "a position in the caller's own result set"),
        (f"{where}:count", _PAGE_SIZE),
        (f"{where}:sortBy", _PROJECTION),
        (f"{where}:sortOrder", _VOCABULARY + " (ascending, descending)"),
        ("body:schemas", _SCIM_VOCABULARY),
        ("header:If-Match", _ETAG),
        ("header:If-None-Match", _ETAG),
        ("body:displayName", "the display name the caller gives its own user"),
        ("body:active", _FLAG),
        ("body:emails", "the caller's own user's e-mail addresses"),
        ("body:name", "the caller's own user's name parts"),
        (f"body:{GRANT}/role", _VOCABULARY + " (roles)"),
    )
}
NOT_TENANT_IDS |= {
    ("GET", "/scim/v2/ResourceTypes/{name}", "path:name"): _SCIM_VOCABULARY,
    ("GET", "/scim/v2/Schemas/{urn}", "path:urn"): _SCIM_VOCABULARY,
    ("POST", "/scim/v2/Bulk", "body:*"): "not supported: refused before any body is read",
    ("POST", "/scim/v2/.search", "body:*"): "not supported: refused before any body is read",
    # A patch's operations: tried on another tenant's user and group by id
    # (the path probes); values naming other ids are the POST probes' fields.
    ("PATCH", "/scim/v2/Users/{user_id}", "body:Operations"): "operations on the user the "
    "path names (probed there)",
    ("PATCH", "/scim/v2/Groups/{group_id}", "body:Operations"): "operations on the group the "
    "path names (probed there; member ids as in POST /scim/v2/Groups)",
    ("PUT", "/scim/v2/Users/{user_id}", "body:userName"): "the caller's own user's new name "
    "(as in POST /scim/v2/Users)",
    ("PUT", "/scim/v2/Users/{user_id}", "body:externalId"): "as in POST /scim/v2/Users",
    ("PUT", "/scim/v2/Groups/{group_id}", "body:displayName"): "as in POST /scim/v2/Groups",
    ("PUT", "/scim/v2/Groups/{group_id}", "body:externalId"): "as in POST /scim/v2/Groups",
    ("PUT", "/scim/v2/Groups/{group_id}", "body:members[]/value"): "as in POST /scim/v2/Groups",
    ("PUT", "/scim/v2/Groups/{group_id}", f"body:{GRANT}/project"): "as in POST /scim/v2/Groups",
    ("POST", "/v1/jobs/{job_id}/cancel", "body:*"): _NO_BODY,
    ("POST", "/v1/backends/{name}/resume", "body:*"): _NO_BODY,
    ("POST", "/v1/backends/{name}/maintenance/{window_id}/cancel", "body:*"): _NO_BODY,
    ("POST", "/v1/reservations/{reservation_id}/cancel", "body:*"): _NO_BODY,
    ("POST", "/v1/sessions/{session_id}/close", "body:*"): _NO_BODY,
    ("POST", "/v1/audit/checkpoint", "body:*"): _NO_BODY,
    ("POST", "/v1/principals/{principal}/totp", "body:*"): _NO_BODY,
}

_AMOUNT = "an amount of money (micro-units)"
NOT_TENANT_IDS |= {
    ("GET", "/v1/usage", "query:backend"): _PLATFORM_BACKEND,
    ("PUT", "/v1/quotas", "body:metric"): _VOCABULARY + " (quota metrics)",
    ("PUT", "/v1/quotas", "body:limit"): "a count",
    ("PUT", "/v1/quotas", "body:backend"): _PLATFORM_BACKEND,
    ("PUT", "/v1/budgets", "body:period"): _VOCABULARY + " (periods)",
    ("PUT", "/v1/budgets", "body:limit"): _AMOUNT,
    ("PUT", "/v1/budgets", "body:thresholds"): "percentages",
    ("PUT", "/v1/budgets", "body:backend"): _PLATFORM_BACKEND,
    ("GET", "/v1/backends/{name}/price", "path:name"): _PLATFORM_BACKEND,
    ("PUT", "/v1/backends/{name}/price", "path:name"): _PLATFORM_BACKEND,
    ("PUT", "/v1/backends/{name}/price", "body:per_task"): _AMOUNT,
    ("PUT", "/v1/backends/{name}/price", "body:per_shot"): _AMOUNT,
    ("PUT", "/v1/backends/{name}/price", "body:per_second"): _AMOUNT,
    ("PUT", "/v1/backends/{name}/price", "body:seconds_per_shot"): "a duration",
    ("PUT", "/v1/backends/{name}/price", "body:overhead_seconds"): "a duration",
    ("PUT", "/v1/backends/{name}/price", "body:effective_at"): _TIME,
}

NOT_TENANT_IDS |= {
    ("POST", "/v1/webhooks", "body:url"): "the receiver's address the caller gives",
    ("POST", "/v1/webhooks", "body:kinds"): "alert kind patterns (budget.*)",
    ("POST", "/v1/webhooks", "body:description"): "free text of the caller's own endpoint",
    ("GET", "/v1/webhooks/{webhook_id}/deliveries", "query:limit"): _PAGE_SIZE,
    ("POST", "/v1/webhooks/{webhook_id}/test", "body:*"): _NO_BODY,
}

_JUSTIFICATION = "free text the caller gives its own request (why, and the ticket's id)"
NOT_TENANT_IDS |= {
    ("POST", "/v1/jobs", "body:approval"): _JUSTIFICATION,
    ("POST", "/v1/approvals", "body:action"): _VOCABULARY + " (actions)",
    ("POST", "/v1/approvals", "body:reason"): _JUSTIFICATION,
    ("POST", "/v1/approvals", "body:ticket"): _JUSTIFICATION,
    ("GET", "/v1/approvals", "query:state"): _VOCABULARY + " (approval states)",
    ("GET", "/v1/approvals", "query:mine"): _FLAG,
    ("GET", "/v1/approvals", "query:to-approve"): _FLAG,
    ("GET", "/v1/approvals", "query:limit"): _PAGE_SIZE,
    ("POST", "/v1/approvals/{approval_id}:approve", "body:comment"): "free text of the vote",
    ("POST", "/v1/approvals/{approval_id}:deny", "body:comment"): "free text of the vote",
    ("POST", "/v1/approvals/{approval_id}:cancel", "body:*"): _NO_BODY,
    ("POST", "/v1/elevations", "body:role"): _VOCABULARY + " (roles)",
    ("POST", "/v1/elevations", "body:duration_seconds"): "a lifetime",
    ("POST", "/v1/elevations", "body:reason"): _JUSTIFICATION,
    ("POST", "/v1/elevations", "body:ticket"): _JUSTIFICATION,
    ("GET", "/v1/elevations", "query:active"): _FLAG,
    ("GET", "/v1/elevations", "query:mine"): _FLAG,
    ("POST", "/v1/elevations/{grant_id}:revoke", "body:*"): _NO_BODY,
    ("POST", "/v1/breakglass", "body:reason"): _JUSTIFICATION,
    ("POST", "/v1/breakglass", "body:ticket"): _JUSTIFICATION,
    ("POST", "/v1/breakglass", "body:role"): _VOCABULARY + " (roles)",
    ("POST", "/v1/breakglass", "body:duration_seconds"): "a lifetime",
    ("GET", "/v1/breakglass", "query:unreviewed"): _FLAG,
    ("POST", "/v1/breakglass/{grant_id}:review", "body:notes"): "free text of the review",
}


# An estimate's body is a submission's: its fields name what they name there
# (after every entry above, so fields added to submissions count here too).
NOT_TENANT_IDS |= {
    ("POST", "/v1/jobs:estimate", param): why
    for (method, path, param), why in list(NOT_TENANT_IDS.items())
    if (method, path) == ("POST", "/v1/jobs") and param.startswith("body:")
}


# -- the route table ---------------------------------------------------------------------


def parameters(openapi: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """Every (method, path, parameter) of an OpenAPI document (of an app mounted
    at ``prefix``), body fields included. A body whose fields the document
    does not say (a free-form object, or a POST/PUT/PATCH with no body
    described) is ``body:*``: an entry must say which of its fields name ids."""
    schemas = openapi.get("components", {}).get("schemas", {})
    for bare, operations in openapi["paths"].items():
        path = prefix + bare
        for method, operation in operations.items():
            if method.startswith("x-") or method == "parameters":
                continue
            verb = method.upper()
            for parameter in (*operations.get("parameters", ()), *operation.get("parameters", ())):
                yield verb, path, f"{parameter['in']}:{parameter['name']}"
            content = operation.get("requestBody", {}).get("content", {})
            if not content and verb in ("POST", "PUT", "PATCH"):
                yield verb, path, "body:*"
            for media in content.values():
                schema = _resolve(media.get("schema", {}), schemas)
                if not any(k in schema for k in ("properties", "anyOf", "oneOf", "allOf")):
                    yield verb, path, "body:*"
                for name in _fields(schema, schemas, ""):
                    yield verb, path, f"body:{name}"


def _fields(schema: Mapping[str, Any], schemas: Mapping[str, Any], prefix: str) -> Iterator[str]:
    schema = _resolve(schema, schemas)
    for option in (*schema.get("anyOf", ()), *schema.get("oneOf", ()), *schema.get("allOf", ())):
        yield from _fields(option, schemas, prefix)
    for name, sub in schema.get("properties", {}).items():
        here = f"{prefix}{name}"
        yield here
        sub = _resolve(sub, schemas)
        yield from _fields(sub, schemas, here + "/")
        items = _resolve(sub.get("items", {}), schemas)
        if items.get("properties") or items.get("anyOf") or items.get("oneOf"):
            yield from _fields(items, schemas, here + "[]/")


def _resolve(schema: Mapping[str, Any], schemas: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in schema:
        schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def covered(param: tuple[str, str, str], probed: set[tuple[str, str, str]]) -> bool:
    """Probed or allowed, itself or through a parent body field (``a`` covers ``a/b``)."""
    method, path, name = param
    if name == "body:*" and (method, path) in OPAQUE_BODIES:
        return True  # its fields are parameters of their own
    while True:
        if (method, path, name) in probed or (method, path, name) in NOT_TENANT_IDS:
            return True
        if any(path.startswith(p) and name == n for p, n in NOT_TENANT_IDS_UNDER):
            return True
        if "/" not in name:
            return False
        name = name.rsplit("/", 1)[0].removesuffix("[]")


# -- twins: nonexistent values of the same shape -------------------------------------------

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ULID = re.compile(r"^([a-z]{2,4}_[0-9A-HJKMNP-TV-Z]{10})([0-9A-HJKMNP-TV-Z]{16})$")
_QUOTED = re.compile(r'"([^"]*)"')


def twin(kind: str, value: str, taken: set[int]) -> str:
    """A value of ``value``'s shape that names nothing (for ``audit_position``:
    a neighbouring log position that none of B's events hold, from ``taken``)."""
    if kind == "audit_seq":
        return str(10**9 + secrets.randbelow(10**9))
    if kind == "audit_position":
        seq = int(value)
        for neighbour in (seq - 1, seq + 1):
            if neighbour >= 0 and neighbour not in taken and seq not in taken:
                return str(neighbour)
        raise AssertionError(f"log position {seq} has B's events on both sides")
    if kind == "workload_token":  # the same token from an issuer no tenant trusts
        base, _, path = CI_ISSUER.rpartition("/")
        return workload_token(f"{base}/{twin('name', path, taken)}")
    if kind == "policy_version":  # a version no tenant has reached
        return str(10**6 + secrets.randbelow(10**6))
    if kind.endswith(("_text", "_filter")):  # the same text naming twins
        return _QUOTED.sub(lambda m: '"' + twin("quoted", m.group(1), taken) + '"', value)
    if kind == "jti":
        return secrets.token_urlsafe(len(value) * 3 // 4)[: len(value)]
    match = _ULID.fullmatch(value)
    if match:  # same type, same timestamp: sorts where A's value does
        return match.group(1) + "".join(secrets.choice(_CROCKFORD) for _ in range(16))
    return "".join(_like(c) for c in value)


def _like(c: str) -> str:
    for alphabet in (string.ascii_lowercase, string.ascii_uppercase, string.digits):
        if c in alphabet:
            return secrets.choice(alphabet)
    return c


# -- answers and how they compare ---------------------------------------------------------

PLACEHOLDER = "<probe>"
#: Headers that differ between any two requests.
VOLATILE_HEADERS = {"date", "x-request-id", "content-length"}
#: Body fields that differ between any two requests: request ids; and in audit
#: pages the latest checkpoint and the proofs under it (signed in the background).
VOLATILE_FIELDS = {"request_id", "checkpoint", "proof", "leaf"}


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    content: bytes
    request_id: str

    @classmethod
    def of(cls, response: httpx.Response) -> Answer:
        headers = {k.lower(): v for k, v in response.headers.items()}
        return cls(response.status_code, headers, response.content, headers["x-request-id"])

    def json(self) -> Any:
        try:
            return json.loads(self.content)
        except ValueError:
            return None

    @property
    def code(self) -> str | None:
        body = self.json()
        return body.get("code") if isinstance(body, dict) else None


def _occurrences(value: str) -> re.Pattern[str]:
    """``value`` standing alone: not inside a longer id, nor (a number) inside a
    time or another number."""
    edge = "0-9A-Za-z:.+-" if value.isdigit() else "0-9A-Za-z"
    return re.compile(rf"(?<![{edge}]){re.escape(value)}(?![{edge}])")


#: A value tried, or the value and what answers may quote of it (see :func:`echoes`).
Values = str | tuple[str, ...]


def _substitute(text: str, values: Values) -> str:
    for n, value in enumerate((values,) if isinstance(values, str) else values):
        text = _occurrences(value).sub(PLACEHOLDER if n == 0 else f"<probe-{n}>", text)
    return text


def echoes(kind: str, value: str) -> tuple[str, ...]:
    """``value`` and what an answer may quote of it: a workload token's issuer."""
    if kind == "workload_token":
        payload = value.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return (value, str(claims["iss"]))
    return (value,)


def normalized(data: Any, value: Values, drop: set[str] = VOLATILE_FIELDS) -> Any:
    """``data`` with ``value`` replaced by a placeholder in each string; volatile fields dropped."""
    if isinstance(data, dict):
        return {k: normalized(v, value, drop) for k, v in data.items() if k not in drop}
    if isinstance(data, list):
        return [normalized(v, value, drop) for v in data]
    if isinstance(data, str):
        return _substitute(data, value)
    return data


def shape(answer: Answer, value: Values) -> dict[str, Any]:
    """What must be equal between the answers to A's value and to its twin."""
    body = answer.json()
    return {
        "status": answer.status,
        "headers": {
            k: _substitute(v, value) if k == "location" else v
            for k, v in answer.headers.items()
            if k not in VOLATILE_HEADERS
        },
        "body": normalized(body, value)
        if body is not None
        else _substitute(answer.content.decode("latin-1"), value),
    }


def own_shape(answer: Answer) -> dict[str, Any]:
    """For :attr:`Expect.OWN`: B's own object answers with fresh ids and times,
    so the status, the problem's code and field, and the body's keys compare."""
    body = answer.json()
    keys = sorted(body) if isinstance(body, dict) else None
    problem = {k: body.get(k) for k in ("code", "field", "title")} if answer.status >= 400 else None
    headers = sorted(k for k in answer.headers if k not in VOLATILE_HEADERS)
    return {"status": answer.status, "keys": keys, "problem": problem, "headers": headers}


def length_consistent(a: Answer, a_value: str, b: Answer, b_value: str) -> bool:
    """The two bodies differ in length only by the values they carry (every
    value tried is URL-safe, so it reads the same in a path and in a body)."""
    n_a = len(_occurrences(a_value).findall(a.content.decode("latin-1")))
    n_b = len(_occurrences(b_value).findall(b.content.decode("latin-1")))
    return n_a == n_b and len(a.content) - len(b.content) == n_a * (len(a_value) - len(b_value))


def first_difference(a: Any, b: Any, where: str = "") -> str | None:
    """Where two JSON-like values first differ, and how (for failure messages)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = first_difference(a.get(key), b.get(key), f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where}: {len(a)} items / {len(b)} items"
        for n, (x, y) in enumerate(zip(a, b, strict=True)):
            found = first_difference(x, y, f"{where}[{n}]")
            if found:
                return found
        return None
    return None if a == b else f"{where}: {a!r:.300} / {b!r:.300}"


def event_shape(event: Mapping[str, Any], value: Values, *, own: bool = False) -> dict[str, Any]:
    """An audit event as it must match its twin's: without its seq, time and request."""
    drop = {"seq", "at", "request_id"} | (
        {"resource_id", "reason", "payload_sha256"} if own else set()
    )
    return dict(normalized(dict(event), value, drop))

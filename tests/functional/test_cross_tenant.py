"""The cross-tenant red team: tenant B's principals try tenant A's ids and names
in every id-bearing parameter of every route, over real HTTP, on SQLite and on
PostgreSQL.

Tenant A (``acme``) gets objects of every kind the API has: projects, members,
a workload, jobs (completed with a result, rejected, cancelled), a second
token, a secret, an export key, rotated key rings and the audit events all of
that leaves. Tenant B (``globex``) has a job and a secret of its own, and its
admin, developer and viewer each try every value of A's in every parameter
of :data:`~cross_tenant_support.PROBES`, once with A's value and once with a
twin of the same shape that exists nowhere. Then:

- the two answers are the same (status, headers, body, length) once each
  value is replaced by a placeholder, and none carries anything of A's;
- B's audit log records the two requests alike, a refusal as a denial, and
  never with A's value; A's log learns nothing of B's probes;
- A's objects are as they were.

``test_every_parameter_is_probed_or_named_harmless`` walks the app's own route
table: a parameter that is neither probed nor listed, with a reason, as naming
no tenant's object fails the suite.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from cross_tenant_support import (
    NOT_TENANT_IDS,
    ONE_QUBIT,
    OPAQUE_BODIES,
    PROBES,
    SCIM,
    TRUST_RULE,
    UNDOCUMENTED,
    VOLATILE_FIELDS,
    WORKLOAD_TOKEN,
    Answer,
    Expect,
    Probe,
    covered,
    echoes,
    event_shape,
    first_difference,
    length_consistent,
    own_shape,
    parameters,
    shape,
    twin,
)
from fastapi import FastAPI
from starlette.routing import Mount

from qustody.api.app import build_runtime, create_app
from qustody.crypto.sealed import XWingPrivateKey
from support import Gateway, auth, free_port, make_settings, seed, slow_qasm2, wait_ready

# One campaign per database does several thousand requests before the first test.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

_ULID = re.compile(r"^[a-z]{2,4}_[0-9A-HJKMNP-TV-Z]{26}$")
ROLES = {"admin": "globex-admin", "developer": "globex-dev", "viewer": "globex-view"}
A_NAMES = (
    "xt-alpha-lab",
    "alpha-ci-bot",
    "alpha-provider-cred",
    "alpha-bell",
    "alpha-qec",
    "alpha-ci-key",
    "alpha-gh-main",
    "alpha-scim-user",
    "alpha-scim-group",
    "alpha-ext-77",
)
#: What a refused attempt may answer: not found, or the 403 B's role gets for any value.
REFUSALS = {403, 404}
#: What a refused sign-in may answer (no caller: nothing to hide behind a 404).
#: Not 503: a workload token whose issuer cannot be reached gets the same 400 as
#: one no tenant trusts, or the answer would tell which issuers tenants trust.
SIGN_IN_REFUSALS = {400, 401, 403}
#: Routes no tenant principal gets past the policy on: B gets the same 403 for any value.
PLATFORM_ONLY = {("POST", "/v1/tenants")}
#: Listings asked for more than the caller's tenant: refused, never a line of A's.
WIDER_LISTINGS = (
    "/v1/audit/export?scope=platform",
    "/v1/audit/export?scope=platform&format=ocsf",
    "/v1/audit/export?format=ocsf",
)
#: Routes the app serves besides the API: its own description.
SELF_DESCRIPTION = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


@dataclass
class Attempt:
    role: str
    probe: Probe
    kind: str
    value: str
    twin: str
    answer: Answer
    control: Answer

    def __str__(self) -> str:
        return (
            f"{self.role} {self.probe.method} {self.probe.path} {self.probe.param}={self.kind} "
            f"({self.probe.expect.value}): {self.answer.status} {self.answer.code} / "
            f"twin {self.control.status} {self.control.code}"
        )


@dataclass
class Campaign:
    backend: str
    gateway: Gateway
    #: The app's OpenAPI documents: its own, and each mounted app's, by mount path.
    documents: list[tuple[str, dict[str, Any]]]
    #: (method, path) of every route the app serves, found by walking its routes.
    served: set[tuple[str, str]]
    a_tenant: str
    b_tenant: str
    inventory: dict[str, list[str]]
    a_ids: set[str]
    a_names: set[str]
    a_token: str
    sweeps: list[tuple[str, str, Answer]] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    b_log: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    b_events: list[dict[str, Any]] = field(default_factory=list)
    a_events: list[dict[str, Any]] = field(default_factory=list)
    a_before: dict[str, Any] = field(default_factory=dict)
    a_after: dict[str, Any] = field(default_factory=dict)


# -- the gateway, on each database --------------------------------------------------------


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def campaign(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Campaign]:
    root = tmp_path_factory.mktemp(f"cross-tenant-{request.param}")
    if request.param == "sqlite":
        database_url = f"sqlite:///{root / 'data' / 'qustody.db'}"
    else:
        database_url = request.getfixturevalue("postgres_server")
    settings = make_settings(root, database_url)
    runtime = build_runtime(settings)
    server: subprocess.Popen[bytes] | None = None
    try:
        tenancy = seed(runtime)
        port = free_port()
        gw = Gateway(f"http://127.0.0.1:{port}", tenancy, root / "data", database_url)
        log_path = root / "server.log"
        with log_path.open("wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "qustody.cli", "serve", "--port", str(port)],
                env=gw.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_ready(gw.url, server, log_path, timeout=180)
        app = create_app(settings, runtime=runtime)
        with httpx.Client(base_url=gw.url, timeout=60) as http:
            yield _run(request.param, gw, http, _documents(app), set(_walk(app.routes)))
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)
        runtime.close()
        if request.param == "postgres":
            admin_url = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute("DROP SCHEMA public CASCADE")
                conn.execute("CREATE SCHEMA public")


def _documents(app: FastAPI) -> list[tuple[str, dict[str, Any]]]:
    found = [("", app.openapi())]
    for route in app.routes:
        if isinstance(route, Mount) and isinstance(route.app, FastAPI):
            found.append((route.path, route.app.openapi()))
    return found


def _walk(routes: Iterable[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path) of every route, through included routers and mounted apps."""
    for route in routes:
        if hasattr(route, "effective_candidates"):  # a router included in the app
            yield from _walk(route.effective_candidates(), prefix)
        elif isinstance(route, Mount):
            yield from _walk(route.routes, prefix + route.path)
        elif prefix + route.path not in SELF_DESCRIPTION:
            for method in getattr(route, "methods", None) or {"*"}:
                if method != "HEAD":
                    yield method, prefix + route.path


def _run(
    backend: str,
    gw: Gateway,
    http: httpx.Client,
    documents: list[tuple[str, dict[str, Any]]],
    served: set[tuple[str, str]],
) -> Campaign:
    a_admin = auth(gw.tenancy.token_for("acme-admin"))
    b_tokens = {role: gw.tenancy.token_for(name, "globex") for role, name in ROLES.items()}
    has = {(m, p) for m, p in served}
    inventory, a_ids, a_token = _tenant_a(http, gw, has)
    b_tokens |= _tenant_b(http, b_tokens, has)
    campaign = Campaign(
        backend,
        gw,
        documents,
        served,
        gw.tenancy.tenant_admin.tenant_id,
        gw.tenancy.outsider.tenant_id,
        inventory,
        a_ids,
        {*A_NAMES, "acme-admin", "acme-dev", "acme-view"},
        a_token,
    )
    campaign.a_before = _a_state(http, a_admin, inventory, has)
    taken = {int(e["seq"]) for e in _log(http, auth(b_tokens["admin"]))}
    start = datetime.now(UTC).isoformat()
    # Lists first, while B owns nothing named like A's; then every probe; names
    # in B's own namespace last.
    for role, token in b_tokens.items():
        for path in [*_listing_routes(documents), *WIDER_LISTINGS]:
            campaign.sweeps.append((role, path, Answer.of(http.get(path, headers=auth(token)))))
    # Among names in B's own namespace, SCIM's users first: SCIM refuses a user
    # name taken, /v1/members adopts a principal of that name.
    ordered = [p for p in PROBES if p.expect is not Expect.OWN] + sorted(
        (p for p in PROBES if p.expect is Expect.OWN), key=lambda p: not p.path.startswith("/scim")
    )
    for probe in ordered:
        if (probe.method, probe.path) not in served:
            continue  # the route-table test reports it
        for role, token in b_tokens.items():
            if probe.public and role != "admin":
                break  # no caller: once is enough
            for kind in probe.kinds:
                for value in inventory[kind]:
                    other = twin(kind, value, taken)
                    answers = [
                        Answer.of(http.request(**_with_auth(probe.request(v, until=start), token)))
                        for v in (value, other)
                    ]
                    campaign.attempts.append(Attempt(role, probe, kind, value, other, *answers))
    campaign.b_events = _log(http, auth(b_tokens["admin"]))
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in campaign.b_events:
        grouped[str(event["request_id"])].append(event)
    campaign.b_log = dict(grouped)
    if ("POST", "/v1/tokens:revoke") in served:
        # Last, B cuts off every credential of its tenant; A's must keep working.
        cut = {"issued_before": datetime.now(UTC).isoformat()}
        _ok(http.post("/v1/tokens:revoke", json=cut, headers=auth(b_tokens["admin"])))
    campaign.a_after = _a_state(http, a_admin, inventory, has)
    campaign.a_events = _log(http, a_admin)
    return campaign


def _with_auth(request: dict[str, Any], token: str) -> dict[str, Any]:
    request["headers"] = {**request["headers"], **auth(token)}
    return request


def _listing_routes(documents: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """GET routes that need no parameter: B's plain listings."""
    return [
        prefix + path
        for prefix, openapi in documents
        for path, operations in openapi["paths"].items()
        if "get" in operations
        and "{" not in path
        and not any(p.get("required") for p in operations["get"].get("parameters", ()))
    ]


def _log(http: httpx.Client, headers: dict[str, str]) -> list[dict[str, Any]]:
    """Every event of the caller's tenant, through the audit API."""
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        page = http.get("/v1/audit/events", params={"after": after, "limit": 500}, headers=headers)
        assert page.status_code == 200, page.text
        body = page.json()
        events += [item["event"] for item in body["items"]]
        if body["next"] is None:
            return events
        after = body["next"]


# -- the two tenants ------------------------------------------------------------------------


def _ok(response: httpx.Response, *expected: int) -> Any:
    assert response.status_code in (expected or (200,)), response.text
    json_body = "json" in response.headers.get("content-type", "")
    return response.json() if response.content and json_body else None


def _finished(http: httpx.Client, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 240
    while True:
        job = _ok(http.get(f"/v1/jobs/{job_id}", params={"wait": 30}, headers=headers))
        if job["state"] in ("completed", "failed", "cancelled", "rejected"):
            return dict(job)
        assert time.monotonic() < deadline, (job["state"], job["id"])


def _tenant_a(
    http: httpx.Client, gw: Gateway, has: set[tuple[str, str]]
) -> tuple[dict[str, list[str]], set[str], str]:
    """Objects of every kind in tenant A: A's values by kind, every id of A's,
    and a token issued through the API (B tries to revoke it)."""
    admin = auth(gw.tenancy.token_for("acme-admin"))
    dev = auth(gw.tenancy.token_for("acme-dev"))
    lab = _ok(
        http.post(
            "/v1/projects", json={"name": A_NAMES[0], "data_class": "confidential"}, headers=admin
        ),
        201,
    )
    research = _ok(http.get("/v1/projects/research", headers=admin))
    for principal, kind in (("acme-dev", "user"), (A_NAMES[1], "workload")):
        body = {"principal": principal, "role": "developer", "project": A_NAMES[0], "kind": kind}
        _ok(http.post("/v1/members", json=body, headers=admin), 201)
    job = {"backend": "aer-statevector", "shots": 16, "qasm": ONE_QUBIT, "project": A_NAMES[0]}
    done = _ok(
        http.post(
            "/v1/jobs", json=job | {"name": A_NAMES[3], "labels": {"team": A_NAMES[4]}}, headers=dev
        ),
        202,
    )
    rejected = http.post("/v1/jobs", json=job | {"qasm": "OPENQASM 2.0;\nbogus q;"}, headers=dev)
    assert rejected.status_code == 422, rejected.text
    slow = _ok(
        http.post(
            "/v1/jobs", json=job | {"project": "research", "qasm": slow_qasm2(12, 400)}, headers=dev
        ),
        202,
    )
    _ok(http.post(f"/v1/jobs/{slow['id']}/cancel", headers=dev))
    job_ids = [done["id"], rejected.json()["job_id"], slow["id"]]
    for job_id in job_ids:
        _finished(http, dev, job_id)
    _ok(http.get(f"/v1/jobs/{done['id']}/result", headers=dev))
    issued = _ok(
        http.post("/v1/tokens", json={"principal": "acme-dev", "ttl_seconds": 900}, headers=admin),
        201,
    )
    _ok(http.put(f"/v1/secrets/{A_NAMES[2]}", json={"value": "alpha-secret-0451"}, headers=admin))
    export_key = XWingPrivateKey.generate().public_key
    exported = _ok(
        http.put("/v1/export-key", json={"public_key": export_key.to_text()}, headers=admin)
    )
    _ok(http.post("/v1/keys/rotate", json={"project_id": lab["id"]}, headers=admin))
    _ok(http.get(f"/v1/jobs/{done['id']}/result", params={"sealed": "true"}, headers=admin))
    extra = _tenant_a_credentials(http, admin, has)
    extra |= _tenant_a_approvals(http, admin, dev, has)
    session = _ok(http.post("/v1/sessions", json={"backend": "aer-statevector"}, headers=dev), 201)
    later = datetime.now(UTC) + timedelta(days=3)
    reservation = _ok(
        http.post(
            "/v1/reservations",
            json={
                "backend": "aer-stabilizer",
                "starts_at": later.isoformat(),
                "ends_at": (later + timedelta(hours=1)).isoformat(),
                "reason": "calibration",
            },
            headers=admin,
        ),
        201,
    )
    rings = _ok(http.get("/v1/keys", headers=admin))["items"]
    members = _ok(http.get("/v1/members", headers=admin))["items"]
    events = _log(http, admin)
    principal_ids = sorted(
        {m["principal_id"] for m in members} | set(extra.get("scim_user_id", []))
    )
    tenant_id = gw.tenancy.tenant_admin.tenant_id
    # A's own tokens (A's log also names the platform admin's, who created A).
    jtis = sorted(
        {str(e["token_id"]) for e in events if e["token_id"] and e["actor_tenant_id"] == tenant_id}
        | {issued["jti"]}
    )
    # Ids only (ULIDs, token ids, ring names under A's tenant id), not shared
    # names such as the platform's configuration.
    resource_ids = sorted(
        {
            str(e["resource_id"])
            for e in events
            if e["resource_id"]
            and (
                _ULID.fullmatch(e["resource_id"])
                or e["resource_id"] in jtis
                or tenant_id in e["resource_id"]
            )
        }
    )
    seqs = sorted(int(e["seq"]) for e in events)
    inventory: dict[str, list[str]] = {
        "tenant_id": [tenant_id],
        "tenant_name": ["acme"],
        "project_id": [research["id"], lab["id"]],
        "project_name": [A_NAMES[0]],
        "principal_name": ["acme-admin", "acme-dev", "acme-view", A_NAMES[1]]
        + ([A_NAMES[7]] if extra.get("scim_user_id") else []),
        "principal_id": principal_ids,
        "actor_id": sorted({str(e["actor_id"]) for e in events} & set(principal_ids)),
        "job_id": job_ids,
        "session_id": [session["id"]],
        "reservation_id": [reservation["id"]],
        "jti": jtis,
        "secret_name": [A_NAMES[2]],
        "resource_id": resource_ids,
        "audit_seq": [str(seqs[0]), str(seqs[len(seqs) // 2]), str(seqs[-1])],
        "audit_position": [str(seqs[len(seqs) // 2])],
        "apikey_id": extra.get("apikey_id", []),
        "webhook_id": extra.get("webhook_id", []),
        "approval_id": extra.get("approval_id", []),
        "grant_id": extra.get("grant_id", []),
        "apikey_name": extra.get("apikey_name", []),
        "trustrule_id": extra.get("trustrule_id", []),
        "trustrule_name": extra.get("trustrule_name", []),
        "exchange_audience": ["acme", *(f"acme/{n}" for n in extra.get("trustrule_name", []))],
        "workload_token": [WORKLOAD_TOKEN] if extra.get("trustrule_id") else [],
        "policy_version": extra.get("policy_version", []),
        "scim_user_id": extra.get("scim_user_id", []),
        **{
            kind: extra.get(kind, [])
            for kind in ("group_id", "group_name", "external_id", "user_filter", "group_filter")
        },
        # B's forbid naming A's admin: it must bind nobody of A's.
        "forbid_text": [
            f'@id("xt-probe")\nforbid (principal == Qustody::Principal::"{admin_id}", '
            "action, resource);\n"
            for admin_id in (gw.tenancy.tenant_admin.id,)
        ],
    }
    ids = {
        *inventory["tenant_id"],
        *inventory["project_id"],
        *principal_ids,
        *job_ids,
        *jtis,
        *resource_ids,
        exported["fingerprint"],
        *(v["key_id"] for r in rings for v in r["versions"]),
        *extra.get("apikey_id", []),
        *extra.get("webhook_id", []),
        *extra.get("approval_id", []),
        *extra.get("grant_id", []),
        *extra.get("trustrule_id", []),
        *extra.get("scim_user_id", []),
        *extra.get("group_id", []),
    }
    return inventory, ids, str(issued["token"])


A_POLICIES = (
    '@id("alpha-no-cancel-on-prod")\nforbid (principal, action == Qustody::Action::"job:cancel", '
    'resource)\nwhen { context has environment && context.environment == "prod" };\n',
    '@id("alpha-small-dev")\nforbid (principal, action == Qustody::Action::"job:submit", '
    "resource)\nwhen { context has qubits && context.qubits > 20 };\n",
)


def _tenant_a_credentials(
    http: httpx.Client, admin: dict[str, str], has: set[tuple[str, str]]
) -> dict[str, list[str]]:
    """A's API key, trust rule, local account and policy versions, where the app has them."""
    found: dict[str, list[str]] = {}
    if ("POST", "/v1/api-keys") in has:
        body = {"principal": A_NAMES[1], "name": A_NAMES[5], "scopes": ["job"]}
        key = _ok(
            http.post("/v1/api-keys", json=body | {"expires_in_days": 30}, headers=admin), 201
        )
        found |= {"apikey_id": [key["id"]], "apikey_name": [A_NAMES[5]]}
    if ("POST", "/v1/webhooks") in has:
        hook = {"url": "https://alerts.example.com/alpha", "kinds": ["budget.*"]}
        found["webhook_id"] = [_ok(http.post("/v1/webhooks", json=hook, headers=admin), 201)["id"]]
    if ("POST", "/v1/trust-rules") in has:
        rule_body = {"name": A_NAMES[6], "principal": A_NAMES[1], **TRUST_RULE}
        rule = _ok(http.post("/v1/trust-rules", json=rule_body, headers=admin), 201)
        found |= {"trustrule_id": [rule["id"]], "trustrule_name": [A_NAMES[6]]}
    if ("PUT", "/v1/principals/{principal}/password") in has:
        password = {"password": "alpha-correct-horse-battery"}
        _ok(http.put("/v1/principals/acme-dev/password", json=password, headers=admin), 200, 204)
    if ("POST", "/scim/v2/Groups") in has:
        user = {"schemas": [SCIM + "User"], "userName": A_NAMES[7], "externalId": A_NAMES[9]}
        user_id = _ok(http.post("/scim/v2/Users", json=user, headers=admin), 201)["id"]
        group = {
            "schemas": [SCIM + "Group"],
            "displayName": A_NAMES[8],
            "members": [{"value": user_id}],
        }
        group_id = _ok(http.post("/scim/v2/Groups", json=group, headers=admin), 201)["id"]
        found |= {
            "scim_user_id": [user_id],
            "group_id": [group_id],
            "group_name": [A_NAMES[8]],
            "external_id": [A_NAMES[9]],
            "user_filter": [
                f'userName eq "{A_NAMES[7]}"',
                f'id eq "{user_id}"',
                f'externalId eq "{A_NAMES[9]}"',
            ],
            "group_filter": [f'displayName eq "{A_NAMES[8]}"', f'id eq "{group_id}"'],
        }
    if ("PUT", "/v1/policies") in has:
        for text in A_POLICIES:
            _ok(http.put("/v1/policies", json={"text": text}, headers=admin))
        found["policy_version"] = [str(n) for n in range(1, len(A_POLICIES) + 1)]
    return found


def _tenant_a_approvals(
    http: httpx.Client, admin: dict[str, str], dev: dict[str, str], has: set[tuple[str, str]]
) -> dict[str, list[str]]:
    """A's elevation requests, one pending and one approved (its grant active)."""
    if ("POST", "/v1/elevations") not in has:
        return {}
    ask = {
        "role": "viewer",
        "project": "research",
        "duration_seconds": 3600,
        "reason": "reading results for the review",
        "ticket": "CHG-0451",
    }
    pending = _ok(http.post("/v1/elevations", json=ask, headers=dev), 201)
    approved = _ok(http.post("/v1/elevations", json=ask, headers=dev), 201)
    _ok(http.post(f"/v1/approvals/{approved['id']}:approve", json={}, headers=admin))
    grants = _ok(http.get("/v1/elevations", headers=admin))["items"]
    return {
        "approval_id": [pending["id"], approved["id"]],
        "grant_id": [g["id"] for g in grants],
    }


def _tenant_b(
    http: httpx.Client, tokens: dict[str, str], has: set[tuple[str, str]]
) -> dict[str, str]:
    """B's own job, secret and workload, so B's lists and log have something of
    B's; and, where the app has API keys, the workload's key as one more prober."""
    admin = auth(tokens["admin"])
    workload = {"principal": "bravo-ci-bot", "role": "developer", "project": "research"}
    _ok(http.post("/v1/members", json=workload | {"kind": "workload"}, headers=admin), 201)
    dev = auth(tokens["developer"])
    body = {"project": "research", "backend": "aer-statevector", "shots": 8, "qasm": ONE_QUBIT}
    job = _ok(http.post("/v1/jobs", json=body, headers=dev), 202)
    _finished(http, dev, job["id"])
    _ok(http.put("/v1/secrets/bravo-cred", json={"value": "bravo"}, headers=admin))
    if ("POST", "/v1/api-keys") not in has:
        return {}
    body = {"principal": "bravo-ci-bot", "name": "bravo-ci-key", "expires_in_days": 1}
    return {
        "workload (API key)": _ok(http.post("/v1/api-keys", json=body, headers=admin), 201)["key"]
    }


def _a_state(
    http: httpx.Client,
    admin: dict[str, str],
    inventory: dict[str, list[str]],
    has: set[tuple[str, str]],
) -> dict[str, Any]:
    """What of A's must not change while B probes."""
    jobs = {j: _ok(http.get(f"/v1/jobs/{j}", headers=admin))["state"] for j in inventory["job_id"]}
    lists = {
        path: _ok(http.get(path, headers=admin))
        for path in (
            "/v1/api-keys",
            "/v1/trust-rules",
            "/v1/policies",
            "/v1/policies/versions",
            "/v1/approvals",
            "/v1/elevations",
        )
        if ("GET", path) in has
    }
    for kind, path in (("scim_user_id", "/scim/v2/Users/"), ("group_id", "/scim/v2/Groups/")):
        for found in inventory.get(kind, []):
            lists[path + found] = _ok(http.get(path + found, headers=admin))
    return lists | {
        "projects": _ok(http.get("/v1/projects", headers=admin)),
        "members": _ok(http.get("/v1/members", headers=admin)),
        "secrets": _ok(http.get("/v1/secrets", headers=admin)),
        "export_key": _ok(http.get("/v1/export-key", headers=admin)),
        "rings": sorted(
            (r["ring"], r["current_version"])
            for r in _ok(http.get("/v1/keys", headers=admin))["items"]
        ),
        "jobs": jobs,
    }


# -- the route table ------------------------------------------------------------------------


def test_every_parameter_is_probed_or_named_harmless(campaign: Campaign) -> None:
    """Each parameter of each route is in the probe table or named as no tenant id;
    each table entry names a parameter the app has; each route is documented."""
    found = {p for prefix, doc in campaign.documents for p in parameters(doc, prefix)}
    for (method, path), names in (UNDOCUMENTED | OPAQUE_BODIES).items():
        found |= {(method, path, name) for name in names}
    probed = {p.key for p in PROBES}
    missing = sorted(p for p in found if not covered(p, probed))
    assert not missing, (
        "parameters no red-team probe covers; add each to PROBES (with A's values to "
        "try) or to NOT_TENANT_IDS (with why it names no tenant's object):\n"
        + "\n".join(map(str, missing))
    )
    stale = sorted((probed | set(NOT_TENANT_IDS)) - found)
    assert not stale, f"table entries for parameters the app no longer has: {stale}"
    documented = {
        (method.upper(), prefix + path)
        for prefix, doc in campaign.documents
        for path, operations in doc["paths"].items()
        for method in operations
    }
    hidden = sorted(campaign.served - documented)
    assert not hidden, f"routes missing from the OpenAPI documents: {hidden}"
    tried = {a.probe.key for a in campaign.attempts}
    assert probed <= tried, f"probes with no value of A's to try: {sorted(probed - tried)}"


# -- the answers ---------------------------------------------------------------------------


def test_each_answer_is_that_of_a_value_that_exists_nowhere(campaign: Campaign) -> None:
    wrong = []
    for attempt in campaign.attempts:
        a, t = attempt.answer, attempt.control
        expect = attempt.probe.expect
        if expect is Expect.OWN:
            if own_shape(a) != own_shape(t):
                wrong.append(f"{attempt}: {first_difference(own_shape(a), own_shape(t))}")
            continue
        values, twins = echoes(attempt.kind, attempt.value), echoes(attempt.kind, attempt.twin)
        mine, control = shape(a, values), shape(t, twins)
        if mine != control:
            wrong.append(f"{attempt}: {first_difference(mine, control)}")
        elif (
            len(values) == 1
            and not _volatile(a.json())
            and not length_consistent(a, attempt.value, t, attempt.twin)
        ):
            wrong.append(f"{attempt}: lengths {len(a.content)} and {len(t.content)}")
        elif expect is Expect.REFUSED and a.status not in _refusals(attempt.probe):
            wrong.append(f"{attempt}: answered {a.status}, not a refusal")
        elif expect is not Expect.REFUSED and a.status not in REFUSALS | {200, 422}:
            wrong.append(f"{attempt}: answered {a.status}")
    assert not wrong, "\n".join(wrong)
    # B's admin reaches every lookup a tenant can reach: each REFUSED probe
    # gets past the policy for someone, so no probe passes by stopping short.
    reached = {
        id(a.probe) for a in campaign.attempts if a.answer.status in _refusals(a.probe) - {403}
    }
    for probe in PROBES:
        if probe.expect is Expect.REFUSED and (probe.method, probe.path) not in PLATFORM_ONLY:
            assert id(probe) in reached, f"{probe.key}: never reached its lookup"


def _refusals(probe: Probe) -> set[int]:
    """Statuses a refused probe may answer: a body field naming nothing is an
    invalid value (400, 422), as it is for any value that names nothing."""
    if probe.public:
        return SIGN_IN_REFUSALS
    return REFUSALS | {400, 422} if probe.param.startswith("body:") else REFUSALS


def _volatile(body: Any) -> bool:
    """Whether ``body`` holds fields that change between two asks (checkpoints, proofs)."""
    if isinstance(body, dict):
        return bool(VOLATILE_FIELDS.intersection(body) - {"request_id"}) or any(
            _volatile(v) for v in body.values()
        )
    return isinstance(body, list) and any(_volatile(v) for v in body)


def test_no_answer_carries_anything_of_tenant_as(campaign: Campaign) -> None:
    secrets_of_a = campaign.a_ids | campaign.a_names
    leaks = []
    answers = [(f"{role} GET {path}", "", answer) for role, path, answer in campaign.sweeps]
    answers += [(str(a), a.value, a.answer) for a in campaign.attempts]
    for what, value, answer in answers:
        text = answer.content.decode("utf-8", "replace")
        if value:  # B's own value, as sent and as a JSON string echoes it
            text = text.replace(value, "").replace(json.dumps(value)[1:-1], "")
        seen = sorted(s for s in secrets_of_a if s in text)
        if seen:
            leaks.append(f"{what}: {seen}")
    assert not leaks, "\n".join(leaks)


def test_the_whole_log_is_refused_to_every_tenant_principal(campaign: Campaign) -> None:
    answers = [(role, path, a.status) for role, path, a in campaign.sweeps if "platform" in path]
    assert answers
    assert all(status == 403 for _, _, status in answers), answers


# -- the logs ------------------------------------------------------------------------------


def test_b_log_records_each_probe_like_its_twin_and_refusals_as_denials(
    campaign: Campaign,
) -> None:
    wrong = []
    for attempt in campaign.attempts:
        if attempt.probe.public:
            continue  # no caller, so nothing in B's log
        own = attempt.probe.expect is Expect.OWN
        mine = campaign.b_log.get(attempt.answer.request_id, [])
        control = campaign.b_log.get(attempt.control.request_id, [])
        shapes = [event_shape(e, attempt.value, own=own) for e in mine]
        twins = [event_shape(e, attempt.twin, own=own) for e in control]
        if shapes != twins:
            wrong.append(f"{attempt}: logged {first_difference(shapes, twins)}")
        elif attempt.answer.status in REFUSALS and not any(e["outcome"] == "denied" for e in mine):
            wrong.append(f"{attempt}: no denial in B's log ({shapes})")
    assert not wrong, "\n".join(wrong)


def test_b_log_never_names_tenant_as_objects(campaign: Campaign) -> None:
    # B's own policy text named A's admin (a probe); its diffs quote it back.
    quoted = {
        i
        for a in campaign.attempts
        if a.kind.endswith("_text")
        for i in campaign.a_ids
        if i in a.value
    }
    named = [
        (e["seq"], e["event_type"], key)
        for e in campaign.b_events
        for key, value in e.items()
        if isinstance(value, str)
        and any(
            i in value
            for i in campaign.a_ids
            if not (e["event_type"] == "policy:set" and i in quoted)
        )
    ]
    assert not named, named


def test_tenant_a_log_learns_nothing_of_the_probes(campaign: Campaign) -> None:
    # Sign-in attempts excepted: a failed sign-in to A's account is A's to see.
    probes = {
        answer.request_id
        for a in campaign.attempts
        if not a.probe.public
        for answer in (a.answer, a.control)
    }
    learned = [
        e
        for e in campaign.a_events
        if e["request_id"] in probes or e["actor_tenant_id"] == campaign.b_tenant
    ]
    assert not learned, learned


def test_tenant_as_objects_are_untouched(campaign: Campaign) -> None:
    assert campaign.a_after == campaign.a_before
    # B tried to revoke it.
    still = httpx.get(
        f"{campaign.gateway.url}/v1/projects", headers=auth(campaign.a_token), timeout=30
    )
    assert still.status_code == 200, still.text

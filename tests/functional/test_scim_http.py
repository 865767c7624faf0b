"""SCIM over real HTTP: the media type, SCIM error messages for every refusal
(none a 500), ETags, tenant isolation, and deprovisioning effective on the
next request of a token issued before it."""

from __future__ import annotations

import re
import secrets
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import select

from qustody.api.routes import scim as scim_routes
from qustody.api.routes.common import ACTION_KEY
from qustody.domain.vocabulary import Action
from qustody.storage import models as m
from support import Gateway, auth

SCIM_JSON = "application/scim+json"
ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
GRANT_SCHEMA = "urn:qustody:params:scim:schemas:extension:2.0:Group"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


@pytest.fixture
def scim(gateway: Gateway) -> Any:
    with httpx.Client(
        base_url=f"{gateway.url}/scim/v2",
        headers={**auth(gateway.tenant_admin_token), "Content-Type": SCIM_JSON},
        timeout=30,
    ) as client:
        yield client


def _name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def _create_user(scim: httpx.Client, name: str) -> dict[str, Any]:
    response = scim.post("/Users", json={"schemas": [USER_SCHEMA], "userName": name})
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith(SCIM_JSON)
    assert response.headers["location"] == response.json()["meta"]["location"]
    return dict(response.json())


def _patch(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": [PATCH_SCHEMA], "Operations": list(operations)}


def _assert_scim_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(SCIM_JSON)
    body = response.json()
    assert body["schemas"] == [ERROR_SCHEMA]
    assert body["status"] == str(status)
    assert body["detail"]
    assert response.headers["qustody-error-code"] == code
    assert response.headers["x-request-id"]
    assert set(body) <= {"schemas", "status", "scimType", "detail"}
    return dict(body)


def test_every_refusal_is_a_scim_error_and_none_is_a_500(
    gateway: Gateway, scim: httpx.Client
) -> None:
    anonymous = httpx.get(f"{gateway.url}/scim/v2/Users", timeout=30)
    _assert_scim_error(anonymous, 401, "missing_token")
    assert anonymous.headers["www-authenticate"].startswith(("Bearer", "DPoP"))
    _assert_scim_error(scim.get("/NoSuchThing"), 404, "no_such_endpoint")
    _assert_scim_error(scim.put("/ServiceProviderConfig"), 405, "method_not_allowed")
    user_id = "usr_01JZZZZZZZZZZZZZZZZZZZZZZZ"
    cases: list[tuple[str, str, Any, int, str | None]] = [
        ("POST", "/Users", b"{not json", 400, "invalidSyntax"),
        ("POST", "/Users", [1, 2], 400, "invalidSyntax"),
        ("POST", "/Users", {"schemas": [USER_SCHEMA]}, 400, "invalidValue"),
        ("POST", "/Users", {"schemas": [USER_SCHEMA], "userName": "a b"}, 400, "invalidValue"),
        ("POST", "/Users", {"schemas": ["urn:x"], "userName": "ab"}, 400, "invalidSyntax"),
        ("POST", "/Users", {"schemas": [USER_SCHEMA], "userName": 7}, 400, "invalidValue"),
        ("GET", "/Users?filter=userName%20eq", None, 400, "invalidFilter"),
        ("GET", "/Users?filter=title%20pr", None, 400, "invalidFilter"),
        ("GET", "/Users?sortBy=emails.type", None, 400, None),
        ("GET", "/Users?count=abc", None, 400, None),
        ("GET", "/Users?attributes=a,,b%20c", None, 400, None),
        ("GET", f"/Users/{user_id}", None, 404, None),
        ("GET", "/Users/..%2f..", None, 404, None),
        (
            "PATCH",
            f"/Users/{user_id}",
            _patch({"op": "replace", "path": "active", "value": False}),
            404,
            None,
        ),
        ("PATCH", "/Users/x", {"Operations": "nope"}, 400, None),
        ("PATCH", "/Users/x", _patch({"op": "explode", "path": "active"}), 400, None),
        ("PATCH", "/Users/x", _patch({"op": "add", "path": "emails[", "value": 1}), 400, None),
        ("DELETE", f"/Groups/{user_id}", None, 404, None),
        ("POST", "/Groups", {"schemas": [GROUP_SCHEMA], "displayName": ""}, 400, "invalidValue"),
        ("POST", "/Bulk", {}, 501, None),
        ("POST", "/.search", {}, 501, None),
        ("GET", "/Me", None, 501, None),
    ]
    for method, path, body, status, scim_type in cases:
        content = body if isinstance(body, bytes) else None
        response = scim.request(
            method, path, content=content, json=None if content is not None else body
        )
        assert response.status_code == status, (method, path, response.text)
        assert response.headers["content-type"].startswith(SCIM_JSON), (method, path)
        error = response.json()
        assert error["schemas"] == [ERROR_SCHEMA], (method, path)
        if scim_type is not None:
            assert error.get("scimType") == scim_type, (method, path, error)
        assert response.headers["qustody-error-code"], (method, path)


def test_etags_and_conditional_requests(scim: httpx.Client) -> None:
    user = _create_user(scim, _name("etag"))
    location = f"/Users/{user['id']}"
    first = scim.get(location)
    assert first.headers["etag"] == 'W/"1"' == user["meta"]["version"]
    assert scim.get(location, headers={"If-None-Match": 'W/"1"'}).status_code == 304
    changed = scim.patch(
        location,
        json=_patch({"op": "replace", "path": "displayName", "value": "New"}),
        headers={"If-Match": 'W/"1"'},
    )
    assert changed.status_code == 200, changed.text
    assert changed.headers["etag"] == 'W/"2"'
    stale = scim.put(
        location,
        json={"schemas": [USER_SCHEMA], "userName": user["userName"]},
        headers={"If-Match": 'W/"1"'},
    )
    _assert_scim_error(stale, 412, "scim_version_mismatch")
    assert scim.get(location, headers={"If-None-Match": 'W/"1"'}).status_code == 200


def test_another_tenants_users_are_not_found_exactly_like_missing_ones(
    gateway: Gateway, scim: httpx.Client
) -> None:
    user = _create_user(scim, _name("isolated"))
    globex_admin = gateway.tenancy.token_for("globex-admin", "globex")
    with httpx.Client(
        base_url=f"{gateway.url}/scim/v2", headers=auth(globex_admin), timeout=30
    ) as other:
        missing = "usr_01JZZZZZZZZZZZZZZZZZZZZZZZ"
        for method, body in (
            ("GET", None),
            ("PUT", {"schemas": [USER_SCHEMA], "userName": "taken"}),
            ("PATCH", _patch({"op": "replace", "path": "active", "value": False})),
            ("DELETE", None),
        ):
            foreign = other.request(method, f"/Users/{user['id']}", json=body)
            absent = other.request(method, f"/Users/{missing}", json=body)
            assert foreign.status_code == absent.status_code == 404
            assert foreign.json()["detail"].replace(user["id"], "X") == absent.json()[
                "detail"
            ].replace(missing, "X")
        listed = other.get("/Users", params={"filter": f'id eq "{user["id"]}"'}).json()
        assert listed["totalResults"] == 0
    assert scim.get(f"/Users/{user['id']}").json()["active"] is True


def test_deprovisioning_stops_an_earlier_token_on_its_next_request(
    gateway: Gateway, scim: httpx.Client
) -> None:
    name = _name("leaver")
    user = _create_user(scim, name)
    group = scim.post(
        "/Groups",
        json={
            "schemas": [GROUP_SCHEMA, GRANT_SCHEMA],
            "displayName": _name("researchers"),
            "members": [{"value": user["id"]}],
            GRANT_SCHEMA: {"role": "developer", "project": "research"},
        },
    )
    assert group.status_code == 201, group.text
    token = gateway.tenancy.token_for(name)
    api = httpx.Client(base_url=gateway.url, headers=auth(token), timeout=30)
    # The group's role counts: the project is visible to the new member.
    assert api.get("/v1/projects/research").status_code == 200
    # Out of the group: the same token loses the role on its next request.
    removed = scim.patch(
        f"/Groups/{group.json()['id']}",
        json=_patch({"op": "remove", "path": f'members[value eq "{user["id"]}"]'}),
    )
    assert removed.status_code == 200, removed.text
    assert api.get("/v1/projects/research").status_code in (403, 404)
    # Back in, then deactivated: the token is refused outright.
    scim.patch(
        f"/Groups/{group.json()['id']}",
        json=_patch({"op": "add", "path": "members", "value": [{"value": user["id"]}]}),
    )
    assert api.get("/v1/projects/research").status_code == 200
    off = scim.patch(
        f"/Users/{user['id']}", json=_patch({"op": "replace", "path": "active", "value": False})
    )
    assert off.status_code == 200, off.text
    refused = api.get("/v1/projects/research")
    assert refused.status_code == 401
    assert refused.json()["code"] == "revoked_token"
    after = scim.get(f"/Groups/{group.json()['id']}").json()
    assert "members" not in after
    # Deleted: gone from SCIM, and the principal keeps no name.
    assert scim.delete(f"/Users/{user['id']}").status_code == 204
    _assert_scim_error(scim.get(f"/Users/{user['id']}"), 404, "not_found")
    api.close()


# -- the security surface of /scim/v2 ----------------------------------------------------


def _scim_routes() -> list[tuple[str, str, Action]]:
    out = []
    for route in scim_routes.router.routes:
        assert isinstance(route, APIRoute)
        action = (route.openapi_extra or {}).get(ACTION_KEY)
        assert action, f"{route.path} declares no action"
        out.extend((method, route.path, Action(action)) for method in sorted(route.methods))
    return out


def _concrete_scim(path: str) -> str:
    path = path.replace("{name}", "User").replace("{urn}", USER_SCHEMA)
    return re.sub(r"\{[^}]+\}", "usr_01JZZZZZZZZZZZZZZZZZZZZZZZ", path)


def test_every_scim_route_needs_a_token_and_audits_its_denial(gateway: Gateway) -> None:
    """Each SCIM route names its action; without a token it is a 401, and
    with a token narrowed to another scope the denial lands in the audit log
    under the route's own action."""
    routes = _scim_routes()
    assert {action.resource for _, _, action in routes} == {"user", "group"}
    narrow = httpx.post(
        f"{gateway.url}/v1/tokens",
        json={"scopes": ["tenant"], "ttl_seconds": 300},
        headers=auth(gateway.tenant_admin_token),
        timeout=30,
    ).json()["token"]
    # Bodies that pass validation, so the request reaches the policy check.
    bodies = {
        "/Users": {"schemas": [USER_SCHEMA], "userName": "nobody"},
        "/Groups": {"schemas": [GROUP_SCHEMA], "displayName": "nobody"},
        ".search": {"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"]},
        "PATCH": _patch({"op": "replace", "path": "displayName", "value": "x"}),
    }
    with httpx.Client(base_url=f"{gateway.url}/scim/v2", timeout=30) as client:
        for method, path, action in routes:
            url = _concrete_scim(path)
            send: Any = None
            if method == "PATCH":
                send = bodies["PATCH"]
            elif path.endswith(".search"):
                send = bodies[".search"] if path != "/.search" else {}
            elif method in ("POST", "PUT"):
                send = bodies.get("/" + path.split("/")[1], {})
            anonymous = client.request(method, url, json=send)
            _assert_scim_error(anonymous, 401, "missing_token")
            denied = client.request(method, url, json=send, headers=auth(narrow))
            assert denied.status_code == 403, (method, path, denied.text)
            request_id = denied.headers["x-request-id"]
            with gateway.tenancy.runtime.services.db.read() as session:
                events = session.scalars(
                    select(m.AuditEvent).where(m.AuditEvent.request_id == request_id)
                ).all()
            assert [(e.event_type, e.outcome) for e in events] == [(action.value, "denied")], (
                method,
                path,
            )

"""SCIM 2.0 conformance: scim2-tester, an external SCIM checker, against a real gateway.

It reads the gateway's discovery endpoints and then creates, reads, lists,
replaces, patches (add, replace, remove on every published attribute) and
deletes users and groups, as the tenant's identity provider would: with a
tenant admin's token narrowed to the ``user`` and ``group`` scopes.

Every check must succeed, except those listed in :data:`NOT_SUPPORTED`, each
with the reason Qustody answers as it does.
"""

from __future__ import annotations

from typing import Any

import httpx
from scim2_client import BaseSyncSCIMClient
from scim2_tester import Status, check_server

from support import Gateway, auth

#: (resource type, check, what the check's reason names) -> why Qustody refuses it.
NOT_SUPPORTED = {
    ("User", "check_remove_attribute", "'active'"): (
        "a user is active or not: removing 'active' is refused with 400 mutability instead "
        "of guessing (reactivating or deprovisioning); identity providers replace it"
    ),
}
#: Checks scim2-tester itself skips, and why.
SKIPPED = {
    ("User", "search_with_attributes"): "POST /.search across resource types: answered 501",
    ("Group", "search_with_attributes"): "POST /.search across resource types: answered 501",
}


class HttpxScimClient(BaseSyncSCIMClient):
    """scim2-client's engine interface over httpx (its own engine uses httpx2)."""

    def __init__(self, client: httpx.Client, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client = client

    def _stays_under_base_url(self, endpoint: str) -> bool:
        url = self.client.build_request("GET", endpoint).url
        base = self.client.base_url
        return url.host == base.host and url.port == base.port and url.path.startswith(base.path)

    def _parse_json(self, response: Any) -> Any:
        return response.json()

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self.client.request(method, url, **kwargs)


def test_scim2_tester_finds_the_gateway_conformant(gateway: Gateway) -> None:
    token = httpx.post(
        f"{gateway.url}/v1/tokens",
        json={"scopes": ["user", "group"], "ttl_seconds": 900},
        headers=auth(gateway.tenant_admin_token),
    ).json()["token"]
    with httpx.Client(base_url=f"{gateway.url}/scim/v2/", headers=auth(token), timeout=60) as http:
        results = check_server(HttpxScimClient(http))

    assert len(results) >= 70
    failed = []
    explained = set()
    for result in results:
        if result.status in (Status.SUCCESS, Status.COMPLIANT, Status.ACCEPTABLE):
            continue
        key = (result.resource_type, result.title)
        if result.status is Status.SKIPPED and key in SKIPPED:
            explained.add(key)
            continue
        known = next(
            (k for k in NOT_SUPPORTED if k[:2] == key and k[2] in (result.reason or "")),
            None,
        )
        if known is not None:
            explained.add(known)
            continue
        failed.append(f"{result.status.name} {key}: {(result.reason or '')[:300]}")
    assert failed == []
    # The exceptions listed are the ones that happen: none is stale.
    assert explained == set(NOT_SUPPORTED) | set(SKIPPED)

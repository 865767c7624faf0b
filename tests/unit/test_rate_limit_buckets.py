"""Token-bucket arithmetic, the in-memory bound, and webhook signatures (pure)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from qustody.client.webhooks import WebhookVerificationError, verify
from qustody.domain.clock import ManualClock
from qustody.governance.ratelimit import (
    Limit,
    MemoryBuckets,
    RateLimited,
    retry_after_header,
    take,
)
from qustody.governance.webhooks import backoff, kind_matches, new_secret, sign

TWO_A_SECOND = Limit("principal", 2.0, 4)


def test_a_full_bucket_allows_its_burst_then_refuses() -> None:
    full_at: float | None = None
    remaining = []
    for _ in range(4):
        verdict = take(full_at, 100.0, TWO_A_SECOND)
        assert verdict.allowed
        remaining.append(verdict.remaining)
        full_at = verdict.full_at
    assert remaining == [3, 2, 1, 0]
    refused = take(full_at, 100.0, TWO_A_SECOND)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.5)
    assert refused.full_at == full_at  # a refusal takes nothing


def test_the_bucket_refills_at_its_rate() -> None:
    full_at = None
    for _ in range(4):
        full_at = take(full_at, 0.0, TWO_A_SECOND).full_at
    assert not take(full_at, 0.4, TWO_A_SECOND).allowed
    again = take(full_at, 0.5, TWO_A_SECOND)
    assert again.allowed
    assert again.remaining == 0
    # Idle for the whole window: full again, the burst is back.
    assert take(again.full_at, 10.0, TWO_A_SECOND).remaining == 3


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    assert retry_after_header(0.01) == "1"
    assert retry_after_header(1.0) == "1"
    assert retry_after_header(1.2) == "2"
    slow = Limit("sign-in", 0.1, 2)
    full_at = None
    for _ in range(2):
        full_at = take(full_at, 0.0, slow).full_at
    refused = take(full_at, 0.0, slow)
    assert retry_after_header(refused.retry_after) == "10"


def test_a_refusal_names_the_limit_and_carries_the_headers() -> None:
    error = RateLimited(TWO_A_SECOND, take(100.0 + 2.0, 100.0, TWO_A_SECOND), what="this principal")
    assert error.status == 429
    assert error.code == "rate_limited"
    assert "principal limit (2 a second, bursts of 4)" in error.detail
    assert error.response_headers["Retry-After"] == "1"
    assert error.response_headers["RateLimit-Policy"] == '"principal";q=4;w=2'
    assert error.extra["limit"] == "principal"
    assert error.extra["burst"] == 4


def test_memory_buckets_report_a_refused_bucket_once_per_window() -> None:
    clock = ManualClock()
    buckets = MemoryBuckets(clock)
    one = Limit("address", 1.0, 1)
    assert buckets.take(one, "203.0.113.9")[0].allowed
    reports = [buckets.take(one, "203.0.113.9")[1] for _ in range(5)]
    assert reports == [True, False, False, False, False]
    clock.advance(61)
    assert buckets.take(one, "203.0.113.9")[0].allowed  # refilled
    verdict, report = buckets.take(one, "203.0.113.9")
    assert not verdict.allowed
    assert report


def test_rotating_keys_cannot_grow_memory_past_the_bound() -> None:
    clock = ManualClock()
    buckets = MemoryBuckets(clock, max_buckets=1000)
    limit = Limit("address", 1.0, 10)
    for n in range(20_000):
        buckets.take(limit, f"198.51.{n // 256}.{n % 256}")
        assert len(buckets) <= 1001
    # Buckets that refilled go first, and dropping them changes no answer.
    clock.advance(20)
    buckets.take(limit, "fresh")
    assert len(buckets) <= 1001


def test_a_busy_key_survives_eviction_of_idle_ones() -> None:
    clock = ManualClock()
    buckets = MemoryBuckets(clock, max_buckets=1000)
    limit = Limit("address", 1.0, 3)
    for _ in range(3):
        buckets.take(limit, "busy")
    clock.advance(0.5)
    for n in range(999):
        buckets.take(limit, f"idle-{n}")
    clock.advance(2.0)  # the idle ones are full again, "busy" is not
    buckets.take(limit, "one-more")
    assert buckets.peek(limit, "busy").remaining < 2


# -- Standard Webhooks signatures ---------------------------------------------------------


def _independent(secret: str, msg_id: str, ts: int, body: bytes) -> str:
    key = base64.b64decode(secret[len("whsec_") :])
    mac = hmac.new(key, msg_id.encode() + b"." + str(ts).encode() + b"." + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def test_signatures_match_an_independent_hmac() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[6:])) == 32
    body = json.dumps({"type": "budget.threshold", "data": {"percent": 80}}).encode()
    assert sign(secret, "msg_1", 1_700_000_000, body) == _independent(
        secret, "msg_1", 1_700_000_000, body
    )


def _headers(secret: str, ts: int, body: bytes, msg_id: str = "msg_2") -> dict[str, str]:
    return {
        "Webhook-Id": msg_id,
        "Webhook-Timestamp": str(ts),
        "Webhook-Signature": sign(secret, msg_id, ts, body),
    }


def test_verify_accepts_the_gateways_signature() -> None:
    secret, body = new_secret(), b'{"type":"webhook.test","data":{}}'
    event = verify(body, _headers(secret, 1_700_000_000, body), secret, now=1_700_000_100)
    assert event["type"] == "webhook.test"


def test_verify_accepts_any_of_several_signatures() -> None:
    old, new, body = new_secret(), new_secret(), b"{}"
    headers = _headers(new, 1_700_000_000, body)
    headers["Webhook-Signature"] = (
        f"v1,{base64.b64encode(b'x' * 32).decode()} {headers['Webhook-Signature']}"
    )
    verify(body, headers, new, now=1_700_000_000)
    with pytest.raises(WebhookVerificationError):
        verify(body, headers, old, now=1_700_000_000)


@pytest.mark.parametrize(
    "change",
    ["body", "id", "timestamp", "old", "future", "missing", "version"],
)
def test_verify_refuses(change: str) -> None:
    secret, body, ts = new_secret(), b'{"a":1}', 1_700_000_000
    headers = _headers(secret, ts, body)
    now = ts
    if change == "body":
        body = b'{"a":2}'
    elif change == "id":
        headers["Webhook-Id"] = "msg_other"
    elif change == "timestamp":
        headers["Webhook-Timestamp"] = str(ts + 1)
    elif change == "old":
        now = ts + 301
    elif change == "future":
        now = ts - 301
    elif change == "missing":
        del headers["Webhook-Signature"]
    elif change == "version":
        headers["Webhook-Signature"] = headers["Webhook-Signature"].replace("v1,", "v2,")
    with pytest.raises(WebhookVerificationError):
        verify(body, headers, secret, now=now)


def test_kind_patterns_and_backoff() -> None:
    assert kind_matches([], "anything")
    assert kind_matches(["budget.*"], "budget.threshold")
    assert not kind_matches(["budget.*"], "breakglass.invoked")
    assert [backoff(n) for n in (1, 2, 3)] == [5.0, 10.0, 20.0]
    assert backoff(30) == 3600.0

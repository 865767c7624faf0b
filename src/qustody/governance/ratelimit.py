"""Rate limits: token buckets per principal, per tenant, per client address,
and tight ones on sign-in and token endpoints against brute force.

A bucket holds at most ``burst`` tokens and refills at ``rate`` tokens a
second; a request takes one token or is refused with how long until one is
there. A bucket is stored as one number, the time at which it is full again
(the generic cell rate algorithm's form of a token bucket): a bucket whose
time has passed is full, the same as no bucket at all, so idle buckets can be
dropped without changing any answer.

- :class:`MemoryBuckets`: in one process, for every API call. Bounded: past
  ``max_buckets`` the full ones are dropped, then the oldest, so rotating
  keys costs an attacker memory of ours only up to the bound.
- :class:`DatabaseBuckets`: in the database, shared by every API process
  and replica, for the brute-force limits (a few requests a minute, each
  worth one small write transaction).

Times come from a :class:`~qustody.domain.clock.Clock`: in-memory buckets
read ``monotonic()``, shared ones ``now()`` (processes on several machines
share no monotonic clock), so tests drive refills with a ManualClock.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from qustody.audit.recorder import Actor, Target, Transaction, record
from qustody.domain.clock import Clock
from qustody.domain.errors import QustodyError
from qustody.domain.models import Principal, RequestContext
from qustody.domain.vocabulary import Action
from qustody.settings import Settings
from qustody.storage.db import SYSTEM, Database
from qustody.storage.models import RATE_LIMIT_BUCKETS

#: A refused bucket is written to the audit log at most once per this many seconds.
REPORT_WINDOW_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Limit:
    """``burst`` requests at once, then ``rate`` a second, for one class of caller."""

    name: str
    rate: float
    burst: int

    @property
    def interval(self) -> float:
        return 1.0 / self.rate

    @property
    def window(self) -> int:
        """Seconds an empty bucket takes to fill (``w`` of RateLimit-Policy)."""
        return max(1, math.ceil(self.burst / self.rate))

    def describe(self) -> str:
        per = f"{self.rate:g} a second" if self.rate >= 1 else f"{self.rate * 60:g} a minute"
        return f"{self.name} limit ({per}, bursts of {self.burst})"


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    #: Tokens left after this request (allowed) or 0 (refused).
    remaining: int
    #: Seconds until a token is there (0 when allowed).
    retry_after: float
    #: The full-again time the bucket moves to (unchanged when refused).
    full_at: float


def take(full_at: float | None, now: float, limit: Limit) -> Verdict:
    """Take one token from a bucket full again at ``full_at`` (None: a full bucket)."""
    start = now if full_at is None or full_at < now else full_at
    after = start + limit.interval
    capacity = limit.burst * limit.interval
    # A tolerance of a millionth of an interval absorbs float rounding in sums.
    if after - now <= capacity + limit.interval * 1e-6:
        remaining = max(0, math.floor((capacity - (after - now)) / limit.interval + 1e-6))
        return Verdict(True, remaining, 0.0, after)
    return Verdict(False, 0, after - now - capacity, start)


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` (RFC 9110 section 10.2.3): whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds - 1e-9)))


class RateLimited(QustodyError):
    code = "rate_limited"
    status = 429
    title = "Too many requests"

    def __init__(self, limit: Limit, verdict: Verdict, *, what: str) -> None:
        wait = retry_after_header(verdict.retry_after)
        super().__init__(
            f"{what} is over the {limit.describe()}; retry after {wait} seconds "
            "(Retry-After), and spread requests out.",
            extra={
                "limit": limit.name,
                "rate_per_second": f"{limit.rate:g}",
                "burst": limit.burst,
                "retry_after": int(wait),
            },
        )
        self.limit = limit
        self.response_headers = {
            "Retry-After": wait,
            # draft-ietf-httpapi-ratelimit-headers: the policy and what is left of it.
            "RateLimit-Policy": f'"{limit.name}";q={limit.burst};w={limit.window}',
            "RateLimit": f'"{limit.name}";r=0;t={wait}',
        }


class MemoryBuckets:
    """Buckets of one process, at most ``max_buckets`` of them. Thread-safe."""

    def __init__(self, clock: Clock, *, max_buckets: int = 100_000) -> None:
        self._clock = clock
        self._max = max_buckets
        self._lock = threading.Lock()
        #: key -> [full_at, reported_until]; insertion order is age.
        self._buckets: dict[tuple[str, str], list[float]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, limit: Limit, key: str) -> tuple[Verdict, bool]:
        """One token of ``limit`` for ``key``; and, when refused, whether this
        refusal is the first of its report window (to be audited)."""
        now = self._clock.monotonic()
        slot = (limit.name, key)
        with self._lock:
            entry = self._buckets.get(slot)
            verdict = take(None if entry is None else entry[0], now, limit)
            if entry is None:
                entry = [verdict.full_at, 0.0]
                self._buckets[slot] = entry
                if len(self._buckets) > self._max:
                    self._evict(now)
            else:
                entry[0] = verdict.full_at
            report = False
            if not verdict.allowed and entry[1] <= now:
                entry[1] = now + REPORT_WINDOW_SECONDS
                report = True
            return verdict, report

    def peek(self, limit: Limit, key: str) -> Verdict:
        """What :meth:`take` would answer, taking nothing."""
        now = self._clock.monotonic()
        with self._lock:
            entry = self._buckets.get((limit.name, key))
        return take(None if entry is None else entry[0], now, limit)

    def _evict(self, now: float) -> None:
        """Drop full buckets (no answer changes); if that frees too little,
        the oldest, down to half the bound (amortised: a sweep per half-bound
        of new keys)."""
        full = [slot for slot, entry in self._buckets.items() if entry[0] <= now]
        for slot in full:
            del self._buckets[slot]
        excess = len(self._buckets) - self._max // 2
        if len(self._buckets) > self._max * 3 // 4 and excess > 0:
            for slot in list(self._buckets)[:excess]:
                del self._buckets[slot]


@dataclass(frozen=True, slots=True)
class SharedKey:
    limit: Limit
    #: What the bucket counts (``address:203.0.113.9``, ``account:acme/alice``).
    value: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.limit.name}\x00{self.value}".encode()).hexdigest()


class DatabaseBuckets:
    """Buckets in the database, shared by every process (brute-force limits)."""

    #: Every this many checks (per process), full buckets are deleted.
    SWEEP_EVERY = 64

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._checks = 0
        insert = sqlite_insert if db.is_sqlite else pg_insert
        self._insert = insert(RATE_LIMIT_BUCKETS).on_conflict_do_nothing(index_elements=["key"])

    def take(
        self,
        keys: Sequence[SharedKey],
        *,
        actor: Actor,
        request: RequestContext | None,
    ) -> tuple[SharedKey, Verdict] | None:
        """One token from every bucket of ``keys``, or from none: the first
        that refuses, with its verdict. A refusal is audited once per window
        per bucket, in the same transaction."""
        now = self._clock.now().timestamp()
        ordered = sorted(keys, key=lambda k: k.digest)  # one lock order: no deadlocks
        digests = [k.digest for k in ordered]
        self._checks += 1
        with self._db.writing(scope=SYSTEM) as connection:
            connection.execute(self._insert, [{"key": d, "full_at": 0.0} for d in digests])
            rows = {
                r.key: r
                for r in connection.execute(
                    select(RATE_LIMIT_BUCKETS)
                    .where(RATE_LIMIT_BUCKETS.c.key.in_(digests))
                    .with_for_update()
                )
            }
            verdicts = [(k, take(rows[k.digest].full_at, now, k.limit)) for k in ordered]
            refused = next(((k, v) for k, v in verdicts if not v.allowed), None)
            if refused is None:
                for key, verdict in verdicts:
                    connection.execute(
                        update(RATE_LIMIT_BUCKETS)
                        .where(RATE_LIMIT_BUCKETS.c.key == key.digest)
                        .values(full_at=verdict.full_at)
                    )
                if self._checks % self.SWEEP_EVERY == 0:
                    connection.execute(
                        delete(RATE_LIMIT_BUCKETS).where(RATE_LIMIT_BUCKETS.c.full_at < now)
                    )
                return None
            key, verdict = refused
            reported = rows[key.digest].reported_until
            if reported is None or reported <= now:
                connection.execute(
                    update(RATE_LIMIT_BUCKETS)
                    .where(RATE_LIMIT_BUCKETS.c.key == key.digest)
                    .values(reported_until=now + REPORT_WINDOW_SECONDS)
                )
                _record_refusal(connection, key.limit, actor, None, request)
            return refused


def _record_refusal(
    transaction: Transaction,
    limit: Limit,
    actor: Actor,
    tenant_id: str | None,
    request: RequestContext | None,
) -> None:
    """``ratelimit:exceed``: which limit, never the key's value (an account
    name, an address: the request context carries the address)."""
    record(
        transaction,
        Action.RATELIMIT_EXCEED,
        actor=actor,
        outcome="denied",
        target=Target("ratelimit", limit.name, tenant_id),
        request=request,
        reason=f"over the {limit.describe()}; further refusals in the next "
        f"{REPORT_WINDOW_SECONDS:g} s are not recorded",
    )


@dataclass(frozen=True, slots=True)
class Limits:
    principal: Limit
    tenant: Limit
    address: Limit
    sign_in: Limit


class RateLimits:
    """The limits the API applies (:mod:`qustody.api.ratelimit` calls these).

    ``processes``: API processes sharing the load; each process's in-memory
    buckets get that share of the rate and burst, so N processes together
    allow what the settings say (a client whose requests all reach one
    process gets 1/N of it: the stricter error).
    """

    def __init__(
        self,
        db: Database,
        clock: Clock,
        limits: Limits,
        *,
        processes: int = 1,
        max_buckets: int = 100_000,
    ) -> None:
        self._db = db
        self.limits = limits

        def share(limit: Limit) -> Limit:
            if processes <= 1:
                return limit
            return Limit(limit.name, limit.rate / processes, max(1, limit.burst // processes))

        self._principal = share(limits.principal)
        self._tenant = share(limits.tenant)
        self._address = share(limits.address)
        self.memory = MemoryBuckets(clock, max_buckets=max_buckets)
        self.shared = DatabaseBuckets(db, clock)

    # -- in memory (every request) ----------------------------------------------------

    def charge_caller(self, principal: Principal) -> tuple[RateLimited, bool] | None:
        """One request of an authenticated ``principal``: its own bucket and
        its tenant's. Returns the refusal (and whether to audit it) or None."""
        verdict, report = self.memory.take(self._principal, principal.id)
        if not verdict.allowed:
            return RateLimited(self._principal, verdict, what="this principal"), report
        verdict, report = self.memory.take(self._tenant, principal.tenant_id)
        if not verdict.allowed:
            return RateLimited(self._tenant, verdict, what="this tenant"), report
        return None

    def charge_address(self, address: str) -> tuple[RateLimited, bool] | None:
        """One anonymous request (or failed authentication) from ``address``."""
        verdict, report = self.memory.take(self._address, address)
        if verdict.allowed:
            return None
        return RateLimited(self._address, verdict, what="this client address"), report

    def address_exhausted(self, address: str) -> RateLimited | None:
        """Refuse, without taking, an address whose failures used its bucket up."""
        verdict = self.memory.peek(self._address, address)
        if verdict.allowed:
            return None
        return RateLimited(self._address, verdict, what="this client address")

    def report(
        self, error: RateLimited, *, principal: Principal | None, request: RequestContext
    ) -> None:
        """Record a refusal (called once per bucket per window)."""
        actor = Actor.of(principal) if principal is not None else Actor("anonymous")
        tenant_id = principal.tenant_id if principal is not None else None
        with self._db.writing(scope=SYSTEM) as connection:
            _record_refusal(connection, error.limit, actor, tenant_id, request)

    # -- shared (sign-in and token endpoints) ------------------------------------------

    def charge_sign_in(
        self, request: RequestContext, *, account: str | None = None
    ) -> RateLimited | None:
        """One attempt at a sign-in or token endpoint from the request's
        address, and against ``account`` (``tenant/name``) when one is named:
        spreading attempts over many addresses does not help against one account."""
        limit = self.limits.sign_in
        keys = [SharedKey(limit, f"address:{request.client_addr or '-'}")]
        if account is not None:
            keys.append(SharedKey(limit, f"account:{account.casefold()}"))
        refused = self.shared.take(keys, actor=Actor("anonymous"), request=request)
        if refused is None:
            return None
        key, verdict = refused
        what = (
            "sign-in to this account"
            if key.value.startswith("account:")
            else ("sign-in from this client address")
        )
        return RateLimited(limit, verdict, what=what)


def limits_from(settings: Settings) -> Limits:
    """The :class:`Limits` of a :class:`~qustody.settings.Settings`."""

    def limit(name: str, label: str) -> Limit:
        return Limit(
            label,
            float(getattr(settings, f"rate_limit_{name}_per_second")),
            int(getattr(settings, f"rate_limit_{name}_burst")),
        )

    return Limits(
        principal=limit("principal", "principal"),
        tenant=limit("tenant", "tenant"),
        address=limit("address", "address"),
        sign_in=limit("sign_in", "sign-in"),
    )

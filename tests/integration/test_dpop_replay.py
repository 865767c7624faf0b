"""A DPoP proof is accepted once, across verifiers (API processes) and
concurrent requests, on real SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime

import pytest
from joserfc import jws
from joserfc.jwk import ECKey
from sqlalchemy import func, select

from qustody.domain.errors import QustodyError
from qustody.identity.dpop import DpopVerifier, NonceSource
from qustody.identity.errors import ReplayedDpopProof, UseDpopNonce
from qustody.storage.db import Database
from qustody.storage.models import DPOP_PROOFS

URL = "https://gateway.example/v1/jobs"


def proof(key: ECKey, jti: str, iat: float | None = None) -> str:
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.as_dict(private=False)}
    claims = f'{{"jti":"{jti}","htm":"GET","htu":"{URL}","iat":{int(iat or time.time())}}}'
    return jws.serialize_compact(header, claims.encode(), key, algorithms=["ES256"])


def spend(verifier: DpopVerifier, presented: str) -> str:
    return verifier.verify(presented, method="GET", url=URL, access_token=None, bound_jkt=None)


def test_a_proof_is_spent_once_and_a_new_jti_passes(db: Database) -> None:
    key = ECKey.generate_key("P-256")
    verifier = DpopVerifier(db)
    once = proof(key, "a")
    assert spend(verifier, once) == key.thumbprint()  # type: ignore[arg-type]
    with pytest.raises(ReplayedDpopProof) as refused:
        spend(verifier, once)
    assert (refused.value.status, refused.value.code) == (401, "dpop_proof_replayed")
    assert spend(verifier, proof(key, "b")) == key.thumbprint()  # type: ignore[arg-type]
    # The same jti under another key is another proof.
    other = ECKey.generate_key("P-256")
    assert spend(verifier, proof(other, "a")) == other.thumbprint()  # type: ignore[arg-type]


def test_a_replay_is_refused_by_another_process_and_under_a_race(database_url: str) -> None:
    """Verifiers on separate engines stand for API processes; twelve threads
    present one proof at the same moment and exactly one gets through."""
    first, second = Database(database_url), Database(database_url)
    first.migrate()
    try:
        verifiers = [DpopVerifier(first), DpopVerifier(second)]
        key = ECKey.generate_key("P-256")
        shared = proof(key, "raced")
        start = threading.Barrier(12)
        outcomes: list[str] = []
        lock = threading.Lock()

        def present(index: int) -> None:
            start.wait()
            try:
                verifiers[index % 2].verify(
                    shared, method="GET", url=URL, access_token=None, bound_jkt=None
                )
                outcome = "accepted"
            except ReplayedDpopProof:
                outcome = "replayed"
            except QustodyError as error:  # a busy database would show here
                outcome = error.code
            with lock:
                outcomes.append(outcome)

        threads = [threading.Thread(target=present, args=(i,)) for i in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(outcomes) == ["accepted"] + ["replayed"] * 11
    finally:
        first.dispose()
        second.dispose()


def test_expired_proofs_are_cleared(db: Database) -> None:
    key = ECKey.generate_key("P-256")
    clock = [time.time()]
    verifier = DpopVerifier(db, clock=lambda: clock[0])
    spend(verifier, proof(key, "old", clock[0]))
    clock[0] += verifier.max_age_seconds + 61  # past the proof's life and the purge interval
    spend(verifier, proof(key, "new", clock[0]))
    with db.read() as session:
        left = session.execute(select(DPOP_PROOFS.c.jti)).scalars().all()
        assert left == ["new"]
        latest = session.scalar(select(func.max(DPOP_PROOFS.c.expires_at)))
    assert latest is not None
    expected = datetime.fromtimestamp(int(clock[0]) + verifier.max_age_seconds, UTC)
    assert latest.replace(tzinfo=UTC) == expected


def test_server_nonces_are_required_when_configured(db: Database) -> None:
    """RFC 9449 section 8: a proof without the current nonce is refused with a
    fresh one; nonces of this window and the last are accepted, older ones not."""
    clock = [1_800_000_000.0]
    nonces = NonceSource(b"k" * 32, window_seconds=300, clock=lambda: clock[0])
    verifier = DpopVerifier(db, nonces=nonces, clock=lambda: clock[0])
    key = ECKey.generate_key("P-256")

    def with_nonce(jti: str, nonce: str | None) -> str:
        header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.as_dict(private=False)}
        claims: dict[str, object] = {"jti": jti, "htm": "GET", "htu": URL, "iat": int(clock[0])}
        if nonce is not None:
            claims["nonce"] = nonce
        return jws.serialize_compact(header, json.dumps(claims).encode(), key, algorithms=["ES256"])

    with pytest.raises(UseDpopNonce) as asked:
        spend(verifier, with_nonce("a", None))
    nonce = asked.value.nonce
    assert asked.value.response_headers == {"DPoP-Nonce": nonce}
    assert asked.value.www_authenticate.startswith('DPoP error="use_dpop_nonce"')
    assert spend(verifier, with_nonce("b", nonce)) == key.thumbprint()
    clock[0] += 300  # the next window: the last one's nonce still passes
    assert spend(verifier, with_nonce("c", nonce)) == key.thumbprint()
    clock[0] += 300  # two windows on: it no longer does
    with pytest.raises(UseDpopNonce):
        spend(verifier, with_nonce("d", nonce))
    other = NonceSource(b"x" * 32, clock=lambda: clock[0])
    with pytest.raises(UseDpopNonce):
        spend(verifier, with_nonce("e", other.current()))
    # The refused proofs were not spent: the same jti passes with a good nonce.
    assert spend(verifier, with_nonce("a", nonces.current())) == key.thumbprint()

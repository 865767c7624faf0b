"""The Merkle tree of the audit log (``qustody.audit.merkle``), in memory.

- ``merkle``: with 10^6 audit-event-sized leaves, the rate at which a
  verifier recomputes the tree from the events (leaf hashing and root), and
  the time to build and check an inclusion proof and a consistency proof.
  Goals: >= 200,000 events/s verified; an inclusion proof < 1 ms.

This measures the tree itself, in memory; the stored log (integration,
checkpoints, proofs from the database, export and ``qustody audit verify``) is
the ``auditlog`` benchmark in ``benchmarks/micro.py``.
"""

from __future__ import annotations

import json
import random
import time

from benchmarks.harness import Config, Measurement, latency, rate
from qustody.audit.merkle import (
    MerkleTree,
    leaf_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)


def _events(count: int) -> list[bytes]:
    """``count`` canonical JSON events shaped like the gateway's (about 400 bytes)."""
    template = {
        "at": "2026-11-21T22:37:29.123456Z",
        "event_type": "job:submit",
        "tenant_id": "ten_01jd5k3m2n4p5q6r7s8t9v0w1x",
        "actor_id": "prn_01jd5k3m2n4p5q6r7s8t9v0w1x",
        "auth_method": "qustody-token",
        "client_addr": "10.1.2.3",
        "resource_type": "job",
        "decision": "allow",
        "policy_ids": "developer-submit",
        "outcome": "success",
        "payload_sha256": "9f" * 32,
    }
    return [
        json.dumps({**template, "seq": i, "job_id": f"job_{i:026d}"}, sort_keys=True).encode()
        for i in range(count)
    ]


def bench_merkle(config: Config) -> list[Measurement]:
    size = config.scale(1_000_000, 2_000)
    probes = config.scale(2_000, 20)
    events = _events(size)
    t0 = time.perf_counter()
    root = root_of([leaf_hash(e) for e in events])
    verified = time.perf_counter() - t0
    tree = MerkleTree([leaf_hash(e) for e in events])
    assert tree.root() == root
    rng = random.Random(9162)  # noqa: S311 - reproducible probes, not a secret
    prove_ms: list[float] = []
    check_ms: list[float] = []
    consistency_ms: list[float] = []
    for _ in range(probes):
        index = rng.randrange(size)
        t0 = time.perf_counter()
        path = tree.inclusion_proof(index)
        t1 = time.perf_counter()
        verify_inclusion(index, size, leaf_hash(events[index]), path, root)
        t2 = time.perf_counter()
        old = rng.randrange(1, size)
        proof = tree.consistency_proof(old)
        verify_consistency(old, size, tree.root(old), root, proof)
        t3 = time.perf_counter()
        prove_ms.append((t1 - t0) * 1000)
        check_ms.append((t2 - t1) * 1000)
        consistency_ms.append((t3 - t2) * 1000)
    n = f"{size:,} events"
    return [
        rate(
            "merkle",
            f"{n}: recompute leaf hashes and root (full verification of the tree)",
            size,
            verified,
            "events/s",
            at_least=200_000,
        ),
        *latency("merkle", f"{n}: build an inclusion proof", prove_ms, goals={"p99": 1.0}),
        *latency("merkle", f"{n}: check an inclusion proof", check_ms),
        *latency("merkle", f"{n}: build and check a consistency proof", consistency_ms),
    ]


BENCHMARKS = {"merkle": bench_merkle}

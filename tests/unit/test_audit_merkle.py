"""The RFC 9162 Merkle tree against published vectors and an independent
implementation (pymerkle) as an oracle, and every way a proof can be bent."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pymerkle
import pytest

from qustody.audit.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    ProofError,
    consistency_path,
    inclusion_path,
    leaf_hash,
    root_from_inclusion,
    root_of,
    split,
    verify_consistency,
    verify_inclusion,
)

# The Certificate Transparency reference data (RFC 6962 test vectors, as
# published with transparency-dev/merkle): eight leaves and the root of every
# prefix of them.
LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
ROOTS = [
    bytes.fromhex(h)
    for h in (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]


def _h(*hexes: str) -> list[bytes]:
    return [bytes.fromhex(h) for h in hexes]


# (leaf index, tree size, path) and (old size, new size, path), same source.
INCLUSION = [
    (
        0,
        8,
        _h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        5,
        8,
        _h(
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (2, 3, _h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (
        1,
        5,
        _h(
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
]
CONSISTENCY = [
    (
        1,
        8,
        _h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        6,
        8,
        _h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (
        2,
        5,
        _h(
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
    (
        6,
        7,
        _h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
]

REFERENCE = MerkleTree([leaf_hash(d) for d in LEAVES])
OTHER = hashlib.sha256(b"some other hash").digest()


def test_roots_match_the_reference_for_every_size() -> None:
    assert ROOTS[0] == EMPTY_ROOT
    for size in range(len(LEAVES) + 1):
        assert REFERENCE.root(size) == ROOTS[size]
        assert root_of([leaf_hash(d) for d in LEAVES[:size]]) == ROOTS[size]


def test_the_split_is_the_largest_power_of_two_below() -> None:
    # Not the midpoint: a midpoint split builds a tree nobody else agrees with.
    assert [split(n) for n in (2, 3, 4, 5, 6, 7, 8, 9, 1000)] == [1, 2, 2, 4, 4, 4, 4, 8, 512]
    assert split(2**40 + 1) == 2**40


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_inclusion_proofs_match_the_reference(index: int, size: int, path: list[bytes]) -> None:
    assert REFERENCE.inclusion_proof(index, size) == path
    verify_inclusion(index, size, leaf_hash(LEAVES[index]), path, ROOTS[size])


@pytest.mark.parametrize(("old", "size", "path"), CONSISTENCY)
def test_consistency_proofs_match_the_reference(old: int, size: int, path: list[bytes]) -> None:
    assert REFERENCE.consistency_proof(old, size) == path
    verify_consistency(old, size, ROOTS[old], ROOTS[size], path)


def _verifies(check: Callable[..., None], *args: object) -> bool:
    try:
        check(*args)
    except ProofError:
        return False
    return True


def _bent_inclusion(index: int, size: int, path: list[bytes], leaf: bytes, root: bytes):  # type: ignore[no-untyped-def]
    yield "index - 1", index - 1, size, leaf, path, root
    yield "index + 1", index + 1, size, leaf, path, root
    yield "index ^ 2", index ^ 2, size, leaf, path, root
    yield "size * 2", index, size * 2, leaf, path, root
    yield "size // 2", index, size // 2, leaf, path, root
    yield "wrong leaf", index, size, OTHER, path, root
    yield "empty root", index, size, leaf, path, EMPTY_ROOT
    yield "other root", index, size, leaf, path, OTHER
    yield "trailing root", index, size, leaf, [*path, root], root
    yield "preceding root", index, size, leaf, [root, *path], root
    yield "short hash", index, size, leaf, [*path[:-1], b"x"] if path else [b"x"], root
    for i in range(len(path)):
        flipped = list(path)
        flipped[i] = bytes([flipped[i][0] ^ 8]) + flipped[i][1:]
        yield f"bit flip in path[{i}]", index, size, leaf, flipped, root
    if path:
        yield "removed component", index, size, leaf, path[:-1], root
    if len(path) > 1:
        yield "inserted component", index, size, leaf, [path[0], OTHER, *path[1:]], root


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_bent_inclusion_proofs_are_refused(index: int, size: int, path: list[bytes]) -> None:
    bent = _bent_inclusion(index, size, path, leaf_hash(LEAVES[index]), ROOTS[size])
    accepted = [
        what
        for what, i, n, leaf, p, root in bent
        if _verifies(verify_inclusion, i, n, leaf, p, root)
    ]
    assert accepted == []


@pytest.mark.parametrize(("old", "size", "path"), CONSISTENCY)
def test_bent_consistency_proofs_are_refused(old: int, size: int, path: list[bytes]) -> None:
    r1, r2 = ROOTS[old], ROOTS[size]
    bent = [
        ("old - 1", old - 1, size, r1, r2, path),
        ("old + 1", old + 1, size, r1, r2, path),
        ("old ^ 2", old ^ 2, size, r1, r2, path),
        ("size * 2", old, size * 2, r1, r2, path),
        ("size // 2", old, size // 2, r1, r2, path),
        ("wrong old root", old, size, OTHER, r2, path),
        ("wrong new root", old, size, r1, OTHER, path),
        ("swapped roots", old, size, r2, r1, path),
        ("empty proof", old, size, r1, r2, []),
        ("trailing old root", old, size, r1, r2, [*path, r1]),
        ("trailing new root", old, size, r1, r2, [*path, r2]),
        ("preceding old root", old, size, r1, r2, [r1, *path]),
        ("preceding path[0]", old, size, r1, r2, [path[0], *path]),
        ("truncated", old, size, r1, r2, path[:-1]),
    ]
    for i in range(len(path)):
        flipped = list(path)
        flipped[i] = bytes([flipped[i][0] ^ 16]) + flipped[i][1:]
        bent.append((f"bit flip in path[{i}]", old, size, r1, r2, flipped))
    accepted = [
        what
        for what, m, n, a, b, p in bent
        if (m, n, a, b, p) != (old, size, r1, r2, path)  # a bend that changed nothing
        and _verifies(verify_consistency, m, n, a, b, p)
    ]
    assert accepted == []


def test_edge_sizes() -> None:
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 5, EMPTY_ROOT, ROOTS[5], [])
    verify_consistency(3, 3, ROOTS[3], ROOTS[3], [])
    with pytest.raises(ProofError):
        verify_consistency(3, 3, ROOTS[3], ROOTS[4], [])  # a fork at the same size
    with pytest.raises(ProofError):
        verify_consistency(3, 3, ROOTS[3], ROOTS[3], [EMPTY_ROOT])
    with pytest.raises(ProofError):
        verify_consistency(4, 3, ROOTS[4], ROOTS[3], [])  # time runs forwards
    verify_inclusion(0, 1, leaf_hash(LEAVES[0]), [], ROOTS[1])
    for index, size in ((0, 0), (1, 1), (-1, 4)):
        with pytest.raises(ProofError):
            root_from_inclusion(index, size, leaf_hash(b""), [])
    with pytest.raises(ProofError):
        REFERENCE.inclusion_proof(8, 8)
    with pytest.raises(ProofError):
        REFERENCE.consistency_proof(9, 8)


def test_agrees_with_pymerkle_on_every_root_and_proof() -> None:
    """An independent implementation builds the same trees: every root, every
    inclusion path, and our consistency proofs check out against its roots."""
    oracle = pymerkle.InmemoryTree(algorithm="sha256")
    data = [i.to_bytes(2, "big") * (i % 5) for i in range(70)]
    for d in data:
        oracle.append_entry(d)
    tree = MerkleTree([leaf_hash(d) for d in data])
    for size in range(1, len(data) + 1):
        root = oracle.get_root(size)
        assert tree.root(size) == root
        for index in range(size):
            # pymerkle counts from 1, and its path starts with the leaf itself.
            expected = oracle.prove_inclusion(index + 1, size).path[1:]
            path = tree.inclusion_proof(index, size)
            assert path == expected
            verify_inclusion(index, size, leaf_hash(data[index]), path, root)
        for old in range(size + 1):
            proof = tree.consistency_proof(old, size)
            verify_consistency(old, size, oracle.get_root(old) if old else EMPTY_ROOT, root, proof)


def test_proofs_from_any_subtree_source() -> None:
    """The path builders need only a ``subtree(start, end)`` function: the
    database-backed log supplies its own."""
    data = [leaf_hash(bytes([i])) for i in range(37)]

    def naive(start: int, end: int) -> bytes:
        return root_of(data[start:end])

    tree = MerkleTree(data)
    for size in (1, 2, 7, 16, 37):
        for index in range(size):
            assert inclusion_path(index, size, naive) == tree.inclusion_proof(index, size)
        for old in range(size + 1):
            assert consistency_path(old, size, naive) == tree.consistency_proof(old, size)

"""The Merkle tree of RFC 9162 (Certificate Transparency 2.0), section 2.1.

Pure functions, no I/O: the gateway builds proofs from stored subtree hashes,
and the offline verifier (``qustody audit verify``) and witnesses check them
with nothing but this module and a public key.

- A leaf hashes as ``SHA-256(0x00 || data)``, an interior node as
  ``SHA-256(0x01 || left || right)``: the prefixes keep a leaf from ever
  passing for a node (second-preimage resistance).
- A tree of ``n > 1`` leaves splits at ``k``, the largest power of two below
  ``n``; the empty tree's hash is ``SHA-256("")``.
- Proofs are built from any ``subtree(start, end)`` function returning the
  hash of leaves ``[start, end)``, so one algorithm serves the in-memory
  :class:`MerkleTree` and the database-backed log alike.

Leaf indexes are 0-based.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
_LEAF = b"\x00"
_NODE = b"\x01"

#: The hash of leaves ``[start, end)`` of some tree.
Subtree = Callable[[int, int], bytes]
#: The stored hash of complete subtree ``(level, index)``: leaves
#: ``[index * 2**level, (index + 1) * 2**level)``.
Node = Callable[[int, int], bytes]


class ProofError(ValueError):
    """A proof does not verify, or was asked for with impossible sizes."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(_LEAF + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


def split(n: int) -> int:
    """The largest power of two strictly below ``n`` (``n >= 2``)."""
    if n < 2:
        raise ValueError(f"a tree of {n} leaves does not split")
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """The tree hash of ``leaf_hashes`` (already hashed with :func:`leaf_hash`)."""
    if not leaf_hashes:
        return EMPTY_ROOT
    # Fold level by level; an odd node at the right edge waits for the level
    # where it meets its left sibling, which is exactly the RFC's split rule.
    stack: list[tuple[int, bytes]] = []  # (height, hash) of complete subtrees
    for h in leaf_hashes:
        height, value = 0, h
        while stack and stack[-1][0] == height:
            value = node_hash(stack.pop()[1], value)
            height += 1
        stack.append((height, value))
    value = stack.pop()[1]
    while stack:
        value = node_hash(stack.pop()[1], value)
    return value


def subtree_hash(node: Node, start: int, end: int) -> bytes:
    """The hash of leaves ``[start, end)`` from complete-subtree hashes.

    A range that is itself a complete, aligned subtree is one lookup; any
    other splits as the RFC does, so a proof costs O(log n) lookups.
    """
    n = end - start
    if n == 0:
        return EMPTY_ROOT
    if n & (n - 1) == 0 and start % n == 0:
        return node(n.bit_length() - 1, start // n)
    k = split(n)
    return node_hash(subtree_hash(node, start, start + k), subtree_hash(node, start + k, end))


# -- building proofs ------------------------------------------------------------------


def inclusion_path(index: int, size: int, subtree: Subtree) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of the first ``size`` leaves."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size} leaves")
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = split(end - start)
        if index < start + k:
            path.append(subtree(start + k, end))
            end = start + k
        else:
            path.append(subtree(start, start + k))
            start += k
    path.reverse()  # leaf to root
    return path


def consistency_path(old: int, size: int, subtree: Subtree) -> list[bytes]:
    """The proof that the tree of ``old`` leaves is a prefix of the one of ``size``."""
    if not 0 <= old <= size:
        raise ProofError(f"a tree of {old} leaves cannot grow into one of {size}")
    if old in (0, size):
        return []
    path: list[bytes] = []
    start, end, whole = 0, size, True
    # Descend towards the old tree's right edge, collecting the siblings.
    while True:
        n = end - start
        m = old - start
        if m == n:
            if not whole:
                path.append(subtree(start, end))
            break
        k = split(n)
        if m <= k:
            path.append(subtree(start + k, end))
            end = start + k
        else:
            path.append(subtree(start, start + k))
            start += k
            whole = False
    path.reverse()
    return path


# -- checking proofs --------------------------------------------------------------------


def _check_hashes(*hashes: bytes) -> None:
    for h in hashes:
        if len(h) != HASH_SIZE:
            raise ProofError(f"a hash is {len(h)} bytes long; SHA-256 hashes are {HASH_SIZE}")


def root_from_inclusion(index: int, size: int, leaf: bytes, path: Sequence[bytes]) -> bytes:
    """The root that ``path`` proves ``leaf`` (a leaf hash) at ``index`` to be under."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size} leaves")
    _check_hashes(leaf, *path)
    fn, sn = index, size - 1
    r = leaf
    for p in path:
        if sn == 0:
            raise ProofError("the inclusion proof is longer than the tree is high")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the inclusion proof is shorter than the tree is high")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, path: Sequence[bytes], root: bytes
) -> None:
    """Raise :class:`ProofError` unless ``path`` proves ``leaf`` at ``index`` under ``root``."""
    _check_hashes(root)
    if root_from_inclusion(index, size, leaf, path) != root:
        raise ProofError(f"leaf {index} is not in the tree of {size} leaves with that root")


def verify_consistency(
    old: int, size: int, old_root: bytes, root: bytes, path: Sequence[bytes]
) -> None:
    """Raise :class:`ProofError` unless ``path`` proves the tree of ``old``
    leaves with ``old_root`` to be a prefix of the tree of ``size`` with ``root``."""
    if not 0 <= old <= size:
        raise ProofError(f"a tree of {old} leaves cannot grow into one of {size}")
    if old == size:
        if path:
            raise ProofError("a tree is consistent with itself by an empty proof")
        if old_root != root:
            raise ProofError(f"two different roots for the same size {size}")
        return
    if old == 0:
        if path:
            raise ProofError("the empty tree is consistent with any tree by an empty proof")
        return
    if not path:
        raise ProofError(f"an empty proof cannot show {old} leaves growing into {size}")
    _check_hashes(old_root, root, *path)
    nodes = list(path)
    if old & (old - 1) == 0:  # the old tree is a complete subtree: its root starts the path
        nodes.insert(0, old_root)
    fn, sn = old - 1, size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = nodes[0]
    for c in nodes[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is longer than the tree is high")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the consistency proof is shorter than the tree is high")
    if fr != old_root:
        raise ProofError(f"the proof does not lead to the root of the tree of {old} leaves")
    if sr != root:
        raise ProofError(f"the proof does not lead to the root of the tree of {size} leaves")


# -- an in-memory tree --------------------------------------------------------------------


class MerkleTree:
    """An append-only tree that keeps every complete subtree's hash.

    ``levels[h][i]`` is the hash of leaves ``[i * 2**h, (i + 1) * 2**h)``, so
    any proof needs O(log n) lookups and a few hashes at the right edge.
    """

    def __init__(self, leaf_hashes: Sequence[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        for h in leaf_hashes:
            self.append(h)

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def append(self, leaf: bytes) -> int:
        """Add a leaf hash; returns its index."""
        _check_hashes(leaf)
        index = self.size
        self._levels[0].append(leaf)
        height, i = 0, index
        while i & 1:  # a right child completes its parent
            level = self._levels[height]
            if len(self._levels) == height + 1:
                self._levels.append([])
            self._levels[height + 1].append(node_hash(level[i - 1], level[i]))
            height, i = height + 1, i >> 1
        return index

    def subtree(self, start: int, end: int) -> bytes:
        """The hash of leaves ``[start, end)``."""
        if not 0 <= start <= end <= self.size:
            raise ProofError(f"leaves [{start}, {end}) are not in a tree of {self.size}")
        return subtree_hash(self.node, start, end)

    def node(self, level: int, index: int) -> bytes:
        return self._levels[level][index]

    def root(self, size: int | None = None) -> bytes:
        return self.subtree(0, self.size if size is None else size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_path(index, self.size if size is None else size, self.subtree)

    def consistency_proof(self, old: int, size: int | None = None) -> list[bytes]:
        return consistency_path(old, self.size if size is None else size, self.subtree)


class Frontier:
    """The right edge of a tree: the complete subtrees that make up its first ``size`` leaves.

    Enough to append leaves and compute the root without the rest of the
    tree: the integrator loads it (at most one node per level), appends new
    leaves and stores the nodes each append completes.
    """

    def __init__(self, size: int, node: Node) -> None:
        self.size = size
        # (level, hash), highest level first: one per set bit of ``size``.
        self._edge = [
            (level, node(level, (size >> level) - 1))
            for level in reversed(range(size.bit_length()))
            if size >> level & 1
        ]

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add a leaf hash; returns the ``(level, index, hash)`` nodes it completes."""
        _check_hashes(leaf)
        index = self.size
        completed = [(0, index, leaf)]
        level, value, i = 0, leaf, index
        while i & 1:  # a right child completes its parent
            left_level, left = self._edge.pop()
            if left_level != level:
                raise ProofError(f"the right edge does not fit a tree of {self.size} leaves")
            value = node_hash(left, value)
            level, i = level + 1, i >> 1
            completed.append((level, i, value))
        self._edge.append((level, value))
        self.size += 1
        return completed

    def copy(self) -> Frontier:
        twin = Frontier(0, _no_nodes)
        twin.size, twin._edge = self.size, list(self._edge)
        return twin

    def root(self) -> bytes:
        if not self._edge:
            return EMPTY_ROOT
        value = self._edge[-1][1]
        for _, left in reversed(self._edge[:-1]):
            value = node_hash(left, value)
        return value


def _no_nodes(level: int, index: int) -> bytes:
    raise ProofError("an empty tree has no nodes")

"""The RFC 9162 (Certificate Transparency 2.0) Merkle tree, section 2.1, over SHA-256.

A leaf's hash is SHA-256(0x00 || content), an interior node's SHA-256(0x01 || left || right), and the Merkle Tree
Hash (MTH) of n > 1 leaves splits them at k, the largest power of two below n: MTH(D[0:k]) and MTH(D[k:n]). The
tree of no leaves hashes to SHA-256 of the empty string.

`MerkleTree` keeps every perfect subtree's hash (level h holds the hashes of the aligned runs of 2^h leaves), so
the root of any prefix, an inclusion proof (2.1.3.1) and a consistency proof (2.1.4.1) cost O(log n) hashes.
`CompactRange` keeps only the perfect subtrees a tree of its size splits into (its "frontier"): enough to append
and to compute the root. `verify_inclusion` and `verify_consistency` are the RFC's verification algorithms
(2.1.3.2 and 2.1.4.2), step by step, preceded by the checks on sizes and proof lengths that make them total.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_sha256 = hashlib.sha256


class ProofError(ValueError):
    """A proof, root or size that does not check out; the message says which check failed."""


def leaf_hash(content: bytes) -> bytes:
    """SHA-256(0x00 || content): the hash of one entry (RFC 9162, 2.1.1)."""
    return _sha256(_LEAF_PREFIX + content).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the hash of an interior node (RFC 9162, 2.1.1)."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def _split(size: int) -> int:
    """k, the largest power of two smaller than size (size > 1): where MTH splits size leaves."""
    return 1 << ((size - 1).bit_length() - 1)


def _fold(subtree_roots: Sequence[bytes]) -> bytes:
    """The root of a tree given the roots of the perfect subtrees it splits into, left (largest) to right."""
    if not subtree_roots:
        return EMPTY_ROOT
    root = subtree_roots[-1]
    for left in reversed(subtree_roots[:-1]):
        root = _sha256(_NODE_PREFIX + left + root).digest()
    return root


def _check_hash(value: bytes, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        length = len(value) if isinstance(value, (bytes, bytearray)) else type(value).__name__
        raise ProofError(f"{what} is not a {HASH_SIZE}-byte SHA-256 hash (got {length})")


def _check_size(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProofError(f"{what} must be a non-negative integer, not {value!r}")


class CompactRange:
    """The frontier of a tree of `size` leaves: the roots of the perfect subtrees it splits into (one per set bit
    of size, largest first). Appending a leaf merges the subtrees that become complete; root() folds them."""

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        _check_size(size, "compact range size")
        if len(hashes) != size.bit_count():
            raise ProofError(
                f"a compact range of size {size} holds {size.bit_count()} hashes, not {len(hashes)}"
            )
        for position, value in enumerate(hashes):
            _check_hash(value, f"compact range hash {position}")
        self.size = size
        self._hashes = list(hashes)

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """The perfect subtrees' roots, left to right."""
        return tuple(self._hashes)

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash at the right."""
        _check_hash(leaf, "leaf hash")
        hashes = self._hashes
        hashes.append(leaf)
        completed = self.size
        while completed & 1:
            right = hashes.pop()
            hashes[-1] = _sha256(_NODE_PREFIX + hashes[-1] + right).digest()
            completed >>= 1
        self.size += 1

    def root(self) -> bytes:
        """MTH of the leaves appended so far."""
        return _fold(self._hashes)

    def to_bytes(self) -> bytes:
        """The hashes concatenated, left to right (what a checkpoint row stores as its frontier)."""
        return b"".join(self._hashes)

    @classmethod
    def from_bytes(cls, size: int, data: bytes) -> CompactRange:
        """The compact range of a tree of `size` leaves from `to_bytes()`; ProofError if the length does not fit."""
        _check_size(size, "compact range size")
        if len(data) != HASH_SIZE * size.bit_count():
            raise ProofError(
                f"a compact range of size {size} is {HASH_SIZE * size.bit_count()} bytes, not {len(data)}"
            )
        return cls(size, [data[offset : offset + HASH_SIZE] for offset in range(0, len(data), HASH_SIZE)])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactRange):
            return NotImplemented
        return self.size == other.size and self._hashes == other._hashes

    def __repr__(self) -> str:
        return f"CompactRange(size={self.size}, root={self.root().hex()})"


class MerkleTree:
    """An RFC 9162 tree over leaf hashes that keeps every level of perfect-subtree hashes: levels[h][i] is the
    root of leaves i * 2^h .. (i + 1) * 2^h - 1. Prefix roots and proofs read O(log n) of them."""

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        level = list(leaves)
        if set(map(type, level)) - {bytes} or set(map(len, level)) - {HASH_SIZE}:
            for position, value in enumerate(level):
                _check_hash(value, f"leaf hash {position}")
        self._levels: list[list[bytes]] = [level]
        while len(level) > 1:
            pairs = iter(level)  # an odd last hash has no sibling yet: zip leaves it out
            level = [
                _sha256(_NODE_PREFIX + left + right).digest()
                for left, right in zip(pairs, pairs, strict=False)
            ]
            self._levels.append(level)

    @property
    def size(self) -> int:
        """The number of leaves."""
        return len(self._levels[0])

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash at the right, completing the perfect subtrees it closes."""
        _check_hash(leaf, "leaf hash")
        levels = self._levels
        levels[0].append(leaf)
        height = 0
        while len(levels[height]) % 2 == 0:
            below = levels[height]
            if height + 1 == len(levels):
                levels.append([])
            levels[height + 1].append(_sha256(_NODE_PREFIX + below[-2] + below[-1]).digest())
            height += 1

    def _size_or_all(self, size: int | None) -> int:
        if size is None:
            return self.size
        _check_size(size, "tree size")
        if size > self.size:
            raise ProofError(f"tree size {size} is larger than the tree ({self.size} leaves)")
        return size

    def _subtrees(self, start: int, end: int) -> list[bytes]:
        """The roots of the perfect subtrees that leaves start..end-1 split into, largest first; start must be a
        multiple of the smallest power of two >= end - start (true of every range MTH's recursion visits)."""
        roots = []
        count = end - start
        for height in range(count.bit_length() - 1, -1, -1):
            if count >> height & 1:
                roots.append(self._levels[height][start >> height])
                start += 1 << height
        return roots

    def _range_hash(self, start: int, end: int) -> bytes:
        return _fold(self._subtrees(start, end))

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first `size` leaves (all of them by default)."""
        return self._range_hash(0, self._size_or_all(size))

    def compact_range(self, size: int | None = None) -> CompactRange:
        """The compact range (frontier) of the first `size` leaves."""
        size = self._size_or_all(size)
        return CompactRange(size, self._subtrees(0, size))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[0:size]) of RFC 9162 2.1.3.1: the sibling subtree roots from the leaf up to the root."""
        size = self._size_or_all(size)
        _check_size(index, "leaf index")
        if index >= size:
            raise ProofError(f"leaf index {index} is not below the tree size {size}")
        path = []
        start, end = 0, size
        while end - start > 1:
            middle = start + _split(end - start)
            if index < middle:
                path.append(self._range_hash(middle, end))
                end = middle
            else:
                path.append(self._range_hash(start, middle))
                start = middle
        path.reverse()
        return path

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """PROOF(old_size, D[0:new_size]) of RFC 9162 2.1.4.1 (SUBPROOF unrolled); empty when old_size is 0 or
        equals new_size, where there is nothing to prove."""
        new_size = self._size_or_all(new_size)
        _check_size(old_size, "old tree size")
        if old_size > new_size:
            raise ProofError(f"old tree size {old_size} is larger than the new tree size {new_size}")
        if old_size in (0, new_size):
            return []
        proof = []
        start, end, old = 0, new_size, old_size
        old_tree_is_whole_subtree = True
        while old != end - start:
            middle = start + _split(end - start)
            if old <= middle - start:
                proof.append(self._range_hash(middle, end))
                end = middle
            else:
                proof.append(self._range_hash(start, middle))
                old -= middle - start
                start = middle
                old_tree_is_whole_subtree = False
        if not old_tree_is_whole_subtree:
            proof.append(self._range_hash(start, end))
        proof.reverse()
        return proof


def _lsb(value: int) -> int:
    return value & 1


def inclusion_proof_length(index: int, size: int) -> int:
    """The number of hashes in the inclusion proof of leaf `index` in a tree of `size` leaves (index < size): one
    per level where the paths to the leaf and to the last leaf part (inner), plus one per left sibling above."""
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def consistency_proof_length(old_size: int, new_size: int) -> int:
    """The number of hashes in the consistency proof from old_size to new_size (0 < old_size < new_size): the
    inclusion path of the old tree's last leaf without the levels inside its last perfect subtree, plus that
    subtree's root unless the old tree is one perfect subtree (then the verifier starts from old_root)."""
    inside = (old_size & -old_size).bit_length() - 1
    seed = 0 if old_size & (old_size - 1) == 0 else 1
    return seed + inclusion_proof_length(old_size - 1, new_size) - inside


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Check that `leaf` (a leaf hash) is leaf `index` of the tree of `size` leaves whose MTH is `root`, by
    RFC 9162 2.1.3.2; ProofError naming the check that failed."""
    _check_hash(leaf, "leaf hash")
    _check_hash(root, "root hash")
    _check_size(index, "leaf index")
    _check_size(size, "tree size")
    for position, value in enumerate(proof):
        _check_hash(value, f"proof hash {position}")
    # Step 1: leaf_index must be below tree_size.
    if index >= size:
        raise ProofError(f"leaf index {index} is not below the tree size {size}")
    expected = inclusion_proof_length(index, size)
    if len(proof) != expected:
        raise ProofError(
            f"the inclusion proof of leaf {index} in a tree of {size} has {expected} hashes, not {len(proof)}"
        )
    # Steps 2-3.
    fn, sn = index, size - 1
    r = leaf
    # Step 4.
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the path to the root")
        if _lsb(fn) or fn == sn:
            r = node_hash(p, r)
            if not _lsb(fn):
                while not (_lsb(fn) or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    # Step 5.
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the path to the root")
    if r != root:
        raise ProofError(
            f"inclusion proof of leaf {index} does not lead to the root of the tree of size {size}"
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of new_size leaves with MTH new_root extends the tree of old_size leaves with MTH
    old_root, by RFC 9162 2.1.4.2; ProofError naming the check that failed.

    The RFC's algorithm covers 0 < old_size < new_size. Around it: old_size > new_size fails; equal sizes need an
    empty proof and equal roots; an empty old tree (whose root must be SHA-256 of nothing) is extended by any
    tree, with an empty proof; any other proof must have exactly the length the two sizes give, every hash
    consumed and the second size reached."""
    _check_size(old_size, "old tree size")
    _check_size(new_size, "new tree size")
    _check_hash(old_root, "old root hash")
    _check_hash(new_root, "new root hash")
    for position, value in enumerate(proof):
        _check_hash(value, f"proof hash {position}")
    if old_size > new_size:
        raise ProofError(f"old tree size {old_size} is larger than the new tree size {new_size}")
    if old_size == 0:
        if old_root != EMPTY_ROOT:
            raise ProofError("the root of the empty tree is not SHA-256 of the empty string")
        if proof:
            raise ProofError(f"a consistency proof from the empty tree is empty, not {len(proof)} hashes")
        if new_size == 0 and new_root != EMPTY_ROOT:
            raise ProofError("the root of the empty tree is not SHA-256 of the empty string")
        return
    if old_size == new_size:
        if proof:
            raise ProofError(f"a consistency proof between equal sizes is empty, not {len(proof)} hashes")
        if old_root != new_root:
            raise ProofError(f"two trees of size {old_size} have different roots")
        return
    # Step 1.
    if not proof:
        raise ProofError(f"the consistency proof from size {old_size} to {new_size} is empty")
    expected = consistency_proof_length(old_size, new_size)
    if len(proof) != expected:
        raise ProofError(
            f"the consistency proof from size {old_size} to {new_size} has {expected} hashes, not {len(proof)}"
        )
    # Step 2.
    path = [old_root, *proof] if old_size & (old_size - 1) == 0 else list(proof)
    # Step 3.
    fn, sn = old_size - 1, new_size - 1
    # Step 4.
    while _lsb(fn):
        fn >>= 1
        sn >>= 1
    # Step 5.
    fr = sr = path[0]
    # Step 6.
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the path to the new root")
        if _lsb(fn) or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not _lsb(fn):
                while not (_lsb(fn) or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # Step 7.
    if sn != 0:
        raise ProofError("consistency proof is shorter than the path to the new root")
    if fr != old_root:
        raise ProofError(f"consistency proof does not lead to the old root (size {old_size})")
    if sr != new_root:
        raise ProofError(f"consistency proof does not lead to the new root (size {new_size})")

"""The RFC 9162 Merkle tree (aisec.defend.auditability.audit_log.merkle): the reference vectors every RFC 6962
implementation is tested against, then properties checked against the RFC's recursive definitions."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aisec.defend.auditability.audit_log.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MerkleTree,
    ProofError,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

# ------------------------------------------------------------------------------------------ reference vectors
# Vector data (not code) from github.com/transparency-dev/merkle at commit 417fb0c3: testonly/constants.go
# (LeafInputs, NodeHashes, RootHashes, CompactTrees) and cmd/proofgen/main.go (inclusionProofs and
# consistencyProofs; their leaf indices there count from 1, here from 0). They are the RFC 6962 test vectors of
# google/certificate-transparency.

LEAF_INPUTS = [
    bytes.fromhex(text)
    for text in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]

NODE_HASHES = [
    [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ],
    [
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ],
    [
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    ["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
]

ROOT_HASHES = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]

# (level, index) of NODE_HASHES making up the compact range of each size 0..8
COMPACT_TREES = [
    [],
    [(0, 0)],
    [(1, 0)],
    [(1, 0), (0, 2)],
    [(2, 0)],
    [(2, 0), (0, 4)],
    [(2, 0), (1, 2)],
    [(2, 0), (1, 2), (0, 6)],
    [(3, 0)],
]

# (leaf index, tree size, proof)
INCLUSION_PROOFS: list[tuple[int, int, list[str]]] = [
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]

# (old size, new size, proof)
CONSISTENCY_PROOFS: list[tuple[int, int, list[str]]] = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]


def _hashes(texts: Sequence[str]) -> list[bytes]:
    return [bytes.fromhex(text) for text in texts]


LEAF_HASHES = [leaf_hash(content) for content in LEAF_INPUTS]
ROOTS = _hashes(ROOT_HASHES)


def test_hashes_are_rfc6962s() -> None:
    assert EMPTY_ROOT == hashlib.sha256(b"").digest() == ROOTS[0]
    assert LEAF_HASHES == _hashes(NODE_HASHES[0])
    assert leaf_hash(b"\x01") == hashlib.sha256(b"\x00\x01").digest()
    assert node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()


def test_root_of_every_prefix_matches_the_vectors() -> None:
    tree = MerkleTree(LEAF_HASHES)
    assert [tree.root(size) for size in range(9)] == ROOTS
    for size in range(9):
        assert MerkleTree(LEAF_HASHES[:size]).root() == ROOTS[size]


def test_every_perfect_subtree_matches_the_node_vectors() -> None:
    for level, hashes in enumerate(NODE_HASHES):
        width = 1 << level
        for index, expected in enumerate(hashes):
            subtree = LEAF_HASHES[index * width : (index + 1) * width]
            assert MerkleTree(subtree).root().hex() == expected


def test_compact_ranges_match_the_vectors() -> None:
    compact = CompactRange()
    tree = MerkleTree(LEAF_HASHES)
    for size, nodes in enumerate(COMPACT_TREES):
        expected = tuple(bytes.fromhex(NODE_HASHES[level][index]) for level, index in nodes)
        assert compact.size == size
        assert compact.hashes == expected
        assert compact.root() == ROOTS[size]
        assert tree.compact_range(size) == compact
        if size < 8:
            compact.append(LEAF_HASHES[size])


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_PROOFS)
def test_inclusion_proofs_match_the_vectors(index: int, size: int, proof: list[str]) -> None:
    tree = MerkleTree(LEAF_HASHES)
    assert tree.inclusion_proof(index, size) == _hashes(proof)
    verify_inclusion(LEAF_HASHES[index], index, size, _hashes(proof), ROOTS[size])


@pytest.mark.parametrize(("old_size", "new_size", "proof"), CONSISTENCY_PROOFS)
def test_consistency_proofs_match_the_vectors(old_size: int, new_size: int, proof: list[str]) -> None:
    tree = MerkleTree(LEAF_HASHES)
    assert tree.consistency_proof(old_size, new_size) == _hashes(proof)
    verify_consistency(old_size, new_size, ROOTS[old_size], ROOTS[new_size], _hashes(proof))


def _inclusion_probes(index: int, size: int, proof: list[bytes]) -> list[tuple[str, tuple]]:
    """The wrong variants of one good inclusion proof, after transparency-dev/merkle's probe generator
    (proof/verify_test.go): changed index or size, wrong leaf or root, modified, extended or cut proofs."""
    leaf, root = LEAF_HASHES[index], ROOTS[size]
    probes: list[tuple[str, tuple]] = [
        ("index + 1", (leaf, index + 1, size, proof, root)),
        ("index XOR 2", (leaf, index ^ 2, size, proof, root)),
        ("size * 2", (leaf, index, size * 2, proof, root)),
        ("size // 2", (leaf, index, size // 2, proof, root)),
        ("wrong leaf", (leaf_hash(b"WrongLeaf"), index, size, proof, root)),
        ("empty-tree root", (leaf, index, size, proof, EMPTY_ROOT)),
        ("random root", (leaf, index, size, proof, hashlib.sha256(b"random").digest())),
        ("trailing garbage", (leaf, index, size, [*proof, hashlib.sha256(b"garbage").digest()], root)),
        ("trailing root", (leaf, index, size, [*proof, root], root)),
        ("preceding garbage", (leaf, index, size, [hashlib.sha256(b"garbage").digest(), *proof], root)),
        ("preceding root", (leaf, index, size, [root, *proof], root)),
    ]
    if index > 0:
        probes.append(("index - 1", (leaf, index - 1, size, proof, root)))
    for position in range(len(proof)):
        changed = list(proof)
        changed[position] = bytes([changed[position][0] ^ 8]) + changed[position][1:]
        probes.append((f"proof[{position}] bit 3", (leaf, index, size, changed, root)))
        probes.append(
            (
                f"removed proof[{position}]",
                (leaf, index, size, proof[:position] + proof[position + 1 :], root),
            )
        )
    return probes


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_PROOFS)
def test_every_wrong_inclusion_probe_is_rejected(index: int, size: int, proof: list[str]) -> None:
    probes = _inclusion_probes(index, size, _hashes(proof))
    accepted = [name for name, arguments in probes if _accepts(lambda a=arguments: verify_inclusion(*a))]
    assert accepted == [] and len(probes) >= 11


def _consistency_probes(old: int, new: int, proof: list[bytes]) -> list[tuple[str, tuple]]:
    """The wrong variants of one good consistency proof (transparency-dev/merkle's probe kinds)."""
    root1, root2 = ROOTS[old], ROOTS[new]
    garbage = hashlib.sha256(b"garbage").digest()
    probes: list[tuple[str, tuple]] = [
        ("old size + 1", (old + 1, new, root1, root2, proof)),
        ("old size XOR 2", (old ^ 2, new, root1, root2, proof)),
        ("new size * 2", (old, new * 2, root1, root2, proof)),
        ("new size // 2", (old, new // 2, root1, root2, proof)),
        ("wrong old root", (old, new, hashlib.sha256(b"WrongRoot").digest(), root2, proof)),
        ("wrong new root", (old, new, root1, hashlib.sha256(b"WrongRoot").digest(), proof)),
        ("swapped roots", (old, new, root2, root1, proof))
        if root1 != root2
        else ("empty-tree root", (old, new, EMPTY_ROOT, root2, proof)),
        ("trailing garbage", (old, new, root1, root2, [*proof, garbage])),
        ("trailing root1", (old, new, root1, root2, [*proof, root1])),
        ("trailing root2", (old, new, root1, root2, [*proof, root2])),
        ("preceding garbage", (old, new, root1, root2, [garbage, *proof])),
        ("preceding root1", (old, new, root1, root2, [root1, *proof])),
        ("preceding root2", (old, new, root1, root2, [root2, *proof])),
    ]
    if old > 1:
        probes.append(("old size - 1", (old - 1, new, root1, root2, proof)))
    if proof:
        probes.append(("empty proof", (old, new, root1, root2, [])))
        probes.append(("truncated proof", (old, new, root1, root2, proof[:-1])))
        probes.append(("preceding proof[0]", (old, new, root1, root2, [proof[0], *proof])))
    for position in range(len(proof)):
        changed = list(proof)
        changed[position] = bytes([changed[position][0] ^ 16]) + changed[position][1:]
        probes.append((f"proof[{position}] bit 4", (old, new, root1, root2, changed)))
    return probes


@pytest.mark.parametrize(("old_size", "new_size", "proof"), CONSISTENCY_PROOFS)
def test_every_wrong_consistency_probe_is_rejected(old_size: int, new_size: int, proof: list[str]) -> None:
    probes = _consistency_probes(old_size, new_size, _hashes(proof))
    accepted = [name for name, arguments in probes if _accepts(lambda a=arguments: verify_consistency(*a))]
    assert accepted == [] and len(probes) >= 13


# The edge cases of transparency-dev/merkle's testdata/consistency/additional, with well-formed 32-byte roots.
ROOT_A, ROOT_B = hashlib.sha256(b"root a").digest(), hashlib.sha256(b"root b").digest()
CONSISTENCY_EDGES = [
    ("equal sizes 0, empty proof", 0, 0, EMPTY_ROOT, EMPTY_ROOT, [], None),
    ("equal sizes 0, not the empty root", 0, 0, ROOT_A, ROOT_A, [], "empty tree"),
    ("equal sizes 0, roots differ", 0, 0, EMPTY_ROOT, ROOT_B, [], "empty tree"),
    ("equal sizes 0, proof not empty", 0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], "is empty, not 1"),
    ("equal sizes 1, empty proof", 1, 1, ROOT_A, ROOT_A, [], None),
    ("equal sizes 1, roots differ", 1, 1, ROOT_A, ROOT_B, [], "different roots"),
    ("equal sizes 1, proof not empty", 1, 1, ROOT_A, ROOT_A, [ROOT_A], "is empty, not 1"),
    ("old size greater", 1, 0, ROOT_A, ROOT_B, [], "larger than the new"),
    ("old size greater again", 2, 1, ROOT_A, ROOT_B, [], "larger than the new"),
    ("old size 0: any tree extends it", 0, 1, EMPTY_ROOT, ROOT_B, [], None),
    ("old size 0 with a proof", 0, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], "from the empty tree is empty"),
    ("old size 0, not the empty root", 0, 1, ROOT_A, ROOT_B, [], "empty tree"),
    ("sizes differ, empty proof", 1, 2, ROOT_A, ROOT_B, [], "is empty"),
    ("a root of 31 bytes", 1, 1, ROOT_A[:31], ROOT_A[:31], [], "32-byte"),
]


@pytest.mark.parametrize(
    ("old", "new", "root1", "root2", "proof", "error"),
    [case[1:] for case in CONSISTENCY_EDGES],
    ids=[case[0] for case in CONSISTENCY_EDGES],
)
def test_consistency_edge_cases(
    old: int, new: int, root1: bytes, root2: bytes, proof: list[bytes], error: str | None
) -> None:
    if error is None:
        verify_consistency(old, new, root1, root2, proof)
    else:
        with pytest.raises(ProofError, match=error):
            verify_consistency(old, new, root1, root2, proof)


def test_inclusion_checks_index_size_and_hash_lengths() -> None:
    proof = _hashes(INCLUSION_PROOFS[1][2])
    with pytest.raises(ProofError, match="not below the tree size"):
        verify_inclusion(LEAF_HASHES[0], 8, 8, proof, ROOTS[8])
    with pytest.raises(ProofError, match="not below the tree size 0"):
        verify_inclusion(LEAF_HASHES[0], 0, 0, [], EMPTY_ROOT)
    with pytest.raises(ProofError, match="has 3 hashes, not 4"):
        verify_inclusion(LEAF_HASHES[0], 0, 8, [*proof, proof[0]], ROOTS[8])
    with pytest.raises(ProofError, match="proof hash 1"):
        verify_inclusion(LEAF_HASHES[0], 0, 8, [proof[0], proof[1][:31], proof[2]], ROOTS[8])
    with pytest.raises(ProofError, match="non-negative"):
        verify_inclusion(LEAF_HASHES[0], -1, 8, proof, ROOTS[8])


def test_tree_rejects_what_it_does_not_hold() -> None:
    tree = MerkleTree(LEAF_HASHES[:5])
    with pytest.raises(ProofError, match="larger than the tree"):
        tree.root(6)
    with pytest.raises(ProofError, match="not below the tree size"):
        tree.inclusion_proof(5)
    with pytest.raises(ProofError, match="larger than the new tree size"):
        tree.consistency_proof(4, 3)
    with pytest.raises(ProofError, match="leaf hash 1"):
        MerkleTree([LEAF_HASHES[0], b"short"])
    with pytest.raises(ProofError, match="leaf hash"):
        tree.append(b"x" * 33)
    assert tree.consistency_proof(0, 5) == [] and tree.consistency_proof(5) == []


def test_compact_range_serialisation_checks_its_length() -> None:
    compact = MerkleTree(LEAF_HASHES[:7]).compact_range()
    assert len(compact.to_bytes()) == 3 * 32
    assert CompactRange.from_bytes(7, compact.to_bytes()) == compact
    assert CompactRange.from_bytes(0, b"") == CompactRange()
    with pytest.raises(ProofError, match="size 6 is 64 bytes, not 96"):
        CompactRange.from_bytes(6, compact.to_bytes())
    with pytest.raises(ProofError, match="size 7 is 96 bytes, not 95"):
        CompactRange.from_bytes(7, compact.to_bytes()[:-1])
    with pytest.raises(ProofError, match="holds 3 hashes, not 2"):
        CompactRange(7, compact.hashes[:2])


# --------------------------------------------------------------------------- the RFC's definitions, recursively


def _split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _reference_mth(leaves: Sequence[bytes]) -> Callable[[int, int], bytes]:
    """MTH(D[start:end]) straight from RFC 9162 2.1.1 (memoised, so every prefix of a 300-leaf tree is cheap)."""
    memo: dict[tuple[int, int], bytes] = {}

    def mth(start: int, end: int) -> bytes:
        if (start, end) not in memo:
            n = end - start
            if n == 0:
                memo[start, end] = hashlib.sha256(b"").digest()
            elif n == 1:
                memo[start, end] = leaves[start]
            else:
                k = _split(n)
                left, right = mth(start, start + k), mth(start + k, end)
                memo[start, end] = hashlib.sha256(b"\x01" + left + right).digest()
        return memo[start, end]

    return mth


def _reference_path(mth: Callable[[int, int], bytes], index: int, start: int, end: int) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 2.1.3.1."""
    if end - start == 1:
        return []
    k = _split(end - start)
    if index < k:
        return [*_reference_path(mth, index, start, start + k), mth(start + k, end)]
    return [*_reference_path(mth, index - k, start + k, end), mth(start, start + k)]


def _reference_subproof(
    mth: Callable[[int, int], bytes], m: int, start: int, end: int, whole: bool
) -> list[bytes]:
    """SUBPROOF(m, D[n], b) of RFC 9162 2.1.4.1."""
    n = end - start
    if m == n:
        return [] if whole else [mth(start, end)]
    k = _split(n)
    if m <= k:
        return [*_reference_subproof(mth, m, start, start + k, whole), mth(start + k, end)]
    return [*_reference_subproof(mth, m - k, start + k, end, False), mth(start, start + k)]


def _reference_inclusion_root(leaf: bytes, index: int, size: int, proof: list[bytes]) -> bytes | None:
    """The root that PATH(index, D[size]) = proof implies for `leaf`, by undoing the recursion of 2.1.3.1; None
    when the proof cannot be such a path (wrong length, index out of range)."""

    def walk(index: int, size: int, proof: list[bytes]) -> tuple[bytes, int] | None:
        if size == 1:
            return leaf, 0
        k = _split(size)
        below = walk(index, k, proof) if index < k else walk(index - k, size - k, proof)
        if below is None or below[1] >= len(proof):
            return None
        hash_, used = below
        sibling = proof[used]
        return (node_hash(hash_, sibling) if index < k else node_hash(sibling, hash_)), used + 1

    if not 0 <= index < size:
        return None
    result = walk(index, size, proof)
    return result[0] if result is not None and result[1] == len(proof) else None


def _reference_consistency_roots(
    old: int, new: int, old_root: bytes, proof: list[bytes]
) -> tuple[bytes, bytes] | None:
    """(old root, new root) that SUBPROOF(old, D[new], true) = proof implies, by undoing 2.1.4.1; None when the
    proof cannot be such a subproof. Only for 0 < old < new."""

    def walk(m: int, n: int, whole: bool) -> tuple[bytes, bytes, int] | None:
        if m == n:
            if whole:
                return old_root, old_root, 0
            return (proof[0], proof[0], 1) if proof else None
        k = _split(n)
        below = walk(m, k, whole) if m <= k else walk(m - k, n - k, False)
        if below is None or below[2] >= len(proof):
            return None
        old_hash, new_hash, used = below
        sibling = proof[used]
        if m <= k:
            return old_hash, node_hash(new_hash, sibling), used + 1
        return node_hash(sibling, old_hash), node_hash(sibling, new_hash), used + 1

    if not 0 < old < new:
        return None
    result = walk(old, new, True)
    return (result[0], result[1]) if result is not None and result[2] == len(proof) else None


def _accepts(check: Callable[[], None]) -> bool:
    try:
        check()
    except ProofError:
        return False
    return True


def _flip_bits(value: bytes) -> list[bytes]:
    return [
        value[:byte] + bytes([value[byte] ^ (1 << bit)]) + value[byte + 1 :]
        for byte in range(len(value))
        for bit in range(8)
    ]


def _leaves(count: int, salt: int) -> list[bytes]:
    return [leaf_hash(salt.to_bytes(4, "big") + index.to_bytes(4, "big")) for index in range(count)]


PROPERTY_SETTINGS = settings(
    max_examples=100, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)


@PROPERTY_SETTINGS
@given(st.integers(0, 300), st.integers(0, 2**16))
def test_roots_and_compact_ranges_match_the_recursive_mth(size: int, salt: int) -> None:
    leaves = _leaves(size, salt)
    mth = _reference_mth(leaves)
    tree = MerkleTree(leaves)
    grown = MerkleTree()
    compact = CompactRange()
    for k in range(size + 1):
        assert tree.root(k) == grown.root() == compact.root() == mth(0, k)
        assert tree.compact_range(k) == compact
        assert CompactRange.from_bytes(k, compact.to_bytes()) == compact
        assert CompactRange(k, compact.hashes) == compact
        if k < size:
            grown.append(leaves[k])
            compact.append(leaves[k])
    assert tree.root() == mth(0, size)


@PROPERTY_SETTINGS
@given(st.integers(1, 300), st.integers(0, 2**16), st.data())
def test_every_inclusion_proof_is_the_rfc_path_and_verifies(
    size: int, salt: int, data: st.DataObject
) -> None:
    leaves = _leaves(size, salt)
    mth = _reference_mth(leaves)
    tree = MerkleTree(leaves)
    prefix = data.draw(st.integers(1, size), label="prefix size")
    for tree_size in {prefix, size}:
        root = mth(0, tree_size)
        for index in range(tree_size):
            proof = tree.inclusion_proof(index, tree_size)
            assert proof == _reference_path(mth, index, 0, tree_size)
            verify_inclusion(leaves[index], index, tree_size, proof, root)


@PROPERTY_SETTINGS
@given(st.integers(1, 300), st.integers(0, 2**16), st.data())
def test_every_consistency_proof_is_the_rfc_subproof_and_verifies(
    size: int, salt: int, data: st.DataObject
) -> None:
    leaves = _leaves(size, salt)
    mth = _reference_mth(leaves)
    tree = MerkleTree(leaves)
    new_size = data.draw(st.integers(1, size), label="new size")
    for end in {new_size, size}:
        for old in range(end + 1):
            proof = tree.consistency_proof(old, end)
            expected = _reference_subproof(mth, old, 0, end, True) if 0 < old < end else []
            assert proof == expected
            verify_consistency(old, end, mth(0, old), mth(0, end), proof)


@PROPERTY_SETTINGS
@given(st.integers(1, 300), st.integers(0, 2**16), st.data())
def test_every_single_bit_change_of_an_inclusion_proof_is_rejected(
    size: int, salt: int, data: st.DataObject
) -> None:
    """Every bit of every proof hash, of the root and of the leaf; index changes always fail (for a fixed size the
    path's left/right pattern names the leaf). A changed size with the root left alone is accepted exactly when the
    RFC's recursive definition also accepts it: e.g. leaf 0 of 5 has the same path shape as leaf 0 of 7, and an
    inclusion proof does not by itself bind the size (the signed checkpoint does)."""
    leaves = _leaves(size, salt)
    tree = MerkleTree(leaves)
    index = data.draw(st.integers(0, size - 1), label="index")
    proof, root, leaf = tree.inclusion_proof(index), tree.root(), leaves[index]
    changes = 0
    for position, value in enumerate(proof):
        for changed in _flip_bits(value):
            bad = [*proof[:position], changed, *proof[position + 1 :]]
            assert not _accepts(lambda bad=bad: verify_inclusion(leaf, index, size, bad, root))
            changes += 1
    for changed in _flip_bits(root):
        assert not _accepts(lambda changed=changed: verify_inclusion(leaf, index, size, proof, changed))
        changes += 1
    for changed in _flip_bits(leaf):
        assert not _accepts(lambda changed=changed: verify_inclusion(changed, index, size, proof, root))
        changes += 1
    for bit in range(max(size, index).bit_length() + 2):
        other_index = index ^ (1 << bit)
        assert not _accepts(lambda i=other_index: verify_inclusion(leaf, i, size, proof, root))
        other_size = size ^ (1 << bit)
        accepted = _accepts(lambda s=other_size: verify_inclusion(leaf, index, s, proof, root))
        assert accepted == (_reference_inclusion_root(leaf, index, other_size, proof) == root)
        changes += 2
    assert changes == 256 * (len(proof) + 2) + 2 * (max(size, index).bit_length() + 2)


@PROPERTY_SETTINGS
@given(st.integers(2, 300), st.integers(0, 2**16), st.data())
def test_every_single_bit_change_of_a_consistency_proof_is_rejected(
    size: int, salt: int, data: st.DataObject
) -> None:
    """Every bit of every proof hash and of both roots is rejected; a changed size is accepted exactly when the
    RFC's recursive definition accepts it too (the implementation is exactly as strict as the definition)."""
    leaves = _leaves(size, salt)
    tree = MerkleTree(leaves)
    old = data.draw(st.integers(1, size - 1), label="old size")
    proof, old_root, new_root = tree.consistency_proof(old), tree.root(old), tree.root()
    for position, value in enumerate(proof):
        for changed in _flip_bits(value):
            bad = [*proof[:position], changed, *proof[position + 1 :]]
            assert not _accepts(lambda bad=bad: verify_consistency(old, size, old_root, new_root, bad))
    for changed in _flip_bits(old_root):
        assert not _accepts(lambda changed=changed: verify_consistency(old, size, changed, new_root, proof))
    for changed in _flip_bits(new_root):
        assert not _accepts(lambda changed=changed: verify_consistency(old, size, old_root, changed, proof))
    for bit in range(size.bit_length() + 2):
        for other_old, other_new in ((old ^ (1 << bit), size), (old, size ^ (1 << bit))):
            accepted = _accepts(
                lambda o=other_old, n=other_new: verify_consistency(o, n, old_root, new_root, proof)
            )
            expected = _reference_consistency_roots(other_old, other_new, old_root, proof) == (
                old_root,
                new_root,
            )
            assert accepted == expected


def test_size_changes_that_keep_the_path_shape_are_what_the_rfc_accepts() -> None:
    """The one case where a changed size passes: the same leaf, proof and root under a size whose tree has the
    same path shape. The signed checkpoint binds size and root together, which is why logs sign both."""
    leaves = _leaves(7, 0)
    tree = MerkleTree(leaves)
    proof = tree.inclusion_proof(0, 5)
    verify_inclusion(leaves[0], 0, 5, proof, tree.root(5))
    verify_inclusion(leaves[0], 0, 7, proof, tree.root(5))  # same shape, root of 5: the math cannot tell
    with pytest.raises(ProofError):
        verify_inclusion(leaves[0], 0, 7, proof, tree.root(7))
    with pytest.raises(ProofError, match="has 2 hashes, not 3"):
        verify_inclusion(leaves[0], 0, 4, proof, tree.root(5))


@pytest.mark.slow
def test_a_million_leaves_build_in_seconds() -> None:
    leaves = [hashlib.sha256(os.urandom(8)).digest() for _ in range(1_000_000)]
    start = time.perf_counter()
    tree = MerkleTree(leaves)
    seconds = time.perf_counter() - start
    assert seconds < 5, f"{seconds:.2f} s to build a 1,000,000-leaf tree"
    proof = tree.inclusion_proof(765_432, 999_999)
    verify_inclusion(leaves[765_432], 765_432, 999_999, proof, tree.root(999_999))
    verify_consistency(123_457, 1_000_000, tree.root(123_457), tree.root(), tree.consistency_proof(123_457))

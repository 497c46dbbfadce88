"""API keys: the file holds hashes only (mode 0600), tokens authenticate until revoked, a running key ring
picks revocations up on refresh, and nothing a client sends makes authentication raise."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import stat
from pathlib import Path

import pytest

from aisec.core.errors import BadInputError
from aisec.guard import keys as keys_module
from aisec.guard.keys import FORMAT, ApiKey, KeyRing, add_key, list_keys, revoke_key

TOKEN = re.compile(r"aisec_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")


@pytest.fixture()
def path(tmp_path: Path) -> Path:
    return tmp_path / "keys.json"


def test_add_list_authenticate_revoke(path: Path) -> None:
    alice = add_key(path, "alice")
    bob = add_key(path, "bob.batch-2", tier="premium")
    for token in (alice, bob):
        assert TOKEN.fullmatch(token), token
    assert alice != bob
    listed = list_keys(path)
    assert [(k.name, k.tier, k.revoked) for k in listed] == [
        ("alice", "default", None),
        ("bob.batch-2", "premium", None),
    ]
    assert listed[0].key_id == TOKEN.fullmatch(alice).group(1)  # type: ignore[union-attr]

    ring = KeyRing.load(path)
    assert ring.authenticate(f"Bearer {alice}") == listed[0]
    assert ring.authenticate(f"bearer   {bob}  ") == listed[1]  # the scheme is case-insensitive (RFC 7235)

    revoked = revoke_key(path, "alice")
    assert revoked.name == "alice" and revoked.revoked is not None
    assert [k.revoked is None for k in list_keys(path)] == [False, True]
    assert ring.refresh()
    assert ring.authenticate(f"Bearer {alice}") is None
    assert ring.authenticate(f"Bearer {bob}") == listed[1]


def test_the_file_holds_hashes_only_with_mode_0600(path: Path) -> None:
    token = add_key(path, "alice")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_text()
    secret = token[19:]  # after "aisec_<12 hex>_"
    assert secret not in raw and token not in raw
    document = json.loads(raw)
    assert document["format"] == FORMAT
    (entry,) = document["keys"]
    assert set(entry) == {"name", "key_id", "sha256", "tier", "created", "revoked"}
    assert entry["sha256"] == hashlib.sha256(token.encode()).hexdigest()
    revoke_key(path, "alice")
    add_key(path, "bob")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # kept through atomic rewrites
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "keys.json",
        "keys.json.lock",
    ]  # no temporary file left


def test_names_and_revocation_are_checked(path: Path) -> None:
    add_key(path, "alice")
    with pytest.raises(BadInputError, match="already holds an active API key named 'alice'"):
        add_key(path, "alice")
    revoke_key(path, "alice")
    with pytest.raises(BadInputError, match="already revoked"):
        revoke_key(path, "alice")
    with pytest.raises(BadInputError, match="no API key named 'carol'"):
        revoke_key(path, "carol")
    token = add_key(path, "alice")  # a revoked name may be given a new key
    assert len({k.key_id for k in list_keys(path)}) == 2
    assert KeyRing.load(path).authenticate(f"Bearer {token}") == list_keys(path)[1]
    for bad in ("", "a b", "x" * 65, "ä", "../x", "a/b", 7):
        with pytest.raises(BadInputError, match="API key name"):
            add_key(path, bad)  # type: ignore[arg-type]
        with pytest.raises(BadInputError, match="API key tier"):
            add_key(path, "dave", tier=bad)  # type: ignore[arg-type]
    assert [k.name for k in list_keys(path)] == ["alice", "alice"]
    with pytest.raises(BadInputError, match="no such folder"):
        add_key(path.parent / "absent" / "keys.json", "alice")


def test_authenticate_never_raises_on_client_input(path: Path) -> None:
    token = add_key(path, "alice")
    key_id = TOKEN.fullmatch(token).group(1)  # type: ignore[union-attr]
    secret = token[19:]  # after "aisec_<12 hex>_"
    other_secret = ("A" if secret[0] != "A" else "B") + secret[1:]
    ring = KeyRing.load(path)
    headers: list[object] = [
        None,
        "",
        " ",
        "Bearer",
        "Bearer ",
        token,  # no scheme
        f"Basic {token}",
        f"Bearer {token}x",
        f"Bearer {token[:-1]}",
        f"Bearer x{token}",
        f"Bearer {token} {token}",
        f"Bearer aisec_{key_id}_{other_secret}",  # a known id, a wrong secret
        f"Bearer aisec_{'0' * 12}_{secret}",  # an unknown id
        f"Bearer aisec_{key_id.upper()}_{secret}",
        f"Bearer {token.replace('aisec_', 'AISEC_')}",
        "Bearer " + token.replace(secret, "é" * 43),
        "Bearer " + "a" * 10_000,
        "Bearer \x00" + token,
        token.encode(),
        42,
    ]
    for header in headers:
        assert ring.authenticate(header) is None, header  # type: ignore[arg-type]
    assert ring.authenticate(f"Bearer {token}") is not None


def test_unknown_ids_are_compared_against_a_dummy_hash(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every well-formed token costs one constant-time comparison of two SHA-256 digests, known id or not, so
    response times do not tell which ids exist; malformed headers are refused before any hashing."""
    token = add_key(path, "alice")
    stored = json.loads(path.read_text())["keys"][0]["sha256"]
    ring = KeyRing.load(path)
    calls: list[tuple[str, str]] = []
    real = keys_module.hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", spy)
    secret = token[19:]  # after "aisec_<12 hex>_"
    unknown = [f"aisec_{n:012x}_{secret}" for n in range(5)]
    for candidate in unknown:
        assert ring.authenticate(f"Bearer {candidate}") is None
    expected = [(hashlib.sha256(c.encode()).hexdigest(), c) for c in unknown]
    assert [a for a, _ in calls] == [digest for digest, _ in expected]
    dummies = {b for _, b in calls}
    assert len(dummies) == 1 and re.fullmatch(r"[0-9a-f]{64}", dummies.pop()) and stored not in dummies
    calls.clear()
    wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert ring.authenticate(f"Bearer {wrong}") is None
    assert ring.authenticate(f"Bearer {token}") is not None
    assert [b for _, b in calls] == [stored, stored]
    calls.clear()
    assert ring.authenticate("Bearer nonsense") is None
    assert calls == []


def test_a_running_ring_follows_the_file(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    alice = add_key(path, "alice")
    ring = KeyRing.load(path)
    assert not ring.refresh()  # unchanged: nothing re-read
    bob = add_key(path, "bob")
    assert ring.authenticate(f"Bearer {bob}") is None  # not refreshed yet
    assert ring.refresh()
    assert ring.authenticate(f"Bearer {bob}") is not None
    assert [k.name for k in ring.keys] == ["alice", "bob"]

    good = path.read_bytes()
    caplog.set_level(logging.INFO, logger="aisec.guard")
    for damage in (lambda: path.write_text("{ not json"), path.unlink):
        caplog.clear()
        damage()
        assert not ring.refresh()
        assert not ring.refresh()
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1, errors  # logged once per version of the file, not per request
        assert str(path) in errors[0].getMessage() and "keeping the 2 API keys" in errors[0].getMessage()
        assert ring.authenticate(f"Bearer {alice}") is not None  # the last good ring serves on
        path.write_bytes(good)
        ring.refresh()
    revoke_key(path, "alice")
    assert ring.refresh()
    assert ring.authenticate(f"Bearer {alice}") is None


def _write(path: Path, document: object) -> None:
    path.write_text(json.dumps(document))


ENTRY = {
    "name": "alice",
    "key_id": "0123456789ab",
    "sha256": "0" * 64,
    "tier": "default",
    "created": "2025-01-01T00:00:00+00:00",
    "revoked": None,
}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{ not json", "is not JSON"),
        (b"\xff\xfe", "is not JSON"),
        (b"[]", "is not an API keys file"),
        (json.dumps({"format": "aisec-guard-keys/2", "keys": []}).encode(), "is not an API keys file"),
        (json.dumps({"format": FORMAT, "keys": {}}).encode(), "'keys' must be a list"),
        (json.dumps({"format": FORMAT, "keys": [{**ENTRY, "extra": 1}]}).encode(), "exactly the fields"),
        (json.dumps({"format": FORMAT, "keys": [{"name": "alice"}]}).encode(), "exactly the fields"),
        (json.dumps({"format": FORMAT, "keys": [{**ENTRY, "sha256": "x"}]}).encode(), "sha256 is malformed"),
        (json.dumps({"format": FORMAT, "keys": [{**ENTRY, "key_id": 5}]}).encode(), "key_id is malformed"),
        (json.dumps({"format": FORMAT, "keys": [{**ENTRY, "name": "a b"}]}).encode(), "name is malformed"),
        (json.dumps({"format": FORMAT, "keys": [{**ENTRY, "created": 1}]}).encode(), "created must be"),
        (json.dumps({"format": FORMAT, "keys": [{**ENTRY, "revoked": 1}]}).encode(), "revoked must be"),
        (json.dumps({"format": FORMAT, "keys": [ENTRY, ENTRY]}).encode(), "appears twice"),
        (
            json.dumps({"format": FORMAT, "keys": [ENTRY, {**ENTRY, "key_id": "ba9876543210"}]}).encode(),
            "two active keys",
        ),
    ],
)
def test_bad_files_are_named(path: Path, content: bytes, message: str) -> None:
    path.write_bytes(content)
    for read in (KeyRing.load, list_keys, lambda p: add_key(p, "bob"), lambda p: revoke_key(p, "alice")):
        with pytest.raises(BadInputError, match=re.escape(message)) as raised:
            read(path)
        assert str(path) in str(raised.value)
    assert path.read_bytes() == content  # nothing written


def test_a_missing_file(path: Path) -> None:
    for read in (KeyRing.load, list_keys, lambda p: revoke_key(p, "alice")):
        with pytest.raises(BadInputError, match="no API keys file") as raised:
            read(path)
        assert str(path) in str(raised.value)
    assert not path.exists()


def test_a_valid_hand_written_file_loads(path: Path) -> None:
    revoked = {**ENTRY, "key_id": "ba9876543210", "revoked": "2025-02-01T00:00:00+00:00"}
    _write(path, {"format": FORMAT, "keys": [ENTRY, revoked]})
    assert list_keys(path) == [
        ApiKey("alice", "0123456789ab", "default", ENTRY["created"], None),  # type: ignore[arg-type]
        ApiKey("alice", "ba9876543210", "default", ENTRY["created"], revoked["revoked"]),  # type: ignore[arg-type]
    ]


def _add_named(path: str, name: str) -> str:
    return add_key(path, name)


def test_concurrent_key_commands_lose_no_key(tmp_path):
    """`aisec guard key add` run by several processes at once: each read-change-write holds the file's lock."""
    import multiprocessing

    path = str(tmp_path / "keys.json")
    names = [f"client{i}" for i in range(8)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        tokens = pool.starmap(_add_named, [(path, name) for name in names])
    assert sorted(k.name for k in list_keys(path)) == sorted(names)
    ring = KeyRing.load(path)
    assert [ring.authenticate(f"Bearer {t}").name for t in tokens] == names

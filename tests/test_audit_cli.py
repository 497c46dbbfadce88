"""The audit trail end to end: each recording command appends one entry with hashes and figures, `aisec audit`
verifies, lists and proves; tampering exits 1 naming the entry; bad input exits 2 with one line, nothing written."""

import copy
import json
import sqlite3

import pytest
import yaml
from typer.testing import CliRunner

from aisec.cli import app
from aisec.core.hashing import file_sha256
from aisec.demo.run import DEMO_PLAN, prepare_demo

runner = CliRunner()


def run(*args, **env):
    return runner.invoke(app, [*args], env={"AISEC_AUDIT_LOG": None, "AISEC_AUDIT_KEY": None, **env})


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    result = run("keygen", "--type", "ed25519", str(folder / "audit.key"), str(folder / "audit.pub"))
    assert result.exit_code == 0, result.output
    assert "public key" in result.output
    result = run("keygen", str(folder / "ecdsa.key"), str(folder / "ecdsa.pub"))
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo's model (trained once), a two-attack plan over 100 samples, and a signing key for models."""
    folder = tmp_path_factory.mktemp("demo")
    prepare_demo(folder)
    plan = copy.deepcopy(DEMO_PLAN)
    plan["data"]["samples"] = 100
    plan["threat_model"].update(budgets=[0.05, 0.2], query_budget=300)
    plan["probes"] = {"evasion": {"attacks": ["pgd"], "examples": 1}}
    plan["policy"] = {"min_robust_accuracy": {0.05: 0.5}}
    plan.pop("training")
    plan.pop("defences")
    (folder / "plan.yaml").write_text(yaml.safe_dump(plan))
    return folder


def entries(log):
    result = run("audit", "show", str(log), "--json", "--limit", "1000")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_every_command_appends_one_entry_that_vouches_for_its_reports(demo, keys, tmp_path):
    log, key, pub = tmp_path / "audit.db", keys / "audit.key", keys / "audit.pub"
    audit = ("--audit-log", str(log), "--audit-key", str(key))
    out = tmp_path / "assess"
    result = run("assess", str(demo / "plan.yaml"), "--output", str(out), "--quiet", *audit)
    assert result.exit_code in (0, 1), result.output
    model = next((demo / "model").iterdir())
    assert run("scan", str(model), "--json", str(tmp_path / "scan.json"), *audit).exit_code == 0
    # the fast path (no typer) reads the log and key from the environment
    assert run("scan", str(model), AISEC_AUDIT_LOG=str(log), AISEC_AUDIT_KEY=str(key)).exit_code == 0
    signed = run("sign", str(model), "--key", str(keys / "ecdsa.key"), "-s", str(tmp_path / "m.sig"), *audit)
    assert signed.exit_code == 0, signed.output
    checked = run(
        "verify", str(model), "--key", str(keys / "ecdsa.pub"), "-s", str(tmp_path / "m.sig"), *audit
    )
    assert checked.exit_code == 0, checked.output
    bom = run(
        "bom", str(model), "-o", str(tmp_path / "bom.json"), "--report", str(out / "report.json"), *audit
    )
    assert bom.exit_code == 0, bom.output

    rows = entries(log)
    assert [row["command"] for row in rows] == ["assess", "scan", "scan", "sign", "verify", "bom"]
    assert [row["seq"] for row in rows] == list(range(6))
    first = rows[0]
    report = json.loads((out / "report.json").read_text())
    assert first["model"]["sha256"] == report["subject"]["model_sha256"]
    assert first["data"]["sha256"] == report["subject"]["data_sha256"]
    assert first["plan_sha256"] == report["plan_sha256"]
    assert first["verdict"] == ("passed" if report["passed"] else "failed")
    assert {f["rule_id"] for f in first["findings"]} == {f["rule_id"] for f in report["findings"]}
    headline = next(f["headline"] for f in first["findings"] if f["rule_id"] == "AISEC-EVA-001")
    assert headline is not None and isinstance(headline["value"], (int, float))
    assert headline["id"] == "robust_accuracy@0.05"  # the budget the policy judges, not the largest one
    for path, digest in first["reports"].items():  # every report written is vouched for by its hash
        assert file_sha256(path) == digest
    assert str(out / "report.json") in first["reports"]
    for row in rows:
        assert row["tool"] == "aisec" and row["tool_version"] and row["time"] and row["host"]
        assert len(row["arguments_sha256"]) == 64
    assert rows[1]["files"][0]["sha256"] == file_sha256(model)
    assert rows[4]["verdict"] == "verified"
    assert rows[5]["assessment_report"]["sha256"] == file_sha256(out / "report.json")

    # only hashes and figures: no entry is large, none holds an array of inputs or weights
    with sqlite3.connect(log) as db:
        sizes = [len(content) for (content,) in db.execute("SELECT content FROM entries")]
    assert max(sizes) < 16_000

    result = run("audit", "verify", str(log), "--key", str(pub))
    assert result.exit_code == 0, result.output
    assert "intact" in result.output and "6 entries" in result.output


def test_prove_and_check_an_entry_without_the_log(keys, tmp_path):
    log = scans(keys, tmp_path, 5)
    proof = tmp_path / "proof.json"
    assert run("audit", "prove", str(log), "3", "-o", str(proof)).exit_code == 0
    result = run("audit", "check-proof", str(proof), "--key", str(keys / "audit.pub"))
    assert result.exit_code == 0, result.output
    assert "included" in result.output

    forged = json.loads(proof.read_text())
    forged["leaf"] = forged["leaf"].replace('"scan"', '"sign"')
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    result = run("audit", "check-proof", str(tmp_path / "forged.json"), "--key", str(keys / "audit.pub"))
    assert result.exit_code == 1, result.output

    assert run("audit", "prove", str(log), "99").exit_code == 2


def test_a_kept_checkpoint_catches_a_rewritten_history(keys, tmp_path):
    log = scans(keys, tmp_path, 3)
    kept = tmp_path / "kept.checkpoint"
    assert run("audit", "checkpoint", str(log), "-o", str(kept)).exit_code == 0
    scans(keys, tmp_path, 2, log=log)
    result = run("audit", "verify", str(log), "--key", str(keys / "audit.pub"), "--checkpoint", str(kept))
    assert result.exit_code == 0, result.output

    # an attacker with the file drops the last three entries and the checkpoints that covered them
    with sqlite3.connect(log) as db:
        db.executescript(
            "DROP TRIGGER IF EXISTS entries_no_delete; DROP TRIGGER IF EXISTS checkpoints_no_delete;"
        )
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            db.execute(f'DROP TRIGGER "{name}"')
        db.execute("DELETE FROM entries WHERE seq >= 2")
        db.execute("DELETE FROM checkpoints WHERE size > 2")
    result = run("audit", "verify", str(log), "--key", str(keys / "audit.pub"), "--checkpoint", str(kept))
    assert result.exit_code == 1, result.output
    assert "tampered" in result.output

    other = scans(keys, tmp_path / "other", 1)
    foreign = tmp_path / "foreign.checkpoint"
    assert run("audit", "checkpoint", str(other), "-o", str(foreign)).exit_code == 0
    result = run("audit", "verify", str(other), "--checkpoint", str(kept))
    assert result.exit_code == 2, result.output


def test_a_changed_entry_exits_1_naming_it(keys, tmp_path):
    log = scans(keys, tmp_path, 4)
    with sqlite3.connect(log) as db:
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            db.execute(f'DROP TRIGGER "{name}"')
        content = db.execute("SELECT content FROM entries WHERE seq = 2").fetchone()[0]
        db.execute("UPDATE entries SET content = ? WHERE seq = 2", (content.replace(b"safe", b"SAFE"),))
    result = run("audit", "verify", str(log))
    assert result.exit_code == 1
    assert "entry 2" in result.output


def test_the_example_runs(tmp_path):
    """examples/audit_log.py, as docs/audit.md tells users to run it."""
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).parent.parent / "examples" / "audit_log.py"
    out = subprocess.run(
        [sys.executable, str(example), str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "first bad entry 1" in out.stdout


@pytest.mark.parametrize(
    "case",
    ["no key", "wrong key type", "not a log", "someone else's key", "show a missing log", "proof of garbage"],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(keys, tmp_path, case):
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    log = tmp_path / "audit.db"
    if case == "no key":
        result = run("scan", str(model), "--audit-log", str(log), "--json", str(tmp_path / "scan.json"))
    elif case == "wrong key type":
        result = run("scan", str(model), "--audit-log", str(log), "--audit-key", str(keys / "ecdsa.key"))
    elif case == "not a log":
        log.write_text("hello, I am a text file\n")
        result = run("audit", "verify", str(log))
    elif case == "someone else's key":
        scans(keys, tmp_path, 1, log=log)
        other = tmp_path / "other"
        other.mkdir()
        run("keygen", "--type", "ed25519", str(other / "k"), str(other / "p"))
        result = run("scan", str(model), "--audit-log", str(log), "--audit-key", str(other / "k"))
    elif case == "show a missing log":
        result = run("audit", "show", str(tmp_path / "nothing.db"))
    else:
        (tmp_path / "proof.json").write_text("not json")
        result = run("audit", "check-proof", str(tmp_path / "proof.json"), "--key", str(keys / "audit.pub"))
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1, result.output
    assert not (tmp_path / "scan.json").exists()
    if case in ("no key", "wrong key type"):
        assert not log.exists()
    if case == "someone else's key":
        assert len(entries(log)) == 1


def scans(keys, folder, n, log=None):
    """A log of `n` scan entries (of a small safetensors file) signed with the module's audit key."""
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "model.safetensors"
    model.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    log = log or folder / "audit.db"
    for _ in range(n):
        result = run("scan", str(model), "--audit-log", str(log), "--audit-key", str(keys / "audit.key"))
        assert result.exit_code == 0, result.output
    return log

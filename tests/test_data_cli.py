"""`aisec data manifest` and `aisec data diff` end to end: what they write and print, their exit codes, and bad
input -> one line, exit 2, nothing written."""

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from aisec.cli import app

runner = CliRunner()


def write_csv(path, rows):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "age", "colour", "label"])
        writer.writerows(rows)


@pytest.fixture()
def snapshots(tmp_path):
    """Two snapshots of 500 records: the provider relabelled 10 of them (records 7, 57, ...), dropped one and
    added a new class in one new record."""
    generator = np.random.default_rng(0)
    ages = generator.integers(18, 90, 500)
    colours = generator.choice(["red", "green", "blue"], 500)
    labels = generator.choice(["cat", "dog"], 500)
    old = [[f"r{i}", ages[i], colours[i], labels[i]] for i in range(500)]
    relabelled = {f"r{i}" for i in range(7, 500, 50)}
    new = [
        [key, age, colour, ("dog" if label == "cat" else "cat") if key in relabelled else label]
        for key, age, colour, label in old
        if key != "r3"
    ] + [["r500", 40, "red", "bird"]]
    write_csv(tmp_path / "old.csv", old)
    write_csv(tmp_path / "new.csv", new)
    return tmp_path, relabelled


def test_diff_lists_every_relabelled_record_and_exits_1(snapshots):
    folder, relabelled = snapshots
    result = runner.invoke(
        app, ["data", "diff", str(folder / "old.csv"), str(folder / "new.csv"), "--key", "id", "--json",
              str(folder / "diff.json")],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "10 relabelled" in result.output and "1 added" in result.output and "1 removed" in result.output
    document = json.loads((folder / "diff.json").read_text())
    assert {change["key"] for change in document["label_changes"]} == relabelled
    assert document["classes_added"] == ["bird"] and document["removed"] == ["r3"]

    same = runner.invoke(
        app, ["data", "diff", str(folder / "old.csv"), str(folder / "old.csv"), "--key", "id"]
    )
    assert same.exit_code == 0, same.output
    assert "0 relabelled" in same.output


def test_manifest_records_the_stated_origin_and_every_record(snapshots):
    folder, _ = snapshots
    out = folder / "manifest.json"
    result = runner.invoke(
        app, ["data", "manifest", str(folder / "old.csv"), "--source", "Acme", "--licence", "CC-BY-4.0",
              "--retrieved", "2026-11-30", "--key", "id", "-o", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads(out.read_text())
    assert manifest["schema"] == "aisec.data-manifest/1"
    assert manifest["files"][0]["records"] == 500
    assert "Acme" in json.dumps(manifest)


@pytest.mark.parametrize("case", ["duplicate keys", "not csv", "bad date", "missing column"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(snapshots, case):
    folder, _ = snapshots
    old, out = folder / "old.csv", folder / "out.json"
    args = ["data", "diff", str(old), str(folder / "new.csv"), "--key", "id", "--json", str(out)]
    if case == "duplicate keys":
        write_csv(old, [["r1", 30, "red", "cat"], ["r1", 31, "blue", "dog"]])
    elif case == "not csv":
        old.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    elif case == "missing column":
        args[args.index("id")] = "no_such_column"
    else:
        args = ["data", "manifest", str(old), "--source", "Acme", "--licence", "MIT", "--retrieved", "yesterday",
                "-o", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1, result.output
    assert not out.exists()

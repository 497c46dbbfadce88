"""The `aisec-scan` pre-commit hook (.pre-commit-hooks.yaml): a valid manifest, the right files, an entry that
runs and fails the commit on a malicious model; and, slow, pre-commit itself running it."""

from __future__ import annotations

import os
import pickle
import re
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
MANIFEST = ROOT / ".pre-commit-hooks.yaml"


class _System:
    def __reduce__(self):
        return (os.system, ("true",))


def _hook() -> dict:
    (hook,) = yaml.safe_load(MANIFEST.read_text())
    return hook


def test_manifest_has_what_pre_commit_needs() -> None:
    hook = _hook()
    assert hook["id"] == "aisec-scan" and hook["name"] and hook["language"] == "python"
    assert hook["pass_filenames"] is True
    assert shlex.split(hook["entry"]) == ["aisec", "scan"]
    assert entry_points(group="console_scripts", name="aisec")  # the command pre-commit's environment gets


def test_manifest_validates_against_pre_commits_schema() -> None:
    clientlib = pytest.importorskip("pre_commit.clientlib")
    (hook,) = clientlib.load_manifest(str(MANIFEST))
    assert hook["id"] == "aisec-scan"


@pytest.mark.parametrize(
    ("name", "selected"),
    [("model.pt", True), ("ckpt/epoch=3.ckpt", True), ("hf/pytorch_model.bin", True), ("m.safetensors", True),
     ("llm.Q4_K_M.gguf", True), ("clf.joblib", True), ("W.PKL", True), ("a.npz", True), ("m.onnx", True),
     ("m.keras", True), ("m.h5", True), ("bundle.7z", True), ("models.tar.gz", True), ("hf/tokenizer_config.json", True),
     ("README.md", False), ("train.py", False), ("config.json", False), ("data.csv", False), ("pt/notes.txt", False)],
)  # fmt: skip
def test_files_pattern_selects_model_files(name: str, selected: bool) -> None:
    assert bool(re.search(_hook()["files"], name)) is selected  # pre-commit matches with Python's re.search


def test_entry_passes_a_safe_model_and_fails_a_malicious_one(tmp_path: Path) -> None:
    (tmp_path / "good.pkl").write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(_System(), protocol=2))
    command, *args = shlex.split(_hook()["entry"])
    entry = [str(Path(sys.executable).parent / command), *args]  # as pre-commit runs it: from its environment

    def run(*files: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*entry, *files], capture_output=True, text=True, cwd=tmp_path, timeout=60)

    assert run("good.pkl").returncode == 0
    failed = run("good.pkl", "evil.pt")
    assert failed.returncode == 1 and "AISEC-SC-201" in failed.stdout and "evil.pt" in failed.stdout


def _documented_yaml() -> list[dict]:
    """The YAML blocks of docs/cli.md's "In pre-commit and CI" section."""
    section = (
        (ROOT / "docs" / "cli.md").read_text().split("## In pre-commit and CI", 1)[1].split("\n## ", 1)[0]
    )
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", section, re.S)]


def test_documented_pre_commit_config_uses_the_hook() -> None:
    config = next(block for block in _documented_yaml() if "repos" in block)
    (repo,) = config["repos"]
    assert [hook["id"] for hook in repo["hooks"]] == [_hook()["id"]]


def test_documented_workflow_uploads_the_scans_sarif() -> None:
    workflow = next(block for block in _documented_yaml() if "jobs" in block)
    (job,) = workflow["jobs"].values()
    scan = next(step["run"] for step in job["steps"] if step.get("run", "").startswith("aisec scan"))
    sarif = shlex.split(scan)[-1]
    upload = next(
        step for step in job["steps"] if step.get("uses", "").startswith("github/codeql-action/upload-sarif")
    )
    assert upload["with"]["sarif_file"] == sarif and sarif in upload["if"]
    assert workflow["permissions"]["security-events"] == "write"


@pytest.mark.slow
def test_pre_commit_runs_the_hook(tmp_path: Path) -> None:
    """`pre-commit try-repo` on a copy of this project (with its uncommitted changes): it installs aisec into its
    own environment (from the package index, about 30 s) and runs the hook on a repository's model files."""
    pre_commit = shutil.which("pre-commit", path=str(Path(sys.executable).parent))
    if pre_commit is None or shutil.which("git") is None:
        pytest.skip("needs pre-commit and git")
    hook_repo, project = tmp_path / "hook-repo", tmp_path / "project"
    shutil.copytree(ROOT / "src", hook_repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", ".pre-commit-hooks.yaml"):
        shutil.copy(ROOT / name, hook_repo / name)
    project.mkdir()
    (project / "weights.pkl").write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    (project / "notes.txt").write_text("not a model file\n")
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "cache"), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip

    def git(folder: Path, *args: str) -> None:
        subprocess.run(["git", *args], cwd=folder, env=env, check=True, capture_output=True)

    for folder in (hook_repo, project):
        git(folder, "init", "-q")
        git(folder, "add", "-A")
    git(hook_repo, "commit", "-qm", "hook")
    try_repo = [pre_commit, "try-repo", str(hook_repo), "aisec-scan", "--all-files"]
    passed = subprocess.run(try_repo, cwd=project, env=env, capture_output=True, text=True, timeout=900)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "Passed" in passed.stdout
    (project / "evil.pt").write_bytes(pickle.dumps(_System(), protocol=2))
    git(project, "add", "evil.pt")
    failed = subprocess.run(try_repo, cwd=project, env=env, capture_output=True, text=True, timeout=900)
    assert failed.returncode == 1 and "AISEC-SC-201" in failed.stdout, failed.stdout + failed.stderr

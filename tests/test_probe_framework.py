"""What every probe shares: the registry the plan and the runner read, the rules table, stable metric ids, and
the lookups reports and tests use."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aisec.assessment import rules
from aisec.assessment.finding import Finding, Metric, Provenance, Table
from aisec.assessment.plan import Plan, ProbesSection
from aisec.assessment.registry import PROBES
from aisec.core.attack_class import AttackClass
from aisec.core.severity import Severity

PROBE_SOURCES = sorted((Path(rules.__file__).parent / "probes").glob("*.py"))
METRIC_ID = re.compile(r"^[a-z][a-z0-9_]*(@[0-9][0-9.e+-]*)?$")


def test_the_plan_offers_every_registered_probe_and_the_runner_builds_it() -> None:
    assert list(ProbesSection.model_fields) == list(PROBES)
    for name, spec in PROBES.items():
        probe = spec.build(spec.section.model_construct())
        assert probe.name == name
        assert callable(probe.check) and callable(probe.run)


def test_probes_section_refuses_unknown_and_empty() -> None:
    plan = {
        "target": {"kind": "onnx", "path": "m.onnx", "input": {"shape": [4], "num_classes": 2}},
        "data": {"builtin": "digits"},
    }
    with pytest.raises(ValueError, match="probes.surprise"):
        Plan.model_validate({**plan, "probes": {"evasion": {}, "surprise": {}}})
    with pytest.raises(ValueError, match="enable at least one probe"):
        Plan.model_validate({**plan, "probes": {}})


def test_loading_a_plan_imports_no_probe_and_no_torch(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        textwrap.dedent("""\
            target: {kind: onnx, path: m.onnx, input: {shape: [4], num_classes: 2}}
            data: {builtin: digits}
            probes: {evasion: {}, extraction: {}}
            """)
    )
    code = (
        "import sys; from aisec.assessment.plan import load_plan; load_plan(sys.argv[1]); "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('aisec.assessment.probes.')))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(plan)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_rule_ids_are_unique_and_all_listed() -> None:
    constants = [value for value in vars(rules).values() if isinstance(value, rules.Rule)]
    assert len({rule.id for rule in constants}) == len(constants)
    assert set(rules.RULES.values()) == set(constants)
    assert all(re.fullmatch(r"AISEC-[A-Z]{3}-\d{3}", rule.id) for rule in constants)


def _docstrings(tree: ast.AST) -> set[int]:
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef)))]
    return {
        id(node.body[0].value)
        for node in nodes
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


@pytest.mark.parametrize("path", PROBE_SOURCES, ids=lambda p: p.name)
def test_probes_take_rule_ids_from_the_table_and_give_every_metric_an_id(path: Path) -> None:
    tree = ast.parse(path.read_text())
    docstrings = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            assert not re.search(r"AISEC-[A-Z]+-\d", node.value), f"{path.name}:{node.lineno}: use rules.py"
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        keywords = {k.arg: k.value for k in node.keywords}
        if node.func.id == "Metric":
            assert "id" in keywords, f"{path.name}:{node.lineno}: a metric without an id"
        if node.func.id == "Finding":
            rule, attack_class = keywords["rule_id"], keywords["attack_class"]
            assert isinstance(rule, ast.Attribute) and rule.attr == "id" and isinstance(rule.value, ast.Name)
            assert isinstance(getattr(rules, rule.value.id, None), rules.Rule), f"{path.name}:{node.lineno}"
            assert ast.dump(attack_class) == ast.dump(ast.Attribute(rule.value, "attack_class", ast.Load()))


def _finding(*metrics: Metric, tables: tuple[Table, ...] = ()) -> Finding:
    return Finding(
        rule_id=rules.ROBUSTNESS.id,
        title="t",
        attack_class=AttackClass.EVASION,
        severity=Severity.LOW,
        message="m",
        recommendation="r",
        provenance=Provenance("0", 0, 1, None, "a" * 64),
        metrics=metrics,
        tables=tables,
    )


def test_metrics_are_read_by_id_and_cells_by_column() -> None:
    finding = _finding(
        Metric("clean accuracy", 0.9, id="clean_accuracy"),
        Metric("robust accuracy at linf eps=0.05", 0.4, id="robust_accuracy@0.05"),
    )
    assert finding.metric("robust_accuracy@0.05").value == 0.4
    assert all(METRIC_ID.match(m.id) for m in finding.metrics)
    with pytest.raises(KeyError, match="clean_accuracy"):
        finding.metric("robust_accuracy@0.1")
    with pytest.raises(ValueError, match="repeat"):
        _finding(Metric("a", 1.0, id="a"), Metric("b", 2.0, id="a"))

    table = Table("t", ("budget", "robust accuracy"), (("0.05", 0.4), ("0.1", 0.2)))
    assert table.column("robust accuracy") == (0.4, 0.2)
    assert table.records()[1] == {"budget": "0.1", "robust accuracy": 0.2}
    with pytest.raises(KeyError, match="budget"):
        table.column("accuracy")
    with pytest.raises(ValueError, match="repeat"):
        Table("t", ("before", "after", "after"), ())

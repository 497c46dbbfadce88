"""Plans: valid ones load with resolved paths; bad ones name the file, the line and the field."""

import textwrap

import pytest

from aisec.assess.plan import load_plan
from aisec.errors import PlanError

GOOD = """\
name: t
target:
  kind: torch
  factory: aisec.demo.models:digits_cnn
  path: model/w.pt
  input: {shape: [1, 8, 8], num_classes: 10}
data:
  builtin: digits
  samples: 50
threat_model:
  budgets: [0.1, 0.05]
probes:
  evasion:
    attacks: [apgd-ce, square]
policy:
  min_robust_accuracy: {0.1: 0.5}
"""


def write(tmp_path, text):
    p = tmp_path / "plan.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_good_plan_loads(tmp_path):
    plan, digest = load_plan(write(tmp_path, GOOD))
    assert plan.threat_model.budgets == (0.05, 0.1)
    assert plan.target.path == tmp_path / "model/w.pt"
    assert plan.probes.evasion.attacks == ("apgd-ce", "square")
    assert len(digest) == 64


@pytest.mark.parametrize(
    "old,new,expected",
    [
        (
            "[apgd-ce, square]",
            "[apgd-ce, deepfool]",
            r"plan.yaml:14: probes.evasion.attacks.*unknown attack 'deepfool'",
        ),
        ("budgets: [0.1, 0.05]", "budgets: [0.1, -1]", r"plan.yaml:11: threat_model.budgets.*positive"),
        ("kind: torch", "kind: keras", r"plan.yaml:3: target.kind"),
        ("  factory: aisec.demo.models:digits_cnn\n", "", r"plan.yaml:2: target.*factory"),
        ("{0.1: 0.5}", "{0.2: 0.5}", r"policy.min_robust_accuracy names budgets \[0.2\]"),
        ("samples: 50", "samples: many", r"plan.yaml:9: data.samples"),
        ("name: t", "name: t\nsurprise: 1", r"plan.yaml:2: surprise: Extra inputs"),
    ],
)
def test_bad_plan_names_line_and_field(tmp_path, old, new, expected):
    assert old in GOOD
    with pytest.raises(PlanError, match=expected):
        load_plan(write(tmp_path, GOOD.replace(old, new)))


def test_unreadable_plans(tmp_path):
    with pytest.raises(PlanError, match="not valid YAML"):
        load_plan(write(tmp_path, "target: [unclosed\n"))
    with pytest.raises(PlanError, match="mapping"):
        load_plan(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(PlanError, match="cannot read"):
        load_plan(tmp_path / "missing.yaml")

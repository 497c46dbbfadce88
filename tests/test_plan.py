"""Plans: valid ones load with resolved paths; bad ones name the file, the line and the field."""

import re
import textwrap

import pytest

from aisec.assessment.plan import load_plan
from aisec.core.errors import PlanError

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


PRIVACY = GOOD.replace(
    "policy:",
    """  membership: {}
training:
  data: {builtin: digits, split: train}
  recipe: aisec.core.training:fit
  recipe_args: {epochs: 5}
defences:
  output_hardening: [{top_k: 1}, {label_only: true}]
  dp_training: {target_epsilon: 4}
policy:""",
)


def test_privacy_plan_loads_with_training_and_defences(tmp_path):
    plan, _ = load_plan(write(tmp_path, PRIVACY))
    assert plan.training.recipe_args == {"epochs": 5}
    assert plan.training.data.split == "train"
    assert [h.label_only for h in plan.defences.output_hardening] == [False, True]
    assert plan.defences.dp_training.target_epsilon == 4


@pytest.mark.parametrize(
    "old,new,expected",
    [
        (
            "training:\n  data: {builtin: digits, split: train}\n",
            "unused:\n  data: {}\n",
            r"unused: Extra inputs",
        ),
        ("  recipe: aisec.core.training:fit\n", "", r"lira, rmia train models like yours"),
        ("  membership: {}\n", "", r"dp_training is measured by probes.membership"),
        ("  membership: {}\n", "  membership: {attacks: [loss]}\n", None),
        ("kind: torch", "kind: onnx", r"need a torch target"),
        ("{target_epsilon: 4}", "{target_epsilon: 0}", r"defences.dp_training.target_epsilon"),
        ("[{top_k: 1}, ", "[{top_k: 0}, ", r"defences.output_hardening.0.top_k"),
        ("  membership: {}\n", "  membership: {attacks: [lira], shadows: 2}\n", r"probes.membership.shadows"),
    ],
)
def test_bad_privacy_plans(tmp_path, old, new, expected):
    assert old in PRIVACY
    text = PRIVACY.replace(old, new)
    if "kind: onnx" in text:
        text = text.replace("  factory: aisec.demo.models:digits_cnn\n", "")
    if expected is None:
        load_plan(write(tmp_path, text))
        return
    with pytest.raises(PlanError, match=expected):
        load_plan(write(tmp_path, text))


def test_membership_without_training_data(tmp_path):
    text = GOOD.replace("policy:", "  membership: {attacks: [loss]}\npolicy:")
    with pytest.raises(PlanError, match="need `training.data`"):
        load_plan(write(tmp_path, text))


ROBUST = (
    GOOD
    + """\
training:
  data: {builtin: digits, split: train}
defences:
  adversarial_training: [{method: pgd, eps: 0.1}, {method: trades, eps: 0.1, beta: 6}]
  certification: {method: crown}
  input_detectors: [feature_squeezing, mahalanobis]
  input_transforms: [{bit_depth: 3}, {median: 2}]
  null_labelling: {eps: 0.1}
"""
)


def test_robustness_defences_load(tmp_path):
    plan, _ = load_plan(write(tmp_path, ROBUST))
    defences = plan.defences
    assert [s.method for s in defences.adversarial_training] == ["pgd", "trades"]
    assert defences.adversarial_training[1].beta == 6 and defences.adversarial_training[0].epochs == 30
    assert defences.input_transforms[0].bit_depth == 3 and defences.input_transforms[1].median == 2
    assert defences.robustness
    assert defences.retrains == ["adversarial_training[0]", "adversarial_training[1]", "null_labelling"]


@pytest.mark.parametrize(
    "old,new,expected",
    [
        # ART's Madry trainer defaults to eps 8 (0-255 units): on [0, 1] pixels it would be refused here
        (
            "{method: pgd, eps: 0.1}",
            "{method: pgd, eps: 8}",
            r"defences.adversarial_training\[0\].eps: 8 exceeds the input range \(width 1\)",
        ),
        (
            "null_labelling: {eps: 0.1}",
            "null_labelling: {eps: 1.5}",
            r"defences.null_labelling.eps: 1.5 exceeds",
        ),
        ("{method: pgd, eps: 0.1}", "{method: madry, eps: 0.1}", r"adversarial_training.0.method"),
        ("[{bit_depth: 3}, {median: 2}]", "[{bit_depth: 9}]", r"input_transforms.0.bit_depth"),
        ("[{bit_depth: 3}, {median: 2}]", "[{}]", r"give `bit_depth` or `median`"),
        ("[feature_squeezing, mahalanobis]", "[lid]", r"input_detectors.0"),
        ("  evasion:\n    attacks: [apgd-ce, square]\n", "  inversion: {}\n", r"measured by probes.evasion"),
        ("training:\n  data: {builtin: digits, split: train}\n", "", r"trains a model like yours"),
        ("kind: torch", "kind: onnx", r"needs a torch target"),
    ],
)
def test_bad_robustness_defences(tmp_path, old, new, expected):
    text = ROBUST.replace(old, new)
    if new == "kind: onnx":
        text = text.replace("  factory: aisec.demo.models:digits_cnn\n", "")
    with pytest.raises(PlanError, match=expected):
        load_plan(write(tmp_path, text))


def test_data_validation_section_resolves_its_files_and_policy(tmp_path):
    text = GOOD.replace(
        "probes:\n",
        "probes:\n  data_validation:\n    reference: {path: data/train.csv, source: provider}\n"
        "    current: {path: data/new.csv}\n    key: id\n    fdr: 0.02\n",
    ).replace(
        "policy:\n", "policy:\n  data_validation: {max_label_change_rate: 0.01, max_drifted_features: 2}\n"
    )
    plan, _ = load_plan(write(tmp_path, text))
    section = plan.probes.data_validation
    assert (
        section.reference.path == tmp_path / "data/train.csv"
        and section.current.path == tmp_path / "data/new.csv"
    )
    assert section.reference.source == "provider" and section.key == "id" and section.fdr == 0.02
    assert plan.policy.data_validation.max_label_change_rate == 0.01
    assert (
        plan.policy.data_validation.max_drifted_features == 2
        and plan.policy.data_validation.max_leaked_share == 0
    )


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("{current: {path: a.csv}}", "probes.data_validation.reference: Field required"),
        ("{reference: {path: a.csv}, current: {path: b.csv}, fdr: 1.5}", "probes.data_validation.fdr"),
        ("{reference: {path: a.csv, colour: red}, current: {path: b.csv}}", "colour"),
    ],
)
def test_bad_data_validation_sections(tmp_path, section, expected):
    text = GOOD.replace("probes:\n", f"probes:\n  data_validation: {section}\n")
    with pytest.raises(PlanError, match=expected):
        load_plan(write(tmp_path, text))


HTTP_TARGET = """\
target:
  kind: http
  url: https://models.example/v1/predict
  headers: {Authorization: "Bearer ${AISEC_GUARD_KEY}"}
  input: {shape: [1, 8, 8], num_classes: 10}
  response: {scores: outputs.probs}
"""


def http(text):
    """`text` with its torch target replaced by a served one."""
    start, end = text.index("target:\n"), text.index("data:\n")
    return text[:start] + HTTP_TARGET + text[end:]


def test_http_target_plan_loads_without_a_file(tmp_path):
    plan, _ = load_plan(write(tmp_path, http(GOOD)))
    target = plan.target
    assert target.kind == "http" and target.url == "https://models.example/v1/predict"
    assert target.headers == {"Authorization": "Bearer ${AISEC_GUARD_KEY}"}  # expanded when built, not loaded
    assert (target.returns, target.request.field, target.response.scores, target.response.labels) == (
        "scores",
        "inputs",
        "outputs.probs",
        "labels",
    )
    assert (target.batch_size, target.timeout_s, target.retries) == (256, 10.0, 5)


@pytest.mark.parametrize(
    "base,old,new,expected",
    [
        (GOOD, "  evasion:", "  inspection: {}\n  evasion:", r"probes.inspection scans and loads"),
        (PRIVACY, "", "", r"need a torch target with `factory`"),
        (ROBUST, "", "", r"defences.adversarial_training needs a torch target"),
        (GOOD, "  evasion:", "  poisoning: {}\n  evasion:", r"probes.poisoning retrains the model"),
        (GOOD, "kind: http", "kind: grpc", r"plan.yaml:3: target.kind: unknown kind 'grpc'"),
        (GOOD, "  kind: http\n", "", r"plan.yaml:2: target.kind: choose one of torch, .*, http"),
        (GOOD, "outputs.probs", "outputs..probs", r"plan.yaml:7: target.response.scores"),
        (GOOD, "https://models", "https://me:pw@models", r"target.url: the URL holds credentials"),
        (GOOD, "  response:", "  factory: a.b:c\n  response:", r"plan.yaml:7: target.factory: Extra inputs"),
    ],
)
def test_http_target_refused_where_a_file_or_factory_is_needed(tmp_path, base, old, new, expected):
    text = http(base).replace(old, new)
    if base is PRIVACY:
        text = text.replace("  dp_training: {target_epsilon: 4}\n", "")
    with pytest.raises(PlanError, match=expected):
        load_plan(write(tmp_path, text))


def test_extraction_strategies_include_perturbation(tmp_path):
    text = GOOD.replace("  evasion:", "  extraction: {strategies: [natural, perturbation]}\n  evasion:")
    plan, _ = load_plan(write(tmp_path, text))
    assert plan.probes.extraction.strategies == ("natural", "perturbation")


def test_executor_and_tracking_sections(tmp_path):
    plan, _ = load_plan(write(tmp_path, GOOD))
    assert (plan.executor.kind, plan.executor.threads, plan.tracking) == ("in_process", 1, None)
    text = GOOD + (
        "executor: {kind: ray, address: auto, workers: 8, gpus_per_task: 0.25}\n"
        "tracking: {mlflow: 'sqlite:///runs/mlflow.db', experiment: digits}\n"
    )
    plan, _ = load_plan(write(tmp_path, text))
    assert (plan.executor.kind, plan.executor.address, plan.executor.workers) == ("ray", "auto", 8)
    assert plan.executor.gpus_per_task == 0.25
    assert plan.tracking.mlflow == f"sqlite:///{tmp_path}/runs/mlflow.db"  # beside the plan, as its files are
    assert plan.tracking.experiment == "digits"
    absolute = GOOD + "tracking: {mlflow: 'http://127.0.0.1:5000'}\n"
    assert load_plan(write(tmp_path, absolute))[0].tracking.mlflow == "http://127.0.0.1:5000"


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("executor: {kind: dask}", "executor.kind: Input should be 'in_process', 'pool' or 'ray'"),
        (
            "executor: {kind: pool, gpus_per_task: 1}",
            "gpus_per_task: for the ray executor only, not pool",
        ),
        ("executor: {kind: in_process, workers: 4}", "the in_process executor runs one job at a time"),
        (
            "executor: {kind: pool, workers: 0}",
            "executor.workers: Input should be greater than or equal to 1",
        ),
        ("tracking: {mlflow: mlruns}", "'mlruns' is a folder: MLflow's file store"),
        ("tracking: {experiment: x}", "tracking.mlflow: Field required"),
    ],
)
def test_bad_executor_and_tracking_sections(tmp_path, section, expected):
    with pytest.raises(PlanError, match=re.escape(expected)):
        load_plan(write(tmp_path, GOOD + section + "\n"))


def test_the_membership_probe_no_longer_takes_workers(tmp_path):
    with pytest.raises(PlanError, match=r"probes\.membership\.workers: Extra inputs are not permitted"):
        load_plan(write(tmp_path, PRIVACY.replace("  membership: {}", "  membership: {workers: 2}")))

"""The extraction, inversion and membership probes in an assessment: their findings and figures, the
defences re-measured beside the model as served, the report's galleries, and refusals before any query.

Setting: a 1-hidden-layer MLP trained to fit 300 digits (the training set); the assessment data is the
450-digit test split (150 non-members under attack, the rest the attacker's population and pool).
"""

from __future__ import annotations

import functools

import jsonschema
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from aisec.assessment.finding import Assessment, Finding
from aisec.assessment.plan import (
    AttributeProbeSection,
    DefencesSection,
    DPTrainingSection,
    EvasionProbeSection,
    ExtractionProbeSection,
    InversionProbeSection,
    MembershipProbeSection,
    OutputHardeningSection,
    ProbesSection,
)
from aisec.assessment.probe import Training
from aisec.assessment.runner import run_assessment
from aisec.assessment.threat_model import ThreatModel
from aisec.core.errors import BadInputError, CapabilityError
from aisec.core.seeding import build_model
from aisec.core.training import fit
from aisec.data.builtin import Split
from aisec.data.dataset import LabelledData
from aisec.report import load_schema, to_json_dict
from aisec.targets.base import Access, InputSpec
from aisec.targets.sklearn_models import sklearn_target
from aisec.targets.torch_target import TorchTarget

pytestmark = pytest.mark.training  # its figures depend on trained models

torch.set_num_threads(1)
SPEC = InputSpec((1, 8, 8), 10)
FIT = functools.partial(fit, epochs=60)
SCORES = ThreatModel(knowledge=Access.SCORES, budgets=(0.1, 0.2, 0.3))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))


@pytest.fixture(scope="module")
def training(digits: Split) -> Training:
    return Training(digits.train.subset(300, seed=0), mlp, FIT)


@pytest.fixture(scope="module")
def victim(training: Training) -> nn.Module:
    return FIT(build_model(mlp, 0), training.data, seed=0)


@pytest.fixture(scope="module")
def assessment(victim: nn.Module, training: Training, digits: Split) -> Assessment:
    probes = ProbesSection(
        extraction=ExtractionProbeSection(query_budget=500),
        inversion=InversionProbeSection(steps=100, query_budget=8000),
        membership=MembershipProbeSection(records=150, shadows=8),
    )
    defences = DefencesSection(
        output_hardening=(
            OutputHardeningSection(top_k=1, decimals=2),
            OutputHardeningSection(label_only=True),
        ),
        dp_training=DPTrainingSection(target_epsilon=4, epochs=20),
    )
    return run_assessment(TorchTarget(victim, SPEC), digits.test, probes, threat_model=SCORES, training=training,
                          defences=defences, seed=0)  # fmt: skip


def _finding(assessment: Assessment, rule: str) -> Finding:
    return next(f for f in assessment.findings if f.rule_id == rule)


def _rows(finding: Finding, api: str) -> list[dict]:
    return [row for row in finding.tables[0].records() if row["model / API"] == api]


def test_membership_leaks_and_dp_sgd_brings_it_to_chance(assessment: Assessment) -> None:
    # Measured (seed 0): as served loss AUC 0.590, LiRA online 0.615 (TPR@0.1% 2.7%), RMIA 0.670; DP-SGD at
    # epsilon 3.99: loss 0.554, LiRA 0.496, RMIA 0.540; test accuracy 62.4% vs 95.4%.
    membership = _finding(assessment, "AISEC-MIA-001")
    served = _rows(membership, "as served")
    assert [row["attack"].split(" (")[0] for row in served] == [
        "loss threshold",
        "LiRA online",
        "RMIA online",
    ]
    assert max(row["ROC AUC"] for row in served) > 0.62
    assert [row["attack"].split(" (")[0] for row in _rows(membership, "labels only")] == [
        "gap",
        "noise robustness",
    ]
    assert len(_rows(membership, "top-1, 2 decimals")) == 3
    dp_rows = [
        row for row in membership.tables[0].records() if row["model / API"].startswith("DP-SGD, epsilon")
    ]
    assert len(dp_rows) == 3
    assert all(row["ROC AUC"] < 0.58 for row in dp_rows)
    assert membership.charts[0].log_x and membership.charts[0].log_y

    defences = _finding(assessment, "AISEC-MIA-002")
    assert defences.metric("dp_epsilon").value <= 4.0
    assert 0 < defences.metric("dp_accuracy_cost").value < 0.5
    assert defences.tables[0].column("defence")[:3] == (
        "none (as served)",
        "top-1, 2 decimals",
        "labels only",
    )


def test_extraction_steals_a_faithful_copy_through_each_api(assessment: Assessment) -> None:
    # Measured: natural 270 queries (the whole pool) 94.1 % agreement, active 500 queries 86.7 %; top-1 with 2
    # decimals 91.5 %, labels only 91.1 %; 36.5 % of surrogate PGD examples at L-inf 0.2 transfer.
    extraction = _finding(assessment, "AISEC-EXT-001")
    rows = extraction.tables[0].records()
    assert [(row["API"], row["method"]) for row in rows] == [
        ("as served", "learning/natural"),
        ("as served", "learning/active"),
        ("top-1, 2 decimals", "learning/natural"),
        ("labels only", "learning/natural"),
    ]
    assert max(row["agreement"] for row in rows) > 0.9
    assert all(row["queries"] <= 500 for row in rows)
    assert all(row["agreement"] > 0.8 for row in rows[2:])  # hardening does not stop a natural-data attacker
    assert extraction.severity.value == "high"
    assert 0.1 < extraction.metric("transfer_rate").value < 1


def test_inversion_galleries_and_the_label_only_api(assessment: Assessment) -> None:
    inversion = _finding(assessment, "AISEC-INV-001")
    reconstructions, means = inversion.galleries
    assert len(reconstructions.pictures) == len(means.pictures) == 10
    assert len(reconstructions.pictures[0].image) == 8 and len(reconstructions.pictures[0].image[0]) == 8
    rows = inversion.tables[0].records()
    assert rows[0]["API"] == "as served" and rows[0]["queries"] <= 8000
    assert (rows[-1]["API"], rows[-1]["access"], rows[-1]["classes identified"]) == (
        "labels only",
        "labels",
        "not possible: no scores",
    )


def test_the_report_validates_against_the_schema(assessment: Assessment) -> None:
    jsonschema.Draft202012Validator(load_schema()).validate(to_json_dict(assessment))


def test_equation_solving_of_a_linear_model_in_the_probe(digits: Split) -> None:
    model = LogisticRegression(max_iter=2000).fit(digits.train.x.flatten(1).numpy(), digits.train.y.numpy())
    target = sklearn_target(model, SPEC)
    probes = ProbesSection(extraction=ExtractionProbeSection(query_budget=200, strategies=("natural",)))
    defences = DefencesSection(output_hardening=(OutputHardeningSection(decimals=3),))
    assessment = run_assessment(target, digits.test, probes, threat_model=SCORES, defences=defences, seed=0)
    rows = _finding(assessment, "AISEC-EXT-001").tables[0].records()
    exact = next(row for row in rows if row["method"] == "equation_solving")
    assert exact["queries"] == 65 and exact["agreement"] == 1.0 and exact["parameter error"] < 1e-4
    rounded = next(row for row in rows if row["API"] == "3 decimals")
    assert rounded["method"] == "adaptive_equation_solving" and rounded["queries"] <= 200
    assert rounded["agreement"] > 0.99


@pytest.mark.parametrize(
    "threat_model,probes,error,match",
    [
        (
            ThreatModel(knowledge=Access.LABELS),
            ProbesSection(membership=MembershipProbeSection(attacks=("lira",))),
            CapabilityError,
            "lira need class scores",
        ),
        (
            ThreatModel(knowledge=Access.LABELS),
            ProbesSection(inversion=InversionProbeSection()),
            CapabilityError,
            "scores",
        ),
        (
            SCORES,
            ProbesSection(inversion=InversionProbeSection(query_budget=50)),
            BadInputError,
            "query_budget",
        ),
        (
            SCORES,
            ProbesSection(membership=MembershipProbeSection(records=301, attacks=("loss",))),
            BadInputError,
            "training set has 300",
        ),
        (
            SCORES,
            ProbesSection(extraction=ExtractionProbeSection(query_budget=3, strategies=("active",))),
            BadInputError,
            "one per round",
        ),
    ],
)
def test_refused_before_any_query(victim, training, digits, threat_model, probes, error, match) -> None:
    target = TorchTarget(victim, SPEC)
    probes = probes.model_copy(update={"evasion": EvasionProbeSection(attacks=("square",))})
    if threat_model.knowledge is Access.LABELS:
        probes = probes.model_copy(update={"evasion": EvasionProbeSection(attacks=("hopskipjump",))})
    with pytest.raises(error, match=match):
        run_assessment(target, digits.test, probes, threat_model=threat_model, training=training)
    assert target.queries.total == 0


def test_equation_solving_budget_is_checked_before_any_query(digits: Split) -> None:
    model = LogisticRegression(max_iter=500).fit(digits.train.x.flatten(1).numpy(), digits.train.y.numpy())
    target = sklearn_target(model, SPEC)
    probes = ProbesSection(extraction=ExtractionProbeSection(query_budget=64, strategies=("natural",)))
    with pytest.raises(BadInputError, match="needs at least 65 queries"):
        run_assessment(target, digits.test, probes, threat_model=SCORES)
    assert target.queries.total == 0


def _memorising_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 256), nn.ReLU(), nn.Linear(256, 2))


def test_attribute_probe_finds_memorised_attributes_and_not_in_non_members() -> None:
    """100 records with random labels and an independent binary feature 0: only memorisation links them
    (the setting of tests/test_attribute_inference.py)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(400, 10, generator=g)
    x[:, 0] = torch.randint(0, 2, (400,), generator=g).float()
    y = torch.randint(0, 2, (400,), generator=g)
    members = LabelledData(x[:100], y[:100], "memorised")
    model = fit(build_model(_memorising_mlp, 0), members, epochs=400, seed=0)
    target = TorchTarget(model, InputSpec((10,), 2))
    probes = ProbesSection(attribute=AttributeProbeSection(feature=0, values=(0.0, 1.0), records=100))
    assessment = run_assessment(target, LabelledData(x[100:], y[100:], "others"), probes, threat_model=SCORES,
                                training=Training(members), seed=0)  # fmt: skip
    finding = _finding(assessment, "AISEC-ATT-001")
    assert finding.metric("member_gain").value >= 0.2  # measured: +0.30
    assert finding.metric("non_member_gain").value <= 0.05
    assert finding.severity.value == "high"
    assert finding.tables[0].column("records") == ("training records", "non-members")


def test_attribute_probe_refuses_a_feature_outside_the_sample(victim, training, digits) -> None:
    target = TorchTarget(victim, SPEC)
    probes = ProbesSection(attribute=AttributeProbeSection(feature=64, values=(0.0, 1.0)))
    with pytest.raises(BadInputError, match="feature"):
        run_assessment(target, digits.test, probes, threat_model=SCORES, training=training)
    assert target.queries.total == 0


def test_equation_solving_through_a_label_only_api_is_budgeted_before_any_query(digits: Split) -> None:
    """Solving a linear model from labels needs num_classes x (d + 1) = 650 queries: a plan whose budget pays
    for the scores but not for its label-only defence variant fails before the first attempt."""
    model = LogisticRegression(max_iter=500).fit(digits.train.x.flatten(1).numpy(), digits.train.y.numpy())
    target = sklearn_target(model, SPEC)
    probes = ProbesSection(extraction=ExtractionProbeSection(query_budget=200, strategies=("natural",)))
    defences = DefencesSection(output_hardening=(OutputHardeningSection(label_only=True),))
    with pytest.raises(BadInputError, match=r"from labels \(labels only\) needs at least 650 queries"):
        run_assessment(target, digits.test, probes, threat_model=SCORES, defences=defences)
    assert target.queries.total == 0

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
from seed_figures import SEEDS, median_figures
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
from aisec.data.builtin import Split, load_builtin
from aisec.data.dataset import LabelledData
from aisec.report import load_schema, to_json_dict
from aisec.targets.base import Access, InputSpec
from aisec.targets.sklearn_models import sklearn_target
from aisec.targets.torch_target import TorchTarget

pytestmark = pytest.mark.training  # its figures depend on trained models

SPEC = InputSpec((1, 8, 8), 10)
FIT = functools.partial(fit, epochs=60)
SCORES = ThreatModel(knowledge=Access.SCORES, budgets=(0.1, 0.2, 0.3))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))


@pytest.fixture(scope="module")
def training(digits: Split) -> Training:
    return Training(digits.train.subset(300, seed=0), mlp, FIT)


def _victim(training: Training, seed: int) -> nn.Module:
    return FIT(build_model(mlp, seed), training.data, seed=seed)


def _assess(
    victim: nn.Module, training: Training, digits: Split, seed: int, *, full: bool = True
) -> Assessment:
    """The extraction and membership probes beside the hardened APIs and, in `full`, inversion and the DP-SGD
    retraining (two thirds of the time: the DP model and its DP shadow models)."""
    probes = ProbesSection(
        extraction=ExtractionProbeSection(query_budget=500),
        inversion=InversionProbeSection(steps=100, query_budget=8000) if full else None,
        membership=MembershipProbeSection(records=150, shadows=8),
    )
    defences = DefencesSection(
        output_hardening=(
            OutputHardeningSection(top_k=1, decimals=2),
            OutputHardeningSection(label_only=True),
        ),
        dp_training=DPTrainingSection(target_epsilon=4, epochs=20) if full else None,
    )
    return run_assessment(TorchTarget(victim, SPEC), digits.test, probes, threat_model=SCORES, training=training,
                          defences=defences, seed=seed)  # fmt: skip


@pytest.fixture(scope="module")
def victim(training: Training) -> nn.Module:
    return _victim(training, SEEDS[0])


@pytest.fixture(scope="module")
def assessment(victim: nn.Module, training: Training, digits: Split) -> Assessment:
    return _assess(victim, training, digits, SEEDS[0])


@pytest.fixture(scope="module")
def assessments(assessment: Assessment, training: Training, digits: Split) -> list[Assessment]:
    """Seed 0's assessment and, for the other seeds' victims, the extraction and membership probes alone (the
    DP-SGD figures of those seeds are the slow test's)."""
    others = [_assess(_victim(training, seed), training, digits, seed, full=False) for seed in SEEDS[1:]]
    return [assessment, *others]


def _finding(assessment: Assessment, rule: str) -> Finding:
    return next(f for f in assessment.findings if f.rule_id == rule)


def _rows(finding: Finding, api: str) -> list[dict]:
    return [row for row in finding.tables[0].records() if row["model / API"] == api]


def _served_figures(assessment: Assessment) -> dict[str, float]:
    """The strongest membership attack on the model as served, and the extraction figures."""
    membership, extraction = _finding(assessment, "AISEC-MIA-001"), _finding(assessment, "AISEC-EXT-001")
    rows = extraction.tables[0].records()
    return {
        "membership AUC as served": max(row["ROC AUC"] for row in _rows(membership, "as served")),
        "best agreement": extraction.metric("best_agreement").value,
        "lowest hardened agreement": min(row["agreement"] for row in rows if row["API"] != "as served"),
        "hardened copies by natural queries": float(rows[-1]["method"] == "learning/natural"),
        "transfer rate": extraction.metric("transfer_rate").value,
    }


def _dp_figures(assessment: Assessment) -> dict[str, float]:
    """The strongest membership attack on the DP-SGD model, and the accuracy DP-SGD cost."""
    rows = _finding(assessment, "AISEC-MIA-001").tables[0].records()
    return {
        "DP membership AUC": max(row["ROC AUC"] for row in rows if row["model / API"].startswith("DP-SGD")),
        "DP accuracy cost": _finding(assessment, "AISEC-MIA-002").metric("dp_accuracy_cost").value,
    }


def figures(seed: int) -> dict[str, float]:
    """The full assessment of the victim trained from `seed` (the probes seeded from `seed`), and the
    attribute probe on records drawn and a model trained from `seed`."""
    digits = load_builtin("digits", seed=0)
    training = Training(digits.train.subset(300, seed=0), mlp, FIT)
    assessment = _assess(_victim(training, seed), training, digits, seed)
    gains = _attribute(seed)
    return (
        _served_figures(assessment)
        | _dp_figures(assessment)
        | {
            "attribute member gain": gains.metric("member_gain").value,
            "attribute non-member gain": gains.metric("non_member_gain").value,
        }
    )


def test_membership_leaks_and_dp_sgd_brings_it_to_chance(assessment: Assessment, assessments) -> None:
    """Seed study (bench/seed_study.py test_privacy_probes, seeds 0-4 under native AVX-512, default and AVX2
    kernels, n=15; each seed trains the victim and seeds the assessment), min/median/max: the strongest attack
    on the model as served AUC 0.633/0.692/0.714; on the DP-SGD model (epsilon 3.99) 0.510/0.542/0.568;
    accuracy paid for DP-SGD 0.337/0.396/0.457. As served, asserted on the median of three seeds; the DP-SGD
    figures, which cost two thirds of an assessment, on seed 0 against bounds that every run of the study
    keeps, and on the median of three seeds in the slow test below."""
    membership = _finding(assessment, "AISEC-MIA-001")
    served = _rows(membership, "as served")
    assert [row["attack"].split(" (")[0] for row in served] == [
        "loss threshold",
        "LiRA online",
        "RMIA online",
    ]
    median = median_figures([_served_figures(each) for each in assessments])
    assert median["membership AUC as served"] > 0.62
    assert [row["attack"].split(" (")[0] for row in _rows(membership, "labels only")] == [
        "gap",
        "noise robustness",
    ]
    assert len(_rows(membership, "top-1, 2 decimals")) == 3
    dp_rows = [
        row for row in membership.tables[0].records() if row["model / API"].startswith("DP-SGD, epsilon")
    ]
    assert len(dp_rows) == 3
    dp = _dp_figures(
        assessment
    )  # one run, its thresholds beyond every run of the study; three in the slow test
    assert dp["DP membership AUC"] < 0.6
    assert membership.charts[0].log_x and membership.charts[0].log_y

    defences = _finding(assessment, "AISEC-MIA-002")
    assert defences.metric("dp_epsilon").value <= 4.0
    assert 0.2 < dp["DP accuracy cost"] < 0.5
    assert defences.tables[0].column("defence")[:3] == (
        "none (as served)",
        "top-1, 2 decimals",
        "labels only",
    )


@pytest.mark.slow
def test_dp_sgd_brings_membership_to_chance_over_three_seeds(
    assessment: Assessment, training, digits
) -> None:
    """The DP-SGD figures of the test above on the median of three seeds (seed study as above)."""
    others = [_assess(_victim(training, seed), training, digits, seed) for seed in SEEDS[1:]]
    median = median_figures([_dp_figures(each) for each in (assessment, *others)])
    assert median["DP membership AUC"] < 0.58
    assert 0.25 < median["DP accuracy cost"] < 0.5


def test_extraction_steals_a_faithful_copy_through_each_api(assessment: Assessment, assessments) -> None:
    """Seed study (bench/seed_study.py test_privacy_probes, seeds 0-4 under native AVX-512, default and AVX2
    kernels, n=15; each seed trains the victim and seeds the assessment), min/median/max: best agreement
    0.944/0.948/0.963; the lowest agreement through a hardened API 0.485/0.933/0.944; transfer rate
    0.273/0.317/0.459. The probe attacks the hardened APIs with the strongest method as served: natural
    queries on 14 runs of 15, each copying every hardened API at 0.91 or more; on the other (seed 2 under
    default kernels) active queries won by 1.5 points and copied the labels-only API at only 0.485. Asserted
    on the median of three seeds."""
    extraction = _finding(assessment, "AISEC-EXT-001")
    rows = extraction.tables[0].records()
    assert [(row["API"], row["method"]) for row in rows[:2]] == [
        ("as served", "learning/natural"),
        ("as served", "learning/active"),
    ]
    strongest = max(rows[:2], key=lambda row: row["agreement"])["method"]  # what the hardened APIs face
    assert [(row["API"], row["method"]) for row in rows[2:]] == [
        ("top-1, 2 decimals", strongest),
        ("labels only", strongest),
    ]
    assert all(row["queries"] <= 500 for row in rows)
    for finding in (_finding(each, "AISEC-EXT-001") for each in assessments):  # severity follows agreement
        best = finding.metric("best_agreement").value
        assert finding.severity.value == ("high" if best >= 0.9 else "medium" if best >= 0.7 else "low")
    median = median_figures([_served_figures(each) for each in assessments])
    assert median["best agreement"] > 0.9
    assert median["lowest hardened agreement"] > 0.8  # hardening does not stop a natural-data attacker
    assert median["hardened copies by natural queries"] == 1.0  # two of three or more
    assert 0.1 < median["transfer rate"] < 1


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


def _attribute(seed: int) -> Finding:
    """100 records with random labels and an independent binary feature 0, drawn from `seed`, memorised by a
    model trained from `seed`: only memorisation links them (the setting of
    tests/test_attribute_inference.py)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(400, 10, generator=g)
    x[:, 0] = torch.randint(0, 2, (400,), generator=g).float()
    y = torch.randint(0, 2, (400,), generator=g)
    members = LabelledData(x[:100], y[:100], "memorised")
    model = fit(build_model(_memorising_mlp, seed), members, epochs=400, seed=seed)
    target = TorchTarget(model, InputSpec((10,), 2))
    probes = ProbesSection(attribute=AttributeProbeSection(feature=0, values=(0.0, 1.0), records=100))
    assessment = run_assessment(target, LabelledData(x[100:], y[100:], "others"), probes, threat_model=SCORES,
                                training=Training(members), seed=seed)  # fmt: skip
    return _finding(assessment, "AISEC-ATT-001")


def test_attribute_probe_finds_memorised_attributes_and_not_in_non_members() -> None:
    """100 records with random labels and an independent binary feature 0: only memorisation links them.

    Seed study (bench/seed_study.py test_privacy_probes, seeds 0-4 under native AVX-512, default and AVX2
    kernels, n=15; each seed draws the records, trains the model and seeds the assessment), min/median/max:
    members' gain over the best baseline 0.23/0.24/0.29, non-members' -0.14/-0.04/-0.01. Asserted on the
    median of three seeds."""
    findings = [_attribute(seed) for seed in SEEDS]
    assert findings[0].tables[0].column("records") == ("training records", "non-members")
    for finding in findings:  # severity follows the members' gain
        gain = finding.metric("member_gain").value
        assert finding.severity.value == ("high" if gain >= 0.15 else "medium" if gain >= 0.05 else "low")
    gains = [
        {name: finding.metric(name).value for name in ("member_gain", "non_member_gain")}
        for finding in findings
    ]
    median = median_figures(gains)
    assert median["member_gain"] >= 0.15
    assert median["non_member_gain"] <= 0.05


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

"""The inspection probe (`probes.inspection`): the calibrated backdoor scan on the held-out test zoo, the checks a
black box gets and those it skips, tabular models, and the report's stable metric ids.

The backdoor scan's rule was chosen on tests/backdoor_zoo.py's STUDY_ZOO (bench/inspection.py, docs/inspect.md:
1 false alarm in 30 clean models, 33 of 36 backdoors found, 32 with the right class). TEST_ZOO's seeds are not
in the study: measured there, the three clean models score norm ratios 0.85 / 0.68 / 0.61 (native kernels;
0.82 / 0.72 / 0.65 under ATEN_CPU_CAPABILITY=default) with MM-BD pointing at another class than Neural Cleanse
on the last two (none flagged under either); the square patch and the blend are flagged with their class
(ratios 0.48 and 0.20-0.22, p < 1e-18); the 3x3 checkerboard with a margin at 7 % is missed on native kernels
(ratio 0.72, p 0.23), as the study's three misses were, and found under the portable ones (ratio 0.62, p 3e-4).
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from backdoor_zoo import TEST_ZOO, ZooModel, inspection_data, train_zoo_model
from torch import nn

import aisec
from aisec.core.errors import BadInputError
from aisec.data.builtin import load_builtin
from aisec.data.dataset import LabelledData
from aisec.defend.supply_chain.behaviour.backdoor_scan import (
    CALIBRATION_FILE,
    BackdoorScanConfig,
    backdoor_scan,
    calibrate,
    decide,
)

DIGITS_INPUT = {"input": {"shape": [1, 8, 8], "num_classes": 10}}


@functools.cache
def zoo_model(spec: ZooModel) -> nn.Module:
    return train_zoo_model(spec)


@functools.cache
def clean_digits() -> tuple[torch.Tensor, torch.Tensor]:
    defender, _ = inspection_data(300)
    return defender.x, defender.y


@functools.cache
def scanned(spec: ZooModel) -> tuple[bool, int | None]:
    x, y = clean_digits()
    result = backdoor_scan(zoo_model(spec), LabelledData(x, y, "clean"))
    return result.flagged, result.suspected_target


@pytest.mark.training
def test_the_scan_names_held_out_backdoors_and_stays_quiet_on_clean_models() -> None:
    clean = [s for s in TEST_ZOO if not s.backdoored]
    backdoored = [s for s in TEST_ZOO if s.backdoored]
    false_alarms = [s.name for s in clean if scanned(s)[0]]
    found = [s.name for s in backdoored if scanned(s) == (True, s.target)]
    assert len(false_alarms) <= 1, false_alarms  # measured 0 of 3
    assert len(found) >= 2, found  # measured 2 of 3: the margin-1 checkerboard is missed (module docstring)


def test_the_rule() -> None:
    config = BackdoorScanConfig()
    assert decide(0.5, 3, 0.5, 7, config).suspected_target == 3  # a tiny trigger alone
    assert not decide(0.65, 3, 0.5, 7, config).flagged  # a small one, the detectors disagreeing
    assert decide(0.65, 3, 0.5, 3, config).suspected_target == 3  # ... and agreeing
    only_mmbd = decide(0.9, 3, 1e-5, 7, config)
    assert only_mmbd.flagged and only_mmbd.suspected_target == 7 and only_mmbd.by_p_value
    assert not decide(0.9, 3, 0.01, 3, config).flagged
    with pytest.raises(BadInputError, match="ratio_alone"):
        BackdoorScanConfig(ratio_alone=0.8, ratio_agreeing=0.7)


def test_calibration_counts_the_study_clean_models_that_scored_as_low() -> None:
    calibration = json.loads(CALIBRATION_FILE.read_text())
    ratios = sorted(m["norm_ratio"] for m in calibration["clean"])
    assert len(ratios) >= 20
    assert calibrate(0.0, 1.0, by_p_value=False).norm_ratio_as_low == 0
    assert calibrate(ratios[2], 1.0, by_p_value=False).as_suspect == 3
    assert calibrate(1.0, 0.0, by_p_value=True).as_suspect == 0


@pytest.mark.training
def test_the_probe_reports_the_backdoor_with_stable_ids_and_the_trigger_beside_clean_examples(
    tmp_path,
) -> None:
    spec = next(s for s in TEST_ZOO if s.name.startswith("patch-square3"))
    x, y = clean_digits()
    result = aisec.assess(zoo_model(spec), x, y, plan={"probes": {"inspection": {}}, "target": DIGITS_INPUT})
    scan = result.finding("AISEC-BKD-004")
    assert scan.metric("flagged").value is True
    assert scan.metric("suspected_target").value == spec.target
    assert scan.severity.value == "high"
    pictures = scan.galleries[0].pictures
    assert any("reversed trigger" in p.caption for p in pictures)
    assert any(p.caption.startswith("clean") for p in pictures)
    assert result.finding("AISEC-AUD-001").metric("shortcut_class").value is None
    completeness = result.finding("AISEC-AUD-002").metric("ig_completeness_error").value
    assert isinstance(completeness, float) and completeness < 0.01
    assert result.finding("AISEC-INS-003").metric("checks_skipped").value == 0
    paths = result.save(tmp_path)
    report = json.loads(paths["json"].read_text())
    by_rule = {f["rule_id"]: f for f in report["findings"]}
    metrics = {m["id"]: m["value"] for m in by_rule["AISEC-BKD-004"]["metrics"]}
    assert metrics["flagged"] is True and metrics["suspected_target"] == spec.target
    shortcut = {m["id"]: m["value"] for m in by_rule["AISEC-AUD-001"]["metrics"]}
    assert shortcut["shortcut_class"] is None


def test_a_black_box_gets_the_checks_that_need_no_gradients() -> None:
    digits = load_builtin("digits", seed=0)
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(n_estimators=30, random_state=0).fit(
        digits.train.x.flatten(1).numpy(), digits.train.y.numpy()
    )

    def scores(batch: np.ndarray) -> np.ndarray:
        return forest.predict_proba(batch.reshape(len(batch), -1))

    x, y = digits.test.x[:200], digits.test.y[:200]
    result = aisec.assess(scores, x, y, plan={"probes": {"inspection": {}}, "target": DIGITS_INPUT})
    coverage = result.finding("AISEC-INS-003")
    rows = {row[0]: row for row in coverage.tables[0].rows}
    assert rows["backdoor scan (Neural Cleanse, MM-BD)"][1] == "skipped"
    assert "gradients" in rows["backdoor scan (Neural Cleanse, MM-BD)"][2]
    assert rows["explanations: integrated_gradients"][1] == "skipped"
    assert rows["explanations: occlusion"][1] == "ran"
    assert rows["shortcut check"][1] == "ran"
    assert "Skipped" in coverage.message
    assert result.finding("AISEC-AUD-001").metric("shortcut_class").value is None


def test_tabular_models_get_permutation_importance_and_the_leaked_feature_check() -> None:
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = load_wine(return_X_y=True)
    x = StandardScaler().fit_transform(x)
    rng = np.random.default_rng(0)
    leak = (y == 2).astype(float) + 0.05 * rng.standard_normal(len(y))
    leaked = np.column_stack([x, leak]).astype(np.float32)
    model = LogisticRegression(max_iter=2000, C=10.0).fit(leaked[:, -1:], y)  # decides on the leak alone

    def scores(batch: np.ndarray) -> np.ndarray:
        return model.predict_proba(batch[:, -1:])

    spec = {"input": {"shape": [leaked.shape[1]], "num_classes": 3, "lower": -10.0, "upper": 10.0}}
    result = aisec.assess(scores, leaked, y, plan={"probes": {"inspection": {}}, "target": spec})
    shortcut = result.finding("AISEC-AUD-001")
    assert shortcut.metric("shortcut_feature").value == leaked.shape[1] - 1
    assert shortcut.metric("shortcut_class").value == 2
    explanations = result.finding("AISEC-AUD-002")
    assert explanations.charts[0].kind == "bar"


def test_a_tabular_torch_model_gets_attributions_per_feature_and_permutation_importance() -> None:
    from aisec.core.seeding import build_model
    from aisec.core.training import fit

    data = load_builtin("breast_cancer", seed=0)

    def mlp() -> nn.Module:
        return nn.Sequential(nn.Linear(data.train.x.shape[1], 16), nn.ReLU(), nn.Linear(16, 2))

    model = fit(build_model(mlp, 0), data.train, seed=0, epochs=5)
    result = aisec.assess(model, data.test.x, data.test.y, plan={"probes": {"inspection": {}}})
    explanations = result.finding("AISEC-AUD-002")
    assert {chart.kind for chart in explanations.charts} == {"bar"}
    assert len(explanations.charts) == 2  # integrated gradients per feature, permutation importance
    rows = {row[0]: row for row in result.finding("AISEC-INS-003").tables[0].rows}
    assert "images" in rows["backdoor scan (Neural Cleanse, MM-BD)"][2]


@pytest.mark.training
def test_the_probe_names_a_watermark_class_and_region_with_its_attribution_map() -> None:
    from watermark_zoo import TEST_ZOO as WATERMARKS
    from watermark_zoo import inspection_data as marked_data
    from watermark_zoo import overlaps, train_watermarked

    spec = WATERMARKS[
        0
    ]  # a 2x2 mark in the top-left corner on every image of class 3 (tests/test_shortcuts.py)
    data = marked_data(spec, marked=True)
    model = train_watermarked(spec)
    result = aisec.assess(model, data.x, data.y, plan={"probes": {"inspection": {}}, "target": DIGITS_INPUT})
    shortcut = result.finding("AISEC-AUD-001")
    assert shortcut.metric("shortcut_class").value == spec.target
    assert shortcut.severity.value == "medium"
    mark = (spec.mark.top, spec.mark.left, spec.mark.height, spec.mark.width)
    row = next(r for r in shortcut.tables[0].rows if r[0] == spec.target)
    region_top, region_left = (int(v) for v in row[2].split(" ")[0].split(","))
    height, width = (int(v) for v in row[2].split(" ")[1].split("x"))
    assert overlaps(mark, (region_top, region_left, height, width))
    captions = [p.caption for p in shortcut.galleries[0].pictures]
    assert captions[0].startswith(f"class {spec.target}: mean |attribution|")

"""scikit-learn estimators that pickle Cython extension objects scan safe, under every joblib compression.

Which estimators pickle Cython objects was found by fitting every estimator of `sklearn.utils.all_estimators`
(scikit-learn 1.9, numpy 2.4) and listing the globals of its pickle: Cython's reconstructors
(`sklearn._loss._loss.__pyx_unpickle_CyHalfMultinomialLoss` from the multiclass gradient-boosting
classifiers, `numpy.random.bit_generator.__pyx_unpickle_SeedSequence` from every estimator that keeps a
numpy Generator), scikit-learn's own `newObj` reconstructor (KDTree, BallTree, DistanceMetric: the
neighbours family) and extension classes with a `__reduce__` (the tree `Tree`, the `Cy*Loss` objects).
Each family is fitted once, dumped with joblib at every compression joblib writes, and must scan `safe`.
The Cython rule (`pickle_policy._cython_reconstructor`) admits `M.__pyx_unpickle_X` only when `M.X` is an
allowed class: the negative cases below stay findings.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from aisec.defend.supply_chain import Verdict, scan_bytes, scan_file
from aisec.defend.supply_chain.formats.pickle_policy import Risk, classify
from aisec.defend.supply_chain.formats.pickle_vm import Global
from aisec.defend.supply_chain.result import verdict_of

# joblib's compressors: none, zlib at three levels, then each other one at its default level.
COMPRESSIONS: list[Any] = [0, ("zlib", 1), ("zlib", 3), ("zlib", 9), "gzip", "bz2", "lzma", "xz"]

_RNG = np.random.default_rng(0)
X = np.abs(_RNG.normal(size=(60, 4))) + 0.1
Y3 = np.arange(60) % 3
Y2 = np.arange(60) % 2
YR = X @ np.array([1.0, 2.0, -1.0, 0.5]) + 3.0


def _state() -> np.random.RandomState:
    """A RandomState over a SeedSequence-seeded MT19937: its pickle holds numpy's SeedSequence, as the
    global RandomState's does until something calls np.random.seed (which seeds it without one)."""
    return np.random.RandomState(np.random.MT19937(np.random.SeedSequence(0)))


def _families() -> dict[str, Callable[[], Any]]:
    from sklearn import (
        cluster,
        decomposition,
        ensemble,
        gaussian_process,
        linear_model,
        neighbors,
        neural_network,
        tree,
    )

    def fit(est: Any, y: np.ndarray | None) -> Callable[[], Any]:
        return lambda: est.fit(X) if y is None else est.fit(X, y)

    return {
        # __pyx_unpickle_CyHalfMultinomialLoss (multiclass) and SeedSequence; Tree; Cy*Loss with __reduce__
        "GradientBoostingClassifier-multiclass": fit(
            ensemble.GradientBoostingClassifier(n_estimators=5, random_state=_state()), Y3
        ),
        "GradientBoostingClassifier-binary": fit(ensemble.GradientBoostingClassifier(n_estimators=5), Y2),
        "GradientBoostingClassifier-exponential": fit(
            ensemble.GradientBoostingClassifier(n_estimators=5, loss="exponential"), Y2
        ),
        **{
            f"GradientBoostingRegressor-{loss}": fit(
                ensemble.GradientBoostingRegressor(n_estimators=5, loss=loss), YR
            )
            for loss in ("squared_error", "absolute_error", "huber", "quantile")
        },
        "HistGradientBoostingClassifier-multiclass": fit(ensemble.HistGradientBoostingClassifier(max_iter=5), Y3),
        "HistGradientBoostingClassifier-binary": fit(ensemble.HistGradientBoostingClassifier(max_iter=5), Y2),
        **{
            f"HistGradientBoostingRegressor-{loss}": fit(
                ensemble.HistGradientBoostingRegressor(max_iter=5, loss=loss, **extra), YR
            )
            for loss, extra in (
                ("squared_error", {}),
                ("absolute_error", {}),
                ("gamma", {}),
                ("poisson", {}),
                ("quantile", {"quantile": 0.3}),
            )
        },
        # sklearn.tree._tree.Tree (a Cython class with __reduce__)
        "DecisionTreeClassifier": fit(tree.DecisionTreeClassifier(), Y3),
        "DecisionTreeRegressor": fit(tree.DecisionTreeRegressor(), YR),
        "ExtraTreeClassifier": fit(tree.ExtraTreeClassifier(), Y3),
        "RandomForestClassifier": fit(ensemble.RandomForestClassifier(n_estimators=3), Y3),
        "RandomForestRegressor": fit(ensemble.RandomForestRegressor(n_estimators=3), YR),
        "ExtraTreesClassifier": fit(ensemble.ExtraTreesClassifier(n_estimators=3), Y3),
        "IsolationForest": fit(ensemble.IsolationForest(n_estimators=3), None),
        # SGD (its Cython loss objects are not kept by scikit-learn 1.9; the files must stay safe)
        "SGDClassifier-hinge": fit(linear_model.SGDClassifier(), Y3),
        "SGDClassifier-log_loss": fit(linear_model.SGDClassifier(loss="log_loss"), Y2),
        "SGDRegressor-huber": fit(linear_model.SGDRegressor(loss="huber"), YR),
        # numpy's SeedSequence (a numpy Generator kept on the estimator)
        "MLPClassifier": fit(neural_network.MLPClassifier(max_iter=20, random_state=_state()), Y3),
        "MLPRegressor": fit(neural_network.MLPRegressor(max_iter=20, random_state=_state()), YR),
        "GaussianProcessClassifier": fit(gaussian_process.GaussianProcessClassifier(random_state=_state()), Y2),
        "GaussianProcessRegressor": fit(gaussian_process.GaussianProcessRegressor(random_state=_state()), YR),
        "LatentDirichletAllocation": fit(
            decomposition.LatentDirichletAllocation(n_components=2, max_iter=2, random_state=_state()), None
        ),
        "MiniBatchDictionaryLearning": fit(
            decomposition.MiniBatchDictionaryLearning(n_components=2, max_iter=2, random_state=_state()), None
        ),
        # sklearn's newObj: KDTree, BallTree and DistanceMetric
        "KNeighborsClassifier-kd_tree": fit(neighbors.KNeighborsClassifier(algorithm="kd_tree"), Y3),
        "KNeighborsClassifier-ball_tree": fit(neighbors.KNeighborsClassifier(algorithm="ball_tree"), Y3),
        "KNeighborsRegressor": fit(neighbors.KNeighborsRegressor(algorithm="kd_tree"), YR),
        "NearestNeighbors-ball_tree": fit(neighbors.NearestNeighbors(algorithm="ball_tree"), None),
        "KernelDensity-manhattan": fit(neighbors.KernelDensity(metric="manhattan"), None),
        "LocalOutlierFactor": fit(neighbors.LocalOutlierFactor(n_neighbors=5), None),
        "KMeans": fit(cluster.KMeans(n_clusters=2, n_init=1), None),
    }  # fmt: skip


FAMILIES = sorted(_families())


@pytest.fixture(scope="module")
def fitted() -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: make() for name, make in _families().items()}


def _describe(path: Path) -> str:
    return "; ".join(f"{f.rule_id} {f.message}" for f in scan_file(path).findings)


@pytest.mark.parametrize("family", FAMILIES)
def test_estimator_scans_safe_under_every_compression(
    family: str, fitted: dict[str, Any], tmp_path: Path
) -> None:
    for compress in COMPRESSIONS:
        path = tmp_path / f"{family}-{compress}.joblib"
        joblib.dump(fitted[family], path, compress=compress)
        scan = scan_file(path)
        assert scan.verdict is Verdict.SAFE, f"{family}, compress={compress}: {_describe(path)}"


def test_the_families_do_pickle_cython_reconstructors(fitted: dict[str, Any]) -> None:
    """The list above is not stale: the reconstructors it was built for are still in the pickles."""
    dumped = {name: pickle.dumps(est, protocol=4) for name, est in fitted.items()}
    assert b"__pyx_unpickle_CyHalfMultinomialLoss" in dumped["GradientBoostingClassifier-multiclass"]
    assert b"__pyx_unpickle_CyHalfMultinomialLoss" in dumped["HistGradientBoostingClassifier-multiclass"]
    assert b"__pyx_unpickle_SeedSequence" in dumped["MLPClassifier"]
    assert b"newObj" in dumped["KNeighborsClassifier-kd_tree"]


def test_gradient_boosting_loads_through_the_allow_list(fitted: dict[str, Any], tmp_path: Path) -> None:
    """load_model's unpickler admits exactly the allow list: the multiclass model loads and predicts alike."""
    from aisec.defend.supply_chain.loading import load_model

    for family in ("GradientBoostingClassifier-multiclass", "HistGradientBoostingClassifier-multiclass"):
        path = tmp_path / f"{family}.joblib"
        joblib.dump(fitted[family], path, compress=3)
        loaded = load_model(path)
        np.testing.assert_array_equal(loaded.predict(X), fitted[family].predict(X))
        np.testing.assert_allclose(loaded.predict_proba(X), fitted[family].predict_proba(X))


def _reconstructor_pickle(module: str, name: str, cls_module: str, cls_name: str) -> bytes:
    """What Cython writes: REDUCE of `module.name(cls, checksum, None)`, the state set by BUILD."""

    def text(s: str) -> bytes:
        raw = s.encode()
        return b"\x8c" + bytes([len(raw)]) + raw

    return (
        b"\x80\x04" + text(module) + text(name) + b"\x93" + text(cls_module) + text(cls_name) + b"\x93"
        + b"J\x01\x02\x03\x04N\x87R)b."
    )  # fmt: skip


@pytest.mark.parametrize(
    ("module", "name", "expected"),
    [
        ("sklearn._loss._loss", "__pyx_unpickle_CyHalfMultinomialLoss", Risk.ALLOWED),
        ("sklearn._loss._loss", "__pyx_unpickle_CyPinballLoss", Risk.ALLOWED),
        ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence", Risk.ALLOWED),
        # a class that is not on the allow list, in an allow-listed package
        ("sklearn._loss._loss", "__pyx_unpickle_NotAClass", Risk.UNKNOWN),
        ("sklearn.tree._tree", "__pyx_unpickle_Enum", Risk.UNKNOWN),  # Cython's memoryview Enum
        # an allowed class, named in another module than its own
        ("sklearn.tree._tree", "__pyx_unpickle_CyHalfMultinomialLoss", Risk.UNKNOWN),
        ("mymodule", "__pyx_unpickle_CyHalfMultinomialLoss", Risk.UNKNOWN),
        # a module outside the allow list altogether, and dangerous ones
        ("os", "__pyx_unpickle_CyHalfMultinomialLoss", Risk.DANGEROUS),
        ("posix", "__pyx_unpickle_system", Risk.DANGEROUS),
        # not the reconstructor's exact shape
        ("sklearn._loss._loss", "__pyx_unpickle_CyHalfMultinomialLoss.__init__", Risk.UNKNOWN),
        ("sklearn._loss._loss", "__pyx_unpickle_", Risk.UNKNOWN),
        ("sklearn._loss._loss", "__pyx_unpickle_CyHalfMultinomialLoss__set_state", Risk.UNKNOWN),
        # newObj only where scikit-learn defines it as cls.__new__(cls)
        ("sklearn.neighbors._kd_tree", "newObj", Risk.ALLOWED),
        ("sklearn.utils", "newObj", Risk.UNKNOWN),
    ],
)
def test_cython_reconstructor_rule(module: str, name: str, expected: Risk) -> None:
    assert classify(Global(module, name, 0)) is expected


def test_reconstructor_of_an_unlisted_class_stays_flagged() -> None:
    ok = _reconstructor_pickle(
        "sklearn._loss._loss",
        "__pyx_unpickle_CyHalfMultinomialLoss",
        "sklearn._loss._loss",
        "CyHalfMultinomialLoss",
    )
    assert verdict_of(scan_bytes(ok, "m.pkl")[1]) is Verdict.SAFE
    other_module = _reconstructor_pickle(
        "sklearn.tree._tree",
        "__pyx_unpickle_CyHalfMultinomialLoss",
        "sklearn._loss._loss",
        "CyHalfMultinomialLoss",
    )
    findings = scan_bytes(other_module, "m.pkl")[1]
    assert verdict_of(findings) is Verdict.SUSPICIOUS
    assert [f.rule_id for f in findings] == ["AISEC-SC-202"]
    unlisted = _reconstructor_pickle("mypackage.fast", "__pyx_unpickle_Model", "mypackage.fast", "Model")
    assert {f.rule_id for f in scan_bytes(unlisted, "m.pkl")[1]} == {"AISEC-SC-202"}

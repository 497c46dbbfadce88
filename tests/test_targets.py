"""Targets: exact sklearn conversion, black-box fallbacks, ONNX, callables, query counting, input checks."""

from __future__ import annotations

import functools
import hashlib
import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Perceptron, RidgeClassifier, SGDClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, StandardScaler
from sklearn.svm import LinearSVC

from aisec.core.errors import CapabilityError, DataError, ModelLoadError
from aisec.data.builtin import load_builtin
from aisec.targets import (
    Access,
    CallableTarget,
    InputSpec,
    OnnxTarget,
    SklearnTarget,
    SklearnTorchTarget,
    label_only,
    sklearn_target,
)

ESTIMATORS: dict[str, Callable[[], Any]] = {
    "logistic_regression": lambda: LogisticRegression(max_iter=500),
    "linear_svc": lambda: LinearSVC(),
    "sgd": lambda: SGDClassifier(random_state=0),
    "ridge": lambda: RidgeClassifier(),
    "perceptron": lambda: Perceptron(random_state=0),
    "lda": lambda: LinearDiscriminantAnalysis(),
    **{
        f"mlp_{act}": functools.partial(MLPClassifier, (16, 8), activation=act, max_iter=30, random_state=0)
        for act in ("identity", "logistic", "tanh", "relu")
    },
    "standard_scaler_logistic_regression": lambda: make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=500)
    ),
    "minmax_maxabs_mlp": lambda: make_pipeline(
        MinMaxScaler(), MaxAbsScaler(), MLPClassifier((16,), max_iter=30, random_state=0)
    ),
}


@functools.cache
def data(name: str) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """(train x, train y, test x) with samples flattened to feature vectors."""
    split = load_builtin(name)
    return split.train.x.flatten(1).double().numpy(), split.train.y.numpy(), split.test.x.flatten(1)


@functools.cache
def fitted(estimator: str, dataset: str) -> Any:
    x, y, _ = data(dataset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return ESTIMATORS[estimator]().fit(x, y)


def sklearn_indices(estimator: Any, x: np.ndarray) -> np.ndarray:
    return np.searchsorted(estimator.classes_, estimator.predict(x))


# --- sklearn: exact conversion ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("dataset", ["breast_cancer", "digits"])
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_conversion_matches_sklearn(name: str, dataset: str, dtype: torch.dtype) -> None:
    estimator = fitted(name, dataset)
    x = data(dataset)[2]
    x64 = x.double().numpy()
    target = sklearn_target(estimator, dtype=dtype)
    assert isinstance(target, SklearnTorchTarget) and target.access is Access.WHITE_BOX
    output = target.logits(x)
    assert output.dtype == dtype
    logits = output.detach().double().numpy()
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    if hasattr(estimator, "decision_function"):
        decision = estimator.decision_function(x64)
        expected = np.stack([np.zeros_like(decision), decision], 1) if decision.ndim == 1 else decision
        np.testing.assert_allclose(logits, expected, rtol=tol, atol=tol)
    if hasattr(estimator, "predict_proba"):  # all here are softmax (or sigmoid) of the decision function
        np.testing.assert_allclose(
            torch.tensor(logits).softmax(1).numpy(), estimator.predict_proba(x64), atol=tol
        )
    np.testing.assert_array_equal(logits.argmax(1), sklearn_indices(estimator, x64))
    np.testing.assert_array_equal(target.classes, estimator.classes_)


def test_conversion_takes_image_shaped_samples_and_gives_input_gradients() -> None:
    estimator = fitted("mlp_tanh", "digits")
    images = load_builtin("digits").test.x[:20]
    target = sklearn_target(estimator, InputSpec((1, 8, 8), 10))
    assert isinstance(target, SklearnTorchTarget)
    x = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(target.logits(x)[:, 3].sum(), x)
    assert grad.shape == images.shape and grad.abs().sum() > 0
    np.testing.assert_array_equal(
        target.labels(images).numpy(), estimator.predict(images.flatten(1).double().numpy())
    )


def test_string_and_noncontiguous_classes_become_indices() -> None:
    x, y, x_test = data("digits")
    names = np.array([f"digit {d}" for d in range(10)])
    for labels in (names[y], y * 3 + 7):
        estimator = LogisticRegression(max_iter=500).fit(x, labels)
        target = sklearn_target(estimator)
        predicted = target.labels(x_test).numpy()
        np.testing.assert_array_equal(target.classes[predicted], estimator.predict(x_test.double().numpy()))


def test_min_max_scaler_with_clip_is_a_black_box() -> None:
    x, y, x_test = data("breast_cancer")
    estimator = make_pipeline(MinMaxScaler(clip=True), LogisticRegression()).fit(x, y)
    target = sklearn_target(estimator)
    assert isinstance(target, SklearnTarget) and target.access is Access.SCORES
    np.testing.assert_allclose(
        target.scores(x_test).numpy(), estimator.predict_proba(x_test.double().numpy()), atol=1e-6
    )


def test_conversion_that_disagrees_with_the_estimator_is_not_used() -> None:
    x, y, _ = data("breast_cancer")
    estimator = LogisticRegression().fit(x, y)
    true_decision = estimator.decision_function
    estimator.decision_function = lambda features: true_decision(features) + 1e-3  # not what coef_ gives
    with pytest.warns(UserWarning, match="differs from it by"):
        target = sklearn_target(estimator)
    assert isinstance(target, SklearnTarget) and target.access is Access.SCORES


# --- sklearn: black box ----------------------------------------------------------------------------------


def test_random_forest_gives_scores() -> None:
    x, y, x_test = data("breast_cancer")
    estimator = RandomForestClassifier(n_estimators=10, random_state=0).fit(x, y)
    target = sklearn_target(estimator)
    assert isinstance(target, SklearnTarget) and target.access is Access.SCORES
    assert not hasattr(target, "logits")
    np.testing.assert_allclose(
        target.scores(x_test).numpy(), estimator.predict_proba(x_test.double().numpy()), atol=1e-6
    )
    np.testing.assert_array_equal(target.labels(x_test).numpy(), estimator.predict(x_test.double().numpy()))


class PredictOnly:
    """A model that only predicts: a threshold on the first feature, with string labels."""

    classes_ = np.array(["high", "low"])
    n_features_in_ = 30

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.where(x[:, 0] > 0.5, "high", "low")


def test_model_with_only_predict_gives_labels() -> None:
    x_test = data("breast_cancer")[2]
    target = sklearn_target(PredictOnly())
    assert isinstance(target, SklearnTarget) and target.access is Access.LABELS
    np.testing.assert_array_equal(target.labels(x_test).numpy(), (x_test[:, 0] <= 0.5).long().numpy())
    with pytest.raises(CapabilityError):
        target.scores(x_test)


def test_predict_returning_an_unknown_class_is_refused() -> None:
    class Broken(PredictOnly):
        def predict(self, x: np.ndarray) -> np.ndarray:
            return np.full(len(x), "medium")

    with pytest.raises(DataError, match=r"'medium'.*classes"):
        sklearn_target(Broken()).labels(data("breast_cancer")[2][:3])


def test_estimator_that_is_unfitted_or_does_not_fit_the_spec_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="not fitted"):
        sklearn_target(LogisticRegression())
    estimator = fitted("logistic_regression", "breast_cancer")
    with pytest.raises(DataError, match="30 features"):
        sklearn_target(estimator, InputSpec((64,), 2))
    with pytest.raises(DataError, match="3 classes"):
        sklearn_target(estimator, InputSpec((30,), 3))


# --- query counting ------------------------------------------------------------------------------------


def test_queries_are_counted_per_sample() -> None:
    x_test = data("breast_cancer")[2][:25]
    target = sklearn_target(fitted("logistic_regression", "breast_cancer"))
    assert isinstance(target, SklearnTorchTarget)
    target.logits(x_test)
    target.scores(x_test)
    target.labels(x_test)
    assert target.queries.total == 75
    view = label_only(target)
    view.labels(x_test)
    assert (view.queries.total, target.queries.total) == (25, 100)
    with pytest.raises(CapabilityError):
        view.scores(x_test)
    assert (view.queries.total, target.queries.total) == (25, 100)
    black_box = sklearn_target(
        RandomForestClassifier(n_estimators=5, random_state=0).fit(*data("breast_cancer")[:2])
    )
    black_box.scores(x_test)
    black_box.labels(x_test[:5])
    assert black_box.queries.total == 30


# --- ONNX ------------------------------------------------------------------------------------------------


def onnx_logistic_regression(dataset: str, *, zipmap: bool = False) -> bytes:
    x = data(dataset)[0].astype(np.float32)
    model = to_onnx(fitted("logistic_regression", dataset), x[:1], options={"zipmap": zipmap})
    return model.SerializeToString()


@pytest.mark.parametrize("zipmap", [False, True], ids=["tensor", "zipmap"])
@pytest.mark.parametrize("dataset", ["breast_cancer", "digits"])
def test_onnx_logistic_regression_agrees_with_sklearn(tmp_path: Any, dataset: str, zipmap: bool) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(onnx_logistic_regression(dataset, zipmap=zipmap))
    estimator = fitted("logistic_regression", dataset)
    x_test = data(dataset)[2]
    target = OnnxTarget(path, InputSpec((x_test.shape[1],), len(estimator.classes_)), batch_size=64)
    assert target.access is Access.SCORES and target.score_kind == "probabilities"
    assert target.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    scores = target.scores(x_test).numpy()
    np.testing.assert_allclose(scores, estimator.predict_proba(x_test.double().numpy()), atol=1e-5)
    np.testing.assert_array_equal(
        target.labels(x_test).numpy(), sklearn_indices(estimator, x_test.double().numpy())
    )
    assert target.queries.total == 2 * len(x_test)


def test_onnx_zipmap_with_string_classes_follows_the_class_order() -> None:
    x, y, x_test = data("digits")
    estimator = LogisticRegression(max_iter=500).fit(x, np.array([f"digit {d}" for d in range(10)])[y])
    model = to_onnx(estimator, x[:1].astype(np.float32)).SerializeToString()  # ZipMap on by default
    target = OnnxTarget(model, InputSpec((64,), 10))
    assert target.output == "output_probability"
    expected = estimator.predict_proba(x_test.double().numpy())
    np.testing.assert_allclose(target.scores(x_test).numpy(), expected, atol=1e-5)


def test_onnx_flat_input_takes_image_shaped_samples() -> None:
    images = load_builtin("digits").test.x
    target = OnnxTarget(onnx_logistic_regression("digits"), InputSpec((1, 8, 8), 10))
    expected = fitted("logistic_regression", "digits").predict_proba(images.flatten(1).double().numpy())
    np.testing.assert_allclose(target.scores(images).numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("corrupt", ["random", "truncated"])
def test_corrupt_onnx_file_raises_model_load_error_naming_it(tmp_path: Any, corrupt: str) -> None:
    model = onnx_logistic_regression("breast_cancer")
    path = tmp_path / f"{corrupt}.onnx"
    path.write_bytes(
        np.random.default_rng(0).bytes(2000) if corrupt == "random" else model[: len(model) // 2]
    )
    with pytest.raises(ModelLoadError, match=re.escape(str(path))):
        OnnxTarget(path, InputSpec((30,), 2))


def test_missing_onnx_file_raises_model_load_error(tmp_path: Any) -> None:
    with pytest.raises(ModelLoadError, match=r"missing\.onnx"):
        OnnxTarget(tmp_path / "missing.onnx", InputSpec((30,), 2))


def test_onnx_shape_mismatch_raises_data_error_naming_both_shapes(tmp_path: Any) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(onnx_logistic_regression("breast_cancer"))
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}.*\(\?, 30\).*\(64,\)"):
        OnnxTarget(path, InputSpec((64,), 2))
    with pytest.raises(DataError, match=r"\(\?, 2\).*5 classes"):
        OnnxTarget(path, InputSpec((30,), 5))


def matmul_model(input_shape: list[int | None], *, domain: str = "") -> bytes:
    """Scores x @ W, W of shape (3, 2); with `domain`, the MatMul is declared in that operator domain."""
    weight = numpy_helper.from_array(np.array([[1, 0], [0, 1], [1, -1]], dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["scores"], domain=domain)],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [input_shape[0], 2])],
        [weight],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString()


def test_onnx_custom_operator_domain_is_refused() -> None:
    with pytest.raises(ModelLoadError, match=r"com\.example\.MatMul"):
        OnnxTarget(matmul_model([None, 3], domain="com.example"), InputSpec((3,), 2))


def test_onnx_fixed_batch_dimension_is_padded() -> None:
    target = OnnxTarget(matmul_model([2, 3]), InputSpec((3,), 2, lower=-1.0), batch_size=100)
    assert target.score_kind == "logits"
    x = torch.rand(5, 3)
    expected = x @ torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
    torch.testing.assert_close(target.scores(x), expected)
    assert target.queries.total == 5


# --- callables ------------------------------------------------------------------------------------------


def test_callable_target_scores_labels_and_batches() -> None:
    calls: list[int] = []

    def scores(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        x[:] = 0  # a callable that writes into its input must not change the caller's batch
        return np.stack([np.ones(len(x)), 2 * np.arange(len(x))], 1)

    x = torch.rand(10, 4)
    original = x.clone()
    target = CallableTarget(scores, InputSpec((4,), 2), batch_size=4)
    assert target.access is Access.SCORES
    assert target.scores(x).shape == (10, 2) and calls == [4, 4, 2]
    assert torch.equal(x, original)
    assert target.labels(x).tolist() == [0, 1, 1, 1, 0, 1, 1, 1, 0, 1]

    by_label = CallableTarget(
        lambda t: (t.sum(1) > 2).long(), InputSpec((4,), 2), returns="labels", accepts="torch"
    )
    assert by_label.access is Access.LABELS
    assert torch.equal(by_label.labels(x), (x.sum(1) > 2).long())
    assert by_label.queries.total == 10


@pytest.mark.parametrize(
    ("returns", "output", "message"),
    [
        ("scores", lambda x: np.zeros(len(x)), r"shape \(6,\).*expected \(6, 3\)"),
        ("scores", lambda x: np.zeros((len(x), 2)), r"shape \(6, 2\).*expected \(6, 3\)"),
        ("scores", lambda x: np.full((len(x), 3), np.nan), "NaN or infinite scores for 6 of 6"),
        ("scores", lambda x: np.full((len(x), 3), "a"), "dtype <U1"),
        ("labels", lambda x: np.zeros((len(x), 3), dtype=int), r"labels of shape \(6, 3\)"),
        ("labels", lambda x: np.full(len(x), 0.5), "dtype float64"),
        ("labels", lambda x: np.full(len(x), 3), r"labels in \[3, 3\].*\[0, 2\]"),
    ],
)
def test_callable_output_is_checked(returns: Any, output: Callable[[np.ndarray], Any], message: str) -> None:
    target = CallableTarget(output, InputSpec((4,), 3), returns=returns, name="my_model")
    with pytest.raises(DataError, match=f"my_model returned .*{message}"):
        target.labels(torch.rand(6, 4))


# --- input checks and imports ----------------------------------------------------------------------------


def test_input_spec_check_catches_bad_batches() -> None:
    spec = InputSpec((3,), 2)
    spec.check(torch.rand(4, 3))
    with pytest.raises(DataError, match=r"sample shape \(4,\)"):
        spec.check(torch.rand(4, 4))
    with pytest.raises(DataError, match="NaN or infinite values in 1 sample"):
        spec.check(torch.tensor([[0.1, float("nan"), 0.2], [0.1, 0.2, 0.3]]))
    with pytest.raises(DataError, match="outside the model's input bounds"):
        spec.check(torch.tensor([[0.1, 1.5, 0.2]]))


def test_importing_targets_loads_no_framework() -> None:
    code = (
        "import sys, aisec.targets\n"
        "assert not {'torch', 'sklearn', 'onnxruntime'} & set(sys.modules), sys.modules.keys()\n"
        "import aisec.targets.sklearn_models\n"
        "from aisec.targets import sklearn_target\n"
        "assert callable(sklearn_target), sklearn_target\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_exported_name_resolves() -> None:
    import aisec.targets

    assert set(aisec.targets.__all__) == set(aisec.targets._EXPORTS)
    for name in aisec.targets.__all__:
        assert getattr(aisec.targets, name).__name__ == name


def test_probabilities_follow_the_score_kind(digits_target):
    import numpy as np
    import torch

    from aisec.targets.callable_target import CallableTarget
    from aisec.targets.views import scores_only

    x = torch.rand(5, 1, 8, 8)
    white = digits_target.probabilities(x)
    assert torch.allclose(white.sum(1), torch.ones(5), atol=1e-5)
    assert torch.allclose(scores_only(digits_target).probabilities(x), white)
    logits = digits_target.logits(x).detach().numpy()
    as_logits = CallableTarget(lambda a: logits[: len(a)], digits_target.spec, score_kind="logits")
    as_probs = CallableTarget(
        lambda a: np.exp(logits) / np.exp(logits).sum(1, keepdims=True), digits_target.spec
    )
    assert torch.allclose(as_logits.probabilities(x), white, atol=1e-5)
    assert torch.allclose(as_probs.probabilities(x), white, atol=1e-5)

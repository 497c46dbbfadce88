"""ONNX, Keras config, JSON and HDF5 scanners, against real files written by onnx, skl2onnx, keras and h5py
and against hand-made hostile ones."""

from __future__ import annotations

import base64
import json
import os
import sys
import types
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from aisec.core.severity import Severity
from aisec.defend.supply_chain.context import Budget, LimitExceeded, ScanContext, Unparseable
from aisec.defend.supply_chain.formats.keras import (
    looks_like_hdf5,
    looks_like_json,
    scan_hdf5,
    scan_json,
    scan_keras_config,
)
from aisec.defend.supply_chain.formats.onnx import looks_like_onnx, scan_onnx
from aisec.defend.supply_chain.limits import ScanLimits

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

TEMPLATES_MODULE = "aisec.defend.supply_chain.formats.templates"


def make_ctx(limits: ScanLimits | None = None, nested: list | None = None) -> ScanContext:
    def dispatch(data: memoryview, ctx: ScanContext) -> str:
        if nested is not None:
            nested.append((ctx.location, bytes(data)))
        return "unknown"

    return ScanContext(location="f", budget=Budget(limits or ScanLimits()), findings=[], dispatch=dispatch)


def rules(ctx: ScanContext) -> list[str]:
    return sorted(f.rule_id for f in ctx.findings)


# ONNX: real models


def _value(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [2])


def _mixed_model() -> onnx.ModelProto:
    """A custom-domain node and a com.microsoft node inside If branches, a local function, an initializer."""
    then_branch = helper.make_graph(
        [helper.make_node("MyOp", ["X"], ["a"], domain="evil.ops"), helper.make_node("Identity", ["a"], ["t"])],
        "then", [], [_value("t")],
    )  # fmt: skip
    else_branch = helper.make_graph(
        [helper.make_node("FusedGemm", ["X"], ["e"], domain="com.microsoft")], "else", [], [_value("e")]
    )
    nodes = [
        helper.make_node("Constant", [], ["c"], value=helper.make_tensor("cv", TensorProto.BOOL, [], [True])),
        helper.make_node("If", ["c"], ["Y"], then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Scale", ["X"], ["Z"], domain="local"),
    ]
    weight = numpy_helper.from_array(np.ones((64, 64), np.float32), "W")
    graph = helper.make_graph(nodes, "g", [_value("X")], [_value("Y"), _value("Z")], [weight])
    function = helper.make_function(
        "local",
        "Scale",
        ["x"],
        ["y"],
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_opsetid("", 17)],
    )
    opsets = [helper.make_opsetid(d, 1) for d in ("evil.ops", "com.microsoft", "local")]
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), *opsets], functions=[function]
    )


def test_onnx_real_model_with_external_data_subgraphs_and_functions(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save_model(
        _mixed_model(), path, save_as_external_data=True, location="weights.bin", size_threshold=0
    )
    onnx.checker.check_model(str(path))  # the file is a valid model, external data included
    data = memoryview(path.read_bytes())
    assert looks_like_onnx(data)
    ctx = make_ctx()
    scan_onnx(data, ctx, base_dir=tmp_path)
    assert rules(ctx) == ["AISEC-SC-601", "AISEC-SC-602", "AISEC-SC-604"]
    by_rule = {f.rule_id: f for f in ctx.findings}
    assert "'evil.ops'" in by_rule["AISEC-SC-601"].message and "MyOp" in by_rule["AISEC-SC-601"].message
    assert "FusedGemm" in by_rule["AISEC-SC-602"].message
    assert by_rule["AISEC-SC-602"].severity is Severity.LOW
    assert "'weights.bin'" in by_rule["AISEC-SC-604"].message
    assert by_rule["AISEC-SC-604"].severity is Severity.INFO


def test_onnx_skl2onnx_models_scan_clean() -> None:
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).random((40, 4), dtype=np.float32)
    y = (x[:, 0] > 0.5).astype(int)
    for estimator in (
        LogisticRegression(),
        RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0),
    ):
        model = skl2onnx.to_onnx(estimator.fit(x, y), x[:1])
        assert "ai.onnx.ml" in {o.domain for o in model.opset_import}
        data = memoryview(model.SerializeToString())
        assert looks_like_onnx(data)
        ctx = make_ctx()
        scan_onnx(data, ctx)
        assert ctx.findings == []


def test_onnx_function_domain_is_local_but_unknown_ops_in_it_are_not() -> None:
    function = helper.make_function(
        "mylib", "F", ["x"], ["y"], [helper.make_node("Native", ["x"], ["y"], domain="vendor.kernels")],
        [helper.make_opsetid("vendor.kernels", 1)],
    )  # fmt: skip
    nodes = [
        helper.make_node("F", ["X"], ["a"], domain="mylib"),
        helper.make_node("G", ["a"], ["Y"], domain="mylib"),
    ]
    graph = helper.make_graph(nodes, "g", [_value("X")], [_value("Y")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("mylib", 1),
                                                    helper.make_opsetid("declared.only", 1)], functions=[function])  # fmt: skip
    ctx = make_ctx()
    scan_onnx(memoryview(model.SerializeToString()), ctx)
    messages = sorted(f.message for f in ctx.findings)
    assert rules(ctx) == ["AISEC-SC-601"] * 3
    assert "'declared.only': no node" in messages[0]
    assert "'mylib': operators G" in messages[1]  # F is the model's own function, G is not
    assert "'vendor.kernels': operators Native" in messages[2]  # used inside the function


def _external(location: str, name: str = "W") -> TensorProto:
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[2], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", "8")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _model_with_tensor(tensor: TensorProto, where: str) -> bytes:
    nodes, initializers, sparse = [helper.make_node("Identity", ["X"], ["Y"])], [], []
    if where == "initializer":
        initializers = [tensor]
    elif where == "sparse":
        indices = numpy_helper.from_array(np.array([0, 1], np.int64), "i")
        sparse = [helper.make_sparse_tensor(tensor, indices, [4])]
    elif where == "attribute":
        nodes = [helper.make_node("Constant", [], ["Y"], value=tensor)]
    else:  # an initializer of an If branch
        branch = helper.make_graph(
            [helper.make_node("Identity", ["W"], ["b"])], "b", [], [_value("b")], [tensor]
        )
        nodes = [helper.make_node("If", ["X"], ["Y"], then_branch=branch, else_branch=branch)]
    graph = helper.make_graph(
        nodes, "g", [_value("X")], [_value("Y")], initializers, sparse_initializer=sparse
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize(
    "location",
    ["../secret.bin", "sub/../../etc/passwd", "/etc/passwd", "C:\\Windows\\win.ini", "c:evil", "\\\\host\\share\\w",
     "//host/share/w", "http://evil.example/w", "file:///etc/passwd", "a\\..\\..\\b", "*/_ORT_MEM_ADDR_/*"],
)  # fmt: skip
def test_onnx_external_data_escapes(location: str) -> None:
    ctx = make_ctx()
    scan_onnx(memoryview(_model_with_tensor(_external(location), "initializer")), ctx)
    assert rules(ctx) == ["AISEC-SC-603"]
    assert ctx.findings[0].severity is Severity.CRITICAL and repr(location) in ctx.findings[0].message


@pytest.mark.parametrize("where", ["initializer", "sparse", "attribute", "subgraph"])
def test_onnx_external_data_is_found_wherever_tensors_live(where: str) -> None:
    ctx = make_ctx()
    scan_onnx(memoryview(_model_with_tensor(_external("../../x"), where)), ctx)
    assert rules(ctx) == ["AISEC-SC-603"]
    ctx = make_ctx()
    scan_onnx(memoryview(_model_with_tensor(_external("data/w.bin"), where)), ctx)
    assert rules(ctx) == ["AISEC-SC-604"]


def test_onnx_external_data_symlink_leaving_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret").write_bytes(b"12345678")
    (folder / "inside.bin").write_bytes(b"12345678")
    (folder / "out.bin").symlink_to(tmp_path / "secret")
    (folder / "in.bin").symlink_to(folder / "inside.bin")
    escaping = memoryview(_model_with_tensor(_external("out.bin"), "initializer"))
    ctx = make_ctx()
    scan_onnx(escaping, ctx, base_dir=folder)
    assert rules(ctx) == ["AISEC-SC-603"] and "resolves outside" in ctx.findings[0].message
    ctx = make_ctx()
    scan_onnx(escaping, ctx)  # without the folder only the string is judged
    assert rules(ctx) == ["AISEC-SC-604"]
    ctx = make_ctx()
    scan_onnx(memoryview(_model_with_tensor(_external("in.bin"), "initializer")), ctx, base_dir=folder)
    assert rules(ctx) == ["AISEC-SC-604"]


# ONNX: the wire format by hand


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _nested_if_model(levels: int) -> bytes:
    graph = _field(1, _field(4, b"Relu"))
    for _ in range(levels):
        graph = _field(1, _field(4, b"If") + _field(5, _field(1, b"then_branch") + _field(6, graph)))
    return b"\x08\x08" + _field(7, graph) + _field(8, _field(2, b"\x00") + b"\x10\x11")


def test_onnx_nesting_is_bounded() -> None:
    ctx = make_ctx()
    scan_onnx(memoryview(_nested_if_model(20)), ctx)
    assert ctx.findings == []
    with pytest.raises(LimitExceeded):
        scan_onnx(memoryview(_nested_if_model(60)), make_ctx())


@pytest.mark.parametrize(
    ("data", "offset"),
    [
        (b"\x08" + b"\xff" * 10 + b"\x01", 1),  # an 11-byte varint
        (b"\x08\x08\x3a\x05\x0a", 2),  # graph longer than the file
        (b"\x08\x08\x38\x01", 2),  # graph as a varint
        (b"\x08\x08\x3b\x3c", 2),  # a group
        (b"\x08\x08\x3a\x04\x0a\x02\x22\x05", 6),  # a node's domain past the node's end
        (b"\x08\x08\x42\x02\x0a\x05", 4),  # an opset_import domain past its end
        (b"\x00\x01", 0),  # field number 0
    ],
)
def test_onnx_malformed_wire_data(data: bytes, offset: int) -> None:
    with pytest.raises(Unparseable) as error:
        scan_onnx(memoryview(data), make_ctx())
    assert error.value.offset == offset


def test_onnx_truncated_real_model_and_findings_kept() -> None:
    data = _mixed_model().SerializeToString()
    with pytest.raises(Unparseable):
        scan_onnx(memoryview(data[: len(data) // 2]), make_ctx())
    ctx = make_ctx()
    with pytest.raises(Unparseable):
        scan_onnx(memoryview(data + b"\x42\x40"), ctx)  # a last opset_import cut short
    assert {"AISEC-SC-601", "AISEC-SC-602"} <= set(rules(ctx))  # what was read before the break is reported


def test_looks_like_onnx_is_not_fooled() -> None:
    rng = np.random.default_rng(0)
    assert not any(looks_like_onnx(memoryview(rng.bytes(256))) for _ in range(20_000))
    for data in (b"", b"\x08\x08", b'{"ir_version": 8}', b"\x80\x04K\x01.", b"\x08\x99\x01" + _field(7, b"")):
        assert not looks_like_onnx(memoryview(data))
    assert looks_like_onnx(memoryview(_nested_if_model(1)))


# Keras: real files written by keras (torch backend)


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    folder = tmp_path_factory.mktemp("keras")
    dense = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dense(1)]
    )
    lam = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2), keras.layers.Dense(1)])
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3, activation="relu")(inputs))
    outputs = keras.layers.Dense(3, activation="softmax", kernel_regularizer=keras.regularizers.L2(1e-3))(
        keras.layers.Dropout(0.1)(keras.layers.Flatten()(hidden))
    )
    functional = keras.Model(inputs, outputs)
    functional.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(),
                       metrics=["accuracy", keras.metrics.AUC()])  # fmt: skip

    @keras.saving.register_keras_serializable(package="Custom")
    class Doubler(keras.layers.Layer):
        def call(self, x: object) -> object:
            return x * 2

    custom = keras.Sequential([keras.Input((4,)), Doubler(), keras.layers.Dense(1)])
    files = {}
    models = {"dense": dense, "lambda": lam, "functional": functional, "custom": custom}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # keras's own deprecation warnings, and the HDF5 "legacy format" one
        for name, model in models.items():
            files[f"{name}.keras"] = folder / f"{name}.keras"
            model.save(files[f"{name}.keras"])
            if name != "custom":
                files[f"{name}.h5"] = folder / f"{name}.h5"
                model.save(files[f"{name}.h5"])
    return files


def _config_json(path: Path) -> memoryview:
    with zipfile.ZipFile(path) as archive:
        return memoryview(archive.read("config.json"))


@pytest.mark.parametrize(
    ("name", "expected"),
    [("dense", []), ("functional", []), ("lambda", ["AISEC-SC-701"]), ("custom", ["AISEC-SC-702"])],
)
def test_keras_v3_files(keras_files: dict[str, Path], name: str, expected: list[str]) -> None:
    data = _config_json(keras_files[f"{name}.keras"])
    assert looks_like_json(data)
    ctx = make_ctx()
    ctx.name = "config.json"
    scan_json(data, ctx)
    assert rules(ctx) == expected
    if name == "lambda":
        assert "Lambda 'lambda'" in ctx.findings[0].message and "config.json" in ctx.findings[0].message
        assert ctx.findings[0].severity is Severity.CRITICAL


@pytest.mark.parametrize(
    ("name", "expected"), [("dense", []), ("functional", []), ("lambda", ["AISEC-SC-701"])]
)
def test_keras_legacy_h5_files(keras_files: dict[str, Path], name: str, expected: list[str]) -> None:
    data = memoryview(keras_files[f"{name}.h5"].read_bytes())
    assert looks_like_hdf5(data)
    ctx = make_ctx()
    scan_hdf5(data, ctx)
    assert rules(ctx) == expected
    if expected:
        assert "model_config (keras_version 3." in ctx.findings[0].message


# Keras 2 (tf.keras) HDF5 files, written with h5py as tf.keras 2.12 writes them: attributes are UTF-8 bytes.

_KERAS2_LAMBDA_CODE = "4wEAAAAAAAAAAAAAAAEAAAACAAAAQwAAAHMIAAAAfABkARQAUwApAk7pAgAAAKkAKQHaAXhyAgAA\n"
_KERAS2_INPUT = {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 4], "dtype": "float32",
                                                        "sparse": False, "ragged": False, "name": "input_1"}}  # fmt: skip
_KERAS2_DENSE = {"class_name": "Dense", "config": {
    "name": "dense", "trainable": True, "dtype": "float32", "units": 1, "activation": "linear", "use_bias": True,
    "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": None}},
    "bias_initializer": {"class_name": "Zeros", "config": {}}, "kernel_regularizer": None}}  # fmt: skip


def _keras2_lambda(**config: object) -> dict:
    base = {"name": "lambda", "trainable": True, "dtype": "float32", "output_shape": None,
            "output_shape_type": "raw", "output_shape_module": None, "arguments": {}}  # fmt: skip
    return {"class_name": "Lambda", "config": {**base, **config}}


def _keras2_h5(tmp_path: Path, layers: list[dict], userblock: int = 0) -> memoryview:
    h5py = pytest.importorskip("h5py")
    config = {"class_name": "Sequential", "config": {"name": "sequential", "layers": layers}}
    training = {"loss": "mse", "metrics": ["mae"], "optimizer_config": {"class_name": "Adam",
                                                                         "config": {"learning_rate": 0.001}}}  # fmt: skip
    path = tmp_path / "model.h5"
    with h5py.File(path, "w", userblock_size=userblock) as h5:
        h5.attrs["keras_version"] = b"2.12.0"
        h5.attrs["backend"] = b"tensorflow"
        h5.attrs["model_config"] = json.dumps(config).encode("utf-8")
        h5.attrs["training_config"] = json.dumps(training).encode("utf-8")
        h5.create_dataset("model_weights/dense/kernel", data=np.zeros((4, 1), np.float32))
    return memoryview(path.read_bytes())


def test_keras2_h5(tmp_path: Path) -> None:
    ctx = make_ctx()
    scan_hdf5(_keras2_h5(tmp_path, [_KERAS2_INPUT, _KERAS2_DENSE]), ctx)
    assert ctx.findings == []
    code = [_KERAS2_LAMBDA_CODE, None, None]
    ctx = make_ctx()
    scan_hdf5(_keras2_h5(tmp_path, [_KERAS2_INPUT, _keras2_lambda(function=code, function_type="lambda",
                                                                  module="__main__"), _KERAS2_DENSE]), ctx)  # fmt: skip
    assert rules(ctx) == ["AISEC-SC-701"]
    assert "keras_version 2.12.0" in ctx.findings[0].message and "CVE-2025-9905" in ctx.findings[0].message
    ctx = make_ctx()
    by_name = _keras2_lambda(function="system", function_type="function", module="os")
    scan_hdf5(_keras2_h5(tmp_path, [_KERAS2_INPUT, by_name], userblock=512), ctx)
    assert rules(ctx) == ["AISEC-SC-703"] and "os.system" in ctx.findings[0].message


def test_hdf5_user_block_sniffing_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _keras2_h5(tmp_path, [_KERAS2_INPUT], userblock=1024)
    assert bytes(data[:8]) != b"\x89HDF\r\n\x1a\n" and looks_like_hdf5(data)
    assert not looks_like_hdf5(memoryview(b"\x00" * 4096))
    with pytest.raises(Unparseable):
        scan_hdf5(memoryview(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100), make_ctx())
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(Unparseable, match=r"pip install 'aisec\[scan\]'"):
        scan_hdf5(data, make_ctx())


# Keras configs: the published safe-mode bypasses and their relatives


def _fn(module: str, name: str) -> dict:
    return {"module": module, "class_name": "function", "config": name, "registered_name": "function"}


def _layer(class_name: str, module: str | None = "keras.layers", **config: object) -> dict:
    return {
        "module": module,
        "class_name": class_name,
        "config": {"name": "x", **config},
        "registered_name": None,
    }


@pytest.mark.parametrize(
    ("config", "rule", "words"),
    [
        (_layer("Lambda", function=_fn("keras.src.backend.common.global_state", "set_global_attribute"),
                arguments={"name": "safe_mode_saving", "value": False}), "AISEC-SC-703", "CVE-2025-9906"),
        (_layer("Lambda", function=_fn("keras.models", "load_model"), arguments={"safe_mode": False}),
         "AISEC-SC-703", "load_model"),
        (_layer("Lambda", function=_fn("keras.utils", "get_file")), "AISEC-SC-703", "CVE-2025-8747"),
        (_fn("keras.config", "enable_unsafe_deserialization"), "AISEC-SC-703", "safe mode off"),
        (_fn("keras.saving", "save_model"), "AISEC-SC-703", "NON_MODELING_APIS"),
        (_fn("os", "system"), "AISEC-SC-703", "os.system"),
        (_fn("builtins", "exec"), "AISEC-SC-703", "CVE-2025-1550"),
        (_layer("Popen", module="subprocess"), "AISEC-SC-703", "subprocess.Popen"),
        (_layer("FunctionType", module="types"), "AISEC-SC-703", "types.FunctionType"),
        (_layer("TFSMLayer", filepath="/tmp/saved_model"), "AISEC-SC-703", "CVE-2026-1462"),
        ({"class_name": "TFOpLambda", "config": {"name": "w", "function": "io.write_file"}}, "AISEC-SC-703",
         "tf.io.write_file"),
        ({"class_name": "__lambda__", "config": {"value": "4wEAAAAA"}}, "AISEC-SC-701", "bytecode"),
        (_layer("MyLayer", module="__main__"), "AISEC-SC-702", "__main__.MyLayer"),
        (_layer("Dense", module="my_company.layers"), "AISEC-SC-702", "my_company.layers.Dense"),
        (_fn("builtins", "abs"), "AISEC-SC-702", "builtins.abs"),
        ({"class_name": "Custom>MyLayer", "config": {}}, "AISEC-SC-702", "Custom>MyLayer"),
    ],
)  # fmt: skip
def test_keras_config_references(config: dict, rule: str, words: str) -> None:
    ctx = make_ctx()
    scan_keras_config({"class_name": "Sequential", "config": {"layers": [config]}}, ctx, "config.json")
    assert rules(ctx) == [rule]
    assert words in ctx.findings[0].message


@pytest.mark.parametrize(
    "config",
    [
        _fn("builtins", "relu"),  # how Keras names its own built-in functions
        _layer("GemmaBackbone", module="keras_hub.src.models.gemma.gemma_backbone"),
        {"module": None, "class_name": "X", "config": {}, "registered_name": "keras_hub>X"},
        {"class_name": "TFOpLambda", "config": {"name": "add", "function": "math.add"}},
        {"class_name": "__keras_tensor__", "config": {"shape": [None, 4], "dtype": "float32"}},
        _layer("StringLookup", vocabulary=["a", "b"]),
    ],
)
def test_keras_config_benign_objects(config: dict) -> None:
    ctx = make_ctx()
    scan_keras_config({"class_name": "Functional", "config": {"layers": [config]}}, ctx, "config.json")
    assert ctx.findings == []


def test_keras_vocabulary_path_is_high() -> None:
    ctx = make_ctx()
    scan_keras_config(_layer("StringLookup", vocabulary="/etc/passwd"), ctx, "config.json")
    assert rules(ctx) == ["AISEC-SC-703"] and ctx.findings[0].severity is Severity.HIGH
    assert "CVE-2025-12058" in ctx.findings[0].message


def test_keras_torch_module_wrapper_payload_is_scanned() -> None:
    payload = b"PK\x03\x04 a torch.save archive"
    nested: list = []
    ctx = make_ctx(nested=nested)
    config = {"module": "keras.layers", "class_name": "TorchModuleWrapper",
              "config": {"name": "t", "module": base64.b64encode(payload).decode()}}  # fmt: skip
    scan_keras_config({"class_name": "Sequential", "config": {"layers": [config]}}, ctx, "config.json")
    assert rules(ctx) == ["AISEC-SC-703"] and "CVE-2025-49655" in ctx.findings[0].message
    assert nested == [("f!config.json:config.layers[0].config.module", payload)]


def test_keras_findings_are_grouped_and_capped() -> None:
    layers = [_layer("Lambda", function={"class_name": "__lambda__", "config": {"code": "x"}})] * 3
    layers += [_layer(f"L{i}", module=f"pkg{i}") for i in range(150)]
    ctx = make_ctx()
    scan_keras_config({"class_name": "Sequential", "config": {"layers": layers}}, ctx, "config.json")
    lambdas = [f for f in ctx.findings if f.rule_id == "AISEC-SC-701"]
    assert len(lambdas) == 1 and "and 2 more places" in lambdas[0].message
    foreign = [f for f in ctx.findings if f.rule_id == "AISEC-SC-702"]
    assert len(foreign) == 101 and "50 more findings" in foreign[-1].message


def test_keras_deep_config_is_walked_without_recursion() -> None:
    config: object = _fn("os", "system")
    for _ in range(5000):
        config = {"class_name": "Wrapper", "config": {"layer": config}}
    ctx = make_ctx()
    scan_keras_config(config, ctx, "config.json")
    assert rules(ctx) == ["AISEC-SC-703"]


# JSON


@pytest.mark.parametrize(
    ("text", "expected"),
    [(b'{"a": 1}', True), (b'\xef\xbb\xbf  {}', True), (b"[1, 2]", True), (b"[true]", True), (b'[{"a":1}]', True),
     (b"[tool.ruff]\nx = 1", False), (b"[section]", False), (b"{a: 1}", False), (b"hello", False), (b"{", False),
     (b'{"a": "\x00"}', False), (b'{"a": "\xff\xfe"}', False)],
)  # fmt: skip
def test_looks_like_json(text: bytes, expected: bool) -> None:
    assert looks_like_json(memoryview(text)) is expected


def test_scan_json_errors() -> None:
    with pytest.raises(Unparseable) as error:
        scan_json(memoryview(b'{"a": 1,\n "b": }'), make_ctx())
    assert error.value.offset == 15
    with pytest.raises(Unparseable):
        scan_json(memoryview(b'{"a": "\xff"}'), make_ctx())
    with pytest.raises(LimitExceeded):
        scan_json(memoryview(b'{"a": "' + b"x" * 100 + b'"}'), make_ctx(ScanLimits(max_header_bytes=64)))
    with pytest.raises(LimitExceeded):
        scan_json(memoryview(b"[" * 100_000 + b"]" * 100_000), make_ctx())
    ctx = make_ctx()
    scan_json(
        memoryview(b'{"architectures": ["BertModel"], "hidden_size": 768}'), ctx
    )  # a transformers config
    assert ctx.findings == []


def test_scan_json_hands_every_chat_template_to_the_checker(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str]] = []
    fake = types.ModuleType(TEMPLATES_MODULE)
    fake.check_template = lambda source, ctx, where: seen.append((source, where))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, TEMPLATES_MODULE, fake)
    config = {"chat_template": [{"name": "default", "template": "A"}, {"name": "tool_use", "template": "B"}],
              "processor": {"chat_template": "C"}, "model_max_length": 512}  # fmt: skip
    scan_json(memoryview(json.dumps(config).encode()), make_ctx())
    assert sorted(seen) == [("A", "chat_template[default]"), ("B", "chat_template[tool_use]"),
                            ("C", "processor.chat_template")]  # fmt: skip


def test_scan_json_with_the_real_template_checker() -> None:
    pytest.importorskip(TEMPLATES_MODULE)
    ctx = make_ctx()
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    scan_json(memoryview(json.dumps({"chat_template": template}).encode()), ctx)
    assert "AISEC-SC-502" not in rules(ctx) and "AISEC-SC-503" not in rules(ctx)
    ctx = make_ctx()
    hostile = [{"name": "default", "template": "{{ ().__class__.__base__.__subclasses__() }}"}]
    scan_json(memoryview(json.dumps({"chat_template": hostile}).encode()), ctx)
    assert "AISEC-SC-502" in rules(ctx)

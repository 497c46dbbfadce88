"""Black-box target over an ONNX classifier, run by onnxruntime on the CPU."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch
from google.protobuf.message import DecodeError
from onnx.external_data_helper import uses_external_data

from aisec.core.errors import BadInputError, DataError, ModelLoadError
from aisec.targets.base import Access, InputSpec, Target
from aisec.targets.callable_target import check_scores

# Operator domains onnxruntime implements without extra libraries. Custom-op libraries are never loaded.
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})

_INPUT_TYPES: dict[str, type[np.floating[Any]]] = {"tensor(float)": np.float32, "tensor(double)": np.float64}
_SCORE_TYPES = frozenset({"tensor(float)", "tensor(double)"})


class OnnxTarget(Target):
    """An ONNX classifier seen as a black box with class scores.

    The model is read once, hashed (`sha256`) and checked before onnxruntime sees it. ModelLoadError,
    naming the file, when it does not parse, uses operators outside the standard ONNX domains, keeps
    weights in external files, or has no single float input and float score output.

    The input's declared shape must fit `spec`: the same sample shape (symbolic dimensions match
    anything), or fixed dimensions with as many values (a (1, 8, 8) spec feeds a (N, 64) input); else
    DataError naming the file and both shapes. Batches are fed `batch_size` samples at a time (as many as
    a fixed batch dimension says, padding the last).

    output: the output holding class scores; "auto" picks the only float tensor output, else a ZipMap
        (skl2onnx's sequence of {label: probability} maps, read in the ZipMap's class order).
    scores: what the output holds, kept in `score_kind`; "auto" says "probabilities" for an output made by
        Softmax or ZipMap or named like "prob...", else "logits".
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        spec: InputSpec,
        *,
        output: str = "auto",
        scores: Literal["auto", "logits", "probabilities"] = "auto",
        batch_size: int = 256,
    ) -> None:
        if scores not in ("auto", "logits", "probabilities"):
            raise BadInputError(f"scores must be 'auto', 'logits' or 'probabilities', got {scores!r}")
        if batch_size < 1:
            raise BadInputError(f"batch_size must be a positive integer, got {batch_size}")
        super().__init__(spec, Access.SCORES)
        if isinstance(model, bytes):
            data, self.source = model, f"<ONNX model of {len(model)} bytes>"
        else:
            self.source = os.fspath(model)
            try:
                with open(self.source, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise ModelLoadError(f"cannot read ONNX model {self.source}: {e.strerror}") from e
        self.sha256 = hashlib.sha256(data).hexdigest()
        proto = self._parse(data)
        try:
            options = ort.SessionOptions()
            options.log_severity_level = 3  # errors only
            self._session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types, all derived from Exception
            raise ModelLoadError(f"onnxruntime cannot load {self.source}: {_first_line(e)}") from e
        self._input, self._input_dtype, self._sample_shape, fixed_batch = self._check_input()
        self._batch_size = fixed_batch or batch_size
        self._pad = fixed_batch is not None
        self.output, self._zipmap_classes = self._choose_output(proto, output)
        self.score_kind = scores if scores != "auto" else self._guess_score_kind(proto)

    def _parse(self, data: bytes) -> onnx.ModelProto:
        """The parsed model, refused when it needs anything but the file and onnxruntime's own operators."""
        try:
            proto = onnx.load_model_from_string(data)
        except DecodeError as e:
            raise ModelLoadError(f"{self.source} is not a valid ONNX model: {e}") from e
        local_functions = {(f.domain, f.name) for f in proto.functions}
        foreign = sorted(
            {
                f"{node.domain}.{node.op_type}"
                for node in _nodes(proto)
                if node.domain not in STANDARD_DOMAINS and (node.domain, node.op_type) not in local_functions
            }
        )
        if foreign:
            raise ModelLoadError(
                f"{self.source} uses operators outside the standard ONNX domains ({', '.join(foreign)}); "
                "aisec does not load custom-operator libraries"
            )
        if any(uses_external_data(t) for t in _tensors(proto)):
            raise ModelLoadError(
                f"{self.source} keeps weights in external files; aisec loads single-file models only"
            )
        return proto

    def _check_input(self) -> tuple[str, type[np.floating[Any]], tuple[int, ...], int | None]:
        """(name, dtype, sample shape to feed, fixed batch size or None) of the model's one input."""
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or inputs[0].type not in _INPUT_TYPES or not inputs[0].shape:
            found = ", ".join(f"{i.name} {i.type} {_shape(i.shape or [])}" for i in inputs) or "none"
            raise ModelLoadError(
                f"{self.source} must have one float input with a batch dimension, it has: {found}"
            )
        declared = inputs[0].shape
        batch, *sample = [d if isinstance(d, int) and d > 0 else None for d in declared]
        spec_shape = tuple(self.spec.shape)
        fits = len(sample) == len(spec_shape) and all(
            d in (None, s) for d, s in zip(sample, spec_shape, strict=True)
        )
        fixed = [d for d in sample if d is not None]
        flattened = len(fixed) == len(sample) and math.prod(fixed) == math.prod(spec_shape)
        if not (fits or flattened):
            raise DataError(
                f"{self.source}: input {inputs[0].name!r} has shape {_shape(declared)}, which does not fit "
                f"the spec's sample shape {spec_shape}"
            )
        return inputs[0].name, _INPUT_TYPES[inputs[0].type], spec_shape if fits else tuple(fixed), batch

    def _choose_output(self, proto: onnx.ModelProto, output: str) -> tuple[str, list[Any] | None]:
        """(name, ZipMap class labels or None) of the output holding the class scores."""
        outputs = {o.name: o for o in self._session.get_outputs()}
        if output == "auto":
            tensors = [name for name, o in outputs.items() if o.type in _SCORE_TYPES]
            maps = [name for name, o in outputs.items() if o.type.startswith("seq(map(")]
            candidates = tensors or maps
            if len(candidates) != 1:
                found = ", ".join(f"{name} {o.type}" for name, o in outputs.items())
                raise ModelLoadError(
                    f"{self.source}: cannot tell which output holds the scores ({found}); pass output=NAME"
                )
            output = candidates[0]
        if output not in outputs:
            raise ModelLoadError(f"{self.source} has no output {output!r}; it has {', '.join(outputs)}")
        declared = outputs[output]
        if declared.type in _SCORE_TYPES:
            k = declared.shape[-1] if declared.shape else None
            if isinstance(k, int) and k != self.spec.num_classes:
                raise DataError(
                    f"{self.source}: output {output!r} has shape {_shape(declared.shape)}, but the spec says "
                    f"{self.spec.num_classes} classes"
                )
            return output, None
        zipmap = _producer(proto, output)
        if zipmap is None or zipmap.op_type != "ZipMap":
            raise ModelLoadError(
                f"{self.source}: output {output!r} of type {declared.type} does not hold class scores"
            )
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in zipmap.attribute}
        labels = attributes.get("classlabels_int64s") or attributes.get("classlabels_strings") or []
        classes = [c.decode() if isinstance(c, bytes) else c for c in labels]
        if len(classes) != self.spec.num_classes:
            raise DataError(
                f"{self.source}: output {output!r} maps {len(classes)} classes, "
                f"but the spec says {self.spec.num_classes} classes"
            )
        return output, classes

    def _guess_score_kind(self, proto: onnx.ModelProto) -> Literal["logits", "probabilities"]:
        producer = _producer(proto, self.output)
        if "prob" in self.output.lower() or getattr(producer, "op_type", None) in ("Softmax", "ZipMap"):
            return "probabilities"
        return "logits"

    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        a = x.detach().to(device="cpu", dtype=torch.float32).numpy()
        a = a.reshape(len(a), *self._sample_shape).astype(self._input_dtype, copy=False)
        parts = [self._run(a[i : i + self._batch_size]) for i in range(0, len(a), self._batch_size)]
        return torch.cat(parts) if parts else torch.empty(0, self.spec.num_classes)

    def _run(self, chunk: np.ndarray) -> torch.Tensor:
        """Scores for one chunk, padded to a fixed batch size by repeating its last sample."""
        n = len(chunk)
        if self._pad and n < self._batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self._batch_size - n, axis=0)])
        try:
            (out,) = self._session.run([self.output], {self._input: chunk})
        except Exception as e:  # onnxruntime raises its own exception types, all derived from Exception
            raise DataError(
                f"{self.source} failed on a batch of shape {chunk.shape}: {_first_line(e)}"
            ) from e
        if self._zipmap_classes is not None:  # a missing class becomes NaN, which check_scores refuses
            out = [[row.get(c, np.nan) for c in self._zipmap_classes] for row in out]
        return check_scores(out[:n], n, self.spec.num_classes, self.source)

    def describe(self) -> str:
        return f"OnnxTarget({self.source}, {self.access.value})"


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs held by a node's attributes (bodies of If, Loop, Scan)."""
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def _walk(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.NodeProto]:
    for node in nodes:
        yield node
        for graph in _subgraphs(node):
            yield from _walk(graph.node)


def _nodes(proto: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node of the model: in its graph, its local functions, and all their subgraphs."""
    yield from _walk(proto.graph.node)
    for function in proto.functions:
        yield from _walk(function.node)


def _tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every stored tensor of the model: initializers of every graph, and tensor attributes."""
    for graph in [proto.graph, *(g for node in _nodes(proto) for g in _subgraphs(node))]:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from (sparse.values, sparse.indices)
    for node in _nodes(proto):
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors


def _producer(proto: onnx.ModelProto, name: str) -> onnx.NodeProto | None:
    return next((node for node in proto.graph.node if name in node.output), None)


def _shape(declared: list[Any]) -> str:
    return "(" + ", ".join(str(d) if d is not None else "?" for d in declared) + ")"


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__

"""Keras model configs (a `.keras` zip's config.json, a legacy HDF5 file's `model_config` attribute) and
JSON files in general (Hugging Face chat templates).

Loading a Keras model rebuilds every object its config names: `{"module", "class_name", "config",
"registered_name"}` dicts, `{"class_name": "function", "config": name}` function references, and
`{"class_name": "__lambda__"}` marshalled bytecode (keras/src/saving/serialization_lib.py,
`deserialize_keras_object`). What is checked:

* Python bytecode: a Lambda layer's function (Keras 3: a `__lambda__` dict; Keras 2: a
  `[code, defaults, closure]` list with `function_type: "lambda"`), or any other `__lambda__`
  object, is unmarshalled and run on load: AISEC-SC-701 (CVE-2024-3660). safe_mode blocks it only for
  `.keras` files, and was bypassed (CVE-2025-9906, CVE-2026-12481); HDF5 files ignore it (CVE-2025-9905).
* Dangerous references, AISEC-SC-703: Keras APIs that are not modelling code (Keras's own deny list
  `NON_MODELING_APIS`, added after CVE-2025-8747 and CVE-2025-9906 used `keras.utils.get_file`,
  `keras.models.load_model` and `keras.config.enable_unsafe_deserialization` from a config), the global
  state setter that turns safe mode off, `TorchModuleWrapper` (its config is a `torch.save` pickle, loaded
  with `weights_only=False`: CVE-2025-49655; the pickle is scanned as a nested payload), `TFSMLayer` (loads
  a SavedModel from a path in the config: CVE-2026-1462), TensorFlow ops that read or write files or run
  Python (in Keras 2 `TFOpLambda` layers), the modules and names of the pickle deny list (`os`,
  `subprocess`, `builtins.eval`, ...: Keras < 3.9 imported any module a config named, CVE-2025-1550), and
  vocabulary or tokenizer files given by path, which loading reads or fetches even in safe mode
  (CVE-2025-12058; high rather than critical: a file read, not code).
* Foreign references, AISEC-SC-702: any other module outside Keras's own packages. We accept `keras`,
  `tf_keras` (Keras 2 under its pip name) and `keras_hub`, `keras_nlp`, `keras_cv`: the packages Keras 3
  itself agrees to import from a config (`_retrieve_class_or_fn`), which ship only Keras objects. Anything
  else (`__main__`, a user package, `tensorflow`) is custom code the loader must import or register.
  Module `builtins` is how Keras names its own built-in functions (`relu`, `mse`): fine, unless the name
  is a Python builtin (`eval` and the like: 703; plain computations like `abs`: 702).

The walk is iterative over the parsed JSON (bounded by its size); findings name the JSON path, and a
reference met many times is reported once with its count.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aisec.core.severity import Severity
from aisec.defend.supply_chain.context import LimitExceeded, ScanContext, Unparseable
from aisec.defend.supply_chain.formats.archives import MemoryFile
from aisec.defend.supply_chain.formats.pickle_policy import DANGEROUS_NAMES, DANGEROUS_PREFIXES
from aisec.defend.supply_chain.formats.text import is_utf8_text

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_KERAS_PACKAGES = frozenset({"keras", "tf_keras", "keras_hub", "keras_nlp", "keras_cv"})
_TF_PACKAGES = frozenset({"tensorflow", "tf"})
_DANGEROUS_PREFIXES = tuple(
    p for p in DANGEROUS_PREFIXES if p.split(".")[0] not in _KERAS_PACKAGES | _TF_PACKAGES
)
_MAX_FINDINGS = 100  # distinct findings of one rule per config; the rest are counted in one more finding

# Keras names that are not modelling code: keras/src/saving/serialization_lib.py NON_MODELING_APIS (3.11+),
# plus the objects the CVEs above used around it.
_UNSAFE_KERAS: dict[str, str] = {
    "enable_unsafe_deserialization": "turns safe mode off for the rest of the load (CVE-2025-9906)",
    "set_global_attribute": "can set Keras's `safe_mode_saving` flag, turning safe mode off (CVE-2025-9906)",
    "get_file": "downloads a URL and writes or extracts it on disk (CVE-2025-8747)",
    "load_model": "loads another model, which may carry code and turn safe mode off (CVE-2025-9906)",
    "TorchModuleWrapper": "unpickles a torch module with torch.load(weights_only=False) (CVE-2025-49655)",  # trusted: a message, not a call
    "TFSMLayer": "loads and runs a TensorFlow SavedModel from a path in the config (CVE-2026-1462)",
    "func_load": "unmarshals Python bytecode (CVE-2024-3660)",
}
_NON_MODELING = frozenset(
    """clear_session model_from_json model_from_config model_from_yaml save_model load_weights save_weights
    deserialize_keras_object serialize_keras_object register_keras_serializable load_img save_img
    image_dataset_from_directory text_dataset_from_directory audio_dataset_from_directory""".split()
)
# Python builtins that only compute: a config naming one is foreign (702), any other builtin is 703.
_PLAIN_BUILTINS = frozenset(
    """abs all any bin bool bytes chr complex dict divmod enumerate float format frozenset hash hex int len
    list max min oct ord pow range repr reversed round set slice sorted str sum tuple zip""".split()
)
# TensorFlow API names (as Keras 2 TFOpLambda layers and `tensorflow` modules name them) that touch files or
# run Python: tf.io, tf.gfile, tf.py_function, tf.numpy_function, tf.summary, tf.saved_model, and raw ops.
_TF_UNSAFE = re.compile(
    r"^(?:compat\.v1\.)?(?:io\.|gfile\.|summary\.|saved_model\.|py_function$|numpy_function$|py_func$|"
    r"read_file$|write_file$|raw_ops\.(?:ReadFile|WriteFile|PyFunc|PyFuncStateless|EagerPyFunc|Save|SaveV2|"
    r"SaveSlices|Restore|RestoreV2|MatchingFiles|PrintV2)$)"
)
# Config keys whose string value is a file path or URL that the layer reads when it is built.
_FILE_KEYS = ("vocabulary", "idf_weights", "merges", "proto", "vocabulary_file")


def _normal(path: str) -> str:
    return ".".join(part.lstrip("_").lower() for part in path.split("."))


def _judge(module: str | None, name: str, registered: str | None) -> tuple[str, str] | None:
    """(rule, reason) for a config naming `name` in `module`; None when Keras resolves it to Keras."""
    path = f"{module}.{name}" if module else name
    names = {name.rsplit(".", 1)[-1]} | set(re.split(r"[>.]", registered or ""))
    for candidate in names:
        if candidate in _UNSAFE_KERAS:
            return "AISEC-SC-703", f"{path}: {_UNSAFE_KERAS[candidate]}"
        if candidate in _NON_MODELING:
            return "AISEC-SC-703", f"{path}: not modelling code (Keras's NON_MODELING_APIS deny list)"
    root = (module or "").split(".")[0]
    if module == "builtins":
        if name in _PLAIN_BUILTINS:
            return "AISEC-SC-702", f"Python's builtins.{name}, not a Keras function"
        if hasattr(builtins, name):
            return "AISEC-SC-703", f"builtins.{name}, which Keras < 3.9 imports and calls (CVE-2025-1550)"
        return None  # Keras's module name for its own built-in functions (activations, losses, ...)
    if root in _TF_PACKAGES and _TF_UNSAFE.match(path.split(".", 1)[-1]):
        return "AISEC-SC-703", f"{path}: a TensorFlow op that touches files or runs Python"
    normal = _normal(path)
    if any(normal == p or normal.startswith(p + ".") for p in _DANGEROUS_PREFIXES) or any(
        _normal(c) in DANGEROUS_NAMES or c in DANGEROUS_NAMES for c in names
    ):
        return (
            "AISEC-SC-703",
            f"{path}: runs code, touches files or processes (Keras < 3.9 imports it, CVE-2025-1550)",
        )
    if module and root not in _KERAS_PACKAGES:
        return "AISEC-SC-702", f"{path}: code outside Keras that loading imports or needs registered"
    custom = next((n for n in (registered, name) if n and ">" in n), None)
    if not module and custom is not None and custom.split(">")[0] not in _KERAS_PACKAGES:
        return "AISEC-SC-702", f"{custom}: a registered custom object, code outside Keras"
    return None


@dataclass
class _Step:
    """A JSON path, kept as a parent chain so deep or wide configs cost no string copies."""

    parent: _Step | None
    key: str | int

    def render(self) -> str:
        keys: list[str | int] = []
        step: _Step | None = self
        while step is not None:
            keys.append(step.key)
            step = step.parent
        return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in reversed(keys)).lstrip(".")


@dataclass
class _KerasWalk:
    """One config's walk; equal findings are merged, and reported (at most _MAX_FINDINGS per rule) at the end."""

    ctx: ScanContext
    where: str
    found: dict[tuple[str, str], list[Any]] = field(default_factory=dict)  # -> [count, first place, severity]

    def add(self, rule: str, text: str, at: _Step | None, severity: Severity | None = None) -> None:
        entry = self.found.setdefault((rule, text), [0, at, severity])
        entry[0] += 1

    def report(self) -> None:
        per_rule: dict[str, int] = {}
        for (rule, text), (count, at, severity) in self.found.items():
            per_rule[rule] = per_rule.get(rule, 0) + 1
            if per_rule[rule] > _MAX_FINDINGS:
                continue
            place = f"at {at.render()} of {self.where}" if at is not None else f"in {self.where}"
            more = f" and {count - 1} more places" if count > 1 else ""
            self.ctx.add(rule, f"{text}; {place}{more}", severity=severity)
        for rule, count in per_rule.items():
            if count > _MAX_FINDINGS:
                self.ctx.add(rule, f"{count - _MAX_FINDINGS} more findings like the above in {self.where}")

    def walk(self, config: object) -> None:
        """Every object in the config; `owner` names the nearest enclosing named object, for messages."""
        stack: list[tuple[object, _Step | None, str]] = [(config, None, "")]
        while stack:
            value, at, owner = stack.pop()
            if isinstance(value, dict):
                if isinstance(value.get("class_name"), str):
                    owner = self.check_object(value, at, owner)
                stack.extend((v, _Step(at, str(k)), owner) for k, v in value.items())
            elif isinstance(value, list):
                stack.extend((v, _Step(at, i), owner) for i, v in enumerate(value))

    def check_object(self, obj: dict[str, Any], at: _Step | None, owner: str) -> str:
        """One `{"class_name": ...}` object: bytecode, the layers that need a closer look, its reference.
        Returns the owner name for the objects inside it."""
        class_name: str = obj["class_name"]
        module = obj.get("module") if isinstance(obj.get("module"), str) else None
        registered = obj.get("registered_name") if isinstance(obj.get("registered_name"), str) else None
        inner = obj.get("config")
        if class_name == "__lambda__":
            text = "marshalled Python bytecode (`__lambda__`) that Keras runs on load (CVE-2024-3660)"
            self.add("AISEC-SC-701", f"{owner}: {text}" if owner else text, at)
            return owner
        if class_name == "function" and isinstance(inner, str):
            name = inner
        elif class_name == "__typespec__" and isinstance(obj.get("spec_name"), str):
            name = obj["spec_name"]
        else:
            name = class_name
        verdict = _judge(module, name, registered)
        if verdict is not None:
            self.add(*verdict, at)
        if not isinstance(inner, dict):
            return owner
        if class_name == "Lambda":
            self.check_lambda(inner, at)
        elif class_name in ("TFOpLambda", "SlicingOpLambda") and isinstance(inner.get("function"), str):
            verdict = _judge("tf", inner["function"], None)
            if verdict is not None and verdict[0] == "AISEC-SC-703":
                self.add(*verdict, at)
        elif class_name == "TorchModuleWrapper" and isinstance(inner.get("module"), str):
            self.scan_torch_payload(inner["module"], at)
        for key in _FILE_KEYS:
            if isinstance(inner.get(key), str) and inner[key]:
                text = f"{class_name} reads its {key} from {inner[key]!r} when built, even in safe mode"
                self.add("AISEC-SC-703", text + " (CVE-2025-12058)", at, severity=Severity.HIGH)
        return f"{class_name} {inner['name']!r}" if isinstance(inner.get("name"), str) else owner

    def check_lambda(self, inner: dict[str, Any], at: _Step | None) -> None:
        """Keras 2 Lambda layers: `function`, `output_shape` and `mask` are bytecode when their `*_type` is
        "lambda", a function name resolved in `module` / `*_module` when it is "function" (tf.keras
        Lambda._serialize_function_to_config)."""
        for key in ("function", "output_shape", "mask"):
            value, kind = inner.get(key), inner.get(f"{key}_type")
            module = inner.get("module" if key == "function" else f"{key}_module")
            bytecode = kind == "lambda" or (key == "function" and kind is None and isinstance(value, list))
            if bytecode and isinstance(value, (str, list)):
                text = (
                    f"Lambda layer {inner.get('name')!r}: its {key} is marshalled Python bytecode run on load"
                )
                self.add("AISEC-SC-701", text + " (CVE-2024-3660, CVE-2025-9905)", at)
            elif kind == "function" and isinstance(value, str):
                verdict = _judge(module if isinstance(module, str) else None, value, None)
                if verdict is not None:
                    self.add(*verdict, at)

    def scan_torch_payload(self, encoded: str, at: _Step | None) -> None:
        """TorchModuleWrapper's `module`: base64 of a torch.save archive, scanned like any payload."""
        try:
            payload = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return
        self.ctx.budget.charge_nested_payload()
        part = (
            f"{self.where}:{at.render()}.config.module" if at is not None else f"{self.where}:config.module"
        )
        self.ctx.scan_nested(memoryview(payload), part)


def scan_keras_config(config: object, ctx: ScanContext, where: str) -> None:
    """Report the bytecode, dangerous and foreign references in a parsed Keras config (see module doc);
    `where` names the config in messages ("config.json", "model_config")."""
    walk = _KerasWalk(ctx, where)
    try:
        walk.walk(config)
    finally:
        walk.report()


def _is_keras_config(value: object) -> bool:
    if not isinstance(value, dict):
        return False
    if isinstance(value.get("class_name"), str) and "config" in value:
        return True
    layers = value.get("layers")
    return isinstance(layers, list) and any(isinstance(v, dict) and "class_name" in v for v in layers)


# JSON


_JSON_VALUE_START = frozenset(b'{["-0123456789]')


def looks_like_json(data: memoryview) -> bool:
    """Whether `data` starts like a JSON object or array: after an optional BOM and whitespace, `{` then a
    key or `}`, or `[` then a value or `]` (so INI/TOML `[section]` headers are not JSON), and valid UTF-8."""
    sample = bytes(data[:4096])
    if sample.startswith(b"\xef\xbb\xbf"):
        sample = sample[3:]
    text = sample.lstrip(b" \t\r\n")
    if len(text) < 2 or text[:1] not in (b"{", b"["):
        return False
    rest = text[1:].lstrip(b" \t\r\n")
    if not rest:
        return False
    if text[:1] == b"{":
        ok = rest[:1] in (b'"', b"}")
    else:
        ok = rest[0] in _JSON_VALUE_START or re.match(rb"(true|false|null)\b", rest) is not None
    return ok and is_utf8_text(sample)


def scan_json(data: memoryview, ctx: ScanContext) -> None:
    """Parse a JSON file (at most `max_header_bytes`); check it as a Keras config if it is one, and hand
    every `chat_template` (a string, a list of {name, template}, or a name -> template dict) to the chat
    template checker."""
    if len(data) > ctx.limits.max_header_bytes:
        raise LimitExceeded(f"JSON file of {len(data)} bytes is larger than {ctx.limits.max_header_bytes}")
    value = _parse_json(bytes(data), "JSON file")
    if _is_keras_config(value):
        scan_keras_config(value, ctx, ctx.name or "config.json")
    templates = list(_chat_templates(value))
    if templates:
        from aisec.defend.supply_chain.formats.templates import check_template

        for source, where in templates:
            check_template(source, ctx, where)


def _parse_json(raw: bytes, what: str) -> Any:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise Unparseable(f"{what} is not UTF-8: {error.reason}", error.start) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        offset = len(text[: error.pos].encode("utf-8")) + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        raise Unparseable(f"{what} does not parse: {error.msg}", offset) from None
    except RecursionError:
        raise LimitExceeded(f"{what} nests deeper than the JSON parser's recursion limit") from None
    except ValueError as error:  # an integer literal longer than Python's digit limit
        raise Unparseable(f"{what} does not parse: {error}") from None


def _chat_templates(value: object) -> Iterator[tuple[str, str]]:
    """(template source, JSON path) for every string under a `chat_template` key, at any depth."""
    stack: list[tuple[object, _Step | None]] = [(value, None)]
    while stack:
        node, at = stack.pop()
        if isinstance(node, dict):
            for key, child in node.items():
                if key == "chat_template":
                    yield from _template_values(child, _Step(at, key).render())
                else:
                    stack.append((child, _Step(at, str(key))))
        elif isinstance(node, list):
            stack.extend((child, _Step(at, i)) for i, child in enumerate(node))


def _template_values(value: object, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield value, path
    elif isinstance(value, list):  # tokenizer_config.json: [{"name": ..., "template": ...}, ...]
        for i, entry in enumerate(value):
            if isinstance(entry, dict) and isinstance(entry.get("template"), str):
                yield entry["template"], f"{path}[{entry.get('name', i)!s}]"
    elif isinstance(value, dict):
        yield from ((v, f"{path}.{k}") for k, v in value.items() if isinstance(v, str))


# HDF5 (Keras 2 / tf.keras `.h5` models)


def looks_like_hdf5(data: memoryview) -> bool:
    """The HDF5 signature at offset 0 or at a user-block offset (512, 1024, 2048, ...), as the HDF5
    library searches for the superblock (HDF5 File Format Specification, section 2.1)."""
    offset = 0
    while offset + len(HDF5_MAGIC) <= len(data):
        if bytes(data[offset : offset + len(HDF5_MAGIC)]) == HDF5_MAGIC:
            return True
        offset = 512 if offset == 0 else offset * 2
    return False


_HDF5_CONFIGS = ("model_config", "training_config")
_HDF5_NOTES = ("keras_version", "backend")


def scan_hdf5(data: memoryview, ctx: ScanContext) -> None:
    """Read the root attributes `model_config` and `training_config` (JSON) of a Keras HDF5 file and check
    them as Keras configs; `keras_version` and `backend` name the writer in messages. Datasets are never
    read. h5py reads through a file object over `data` (no copy of the file); note that libhdf5, a C
    parser, still reads the superblock and root object header of a hostile file. A Lambda layer in an
    HDF5 file runs even with safe_mode=True (CVE-2025-9905)."""
    try:
        import h5py
    except ImportError:
        raise Unparseable("HDF5 needs h5py: pip install 'aisec[scan]'") from None
    limit = ctx.limits.max_header_bytes
    try:
        with h5py.File(MemoryFile(data), "r") as h5:
            attrs: dict[str, str] = {}
            for name in _HDF5_CONFIGS + _HDF5_NOTES:
                if name not in h5.attrs:
                    continue
                if h5.attrs.get_id(name).get_storage_size() > limit:
                    raise LimitExceeded(f"HDF5 attribute {name!r} is larger than {limit} bytes")
                value = h5.attrs[name]
                if name in _HDF5_CONFIGS:
                    attrs[name] = _attribute_text(value, name)
                else:  # only named in messages: any type, cut short
                    attrs[name] = (
                        value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
                    )[:64]
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as error:
        raise Unparseable(f"HDF5 file does not open: {error}") from None
    writer = ", ".join(f"{k} {attrs[k]}" for k in _HDF5_NOTES if k in attrs)
    for name in _HDF5_CONFIGS:
        if name in attrs:
            if len(attrs[name]) > limit:
                raise LimitExceeded(f"HDF5 attribute {name!r} is larger than {limit} bytes")
            config = _parse_json(attrs[name].encode("utf-8"), f"HDF5 attribute {name!r}")
            scan_keras_config(config, ctx, f"{name} ({writer})" if writer else name)


def _attribute_text(value: Any, name: str) -> str:
    """An attribute as text: h5py gives str for UTF-8 strings, bytes (or numpy bytes) for ASCII ones, and
    a one-element array for some writers."""
    if hasattr(value, "shape") and getattr(value, "size", 0) == 1 and not isinstance(value, (str, bytes)):
        value = value.reshape(-1)[0]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as error:
            raise Unparseable(f"HDF5 attribute {name!r} is not UTF-8: {error.reason}") from None
    if isinstance(value, str):
        return value
    raise Unparseable(f"HDF5 attribute {name!r} is a {type(value).__name__}, not a string")

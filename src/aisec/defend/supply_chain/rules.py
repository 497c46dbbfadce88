"""The scanner's rules: one id per kind of finding, with the severity it carries and what to do about it.

Ids are stable (they appear in JSON and SARIF reports and in users' suppression lists); a new rule gets a
new id in its format's range. Rules whose `is_error` is true mean "this part could not be analysed": a
file with such a finding is never reported as safe.
"""

from __future__ import annotations

from dataclasses import dataclass

from aisec.core.severity import Severity


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    severity: Severity
    summary: str
    advice: str
    is_error: bool = False


_C, _H, _M, _L, _I = Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM, Severity.LOW, Severity.INFO
_DONT_LOAD = "Do not load this file. Obtain the model from its publisher and verify its signature."

RULES: dict[str, Rule] = {
    r.id: r
    for r in (
        # Whole files and containers.
        Rule(
            "AISEC-SC-001",
            "unparseable",
            _M,
            "The file or a part of it could not be parsed; it was not fully analysed.",
            "Treat the file as unsafe until it parses; re-download it and compare its hash.",
            is_error=True,
        ),
        Rule(
            "AISEC-SC-002",
            "unknown-format",
            _M,
            "The file's bytes match no format the scanner knows.",
            "Check what produced the file; aisec does not vouch for formats it cannot read.",
            is_error=True,
        ),
        Rule(
            "AISEC-SC-003",
            "resource-limit",
            _M,
            "Scanning stopped at a resource limit (size, depth, count or time).",
            "A legitimate model rarely hits these limits: treat the file as hostile, or raise the limit.",
            is_error=True,
        ),
        Rule(
            "AISEC-SC-004",
            "extension-mismatch",
            _M,
            "The file's extension names another format than its bytes.",
            "Load the file according to its real format, or not at all.",
        ),
        Rule(
            "AISEC-SC-005",
            "code-in-data-format",
            _H,
            "A file named as a code-free format (safetensors, npy, ONNX, GGUF, JSON) holds a pickle.",
            _DONT_LOAD,
        ),
        Rule(
            "AISEC-SC-006",
            "trailing-data",
            _M,
            "Bytes follow the end of the data that the loader reads.",
            "Hidden data is a common way to smuggle a second payload; obtain a clean copy.",
        ),
        # Archives.
        Rule(
            "AISEC-SC-101",
            "archive-path-traversal",
            _H,
            "An archive member's name leaves the extraction folder (absolute path or '..').",
            _DONT_LOAD,
        ),
        Rule("AISEC-SC-102", "archive-link", _H, "An archive member is a symbolic or hard link.", _DONT_LOAD),
        Rule(
            "AISEC-SC-103",
            "archive-duplicate-member",
            _M,
            "Two archive members share a name: loaders disagree about which one they read (PyTorch takes the first, "
            "Python's zipfile the last).",
            _DONT_LOAD,
        ),
        Rule(
            "AISEC-SC-104",
            "archive-integrity",
            _L,
            "An archive member's CRC or flags do not match its data (a zip's or a 7z's); PyTorch ignores both, so the member was read anyway.",
            "The archive was altered after it was written; obtain a clean copy.",
        ),
        Rule(
            "AISEC-SC-105",
            "archive-member-not-analysed",
            _M,
            "An archive member is encrypted or packed with a method the scanner does not decode; it was not analysed.",
            "Extract the member with a trusted tool and scan it, or obtain the model unencrypted.",
            is_error=True,
        ),
        # Pickle.
        Rule(
            "AISEC-SC-201",
            "pickle-dangerous-global",
            _C,
            "The pickle imports a callable that runs code, touches files, processes or the network when loaded.",
            _DONT_LOAD,
        ),
        Rule(
            "AISEC-SC-202",
            "pickle-unknown-global",
            _M,
            "The pickle imports a global outside the allow list of objects that are safe to reconstruct.",
            "Loading it imports and may call that object; load only if you trust the file's author, or convert "
            "the model to safetensors.",
        ),
        Rule(
            "AISEC-SC-203",
            "pickle-dynamic-global",
            _H,
            "The pickle computes the name of a global at load time, so it cannot be checked statically.",
            _DONT_LOAD,
        ),
        Rule(
            "AISEC-SC-204",
            "pickle-extension-registry",
            _H,
            "The pickle loads a global through the copyreg extension registry (EXT1/EXT2/EXT4).",
            _DONT_LOAD,
        ),
        Rule(
            "AISEC-SC-205",
            "pickle-nested-payload",
            _H,
            "The pickle passes bytes to a loader (pickle.loads, numpy.load, torch.load, ...) at load time.",
            _DONT_LOAD,
        ),
        Rule(
            "AISEC-SC-206",
            "pickle-modifies-global",
            _H,
            "The pickle sets attributes of a class or module it imported (BUILD on a global), changing code "
            "that runs later.",
            _DONT_LOAD,
        ),
        # NumPy.
        Rule(
            "AISEC-SC-301",
            "numpy-object-array",
            _I,
            "The array has an object dtype: loading it needs allow_pickle=True (its pickle was scanned).",
            "Prefer a numeric dtype; never pass allow_pickle=True for files you did not write.",
        ),
        # safetensors.
        Rule(
            "AISEC-SC-401",
            "safetensors-invalid",
            _M,
            "The safetensors header is invalid (offsets, sizes, dtypes, overlaps or JSON).",
            "The safetensors loader refuses this file; obtain a clean copy.",
            is_error=True,
        ),
        Rule(
            "AISEC-SC-402",
            "safetensors-gap",
            _M,
            "The safetensors data section holds bytes no tensor covers.",
            "Hidden data is a common way to smuggle a payload; obtain a clean copy.",
        ),
        # GGUF and chat templates.
        Rule(
            "AISEC-SC-501",
            "gguf-invalid",
            _M,
            "The GGUF header or metadata is malformed.",
            "Obtain a clean copy.",
            is_error=True,
        ),
        Rule(
            "AISEC-SC-502",
            "template-injection",
            _C,
            "A Jinja chat template reaches Python internals (dunder attributes, gadgets); rendered outside a "
            "sandbox it runs code.",
            _DONT_LOAD,
        ),
        Rule(
            "AISEC-SC-503",
            "template-unparseable",
            _M,
            "A Jinja chat template does not parse, so it was not checked.",
            "Obtain a clean copy.",
            is_error=True,
        ),
        # ONNX.
        Rule(
            "AISEC-SC-601",
            "onnx-custom-domain",
            _H,
            "The graph uses operators from a custom domain, which need a native library registered to run.",
            "Load only with custom-op libraries you built or trust.",
        ),
        Rule(
            "AISEC-SC-602",
            "onnx-contrib-domain",
            _L,
            "The graph uses onnxruntime's com.microsoft contrib operators (runtime-specific, not standard ONNX).",
            "Expect the model to run only on onnxruntime.",
        ),
        Rule(
            "AISEC-SC-603",
            "onnx-external-data-escape",
            _C,
            "A tensor's external data path leaves the model's folder (absolute, '..' or a link), reading any file.",
            _DONT_LOAD,
        ),
        Rule(
            "AISEC-SC-604",
            "onnx-external-data",
            _I,
            "Tensors are stored in files beside the model.",
            "Ship and sign those files with the model.",
        ),
        # Keras.
        Rule(
            "AISEC-SC-701",
            "keras-lambda",
            _C,
            "A Keras Lambda layer carries Python code that runs on load.",
            _DONT_LOAD,
        ),
        Rule(
            "AISEC-SC-702",
            "keras-foreign-object",
            _H,
            "The Keras config names a module or function outside Keras, which loading imports or calls.",
            _DONT_LOAD,
        ),
        Rule(
            "AISEC-SC-703",
            "keras-dangerous-object",
            _C,
            "The Keras config names a callable that runs code or disables safe mode.",
            _DONT_LOAD,
        ),
        # TorchScript.
        Rule(
            "AISEC-SC-801",
            "torchscript-dangerous-op",
            _H,
            "TorchScript code calls an operator that reads or writes files or loads libraries.",
            _DONT_LOAD,
        ),
    )
}

"""safetensors and GGUF scanners and the Jinja2 chat-template checker, against hand-made benign and hostile
files, public SSTI payloads, real-looking chat templates, and files written by the real writers."""

from __future__ import annotations

import json
import mmap
import struct
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from aisec.core.severity import Severity
from aisec.defend.supply_chain.context import Budget, LimitExceeded, ScanContext, Unparseable
from aisec.defend.supply_chain.formats.gguf import looks_like_gguf, scan_gguf
from aisec.defend.supply_chain.formats.safetensors import looks_like_safetensors, scan_safetensors
from aisec.defend.supply_chain.formats.templates import check_template
from aisec.defend.supply_chain.limits import ScanLimits
from aisec.defend.supply_chain.result import ScanFinding

Scanner = Callable[[memoryview, ScanContext], object]


def make_ctx(limits: ScanLimits | None = None) -> ScanContext:
    return ScanContext(
        location="f", budget=Budget(limits or ScanLimits()), findings=[], dispatch=lambda d, c: "unknown"
    )


def scan(scanner: Scanner, data: bytes, limits: ScanLimits | None = None) -> list[ScanFinding]:
    """Run a scanner as the dispatcher does: Unparseable and LimitExceeded become findings."""
    ctx = make_ctx(limits)
    try:
        scanner(memoryview(data), ctx)
    except Unparseable as error:
        ctx.add("AISEC-SC-001", str(error), error.offset)
    except LimitExceeded as error:
        ctx.add("AISEC-SC-003", str(error))
    return ctx.findings


def rules(findings: list[ScanFinding]) -> set[str]:
    return {f.rule_id for f in findings}


def timed_rules(scanner: Scanner, data: bytes) -> set[str]:
    started = time.perf_counter()
    found = rules(scan(scanner, data))
    assert time.perf_counter() - started < 2
    return found


# safetensors ---------------------------------------------------------------------------------------------


def safetensors_bytes(header: dict | str | bytes, body: bytes, pad: bytes = b"") -> bytes:
    text = header if isinstance(header, str | bytes) else json.dumps(header)
    raw = (text if isinstance(text, bytes) else text.encode()) + pad
    return struct.pack("<Q", len(raw)) + raw + body


def tensor(dtype: str, shape: list[int], begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


GOOD_HEADER = {
    "__metadata__": {"format": "pt"},
    "a": tensor("F32", [2, 3], 0, 24),
    "b": tensor("BF16", [4], 24, 32),
    "c": tensor("F4", [3, 2], 32, 35),
    "d": tensor("BOOL", [0, 7], 35, 35),
    "e": tensor("I64", [], 35, 43),
}


def test_safetensors_benign() -> None:
    data = safetensors_bytes(GOOD_HEADER, bytes(43), pad=b"   ")
    assert looks_like_safetensors(memoryview(data))
    assert scan(scan_safetensors, data) == []


def test_safetensors_empty_header_and_mmap(tmp_path: Path) -> None:
    assert scan(scan_safetensors, safetensors_bytes({}, b"")) == []
    path = tmp_path / "m.safetensors"
    path.write_bytes(safetensors_bytes(GOOD_HEADER, bytes(43)))
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        ctx = make_ctx()
        scan_safetensors(view, ctx)
        view.release()
    assert ctx.findings == []


@pytest.mark.parametrize(
    "header",
    [
        {"a": tensor("F33", [2], 0, 8)},  # unknown dtype
        {"a": tensor("F32", [2, -1], 0, 8)},  # negative dimension
        {"a": tensor("F32", [2, 1.0], 0, 8)},  # float dimension
        {"a": tensor("F32", [True], 0, 4)},  # bool is not an int here
        {"a": tensor("F32", [2], 8, 0)},  # end before begin
        {"a": tensor("F32", [2], 0, 12)},  # size does not match the shape
        {"a": tensor("F32", [4], 0, 16)},  # past the data section
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]}},
        {"a": {"dtype": "F32", "shape": [2]}},  # no offsets
        {"a": tensor("F4", [3], 0, 2)},  # 12 bits: not whole bytes
        {"a": tensor("U8", [2**40, 2**40, 2**40], 0, 8)},  # overflows usize
        {"a": tensor("F32", [1], 0, 4), "b": tensor("F32", [1], 2, 6)},  # overlap
        {"__metadata__": {"k": 1}, "a": tensor("F32", [2], 0, 8)},  # metadata values must be strings
        {"__metadata__": ["x"], "a": tensor("F32", [2], 0, 8)},
        {"a": [1, 2], "b": tensor("F32", [2], 0, 8)},  # tensor entry is not an object
    ],
)
def test_safetensors_invalid_header(header: dict) -> None:
    assert "AISEC-SC-401" in rules(scan(scan_safetensors, safetensors_bytes(header, bytes(8))))


def test_safetensors_duplicate_keys_and_padding() -> None:
    duplicate = '{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    assert "AISEC-SC-401" in rules(scan(scan_safetensors, safetensors_bytes(duplicate, bytes(4))))
    for pad in (b"\n\n", b"\x00\x00", b"  x"):
        found = rules(
            scan(scan_safetensors, safetensors_bytes({"a": tensor("F32", [1], 0, 4)}, bytes(4), pad))
        )
        assert found == {"AISEC-SC-401"}, pad


def test_safetensors_hidden_data() -> None:
    hole = {"a": tensor("F32", [1], 0, 4), "b": tensor("F32", [1], 8, 12)}
    found = scan(scan_safetensors, safetensors_bytes(hole, bytes(12)))
    assert rules(found) == {"AISEC-SC-402"}
    tail = scan(
        scan_safetensors, safetensors_bytes({"a": tensor("F32", [1], 0, 4)}, bytes(4) + b"PK\x03\x04evil")
    )
    assert rules(tail) == {"AISEC-SC-402"} and "8 bytes after the last tensor" in tail[0].message


@pytest.mark.parametrize(
    "data",
    [
        b"\x01\x02",
        struct.pack("<Q", 2**63) + b"{}",  # header length past the file
        struct.pack("<Q", 2**64 - 1) + b"{" + bytes(100),
        safetensors_bytes('{"a": NaN}', b""),
        safetensors_bytes('{"a": Infinity}', b""),
        safetensors_bytes("[1, 2]", b""),
        safetensors_bytes('{"a": 1', b""),
        safetensors_bytes(b'{"a": "\xff"}', b""),  # not UTF-8
        safetensors_bytes('{"\\ud800": 1}', b""),  # lone surrogate
        safetensors_bytes("{" + "[" * 100_000 + "]" * 100_000 + "}", b""),
        struct.pack("<Q", 2) + b" {}",  # does not start with "{"
    ],
)
def test_safetensors_unparseable(data: bytes) -> None:
    assert timed_rules(scan_safetensors, data) == {"AISEC-SC-001"}


def test_safetensors_header_limit() -> None:
    data = safetensors_bytes({"a": tensor("F32", [1], 0, 4)}, bytes(4), pad=b" " * 5000)
    assert rules(scan(scan_safetensors, data, ScanLimits(max_header_bytes=1000))) == {"AISEC-SC-003"}


def test_safetensors_sniff() -> None:
    assert not looks_like_safetensors(memoryview(b"GGUF\x03\x00\x00\x00"))
    assert not looks_like_safetensors(memoryview(struct.pack("<Q", 2**40) + b"{}"))
    assert not looks_like_safetensors(memoryview(struct.pack("<Q", 2) + b"[]"))


def test_safetensors_real_writer(tmp_path: Path) -> None:
    st_numpy = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "w.safetensors"
    tensors = {
        "embed": np.arange(60, dtype=np.float32).reshape(3, 4, 5),
        "ids": np.arange(7, dtype=np.int64),
        "half": np.ones((2, 3), dtype=np.float16),
        "flags": np.array([True, False, True]),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "scalar": np.array(3.5, dtype=np.float64),
    }
    st_numpy.save_file(tensors, str(path), metadata={"format": "np", "note": "x"})
    data = path.read_bytes()
    assert looks_like_safetensors(memoryview(data))
    assert scan(scan_safetensors, data) == []
    assert rules(scan(scan_safetensors, data + b"\x00")) == {"AISEC-SC-402"}


# GGUF ----------------------------------------------------------------------------------------------------

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)


class Gguf:
    """A GGUF file built field by field (little-endian unless `endian` is ">")."""

    def __init__(self, version: int = 3, endian: str = "<") -> None:
        self.version, self.e = version, endian
        self.kvs: list[bytes] = []
        self.infos: list[bytes] = []
        self.n_kv: int | None = None
        self.n_tensors: int | None = None

    def count(self, n: int) -> bytes:
        return struct.pack(self.e + ("I" if self.version == 1 else "Q"), n)

    def s(self, text: str | bytes) -> bytes:
        raw = text.encode() if isinstance(text, str) else text
        return self.count(len(raw)) + raw

    def u32(self, n: int) -> bytes:
        return struct.pack(self.e + "I", n)

    def kv(self, key: str | bytes, vtype: int, payload: bytes) -> Gguf:
        self.kvs.append(self.s(key) + self.u32(vtype) + payload)
        return self

    def string_kv(self, key: str, value: str) -> Gguf:
        return self.kv(key, STRING, self.s(value))

    def tensor(self, name: str, dims: list[int], ggml_type: int, offset: int) -> Gguf:
        dim_fmt = "I" if self.version == 1 else "Q"
        packed = b"".join(struct.pack(self.e + dim_fmt, d) for d in dims)
        self.infos.append(self.s(name) + self.u32(len(dims)) + packed + self.u32(ggml_type)
                          + struct.pack(self.e + "Q", offset))  # fmt: skip
        return self

    def build(self, data: bytes = b"", alignment: int = 32) -> bytes:
        head = b"GGUF" + self.u32(self.version)
        head += self.count(len(self.infos) if self.n_tensors is None else self.n_tensors)
        head += self.count(len(self.kvs) if self.n_kv is None else self.n_kv)
        head += b"".join(self.kvs) + b"".join(self.infos)
        if self.infos:
            head += bytes(-len(head) % alignment)
        return head + data


LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' "
    "+ message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 "
    "== 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt "
    "%}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CVE_2024_34359 = (
    '{% for x in ().__class__.__base__.__subclasses__() %}{% if "warning" in x.__name__ %}'
    "{{x()._module.__builtins__['__import__']('os').popen(\"touch /tmp/retr0reg\")}}{%endif%}{% endfor %}"
)


def benign_gguf(version: int = 3, endian: str = "<") -> bytes:
    g = Gguf(version, endian)
    g.string_kv("general.architecture", "llama").kv("general.alignment", U32, g.u32(32))
    g.kv("llama.context_length", U32, g.u32(4096)).kv("general.file_type", U32, g.u32(1))
    g.kv("llama.rope.freq_base", F32, struct.pack(endian + "f", 10000.0))
    g.kv("general.flag", BOOL, b"\x01").kv("x.i8", I8, b"\xff").kv("x.u16", U16, b"\x01\x00")
    g.kv("x.i16", I16, b"\x01\x00").kv("x.i32", I32, g.u32(7)).kv("x.u64", U64, struct.pack(endian + "Q", 1))
    g.kv("x.i64", I64, struct.pack(endian + "q", -1)).kv("x.f64", F64, struct.pack(endian + "d", 0.5))
    g.kv("x.u8", U8, b"\x05")
    tokens = [b"<s>", b"</s>", b"hello", "wörld".encode()]
    g.kv(
        "tokenizer.ggml.tokens",
        ARRAY,
        g.u32(STRING) + g.count(len(tokens)) + b"".join(g.s(t) for t in tokens),
    )
    g.kv("tokenizer.ggml.scores", ARRAY, g.u32(F32) + g.count(4) + struct.pack(endian + "4f", 0, 0, -1, -2))
    g.kv("x.nested", ARRAY, g.u32(ARRAY) + g.count(2) + (g.u32(U8) + g.count(2) + b"\x01\x02") * 2)
    g.kv("x.bools", ARRAY, g.u32(BOOL) + g.count(3) + b"\x00\x01\x01")
    g.string_kv("tokenizer.chat_template", LLAMA3)
    g.tensor("token_embd.weight", [8, 4], 0, 0)  # F32: 128 bytes
    g.tensor("blk.0.attn_q.weight", [32, 2], 8, 128)  # Q8_0: 2 blocks of 34 bytes, padded to 96
    g.tensor("output_norm.weight", [8], 1, 224)  # F16: 16 bytes, padded to 32
    return g.build(bytes(128) + bytes(68) + bytes(28) + bytes(16) + bytes(16))


@pytest.mark.parametrize(("version", "endian"), [(1, "<"), (2, "<"), (3, "<"), (3, ">")])
def test_gguf_benign(version: int, endian: str) -> None:
    data = benign_gguf(version, endian)
    assert looks_like_gguf(memoryview(data))
    assert scan(scan_gguf, data) == []


def test_gguf_no_tensors() -> None:
    assert scan(scan_gguf, Gguf().string_kv("general.name", "vocab only").build()) == []


def test_gguf_trailing_and_padding() -> None:
    assert rules(scan(scan_gguf, benign_gguf() + b"hidden")) == {"AISEC-SC-006"}
    data = bytearray(benign_gguf())
    data[-1] = 0x41  # inside the padding after the last tensor
    assert rules(scan(scan_gguf, bytes(data))) == {"AISEC-SC-006"}


def malformed_gguf(case: str) -> bytes:
    g = Gguf()
    data = bytes(32)
    if case == "duplicate key":
        g.string_kv("general.name", "a").string_kv("general.name", "b")
    elif case == "bool":
        g.kv("general.flag", BOOL, b"\x02")
    elif case == "bool array":
        g.kv("x.bools", ARRAY, g.u32(BOOL) + g.count(2) + b"\x00\x07")
    elif case == "alignment type":
        g.kv("general.alignment", U64, struct.pack("<Q", 32))
    elif case == "alignment value":
        g.kv("general.alignment", U32, g.u32(48))
    elif case == "key not ascii":
        g.string_kv("général.name", "x")
    elif case == "template type":
        g.kv("tokenizer.chat_template", U32, g.u32(1))
    elif case == "template utf8":
        g.kv("tokenizer.chat_template", STRING, g.s(b"{{ x }}\xff"))
    elif case == "dims":
        g.tensor("t", [1, 1, 1, 1, 1], 0, 0)
    elif case == "type":
        g.tensor("t", [8], 99, 0)
    elif case == "block":
        g.tensor("t", [16], 8, 0)  # Q8_0 blocks hold 32 elements
    elif case == "offset alignment":
        g.tensor("t", [4], 0, 4)
    elif case == "past end":
        g.tensor("t", [64], 0, 0)
    elif case == "overlap":
        g.tensor("a", [8], 0, 0).tensor("b", [8], 0, 0)
        data = bytes(64)
    elif case == "gap":
        g.tensor("a", [8], 0, 64)
        data = bytes(96)
    elif case == "duplicate tensor":
        g.tensor("a", [8], 0, 0).tensor("a", [8], 0, 32)
        data = bytes(64)
    elif case == "long name":
        g.tensor("t" * 64, [8], 0, 0)
    elif case == "huge dims":
        g.tensor("t", [2**63, 2], 0, 0)
    return g.build(data)


@pytest.mark.parametrize(
    "case",
    ["duplicate key", "bool", "bool array", "alignment type", "alignment value", "key not ascii", "template type",
     "template utf8", "dims", "type", "block", "offset alignment", "past end", "overlap", "gap",
     "duplicate tensor", "long name", "huge dims"],
)  # fmt: skip
def test_gguf_malformed(case: str) -> None:
    assert "AISEC-SC-501" in rules(scan(scan_gguf, malformed_gguf(case)))


def hostile_gguf(case: str) -> bytes:
    g = Gguf()
    if case == "string length":
        g.kvs.append(g.count(2**63) + b"x" * 64)
    elif case == "value length":
        g.kvs.append(g.s("general.name") + g.u32(STRING) + g.count(2**63 - 1) + b"x" * 64)
    elif case == "array count":
        g.kv("x.a", ARRAY, g.u32(U64) + g.count(2**60) + bytes(64))
    elif case == "string array count":
        g.kv("x.a", ARRAY, g.u32(STRING) + g.count(2**60) + bytes(64))
    elif case == "nested array count":
        g.kv("x.a", ARRAY, g.u32(ARRAY) + g.count(2**60) + bytes(64))
    elif case == "kv count":
        g.n_kv = 2**63
    elif case == "tensor count":
        g.n_tensors = 2**64 - 1
    elif case == "n_dims":
        g.infos.append(g.s("t") + g.u32(2**32 - 1) + bytes(64))
    elif case == "deep nesting":
        g.kv("x.a", ARRAY, (g.u32(ARRAY) + g.count(1)) * 1000 + g.u32(U8) + g.count(0))
    elif case == "value type":
        g.kv("x.a", 13, bytes(8))
    elif case == "item type":
        g.kv("x.a", ARRAY, g.u32(77) + g.count(1) + bytes(8))
    elif case == "empty key":
        g.string_kv("", "x")
    elif case == "version":
        return b"GGUF" + struct.pack("<I", 7) + bytes(16)
    elif case == "truncated":
        return benign_gguf()[:100]
    return g.build()


@pytest.mark.parametrize(
    "case",
    ["string length", "value length", "array count", "string array count", "nested array count", "kv count",
     "tensor count", "n_dims", "deep nesting", "value type", "item type", "empty key", "version", "truncated"],
)  # fmt: skip
def test_gguf_hostile_lengths_end_quickly(case: str) -> None:
    assert timed_rules(scan_gguf, hostile_gguf(case)) == {"AISEC-SC-001"}


def test_gguf_header_limit() -> None:
    data = Gguf().string_kv("general.description", "x" * 10_000).build()
    assert rules(scan(scan_gguf, data, ScanLimits(max_header_bytes=1000))) == {"AISEC-SC-003"}


def test_gguf_big_vocabulary_is_fast() -> None:
    g = Gguf()
    tokens = b"".join(g.s(f"tok{i}") for i in range(200_000))
    g.kv("tokenizer.ggml.tokens", ARRAY, g.u32(STRING) + g.count(200_000) + tokens)
    assert timed_rules(scan_gguf, g.build()) == set()


def test_gguf_chat_templates() -> None:
    g = Gguf().string_kv("tokenizer.chat_template", CVE_2024_34359)
    g.string_kv("tokenizer.chat_template.tool_use", "{{ lipsum.__globals__['os'].popen('id').read() }}")
    g.string_kv("tokenizer.chat_template.rag", "{% for m in messages %}")
    g.string_kv("tokenizer.chat_templatex", "{{ cycler.__init__ }}")  # not a template key
    found = scan(scan_gguf, g.build())
    injections = [f for f in found if f.rule_id == "AISEC-SC-502"]
    assert injections and all(f.severity is Severity.CRITICAL for f in injections)
    assert any("metadata[tokenizer.chat_template]" in f.message for f in injections)
    assert any("metadata[tokenizer.chat_template.tool_use]" in f.message for f in injections)
    assert not any("chat_templatex" in f.message for f in found)
    assert [f.rule_id for f in found if "rag" in f.message] == ["AISEC-SC-503"]
    array = Gguf()
    array.kv("tokenizer.chat_template", ARRAY, array.u32(STRING) + array.count(1) + array.s(CVE_2024_34359))
    assert {"AISEC-SC-501", "AISEC-SC-502"} <= rules(scan(scan_gguf, array.build()))


def test_gguf_real_writer(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "w.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(128)
    writer.add_token_list(["<s>", "</s>", "a", "b"])
    writer.add_token_scores([0.0, 0.0, -1.0, -2.0])
    writer.add_chat_template(
        [{"name": "default", "template": LLAMA3}, {"name": "tool_use", "template": LLAMA3}]
    )
    writer.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(3, dtype=np.float16))
    writer.add_tensor("ids", np.arange(5, dtype=np.int32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = path.read_bytes()
    assert looks_like_gguf(memoryview(data))
    assert scan(scan_gguf, data) == []
    hostile = tmp_path / "h.gguf"
    writer = gguf.GGUFWriter(str(hostile), "llama")
    writer.add_chat_template(
        [{"name": "default", "template": LLAMA3}, {"name": "rag", "template": CVE_2024_34359}]
    )
    writer.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    found = scan(scan_gguf, hostile.read_bytes())
    assert rules(found) == {"AISEC-SC-502"}
    assert all("metadata[tokenizer.chat_template.rag]" in f.message for f in found)


# Chat templates ------------------------------------------------------------------------------------------

REAL_TEMPLATES = {
    "llama2": (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
        "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}"
        "{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) "
        "%}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
        "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
        "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif "
        "message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
    ),
    "llama3": LLAMA3,
    "llama3.1-tools": """{{- bos_token }}
{%- if custom_tools is defined %}{%- set tools = custom_tools %}{%- endif %}
{%- if not tools_in_user_message is defined %}{%- set tools_in_user_message = true %}{%- endif %}
{%- if not date_string is defined %}{%- set date_string = strftime_now("%d %b %Y") %}{%- endif %}
{%- if not tools is defined %}{%- set tools = none %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {%- for t in tools %}{{- t | tojson(indent=4) }}{{- "\\n\\n" }}{%- endfor %}
{%- endif %}
{{- system_message }}{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}{{- '"parameters": ' }}{{- tool_call.arguments | tojson }}{{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}{{- message.content | tojson }}
        {%- else %}{{- message.content }}{%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}""",
    "chatml-qwen-tools": """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}
    {{- "\\n\\n# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- elif messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\\n' }}{%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}""",
    "mistral": (
        "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role']"
        " == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and "
        "assistant roles are supported!') }}{% endif %}{% endfor %}"
    ),
    "gemma": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
        "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
    ),
    "gemma3": """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}{%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}{%- set first_user_prefix = "" -%}{%- set loop_messages = messages -%}{%- endif -%}
{%- for message in loop_messages -%}
    {%- set role = "model" if message['role'] == 'assistant' else message['role'] -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}{{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}
        {%- endfor -%}
    {%- else -%}{{ raise_exception("Invalid content type") }}{%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{'<start_of_turn>model\\n'}}{%- endif -%}""",
    "zephyr": (
        "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
        "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}"
        "\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
        "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
    ),
    "deepseek-namespace": """{%- set ns = namespace(found=false, system_prompt='', is_first=true, is_tool=false) -%}
{%- for message in messages -%}{%- if message['role'] == 'system' -%}{%- set ns.system_prompt = message['content'] -%}{%- endif -%}{%- endfor -%}
{{ bos_token }}{{ ns.system_prompt }}
{%- for message in messages -%}
  {%- if message['role'] == 'user' -%}{%- set ns.is_tool = false -%}{{ '<｜User｜>' + message['content'] }}
  {%- elif message['role'] == 'assistant' and message['content'] is not none -%}
    {%- set content = message['content'] -%}
    {%- if '</think>' in content -%}{%- set content = content.split('</think>')[-1] -%}{%- endif -%}
    {{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}
  {%- endif -%}
  {%- if loop.last and message['role'] == 'user' -%}{% break %}{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt and not ns.is_tool -%}{{ '<｜Assistant｜><think>\\n' }}{%- endif -%}""",
    "hermes-macro": """{%- macro json_to_python_type(json_spec) %}
{%- set basic_type_map = {"string": "str", "number": "float", "integer": "int", "boolean": "bool"} %}
{%- if basic_type_map[json_spec.type] is defined %}{{- basic_type_map[json_spec.type] }}
{%- elif json_spec.type == "array" %}{{- "list[" +  json_to_python_type(json_spec|items) + "]"}}
{%- elif json_spec.type == "object" %}
    {%- if json_spec.additionalProperties is defined %}
        {{- "dict[str, " + json_to_python_type(json_spec.additionalProperties) + ']'}}
    {%- else %}{{- "dict" }}{%- endif %}
{%- elif json_spec.type is iterable %}
    {{- "Union[" }}{%- for t in json_spec.type %}{{- json_to_python_type({"type": t}) }}{%- if not loop.last %}{{- "," }}{%- endif %}{%- endfor %}{{- "]" }}
{%- else %}{{- "Any" }}{%- endif %}
{%- endmacro %}
{{- bos_token }}{{- '<|im_start|>system\nYou may call functions: <tools> ' }}
{%- for tool in tools %}
    {%- if tool.function is defined %}{%- set tool = tool.function %}{%- endif %}
    {{- '{"name": "' + tool.name + '", "description": "' + tool.name + '(' }}
    {%- for param_name, param_fields in tool.parameters.properties|items %}
        {{- param_name + ": " + json_to_python_type(param_fields) }}{%- if not loop.last %}{{- ", " }}{%- endif %}
    {%- endfor %}
    {{- ")" }}{%- if tool.return is defined %}{{- " -> " + json_to_python_type(tool.return) }}{%- endif %}
    {{- '", "parameters": ' }}{{- tool.parameters|tojson }}{{- "}" }}
{%- endfor %}
{%- set ns = namespace(turn=0) %}
{%- for message in messages %}
    {%- set ns.turn = ns.turn + 1 %}
    {%- if message.role == "tool" and loop.previtem and loop.previtem.role != "tool" %}{{- '<|im_start|>tool\n' }}{%- endif %}
    {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- if ns.turn > 1 and messages[ns.turn - 2].role == "user" %}{{- '' }}{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}""",
    "smol-generation": """{%- for message in messages -%}
{%- if message.role == 'assistant' -%}{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message.content | trim }}{% endgeneration %}{{ '<|im_end|>\\n' }}
{%- else -%}{{ '<|im_start|>' ~ message.role ~ '\\n' ~ message.content ~ '<|im_end|>\\n' }}{%- endif -%}
{%- endfor -%}
{%- for tool in tools | default([]) -%}{{ tool.function.name }}{{ tool.function.parameters.properties | dictsort | map(attribute=0) | join(', ') }}
{%- for name, spec in tool.function.parameters.properties | items -%}{{ name }}: {{ tool.function.parameters.properties[name]['type'] }}{%- endfor -%}
{%- endfor -%}
{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | join('\\n') }}""",
}

# Public SSTI payloads: the CVE-2024-34359 proof of concept, PayloadsAllTheThings' Jinja2 section and the usual
# filter bypasses (hex escapes, |attr, join, format, dict keys, reversed strings, set/for/macro indirection).
PAYLOADS = {
    "cve-2024-34359": CVE_2024_34359,
    "self-context": "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.popen('id').read() }}",
    "cycler": "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "joiner": "{{ joiner.__init__.__globals__.os.popen('id').read() }}",
    "lipsum": "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "namespace": "{{ namespace.__init__.__globals__.os.popen('id').read() }}",
    "mro-subclasses": "{{ ''.__class__.__mro__[1].__subclasses__()[396]('id',shell=True,stdout=-1).communicate() }}",
    "mro-method": "{{ x.mro() }}",
    "config": "{{ config.from_pyfile('/tmp/evil.cfg') }}",
    "url_for": "{{ url_for.__globals__['current_app'].config }}",
    "hex-items": "{{ request['application']['\\x5f\\x5fglobals\\x5f\\x5f']['\\x5f\\x5fbuiltins\\x5f\\x5f']"
    "['\\x5f\\x5fimport\\x5f\\x5f']('os')['popen']('id')['read']() }}",
    "unicode-item": "{{ ()['\\u005f\\u005fclass\\u005f\\u005f'] }}",
    "attr-hex": "{{ ()|attr('\\x5f\\x5fclass\\x5f\\x5f')|attr('\\x5f\\x5fbase\\x5f\\x5f') }}",
    "attr-join": '{{ ()|attr(["_"*2, "class", "_"*2]|join) }}',
    "attr-printf": '{{ ()|attr("%c%cclass%c%c"|format(95,95,95,95)) }}',
    "attr-dict-keys": "{{ ()|attr(dict(__cla=1, ss__=2)|join) }}",
    "attr-reverse": '{{ ()|attr("__ssalc__"|reverse) }}',
    "attr-computed": "{{ ()|attr(request.args.c) }}",
    "set-concat": '{% set a = "__cla" %}{% set b = "ss__" %}{{ ()[a ~ b] }}',
    "with-mul": '{% with u = "_" * 2 %}{{ ()[u ~ "class" ~ u] }}{% endwith %}',
    "mined-underscore": '{% set u = (()|select|string)[24] %}{{ ()[u ~ u ~ "class" ~ u ~ u] }}',
    "format-method": '{{ "{0.__class__.__base__.__subclasses__}".format(()) }}',
    "format-method-computed": "{{ (x ~ y).format(()) }}",
    "format-fold": '{{ ()["{}{}class{}{}".format("_", "_", "_", "_")] }}',
    "map-attr": '{{ messages|map("attr", "__class__")|list }}',
    "map-attribute": '{{ messages|map(attribute="__class__.__base__")|list }}',
    "selectattr": '{{ messages|selectattr("__class__")|list }}',
    "macro-arg": '{% macro g(o, n) %}{{ o[n] }}{% endmacro %}{{ g((), "__cl" ~ "ass__") }}',
    "macro-default": '{% macro g(o, n="_" ~ "_class__") %}{{ o[n] }}{% endmacro %}{{ g(()) }}',
    "namespace-attr": '{% set ns = namespace(n="__cla" ~ "ss__") %}{{ ()[ns.n] }}',
    "namespace-set": '{% set ns = namespace() %}{% set ns.n = "__cla" ~ "ss__" %}{{ ()[ns.n] }}',
    "for-list": '{% for n in ["__cla" ~ "ss__"] %}{{ ()[n] }}{% endfor %}',
    "block-set": "{% set n %}__class__{% endset %}{{ ()[n] }}",
    "block-set-computed": "{% set n %}{{ u }}{{ u }}class{% endset %}{{ ()[n] }}",
    "slice": '{{ ()["x__class__"[1:]] }}',
    "replace": '{{ ()["..class..".replace(".", "_")] }}',
    "builtins-name": "{{ __builtins__ }}",
    "alias-chain": '{% set a0 = "__cla" ~ "ss__" %}'
    + "".join(f"{{% set a{i} = a{i - 1} %}}" for i in range(1, 200))
    + "{{ x[a199] }}",
    "cycle": "{% set b = a %}{% set a = b %}{% set a = dict(__class__=1)|first %}{{ x[b] }}",
    "tuple-unpack": '{% set a, b = ("__cla" ~ "ss__", 1) %}{{ x[a] }}',
    "for-pairs": '{% for k, v in [("__cla" ~ "ss__", 1)] %}{{ x[k] }}{% endfor %}',
    "cond-expr": '{{ x["__cla" ~ "ss__" if y else "role"] }}',
    "frame": "{{ (x|select).gi_frame.f_globals }}",
}


@pytest.mark.parametrize("name", sorted(REAL_TEMPLATES))
def test_real_templates_are_clean(name: str) -> None:
    ctx = make_ctx()
    check_template(REAL_TEMPLATES[name], ctx, "t")
    assert ctx.findings == []


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_ssti_payloads_are_caught(name: str) -> None:
    ctx = make_ctx()
    started = time.perf_counter()
    check_template(PAYLOADS[name], ctx, "metadata[tokenizer.chat_template]")
    assert time.perf_counter() - started < 2
    assert rules(ctx.findings) == {"AISEC-SC-502"}
    assert all(f.severity is Severity.CRITICAL for f in ctx.findings)
    assert all(f.message.startswith("metadata[tokenizer.chat_template]: line ") for f in ctx.findings)


def test_template_includes_and_parse_errors() -> None:
    ctx = make_ctx()
    check_template("{% include '/etc/passwd' %}{% import 'x' as y %}", ctx, "t")
    assert rules(ctx.findings) == {"AISEC-SC-502"} and {f.severity for f in ctx.findings} == {Severity.HIGH}
    for broken in (
        "{% for x in y %}",
        "{{ x ",
        "{% debug %}",
        "{{ " + "(" * 50_000 + "1" + ")" * 50_000 + " }}",
    ):
        ctx = make_ctx()
        check_template(broken, ctx, "t")
        assert rules(ctx.findings) == {"AISEC-SC-503"}, broken[:20]


def test_template_folding_is_bounded() -> None:
    ctx = make_ctx()
    started = time.perf_counter()
    hostile = ('{% set a = "x" * 4096 %}{% set a = a ~ a %}{% set b = a * 4096 %}{% set c = "%999999999s"|format(1) %}'
               '{{ "a".zfill(10**9) }}{{ x[a ~ b ~ c] }}{% set s = s ~ "_" %}{{ d[s] }}')  # fmt: skip
    check_template(hostile, ctx, "t")
    assert time.perf_counter() - started < 2
    assert rules(ctx.findings) <= {"AISEC-SC-502"}

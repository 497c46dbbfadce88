"""Fuzzed requests against the guard: malformed JSON, huge numbers, deep nesting, wrong types, NaN and infinity
literals, batches up to and past the size limits, wrong shapes, unicode, bad, duplicate and oversized
Authorization headers (and, over HTTP, wrong methods, paths and content types, chunked bodies). The guard must
never answer 5xx, must answer every well-formed request and refuse every ill-formed one, must audit every
request, and its model must never see a batch that is not float32 of the spec's shape, finite and inside the
bounds: a wrapper around the guard's model call and a forward pre-hook on the torch module (which the input
detectors call too) check every batch.

The cases come from a seeded generator (`fuzz_cases`), which bench/guard.py runs at 10,000 cases over HTTP.
"""

from __future__ import annotations

import http.client
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np
import torch
from guard_setup import serving, write_guard

from aisec.core.seeding import build_model
from aisec.defend.auditability.audit_log.keys import load_verifying_key
from aisec.defend.auditability.audit_log.log import AuditLog
from aisec.defend.auditability.audit_log.verify import verify_log
from aisec.demo.models import digits_cnn
from aisec.guard.app import create_app
from aisec.guard.config import load_config
from aisec.guard.model import Answer
from aisec.guard.pipeline import Guard
from aisec.guard.service import build_guard

Expect = Literal["answer", "refuse", "any"]  # 200; a 4xx (or 3xx); either


@dataclass(frozen=True)
class Case:
    """One fuzzed request: what it tries (`kind`), its Authorization header values (none, one or several; raw
    bytes), body, and over HTTP its method, path, content type and whether the body is sent chunked; `expect`
    is what the guard must do with it."""

    kind: str
    authorization: tuple[bytes, ...]
    body: bytes
    expect: Expect
    method: str = "POST"
    path: str = "/v1/predict"
    content_type: bytes | None = b"application/json"
    chunked: bool = False

    def header(self) -> str | None:
        """The Authorization header the service reads (the first, decoded as Latin-1 as Starlette does)."""
        return self.authorization[0].decode("latin-1") if self.authorization else None


@dataclass(frozen=True)
class Limits:
    """What the fuzzed guard is configured with: the sample shape, the bounds and the request size limits."""

    shape: tuple[int, ...]
    lower: float
    upper: float
    max_rows: int
    max_body_bytes: int


def _number(rng: np.random.Generator, limits: Limits) -> str:
    """A number inside the bounds, written in one of JSON's ways."""
    value = float(rng.uniform(limits.lower, limits.upper))
    form = rng.integers(6)
    if form == 0:
        return str(int(rng.integers(int(np.ceil(limits.lower)), int(np.floor(limits.upper)) + 1)))
    if form == 1:
        return f"{value:.3e}"
    if form == 2:
        return repr(value)
    if form == 3:
        return f"{value:.2f}"
    if form == 4:
        return str(rng.choice([limits.lower, limits.upper]))
    return f"{value:.4f}"


def _row(rng: np.random.Generator, limits: Limits, shape: tuple[int, ...] | None = None) -> str:
    """One row as JSON text: of `shape` (default: the sample shape or its flat form, at random)."""
    if shape is None:
        shape = limits.shape if rng.random() < 0.5 else (int(np.prod(limits.shape)),)
    if not shape:
        return _number(rng, limits)
    return "[" + ",".join(_row(rng, limits, shape[1:]) for _ in range(shape[0])) + "]"


def _batch(rng: np.random.Generator, limits: Limits, rows: int | None = None) -> str:
    """A well-formed batch of `rows` rows (default 1 to 4), all flat or all of the sample shape."""
    rows = int(rng.integers(1, 5)) if rows is None else rows
    shape = limits.shape if rng.random() < 0.5 else (int(np.prod(limits.shape)),)
    return "[" + ",".join(_row(rng, limits, shape) for _ in range(rows)) + "]"


def _wrap(inputs: str) -> bytes:
    return ('{"inputs":' + inputs + "}").encode()


def _with_token(text: str, token: str, rng: np.random.Generator) -> str:
    """`text` with one of its numbers replaced by `token` (a literal, a value or a nested thing)."""
    spots = [i for i, c in enumerate(text) if c.isdigit() and (i == 0 or text[i - 1] in "[,")]
    at = spots[int(rng.integers(len(spots)))]
    end = at
    while end < len(text) and text[end] not in ",]":
        end += 1
    return text[:at] + token + text[end:]


BAD_VALUES = [
    "NaN", "Infinity", "-Infinity", "1e309", "-1e400", "1e308", "-1e308", "2", "-1", "1.001", "-0.001",
    "1.0000001", "1.0000009", "-0.0000009", '"0.5"', "true", "false", "null", "{}", "[]", '{"x":1}',
    '"\\u0030.5"', '"\\ud800"', '"\u00bd"', "1" * 40, "-" + "9" * 400, "1" * 5000, "0x1", "+1", ".5", "01",
    "1.", "1e", "--1", "\u0661", "-0.0", "1e-400", "5e-324",
]  # fmt: skip
INSIDE = ("-0.0", "1e-400", "5e-324")  # zero, or as good as: answered
NEAR = ("1.0000001", "1.0000009", "-0.0000009")  # within the guard's 1e-6 of a bound: it may answer


def _bodies(rng: np.random.Generator, limits: Limits) -> tuple[str, bytes, Expect]:
    """A body, what it tries, and whether the guard must answer it (given a valid key)."""
    kind = str(
        rng.choice(
            [
                "valid", "valid", "valid", "limit-rows", "too-many-rows", "limit-bytes", "too-many-bytes",
                "bad-value", "bad-value", "wrong-shape", "wrong-shape", "ragged", "deep", "not-json",
                "truncated", "flipped", "wrong-type", "unicode", "duplicate-key", "extra-field", "encoding", "giant",
            ]
        )
    )  # fmt: skip
    width = int(np.prod(limits.shape))
    if kind == "valid":
        return kind, _wrap(_batch(rng, limits)), "answer"
    if kind in ("limit-rows", "too-many-rows"):
        rows = limits.max_rows + (kind == "too-many-rows")
        body = _wrap("[" + ",".join("[" + ",".join(["0"] * width) + "]" for _ in range(rows)) + "]")
        return kind, body, "answer" if rows <= limits.max_rows else "refuse"
    if kind in ("limit-bytes", "too-many-bytes"):
        body = _wrap(_batch(rng, limits, 1))
        size = limits.max_body_bytes + (kind == "too-many-bytes")
        return (
            kind,
            body[:-1] + b" " * (size - len(body)) + b"}",
            "answer" if size <= limits.max_body_bytes else "refuse",
        )
    if kind == "giant":  # as many numbers as the body may hold, as rows or as one long row
        count = (limits.max_body_bytes - 16) // 2
        inputs = (
            "[" + ",".join(["0"] * count) + "]"
            if rng.random() < 0.5
            else "[" + ",".join(["[0]"] * (count // 2)) + "]"
        )
        return kind, _wrap(inputs), "refuse"
    if kind == "bad-value":
        value = str(rng.choice(BAD_VALUES))
        expect: Expect = "answer" if value in INSIDE else "any" if value in NEAR else "refuse"
        return f"bad-value {value[:12]}", _wrap(_with_token(_batch(rng, limits), value, rng)), expect
    if kind == "wrong-shape":
        shapes = [(width - 1,), (width + 1,), (0,), (), (*limits.shape[:-1], limits.shape[-1] - 1), (1, *limits.shape),
                  (*limits.shape, 1), limits.shape[1:] or (width, 1), (2, width)]  # fmt: skip
        shape = shapes[int(rng.integers(len(shapes)))]
        count = int(rng.integers(1, 4))
        inputs = "[" + ",".join(_row(rng, limits, tuple(shape)) for _ in range(count)) + "]"
        return f"wrong-shape {list(shape)}", _wrap(inputs), "refuse"
    if kind == "ragged":
        parts = [_row(rng, limits), _row(rng, limits, (width - 1,)), _number(rng, limits), "[]"]
        picked = [parts[0], parts[int(rng.integers(1, len(parts)))]]
        return kind, _wrap("[" + ",".join(picked) + "]"), "refuse"
    if kind == "deep":
        depth = int(rng.choice([5, 40, 100, 1000, 100_000]))
        inner = "[" * depth + "0.5" + "]" * depth
        if rng.random() < 0.3:
            inner = inner[: len(inner) // 2]  # unterminated
        return f"deep {depth}", _wrap(inner) if rng.random() < 0.5 else inner.encode(), "refuse"
    if kind == "not-json":
        garbage = [b"", b" ", b"null", b"[]", b"{}", b"0", b'"inputs"', b"{'inputs': [[0]]}", b'{"inputs": [[0],]}',
                   b'{"inputs": [[0]]} trailing', b"\xff\xfe\xfd",
                   b'{"inputs": /* c */ []}', b'{"inputs": [[0]]', b'{"inputs" [[0]]}', bytes(rng.integers(0, 256, 64, dtype=np.uint8))]  # fmt: skip
        return "not-json", garbage[int(rng.integers(len(garbage)))], "refuse"
    if kind == "truncated":
        body = _wrap(_batch(rng, limits))
        return kind, body[: int(rng.integers(0, len(body)))], "refuse"
    if kind == "flipped":
        flipped = bytearray(_wrap(_batch(rng, limits)))
        for _ in range(int(rng.integers(1, 4))):
            flipped[int(rng.integers(len(flipped)))] = int(rng.integers(256))
        return kind, bytes(flipped), "any"  # a flip may leave a valid body
    if kind == "wrong-type":
        inputs = str(rng.choice(['"abc"', "5", "null", "true", "{}", '{"0": [0]}', "[[[[]]]]", "[null]", '["0.5"]',
                                 "[[true]]", "[]", "[[]]", "[{}]"]))  # fmt: skip
        return f"wrong-type {inputs}", _wrap(inputs), "refuse"
    if kind == "unicode":
        texts: list[tuple[str, Expect]] = [
            ('{"\\u0069nputs":' + _batch(rng, limits) + "}", "answer"),  # an escaped "inputs" is "inputs"
            ('{"inputs":' + _batch(rng, limits) + ',"\U0001f600":1}', "refuse"),
            ('{"inpüts":' + _batch(rng, limits) + "}", "refuse"),
            ('{"inputs":' + _batch(rng, limits) + ',"\\ud800":1}', "refuse"),
            ('{"inputs":[["\uff10.5"]]}', "refuse"),
            ('{"\u202einputs":' + _batch(rng, limits) + "}", "refuse"),
        ]
        text, expect = texts[int(rng.integers(len(texts)))]
        return kind, text.encode("utf-8", "surrogatepass"), expect
    if kind == "duplicate-key":  # JSON parsers keep the last
        good, bad = _batch(rng, limits), '"x"'
        first, last = (bad, good) if rng.random() < 0.5 else (good, bad)
        return (
            kind,
            ('{"inputs":' + first + ',"inputs":' + last + "}").encode(),
            "answer" if last == good else "refuse",
        )
    if kind == "extra-field":
        return kind, ('{"inputs":' + _batch(rng, limits) + ',"top_k":10}').encode(), "refuse"
    encoded = json.dumps({"inputs": json.loads(_batch(rng, limits))})
    encoding = str(rng.choice(["utf-8-sig", "utf-16", "utf-32", "utf-16-le", "latin-1"]))
    return (
        f"encoding {encoding}",
        encoded.encode(encoding),
        "answer",
    )  # json.loads reads them all (RFC 8259 8.1)


def _authorizations(rng: np.random.Generator, token: str) -> tuple[str, tuple[bytes, ...], bool | None]:
    """Authorization header values, what they try, and whether they authenticate (None: either)."""
    good = f"Bearer {token}".encode()
    if rng.random() < 0.7:
        return "key", (good,), True
    flipped = bytearray(token.encode())
    flipped[-1 - int(rng.integers(10))] ^= 1
    other = "aisec_0123456789ab_" + "A" * 43
    choices: list[tuple[str, tuple[bytes, ...], bool | None]] = [
        ("no header", (), False),
        ("empty", (b"",), False),
        ("scheme only", (b"Bearer",), False),
        ("scheme and space", (b"Bearer ",), False),
        ("lower-case scheme", (f"bearer {token}".encode(),), None),
        ("spaces", (f"  Bearer   {token}  ".encode(),), None),
        ("basic", (b"Basic YWxpY2U6c2VjcmV0",), False),
        ("token alone", (token.encode(),), False),
        ("flipped secret", (b"Bearer " + bytes(flipped),), False),
        ("truncated", (good[:-5],), False),
        ("longer", (good + b"x",), False),
        ("unknown key", (f"Bearer {other}".encode(),), False),
        ("oversized 300", (good + b"A" * 300,), False),
        ("oversized 8k", (b"Bearer " + b"A" * 8192,), False),
        ("oversized 64k", (good + b"A" * 65536,), False),
        ("latin-1", (good[:-1] + b"\xe9",), False),
        ("high bytes", (b"Bearer \xff\xfe" + token.encode()[2:],), False),
        ("utf-8 emoji", ("Bearer \U0001f511".encode(),), False),
        ("duplicate good first", (good, b"Bearer nope"), None),
        ("duplicate bad first", (b"Bearer nope", good), None),
        ("duplicate good twice", (good, good), None),
    ]
    return choices[int(rng.integers(len(choices)))]


def fuzz_cases(seed: int, count: int, token: str, limits: Limits, *, http: bool = False) -> list[Case]:
    """`count` fuzzed requests drawn from a generator seeded `seed`; with `http`, also wrong methods, paths,
    content types and chunked bodies."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(count):
        body_kind, body, body_expect = _bodies(rng, limits)
        auth_kind, authorization, authenticates = _authorizations(rng, token)
        if authenticates is False:
            expect: Expect = "refuse"
        elif authenticates is None:
            expect = "refuse" if body_expect == "refuse" else "any"
        else:
            expect = body_expect
        case = Case(f"{body_kind} / {auth_kind}", authorization, body, expect)
        if http and rng.random() < 0.25:
            case = _over_http(rng, case)
        cases.append(case)
    return cases


def _over_http(rng: np.random.Generator, case: Case) -> Case:
    """A variation only HTTP has: the method, the path, the content type, a chunked body."""
    what = int(rng.integers(4))
    if what == 0:
        method = str(rng.choice(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "FOO"]))
        return Case(f"{case.kind} / {method}", case.authorization, case.body, "refuse", method=method)
    if what == 1:
        # A fragment has no place in a request line (RFC 9112, 3.2): httptools, the parser the guard extra installs,
        # drops it and the request is routed as sent; h11 would keep it in the path and answer 404.
        path, expect = [
            ("/v1/predict/", "refuse"), ("/v1/Predict", "refuse"), ("/v1/predict?inputs=1", case.expect),
            ("/v1/predict#x", case.expect), ("/v1/%70redict", "any"), ("/v1/predict/..", "refuse"),
        ][int(rng.integers(6))]  # fmt: skip
        return Case(f"{case.kind} / {path}", case.authorization, case.body, expect, path=path)  # type: ignore[arg-type]
    if what == 2:
        content_type = [None, b"text/plain", b"application/x-www-form-urlencoded", b"multipart/form-data; boundary=x",
                        b"application/json; charset=latin-1", b"\xff"][int(rng.integers(6))]  # fmt: skip
        return Case(
            f"{case.kind} / type {content_type!r}",
            case.authorization,
            case.body,
            case.expect,
            content_type=content_type,
        )
    return Case(f"{case.kind} / chunked", case.authorization, case.body, case.expect, chunked=True)


@dataclass
class CheckedModel:
    """Counts the guard's model calls and records every batch that is not float32 (n, *shape) with 1 <= n <=
    max_rows, finite and inside [lower, upper]; installed over `guard.model.answer`, and as a forward pre-hook
    on the torch module (every forward pass, the input detectors' included)."""

    limits: Limits
    calls: int = 0
    forwards: int = 0
    violations: list[str] = field(default_factory=list)

    def install(self, guard: Guard) -> None:
        answer: Callable[[np.ndarray], Answer] = guard.model.answer

        def checked(x: np.ndarray) -> Answer:
            self.calls += 1
            self._check(x, "answer")
            return answer(x)

        guard.model.answer = checked  # type: ignore[method-assign]
        module = guard.model.module()
        if module is not None:
            module.register_forward_pre_hook(self._hook)

    def _hook(self, module: torch.nn.Module, inputs: tuple[Any, ...]) -> None:
        self.forwards += 1
        self._check(inputs[0].detach().cpu().numpy(), "forward")

    def _check(self, x: Any, where: str) -> None:
        n = len(x) if hasattr(x, "__len__") else 0
        most = self.limits.max_rows if where == "answer" else None  # a detector may stack variants of a batch
        if not isinstance(x, np.ndarray) or x.dtype != np.float32:
            self.violations.append(f"{where}: {type(x).__name__} {getattr(x, 'dtype', '')}")
        elif x.shape[1:] != self.limits.shape or n < 1 or (most is not None and n > most):
            self.violations.append(f"{where}: shape {x.shape}")
        elif not np.isfinite(x).all():
            self.violations.append(f"{where}: non-finite values")
        elif x.min() < self.limits.lower or x.max() > self.limits.upper:
            self.violations.append(f"{where}: values in [{x.min()!r}, {x.max()!r}]")


def fuzz_guard(
    folder: Path, digits: Any, *, max_rows: int = 64, max_body_bytes: int = 65_536
) -> tuple[Guard, str, Limits]:
    """A guard over the digits CNN (untrained: what it answers does not matter here) with everything on: limits
    too high to bite, input detectors and the OOD score (flagging), monitors (logging), output hardening and
    an audit log; its key's token and its limits."""
    path, tokens = write_guard(
        folder,
        build_model(digits_cnn, 0),
        digits,
        limits={
            "requests_per_second": 100_000, "burst": 100_000, "rows_per_day": 10**12,
            "max_rows_per_request": max_rows, "max_body_bytes": max_body_bytes,
        },
        screening={"reference": "natural.npz", "input_detectors": ["feature_squeezing"], "ood": True, "action": "flag"},
        monitor={"reference": "natural.npz", "prada": {}, "stateful": {}, "coverage": {}, "first_action": "log", "action": "log"},
    )  # fmt: skip
    limits = Limits((1, 8, 8), 0.0, 1.0, max_rows, max_body_bytes)
    return build_guard(load_config(path)), tokens["default"], limits


def send(connection: http.client.HTTPConnection, case: Case) -> int:
    """Send a case on a keep-alive connection; its status, or 0 when the server closed it without one."""
    try:
        connection.putrequest(case.method, case.path, skip_accept_encoding=True)
        for value in case.authorization:
            connection.putheader("Authorization", value)
        if case.content_type is not None:
            connection.putheader("Content-Type", case.content_type)
        if case.chunked:
            connection.putheader("Transfer-Encoding", "chunked")
            chunks = [case.body[i : i + 997] for i in range(0, len(case.body), 997)]
            connection.endheaders(iter(chunks), encode_chunked=True)
        else:
            connection.putheader("Content-Length", str(len(case.body)))
            connection.endheaders(case.body)
        response = connection.getresponse()
        response.read()
        if response.will_close:
            connection.close()
        return response.status
    except (OSError, http.client.HTTPException):
        connection.close()
        return 0


def judge(cases: list[Case], statuses: list[int]) -> list[str]:
    """The cases the guard got wrong: a 5xx or no answer, an ill-formed request answered, a well-formed one
    refused."""
    wrong = []
    for case, status in zip(cases, statuses, strict=True):
        if status >= 500 or status == 0:
            wrong.append(f"{status}: {case.kind}")
        elif case.expect == "answer" and status != 200:
            wrong.append(f"refused with {status}: {case.kind}")
        elif case.expect == "refuse" and status == 200:
            wrong.append(f"answered: {case.kind}")
    return wrong


def reaches_guard(case: Case, status: int) -> bool:
    """Whether a request sent over HTTP reached the guard's steps (and so its audit log): a POST that neither
    uvicorn's parser (an unknown method) nor Starlette's router (another path: 404, or 307 to the path without
    its trailing slash; another method: 405) answered."""
    return case.method == "POST" and status not in (307, 404)


def over_http(url: str, cases: list[Case]) -> list[int]:
    """Each case's status, sent in order over one keep-alive connection (reopened after the server closes it)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        return [send(connection, case) for case in cases]
    finally:
        connection.close()


def _audited(folder: Path) -> tuple[Counter[int], bool]:
    with AuditLog.open(folder / "audit.db") as log:
        from aisec.defend.auditability.audit_log.entry import decode_entry

        statuses = Counter(decode_entry(bytes(e.content))["status"] for e in log.store.entries(0, log.size))
    verified = verify_log(folder / "audit.db", public_key=load_verifying_key(folder / "audit.pub"))
    return statuses, verified.ok


def test_fuzzed_requests_in_process(tmp_path, digits):
    guard, token, limits = fuzz_guard(tmp_path, digits)
    checked = CheckedModel(limits)
    checked.install(guard)
    cases = fuzz_cases(0, 2_000, token, limits)
    statuses = [guard.predict(case.header(), case.body).status for case in cases]
    guard.close()
    assert judge(cases, statuses) == []
    assert checked.violations == []
    assert checked.calls == statuses.count(200) > 400  # the model answered every 200, and only those
    assert {"answer", "refuse", "any"} == {c.expect for c in cases}
    audited, verified = _audited(tmp_path)
    assert audited == Counter(statuses) and verified  # every request, whatever its fate, in the log


def test_fuzzed_requests_over_http(tmp_path, digits):
    guard, token, limits = fuzz_guard(tmp_path, digits)
    checked = CheckedModel(limits)
    checked.install(guard)
    cases = fuzz_cases(1, 400, token, limits, http=True)
    with serving(create_app(guard)) as url:
        statuses = over_http(url, cases)
    assert judge(cases, statuses) == []
    assert checked.violations == []
    assert checked.calls == statuses.count(200) > 50
    routed = Counter(s for c, s in zip(cases, statuses, strict=True) if reaches_guard(c, s))
    audited, verified = _audited(tmp_path)
    assert audited == routed and verified

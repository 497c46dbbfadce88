"""Jinja2 chat templates, checked without rendering them.

Model files carry chat templates (GGUF `tokenizer.chat_template`, `chat_template` in tokenizer_config.json)
that inference servers render with Jinja2. Rendered outside `SandboxedEnvironment` a template runs Python:
the proof of concept of CVE-2024-34359 (llama-cpp-python, GHSA-56xg-wfcc-g829) was a GGUF whose template
walked `().__class__.__base__.__subclasses__()` to `os.popen`; SGLang repeated the flaw (CVE-2026-5760).
The template is parsed (never rendered) and its syntax tree walked for what the sandbox
refuses (`jinja2.sandbox.is_internal_attribute`): an attribute or item whose name starts with `_` or is a
frame/generator internal (`mro`, `gi_frame`, ...). Names are folded from constants (`~`, `+`, `*`, `%`,
`|join`, `|format`, `|replace`, `|reverse`, `.format()`, slicing, `dict(...)` keys) and through `set`,
`for`, `with`, namespace attributes and macro arguments; an item name built from strings the scanner cannot
fold, `|attr`/`map(attribute=...)`/`selectattr` with a computed name, `str.format` on a computed string or
with `{0.attr}` fields, SSTI gadget globals (`cycler`, `joiner`, `lipsum`, `self`, `config`, `request`, ...)
and dunder string constants are AISEC-SC-502; including or importing other templates is too (high). A
template that does not parse is AISEC-SC-503. `namespace`, `range`, `loop`, `raise_exception` and
`strftime_now`, which ordinary Hugging Face templates use, are fine.
"""

from __future__ import annotations

import itertools
import math
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.parser import Parser

from aisec.core.severity import Severity
from aisec.defend.supply_chain.context import LimitExceeded, ScanContext

# What jinja2.sandbox refuses besides names starting with "_" (is_internal_attribute), and frame fields.
UNSAFE_NAMES = frozenset({"mro", "gi_frame", "gi_code", "cr_frame", "cr_code", "ag_code", "ag_frame", "f_globals",
                          "f_builtins", "f_locals", "f_back", "tb_frame", "func_globals"})  # fmt: skip
# Globals of Jinja2 and Flask that public SSTI payloads start from; chat templates never use them.
GADGETS = frozenset({"cycler", "joiner", "lipsum", "self", "config", "request", "url_for", "get_flashed_messages",
                     "os"})  # fmt: skip
# Filters that read an attribute named by an argument: (position of that argument, keyword) (jinja2.filters).
_ATTRIBUTE_FILTERS = {"selectattr": (0, None), "rejectattr": (0, None), "map": (None, "attribute"),
                      "sort": (2, "attribute"), "groupby": (0, "attribute"), "sum": (0, "attribute"),
                      "unique": (1, "attribute"), "min": (1, "attribute"), "max": (1, "attribute"),
                      "join": (1, "attribute"), "attr": (0, None)}  # fmt: skip
# Filters and str methods whose result is a string built from their input.
_STRING_FILTERS = frozenset({"join", "format", "replace", "reverse", "lower", "upper", "string", "trim", "title",
                             "capitalize", "center", "indent", "striptags", "truncate", "urlencode", "wordwrap",
                             "safe", "e", "escape", "forceescape", "urlize", "wordcount"})  # fmt: skip
_STRING_METHODS = frozenset({"join", "format", "format_map", "replace", "lower", "upper", "strip", "lstrip", "rstrip",
                             "title", "capitalize", "casefold", "swapcase", "split", "removeprefix", "removesuffix",
                             "zfill", "ljust", "rjust", "center", "expandtabs"})  # fmt: skip
_DUNDER = re.compile(r"__\w+__")
_PRINTF_WIDTH = re.compile(r"%[^a-zA-Z%]*[0-9*]")
_MAX_CANDIDATES = 32  # values one expression may fold to; beyond, the rest count as unknown
_MAX_STRING = 4096
_MAX_FOLD_DEPTH = 64
_MAX_REPORTED = 20


class _Generation(Extension):
    """transformers' `{% generation %}...{% endgeneration %}` tag (AssistantTracker): parsed to its body."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


# The extensions chat-template renderers enable (transformers: loopcontrols and generation; `do` is common).
_ENV = jinja2.Environment(extensions=["jinja2.ext.loopcontrols", "jinja2.ext.do", _Generation])


@dataclass(frozen=True)
class _Val:
    """What the scanner knows of an expression: values it can take, whether those are all of them
    (`complete`), and whether it is a string built at render time from pieces (`built`: then an unknown
    value may be any name, `__class__` included)."""

    values: tuple[object, ...] = ()
    complete: bool = False
    built: bool = False


_UNKNOWN = _Val()
_NONE = _Val((None,), True)
_TOO_DEEP = _Val((), False, True)  # past the folding depth: assume the worst


def _known(*values: object) -> _Val:
    return _Val(values, True)


def check_template(source: str, ctx: ScanContext, where: str) -> None:
    """Parse `source` as a Jinja2 template and report what would reach Python internals when rendered."""
    if len(source) > ctx.limits.max_header_bytes:
        raise LimitExceeded(f"{where}: template of {len(source)} characters exceeds the header limit")
    try:
        tree = _ENV.parse(source)
    except jinja2.TemplateSyntaxError as error:
        ctx.add("AISEC-SC-503", f"{where}: line {error.lineno}: {error.message}")
        return
    except (ValueError, OverflowError, RecursionError) as error:  # e.g. an integer literal of 10**5 digits
        ctx.add("AISEC-SC-503", f"{where}: {type(error).__name__}: {str(error)[:200]}")
        return
    issues = sorted(_Checker(tree).issues.items(), key=lambda item: item[1])
    for (message, severity), line in issues[:_MAX_REPORTED]:
        ctx.add("AISEC-SC-502", f"{where}: line {line}: {message}", severity=severity)
    if len(issues) > _MAX_REPORTED:
        ctx.add("AISEC-SC-502", f"{where}: {len(issues) - _MAX_REPORTED} more template injection patterns")


def _walk(tree: nodes.Node) -> Iterator[nodes.Node]:
    """Every node, without recursion (a parsed template can nest deeper than a recursive walk could)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.iter_child_nodes())


def _unsafe(name: object) -> bool:
    return isinstance(name, str) and (name.startswith("_") or name in UNSAFE_NAMES)


def _union(vals: list[_Val]) -> _Val:
    merged = tuple(dict.fromkeys(x for v in vals for x in v.values))
    complete = all(v.complete for v in vals) and len(merged) <= _MAX_CANDIDATES
    return _Val(merged[:_MAX_CANDIDATES], complete, any(v.built for v in vals))


def _has_str(parts: list[_Val]) -> bool:
    return any(isinstance(x, str) for p in parts for x in p.values)


_Thunk = Callable[[int], _Val]


class _Checker:
    """Folds the template's names to the values they may take, then walks it for injection patterns.

    A name's value is the union over every place that binds it (flow-insensitive), resolved on demand;
    a cycle (`{% set s = s ~ "_" %}`) contributes nothing known, so what it adds stays incomplete."""

    def __init__(self, tree: nodes.Template) -> None:
        self.issues: dict[tuple[str, Severity | None], int] = {}
        all_nodes = list(_walk(tree))
        self.macros = {n.name: n for n in all_nodes if isinstance(n, nodes.Macro)}
        self.bindings: dict[str, list[_Thunk]] = {}
        for node in all_nodes:
            for name, thunk in self._bindings(node):
                self.bindings.setdefault(name, []).append(thunk)
        self.resolved: dict[str, _Val] = {}
        self.resolving: set[str] = set()
        for node in all_nodes:
            self._check(node)

    def _issue(self, node: nodes.Node, message: str, severity: Severity | None = None) -> None:
        self.issues.setdefault((message, severity), node.lineno)

    # Bindings: where `set`, `for`, `with`, namespaces and macro calls give names their values. ------------

    def _bindings(self, node: nodes.Node) -> Iterator[tuple[str, _Thunk]]:
        if isinstance(node, nodes.Assign):
            yield from self._bind(node.target, partial(self.fold, node.node))
            call = node.node
            if (
                isinstance(call, nodes.Call)
                and isinstance(call.node, nodes.Name)
                and call.node.name == "namespace"
            ):
                if isinstance(node.target, nodes.Name):
                    for kw in call.kwargs:
                        yield f"{node.target.name}.{kw.key}", partial(self.fold, kw.value)
        elif isinstance(node, nodes.AssignBlock):
            yield from self._bind(node.target, partial(self._fold_body, node.body))
        elif isinstance(node, nodes.For):
            yield from self._bind(node.target, partial(self._fold_items, node.iter))
        elif isinstance(node, nodes.With):
            for target, value in zip(node.targets, node.values, strict=True):
                yield from self._bind(target, partial(self.fold, value))
        elif isinstance(node, nodes.Macro):
            for arg, default in zip(
                node.args[len(node.args) - len(node.defaults) :], node.defaults, strict=True
            ):
                yield arg.name, partial(self.fold, default)
        elif (
            isinstance(node, nodes.Call)
            and isinstance(node.node, nodes.Name)
            and node.node.name in self.macros
        ):
            params = self.macros[node.node.name].args
            for arg, value in zip(params, node.args, strict=False):
                yield arg.name, partial(self.fold, value)
            names = {arg.name for arg in params}
            for kw in node.kwargs:
                if kw.key in names:
                    yield kw.key, partial(self.fold, kw.value)

    def _bind(self, target: nodes.Node, thunk: _Thunk) -> Iterator[tuple[str, _Thunk]]:
        if isinstance(target, nodes.NSRef):
            yield f"{target.name}.{target.attr}", thunk
        elif isinstance(target, nodes.Name):
            yield target.name, thunk
        elif isinstance(target, nodes.Tuple):
            for i, item in enumerate(target.items):
                yield from self._bind(item, partial(_project_thunk, thunk, i))

    def _resolve(self, name: str, depth: int) -> _Val:
        """The union of every value bound to `name`, or unknown for a context variable."""
        if name in self.resolved:
            return self.resolved[name]
        if name not in self.bindings or name in self.resolving:
            return _UNKNOWN
        self.resolving.add(name)
        val = _union([thunk(depth + 1) for thunk in self.bindings[name]])
        self.resolving.discard(name)
        self.resolved[name] = val
        return val

    def _fold_body(self, body: list[nodes.Node], depth: int) -> _Val:
        """The text a `{% set x %}...{% endset %}` block assigns (built at render time unless constant)."""
        parts: list[nodes.Expr] = []
        for stmt in body:
            if not isinstance(stmt, nodes.Output):
                return _Val((), False, True)
            parts.extend(nodes.Const(n.data) if isinstance(n, nodes.TemplateData) else n for n in stmt.nodes)
        return self.fold(nodes.Concat(parts), depth)

    def _fold_items(self, node: nodes.Node, depth: int) -> _Val:
        """The values a `for` loop over `node` gives its target."""
        return _items(self.fold(node, depth))

    # Folding: the values an expression may take. --------------------------------------------------------

    def fold(self, node: nodes.Node, depth: int = 0) -> _Val:
        """The values `node` may take, as far as constants and bindings tell."""
        if depth > _MAX_FOLD_DEPTH:
            return _TOO_DEEP

        def sub(child: nodes.Node) -> _Val:
            return self.fold(child, depth + 1)

        if isinstance(node, nodes.Const):
            return _known(node.value)
        if isinstance(node, nodes.Name):
            return self._resolve(node.name, depth)
        if isinstance(node, nodes.List | nodes.Tuple):
            return _combine([sub(item) for item in node.items], lambda *xs: xs, built=False)
        if isinstance(node, nodes.Dict):  # iterated or joined, a dict gives its keys
            return _combine([sub(pair.key) for pair in node.items], lambda *xs: xs, built=False)
        if isinstance(node, nodes.Concat):
            return _combine([sub(n) for n in node.nodes], lambda *xs: "".join(map(str, xs)))
        if isinstance(node, nodes.Add | nodes.Mul | nodes.Mod):
            parts = [sub(node.left), sub(node.right)]
            return _combine(parts, _BINARY[type(node)], built=_has_str(parts))
        if isinstance(node, nodes.CondExpr):
            return _union([sub(node.expr1), sub(node.expr2) if node.expr2 is not None else _NONE])
        if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name):
            return self._resolve(f"{node.node.name}.{node.attr}", depth)
        if isinstance(node, nodes.Getitem):
            obj = sub(node.node)
            if isinstance(node.arg, nodes.Slice):
                bounds = [
                    sub(p) if p is not None else _NONE for p in (node.arg.start, node.arg.stop, node.arg.step)
                ]
                return _combine([obj, *bounds], lambda o, a, b, c: o[a:b:c], built=obj.built)
            return _combine([obj, sub(node.arg)], lambda o, i: o[i], built=obj.built)
        if isinstance(node, nodes.Filter) and node.node is not None:
            operation = _FILTERS.get(node.name)
            if operation is None or node.kwargs or node.dyn_args is not None or node.dyn_kwargs is not None:
                return _Val((), False, node.name in _STRING_FILTERS or sub(node.node).built)
            return _combine(
                [sub(node.node), *map(sub, node.args)], operation, built=node.name in _STRING_FILTERS
            )
        if isinstance(node, nodes.Call):
            return self._fold_call(node, sub)
        return _UNKNOWN

    def _fold_call(self, node: nodes.Call, sub: Callable[[nodes.Node], _Val]) -> _Val:
        callee = node.node
        if isinstance(callee, nodes.Name):
            if callee.name == "dict" and not node.args:
                return _known(tuple(kw.key for kw in node.kwargs))
            # A macro's output is text built at render time; other calls (namespace, range) give no name.
            return _Val((), False, callee.name in self.macros)
        if not isinstance(callee, nodes.Getattr) or callee.attr not in _STRING_METHODS:
            return _UNKNOWN
        if node.kwargs or node.dyn_args is not None or node.dyn_kwargs is not None:
            return _Val((), False, True)
        method = callee.attr
        return _combine(
            [sub(callee.node), *map(sub, node.args)], lambda obj, *args: _call_method(obj, method, args)
        )

    # Checks -----------------------------------------------------------------------------------------------

    def _check(self, node: nodes.Node) -> None:
        if isinstance(node, nodes.Getattr) and _unsafe(node.attr):
            self._issue(node, f"attribute {node.attr!r} reaches Python internals")
        elif isinstance(node, nodes.Getitem) and not isinstance(node.arg, nodes.Slice):
            self._check_name(node, self.fold(node.arg), "item", computed_ok=True)
        elif isinstance(node, nodes.Filter) and node.name in _ATTRIBUTE_FILTERS:
            self._check_attribute_filter(node)
        elif isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr):
            if node.node.attr in ("format", "format_map"):
                self._check_format(node, self.fold(node.node.node))
        elif isinstance(node, nodes.Name) and node.ctx == "load":
            if node.name in GADGETS or node.name.startswith("__"):
                self._issue(node, f"{node.name!r} is a known template-injection gadget")
        elif isinstance(node, nodes.Const) and isinstance(node.value, str) and _DUNDER.fullmatch(node.value):
            self._issue(node, f"string {node.value!r} names a Python internal")
        elif isinstance(node, nodes.Keyword) and _unsafe(node.key):
            self._issue(node, f"keyword argument {node.key!r} names a Python internal")
        elif isinstance(node, nodes.Include | nodes.Import | nodes.FromImport | nodes.Extends):
            self._issue(node, f"{type(node).__name__.lower()} loads another template", Severity.HIGH)

    def _check_name(self, node: nodes.Node, val: _Val, what: str, computed_ok: bool) -> None:
        """An attribute or item name: unsafe if any value it may take is; suspicious if not all its values
        are known (always for attribute names, for item names only when built from strings)."""
        for value in val.values:
            segments = value.split(".") if isinstance(value, str) and what != "item" else [value]
            bad = next((s for s in segments if _unsafe(s)), None)
            if bad is not None:
                self._issue(node, f"{what} {bad!r} reaches Python internals")
        if not val.complete and (val.built or not computed_ok):
            self._issue(node, f"{what} name computed at render time, which hides what it reaches")

    def _check_attribute_filter(self, node: nodes.Filter) -> None:
        """|attr(name), and filters that read `attribute=` names (dotted, as jinja2's make_attrgetter)."""
        if node.dyn_args is not None or node.dyn_kwargs is not None:
            self._issue(node, f"|{node.name} with arguments unpacked at render time")
            return
        position, keyword = _ATTRIBUTE_FILTERS[node.name]
        arg = next((kw.value for kw in node.kwargs if kw.key == keyword), None)
        if node.name == "map" and arg is None:  # map(filter, *args): map("attr", name) reads attributes
            applied = self.fold(node.args[0]) if node.args else _NONE
            if not applied.complete:
                self._issue(node, "|map applies a filter chosen at render time")
            if "attr" in applied.values:
                name = self.fold(node.args[1]) if len(node.args) > 1 else _UNKNOWN
                self._check_name(node, name, "|map('attr') name", computed_ok=False)
            return
        if arg is None and position is not None and position < len(node.args):
            arg = node.args[position]
        if arg is not None or node.name == "attr":
            what = "|attr name" if node.name == "attr" else f"|{node.name} attribute"
            self._check_name(node, self.fold(arg) if arg is not None else _UNKNOWN, what, computed_ok=False)

    def _check_format(self, node: nodes.Call, val: _Val) -> None:
        """str.format resolves `{0.attr}` and `{0[key]}` fields: the sandbox intercepts it, Jinja2 does not."""
        if not val.complete:
            self._issue(node, "str.format on a string computed at render time")
        for value in val.values:
            if isinstance(value, str) and any("." in f or "[" in f for f, _, _ in _format_fields(value)):
                self._issue(node, f"str.format field in {value[:60]!r} reaches attributes or items")


def _items(val: _Val) -> _Val:
    """The values a `for` loop over `val` gives its target."""
    items = tuple(x for v in val.values if isinstance(v, str | tuple) for x in v)
    return _union([_Val(items, val.complete, val.built)])


def _project(val: _Val, i: int) -> _Val:
    """Item `i` of a tuple value (`{% for k, v in ... %}`, `{% set a, b = ... %}`)."""
    items = tuple(v[i] for v in val.values if isinstance(v, tuple) and len(v) > i)
    return _Val(items, val.complete and len(items) == len(val.values), val.built)


def _project_thunk(thunk: _Thunk, i: int, depth: int) -> _Val:
    return _project(thunk(depth), i)


def _format_fields(template: str) -> list[tuple[str, str, str]]:
    """(field name, format spec, conversion) of each replacement field of a str.format template."""
    try:
        return [(name, spec or "", conv or "") for _, name, spec, conv in string.Formatter().parse(template)
                if name is not None]  # fmt: skip
    except ValueError:
        return []


def _combine(parts: list[_Val], operation: Callable[..., object], built: bool = True) -> _Val:
    """Apply `operation` to every combination of the parts' known values. `built`: the result is a string
    made of pieces, so it stays suspicious while a piece is not fully known."""
    built = built or any(p.built for p in parts)
    complete = all(p.complete for p in parts) and math.prod(len(p.values) for p in parts) <= _MAX_CANDIDATES
    results: list[object] = []
    combinations = itertools.product(*(p.values for p in parts))
    for combination in itertools.islice(combinations, _MAX_CANDIDATES + 1):
        try:
            result = operation(*combination)
        except (TypeError, ValueError, IndexError, KeyError, AttributeError, OverflowError):
            complete = False
            continue
        if isinstance(result, str | tuple) and len(result) > _MAX_STRING:
            complete = False
            continue
        results.append(result)
    return _union([_Val(tuple(results), complete, built)])


def _small(*values: object) -> None:
    """Refuse (OverflowError) to fold an operation with a count that could make a huge result."""
    if any(isinstance(v, int) and abs(v) > _MAX_STRING for v in values):
        raise OverflowError


def _mul(a: object, b: object) -> object:
    _small(a, b)
    return a * b  # type: ignore[operator]


def _printf(template: object, args: object) -> str:
    """`template % args`, without widths or precisions (`%99999999s` would build a huge string)."""
    if not isinstance(template, str) or _PRINTF_WIDTH.search(template):
        raise TypeError
    return template % args


def _replace(s: object, old: object, new: object, count: int = -1) -> str:
    if (
        not (isinstance(s, str) and isinstance(old, str) and isinstance(new, str))
        or len(s) * len(new) > _MAX_STRING**2
    ):
        raise TypeError
    return s.replace(old, new, count)


def _call_method(obj: object, method: str, args: tuple[object, ...]) -> object:
    """A str method on constants; `format` only with plain positional fields (no attributes, no widths)."""
    if not isinstance(obj, str) or method == "format_map":
        raise TypeError
    if method == "format" and any(
        not name.isdigit() and name or spec or conv for name, spec, conv in _format_fields(obj)
    ):
        raise TypeError
    _small(*args)
    result = getattr(obj, method)(*args)
    return tuple(result) if isinstance(result, list) else result


_BINARY: dict[type[nodes.Node], Callable[[object, object], object]] = {
    nodes.Add: lambda a, b: a + b,  # type: ignore[operator]
    nodes.Mul: _mul,
    nodes.Mod: _printf,
}
_FILTERS: dict[str, Callable[..., object]] = {
    "join": lambda seq, sep="": str(sep).join(map(str, seq)),
    "format": lambda template, *args: _printf(template, args),
    "replace": _replace,
    "reverse": lambda s: s[::-1],
    "lower": lambda s: str(s).lower(),
    "upper": lambda s: str(s).upper(),
    "string": str,
    "trim": lambda s, chars=None: str(s).strip(chars),
    "title": lambda s: str(s).title(),
    "capitalize": lambda s: str(s).capitalize(),
    "first": lambda seq: seq[0],
    "last": lambda seq: seq[-1],
    "list": tuple,
}

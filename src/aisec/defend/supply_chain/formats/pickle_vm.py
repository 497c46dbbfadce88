"""Static pickle analysis: decode the opcodes and simulate the unpickler's stack and memo, executing nothing.

Why our own decoder rather than `pickletools.genops`: genops reads every argument into memory (a 1 GB
BINBYTES8 tensor becomes a 1 GB bytes object) and knows nothing of the stack, so it cannot tell which
global a REDUCE calls, resolve a STACK_GLOBAL whose strings come from the memo, or find a payload passed
to `pickle.loads`. Here byte arguments stay `Blob` references into the buffer (zero copy) and every
value the unpickler would build is modelled just well enough to answer those questions:

* `Global(module, name)`: what GLOBAL/STACK_GLOBAL/INST would import, after the protocol-2 compatibility
  renames CPython applies below protocol 3 (`__builtin__` -> `builtins`, ...), and with dotted names kept
  whole (`random` + `_os.system` is an attribute walk that reaches `os.system`);
* `Call(func, args)`: the result of REDUCE/NEWOBJ/NEWOBJ_EX/INST/OBJ;
* tuples, lists, dicts and sets of such values (capped; their bulk is irrelevant to safety);
* constants (str, int, float, bool, None) and `Blob` (bytes, and strings too long to be names).

The simulation reports to an `Observer` (each global imported, each call, each BUILD) which applies the
policy; it raises `Unparseable` where CPython's unpickler would raise, and `LimitExceeded` at the limits.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Protocol

from aisec.defend.supply_chain.context import LimitExceeded, Unparseable
from aisec.defend.supply_chain.limits import ScanLimits

_CONTAINER_CAP = 100_000  # items kept per list/tuple/dict/set; the rest are counted, not kept
_MAX_STR = 1 << 20  # longer strings are kept as Blob references: no name is that long


@dataclass(frozen=True)
class Blob:
    """Bytes (or a very long string) of the pickle at data[offset:offset + length], not copied."""

    offset: int
    length: int
    kind: str = "bytes"


@dataclass(frozen=True)
class Global:
    """A global the unpickler would import: `module` is imported, then `name` (maybe dotted) looked up."""

    module: str
    name: str
    offset: int

    @property
    def path(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(eq=False)
class Call:
    """The object REDUCE (or NEWOBJ, INST, OBJ) builds: `func(*args)`; `state` is what BUILD gave it."""

    func: Any
    args: Any
    offset: int
    state: Any = None


class Unknown:
    """A value the simulation does not model (persistent ids, out-of-band buffers, extension globals)."""

    __slots__ = ()


UNKNOWN = Unknown()


@dataclass(eq=False)
class Container:
    """A list, tuple, dict (items are (key, value) pairs) or set the unpickler builds; `size` counts all."""

    kind: str
    items: list[Any] = field(default_factory=list)
    size: int = 0

    def extend(self, values: list[Any]) -> None:
        room = _CONTAINER_CAP - len(self.items)
        if room > 0:
            self.items.extend(values[:room])
        self.size += len(values)

    def as_dict(self) -> dict[Any, Any]:
        """The dict's items whose keys are plain constants."""
        return {k: v for k, v in self.items if isinstance(k, str | int | float | bool | type(None))}


# The callee of a BINPERSID "call": the loader's persistent_load hook (not an import).
PERSISTENT_LOAD = Global("<persistent_load>", "", -1)


class Observer(Protocol):
    """What the simulation reports; the pickle scanner's policy implements it."""

    def on_global(self, value: Global) -> None: ...

    def on_dynamic_global(self, module: Any, name: Any, offset: int) -> Global | None:
        """STACK_GLOBAL with computed operands: the global they resolve to, if that can be worked out."""
        ...

    def on_extension(self, code: int, offset: int) -> None: ...

    def on_call(self, call: Call) -> None: ...

    def on_build(self, target: Any, state: Any, offset: int, pos: int) -> int | None:
        """Called after BUILD; may return a new read position (joblib arrays follow their BUILD inline)."""
        ...


_UNPACK_I = struct.Struct("<i").unpack_from
_UNPACK_H = struct.Struct("<H").unpack_from
_UNPACK_Q = struct.Struct("<Q").unpack_from
_UNPACK_I4 = struct.Struct("<I").unpack_from
_UNPACK_D = struct.Struct(">d").unpack_from

_PROTOCOL_MAX = 5
# Opcodes with a fixed-size little-endian integer argument (a value, or the length of the bytes that follow):
# the argument's struct, per Lib/pickletools.py.
_INT_ARG = {
    op: struct.Struct(fmt)
    for fmt, ops in {
        "<B": (0x68, 0x43, 0x55, 0x8A, 0x82),  # BINGET, SHORT_BINBYTES, SHORT_BINSTRING, LONG1, EXT1
        "<H": (0x83,),  # EXT2
        "<I": (0x6A, 0x58, 0x42),  # LONG_BINGET, BINUNICODE, BINBYTES
        "<i": (0x54, 0x8B, 0x84),  # BINSTRING, LONG4, EXT4 (signed: CPython refuses negative lengths)
        "<Q": (0x8D, 0x8E, 0x96),  # BINUNICODE8, BINBYTES8, BYTEARRAY8
    }.items()
    for op in ops
}


def simulate(
    data: memoryview, start: int, observer: Observer, limits: ScanLimits, *, enforce_frames: bool = True
) -> tuple[int, Any, int]:
    """Run one pickle stream from `start` to its STOP; returns (position after STOP, top value, protocol).

    Raises Unparseable where CPython's unpickler would fail (truncation, bad opcode, empty stack, missing
    memo key), so a stream that would not load is never mistaken for a clean one. `enforce_frames=False`
    ignores FRAME bounds, for the sniffing parse that must be at least as lenient as any unpickler.
    """
    n = len(data)
    pos = start
    stack: list[Any] = []
    metastack: list[list[Any]] = []
    memo: dict[int, Any] = {}
    proto = 0
    opcodes = 0
    max_opcodes = limits.max_pickle_opcodes
    max_stack = limits.max_pickle_stack
    max_memo = limits.max_pickle_memo

    frame_end = -1  # end of the current protocol-4 frame: CPython refuses a read that straddles it

    def need(k: int, at: int) -> None:
        if at + k > n:
            raise Unparseable("pickle data was truncated", at)
        if at < frame_end < at + k:
            raise Unparseable("pickle exhausted before end of frame", at)

    def int_arg(op: int, at: int) -> tuple[int, int]:
        """The opcode's integer argument at `at`, and the position after it."""
        arg = _INT_ARG[op]
        need(arg.size, at)
        return arg.unpack_from(data, at)[0], at + arg.size

    def readline(at: int) -> tuple[bytes, int]:
        end = _find_newline(data, at)
        if end < 0:
            raise Unparseable("pickle data was truncated (no newline)", at)
        if at < frame_end <= end:
            raise Unparseable("pickle exhausted before end of frame", at)
        return bytes(data[at:end]), end + 1

    def pop_mark(at: int) -> list[Any]:
        nonlocal stack
        if not metastack:
            raise Unparseable("could not find MARK", at)
        items = stack
        stack = metastack.pop()
        return items

    def pop(at: int) -> Any:
        if not stack:
            raise Unparseable("unpickling stack underflow", at)
        return stack.pop()

    def top(at: int) -> Any:
        if not stack:
            raise Unparseable("unpickling stack underflow", at)
        return stack[-1]

    def push_text(raw: bytes | memoryview, at: int) -> None:
        stack.append(Blob(at, len(raw), "str") if len(raw) > _MAX_STR else str(raw, "latin-1"))

    def make_global(module: str, name: str, at: int) -> Global:
        if proto < 3:
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        value = Global(module, name, at)
        observer.on_global(value)
        return value

    def call(func: Any, args: Any, at: int) -> Call:
        result = Call(func, args, at)
        observer.on_call(result)
        return result

    while True:
        if pos >= n:
            raise Unparseable("pickle data was truncated (no STOP)", pos)
        opcodes += 1
        if opcodes > max_opcodes:
            raise LimitExceeded(f"more than {max_opcodes} pickle opcodes")
        if len(stack) + len(metastack) > max_stack:
            raise LimitExceeded(f"pickle stack deeper than {max_stack}")
        at = pos
        op = data[pos]
        pos += 1

        # Memo and stack bookkeeping (the most frequent opcodes first).
        if op == 0x94:  # MEMOIZE
            if len(memo) >= max_memo:
                raise LimitExceeded(f"pickle memo larger than {max_memo}")
            memo[len(memo)] = top(at)
        elif op == 0x71:  # BINPUT
            need(1, pos)
            memo[data[pos]] = top(at)
            pos += 1
        elif op == 0x72:  # LONG_BINPUT
            need(4, pos)
            if len(memo) >= max_memo:
                raise LimitExceeded(f"pickle memo larger than {max_memo}")
            memo[_UNPACK_I4(data, pos)[0]] = top(at)
            pos += 4
        elif op == 0x68 or op == 0x6A:  # BINGET, LONG_BINGET
            key, pos = int_arg(op, pos)
            if key not in memo:
                raise Unparseable(f"memo value not found at key {key}", at)
            stack.append(memo[key])
        elif op == 0x95:  # FRAME: the bytes that follow are read in the same order, within its bounds
            if at < frame_end:  # (never true when frames are not enforced: frame_end stays -1)
                raise Unparseable("beginning of a new frame before end of current frame", at)
            need(8, pos)
            frame_end = pos + 8 + _UNPACK_Q(data, pos)[0] if enforce_frames else -1
            if frame_end > n:
                raise Unparseable("pickle data was truncated (frame longer than the data)", at)
            pos += 8
        elif op == 0x28:  # MARK
            metastack.append(stack)
            stack = []
        # Constants.
        elif op == 0x8C:  # SHORT_BINUNICODE
            need(1, pos)
            k = data[pos]
            need(k, pos + 1)
            stack.append(_utf8(data, pos + 1, k, at))
            pos += 1 + k
        elif op == 0x58 or op == 0x8D:  # BINUNICODE, BINUNICODE8
            k, pos = int_arg(op, pos)
            need(k, pos)
            stack.append(Blob(pos, k, "str") if k > _MAX_STR else _utf8(data, pos, k, at))
            pos += k
        elif op in (0x43, 0x42, 0x8E, 0x96):  # SHORT_BINBYTES, BINBYTES, BINBYTES8, BYTEARRAY8
            k, pos = int_arg(op, pos)
            need(k, pos)
            stack.append(Blob(pos, k))
            pos += k
        elif op == 0x55 or op == 0x54:  # SHORT_BINSTRING, BINSTRING (Python 2 str)
            k, pos = int_arg(op, pos)
            if k < 0:
                raise Unparseable("BINSTRING pickle has negative byte count", at)
            need(k, pos)
            # Python 2 str: decoded as latin-1, a superset of the ASCII the default unpickler accepts.
            push_text(data[pos : pos + k], pos)
            pos += k
        elif op == 0x4B:  # BININT1
            need(1, pos)
            stack.append(data[pos])
            pos += 1
        elif op == 0x4D:  # BININT2
            need(2, pos)
            stack.append(_UNPACK_H(data, pos)[0])
            pos += 2
        elif op == 0x4A:  # BININT
            need(4, pos)
            stack.append(_UNPACK_I(data, pos)[0])
            pos += 4
        elif op == 0x8A or op == 0x8B:  # LONG1, LONG4
            k, pos = int_arg(op, pos)
            if k < 0:
                raise Unparseable("LONG pickle has negative byte count", at)
            need(k, pos)
            stack.append(int.from_bytes(data[pos : pos + k], "little", signed=True) if k <= 64 else UNKNOWN)
            pos += k
        elif op == 0x47:  # BINFLOAT
            need(8, pos)
            stack.append(_UNPACK_D(data, pos)[0])
            pos += 8
        elif op == 0x4E:  # NONE
            stack.append(None)
        elif op == 0x88:  # NEWTRUE
            stack.append(True)
        elif op == 0x89:  # NEWFALSE
            stack.append(False)
        # Containers.
        elif op == 0x29:  # EMPTY_TUPLE
            stack.append(())
        elif op == 0x85:  # TUPLE1
            stack.append((pop(at),))
        elif op == 0x86:  # TUPLE2
            b = pop(at)
            stack.append((pop(at), b))
        elif op == 0x87:  # TUPLE3
            c = pop(at)
            b = pop(at)
            stack.append((pop(at), b, c))
        elif op == 0x74:  # TUPLE (pop_mark replaces `stack`: take the items before touching it)
            items = pop_mark(at)
            stack.append(tuple(items))
        elif op == 0x5D:  # EMPTY_LIST
            stack.append(Container("list"))
        elif op == 0x7D:  # EMPTY_DICT
            stack.append(Container("dict"))
        elif op == 0x8F:  # EMPTY_SET
            stack.append(Container("set"))
        elif op == 0x6C:  # LIST
            items = pop_mark(at)
            value = Container("list")
            value.extend(items)
            stack.append(value)
        elif op == 0x64:  # DICT
            items = pop_mark(at)
            value = Container("dict")
            value.extend(list(zip(items[::2], items[1::2], strict=False)))
            stack.append(value)
        elif op == 0x91:  # FROZENSET
            items = pop_mark(at)
            value = Container("set")
            value.extend(items)
            stack.append(value)
        elif op == 0x61:  # APPEND
            item = pop(at)
            _extend(top(at), [item])
        elif op == 0x65 or op == 0x90:  # APPENDS, ADDITEMS
            items = pop_mark(at)
            _extend(top(at), items)
        elif op == 0x73:  # SETITEM
            v = pop(at)
            k = pop(at)
            _extend(top(at), [(k, v)])
        elif op == 0x75:  # SETITEMS
            items = pop_mark(at)
            _extend(top(at), list(zip(items[::2], items[1::2], strict=False)))
        elif op == 0x30:  # POP
            if stack:
                stack.pop()
            else:
                pop_mark(at)
        elif op == 0x31:  # POP_MARK
            pop_mark(at)
        elif op == 0x32:  # DUP
            stack.append(top(at))
        # Imports and calls: what the policy is about.
        elif op == 0x63 or op == 0x69:  # GLOBAL, INST
            module_raw, pos = readline(pos)
            name_raw, pos = readline(pos)
            g = make_global(_text(module_raw, at), _text(name_raw, at), at)
            if op == 0x63:
                stack.append(g)
            else:
                items = pop_mark(at)
                stack.append(call(g, tuple(items), at))
        elif op == 0x93:  # STACK_GLOBAL
            name = pop(at)
            module = pop(at)
            if isinstance(module, str) and isinstance(name, str):
                stack.append(make_global(module, name, at))
            else:
                resolved = observer.on_dynamic_global(module, name, at)
                stack.append(UNKNOWN if resolved is None else resolved)
        elif op in (0x82, 0x83, 0x84):  # EXT1, EXT2, EXT4
            code, pos = int_arg(op, pos)
            observer.on_extension(code, at)
            stack.append(UNKNOWN)
        elif op == 0x52:  # REDUCE
            args = pop(at)
            func = pop(at)
            stack.append(call(func, args, at))
        elif op == 0x81:  # NEWOBJ
            args = pop(at)
            cls = pop(at)
            stack.append(call(cls, args, at))
        elif op == 0x92:  # NEWOBJ_EX
            kwargs = pop(at)
            args = pop(at)
            cls = pop(at)
            stack.append(call(cls, (args, kwargs), at))
        elif op == 0x6F:  # OBJ
            items = pop_mark(at)
            if not items:
                raise Unparseable("OBJ without a class", at)
            stack.append(call(items[0], tuple(items[1:]), at))
        elif op == 0x62:  # BUILD
            state = pop(at)
            target = top(at)
            if isinstance(target, Call):
                target.state = state
            moved = observer.on_build(target, state, at, pos)
            if moved is not None:
                pos = moved
        elif op == 0x50:  # PERSID
            _, pos = readline(pos)
            stack.append(UNKNOWN)
        elif op == 0x51:  # BINPERSID: the loader's persistent_load(pid); torch's pid names a storage
            stack.append(call(PERSISTENT_LOAD, pop(at), at))
        elif op == 0x97:  # NEXT_BUFFER
            stack.append(UNKNOWN)
        elif op == 0x98:  # READONLY_BUFFER
            top(at)
        elif op == 0x80:  # PROTO
            need(1, pos)
            proto = data[pos]
            pos += 1
            if proto > _PROTOCOL_MAX:
                raise Unparseable(f"unsupported pickle protocol: {proto}", at)
        elif op == 0x2E:  # STOP
            return pos, pop(at), proto
        # Protocol 0 text opcodes.
        elif op == 0x49:  # INT
            line, pos = readline(pos)
            stack.append(_text_int(line, at, allow_bool=True))
        elif op == 0x4C:  # LONG
            line, pos = readline(pos)
            stack.append(_text_int(line.rstrip(b"L"), at))
        elif op == 0x46:  # FLOAT
            line, pos = readline(pos)
            try:
                stack.append(float(line))
            except ValueError:
                raise Unparseable("could not convert FLOAT argument", at) from None
        elif op == 0x53:  # STRING
            line, pos = readline(pos)
            line = line.rstrip(b"\r")
            if len(line) < 2 or line[0] != line[-1] or line[0] not in b"\"'":
                raise Unparseable("the STRING opcode argument must be quoted", at)
            try:
                push_text(codecs.escape_decode(line[1:-1])[0], at)
            except ValueError:
                raise Unparseable("invalid escape in STRING argument", at) from None
        elif op == 0x56:  # UNICODE
            line, pos = readline(pos)
            try:
                stack.append(str(line, "raw-unicode-escape"))
            except UnicodeDecodeError:
                raise Unparseable("invalid UNICODE argument", at) from None
        elif op == 0x67:  # GET
            line, pos = readline(pos)
            key = _text_int(line, at, base=10)
            if key not in memo:
                raise Unparseable(f"memo value not found at key {key}", at)
            stack.append(memo[key])
        elif op == 0x70:  # PUT
            line, pos = readline(pos)
            if len(memo) >= max_memo:
                raise LimitExceeded(f"pickle memo larger than {max_memo}")
            memo[_text_int(line, at, base=10)] = top(at)
        else:
            raise Unparseable(f"invalid pickle opcode 0x{op:02x}", at)


def _extend(target: Any, items: list[Any]) -> None:
    """APPEND(S)/SETITEM(S)/ADDITEMS on the value below; on a non-container the real unpickler calls its
    `append`/`extend`/`__setitem__`/`add`, which only allowed globals can provide: nothing to model."""
    if isinstance(target, Container):
        target.extend(items)


def _utf8(data: memoryview, start: int, k: int, at: int) -> str:
    try:
        return str(data[start : start + k], "utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise Unparseable("invalid UTF-8 in a pickle string", at) from None


def _text(raw: bytes, at: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Unparseable("invalid UTF-8 in a GLOBAL name", at) from None


def _text_int(line: bytes, at: int, allow_bool: bool = False, base: int = 0) -> Any:
    """An INT/LONG (base 0, as _pickle.c's strtol and PyLong_FromString read them: "0x10", "010") or
    GET/PUT (base 10) argument."""
    if allow_bool and line == b"00":
        return False
    if allow_bool and line == b"01":
        return True
    if len(line) > 4300:  # CPython's default limit on int string conversion
        raise Unparseable("integer argument too long", at)
    text = line.decode("latin-1").strip()
    if base == 0 and re.fullmatch(r"[+-]?0[0-7]+", text):
        return int(text, 8)  # strtol's octal, which Python's base 0 refuses
    try:
        return int(text, base)
    except ValueError:
        raise Unparseable("invalid integer argument", at) from None


def _find_newline(data: memoryview, start: int) -> int:
    """Index of the next b'\\n' at or after start, or -1 (searches in chunks: names are short)."""
    n = len(data)
    chunk = 256
    pos = start
    while pos < n:
        end = min(n, pos + chunk)
        found = bytes(data[pos:end]).find(b"\n")
        if found >= 0:
            return pos + found
        pos = end
        chunk = min(chunk * 4, 1 << 20)
    return -1


def blob_bytes(data: memoryview, blob: Blob) -> memoryview:
    """The bytes a Blob refers to, without copying."""
    return data[blob.offset : blob.offset + blob.length]


def blobs_in(value: Any, depth: int = 4) -> list[Blob]:
    """Every Blob reachable from a call's arguments (through tuples, containers and nested calls)."""
    if isinstance(value, Blob):
        return [value] if value.kind == "bytes" else []
    if depth == 0:
        return []
    if isinstance(value, tuple):
        return [b for item in value for b in blobs_in(item, depth - 1)]
    if isinstance(value, Container):
        items = [x for pair in value.items for x in pair] if value.kind == "dict" else value.items
        return [b for item in items[:64] for b in blobs_in(item, depth - 1)]
    if isinstance(value, Call):
        return blobs_in(value.args, depth - 1)
    return []

"""Which globals a pickle may import: an allow list decides, a deny list grades what it refuses.

A global is *allowed* when reconstructing it cannot run code of the file's choosing: the tensor and
storage rebuilders of PyTorch, numpy's array and dtype reconstructors, plain containers, datetime, and the
classes defined in scikit-learn, scipy.sparse and torch.nn.modules (their constructors and `__setstate__`
only store attributes; `pickle_allowlist.json`, generated), and the Cython reconstructor of an allowed
class (`_cython_reconstructor`). Every other global is a finding. It is *dangerous* (critical) when it is,
or reaches by attribute walk, a callable that runs code, spawns processes, opens files or sockets, imports
modules or deserialises a nested payload, or when it lives in a private (underscore) module of the
standard library: the modules and names below come from the deny lists of picklescan (1.0.5, 2026-07-01),
modelscan (0.8, 2025-08-06) and fickling (2026-08-14), the GHSA advisories published on the three
projects up to those dates (docs/supply-chain.md lists them), and the gadgets in torch and numpy.
"""

from __future__ import annotations

import enum
import functools
import json
import re
import sys
from pathlib import Path

from aisec.defend.supply_chain.formats.pickle_vm import Global


class Risk(str, enum.Enum):
    ALLOWED = "allowed"
    UNKNOWN = "unknown"
    DANGEROUS = "dangerous"


_SAFE_BUILTINS = frozenset(
    "set frozenset dict list tuple int float complex bool str bytes bytearray slice range object "
    "NotImplemented Ellipsis".split()
)

ALLOWED: frozenset[str] = frozenset(
    """
    collections.OrderedDict collections.defaultdict collections.deque collections.Counter
    copyreg._reconstructor copyreg.__newobj__ copyreg.__newobj_ex__
    datetime.datetime datetime.date datetime.time datetime.timedelta datetime.timezone
    decimal.Decimal fractions.Fraction uuid.UUID _codecs.encode
    pathlib.Path pathlib.PosixPath pathlib.WindowsPath pathlib.PurePath pathlib.PurePosixPath
    pathlib.PureWindowsPath pathlib._local.PosixPath pathlib._local.WindowsPath
    numpy.ndarray numpy.dtype numpy.matrix numpy.core.multiarray._reconstruct numpy._core.multiarray._reconstruct
    numpy.core.multiarray.scalar numpy._core.multiarray.scalar numpy.core.numeric._frombuffer
    numpy._core.numeric._frombuffer numpy.ma.core._mareconstruct numpy.ma.core.MaskedArray
    numpy.random._pickle.__randomstate_ctor numpy.random._pickle.__bit_generator_ctor
    numpy.random._pickle.__generator_ctor numpy.random.mtrand.RandomState numpy.random._mt19937.MT19937
    numpy.random._pcg64.PCG64 numpy.random._pcg64.PCG64DXSM numpy.random._philox.Philox
    numpy.random._sfc64.SFC64 numpy.random._generator.Generator
    numpy.random.bit_generator.SeedSequence numpy.random.bit_generator.SeedlessSeedSequence
    numpy.random._bit_generator.SeedSequence numpy.random._bit_generator.SeedlessSeedSequence
    sklearn.metrics._dist_metrics.newObj sklearn.neighbors._kd_tree.newObj sklearn.neighbors._ball_tree.newObj
    torch._utils._rebuild_tensor torch._utils._rebuild_tensor_v2 torch._utils._rebuild_tensor_v3
    torch._utils._rebuild_parameter torch._utils._rebuild_parameter_with_state torch._utils._rebuild_qtensor
    torch._utils._rebuild_sparse_tensor torch._utils._rebuild_nested_tensor
    torch._utils._rebuild_device_tensor_from_numpy torch._utils._rebuild_meta_tensor_no_storage
    torch._utils._rebuild_wrapper_subclass torch._utils._rebuild_device_tensor_from_cpu_tensor
    torch._tensor._rebuild_from_type torch._tensor._rebuild_from_type_v2 torch.serialization._get_layout
    torch.Size torch.device torch.Tensor torch.nn.parameter.Parameter torch.nn.parameter.Buffer
    torch.nn.parameter.UninitializedParameter torch.nn.parameter.UninitializedBuffer
    torch.storage.UntypedStorage torch.storage.TypedStorage torch.storage._TypedStorage
    torch.strided torch.sparse_coo torch.sparse_csr torch._mkldnn torch.contiguous_format
    torch.channels_last torch.channels_last_3d torch.preserve_format torch.per_tensor_affine
    torch.per_channel_affine torch.per_tensor_symmetric torch.per_channel_symmetric
    joblib.numpy_pickle.NumpyArrayWrapper joblib.numpy_pickle_compat.NDArrayWrapper
    joblib.numpy_pickle_compat.ZNDArrayWrapper uuid.SafeUUID
    """.split()
)
# (numpy's SeedSequence is pickled with every numpy Generator since numpy 2: Cython state, integers and an
# array. scikit-learn's `newObj(cls)` is `cls.__new__(cls)`, copyreg.__newobj__ without arguments, with which
# its KDTree, BallTree and DistanceMetric pickle: sklearn/neighbors/_binary_tree.pxi.tp,
# sklearn/metrics/_dist_metrics.pyx.tp; `cls` is a global of the pickle, checked on its own.)

_TORCH_DTYPES = frozenset(
    "float float32 float64 double float16 half bfloat16 complex32 complex64 complex128 cfloat cdouble "
    "uint8 uint16 uint32 uint64 int8 int16 int32 int64 short int long bool qint8 quint8 qint32 quint4x2 "
    "quint2x4 float8_e4m3fn float8_e5m2 float8_e4m3fnuz float8_e5m2fnuz float8_e8m0fnu".split()
)
_STORAGE = re.compile(
    r"^(Byte|Char|Short|Int|Long|Half|Float|Double|ComplexFloat|ComplexDouble|Bool|BFloat16|"
    r"QUInt8|QInt8|QInt32|QUInt4x2|QUInt2x4|Untyped)Storage$"
)
_NUMPY_SCALARS = frozenset(
    "bool_ int8 int16 int32 int64 uint8 uint16 uint32 uint64 float16 float32 float64 longdouble complex64 "
    "complex128 clongdouble str_ bytes_ void datetime64 timedelta64 intc uintc intp uintp".split()
)
# Classes defined in scikit-learn, scipy.sparse and torch.nn.modules (a generated list: a name those
# packages merely import from elsewhere, like multiprocessing's Listener, is not on it). Their constructors
# and `__setstate__` only store attributes. Regenerate with scripts/update_pickle_allowlist.py.
_ALLOWLIST_FILE = Path(__file__).with_name("pickle_allowlist.json")


@functools.cache
def _package_classes() -> frozenset[str]:
    return frozenset(json.loads(_ALLOWLIST_FILE.read_text())["classes"])


# Dangerous: a global whose (normalised) path starts with one of these, at the module or at any attribute
# reached by a dotted name. Normalising strips leading underscores per component (`_os` is `os`,
# `_operator` is `operator`, `_pickle` is `pickle`, `_posixsubprocess` is `posixsubprocess`).
DANGEROUS_PREFIXES: tuple[str, ...] = tuple(
    """
    os posix nt subprocess posixsubprocess winapi pty shutil sys runpy importlib imp zipimport pkgutil
    marshal types code codeop pickle cpickle dill cloudpickle shelve copyreg.add_extension pip pydoc webbrowser
    socket socketserver ssl select selectors ctypes cffi multiprocessing asyncio concurrent threading thread
    signal platform commands popen2 timeit cprofile profile pdb bdb trace idlelib lib2to3 distutils setuptools
    ensurepip venv http urllib urllib2 urllib3 httplib ftplib smtplib telnetlib poplib imaplib nntplib xmlrpc
    requests httpx aiohttp paramiko tempfile glob io fileinput linecache tarfile zipfile sqlite3 dbm operator
    functools gc inspect compileall py_compile sysconfig site atexit sched tkinter turtle antigravity this
    doctest unittest test ast builtins.eval yaml jsonpickle pandas.read_pickle pandas.io joblib.load
    joblib.numpy_pickle.load joblib._memmapping_reducer joblib.parallel numpy.load numpy.loads numpy.testing
    numpy.f2py numpy.distutils numpy.ctypeslib numpy.lib.npyio numpy.lib.format numpy.lib.utils numpy.fromfile
    numpy.memmap numpy.loadtxt numpy.genfromtxt numpy.save numpy.savez numpy.savetxt numpy.tofile numpy.core.memmap
    numpy._core.memmap numpy.lib._npyio_impl numpy.lib._utils_impl torch.load torch.hub torch.jit
    torch.utils.cpp_extension torch.utils.bottleneck torch.utils.collect_env torch.utils.data torch._dynamo
    torch._inductor torch.package torch.serialization torch.storage._load_from_bytes torch.fx torch.ops torch._ops
    torch.library torch.distributed torch.multiprocessing torch.compile torch._C torch.backends torch.testing
    torch.utils._config_module torch._export torch.export torch.onnx torch.cuda keras tensorflow tf_keras
    uuid aix_support osx_support pyrepl logging.FileHandler logging.handlers logging.config logging.basicConfig
    logging.setLoggerClass logging.setLogRecordFactory syslog mmap pipes pexpect filecmp difflib
    frozen_importlib frozen_importlib_external interpreters xxsubinterpreters
    """.split()
)
# Private (underscore) modules of the standard library: implementation details that no honest pickle names
# (`_codecs.encode` is on the allow list) and some of which run commands (`_aix_support._read_cmd_output`,
# `_osx_support._read_output`, `_pyrepl.pager.pipe_pager`) or code (`_interpreters.run_string`): fickling
# GHSA-6ggj-6f2q-f7mx. The names of newer interpreters are listed too, so the rule does not depend on the
# Python that runs the scan.
_PRIVATE_STDLIB = (
    frozenset(m for m in sys.stdlib_module_names if m.startswith("_"))
    | frozenset(
        """
        _aix_support _osx_support _pyrepl _interpreters _interpqueues _interpchannels _xxsubinterpreters
        _xxinterpchannels _xxinterpqueues _ios_support _android_support _apple_support _remote_debugging
        _colorize _sysconfig _opcode_metadata _suggestions _zstd _hmac
        """.split()
    )
) - {"__future__"}  # its names are inert feature flags
# Names that run code or spawn processes wherever they are found.
DANGEROUS_NAMES = frozenset(
    """
    system popen popen2 popen3 popen4 spawnl spawnle spawnlp spawnv spawnve spawnvp posix_spawn posix_spawnp
    execl execle execlp execv execve execvp execvpe fork forkpty exec eval execfile compile __import__
    import_module load_module load_source check_output check_call getoutput getstatusoutput Popen run_path
    run_module runstring runcode runsource runctx runcall interact __getattribute__ getattr setattr delattr
    __reduce__ __reduce_ex__ __setstate__ __globals__ __builtins__ __subclasses__ __code__ loads
    """.split()
)


def classify(g: Global, torchscript: bool = False) -> Risk:
    """Allowed, unknown or dangerous (see the module docstring). With `torchscript`, also the names that
    torch's C++ unpickler resolves inside a TorchScript archive without importing anything: the archive's
    compiled classes (`__torch__.*`) and `torch.jit._pickle` builders (torch/csrc/jit/serialization/unpickler.cpp)."""
    module, name = g.module, g.name
    if module in ("__builtin__", "__builtins__"):
        module = "builtins"
    if _allowed(module, name):
        return Risk.ALLOWED
    if torchscript and (
        module == "__torch__" or module.startswith("__torch__.") or module == "torch.jit._pickle"
    ):
        return Risk.ALLOWED
    if module == "builtins" or module.split(".", 1)[0] in _PRIVATE_STDLIB:
        return Risk.DANGEROUS  # builtins outside the plain types (eval, getattr, open, ...); private stdlib
    parts = name.split(".")
    if any(_normalise(p) in DANGEROUS_NAMES or p in DANGEROUS_NAMES for p in parts):
        return Risk.DANGEROUS
    # The global itself, and every dotted tail of its name: an attribute walk from an innocent module can
    # reach a dangerous one (`random._os.system`, `somemodule.torch.load`; fickling GHSA-5j3x-jp52-966f).
    candidates = [f"{module}.{name}"] + [".".join(parts[i:]) for i in range(len(parts))]
    if any(_dangerous_path(c) for c in candidates):
        return Risk.DANGEROUS
    return Risk.UNKNOWN


def _allowed(module: str, name: str) -> bool:
    if _cython_reconstructor(module, name):
        return True
    if "." in name or (
        name.startswith("__")
        and name
        not in (
            "__randomstate_ctor",
            "__bit_generator_ctor",
            "__generator_ctor",
            "__newobj__",
            "__newobj_ex__",
        )
    ):
        return False
    path = f"{module}.{name}"
    if path in ALLOWED:
        return True
    if module == "builtins":
        return name in _SAFE_BUILTINS
    if module == "torch":
        return name in _TORCH_DTYPES or bool(_STORAGE.match(name))
    if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray") and name in _NUMPY_SCALARS:
        return True
    if module.startswith(("numpy.dtypes", "numpy._core._dtype", "numpy.core._dtype")) and name.endswith(
        "DType"
    ):
        return True
    return path in _package_classes()


_PYX_UNPICKLE = re.compile(r"^__pyx_unpickle_([A-Za-z_][A-Za-z0-9_]*)$")


def _cython_reconstructor(module: str, name: str) -> bool:
    """`M.__pyx_unpickle_X` is allowed exactly when `M.X` is an allowed class of that same module M.

    Cython generates `__pyx_unpickle_X(type, checksum, state)` in the module that defines the extension type
    X, as X's pickle reconstructor: it checks `checksum` against X's layout, calls `X.__new__(type)` (which
    fails unless `type` is X or a subtype: a global of the pickle, checked on its own) and assigns `state` to
    X's fields and `__dict__` (Cython/Utility/ExtensionTypes.c, `__pyx_unpickle_*` and `__set_state`). It
    rebuilds X from data, as BUILD on an X would, and nothing else. The class must be allowed by name in
    ALLOWED or the generated list; a reconstructor of a class outside them, or named in another module
    than the class's, stays a finding."""
    match = _PYX_UNPICKLE.match(name)
    if match is None:
        return False
    cls = f"{module}.{match.group(1)}"
    return cls in ALLOWED or cls in _package_classes()


def _normalise(component: str) -> str:
    return component.lstrip("_").lower()


def _normal_path(path: str) -> str:
    return ".".join(_normalise(p) for p in path.split("."))


# Normalised like the paths they are compared with (`torch._inductor` is `torch.inductor`): a prefix with an
# underscore component would otherwise never match.
_NORMAL_PREFIXES = tuple(_normal_path(p) for p in DANGEROUS_PREFIXES)


def _dangerous_path(path: str) -> bool:
    normal = _normal_path(path)
    return any(normal == p or normal.startswith(p + ".") for p in _NORMAL_PREFIXES)


# Loaders whose bytes arguments the scanner analyses as nested payloads: names it looks for, never calls.
NESTED_LOADERS = frozenset(
    (
        "pickle.loads pickle.load pickle._loads pickle._load _pickle.loads _pickle.load "  # trusted: names only
        "dill.loads dill.load dill._dill.loads cloudpickle.loads numpy.load numpy.loads "  # trusted: names only
        "torch.load torch.serialization.load torch.storage._load_from_bytes "  # trusted: names only
        "joblib.load joblib.numpy_pickle.load pandas.read_pickle marshal.loads"
    ).split()
)

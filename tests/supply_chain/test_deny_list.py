"""The deny list against the published gadgets: every global that an advisory of picklescan, modelscan or
fickling shows running code, touching files or the network is rated dangerous (critical, verdict `unsafe`).

The table is ours, written from the advisories (docs/supply-chain.md, "Deny list"): picklescan's GHSA
advisories and test files up to 1.0.5 (2026-07-01), modelscan's unsafe globals (settings.py, 2025-08-06) and
fickling's UNSAFE_IMPORTS and GHSA advisories up to 2026-08-14. A module that a list blocks whole is
represented by one of its callables.
"""

from __future__ import annotations

import pytest

from aisec.defend.supply_chain import Verdict, scan_bytes
from aisec.defend.supply_chain.formats.pickle_policy import Risk, classify
from aisec.defend.supply_chain.formats.pickle_vm import Global
from aisec.defend.supply_chain.result import verdict_of

PS = "picklescan"
FK = "fickling"
MS = "modelscan"
GADGETS: list[tuple[str, str, str]] = [
    # picklescan GHSA-g38g-8gr9-h9xp (2026-03): stdlib helpers that run commands
    ("uuid", "_get_command_stdout", f"{PS} GHSA-g38g-8gr9-h9xp"),
    ("uuid", "_find_mac_near_keyword", f"{PS} GHSA-g38g-8gr9-h9xp (uuid blocked whole)"),
    ("_osx_support", "_read_output", f"{PS} GHSA-g38g-8gr9-h9xp"),
    ("_osx_support", "_find_build_tool", f"{PS} GHSA-g38g-8gr9-h9xp"),
    ("_aix_support", "_read_cmd_output", f"{PS} GHSA-g38g-8gr9-h9xp"),
    ("_pyrepl.pager", "pipe_pager", f"{PS} GHSA-g38g-8gr9-h9xp"),
    ("_pyrepl.pager", "tempfile_pager", f"{PS} GHSA-g38g-8gr9-h9xp"),
    ("imaplib", "IMAP4_stream", f"{PS} GHSA-g38g-8gr9-h9xp"),
    ("test.support.script_helper", "assert_python_ok", f"{PS} GHSA-g38g-8gr9-h9xp"),
    ("profile", "run", f"{PS} GHSA-7wx9-6375-f5wh"),
    ("pkgutil", "resolve_name", f"{PS} GHSA-vvpj-8cmc-gx39"),
    ("logging", "FileHandler", f"{PS} GHSA-m7j5-r2p5-c39r"),
    ("cloudpickle.cloudpickle", "_make_function", f"{PS} GHSA-9m3x-qqw2-h32h"),
    ("cloudpickle.cloudpickle", "subimport", f"{PS} GHSA-9m3x-qqw2-h32h"),
    ("types", "CodeType", f"{PS} GHSA-9m3x-qqw2-h32h"),
    ("_io", "FileIO", f"{PS} GHSA-9726-w42j-3qjr"),
    ("urllib.request", "urlopen", f"{PS} GHSA-9726-w42j-3qjr"),
    ("_operator", "methodcaller", f"{PS} GHSA-955r-x9j8-7rhh"),
    ("_operator", "attrgetter", f"{PS} GHSA-46h3-79wf-xr6c"),
    ("operator", "itemgetter", f"{PS} 2025-12 (operator)"),
    ("distutils.file_util", "write_file", f"{PS} GHSA-m273-6v24-x4m4"),
    ("ctypes", "CDLL", f"{PS} GHSA-4675-36f9-wf6r"),
    ("pydoc", "locate", f"{PS} GHSA-84r2-jw7c-4r5q"),
    ("pty", "spawn", f"{PS} GHSA-vqmv-47xg-9wpr"),
    ("numpy.f2py.crackfortran", "getlincoef", f"{PS} GHSA-r8g5-cgf2-4m4m"),
    ("numpy.f2py.crackfortran", "_eval_length", f"{PS} GHSA-r8g5-cgf2-4m4m"),
    (
        "asyncio.unix_events",
        "_UnixSubprocessTransport._start",
        f"{PS} GHSA-jgw4-cr84-mqxg, GHSA-q77w-mwjj-7mqx",
    ),
    ("aiohttp.client", "ClientSession", f"{PS} GHSA-f7qq-56ww-84cr (aiohttp)"),
    ("torch.utils.bottleneck.__main__", "run_autograd_prof", f"{PS} GHSA-4whj-rm5r-c2v8"),
    ("torch.utils.bottleneck.__main__", "run_cprofile", f"{PS} GHSA-4r9r-ch6f-vxmx"),
    ("ensurepip", "_run_pip", f"{PS} GHSA-xp4f-hrf8-rxw7"),
    ("lib2to3.pgen2.pgen", "ParserGenerator.make_label", f"{PS} GHSA-p9w7-82w4-7q8m"),
    ("lib2to3.pgen2.grammar", "Grammar.loads", f"{PS} GHSA-f54q-57x4-jg88"),
    ("idlelib.run", "Executive.runcode", f"{PS} GHSA-m869-42cg-3xwr"),
    ("idlelib.pyshell", "ModifiedInterpreter.runcommand", f"{PS} GHSA-j343-8v2j-ff7w"),
    ("idlelib.pyshell", "ModifiedInterpreter.runcode", f"{PS} GHSA-3gf5-cxq9-w223"),
    ("idlelib.autocomplete", "AutoComplete.get_entity", f"{PS} GHSA-6w4w-5w54-rjvr"),
    ("idlelib.autocomplete", "AutoComplete.fetch_completions", f"{PS} GHSA-7cq8-mj8x-j263"),
    ("idlelib.calltip", "Calltip.fetch_tip", f"{PS} GHSA-8r4j-24qv-fmq9"),
    ("idlelib.calltip", "get_entity", f"{PS} GHSA-9xph-j2h6-g47v"),
    ("idlelib.debugobj", "ObjectTreeItem.SetText", f"{PS} GHSA-3vg9-h568-4w9m"),
    ("doctest", "debug_script", f"{PS} GHSA-fqq6-7vqf-w3fg"),
    ("cProfile", "runctx", f"{PS} GHSA-9w88-8rmg-7g2p"),
    ("cProfile", "run", f"{PS} GHSA-49gj-c84q-6qm9"),
    ("code", "InteractiveInterpreter.runcode", f"{PS} GHSA-cj3c-v495-4xqh"),
    ("trace", "Trace.run", f"{PS} GHSA-5qwp-399c-mjwf"),
    ("trace", "Trace.runctx", f"{PS} GHSA-g344-hcph-8vgg"),
    ("profile", "Profile.run", f"{PS} GHSA-x696-vm39-cp64"),
    ("profile", "Profile.runctx", f"{PS} GHSA-6vqj-c2q5-j97w"),
    ("torch._dynamo.guards", "GuardBuilder.get", f"{PS} GHSA-86cj-95qr-2p4f"),
    (
        "torch.fx.experimental.symbolic_shapes",
        "ShapeEnv.evaluate_guards_expression",
        f"{PS} GHSA-f4x7-rfwp-v3xw",
    ),
    ("torch.utils.collect_env", "run", f"{PS} GHSA-f745-w6jp-hpxx"),
    ("torch.utils.collect_env", "run_and_read_all", f"{PS} GHSA-jhph-76pp-mggw"),
    ("torch.utils.data.datapipes.utils.decoder", "basichandlers", f"{PS} GHSA-h3qp-7fh3-f8h4"),
    ("torch.jit.unsupported_tensor_ops", "execWrapper", f"{PS} GHSA-vr7h-p6mm-wpmh"),
    ("torch.utils._config_module", "ConfigModule.load_config", f"{PS} GHSA-vv6j-3g6g-2pvj"),
    ("torch._inductor.codecache", "compile_file", f"{PS} malicious17 (0.0.22, 2025-03)"),
    ("torch.serialization", "load", f"{PS} malicious19"),
    ("numpy.testing._private.utils", "runstring", f"{PS} malicious22"),
    ("timeit", "timeit", f"{PS} malicious21"),
    ("venv", "create", f"{PS} malicious20"),
    ("pip", "main", f"{PS} CVE-2025-1716"),
    ("ssl", "get_server_certificate", f"{PS} dns_exfiltration.npy"),
    ("webbrowser", "open", f"{PS}, {MS}"),
    ("requests.api", "get", f"{PS}, {MS}"),
    ("httplib", "HTTPSConnection", f"{PS}, {MS}"),
    ("bdb", "Bdb.run", f"{PS}, {MS}"),
    ("pdb", "Pdb.run", f"{PS}, {MS}"),
    ("shutil", "rmtree", f"{PS}, {MS}"),
    ("runpy", "_run_code", f"{PS}, {MS}"),
    ("builtins", "breakpoint", f"{PS}, {MS}"),
    ("__builtin__", "apply", f"{PS}, {MS}"),
    # fickling
    ("_interpreters", "run_string", f"{FK} GHSA-6ggj-6f2q-f7mx (private stdlib modules)"),
    ("_xxsubinterpreters", "run_string", f"{FK} GHSA-6ggj-6f2q-f7mx"),
    ("_frozen_importlib", "_call_with_frames_removed", f"{FK} GHSA-6ggj-6f2q-f7mx"),
    ("_posixsubprocess", "fork_exec", f"{FK} GHSA-m6fh-58r7-x697"),
    ("site", "addpackage", f"{FK} GHSA-m6fh-58r7-x697"),
    ("atexit", "register", f"{FK} GHSA-m6fh-58r7-x697"),
    ("unittest.mock", "patch", f"{FK} GHSA-pc6j-px3p-rrj4"),
    ("test.support", "run_in_subinterp", f"{FK} GHSA-pc6j-px3p-rrj4"),
    ("linecache", "getlines", f"{FK} GHSA-r48f-3986-4f9c"),
    ("difflib", "restore", f"{FK} GHSA-r48f-3986-4f9c"),
    ("gc", "get_objects", f"{FK} GHSA-r48f-3986-4f9c"),
    ("platform", "popen", f"{FK} GHSA-5cxw-w2xg-2m8h"),
    ("inspect", "getattr_static", f"{FK} 2026-03 (inspect)"),
    ("socketserver", "TCPServer", f"{FK} GHSA-mhc9-48gj-9gp3"),
    ("xmlrpc.client", "ServerProxy", f"{FK} GHSA-mhc9-48gj-9gp3"),
    ("signal", "signal", f"{FK} GHSA-mhc9-48gj-9gp3"),
    ("threading", "Thread", f"{FK} GHSA-mhc9-48gj-9gp3"),
    ("sqlite3", "connect", f"{FK} GHSA-mhc9-48gj-9gp3"),
    ("fileinput", "input", f"{FK} GHSA-mhc9-48gj-9gp3"),
    ("glob", "glob", f"{FK} GHSA-mhc9-48gj-9gp3"),
    ("compileall", "compile_dir", f"{FK} GHSA-mhc9-48gj-9gp3"),
    ("py_compile", "compile", f"{FK} GHSA-mhc9-48gj-9gp3"),
    ("mmap", "mmap", f"{FK} GHSA-mhc9-48gj-9gp3"),
    ("select", "select", f"{FK} GHSA-mhc9-48gj-9gp3"),
    ("selectors", "DefaultSelector", f"{FK} GHSA-mhc9-48gj-9gp3"),
    ("logging.config", "dictConfig", f"{FK} GHSA-mhc9-48gj-9gp3 (logging)"),
    ("logging.handlers", "SocketHandler", f"{FK} GHSA-mhc9-48gj-9gp3 (logging)"),
    ("logging", "basicConfig", f"{FK} GHSA-mhc9-48gj-9gp3 (logging)"),
    ("syslog", "syslog", f"{FK} GHSA-mhc9-48gj-9gp3"),
    ("tarfile", "open", f"{FK} GHSA-mhc9-48gj-9gp3"),
    ("zipfile", "ZipFile", f"{FK} GHSA-mhc9-48gj-9gp3"),
    ("shelve", "open", f"{FK} GHSA-mhc9-48gj-9gp3"),
    ("marshal", "loads", f"{FK} GHSA-565g-hwwr-4pp3"),
    ("types", "FunctionType", f"{FK} GHSA-565g-hwwr-4pp3"),
    ("pty", "fork", f"{FK} GHSA-r7v6-mfhq-g3m2"),
    ("runpy", "run_path", f"{FK} GHSA-q5qq-mvfm-j35x"),
    ("imp", "load_source", f"{FK} 2026-07-29 (imp)"),
    ("pipes", "Template", f"{FK} 2026-07-29 (pipes)"),
    ("pexpect", "spawn", f"{FK} UNSAFE_IMPORTS"),
    ("filecmp", "cmp", f"{FK} UNSAFE_IMPORTS"),
    ("tempfile", "NamedTemporaryFile", f"{FK} UNSAFE_IMPORTS"),
    ("multiprocessing.util", "spawnv_passfds", f"{FK} UNSAFE_IMPORTS, {MS} issue 338"),
    ("dill", "loads", f"{FK} UNSAFE_IMPORTS"),
    ("joblib", "load", f"{FK} UNSAFE_IMPORTS (joblib)"),
    ("torch.hub", "load", f"{FK} UnsafeImportsML"),
    ("torch", "compile", f"{FK} UnsafeImportsML"),
    ("torch", "load", f"{FK} UnsafeImportsML"),
    ("torch.storage", "_load_from_bytes", f"{FK} UnsafeImportsML"),
    ("numpy.distutils.exec_command", "exec_command", f"{FK} UnsafeImportsML"),
    ("torch.distributed.elastic.rendezvous.api", "basichandlers", f"{FK} UnsafeImportsML"),
    ("io", "open", f"{FK} UnsafeImportsML"),
    # fickling GHSA-5j3x-jp52-966f: a dotted name reaches a dangerous module through an innocent one
    ("collections", "os.system", f"{FK} GHSA-5j3x-jp52-966f"),
    ("sklearn.base", "torch.load", f"{FK} GHSA-5j3x-jp52-966f"),
]


@pytest.mark.parametrize(("module", "name", "source"), GADGETS, ids=[f"{m}.{n}" for m, n, _ in GADGETS])
def test_published_gadget_is_dangerous(module: str, name: str, source: str) -> None:
    assert classify(Global(module, name, 0)) is Risk.DANGEROUS, source


@pytest.mark.parametrize(
    ("module", "name", "source"), GADGETS[:12], ids=[f"{m}.{n}" for m, n, _ in GADGETS[:12]]
)
def test_published_gadget_makes_the_file_unsafe(module: str, name: str, source: str) -> None:
    """GLOBAL + REDUCE of the gadget (protocol 0, as the advisories' files are written) scans `unsafe`."""
    data = f"c{module}\n{name}\n(S'x'\ntR.".encode()
    assert verdict_of(scan_bytes(data, "model.pkl")[1]) is Verdict.UNSAFE, source


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("uuid", "UUID"),  # uuid is denied whole, its class stays allowed
        ("_codecs", "encode"),  # the one private-module name honest pickles use (bytes at protocol <= 2)
        ("numpy.random.bit_generator", "SeedSequence"),
        ("collections", "OrderedDict"),
    ],
)
def test_allow_list_wins_over_the_deny_list(module: str, name: str) -> None:
    assert classify(Global(module, name, 0)) is Risk.ALLOWED


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("logging", "getLogger"),
        ("__future__", "annotations"),
        ("mypackage.model", "Net"),
        ("__main__", "Net"),
    ],
)
def test_unlisted_but_harmless_globals_stay_unknown(module: str, name: str) -> None:
    """A Logger pickles as logging.getLogger(name); a user's own classes are unknown (medium), not denied."""
    assert classify(Global(module, name, 0)) is Risk.UNKNOWN

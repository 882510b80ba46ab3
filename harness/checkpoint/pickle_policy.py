"""The pickle policy: which globals a checkpoint's pickle may name, and the stubs that stand in for them.

Pickles are never run here: `scan_pickle` parses one (pickletools) to list the globals it names and the
opcodes it uses. A global that stands for code (`os.system`, `builtins.eval`, `subprocess.Popen`, ...)
makes the checkpoint `checkpoint-unsafe` (`unsafe_reason`). Any other global the safe unpickler refuses
(a student's model class, an `argparse.Namespace`, a dataclass config) becomes an inert `Stub` class
that records what the pickle gave it; a stubbed *function* the pickle calls is unsafe too
(`called_unsafely`). `decode` turns the stubs of NumPy scalars and arrays back into numbers and tensors.
"""

from __future__ import annotations

import _compat_pickle
import io
import math
import pickletools
from typing import Any, Iterable

import torch

MAX_STUBBED_GLOBALS = 500
# Torch's weights-only unpickler reads exactly these opcodes (torch/_weights_only_unpickler.py).
SAFE_OPCODES = frozenset({
    "PROTO", "STOP", "GLOBAL", "NEWOBJ", "REDUCE", "BUILD", "APPEND", "APPENDS", "SETITEM", "SETITEMS", "MARK",
    "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "NONE", "NEWFALSE", "NEWTRUE", "EMPTY_TUPLE", "EMPTY_LIST",
    "EMPTY_DICT", "EMPTY_SET", "BININT", "BININT1", "BININT2", "BINFLOAT", "BINUNICODE", "SHORT_BINSTRING",
    "BINPERSID", "BINGET", "LONG_BINGET", "BINPUT", "LONG_BINPUT", "LONG1",
})


# Modules whose globals are all code: a pickle naming any of them wants to run something.
DENY_MODULES = (
    "os", "posix", "nt", "sys", "subprocess", "commands", "_posixsubprocess", "importlib", "imp", "runpy", "shutil",
    "socket", "pickle", "_pickle", "cPickle", "dill", "cloudpickle", "marshal", "ctypes", "_ctypes", "pty",
    "webbrowser", "multiprocessing", "_thread", "asyncio", "urllib", "urllib2", "requests", "http", "ftplib",
    "smtplib", "telnetlib", "pdb", "bdb", "timeit", "cProfile", "doctest", "idlelib", "site", "sysconfig",
    "distutils", "setuptools", "pip", "ensurepip", "venv", "zipimport", "pkgutil", "posixpath", "ntpath",
    "genericpath", "shelve", "dbm", "sqlite3", "linecache", "atexit", "compileall", "py_compile", "xmlrpc",
    "IPython", "torch.hub", "torch.jit", "torch.package", "torch.utils.cpp_extension", "torch.distributed",
    "torch._dynamo", "torch._inductor", "torch.fx", "torch.multiprocessing", "torch.serialization", "torch.ops",
    "torch._ops", "torch.library", "torch.onnx", "torch.compiler", "numpy.testing", "numpy.f2py",
    "numpy.distutils", "numpy.lib.npyio",
)
# Standard modules whose names a student's own package may share (`code/`, `types.py`, `logging.py`):
# their functions, and these classes, are code; a capitalised class from such a module may be data.
SOFT_DENY_MODULES = (
    "code", "codeop", "types", "io", "_io", "functools", "operator", "_operator", "tempfile", "signal",
    "socketserver", "trace", "profile", "inspect", "gc", "weakref", "select", "mmap", "resource", "fcntl",
    "termios", "glob", "fileinput", "logging", "ast", "zipfile", "tarfile", "gzip", "bz2", "lzma", "zlib",
    "platform", "getpass", "ssl", "yaml", "threading",
)
CODE_CLASSES = frozenset({"CodeType", "FunctionType", "LambdaType", "MethodType", "BuiltinFunctionType",
                          "ModuleType", "Thread", "Timer", "Popen", "ZipFile", "TarFile", "FileIO", "BufferedReader",
                          "BufferedWriter", "TextIOWrapper", "InteractiveInterpreter", "InteractiveConsole",
                          "Loader", "UnsafeLoader", "FullLoader"})
DENY_NAMES = frozenset({"torch.load", "torch.save", "torch.compile", "numpy.load", "numpy.save", "numpy.fromfile",
                        "numpy.loadtxt", "numpy.genfromtxt", "copyreg.__newobj__"})
SAFE_BUILTINS = frozenset({"builtins." + n for n in (
    "slice", "range", "frozenset", "object", "int", "float", "str", "bool", "tuple", "list", "dict", "bytes",
    "complex", "set", "bytearray", "NoneType", "Ellipsis", "NotImplemented")})
# Modules whose functions a pickle may call to rebuild plain data (a stubbed call records, runs nothing).
CALL_OK_MODULES = ("numpy", "datetime", "collections", "pathlib", "decimal", "fractions", "uuid", "enum", "copyreg")


def normalise_global(name: str) -> str:
    """Python 2 spellings to Python 3 (`commands.Popen` is `subprocess.Popen`), as pickle would import them."""
    module, _, attr = name.rpartition(".")
    if (module, attr) in _compat_pickle.NAME_MAPPING:
        module, attr = _compat_pickle.NAME_MAPPING[(module, attr)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{attr}"


def _under(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def unsafe_reason(name: str) -> str | None:
    """Why the pickle global `name` is code (None: it may stand for data, and can be read through a stub)."""
    full = normalise_global(name)
    module, _, attr = full.rpartition(".")
    if module in ("builtins", "__builtin__"):
        return None if full in SAFE_BUILTINS else f"{full} is a Python built-in function"
    if full in DENY_NAMES or _under(module, DENY_MODULES) or _under(full, DENY_MODULES):
        return f"{full} runs code"
    if _under(module, SOFT_DENY_MODULES) and (not attr[:1].isupper() or attr in CODE_CLASSES):
        return f"{full} runs code"
    return None


def called_unsafely(name: str) -> bool:
    """A stubbed global the pickle *called* (REDUCE) that looks like a function rather than a class."""
    full = normalise_global(name)
    module, _, attr = full.rpartition(".")
    if full in SAFE_BUILTINS or _under(module, CALL_OK_MODULES):
        return False
    return not attr[:1].isupper()


def scan_pickle(data: bytes | io.BufferedIOBase) -> tuple[set[str], set[str]]:
    """The globals one pickle names and the opcodes it uses, by parsing it (pickletools), never running it.
    Names are spelled as torch's weights-only unpickler looks them up. Unlike torch's own scan
    (`get_unsafe_globals_in_checkpoint`, zip files and protocol-2 opcodes only), this also reads legacy
    files, tar members and protocol-4 pickles (STACK_GLOBAL), so a payload there is named, not just refused."""
    from torch._utils import IMPORT_MAPPING, NAME_MAPPING

    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    names: set[str] = set()
    ops: set[str] = set()
    strings: list[Any] = []
    memo: dict[Any, Any] = {}
    for op, arg, _ in pickletools.genops(stream):
        ops.add(op.name)
        if op.name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            if (module, attr) in NAME_MAPPING:
                module, attr = NAME_MAPPING[(module, attr)]
            elif module in IMPORT_MAPPING:
                module = IMPORT_MAPPING[module]
            names.add(f"{module}.{attr}")
            strings.append(None)
        elif op.name == "STACK_GLOBAL":
            if len(strings) >= 2 and isinstance(strings[-1], str) and isinstance(strings[-2], str):
                names.add(f"{strings[-2]}.{strings[-1]}")
            else:
                names.add("<unknown>.<stack_global>")
        elif isinstance(arg, str) and op.name not in ("PROTO",):
            strings.append(arg)
        elif op.name in ("MEMOIZE",):
            memo[len(memo)] = strings[-1] if strings else None
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = strings[-1] if strings else None
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            strings.append(memo.get(arg))
        else:
            strings.append(None)
        if len(strings) > 64:
            del strings[:-8]
    return names, ops


# ==================================================================================================
# Stubs: inert stand-ins for the globals the safe unpickler refuses
# ==================================================================================================


class Stub:
    """An inert stand-in for a refused global. The unpickler may create one (`__new__`, REDUCE calls
    `__init__` too) and hand it state (`__setstate__`): all three only record. Nothing of the
    student's is ever imported or called."""

    _h_name = "?"
    _h_instances: list
    dump_patches = False  # what torch's legacy loader asks of a module class

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        d = self.__dict__
        d["_h_args"] = args
        d["_h_state"] = None
        d["_h_called"] = False
        cls._h_instances.append(self)
        return self

    def __init__(self, *args, **kwargs):
        self.__dict__["_h_called"] = True  # only a REDUCE (a call) runs __init__; NEWOBJ does not

    def __setstate__(self, state):
        self.__dict__["_h_state"] = state

    def __reduce__(self):
        raise TypeError("a harness stub is never pickled")

    def __repr__(self) -> str:
        return f"<stub {self._h_name}>"


def make_stub(name: str) -> type[Stub]:
    """One fresh stub class per qualified name."""
    module, _, attr = name.rpartition(".")
    cls = type(attr or "Stub", (Stub,), {"_h_name": name, "_h_instances": [], "__module__": "harness.stubs",
                                         "__qualname__": attr or "Stub"})
    return cls


def is_module(x: Any) -> bool:
    """A stubbed nn.Module: its state holds `_parameters` and `_modules`."""
    if not isinstance(x, Stub):
        return False
    state = x._h_state
    return (isinstance(state, dict) and isinstance(state.get("_parameters"), dict)
            and isinstance(state.get("_modules"), dict))


_NP_CODES = {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "?", "b", "B", "h", "H", "i",
             "I", "l", "L", "q", "Q", "e", "f", "d"}


def _np_dtype(d: Any):
    import numpy as np

    if not (isinstance(d, Stub) and d._h_name == "numpy.dtype"):
        return None
    code = d._h_args[0] if d._h_args and isinstance(d._h_args[0], str) else None
    if code not in _NP_CODES:
        return None
    state = d._h_state
    endian = state[1] if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">") else None
    dt = np.dtype(code)
    return dt.newbyteorder(endian) if endian else dt


def decode(x: Any) -> Any:
    """NumPy scalars and arrays rebuilt from their stubs' recorded bytes (numeric dtypes only):
    scalars as Python numbers, arrays as tensors. Anything else is returned as it is."""
    if not isinstance(x, Stub):
        return x
    import numpy as np

    name = x._h_name
    try:
        if name.endswith(".multiarray.scalar") and len(x._h_args) == 2:
            dt = _np_dtype(x._h_args[0])
            data = x._h_args[1]
            if dt is not None and isinstance(data, bytes) and len(data) == dt.itemsize:
                return np.frombuffer(data, dtype=dt, count=1)[0].item()
        elif name.endswith(".multiarray._reconstruct"):
            state = x._h_state
            if isinstance(state, tuple) and len(state) == 5:
                _, shape, dtype, fortran, raw = state
                dt = _np_dtype(dtype)
                if (dt is not None and isinstance(raw, bytes) and isinstance(shape, tuple)
                        and all(type(s) is int and s >= 0 for s in shape)
                        and len(raw) == math.prod(shape) * dt.itemsize):
                    arr = np.frombuffer(raw, dtype=dt).reshape(shape, order="F" if fortran else "C")
                    return torch.from_numpy(np.ascontiguousarray(arr.astype(dt.newbyteorder("="))))
        elif name == "numpy.dtype":
            dt = _np_dtype(x)
            return str(dt) if dt is not None else None
    except (ValueError, TypeError):
        return None
    return x

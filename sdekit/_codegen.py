"""Generated, disk-cached Numba functions: the adapters of a problem's functions, compiled once per installation.

A problem's functions reach the compiled kernels through small generated
*adapters* (see :mod:`sdekit.backends.numba_backend`). Numba can cache only
functions that live in a source file and keys its cache on that file, so an
adapter is written to a file of its own in the sdekit cache folder, named by
a digest of everything that decides its machine code:

* the user's function: its bytecode and constants, the numbers, arrays and
  functions it reads from globals and closures (Numba freezes those into the
  code), recursively through the functions it calls (:func:`fingerprint`);
* the adapter's form, the state and noise dimensions, the layout of the
  parameters and the error slot;
* the versions of Python, NumPy, Numba and llvmlite, and the sources of
  ``sdekit`` and ``diffusion`` (:func:`cache_salt`).

A later process with the same function, even a ``lambda`` typed again in a new
session, finds the file and loads the compiled code instead of compiling it.
A function whose fingerprint cannot be taken (it reads an object that is not a
number, an array, a tuple of those, a module or a function) is compiled in
memory, for this process only, as before.

The folder is ``$SDEKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/sdekit``, else
``~/.cache/sdekit``; an unwritable folder means compiling in memory.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import importlib.util
import inspect
import os
import sys
import types as pytypes
from functools import cache

import llvmlite
import numba
import numpy as np

__all__ = ["cache_dir", "cache_salt", "fingerprint", "load_source"]

# Top-level packages whose functions are named, not read: their code is covered by the versions in the salt.
_LIBRARY_MODULES = ("numpy", "math", "cmath", "numba", "operator", "builtins", "scipy")
_OWN_MODULES = ("sdekit", "diffusion")
_MAX_DEPTH = 12


class Uncacheable(Exception):
    """Raised inside :func:`fingerprint` for a value whose effect on the compiled code cannot be pinned down."""


def cache_dir() -> str | None:
    """The folder of sdekit's generated code (created), or None when it cannot be written."""
    root = os.environ.get("SDEKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "sdekit")
    path = os.path.join(root, f"adapters-{cache_salt()[:16]}")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK) else None


@cache
def cache_salt() -> str:
    """A digest of the interpreter, NumPy, Numba and llvmlite versions and every source file of sdekit and diffusion.

    ``$SDEKIT_CACHE_SALT``, when set, stands for the source files: for tools that rewrite sdekit's sources one
    change at a time (the mutation tests, ``benchmarks/mutation``), where recompiling every adapter for each
    change would cost minutes. An adapter still changes with the functions it compiles in (their fingerprint),
    and the Numba kernels with their own sources (:mod:`sdekit._jitcache`); never set it otherwise.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{sys.version}|{np.__version__}|{numba.__version__}|{llvmlite.__version__}".encode())
    if os.environ.get("SDEKIT_CACHE_SALT"):
        h.update(os.environ["SDEKIT_CACHE_SALT"].encode())
        return h.hexdigest()
    for name in _OWN_MODULES:
        module = sys.modules.get(name)
        if module is None or not getattr(module, "__file__", None):
            continue
        root = os.path.dirname(module.__file__)
        for folder, dirs, files in sorted(os.walk(root)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for file in sorted(f for f in files if f.endswith(".py")):
                path = os.path.join(folder, file)
                h.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()


# --------------------------------------------------------------------------- fingerprints
def fingerprint(fn) -> str | None:
    """A digest of what decides the machine code Numba makes of ``fn``, or None when that cannot be pinned down.

    Two functions with the same fingerprint compile to the same code: same
    bytecode and constants, same values of the globals and closure variables
    they read (numbers, arrays and tuples are compiled in as constants), and
    the same functions called, recursively.
    """
    try:
        description = _describe(fn, {}, 0, top=True)
    except (Uncacheable, RecursionError):
        return None
    return hashlib.blake2b(repr(description).encode(), digest_size=16).hexdigest()


def _describe(v, seen: dict, depth: int, top: bool = False):
    if depth > _MAX_DEPTH:
        raise Uncacheable("too deep")
    if v is None or isinstance(v, bool | int | float | complex | str | bytes):
        return (type(v).__name__, repr(v))
    if isinstance(v, np.generic):
        return ("np", v.dtype.str, repr(v))
    if isinstance(v, np.ndarray):
        if v.dtype.kind not in "biufc":
            raise Uncacheable("array of objects")
        return ("array", v.dtype.str, v.shape, hashlib.blake2b(np.ascontiguousarray(v).tobytes(), digest_size=16).hexdigest())
    if isinstance(v, tuple):
        items = tuple(_describe(e, seen, depth + 1) for e in v)
        if hasattr(type(v), "_fields"):
            return ("record", _type_name(type(v)), type(v)._fields, items)
        return ("tuple", items)
    if isinstance(v, pytypes.ModuleType):
        return ("module", v.__name__)
    if isinstance(v, numba.core.dispatcher.Dispatcher):
        options = sorted((k, repr(o)) for k, o in v.targetoptions.items())
        return ("dispatcher", options, _describe(v.py_func, seen, depth + 1, top=True))
    if isinstance(v, np.ufunc | pytypes.BuiltinFunctionType):
        return ("builtin", getattr(v, "__module__", None), getattr(v, "__qualname__", v.__name__))
    if isinstance(v, type):
        if v.__module__.split(".")[0] in _LIBRARY_MODULES:
            return ("type", v.__module__, v.__qualname__)
        if issubclass(v, tuple) and hasattr(v, "_fields"):
            return ("record type", _type_name(v), v._fields)
        raise Uncacheable(f"class {v.__qualname__}")
    if isinstance(v, pytypes.FunctionType):
        return _describe_function(v, seen, depth, top)
    raise Uncacheable(type(v).__name__)


def _type_name(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _describe_function(fn, seen: dict, depth: int, top: bool):
    if id(fn) in seen:
        return ("seen", seen[id(fn)])
    seen[id(fn)] = len(seen)
    package = (fn.__module__ or "").split(".")[0]
    if package in _LIBRARY_MODULES:
        return ("library function", fn.__module__, fn.__qualname__)
    if package in _OWN_MODULES and fn.__closure__ is None and "<locals>" not in fn.__qualname__:
        return ("sdekit function", fn.__module__, fn.__qualname__)  # its source is in the salt
    if fn.__module__ not in sys.modules:
        # code run by exec() under a made-up module name: Numba pickles such a function as a '<dynamic>' module's,
        # which a later process cannot import, so a disk-cached adapter around it could never be loaded back
        raise Uncacheable(f"function {fn.__qualname__} of the unimportable module {fn.__module__!r}")
    if not (top or getattr(fn, "_sdekit_jittable", False)):
        # a plain function called from compiled code: Numba reaches it through an overload we cannot see
        raise Uncacheable(f"function {fn.__qualname__}")
    code = fn.__code__
    names = code_names(code)
    g = fn.__globals__
    global_values = tuple((n, _describe(g[n], seen, depth + 1)) for n in sorted(names) if n in g)
    shadowed = tuple(sorted(n for n in names if n not in g and hasattr(builtins, n)))
    cells = []
    for name, cell in zip(code.co_freevars, fn.__closure__ or (), strict=True):
        try:
            cells.append((name, _describe(cell.cell_contents, seen, depth + 1)))
        except ValueError:  # an empty cell
            cells.append((name, "empty"))
    defaults = tuple(_describe(d, seen, depth + 1) for d in fn.__defaults__ or ())
    return ("function", _describe_code(code), defaults, global_values, shadowed, tuple(cells),
            bool(getattr(fn, "_sdekit_jittable", False)))


def _describe_code(code):
    consts = tuple(_describe_code(c) if inspect.iscode(c) else _describe_constant(c) for c in code.co_consts)
    return (code.co_code, consts, code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars,
            code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags)


def _describe_constant(c):
    if isinstance(c, tuple | frozenset):
        return (type(c).__name__, tuple(_describe_constant(e) for e in (sorted(c, key=repr) if isinstance(c, frozenset) else c)))
    return (type(c).__name__, repr(c))


def code_names(code) -> set:
    """Every name a code object (and the code nested in it) reads from globals or as an attribute."""
    names = set(code.co_names)
    for c in code.co_consts:
        if inspect.iscode(c):
            names |= code_names(c)
    return names


# --------------------------------------------------------------------------- generated modules
def load_source(make_source, key: str | None, names: dict, prefix: str = "adapter"):
    """Execute generated source as a module and return it.

    With a ``key`` and a writable :func:`cache_dir`, the module is the file ``<prefix>_<key>.py`` there: when the
    file exists it is imported as it is (``make_source`` is not called), else ``make_source()`` is written to it
    atomically first; the ``cache=True`` functions in it are then cached by Numba next to it. Without, the source
    runs from memory. ``names`` are set in the module before its code runs (the functions it calls). A file that
    does not import (truncated by an interrupted write, say) is written again.
    """
    folder = cache_dir() if key is not None else None
    if folder is None:
        module = pytypes.ModuleType(f"sdekit_generated_{prefix}")
        module.__dict__.update(names)
        exec(compile(make_source().replace("cache=True", "cache=False"), f"<sdekit {prefix}>", "exec"),  # noqa: S102
             module.__dict__)
        return module
    path = os.path.join(folder, f"{prefix}_{key}.py")
    if os.path.exists(path):
        with contextlib.suppress(Exception):
            return _import(path, f"sdekit_generated_{prefix}_{key}", names)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        fh.write(make_source())
    os.replace(tmp, path)
    return _import(path, f"sdekit_generated_{prefix}_{key}", names)


def _import(path: str, name: str, names: dict):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    module.__dict__.update(names)
    sys.modules[name] = module  # Numba finds a cached function's module by name when it loads the entry
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    if not module.__dict__.get("__sdekit_complete__"):
        raise ImportError(f"{path} is incomplete")
    return module

"""The adapters between a problem's functions and the compiled kernels of the Numba backend.

The kernels are compiled once per installation with fixed signatures; they
call a problem's function through an *adapter* of one of three first-class
function types ``(t, x, flat_params) -> array`` (:data:`FORMS`). The adapter
rebuilds the user's ``params`` from the flat float64 array (so new values never
recompile anything), calls the function, checks the shape of the result on
every call and broadcasts it to the canonical shape.

An adapter is generated as straight-line Python source specialised to the
type the function returns (a number, or an array of some rank and dtype), so
that Numba compiles little beyond the user's own code, and the source is
kept in a file of the sdekit cache (:mod:`sdekit._codegen`): a later process,
or a new problem built from the same function, loads the compiled adapter
from disk instead of compiling it.
"""

from __future__ import annotations

import hashlib
import inspect
import numbers
import sys
import warnings
import weakref

import numba
import numpy as np
from numba import njit, types
from numba.core import typed_passes
from numba.core.compiler import run_frontend
from numba.core.errors import NumbaError
from numba.core.registry import cpu_target

from .. import _codegen
from .._jitcache import heal_cache, heal_module
from ..params import is_record
from .numba_kernels import F64_1, F64_2, F64_3, FLAT

__all__ = ["ERR_SLOT", "FORMS", "adapter", "flatten_params", "jit_user", "shape_error"]

# The adapter types: "flat" maps (n*dim,) states to (n*dim,) values (flat states keep Numba's loops long when dim is
# small); "2d" (n, dim) -> (n, dim); "3d" (n, dim) -> (n, dim, m); "event" (n, dim) -> (n,), one value per path.
FORMS = {
    "flat": F64_1(types.float64, F64_1, FLAT),
    "2d": F64_2(types.float64, F64_2, FLAT),
    "3d": F64_3(types.float64, F64_2, FLAT),
    "event": F64_1(types.float64, F64_2, FLAT),
    # the same with one time per row, an (n, 1) column (per-path adaptive steps: sdekit.schemes._paths)
    "2d_t": F64_2(F64_2, F64_2, FLAT),
    "3d_t": F64_3(F64_2, F64_2, FLAT),
}
# Error slots appended to the flat params: per adapter [flag, rows of the call, ndim, shape[:3]].
ERR_SLOT = 6


# --------------------------------------------------------------------------- params
def flatten_params(params) -> tuple[np.ndarray, tuple]:
    """``(flat float64 array, layout)``; the layout fixes the unpacker's code.

    The layout mirrors the params: a number is ``()``, an array its shape, and a tuple or record (see
    :mod:`sdekit.params`) the pair ``(class, layouts of its entries)``. It holds classes and shapes only, so
    new values of the same layout reuse what was compiled for it.
    """
    parts = []

    def layout_of(v, path):
        if isinstance(v, tuple):
            cls = type(v) if is_record(v) else tuple
            names = v._fields if is_record(v) else [f"[{i}]" for i in range(len(v))]
            return cls, tuple(layout_of(e, f"{path}.{n}" if is_record(v) else f"{path}{n}")
                              for n, e in zip(names, v, strict=True))
        if type(v).__module__.startswith("torch"):
            raise ValueError(f"`{path}` is a torch tensor; solve with backend='torch', or pass a NumPy array "
                             "(tensor.detach().cpu().numpy()).")
        if isinstance(v, numbers.Real) or np.ndim(v) == 0:
            parts.append(np.array([float(v)]))
            return ()
        a = np.ascontiguousarray(v, dtype=np.float64)
        parts.append(a.ravel())
        return a.shape

    layout = layout_of(params, "params")
    flat = np.concatenate(parts) if parts else np.zeros(0)
    return np.ascontiguousarray(flat), layout


def layout_size(layout) -> int:
    """How many numbers of the flat array a layout (of :func:`flatten_params`) takes."""
    if layout and isinstance(layout[0], type):
        return sum(layout_size(entry) for entry in layout[1])
    return int(np.prod(layout, dtype=np.int64))


def _unpack_expression(layout) -> tuple[str, dict]:
    """``(expression, classes)``: Python (and Numba) source rebuilding the params from ``flat``, and the record
    classes it names (``{name: class}``)."""
    classes: dict = {}
    offset = 0

    def expression(node):
        nonlocal offset
        if node and isinstance(node[0], type):
            items = "".join(expression(entry) + ", " for entry in node[1])
            if node[0] is tuple:
                return f"({items})"
            name = next((n for n, c in classes.items() if c is node[0]), f"Record{len(classes)}")
            classes[name] = node[0]
            return f"{name}({items})"
        if node == ():
            offset += 1
            return f"flat[{offset - 1}]"
        size = int(np.prod(node))
        offset += size
        return f"flat[{offset - size}:{offset}].reshape({tuple(int(s) for s in node)!r})"

    return expression(layout), classes


def _describe_layout(layout):
    """The layout with its record classes named (module, name, fields): a stable part of a cache key."""
    if layout and isinstance(layout[0], type):
        cls = layout[0]
        name = "tuple" if cls is tuple else (cls.__module__, cls.__qualname__, cls._fields)
        return (name, tuple(_describe_layout(entry) for entry in layout[1]))
    return layout


# --------------------------------------------------------------------------- frozen globals
def _fingerprint(v):
    """A comparable snapshot of a value Numba freezes into compiled code (numbers, arrays, tuples), else None."""
    if isinstance(v, bool | numbers.Number | np.generic):
        return ("n", type(v).__name__, repr(v))
    if isinstance(v, np.ndarray):
        if v.dtype.kind not in "biufc":
            return None
        return ("a", v.dtype.str, v.shape, hashlib.blake2b(np.ascontiguousarray(v).tobytes(), digest_size=16).digest())
    if isinstance(v, tuple) and v:
        parts = tuple(_fingerprint(e) for e in v)
        return None if any(p is None for p in parts) else ("t", parts)
    return None


def frozen_values(fn, depth: int = 3):
    """``({name: fingerprint}, dispatchers)``: the numeric globals and closure values ``fn`` reads (and those of
    the functions it calls, ``depth`` levels down), which Numba compiles in as constants, and the Numba
    dispatchers met on the way (they must recompile when a value changes)."""
    values: dict = {}
    dispatchers: list = []
    seen: set = set()

    def visit(f, prefix, level):
        if isinstance(f, numba.core.dispatcher.Dispatcher):
            if id(f) in seen:
                return
            seen.add(id(f))
            dispatchers.append(f)
            f = f.py_func
        if not inspect.isfunction(f) or id(f) in seen or level > depth:
            return
        seen.add(id(f))
        g = f.__globals__
        items = [(n, g[n]) for n in sorted(_codegen.code_names(f.__code__)) if n in g]
        for n, cell in zip(f.__code__.co_freevars, f.__closure__ or (), strict=False):
            try:
                items.append((n, cell.cell_contents))
            except ValueError:
                continue
        for n, v in items:
            fp = _fingerprint(v)
            if fp is not None:
                values[prefix + n] = fp
            elif inspect.isfunction(v) or isinstance(v, numba.core.dispatcher.Dispatcher):
                visit(v, f"{prefix}{n}.", level + 1)

    visit(fn, "", 0)
    return values, dispatchers


def _describe(fp):
    return fp[2] if fp and fp[0] == "n" else "an array" if fp and fp[0] == "a" else "a tuple" if fp else "nothing"


_ADAPTERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_USER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def jit_user(fn, name: str):
    """``(dispatcher, rebuilt)``: ``njit(fn)`` (``fn`` itself if it is a dispatcher), made once per function and
    made again when a numeric global or closure value it reads has changed since (see :func:`frozen_values`).

    Numba compiles such values in as constants; on a change this warns once, naming the variable and suggesting
    ``params`` (read at run time, no recompilation), and recompiles the dispatchers met on the way.
    """
    if fn not in _USER and inspect.isfunction(fn):  # checked once per function (a compiled one passed)
        params = list(inspect.signature(fn).parameters.values())
        extra = [q.name for q in params[3:] if q.kind not in (q.VAR_POSITIONAL, q.VAR_KEYWORD)]
        if extra:
            raise ValueError(f"`{name}` has parameters beyond (t, x, p): {', '.join(extra)}; the numba backend calls it "
                             "with three arguments and cannot compile their defaults. Read such values from `params` "
                             "(or from an enclosing function's variables), or use backend='numpy'.")
    frozen, dispatchers = frozen_values(fn)
    entry = _USER.get(fn)
    if entry is not None and entry[0] == frozen:
        return entry[1], False
    if entry is not None:
        old = entry[0]
        changed = sorted(k for k in frozen.keys() | old.keys() if frozen.get(k) != old.get(k))
        what = ", ".join(f"`{k}` ({_describe(old.get(k))} -> {_describe(frozen.get(k))})" for k in changed[:3])
        warnings.warn(
            f"`{name}` reads {what}, changed since Numba compiled it (Numba freezes globals and closure values); "
            "recompiling. Pass values that change through `params` (read at run time, no recompilation).",
            RuntimeWarning, stacklevel=5,
        )
        for d in dispatchers:
            d.recompile()
    # called only from its adapters (compiled into them): no Python or C entry points to build
    user = fn if isinstance(fn, numba.core.dispatcher.Dispatcher) else njit(no_cpython_wrapper=True, no_cfunc_wrapper=True)(fn)
    _USER[fn] = (frozen, user)
    return user, entry is not None


# --------------------------------------------------------------------------- broadcasting (library code, cached)
# The adapters call these to check a result and broadcast it to (n, dim) rows or (n, dim, m) matrices, trailing
# axes aligned as in NumPy. They are compiled once per installation for each result type met (dtype, layout) and
# cached on disk, so that an adapter compiles little more than the user's function. A result that does not
# broadcast is flagged in ``flat[base:base + ERR_SLOT]`` (see :func:`shape_error`) and comes back as NaN.
@njit(cache=True)
def flag_shape(flat, base, n, ndim, s0, s1, s2):
    """Record a rejected result: ``flat[base:base + ERR_SLOT] = [1, n, ndim, shape[:3]]``."""
    flat[base] = 1.0
    flat[base + 1] = n
    flat[base + 2] = ndim
    flat[base + 3] = s0
    flat[base + 4] = s1
    flat[base + 5] = s2


@njit(cache=True)
def rows_from_number(v, n, dim):
    out = np.empty((n, dim))
    for a in range(n):
        for c in range(dim):
            out[a, c] = v
    return out


@njit(cache=True)
def rows_from_1d(r, n, dim, flat, base):
    k = r.shape[0]
    if k != 1 and k != dim:
        flag_shape(flat, base, n, 1, k, 0, 0)
        return rows_from_number(np.nan, n, dim)
    out = np.empty((n, dim))
    for a in range(n):
        for c in range(dim):
            out[a, c] = r[c if k > 1 else 0]
    return out


@njit(cache=True)
def rows_from_2d(r, n, dim, flat, base):
    s0, s1 = r.shape
    if (s0 != 1 and s0 != n) or (s1 != 1 and s1 != dim):
        flag_shape(flat, base, n, 2, s0, s1, 0)
        return rows_from_number(np.nan, n, dim)
    out = np.empty((n, dim))
    for a in range(n):
        for c in range(dim):
            out[a, c] = r[a if s0 > 1 else 0, c if s1 > 1 else 0]
    return out


@njit(cache=True)
def matrix_from_number(v, n, dim, m):
    out = np.empty((n, dim, m))
    for a in range(n):
        for c in range(dim):
            for j in range(m):
                out[a, c, j] = v
    return out


@njit(cache=True)
def matrix_from_1d(r, n, dim, m, flat, base):
    k = r.shape[0]
    if k != 1 and k != m:
        flag_shape(flat, base, n, 1, k, 0, 0)
        return matrix_from_number(np.nan, n, dim, m)
    out = np.empty((n, dim, m))
    for a in range(n):
        for c in range(dim):
            for j in range(m):
                out[a, c, j] = r[j if k > 1 else 0]
    return out


@njit(cache=True)
def matrix_from_2d(r, n, dim, m, flat, base):
    s0, s1 = r.shape
    if (s0 != 1 and s0 != dim) or (s1 != 1 and s1 != m):
        flag_shape(flat, base, n, 2, s0, s1, 0)
        return matrix_from_number(np.nan, n, dim, m)
    out = np.empty((n, dim, m))
    for a in range(n):
        for c in range(dim):
            for j in range(m):
                out[a, c, j] = r[c if s0 > 1 else 0, j if s1 > 1 else 0]
    return out


@njit(cache=True)
def matrix_from_3d(r, n, dim, m, flat, base):
    s0, s1, s2 = r.shape
    if (s0 != 1 and s0 != n) or (s1 != 1 and s1 != dim) or (s2 != 1 and s2 != m):
        flag_shape(flat, base, n, 3, s0, s1, s2)
        return matrix_from_number(np.nan, n, dim, m)
    out = np.empty((n, dim, m))
    for a in range(n):
        for c in range(dim):
            for j in range(m):
                out[a, c, j] = r[a if s0 > 1 else 0, c if s1 > 1 else 0, j if s2 > 1 else 0]
    return out


@njit(cache=True)
def values_from_number(v, n):
    out = np.empty(n)
    for a in range(n):
        out[a] = v
    return out


@njit(cache=True)
def values_from_1d(r, n, flat, base):
    k = r.shape[0]
    if k != 1 and k != n:
        flag_shape(flat, base, n, 1, k, 0, 0)
        return values_from_number(np.nan, n)
    out = np.empty(n)
    for a in range(n):
        out[a] = r[a if k > 1 else 0]
    return out


@njit(cache=True)
def values_from_2d(r, n, flat, base):
    s0, s1 = r.shape
    if (s0 != 1 and s0 != n) or s1 != 1:
        flag_shape(flat, base, n, 2, s0, s1, 0)
        return values_from_number(np.nan, n)
    out = np.empty(n)
    for a in range(n):
        out[a] = r[a if s0 > 1 else 0, 0]
    return out


heal_module(sys.modules[__name__])


# --------------------------------------------------------------------------- adapters
def adapter(problem, name: str, form: str, dim: int, m: int, layout, slot: int = 0):
    """The compiled adapter of ``problem.<name>`` of type ``FORMS[form]``.

    Cached per user function (a new problem built from the same functions
    reuses it) and per shape/params layout in this process, and on disk
    (see :mod:`sdekit._codegen`) across processes; param values are read at
    run time. When a numeric global or closure value the function reads
    changes, :func:`jit_user` rebuilds it and the adapters are made again. The
    adapter checks the shape of every result; a result that does not
    broadcast to the target is flagged in the error slots after the params
    (``slot``) and read out by :func:`shape_error`.
    """
    fn = getattr(problem, name)
    key = (form, dim, m, layout, slot)
    user, rebuilt = jit_user(fn, name)
    cache = _ADAPTERS.setdefault(fn, {})
    if rebuilt:
        cache.clear()
    if key not in cache:
        cache[key] = _build(fn, user, name, form, dim, m, layout, slot)
    return cache[key]


def _build(fn, user, name, form, dim, m, layout, slot):
    params_expr, classes = _unpack_expression(layout)
    base = layout_size(layout) + ERR_SLOT * slot
    fp = _codegen.fingerprint(fn)
    key = None
    if fp is not None:
        key = hashlib.blake2b(repr((fp, form, dim, m, _describe_layout(layout), slot, _codegen.cache_salt())).encode(),
                              digest_size=16).hexdigest()

    def make_source():
        return _source(_return_type(user, name, params_expr, classes, layout_size(layout), FORMS[form].args[0]),
                       form.removesuffix("_t"), dim, m, params_expr,
                       base, name)

    try:
        module = _codegen.load_source(make_source, key, {"user": user, **classes})
        compiled = heal_cache(module.adapter)
        compiled.compile(FORMS[form].args)
        compiled.disable_compile()
    except NumbaError as exc:
        raise _compile_error(name, exc) from exc
    return compiled


def _return_type(user, name, params_expr, classes, n_numbers, t_type=types.float64):
    """The Numba type of the user's function's result for the adapter's argument types (type inference only:
    the function is compiled once, as part of its adapter). ``n_numbers``: the size of the flat params."""
    flat = np.zeros(n_numbers)
    example = eval(params_expr, {**classes, "flat": flat})  # noqa: S307 - the expression is generated from the layout
    args = (t_type, F64_2, numba.typeof(example))
    typing, target = cpu_target.typing_context, cpu_target.target_context
    typing.refresh()
    target.refresh()
    try:
        rt = typed_passes.type_inference_stage(typing, target, run_frontend(user.py_func), args, None).return_type
    except NumbaError as exc:
        raise _compile_error(name, exc) from exc
    dtype = rt.dtype if isinstance(rt, types.Array) else rt
    if isinstance(dtype, types.Complex):
        raise ValueError(f"`{name}` returns complex values; sdekit integrates real states (split real and imaginary "
                         "parts into two components).")
    if not isinstance(dtype, types.Number | types.Boolean):
        raise ValueError(f"`{name}` returns {rt} in compiled code; it must return an array (or a number) "
                         "broadcastable to the state's shape.")
    return rt


def _compile_error(name, exc):
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    first = next((ln for ln in lines if not ln.startswith(("Failed in", "During", "File"))), lines[0] if lines else "")
    return ValueError(
        f"`{name}` could not be compiled by Numba: {first} Write it with NumPy operations and "
        "sdekit.ops functions, or pass backend='numpy', which runs any Python function."
    )


def _source(rt, form, dim, m, params_expr, base, name):
    """The Python source of one adapter, specialised to the result type ``rt`` of the user's function."""
    rank = rt.ndim if isinstance(rt, types.Array) else 0
    target_rank = {"3d": 3, "event": 1}.get(form, 2)
    n_expr, x_arg = (f"x.shape[0] // {dim}", f"x.reshape((n, {dim}))") if form == "flat" else ("x.shape[0]", "x")
    body = [f"    n = {n_expr}", f"    r = user(t, {x_arg}, {params_expr})"]
    kind, extra = ("matrix", f"{dim}, {m}") if form == "3d" else ("rows", f"{dim}")
    if form == "event":
        kind, extra = "values", ""
        target_rank = 2  # an (n, 1) column is one value per path too
    sep = ", " if extra else ""
    if rank > target_rank:
        shape = ", ".join(f"r.shape[{i}]" for i in range(3))
        body += [f"    flag_shape(flat, {base}, n, {rank}, {shape})", f"    out = {kind}_from_number(np.nan, n{sep}{extra})"]
    elif rank == 0:
        value = "r[()]" if isinstance(rt, types.Array) else "r"
        body += [f"    out = {kind}_from_number(1.0 * {value}, n{sep}{extra})"]
    else:
        if form == "flat" and rank == 2 and rt.layout == "C" and rt.dtype == types.float64:
            body += [f"    if r.shape[0] == n and r.shape[1] == {dim}:", "        return r.reshape(-1)"]  # no copy
        body += [f"    out = {kind}_from_{rank}d(r, n{sep}{extra}, flat, {base})"]
    body += ["    return out.reshape(-1)" if form == "flat" else "    return out"]
    return "\n".join([
        f"# sdekit adapter of `{name}` ({form}, result {rt}): generated, do not edit",
        "import numpy as np",
        "from numba import njit",
        "",
        "from sdekit.backends.numba_adapters import (flag_shape, matrix_from_1d, matrix_from_2d, matrix_from_3d,",
        "                                            matrix_from_number, rows_from_1d, rows_from_2d, rows_from_number,",
        "                                            values_from_1d, values_from_2d, values_from_number)",
        "",
        "",
        "@njit(cache=True)",
        "def adapter(t, x, flat):",
        *body,
        "",
        "",
        "__sdekit_complete__ = True",
        "",
    ])


def shape_error(flat, n_params, names, dim, m, forms):
    """The ValueError for the first adapter that flagged a result it could not broadcast (None if none did)."""
    for slot, name in enumerate(names):
        base = n_params + ERR_SLOT * slot
        if flat[base]:
            n, nd = int(flat[base + 1]), int(flat[base + 2])
            shape = tuple(int(v) for v in flat[base + 3 : base + 3 + min(nd, 3)]) + (("...",) if nd > 3 else ())
            target = (n, dim, dim if name == "jac" else m) if forms[slot].startswith("3d") else (n, dim)
            if forms[slot] == "event":
                target = (n,)
            return ValueError(
                f"`{name}` returned shape {shape} for x of shape ({n}, {dim}); it must broadcast to {target} "
                "(one row per path, trailing axes aligned)."
            )
    return None

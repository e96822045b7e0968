"""The CPU backend: the step functions compiled by Numba, paths on all cores.

Compilation is split so that a new problem compiles in about a second:

* the library kernels (every scheme's step loop, the Brownian tree, the
  adaptive integrator) are compiled once per installation, with fixed
  signatures, and cached on disk;
* a problem compiles only two small *adapters*, which call the user's
  function and broadcast its result to the canonical shape. They are passed
  to the kernels as first-class functions of one signature
  ``(t, x, flat_params) -> array``; the user's ``params`` tuple is flattened
  into one float64 array and rebuilt inside the adapter, so changing
  parameter values never recompiles anything.

A kernel call advances one sub-batch of a few hundred paths by a block of
steps; the user's functions are called on the whole sub-batch. Path ranges run
on ``numba.get_num_threads()`` threads; randomness is counter-based, so results
do not depend on the thread count or the split.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import numbers
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit, types
from numba.core.errors import NumbaError, NumbaIRAssumptionWarning, TypingError
from numba.extending import overload

from ..params import is_record
from ..schemes import _adaptive
from ..solution import Stats
from . import Inputs, Result, Work, fixed_step_stats, no_failures
from .numba_kernels import F64_1 as _F64_1
from .numba_kernels import F64_2 as _F64_2
from .numba_kernels import F64_3 as _F64_3
from .numba_kernels import FLAT as _FLAT
from .numba_kernels import FN2, UNKNOWN_STEP, fixed_step_kernel
from .numba_kernels import cached_kernel as _cached_kernel
from .numpy_backend import NumpyBackend, run_exponential

# Numba's internal IR checks warn about our overloads' inlined code; the warnings are not actionable.
warnings.filterwarnings("ignore", category=NumbaIRAssumptionWarning)

# --------------------------------------------------------------------------- kernels
_integrate_path = njit(_adaptive.integrate_path)


@_cached_kernel(
    types.void(FN2, _FLAT, _F64_2, types.float64[::1], types.float64[::1], types.float64[::1], _F64_2,
               types.float64, types.float64, _F64_2, types.int64, types.int64, types.float64, types.float64,
               types.int64, types.float64[::1], _F64_3, types.float64[::1], types.int64[::1], types.int64[::1]),
    nogil=True,
)
def _adaptive_range(f, p, A, b, e, c, P, t0, t1, x0, lo, hi, rtol, atol, max_steps, save_t, out, fail_t,
                    codes, totals):
    counts = np.zeros(3, dtype=np.int64)
    dim = x0.shape[1]
    for i in range(lo, hi):
        xi = np.empty((1, dim))
        r = i if x0.shape[0] > 1 else 0
        for k in range(dim):
            xi[0, k] = x0[r, k]
        res = np.full((save_t.shape[0], dim), np.nan)
        code, t_end = _integrate_path(f, p, A, b, e, c, P, t0, t1, xi, rtol, atol, max_steps, save_t, res, counts)
        for j in range(save_t.shape[0]):
            for k in range(dim):
                out[j, i, k] = res[j, k]
        for k in range(3):
            totals[k] += counts[k]
        if code != 0:
            fail_t[i] = t_end
            codes[i] = code


@_cached_kernel(_F64_1(types.float64, _F64_1, _FLAT))
def _zero_diffusion(t, x, p):
    return np.zeros(x.shape[0])


# --------------------------------------------------------------------------- adapters
def fill(out, r):
    """``out[...] = r`` with broadcasting (Numba: plain loops, fast to compile)."""
    out[...] = r


@overload(fill, inline="always")
def _ov_fill(out, r):
    nd, rd = out.ndim, getattr(r, "ndim", 0)
    if rd == 0:
        def f0(out, r):
            o = out.reshape(-1)
            for i in range(o.shape[0]):
                o[i] = r
        return f0
    if nd == 2 and rd == 1:
        def f21(out, r):
            w = r.shape[0] > 1
            for a in range(out.shape[0]):
                for c in range(out.shape[1]):
                    out[a, c] = r[c if w else 0]
        return f21
    if nd == 2:
        def f22(out, r):
            ra, rc = r.shape[0] > 1, r.shape[1] > 1
            for a in range(out.shape[0]):
                for c in range(out.shape[1]):
                    out[a, c] = r[a if ra else 0, c if rc else 0]
        return f22
    if rd == 2:
        def f32(out, r):
            rc, rj = r.shape[0] > 1, r.shape[1] > 1
            for a in range(out.shape[0]):
                for c in range(out.shape[1]):
                    for j in range(out.shape[2]):
                        out[a, c, j] = r[c if rc else 0, j if rj else 0]
        return f32

    def f33(out, r):
        ra, rc, rj = r.shape[0] > 1, r.shape[1] > 1, r.shape[2] > 1
        for a in range(out.shape[0]):
            for c in range(out.shape[1]):
                for j in range(out.shape[2]):
                    out[a, c, j] = r[a if ra else 0, c if rc else 0, j if rj else 0]
    return f33


def as_flat(r, n, dim):
    """``r`` broadcast to (n, dim) and flattened; a view when ``r`` already has that shape."""
    out = np.empty(n * dim)
    fill(out.reshape((n, dim)), r)
    return out


@overload(as_flat, inline="always")
def _ov_as_flat(r, n, dim):
    if getattr(r, "ndim", 0) == 2 and getattr(r, "layout", "") == "C":
        def view_or_copy(r, n, dim):
            if r.shape[0] == n and r.shape[1] == dim:
                return r.reshape(-1)
            out = np.empty(n * dim)
            fill(out.reshape((n, dim)), r)
            return out
        return view_or_copy

    def copy(r, n, dim):
        out = np.empty(n * dim)
        fill(out.reshape((n, dim)), r)
        return out
    return copy


def bad_shape(r, target):
    """True unless ``r`` broadcasts to ``target`` in the NumPy sense (trailing axes aligned, each 1 or equal)."""
    shape = np.shape(r)
    if len(shape) > len(target):
        return True
    return any(s not in (1, t) for s, t in zip(shape[::-1], target[::-1], strict=False))


@overload(bad_shape, inline="always")
def _ov_bad_shape(r, target):
    if isinstance(r, types.Array) and isinstance(r.dtype, types.Complex) or isinstance(r, types.Complex):
        raise TypingError("sdekit-complex: the function returns complex values")
    rd, nd = getattr(r, "ndim", 0), len(target)
    if rd == 0:
        return lambda r, target: False
    if rd > nd:
        return lambda r, target: True
    off = nd - rd

    def impl(r, target):
        s = r.shape
        for i in range(rd):
            if s[i] != 1 and s[i] != target[off + i]:
                return True
        return False
    return impl


# Error slots appended to the flat params: per adapter [flag, rows of the call, ndim, shape[:3]].
ERR_SLOT = 6


def _flag(flat, base, n, r):
    """Record a rejected result: ``flat[base:base + ERR_SLOT] = [1, n, r.ndim, r.shape[:3]]``."""
    shape = np.shape(r)
    flat[base : base + 3] = (1.0, n, len(shape))
    for i in range(min(3, len(shape))):
        flat[base + 3 + i] = shape[i]


@overload(_flag, inline="always")
def _ov_flag(flat, base, n, r):
    rd = getattr(r, "ndim", 0)

    def impl(flat, base, n, r):
        flat[base] = 1.0
        flat[base + 1] = n
        flat[base + 2] = rd
        if rd > 0:
            s = r.shape
            for i in range(min(3, rd)):
                flat[base + 3 + i] = s[i]
    return impl


def shape_error(flat, n_params, names, dim, m, forms):
    """The ValueError for the first adapter that flagged a result it could not broadcast (None if none did)."""
    for slot, name in enumerate(names):
        base = n_params + ERR_SLOT * slot
        if flat[base]:
            n, nd = int(flat[base + 1]), int(flat[base + 2])
            shape = tuple(int(v) for v in flat[base + 3 : base + 3 + min(nd, 3)]) + (("...",) if nd > 3 else ())
            target = (n, dim, m) if forms[slot] == "3d" else (n, dim)
            return ValueError(
                f"`{name}` returned shape {shape} for x of shape ({n}, {dim}); it must broadcast to {target} "
                "(one row per path, trailing axes aligned)."
            )
    return None


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


def _layout_size(layout) -> int:
    """How many numbers of the flat array a layout (of :func:`flatten_params`) takes."""
    if layout and isinstance(layout[0], type):
        return sum(_layout_size(entry) for entry in layout[1])
    return int(np.prod(layout, dtype=np.int64))


def _unpacker(layout):
    """A jitted ``flat -> params`` for one layout: numbers, arrays, and the tuples and records holding them."""
    classes: dict = {}
    offset = 0

    def expression(node):
        nonlocal offset
        if node and isinstance(node[0], type):
            items = "".join(expression(entry) + ", " for entry in node[1])
            if node[0] is tuple:
                return f"({items})"
            name = classes.setdefault(node[0], f"Record{len(classes)}")
            return f"{name}({items})"
        if node == ():
            offset += 1
            return f"flat[{offset - 1}]"
        size = int(np.prod(node))
        offset += size
        return f"flat[{offset - size}:{offset}].reshape({tuple(int(s) for s in node)!r})"

    body = expression(layout)
    namespace: dict = {name: cls for cls, name in classes.items()}
    exec(f"def unpack(flat):\n    return {body}\n", namespace)  # noqa: S102 - generated from the layout only
    return njit(namespace["unpack"])


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


def _code_names(code):
    names = set(code.co_names)
    for c in code.co_consts:
        if inspect.iscode(c):
            names |= _code_names(c)
    return names


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
        items = [(n, g[n]) for n in sorted(_code_names(f.__code__)) if n in g]
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
    user = fn if isinstance(fn, numba.core.dispatcher.Dispatcher) else njit(fn)
    _USER[fn] = (frozen, user)
    return user, entry is not None


def adapter(problem, name: str, form: str, dim: int, m: int, layout, slot: int = 0):
    """Compile ``problem.<name>`` into an adapter of type ``form`` ("flat", "2d", "3d").

    Cached per user function (a new problem built from the same functions
    reuses it) and per shape/params layout; param values are read at run
    time. When a numeric global or closure value the function reads changes,
    :func:`jit_user` rebuilds it and the adapters are made again. The adapter
    checks the shape of every result; a result that does not broadcast to the
    target is flagged in the error slots after the params (``slot``) and read
    out by :func:`shape_error`.
    """
    fn = getattr(problem, name)
    key = (form, dim, m, layout, slot)
    user, rebuilt = jit_user(fn, name)
    cache = _ADAPTERS.setdefault(fn, {})
    if rebuilt:
        cache.clear()
    if key in cache:
        return cache[key]
    unpack = _unpacker(layout)
    base = _layout_size(layout) + ERR_SLOT * slot
    try:
        if form == "3d":
            @njit(_F64_3(types.float64, _F64_2, _FLAT))
            def ad(t, x, flat):
                n = x.shape[0]
                out = np.empty((n, dim, m))
                r = user(t, x, unpack(flat))
                if bad_shape(r, (n, dim, m)):
                    _flag(flat, base, n, r)
                    out[...] = np.nan
                else:
                    fill(out, r)
                return out
        elif form == "2d":
            @njit(_F64_2(types.float64, _F64_2, _FLAT))
            def ad(t, x, flat):
                n = x.shape[0]
                out = np.empty((n, dim))
                r = user(t, x, unpack(flat))
                if bad_shape(r, (n, dim)):
                    _flag(flat, base, n, r)
                    out[...] = np.nan
                else:
                    fill(out, r)
                return out
        else:
            @njit(_F64_1(types.float64, _F64_1, _FLAT))
            def ad(t, x, flat):
                n = x.shape[0] // dim
                r = user(t, x.reshape((n, dim)), unpack(flat))
                if bad_shape(r, (n, dim)):
                    _flag(flat, base, n, r)
                    return np.full(n * dim, np.nan)
                return as_flat(r, n, dim)
    except NumbaError as exc:
        if "sdekit-complex" in str(exc):
            raise ValueError(
                f"`{name}` returns complex values; sdekit integrates real states (split real and imaginary parts "
                "into two components)."
            ) from None
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        first = next((ln for ln in lines if not ln.startswith(("Failed in", "During", "File"))), lines[0] if lines else "")
        raise ValueError(
            f"`{name}` could not be compiled by Numba: {first} Write it with NumPy operations and "
            "sdekit.ops functions, or pass backend='numpy', which runs any Python function."
        ) from exc
    cache[key] = ad
    return ad


# --------------------------------------------------------------------------- drivers
def _ranges(n_paths, batch_max, n_threads):
    """Path ranges: whole sub-batches (of ``batch_max`` paths), a few per thread for load balance."""
    n_batches = math.ceil(n_paths / batch_max)
    per = max(1, math.ceil(n_batches / (4 * n_threads)))
    return [(lo, min(n_paths, lo + per * batch_max)) for lo in range(0, n_paths, per * batch_max)]


def _run_parallel(fn, ranges):
    n_threads = numba.get_num_threads()
    if n_threads == 1 or len(ranges) == 1:
        for r in ranges:
            fn(*r)
        return
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        for fut in [pool.submit(fn, lo, hi) for lo, hi in ranges]:
            fut.result()


def sub_batch(dim: int, m: int) -> int:
    """Paths per sub-batch: a few thousand numbers of state per call."""
    return int(max(1, min(2048, 16384 // max(dim, m, 1))))


def block_steps(n_batch: int, m: int, n_steps: int) -> int:
    """Steps per block of a sub-batch of ``n_batch`` paths: the block's increments stay within about 1 MiB."""
    return int(max(1, min(n_steps, (1 << 17) // max(1, n_batch * m))))


def compile_functions(inputs: Inputs, adaptive: bool):
    """Compile (or fetch) the adapters of the problem's functions; errors name the function.

    Returns ``(f, g, flat, check)``: ``flat`` holds the params and, after them, the adapters' error slots;
    ``check(flat)`` raises the shape error an adapter flagged (each thread works on its own copy of ``flat``).
    """
    flat, layout = flatten_params(inputs.params)
    n_params = flat.size
    problem, dim, m = inputs.problem, inputs.dim, inputs.noise_dim
    if adaptive:
        names, forms = ("rhs",), ("2d",)
    elif not problem.is_sde:
        names, forms = ("rhs",), ("flat",)
    elif problem.matrix_noise:
        names, forms = ("drift", "diffusion"), ("2d", "3d")
    else:
        names, forms = ("drift", "diffusion"), ("flat", "flat")
    adapters = [adapter(problem, name, form, dim, m, layout, slot)
                for slot, (name, form) in enumerate(zip(names, forms, strict=True))]
    f, g = adapters[0], (adapters[1] if len(adapters) > 1 else (None if adaptive else _zero_diffusion))
    flat = np.concatenate([flat, np.zeros(ERR_SLOT * len(names))])

    def check(thread_flat):
        err = shape_error(thread_flat, n_params, names, dim, m, forms)
        if err is not None:
            raise err

    return f, g, flat, check


class NumbaBackend(NumpyBackend):
    """The Numba backend: the options, inputs and entry probe of the NumPy backend, the integrators compiled."""

    name = "numba"

    def working_memory(self, *, adaptive, n_save, n_paths, dim, m, n_steps, itemsize, width, device, n_threads):
        """Per thread: the sub-batch's states and step temporaries, its Brownian blocks and tree walk (adaptive:
        one path's saved states and stages)."""
        if n_threads is None:
            n_threads = numba.get_num_threads()
        if adaptive:
            return n_threads * (2 * n_save * dim + 16 * dim) * 8
        batch = min(sub_batch(dim, m), n_paths)
        levels = max(1, math.ceil(math.log2(max(n_steps, 1)))) + 1
        blocks = 2 * block_steps(batch, m, max(1, n_steps)) * batch * m * 8
        return n_threads * (blocks + 4 * levels * batch * m * 8 + 24 * batch * width * 8)

    def run(self, inputs, work) -> Result:
        if work.scheme.kind == "semilinear":  # one evaluation of D per step on the whole batch: NumPy's loop
            return run_exponential(inputs, work, jit_user(inputs.problem.nonlinear, "nonlinear")[0])
        if work.scheme.adaptive:
            return run_adaptive(inputs, work)
        return run_fixed(inputs, work)


BACKEND = NumbaBackend()


def run_fixed(inputs: Inputs, work: Work) -> Result:
    f, g, flat, check = compile_functions(inputs, adaptive=False)
    problem, tab, m, n_steps, dim, x0 = inputs.problem, work.plan.tab, inputs.noise_dim, work.n_steps, inputs.dim, inputs.x0
    kernel, step_id = fixed_step_kernel(work.plan.step, bool(problem.is_sde and problem.matrix_noise))
    batch_max = sub_batch(dim, m)
    save_idx = np.ascontiguousarray(work.save_idx, dtype=np.int64)
    out = np.empty((save_idx.size, inputs.n_paths, dim))
    failure_time, failure_codes = no_failures(inputs.n_paths)

    def blocks(first_path, size, steps):
        """``(first_step, dw, levy_area)`` blocks of ``steps`` steps of the sub-batch (zero-width for an ODE)."""
        if not m:
            return ((first_step, np.zeros((steps, size, 0)), None) for first_step in range(0, n_steps, steps))
        return work.brownian.blocks(n_steps, paths=range(first_path, first_path + size), reverse=work.reverse,
                                    block_steps=steps, reuse_buffers=True)

    def integrate(lo, hi):
        thread_flat = flat.copy()
        for first_path in range(lo, hi, batch_max):
            size = min(batch_max, hi - first_path)
            x = np.array(np.broadcast_to(x0[first_path : first_path + size] if x0.shape[0] > 1 else x0, (size, dim)),
                         order="C")
            failed = np.zeros(size, dtype=np.bool_)
            next_save = 0
            if save_idx.size and save_idx[0] == 0:
                out[0, first_path : first_path + size] = x
                next_save = 1
            for first_step, dw, levy_area in blocks(first_path, size, block_steps(size, m, n_steps)):
                next_save = kernel(step_id, f, g, thread_flat, tab, x, first_step, first_step + dw.shape[0], work.t0,
                                   work.h, dw, dw if levy_area is None else levy_area, save_idx, next_save, out,
                                   first_path, failed, failure_time)
                if next_save == UNKNOWN_STEP:
                    raise ValueError(f"the numba kernel has no branch for the step {work.plan.step.__name__!r}; "
                                     "pass backend='numpy'.")
                check(thread_flat)

    _run_parallel(integrate, _ranges(inputs.n_paths, batch_max, numba.get_num_threads()))
    return Result(out, failure_time, failure_codes, fixed_step_stats(work, inputs.n_paths, m))


def run_adaptive(inputs: Inputs, work: Work) -> Result:
    f, _, flat, check = compile_functions(inputs, adaptive=True)
    tab, tol = work.scheme.tableau, work.tolerances
    error_weights = np.ascontiguousarray(tab.b - tab.b_err)
    out = np.full((work.save_t.size, inputs.n_paths, inputs.dim), np.nan)
    failure_time, failure_codes = no_failures(inputs.n_paths)
    ranges = _ranges(inputs.n_paths, 16, numba.get_num_threads())
    totals = np.zeros((len(ranges), 3), dtype=np.int64)  # per range: accepted, rejected, evaluations
    slot = {r: i for i, r in enumerate(ranges)}

    def integrate(lo, hi):
        thread_flat = flat.copy()
        _adaptive_range(f, thread_flat, tab.A, tab.b, error_weights, tab.c, tab.dense, work.t0, work.t1, inputs.x0,
                        lo, hi, tol.rtol, tol.atol, tol.max_steps, work.save_t, out, failure_time, failure_codes,
                        totals[slot[(lo, hi)]])
        check(thread_flat)

    _run_parallel(integrate, ranges)
    accepted, rejected, evaluations = (int(v) for v in totals.sum(axis=0))
    stats = Stats(accepted + rejected, accepted, rejected, evaluations, 0, inputs.n_paths)
    return Result(out, failure_time, failure_codes, stats)

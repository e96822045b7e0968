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

from .. import _bridge
from .._jitcache import heal_cache
from ..schemes import _adaptive, _steps

# Numba's internal IR checks warn about our overloads' inlined code; the warnings are not actionable.
warnings.filterwarnings("ignore", category=NumbaIRAssumptionWarning)

_F64_1 = types.float64[::1]
_F64_2 = types.float64[:, ::1]
_F64_3 = types.float64[:, :, ::1]
_FLAT = types.float64[::1]
# Adapter types: "flat" maps (n*dim,) states to (n*dim,) values; "2d" (n, dim) -> (n, dim);
# "3d" (n, dim) -> (n, dim, m). Flat states keep Numba's loops long when dim is small.
FN1 = types.FunctionType(_F64_1(types.float64, _F64_1, _FLAT))
FN2 = types.FunctionType(_F64_2(types.float64, _F64_2, _FLAT))
FN3 = types.FunctionType(_F64_3(types.float64, _F64_2, _FLAT))

EULER, EULER_HEUN, MILSTEIN, MILSTEIN_GENERAL, SRA, SRI, ERK, SRIW1 = range(8)
SCHEME_ID = {
    _steps.euler: EULER, _steps.euler_heun: EULER_HEUN, _steps.milstein: MILSTEIN,
    _steps.milstein_general: MILSTEIN_GENERAL, _steps.sra: SRA, _steps.sri: SRI, _steps.erk: ERK,
    _steps.sriw1: SRIW1,
}

_euler = njit(_steps.euler)
_euler_heun = njit(_steps.euler_heun)
_milstein = njit(_steps.milstein)
_milstein_general = njit(_steps.milstein_general)
_sra = njit(_steps.sra)
_sri = njit(_steps.sri)
_sriw1 = njit(_steps.sriw1)
_erk = njit(_steps.erk)


# --------------------------------------------------------------------------- kernels
def _cached_kernel(sig, **options):
    """``njit(sig, cache=True, **options)`` whose disk cache discards an unreadable entry and recompiles."""
    def deco(fn):
        d = heal_cache(njit(cache=True, **options)(fn))
        d.compile(sig)
        d.disable_compile()
        return d
    return deco


@njit(inline="always")
def _commit(x, xn, t_end, lo, failed, fail_t):
    """Copy the new states into ``x``; a path that turns non-finite is frozen at NaN."""
    nb, dim = x.shape
    for a in range(nb):
        bad = failed[a]
        if not bad:
            for c in range(dim):
                x[a, c] = xn[a, c]
                if not math.isfinite(xn[a, c]):
                    bad = True
            if bad:
                failed[a] = True
                fail_t[lo + a] = t_end
        if bad:
            for c in range(dim):
                x[a, c] = np.nan


@njit(inline="always")
def _save(x, k, save_idx, si, out, lo):
    if si < save_idx.shape[0] and save_idx[si] == k + 1:
        for a in range(x.shape[0]):
            for c in range(x.shape[1]):
                out[si, lo + a, c] = x[a, c]
        return si + 1
    return si


def _block_signature(fn_f, fn_g):
    return types.int64(
        types.int64, fn_f, fn_g, _FLAT, _F64_2, _F64_2, types.int64, types.int64, types.float64, types.float64,
        _F64_3, _F64_3, types.int64[::1], types.int64, _F64_3, types.int64, types.boolean[::1], types.float64[::1],
    )


@_cached_kernel(_block_signature(FN1, FN1), nogil=True)
def _block_diagonal(sid, f, g, p, tab, x, k0, k1, t0, h, dw, hh, save_idx, si, out, lo, failed, fail_t):
    """Steps ``k0..k1-1`` of a sub-batch with diagonal-shaped noise (or an ODE); returns the next save slot.

    The steps run on flat (n*dim,) views; scalar noise (m = 1) is expanded
    to every component.
    """
    nb, dim = x.shape
    m = dw.shape[2]
    xf = x.reshape(-1)
    dx = np.zeros(nb * dim)
    hx = np.zeros(nb * dim)
    for k in range(k0, k1):
        t = t0 + k * h
        if m == dim:
            d, e = dw[k - k0].reshape(-1), hh[k - k0].reshape(-1)
        else:
            if m == 1:
                for a in range(nb):
                    for c in range(dim):
                        dx[a * dim + c] = dw[k - k0, a, 0]
                        hx[a * dim + c] = hh[k - k0, a, 0]
            d, e = dx, hx
        if sid == EULER:
            xn = _euler(f, g, p, tab, t, xf, h, d, e)
        elif sid == EULER_HEUN:
            xn = _euler_heun(f, g, p, tab, t, xf, h, d, e)
        elif sid == MILSTEIN:
            xn = _milstein(f, g, p, tab, t, xf, h, d, e)
        elif sid == SRA:
            xn = _sra(f, g, p, tab, t, xf, h, d, e)
        elif sid == SRIW1:
            xn = _sriw1(f, g, p, tab, t, xf, h, d, e)
        elif sid == SRI:
            xn = _sri(f, g, p, tab, t, xf, h, d, e)
        else:
            xn = _erk(f, g, p, tab, t, xf, h, d, e)
        _commit(x, xn.reshape((nb, dim)), t + h, lo, failed, fail_t)
        si = _save(x, k, save_idx, si, out, lo)
    return si


@_cached_kernel(_block_signature(FN2, FN3), nogil=True)
def _block_matrix(sid, f, g, p, tab, x, k0, k1, t0, h, dw, hh, save_idx, si, out, lo, failed, fail_t):
    """Steps ``k0..k1-1`` of a sub-batch with (n, dim, m) diffusion; returns the next save slot."""
    for k in range(k0, k1):
        t = t0 + k * h
        d, e = dw[k - k0], hh[k - k0]
        if sid == EULER:
            xn = _euler(f, g, p, tab, t, x, h, d, e)
        elif sid == EULER_HEUN:
            xn = _euler_heun(f, g, p, tab, t, x, h, d, e)
        elif sid == MILSTEIN_GENERAL:
            xn = _milstein_general(f, g, p, tab, t, x, h, d, e)
        else:
            xn = _sra(f, g, p, tab, t, x, h, d, e)
        _commit(x, xn, t + h, lo, failed, fail_t)
        si = _save(x, k, save_idx, si, out, lo)
    return si


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
    """``(flat float64 array, layout)``; the layout fixes the unpacker's code."""
    parts, layout = [], []
    for v in params:
        if isinstance(v, numbers.Real) or np.ndim(v) == 0:
            parts.append(np.array([float(v)]))
            layout.append(())
        else:
            a = np.ascontiguousarray(v, dtype=np.float64)
            parts.append(a.ravel())
            layout.append(a.shape)
    flat = np.concatenate(parts) if parts else np.zeros(0)
    return np.ascontiguousarray(flat), tuple(layout)


def _layout_size(layout) -> int:
    return int(sum(1 if s == () else int(np.prod(s)) for s in layout))


def _unpacker(layout):
    """A jitted ``flat -> params tuple`` for one layout (scalars and arrays)."""
    items, off = [], 0
    for shape in layout:
        if shape == ():
            items.append(f"flat[{off}]")
            off += 1
        else:
            n = int(np.prod(shape))
            items.append(f"flat[{off}:{off + n}].reshape({tuple(int(s) for s in shape)!r})")
            off += n
    body = "(" + "".join(i + ", " for i in items) + ")"
    ns: dict = {}
    exec(f"def unpack(flat):\n    return {body}\n", ns)  # noqa: S102 - generated from shapes only
    return njit(ns["unpack"])


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
def _ranges(n_paths, nb_max, n_threads):
    """Path ranges: whole sub-batches, a few per thread for load balance."""
    n_batches = math.ceil(n_paths / nb_max)
    per = max(1, math.ceil(n_batches / (4 * n_threads)))
    return [(lo, min(n_paths, lo + per * nb_max)) for lo in range(0, n_paths, per * nb_max)]


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


def block_steps(nb: int, m: int, n_steps: int) -> int:
    """Steps per block: the block's increments stay within about 1 MiB."""
    return int(max(1, min(n_steps, (1 << 17) // max(1, nb * m))))


def prepare(plan):
    """Compile (or fetch) the adapters of ``plan.problem``; errors name the function.

    Returns ``(f, g, flat, check)``: ``flat`` holds the params and, after them, the adapters' error slots;
    ``check(flat)`` raises the shape error an adapter flagged (each thread works on its own copy of ``flat``).
    """
    flat, layout = flatten_params(plan.problem.params)
    n_params = flat.size
    pr, dim, m = plan.problem, plan.dim, plan.m
    if plan.scheme.adaptive:
        names, forms = ("rhs",), ("2d",)
    elif not pr.is_sde:
        names, forms = ("rhs",), ("flat",)
    elif pr.matrix_noise:
        names, forms = ("drift", "diffusion"), ("2d", "3d")
    else:
        names, forms = ("drift", "diffusion"), ("flat", "flat")
    ads = [adapter(pr, nm, fm, dim, m, layout, slot) for slot, (nm, fm) in enumerate(zip(names, forms, strict=True))]
    f, g = ads[0], (ads[1] if len(ads) > 1 else (None if plan.scheme.adaptive else _zero_diffusion))
    flat = np.concatenate([flat, np.zeros(ERR_SLOT * len(names))])

    def check(fl):
        err = shape_error(fl, n_params, names, dim, m, forms)
        if err is not None:
            raise err

    return f, g, flat, check


def run_fixed(plan):
    f, g, flat, check = prepare(plan)
    kernel = _block_matrix if plan.problem.is_sde and plan.problem.matrix_noise else _block_diagonal
    sid = SCHEME_ID[plan.step]
    tab, m, n, dim = plan.tab, plan.m, plan.n_steps, plan.dim
    bm = plan.brownian
    if bm is not None:
        key, m0, L, h0, levy = bm._key, bm.base_steps, bm.level(n), bm.cell_length, bm.levy_area
    else:
        key, m0, L, h0, levy = np.uint64(0), 1, 0, 0.0, False
    nb_max = sub_batch(dim, m)
    save_idx = np.ascontiguousarray(plan.save_idx, dtype=np.int64)

    def work(lo, hi):
        fl = flat.copy()
        for b in range(lo, hi, nb_max):
            nb = min(nb_max, hi - b)
            kb = block_steps(nb, m, n)
            x = np.array(np.broadcast_to(plan.x0[b : b + nb] if plan.x0.shape[0] > 1 else plan.x0, (nb, dim)), order="C")
            dw = np.zeros((kb, nb, m))
            hh = np.zeros((kb, nb, m))
            state = _bridge.new_state(nb, m, L)
            if m:
                _bridge.start_paths(state, key, b, nb)
            failed = np.zeros(nb, dtype=np.bool_)
            si = 0
            if save_idx.size and save_idx[0] == 0:
                plan.out[0, b : b + nb] = x
                si = 1
            for k0 in range(0, n, kb):
                k1 = min(n, k0 + kb)
                if m:
                    _bridge.fill(state, k0, k1, m0, L, h0, plan.reverse, levy, dw, hh)
                si = kernel(sid, f, g, fl, tab, x, k0, k1, plan.t0, plan.h, dw, hh, save_idx, si, plan.out, b,
                            failed, plan.failure_time)
                check(fl)

    _run_parallel(work, _ranges(plan.n_paths, nb_max, numba.get_num_threads()))


def run_adaptive(plan):
    f, _, flat, check = prepare(plan)
    tab = plan.scheme.tableau
    e = np.ascontiguousarray(tab.b - tab.b_err)
    ranges = _ranges(plan.n_paths, 16, numba.get_num_threads())
    totals = np.zeros((len(ranges), 3), dtype=np.int64)
    slot = {r: i for i, r in enumerate(ranges)}

    def work(lo, hi):
        fl = flat.copy()
        _adaptive_range(f, fl, tab.A, tab.b, e, tab.c, tab.dense, plan.t0, plan.t1, plan.x0, lo, hi, plan.rtol,
                        plan.atol, plan.max_steps, plan.save_t, plan.out, plan.failure_time, plan.codes,
                        totals[slot[(lo, hi)]])
        check(fl)

    _run_parallel(work, ranges)
    return tuple(int(v) for v in totals.sum(axis=0))

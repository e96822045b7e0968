"""The compiled fixed-step kernels of the Numba backend: one per step function, compiled when first used.

Each kernel advances one sub-batch of paths by a block of steps with one step
function of :mod:`sdekit.schemes._steps`. It is made by a factory
(:func:`_diagonal_kernel`, :func:`_matrix_kernel`) from that step, compiled
with a fixed signature the first time a solve needs it, and cached on disk, so
that a solve compiles only the kernel it runs, once per installation (the
functions are written here, in a file, because Numba caches only functions
with a source file; each kernel gets a name of its own, so each has its own
cache entry). :func:`fixed_step_kernel` is the lookup: it raises for a step
without a kernel, and for a componentwise step given a diffusion matrix.

Failures are recorded per path: :func:`commit` stops a path whose new state is
not finite (its time and code, the step's ``nonfinite_code``, in the solve's
arrays), and with ``beta > 0`` the kernels apply the instability rule of the
explicit schemes (:mod:`sdekit.schemes._stability`: :func:`grown_rows` is its
trigger, :func:`judge_grown` its drift test, code UNSTABLE).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types

from .. import ops
from .._jitcache import heal_cache
from ..schemes import _stability, _steps

F64_1 = types.float64[::1]
F64_2 = types.float64[:, ::1]
F64_3 = types.float64[:, :, ::1]
FLAT = types.float64[::1]
# Adapter types: "flat" maps (n*dim,) states to (n*dim,) values; "2d" (n, dim) -> (n, dim);
# "3d" (n, dim) -> (n, dim, m). Flat states keep Numba's loops long when dim is small.
FN1 = types.FunctionType(F64_1(types.float64, F64_1, FLAT))
FN2 = types.FunctionType(F64_2(types.float64, F64_2, FLAT))
FN3 = types.FunctionType(F64_3(types.float64, F64_2, FLAT))

# The step functions with a kernel: DIAGONAL_STEPS take diagonal-shaped noise (n, dim) (or none), MATRIX_STEPS an
# (n, dim, m) diffusion matrix.
KERNEL_STEPS = (_steps.euler, _steps.euler_heun, _steps.milstein, _steps.milstein_general, _steps.sra, _steps.sri,
                _steps.sriw1, _steps.erk, _steps.skrock, _steps.srock)
# The drift-implicit steps: their kernels (_jacobian_kernel) work on (n, dim) states and take the drift's Jacobian.
JACOBIAN_STEPS = (_steps.implicit_euler, _steps.implicit_euler_heun, _steps.implicit_milstein,
                  _steps.implicit_milstein_general)
KERNEL_STEPS += JACOBIAN_STEPS
DIAGONAL_STEPS = frozenset(KERNEL_STEPS) - {_steps.milstein_general, _steps.implicit_milstein_general}
MATRIX_STEPS = frozenset({_steps.euler, _steps.euler_heun, _steps.milstein_general, _steps.sra, _steps.skrock, _steps.srock})
MATRIX_STEPS |= {_steps.implicit_euler, _steps.implicit_euler_heun, _steps.implicit_milstein_general}
for _step in KERNEL_STEPS:
    ops.jittable(_step)  # a kernel calls its step through the step's Python function (cached by reference)


class CachedKernel:
    """A Numba function compiled for one signature when first used, cached on disk (see :mod:`sdekit._jitcache`).

    Calling it calls the compiled function; :attr:`compiled` is the dispatcher itself (to pass it on as a
    first-class function).
    """

    def __init__(self, fn, sig, **options):
        self.py_func, self.signature, self.options = fn, sig, options
        self._compiled = None

    @property
    def compiled(self):
        if self._compiled is None:
            dispatcher = heal_cache(njit(cache=True, **self.options)(self.py_func), notice=True)
            dispatcher.compile(self.signature)
            dispatcher.disable_compile()
            self._compiled = dispatcher
        return self._compiled

    def __call__(self, *args):
        return self.compiled(*args)


def cached_kernel(sig, **options):
    """Decorator: ``fn`` as a :class:`CachedKernel` of signature ``sig`` (``njit`` ``options`` such as ``nogil``)."""
    return lambda fn: CachedKernel(fn, sig, **options)


_KERNELS: dict = {}


def fixed_step_kernel(step, matrix_noise: bool) -> CachedKernel:
    """The kernel that runs ``step`` on sub-batches (``matrix_noise``: with an (n, dim, m) diffusion).

    Raises ValueError for a step without a kernel, or a componentwise step given a diffusion matrix.
    """
    name = getattr(step, "__name__", repr(step))
    if step not in KERNEL_STEPS:
        raise ValueError(f"the numba backend has no compiled kernel for the step {name!r}; add it to KERNEL_STEPS in "
                         "sdekit/backends/numba_kernels.py, or pass backend='numpy'.")
    if matrix_noise and step not in MATRIX_STEPS:
        raise ValueError(f"the step {name!r} acts componentwise and cannot take a (dim, m) diffusion matrix.")
    if not matrix_noise and step not in DIAGONAL_STEPS:
        raise ValueError(f"the step {name!r} takes a (dim, m) diffusion matrix only.")
    key = (step, matrix_noise)
    if key not in _KERNELS:
        if step in JACOBIAN_STEPS:
            kernel = _jacobian_kernel(step)
            signature = _block_signature(FN2, FN3 if matrix_noise else FN2)
            signature = signature.return_type(*signature.args, FN3)
        else:
            kernel = (_matrix_kernel if matrix_noise else _diagonal_kernel)(step)
            signature = _block_signature(FN2, FN3) if matrix_noise else _block_signature(FN1, FN1)
        # its own name, so its own cache index: kernels of different steps never share (or race for) an entry
        kernel.__qualname__ = f"{kernel.__name__}_{name}{'_matrix' if matrix_noise and step in JACOBIAN_STEPS else ''}"
        _KERNELS[key] = CachedKernel(kernel, signature, nogil=True)
    return _KERNELS[key]


@cached_kernel(F64_3(types.float64, F64_2, FLAT))
def no_jacobian(t, x, p):
    """The Jacobian argument of a drift-implicit kernel when the problem has no ``jac`` (the step then takes
    finite differences of the drift and never calls it)."""
    return np.zeros((x.shape[0], x.shape[1], x.shape[1]))


@njit(inline="always")
def commit(x, x_next, t_end, lo, failed, failure_time, codes, nonfinite_code):
    """Copy the new states into ``x``; a path that turns non-finite fails with ``nonfinite_code`` (its time and code
    in ``failure_time``/``codes`` at ``lo + row``); a failed path is frozen at NaN."""
    nb, dim = x.shape
    for a in range(nb):
        bad = failed[a]
        if not bad:
            for c in range(dim):
                x[a, c] = x_next[a, c]
                if not math.isfinite(x_next[a, c]):
                    bad = True
            if bad:
                failed[a] = True
                failure_time[lo + a] = t_end
                codes[lo + a] = nonfinite_code
        if bad:
            for c in range(dim):
                x[a, c] = np.nan


@njit(inline="always")
def grown_rows(x_next, scale, failed, rows):
    """The live rows whose ``max|x|`` exceeds ``GROWTH`` times their reference ``scale`` (the instability rule of
    :mod:`sdekit.schemes._stability`, step 2's trigger), written to the start of ``rows``; returns their number. A
    zero scale is set to the row's first non-zero norm."""
    nb, dim = x_next.shape
    n = 0
    for a in range(nb):
        if failed[a]:
            continue
        norm = 0.0
        for c in range(dim):
            v = abs(x_next[a, c])
            if v > norm or v != v:  # a NaN stays (the row is then skipped, as NumPy's max over it is NaN)
                norm = v
        if not math.isfinite(norm):
            continue  # commit() records it
        if scale[a] == 0.0:
            scale[a] = norm
        elif norm > _stability.GROWTH * scale[a]:
            rows[n] = a
            n += 1
    return n


@njit(inline="always")
def gather(x, rows):
    """``x[rows]`` as a new C-contiguous array."""
    out = np.empty((rows.size, x.shape[1]))
    for i in range(rows.size):
        for c in range(x.shape[1]):
            out[i, c] = x[rows[i], c]
    return out


@njit(inline="always")
def judge_grown(h, beta, rows, old, new, f_old, f_new, scale, failed, failure_time, codes, lo, t_end):
    """The drift test of the instability rule on the grown ``rows``: unstable rows fail (code UNSTABLE at
    ``t_end``), the others take their new norm as reference scale."""
    for i in range(rows.size):
        dd = 0.0
        df = 0.0
        norm = 0.0
        for c in range(old.shape[1]):
            d = new[i, c] - old[i, c]
            dd += d * d
            df += d * (f_new[i, c] - f_old[i, c])
            norm = max(norm, abs(new[i, c]))
        a = rows[i]
        if _stability.secant_unstable(h, beta, df, dd):
            failed[a] = True
            failure_time[lo + a] = t_end
            codes[lo + a] = _stability.UNSTABLE
        else:
            scale[a] = norm


@njit(inline="always")
def save(x, k, save_idx, next_save, out, lo):
    """Store ``x`` after step ``k`` when that is the next save point; returns the next save slot."""
    if next_save < save_idx.shape[0] and save_idx[next_save] == k + 1:
        for a in range(x.shape[0]):
            for c in range(x.shape[1]):
                out[next_save, lo + a, c] = x[a, c]
        return next_save + 1
    return next_save


def _block_signature(fn_f, fn_g):
    return types.int64(
        fn_f, fn_g, FLAT, F64_2, F64_2, types.int64, types.int64, types.float64, types.float64,
        F64_3, F64_3, types.int64[::1], types.int64, F64_3, types.int64, types.boolean[::1], types.float64[::1],
        types.int64[::1], types.float64[::1], types.float64, types.int64,
    )


def _diagonal_kernel(step):
    """The kernel of ``step`` with diagonal-shaped noise (or an ODE)."""

    def block_diagonal(f, g, p, tab, x, k0, k1, t0, h, dw, levy_area, save_idx, next_save, out, lo, failed,
                       failure_time, codes, scale, beta, nonfinite_code):
        """Steps ``k0..k1-1`` of a sub-batch; returns the next save slot.

        The steps run on flat (n*dim,) views; scalar noise (m = 1) is expanded to every component. ``beta > 0``
        turns on the instability rule (:mod:`sdekit.schemes._stability`) with the rows' reference ``scale``.
        """
        nb, dim = x.shape
        m = dw.shape[2]
        xf = x.reshape(-1)
        grown = np.empty(nb, dtype=np.int64)
        dw_expanded = np.zeros(nb * dim)
        area_expanded = np.zeros(nb * dim)
        for k in range(k0, k1):
            t = t0 + k * h
            if m == dim:
                d, e = dw[k - k0].reshape(-1), levy_area[k - k0].reshape(-1)
            else:
                if m == 1:
                    for a in range(nb):
                        for c in range(dim):
                            dw_expanded[a * dim + c] = dw[k - k0, a, 0]
                            area_expanded[a * dim + c] = levy_area[k - k0, a, 0]
                d, e = dw_expanded, area_expanded
            x_next = step(f, g, p, tab, t, xf, h, d, e).reshape((nb, dim))
            if beta > 0.0:
                n_grown = grown_rows(x_next, scale, failed, grown)
                if n_grown:
                    rows = grown[:n_grown]
                    old, new = gather(x, rows), gather(x_next, rows)
                    f_old = f(t, old.reshape(-1), p).reshape(old.shape)
                    f_new = f(t, new.reshape(-1), p).reshape(old.shape)
                    judge_grown(h, beta, rows, old, new, f_old, f_new, scale, failed, failure_time, codes, lo, t + h)
            commit(x, x_next, t + h, lo, failed, failure_time, codes, nonfinite_code)
            next_save = save(x, k, save_idx, next_save, out, lo)
        return next_save

    return block_diagonal


def _matrix_kernel(step):
    """The kernel of ``step`` with an (n, dim, m) diffusion."""

    def block_matrix(f, g, p, tab, x, k0, k1, t0, h, dw, levy_area, save_idx, next_save, out, lo, failed,
                     failure_time, codes, scale, beta, nonfinite_code):
        """Steps ``k0..k1-1`` of a sub-batch; returns the next save slot (``beta``, ``scale``: as the diagonal
        kernel's)."""
        grown = np.empty(x.shape[0], dtype=np.int64)
        for k in range(k0, k1):
            t = t0 + k * h
            x_next = step(f, g, p, tab, t, x, h, dw[k - k0], levy_area[k - k0])
            if beta > 0.0:
                n_grown = grown_rows(x_next, scale, failed, grown)
                if n_grown:
                    rows = grown[:n_grown]
                    old, new = gather(x, rows), gather(x_next, rows)
                    judge_grown(h, beta, rows, old, new, f(t, old, p), f(t, new, p), scale, failed, failure_time,
                                codes, lo, t + h)
            commit(x, x_next, t + h, lo, failed, failure_time, codes, nonfinite_code)
            next_save = save(x, k, save_idx, next_save, out, lo)
        return next_save

    return block_matrix


def _jacobian_kernel(step):
    """The kernel of a drift-implicit ``step`` (:data:`JACOBIAN_STEPS`): (n, dim) states, the drift's Jacobian last.

    The diffusion is "2d" (diagonal-shaped; scalar noise stays one column, which the step broadcasts) or "3d". The
    instability rule (``scale``, ``beta``) is not applied: these steps are not in its table.
    """

    def block_jacobian(f, g, p, tab, x, k0, k1, t0, h, dw, levy_area, save_idx, next_save, out, lo, failed,
                       failure_time, codes, scale, beta, nonfinite_code, jac):
        """Steps ``k0..k1-1`` of a sub-batch; returns the next save slot."""
        for k in range(k0, k1):
            t = t0 + k * h
            x_next = step(f, g, p, tab, t, x, h, dw[k - k0], levy_area[k - k0], jac)
            commit(x, x_next, t + h, lo, failed, failure_time, codes, nonfinite_code)
            next_save = save(x, k, save_idx, next_save, out, lo)
        return next_save

    return block_jacobian

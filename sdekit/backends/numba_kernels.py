"""The compiled fixed-step kernels of the Numba backend: every step function, dispatched in one place.

Each kernel advances one sub-batch of paths by a block of steps. They are
compiled once per installation with fixed signatures and cached on disk (the
functions are written here, in a file, because Numba caches only functions
with a source file). The step to run is an integer argument, ``step_id``:
:data:`STEP_ID` maps each step function of :mod:`sdekit.schemes._steps` to
its id, each kernel has one branch per id it supports, and any other id makes
the kernel return :data:`UNKNOWN_STEP` before taking a step.
:func:`fixed_step_kernel` is the Python-side lookup and raises for a step
without a branch; a test runs every step of every registered scheme through it.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types

from .._jitcache import heal_cache
from ..schemes import _steps

F64_1 = types.float64[::1]
F64_2 = types.float64[:, ::1]
F64_3 = types.float64[:, :, ::1]
FLAT = types.float64[::1]
# Adapter types: "flat" maps (n*dim,) states to (n*dim,) values; "2d" (n, dim) -> (n, dim);
# "3d" (n, dim) -> (n, dim, m). Flat states keep Numba's loops long when dim is small.
FN1 = types.FunctionType(F64_1(types.float64, F64_1, FLAT))
FN2 = types.FunctionType(F64_2(types.float64, F64_2, FLAT))
FN3 = types.FunctionType(F64_3(types.float64, F64_2, FLAT))

# One id per step function; the kernels below have a branch for each (the matrix kernel for MATRIX_STEPS).
EULER, EULER_HEUN, MILSTEIN, MILSTEIN_GENERAL, SRA, SRI, SRIW1, ERK = range(8)
STEP_ID = {
    _steps.euler: EULER, _steps.euler_heun: EULER_HEUN, _steps.milstein: MILSTEIN,
    _steps.milstein_general: MILSTEIN_GENERAL, _steps.sra: SRA, _steps.sri: SRI, _steps.sriw1: SRIW1, _steps.erk: ERK,
}
# The steps that take an (n, dim, m) diffusion; the others act componentwise on (n, dim) noise.
MATRIX_STEPS = frozenset({EULER, EULER_HEUN, MILSTEIN_GENERAL, SRA})
# What a kernel returns, instead of the next save slot, for a step id it has no branch for.
UNKNOWN_STEP = -1

_euler = njit(_steps.euler)
_euler_heun = njit(_steps.euler_heun)
_milstein = njit(_steps.milstein)
_milstein_general = njit(_steps.milstein_general)
_sra = njit(_steps.sra)
_sri = njit(_steps.sri)
_sriw1 = njit(_steps.sriw1)
_erk = njit(_steps.erk)


def cached_kernel(sig, **options):
    """``njit(sig, cache=True, **options)`` whose disk cache discards an unreadable entry and recompiles."""
    def deco(fn):
        d = heal_cache(njit(cache=True, **options)(fn))
        d.compile(sig)
        d.disable_compile()
        return d
    return deco


def fixed_step_kernel(step, matrix_noise: bool):
    """``(kernel, step_id)``: the compiled kernel that runs ``step`` and the id to pass it.

    ``matrix_noise`` selects the kernel for an (n, dim, m) diffusion. Raises
    ValueError for a step without a compiled branch.
    """
    step_id = STEP_ID.get(step)
    name = getattr(step, "__name__", repr(step))
    if step_id is None:
        raise ValueError(f"the numba backend has no compiled branch for the step {name!r}; add it to STEP_ID and to "
                         "the kernels in sdekit/backends/numba_kernels.py, or pass backend='numpy'.")
    if matrix_noise:
        if step_id not in MATRIX_STEPS:
            raise ValueError(f"the step {name!r} acts componentwise and cannot take a (dim, m) diffusion matrix.")
        return block_matrix, step_id
    return block_diagonal, step_id


@njit(inline="always")
def commit(x, x_next, t_end, lo, failed, failure_time):
    """Copy the new states into ``x``; a path that turns non-finite is frozen at NaN."""
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
        if bad:
            for c in range(dim):
                x[a, c] = np.nan


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
        types.int64, fn_f, fn_g, FLAT, F64_2, F64_2, types.int64, types.int64, types.float64, types.float64,
        F64_3, F64_3, types.int64[::1], types.int64, F64_3, types.int64, types.boolean[::1], types.float64[::1],
    )


@cached_kernel(_block_signature(FN1, FN1), nogil=True)
def block_diagonal(step_id, f, g, p, tab, x, k0, k1, t0, h, dw, levy_area, save_idx, next_save, out, lo, failed,
                   failure_time):
    """Steps ``k0..k1-1`` of a sub-batch with diagonal-shaped noise (or an ODE).

    Returns the next save slot, or :data:`UNKNOWN_STEP` (nothing done) for a
    ``step_id`` without a branch. The steps run on flat (n*dim,) views; scalar
    noise (m = 1) is expanded to every component.
    """
    nb, dim = x.shape
    m = dw.shape[2]
    xf = x.reshape(-1)
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
        if step_id == EULER:
            x_next = _euler(f, g, p, tab, t, xf, h, d, e)
        elif step_id == EULER_HEUN:
            x_next = _euler_heun(f, g, p, tab, t, xf, h, d, e)
        elif step_id == MILSTEIN:
            x_next = _milstein(f, g, p, tab, t, xf, h, d, e)
        elif step_id == SRA:
            x_next = _sra(f, g, p, tab, t, xf, h, d, e)
        elif step_id == SRIW1:
            x_next = _sriw1(f, g, p, tab, t, xf, h, d, e)
        elif step_id == SRI:
            x_next = _sri(f, g, p, tab, t, xf, h, d, e)
        elif step_id == ERK:
            x_next = _erk(f, g, p, tab, t, xf, h, d, e)
        else:  # reached at the first step: nothing has been done
            return UNKNOWN_STEP
        commit(x, x_next.reshape((nb, dim)), t + h, lo, failed, failure_time)
        next_save = save(x, k, save_idx, next_save, out, lo)
    return next_save


@cached_kernel(_block_signature(FN2, FN3), nogil=True)
def block_matrix(step_id, f, g, p, tab, x, k0, k1, t0, h, dw, levy_area, save_idx, next_save, out, lo, failed,
                 failure_time):
    """Steps ``k0..k1-1`` of a sub-batch with (n, dim, m) diffusion; returns the next save slot, or
    :data:`UNKNOWN_STEP` (nothing done) for a ``step_id`` without a branch."""
    for k in range(k0, k1):
        t = t0 + k * h
        d, e = dw[k - k0], levy_area[k - k0]
        if step_id == EULER:
            x_next = _euler(f, g, p, tab, t, x, h, d, e)
        elif step_id == EULER_HEUN:
            x_next = _euler_heun(f, g, p, tab, t, x, h, d, e)
        elif step_id == MILSTEIN_GENERAL:
            x_next = _milstein_general(f, g, p, tab, t, x, h, d, e)
        elif step_id == SRA:
            x_next = _sra(f, g, p, tab, t, x, h, d, e)
        else:  # reached at the first step: nothing has been done
            return UNKNOWN_STEP
        commit(x, x_next, t + h, lo, failed, failure_time)
        next_save = save(x, k, save_idx, next_save, out, lo)
    return next_save

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

import math
import warnings
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit, types
from numba.core.errors import NumbaIRAssumptionWarning

from ..schemes import _adaptive
from ..schemes._stability import nonfinite_code
from ..solution import Stats
from . import Inputs, Result, Work, fixed_step_stats, no_failures, ode_per_path, rosenbrock
from .numba_adapters import ERR_SLOT, adapter, flatten_params, shape_error
from .numba_kernels import F64_1 as _F64_1
from .numba_kernels import F64_2 as _F64_2
from .numba_kernels import F64_3 as _F64_3
from .numba_kernels import FLAT as _FLAT
from .numba_kernels import FN2, JACOBIAN_STEPS, cached_kernel, fixed_step_kernel, no_jacobian
from .numpy_backend import NumpyBackend, run_exponential

__all__ = ["BACKEND", "NumbaBackend", "flatten_params"]

# Numba's internal IR checks warn about our overloads' inlined code; the warnings are not actionable.
warnings.filterwarnings("ignore", category=NumbaIRAssumptionWarning)

# --------------------------------------------------------------------------- kernels
_integrate_path = njit(_adaptive.integrate_path)


@cached_kernel(
    types.void(FN2, _FLAT, _F64_2, types.float64[::1], types.float64[::1], types.float64[::1], _F64_2,
               types.float64, types.float64, _F64_2, types.int64, types.int64, types.float64, types.float64,
               types.int64, types.float64[::1], _F64_3, types.float64[::1], types.int64[::1], types.int64[::1],
               types.int64[:, ::1]),
    nogil=True,
)
def _adaptive_range(f, p, A, b, e, c, P, t0, t1, x0, lo, hi, rtol, atol, max_steps, save_t, out, fail_t,
                    codes, totals, per_path):
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
            per_path[i, k] = counts[k]
        if code != 0:
            fail_t[i] = t_end
            codes[i] = code


@cached_kernel(_F64_1(types.float64, _F64_1, _FLAT))
def _zero_diffusion(t, x, p):
    return np.zeros(x.shape[0])


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


def compile_functions(inputs: Inputs, adaptive: bool, jacobian: bool = False):
    """Compile (or fetch) the adapters of the problem's functions; errors name the function.

    Returns ``(f, g, jac, flat, check)``: ``flat`` holds the params and, after them, the adapters' error slots;
    ``check(flat)`` raises the shape error an adapter flagged (each thread works on its own copy of ``flat``).
    ``jacobian``: the kernel of a drift-implicit step, which works on (n, dim) states ("2d" drift and diagonal
    diffusion) and takes the drift's Jacobian ``jac``, the "3d" adapter of ``problem.jac`` with ``m = dim`` (a
    placeholder of that type, never called, when the problem has none); otherwise ``jac`` is None.
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
    elif jacobian:
        names, forms = ("drift", "diffusion"), ("2d", "2d")
    else:
        names, forms = ("drift", "diffusion"), ("flat", "flat")
    user_jac = jacobian and problem.jac is not None
    if user_jac:
        names, forms = names + ("jac",), forms + ("3d",)
    adapters = [adapter(problem, name, form, dim, dim if name == "jac" else m, layout, slot)
                for slot, (name, form) in enumerate(zip(names, forms, strict=True))]
    f, g = adapters[0], (adapters[1] if len(adapters) > 1 else (None if adaptive else _zero_diffusion.compiled))
    jac = (adapters[-1] if user_jac else no_jacobian.compiled) if jacobian else None
    flat = np.concatenate([flat, np.zeros(ERR_SLOT * len(names))])

    def check(thread_flat):
        err = shape_error(thread_flat, n_params, names, dim, m, forms)
        if err is not None:
            raise err

    return f, g, jac, flat, check


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
        if work.path_plan is not None:
            from .paths import run_numba

            return run_numba(inputs, work)
        if work.scheme.kind == "semilinear":  # one evaluation of D per step on the whole batch: NumPy's loop
            return run_exponential(inputs, work, _nonlinear(inputs))
        if work.scheme.adaptive:
            return rosenbrock.run_numba(inputs, work) if rosenbrock.solves(work) else run_adaptive(inputs, work)
        return run_fixed(inputs, work)


BACKEND = NumbaBackend()


def _nonlinear(inputs: Inputs):
    """The semilinear problem's ``D`` through its compiled (disk-cached) adapter, as ``nonlinear(t, x, params)``
    on NumPy arrays for the exponential integrators' loop (which runs on all paths at once)."""
    flat, layout = flatten_params(inputs.params)
    n_params = flat.size
    compiled = adapter(inputs.problem, "nonlinear", "2d", inputs.dim, 0, layout)
    # the compiled entry point itself: no argument typing on each of the per-step calls
    entry = compiled.overloads[compiled.signatures[0]].entry_point
    flat = np.concatenate([flat, np.zeros(ERR_SLOT)])

    def nonlinear(t, x, params):
        result = entry(float(t), np.ascontiguousarray(x, dtype=np.float64), flat)
        if flat[n_params]:
            raise shape_error(flat, n_params, ("nonlinear",), inputs.dim, 0, ("2d",))
        return result

    return nonlinear


def run_fixed(inputs: Inputs, work: Work) -> Result:
    jacobian = work.plan.step in JACOBIAN_STEPS
    f, g, jac, flat, check = compile_functions(inputs, adaptive=False, jacobian=jacobian)
    extra = (jac,) if jacobian else ()  # the drift-implicit kernels take the Jacobian last
    problem, tab, m, n_steps, dim, x0 = inputs.problem, work.plan.tab, inputs.noise_dim, work.n_steps, inputs.dim, inputs.x0
    kernel = fixed_step_kernel(work.plan.step, bool(problem.is_sde and problem.matrix_noise)).compiled
    batch_max = sub_batch(dim, m)
    save_idx = np.ascontiguousarray(work.save_idx, dtype=np.int64)
    out = np.empty((save_idx.size, inputs.n_paths, dim))
    failure_time, failure_codes = no_failures(inputs.n_paths)
    nonfinite = nonfinite_code(work.plan.step)

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
            scale = np.abs(x).max(axis=1)  # the instability rule's reference scale per path
            next_save = 0
            if save_idx.size and save_idx[0] == 0:
                out[0, first_path : first_path + size] = x
                next_save = 1
            for first_step, dw, levy_area in blocks(first_path, size, block_steps(size, m, n_steps)):
                next_save = kernel(f, g, thread_flat, tab, x, first_step, first_step + dw.shape[0], work.t0,
                                   work.h, dw, dw if levy_area is None else levy_area, save_idx, next_save, out,
                                   first_path, failed, failure_time, failure_codes, scale, work.stability_boundary,
                                   nonfinite, *extra)
                check(thread_flat)

    _run_parallel(integrate, _ranges(inputs.n_paths, batch_max, numba.get_num_threads()))
    return Result(out, failure_time, failure_codes, fixed_step_stats(work, inputs.n_paths, m))


def run_adaptive(inputs: Inputs, work: Work) -> Result:
    f, _, _, flat, check = compile_functions(inputs, adaptive=True)
    tab, tol = work.scheme.tableau, work.tolerances
    error_weights = np.ascontiguousarray(tab.b - tab.b_err)
    out = np.full((work.save_t.size, inputs.n_paths, inputs.dim), np.nan)
    failure_time, failure_codes = no_failures(inputs.n_paths)
    ranges = _ranges(inputs.n_paths, 16, numba.get_num_threads())
    totals = np.zeros((len(ranges), 3), dtype=np.int64)  # per range: accepted, rejected, evaluations
    per_path = np.zeros((inputs.n_paths, 3), dtype=np.int64)
    slot = {r: i for i, r in enumerate(ranges)}

    def integrate(lo, hi):
        thread_flat = flat.copy()
        _adaptive_range(f, thread_flat, tab.A, tab.b, error_weights, tab.c, tab.dense, work.t0, work.t1, inputs.x0,
                        lo, hi, tol.rtol, tol.atol, tol.max_steps, work.save_t, out, failure_time, failure_codes,
                        totals[slot[(lo, hi)]], per_path)
        check(thread_flat)

    _run_parallel(integrate, ranges)
    accepted, rejected, evaluations = (int(v) for v in totals.sum(axis=0))
    stats = Stats(accepted + rejected, accepted, rejected, evaluations, 0, inputs.n_paths)
    return Result(out, failure_time, failure_codes, stats, ode_per_path(per_path, inputs.dim))

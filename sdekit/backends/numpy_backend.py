"""The readable reference backend: the step functions run on NumPy arrays.

Paths are processed in batches (bounded memory); the Brownian increments of
a batch come block by block from :meth:`BrownianPath.blocks
<sdekit.BrownianPath.blocks>`, so this backend sees exactly the noise the
Numba backend sees. The loop of the exponential
integrators (:mod:`sdekit.semilinear`) lives here too, written once for every
backend: :func:`integrate_exponential` takes the array operations it needs.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg.blas import daxpy

from .. import checks
from ..schemes import _adaptive, _stability
from ..schemes._stability import nonfinite_code
from ..semilinear import ORDERS, SemilinearODE, grid_weights
from ..solution import Stats
from . import Inputs, Options, Result, Work, fixed_step_stats, no_failures, ode_per_path, rosenbrock


def wrap(fn, target, name="drift"):
    """``fn`` with its result checked (real, broadcastable; on every call) and broadcast to the shape ``target(n)``."""

    def wrapped(t, x, p):
        r = fn(t, x, p)
        shape = target(x.shape[0])
        if isinstance(r, np.ndarray) and r.shape == shape and r.dtype.kind == "f":
            return r
        return checks.check_result(r, name, x.shape, shape)

    return wrapped


def _zero_diffusion(t, x, p):
    return np.zeros_like(x)


def batch_paths(n_paths: int, n_steps: int, m: int) -> int:
    """Paths per batch: all steps' increments of a batch stay within about 64 MiB."""
    per_path = max(1, (n_steps + 1) * max(m, 1) * 2)
    return max(1, min(n_paths, (1 << 23) // per_path))


def _batches(n_paths, n_steps, m):
    size = batch_paths(n_paths, n_steps, m)
    for lo in range(0, n_paths, size):
        yield lo, min(n_paths, lo + size)


class NumpyBackend:
    """The NumPy backend (and, through :class:`~sdekit.backends.numba_backend.NumbaBackend`, the checks of the
    Numba backend): float64 arrays on the CPU, the user's functions called as Python."""

    name = "numpy"

    def options(self, problem, x0, *, device=None, dtype=None, compile=False) -> Options:  # noqa: A002
        if device is not None or dtype is not None or compile:
            raise ValueError(
                f"`device`, `dtype` and `compile` apply to backend='torch'; backend={self.name!r} runs compiled "
                "Numba (or NumPy) on the CPU in float64."
            )
        for i, v in enumerate(problem.params):
            if checks.is_tensor(v):
                raise ValueError(
                    f"`params[{i}]` is a torch tensor; solve with backend='torch', or pass a NumPy array "
                    "(tensor.detach().cpu().numpy())."
                )
        return Options()

    def prepare(self, problem, x0, n_paths, options) -> Inputs:
        x0, n_paths = checks.initial_states(checks.x0_array(x0), n_paths)
        noise_dim = problem.noise_dim(x0.shape[1]) if problem.is_sde else 0
        return Inputs(problem, x0, n_paths, noise_dim, problem.params, options)

    def probe(self, inputs, t0) -> None:
        problem, params, dim = inputs.problem, inputs.params, inputs.dim
        if isinstance(problem, SemilinearODE):
            x = checks.probe_batch(inputs.x0, checks.probe_rows(dim, 0))
            values = checks.probe(problem.nonlinear, "nonlinear", t0, x, params, x.shape)
            checks.check_rows_independent(
                lambda v: checks.check_result(problem.nonlinear(t0, v, params), "nonlinear", v.shape, v.shape),
                "nonlinear", x, values, 1e-9,
            )
            return

        def evaluate(fn, name, x, target, extra):
            return checks.probe(fn, name, t0, x, params, target, extra)

        checks.check_functions(problem, inputs.x0, dim, inputs.noise_dim, evaluate)

    def working_memory(self, *, adaptive, n_save, n_paths, dim, m, n_steps, itemsize, width, device, n_threads):
        """A batch's Brownian blocks (at most all its steps) and the step's temporaries."""
        if adaptive:
            return 16 * dim * 8
        batch = batch_paths(n_paths, n_steps, m)
        return 3 * n_steps * batch * m * 8 + 24 * batch * width * 8

    def run(self, inputs, work) -> Result:
        if work.path_plan is not None:
            from .paths import run_numpy

            return run_numpy(inputs, work)
        if work.scheme.kind == "semilinear":
            return run_exponential(inputs, work, inputs.problem.nonlinear)
        if work.scheme.adaptive:
            return rosenbrock.run_numpy(inputs, work) if rosenbrock.solves(work) else run_adaptive(inputs, work)
        return run_fixed(inputs, work)


BACKEND = NumpyBackend()


def step_functions(problem, dim: int, m: int):
    """``(f, g)``: the drift (an ODE's ``rhs``) and the diffusion as the steps call them, each result checked and
    broadcast to ``(n, dim)`` (a matrix diffusion to ``(n, dim, m)``); an ODE's diffusion is zero."""
    f = wrap(problem.drift, lambda n: (n, dim), "drift" if m else "rhs")
    jac = getattr(problem, "jac", None)  # read by the drift-implicit steps (``_steps.drift_jacobian``)
    f.jacobian = None if jac is None else wrap(jac, lambda n: (n, dim, dim), "jac")
    if not m:
        return f, _zero_diffusion
    if problem.matrix_noise:
        return f, wrap(problem.diffusion, lambda n: (n, dim, m), "diffusion")
    return f, wrap(problem.diffusion, lambda n: (n, dim), "diffusion")


def run_fixed(inputs: Inputs, work: Work) -> Result:
    problem, dim, m = inputs.problem, inputs.dim, inputs.noise_dim
    f, g = step_functions(problem, dim, m)
    params, step, tab, h, n_steps = inputs.params, work.plan.step, work.plan.tab, work.h, work.n_steps
    save_idx = work.save_idx  # an int64 array (a list would hold one Python object per saved time)
    out = np.empty((save_idx.size, inputs.n_paths, dim))
    failure_time, failure_codes = no_failures(inputs.n_paths)
    beta, nonfinite = work.stability_boundary, nonfinite_code(step)
    for lo, hi in _batches(inputs.n_paths, n_steps, m):
        size = hi - lo
        x = np.array(np.broadcast_to(inputs.x0[lo:hi] if inputs.x0.shape[0] > 1 else inputs.x0, (size, dim)), order="C")
        if m:
            blocks = work.brownian.blocks(n_steps, paths=range(lo, hi), reverse=work.reverse)
        else:
            blocks = [(0, np.zeros((n_steps, size, 0)), None)]
        failed = np.zeros(size, dtype=bool)
        scale = np.abs(x).max(axis=1)  # the instability rule's reference scale per path
        any_failed = False
        next_save = 0
        if save_idx.size and save_idx[0] == 0:
            out[0, lo:hi] = x
            next_save = 1
        for first_step, dw, levy_area in blocks:
            if levy_area is None:  # the steps read no Lévy area then; zeros keep their signature
                levy_area = np.zeros_like(dw)
            for j in range(dw.shape[0]):
                k = first_step + j
                t = work.t0 + k * h
                x_next = np.array(step(f, g, params, tab, t, x, h, dw[j], levy_area[j]))
                if beta > 0.0 and check_growth(f, params, t, h, beta, x, x_next, scale, failed, failure_time[lo:hi],
                                               failure_codes[lo:hi]):
                    any_failed = True
                x = x_next
                if any_failed or not _all_finite(x):  # the rows only when the one-sum check fails
                    bad = ~np.isfinite(x).all(axis=1) & ~failed
                    if bad.any():
                        failure_time[lo:hi][bad] = t + h
                        failure_codes[lo:hi][bad] = nonfinite
                        failed |= bad
                        any_failed = True
                    x[failed] = np.nan
                if next_save < save_idx.size and save_idx[next_save] == k + 1:
                    out[next_save, lo:hi] = x
                    next_save += 1
    return Result(out, failure_time, failure_codes, fixed_step_stats(work, inputs.n_paths, m))


def check_growth(f, params, t, h, beta, x, x_next, scale, failed, failure_time, failure_codes) -> bool:
    """The instability rule (:mod:`sdekit.schemes._stability`) after the step ``x -> x_next`` from ``t``, on NumPy
    arrays: updates the rows' reference ``scale``; rows found unstable fail (``failed``, ``failure_time`` ``t + h``,
    code UNSTABLE). Returns whether a row failed. A step that triggers no row costs ``dim + 3`` array passes."""
    norm = row_max_abs(x_next)  # NaN for a row holding NaN (a failed row): no comparison takes it
    with np.errstate(invalid="ignore", over="ignore"):
        grown = norm > _stability.GROWTH * scale
        if not grown.any():
            return False
        rows = np.nonzero(grown & ~failed & np.isfinite(norm))[0]
        fresh = scale[rows] == 0.0  # rule step 1: the first non-zero state sets the scale
        scale[rows[fresh]] = norm[rows[fresh]]
        rows = rows[~fresh]
        if rows.size == 0:
            return False
        old, new = x[rows], x_next[rows]
        d = new - old
        dd = np.einsum("ij,ij->i", d, d)
        df = np.einsum("ij,ij->i", d, f(t, new, params) - f(t, old, params))
        unstable = (h * df < -beta * dd) & np.isfinite(df) & np.isfinite(dd)
    scale[rows[~unstable]] = norm[rows[~unstable]]
    bad = rows[unstable]
    failed[bad] = True
    failure_time[bad] = t + h
    failure_codes[bad] = _stability.UNSTABLE
    return bad.size > 0


def row_max_abs(x):
    """``max_i |x[r, i]|`` per row, NaN where the row holds NaN: column by column for a few columns (NumPy's
    reduction along a short last axis is slow), one reduction otherwise."""
    if x.shape[1] > 8:
        return np.abs(x).max(axis=1)
    norm = np.abs(x[:, 0])
    for c in range(1, x.shape[1]):
        np.maximum(norm, np.abs(x[:, c]), out=norm)
    return norm


def run_adaptive(inputs: Inputs, work: Work) -> Result:
    tab = work.scheme.tableau
    error_weights = tab.b - tab.b_err
    dim, tol = inputs.dim, work.tolerances
    f = wrap(inputs.problem.rhs, lambda n: (n, dim), "rhs")
    out = np.full((work.save_t.size, inputs.n_paths, dim), np.nan)
    failure_time, failure_codes = no_failures(inputs.n_paths)
    counts = np.zeros(3, dtype=np.int64)  # accepted, rejected, evaluations of one path (filled by integrate_path)
    totals = np.zeros(3, dtype=np.int64)
    per_path = np.zeros((inputs.n_paths, 3), dtype=np.int64)
    x0 = inputs.x0
    for i in range(inputs.n_paths):
        xi = np.array(x0[i : i + 1] if x0.shape[0] > 1 else x0[:1], dtype=float)
        code, t_end = _adaptive.integrate_path(
            f, inputs.params, tab.A, tab.b, error_weights, tab.c, tab.dense, work.t0, work.t1, xi,
            tol.rtol, tol.atol, tol.max_steps, work.save_t, out[:, i, :], counts,
        )
        totals += counts
        per_path[i] = counts
        if code != _adaptive.OK:
            failure_time[i] = t_end
            failure_codes[i] = code
    accepted, rejected, evaluations = (int(v) for v in totals)
    stats = Stats(accepted + rejected, accepted, rejected, evaluations, 0, inputs.n_paths)
    return Result(out, failure_time, failure_codes, stats, ode_per_path(per_path, dim))


def run_exponential(inputs: Inputs, work: Work, nonlinear) -> Result:
    """The exponential integrators on NumPy arrays (``nonlinear``: the problem's D, or its Numba compilation)."""
    dim = inputs.dim
    x = np.array(np.broadcast_to(inputs.x0, (inputs.n_paths, dim)))
    saved, failure_time = integrate_exponential(
        inputs.problem, work, wrap(nonlinear, lambda n: (n, dim), "nonlinear"), inputs.params, x,
        combine=_combine, all_finite=_all_finite, finite_rows=lambda v: np.isfinite(v).all(axis=1),
        with_nan_rows=lambda v, rows: np.where(rows[:, None], np.nan, v),
    )
    return Result(np.stack(saved), failure_time, no_failures(inputs.n_paths)[1],
                  fixed_step_stats(work, inputs.n_paths, 0))


def _combine(factor, x, terms):
    """``factor x + sum_j c_j v_j`` over the ``(c_j, v_j)`` in ``terms``, into one new array: each term one pass of
    BLAS ``daxpy`` (``y <- c v + y``) over the flat float64 state, without a temporary."""
    out = (x * factor).reshape(-1)
    for c, v in terms:
        out = daxpy(v.reshape(-1), out, a=c)
    return out.reshape(x.shape)


def _all_finite(x) -> bool:
    """Whether every entry of ``x`` is finite, by one sum: NaN and infinities carry into it (a finite sum that
    overflows is a false alarm, which the exact row check then clears)."""
    return math.isfinite(float(np.sum(x)))


def _on_grid(fn, grid, params) -> np.ndarray:
    """``fn(t, params)`` at every time of ``grid`` as float64: one call on the whole grid when ``fn`` takes an
    array of times and returns one float per time, agreeing to 1e-12 with single-time calls at both ends
    (functions written with :mod:`sdekit.ops` do); otherwise one call per time."""
    try:
        with np.errstate(all="ignore"):
            values = fn(grid, params)
    except Exception:  # noqa: BLE001 - a function of one time (math.*, branches on t): called per time below
        values = None
    if isinstance(values, np.ndarray) and values.shape == grid.shape and values.dtype.kind == "f":
        first, last = float(fn(float(grid[0]), params)), float(fn(float(grid[-1]), params))
        tolerance = 1e-12 * max(abs(first), abs(last), 1e-300)
        if abs(float(values[0]) - first) <= tolerance and abs(float(values[-1]) - last) <= tolerance:
            return values.astype(np.float64)
    return np.array([float(fn(float(t), params)) for t in grid])


def integrate_exponential(problem, work: Work, nonlinear, params, x, *, combine, all_finite, finite_rows,
                          with_nan_rows):
    """The exponential Adams–Bashforth steps (:mod:`sdekit.semilinear`) on the step times ``work.grid``.

    The state ``x`` holds all paths, in any array library: ``nonlinear(t, x, params)`` returns D checked and
    broadcast to ``x``, ``combine(a, x, terms)`` the new array ``a x + sum_j c_j v_j`` for the float ``a`` and
    the ``(c_j, v_j)`` in ``terms`` (the array update), ``all_finite(x)`` a Python bool (cheap, called every
    step: True only if every entry is finite, False may be a false alarm), ``finite_rows(x)`` a NumPy bool per
    row (exact, called only when ``all_finite`` is False or a row has failed), ``with_nan_rows(x, rows)`` ``x``
    with the ``rows`` (a NumPy bool mask) set to NaN. Returns ``(saved states, failure_time)``: the states at
    ``work.save_idx`` in a list, and the time each path first turned non-finite (NaN if never).
    The update is Hochbruck & Ostermann (2010), Acta Numerica 19, §2.5: ``x_{k+1} = e^{A_{k+1} - A_k} x_k
    + e^{A_{k+1} + lambda_{k+1}} sum_j w_j D_{k-j}`` with the :func:`~sdekit.semilinear.exponential_weights` ``w``,
    all computed before the first step (:func:`~sdekit.semilinear.grid_weights`, cached per grid): a step is
    the evaluation of D, the array update and the ``all_finite`` check. The UniPC methods first retake the
    previous step from its start with the new D (their corrector; Zhao et al. 2023, Alg. 1), then predict; the
    states saved at the grid times are the predictions, as diffusers' UniPC scheduler returns them.
    ``work.scheme.tableau`` holds the :class:`~sdekit.semilinear.MultistepOptions` (``lower_order_final``).
    """
    method, grid, save_idx = work.scheme.name, work.grid, work.save_idx
    q_max = ORDERS[method]
    log_factor = _on_grid(problem.log_factor, grid, problem.params)
    clock = _on_grid(problem.clock, grid, problem.params)
    if not (np.isfinite(log_factor).all() and np.isfinite(clock).all()):
        bad = grid[~(np.isfinite(log_factor) & np.isfinite(clock))][0]
        raise ValueError(f"the log factor or the clock is not finite at t={bad}; keep the span inside their domain.")
    clock_steps = clock[1:] - clock[:-1]
    if not ((clock_steps > 0).all() or (clock_steps < 0).all()):
        raise ValueError("the clock lambda(t) must be strictly monotone on the grid (it is the interpolation variable).")
    t_mid = log_factor_mid = clock_mid = None
    if method == "exp_ab3":
        # order-3 start: one extra evaluation at the first step's midpoint in t gives a local error O(h^3)
        t_mid = 0.5 * (grid[0] + grid[1])
        log_factor_mid = float(problem.log_factor(t_mid, problem.params))
        clock_mid = float(problem.clock(t_mid, problem.params))
    steps = grid_weights(method, clock, clock_mid, lower_order_final=work.scheme.tableau.lower_order_final)
    # x_{k+1} = state_factor[k] x_k + sum_j coefficients[k][j] D_{k-j}, as Python floats (scalars of any array library)
    state_factor = np.exp(log_factor[1:] - log_factor[:-1]).tolist()
    end_factor = np.exp(log_factor[1:] + clock[1:])
    coefficients = (end_factor[:, None] * steps.weights).tolist()
    # corrected x_{k+1} = state_factor[k] x_k + sum_j corrector[k][j] (D_{k+1}, D_k, D_{k-1})_j
    corrector = None if steps.corrector is None else (end_factor[:-1, None] * steps.corrector).tolist()
    orders = steps.orders.tolist()
    times = grid.tolist()
    failure_time = np.full(x.shape[0], np.nan)
    failed = None  # the rows that failed, once one has
    saved = [x] if save_idx[0] == 0 else []
    next_save = len(saved)
    history: list = []  # the last q_max values of D, newest first
    x_start = x  # the start of the step just taken (the corrector retakes it)
    for k in range(len(times) - 1):
        d = nonlinear(times[k], x, params)
        if corrector is not None and k > 0:
            x = combine(state_factor[k - 1], x_start, list(zip(corrector[k - 1][: orders[k - 1] + 1], [d, *history],
                                                               strict=False)))
        x_start = x
        history.insert(0, d)
        del history[q_max:]
        c = coefficients[k]
        if k == 0 and method == "exp_ab3":
            x_mid = combine(math.exp(log_factor_mid - log_factor[0]), x,
                            [(math.exp(log_factor_mid + clock_mid) * steps.midpoint_weight, d)])
            x = combine(state_factor[0], x, [(c[0], d), (c[1], nonlinear(t_mid, x_mid, params))])
        else:
            x = combine(state_factor[k], x, list(zip(c[: orders[k]], history, strict=False)))
        if failed is not None or not all_finite(x):
            newly = ~finite_rows(x) if failed is None else ~finite_rows(x) & ~failed
            if newly.any():
                failure_time[newly] = times[k + 1]
                failed = newly if failed is None else failed | newly
            if failed is not None:
                x = with_nan_rows(x, failed)
        if next_save < save_idx.size and save_idx[next_save] == k + 1:
            saved.append(x)
            next_save += 1
    return saved, failure_time

"""The Rosenbrock (Rodas) ODE solvers on each backend.

numpy and numba run :func:`sdekit.schemes._rosenbrock.integrate_path` path by
path (own step sizes; Numba compiles it once, disk-cached, and runs path
ranges on the thread pool). torch steps the whole batch with one step size
(the largest error over the live paths controls it), batched LU factorisations
of ``I/(h gamma) - J`` and masks for the paths that fail, like its ``dopri5``.

Jacobian: the problem's ``jac`` when it has one; else central differences of
``f`` (numpy, numba) or autograd (torch, one backward pass per component).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, types

from ..schemes import _adaptive, _rosenbrock
from ..schemes.rosenbrock import ROSENBROCK
from ..solution import Stats
from . import Inputs, Result, Work, no_failures, ode_per_path
from .numba_kernels import F64_2, F64_3, FLAT, FN2, FN3, cached_kernel, no_jacobian


def _coefficients(work: Work):
    tab = work.scheme.tableau
    return (tab.a, tab.C, float(tab.gamma), tab.c, tab.d, tab.b, tab.e, float(tab.order))


def _stats(totals, n_paths):
    accepted, rejected, evaluations = (int(v) for v in totals)
    return Stats(accepted + rejected, accepted, rejected, evaluations, 0, n_paths)


# --------------------------------------------------------------------------- numpy
def run_numpy(inputs: Inputs, work: Work) -> Result:
    from .numpy_backend import wrap

    dim, tol = inputs.dim, work.tolerances
    f = wrap(inputs.problem.rhs, lambda n: (n, dim), "rhs")
    jac = inputs.problem.jac
    jac = wrap(jac, lambda n: (n, dim, dim), "jac") if jac is not None else None
    out = np.full((work.save_t.size, inputs.n_paths, dim), np.nan)
    failure_time, failure_codes = no_failures(inputs.n_paths)
    counts = np.zeros(3, dtype=np.int64)
    totals = np.zeros(3, dtype=np.int64)
    per_path = np.zeros((inputs.n_paths, 3), dtype=np.int64)
    x0 = inputs.x0
    for i in range(inputs.n_paths):
        xi = np.array(x0[i : i + 1] if x0.shape[0] > 1 else x0[:1], dtype=float)
        code, t_end = _rosenbrock.integrate_path(f, jac, jac is not None, inputs.params, *_coefficients(work), work.t0,
                                                 work.t1, xi, tol.rtol, tol.atol, tol.max_steps, work.save_t,
                                                 out[:, i, :], counts)
        totals += counts
        per_path[i] = counts
        if code != _adaptive.OK:
            failure_time[i] = t_end
            failure_codes[i] = code
    return Result(out, failure_time, failure_codes, _stats(totals, inputs.n_paths), ode_per_path(per_path, dim))


# --------------------------------------------------------------------------- numba
_integrate_path = njit(_rosenbrock.integrate_path)


@cached_kernel(
    types.void(FN2, FN3, types.boolean, FLAT, F64_2, F64_2, types.float64, types.float64[::1], types.float64[::1],
               types.float64[::1], types.float64[::1], types.float64, types.float64, types.float64, F64_2,
               types.int64, types.int64, types.float64, types.float64, types.int64, types.float64[::1], F64_3,
               types.float64[::1], types.int64[::1], types.int64[::1], types.int64[:, ::1]),
    nogil=True,
)
def _rosenbrock_range(f, jac, use_jac, p, a, C, gamma, c, d, b, e, order, t0, t1, x0, lo, hi, rtol, atol,
                      max_steps, save_t, out, fail_t, codes, totals, per_path):
    counts = np.zeros(3, dtype=np.int64)
    dim = x0.shape[1]
    for i in range(lo, hi):
        xi = np.empty((1, dim))
        r = i if x0.shape[0] > 1 else 0
        for k in range(dim):
            xi[0, k] = x0[r, k]
        res = np.full((save_t.shape[0], dim), np.nan)
        code, t_end = _integrate_path(f, jac, use_jac, p, a, C, gamma, c, d, b, e, order, t0, t1, xi, rtol, atol,
                                      max_steps, save_t, res, counts)
        for j in range(save_t.shape[0]):
            for k in range(dim):
                out[j, i, k] = res[j, k]
        for k in range(3):
            totals[k] += counts[k]
            per_path[i, k] = counts[k]
        if code != 0:
            fail_t[i] = t_end
            codes[i] = code


def run_numba(inputs: Inputs, work: Work) -> Result:
    from .numba_adapters import ERR_SLOT, adapter, flatten_params, shape_error
    from .numba_backend import _ranges, _run_parallel

    problem, dim, tol = inputs.problem, inputs.dim, work.tolerances
    flat, layout = flatten_params(inputs.params)
    n_params = flat.size
    has_jac = problem.jac is not None
    names, forms = (("rhs", "jac"), ("2d", "3d")) if has_jac else (("rhs",), ("2d",))
    f = adapter(problem, "rhs", "2d", dim, 0, layout, 0)
    jac = adapter(problem, "jac", "3d", dim, dim, layout, 1) if has_jac else no_jacobian.compiled
    flat = np.concatenate([flat, np.zeros(ERR_SLOT * len(names))])
    out = np.full((work.save_t.size, inputs.n_paths, dim), np.nan)
    failure_time, failure_codes = no_failures(inputs.n_paths)
    ranges = _ranges(inputs.n_paths, 16, numba.get_num_threads())
    totals = np.zeros((len(ranges), 3), dtype=np.int64)
    per_path = np.zeros((inputs.n_paths, 3), dtype=np.int64)
    slot = {r: i for i, r in enumerate(ranges)}
    coefficients = _coefficients(work)

    def integrate(lo, hi):
        thread_flat = flat.copy()
        _rosenbrock_range(f, jac, has_jac, thread_flat, *coefficients, work.t0, work.t1, inputs.x0, lo, hi, tol.rtol,
                          tol.atol, tol.max_steps, work.save_t, out, failure_time, failure_codes,
                          totals[slot[(lo, hi)]], per_path)
        err = shape_error(thread_flat, n_params, names, dim, dim, forms)
        if err is not None:
            raise err

    _run_parallel(integrate, ranges)
    return Result(out, failure_time, failure_codes, _stats(totals.sum(axis=0), inputs.n_paths),
                  ode_per_path(per_path, dim))


# --------------------------------------------------------------------------- torch
def run_torch(inputs: Inputs, work: Work) -> Result:
    import torch

    from .torch_backend import _batches, wrap

    dim = inputs.dim
    f = wrap(inputs.problem.rhs, "rhs", lambda n: (n, dim))
    jac = inputs.problem.jac
    jac = wrap(jac, "jac", lambda n: (n, dim, dim)) if jac is not None else None
    totals = np.zeros(3, dtype=np.int64)
    failure_time, failure_codes = no_failures(inputs.n_paths)
    outs = []
    for lo, hi, x in _batches(inputs):
        out, counts, failure_time[lo:hi], failure_codes[lo:hi] = _integrate_batch(f, jac, inputs.params, work, x)
        totals += counts * (hi - lo)
        outs.append(out)
    return Result(outs[0] if len(outs) == 1 else torch.cat(outs, dim=1), failure_time, failure_codes,
                  _stats(totals, inputs.n_paths))


def _autograd_jacobian(f, t, x, p):
    """``J[r, i, k] = d f_i / d x_k`` of every row by autograd (rows are independent: one backward pass per ``i``)."""
    import torch

    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        y = f(t, xg, p)
        if not y.requires_grad:
            return torch.zeros(x.shape + (x.shape[1],), dtype=x.dtype, device=x.device)
        rows = []
        for i in range(x.shape[1]):
            g, = torch.autograd.grad(y[:, i].sum(), xg, retain_graph=i + 1 < x.shape[1], allow_unused=True)
            rows.append(torch.zeros_like(x) if g is None else g)
    return torch.stack(rows, dim=1)


def _integrate_batch(f, jac, p, work, x):
    """One batch with one step size: ``(saved states, [accepted, rejected, evaluations], failure_time, codes)``."""
    import torch

    a, C, gamma, c, d, b, e, order = _coefficients(work)
    t0, t1, rtol, atol = work.t0, work.t1, work.tolerances.rtol, work.tolerances.atol
    save_t = [float(v) for v in work.save_t]
    n, dim = x.shape
    s = b.shape[0]
    direction = 1.0 if t1 > t0 else -1.0
    span = abs(t1 - t0)
    cbrt_eps = torch.finfo(x.dtype).eps ** (1.0 / 3.0)
    eye = torch.eye(dim, dtype=x.dtype, device=x.device)
    live = torch.ones(n, dtype=torch.bool, device=x.device)
    fail_t = np.full(n, np.nan)
    codes = np.zeros(n, dtype=np.int64)
    saved = [None] * len(save_t)
    t = t0
    next_save = 0
    while next_save < len(save_t) and save_t[next_save] == t0:
        saved[next_save] = x
        next_save += 1

    def norm(v, scale):
        r = _adaptive_rms((v / scale).detach())
        return torch.where(live, r, torch.zeros_like(r))

    def derivatives(f0):
        """``(J, f_t, evaluations)`` at ``(t, x)``: J from ``jac`` or autograd, ``f_t`` by a central difference."""
        J = jac(t, x, p) if jac is not None else _autograd_jacobian(f, t, x, p)
        dt = cbrt_eps * max(abs(t), 1e-5)
        return J.detach(), (f(t + dt, x, p) - f(t - dt, x, p)) / (2.0 * dt), (1 if jac is None else 0) + 2

    f0 = f(t, x, p)
    sc = atol + rtol * x.detach().abs()
    n1 = norm(f0, sc)
    h0 = _adaptive.first_trial_step(float(norm(x, sc).max()), float(n1.max()), span)
    f1 = f(t + direction * h0, x + (direction * h0) * f0, p)
    n2 = norm(f1 - f0, sc) / h0
    habs = _adaptive.initial_step(h0, float(n1.max()), float(n2.max()), span)
    J, ft, extra = derivatives(f0)
    nfev = 2 + extra
    h_acc = habs
    errs = None
    nonfinite = after_reject = False
    accepted = rejected = 0

    def fail(rows_mask, code):
        nonlocal x, live
        rows = (rows_mask & live).nonzero().squeeze(1).cpu().numpy()
        fail_t[rows] = t
        codes[rows] = code
        live = live & ~rows_mask
        x = torch.where(rows_mask[:, None], torch.full_like(x, math.nan), x)

    while direction * (t1 - t) > 0.0 and bool(live.any()):
        if accepted + rejected >= work.tolerances.max_steps:
            fail(live, _adaptive.MAX_STEPS)
            break
        tiny = 10.0 * np.finfo(np.float64).eps * max(abs(t), np.finfo(np.float64).eps * span)
        while next_save < len(save_t) and abs(save_t[next_save] - t) <= tiny:  # within round-off of t: x
            saved[next_save] = x
            next_save += 1
        target = save_t[next_save] if next_save < len(save_t) else t1  # save points are step ends (_rosenbrock)
        remaining = abs(target - t)
        free = habs
        last = habs >= remaining
        if last:
            habs = remaining
        if habs <= tiny:
            # The paths that force the step down fail here, as they would on their own; the others go on.
            if errs is None:
                culprits = live.clone()
            else:
                culprits = (~torch.isfinite(errs) | (errs > 1.0)) & live
                if not bool(culprits.any()):
                    culprits = (errs >= errs.max()) & live
            fail(culprits, _adaptive.NONFINITE if nonfinite else _adaptive.STEP_UNDERFLOW)
            habs, nonfinite, errs = h_acc, False, None
            if bool(live.any()):
                f0 = f(t, x, p)
                J, ft, extra = derivatives(f0)
                nfev += 1 + extra
            continue
        h = direction * habs
        M = eye / (h * gamma) - J
        M = torch.where(live[:, None, None], M, eye)  # failed rows: NaN Jacobians must not poison the solve
        LU, piv, info = torch.linalg.lu_factor_ex(M)
        K = []
        for i in range(s):
            if i == 0:
                rhs = f0
            else:
                xi = x
                for j in range(i):
                    if a[i, j] != 0.0:
                        xi = xi + a[i, j] * K[j]
                rhs = f(t + c[i] * h, xi, p)
                nfev += 1
                for j in range(i):
                    if C[i, j] != 0.0:
                        rhs = rhs + (C[i, j] / h) * K[j]
            if d[i] != 0.0:
                rhs = rhs + (d[i] * h) * ft
            K.append(torch.linalg.lu_solve(LU, piv, rhs.unsqueeze(-1)).squeeze(-1))
        x_new = x
        err_v = torch.zeros_like(x)
        for i in range(s):
            if b[i] != 0.0:
                x_new = x_new + b[i] * K[i]
            if e[i] != 0.0:
                err_v = err_v + e[i] * K[i]
        errs = norm(err_v, atol + rtol * torch.maximum(x.detach().abs(), x_new.detach().abs()))
        errs = torch.where(live & (info != 0), torch.full_like(errs, math.nan), errs)
        err = float(errs.max()) if bool(torch.isfinite(errs).all()) else math.nan
        if not math.isfinite(err):
            rejected += 1
            habs *= 0.2
            nonfinite = after_reject = True
            continue
        nonfinite = False
        if err <= 1.0:
            t_new = target if last else t + h
            while next_save < len(save_t) and direction * (save_t[next_save] - t_new) <= 0.0:
                saved[next_save] = x_new
                next_save += 1
            t, x = t_new, x_new
            accepted += 1
            h_acc = habs
            habs *= _rosenbrock.accept_factor(err, order, after_reject)
            if last:
                habs = max(habs, free)
            after_reject = False
            if direction * (t1 - t) > 0.0:
                f0 = f(t, x, p)
                J, ft, extra = derivatives(f0)
                nfev += 1 + extra
        else:
            rejected += 1
            habs *= _rosenbrock.reject_factor(err, order)
            after_reject = True
    nan = torch.full_like(x, math.nan)
    out = torch.stack([nan if v is None else v for v in saved])
    dead = ~live
    if bool(dead.any()):
        ft_fail = torch.as_tensor(np.nan_to_num(fail_t, nan=np.inf), device=x.device)
        st = torch.as_tensor(save_t, device=x.device)
        after = (direction * (st[:, None] - ft_fail[None, :]) > 0) & dead[None, :]
        out = torch.where(after[:, :, None], torch.full_like(out, math.nan), out)
    return out, np.array([accepted, rejected, nfev], dtype=np.int64), fail_t, codes


def _adaptive_rms(v):
    import torch

    return torch.sqrt(torch.mean(v * v, dim=1))


def solves(work: Work) -> bool:
    """Whether ``work`` is a Rosenbrock scheme's (the backends' adaptive run hands it here)."""
    return work.scheme.family is ROSENBROCK

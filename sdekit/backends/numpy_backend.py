"""The readable reference backend: the step functions run on NumPy arrays.

Paths are processed in batches (bounded memory); the Brownian increments of
a batch come from the :class:`~sdekit.BrownianPath`, so this backend sees
exactly the noise the Numba backend sees.
"""

from __future__ import annotations

import numpy as np

from ..schemes import _adaptive


def wrap(fn, target, name="drift"):
    """``fn`` with its result checked (real, broadcastable; on every call) and broadcast to the shape ``target(n)``."""
    from ..solve import check_result

    def wrapped(t, x, p):
        r = fn(t, x, p)
        shape = target(x.shape[0])
        if isinstance(r, np.ndarray) and r.shape == shape and r.dtype.kind == "f":
            return r
        return check_result(r, name, x.shape, shape)

    return wrapped


def _zero_diffusion(t, x, p):
    return np.zeros_like(x)


def batch_paths(n_paths: int, n_steps: int, m: int) -> int:
    """Paths per batch: all steps' increments of a batch stay within about 64 MiB."""
    per_path = max(1, (n_steps + 1) * max(m, 1) * 2)
    return max(1, min(n_paths, (1 << 23) // per_path))


def _batches(n_paths, n_steps, m):
    nb = batch_paths(n_paths, n_steps, m)
    for lo in range(0, n_paths, nb):
        yield lo, min(n_paths, lo + nb)


def run_fixed(plan):
    dim, m = plan.dim, plan.m
    f = wrap(plan.problem.drift, lambda n: (n, dim), "drift" if m else "rhs")
    if not m:
        g = _zero_diffusion
    elif plan.problem.matrix_noise:
        g = wrap(plan.problem.diffusion, lambda n: (n, dim, m), "diffusion")
    else:
        g = wrap(plan.problem.diffusion, lambda n: (n, dim), "diffusion")
    p, tab, h, n = plan.problem.params, plan.tab, plan.h, plan.n_steps
    x0 = plan.x0
    save = plan.save_idx  # an int64 array (a list would hold one Python object per saved time)
    for lo, hi in _batches(plan.n_paths, n, m):
        nb = hi - lo
        x = np.array(np.broadcast_to(x0[lo:hi] if x0.shape[0] > 1 else x0, (nb, dim)), order="C")
        if m:
            inc = plan.brownian.increments(n, paths=range(lo, hi), reverse=plan.reverse)
            dws, hhs = inc if plan.brownian.levy_area else (inc, np.zeros_like(inc))
        else:
            dws = hhs = np.zeros((n, nb, 0))
        failed = np.zeros(nb, dtype=bool)
        si = 0
        if save.size and save[0] == 0:
            plan.out[0, lo:hi] = x
            si = 1
        for k in range(n):
            t = plan.t0 + k * h
            x = np.array(plan.step(f, g, p, tab, t, x, h, dws[k], hhs[k]))
            bad = ~np.isfinite(x).all(axis=1) & ~failed
            if bad.any():
                plan.failure_time[lo:hi][bad] = t + h
                failed |= bad
            x[failed] = np.nan
            if si < len(save) and save[si] == k + 1:
                plan.out[si, lo:hi] = x
                si += 1


def run_adaptive(plan):
    tab = plan.scheme.tableau
    e = tab.b - tab.b_err
    dim = plan.dim
    f = wrap(plan.problem.rhs, lambda n: (n, dim), "rhs")
    counts = np.zeros(3, dtype=np.int64)
    totals = np.zeros(3, dtype=np.int64)
    x0 = plan.x0
    for i in range(plan.n_paths):
        xi = np.array(x0[i : i + 1] if x0.shape[0] > 1 else x0[:1], dtype=float)
        code, t_end = _adaptive.integrate_path(
            f, plan.problem.params, tab.A, tab.b, e, tab.c, tab.dense, plan.t0, plan.t1, xi,
            plan.rtol, plan.atol, plan.max_steps, plan.save_t, plan.out[:, i, :], counts,
        )
        totals += counts
        if code != _adaptive.OK:
            plan.failure_time[i] = t_end
            plan.codes[i] = code
    return tuple(int(v) for v in totals)

"""Adaptive Rosenbrock (Rodas) integration of one path, written once.

The same function runs as plain Python on NumPy arrays (numpy backend) and
compiled by Numba (numba backend); each path has its own step-size
controller, so a path's result never depends on the batch it came in.

The method is written in the transformed form of Hairer & Wanner (*Solving
ODEs II*, 1996, §IV.7, eq. (7.25)): with ``M = I/(h gamma) - J``, ``J`` the
Jacobian of ``f`` at the step's start and ``f_t`` its time derivative, stage
``i`` solves

    M k_i = f(t + c_i h, x + sum_{j<i} a_ij k_j) + sum_{j<i} (C_ij / h) k_j + d_i h f_t,

with one LU factorisation of ``M`` per step reused by every stage. The new
state is ``x + sum b_i k_i`` and the error estimate ``sum e_i k_i``.

Save points are step ends: a step that would pass the next save point is cut
to end on it (and the controller's step is taken up again after it), so every
saved state is error controlled. Rodas interpolants are not, and on very stiff
problems they miss the slow manifold between accurate step ends by far more
than the tolerance (:mod:`sdekit.schemes.rosenbrock`).

``J`` comes from the user's ``jac`` or from forward differences of ``f``
(two evaluations per component, step ``eps^(1/3) max(|x_k|, 1e-5)``);
``f_t`` always from a central difference in time (two evaluations, step ``eps^(1/3) max(|t|, 1e-5)``). Forward
differences (error ``O(sqrt(eps))``) cost Robertson's problem up to five times the steps: a Rosenbrock method's
order conditions assume the exact ``J`` and ``f_t``.

Controller: the RMS error norm of :mod:`sdekit.schemes._adaptive`; an accepted
step scales ``h`` by ``0.9 err^(-1/q)`` clamped to ``[0.2, 6]`` (at most 1
right after a rejection), a rejected one by ``max(0.2, 0.9 err^(-1/q))``,
``q`` the order of the method (Hairer & Wanner II, §IV.8, eq. (8.21)).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.linalg
from numba.extending import overload, register_jitable

from ._adaptive import MAX_STEPS, NONFINITE, OK, STEP_UNDERFLOW, _assign, _axpy, _error_norm, _rms, _row, first_trial_step, initial_step

_CBRT_EPS = np.finfo(np.float64).eps ** (1.0 / 3.0)


@register_jitable
def accept_factor(err, order, after_reject):
    """Step-size factor after an accepted step: ``0.9 err^(-1/order)`` in [0.2, 6] (at most 1 after a rejection)."""
    fac = 6.0 if err == 0.0 else min(6.0, max(0.2, 0.9 * err ** (-1.0 / order)))
    return min(fac, 1.0) if after_reject else fac


@register_jitable
def reject_factor(err, order):
    return max(0.2, 0.9 * err ** (-1.0 / order))


def lu_factor(M, piv):
    """LU of ``M`` with partial pivoting, in place (pivots into ``piv``); False when ``M`` is singular or not finite."""
    if not np.all(np.isfinite(M)):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lu, p = scipy.linalg.lu_factor(M, check_finite=False)
    M[...] = lu
    piv[:] = p
    return bool(np.all(np.diag(lu) != 0.0))


@overload(lu_factor, inline="always")
def _ov_lu_factor(M, piv):
    def impl(M, piv):
        n = M.shape[0]
        for k in range(n):
            p = k
            big = abs(M[k, k])
            for r in range(k + 1, n):
                if abs(M[r, k]) > big:
                    big = abs(M[r, k])
                    p = r
            if not (big > 0.0) or not math.isfinite(big):
                return False
            piv[k] = p
            if p != k:
                for c in range(n):
                    tmp = M[k, c]
                    M[k, c] = M[p, c]
                    M[p, c] = tmp
            inv = 1.0 / M[k, k]
            for r in range(k + 1, n):
                M[r, k] *= inv
                m = M[r, k]
                if m != 0.0:
                    for c in range(k + 1, n):
                        M[r, c] -= m * M[k, c]
        return True
    return impl


def lu_solve(M, piv, v):
    """Solve with the factors of :func:`lu_factor`, overwriting the row ``v`` (shape (1, dim))."""
    v[0] = scipy.linalg.lu_solve((M, piv), v[0], check_finite=False)


@overload(lu_solve, inline="always")
def _ov_lu_solve(M, piv, v):
    def impl(M, piv, v):
        n = M.shape[0]
        for k in range(n):
            p = piv[k]
            if p != k:
                tmp = v[0, k]
                v[0, k] = v[0, p]
                v[0, p] = tmp
        for r in range(n):
            acc = v[0, r]
            for c in range(r):
                acc -= M[r, c] * v[0, c]
            v[0, r] = acc
        for r in range(n - 1, -1, -1):
            acc = v[0, r]
            for c in range(r + 1, n):
                acc -= M[r, c] * v[0, c]
            v[0, r] = acc / M[r, r]
    return impl


@register_jitable
def _derivatives(f, jac, use_jac, p, t, x, f0, J, ft, xp):
    """``J`` (from ``jac`` or central differences) and ``f_t`` (central difference) at ``(t, x)``; evaluations used."""
    dim = x.shape[1]
    nfev = 0
    if use_jac:
        Jr = jac(t, x, p)
        for i in range(dim):
            for k in range(dim):
                J[i, k] = Jr[0, i, k]
    else:
        for k in range(dim):
            _assign(xp, x)
            delta = _CBRT_EPS * max(abs(x[0, k]), 1e-5)
            xp[0, k] = x[0, k] + delta
            f_up = f(t, xp, p)
            up = xp[0, k]
            xp[0, k] = x[0, k] - delta
            f_down = f(t, xp, p)
            for i in range(dim):
                J[i, k] = (f_up[0, i] - f_down[0, i]) / (up - xp[0, k])
        nfev += 2 * dim
    dt = _CBRT_EPS * max(abs(t), 1e-5)
    f_up = f(t + dt, x, p)
    f_down = f(t - dt, x, p)
    for i in range(dim):
        ft[0, i] = (f_up[0, i] - f_down[0, i]) / (2.0 * dt)
    return nfev + 2


def integrate_path(f, jac, use_jac, p, a, C, gamma, c, d, b, e, order, t0, t1, x0, rtol, atol, max_steps, save_t,
                   out, counts):
    """Integrate one path (``x0`` of shape (1, dim)) from ``t0`` to ``t1`` with a Rodas method.

    ``a``, ``C`` (s, s), ``c``, ``d``, ``b``, ``e`` (s,) and ``gamma`` are the coefficients of the
    transformed form (module docstring), ``order`` the order that sets the step-size exponent. ``jac(t, x, p)``
    returns (1, dim, dim) and is called when ``use_jac``. Writes the states at ``save_t`` (ordered along the
    direction of integration, within the span) into ``out`` (len(save_t), dim) and ``[accepted, rejected,
    evaluations of f (jac not counted)]`` into ``counts``. Returns ``(code, t)``: OK or a failure code of
    :mod:`sdekit.schemes._adaptive`, and the time reached.
    """
    s = b.shape[0]
    dim = x0.shape[1]
    direction = 1.0 if t1 > t0 else -1.0
    span = abs(t1 - t0)
    x = x0.copy()
    t = t0
    n_save = save_t.shape[0]
    si = 0
    while si < n_save and save_t[si] == t0:
        _row(out, si, x)
        si += 1
    K = np.empty((s, 1, dim))
    J = np.empty((dim, dim))
    M = np.empty((dim, dim))
    piv = np.zeros(dim, dtype=np.int64)
    ft = np.empty_like(x)
    xi = np.empty_like(x)
    rhs = np.empty_like(x)
    x_new = np.empty_like(x)
    err_v = np.empty_like(x)
    f0 = f(t, x, p)
    nfev = 1
    # Hairer's initial step (HNW I, II.4), as for dopri5.
    sc = atol + rtol * np.abs(x)
    d0 = _rms(x / sc)
    d1 = _rms(f0 / sc)
    h0 = first_trial_step(d0, d1, span)
    f1 = f(t + direction * h0, x + (direction * h0) * f0, p)
    nfev += 1
    d2 = _rms((f1 - f0) / sc) / h0
    habs = initial_step(h0, d1, d2, span)
    nfev += _derivatives(f, jac, use_jac, p, t, x, f0, J, ft, xi)
    nonfinite = False
    after_reject = False
    accepted = 0
    rejected = 0
    code = OK
    while True:
        if direction * (t1 - t) <= 0.0:
            break
        if accepted + rejected >= max_steps:
            code = MAX_STEPS
            break
        tiny = 10.0 * np.finfo(np.float64).eps * max(abs(t), np.finfo(np.float64).eps * span)
        while si < n_save and abs(save_t[si] - t) <= tiny:  # a save point within round-off of t: its state is x
            _row(out, si, x)
            si += 1
        target = save_t[si] if si < n_save else t1  # the step ends on the next save point, or t1
        remaining = abs(target - t)
        free = habs  # the controller's step, taken up again after a step cut short to land on a save point
        last = habs >= remaining
        if last:
            habs = remaining
        if habs <= tiny:
            code = NONFINITE if nonfinite else STEP_UNDERFLOW
            break
        h = direction * habs
        for i in range(dim):
            for k in range(dim):
                M[i, k] = -J[i, k]
            M[i, i] += 1.0 / (h * gamma)
        ok = lu_factor(M, piv)
        if ok:
            for i in range(s):
                if i == 0:
                    _assign(rhs, f0)
                else:
                    _assign(xi, x)
                    for j in range(i):
                        if a[i, j] != 0.0:
                            _axpy(xi, a[i, j], K[j])
                    _assign(rhs, f(t + c[i] * h, xi, p))
                    nfev += 1
                    for j in range(i):
                        if C[i, j] != 0.0:
                            _axpy(rhs, C[i, j] / h, K[j])
                if d[i] != 0.0:
                    _axpy(rhs, d[i] * h, ft)
                lu_solve(M, piv, rhs)
                _assign(K[i], rhs)
            _assign(x_new, x)
            _assign(err_v, 0.0)
            for i in range(s):
                if b[i] != 0.0:
                    _axpy(x_new, b[i], K[i])
                if e[i] != 0.0:
                    _axpy(err_v, e[i], K[i])
            err = _error_norm(err_v, x, x_new, atol, rtol)
        else:
            err = math.nan
        if not math.isfinite(err):
            rejected += 1
            habs *= 0.2
            nonfinite = True
            after_reject = True
            continue
        nonfinite = False
        if err <= 1.0:
            t_new = target if last else t + h
            while si < n_save and direction * (save_t[si] - t_new) <= 0.0:  # the save point landed on (and repeats)
                _row(out, si, x_new)
                si += 1
            t = t_new
            x, x_new = x_new, x  # swap the buffers
            accepted += 1
            habs *= accept_factor(err, order, after_reject)
            if last:
                habs = max(habs, free)
            after_reject = False
            if direction * (t1 - t) > 0.0:
                f0 = f(t, x, p)
                nfev += 1
                nfev += _derivatives(f, jac, use_jac, p, t, x, f0, J, ft, xi)
        else:
            rejected += 1
            habs *= reject_factor(err, order)
            after_reject = True
    counts[0] = accepted
    counts[1] = rejected
    counts[2] = nfev
    return code, t

"""Adaptive embedded Runge–Kutta integration of one path, written once.

The same function runs as plain Python on NumPy arrays (numpy backend) and
compiled by Numba (numba backend). Each path has its own step-size
controller, so the result of a path never depends on the batch it came in.

Controller: the error norm is the RMS of ``err / (atol + rtol max(|x|, |x_new|))``
(Hairer, Nørsett & Wanner, *Solving ODEs I*, II.4); an accepted step scales
``h`` by ``0.9 err^-0.14 err_prev^0.08`` (PI control, Gustafsson 1991, with
Hairer's DOPRI5 exponents 0.7/5 and 0.4/5), clamped to ``[0.2, 10]``; a
rejected step by ``max(0.2, 0.9 err^-0.2)``. Initial step: Hairer's
algorithm (HNW I, II.4, p. 169). Output at ``save_t`` uses the dense output
of the tableau.
"""

from __future__ import annotations

import math

import numpy as np
from numba.extending import overload, register_jitable

from ._steps import empty_stages, put

# Failure codes returned by ``integrate_path``.
OK, MAX_STEPS, STEP_UNDERFLOW, NONFINITE = 0, 1, 2, 3
NEWTON = 4  # a drift-implicit fixed step whose Newton iteration did not converge (sdekit.schemes.implicit)
UNSTABLE = 5  # an explicit fixed step left its stability region (the rule: sdekit.schemes._stability)


@register_jitable
def _row(out, i, x):
    """``out[i] = x[0]`` as a loop."""
    for c in range(x.shape[1]):
        out[i, c] = x[0, c]


@register_jitable
def _rms(v):
    return math.sqrt(float(np.mean(v * v)))


# The controller's formulas, shared with the torch backend's batch integrator.
@register_jitable
def first_trial_step(d0, d1, span):
    """Hairer's first guess ``h0`` from the scaled norms of ``x`` (d0) and ``f(x)`` (d1)."""
    h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    return min(h0, span)


@register_jitable
def initial_step(h0, d1, d2, span):
    """Hairer's initial step from ``h0`` and the scaled norms of ``f`` (d1) and its change (d2)."""
    if max(d1, d2) <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** 0.2
    return min(100.0 * h0, h1, span)


@register_jitable
def accept_factor(err, err_prev):
    """PI step-size factor after an accepted step, clamped to [0.2, 10]."""
    fac = 10.0 if err == 0.0 else 0.9 * err**-0.14 * err_prev**0.08
    return min(10.0, max(0.2, fac))


@register_jitable
def reject_factor(err):
    return max(0.2, 0.9 * err**-0.2)


@register_jitable
def dense_weight(P, i, th):
    """Weight of stage ``i`` in the dense output at ``theta = th``: sum_j P[i, j] th^(j+1)."""
    w = 0.0
    thp = th
    for j in range(P.shape[1]):
        w += P[i, j] * thp
        thp *= th
    return w


# In-place helpers: NumPy in Python, allocation-free loops in Numba (same arithmetic, element by element).
def _axpy(y, a, x):
    """``y += a * x``."""
    y += a * x


@overload(_axpy, inline="always")
def _ov_axpy(y, a, x):
    def impl(y, a, x):
        for r in range(y.shape[0]):
            for k in range(y.shape[1]):
                y[r, k] = y[r, k] + a * x[r, k]
    return impl


def _assign(y, x):
    """``y[...] = x`` (``x`` an array of ``y``'s shape, or a number)."""
    y[...] = x


@overload(_assign, inline="always")
def _ov_assign(y, x):
    if getattr(x, "ndim", 0) == 0:
        def impl0(y, x):
            for r in range(y.shape[0]):
                for k in range(y.shape[1]):
                    y[r, k] = x
        return impl0

    def impl(y, x):
        for r in range(y.shape[0]):
            for k in range(y.shape[1]):
                y[r, k] = x[r, k]
    return impl


def _error_norm(err, x, x_new, atol, rtol):
    """RMS of ``err / (atol + rtol max(|x|, |x_new|))``."""
    return _rms(err / (atol + rtol * np.maximum(np.abs(x), np.abs(x_new))))


@overload(_error_norm, inline="always")
def _ov_error_norm(err, x, x_new, atol, rtol):
    def impl(err, x, x_new, atol, rtol):
        acc = 0.0
        for r in range(err.shape[0]):
            for k in range(err.shape[1]):
                v = err[r, k] / (atol + rtol * max(abs(x[r, k]), abs(x_new[r, k])))
                acc += v * v
        return math.sqrt(acc / err.size)
    return impl


def integrate_path(f, p, A, b, e, c, P, t0, t1, x0, rtol, atol, max_steps, save_t, out, counts):
    """Integrate one path (``x0`` of shape (1, dim)) from ``t0`` to ``t1``.

    Writes the states at ``save_t`` (ordered along the direction of
    integration, all within the span) into ``out`` (len(save_t), dim) and
    ``[accepted, rejected, nfev]`` into ``counts``. Returns ``(code, t)``:
    ``code`` is OK or a failure code, ``t`` the time reached.
    """
    s = b.shape[0]
    direction = 1.0 if t1 > t0 else -1.0
    span = abs(t1 - t0)
    x = x0.copy()
    t = t0
    K = empty_stages(s, x)
    put(K, 0, f(t, x, p))
    nfev = 1
    n_save = save_t.shape[0]
    si = 0
    while si < n_save and save_t[si] == t0:
        _row(out, si, x)
        si += 1
    # Hairer's initial step.
    sc = atol + rtol * np.abs(x)
    d0 = _rms(x / sc)
    d1 = _rms(K[0] / sc)
    h0 = first_trial_step(d0, d1, span)
    f1 = empty_stages(1, x)
    put(f1, 0, f(t + direction * h0, x + (direction * h0) * K[0], p))
    nfev += 1
    d2 = _rms((f1[0] - K[0]) / sc) / h0
    habs = initial_step(h0, d1, d2, span)
    err_prev = 1e-4
    xi = np.empty_like(x)  # stage input, new state and error estimate: reused every step
    x_new = np.empty_like(x)
    err_v = np.empty_like(x)
    nonfinite = False
    accepted = 0
    rejected = 0
    code = OK
    while True:
        if direction * (t1 - t) <= 0.0:
            break
        if accepted + rejected >= max_steps:
            code = MAX_STEPS
            break
        remaining = abs(t1 - t)
        last = habs >= remaining
        if last:
            habs = remaining
        if habs <= 10.0 * np.finfo(np.float64).eps * max(abs(t), span):
            code = NONFINITE if nonfinite else STEP_UNDERFLOW
            break
        h = direction * habs
        for i in range(1, s):
            _assign(xi, x)
            for j in range(i):
                if A[i, j] != 0.0:
                    _axpy(xi, A[i, j] * h, K[j])
            put(K, i, f(t + c[i] * h, xi, p))
        nfev += s - 1
        _assign(x_new, x)
        _assign(err_v, 0.0)
        for i in range(s):
            if b[i] != 0.0:
                _axpy(x_new, b[i] * h, K[i])
            if e[i] != 0.0:
                _axpy(err_v, e[i] * h, K[i])
        err = _error_norm(err_v, x, x_new, atol, rtol)
        if not math.isfinite(err):
            rejected += 1
            habs *= 0.2
            nonfinite = True
            continue
        nonfinite = False
        if err <= 1.0:
            t_new = t1 if last else t + h
            while si < n_save and direction * (save_t[si] - t_new) <= 0.0:
                if save_t[si] == t_new:
                    _row(out, si, x_new)
                else:
                    th = (save_t[si] - t) / h
                    xs = x
                    for i in range(s):
                        w = dense_weight(P, i, th)
                        if w != 0.0:
                            xs = xs + (w * h) * K[i]
                    _row(out, si, xs)
                si += 1
            t = t_new
            x, x_new = x_new, x  # swap the buffers
            accepted += 1
            if c[s - 1] == 1.0 and np.all(A[s - 1] == b):
                put(K, 0, K[s - 1])  # first same as last
            else:
                put(K, 0, f(t, x, p))
                nfev += 1
            habs *= accept_factor(err, err_prev)
            err_prev = max(err, 1e-4)
        else:
            rejected += 1
            habs *= reject_factor(err)
    counts[0] = accepted
    counts[1] = rejected
    counts[2] = nfev
    return code, t

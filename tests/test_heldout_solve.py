"""Held-out checks of ``solve``: problems and argument combinations that the other tests do not use.

Each test compares with a closed form or an independent implementation written here, or checks that an
argument which would otherwise be ignored or fail deep inside a solve is refused in one line at the entry.
"""

import math

import numpy as np
import pytest

from sdekit import ODE, SDE, BrownianPath, SemilinearODE, ops, solve

A = 2.0


def _semilinear():
    """``x' = -a x + a cos t``: ``A = -a t``, ``lambda = a t``, ``D = cos t`` (exact solution below)."""
    return SemilinearODE(lambda t, p: -p[0] * t, lambda t, p: p[0] * t, lambda t, x, p: ops.cos(t) + 0.0 * x, params=(A,))


def _semilinear_exact(t, t0, x0):
    xp = lambda s: A * (A * np.cos(s) + np.sin(s)) / (A * A + 1)  # noqa: E731 - particular solution
    t = np.asarray(t)[:, None, None]
    return xp(t) + (x0[None] - xp(t0)) * np.exp(-A * (t - t0))


@pytest.mark.parametrize("t_span", [(0.3, 2.3), (2.3, 0.3)])
def test_semilinear_dt_is_the_uniform_step(t_span):
    """``dt`` sets the exponential integrators' uniform step as it does the Runge-Kutta schemes' (it was refused)."""
    x0 = np.array([[1.0, 2.0], [0.0, -1.0]])
    r = solve(_semilinear(), x0, t_span, method="exp_ab3", dt=0.01, backend="numpy")
    assert r.t.size == 201 and r.status == "success"
    # order 3 at h = 0.01: error ~ h^3 times the growth e^{a |t1 - t0|} of the backward run
    assert np.abs(r.x - _semilinear_exact(r.t, t_span[0], x0)).max() < 1e-6 * math.exp(A * 2.0)
    same = solve(_semilinear(), x0, t_span, method="exp_ab3", n_steps=200, backend="numpy")
    np.testing.assert_array_equal(r.x, same.x)


@pytest.mark.parametrize("kw", [dict(dt=0.01, n_steps=100), dict(dt=0.01, t_grid=[0.3, 1.0, 2.3])])
def test_semilinear_conflicting_steps_refused(kw):
    """``dt`` with ``n_steps`` or ``t_grid`` was silently dropped (the step was not the one asked for)."""
    with pytest.raises(ValueError, match=r"give one of `n_steps`, `dt` .* not several"):
        solve(_semilinear(), np.ones(2), (0.3, 2.3), method="exp_ab2", backend="numpy", **kw)


def test_semilinear_tolerances_refused():
    """``rtol``/``atol`` were silently ignored by the fixed-step exponential integrators."""
    with pytest.raises(ValueError, match=r"`rtol`/`atol` apply to adaptive methods"):
        solve(_semilinear(), np.ones(2), (0.3, 2.3), method="exp_ab2", n_steps=100, rtol=1e-3, backend="numpy")


@pytest.mark.parametrize("make", [lambda: ODE(lambda t, x, p: -p[0] * x, params=(1.0,)),
                                  lambda: SDE(lambda t, x, p: -p[0] * x, lambda t, x, p: 0.0 * x, noise="diagonal", params=(1.0,)),
                                  lambda: _semilinear()])
def test_params_assigned_later_are_checked(make):
    """``problem.params = ...`` follows the constructor's rules: one-line errors at the assignment."""
    pr = make()
    with pytest.raises(ValueError, match=r"`params` must be a tuple .* params=\(value,\)"):
        pr.params = 2.0
    with pytest.raises(ValueError, match=r"`params\[0\]` must be real"):
        pr.params = (1.0 + 2.0j,)
    pr.params = [2]
    assert pr.params == (2.0,) and isinstance(pr.params[0], float)


def test_params_assigned_later_are_used():
    """A list assigned to ``params`` after construction is read by the next solve (x' = -k x, x(1) = e^{-k})."""
    pr = ODE(lambda t, x, p: -p[0] * x, params=(1.0,))
    pr.params = [2]
    r = solve(pr, np.ones(1), (0.0, 1.0), method="rk4", n_steps=100, backend="numpy")
    assert abs(r.x[-1, 0, 0] - math.exp(-2.0)) < 1e-9


def test_reverse_time_stratonovich_against_independent_milstein():
    """Reverse-time Stratonovich milstein on a t-dependent diagonal problem, per-path x0, t0 != 0, save_at subset.

    Reference: the analytic-derivative Milstein scheme written here in the reversed clock s = t0 - t
    (drift -mu ds, Stratonovich correction +1/2 sigma sigma' |h|, increments along the run), on the same path
    at 16 times finer steps. A path read forwards, a wrong sign of the correction or a dropped
    t-dependence is off by O(0.1) or more.
    """

    def f(t, x, p):
        return -x * (1.0 + 0.5 * np.cos(t)) + 0.2 * t

    def g(t, x, p):
        return 0.3 * (1.0 + 0.5 * np.sin(2.0 * t)) * (1.0 + 0.5 * np.sin(x))

    def dg(t, x):
        return 0.3 * (1.0 + 0.5 * np.sin(2.0 * t)) * 0.5 * np.cos(x)

    t0, t1, n = 1.7, 0.5, 1024
    x0 = np.random.default_rng(0).uniform(-1.0, 1.0, (5, 3))
    bm = BrownianPath(7, (t1, t0), n_paths=5, noise_dim=3)
    pr = SDE(f, g, noise="diagonal", calculus="stratonovich")
    r = solve(pr, x0, (t0, t1), method="milstein", n_steps=n, brownian=bm, backend="numpy", save_at=[t0, 1.1, t1])
    np.testing.assert_allclose(r.t, [t0, 1.1, t1])
    nr = 16 * n
    dw = bm.increments(nr, reverse=True)
    h = (t1 - t0) / nr
    x = x0.copy()
    mid = None
    for k in range(nr):
        t = t0 + k * h
        gx = g(t, x, None)
        x = x + f(t, x, None) * h + gx * dw[k] + 0.5 * gx * dg(t, x) * (dw[k] ** 2)
        if k + 1 == nr // 2:
            mid = x.copy()
    np.testing.assert_array_equal(r.x[0], x0)
    # strong order 1: the error at h = 1.2 / 1024 is about 1e-2 (the backward run grows errors by ~e^{1.5})
    assert np.abs(r.x[1] - mid).max() < 3e-2
    assert np.abs(r.x[2] - x).max() < 3e-2


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_dopri5_first_step_underflow_fails_that_path_only(backend):
    """A path whose very first step is below float64 resolution of t fails with 'step size underflow'; the others
    finish. Path 0: x' = -t x at t = 1e8 (rate 1e8: Hairer's initial step ~1e-8 * rtol^(1/5) < 10 eps t); path 1:
    x' = 0. The torch backend raised TypeError here (no step had been tried yet)."""
    pr = ODE(lambda t, x, p: -t * x * (x[:, 1:2] > 0))
    x0 = np.array([[1.0, 1.0], [1.0, -1.0]])
    r = solve(pr, x0, (1e8, 1e8 + 1e-3), method="dopri5", backend=backend)
    assert r.status == "failure" and "step size underflow" in r.message
    np.testing.assert_array_equal(r.failed, [True, False])
    x = np.asarray(r.x)
    assert np.isnan(x[-1, 0]).all()
    np.testing.assert_array_equal(x[-1, 1], [1.0, -1.0])

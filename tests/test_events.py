"""Events (issue 15): first passages of SDEs against closed forms, the bias of discrete monitoring, ODE crossing
times against analytic ones, the event log, numpy/numba parity.

Closed forms: first passage of W_t + mu t (inverse Gaussian; Karatzas & Shreve 1991, §3.5.C), the probability
that Brownian motion stays in a strip (Feller 1971, §X.5, the series of exponentials), the maximum of a GBM
(through its logarithm), and the Broadie, Glasserman & Kou (1997, Math. Finance 7(4)) shift of a level observed
at spacing h only: beta sigma sqrt(h), beta = -zeta(1/2) / sqrt(2 pi) ~ 0.5826. Statistical tests are seeded,
at ALPHA, with tolerances from standard errors.

Numba cost: the compiled per-path kernel (one for up to four events) and the steps of euler and milstein serve
every numba test here; the ODE checks with three paths run on the numpy backend.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.special import zeta

import sdekit

ALPHA = 0.01
Z = 4.0  # tolerances: 4 standard errors
BETA = -zeta(0.5) / math.sqrt(2 * math.pi)  # 0.5826: the discrete-monitoring shift of a level (BGK 1997)
MU, LEVEL, T = 0.5, 1.0, 4.0


def drift(t, x, p):
    return p[0] + 0.0 * x


def noise(t, x, p):
    return p[1] + 0.0 * x


def at_level(t, x, p):
    return x[:, 0] - p[2]


def bm(mu, sigma, level):
    """X = mu t + sigma W (additive: euler is exact), with the event level in params."""
    return sdekit.SDE(drift, noise, noise="additive", params=(mu, sigma, level))


def first_passage_cdf(t, mu, a):
    """P(tau <= t) for tau the first time W_s + mu s reaches a > 0."""
    t = np.asarray(t, dtype=float)
    return stats.norm.cdf((mu * t - a) / np.sqrt(t)) + np.exp(2 * mu * a) * stats.norm.cdf((-mu * t - a) / np.sqrt(t))


def within(p_hat, p, n, what):
    se = math.sqrt(p * (1 - p) / n)
    assert abs(p_hat - p) < Z * se, f"{what}: {p_hat:.4f} vs {p:.4f} (s.e. {se:.4f})"


# ---------------------------------------------------------------- first passage (numba)
def test_first_passage_inverse_gaussian():
    """W + 0.5 t reaching 1 on [0, 4], 8 euler steps with the bridge: P(hit) and the law of the time (KS against
    the inverse Gaussian CDF conditioned on tau <= T); the state at the event is on the level; the stopped path
    holds it at the later saves."""
    n = 40_000
    sol = sdekit.solve(bm(MU, 1.0, LEVEL), 0.0, (0.0, T), method="euler", n_steps=8, n_paths=n, seed=101,
                       events=[sdekit.Event(at_level)])
    hit = ~np.isnan(sol.event_t)
    within(hit.mean(), first_passage_cdf(T, MU, LEVEL), n, "P(tau <= T)")
    p = stats.kstest(sol.event_t[hit], lambda t: first_passage_cdf(t, MU, LEVEL) / first_passage_cdf(T, MU, LEVEL))
    assert p.pvalue > ALPHA, p
    np.testing.assert_array_equal(sol.event_id, np.where(hit, 0, -1))
    np.testing.assert_allclose(sol.event_x[hit, 0], LEVEL, rtol=0, atol=1e-8)  # ~1e-9: finite-difference slope
    assert np.isnan(sol.event_x[~hit]).all()
    later = sol.t[:, None] >= sol.event_t[None, :]  # (n_save, n): saves at or after the event
    np.testing.assert_array_equal(sol.x[:, :, 0][later], np.broadcast_to(sol.event_x[:, 0], later.shape)[later])
    assert (sol.x[:, ~hit, 0] < LEVEL).all()
    log = sol.events
    np.testing.assert_array_equal(log.path, np.flatnonzero(hit))
    np.testing.assert_array_equal(log.t, sol.event_t[hit])


def test_bridge_removes_the_discrete_monitoring_bias():
    """P(hit by T) at 2..64 steps. With the bridge: within 4 s.e. of the closed form at every step size. Without:
    below it by an error that shrinks like sqrt(h) (fitted log-log slope; tolerance 4 bootstrap s.e. plus the
    coarse/fine slope gap), and equal to the continuous probability of the level shifted by beta sqrt(h)
    (Broadie, Glasserman & Kou 1997) at the finer steps."""
    n = 40_000
    steps = np.array([2, 4, 8, 16, 32, 64])
    exact = first_passage_cdf(T, MU, LEVEL)
    misses = []
    for k in steps:
        kw = dict(method="euler", n_steps=int(k), n_paths=n, seed=102, save_at=[0.0, T])
        with_bridge = sdekit.solve(bm(MU, 1.0, LEVEL), 0.0, (0.0, T), events=[sdekit.Event(at_level)], **kw)
        within(np.mean(~np.isnan(with_bridge.event_t)), exact, n, f"bridge, {k} steps")
        naive = sdekit.solve(bm(MU, 1.0, LEVEL), 0.0, (0.0, T), events=[sdekit.Event(at_level, bridge=False)], **kw)
        hit = ~np.isnan(naive.event_t)
        h = T / k
        if k >= 16:
            within(hit.mean(), first_passage_cdf(T, MU, LEVEL + BETA * math.sqrt(h)), n, f"BGK shift, {k} steps")
        misses.append(hit)
    misses = np.array(misses)  # (steps, n): hit without the bridge
    log_h = np.log(T / steps)

    def slope(hits, rows=slice(None)):
        return np.polyfit(log_h[rows], np.log(exact - hits[rows].mean(axis=1)), 1)[0]

    fitted = slope(misses)
    rng = np.random.default_rng(0)
    se = np.std([slope(misses[:, rng.integers(0, n, n)]) for _ in range(200)])
    gap = abs(slope(misses, slice(0, 4)) - slope(misses, slice(2, 6)))
    assert abs(fitted - 0.5) < Z * se + gap, f"slope {fitted:.3f} +- {se:.3f}, gap {gap:.3f}"


def test_gbm_barrier_event_on_x():
    """Up-and-out barrier of GBM X = exp(Y), Y = (a - b^2/2) t + b W, with the event on X = exp(Y) (a nonlinear
    event function: its noise scale is b X): P(max X < B on [0, 1]) in closed form."""
    a, b, barrier, n = 0.1, 0.3, 1.3, 40_000
    nu = a - 0.5 * b * b
    problem = bm(nu, b, 0.0)
    sol = sdekit.solve(problem, 0.0, (0.0, 1.0), method="euler", n_steps=8, n_paths=n, seed=103,
                       events=[sdekit.Event(lambda t, x, p: np.exp(x[:, 0]) - barrier)])
    c = math.log(barrier)
    survive = 1.0 - first_passage_cdf(1.0, nu / b, c / b)
    within(np.mean(np.isnan(sol.event_t)), survive, n, "P(max X < B)")


def test_numpy_and_numba_event_times_agree():
    kw = dict(method="euler", n_steps=8, n_paths=64, seed=104, events=[sdekit.Event(at_level)])
    a = sdekit.solve(bm(MU, 1.0, LEVEL), 0.0, (0.0, T), backend="numpy", **kw)
    b = sdekit.solve(bm(MU, 1.0, LEVEL), 0.0, (0.0, T), backend="numba", **kw)
    assert np.isnan(a.event_t).sum() not in (0, 64)
    np.testing.assert_array_equal(a.event_id, b.event_id)
    np.testing.assert_allclose(a.event_t, b.event_t, rtol=1e-13, atol=0)
    np.testing.assert_allclose(a.x, b.x, rtol=1e-13, atol=0)


@pytest.mark.parametrize("backend", ["numpy", "numba", "torch"])
def test_an_event_without_noise_along_it_is_the_straight_line_crossing(backend):
    """sigma = 0: X = mu t exactly, and the event X = L is crossed at L / mu, between steps (7 steps: the crossing
    step starts at g = -1/7), upwards only; a falling event never fires. (The numba backend divided by the last noise
    scale, 0 here, and raised ZeroDivisionError.)"""
    for direction, expected in ((1, LEVEL / MU), (0, LEVEL / MU), (-1, math.nan)):
        sol = sdekit.solve(bm(MU, 0.0, LEVEL), 0.0, (0.0, T), method="euler", n_steps=7, n_paths=2, seed=1,
                           backend=backend, events=[sdekit.Event(at_level, direction=direction)])
        np.testing.assert_allclose(sol.event_t, [expected, expected], rtol=1e-12)


# ---------------------------------------------------------------- two events, adaptive steps
def test_brownian_motion_stays_in_a_strip():
    """W from 0 in (-1, 1) on [0, 1], two terminal events (one per wall), 4 euler steps with the bridge:
    P(stay) = (4/pi) sum_k (-1)^k / (2k+1) exp(-(2k+1)^2 pi^2 T / 8) (Feller 1971); each wall takes half of the
    exits."""
    n = 40_000
    sol = sdekit.solve(bm(0.0, 1.0, 0.0), 0.0, (0.0, 1.0), method="euler", n_steps=4, n_paths=n, seed=105,
                       events=[sdekit.Event(lambda t, x, p: x[:, 0] - 1.0),
                                                sdekit.Event(lambda t, x, p: x[:, 0] + 1.0)])
    k = np.arange(20)
    stay = 4 / np.pi * np.sum((-1.0) ** k / (2 * k + 1) * np.exp(-((2 * k + 1) ** 2) * np.pi**2 / 8))
    within(np.mean(sol.event_id == -1), stay, n, "P(stay in the strip)")
    within(np.mean(sol.event_id == 0), (1 - stay) / 2, n, "P(exit at +1)")
    np.testing.assert_allclose(sol.event_x[sol.event_id == 0, 0], 1.0, atol=1e-9)
    np.testing.assert_allclose(sol.event_x[sol.event_id == 1, 0], -1.0, atol=1e-9)


def test_events_with_adaptive_steps_gbm_up_and_out():
    """GBM dX = aX dt + bX dW solved by adaptive milstein, the barrier as an event on log X: P(max X < B) in
    closed form."""
    a, b, barrier, n = 0.1, 0.3, 1.3, 20_000

    def f(t, x, p):
        return a * x

    def g(t, x, p):
        return b * x

    sol = sdekit.solve(sdekit.SDE(f, g, noise="diagonal"), 1.0, (0.0, 1.0), method="milstein", rtol=1e-2,
                       n_paths=n, seed=106,
                       events=[sdekit.Event(lambda t, x, p: np.log(x[:, 0]) - math.log(barrier))])
    nu = a - 0.5 * b * b
    within(np.mean(np.isnan(sol.event_t)), 1.0 - first_passage_cdf(1.0, nu / b, math.log(barrier) / b), n,
           "adaptive P(max X < B)")
    assert np.unique(sol.steps_per_path).size > 1


# ---------------------------------------------------------------- ODE events (numpy)
def oscillator(t, x, p):
    return np.stack([x[:, 1], -x[:, 0]], axis=1)


PHASES = np.array([0.0, 0.3, 1.0])  # x = cos(t + phi), v = -sin(t + phi)
X0 = np.stack([np.cos(PHASES), -np.sin(PHASES)], axis=1)


def crossings(direction, t_end):
    """Times of x = cos(t + phi) = 0 per path: falling at pi/2 + 2k pi - phi, rising at 3pi/2 + 2k pi - phi."""
    out = []
    for phi in PHASES:
        ts = np.pi / 2 + np.pi * np.arange(6) - phi
        rising = np.arange(6) % 2 == 1
        keep = (ts > 0) & (ts <= t_end) & ((direction == 0) | (rising == (direction > 0)))
        out.append(ts[keep])
    return out


@pytest.mark.parametrize("method, kw, tol", [("dopri5", dict(rtol=1e-10, atol=1e-12), 1e-8),
                                             ("rk4", dict(n_steps=400), 1e-7)])
@pytest.mark.parametrize("direction", [0, 1, -1])
def test_ode_event_times(method, kw, tol, direction):
    """Harmonic oscillator from three phases: non-terminal events give every crossing in the direction, in order
    per path (EventLog); a terminal one stops each path at its first one and later saves hold that state."""
    t_end = 10.0
    ode = sdekit.ODE(oscillator)
    free = sdekit.solve(ode, X0, (0.0, t_end), method=method, backend="numpy",
                        events=[sdekit.Event(lambda t, x, p: x[:, 0], terminal=False, direction=direction)], **kw)
    log = free.events
    expected = crossings(direction, t_end)
    np.testing.assert_array_equal(log.path, np.repeat(np.arange(3), [e.size for e in expected]))
    np.testing.assert_allclose(log.t, np.concatenate(expected), rtol=0, atol=tol)
    np.testing.assert_allclose(log.x[:, 0], 0.0, atol=tol)
    np.testing.assert_allclose(np.abs(log.x[:, 1]), 1.0, atol=tol)
    assert np.isnan(free.event_t).all() and (free.event_id == -1).all()
    np.testing.assert_allclose(free.x[-1], np.stack([np.cos(t_end + PHASES), -np.sin(t_end + PHASES)], axis=1),
                               atol=1e-6)

    save = np.linspace(0.0, t_end, 11)
    stop = sdekit.solve(ode, X0, (0.0, t_end), method=method, backend="numpy", save_at=save,
                        events=[sdekit.Event(lambda t, x, p: x[:, 0], direction=direction)], **kw)
    first = np.array([e[0] for e in expected])
    np.testing.assert_allclose(stop.event_t, first, rtol=0, atol=tol)
    np.testing.assert_array_equal(stop.event_id, 0)
    np.testing.assert_allclose(stop.event_x, np.stack([np.cos(first + PHASES), -np.sin(first + PHASES)], axis=1),
                               atol=tol)
    for i in range(3):
        after = save > first[i]
        np.testing.assert_array_equal(stop.x[after, i], np.broadcast_to(stop.event_x[i], (after.sum(), 2)))
        np.testing.assert_allclose(stop.x[~after, i, 0], np.cos(save[~after] + PHASES[i]), atol=1e-6)


def test_event_log_orders_by_path_then_time():
    """Two non-terminal events (x = 0 and v = 0) on three paths: the log is sorted by path, then by time, and
    ``of`` selects one event's firings."""
    ode = sdekit.ODE(oscillator)
    sol = sdekit.solve(ode, X0, (0.0, 7.0), method="dopri5", rtol=1e-10, atol=1e-12, backend="numpy",
                       events=[sdekit.Event(lambda t, x, p: x[:, 0], terminal=False),
                               sdekit.Event(lambda t, x, p: x[:, 1], terminal=False)])
    log = sol.events
    key = log.path * 100.0 + log.t
    assert np.all(np.diff(key) > 0)
    for i, phi in enumerate(PHASES):  # x = 0 at pi/2 + k pi - phi, v = 0 at k pi - phi
        ts = np.sort(np.concatenate([np.pi / 2 + np.pi * np.arange(3) - phi, np.pi * np.arange(1, 3) - phi]))
        ts = ts[(ts > 0) & (ts <= 7.0)]
        np.testing.assert_allclose(log.t[log.path == i], ts, atol=1e-8)
    v_zero = log.of(1)
    assert (v_zero.event == 1).all() and len(v_zero) == int((log.event == 1).sum())
    np.testing.assert_allclose(v_zero.x[:, 1], 0.0, atol=1e-8)


def test_event_state_lies_on_a_nonlinear_level():
    """The state at an SDE crossing is moved onto G = 0 by Newton's method: exact for a level of exp(x), where one
    linear correction from the straight line between the steps misses it by a few per cent."""
    drifting = sdekit.SDE(lambda t, x, p: 0.055 + 0 * x, lambda t, x, p: 0.3 + 0 * x, noise="additive")
    sol = sdekit.solve(drifting, 0.0, (0.0, 1.0), method="euler", n_steps=8, n_paths=2000, seed=103, backend="numpy",
                       events=[sdekit.Event(lambda t, x, p: np.exp(x[:, 0]) - 1.3)])
    hit = np.isfinite(sol.event_t)
    assert hit.sum() > 500
    np.testing.assert_allclose(np.exp(sol.event_x[hit, 0]), 1.3, rtol=1e-12)

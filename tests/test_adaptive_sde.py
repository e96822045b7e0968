"""Adaptive SDE steps per path (issue 15): laws at loose tolerances, error against tolerance, reproducibility.

Truth comes from exact solutions read on the solve's own Brownian path (``Solution.brownian.W``) or from exact
laws (geometric Brownian motion, Ornstein–Uhlenbeck). Statistical tests are seeded, with the level stated;
tolerances come from standard errors.

Numba cost: the batched adaptive integrator is one kernel per noise shape, each scheme's step a few seconds
more; the numba tests use milstein, sriw1 and sra1 on one diagonal and one additive problem. Logic checks with a
few paths (matrix noise, Stratonovich, failures, bad input) run on the numpy backend.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from scipy import stats

import sdekit

ALPHA = 0.01  # level of every KS test here
N_LAW = 100_000  # KS power: a 3 % scale error moves the CDF by ~0.0073 at 1 s.d., ~2.3 / sqrt(N_LAW) (p ~ 1e-4)
SCALE_ERROR = 1.03


def gbm_f(t, x, p):
    return p[0] * x


def gbm_g(t, x, p):
    return p[1] * x


def ou_f(t, x, p):
    return p[0] * (p[1] - x)


def ou_g(t, x, p):
    return p[2] + 0.0 * x


def gbm(a, b):
    return sdekit.SDE(gbm_f, gbm_g, noise="diagonal", params=(a, b))


def ou(theta, mu, sigma):
    return sdekit.SDE(ou_f, ou_g, noise="additive", params=(theta, mu, sigma))


def gbm_exact(x0, a, b, t, w):
    """Itô GBM on the path: x0 exp((a - b^2/2) t + b W(t))."""
    return x0 * np.exp((a - 0.5 * b * b) * t + b * w)


def assert_law(z, what):
    """``z`` standard normal by KS at ALPHA, and the same test rejects ``z`` scaled by 3 % (its power here)."""
    p = stats.kstest(z, "norm").pvalue
    assert p > ALPHA, f"{what}: KS p = {p:.3g} against the exact law"
    p_scaled = stats.kstest(z * SCALE_ERROR, "norm").pvalue
    assert p_scaled < ALPHA, f"{what}: the KS test would not see a 3 % scale error (p = {p_scaled:.3g})"


# ---------------------------------------------------------------- laws at rtol 1e-1
@pytest.mark.parametrize("method, rtol, a, b, rejected", [
    ("milstein", 1e-1, 0.0, 0.6, 0.0), ("sriw1", 1e-1, 0.0, 0.6, 0.0),
    ("milstein", 1e-2, 0.5, 0.8, 0.1), ("sriw1", 1e-3, 0.5, 0.8, 0.1),
])
def test_gbm_law(method, rtol, a, b, rejected):
    """Law of log X_T of GBM (T = 1) against the exact one, by KS with power against a 3 % scale error.

    At rtol 1e-1 the step count sits on its floor (15 steps: the growth per step is bounded by 1.125 from the
    initial step) and about 1 % of the attempts are rejected; the driftless GBM keeps Milstein's own weak error
    below the KS resolution there (with a = 0.5, b = 0.8 it is ~3 % in scale, as with 16 fixed steps: a
    discretization error, not a rejection bias). At the tighter tolerances more than 10 % of the attempts are
    rejected and retried on the same path (refined by the bridge); the law is still the exact one.
    """
    sol = sdekit.solve(gbm(a, b), 1.0, (0.0, 1.0), method=method, rtol=rtol, n_paths=N_LAW, seed=11)
    assert sol.status == "success"
    z = (np.log(sol.x[-1, :, 0]) - (a - 0.5 * b * b)) / b
    assert_law(z, f"{method} at rtol {rtol}")
    share = sol.rejected_per_path.sum() / (sol.steps_per_path.sum() + sol.rejected_per_path.sum())
    assert share > rejected, f"{share:.3f} of the attempts rejected"


def test_ou_law_at_loose_tolerance_save_at_and_t0():
    """sra1 on OU from t0 = 0.3 at rtol 0.1, saved at non-dyadic times: the exact Gaussian law at each."""
    theta, mu, sigma, x0, t0 = 1.5, 0.4, 0.9, 2.0, 0.3
    save = np.array([t0, t0 + 1 / 3, t0 + 0.7, t0 + 1.1])
    sol = sdekit.solve(ou(theta, mu, sigma), x0, (t0, t0 + 1.1), method="sra1", rtol=1e-1, n_paths=N_LAW, seed=12,
                       save_at=save)
    assert sol.status == "success"
    np.testing.assert_array_equal(sol.t, save)
    np.testing.assert_array_equal(sol.x[0, :, 0], x0)
    for k in range(1, save.size):
        s = save[k] - t0
        mean = mu + (x0 - mu) * np.exp(-theta * s)
        sd = sigma * np.sqrt((1 - np.exp(-2 * theta * s)) / (2 * theta))
        assert_law((sol.x[k, :, 0] - mean) / sd, f"OU at t = {save[k]:.4f}")
    assert np.unique(sol.steps_per_path).size > 1


def test_ou_law_reverse_time():
    """t1 < t0: steps run backwards, h < 0, so the OU drift pushes away from mu: X is OU with -theta in s = t0 - t."""
    theta, mu, sigma, x0 = 0.7, -0.2, 0.5, 0.3
    sol = sdekit.solve(ou(theta, mu, sigma), x0, (1.5, 0.5), method="sra1", rtol=1e-1, n_paths=N_LAW // 4, seed=13,
                       save_at=[1.5, 1.5 - 1 / 3, 0.5])
    assert sol.status == "success"
    for k, s in ((1, 1 / 3), (2, 1.0)):
        mean = mu + (x0 - mu) * np.exp(theta * s)
        sd = sigma * np.sqrt((np.exp(2 * theta * s) - 1) / (2 * theta))
        assert stats.kstest((sol.x[k, :, 0] - mean) / sd, "norm").pvalue > ALPHA


# ---------------------------------------------------------------- the same Brownian path as fixed steps
def test_additive_noise_reads_the_same_path_as_fixed_steps():
    """dX = sigma dW: every step is exact, so the adaptive solution at any save time is x0 + sigma W(t) of the
    solve's path, forwards and backwards, and equals a fixed-step solve on the same seed at the grid times."""
    sigma, x0 = 0.7, 0.25
    bm = ou(0.0, 0.0, sigma)
    save = np.array([0.0, 0.125, 0.3, 1 / 3, 0.5, 0.9, 1.0])
    sol = sdekit.solve(bm, x0, (0.0, 1.0), method="sra1", rtol=1e-2, n_paths=64, seed=21, save_at=save)
    w = sol.brownian.W(save)[:, :, 0]
    np.testing.assert_allclose(sol.x[:, :, 0], x0 + sigma * w, rtol=0, atol=1e-13)
    fixed = sdekit.solve(bm, x0, (0.0, 1.0), method="sra1", n_steps=8, n_paths=64, seed=21, backend="numpy")
    grid = np.searchsorted(fixed.t, [0.0, 0.125, 0.5, 1.0])
    np.testing.assert_allclose(sol.x[[0, 1, 4, 6]], fixed.x[grid], rtol=0, atol=1e-13)
    back = sdekit.solve(bm, x0, (1.0, 0.0), method="sra1", rtol=1e-2, n_paths=64, seed=21, save_at=[1.0, 0.3, 0.0])
    wb = back.brownian.W(np.array([1.0, 0.3, 0.0]))[:, :, 0]
    np.testing.assert_allclose(back.x[:, :, 0], x0 + sigma * (wb - wb[0]), rtol=0, atol=1e-13)


# ---------------------------------------------------------------- error against tolerance
def test_strong_error_scales_with_rtol():
    """RMS error of milstein on GBM against the exact solution on the same path, over rtol 3e-2 .. 1e-3 (25 to
    550 steps per path): a straight line in log-log with slope 1 (the estimate is O(h), milstein's strong order
    1: error proportional to the tolerance). Tolerance of the slope: 4 bootstrap standard errors (over paths)
    plus the gap between the slopes of the coarse and the fine half (curvature). At rtol 1e-1 the step count
    sits on its floor (~19: growth per step bounded by 1.125 from the initial step), so it is left out."""
    a, b = 0.5, 0.8
    rtols = np.array([3e-2, 1e-2, 3e-3, 1e-3])
    errs = []
    for rtol in rtols:
        sol = sdekit.solve(gbm(a, b), 1.0, (0.0, 1.0), method="milstein", rtol=rtol, n_paths=2000, seed=31)
        exact = gbm_exact(1.0, a, b, 1.0, sol.brownian.W(1.0)[:, 0])
        errs.append((sol.x[-1, :, 0] - exact) ** 2)
    errs = np.array(errs)
    x = np.log(rtols)

    def slope(sq, rows=slice(None)):
        return np.polyfit(x[rows], 0.5 * np.log(sq[rows].mean(axis=1)), 1)[0]

    fitted = slope(errs)
    rng = np.random.default_rng(0)
    se = np.std([slope(errs[:, rng.integers(0, errs.shape[1], errs.shape[1])]) for _ in range(200)])
    curvature = abs(slope(errs, slice(0, 3)) - slope(errs, slice(1, 4)))
    assert abs(fitted - 1.0) < 4 * se + curvature, f"slope {fitted:.3f} +- {se:.3f} (curvature {curvature:.3f})"


def test_steps_differ_across_paths():
    """Different paths take different steps; identical paths (one path given twice) take the same."""
    sol = sdekit.solve(gbm(0.5, 0.8), 1.0, (0.0, 1.0), method="milstein", rtol=1e-3, n_paths=400, seed=41)
    assert np.unique(sol.steps_per_path).size >= 5
    assert np.unique(sol.rejected_per_path).size >= 3
    bp = sdekit.BrownianPath(41, (0.0, 1.0), n_paths=400)
    again = sdekit.solve(gbm(0.5, 0.8), 1.0, (0.0, 1.0), method="milstein", rtol=1e-3, brownian=bp.paths_slice(7, 8))
    assert again.steps_per_path[0] == sol.steps_per_path[7]


# ---------------------------------------------------------------- reproducibility
@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs NUMBA_NUM_THREADS >= 2")
def test_same_result_with_one_and_two_threads():
    """numba.set_num_threads 1 vs 2 (the paths are also cut into different ranges): the same numbers."""
    bp = sdekit.BrownianPath(51, (0.0, 1.0), n_paths=700, levy_area=True)
    threads = numba.get_num_threads()
    runs = []
    try:
        for k in (1, 2):
            numba.set_num_threads(k)
            runs.append(sdekit.solve(gbm(0.5, 0.8), 1.0, (0.0, 1.0), method="sriw1", rtol=1e-2, brownian=bp))
    finally:
        numba.set_num_threads(threads)
    one, two = runs
    np.testing.assert_array_equal(two.x, one.x)
    np.testing.assert_array_equal(two.steps_per_path, one.steps_per_path)
    np.testing.assert_array_equal(two.rejected_per_path, one.rejected_per_path)


def test_rows_of_a_solve_equal_the_solve_of_a_slice():
    """Rows a:b of a solve equal the solve of BrownianPath.paths_slice(a, b) (a split that cuts the integrator's
    256-path batches)."""
    bp = sdekit.BrownianPath(51, (0.0, 1.0), n_paths=700, levy_area=True)
    whole = sdekit.solve(gbm(0.5, 0.8), 1.0, (0.0, 1.0), method="sriw1", rtol=1e-2, brownian=bp)
    part = sdekit.solve(gbm(0.5, 0.8), 1.0, (0.0, 1.0), method="sriw1", rtol=1e-2, brownian=bp.paths_slice(200, 530))
    np.testing.assert_array_equal(part.x, whole.x[:, 200:530])
    np.testing.assert_array_equal(part.steps_per_path, whole.steps_per_path[200:530])
    np.testing.assert_array_equal(part.rejected_per_path, whole.rejected_per_path[200:530])


@pytest.mark.parametrize("method", ["milstein", "sriw1"])
def test_numpy_and_numba_agree(method):
    """Same steps, rejections and evaluations per path, states to round-off."""
    kw = dict(method=method, rtol=1e-2, n_paths=24, seed=61, save_at=[0.0, 0.4, 1.0])
    a = sdekit.solve(gbm(0.5, 0.8), 1.0, (0.0, 1.0), backend="numpy", **kw)
    b = sdekit.solve(gbm(0.5, 0.8), 1.0, (0.0, 1.0), backend="numba", **kw)
    np.testing.assert_array_equal(a.steps_per_path, b.steps_per_path)
    np.testing.assert_array_equal(a.rejected_per_path, b.rejected_per_path)
    np.testing.assert_array_equal(a.drift_evals_per_path, b.drift_evals_per_path)
    np.testing.assert_allclose(a.x, b.x, rtol=1e-12, atol=0)


def test_batched_and_per_path_integrators_agree():
    """Functions that need a scalar time run one path at a time; functions that take one time per row run in
    batches: the same steps and states."""

    def drift_scalar_t(t, x, p):
        return (0.5 + 0.0 * float(t)) * x  # float(t): needs a scalar time

    per_path = sdekit.SDE(drift_scalar_t, gbm_g, noise="diagonal", params=(0.5, 0.8))
    kw = dict(method="sriw1", rtol=1e-2, n_paths=12, seed=62, backend="numpy")
    a = sdekit.solve(per_path, 1.0, (0.0, 1.0), **kw)
    b = sdekit.solve(gbm(0.5, 0.8), 1.0, (0.0, 1.0), **kw)
    np.testing.assert_array_equal(a.steps_per_path, b.steps_per_path)
    np.testing.assert_allclose(a.x, b.x, rtol=1e-13, atol=0)


# ---------------------------------------------------------------- noise shapes, calculus, nonlinear sigma (numpy)
def test_matrix_additive_noise_sra1():
    """dX = b dt + S dW with a (2, 3) matrix S: sra1 is exact, X(t) = x0 + b t + S W(t) at non-dyadic save times.
    dX = -theta X dt + S dW at rtol 0.1: the mean and covariance of X_1 (exact Gaussian law) within 4 s.e."""
    s_mat = np.array([[0.5, -0.3, 0.2], [0.1, 0.4, -0.6]])
    b = np.array([0.3, -0.1])
    problem = sdekit.SDE(lambda t, x, p: b + 0.0 * x, lambda t, x, p: s_mat, noise="additive", noise_dim=3)
    save = np.array([0.0, 0.2, 0.7, 1.0])
    sol = sdekit.solve(problem, [1.0, -1.0], (0.0, 1.0), method="sra1", rtol=1e-2, n_paths=16, seed=71, save_at=save,
                       backend="numpy")
    w = sol.brownian.W(save)  # (len(save), n, 3)
    exact = np.array([1.0, -1.0]) + save[:, None, None] * b + w @ s_mat.T
    np.testing.assert_allclose(sol.x, exact, rtol=0, atol=1e-13)
    theta, n = 1.2, 2000
    ou_matrix = sdekit.SDE(lambda t, x, p: -theta * x, lambda t, x, p: s_mat, noise="additive", noise_dim=3)
    sol = sdekit.solve(ou_matrix, [1.0, -1.0], (0.0, 1.0), method="sra1", rtol=1e-1, n_paths=n, seed=75,
                       backend="numpy")
    mean = np.array([1.0, -1.0]) * np.exp(-theta)
    cov = s_mat @ s_mat.T * (1 - np.exp(-2 * theta)) / (2 * theta)
    x = sol.x[-1]
    assert np.all(np.abs(x.mean(axis=0) - mean) < 4 * np.sqrt(np.diag(cov) / n))
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)  # s.e. of a Gaussian sample covariance
    assert np.all(np.abs(np.cov(x.T) - cov) < 4 * se_cov)


def test_scalar_noise_two_components():
    """One W drives both components of GBM: X_T^i = x0^i exp((a_i - b_i^2/2) T + b_i W_T) on the path."""
    a, b = np.array([0.3, -0.2]), np.array([0.9, 0.6])
    problem = sdekit.SDE(lambda t, x, p: a * x, lambda t, x, p: b * x, noise="scalar")
    x0 = np.array([1.0, 2.0])
    errs = []
    for rtol in (1e-2, 1e-3):
        sol = sdekit.solve(problem, x0, (0.0, 1.0), method="milstein", rtol=rtol, n_paths=200, seed=72)
        assert sol.brownian.noise_dim == 1
        exact = x0 * np.exp((a - 0.5 * b * b) + b * sol.brownian.W(1.0))
        errs.append(np.sqrt(np.mean((sol.x[-1] - exact) ** 2)))
    assert errs[1] < errs[0] / 4  # error proportional to rtol would give /10


def test_euler_heun_stratonovich():
    """Stratonovich GBM dX = aX dt + bX o dW: X_T = x0 exp(a T + b W_T) (no -b^2/2); the Itô solution is far."""
    a, b = 0.4, 0.7
    problem = sdekit.SDE(gbm_f, gbm_g, noise="diagonal", calculus="stratonovich", params=(a, b))
    errs = []
    for rtol in (1e-2, 1e-3):
        sol = sdekit.solve(problem, 1.0, (0.0, 1.0), method="euler_heun", rtol=rtol, n_paths=100, seed=73,
                           backend="numpy")
        w = sol.brownian.W(1.0)[:, 0]
        errs.append(np.sqrt(np.mean((sol.x[-1, :, 0] - np.exp(a + b * w)) ** 2)))
        ito_gap = np.sqrt(np.mean((np.exp(a + b * w) - gbm_exact(1.0, a, b, 1.0, w)) ** 2))
    assert errs[1] < errs[0] / 4
    assert errs[1] < ito_gap / 50


AMP, DRIFT = 0.8, 0.5  # X = arctan(tan X0 + DRIFT t + AMP W): sigma = AMP cos^2 x, sigma'' != 0


def test_nonlinear_sigma():
    """Itô dX = (DRIFT cos^2 X - AMP^2 sin X cos^3 X) dt + AMP cos^2 X dW, exact X_T = arctan(tan X0 + DRIFT T +
    AMP W_T), with sriw1 and milstein: the error against the exact solution on the path shrinks with rtol (over
    two decades by more than 10)."""

    def f(t, x, p):
        c = np.cos(x)
        return DRIFT * c * c - AMP * AMP * np.sin(x) * c * c * c

    def g(t, x, p):
        c = np.cos(x)
        return AMP * c * c

    problem = sdekit.SDE(f, g, noise="diagonal")
    for method in ("sriw1", "milstein"):
        errs = []
        for rtol in (1e-2, 1e-3, 1e-4):
            sol = sdekit.solve(problem, 0.3, (0.0, 1.0), method=method, rtol=rtol, atol=1e-6, n_paths=200, seed=74)
            exact = np.arctan(np.tan(0.3) + DRIFT + AMP * sol.brownian.W(1.0)[:, 0])
            errs.append(np.sqrt(np.mean((sol.x[-1, :, 0] - exact) ** 2)))
        assert errs[1] < errs[0] and errs[2] < errs[1], (method, errs)
        assert errs[2] < errs[0] / 10, (method, errs)


# ---------------------------------------------------------------- failures and bad input
def test_max_steps_is_a_reported_failure():
    sol = sdekit.solve(gbm(0.5, 0.8), 1.0, (0.0, 1.0), method="milstein", rtol=1e-6, max_steps=20, n_paths=5, seed=81,
                       backend="numpy")
    assert sol.status == "failure"
    assert sol.failed.all()
    assert sol.failure_reasons == {"max_steps reached": 5}
    assert np.all((sol.failure_time > 0.0) & (sol.failure_time < 1.0))
    assert np.all(sol.steps_per_path + sol.rejected_per_path == 20)


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="milstein", n_steps=8, dt0=0.1), "dt0"),
    (dict(method="euler", rtol=1e-2), "refused on multiplicative"),
    (dict(method="implicit_euler", rtol=1e-2), "no error estimate"),
    (dict(method="milstein", rtol=1e-2, n_steps=8), "drop `n_steps`"),
    (dict(method="implicit_euler", n_steps=8, events=[sdekit.Event(lambda t, x, p: x[:, 0] - 2.0)]), "events"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sdekit.solve(gbm(0.5, 0.8), 1.0, (0.0, 1.0), n_paths=2, seed=1, backend="numpy", **kwargs)


@pytest.mark.parametrize("backend", ["numpy", "numba", "torch"])
def test_dt_max_bounds_every_step(backend):
    """A burst of noise narrower than the steps a loose tolerance allows is stepped over unless ``dt_max`` bounds the
    steps: with dt_max = 1e-3 every path takes at least 1000 steps and the burst's variance is resolved."""
    if backend == "torch":
        pytest.importorskip("torch")
    burst = sdekit.SDE(lambda t, x, p: 0.0 * x,
                       lambda t, x, p: 0.05 + 3.0 * sdekit.ops.exp(-((t - 0.503) / 0.004) ** 2) + 0.0 * x,
                       noise="additive")
    n = 400 if backend != "numpy" else 100
    sol = sdekit.solve(burst, 0.0, (0.0, 1.0), method="sra1", rtol=1e-1, atol=1e-1, dt_max=1e-3, n_paths=n, seed=5,
                       backend=backend)
    assert np.all(np.asarray(sol.steps_per_path) >= 1000)
    # Var X_1 = int sigma^2 dt = 0.05^2 + 2 * 0.05 * 3 * 0.004 sqrt(pi) + 9 * 0.004 sqrt(pi / 2)
    var = 0.05**2 + 0.3 * 0.004 * np.sqrt(np.pi) + 9.0 * 0.004 * np.sqrt(np.pi / 2.0)
    final = np.asarray(sol.x[-1, :, 0])
    assert abs(final.var() / var - 1.0) < 4.0 * np.sqrt(2.0 / n)
    with pytest.raises(ValueError, match="`dt_max` bounds the steps of an adaptive SDE solve"):
        sdekit.solve(burst, 0.0, (0.0, 1.0), method="sra1", n_steps=8, dt_max=0.1, backend=backend)

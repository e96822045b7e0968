"""SK-ROCK and S-ROCK: the stability interval grows like s^2, stiff OU stays bounded with the stationary variance of
the scheme's closed form, weak order 1, the power-iteration estimate of the spectral radius, backend parity with
many stages.

Closed forms used (Abdulle, Almuslimani & Vilmart 2018, §2): on dX = lambda X dt + mu X dW with p = h lambda,
z = w0 + w1 p, one SK-ROCK step is X_1 = A(p) X_0 + B(p) mu X_0 dW with A = T_s(z) / T_s(w0) and
B = U_{s-1}(z) / U_{s-1}(w0) (1 + w1 p / 2); one S-ROCK step is A(p) X_0 + A_{s-1}(p) mu X_0 dW with
A_{s-1} = T_{s-1}(z) / T_{s-1}(w0) (the noise at stage s - 1). They are written here from the Chebyshev
polynomials (numpy.polynomial), apart from the code.
"""

import math

import numpy as np
import pytest
from numpy.polynomial import chebyshev as C

import sdekit as sk
from sdekit.schemes import _steps, stabilized

STEPS = {"skrock": _steps.skrock, "srock": _steps.srock}


def _T(s, z):
    return C.chebval(z, [0] * s + [1])


def _U(n, z):  # U_n(z) = (T_{n+1})'(z) / (n + 1)
    return C.chebval(z, C.chebder([0] * (n + 1) + [1])) / (n + 1)


def _w(name, s):
    eta = 0.05 if name == "skrock" else float(np.interp(s, [3, 10, 50, 100, 150, 200], [3.7, 5.9, 10.8, 13.5, 15.8, 17]))
    w0 = 1 + eta / s**2
    return w0, _T(s, w0) / (s * _U(s - 1, w0))


def closed_form(name, s, p):
    """``(A, B)``: drift and noise factors of one step on the linear test equation (see the module docstring)."""
    w0, w1 = _w(name, s)
    z = w0 + w1 * p
    if name == "skrock":
        return _T(s, z) / _T(s, w0), _U(s - 1, z) / _U(s - 1, w0) * (1 + w1 * p / 2)
    return _T(s, z) / _T(s, w0), _T(s - 1, z) / _T(s - 1, w0)


def _one_step(name, s, p, q):
    """Mean-square amplification E[X_1^2] / X_0^2 of one step of the code's step function, for each p (h = 1,
    lambda = p, mu^2 = q): dW = +-1 with probability 1/2 has the first two moments of N(0, 1), which are all a
    step linear in dW can see."""
    p, q = np.broadcast_arrays(np.asarray(p, float), np.asarray(q, float))
    lam, mu = p.reshape(-1, 1), np.sqrt(q).reshape(-1, 1)
    f = lambda t, x, _: lam * x  # noqa: E731
    g = lambda t, x, _: mu * x  # noqa: E731
    x = np.ones_like(lam)
    tab = stabilized.chebyshev_tab(name, s)
    out = [STEPS[name](f, g, (), tab, 0.0, x, 1.0, sign * np.ones_like(lam), None) for sign in (1.0, -1.0)]
    return (0.5 * (out[0] ** 2 + out[1] ** 2)).ravel()


@pytest.mark.parametrize("name", ["skrock", "srock"])
def test_the_stability_interval_grows_like_s_squared_and_its_boundary_is_sharp(name):
    """Without noise: the amplification is at most 1 just inside ell(s) and above 1 just outside, for s = 3..20;
    ell(s) / s^2 is (2 - 4 eta / 3) to O(eta^2) for SK-ROCK (1.94) and falls with S-ROCK's growing damping."""
    for s in (3, 5, 10, 20):
        ell = stabilized.stability_interval(name, s)
        w0, w1 = _w(name, s)
        assert ell == pytest.approx(2 * w0 / w1, rel=1e-12)
        inside = np.linspace(-0.99 * ell, 0.0, 400)
        assert np.all(_one_step(name, s, inside, 0.0) <= 1.0 + 1e-12)
        assert np.all(_one_step(name, s, -1.01 * ell, 0.0) > 1.0)
        assert math.sqrt(_one_step(name, s, -1.01 * ell, 0.0)[0]) ** 200 > 1e3  # 200 steps just outside
        if name == "skrock":
            assert ell / s**2 == pytest.approx(2 - 4 * 0.05 / 3, rel=0.01)
    ratios = [stabilized.stability_interval(name, s) / s**2 for s in (3, 5, 10, 20)]
    assert 0.5 < ratios[-1] / ratios[0] <= 1.0


@pytest.mark.parametrize("name, usable, noise", [("skrock", 1.0, (0.5, 1.0, 1.9)), ("srock", 0.8, (0.5, 1.0, 1.5))])
def test_mean_square_stability_with_multiplicative_noise(name, usable, noise):
    """dX = lambda X dt + mu X dW, mu^2 = theta |lambda|: mean-square amplification <= 1 over the usable interval
    (SK-ROCK: all of it, up to theta = 1.9 < 2, the equation's own limit; S-ROCK: 0.8 ell(s), theta <= 1.5) and > 1
    just past ell(s); it equals the closed form."""
    for s in (3, 5, 10, 20):
        ell = stabilized.stability_interval(name, s)
        p = np.linspace(-usable * (1 - 1e-3) * ell, 0.0, 400)  # SK-ROCK: the endpoint itself is marginal
        for theta in noise:
            r = _one_step(name, s, p, -theta * p)
            a, b = closed_form(name, s, p)
            np.testing.assert_allclose(r, a**2 - theta * p * b**2, rtol=1e-9, atol=1e-12)
            assert np.all(r <= 1.0 + 1e-9), (s, theta, p[r > 1.0 + 1e-9].max())
        assert _one_step(name, s, -1.02 * ell, 0.5 * 1.02 * ell)[0] > 1.0


def test_stage_choice_covers_the_step_with_the_safety_factor():
    for name in ("skrock", "srock"):
        for h_rho in (0.5, 7.8125, 100.0, 3000.0):
            s = stabilized.stages_for(name, h_rho)
            frac = 1.0 if name == "skrock" else 0.8
            assert frac * stabilized.stability_interval(name, s) >= stabilized.SAFETY * h_rho
            if s > (1 if name == "skrock" else 3):
                assert frac * stabilized.stability_interval(name, s - 1) < stabilized.SAFETY * h_rho
    with pytest.raises(ValueError, match=r"srock needs \|h\| \* spectral_radius <= .* use more steps"):
        stabilized.stages_for("srock", 1e6)


LAM, SIG, H = -500.0, 1.0, 1.0 / 64


def test_stiff_ou_stays_bounded_where_euler_diverges():
    """dX = -500 X dt + dW, h = 1/64 (h lambda = -7.8): euler blows up; skrock/srock stay bounded and their
    stationary variance is the scheme's closed form sigma^2 h B^2 / (1 - A^2) to 4 standard errors. SK-ROCK's is
    within a factor 2 of the exact sigma^2 / (2 |lambda|) = 1e-3; S-ROCK's is about sigma^2 h (its noise is not
    damped), 16 times too large: use skrock for invariant measures."""
    ou = sk.SDE(lambda t, x, p: LAM * x, lambda t, x, p: SIG, noise="additive")
    kw = dict(n_steps=256, n_paths=4000, seed=3, backend="numpy", save_at=[4.0])
    with np.errstate(over="ignore", invalid="ignore"):
        eu = sk.solve(ou, 1.0, (0.0, 4.0), method="euler", **kw)
    assert not np.all(np.abs(eu.x[-1]) < 1e10)
    exact = SIG**2 / (2 * -LAM)
    for name in ("skrock", "srock"):
        sol = sk.solve(ou, 1.0, (0.0, 4.0), method=name, spectral_radius=500.0, **kw)
        s = stabilized.stages_for(name, 500.0 * H)
        a, b = closed_form(name, s, LAM * H)
        if name == "srock":
            b = 1.0  # additive noise enters S-ROCK's last stage unchanged
        stationary = SIG**2 * H * b**2 / (1 - a**2)
        x = sol.x[-1, :, 0]
        assert sol.success and np.all(np.isfinite(x))
        se = stationary * math.sqrt(2.0 / (x.size - 1))
        assert abs(x.var() - stationary) < 4 * se, (name, x.var(), stationary)
        assert abs(x.mean()) < 4 * math.sqrt(stationary / x.size)
        if name == "skrock":
            assert 0.5 * exact < stationary < 2 * exact
        else:
            assert stationary > 10 * exact


@pytest.mark.parametrize("name", ["skrock", "srock"])
def test_weak_order_one_on_linear_multiplicative_noise(name):
    """dX = -2 X dt + 0.5 X dW, X_0 = 1, T = 1, with spectral_radius = 40 (several stages per step): the sample
    moments E X_T, E X_T^2 equal the scheme's closed forms A^n, (A^2 + mu^2 h B^2)^n to 4 standard errors, and
    the closed forms' errors against exp(-2), exp(-3.75) fall like h (weak order 1: by about 2 per halving)."""
    lam, mu = -2.0, 0.5
    gbm = sk.SDE(lambda t, x, p: lam * x, lambda t, x, p: mu * x, noise="scalar")
    exact = np.array([math.exp(lam), math.exp(2 * lam + mu**2)])
    errs = []
    for n in (4, 8, 16):
        sol = sk.solve(gbm, 1.0, (0.0, 1.0), method=name, n_steps=n, n_paths=20000, seed=5, backend="numpy",
                       save_at=[1.0], spectral_radius=40.0)
        x = sol.x[-1, :, 0]
        moments = np.array([x.mean(), (x * x).mean()])
        se = np.array([x.std(), (x * x).std()]) / math.sqrt(x.size)
        a, b = closed_form(name, stabilized.stages_for(name, 40.0 / n), lam / n)
        scheme_moments = np.array([a**n, (a * a + mu * mu / n * b * b) ** n])
        assert np.all(np.abs(moments - scheme_moments) < 4 * se), (n, moments, scheme_moments)
        errs.append(np.abs(scheme_moments - exact))
    assert np.all(errs[0] > 1.6 * errs[1]) and np.all(errs[1] > 1.6 * errs[2]), errs
    measured = np.log2(errs[1] / errs[2])  # the closed forms' local slopes, both moments
    declared = sk.get_scheme(name, gbm).weak_order["scalar"]
    assert np.all(np.abs(measured - declared) < 0.2), (measured, declared)


def _linear_drift(M):
    return lambda t, x, p: x @ M.T


def test_power_iteration_estimates_the_spectral_radius_within_ten_percent():
    """Linear drifts with known eigenvalues: a symmetric one with spectrum -1 ... -1000, and the 1-D Laplacian
    (N = 40, Dirichlet), whose close top eigenvalues make power iteration slow; the estimate is within 10 %."""
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    M1 = Q @ np.diag([-1.0, -3.0, -10.0, -100.0, -400.0, -1000.0]) @ Q.T
    n = 40
    M2 = (n + 1) ** 2 * (np.diag(-2.0 * np.ones(n)) + np.diag(np.ones(n - 1), 1) + np.diag(np.ones(n - 1), -1))
    rho2 = 4 * (n + 1) ** 2 * math.sin(n * math.pi / (2 * (n + 1))) ** 2
    for M, rho in ((M1, 1000.0), (M2, rho2)):
        x0 = rng.standard_normal((5, M.shape[0]))
        est = stabilized.estimate_spectral_radius(_linear_drift(M), 0.0, x0, ())
        assert abs(est - rho) < 0.1 * rho, (est, rho)
        assert est <= rho * (1 + 1e-6)
    torch = pytest.importorskip("torch")
    est = stabilized.estimate_spectral_radius(lambda t, x, p: x @ torch.as_tensor(M1.T), 0.0, torch.as_tensor(x0[:, :6]), ())
    assert abs(est - 1000.0) < 100.0


def test_the_estimate_sets_the_stages_in_solve():
    """Without spectral_radius, solve estimates it at x0: on a stiff linear system the stages match those of the
    true spectral radius (1000 h = 15.6 here), and counting drift evaluations shows them."""
    M = np.diag([-1.0, -1000.0])
    sde = sk.SDE(_linear_drift(M), lambda t, x, p: 0.1, noise="additive")
    sol = sk.solve(sde, [1.0, 1.0], (0.0, 1.0), method="skrock", n_steps=64, n_paths=10, seed=0, backend="numpy")
    s = stabilized.stages_for("skrock", 1000.0 / 64)
    assert s > 1 and sol.stats.n_drift_evals == 64 * 10 * s
    assert np.all(np.abs(sol.x[-1]) < 1.0)


@pytest.mark.parametrize("name", ["skrock", "srock"])
def test_backends_agree_with_many_stages(name):
    """numpy, numba and torch on the same Brownian path, stiff diagonal and matrix noise, s > 10 stages."""
    torch = pytest.importorskip("torch")
    del torch
    diag = sk.SDE(lambda t, x, p: -300.0 * x + np.sin(t), lambda t, x, p: 0.3 * x, noise="diagonal")
    mat = sk.SDE(lambda t, x, p: -300.0 * x, lambda t, x, p: p[0] * (1.0 + 0.1 * t), noise="additive", noise_dim=2,
                 params=(np.array([[0.3, 0.1], [0.0, 0.2]]),))
    for sde in (diag, mat):
        kw = dict(method=name, n_steps=8, n_paths=50, seed=9, spectral_radius=3000.0)
        assert stabilized.stages_for(name, 3000.0 / 8) > 10
        ref = sk.solve(sde, [1.0, -0.5], (0.0, 1.0), backend="numpy", **kw)
        nb = sk.solve(sde, [1.0, -0.5], (0.0, 1.0), backend="numba", **kw)
        th = sk.solve(sde, [1.0, -0.5], (0.0, 1.0), backend="torch", **kw)
        np.testing.assert_allclose(nb.x, ref.x, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(th.x.numpy(), ref.x, rtol=1e-10, atol=1e-14)


def test_spectral_radius_is_checked():
    ou = sk.SDE(lambda t, x, p: -x, lambda t, x, p: 0.1, noise="additive")
    kw = dict(n_steps=4, n_paths=2, seed=0, backend="numpy")
    with pytest.raises(ValueError, match="`spectral_radius` applies to the stabilized schemes 'skrock'/'srock'; drop it"):
        sk.solve(ou, 1.0, (0.0, 1.0), method="euler", spectral_radius=10.0, **kw)
    with pytest.raises(ValueError, match="`spectral_radius` must be a finite number >= 0"):
        sk.solve(ou, 1.0, (0.0, 1.0), method="skrock", spectral_radius=-1.0, **kw)
    with pytest.raises(ValueError, match=r"skrock needs \|h\| \* spectral_radius <= "):
        sk.solve(ou, 1.0, (0.0, 1.0), method="skrock", spectral_radius=1e12, **kw)


@pytest.mark.parametrize("name", ["skrock", "srock"])
def test_a_spectral_radius_below_the_real_one_is_reported(name):
    """With spectral_radius 50 for a drift of rate 2000 at h = 1/64 (h lambda = -31) the stages run (1 for skrock,
    ell ~ 2; S-ROCK's minimum of 3, ell ~ 8.5) do not cover the drift: the instability check (interval [-ell(s), 0]
    of the stages run) stops every path; the true bound keeps them."""
    ou = sk.SDE(lambda t, x, p: -2000.0 * x, lambda t, x, p: 0.1, noise="additive")
    kw = dict(n_steps=64, n_paths=8, seed=3, backend="numpy")
    low = sk.solve(ou, 1.0, (0.0, 1.0), method=name, spectral_radius=50.0, **kw)
    assert low.failed.all() and "unstable" in low.message
    assert sk.solve(ou, 1.0, (0.0, 1.0), method=name, spectral_radius=2000.0, **kw).success


@pytest.mark.parametrize("name", ["skrock", "srock"])
def test_stage_times_are_the_chebyshev_closed_form(name):
    """Stage j of a Chebyshev method is exact for x' = 1 at t + c_j h with c_j = w1 T_j'(w0) / T_j(w0)
    (the Runge-Kutta-Chebyshev stage times, Verwer, Hundsdorfer & Sommeijer 1990; the same for the damped polynomials): the packed
    ``c`` row, which places the drift's stage times, against that closed form from numpy.polynomial."""
    for s in (3, 4, 7, 20):
        w0, w1 = _w(name, s)
        closed = [0.0] + [w1 * C.chebval(w0, C.chebder([0] * j + [1])) / _T(j, w0) for j in range(1, s)]
        np.testing.assert_allclose(stabilized.chebyshev_tab(name, s)[3], closed, rtol=1e-12, atol=1e-15)


def test_srock_damping_is_abdulle_and_cirillis_table():
    """eta(s) at the tabulated stage numbers (Abdulle & Cirilli 2008, the table of S-ROCK's damping), linear between, flat outside."""
    table = {3: 3.7, 10: 5.9, 50: 10.8, 100: 13.5, 150: 15.8, 200: 17.0}
    for s, eta in table.items():
        assert stabilized.srock_damping(s) == eta
    assert stabilized.srock_damping(75) == pytest.approx((10.8 + 13.5) / 2, rel=1e-14)
    assert stabilized.srock_damping(125) == pytest.approx((13.5 + 15.8) / 2, rel=1e-14)
    assert stabilized.srock_damping(2) == 3.7 and stabilized.srock_damping(400) == 17.0


@pytest.mark.parametrize("name, fraction", [("skrock", 1.0), ("srock", 0.8)])
def test_a_step_on_the_boundary_of_an_interval_takes_those_stages(name, fraction):
    """``stages_for`` is the fewest stages whose usable interval covers SAFETY |h| rho, the boundary included:
    at |h| rho = fraction ell(s) / SAFETY (where that product is exact in floating point) it is s, just above s + 1."""
    checked = 0
    for s in range(4, 60):
        h_rho = fraction * stabilized.stability_interval(name, s) / stabilized.SAFETY
        if stabilized.SAFETY * h_rho != fraction * stabilized.stability_interval(name, s):
            continue
        assert stabilized.stages_for(name, h_rho) == s
        assert stabilized.stages_for(name, h_rho * (1 + 1e-12)) == s + 1
        checked += 1
    assert checked >= 10

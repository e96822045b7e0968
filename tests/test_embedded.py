"""The steps with an embedded error estimate (sdekit/schemes/_embedded.py).

Checked against exact solutions of one step: an Itô/Stratonovich diagonal problem with ``sigma'' != 0``
(``tan X`` is a Brownian motion with drift), scalar-noise geometric Brownian motion, an Ornstein–Uhlenbeck
process with time-dependent coefficients (its step drawn jointly with ``(dW, H)`` from their exact Gaussian
law) and a linear ODE, all from ``t0 != 0``. Common random numbers across the step sizes; slopes and their
tolerances come from the data (standard errors of the log-RMS values plus the spread between the slopes of the
coarse and the fine half of the sweep).

Numba is not exercised here (compiling the six steps costs about a minute); the tests of the Numba adaptive
integrator that runs them compare it with NumPy.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

import sdekit
from sdekit.schemes import _embedded, _steps
from sdekit.schemes.base import SCHEMES

T0 = 0.7
N_PATHS = 4000
HS = 2.0 ** -np.arange(2, 8)  # 1/4 .. 1/128
RNG_SEED = 20261130

# ---------------------------------------------------------------- problems with exact one-step solutions
def like(constant, x):
    """A NumPy constant as x's kind of array (a torch tensor when x is one)."""
    return constant if isinstance(x, np.ndarray) else sys.modules["torch"].as_tensor(constant, dtype=x.dtype)


A = np.array([0.8, 1.3])  # noise amplitudes (per component)
B = np.array([0.5, -0.4])  # drift of tan X


def arctan_f_ito(t, x, p):
    """Itô drift of X = arctan(tan X0 + B t + A W): B cos^2 X - A^2 sin X cos^3 X."""
    c = sdekit.ops.cos(x)
    return c * c * like(B, x) - sdekit.ops.sin(x) * c * c * c * like(A * A, x)


def arctan_f_strat(t, x, p):
    """Stratonovich drift of the same process: B cos^2 X."""
    c = sdekit.ops.cos(x)
    return c * c * like(B, x)


def arctan_g(t, x, p):
    c = sdekit.ops.cos(x)
    return c * c * like(A, x)


def arctan_exact(t, x, h, dw):
    return np.arctan(np.tan(x) + B * h + A * dw)


MU = np.array([0.3, -0.2])
SIG = np.array([0.9, 0.6])


def gbm_f(t, x, p):
    return x * like(MU, x)


def gbm_g(t, x, p):
    return x * like(SIG, x)


def gbm_exact(t, x, h, dw):
    """Two components driven by one Brownian motion (scalar noise)."""
    return x * np.exp((MU - 0.5 * SIG**2) * h + SIG * dw)


OU_B = 1.3


def ou_a(t):
    return 0.4 * np.cos(2.0 * t)


def ou_s(t):
    return 0.5 + 0.4 * np.sin(3.0 * t)


def ou_f(t, x, p):
    return 0.4 * sdekit.ops.cos(2.0 * t) - OU_B * x


def ou_g(t, x, p):
    return (0.5 + 0.4 * sdekit.ops.sin(3.0 * t)) + 0.0 * x


ODE_RATE = np.array([1.0, -0.5])


def ode_f(t, x, p):
    return ODE_RATE * np.cos(t) * x


def ode_exact(t, x, h):
    return x * np.exp(ODE_RATE * (np.sin(t + h) - np.sin(t)))


# ---------------------------------------------------------------- noise
def standard_normals(dim_noise, extra=0):
    """The same standard normals for every step size (common random numbers)."""
    rng = np.random.default_rng(RNG_SEED)
    return rng.standard_normal((N_PATHS, dim_noise)), rng.standard_normal((N_PATHS, dim_noise)), \
        rng.standard_normal((N_PATHS, 1)) if extra else None


def brownian(h, m):
    xi, eta, _ = standard_normals(m)
    return np.sqrt(h) * xi, np.sqrt(h / 12.0) * eta


def ou_step_noise(h, t):
    """``(dW, H, Z)`` of one step of length h from t, from their exact joint Gaussian law.

    ``K = int_0^h (W_u - W_0) du = int (h - u) dW_u``, ``Z = int_0^h e^{-b (h - u)} s(t + u) dW_u``;
    covariances by 64-point Gauss–Legendre quadrature (smooth integrands: exact to round-off).
    """
    nodes, weights = np.polynomial.legendre.leggauss(64)
    u = 0.5 * h * (nodes + 1.0)
    w = 0.5 * h * weights
    k = np.exp(-OU_B * (h - u)) * ou_s(t + u)
    cov = np.array([[h, h**2 / 2, w @ k],
                    [h**2 / 2, h**3 / 3, w @ ((h - u) * k)],
                    [w @ k, w @ ((h - u) * k), w @ (k * k)]])
    scale = np.sqrt(np.diag(cov))
    chol = np.linalg.cholesky(cov / np.outer(scale, scale)) * scale[:, None]
    xi, _, zeta = standard_normals(1, extra=1)
    _, eta, _ = standard_normals(1)
    normals = np.concatenate([xi, eta, zeta], axis=1)
    dw, K, Z = (normals @ chol.T).T
    drift_integral = w @ (np.exp(-OU_B * (h - u)) * ou_a(t + u))
    return dw[:, None], (K / h - dw / 2)[:, None], Z[:, None], drift_integral


def ou_exact(h, x, Z, drift_integral):
    return np.exp(-OU_B * h) * x + drift_integral + Z


def start_states(dim, lo=-0.6, hi=0.6):
    return np.random.default_rng(RNG_SEED + 1).uniform(lo, hi, (N_PATHS, dim))


# ---------------------------------------------------------------- helpers
def log_rms(e):
    """log RMS over paths and its standard error (delta method on the per-path mean squares)."""
    v = np.mean(e * e, axis=1)
    m = v.mean()
    return 0.5 * np.log(m), 0.5 * v.std() / (np.sqrt(v.size) * m)


def fitted_slope(hs, ys, ses):
    """Weighted least-squares slope of ys on log hs and its standard error."""
    x = np.log(hs)
    w = 1.0 / np.square(ses)
    xm = (w @ x) / w.sum()
    sxx = w @ np.square(x - xm)
    return (w @ ((x - xm) * ys)) / sxx, np.sqrt(1.0 / sxx)


def check_slope(hs, errs, expected):
    ys, ses = np.array([log_rms(e) for e in errs]).T
    slope, se = fitted_slope(hs, ys, ses)
    half = len(hs) // 2
    coarse = fitted_slope(hs[:half + 1], ys[:half + 1], ses[:half + 1])[0]
    fine = fitted_slope(hs[half:], ys[half:], ses[half:])[0]
    tol = 4.0 * se + abs(coarse - fine)
    assert abs(slope - expected) < tol, (slope, expected, tol)
    assert abs(fine - expected) < tol, (fine, expected, tol)
    return slope


def check_tracks(errs, truths, band=(0.4, 2.5), spread=1.6):
    """RMS(err) / RMS(true local error) stays in ``band`` and varies by at most ``spread`` across the sweep."""
    ratios = np.array([np.sqrt(np.mean(e * e) / np.mean(d * d)) for e, d in zip(errs, truths, strict=True)])
    assert band[0] < ratios.min() and ratios.max() < band[1], ratios
    assert ratios.max() / ratios.min() < spread, ratios
    return ratios


ITO_DIAG = sdekit.SDE(arctan_f_ito, arctan_g, noise="diagonal")
STRAT_DIAG = sdekit.SDE(arctan_f_strat, arctan_g, noise="diagonal", calculus="stratonovich")
GBM_SCALAR = sdekit.SDE(gbm_f, gbm_g, noise="scalar")
OU_ADDITIVE = sdekit.SDE(ou_f, ou_g, noise="additive")
ODE = sdekit.ODE(ode_f)


# ---------------------------------------------------------------- x_new is the fixed step
FIXED = {_embedded.euler_lamba: _steps.euler, _embedded.euler_heun_embedded: _steps.euler_heun,
         _embedded.sra_embedded: _steps.sra, _embedded.sri_embedded: _steps.sri,
         _embedded.sriw1_embedded: _steps.sriw1, _embedded.erk_embedded: _steps.erk}


@pytest.mark.parametrize("name, problem, kind", [
    ("euler", ITO_DIAG, "sde"), ("euler", GBM_SCALAR, "sde"), ("euler_heun", STRAT_DIAG, "sde"),
    ("sra1", OU_ADDITIVE, "sde"), ("sra3", OU_ADDITIVE, "sde"), ("sriw1", ITO_DIAG, "sde"),
    ("sriw1", GBM_SCALAR, "sde"), ("dopri5", ODE, "ode"),
])
@pytest.mark.parametrize("h", [0.1, -0.05])
def test_x_new_is_the_fixed_step(name, problem, kind, h):
    scheme = SCHEMES[(kind, name)]
    step, tab, _, _ = _embedded.embedded_plan(scheme, problem, 2)
    fixed = scheme.plan(problem, 2)
    assert FIXED[step] is fixed.step or (step is _embedded.sriw1_embedded and fixed.step is _steps.sriw1)
    m = 1 if problem is GBM_SCALAR else 2
    rng = np.random.default_rng(3)
    x = rng.uniform(-0.6, 0.6, (50, 2))
    dw, H = np.sqrt(abs(h)) * rng.standard_normal((50, m)), np.sqrt(abs(h) / 12) * rng.standard_normal((50, m))
    g = problem.diffusion if kind == "sde" else None
    x_new, err = step(problem.drift, g, (), tab, T0, x, h, np.sqrt(abs(h)), dw, H)
    np.testing.assert_allclose(x_new, fixed.step(problem.drift, g, (), fixed.tab, T0, x, h, dw, H), rtol=1e-13, atol=1e-14)
    assert err.shape == x.shape and np.all(np.isfinite(err))


@pytest.mark.parametrize("name", ["euler", "euler_heun", "sra1"])
def test_matrix_noise(name):
    """(n, dim, m) diffusion: x_new equals the fixed step; the noise part of err is the matrix product."""
    mat = np.array([[0.3, -0.2, 0.1], [0.05, 0.4, -0.3]])
    if name == "sra1":
        problem = sdekit.SDE(lambda t, x, p: -x, lambda t, x, p: mat * (1.0 + t), noise="additive", noise_dim=3)
        g = lambda t, x, p: np.broadcast_to(mat * (1.0 + t), (x.shape[0], 2, 3)).copy()  # noqa: E731
    else:
        calculus = "ito" if name == "euler" else "stratonovich"
        problem = sdekit.SDE(lambda t, x, p: -x, lambda t, x, p: mat * np.cos(x)[:, :, None], noise="general",
                             noise_dim=3, calculus=calculus)
        g = problem.diffusion
    scheme = SCHEMES[("sde", name)]
    step, tab, _, _ = _embedded.embedded_plan(scheme, problem, 2)
    fixed = scheme.plan(problem, 2)
    rng = np.random.default_rng(5)
    x, h = rng.uniform(-1, 1, (20, 2)), 0.04
    dw, H = 0.2 * rng.standard_normal((20, 3)), 0.06 * rng.standard_normal((20, 3))
    x_new, err = step(problem.drift, g, (), tab, T0, x, h, np.sqrt(h), dw, H)
    np.testing.assert_allclose(x_new, fixed.step(problem.drift, g, (), fixed.tab, T0, x, h, dw, H), rtol=1e-13, atol=1e-14)
    if name == "sra1":  # E_N = sum_i beta2_i g(t + c1_i h) I10/h = (g(t) - g(t + h)) I10/h, plus delta E_D
        tab0 = _embedded.embedded_plan(scheme, problem, 2, 0.0)[1]
        err0 = step(problem.drift, g, (), tab0, T0, x, h, np.sqrt(h), dw, H)[1]
        np.testing.assert_allclose(err0, np.einsum("ij,nj->ni", -h * mat, 0.5 * dw + H), rtol=1e-12, atol=1e-15)


def test_embedded_plan_counts_and_refusals():
    counts = {name: _embedded.embedded_plan(SCHEMES[("sde", name)], ITO_DIAG if name != "sra1" else OU_ADDITIVE,
                                            2)[2:] for name in ("euler", "sriw1", "sra1")}
    assert counts == {"euler": (2, 2), "sriw1": (2, 4), "sra1": (2, 2)}
    assert _embedded.embedded_plan(SCHEMES[("sde", "euler_heun")], STRAT_DIAG, 2)[2:] == (2, 2)
    assert _embedded.embedded_plan(SCHEMES[("ode", "dopri5")], ODE, 2)[2:] == (7, 0)
    for key in (("sde", "implicit_euler"), ("ode", "rk4")):
        with pytest.raises(ValueError, match="has no embedded error estimate"):
            _embedded.embedded_plan(SCHEMES[key], ITO_DIAG, 2)
    with pytest.raises(ValueError, match="delta must be"):
        _embedded.embedded_plan(SCHEMES[("sde", "sra1")], OU_ADDITIVE, 1, -1.0)
    assert all(s.embedded in _embedded.EVALS for s in SCHEMES.values() if s.embedded is not None)


def test_generic_sri_equals_sriw1_written_out():
    scheme = SCHEMES[("sde", "sriw1")]
    _, tab, _, _ = _embedded.embedded_plan(scheme, ITO_DIAG, 2, delta=0.3)
    rng = np.random.default_rng(7)
    x, h = rng.uniform(-0.6, 0.6, (40, 2)), 0.03
    dw, H = np.sqrt(h) * rng.standard_normal((40, 2)), np.sqrt(h / 12) * rng.standard_normal((40, 2))
    a = _embedded.sri_embedded(arctan_f_ito, arctan_g, (), tab, T0, x, h, np.sqrt(h), dw, H)
    b = _embedded.sriw1_embedded(arctan_f_ito, arctan_g, (), tab, T0, x, h, np.sqrt(h), dw, H)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------- orders of the estimates and tracking
def sweep_diag(step, tab, f, g, exact, m=2, x0=None, target="step"):
    """err and the true local error of the estimated member over HS."""
    x = start_states(2) if x0 is None else x0
    errs, truths = [], []
    for h in HS:
        dw, H = brownian(h, m)
        x_new, err = step(f, g, (), tab, T0, x, h, np.sqrt(h), dw, H)
        x_true = exact(T0, x, h, dw)
        errs.append(err)
        if target == "step":
            truths.append(x_new - x_true)
        elif target == "euler":
            truths.append(x + f(T0, x, ()) * h + g(T0, x, ()) * dw - x_true)
        else:  # the embedded lower member x_new - err
            truths.append(x_new - err - x_true)
    return errs, truths


@pytest.mark.parametrize("problem, exact, m", [(ITO_DIAG, arctan_exact, 2), (GBM_SCALAR, gbm_exact, 1)])
def test_lamba_estimate_multiplicative(problem, exact, m):
    """Euler–Maruyama, p = 1/2: RMS(err) ~ h^1, and it tracks the step's own local error."""
    step, tab, _, _ = _embedded.embedded_plan(SCHEMES[("sde", "euler")], problem, 2)
    x0 = start_states(2, 0.5, 1.5) if problem is GBM_SCALAR else None
    errs, truths = sweep_diag(step, tab, problem.drift, problem.diffusion, exact, m, x0)
    check_slope(HS, errs, 1.0)
    check_tracks(errs, truths)


def ou_sweep(step, tab, target):
    x = start_states(1)
    errs, truths = [], []
    for h in HS:
        dw, H, Z, drift_integral = ou_step_noise(h, T0)
        x_new, err = step(ou_f, ou_g, (), tab, T0, x, h, np.sqrt(h), dw, H)
        x_true = ou_exact(h, x, Z, drift_integral)
        errs.append(err)
        truths.append((x_new if target == "step" else x_new - err) - x_true)
    return errs, truths


def test_lamba_estimate_additive():
    """Euler–Maruyama on additive noise, p = 1: RMS(err) ~ h^1.5 (time-dependent OU, exact step)."""
    step, tab, _, _ = _embedded.embedded_plan(SCHEMES[("sde", "euler")], OU_ADDITIVE, 1)
    errs, truths = ou_sweep(step, tab, "step")
    check_slope(HS, errs, 1.5)
    check_tracks(errs, truths)


@pytest.mark.parametrize("name", ["sra1", "sra3"])
def test_sra_natural_embedding(name):
    """E_N (delta = 0) ~ h^1.5, the local error of the embedded strong order 1.0 method, which it tracks; the
    delta E_D part (the scheme's drift quadrature minus the Euler drift) is linear in delta and O(h^1.5) too."""
    scheme = SCHEMES[("sde", name)]
    step, tab0, _, _ = _embedded.embedded_plan(scheme, OU_ADDITIVE, 1, 0.0)
    errs, truths = ou_sweep(step, tab0, "embedded")
    check_slope(HS, errs, 1.5)
    ratios = check_tracks(errs, truths, band=(0.7, 1.3))
    assert abs(ratios[-1] - 1.0) < abs(ratios[0] - 1.0) + 0.02  # x_new's error vanishes faster than the estimate's
    _, tab1, _, _ = _embedded.embedded_plan(scheme, OU_ADDITIVE, 1, 1.0)
    _, tabd, _, _ = _embedded.embedded_plan(scheme, OU_ADDITIVE, 1)
    drift_parts = []
    for h in HS:
        dw, H, _, _ = ou_step_noise(h, T0)
        x = start_states(1)
        e0, e1, ed = (step(ou_f, ou_g, (), t, T0, x, h, np.sqrt(h), dw, H)[1] for t in (tab0, tab1, tabd))
        np.testing.assert_allclose(ed - e0, _embedded.DELTA * (e1 - e0), rtol=1e-9, atol=1e-15)
        drift_parts.append(e1 - e0)
    # h^1.5 terms (the noise in the stages) and h^2 terms (the drift): a fitted slope between the two
    ys, ses = np.array([log_rms(e) for e in drift_parts]).T
    assert 1.4 < fitted_slope(HS, ys, ses)[0] < 2.1
    errs_default, _ = ou_sweep(step, tabd, "embedded")
    ys, ses = np.array([log_rms(e) for e in errs_default]).T
    assert 1.4 < fitted_slope(HS, ys, ses)[0] < 2.1  # with the default delta the estimate keeps (about) its order


@pytest.mark.parametrize("problem, exact, m", [(ITO_DIAG, arctan_exact, 2), (GBM_SCALAR, gbm_exact, 1)])
def test_sri_natural_embedding(problem, exact, m):
    """SRIW1 (delta = 0): E_N ~ h^1.5, tracking the embedded order 1.0 method's local error."""
    step, tab0, _, _ = _embedded.embedded_plan(SCHEMES[("sde", "sriw1")], problem, 2, 0.0)
    x0 = start_states(2, 0.5, 1.5) if problem is GBM_SCALAR else None
    errs, truths = sweep_diag(step, tab0, problem.drift, problem.diffusion, exact, m, x0, target="embedded")
    check_slope(HS, errs, 1.5)
    check_tracks(errs, truths, band=(0.6, 1.4))


def test_euler_heun_embedded_euler():
    """Euler–Heun (Stratonovich, multiplicative): RMS(err) ~ h, tracking the embedded Euler step's local error."""
    step, tab, _, _ = _embedded.embedded_plan(SCHEMES[("sde", "euler_heun")], STRAT_DIAG, 2)
    errs, truths = sweep_diag(step, tab, arctan_f_strat, arctan_g, arctan_exact, target="euler")
    check_slope(HS, errs, 1.0)
    check_tracks(errs, truths)


def test_euler_heun_additive():
    """Euler–Heun on additive noise (strong order 1): RMS(err) ~ h^1.5, tracking the step's local error."""
    step, tab, _, _ = _embedded.embedded_plan(SCHEMES[("sde", "euler_heun")], OU_ADDITIVE, 1)
    errs, truths = ou_sweep(step, tab, "step")
    check_slope(HS, errs, 1.5)
    check_tracks(errs, truths)


def test_dopri5_pair():
    """dopri5: err = h sum (b - b_err) k ~ h^5, the embedded 4th order solution's local error."""
    step, tab, _, _ = _embedded.embedded_plan(SCHEMES[("ode", "dopri5")], ODE, 2)
    x = start_states(2, 0.5, 1.5)[:50]
    hs = 2.0 ** -np.arange(2, 7)
    errs, truths = [], []
    for h in hs:
        x_new, err = step(ode_f, None, (), tab, T0, x, h, np.sqrt(h), None, None)
        errs.append(err)
        truths.append(x_new - err - ode_exact(T0, x, h))
    slope = np.polyfit(np.log(hs), [0.5 * np.log(np.mean(e * e)) for e in errs], 1)[0]
    assert abs(slope - 5.0) < 0.25, slope
    check_tracks(errs, truths, band=(0.9, 1.15), spread=1.15)


# ---------------------------------------------------------------- torch: per-path steps
def test_torch_per_path_steps_match_numpy():
    torch = pytest.importorskip("torch")
    n = 6
    rng = np.random.default_rng(11)
    hs = np.array([0.1, -0.05, 0.2, 0.025, -0.3, 0.07])[:, None]
    x = rng.uniform(-0.6, 0.6, (n, 2))
    dw = np.sqrt(np.abs(hs)) * rng.standard_normal((n, 2))
    H = np.sqrt(np.abs(hs) / 12) * rng.standard_normal((n, 2))
    ts = T0 + 0.1 * np.arange(n)[:, None]
    cases = [("euler", ITO_DIAG, "sde"), ("euler_heun", STRAT_DIAG, "sde"), ("sra1", OU_ADDITIVE, "sde"),
             ("sra3", OU_ADDITIVE, "sde"), ("sriw1", ITO_DIAG, "sde"), ("dopri5", ODE, "ode")]
    T = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float64)  # noqa: E731
    for name, problem, kind in cases:
        step, tab, _, _ = _embedded.embedded_plan(SCHEMES[(kind, name)], problem, 2)
        f = problem.drift if kind == "sde" else (lambda t, x, p: x * torch.cos(t) * T(ODE_RATE))
        g = problem.diffusion if kind == "sde" else None
        got = step(f, g, (), tab, T(ts), T(x), T(hs), T(np.sqrt(np.abs(hs))), T(dw), T(H))
        for i in range(n):
            hi = float(hs[i, 0])
            want = step(problem.drift, g, (), tab, float(ts[i, 0]), x[i:i + 1], hi, np.sqrt(abs(hi)), dw[i:i + 1], H[i:i + 1])
            for a, b in zip(got, want, strict=True):
                np.testing.assert_allclose(a[i:i + 1].numpy(), b, rtol=1e-12, atol=1e-15, err_msg=name)


_DRIFT = lambda t, x, p: -x**3 + np.sin(t)  # noqa: E731
_NOISES = {
    "additive": lambda t, x, p: (0.5 + 0.2 * t) + 0.0 * x,  # time-dependent: its g_t h dW term is of the estimate's size
    "diagonal": lambda t, x, p: 0.3 * np.sin(x) + 0.5,  # nonlinear in x (g'' != 0)
}


@pytest.mark.parametrize("method, calculus, noise, hs", [
    ("euler", "ito", "additive", (1e-2, 1e-3, 1e-4)), ("euler", "ito", "diagonal", (1e-2, 1e-3, 1e-4)),
    ("milstein", "ito", "additive", (1e-2, 1e-3, 1e-4)), ("milstein", "ito", "diagonal", (1e-2, 1e-3, 1e-4)),
    ("euler_heun", "stratonovich", "additive", (1e-2, 1e-3, 1e-4)),
    ("euler_heun", "stratonovich", "diagonal", (1e-2, 1e-3, 1e-4)),
    ("sra1", "ito", "additive", (1e-2, 1e-3, 1e-4)), ("sriw1", "ito", "diagonal", (1e-2, 1e-3, 1e-4)),
    ("dopri5", None, None, (0.01, 0.005, 0.0025)),
])
def test_the_controller_exponent_is_the_measured_order_of_the_error_estimate(method, calculus, noise, hs):
    """The controller scales steps by err^(-1/q) with q = ``estimate_order``: q must be the power of h in the RMS of
    the step's error estimate, measured here on one step from 20,000 states (Lamba 2003, §2: h^(p + 1/2) for the
    Euler pairs, p = 1 with additive noise; h^5 for dopri5's fourth-order member on an ODE); fitted slope within
    0.1 of q."""
    from sdekit.schemes import get_scheme

    rng = np.random.default_rng(0)
    n = 20_000
    problem = (sdekit.ODE(_DRIFT) if noise is None else
               sdekit.SDE(_DRIFT, _NOISES[noise], noise=noise, calculus=calculus))
    scheme = get_scheme(method, problem)
    step, tab, _, _ = _embedded.embedded_plan(scheme, problem, 1)
    x = 0.3 + 0.5 * rng.standard_normal((n, 1))
    z, z2 = rng.standard_normal((n, 1)), rng.standard_normal((n, 1))
    rms = []
    for h in hs:
        dw = math.sqrt(h) * z
        area = 0.5 * h * (dw + math.sqrt(h) * z2 / math.sqrt(3.0))  # I10 of the step (the SRA/SRI steps read it)
        _, err = step(problem.drift if noise is not None else problem.rhs, problem.diffusion if noise is not None
                      else None, (), tab, 0.4, x, h, math.sqrt(h), dw, area)
        rms.append(math.sqrt(float(np.mean(err**2))))
    slope = np.polyfit(np.log(hs), np.log(rms), 1)[0]
    assert abs(slope - _embedded.estimate_order(step, problem, scheme)) < 0.1, (slope, rms)


def _assert_noiseless_step_is_kutta(scheme, noise):
    """One step of x' = x with the noise off, h = 0.3: Kutta's R(h) = 1 + h + h^2/2 + h^3/6 in the fixed step (numpy,
    numba) and in the scheme's embedded step."""
    problem = sdekit.SDE(lambda t, x, p: x, lambda t, x, p: 0.0 * x, noise=noise)
    h = 0.3
    taylor = 1 + h + h * h / 2 + h**3 / 6
    for backend in ("numpy", "numba"):
        one = sdekit.solve(problem, 1.0, (0.0, h), method=scheme, n_steps=1, n_paths=1, seed=0, backend=backend)
        assert float(np.asarray(one.x[-1]).ravel()[0]) == pytest.approx(taylor, rel=1e-14)
    step, tab, _, _ = _embedded.embedded_plan(scheme, problem, 1)
    x_new, _ = step(problem.drift, problem.diffusion, (), tab, 0.0, np.ones((1, 1)), h, math.sqrt(h), np.zeros((1, 1)),
                    np.zeros((1, 1)))
    assert float(x_new[0, 0]) == pytest.approx(taylor, rel=1e-14)


def test_a_users_sra_tableau_with_a_negative_drift_coefficient():
    """An SRA tableau of a user's (Rößler 2010's conditions, checked at construction) whose drift part is Kutta's
    third-order method, a31 = -1: with the noise switched off, one step of x' = x is R(h) = 1 + h + h^2/2 + h^3/6, in
    the fixed step on numpy and numba and in the embedded step of adaptive solves (no coefficient skipped)."""
    from sdekit import tableaus
    from sdekit.schemes import Scheme
    from sdekit.schemes.rossler import BOTH_CALCULI, SRA

    table = tableaus.SRATableau(
        "kutta_sra", c0=np.array([0.0, 0.5, 1.0]), c1=np.array([1.0, 0.0, 0.0]),
        A0=np.array([[0.0, 0, 0], [0.5, 0, 0], [-1.0, 2.0, 0]]), B0=np.array([[0.0, 0, 0], [1.5, 0, 0], [0, 0, 0]]),
        alpha=np.array([1 / 6, 2 / 3, 1 / 6]), beta1=np.array([1.0, 0, 0]), beta2=np.array([-1.0, 1, 0]), drift_order=3)
    scheme = Scheme("kutta_sra", "sde", {"additive": 1.5}, {"additive": 3.0}, BOTH_CALCULI, levy_area=True,
                    tableau=table, family=SRA, embedded=_embedded.sra_embedded, reference="Kutta (1901) drift.")
    _assert_noiseless_step_is_kutta(scheme, "additive")


def test_a_users_sri_tableau_with_a_negative_drift_coefficient():
    """SRIW1 with its drift part replaced by Kutta's third-order method (a31 = -1; A0 and alpha enter Rößler 2010's
    conditions only through alpha.e, alpha.A0 e = 1/2 and alpha.(B0 e)^k, which still hold): with the noise off, one
    step of x' = x is R(h) = 1 + h + h^2/2 + h^3/6 in the SRI family's fixed and embedded steps."""
    import dataclasses

    from sdekit import tableaus
    from sdekit.schemes import Scheme
    from sdekit.schemes.rossler import SRI

    A0 = np.array([[0.0, 0, 0, 0], [0.5, 0, 0, 0], [-1.0, 2.0, 0, 0], [0, 0, 0, 0]])
    table = dataclasses.replace(tableaus.SRIW1, name="kutta_sri", A0=A0, c0=A0.sum(axis=1),
                                alpha=np.array([1 / 6, 2 / 3, 1 / 6, 0.0]))
    scheme = Scheme("kutta_sri", "sde", {"diagonal": 1.5}, {"diagonal": 2.0}, ("ito",), levy_area=True, tableau=table,
                    family=SRI, embedded=_embedded.sri_embedded, reference="Rößler (2010) with Kutta's drift.")
    _assert_noiseless_step_is_kutta(scheme, "diagonal")

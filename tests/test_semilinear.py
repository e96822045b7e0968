"""Exponential integrators for semilinear ODEs, and time changes of problems."""

import math

import numpy as np
import pytest
import torch

import sdekit
from sdekit import ops
from sdekit.schemes import SCHEMES
from sdekit.semilinear import ORDERS, exponential_weights

K = 50.0  # stiffness: explicit RK4 is unstable for h > 2.8 / K


def forced_decay():
    """x' = -K x + K cos t: A = -K t, lambda = K t, D = cos t (so exp(A + lambda) lambda' D = K cos t)."""
    return sdekit.SemilinearODE(
        lambda t, p: -p[0] * t, lambda t, p: p[0] * t, lambda t, x, p: ops.cos(t) + 0.0 * x,
        log_factor_rate=lambda t, p: -p[0] + 0.0 * t, clock_rate=lambda t, p: p[0] + 0.0 * t, params=(K,),
    )


def forced_decay_exact(t, x0=1.0):
    c = x0 - K * K / (K * K + 1)
    return c * math.exp(-K * t) + (K * K * math.cos(t) + K * math.sin(t)) / (K * K + 1)


@pytest.mark.parametrize("method", list(ORDERS))
def test_exponential_orders_on_a_stiff_problem(method):
    """Errors at T fall like h^q (q = 1, 2, 3; UniPC's corrector: 3): least-squares slope within
    0.25 of q. UniPC on finer grids: its third order shows once the clock steps K T / n are below ~1."""
    p, T = forced_decay(), 2.0
    steps = np.array([80, 160, 320, 640] if method.startswith("unipc") else [20, 40, 80, 160, 320])
    err = [abs(float(sdekit.solve(p, 1.0, (0, T), method=method, n_steps=int(n), save_at=[T],
                                  backend="numpy").x[-1, 0, 0]) - forced_decay_exact(T)) for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(err), 1)[0]
    # the declared order, except exp_ab3_ramp and unipc3_*: their start's error (local O(h^2), O(h^3)) decays like
    # e^{-K t} here, so their third- and fourth-order steps show
    expected = {"exp_ab3_ramp": 3.0, "unipc3_bh1": 4.0, "unipc3_bh2": 4.0}.get(
        method, SCHEMES[("semilinear", method)].strong_order["ode"])
    assert abs(slope - expected) < 0.25, (method, slope, err)


def test_exponential_integrators_are_stable_where_rk4_is_not():
    p, T = forced_decay(), 2.0
    rk4 = sdekit.solve(p, 1.0, (0, T), method="rk4", n_steps=10, save_at=[T])
    assert not rk4.success and "unstable" in rk4.message  # h K = 10: far outside RK4's stability region, reported
    diverged = sdekit.solve(p, 1.0, (0, T), method="rk4", n_steps=10, save_at=[T], detect_instability=False)
    assert abs(diverged.x[-1, 0, 0]) > 1e6
    ab2 = sdekit.solve(p, 1.0, (0, T), method="exp_ab2", n_steps=10, save_at=[T]).x[-1, 0, 0]
    assert abs(ab2 - forced_decay_exact(T)) < 0.02


@pytest.mark.parametrize("method,degree", [("exp_euler", 0), ("exp_ab2", 1), ("exp_ab3", 2)])
def test_exact_when_D_is_a_polynomial_in_the_clock(method, degree):
    """exp_abq integrates D of degree q-1 in lambda exactly (after its start-up steps ramp the order)."""
    # lambda = t, A = -t; D = lambda^degree -> x(t) = e^{-(t - t0)} x0 + e^{-t} int_{t0}^t e^s s^deg ds
    coef = [1.0, 0.5, -0.25][: degree + 1]

    def D(t, x, p):
        return p[0] + p[1] * t + p[2] * t * t + 0.0 * x

    c = coef + [0.0] * (3 - len(coef))
    prob = sdekit.SemilinearODE(lambda t, p: -t, lambda t, p: t, D, params=tuple(c))
    t0, t1 = 0.3, 2.3
    # exact integral of e^s (c0 + c1 s + c2 s^2) = e^s (c0 + c1 (s-1) + c2 (s^2 - 2s + 2))
    F = lambda s: math.exp(s) * (c[0] + c[1] * (s - 1) + c[2] * (s * s - 2 * s + 2))  # noqa: E731
    exact = math.exp(-(t1 - t0)) * 0.7 + math.exp(-t1) * (F(t1) - F(t0))
    # one step from exact history values is exact (the start-up steps ramp the order, so a whole
    # solve is exact for constant D only)
    lam = [1.0, 0.6, 0.1][: degree + 1]
    w = exponential_weights(lam, 1.7)
    vals = [c[0] + c[1] * v + c[2] * v * v for v in lam]
    integral = sum(wj * dj for wj, dj in zip(w, vals, strict=True))
    G = lambda s: math.exp(s - 1.7) * (c[0] + c[1] * (s - 1) + c[2] * (s * s - 2 * s + 2))  # noqa: E731
    assert integral == pytest.approx(G(1.7) - G(1.0), rel=1e-13, abs=1e-14)
    if degree == 0:  # the whole solve is exact for constant D
        x = sdekit.solve(prob, 0.7, (t0, t1), method=method, n_steps=7, save_at=[t1]).x[-1, 0, 0]
        assert x == pytest.approx(exact, rel=1e-13)


@pytest.mark.parametrize("h", [1e-6, 1e-3, 0.2, 0.49, 0.51, 3.0, -0.3, -2.0])
def test_weights_match_quadrature(h):
    """exponential_weights against adaptive quadrature of the Lagrange basis, both series and recursion ranges."""
    from scipy.integrate import quad

    nodes = np.array([0.0, -0.7 * abs(h) - 0.1, -1.5 * abs(h) - 0.3])
    w = exponential_weights(nodes, h)
    for j in range(3):
        others = [nodes[i] for i in range(3) if i != j]

        def ell(tau, j=j, others=others):
            return np.prod([(tau - o) / (nodes[j] - o) for o in others])

        ref = quad(lambda tau: math.exp(tau - h) * ell(tau), 0.0, h, epsabs=1e-16, epsrel=1e-13)[0]
        assert w[j] == pytest.approx(ref, rel=1e-9, abs=1e-15 * max(1.0, abs(h)) ** 3)


@pytest.mark.parametrize("method", list(ORDERS))
def test_backend_parity(method):
    p = forced_decay()
    x0 = np.array([[1.0], [0.5], [-2.0]])
    outs = [sdekit.solve(p, x0, (0, 1.0), method=method, n_steps=17, backend=b).x for b in ("numpy", "numba")]
    xt = sdekit.solve(p, torch.as_tensor(x0), (0, 1.0), method=method, n_steps=17, backend="torch").x
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(outs[0], xt.numpy(), rtol=1e-13, atol=1e-15)


def test_t_grid_and_reverse_direction():
    """A non-uniform grid keeps the order; integrating backwards retraces the solution."""
    p, T = forced_decay(), 2.0
    errs = []
    for n in (40, 80, 160):
        u = np.linspace(0, 1, n + 1)
        grid = T * u**2  # dense near t = 0 where the transient is
        x = sdekit.solve(p, 1.0, (0, T), method="exp_ab2", t_grid=grid, save_at=[T]).x[-1, 0, 0]
        errs.append(abs(x - forced_decay_exact(T)))
    assert errs[0] / errs[2] > 12  # order 2: factor 16 per two halvings, with margin
    # backwards (t decreasing, lambda decreasing) on the mild x' = -x + cos t, exact x = (cos t + sin t) / 2
    mild = sdekit.SemilinearODE(lambda t, p: -t, lambda t, p: t, lambda t, x, p: ops.cos(t) + 0.0 * x)
    exact = lambda t: 0.5 * (math.cos(t) + math.sin(t))  # noqa: E731
    back = sdekit.solve(mild, exact(T), (T, 1.0), method="exp_ab3", n_steps=100, save_at=[1.0])
    assert back.t[-1] == 1.0 and back.stats.n_drift_evals == 101  # 100 steps + the order-3 start
    assert abs(back.x[-1, 0, 0] - exact(1.0)) < 1e-7


def test_as_ode_matches_exponential_solution():
    p, T = forced_decay(), 2.0
    x = sdekit.solve(p, 1.0, (0, T), method="dopri5", rtol=1e-10, atol=1e-12).x[-1, 0, 0]
    assert x == pytest.approx(forced_decay_exact(T), abs=1e-8)


def test_gradients_flow_through_exponential_integrators():
    p = forced_decay()
    x0 = torch.tensor([[1.0]], dtype=torch.float64, requires_grad=True)
    x = sdekit.solve(p, x0, (0, 0.1), method="exp_ab2", n_steps=20, backend="torch").x[-1, 0, 0]
    x.backward()
    # dx(T)/dx0 = exp(-K T) exactly for this linear problem (weights do not depend on x)
    assert x0.grad.item() == pytest.approx(math.exp(-K * 0.1), rel=1e-12)


@pytest.mark.filterwarnings("ignore:divide by zero")
@pytest.mark.parametrize("method", ["exp_ab2", "unipc_bh2"])
def test_nonfinite_paths_fail_alone(method):
    prob = sdekit.SemilinearODE(lambda t, p: -t, lambda t, p: t, lambda t, x, p: 1.0 / x)
    sol = sdekit.solve(prob, np.array([[1.0], [0.0]]), (0, 1.0), method=method, n_steps=10)
    assert sol.status == "failure" and list(sol.failed) == [False, True]
    assert np.isfinite(sol.x[-1, 0]).all() and np.isnan(sol.x[-1, 1]).all()
    assert sol.failure_time[1] == pytest.approx(0.1)


def test_semilinear_errors():
    p = forced_decay()
    with pytest.raises(ValueError, match="needs `n_steps`"):
        sdekit.solve(p, 1.0, (0, 1), method="exp_ab2")
    with pytest.raises(ValueError, match="start at t_span"):
        sdekit.solve(p, 1.0, (0, 1), method="exp_ab2", t_grid=[0.1, 0.5, 1.0])
    with pytest.raises(ValueError, match="strictly monotone"):
        sdekit.solve(p, 1.0, (0, 1), method="exp_ab2", t_grid=[0.0, 0.6, 0.5, 1.0])
    with pytest.raises(ValueError, match="time_change"):
        sdekit.solve(p, 1.0, (0, 1), method="rk4", t_grid=[0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="SemilinearODE"):
        sdekit.solve(sdekit.ODE(lambda t, x, p: -x), 1.0, (0, 1), method="exp_ab2", n_steps=4)
    flat = sdekit.SemilinearODE(lambda t, p: -t, lambda t, p: 0.0 * t + 1.0, lambda t, x, p: x)
    with pytest.raises(ValueError, match="clock"):
        sdekit.solve(flat, 1.0, (0, 1), method="exp_ab2", n_steps=4)
    no_rates = sdekit.SemilinearODE(lambda t, p: -t, lambda t, p: t, lambda t, x, p: x)
    with pytest.raises(ValueError, match="log_factor_rate"):
        sdekit.solve(no_rates, 1.0, (0, 1), method="rk4", n_steps=4)


# --------------------------------------------------------------------------- time_change
def test_time_change_of_an_ode_is_exact():
    """x' = -x on [0, 2] through t = 2 u^2: rk4 in u converges to e^{-2} at order 4."""
    ode = sdekit.ODE(lambda t, x, p: -x)
    ch = sdekit.time_change(ode, lambda u, p: p[0] * u * u, lambda u, p: 2.0 * p[0] * u, params=(2.0,))
    errs = [abs(sdekit.solve(ch, 1.0, (0, 1), method="rk4", n_steps=n, save_at=[1.0]).x[-1, 0, 0] - math.exp(-2))
            for n in (8, 16, 32)]
    assert errs[2] < 1e-6 and errs[0] / errs[2] > 100  # order 4: x256 over two halvings


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_time_changed_sde_has_the_right_law(backend):
    """OU run backwards in t by a decreasing time change: mean and variance at the end within 4 standard errors."""
    theta, sig = 1.3, 0.6
    ou = sdekit.SDE(lambda t, x, p: -p[0] * x, lambda t, x, p: p[1] + 0.0 * x, noise="additive", params=(theta, sig))
    # t = 2 (1 - u)^2 ... runs from t = 2 down to 0 (a reverse-time solve, dt < 0)
    ch = sdekit.time_change(ou, lambda u, p: 2.0 * (1.0 - u) ** 2, lambda u, p: -4.0 * (1.0 - u))
    n = 40_000 if backend == "numba" else 10_000  # the torch backend runs the closures eagerly per step
    sol = sdekit.solve(ch, 1.0, (0, 1), method="sra1", n_steps=200, n_paths=n, seed=5, save_at=[1.0],
                       backend=backend)
    x = np.asarray(sol.x[-1, :, 0])
    # backwards in time dX = -theta X dt with dt < 0 grows: X(0) = e^{2 theta} x0 + noise with
    # variance sig^2 (e^{4 theta} - 1) / (2 theta)
    m, v = math.exp(2 * theta), sig**2 * math.expm1(4 * theta) / (2 * theta)
    assert abs(x.mean() - m) < 4 * math.sqrt(v / n)
    assert abs(x.var() - v) < 4 * v * math.sqrt(2 / n)


# --------------------------------------------------------------------------- the amplification safeguard's constants
def _adams_bashforth(q):
    """The q-step Adams–Bashforth coefficients ``b_j = int_0^1 prod_{k != j} (s + k) / (k - j) ds`` (nodes 0, -1, ...,
    -(q-1) in units of the step; Hairer, Nørsett & Wanner 1993, §III.1, eq. 1.5), from the Lagrange basis."""
    out = []
    for j in range(q):
        basis = np.poly1d([1.0])
        for k in range(q):
            if k != j:
                basis *= np.poly1d([1.0, k]) / (k - j)
        antiderivative = basis.integ()
        out.append(antiderivative(1.0) - antiderivative(0.0))
    return np.array(out)


@pytest.mark.parametrize("q", [1, 2, 3])
def test_amplification_tends_to_the_adams_bashforth_sum_of_absolute_coefficients(q):
    """On equal steps h -> 0 the exponential weights tend to h times the Adams–Bashforth ones, so the amplification
    ``sum |w_j| / |sum w_j|`` tends to ``sum |b_j|`` (``AB_ABS_SUM``, the safeguard's yardstick) at rate O(h)."""
    from sdekit.semilinear import AB_ABS_SUM, amplification

    b = _adams_bashforth(q)
    assert b.sum() == pytest.approx(1.0, abs=1e-14)
    assert AB_ABS_SUM[q] == pytest.approx(np.abs(b).sum(), rel=1e-14)
    gaps = []
    for h in (1e-2, 1e-3):
        nodes = -h * np.arange(q)  # the current point, then the earlier ones
        np.testing.assert_allclose(exponential_weights(nodes, h) / h, b, atol=5 * q * h)
        gaps.append(abs(amplification(nodes, h) - np.abs(b).sum()))
    assert gaps[1] <= 0.2 * gaps[0] + 1e-12

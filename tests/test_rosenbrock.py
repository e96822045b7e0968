"""Rosenbrock (Rodas) stiff ODE solvers: tableaus by their order conditions, stiff references against scipy's Radau,
fitted order and save points on a linear stiff system with an exact solution, save points on a slow manifold
(step ends, never an interpolant), batching, backends, failures."""

import functools

import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.linalg import expm

import sdekit as sk
from sdekit.schemes import get_scheme
from sdekit.schemes import rosenbrock as rb

METHODS = ["rodas4", "rodas5"]
# Global error in units of the requested tolerance (atol + rtol |x|) that the tests accept: the tolerance is local,
# per step; over hundreds of steps of a stiff problem the global error measured here stays below 5 units.
TOLERANCE_FACTOR = 5.0


def robertson(t, x, p):
    out = np.empty_like(x)
    out[:, 0] = -0.04 * x[:, 0] + 1e4 * x[:, 1] * x[:, 2]
    out[:, 1] = 0.04 * x[:, 0] - 1e4 * x[:, 1] * x[:, 2] - 3e7 * x[:, 1] * x[:, 1]
    out[:, 2] = 3e7 * x[:, 1] * x[:, 1]
    return out


def robertson_jac(t, x, p):
    J = np.zeros((x.shape[0], 3, 3))
    J[:, 0, 0] = -0.04
    J[:, 0, 1] = 1e4 * x[:, 2]
    J[:, 0, 2] = 1e4 * x[:, 1]
    J[:, 1, 0] = 0.04
    J[:, 1, 1] = -1e4 * x[:, 2] - 6e7 * x[:, 1]
    J[:, 1, 2] = -1e4 * x[:, 1]
    J[:, 2, 1] = 6e7 * x[:, 1]
    return J


def van_der_pol(t, x, p):
    """Van der Pol with mu = 1e3 in Hairer's scaling (eps = 1/mu^2 = 1e-6, Hairer & Wanner II, §IV.10, VDPOL)."""
    out = np.empty_like(x)
    out[:, 0] = x[:, 1]
    out[:, 1] = ((1.0 - x[:, 0] * x[:, 0]) * x[:, 1] - x[:, 0]) / 1e-6
    return out


def hires(t, x, p):
    """HIRES (Schäfer 1975; Hairer & Wanner II, §IV.10): 8 reactions of plant physiology."""
    y0, y1, y2, y3, y4, y5, y6, y7 = (x[:, 0], x[:, 1], x[:, 2], x[:, 3], x[:, 4], x[:, 5], x[:, 6], x[:, 7])
    out = np.empty_like(x)
    out[:, 0] = -1.71 * y0 + 0.43 * y1 + 8.32 * y2 + 0.0007
    out[:, 1] = 1.71 * y0 - 8.75 * y1
    out[:, 2] = -10.03 * y2 + 0.43 * y3 + 0.035 * y4
    out[:, 3] = 8.32 * y1 + 1.71 * y2 - 1.12 * y3
    out[:, 4] = -1.745 * y4 + 0.43 * y5 + 0.43 * y6
    out[:, 5] = -280.0 * y5 * y7 + 0.69 * y3 + 1.71 * y4 - 0.43 * y5 + 0.69 * y6
    out[:, 6] = 280.0 * y5 * y7 - 1.81 * y6
    out[:, 7] = -280.0 * y5 * y7 + 1.81 * y6
    return out


@functools.cache
def radau(rhs, x0, t_span, save_at, atol):
    """scipy's Radau IIA(5) at rtol 1e-10: the reference (computed once per module)."""
    sol = solve_ivp(lambda t, y: rhs(t, y[None, :], ())[0], t_span, x0, method="Radau", rtol=1e-10, atol=atol,
                    t_eval=save_at)
    assert sol.status == 0
    return sol.y.T


def in_tolerance_units(x, ref, rtol, atol):
    return np.max(np.abs(np.asarray(x) - ref) / (atol + rtol * np.abs(ref)))


# --------------------------------------------------------------------------- the tables
def test_tree_count_is_the_number_of_rooted_trees():
    """1, 1, 2, 4, 9, 20 rooted trees with 1..6 nodes (OEIS A000081): the order conditions miss none."""
    assert [len(rb.rooted_trees(p)) for p in range(1, 7)] == [1, 1, 2, 4, 9, 20]


@pytest.mark.parametrize("tab", [rb.RODAS4, rb.RODAS5], ids=lambda t: t.name)
def test_tableau_meets_its_order_conditions_and_not_the_next(tab):
    alpha, gam, b = tab.standard_form()
    assert max(map(abs, rb.order_condition_residuals(alpha, gam, b, tab.order))) < 1e-12
    assert max(map(abs, rb.order_condition_residuals(alpha, gam, b, tab.order + 1))) > 1e-3
    embedded = (tab.b - tab.e) @ gam
    assert max(map(abs, rb.order_condition_residuals(alpha, gam, embedded, tab.error_order))) < 1e-12
    np.testing.assert_allclose(alpha.sum(axis=1), tab.c, atol=1e-12)
    np.testing.assert_allclose(gam.sum(axis=1), tab.d, atol=1e-12)
    # stiffly accurate: the solution is the last stage's input plus the last stage ...
    np.testing.assert_array_equal(tab.b, np.append(tab.a[-1, :-1], 1.0))
    # ... so the stability function R(z) = 1 + z b (I - z (alpha + Gamma))^-1 1 vanishes at infinity (L-stable)
    for z in (-1e3, -1e6, -1e9):
        R = 1.0 + z * b @ np.linalg.solve(np.eye(tab.stages) - z * (alpha + gam), np.ones(tab.stages))
        assert abs(R) < 50.0 / abs(z)
    assert all(abs(1.0 + z * b @ np.linalg.solve(np.eye(tab.stages) - z * (alpha + gam), np.ones(tab.stages))) <= 1.0
               for z in -np.logspace(-3, 6, 200))  # A-stable on the negative axis


def test_a_mistyped_coefficient_is_refused_at_construction():
    a = rb.RODAS4.a.copy()
    a[2, 1] += 1e-6
    with pytest.raises(ValueError, match="rodas4.*order-4 condition fails|rows of alpha"):
        rb.RosenbrockTableau("rodas4", 4, 3, 0.25, a, rb.RODAS4.C, rb.RODAS4.c, rb.RODAS4.d, rb.RODAS4.b,
                             rb.RODAS4.e)


def test_registered_as_adaptive_ode_schemes_without_a_fixed_step_form():
    problem = sk.ODE(robertson)
    for name in METHODS:
        scheme = get_scheme(name, problem)
        assert scheme.adaptive and scheme.kind == "ode"
        with pytest.raises(ValueError, match="no fixed-step form"):
            scheme.plan(problem, 3)
    with pytest.raises(ValueError, match="chooses its own steps"):
        sk.solve(problem, [1.0, 0.0, 0.0], (0.0, 1.0), method="rodas5", n_steps=10)


# --------------------------------------------------------------------------- stiff references
@pytest.mark.parametrize("method", METHODS)
def test_robertson_to_1e11_against_radau(method):
    save_at = [1.0, 1e2, 1e4, 1e6, 1e11]
    ref = radau(robertson, (1.0, 0.0, 0.0), (0.0, 1e11), tuple(save_at), atol=1e-16)
    rtol, atol = 1e-6, 1e-12
    sol = sk.solve(sk.ODE(robertson), [1.0, 0.0, 0.0], (0.0, 1e11), method=method, rtol=rtol, atol=atol,
                   save_at=save_at)
    assert sol.success
    assert in_tolerance_units(sol.x[:, 0], ref, rtol, atol) < TOLERANCE_FACTOR
    np.testing.assert_allclose(sol.x[:, 0].sum(axis=1), 1.0, atol=1e-12)  # the linear invariant y1 + y2 + y3 = 1


@pytest.mark.parametrize("method", METHODS)
def test_van_der_pol_mu_1e3_through_its_fast_jump(method):
    save_at = [0.2, 0.5, 0.7, 1.0]  # the jump is near t = 0.81: a timing error there is no state error
    ref = radau(van_der_pol, (2.0, -0.66), (0.0, 1.0), tuple(save_at), atol=1e-12)
    rtol, atol = 1e-7, 1e-7
    sol = sk.solve(sk.ODE(van_der_pol), [2.0, -0.66], (0.0, 1.0), method=method, rtol=rtol, atol=atol,
                   save_at=save_at)
    assert sol.success
    assert in_tolerance_units(sol.x[-1:, 0], ref[-1:], rtol, atol) < TOLERANCE_FACTOR  # the last step's end
    # the save points are step ends too (an interpolant reached 14 units at t = 0.7, just before the jump)
    assert in_tolerance_units(sol.x[:-1, 0], ref[:-1], rtol, atol) < TOLERANCE_FACTOR


@pytest.mark.parametrize("method", METHODS)
def test_hires_against_radau(method):
    x0 = (1.0, 0, 0, 0, 0, 0, 0, 0.0057)
    save_at = [5.0, 100.0, 321.8122]
    ref = radau(hires, x0, (0.0, 321.8122), tuple(save_at), atol=1e-14)
    rtol, atol = 1e-7, 1e-10
    sol = sk.solve(sk.ODE(hires), x0, (0.0, 321.8122), method=method, rtol=rtol, atol=atol, save_at=save_at)
    assert sol.success
    assert in_tolerance_units(sol.x[:, 0], ref, rtol, atol) < TOLERANCE_FACTOR


# --------------------------------------------------------------------------- linear stiff systems, solved exactly
A_STIFF = np.array([[-1.0, 1.0, 0.0], [0.0, -100.0, 10.0], [0.0, 50.0, -1e4]])
X0_LINEAR = np.array([1.0, 2.0, 3.0])


def linear_rhs(t, x, p):
    """``x' = A x`` (eigenvalues near -1, -100, -1e4): ``x(t) = e^{At} x0``."""
    return x @ A_STIFF.T


def forced_rhs(t, x, p):
    """``x' = A (x - phi(t)) + phi'(t)``, ``phi = (sin t, cos 2t, e^-t)``: non-autonomous (the ``f_t`` terms), with
    ``x(t) = phi(t) + e^{At} (x0 - phi(0))``."""
    y = np.empty_like(x)
    y[:, 0] = x[:, 0] - np.sin(t)
    y[:, 1] = x[:, 1] - np.cos(2 * t)
    y[:, 2] = x[:, 2] - np.exp(-t)
    out = y @ A_STIFF.T
    out[:, 0] += np.cos(t)
    out[:, 1] -= 2 * np.sin(2 * t)
    out[:, 2] -= np.exp(-t)
    return out


def forced_exact(t):
    phi = np.array([np.sin(t), np.cos(2 * t), np.exp(-t)])
    return phi + expm(A_STIFF * t) @ (X0_LINEAR - np.array([0.0, 1.0, 1.0]))


@pytest.mark.parametrize("method", METHODS)
def test_fitted_order_of_the_error_against_the_steps(method):
    """Global error against the steps taken, over tolerances 1e-5..1e-9: the slope is the method's order."""
    order = get_scheme(method, sk.ODE(linear_rhs)).order_for(None)
    exact = expm(2.0 * A_STIFF) @ X0_LINEAR
    steps, errors = [], []
    for rtol in np.logspace(-5, -9, 5):
        sol = sk.solve(sk.ODE(linear_rhs), X0_LINEAR, (0.0, 2.0), method=method, rtol=rtol, atol=rtol)
        steps.append(sol.stats.n_accepted)
        errors.append(np.abs(sol.x[-1, 0] - exact).max())
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert order - 0.3 < slope < order + 0.5, (slope, steps, errors)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_save_points_match_the_exact_solution(backend):
    save_at = np.linspace(0.0, 2.0, 201)
    rtol = atol = 1e-7
    problem = sk.ODE(linear_rhs if backend == "numba" else _torch_rhs(forced=False))
    sol = sk.solve(problem, X0_LINEAR, (0.0, 2.0), method="rodas4", rtol=rtol, atol=atol, save_at=save_at,
                   backend=backend)
    exact = np.array([expm(A_STIFF * t) @ X0_LINEAR for t in save_at])
    assert sol.stats.n_accepted >= save_at.size - 1  # every save point after t0 is a step end
    assert in_tolerance_units(np.asarray(sol.x[:, 0]), exact, rtol, atol) < TOLERANCE_FACTOR
    # non-autonomous, forwards and backwards in time
    problem = sk.ODE(forced_rhs if backend == "numba" else _torch_rhs(forced=True))
    exact = np.array([forced_exact(t) for t in save_at])
    sol = sk.solve(problem, X0_LINEAR, (0.0, 2.0), method="rodas4", rtol=rtol, atol=atol, save_at=save_at,
                   backend=backend)
    assert in_tolerance_units(np.asarray(sol.x[:, 0]), exact, rtol, atol) < TOLERANCE_FACTOR
    # backwards in time on x' = -A x, stiff in that direction: x(t) = e^{A (2 - t)} x0 from x(2) = x0
    problem = sk.ODE(reversed_rhs if backend == "numba" else _torch_rhs(forced=False, sign=-1.0))
    back = sk.solve(problem, X0_LINEAR, (2.0, 0.0), method="rodas4", rtol=rtol, atol=atol, save_at=save_at[::-1],
                    backend=backend)
    exact = np.array([expm(A_STIFF * (2.0 - t)) @ X0_LINEAR for t in save_at[::-1]])
    assert in_tolerance_units(np.asarray(back.x[:, 0]), exact, rtol, atol) < TOLERANCE_FACTOR


def reversed_rhs(t, x, p):
    return -(x @ A_STIFF.T)


def _torch_rhs(forced, sign=1.0):
    import torch

    A = torch.as_tensor(sign * A_STIFF)

    def rhs(t, x, p):
        if not forced:
            return x @ A.T
        phi = torch.tensor([np.sin(t), np.cos(2 * t), np.exp(-t)], dtype=x.dtype)
        dphi = torch.tensor([np.cos(t), -2 * np.sin(2 * t), -np.exp(-t)], dtype=x.dtype)
        return (x - phi) @ A.T + dphi

    return rhs


# --------------------------------------------------------------------------- batches, backends, Jacobians
def _robertson_rates(t, x, p):
    """Robertson with per-path rate constants in the state's last three columns (constant in time)."""
    out = np.zeros_like(x)
    k1, k2, k3 = x[:, 3], x[:, 4], x[:, 5]
    out[:, 0] = -k1 * x[:, 0] + k3 * x[:, 1] * x[:, 2]
    out[:, 1] = k1 * x[:, 0] - k3 * x[:, 1] * x[:, 2] - k2 * x[:, 1] * x[:, 1]
    out[:, 2] = k2 * x[:, 1] * x[:, 1]
    return out


def _perturbed_robertson_x0(n, seed=0):
    rng = np.random.default_rng(seed)
    rates = np.array([0.04, 3e7, 1e4]) * np.exp(rng.uniform(-0.3, 0.3, (n, 3)))
    return np.column_stack([np.ones(n), np.zeros((n, 2)), rates])


def test_a_batch_of_100_equals_100_single_solves():
    x0 = _perturbed_robertson_x0(100)
    kw = dict(method="rodas5", rtol=1e-6, atol=1e-12, save_at=[0.0, 1.0, 1e3])
    batch = sk.solve(sk.ODE(_robertson_rates), x0, (0.0, 1e3), **kw)
    singles = np.stack([sk.solve(sk.ODE(_robertson_rates), x0[i], (0.0, 1e3), **kw).x[:, 0] for i in range(100)],
                       axis=1)
    np.testing.assert_array_equal(batch.x, singles)
    assert np.ptp(batch.x[-1, :, 0]) > 1e-3  # the paths really differ


@pytest.mark.parametrize("method", METHODS)
def test_numpy_numba_torch_agree(method):
    x0 = _perturbed_robertson_x0(2)[:, :3]
    kw = dict(method=method, rtol=1e-6, atol=1e-12, save_at=[0.0, 0.5, 40.0, 1e4])
    a = sk.solve(sk.ODE(robertson), x0, (0.0, 1e4), backend="numpy", **kw)
    b = sk.solve(sk.ODE(robertson), x0, (0.0, 1e4), backend="numba", **kw)
    np.testing.assert_allclose(b.x, a.x, rtol=1e-12, atol=1e-18)
    assert a.stats == b.stats
    # torch steps a batch with one step size: one path against the per-path integrators, the same Jacobian
    torch = pytest.importorskip("torch")

    def jac_t(t, x, p):
        return torch.as_tensor(robertson_jac(t, x.numpy(), p))

    one = dict(kw, save_at=kw["save_at"])
    c = sk.solve(sk.ODE(robertson, jac=robertson_jac), x0[:1], (0.0, 1e4), backend="numba", **one)
    d = sk.solve(sk.ODE(_torch_robertson, jac=jac_t), x0[:1], (0.0, 1e4), backend="torch", **one)
    np.testing.assert_allclose(d.x.numpy(), c.x, rtol=1e-9, atol=1e-18)
    assert (c.stats.n_accepted, c.stats.n_rejected) == (d.stats.n_accepted, d.stats.n_rejected)


def _torch_robertson(t, x, p):
    import torch

    return torch.stack([-0.04 * x[:, 0] + 1e4 * x[:, 1] * x[:, 2],
                        0.04 * x[:, 0] - 1e4 * x[:, 1] * x[:, 2] - 3e7 * x[:, 1] ** 2, 3e7 * x[:, 1] ** 2], dim=1)


@pytest.mark.parametrize("backend", ["numpy", "numba", "torch"])
def test_user_jacobian_and_its_approximation_agree(backend):
    """Central differences (numpy, numba) or autograd (torch) against the user's exact Jacobian: same steps."""
    rhs = robertson
    jac = robertson_jac
    if backend == "torch":
        import torch

        rhs = _torch_robertson

        def jac(t, x, p):
            return torch.as_tensor(robertson_jac(t, x.numpy(), p))
    kw = dict(method="rodas4", rtol=1e-6, atol=1e-12, save_at=[1e4], backend=backend)
    approx = sk.solve(sk.ODE(rhs), [1.0, 0.0, 0.0], (0.0, 1e4), **kw)
    exact = sk.solve(sk.ODE(rhs, jac=jac), [1.0, 0.0, 0.0], (0.0, 1e4), **kw)
    assert approx.stats.n_accepted == exact.stats.n_accepted
    np.testing.assert_allclose(np.asarray(approx.x), np.asarray(exact.x), rtol=1e-8)


# --------------------------------------------------------------------------- failures
@pytest.mark.parametrize("backend", ["numpy", "numba", "torch"])
def test_blow_up_is_reported_per_path(backend):
    """x' = x^2 from x0 = 1 blows up at t = 1; from x0 = -1 it decays as -1/(1 + t)."""
    sol = sk.solve(sk.ODE(lambda t, x, p: x * x), np.array([[1.0], [-1.0]]), (0.0, 2.0), method="rodas5", rtol=1e-6, atol=1e-9,
                   backend=backend, save_at=[0.5, 2.0])
    assert not sol.success
    failed = np.asarray(sol.failed)
    assert failed.tolist() == [True, False]
    assert abs(sol.failure_time[0] - 1.0) < 1e-3
    x = np.asarray(sol.x)
    assert np.isnan(x[-1, 0]).all() and abs(x[0, 0, 0] - 2.0) < 1e-5
    assert abs(x[-1, 1, 0] + 1.0 / 3.0) < 1e-5
    assert "1 of 2 paths failed (step size underflow" in sol.message or "(non-finite state" in sol.message


def _slow_manifold(t, x, p):
    """x' = lam (x - sin t) + cos t, lam = -1e8: x = sin t + (x0 - 0) e^(lam t), so x = sin t exactly from x0 = 0, and
    any perturbation decays within 1e-8 (a slow manifold)."""
    return -1e8 * (x - np.sin(t)) + np.cos(t)


def _slow_manifold_torch(t, x, p):
    return -1e8 * (x - float(np.sin(t))) + float(np.cos(t))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", ["numpy", "numba", "torch"])
def test_save_points_on_a_slow_manifold_are_within_the_tolerance(method, backend):
    """On a very stiff problem the step ends are exact to far below the tolerance with steps of ~0.4, and an
    interpolant between them misses the manifold (rodas4's was off by 1e6 tolerance units here): every save point is a
    step end within the tolerance of x(t) = sin t."""
    save_at = np.linspace(0.1, 3.0, 30)
    rtol = atol = 1e-8
    rhs = _slow_manifold_torch if backend == "torch" else _slow_manifold
    sol = sk.solve(sk.ODE(rhs), 0.0, (0.0, 3.0), method=method, rtol=rtol, atol=atol, save_at=save_at, backend=backend)
    assert sol.success
    exact = np.sin(save_at)
    assert in_tolerance_units(np.asarray(sol.x)[:, 0], exact[:, None], rtol, atol) < TOLERANCE_FACTOR


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("with_jac", [False, True])
def test_the_evaluations_counted_are_those_made(method, with_jac):
    """``Solution.stats.n_drift_evals`` counts every call of ``rhs`` a solve makes (stages, Jacobian and time
    differences, the starting step's), counted here by the function itself; the input checks' probes, the same for
    any batch, cancel in the difference between a batch of 3 and one path (numpy: each path alone)."""
    def run(n):
        calls = []

        def rhs(t, x, p):
            calls.append(x.shape[0])
            return -3.0 * (x - np.cos(t)) - np.sin(t) * x * x

        jac = (lambda t, x, p: (-3.0 - 2.0 * np.sin(t) * x)[:, :, None] * np.eye(2)) if with_jac else None
        sol = sk.solve(sk.ODE(rhs, jac=jac), np.array([2.0, -1.0]), (0.25, 3.0), method=method, rtol=1e-6,
                       atol=1e-8, n_paths=n, backend="numpy", save_at=[1.0, 3.0])
        return sum(calls), sol.stats.n_drift_evals

    (calls_1, counted_1), (calls_3, counted_3) = run(1), run(3)
    assert counted_3 == 3 * counted_1  # identical paths
    assert calls_3 - calls_1 == counted_3 - counted_1

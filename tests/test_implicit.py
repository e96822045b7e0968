"""Drift-implicit schemes (implicit_euler, implicit_euler_heun, implicit_milstein): stability, exact recursions,
Newton with and without the user's Jacobian, and backend parity.

The registry-driven tests (test_orders, test_parity, test_scheme_registry) check the declared orders and the
kernels; here: what makes these schemes worth having (mean-square stability where Euler–Maruyama diverges), their
closed forms on linear problems, and the Newton machinery.
"""

import math

import numpy as np
import pytest

import sdekit as sk
from sdekit import BrownianPath
from sdekit.schemes import implicit

LAMBDA_H = [-10.0, -1e3, -1e6]
H = 0.1
N_STEPS = 20


def _final(sol):
    return np.asarray(sol.final if isinstance(sol.final, np.ndarray) else sol.final.numpy())


def _ou(lam, sigma, **kw):
    """dX = lam X dt + sigma dW (the form of the stationary-variance formula)."""
    return sk.SDE(lambda t, x, p: p[0] * x, lambda t, x, p: p[1], noise="additive", params=(lam, sigma), **kw)


def _gbm(lam, mu, calculus):
    """dX = lam X dt + mu X dW (Itô) or dX = lam X dt + mu X o dW."""
    return sk.SDE(lambda t, x, p: p[0] * x, lambda t, x, p: p[1] * x, noise="scalar", calculus=calculus,
                  params=(lam, mu))


SCHEME_CALCULUS = [("implicit_euler", "ito"), ("implicit_euler_heun", "stratonovich"), ("implicit_milstein", "ito"),
                   ("implicit_milstein", "stratonovich")]


@pytest.mark.parametrize("lam_h", LAMBDA_H)
@pytest.mark.parametrize("method, calculus", SCHEME_CALCULUS)
def test_mean_square_stable_where_euler_diverges(method, calculus, lam_h):
    """dX = lam X dt + mu X dW with 2 lam + mu^2 < 0 (mean-square stable SDE), and OU, at lam h = -10 .. -1e6.

    Drift-implicit Euler multiplies E X^2 per step by (1 + mu^2 h) / (1 - lam h)^2 < 1 (Higham 2000):
    after 20 steps every path is far below its start. Euler–Maruyama multiplies it by (1 + lam h)^2 + mu^2 h > 81:
    every path is flagged by the instability rule, and without the rule the states pass 1e15 (or overflow).
    """
    lam, mu = lam_h / H, 2.0
    for problem in (_gbm(lam, mu, calculus), _ou(lam, 1.0)):
        sol = sk.solve(problem, 1.0, (0.0, N_STEPS * H), method=method, n_steps=N_STEPS, n_paths=200, seed=3,
                       backend="numpy")
        assert sol.success, sol.message
        x = _final(sol)
        bound = 1e-6 if problem.noise == "scalar" else 10.0 * math.sqrt(H / ((1.0 - lam_h) ** 2 - 1.0))  # OU: 10 sd
        assert np.all(np.abs(x) < bound), np.abs(x).max()
        explicit = "euler" if calculus == "ito" else "euler_heun"
        kw = dict(method=explicit, n_steps=N_STEPS, n_paths=200, seed=3, backend="numpy")
        em = sk.solve(problem, 1.0, (0.0, N_STEPS * H), **kw)
        assert em.failed.all() and "explicit scheme unstable" in em.message, em.message
        y = _final(sk.solve(problem, 1.0, (0.0, N_STEPS * H), detect_instability=False, **kw))
        assert not np.all(np.abs(y) < 1e15), np.abs(y).max()  # unchecked, it diverges (or overflows)


@pytest.mark.parametrize("lam_h", [-0.5] + LAMBDA_H)
def test_stationary_variance_of_implicit_euler_on_ou(lam_h):
    """dX = lam X dt + sigma dW, theta = 1: X_{n+1} = (X_n + sigma dW_n) / (1 - lam h), so the variance obeys
    v_{n+1} = (v_n + sigma^2 h) / (1 - lam h)^2, whose fixed point is v = sigma^2 h / ((1 - lam h)^2 - 1) (the
    exact process has sigma^2 / (2 |lam|)). From X_0 = 0 after 40 steps v_n is at the fixed point to a factor
    1 - (1 - lam h)^{-80} (below 1e-14 here). The sample variance of 20,000 Gaussian values has the standard error
    v sqrt(2 / (n - 1)); the check is 4 standard errors.
    """
    sigma, n = 0.7, 20_000
    lam = lam_h / H
    sol = sk.solve(_ou(lam, sigma), 0.0, (0.0, 40 * H), method="implicit_euler", n_steps=40, n_paths=n, seed=5,
                   backend="numpy", save_at=[40 * H])
    v = sigma ** 2 * H / ((1.0 - lam_h) ** 2 - 1.0)
    v_hat = float(np.var(_final(sol), ddof=1))
    assert abs(v_hat - v) < 4.0 * v * math.sqrt(2.0 / (n - 1)), (v_hat, v)


@pytest.mark.parametrize("backend", ["numpy", "numba", "torch"])
@pytest.mark.parametrize("theta", [0.5, 1.0])
@pytest.mark.parametrize("lam_h", LAMBDA_H)
def test_theta_method_on_ou_is_its_closed_form_recursion(lam_h, theta, backend):
    """On dX = lam X dt + sigma dW the theta scheme is linear: X_{n+1} = ((1 + (1 - theta) lam h) X_n + sigma dW_n)
    / (1 - theta lam h). The solve equals this recursion on the same increments to 1e-12 relative to the initial
    state's size (Newton's stopping norm |dy| / (1 + |y|); at lam h = -1e6 the states shrink to 1e-7 at once and
    their last digits are those of Newton's finite-difference Jacobian, contracting the error 1e-8-fold per
    iteration)."""
    sigma, n_steps, n_paths = 0.3, 16, 50
    lam = lam_h / H
    t1 = n_steps * H
    sol = sk.solve(_ou(lam, sigma), 1.5, (0.0, t1), method="implicit_euler", theta=theta, n_steps=n_steps,
                   n_paths=n_paths, seed=9, backend=backend)
    dw = sol.brownian.increments(n_steps)[:, :, 0]
    x = np.full(n_paths, 1.5)
    expected = [x]
    for k in range(n_steps):
        x = ((1.0 + (1.0 - theta) * lam_h) * x + sigma * dw[k]) / (1.0 - theta * lam_h)
        expected.append(x)
    got = np.asarray(sol.x)[:, :, 0]
    np.testing.assert_allclose(got, np.array(expected), rtol=1e-12, atol=1e-12 * 1.5)


def _arctan_problem(a, without_jac=False):
    """dX = -a^2 sin X cos^3 X dt + a cos^2 X dW (Itô), X_t = arctan(a W_t + tan X_0) (Kloeden & Platen 1992, §4.4,
    list of explicitly solvable equations): a nonlinear drift with an exact solution (d drift / dx = -a^2 at 0)."""
    def drift(t, x, p):
        return -p[0] ** 2 * sk.ops.sin(x) * sk.ops.cos(x) ** 3

    def jac(t, x, p):  # (n, 1, 1)
        c, s = sk.ops.cos(x), sk.ops.sin(x)
        return (-p[0] ** 2 * (c ** 4 - 3.0 * s * s * c * c))[:, :, None]

    return sk.SDE(drift, lambda t, x, p: p[0] * sk.ops.cos(x) ** 2, noise="scalar", params=(a,),
                  jac=None if without_jac else jac)


def test_nonlinear_drift_with_exact_solution_converges_at_order_one_half():
    """Strong error of implicit_euler against arctan(a W_t + tan X_0), a = 2, at t = 1 on 400 paths: the fitted
    slope over 16..1024 steps is at least 0.4 (declared order 1/2; the slope measured here is about 0.57) and the
    error halves at least twice over the range. (Larger a makes the drift stiffer but the noise a cos^2 X dW
    with it: at a = 8 a step of 1/16 moves X by about 2, beyond the branch (-pi/2, pi/2) of the solution.)"""
    a, x0, t1 = 2.0, 0.3, 1.0
    problem = _arctan_problem(a)
    steps = [16, 64, 256, 1024]
    path = BrownianPath(seed=4, t_span=(0.0, t1), n_paths=400)
    exact = np.arctan(a * path.W(t1)[:, 0] + math.tan(x0))
    errors = []
    for n in steps:
        sol = sk.solve(problem, x0, (0.0, t1), method="implicit_euler", n_steps=n, brownian=path, backend="numpy",
                       save_at=[t1])
        assert sol.success
        errors.append(float(np.sqrt(np.mean((_final(sol)[:, 0] - exact) ** 2))))
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert slope > 0.4, (slope, errors)
    assert errors[-1] < 0.25 * errors[0], errors


@pytest.mark.parametrize("backend", ["numpy", "numba", "torch"])
def test_user_jacobian_gives_the_finite_difference_result(backend):
    """Newton converges to the same states with the user's Jacobian and with finite differences / autograd (the
    fixed point does not depend on the Jacobian; the tolerance 1e-10 bounds the last correction)."""
    kw = dict(method="implicit_euler", n_steps=32, n_paths=100, seed=6, backend=backend)
    with_jac = _final(sk.solve(_arctan_problem(2.0), 0.3, (0.0, 1.0), **kw))
    without = _final(sk.solve(_arctan_problem(2.0, without_jac=True), 0.3, (0.0, 1.0), **kw))
    assert np.isfinite(with_jac).all()
    np.testing.assert_allclose(with_jac, without, rtol=0, atol=1e-9)


def test_a_wrong_jacobian_is_refused_at_the_probe():
    drift = lambda t, x, p: -x ** 3 + x  # noqa: E731
    wrong = sk.SDE(drift, lambda t, x, p: 0.1, noise="additive", jac=lambda t, x, p: (-3.0 * x ** 2)[:, :, None])
    with pytest.raises(ValueError, match=r"`jac` disagrees with the drift.*J\[0, 0\]"):
        sk.solve(wrong, 0.5, (0.0, 1.0), method="implicit_euler", n_steps=4, n_paths=2, seed=0, backend="numpy")
    bad_shape = sk.SDE(drift, lambda t, x, p: 0.1, noise="additive", jac=lambda t, x, p: np.ones((3, 3)))
    with pytest.raises(ValueError, match="`jac` returned shape"):
        sk.solve(bad_shape, np.zeros(2), (0.0, 1.0), method="implicit_euler", n_steps=4, n_paths=2, seed=0,
                 backend="numpy")
    right = sk.SDE(drift, lambda t, x, p: 0.1, noise="additive", jac=lambda t, x, p: (1.0 - 3.0 * x ** 2)[:, :, None])
    assert sk.solve(right, 0.5, (0.0, 1.0), method="implicit_euler", n_steps=4, n_paths=2, seed=0,
                    backend="numpy").success


def _coupled():
    """A stiff 2-d system with a nonlinear drift (coupled through the Jacobian's off-diagonal entries) and a
    (2, 2) commutative diffusion matrix (a constant matrix times x's identity: L^j sigma_k = L^k sigma_j)."""
    A = np.array([[-50.0, 10.0], [5.0, -2.0]])
    B = np.array([[0.3, 0.1], [0.1, 0.2]])

    def drift(t, x, p):
        return x @ p[0].T - x ** 3

    def jac(t, x, p):  # p[2] is the identity (params reach each backend as its arrays)
        return p[0][None, :, :] - 3.0 * (x ** 2)[:, :, None] * p[2][None]

    def diffusion(t, x, p):
        return p[1][None, :, :] * (1.0 + 0.0 * x[:, :, None])

    return drift, jac, diffusion, (A, B, np.eye(2))


@pytest.mark.parametrize("method, calculus", [("implicit_euler", "ito"), ("implicit_euler_heun", "stratonovich"),
                                              ("implicit_milstein", "ito")])
@pytest.mark.parametrize("with_jac", [True, False])
def test_backends_agree_on_a_coupled_system_with_matrix_noise(method, calculus, with_jac):
    """numpy, numba and torch on the same path: a 2-d coupled stiff drift (the batched linear solves of every
    backend, Gaussian elimination in the Numba kernel) with general noise, with and without the user's Jacobian."""
    drift, jac, diffusion, params = _coupled()
    problem = sk.SDE(drift, diffusion, noise="general", noise_dim=2, commutative=True, calculus=calculus,
                     params=params, jac=jac if with_jac else None)
    kw = dict(method=method, n_steps=16, n_paths=64, seed=8, save_at=None)
    x0 = np.array([1.0, -0.5])
    a = sk.solve(problem, x0, (0.0, 1.0), backend="numpy", **kw)
    b = sk.solve(problem, x0, (0.0, 1.0), backend="numba", **kw)
    c = sk.solve(problem, x0, (0.0, 1.0), backend="torch", **kw)
    assert a.success and b.success and c.success
    np.testing.assert_allclose(b.x, a.x, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(c.x), a.x, rtol=1e-10, atol=1e-14)


def test_newton_failure_is_reported_per_path():
    """y = x + h y^2 has no real root when 4 h x > 1: Newton cannot converge on the second path (x0 = 100, h = 0.1)
    and that path fails with the Newton text; the first (x0 = 0.1) is untouched."""
    problem = sk.SDE(lambda t, x, p: x * x, lambda t, x, p: 1e-3, noise="additive")
    sol = sk.solve(problem, np.array([[0.1], [100.0]]), (0.0, 0.2), method="implicit_euler", n_steps=2, seed=1,
                   backend="numba")
    assert list(sol.failed) == [False, True]
    assert "Newton iteration did not converge" in sol.message
    assert np.isfinite(_final(sol)[0]).all() and np.isnan(_final(sol)[1]).all()


def test_theta_is_refused_where_it_does_not_apply():
    ou = _ou(-1.0, 0.1)
    with pytest.raises(ValueError, match="`theta` applies to the drift-implicit schemes"):
        sk.solve(ou, 1.0, (0.0, 1.0), method="euler", theta=0.5, n_steps=4, n_paths=2, seed=0, backend="numpy")
    with pytest.raises(ValueError, match=r"`theta` must be a number in \[0, 1\]"):
        sk.solve(ou, 1.0, (0.0, 1.0), method="implicit_euler", theta=1.5, n_steps=4, n_paths=2, seed=0,
                 backend="numpy")
    assert implicit.with_theta(sk.get_scheme("implicit_milstein", ou), 0.5).tableau.theta == 0.5


def test_gradient_through_newton_on_torch():
    """The torch solve is differentiable through the Newton iterations: on dX = lam X dt + sigma dW with theta = 1,
    X_n = x0 (1 - lam h)^{-n} + (terms free of x0), so d sum_paths X_n / d x0 = n_paths (1 - lam h)^{-n}."""
    torch = pytest.importorskip("torch")
    x0 = torch.tensor([[1.5]], dtype=torch.float64, requires_grad=True)
    lam, n_steps, n_paths = -50.0, 8, 4
    sol = sk.solve(_ou(lam, 0.3), x0, (0.0, 1.0), method="implicit_euler", n_steps=n_steps, n_paths=n_paths, seed=0,
                   backend="torch")
    sol.final.sum().backward()
    assert x0.grad.item() == pytest.approx(n_paths * (1.0 - lam / n_steps) ** -n_steps, rel=1e-12)


@pytest.mark.parametrize("method, per_step", [("implicit_euler", 1), ("implicit_euler_heun", 2), ("implicit_milstein", None)])
def test_the_diffusion_evaluations_counted_are_those_made(method, per_step):
    """``Solution.stats`` counts the diffusion evaluations each step makes: counted here by the function itself (on the
    numpy backend every call evaluates the whole batch)."""
    calls = []

    def diffusion(t, x, p):
        calls.append(x.shape[0])
        return 0.3 * x

    calculus = "stratonovich" if method == "implicit_euler_heun" else "ito"
    sde = sk.SDE(lambda t, x, p: -2.0 * x, diffusion, noise="diagonal", calculus=calculus)
    calls.clear()
    sol = sk.solve(sde, 1.0, (0.0, 1.0), method=method, n_steps=5, n_paths=7, seed=1, backend="numpy")
    batched = sum(1 for n in calls if n == 7)  # the input checks probe on fewer rows
    assert sol.stats.n_diffusion_evals == batched * 7
    if per_step is not None:
        assert batched == per_step * 5


def _counting_drift(rule):
    """A drift ``rule(x)`` that records ``(t, rows)`` of every call."""
    calls = []

    def drift(t, x, p):
        calls.append((float(np.max(t)) if np.ndim(t) else float(t), x.shape[0]))
        return rule(x)

    return drift, calls


@pytest.mark.parametrize("method", ["implicit_euler", "implicit_euler_heun", "implicit_milstein"])
@pytest.mark.parametrize("dim, with_jac", [(1, False), (3, False), (3, True)])
def test_the_drift_evaluations_counted_are_those_of_one_newton_iteration(method, dim, with_jac):
    """One step from t = 0 to h: f(0, x) twice (the explicit step, and the constant of the residual), then per Newton
    iteration f(h, y) and, without ``jac``, ``dim`` forward differences at h. A linear drift is solved by the first
    iteration and the second confirms it, so the calls at h are 2 (1 + dim) or 2; ``Solution.stats`` counts a step
    with one iteration (docs: sdekit.schemes.implicit)."""
    drift, calls = _counting_drift(lambda x: -2.0 * x)
    jac = (lambda t, x, p: np.broadcast_to(-2.0 * np.eye(x.shape[1]), x.shape + x.shape[1:])) if with_jac else None
    calculus = "stratonovich" if method == "implicit_euler_heun" else "ito"
    sde = sk.SDE(drift, lambda t, x, p: 0.3 * x, noise="diagonal", calculus=calculus, jac=jac)
    h, n = 0.25, 7
    calls.clear()
    sol = sk.solve(sde, np.ones(dim), (0.0, h), method=method, n_steps=1, n_paths=n, seed=1, backend="numpy")
    at_start = sum(1 for t, rows in calls if rows == n and t == 0.0)
    at_end = sum(1 for t, rows in calls if rows == n and t == h)
    per_iteration = 1 + (0 if with_jac else dim)
    assert (at_start, at_end) == (2, 2 * per_iteration)
    assert sol.stats.n_drift_evals == n * (at_start + at_end // 2)


@pytest.mark.parametrize("with_jac", [True, False])
def test_a_newton_iteration_that_cannot_converge_stops_after_fifty(with_jac):
    """y = x + h y^2 has no real root when 4 h x > 1 (x = 100, h = 0.1): Newton runs the 50 iterations docs/schemes.md
    documents, each one evaluation of f(h, .) on the batch plus, without ``jac``, one forward difference; that path
    then fails and the others (x = 0.1, 0.2, which converge) keep their values."""
    drift, calls = _counting_drift(lambda x: x * x)
    jac = (lambda t, x, p: (2.0 * x)[:, :, None]) if with_jac else None
    problem = sk.SDE(drift, lambda t, x, p: 1e-3, noise="additive", jac=jac)
    calls.clear()
    sol = sk.solve(problem, np.array([[0.1], [100.0], [0.2]]), (0.0, 0.1), method="implicit_euler", n_steps=1, seed=1,
                   backend="numpy")
    assert list(sol.failed) == [False, True, False]
    assert sum(1 for t, rows in calls if rows == 3 and t == 0.1) == 50 * (1 if with_jac else 2)
    assert np.isfinite(_final(sol)[[0, 2]]).all()


@pytest.mark.parametrize("calculus", ["ito", "stratonovich"])
def test_matrix_noise_diffusion_evaluations_counted_are_those_made(calculus):
    """implicit_milstein on commutative (2, 2) matrix noise: one evaluation at x, then one (Itô) or two (Stratonovich)
    support values per Brownian component (Kloeden & Platen 1992, eq. 11.1.7), counted by the function itself."""
    calls = []
    _, _, diffusion, params = _coupled()

    def counted(t, x, p):
        calls.append(x.shape[0])
        return diffusion(t, x, p)

    problem = sk.SDE(lambda t, x, p: -x, counted, noise="general", noise_dim=2, commutative=True, calculus=calculus,
                     params=params)
    calls.clear()
    sol = sk.solve(problem, np.array([1.0, -0.5]), (0.0, 1.0), method="implicit_milstein", n_steps=3, n_paths=5,
                   seed=2, backend="numpy")
    batched = sum(1 for n in calls if n == 5)
    assert batched == 3 * (1 + (1 if calculus == "ito" else 2) * 2)
    assert sol.stats.n_diffusion_evals == 5 * batched


def test_theta_zero_is_the_explicit_scheme():
    """theta = 0 puts all of the drift at the step's start: Newton's residual vanishes at the explicit predictor, so
    implicit_euler(theta=0) is Euler-Maruyama on the same path to round-off (and theta = 0 is accepted)."""
    problem = sk.SDE(lambda t, x, p: -x ** 3 + np.sin(t), lambda t, x, p: 0.4 * x, noise="diagonal")
    kw = dict(n_steps=16, n_paths=32, seed=5, backend="numpy")
    explicit = sk.solve(problem, 0.7, (0.5, 1.5), method="euler", **kw)
    theta0 = sk.solve(problem, 0.7, (0.5, 1.5), method="implicit_euler", theta=0.0, **kw)
    assert theta0.success
    np.testing.assert_allclose(_final(theta0), _final(explicit), rtol=1e-13, atol=1e-15)

"""sdekit.Stepper takes exactly the steps of sdekit.solve, and refuses what it cannot run."""

import math

import numpy as np
import pytest
import torch

import sdekit as sk
from sdekit import problems


def _loop(stepper, x0, t_span, n, path):
    """``n`` steps of ``stepper`` from ``x0`` on the increments of ``path`` (reverse when t1 < t0)."""
    t0, t1 = t_span
    h = (t1 - t0) / n
    inc = path.increments(n, reverse=t1 < t0)
    dw, area = inc if path.levy_area else (inc, None)
    x = np.array(np.broadcast_to(x0, (path.n_paths, x0.size)))
    for k in range(n):
        x = stepper.step(t0 + k * h, x, h, dw[k], area if area is None else area[k])
    return x


@pytest.mark.parametrize("method", ["euler", "milstein"])
@pytest.mark.parametrize("t_span", [(0.0, 1.0), (1.0, 0.0)], ids=["forward", "reverse"])
@pytest.mark.parametrize("make", [lambda: problems.diagonal_gbm(), lambda: problems.lamperti("sinh", "scalar")],
                         ids=["diagonal_gbm", "lamperti"])
def test_stepper_matches_solve(method, t_span, make):
    ex = make()
    n = 32
    path = sk.BrownianPath(seed=11, t_span=(min(t_span), max(t_span)), n_paths=5, noise_dim=ex.problem.noise_dim(ex.x0.size))
    stepper = sk.Stepper(ex.problem, method, ex.x0.size)
    x = _loop(stepper, ex.x0, t_span, n, path)
    sol = sk.solve(ex.problem, ex.x0, t_span, method=method, n_steps=n, n_paths=5, brownian=path, backend="numpy")
    np.testing.assert_allclose(x, sol.x[-1], rtol=1e-13, atol=1e-13)
    scheme_plan = stepper.scheme.plan(ex.problem, ex.x0.size)
    assert (stepper.n_drift, stepper.n_diffusion) == (scheme_plan.n_drift, scheme_plan.n_diffusion)
    assert sol.stats.n_drift_evals == stepper.n_drift * n * 5


def test_stepper_levy_area_scheme_matches_solve():
    ex = problems.ornstein_uhlenbeck()
    path = sk.BrownianPath(seed=3, t_span=(0.0, 1.0), n_paths=4, noise_dim=1, levy_area=True)
    x = _loop(sk.Stepper(ex.problem, "sra1", 1), ex.x0, (0.0, 1.0), 16, path)
    sol = sk.solve(ex.problem, ex.x0, (0.0, 1.0), method="sra1", n_steps=16, n_paths=4, brownian=path, backend="numpy")
    np.testing.assert_allclose(x, sol.x[-1], rtol=1e-13, atol=1e-13)


def test_torch_stepper_matches_numpy_stepper():
    ex = problems.diagonal_gbm()
    dim = ex.x0.size
    path = sk.BrownianPath(seed=5, t_span=(0.0, 1.0), n_paths=3, noise_dim=dim)
    on_numpy = sk.Stepper(ex.problem, "milstein", dim)
    problem_t = sk.SDE(lambda t, x, p: x * torch.as_tensor(ex.problem.params[0]),
                       lambda t, x, p: x * torch.as_tensor(ex.problem.params[1]), noise="diagonal")
    on_torch = sk.Stepper(problem_t, "milstein", dim, backend="torch")
    dw = path.increments(8)
    x_np = np.tile(ex.x0, (3, 1))
    x_t = torch.as_tensor(x_np)
    for k in range(8):
        x_np = on_numpy.step(0.125 * k, x_np, 0.125, dw[k])
        x_t = on_torch.step(0.125 * k, x_t, 0.125, torch.as_tensor(dw[k]))
    np.testing.assert_allclose(x_t.numpy(), x_np, rtol=1e-13)


def test_ode_stepper_takes_the_solve_steps():
    ode = sk.ODE(lambda t, x, p: -p[0] * x + np.sin(t), params=(0.7,))
    x0 = np.array([1.0, 2.0])
    stepper = sk.Stepper(ode, "rk4", 2)
    x = x0[None, :]
    for k in range(8):
        x = stepper.step(0.125 * k, x, 0.125)
    sol = sk.solve(ode, x0, (0.0, 1.0), method="rk4", n_steps=8, backend="numpy")
    np.testing.assert_allclose(x[0], sol.x[-1, 0], rtol=1e-14)
    assert (stepper.n_drift, stepper.n_diffusion) == (4, 0)


def test_stepper_errors():
    ou = problems.ornstein_uhlenbeck().problem
    with pytest.raises(ValueError, match="unknown backend 'jax' for Stepper"):
        sk.Stepper(ou, "euler", 1, backend="jax")
    with pytest.raises(ValueError, match="`dim` must be a positive integer"):
        sk.Stepper(ou, "euler", 0)
    with pytest.raises(ValueError, match="unknown method 'rk4' for an SDE"):
        sk.Stepper(ou, "rk4", 1)
    with pytest.raises(ValueError, match="dopri5 chooses its own step sizes"):
        sk.Stepper(sk.ODE(lambda t, x, p: -x), "dopri5", 1)
    stepper = sk.Stepper(ou, "sra1", 1)
    x, dw = np.ones((4, 1)), np.zeros((4, 1))
    with pytest.raises(ValueError, match="sra1 needs the Lévy area of each step: pass `levy_area`"):
        stepper.step(0.0, x, 0.1, dw)
    with pytest.raises(ValueError, match=r"`dw` has shape \(4, 2\); it must be \(4, 1\) for x of shape \(4, 1\)\.$"):
        stepper.step(0.0, x, 0.1, np.zeros((4, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="`dw` is required for an SDE"):
        stepper.step(0.0, x, 0.1)
    with pytest.raises(ValueError, match=r"`x` must have shape \(n, 1\)"):
        stepper.step(0.0, np.ones(4), 0.1, dw, dw)
    for h in (0.0, True, "0.1", math.inf):
        with pytest.raises(ValueError, match="`h` must be a non-zero finite number"):
            stepper.step(0.0, x, h, dw, dw)
    with pytest.raises(ValueError, match="`x` must be a float NumPy array on backend='numpy'"):
        stepper.step(0.0, torch.ones(4, 1), 0.1, dw, dw)
    bad = sk.Stepper(sk.SDE(lambda t, x, p: np.ones((3, 3)), lambda t, x, p: 0.1, noise="additive"), "euler", 1)
    with pytest.raises(ValueError, match=r"`drift` returned shape \(3, 3\)"):
        bad.step(0.0, x, 0.1, dw)


def test_stepper_takes_the_stabilized_and_theta_schemes_of_solve():
    """skrock's stages follow |h| * spectral_radius in Stepper as in solve; theta reaches the drift-implicit step."""
    ex = problems.ornstein_uhlenbeck()
    n, t_span = 8, (0.0, 1.0)
    path = sk.BrownianPath(seed=3, t_span=t_span, n_paths=4, noise_dim=1)
    for method, options in [("skrock", {"spectral_radius": 400.0}), ("implicit_euler", {"theta": 0.5})]:
        stepper = sk.Stepper(ex.problem, method, 1, **options)
        x = _loop(stepper, ex.x0, t_span, n, path)
        sol = sk.solve(ex.problem, ex.x0, t_span, method=method, n_steps=n, brownian=path, backend="numpy", **options)
        np.testing.assert_allclose(x, sol.x[-1], rtol=1e-13, atol=1e-13)
    assert sk.Stepper(ex.problem, "skrock", 1, spectral_radius=400.0).step(0.0, ex.x0[None], 0.125, np.zeros((1, 1))).shape == (1, 1)
    with pytest.raises(ValueError, match="spectral_radius"):
        sk.Stepper(ex.problem, "skrock", 1)
    with pytest.raises(ValueError, match="spectral_radius"):
        sk.Stepper(ex.problem, "euler", 1, spectral_radius=1.0)

"""The instability rule of the explicit fixed-step schemes (sdekit.schemes._stability): unstable paths are reported,
honest growth and noise-driven growth are not, on every backend alike."""

import math

import numpy as np
import pytest

import sdekit as sk
from sdekit.schemes._stability import GROWTH, real_stability_boundary, stability_boundary

BACKENDS = ["numba", "numpy", "torch"]


def _linear_sde(lam, sigma):
    return sk.SDE(lambda t, x, p: p[0] * x, lambda t, x, p: p[1] + 0.0 * x, noise="additive", params=(lam, sigma))


def _x(sol):
    return sol.x if isinstance(sol.x, np.ndarray) else sol.x.numpy()


def test_real_stability_boundaries_are_the_known_ones():
    # Hairer & Wanner II, IV.2 (Fig. 2.1): Euler and every 2-stage order-2 RK 2; classical RK4 2.785293563...
    assert real_stability_boundary([[0.0]], [1.0]) == pytest.approx(2.0, abs=1e-9)
    assert real_stability_boundary([[0, 0], [1, 0]], [0.5, 0.5]) == pytest.approx(2.0, abs=1e-9)
    rk4 = [[0, 0, 0, 0], [0.5, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 1, 0]]
    assert real_stability_boundary(rk4, [1 / 6, 1 / 3, 1 / 3, 1 / 6]) == pytest.approx(2.785293563, abs=1e-8)
    # the SRA1/SRIW1 drift: c = (0, 3/4), weights (1/3, 2/3), R(z) = 1 + z + z^2/2
    for method in ("sra1", "sriw1"):
        problem = _linear_sde(-1.0, 0.1) if method == "sra1" else sk.SDE(lambda t, x, p: -x, lambda t, x, p: x, noise="diagonal")
        assert stability_boundary(sk.get_scheme(method, problem).plan(problem, 1)) == pytest.approx(2.0, abs=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_euler_on_a_stiff_ou_is_reported_not_delivered(backend):
    # the case: dX = -500 X dt + 0.1 dW, h = 1/64: |1 + h lambda| = 6.8125, so the state passes GROWTH = 1e3
    # times its start at step ceil(ln 1e3 / ln 6.8125) = 4, where the secant gives h lambda = -7.8 < -2.
    problem = _linear_sde(-500.0, 0.1)
    sol = sk.solve(problem, 1.0, (0.0, 1.0), method="euler", n_steps=64, n_paths=8, seed=3, backend=backend)
    first = math.ceil(math.log(GROWTH) / math.log(500 / 64 - 1))
    assert sol.status == "failure" and sol.failed.all()
    np.testing.assert_array_equal(sol.failure_time, np.full(8, first / 64))
    assert "explicit scheme unstable" in sol.message and "implicit_euler" in sol.message
    x = _x(sol)
    assert np.isnan(x[first:]).all() and np.isfinite(x[:first]).all()
    # the opt-out delivers what the scheme computes: the divergence the rule reports
    raw = sk.solve(problem, 1.0, (0.0, 1.0), method="euler", n_steps=64, n_paths=8, seed=3, backend=backend,
                   detect_instability=False)
    assert raw.status == "success" and np.abs(_x(raw)[-1]).min() > 1e50
    np.testing.assert_array_equal(x[:first], _x(raw)[:first])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_steps", [1, 8, 64, 1024])
def test_honest_exponential_growth_is_never_flagged(backend, n_steps):
    # GBM dx = 50 x dt + 0.2 x dW over [0, 1]: e^50 ~ 5e21 of growth, at any step count
    gbm = sk.SDE(lambda t, x, p: 50.0 * x, lambda t, x, p: 0.2 * x, noise="diagonal")
    sol = sk.solve(gbm, 1.0, (0.0, 1.0), method="euler", n_steps=n_steps, n_paths=4, seed=5, backend=backend,
                   save_at=[1.0])
    assert sol.success
    dw = sol.brownian.increments(n_steps)[:, :, 0]
    exact_euler = np.prod(1.0 + 50.0 / n_steps + 0.2 * dw, axis=0)  # Euler's product, from the same increments
    np.testing.assert_allclose(_x(sol)[-1, :, 0], exact_euler, rtol=1e-10)
    ode = sk.ODE(lambda t, x, p: 50.0 * x)
    sol = sk.solve(ode, 1.0, (0.0, 1.0), method="rk4", n_steps=n_steps, backend=backend, save_at=[1.0])
    z = 50.0 / n_steps
    assert sol.success
    np.testing.assert_allclose(_x(sol)[-1, 0, 0], (1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24) ** n_steps, rtol=1e-10)


def _explicit(kind):
    for s in sk.list_schemes(kind):
        if s.adaptive or s.family is None or s.family.name == "stabilized":  # stages follow h rho (tests/test_stabilized.py)
            continue
        problem = _linear_sde(-1.0, 0.1) if kind == "sde" else sk.ODE(lambda t, x, p: -x)
        try:
            plan = sk.get_scheme(s.name, problem).plan(problem, 1)
        except ValueError:
            continue
        if stability_boundary(plan) > 0:
            yield s.name


@pytest.mark.parametrize("method", list(_explicit("sde")))
def test_every_explicit_sde_scheme_is_checked(method):
    # h lambda = -500/64 is left of every explicit scheme's interval (at most 2.79): flagged. h lambda = -100/64
    # is inside every one: a path that the noise grows from 1e-6 to O(0.1) passes the trigger and is not flagged.
    stiff = sk.solve(_linear_sde(-500.0, 0.1), 1.0, (0.0, 1.0), method=method, n_steps=64, n_paths=4, seed=1)
    assert stiff.failed.all() and "unstable" in stiff.message
    noisy = sk.solve(_linear_sde(-100.0, 1.0), 1e-6, (0.0, 1.0), method=method, n_steps=64, n_paths=64, seed=1)
    assert noisy.success and np.abs(noisy.x[-1]).max() > GROWTH * 1e-6


@pytest.mark.parametrize("method", list(_explicit("ode")))
def test_every_explicit_ode_scheme_is_checked(method):
    beta = stability_boundary(sk.get_scheme(method, sk.ODE(lambda t, x, p: -x)).plan(sk.ODE(lambda t, x, p: -x), 1))
    n = 400  # |R(-1.05 beta)| >= 1.1 for these schemes: past GROWTH = 1e3 within 73 steps
    for z, unstable in ((-1.05 * beta, True), (-0.95 * beta, False)):
        ode = sk.ODE(lambda t, x, p: p[0] * x, params=(z * n,))
        sol = sk.solve(ode, 1.0, (0.0, 1.0), method=method, n_steps=n)
        assert sol.failed.all() == unstable, (method, z)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reverse_time_is_judged_by_h_lambda(backend):
    # integrating t from 1 to 0 (h < 0), a drift of +500 x contracts: h lambda = -7.8 is unstable for Euler
    sol = sk.solve(_linear_sde(500.0, 0.1), 1.0, (1.0, 0.0), method="euler", n_steps=64, n_paths=2, seed=2,
                   backend=backend)
    assert sol.failed.all()
    np.testing.assert_allclose(sol.failure_time, 1.0 - 4 / 64)


def test_backends_agree_on_which_paths_fail_and_when():
    # Euler on dx = -10 x^3 dt + 0.5 dW, h = 1/32, from x0 in [0.1, 3]: the large starts leave Euler's stability
    # region (secant slope 10 (x_k^2 + x_k x_{k+1} + x_{k+1}^2) past 64), the small ones do not
    cubic = sk.SDE(lambda t, x, p: -10.0 * x**3, lambda t, x, p: 0.5 + 0.0 * x, noise="additive")
    x0 = np.linspace(0.1, 3.0, 40)[:, None]
    sols = {b: sk.solve(cubic, x0, (0.0, 1.0), method="euler", n_steps=32, seed=7, backend=b) for b in BACKENDS}
    ref = sols["numpy"]
    assert 0 < ref.failed.sum() < 40
    for b in ("numba", "torch"):
        np.testing.assert_array_equal(sols[b].failed, ref.failed)
        np.testing.assert_array_equal(sols[b].failure_time, ref.failure_time)
        np.testing.assert_allclose(_x(sols[b]), _x(ref), rtol=1e-10, atol=1e-14)


def test_non_finite_states_keep_their_own_reason():
    blow = sk.ODE(lambda t, x, p: np.where(t > 0.5, np.inf, -x))
    sol = sk.solve(blow, 1.0, (0.0, 1.0), method="euler", n_steps=8, backend="numpy")
    assert sol.failed.all() and "non-finite state" in sol.message and "unstable" not in sol.message


def test_detect_instability_must_be_a_bool():
    with pytest.raises(ValueError, match="detect_instability"):
        sk.solve(_linear_sde(-1.0, 0.1), 1.0, (0.0, 1.0), method="euler", n_steps=4, seed=0, detect_instability=1)


def test_torch_block_replay_finds_the_same_failures(monkeypatch):
    # off the CPU the torch backend accumulates the trigger over a block and replays it; run that path on the CPU
    from sdekit.backends import torch_backend

    monkeypatch.setattr(torch_backend, "PER_STEP_DEVICES", ())
    cubic = sk.SDE(lambda t, x, p: -10.0 * x**3, lambda t, x, p: 0.5 + 0.0 * x, noise="additive")
    x0 = np.linspace(0.0, 3.0, 40)[:, None]  # x0 = 0: the scale is set by the first step (rule step 1)
    kw = dict(method="euler", n_steps=32, seed=7, save_at=[0.5, 1.0])
    ref = sk.solve(cubic, x0, (0.0, 1.0), backend="numpy", **kw)
    replayed = sk.solve(cubic, x0, (0.0, 1.0), backend="torch", **kw)
    assert 0 < ref.failed.sum() < 40
    np.testing.assert_array_equal(replayed.failed, ref.failed)
    np.testing.assert_array_equal(replayed.failure_time, ref.failure_time)
    np.testing.assert_allclose(_x(replayed), _x(ref), rtol=1e-10, atol=1e-14)

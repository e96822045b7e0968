"""solve(): saving, reverse time, statistics, non-finite paths, memory."""

import os
import subprocess
import sys

import numpy as np
import pytest

import sdekit as sk
from sdekit import problems

OU = problems.ornstein_uhlenbeck().problem


def test_solution_record_and_stats():
    sol = sk.solve(OU, [2.0], (0.0, 1.0), method="sriw1", n_steps=16, n_paths=10, seed=1)
    assert sol.x.shape == (17, 10, 1) and sol.t.shape == (17,)
    np.testing.assert_allclose(sol.t, np.linspace(0, 1, 17))
    assert sol.success and not sol.failed.any() and np.isnan(sol.failure_time).all()
    assert sol.stats.n_steps == 160 and sol.stats.n_drift_evals == 2 * 160 and sol.stats.n_diffusion_evals == 4 * 160
    assert sol.brownian.seed == 1 and sol.brownian.levy_area
    np.testing.assert_array_equal(sol.x[0], 2.0)


def test_save_at_keeps_only_those_states_and_matches_full_output():
    full = sk.solve(OU, 2.0, (0.0, 1.0), method="euler", n_steps=8, n_paths=50, seed=2)
    part = sk.solve(OU, 2.0, (0.0, 1.0), method="euler", n_steps=8, n_paths=50, seed=2, save_at=[0.25, 1.0])
    assert part.x.shape == (2, 50, 1)
    np.testing.assert_array_equal(part.x, full.x[[2, 8]])


def test_dt_is_equivalent_to_n_steps():
    a = sk.solve(OU, 2.0, (0.0, 1.0), method="euler", dt=0.125, n_paths=5, seed=3)
    b = sk.solve(OU, 2.0, (0.0, 1.0), method="euler", n_steps=8, n_paths=5, seed=3)
    np.testing.assert_array_equal(a.x, b.x)


def test_reverse_time_solve_runs_the_path_backwards():
    """Integrating dX = sigma dW from 1 down to 0 accumulates -(W(1) - W(0)) ... exactly W(0) - W(1)."""
    bm_sde = sk.SDE(lambda t, x, p: 0.0 * x, lambda t, x, p: 1.0, noise="additive")
    sol = sk.solve(bm_sde, 0.0, (1.0, 0.0), method="euler", n_steps=8, n_paths=4, seed=9)
    w = sol.brownian.on_grid(8)
    np.testing.assert_allclose(sol.x[-1], w[0] - w[-1], atol=1e-14)
    np.testing.assert_allclose(sol.t, np.linspace(1, 0, 9))


def test_brownian_path_can_be_reused_across_step_counts():
    bm = sk.BrownianPath.for_steps(5, (0.0, 1.0), 3, n_paths=20, levy_area=True)
    a = sk.solve(OU, 2.0, (0.0, 1.0), method="euler", n_steps=3, brownian=bm, save_at=[1.0])
    b = sk.solve(OU, 2.0, (0.0, 1.0), method="sra1", n_steps=96, brownian=bm, save_at=[1.0])
    assert a.brownian is bm and b.brownian is bm
    assert np.abs(a.x - b.x).max() < 0.2


def test_non_finite_paths_are_reported_and_others_kept():
    blow = sk.SDE(lambda t, x, p: x * x, lambda t, x, p: 0.0 * x, noise="diagonal")
    x0 = np.array([[0.5], [2.0], [0.25]])  # exact: 1 / (1/x0 - t); x0 = 2 blows up at t = 0.5
    for backend in ("numba", "numpy"):
        sol = sk.solve(blow, x0, (0.0, 1.0), method="euler", n_steps=1000, n_paths=3, seed=0, backend=backend)
        assert sol.status == "failure" and "1 of 3 paths failed" in sol.message
        np.testing.assert_array_equal(sol.failed, [False, True, False])
        assert 0.5 < sol.failure_time[1] < 1.0
        assert np.isfinite(sol.x[:, [0, 2]]).all()
        k = int(np.searchsorted(sol.t, sol.failure_time[1]))
        assert np.isfinite(sol.x[: k, 1]).all() and np.isnan(sol.x[k:, 1]).all()
        np.testing.assert_allclose(sol.x[-1, 0, 0], 1 / (1 / 0.5 - 1), rtol=1e-2)


def test_adaptive_failure_is_reported():
    blow = sk.ODE(lambda t, x, p: x * x)
    sol = sk.solve(blow, np.array([[0.5], [2.0]]), (0.0, 1.0), method="dopri5", n_paths=2)
    np.testing.assert_array_equal(sol.failed, [False, True])
    assert abs(sol.failure_time[1] - 0.5) < 1e-3
    np.testing.assert_allclose(sol.x[-1, 0, 0], 1.0, rtol=1e-5)


def test_math_functions_written_once_run_on_both_backends():
    from sdekit import ops

    p = sk.SDE(lambda t, x, q: q[0] * ops.sin(x) - x**3, lambda t, x, q: q[1] * ops.exp(-x * x), noise="diagonal",
               params=(1.0, 0.3))
    a = sk.solve(p, [0.1, 0.2], (0, 1), method="milstein", n_steps=16, n_paths=20, seed=1, backend="numpy")
    b = sk.solve(p, [0.1, 0.2], (0, 1), method="milstein", n_steps=16, n_paths=20, seed=1, backend="numba")
    np.testing.assert_allclose(a.x, b.x, rtol=1e-12)


def test_param_values_change_without_new_problem_semantics():
    mk = lambda mu: sk.SDE(OU.drift, OU.diffusion, noise="additive", params=(1.0, mu, 0.3))  # noqa: E731
    a = sk.solve(mk(0.5), 2.0, (0, 1), method="euler", n_steps=8, n_paths=3, seed=1)
    b = sk.solve(mk(-0.5), 2.0, (0, 1), method="euler", n_steps=8, n_paths=3, seed=1)
    # Same path, drift shifted by theta * (mu_b - mu_a): the difference is deterministic.
    d = (b.x - a.x)[:, :, 0]
    np.testing.assert_allclose(d, d[:, :1] * np.ones((1, 3)), atol=1e-12)
    assert abs(d[-1, 0] - (-1.0) * (1 - (1 - 1 / 8) ** 8)) < 1e-12


_MEMORY = """
import resource, sdekit as sk
ou = sk.SDE(lambda t, x, p: p[0] * (p[1] - x), lambda t, x, p: p[2], noise="additive", params=(1.0, 0.5, 0.3))
sk.solve(ou, 2.0, (0, 1), method="euler", n_steps=100, n_paths=10_000, seed=1, save_at=[1.0])  # load kernels
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
s = sk.solve(ou, 2.0, (0, 1), method="euler", n_steps=100, n_paths=1_000_000, seed=1, save_at=[1.0])
assert s.x.shape == (1, 1_000_000, 1) and s.success
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_million_paths_with_save_at_stay_under_300_mb():
    """10^6 paths x 100 steps with save_at=[T]: the solve adds < 300 MB to the process's peak.

    Measured as the growth of the peak resident set over a process that has
    already loaded NumPy, Numba and the compiled kernels (about 200 MB that
    any solve pays once, whatever its size). Storing every step (or every
    step's Brownian increments) would need 808 MB, so 100 steps still tell the
    two apart.
    """
    r = subprocess.run([sys.executable, "-c", _MEMORY], capture_output=True, text=True, check=True,
                       env=dict(os.environ))
    before_kb, after_kb = (int(v) for v in r.stdout.strip().splitlines()[-1].split())
    assert (after_kb - before_kb) < 300 * 1024, f"the solve added {(after_kb - before_kb) / 1024:.0f} MB"


@pytest.mark.parametrize("method", ["dopri5", "rodas4"])
@pytest.mark.parametrize("backend", ["numpy", "numba", "torch"])
def test_adaptive_save_points_off_the_start_hold_the_solution_there(method, backend):
    """save_at without t0, first point inside the first step: x' = -(x - cos t) - sin t from x(t0) = 2 has
    x(t) = cos t + (2 - cos t0) e^(t0 - t) (t0 = 0.25, forward and backward in time); every saved state within the
    tolerance."""
    rhs = ((lambda t, x, p: -(x - np.cos(t)) - np.sin(t)) if backend != "torch" else
           (lambda t, x, p: -(x - float(np.cos(t))) - float(np.sin(t))))
    t0, rtol = 0.25, 1e-8
    for t1, save_at in ((1.25, [0.2500001, 0.5, 1.0, 1.25]), (-0.75, [0.2499999, 0.0, -0.75])):
        sol = sk.solve(sk.ODE(rhs), 2.0, (t0, t1), method=method, rtol=rtol, atol=rtol, save_at=save_at, backend=backend)
        exact = np.cos(save_at) + (2.0 - np.cos(t0)) * np.exp(t0 - np.array(save_at))
        np.testing.assert_allclose(np.asarray(sol.x)[:, 0, 0], exact, rtol=20 * rtol, atol=20 * rtol)


def _hairer_initial_step(f, t0, y0, direction, rtol, atol, order):
    """Hairer, Nørsett & Wanner (1993), Solving ODEs I, §II.4 ("starting step size"), for an RMS norm scaled by
    atol + rtol |y0| (SciPy's select_initial_step computes the same)."""
    def rms(v):
        return float(np.sqrt(np.mean(v * v)))

    scale = atol + rtol * np.abs(y0)
    f0 = f(t0, y0)
    d0, d1 = rms(y0 / scale), rms(f0 / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    d2 = rms((f(t0 + direction * h0, y0 + direction * h0 * f0) - f0) / scale) / h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
    return min(100.0 * h0, h1)


@pytest.mark.parametrize("method", ["dopri5", "rodas4", "rodas5"])
@pytest.mark.parametrize("backend", ["numpy", "numba", "torch"])
def test_the_first_step_is_hairers_starting_step(method, backend):
    """With max_steps=1 the solve stops after its first step, at t0 + h: h is Hairer's starting step (order-4
    exponent 1/5 for all three), forwards and backwards; the first trial is accepted at rtol 1e-3."""
    def rhs(t, x, p):
        return -3.0 * (x - np.cos(t)) - np.sin(t)

    def rhs_torch(t, x, p):
        return -3.0 * (x - float(np.cos(t))) - float(np.sin(t))

    y0, rtol, atol = np.array([2.0, -1.0]), 1e-3, 1e-6
    for t0, t1 in ((0.25, 5.0), (0.25, -4.0)):
        direction = 1.0 if t1 > t0 else -1.0
        sol = sk.solve(sk.ODE(rhs_torch if backend == "torch" else rhs), y0, (t0, t1), method=method, rtol=rtol,
                       atol=atol, max_steps=1, backend=backend)
        h = _hairer_initial_step(lambda t, y: rhs(t, y[None, :], None)[0], t0, y0, direction, rtol, atol, 4)
        assert (sol.stats.n_accepted, sol.stats.n_rejected) == (1, 0)
        assert float(sol.failure_time[0]) == pytest.approx(t0 + direction * h, rel=1e-12)

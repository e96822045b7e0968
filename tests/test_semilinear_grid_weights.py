"""The exponential integrators' weights computed once per grid (sdekit.semilinear.grid_weights) against the
per-step computation they replace: the same orders, the same weights to 1e-12, on every diffusion grid and on
uneven, tiny and large steps, for every method; and the cache hands back the same read-only arrays."""

import math

import numpy as np
import pytest

from diffusion import VESDE, VPSDE, SubVPSDE
from diffusion.grids import GRIDS, time_grid
from sdekit.semilinear import AB_ABS_SUM, ADAMS_METHODS, MAX_AMPLIFICATION, ORDERS, exponential_weights, grid_weights, step_orders


# --------------------------------------------------------------------------- the per-step reference
def per_step_weights(lam_nodes, lam_next):
    """One step's weights as sdekit computed them before grid_weights: the moments by their series (|h| < 0.5)
    or the expm1 recursion, then the transposed Vandermonde system, one step at a time in Python."""
    nodes = np.asarray(lam_nodes, dtype=np.float64)
    h, q = float(lam_next - nodes[0]), nodes.size
    M = np.empty(q)
    if abs(h) < 0.5:
        for m in range(q):
            M[m] = h ** (m + 1) * math.factorial(m) * sum((-h) ** j / math.factorial(j + m + 1) for j in range(25))
    else:
        M[0] = -math.expm1(-h)
        for m in range(1, q):
            M[m] = h**m - m * M[m - 1]
    return np.linalg.solve(np.vander(nodes - nodes[0], q, increasing=True).T, M)


def per_step_orders_and_weights(method, lam):
    """The step-by-step order rule (lower q while the amplification exceeds its bound) with per-step weights."""
    q_max, n = ORDERS[method], lam.size - 1
    orders, weights = [], np.zeros((n, q_max))
    for k in range(n):
        q = 2 if (k == 0 and method == "exp_ab3") else min(k + 1, q_max)
        while k > 0 and q > 1:
            w = per_step_weights(lam[k : k - q if k - q >= 0 else None : -1], lam[k + 1])
            with np.errstate(divide="ignore"):  # weights summing to 0 amplify without bound
                if np.abs(w).sum() / abs(w.sum()) <= MAX_AMPLIFICATION * AB_ABS_SUM[q]:
                    break
            q -= 1
        orders.append(q)
        weights[k, :q] = per_step_weights(lam[k : k - q if k - q >= 0 else None : -1], lam[k + 1])
    return np.array(orders), weights


def clock_grids():
    """Clock values of every grid kind of the three diffusion SDEs, in both clock directions (data and noise
    prediction), from 1 to 200 steps; and uneven random grids whose steps span 1e-9 to 40."""
    grids = []
    for sde in (VPSDE(), SubVPSDE(), VESDE()):
        for kind in GRIDS:
            for n in (1, 2, 3, 5, 10, 50, 200):
                lam = np.asarray(sde.log_snr(time_grid(sde, n, kind)), dtype=np.float64)
                grids += [(f"{type(sde).__name__}-{kind}-{n}", lam), (f"{type(sde).__name__}-{kind}-{n}-eps", -lam)]
    rng = np.random.default_rng(14)
    for scale in (1e-9, 1e-6, 1e-3, 0.3, 0.49, 0.51, 2.0, 40.0):
        steps = scale * rng.uniform(0.05, 3.0, size=30)  # ratios of neighbouring steps up to 60
        grids += [(f"uneven-{scale:g}", -1.5 + np.concatenate([[0.0], np.cumsum(steps)])),
                  (f"uneven-{scale:g}-down", 4.0 - np.concatenate([[0.0], np.cumsum(steps)]))]
    mixed = np.concatenate([[0.0], np.cumsum([1e-8, 1e-8, 5.0, 1e-4, 0.5, 0.49, 0.51, 30.0, 1e-6, 2.0])])
    grids.append(("tiny-and-large", mixed))
    return grids


GRIDS_UNDER_TEST = clock_grids()


@pytest.mark.parametrize("method", ADAMS_METHODS)
def test_grid_weights_equal_the_per_step_ones(method):
    for name, lam in GRIDS_UNDER_TEST:
        clock_mid = 0.5 * (lam[0] + lam[1]) if method == "exp_ab3" else None
        got = grid_weights(method, lam, clock_mid)
        orders, weights = per_step_orders_and_weights(method, lam)
        if method == "exp_ab3":
            weights[0, :2] = per_step_weights([lam[0], clock_mid], lam[1])
            weights[0, 2:] = 0.0
            assert got.midpoint_weight == pytest.approx(per_step_weights([lam[0]], clock_mid)[0], rel=1e-12, abs=0)
        assert got.orders.tolist() == orders.tolist(), name
        assert got.orders.tolist() == step_orders(method, lam).tolist(), name
        # relative to each step's largest weight (a weight of a near-cancelling row can be tiny)
        scale = np.abs(weights).max(axis=1, keepdims=True)
        assert np.all(np.abs(got.weights - weights) <= 1e-12 * scale), (name, np.max(np.abs(got.weights - weights) / scale))


def test_exponential_weights_equal_the_per_step_ones():
    for nodes, lam_next in (([0.3], 0.3 + 1e-9), ([1.0, 0.6], 1.4), ([1.0, 0.6, 0.1], 1.7), ([0.0, 1e-7, 3e-7], -2e-7),
                            ([5.0, 4.0, 2.5], 45.0), ([0.0, -0.7, -1.2], 0.49), ([0.0, -0.7, -1.2], 0.51)):
        np.testing.assert_allclose(exponential_weights(nodes, lam_next), per_step_weights(nodes, lam_next),
                                   rtol=1e-12, atol=0)


def test_grid_weights_are_cached_read_only():
    lam = np.asarray(VPSDE().log_snr(time_grid(VPSDE(), 20, "logsnr")), dtype=np.float64)
    first = grid_weights("exp_ab2", lam)
    assert grid_weights("exp_ab2", lam.copy()) is first  # keyed on the values, not on the array
    assert grid_weights("exp_ab3_ramp", lam) is not first
    with pytest.raises(ValueError, match="read-only"):
        first.weights[0, 0] = 1.0


def test_exp_ab3_needs_the_midpoint_clock():
    with pytest.raises(ValueError, match="clock_mid"):
        grid_weights("exp_ab3", np.linspace(0.0, 1.0, 5))


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_overflowing_sum_is_not_a_failure(backend):
    """The steps check finiteness by one sum; a sum that overflows while every entry is finite fails no path."""
    import sdekit

    x0 = np.array([[1.5e308, 1.5e308], [1.0, 2.0]])
    if backend == "torch":
        import torch

        x0 = torch.as_tensor(x0)
    constant = sdekit.SemilinearODE(lambda t, p: 0.0 * t, lambda t, p: t, lambda t, x, p: 0.0 * x)
    still = sdekit.ODE(lambda t, x, p: 0.0 * x)
    for problem, method in ((constant, "exp_ab2"), (still, "euler")):
        sol = sdekit.solve(problem, x0, (0.0, 1.0), method=method, n_steps=4, backend=backend)
        assert sol.success, (method, sol.message)
        np.testing.assert_array_equal(np.asarray(sol.x[-1]), np.asarray(x0))


def test_scalar_only_and_array_misbehaving_clocks_give_the_same_solution():
    """The log factor and clock are evaluated on the whole grid at once only where that agrees with single-time
    calls; a function of one time (math.*, a branch on t) or one that is wrong on arrays (here: the maximum of
    the times) is called per time, and every variant gives the same solution."""
    import sdekit

    def nonlinear(t, x, p):
        return np.cos(x) + t

    x0 = np.array([[0.3], [-1.2]])
    reference = sdekit.solve(sdekit.SemilinearODE(lambda t, p: -2.0 * t, lambda t, p: 3.0 * t, nonlinear), x0,
                             (0.0, 1.0), method="exp_ab3", n_steps=9).x
    variants = [
        (lambda t, p: -2.0 * t, lambda t, p: 3.0 * t if t < 5.0 else 3.0 * t),  # branch: ValueError on arrays
        (lambda t, p: math.log(math.exp(-2.0 * t)), lambda t, p: 3.0 * t),  # math.*: TypeError on arrays
        (lambda t, p: -2.0 * t, lambda t, p: 3.0 * (np.max(t) + 0.0 * t)),  # arrays: every value the last time's
    ]
    for log_factor, clock in variants:
        sol = sdekit.solve(sdekit.SemilinearODE(log_factor, clock, nonlinear), x0, (0.0, 1.0), method="exp_ab3",
                           n_steps=9)
        np.testing.assert_allclose(sol.x, reference, rtol=1e-13, atol=1e-15)

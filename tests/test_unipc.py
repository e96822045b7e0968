"""The published diffusion samplers in sdekit's semilinear form: the standard DPM-Solver++(2M) (``dpmpp_2m``) and
UniPC with its corrector (``unipc_bh1``, ``unipc_bh2``; order-3 predictor: ``unipc3_bh1``, ``unipc3_bh2``), and
diffusers' lower-order final steps.

Truth: the probability-flow ODE of Gaussian data has a closed-form flow (fitted orders), and diffusers'
``DPMSolverMultistepScheduler`` / ``UniPCMultistepScheduler`` run on the same exact float64 noise levels with an
exact Gaussian model (agreement to the schedulers' round-off).
"""

import math
import warnings

import numpy as np
import pytest
import torch

import sdekit
from diffusion import VPSDE, sample
from diffusion.grids import time_grid
from diffusion.options import Exponential
from diffusion.oracle import GaussianMixture
from diffusion.reverse import probability_flow_semilinear
from sdekit import ops
from sdekit.schemes import SCHEMES
from sdekit.semilinear import ORDERS, exponential_weights, grid_weights, lowered_final_orders, step_orders

SDE = VPSDE()
MU, S0 = np.array([1.5, -0.5]), 0.4  # data N(MU, S0^2 I)
SCORE = GaussianMixture([1.0], MU[None], [S0**2]).score_fn(SDE)
X_T = np.random.default_rng(18).standard_normal((4, 2))
METHODS = ("dpmpp_2m", "unipc_bh1", "unipc_bh2", "unipc3_bh1", "unipc3_bh2")


def alpha_sigma(t):
    return float(SDE.alpha(t)), float(SDE.sigma(t))


def exact_flow(t, T):
    """PF-ODE flow of N(MU, S0^2 I) data: x_t = alpha_t MU + (std_t / std_T) (x_T - alpha_T MU), std^2 = alpha^2 S0^2 + sigma^2."""
    (a_t, s_t), (a_T, s_T) = alpha_sigma(t), alpha_sigma(T)
    return a_t * MU + np.hypot(a_t * S0, s_t) / np.hypot(a_T * S0, s_T) * (X_T - a_T * MU)


def ours(method, times, prediction, lower_order_final=False, backend="numpy"):
    """(state at times[-1], evaluations per path) of sdekit's ``method`` on the semilinear PF-ODE."""
    x = X_T if backend == "numpy" else torch.as_tensor(X_T)
    sol = sdekit.solve(probability_flow_semilinear(SCORE, prediction), x, (times[0], times[-1]), method=method,
                       t_grid=times, save_at=[times[-1]], backend=backend, lower_order_final=lower_order_final)
    return np.asarray(sol.x[-1]), sol.stats.n_drift_evals / sol.stats.n_paths


# --------------------------------------------------------------------------- (a) orders on the exact flow
@pytest.mark.parametrize("prediction", ["x0", "eps"])
@pytest.mark.parametrize("method,order", [("dpmpp_2m", 2), ("unipc_bh1", 3), ("unipc_bh2", 3), ("unipc3_bh1", 4),
                                          ("unipc3_bh2", 4)])
def test_fitted_order_on_the_exact_gaussian_flow(method, order, prediction):
    """Max error at eps on the log-SNR grid falls like n^-p: least-squares slope over n = 40, 80, 160 within 0.15
    of p. UniPC is order 3, not 2: UniC raises UniP-p's order by one (Zhao et al. 2023, Thm. 3.3), and the
    uncorrected last step's local error O(h^3) keeps the global O(h^3) (observed slopes 2.9-3.1; 2M: 1.98-2.0).
    UniPC-3 (UniP-3 + UniC) shows order 4 here, its start's O(h^3) errors being weighted by alpha_T ~ 7e-3 at
    high noise (see test_unipc3_start_caps_the_order_at_three_in_general): n = 80, 160, 320, where the x0 form's
    slopes have settled (per doubling 3.3, 3.8, 3.9 from n = 40; fitted 3.8 over 80-320; the eps form 4.1)."""
    steps = np.array([80, 160, 320] if method.startswith("unipc3") else [40, 80, 160])
    errors = []
    for n in steps:
        times = time_grid(SDE, int(n), "logsnr")
        errors.append(np.abs(ours(method, times, prediction)[0] - exact_flow(times[-1], times[0])).max())
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(slope - order) < (0.2 if order == 4 else 0.15), (method, prediction, slope, errors)


def test_unipc3_start_caps_the_order_at_three_in_general():
    """The declared order of ``unipc3_*`` is 3: their start, diffusers' ramp (orders 1, 2, then 3), corrects the
    first step with UniC-1 (``rho = 1/2``), a local error O(h^3) that no later step removes. On
    ``x' = -x + cos t`` (A = -t, lambda = t, D = cos t; exact ``(cos t + sin t) / 2``) over [0, 2], where nothing
    damps it, the slope per doubling falls 3.8, 3.7, 3.5, 3.4 from n = 10, then 3.2 (160-640) and 3.05 (640-2560):
    fitted over n = 320, 640, 1280 within 0.2 of 3 (observed 3.09), clearly below 4."""
    mild = sdekit.SemilinearODE(lambda t, p: -t, lambda t, p: t, lambda t, x, p: ops.cos(t) + 0.0 * x)
    exact = 0.5 * (math.cos(2.0) + math.sin(2.0))
    steps = np.array([320, 640, 1280])
    for method in ("unipc3_bh1", "unipc3_bh2"):
        errors = [abs(float(sdekit.solve(mild, 0.5, (0.0, 2.0), method=method, n_steps=int(n), save_at=[2.0],
                                         backend="numpy").x[-1, 0, 0]) - exact) for n in steps]
        slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
        assert abs(slope - 3.0) < 0.2, (method, slope, errors)
        assert SCHEMES[("semilinear", method)].strong_order["ode"] == 3.0


# --------------------------------------------------------------------------- (b) agreement with diffusers
def diffusers_run(method, times, prediction, lower_order_final):
    """diffusers' scheduler for ``method`` on the noise levels sigma_t / alpha_t of ``times`` (float64, set after
    set_timesteps), stepping an exact Gaussian model: x0 for the data-prediction form, eps for the noise one."""
    diffusers = pytest.importorskip("diffusers")
    model_type = "sample" if prediction == "x0" else "epsilon"
    with warnings.catch_warnings():  # the schedulers' own deprecation notices (algorithm_type "dpmsolver", numpy 2)
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
        scheduler = make_scheduler(diffusers, method, prediction, model_type, lower_order_final)
        n = len(times) - 1
        scheduler.set_timesteps(n)
    scheduler.timesteps = torch.arange(n, 0, -1)  # labels only: the model below is told the time itself
    a, s = np.array([alpha_sigma(t) for t in times]).T
    scheduler.sigmas = torch.as_tensor(s / a, dtype=torch.float64)
    x = torch.as_tensor(X_T.copy())
    for k, label in enumerate(scheduler.timesteps):
        xk = x.numpy()
        x0 = MU + a[k] * S0**2 * (xk - a[k] * MU) / (a[k] ** 2 * S0**2 + s[k] ** 2)  # Tweedie mean, exact
        out = x0 if prediction == "x0" else (xk - a[k] * x0) / s[k]
        x = scheduler.step(torch.as_tensor(out), label, x).prev_sample
    return x.numpy()


def make_scheduler(diffusers, method, prediction, model_type, lower_order_final):
    """DPMSolverMultistepScheduler (2M, midpoint) or UniPCMultistepScheduler (order 2 or, ``unipc3_*``, 3; bh1/bh2),
    ending at the last given noise level (final_sigmas_type="sigma_min"), with ``lower_order_final`` as given."""
    if method == "dpmpp_2m":
        return diffusers.DPMSolverMultistepScheduler(
            algorithm_type="dpmsolver++" if prediction == "x0" else "dpmsolver", solver_order=2, solver_type="midpoint",
            prediction_type=model_type, final_sigmas_type="sigma_min", lower_order_final=lower_order_final,
            euler_at_final=False)
    return diffusers.UniPCMultistepScheduler(
        solver_order=3 if method.startswith("unipc3") else 2, solver_type=method[-3:], predict_x0=prediction == "x0",
        prediction_type=model_type, final_sigmas_type="sigma_min", lower_order_final=lower_order_final)


# DPMSolverMultistepScheduler.step rounds the state to float32 on every step (its hard-coded upcast): n roundings of
# relative size 2^-24 (6e-8), carried by the steps' weights (observed up to 8e-7 for |x| ~ 2); UniPC's scheduler
# stays in float64, where the two differ by the phi-function recursion's cancellation (~1e-16 / h^2, observed 3e-13;
# order 3, whose recursion goes one step further: observed 1e-12)
TOLERANCE = {"dpmpp_2m": 1e-5, "unipc_bh1": 1e-11, "unipc_bh2": 1e-11, "unipc3_bh1": 1e-11, "unipc3_bh2": 1e-11}
# the neighbouring variant, which must be far outside the tolerance (the test tells the updates apart)
OTHER = {"dpmpp_2m": "exp_ab2", "unipc_bh1": "unipc_bh2", "unipc_bh2": "unipc_bh1", "unipc3_bh1": "unipc3_bh2",
         "unipc3_bh2": "unipc3_bh1"}


@pytest.mark.parametrize("lower_order_final", [False, True])
@pytest.mark.parametrize("prediction", ["x0", "eps"])
@pytest.mark.parametrize("method", METHODS)
def test_agrees_with_the_diffusers_schedulers(method, prediction, lower_order_final):
    """6 and 20 steps (the lower-order-final rule differs below and above 15 steps). With diffusers' final steps
    (``lower_order_final=True``) on the uniform-in-t grid, where they are what keeps the long last log-SNR step
    stable; without them on the log-SNR and Karras grids, where sdekit's amplification safeguard lowers no step
    (asserted), so the published updates run unchanged."""
    for n, kind in ((6, "uniform"), (20, "uniform")) if lower_order_final else ((6, "logsnr"), (20, "karras")):
        times = time_grid(SDE, n, kind)
        if not lower_order_final:
            clock = np.asarray(SDE.log_snr(times), dtype=np.float64) * (1.0 if prediction == "x0" else -1.0)
            assert step_orders(method, clock).tolist() == np.minimum(np.arange(n) + 1, ORDERS[method]).tolist()
        theirs = diffusers_run(method, times, prediction, lower_order_final)
        x, nfe = ours(method, times, prediction, lower_order_final)
        assert nfe == n
        assert np.abs(x - theirs).max() < TOLERANCE[method], (n, np.abs(x - theirs).max())
        other = ours(OTHER[method], times, prediction, lower_order_final)[0]
        assert np.abs(other - theirs).max() > 10 * TOLERANCE[method], n


def test_lower_order_final_follows_each_scheduler_rule():
    """DPMSolverMultistep: below 15 steps the last step is first order and the one before at most second;
    UniPCMultistep: step k of n at most n - k points, in every run. A first step is never changed."""
    for n in (2, 6, 14):
        assert lowered_final_orders("dpmpp_2m", np.minimum(np.arange(n) + 1, 2)).tolist() == [1] + [2] * (n - 2) + [1]
        assert lowered_final_orders("exp_ab3", np.array([2] + [3] * (n - 1)))[-2:].tolist() == [2, 1]
    for n in (15, 40):
        orders = np.minimum(np.arange(n) + 1, 2)
        assert lowered_final_orders("dpmpp_2m", orders).tolist() == orders.tolist()
        assert lowered_final_orders("unipc_bh2", orders).tolist() == [1] + [2] * (n - 2) + [1]
    assert lowered_final_orders("unipc_bh1", np.array([1])).tolist() == [1]
    lam = np.asarray(SDE.log_snr(time_grid(SDE, 20, "logsnr")), dtype=np.float64)
    plain, lowered = grid_weights("unipc_bh2", lam), grid_weights("unipc_bh2", lam, lower_order_final=True)
    assert plain.orders[-1] == 2 and lowered.orders[-1] == 1
    assert lowered.weights[-1, 1] == 0.0 and lowered.corrector.shape == (19, 3)
    # UniPC-3: the ramp 1, 2, 3 (diffusers' lower_order_nums), and with lower_order_final the last two steps 2, 1
    assert grid_weights("unipc3_bh1", lam).orders.tolist() == [1, 2] + [3] * 18
    assert grid_weights("unipc3_bh2", lam, lower_order_final=True).orders.tolist() == [1, 2] + [3] * 16 + [2, 1]
    assert lowered_final_orders("unipc3_bh2", np.array([1, 2])).tolist() == [1, 1]


def test_unipc3_order_three_steps_are_the_exponential_adams_steps():
    """UniP-3's and UniC-2/3's order conditions determine the weights B rho / r_j (B cancels), so those steps are the
    exponential Adams-Bashforth (3 points) and Adams-Moulton (3 and 4 points) steps, the same for bh1 and bh2;
    bh1 and bh2 differ only in the B-dependent UniP-2 and UniC-1 (rho = 1/2) steps of the start."""
    lam = np.asarray(SDE.log_snr(time_grid(SDE, 12, "karras")), dtype=np.float64)
    bh1, bh2 = grid_weights("unipc3_bh1", lam), grid_weights("unipc3_bh2", lam)
    for k in range(2, 11):
        np.testing.assert_allclose(bh1.weights[k], exponential_weights(lam[k::-1][:3], lam[k + 1]), rtol=1e-12)
        for p in (2, 3):
            # the step retaken with D at lambda_(k+1) and at its p predictor points: current point first
            w = exponential_weights([lam[k - j] for j in range(p)] + [lam[k + 1]], lam[k + 1])
            expected = np.concatenate([[w[p]], w[:p], np.zeros(3 - p)])
            got = bh1.corrector[k] if p == 3 else grid_weights("unipc3_bh1", lam[k - 1 :]).corrector[1]
            np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-14)
    np.testing.assert_array_equal(bh1.weights[2:], bh2.weights[2:])
    np.testing.assert_array_equal(bh1.corrector[1:], bh2.corrector[1:])
    assert np.abs(bh1.weights[1] - bh2.weights[1]).max() > 1e-3 and np.abs(bh1.corrector[0] - bh2.corrector[0]).max() > 1e-3


# --------------------------------------------------------------------------- (c) numpy and torch
@pytest.mark.parametrize("method", METHODS)
def test_numpy_and_torch_give_the_same_numbers(method):
    times = time_grid(SDE, 9, "karras")
    for prediction, lower_order_final in (("x0", True), ("eps", False)):
        a = ours(method, times, prediction, lower_order_final, backend="numpy")[0]
        b = ours(method, times, prediction, lower_order_final, backend="torch")[0]
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)


# --------------------------------------------------------------------------- (d) diffusion.sample: names, NFE, options
def test_sample_names_nfe_and_lower_order_final():
    kw = dict(steps=8, grid="logsnr", x_T=X_T, denoise=False, backend="numpy")
    times = time_grid(SDE, 8, "logsnr")
    for method, sdekit_method in (("dpmpp_2m", "dpmpp_2m"), ("exp_ab2", "exp_ab2"), ("unipc", "unipc_bh2"),
                                  ("unipc_bh1", "unipc_bh1"), ("unipc_bh2", "unipc_bh2"), ("unipc3", "unipc3_bh2"),
                                  ("unipc3_bh1", "unipc3_bh1"), ("unipc3_bh2", "unipc3_bh2")):
        r = sample(SDE, SCORE, 4, method=method, **kw)
        assert r.nfe == 8, method
        np.testing.assert_allclose(r.x, ours(sdekit_method, times, "x0")[0], rtol=1e-13, atol=1e-14)
        lowered = sample(SDE, SCORE, 4, method=method, lower_order_final=True, prediction="eps", **kw)
        same = sample(SDE, SCORE, 4, method=method, options=Exponential("eps", lower_order_final=True), **kw)
        np.testing.assert_array_equal(lowered.x, same.x)
        np.testing.assert_allclose(lowered.x, ours(sdekit_method, times, "eps", True)[0], rtol=1e-13, atol=1e-14)
    with pytest.raises(ValueError, match="lower_order_final"):
        sample(SDE, SCORE, 4, method="heun", steps=8, lower_order_final=True)
    with pytest.raises(ValueError, match="lower_order_final"):
        Exponential(lower_order_final=1)
    with pytest.raises(ValueError, match="lower_order_final"):
        sdekit.solve(sdekit.ODE(lambda t, x, p: -x), 1.0, (0.0, 1.0), method="rk4", n_steps=4, lower_order_final=True)

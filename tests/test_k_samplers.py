"""The stochastic samplers of diffusion.k_samplers (euler_ancestral, dpmpp_2m_sde, dpmpp_3m_sde, edm).

Truth: (a) k-diffusion's own samplers, driven by the same exact denoiser and our normals; (b) on Gaussian data every
chain is affine in (x_T, z_1, ..., z_N), so the exact law of its output is read off by probing it with unit inputs, and
compared with independent moment recursions (to round-off), with the exact p_eps (bias falling at the stated order)
and with Monte Carlo through sample() (standard errors); (c) the exact Gaussian flow for edm's order 2.
"""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion import VESDE, VPSDE, AncestralSDE, Churn, GaussianMixture, SubVPSDE, TimeGrid, sample
from diffusion.k_samplers import K_CHAINS
from diffusion.sdes import standard_normals

MU, V0 = 0.7, 0.25  # data N(MU, V0) in one dimension
GAUSS = GaussianMixture([1.0], [[MU]], [[[V0]]])
MIXTURE = GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.5, -0.5]], [np.diag([0.2, 0.1]), np.diag([0.3, 0.4])])
SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}


# --------------------------------------------------------------------------- (a) parity with k-diffusion
def _kdiff():
    """k-diffusion's sampling module, loaded by benchmarks/peer_samplers.py (without the package's heavy __init__)."""
    spec = importlib.util.spec_from_file_location("_k_samplers_peers", Path(__file__).parents[1] / "benchmarks" / "peer_samplers.py")
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)
    try:
        return peers._kdiff_sampling()
    except ImportError as exc:
        pytest.skip(f"k-diffusion's sampling module does not load: {exc}")


def _kdiff_run(kd, method, sde, gm, times, x_T, seed, options, monkeypatch):
    """k-diffusion's sampler on x / alpha with sigmas = edm_sigma(times), our normals in the order our chain draws them."""
    score = gm.score_fn(sde)
    n, dim = x_T.shape
    draws = iter(range(2, 10_000))  # _run_chain's streams: 2, 3, ... in the order drawn
    next_normals = lambda: torch.from_numpy(standard_normals(seed, next(draws), n, dim))  # noqa: E731

    def model(x_kd, s_vec):
        t = float(sde.t_from_edm_sigma(float(s_vec[0])))
        return torch.from_numpy(score.x0(float(sde.alpha(t)) * x_kd.numpy(), t))

    sigmas = torch.tensor([float(sde.edm_sigma(t)) for t in times], dtype=torch.float64)
    y = torch.from_numpy(x_T / float(sde.alpha(times[0])))
    if method == "edm":
        churned = iter([options.S_tmin <= float(s) <= options.S_tmax for s in sigmas[:-1]])
        monkeypatch.setattr(torch, "randn_like", lambda x: next_normals() if next(churned) else torch.zeros_like(x))
        out = kd.sample_heun(model, y, sigmas, disable=True, s_churn=options.S_churn, s_tmin=options.S_tmin,
                             s_tmax=options.S_tmax, s_noise=options.S_noise)
    else:
        sampler = {"euler_ancestral": kd.sample_euler_ancestral, "dpmpp_2m_sde": kd.sample_dpmpp_2m_sde,
                   "dpmpp_3m_sde": kd.sample_dpmpp_3m_sde}[method]
        extra = {"solver_type": options.solver_type} if method == "dpmpp_2m_sde" else {}
        out = sampler(model, y, sigmas, disable=True, eta=options.eta, s_noise=options.s_noise,
                      noise_sampler=lambda sigma, sigma_next: next_normals(), **extra)
    return out.numpy() * float(sde.alpha(times[-1]))


PARITY = [("euler_ancestral", AncestralSDE()), ("euler_ancestral", AncestralSDE(eta=0.6, s_noise=1.1)),
          ("dpmpp_2m_sde", AncestralSDE()), ("dpmpp_2m_sde", AncestralSDE(eta=0.5, solver_type="heun")),
          ("dpmpp_3m_sde", AncestralSDE()), ("dpmpp_3m_sde", AncestralSDE(eta=0.0)),
          ("edm", Churn()), ("edm", Churn(S_churn=20.0, S_tmin=0.05, S_tmax=20.0, S_noise=1.007)),
          ("edm", Churn(S_churn=3.0))]  # the first churn lifts sigma above sigma(T): the score is read at t_hat > T


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("method, options", PARITY, ids=[f"{m}-{i}" for i, (m, _) in enumerate(PARITY)])
def test_parity_with_k_diffusion(method, options, sde_name, monkeypatch):
    """Our chain reproduces k-diffusion's trajectory to round-off with the same denoiser and normals (Karras grid)."""
    kd = _kdiff()
    sde = SDES[sde_name]
    times = TimeGrid(sde, "karras").times(7)
    x_T = sde.prior_sample(5, 2, seed=3)
    ours = sample(sde, MIXTURE.score_fn(sde), 5, method=method, steps=7, grid="karras", x_T=x_T, seed=11,
                  options=options, denoise=False, backend="numpy").x
    theirs = _kdiff_run(kd, method, sde, MIXTURE, times, x_T, 11, options, monkeypatch)
    scale = max(1.0, float(np.abs(theirs).max()))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-10 * scale)


# --------------------------------------------------------------------------- (b) exact Gaussian laws
def chain_law(method, sde, times, options, start_mean, start_var):
    """Exact mean and variance of the chain's output on data N(MU, V0) from x_T ~ N(start_mean, start_var).

    The denoiser is affine, so the output is c + b0 x_T + sum_j b_j z_j: probed with x_T = 0 / 1 and unit normals."""
    steps = len(times) - 1
    rows = steps + 2
    x = np.zeros((rows, 1))
    x[1] = 1.0
    draws = [0]

    def noise():
        draws[0] += 1
        z = np.zeros((rows, 1))
        z[1 + draws[0]] = 1.0
        return z

    out, _ = K_CHAINS[method](sde, GAUSS.score_fn(sde), times, x, noise, options, lambda state: None)
    c, b = out[0, 0], out[1:, 0] - out[0, 0]
    return c + b[0] * start_mean, b[0] ** 2 * start_var + float(np.sum(b[1:] ** 2))


def exact_marginal(sde, t):
    alpha, sigma = float(sde.alpha(t)), float(sde.sigma(t))
    return alpha * MU, alpha * alpha * V0 + sigma * sigma


def recursion_euler_ancestral(sigmas, eta, s_noise, mean, var):
    """Moments of y = x / alpha under Euler ancestral steps with D(y) = MU + k (y - MU), k = V0 / (V0 + sigma^2)."""
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        k = V0 / (V0 + sigma**2)
        sigma_up = min(sigma_next, eta * sigma_next * math.sqrt(sigma**2 - sigma_next**2) / sigma)
        sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
        gain = 1.0 + (1.0 - k) * (sigma_down - sigma) / sigma  # y - D = (1 - k)(y - MU)
        mean = MU + gain * (mean - MU)
        var = gain**2 * var + (s_noise * sigma_up) ** 2
    return mean, var


def recursion_dpmpp_2m_sde(sigmas, eta, mean, var):
    """Moments of y under DPM-Solver++(2M) SDE (midpoint), with Cov(y_i, y_{i-1}) for the two-step term.

    y' = a y + decay D + w (D - D_prev) + noise, D - MU = k (y - MU), D_prev - MU = k_prev (y_prev - MU)."""
    mean_prev = var_prev = cov = 0.0
    k_prev = h_prev = None
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        k = V0 / (V0 + sigma**2)
        h = math.log(sigma / sigma_next)
        decay = 1.0 - math.exp(-(1.0 + eta) * h)
        a = sigma_next / sigma * math.exp(-eta * h)
        w, k_before = (0.0, 0.0) if k_prev is None else (0.5 * decay * h / h_prev, k_prev)
        gain, gain_prev = a + (decay + w) * k, -w * k_before  # y' - E y' = gain (y - E y) + gain_prev (y_prev - E y_prev) + noise
        new_mean = a * mean + decay * MU + (decay + w) * k * (mean - MU) - w * k_before * (mean_prev - MU)
        noise_var = sigma_next**2 * (1.0 - math.exp(-2.0 * eta * h))
        new_var = gain**2 * var + gain_prev**2 * var_prev + 2.0 * gain * gain_prev * cov + noise_var
        cov = gain * var + gain_prev * cov  # Cov(y', y)
        mean_prev, var_prev, k_prev, h_prev = mean, var, k, h
        mean, var = new_mean, new_var
    return mean, var


@pytest.mark.parametrize("sde_name", list(SDES))
def test_gaussian_law_matches_independent_moment_recursions(sde_name):
    """euler_ancestral and dpmpp_2m_sde map N to N; their moments after N steps follow closed recursions (1e-10)."""
    sde = SDES[sde_name]
    times = TimeGrid(sde, "logsnr").times(9)
    sigmas = [float(sde.edm_sigma(t)) for t in times]
    alpha_T, alpha_eps = float(sde.alpha(times[0])), float(sde.alpha(times[-1]))
    start_mean, start_var = 0.3, 1.7
    for method, options, recursion in (
            ("euler_ancestral", AncestralSDE(eta=0.8, s_noise=1.2), lambda m, v: recursion_euler_ancestral(sigmas, 0.8, 1.2, m, v)),
            ("dpmpp_2m_sde", AncestralSDE(eta=0.7), lambda m, v: recursion_dpmpp_2m_sde(sigmas, 0.7, m, v))):
        mean, var = chain_law(method, sde, times, options, start_mean, start_var)
        y_mean, y_var = recursion(start_mean / alpha_T, start_var / alpha_T**2)
        np.testing.assert_allclose([mean, var], [alpha_eps * y_mean, alpha_eps**2 * y_var], rtol=1e-10, atol=1e-12)


# the orders of the law's error on Gaussian data (diffusion.k_samplers): the DPM-Solver++ SDE methods are of weak order 1
# in general but 2 on this linear problem; dpmpp_3m_sde with eta = 0 is of order 2 (its first-order start)
GAUSSIAN_ORDERS = [("euler_ancestral", AncestralSDE(), 1), ("dpmpp_2m_sde", AncestralSDE(), 2),
                   ("dpmpp_2m_sde", AncestralSDE(solver_type="heun"), 2), ("dpmpp_3m_sde", AncestralSDE(), 2),
                   ("dpmpp_3m_sde", AncestralSDE(eta=0.0), 2), ("euler_ancestral", AncestralSDE(eta=0.0), 1),
                   ("edm", Churn(S_churn=10.0), 2), ("edm", Churn(), 2)]


@pytest.mark.parametrize("method, options, order", GAUSSIAN_ORDERS, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(GAUSSIAN_ORDERS)])
def test_law_error_falls_at_the_stated_order(method, options, order):
    """Started from the exact p_T, the output law's distance to the exact p_eps falls like steps^-order (40, 80, 160
    logsnr steps: the measured rates are within 0.15 of the order; the bound is 0.25)."""
    sde = VPSDE()
    mean_T, var_T = exact_marginal(sde, sde.T)
    mean_eps, var_eps = exact_marginal(sde, sde.eps)
    errors = []
    for steps in (40, 80, 160):
        mean, var = chain_law(method, sde, TimeGrid(sde, "logsnr").times(steps), options, mean_T, var_T)
        errors.append(abs(mean - mean_eps) + abs(var - var_eps))
    rates = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(np.abs(rates - order) < 0.25), (method, errors, rates)


@pytest.mark.parametrize("method", list(K_CHAINS))
def test_sample_moments_within_standard_errors_of_the_exact_chain_law(method):
    """sample() (prior start, numba backend) draws the chain's exact law: mean and variance within 4.5 standard errors."""
    sde, n, steps = VPSDE(), 4000, 12
    options = Churn(S_churn=5.0) if method == "edm" else AncestralSDE()
    mean, var = chain_law(method, sde, TimeGrid(sde, "karras").times(steps), options, 0.0, sde.prior_std**2)
    x = sample(sde, GAUSS.score_fn(sde), n, method=method, steps=steps, grid="karras", options=options, seed=5,
               denoise=False).x[:, 0]
    assert abs(x.mean() - mean) < 4.5 * math.sqrt(var / n)
    assert abs(x.var(ddof=1) - var) < 4.5 * var * math.sqrt(2.0 / (n - 1))


# --------------------------------------------------------------------------- (c) edm without churn: order 2 pathwise
def test_edm_without_churn_converges_at_order_two_against_the_exact_flow():
    """On N(MU, V0) the flow is y(s) = MU + sqrt((V0 + s^2) / (V0 + s_T^2)) (y_T - MU); Heun's errors fall 4x per halving."""
    sde = SubVPSDE()
    x_T = sde.prior_sample(4, 1, seed=2)
    s_T, s_eps = float(sde.edm_sigma(sde.T)), float(sde.edm_sigma(sde.eps))
    y_T = x_T / float(sde.alpha(sde.T))
    exact = float(sde.alpha(sde.eps)) * (MU + math.sqrt((V0 + s_eps**2) / (V0 + s_T**2)) * (y_T - MU))
    errors = [np.abs(sample(sde, GAUSS.score_fn(sde), 4, method="edm", steps=steps, grid="karras", x_T=x_T,
                            denoise=False, backend="numpy").x - exact).max() for steps in (8, 16, 32)]
    rates = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(np.abs(rates - 2.0) < 0.3), (errors, rates)


# --------------------------------------------------------------------------- (d) reproducibility
@pytest.mark.parametrize("method, keywords", [("euler_ancestral", {"eta": 0.5}), ("dpmpp_2m_sde", {"solver_type": "heun"}),
                                              ("dpmpp_3m_sde", {}), ("edm", {"S_churn": 8.0, "S_tmax": 10.0})])
def test_first_samples_do_not_depend_on_n_and_backends_agree(method, keywords):
    sde, score = VESDE(), MIXTURE.score_fn(VESDE())
    runs = {(n, backend): sample(sde, score, n, method=method, steps=5, grid="logsnr", seed=9, backend=backend,
                                 **keywords).x for n, backend in ((7, "numpy"), (3, "numpy"), (7, "torch"), (7, "numba"))}
    np.testing.assert_array_equal(runs[7, "numpy"][:3], runs[3, "numpy"])
    np.testing.assert_allclose(runs[7, "torch"].numpy(), runs[7, "numpy"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(runs[7, "numba"], runs[7, "numpy"], rtol=0, atol=1e-12)
    other_seed = sample(sde, score, 3, method=method, steps=5, grid="logsnr", seed=10, backend="numpy", **keywords).x
    assert not np.allclose(other_seed, runs[3, "numpy"])


def test_keyword_shorthand_is_the_record():
    sde, score = VPSDE(), GAUSS.score_fn(VPSDE())
    for method, keywords, record in (("dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}, AncestralSDE(eta=0.0, solver_type="heun")),
                                     ("edm", {"S_churn": 3.0, "S_noise": 1.01}, Churn(S_churn=3.0, S_noise=1.01))):
        a = sample(sde, score, 3, method=method, steps=4, backend="numpy", **keywords)
        b = sample(sde, score, 3, method=method, steps=4, backend="numpy", options=record)
        assert a.options == record
        np.testing.assert_array_equal(a.x, b.x)


# --------------------------------------------------------------------------- (e) bad options
@pytest.mark.parametrize("make, message", [
    (lambda: AncestralSDE(eta=-0.1), "AncestralSDE: `eta` must be a non-negative"),
    (lambda: AncestralSDE(s_noise=float("nan")), "AncestralSDE: `s_noise` must be a non-negative finite"),
    (lambda: AncestralSDE(solver_type="rk4"), "AncestralSDE: `solver_type` must be 'midpoint' or 'heun'"),
    (lambda: Churn(S_churn=-1.0), "Churn: `S_churn` must be a non-negative"),
    (lambda: Churn(S_tmin=2.0, S_tmax=1.0), r"Churn: `S_tmax` must be a number >= S_tmin"),
    (lambda: Churn(S_noise="1"), "Churn: `S_noise` must be a non-negative number"),
])
def test_bad_records_are_refused_in_one_line(make, message):
    with pytest.raises(ValueError, match=message) as info:
        make()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("method, keywords, message", [
    ("dpmpp_3m_sde", {"solver_type": "heun"}, "`solver_type` applies to method='dpmpp_2m_sde'"),
    ("edm", {"eta": 0.5}, "`eta` applies to method='ddim'"),
    ("euler_ancestral", {"S_churn": 1.0}, "`S_churn` applies to method='edm'"),
    ("heun", {"s_noise": 1.1}, "`s_noise` applies to method in"),
    ("edm", {"options": AncestralSDE()}, "apply to method 'euler_ancestral' or 'dpmpp_2m_sde' or 'dpmpp_3m_sde'"),
    ("euler_ancestral", {"options": AncestralSDE(solver_type="heun")}, "`solver_type` applies to method 'dpmpp_2m_sde' only"),
])
def test_options_a_method_does_not_read_are_refused(method, keywords, message):
    sde = VPSDE()
    with pytest.raises(ValueError, match=message) as info:
        sample(sde, GAUSS.score_fn(sde), 3, method=method, steps=2, backend="numpy", **keywords)
    assert "\n" not in str(info.value)

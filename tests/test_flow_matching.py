"""Flow matching and rectified flow (diffusion.flow) against closed forms and the exact mixture oracle.

Gaussian data ``N(m, diag(s^2))`` under an interpolant ``x_t = alpha_t x_0 + sigma_t eps`` has the Gaussian marginal
``N(alpha_t m, c_t^2)``, ``c_t^2 = alpha_t^2 s^2 + sigma_t^2``, and the exact velocity
``v(t, x) = E[alpha' x_0 + sigma' eps | x_t = x] = alpha'_t m + c'_t (x - alpha_t m) / c_t`` (with
``E[x_0 | x] = m + alpha s^2 (x - alpha m)/c^2``, ``E[eps | x] = sigma (x - alpha m)/c^2`` and ``c c' = alpha alpha' s^2 +
sigma sigma'``). Its flow keeps the standardised position: ``x_t = alpha_t m + c_t (x_T - alpha_T m) / c_T``.
"""

import math

import numba
import numpy as np
import pytest
from scipy.integrate import quad

import diffusion
from diffusion import VPSDE, FlowMatching, GaussianMixture, RectifiedFlow, Score, convert, sample
from diffusion.flow import interpolant_derivatives
from sdekit import ops

MEAN, STD = np.array([1.5, -0.5]), np.array([0.5, 2.0])


def rf_gaussian_velocity(t, x, p):
    """The exact velocity of Gaussian data N(p[0], diag(p[1]^2)) under rectified flow (alpha = 1 - t, sigma = t)."""
    a = 1.0 - t
    c = ops.sqrt(a * a * p[1] * p[1] + t * t)
    dc = (t - a * p[1] * p[1]) / c
    return -p[0] + dc * (x - a * p[0]) / c


def gaussian_flow(process, x_T, t, mean=MEAN, std=STD):
    """The exact probability-flow map from T to t for Gaussian data."""
    def c(u):
        return np.sqrt(process.alpha(u) ** 2 * std**2 + process.sigma(u) ** 2)
    return process.alpha(t) * mean + c(t) * (x_T - process.alpha(process.T) * mean) / c(process.T)


def trig_alpha(t, p):
    return ops.cos(0.5 * math.pi * t)


def trig_sigma(t, p):
    return ops.sin(0.5 * math.pi * t)


def trig_dalpha(t, p):
    return -0.5 * math.pi * ops.sin(0.5 * math.pi * t)


def trig_dsigma(t, p):
    return 0.5 * math.pi * ops.cos(0.5 * math.pi * t)


def trig_flow():
    """The trigonometric (variance-preserving) interpolant, with the default bisection inverse of the log-SNR."""
    return FlowMatching(trig_alpha, trig_sigma, trig_dalpha, trig_dsigma)


@pytest.fixture(scope="module")
def rf():
    return RectifiedFlow()


@pytest.fixture(scope="module")
def gaussian(rf):
    return Score(rf_gaussian_velocity, rf, parameterisation="velocity", params=(MEAN, STD), dim=2)


# --------------------------------------------------------------------------- the process
def test_rectified_flow_coefficients(rf):
    """f = -1/(1 - t), g^2 = 2t/(1 - t), lambda = log((1 - t)/t) and its inverse; the prior is N(0, sigma_T^2 I)."""
    t = np.linspace(rf.eps, rf.T, 9)
    np.testing.assert_allclose(rf.f(t), -1.0 / (1.0 - t), rtol=1e-13)
    np.testing.assert_allclose(rf.g2(t), 2.0 * t / (1.0 - t), rtol=1e-12)
    np.testing.assert_allclose(rf.log_snr(t), np.log((1.0 - t) / t), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(rf.t_from_log_snr(rf.log_snr(t)), t, rtol=1e-12)
    np.testing.assert_allclose(rf.t_from_sigma(t), t, rtol=1e-12)
    assert rf.T == 1.0 - 1e-3 and rf.prior_std == pytest.approx(rf.T, rel=1e-15)


def test_general_interpolant_kernels_and_bisection():
    """The trigonometric interpolant: f and g^2 from the identities (alpha^2 + sigma^2 = 1 gives the VP form
    g^2 = -2 f = pi tan(pi t/2)), and the default bisection inverts lambda to rounding."""
    fm = trig_flow()
    t = np.linspace(fm.eps, fm.T, 11)
    np.testing.assert_allclose(fm.f(t), -0.5 * math.pi * np.tan(0.5 * math.pi * t), rtol=1e-12)
    np.testing.assert_allclose(fm.g2(t), math.pi * np.tan(0.5 * math.pi * t), rtol=1e-12)
    np.testing.assert_allclose(fm.t_from_log_snr(fm.log_snr(t)), t, rtol=1e-13)
    np.testing.assert_allclose(fm.t_from_sigma(fm.sigma(t)), t, rtol=1e-12)
    assert float(fm.t_from_log_snr(float(fm.log_snr(0.3)))) == pytest.approx(0.3, rel=1e-13)
    inverse = fm.kernels.t_from_log_snr
    compiled = numba.njit(lambda lam: inverse(lam, ()))  # the kernel compiles (as a logsnr grid's phi on numba)
    assert compiled(float(fm.log_snr(0.3))) == pytest.approx(0.3, rel=1e-13)


def test_derivatives_of_any_process_from_f_and_g2():
    """alpha' = f alpha and sigma' = g^2/(2 sigma) + f sigma give the VP process's derivatives (central differences)."""
    vp, t, h = VPSDE(), np.array([0.1, 0.5, 0.9]), 1e-6
    dalpha, dsigma = interpolant_derivatives(vp, t)
    np.testing.assert_allclose(dalpha, (vp.alpha(t + h) - vp.alpha(t - h)) / (2 * h), rtol=1e-7)
    np.testing.assert_allclose(dsigma, (vp.sigma(t + h) - vp.sigma(t - h)) / (2 * h), rtol=1e-7)


def test_probability_flow_drift_is_the_velocity(rf, gaussian):
    """The PF-ODE drift of a velocity-parameterised Score is the velocity: f x - g^2 s/2 with s = 2 (f x - v)/g^2."""
    x = np.random.default_rng(0).normal(size=(5, 2)) * 2.0
    rhs = diffusion.probability_flow(gaussian).rhs
    for t in (rf.eps, 0.3, 0.9, rf.T):
        v = rf_gaussian_velocity(t, x, (MEAN, STD))
        np.testing.assert_allclose(rhs(t, x, gaussian.params), v, rtol=1e-12, atol=1e-12 * np.abs(v).max())


def test_oracle_velocity_is_the_conditional_mean_of_the_target(rf):
    """GaussianMixture.velocity = alpha' E[x0 | x] + sigma' E[eps | x] (Tweedie's mean from the oracle), and its
    one-component case is the Gaussian closed form."""
    gm = GaussianMixture([0.3, 0.7], [[-2.0, 1.0], [2.0, 0.0]], [[0.2, 0.5], [0.4, 0.1]])
    x = np.random.default_rng(1).normal(size=(6, 2))
    for t in (0.05, 0.5, 0.95):
        x0 = gm.tweedie(x, t, rf)
        a, s = rf.alpha(t), rf.sigma(t)
        expected = -x0 + (x - a * x0) / s  # alpha' = -1, sigma' = 1
        np.testing.assert_allclose(gm.velocity(x, t, rf), expected, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(gm.velocity_fn(rf).velocity(x, t), expected, rtol=1e-10, atol=1e-12)
    one = GaussianMixture([1.0], [MEAN], [STD**2])
    np.testing.assert_allclose(one.velocity(x, 0.4, rf), rf_gaussian_velocity(0.4, x, (MEAN, STD)), rtol=1e-12)


# --------------------------------------------------------------------------- (a) the Gaussian flow, every integrator
def _pathwise_errors(rf, score, method, grid, steps, x_T):
    exact = gaussian_flow(rf, x_T, rf.eps)
    return np.array([np.abs(sample(rf, score, len(x_T), method=method, steps=n, grid=grid, denoise=False, x_T=x_T,
                                   backend="numpy").x - exact).max() for n in steps])


@pytest.mark.parametrize("method,order", [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_ode_solvers_reproduce_the_gaussian_flow_at_their_order(rf, gaussian, method, order):
    """Pathwise error against the closed-form flow at 32 and 64 uniform steps: the fitted order within 0.3."""
    x_T = rf.prior_sample(32, 2, seed=3)
    err = _pathwise_errors(rf, gaussian, method, "uniform", (32, 64), x_T)
    assert abs(math.log2(err[0] / err[1]) - order) < 0.3, err
    assert err[1] < 0.2 * 64.0 ** -order * 64, err  # and the constant is moderate (not a converging wrong answer)


def test_exponential_samplers_on_rectified_flow(rf, gaussian):
    """DDIM is Euler in t on rectified flow (x_s = (s/t) x + (1 - s/t) x0_hat either way); DDIM on the log-SNR grid
    converges at order 1 and DPM-Solver++(2M) at order 2; dopri5 at rtol 1e-9 reaches the exact flow."""
    x_T = rf.prior_sample(32, 2, seed=4)
    ddim = sample(rf, gaussian, 32, method="ddim", steps=10, denoise=False, x_T=x_T, backend="numpy").x
    euler = sample(rf, gaussian, 32, method="euler", steps=10, denoise=False, x_T=x_T, backend="numpy").x
    np.testing.assert_allclose(ddim, euler, rtol=1e-11, atol=1e-11)
    for method, order in (("ddim", 1), ("dpmpp_2m", 2)):
        err = _pathwise_errors(rf, gaussian, method, "logsnr", (32, 64), x_T)
        assert math.log2(err[0] / err[1]) > order - 0.3, (method, err)
    exact = gaussian_flow(rf, x_T, rf.eps)
    tight = sample(rf, gaussian, 32, method="dopri5", denoise=False, x_T=x_T, backend="numpy", rtol=1e-9, atol=1e-9)
    assert np.abs(tight.x - exact).max() < 1e-7


def test_denoised_sample_is_the_posterior_mean(rf, gaussian):
    """denoise=True ends with E[x_0 | x_eps] = m + alpha s^2 (x - alpha m)/c^2 at eps (the velocity converted)."""
    x_T = rf.prior_sample(8, 2, seed=5)
    r = sample(rf, gaussian, 8, method="rk4", steps=16, x_T=x_T, backend="numpy")
    raw = sample(rf, gaussian, 8, method="rk4", steps=16, x_T=x_T, backend="numpy", denoise=False).x
    a, s = rf.alpha(rf.eps), rf.sigma(rf.eps)
    np.testing.assert_allclose(r.x, MEAN + a * STD**2 * (raw - a * MEAN) / (a * a * STD**2 + s * s), rtol=1e-10)


# --------------------------------------------------------------------------- (b) the exact mixture velocity
@pytest.fixture(scope="module")
def mixture():
    """Three 2-D components >= 8 standard deviations apart, so the most responsible component of an exact sample is
    its own component (mode weights = mixture weights to ~1e-15)."""
    return GaussianMixture([0.2, 0.3, 0.5], [[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]],
                           [[[0.3, 0.1], [0.1, 0.2]], [[0.25, 0.0], [0.0, 0.4]], [[0.3, -0.1], [-0.1, 0.3]]])


@pytest.mark.parametrize("process,method,grid,steps", [
    ("rf", "rk4", "uniform", 24), ("rf", "dpmpp_2m", "logsnr", 24), ("rf", "sra1", "logsnr", 100),
    ("trig", "heun", "logsnr", 32),
])
def test_sampling_the_exact_velocity_reproduces_the_mixture(rf, mixture, process, method, grid, steps):
    """n = 2000 samples at eps (denoise=False, so the target is p_eps): mode weights within 4 binomial standard errors,
    sliced KS within the exact-sample floor 0.8687/sqrt(n) plus 4 spreads 0.2603/sqrt(n) (the oracle's sliced_ks
    notes). The trig process's logsnr grid runs the bisection inverse of its log-SNR."""
    fm = rf if process == "rf" else trig_flow()
    n = 2000
    r = sample(fm, mixture.velocity_fn(fm), n, method=method, steps=steps, grid=grid, denoise=False, seed=7,
               backend="numpy")
    se = np.sqrt(mixture.weights * (1 - mixture.weights) / n)
    weights = mixture.mode_weights(r.x, fm.eps, fm)
    assert np.all(np.abs(weights - mixture.weights) < 4 * se), weights
    assert mixture.sliced_ks(r.x, fm.eps, fm) < (0.8687 + 4 * 0.2603) / math.sqrt(n)


@pytest.fixture(scope="module")
def two_modes():
    return GaussianMixture([0.3, 0.7], [[-2.0], [2.0]], [0.1, 0.2])


@pytest.mark.parametrize("method", [m for m in diffusion.METHODS if m not in ("ald", "dopri5")])
def test_every_sampler_runs_on_rectified_flow(rf, two_modes, method):
    """Every fixed-step method of sample() on the exact 1-D mixture velocity, 100 log-SNR steps, n = 2000 samples of
    p_eps: mode weights within 4 binomial standard errors and sliced KS within the exact-sample bound (as above).
    (dopri5 is checked against the closed form above; ald, Langevin steps with no transport between levels, misses
    the mixture at this budget on every process, VP and VE included, so it is no test of the process.)"""
    n = 2000
    r = sample(rf, two_modes.velocity_fn(rf), n, method=method, steps=100, grid="logsnr", denoise=False, seed=3,
               backend="numpy")
    se = np.sqrt(two_modes.weights * (1 - two_modes.weights) / n)
    assert np.all(np.abs(two_modes.mode_weights(r.x, rf.eps, rf) - two_modes.weights) < 4 * se)
    assert two_modes.sliced_ks(r.x, rf.eps, rf) < (0.8687 + 4 * 0.2603) / math.sqrt(n)


def test_exact_likelihood_on_rectified_flow(rf, mixture):
    """The PF-ODE likelihood with the velocity Score, the exact divergence and the exact p_T as prior reproduces the
    mixture's log-density at eps (dopri5 at its default tolerances 1e-5 -> 1e-4 in log p)."""
    x = mixture.diffused(rf, rf.eps).sample(10, seed=4)
    lik = diffusion.log_likelihood(rf, mixture.velocity_fn(rf), x, divergence=mixture.divergence_fn(rf),
                                   prior=lambda y: mixture.log_prob(y, rf.T, rf), backend="numpy")
    np.testing.assert_allclose(lik.log_prob, mixture.log_prob(x, rf.eps, rf), atol=1e-4)


def test_reverse_sde_flags_steps_too_coarse_for_the_stiff_end(rf, mixture):
    """Near T the reverse SDE's rate is ~1/(1 - t) = 1000: 20 uniform Euler-Maruyama steps are refused (non-finite
    or unstable paths reported), never returned as samples."""
    with pytest.raises(FloatingPointError, match="euler_maruyama"):
        sample(rf, mixture.velocity_fn(rf), 2000, method="euler_maruyama", steps=20, seed=1, backend="numpy")


# --------------------------------------------------------------------------- (c) training
def test_flow_matching_loss_of_the_exact_velocity_is_the_optimum(rf):
    """For 1-D N(m, s^2) data the target's conditional variance is s^2/c_t^2 (v = (eps - x_t)/(1 - t) given x_t), so the
    minimum of the loss is L* = mean over t ~ U(eps, T) of s^2/c_t^2; the exact velocity's loss matches it within 4
    Monte Carlo standard errors, and the logit-normal sampling's minimum likewise."""
    torch = pytest.importorskip("torch")
    from diffusion.training import flow_matching_loss

    m, s = 1.5, 0.5

    class Exact(torch.nn.Module):
        parameterisation = "velocity"

        def forward(self, x, t):
            return rf_gaussian_velocity(t[:, None], x, (m, s))

    def c2(t):
        return (1 - t) ** 2 * s * s + t * t

    gen = torch.Generator().manual_seed(0)
    x0 = m + s * torch.randn(20000, 1, generator=gen, dtype=torch.float64)
    for sampling, density in (("uniform", lambda t: 1.0 / (rf.T - rf.eps)),
                              ("logit_normal", lambda t: _logit_normal_density((t - rf.eps) / (rf.T - rf.eps)) / (rf.T - rf.eps))):
        optimum = quad(lambda t, density=density: density(t) * s * s / c2(t), rf.eps, rf.T)[0]
        per = [float(flow_matching_loss(Exact(), rf, x0[i::10], time_sampling=sampling, generator=gen))
               for i in range(10)]
        assert abs(np.mean(per) - optimum) < 4 * np.std(per, ddof=1) / math.sqrt(10), (sampling, np.mean(per), optimum)


def _logit_normal_density(u):
    return np.exp(-0.5 * np.log(u / (1 - u)) ** 2) / (math.sqrt(2 * math.pi) * u * (1 - u))


def test_training_approaches_the_closed_form_velocity(rf):
    """A small MLP trained with train(loss="fm") for 400 steps on 1-D Gaussian data: its loss exceeds the optimum L*
    (derived above: 0.786) by less than 1% of L*, the excess E|v_theta - v|^2 measured directly against the closed-form
    velocity on 20000 fresh (t, x_t)."""
    torch = pytest.importorskip("torch")
    from diffusion.models import ScoreMLP
    from diffusion.training import TrainConfig, train

    m, s = 1.5, 0.5
    torch.manual_seed(0)
    data = m + s * np.random.default_rng(0).normal(size=(8192, 1))
    net = ScoreMLP(1, hidden=64, depth=2, parameterisation="velocity")
    config = TrainConfig(loss="fm", steps=400, batch_size=256, lr=3e-3, warmup=20, ema_decay=0.98, seed=0,
                         checkpoint_every=10_000)
    module = train(net, rf, data, config, progress=False)["ema"].module
    optimum = quad(lambda t: s * s / ((1 - t) ** 2 * s * s + t * t), rf.eps, rf.T)[0] / (rf.T - rf.eps)
    gen = torch.Generator().manual_seed(1)
    t = rf.eps + (rf.T - rf.eps) * torch.rand(20000, generator=gen, dtype=torch.float64)
    xt = rf.alpha(t)[:, None] * (m + s * torch.randn(20000, 1, generator=gen, dtype=torch.float64)) + \
        rf.sigma(t)[:, None] * torch.randn(20000, 1, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        learned = module(xt.float(), t.float()).double()
    excess = float(((learned - rf_gaussian_velocity(t[:, None], xt, (m, s))) ** 2).mean())
    assert excess < 0.01 * optimum, (excess, optimum)


# --------------------------------------------------------------------------- (d) conversions
@pytest.mark.parametrize("process", ["rf", "trig", "vp"])
def test_velocity_score_x0_round_trips(rf, process):
    """velocity -> score -> x0 -> velocity returns the prediction to 1e-12 (scalar t and one t per row)."""
    fm = {"rf": rf, "trig": trig_flow(), "vp": VPSDE()}[process]
    rng = np.random.default_rng(2)
    x, v = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    for t in (0.2, 0.7, np.array([0.01, 0.3, 0.6, 0.99])):
        score = convert(v, x, t, fm, source="velocity", target="score")
        x0 = convert(score, x, t, fm, source="score", target="x0")
        back = convert(x0, x, t, fm, source="x0", target="velocity")
        np.testing.assert_allclose(back, v, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(convert(v, x, t, fm, source="velocity", target="x0"), x0, rtol=1e-12, atol=1e-12)


def test_velocity_conversions_on_torch_and_from_module(rf):
    """The same conversions on tensors (per-row t), and Score.from_module(net, process, parameterisation="velocity")."""
    torch = pytest.importorskip("torch")
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0.1, 0.4, 0.7, 0.95], dtype=torch.float64)
    v = rf_gaussian_velocity(t[:, None], x, (torch.as_tensor(MEAN), torch.as_tensor(STD)))
    back = convert(convert(v, x, t, rf, source="velocity", target="eps"), x, t, rf, source="eps", target="velocity")
    torch.testing.assert_close(back, v, rtol=1e-12, atol=1e-12)

    class Net(torch.nn.Module):
        def forward(self, x, c):
            return rf_gaussian_velocity(c[:, None], x, (torch.as_tensor(MEAN), torch.as_tensor(STD)))

    score = Score.from_module(Net(), rf, parameterisation="velocity", dim=2, dtype=torch.float64)
    torch.testing.assert_close(score.velocity(x, 0.4), rf_gaussian_velocity(0.4, x, (torch.as_tensor(MEAN),
                                                                                   torch.as_tensor(STD))))
    x_T = rf.prior_sample(8, 2, seed=6)
    out = sample(rf, score, 8, method="rk4", steps=32, denoise=False, x_T=x_T, backend="torch")
    np.testing.assert_allclose(out.x.numpy(), gaussian_flow(rf, x_T, rf.eps), atol=1e-5)


# --------------------------------------------------------------------------- (e) bad interpolants
def _linear_alpha(t, p):
    return 1.0 - t


def _linear_sigma(t, p):
    return 1.0 * t


def _minus_one(t, p):
    return -1.0 + 0.0 * t


def _one(t, p):
    return 1.0 + 0.0 * t


def _sqrt_alpha(t, p):
    return ops.sqrt(0.5 - t)


def _wrong_dsigma(t, p):
    return 2.0 + 0.0 * t


def _shifted_alpha(t, p):
    return 2.0 - t


def _bump_sigma(t, p):
    # alpha/sigma = 1/(t (1 - t)) grows again after t = 1/2
    return t * (1.0 - t) * (1.0 - t)


def _bump_dsigma(t, p):
    return (1.0 - t) * (1.0 - 3.0 * t)


@pytest.mark.parametrize("functions,keywords,match", [
    ((_linear_alpha, _linear_sigma, _minus_one, _one), {"T": 1.0}, r"`alpha` must be positive.*choose T < 1"),
    ((_sqrt_alpha, _linear_sigma, _minus_one, _one), {}, r"`alpha` is not finite"),
    ((_linear_alpha, _minus_one, _minus_one, _one), {}, r"`sigma` must be positive"),
    ((_linear_alpha, _linear_sigma, _minus_one, _wrong_dsigma), {}, r"`dsigma` is not the derivative of `sigma`"),
    ((_shifted_alpha, _linear_sigma, _minus_one, _one), {}, r"alpha_0 = 1 and sigma_0 = 0"),
    ((_linear_alpha, _bump_sigma, _minus_one, _bump_dsigma), {}, r"must decrease strictly"),
    ((_linear_alpha, _linear_sigma, _minus_one, _one), {"t_from_log_snr": _linear_alpha}, r"does not invert"),
    ((_linear_alpha, _linear_sigma, _minus_one, 3.0), {}, r"`dsigma` must be a function"),
])
def test_bad_interpolants_are_refused_in_one_line(functions, keywords, match):
    with pytest.raises(ValueError, match=match) as info:
        FlowMatching(*functions, **keywords)
    assert "\n" not in str(info.value)


def test_rectified_flow_refuses_T_one():
    with pytest.raises(ValueError, match="choose T < 1"):
        RectifiedFlow(T=1.0)


@pytest.mark.parametrize("eps", [0.0, -0.5, 1.5, math.nan])
def test_flow_times_outside_zero_one_are_refused(eps):
    with pytest.raises(ValueError, match=r"`eps` must be a number in \(0, 1\]"):
        RectifiedFlow(eps=eps)


def test_the_repr_names_the_interpolant():
    text = repr(FlowMatching(trig_alpha, trig_sigma, trig_dalpha, trig_dsigma))
    assert text.startswith("FlowMatching(alpha=trig_alpha, sigma=trig_sigma,"), text


def _steep_alpha(t, p):
    return 1.0 - 2.0 * t


def _steep_dalpha(t, p):
    return -2.0 + 0.0 * t


def test_a_non_positive_alpha_is_reported_at_its_first_time():
    # alpha = 1 - 2t reaches 0 at t = 1/2: the message names the first checked time at or after it and alpha there
    with pytest.raises(ValueError, match=r"`alpha` must be positive") as info:
        FlowMatching(_steep_alpha, _linear_sigma, _steep_dalpha, _one)
    t = np.linspace(1e-3, 1.0 - 1e-3, diffusion.flow._CHECK_POINTS)
    first = t[t >= 0.5][0]
    assert f"got {1.0 - 2.0 * first:g} at t={first:g}" in str(info.value), str(info.value)


def _drifting_dsigma(t, p):
    return 1.0 + 2.0 * t  # sigma = t has sigma' = 1: the mismatch 2t grows along [eps, T]


def test_a_wrong_derivative_is_reported_where_it_is_worst():
    with pytest.raises(ValueError, match=r"`dsigma` is not the derivative of `sigma`") as info:
        FlowMatching(_linear_alpha, _linear_sigma, _minus_one, _drifting_dsigma)
    inner = np.linspace(1e-3, 1.0 - 1e-3, diffusion.flow._CHECK_POINTS)[1:-1]
    worst = inner[-1]  # |fd - d| / max(1, |d|) = 2t / (1 + 2t) is largest at the last interior time
    assert f": {1.0 + 2.0 * worst:g} at t={worst:g}, where central differences give 1" in str(info.value), str(info.value)


def _ve_sigma(t, p):
    return 1000.0 * t


def _ve_dsigma(t, p):
    return 1000.0 + 0.0 * t


def test_large_exact_derivatives_pass_the_relative_check():
    # sigma_t = 1000 t: central differences carry ~1e-4 of absolute round-off at h = 1e-9, 1e-7 of sigma'
    fm = FlowMatching(_linear_alpha, _ve_sigma, _minus_one, _ve_dsigma)
    assert fm.prior_std == pytest.approx(1000.0 * (1.0 - 1e-3), rel=1e-15)

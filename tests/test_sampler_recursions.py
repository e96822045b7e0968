"""The diffusion samplers on Gaussian data against closed forms: every step is an exact affine map.

On data ``N(MU, V0)`` the diffused law is ``p_t = N(alpha_t MU, v_t)`` with ``v_t = alpha_t^2 V0 + sigma_t^2``
and the exact score is ``s(t, x) = -(x - alpha_t MU) / v_t``. With ``u = x - alpha_t MU`` every sampler step is
``u_s = A u_t + D z``, so

* (a) DDIM(eta) and DDPM: the law of the output is ``N`` with moments given by a recursion written here from the
  papers (the lambda form of the DDIM noise for eta in {0.3, 1}, the DDPM posterior of Ho et al. for eta = 1), and
  the chain's law is read off by probing it with unit inputs (it is affine in ``(x_T, z_1, ...)``): equal to 1e-10;
* (b) ``sample()`` (ddpm, ddim(eta), pc, euler_maruyama) reproduces, on the normals and the Brownian path it drew,
  the step written independently here (1e-10);
* (c) the reverse SDE of Gaussian data is linear with the exact solution
  ``u(eps) = Phi(eps, T) u(T) + int Phi(eps, r) g(r) dW(r)``, ``Phi(s, t) = (v_s / alpha_s) / (v_t / alpha_t)``:
  Euler–Maruyama converges to it on its own Brownian path at strong order 1;
* (d) unadjusted Langevin ``x' = x + e s + sqrt(2 e) z`` on ``N(m, v)`` has the stationary law
  ``N(m, v / (1 - e / (2 v)))`` (exact for ``ald``'s fixed step; for the PC corrector, whose step is
  ``e = 2 r^2 (mean |z| / mean |s|)^2``, the self-consistent step gives ``N(m, v (1 + r^2))``, checked within
  standard errors);
* (e) the semilinear probability flow (``probability_flow_semilinear(...).as_ode()``) is the probability-flow ODE;
* (f) the EMA of the parameters is the closed-form weighted sum of their history (Tensorflow's warm-up rule).

References: Ho, Jain & Abbeel (2020), DDPM, eq. 6–7 (posterior ``q(x_{t-1} | x_t, x_0)``; in the ``(alpha, sigma)``
notation of Kingma, Salimans, Poole & Ho (2021), VDM, Appendix A); Song, Meng & Ermon (2021), DDIM, eq. 12 and 16;
Lu et al. (2022b), DPM-Solver++, §4 (the noise ``sigma_s sqrt(1 - e^{-2h})`` of the first-order SDE step);
Song et al. (2021), ICLR, Alg. 5 (PC sampler); Roberts & Tweedie (1996), Bernoulli 2(4) (unadjusted Langevin);
Polyak & Juditsky (1992) and tf.train.ExponentialMovingAverage (``num_updates``) for the EMA.
"""

import math

import numpy as np
import pytest
import torch

import sdekit
from diffusion import VESDE, VPSDE, Ancestral, AnnealedLangevin, GaussianMixture, PredictorCorrector, SubVPSDE, TimeGrid, sample
from diffusion.reverse import probability_flow, probability_flow_semilinear, reverse_sde
from diffusion.sampling import CHAINS
from diffusion.sdes import standard_normals
from diffusion.training import EMA

MU, V0 = 0.7, 0.25  # data N(MU, V0) in every dimension
GAUSS_1D = GaussianMixture([1.0], [[MU]], [[[V0]]])
GAUSS_2D = GaussianMixture([1.0], [[MU, MU]], [np.diag([V0, V0])])
SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}


def marginal(sde, t):
    """``(alpha_t, sigma_t, v_t)``: the forward coefficients and the variance of p_t."""
    alpha, sigma = float(sde.alpha(t)), float(sde.sigma(t))
    return alpha, sigma, alpha * alpha * V0 + sigma * sigma


def exact_score(sde, t, x):
    alpha, _, v = marginal(sde, t)
    return -(x - alpha * MU) / v


# --------------------------------------------------------------------------- (a) DDIM(eta) / DDPM laws
def ddim_step(sde, t, s, eta):
    """``(A, D)`` of DDIM's step ``u_s = A u_t + D z`` on Gaussian data, in the log-SNR form.

    With ``h = lambda_s - lambda_t`` (``lambda = log(alpha / sigma)``) the posterior variance of Song et al.'s
    eq. 16 at eta = 1 is ``sigma_s^2 (1 - e^{-2h})``, so the noise is ``eta sigma_s sqrt(1 - e^{-2h})`` and the
    eps-direction weight ``sqrt(sigma_s^2 - noise^2)``; ``x0_hat - MU = alpha_t V0 u / v_t``, ``eps_hat = sigma_t u / v_t``.
    """
    alpha_t, sigma_t, v_t = marginal(sde, t)
    alpha_s, sigma_s, _ = marginal(sde, s)
    h = math.log(alpha_s / sigma_s) - math.log(alpha_t / sigma_t)
    noise = eta * sigma_s * math.sqrt(-math.expm1(-2.0 * h))
    gain = (alpha_s * alpha_t * V0 + math.sqrt(sigma_s**2 - noise**2) * sigma_t) / v_t
    return gain, noise


def ddpm_step(sde, t, s):
    """``(a, b, D)``: DDPM's step ``x_s = a x_t + b x0_hat + D z``, the posterior q(x_s | x_t, x0) of Ho et al. eq. 7.

    ``a = alpha_{t|s} sigma_s^2 / sigma_t^2``, ``b = alpha_s sigma_{t|s}^2 / sigma_t^2``,
    ``D^2 = sigma_{t|s}^2 sigma_s^2 / sigma_t^2``, with ``alpha_{t|s} = alpha_t / alpha_s`` and
    ``sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2`` (Kingma et al. 2021, Appendix A).
    """
    alpha_t, sigma_t, _ = marginal(sde, t)
    alpha_s, sigma_s, _ = marginal(sde, s)
    alpha_ts = alpha_t / alpha_s
    var_ts = sigma_t**2 - alpha_ts**2 * sigma_s**2
    return alpha_ts * sigma_s**2 / sigma_t**2, alpha_s * var_ts / sigma_t**2, math.sqrt(var_ts * sigma_s**2) / sigma_t


def tweedie_mean(sde, t, x):
    """``E[x_0 | x_t]`` on Gaussian data: ``MU + alpha_t V0 (x - alpha_t MU) / v_t`` (the Gaussian posterior mean)."""
    alpha, _, v = marginal(sde, t)
    return MU + alpha * V0 * (x - alpha * MU) / v


def chain_law(chain, sde, times, options, start_mean, start_var):
    """Exact mean and variance of a chain's output on data N(MU, V0) from x_T ~ N(start_mean, start_var).

    The exact score is affine, so the output is c + b0 x_T + sum_j b_j z_j: read off with x_T = 0 / 1 and unit normals."""
    draws = 0
    rows = 2 + 64  # room for 64 normals (more than any chain here draws)

    def noise():
        nonlocal draws
        draws += 1
        z = np.zeros((rows, 1))
        z[1 + draws] = 1.0
        return z

    x = np.zeros((rows, 1))
    x[1] = 1.0
    out, _ = CHAINS[chain](sde, GAUSS_1D.score_fn(sde), np.asarray(times, dtype=float), x, noise, options, lambda state: None)
    assert draws <= rows - 2
    c, b = out[0, 0], out[1:, 0] - out[0, 0]
    return c + b[0] * start_mean, b[0] ** 2 * start_var + float(np.sum(b[1:] ** 2))


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_ddim_law_matches_the_posterior_moment_recursion(sde_name, eta):
    """DDIM(eta)'s output law on Gaussian data equals the moment recursion of its steps (1e-10), on a logsnr grid."""
    sde = SDES[sde_name]
    times = TimeGrid(sde, "logsnr").times(7)
    start_mean, start_var = 0.3, 1.7
    mean, var = chain_law("ddim", sde, times, Ancestral(eta=eta), start_mean, start_var)
    u_mean, u_var = start_mean - marginal(sde, times[0])[0] * MU, start_var
    for t, s in zip(times[:-1], times[1:], strict=True):
        gain, noise = ddim_step(sde, float(t), float(s), eta)
        u_mean, u_var = gain * u_mean, gain**2 * u_var + noise**2
    alpha_eps = marginal(sde, times[-1])[0]
    np.testing.assert_allclose([mean, var], [alpha_eps * MU + u_mean, u_var], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_ddpm_law_matches_the_ddpm_posterior(sde_name):
    """eta = 1 is DDPM: the law follows Ho et al.'s posterior q(x_s | x_t, x0_hat) step by step (1e-10)."""
    sde = SDES[sde_name]
    times = TimeGrid(sde, "uniform").times(6)
    mean, var = 0.3, 1.7
    for t, s in zip(times[:-1], times[1:], strict=True):
        a, b, noise = ddpm_step(sde, float(t), float(s))
        alpha_t, _, v_t = marginal(sde, float(t))
        slope = a + b * alpha_t * V0 / v_t  # d x_s / d x_t through x0_hat
        mean = a * mean + b * tweedie_mean(sde, float(t), mean)
        var = slope**2 * var + noise**2
    np.testing.assert_allclose(chain_law("ddim", sde, times, Ancestral(eta=1.0), 0.3, 1.7), [mean, var], rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- (b) sample() on its own normals
N_PATHS, DIM, STEPS, SEED = 5, 2, 6, 17


def drawn_normals(seed, count):
    """The chains' normals: stream 2, 3, ... of ``seed`` in the order drawn (diffusion.sampling._run_chain)."""
    return [standard_normals(seed, 2 + j, N_PATHS, DIM) for j in range(count)]


def grid_steps(times):
    return [(float(t), float(s)) for t, s in zip(times[:-1], times[1:], strict=True)]


def expected_ddpm(sde, run, x):
    for z, (t, s) in zip(drawn_normals(SEED, len(run.times) - 1), grid_steps(run.times), strict=True):
        a, b, noise = ddpm_step(sde, t, s)
        x = a * x + b * tweedie_mean(sde, t, x) + noise * z
    return x


def expected_ddim(sde, run, x, eta):
    for z, (t, s) in zip(drawn_normals(SEED, len(run.times) - 1), grid_steps(run.times), strict=True):
        gain, noise = ddim_step(sde, t, s, eta)
        x = marginal(sde, s)[0] * MU + gain * (x - marginal(sde, t)[0] * MU) + noise * z
    return x


def reverse_euler_step(sde, t, h, x, dw):
    """``x + h (f x - g^2 s) + g dw``: Euler–Maruyama of the reverse SDE (``h < 0``; Song et al. 2021, eq. 6)."""
    g2 = float(sde.g2(t))
    return x + h * (float(sde.f(t)) * x - g2 * exact_score(sde, t, x)) + math.sqrt(g2) * dw


def expected_pc(sde, run, x, snr):
    """Song et al. (2021), Alg. 5: one corrector step ``x + e s + sqrt(2e) z`` with
    ``e = 2 (alpha_t / alpha_s)^2 (snr mean|z| / mean|s|)^2`` (norms averaged over the batch), then the predictor."""
    normals = drawn_normals(SEED, 2 * (len(run.times) - 1))
    for k, (t, s) in enumerate(grid_steps(run.times)):
        z_corrector, z_predictor = normals[2 * k], normals[2 * k + 1]
        score = exact_score(sde, t, x)
        ratio = snr * np.linalg.norm(z_corrector, axis=1).mean() / np.linalg.norm(score, axis=1).mean()
        step = 2.0 * (marginal(sde, t)[0] / marginal(sde, s)[0]) ** 2 * ratio**2
        x = x + step * score + math.sqrt(2.0 * step) * z_corrector
        x = reverse_euler_step(sde, t, s - t, x, math.sqrt(t - s) * z_predictor)
    return x


def expected_euler_maruyama(sde, run, x):
    """On the increments of the run's Brownian path along the decreasing grid, ``W(s) - W(t)``."""
    w = run.solution.brownian.W(np.asarray(run.times, dtype=float))
    for k, (t, s) in enumerate(grid_steps(run.times)):
        x = reverse_euler_step(sde, t, s - t, x, w[k + 1] - w[k])
    return x


AFFINE_CASES = {"ddpm": ("ddpm", {}, expected_ddpm),
                "ddim-eta0.3": ("ddim", {"eta": 0.3}, lambda sde, run, x: expected_ddim(sde, run, x, 0.3)),
                "pc-snr0.3": ("pc", {"snr": 0.3}, lambda sde, run, x: expected_pc(sde, run, x, 0.3)),
                "euler_maruyama": ("euler_maruyama", {}, expected_euler_maruyama)}


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("case", list(AFFINE_CASES))
def test_sample_takes_the_exact_affine_steps_on_its_normals(sde_name, case):
    """sample() (numpy backend) equals the step of each method written here, on the normals / path it drew (1e-10)."""
    sde = SDES[sde_name]
    method, keywords, expected_of = AFFINE_CASES[case]
    x_T = sde.prior_sample(N_PATHS, DIM, seed=3)
    run = sample(sde, GAUSS_2D.score_fn(sde), N_PATHS, method=method, steps=STEPS, grid="uniform", x_T=x_T, seed=SEED,
                 denoise=False, backend="numpy", **keywords)
    expected = expected_of(sde, run, x_T)
    np.testing.assert_allclose(run.x, expected, rtol=0, atol=1e-10 * max(1.0, float(np.abs(expected).max())))


# --------------------------------------------------------------------------- (c) strong order of the reverse SDE
def exact_reverse_flow(sde, x_T, brownian, fine_steps):
    """The reverse SDE's exact solution at eps on ``brownian``: ``Phi(eps, T) u_T + sum psi(r_mid) dW`` over a fine
    decreasing grid (``psi(r) = Phi(eps, r) g(r)``; the deterministic integrand makes the midpoint sum's error
    ``O(1 / fine_steps)`` per path)."""
    T, eps = sde.T, sde.eps

    def carried(r):  # v_r / alpha_r, so Phi(eps, r) = carried(eps) / carried(r)
        alpha, _, v = marginal(sde, r)
        return v / alpha

    r = np.linspace(T, eps, fine_steps + 1)
    w = brownian.W(r)
    mid = 0.5 * (r[:-1] + r[1:])
    psi = np.array([carried(eps) / carried(m) * math.sqrt(float(sde.g2(m))) for m in mid])
    noise = np.einsum("k,kij->ij", psi, w[1:] - w[:-1])
    alpha_T, alpha_eps = marginal(sde, T)[0], marginal(sde, eps)[0]
    return alpha_eps * MU + carried(eps) / carried(T) * (x_T - alpha_T * MU) + noise


STRONG_STEPS = (64, 128, 256, 512, 1024)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_the_reverse_sde_noise_is_g_at_every_state(sde_name):
    """Additive noise ``g(t)`` whatever the state, zeros and huge values included (a data point at the origin is a
    state like any other)."""
    sde = SDES[sde_name]
    problem = reverse_sde(GAUSS_2D.score_fn(sde))
    x = np.array([[0.0, 0.0], [0.0, -1e300], [2.5, 1e-300]])
    for t in (sde.eps, 0.3, sde.T):
        np.testing.assert_array_equal(np.broadcast_to(problem.diffusion(t, x, problem.params), x.shape),
                                      np.full(x.shape, math.sqrt(float(sde.g2(t)))))


@pytest.mark.parametrize("sde_name", list(SDES))
def test_reverse_sde_converges_at_strong_order_one_to_the_exact_flow(sde_name):
    """Euler–Maruyama (sample(), uniform grid) against the exact solution on the same Brownian path: the RMS error over
    32 paths falls like steps^-1 over 64 ... 1024 steps (fitted slope within 0.15 of 1; measured 1.00 to 1.03, errors
    3e-2 down to 2e-3; the exact flow's sum on 2^15 cells is within 3e-5 of its limit). A drift with 0.97 g^2 s
    stops converging at 2e-2 (slope 0.1 to 0.3)."""
    sde = SDES[sde_name]
    n = 32
    x_T = sde.prior_sample(n, 1, seed=4)
    score = GAUSS_1D.score_fn(sde)
    errors, exact = [], None
    for steps in STRONG_STEPS:
        run = sample(sde, score, n, method="euler_maruyama", steps=steps, grid="uniform", x_T=x_T, seed=8, denoise=False,
                     backend="numpy")
        if exact is None:
            exact = exact_reverse_flow(sde, x_T, run.solution.brownian, 2**15)
        errors.append(math.sqrt(float(np.mean((run.x - exact) ** 2))))
    slope = -np.polyfit(np.log(STRONG_STEPS), np.log(errors), 1)[0]
    assert abs(slope - 1.0) < 0.15, (errors, slope)


# --------------------------------------------------------------------------- (d) Langevin steps: stationary laws
@pytest.mark.parametrize("sde_name", list(SDES))
def test_annealed_langevin_at_one_level_follows_the_ula_law(sde_name):
    """K unadjusted Langevin steps of size e at one time t: u' = (1 - e/v) u + sqrt(2e) z, so from N(m0, var0) the law is
    N(alpha MU + rho^K (m0 - alpha MU), w + rho^(2K) (var0 - w)) with rho = 1 - e/v and w = v / (1 - e / (2v)) (1e-10)."""
    sde, t, delta, K = SDES[sde_name], 0.5, 0.6, 12
    alpha, sigma, v = marginal(sde, t)
    mean, var = chain_law("ald", sde, [t], AnnealedLangevin(step_size=delta, corrector_steps=K), 0.3, 1.7)
    e = 0.5 * delta * sigma**2  # Song & Ermon (2019), Alg. 1: alpha_i / 2 with alpha_i = delta sigma_t^2
    rho, stationary = 1.0 - e / v, v / (1.0 - e / (2.0 * v))
    np.testing.assert_allclose([mean, var], [alpha * MU + rho**K * (0.3 - alpha * MU), stationary + rho ** (2 * K) * (1.7 - stationary)],
                               rtol=1e-10)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_pc_corrector_keeps_its_stationary_law(sde_name):
    """PC with 40 corrector steps at t on p_t = N(m, v), then one predictor step to s = t - 0.01.

    The step ``e = 2 r^2 (mean |z| / mean |s|)^2`` with ``s = -(x - m) / v``, ``x - m ~ N(0, w I)``: the chi factors
    of the two mean norms cancel, so ``e -> 2 r^2 v^2 / w``, and ULA's stationary variance ``w = v / (1 - e / (2v))``
    solves to ``w = v (1 + r^2)`` (r = 0.5: 1.25 v; a step half as large gives 1.125 v; the chain contracts by 0.6 a
    step). The Euler–Maruyama predictor ``x + h (f x - g^2 s) + g sqrt(-h) z`` then maps N(m, w) to
    ``N(m (1 + h f), (1 + h (f + g^2 / v))^2 w - g^2 h)``. On 20000 x 2 draws: mean and variance within 4.5 standard
    errors."""
    sde, t, snr, n, dim = SDES[sde_name], 0.4, 0.5, 20_000, 2
    s = t - 0.01
    alpha, _, v = marginal(sde, t)
    rng = np.random.default_rng(11)
    x = alpha * MU + math.sqrt(v) * rng.standard_normal((n, dim))
    out, _ = CHAINS["pc"](sde, GAUSS_2D.score_fn(sde), np.array([t, s]), x, lambda: rng.standard_normal((n, dim)),
                          PredictorCorrector(snr=snr, corrector_steps=40), lambda state: None)
    h, f, g2 = s - t, float(sde.f(t)), float(sde.g2(t))
    mean = alpha * MU * (1.0 + h * f)
    var = (1.0 + h * (f + g2 / v)) ** 2 * v * (1.0 + snr**2) - g2 * h
    count = n * dim
    assert abs(out.mean() - mean) < 4.5 * math.sqrt(var / count), (out.mean(), mean)
    assert abs(out.var() - var) < 4.5 * var * math.sqrt(2.0 / count), (out.var(), var)


# --------------------------------------------------------------------------- (e) the semilinear probability flow
@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("prediction", ["x0", "eps"])
def test_semilinear_probability_flow_is_the_probability_flow(sde_name, prediction):
    """``probability_flow_semilinear(score, prediction).as_ode()``: its rhs is ``f x - g^2 s / 2`` at random (t, x) (1e-12),
    and rk4 on it gives the probability_flow solve to round-off; both reach the exact flow
    ``u(eps) = sqrt(v_eps / v_T) u(T)`` (``du/dt = (dv/dt) u / (2 v)`` on Gaussian data) within rk4's error."""
    sde = SDES[sde_name]
    score = GAUSS_2D.score_fn(sde)
    semilinear = probability_flow_semilinear(score, prediction).as_ode()
    rng = np.random.default_rng(5)
    for t in rng.uniform(sde.eps, sde.T, 4):
        x = 3.0 * rng.standard_normal((6, 2))
        velocity = float(sde.f(t)) * x - 0.5 * float(sde.g2(t)) * exact_score(sde, t, x)
        np.testing.assert_allclose(semilinear.rhs(float(t), x, semilinear.params), velocity, rtol=1e-12,
                                   atol=1e-12 * np.abs(velocity).max())
    # the parts (Lu et al. 2022, DPM-Solver eq. 3.1 with eps; DPM-Solver++ eq. 9 with x0): x0 prediction has
    # A = log sigma_t, clock lambda_t = log(alpha_t / sigma_t) and D = E[x_0 | x_t]; eps prediction A = log alpha_t,
    # clock -lambda_t and D = E[eps | x_t] = (x - alpha_t E[x_0 | x_t]) / sigma_t
    form = probability_flow_semilinear(score, prediction)
    for t in rng.uniform(sde.eps, sde.T, 3):
        x = 3.0 * rng.standard_normal((6, 2))
        alpha, sigma, _ = marginal(sde, t)
        x0 = tweedie_mean(sde, t, x)
        log_factor, clock, nonlinear = ((math.log(sigma), math.log(alpha / sigma), x0) if prediction == "x0" else
                                        (math.log(alpha), -math.log(alpha / sigma), (x - alpha * x0) / sigma))
        assert float(form.log_factor(float(t), form.params)) == pytest.approx(log_factor, rel=1e-12, abs=1e-12)
        assert float(form.clock(float(t), form.params)) == pytest.approx(clock, rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(form.nonlinear(float(t), x, form.params), nonlinear, rtol=1e-11, atol=1e-12)
    x_T = sde.prior_sample(6, 2, seed=2)
    (alpha_T, _, v_T), (alpha_eps, _, v_eps) = marginal(sde, sde.T), marginal(sde, sde.eps)
    exact = alpha_eps * MU + math.sqrt(v_eps / v_T) * (x_T - alpha_T * MU)
    problems = {"semilinear": semilinear, "general": probability_flow(score)}
    solves = {(name, steps): sdekit.solve(problems[name], x_T, (sde.T, sde.eps), method="rk4", n_steps=steps, backend="numpy",
                                          save_at=[sde.eps]).x[-1]
              for name, steps in (("semilinear", 32), ("semilinear", 64), ("general", 64))}
    np.testing.assert_allclose(solves["semilinear", 64], solves["general", 64], rtol=1e-10, atol=1e-12)
    errors = [np.abs(solves["semilinear", steps] - exact).max() for steps in (32, 64)]
    assert abs(math.log2(errors[0] / errors[1]) - 4.0) < 0.4, errors  # rk4: 16x per halving (measured 3.7 to 4.1)


# --------------------------------------------------------------------------- (f) EMA
@pytest.mark.parametrize("warmup", [True, False])
def test_ema_is_the_closed_form_weighted_history(warmup):
    """After K updates the average is ``prod_k d_k theta_init + sum_j (1 - d_j) prod_{k>j} d_k theta_j`` with
    ``d_k = min(decay, (1 + k) / (10 + k))`` (warm-up: tf.train.ExponentialMovingAverage's num_updates rule) or
    ``d_k = decay`` (1e-12, float64); the weights sum to one, and buffers are copied."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).double()
    model.register_buffer("running", torch.zeros(2, dtype=torch.float64))
    decay, K = 0.5, 14  # warm-up: (1 + k) / (10 + k) < 0.5 for k < 8, then decay
    ema = EMA(model, decay=decay, warmup=warmup)
    history = [torch.cat([p.detach().flatten() for p in model.parameters()]).numpy().copy()]
    for _ in range(K):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p))
            model.running.copy_(torch.randn(2, dtype=torch.float64))
        history.append(torch.cat([p.detach().flatten() for p in model.parameters()]).numpy().copy())
        ema.update()
    d = np.array([min(decay, (1 + k) / (10 + k)) if warmup else decay for k in range(K)])
    weights = np.array([np.prod(d)] + [(1 - d[j]) * np.prod(d[j + 1:]) for j in range(K)])
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-14)
    averaged = torch.cat([p.flatten() for p in ema.module.parameters()]).numpy()
    np.testing.assert_allclose(averaged, weights @ np.array(history), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(ema.module.running.numpy(), model.running.numpy())

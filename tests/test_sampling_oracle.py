"""Every sampler against the exact Gaussian-mixture oracle: mode weights, sliced KS, guidance,
backend parity and the PF-ODE likelihood identity (Song et al. 2021, appendix D.2)."""

import math

import numpy as np
import pytest
import torch

import diffusion
from diffusion import VESDE, VPSDE, sample
from diffusion.demo import demo_mixture

N = 20_000
# Kolmogorov distribution of sqrt(n) D under the null: mean sqrt(pi/2) ln 2, standard deviation 0.2603
KS_MEAN, KS_SD = math.sqrt(math.pi / 2) * math.log(2), 0.2603


@pytest.fixture(scope="module")
def gm():
    """Three separated 2-D components with unequal weights and anisotropic covariances."""
    return demo_mixture()


VP, VE = VPSDE(), VESDE()

# method -> (sde, keyword arguments): step counts a user would pick for a good sample
SAMPLERS = {
    "euler_maruyama": (VP, dict(steps=400)),
    "euler_heun": (VP, dict(steps=400)),
    "milstein": (VP, dict(steps=400)),
    "sra1": (VP, dict(steps=100)),
    "sriw1": (VP, dict(steps=100)),
    "euler": (VP, dict(steps=200, grid="logsnr")),
    "heun": (VP, dict(steps=50, grid="logsnr")),
    "midpoint": (VP, dict(steps=50, grid="logsnr")),
    "rk4": (VP, dict(steps=25, grid="logsnr")),
    "dopri5": (VP, dict(rtol=1e-6, atol=1e-6)),
    "ddim": (VP, dict(steps=100, grid="logsnr")),
    "dpmpp_2m": (VP, dict(steps=25, grid="logsnr")),
    "dpmpp_3m": (VP, dict(steps=20, grid="logsnr", prediction="eps")),
    "exp_ab3": (VP, dict(steps=20, grid="logsnr")),
    "ddpm": (VP, dict(steps=1000)),
    "pc": (VE, dict(steps=400, snr=0.16)),
    # NCSN's setting: levels down to sigma = sigma_min = 0.01 (t = 0.0407), relative step 0.3 (Song & Ermon
    # 2019 use 0.2); annealed Langevin is slow to mix between modes, so it needs ~1,000 evaluations
    "ald": (VE, dict(steps=100, corrector_steps=10, step_size=0.3, grid="logsnr", eps=0.0407)),
}


@pytest.mark.parametrize("method", list(SAMPLERS))
def test_every_sampler_gets_the_mode_weights(gm, method):
    """Mode weights of 20,000 samples within 4 binomial standard errors of the mixture weights."""
    sde, kw = SAMPLERS[method]
    r = sample(sde, gm.score_fn(sde), N, method=method, seed=2, **kw)
    w = gm.mode_weights(r.x)
    se = np.sqrt(gm.weights * (1 - gm.weights) / N)
    assert np.all(np.abs(w - gm.weights) < 4 * se), (method, w, gm.weights)
    ks = gm.sliced_ks(r.x)
    # sliced KS of exact samples has mean KS_MEAN / sqrt(n); its spread over correlated slices is at most
    # KS_SD / sqrt(n); a sampler passes when it is within 4 of those of the floor
    assert ks < (KS_MEAN + 4 * KS_SD) / math.sqrt(N), (method, ks, KS_MEAN / math.sqrt(N))


def test_sliced_ks_noise_floor_of_exact_samples(gm):
    """The statistic itself: exact samples sit at the Kolmogorov mean sqrt(pi/2) ln 2 / sqrt(n) ~ 0.87/sqrt(n)."""
    floors = [gm.sliced_ks(gm.sample(N, seed=s)) * math.sqrt(N) for s in range(4)]
    assert abs(np.mean(floors) - KS_MEAN) < 4 * KS_SD / 2


def test_coarse_sampler_is_detected(gm):
    """The KS check can fail: Euler–Maruyama with 10 steps is visibly off."""
    r = sample(VP, gm.score_fn(VP), N, method="euler_maruyama", steps=10, seed=2)
    assert gm.sliced_ks(r.x) > (KS_MEAN + 4 * KS_SD) / math.sqrt(N)


# one sampler of each family (reverse SDE, exponential integrator, PF-ODE) and both minor components: every pair
# compiles its own guided score, so the six combinations would test nothing these three do not
@pytest.mark.parametrize("method,k", [("sra1", 1), ("dpmpp_2m", 2), ("rk4", 1)])
def test_classifier_guidance_with_scale_one_samples_the_component(gm, method, k):
    """Scale 1 adds grad log p(k | x) to the score: the guided law is component k alone (>= 99% of samples)."""
    score = diffusion.classifier_guidance(gm.score_fn(VP), gm.classifier_grad_fn(VP, k), 1.0)
    kw = {"sra1": dict(steps=100), "dpmpp_2m": dict(steps=25, grid="logsnr"), "rk4": dict(steps=25, grid="logsnr")}
    r = sample(VP, score, 4000, method=method, seed=3, **kw[method])
    assert gm.mode_weights(r.x)[k] >= 0.99


def test_classifier_free_guidance(gm):
    """w = 0 is the conditional score; w > 0 stays on the class."""
    cond, uncond = gm.class_score_fn(VP, 2), gm.score_fn(VP)
    x = np.random.default_rng(0).normal(size=(5, 2))
    g0 = diffusion.classifier_free_guidance(cond, uncond, 0.0)
    np.testing.assert_allclose(g0.score(x, 0.3), cond.score(x, 0.3), rtol=1e-13)
    g2 = diffusion.classifier_free_guidance(cond, uncond, 2.0)
    np.testing.assert_allclose(g2.score(x, 0.3), 3 * cond.score(x, 0.3) - 2 * uncond.score(x, 0.3), rtol=1e-12)
    r = sample(VP, g2, 4000, method="sra1", steps=100, seed=4)
    assert gm.mode_weights(r.x)[2] >= 0.99


@pytest.mark.parametrize("method,kw", [("sra1", dict(steps=32)), ("rk4", dict(steps=16, grid="karras")),
                                       ("dpmpp_2m", dict(steps=16, grid="logsnr"))])
def test_numba_and_torch_backends_agree(gm, method, kw):
    """Same seed, same samples: the reverse SDE by sra1 and the PF-ODE by rk4 on both backends."""
    a = sample(VP, gm.score_fn(VP), 300, method=method, seed=6, backend="numba", **kw)
    b = sample(VP, gm.score_fn(VP), 300, method=method, seed=6, backend="torch", **kw)
    np.testing.assert_allclose(a.x, b.x.numpy(), rtol=1e-10, atol=1e-12)
    assert a.nfe == b.nfe
    c = sample(VP, gm.score_fn(VP), 300, method=method, seed=6, backend="torch", dtype=torch.float32, **kw)
    assert c.x.dtype == torch.float32
    assert np.max(np.abs(c.x.numpy() - a.x)) < 1e-3


# --------------------------------------------------------------------------- likelihood
def test_likelihood_identity_with_exact_divergence_and_prior(gm):
    """log p_eps(x) by the PF-ODE with exact divergence and exact p_T equals the mixture density to 1e-6 nats."""
    x = gm.diffused(VP, VP.eps).sample(40, seed=1)
    exact = gm.log_prob(x, VP.eps, VP)
    prior_T = lambda y: gm.log_prob(y, VP.T, VP)  # noqa: E731
    r = diffusion.log_likelihood(VP, gm.score_fn(VP), x, divergence=gm.divergence_fn(VP), prior=prior_T,
                                 rtol=1e-10, atol=1e-10)
    assert np.max(np.abs(r.log_prob - exact)) < 1e-6
    # the same through autograd on torch (a subset: D backward passes per evaluation)
    r2 = diffusion.log_likelihood(VP, gm.score_fn(VP), x[:8], divergence="exact", prior=prior_T,
                                  rtol=1e-10, atol=1e-10)
    assert np.max(np.abs(r2.log_prob - exact[:8])) < 1e-6
    # the standard prior N(0, I) instead of p_T: a small bias (alpha_T = 6.7e-3), not zero
    r3 = diffusion.log_likelihood(VP, gm.score_fn(VP), x, divergence=gm.divergence_fn(VP), rtol=1e-8, atol=1e-8)
    assert 1e-6 < np.max(np.abs(r3.log_prob - exact)) < 0.1


def test_hutchinson_estimate_is_within_its_standard_errors(gm):
    x = gm.diffused(VP, VP.eps).sample(20, seed=2)
    exact = gm.log_prob(x, VP.eps, VP)
    prior_T = lambda y: gm.log_prob(y, VP.T, VP)  # noqa: E731
    for probe in ("rademacher", "gaussian"):
        r = diffusion.log_likelihood(VP, gm.score_fn(VP), x, divergence="hutchinson", n_probes=16, probe=probe,
                                     prior=prior_T, rtol=1e-7, atol=1e-8, seed=3)
        assert r.stderr is not None and np.all(r.stderr > 0)
        z = (r.log_prob - exact) / r.stderr
        assert np.max(np.abs(z)) < 4.5, (probe, z)  # 20 points: P(any |z| > 4.5) < 2e-4 for normal errors


def test_bits_per_dim_and_dequantisation():
    k = np.array([[0, 255, 17]])
    x, w = diffusion.dequantize(k, bins=256, seed=1)
    assert w == pytest.approx(2 / 256)
    assert np.all((x >= -1 + k * w) & (x < -1 + (k + 1) * w))
    # uniform density on [-1, 1]^3: log p = -3 log 2; bpd of the uniform over 256 bins is exactly 8
    assert diffusion.bits_per_dim(np.array([-3 * math.log(2)]), 3, bin_width=w)[0] == pytest.approx(8.0)
    with pytest.raises(ValueError, match="integers"):
        diffusion.dequantize(np.array([256]))


def test_likelihood_errors(gm):
    with pytest.raises(ValueError, match="divergence"):
        diffusion.log_likelihood(VP, gm.score_fn(VP), np.zeros((2, 2)), divergence="trace")
    with pytest.raises(ValueError, match="prior"):
        diffusion.log_likelihood(VP, gm.score_fn(VP), np.zeros((2, 2)), prior="gaussian")
    with pytest.raises(ValueError, match="NaN"):
        diffusion.log_likelihood(VP, gm.score_fn(VP), np.full((2, 2), np.nan))


def test_likelihood_defaults_reach_their_tolerance_and_count_probes(gm):
    """With its default tolerances (rtol 1e-6, atol 1e-8) the PF-ODE log-likelihood with the exact divergence and
    prior is within 1e-4 nats of the mixture's, for a single point too; a Hutchinson estimate needs a probe."""
    x = gm.diffused(VP, VP.eps).sample(10, seed=2)
    prior_T = lambda y: gm.log_prob(y, VP.T, VP)  # noqa: E731
    r = diffusion.log_likelihood(VP, gm.score_fn(VP), x, divergence=gm.divergence_fn(VP), prior=prior_T)
    assert np.max(np.abs(r.log_prob - gm.log_prob(x, VP.eps, VP))) < 1e-4
    one = diffusion.log_likelihood(VP, gm.score_fn(VP), x[:1], divergence=gm.divergence_fn(VP), prior=prior_T)
    assert abs(one.log_prob[0] - gm.log_prob(x[:1], VP.eps, VP)[0]) < 1e-4  # a single point is a data set
    # the record: log p = prior + delta (the integrated divergence), one column per probe (none with one)
    assert r.delta.shape == (10,) and r.stderr is None
    np.testing.assert_allclose(r.log_prob, r.prior_log_prob + r.delta, rtol=1e-13)
    with pytest.raises(ValueError, match="n_probes"):
        diffusion.log_likelihood(VP, gm.score_fn(VP), x, divergence="hutchinson", n_probes=0)

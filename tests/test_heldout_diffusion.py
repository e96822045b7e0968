"""Held-out checks of the diffusion front end: configurations the other tests do not cover (VE with T != 1,
guidance across processes, the seed/batch-split promise and exact NFE accounting on sub-VP and VE, at 1-3 steps).
Everything runs on the NumPy backend (no compilation) and is checked against the exact Gaussian-mixture oracle."""

import math

import numpy as np
import pytest

import diffusion
from diffusion import METHODS, VESDE, VPSDE, GaussianMixture, Score, SubVPSDE, sample


@pytest.fixture(scope="module")
def gm():
    """Two 1-D components with unequal weights and variances."""
    return GaussianMixture([0.3, 0.7], [[-1.0], [1.0]], [0.2, 0.3])


@pytest.mark.parametrize("T", [0.5, 0.8])
def test_ve_prior_is_the_marginal_at_T(gm, T):
    """VESDE(T) samples from N(0, sigma(T)^2), sigma(T) = sigma_min (sigma_max/sigma_min)^T (Song et al. 2021):
    the exact p_T of zero-mean data of variance v has variance v + sigma(T)^2 - sigma_min^2, so the prior matches
    p_T to relative (v + sigma_min^2) / sigma(T)^2; a prior of sigma_max = 50 at T = 0.5 (sigma(T) = 0.71) is not p_T."""
    sde = VESDE(T=T)
    sigma_T = sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** T
    assert sde.prior_std == pytest.approx(sigma_T, rel=1e-12)
    assert float(sde.sigma(T)) == pytest.approx(math.sqrt(sigma_T**2 - sde.sigma_min**2), rel=1e-12)


def test_ve_sampling_from_T_below_one(gm):
    """At T = 0.8 (sigma(T) = 9.1, data variance ~1, so the prior is p_T to ~1%) the samples reach the data:
    mode weights within 4 binomial standard errors (with the sigma_max = 50 prior they did not)."""
    sde = VESDE(T=0.8)
    n = 4000
    r = sample(sde, gm.score_fn(sde), n, method="sra1", steps=100, seed=1, backend="numpy")
    se = np.sqrt(gm.weights * (1 - gm.weights) / n)
    assert np.all(np.abs(gm.mode_weights(r.x) - gm.weights) < 4 * se), gm.mode_weights(r.x)


def test_ve_default_prior_unchanged():
    assert VESDE().prior_std == 50.0 and VESDE(sigma_max=20.0).prior_std == 20.0


def test_guidance_refuses_scores_of_different_processes(gm):
    """Each score's kernel reads its own SDE's coefficients: a combination over two VP schedules is the score of
    neither process (it was accepted, as the same SDE class)."""
    a, b = VPSDE(), VPSDE(beta_max=10.0)
    with pytest.raises(ValueError, match="same diffusion SDE"):
        diffusion.classifier_free_guidance(gm.class_score_fn(a, 0), gm.score_fn(b), 1.0)
    with pytest.raises(ValueError, match="same diffusion SDE"):
        diffusion.classifier_guidance(gm.score_fn(a), gm.classifier_grad_fn(b, 0), 1.0)
    # an equal process built twice is fine
    diffusion.classifier_guidance(gm.score_fn(a), gm.classifier_grad_fn(VPSDE(), 0), 1.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "x"])
def test_guidance_scale_must_be_finite(gm, bad):
    sde = VPSDE()
    with pytest.raises(ValueError, match="`scale` must be a finite number"):
        diffusion.classifier_guidance(gm.score_fn(sde), gm.classifier_grad_fn(sde, 0), bad)
    with pytest.raises(ValueError, match="`weight` must be a finite number"):
        diffusion.classifier_free_guidance(gm.class_score_fn(sde, 0), gm.score_fn(sde), bad)


def test_guidance_scale_zero_is_the_unguided_score(gm):
    sde = VPSDE()
    x = gm.sample(7, seed=3)
    g = diffusion.classifier_guidance(gm.score_fn(sde), gm.classifier_grad_fn(sde, 1), 0.0)
    np.testing.assert_allclose(g(x, 0.4), gm.score(x, 0.4, sde), rtol=1e-13, atol=1e-13)
    cfg = diffusion.classifier_free_guidance(gm.class_score_fn(sde, 1), gm.score_fn(sde), 0.0)
    np.testing.assert_allclose(cfg(x, 0.4), gm.class_score(x, 0.4, sde, k=1), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "pc"])
def test_same_seed_first_samples_do_not_depend_on_n(gm, method):
    """The documented promise: the first m of n samples are the m samples drawn alone (all methods but pc)."""
    sde = SubVPSDE()
    kw = {"corrector_steps": 2} if method == "ald" else {}
    a = sample(sde, gm.score_fn(sde), 6, method=method, steps=3, seed=7, backend="numpy", **kw).x
    b = sample(sde, gm.score_fn(sde), 2, method=method, steps=3, seed=7, backend="numpy", **kw).x
    np.testing.assert_array_equal(a[:2], b)


@pytest.mark.parametrize("sde", [SubVPSDE(), VESDE()], ids=["subvp", "ve"])
def test_nfe_is_the_number_of_score_calls(gm, sde):
    """Samples.nfe against a counting wrapper (full-batch calls; the entry checks probe 3 of the 5 rows),
    at 1 and 3 steps on the uniform and Karras grids."""
    kern, params = gm.kernel("score", sde)
    n, calls = 5, [0]

    def fn(t, x, p):
        calls[0] += x.shape[0] == n
        return kern(t, x, p)

    score = Score(fn, sde, params=params, dim=1, backends=("numpy",))
    for method in METHODS:
        if method == "dopri5":
            continue  # adaptive per-path steps: evaluations are on the rows still running
        for grid in ("uniform", "karras"):
            for steps in (1, 3):
                calls[0] = 0
                r = sample(sde, score, n, method=method, steps=steps, grid=grid, seed=1, backend="numpy")
                assert r.nfe == calls[0], (method, grid, steps, r.nfe, calls[0])


@pytest.mark.parametrize("method, option", [("sra1", {"snr": 0.3}), ("heun", {"step_size": 0.2}),
                                            ("ddpm", {"corrector_steps": 3}), ("ddim", {"rho": 3.0}),
                                            ("rk4", {"rtol": 1e-8}), ("dpmpp_2m", {"atol": 1e-8})])
def test_options_the_method_ignores_are_refused(gm, method, option):
    """snr/step_size/corrector_steps/rho/rtol/atol were silently ignored by the methods and grids that do not read
    them (sample(method='rk4', rtol=1e-8) is not more accurate); a one-line ValueError names the option."""
    sde = VPSDE()
    name = next(iter(option))
    with pytest.raises(ValueError, match=f"`{name}` applies to"):
        sample(sde, gm.score_fn(sde), 3, method=method, steps=2, backend="numpy", **option)
    # where they apply they are accepted
    ok = {"snr": "pc", "step_size": "ald", "corrector_steps": "pc", "rtol": "dopri5", "atol": "dopri5"}
    kw = {"grid": "karras"} if name == "rho" else {}
    sample(sde, gm.score_fn(sde), 3, method=ok.get(name, method), steps=2, backend="numpy", **kw, **option)

"""diffusion.sample with the adaptive reverse SDE: per-sample steps through sdekit.solve(rtol=, atol=)."""

import numpy as np
import pytest

import diffusion as df

MEAN, VAR = 1.5, 0.04  # the data law N(MEAN, VAR): its score is exact at every t


def _exact_start(sde, n, seed):
    """x_T drawn from the exact marginal p_T = N(alpha_T MEAN, alpha_T^2 VAR + sigma_T^2) (not the N(0, 1) prior), so
    that the exact reverse SDE ends in the exact marginal at eps."""
    a, s = float(sde.alpha(sde.T)), float(sde.sigma(sde.T))
    z = np.random.default_rng(seed).standard_normal((n, 1))
    return a * MEAN + np.sqrt(a * a * VAR + s * s) * z


def test_adaptive_reverse_sde_reproduces_the_gaussian_marginal():
    sde = df.VPSDE(eps=1e-4)
    score = df.GaussianMixture([1.0], [[MEAN]], [VAR]).score_fn(sde)
    n = 300
    r = df.sample(sde, score, n, method="sra1", rtol=1e-2, atol=1e-2, x_T=_exact_start(sde, n, 0), denoise=False,
                  backend="numpy", seed=1)
    # the exact law at eps: N(alpha MEAN, alpha^2 VAR + sigma^2)
    a, s = float(sde.alpha(sde.eps)), float(sde.sigma(sde.eps))
    mean, var = a * MEAN, a * a * VAR + s * s
    x = r.x[:, 0]
    assert abs(x.mean() - mean) < 4 * np.sqrt(var / n)
    assert abs(x.var(ddof=1) - var) < 4 * var * np.sqrt(2 / (n - 1))
    # per-sample steps: the evaluations differ between samples; nfe is their rounded mean
    per = r.nfe_per_sample
    assert per.shape == (n,) and per.dtype == np.int64
    assert per.min() < per.max()
    assert r.nfe == round(per.mean())
    np.testing.assert_array_equal(per, r.solution.drift_evals_per_path)  # denoise=False: no final evaluation
    assert r.times.tolist() == [sde.T, sde.eps]


def test_fixed_steps_without_tolerances_and_bad_input():
    sde = df.VPSDE()
    score = df.GaussianMixture([1.0], [[MEAN]], [VAR]).score_fn(sde)
    fixed = df.sample(sde, score, 8, method="sra1", steps=10, backend="numpy")
    assert fixed.options is None and fixed.nfe == 21 and np.all(fixed.nfe_per_sample == 21)
    with pytest.raises(ValueError, match=r"`rtol` applies to the adaptive methods"):
        df.sample(sde, score, 8, method="heun", rtol=1e-3, backend="numpy")
    with pytest.raises(ValueError, match=r"sra1 with `rtol`/`atol` chooses its own steps per sample; drop `steps`/`nfe`"):
        df.sample(sde, score, 8, method="sra1", rtol=1e-3, steps=10, backend="numpy")

"""The exact Gaussian-mixture oracle: densities, scores, Laplacians, Tweedie, class terms, sampling, backends.

Tolerances: the closed forms and the references (scipy, autograd, numpy.linalg)
compute the same float64 quantities by different algebra, so they differ by
rounding only (~1e-15 relative per operation, amplified by the covariances'
condition numbers, here <= ~1e2). The tolerances below (1e-9 .. 1e-12) sit
well above that and far below any modelling error (a wrong term in a formula
shows up at 1e-3 or worse). Statistical checks are seeded, so they are
deterministic; their bounds are the usual 4 standard errors.
"""

import math

import numba
import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from diffusion import VESDE, VPSDE, SubVPSDE, classifier_guidance
from diffusion.oracle import GaussianMixture
from diffusion.score import params_like

SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE(), "vp-cosine": VPSDE(schedule="cosine")}
TIMES = (1e-3, 0.1, 0.5, 0.9)


def make_mixture(dim, kind, k=3, seed=0, spread=2.0):
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.5, 1.5, k)
    means = spread * rng.normal(size=(k, dim))
    if kind == "full":
        a = rng.normal(size=(k, dim, dim))
        covs = a @ a.transpose(0, 2, 1) / dim + 0.2 * np.eye(dim)
    elif kind == "diag":
        covs = rng.uniform(0.2, 1.5, (k, dim))
    else:
        covs = rng.uniform(0.2, 1.5, k)
    return GaussianMixture(weights, means, covs)


def scipy_log_prob(weights, means, covs, x):
    comps = [np.log(w) + stats.multivariate_normal(m, c).logpdf(x).reshape(-1) for w, m, c in zip(weights, means, covs, strict=True)]
    return logsumexp(np.stack(comps), axis=0)


def points(gm, sde, t, n=8, seed=3):
    """Typical points of p_t plus far-out ones (tails exercise the online log-sum-exp)."""
    x = gm.sample(n, seed=seed) if t is None else gm.diffused(sde, t).sample(n, seed=seed)
    return np.concatenate([x, 4.0 * x])


def close(a, b, rtol):
    """Agreement relative to the overall scale of the reference."""
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * (1.0 + np.abs(b).max()))


# --------------------------------------------------------------------------- densities
@pytest.mark.parametrize("dim", [1, 2, 5])
@pytest.mark.parametrize("kind", ["full", "diag", "iso"])
def test_log_prob_matches_scipy(dim, kind):
    gm = make_mixture(dim, kind)
    x = points(gm, None, None)
    np.testing.assert_allclose(gm.log_prob(x), scipy_log_prob(gm.weights, gm.means, gm.covs, x), rtol=1e-12, atol=1e-12)
    for name, sde in SDES.items():
        for t in (0.1, 0.7):
            a, s = float(sde.alpha(t)), float(sde.sigma(t))
            ref = scipy_log_prob(gm.weights, a * gm.means, a * a * gm.covs + s * s * np.eye(dim), x)
            np.testing.assert_allclose(gm.log_prob(x, t, sde), ref, rtol=1e-12, atol=1e-12, err_msg=name)
            # the diffused mixture refactors C_k from scratch: rounding only
            np.testing.assert_allclose(gm.diffused(sde, t).log_prob(x), gm.log_prob(x, t, sde), rtol=1e-11, atol=1e-11)


def test_attributes_and_input_forms():
    gm = GaussianMixture([2.0, 6.0], [[0.0, 1.0], [2.0, 3.0]], [1.0, 4.0])
    assert (gm.dim, gm.n_components) == (2, 2)
    np.testing.assert_allclose(gm.weights, [0.25, 0.75])
    np.testing.assert_allclose(gm.covs[1], 4.0 * np.eye(2))
    assert gm.covs.dtype == np.float64 and gm.means.dtype == np.float64
    diag = GaussianMixture([1.0, 3.0], gm.means, [[1.0, 1.0], [4.0, 4.0]])
    x = np.random.default_rng(0).normal(size=(5, 2))
    np.testing.assert_allclose(diag.log_prob(x), gm.log_prob(x), rtol=1e-14)


# --------------------------------------------------------------------------- score and Laplacian vs autograd
@pytest.mark.parametrize("dim", [1, 2, 5])
@pytest.mark.parametrize("kind", ["full", "diag", "iso"])
@pytest.mark.parametrize("sde_name", list(SDES))
def test_score_and_laplacian_are_autograd_derivatives(sde_name, kind, dim):
    """score = grad log p_t and Laplacian = trace of the Hessian, by torch autograd on the float64 torch path."""
    sde, gm = SDES[sde_name], make_mixture(dim, kind, seed=dim)
    for t in (None, *TIMES):
        x_np = points(gm, sde, t)
        x = torch.tensor(x_np, requires_grad=True)
        (g,) = torch.autograd.grad(gm.log_prob(x, t, sde).sum(), x, create_graph=True)
        trace = sum(torch.autograd.grad(g[:, j].sum(), x, retain_graph=True)[0][:, j] for j in range(dim))
        close(gm.score(x_np, t, sde), g.detach().numpy(), 1e-9)
        close(gm.laplacian(x_np, t, sde), trace.detach().numpy(), 1e-9)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_divergence_kernel_is_divergence_of_pf_drift(sde_name):
    sde, gm = SDES[sde_name], make_mixture(3, "full")
    div, params = gm.divergence_fn(sde)
    for t in (0.05, 0.6):
        x = torch.tensor(points(gm, sde, t), requires_grad=True)
        drift = float(sde.f(t)) * x - 0.5 * float(sde.g2(t)) * gm.score(x, t, sde)
        ref = sum(torch.autograd.grad(drift[:, j].sum(), x, retain_graph=True)[0][:, j] for j in range(3))
        close(div(t, x.detach().numpy(), params), ref.detach().numpy(), 1e-9)


# --------------------------------------------------------------------------- Tweedie
@pytest.mark.parametrize("sde_name", list(SDES))
def test_tweedie(sde_name):
    sde, gm = SDES[sde_name], make_mixture(3, "full")
    for t in TIMES:
        x = points(gm, sde, t)
        a, s = float(sde.alpha(t)), float(sde.sigma(t))
        # (x + sigma^2 s)/alpha cancels when sigma >> |x0| (VE): 1e-9 covers it.
        close(gm.tweedie(x, t, sde), (x + s * s * gm.score(x, t, sde)) / a, 1e-9)
    close(gm.tweedie(x), x, 1e-13)  # t=None: x_0 is observed (U d/d U^T = I up to rounding)


def test_tweedie_single_gaussian_is_the_conditional_mean():
    rng = np.random.default_rng(4)
    a_ = rng.normal(size=(3, 3))
    cov, mu = a_ @ a_.T + 0.3 * np.eye(3), rng.normal(size=3)
    gm = GaussianMixture([1.0], mu[None], cov[None])
    x = rng.normal(size=(6, 3))
    for sde in SDES.values():
        for t in TIMES:
            a, s = float(sde.alpha(t)), float(sde.sigma(t))
            C = a * a * cov + s * s * np.eye(3)
            ref = mu + a * np.linalg.solve(C, (x - a * mu).T).T @ cov  # mu + a Sigma C^-1 (x - a mu), Sigma symmetric
            close(gm.tweedie(x, t, sde), ref, 1e-11)


# --------------------------------------------------------------------------- class-conditional terms
@pytest.mark.parametrize("sde_name", list(SDES))
def test_class_scores(sde_name):
    sde, gm = SDES[sde_name], make_mixture(2, "full", k=3)
    for t in (None, 0.05, 0.5):
        x = points(gm, sde, t)
        w = gm.responsibilities(x, t, sde)
        np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-14)
        s = gm.score(x, t, sde)
        sk = [gm.class_score(x, t, sde, k) for k in range(3)]
        close(sum(w[:, k, None] * sk[k] for k in range(3)), s, 1e-10)
        a, sg = (1.0, 0.0) if t is None else (float(sde.alpha(t)), float(sde.sigma(t)))
        for k in range(3):
            C = a * a * gm.covs[k] + sg * sg * np.eye(2)
            close(sk[k], -np.linalg.solve(C, (x - a * gm.means[k]).T).T, 1e-11)
            close(gm.classifier_grad(x, t, sde, k), sk[k] - s, 1e-12)
            # grad_x log p_t(y=k | x) by autograd of the responsibilities' log
            xt = torch.tensor(x, requires_grad=True)
            (g,) = torch.autograd.grad(torch.log(gm.responsibilities(xt, t, sde)[:, k]).sum(), xt)
            close(gm.classifier_grad(x, t, sde, k), g.numpy(), 1e-9)


def test_score_objects_and_guidance():
    """score_fn / class_score_fn / classifier_grad_fn as diffusion.Score; guidance at scale 1 is the class score."""
    sde, gm = VPSDE(), make_mixture(2, "full")
    x, t = points(gm, sde, 0.3), 0.3
    close(gm.score_fn(sde).score(x, t), gm.score(x, t, sde), 1e-14)
    close(gm.score_fn(sde).x0(x, t), gm.tweedie(x, t, sde), 1e-10)
    assert gm.score_fn(sde).dim == 2
    guided = classifier_guidance(gm.score_fn(sde), gm.classifier_grad_fn(sde, 1), 1.0)
    close(guided.score(x, t), gm.class_score_fn(sde, 1).score(x, t), 1e-12)
    xt = torch.tensor(x, dtype=torch.float32)
    assert gm.score_fn(sde).score(xt, t).dtype == torch.float32


# --------------------------------------------------------------------------- backends
def test_backend_parity_numba_numpy_torch():
    """The same kernels compiled by Numba, on NumPy and on torch float64 agree to 1e-12; float32 to float32 accuracy.

    Numba takes 2-5 s to compile one kernel, so the file's time budget allows
    the three a compiled sampler runs (score; classifier_grad, which calls the
    class_score and score cores; divergence, which calls the laplacian core)
    by default; log_prob and tweedie are compiled in the ``slow`` test below.
    """
    check_backends(("score", "classifier_grad", "divergence"), numba_too=True)
    check_backends(("log_prob", "tweedie", "class_score", "laplacian"), numba_too=False)


@pytest.mark.slow
def test_backend_parity_numba_rest():
    check_backends(("log_prob", "tweedie"), numba_too=True)


def check_backends(names, numba_too):
    sde, gm = VPSDE(), make_mixture(3, "full", k=3)
    t, x = 0.2, np.ascontiguousarray(points(gm, sde, 0.2))
    xt, x32 = torch.tensor(x), torch.tensor(x, dtype=torch.float32)
    for name in names:
        kern, p = gm.kernel(name, sde, k=2)
        ref = kern(t, x, p)
        if numba_too:
            close(numba.njit(kern)(t, x, p), ref, 1e-12)
        close(kern(t, xt, params_like(p, xt)).numpy(), ref, 1e-12)
        got32 = kern(t, x32, params_like(p, x32))
        assert got32.dtype == torch.float32
        close(got32.numpy(), ref, 1e-4)  # float32 eps 1.2e-7 times condition numbers and D
    # the public methods run the same kernels
    if "score" in names:
        kern, p = gm.kernel("score", sde)
        np.testing.assert_array_equal(gm.score(x, t, sde), kern(t, x, p))


# --------------------------------------------------------------------------- sampling
def test_sample_weights_moments_and_reproducibility():
    n = 20_000
    gm = GaussianMixture([0.2, 0.5, 0.3], [[-8.0, 0.0], [0.0, 8.0], [8.0, 0.0]],
                         [[[1.0, 0.5], [0.5, 2.0]], [[1.0, 0.0], [0.0, 1.0]], [[0.5, -0.2], [-0.2, 0.7]]])
    x, labels = gm.sample(n, seed=7, return_labels=True)
    assert x.shape == (n, 2) and labels.shape == (n,)
    np.testing.assert_array_equal(gm.sample(n, seed=7), x)
    assert not np.array_equal(gm.sample(n, seed=8), x)
    se = np.sqrt(gm.weights * (1 - gm.weights) / n)  # binomial standard errors
    assert np.all(np.abs(np.bincount(labels, minlength=3) / n - gm.weights) < 4 * se)
    # components >= 5.6 standard deviations apart: the modes are the labels up to ~1e-8 misclassification
    assert np.all(np.abs(gm.mode_weights(x) - gm.weights) < 4 * se)
    np.testing.assert_allclose(gm.responsibilities(x).sum(axis=0) / n, gm.mode_weights(x), atol=1e-3)
    xk = x[labels == 0]
    m, S = gm.means[0], gm.covs[0]
    assert np.all(np.abs(xk.mean(axis=0) - m) < 4 * np.sqrt(np.diag(S) / len(xk)))
    # sample covariance entries: Var(S_ij) ~ (S_ii S_jj + S_ij^2) / n
    se_cov = np.sqrt((np.outer(np.diag(S), np.diag(S)) + S * S) / len(xk))
    assert np.all(np.abs(np.cov(xk.T) - S) < 4 * se_cov)


def test_projected_cdf_ks():
    """One-sample KS of projected exact samples against the exact projected CDF (data and diffused)."""
    n = 20_000
    gm = make_mixture(3, "full", k=3, seed=5)
    u = np.array([1.0, -2.0, 0.5])  # normalised by projected_cdf
    un = u / np.linalg.norm(u)
    # 5% critical value 1.36/sqrt(n), with 30% slack; with p > 1e-3 on top (deterministic: seeded)
    for t, sde in ((None, None), (0.3, SDES["vp"]), (0.2, SDES["ve"])):
        x = gm.sample(n, seed=11) if t is None else gm.diffused(sde, t).sample(n, seed=11)
        res = stats.kstest(x @ un, lambda z, t=t, sde=sde: gm.projected_cdf(z, u, t, sde))
        assert res.statistic < 1.3 * 1.36 / math.sqrt(n) and res.pvalue > 1e-3, (t, res)
    z = np.linspace(-30, 30, 7)
    cdf = gm.projected_cdf(z, u)
    assert cdf.shape == (7,) and np.all(np.diff(cdf) >= 0) and cdf[0] < 1e-12 and cdf[-1] > 1 - 1e-12


# --------------------------------------------------------------------------- errors
def test_errors():
    mu = np.zeros((2, 2))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([1.0, -1.0], mu, [1.0, 1.0])
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([1.0, np.nan], mu, [1.0, 1.0])
    with pytest.raises(ValueError, match="means"):
        GaussianMixture([1.0, 1.0], np.zeros((3, 2)), [1.0, 1.0])
    with pytest.raises(ValueError, match=r"`covs` of component 1 is not symmetric"):
        GaussianMixture([1.0, 1.0], mu, [np.eye(2), [[1.0, 0.5], [0.0, 1.0]]])
    with pytest.raises(ValueError, match=r"`covs` of component 0 is not positive definite"):
        GaussianMixture([1.0, 1.0], mu, [[[1.0, 2.0], [2.0, 1.0]], np.eye(2)])
    # numerically singular: the smallest eigenvalue within eigh's rounding error D eps lambda_max of zero
    with pytest.raises(ValueError, match=r"`covs` of component 1 is not positive definite \(smallest eigenvalue 1e-14\)"):
        GaussianMixture([1.0, 1.0], mu, [np.eye(2), np.diag([100.0, 1e-14])])
    GaussianMixture([1.0, 1.0], mu, [np.eye(2), np.diag([100.0, 1e-12])])  # 1e-12 > 2 eps 100 = 4.4e-14: accepted
    with pytest.raises(ValueError, match="covs"):
        GaussianMixture([1.0, 1.0], mu, [1.0, 0.0])
    with pytest.raises(ValueError, match=r"covs.*shape"):
        GaussianMixture([1.0, 1.0], mu, np.ones((2, 3)))
    gm = GaussianMixture([1.0, 1.0], mu, [1.0, 2.0])
    sde = VPSDE()
    with pytest.raises(ValueError, match=r"`x` must have shape \(n, 2\)"):
        gm.score(np.zeros((4, 3)), 0.5, sde)
    with pytest.raises(ValueError, match=r"`x` must have shape \(n, 2\)"):
        gm.log_prob(torch.zeros(4))
    with pytest.raises(ValueError, match="component index"):
        gm.class_score(np.zeros((4, 2)), 0.5, sde, 2)
    with pytest.raises(ValueError, match="component index"):
        gm.classifier_grad_fn(sde, -1)
    with pytest.raises(ValueError, match=r"\(0, T"):
        gm.score(np.zeros((4, 2)), 1.5, sde)
    with pytest.raises(ValueError, match=r"\(0, T"):
        gm.log_prob(np.zeros((4, 2)), 0.0, sde)
    with pytest.raises(ValueError, match="sde"):
        gm.score(np.zeros((4, 2)), 0.5)
    with pytest.raises(ValueError, match="direction"):
        gm.projected_cdf(0.0, [0.0, 0.0])


def test_sliced_ks_in_one_dimension_is_the_kolmogorov_smirnov_statistic():
    """In 1-D every direction is ±1 and the KS distance of -X to the reflected law is that of X: the sliced statistic is
    scipy's one-sample KS statistic against the mixture's CDF (written here from its components), at any time."""
    gm = GaussianMixture([0.3, 0.7], [[-1.0], [2.0]], [[[0.25]], [[0.5]]])
    x = gm.sample(300, seed=4)
    sde = VPSDE()
    for t in (None, 0.4):
        if t is None:
            loc, scale = np.array([-1.0, 2.0]), np.sqrt([0.25, 0.5])
        else:
            a, s = float(sde.alpha(t)), float(sde.sigma(t))
            loc, scale = a * np.array([-1.0, 2.0]), np.sqrt(a * a * np.array([0.25, 0.5]) + s * s)
        y = x if t is None else gm.diffused(sde, t).sample(300, seed=5)

        def cdf(z, loc=loc, scale=scale):
            return 0.3 * stats.norm.cdf(z, loc[0], scale[0]) + 0.7 * stats.norm.cdf(z, loc[1], scale[1])

        expected = stats.kstest(y[:, 0], cdf).statistic
        assert gm.sliced_ks(y, t, None if t is None else sde, n_directions=5) == pytest.approx(expected, rel=1e-12)

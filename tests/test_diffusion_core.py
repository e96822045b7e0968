"""diffusion: forward SDEs, parameterisations, grids, and samplers on Gaussian data (exact flow known)."""

import math

import numpy as np
import pytest
import torch
from numba import njit

import diffusion
import sdekit
from diffusion import VESDE, VPSDE, Score, SubVPSDE, sample

SDES = {"vp": VPSDE(), "vp_cosine": VPSDE(schedule="cosine"), "subvp": SubVPSDE(), "ve": VESDE()}


@pytest.fixture(params=list(SDES))
def sde(request):
    return SDES[request.param]


# --------------------------------------------------------------------------- forward processes
def test_coefficients_are_consistent_with_the_marginals(sde):
    """f = d log(alpha)/dt and g^2 = d sigma^2/dt - 2 f sigma^2 (central differences, error O(h^2) ~ 1e-10)."""
    t = np.linspace(0.05, 0.95 * sde.T, 9)
    h = 1e-5
    f_fd = (np.log(sde.alpha(t + h)) - np.log(sde.alpha(t - h))) / (2 * h)
    g2_fd = (sde.sigma(t + h) ** 2 - sde.sigma(t - h) ** 2) / (2 * h) - 2 * sde.f(t) * sde.sigma(t) ** 2
    np.testing.assert_allclose(f_fd, sde.f(t), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(g2_fd, sde.g2(t), rtol=1e-7)


def test_reference_formulas():
    """The closed forms of Song et al. (2021), appendix B, at t = 0.5."""
    vp, sub, ve = SDES["vp"], SDES["subvp"], SDES["ve"]
    B = 0.1 * 0.5 + 0.5 * 19.9 * 0.25
    assert vp.alpha(0.5) == pytest.approx(math.exp(-B / 2), rel=1e-15)
    assert vp.sigma(0.5) ** 2 == pytest.approx(1 - math.exp(-B), rel=1e-14)
    assert sub.sigma(0.5) ** 2 == pytest.approx((1 - math.exp(-B)) ** 2, rel=1e-14)
    assert sub.g2(0.5) == pytest.approx((0.1 + 19.9 * 0.5) * (1 - math.exp(-2 * B)), rel=1e-14)
    s = 0.01 * 5000**0.5
    assert ve.g2(0.5) == pytest.approx(2 * s * s * math.log(5000), rel=1e-14)
    assert ve.sigma(0.5) ** 2 == pytest.approx(s * s - 1e-4, rel=1e-13)
    cos = SDES["vp_cosine"]
    fs = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert cos.alpha(0.5) ** 2 == pytest.approx(fs(0.5) / fs(0.0), rel=1e-14)


def test_time_conversions_round_trip(sde):
    t = np.linspace(1e-3, sde.T, 50)
    np.testing.assert_allclose(sde.t_from_log_snr(sde.log_snr(t)), t, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sde.t_from_sigma(sde.sigma(t)), t, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(sde.t_from_edm_sigma(sde.edm_sigma(t)), t, rtol=1e-9, atol=1e-12)
    assert np.all(np.diff(sde.log_snr(t)) < 0)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_forward_sde_has_the_stated_marginal(name):
    """Simulating dx = f x dt + g dW with sdekit from x0 = 1 gives mean alpha_t and variance sigma_t^2 (4 s.e.)."""
    sde = SDES[name]
    f, g2, q = sde.kernels.f, sde.kernels.g2, sde.params
    fwd = sdekit.SDE(lambda t, x, p: f(t, p) * x, lambda t, x, p: sdekit.ops.sqrt(g2(t, p)) + 0.0 * x,
                     noise="additive", params=q)
    n, t1 = 40_000, 0.4
    x = sdekit.solve(fwd, 1.0, (0.0, t1), method="sra1", n_steps=256, n_paths=n, seed=11, save_at=[t1]).x[-1, :, 0]
    a, s = sde.marginal(t1)
    assert abs(x.mean() - a) < 4 * s / math.sqrt(n)
    assert abs(x.var() - s * s) < 4 * s * s * math.sqrt(2 / n)


def test_prior_is_reproducible_across_backends(sde):
    a = sde.prior_sample(100, 3, seed=4)
    b = sde.prior_sample(100, 3, seed=4, like=torch.empty(0, dtype=torch.float64))
    np.testing.assert_allclose(a, b.numpy(), rtol=1e-15)
    assert not np.allclose(a, sde.prior_sample(100, 3, seed=5))
    z = sde.prior_sample(20_000, 1, seed=1) / sde.prior_std
    assert abs(z.mean()) < 4 / math.sqrt(20_000) and abs(z.var() - 1) < 4 * math.sqrt(2 / 20_000)
    x = np.zeros((2, 3))
    assert sde.prior_log_prob(x)[0] == pytest.approx(-3 * (math.log(sde.prior_std) + 0.5 * math.log(2 * math.pi)))


def test_sde_errors():
    with pytest.raises(ValueError, match="schedule"):
        VPSDE(schedule="quadratic")
    with pytest.raises(ValueError, match="cosine schedule is singular"):
        VPSDE(schedule="cosine", T=1.0)
    with pytest.raises(ValueError, match="beta_max"):
        VPSDE(beta_min=5, beta_max=1)
    with pytest.raises(ValueError, match="sigma_max"):
        VESDE(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="eps"):
        SubVPSDE(eps=2.0)


# --------------------------------------------------------------------------- parameterisations
def gaussian_score(sde, mu=1.5, s0=0.3, dim=2):
    """Exact score of data N(mu, s0^2 I) under ``sde``, as a jittable Score."""
    al, sg, n = sde.kernels.alpha, sde.kernels.sigma, len(sde.params)

    def k(t, x, p):
        a, s = al(t, p[:n]), sg(t, p[:n])
        return -(x - a * p[n]) / (a * a * p[n + 1] ** 2 + s * s)

    return Score.from_kernel(k, sde, sde.params + (mu, s0), dim=dim)


def gaussian_flow(sde, x_T, t, mu=1.5, s0=0.3):
    """Exact probability-flow map from T to t for Gaussian data (Song et al. 2021, eq. 13)."""
    std = lambda u: math.sqrt(sde.alpha(u) ** 2 * s0**2 + sde.sigma(u) ** 2)  # noqa: E731
    return sde.alpha(t) * mu + std(t) / std(sde.T) * (x_T - sde.alpha(sde.T) * mu)


@pytest.mark.parametrize("param", diffusion.PARAMETERISATIONS)
def test_parameterisations_round_trip_and_give_the_same_score(sde, param):
    """A Score built from each exact prediction returns the exact score; conversions are inverse pairs."""
    exact = gaussian_score(sde)
    rng = np.random.default_rng(0)
    x, t = rng.normal(size=(7, 2)), 0.37 * sde.T
    s = exact.score(x, t)
    pred = diffusion.convert(s, x, t, sde, source="score", target=param)
    np.testing.assert_allclose(diffusion.convert(pred, x, t, sde, source=param, target="score"), s, rtol=1e-12)
    wrapped = Score(lambda tt, xx, p: diffusion.convert(exact.score(xx, tt), xx, tt, sde, source="score",
                                                        target=param),
                    sde, parameterisation=param, backends=("numpy", "torch"))
    np.testing.assert_allclose(wrapped.score(x, t), s, rtol=1e-12)
    # one time per row, and torch tensors
    tv = np.linspace(0.1, 0.9, 7) * sde.T
    per_row = np.stack([exact.score(x[i : i + 1], tv[i])[0] for i in range(7)])
    np.testing.assert_allclose(diffusion.convert(pred * 0 + diffusion.convert(per_row, x, tv, sde, source="score",
                                                                                target=param),
                                                 x, tv, sde, source=param, target="score"), per_row, rtol=1e-12)
    xt = torch.as_tensor(x)
    np.testing.assert_allclose(exact.predict(xt, t, param).numpy(), pred, rtol=1e-12)


def test_parameterisation_identities():
    """eps = -sigma s, x0 is Tweedie's mean, v = alpha eps - sigma x0 (Efron 2011; Salimans & Ho 2022)."""
    sde = SDES["vp"]
    sc = gaussian_score(sde)
    x, t = np.array([[0.3, -1.2]]), 0.6
    a, s = sde.marginal(t)
    np.testing.assert_allclose(sc.eps(x, t), -s * sc.score(x, t), rtol=1e-14)
    np.testing.assert_allclose(sc.x0(x, t), (x + s * s * sc.score(x, t)) / a, rtol=1e-14)
    np.testing.assert_allclose(sc.v(x, t), a * sc.eps(x, t) - s * sc.x0(x, t), rtol=1e-13)
    # Tweedie for Gaussian data: mu + a s0^2 (x - a mu) / (a^2 s0^2 + s^2)
    np.testing.assert_allclose(sc.x0(x, t), 1.5 + a * 0.09 * (x - a * 1.5) / (a * a * 0.09 + s * s), rtol=1e-13)


def test_score_kernel_compiles_and_matches():
    sde = SDES["vp"]
    sc = Score(lambda t, x, p: -p[0] * x, sde, parameterisation="eps", params=(2.0,))
    x = np.ones((3, 2))
    np.testing.assert_allclose(njit(sc.kernel)(0.5, x, sc.params), sc.score(x, 0.5), rtol=1e-15)


def test_score_errors():
    sde = SDES["vp"]
    with pytest.raises(ValueError, match="parameterisation"):
        Score(lambda t, x, p: x, sde, parameterisation="noise")
    with pytest.raises(ValueError, match="diffusion SDE"):
        Score(lambda t, x, p: x, "vp")
    mod = Score.from_module(torch.nn.Identity(), sde)
    with pytest.raises(ValueError, match="backend='torch'"):
        sample(sde, Score.from_module(lambda x, c: x, sde, dim=2), 4, method="euler", steps=2, backend="numba")
    assert mod.backends == ("torch",)


# --------------------------------------------------------------------------- grids
@pytest.mark.parametrize("kind", diffusion.GRIDS)
def test_grids(sde, kind):
    g = diffusion.TimeGrid(sde, kind)
    t = g.times(16)
    assert t[0] == sde.T and t[-1] == sde.eps and np.all(np.diff(t) < 0)
    u = np.linspace(0.01, 0.99, 7)
    h = 1e-6
    fd = (g.phi(u + h, g.params) - g.phi(u - h, g.params)) / (2 * h)
    np.testing.assert_allclose(g.dphi(u, g.params), fd, rtol=1e-5)
    lam = sde.log_snr(t)
    if kind == "logsnr":
        np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=1e-8)
    if kind == "karras":
        r = sde.edm_sigma(t) ** (1 / 7)
        np.testing.assert_allclose(np.diff(r), np.diff(r)[0], rtol=1e-8)


# --------------------------------------------------------------------------- deterministic samplers: pathwise orders
ODE_ORDERS = {"euler": 1, "heun": 2, "midpoint": 2, "rk4": 4, "ddim": 1, "dpmpp_2m": 2, "dpmpp_3m": 2, "exp_ab3": 3,
              "dpmpp_2m@eps": 2, "exp_ab3@eps": 3}


@pytest.mark.parametrize("grid", ["quadratic", "logsnr"])
@pytest.mark.parametrize("name", list(ODE_ORDERS))
def test_deterministic_samplers_show_their_order(name, grid):
    """RMS error at eps against the exact Gaussian flow; least-squares slope at least the order - 0.3."""
    sde = SDES["vp"]
    sc = gaussian_score(sde)
    x_T = sde.prior_sample(64, 2, seed=1)
    exact = gaussian_flow(sde, x_T, sde.eps)
    method, _, pred = name.partition("@")
    kw = dict(prediction=pred) if pred else {}
    steps = np.array([40, 80, 160, 320]) if ODE_ORDERS[name] < 4 else np.array([20, 40, 80, 160])
    err = [np.sqrt(np.mean((sample(sde, sc, 64, method=method, steps=int(n), x_T=x_T, denoise=False, grid=grid,
                                   backend="numpy", **kw).x - exact) ** 2)) for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(err), 1)[0]
    # at least the declared order (within 0.3); Gaussian data can make a method converge faster (dpmpp_3m's
    # declared 2 is its cheap start's bound, which barely matters at high noise: it shows ~3.8 here)
    assert slope > ODE_ORDERS[name] - 0.3, (name, grid, slope, err)


def test_dopri5_reaches_its_tolerance():
    sde = SDES["vp"]
    sc = gaussian_score(sde)
    x_T = sde.prior_sample(32, 2, seed=2)
    r = sample(sde, sc, 32, method="dopri5", x_T=x_T, denoise=False, rtol=1e-8, atol=1e-8)
    assert np.max(np.abs(r.x - gaussian_flow(sde, x_T, sde.eps))) < 1e-6
    # per-path adaptive steps: nfe is the mean evaluations per sample
    assert r.nfe == round(r.solution.stats.n_drift_evals / 32) and r.nfe > 50


def test_ddim_eta_zero_is_the_exponential_euler_and_ddpm_is_eta_one():
    sde = SDES["vp"]
    sc = gaussian_score(sde)
    x_T = sde.prior_sample(16, 2, seed=3)
    a = sample(sde, sc, 16, method="ddim", steps=12, x_T=x_T, denoise=False, grid="logsnr")
    # eta -> 0 of the stochastic chain is the deterministic step (the chain's formula, not sdekit's)
    b = sample(sde, sc, 16, method="ddim", eta=1e-300, steps=12, x_T=x_T, denoise=False, grid="logsnr")
    np.testing.assert_allclose(a.x, b.x, rtol=1e-12)
    c = sample(sde, sc, 16, method="ddim", eta=1.0, steps=12, x_T=x_T, denoise=False, seed=9)
    d = sample(sde, sc, 16, method="ddpm", steps=12, x_T=x_T, denoise=False, seed=9)
    np.testing.assert_allclose(c.x, d.x, rtol=1e-14)


# --------------------------------------------------------------------------- stochastic samplers: moments
def reverse_sde_law(sde, mu, s0):
    """Mean and variance at eps of the reverse SDE of data N(mu, s0^2) started from the prior N(0, prior_std^2).

    The exact score makes it linear in ``u = x - alpha_t mu``: ``u(eps) = Phi u(T) + int_eps^T Phi(eps, r) g(r) dW``
    with ``Phi(s, t) = (v_s / alpha_s) / (v_t / alpha_t)``, ``v_t = alpha_t^2 s0^2 + sigma_t^2`` (the flow of
    ``du = -(f + g^2 / v) u dt``, reversed); the noise integral's variance by quadrature."""
    from scipy.integrate import quad

    def carried(r):
        a, s = float(sde.alpha(r)), float(sde.sigma(r))
        return (a * a * s0 * s0 + s * s) / a

    phi = carried(sde.eps) / carried(sde.T)
    noise, _ = quad(lambda r: (carried(sde.eps) / carried(r)) ** 2 * float(sde.g2(r)), sde.eps, sde.T, limit=200,
                    epsabs=1e-14, epsrel=1e-12)
    alpha_T, alpha_eps = float(sde.alpha(sde.T)), float(sde.alpha(sde.eps))
    return alpha_eps * mu - phi * alpha_T * mu, phi**2 * sde.prior_std**2 + noise


@pytest.mark.parametrize("method, steps", [("euler_maruyama", 1000), ("sra1", 200), ("sriw1", 200), ("ddpm", 4000),
                                           ("pc", 1000)])
def test_stochastic_samplers_reach_the_data_law(method, steps):
    """Mean and std of 2 x 20,000 draws within 4 standard errors of the reverse SDE's exact law at eps
    (:func:`reverse_sde_law`; at the data's up to 6e-6). ``steps`` keeps each scheme's weak bias below one standard
    error (O(1/steps) for Euler-Maruyama, DDPM and PC's predictor, O(1/steps^2) for SRA1 and SRIW1 on this additive
    noise; measured in standard errors, mean / std: 1.0 / 1.6, 1.4 / 1.4, 1.4 / 1.3, -1.1 / -1.3, 0.7 / 3.2; at 200
    steps Euler-Maruyama's mean is 3.6 off). PC's corrector at snr r = 0.16 targets N(m, v (1 + r^2)) at each level
    (Song et al. 2021, Alg. 5; the stationary law in tests/test_sampler_recursions.py): its std may exceed the law's
    by the factor sqrt(1 + r^2) as well."""
    sde = SDES["vp"]
    mu, s0, n = 1.5, 0.3, 20_000
    r = sample(sde, gaussian_score(sde, mu, s0), n, method=method, steps=steps, seed=3,
               backend="numpy" if method in ("ddpm", "pc") else "numba")
    mean, var = reverse_sde_law(sde, mu, s0)
    size = r.x.size  # 2 n draws (two independent coordinates)
    std, se_mean, se_std = math.sqrt(var), math.sqrt(var / size), math.sqrt(var / (2 * size))
    assert abs(r.x.mean() - mean) < 4 * se_mean, (r.x.mean(), mean, se_mean)
    inflation = math.sqrt(1 + 0.16**2) if method == "pc" else 1.0
    assert std - 4 * se_std < r.x.std() < std * inflation + 4 * se_std, (r.x.std(), std, se_std)


def test_sampling_is_reproducible_and_nfe_is_exact():
    sde = SDES["vp"]
    base = gaussian_score(sde)
    calls = []

    def counting(t, x, p):
        calls.append(x.shape[0])
        return base.kernel(t, x, base.params)

    sc = Score.from_kernel(counting, sde, base.params, dim=2, backends=("numpy",))
    expect = {"euler_maruyama": 10, "sra1": 20, "euler": 10, "heun": 20, "rk4": 40, "ddim": 10, "dpmpp_2m": 10,
              "exp_ab3": 11, "dpmpp_3m": 10, "ddpm": 10, "pc": 20, "ald": 11}
    for method, nfe in expect.items():
        calls.clear()
        r = sample(sde, sc, 8, method=method, steps=10, seed=1, backend="numpy", denoise=True)
        assert r.nfe == nfe + 1, method
        # every call was on the whole batch of 8 (the numpy backend does not split it); sdekit's probes
        # call the drift on 3 rows and on each of them alone, sample's score check (Score.check) the score on 3
        assert calls.count(8) == nfe + 1 and set(calls) <= {1, 3, 8}, method
    a = sample(sde, base, 50, method="sra1", steps=16, seed=7, backend="numba")
    b = sample(sde, base, 50, method="sra1", steps=16, seed=7, backend="torch")
    np.testing.assert_allclose(a.x, b.x.numpy(), rtol=1e-11)
    c = sample(sde, base, 50, method="sra1", steps=16, seed=8, backend="numba")
    assert not np.allclose(a.x, c.x)


def test_trajectory_and_callback():
    sde = SDES["vp"]
    sc = gaussian_score(sde)
    seen = []
    # the uniform grid: the general schemes' fixed-step solve, whose saves must hold the whole trajectory
    for method, grid in [*((m, "karras") for m in ("rk4", "sra1", "dpmpp_2m", "pc")), ("rk4", "uniform"), ("sra1", "uniform")]:
        seen.clear()
        r = sample(sde, sc, 4, method=method, steps=6, seed=1, grid=grid, return_trajectory=True,
                   callback=lambda k, t, x: seen.append((k, t, x.shape)), denoise=False)
        assert [k for k, _, _ in seen] == list(range(7))
        np.testing.assert_allclose([t for _, t, _ in seen], r.times)
        assert r.trajectory.shape == (7, 4, 2)
        np.testing.assert_allclose(r.trajectory[-1], r.x)


def test_sample_errors():
    sde = SDES["vp"]
    sc = gaussian_score(sde)
    with pytest.raises(ValueError, match="unknown method"):
        sample(sde, sc, 4, method="dpm_fast")
    with pytest.raises(ValueError, match="grid"):
        sample(sde, sc, 4, method="rk4", grid="cosine")
    with pytest.raises(ValueError, match="eta"):
        sample(sde, sc, 4, method="rk4", eta=0.5)
    with pytest.raises(ValueError, match="another diffusion SDE"):
        sample(VPSDE(beta_max=10.0), sc, 4)
    with pytest.raises(ValueError, match="another diffusion SDE"):
        sample(SubVPSDE(), sc, 4)
    # an equal process built anew is the same SDE
    same = type(sde)(**({"sigma_min": sde.sigma_min, "sigma_max": sde.sigma_max} if hasattr(sde, "sigma_min") else {}))
    assert sample(same, sc, 4, method="euler", steps=2).x.shape == (4, sc.dim or 2)
    with pytest.raises(ValueError, match="x_T"):
        sample(sde, sc, 4, x_T=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="dim"):
        sample(sde, Score(lambda t, x, p: -x, sde), 4, method="euler", steps=2)
    with pytest.raises(ValueError, match="dopri5"):
        sample(sde, sc, 4, method="dopri5", grid="karras")


def test_problems_are_built_once_per_score_kernel():
    """sample() reuses the problem functions (so compiled code) across calls and Score objects of one kernel."""
    from diffusion.reverse import probability_flow, probability_flow_semilinear, reverse_sde

    sde = SDES["vp"]
    a = gaussian_score(sde, mu=1.5)
    b = Score.from_kernel(a.fn, sde, sde.params + (-0.5, 0.3), dim=2)  # same kernel, other data mean
    for build in (reverse_sde, probability_flow, probability_flow_semilinear):
        pa, pb = build(a), build(b)
        assert pa is not pb and pa.params != pb.params
        assert (pa.drift if hasattr(pa, "drift") else pa.nonlinear) is (pb.drift if hasattr(pb, "drift") else pb.nonlinear)
    g = diffusion.TimeGrid(sde, "karras")
    t1 = sdekit.time_change(probability_flow(a), g.phi, g.dphi, params=g.params)
    g2 = diffusion.TimeGrid(sde, "karras", eps=1e-2)
    t2 = sdekit.time_change(probability_flow(b), g2.phi, g2.dphi, params=g2.params)
    assert t1.drift is t2.drift and t1.params != t2.params
    # and the reused problems still give each score its own answer
    x_T = sde.prior_sample(8, 2, seed=1)
    ra = sample(sde, a, 8, method="rk4", steps=20, grid="logsnr", x_T=x_T, denoise=False)
    rb = sample(sde, b, 8, method="rk4", steps=20, grid="logsnr", x_T=x_T, denoise=False)
    np.testing.assert_allclose(ra.x, gaussian_flow(sde, x_T, sde.eps, mu=1.5), atol=1e-4)
    np.testing.assert_allclose(rb.x, gaussian_flow(sde, x_T, sde.eps, mu=-0.5), atol=1e-4)


@pytest.mark.parametrize("kind", ["vp", "subvp", "ve"])
def test_perturb_is_the_marginal_map_and_seeds_are_non_negative(kind):
    """``perturb(x0, t, z) = alpha_t x0 + sigma_t z`` for one time or one per row; a negative seed is refused."""
    sde = SDES[kind]
    rng = np.random.default_rng(0)
    x0, z, t = rng.normal(size=(4, 2)), rng.normal(size=(4, 2)), np.array([0.1, 0.3, 0.6, 0.9])
    np.testing.assert_allclose(sde.perturb(x0, 0.3, z), sde.alpha(0.3) * x0 + sde.sigma(0.3) * z, rtol=1e-14)
    np.testing.assert_allclose(sde.perturb(x0, t, z), sde.alpha(t)[:, None] * x0 + sde.sigma(t)[:, None] * z, rtol=1e-14)
    with pytest.raises(ValueError, match="`seed` must be a non-negative integer"):
        sde.prior_sample(4, 2, seed=-1)


def test_a_custom_grid_of_one_step():
    """Two times, T and eps: one step, through the monotone interpolation of the log-SNR between the two knots, a
    straight line: the one-step log-SNR grid's run."""
    sde = SDES["vp"]
    sc = gaussian_score(sde)
    x_T = sde.prior_sample(8, 2, seed=2)
    one = sample(sde, sc, 8, method="euler", grid=[sde.T, sde.eps], x_T=x_T, denoise=False, backend="numpy")
    same = sample(sde, sc, 8, method="euler", grid="logsnr", steps=1, x_T=x_T, denoise=False, backend="numpy")
    assert one.nfe == 1
    np.testing.assert_allclose(one.x, same.x, rtol=1e-13)

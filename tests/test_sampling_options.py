"""Option records of the samplers, the shared reverse-time formulas, and Problem.with_params."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from numba import njit

import sdekit
from diffusion import VESDE, VPSDE, Score, SubVPSDE, TimeGrid, sample
from diffusion.formulas import eps_from_score, flow_velocity, log_snr_rate, reverse_drift, x0_from_score
from diffusion.options import Adaptive, Ancestral, AnnealedLangevin, Exponential, PredictorCorrector
from diffusion.sdes import standard_normals

SDES = {"vp": VPSDE(), "vp_cosine": VPSDE(schedule="cosine"), "subvp": SubVPSDE(), "ve": VESDE()}
MU, S0 = 1.5, 0.3  # data N(MU, S0^2 I)


def gaussian_score(sde, dim=2):
    """Exact score of data N(MU, S0^2 I) under ``sde``: -(x - alpha mu) / (alpha^2 s0^2 + sigma^2)."""
    alpha, sigma, n = sde.kernels.alpha, sde.kernels.sigma, len(sde.params)

    def kernel(t, x, p):
        a, s = alpha(t, p[:n]), sigma(t, p[:n])
        return -(x - a * p[n]) / (a * a * p[n + 1] ** 2 + s * s)

    return Score.from_kernel(kernel, sde, sde.params + (MU, S0), dim=dim)


def marginal_variance(sde, t):
    return float(sde.alpha(t)) ** 2 * S0**2 + float(sde.sigma(t)) ** 2


# --------------------------------------------------------------------------- Problem.with_params
def test_with_params_copies_the_problem_with_normalised_params():
    ode = sdekit.ODE(lambda t, x, p: -p[0] * x, params=(1.0,))
    sde = sdekit.SDE(lambda t, x, p: -p[0] * x, lambda t, x, p: p[1] + 0.0 * x, noise="additive", params=(1.0, 0.5))
    semi = sdekit.SemilinearODE(lambda t, p: -p[0] * t, lambda t, p: p[0] * t, lambda t, x, p: 0.0 * x, params=(2.0,))
    for problem, params in ((ode, [3]), (sde, (2, np.array([1, 2]))), (semi, (5,))):
        twin = problem.with_params(params)
        assert type(twin) is type(problem) and twin is not problem
        assert (twin.drift if hasattr(twin, "drift") else twin.nonlinear) is \
               (problem.drift if hasattr(problem, "drift") else problem.nonlinear)
        assert all(isinstance(v, float) or (isinstance(v, np.ndarray) and v.dtype == np.float64) for v in twin.params)
        assert twin.params[0] == float(params[0]) and problem.params[0] != twin.params[0]
    # the copy solves with its own parameters: x' = -k x from 1 to t = 1 is exp(-k)
    x1 = sdekit.solve(ode.with_params((2.0,)), np.ones((1, 1)), (0.0, 1.0), method="rk4", n_steps=200,
                      backend="numpy").x[-1]
    np.testing.assert_allclose(x1, math.exp(-2.0), rtol=1e-9)
    with pytest.raises(ValueError, match="`params` must be a tuple"):
        ode.with_params(2.0)
    with pytest.raises(ValueError, match=r"`params\[0\]` must be real"):
        ode.with_params((1j,))


# --------------------------------------------------------------------------- the shared formulas
@pytest.mark.parametrize("name", list(SDES))
def test_formulas_against_the_exact_gaussian_process(name):
    """On Gaussian data every formula has a closed form: the flow scales x - alpha mu by sqrt(v_t), Tweedie's mean is
    the Gaussian posterior mean, and d lambda/dt is the derivative of log_snr (central differences, error ~1e-9)."""
    sde = SDES[name]
    score = gaussian_score(sde)
    x = np.random.default_rng(0).normal(size=(5, 2))
    h = 1e-5
    for t in (0.1 * sde.T, 0.5 * sde.T, 0.9 * sde.T):
        a, s, f, g2 = (float(v) for v in (sde.alpha(t), sde.sigma(t), sde.f(t), sde.g2(t)))
        score_t = score.score(x, t)
        # probability flow: x_t = alpha_t mu + sqrt(v_t) w, so dx/dt = alpha' mu + v'/(2 v) (x - alpha mu)
        dalpha = (float(sde.alpha(t + h)) - float(sde.alpha(t - h))) / (2 * h)
        dv = (marginal_variance(sde, t + h) - marginal_variance(sde, t - h)) / (2 * h)
        v = marginal_variance(sde, t)
        exact_velocity = dalpha * MU + dv / (2 * v) * (x - a * MU)
        np.testing.assert_allclose(flow_velocity(f, g2, x, score_t), exact_velocity, rtol=1e-7, atol=1e-7)
        # the reverse drift differs from the flow by the other half of the score term
        np.testing.assert_allclose(reverse_drift(f, g2, x, score_t) - flow_velocity(f, g2, x, score_t),
                                   -0.5 * g2 * score_t, rtol=1e-12, atol=1e-12)
        # Tweedie: E[x0 | x_t] = mu + alpha s0^2 (x - alpha mu) / v, and E[eps | x_t] = (x - alpha E[x0 | x_t]) / sigma
        posterior_mean = MU + a * S0**2 * (x - a * MU) / v
        np.testing.assert_allclose(x0_from_score(score_t, x, a, s), posterior_mean, rtol=1e-11)
        np.testing.assert_allclose(eps_from_score(score_t, x, a, s), (x - a * posterior_mean) / s, rtol=1e-9, atol=1e-12)
        dlam = (float(sde.log_snr(t + h)) - float(sde.log_snr(t - h))) / (2 * h)
        np.testing.assert_allclose(log_snr_rate(g2, s), dlam, rtol=1e-7)


def test_formulas_run_compiled_and_on_tensors():
    @njit
    def all_formulas(f, g2, x, score, alpha, sigma):
        return (reverse_drift(f, g2, x, score), flow_velocity(f, g2, x, score), x0_from_score(score, x, alpha, sigma),
                eps_from_score(score, x, alpha, sigma), log_snr_rate(g2, sigma))

    x, score = np.array([[0.3, -1.2]]), np.array([[-0.5, 2.0]])
    compiled = all_formulas(-0.4, 1.3, x, score, 0.8, 0.6)
    plain = all_formulas.py_func(-0.4, 1.3, x, score, 0.8, 0.6)
    tensors = all_formulas.py_func(-0.4, 1.3, torch.as_tensor(x), torch.as_tensor(score), 0.8, 0.6)
    for a, b, c in zip(compiled, plain, tensors, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-15)
        np.testing.assert_allclose(a, np.asarray(c), rtol=1e-15)


# --------------------------------------------------------------------------- options: records == keywords
VP, VE = SDES["vp"], SDES["ve"]
SAME_CALLS = [  # (sde, method, keyword shorthand, the record it stands for, extra keywords)
    (VE, "pc", dict(snr=0.2, corrector_steps=2), PredictorCorrector(snr=0.2, corrector_steps=2), {}),
    (VE, "ald", dict(step_size=0.3, corrector_steps=2), AnnealedLangevin(step_size=0.3, corrector_steps=2), {}),
    (VP, "ddim", dict(eta=0.5), Ancestral(eta=0.5), {}),
    (VP, "ddim", dict(prediction="eps"), Exponential(prediction="eps"), {}),
    (VP, "dpmpp_2m", dict(prediction="eps"), Exponential(prediction="eps"), dict(grid="logsnr")),
    (VP, "dopri5", dict(rtol=1e-7, atol=1e-7), Adaptive(rtol=1e-7, atol=1e-7), {}),
]


@pytest.mark.parametrize("sde, method, keywords, record, extra", SAME_CALLS,
                         ids=[f"{c[1]}-{type(c[3]).__name__}" for c in SAME_CALLS])
def test_an_options_record_is_the_keyword_call(sde, method, keywords, record, extra):
    score = gaussian_score(sde)
    by_keyword = sample(sde, score, 6, method=method, steps=5, seed=4, backend="numpy", **keywords, **extra)
    by_record = sample(sde, score, 6, method=method, steps=5, seed=4, backend="numpy", options=record, **extra)
    np.testing.assert_array_equal(by_keyword.x, by_record.x)
    assert by_keyword.nfe == by_record.nfe and by_keyword.options == by_record.options == record


def test_defaults_are_the_records_defaults():
    score = gaussian_score(VE)
    plain = sample(VE, score, 4, method="pc", steps=3, seed=1, backend="numpy")
    assert plain.options == PredictorCorrector()
    np.testing.assert_array_equal(plain.x, sample(VE, score, 4, method="pc", steps=3, seed=1, backend="numpy",
                                                  options=PredictorCorrector(snr=0.16, corrector_steps=1)).x)
    assert sample(VE, score, 4, method="rk4", steps=2, backend="numpy").options is None
    assert sample(VP, gaussian_score(VP), 4, method="ddim", steps=2, backend="numpy").options == Exponential()


def test_karras_rho_on_the_grid_is_the_rho_keyword():
    score = gaussian_score(VP)
    a = sample(VP, score, 5, method="heun", steps=4, grid="karras", rho=5.0, backend="numpy", denoise=False)
    b = sample(VP, score, 5, method="heun", steps=4, grid=TimeGrid(VP, "karras", rho=5.0), backend="numpy",
               denoise=False)
    np.testing.assert_array_equal(a.times, b.times)
    np.testing.assert_array_equal(a.x, b.x)
    assert b.grid == "karras"


def test_pc_predictor_is_euler_maruyama_of_the_reverse_sde():
    """With no corrector, pc is x_s = x_t - h (f x - g^2 s) + g sqrt(h) z_k (h = t - s > 0), with z_k the normals of
    stream k + 2 of the seed: the predictor through sdekit.Stepper equals the hand-written step to rounding."""
    score = gaussian_score(VE)
    x_T = VE.prior_sample(8, 2, seed=3)
    r = sample(VE, score, 8, method="pc", steps=6, seed=5, x_T=x_T, denoise=False, backend="numpy",
               options=PredictorCorrector(corrector_steps=0))
    x = x_T.copy()
    for k, (t, s) in enumerate(zip(r.times[:-1], r.times[1:], strict=True)):
        h = t - s
        g2 = float(VE.g2(t))
        x = x - h * (float(VE.f(t)) * x - g2 * score.score(x, t)) + math.sqrt(g2 * h) * standard_normals(5, 2 + k, 8, 2)
    np.testing.assert_allclose(r.x, x, rtol=1e-12, atol=1e-12)
    assert r.nfe == 6


def test_pc_runs_on_torch_like_numpy():
    score = gaussian_score(VE)
    a = sample(VE, score, 6, method="pc", steps=4, seed=2, backend="numpy", snr=0.2)
    b = sample(VE, score, 6, method="pc", steps=4, seed=2, backend="torch", snr=0.2)
    np.testing.assert_allclose(a.x, b.x.numpy(), rtol=1e-11, atol=1e-11)


# --------------------------------------------------------------------------- options: one clear line when wrong
@pytest.mark.parametrize("make, message", [
    (lambda: Ancestral(eta=-0.1), r"Ancestral: `eta` must be a non-negative finite number, got -0.1"),
    (lambda: Ancestral(eta="1"), r"Ancestral: `eta` must be a non-negative number, got '1'"),
    (lambda: Exponential(prediction="v"), r"Exponential: `prediction` must be 'x0' or 'eps', got 'v'"),
    (lambda: PredictorCorrector(snr=0.0), r"PredictorCorrector: `snr` must be a positive finite number"),
    (lambda: PredictorCorrector(corrector_steps=1.5), r"PredictorCorrector: `corrector_steps` must be an integer >= 0"),
    (lambda: AnnealedLangevin(corrector_steps=0), r"AnnealedLangevin: `corrector_steps` must be an integer >= 1"),
    (lambda: AnnealedLangevin(step_size=math.inf), r"AnnealedLangevin: `step_size` must be a positive finite"),
    (lambda: Adaptive(rtol=0.0), r"Adaptive: `rtol` must be a positive finite number"),
    (lambda: Adaptive(atol=True), r"Adaptive: `atol` must be a positive number, got True"),
])
def test_a_wrong_option_value_is_one_line(make, message):
    with pytest.raises(ValueError, match=message) as info:
        make()
    assert "\n" not in str(info.value)


def test_records_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PredictorCorrector().snr = 0.3


@pytest.mark.parametrize("method, options, message", [
    ("rk4", PredictorCorrector(), r"`options` PredictorCorrector apply to method 'pc'; method='rk4' reads no options"),
    ("pc", Adaptive(), r"`options` Adaptive apply to method 'euler_maruyama' or .* or 'sra1' or 'sriw1' or 'dopri5'; method='pc' "
                       r"reads PredictorCorrector options"),
    ("dpmpp_2m", Ancestral(eta=0.3), r"`options` Ancestral apply to method 'ddim'; method='dpmpp_2m' reads Exponential"),
    ("pc", {"snr": 0.2}, r"`options` must be an option record \(Ancestral, .*\), got dict"),
])
def test_a_wrong_option_type_is_one_line(method, options, message):
    sde = VE
    with pytest.raises(ValueError, match=message) as info:
        sample(sde, gaussian_score(sde), 3, method=method, steps=2, backend="numpy", options=options)
    assert "\n" not in str(info.value)


def test_options_and_keywords_do_not_mix():
    score = gaussian_score(VE)
    with pytest.raises(ValueError, match="either as `options=` or as keywords"):
        sample(VE, score, 3, method="pc", steps=2, backend="numpy", options=PredictorCorrector(), snr=0.2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'sn'"):
        sample(VE, score, 3, method="pc", steps=2, backend="numpy", sn=0.2)
    with pytest.raises(ValueError, match="`eta` > 0 runs DDIM's stochastic chain"):
        sample(VP, gaussian_score(VP), 3, method="ddim", steps=2, backend="numpy", eta=0.5, prediction="eps")
    # the keyword shorthand is validated by its record
    with pytest.raises(ValueError, match="PredictorCorrector: `snr` must be a positive"):
        sample(VE, score, 3, method="pc", steps=2, backend="numpy", snr=-0.2)


def test_a_time_grid_object_must_fit_the_call():
    score = gaussian_score(VP)
    with pytest.raises(ValueError, match="`rho` is set on the TimeGrid"):
        sample(VP, score, 3, method="heun", steps=2, backend="numpy", grid=TimeGrid(VP, "karras"), rho=5.0)
    with pytest.raises(ValueError, match="`eps` is set on the TimeGrid"):
        sample(VP, score, 3, method="heun", steps=2, backend="numpy", grid=TimeGrid(VP, "logsnr"), eps=0.01)
    with pytest.raises(ValueError, match="made for another SDE or start time"):
        sample(VP, score, 3, method="heun", steps=2, backend="numpy", grid=TimeGrid(VESDE(), "logsnr"))
    with pytest.raises(ValueError, match="made for another SDE or start time"):
        sample(VP, score, 3, method="heun", steps=2, backend="numpy", grid=TimeGrid(VP, "logsnr", T=0.5))
    with pytest.raises(ValueError, match="dopri5 chooses its own steps"):
        sample(VP, score, 3, method="dopri5", backend="numpy", grid=TimeGrid(VP, "karras"))


def test_the_keyword_shorthand_defaults_are_the_option_records_defaults():
    """``sample(..., snr=...)`` stands for ``options=PredictorCorrector(snr=...)``: a keyword left at its default must
    mean the record's default (a method that does not read it accepts exactly that value; ``rho`` is the grid's)."""
    import diffusion.options as records
    from diffusion.sampling import OPTION_KEYWORDS

    defaults = {}
    for record in (records.Ancestral, records.Exponential, records.PredictorCorrector, records.AnnealedLangevin,
                   records.Adaptive, records.AncestralSDE, records.Churn):
        for f in dataclasses.fields(record):
            defaults.setdefault(f.name, set()).add(f.default)
    assert set(OPTION_KEYWORDS) - {"rho"} <= set(defaults)
    for name, value in OPTION_KEYWORDS.items():
        if name != "rho":  # eta's default is 0 for ddim (Ancestral) and 1 for the ancestral SDE samplers
            assert value in defaults[name] and (len(defaults[name]) == 1 or name == "eta"), (name, value, defaults[name])

"""``sample(..., nfe=N)``: a budget of score evaluations, and the default sampler it picks without ``method``.

Truth: a counting score (every evaluation is counted, whatever the method calls it for) checks that each
method spends at most its budget and that one more step would not fit; the default sampler's pathwise error
is checked against the exact flow of the probability-flow ODE (an RK4 reference on 400 log-SNR steps) and against the
best diffusers sampler run from the same starting noise (where diffusers is installed).
"""

import sys
from pathlib import Path

import numpy as np
import pytest

import diffusion as df
import diffusion.sampling as dsampling
from diffusion import VPSDE, Score, default_sampler, sample
from diffusion.oracle import GaussianMixture

SDE = VPSDE()
GM = GaussianMixture([0.5, 0.3, 0.2], [[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]],
                     [np.diag([0.3, 0.05]), np.diag([0.05, 0.2]), [[0.2, 0.1], [0.1, 0.2]]])
BUDGETED = [m for m in dsampling.METHODS if m != "dopri5"]


class Counter:
    """The exact mixture score, counting its evaluations on the whole batch of ``n`` samples (the input checks of
    ``sample`` and ``sdekit.solve`` probe it on fewer rows)."""

    def __init__(self, n):
        self.n, self.calls, self.exact = n, 0, GM.score_fn(SDE)

    def fn(self, t, x, params):
        self.calls += np.asarray(x).shape[0] == self.n
        return self.exact.score(x, t)


def counted(method, nfe, n=7, **kw):
    counter = Counter(n)
    score = Score(counter.fn, SDE, dim=2)
    s = sample(SDE, score, n, method=method, nfe=nfe, seed=1, backend="numpy", **kw)
    return s, counter


@pytest.mark.parametrize("method", BUDGETED)
def test_every_method_spends_at_most_its_budget_and_uses_it(method):
    """NFE_PER_STEP is the truth: the counted evaluations are Samples.nfe, at most the budget, and a budget
    one step larger would buy one more step."""
    budget = 13
    s, counter = counted(method, budget)
    steps = len(s.times) - 1
    assert counter.calls == s.nfe
    assert s.nfe <= budget
    per_step = dsampling._evaluations(method, s.options, steps + 1, True) - s.nfe
    assert s.nfe + per_step > budget, f"{method}: {steps} steps leave room for another within nfe={budget}"


def test_the_budget_counts_the_denoising_step():
    with_denoise, _ = counted("ddim", 10)
    without, _ = counted("ddim", 10, denoise=False)
    assert (with_denoise.nfe, len(with_denoise.times) - 1) == (10, 9)
    assert (without.nfe, len(without.times) - 1) == (10, 10)


@pytest.mark.parametrize("nfe", [5, 10, 20, 50])
def test_without_method_the_default_for_the_budget_runs(nfe):
    s, _ = counted(None, nfe, denoise=False)
    chosen = default_sampler(nfe)
    assert (s.method, s.grid) == (chosen["method"], chosen["grid"])
    assert s.nfe <= nfe
    for key, value in chosen["options"].items():
        assert getattr(s.options, key) == value


def test_the_default_without_any_budget_is_the_default_nfe():
    s, _ = counted(None, None)
    assert s.nfe <= dsampling.DEFAULT_NFE and s.method == default_sampler(dsampling.DEFAULT_NFE)["method"]


def test_a_given_grid_or_option_overrides_the_default():
    s, _ = counted(None, 12, grid="quadratic", prediction="eps")
    assert s.grid == "quadratic" and s.options.prediction == "eps" and s.method == default_sampler(12)["method"]


@pytest.mark.parametrize("kw,message", [
    (dict(nfe=10, steps=10), "give `steps` or `nfe`, not both"),
    (dict(nfe=1, method="heun"), "`nfe`=1 is too small for heun"),
    (dict(nfe=10, method="dopri5"), "dopri5 chooses its own steps"),
    (dict(nfe=0), "`nfe` must be an integer >= 1"),
    (dict(nfe=1), "below the smallest budget"),
    (dict(nfe=3, grid=np.linspace(1.0, 0.01, 9), method="ddim"), "need 9 score evaluations, more than `nfe`=3"),
])
def test_bad_budgets_are_one_line(kw, message):
    with pytest.raises(ValueError, match=message) as info:
        sample(SDE, GM.score_fn(SDE), 3, seed=0, **kw)
    assert "\n" not in str(info.value)


def test_the_default_table_is_ordered_and_every_row_runs_within_its_lowest_budget():
    lows = [row[0] for row in dsampling.DEFAULT_SAMPLERS]
    assert lows == sorted(lows) and len(set(lows)) == len(lows)
    for low, method, _, _ in dsampling.DEFAULT_SAMPLERS:
        s, _ = counted(None, low, denoise=False)
        assert s.method == method and s.nfe <= low


# --------------------------------------------------------------------------- accuracy of the default
def _reference_and_start(n):
    """The exact flow's end point by RK4 on 400 log-SNR steps, with its own error bound (its distance to 200 steps,
    an overestimate for a fourth-order method)."""
    x_T = SDE.prior_sample(n, 2, seed=18)
    kw = dict(method="rk4", grid="logsnr", x_T=x_T, denoise=False, backend="numpy")
    ref = np.asarray(sample(SDE, GM.score_fn(SDE), n, steps=400, **kw).x)
    half = np.asarray(sample(SDE, GM.score_fn(SDE), n, steps=200, **kw).x)
    return x_T, ref, float(np.sqrt(np.mean((ref - half) ** 2)))


@pytest.mark.parametrize("nfe", [10, 20])
def test_the_default_beats_the_best_diffusers_multistep_sampler_from_the_same_noise(nfe):
    """Pathwise RMS error at eps against the exact flow: the default at budget N is more accurate than each of
    diffusers' DPM-Solver++(2M/3M) and UniPC on their best grid of three, with N score evaluations each."""
    pytest.importorskip("diffusers")
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import peer_samplers as pk

    n = 300
    x_T, ref, ref_error = _reference_and_start(n)
    ours = sample(SDE, GM.score_fn(SDE), n, nfe=nfe, x_T=x_T, denoise=False, backend="numpy")
    ours_rms = float(np.sqrt(np.mean((np.asarray(ours.x) - ref) ** 2)))
    assert ref_error < 0.01 * ours_rms  # the reference is exact at the scale of the errors compared

    def x0_hat(x, t):
        return GM.tweedie(x, min(float(t[0]), SDE.T), SDE)

    x_T_t = torch.as_tensor(np.asarray(x_T), dtype=torch.float64)
    for name in ("dpmpp_2m", "dpmpp_3m", "unipc_2"):
        peer = min(float(np.sqrt(np.mean((pk.diffusers_sample(name, x0_hat, x_T_t, nfe, grid=g)[0].numpy() - ref) ** 2)))
                   for g in pk.GRIDS)
        assert ours_rms < peer, f"default {ours.method}/{ours.grid} RMS {ours_rms:.3e} >= diffusers {name} {peer:.3e}"


# --------------------------------------------------------------------------- the default's grid
def _reference_vp_tau(sigma_over_alpha):
    """Time of the reference VP SDE (beta 0.1..20, B = 0.1 t + 9.95 t^2) at noise level sigma/alpha, solved directly."""
    b = np.log1p(np.asarray(sigma_over_alpha, dtype=float) ** 2)
    return (-0.1 + np.sqrt(0.01 + 4 * 9.95 * b)) / (2 * 9.95)


@pytest.mark.parametrize("make", [lambda: VPSDE(), lambda: VPSDE(schedule="cosine"), lambda: df.VESDE(),
                                  lambda: df.SubVPSDE(), lambda: df.RectifiedFlow()],
                         ids=["vp", "vp-cosine", "ve", "sub-vp", "rectified-flow"])
def test_the_power_grid_is_a_power_of_the_reference_vp_time_on_every_process(make):
    """t_k have the noise levels of tau_k = tau_eps + (tau_T - tau_eps)(1 - k/n)^rho in the reference VP SDE's time;
    on VPSDE() tau is t itself; phi' is the derivative of phi (central differences)."""
    sde, rho, n = make(), 2.5, 12
    grid = df.TimeGrid(sde, "power", rho=rho)
    t = grid.times(n)
    tau = _reference_vp_tau(sde.edm_sigma(t))
    u = np.arange(n + 1) / n
    np.testing.assert_allclose(tau, tau[-1] + (tau[0] - tau[-1]) * (1 - u) ** rho, rtol=1e-9, atol=1e-13)
    if isinstance(sde, VPSDE) and sde.schedule == "linear":
        np.testing.assert_allclose(t, sde.eps + (sde.T - sde.eps) * (1 - u) ** rho, rtol=1e-12)  # round trip via log-SNR
    v, h = np.linspace(0.05, 0.95, 9), 1e-6
    slope = (np.asarray(grid.phi(v + h, grid.params)) - np.asarray(grid.phi(v - h, grid.params))) / (2 * h)
    np.testing.assert_allclose(np.asarray(grid.dphi(v, grid.params)), slope, rtol=1e-6)


def test_the_default_is_the_table_docs_samplers_md_documents():
    """The budget table users read (docs/samplers.md, "How the default was chosen") is what runs, at both ends of every
    row's range of budgets."""
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "samplers.md").read_text()
    rows = re.findall(r"^\| (\d+)(?:–(\d+)| and more) \| `(\w+)`[^|]*\| `power`, rho ([\d.]+) \| ([^|]*)\|$", text, re.M)
    assert len(rows) == len(dsampling.DEFAULT_SAMPLERS), rows
    for low, high, method, rho, options in rows:
        for nfe in {int(low), int(high or low) if high else 10 * int(low)}:
            chosen = default_sampler(nfe)
            assert (chosen["method"], chosen["grid"], chosen["rho"]) == (method, "power", float(rho)), (nfe, chosen)
            assert chosen["options"].get("lower_order_final", False) == ("lower_order_final=True" in options), nfe
    with pytest.raises(ValueError, match="nfe"):
        default_sampler(int(rows[0][0]) - 1)

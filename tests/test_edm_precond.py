"""EDM preconditioning (Karras et al. 2022, Table 1 and eq. 7) against its closed-form optimum on Gaussian data.

Data ``x0 ~ N(mu, s0^2 I)``; at the EDM noise level ``k = sigma_t / alpha_t`` the noisy point is
``y = x_t / alpha_t = x0 + k n`` and the optimal denoiser is ``D*(y) = mu + r (y - mu)``, ``r = s0^2/(s0^2 + k^2)``,
with posterior variance ``s0^2 k^2/(s0^2 + k^2)`` per coordinate. Hence the optimal raw network is
``F* = (D* - c_skip y)/c_out`` and the EDM loss ``E lambda(k) |D - x0|^2`` (``lambda = 1/c_out^2``) has the minimum
``E_k[d s0^2 (k^2 + sd^2) / (sd^2 (s0^2 + k^2))]`` and the excess ``E|F - F*|^2`` at any other ``F``.
"""

import math

import numpy as np
import pytest
import torch

from diffusion import VPSDE, Score, sample
from diffusion.training import TrainConfig, edm_loss, train

SDE = VPSDE()
MU = np.array([0.3, -0.7])
S0 = 0.8
SD = 0.5
D = MU.size


def optimal_F(c_noise, x_in, sigma_data=SD):
    """``F*`` from EDM's inputs: the level ``k = exp(4 c_noise)`` and ``y = x_in sqrt(k^2 + sd^2)``."""
    level = np.exp(4.0 * c_noise) if np.ndim(c_noise) == 0 else np.exp(4.0 * c_noise)[:, None]
    q = level * level + sigma_data * sigma_data
    y = x_in * np.sqrt(q)
    denoised = MU + S0**2 / (S0**2 + level * level) * (y - MU)
    return (denoised - sigma_data**2 / q * y) / (level * sigma_data / np.sqrt(q))


class OptimalF(torch.nn.Module):
    """``F*`` as a torch module called as EDM trains it: ``module(c_in y, c_noise)``, plus a constant offset."""

    def __init__(self, offset=(0.0, 0.0)):
        super().__init__()
        self.offset = torch.tensor(offset, dtype=torch.float64)

    def forward(self, x_in, c_noise):
        return torch.as_tensor(optimal_F(c_noise.numpy(), x_in.numpy())) + self.offset


def exact_score(x, t):
    a, s = float(SDE.alpha(t)), float(SDE.sigma(t))
    return -(x - a * MU) / (a * a * S0**2 + s * s)


def minimum_loss(p_mean=-1.2, p_std=1.2):
    """``E_k[d s0^2 (k^2 + sd^2)/(sd^2 (s0^2 + k^2))]`` for ``ln k ~ N(p_mean, p_std^2)``, ``k`` clipped to the levels
    of ``[eps, T]`` (trapezoid rule on a fine grid of the standard normal: error far below the Monte Carlo s.e.)."""
    z = np.linspace(-9.0, 9.0, 200_001)
    level = np.clip(np.exp(p_mean + p_std * z), float(SDE.edm_sigma(SDE.eps)), float(SDE.edm_sigma(SDE.T)))
    integrand = D * S0**2 * (level**2 + SD**2) / (SD**2 * (S0**2 + level**2)) * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return float(np.sum((integrand[1:] + integrand[:-1]) * 0.5 * np.diff(z)))


@pytest.mark.parametrize("t", [2e-3, 0.05, 0.3, 0.7, 1.0])
def test_wrapped_optimal_network_is_the_exact_score(t):
    x = np.random.default_rng(0).normal(size=(64, D)) * 2.0

    def fn(c_noise, x_in, params):
        return optimal_F(c_noise, x_in)

    score = Score(fn, SDE, parameterisation="edm", sigma_data=SD, backends=("numpy",))
    np.testing.assert_allclose(score.score(x, t), exact_score(x, t), rtol=1e-12, atol=1e-12)
    # the torch module path, with one time per row
    module_score = Score.from_module(OptimalF(), SDE, parameterisation="edm", sigma_data=SD)
    rows = module_score.score(torch.as_tensor(x), torch.full((64,), t, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(rows, exact_score(x, t), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(module_score.x0(torch.as_tensor(x), t).numpy(),
                               (x + float(SDE.sigma(t)) ** 2 * exact_score(x, t)) / float(SDE.alpha(t)), rtol=1e-12, atol=1e-12)


def test_sampling_the_wrapped_optimal_network_equals_sampling_the_exact_score():
    edm = Score.from_module(OptimalF(), SDE, parameterisation="edm", sigma_data=SD, dim=D)
    exact = Score(lambda t, x, p: exact_score(x, t), SDE, dim=D, backends=("numpy", "torch"))
    a = sample(SDE, edm, 16, method="dpmpp_2m", steps=8, grid="logsnr", seed=4, backend="torch").x.numpy()
    b = sample(SDE, exact, 16, method="dpmpp_2m", steps=8, grid="logsnr", seed=4, backend="numpy").x
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)


def _batch_losses(module, batches=40, size=5000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    data = torch.Generator().manual_seed(seed + 1)
    losses = []
    for _ in range(batches):
        x0 = torch.as_tensor(MU) + S0 * torch.randn((size, D), generator=data, dtype=torch.float64)
        losses.append(float(edm_loss(module, SDE, x0, sigma_data=SD, generator=gen)))
    return np.array(losses)


def test_edm_loss_at_the_optimum_is_the_irreducible_variance_and_an_offset_adds_its_square():
    at_optimum = _batch_losses(OptimalF())
    se = at_optimum.std(ddof=1) / math.sqrt(at_optimum.size)
    assert abs(at_optimum.mean() - minimum_loss()) < 4 * se, (at_optimum.mean(), minimum_loss(), se)
    # F = F* + delta: the loss grows by |delta|^2 (the cross term has mean 0); same draws, so the s.e. is the cross term's
    delta = np.array([0.3, -0.2])
    excess = _batch_losses(OptimalF(tuple(delta))) - at_optimum
    se = excess.std(ddof=1) / math.sqrt(excess.size)
    assert abs(excess.mean() - delta @ delta) < 4 * se, (excess.mean(), delta @ delta, se)
    assert se < 0.05 * (delta @ delta)


class TinyF(torch.nn.Module):
    """``F = a(c) x_in + b(c)``: the form of ``F*`` on Gaussian data, with ``a, b`` a small MLP of ``c_noise``."""

    def __init__(self):
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.SiLU(), torch.nn.Linear(32, 1 + D))

    def forward(self, x_in, c_noise):
        out = self.mlp(c_noise[:, None])
        return out[:, :1] * x_in + out[:, 1:]


def _excess(module, n=20_000, seed=7):
    """``E|F - F*|^2`` over the training distribution of levels and data (the loss minus its minimum)."""
    rng = np.random.default_rng(seed)
    level = np.clip(np.exp(-1.2 + 1.2 * rng.normal(size=n)), float(SDE.edm_sigma(SDE.eps)), float(SDE.edm_sigma(SDE.T)))
    y = MU + S0 * rng.normal(size=(n, D)) + level[:, None] * rng.normal(size=(n, D))
    c_noise, x_in = 0.25 * np.log(level), y / np.sqrt(level**2 + SD**2)[:, None]
    with torch.no_grad():
        f = module(torch.as_tensor(x_in, dtype=torch.float32), torch.as_tensor(c_noise, dtype=torch.float32)).double().numpy()
    return float(np.mean(np.sum((f - optimal_F(c_noise, x_in)) ** 2, axis=1)))


def test_training_with_the_edm_loss_moves_the_network_to_the_optimum():
    torch.manual_seed(0)
    net = TinyF()
    before = _excess(net)
    x = MU + S0 * np.random.default_rng(3).normal(size=(4096, D))
    config = TrainConfig(loss="edm", sigma_data=SD, steps=400, batch_size=256, lr=1e-2, warmup=20, checkpoint_every=10_000)
    train(net, SDE, x, config, progress=False)
    after = _excess(net)
    # the excess risk E|F - F*|^2 must fall to a small fraction of that of F = 0 (E|F*|^2) and of the initial network's
    zero = _excess(lambda x_in, c: torch.zeros_like(x_in))
    assert after < 0.05 * zero and after < 0.05 * before, (before, after, zero)


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf"), True, "0.5"])
def test_bad_sigma_data_is_refused_in_one_line(value):
    with pytest.raises(ValueError, match="`sigma_data` must be a positive finite number") as info:
        Score(lambda c, x, p: x, SDE, parameterisation="edm", sigma_data=value)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="`sigma_data` must be a positive finite number"):
        TrainConfig(loss="edm", sigma_data=value)


def test_edm_options_are_refused_where_they_do_not_apply():
    with pytest.raises(ValueError, match="`sigma_data` applies to parameterisation='edm' only"):
        Score(lambda t, x, p: x, SDE, parameterisation="eps", sigma_data=0.5)
    with pytest.raises(ValueError, match="`time_input` does not apply to parameterisation='edm'"):
        Score.from_module(OptimalF(), SDE, parameterisation="edm", time_input="log_snr")

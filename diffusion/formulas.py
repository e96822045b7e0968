"""The reverse-time formulas of a diffusion SDE, written once.

For a forward process ``dx = f(t) x dt + g(t) dW`` with marginals
``x_t | x_0 ~ N(alpha_t x_0, sigma_t^2 I)`` and a score ``s ~ grad log p_t(x)``:

========================== ============================================= ==========================================
function                   formula                                       source
========================== ============================================= ==========================================
:func:`reverse_drift`      ``f(t) x - g(t)^2 s``                         Anderson (1982); Song et al. (2021), eq. 6
:func:`flow_velocity`      ``f(t) x - g(t)^2 s / 2``                     Song et al. (2021), eq. 13 (probability flow)
:func:`x0_from_score`      ``x0_hat = (x + sigma_t^2 s) / alpha_t``      Efron (2011), Tweedie's formula
:func:`eps_from_score`     ``eps_hat = -sigma_t s``                      Ho et al. (2020) (eps-prediction)
:func:`log_snr_rate`       ``d lambda/dt = -g(t)^2 / (2 sigma_t^2)``     Lu et al. (2022), DPM-Solver, §2
========================== ============================================= ==========================================

(``lambda_t = log(alpha_t / sigma_t)``; the last line follows from
``f = d log(alpha)/dt`` and ``g^2 = d(sigma^2)/dt - 2 f sigma^2``.)

Every function takes the coefficients at one time (``f = kernels.f(t, q)``,
``g2 = kernels.g2(t, q)``, ...: floats, or columns for one time per row) and
is written with array operators only, so it runs on NumPy arrays and torch
tensors and is registered with :func:`sdekit.ops.jittable` for the problem
functions that Numba compiles. The argument order of the two predictions
matches the conversions of :mod:`diffusion.score` (``prediction, x, alpha,
sigma``).

References
----------
Anderson (1982), Reverse-time diffusion equation models, Stoch. Proc. Appl. 12(3), 313–326.
Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole (2021), Score-based generative modeling through
stochastic differential equations, ICLR. Ho, Jain & Abbeel (2020), Denoising diffusion probabilistic
models, NeurIPS. Efron (2011), Tweedie's formula and selection bias, JASA 106. Lu, Zhou, Bao, Chen, Li &
Zhu (2022), DPM-Solver, NeurIPS.
"""

from __future__ import annotations

from sdekit import ops

__all__ = ["reverse_drift", "flow_velocity", "x0_from_score", "eps_from_score", "log_snr_rate"]


@ops.jittable
def reverse_drift(f, g2, x, score):
    """Drift ``f x - g^2 s`` of the reverse-time SDE ``dx = [f x - g^2 s] dt + g dW`` (integrated from ``T`` down)."""
    return f * x - g2 * score


@ops.jittable
def flow_velocity(f, g2, x, score):
    """Velocity ``f x - g^2 s / 2`` of the probability-flow ODE (same marginals as the SDE)."""
    return f * x - 0.5 * g2 * score


@ops.jittable
def x0_from_score(score, x, alpha, sigma):
    """Tweedie's posterior mean ``E[x_0 | x_t] = (x + sigma^2 s) / alpha``."""
    return (x + sigma * sigma * score) / alpha


@ops.jittable
def eps_from_score(score, x, alpha, sigma):
    """Noise prediction ``E[eps | x_t] = -sigma s`` (``x`` unused: the signature of the other conversions)."""
    return -sigma * score


@ops.jittable
def log_snr_rate(g2, sigma):
    """``d lambda/dt = -g^2 / (2 sigma^2)`` for ``lambda = log(alpha / sigma)`` (negative: lambda decreases)."""
    return -0.5 * g2 / (sigma * sigma)

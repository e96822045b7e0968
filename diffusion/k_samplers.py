"""The stochastic samplers researchers compare against, as chains of :func:`diffusion.sample`.

=================== ================================================ ==============================================
method              scheme                                           order
=================== ================================================ ==============================================
``euler_ancestral`` Euler step of the PF-ODE to ``sigma_down``, then weak order 1; ``eta = 0``: Euler on the
                    fresh noise ``sigma_up`` (Crowson's k-diffusion  PF-ODE, order 1
                    ``sample_euler_ancestral``; Ho et al. 2020)
``dpmpp_2m_sde``    DPM-Solver++(2M) SDE (Lu et al. 2022b), ``eta``  weak order 1 (2 measured on Gaussian data);
                    and ``solver_type`` "midpoint" or "heun"         ``eta = 0``: DPM-Solver++(2M), order 2
``dpmpp_3m_sde``    DPM-Solver++(3M) SDE (k-diffusion's              weak order 1 (2 measured on Gaussian data);
                    ``sample_dpmpp_3m_sde``)                         ``eta = 0``: order 2 (third-order steps after
                                                                     a first-order and a second-order start)
``edm``             Karras et al. (2022), Alg. 2: churn, then a      ``S_churn = 0``: Heun on the PF-ODE, order 2;
                    Heun step of the PF-ODE                          with churn: weak order 2 (see ``_edm``)
=================== ================================================ ==============================================

The orders on Gaussian data (where each chain maps Gaussians to Gaussians and its output law is
exact) are checked in ``tests/test_k_samplers.py``. For general data only weak order 1 is claimed
for the DPM-Solver++ SDE methods: that of their first-order step (the exact step with the
denoiser frozen); the order 2 seen on Gaussian data (a linear denoiser) is not proved in general.

All four work in Karras et al.'s variables, for any :class:`~diffusion.sdes.DiffusionSDE`
(VP, sub-VP, VE): the noise level ``sigma = sigma_t / alpha_t`` (:meth:`DiffusionSDE.edm_sigma`),
the state ``y = x / alpha_t``, whose law at level ``sigma`` is the data convolved with
``N(0, sigma^2 I)``, and the denoiser ``D(y, sigma) = E[x_0 | x_t = alpha_t y]`` (Tweedie's mean
from the score). In these variables the probability-flow ODE is ``dy/dsigma = (y - D) / sigma``
(Karras et al. 2022, eq. 1 with ``sigma(t) = t`` and eq. 3), and the formulas are k-diffusion's (Crowson,
``k_diffusion/sampling.py``) line for line; each new grid state ``alpha_s y`` goes to ``visit``.

Our grids end at ``eps > 0`` (sigma > 0), never at ``sigma = 0``: every step is a full step of
the method (k-diffusion's special last steps happen only when the next sigma is 0). ``nfe`` is
``steps`` for ``euler_ancestral`` and the DPM-Solver++ SDE methods, ``2 steps`` for ``edm``.

Noise: ``noise()`` of :func:`diffusion.sampling._run_chain` draws, at each call, ``(n, dim)``
standard normals from its own sdekit :class:`~sdekit.BrownianPath` stream read on one step (one
counter-based normal per entry, no tree refinement), so row ``i`` depends on ``(seed, i)`` only:
the same seed gives the same samples on every backend, and the first ``m`` of ``n`` samples are
the ``m`` drawn alone. A chain draws once per step that adds noise (``edm`` only on churned steps).
"""

from __future__ import annotations

import math

from .formulas import x0_from_score
from .score import params_like

__all__ = ["K_CHAINS"]


def _denoiser(sde, score, x):
    """``D(y, t) = E[x_0 | x_t = alpha_t y]``, Tweedie's mean from the score (``x`` gives the params' array type)."""
    params = params_like(score.params, x)

    def denoise(t, y):
        alpha, sigma = float(sde.alpha(t)), float(sde.sigma(t))
        x_t = alpha * y
        return x0_from_score(score.kernel(t, x_t, params), x_t, alpha, sigma)

    return denoise


def _levels(sde, times):
    """Karras et al.'s noise levels ``sigma_t / alpha_t`` and the ``alpha_t`` of the grid times."""
    return [float(sde.edm_sigma(float(t))) for t in times], [float(sde.alpha(float(t))) for t in times]


def _only_midpoint(options, method):
    if options.solver_type != "midpoint":
        raise ValueError(f"AncestralSDE: `solver_type` applies to method 'dpmpp_2m_sde' only; method={method!r} "
                         "has no such choice: drop it.")


def _euler_ancestral(sde, score, times, x, noise, options, visit):
    """Euler ancestral sampling (k-diffusion's ``sample_euler_ancestral``, Crowson).

    From level ``sigma`` to ``sigma_next``: an Euler step of the PF-ODE
    ``dy/dsigma = (y - D) / sigma`` to ``sigma_down``, then fresh noise of
    standard deviation ``s_noise sigma_up``, where
    ``sigma_up = min(sigma_next, eta sigma_next sqrt(sigma^2 - sigma_next^2) / sigma)``
    and ``sigma_down^2 + sigma_up^2 = sigma_next^2``. With ``eta = 1`` this is
    the variance of DDPM's ancestral posterior step (Ho et al. 2020, eq. 7).

    Order: an exact ODE step to ``sigma_down`` followed by the noise maps
    the law at ``sigma`` onto the law at ``sigma_next`` exactly (Gaussian
    convolution); only the Euler step errs, ``O(h^2)`` per step: weak order 1.
    ``eta = 0`` is Euler on the PF-ODE (order 1).
    """
    _only_midpoint(options, "euler_ancestral")
    sigmas, alphas = _levels(sde, times)
    denoise = _denoiser(sde, score, x)
    y = x / alphas[0]
    for i in range(len(times) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(float(times[i]), y)
        sigma_up = 0.0
        if options.eta > 0:
            sigma_up = min(sigma_next, options.eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
        sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
        y = y + (y - denoised) / sigma * (sigma_down - sigma)
        if sigma_up > 0 and options.s_noise > 0:
            y = y + noise() * (options.s_noise * sigma_up)
        visit(alphas[i + 1] * y)
    return alphas[-1] * y, len(times) - 1


def _dpmpp_2m_sde(sde, score, times, x, noise, options, visit):
    """DPM-Solver++(2M) SDE: the SDE variant of Lu et al. (2022b)'s DPM-Solver++(2M), as k-diffusion's ``sample_dpmpp_2m_sde``.

    With ``h = log(sigma / sigma_next)`` (the step in log-SNR) and ``H = (1 + eta) h``,
    the first-order step is the exact solution of the reverse SDE (scaled by
    ``eta``) with the denoiser frozen,
    ``y' = (sigma_next / sigma) e^{-eta h} y + (1 - e^{-H}) D + s_noise sigma_next sqrt(1 - e^{-2 eta h}) z``;
    from the second step on, the difference ``(D - D_prev) / r`` with
    ``r = h_prev / h`` adds ``(1 - e^{-H}) / 2`` of it (``solver_type="midpoint"``)
    or ``(1 - (1 - e^{-H}) / H)`` of it (``"heun"``).

    Order: weak order 1 for ``eta > 0`` (on Gaussian data the law's error
    falls at order 2); ``eta = 0`` with ``"midpoint"`` is the standard
    DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2), order 2.
    """
    sigmas, alphas = _levels(sde, times)
    denoise = _denoiser(sde, score, x)
    eta, heun = options.eta, options.solver_type == "heun"
    y = x / alphas[0]
    denoised_prev, h_prev = None, None
    for i in range(len(times) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(float(times[i]), y)
        h = math.log(sigma / sigma_next)
        total = h + eta * h
        decay = -math.expm1(-total)  # 1 - e^{-H}
        y = (sigma_next / sigma * math.exp(-eta * h)) * y + decay * denoised
        if denoised_prev is not None:
            weight = (1.0 - decay / total) if heun else 0.5 * decay
            y = y + (weight * h / h_prev) * (denoised - denoised_prev)
        noise_std = options.s_noise * sigma_next * math.sqrt(-math.expm1(-2.0 * eta * h))
        if noise_std > 0:
            y = y + noise() * noise_std
        denoised_prev, h_prev = denoised, h
        visit(alphas[i + 1] * y)
    return alphas[-1] * y, len(times) - 1


def _dpmpp_3m_sde(sde, score, times, x, noise, options, visit):
    """DPM-Solver++(3M) SDE (k-diffusion's ``sample_dpmpp_3m_sde``, Crowson; after Lu et al. 2022b).

    The first-order step of :func:`_dpmpp_2m_sde` (``y' = e^{-H} y + (1 - e^{-H}) D + noise``,
    ``H = (1 + eta) h``), plus ``phi_2 d1 - phi_3 d2`` from the last three
    denoiser values: ``d1``, ``d2`` are the first and second divided
    differences in log-SNR extrapolated to the step, ``phi_2 = 1 - (1 - e^{-H}) / H``,
    ``phi_3 = phi_2 / H - 1/2``; the second step uses ``phi_2 d1`` only.

    Order: weak order 1 for ``eta > 0`` (on Gaussian data the law's error
    falls at order 2); ``eta = 0`` is the multistep DPM-Solver++(3M) (Lu et
    al. 2022b, §3.3) with k-diffusion's start: the first step is first order,
    and its ``O(h^2)`` local error leaves the method globally of order 2.
    """
    _only_midpoint(options, "dpmpp_3m_sde")
    sigmas, alphas = _levels(sde, times)
    denoise = _denoiser(sde, score, x)
    eta = options.eta
    y = x / alphas[0]
    denoised_1 = denoised_2 = h_1 = h_2 = None
    for i in range(len(times) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(float(times[i]), y)
        h = math.log(sigma / sigma_next)
        total = h * (eta + 1.0)
        y = math.exp(-total) * y + (-math.expm1(-total)) * denoised
        if h_1 is not None:
            phi_2 = 1.0 + math.expm1(-total) / total
            r0 = h_1 / h
            d1_0 = (denoised - denoised_1) / r0
            if h_2 is not None:
                r1 = h_2 / h
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / total - 0.5
                y = y + phi_2 * d1 - phi_3 * d2
            else:
                y = y + phi_2 * d1_0
        noise_std = options.s_noise * sigma_next * math.sqrt(-math.expm1(-2.0 * h * eta))
        if noise_std > 0:
            y = y + noise() * noise_std
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
        visit(alphas[i + 1] * y)
    return alphas[-1] * y, len(times) - 1


def _edm(sde, score, times, x, noise, options, visit):
    """Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based Generative Models", Alg. 2.

    At level ``sigma_i`` (``N`` steps): ``gamma = min(S_churn / N, sqrt(2) - 1)`` if
    ``S_tmin <= sigma_i <= S_tmax`` (levels in sigma units, not times) else 0;
    the churn raises the level to ``sigma_hat = (1 + gamma) sigma_i`` by adding
    ``S_noise sqrt(sigma_hat^2 - sigma_i^2) z``; then one Heun step of
    ``dy/dsigma = (y - D) / sigma`` from ``sigma_hat`` to ``sigma_{i+1}`` (two
    evaluations: our grids end at ``sigma > 0``, so every step is a full Heun
    step, never the Euler step Alg. 2 takes into ``sigma = 0``).

    Order: ``S_churn = 0`` is Heun's method on the probability-flow ODE, order 2
    pathwise. With churn (``S_noise = 1``) the added noise maps the exact law at
    ``sigma_i`` onto the exact law at ``sigma_hat``, so only the Heun steps err
    (``O(h^3)`` each): weak order 2 while ``gamma = S_churn / N``. The churn may
    lift the level above ``sigma(T)``: the score is then evaluated at the time
    ``t_hat > T`` of ``sigma_hat`` (set ``S_tmax`` below ``sigma(T)`` to avoid it).
    """
    sigmas, alphas = _levels(sde, times)
    denoise = _denoiser(sde, score, x)
    n_steps = len(times) - 1
    max_gamma = min(options.S_churn / n_steps, math.sqrt(2.0) - 1.0)
    y = x / alphas[0]
    for i in range(n_steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        t_hat, sigma_hat = float(times[i]), sigma
        if max_gamma > 0 and options.S_tmin <= sigma <= options.S_tmax:
            sigma_hat = sigma * (1.0 + max_gamma)
            t_hat = float(sde.t_from_edm_sigma(sigma_hat))
            if not math.isfinite(t_hat):
                raise ValueError(f"Churn: `S_churn`={options.S_churn} lifts sigma={sigma:.6g} to {sigma_hat:.6g}, beyond "
                                 f"the levels of {sde!r}; lower S_churn or set S_tmax < {sigma:.6g}.")
            if options.S_noise > 0:
                y = y + noise() * (options.S_noise * math.sqrt(sigma_hat**2 - sigma**2))
        slope = (y - denoise(t_hat, y)) / sigma_hat
        dsigma = sigma_next - sigma_hat
        y_euler = y + slope * dsigma
        slope_next = (y_euler - denoise(float(times[i + 1]), y_euler)) / sigma_next
        y = y + (0.5 * dsigma) * (slope + slope_next)
        visit(alphas[i + 1] * y)
    return alphas[-1] * y, 2 * n_steps


# The chains of diffusion.sampling.CHAINS, by method name; each reads the option record of METHOD_OPTIONS.
K_CHAINS = {"euler_ancestral": _euler_ancestral, "dpmpp_2m_sde": _dpmpp_2m_sde, "dpmpp_3m_sde": _dpmpp_3m_sde,
            "edm": _edm}

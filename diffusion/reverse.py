"""Reverse-time dynamics of a diffusion SDE as sdekit problems.

Given a score ``s(t, x) ~ grad log p_t(x)``:

* the reverse-time SDE ``dx = [f(t) x - g(t)^2 s(t, x)] dt + g(t) dW``, solved
  by sdekit backwards from ``T`` to ``eps`` (a ``t_span`` with ``t1 < t0``:
  the steps are negative and the Brownian increments run along them). The
  noise is additive, so SRA1 has strong order 1.5;
* the probability-flow ODE ``dx/dt = f(t) x - g(t)^2 s(t, x) / 2``, which has
  the same marginals;
* the same ODE in semilinear form for sdekit's exponential integrators,
  with log factor ``A = log sigma_t``, clock ``lambda = log(alpha_t/sigma_t)``
  and nonlinearity ``D = x0_hat`` (Tweedie's mean):
  ``dx/dt = A' x + exp(A + lambda) lambda' x0_hat``.

The formulas themselves are those of :mod:`diffusion.formulas`. The problems'
``params`` are the score's (which begin with the SDE's), so they solve on
every backend the score runs on.

References
----------
Anderson (1982), Reverse-time diffusion equation models, Stoch. Proc. Appl. 12;
Song et al. (2021), ICLR (probability flow); Lu et al. (2022), DPM-Solver++.
"""

from __future__ import annotations

import sdekit
from sdekit import ops

from .formulas import eps_from_score, flow_velocity, log_snr_rate, reverse_drift, x0_from_score
from .score import Score

__all__ = ["reverse_sde", "probability_flow", "probability_flow_semilinear"]


_PROBLEMS: dict = {}


def _cached(score, kind, build):
    """The problem's functions are made once per (kind, score kernel, SDE family); each call gets a copy
    carrying this score's parameters. The numba backend compiles per function object, so sampling again
    (even with another Score wrapping the same kernel, e.g. another mixture) compiles nothing new. Scores
    that run on torch only are not cached: they compile nothing, and the cache would keep their networks."""
    kernels, score_kernel = _check(score)
    if "numba" not in score.backends:
        # nothing to compile (torch modules): build afresh rather than keep every network's closure alive
        return build(kernels, score_kernel).with_params(score.params)
    key = (kind, score_kernel, kernels)
    if key not in _PROBLEMS:
        _PROBLEMS[key] = build(kernels, score_kernel)
    return _PROBLEMS[key].with_params(score.params)


def _check(score):
    if not isinstance(score, Score):
        raise ValueError(
            f"`score` must be a diffusion.Score (wrap a function with Score(fn, sde, parameterisation=...)), "
            f"got {type(score).__name__}."
        )
    return score.sde.kernels, score.kernel


def reverse_sde(score: Score) -> sdekit.SDE:
    """The reverse-time SDE of ``score.sde`` driven by ``score`` (additive noise)."""
    return _cached(score, "reverse_sde", _reverse_sde)


def _reverse_sde(kernels, score_kernel):
    f, g2 = kernels.f, kernels.g2

    def drift(t, x, p):
        return reverse_drift(f(t, p), g2(t, p), x, score_kernel(t, x, p))

    def diffusion(t, x, p):
        return ops.sqrt(g2(t, p)) + 0.0 * x

    return sdekit.SDE(ops.jittable(drift), ops.jittable(diffusion), noise="additive")


def probability_flow(score: Score) -> sdekit.ODE:
    """The probability-flow ODE ``dx/dt = f x - g^2 s / 2``; its ``rhs`` is jittable (a velocity kernel)."""
    return _cached(score, "probability_flow", _probability_flow)


def _probability_flow(kernels, score_kernel):
    f, g2 = kernels.f, kernels.g2

    def velocity(t, x, p):
        return flow_velocity(f(t, p), g2(t, p), x, score_kernel(t, x, p))

    return sdekit.ODE(ops.jittable(velocity))


def probability_flow_semilinear(score: Score, prediction: str = "x0") -> sdekit.SemilinearODE:
    """The probability-flow ODE in semilinear form, for sdekit's exponential integrators.

    ``prediction="x0"`` (data prediction, DPM-Solver++): ``A = log sigma_t``,
    clock ``lambda_t``, ``D = x0_hat``. ``prediction="eps"`` (noise prediction,
    DPM-Solver / DEIS): ``A = log alpha_t``, clock ``-lambda_t``, ``D = eps_hat``,
    since ``dx/dt = (log alpha)' x - lambda' sigma eps_hat``.
    """
    if prediction not in ("x0", "eps"):
        raise ValueError(f"`prediction` must be 'x0' (data prediction) or 'eps' (noise prediction), got {prediction!r}.")
    build = _semilinear_x0 if prediction == "x0" else _semilinear_eps
    return _cached(score, ("semilinear", prediction), build)


def _semilinear_x0(kernels, score_kernel):
    f, g2, alpha, sigma, log_snr = kernels.f, kernels.g2, kernels.alpha, kernels.sigma, kernels.log_snr

    def log_factor(t, p):
        return ops.log(sigma(t, p))

    def clock(t, p):
        return log_snr(t, p)

    def x0_hat(t, x, p):
        return x0_from_score(score_kernel(t, x, p), x, alpha(t, p), sigma(t, p))

    def clock_rate(t, p):
        return log_snr_rate(g2(t, p), sigma(t, p))

    def log_factor_rate(t, p):
        # d log sigma/dt = f - d lambda/dt, since lambda = log alpha - log sigma and f = d log alpha/dt
        return f(t, p) - clock_rate(t, p)

    ops.jittable(clock_rate)
    return sdekit.SemilinearODE(log_factor, clock, x0_hat, log_factor_rate=log_factor_rate, clock_rate=clock_rate)


def _semilinear_eps(kernels, score_kernel):
    f, g2, alpha, sigma, log_snr = kernels.f, kernels.g2, kernels.alpha, kernels.sigma, kernels.log_snr

    def log_factor(t, p):
        return ops.log(alpha(t, p))

    def clock(t, p):
        return -log_snr(t, p)

    def eps_hat(t, x, p):
        return eps_from_score(score_kernel(t, x, p), x, alpha(t, p), sigma(t, p))

    def log_factor_rate(t, p):
        return f(t, p)

    def clock_rate(t, p):
        return -log_snr_rate(g2(t, p), sigma(t, p))

    return sdekit.SemilinearODE(log_factor, clock, eps_hat, log_factor_rate=log_factor_rate, clock_rate=clock_rate)

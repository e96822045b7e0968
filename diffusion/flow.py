"""Flow matching and rectified flow as forward processes of the diffusion front end.

A stochastic interpolant ``x_t = alpha_t x_0 + sigma_t eps`` (``eps ~ N(0, I)``, ``t in [0, 1]``,
``alpha_0 = 1``, ``sigma_0 = 0``) has the Gaussian conditionals of a diffusion SDE. Its marginals
are those of the linear SDE ``dx = f(t) x dt + g(t) dW`` with

    f = alpha' / alpha,        g^2 = 2 sigma sigma' - 2 (alpha' / alpha) sigma^2

(the identities of :mod:`diffusion.sdes`: ``f = d log alpha/dt``, ``g^2 = d sigma^2/dt - 2 f sigma^2``),
so :class:`FlowMatching` is a :class:`~diffusion.sdes.DiffusionSDE` and every sampler of
:func:`diffusion.sample` runs on it unchanged: the probability-flow ODE (``euler``, ``heun``, ``rk4``,
``dopri5``...), the exponential integrators (``ddim``, ``dpmpp_2m``...) and the reverse SDE.

The velocity of flow matching is the probability-flow drift: for ``x0_hat = E[x_0 | x_t]`` and
``eps_hat = E[eps | x_t] = -sigma_t s`` (``s`` the score) and ``x = alpha x0_hat + sigma eps_hat``,

    f x - g^2 s / 2 = (alpha'/alpha)(alpha x0_hat + sigma eps_hat) + (sigma sigma' - (alpha'/alpha) sigma^2) eps_hat / sigma
                    = alpha' x0_hat + sigma' eps_hat = E[alpha' x_0 + sigma' eps | x_t] = v(t, x),

the minimiser of the flow-matching loss (:func:`diffusion.training.flow_matching_loss`). A network that
predicts ``v`` is a ``Score(..., parameterisation="velocity")``; integrating the PF-ODE with it integrates
``dx/dt = v`` (to rounding: the score it is converted to, ``s = 2 (f x - v) / g^2``, is converted back).

The end point. Rectified flow has ``alpha_1 = 0``: at ``t = 1`` the log-SNR is ``-inf``, ``f = -1/(1 - t)``
and ``g^2 = 2t/(1 - t)`` are infinite, the score conversion is ``0/0`` and the log-SNR grids and the
exponential integrators have an infinite first step. So sampling starts at ``T = 1 - delta`` (default
``delta = 1e-3``, symmetric with ``eps = 1e-3``: log-SNR from ``-6.9`` to ``6.9``), and the prior is
``N(0, sigma_T^2 I)``, the law of ``sigma_T eps``. The exact ``p_T`` is the law of ``alpha_T x_0 + sigma_T eps``:
coupling the two through the same ``eps`` gives ``W_2(p_T, prior) <= alpha_T (E|x_0|^2)^(1/2)``
(``1e-3`` times the data's root-mean-square norm at the default), the same kind of mismatch as the VP
prior's (``alpha_1 = 6.7e-3``). ``T = 1`` itself is refused (``alpha_T`` must be positive).

The reverse SDE of rectified flow is stiff near ``T``: its drift's rate is about ``1/(1 - t)`` (``1000`` at the
default ``T``), so explicit SDE schemes need steps below ``2 (1 - T)`` there; the ``"logsnr"`` grid gives
them (``dt = delta dlambda`` near ``T``). The probability-flow ODE is not stiff (``v`` is as smooth as the data).

References
----------
Liu, Gong & Liu (2023), Flow straight and fast: learning to generate and transfer data with rectified
flow, ICLR (``x_t = (1 - t) x_0 + t eps``, their eq. 1 with the time reversed). Lipman, Chen, Ben-Hamu,
Nickel & Le (2023), Flow matching for generative modeling, ICLR (the conditional flow-matching loss,
eq. 9; Gaussian paths, eq. 10–15). Albergo & Vanden-Eijnden (2023), Building normalizing flows with
stochastic interpolants, ICLR (general ``alpha_t, sigma_t`` interpolants). Song et al. (2021), ICLR
(the probability-flow ODE, eq. 13).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

from sdekit import ops

from .sdes import DiffusionSDE, Kernels

__all__ = ["FlowMatching", "RectifiedFlow", "interpolant_derivatives"]

# Bisection steps of the generic log-SNR inverse: 2^-60 of [0, 1] is below a double's spacing at 1.
_BISECTION_STEPS = 60
# Points of [eps, T] at which an interpolant is checked.
_CHECK_POINTS = 257


@functools.cache
def _interpolant_kernels(alpha: Callable, sigma: Callable, dalpha: Callable, dsigma: Callable,
                         t_from_log_snr: Callable | None) -> Kernels:
    """The process kernels of ``x_t = alpha_t x_0 + sigma_t eps`` (made once per set of functions, so that
    compiled code and the grids' caches are shared by every process built from them)."""

    def f(t, p):
        return dalpha(t, p) / alpha(t, p)

    def g2(t, p):
        s = sigma(t, p)
        return 2.0 * s * (dsigma(t, p) - dalpha(t, p) / alpha(t, p) * s)

    def log_snr(t, p):
        return ops.log(alpha(t, p)) - ops.log(sigma(t, p))

    ops.jittable(log_snr)
    if t_from_log_snr is None:
        def t_from_log_snr(lam, p):
            # bisection on [0, 1] (log_snr is decreasing: the root lies above a point where log_snr > lam);
            # branch-free, so one source runs on floats, arrays, tensors and in Numba
            lo = 0.0 * lam
            hi = lo + 1.0
            for _ in range(_BISECTION_STEPS):
                mid = 0.5 * (lo + hi)
                above = log_snr(mid, p) > lam
                lo = lo + (mid - lo) * above
                hi = mid + (hi - mid) * above
            return 0.5 * (lo + hi)

    fns = {"alpha": alpha, "sigma": sigma, "f": f, "g2": g2, "log_snr": log_snr, "t_from_log_snr": t_from_log_snr}
    return Kernels(**{k: ops.jittable(v) for k, v in fns.items()})


def interpolant_derivatives(process: DiffusionSDE, t):
    """``(alpha'_t, sigma'_t)`` of a process: the interpolant's own derivatives for :class:`FlowMatching`; for any other
    diffusion SDE, from ``f = alpha'/alpha`` and ``g^2 = 2 sigma sigma' - 2 f sigma^2``: ``alpha' = f alpha``,
    ``sigma' = g^2 / (2 sigma) + f sigma``. ``t`` a number, an array or a tensor."""
    if isinstance(process, FlowMatching):
        return process.dalpha(t), process.dsigma(t)
    f, s = process.f(t), process.sigma(t)
    return f * process.alpha(t), 0.5 * process.g2(t) / s + f * s


def _positive_time(v, name: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a number in (0, 1], got {v!r}.") from None
    if not (math.isfinite(x) and 0.0 < x <= 1.0):
        raise ValueError(f"`{name}` must be a number in (0, 1], got {v!r}.")
    return x


class FlowMatching(DiffusionSDE):
    """The interpolant ``x_t = alpha_t x_0 + sigma_t eps`` as a forward process (flow matching).

    Parameters
    ----------
    alpha, sigma : callable
        ``alpha(t, params)`` and ``sigma(t, params)``, with ``alpha_0 = 1``, ``sigma_0 = 0``, both
        positive on ``[eps, T]`` and ``alpha/sigma`` strictly decreasing there. Written with
        :mod:`sdekit.ops` and array operators (they are compiled by Numba and run on arrays and
        tensors, as the kernels of :mod:`diffusion.sdes`).
    dalpha, dsigma : callable
        Their time derivatives ``alpha'(t, params)``, ``sigma'(t, params)`` (checked against central
        differences).
    params : tuple
        Numbers the functions read (by position: ``p[0]``, ...).
    T : float
        Start of sampling, in ``(0, 1]``, with ``alpha_T > 0`` (default ``1 - 1e-3``).
    eps : float
        Default end of sampling, in ``(0, T)`` (default ``1e-3``).
    t_from_log_snr : callable, optional
        The inverse of ``lambda_t = log(alpha_t / sigma_t)`` as ``fn(lam, params)``; default: a
        60-step bisection on ``[0, 1]`` (exact to rounding, 60 evaluations of ``lambda`` per call).

    Notes
    -----
    ``f = alpha'/alpha``, ``g^2 = 2 sigma sigma' - 2 (alpha'/alpha) sigma^2``; the prior is
    ``N(0, sigma_T^2 I)`` (see the module notes for its distance to ``p_T``). A function that is
    non-finite, a non-positive ``alpha`` or ``sigma``, a log-SNR that does not decrease (``g^2 <= 0``), a
    derivative that is not the derivative, or ``alpha_0 != 1``, ``sigma_0 != 0``, is refused in one line.
    """

    def __init__(self, alpha: Callable, sigma: Callable, dalpha: Callable, dsigma: Callable, *, params: tuple = (),
                 T: float = 1.0 - 1e-3, eps: float = 1e-3, t_from_log_snr: Callable | None = None):
        for name, fn in (("alpha", alpha), ("sigma", sigma), ("dalpha", dalpha), ("dsigma", dsigma)):
            if not callable(fn):
                raise ValueError(f"`{name}` must be a function fn(t, params), got {type(fn).__name__}.")
        if t_from_log_snr is not None and not callable(t_from_log_snr):
            raise ValueError(f"`t_from_log_snr` must be a function fn(lam, params), got {type(t_from_log_snr).__name__}.")
        if not isinstance(params, tuple):
            raise ValueError(f"`params` must be a tuple, got {type(params).__name__}.")
        self.T, self.eps = _positive_time(T, "T"), _positive_time(eps, "eps")
        if self.eps >= self.T:
            raise ValueError(f"`eps` ({eps}) must be smaller than T ({self.T}).")
        self.params = params
        self.interpolant = tuple(ops.jittable(fn) for fn in (alpha, sigma, dalpha, dsigma))
        self.kernels = _interpolant_kernels(*self.interpolant, None if t_from_log_snr is None else ops.jittable(t_from_log_snr))
        self._check_interpolant()
        self.prior_std = float(self.sigma(self.T))

    def dalpha(self, t):
        """``alpha'_t``."""
        return self.interpolant[2](t, self.params)

    def dsigma(self, t):
        """``sigma'_t``."""
        return self.interpolant[3](t, self.params)

    def _check_interpolant(self):
        """Refuse, in one line, an interpolant that would sample garbage (see the class notes)."""
        t = np.linspace(self.eps, self.T, _CHECK_POINTS)
        values = {}
        for name, fn in zip(("alpha", "sigma", "dalpha", "dsigma"), self.interpolant, strict=True):
            try:
                v = np.broadcast_to(np.asarray(fn(t, self.params), dtype=np.float64), t.shape)
            except Exception as exc:  # noqa: BLE001 - any failure of a user function is reported the same way
                raise ValueError(f"`{name}` fails on an array of times in [eps, T] ({type(exc).__name__}: {exc}); write it "
                                 "with sdekit.ops and array operators.") from None
            bad = ~np.isfinite(v)
            if bad.any():
                raise ValueError(f"`{name}` is not finite at t={t[bad][0]:g} in [eps, T]=[{self.eps}, {self.T}]; choose "
                                 "eps and T inside the interpolant's domain.")
            values[name] = v
        for name in ("alpha", "sigma"):
            low = values[name] <= 0
            if low.any():
                raise ValueError(f"`{name}` must be positive on [eps, T], got {values[name][low][0]:g} at t={t[low][0]:g}"
                                 + ("; alpha_T = 0 makes the log-SNR -inf at T: choose T < 1." if name == "alpha" else "."))
        start = (float(self.interpolant[0](0.0, self.params)), float(self.interpolant[1](0.0, self.params)))
        if not (abs(start[0] - 1.0) <= 1e-8 and abs(start[1]) <= 1e-8):
            raise ValueError(f"an interpolant starts at the data: alpha_0 = 1 and sigma_0 = 0, got {start[0]:g} and "
                             f"{start[1]:g}.")
        g2 = np.asarray(self.g2(t), dtype=np.float64)
        if not (g2 > 0).all():
            k = int(np.argmax(~(g2 > 0)))
            raise ValueError(f"alpha_t/sigma_t must decrease strictly on [eps, T] (g^2 = 2 sigma sigma' - 2 (alpha'/alpha) "
                             f"sigma^2 > 0), got g^2 = {g2[k]:g} at t={t[k]:g}.")
        # the derivatives against central differences (error ~ h^2 f''' + 1e-16 / h, h = 1e-6)
        h = 1e-6 * min(1.0, self.eps)
        inner = t[1:-1]
        for name, fn, d in (("dalpha", self.interpolant[0], values["dalpha"]), ("dsigma", self.interpolant[1], values["dsigma"])):
            fd = (np.asarray(fn(inner + h, self.params), dtype=np.float64) - np.asarray(fn(inner - h, self.params))) / (2 * h)
            err = np.abs(fd - d[1:-1]) / np.maximum(1.0, np.abs(d[1:-1]))
            if not (err <= 1e-4).all():
                k = int(np.argmax(err))
                raise ValueError(f"`{name}` is not the derivative of `{name[1:]}`: {d[1:-1][k]:g} at t={inner[k]:g}, where "
                                 f"central differences give {fd[k]:g}.")
        lam = np.asarray(self.log_snr(t), dtype=np.float64)
        back = np.asarray(self.t_from_log_snr(lam), dtype=np.float64)
        if not (np.abs(back - t) <= 1e-8 * max(1.0, self.T)).all():
            k = int(np.argmax(np.abs(back - t)))
            raise ValueError(f"`t_from_log_snr` does not invert log(alpha/sigma): it maps lambda_t at t={t[k]:g} to "
                             f"{back[k]:g}.")

    def _log_snr_from_sigma(self, s):
        # t_from_sigma: sigma_t is increasing wherever alpha_t is non-increasing (the usual interpolants);
        # invert it by bisection on [0, T] and go through the log-SNR like the other processes
        s = np.asarray(s, dtype=np.float64)
        lo, hi = np.zeros_like(s), np.full_like(s, self.T)
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            below = np.asarray(self.sigma(mid)) < s
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        return self.log_snr(0.5 * (lo + hi))

    def __repr__(self):
        name = getattr(self.interpolant[0], "__name__", "alpha"), getattr(self.interpolant[1], "__name__", "sigma")
        return f"FlowMatching(alpha={name[0]}, sigma={name[1]}, params={self.params}, T={self.T}, eps={self.eps})"


# --------------------------------------------------------------------------- rectified flow
def _rf_alpha(t, p):
    return 1.0 - t


def _rf_sigma(t, p):
    return 1.0 * t


def _rf_dalpha(t, p):
    return -1.0 + 0.0 * t


def _rf_dsigma(t, p):
    return 1.0 + 0.0 * t


def _rf_t_from_log_snr(lam, p):
    # lambda = log((1 - t)/t)  <=>  t = 1 / (1 + e^lambda)
    return ops.sigmoid(-lam)


class RectifiedFlow(FlowMatching):
    """Rectified flow: ``x_t = (1 - t) x_0 + t eps`` (Liu et al. 2023; Lipman et al. 2023's optimal-transport path
    with ``sigma_min = 0``).

    ``f = -1/(1 - t)``, ``g^2 = 2t/(1 - t)``, ``lambda_t = log((1 - t)/t)``, velocity ``v = eps - x_0``.

    Parameters
    ----------
    T : float
        Start of sampling, in ``(0, 1)`` (default ``1 - 1e-3``; ``T = 1`` has ``alpha_T = 0``, see the module notes).
    eps : float
        Default end of sampling (``1e-3``).
    """

    def __init__(self, *, T: float = 1.0 - 1e-3, eps: float = 1e-3):
        super().__init__(_rf_alpha, _rf_sigma, _rf_dalpha, _rf_dsigma, T=T, eps=eps, t_from_log_snr=_rf_t_from_log_snr)

    def _log_snr_from_sigma(self, s):
        return ops.log1p(-s) - ops.log(s)

    def __repr__(self):
        return f"RectifiedFlow(T={self.T}, eps={self.eps})"

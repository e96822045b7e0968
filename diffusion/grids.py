"""Time grids for sampling: uniform, quadratic, log-SNR and Karras.

Each grid is a smooth decreasing map ``t = phi(u)`` from ``u in [0, 1]`` onto
``[eps, T]`` (``phi(0) = T``, ``phi(1) = eps``); ``n`` steps visit
``t_k = phi(k / n)``. The maps are sdekit kernels ``phi(u, params)`` with
their derivatives, so a sampler that integrates with a general sdekit scheme
steps uniformly in ``u`` on :func:`sdekit.time_change` of the reverse problem,
and the samplers that step between grid points use :meth:`TimeGrid.times`.

=============== ==================================================================
``"uniform"``    uniform in ``t`` (Song et al. 2021)
``"quadratic"``  ``t = eps + (T - eps)(1 - u)^2``: dense near the data (DDIM's "quad")
``"logsnr"``     uniform in ``lambda = log(alpha/sigma)`` (DPM-Solver's default)
``"karras"``     uniform in ``s^(1/rho)``, ``s = sigma/alpha`` (Karras et al. 2022, rho = 7)
=============== ==================================================================
"""

from __future__ import annotations

import functools
import math

import numpy as np

from sdekit import ops
from sdekit.checks import positive_float
from sdekit.params import extend

from .formulas import log_snr_rate
from .sdes import DiffusionSDE

__all__ = ["GRIDS", "TimeGrid", "time_grid"]

GRIDS = ("uniform", "quadratic", "logsnr", "karras")


class TimeGrid:
    """A sampling grid ``t = phi(u)`` on ``[eps, T]`` for one SDE.

    Attributes
    ----------
    phi, dphi : callable
        Kernels ``phi(u, params)`` and ``phi'(u, params)``.
    params : record
        ``sdekit.params.extend(sde.params, T=, eps=, start=, span=, rho=)``: the SDE's parameters (which
        its kernels read by position), the end points, and the grid's uniform variable
        ``v = start + span * u`` (``lambda`` for ``"logsnr"``, ``(sigma/alpha)^(1/rho)`` for ``"karras"``).
    """

    def __init__(self, sde: DiffusionSDE, kind: str = "uniform", *, eps: float | None = None, T: float | None = None,
                 rho: float = 7.0):
        if kind not in GRIDS:
            raise ValueError(f"unknown grid {kind!r}; choose one of {GRIDS}.")
        T = sde.T if T is None else float(T)
        eps = sde.eps if eps is None else float(eps)
        if not (0.0 < eps < T <= sde.T + 1e-12):
            raise ValueError(f"the grid needs 0 < eps < T <= sde.T={sde.T}; got eps={eps}, T={T}.")
        rho = positive_float(rho, "rho")
        self.sde, self.kind, self.T, self.eps, self.rho = sde, kind, T, eps, rho
        lam_T, lam_e = float(sde.log_snr(T)), float(sde.log_snr(eps))
        if kind == "logsnr":
            start, span = lam_T, lam_e - lam_T
        elif kind == "karras":
            noise_T, noise_eps = math.exp(-lam_T / rho), math.exp(-lam_e / rho)
            start, span = noise_T, noise_eps - noise_T
        else:
            start, span = 0.0, 0.0
        self.params = extend(sde.params, T=T, eps=eps, start=start, span=span, rho=rho)
        self.phi, self.dphi = _maps(sde.kernels, kind)

    def times(self, n: int) -> np.ndarray:
        """The ``n + 1`` grid times, from ``T`` down to ``eps``."""
        if not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"the number of steps must be a positive integer, got {n!r}.")
        u = np.arange(n + 1) / n
        t = np.asarray(self.phi(u, self.params), dtype=np.float64)
        t[0], t[-1] = self.T, self.eps
        return t

    def __repr__(self):
        extra = f", rho={self.rho}" if self.kind == "karras" else ""
        return f"TimeGrid({self.kind!r}, T={self.T}, eps={self.eps}{extra})"


def time_grid(sde: DiffusionSDE, n: int, kind: str = "uniform", *, eps: float | None = None, T: float | None = None,
              rho: float = 7.0) -> np.ndarray:
    """``n + 1`` decreasing sampling times from ``T`` to ``eps`` (see the module table)."""
    return TimeGrid(sde, kind, eps=eps, T=T, rho=rho).times(n)


@functools.cache
def _maps(kernels, kind: str):
    """``phi, dphi`` for one process family (made once: compiled code is reused across grids).

    ``p`` is the grid's record (:attr:`TimeGrid.params`); the SDE's kernels read its leading fields.
    """
    g2, sigma = kernels.g2, kernels.sigma
    t_of = kernels.t_from_log_snr

    def dlam_dt(t, p):
        return log_snr_rate(g2(t, p), sigma(t, p))

    if kind == "uniform":
        def phi(u, p):
            return p.T + (p.eps - p.T) * u

        def dphi(u, p):
            return (p.eps - p.T) + 0.0 * u
    elif kind == "quadratic":
        def phi(u, p):
            return p.eps + (p.T - p.eps) * (1.0 - u) * (1.0 - u)

        def dphi(u, p):
            return -2.0 * (p.T - p.eps) * (1.0 - u)
    elif kind == "logsnr":
        def phi(u, p):
            return t_of(p.start + p.span * u, p)

        def dphi(u, p):
            return p.span / dlam_dt(phi(u, p), p)
    else:
        def phi(u, p):
            return t_of(-p.rho * ops.log(p.start + p.span * u), p)

        def dphi(u, p):
            base = p.start + p.span * u
            return (-p.rho * p.span / base) / dlam_dt(phi(u, p), p)

    ops.jittable(dlam_dt)
    return ops.jittable(phi), ops.jittable(dphi)

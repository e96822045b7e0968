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

from .sdes import DiffusionSDE

__all__ = ["GRIDS", "TimeGrid", "time_grid"]

GRIDS = ("uniform", "quadratic", "logsnr", "karras")


class TimeGrid:
    """A sampling grid ``t = phi(u)`` on ``[eps, T]`` for one SDE.

    Attributes
    ----------
    phi, dphi : callable
        Kernels ``phi(u, params)`` and ``phi'(u, params)``.
    params : tuple
        ``sde.params`` followed by ``(T, eps, c0, c1, rho)``.
    """

    def __init__(self, sde: DiffusionSDE, kind: str = "uniform", *, eps: float | None = None, T: float | None = None,
                 rho: float = 7.0):
        if kind not in GRIDS:
            raise ValueError(f"unknown grid {kind!r}; choose one of {GRIDS}.")
        T = sde.T if T is None else float(T)
        eps = sde.eps if eps is None else float(eps)
        if not (0.0 < eps < T <= sde.T + 1e-12):
            raise ValueError(f"the grid needs 0 < eps < T <= sde.T={sde.T}; got eps={eps}, T={T}.")
        rho = float(rho)
        if not (math.isfinite(rho) and rho > 0):
            raise ValueError(f"`rho` must be a positive number, got {rho!r}.")
        self.sde, self.kind, self.T, self.eps, self.rho = sde, kind, T, eps, rho
        lam_T, lam_e = float(sde.log_snr(T)), float(sde.log_snr(eps))
        if kind == "logsnr":
            c0, c1 = lam_T, lam_e - lam_T
        elif kind == "karras":
            sT, se = math.exp(-lam_T / rho), math.exp(-lam_e / rho)
            c0, c1 = sT, se - sT
        else:
            c0, c1 = 0.0, 0.0
        self.params = tuple(sde.params) + (T, eps, c0, c1, rho)
        self.phi, self.dphi = _maps(sde.kernels, len(sde.params), kind)

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
def _maps(kernels, n: int, kind: str):
    """``phi, dphi`` for one process family (made once: compiled code is reused across grids)."""
    g2, sigma = kernels.g2, kernels.sigma
    t_of = kernels.t_from_log_snr

    def dlam_dt(t, q):
        s = sigma(t, q)
        return -0.5 * g2(t, q) / (s * s)

    if kind == "uniform":
        def phi(u, p):
            return p[n] + (p[n + 1] - p[n]) * u

        def dphi(u, p):
            return (p[n + 1] - p[n]) + 0.0 * u
    elif kind == "quadratic":
        def phi(u, p):
            return p[n + 1] + (p[n] - p[n + 1]) * (1.0 - u) * (1.0 - u)

        def dphi(u, p):
            return -2.0 * (p[n] - p[n + 1]) * (1.0 - u)
    elif kind == "logsnr":
        def phi(u, p):
            return t_of(p[n + 2] + p[n + 3] * u, p[:n])

        def dphi(u, p):
            return p[n + 3] / dlam_dt(phi(u, p), p[:n])
    else:
        def phi(u, p):
            base = p[n + 2] + p[n + 3] * u
            return t_of(-p[n + 4] * ops.log(base), p[:n])

        def dphi(u, p):
            base = p[n + 2] + p[n + 3] * u
            return (-p[n + 4] * p[n + 3] / base) / dlam_dt(phi(u, p), p[:n])

    ops.jittable(dlam_dt)
    return ops.jittable(phi), ops.jittable(dphi)

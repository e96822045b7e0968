"""Time grids for sampling: uniform, quadratic, power, log-SNR and Karras.

Each grid is a smooth decreasing map ``t = phi(u)`` from ``u in [0, 1]`` onto
``[eps, T]`` (``phi(0) = T``, ``phi(1) = eps``); ``n`` steps visit
``t_k = phi(k / n)``. The maps are sdekit kernels ``phi(u, params)`` with
their derivatives, so a sampler that integrates with a general sdekit scheme
steps uniformly in ``u`` on :func:`sdekit.time_change` of the reverse problem,
and the samplers that step between grid points use :meth:`TimeGrid.times`.

=============== ==================================================================
``"uniform"``    uniform in ``t`` (Song et al. 2021)
``"quadratic"``  ``t = eps + (T - eps)(1 - u)^2``: dense near the data (DDIM's "quad")
``"power"``      uniform in ``(tau - tau_eps)^(1/rho)``, ``rho >= 1`` (default 2), where ``tau`` is the time at
                 which the reference VP SDE (Song et al. 2021: beta 0.1..20) has the same noise level
                 ``sigma/alpha``; on ``VPSDE()`` it is ``t = eps + (T - eps)(1 - u)^rho`` exactly (rho 2:
                 ``"quadratic"``). The default sampler's grid (``diffusion.sampling.DEFAULT_SAMPLERS``)
``"logsnr"``     uniform in ``lambda = log(alpha/sigma)`` (DPM-Solver's default)
``"karras"``     uniform in ``s^(1/rho)``, ``s = sigma/alpha`` (Karras et al. 2022, rho = 7)
=============== ==================================================================

The power grid is defined through noise levels so that one ``rho`` means the same steps on every process:
a power of the process's own time would put the steps of a VE or cosine-schedule model, whose time is
already close to log-SNR, far nearer the data than on the VP SDE (measured: 2.4-4x larger errors at 20
evaluations, ``benchmarks/bench_default_sampler.py --processes``).

A grid may also be given as an array of times (:meth:`TimeGrid.from_times`,
``sample(grid=times)``) or of EDM noise levels (:meth:`TimeGrid.from_sigmas`,
``sample(sigmas=...)``), as k-diffusion's samplers take them: kind ``"custom"``.
Its map ``phi`` interpolates the given points with a monotone cubic (PCHIP,
Fritsch & Carlson 1980, with Fritsch & Butland's 1984 slopes) in the log-SNR
``lambda``, so that ``t_k = phi(k / n)`` exactly; ``phi`` is C1 and a cubic
in ``lambda`` between consecutive knots, and a scheme stepping uniformly in
``u`` steps from knot to knot, so every step integrates a problem that is
smooth on that step (the scheme keeps its local order). Times equally spaced
in ``lambda`` give the ``"logsnr"`` map exactly.
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

# relative tolerance of a custom grid's first time against the SDE's T (a sigma_max converted to a time)
START_RTOL = 1e-9

GRIDS = ("uniform", "quadratic", "power", "logsnr", "karras")
# the exponent ``rho`` of a grid kind that reads one, when it is not given
DEFAULT_RHO = {"karras": 7.0, "power": 2.0}


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
                 rho: float | None = None):
        if kind not in GRIDS:
            raise ValueError(f"unknown grid {kind!r}; choose one of {GRIDS}.")
        rho = DEFAULT_RHO.get(kind, 7.0) if rho is None else rho
        T = sde.T if T is None else float(T)
        eps = sde.eps if eps is None else float(eps)
        if not (0.0 < eps < T <= sde.T + 1e-12):
            raise ValueError(f"the grid needs 0 < eps < T <= sde.T={sde.T}; got eps={eps}, T={T}.")
        rho = positive_float(rho, "rho")
        if kind == "power" and rho < 1.0:
            raise ValueError(f"the power grid needs `rho` >= 1 (its last step would have an infinite rate), got {rho}.")
        self.sde, self.kind, self.T, self.eps, self.rho = sde, kind, T, eps, rho
        lam_T, lam_e = float(sde.log_snr(T)), float(sde.log_snr(eps))
        if kind == "logsnr":
            start, span = lam_T, lam_e - lam_T
        elif kind == "karras":
            noise_T, noise_eps = math.exp(-lam_T / rho), math.exp(-lam_e / rho)
            start, span = noise_T, noise_eps - noise_T
        elif kind == "power":
            start, end = _reference_vp_time(lam_T), _reference_vp_time(lam_e)
            span = end - start
        else:
            start, span = 0.0, 0.0
        self.params = extend(sde.params, T=T, eps=eps, start=start, span=span, rho=rho)
        self.phi, self.dphi = _maps(sde.kernels, kind)

    @classmethod
    def from_times(cls, sde: DiffusionSDE, times, *, name: str = "grid") -> TimeGrid:
        """A ``"custom"`` grid through the given times: ``T = t_0 > t_1 > ... > t_n > 0``.

        ``times`` is a 1-D array of at least 2 finite, strictly decreasing
        times; the first is the SDE's start ``T`` (where the prior is drawn;
        a start within a relative ``1e-9`` of ``T`` is taken as ``T``) and the
        last, the end ``eps``, is positive. Anything else is a one-line
        ``ValueError`` naming ``name``. See the module notes for the map ``phi``.
        """
        t = _times_array(times, name)
        if not abs(t[0] - sde.T) <= START_RTOL * sde.T:
            raise ValueError(f"`{name}` must start at the SDE's start time T={sde.T} (the prior is drawn there), got "
                             f"{float(t[0])}; start it at T, or build the SDE with T={float(t[0])}.")
        if not t[-1] > 0.0:
            raise ValueError(f"`{name}` must end at a positive time (the score is singular at t=0), got {float(t[-1])}; "
                             "end it at sde.eps or another positive time.")
        t[0] = sde.T
        return cls._custom(sde, t)

    @classmethod
    def from_sigmas(cls, sde: DiffusionSDE, sigmas, *, name: str = "sigmas") -> TimeGrid:
        """A ``"custom"`` grid through EDM noise levels ``s = sigma_t / alpha_t`` (Karras et al. 2022), strictly decreasing.

        ``t_k = sde.t_from_edm_sigma(s_k)``: the first level is ``sde.edm_sigma(sde.T)``
        (to a relative ``1e-9``) and every level is positive. A trailing 0, as
        k-diffusion's ``get_sigmas_*`` append, is refused: the sampler stops at
        the last positive level and ``denoise=True`` takes the final step to
        the data (Tweedie's mean).
        """
        s = _times_array(sigmas, name, what="noise levels")
        if s[-1] == 0.0 and s.size > 2 and s[-2] > 0.0:
            raise ValueError(f"`{name}` ends with 0 (k-diffusion's appended final level): drop it, sigmas[:-1]; the "
                             "sampler stops at the last positive sigma and denoise=True takes the final step to the data.")
        s_T = float(sde.edm_sigma(sde.T))
        if not abs(s[0] - s_T) <= START_RTOL * s_T:
            raise ValueError(f"`{name}` must start at the SDE's noise level at T, sde.edm_sigma(sde.T)={s_T!r} (the prior "
                             f"is drawn there), got {float(s[0])}; start it there, or build the SDE with a smaller T.")
        if not s[-1] > 0.0:
            raise ValueError(f"`{name}` must be positive, got {float(s[-1])}; end it at sde.edm_sigma(sde.eps) or another "
                             "positive level.")
        t = np.asarray(sde.t_from_edm_sigma(s), dtype=np.float64)
        t[0] = sde.T
        if not (np.all(np.isfinite(t)) and np.all(np.diff(t) < 0) and t[-1] > 0):
            raise ValueError(f"`{name}` maps to times that are not strictly decreasing and positive ({float(t[0])} ... "
                             f"{float(t[-1])}); space the noise levels further apart.")
        return cls._custom(sde, t)

    @classmethod
    def _custom(cls, sde, t):
        self = cls.__new__(cls)
        self.sde, self.kind, self.T, self.eps, self.rho = sde, "custom", float(t[0]), float(t[-1]), None
        self._times = t
        knots = np.asarray(sde.log_snr(t), dtype=np.float64)
        self.params = extend(sde.params, T=self.T, eps=self.eps, knots=knots, slopes=_pchip_slopes(knots))
        self.phi, self.dphi = _maps(sde.kernels, "custom")
        return self

    @property
    def steps(self) -> int | None:
        """The number of steps of a ``"custom"`` grid (None for the other kinds: any ``n``)."""
        return self._times.size - 1 if self.kind == "custom" else None

    def times(self, n: int) -> np.ndarray:
        """The ``n + 1`` grid times, from ``T`` down to ``eps``."""
        if not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"the number of steps must be a positive integer, got {n!r}.")
        if self.kind == "custom":
            if n != self.steps:
                raise ValueError(f"this custom grid has {self.steps} steps, not {n}; drop `steps` (it comes from the grid).")
            return self._times.copy()
        u = np.arange(n + 1) / n
        t = np.asarray(self.phi(u, self.params), dtype=np.float64)
        t[0], t[-1] = self.T, self.eps
        return t

    def __repr__(self):
        if self.kind == "custom":
            return f"TimeGrid('custom', T={self.T}, eps={self.eps}, steps={self.steps})"
        extra = f", rho={self.rho}" if self.kind in DEFAULT_RHO else ""
        return f"TimeGrid({self.kind!r}, T={self.T}, eps={self.eps}{extra})"


def time_grid(sde: DiffusionSDE, n: int, kind: str = "uniform", *, eps: float | None = None, T: float | None = None,
              rho: float | None = None) -> np.ndarray:
    """``n + 1`` decreasing sampling times from ``T`` to ``eps`` (see the module table)."""
    return TimeGrid(sde, kind, eps=eps, T=T, rho=rho).times(n)


def _times_array(values, name, what="times"):
    """``values`` as a checked float64 array: 1-D, finite, at least 2 entries, strictly decreasing."""
    try:
        a = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a 1-D array of {what}, got {type(values).__name__}.") from None
    if a.ndim != 1 or a.size < 2:
        raise ValueError(f"`{name}` must be a 1-D array of at least 2 {what} (one step), got shape {a.shape}.")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"`{name}` contains NaN or infinite {what}; give finite values.")
    if not np.all(np.diff(a) < 0):
        k = int(np.argmax(np.diff(a) >= 0))
        raise ValueError(f"`{name}` must be strictly decreasing (the sampler runs from noise to data); entries {k} and "
                         f"{k + 1} are {float(a[k])}, {float(a[k + 1])}.")
    return a


def _pchip_slopes(y):
    """Derivatives ``dy/du`` at the knots ``u_k = k/n`` of the monotone cubic (PCHIP) through ``y``.

    Interior: the harmonic mean of the neighbouring secants (Fritsch & Butland 1984; equal spacing), 0 where
    they change sign; ends: the shape-preserving three-point formula (as SciPy's ``PchipInterpolator``).
    """
    n = y.size - 1
    d = np.diff(y) * n  # secant slopes in u
    m = np.empty_like(y)
    if n == 1:
        m[:] = d[0]
        return m
    same = d[:-1] * d[1:] > 0
    m[1:-1] = np.where(same, 2.0 / np.where(same, 1.0 / d[:-1] + 1.0 / d[1:], 1.0), 0.0)
    for end, d0, d1 in ((0, d[0], d[1]), (n, d[-1], d[-2])):
        slope = (3.0 * d0 - d1) / 2.0
        if np.sign(slope) != np.sign(d0):
            slope = 0.0
        elif np.sign(d0) != np.sign(d1) and abs(slope) > abs(3.0 * d0):
            slope = 3.0 * d0
        m[end] = slope
    return m


def _reference_vp_time(lam: float) -> float:
    """The time at which the reference VP SDE (beta 0.1..20) has log-SNR ``lam``: ``B = log(1 + e^(-2 lam))`` solved
    for ``tau`` in ``B = 0.1 tau + 9.95 tau^2``."""
    b = math.log1p(math.exp(-2.0 * lam))
    return 2.0 * b / (0.1 + math.sqrt(0.01 + 39.8 * b))


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
    elif kind == "power":
        def tau_of(u, p):
            # reference VP time: tau_T at u = 0, tau_eps at u = 1, (tau - tau_eps) proportional to (1 - u)^rho
            return p.start + p.span * (1.0 - (1.0 - u) ** p.rho)

        def lam_of_tau(tau):
            # log-SNR of the reference VP SDE: B = 0.1 tau + 9.95 tau^2, (sigma/alpha)^2 = e^B - 1
            return -0.5 * ops.log(ops.exp(0.1 * tau + 9.95 * tau * tau) - 1.0)

        ops.jittable(tau_of)
        ops.jittable(lam_of_tau)

        def phi(u, p):
            return t_of(lam_of_tau(tau_of(u, p)), p)

        def dphi(u, p):
            tau = tau_of(u, p)
            growth = ops.exp(0.1 * tau + 9.95 * tau * tau)
            dlam_dtau = -0.5 * (0.1 + 19.9 * tau) * growth / (growth - 1.0)
            dtau_du = p.span * p.rho * (1.0 - u) ** (p.rho - 1.0)
            return dlam_dtau * dtau_du / dlam_dt(phi(u, p), p)
    elif kind == "logsnr":
        def phi(u, p):
            return t_of(p.start + p.span * u, p)

        def dphi(u, p):
            return p.span / dlam_dt(phi(u, p), p)
    elif kind == "custom":
        def hermite(u, p):
            # the PCHIP piece of the knot interval holding u: lambda(u) and dlambda/du (Hermite basis on [0, 1])
            n = p.knots.shape[0] - 1
            k = int(u * n)
            if k > n - 1:
                k = n - 1
            if k < 0:
                k = 0
            s = u * n - k
            y0, y1, m0, m1 = p.knots[k], p.knots[k + 1], p.slopes[k] / n, p.slopes[k + 1] / n
            lam = (1.0 + 2.0 * s) * (1.0 - s) ** 2 * y0 + s * (1.0 - s) ** 2 * m0 + s * s * (3.0 - 2.0 * s) * y1 \
                + s * s * (s - 1.0) * m1
            dlam = n * (6.0 * s * (s - 1.0) * (y0 - y1) + (1.0 - s) * (1.0 - 3.0 * s) * m0 + s * (3.0 * s - 2.0) * m1)
            return lam, dlam

        ops.jittable(hermite)

        def phi(u, p):
            return t_of(hermite(u, p)[0], p)

        def dphi(u, p):
            lam, dlam = hermite(u, p)
            return dlam / dlam_dt(t_of(lam, p), p)
    else:
        def phi(u, p):
            return t_of(-p.rho * ops.log(p.start + p.span * u), p)

        def dphi(u, p):
            base = p.start + p.span * u
            return (-p.rho * p.span / base) / dlam_dt(phi(u, p), p)

    ops.jittable(dlam_dt)
    return ops.jittable(phi), ops.jittable(dphi)

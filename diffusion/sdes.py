"""Forward diffusion SDEs: VP (linear and cosine schedules), sub-VP and VE.

Each process is ``dx = f(t) x dt + g(t) dW`` with Gaussian marginals
``x_t | x_0 ~ N(alpha_t x_0, sigma_t^2 I)``. Everything a sampler needs is a
function of ``t`` alone: ``alpha_t``, ``sigma_t``, ``f(t)``, ``g(t)^2`` and the
log signal-to-noise ratio ``lambda_t = log(alpha_t / sigma_t)``.

Those coefficient functions exist twice over: as methods (``sde.alpha(t)``)
for users, and as *kernels* ``fn(t, params)`` (``sde.kernels.alpha``) written
with :mod:`sdekit.ops`, so that the reverse-time problems built from them
solve on every sdekit backend (compiled by Numba, or on torch tensors).
``t`` may be a float, an array or a tensor.

Useful identities (all processes): ``f = d log(alpha)/dt``,
``g^2 = d(sigma^2)/dt - 2 f sigma^2``, ``d lambda/dt = -g^2 / (2 sigma^2)``.

References
----------
Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole (2021), Score-based
generative modeling through stochastic differential equations, ICLR (VP,
sub-VP, VE). Nichol & Dhariwal (2021), Improved DDPM, ICML (cosine schedule).
"""

from __future__ import annotations

import math
from collections import namedtuple
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sdekit import BrownianPath, ops
from sdekit.checks import positive_float

__all__ = ["DiffusionSDE", "VPSDE", "SubVPSDE", "VESDE", "Kernels", "LinearSchedule", "CosineSchedule", "GeometricSchedule"]


@dataclass(frozen=True)
class Kernels:
    """The coefficient functions of a process as ``fn(t, params)`` kernels (jittable)."""

    alpha: Callable
    sigma: Callable
    f: Callable
    g2: Callable
    log_snr: Callable
    t_from_log_snr: Callable


# The parameter records of the process families. The kernels read them by position (``p[0]``, ...), so
# they take any tuple that begins with these values: the record itself, a plain slice ``params[:n]``, or a
# record that extends it (``sdekit.params.extend(sde.params, ...)``, as a Score's and a TimeGrid's do).
LinearSchedule = namedtuple("LinearSchedule", "beta_min beta_max")
CosineSchedule = namedtuple("CosineSchedule", "offset log_cos_start")  # log_cos_start = log cos(s/(1+s) pi/2)
GeometricSchedule = namedtuple("GeometricSchedule", "sigma_min sigma_max log_ratio")  # log(sigma_max/sigma_min)


def _kernels(**fns) -> Kernels:
    return Kernels(**{k: ops.jittable(v) for k, v in fns.items()})


def _variance_preserving(beta, log_abar, t_from_log_snr) -> Kernels:
    """The kernels of a VP process ``dx = -beta/2 x dt + sqrt(beta) dW`` from ``beta(t, p)`` and
    ``log abar(t, p) = log alpha_t^2 = -int_0^t beta``: ``alpha = abar^(1/2)``, ``sigma^2 = 1 - abar``,
    ``lambda = (log abar - log(1 - abar)) / 2`` (Song et al. 2021, eq. 29)."""

    def alpha(t, p):
        return ops.exp(0.5 * log_abar(t, p))

    def sigma(t, p):
        return ops.sqrt(-ops.expm1(log_abar(t, p)))

    def f(t, p):
        return -0.5 * beta(t, p)

    def g2(t, p):
        return beta(t, p)

    def log_snr(t, p):
        la = log_abar(t, p)
        return 0.5 * la - 0.5 * ops.log(-ops.expm1(la))

    return _kernels(alpha=alpha, sigma=sigma, f=f, g2=g2, log_snr=log_snr, t_from_log_snr=t_from_log_snr)


# --------------------------------------------------------------------------- VP, linear beta (LinearSchedule)
def _vp_B(t, p):
    """``B(t) = int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / 2``."""
    beta_min, beta_max = p[0], p[1]
    return beta_min * t + 0.5 * (beta_max - beta_min) * t * t


def _vp_beta(t, p):
    beta_min, beta_max = p[0], p[1]
    return beta_min + (beta_max - beta_min) * t


def _vp_log_abar(t, p):
    return -_vp_B(t, p)


def _vp_t_from_B(B, p):
    # root of 0.5 (b1 - b0) t^2 + b0 t - B = 0, in the form without cancellation
    beta_min, beta_max = p[0], p[1]
    return 2.0 * B / (beta_min + ops.sqrt(beta_min * beta_min + 2.0 * (beta_max - beta_min) * B))


def _vp_t_from_log_snr(lam, p):
    return _vp_t_from_B(ops.log1p(ops.exp(-2.0 * lam)), p)


for _fn in (_vp_B, _vp_beta, _vp_log_abar, _vp_t_from_B):
    ops.jittable(_fn)
VP_LINEAR = _variance_preserving(_vp_beta, _vp_log_abar, _vp_t_from_log_snr)


# --------------------------------------------------------------------------- VP, cosine schedule (CosineSchedule)
def _cos_angle(t, p):
    offset = p[0]
    return (t + offset) / (1.0 + offset) * (0.5 * math.pi)


def _cos_log_abar(t, p):
    log_cos_start = p[1]
    return 2.0 * (ops.log(ops.cos(_cos_angle(t, p))) - log_cos_start)


def _cos_beta(t, p):
    offset = p[0]
    return math.pi / (1.0 + offset) * ops.tan(_cos_angle(t, p))


def _cos_t_from_log_snr(lam, p):
    # abar = sigmoid(2 lam) and cos(angle) = sqrt(abar) cos(angle(0))
    offset, log_cos_start = p[0], p[1]
    c = ops.exp(0.5 * (-ops.log1p(ops.exp(-2.0 * lam))) + log_cos_start)
    return ops.arccos(c) * (2.0 * (1.0 + offset) / math.pi) - offset


for _fn in (_cos_angle, _cos_log_abar, _cos_beta):
    ops.jittable(_fn)
VP_COSINE = _variance_preserving(_cos_beta, _cos_log_abar, _cos_t_from_log_snr)


# --------------------------------------------------------------------------- sub-VP (LinearSchedule)
def _subvp_sigma(t, p):
    return -ops.expm1(-_vp_B(t, p))


def _subvp_g2(t, p):
    return _vp_beta(t, p) * -ops.expm1(-2.0 * _vp_B(t, p))


def _subvp_log_snr(t, p):
    B = _vp_B(t, p)
    return -0.5 * B - ops.log(-ops.expm1(-B))


def _subvp_t_from_log_snr(lam, p):
    # y = exp(-B/2) solves e^lam y^2 + y - e^lam = 0
    e = ops.exp(lam)
    y = 2.0 * e / (1.0 + ops.sqrt(1.0 + 4.0 * e * e))
    return _vp_t_from_B(-2.0 * ops.log(y), p)


SUBVP = _kernels(alpha=VP_LINEAR.alpha, sigma=_subvp_sigma, f=VP_LINEAR.f, g2=_subvp_g2, log_snr=_subvp_log_snr,
                 t_from_log_snr=_subvp_t_from_log_snr)


# --------------------------------------------------------------------------- VE (GeometricSchedule)
def _ve_alpha(t, p):
    return 1.0 + 0.0 * t


def _ve_sigma(t, p):
    sigma_min, log_ratio = p[0], p[2]
    return sigma_min * ops.sqrt(ops.expm1(2.0 * log_ratio * t))


def _ve_f(t, p):
    return 0.0 * t


def _ve_g2(t, p):
    sigma_min, log_ratio = p[0], p[2]
    return 2.0 * log_ratio * sigma_min * sigma_min * ops.exp(2.0 * log_ratio * t)


def _ve_log_snr(t, p):
    return -ops.log(_ve_sigma(t, p))


def _ve_t_from_log_snr(lam, p):
    sigma_min, log_ratio = p[0], p[2]
    return ops.log1p(ops.exp(-2.0 * lam) / (sigma_min * sigma_min)) / (2.0 * log_ratio)


ops.jittable(_ve_sigma)
VE = _kernels(alpha=_ve_alpha, sigma=_ve_sigma, f=_ve_f, g2=_ve_g2, log_snr=_ve_log_snr,
              t_from_log_snr=_ve_t_from_log_snr)


# --------------------------------------------------------------------------- classes
def _stream_seed(seed: int, stream: int) -> int:
    """A child seed for one use of a user seed (prior noise, sampler noise, probes...)."""
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}.")
    return int(np.random.SeedSequence([int(seed), int(stream)]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def standard_normals(seed: int, stream: int, n: int, dim: int, *, like=None):
    """``(n, dim)`` standard normals from sdekit's counter-based generator.

    The numbers depend only on ``(seed, stream)`` (not on the backend, device
    or batch split); ``like`` (a tensor) makes a tensor of its device and dtype.
    """
    path = BrownianPath(_stream_seed(seed, stream), (0.0, 1.0), n_paths=n, noise_dim=dim)
    if like is not None and type(like).__module__.startswith("torch"):
        return path.increments(1, device=like.device, dtype=like.dtype)[0]
    return path.increments(1)[0]


def same_process(a, b) -> bool:
    """Whether two SDE objects describe the same forward process (same class, coefficients, T and eps)."""
    return a is b or (type(a) is type(b) and a.kernels is b.kernels and tuple(a.params) == tuple(b.params)
                      and a.T == b.T and a.eps == b.eps)


class DiffusionSDE:
    """Base class of the forward processes.

    Attributes
    ----------
    T : float
        Final time of the forward process (start of sampling).
    eps : float
        Default end time of sampling (the reverse dynamics stop there).
    params : LinearSchedule, CosineSchedule or GeometricSchedule
        The parameters the kernels read (a record of floats; the kernels read it by position, so any
        tuple that begins with these values will do).
    kernels : Kernels
        ``alpha, sigma, f, g2, log_snr, t_from_log_snr`` as ``fn(t, params)``.
    prior_std : float
        Standard deviation of the prior ``N(0, prior_std^2 I)`` used at ``T``.
    """

    T: float = 1.0
    eps: float = 1e-3
    prior_std: float = 1.0
    params: tuple = ()
    kernels: Kernels

    # coefficient functions ------------------------------------------------
    def alpha(self, t):
        """Signal scale ``alpha_t`` of the marginal ``N(alpha_t x_0, sigma_t^2 I)``."""
        return self.kernels.alpha(t, self.params)

    def sigma(self, t):
        """Noise standard deviation ``sigma_t`` of the marginal."""
        return self.kernels.sigma(t, self.params)

    def marginal(self, t):
        """``(alpha_t, sigma_t)``."""
        return self.alpha(t), self.sigma(t)

    def f(self, t):
        """Drift coefficient: the forward drift is ``f(t) x``."""
        return self.kernels.f(t, self.params)

    def g2(self, t):
        """Squared diffusion coefficient ``g(t)^2``."""
        return self.kernels.g2(t, self.params)

    def g(self, t):
        """Diffusion coefficient ``g(t)``."""
        return ops.sqrt(self.g2(t))

    def log_snr(self, t):
        """``lambda_t = log(alpha_t / sigma_t)`` (decreasing in ``t``)."""
        return self.kernels.log_snr(t, self.params)

    def t_from_log_snr(self, lam):
        """Inverse of :meth:`log_snr`."""
        return self.kernels.t_from_log_snr(lam, self.params)

    def edm_sigma(self, t):
        """The noise level of ``x / alpha_t``: ``sigma_t / alpha_t = exp(-lambda_t)`` (Karras et al.'s sigma)."""
        return ops.exp(-self.log_snr(t))

    def t_from_edm_sigma(self, s):
        """Inverse of :meth:`edm_sigma`."""
        return self.t_from_log_snr(-ops.log(s))

    def t_from_sigma(self, s):
        """Inverse of :meth:`sigma` (the marginal noise standard deviation)."""
        return self.t_from_log_snr(self._log_snr_from_sigma(s))

    def _log_snr_from_sigma(self, s):
        raise NotImplementedError

    # forward process ------------------------------------------------------
    def perturb(self, x0, t, noise):
        """``x_t = alpha_t x_0 + sigma_t noise`` (``t`` scalar or one time per row)."""
        a, s = self.marginal(t)
        if getattr(t, "ndim", 0) == 1:
            a, s = a[:, None], s[:, None]
        return a * x0 + s * noise

    def prior_sample(self, n: int, dim: int, *, seed: int, like=None):
        """``n`` draws of the prior ``N(0, prior_std^2 I_dim)``, reproducible on every backend."""
        return self.prior_std * standard_normals(seed, 0, n, dim, like=like)

    def prior_log_prob(self, x):
        """Log-density of the prior ``N(0, prior_std^2 I)`` at the rows of ``x``."""
        d = x.shape[-1]
        q = (x * x).sum(-1) / self.prior_std**2
        return -0.5 * q - d * (math.log(self.prior_std) + 0.5 * math.log(2 * math.pi))

    def check_time(self, t, name="t"):
        t = float(t)
        if not (0.0 < t <= self.T):
            raise ValueError(f"`{name}` must lie in (0, T={self.T}], got {t}.")
        return t


class VPSDE(DiffusionSDE):
    """Variance-preserving SDE ``dx = -beta(t)/2 x dt + sqrt(beta(t)) dW``.

    Parameters
    ----------
    beta_min, beta_max : float
        Linear schedule ``beta(t) = beta_min + (beta_max - beta_min) t``
        (defaults 0.1 and 20, Song et al. 2021): ``alpha_t = exp(-B/2)``,
        ``sigma_t^2 = 1 - exp(-B)``, ``B = int_0^t beta``.
    schedule : {"linear", "cosine"}
        ``"cosine"``: ``alpha_t^2 = c(t)/c(0)``, ``c(t) = cos^2((t + s)/(1 + s) pi/2)``
        (Nichol & Dhariwal 2021), ``beta(t) = pi/(1+s) tan((t+s)/(1+s) pi/2)``.
        ``beta`` diverges at ``t = 1``, so ``T`` defaults to 0.9946 (log-SNR -5,
        as in DPM-Solver).
    s : float
        Offset of the cosine schedule (0.008).
    T, eps : float, optional
        Start and default end time of sampling (defaults 1 / 0.9946 and 1e-3).

    Notes
    -----
    The prior is ``N(0, I)``; the exact ``p_T`` differs from it by
    ``alpha_T x_0`` (``alpha_1 = 6.7e-3`` for the linear defaults).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, *, schedule: str = "linear", s: float = 0.008,
                 T: float | None = None, eps: float = 1e-3):
        if schedule not in ("linear", "cosine"):
            raise ValueError(f"`schedule` must be 'linear' or 'cosine', got {schedule!r}.")
        self.schedule = schedule
        if schedule == "linear":
            self.beta_min, self.beta_max = positive_float(beta_min, "beta_min"), positive_float(beta_max, "beta_max")
            if self.beta_max < self.beta_min:
                raise ValueError(f"`beta_max` ({beta_max}) must be at least `beta_min` ({beta_min}).")
            self.params = LinearSchedule(self.beta_min, self.beta_max)
            self.kernels = VP_LINEAR
            default_T = 1.0
        else:
            self.s = positive_float(s, "s")
            self.params = CosineSchedule(self.s, math.log(math.cos(self.s / (1 + self.s) * math.pi / 2)))
            self.kernels = VP_COSINE
            default_T = 0.9946
        self.T = default_T if T is None else positive_float(T, "T")
        if schedule == "cosine" and self.T >= 1.0:
            raise ValueError(f"the cosine schedule is singular at t = 1; choose T < 1 (default 0.9946), got {T}.")
        self.eps = positive_float(eps, "eps")
        if self.eps >= self.T:
            raise ValueError(f"`eps` ({eps}) must be smaller than T ({self.T}).")

    def beta(self, t):
        """``beta(t) = g(t)^2``."""
        return self.g2(t)

    def _log_snr_from_sigma(self, s):
        return 0.5 * ops.log1p(-s * s) - ops.log(s)

    def __repr__(self):
        if self.schedule == "cosine":
            return f"VPSDE(schedule='cosine', s={self.s}, T={self.T}, eps={self.eps})"
        return f"VPSDE(beta_min={self.beta_min}, beta_max={self.beta_max}, T={self.T}, eps={self.eps})"


class SubVPSDE(DiffusionSDE):
    """Sub-VP SDE: ``f = -beta/2``, ``g^2 = beta (1 - exp(-2B))``.

    Same ``alpha_t`` as the VP SDE, ``sigma_t = 1 - exp(-B)`` (variance below
    the VP one at every ``t``). Prior ``N(0, I)``.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, *, T: float = 1.0, eps: float = 1e-3):
        self.beta_min, self.beta_max = positive_float(beta_min, "beta_min"), positive_float(beta_max, "beta_max")
        if self.beta_max < self.beta_min:
            raise ValueError(f"`beta_max` ({beta_max}) must be at least `beta_min` ({beta_min}).")
        self.params = LinearSchedule(self.beta_min, self.beta_max)
        self.kernels = SUBVP
        self.T, self.eps = positive_float(T, "T"), positive_float(eps, "eps")
        if self.eps >= self.T:
            raise ValueError(f"`eps` ({eps}) must be smaller than T ({self.T}).")

    def _log_snr_from_sigma(self, s):
        return 0.5 * ops.log1p(-s) - ops.log(s)

    def __repr__(self):
        return f"SubVPSDE(beta_min={self.beta_min}, beta_max={self.beta_max}, T={self.T}, eps={self.eps})"


class VESDE(DiffusionSDE):
    """Variance-exploding SDE ``dx = sqrt(d sigma(t)^2/dt) dW``, ``sigma(t) = sigma_min (sigma_max/sigma_min)^t``.

    ``f = 0`` and ``g^2 = 2 sigma(t)^2 log(sigma_max / sigma_min)``.

    Notes
    -----
    The marginal is the *exact* one of this SDE started at ``t = 0``:
    ``sigma_t^2 = sigma(t)^2 - sigma_min^2`` (so ``sigma_0 = 0``). Song et al.'s
    code uses ``sigma(t)`` itself, i.e. data already smoothed by ``sigma_min``;
    the two differ by less than ``sigma_min^2`` in variance. The prior is
    ``N(0, sigma(T)^2 I)``: ``N(0, sigma_max^2 I)`` at the default ``T = 1``. Defaults ``sigma_min = 0.01``, ``sigma_max = 50``,
    ``eps = 1e-5``.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, *, T: float = 1.0, eps: float = 1e-5):
        self.sigma_min, self.sigma_max = positive_float(sigma_min, "sigma_min"), positive_float(sigma_max, "sigma_max")
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"`sigma_max` ({sigma_max}) must exceed `sigma_min` ({sigma_min}).")
        self.params = GeometricSchedule(self.sigma_min, self.sigma_max, math.log(self.sigma_max / self.sigma_min))
        self.kernels = VE
        self.T, self.eps = positive_float(T, "T"), positive_float(eps, "eps")
        if self.eps >= self.T:
            raise ValueError(f"`eps` ({eps}) must be smaller than T ({self.T}).")
        # the prior is N(0, sigma(T)^2 I) with sigma(T) = sigma_min (sigma_max/sigma_min)^T (Song et al. 2021):
        # sigma_max at the default T = 1; a prior of sigma_max at another T would not be p_T at all
        self.prior_std = self.sigma_max if self.T == 1.0 else self.sigma_min * math.exp(self.params.log_ratio * self.T)

    def _log_snr_from_sigma(self, s):
        return -ops.log(s)

    def __repr__(self):
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, T={self.T}, eps={self.eps})"

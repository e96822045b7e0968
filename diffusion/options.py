"""Option records of the sampler families, passed as ``sample(..., options=...)``.

Each record is a small frozen dataclass holding the options one family of
methods reads, checked when it is made (a wrong value is a one-line
``ValueError`` naming the field). A method accepts only its family's record
(``ddim``, deterministic or stochastic, either of two); the table is
:data:`diffusion.sampling.METHOD_OPTIONS`.

============================= ========================== ==================================================
record                        methods                    fields
============================= ========================== ==================================================
:class:`Ancestral`            ``ddim``                   ``eta``: 0 deterministic DDIM, 1 the DDPM chain
:class:`Exponential`          ``ddim``, ``dpmpp_2m``,    ``prediction``: ``"x0"`` (DPM-Solver++) or
                              ``exp_ab2``, ``dpmpp_3m``, ``"eps"`` (DPM-Solver, DEIS);
                              ``exp_ab3``, ``unipc``,    ``lower_order_final``
                              ``unipc_bh1``,
                              ``unipc_bh2``, ``unipc3``,
                              ``unipc3_bh1``,
                              ``unipc3_bh2``
:class:`PredictorCorrector`   ``pc``                     ``snr``, ``corrector_steps``
:class:`AnnealedLangevin`     ``ald``                    ``step_size``, ``corrector_steps``
:class:`Adaptive`             ``dopri5``; the reverse-   ``rtol``, ``atol``
                              SDE methods (per-sample
                              steps, only when given)
:class:`AncestralSDE`         ``euler_ancestral``,       ``eta``, ``s_noise``, ``solver_type`` (2M only)
                              ``dpmpp_2m_sde``,
                              ``dpmpp_3m_sde``
:class:`Churn`                ``edm``                    ``S_churn``, ``S_tmin``, ``S_tmax``, ``S_noise``
============================= ========================== ==================================================

The ``rho`` of the Karras grid belongs to the grid: ``grid=TimeGrid(sde,
"karras", rho=5.0)``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

__all__ = ["Ancestral", "Exponential", "PredictorCorrector", "AnnealedLangevin", "Adaptive", "AncestralSDE", "Churn",
           "OPTION_RECORDS"]


def _number(record: str, name: str, value, *, positive: bool) -> float:
    """``value`` as a float, finite and positive (or non-negative); otherwise one ValueError line."""
    bound = "a positive" if positive else "a non-negative"
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ValueError(f"{record}: `{name}` must be {bound} number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{record}: `{name}` must be {bound} finite number, got {value!r}.")
    return value


def _count(record: str, name: str, value, low: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ValueError(f"{record}: `{name}` must be an integer >= {low}, got {value!r}.")
    return int(value)


@dataclass(frozen=True)
class Ancestral:
    """DDIM's generalised chain (method ``"ddim"``; ``"ddpm"`` is this chain with ``eta = 1``).

    Parameters
    ----------
    eta : float, default 0
        Noise scale of the step from ``t`` to ``s < t``: the posterior
        ``q(x_s | x_t, x0_hat)`` has standard deviation
        ``eta sqrt(var(x_t | x_s)) sigma_s / sigma_t`` (Song, Meng & Ermon
        2021, DDIM, eq. 16). 0 is the deterministic DDIM (sdekit
        ``exp_euler``), 1 the ancestral DDPM chain (Ho et al. 2020).
    """

    eta: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "eta", _number("Ancestral", "eta", self.eta, positive=False))


@dataclass(frozen=True)
class Exponential:
    """The exponential integrators of the semilinear probability-flow ODE (``ddim``, ``dpmpp_2m``, ``exp_ab2``, ``dpmpp_3m``,
    ``exp_ab3``, ``unipc``, ``unipc_bh1``, ``unipc_bh2``, ``unipc3``, ``unipc3_bh1``, ``unipc3_bh2``).

    Parameters
    ----------
    prediction : {"x0", "eps"}, default "x0"
        Integrate the data-prediction form (DPM-Solver++, Lu et al. 2022b) or
        the noise-prediction form (DPM-Solver, Lu et al. 2022a; DEIS, Zhang &
        Chen 2023), often better at very few steps. ``ddim`` is the same
        method in both.
    lower_order_final : bool, default False
        Lower the final steps' orders as diffusers' schedulers do with
        ``lower_order_final=True`` (a first-order last step: DPM-Solver++
        and the exponential Adams methods in runs under 15 steps, UniPC
        always; :func:`sdekit.semilinear.lowered_final_orders`).
    """

    prediction: str = "x0"
    lower_order_final: bool = False

    def __post_init__(self):
        if self.prediction not in ("x0", "eps"):
            raise ValueError(f"Exponential: `prediction` must be 'x0' or 'eps', got {self.prediction!r}.")
        if not isinstance(self.lower_order_final, bool):
            raise ValueError(f"Exponential: `lower_order_final` must be True or False, got {self.lower_order_final!r}.")


@dataclass(frozen=True)
class PredictorCorrector:
    """Song et al.'s predictor–corrector sampler (method ``"pc"``): Langevin corrector steps, then an Euler–Maruyama step.

    Parameters
    ----------
    snr : float, default 0.16
        The corrector's signal-to-noise ratio ``r``. Its step is
        ``2 a_t (r |z| / |s|)^2`` with ``a_t = alpha_s^2 / alpha_t^2`` over the
        step (Song et al. 2021, Alg. 5; 1 for VE), where the norms are averaged
        over the samples, as in their code (a per-sample step is not a valid
        Langevin step). 0.16 is their CIFAR-10 VE value.
    corrector_steps : int, default 1
        Langevin steps before each predictor step (0: the plain reverse SDE).
    """

    snr: float = 0.16
    corrector_steps: int = 1

    def __post_init__(self):
        object.__setattr__(self, "snr", _number("PredictorCorrector", "snr", self.snr, positive=True))
        object.__setattr__(self, "corrector_steps",
                           _count("PredictorCorrector", "corrector_steps", self.corrector_steps, 0))


@dataclass(frozen=True)
class AnnealedLangevin:
    """Annealed Langevin dynamics (method ``"ald"``, Song & Ermon 2019, Alg. 1).

    Parameters
    ----------
    step_size : float, default 0.1
        Relative Langevin step ``delta``: the step at grid time ``t`` is
        ``delta sigma_t^2`` (Song & Ermon use ``epsilon sigma_i^2 / sigma_L^2``,
        i.e. ``delta = epsilon / sigma_L^2 = 0.2`` for their CIFAR-10 values).
    corrector_steps : int, default 1
        Langevin steps at each grid time (noise level).
    """

    step_size: float = 0.1
    corrector_steps: int = 1

    def __post_init__(self):
        object.__setattr__(self, "step_size", _number("AnnealedLangevin", "step_size", self.step_size, positive=True))
        object.__setattr__(self, "corrector_steps",
                           _count("AnnealedLangevin", "corrector_steps", self.corrector_steps, 1))


@dataclass(frozen=True)
class Adaptive:
    """Tolerances of the adaptive Dormand–Prince integration of the probability-flow ODE (method ``"dopri5"``), and of
    the reverse SDE with steps per sample (``euler_maruyama``, ``euler_heun``, ``milstein``, ``sra1``, ``sriw1``: given
    this record or ``rtol``/``atol``, :func:`sdekit.solve` adapts each sample's steps on its Brownian path with the
    method's embedded error estimate, e.g. Rackauckas & Nie 2017 for ``sra1``; without it they take fixed steps).

    Parameters
    ----------
    rtol, atol : float, default 1e-5
        Relative and absolute local error tolerances (Hairer, Nørsett & Wanner
        1993, §II.4, eq. 4.10; the SDE controller is the same, on the embedded
        estimate of one step's error on the sample's own path).
    """

    rtol: float = 1e-5
    atol: float = 1e-5

    def __post_init__(self):
        object.__setattr__(self, "rtol", _number("Adaptive", "rtol", self.rtol, positive=True))
        object.__setattr__(self, "atol", _number("Adaptive", "atol", self.atol, positive=True))


@dataclass(frozen=True)
class AncestralSDE:
    """The stochastic samplers of k-diffusion (``euler_ancestral``, ``dpmpp_2m_sde``, ``dpmpp_3m_sde``; :mod:`diffusion.k_samplers`).

    Parameters
    ----------
    eta : float, default 1
        Noise scale: 1 follows the reverse SDE (ancestral steps: DDPM's
        posterior variance, Ho et al. 2020), 0 the probability-flow ODE (Euler,
        DPM-Solver++(2M), DPM-Solver++(3M); Lu et al. 2022b).
    s_noise : float, default 1
        Factor on the added noise (Karras et al. 2022's ``S_noise``; 1 keeps
        the method consistent).
    solver_type : {"midpoint", "heun"}, default "midpoint"
        The second-order correction of ``dpmpp_2m_sde`` (k-diffusion's
        ``solver_type``); the other two methods refuse ``"heun"``.
    """

    eta: float = 1.0
    s_noise: float = 1.0
    solver_type: str = "midpoint"

    def __post_init__(self):
        object.__setattr__(self, "eta", _number("AncestralSDE", "eta", self.eta, positive=False))
        object.__setattr__(self, "s_noise", _number("AncestralSDE", "s_noise", self.s_noise, positive=False))
        if self.solver_type not in ("midpoint", "heun"):
            raise ValueError(f"AncestralSDE: `solver_type` must be 'midpoint' or 'heun', got {self.solver_type!r}.")


@dataclass(frozen=True)
class Churn:
    """Stochastic churn of EDM's Heun sampler (method ``"edm"``; Karras et al. 2022, Alg. 2), by the paper's names.

    Parameters
    ----------
    S_churn : float, default 0
        Total churn: at each of the ``N`` steps the noise level is raised by
        the factor ``1 + gamma``, ``gamma = min(S_churn / N, sqrt(2) - 1)``. 0 is
        the deterministic Heun sampler (Alg. 1).
    S_tmin, S_tmax : float, default 0 and inf
        Churn only at levels ``S_tmin <= sigma <= S_tmax``, in Karras et al.'s
        sigma (``sigma_t / alpha_t``), not in times.
    S_noise : float, default 1
        Factor on the churn noise (slightly above 1 in Karras et al.'s Table 5).
    """

    S_churn: float = 0.0
    S_tmin: float = 0.0
    S_tmax: float = math.inf
    S_noise: float = 1.0

    def __post_init__(self):
        for name in ("S_churn", "S_tmin", "S_noise"):
            object.__setattr__(self, name, _number("Churn", name, getattr(self, name), positive=False))
        if not (isinstance(self.S_tmax, numbers.Real) and not isinstance(self.S_tmax, bool) and self.S_tmax >= self.S_tmin):
            raise ValueError(f"Churn: `S_tmax` must be a number >= S_tmin={self.S_tmin} (inf: no upper limit), "
                             f"got {self.S_tmax!r}.")
        object.__setattr__(self, "S_tmax", float(self.S_tmax))


OPTION_RECORDS = (Ancestral, Exponential, PredictorCorrector, AnnealedLangevin, Adaptive, AncestralSDE, Churn)

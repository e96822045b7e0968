"""Exponential integrators for :class:`sdekit.SemilinearODE` problems (run by :mod:`sdekit.semilinear`)."""

from __future__ import annotations

from ..semilinear import MultistepOptions
from .base import Scheme, register


def exponential(name: str, order: int, reference: str) -> Scheme:
    """Register an exponential integrator of global order ``order`` (its tableau: the default
    :class:`~sdekit.semilinear.MultistepOptions`)."""
    return register(Scheme(name, "semilinear", {"ode": float(order)}, {"ode": float(order)}, tableau=MultistepOptions(),
                           reference=reference))


EXP_EULER = exponential(
    "exp_euler", 1, "Exponential Euler; Hochbruck & Ostermann (2010), Acta Numerica 19, §2.1 (DDIM for diffusion).")
EXP_AB2 = exponential(
    "exp_ab2", 2, "Exponential Adams–Bashforth; Hochbruck & Ostermann (2010), §2.5; Lu et al. (2022), DPM-Solver++(2M).")
EXP_AB3 = exponential("exp_ab3", 3, "Exponential Adams–Bashforth; Hochbruck & Ostermann (2010), §2.5.")
# Third-order steps after an exp_euler/exp_ab2 ramp with no extra evaluation: the first-order first
# step's O(h^2) local error caps the global order at 2 (the start of DEIS and DPM-Solver++(3M)).
EXP_AB3_RAMP = exponential(
    "exp_ab3_ramp", 2, "Hochbruck & Ostermann (2010), §2.5; start as Zhang & Chen (2023), DEIS, and Lu et al. "
                       "(2022), DPM-Solver++(3M).")
# The published diffusion samplers in the general semilinear form (sdekit.semilinear), one evaluation per step.
DPMPP_2M = exponential(
    "dpmpp_2m", 2, "Lu, Zhou, Bao, Chen, Li & Zhu (2022), DPM-Solver++, arXiv:2211.01095, Alg. 2 (multistep, 2M).")
# UniP-2 with the UniC corrector: order p + 1 = 3 (Zhao et al. 2023, Thm. 3.3); with lower_order_final the
# uncorrected first-order last step caps it at 2.
UNIPC_BH1 = exponential(
    "unipc_bh1", 3, "Zhao, Bai, Rao, Zhou & Lu (2023), UniPC, NeurIPS, Alg. 1-2 with B(h) = h; diffusers' "
                    "UniPCMultistepScheduler (solver_order=2, solver_type='bh1').")
UNIPC_BH2 = exponential(
    "unipc_bh2", 3, "Zhao, Bai, Rao, Zhou & Lu (2023), UniPC, NeurIPS, Alg. 1-2 with B(h) = e^h - 1; diffusers' "
                    "UniPCMultistepScheduler (solver_order=2, solver_type='bh2').")
# UniP-3 with the UniC corrector: order p + 1 = 4 once started (Zhao et al. 2023, Thm. 3.3), but diffusers' start
# (orders 1, 2, the first step corrected by UniC-1 with rho = 1/2: local error O(h^3)) caps it at 3 in general;
# order 4 shows where the start's error is damped (diffusion from high noise, stiff decay: sdekit.semilinear).
UNIPC3_BH1 = exponential(
    "unipc3_bh1", 3, "Zhao, Bai, Rao, Zhou & Lu (2023), UniPC, NeurIPS, Alg. 1-2 (p = 3) with B(h) = h; diffusers' "
                     "UniPCMultistepScheduler (solver_order=3, solver_type='bh1').")
UNIPC3_BH2 = exponential(
    "unipc3_bh2", 3, "Zhao, Bai, Rao, Zhou & Lu (2023), UniPC, NeurIPS, Alg. 1-2 (p = 3) with B(h) = e^h - 1; "
                     "diffusers' UniPCMultistepScheduler (solver_order=3, solver_type='bh2').")

"""Exponential integrators for :class:`sdekit.SemilinearODE` problems (run by :mod:`sdekit.semilinear`)."""

from __future__ import annotations

from .base import Scheme, register


def exponential(name: str, order: int, reference: str) -> Scheme:
    """Register an exponential integrator of global order ``order``."""
    return register(Scheme(name, "semilinear", {"ode": float(order)}, {"ode": float(order)}, reference=reference))


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

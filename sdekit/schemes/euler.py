"""Euler–Maruyama (Itô) and Euler–Heun (Stratonovich): one drift evaluation per step, strong order 1/2 (1 for
additive noise, and Euler–Heun on commutative noise)."""

from __future__ import annotations

from . import _embedded, _steps
from .base import Family, Scheme, StepPlan, pack_tableau, register

ALL_NOISE = ("scalar", "diagonal", "additive", "commutative", "general")


def calculus_flag(problem):
    """``tab`` of the calculus-aware steps: ``[[1.0]]`` for Itô, ``[[0.0]]`` for Stratonovich."""
    return pack_tableau([1.0 if problem.calculus == "ito" else 0.0])


EULER_FAMILY = Family("euler", lambda scheme, problem, dim: StepPlan(_steps.euler, calculus_flag(problem), 1, 1),
                      steps=(_steps.euler,))
EULER_HEUN_FAMILY = Family(
    "euler_heun", lambda scheme, problem, dim: StepPlan(_steps.euler_heun, calculus_flag(problem), 1, 2),
    steps=(_steps.euler_heun,),
)

EULER = register(Scheme(
    "euler", "sde", {"scalar": 0.5, "diagonal": 0.5, "additive": 1.0, "commutative": 0.5, "general": 0.5},
    dict.fromkeys(ALL_NOISE, 1.0), ("ito",), family=EULER_FAMILY, embedded=_embedded.euler_lamba,
    reference="Maruyama (1955); Kloeden & Platen (1992), Numerical Solution of SDEs, §10.2.",
))
EULER_HEUN = register(Scheme(
    "euler_heun", "sde", {"scalar": 1.0, "diagonal": 1.0, "additive": 1.0, "commutative": 1.0, "general": 0.5},
    dict.fromkeys(ALL_NOISE, 1.0), ("stratonovich",), family=EULER_HEUN_FAMILY, embedded=_embedded.euler_heun_embedded,
    reference="Rümelin (1982), SIAM J. Numer. Anal. 19(3); Burrage & Burrage (2000).",
))

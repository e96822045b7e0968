"""Derivative-free Milstein (Kloeden & Platen 1992, §11.1): strong order 1 on commutative noise, Itô or Stratonovich."""

from __future__ import annotations

from . import _embedded, _steps
from .base import Family, Scheme, StepPlan, register
from .euler import calculus_flag


def milstein_plan(scheme, problem, dim) -> StepPlan:
    """Euler's step for additive noise (``sigma' = 0``: the correction vanishes); else one support value per
    Brownian component (Itô), or two for the central quotients of Stratonovich (see ``_steps.milstein``)."""
    flag = calculus_flag(problem)
    if problem.noise == "additive":
        return StepPlan(_steps.euler, flag, 1, 1)
    per_component = 1 if problem.calculus == "ito" else 2
    if problem.noise == "general":
        return StepPlan(_steps.milstein_general, flag, 1, 1 + per_component * problem.noise_dim(dim))
    return StepPlan(_steps.milstein, flag, 1, 1 + per_component)


MILSTEIN_FAMILY = Family("milstein", milstein_plan, steps=(_steps.euler, _steps.milstein, _steps.milstein_general))

MILSTEIN = register(Scheme(
    "milstein", "sde", {"scalar": 1.0, "diagonal": 1.0, "additive": 1.0, "commutative": 1.0},
    dict.fromkeys(("scalar", "diagonal", "additive", "commutative"), 1.0), ("ito", "stratonovich"),
    family=MILSTEIN_FAMILY, embedded=_embedded.milstein_embedded,
    reference="Milstein (1974); derivative-free form: Kloeden & Platen (1992), eqs. 11.1.5 and 11.1.7.",
))

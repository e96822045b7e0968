"""Drift-implicit theta schemes for stiff SDEs: Euler–Maruyama (Itô), Euler–Heun (Stratonovich) and derivative-free
Milstein, with Newton iterations per path.

Each step is its explicit scheme with the drift term ``f(t, x) h`` replaced by
``((1 - theta) f(t, x) + theta f(t + h, y)) h``, solved for the new state ``y`` by Newton's method started from
the explicit step (see ``_steps.drift_implicit``). ``theta = 1`` (the default) is the drift-implicit (backward)
Euler scheme, mean-square stable on ``dX = lambda X dt + mu X dW`` for every ``h`` where the SDE is
(``2 Re(lambda) + |mu|^2 < 0``), and ``theta = 1/2`` the trapezoidal rule; ``theta >= 1/2`` keeps the drift
A-stable, ``theta < 1/2`` does not (Higham 2000, SIAM J. Numer. Anal. 38(3)). ``theta``
changes no order: the strong order is that of the explicit scheme (Kloeden & Platen 1992, §12.2: drift-implicit
Euler order 1/2, order 1 for additive noise, eq. 12.2.4; the implicit Milstein scheme order 1; derivative-free
implicit schemes: §12.3), the weak order 1 (that of Euler–Maruyama).

Newton: ``(I - theta h J(t + h, y)) dy = -R(y)``, ``J`` from the problem's ``jac`` when it has one, else forward
differences (NumPy, Numba) or autograd (torch); it stops when every path's correction has
``max_i |dy_i| / (1 + |y_i|) <= NEWTON_TOL`` and gives up after ``NEWTON_MAX_ITER`` iterations: a path not
converged by then fails (NaN from then on, ``Solution.failed``) with the code ``NEWTON``.
"""

from __future__ import annotations

import dataclasses
import numbers

from . import _steps
from ._adaptive import NEWTON
from ._stability import NONFINITE_CODES
from .base import Family, Scheme, StepPlan, pack_tableau, register

__all__ = ["IMPLICIT_EULER", "IMPLICIT_EULER_HEUN", "IMPLICIT_MILSTEIN", "NEWTON_MAX_ITER", "NEWTON_TOL", "Theta",
           "with_theta"]

NEWTON_TOL = 1e-10  # on max_i |dy_i| / (1 + |y_i|) per path; with quadratic convergence the state is then exact to round-off
NEWTON_MAX_ITER = 50  # Newton from a far explicit predictor (stiff nonlinear drift) needs tens of damped-like steps


@dataclasses.dataclass(frozen=True)
class Theta:
    """The tableau of a drift-implicit scheme: the weight ``theta`` of the drift at the end of the step."""

    theta: float = 1.0


def with_theta(scheme: Scheme, theta) -> Scheme:
    """``scheme`` with the drift weight ``theta`` in [0, 1] (``solve(..., theta=)``); refused for other schemes."""
    if not isinstance(scheme.tableau, Theta):
        names = [s.name for s in (IMPLICIT_EULER, IMPLICIT_EULER_HEUN, IMPLICIT_MILSTEIN)]
        raise ValueError(f"`theta` applies to the drift-implicit schemes {names}; {scheme.name} has none: drop theta.")
    if not isinstance(theta, numbers.Real) or isinstance(theta, bool) or not 0.0 <= float(theta) <= 1.0:
        raise ValueError(f"`theta` must be a number in [0, 1] (1: drift-implicit Euler, 0.5: trapezoidal), got {theta!r}.")
    return dataclasses.replace(scheme, tableau=Theta(float(theta)))


def _tab(scheme, problem):
    """Row 0 as ``_steps.drift_implicit`` reads it: calculus flag, theta, user-Jacobian flag, tolerance, limit."""
    return pack_tableau([1.0 if problem.calculus == "ito" else 0.0, scheme.tableau.theta,
                         1.0 if problem.jac is not None else 0.0, NEWTON_TOL, float(NEWTON_MAX_ITER)])


def _newton_drift(problem, dim):
    """Drift evaluations of the step's implicit part with one Newton iteration: ``f(t, x)``, the residual and, without
    a user Jacobian, ``dim`` forward differences from it (each further iteration costs as much again; the counts in
    ``Solution.stats`` are those of one iteration)."""
    return 2 + (0 if problem.jac is not None else dim)


def _plan_euler(scheme, problem, dim):
    return StepPlan(_steps.implicit_euler, _tab(scheme, problem), 1 + _newton_drift(problem, dim), 1)


def _plan_euler_heun(scheme, problem, dim):
    return StepPlan(_steps.implicit_euler_heun, _tab(scheme, problem), 1 + _newton_drift(problem, dim), 2)


def _plan_milstein(scheme, problem, dim):
    """Additive noise: the Milstein correction vanishes, the implicit Euler step; else the noise terms of
    ``_steps.milstein`` / ``_steps.milstein_general`` (one support value per Brownian component, two for
    Stratonovich)."""
    tab, n_drift = _tab(scheme, problem), 1 + _newton_drift(problem, dim)
    if problem.noise == "additive":
        return StepPlan(_steps.implicit_euler, tab, n_drift, 1)
    per_component = 1 if problem.calculus == "ito" else 2
    if problem.noise == "general":
        return StepPlan(_steps.implicit_milstein_general, tab, n_drift, 1 + per_component * problem.noise_dim(dim))
    return StepPlan(_steps.implicit_milstein, tab, n_drift, 1 + per_component)


IMPLICIT_EULER_FAMILY = Family("implicit_euler", _plan_euler, steps=(_steps.implicit_euler,))
IMPLICIT_EULER_HEUN_FAMILY = Family("implicit_euler_heun", _plan_euler_heun, steps=(_steps.implicit_euler_heun,))
IMPLICIT_MILSTEIN_FAMILY = Family("implicit_milstein", _plan_milstein, steps=(
    _steps.implicit_euler, _steps.implicit_milstein, _steps.implicit_milstein_general))

for _step in (_steps.implicit_euler, _steps.implicit_euler_heun, _steps.implicit_milstein,
              _steps.implicit_milstein_general):
    NONFINITE_CODES[_step] = NEWTON  # a NaN row from these steps is a Newton iteration that did not converge

_ALL_NOISE = ("scalar", "diagonal", "additive", "commutative", "general")
_COMMUTING = ("scalar", "diagonal", "additive", "commutative")

IMPLICIT_EULER = register(Scheme(
    "implicit_euler", "sde", {"scalar": 0.5, "diagonal": 0.5, "additive": 1.0, "commutative": 0.5, "general": 0.5},
    dict.fromkeys(_ALL_NOISE, 1.0), ("ito",), tableau=Theta(1.0), family=IMPLICIT_EULER_FAMILY,
    reference="Kloeden & Platen (1992), Numerical Solution of SDEs, §12.2, eq. 12.2.4 (drift-implicit Euler); "
              "Higham (2000), SIAM J. Numer. Anal. 38(3) (stochastic theta method).",
))
IMPLICIT_EULER_HEUN = register(Scheme(
    "implicit_euler_heun", "sde", {"scalar": 1.0, "diagonal": 1.0, "additive": 1.0, "commutative": 1.0, "general": 0.5},
    dict.fromkeys(_ALL_NOISE, 1.0), ("stratonovich",), tableau=Theta(1.0), family=IMPLICIT_EULER_HEUN_FAMILY,
    reference="Euler–Heun (Rümelin 1982, SIAM J. Numer. Anal. 19(3)) with the drift-implicit theta drift of "
              "Kloeden & Platen (1992), §12.2; Burrage & Burrage (2000).",
))
IMPLICIT_MILSTEIN = register(Scheme(
    "implicit_milstein", "sde", dict.fromkeys(_COMMUTING, 1.0), dict.fromkeys(_COMMUTING, 1.0), ("ito", "stratonovich"),
    tableau=Theta(1.0), family=IMPLICIT_MILSTEIN_FAMILY,
    reference="Kloeden & Platen (1992), §12.2 (implicit Milstein), derivative-free: §12.3 "
              "(support values as in eqs. 11.1.5 and 11.1.7).",
))

"""Explicit Runge–Kutta schemes for ODEs, one per Butcher tableau of :mod:`sdekit.tableaus`."""

from __future__ import annotations

from .. import tableaus as tb
from . import _embedded, _steps
from .base import Family, Scheme, StepPlan, pack_tableau, register


def erk_plan(scheme, problem, dim) -> StepPlan:
    """``tab`` rows: A (s rows), b, c; s evaluations of the right-hand side."""
    t = scheme.tableau
    return StepPlan(_steps.erk, pack_tableau(t.A, t.b, t.c), t.stages, 0)


ERK = Family("erk", erk_plan, steps=(_steps.erk,))


def runge_kutta(tableau, reference: str) -> Scheme:
    """Register the ODE scheme of ``tableau`` (order from the tableau; adaptive when it has an embedded solution)."""
    order = {"ode": float(tableau.order)}
    return register(Scheme(tableau.name, "ode", order, order, tableau=tableau, adaptive=tableau.b_err is not None,
                           family=ERK, reference=reference,
                           embedded=_embedded.erk_embedded if tableau.b_err is not None else None))


EULER = runge_kutta(tb.EULER, "Euler (1768).")
HEUN = runge_kutta(tb.HEUN, "Heun (1900); Butcher (2016), Numerical Methods for ODEs, §23.")
MIDPOINT = runge_kutta(tb.MIDPOINT, "Runge (1895); Butcher (2016), §23.")
RK4 = runge_kutta(tb.RK4, "Kutta (1901); Butcher (2016), §23.")
DOPRI5 = runge_kutta(tb.DOPRI5, "Dormand & Prince (1980), J. Comput. Appl. Math. 6(1); dense output Shampine (1986).")

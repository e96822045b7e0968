"""Rößler's stochastic Runge–Kutta schemes (Rößler 2010, SIAM J. Numer. Anal. 48(3), 922–952).

Two families, each interpreting any tableau of its kind: SRA (additive noise,
:class:`~sdekit.tableaus.SRATableau`) and SRI (diagonal/scalar Itô noise,
:class:`~sdekit.tableaus.SRITableau`). A new tableau of either is one
``register(...)`` statement below, with its coefficients in :mod:`sdekit.tableaus`.
"""

from __future__ import annotations

from .. import tableaus as tb
from . import _embedded, _steps
from .base import Family, Scheme, StepPlan, pack_tableau, register

BOTH_CALCULI = ("ito", "stratonovich")  # additive noise: the two coincide


def sra_plan(scheme, problem, dim) -> StepPlan:
    """``tab`` rows: c0, c1, alpha, beta1, beta2, then A0 and B0 (s rows each); s drift and s diffusion calls."""
    t = scheme.tableau
    return StepPlan(_steps.sra, pack_tableau(t.c0, t.c1, t.alpha, t.beta1, t.beta2, t.A0, t.B0), t.stages, t.stages)


def sri_tab(t):
    """``tab`` rows of an SRI tableau: c0, c1, alpha, beta1..beta4, need_f, need_g, then A0, A1, B0, B1."""
    return pack_tableau(t.c0, t.c1, t.alpha, t.beta1, t.beta2, t.beta3, t.beta4, t.need_f, t.need_g,
                        t.A0, t.A1, t.B0, t.B1)


def sri_plan(scheme, problem, dim) -> StepPlan:
    """The generic SRI interpreter; the stages no coefficient reads are skipped (``need_f``, ``need_g``)."""
    t = scheme.tableau
    return StepPlan(_steps.sri, sri_tab(t), int(t.need_f.sum()), int(t.need_g.sum()))


def sriw1_plan(scheme, problem, dim) -> StepPlan:
    """SRIW1 written out (:func:`_steps.sriw1`, equal to :func:`_steps.sri` on its tableau; a test checks it)."""
    return sri_plan(scheme, problem, dim)._replace(step=_steps.sriw1)


SRA = Family("sra", sra_plan, steps=(_steps.sra,))
SRI = Family("sri", sri_plan, steps=(_steps.sri,))
SRIW1_WRITTEN_OUT = Family("sriw1", sriw1_plan, steps=(_steps.sriw1,))

SRA1 = register(Scheme("sra1", "sde", {"additive": 1.5}, {"additive": 2.0}, BOTH_CALCULI, levy_area=True,
                       tableau=tb.SRA1, family=SRA, embedded=_embedded.sra_embedded,
                       reference="Rößler (2010), SIAM J. Numer. Anal. 48(3), 922–952, SRA1."))
SRA3 = register(Scheme("sra3", "sde", {"additive": 1.5}, {"additive": 3.0}, BOTH_CALCULI, levy_area=True,
                       tableau=tb.SRA3, family=SRA, embedded=_embedded.sra_embedded,
                       reference="Rößler (2010), SIAM J. Numer. Anal. 48(3), 922–952, SRA3."))
SRIW1 = register(Scheme(
    "sriw1", "sde", {"scalar": 1.5, "diagonal": 1.5, "additive": 1.5}, {"scalar": 2.0, "diagonal": 2.0, "additive": 2.0},
    ("ito",), levy_area=True, tableau=tb.SRIW1, family=SRIW1_WRITTEN_OUT, matrix_noise=False,
    embedded=_embedded.sriw1_embedded,
    reference="Rößler (2010), SIAM J. Numer. Anal. 48(3), 922–952, SRIW1.",
))

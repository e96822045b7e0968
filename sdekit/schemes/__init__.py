"""The scheme registry: every method, what it supports and what it promises.

Each :class:`Scheme` declares its strong and weak order per noise type and
the calculi it solves; the convergence tests read these declarations, so a
new scheme brings its own test. ``"general"`` orders are for non-commutative
matrix noise and ``"commutative"`` for general noise declared commutative.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from .. import tableaus as tb
from . import _steps

__all__ = ["Scheme", "SCHEMES", "StepPlan", "get_scheme", "list_schemes"]


class StepPlan(NamedTuple):
    """What a backend runs for one scheme on one problem: the step, its packed coefficients, evaluations per step."""

    step: object
    tab: object
    n_drift: int
    n_diffusion: int


@dataclass(frozen=True)
class Scheme:
    """A numerical scheme and its declared properties.

    Attributes
    ----------
    name : str
        The ``method=`` name.
    kind : {"sde", "ode"}
    calculus : tuple of str
        Calculi the scheme solves (additive-noise problems are solved by all).
    strong_order, weak_order : dict
        Declared order per noise type (``"scalar"``, ``"diagonal"``,
        ``"additive"``, ``"commutative"``, ``"general"``); an ODE scheme has
        ``{"ode": p}``. Types absent from ``strong_order`` are unsupported.
    levy_area : bool
        Whether the step needs the space-time Lévy area of each step.
    adaptive : bool
        Step size chosen by an error estimate (ODE ``dopri5``).
    reference : str
        Where the scheme comes from.
    """

    name: str
    kind: str
    strong_order: dict
    weak_order: dict
    calculus: tuple = ()
    levy_area: bool = False
    adaptive: bool = False
    tableau: object = None
    reference: str = ""

    @property
    def noise_types(self) -> tuple:
        return tuple(self.strong_order)

    def plan(self, problem, dim: int) -> StepPlan:
        """The step function, its packed coefficients ``tab`` and the evaluation counts per step on ``problem``."""
        return StepPlan(*step_plan(self, problem, dim))

    def order_for(self, problem) -> float:
        """Declared strong order on ``problem`` (ODE order for ODEs)."""
        if self.kind == "ode":
            return self.strong_order["ode"]
        return self.strong_order[noise_class(problem)]


def noise_class(problem) -> str:
    """The key of ``strong_order`` that applies to ``problem``."""
    if problem.noise == "general":
        return "commutative" if problem.commutative else "general"
    return problem.noise


def _sde(name, strong, weak, calculus, reference, **kw):
    return Scheme(name, "sde", strong, weak, calculus=calculus, reference=reference, **kw)


SDE_SCHEMES = {
    "euler": _sde(
        "euler", {"scalar": 0.5, "diagonal": 0.5, "additive": 1.0, "commutative": 0.5, "general": 0.5},
        {k: 1.0 for k in ("scalar", "diagonal", "additive", "commutative", "general")}, ("ito",),
        "Maruyama (1955); Kloeden & Platen (1992), Numerical Solution of SDEs, §10.2.",
    ),
    "euler_heun": _sde(
        "euler_heun", {"scalar": 1.0, "diagonal": 1.0, "additive": 1.0, "commutative": 1.0, "general": 0.5},
        {k: 1.0 for k in ("scalar", "diagonal", "additive", "commutative", "general")}, ("stratonovich",),
        "Rümelin (1982), SIAM J. Numer. Anal. 19(3); Burrage & Burrage (2000).",
    ),
    "milstein": _sde(
        "milstein", {"scalar": 1.0, "diagonal": 1.0, "additive": 1.0, "commutative": 1.0},
        {k: 1.0 for k in ("scalar", "diagonal", "additive", "commutative")}, ("ito", "stratonovich"),
        "Milstein (1974); derivative-free form: Kloeden & Platen (1992), eqs. 11.1.5 and 11.1.7.",
    ),
    "sra1": _sde(
        "sra1", {"additive": 1.5}, {"additive": 2.0}, ("ito", "stratonovich"),
        "Rößler (2010), SIAM J. Numer. Anal. 48(3), 922–952, SRA1.", levy_area=True, tableau=tb.SRA1,
    ),
    "sriw1": _sde(
        "sriw1", {"scalar": 1.5, "diagonal": 1.5, "additive": 1.5}, {"scalar": 2.0, "diagonal": 2.0, "additive": 2.0},
        ("ito",), "Rößler (2010), SIAM J. Numer. Anal. 48(3), 922–952, SRIW1.", levy_area=True, tableau=tb.SRIW1,
    ),
}

ODE_SCHEMES = {
    t.name: Scheme(t.name, "ode", {"ode": float(t.order)}, {"ode": float(t.order)}, tableau=t,
                   adaptive=t.b_err is not None, reference=ref)
    for t, ref in [
        (tb.EULER, "Euler (1768)."),
        (tb.HEUN, "Heun (1900); Butcher (2016), Numerical Methods for ODEs, §23."),
        (tb.MIDPOINT, "Runge (1895); Butcher (2016), §23."),
        (tb.RK4, "Kutta (1901); Butcher (2016), §23."),
        (tb.DOPRI5, "Dormand & Prince (1980), J. Comput. Appl. Math. 6(1); dense output Shampine (1986)."),
    ]
}

SEMILINEAR_SCHEMES = {
    name: Scheme(name, "semilinear", {"ode": float(q)}, {"ode": float(q)}, reference=ref)
    for name, q, ref in [
        ("exp_euler", 1, "Exponential Euler; Hochbruck & Ostermann (2010), Acta Numerica 19, §2.1 (DDIM for diffusion)."),
        ("exp_ab2", 2, "Exponential Adams–Bashforth; Hochbruck & Ostermann (2010), §2.5; Lu et al. (2022), DPM-Solver++(2M)."),
        ("exp_ab3", 3, "Exponential Adams–Bashforth; Hochbruck & Ostermann (2010), §2.5."),
        # third-order steps after an exp_euler/exp_ab2 ramp with no extra evaluation: the first-order first
        # step's O(h^2) local error caps the global order at 2 (the start of DEIS and DPM-Solver++(3M))
        ("exp_ab3_ramp", 2, "Hochbruck & Ostermann (2010), §2.5; start as Zhang & Chen (2023), DEIS, and Lu et al. "
                            "(2022), DPM-Solver++(3M)."),
    ]
}

SCHEMES = ({("sde", k): v for k, v in SDE_SCHEMES.items()} | {("ode", k): v for k, v in ODE_SCHEMES.items()}
           | {("semilinear", k): v for k, v in SEMILINEAR_SCHEMES.items()})


def list_schemes(kind: str | None = None) -> list[Scheme]:
    """All registered schemes, optionally of one kind (``"sde"``, ``"ode"`` or ``"semilinear"``).

    ``"semilinear"`` schemes solve :class:`sdekit.SemilinearODE` problems
    (which the ``"ode"`` schemes solve too).
    """
    return [s for (k, _), s in SCHEMES.items() if kind in (None, k)]


def get_scheme(method, problem) -> Scheme:
    """Look up ``method`` for ``problem`` and check that it applies; errors name the fix."""
    kind = "sde" if problem.is_sde else "ode"
    names = sorted(n for (k, n) in SCHEMES if k == kind)
    if isinstance(method, Scheme):
        scheme = method
        if scheme.kind != kind:
            raise ValueError(f"method {scheme.name!r} is an {scheme.kind.upper()} scheme; this problem is an {kind.upper()}.")
    else:
        if not isinstance(method, str) or (kind, method) not in SCHEMES:
            other = "ode" if kind == "sde" else "sde"
            hint = f" ({method!r} is an {other.upper()} method)" if (other, method) in SCHEMES else ""
            if ("semilinear", method) in SCHEMES:
                hint = f" ({method!r} solves sdekit.SemilinearODE problems: write the equation as one)"
            raise ValueError(f"unknown method {method!r} for an {kind.upper()}{hint}; choose one of {names}.")
        scheme = SCHEMES[(kind, method)]
    if kind == "ode":
        return scheme
    nc = noise_class(problem)
    if nc not in scheme.strong_order:
        ok = sorted(s.name for s in list_schemes("sde") if nc in s.strong_order)
        if nc == "general":
            raise ValueError(
                f"{scheme.name} supports noise {list(scheme.noise_types)}; this problem has non-commutative "
                f"'general' noise. Use one of {ok}, or declare SDE(..., commutative=True) if the noise commutes."
            )
        shown = "matrix 'additive'" if problem.matrix_noise and nc == "additive" else repr(nc)
        raise ValueError(f"{scheme.name} supports noise {list(scheme.noise_types)}; this problem has {shown}. Use one of {ok}.")
    if scheme.name == "sriw1" and problem.matrix_noise:
        raise ValueError("sriw1 needs diagonal noise; this problem has matrix 'additive' noise. Use 'sra1'.")
    if not set(problem.calculi()) & set(scheme.calculus):
        ok = sorted(s.name for s in list_schemes("sde") if problem.calculus in s.calculus and nc in s.strong_order)
        raise ValueError(
            f"{scheme.name} solves {'/'.join(scheme.calculus)} SDEs; this problem is {problem.calculus}. Use one of {ok}."
        )
    return scheme


def pack_tableau(*rows_or_matrices):
    """Stack vectors and matrices of one width into the 2-D ``tab`` the steps read."""
    import numpy as np

    return np.ascontiguousarray(np.vstack([np.atleast_2d(np.asarray(r, dtype=np.float64)) for r in rows_or_matrices]))


def step_plan(scheme: Scheme, problem, dim: int):
    """The step function, its packed coefficients and evaluation counts per step.

    Returns ``(step, tab, n_drift, n_diffusion)``; the packing of ``tab`` is
    the one the step function unpacks (see ``_steps``).
    """
    if scheme.kind == "ode":
        t = scheme.tableau
        return _steps.erk, pack_tableau(t.A, t.b, t.c), t.stages, 0
    m = problem.noise_dim(dim)
    ito = pack_tableau([1.0 if problem.calculus == "ito" else 0.0])
    name = scheme.name
    if name == "euler" or (name == "milstein" and problem.noise == "additive"):
        return _steps.euler, ito, 1, 1
    if name == "euler_heun":
        return _steps.euler_heun, ito, 1, 2
    if name == "milstein":
        # Stratonovich uses central difference quotients: one more support value per Brownian component.
        per_component = 1 if problem.calculus == "ito" else 2
        if problem.noise == "general":
            return _steps.milstein_general, ito, 1, 1 + per_component * m
        return _steps.milstein, ito, 1, 1 + per_component
    t = scheme.tableau
    if name == "sra1":
        return _steps.sra, pack_tableau(t.c0, t.c1, t.alpha, t.beta1, t.beta2, t.A0, t.B0), t.stages, t.stages
    tab = sri_tab(t)
    # SRIW1 runs its written-out form; `sri` interprets any SRI tableau (a test keeps them equal).
    step = _steps.sriw1 if t is tb.SRIW1 else _steps.sri
    return step, tab, int(t.need_f.sum()), int(t.need_g.sum())


def sri_tab(t):
    """Pack an SRI tableau for :func:`_steps.sri`."""
    return pack_tableau(t.c0, t.c1, t.alpha, t.beta1, t.beta2, t.beta3, t.beta4, t.need_f, t.need_g,
                        t.A0, t.A1, t.B0, t.B1)

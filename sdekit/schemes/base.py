"""What a scheme is: its declared promises, its family (step, packing, cost) and the registry built from them.

A :class:`Family` is a step function of :mod:`sdekit.schemes._steps` together
with how it reads a scheme's coefficients for a problem and what one step
costs; a :class:`Scheme` is one declaration (a name, its orders, noise types,
calculi, Lévy-area need, tableau and family) registered with :func:`register`.
:func:`get_scheme` checks a scheme against a problem from these declarations
alone, and :meth:`Scheme.plan` gives a backend everything it runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = ["Family", "Scheme", "SCHEMES", "StepPlan", "get_scheme", "list_schemes", "noise_class", "pack_tableau",
           "register"]


class StepPlan(NamedTuple):
    """What a backend runs for one scheme on one problem.

    Attributes
    ----------
    step : callable
        ``step(f, g, p, tab, t, x, h, dw, levy_area)``, a function of :mod:`sdekit.schemes._steps`.
    tab : ndarray, 2-D float64
        The scheme's coefficients packed as ``step`` unpacks them.
    n_drift, n_diffusion : int
        Drift and diffusion evaluations per step.
    """

    step: Callable
    tab: np.ndarray
    n_drift: int
    n_diffusion: int


@dataclass(frozen=True)
class Family:
    """A family of schemes that share a step function.

    Attributes
    ----------
    name : str
    plan : callable
        ``plan(scheme, problem, dim) -> StepPlan``: which step runs, with the
        scheme's coefficients packed for it, and the evaluation counts.
    steps : tuple of callables
        Every step function ``plan`` can return (the compiled backends
        dispatch on them; a test checks each has a compiled branch).
    """

    name: str
    plan: Callable
    steps: tuple


@dataclass(frozen=True)
class Scheme:
    """A numerical scheme and its declared properties.

    Attributes
    ----------
    name : str
        The ``method=`` name.
    kind : {"sde", "ode", "semilinear"}
    strong_order, weak_order : dict
        Declared order per noise type (``"scalar"``, ``"diagonal"``,
        ``"additive"``, ``"commutative"``, ``"general"``); an ODE scheme has
        ``{"ode": p}``. Types absent from ``strong_order`` are unsupported.
    calculus : tuple of str
        Calculi the scheme solves (additive-noise problems are solved by all).
    levy_area : bool
        Whether the step needs the space-time Lévy area of each step.
    adaptive : bool
        Step size chosen by an error estimate (ODE ``dopri5``).
    tableau : object
        The coefficient table the family packs (see :mod:`sdekit.tableaus`), or None.
    reference : str
        Where the scheme comes from.
    family : Family or None
        Its step, packing and cost; None for the exponential integrators,
        which :func:`sdekit.solve` runs on :class:`sdekit.SemilinearODE` problems.
    matrix_noise : bool
        Whether the step accepts a ``(dim, m)`` diffusion matrix (SRI steps
        act componentwise and need diagonal-shaped noise).
    embedded : callable or None
        The step with an embedded error estimate for adaptive stepping,
        ``step(f, g, p, tab, t, x, h, sq, dw, levy_area) -> (x_new, err)``
        (:mod:`sdekit.schemes._embedded`; its ``tab`` from
        ``_embedded.embedded_plan``); None: fixed steps only.
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
    family: Family | None = None
    matrix_noise: bool = True
    embedded: Callable | None = None

    def __post_init__(self):
        for what, orders in (("strong_order", self.strong_order), ("weak_order", self.weak_order)):
            bad = {k: v for k, v in orders.items() if not (isinstance(v, int | float) and 0.0 < v < math.inf)}
            if bad:
                raise ValueError(f"scheme {self.name!r}: {what} must map noise types to positive orders (the declared "
                                 f"rate of convergence), got {bad}.")

    @property
    def noise_types(self) -> tuple:
        return tuple(self.strong_order)

    def order_for(self, problem) -> float:
        """Declared strong order on ``problem`` (ODE order for ODEs)."""
        if self.kind != "sde":
            return self.strong_order["ode"]
        return self.strong_order[noise_class(problem)]

    def plan(self, problem, dim: int) -> StepPlan:
        """The step function, its packed coefficients and the evaluations per step on ``problem``."""
        if self.family is None:
            raise ValueError(f"{self.name} is an exponential integrator with no single-step form; "
                             "solve an sdekit.SemilinearODE with sdekit.solve.")
        return self.family.plan(self, problem, dim)


def noise_class(problem) -> str:
    """The key of ``strong_order`` that applies to ``problem``."""
    if problem.noise == "general":
        return "commutative" if problem.commutative else "general"
    return problem.noise


def pack_tableau(*rows_or_matrices) -> np.ndarray:
    """Stack vectors and matrices of one width into the 2-D ``tab`` the steps read."""
    return np.ascontiguousarray(np.vstack([np.atleast_2d(np.asarray(r, dtype=np.float64)) for r in rows_or_matrices]))


# (kind, name) -> Scheme, in declaration order; filled by register() as the family modules are imported.
SCHEMES: dict = {}


def register(scheme: Scheme) -> Scheme:
    """Add ``scheme`` to the registry (its ``(kind, name)`` must be new) and return it."""
    key = (scheme.kind, scheme.name)
    if key in SCHEMES:
        raise ValueError(f"{scheme.name!r} is already registered as a {scheme.kind!r} scheme; choose another name.")
    SCHEMES[key] = scheme
    return scheme


def list_schemes(kind: str | None = None) -> list[Scheme]:
    """All registered schemes, optionally of one kind (``"sde"``, ``"ode"`` or ``"semilinear"``).

    ``"semilinear"`` schemes solve :class:`sdekit.SemilinearODE` problems
    (which the ``"ode"`` schemes solve too).
    """
    kinds = ("sde", "ode", "semilinear") if kind is None else (kind,)
    return [s for want in kinds for (k, _), s in SCHEMES.items() if k == want]


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
    if problem.matrix_noise and not scheme.matrix_noise:
        ok = sorted(s.name for s in list_schemes("sde") if s.matrix_noise and nc in s.strong_order)
        raise ValueError(f"{scheme.name} needs diagonal noise; this problem has matrix {nc!r} noise. Use one of {ok}.")
    if not set(problem.calculi()) & set(scheme.calculus):
        ok = sorted(s.name for s in list_schemes("sde") if problem.calculus in s.calculus and nc in s.strong_order)
        raise ValueError(
            f"{scheme.name} solves {'/'.join(scheme.calculus)} SDEs; this problem is {problem.calculus}. Use one of {ok}."
        )
    return scheme

"""The instability rule of the explicit fixed-step schemes, and the failure codes the fixed-step loops record.

An explicit scheme applied to a drift with a stiff contracting direction (an
eigenvalue ``lambda`` of its Jacobian with ``h lambda`` left of the scheme's
real stability interval ``[-beta, 0]``) multiplies that component by
``|R(h lambda)| > 1`` at every step, ``R`` the scheme's stability function:
the numbers grow geometrically although the problem is bounded (Hairer &
Wanner, *Solving ODEs II*, IV.2; for Euler–Maruyama, Higham 2000, SIAM J.
Numer. Anal. 38(3), §3). A trajectory alone cannot tell this from honest
exponential growth (``R(h lambda)`` for ``lambda > 0`` grows just as fast), so
the rule looks at the drift along the step, but only when the state has grown:

**The rule.** Each path keeps a reference scale ``s`` (initially
``max_i |x0_i|``). After the step ``x_k -> x_{k+1}`` (from ``t_k``, step ``h``)
with a finite ``x_{k+1}``, let ``N = max_i |x_{k+1, i}|``:

1. if ``s = 0``: ``s <- N`` (the first non-zero state sets the scale);
2. else if ``N > GROWTH * s`` (``GROWTH = 1e3``): with ``D = x_{k+1} - x_k`` and
   ``d = f(t_k, x_{k+1}) - f(t_k, x_k)``, the secant estimate of ``h lambda``
   along the step is ``z = h <D, d> / <D, D>``. If ``z < -beta`` (the scheme's
   real stability boundary) the path is **unstable**: it stops there (NaN from
   then on), with failure code :data:`UNSTABLE` and time ``t_{k+1}``.
   Otherwise ``s <- N``.

Consequences: honest growth is never flagged (its drift pushes along the step,
``z > 0``; GBM with a large drift, ``dx = 50 x dt``, passes at any step); a
state that the noise makes large in a stable regime is never flagged (for a
linear drift ``z`` is exactly ``h lambda`` along the step, inside
``[-beta, 0]`` when the scheme is stable); a saturating nonlinearity is judged
by its secant, not by its steepest slope. The check costs a comparison per
path and step; the drift is evaluated (twice, on the rows that grew) only when
the state has grown a thousandfold since the scale was last set, which honest
growth does every ``ln(1e3) / (h lambda)`` steps. Non-normal or strongly
nonlinear drifts can hide an instability from the secant (the path then runs
on, and overflows to a non-finite state, code NONFINITE).

``beta`` comes from the step function (:func:`stability_boundary`): 2 for the
Euler-type drifts (Euler–Maruyama, Euler–Heun, Milstein), computed from the
drift tableau ``(A, b)`` for the Runge–Kutta and Rößler steps (2 for the
two-stage SRA1/SRIW1 drift, 2.785 for RK4), and for the stabilized
``skrock``/``srock`` the interval ``ell(s)`` of the stages the step runs (their
family adds the entry), so a ``spectral_radius`` set too small is reported.
Steps without an entry (the drift-implicit schemes) are not checked.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba.extending import register_jitable

from . import _steps
from ._adaptive import NONFINITE, UNSTABLE

__all__ = ["GROWTH", "UNSTABLE", "NONFINITE_CODES", "STABILITY_BOUNDARY", "nonfinite_code", "real_stability_boundary",
           "secant_unstable", "stability_boundary"]

GROWTH = 1e3  # growth of max|x| over the path's reference scale that triggers the drift test


def real_stability_boundary(A, b) -> float:
    """``beta`` such that the explicit Runge–Kutta method ``(A, b)`` (strictly lower ``A``) is stable on ``[-beta, 0]``.

    ``R(z) = 1 + sum_{j>=1} z^j b^T A^{j-1} 1`` (Hairer & Wanner, *Solving ODEs II*, IV.2, eq. 2.9); ``beta`` is
    the first ``r > 0`` with ``|R(-r)| > 1``, found on a grid of spacing 1e-3 and refined by bisection. An
    ``s``-stage method has ``beta <= 2 s^2`` (the shifted Chebyshev polynomial is the optimum; Hairer & Wanner,
    *Solving ODEs II*, IV.2), so the grid stops there. Computed once per tableau.
    """
    A, b = np.asarray(A, dtype=float), np.asarray(b, dtype=float)
    coefficients = [1.0]
    v = np.ones(b.size)
    for _ in range(b.size):
        coefficients.append(float(b @ v))
        v = A @ v
    return _polynomial_boundary(tuple(coefficients))


@functools.lru_cache(maxsize=64)
def _polynomial_boundary(coefficients: tuple) -> float:
    poly = np.polynomial.Polynomial(coefficients)
    s = len(coefficients) - 1
    grid = np.arange(1, int(1000 * (2 * s * s + 1)) + 1) * 1e-3
    outside = np.nonzero(np.abs(poly(-grid)) > 1.0 + 1e-12)[0]
    if outside.size == 0:
        return float(grid[-1])
    lo, hi = (grid[outside[0] - 1] if outside[0] else 0.0), grid[outside[0]]
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if abs(poly(-mid)) <= 1.0 + 1e-12 else (lo, mid)
    return float(lo)


def _sra_boundary(tab):
    s = tab.shape[1]
    return real_stability_boundary(tab[5 : 5 + s], tab[2])


def _sri_boundary(tab):
    s = tab.shape[1]
    return real_stability_boundary(tab[9 : 9 + s], tab[2])


def _erk_boundary(tab):
    s = tab.shape[1]
    return real_stability_boundary(tab[:s], tab[s])


def _euler_boundary(tab):
    return 2.0  # R(z) = 1 + z


# step function -> beta(tab): the explicit steps whose instability is detected. The stabilized family adds its
# steps (sdekit.schemes.stabilized); the drift-implicit steps add none (their stability interval is unbounded).
STABILITY_BOUNDARY = {
    _steps.euler: _euler_boundary,
    _steps.euler_heun: _euler_boundary,
    _steps.milstein: _euler_boundary,
    _steps.milstein_general: _euler_boundary,
    _steps.sra: _sra_boundary,
    _steps.sri: _sri_boundary,
    _steps.sriw1: lambda tab: real_stability_boundary([[0.0, 0.0], [0.75, 0.0]], [1 / 3, 2 / 3]),
    _steps.erk: _erk_boundary,
}

# step function -> the failure code recorded when the step returns a non-finite row (NONFINITE unless listed): a
# step that signals its own failure by NaN rows (an implicit step whose Newton iteration failed) names its code here.
NONFINITE_CODES: dict = {}


def stability_boundary(plan) -> float:
    """``beta`` of the plan's step (see the module docstring), or 0.0 for a step that is not checked."""
    rule = STABILITY_BOUNDARY.get(plan.step)
    return 0.0 if rule is None else float(rule(plan.tab))


def nonfinite_code(step) -> int:
    """The failure code of a non-finite row returned by ``step``."""
    return NONFINITE_CODES.get(step, NONFINITE)


@register_jitable
def secant_unstable(h, beta, dx_dot_df, dx_dot_dx):
    """Whether the secant estimate ``z = h <D, d> / <D, D>`` of ``h lambda`` lies left of ``-beta``."""
    return h * dx_dot_df < -beta * dx_dot_dx and math.isfinite(dx_dot_df) and math.isfinite(dx_dot_dx)

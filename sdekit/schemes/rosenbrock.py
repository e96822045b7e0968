"""Rosenbrock (Rodas) methods for stiff ODEs: adaptive, one LU per step, every save point a step end.

``rodas4`` (Hairer & Wanner 1996) and ``rodas5`` (Di Marzo 1993) are
stiffly accurate and L-stable; their embedded solution gives the error
estimate. Their coefficients are those of the transformed form (Hairer &
Wanner, *Solving ODEs II*, §IV.7, eq. (7.25)) as published in Hairer's
``rodas.f`` and in OrdinaryDiffEq.jl's ``rosenbrock_tableaus.jl``; each table
is checked at import against the Rosenbrock order conditions (all rooted
trees up to its order, on the method transformed back to the standard form
(7.4)). The integrator is :mod:`sdekit.schemes._rosenbrock`; the backends run it
per path (numpy, numba) or on the batch with one step size (torch).

The integrator steps onto every save point instead of interpolating: the
published continuous extensions of Rodas methods (Hairer's ``CONTRO``; those of
Rodas5 in OrdinaryDiffEq.jl, and Rodas5P's, Steinebach 2023) are not error
controlled, and on very stiff problems, whose fast components are slaved to a
slow manifold, the step-end error stays far below the tolerance with steps so
long that the interpolant misses the manifold between them: on
``x' = -1e8 (x - sin t) + cos t`` at ``rtol = 1e-8``, rodas4's interpolant was
off by up to 1e6 tolerance units between step ends accurate to 0.04 units.
A step end is error controlled; the price is a step per save point at least.

Steinebach (2023), Construction of Rosenbrock-Wanner method Rodas5P and
numerical benchmarks within the Julia Differential Equations package, BIT
Numer. Math. 63.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Family, Scheme, register

__all__ = ["RosenbrockTableau", "RODAS4", "RODAS5", "ROSENBROCK", "rooted_trees", "order_condition_residuals"]


@dataclass(frozen=True)
class RosenbrockTableau:
    """A Rosenbrock method in the transformed form of Hairer & Wanner (II, §IV.7, eq. (7.25)).

    Stage ``i`` solves ``(I/(h gamma) - J) k_i = f(t + c_i h, x + sum_j a_ij k_j) + sum_j C_ij k_j / h + d_i h f_t``;
    the solution is ``x + sum b_i k_i`` and the error estimate ``sum e_i k_i`` (``e = b - b_embedded``).
    """

    name: str
    order: int
    error_order: int
    gamma: float
    a: np.ndarray
    C: np.ndarray
    c: np.ndarray
    d: np.ndarray
    b: np.ndarray
    e: np.ndarray

    def __post_init__(self):
        s = len(self.b)
        if self.a.shape != (s, s) or self.C.shape != (s, s):
            raise ValueError(f"tableau {self.name}: a and C must be (s, s)")
        alpha, gam, b_std = self.standard_form()
        for what, ok in [("rows of alpha must sum to c", np.allclose(alpha.sum(axis=1), self.c, atol=1e-9)),
                         ("rows of Gamma must sum to d", np.allclose(gam.sum(axis=1), self.d, atol=1e-9))]:
            if not ok:
                raise ValueError(f"tableau {self.name}: {what}")
        for weights, order, what in [(b_std, self.order, ""), ((self.b - self.e) @ gam, self.error_order,
                                                                "embedded solution: ")]:
            worst = max(abs(r) for r in order_condition_residuals(alpha, gam, weights, order))
            if worst > 1e-9:
                raise ValueError(f"tableau {self.name}: {what}an order-{order} condition fails (residual {worst:.2e})")

    @property
    def stages(self) -> int:
        return len(self.b)

    def standard_form(self):
        """``(alpha, Gamma, b)`` of the standard form (7.4): ``Gamma = (diag(1/gamma) - C)^-1``, ``alpha = a Gamma``."""
        gam = np.linalg.inv(np.eye(self.stages) / self.gamma - self.C)
        return self.a @ gam, gam, self.b @ gam


def rooted_trees(order: int) -> list:
    """All rooted trees with ``order`` nodes, each a sorted tuple of its children's trees (the leaf is ``()``)."""
    level = {()}
    for _ in range(order - 1):
        grown = set()
        for tree in level:
            grown |= set(_grow(tree))
        level = grown
    return sorted(level)


def _grow(tree):
    """The trees made by adding one leaf to ``tree`` (at the root or inside a child)."""
    yield tuple(sorted(tree + ((),)))
    for i, child in enumerate(tree):
        for new in _grow(child):
            yield tuple(sorted(tree[:i] + (new,) + tree[i + 1:]))


def _density(tree) -> int:
    n = 1 + sum(_size(ch) for ch in tree)
    return n * int(np.prod([_density(ch) for ch in tree])) if tree else 1


def _size(tree) -> int:
    return 1 + sum(_size(ch) for ch in tree)


def _weights(tree, alpha, beta):
    """The stage weights of ``tree``'s elementary differential: a single child goes through ``beta = alpha + Gamma``
    (the Jacobian term of the stages), two or more through ``alpha`` (Hairer & Wanner II, §IV.7, Theorem 7.3)."""
    if not tree:
        return np.ones(alpha.shape[0])
    if len(tree) == 1:
        return beta @ _weights(tree[0], alpha, beta)
    return np.prod([alpha @ _weights(ch, alpha, beta) for ch in tree], axis=0)


def order_condition_residuals(alpha, gam, b, order: int) -> list:
    """``b . Phi(t) - 1/t!`` for every rooted tree ``t`` with at most ``order`` nodes."""
    beta = alpha + gam
    return [float(b @ _weights(t, alpha, beta) - 1.0 / _density(t))
            for p in range(1, order + 1) for t in rooted_trees(p)]


def _stiffly_accurate(a_rows, C_rows, gamma, c, d, name, order):
    """A Rodas tableau: the last row of ``a`` plus the last stage is the solution, the last stage the error."""
    s = len(a_rows) + 1
    a = np.zeros((s, s))
    C = np.zeros((s, s))
    for i, row in enumerate(a_rows):
        a[i + 1, : len(row)] = row
    for i, row in enumerate(C_rows):
        C[i + 1, : len(row)] = row
    b = np.append(a[-1, :-1], 1.0)
    e = np.zeros(s)
    e[-1] = 1.0
    return RosenbrockTableau(name, order, order - 1, gamma, a, C, np.array(c, dtype=float), np.array(d, dtype=float),
                             b, e)


# Hairer & Wanner (1996), Solving ODEs II, §VI.4 and rodas.f (METH = 1).
RODAS4 = _stiffly_accurate(
    a_rows=[[1.544],
            [0.9466785280815826, 0.2557011698983284],
            [3.314825187068521, 2.896124015972201, 0.9986419139977817],
            [1.221224509226641, 6.019134481288629, 12.53708332932087, -0.687886036105895],
            [1.221224509226641, 6.019134481288629, 12.53708332932087, -0.687886036105895, 1.0]],
    C_rows=[[-5.6688],
            [-2.430093356833875, -0.2063599157091915],
            [-0.1073529058151375, -9.594562251023355, -20.47028614809616],
            [7.496443313967647, -10.24680431464352, -33.99990352819905, 11.7089089320616],
            [8.083246795921522, -7.981132988064893, -31.52159432874371, 16.31930543123136, -6.058818238834054]],
    gamma=0.25, c=[0, 0.386, 0.21, 0.63, 1, 1], d=[0.25, -0.1043, 0.1035, -0.0362, 0, 0],
    name="rodas4", order=4)

# Di Marzo (1993), Rodas5(4), as tabulated in OrdinaryDiffEq.jl (rosenbrock_tableaus.jl).
RODAS5 = _stiffly_accurate(
    a_rows=[[2.0],
            [3.040894194418781, 1.041747909077569],
            [2.576417536461461, 1.62208306077664, -0.9089668560264532],
            [2.760842080225597, 1.446624659844071, -0.3036980084553738, 0.2877498600325443],
            [-14.09640773051259, 6.925207756232704, -41.47510893210728, 2.343771018586405, 24.13215229196062],
            [-14.09640773051259, 6.925207756232704, -41.47510893210728, 2.343771018586405, 24.13215229196062, 1.0],
            [-14.09640773051259, 6.925207756232704, -41.47510893210728, 2.343771018586405, 24.13215229196062, 1.0,
             1.0]],
    C_rows=[[-10.31323885133993],
            [-21.04823117650003, -7.234992135176716],
            [32.22751541853323, -4.943732386540191, 19.44922031041879],
            [-20.69865579590063, -8.816374604402768, 1.260436877740897, -0.7495647613787146],
            [-46.22004352711257, -17.49534862857472, -289.6389582892057, 93.60855400400906, 318.3822534212147],
            [34.20013733472935, -14.1553540271769, 57.823356409884, 25.83362985412365, 1.408950972071624,
             -6.551835421242162],
            [42.57076742291101, -13.80770672017997, 93.98938432427124, 18.77919633714503, -31.5835918722337,
             -6.685968952921985, -5.810979938412932]],
    gamma=0.19, c=[0, 0.38, 0.3878509998321533, 0.483971893787384, 0.457047700881958, 1, 1, 1],
    d=[0.19, -0.1823079225333714636, -0.319231832186874912, 0.3449828624725343, -0.377417564392089818, 0, 0, 0],
    name="rodas5", order=5)


def _adaptive_only(scheme, problem, dim):
    raise ValueError(f"{scheme.name} is adaptive and has no fixed-step form; sdekit.solve runs it with `rtol`/`atol`.")


ROSENBROCK = Family("rosenbrock", _adaptive_only, steps=())


def _rodas(tableau, reference: str) -> Scheme:
    order = {"ode": float(tableau.order)}
    return register(Scheme(tableau.name, "ode", order, order, adaptive=True, tableau=tableau, family=ROSENBROCK,
                           reference=reference))


RODAS4_SCHEME = _rodas(RODAS4, "Hairer & Wanner (1996), Solving ODEs II, §VI.4 (RODAS, rodas.f); stiffly accurate, "
                               "L-stable, order 4(3).")
RODAS5_SCHEME = _rodas(RODAS5, "Di Marzo (1993), Rodas5(4), Univ. Geneva; Hairer & Wanner (1996) §VI.4; stiffly "
                               "accurate, L-stable, order 5(4).")

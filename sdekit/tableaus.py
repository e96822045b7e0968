"""Coefficient tables: Butcher tableaus and Rößler's stochastic tableaus.

Each table is frozen data that checks its own consistency and order
conditions when it is made, so a mistyped coefficient fails at import rather
than as a wrong convergence order. One shared stepper per family interprets
them (``schemes/_steps.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction as Fr

import numpy as np

__all__ = [
    "ButcherTableau", "SRATableau", "SRITableau",
    "EULER", "HEUN", "MIDPOINT", "RK4", "DOPRI5", "SRA1", "SRA3", "SRIW1",
]


def _arr(rows) -> np.ndarray:
    return np.array([[float(v) for v in r] for r in rows]) if np.ndim(rows[0]) else np.array([float(v) for v in rows])


def _check(cond: bool, name: str, what: str):
    if not cond:
        raise ValueError(f"tableau {name}: {what}")


def _check_rk_order(A, b, c, order: int, name: str, what: str = ""):
    """The Runge–Kutta order conditions of ``(A, b, c)`` up to ``min(order, 4)`` (Butcher 2016, §31, rooted trees)."""
    conds = {1: [(np.sum(b), 1.0)], 2: [(b @ c, 1 / 2)],
             3: [(b @ c**2, 1 / 3), (b @ A @ c, 1 / 6)],
             4: [(b @ c**3, 1 / 4), (b @ (c * (A @ c)), 1 / 8), (b @ A @ c**2, 1 / 12), (b @ A @ A @ c, 1 / 24)]}
    for p in range(1, min(order, 4) + 1):
        for val, target in conds[p]:
            _check(abs(val - target) < 1e-12, name, f"{what}order-{p} condition fails ({val} != {target})")


@dataclass(frozen=True)
class ButcherTableau:
    """Explicit Runge–Kutta tableau ``(A, b, c)``, optionally embedded and with dense output.

    ``b_err`` holds the weights of the embedded lower-order solution
    (error = h * sum((b - b_err) k)); ``dense`` is the ``(s, q)`` matrix ``P`` of
    the continuous extension ``x(t + theta h) = x + h sum_i k_i sum_j P[i, j] theta**(j+1)``.
    """

    name: str
    A: np.ndarray
    b: np.ndarray
    c: np.ndarray
    order: int
    b_err: np.ndarray | None = None
    error_order: int | None = None
    dense: np.ndarray | None = None
    fsal: bool = False

    def __post_init__(self):
        s = len(self.b)
        _check(self.A.shape == (s, s) and self.c.shape == (s,), self.name, "A must be (s, s) and c (s,)")
        _check(np.allclose(np.triu(self.A), 0.0), self.name, "A must be strictly lower triangular (explicit)")
        _check(np.allclose(self.A.sum(axis=1), self.c, atol=1e-14), self.name, "rows of A must sum to c")
        _check_rk_order(self.A, self.b, self.c, self.order, self.name)
        if self.b_err is not None:
            for val, target in [(np.sum(self.b_err), 1.0), (self.b_err @ self.c, 0.5)]:
                _check(abs(val - target) < 1e-12, self.name, "embedded solution fails the order-2 conditions")
        if self.dense is not None:
            _check(np.allclose(self.dense.sum(axis=1), self.b, atol=1e-12), self.name,
                   "dense output at theta=1 must equal the solution weights b")

    @property
    def stages(self) -> int:
        return len(self.b)


@dataclass(frozen=True)
class SRATableau:
    """Rößler's SRA tableau for additive noise (Rößler 2010, SIAM J. Numer. Anal. 48(3), eq. 6.1).

    ``X' = X + h sum_i alpha_i f(t + c0_i h, H_i) + sum_i (beta1_i dW + beta2_i I10/h) g(t + c1_i h)``,
    ``H_i = X + h sum_j A0_ij f(H_j) + sum_j B0_ij g(t + c1_j h) I10/h``.
    The strong order 1.5 conditions (Rößler 2010, Theorem 6.2) are checked, and
    the Runge–Kutta order conditions of the drift part ``(A0, alpha, c0)`` up to
    ``drift_order`` (a weak order ``p`` needs deterministic order ``p``).
    """

    name: str
    c0: np.ndarray
    c1: np.ndarray
    A0: np.ndarray
    B0: np.ndarray
    alpha: np.ndarray
    beta1: np.ndarray
    beta2: np.ndarray
    drift_order: int = 2

    def __post_init__(self):
        e = np.ones_like(self.alpha)
        n = self.name
        _check(np.allclose(self.A0 @ e, self.c0), n, "rows of A0 must sum to c0")
        for val, target, what in [
            (self.alpha @ e, 1, "sum(alpha) = 1"), (self.beta1 @ e, 1, "sum(beta1) = 1"),
            (self.beta2 @ e, 0, "sum(beta2) = 0"), (self.alpha @ (self.B0 @ e), 1, "alpha.B0 e = 1"),
            (self.alpha @ (self.A0 @ e), 0.5, "alpha.A0 e = 1/2"),
            (self.alpha @ (self.B0 @ e) ** 2, 1.5, "alpha.(B0 e)^2 = 3/2"),
            (self.beta1 @ self.c1, 1, "beta1.c1 = 1"), (self.beta2 @ self.c1, -1, "beta2.c1 = -1"),
        ]:
            _check(abs(val - target) < 1e-12, n, f"order condition {what} fails")
        _check(np.allclose(np.triu(self.A0), 0.0), n, "A0 must be strictly lower triangular (explicit)")
        _check_rk_order(self.A0, self.alpha, self.c0, self.drift_order, n, "drift part (A0, alpha, c0): ")

    @property
    def stages(self) -> int:
        return len(self.alpha)


@dataclass(frozen=True)
class SRITableau:
    """Rößler's SRI tableau for diagonal/scalar Itô noise (Rößler 2010, eq. 6.2).

    ``X' = X + h sum_i alpha_i f(H0_i) + sum_i (beta1_i dW + beta2_i I11/sqrt(h)
    + beta3_i I10/h + beta4_i I111/h) g(H1_i)``, with
    ``H0_i = X + h sum_j A0_ij f(H0_j) + sum_j B0_ij g(H1_j) I10/h`` and
    ``H1_i = X + h sum_j A1_ij f(H0_j) + sqrt(h) sum_j B1_ij g(H1_j)``.
    The strong order 1.5 conditions (Rößler 2010, Theorem 6.4) are checked.
    """

    name: str
    c0: np.ndarray
    c1: np.ndarray
    A0: np.ndarray
    A1: np.ndarray
    B0: np.ndarray
    B1: np.ndarray
    alpha: np.ndarray
    beta1: np.ndarray
    beta2: np.ndarray
    beta3: np.ndarray
    beta4: np.ndarray
    need_f: np.ndarray = field(init=False, repr=False)
    need_g: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        e = np.ones_like(self.alpha)
        n = self.name
        b1e = self.B1 @ e
        checks = [
            (self.alpha @ e, 1), (self.beta1 @ e, 1), (self.beta2 @ e, 0), (self.beta3 @ e, 0), (self.beta4 @ e, 0),
            (self.beta1 @ b1e, 0), (self.beta2 @ b1e, 1), (self.beta3 @ b1e, 0), (self.beta4 @ b1e, 0),
            (self.alpha @ (self.A0 @ e), 0.5), (self.alpha @ (self.B0 @ e), 1), (self.alpha @ (self.B0 @ e) ** 2, 1.5),
            (self.beta1 @ (self.A1 @ e), 1), (self.beta2 @ (self.A1 @ e), 0), (self.beta3 @ (self.A1 @ e), -1),
            (self.beta4 @ (self.A1 @ e), 0), (self.beta1 @ b1e**2, 1), (self.beta2 @ b1e**2, 0),
            (self.beta3 @ b1e**2, -1), (self.beta4 @ b1e**2, 2), (self.beta1 @ (self.B1 @ b1e), 0),
            (self.beta2 @ (self.B1 @ b1e), 0), (self.beta3 @ (self.B1 @ b1e), 0), (self.beta4 @ (self.B1 @ b1e), 1),
            (0.5 * self.beta1 @ (self.A1 @ (self.B0 @ e)) + self.beta3 @ (self.A1 @ (self.B0 @ e)) / 3, 0),
        ]
        for k, (val, target) in enumerate(checks, 1):
            _check(abs(val - target) < 1e-12, n, f"order condition {k} fails ({val} != {target})")
        used_f = (self.alpha != 0) | np.any(self.A0 != 0, axis=0) | np.any(self.A1 != 0, axis=0)
        betas = np.stack([self.beta1, self.beta2, self.beta3, self.beta4])
        used_g = np.any(betas != 0, axis=0) | np.any(self.B0 != 0, axis=0) | np.any(self.B1 != 0, axis=0)
        object.__setattr__(self, "need_f", used_f.astype(np.float64))
        object.__setattr__(self, "need_g", used_g.astype(np.float64))

    @property
    def stages(self) -> int:
        return len(self.alpha)


def _tab(A, b, c):
    return _arr(A), _arr(b), _arr(c)


EULER = ButcherTableau("euler", *_tab([[0]], [1], [0]), order=1)
HEUN = ButcherTableau("heun", *_tab([[0, 0], [1, 0]], [Fr(1, 2), Fr(1, 2)], [0, 1]), order=2)
MIDPOINT = ButcherTableau("midpoint", *_tab([[0, 0], [Fr(1, 2), 0]], [0, 1], [0, Fr(1, 2)]), order=2)
RK4 = ButcherTableau(
    "rk4",
    *_tab([[0, 0, 0, 0], [Fr(1, 2), 0, 0, 0], [0, Fr(1, 2), 0, 0], [0, 0, 1, 0]],
          [Fr(1, 6), Fr(1, 3), Fr(1, 3), Fr(1, 6)], [0, Fr(1, 2), Fr(1, 2), 1]),
    order=4,
)

# Dormand & Prince (1980), J. Comput. Appl. Math. 6(1); 7 stages, FSAL.
# Dense output: Shampine (1986), Math. Comp. 46(173), as used by scipy's RK45.
DOPRI5 = ButcherTableau(
    "dopri5",
    A=_arr([
        [0, 0, 0, 0, 0, 0, 0],
        [Fr(1, 5), 0, 0, 0, 0, 0, 0],
        [Fr(3, 40), Fr(9, 40), 0, 0, 0, 0, 0],
        [Fr(44, 45), Fr(-56, 15), Fr(32, 9), 0, 0, 0, 0],
        [Fr(19372, 6561), Fr(-25360, 2187), Fr(64448, 6561), Fr(-212, 729), 0, 0, 0],
        [Fr(9017, 3168), Fr(-355, 33), Fr(46732, 5247), Fr(49, 176), Fr(-5103, 18656), 0, 0],
        [Fr(35, 384), 0, Fr(500, 1113), Fr(125, 192), Fr(-2187, 6784), Fr(11, 84), 0],
    ]),
    b=_arr([Fr(35, 384), 0, Fr(500, 1113), Fr(125, 192), Fr(-2187, 6784), Fr(11, 84), 0]),
    c=_arr([0, Fr(1, 5), Fr(3, 10), Fr(4, 5), Fr(8, 9), 1, 1]),
    order=5,
    b_err=_arr([Fr(5179, 57600), 0, Fr(7571, 16695), Fr(393, 640), Fr(-92097, 339200), Fr(187, 2100), Fr(1, 40)]),
    error_order=4,
    dense=_arr([
        [1, Fr(-8048581381, 2820520608), Fr(8663915743, 2820520608), Fr(-12715105075, 11282082432)],
        [0, 0, 0, 0],
        [0, Fr(131558114200, 32700410799), Fr(-68118460800, 10900136933), Fr(87487479700, 32700410799)],
        [0, Fr(-1754552775, 470086768), Fr(14199869525, 1410260304), Fr(-10690763975, 1880347072)],
        [0, Fr(127303824393, 49829197408), Fr(-318862633887, 49829197408), Fr(701980252875, 199316789632)],
        [0, Fr(-282668133, 205662961), Fr(2019193451, 616988883), Fr(-1453857185, 822651844)],
        [0, Fr(40617522, 29380423), Fr(-110615467, 29380423), Fr(69997945, 29380423)],
    ]),
    fsal=True,
)

# Rößler (2010), SRA1: strong order 1.5 for additive noise, weak order 2.
SRA1 = SRATableau(
    "sra1",
    c0=_arr([0, Fr(3, 4)]), c1=_arr([1, 0]),
    A0=_arr([[0, 0], [Fr(3, 4), 0]]), B0=_arr([[0, 0], [Fr(3, 2), 0]]),
    alpha=_arr([Fr(1, 3), Fr(2, 3)]), beta1=_arr([1, 0]), beta2=_arr([-1, 1]),
)

# Rößler (2010), SRA3: strong order 1.5 for additive noise, weak order 3; its drift part is
# the third-order Runge–Kutta method of Shu & Osher (1988), c0 = (0, 1, 1/2), alpha = (1/6, 1/6, 2/3).
SRA3 = SRATableau(
    "sra3",
    c0=_arr([0, 1, Fr(1, 2)]), c1=_arr([1, 0, 0]),
    A0=_arr([[0, 0, 0], [1, 0, 0], [Fr(1, 4), Fr(1, 4), 0]]), B0=_arr([[0, 0, 0], [0, 0, 0], [1, Fr(1, 2), 0]]),
    alpha=_arr([Fr(1, 6), Fr(1, 6), Fr(2, 3)]), beta1=_arr([1, 0, 0]), beta2=_arr([-1, 1, 0]), drift_order=3,
)

# Rößler (2010), SRIW1: strong order 1.5 for diagonal/scalar Itô noise, weak order 2.
# A1[3, 0] = 1/4 stands where the paper has A1[3, 2]: stage H0_3 = X and c0_3 = 0,
# so f(H0_3) = f(H0_1) and the two forms are identical; this one saves an f-evaluation.
SRIW1 = SRITableau(
    "sriw1",
    c0=_arr([0, Fr(3, 4), 0, 0]), c1=_arr([0, Fr(1, 4), 1, Fr(1, 4)]),
    A0=_arr([[0, 0, 0, 0], [Fr(3, 4), 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]),
    A1=_arr([[0, 0, 0, 0], [Fr(1, 4), 0, 0, 0], [1, 0, 0, 0], [Fr(1, 4), 0, 0, 0]]),
    B0=_arr([[0, 0, 0, 0], [Fr(3, 2), 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]),
    B1=_arr([[0, 0, 0, 0], [Fr(1, 2), 0, 0, 0], [-1, 0, 0, 0], [-5, 3, Fr(1, 2), 0]]),
    alpha=_arr([Fr(1, 3), Fr(2, 3), 0, 0]),
    beta1=_arr([-1, Fr(4, 3), Fr(2, 3), 0]), beta2=_arr([-1, Fr(4, 3), Fr(-1, 3), 0]),
    beta3=_arr([2, Fr(-4, 3), Fr(-2, 3), 0]), beta4=_arr([-2, Fr(5, 3), Fr(-2, 3), 1]),
)

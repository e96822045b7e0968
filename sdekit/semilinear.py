"""Semilinear ODEs and their exponential multistep integrators.

A semilinear ODE ``x' = a(t) x + N(t, x)`` with a scalar linear part is
written here through two scalar functions of time, the *log integrating
factor* ``A(t) = int a dt`` and a *clock* ``lambda(t)``, and a nonlinear
function ``D(t, x)``:

    ``dx/dt = A'(t) x + exp(A(t) + lambda(t)) lambda'(t) D(t, x)``.

Any such ODE can be put in this form (take ``D = exp(-A - lambda) N / lambda'``);
the clock is chosen so that ``D`` varies slowly in ``lambda``. Then the exact
solution

    ``x(t) = exp(A(t) - A(s)) x(s) + exp(A(t)) int_{lambda(s)}^{lambda(t)} exp(l) D dl``

is approximated by interpolating ``D`` in ``lambda`` through the last ``q``
evaluations and integrating the exponential weight exactly: the exponential
Adams–Bashforth methods ``exp_euler`` (q = 1, order 1), ``exp_ab2`` (order 2)
and ``exp_ab3`` (order 3). A step is exact when ``D`` is a polynomial of degree
``q - 1`` in ``lambda``, whatever the stiffness of ``a``. One evaluation of ``D``
per step. The first steps ramp the order up: ``exp_ab2`` starts with an
exponential Euler step (local error O(h^2), enough for order 2);
``exp_ab3`` starts with a two-stage exponential step through the midpoint
(one extra evaluation, local error O(h^3)), since a first-order start would
cap a non-stiff solution at order 2. ``exp_ab3_ramp`` is that cheaper variant
(``exp_euler``, then ``exp_ab2``, then third-order steps; one evaluation per
step, declared order 2), the start DEIS and DPM-Solver++(3M) use: at very
few steps the saved evaluation can matter more than the start's accuracy.

For diffusion models the probability-flow ODE in data prediction is of this
form with ``A = log sigma_t``, ``lambda = log(alpha_t / sigma_t)`` and
``D = x0_hat``: ``exp_euler`` is DDIM and ``exp_ab2`` is DPM-Solver++(2M) with
the exact ``phi_2`` weight (Lu et al. use ``h phi_1 / 2`` in its place; both are
second order).

References
----------
Hochbruck & Ostermann (2010), Exponential integrators, Acta Numerica 19,
209–286 (exponential Adams methods). Lu, Zhou, Bao, Chen, Li & Zhu (2022),
DPM-Solver++, arXiv:2211.01095. Zhang & Chen (2023), DEIS, ICLR.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from math import factorial

import numpy as np

from .problem import ODE, _check_callable, _normalise_params

__all__ = ["SemilinearODE", "exponential_weights"]


class SemilinearODE:
    """``dx/dt = A'(t) x + exp(A(t) + lambda(t)) lambda'(t) D(t, x)``.

    Parameters
    ----------
    log_factor : callable
        ``A(t, params)``: the log integrating factor, a scalar function of ``t``
        (the antiderivative of the linear coefficient ``a(t)``).
    clock : callable
        ``lambda(t, params)``: strictly monotone on the span; ``D`` is
        interpolated in this variable.
    nonlinear : callable
        ``D(t, x, params)`` on a batch ``x`` of shape ``(n, dim)`` (sdekit's
        problem-function convention).
    log_factor_rate, clock_rate : callable, optional
        ``A'(t, params)`` and ``lambda'(t, params)``. Only needed to solve the
        problem with the general ODE schemes (:meth:`as_ode`).
    params : tuple
        Numbers and arrays passed to every function.

    Examples
    --------
    Linear decay with a forcing, ``x' = -50 x + 50 cos(t)``: ``A = -50 t``,
    ``lambda = 50 t`` (so ``exp(A + lambda) lambda' = 50``) and ``D = cos(t)``:

    >>> p = SemilinearODE(lambda t, p: -50.0 * t, lambda t, p: 50.0 * t,
    ...                   lambda t, x, p: ops.cos(t) + 0.0 * x)
    """

    is_sde = False
    noise = None

    def __init__(self, log_factor: Callable, clock: Callable, nonlinear: Callable, *,
                 log_factor_rate: Callable | None = None, clock_rate: Callable | None = None, params: tuple = ()):
        for name, fn in (("log_factor", log_factor), ("clock", clock)):
            if not callable(fn):
                raise ValueError(f"`{name}` must be a function {name}(t, params), got {type(fn).__name__}.")
        _check_callable(nonlinear, "nonlinear")
        self.log_factor = log_factor
        self.clock = clock
        self.nonlinear = nonlinear
        self.log_factor_rate = log_factor_rate
        self.clock_rate = clock_rate
        self.params = _normalise_params(params)

    def as_ode(self) -> ODE:
        """The same equation as an :class:`~sdekit.ODE` (needs both rates), for the general schemes."""
        if self.log_factor_rate is None or self.clock_rate is None:
            raise ValueError(
                "solving a SemilinearODE with a general ODE scheme needs `log_factor_rate` and `clock_rate` "
                "(A'(t) and lambda'(t)); give them, or use method 'exp_euler', 'exp_ab2' or 'exp_ab3'."
            )
        from . import ops

        A, lam, D = ops.jittable(self.log_factor), ops.jittable(self.clock), ops.jittable(self.nonlinear)
        dA, dlam = ops.jittable(self.log_factor_rate), ops.jittable(self.clock_rate)

        def rhs(t, x, p):
            return dA(t, p) * x + ops.exp(A(t, p) + lam(t, p)) * dlam(t, p) * D(t, x, p)

        return ODE(rhs, params=self.params)

    def __repr__(self):
        return f"SemilinearODE(params={self.params!r})"


def _moments(h: float, q: int) -> np.ndarray:
    """``M_m = int_0^h exp(tau - h) tau^m dtau`` for ``m < q`` (any sign of ``h``)."""
    M = np.empty(q)
    if abs(h) < 0.5:
        # h^(m+1) m! sum_j (-h)^j / (j+m+1)!, 25 terms: below round-off for |h| < 0.5
        for m in range(q):
            M[m] = h ** (m + 1) * factorial(m) * sum((-h) ** j / factorial(j + m + 1) for j in range(25))
        return M
    M[0] = -math.expm1(-h)
    for m in range(1, q):
        M[m] = h**m - m * M[m - 1]
    return M


def exponential_weights(lam_nodes, lam_next: float) -> np.ndarray:
    """Weights ``w_j`` with ``int_{l_0}^{l_next} exp(l - l_next) P(l) dl = sum_j w_j D_j``.

    ``P`` interpolates ``D_j`` at ``lam_nodes[j]`` (``lam_nodes[0]`` is the
    current point ``l_0``, then the earlier ones).
    """
    nodes = np.asarray(lam_nodes, dtype=np.float64)
    tau = nodes - nodes[0]
    h = float(lam_next - nodes[0])
    q = nodes.size
    M = _moments(h, q)
    V = np.vander(tau, q, increasing=True)  # V[i, m] = tau_i^m
    return np.linalg.solve(V.T, M)


# number of interpolation points per method (exp_ab3_ramp: exp_ab3 after a cheap ramp, see the registry)
ORDERS = {"exp_euler": 1, "exp_ab2": 2, "exp_ab3": 3, "exp_ab3_ramp": 3}
_JITTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiled(fn):
    """``numba.njit(fn)``, made once per function object (a new dispatcher would compile again)."""
    import numba

    if isinstance(fn, numba.core.dispatcher.Dispatcher):
        return fn
    jit = _JITTED.get(fn)
    if jit is None:
        jit = _JITTED[fn] = numba.njit(fn)
    return jit


def _grid(t0, t1, n_steps, t_grid):
    if t_grid is None:
        return t0 + (t1 - t0) * (np.arange(n_steps + 1) / n_steps)
    try:
        g = np.array(t_grid, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("`t_grid` must be a 1-D sequence of times.") from None
    if g.ndim != 1 or g.size < 2 or not np.all(np.isfinite(g)):
        raise ValueError(f"`t_grid` must be a finite 1-D sequence of at least 2 times, got shape {g.shape}.")
    span = abs(t1 - t0)
    if abs(g[0] - t0) > 1e-12 * span or abs(g[-1] - t1) > 1e-12 * span:
        raise ValueError(f"`t_grid` must start at t_span[0]={t0} and end at t_span[1]={t1}; got {g[0]} ... {g[-1]}.")
    if np.any(np.diff(g) * np.sign(t1 - t0) <= 0):
        raise ValueError("`t_grid` must be strictly monotone in the direction of t_span.")
    g[0], g[-1] = t0, t1
    return g


def evaluations(method: str, n_steps: int) -> int:
    """Evaluations of ``D`` per path: one per step, plus the order-3 start's midpoint."""
    return n_steps + (1 if method == "exp_ab3" else 0)


def _like(d, x, is_torch):
    if is_torch:
        return d.expand_as(x) if d.shape != x.shape else d
    return np.broadcast_to(np.asarray(d, dtype=np.float64), x.shape)


def run(problem: SemilinearODE, x0, grid: np.ndarray, method: str, save_idx, backend: str, params, xp):
    """Integrate on ``grid``; returns ``(saved states, failure_time)``.

    ``xp`` is ``"numpy"`` or ``"torch"``: the array family of ``x0`` and of the
    saved states; ``params`` are already on the backend.
    """
    q_max = ORDERS[method]
    n = grid.size - 1
    A = np.array([float(problem.log_factor(float(t), problem.params)) for t in grid])
    lam = np.array([float(problem.clock(float(t), problem.params)) for t in grid])
    if not (np.all(np.isfinite(A)) and np.all(np.isfinite(lam))):
        bad = grid[~(np.isfinite(A) & np.isfinite(lam))][0]
        raise ValueError(f"the log factor or the clock is not finite at t={bad}; keep the span inside their domain.")
    dl = np.diff(lam)
    if not (np.all(dl > 0) or np.all(dl < 0)):
        raise ValueError("the clock lambda(t) must be strictly monotone on the grid (it is the interpolation variable).")
    D = problem.nonlinear
    if backend == "numba":
        D = _compiled(D)
    is_torch = xp == "torch"
    if is_torch:
        import torch

        isfinite_rows = lambda v: torch.isfinite(v.detach()).all(dim=1)  # noqa: E731
    else:
        isfinite_rows = lambda v: np.isfinite(v).all(axis=1)  # noqa: E731
    x = x0
    n_rows = x.shape[0]
    fail_t = np.full(n_rows, np.nan)
    failed = np.zeros(n_rows, dtype=bool)
    saved = [x] if save_idx[0] == 0 else []
    si = len(saved)
    hist: list = []
    for k in range(n):
        d = _like(D(float(grid[k]), x, params), x, is_torch)
        hist.insert(0, d)
        del hist[q_max:]
        q = len(hist)
        if k == 0 and method == "exp_ab3":
            # order-3 start: one extra evaluation at the step's midpoint in t gives a local error O(h^3)
            t_mid = 0.5 * (grid[0] + grid[1])
            A_mid, lam_mid = float(problem.log_factor(t_mid, problem.params)), float(problem.clock(t_mid, problem.params))
            w = exponential_weights([lam[0]], lam_mid)
            x_mid = math.exp(A_mid - A[0]) * x + math.exp(A_mid + lam_mid) * (w[0] * d)
            d_mid = D(t_mid, x_mid, params)
            d_mid = _like(d_mid, x, is_torch)
            w = exponential_weights([lam[0], lam_mid], lam[1])
            acc = w[0] * d + w[1] * d_mid
        else:
            w = exponential_weights(lam[k : k - q if k - q >= 0 else None : -1], lam[k + 1])
            acc = w[0] * hist[0]
            for j in range(1, q):
                acc = acc + w[j] * hist[j]
        x = math.exp(A[k + 1] - A[k]) * x + math.exp(A[k + 1] + lam[k + 1]) * acc
        ok = isfinite_rows(x)
        ok = ok.cpu().numpy() if is_torch else ok
        newly = ~ok & ~failed
        if newly.any():
            fail_t[newly] = grid[k + 1]
            failed |= newly
        if failed.any():
            mask = torch.as_tensor(failed, device=x.device)[:, None] if is_torch else failed[:, None]
            x = torch.where(mask, torch.full_like(x, math.nan), x) if is_torch else np.where(mask, np.nan, x)
        if si < len(save_idx) and save_idx[si] == k + 1:
            saved.append(x)
            si += 1
    return saved, fail_t

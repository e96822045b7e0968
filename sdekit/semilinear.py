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

On uneven grids a step much longer than its predecessors extrapolates the
interpolant far and its weights amplify errors in ``D``; such a step is taken
at a lower order (:func:`step_orders`: while the weights' absolute sum exceeds
twice the Adams–Bashforth value). Equal steps in ``lambda`` are never reduced,
nor are the steps of a smooth grid once it is fine enough, so the orders above
hold as the grid is refined.

For diffusion models the probability-flow ODE in data prediction is of this
form with ``A = log sigma_t``, ``lambda = log(alpha_t / sigma_t)`` and
``D = x0_hat``: ``exp_euler`` is DDIM and ``exp_ab2`` is DPM-Solver++(2M) with
the exact ``phi_2`` weight (Lu et al. use ``h phi_1 / 2`` in its place; both are
second order).

The published diffusion samplers, written for this general form (one
evaluation per step, steps ``h_k = lambda_(k+1) - lambda_k``, ``M_0 = 1 - e^(-h_k)``,
``r_k = h_(k-1) / h_k``, ``E = e^(A_(k+1) + lambda_(k+1))``):

* ``dpmpp_2m``: the standard DPM-Solver++(2M) (Lu et al. 2022, Alg. 2),
  ``x_(k+1) = e^(A_(k+1) - A_k) x_k + E M_0 ((1 + 1/(2 r_k)) D_k - D_(k-1) / (2 r_k))``
  after a first exponential Euler step; order 2.
* ``unipc_bh1``, ``unipc_bh2``: UniPC with ``p = 2`` (Zhao et al. 2023, Alg. 1–2
  and Appendix; their ``B(h) = h`` or ``e^h - 1`` in the variable ``-h_k`` is, up to
  sign, ``B = h_k`` or ``M_0`` here) in the recipe of diffusers'
  ``UniPCMultistepScheduler`` (``solver_order=2``, ``predict_x0``). The predictor UniP-2 is
  ``x_(k+1) = e^(A_(k+1) - A_k) x_k + E (M_0 D_k + B (D_k - D_(k-1)) / (2 r_k))``
  (``bh2`` is ``dpmpp_2m``); once ``D_(k+1)`` has been evaluated at the predicted point
  the corrector UniC retakes the step from ``x_k`` with it,
  ``E (M_0 D_k + B (rho_1 (D_(k+1) - D_k) + rho_2 (D_(k-1) - D_k) / (-r_k)))``,
  where ``(rho_1, rho_2)`` solve UniC's order conditions (the first step's
  corrector has ``rho_1 = 1/2``). ``B`` cancels from the order-2 corrector: it is
  the exponential Adams–Moulton step through ``D_(k-1), D_k, D_(k+1)``
  (:func:`exponential_weights`). The corrector reuses the next step's evaluation, so
  ``n`` steps cost ``n`` evaluations and the last step, whose end is never evaluated,
  is not corrected. Order 3: UniC raises UniP-``p``'s order by one (Zhao et al.
  2023, Thm. 3.3).

* ``unipc3_bh1``, ``unipc3_bh2``: UniPC with ``p = 3`` (diffusers'
  ``solver_order=3``). The order ramps up 1, 2, 3 over the first steps (diffusers'
  ``lower_order_nums``); a step of order 1 or 2 is the ``p = 1`` or ``p = 2`` step
  above. The order-3 predictor UniP-3 solves UniP's order conditions
  ``R rho = b`` for the two past differences, ``b_i = M_i / (h^i B)`` (Zhao et al.
  2023, Alg. 2 and Appendix): ``B`` cancels, and the step is exact for ``D``
  quadratic in ``lambda``, so it is the three-point exponential Adams–Bashforth step
  (``exp_ab3``'s weights); its corrector UniC-3 is likewise the four-point
  exponential Adams–Moulton step through ``D_(k-2), ..., D_(k+1)``. Once started,
  order 4 (Zhao et al. 2023, Thm. 3.3); the start, though, corrects its first step
  with UniC-1 (``rho = 1/2``), a local error O(h^3) that caps the global order at 3
  as ``h -> 0`` (declared order 3; as for ``exp_ab3_ramp``, the cheap start is the
  published one). Where that first error is damped the fourth order shows: on a
  diffusion model's PF-ODE it is weighted by ``alpha_T`` at high noise (slopes
  3.8–4.1 at 80–320 log-SNR steps), on stiff decay by ``e^(A(t) - A(t_1))``.

These five (and ``dpmpp_2m``) take one of two stabilising devices. By default
:func:`step_orders`' amplification rule lowers a step whose extrapolation
amplifies too much (the last log-SNR step of a uniform-in-``t`` grid, which
otherwise multiplies the error of a 10-step run ~30-fold); on grids where no
step is lowered (log-SNR, Karras) they are the published updates, step for
step. With ``lower_order_final=True`` they take diffusers' lower-order final
steps instead (:func:`lowered_final_orders`), and agree with diffusers'
schedulers on every grid.

References
----------
Hochbruck & Ostermann (2010), Exponential integrators, Acta Numerica 19,
209–286 (exponential Adams methods). Hairer, Nørsett & Wanner (1993), Solving
Ordinary Differential Equations I, §III.1 (Adams methods). Zhao, Bai, Rao,
Zhou & Lu (2023), UniPC, NeurIPS. Lu, Zhou, Bao, Chen, Li & Zhu (2022),
DPM-Solver++, arXiv:2211.01095. Zhang & Chen (2023), DEIS, ICLR.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from math import factorial

import numpy as np

from .problem import ODE, ParamsCarrier, _check_callable, _normalise_params

__all__ = ["SemilinearODE", "GridWeights", "amplification", "exponential_weights", "grid_weights", "lowered_final_orders",
           "MultistepOptions", "step_orders", "with_lower_order_final"]


class SemilinearODE(ParamsCarrier):
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
                "(A'(t) and lambda'(t)); give them, or use an exponential method "
                "('exp_euler', 'exp_ab2', 'exp_ab3', 'dpmpp_2m', 'unipc_bh2', ...)."
            )
        from . import ops

        A, lam, D = ops.jittable(self.log_factor), ops.jittable(self.clock), ops.jittable(self.nonlinear)
        dA, dlam = ops.jittable(self.log_factor_rate), ops.jittable(self.clock_rate)

        def rhs(t, x, p):
            return dA(t, p) * x + ops.exp(A(t, p) + lam(t, p)) * dlam(t, p) * D(t, x, p)

        return ODE(rhs, params=self.params)

    def __repr__(self):
        return f"SemilinearODE(params={self.params!r})"


# terms of the moments' series, below round-off for |h| < SERIES_BOUND; the recursion from expm1 above it
SERIES_TERMS, SERIES_BOUND = 25, 0.5


def _moments_of_steps(h: np.ndarray, q: int) -> np.ndarray:
    """The moments of every step ``h[k]`` at once: an ``(h.size, q)`` array, ``M[k, m] = int_0^h exp(tau - h) tau^m dtau``.

    Small steps (``|h| < 0.5``) sum ``h^(m+1) m! sum_j (-h)^j / (j+m+1)!`` over 25 terms, a vector operation per
    term; larger ones use ``M_0 = 1 - exp(-h)`` (``expm1``) and ``M_m = h^m - m M_(m-1)`` (integration by parts),
    which cancels for small ``h`` and is why the series is used there.
    """
    M = np.empty((h.size, q))
    small = np.abs(h) < SERIES_BOUND
    hs, hl = h[small], h[~small]
    for m in range(q):
        series = np.zeros(hs.size)
        for j in range(SERIES_TERMS):
            series = series + (-hs) ** j / float(factorial(j + m + 1))
        M[small, m] = hs ** (m + 1) * float(factorial(m)) * series
    if hl.size:
        recursion = np.empty((hl.size, q))
        recursion[:, 0] = -np.expm1(-hl)
        for m in range(1, q):
            recursion[:, m] = hl**m - m * recursion[:, m - 1]
        M[~small] = recursion
    return M


def _weights_of_steps(nodes: np.ndarray, lam_next: np.ndarray) -> np.ndarray:
    """:func:`exponential_weights` of many steps at once: ``nodes`` ``(n, q)`` (each row current point first), ``lam_next`` ``(n,)``.

    One batched solve of the transposed Vandermonde systems ``V^T w = M`` (the same LAPACK solve per step as
    :func:`exponential_weights`).
    """
    tau = nodes - nodes[:, :1]
    q = nodes.shape[1]
    M = _moments_of_steps(lam_next - nodes[:, 0], q)
    vandermonde_t = tau[:, None, :] ** np.arange(q)[:, None]  # [k, m, i] = tau[k, i]^m
    return np.linalg.solve(vandermonde_t, M[:, :, None])[:, :, 0]


def exponential_weights(lam_nodes, lam_next: float) -> np.ndarray:
    """Weights ``w_j`` with ``int_{l_0}^{l_next} exp(l - l_next) P(l) dl = sum_j w_j D_j``.

    ``P`` interpolates ``D_j`` at ``lam_nodes[j]`` (``lam_nodes[0]`` is the
    current point ``l_0``, then the earlier ones).
    """
    nodes = np.asarray(lam_nodes, dtype=np.float64)
    return _weights_of_steps(nodes[None, :], np.array([lam_next], dtype=np.float64))[0]


def amplification(lam_nodes, lam_next: float) -> float:
    """``sum_j |w_j| / |sum_j w_j|`` for the :func:`exponential_weights` ``w_j``.

    A step's error from errors ``delta_j`` in the values ``D_j`` is
    ``sum_j w_j delta_j``: at most this factor times that of an exponential
    Euler step (``w = sum_j w_j``, factor 1) with the same error.
    """
    w = exponential_weights(lam_nodes, lam_next)
    return float(np.abs(w).sum() / abs(w.sum()))


# values of D a step interpolates through, at most, per method (exp_ab3_ramp: exp_ab3 after a cheap ramp, see the
# registry; unipc*: those of the predictor, the corrector adds the predicted point)
ORDERS = {"exp_euler": 1, "exp_ab2": 2, "exp_ab3": 3, "exp_ab3_ramp": 3, "dpmpp_2m": 2, "unipc_bh1": 2, "unipc_bh2": 2,
          "unipc3_bh1": 3, "unipc3_bh2": 3}
# the exponential Adams–Bashforth methods, whose steps step_orders lowers where they amplify; the others are the
# published diffusion samplers, taken as published
ADAMS_METHODS = ("exp_euler", "exp_ab2", "exp_ab3", "exp_ab3_ramp")
UNIPC_METHODS = ("unipc_bh1", "unipc_bh2", "unipc3_bh1", "unipc3_bh2")
# sum_j |b_j| of the q-step Adams–Bashforth coefficients (1; 3/2, -1/2; 23/12, -16/12, 5/12), the limit of
# `amplification` on equal steps h -> 0 (Hairer, Nørsett & Wanner 1993, Solving ODEs I, §III.1)
AB_ABS_SUM = {1: 1.0, 2: 2.0, 3: 11.0 / 3.0}
# a step of q points is taken only if its amplification is at most MAX_AMPLIFICATION * AB_ABS_SUM[q]
MAX_AMPLIFICATION = 2.0
# diffusers' DPMSolverMultistepScheduler lowers the final steps' order (lower_order_final) only in runs of fewer steps
LOWER_ORDER_FINAL_BELOW = 15


def _weights_on_grid(lam: np.ndarray, q: int) -> np.ndarray:
    """``(lam.size - 1, q)``: row ``k`` the :func:`exponential_weights` of step ``k`` through ``lam[k], ..., lam[k - q + 1]``
    (NaN for the first ``q - 1`` steps, which have too little history)."""
    n = lam.size - 1
    w = np.full((n, q), np.nan)
    if n >= q:
        nodes = np.stack([lam[q - 1 - j : n - j] for j in range(q)], axis=1)  # row k - q + 1: lam[k], lam[k-1], ...
        w[q - 1 :] = _weights_of_steps(nodes, lam[q:])
    return w


def _step_ratios(lam: np.ndarray) -> np.ndarray:
    """``r_k = h_(k-1) / h_k`` of every step (NaN for the first), ``h_k = lam[k + 1] - lam[k]``."""
    h = np.diff(lam)
    r = np.full(h.size, np.nan)
    r[1:] = h[:-1] / h[1:]
    return r


def _residual_scale(method: str, lam: np.ndarray) -> np.ndarray:
    """UniPC's ``B`` of every step in this module's sign convention: ``h_k`` (``bh1``) or ``1 - e^(-h_k)`` (``bh2``)."""
    h = np.diff(lam)
    return h if method.endswith("_bh1") else _moments_of_steps(h, 1)[:, 0]


def _two_point_weights(method: str, lam: np.ndarray) -> np.ndarray:
    """``(lam.size - 1, 2)``: the weights of ``D_k, D_(k-1)`` in the second-order steps of ``method`` (NaN for step 0).

    ``exp_*``: the exponential Adams–Bashforth weights (exact ``phi_2``); ``dpmpp_2m``: ``M_0 (1 + 1/(2 r))``,
    ``-M_0 / (2 r)`` (Lu et al. 2022, Alg. 2); ``unipc*``: ``M_0 + B / (2 r)``, ``-B / (2 r)`` (UniP-2 with
    diffusers' ``rho = 1/2``; Zhao et al. 2023, Alg. 2).
    """
    if method in ADAMS_METHODS:
        return _weights_on_grid(lam, 2)
    m0 = _moments_of_steps(np.diff(lam), 1)[:, 0]
    extrapolation = (m0 if method == "dpmpp_2m" else _residual_scale(method, lam)) / (2.0 * _step_ratios(lam))
    return np.stack([m0 + extrapolation, -extrapolation], axis=1)


def lowered_final_orders(method: str, orders: np.ndarray) -> np.ndarray:
    """``orders`` (per step) with the final steps lowered as diffusers' ``lower_order_final=True`` lowers them.

    ``unipc*`` (``UniPCMultistepScheduler``): step ``k`` of ``n`` uses at most ``n - k`` points, so the last step
    is first order (its corrector is never applied) and, for ``unipc3_*``, the one before it at most second
    order, whatever ``n``. The others
    (``DPMSolverMultistepScheduler``): in runs of fewer than 15 steps the last step is first order and the one
    before it at most second order. A first step (the method's start) is left as it is. Lu et al. (2022), §5
    and Zhao et al. (2023) use these final steps to steady sampling with few steps.
    """
    lowered = orders.copy()
    n = lowered.size
    if method in UNIPC_METHODS:
        lowered[1:] = np.minimum(lowered[1:], (n - np.arange(n))[1:])
    elif n < LOWER_ORDER_FINAL_BELOW:
        if n >= 2:
            lowered[-1] = 1
        if n >= 3:
            lowered[-2] = min(lowered[-2], 2)
    return lowered


def _orders_and_weights(method: str, lam: np.ndarray, lower_order_final: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """:func:`step_orders` and the weights of every step as an ``(n_steps, ORDERS[method])`` array (zero-padded)."""
    q_max = ORDERS[method]
    n = lam.size - 1
    steps = np.arange(n)
    orders = np.minimum(steps + 1, q_max)
    if method == "exp_ab3" and n:
        orders[0] = 2
    weights_by_order = {q: _weights_on_grid(lam, q) for q in range(1, q_max + 1) if q != 2}
    if q_max >= 2:
        weights_by_order[2] = _two_point_weights(method, lam)
    if method in ADAMS_METHODS or not lower_order_final:
        for q in range(q_max, 1, -1):  # lower a step one point at a time, as long as its amplification is too large
            w = weights_by_order[q]
            with np.errstate(invalid="ignore", divide="ignore"):
                amplifies = np.abs(w).sum(axis=1) / np.abs(w.sum(axis=1))
            too_large = (orders == q) & (steps > 0) & (amplifies > MAX_AMPLIFICATION * AB_ABS_SUM[q])
            orders[too_large] = q - 1
    if lower_order_final:
        orders = lowered_final_orders(method, orders)
    weights = np.zeros((n, q_max))
    for q, w in weights_by_order.items():
        rows = orders == q
        weights[rows, :q] = w[rows]
    return orders.astype(np.int64), weights


def _corrector_weights(method: str, lam: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """``(n_steps - 1, ORDERS[method] + 1)``: row ``k`` the UniC weights of ``D_(k+1)`` (at the predicted point),
    ``D_k``, ``D_(k-1)``, ... retaking step ``k`` (Zhao et al. 2023, Alg. 1), of the order ``p = orders[k]`` of
    its predictor, as diffusers does; zero beyond ``p + 1`` values.

    Order 1 (``rho = 1/2``): ``B / 2``, ``M_0 - B / 2``. Order ``p >= 2``: UniC's ``rho`` solve ``R rho = b`` with
    ``R_(i,j) = r_j^(i-1)`` (``r_j = (lambda_(k-j) - lambda_k) / h``, ``r_p = 1`` for the new value) and
    ``b_i = M_i / (h^i B)``, ``i = 1..p`` (``M_i`` the moments of :func:`_moments_of_steps`; their
    ``h phi_(i+1)(h) i! / B(h)``), so the weights ``B rho / r_j`` integrate every polynomial of degree ``p`` in
    ``lambda`` exactly and do not depend on ``B``: they are the ``(p + 1)``-point :func:`exponential_weights`
    through ``lambda_(k+1), lambda_k, ..., lambda_(k-p+1)``.
    """
    n = lam.size - 1
    corrector = np.zeros((max(n - 1, 0), ORDERS[method] + 1))
    if n < 2:
        return corrector
    predictor_orders = orders[:-1]
    first = predictor_orders == 1
    scale = _residual_scale(method, lam)[:-1]
    m0 = _moments_of_steps(np.diff(lam)[:-1], 1)[:, 0]
    corrector[first, 0] = 0.5 * scale[first]
    corrector[first, 1] = m0[first] - 0.5 * scale[first]
    for p in range(2, ORDERS[method] + 1):
        rows = np.flatnonzero(predictor_orders == p)  # steps k >= p - 1 with a p-point predictor
        if rows.size:
            # nodes lambda_k, lambda_(k-1), ..., lambda_(k-p+1), then lambda_(k+1): the current point first
            nodes = np.stack([lam[rows - j] for j in range(p)] + [lam[rows + 1]], axis=1)
            w = _weights_of_steps(nodes, lam[rows + 1])
            corrector[rows, : p + 1] = w[:, [p, *range(p)]]
    return corrector


def step_orders(method: str, lam, lower_order_final: bool = False) -> np.ndarray:
    """Interpolation points used by each step of ``method`` on the clock values ``lam`` (one per grid time).

    Step ``k`` (from ``lam[k]`` to ``lam[k + 1]``) interpolates ``D`` through
    ``q_k`` points: the most the method and its history allow (its start-up ramp),
    lowered one at a time while the step's :func:`amplification` exceeds
    ``MAX_AMPLIFICATION * AB_ABS_SUM[q]``, i.e. twice what ``q``-step Adams
    weights amplify on small equal steps.

    Equal steps in the clock are never reduced (their amplification lies in
    ``(1, 3)`` for ``q = 2`` and ``(1, 7)`` for ``q = 3`` at every step size, below
    the bounds 4 and 22/3), nor are the steps of a smooth grid once it is fine
    enough (ratios of neighbouring steps tend to 1 and the amplification to
    ``AB_ABS_SUM[q]``), so the declared orders hold. What is reduced is a step
    much longer than the ones before it: on the uniform-in-``t`` grid of a
    diffusion model the last step is 3–5 times its predecessor in log-SNR, and
    third-order extrapolation across it amplifies errors ~50-fold (the reason
    DPM-Solver++ and UniPC take lower-order final steps below 15 steps: Lu et
    al. 2022; Zhao et al. 2023). ``exp_ab3``'s two-stage first step
    (``q`` reported as 2) is not reduced.

    The amplification rule applies to the exponential Adams methods
    (:data:`ADAMS_METHODS`) always, and to ``dpmpp_2m`` and ``unipc*`` (whose
    published orders are 1 on the first step, then 2; ``unipc3_*``: 1, 2, then
    3, UniP-3 with the :func:`exponential_weights`) unless
    ``lower_order_final``: then their final steps are lowered as diffusers
    does (:func:`lowered_final_orders`) and nothing else, so they are
    diffusers' updates on every grid.
    """
    return _orders_and_weights(method, np.asarray(lam, dtype=np.float64), lower_order_final)[0]


@dataclass(frozen=True)
class MultistepOptions:
    """The settings of an exponential integrator's steps (the ``tableau`` of its :class:`~sdekit.schemes.Scheme`).

    Attributes
    ----------
    lower_order_final : bool
        Lower the final steps' orders as diffusers' schedulers do (:func:`lowered_final_orders`;
        ``sdekit.solve(..., lower_order_final=True)``).
    """

    lower_order_final: bool = False


def with_lower_order_final(scheme, lower_order_final):
    """``scheme`` (an exponential integrator) with ``lower_order_final`` (``solve(..., lower_order_final=)``)."""
    if not isinstance(lower_order_final, bool):
        raise ValueError(f"`lower_order_final` must be True or False, got {lower_order_final!r}.")
    if scheme.kind != "semilinear":
        raise ValueError(f"`lower_order_final` applies to the exponential integrators of a SemilinearODE; drop it for "
                         f"{scheme.name}.")
    return dataclasses.replace(scheme, tableau=MultistepOptions(lower_order_final))


@dataclass(frozen=True)
class GridWeights:
    """Everything an exponential integrator's steps need from the clock values of its grid, computed once.

    Attributes
    ----------
    orders : ndarray of int64 (n_steps,)
        :func:`step_orders`.
    weights : ndarray (n_steps, q_max)
        Row ``k``: the weights of step ``k`` on the values ``D_k, D_(k-1), ...``, zero beyond ``orders[k]``
        (:func:`exponential_weights` for the exponential Adams methods). For ``exp_ab3`` row 0 weighs ``D_0``
        and the midpoint value (see ``midpoint_weight``).
    midpoint_weight : float or None
        ``exp_ab3``: the exponential Euler weight from the first grid point to the midpoint of the first step.
    corrector : ndarray (n_steps - 1, q_max + 1) or None
        ``unipc*``: row ``k`` the UniC weights retaking step ``k`` from the values ``D_(k+1)`` (at the predicted
        end), ``D_k``, ``D_(k-1)``, ...; the last step is not corrected.
    """

    orders: np.ndarray
    weights: np.ndarray
    midpoint_weight: float | None
    corrector: np.ndarray | None = None


@functools.lru_cache(maxsize=64)
def _grid_weights(method: str, clock_bytes: bytes, clock_mid: float | None, lower_order_final: bool) -> GridWeights:
    lam = np.frombuffer(clock_bytes, dtype=np.float64)
    orders, weights = _orders_and_weights(method, lam, lower_order_final)
    midpoint_weight = None
    if method == "exp_ab3":
        # order-3 start: an exponential Euler step to the midpoint, then the 2-point weights through it
        midpoint_weight = float(_weights_of_steps(lam[None, :1], np.array([clock_mid]))[0, 0])
        weights[0, :2] = _weights_of_steps(np.array([[lam[0], clock_mid]]), lam[1:2])[0]
        weights[0, 2:] = 0.0
    corrector = _corrector_weights(method, lam, orders) if method in UNIPC_METHODS else None
    for a in (orders, weights, corrector):
        if a is not None:
            a.flags.writeable = False
    return GridWeights(orders, weights, midpoint_weight, corrector)


def grid_weights(method: str, clock, clock_mid: float | None = None, *, lower_order_final: bool = False) -> GridWeights:
    """The :class:`GridWeights` of ``method`` on the clock values ``clock`` (one per grid time), cached.

    All steps' weights come from one batched computation (:func:`exponential_weights` per step, vectorised), and
    are kept (least recently used, 64 grids) keyed on the method, the clock values and ``lower_order_final``, so a
    second solve on the same grid reuses them. ``clock_mid``: the clock at the midpoint in ``t`` of the first step
    (``exp_ab3`` only). ``lower_order_final``: lower the final steps' orders as diffusers does
    (:func:`lowered_final_orders`).
    """
    lam = np.ascontiguousarray(clock, dtype=np.float64)
    if method == "exp_ab3" and clock_mid is None:
        raise ValueError("method 'exp_ab3' needs `clock_mid`, the clock at the midpoint of the first step.")
    if not isinstance(lower_order_final, bool):
        raise ValueError(f"`lower_order_final` must be True or False, got {lower_order_final!r}.")
    return _grid_weights(method, lam.tobytes(), None if method != "exp_ab3" else float(clock_mid), lower_order_final)


def step_grid(t0, t1, n_steps, t_grid):
    """The step times: ``n_steps`` uniform steps from ``t0`` to ``t1``, or the checked ``t_grid`` (its ends set to
    exactly ``t0`` and ``t1``)."""
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

"""Steps with an embedded error estimate, for adaptive stepping (the same array interface as :mod:`._steps`).

Each function has the signature ``step(f, g, p, tab, t, x, h, sq, dw, levy_area) -> (x_new, err)``:
the arguments of a :mod:`._steps` step plus ``sq = sqrt(|h|)``, computed by the caller, so that ``t``,
``h`` and ``sq`` may be Python floats (NumPy, one path at a time inside Numba) or torch tensors of shape
``(n, 1)`` (one step size per path). ``x_new`` is the scheme's fixed step (equal to the :mod:`._steps`
function to round-off: an adaptive step is that scheme's step) and ``err`` (x's shape) is the signed,
unnormalised error vector; the integrator takes the RMS of ``err / (atol + rtol max(|x|, |x_new|))``.
:func:`embedded_plan` packs ``tab`` for a registered scheme (its fixed ``tab`` plus one row: ``delta`` of
the Rackauckas–Nie estimate, or the weights ``b - b_err`` of an embedded Runge–Kutta pair).

The estimates and how ``RMS(err)`` scales with the step (``q + 1/2`` for a lower member of strong order ``q``;
``q + 1`` for an ODE pair), checked in ``tests/test_embedded.py``:

* :func:`euler_lamba`: ``h/2 (f(t+h, X') - f(t, X)) + (g(t+h, X') - g(t, X)) dW/2``; ``h^(p+1/2)``, p the
  Euler–Maruyama order (1/2; 1 for additive noise);
* :func:`milstein_embedded`: ``h/2 (f(t+h, X') - f(t, X)) + (1/2) L J``; ``h`` (``h^1.5`` for additive noise);
* :func:`euler_heun_embedded`: ``h/2 (f(t+h, X') - f(t, X)) + (g(t+h, Xb) - g(t, X)) dW/2``; ``h``
  (``h^1.5`` for additive noise);
* :func:`sra_embedded`: ``delta h (sum_i alpha_i f(H0_i) - f(t, X)) + sum_i beta2_i g_i I10/h``; ``h^1.5``;
* :func:`sri_embedded`, :func:`sriw1_embedded`: ``delta h (sum_i alpha_i f(H0_i) - f(t, X)) + sum_i (beta3_i
  I10/h + beta4_i I111/h) g(H1_i)``; ``h^1.5``;
* :func:`erk_embedded`: ``h sum_i (b_i - b_err_i) k_i``; ``h^(q+1)``, q = 4 for dopri5.

The noise part ``E_N`` is Rackauckas & Nie's (2017, DCDS-B 22(7), §3): the terms whose removal leaves a method of
strong order 1. Their drift part is ``delta h sum_i f(H0_i)``, of size ``h`` whatever the accuracy (a bound on the
drift's motion, not a difference of two approximations): it makes the error scale like ``h`` and stalls the steps
at loose tolerances. Here ``E_D`` is the difference between the scheme's drift quadrature and the Euler drift
``h f(t, X)`` on the same stages — an embedded lower-order drift, ``O(h^1.5)`` like ``E_N`` — with ``delta = 1``.
"""

from __future__ import annotations

import numpy as np

from ._steps import apply_noise

__all__ = [
    "DELTA", "EVALS", "embedded_plan", "estimate_order", "milstein_embedded", "erk_embedded",
    "euler_heun_embedded", "euler_lamba", "sra_embedded", "sri_embedded", "sriw1_embedded",
]

# The weight of the drift estimate E_D in E = delta E_D + E_N (the form of Rackauckas & Nie 2017, §3; their E_D is
# a sum of drift values, weighted by StochasticDiffEq.jl's default 1/6; ours is a difference of two drift
# approximations, an error estimate in its own right, weighted 1).
DELTA = 1.0


def euler_lamba(f, g, p, tab, t, x, h, sq, dw, levy_area):
    """Euler–Maruyama (Itô) with Lamba's error estimate.

    ``X' = X + f(t, X) h + g(t, X) dW`` (:func:`._steps.euler`), and the difference between it and the
    trapezoidal rule evaluated at ``X'`` (Lamba 2003, J. Comput. Appl. Math. 161(2), 417–430, §2; the
    ``LambaEM`` method of StochasticDiffEq.jl):

    ``err = h/2 (f(t + h, X') - f(t, X)) + (g(t + h, X') - g(t, X)) dW / 2``.

    Its leading terms are ``f' g h dW / 2`` and ``g' g dW^2 / 2`` (plus ``g_t h dW / 2`` for time-dependent
    noise), of the sizes of the Euler–Maruyama local error: ``RMS(err) ~ h^(p + 1/2)`` with ``p = 1/2``
    (``p = 1`` for additive noise). One extra drift and one extra diffusion evaluation (:data:`EVALS`).
    ``tab`` is unused. Any noise shape ((n, dim) or (n, dim, m) diffusion).
    """
    fx = f(t, x, p)
    gx = g(t, x, p)
    x_new = x + fx * h + apply_noise(gx, dw)
    err = (0.5 * h) * (f(t + h, x_new, p) - fx) + 0.5 * apply_noise(g(t + h, x_new, p) - gx, dw)
    return x_new, err


def euler_heun_embedded(f, g, p, tab, t, x, h, sq, dw, levy_area):
    """Euler–Heun (Stratonovich) with the embedded Euler step.

    ``X' = X + f h + (g(t, X) + g(t + h, Xb)) dW / 2``, ``Xb = X + f h + g(t, X) dW`` (:func:`._steps.euler_heun`).
    The noise part of ``err`` is ``X' - Xb = (g(t + h, Xb) - g(t, X)) dW / 2``, the difference from the
    embedded Euler step (no extra evaluation); since both share the Euler drift, the drift part is the
    difference from the trapezoidal drift, ``h/2 (f(t + h, X') - f(t, X))`` (one extra drift evaluation), as in
    Lamba's estimate (Lamba 2003, J. Comput. Appl. Math. 161(2), §2; StochasticDiffEq.jl's ``LambaEulerHeun``).
    ``RMS(err) ~ h`` for multiplicative noise (the embedded Euler step's local error, leading term
    ``g' g dW^2 / 2``), ``h^1.5`` for additive noise. Any noise shape.
    """
    fx = f(t, x, p)
    fh = fx * h
    gx = g(t, x, p)
    n0 = apply_noise(gx, dw)
    xb = x + fh + n0
    gb = g(t + h, xb, p)
    x_new = x + fh + 0.5 * (n0 + apply_noise(gb, dw))
    err = (0.5 * h) * (f(t + h, x_new, p) - fx) + 0.5 * apply_noise(gb - gx, dw)
    return x_new, err


def milstein_embedded(f, g, p, tab, t, x, h, sq, dw, levy_area):
    """Derivative-free Milstein (scalar, diagonal or additive noise, Itô or Stratonovich) with the embedded
    Euler–Maruyama estimate.

    ``X' = X + f h + g dW + (1/2) L J`` with ``J = dW^2 - h`` (Itô, ``tab[0, 0] = 1``) or ``dW^2``
    (Stratonovich), and ``L = (g(t, X + g sqrt(h)) - g(t, X - g sqrt(h))) / (2 sqrt(h)) = g g' + O(h)``, the
    central quotient (Kloeden & Platen 1992, §11.1) for both calculi: the one-sided Itô quotient of
    :func:`._steps.milstein` leaves an error ``(1/4) g'' g^2 sqrt(h) J`` of mean zero only while the steps do not
    depend on ``dW``; adaptive steps do, so the central quotient keeps strong order 1 there. ``err = h/2
    (f(t + h, X') - f(t, X)) + (1/2) L J``: the trapezoidal drift difference plus the Milstein term, the
    difference to the embedded Euler–Maruyama step (Lamba 2003's form); ``RMS(err) ~ h``. 2 drift and 3
    diffusion evaluations. Why an Itô adaptive scheme needs the ``dW^2 - h`` term explicitly: steps chosen from
    the path bias the sum of accepted ``dW^2`` (the quadratic variation) that Euler–Maruyama relies on
    (Gaines & Lyons 1997, SIAM J. Appl. Math. 57(5)); Milstein's ``J`` term corrects it to ``O(h)``.
    """
    ito = tab[0, 0]
    ah = sq * sq
    fx = f(t, x, p)
    gx = g(t, x, p)
    quotient = (g(t, x + gx * sq, p) - g(t, x - gx * sq, p)) * (0.5 / sq)
    corr = (0.5 * quotient) * (dw * dw - ito * ah)
    x_new = x + fx * h + gx * dw + corr
    err = (0.5 * h) * (f(t + h, x_new, p) - fx) + corr
    return x_new, err


def sra_embedded(f, g, p, tab, t, x, h, sq, dw, levy_area):
    """Rößler's SRA step (any SRA tableau) with the natural-embedding estimate of Rackauckas & Nie (2017).

    ``x_new`` is :func:`._steps.sra` (Rößler 2010, SIAM J. Numer. Anal. 48(3), eq. 6.1). Dropping the
    ``beta2`` terms (the ``I_(1,0)`` terms) leaves a strong order 1.0 method for additive noise, so
    (Rackauckas & Nie 2017, DCDS-B 22(7), 2731–2761, §3, eqs. for ``E_D``, ``E_N`` and ``E = delta E_D + E_N``)

    ``E_N = sum_i beta2_i g(t + c1_i h) I_(1,0)/h``,  ``E_D = h (sum_i alpha_i f(t + c0_i h, H0_i) - f(t, X))``,
    ``err = delta E_D + E_N``,

    with ``I_(1,0)/h = dW/2 + H`` and ``delta = tab[5 + 2s, 0]`` (packed by :func:`embedded_plan`). ``E_N`` is
    ``O(h^1.5)`` in RMS (``sum beta2 = 0``), and so is ``E_D``, the difference to the Euler drift on the same
    stages (see the module notes on why not Rackauckas & Nie's ``h sum_i f``). No extra evaluation. ``tab`` rows: those of
    :func:`._steps.sra`, then ``[delta, 0, ...]``. Diagonal or (n, dim, m) additive noise.
    """
    s = tab.shape[1]
    c0, c1, alpha, beta1, beta2 = tab[0], tab[1], tab[2], tab[3], tab[4]
    A0, B0 = tab[5 : 5 + s], tab[5 + s : 5 + 2 * s]
    delta = tab[5 + 2 * s, 0]
    i10 = 0.5 * dw + levy_area  # I_(1,0)/h
    F = [x] * s
    NZ = [x] * s
    out = x
    e_noise = x * 0.0
    for i in range(s):
        gi = g(t + c1[i] * h, x, p)
        NZ[i] = apply_noise(gi, i10)
        if beta1[i] != 0.0 or beta2[i] != 0.0:
            out = out + apply_noise(gi, beta1[i] * dw + beta2[i] * i10)
        if beta2[i] != 0.0:
            e_noise = e_noise + beta2[i] * NZ[i]
    f_sum = x * 0.0
    for i in range(s):
        xi = x
        for j in range(i):
            if A0[i, j] != 0.0:
                xi = xi + (A0[i, j] * h) * F[j]
            if B0[i, j] != 0.0:
                xi = xi + B0[i, j] * NZ[j]
        F[i] = f(t + c0[i] * h, xi, p)
        out = out + (alpha[i] * h) * F[i]
        f_sum = f_sum + alpha[i] * F[i]
    return out, (delta * h) * (f_sum - f(t, x, p) if c0[0] != 0.0 else f_sum - F[0]) + e_noise


def sri_embedded(f, g, p, tab, t, x, h, sq, dw, levy_area):
    """Rößler's SRI step (any SRI tableau) with the natural-embedding estimate of Rackauckas & Nie (2017).

    ``x_new`` is :func:`._steps.sri` (Rößler 2010, eq. 6.2). Dropping the ``beta3``/``beta4`` terms (those of
    ``I_(1,0)`` and ``I_(1,1,1)``) leaves a strong order 1.0 method, so (Rackauckas & Nie 2017, DCDS-B 22(7), §3)

    ``E_N = sum_i (beta3_i I_(1,0)/h + beta4_i I_(1,1,1)/h) g(t + c1_i h, H1_i)``,
    ``E_D = h (sum_i alpha_i f(t + c0_i h, H0_i) - f(t, X))``, ``err = delta E_D + E_N``,

    ``delta = tab[9 + 4s, 0]``. The order conditions ``sum beta3 = beta3.B1e = 0``,
    ``sum beta4 = beta4.B1e = 0`` make ``E_N`` ``O(h^1.5)`` in RMS, and ``E_D`` (the difference to the Euler
    drift) is too. No extra evaluation when the first stage is ``f(t, X)`` (``c0_1 = 0``, ``A0`` row 1 zero).
    Diagonal or scalar noise ((n, dim) diffusion).
    """
    s = tab.shape[1]
    c0, c1, alpha, beta1, beta2, beta3, beta4, need_f, need_g = (
        tab[0], tab[1], tab[2], tab[3], tab[4], tab[5], tab[6], tab[7], tab[8])
    A0, A1, B0, B1 = tab[9 : 9 + s], tab[9 + s : 9 + 2 * s], tab[9 + 2 * s : 9 + 3 * s], tab[9 + 3 * s : 9 + 4 * s]
    delta = tab[9 + 4 * s, 0]
    ah = sq * sq
    chi1 = (dw * dw - ah) * (0.5 / sq)  # I_(1,1)/sqrt(h)
    chi2 = 0.5 * dw + levy_area  # I_(1,0)/h
    chi3 = dw * (dw * dw - 3.0 * ah) * (1.0 / (6.0 * ah))  # I_(1,1,1)/h
    F = [x] * s
    G = [x] * s
    out = x
    f_sum = x * 0.0
    e_noise = x * 0.0
    for i in range(s):
        h0 = x
        h1 = x
        for j in range(i):
            if A0[i, j] != 0.0:
                h0 = h0 + (A0[i, j] * h) * F[j]
            if B0[i, j] != 0.0:
                h0 = h0 + B0[i, j] * G[j] * chi2
            if A1[i, j] != 0.0:
                h1 = h1 + (A1[i, j] * h) * F[j]
            if B1[i, j] != 0.0:
                h1 = h1 + (B1[i, j] * sq) * G[j]
        if need_f[i] != 0.0:
            F[i] = f(t + c0[i] * h, h0, p)
            f_sum = f_sum + alpha[i] * F[i]
            if alpha[i] != 0.0:
                out = out + (alpha[i] * h) * F[i]
        if need_g[i] != 0.0:
            G[i] = g(t + c1[i] * h, h1, p)
            high = G[i] * (beta3[i] * chi2 + beta4[i] * chi3)
            out = out + G[i] * (beta1[i] * dw + beta2[i] * chi1) + high
            e_noise = e_noise + high
    euler_drift = F[0] if need_f[0] != 0.0 and c0[0] == 0.0 else f(t, x, p)
    return out, (delta * h) * (f_sum - euler_drift) + e_noise


def sriw1_embedded(f, g, p, tab, t, x, h, sq, dw, levy_area):
    """SRIW1 written out (:func:`._steps.sriw1`) with the estimate of :func:`sri_embedded` on its tableau.

    ``E_D = (2/3) h (f(t + 3h/4, H0_2) - f(t, X))`` (SRIW1's drift ``h (f1 + 2 f2)/3`` minus Euler's ``h f1``),
    ``E_N = I_(1,0)/h (2 g1 - 4/3 g2 - 2/3 g3) + I_(1,1,1)/h (-2 g1 + 5/3 g2 - 2/3 g3 + g4)``,
    ``err = delta E_D + E_N`` (Rackauckas & Nie 2017, DCDS-B 22(7), §3), ``delta = tab[-1, 0]`` (the row after
    the SRI rows packed by :func:`embedded_plan`). 2 drift and 4 diffusion evaluations, as the fixed step.
    """
    delta = tab[tab.shape[0] - 1, 0]
    ah = sq * sq
    chi1 = (dw * dw - ah) * (0.5 / sq)
    chi2 = 0.5 * dw + levy_area
    chi3 = dw * (dw * dw - 3.0 * ah) * (1.0 / (6.0 * ah))
    fh1 = f(t, x, p) * h
    g1 = g(t, x, p)
    g2 = g(t + 0.25 * h, x + 0.25 * fh1 + (0.5 * sq) * g1, p)
    g3 = g(t + h, x + fh1 - sq * g1, p)
    g4 = g(t + 0.25 * h, x + 0.25 * fh1 + sq * (-5.0 * g1 + 3.0 * g2 + 0.5 * g3), p)
    fh2 = f(t + 0.75 * h, x + 0.75 * fh1 + 1.5 * chi2 * g1, p) * h
    e_noise = (chi2 * (2.0 * g1 - (4.0 / 3.0) * g2 - (2.0 / 3.0) * g3)
               + chi3 * (-2.0 * g1 + (5.0 / 3.0) * g2 - (2.0 / 3.0) * g3 + g4))
    x_new = (x + (fh1 + 2.0 * fh2) * (1.0 / 3.0)
             + dw * (-g1 + (4.0 / 3.0) * g2 + (2.0 / 3.0) * g3)
             + chi1 * (-g1 + (4.0 / 3.0) * g2 - (1.0 / 3.0) * g3)
             + e_noise)
    return x_new, (delta * 2.0 / 3.0) * (fh2 - fh1) + e_noise


def erk_embedded(f, g, p, tab, t, x, h, sq, dw, levy_area):
    """Explicit Runge–Kutta step (:func:`._steps.erk`) with its embedded pair's error ``h sum_i (b_i - b_err_i) k_i``.

    ``tab`` rows: ``A`` (s rows), ``b``, ``c``, ``b - b_err``. For dopri5 (Dormand & Prince 1980, J. Comput.
    Appl. Math. 6(1), Table 2) ``err`` is the difference between the 5th and the embedded 4th order solution,
    ``O(h^5)``. ``g``, ``sq``, ``dw`` and ``levy_area`` are unused; s drift evaluations.
    """
    s = tab.shape[1]
    A, b, c, e = tab[:s], tab[s], tab[s + 1], tab[s + 2]
    K = [x] * s
    out = x
    err = x * 0.0
    for i in range(s):
        xi = x
        for j in range(i):
            if A[i, j] != 0.0:
                xi = xi + (A[i, j] * h) * K[j]
        K[i] = f(t + c[i] * h, xi, p)
        if b[i] != 0.0:
            out = out + (b[i] * h) * K[i]
        if e[i] != 0.0:
            err = err + (e[i] * h) * K[i]
    return out, err


# Evaluations per call BEYOND those of the scheme's fixed step (its StepPlan counts): (n_drift, n_diffusion).
# The tableau-interpreting steps read their estimate from the stages they evaluate anyway; embedded_plan gives
# the total per call for a scheme.
EVALS = {
    euler_lamba: (1, 1),
    milstein_embedded: (1, 1),
    euler_heun_embedded: (1, 0),
    sra_embedded: (0, 0),
    sri_embedded: (0, 0),
    sriw1_embedded: (0, 0),
    erk_embedded: (0, 0),
}


def estimate_order(step, problem, scheme) -> float:
    """The power ``q`` of ``h`` in the RMS of ``step``'s error estimate on ``problem`` (the controller's
    step-size exponent is ``1/q``): ``h^(p+1/2)`` of the lower member of the pair (see the module notes)."""
    if step is erk_embedded:
        return float(scheme.order_for(problem))
    if step in (euler_lamba, euler_heun_embedded, milstein_embedded):
        return 1.5 if problem.noise == "additive" else 1.0
    return 1.5


def _with_row(tab, first):
    """``tab`` with one more row ``[first, 0, ...]`` or, for a vector ``first``, that vector."""
    row = np.zeros(tab.shape[1])
    row[:] = first
    return np.ascontiguousarray(np.vstack([tab, row[None, :]]))


def embedded_plan(scheme, problem, dim: int, delta: float = DELTA):
    """The error-estimating step of ``scheme`` on ``problem``: ``(step, tab, n_drift, n_diffusion)``.

    ``step`` is ``scheme.embedded``; ``tab`` is the fixed step's ``tab`` (``scheme.plan(problem, dim)``) with
    the row the step reads last: ``[delta, 0, ...]`` for the SRA/SRI steps (the weight of the drift estimate
    ``E_D``; default :data:`DELTA`), ``b - b_err`` for :func:`erk_embedded`, none for the Euler steps;
    ``n_drift``, ``n_diffusion`` are the evaluations per call (the fixed step's plus :data:`EVALS`).

    Raises
    ------
    ValueError
        When ``scheme`` has no embedded step, or an ``erk`` scheme's tableau no embedded solution.
    """
    step = scheme.embedded
    if step is None or step not in EVALS:
        raise ValueError(f"method {scheme.name!r} has no embedded error estimate; choose one of the methods with one "
                         "for adaptive steps (rtol/atol), or give n_steps/dt for fixed steps.")
    if not delta >= 0.0:
        raise ValueError(f"delta must be a number >= 0 (the weight of the drift error estimate), got {delta!r}.")
    plan = scheme.plan(problem, dim)
    tab = plan.tab
    if step in (sra_embedded, sri_embedded, sriw1_embedded):
        tab = _with_row(tab, 0.0)
        tab[-1, 0] = delta
    elif step is erk_embedded:
        b_err = getattr(scheme.tableau, "b_err", None)
        if b_err is None:
            raise ValueError(f"method {scheme.name!r} has no embedded Runge–Kutta solution (b_err); use dopri5 for "
                             "adaptive steps.")
        tab = _with_row(tab, np.asarray(scheme.tableau.b, dtype=np.float64) - np.asarray(b_err, dtype=np.float64))
    if step is milstein_embedded:
        if problem.matrix_noise and problem.noise != "additive":
            raise ValueError("adaptive 'milstein' takes scalar, diagonal or additive noise; for commutative matrix "
                             "noise use fixed steps (n_steps/dt).")
        return step, np.ascontiguousarray(plan.tab), 2, 3
    extra_f, extra_g = EVALS[step]
    return step, tab, plan.n_drift + extra_f, plan.n_diffusion + extra_g

"""One step of every scheme, written once against a tiny array interface.

Each step has the signature ``step(f, g, p, tab, t, x, h, dw, levy_area)``:

* ``f``, ``g``: drift and diffusion, called ``f(t, x, p)`` on a batch ``x``
  (n, dim). The backend wraps the user's functions so that ``f`` returns
  (n, dim) and ``g`` returns (n, dim) for diagonal, scalar and diagonal
  additive noise, or (n, dim, m) for matrix noise; :func:`apply_noise`
  forms ``sigma v`` accordingly;
* ``tab``: a 2-D array of coefficients packed by ``schemes.pack_tableau``;
* ``h``: the signed step (negative when integrating backwards in time);
* ``dw``: the increment ``W(t+h) - W(t)`` along the direction of integration,
  shape (n, m); ``levy_area``: the space-time Levy area of the step (zeros if unused).

Only ``+ - * /``, indexing, ``abs``/``sqrt`` of floats and
Python lists of stage values are used, so the same function runs on NumPy arrays,
inside Numba (``njit`` of this very function) and on torch tensors.

Reverse time. Integrating from ``t0`` down to ``t1 < t0`` is the forward
integration, in ``s = t0 - t``, of ``dX = -mu ds + sigma dW~`` with
``W~(s) = W(t0 - s) - W(t0)``. In that form the drift enters as ``mu * h``
with the signed ``h``, every noise scaling uses ``|h|``, ``dw`` is the
increment along the direction of integration and ``H`` is unchanged
(the bridge is the same function of time whichever way it is read).
"""

from __future__ import annotations

import math
import sys

import numpy as np
from numba.extending import overload, register_jitable


def empty_stages(s, x):
    """Uninitialised storage for ``s`` stage values shaped like ``x``."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return x.new_empty((s,) + tuple(x.shape))
    return np.empty((s,) + x.shape, dtype=x.dtype)


@overload(empty_stages, inline="always")
def _ov_empty_stages(s, x):
    return lambda s, x: np.empty((s, x.shape[0], x.shape[1]), dtype=x.dtype)


def put(F, i, v):
    """``F[i] = v`` with broadcasting (a plain loop inside Numba, which compiles fast)."""
    F[i] = v


@overload(put, inline="always")
def _ov_put(F, i, v):
    nd = getattr(v, "ndim", 0)
    if nd == 0:
        def put0(F, i, v):
            for a in range(F.shape[1]):
                for c in range(F.shape[2]):
                    F[i, a, c] = v
        return put0
    if nd == 1:
        def put1(F, i, v):
            w = v.shape[0] > 1
            for a in range(F.shape[1]):
                for c in range(F.shape[2]):
                    F[i, a, c] = v[c if w else 0]
        return put1

    def put2(F, i, v):
        r = v.shape[0] > 1
        w = v.shape[1] > 1
        for a in range(F.shape[1]):
            for c in range(F.shape[2]):
                F[i, a, c] = v[a if r else 0, c if w else 0]
    return put2


def basis(v, j):
    """Row vector of ``v``'s width with 1 at position ``j`` and 0 elsewhere."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(v, torch.Tensor):
        e = torch.zeros(v.shape[-1], dtype=v.dtype, device=v.device)
    else:
        e = np.zeros(v.shape[-1], dtype=v.dtype)
    e[j] = 1.0
    return e


@overload(basis, inline="always")
def _ov_basis(v, j):
    def impl(v, j):
        e = np.zeros(v.shape[-1])
        e[j] = 1.0
        return e
    return impl


def matvec(g, v):
    """Batched ``g @ v``: g (n, d, m), v (n, m) -> (n, d)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(g, torch.Tensor):
        return torch.einsum("...ij,...j->...i", g, v)
    return np.einsum("...ij,...j->...i", g, v)


@overload(matvec)
def _ov_matvec(g, v):
    def impl(g, v):
        n, d, m = g.shape
        out = np.zeros((n, d))
        for a in range(n):
            for i in range(d):
                acc = 0.0
                for j in range(m):
                    acc += g[a, i, j] * v[a, j]
                out[a, i] = acc
        return out

    return impl


def apply_noise(g, v):
    """``sigma v``: elementwise for (n, dim) ``g`` (v may have one column), matrix product for (n, dim, m)."""
    if g.ndim == 3:
        return matvec(g, v)
    return g * v


@overload(apply_noise, inline="always")
def _ov_apply_noise(g, v):
    if getattr(g, "ndim", 0) == 3:
        return lambda g, v: matvec(g, v)
    return lambda g, v: g * v


def euler(f, g, p, tab, t, x, h, dw, levy_area):
    """Euler–Maruyama (Itô); with ``g`` unused, explicit Euler for ODEs."""
    return x + f(t, x, p) * h + apply_noise(g(t, x, p), dw)


def euler_heun(f, g, p, tab, t, x, h, dw, levy_area):
    """Euler–Heun (Stratonovich): trapezoidal rule in the noise."""
    fh = f(t, x, p) * h
    n0 = apply_noise(g(t, x, p), dw)
    xb = x + fh + n0
    return x + fh + 0.5 * (n0 + apply_noise(g(t + h, xb, p), dw))


def milstein(f, g, p, tab, t, x, h, dw, levy_area):
    """Derivative-free Milstein for diagonal and scalar noise.

    The Milstein step ``X + mu h + sigma dW + (1/2) (L^1 sigma) J`` with
    ``L^1 sigma = sigma sigma'``, ``J = dW^2 - h`` (Itô) or ``J = dW^2``
    (Stratonovich) (Milstein 1974; Kloeden & Platen 1992, §10.3), with
    ``L^1 sigma`` replaced by a difference quotient of ``sigma`` at support
    values ``X ± sigma sqrt(h)`` (Kloeden & Platen 1992, §11.1). ``tab[0, 0]``
    is 1 for Itô and 0 for Stratonovich.

    Notes
    -----
    Itô: the one-sided quotient ``(sigma(Y) - sigma(X)) / sqrt(h)`` at
    ``Y = X + sigma sqrt(h)`` (eq. 11.1.5; 2 diffusion evaluations) equals
    ``sigma sigma' + (1/2) sigma'' sigma^2 sqrt(h) + O(h)``; its error term
    multiplies ``(dW^2 - h) / 2``, of mean zero, so the local error
    ``O(h^{3/2})`` has mean zero and the strong order stays 1. The drift is
    left out of ``Y`` (eq. 11.1.5 has ``Y = X + mu h + sigma sqrt(h)``): it
    changes the quotient by ``sigma' mu sqrt(h)``, again times a mean-zero
    factor.

    Stratonovich: ``dW^2 / 2`` has mean ``h / 2``, so the same one-sided
    quotient would leave a local bias ``(1/4) sigma'' sigma^2 h^{3/2}`` of
    non-zero mean per step, which accumulates to a global error of order
    ``h^{1/2}`` whenever ``sigma'' != 0``. The central quotient
    ``(sigma(X + sigma sqrt(h)) - sigma(X - sigma sqrt(h))) / (2 sqrt(h))
    = sigma sigma' + O(h)`` (its ``sqrt(h)`` terms cancel) makes the local
    error ``O(h^2)`` and restores order 1, at 3 diffusion evaluations.
    """
    ito = tab[0, 0]
    ah = abs(h)
    sq = math.sqrt(ah)
    gx = g(t, x, p)
    if ito != 0.0:
        corr = (g(t, x + gx * sq, p) - gx) * ((dw * dw - ah) / (2.0 * sq))
    else:
        corr = (g(t, x + gx * sq, p) - g(t, x - gx * sq, p)) * ((dw * dw) / (4.0 * sq))
    return x + f(t, x, p) * h + gx * dw + corr


def milstein_general(f, g, p, tab, t, x, h, dw, levy_area):
    """Derivative-free Milstein for commutative matrix noise (Kloeden & Platen 1992, eq. 11.1.7).

    ``X + mu h + sum_j sigma_j dW_j + (1/2) sum_{j,k} (L^j sigma_k) J_jk``
    with ``J_jk = dW_j dW_k - h delta_jk`` (Itô) or ``dW_j dW_k``
    (Stratonovich); commutativity (``L^j sigma_k = L^k sigma_j``) lets
    ``I_(j,k) + I_(k,j) = dW_j dW_k`` replace the Lévy areas. ``L^j sigma``
    is a difference quotient of ``sigma`` along ``sigma_j``, at support values
    ``X ± sigma_j sqrt(h)``. ``tab[0, 0]`` is 1 for Itô and 0 for Stratonovich.

    Notes
    -----
    Itô: one support value ``Y_j = X + sigma_j sqrt(h)`` per Brownian
    component (eq. 11.1.7; ``1 + m`` diffusion evaluations). The quotient's
    error ``(1/2) sigma_j^T (D^2 sigma) sigma_j sqrt(h)`` multiplies
    ``J_jk / 2``, of mean zero.

    Stratonovich: ``E[dW_j dW_k] = h delta_jk``, so the one-sided quotient
    would leave a local bias of order ``h^{3/2}`` and non-zero mean whenever
    ``sigma`` is nonlinear in ``x`` (global order 1/2); the central quotient
    ``(sigma(X + sigma_j sqrt(h)) - sigma(X - sigma_j sqrt(h))) / (2 sqrt(h))
    = L^j sigma + O(h)`` removes it (``1 + 2 m`` diffusion evaluations).
    """
    ito = tab[0, 0]
    ah = abs(h)
    sq = math.sqrt(ah)
    gx = g(t, x, p)
    xe = x + f(t, x, p) * h
    out = xe + apply_noise(gx, dw)
    for j in range(dw.shape[1]):
        sj = gx[..., j] * sq
        if ito != 0.0:
            v = dw * dw[:, j : j + 1] - ah * basis(dw, j)
            out = out + apply_noise(g(t, x + sj, p) - gx, v) * (0.5 / sq)
        else:
            out = out + apply_noise(g(t, x + sj, p) - g(t, x - sj, p), dw * dw[:, j : j + 1]) * (0.25 / sq)
    return out


def sra(f, g, p, tab, t, x, h, dw, levy_area):
    """Rößler SRA step for additive noise (tableau in ``tab``)."""
    s = tab.shape[1]
    c0, c1, alpha, beta1, beta2 = tab[0], tab[1], tab[2], tab[3], tab[4]
    A0, B0 = tab[5 : 5 + s], tab[5 + s : 5 + 2 * s]
    i10 = 0.5 * dw + levy_area  # I_(1,0)/h
    F = [x] * s
    NZ = [x] * s
    out = x
    for i in range(s):
        gi = g(t + c1[i] * h, x, p)
        NZ[i] = apply_noise(gi, i10)
        if beta1[i] != 0.0 or beta2[i] != 0.0:
            out = out + apply_noise(gi, beta1[i] * dw + beta2[i] * i10)
    for i in range(s):
        xi = x
        for j in range(i):
            if A0[i, j] != 0.0:
                xi = xi + (A0[i, j] * h) * F[j]
            if B0[i, j] != 0.0:
                xi = xi + B0[i, j] * NZ[j]
        F[i] = f(t + c0[i] * h, xi, p)
        out = out + (alpha[i] * h) * F[i]
    return out


def sri(f, g, p, tab, t, x, h, dw, levy_area):
    """Rößler SRI step for diagonal or scalar Itô noise (tableau in ``tab``)."""
    s = tab.shape[1]
    c0, c1, alpha, beta1, beta2, beta3, beta4, need_f, need_g = (
        tab[0], tab[1], tab[2], tab[3], tab[4], tab[5], tab[6], tab[7], tab[8])
    A0, A1, B0, B1 = tab[9 : 9 + s], tab[9 + s : 9 + 2 * s], tab[9 + 2 * s : 9 + 3 * s], tab[9 + 3 * s :]
    ah = abs(h)
    sq = math.sqrt(ah)
    chi1 = (dw * dw - ah) * (0.5 / sq)  # I_(1,1)/sqrt(h)
    chi2 = 0.5 * dw + levy_area  # I_(1,0)/h
    chi3 = dw * (dw * dw - 3.0 * ah) * (1.0 / (6.0 * ah))  # I_(1,1,1)/h
    F = [x] * s
    G = [x] * s
    out = x
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
            if alpha[i] != 0.0:
                out = out + (alpha[i] * h) * F[i]
        if need_g[i] != 0.0:
            G[i] = g(t + c1[i] * h, h1, p)
            out = out + G[i] * (beta1[i] * dw + beta2[i] * chi1 + beta3[i] * chi2 + beta4[i] * chi3)
    return out


def sriw1(f, g, p, tab, t, x, h, dw, levy_area):
    """SRIW1 written out (2 drift and 4 diffusion evaluations, one fused update).

    The same scheme as :func:`sri` with the SRIW1 tableau, with zero
    coefficients dropped; a test checks the two forms agree to round-off.
    """
    ah = abs(h)
    sq = math.sqrt(ah)
    chi1 = (dw * dw - ah) * (0.5 / sq)
    chi2 = 0.5 * dw + levy_area
    chi3 = dw * (dw * dw - 3.0 * ah) * (1.0 / (6.0 * ah))
    fh1 = f(t, x, p) * h
    g1 = g(t, x, p)
    g2 = g(t + 0.25 * h, x + 0.25 * fh1 + (0.5 * sq) * g1, p)
    g3 = g(t + h, x + fh1 - sq * g1, p)
    g4 = g(t + 0.25 * h, x + 0.25 * fh1 + sq * (-5.0 * g1 + 3.0 * g2 + 0.5 * g3), p)
    fh2 = f(t + 0.75 * h, x + 0.75 * fh1 + 1.5 * chi2 * g1, p) * h
    return (x + (fh1 + 2.0 * fh2) * (1.0 / 3.0)
            + dw * (-g1 + (4.0 / 3.0) * g2 + (2.0 / 3.0) * g3)
            + chi1 * (-g1 + (4.0 / 3.0) * g2 - (1.0 / 3.0) * g3)
            + chi2 * (2.0 * g1 - (4.0 / 3.0) * g2 - (2.0 / 3.0) * g3)
            + chi3 * (-2.0 * g1 + (5.0 / 3.0) * g2 - (2.0 / 3.0) * g3 + g4))


def erk(f, g, p, tab, t, x, h, dw, levy_area):
    """Explicit Runge–Kutta step for ODEs from a Butcher tableau ``(A, b, c)``."""
    s = tab.shape[1]
    A, b, c = tab[:s], tab[s], tab[s + 1]
    K = [x] * s
    out = x
    for i in range(s):
        xi = x
        for j in range(i):
            if A[i, j] != 0.0:
                xi = xi + (A[i, j] * h) * K[j]
        K[i] = f(t + c[i] * h, xi, p)
        if b[i] != 0.0:
            out = out + (b[i] * h) * K[i]
    return out


def skrock(f, g, p, tab, t, x, h, dw, levy_area):
    """SK-ROCK (Itô): ``s`` damped Chebyshev stages with the noise entering at the first stage.

    Abdulle, Almuslimani & Vilmart (2018), SIAM/ASA J. Uncertain. Quantif. 6(2), eq. (2.7)-(2.9):
    ``Q = sigma(X) dW``, ``K_1 = X + mu_1 h f(X + nu_1 Q) + kappa_1 Q``,
    ``K_j = mu_j h f(K_{j-1}) + nu_j K_{j-1} + kappa_j K_{j-2}`` (``j = 2..s``), ``X_{n+1} = K_s``.
    ``tab`` rows (packed by :func:`sdekit.schemes.stabilized.chebyshev_tab`): ``mu``, ``nu``, ``kappa`` (stage
    ``j`` in column ``j - 1``) and ``c`` (column ``j``: the time fraction of ``K_j``); ``s = tab.shape[1]``.
    """
    s = tab.shape[1]
    mu, nu, kappa, c = tab[0], tab[1], tab[2], tab[3]
    q = apply_noise(g(t, x, p), dw)
    prev = x
    cur = x + (mu[0] * h) * f(t, x + nu[0] * q, p) + kappa[0] * q
    for j in range(1, s):
        nxt = (mu[j] * h) * f(t + c[j] * h, cur, p) + nu[j] * cur + kappa[j] * prev
        prev = cur
        cur = nxt
    return cur


def srock(f, g, p, tab, t, x, h, dw, levy_area):
    """S-ROCK (Itô): ``s`` damped Chebyshev stages of the drift, then the noise at the last stage.

    Abdulle & Cirilli (2008), SIAM J. Sci. Comput. 30(2), the Itô method:
    ``K_1 = X + mu_1 h f(X)``, ``K_j = mu_j h f(K_{j-1}) + nu_j K_{j-1} + kappa_j K_{j-2}`` (``j = 2..s``),
    ``X_{n+1} = K_s + sigma(K_{s-1}) dW``. ``tab`` as for :func:`skrock` (``nu_1``, ``kappa_1`` unused).
    """
    s = tab.shape[1]
    mu, nu, kappa, c = tab[0], tab[1], tab[2], tab[3]
    prev = x
    cur = x + (mu[0] * h) * f(t, x, p)
    for j in range(1, s):
        nxt = (mu[j] * h) * f(t + c[j] * h, cur, p) + nu[j] * cur + kappa[j] * prev
        prev = cur
        cur = nxt
    return cur + apply_noise(g(t + c[s - 1] * h, prev, p), dw)


# --------------------------------------------------------------------------- drift-implicit steps
# The drift-implicit steps solve a small nonlinear system per path by Newton's method. Their ``tab`` row 0 is
# [calculus flag (1 Itô, 0 Stratonovich), theta, user Jacobian flag (1: call ``jac``), Newton tolerance, Newton
# iteration limit]. The user's Jacobian ``jac(t, x, p) -> (n, dim, dim)`` reaches them as a tenth argument ``jac``
# on the numba backend (its kernels take a third function; a placeholder of that type when the flag is 0, never
# called) and as the attribute ``f.jacobian`` of the drift on the NumPy and torch backends, whose step calls are
# the nine-argument calls of every other step.

FD_STEP = 1.4901161193847656e-08  # sqrt(machine epsilon of float64): forward differences lose half the digits


def drift_jacobian(f, jac, tab, t, x, p, fx):
    """The drift's Jacobian ``J[r, i, j] = d f_i / d x_j`` at the rows of ``x`` (n, dim) -> (n, dim, dim); ``fx`` is
    ``f(t, x, p)`` (the base of the differences).

    The user's Jacobian when ``tab[0, 2]`` is 1 (``jac``, or on NumPy arrays and torch tensors, where ``jac`` may
    be None, the ``jacobian`` attribute the backend gave the drift ``f``: see ``step_functions``); otherwise
    autograd for torch tensors (exact, any dtype: a forward difference in float32 would keep about 4 digits) and
    forward differences for NumPy arrays, with the step
    ``sqrt(eps) (1 + |x_j|)`` per row and component (Dennis & Schnabel 1996, §5.4).
    """
    if tab[0, 2] != 0.0:
        return (jac if jac is not None else f.jacobian)(t, x, p)
    torch = sys.modules.get("torch")
    n, d = x.shape
    if torch is not None and isinstance(x, torch.Tensor):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            fg = f(t, xg, p)
            if not fg.requires_grad:  # a drift that does not depend on x
                return x.new_zeros((n, d, d))
            rows = []
            for i in range(d):  # rows are independent (the probe checks it): d_x sum_r f_i(x_r) gives row i of every J
                (grad,) = torch.autograd.grad(fg[:, i].sum(), xg, retain_graph=i < d - 1, allow_unused=True)
                rows.append(torch.zeros_like(x) if grad is None else grad)
        return torch.stack(rows, dim=1).detach()
    J = np.empty((n, d, d), dtype=x.dtype)
    for j in range(d):
        dx = FD_STEP * (1.0 + np.abs(x[:, j]))
        xj = x.copy()
        xj[:, j] += dx
        J[:, :, j] = (f(t, xj, p) - fx) / dx[:, None]
    return J


@overload(drift_jacobian)
def _ov_drift_jacobian(f, jac, tab, t, x, p, fx):
    def impl(f, jac, tab, t, x, p, fx):
        if tab[0, 2] != 0.0:
            return jac(t, x, p)
        n, d = x.shape
        J = np.empty((n, d, d))
        for j in range(d):
            xj = x.copy()
            dx = np.empty(n)
            for r in range(n):
                dx[r] = FD_STEP * (1.0 + abs(x[r, j]))
                xj[r, j] += dx[r]
            fj = f(t, xj, p)
            for r in range(n):
                for i in range(d):
                    J[r, i, j] = (fj[r, i] - fx[r, i]) / dx[r]
        return J

    return impl


def solve_rows(A, b):
    """Solve ``A[r] y[r] = b[r]`` for every row: A (n, d, d), b (n, d) -> (n, d).

    NumPy: ``np.linalg.solve`` on the stacked matrices; torch: ``torch.linalg.solve``; inside Numba: Gaussian
    elimination with partial pivoting per row (Golub & Van Loan 2013, Algorithm 3.4.1). A singular row gives
    non-finite values in that row only (NumPy and torch would raise for the whole batch, so they are solved
    row by row then; the torch fallback is the least-squares pseudo-solution made non-finite).
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(A, torch.Tensor):
        y, info = torch.linalg.solve_ex(A, b)
        if bool((info != 0).any()):
            y = torch.where((info != 0)[:, None], torch.full_like(y, math.nan), y)
        return y
    try:
        return np.linalg.solve(A, b[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        y = np.full(b.shape, np.nan)
        for r in range(b.shape[0]):
            try:
                y[r] = np.linalg.solve(A[r], b[r])
            except np.linalg.LinAlgError:
                pass
        return y


@overload(solve_rows)
def _ov_solve_rows(A, b):
    def impl(A, b):
        n, d = b.shape
        y = np.empty((n, d))
        M = np.empty((d, d))
        v = np.empty(d)
        for r in range(n):
            for i in range(d):
                v[i] = b[r, i]
                for j in range(d):
                    M[i, j] = A[r, i, j]
            singular = False
            for k in range(d):
                piv = k
                for i in range(k + 1, d):
                    if abs(M[i, k]) > abs(M[piv, k]):
                        piv = i
                if M[piv, k] == 0.0:
                    singular = True
                    break
                if piv != k:
                    for j in range(d):
                        M[k, j], M[piv, j] = M[piv, j], M[k, j]
                    v[k], v[piv] = v[piv], v[k]
                for i in range(k + 1, d):
                    m = M[i, k] / M[k, k]
                    if m != 0.0:
                        for j in range(k, d):
                            M[i, j] -= m * M[k, j]
                        v[i] -= m * v[k]
            for i in range(d - 1, -1, -1):
                acc = v[i]
                for j in range(i + 1, d):
                    acc -= M[i, j] * y[r, j]
                y[r, i] = acc / M[i, i] if not singular else np.nan
        return y

    return impl


def newton_matrix(J, c):
    """``I - c J`` for every row of J (n, d, d)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(J, torch.Tensor):
        return torch.eye(J.shape[1], dtype=J.dtype, device=J.device) - c * J
    return np.eye(J.shape[1]) - c * J


@overload(newton_matrix)
def _ov_newton_matrix(J, c):
    def impl(J, c):
        n, d, _ = J.shape
        M = np.empty((n, d, d))
        for r in range(n):
            for i in range(d):
                for j in range(d):
                    M[r, i, j] = (1.0 if i == j else 0.0) - c * J[r, i, j]
        return M

    return impl


def newton_error(dx, x):
    """Per row ``max_i |dx_i| / (1 + |x_i|)`` (n,): the scaled size of a Newton correction."""
    if isinstance(dx, np.ndarray):
        return (np.abs(dx) / (1.0 + np.abs(x))).max(axis=1)
    return (dx.abs() / (1.0 + x.abs())).amax(dim=1)


@overload(newton_error)
def _ov_newton_error(dx, x):
    def impl(dx, x):
        n, d = dx.shape
        e = np.zeros(n)
        for r in range(n):
            for i in range(d):
                v = abs(dx[r, i]) / (1.0 + abs(x[r, i]))
                if not v <= e[r]:  # NaN propagates
                    e[r] = v
        return e

    return impl


def newton_done(err, tol):
    """True when every row's correction is within ``tol`` (rows already non-finite are failed paths: ignored)."""
    return not bool(((err > tol) & (err < math.inf)).any())


@overload(newton_done)
def _ov_newton_done(err, tol):
    def impl(err, tol):
        for r in range(err.shape[0]):
            if err[r] > tol and err[r] < math.inf:
                return False
        return True

    return impl


def reject_rows(x, err, tol):
    """``x`` with NaN in the rows whose last Newton correction exceeded ``tol`` (Newton did not converge)."""
    bad = ~(err <= tol)
    if isinstance(x, np.ndarray):
        return np.where(bad[:, None], np.nan, x)
    return x.masked_fill(bad[:, None], math.nan)


@overload(reject_rows)
def _ov_reject_rows(x, err, tol):
    def impl(x, err, tol):
        out = x.copy()
        for r in range(x.shape[0]):
            if not err[r] <= tol:
                for i in range(x.shape[1]):
                    out[r, i] = np.nan
        return out

    return impl


@register_jitable
def drift_implicit(f, jac, p, tab, t, x, h, explicit):
    """Solve ``y = explicit + theta h (f(t + h, y) - f(t, x))`` for ``y`` by Newton's method, per path.

    ``explicit`` is the explicit scheme's step from ``x`` (Euler–Maruyama, Euler–Heun or Milstein); the drift
    term ``f(t, x) h`` it contains is replaced by ``((1 - theta) f(t, x) + theta f(t + h, y)) h``: the
    drift-implicit theta scheme of the same noise terms (Kloeden & Platen 1992, §12.2, eq. 12.2.4;
    Higham 2000). Newton starts from the explicit step and solves ``(I - theta h J(t + h, y)) dy = -R(y)`` with
    ``R(y) = y - theta h f(t + h, y) - c``; it stops when every path's correction satisfies
    ``max_i |dy_i| / (1 + |y_i|) <= tab[0, 3]``, after at most ``tab[0, 4]`` iterations. A path still above
    the tolerance then (or whose correction is non-finite) is returned as NaN: its Newton iteration failed.
    """
    theta = tab[0, 1]
    th = theta * h
    c = explicit - th * f(t, x, p)
    y = explicit
    tol = tab[0, 3]
    err = newton_error(y - c, y)  # a placeholder of the right shape and type, replaced by the first iteration
    for _ in range(int(tab[0, 4])):
        fy = f(t + h, y, p)
        dy = solve_rows(newton_matrix(drift_jacobian(f, jac, tab, t + h, y, p, fy), th), y - th * fy - c)
        y = y - dy
        err = newton_error(dy, y)
        if newton_done(err, tol):
            break
    return reject_rows(y, err, tol)


def implicit_euler(f, g, p, tab, t, x, h, dw, levy_area, jac=None):
    """Drift-implicit theta Euler–Maruyama (Itô): ``y = x + ((1-theta) f(t,x) + theta f(t+h,y)) h + g(t,x) dW``."""
    return drift_implicit(f, jac, p, tab, t, x, h, euler(f, g, p, tab, t, x, h, dw, levy_area))


def implicit_euler_heun(f, g, p, tab, t, x, h, dw, levy_area, jac=None):
    """Drift-implicit theta Euler–Heun (Stratonovich): the noise by the trapezoidal rule of :func:`euler_heun`."""
    return drift_implicit(f, jac, p, tab, t, x, h, euler_heun(f, g, p, tab, t, x, h, dw, levy_area))


def implicit_milstein(f, g, p, tab, t, x, h, dw, levy_area, jac=None):
    """Drift-implicit theta derivative-free Milstein, diagonal and scalar noise (noise terms of :func:`milstein`)."""
    return drift_implicit(f, jac, p, tab, t, x, h, milstein(f, g, p, tab, t, x, h, dw, levy_area))


def implicit_milstein_general(f, g, p, tab, t, x, h, dw, levy_area, jac=None):
    """Drift-implicit theta derivative-free Milstein, commutative matrix noise (of :func:`milstein_general`)."""
    return drift_implicit(f, jac, p, tab, t, x, h, milstein_general(f, g, p, tab, t, x, h, dw, levy_area))

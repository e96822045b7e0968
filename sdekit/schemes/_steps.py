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
from numba.extending import overload


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

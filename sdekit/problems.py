"""Problems with exact solutions, for tests, convergence studies and benchmarks.

Each is an :class:`ExactProblem`: an SDE or ODE plus its exact solution on a
given Brownian path, so strong errors compare every scheme with the truth on
the *same* path. Formulas: Kloeden & Platen (1992), ch. 4 (Ornstein–Uhlenbeck, geometric
Brownian motion, §4.4 for the Lamperti-solvable problems) and Rößler (2010), §7 (the commuting
linear system).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.linalg import expm

from . import ops
from .brownian import BrownianPath
from .problem import ODE, SDE

__all__ = ["ExactProblem", "ornstein_uhlenbeck", "ou_matrix", "gbm", "diagonal_gbm", "commuting_linear", "lamperti", "gaussian_pf_ode",
           "get_problem", "PROBLEMS"]


@dataclass(frozen=True)
class ExactProblem:
    """A problem and its exact solution.

    ``exact(brownian, x0, t_span)`` returns the exact state at ``t_span[1]``
    for every path of ``brownian`` (shape (n_paths, dim)); for ODEs
    ``brownian`` is ignored. ``mean(t, x0)`` gives ``E X_t`` where known.
    ``needs_levy_area``: the exact solution reads the path's Lévy area (OU).
    """

    name: str
    problem: SDE | ODE
    x0: np.ndarray
    t_span: tuple[float, float]
    exact: Callable
    mean: Callable | None = None
    second_moment: Callable | None = None
    needs_levy_area: bool = False


def _linear_additive_exact(A, B, mu, ref_level):
    """Exact solution of dX = A (X - mu) dt + B dW on a path, to O(h^2) with h = T / (base * 2**ref_level).

    ``X_T = mu + e^{A T} (x0 - mu) + int_0^T e^{A (T-u)} B dW_u``. On each cell
    ``[a, a+h]`` of the fine grid, ``e^{A (T-u)} = e^{A (T-a)} (I - A (u-a) + O(h^2))``
    and ``int_a^{a+h} (u - a) dW = h (dW/2 - H)`` with the path's Lévy area ``H``, so
    the cell contributes ``e^{A (T-a)} (B dW - A B h (dW/2 - H))``. The neglected terms
    make an error of about ``h^2``, far below any scheme's at the step counts tested.
    """
    A, B, mu = np.atleast_2d(A), np.atleast_2d(B), np.atleast_1d(mu)

    def exact(brownian: BrownianPath, x0_, t_span):
        t0, t1 = t_span
        n = brownian.base_steps * 2**ref_level
        h = (t1 - t0) / n
        ta = t0 + h * np.arange(n)
        if A.shape[0] == 1:
            E = np.exp(A[0, 0] * (t1 - ta))[:, None, None]
        else:  # e^{A (T - a_k)} = e^{A h}^(n - k), by repeated products (round-off ~ n eps)
            step = expm(A * h)
            E = np.empty((n,) + A.shape)
            E[n - 1] = step
            for k in range(n - 2, -1, -1):
                E[k] = E[k + 1] @ step
        M = E @ B  # (n, d, m)
        N = E @ (A @ B) * h
        integral = np.empty((brownian.n_paths, A.shape[0]))
        chunk = max(1, (1 << 22) // (n * brownian.noise_dim))  # bounded memory: about 64 MB of increments at a time
        for lo in range(0, brownian.n_paths, chunk):
            hi = min(brownian.n_paths, lo + chunk)
            dw, levy_area = brownian.increments(n, paths=range(lo, hi))
            integral[lo:hi] = np.einsum("kdm,kpm->pd", M, dw) - np.einsum("kdm,kpm->pd", N, 0.5 * dw - levy_area)
        return mu + (np.asarray(x0_) - mu) @ expm(A * (t1 - t0)).T + integral

    return exact


def ornstein_uhlenbeck(theta=1.0, mu=0.5, sigma=0.3, x0=2.0, T=1.0, ref_level=16) -> ExactProblem:
    """dX = theta (mu - X) dt + sigma dW (additive noise; Itô = Stratonovich).

    The exact solution on a path is ``mu + (x0 - mu) e^{-theta T} + sigma
    int_0^T e^{-theta (T-u)} dW_u``, the integral evaluated on the path's grid
    of ``base_steps * 2**ref_level`` steps with the Lévy area (see
    :func:`_linear_additive_exact`).
    """
    sde = SDE(lambda t, x, p: p[0] * (p[1] - x), lambda t, x, p: p[2], noise="additive", params=(theta, mu, sigma))
    exact = _linear_additive_exact([[-theta]], [[sigma]], [mu], ref_level)

    def mean(t, x0_):
        return mu + (x0_ - mu) * np.exp(-theta * t)

    def second_moment(t, x0_):
        var = sigma**2 * (1 - np.exp(-2 * theta * t)) / (2 * theta)
        return var + mean(t, x0_) ** 2

    return ExactProblem("ou", sde, np.array([x0]), (0.0, T), exact, mean, second_moment, needs_levy_area=True)


def ou_matrix(T=1.0, ref_level=14) -> ExactProblem:
    """A 2-D Ornstein–Uhlenbeck system with coupled drift and matrix additive noise (m = 2).

    ``dX = A (X - mu) dt + B dW`` with ``A = [[-1, 0.5], [-0.5, -1.5]]``
    (a damped rotation), ``mu = (0.5, -0.2)``, ``B = [[0.3, 0.1], [0, 0.2]]``,
    ``x0 = (1, 1)``. Exact solution as for OU (:func:`_linear_additive_exact`).
    """
    A = np.array([[-1.0, 0.5], [-0.5, -1.5]])
    B = np.array([[0.3, 0.1], [0.0, 0.2]])
    mu = np.array([0.5, -0.2])
    sde = SDE(lambda t, x, p: (x - p[1]) @ p[0].T, lambda t, x, p: p[2], noise="additive", noise_dim=2,
              params=(A, mu, B))
    return ExactProblem("ou_matrix", sde, np.array([1.0, 1.0]), (0.0, T),
                        _linear_additive_exact(A, B, mu, ref_level), needs_levy_area=True)


def gbm(a=1.5, b=0.8, x0=1.0, T=1.0, calculus="ito") -> ExactProblem:
    """dX = a X dt + b X dW, scalar noise. Itô: ``x0 exp((a - b^2/2) t + b W_t)``; Stratonovich drops ``-b^2/2``."""
    sde = SDE(lambda t, x, p: p[0] * x, lambda t, x, p: p[1] * x, noise="scalar", calculus=calculus, params=(a, b))
    drift = a - 0.5 * b * b if calculus == "ito" else a

    def exact(brownian, x0_, t_span):
        t0, t1 = t_span
        return np.asarray(x0_) * np.exp(drift * (t1 - t0) + b * brownian.W(t1))

    a_ito = a if calculus == "ito" else a + 0.5 * b * b

    def mean(t, x0_):
        return x0_ * np.exp(a_ito * t)

    def second_moment(t, x0_):
        return x0_**2 * np.exp(2 * a_ito * t + b * b * t)

    return ExactProblem(f"gbm_{calculus}", sde, np.array([x0]), (0.0, T), exact, mean, second_moment)


def diagonal_gbm(a=(1.0, -0.5), b=(0.6, 0.9), x0=(1.0, 2.0), T=1.0, calculus="ito") -> ExactProblem:
    """Independent GBMs, one Brownian motion each (diagonal noise)."""
    a_, b_ = np.asarray(a, float), np.asarray(b, float)
    sde = SDE(lambda t, x, p: p[0] * x, lambda t, x, p: p[1] * x, noise="diagonal", calculus=calculus,
              params=(a_, b_))
    drift = a_ - 0.5 * b_**2 if calculus == "ito" else a_

    def exact(brownian, x0_, t_span):
        t0, t1 = t_span
        return np.asarray(x0_) * np.exp(drift * (t1 - t0) + b_ * brownian.W(t1))

    return ExactProblem(f"diagonal_gbm_{calculus}", sde, np.asarray(x0, float), (0.0, T), exact)


def commuting_linear(dim=3, m=2, T=1.0, calculus="ito") -> ExactProblem:
    """Rößler (2010) eq. 7.4: dX = A X dt + sum_k B_k X dW^k with commuting matrices.

    ``A = -1.5`` on the diagonal and 0.05 elsewhere, ``B_k = 0.2`` on the
    diagonal and 0.01 elsewhere (all are polynomials in the all-ones matrix,
    so they commute). ``X_t = exp((A - 1/2 sum B_k^2) t + sum_k B_k W^k_t) X0``
    (Stratonovich: without ``-1/2 sum B_k^2``).
    """
    A = np.full((dim, dim), 0.05) + np.eye(dim) * (-1.5 - 0.05)
    B = np.stack([np.full((dim, dim), 0.01) + np.eye(dim) * (0.2 - 0.01) for _ in range(m)])
    sde = SDE(
        lambda t, x, p: x @ p[0].T,
        lambda t, x, p: ops.transpose((x @ p[1].T).reshape((x.shape[0], m, dim)), (0, 2, 1)),
        noise="general", noise_dim=m, commutative=True, calculus=calculus, params=(A, B.reshape(m * dim, dim)),
    )
    corr = 0.5 * sum(Bk @ Bk for Bk in B) if calculus == "ito" else 0.0
    x0 = np.linspace(1.0, 0.5, dim)

    def exact(brownian, x0_, t_span):
        t0, t1 = t_span
        w = brownian.W(t1)  # (n_paths, m)
        out = np.empty((w.shape[0], dim))
        base = (A - corr) * (t1 - t0)
        for i in range(w.shape[0]):
            out[i] = expm(base + np.tensordot(w[i], B, axes=1)) @ np.asarray(x0_)
        return out

    return ExactProblem(f"linear_{calculus}", sde, x0, (0.0, T), exact)


# Lamperti-solvable problems with diffusion nonlinear in x (Kloeden & Platen 1992, §4.4). Module-level
# functions, so the Numba adapters compiled for them are reused by every problem built from them.
def _sinh_drift_ito(t, x, p):
    return (p[0] * t) * ops.sqrt(1.0 + x * x) + (0.5 * p[1]) * x


def _sinh_drift_stratonovich(t, x, p):
    return (p[0] * t) * ops.sqrt(1.0 + x * x)


def _sinh_diffusion(t, x, p):
    return p[2] * ops.sqrt(1.0 + x * x)


def _sinh_diffusion_matrix(t, x, p):
    return ops.sqrt(1.0 + x * x).reshape((x.shape[0], x.shape[1], 1)) * p[2]


def _arctan_drift_ito(t, x, p):
    c = ops.cos(x)
    return (p[0] * t) * c * c - p[1] * ops.sin(x) * c * c * c


def _arctan_drift_stratonovich(t, x, p):
    c = ops.cos(x)
    return (p[0] * t) * c * c


def _arctan_diffusion(t, x, p):
    c = ops.cos(x)
    return p[2] * c * c


def _arctan_diffusion_matrix(t, x, p):
    c = ops.cos(x)
    return (c * c).reshape((x.shape[0], x.shape[1], 1)) * p[2]


# kind: (F, F^-1, Itô drift, Stratonovich drift, diffusion (n, dim), diffusion (n, dim, m))
_LAMPERTI = {
    "sinh": (np.arcsinh, np.sinh, _sinh_drift_ito, _sinh_drift_stratonovich, _sinh_diffusion, _sinh_diffusion_matrix),
    "arctan": (np.tan, np.arctan, _arctan_drift_ito, _arctan_drift_stratonovich, _arctan_diffusion,
               _arctan_diffusion_matrix),
}


def lamperti(kind="sinh", noise="scalar", calculus="ito", b=None, kappa=None, x0=None, t_span=(0.5, 1.5)) -> ExactProblem:
    """An SDE with diffusion nonlinear in ``x``, solved exactly by the Lamperti transform.

    Componentwise, in Stratonovich form,
    ``dX_i = s(X_i) (kappa_i t dt + sum_j b_ij o dW_j)`` with

    * ``kind="sinh"``: ``s(x) = sqrt(1 + x^2)``, ``X_i(t) = sinh(asinh x0_i + Y_i)``;
    * ``kind="arctan"``: ``s(x) = cos^2 x``, ``X_i(t) = arctan(tan x0_i + Y_i)``;

    where ``Y_i = kappa_i (t^2 - t0^2) / 2 + sum_j b_ij (W_j(t) - W_j(t0))``:
    ``F = int dx / s`` turns the equation into ``dF(X_i) = kappa_i t dt + sum_j b_ij dW_j``
    (Kloeden & Platen 1992, §4.4). ``s'' != 0`` in both, so the derivative-free
    Milstein support values are exercised beyond linear ``sigma``. The Itô form adds
    ``(1/2) (sum_j b_ij^2) s s'`` to the drift (``s s' = x`` for sinh,
    ``-2 sin x cos^3 x`` for arctan); both calculi have the same exact solution.

    Parameters
    ----------
    kind : {"sinh", "arctan"}
    noise : {"scalar", "diagonal", "general"}
        ``"scalar"``: one Brownian motion drives every component, ``b`` has one
        value per component; ``"diagonal"``: one each, ``b`` per component;
        ``"general"``: ``b`` is a (dim, m) matrix and the noise is commutative
        (``L^j sigma_k = b_ij b_ik s s'`` is symmetric in ``j, k``).
    calculus : {"ito", "stratonovich"}
    b, kappa, x0 : array_like, optional
        Noise coefficients, drift factors (time dependence ``kappa_i t``) and
        initial state; defaults depend on ``noise``.
    t_span : tuple of float
        Start and end time (``t0 != 0`` by default, to exercise the time dependence).
    """
    if kind not in _LAMPERTI:
        raise ValueError(f"`kind` must be one of {sorted(_LAMPERTI)}, got {kind!r}.")
    if noise not in ("scalar", "diagonal", "general"):
        raise ValueError(f"`noise` must be 'scalar', 'diagonal' or 'general', got {noise!r}.")
    if calculus not in ("ito", "stratonovich"):
        raise ValueError(f"`calculus` must be 'ito' or 'stratonovich', got {calculus!r}.")
    F, Finv, f_ito, f_strat, g_diag, g_matrix = _LAMPERTI[kind]
    defaults = {"scalar": ([0.6], [0.5], [0.4]), "diagonal": ([0.8, 0.5], [0.6, -0.9], [0.3, -0.5]),
                "general": ([[0.5, 0.3], [-0.2, 0.6]], [0.4, -0.6], [0.2, -0.4])}[noise]
    b_ = np.asarray(defaults[0] if b is None else b, float)
    x0_default = np.asarray(defaults[2] if x0 is None else x0, float).ravel()
    dim = x0_default.size
    if noise == "general":
        B = np.atleast_2d(b_)
        if B.shape[0] != dim:
            raise ValueError(f"`b` must be a (dim, m) matrix with dim = {dim} rows, got shape {B.shape}.")
    else:
        b_ = np.broadcast_to(b_.ravel(), (dim,)).copy()
        B = b_[:, None] if noise == "scalar" else np.diag(b_)
    kappa_ = np.broadcast_to(np.asarray(defaults[1] if kappa is None else kappa, float).ravel(), (dim,)).copy()
    b2 = (B * B).sum(axis=1)
    sde = SDE(f_ito if calculus == "ito" else f_strat, g_matrix if noise == "general" else g_diag, noise=noise,
              calculus=calculus, noise_dim=B.shape[1] if noise == "general" else None,
              commutative=noise == "general", params=(kappa_, b2, B if noise == "general" else b_))

    def exact(brownian, x0_, t_span_):
        t0, t1 = t_span_
        dW = brownian.W(t1) - brownian.W(t0)  # (n_paths, m)
        y = F(np.asarray(x0_, float)) + kappa_ * (0.5 * (t1 * t1 - t0 * t0)) + dW @ B.T
        return Finv(y)

    return ExactProblem(f"lamperti_{kind}_{noise}_{calculus}", sde, x0_default, tuple(float(v) for v in t_span), exact)


def gaussian_pf_ode(theta=1.0, sigma=1.0, m0=0.5, v0=0.25, T=1.0, x0=(1.2, -0.3)) -> ExactProblem:
    """Probability-flow ODE of an OU forward process with Gaussian data N(m0, v0).

    ``dx/dt = -theta x + sigma^2 (x - m_t) / (2 v_t)`` with ``m_t = m0 e^{-theta t}``,
    ``v_t = v0 e^{-2 theta t} + sigma^2 (1 - e^{-2 theta t}) / (2 theta)``; exact flow
    ``x_t = m_t + (x0 - m0) sqrt(v_t / v0)``.
    """
    def rhs(t, x, p):
        th, s2, m0_, v0_ = p
        e = np.exp(-th * t)
        m = m0_ * e
        v = v0_ * e * e + s2 * (1.0 - e * e) / (2.0 * th)
        return -th * x + 0.5 * s2 * (x - m) / v

    ode = ODE(rhs, params=(theta, sigma**2, m0, v0))

    def exact_at(t, x0_):
        m = m0 * np.exp(-theta * t)
        v = v0 * np.exp(-2 * theta * t) + sigma**2 * (1 - np.exp(-2 * theta * t)) / (2 * theta)
        return m + (np.asarray(x0_) - m0) * np.sqrt(v / v0)

    def exact(brownian, x0_, t_span):
        t0, t1 = t_span
        # Flow map from t0 to t1: invert to time 0, then push forward.
        m_a = m0 * np.exp(-theta * t0)
        v_a = v0 * np.exp(-2 * theta * t0) + sigma**2 * (1 - np.exp(-2 * theta * t0)) / (2 * theta)
        z0 = m0 + (np.asarray(x0_) - m_a) * np.sqrt(v0 / v_a)
        return exact_at(t1, z0)

    return ExactProblem("gaussian_pf_ode", ode, np.asarray(x0, float), (0.0, T), exact)


PROBLEMS = {
    "ou": ornstein_uhlenbeck,
    "ou_matrix": ou_matrix,
    "gbm": gbm,
    "gbm_stratonovich": lambda **kw: gbm(calculus="stratonovich", **kw),
    "diagonal_gbm": diagonal_gbm,
    "linear": commuting_linear,
    "linear_stratonovich": lambda **kw: commuting_linear(calculus="stratonovich", **kw),
    "lamperti_sinh_scalar": lambda **kw: lamperti("sinh", "scalar", "ito", **kw),
    "lamperti_sinh_scalar_stratonovich": lambda **kw: lamperti("sinh", "scalar", "stratonovich", **kw),
    "lamperti_arctan_diagonal": lambda **kw: lamperti("arctan", "diagonal", "ito", **kw),
    "lamperti_arctan_diagonal_stratonovich": lambda **kw: lamperti("arctan", "diagonal", "stratonovich", **kw),
    "lamperti_sinh_general": lambda **kw: lamperti("sinh", "general", "ito", **kw),
    "lamperti_sinh_general_stratonovich": lambda **kw: lamperti("sinh", "general", "stratonovich", **kw),
    "gaussian_pf_ode": gaussian_pf_ode,
}


def get_problem(name: str, **kwargs) -> ExactProblem:
    """An exact problem by name (see ``PROBLEMS``)."""
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; choose one of {sorted(PROBLEMS)}.")
    return PROBLEMS[name](**kwargs)

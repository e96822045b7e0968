"""Exact oracle for Gaussian-mixture data under any diffusion SDE.

Data ``p_0 = sum_k pi_k N(mu_k, Sigma_k)`` diffused by a :class:`DiffusionSDE`
with marginal coefficients ``(alpha_t, sigma_t)`` has the mixture marginal

    p_t = sum_k pi_k N(alpha_t mu_k, C_k),   C_k = alpha_t^2 Sigma_k + sigma_t^2 I,

so the score, the Laplacian of ``log p_t`` (the exact divergence of the
probability-flow drift), Tweedie's denoised mean and the class-conditional
quantities are all available in closed form (the Gaussian marginal of a linear-Gaussian
model: Bishop 2006, eq. 2.115; Tweedie's formula: Efron 2011).

Every covariance is factored once, ``Sigma_k = U_k diag(d_k) U_k^T``; then
``C_k = U_k diag(alpha^2 d_k + sigma^2) U_k^T`` for every ``t`` and each
evaluation costs one projection ``(x - alpha mu_k) @ U_k`` per component.

Kernels
-------
The computations are plain functions written with :mod:`sdekit.ops` and array
operators, registered with :func:`sdekit.ops.jittable`, so the same code runs
on NumPy arrays, compiled by Numba and on torch tensors (with gradients, on
any device). Components are visited one at a time with a running-max
(online) log-sum-exp, so no ``(n, K)`` array is formed.

``kernel(t, x, p)`` (sdekit's problem-function convention) reads a record ``p``
made by ``sdekit.params.extend(sde.params, ...)``:

* its leading fields are the SDE's own ``params`` (``alpha_t``, ``sigma_t`` come
  from ``sde.kernels.alpha(t, p)`` / ``sde.kernels.sigma(t, p)``);
* ``p.mixture``: a :class:`Mixture` ``(log_weights (K,), means (K, D),
  eigvecs (K, D, D), eigvecs_t (K, D, D), eigvals (K, D))`` (``eigvecs_t[k] =
  eigvecs[k].T``, contiguous);
* ``p.component``: a :class:`Component`, the same arrays for one component
  ``k`` (shapes kept, ``means[k:k+1]``..., so the same helpers apply).

========================= ===================================
kernel                    fields after the SDE's
========================= ===================================
score, log_prob,          ``mixture``
laplacian, tweedie,
divergence, velocity
class_score               ``component``
classifier_grad           ``mixture``, ``component``
========================= ===================================

:meth:`GaussianMixture.kernel` returns ``(kernel, params)`` for each name.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections import namedtuple

import numba
import numpy as np
from numba.extending import overload

from sdekit import ops
from sdekit.params import extend

from .formulas import flow_velocity
from .score import Score, params_like
from .sdes import DiffusionSDE, standard_normals

__all__ = ["GaussianMixture", "Mixture", "Component"]

Mixture = namedtuple("Mixture", "log_weights means eigvecs eigvecs_t eigvals")
Mixture.__doc__ = """The arrays of a mixture the kernels read: ``Sigma_k = eigvecs[k] diag(eigvals[k]) eigvecs[k]^T``."""
Component = namedtuple("Component", "means eigvecs eigvecs_t eigvals")
Component.__doc__ = """The arrays of one component ``k``, shapes kept (``means[k:k+1]``, ...)."""

_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------- kernel helpers (jittable)
# a = alpha_t, s = sigma_t (floats); x (n, D); the mixture arrays as documented above.
def _proj(a, s, x, means, U, d, k):
    """Coordinates ``z = (x - a mu_k) U_k`` in the eigenbasis of C_k and its eigenvalues ``c``."""
    z = (x - a * means[k]) @ U[k]
    c = a * a * d[k] + s * s
    return z, c


def _log_normal(z, c):
    """``log N(x; a mu_k, C_k)`` from the projected coordinates (shape (n,))."""
    # Row sums as matrix-vector products: Numba compiles ``@`` (BLAS gemv) several
    # times faster than ``.sum(axis=1)``, and the kernels are compile-time bound.
    return -0.5 * ((z * z) @ (1.0 / c)) - 0.5 * ops.log(c).sum() - (0.5 * _LOG_2PI) * z.shape[1]


def _comp_score(z, c, Ut, k):
    """``s_k = -C_k^{-1} (x - a mu_k)`` (shape (n, D))."""
    return -(z / c) @ Ut[k]


for _f in (_proj, _log_normal, _comp_score):
    ops.jittable(_f)


def _rescale(running_max, log_term):
    """One step of the online log-sum-exp: the new running maximum and the factors that bring the sums kept
    so far (``exp(running_max - new)``) and the new term (``exp(log_term - new)``) to it."""
    new_max = ops.maximum(running_max, log_term)
    return new_max, ops.exp(running_max - new_max), ops.exp(log_term - new_max)


ops.jittable(_rescale)


def _log_prob_core(a, s, x, lw, means, U, Ut, d):
    z, c = _proj(a, s, x, means, U, d, 0)
    m = lw[0] + _log_normal(z, c)
    S = 1.0 + 0.0 * m
    for k in range(1, means.shape[0]):
        z, c = _proj(a, s, x, means, U, d, k)
        m, e0, e1 = _rescale(m, lw[k] + _log_normal(z, c))
        S = S * e0 + e1
    return m + ops.log(S)


def _score_core(a, s, x, lw, means, U, Ut, d):
    z, c = _proj(a, s, x, means, U, d, 0)
    m = lw[0] + _log_normal(z, c)
    S = 1.0 + 0.0 * m
    V = _comp_score(z, c, Ut, 0)
    for k in range(1, means.shape[0]):
        z, c = _proj(a, s, x, means, U, d, k)
        m, e0, e1 = _rescale(m, lw[k] + _log_normal(z, c))
        S = S * e0 + e1
        V = V * e0[:, None] + e1[:, None] * _comp_score(z, c, Ut, k)
    return V / S[:, None]


def _laplacian_core(a, s, x, lw, means, U, Ut, d):
    # sum_k w_k (|s_k|^2 - tr C_k^{-1}) - |s|^2
    z, c = _proj(a, s, x, means, U, d, 0)
    m = lw[0] + _log_normal(z, c)
    S = 1.0 + 0.0 * m
    V = _comp_score(z, c, Ut, 0)
    Q = (z * z) @ (1.0 / (c * c)) - (1.0 / c).sum()  # |s_k|^2 = sum_j z_j^2 / c_j^2 (U_k orthogonal)
    for k in range(1, means.shape[0]):
        z, c = _proj(a, s, x, means, U, d, k)
        m, e0, e1 = _rescale(m, lw[k] + _log_normal(z, c))
        S = S * e0 + e1
        V = V * e0[:, None] + e1[:, None] * _comp_score(z, c, Ut, k)
        Q = Q * e0 + e1 * ((z * z) @ (1.0 / (c * c)) - (1.0 / c).sum())
    V = V / S[:, None]
    return Q / S - (V * V) @ (1.0 + 0.0 * c)


def _tweedie_core(a, s, x, lw, means, U, Ut, d):
    # sum_k w_k [mu_k + a Sigma_k C_k^{-1} (x - a mu_k)], Sigma_k C_k^{-1} = U_k diag(d_k / c_k) U_k^T
    z, c = _proj(a, s, x, means, U, d, 0)
    m = lw[0] + _log_normal(z, c)
    S = 1.0 + 0.0 * m
    V = means[0] + a * ((z * (d[0] / c)) @ Ut[0])
    for k in range(1, means.shape[0]):
        z, c = _proj(a, s, x, means, U, d, k)
        m, e0, e1 = _rescale(m, lw[k] + _log_normal(z, c))
        S = S * e0 + e1
        V = V * e0[:, None] + e1[:, None] * (means[k] + a * ((z * (d[k] / c)) @ Ut[k]))
    return V / S[:, None]


def _class_score_core(a, s, x, cmeans, cU, cUt, cd):
    z, c = _proj(a, s, x, cmeans, cU, cd, 0)
    return _comp_score(z, c, cUt, 0)


def _classifier_grad_core(a, s, x, lw, means, U, Ut, d, cmeans, cU, cUt, cd):
    return _class_score_core(a, s, x, cmeans, cU, cUt, cd) - _score_core(a, s, x, lw, means, U, Ut, d)


def _log_joint(a, s, x, lw, means, U, Ut, d, k):
    """``log pi_k + log N_k(x)`` for one component (responsibilities, mode weights)."""
    z, c = _proj(a, s, x, means, U, d, k)
    return lw[k] + _log_normal(z, c)


def _jittable_cached(fn):
    """Like :func:`sdekit.ops.jittable`, but compiled code calls a disk-cached Numba version of ``fn``.

    The cores are large (a loop of projections, reductions and an online
    log-sum-exp with broadcasting): compiling a kernel takes 2-7 s, nearly all
    of it LLVM time. With the cores cached on disk, later processes compile a
    kernel in about half that (Numba still links the core into each caller and
    generates its machine code again). ``fn`` itself stays a plain Python
    function for NumPy arrays and torch tensors. (The cache is keyed on this
    file; edits to ``sdekit.ops`` do not invalidate it.)
    """
    compiled = numba.njit(cache=True)(fn)
    names = ", ".join(inspect.signature(fn).parameters)
    ns = {"compiled": compiled}
    exec(f"def typer({names}):\n    return lambda {names}: compiled({names})\n", ns)  # noqa: S102
    overload(fn)(ns["typer"])
    fn._sdekit_jittable = True
    return fn


_CORES = {
    "log_prob": _log_prob_core, "score": _score_core, "laplacian": _laplacian_core, "tweedie": _tweedie_core,
    "class_score": _class_score_core, "classifier_grad": _classifier_grad_core,
}
for _f in (*_CORES.values(), _log_joint):
    _jittable_cached(_f)

KERNEL_NAMES = ("score", "log_prob", "laplacian", "tweedie", "class_score", "classifier_grad", "divergence", "velocity")


# --------------------------------------------------------------------------- kernel factories (one per SDE family)
_KERNEL_CACHE: dict = {}


def _make_kernel(name: str, sde: DiffusionSDE):
    """``kernel(t, x, p)`` for one SDE family; cached so that Numba compiles each once per process.

    ``p`` is the record of :meth:`GaussianMixture.kernel`: the SDE's kernels read its leading fields, the
    mixture kernels its fields ``mixture`` and ``component``.
    """
    key = (name, sde.kernels)
    if key in _KERNEL_CACHE:
        return _KERNEL_CACHE[key]
    alpha, sigma, f, g2 = sde.kernels.alpha, sde.kernels.sigma, sde.kernels.f, sde.kernels.g2
    if name in ("score", "log_prob", "laplacian", "tweedie"):
        core = _CORES[name]

        def kernel(t, x, p):
            mix = p.mixture
            return core(alpha(t, p), sigma(t, p), x, mix.log_weights, mix.means, mix.eigvecs, mix.eigvecs_t, mix.eigvals)
    elif name == "class_score":
        def kernel(t, x, p):
            one = p.component
            return _class_score_core(alpha(t, p), sigma(t, p), x, one.means, one.eigvecs, one.eigvecs_t, one.eigvals)
    elif name == "classifier_grad":
        def kernel(t, x, p):
            mix, one = p.mixture, p.component
            return _classifier_grad_core(alpha(t, p), sigma(t, p), x, mix.log_weights, mix.means, mix.eigvecs,
                                         mix.eigvecs_t, mix.eigvals, one.means, one.eigvecs, one.eigvecs_t, one.eigvals)
    elif name == "divergence":
        def kernel(t, x, p):
            # div_x [f(t) x - g^2/2 grad log p_t(x)] = D f(t) - g^2/2 Laplacian(log p_t)(x)
            mix = p.mixture
            lap = _laplacian_core(alpha(t, p), sigma(t, p), x, mix.log_weights, mix.means, mix.eigvecs, mix.eigvecs_t,
                                  mix.eigvals)
            return x.shape[1] * f(t, p) - 0.5 * g2(t, p) * lap
    elif name == "velocity":
        def kernel(t, x, p):
            # flow matching's velocity alpha' x0_hat + sigma' eps_hat = the probability-flow drift f x - g^2 s / 2
            mix = p.mixture
            score = _score_core(alpha(t, p), sigma(t, p), x, mix.log_weights, mix.means, mix.eigvecs, mix.eigvecs_t,
                                mix.eigvals)
            return flow_velocity(f(t, p), g2(t, p), x, score)
    else:
        raise ValueError(f"unknown kernel {name!r}; choose one of {KERNEL_NAMES}.")
    kernel.__name__ = kernel.__qualname__ = f"gaussian_mixture_{name}"
    ops.jittable(kernel)
    _KERNEL_CACHE[key] = kernel
    return kernel


# --------------------------------------------------------------------------- helpers
def _is_tensor(v) -> bool:
    return type(v).__module__.startswith("torch") and hasattr(v, "detach")


def _finite_array(v, name):
    try:
        a = np.array(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be an array of numbers, got {type(v).__name__}.") from None
    if not np.all(np.isfinite(a)):
        raise ValueError(f"`{name}` must be finite.")
    return a


class GaussianMixture:
    """Gaussian-mixture data ``sum_k pi_k N(mu_k, Sigma_k)`` and its exact diffused quantities.

    Parameters
    ----------
    weights : array_like, shape (K,)
        Positive mixture weights (normalised to sum to one).
    means : array_like, shape (K, D)
        Component means.
    covs : array_like
        Component covariances: ``(K, D, D)`` symmetric positive definite,
        ``(K, D)`` diagonal variances, or ``(K,)`` isotropic variances.

    Attributes
    ----------
    weights, means, covs : numpy.ndarray (float64)
        Normalised weights ``(K,)``, means ``(K, D)``, full covariances ``(K, D, D)``.
    dim, n_components : int
        ``D`` and ``K``.
    eigvals, eigvecs : numpy.ndarray
        ``d (K, D)`` and ``U (K, D, D)`` with ``Sigma_k = U_k diag(d_k) U_k^T``.

    Notes
    -----
    Methods take ``x`` of shape ``(n, D)`` (a NumPy array, computed in
    float64, or a torch tensor, computed in its dtype on its device and
    returned as a tensor) and ``t``: a time in ``(0, T]`` of ``sde``, or
    ``None`` for the data distribution itself (``alpha = 1``, ``sigma = 0``,
    ``C_k = Sigma_k`` exactly).
    """

    def __init__(self, weights, means, covs):
        w = _finite_array(weights, "weights")
        if w.ndim != 1 or w.shape[0] < 1:
            raise ValueError(f"`weights` must be a 1-D array of K >= 1 positive numbers, got shape {w.shape}.")
        if np.any(w <= 0):
            raise ValueError(f"`weights` must all be positive, got {w.tolist()}.")
        K = w.shape[0]
        mu = _finite_array(means, "means")
        if mu.ndim != 2 or mu.shape[0] != K or mu.shape[1] < 1:
            raise ValueError(f"`means` must have shape (K, D) = ({K}, D) (K from `weights`), got shape {mu.shape}.")
        D = mu.shape[1]
        S = _finite_array(covs, "covs")
        if S.shape == (K,):
            if np.any(S <= 0):
                raise ValueError(f"`covs` (isotropic variances) must be positive, got {S.tolist()}.")
            S = S[:, None, None] * np.eye(D)
        elif S.shape == (K, D):
            if np.any(S <= 0):
                k = int(np.argwhere(S <= 0)[0, 0])
                raise ValueError(f"`covs` (diagonal variances) of component {k} must be positive, got {S[k].tolist()}.")
            S = S[:, :, None] * np.eye(D)
        elif S.shape != (K, D, D):
            raise ValueError(
                f"`covs` must have shape ({K}, {D}, {D}) (full), ({K}, {D}) (diagonal variances) or ({K},) "
                f"(isotropic variances) for {K} components in dimension {D}; got shape {S.shape}."
            )
        d = np.empty((K, D))
        U = np.empty((K, D, D))
        for k in range(K):
            Sk = S[k]
            scale = np.abs(Sk).max()
            if np.abs(Sk - Sk.T).max() > 1e-10 * scale:
                raise ValueError(f"`covs` of component {k} is not symmetric (max |S - S^T| = "
                                 f"{np.abs(Sk - Sk.T).max():.3g}).")
            Sk = 0.5 * (Sk + Sk.T)
            dk, Uk = np.linalg.eigh(Sk)
            # Numerically positive definite: smallest eigenvalue clearly above eigh's rounding error.
            if not dk[0] > D * np.finfo(float).eps * max(dk[-1], 0.0):
                raise ValueError(f"`covs` of component {k} is not positive definite (smallest eigenvalue "
                                 f"{dk[0]:.3g}).")
            S[k], d[k], U[k] = Sk, dk, Uk
        self.weights = w / w.sum()
        self.means = mu
        self.covs = S
        self.dim, self.n_components = D, K
        self.eigvals, self.eigvecs = d, U
        self._mixture = Mixture(np.log(self.weights), mu, U, np.ascontiguousarray(U.transpose(0, 2, 1)), d)

    # --------------------------------------------------------------- kernels
    def _component(self, k) -> Component:
        mix = self._mixture
        return Component(*(a[k:k + 1].copy() for a in (mix.means, mix.eigvecs, mix.eigvecs_t, mix.eigvals)))

    def kernel(self, name: str, sde: DiffusionSDE, k: int | None = None):
        """``(kernel, params)``: the jittable ``kernel(t, x, p)`` named ``name`` and the ``p`` it reads.

        ``name`` is one of ``"score"``, ``"log_prob"``, ``"laplacian"``,
        ``"tweedie"``, ``"divergence"``, ``"class_score"``,
        ``"classifier_grad"`` (the last two need the component ``k``). Array
        parameters are float64 NumPy; on torch pass ``diffusion.score.params_like(params, x)``.
        """
        self._check_sde(sde)
        if name not in KERNEL_NAMES:
            raise ValueError(f"`name` must be one of {KERNEL_NAMES}, got {name!r}.")
        kern = _make_kernel(name, sde)
        if name == "class_score":
            params = extend(sde.params, component=self._component(self._check_k(k)))
        elif name == "classifier_grad":
            params = extend(sde.params, mixture=self._mixture, component=self._component(self._check_k(k)))
        else:
            params = extend(sde.params, mixture=self._mixture)
        return kern, params

    def score_fn(self, sde: DiffusionSDE) -> Score:
        """The exact score ``grad log p_t`` as a :class:`diffusion.Score` (every backend)."""
        kern, params = self.kernel("score", sde)
        return Score.from_kernel(kern, sde, params, dim=self.dim)

    def velocity_fn(self, sde: DiffusionSDE) -> Score:
        """The exact velocity (:meth:`velocity`) as a :class:`diffusion.Score` with ``parameterisation="velocity"``."""
        kern, params = self.kernel("velocity", sde)
        return Score(kern, sde, parameterisation="velocity", params=params, dim=self.dim)

    def class_score_fn(self, sde: DiffusionSDE, k: int) -> Score:
        """The class-conditional score ``grad log p_t(x | y = k)`` as a :class:`diffusion.Score`."""
        kern, params = self.kernel("class_score", sde, k)
        return Score.from_kernel(kern, sde, params, dim=self.dim)

    def classifier_grad_fn(self, sde: DiffusionSDE, k: int) -> Score:
        """The exact classifier gradient ``grad log p_t(y = k | x)`` as a :class:`diffusion.Score`."""
        kern, params = self.kernel("classifier_grad", sde, k)
        return Score.from_kernel(kern, sde, params, dim=self.dim)

    def divergence_fn(self, sde: DiffusionSDE):
        """``(kernel, params)``: ``div(t, x, p)`` (shape (n,)) of the probability-flow drift
        ``f(t) x - g(t)^2/2 grad log p_t(x)``, i.e. ``D f(t) - g(t)^2/2 Laplacian(log p_t)(x)``."""
        return self.kernel("divergence", sde)

    # --------------------------------------------------------------- checks
    @staticmethod
    def _check_sde(sde):
        if not isinstance(sde, DiffusionSDE):
            raise ValueError(f"`sde` must be a diffusion SDE (VPSDE, SubVPSDE, VESDE), got {type(sde).__name__}.")

    def _check_k(self, k):
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise ValueError(f"the component index `k` must be an integer in [0, {self.n_components}), got {k!r}.")
        if not 0 <= int(k) < self.n_components:
            raise ValueError(f"the component index `k` must lie in [0, {self.n_components}), got {k}.")
        return int(k)

    def _coeffs(self, t, sde):
        """``(alpha_t, sigma_t)`` as floats; ``(1, 0)`` for ``t=None`` (the data distribution)."""
        if t is None:
            return 1.0, 0.0
        if sde is None:
            raise ValueError("`sde` is required when `t` is given (t=None means the data distribution).")
        self._check_sde(sde)
        if _is_tensor(t):
            if t.numel() != 1:
                raise ValueError(f"`t` must be a single number, got a tensor of shape {tuple(t.shape)}.")
            t = float(t)
        if not isinstance(t, numbers.Real):
            raise ValueError(f"`t` must be a number or None, got {type(t).__name__}.")
        t = sde.check_time(t)
        return float(sde.alpha(t)), float(sde.sigma(t))

    def _check_x(self, x):
        if _is_tensor(x):
            if x.ndim != 2 or x.shape[1] != self.dim:
                raise ValueError(f"`x` must have shape (n, {self.dim}) (dim = {self.dim}), got {tuple(x.shape)}.")
            if not x.is_floating_point():
                raise ValueError(f"`x` must be a floating-point tensor, got {x.dtype}.")
            return x
        try:
            a = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"`x` must be an array of shape (n, {self.dim}), got {type(x).__name__}.") from None
        if a.ndim != 2 or a.shape[1] != self.dim:
            raise ValueError(f"`x` must have shape (n, {self.dim}) (dim = {self.dim}), got shape {a.shape}.")
        return np.ascontiguousarray(a)

    def _eval(self, name, x, t, sde, k=None):
        x = self._check_x(x)
        a, s = self._coeffs(t, sde)
        core = _CORES[name]
        if name == "class_score":
            return core(a, s, x, *params_like(self._component(self._check_k(k)), x))
        mix = params_like(self._mixture, x)
        if name == "classifier_grad":
            return core(a, s, x, *mix, *params_like(self._component(self._check_k(k)), x))
        return core(a, s, x, *mix)

    # --------------------------------------------------------------- exact quantities
    def log_prob(self, x, t=None, sde=None):
        """``log p_t(x)`` for the rows of ``x`` (shape (n,))."""
        return self._eval("log_prob", x, t, sde)

    def score(self, x, t=None, sde=None):
        """``grad log p_t(x)`` (shape (n, D))."""
        return self._eval("score", x, t, sde)

    def laplacian(self, x, t=None, sde=None):
        """``Laplacian(log p_t)(x) = sum_k w_k (|s_k|^2 - tr C_k^{-1}) - |s|^2`` (shape (n,))."""
        return self._eval("laplacian", x, t, sde)

    def tweedie(self, x, t=None, sde=None):
        """Tweedie's posterior mean ``E[x_0 | x_t = x] = (x + sigma_t^2 s) / alpha_t`` (shape (n, D))."""
        return self._eval("tweedie", x, t, sde)

    def velocity(self, x, t, sde):
        """Flow matching's velocity ``E[alpha'_t x_0 + sigma'_t eps | x_t = x] = f(t) x - g(t)^2 s / 2`` (shape (n, D)).

        Under an interpolant ``x_t = alpha_t x_0 + sigma_t eps`` (:class:`diffusion.flow.FlowMatching`, or any
        diffusion SDE) the mixture stays a mixture, ``N(alpha_t mu_k, alpha_t^2 Sigma_k + sigma_t^2 I)``, and
        this is the exact minimiser of the flow-matching loss (Lipman et al. 2023, eq. 8–9).
        """
        if t is None:
            raise ValueError("`t` must be a time in (0, T]: the velocity is that of the interpolant at time t.")
        score = self._eval("score", x, t, sde)
        t = float(t)
        return flow_velocity(float(sde.f(t)), float(sde.g2(t)), self._check_x(x), score)

    def class_score(self, x, t=None, sde=None, k=None):
        """Class-conditional score ``grad log p_t(x | y = k) = -C_k^{-1}(x - alpha_t mu_k)``."""
        return self._eval("class_score", x, t, sde, k)

    def classifier_grad(self, x, t=None, sde=None, k=None):
        """Classifier gradient ``grad log p_t(y = k | x) = s_k - s``."""
        return self._eval("classifier_grad", x, t, sde, k)

    def _log_joints(self, x, t, sde):
        x = self._check_x(x)
        a, s = self._coeffs(t, sde)
        mix = params_like(self._mixture, x)
        return x, [_log_joint(a, s, x, *mix, k) for k in range(self.n_components)]

    def responsibilities(self, x, t=None, sde=None):
        """Posterior component probabilities ``p_t(y = k | x)`` (shape (n, K))."""
        x, lj = self._log_joints(x, t, sde)
        if _is_tensor(x):
            import torch

            return torch.softmax(torch.stack(lj, dim=1), dim=1)
        L = np.stack(lj, axis=1)
        L = np.exp(L - L.max(axis=1, keepdims=True))
        return L / L.sum(axis=1, keepdims=True)

    def mode_weights(self, x, t=None, sde=None):
        """Fraction of rows whose most responsible component is ``k`` (NumPy, shape (K,))."""
        x, lj = self._log_joints(x, t, sde)
        L = np.stack([v.detach().cpu().numpy() if _is_tensor(v) else v for v in lj], axis=1)
        if L.shape[0] == 0:
            raise ValueError("`x` has no rows.")
        return np.bincount(L.argmax(axis=1), minlength=self.n_components) / L.shape[0]

    def projected_cdf(self, z, direction, t=None, sde=None):
        """CDF of ``u^T X`` at ``z``, ``u = direction / |direction|`` and ``X ~ p_t`` (NumPy, ``z``'s shape).

        ``sum_k pi_k Phi((z - alpha_t u^T mu_k) / sqrt(u^T C_k u))``.
        """
        from scipy.special import ndtr

        u = _finite_array(direction, "direction")
        if u.shape != (self.dim,):
            raise ValueError(f"`direction` must have shape ({self.dim},), got {u.shape}.")
        norm = np.linalg.norm(u)
        if norm == 0:
            raise ValueError("`direction` must be non-zero.")
        u = u / norm
        a, s = self._coeffs(t, sde)
        z = np.asarray(z, dtype=np.float64)
        loc = a * (self.means @ u)
        w = np.einsum("kij,i->kj", self.eigvecs, u)  # U_k^T u
        scale = np.sqrt((w * w * (a * a * self.eigvals + s * s)).sum(axis=1))
        out = np.zeros(z.shape)
        for k in range(self.n_components):
            out = out + self.weights[k] * ndtr((z - loc[k]) / scale[k])
        return out

    def sliced_ks(self, x, t=None, sde=None, *, n_directions: int = 16, seed: int = 0) -> float:
        """One-sample sliced Kolmogorov–Smirnov distance of the rows of ``x`` to ``p_t``.

        The mean over ``n_directions`` random unit directions (keyed by ``seed``) of
        ``sup_z |F_n(z) - F(z)|`` for the projected samples against :meth:`projected_cdf`.
        For ``n`` exact samples its expectation is the Kolmogorov mean
        ``sqrt(pi/2) ln 2 / sqrt(n) = 0.8687 / sqrt(n)`` (the noise floor: the mean of Kolmogorov's
        limit law; Marsaglia, Tsang & Wang 2003), and
        the spread of each slice's statistic is ``0.2603 / sqrt(n)``.
        """
        x = x.detach().cpu().numpy() if _is_tensor(x) else np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"`x` must have shape (n, {self.dim}), got {x.shape}.")
        n = x.shape[0]
        dirs = np.random.default_rng(seed).normal(size=(int(n_directions), self.dim))
        upper, lower = np.arange(1, n + 1) / n, np.arange(n) / n
        out = []
        for u in dirs:
            u = u / np.linalg.norm(u)
            z = np.sort(x @ u)
            F = self.projected_cdf(z, u, t, sde)
            out.append(max(np.max(upper - F), np.max(F - lower)))
        return float(np.mean(out))

    # --------------------------------------------------------------- sampling and transforms
    def sample(self, n: int, *, seed: int, return_labels: bool = False):
        """``n`` exact draws ``(n, D)`` of the data (and their component labels ``(n,)`` if asked).

        Labels come from ``np.random.default_rng(seed)``, the Gaussian parts from
        ``diffusion.sdes.standard_normals(seed, 1, n, D)``.
        """
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"`n` must be a positive integer, got {n!r}.")
        n = int(n)
        z = standard_normals(seed, 1, n, self.dim)
        labels = np.random.default_rng(seed).choice(self.n_components, size=n, p=self.weights)
        x = np.empty((n, self.dim))
        for k in range(self.n_components):
            idx = labels == k
            A = self.eigvecs[k] * np.sqrt(self.eigvals[k])  # Sigma_k = A A^T
            x[idx] = self.means[k] + z[idx] @ A.T
        return (x, labels) if return_labels else x

    def diffused(self, sde: DiffusionSDE, t) -> GaussianMixture:
        """The marginal ``p_t`` as a mixture: means ``alpha_t mu_k``, covariances ``alpha_t^2 Sigma_k + sigma_t^2 I``."""
        if t is None:
            raise ValueError("`t` must be a time in (0, T] of `sde`.")
        a, s = self._coeffs(t, sde)
        covs = np.einsum("kij,kj,klj->kil", self.eigvecs, a * a * self.eigvals + s * s, self.eigvecs)
        return GaussianMixture(self.weights, a * self.means, 0.5 * (covs + covs.transpose(0, 2, 1)))

    def __repr__(self):
        return f"GaussianMixture(n_components={self.n_components}, dim={self.dim})"

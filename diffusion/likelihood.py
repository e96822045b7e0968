"""Log-likelihoods through the probability-flow ODE, and bits per dimension.

Along the probability-flow ODE ``dx/dt = v(t, x) = f x - g^2 s / 2`` the
log-density obeys ``d log p_t(x_t)/dt = -div v``, so for data ``x`` at ``eps``

    ``log p_eps(x) = log p_T(x_T) + int_eps^T div v(t, x_t) dt``

(Chen et al. 2018; Song et al. 2021). sdekit's dopri5 integrates ``x`` and the
integral together from ``eps`` to ``T``. The divergence is

* ``"exact"``: by automatic differentiation, one backward pass per dimension
  (torch backend; fine in low dimension), or an exact kernel
  ``div(t, x, params)`` such as :meth:`GaussianMixture.divergence_fn`
  (every backend);
* ``"hutchinson"``: ``E[z^T (dv/dx) z]`` with ``n_probes`` Rademacher (or
  Gaussian) probes held fixed along the path (Grathwohl et al. 2019). Each probe
  gives its own integral, hence its own estimate of ``log p``; the result is
  their mean with the standard error of that mean.

The prior term is ``log N(x_T; 0, prior_std^2 I)`` (``prior="standard"``) or any
``log p_T`` you pass (e.g. the exact one of an oracle): with the exact prior
and the exact divergence the identity holds to the ODE tolerance.
"""

from __future__ import annotations

import math
from collections import namedtuple
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import sdekit
from sdekit import ops
from sdekit.checks import require

from .reverse import probability_flow
from .score import Score, _is_tensor
from .sdes import _stream_seed

__all__ = ["log_likelihood", "Likelihood", "bits_per_dim", "dequantize"]

# the params of the augmented flow [x, log-density change] with an exact divergence kernel
FlowAndDivergence = namedtuple("FlowAndDivergence", "flow divergence")


@dataclass
class Likelihood:
    """Result of :func:`log_likelihood` (arrays of one value per data point).

    Attributes
    ----------
    log_prob : ndarray
        Estimate of ``log p_eps(x)`` in nats.
    stderr : ndarray or None
        Standard error of ``log_prob`` over the Hutchinson probes (None for
        an exact divergence, or a single probe).
    prior_log_prob, delta : ndarray
        ``log p_T(x_T)`` and ``int div v dt`` (per probe for Hutchinson: shape (n, k)).
    x_T : ndarray
        The end points of the flow.
    nfe : int
        Evaluations of the augmented right-hand side per data point.
    """

    log_prob: np.ndarray
    stderr: np.ndarray | None
    prior_log_prob: np.ndarray
    delta: np.ndarray
    x_T: np.ndarray
    nfe: int

    def bits_per_dim(self, *, bin_width: float = 1.0) -> np.ndarray:
        """``-log2 p`` per dimension, with ``dim * log(bin_width)`` added for dequantised data."""
        return bits_per_dim(self.log_prob, self.x_T.shape[1], bin_width=bin_width)


def bits_per_dim(log_prob, dim: int, *, bin_width: float = 1.0):
    """Bits per dimension of a discrete datum from the density of its dequantised value.

    With uniform dequantisation ``x = k * w + u``, ``u ~ U[0, w)^dim``, the
    discrete log-probability is at least ``log p(x) + dim log w`` (Theis et al.
    2016), so ``bpd = -(log p(x) + dim log w) / (dim log 2)``.
    """
    if not (isinstance(dim, int | np.integer) and dim >= 1):
        raise ValueError(f"`dim` must be a positive integer, got {dim!r}.")
    if not (bin_width > 0 and math.isfinite(bin_width)):
        raise ValueError(f"`bin_width` must be a positive number, got {bin_width!r}.")
    return -(np.asarray(log_prob) + dim * math.log(bin_width)) / (dim * math.log(2.0))


def dequantize(k, *, bins: int = 256, low: float = -1.0, high: float = 1.0, seed: int = 0):
    """Integers ``k`` in ``[0, bins)`` to ``low + (k + u) (high - low) / bins``, ``u ~ U[0, 1)``.

    Returns ``(x, bin_width)``; pass ``bin_width`` to :func:`bits_per_dim`.
    """
    k = np.asarray(k)
    if k.size and (np.any(k < 0) or np.any(k >= bins) or np.any(k != np.floor(k))):
        raise ValueError(f"`k` must hold integers in [0, {bins}); got values in [{k.min()}, {k.max()}].")
    w = (high - low) / bins
    u = np.random.default_rng(_stream_seed(seed, 7)).random(k.shape)
    return low + (k + u) * w, w


def log_likelihood(sde, score: Score, x, *, divergence="exact", n_probes: int = 1, probe: str = "rademacher",
                   prior="standard", eps: float | None = None, rtol: float = 1e-6, atol: float = 1e-8,
                   seed: int = 0, backend: str | None = None) -> Likelihood:
    """``log p_eps(x)`` for each row of ``x`` through the probability-flow ODE.

    Parameters
    ----------
    sde : DiffusionSDE
    score : Score
    x : array (n, dim)
        Data points (at time ``eps``).
    divergence : "exact", "hutchinson" or (kernel, params)
        ``"exact"`` differentiates the flow (torch); a pair ``(kernel, params)``
        gives the exact divergence ``kernel(t, x, params)`` (shape ``(n,)``),
        as :meth:`GaussianMixture.divergence_fn` returns.
    n_probes : int
        Hutchinson probes (at least 2 for a standard error).
    probe : {"rademacher", "gaussian"}
    prior : "standard" or callable
        ``log p_T``: the SDE's prior ``N(0, prior_std^2 I)``, or a function of
        ``x_T`` (an array) returning one value per row.
    eps : float, optional
        Start time (default ``sde.eps``).
    rtol, atol : float
        dopri5 tolerances (on the flow and the integrals).
    seed : int
        Key of the probes.
    backend : str, optional
        Default ``"numba"`` for an exact divergence kernel, else ``"torch"``.
    """
    if not isinstance(score, Score) or score.sde is not sde:
        raise ValueError("`score` must be a diffusion.Score made with this `sde`.")
    eps = sde.eps if eps is None else float(eps)
    if not 0 < eps < sde.T:
        raise ValueError(f"`eps` must lie in (0, T={sde.T}), got {eps}.")
    if prior != "standard" and not callable(prior):
        raise ValueError(f"`prior` must be 'standard' or a function log p_T(x_T), got {prior!r}.")
    xa = x.detach().cpu().numpy() if _is_tensor(x) else np.asarray(x, dtype=np.float64)
    if xa.ndim != 2:
        raise ValueError(f"`x` must have shape (n, dim), got {xa.shape}.")
    if not np.all(np.isfinite(xa)):
        raise ValueError("`x` contains NaN or infinite values.")
    n, dim = xa.shape
    if n < 1:
        raise ValueError(f"`x` holds no data points (shape {xa.shape}); give at least one row.")
    if score.dim is not None and dim != score.dim:
        raise ValueError(f"`x` has dimension {dim} (shape {xa.shape}) but the score is for dimension {score.dim}; "
                         f"give data of shape (n, {score.dim}).")
    velocity = probability_flow(score).rhs  # the probability-flow velocity kernel v(t, x, score.params)

    if isinstance(divergence, tuple):
        div_kernel, div_params = divergence
        div_kernel = ops.jittable(div_kernel)
        backend = backend or ("numba" if "numba" in score.backends else "torch")
        score.check_backend(backend)

        def rhs(t, z, p):
            y = z[:, :dim] + 0.0
            return ops.concatenate((velocity(t, y, p.flow), div_kernel(t, y, p.divergence)[:, None]), 1)

        problem = sdekit.ODE(rhs, params=FlowAndDivergence(flow=score.params, divergence=div_params))
        z0 = np.concatenate([xa, np.zeros((n, 1))], axis=1)
        k = 1
    elif divergence in ("exact", "hutchinson"):
        if backend not in (None, "torch"):
            raise ValueError(f"divergence={divergence!r} differentiates the flow with torch; use backend='torch'.")
        backend = "torch"
        torch = require("torch", extra="torch", what=f"log_likelihood(divergence={divergence!r})")
        if divergence == "exact":
            k, probes = 1, None
        else:
            if not (isinstance(n_probes, int) and n_probes >= 1):
                raise ValueError(f"`n_probes` must be a positive integer, got {n_probes!r}.")
            if probe not in ("rademacher", "gaussian"):
                raise ValueError(f"`probe` must be 'rademacher' or 'gaussian', got {probe!r}.")
            k = n_probes
            gen = np.random.default_rng(_stream_seed(seed, 5))
            if probe == "gaussian":
                probes = gen.standard_normal((n, k, dim))
            else:
                probes = gen.choice([-1.0, 1.0], size=(n, k, dim))
        rhs = _torch_rhs(velocity, dim, k, exact=probes is None)
        problem = sdekit.ODE(rhs, params=score.params)
        parts = [xa, np.zeros((n, k))] + ([] if probes is None else [probes.reshape(n, k * dim)])
        z0 = torch.as_tensor(np.concatenate(parts, axis=1))
    else:
        raise ValueError(f"`divergence` must be 'exact', 'hutchinson' or a (kernel, params) pair, got {divergence!r}.")

    score.check(z0[:, :dim], eps, what="x")  # one evaluation on 3 rows: shape, dtype, finiteness
    sol = sdekit.solve(problem, z0, (eps, sde.T), method="dopri5", rtol=rtol, atol=atol, backend=backend)
    zT = sol.x[-1]
    zT = zT.detach().cpu().numpy() if _is_tensor(zT) else np.asarray(zT)
    if sol.failed.any():
        raise FloatingPointError(f"the probability-flow integration failed: {sol.message}")
    x_T, delta = zT[:, :dim], zT[:, dim : dim + k]
    prior_lp = np.asarray(sde.prior_log_prob(x_T) if prior == "standard" else prior(x_T), dtype=np.float64)
    if prior_lp.shape != (n,):
        raise ValueError(f"`prior` must return one value per row, shape ({n},); got {prior_lp.shape}.")
    per_probe = prior_lp[:, None] + delta
    log_prob = per_probe.mean(axis=1)
    stderr = per_probe.std(axis=1, ddof=1) / math.sqrt(k) if k > 1 else None
    nfe = int(round(sol.stats.n_drift_evals / sol.stats.n_paths))
    return Likelihood(log_prob=log_prob, stderr=stderr, prior_log_prob=prior_lp,
                      delta=delta[:, 0] if k == 1 else delta, x_T=x_T, nfe=nfe)


def _torch_rhs(velocity: Callable, dim: int, k: int, *, exact: bool):
    """Right-hand side of ``[x, integrals, probes]`` with autograd divergences."""
    import torch

    def rhs(t, z, p):
        with torch.enable_grad():
            x = z[:, :dim].detach().requires_grad_(True)
            v = velocity(t, x, p)
            if exact:
                div = sum(torch.autograd.grad(v[:, i].sum(), x, retain_graph=i < dim - 1)[0][:, i]
                          for i in range(dim))[:, None]
            else:
                e = z[:, dim + k :].reshape(z.shape[0], k, dim)
                div = torch.stack([
                    (torch.autograd.grad((v * e[:, j]).sum(), x, retain_graph=j < k - 1)[0] * e[:, j]).sum(1)
                    for j in range(k)
                ], dim=1)
        out = [v.detach(), div.detach()]
        if not exact:
            out.append(torch.zeros_like(z[:, dim + k :]))
        return torch.cat(out, dim=1)

    return rhs

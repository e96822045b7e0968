"""``sample``: draw from a score model with a chosen integrator.

Methods (``diffusion.METHODS``):

=================== ======================= =====================================================
method              dynamics                integrator
=================== ======================= =====================================================
``euler_maruyama``  reverse-time SDE        sdekit ``euler`` (strong order 1 for additive noise)
``euler_heun``      reverse-time SDE        sdekit ``euler_heun``
``milstein``        reverse-time SDE        sdekit ``milstein`` (= Euler–Maruyama: additive noise)
``sra1``            reverse-time SDE        sdekit ``sra1`` (Rößler, strong order 1.5)
``sriw1``           reverse-time SDE        sdekit ``sriw1``
``euler``           probability-flow ODE    sdekit ``euler``
``heun``            probability-flow ODE    sdekit ``heun`` (order 2)
``midpoint``        probability-flow ODE    sdekit ``midpoint`` (order 2)
``rk4``             probability-flow ODE    sdekit ``rk4`` (order 4)
``dopri5``          probability-flow ODE    sdekit ``dopri5`` (adaptive; ``rtol``, ``atol``)
``ddim``            PF-ODE (``eta = 0``)    sdekit ``exp_euler``; ``eta > 0``: DDIM's stochastic chain
``dpmpp_2m``        PF-ODE, semilinear      sdekit ``exp_ab2`` (DPM-Solver++(2M) with the exact phi_2 weight)
``dpmpp_3m``        PF-ODE, semilinear      sdekit ``exp_ab3_ramp`` (third-order steps, exact weights, cheap start)
``exp_ab3``         PF-ODE, semilinear      sdekit ``exp_ab3`` (third order, midpoint start: +1 evaluation)
``ddpm``            ancestral chain         posterior ``q(x_s | x_t, x0_hat)`` (DDIM with ``eta = 1``)
``pc``              reverse SDE + Langevin  Euler–Maruyama predictor, ``corrector_steps`` Langevin steps
``ald``             annealed Langevin       ``corrector_steps`` Langevin steps at each grid time (NCSN)
=================== ======================= =====================================================

The exponential methods integrate the data-prediction form by default
(``prediction="x0"``, DPM-Solver++); ``prediction="eps"`` integrates the
noise-prediction form (DPM-Solver, DEIS), often better at very few steps.

Every method runs on any time grid (:mod:`diffusion.grids`): the samplers
that step between grid points step on ``t_k = phi(k/n)``; the general sdekit
schemes on a non-uniform grid integrate :func:`sdekit.time_change` of the
problem with uniform steps in ``u`` (a uniform grid is integrated natively,
backwards in ``t``).

Final step: with ``denoise=True`` (the default, as in Song et al.'s code)
the sample at ``eps`` is replaced by Tweedie's mean ``E[x_0 | x_eps]``, one more
score evaluation. ``nfe`` counts score evaluations per sample, exactly.

Randomness: the prior draw, the Brownian path and the chains' normals all
come from sdekit's counter-based generator, keyed by ``seed``: the same seed
gives the same samples on every backend, and the first ``m`` of ``n`` samples
are the ``m`` samples drawn alone, for every method except ``pc``, whose
corrector step size averages score and noise norms over the batch (so each
sample depends on the others).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

import sdekit

from .grids import TimeGrid
from .reverse import probability_flow, probability_flow_semilinear, reverse_sde
from .score import Score, _is_tensor, params_like
from .sdes import _stream_seed, same_process, standard_normals

__all__ = ["sample", "Samples", "METHODS", "list_methods"]

SDE_METHODS = {"euler_maruyama": "euler", "euler_heun": "euler_heun", "milstein": "milstein", "sra1": "sra1",
               "sriw1": "sriw1"}
ODE_METHODS = {"euler": "euler", "heun": "heun", "midpoint": "midpoint", "rk4": "rk4", "dopri5": "dopri5"}
EXP_METHODS = {"ddim": "exp_euler", "dpmpp_2m": "exp_ab2", "dpmpp_3m": "exp_ab3_ramp", "exp_ab3": "exp_ab3"}
CHAIN_METHODS = ("ddpm", "pc", "ald")
METHODS = tuple(SDE_METHODS) + tuple(ODE_METHODS) + tuple(EXP_METHODS) + CHAIN_METHODS
DETERMINISTIC = tuple(ODE_METHODS) + tuple(EXP_METHODS)


def list_methods() -> tuple:
    """Names accepted by ``sample(method=...)``."""
    return METHODS


@dataclass
class Samples:
    """Result of :func:`sample`.

    Attributes
    ----------
    x : array or tensor, (n, dim)
        The samples (Tweedie-denoised at ``eps`` when ``denoise=True``).
    x_T : array or tensor, (n, dim)
        The starting noise.
    times : ndarray
        The grid times visited, from ``T`` to ``eps``.
    nfe : int
        Score evaluations per sample.
    trajectory : array or tensor, optional
        ``(len(times), n, dim)`` states on the grid (``return_trajectory=True``).
    """

    x: object
    x_T: object
    times: np.ndarray
    nfe: int
    method: str
    grid: str
    seconds: float = 0.0
    trajectory: object = None
    solution: object = field(default=None, repr=False)


def _check_int(v, name, low=1):
    if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < low:
        raise ValueError(f"`{name}` must be an integer >= {low}, got {v!r}.")
    return int(v)


def sample(sde, score: Score, n: int, *, method: str = "sra1", steps: int = 100, grid: str = "uniform",
           eps: float | None = None, denoise: bool = True, seed: int = 0, dim: int | None = None,
           backend: str | None = None, device=None, dtype=None, x_T=None, eta: float = 0.0, snr: float = 0.16,
           corrector_steps: int = 1, step_size: float = 0.1, rho: float = 7.0, rtol: float = 1e-5,
           atol: float = 1e-5, prediction: str = "x0", callback: Callable | None = None,
           return_trajectory: bool = False) -> Samples:
    """Draw ``n`` samples by integrating the reverse dynamics of ``sde`` from ``T`` to ``eps``.

    An option the chosen method or grid does not read (``eta``, ``snr``,
    ``step_size``, ``corrector_steps``, ``rho``, ``rtol``, ``atol``,
    ``prediction``) must keep its default: otherwise a ``ValueError`` names it.

    Parameters
    ----------
    sde : DiffusionSDE
    score : Score
        The score model (its SDE must be ``sde``).
    n : int
        Number of samples.
    method : str
        One of :data:`METHODS` (see the module table).
    steps : int
        Grid steps (ignored by ``dopri5``). ``ald`` runs ``corrector_steps``
        Langevin steps at each of the ``steps + 1`` grid times.
    grid : {"uniform", "quadratic", "logsnr", "karras"}
        Time grid (see :mod:`diffusion.grids`); ``rho`` for ``"karras"``.
    eps : float, optional
        End time (default ``sde.eps``).
    denoise : bool
        Replace the final state by Tweedie's mean ``x0_hat(x_eps)`` (+1 NFE).
    seed : int
        Key of all randomness.
    dim : int, optional
        State dimension (default ``score.dim``, or the width of ``x_T``).
    backend : {"numba", "numpy", "torch"}, optional
        Default: ``"torch"`` for scores that only run there (torch modules),
        else ``"numba"``.
    device, dtype : optional
        Torch backend: where and in which precision (default cpu, float64).
    x_T : array or tensor, optional
        Starting states (default: a prior draw keyed by ``seed``).
    eta : float
        ``ddim`` only: 0 is the deterministic DDIM (sdekit ``exp_euler``),
        1 the ancestral DDPM chain.
    snr : float
        ``pc``: the Langevin corrector's signal-to-noise ratio ``r``. Its step is
        ``2 a_t (r |z| / |s|)^2`` per sample with ``a_t = alpha_s^2/alpha_t^2``
        over the step (Song et al. 2021, Alg. 5; 1 for VE), where the norms are
        averaged over the ``n`` samples, as in their code (a per-sample step is
        not a valid Langevin step). 0.16 is their CIFAR-10 VE value.
    corrector_steps : int
        ``pc``: Langevin steps after each predictor step; ``ald``: steps per level.
    step_size : float
        ``ald``: relative Langevin step ``delta``; the step at grid time ``t`` is
        ``delta sigma_t^2`` (Song & Ermon 2019 use ``epsilon sigma_i^2 / sigma_L^2``,
        i.e. ``delta = epsilon / sigma_L^2 = 0.2`` for their CIFAR-10 values).
    rtol, atol : float
        ``dopri5`` tolerances.
    prediction : {"x0", "eps"}
        Exponential methods: integrate in data prediction (DPM-Solver++) or noise
        prediction (DPM-Solver); ``ddim`` is the same method in both.
    callback : callable, optional
        ``callback(k, t_k, x_k)`` for each grid state in order (for the
        general sdekit schemes after the solve, from the saved states).
    return_trajectory : bool
        Keep all grid states in ``Samples.trajectory``.
    """
    t_start = time.perf_counter()
    if not isinstance(score, Score):
        raise ValueError(f"`score` must be a diffusion.Score, got {type(score).__name__}.")
    if not same_process(score.sde, sde):
        raise ValueError("`score` was made for another diffusion SDE; build the Score with this `sde`.")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}.")
    n = _check_int(n, "n")
    steps = _check_int(steps, "steps")
    if backend is None:
        backend = "numba" if "numba" in score.backends else "torch"
    if backend not in sdekit.BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {list(sdekit.BACKENDS)}.")
    score.check_backend(backend)
    if backend != "torch" and (device is not None or dtype is not None):
        raise ValueError(f"`device` and `dtype` apply to backend='torch', not {backend!r}.")
    if method == "dopri5" and grid != "uniform":
        raise ValueError("dopri5 chooses its own steps; drop `grid` (it applies to fixed-step methods).")
    if method != "ddim" and eta != 0.0:
        raise ValueError("`eta` applies to method='ddim' only.")
    # an option the chosen method or grid does not read is refused rather than silently ignored
    for name, value, default, applies, where in (
            ("snr", snr, 0.16, method == "pc", "method='pc'"),
            ("step_size", step_size, 0.1, method == "ald", "method='ald'"),
            ("corrector_steps", corrector_steps, 1, method in ("pc", "ald"), "method='pc' or 'ald'"),
            ("rho", rho, 7.0, grid == "karras", "grid='karras'"),
            ("rtol", rtol, 1e-5, method == "dopri5", "method='dopri5'"),
            ("atol", atol, 1e-5, method == "dopri5", "method='dopri5'")):
        if not applies and not (np.isscalar(value) and value == default):
            raise ValueError(f"`{name}` applies to {where} only (it would be ignored by method={method!r}, "
                             f"grid={grid!r}); drop it.")
    if prediction not in ("x0", "eps"):
        raise ValueError(f"`prediction` must be 'x0' or 'eps', got {prediction!r}.")
    if prediction != "x0" and method not in EXP_METHODS:
        raise ValueError(f"`prediction` applies to the exponential methods {list(EXP_METHODS)}, not {method!r}.")
    corrector_steps = _check_int(corrector_steps, "corrector_steps", low=0 if method == "pc" else 1)
    tg = TimeGrid(sde, grid, eps=eps, rho=rho)
    times = tg.times(steps)

    like = None
    if backend == "torch":
        import torch

        dtype = torch.float64 if dtype is None else dtype
        like = torch.empty(0, dtype=dtype, device="cpu" if device is None else device)
    if x_T is None:
        dim = score.dim if dim is None else dim
        if dim is None:
            raise ValueError("give `dim` (the state dimension) or `x_T`; this score does not know its dimension.")
        dim = _check_int(dim, "dim")
        x_T = sde.prior_sample(n, dim, seed=seed, like=like)
    else:
        x_T = _start(x_T, n, score.dim if dim is None else dim, backend, like)
        dim = x_T.shape[1]

    # the samples come back as arrays without a graph: never record one through a network
    grad_off = contextlib.nullcontext()
    if backend == "torch":
        import torch

        grad_off = torch.no_grad()
    with grad_off:
        score.check(x_T, float(times[0]), what="x_T")  # one evaluation on 3 rows: shape, dtype, finiteness
        nfe, traj, sol = 0, None, None
        if method in SDE_METHODS or method in ODE_METHODS:
            x, nfe, traj, sol, times = _solve_general(sde, score, tg, method, steps, x_T, seed, backend, rtol, atol,
                                                      return_trajectory or callback is not None)
        elif method in EXP_METHODS and not (method == "ddim" and eta > 0):
            problem = probability_flow_semilinear(score, prediction)
            save = None if (return_trajectory or callback is not None) else [times[-1]]
            sol = sdekit.solve(problem, x_T, (times[0], times[-1]), method=EXP_METHODS[method], t_grid=times,
                               save_at=save, backend=backend)
            x, nfe = sol.x[-1], int(round(sol.stats.n_drift_evals / sol.stats.n_paths))
            traj = sol.x if save is None else None
        else:
            x, nfe, traj = _chain(sde, score, method, times, x_T, seed, eta, snr, corrector_steps, step_size,
                                  return_trajectory or callback is not None)
        if isinstance(traj, list):
            traj = _stack(traj)
        if callback is not None:
            for k, tk in enumerate(times):
                callback(k, float(tk), traj[k])
        if denoise:
            x = score.x0(x, float(times[-1]))
            nfe += 1
    _check_finite(x, method)
    return Samples(x=x, x_T=x_T, times=times, nfe=int(nfe), method=method, grid=grid,
                   seconds=time.perf_counter() - t_start, trajectory=traj if return_trajectory else None,
                   solution=sol)


def _start(x_T, n, dim, backend, like):
    if _is_tensor(x_T):
        dtype, real = x_T.dtype, not (x_T.is_complex() or str(x_T.dtype) == "torch.bool")
    else:
        dtype = np.asarray(x_T).dtype
        real = dtype.kind in "fiu"
    if not real:
        raise ValueError(f"`x_T` must hold real numbers, got {dtype}.")
    if backend == "torch":
        import torch

        x = x_T if _is_tensor(x_T) else torch.as_tensor(np.asarray(x_T, dtype=np.float64))
        x = x.to(dtype=like.dtype, device=like.device)
    else:
        if _is_tensor(x_T):
            x_T = x_T.detach().cpu().numpy()
        x = np.array(x_T, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != n or (dim is not None and x.shape[1] != dim):
        raise ValueError(f"`x_T` must have shape (n, dim) = ({n}, {dim if dim is not None else 'dim'}), got {tuple(x.shape)}.")
    if not (bool(x.isfinite().all()) if _is_tensor(x) else bool(np.isfinite(x).all())):
        raise ValueError("`x_T` contains NaN or infinite values.")
    return x


def _stack(states):
    if _is_tensor(states[0]):
        import torch

        return torch.stack(states)
    return np.stack(states)


def _check_finite(x, method):
    ok = bool(x.isfinite().all()) if _is_tensor(x) else bool(np.isfinite(x).all())
    if not ok:
        raise FloatingPointError(
            f"{method} produced non-finite samples; the score may be non-finite near eps, or the steps too "
            "coarse for this method (try more steps or the 'logsnr' grid)."
        )


def _solve_general(sde, score, tg, method, steps, x_T, seed, backend, rtol, atol, keep):
    """Reverse SDE / PF-ODE with a general sdekit scheme."""
    is_sde = method in SDE_METHODS
    problem = reverse_sde(score) if is_sde else probability_flow(score)
    scheme = SDE_METHODS[method] if is_sde else ODE_METHODS[method]
    kw = {"backend": backend}
    if is_sde:
        kw["seed"] = _stream_seed(seed, 1)
    if method == "dopri5":
        sol = sdekit.solve(problem, x_T, (tg.T, tg.eps), method=scheme, rtol=rtol, atol=atol, **kw)
        nfe = int(round(sol.stats.n_drift_evals / sol.stats.n_paths))
        return sol.x[-1], nfe, sol.x if keep else None, sol, np.array([tg.T, tg.eps])
    if tg.kind == "uniform":
        sol = sdekit.solve(problem, x_T, (tg.T, tg.eps), method=scheme, n_steps=steps,
                           save_at=None if keep else [tg.eps], **kw)
    else:
        changed = sdekit.time_change(problem, tg.phi, tg.dphi, params=tg.params)
        sol = sdekit.solve(changed, x_T, (0.0, 1.0), method=scheme, n_steps=steps, save_at=None if keep else [1.0],
                           **kw)
    if sol.failed.any():
        raise FloatingPointError(f"{method}: {sol.message}")
    nfe = int(round(sol.stats.n_drift_evals / sol.stats.n_paths))
    return sol.x[-1], nfe, sol.x if keep else None, sol, tg.times(steps)


def _chain(sde, score, method, times, x, seed, eta, snr, corrector_steps, step_size, keep):
    """The samplers that step between grid points: DDIM(eta)/DDPM, predictor–corrector, annealed Langevin."""
    n, dim = x.shape
    p = params_like(score.params, x)
    kern = score.kernel
    traj = [x] if keep else None
    nfe = 0
    draws = 0

    def normals():
        nonlocal draws
        draws += 1
        return standard_normals(seed, 1 + draws, n, dim, like=x if _is_tensor(x) else None)

    def per_row_norm(v):
        return (v * v).sum(1) ** 0.5

    def langevin(x, t, a_t, n_inner, fixed_step=None):
        nonlocal nfe
        for _ in range(n_inner):
            g = kern(float(t), x, p)
            nfe += 1
            z = normals()
            if fixed_step is None:
                # Song et al.'s rule with the norms averaged over the n samples: a step that depends on each
                # sample's own score norm is not a valid Langevin step (it inflates the variance near modes)
                gn = float(per_row_norm(g).mean())
                e = 2.0 * a_t * (snr * float(per_row_norm(z).mean()) / max(gn, 1e-300)) ** 2
                x = x + e * g + math.sqrt(2.0 * e) * z
            else:
                x = x + 0.5 * fixed_step * g + math.sqrt(fixed_step) * z
        return x

    if method == "ald":
        for k, t in enumerate(times):
            x = langevin(x, t, 1.0, corrector_steps, fixed_step=step_size * float(sde.sigma(t)) ** 2)
            if keep and k > 0:
                traj.append(x)
        return x, nfe, traj
    if method == "ddpm":
        eta = 1.0
    for k in range(len(times) - 1):
        t, s = float(times[k]), float(times[k + 1])
        a_t, s_t = float(sde.alpha(t)), float(sde.sigma(t))
        a_s, s_s = float(sde.alpha(s)), float(sde.sigma(s))
        if method == "pc":
            if corrector_steps:
                x = langevin(x, t, (a_t / a_s) ** 2, corrector_steps)
            # Euler–Maruyama predictor of the reverse SDE over [s, t]
            h = t - s
            g2 = float(sde.g2(t))
            sc = kern(t, x, p)
            nfe += 1
            x = x - h * (float(sde.f(t)) * x - g2 * sc) + math.sqrt(g2 * h) * normals()
        else:
            sc = kern(t, x, p)
            nfe += 1
            x0 = (x + s_t * s_t * sc) / a_t
            e_hat = -s_t * sc
            a_ts = a_t / a_s
            var_ts = s_t * s_t - a_ts * a_ts * s_s * s_s  # variance of x_t given x_s
            c = eta * math.sqrt(max(var_ts, 0.0) * s_s * s_s) / s_t
            x = a_s * x0 + math.sqrt(max(s_s * s_s - c * c, 0.0)) * e_hat
            if c > 0:
                x = x + c * normals()
        if keep:
            traj.append(x)
    return x, nfe, traj

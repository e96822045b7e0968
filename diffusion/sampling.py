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
``dpmpp_2m``        PF-ODE, semilinear      sdekit ``dpmpp_2m`` (DPM-Solver++(2M), Lu et al. 2022b, Alg. 2; order 2)
``exp_ab2``         PF-ODE, semilinear      sdekit ``exp_ab2`` (DPM-Solver++(2M) with the exact phi_2 weight; order 2)
``unipc``           PF-ODE, semilinear      = ``unipc_bh2`` (diffusers' UniPCMultistepScheduler default)
``unipc_bh1``       PF-ODE, semilinear      sdekit ``unipc_bh1`` (UniP-2 + UniC corrector, B(h) = h; order 3)
``unipc_bh2``       PF-ODE, semilinear      sdekit ``unipc_bh2`` (UniP-2 + UniC corrector, B(h) = e^h - 1; order 3)
``unipc3``          PF-ODE, semilinear      = ``unipc3_bh2`` (diffusers' UniPCMultistepScheduler, ``solver_order=3``)
``unipc3_bh1``      PF-ODE, semilinear      sdekit ``unipc3_bh1`` (UniP-3 + UniC, B(h) = h; order 4 from high noise)
``unipc3_bh2``      PF-ODE, semilinear      sdekit ``unipc3_bh2`` (UniP-3 + UniC, B(h) = e^h - 1; order 4 from high noise)
``dpmpp_3m``        PF-ODE, semilinear      sdekit ``exp_ab3_ramp`` (third-order steps, exact weights, cheap start)
``exp_ab3``         PF-ODE, semilinear      sdekit ``exp_ab3`` (third order, midpoint start: +1 evaluation)
``ddpm``            ancestral chain         posterior ``q(x_s | x_t, x0_hat)`` (DDIM with ``eta = 1``)
``pc``              reverse SDE + Langevin  sdekit ``euler`` predictor (:class:`sdekit.Stepper`), Langevin corrector
``ald``             annealed Langevin       ``corrector_steps`` Langevin steps at each grid time (NCSN)
``euler_ancestral`` ancestral chain         Euler step to ``sigma_down`` + noise ``sigma_up`` (k-diffusion; weak order 1)
``dpmpp_2m_sde``    reverse SDE, semilinear DPM-Solver++(2M) SDE (Lu et al. 2022b; weak order 1, ``eta = 0``: order 2)
``dpmpp_3m_sde``    reverse SDE, semilinear DPM-Solver++(3M) SDE (k-diffusion; weak order 1, ``eta = 0``: order 2)
``edm``             PF-ODE + churn          Karras et al. 2022, Alg. 2: Heun (order 2; with churn weak order 2)
=================== ======================= =====================================================

The reverse-SDE methods adapt their steps per sample when given ``rtol``/``atol``
(or ``options=Adaptive(...)``): sdekit's adaptive SDE solve on the virtual
Brownian path (docs/adaptive.md); ``Samples.nfe_per_sample`` then differs
between samples.

Options of a method family are one record (:mod:`diffusion.options`),
passed as ``options=``: :class:`Ancestral` (``eta``, ddim),
:class:`Exponential` (``prediction``, the exponential methods),
:class:`PredictorCorrector` (``snr``, ``corrector_steps``, pc),
:class:`AnnealedLangevin` (``step_size``, ``corrector_steps``, ald) and
:class:`Adaptive` (``rtol``, ``atol``; dopri5, and the reverse-SDE methods adapt with it),
:class:`AncestralSDE` (``eta``, ``s_noise``, ``solver_type``; euler_ancestral,
dpmpp_2m_sde, dpmpp_3m_sde) and :class:`Churn` (``S_churn``, ``S_tmin``,
``S_tmax``, ``S_noise``; edm). The exponential methods
integrate the data-prediction form by default (``prediction="x0"``,
DPM-Solver++); ``Exponential(prediction="eps")`` integrates the
noise-prediction form (DPM-Solver, DEIS), often better at very few steps.

Every method runs on any time grid (:mod:`diffusion.grids`): the samplers
that step between grid points step on ``t_k = phi(k/n)``; the general sdekit
schemes on a non-uniform grid integrate :func:`sdekit.time_change` of the
problem with uniform steps in ``u`` (a uniform grid is integrated natively,
backwards in ``t``). A custom grid (``grid=<array of times>`` or
``sigmas=<array of EDM noise levels>``, :meth:`TimeGrid.from_times`) is stepped
on its times by the exponential integrators and the chains, and by the general
schemes through the monotone C1 map of :mod:`diffusion.grids` that passes
through them.

Final step: with ``denoise=True`` (the default, as in Song et al.'s code)
the sample at ``eps`` is replaced by Tweedie's mean ``E[x_0 | x_eps]``, one more
score evaluation. ``nfe`` counts score evaluations per sample, exactly.

Randomness: the prior draw, the Brownian path and the chains' normals all
come from sdekit's counter-based generator, keyed by ``seed``: the same seed
gives the same samples on every backend, and the first ``m`` of ``n`` samples
are the ``m`` samples drawn alone, for every method except ``pc``, whose
corrector step size averages score and noise norms over the batch (so each
sample depends on the others).

The chains (``ddim`` with ``eta > 0``, ``ddpm``, ``pc``, ``ald``) are short
functions with one signature, ``chain(sde, score, times, x, noise, options,
visit) -> (x, nfe)``: ``noise()`` draws the next ``(n, dim)`` standard normals
and ``visit(x)`` receives each new grid state (as in Crowson's k-diffusion
samplers). Their formulas are those of :mod:`diffusion.formulas`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np

import sdekit
from sdekit.checks import require

from .formulas import eps_from_score, x0_from_score
from .grids import DEFAULT_RHO, TimeGrid
from .k_samplers import K_CHAINS
from .options import OPTION_RECORDS, Adaptive, Ancestral, AncestralSDE, AnnealedLangevin, Churn, Exponential, PredictorCorrector
from .reverse import probability_flow, probability_flow_semilinear, reverse_sde
from .score import Score, _is_tensor, params_like
from .sdes import _stream_seed, same_process, standard_normals

__all__ = ["sample", "Samples", "METHODS", "METHOD_OPTIONS", "list_methods", "default_sampler", "DEFAULT_NFE"]

SDE_METHODS = {"euler_maruyama": "euler", "euler_heun": "euler_heun", "milstein": "milstein", "sra1": "sra1",
               "sriw1": "sriw1"}
ODE_METHODS = {"euler": "euler", "heun": "heun", "midpoint": "midpoint", "rk4": "rk4", "dopri5": "dopri5"}
EXP_METHODS = {"ddim": "exp_euler", "dpmpp_2m": "dpmpp_2m", "exp_ab2": "exp_ab2", "dpmpp_3m": "exp_ab3_ramp", "exp_ab3": "exp_ab3",
               "unipc": "unipc_bh2", "unipc_bh1": "unipc_bh1", "unipc_bh2": "unipc_bh2", "unipc3": "unipc3_bh2",
               "unipc3_bh1": "unipc3_bh1", "unipc3_bh2": "unipc3_bh2"}
CHAIN_METHODS = ("ddpm", "pc", "ald", "euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde", "edm")
METHODS = tuple(SDE_METHODS) + tuple(ODE_METHODS) + tuple(EXP_METHODS) + CHAIN_METHODS

# The option records each method reads (the first is its default); a method missing here reads none. The reverse-SDE
# methods read Adaptive only when given tolerances (without them: fixed steps).
METHOD_OPTIONS = {**dict.fromkeys(SDE_METHODS, (Adaptive,)), "ddim": (Exponential, Ancestral), "dpmpp_2m": (Exponential,),
                  "dpmpp_3m": (Exponential,),
                  "exp_ab3": (Exponential,), "exp_ab2": (Exponential,), "unipc": (Exponential,), "unipc_bh1": (Exponential,),
                  "unipc_bh2": (Exponential,), "unipc3": (Exponential,), "unipc3_bh1": (Exponential,),
                  "unipc3_bh2": (Exponential,), "pc": (PredictorCorrector,), "ald": (AnnealedLangevin,),
                  "dopri5": (Adaptive,), "euler_ancestral": (AncestralSDE,), "dpmpp_2m_sde": (AncestralSDE,),
                  "dpmpp_3m_sde": (AncestralSDE,), "edm": (Churn,)}
# sample()'s keyword shorthand for the records' fields, with the defaults a method that does not read one must keep
OPTION_KEYWORDS = {"eta": 0.0, "snr": 0.16, "corrector_steps": 1, "step_size": 0.1, "rtol": 1e-5, "atol": 1e-5,
                   "prediction": "x0", "rho": None, "s_noise": 1.0, "solver_type": "midpoint", "S_churn": 0.0, "S_tmin": 0.0,
                   "S_tmax": math.inf, "S_noise": 1.0, "lower_order_final": False}
ANCESTRAL_SDE_METHODS = ("euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde")
ADAPTIVE_METHODS = ("dopri5", *SDE_METHODS)  # the methods that take rtol/atol (the reverse SDE: per-sample steps)


# Score evaluations of a method: (per step, once); "corrector" marks the chains whose cost grows with their
# corrector_steps option (pc: one predictor evaluation and corrector_steps Langevin ones per step; ald:
# corrector_steps Langevin steps at each of the steps + 1 grid times).
NFE_PER_STEP = {"euler_maruyama": (1, 0), "euler_heun": (2, 0), "milstein": (1, 0), "sra1": (2, 0), "sriw1": (2, 0),
                "euler": (1, 0), "heun": (2, 0), "midpoint": (2, 0), "rk4": (4, 0),
                "ddim": (1, 0), "dpmpp_2m": (1, 0), "exp_ab2": (1, 0), "dpmpp_3m": (1, 0), "exp_ab3": (1, 1),
                "unipc": (1, 0), "unipc_bh1": (1, 0), "unipc_bh2": (1, 0), "unipc3": (1, 0), "unipc3_bh1": (1, 0),
                "unipc3_bh2": (1, 0),
                "ddpm": (1, 0), "euler_ancestral": (1, 0), "dpmpp_2m_sde": (1, 0), "dpmpp_3m_sde": (1, 0), "edm": (2, 0),
                "pc": ("corrector", 0), "ald": ("corrector", "corrector")}

# The default sampler for a budget of N score evaluations (sample() without `method`): rows (lowest N, method,
# (grid, rho), options), the last row whose lowest N is <= N applies. Chosen by measurement (docs/samplers.md,
# benchmarks/bench_default_sampler.py): on five exact Gaussian-mixture oracles, each configuration's pathwise
# RMS error, median error and mode flips against the most accurate (by RMS) of every k-diffusion and diffusers
# sampler on its best grid, from the same noise. UniPC in data prediction on a grid uniform in (T - t)^(1/rho)
# won: its time steps resolve the middle of the noise range, where the modes separate (rho 1.5 at 10
# evaluations, 3 at 20), and below 15 steps the first-order last step (lower_order_final) keeps the long final
# log-SNR step from amplifying errors.
DEFAULT_SAMPLERS = (
    (2, "unipc", ("power", 1.75), {"prediction": "x0", "lower_order_final": True}),
    (8, "unipc", ("power", 1.5), {"prediction": "x0", "lower_order_final": True}),
    (12, "unipc3", ("power", 3.0), {"prediction": "x0"}),
    (40, "unipc3", ("power", 3.5), {"prediction": "x0"}),
)
DEFAULT_NFE = 20


def default_sampler(nfe: int) -> dict:
    """The default sampler for a budget of ``nfe`` score evaluations: ``{"method", "grid", "rho", "options"}``
    (``rho``: the grid's exponent; ``options``: the method's options record fields).

    ``sample(sde, score, n, nfe=N)`` without ``method`` uses it (see :data:`DEFAULT_SAMPLERS` for how it
    was chosen). ``nfe`` counts the final denoising step of ``sample(denoise=True)``.
    """
    nfe = _check_int(nfe, "nfe")
    rows = [row for row in DEFAULT_SAMPLERS if row[0] <= nfe]
    if not rows:
        raise ValueError(f"`nfe`={nfe} is below the smallest budget of the default samplers "
                         f"({DEFAULT_SAMPLERS[0][0]}); give a larger `nfe`.")
    _, method, (grid, rho), options = rows[-1]
    return {"method": method, "grid": grid, "rho": rho, "options": dict(options)}


def _evaluations(method, options, steps, denoise) -> int:
    """Score evaluations per sample of ``steps`` steps of ``method`` (+1 with ``denoise``)."""
    per, once = NFE_PER_STEP[method]
    if method == "pc":
        per = 1 + options.corrector_steps
    elif method == "ald":
        per = once = options.corrector_steps
    elif method == "ddim" and isinstance(options, Ancestral) and options.eta > 0:
        per, once = 1, 0
    return per * steps + once + int(denoise)


def _steps_for_budget(method, options, budget, denoise) -> int:
    """The most steps of ``method`` whose score evaluations fit in ``budget``; ValueError if not even one does."""
    if method not in NFE_PER_STEP:
        raise ValueError(f"{method} chooses its own steps and takes no `nfe` budget; give its tolerances instead.")
    per = _evaluations(method, options, 1, False) - _evaluations(method, options, 0, False)
    fixed = _evaluations(method, options, 0, denoise)
    steps = (budget - fixed) // per
    if steps < 1:
        raise ValueError(f"`nfe`={budget} is too small for {method}: one step costs {per + fixed} score evaluations"
                         f"{' with the final denoising step' if denoise else ''}; give nfe >= {per + fixed}.")
    return steps

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
        Score evaluations per sample (the adaptive reverse SDE: their mean
        over the samples, rounded).
    nfe_per_sample : ndarray of int64, (n,)
        Score evaluations of each sample; they differ between samples only
        for the adaptive reverse SDE (its steps and rejections are per sample).
    method, grid : str
        The method and the kind of time grid.
    seconds : float
        Wall-clock time of the call.
    trajectory : array or tensor, optional
        ``(len(times), n, dim)`` states on the grid (``return_trajectory=True``).
    solution : sdekit.Solution, optional
        The solve behind the general and exponential methods.
    options : option record, optional
        The options the method ran with (:mod:`diffusion.options`); None for
        a method that reads none.
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
    options: object = None
    nfe_per_sample: np.ndarray = field(default=None, repr=False)


def _check_int(v, name, low=1):
    if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < low:
        raise ValueError(f"`{name}` must be an integer >= {low}, got {v!r}.")
    return int(v)


def sample(sde, score: Score, n: int, *, method: str | None = None, steps: int | None = None, nfe: int | None = None,
           grid: str | TimeGrid | np.ndarray | None = None, sigmas=None, eps: float | None = None, denoise: bool = True,
           seed: int = 0, dim: int | None = None,
           backend: str | None = None, device=None, dtype=None, x_T=None, options=None,
           callback: Callable | None = None, return_trajectory: bool = False, **option_keywords) -> Samples:
    """Draw ``n`` samples by integrating the reverse dynamics of ``sde`` from ``T`` to ``eps``.

    Parameters
    ----------
    sde : DiffusionSDE
    score : Score
        The score model (its SDE must be ``sde``).
    n : int
        Number of samples.
    method : str, optional
        One of :data:`METHODS` (see the module table). Default: the default
        sampler for the budget ``nfe`` (:func:`default_sampler`), with its
        grid and options unless ``grid``/``options`` are given.
    steps : int, optional
        Grid steps (default 100; ignored by ``dopri5``). With a custom grid
        (an array of times or ``sigmas``) the steps are the array's, and a
        ``steps`` that disagrees is refused. ``ald`` runs ``corrector_steps``
        Langevin steps at each of the ``steps + 1`` grid times.
    nfe : int, optional
        Budget of score evaluations per sample, the final denoising step
        included: the method takes the most steps whose evaluations fit
        (``Samples.nfe <= nfe``); instead of ``steps``. Without ``method``,
        ``nfe`` also picks the default sampler (default budget
        :data:`DEFAULT_NFE`). ``dopri5`` and the adaptive reverse SDE choose
        their own steps and take no budget.
    grid : {"uniform", "quadratic", "logsnr", "karras"}, TimeGrid or array, optional
        Default: the default sampler's grid when ``method`` is not given, else
        ``"uniform"``.
        An array is a custom grid of times ``T = t_0 > ... > t_n > 0``
        (:meth:`TimeGrid.from_times`; ``Samples.grid`` is ``"custom"``).
        Time grid (see :mod:`diffusion.grids`). A :class:`TimeGrid` of this
        SDE carries its own ``eps`` and, for ``"karras"``, ``rho``:
        ``grid=TimeGrid(sde, "karras", rho=5.0)``.
    sigmas : array, optional
        A custom grid of EDM noise levels ``sigma_t / alpha_t``, strictly
        decreasing from ``sde.edm_sigma(sde.T)``, without k-diffusion's
        trailing 0 (:meth:`TimeGrid.from_sigmas`); instead of ``grid``.
    eps : float, optional
        End time (default ``sde.eps``, or the TimeGrid's; a custom grid ends at
        its last time, and an ``eps`` that differs is refused).
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
    options : option record, optional
        The method's options (:data:`METHOD_OPTIONS`; default: the record's
        defaults):

        * :class:`~diffusion.options.Ancestral` ``(eta=0.0)``, ``ddim``:
          0 is the deterministic DDIM (sdekit ``exp_euler``), 1 the ancestral
          DDPM chain;
        * :class:`~diffusion.options.Exponential` ``(prediction="x0")``,
          ``ddim``, ``dpmpp_2m``, ``dpmpp_3m``, ``exp_ab3``: integrate in data
          prediction (DPM-Solver++) or noise prediction (``"eps"``, DPM-Solver);
          ``ddim`` is the same method in both;
        * :class:`~diffusion.options.PredictorCorrector`
          ``(snr=0.16, corrector_steps=1)``, ``pc``: the Langevin corrector's
          signal-to-noise ratio (Song et al. 2021, Alg. 5, with the norms
          averaged over the ``n`` samples, as in their code) and its steps
          after each predictor step;
        * :class:`~diffusion.options.AnnealedLangevin`
          ``(step_size=0.1, corrector_steps=1)``, ``ald``: the relative
          Langevin step ``delta`` (the step at grid time ``t`` is
          ``delta sigma_t^2``; Song & Ermon 2019) and the steps per level;
        * :class:`~diffusion.options.Adaptive` ``(rtol=1e-5, atol=1e-5)``,
          ``dopri5``: the tolerances; the reverse-SDE methods
          (``euler_maruyama``, ``euler_heun``, ``milstein``, ``sra1``,
          ``sriw1``) adapt their steps per sample when given it (or
          ``rtol``/``atol``), and take fixed steps without it;
        * :class:`~diffusion.options.AncestralSDE`
          ``(eta=1.0, s_noise=1.0, solver_type="midpoint")``,
          ``euler_ancestral``, ``dpmpp_2m_sde``, ``dpmpp_3m_sde``: the noise
          scale (0: the PF-ODE method), the factor on the noise and the 2M
          correction (:mod:`diffusion.k_samplers`);
        * :class:`~diffusion.options.Churn` ``(S_churn=0.0, S_tmin=0.0,
          S_tmax=inf, S_noise=1.0)``, ``edm``: Karras et al.'s stochastic churn.

        A record of another family is refused in one line.
    callback : callable, optional
        ``callback(k, t_k, x_k)`` for each grid state in order (for the
        general sdekit schemes after the solve, from the saved states).
    return_trajectory : bool
        Keep all grid states in ``Samples.trajectory``.
    **option_keywords
        Shorthand for the records' fields (``eta``, ``prediction``, ``snr``,
        ``corrector_steps``, ``step_size``, ``rtol``, ``atol``, ``s_noise``,
        ``solver_type``, ``S_churn``, ``S_tmin``, ``S_tmax``, ``S_noise``) and for the
        Karras grid's ``rho``: ``sample(..., method="pc", snr=0.2)`` is
        ``sample(..., method="pc", options=PredictorCorrector(snr=0.2))``. An
        option the chosen method or grid does not read must keep its default:
        otherwise a ``ValueError`` names it.

    Returns
    -------
    Samples
    """
    t_start = time.perf_counter()
    if not isinstance(score, Score):
        raise ValueError(f"`score` must be a diffusion.Score, got {type(score).__name__}.")
    if not same_process(score.sde, sde):
        raise ValueError("`score` was made for another diffusion SDE; build the Score with this `sde`.")
    n = _check_int(n, "n")
    steps = None if steps is None else _check_int(steps, "steps")
    nfe_budget = None if nfe is None else _check_int(nfe, "nfe")
    if nfe_budget is not None and steps is not None:
        raise ValueError("give `steps` or `nfe`, not both: `nfe` is the budget of score evaluations and sets the steps.")
    if method is None:
        chosen = default_sampler(nfe_budget if nfe_budget is not None else
                                 DEFAULT_NFE if steps is None else steps + bool(denoise))
        method = chosen["method"]
        if nfe_budget is None and steps is None:
            nfe_budget = DEFAULT_NFE
        if grid is None and sigmas is None:
            grid = chosen["grid"]
            option_keywords.setdefault("rho", chosen["rho"])
        if options is None:
            option_keywords = {**chosen["options"], **option_keywords}
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}.")
    if grid is None and sigmas is None:
        grid = "uniform"
    if backend is None:
        backend = "numba" if "numba" in score.backends else "torch"
    if backend not in sdekit.BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {list(sdekit.BACKENDS)}.")
    score.check_backend(backend)
    if backend != "torch" and (device is not None or dtype is not None):
        raise ValueError(f"`device` and `dtype` apply to backend='torch', not {backend!r}.")
    unknown = sorted(set(option_keywords) - set(OPTION_KEYWORDS))
    if unknown:
        raise TypeError(f"sample() got an unexpected keyword argument {unknown[0]!r}; the option keywords are "
                        f"{list(OPTION_KEYWORDS)}.")
    rho = option_keywords.pop("rho", None)
    grid = _custom_grid(sde, grid, sigmas)
    grid_kind = grid.kind if isinstance(grid, TimeGrid) else grid
    options = _method_options(method, grid_kind, options, option_keywords)
    adaptive_name = method if method == "dopri5" else f"{method} with `rtol`/`atol`"
    if isinstance(options, Adaptive) and grid_kind != "uniform":
        raise ValueError(f"{adaptive_name} chooses its own steps; drop `grid` (it applies to fixed steps).")
    if isinstance(options, Adaptive) and method != "dopri5" and (steps is not None or nfe_budget is not None):
        raise ValueError(f"{adaptive_name} chooses its own steps per sample; drop `steps`/`nfe` "
                         "(or drop the tolerances for fixed steps).")
    time_grid = _time_grid(sde, grid, eps, rho, method)
    if time_grid.kind == "custom":
        if steps is not None and steps != time_grid.steps:
            raise ValueError(f"`steps`={steps} disagrees with the custom grid's {time_grid.steps} steps; drop `steps` "
                             "(it comes from the grid).")
        steps = time_grid.steps
        if nfe_budget is not None and _evaluations(method, options, steps, bool(denoise)) > nfe_budget:
            raise ValueError(f"the custom grid's {steps} steps of {method} need "
                             f"{_evaluations(method, options, steps, bool(denoise))} score evaluations, more than "
                             f"`nfe`={nfe_budget}; give a shorter grid or a larger `nfe`.")
    elif nfe_budget is not None:
        steps = _steps_for_budget(method, options, nfe_budget, bool(denoise))
    elif steps is None:
        steps = 100
    times = time_grid.times(steps)

    like = None
    if backend == "torch":
        torch = require("torch", extra="torch", what="sample(backend='torch')")
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

    keep = return_trajectory or callback is not None
    # the samples come back as arrays without a graph: never record one through a network
    grad_off = contextlib.nullcontext()
    if backend == "torch":
        import torch

        grad_off = torch.no_grad()
    with grad_off:
        score.check(x_T, float(times[0]), what="x_T")  # one evaluation on 3 rows: shape, dtype, finiteness
        trajectory, solution = None, None
        if method in SDE_METHODS or method in ODE_METHODS:
            x, nfe, trajectory, solution, times = _solve_general(score, time_grid, method, steps, x_T, seed, backend,
                                                                 options, keep)
        elif method in EXP_METHODS and not (isinstance(options, Ancestral) and options.eta > 0):
            exponential = options if isinstance(options, Exponential) else Exponential()
            problem = probability_flow_semilinear(score, exponential.prediction)
            solution = sdekit.solve(problem, x_T, (times[0], times[-1]), method=EXP_METHODS[method], t_grid=times,
                                    save_at=None if keep else [times[-1]], backend=backend,
                                    lower_order_final=exponential.lower_order_final)
            x, nfe = solution.x[-1], int(round(solution.stats.n_drift_evals / solution.stats.n_paths))
            trajectory = solution.x if keep else None
        else:
            chain = CHAINS["ddim" if method == "ddpm" else method]
            chain_options = Ancestral(eta=1.0) if method == "ddpm" else options
            x, nfe, trajectory = _run_chain(chain, sde, score, times, x_T, seed, chain_options, keep)
        if callback is not None:
            for k, tk in enumerate(times):
                callback(k, float(tk), trajectory[k])
        if denoise:
            x = score.x0(x, float(times[-1]))
            nfe += 1
    nfe_per_sample = np.full(n, nfe, dtype=np.int64)
    if isinstance(options, Adaptive) and method in SDE_METHODS:  # per-sample steps: each sample's own count
        nfe_per_sample = np.asarray(solution.drift_evals_per_path, dtype=np.int64) + int(bool(denoise))
    _check_finite(x, method)
    if nfe_budget is not None and nfe > nfe_budget:  # the cost table (NFE_PER_STEP) disagrees with the integrator
        raise AssertionError(f"{method} spent {nfe} score evaluations, over the budget nfe={nfe_budget}.")
    return Samples(x=x, x_T=x_T, times=times, nfe=int(nfe), method=method, grid=time_grid.kind,
                   seconds=time.perf_counter() - t_start, trajectory=trajectory if return_trajectory else None,
                   solution=solution, options=options, nfe_per_sample=nfe_per_sample)


def _method_options(method, grid_kind, options, option_keywords):
    """The option record ``method`` runs with, from ``options=`` or from the keyword shorthand (None if it reads none)."""
    accepted = METHOD_OPTIONS.get(method, ())
    if options is not None:
        if option_keywords:
            raise ValueError(f"give the method's options either as `options=` or as keywords "
                             f"({', '.join(sorted(option_keywords))}), not both.")
        if not isinstance(options, OPTION_RECORDS):
            raise ValueError(f"`options` must be an option record ({', '.join(r.__name__ for r in OPTION_RECORDS)}), "
                             f"got {type(options).__name__}.")
        if not isinstance(options, accepted):
            reads = " or ".join(r.__name__ for r in accepted) + " options" if accepted else "no options"
            users = [m for m, records in METHOD_OPTIONS.items() if type(options) in records]
            raise ValueError(f"`options` {type(options).__name__} apply to method {' or '.join(map(repr, users))}; "
                             f"method={method!r} reads {reads}.")
        return options
    # the keyword shorthand: an option the method does not read is refused rather than silently ignored
    if method != "ddim" and method not in ANCESTRAL_SDE_METHODS and not _is_default(option_keywords.get("eta", 0.0), 0.0):
        raise ValueError(f"`eta` applies to method='ddim' and {list(ANCESTRAL_SDE_METHODS)} only.")
    for name, applies, where in (("snr", method == "pc", "method='pc'"), ("step_size", method == "ald", "method='ald'"),
                                 ("corrector_steps", method in ("pc", "ald"), "method='pc' or 'ald'"),
                                 *((name, method in ADAPTIVE_METHODS, f"the adaptive methods {list(ADAPTIVE_METHODS)}")
                                   for name in ("rtol", "atol")),
                                 ("s_noise", method in ANCESTRAL_SDE_METHODS, f"method in {list(ANCESTRAL_SDE_METHODS)}"),
                                 ("solver_type", method == "dpmpp_2m_sde", "method='dpmpp_2m_sde'"),
                                 ("lower_order_final", method in EXP_METHODS, f"the exponential methods {list(EXP_METHODS)}"),
                                 *((name, method == "edm", "method='edm'") for name in ("S_churn", "S_tmin", "S_tmax", "S_noise"))):
        value = option_keywords.get(name, OPTION_KEYWORDS[name])
        if not applies and not _is_default(value, OPTION_KEYWORDS[name]):
            raise ValueError(f"`{name}` applies to {where} only (it would be ignored by method={method!r}, "
                             f"grid={grid_kind!r}); drop it.")
    prediction = option_keywords.get("prediction", "x0")
    if prediction not in ("x0", "eps"):
        raise ValueError(f"`prediction` must be 'x0' or 'eps', got {prediction!r}.")
    if prediction != "x0" and method not in EXP_METHODS:
        raise ValueError(f"`prediction` applies to the exponential methods {list(EXP_METHODS)}, not {method!r}.")
    if not accepted or (method in SDE_METHODS and not ({"rtol", "atol"} & set(option_keywords))):
        return None  # a reverse-SDE method without tolerances takes fixed steps
    chosen = [record for record in accepted if any(f.name in option_keywords and not _is_default(option_keywords[f.name], f.default)
                                                   for f in fields(record))]
    if len(chosen) > 1:  # ddim with both eta > 0 and prediction='eps'
        raise ValueError("`eta` > 0 runs DDIM's stochastic chain, which `prediction` and `lower_order_final` do not change; "
                         "drop them.")
    record = chosen[0] if chosen else accepted[0]
    return record(**{f.name: option_keywords[f.name] for f in fields(record) if f.name in option_keywords})


def _is_default(value, default) -> bool:
    return bool(np.isscalar(value) and value == default)


def _custom_grid(sde, grid, sigmas):
    """``grid`` as given, or the custom TimeGrid of an array of times (``grid=``) or of noise levels (``sigmas=``)."""
    if sigmas is not None:
        if grid is not None:
            raise ValueError("give the grid either as `grid` or as `sigmas`, not both; drop one.")
        return TimeGrid.from_sigmas(sde, sigmas)
    if isinstance(grid, str | TimeGrid):
        return grid
    return TimeGrid.from_times(sde, grid)


def _time_grid(sde, grid, eps, rho, method) -> TimeGrid:
    """The sampling grid: a TimeGrid as given (checked against ``sde``), or one made from its kind."""
    if isinstance(grid, TimeGrid) and grid.kind == "custom":
        if rho is not None:
            raise ValueError("`rho` applies to grid='karras' or 'power' only, not to a custom grid; drop it.")
        if eps is not None and float(eps) != grid.eps:
            raise ValueError(f"`eps`={eps} disagrees with the custom grid's last time {grid.eps!r}; drop `eps` "
                             "(the grid ends at its last time).")
    if isinstance(grid, TimeGrid):
        if not same_process(grid.sde, sde) or grid.T != sde.T:
            raise ValueError(f"`grid` {grid!r} was made for another SDE or start time; make it with "
                             f"TimeGrid(sde, {grid.kind!r}) for this `sde` (T={sde.T}).")
        if rho is not None:
            raise ValueError(f"`rho` is set on the TimeGrid ({grid!r}); drop `rho`.")
        if eps is not None and float(eps) != grid.eps:
            raise ValueError(f"`eps` is set on the TimeGrid ({grid!r}); drop `eps` or make the grid with eps={eps}.")
        return grid
    if rho is not None and grid not in DEFAULT_RHO:
        raise ValueError(f"`rho` applies to grid='karras' or 'power' only (it would be ignored by method={method!r}, "
                         f"grid={grid!r}); drop it.")
    return TimeGrid(sde, grid, eps=eps, rho=rho)


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


def _check_finite(x, method):
    ok = bool(x.isfinite().all()) if _is_tensor(x) else bool(np.isfinite(x).all())
    if not ok:
        raise FloatingPointError(
            f"{method} produced non-finite samples; the score may be non-finite near eps, or the steps too "
            "coarse for this method (try more steps or the 'logsnr' grid)."
        )


def _solve_general(score, time_grid, method, steps, x_T, seed, backend, options, keep):
    """Reverse SDE / PF-ODE with a general sdekit scheme."""
    is_sde = method in SDE_METHODS
    problem = reverse_sde(score) if is_sde else probability_flow(score)
    scheme = SDE_METHODS[method] if is_sde else ODE_METHODS[method]
    solve_options = {"backend": backend}
    if is_sde:
        solve_options["seed"] = _stream_seed(seed, 1)
    if isinstance(options, Adaptive):  # dopri5, or the reverse SDE with steps per sample
        solution = sdekit.solve(problem, x_T, (time_grid.T, time_grid.eps), method=scheme, rtol=options.rtol,
                                atol=options.atol, **solve_options)
        if is_sde and solution.failed.any():
            raise FloatingPointError(f"{method}: {solution.message}")
        nfe = int(round(solution.stats.n_drift_evals / solution.stats.n_paths))
        return solution.x[-1], nfe, solution.x if keep else None, solution, np.array([time_grid.T, time_grid.eps])
    if time_grid.kind == "uniform":
        solution = sdekit.solve(problem, x_T, (time_grid.T, time_grid.eps), method=scheme, n_steps=steps,
                                save_at=None if keep else [time_grid.eps], **solve_options)
    else:
        changed = sdekit.time_change(problem, time_grid.phi, time_grid.dphi, params=time_grid.params)
        solution = sdekit.solve(changed, x_T, (0.0, 1.0), method=scheme, n_steps=steps,
                                save_at=None if keep else [1.0], **solve_options)
    if solution.failed.any():
        raise FloatingPointError(f"{method}: {solution.message}")
    nfe = int(round(solution.stats.n_drift_evals / solution.stats.n_paths))
    return solution.x[-1], nfe, solution.x if keep else None, solution, time_grid.times(steps)


# --------------------------------------------------------------------------- chains
# Every chain is chain(sde, score, times, x, noise, options, visit) -> (x, nfe): it steps the states x through the
# decreasing grid `times`, draws its standard normals with noise() and hands each new grid state to visit(x).


def _run_chain(chain, sde, score, times, x, seed, options, keep):
    """Run one chain with the normals of ``seed`` (streams 2, 3, ... in the order drawn); the states if ``keep``."""
    n, dim = x.shape
    like = x if _is_tensor(x) else None
    draws = 0

    def noise():
        nonlocal draws
        draws += 1
        return standard_normals(seed, 1 + draws, n, dim, like=like)

    states = [x] if keep else None
    x, nfe = chain(sde, score, times, x, noise, options, states.append if keep else lambda state: None)
    if keep:
        states = _stack(states)
    return x, nfe, states


def _stack(states):
    if _is_tensor(states[0]):
        import torch

        return torch.stack(states)
    return np.stack(states)


def _langevin(x, score_t, step, z):
    """One Langevin step ``x + step s + sqrt(2 step) z`` towards the density whose score is ``s`` (Roberts & Tweedie 1996)."""
    return x + step * score_t + math.sqrt(2.0 * step) * z


def _mean_row_norm(v) -> float:
    return float(((v * v).sum(1) ** 0.5).mean())


def _ancestral(sde, score, times, x, noise, options, visit):
    """DDIM's generalised chain: ``x_s`` from the posterior ``q(x_s | x_t, x0_hat)`` with noise scale ``eta``.

    ``x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z`` with
    ``c = eta sigma_s sqrt(var(x_t | x_s)) / sigma_t`` (Song, Meng & Ermon 2021,
    eq. 12 and 16); ``eta = 1`` is DDPM's ancestral step (Ho et al. 2020).
    """
    params = params_like(score.params, x)
    for t, s in zip(times[:-1], times[1:], strict=True):
        t, s = float(t), float(s)
        alpha_t, sigma_t = float(sde.alpha(t)), float(sde.sigma(t))
        alpha_s, sigma_s = float(sde.alpha(s)), float(sde.sigma(s))
        score_t = score.kernel(t, x, params)
        x0_hat = x0_from_score(score_t, x, alpha_t, sigma_t)
        eps_hat = eps_from_score(score_t, x, alpha_t, sigma_t)
        alpha_ts = alpha_t / alpha_s
        variance_ts = sigma_t * sigma_t - alpha_ts * alpha_ts * sigma_s * sigma_s  # variance of x_t given x_s
        noise_std = options.eta * math.sqrt(max(variance_ts, 0.0) * sigma_s * sigma_s) / sigma_t
        x = alpha_s * x0_hat + math.sqrt(max(sigma_s * sigma_s - noise_std * noise_std, 0.0)) * eps_hat
        if noise_std > 0:
            x = x + noise_std * noise()
        visit(x)
    return x, len(times) - 1


def _predictor_corrector(sde, score, times, x, noise, options, visit):
    """Song et al.'s PC sampler: Langevin corrector steps at ``t``, then one Euler–Maruyama step of the reverse SDE to ``s``.

    The corrector step is ``2 a (r |z| / |s|)^2`` with ``a = (alpha_t / alpha_s)^2``
    and the norms averaged over the batch (Song et al. 2021, Alg. 5); the
    predictor is sdekit's ``euler`` on :func:`reverse_sde`, stepped backwards
    with ``dw = sqrt(t - s) z``.
    """
    params = params_like(score.params, x)
    predictor = sdekit.Stepper(reverse_sde(score), "euler", x.shape[1], backend="torch" if _is_tensor(x) else "numpy")
    nfe = 0
    for t, s in zip(times[:-1], times[1:], strict=True):
        t, s = float(t), float(s)
        alpha_ratio_squared = (float(sde.alpha(t)) / float(sde.alpha(s))) ** 2
        for _ in range(options.corrector_steps):
            score_t = score.kernel(t, x, params)
            z = noise()
            # Song et al.'s rule with the norms averaged over the n samples: a step that depends on each
            # sample's own score norm is not a valid Langevin step (it inflates the variance near modes)
            ratio = options.snr * _mean_row_norm(z) / max(_mean_row_norm(score_t), 1e-300)
            x = _langevin(x, score_t, 2.0 * alpha_ratio_squared * ratio**2, z)
        nfe += options.corrector_steps
        h = s - t  # negative: backwards in time, with the increment along the step
        x = predictor.step(t, x, h, math.sqrt(-h) * noise())
        nfe += predictor.n_drift
        visit(x)
    return x, nfe


def _annealed_langevin(sde, score, times, x, noise, options, visit):
    """Annealed Langevin dynamics: ``corrector_steps`` Langevin steps of size ``step_size sigma_t^2 / 2`` at each grid time.

    Song & Ermon (2019), Alg. 1, with ``alpha_i = step_size sigma_t^2``
    (so the update is ``x + alpha_i s / 2 + sqrt(alpha_i) z``).
    """
    params = params_like(score.params, x)
    for k, t in enumerate(times):
        t = float(t)
        step = 0.5 * (options.step_size * float(sde.sigma(t)) ** 2)
        for _ in range(options.corrector_steps):
            score_t = score.kernel(t, x, params)
            x = _langevin(x, score_t, step, noise())
        if k > 0:
            visit(x)
    return x, len(times) * options.corrector_steps


CHAINS = {"ddim": _ancestral, "pc": _predictor_corrector, "ald": _annealed_langevin, **K_CHAINS}

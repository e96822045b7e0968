"""Backends run the schemes of :mod:`sdekit.schemes` on an array library, through one protocol.

:func:`sdekit.solve` validates its arguments, picks a backend with :func:`get_backend` and calls, in order:

1. ``backend.options(problem, x0, device=, dtype=, compile=) -> Options``: the backend-specific options,
   validated by the backend (the NumPy and Numba backends refuse them; the torch backend resolves the
   device and dtype from the arguments and from ``x0``);
2. ``backend.prepare(problem, x0, n_paths, options) -> Inputs``: ``x0`` as the backend's array, the
   problem's params on the backend;
3. ``backend.probe(inputs, t0)``: the entry probe of the user's functions (one call on a small batch);
4. ``backend.run(inputs, work) -> Result``: integrate the :class:`Work` (an immutable record of what to
   integrate) and return the states, failures and counts as a new record.

Before running, ``solve`` refuses a solve that would not fit in memory; ``backend.working_memory(...)`` is the
backend's share of the estimate (bytes beyond the saved states, times and per-path records; ``width`` is the
numbers per path of a diffusion value).

The backends are ``numpy`` (the readable reference), ``numba`` (compiled CPU kernels) and ``torch`` (CPU or
GPU, differentiable). A new backend is one module with one object implementing :class:`Backend`, and its
name in :data:`BACKENDS`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..checks import require
from ..solution import Stats

if TYPE_CHECKING:
    from ..brownian import BrownianPath
    from ..schemes import Scheme, StepPlan

BACKENDS = ("numba", "numpy", "torch")


@dataclass(frozen=True)
class Options:
    """Backend options of one solve, after validation.

    Attributes
    ----------
    device, dtype : torch.device, torch.dtype or None
        Torch backend: where and in which precision it solves (None on the NumPy and Numba backends, which
        solve in float64 on the CPU).
    compile : bool
        Torch backend: fuse each fixed step with ``torch.compile``.
    """

    device: Any = None
    dtype: Any = None
    compile: bool = False


@dataclass(frozen=True)
class Inputs:
    """The problem and initial states as the backend holds them.

    Attributes
    ----------
    problem : SDE, ODE or SemilinearODE
    x0 : ndarray or torch.Tensor, shape (1, dim) or (n_paths, dim)
        Initial states (one row shared by all paths, or one per path).
    n_paths : int
    noise_dim : int
        Brownian components per path (0 for ODEs).
    params : tuple
        ``problem.params`` as the backend passes them to the functions (the torch backend: arrays as tensors on
        the solve's device).
    options : Options
    """

    problem: Any
    x0: Any
    n_paths: int
    noise_dim: int
    params: tuple
    options: Options

    @property
    def dim(self) -> int:
        return int(self.x0.shape[1])


@dataclass(frozen=True)
class Tolerances:
    """Error control of an adaptive scheme: per-path ``rtol``/``atol`` and the step budget ``max_steps``."""

    rtol: float
    atol: float
    max_steps: int


@dataclass(frozen=True)
class PathPlan:
    """A per-path run (:mod:`sdekit.backends.paths`): adaptive SDE steps, or any steps with events.

    Attributes
    ----------
    attempt : callable
        ``attempt(f, g, p, tab, t, x, h, sqrt|h|, dw, levy_area) -> (x_new, err)``: the scheme's step with its
        embedded error estimate (adaptive), or its plain step returning ``x`` as the unused error.
    tab : ndarray
        The step's packed coefficients.
    n_drift, n_diffusion : int
        Evaluations per attempt.
    exponent : float
        The controller's exponent ``1 / q``, ``h^q`` the size of the error estimate
        (:func:`sdekit.schemes._embedded.estimate_order`).
    adaptive : bool
        Steps chosen by the error estimate; otherwise ``Work.n_steps`` equal steps.
    """

    attempt: Any
    tab: np.ndarray
    n_drift: int
    n_diffusion: int
    exponent: float
    adaptive: bool


@dataclass(frozen=True)
class Work:
    """What to integrate, whatever the backend.

    Attributes
    ----------
    scheme : Scheme
        Its ``kind`` ("sde", "ode", "semilinear") and ``adaptive`` say which integrator runs.
    t0, t1 : float
        The span; ``t1 < t0`` integrates backwards.
    save_t : ndarray (n_save,)
        Times of the saved states, in the order of integration.
    save_idx : ndarray of int64 (n_save,) or None
        Step indices of ``save_t`` on the step grid (fixed steps); None for adaptive schemes.
    plan : StepPlan or None
        Fixed-step Runge–Kutta schemes: the step function, its packed coefficients and its evaluations per step.
    n_steps : int
        Steps of a fixed-step grid (0 for adaptive schemes).
    h : float or None
        Signed uniform step ``(t1 - t0) / n_steps`` (Runge–Kutta fixed steps).
    grid : ndarray (n_steps + 1,) or None
        Step times of the exponential integrators (kind "semilinear").
    brownian : BrownianPath or None
        The noise of an SDE.
    tolerances : Tolerances or None
        Adaptive schemes.
    stability_boundary : float
        Fixed-step explicit schemes: ``beta`` of the instability rule (:mod:`sdekit.schemes._stability`); 0.0
        turns the check off.
    events : tuple of sdekit.Event
        The solve's events (:mod:`sdekit.events`).
    dt0, dt_max : float or None
        Adaptive SDE steps: the first step (None: estimated) and the largest (None: no bound).
    path_plan : PathPlan or None
        Set when the solve runs path by path (adaptive SDE steps, or events): the backends' ``run`` hands it to
        their per-path integrator.
    """

    scheme: Scheme
    t0: float
    t1: float
    save_t: np.ndarray
    save_idx: np.ndarray | None = None
    plan: StepPlan | None = None
    n_steps: int = 0
    h: float | None = None
    grid: np.ndarray | None = None
    brownian: BrownianPath | None = None
    tolerances: Tolerances | None = None
    stability_boundary: float = 0.0
    events: tuple = ()
    dt0: float | None = None
    dt_max: float | None = None
    path_plan: PathPlan | None = None

    @property
    def reverse(self) -> bool:
        """True when the solve runs backwards in time (the Brownian increments run along that direction)."""
        return self.t1 < self.t0


@dataclass(frozen=True)
class Result:
    """What a backend returns.

    Attributes
    ----------
    x : ndarray or torch.Tensor (n_save, n_paths, dim)
        States at ``Work.save_t``; NaN for a failed path from its failure on.
    failure_time : ndarray (n_paths,)
        Time of each path's failure, NaN where it succeeded.
    failure_codes : ndarray of int64 (n_paths,)
        ``schemes._adaptive`` failure codes (0: none, or a non-finite state of a fixed step; fixed steps also
        record UNSTABLE and the codes of :data:`sdekit.schemes._stability.NONFINITE_CODES`).
    stats : Stats
    per_path : dict or None
        Per-path runs: ``steps``, ``rejected``, ``drift_evals``, ``diffusion_evals`` (n_paths,) and the events'
        ``event_t``, ``event_x``, ``event_id`` and ``events`` (an :class:`sdekit.events.EventLog`).
    """

    x: Any
    failure_time: np.ndarray
    failure_codes: np.ndarray
    stats: Stats
    per_path: dict | None = None


class Backend(Protocol):
    """The protocol every backend implements (see the module docstring for the order of the calls)."""

    name: str

    def options(self, problem, x0, *, device=None, dtype=None, compile=False) -> Options: ...  # noqa: A002

    def prepare(self, problem, x0, n_paths: int | None, options: Options) -> Inputs: ...

    def probe(self, inputs: Inputs, t0: float) -> None: ...

    def run(self, inputs: Inputs, work: Work) -> Result: ...

    def working_memory(self, *, adaptive: bool, n_save: int, n_paths: int, dim: int, m: int, n_steps: int,
                       itemsize: int, width: int, device, n_threads: int | None) -> int: ...


def get_backend(name) -> Backend:
    """The backend called ``name`` (one of :data:`BACKENDS`); its module is imported on first use."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {list(BACKENDS)}.")
    if name == "torch":
        require("torch", extra="torch", what="backend='torch'")
    return importlib.import_module(f".{name}_backend", __name__).BACKEND


def fixed_step_stats(work: Work, n_paths: int, noise_dim: int) -> Stats:
    """Work counts of a fixed-step solve: every path takes every step (Runge–Kutta or exponential)."""
    total = work.n_steps * n_paths
    if work.scheme.kind == "semilinear":
        from ..semilinear import evaluations

        return Stats(total, total, 0, evaluations(work.scheme.name, work.n_steps) * n_paths, 0, n_paths)
    return Stats(total, total, 0, work.plan.n_drift * total, work.plan.n_diffusion * total if noise_dim else 0, n_paths)


def no_failures(n_paths: int) -> tuple[np.ndarray, np.ndarray]:
    """``(failure_time, failure_codes)`` of ``n_paths`` paths before any failed: NaN times, zero codes."""
    return np.full(n_paths, np.nan), np.zeros(n_paths, dtype=np.int64)


def ode_per_path(counts, dim) -> dict:
    """``Result.per_path`` of an adaptive ODE run from its ``(n_paths, 3)`` counts (accepted, rejected, evaluations)."""
    from ..events import EventLog

    n = counts.shape[0]
    return {"steps": counts[:, 0].copy(), "rejected": counts[:, 1].copy(), "drift_evals": counts[:, 2].copy(),
            "diffusion_evals": np.zeros(n, dtype=np.int64), "event_t": np.full(n, np.nan),
            "event_x": np.full((n, dim), np.nan), "event_id": np.full(n, -1, dtype=np.int64),
            "events": EventLog.empty(dim)}

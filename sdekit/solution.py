"""The result of a solve: a plain record."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Solution", "Stats"]


@dataclass(frozen=True)
class Stats:
    """Work counts, totalled over all paths.

    A batched call of a function on ``k`` paths counts ``k`` evaluations, so
    ``n_drift_evals / n_paths`` is the work per path.
    """

    n_steps: int
    n_accepted: int
    n_rejected: int
    n_drift_evals: int
    n_diffusion_evals: int
    n_paths: int

    def per_path(self) -> dict:
        """Mean counts per path."""
        n = max(self.n_paths, 1)
        return {
            "steps": self.n_steps / n, "accepted": self.n_accepted / n, "rejected": self.n_rejected / n,
            "drift_evals": self.n_drift_evals / n, "diffusion_evals": self.n_diffusion_evals / n,
        }


@dataclass(frozen=True)
class Solution:
    """States of every path at the saved times.

    Attributes
    ----------
    t : ndarray (T,)
        Saved times, in the order of integration.
    x : ndarray or torch.Tensor (T, n_paths, dim)
        States (a tensor on the solve's device for ``backend="torch"``, carrying
        the autograd graph). A path that failed holds NaN from its failure on;
        what it reached before is kept.
    stats : Stats
    status : {"success", "failure"}
        ``"failure"`` when at least one path failed.
    message : str
    brownian : BrownianPath or None
        The path that drove the solve (None for ODEs).
    failed : ndarray of bool (n_paths,)
    failure_time : ndarray (n_paths,)
        Time of the first non-finite state (or of the step-size failure of an
        adaptive solve); NaN for paths that succeeded.
    method, backend : str
    failure_reasons : dict or None
        ``{reason: number of failed paths}``, with reasons ``"non-finite state"``,
        ``"max_steps reached"``, ``"step size underflow"``; empty when no path failed.
    steps_per_path, rejected_per_path : ndarray of int64 (n_paths,)
        Each path's accepted and rejected steps (adaptive SDE steps and the
        numpy/numba adaptive ODE solvers run each path on its own; otherwise
        every path has the solve's steps).
    drift_evals_per_path, diffusion_evals_per_path : ndarray of int64 (n_paths,)
        Each path's evaluations of the drift (an ODE's right-hand side) and of
        the diffusion.
    event_t, event_x, event_id : ndarray (n_paths,), (n_paths, dim), int64 (n_paths,)
        Per path, the time, state and index of the first terminal event that
        fired (:class:`sdekit.Event`); NaN, NaN and -1 where none did.
    events : sdekit.events.EventLog
        Every event firing (terminal or not): path, event index, time, state.
    """

    t: np.ndarray
    x: np.ndarray
    stats: Stats
    status: str
    message: str
    brownian: object = None
    failed: np.ndarray = field(default=None)
    failure_time: np.ndarray = field(default=None)
    method: str = ""
    backend: str = ""
    failure_reasons: dict = field(default=None)
    steps_per_path: np.ndarray = field(default=None)
    rejected_per_path: np.ndarray = field(default=None)
    drift_evals_per_path: np.ndarray = field(default=None)
    diffusion_evals_per_path: np.ndarray = field(default=None)
    event_t: np.ndarray = field(default=None)
    event_x: np.ndarray = field(default=None)
    event_id: np.ndarray = field(default=None)
    events: object = field(default=None)

    @property
    def success(self) -> bool:
        return self.status == "success"

    @property
    def n_paths(self) -> int:
        return self.x.shape[1]

    @property
    def dim(self) -> int:
        return self.x.shape[2]

    @property
    def final(self) -> np.ndarray:
        """States at the last saved time, shape (n_paths, dim)."""
        return self.x[-1]

    def __repr__(self):
        return (
            f"Solution(method={self.method!r}, backend={self.backend!r}, status={self.status!r}, "
            f"t: {self.t.shape}, x: {self.x.shape}, failed={int(self.failed.sum())})"
        )

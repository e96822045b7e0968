"""Streaming statistics of large ensembles: solve the paths in chunks, reduce each chunk, merge in a fixed tree.

:func:`ensemble` never holds more than one chunk of states (per worker): each chunk is an ordinary
:func:`sdekit.solve` of the paths ``[a, b)`` of the ensemble, driven by
``BrownianPath.paths_slice(a, b)`` of the ensemble's path, so path ``i`` is a pure function of ``(seed, i)``.

Determinism. The paths are cut into *leaves* of ``leaf_paths`` consecutive paths (a power of two, independent of
the chunking). Every reducer reduces each leaf on its own, and leaf states are merged only in the canonical dyadic
tree: node ``(l, k)`` covers the leaves ``[k 2^l, (k + 1) 2^l)`` and is always the merge of ``(l - 1, 2k)`` (left)
and ``(l - 1, 2k + 1)`` (right). A chunk of leaves ``[i, j)`` returns the aligned blocks ``[i, j)`` decomposes into;
the driver merges siblings as they arrive, then the remaining nodes of ``[0, n_leaves)`` from left to right. Every
floating-point sum, and the quantile sketch, is therefore the same function of ``(seed, n_paths, leaf_paths)``,
bit for bit, whatever the chunk size, the number of workers and the order in which chunks finish.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
from numba import types

from . import _kll, checks
from .backends.numba_kernels import F64_2, F64_3, cached_kernel
from .brownian import BrownianPath
from .solve import solve

__all__ = ["ensemble", "EnsembleResult", "Reducer", "Histogram", "STATISTICS", "LEAF_PATHS"]

STATISTICS = ("mean", "var", "cov", "min", "max", "quantiles", "histogram", "phi_mean", "phi_var")
LEAF_PATHS = 4096
_CHUNK_NUMBERS = 1 << 22  # default chunk: about 32 MiB of saved float64 states


@runtime_checkable
class Reducer(Protocol):
    """A mergeable statistic of the saved states, computed chunk by chunk.

    :func:`ensemble` calls, for every leaf of paths, ``update(init(t, dim), t, x, failed)``, merges the leaf
    states with ``merge`` in a fixed binary tree (left part first), and returns ``finalize`` of the root.
    Every method must be a pure function of its arguments (return new states, leave the arguments unchanged):
    then the result is the same for any chunking and any order in which chunks finish. The reducer and its
    states travel between processes (Dask), so they must pickle. A class with these four methods is a
    ``Reducer`` (``isinstance(obj, sdekit.Reducer)`` checks the method names); no subclassing is needed.

    Examples
    --------
    The fraction of paths whose first component reaches a barrier at one of the save times:

    >>> class BarrierHit:
    ...     def __init__(self, barrier):
    ...         self.barrier = barrier
    ...     def init(self, t, dim):
    ...         return 0, 0
    ...     def update(self, state, t, x_chunk, failed_mask):
    ...         hit = (x_chunk[:, ~failed_mask, 0] >= self.barrier).any(axis=0)
    ...         return state[0] + int(hit.sum()), state[1] + hit.size
    ...     def merge(self, a, b):
    ...         return a[0] + b[0], a[1] + b[1]
    ...     def finalize(self, state):
    ...         return state[0] / state[1]
    >>> isinstance(BarrierHit(3.0), Reducer)
    True

    Methods
    -------
    init(t, dim) -> state
        The state of no paths. ``t``: the save times, shape ``(T,)``; ``dim``: the state dimension.
    update(state, t, x_chunk, failed_mask) -> state
        Add paths: ``x_chunk`` has shape ``(T, n, dim)`` (NumPy float64, C-contiguous: one leaf of paths),
        ``failed_mask`` shape ``(n,)`` marks the paths that failed (their states hold NaN from the failure on);
        the built-in reducers skip them. ``t`` is the ``(T,)`` array of save times.
    merge(a, b) -> state
        The state of the paths of ``a`` followed by those of ``b``.
    finalize(state) -> value
        The statistic.
    """

    def init(self, t: np.ndarray, dim: int) -> Any: ...

    def update(self, state: Any, t: np.ndarray, x_chunk: np.ndarray, failed_mask: np.ndarray) -> Any: ...

    def merge(self, a: Any, b: Any) -> Any: ...

    def finalize(self, state: Any) -> Any: ...


_REDUCER_METHODS = ("init", "update", "merge", "finalize")


class Histogram(NamedTuple):
    """Counts on fixed bins, per save time and component.

    Attributes
    ----------
    edges : ndarray (n_bins + 1,)
        Bin edges, increasing; bin ``j`` is ``[edges[j], edges[j + 1])``, the last bin also holds ``edges[-1]``
        (as :func:`numpy.histogram`).
    counts : ndarray of int64 (T, dim, n_bins)
    underflow, overflow : ndarray of int64 (T, dim)
        Paths below ``edges[0]`` and above ``edges[-1]``.
    """

    edges: np.ndarray
    counts: np.ndarray
    underflow: np.ndarray
    overflow: np.ndarray


@dataclass(frozen=True)
class EnsembleResult:
    """Statistics of an ensemble at the save times.

    Fields of statistics that were not requested are None. ``T = len(t)``; paths that failed (non-finite
    state, or an adaptive solve's step failure) are left out of every statistic and counted.

    Attributes
    ----------
    t : ndarray (T,)
        The save times, in the order of integration.
    n_paths : int
        Paths solved; ``n_paths - n_failed`` enter the statistics.
    n_failed : int
    failures : dict
        ``{reason: count}``: ``"non-finite state"``, ``"max_steps reached"``, ``"step size underflow"``.
    mean, mean_se : ndarray (T, dim)
        Sample mean and its standard error ``sqrt(var / n)``.
    var, var_se : ndarray (T, dim)
        Unbiased sample variance and its standard error ``sqrt((m4 - var^2 (n - 3) / (n - 1)) / n)`` from the
        fourth central moment ``m4`` (the variance of the sample variance; Cramér 1946, Mathematical Methods of
        Statistics, ch. 27).
    cov : ndarray (T, dim, dim)
        Unbiased sample covariance.
    min, max : ndarray (T, dim)
    quantiles : ndarray (len(quantile_levels), T, dim)
        KLL sketch estimates (Karnin, Lang & Liberty 2016). For ``sketch_k=200`` the normalised rank error
        ``|F(estimate) - level|`` is stated as 1.65 % at 99 % confidence (measured: at most 0.94 %; see
        :mod:`sdekit._kll`), on top of the sampling error of an empirical quantile.
    quantile_levels : ndarray
    histogram : Histogram
    phi_mean, phi_mean_se, phi_var, phi_var_se : ndarray (T, k)
        Moments of the user's ``phi(t, x)`` values (``k`` values per path), as for ``mean``/``var``.
    extra : dict
        ``{name: finalize(state)}`` of the user's reducers.
    method, backend : str
    seed : int or None
    chunk_paths, n_chunks, leaf_paths : int
    wall_seconds : float
    """

    t: np.ndarray
    n_paths: int
    n_failed: int
    failures: dict
    method: str
    backend: str
    seed: int | None
    chunk_paths: int
    n_chunks: int
    leaf_paths: int
    wall_seconds: float
    mean: np.ndarray | None = None
    mean_se: np.ndarray | None = None
    var: np.ndarray | None = None
    var_se: np.ndarray | None = None
    cov: np.ndarray | None = None
    min: np.ndarray | None = None
    max: np.ndarray | None = None
    quantiles: np.ndarray | None = None
    quantile_levels: np.ndarray | None = None
    histogram: Histogram | None = None
    phi_mean: np.ndarray | None = None
    phi_mean_se: np.ndarray | None = None
    phi_var: np.ndarray | None = None
    phi_var_se: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- built-in reducers


class Moments(NamedTuple):
    """Central moment sums of ``n`` paths: ``m_p = sum (x - mean)^p``, and the cross sums when kept."""

    n: int
    mean: np.ndarray
    m2: np.ndarray
    m3: np.ndarray
    m4: np.ndarray
    cross: np.ndarray | None


@cached_kernel(types.int64(F64_3, types.boolean[::1], F64_2, F64_2, F64_2, F64_2, F64_3, types.boolean),
               nogil=True)
def _leaf_moments(values, failed, mean, m2, m3, m4, cross, with_cross):
    """Two-pass central moment sums of the rows of ``values`` (T, n, k) not marked in ``failed``, into the zeroed
    ``mean``, ``m2``, ``m3``, ``m4`` (T, k) (and ``cross`` (T, k, k) when ``with_cross``); returns the rows used.

    The loops run in one fixed order, so the sums do not depend on how the caller laid out its data.
    """
    n_times, n, k = values.shape
    used = 0
    for r in range(n):
        if not failed[r]:
            used += 1
    if used == 0:
        return 0
    for j in range(n_times):
        for r in range(n):
            if not failed[r]:
                for c in range(k):
                    mean[j, c] += values[j, r, c]
        for c in range(k):
            mean[j, c] /= used
        for r in range(n):
            if failed[r]:
                continue
            for c in range(k):
                d = values[j, r, c] - mean[j, c]
                d2 = d * d
                m2[j, c] += d2
                m3[j, c] += d2 * d
                m4[j, c] += d2 * d2
                if with_cross:
                    for c2 in range(k):
                        cross[j, c, c2] += d * (values[j, r, c2] - mean[j, c2])
    return used


def _moment_sums(values: np.ndarray, failed: np.ndarray, with_cross: bool) -> Moments:
    """Two-pass moments of the rows of ``values`` (T, n, k) that did not fail (a compiled loop: no temporaries)."""
    n_times, _, k = values.shape
    mean, m2, m3, m4 = (np.zeros((n_times, k)) for _ in range(4))
    cross = np.zeros((n_times, k, k) if with_cross else (0, 0, 0))
    used = _leaf_moments(np.ascontiguousarray(values, dtype=np.float64), np.ascontiguousarray(failed, dtype=np.bool_),
                         mean, m2, m3, m4, cross, with_cross)
    return Moments(int(used), mean, m2, m3, m4, cross if with_cross else None)


def _merge_moments(a: Moments, b: Moments) -> Moments:
    """Pairwise update of the mean and central moment sums (Chan, Golub & LeVeque 1983; Pébay 2008, Sandia
    report SAND2008-6212, eqs. 3.1 and the cross-moment formula of §4)."""
    if a.n == 0:
        return b
    if b.n == 0:
        return a
    na, nb = float(a.n), float(b.n)
    n = na + nb
    delta = b.mean - a.mean
    d2 = delta * delta
    mean = a.mean + delta * (nb / n)
    m2 = a.m2 + b.m2 + d2 * (na * nb / n)
    m3 = a.m3 + b.m3 + d2 * delta * (na * nb * (na - nb) / (n * n)) + 3.0 * delta * (na * b.m2 - nb * a.m2) / n
    m4 = (a.m4 + b.m4 + d2 * d2 * (na * nb * (na * na - na * nb + nb * nb) / (n * n * n))
          + 6.0 * d2 * (na * na * b.m2 + nb * nb * a.m2) / (n * n) + 4.0 * delta * (na * b.m3 - nb * a.m3) / n)
    cross = None if a.cross is None else a.cross + b.cross + np.einsum("ti,tj->tij", delta, delta) * (na * nb / n)
    return Moments(a.n + b.n, mean, m2, m3, m4, cross)


def _moment_fields(state: Moments, prefix: str) -> dict:
    n = state.n
    if n == 0:
        nan = np.full_like(state.mean, np.nan)
        return {f"{prefix}mean": nan, f"{prefix}mean_se": nan, f"{prefix}var": nan, f"{prefix}var_se": nan}
    with np.errstate(divide="ignore", invalid="ignore"):
        var = state.m2 / (n - 1) if n > 1 else np.full_like(state.m2, np.nan)
        m4 = state.m4 / n
        var_se = np.sqrt(np.maximum(m4 - var * var * (n - 3) / (n - 1), 0.0) / n) if n > 1 else var
    return {f"{prefix}mean": state.mean, f"{prefix}mean_se": np.sqrt(var / n), f"{prefix}var": var,
            f"{prefix}var_se": var_se}


@dataclass(frozen=True)
class MomentsReducer:
    """Mean, variance (with standard errors) and optionally covariance of the states of the paths that did not
    fail."""

    with_cross: bool = False

    def init(self, t, dim):
        zeros = np.zeros((len(t), dim))
        return Moments(0, zeros, zeros, zeros, zeros, np.zeros((len(t), dim, dim)) if self.with_cross else None)

    def update(self, state, t, x_chunk, failed_mask):
        leaf = _moment_sums(x_chunk, failed_mask, self.with_cross)
        return state if leaf.n == 0 else _merge_moments(state, leaf)

    def merge(self, a, b):
        return _merge_moments(a, b)

    def finalize(self, state):
        out = _moment_fields(state, "")
        if self.with_cross:
            out["cov"] = state.cross / (state.n - 1) if state.n > 1 else np.full_like(state.cross, np.nan)
        return out


@dataclass(frozen=True)
class PhiMomentsReducer:
    """Mean and variance of ``phi(t, x)``, a user function of each save time and the states there."""

    phi: Any

    def _values(self, t, x):
        out = []
        for j, tj in enumerate(t):
            v = np.asarray(self.phi(float(tj), x[j]), dtype=np.float64)
            if v.ndim == 1:
                v = v[:, None]
            if v.ndim != 2 or v.shape[0] != x.shape[1]:
                raise ValueError(f"`phi(t, x)` must return shape (n,) or (n, k) for x of shape {x[j].shape}, got {v.shape}.")
            out.append(v)
        return np.stack(out)

    def init(self, t, dim):
        return None  # the number k of phi's values is known at the first update

    def update(self, state, t, x_chunk, failed_mask):
        kept = x_chunk[:, ~failed_mask]
        if kept.shape[1] == 0:
            return state
        leaf = _moment_sums(self._values(t, kept), np.zeros(kept.shape[1], dtype=np.bool_), False)
        return leaf if state is None else _merge_moments(state, leaf)

    def merge(self, a, b):
        return b if a is None else a if b is None else _merge_moments(a, b)

    def finalize(self, state):
        if state is None:
            return {"phi_mean": None, "phi_mean_se": None, "phi_var": None, "phi_var_se": None}
        return _moment_fields(state, "phi_")


@dataclass(frozen=True)
class ExtremaReducer:
    """Smallest and largest state of the paths that did not fail."""

    def init(self, t, dim):
        return np.full((len(t), dim), np.inf), np.full((len(t), dim), -np.inf)

    def update(self, state, t, x_chunk, failed_mask):
        kept = x_chunk[:, ~failed_mask]
        if kept.shape[1] == 0:
            return state
        return np.minimum(state[0], kept.min(axis=1)), np.maximum(state[1], kept.max(axis=1))

    def merge(self, a, b):
        return np.minimum(a[0], b[0]), np.maximum(a[1], b[1])

    def finalize(self, state):
        lo, hi = state
        empty = np.isinf(lo) & (lo > 0)
        return {"min": np.where(empty, np.nan, lo), "max": np.where(empty, np.nan, hi)}


@dataclass(frozen=True)
class HistogramReducer:
    """Counts of the states on fixed bins (``edges``), with under- and overflow."""

    edges: np.ndarray

    def init(self, t, dim):
        return np.zeros((len(t), dim, len(self.edges) + 1), dtype=np.int64)  # [underflow, bins..., overflow]

    def update(self, state, t, x_chunk, failed_mask):
        kept = x_chunk[:, ~failed_mask]
        n_slots = len(self.edges) + 1
        slot = np.searchsorted(self.edges, kept, side="right")  # 0: underflow, len(edges): overflow
        slot[kept == self.edges[-1]] = len(self.edges) - 1  # the last bin is closed
        coordinate = np.arange(state.shape[0] * state.shape[1]).reshape(state.shape[0], 1, state.shape[1])
        counts = np.bincount((coordinate * n_slots + slot).ravel(), minlength=state.size)
        return state + counts.reshape(state.shape)

    def merge(self, a, b):
        return a + b

    def finalize(self, state):
        return {"histogram": Histogram(self.edges, state[..., 1:-1], state[..., 0], state[..., -1])}


@dataclass(frozen=True)
class QuantileReducer:
    """Quantiles from a deterministic KLL sketch (:mod:`sdekit._kll`) of every (time, component) coordinate."""

    levels: tuple
    k: int
    seed: int

    def init(self, t, dim):
        return len(t), _kll.empty(len(t) * dim, self.k, self.seed)  # coordinate (j, i) is column j * dim + i

    def update(self, state, t, x_chunk, failed_mask):
        kept = x_chunk[:, ~failed_mask]
        items = np.ascontiguousarray(kept.transpose(1, 0, 2)).reshape(kept.shape[1], -1)
        return state[0], _kll.merge(state[1], _kll.from_items(items, self.k, self.seed))

    def merge(self, a, b):
        return a[0], _kll.merge(a[1], b[1])

    def finalize(self, state):
        n_times, sketch = state
        return {"quantiles": _kll.quantiles(sketch, self.levels).reshape(len(self.levels), n_times, -1)}


# ---------------------------------------------------------------------------------------------- chunks and the tree


@dataclass(frozen=True)
class _Job:
    """Everything a chunk needs, shared by all chunks (pickled to the workers)."""

    problem: Any
    x0: Any  # the shared x0, or None when x0 has one row per path (then each chunk carries its rows)
    t_span: tuple
    brownian: BrownianPath | None
    solve_options: dict
    reducers: dict
    n_paths: int
    leaf_paths: int


@dataclass(frozen=True)
class _Chunk:
    """The leaves ``[first_leaf, end_leaf)`` of a job (and their rows of a per-path ``x0``)."""

    job: _Job
    first_leaf: int
    end_leaf: int
    x0_rows: Any = None


class _ChunkResult(NamedTuple):
    nodes: dict  # {(level, index): {reducer key: state}}
    failures: dict
    n_failed: int


def _merge_states(reducers: dict, left: dict, right: dict) -> dict:
    return {key: reducer.merge(left[key], right[key]) for key, reducer in reducers.items()}


def _absorb(nodes: dict, level: int, index: int, states: dict, reducers: dict) -> None:
    """Put node ``(level, index)`` into ``nodes``, merging it with its sibling, and so on up, while it is there."""
    while (level, index ^ 1) in nodes:
        sibling = nodes.pop((level, index ^ 1))
        states = _merge_states(reducers, sibling, states) if index & 1 else _merge_states(reducers, states, sibling)
        level, index = level + 1, index >> 1
    nodes[(level, index)] = states


def _to_numpy(x) -> np.ndarray:
    if checks.is_tensor(x):
        x = x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def _run_chunk(chunk: _Chunk) -> _ChunkResult:
    """Solve the paths of a chunk and reduce them leaf by leaf into the chunk's aligned dyadic blocks."""
    job = chunk.job
    first = chunk.first_leaf * job.leaf_paths
    end = min(job.n_paths, chunk.end_leaf * job.leaf_paths)
    x0 = job.x0 if chunk.x0_rows is None else chunk.x0_rows
    brownian = None if job.brownian is None else job.brownian.paths_slice(first, end)
    sol = solve(job.problem, x0, job.t_span, n_paths=end - first, brownian=brownian, **job.solve_options)
    x, failed, t = _to_numpy(sol.x), np.asarray(sol.failed, dtype=bool), np.asarray(sol.t)
    dim = x.shape[2]
    nodes: dict = {}
    for leaf in range(chunk.first_leaf, chunk.end_leaf):
        lo = leaf * job.leaf_paths - first
        hi = min(end, (leaf + 1) * job.leaf_paths) - first
        leaf_x = np.ascontiguousarray(x[:, lo:hi])  # its memory layout, hence numpy's summation order, is the leaf's own
        states = {key: r.update(r.init(t, dim), t, leaf_x, failed[lo:hi]) for key, r in job.reducers.items()}
        _absorb(nodes, 0, leaf, states, job.reducers)
    return _ChunkResult(nodes, dict(sol.failure_reasons or {}), int(failed.sum()))


class _Chunks:
    """The chunks of a job, made lazily (an iterable with a length)."""

    def __init__(self, job: _Job, n_leaves: int, leaves_per_chunk: int, per_path_x0):
        self.job, self.n_leaves, self.leaves_per_chunk, self.per_path_x0 = job, n_leaves, leaves_per_chunk, per_path_x0

    def __len__(self):
        return -(-self.n_leaves // self.leaves_per_chunk)

    def __iter__(self):
        for first in range(0, self.n_leaves, self.leaves_per_chunk):
            end = min(self.n_leaves, first + self.leaves_per_chunk)
            rows = None
            if self.per_path_x0 is not None:
                rows = self.per_path_x0[first * self.job.leaf_paths : end * self.job.leaf_paths]
            yield _Chunk(self.job, first, end, rows)


# ---------------------------------------------------------------------------------------------- argument checks


def _statistics(statistics) -> tuple:
    if isinstance(statistics, str):
        statistics = (statistics,)
    try:
        names = tuple(statistics)
    except TypeError:
        raise ValueError(f"`statistics` must be a sequence of names from {STATISTICS}, got {statistics!r}.") from None
    for name in names:
        if name not in STATISTICS:
            raise ValueError(f"`statistics` has unknown statistic {name!r}; choose from {', '.join(STATISTICS)}.")
    return names


def _quantile_levels(levels) -> tuple:
    try:
        q = np.atleast_1d(np.asarray(levels, dtype=np.float64))
    except (TypeError, ValueError):
        raise ValueError(f"`quantiles` must be a sequence of levels in (0, 1), got {levels!r}.") from None
    if q.ndim != 1 or q.size == 0 or not np.all((q > 0) & (q < 1)):
        raise ValueError(f"`quantiles` levels must lie strictly between 0 and 1, got {levels!r}.")
    return tuple(float(v) for v in q)


def _bin_edges(bins) -> np.ndarray:
    if bins is None:
        raise ValueError("the 'histogram' statistic needs `bins`: an increasing array of edges or (lo, hi, n_bins).")
    if isinstance(bins, tuple) and len(bins) == 3 and isinstance(bins[2], numbers.Integral):
        lo, hi, n = bins
        if isinstance(n, bool) or n < 1 or not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"`bins` as (lo, hi, n_bins) needs finite lo < hi and n_bins >= 1, got {bins!r}.")
        return np.linspace(float(lo), float(hi), int(n) + 1)
    try:
        edges = np.asarray(bins, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"`bins` must be an increasing array of edges or (lo, hi, n_bins), got {bins!r}.") from None
    if edges.ndim != 1 or edges.size < 2 or not np.all(np.isfinite(edges)) or not np.all(np.diff(edges) > 0):
        raise ValueError(f"`bins` edges must be a finite, strictly increasing 1-D array of at least 2 values, got {bins!r}.")
    return edges


def _user_reducers(reducers) -> dict:
    if reducers is None:
        return {}
    if not isinstance(reducers, dict):
        raise ValueError(f"`reducers` must be a dict {{name: reducer}}, got {type(reducers).__name__}.")
    for name, reducer in reducers.items():
        if not isinstance(name, str):
            raise ValueError(f"`reducers` keys must be strings (the names in result.extra), got {name!r}.")
        missing = [m for m in _REDUCER_METHODS if not callable(getattr(reducer, m, None))]
        if missing:
            raise ValueError(f"reducer {name!r} lacks the method(s) {', '.join(missing)}; a reducer needs "
                             "init(t, dim), update(state, t, x_chunk, failed_mask), merge(a, b) and finalize(state).")
    return dict(reducers)


def _leaf_paths(leaf_paths) -> int:
    leaf_paths = checks.positive_int(leaf_paths, "leaf_paths")
    if leaf_paths & (leaf_paths - 1):
        raise ValueError(f"`leaf_paths` must be a power of two, got {leaf_paths}.")
    return leaf_paths


# ---------------------------------------------------------------------------------------------- the entry point


def ensemble(problem, x0, t_span, *, method: str, n_paths: int, seed: int | None = None, save_at=None,
             statistics=("mean", "var"), chunk_paths: int | None = None, client=None, n_steps: int | None = None,
             dt: float | None = None, rtol: float | None = None, atol: float | None = None, backend: str = "numba",
             phi=None, quantiles=(0.05, 0.25, 0.5, 0.75, 0.95), bins=None, reducers: dict | None = None,
             sketch_k: int = 200, progress: bool = False, device=None, dtype=None, max_steps: int = 100_000,
             leaf_paths: int = LEAF_PATHS, retries: int = 2) -> EnsembleResult:
    """Statistics of ``n_paths`` paths at the ``save_at`` times, solved and reduced chunk by chunk.

    Memory stays at one chunk of saved states (``chunk_paths * len(save_at) * dim`` numbers) per worker,
    whatever ``n_paths``. The result is bit-for-bit the same for any ``chunk_paths``, any ``client`` and any
    order in which chunks finish (see the module notes: leaves of ``leaf_paths`` paths merged in a fixed
    dyadic tree).

    Parameters
    ----------
    problem, x0, t_span, method, n_steps, dt, rtol, atol, backend, device, dtype, max_steps
        As for :func:`sdekit.solve`. ``x0`` may have one row per path (shape ``(n_paths, dim)``).
    n_paths : int
        Number of paths.
    seed : int, optional
        Seed of the ensemble's Brownian path (SDEs; path ``i`` depends on ``(seed, i)`` only). Random when
        omitted (the one drawn is in ``result.seed``). ODEs draw no noise: leave it out.
    save_at : sequence of float
        The times at which the statistics are taken (required).
    statistics : sequence of str
        Any of ``"mean"``, ``"var"`` (both come with standard errors), ``"cov"``, ``"min"``, ``"max"``,
        ``"quantiles"``, ``"histogram"``, ``"phi_mean"``, ``"phi_var"``; each is the field of that name of the
        result.
    chunk_paths : int, optional
        Paths per chunk (one ``solve``), rounded up to a multiple of ``leaf_paths``. Default: about 32 MiB of
        saved states per chunk.
    client : dask.distributed.Client, optional
        Run the chunks as Dask tasks on this cluster (needs ``pip install "sdekit[distributed]"``); lost chunks
        are recomputed (``retries``) and the result is unchanged.
    phi : callable, optional
        ``phi(t, x) -> (n,) or (n, k)`` values per path at save time ``t`` (``x``: the ``(n, dim)`` states
        there), for ``"phi_mean"``/``"phi_var"`` (e.g. a discounted payoff ``exp(-r t) max(x - K, 0)``).
    quantiles : sequence of float
        Levels in (0, 1) of the ``"quantiles"`` statistic.
    bins : array or (lo, hi, n_bins)
        Bin edges of the ``"histogram"`` statistic.
    reducers : dict, optional
        ``{name: reducer}`` of user statistics following the :class:`Reducer` protocol; results in
        ``result.extra[name]``.
    sketch_k : int
        Size parameter of the KLL quantile sketch (larger: more accurate, more memory).
    progress : bool
        Show a progress bar over the chunks.
    leaf_paths : int
        Paths per leaf of the merge tree, a power of two. The statistics depend on it (through round-off and
        the sketch), not on ``chunk_paths``.
    retries : int
        Dask retries of a failed chunk (with ``client``).

    Returns
    -------
    EnsembleResult
    """
    started = time.perf_counter()
    names = _statistics(statistics)
    user = _user_reducers(reducers)
    if not names and not user:
        raise ValueError("nothing to compute: give `statistics` or `reducers`.")
    n_paths = checks.positive_int(n_paths, "n_paths")
    if save_at is None:
        raise ValueError("`save_at` is required: the times at which ensemble() takes its statistics.")
    save_at = checks.times(save_at, "save_at")
    leaf_paths = _leaf_paths(leaf_paths)
    if chunk_paths is not None:
        chunk_paths = checks.positive_int(chunk_paths, "chunk_paths")
    sketch_k = checks.positive_int(sketch_k, "sketch_k")
    if sketch_k < 8:
        raise ValueError(f"`sketch_k` must be at least 8, got {sketch_k}.")
    wants_phi = "phi_mean" in names or "phi_var" in names
    if wants_phi and not callable(phi):
        raise ValueError("'phi_mean'/'phi_var' need `phi`, a function phi(t, x) -> (n,) or (n, k) values per path.")
    if phi is not None and not wants_phi:
        raise ValueError("`phi` is given but `statistics` asks for neither 'phi_mean' nor 'phi_var'.")

    t0, t1 = checks.time_span(t_span)
    x0_rows = _per_path_x0(x0, n_paths)
    is_sde = getattr(problem, "is_sde", False)
    if is_sde:
        if seed is None:
            seed = int(np.random.SeedSequence().entropy) & ((1 << 63) - 1)
        elif not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}.")
        seed = int(seed)

    builtin: dict = {}
    if "mean" in names or "var" in names or "cov" in names:
        builtin["moments"] = MomentsReducer(with_cross="cov" in names)
    if "min" in names or "max" in names:
        builtin["extrema"] = ExtremaReducer()
    if "histogram" in names:
        builtin["histogram"] = HistogramReducer(_bin_edges(bins))
    if "quantiles" in names:
        builtin["quantiles"] = QuantileReducer(_quantile_levels(quantiles), sketch_k, 0 if seed is None else seed)
    if wants_phi:
        builtin["phi"] = PhiMomentsReducer(phi)
    all_reducers = {("builtin", key): r for key, r in builtin.items()} | {("user", key): r for key, r in user.items()}

    # A one-path solve checks the rest of the arguments (and the problem's functions) in one clear line, up front.
    options = dict(method=method, n_steps=n_steps, dt=dt, rtol=rtol, atol=atol, backend=backend, max_steps=max_steps,
                   device=device, dtype=dtype, save_at=save_at)
    probe = solve(problem, x0 if x0_rows is None else x0_rows[:1], (t0, t1), n_paths=1, seed=seed, **options)
    brownian = None
    if is_sde:
        noise_dim = probe.brownian.noise_dim
        brownian = BrownianPath(seed, t_span=probe.brownian.t_span, n_paths=n_paths, noise_dim=noise_dim,
                                base_steps=probe.brownian.base_steps, levy_area=probe.brownian.levy_area)
    n_save, dim = probe.x.shape[0], probe.x.shape[2]
    if chunk_paths is None:
        chunk_paths = max(leaf_paths, _CHUNK_NUMBERS // max(1, n_save * dim))
    leaves_per_chunk = -(-chunk_paths // leaf_paths)
    n_leaves = -(-n_paths // leaf_paths)
    leaves_per_chunk = min(leaves_per_chunk, n_leaves)
    job = _Job(problem, x0 if x0_rows is None else None, (t0, t1), brownian, options, all_reducers, n_paths, leaf_paths)
    chunks = _Chunks(job, n_leaves, leaves_per_chunk, x0_rows)

    nodes: dict = {}
    failures: dict = {}
    n_failed = 0
    for _, result in _chunk_results(chunks, client, progress, retries):
        for (level, index), states in sorted(result.nodes.items()):
            _absorb(nodes, level, index, states, all_reducers)
        for reason, count in result.failures.items():
            failures[reason] = failures.get(reason, 0) + count
        n_failed += result.n_failed
    ordered = [nodes[key] for key in sorted(nodes, key=lambda node: node[1] << node[0])]
    root = ordered[0]
    for states in ordered[1:]:
        root = _merge_states(all_reducers, root, states)

    fields: dict = {}
    for key, reducer in builtin.items():
        fields.update(reducer.finalize(root[("builtin", key)]))
    fields = {name: value for name, value in fields.items() if name.removesuffix("_se") in names or name == "histogram"}
    if "quantiles" in names:
        fields["quantile_levels"] = np.asarray(builtin["quantiles"].levels)
    extra = {name: reducer.finalize(root[("user", name)]) for name, reducer in user.items()}
    return EnsembleResult(
        t=np.asarray(probe.t), n_paths=n_paths, n_failed=n_failed, failures=failures, method=probe.method,
        backend=probe.backend, seed=seed, chunk_paths=leaves_per_chunk * leaf_paths, n_chunks=len(chunks),
        leaf_paths=leaf_paths, wall_seconds=time.perf_counter() - started, extra=extra, **fields,
    )


def _per_path_x0(x0, n_paths):
    """``x0`` when it has one row per path (2-D with ``n_paths`` rows and more than one path), else None."""
    shape = tuple(getattr(x0, "shape", np.shape(x0)) if not isinstance(x0, numbers.Number) else ())
    if len(shape) == 2 and shape[0] == n_paths and n_paths > 1:
        return x0
    if len(shape) == 2 and shape[0] not in (1, n_paths):
        raise ValueError(f"`x0` has {shape[0]} rows but n_paths={n_paths}; give one row per path or one shared state.")
    return None


def _chunk_results(chunks: _Chunks, client, progress: bool, retries: int):
    """``(index, result)`` of every chunk: in this process in order, or as Dask tasks as they finish."""
    if client is not None:
        from . import _distributed

        yield from _distributed.map_chunks(client, _run_chunk, chunks, retries=retries, progress=progress)
        return
    from tqdm.auto import tqdm

    with tqdm(total=len(chunks), disable=not progress, desc="chunks", unit="chunk") as bar:
        for index, chunk in enumerate(chunks):
            yield index, _run_chunk(chunk)
            bar.update()

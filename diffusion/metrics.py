"""Distances between two samples, and the noise floor they have when both come from the same law.

A sample metric means little without its noise floor: two independent samples
of the same data law, of the same size ``n``, are already at a positive
distance (about ``c / sqrt(n)``). :func:`noise_floor` measures it on the data
itself, so a generative model can be judged by the ratio
``distance(samples, held-out data) / floor`` (1 is as good as the data).

* :func:`sliced_wasserstein` — mean over random unit directions of the 1-D
  Wasserstein-1 distance between the projected samples (sorted differences for
  equal sizes, the quantile-function integral otherwise).
* :func:`sliced_ks` — mean over directions of the two-sample Kolmogorov–Smirnov
  statistic of the projections.

Directions are drawn from a seeded generator, so the same ``seed`` compares
every sample along the same directions.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = ["sliced_wasserstein", "sliced_ks", "noise_floor", "Floor", "directions"]


def _pair(x, y):
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    for name, a in (("x", x), ("y", y)):
        if a.ndim != 2 or a.shape[0] < 2:
            raise ValueError(f"`{name}` must have shape (n, dim) with n >= 2, got {a.shape}.")
        if not np.all(np.isfinite(a)):
            bad = int(np.sum(~np.all(np.isfinite(a), axis=1)))
            raise ValueError(f"`{name}` has {bad} rows with non-finite values; a diverged sampler cannot be scored.")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"`x` and `y` must have the same dimension, got {x.shape[1]} and {y.shape[1]}.")
    return x, y


def directions(dim: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors in ``R^dim``, uniform on the sphere, from ``seed`` (shape ``(n, dim)``)."""
    v = np.random.default_rng(seed).standard_normal((n, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _w1_1d(a, b):
    """W1 between the empirical laws of the columns of ``a`` and ``b`` (projections, sorted in place)."""
    a.sort(axis=0)
    b.sort(axis=0)
    if a.shape[0] == b.shape[0]:
        return np.mean(np.abs(a - b), axis=0)
    # integral of |F_a^-1 - F_b^-1| over the merged quantile levels
    n, m = a.shape[0], b.shape[0]
    levels = np.union1d(np.arange(1, n + 1) / n, np.arange(1, m + 1) / m)
    widths = np.diff(np.r_[0.0, levels])
    ia = np.minimum(np.ceil(levels * n - 1e-9).astype(int) - 1, n - 1)
    ib = np.minimum(np.ceil(levels * m - 1e-9).astype(int) - 1, m - 1)
    return widths @ np.abs(a[ia] - b[ib])


def sliced_wasserstein(x, y, *, n_slices: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-1 distance between the rows of ``x`` and ``y`` (``n_slices`` directions)."""
    x, y = _pair(x, y)
    d = directions(x.shape[1], n_slices, seed)
    return float(np.mean(_w1_1d(x @ d.T, y @ d.T)))


def sliced_ks(x, y, *, n_slices: int = 64, seed: int = 0) -> float:
    """Mean two-sample Kolmogorov–Smirnov statistic of the projections of ``x`` and ``y`` on ``n_slices`` directions."""
    x, y = _pair(x, y)
    d = directions(x.shape[1], n_slices, seed)
    px, py = np.sort(x @ d.T, axis=0), np.sort(y @ d.T, axis=0)
    n, m = px.shape[0], py.shape[0]
    out = np.empty(n_slices)
    for j in range(n_slices):
        grid = np.concatenate([px[:, j], py[:, j]])
        fx = np.searchsorted(px[:, j], grid, side="right") / n
        fy = np.searchsorted(py[:, j], grid, side="right") / m
        out[j] = np.max(np.abs(fx - fy))
    return float(np.mean(out))


class Floor:
    """Noise floor of a two-sample distance: its mean and standard deviation over independent pairs."""

    def __init__(self, values):
        self.values = np.asarray(values, dtype=np.float64)

    @property
    def mean(self) -> float:
        return float(self.values.mean())

    @property
    def std(self) -> float:
        return float(self.values.std(ddof=1)) if self.values.size > 1 else math.nan

    def __repr__(self):
        return f"Floor(mean={self.mean:.4g}, std={self.std:.2g}, pairs={self.values.size})"


def noise_floor(draw: Callable[[int, int], np.ndarray], n: int, *, metric: str = "sliced_wasserstein",
                pairs: int = 8, seed: int = 0, **kwargs) -> Floor:
    """The distance between two independent data samples of size ``n``, over ``pairs`` pairs.

    ``draw(n, seed)`` returns ``n`` fresh data rows for each ``seed``; ``metric``
    is ``"sliced_wasserstein"`` or ``"sliced_ks"`` (``kwargs`` go to it).
    """
    fn = {"sliced_wasserstein": sliced_wasserstein, "sliced_ks": sliced_ks}.get(metric)
    if fn is None:
        raise ValueError(f"`metric` must be 'sliced_wasserstein' or 'sliced_ks', got {metric!r}.")
    if not (isinstance(pairs, int) and pairs >= 2):
        raise ValueError(f"`pairs` must be an integer >= 2 (the floor's spread needs two), got {pairs!r}.")
    vals = [fn(draw(n, 2 * (seed + k) + 1_000_001), draw(n, 2 * (seed + k) + 1_000_002), **kwargs)
            for k in range(pairs)]
    return Floor(vals)

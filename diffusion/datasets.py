"""Data that needs no download: 2-D toy sets generated on the fly, and scikit-learn's 8x8 digits.

``load(name, n, seed=...)`` returns a :class:`Dataset` with ``x`` (float64, ``(n, dim)``),
``labels`` (or ``None``) and what the likelihood needs to report bits per
dimension (``bin_width`` of the dequantised pixels). The 2-D sets are scaled to
about unit variance; the digits' 17 grey levels (0..16) map to ``[-1, 1]``.

========================= ======================================================
``"moons"``                two interleaving half circles (the law of ``make_moons``, drawn i.i.d.), noise 0.05
``"swiss_roll"``           the 2-D swiss roll (``make_swiss_roll``, coordinates x and z), noise 0.25
``"checkerboard"``         uniform on the 8 black squares of a 4x4 board on ``[-2, 2]^2``
``"gmm"``                  8 Gaussians on a circle of radius 2 (std 0.1), labels = component
``"digits"``               the 1,797 8x8 handwritten digits (``load_digits``), labels 0..9;
                           uniformly dequantised within each grey level
========================= ======================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdekit.checks import require

__all__ = ["DATASETS", "SPLITS", "Dataset", "load", "log_prob"]

DATASETS = ("moons", "swiss_roll", "checkerboard", "gmm", "digits")


@dataclass
class Dataset:
    """A data set: rows of ``x``, optional integer ``labels``, and its description."""

    name: str
    x: np.ndarray
    labels: np.ndarray | None
    n_classes: int | None
    image_shape: tuple | None = None  # (channels, size, size) for images
    bin_width: float | None = None  # width of one grey level after scaling (for bits/dim)

    @property
    def dim(self) -> int:
        return self.x.shape[1]


SPLITS = ("all", "train", "test")
DIGITS_TEST = 297  # held-out digits (a fixed 16.5%), the rest (1,500) train


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")


def load(name: str, n: int | None = None, *, seed: int = 0, split: str = "all") -> Dataset:
    """Make (toy sets) or load (digits) ``n`` rows of data set ``name``.

    ``split``: for the digits, ``"train"`` (1,500 images), ``"test"`` (a fixed
    297 held out, the same for every ``seed``) or ``"all"`` (1,797); ``n``
    resamples rows of that split (all of them if ``None``). The toy sets are
    drawn afresh: ``"test"`` uses a random stream independent of ``"train"`` /
    ``"all"`` for the same ``seed``, so a held-out sample never repeats a
    training row.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASETS)}.")
    if n is not None and (not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 1):
        raise ValueError(f"`n` must be a positive integer, got {n!r}.")
    _check_split(split)
    rng = np.random.default_rng([seed, 1 if split == "test" else 0])
    if name == "digits":
        d = require("sklearn.datasets", extra="diffusion", what="the digits data set").load_digits()
        k, y = d.data.astype(np.float64), d.target.astype(np.int64)
        if split != "all":
            order = np.random.default_rng(20261125).permutation(len(k))
            keep = order[-DIGITS_TEST:] if split == "test" else order[:-DIGITS_TEST]
            k, y = k[keep], y[keep]
        if n is not None:
            idx = rng.choice(len(k), size=n, replace=n > len(k))
            k, y = k[idx], y[idx]
        w = 2.0 / 17.0  # 17 grey levels on [-1, 1]
        x = -1.0 + (k + rng.random(k.shape)) * w
        return Dataset(name, x, y, 10, image_shape=(1, 8, 8), bin_width=w)
    n = 10_000 if n is None else int(n)
    if name == "moons":
        # drawn independently (sklearn's make_moons spaces the angles evenly, which is not a sample of the law
        # and would make the two-sample noise floor look several times smaller than it is)
        y = rng.integers(2, size=n)
        a = np.pi * rng.random(n)
        x = np.where(y[:, None] == 0, np.c_[np.cos(a), np.sin(a)], np.c_[1.0 - np.cos(a), 0.5 - np.sin(a)])
        x = x + _MOONS_NOISE * rng.standard_normal((n, 2))
        x = (x - _MOONS_SHIFT) / _MOONS_SCALE
        return Dataset(name, x, y.astype(np.int64), 2)
    if name == "swiss_roll":
        make_swiss_roll = require("sklearn.datasets", extra="diffusion", what="the swiss_roll data set").make_swiss_roll
        pts, _ = make_swiss_roll(n, noise=0.25, random_state=int(rng.integers(2**31)))
        return Dataset(name, pts[:, [0, 2]] / 7.0, None, None)
    if name == "checkerboard":
        cells = np.array([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0], dtype=np.float64)
        pick = cells[rng.integers(len(cells), size=n)]
        x = -2.0 + pick + rng.random((n, 2))
        return Dataset(name, x, None, None)
    k = rng.integers(8, size=n)
    angle = k * (2 * np.pi / 8)
    x = 2.0 * np.c_[np.cos(angle), np.sin(angle)] + 0.1 * rng.standard_normal((n, 2))
    return Dataset(name, x, k.astype(np.int64), 8)


_MOONS_SHIFT, _MOONS_SCALE, _MOONS_NOISE = np.array([0.5, 0.25]), np.array([0.87, 0.5]), 0.05


def log_prob(name: str, x, *, nodes: int = 1001) -> np.ndarray | None:
    """The exact log-density of the toy data law at the rows of ``x`` (``None`` where it has none in closed form).

    ``"gmm"`` and ``"checkerboard"`` are closed forms; ``"moons"`` is a uniform
    angle on each half circle convolved with Gaussian noise, integrated over
    the angle by the trapezoidal rule on ``nodes`` points (the integrand is
    smooth and the step is 16 times finer than the noise, so the error,
    ~exp(-2 pi^2 16^2), is far below rounding). ``"swiss_roll"`` and ``"digits"`` return ``None``.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASETS)}.")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        return None if name in ("swiss_roll", "digits") else _bad_shape(x)
    if name == "gmm":
        angle = np.arange(8) * (2 * np.pi / 8)
        mu = 2.0 * np.c_[np.cos(angle), np.sin(angle)]
        d2 = ((x[:, None, :] - mu[None]) ** 2).sum(-1) / 0.1**2
        return _logsumexp(-0.5 * d2, axis=1) - np.log(8) - np.log(2 * np.pi * 0.1**2)
    if name == "checkerboard":
        i, j = np.floor(x[:, 0] + 2.0), np.floor(x[:, 1] + 2.0)
        inside = (i >= 0) & (i < 4) & (j >= 0) & (j < 4) & ((i + j) % 2 == 0)
        return np.where(inside, -np.log(8.0), -np.inf)
    if name == "moons":
        z = x * _MOONS_SCALE + _MOONS_SHIFT  # back to make_moons' coordinates
        a = np.linspace(0.0, np.pi, nodes)
        centres = np.concatenate([np.c_[np.cos(a), np.sin(a)], np.c_[1.0 - np.cos(a), 0.5 - np.sin(a)]])
        wq = np.full(nodes, np.pi / (nodes - 1))
        wq[[0, -1]] *= 0.5
        logw = np.log(np.concatenate([wq, wq]) / (2 * np.pi))  # moon 1/2, angle density 1/pi
        out = np.empty(len(z))
        for lo in range(0, len(z), 512):
            d2 = ((z[lo:lo + 512, None, :] - centres[None]) ** 2).sum(-1) / _MOONS_NOISE**2
            out[lo:lo + 512] = _logsumexp(logw - 0.5 * d2, axis=1)
        return out - np.log(2 * np.pi * _MOONS_NOISE**2) + np.log(np.prod(_MOONS_SCALE))
    return None


def _bad_shape(x):
    raise ValueError(f"`x` must have shape (n, 2) for a 2-D data set, got {x.shape}.")


def _logsumexp(a, axis):
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis=axis))

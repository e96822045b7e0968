"""Data that needs no download: 2-D toy sets generated on the fly, and scikit-learn's 8x8 digits.

``load(name, n, seed=...)`` returns a :class:`Dataset` with ``x`` (float64, ``(n, dim)``),
``labels`` (or ``None``) and what the likelihood needs to report bits per
dimension (``bin_width`` of the dequantised pixels). The 2-D sets are scaled to
about unit variance; the digits' 17 grey levels (0..16) map to ``[-1, 1]``.

========================= ======================================================
``"moons"``                two interleaving half circles (``sklearn.datasets.make_moons``), noise 0.05
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

__all__ = ["DATASETS", "Dataset", "load"]

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


def load(name: str, n: int | None = None, *, seed: int = 0) -> Dataset:
    """Make (toy sets) or load (digits) ``n`` rows of data set ``name`` (digits: all 1,797 if ``n`` is None)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASETS)}.")
    if n is not None and (not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 1):
        raise ValueError(f"`n` must be a positive integer, got {n!r}.")
    rng = np.random.default_rng(seed)
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        k, y = d.data.astype(np.float64), d.target.astype(np.int64)
        if n is not None:
            idx = rng.choice(len(k), size=n, replace=n > len(k))
            k, y = k[idx], y[idx]
        w = 2.0 / 17.0  # 17 grey levels on [-1, 1]
        x = -1.0 + (k + rng.random(k.shape)) * w
        return Dataset(name, x, y, 10, image_shape=(1, 8, 8), bin_width=w)
    n = 10_000 if n is None else int(n)
    if name == "moons":
        from sklearn.datasets import make_moons

        x, y = make_moons(n, noise=0.05, random_state=int(rng.integers(2**31)))
        x = (x - np.array([0.5, 0.25])) / np.array([0.87, 0.5])
        return Dataset(name, x, y.astype(np.int64), 2)
    if name == "swiss_roll":
        from sklearn.datasets import make_swiss_roll

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

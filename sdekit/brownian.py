"""Seeded, refinable Brownian paths that can be queried on any interval."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

from . import _bridge, _cursor, _rng
from ._jitcache import heal_module
from ._rng import seed_to_key
from .checks import require

# The compiled tree is cached on disk: discard an unreadable cache entry and recompile instead of failing.
for _module in (_rng, _bridge, _cursor):
    heal_module(_module)

__all__ = ["BrownianBlock", "BrownianPath", "dyadic_level"]

# Increments per NumPy block (~1 MiB of float64) and per torch block (~32 MiB: fewer kernel launches and thread starts).
_NUMPY_BLOCK_NUMBERS = 1 << 17
_TORCH_BLOCK_NUMBERS = 1 << 22


class BrownianBlock(NamedTuple):
    """Consecutive steps of a Brownian path in integration order, as read by :meth:`BrownianPath.blocks`.

    Attributes
    ----------
    first_step : int
        Index, in integration order, of the block's first step.
    dw : numpy.ndarray or torch.Tensor
        Increments, shape ``(k, n, noise_dim)``: ``dw[j]`` is the increment of step ``first_step + j``.
    levy_area : numpy.ndarray or torch.Tensor or None
        Space-time Lévy areas of the same steps and shape, or None when the path has no Lévy area.
    """

    first_step: int
    dw: Any
    levy_area: Any


def dyadic_level(n_steps: int, base_steps: int) -> int | None:
    """The number of halvings ``k`` with ``n_steps == base_steps * 2**k``, or None if there is none."""
    if n_steps < base_steps or n_steps % base_steps:
        return None
    q = n_steps // base_steps
    if q & (q - 1):
        return None
    return q.bit_length() - 1


def _odd_part(n: int) -> int:
    while n % 2 == 0:
        n //= 2
    return n


@dataclass(frozen=True)
class BrownianPath:
    """A virtual Brownian path, fixed by its seed, that any solver can read.

    Nothing is stored: every value is a pure function of ``seed`` and of the
    path, component and dyadic node it belongs to. Hence

    * the same seed gives the same path whatever the number of threads and
      however the paths are split into batches;
    * the path on ``base_steps * 2**k`` steps is an exact sub-sample of the
      path on ``base_steps * 2**(k+1)`` steps (dyadic Brownian bridge), so
      error-versus-step studies compare every step count on one path;
    * ``W(t)`` can be evaluated at any time, and with ``levy_area=True`` each
      step also carries the space-time Levy area ``H`` (Var ``h/12``, independent
      of the increment), from which ``I_(1,0) = h (dW/2 + H)``.

    Parameters
    ----------
    seed : int
        Any non-negative integer.
    t_span : (float, float)
        ``(t0, t1)`` with ``t0 < t1``; ``W(t0) = 0``. A solve that runs
        backwards from ``t1`` to ``t0`` reads the same path in reverse.
    n_paths : int
        Number of independent paths.
    noise_dim : int
        Number of independent Brownian components per path.
    base_steps : int
        Number of base cells. Grids of ``base_steps * 2**k`` steps are exact;
        ``solve`` picks the odd part of its ``n_steps`` when it makes a path.
    levy_area : bool
        Also generate the space-time Levy area. A path with Levy area is a
        different sample from one without, for the same seed.
    first_path : int
        Index, in a larger ensemble, of this object's path 0: local path ``i``
        is the ensemble's path ``first_path + i`` (its numbers depend on that
        index only). :meth:`paths_slice` makes such views.

    Notes
    -----
    Normals come from a counter-based hash (SplitMix64 finaliser; Steele, Lea
    & Flood 2014) and an exact ziggurat (Marsaglia & Tsang 2000). A node of the
    tree is split into its halves by the exact conditional law of ``(dW, H)``
    given the node's ``(dW, H)``
    (the Brownian tree with space-time Levy area of J. Foster, "Numerical
    approximations for stochastic differential equations", Oxford DPhil
    thesis, 2020).
    Every backend reads the path through :meth:`blocks`; :meth:`interval` and
    :meth:`W` read the same tree at any times. A time that is not a dyadic
    point of the base grid to 48 levels lies inside a leaf of length
    ``(t1 - t0) / base_steps / 2**48``; it is drawn by the exact conditional law
    of ``(W, integral of W)`` at that fraction of the leaf, keyed by the leaf (two
    different such times in the same leaf are each exact, not jointly).
    """

    seed: int
    t_span: tuple[float, float] = (0.0, 1.0)
    n_paths: int = 1
    noise_dim: int = 1
    base_steps: int = 1
    levy_area: bool = False
    first_path: int = 0
    _seed_key: np.uint64 = field(init=False, repr=False, compare=False)

    MAX_DEPTH = 48

    def __post_init__(self):
        if not isinstance(self.seed, numbers.Integral) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"`seed` must be a non-negative integer, got {self.seed!r}.")
        try:
            t0, t1 = (float(v) for v in self.t_span)
        except (TypeError, ValueError):
            raise ValueError(f"`t_span` must be a pair of numbers (t0, t1), got {self.t_span!r}.") from None
        if not (math.isfinite(t0) and math.isfinite(t1)) or not t0 < t1:
            raise ValueError(
                f"`t_span` must satisfy t0 < t1 with finite values, got {self.t_span!r}; "
                "a reverse-time solve reads a path on (min, max) backwards."
            )
        for name in ("n_paths", "noise_dim", "base_steps"):
            v = getattr(self, name)
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {v!r}.")
        object.__setattr__(self, "t_span", (t0, t1))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "n_paths", int(self.n_paths))
        object.__setattr__(self, "noise_dim", int(self.noise_dim))
        object.__setattr__(self, "base_steps", int(self.base_steps))
        object.__setattr__(self, "levy_area", bool(self.levy_area))
        if not isinstance(self.first_path, numbers.Integral) or isinstance(self.first_path, bool) or self.first_path < 0:
            raise ValueError(f"`first_path` must be a non-negative integer, got {self.first_path!r}.")
        object.__setattr__(self, "first_path", int(self.first_path))
        object.__setattr__(self, "_seed_key", seed_to_key(self.seed))

    @classmethod
    def for_steps(cls, seed, t_span, n_steps, **kw) -> BrownianPath:
        """A path whose base grid fits ``n_steps`` and every ``n_steps * 2**k``."""
        return cls(seed, t_span=t_span, base_steps=_odd_part(int(n_steps)), **kw)

    def paths_slice(self, start: int, stop: int) -> BrownianPath:
        """The paths ``start, ..., stop - 1`` of this one, as a path of ``stop - start`` paths.

        Its path ``i`` is this path's path ``start + i``, number for number, so a
        solve driven by ``path.paths_slice(a, b)`` gives exactly the rows ``a:b``
        of the solve driven by ``path`` (how :func:`sdekit.ensemble` cuts an
        ensemble into chunks).
        """
        for name, v in (("start", start), ("stop", stop)):
            if not isinstance(v, numbers.Integral) or isinstance(v, bool):
                raise ValueError(f"`{name}` must be an integer, got {v!r}.")
        if not 0 <= start < stop <= self.n_paths:
            raise ValueError(f"paths_slice needs 0 <= start < stop <= n_paths={self.n_paths}, got ({start}, {stop}).")
        return replace(self, n_paths=int(stop - start), first_path=self.first_path + int(start))

    @property
    def cell_length(self) -> float:
        t0, t1 = self.t_span
        return (t1 - t0) / self.base_steps

    def level(self, n_steps: int) -> int:
        """Dyadic level of a grid of ``n_steps`` steps; ValueError if it does not fit."""
        if not isinstance(n_steps, numbers.Integral) or n_steps < 1:
            raise ValueError(f"`n_steps` must be a positive integer, got {n_steps!r}.")
        depth = dyadic_level(int(n_steps), self.base_steps)
        if depth is None:
            raise ValueError(
                f"n_steps={n_steps} is not a dyadic refinement of this BrownianPath "
                f"(base_steps={self.base_steps}); use n_steps = {self.base_steps} * 2**k, "
                f"or make the path with BrownianPath.for_steps(seed, t_span, {n_steps})."
            )
        if depth > 40:
            raise ValueError(f"n_steps={n_steps} needs {depth} dyadic levels; at most 40 are supported.")
        return depth

    def grid(self, n_steps: int) -> np.ndarray:
        """The ``n_steps + 1`` grid times, from ``t0`` to ``t1``."""
        self.level(n_steps)
        t0, t1 = self.t_span
        return t0 + (t1 - t0) * (np.arange(n_steps + 1) / n_steps)

    def _path_range(self, paths) -> tuple[int, int]:
        """``(first_path, end_path)`` of a ``paths`` argument (None: all paths), as lane indices: offset by
        :attr:`first_path`."""
        first, end = self._local_range(paths)
        return self.first_path + first, self.first_path + end

    def _local_range(self, paths) -> tuple[int, int]:
        if paths is None:
            return 0, self.n_paths
        if isinstance(paths, range | slice):
            first, end, stride = paths.start or 0, self.n_paths if paths.stop is None else paths.stop, paths.step or 1
            if stride != 1 or not 0 <= first < end <= self.n_paths:
                raise ValueError(
                    f"`paths` must be a contiguous range inside 0..{self.n_paths}, got {paths!r}."
                )
            return int(first), int(end)
        raise ValueError(f"`paths` must be None, a range or a slice, got {type(paths).__name__}.")

    def blocks(self, n_steps: int, *, paths=None, reverse: bool = False, block_steps: int | None = None, device=None,
               dtype=None, generator: str | None = None, reuse_buffers=False) -> Iterator[BrownianBlock]:
        """The increments on the grid of ``n_steps`` steps, block by block in integration order.

        This is how every backend reads a path: a block holds a few consecutive
        steps of all the requested paths, and memory stays bounded by the block
        size whatever ``n_steps``. The tree walk is carried from one block to the
        next, so a whole reading costs one bridge split per step.

        Parameters
        ----------
        n_steps : int
            Number of steps of the grid; ``base_steps * 2**k`` for some ``k >= 0``.
        paths : range or slice, optional
            Contiguous path indices to read (default: all ``n_paths``); the
            numbers of a path do not depend on which others are read with it.
        reverse : bool
            Read from ``t1`` to ``t0``: step ``k`` is then the forward step
            ``n_steps - 1 - k`` and its increment is negated,
            ``dw[k] = W(t_{k+1}) - W(t_k)`` along the direction of integration;
            the space-time Lévy area is not negated.
        block_steps : int, optional
            Most steps per block. The default bounds a block to about 1 MiB of
            increments for NumPy and 32 MiB for torch tensors. The torch tree
            yields whole subtrees, so its blocks may be shorter.
        device, dtype : optional
            Either one makes the blocks torch tensors on ``device`` (default CPU)
            in ``dtype`` (default ``torch.float64``): on CPU the compiled tree
            fills them, split by paths over Numba's threads; elsewhere the same
            tree runs as torch kernels. The numbers agree to round-off.
            Without them the blocks are NumPy float64 arrays.
        generator : {"numba", "torch"}, optional
            Force the tensor generator (``"numba"`` only makes CPU tensors).
        reuse_buffers : bool or callable
            Let the next block overwrite the arrays of the previous one (no
            allocation per block). Only for a consumer that keeps no reference to
            a block, nor to a result computed from it in place (such as an
            autograd graph), once it asks for the next. A callable is asked
            before each refill (``reuse_buffers() -> bool``): the torch backend
            reuses while the state it integrates records no graph.

        Yields
        ------
        BrownianBlock
            ``(first_step, dw, levy_area)``; ``dw`` and ``levy_area`` have shape
            ``(k, n, noise_dim)`` with ``n = len(paths)``; ``levy_area`` is None
            when the path has no Lévy area. Concatenated over the blocks they are
            :meth:`increments` exactly.
        """
        level = self.level(n_steps)
        first_path, end_path = self._path_range(paths)
        if block_steps is not None and (not isinstance(block_steps, numbers.Integral) or block_steps < 1):
            raise ValueError(f"`block_steps` must be a positive integer or None, got {block_steps!r}.")
        lanes = (end_path - first_path) * self.noise_dim
        if device is None and dtype is None and generator is None:
            steps = max(1, min(n_steps, block_steps or _NUMPY_BLOCK_NUMBERS // lanes))
            return self._compiled_blocks(n_steps, level, first_path, end_path, bool(reverse), steps, reuse_buffers)
        torch = require("torch", extra="torch", what="BrownianPath tensors (device=, dtype= or generator=)")
        device = torch.device("cpu" if device is None else device)
        dtype = torch.float64 if dtype is None else dtype
        if generator is None:
            generator = "numba" if device.type == "cpu" else "torch"
        steps = max(1, min(n_steps, block_steps or _TORCH_BLOCK_NUMBERS // lanes))
        if generator == "numba":
            if device.type != "cpu":
                raise ValueError("`generator`='numba' makes CPU tensors; use generator='torch' on other devices.")
            host_dtype = np.float32 if dtype == torch.float32 else np.float64
            return self._host_tensor_blocks(n_steps, level, first_path, end_path, bool(reverse), steps, reuse_buffers,
                                            host_dtype, dtype)
        if generator == "torch":
            return self._device_tensor_blocks(n_steps, level, first_path, end_path, bool(reverse), steps, device, dtype)
        raise ValueError(f"`generator` must be 'numba' or 'torch', got {generator!r}.")

    def _compiled_blocks(self, n_steps, level, first_path, end_path, reverse, block_steps, reuse_buffers,
                         host_dtype=np.float64, threads=1):
        """Blocks from the compiled tree (:mod:`sdekit._bridge`), NumPy arrays of ``host_dtype``.

        With ``threads > 1`` the paths are cut into equal sub-batches (a multiple
        of ``threads`` of them, at most 4096 paths each), each walked by its own
        :class:`~sdekit._bridge.TreeWalk` and filled on a pool of threads (the
        compiled fill releases the GIL).
        """
        n_paths, noise_dim = end_path - first_path, self.noise_dim
        n_batches = 1
        if threads > 1:
            n_batches = -(-max(threads, -(-n_paths // 4096)) // threads) * threads
        size = max(1, -(-n_paths // n_batches))
        walks = [((start - first_path) * noise_dim,
                  _bridge.new_walk(self._seed_key, start, min(end_path, start + size) - start, noise_dim, self.base_steps,
                                   level, self.cell_length, reverse, self.levy_area))
                 for start in range(first_path, end_path, size)]
        threads = min(threads, len(walks))
        per_thread = -(-len(walks) // threads)
        groups = [walks[i : i + per_thread] for i in range(0, len(walks), per_thread)]

        def fill(group, first_step, dw, area):
            for first_lane, walk in group:
                _bridge.fill(walk, first_step, dw, area, first_lane)

        pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 else None
        dw = area = None
        try:
            for first_step in range(0, n_steps, block_steps):
                k = min(block_steps, n_steps - first_step)
                reuse = reuse_buffers() if callable(reuse_buffers) else reuse_buffers
                if dw is None or not reuse or dw.shape[0] != k:
                    dw = np.empty((k, n_paths, noise_dim), dtype=host_dtype)
                    area = np.empty((k, n_paths, noise_dim), dtype=host_dtype) if self.levy_area else None
                lanes_dw = dw.reshape(k, -1)
                lanes_area = lanes_dw[:0] if area is None else area.reshape(k, -1)  # not touched without Lévy area
                if pool is None:
                    fill(walks, first_step, lanes_dw, lanes_area)
                else:
                    for future in [pool.submit(fill, group, first_step, lanes_dw, lanes_area) for group in groups]:
                        future.result()
                yield BrownianBlock(first_step, dw, area)
        finally:
            if pool is not None:
                pool.shutdown()

    def _host_tensor_blocks(self, n_steps, level, first_path, end_path, reverse, block_steps, reuse_buffers, host_dtype,
                            dtype):
        import numba
        import torch

        for block in self._compiled_blocks(n_steps, level, first_path, end_path, reverse, block_steps, reuse_buffers,
                                           host_dtype, numba.get_num_threads()):
            dw = torch.from_numpy(block.dw).to(dtype)
            yield BrownianBlock(block.first_step, dw, None if block.levy_area is None else torch.from_numpy(block.levy_area).to(dtype))

    def _device_tensor_blocks(self, n_steps, level, first_path, end_path, reverse, block_steps, device, dtype):
        from ._rng import lane_keys
        from ._torch_bridge import TorchTree

        tree = TorchTree(lane_keys(self._seed_key, first_path, end_path - first_path, self.noise_dim), self.noise_dim,
                         self.base_steps, level, self.cell_length, self.levy_area, device)
        for block in tree.blocks(reverse, block_steps):
            dw = block.dw.to(dtype)
            yield BrownianBlock(block.first_step, dw, None if block.levy_area is None else block.levy_area.to(dtype))

    def increments(self, n_steps: int, *, paths=None, reverse: bool = False, device=None, dtype=None,
                   generator: str | None = None):
        """Increments on the grid of ``n_steps`` steps.

        Returns ``dW`` of shape ``(n_steps, n, noise_dim)`` and, if the path has
        Levy area, ``(dW, H)``. With ``reverse=True`` the steps run from ``t1``
        to ``t0`` and ``dW[k] = W(t_{k+1}) - W(t_k)`` along that direction.

        With ``device`` (or ``dtype``) the result is a torch tensor made there:
        on CPU by the compiled tree, elsewhere by the same tree in torch
        kernels (``generator="numba"`` or ``"torch"`` forces one; both give the
        same numbers up to round-off). Without them it is a NumPy array.
        This is :meth:`blocks` read in one go.
        """
        tensors = device is not None or dtype is not None or generator is not None
        parts = list(self.blocks(n_steps, paths=paths, reverse=reverse, block_steps=None if tensors else n_steps,
                                 device=device, dtype=dtype, generator=generator))
        if len(parts) == 1:
            dw, area = parts[0].dw, parts[0].levy_area
        else:
            import torch

            dw = torch.cat([part.dw for part in parts])
            area = torch.cat([part.levy_area for part in parts]) if self.levy_area else None
        return (dw, area) if self.levy_area else dw

    def on_grid(self, n_steps: int, *, paths=None) -> np.ndarray:
        """W on the grid of ``n_steps`` steps: shape ``(n_steps + 1, n, noise_dim)``."""
        dw = self.increments(n_steps, paths=paths)
        if self.levy_area:
            dw = dw[0]
        out = np.zeros((n_steps + 1,) + dw.shape[1:])
        np.cumsum(dw, axis=0, out=out[1:])
        return out

    def _in_cells(self, t, name) -> np.ndarray:
        """Times ``t`` (1-D float64) in cell units; a time within 8 ulps of a dyadic point of level 40 is that point."""
        t0, t1 = self.t_span
        tol = 1e-12 * (t1 - t0)
        outside = ~np.isfinite(t) | (t < t0 - tol) | (t > t1 + tol)
        if outside.any():
            raise ValueError(f"`{name}` must lie in the path's t_span {self.t_span}, got {float(t[outside][0])}.")
        tau = np.clip((t - t0) / self.cell_length, 0.0, float(self.base_steps))
        # Grid times (at most 40 levels) computed in floating point land a few ulps off their node.
        nearest = np.round(tau * 2.0**40) / 2.0**40
        snap = np.abs(tau - nearest) <= 8.0 * np.finfo(float).eps * np.maximum(1.0, tau)
        return np.where(snap, nearest, tau)

    def interval(self, s, t, *, paths=None, device=None, dtype=None):
        """Increments ``W(t) - W(s)``, and the space-time Lévy areas of ``[s, t]``, at any times.

        The values are read from the same tree as :meth:`increments` (on a dyadic
        grid they are its steps, and their sums) and :meth:`W`, so any set of
        queries of one path is consistent with every other.

        Parameters
        ----------
        s, t : float or 1-D array
            Start and end times in ``t_span``, a scalar for every path or one per
            selected path; ``t < s`` gives ``W(t) - W(s)`` all the same.
        paths : range or slice, optional
            Contiguous path indices (default: all).
        device, dtype : optional
            Either one returns torch tensors on ``device`` (default CPU) in
            ``dtype`` (default ``torch.float64``); off the CPU they are computed by
            :func:`sdekit._torch_bridge.interval_torch` on the device (equal to
            round-off).

        Returns
        -------
        dW, or (dW, H)
            Arrays of shape ``(n, noise_dim)``; ``H`` (only when the path has Lévy
            area) is the space-time Lévy area ``(1/h) integral_a^b (W_u - W_a) du
            - dW/2`` of ``[a, b] = [min(s, t), max(s, t)]`` (Var ``h/12``), 0 when
            ``s == t``.
        """
        first_path, end_path = self._path_range(paths)
        n = end_path - first_path
        ends = []
        for name, v in (("s", s), ("t", t)):
            v = np.asarray(v, dtype=float)
            if v.ndim > 1 or (v.ndim == 1 and v.shape[0] != n):
                raise ValueError(f"`{name}` must be a scalar or 1-D with one time per path ({n}), got shape {v.shape}.")
            ends.append(self._in_cells(np.broadcast_to(v, (n,)).astype(float), name))
        tau_a, tau_b = ends
        torch = None
        if device is not None or dtype is not None:
            torch = require("torch", extra="torch", what="BrownianPath.interval tensors (device=, dtype=)")
            device = torch.device("cpu" if device is None else device)
            dtype = torch.float64 if dtype is None else dtype
            if device.type != "cpu":
                from ._torch_bridge import interval_torch

                keys = torch.as_tensor(_rng.lane_keys(self._seed_key, first_path, n, self.noise_dim).view(np.int64), device=device)
                dw, area = interval_torch(keys, self.noise_dim, self.base_steps, self.cell_length, self.levy_area,
                                          torch.as_tensor(tau_a, device=device), torch.as_tensor(tau_b, device=device))
                dw = dw.to(dtype)
                return (dw, area.to(dtype)) if self.levy_area else dw
        dw = np.empty((n, self.noise_dim))
        area = np.empty((n, self.noise_dim))
        _cursor.intervals(self._seed_key, first_path, n, self.noise_dim, self.base_steps, self.cell_length, self.levy_area,
                          tau_a, tau_b, dw, area)
        if torch is not None:
            dw, area = torch.from_numpy(dw).to(device, dtype), torch.from_numpy(area).to(device, dtype)
        return (dw, area) if self.levy_area else dw

    def W(self, t, *, paths=None) -> np.ndarray:
        """W at the times ``t`` (scalar or 1-D): shape ``(len(t), n, noise_dim)``.

        A scalar ``t`` gives shape ``(n, noise_dim)``. ``W(t)`` equals
        ``interval(t0, t)`` and, on a dyadic grid, :meth:`on_grid`, up to the
        round-off of the summation.
        """
        ts = np.asarray(t, dtype=float)
        scalar = ts.ndim == 0
        ts = np.atleast_1d(ts)
        if ts.ndim != 1:
            raise ValueError(f"`t` must be a scalar or 1-D, got shape {ts.shape}.")
        in_cells = self._in_cells(ts, "t")
        first_path, end_path = self._path_range(paths)
        out = np.empty((len(in_cells), end_path - first_path, self.noise_dim))
        _cursor.values(self._seed_key, first_path, end_path - first_path, self.noise_dim, self.base_steps,
                       self.cell_length, self.levy_area, in_cells, out)
        return out[0] if scalar else out

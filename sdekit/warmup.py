"""``sdekit warmup``: compile every library kernel ahead of time (e.g. in a container's build step).

sdekit's Numba kernels are compiled once per installation and cached on disk;
a solve compiles only the kernels it runs, the first time it runs them (and
says so on stderr). This compiles them all at once: the fixed-step kernel of
every step function (diagonal and matrix noise), the adaptive Runge–Kutta
integrator, the Rosenbrock integrator, the Brownian tree with and without Lévy
area, forwards and backwards, the moment sums of :func:`sdekit.ensemble`, and
the broadcasting code of the adapters for the usual result
types. A problem's own functions still compile (in about a second) the first
time they are solved, and are then cached too.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from numba import types

__all__ = ["warmup", "warmup_items"]


def warmup_items() -> list[tuple[str, Callable[[], object]]]:
    """``(name, compile)`` for every library kernel; calling ``compile()`` compiles (or loads) it."""
    from .backends import numba_adapters as adapters
    from .backends import numba_backend, numba_kernels, rosenbrock

    items = []
    for matrix in (False, True):
        for step in numba_kernels.KERNEL_STEPS:
            if step not in (numba_kernels.MATRIX_STEPS if matrix else numba_kernels.DIAGONAL_STEPS):
                continue
            kernel = numba_kernels.fixed_step_kernel(step, matrix)
            items.append((f"{step.__name__} step ({'matrix' if matrix else 'diagonal'} noise)",
                          lambda kernel=kernel: kernel.compiled))
    items.append(("adaptive Runge-Kutta integrator", lambda: numba_backend._adaptive_range.compiled))
    items.append(("Rosenbrock integrator (rodas4, rodas5)", lambda: rosenbrock._rosenbrock_range.compiled))
    items.append(("stand-in Jacobian of problems without jac", lambda: numba_kernels.no_jacobian.compiled))
    items.append(("zero diffusion of an ODE", lambda: numba_backend._zero_diffusion.compiled))
    items.append(("Brownian tree", _brownian))
    items.append(("broadcasting of results", lambda: _broadcasting(adapters)))
    items.append(("ensemble moments", _ensemble_moments))
    return items


def _brownian():
    """Draw increments (and Lévy areas) in blocks, forwards and backwards, as the solvers do."""
    from .brownian import BrownianPath

    for levy_area in (False, True):
        path = BrownianPath(seed=0, t_span=(0.0, 1.0), n_paths=3, noise_dim=2, levy_area=levy_area)
        for reverse in (False, True):
            for reuse in (False, True):
                for _ in path.blocks(8, reverse=reverse, block_steps=4, reuse_buffers=reuse):
                    pass
        path.increments(8)
        path.W(np.array([0.3, 0.7]))
        path.interval(0.2, np.array([0.3, 0.7, 0.9]))


def _ensemble_moments():
    """The compiled moment sums of :func:`sdekit.ensemble`'s leaves."""
    from .ensemble import _leaf_moments

    return _leaf_moments.compiled


def _broadcasting(adapters):
    """The broadcasting functions for float64 results (numbers and C-contiguous arrays of each rank)."""
    flat = np.zeros(8)
    f64 = types.float64
    for fn, args in [
        (adapters.flag_shape, (types.float64[::1], types.int64, types.int64, types.int64, types.int64, types.int64,
                               types.int64)),
        (adapters.rows_from_number, (f64, types.int64, types.int64)),
        (adapters.matrix_from_number, (f64, types.int64, types.int64, types.int64)),
    ]:
        fn.compile(args)
    for rank, fn in [(1, adapters.rows_from_1d), (2, adapters.rows_from_2d)]:
        fn(np.zeros((1,) * rank), 1, 1, flat, 0)
    for rank, fn in [(1, adapters.matrix_from_1d), (2, adapters.matrix_from_2d), (3, adapters.matrix_from_3d)]:
        fn(np.zeros((1,) * rank), 1, 1, 1, flat, 0)


def warmup(verbose: bool = True, print_fn: Callable[[str], object] = print) -> float:
    """Compile (or load from the disk cache) every library kernel; returns the seconds it took.

    ``verbose`` prints one line per kernel with its time.
    """
    from . import _codegen, _jitcache

    _jitcache._noticed = True  # the lines below say what happens; no separate notice
    items = warmup_items()
    if verbose:
        print_fn(f"sdekit warmup: compiling {len(items)} groups of Numba kernels (cached on disk, once per installation)")
    start = time.perf_counter()
    for name, compile_item in items:
        t = time.perf_counter()
        compile_item()
        if verbose:
            print_fn(f"  {name:<44} {time.perf_counter() - t:6.1f} s")
    total = time.perf_counter() - start
    if verbose:
        where = _codegen.cache_dir() or "memory only (the cache folder is not writable)"
        print_fn(f"done in {total:.1f} s; problems' adapters are cached in {where}")
    return total

"""Cost of reading the Brownian tree at adaptive step ends (sdekit._cursor) against the fixed-step walk (sdekit._bridge).

An adaptive walk of one path over ``n_cells`` base cells takes steps of about ``h = 2**-12`` cells
(uniform in ``[0.75 h, 1.25 h]``, snapped to the dyadic grid of ``h / 8`` as the adaptive integrator
snaps its step ends); a fraction of the steps is first queried at ``1.5`` times its size and rejected,
then retried at half that size. The fixed-step walk reads the same number of steps,
``n_cells * 2**12``, with ``_bridge.fill``. Both run compiled, one path, ``noise_dim`` lanes.

    .venv/bin/python benchmarks/bench_cursor.py [--cells 25] [--noise-dim 1] [--reject 0.2] [--repeats 5]

Prints ns per accepted step of the cursor, ns per step of the fixed walk and their ratio, with and
without space-time Lévy area.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from numba import njit

from sdekit import _bridge, _cursor, _rng

LEVEL = 12  # step size 2**-LEVEL cells


@njit(cache=True)
def _adaptive_walk(cur, n_cells, step_uniforms, reject_uniforms, reject_fraction, dw, area):
    """Accepted steps of the walk (queries: rejected ones, then the accepted one and its move)."""
    h = 2.0 ** -LEVEL
    grid = h / 8.0
    position = 0.0
    accepted = 0
    while position < n_cells:
        r = accepted % step_uniforms.shape[0]
        step = h * (0.75 + 0.5 * step_uniforms[r])
        if reject_uniforms[r] < reject_fraction:
            rejected = min(float(n_cells), position + max(grid, math.floor(1.5 * step / grid) * grid))
            _cursor.cursor_query(cur, rejected, dw, area)
            step *= 0.75
        target = min(float(n_cells), position + max(grid, math.floor(step / grid) * grid))
        _cursor.cursor_query(cur, target, dw, area)
        _cursor.cursor_move(cur, target)
        position = target
        accepted += 1
    return accepted


def _best(fn, repeats, *args):
    """Fastest of ``repeats`` runs of ``fn(*args)`` (after one run that compiles), and its result."""
    result = fn(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - start)
    return min(times), result


def _adaptive(keys, n_cells, levy_area, step_uniforms, reject_uniforms, reject_fraction):
    cur = _cursor.new_cursor(keys, n_cells, 1.0, levy_area)
    dw, area = np.empty(keys.shape[0]), np.empty(keys.shape[0])
    return _adaptive_walk(cur, n_cells, step_uniforms, reject_uniforms, reject_fraction, dw, area)


def _fixed(seed_key, noise_dim, n_cells, levy_area, out_dw, out_area):
    walk = _bridge.new_walk(seed_key, 0, 1, noise_dim, n_cells, LEVEL, 1.0, False, levy_area)
    _bridge.fill(walk, 0, out_dw, out_area, 0)
    return out_dw.shape[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=25)
    parser.add_argument("--noise-dim", type=int, default=1)
    parser.add_argument("--reject", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    seed_key = _rng.seed_to_key(0)
    keys = _rng.lane_keys(seed_key, 0, 1, args.noise_dim)
    n_fixed = args.cells << LEVEL
    out_dw, out_area = np.empty((n_fixed, args.noise_dim)), np.empty((n_fixed, args.noise_dim))
    rng = np.random.default_rng(1)
    step_uniforms, reject_uniforms = rng.random(1 << 16), rng.random(1 << 16)
    print(f"one path, noise_dim={args.noise_dim}, {args.cells} cells, steps ~2**-{LEVEL} cells, {args.reject:.0%} rejected")
    for levy_area in (False, True):
        t_adaptive, accepted = _best(_adaptive, args.repeats, keys, args.cells, levy_area, step_uniforms, reject_uniforms,
                                     args.reject)
        t_fixed, _ = _best(_fixed, args.repeats, seed_key, args.noise_dim, args.cells, levy_area, out_dw, out_area)
        per_adaptive, per_fixed = 1e9 * t_adaptive / accepted, 1e9 * t_fixed / n_fixed
        print(f"levy_area={levy_area!s:5}  cursor {per_adaptive:7.1f} ns/accepted step ({accepted} steps)   "
              f"fixed fill {per_fixed:7.1f} ns/step ({n_fixed} steps)   ratio {per_adaptive / per_fixed:5.2f}")


if __name__ == "__main__":
    main()

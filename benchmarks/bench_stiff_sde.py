"""Stiff SDE ensemble: time to a given strong error, drift-implicit and stabilized schemes against explicit ones.

The problem is a two-scale Ornstein–Uhlenbeck system, a slow noisy mode with a fast component relaxing onto it::

    dX1 = -lam (X1 - X2) dt                 (fast: eigenvalue -lam, default -1000)
    dX2 = -X2 dt + sigma dW2                (slow: eigenvalue -1, sigma = 0.5)

from ``x0 = (1, 1)`` over ``[0, 1]``, with 10^4 paths. The strong error of a solve is the root mean square over paths
of ``|X_h(1) - X_ref(1)|`` (Euclidean norm over both components), the reference being SRA1 on ``--ref-steps`` steps
of the *same* Brownian path (sdekit's paths are refinable: the path on ``n`` steps is the exact sub-sample of the
path on ``2n`` steps, docs/brownian.md). The reference's own error is printed (against half its steps).

Each scheme runs on ``n = 8, 16, 32, ...`` steps until its error is below the tolerance; the time of that solve
(best of ``--repeat``, after a warm-up that compiles) is its time to the tolerance. An explicit scheme whose step
is outside its stability interval (``lam h > 2``) has every path stopped by sdekit's instability check (its error
is then reported as unstable). The table gives, per tolerance, each scheme's steps and time and the ratio
``best explicit time / time``.

Run: ``python benchmarks/bench_stiff_sde.py`` (about 2 minutes on 2 busy cores; ``--paths``, ``--lam``, ``--tol``,
``--ref-steps``, ``--repeat`` to change the set-up).
"""

from __future__ import annotations

import argparse
import math
import time

import numba
import numpy as np

import sdekit

EXPLICIT = ("euler", "sra1")
STIFF = ("implicit_euler", "skrock", "srock")


def two_scale_ou(lam: float, sigma: float = 0.5):
    """The stiff linear SDE of the module docstring (additive noise, noise_dim 2, the first component noise-free),
    with its constant Jacobian (the drift-implicit schemes use it; the others ignore it)."""
    drift_matrix = np.array([[-lam, lam], [0.0, -1.0]])
    return sdekit.SDE(lambda t, x, p: x @ p[0].T, lambda t, x, p: p[1] + 0.0 * x, noise="additive",
                      params=(drift_matrix, np.array([0.0, sigma])), jac=lambda t, x, p: p[0])


def strong_error(x, reference) -> float:
    """RMS over paths of the Euclidean distance at t = 1; ``inf`` when any path failed."""
    if np.isnan(x).any():
        return math.inf
    return float(np.sqrt(np.mean(np.sum((x - reference) ** 2, axis=1))))


def timed(problem, method, n_steps, brownian, repeat):
    """``(final states, seconds)``: the best of ``repeat`` solves (the first call before them compiles)."""
    kw = dict(method=method, n_steps=n_steps, brownian=brownian, save_at=[1.0])
    best, sol = math.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        sol = sdekit.solve(problem, np.array([1.0, 1.0]), (0.0, 1.0), **kw)
        best = min(best, time.perf_counter() - start)
    return sol.x[-1], best, sol


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=10_000)
    parser.add_argument("--lam", type=float, default=1000.0, help="the fast rate (default 1000)")
    parser.add_argument("--tol", type=float, nargs="+", default=[2e-2, 5e-3], help="strong errors to reach")
    parser.add_argument("--ref-steps", type=int, default=8192)
    parser.add_argument("--max-steps", type=int, default=8192)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    problem = two_scale_ou(args.lam)
    brownian = sdekit.BrownianPath.for_steps(args.seed, (0.0, 1.0), 1, n_paths=args.paths, noise_dim=2, levy_area=True)
    x0 = np.array([1.0, 1.0])
    start = time.perf_counter()
    reference = sdekit.solve(problem, x0, (0.0, 1.0), method="sra1", n_steps=args.ref_steps, brownian=brownian,
                             save_at=[1.0]).x[-1]
    half = sdekit.solve(problem, x0, (0.0, 1.0), method="sra1", n_steps=args.ref_steps // 2, brownian=brownian,
                        save_at=[1.0]).x[-1]
    print(f"two-scale OU, fast rate {args.lam:g}, slow rate 1, {args.paths} paths, numba backend, "
          f"{numba.get_num_threads()} threads")
    print(f"reference: sra1 on {args.ref_steps} steps ({time.perf_counter() - start:.1f} s with its half); "
          f"its error against {args.ref_steps // 2} steps: {strong_error(half, reference):.2e}")

    tolerances = sorted(args.tol, reverse=True)
    found = {}  # (method, tol) -> (n_steps, seconds)
    for method in EXPLICIT + STIFF:
        sdekit.solve(problem, x0, (0.0, 1.0), method=method, n_steps=8, brownian=brownian, save_at=[1.0])  # compile
        n = 8
        pending = list(tolerances)
        line = []
        while pending and n <= args.max_steps:
            x, seconds, sol = timed(problem, method, n, brownian, args.repeat)
            err = strong_error(x, reference)
            line.append(f"n={n}: {'unstable' if math.isinf(err) else f'{err:.2e}'}")
            while pending and err <= pending[0]:
                found[(method, pending.pop(0))] = (n, seconds)
            n *= 2
        print(f"  {method:15s} " + ", ".join(line))

    print()
    header = "| scheme | kind | " + " | ".join(f"steps, time to {tol:g} | ratio" for tol in tolerances) + " |"
    print(header)
    print("|---|---|" + "---|---|" * len(tolerances))
    best_explicit = {tol: min((found[(m, tol)][1] for m in EXPLICIT if (m, tol) in found), default=math.nan)
                     for tol in tolerances}
    for method in EXPLICIT + STIFF:
        cells = []
        for tol in tolerances:
            if (method, tol) in found:
                n, seconds = found[(method, tol)]
                cells.append(f"{n}, {seconds * 1e3:.0f} ms | {best_explicit[tol] / seconds:.1f}x")
            else:
                cells.append(f"> {args.max_steps} steps | -")
        kind = "explicit" if method in EXPLICIT else "implicit/stabilized"
        print(f"| {method} | {kind} | " + " | ".join(cells) + " |")
    print("\nratio: the best explicit scheme's time to the tolerance over this scheme's (higher is better).")


if __name__ == "__main__":
    main()

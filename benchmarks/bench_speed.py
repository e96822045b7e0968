"""Speed of the Numba backend against the cost of drawing its random numbers, and against peers.

Run:  python benchmarks/bench_speed.py [--paths 100000] [--steps 1000] [--repeat 3]

Prints, in one run on the same threads:
1. the time to draw paths*steps standard normals with NumPy's Generator inside
   a Numba kernel (one generator per thread): the floor for any EM solver
   that draws its own noise;
2. Euler–Maruyama on scalar OU (theta=1, mu=0.5, sigma=0.3, x0=2, T=1) with
   sdekit, and the ratio to (1);
3. Milstein, SRA1 and SRIW1 per path-step, and their ratio to EM;
4. the first-call compile time of a new problem + scheme, in a fresh process
   (library kernels already cached on disk);
5. torchsde's sdeint (method 'euler', same problem) when torchsde is installed.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time

import numba
import numpy as np
from numba import njit, prange

import sdekit as sk


@njit(parallel=True)
def _draw(gens, per_thread):
    acc = np.zeros(len(gens))
    for k in prange(len(gens)):
        g = gens[k]
        s = 0.0
        for _ in range(per_thread):
            s += g.standard_normal()
        acc[k] = s
    return acc


def best_of(fn, repeat):
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def ou_problem():
    return sk.SDE(lambda t, x, p: p[0] * (p[1] - x), lambda t, x, p: p[2], noise="additive", params=(1.0, 0.5, 0.3))


_COMPILE = """
import time, sdekit as sk
t = time.perf_counter()
p = sk.SDE(lambda t, x, q: q[0] * (q[1] - x) + 0.1 * x * x, lambda t, x, q: q[2] + 0.0 * x, noise="diagonal",
           params=(1.0, 0.5, 0.3))
sk.solve(p, 2.0, (0, 1), method="{method}", n_steps=16, n_paths=10, seed=0)
print(time.perf_counter() - t)
"""


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--paths", type=int, default=100_000)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    n, m, threads = args.paths, args.steps, numba.get_num_threads()
    total = n * m
    print(f"machine: {platform.processor() or platform.machine()}, {threads} Numba threads; "
          f"numpy {np.__version__}, numba {numba.__version__}")
    print(f"problem: Euler–Maruyama on scalar OU, {n} paths x {m} steps = {total:.1e} path-steps\n")

    gens = [np.random.default_rng(s) for s in range(threads)]
    _draw(gens, 10)
    t_rng = best_of(lambda: _draw(gens, total // threads), args.repeat)
    print(f"draw {total:.1e} normals, numpy Generator in Numba: {t_rng / total * 1e9:6.2f} ns per normal")

    ou = ou_problem()
    times = {}
    for meth in ("euler", "milstein", "sra1", "sriw1"):
        sk.solve(ou, 2.0, (0.0, 1.0), method=meth, n_steps=m, n_paths=1000, seed=0, save_at=[1.0])
        times[meth] = best_of(
            lambda meth=meth: sk.solve(ou, 2.0, (0.0, 1.0), method=meth, n_steps=m, n_paths=n, seed=0, save_at=[1.0]),
            args.repeat,
        )
    em = times["euler"]
    print(f"sdekit euler:                                      {em / total * 1e9:6.2f} ns per path-step"
          f"   ratio to drawing the normals: {em / t_rng:.2f}  (target <= 2.5)")
    for meth in ("milstein", "sra1", "sriw1"):
        print(f"sdekit {meth:<9}:                                  {times[meth] / total * 1e9:6.2f} ns per path-step"
              f"   ratio to euler: {times[meth] / em:.2f}  (target <= 3)")

    for meth in ("euler", "sriw1"):
        r = subprocess.run([sys.executable, "-c", _COMPILE.format(method=meth)], capture_output=True, text=True,
                           check=True)
        print(f"first call with a new problem + {meth} (fresh process, import included): "
              f"{float(r.stdout.strip().splitlines()[-1]):.2f} s  (target < 3)")

    try:
        import torch
        import torchsde
    except ImportError:
        print("\ntorchsde: not installed (pip install -e .[peers]); skipped")
        return 0

    class OU(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return 1.0 * (0.5 - y)

        def g(self, t, y):
            return torch.full_like(y, 0.3)

    torch.set_num_threads(threads)
    y0 = torch.full((n, 1), 2.0, dtype=torch.float64)
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    t_ts = best_of(lambda: torchsde.sdeint(OU(), y0, ts, method="euler", dt=1.0 / m), 1)
    print(f"\ntorchsde sdeint euler: {t_ts / total * 1e9:6.2f} ns per path-step; sdekit is {t_ts / em:.1f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())

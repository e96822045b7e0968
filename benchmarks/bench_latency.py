"""Latency of a first result, as a new user meets it: fresh processes, cold and warm caches.

Each figure is the time of the first call after the imports, in a new Python
process (the import itself is reported apart):

* cold: empty Numba and sdekit caches (a fresh installation); the compile
  notice must be printed;
* warm: caches filled by an earlier process; "new lambda" solves a problem
  whose functions this installation has never seen (a lambda with a fresh
  constant), so its adapters compile while the library kernels load;
* diffusion: the first ``diffusion.sample`` with the exact Gaussian-mixture
  score (everything it compiles was cached by an earlier process).

Warm figures are the best of ``--repeats`` processes. The caches live in a
temporary folder, so the run neither reads nor disturbs the user's own.

    python benchmarks/bench_latency.py            # the table, about 2 minutes on 2 cores
    python benchmarks/bench_latency.py --no-cold  # warm figures only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

SOLVE = """
import json, random, sys, time
t0 = time.perf_counter()
import sdekit as sk
t1 = time.perf_counter()
c = {constant!r} if {constant!r} is not None else random.random()
problem = eval(f"sk.SDE(lambda t, x, p: p[0] * (p[1] - x) + {{c}} * 0.0 + 0.0 * x * {{c}}, "
               f"lambda t, x, p: p[2] + 0.0 * x * {{c}}, noise='diagonal', params=(1.0, 0.5, 0.3))")
sk.solve(problem, x0=2.0, t_span=(0.0, 1.0), method="{method}", n_steps=100, n_paths=1000, seed=1)
t2 = time.perf_counter()
print(json.dumps({{"import": t1 - t0, "first": t2 - t1}}))
"""

SAMPLE = """
import json, time
t0 = time.perf_counter()
import numpy as np
import diffusion as dm
t1 = time.perf_counter()
sde = dm.VPSDE()
mixture = dm.GaussianMixture(np.array([0.3, 0.7]), np.array([[-2.0, 0.0], [2.0, 1.0]]), np.array([0.25, 0.5]))
dm.sample(sde, mixture.score_fn(sde), 1000, method="{method}", steps={steps}, seed=0)
t2 = time.perf_counter()
print(json.dumps({{"import": t1 - t0, "first": t2 - t1}}))
"""

NOTICE = "compiling Numba kernels"


def run(script: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=1200)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["notice"] = NOTICE in out.stderr
    return result


def caches(root: str, name: str) -> dict:
    env = dict(os.environ)
    env["NUMBA_CACHE_DIR"] = os.path.join(root, name, "numba")
    env["SDEKIT_CACHE_DIR"] = os.path.join(root, name, "sdekit")
    env.pop("SDEKIT_QUIET", None)
    return env


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per warm figure (best of)")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-cache figures (each compiles for a minute)")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sdekit-latency-") as root:
        if not args.no_cold:
            cold = run(SOLVE.format(constant=None, method="euler"), caches(root, "cold-solve"))
            rows.append(("first sk.solve, cold cache (euler)", 20.0, cold["first"], cold["import"],
                         "notice printed" if cold["notice"] else "NO NOTICE"))
        warm = caches(root, "warm")
        run(SOLVE.format(constant=0.5, method="euler"), warm)  # fills the library kernels' cache
        best = min((run(SOLVE.format(constant=None, method="euler"), warm) for _ in range(args.repeats)),
                   key=lambda r: r["first"])
        rows.append(("first sk.solve of a new lambda problem, warm", 1.0, best["first"], best["import"], ""))
        same = min((run(SOLVE.format(constant=0.5, method="euler"), warm) for _ in range(args.repeats)),
                   key=lambda r: r["first"])
        rows.append(("first sk.solve of a problem solved before, warm", None, same["first"], same["import"], ""))
        for method, steps in (("sra1", 100), ("dpmpp_2m", 20)):
            if not args.no_cold and method == "sra1":
                cold = run(SAMPLE.format(method=method, steps=steps), caches(root, "cold-sample"))
                rows.append((f"first diffusion.sample {method}, cold cache", None, cold["first"], cold["import"],
                             "notice printed" if cold["notice"] else "NO NOTICE"))
            run(SAMPLE.format(method=method, steps=steps), warm)
            best = min((run(SAMPLE.format(method=method, steps=steps), warm) for _ in range(args.repeats)),
                       key=lambda r: r["first"])
            rows.append((f"first diffusion.sample {method} (steps={steps}), warm", 1.5, best["first"], best["import"], ""))
    print(f"{'what':<54} {'goal':>7} {'first call':>11} {'import':>8}  note")
    for what, goal, first, imported, note in rows:
        goal_text = f"{goal:.1f} s" if goal is not None else "-"
        verdict = "" if goal is None else ("ok" if first <= goal else "OVER")
        print(f"{what:<54} {goal_text:>7} {first:9.2f} s {imported:6.2f} s  {verdict} {note}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Streaming ensembles (``sdekit.ensemble``): memory against the number of paths, overhead over ``solve``, Dask scaling.

Three measurements on the Ornstein–Uhlenbeck problem of ``sdekit.problems`` (Euler–Maruyama, few steps, so that
the per-path costs of the Brownian increments, the reducers and the scheduling weigh as much as they can):

1. memory: peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) of a fresh process streaming
   mean and variance at the save times over ``--small`` and ``--large`` paths (default 10^6 and 10^8), both in
   chunks of ``--memory-chunk`` paths (the chunk sets the memory; the default ``chunk_paths`` grows with nothing but
   the save times and the dimension, yet a run smaller than one default chunk uses a smaller one). The goal: the
   two within 10 % of each other and both below 500 MB. The mean is checked against the exact mean of the Euler
   chain, ``mu + (x0 - mu) (1 - theta h)^k``;
2. overhead: ``ensemble`` (mean and variance) against a plain ``solve`` of the same paths with the same saves, in
   one process, at ``--overhead-steps`` step counts (the fewer the steps, the larger the reducers' share); the
   goal is at most 1.2x. The solve holds every saved state (that is what the streaming avoids), so
   ``--overhead-paths`` must fit in memory;
3. Dask: the same ensemble on a ``LocalCluster`` of 2 single-threaded worker processes against 1 (after a warm-up
   run that loads the compiled kernels into each worker); the goal is a speed-up of at least 1.7x, scaling
   efficiency = speed-up / 2. The workers' CPU seconds are printed too: on a machine shared with other jobs the
   wall-clock speed-up depends on the cores the workers actually get (the load average is printed per part),
   while ``2 x CPU(1 worker) / CPU(2 workers)`` is the speed-up with a core per worker (the chunks split evenly),
   and shows what the distribution itself costs.

Every run is single-threaded (``NUMBA_NUM_THREADS=1``) unless ``--threads`` says otherwise, so that the Dask
comparison is worker against worker. Run it on a quiet machine:

    python benchmarks/bench_ensemble.py                       # the table (a few minutes on 2 cores)
    python benchmarks/bench_ensemble.py --large 10000000      # quicker: 10^7 paths for the memory row
    python benchmarks/bench_ensemble.py --skip memory         # only overhead and Dask
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SETUP = """
import numpy as np
import sdekit
from sdekit import problems
ou = problems.ornstein_uhlenbeck()
x0, (t0, t1) = ou.x0, ou.t_span
save_at = np.linspace(t0, t1, {n_saves} + 1)[1:]
kwargs = dict(method="euler", n_steps={n_steps}, seed=1, save_at=save_at)
"""

MEMORY = SETUP + """
import json, resource, time
start = time.perf_counter()
result = sdekit.ensemble(ou.problem, x0, (t0, t1), n_paths={n_paths}, chunk_paths={chunk}, statistics=("mean", "var"),
                         **kwargs)
wall = time.perf_counter() - start
# the exact mean of the Euler chain for OU: mu + (x0 - mu) (1 - theta h)^k after k steps of size h
theta, mu = ou.problem.params[0], ou.problem.params[1]
steps_done = np.rint((save_at - t0) / ((t1 - t0) / {n_steps}))
exact = mu + (x0[0] - mu) * (1 - theta * (t1 - t0) / {n_steps}) ** steps_done
z = float(np.max(np.abs(result.mean[:, 0] - exact) / result.mean_se[:, 0]))
print(json.dumps({{"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "wall": wall, "z": z,
                  "n_chunks": result.n_chunks, "chunk_paths": result.chunk_paths}}))
"""


def run_script(script: str, threads: int) -> dict:
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(args) -> list[str]:
    """Peak RSS of a fresh process per ensemble size (a warm-up process first fills the compile caches)."""
    run_script(MEMORY.format(n_paths=1000, chunk=args.memory_chunk, n_steps=args.steps, n_saves=args.saves), args.threads)
    rows, peaks = [], []
    for n_paths in (args.small, args.large):
        r = run_script(MEMORY.format(n_paths=n_paths, chunk=args.memory_chunk, n_steps=args.steps, n_saves=args.saves),
                       args.threads)
        peaks.append(r["rss_mb"])
        rows.append(f"| memory | {n_paths:.0e} paths, {r['n_chunks']} chunks of {r['chunk_paths']} | peak RSS "
                    f"{r['rss_mb']:.0f} MB | {r['wall']:.1f} s, {r['wall'] / n_paths * 1e9:.0f} ns/path; "
                    f"max |mean - exact Euler mean| / s.e. = {r['z']:.2f} |")
    ratio = peaks[1] / peaks[0]
    verdict = "met" if abs(ratio - 1) <= 0.10 and max(peaks) < 500 else "NOT met"
    rows.append(f"| memory | ratio {args.large:.0e} / {args.small:.0e} | {ratio:.3f} | goal within 10 % and < 500 MB: "
                f"{verdict} |")
    return rows


def best_of(repeats: int, fn) -> float:
    """The shortest wall-clock time of ``repeats`` calls of ``fn``."""
    return min(timed(fn)[0] for _ in range(repeats))


def timed(fn) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process) of one call of ``fn``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def best_wall_and_cpu(repeats: int, fn) -> tuple[float, float]:
    """The shortest wall-clock and the shortest CPU time of ``repeats`` calls of ``fn`` (one thread: the CPU time is
    the work, the wall time adds whatever other jobs on the machine took from it)."""
    runs = [timed(fn) for _ in range(repeats)]
    return min(w for w, _ in runs), min(c for _, c in runs)


def overhead(args) -> list[str]:
    """``ensemble`` against ``solve`` of the same paths and saves (best of ``--repeats``, in this process)."""
    import sdekit

    rows = []
    for n_steps in (int(v) for v in args.overhead_steps.split(",")):
        namespace = {}
        exec(SETUP.format(n_steps=n_steps, n_saves=args.saves), namespace)
        ou, x0, t_span, kwargs = namespace["ou"], namespace["x0"], (namespace["t0"], namespace["t1"]), namespace["kwargs"]
        n = args.overhead_paths

        def plain():
            sol = sdekit.solve(ou.problem, x0, t_span, n_paths=n, **kwargs)  # noqa: B023
            return sol.x.mean(axis=1), sol.x.var(axis=1, ddof=1)

        def streamed():
            return sdekit.ensemble(ou.problem, x0, t_span, n_paths=n, statistics=("mean", "var"), **kwargs)  # noqa: B023

        plain(), streamed()  # compile and load everything first
        t_solve, c_solve = best_wall_and_cpu(args.repeats, lambda: sdekit.solve(ou.problem, x0, t_span, n_paths=n,  # noqa: B023
                                                                                **kwargs))  # noqa: B023
        t_plain, c_plain = best_wall_and_cpu(args.repeats, plain)
        t_stream, c_stream = best_wall_and_cpu(args.repeats, streamed)
        verdict = "met" if c_stream / c_solve <= 1.2 else "NOT met"
        rows.append(f"| overhead | {n:.0e} paths x {n_steps} steps: solve {t_solve:.2f} s wall / {c_solve:.2f} s CPU, "
                    f"solve + NumPy mean/var {t_plain:.2f} / {c_plain:.2f} s | ensemble {t_stream:.2f} / {c_stream:.2f} s | "
                    f"ensemble / solve = {t_stream / t_solve:.2f} wall, {c_stream / c_solve:.2f} CPU; / (solve + mean/var) = "
                    f"{t_stream / t_plain:.2f} wall, {c_stream / c_plain:.2f} CPU; goal <= 1.2 (CPU): {verdict} |")
    return rows


def dask_scaling(args) -> list[str]:
    """The same ensemble on LocalClusters of 1 and 2 single-threaded worker processes."""
    import numpy as np
    from distributed import Client, LocalCluster

    import sdekit

    namespace = {}
    exec(SETUP.format(n_steps=args.steps, n_saves=args.saves), namespace)
    ou, x0, t_span, kwargs = namespace["ou"], namespace["x0"], (namespace["t0"], namespace["t1"]), namespace["kwargs"]
    n = args.dask_paths
    os.environ["NUMBA_NUM_THREADS"] = "1"  # the worker processes inherit it
    times, results, cpu = {}, {}, {}
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            sdekit.ensemble(ou.problem, x0, t_span, n_paths=4 * args.chunk, chunk_paths=args.chunk, client=client,
                            **kwargs)  # every worker loads the kernels
            run = lambda: sdekit.ensemble(ou.problem, x0, t_span, n_paths=n, chunk_paths=args.chunk,  # noqa: E731
                                          client=client, statistics=("mean", "var"), **kwargs)
            cpu_before = client.run(time.process_time)
            times[workers] = best_of(args.repeats, run)
            cpu[workers] = sum(client.run(time.process_time).values()) - sum(cpu_before.values())
            results[workers] = run()
    identical = np.array_equal(results[1].mean, results[2].mean) and np.array_equal(results[1].var, results[2].var)
    speedup = times[1] / times[2]
    verdict = "met" if speedup >= 1.7 else "NOT met"
    return [f"| Dask | {n:.0e} paths, chunks of {results[2].chunk_paths}: 1 worker {times[1]:.2f} s | 2 workers "
            f"{times[2]:.2f} s | speed-up {speedup:.2f}, efficiency {speedup / 2:.0%}; goal >= 1.7: {verdict}; "
            f"results identical: {identical}; workers' CPU seconds over the {args.repeats} timed runs: "
            f"{cpu[1]:.1f} (1 worker), {cpu[2]:.1f} (2 workers), so with a core per worker the speed-up would be "
            f"2 x {cpu[1]:.1f} / {cpu[2]:.1f} = {2 * cpu[1] / cpu[2]:.2f} (efficiency {cpu[1] / cpu[2]:.0%}) |"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10**6, help="paths of the smaller memory run")
    parser.add_argument("--large", type=int, default=10**8, help="paths of the larger memory run")
    parser.add_argument("--memory-chunk", type=int, default=2**18, help="chunk_paths of both memory runs (peak memory "
                        "is set by the chunk, so both runs use the same)")
    parser.add_argument("--overhead-paths", type=int, default=2 * 10**6, help="paths of the overhead comparison")
    parser.add_argument("--overhead-steps", default="4,64", help="comma-separated step counts of the overhead rows")
    parser.add_argument("--dask-paths", type=int, default=2 * 10**7, help="paths of the Dask comparison")
    parser.add_argument("--chunk", type=int, default=2**20, help="chunk_paths of the Dask runs")
    parser.add_argument("--steps", type=int, default=4, help="Euler steps over [0, 1]")
    parser.add_argument("--saves", type=int, default=2, help="save times (evenly spaced, the last at t = 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (best of)")
    parser.add_argument("--threads", type=int, default=1, help="NUMBA_NUM_THREADS of the memory runs")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: memory, overhead, dask")
    args = parser.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    os.environ["NUMBA_NUM_THREADS"] = str(args.threads)
    print(f"OU, euler, {args.steps} steps, {args.saves} save times, statistics mean and var, seed 1; "
          f"{os.cpu_count()} CPUs")
    print("| part | run | measured | ratio and goal |")
    print("|---|---|---|---|")
    for name, part in (("memory", memory), ("overhead", overhead), ("dask", dask_scaling)):
        if name not in skip:
            print(f"| {name} | load average before the part (other jobs on the machine) | "
                  f"{os.getloadavg()[0]:.2f} | |", flush=True)
            for row in part(args):
                print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Throughput of every scheme on every backend, as a pytest-benchmark suite.

Run from the repository root:

    .venv/bin/python -m pytest benchmarks/test_throughput.py -n 0 --benchmark-enable --benchmark-only -p no:cacheprovider

Naming the file overrides pyproject's ``testpaths``, and ``--benchmark-only``
overrides the ``--benchmark-skip`` in its ``addopts``, so these benchmarks run
only when asked for. Select with ``-k`` (e.g. ``-k "numba and sriw1"``); save
with ``--benchmark-json=out.json`` (each benchmark's ``extra_info`` holds its
ns per path-step). About 30 s on a 2-core CPU.

What is measured: ``sdekit.solve`` on 20,000 paths x 200 steps with
``save_at=[T]``, float64, wall time per round (one solve), after one
untimed warm-up round at the same size (Numba compilation, torch's first
call). Every SDE scheme runs on the numba and torch backends, on each problem
class it supports: OU (additive noise) for all, GBM (scalar noise) for euler,
milstein and sriw1, and the Stratonovich GBM for euler_heun. The numpy
backend runs euler only. The ODE schemes rk4 and dopri5 (adaptive; about 12
steps per path at its default tolerances) run on the Gaussian probability-flow
ODE. The closing table gives ns per path-step: wall time divided by the
total number of steps taken over all paths (``Solution.stats.n_steps``).
"""

from __future__ import annotations

import numpy as np
import pytest

import sdekit as sk

N_PATHS, N_STEPS, SEED, ROUNDS = 20_000, 200, 0, 10

# (method, problem): every problem class each scheme supports.
SDE_CASES = [
    ("euler", "ou"), ("euler", "gbm"),
    ("milstein", "ou"), ("milstein", "gbm"),
    ("sra1", "ou"),
    ("sriw1", "ou"), ("sriw1", "gbm"),
    ("euler_heun", "ou"), ("euler_heun", "gbm_stratonovich"),
]
ODE_CASES = [("rk4", "gaussian_pf_ode"), ("dopri5", "gaussian_pf_ode")]


def _cases(cases, backends):
    return [pytest.param(b, m, p, id=f"{b}-{m}-{p}") for b in backends for m, p in cases]


CASES = (_cases(SDE_CASES, ("numba", "torch")) + _cases([c for c in SDE_CASES if c[0] == "euler"], ("numpy",))
         + _cases(ODE_CASES, ("numba", "torch")))


@pytest.mark.parametrize(("backend", "method", "problem"), CASES)
def test_throughput(benchmark, throughput_rows, backend, method, problem):
    ep = sk.problems.get_problem(problem)
    t1 = ep.t_span[1]
    kw = {} if sk.get_scheme(method, ep.problem).adaptive else {"n_steps": N_STEPS}
    if ep.problem.is_sde:
        kw["seed"] = SEED

    def run():
        return sk.solve(ep.problem, ep.x0, ep.t_span, method=method, n_paths=N_PATHS, save_at=[t1], backend=backend, **kw)

    benchmark.group = problem
    sol = benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)

    x = np.asarray(sol.x)
    assert x.shape == (1, N_PATHS, ep.x0.size) and np.isfinite(x).all()
    st = sol.stats
    benchmark.extra_info.update(
        backend=backend, method=method, problem=problem, n_paths=N_PATHS, path_steps=st.n_steps,
        evals_per_step=(st.n_drift_evals + st.n_diffusion_evals) / st.n_steps,
    )
    if benchmark.stats is None:  # --benchmark-disable: ran once, untimed
        return
    times = benchmark.stats.stats
    ns_min, ns_median = times.min / st.n_steps * 1e9, times.median / st.n_steps * 1e9
    benchmark.extra_info.update(ns_per_path_step_min=ns_min, ns_per_path_step_median=ns_median)
    throughput_rows.append({
        "backend": backend, "problem": problem, "method": method, "evals_per_step": benchmark.extra_info["evals_per_step"],
        "size": f"{N_PATHS} x {st.n_steps // N_PATHS}", "ns_min": ns_min, "ns_median": ns_median,
    })

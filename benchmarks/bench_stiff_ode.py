"""Stiff ODE ensembles: sdekit's batched Rosenbrock solvers against scipy's Radau in a loop and diffrax's Kvaerno5.

The problem: Robertson's chemical kinetics (Hairer & Wanner II, §IV.10) to t = 1e5, one path per set of rate
constants, each rate scaled by exp(U(-0.3, 0.3)) (seeded). sdekit carries a path's rates as three extra state
components with zero derivative (an ODE's params are shared by all paths), so its Jacobian is 6 x 6 (central
differences, the default without ``jac``); scipy and diffrax get the 3-component problem with the rates as arguments.

* sdekit: ``solve(..., method="rodas5" / "rodas4", backend="numba")`` on all paths, every core (a first call on a
  few paths compiles and is timed apart).
* scipy: ``solve_ivp(method="Radau")`` one path at a time on a sample of paths; the time is extrapolated to all paths
  (said in the table).
* diffrax: ``Kvaerno5`` with a ``PIDController`` under ``jax.vmap`` on all paths, jitted (its compilation timed
  apart), float64.

All at the same rtol/atol. Errors: on a sample of paths against scipy's Radau at rtol 1e-11, atol 1e-18, in units
of the tolerance (``|x - ref| / (atol + rtol |ref|)``, max over components and paths).

Run: ``python benchmarks/bench_stiff_ode.py`` (``--paths``, ``--sample``, ``--rtol``, ``--atol``).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

T_END = 1e5
RATES = np.array([0.04, 3e7, 1e4])


def rates(n, seed=0):
    return RATES * np.exp(np.random.default_rng(seed).uniform(-0.3, 0.3, (n, 3)))


def robertson_augmented(t, x, p):
    """State (y1, y2, y3, k1, k2, k3): the rates ride along with zero derivative."""
    out = np.zeros_like(x)
    k1, k2, k3 = x[:, 3], x[:, 4], x[:, 5]
    out[:, 0] = -k1 * x[:, 0] + k3 * x[:, 1] * x[:, 2]
    out[:, 1] = k1 * x[:, 0] - k3 * x[:, 1] * x[:, 2] - k2 * x[:, 1] * x[:, 1]
    out[:, 2] = k2 * x[:, 1] * x[:, 1]
    return out


def robertson_scipy(t, y, k1, k2, k3):
    return [-k1 * y[0] + k3 * y[1] * y[2], k1 * y[0] - k3 * y[1] * y[2] - k2 * y[1] ** 2, k2 * y[1] ** 2]


def run_sdekit(k, method, rtol, atol):
    import sdekit as sk

    x0 = np.column_stack([np.ones(len(k)), np.zeros((len(k), 2)), k])
    problem = sk.ODE(robertson_augmented)
    start = time.perf_counter()
    sk.solve(problem, x0[:4], (0.0, T_END), method=method, rtol=rtol, atol=atol, save_at=[T_END])
    first = time.perf_counter() - start
    start = time.perf_counter()
    sol = sk.solve(problem, x0, (0.0, T_END), method=method, rtol=rtol, atol=atol, save_at=[T_END])
    seconds = time.perf_counter() - start
    assert sol.success, sol.message
    return seconds, first, sol.x[-1, :, :3], sol.stats.per_path()["steps"]


def run_scipy(k, rtol, atol, tight=False):
    from scipy.integrate import solve_ivp

    out = np.empty((len(k), 3))
    start = time.perf_counter()
    for i, (k1, k2, k3) in enumerate(k):
        sol = solve_ivp(robertson_scipy, (0.0, T_END), [1.0, 0.0, 0.0], method="Radau", args=(k1, k2, k3),
                        rtol=1e-11 if tight else rtol, atol=1e-18 if tight else atol, t_eval=[T_END])
        assert sol.status == 0, sol.message
        out[i] = sol.y[:, -1]
    return time.perf_counter() - start, out


def run_diffrax(k, rtol, atol):
    import jax

    jax.config.update("jax_enable_x64", True)
    import diffrax
    import jax.numpy as jnp

    def rhs(t, y, args):
        k1, k2, k3 = args
        return jnp.stack([-k1 * y[0] + k3 * y[1] * y[2], k1 * y[0] - k3 * y[1] * y[2] - k2 * y[1] ** 2,
                          k2 * y[1] ** 2])

    term = diffrax.ODETerm(rhs)
    solver = diffrax.Kvaerno5()
    controller = diffrax.PIDController(rtol=rtol, atol=atol)

    def one(args):
        sol = diffrax.diffeqsolve(term, solver, t0=0.0, t1=T_END, dt0=1e-6, y0=jnp.array([1.0, 0.0, 0.0]),
                                  args=(args[0], args[1], args[2]), stepsize_controller=controller,
                                  saveat=diffrax.SaveAt(t1=True), max_steps=100_000)
        return sol.ys[-1], sol.stats["num_steps"]

    batched = jax.jit(jax.vmap(one))
    kj = jnp.asarray(k)
    start = time.perf_counter()
    jax.block_until_ready(batched(kj[:4]))
    first = time.perf_counter() - start
    start = time.perf_counter()
    ys, steps = jax.block_until_ready(batched(kj))
    return time.perf_counter() - start, first, np.asarray(ys), float(np.mean(steps))


def error_units(x, ref, rtol, atol):
    return float(np.max(np.abs(x - ref) / (atol + rtol * np.abs(ref))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=10_000)
    parser.add_argument("--sample", type=int, default=100, help="scipy paths timed (extrapolated to --paths)")
    parser.add_argument("--error-sample", type=int, default=20, help="paths checked against the tight reference")
    parser.add_argument("--rtol", type=float, default=1e-6)
    parser.add_argument("--atol", type=float, default=1e-10)
    parser.add_argument("--skip-diffrax", action="store_true")
    args = parser.parse_args()
    import numba

    k = rates(args.paths)
    check = np.linspace(0, args.paths - 1, args.error_sample).astype(int)
    _, ref = run_scipy(k[check], args.rtol, args.atol, tight=True)
    rows = []
    for method in ("rodas5", "rodas4"):
        seconds, first, x, steps = run_sdekit(k, method, args.rtol, args.atol)
        rows.append((f"sdekit {method} (numba, {numba.get_num_threads()} threads)", seconds, first, steps,
                     error_units(x[check], ref, args.rtol, args.atol), "all paths"))
    sample = min(args.sample, args.paths)
    seconds, x = run_scipy(k[:sample], args.rtol, args.atol)
    in_sample = check[check < sample]
    rows.append(("scipy solve_ivp Radau, loop", seconds * args.paths / sample, 0.0, float("nan"),
                 error_units(x[in_sample], ref[: in_sample.size], args.rtol, args.atol) if in_sample.size else
                 float("nan"), f"{sample} paths timed, x{args.paths / sample:g}"))
    if not args.skip_diffrax:
        seconds, first, x, steps = run_diffrax(k, args.rtol, args.atol)
        rows.append(("diffrax Kvaerno5, jax.vmap + jit", seconds, first, steps,
                     error_units(x[check], ref, args.rtol, args.atol), "all paths"))
    best = rows[0][1]
    print(f"Robertson to t = {T_END:g}, {args.paths} rate sets, rtol={args.rtol:g}, atol={args.atol:g}, "
          f"{os.cpu_count()} CPUs")
    print(f"| solver | seconds ({args.paths} paths) | first call s | steps/path | error (tol units) | x rodas5 time "
          "| note |")
    print("|---|---|---|---|---|---|---|")
    for name, seconds, first, steps, err, note in rows:
        shown = "–" if np.isnan(steps) else f"{steps:.0f}"
        print(f"| {name} | {seconds:.3g} | {first:.3g} | {shown} | {err:.2g} | {seconds / best:.3g} | {note} |")


if __name__ == "__main__":
    main()

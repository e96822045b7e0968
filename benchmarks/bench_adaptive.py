"""Adaptive SDE steps per path against fixed steps on the same Brownian paths, and against diffrax.

Two problems where the noise scale changes by orders of magnitude along the span:

(a) burst: ``dX = (X - X^3) dt + s(t) dW`` on ``[0, 1]``, ``x0 = 0.5``, with
    ``s(t) = 1e-3 + 10 exp(-((t - 0.5) / 0.02)^2 / 2)`` (4 decades: a short burst of noise on a quiet path, which
    throws the paths into the stiff region of the cubic drift, each path differently);
(b) diffusion: the reverse-time SDE of ``diffusion.VPSDE(eps=1e-7)`` (beta 0.1..20) with the exact score of a
    Gaussian mixture of narrow components (weights 0.5/0.3/0.2, means (-2, 0), (2, 1), (0.5, -2.5), variances
    1e-6, 1e-6, 2e-6), from ``T = 1`` to ``eps``: the noise level ``sigma_t`` falls from 1 to 1e-4 and the score's
    scale ``1 / (sigma_t^2 + var)`` grows by 6 decades.

Both have additive noise: sdekit ``sra1`` adapts with the Rackauckas & Nie (2017) error estimate
(``solve(..., rtol=, atol=)``); fixed steps are ``sra1`` (and ``euler`` for (b)) on ``n`` uniform steps. Every sdekit
solve reads the same ``sdekit.BrownianPath`` (same seed), so the adaptive and fixed solves see the same W(t), and
the reference is ``sra1`` on ``--ref-steps`` fixed steps of that path ((a): a quarter of them; its error against
half its steps is printed). Strong error: RMS over paths of ``|X_end - X_ref|`` (Euclidean). Cost: drift + diffusion evaluations per
path (``Solution.drift_evals_per_path + diffusion_evals_per_path``, the mean; adaptive counts include rejected
attempts and the first-step guess). "evaluations ratio at equal error": the fixed-step evaluations at the adaptive
solve's error (log-log interpolation of the fixed curve) over the adaptive solve's.

diffrax (when importable): the same SDEs solved with ``diffrax.SRA1`` (Rößler's SRA1, its embedded error estimate),
``PIDController(rtol, atol)`` and a ``VirtualBrownianTree`` with space-time Lévy area, ``jax.vmap`` over paths, jit
compiled ahead of the timing, float64. Its Brownian samples are its own, so the two libraries are compared by their
error-vs-time curves: each against a reference on its own paths (diffrax: the same solver at rtol = atol 100x below
its tightest on the same tree; problem (b) integrated in ``u = T - t`` forwards, the same law). "time ratio at equal error":
diffrax's wall time per path at sdekit's error (log-log interpolation) over sdekit's.

Per-path overhead: wall time per attempted step (accepted or rejected, mean over paths) of an adaptive ``sra1`` solve
over the wall time per step of a fixed-step ``sra1`` solve of the same paths (on the power of 2 nearest to the
attempts): the cost of the controller, the per-path stepping and the Brownian cursor against the fixed-step kernel
and its tree walk, for the same number of scheme steps.

Run:  python benchmarks/bench_adaptive.py            (about 10 minutes on 2 busy cores, most of it compilation)
      python benchmarks/bench_adaptive.py --quick    (fewer paths and tolerances)
      python benchmarks/bench_adaptive.py --plots    (also writes docs/img/adaptive_work_precision.png and
                                                      docs/img/first_passage.png)
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numba
import numpy as np

import sdekit

BURST_SMIN, BURST_AMPLITUDE, BURST_CENTER, BURST_WIDTH = 1e-3, 10.0, 0.5, 0.02
MIX_WEIGHTS = (0.5, 0.3, 0.2)
MIX_MEANS = ((-2.0, 0.0), (2.0, 1.0), (0.5, -2.5))
MIX_VARS = (1e-6, 1e-6, 2e-6)
VP_EPS = 1e-7
FPT_DRIFT, FPT_LEVEL, FPT_T, FPT_STEPS = 0.5, 1.0, 4.0, 8  # first passage of W + 0.5 t to 1 on [0, 4], 8 euler steps
IMG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "img")


# ------------------------------------------------------------------------------------------------ the problems
def burst_problem():
    """Problem (a): double-well drift, additive noise with a burst."""
    return sdekit.SDE(lambda t, x, p: x - x**3,
                      lambda t, x, p: p[0] + p[1] * np.exp(-0.5 * ((t - p[2]) / p[3]) ** 2) + 0.0 * x,
                      noise="additive", params=(BURST_SMIN, BURST_AMPLITUDE, BURST_CENTER, BURST_WIDTH))


def diffusion_problem():
    """Problem (b): the reverse VP SDE with the exact mixture score; returns (problem, VPSDE)."""
    import diffusion as df
    from diffusion.reverse import reverse_sde

    sde = df.VPSDE(eps=VP_EPS)
    mixture = df.GaussianMixture(list(MIX_WEIGHTS), [list(m) for m in MIX_MEANS], list(MIX_VARS))
    return reverse_sde(mixture.score_fn(sde)), sde


def rms_error(x, ref) -> float:
    return float(np.sqrt(np.mean(np.sum((x - ref) ** 2, axis=1))))


def evaluations(sol) -> float:
    return float(np.mean(sol.drift_evals_per_path + sol.diffusion_evals_per_path))


def interpolate_cost(err, curve):
    """The cost at which ``curve`` ([(error, cost)]) first reaches ``err`` going up in cost: log-log linear between the
    last point above ``err`` and the first at or below it (the curve need not be monotone: a uniform grid's last step
    near a stiff end can make more steps worse); NaN if it never reaches ``err`` or starts below it."""
    pts = sorted(curve, key=lambda ec: ec[1])
    for (e0, c0), (e1, c1) in zip(pts, pts[1:], strict=False):
        if e1 <= err:
            if not (math.isfinite(e0) and e0 > err):
                return math.nan
            w = math.log(err / e0) / math.log(e1 / e0) if e1 > 0 else 1.0
            return math.exp(math.log(c0) + w * math.log(c1 / c0))
    return math.nan


def timed(fn, repeat):
    best, out = math.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


# ------------------------------------------------------------------------------------------------ sdekit runs
def run_sdekit(name, problem, x0, span, brownian, rtols, fixed_steps, fixed_methods, ref_steps, repeat):
    """Adaptive sra1 and fixed-step curves on one Brownian path; returns a dict of the measurements."""
    t0, t1 = span
    solve = lambda **kw: sdekit.solve(problem, x0, span, brownian=brownian, save_at=[t1], **kw)  # noqa: E731
    start = time.perf_counter()
    ref = solve(method="sra1", n_steps=ref_steps).x[-1]
    half = solve(method="sra1", n_steps=ref_steps // 2).x[-1]
    n = brownian.n_paths
    floor = rms_error(half, ref)
    print(f"\n({name}) {n} paths; reference sra1 on {ref_steps} steps ({time.perf_counter() - start:.1f} s with its half), "
          f"its error against {ref_steps // 2} steps: {floor:.2e}")
    solve(method="sra1", rtol=rtols[0], atol=rtols[0])  # compile
    out = {"adaptive": [], "fixed": {m: [] for m in fixed_methods}, "overhead": [], "floor": floor}
    for rtol in rtols:
        sol, seconds = timed(lambda rtol=rtol: solve(method="sra1", rtol=rtol, atol=rtol), repeat)
        err, cost = rms_error(sol.x[-1], ref), evaluations(sol)
        attempts = float(np.mean(sol.steps_per_path + sol.rejected_per_path))
        n_fixed = 2 ** max(0, round(math.log2(attempts)))  # the path refines dyadically: the nearest power of 2
        _, fixed_seconds = timed(lambda k=n_fixed: solve(method="sra1", n_steps=k), repeat)
        overhead = (seconds / attempts) / (fixed_seconds / n_fixed)  # time per attempted step over per fixed step
        out["adaptive"].append((err, cost, seconds / n, rtol))
        out["overhead"].append((rtol, attempts, overhead))
        print(f"  sra1 adaptive rtol=atol={rtol:.0e}: error {err:.2e}, {cost:7.0f} evaluations/path "
              f"(min {np.min(sol.drift_evals_per_path + sol.diffusion_evals_per_path)}, "
              f"max {np.max(sol.drift_evals_per_path + sol.diffusion_evals_per_path)}), "
              f"rejected {np.mean(sol.rejected_per_path):.1f}/path, {seconds / n * 1e6:.0f} us/path; "
              f"time per attempted step / fixed sra1's ({n_fixed} steps): {overhead:.1f}x")
    for method in fixed_methods:
        solve(method=method, n_steps=fixed_steps[0])  # compile
        line = []
        for steps in fixed_steps:
            sol, seconds = timed(lambda m=method, s=steps: solve(method=m, n_steps=s), repeat)
            err = rms_error(sol.x[-1], ref) if not sol.failed.any() else math.inf
            out["fixed"][method].append((err, evaluations(sol), seconds / n, steps))
            line.append(f"n={steps}: {err:.2e}")
        print(f"  {method} fixed: " + ", ".join(line))
    return out


def ratios_at_equal_error(out):
    """Per adaptive point: fixed evaluations at its error / its evaluations, for each fixed method."""
    rows = []
    for err, cost, _, rtol in out["adaptive"]:
        row = {"rtol": rtol, "error": err, "evals": cost}
        for method, curve in out["fixed"].items():
            finite = [(e, c) for e, c, _, _ in curve if math.isfinite(e)]
            row[method] = interpolate_cost(err, finite) / cost
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ diffrax
def diffrax_curve(name, n_paths, rtols, seed=0):
    """diffrax SRA1 + PIDController + VirtualBrownianTree: [(error, seconds per path, steps per path, rtol)], or None."""
    try:
        import jax

        jax.config.update("jax_enable_x64", True)
        import diffrax
        import jax.numpy as jnp
    except ImportError as exc:
        print(f"  diffrax: skipped ({exc})")
        return None

    if name == "burst":
        t0, t1, dim, y0 = 0.0, 1.0, 1, jnp.array([0.5])

        def drift(t, y, args):
            return y - y**3

        def sigma(t):
            return BURST_SMIN + BURST_AMPLITUDE * jnp.exp(-0.5 * ((t - BURST_CENTER) / BURST_WIDTH) ** 2)

        def diffusion(t, y, args):
            return sigma(t) * jnp.eye(dim)
        tree_tol = 1e-7
    else:
        # reverse VP SDE in u = T - t (forwards): dX = -(f x - beta score)(T - u) du + sqrt(beta(T - u)) dW_u
        b0, b1, T = 0.1, 20.0, 1.0
        t0, t1, dim = 0.0, T - VP_EPS, 2
        w = jnp.log(jnp.array(MIX_WEIGHTS))
        m = jnp.array(MIX_MEANS)
        c = jnp.array(MIX_VARS)

        def score(t, x):
            big_b = b0 * t + 0.5 * (b1 - b0) * t * t
            a = jnp.exp(-0.5 * big_b)
            s2 = -jnp.expm1(-big_b)
            v = a * a * c + s2  # (K,) variances of the components at t
            d = x[None, :] - a * m  # (K, dim)
            logp = w - 0.5 * jnp.sum(d * d, axis=1) / v - 0.5 * dim * jnp.log(v)
            r = jax.nn.softmax(logp)
            return -jnp.sum(r[:, None] * d / v[:, None], axis=0)

        def drift(u, y, args):
            t = T - u
            beta = b0 + (b1 - b0) * t
            return -(-0.5 * beta * y - beta * score(t, y))

        def diffusion(u, y, args):
            return jnp.sqrt(b0 + (b1 - b0) * (T - u)) * jnp.eye(dim)
        tree_tol = 1e-9

    def solve_one(key, y_init, rtol):
        bm = diffrax.VirtualBrownianTree(t0, t1, tol=tree_tol, shape=(dim,), key=key, levy_area=diffrax.SpaceTimeLevyArea)
        terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm))
        sol = diffrax.diffeqsolve(terms, diffrax.SRA1(), t0, t1, dt0=(t1 - t0) / 64, y0=y_init,
                                  stepsize_controller=diffrax.PIDController(rtol=rtol, atol=rtol),
                                  saveat=diffrax.SaveAt(t1=True), max_steps=2**20)
        return sol.ys[-1], sol.stats["num_steps"]

    keys = jax.random.split(jax.random.PRNGKey(seed), n_paths)
    if name == "burst":
        y_init = jnp.broadcast_to(y0, (n_paths, dim))
    else:
        y_init = jax.random.normal(jax.random.PRNGKey(seed + 1), (n_paths, dim))

    def run(rtol):
        fn = jax.jit(jax.vmap(lambda k, y: solve_one(k, y, rtol)))
        fn(keys, y_init)[0].block_until_ready()  # compile
        start = time.perf_counter()
        ys, steps = fn(keys, y_init)
        ys.block_until_ready()
        return np.asarray(ys), time.perf_counter() - start, float(np.mean(steps))

    ref_rtol = min(rtols) / 100
    ref, ref_seconds, ref_steps = run(ref_rtol)
    print(f"  diffrax SRA1 + PIDController + VirtualBrownianTree, {n_paths} paths, reference rtol=atol={ref_rtol:.0e} "
          f"({ref_steps:.0f} steps/path, {ref_seconds:.1f} s)")
    curve = []
    for rtol in rtols:
        ys, seconds, steps = run(rtol)
        err = rms_error(ys, ref)
        curve.append((err, seconds / n_paths, steps, rtol))
        print(f"  diffrax rtol=atol={rtol:.0e}: error {err:.2e}, {steps:.0f} steps/path, {seconds / n_paths * 1e6:.0f} us/path")
    return curve


def time_ratios(sdekit_points, diffrax_points):
    """diffrax's time per path at sdekit's error / sdekit's, per sdekit adaptive point."""
    curve = [(e, s) for e, s, _, _ in diffrax_points]
    return [(rtol, err, interpolate_cost(err, curve) / seconds) for err, _, seconds, rtol in sdekit_points]


# ------------------------------------------------------------------------------------------------ plots
def plot_work_precision(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.2))
    for ax, (title, out) in zip(np.atleast_1d(axes), results.items(), strict=True):
        a = sorted(out["adaptive"], key=lambda r: r[1])
        ax.loglog([r[1] for r in a], [r[0] for r in a], "o-", label="sra1 adaptive (rtol = atol)")
        for method, curve in out["fixed"].items():
            pts = [(c, e) for e, c, _, _ in curve if math.isfinite(e)]
            ax.loglog([p[0] for p in pts], [p[1] for p in pts], "s--", label=f"{method}, fixed steps")
        ax.set_xlabel("drift + diffusion evaluations per path")
        ax.set_ylabel("strong error (RMS vs reference, same paths)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def first_passage(n_paths, path=None):
    """First passage of W + mu t to a level: event times with and without the bridge correction, against the
    inverse-Gaussian density ``a / sqrt(2 pi t^3) exp(-(a - mu t)^2 / (2 t))``."""
    from scipy import stats

    bm = sdekit.SDE(lambda t, x, p: p[0] + 0.0 * x, lambda t, x, p: 1.0 + 0.0 * x, noise="additive", params=(FPT_DRIFT,))
    times = {}
    for bridge in (True, False):
        ev = sdekit.Event(lambda t, x, p: x[:, 0] - 1.0, bridge=bridge)
        sol = sdekit.solve(bm, 0.0, (0.0, FPT_T), method="euler", n_steps=FPT_STEPS, n_paths=n_paths, seed=5,
                           events=[ev], save_at=[FPT_T])
        times[bridge] = sol.event_t[np.isfinite(sol.event_t)]
    a, mu = FPT_LEVEL, FPT_DRIFT
    density = lambda t: a / np.sqrt(2 * np.pi * t**3) * np.exp(-((a - mu * t) ** 2) / (2 * t))  # noqa: E731
    cdf = lambda t: stats.norm.cdf((mu * t - a) / np.sqrt(t)) + np.exp(2 * mu * a) * stats.norm.cdf((-mu * t - a) / np.sqrt(t))  # noqa: E731
    p_hit = cdf(FPT_T)
    print(f"\nfirst passage of W + {mu} t to {a} on [0, {FPT_T:g}], euler on {FPT_STEPS} steps, {n_paths} paths:")
    for bridge, t in times.items():
        z = (t.size / n_paths - p_hit) / math.sqrt(p_hit * (1 - p_hit) / n_paths)
        ks = stats.kstest(t, lambda s: cdf(s) / p_hit).pvalue
        print(f"  bridge={bridge!s:5}: P(hit) {t.size / n_paths:.4f} (exact {p_hit:.4f}, z = {z:+.1f}), "
              f"KS p-value of the times given a hit: {ks:.2g}")
    if path is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    bins = np.linspace(0.0, FPT_T, 65)
    for bridge, style in ((True, "C0"), (False, "C3")):
        t = times[bridge]
        heights, edges = np.histogram(t, bins=bins)
        ax.stairs(heights / (n_paths * np.diff(edges)), edges, color=style,
                  label=f"solve(events=...), bridge={bridge} ({FPT_STEPS} euler steps)")
    grid = np.linspace(1e-3, FPT_T, 400)
    ax.plot(grid, density(grid), "k-", lw=1.2, label="exact inverse-Gaussian density")
    ax.set_xlabel("first-passage time")
    ax.set_ylabel("density")
    ax.set_title(f"first passage of W + {mu} t to {a}, {n_paths} paths")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


# ------------------------------------------------------------------------------------------------ main
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=400, help="sdekit paths per problem (default 400)")
    parser.add_argument("--diffrax-paths", type=int, default=100)
    parser.add_argument("--ref-steps", type=int, default=2**17)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="100 paths, 3 tolerances, a coarser reference")
    parser.add_argument("--plots", action="store_true", help="write docs/img/adaptive_work_precision.png and first_passage.png")
    parser.add_argument("--fpt-paths", type=int, default=40_000)
    parser.add_argument("--no-diffrax", action="store_true")
    args = parser.parse_args()
    rtols = [1e-1, 1e-2, 1e-3, 1e-4]
    steps = [2**k for k in range(3, 16)]
    if args.quick:
        args.paths, args.diffrax_paths, args.ref_steps, args.repeat, args.fpt_paths = 100, 30, 2**16, 1, 10_000
        rtols, steps = [1e-1, 1e-2, 1e-3], [2**k for k in range(3, 14)]
    print(f"numba backend, {numba.get_num_threads()} threads; sdekit {sdekit.__version__}")

    burst = burst_problem()
    bp = sdekit.BrownianPath.for_steps(1, (0.0, 1.0), 1, n_paths=args.paths, noise_dim=1, levy_area=True)
    res_a = run_sdekit("a: burst", burst, 0.5, (0.0, 1.0), bp, rtols, steps, ("sra1",), args.ref_steps // 4, args.repeat)

    problem, vp = diffusion_problem()
    x_T = vp.prior_sample(args.paths, 2, seed=0)
    bp2 = sdekit.BrownianPath.for_steps(2, (vp.eps, vp.T), 1, n_paths=args.paths, noise_dim=2, levy_area=True)
    res_b = run_sdekit("b: reverse VP SDE", problem, x_T, (vp.T, vp.eps), bp2, rtols, steps, ("sra1", "euler"),
                       args.ref_steps, args.repeat)

    print("\n| problem | rtol = atol | strong error | evaluations/path, adaptive | fixed sra1 at that error | ratio |"
          " fixed euler at that error | ratio | time per step, adaptive / fixed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, out in (("(a) burst", res_a), ("(b) reverse VP", res_b)):
        for row, (_, _, over) in zip(ratios_at_equal_error(out), out["overhead"], strict=True):
            cells = []
            for method in ("sra1", "euler"):
                r = row.get(method, math.nan)
                curve = out["fixed"].get(method, [])
                if math.isfinite(r):
                    cells += [f"{r * row['evals']:.0f}", f"**{r:.1f}x**"]
                elif curve and all(e > row["error"] for e, _, _, _ in curve):  # never reached: a lower bound
                    most = max(c for _, c, _, _ in curve)
                    cells += [f"> {most:.0f}", f"**> {most / row['evals']:.0f}x**"]
                else:
                    cells += ["-", "-"]
            below = " (below 3x the reference's error)" if row["error"] < 3 * out["floor"] else ""
            print(f"| {label} | {row['rtol']:.0e} | {row['error']:.2e}{below} | {row['evals']:.0f} | " + " | ".join(cells)
                  + f" | {over:.1f}x |")
    print("ratio: fixed-step evaluations per path where the fixed curve first reaches the adaptive solve's error, over "
          "the adaptive solve's ('> N': not reached by the finest fixed solve; '-': no fixed curve, or it starts below).")

    if args.plots:
        os.makedirs(IMG, exist_ok=True)
        plot_work_precision({"(a) burst: dX = (X - X³) dt + s(t) dW": res_a,
                             "(b) reverse VP SDE, exact mixture score": res_b},
                            os.path.join(IMG, "adaptive_work_precision.png"))
        first_passage(args.fpt_paths, os.path.join(IMG, "first_passage.png"))
    else:
        first_passage(args.fpt_paths)

    if not args.no_diffrax:
        print()
        for label, name, out in (("(a) burst", "burst", res_a), ("(b) reverse VP", "vp", res_b)):
            print(f"diffrax on {label}:")
            curve = diffrax_curve(name, args.diffrax_paths, rtols)
            if curve is None:
                break
            best_err, most_time = min(e for e, _, _, _ in curve), max(t for _, t, _, _ in curve)
            for (rtol, err, ratio), (_, _, seconds, _) in zip(time_ratios(out["adaptive"], curve), out["adaptive"], strict=True):
                shown = f"{ratio:.1f}x" if math.isfinite(ratio) else "- (outside diffrax's range)"
                if not math.isfinite(ratio) and best_err > err:  # diffrax never got there: a lower bound
                    shown = f"> {most_time / seconds:.0f}x (diffrax's tightest solve, {best_err:.1e}, is still less accurate)"
                print(f"  sdekit rtol={rtol:.0e} (error {err:.2e}): diffrax time per path at that error / sdekit's = {shown}")


if __name__ == "__main__":
    main()

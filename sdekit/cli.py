"""``sdekit`` command line: ``sdekit demo`` (the README's main job), ``sdekit converge`` and ``sdekit ensemble``.

Packages installed alongside sdekit add sections to ``sdekit demo`` through the entry-point group
``sdekit.demo``: each entry point names a function ``section(out, quick=False)`` that prints its part and
writes its plots into the folder ``out``; the sections run after sdekit's own, in the order of their names.
(This distribution's ``diffusion`` package contributes its sampling and training demo that way.)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from .checks import require, writable_path

__all__ = ["main", "demo_sections"]


def _int_at_least(low: int):
    """An argparse type: an integer >= ``low``."""

    def check(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return v

    return check


def _first_calls(study) -> str:
    """One line: each method's first solve in ``study`` (compilation and set-up), which its timings exclude."""
    if not study.first_call_seconds:
        return "first calls: none (the numpy backend compiles nothing)"
    calls = ", ".join(f"{m} {s:.2f} s" for m, s in study.first_call_seconds.items())
    return f"first calls (compile and set-up, not in the times above): {calls}"


def _demo(args) -> int:
    import numba

    from . import convergence, problems, solve

    try:
        for module in ("matplotlib", "torch"):  # the demo extra: the plots, and the diffusion section trains a network
            require(module, extra="demo", what="sdekit demo")
        writable_path(args.out, "--out", folder=True)
        os.makedirs(args.out, exist_ok=True)
    except (ValueError, OSError) as exc:
        print(f"sdekit demo: error: {exc}", file=sys.stderr)
        return 2
    n_paths = 500 if args.quick else 2000
    steps = [16, 32, 64, 128] if args.quick else [16, 32, 64, 128, 256, 512]
    print("sdekit demo: strong errors E|X_T - X_T^exact| on one Brownian path per sample, weak errors of E X_T "
          "with common random numbers", flush=True)
    runs = [
        ("ou", ["euler", "milstein", "sra1", "sriw1"], 1),
        ("gbm", ["euler", "milstein", "sriw1"], 2),
    ]
    for name, methods, seed in runs:
        st = convergence.study(problems.get_problem(name), methods, steps, n_paths=n_paths, seed=seed,
                               progress=not args.quick)
        print()
        print(st.table())
        print(_first_calls(st))
        for kind, stem in (("errors", "convergence"), ("work", "work_precision")):
            path = os.path.join(args.out, f"{stem}_{name}.png")
            st.plot(path, kind=kind)
            print(f"wrote {path}")

    n_tp = 10_000 if args.quick else 100_000
    p = problems.ornstein_uhlenbeck().problem
    print(f"\nthroughput on scalar OU, {n_tp} paths x 1000 steps, {numba.get_num_threads()} threads (numba backend); "
          "the first call (2 paths x 2 steps: compilation and set-up) is timed apart")
    print(f"  {'method':>9}  {'first call s':>12}  {'run s':>6}  ns per path-step")
    for meth in ("euler", "milstein", "sra1", "sriw1"):
        t = time.perf_counter()
        solve(p, 2.0, (0.0, 1.0), method=meth, n_steps=2, n_paths=2, seed=0, save_at=[1.0])
        first = time.perf_counter() - t
        t = time.perf_counter()
        solve(p, 2.0, (0.0, 1.0), method=meth, n_steps=1000, n_paths=n_tp, seed=0, save_at=[1.0])
        el = time.perf_counter() - t
        print(f"  {meth:>9}  {first:12.2f}  {el:6.2f}  {el / (n_tp * 1000) * 1e9:6.2f}")

    sections = demo_sections()
    if not sections:
        print("\nno other demo sections are installed (the diffusion front end registers one in the entry-point "
              "group 'sdekit.demo'; after updating a source checkout, run pip install -e . again)")
    for section in sections:
        section.load()(args.out, quick=args.quick)
    return 0


def demo_sections() -> list:
    """The entry points of the group ``sdekit.demo`` (sections of ``sdekit demo`` from other packages), by name."""
    from importlib.metadata import entry_points

    return sorted(entry_points(group="sdekit.demo"), key=lambda point: point.name)


def _converge(args) -> int:
    from . import convergence, problems

    if args.list_problems:
        for name in sorted(problems.PROBLEMS):
            ex = problems.get_problem(name)
            kind = f"SDE, {ex.problem.noise} noise, {ex.problem.calculus}" if ex.problem.is_sde else "ODE"
            print(f"{name:<22} {kind}")
        return 0
    if args.problem is None:
        print("sdekit converge: error: --problem is required (see --list-problems).", file=sys.stderr)
        return 2
    try:
        for path, option in ((args.plot, "--plot"), (args.work_plot, "--work-plot"), (args.csv, "--csv")):
            if path:
                writable_path(path, option)
        ex = problems.get_problem(args.problem)
        methods = [m for m in args.methods.split(",") if m]
        st = convergence.study(ex, methods, args.steps, n_paths=args.paths, seed=args.seed, reference=args.reference,
                               reference_steps=args.reference_steps, backend=args.backend, fit_from=args.fit_from,
                               progress=not args.no_progress)
    except ValueError as exc:
        print(f"sdekit converge: error: {exc}", file=sys.stderr)
        return 2
    print(st.table(args.format))
    if args.format == "text":
        print(_first_calls(st))
    try:
        for path, kind in ((args.plot, "errors"), (args.work_plot, "work")):
            if path:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                st.plot(path, kind=kind)
                print(f"wrote {path}")
        if args.csv:
            st.save_csv(args.csv)
            print(f"wrote {args.csv}")
    except OSError as exc:  # the folder changed under us since the check
        print(f"sdekit converge: error: cannot write the results: {exc}", file=sys.stderr)
        return 2
    return 0


# The distribution of X_t of the exact problems whose quantiles have a closed form, from their mean and variance:
# OU is Gaussian; GBM is lognormal (Kloeden & Platen 1992, ch. 4).
_LAWS = {"ou": "normal", "gbm": "lognormal", "gbm_stratonovich": "lognormal"}


def _float_list(text: str, option: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{option} must be comma-separated numbers, got {text!r}") from None


def _exact_values(name: str, ex, t, levels) -> dict:
    """Exact mean, variance and quantiles at the times ``t`` where the problem has them (else absent)."""
    if ex.mean is None or ex.t_span[0] != 0.0:
        return {}
    from scipy.stats import norm

    x0 = np.asarray(ex.x0, dtype=np.float64)
    mean = np.stack([ex.mean(tj, x0) for tj in t])
    out = {"mean": mean}
    if ex.second_moment is not None:
        var = np.stack([ex.second_moment(tj, x0) for tj in t]) - mean * mean
        out["var"] = var
        z = norm.ppf(np.asarray(levels))[:, None, None]
        if _LAWS.get(name) == "normal":
            out["quantiles"] = mean + np.sqrt(var) * z
            out["cdf"] = lambda j, i, x: norm.cdf((x - mean[j, i]) / np.sqrt(var[j, i]))
        elif _LAWS.get(name) == "lognormal":  # log X_t ~ N(mu, s2) with s2 = log(1 + var / mean^2)
            s2 = np.log1p(var / (mean * mean))
            mu = np.log(mean) - 0.5 * s2
            out["quantiles"] = np.exp(mu + np.sqrt(s2) * z)
            out["cdf"] = lambda j, i, x: norm.cdf((np.log(x) - mu[j, i]) / np.sqrt(s2[j, i])) if x > 0 else 0.0
    return out


def _ensemble_rows(result, exact: dict) -> list[dict]:
    """One row per statistic, save time and component: estimate, standard error, exact value, and its check."""
    rows = []
    for j, tj in enumerate(result.t):
        for name in ("mean", "var"):
            value = getattr(result, name)
            if value is None:
                continue
            se = getattr(result, f"{name}_se")
            for i in range(value.shape[1]):
                row = {"t": float(tj), "component": i, "statistic": name, "estimate": float(value[j, i]),
                       "se": float(se[j, i])}
                if name in exact:
                    row["exact"] = float(exact[name][j, i])
                    row["z"] = (row["estimate"] - row["exact"]) / row["se"] if row["se"] > 0 else float("nan")
                rows.append(row)
        for name in ("min", "max"):
            value = getattr(result, name)
            if value is not None:
                rows += [{"t": float(tj), "component": i, "statistic": name, "estimate": float(value[j, i])}
                         for i in range(value.shape[1])]
        if result.quantiles is not None:
            for k, level in enumerate(result.quantile_levels):
                for i in range(result.quantiles.shape[2]):
                    row = {"t": float(tj), "component": i, "statistic": f"q{level:g}",
                           "estimate": float(result.quantiles[k, j, i])}
                    if "quantiles" in exact:
                        row["exact"] = float(exact["quantiles"][k, j, i])
                        row["rank_error"] = float(exact["cdf"](j, i, row["estimate"]) - level)
                    rows.append(row)
    return rows


def _ensemble_text(rows: list[dict]) -> str:
    lines = [f"{'t':>8}  {'comp':>4}  {'statistic':<9}  {'estimate':>12}  {'s.e.':>10}  {'exact':>12}  check"]
    for r in rows:
        se = f"{r['se']:10.3g}" if "se" in r else f"{'-':>10}"
        exact = f"{r['exact']:12.6g}" if "exact" in r else f"{'-':>12}"
        check = (f"z = {r['z']:+.2f}" if "z" in r else f"rank error {r['rank_error']:+.4f}" if "rank_error" in r
                 else "")
        lines.append(f"{r['t']:8.4g}  {r['component']:>4}  {r['statistic']:<9}  {r['estimate']:12.6g}  {se}  {exact}  "
                     f"{check}".rstrip())
    return "\n".join(lines)


def _ensemble(args) -> int:
    import contextlib
    import json

    from . import problems
    from .ensemble import ensemble

    try:
        ex = problems.get_problem(args.problem)
        t0, t1 = ex.t_span
        save_at = _float_list(args.save_at, "--save-at") if args.save_at else list(t0 + (t1 - t0) * np.arange(1, 5) / 4)
        stats = [s for s in args.stats.split(",") if s]
        levels = _float_list(args.quantiles, "--quantiles")
        bins = None
        if args.bins:
            edges = _float_list(args.bins, "--bins")
            if len(edges) != 3 or edges[2] != int(edges[2]):
                raise ValueError(f"--bins must be lo,hi,n (n equal bins from lo to hi), got {args.bins!r}")
            bins = (edges[0], edges[1], int(edges[2]))
        elif "histogram" in stats:
            raise ValueError("the histogram statistic needs --bins lo,hi,n (n equal bins from lo to hi)")
        if args.workers and args.scheduler:
            raise ValueError("give --workers (a LocalCluster started here) or --scheduler (a running cluster), not both")
        with contextlib.ExitStack() as stack:
            client = None
            if args.workers or args.scheduler:
                distributed = require("distributed", extra="distributed", what="sdekit ensemble --workers/--scheduler")
                if args.scheduler:
                    client = stack.enter_context(distributed.Client(args.scheduler))
                else:
                    cluster = stack.enter_context(distributed.LocalCluster(
                        n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None))
                    client = stack.enter_context(distributed.Client(cluster))
            result = ensemble(ex.problem, ex.x0, ex.t_span, method=args.method, n_steps=args.steps,
                              n_paths=args.paths, seed=args.seed, save_at=save_at, statistics=stats,
                              chunk_paths=args.chunk, client=client, backend=args.backend, quantiles=levels, bins=bins,
                              progress=not args.no_progress)
            where = f"Dask, {len(client.nthreads())} workers" if client is not None else "this process"
    except ValueError as exc:
        print(f"sdekit ensemble: error: {exc}", file=sys.stderr)
        return 2
    exact = _exact_values(args.problem, ex, result.t, levels)
    rows = _ensemble_rows(result, exact)
    if args.format == "json":
        histogram = None
        if result.histogram is not None:
            h = result.histogram
            histogram = {"edges": h.edges.tolist(), "counts": h.counts.tolist(), "underflow": h.underflow.tolist(),
                         "overflow": h.overflow.tolist()}
        print(json.dumps({"problem": args.problem, "method": result.method, "n_paths": result.n_paths,
                          "n_failed": result.n_failed, "failures": result.failures, "n_chunks": result.n_chunks,
                          "chunk_paths": result.chunk_paths, "seed": result.seed, "t": result.t.tolist(),
                          "wall_seconds": result.wall_seconds, "rows": rows, "histogram": histogram}))
        return 0
    print(f"sdekit ensemble: {args.problem}, {result.method}, {args.steps} steps, {result.n_paths} paths in "
          f"{result.n_chunks} chunk{'s' if result.n_chunks > 1 else ''} of {result.chunk_paths} ({where}), "
          f"seed {result.seed}: {result.wall_seconds:.2f} s; failed paths: {result.n_failed}"
          + (f" {result.failures}" if result.failures else ""))
    print(_ensemble_text(rows))
    if exact:
        print("z = (estimate - exact) / s.e. counts the scheme's time-step (weak) error as well as the Monte Carlo "
              "error; rank error = F(estimate) - level, F the exact CDF (compare the KLL sketch's rank error, "
              "docs/ensembles.md)")
    if result.histogram is not None:
        h = result.histogram
        for j, tj in enumerate(result.t):
            for i in range(h.counts.shape[1]):
                print(f"histogram t = {tj:g}, component {i}: under {h.underflow[j, i]}, counts "
                      f"{' '.join(str(c) for c in h.counts[j, i])}, over {h.overflow[j, i]}")
    return 0


def _warmup(args) -> int:
    from .warmup import warmup

    warmup(verbose=not args.quiet)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="sdekit", description="Solve SDEs fast and correctly.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="solve OU and GBM with several schemes, fit orders, measure speed, plot; then "
                          "the sections that installed packages add (entry points sdekit.demo)")
    demo.add_argument("--out", default="out", help="folder for the plots (default: out)")
    demo.add_argument("--quick", action="store_true",
                      help="fewer paths, steps, samplers and training steps (about 30 s on 2 cores with a warm cache)")
    demo.set_defaults(func=_demo)
    conv = sub.add_parser(
        "converge", help="strong and weak errors against step count, fitted orders, work-precision, plots",
        description="Errors of several methods at several step counts on one Brownian path per sample. "
                    "Example: sdekit converge --problem gbm --methods euler,milstein,sriw1 --steps 8..1024 "
                    "--paths 2000 --plot out.png",
    )
    conv.add_argument("--problem", help="an exact problem (see --list-problems)")
    conv.add_argument("--methods", default="euler,milstein", help="comma-separated methods (default: euler,milstein)")
    conv.add_argument("--steps", default="8..256", help="'8..1024' (doubling) or '8,16,32' (default: 8..256)")
    conv.add_argument("--paths", type=_int_at_least(2), default=1000,
                      help="sample paths, at least 2 for a standard error (default: 1000)")
    conv.add_argument("--seed", type=_int_at_least(0), default=0)
    conv.add_argument("--reference", default=None,
                      help="'exact' (default) or a method for an analytic-free reference on the same path")
    conv.add_argument("--reference-steps", type=_int_at_least(1), default=None, help="steps of that reference (default 16 x max)")
    conv.add_argument("--fit-from", type=_int_at_least(1), default=None, help="fit orders on step counts >= this only")
    conv.add_argument("--backend", default="numba", choices=["numba", "numpy", "torch"])
    conv.add_argument("--format", default="text", choices=["text", "markdown", "csv"], help="table format")
    conv.add_argument("--plot", help="error-vs-step plot (.png or .svg)")
    conv.add_argument("--work-plot", help="work-precision plot (.png or .svg)")
    conv.add_argument("--csv", help="write the table as CSV")
    conv.add_argument("--no-progress", action="store_true", help="no progress bar")
    conv.add_argument("--list-problems", action="store_true", help="list the exact problems and exit")
    conv.set_defaults(func=_converge)
    ens = sub.add_parser(
        "ensemble", help="streaming statistics of many paths of an exact problem (in chunks; optionally on Dask), "
        "with standard errors and the exact values",
        description="Mean, variance, quantiles, ... of an exact problem at the save times, solved and reduced in "
                    "chunks (sdekit.ensemble). Example: sdekit ensemble --problem ou --paths 10000000 "
                    "--stats mean,var,quantiles --save-at 0.5,1",
    )
    ens.add_argument("--problem", required=True, help="an exact problem (see sdekit converge --list-problems)")
    ens.add_argument("--method", default="euler", help="the scheme (default: euler)")
    ens.add_argument("--steps", type=_int_at_least(1), default=64, help="steps over the problem's time span (default: 64)")
    ens.add_argument("--paths", type=_int_at_least(2), default=100_000, help="number of paths (default: 100000)")
    ens.add_argument("--chunk", type=_int_at_least(1), default=None,
                     help="paths per chunk, rounded up to whole leaves of 4096 (default: about 32 MiB of states)")
    ens.add_argument("--save-at", default=None, help="comma-separated times on the step grid (default: 4 evenly spaced)")
    ens.add_argument("--stats", default="mean,var", help="comma-separated: mean,var,cov,min,max,quantiles,histogram "
                     "(default: mean,var)")
    ens.add_argument("--quantiles", default="0.05,0.25,0.5,0.75,0.95", help="levels of the quantiles statistic")
    ens.add_argument("--bins", default=None, help="lo,hi,n: n equal bins of the histogram statistic")
    ens.add_argument("--seed", type=_int_at_least(0), default=0)
    ens.add_argument("--backend", default="numba", choices=["numba", "numpy", "torch"])
    ens.add_argument("--workers", type=_int_at_least(1), default=None,
                     help="run the chunks on a Dask LocalCluster of this many single-threaded worker processes")
    ens.add_argument("--scheduler", default=None, help="run the chunks on the Dask scheduler at this address")
    ens.add_argument("--format", default="text", choices=["text", "json"])
    ens.add_argument("--no-progress", action="store_true", help="no progress bar")
    ens.set_defaults(func=_ensemble)
    warm = sub.add_parser("warmup", help="compile every Numba kernel of sdekit now (once per installation; e.g. in the "
                          "build step of a container), instead of at the first solve that needs it")
    warm.add_argument("--quiet", action="store_true", help="print nothing")
    warm.set_defaults(func=_warmup)
    args = parser.parse_args(argv)
    np.seterr(all="ignore")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""``sdekit`` command line: ``sdekit demo`` (the README's main job) and ``sdekit converge``.

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
    warm = sub.add_parser("warmup", help="compile every Numba kernel of sdekit now (once per installation; e.g. in the "
                          "build step of a container), instead of at the first solve that needs it")
    warm.add_argument("--quiet", action="store_true", help="print nothing")
    warm.set_defaults(func=_warmup)
    args = parser.parse_args(argv)
    np.seterr(all="ignore")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

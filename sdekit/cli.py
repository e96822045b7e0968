"""``sdekit`` command line: ``sdekit demo`` (the README's main job)."""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

__all__ = ["main"]


def _demo(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numba

    from . import convergence, problems, solve

    os.makedirs(args.out, exist_ok=True)
    n_paths = 500 if args.quick else 2000
    steps = [16, 32, 64, 128] if args.quick else [16, 32, 64, 128, 256, 512]
    ou = problems.ornstein_uhlenbeck()
    gbm = problems.gbm()
    print("sdekit demo: strong errors E|X_T - X_T^exact| on one Brownian path per sample", flush=True)
    studies = [
        ("Ornstein-Uhlenbeck (additive noise)", convergence.strong_study(
            ou, ["euler", "milstein", "sra1", "sriw1"], steps, n_paths=n_paths, seed=1)),
        ("geometric Brownian motion (scalar noise, Itô)", convergence.strong_study(
            gbm, ["euler", "milstein", "sriw1"], steps, n_paths=n_paths, seed=2)),
    ]
    fig, axes = plt.subplots(1, len(studies), figsize=(11, 4.2))
    for ax, (title, st) in zip(axes, studies, strict=True):
        print(f"\n{title}: error ± standard error, fitted order [95% bootstrap interval]")
        print(st.table())
        for meth in st.methods:
            ax.errorbar(st.dts, st.mean_error(meth), yerr=2 * st.std_error(meth), marker="o",
                        label=f"{meth} (order {st.fits[meth].order:.2f})")
        for p, ls in [(0.5, ":"), (1.0, "--"), (1.5, "-."), (2.0, "-")]:
            ref = st.mean_error(st.methods[0])[0] * (st.dts / st.dts[0]) ** p
            ax.plot(st.dts, ref, "k", ls=ls, lw=0.8, alpha=0.5, label=f"slope {p}")
        ax.set(xscale="log", yscale="log", xlabel="step size dt", ylabel="strong error", title=title)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(args.out, "convergence.png")
    fig.savefig(path, dpi=120)
    print(f"\nwrote {path}")

    n_tp = 10_000 if args.quick else 100_000
    p = problems.ornstein_uhlenbeck().problem
    print(f"\nthroughput: Euler-Maruyama on scalar OU, {n_tp} paths x 1000 steps, "
          f"{numba.get_num_threads()} threads (numba backend)")
    solve(p, 2.0, (0.0, 1.0), method="euler", n_steps=1000, n_paths=1000, seed=0, save_at=[1.0])
    for meth in ("euler", "milstein", "sra1", "sriw1"):
        solve(p, 2.0, (0.0, 1.0), method=meth, n_steps=1000, n_paths=1000, seed=0, save_at=[1.0])
        t = time.perf_counter()
        solve(p, 2.0, (0.0, 1.0), method=meth, n_steps=1000, n_paths=n_tp, seed=0, save_at=[1.0])
        el = time.perf_counter() - t
        print(f"  {meth:>9}: {el / (n_tp * 1000) * 1e9:6.2f} ns per path-step")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="sdekit", description="Solve SDEs fast and correctly.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="solve OU and GBM with several schemes, fit orders, measure speed, plot")
    demo.add_argument("--out", default="out", help="folder for the plots (default: out)")
    demo.add_argument("--quick", action="store_true", help="fewer paths and steps (about 20 s)")
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    np.seterr(all="ignore")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

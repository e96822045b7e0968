"""The default sampler of ``diffusion.sample`` against the best peer sampler, on exact Gaussian-mixture oracles.

Run:  python benchmarks/bench_default_sampler.py                 (the table of docs/samplers.md, about 6 minutes on 2 cores)
      python benchmarks/bench_default_sampler.py --select        (also every candidate configuration: how the default was chosen)
      python benchmarks/bench_default_sampler.py --quick         (smoke run: 400 paths, NFE 10 20)
      python benchmarks/bench_default_sampler.py --processes     (the default on VE, cosine VP, sub-VP, rectified flow)

Measure (as ``bench_samplers.py``): one x_T (``--paths`` prior draws, fixed seed) per mixture; the reference is
our probability-flow ODE solved by ``dopri5`` at rtol = atol = 1e-10 from the same x_T; each sampler's
x_eps (``denoise=False``) is compared with it by

* RMS: the RMS over paths and coordinates of x_eps - reference;
* median: the median over paths of the per-path RMS error;
* flips: the number of paths that end in another mixture component (by the exact responsibilities at eps)
  than their reference path.

Data (``VPSDE()``: beta 0.1..20, T = 1, eps = 1e-3, the process the peers' adapters in ``peer_samplers.py``
implement):

* ``2-D``: ``bench_samplers.mixture_2d`` (7 anisotropic components, axis ratios up to 17:1);
* ``16-D``: ``bench_samplers.mixture_16d`` (5 components, means of norm 3);
* ``10 modes``: :func:`mixture_10_modes` (10 components in 6-D with unequal weights and covariances whose
  scales differ 30-fold between components);
* held out (not used to choose the default): :func:`mixture_8_modes_3d` and :func:`mixture_32d` (random
  means of norm 1..3, covariance eigenvalues 0.01..0.5; the 32-D one has near-point components).

Peers: every deterministic sampler of k-diffusion and diffusers in ``peer_samplers`` on each grid it supports
(karras, logsnr, uniform). "The best peer" at a (mixture, NFE) is the peer configuration with the lowest RMS
error; the first table sets the default's three measures against that configuration's, the second against the
best peer configuration of each measure separately (a different one per cell: the strongest comparison).
Ours: ``sample(sde, score, n, nfe=N, denoise=False)``, the default with no method or grid. ``--select`` adds the
candidate configurations and prints, per NFE, each one's worst ratio to the best peer over the first three
mixtures, the statistic the default was chosen by (``diffusion.sampling.DEFAULT_SAMPLERS``).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_samplers import mixture_2d, mixture_16d, peer_lists, steps_for, versions  # noqa: E402

from diffusion import VPSDE, TimeGrid, sample  # noqa: E402
from diffusion.oracle import GaussianMixture  # noqa: E402
from diffusion.sampling import default_sampler  # noqa: E402

# (label, method, grid, options): the configurations --select compares (the default's family and its neighbours)
CANDIDATES = [
    (f"{m}{'+lof' if lof else ''} / {g}", m, g, dict(prediction="x0", lower_order_final=lof))
    for m in ("unipc", "unipc3", "dpmpp_2m", "dpmpp_3m")
    for lof in (False, True)
    for g in ("logsnr", "karras", "power1.5", "power2", "power2.5", "power3", "power3.5")
]


def mixture_10_modes(seed: int = 10) -> GaussianMixture:
    """10 components in 6-D: means of norm 2..4, unequal weights, covariance scales differing 30-fold."""
    return _random_mixture(seed, 10, 6, norms=(2.0, 4.0), weights=(0.5, 2.0),
                           eigenvalues=lambda rng, d: 10.0 ** rng.uniform(-1.5, 0.0) * rng.uniform(0.05, 1.0, d))


def mixture_8_modes_3d(seed: int = 101) -> GaussianMixture:
    """Held out from the choice of the default: 8 components in 3-D, means of norm 1..3, variances 0.01..0.5."""
    return _random_mixture(seed, 8, 3)


def mixture_32d(seed: int = 202) -> GaussianMixture:
    """Held out from the choice of the default: 4 components in 32-D, means of norm 1..3, variances 0.01..0.5."""
    return _random_mixture(seed, 4, 32)


def _random_mixture(seed, K, D, *, norms=(1.0, 3.0), weights=(0.3, 1.0),
                    eigenvalues=lambda rng, d: 10.0 ** rng.uniform(-2.0, -0.3, d)) -> GaussianMixture:
    """K components in D dimensions: means of norm in ``norms``, weights uniform in ``weights`` (normalised), and
    randomly rotated covariances with ``eigenvalues(rng, D)``."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((K, D))
    means *= rng.uniform(*norms, (K, 1)) / np.linalg.norm(means, axis=1, keepdims=True)
    w = rng.uniform(*weights, K)
    covs = []
    for _ in range(K):
        q, _ = np.linalg.qr(rng.standard_normal((D, D)))
        covs.append(q @ np.diag(eigenvalues(rng, D)) @ q.T)
    covs = np.array(covs)
    return GaussianMixture(w / w.sum(), means, 0.5 * (covs + covs.transpose(0, 2, 1)))


def _grid(sde, name):
    for kind in ("karras", "power"):
        if name.startswith(kind) and name != kind:
            return TimeGrid(sde, kind, rho=float(name.removeprefix(kind)))
    return name


def _metrics(x, ref, labels_ref, gm, sde):
    x = np.asarray(x)
    per_path = np.sqrt(np.mean((x - ref) ** 2, axis=1))
    labels = gm.responsibilities(x, t=sde.eps, sde=sde).argmax(axis=1)
    return {"rms": float(np.sqrt(np.mean(per_path**2))), "median": float(np.median(per_path)),
            "flips": int(np.sum(labels != labels_ref))}


def run_mixture(label, gm, sde, args, pk, log):
    """{(library, config): {nfe: metrics}} for the peers, the default and (with --select) the candidates."""
    import torch

    n = args.paths
    score = gm.score_fn(sde)
    x_T = sde.prior_sample(n, gm.dim, seed=args.seed)
    common = dict(x_T=x_T, denoise=False, backend="numba")
    ref = np.asarray(sample(sde, score, n, method="dopri5", rtol=1e-10, atol=1e-10, **common).x)
    labels_ref = gm.responsibilities(ref, t=sde.eps, sde=sde).argmax(axis=1)
    out = {}
    for target in args.nfe:
        s = sample(sde, score, n, nfe=target, **common)
        if s.nfe > target:
            raise AssertionError(f"the default spent {s.nfe} evaluations at nfe={target}")
        m = _metrics(s.x, ref, labels_ref, gm, sde)
        out.setdefault(("default", f"{s.method} / {s.grid}"), {})[target] = m
        log(f"  {label:9s} default  {s.method:>12s} / {s.grid:9s} NFE {s.nfe:3d}: RMS {m['rms']:.3e} median "
            f"{m['median']:.3e} flips {m['flips']}")
    if args.select:
        for name, method, grid, opts in CANDIDATES:
            for target in args.nfe:
                try:
                    s = sample(sde, score, n, method=method, nfe=target, grid=_grid(sde, grid), **opts, **common)
                except ValueError as exc:  # a budget a configuration cannot meet
                    log(f"  skip {name} at NFE {target}: {exc}")
                    continue
                out.setdefault(("ours", name), {})[target] = _metrics(s.x, ref, labels_ref, gm, sde)
    x_T_torch = torch.as_tensor(np.asarray(x_T), dtype=torch.float64)

    def x0_hat(x, t):
        return gm.tweedie(x, min(float(t[0]), sde.T), sde)

    for lib, name, grid, per, runner in peer_lists(pk):
        for target in args.nfe:
            k = steps_for(target, per)
            if k < 1:
                continue
            x, nfe = runner(x0_hat, x_T_torch, k)
            out.setdefault((lib, f"{name} / {grid}"), {})[target] = _metrics(x.numpy(), ref, labels_ref, gm, sde)
    return out


def other_processes(args, log):
    """The default against our other configurations on the processes the peers do not implement (VE, the cosine
    VP schedule, sub-VP, rectified flow): rows (process, mixture, NFE, default metrics, best alternative)."""
    from diffusion import VESDE, RectifiedFlow, SubVPSDE

    n, rows = args.paths // 2, []
    alternatives = [(m, g) for m in ("unipc", "unipc3", "dpmpp_2m") for g in ("logsnr", "karras")]
    for pname, sde in (("VE", VESDE()), ("VP cosine", VPSDE(schedule="cosine")), ("sub-VP", SubVPSDE()),
                       ("rectified flow", RectifiedFlow())):
        for mname, gm in (("2-D", mixture_2d()), ("10 modes", mixture_10_modes())):
            score = gm.score_fn(sde)
            x_T = sde.prior_sample(n, gm.dim, seed=args.seed)
            common = dict(x_T=x_T, denoise=False, backend="numba")
            ref = np.asarray(sample(sde, score, n, method="dopri5", rtol=1e-10, atol=1e-10, **common).x)
            labels_ref = gm.responsibilities(ref, t=sde.eps, sde=sde).argmax(axis=1)
            for target in (10, 20):
                d = _metrics(sample(sde, score, n, nfe=target, **common).x, ref, labels_ref, gm, sde)
                alt = [(f"{m} / {g}", _metrics(sample(sde, score, n, method=m, nfe=target, grid=g, lower_order_final=True,
                                                      **common).x, ref, labels_ref, gm, sde)) for m, g in alternatives]
                name, a = min(alt, key=lambda r: r[1]["rms"])
                rows.append((pname, mname, target, d, name, a))
                log(f"  {pname:14s} {mname:8s} NFE {target}: default RMS {d['rms']:.2e}; best other {name} {a['rms']:.2e}")
    return rows


def best(results, libraries, target, metric):
    """(config, value) of the lowest ``metric`` among ``libraries`` at NFE ``target``."""
    cands = [(f"{lib}: {cfg}", r[target][metric]) for (lib, cfg), r in results.items() if lib in libraries and target in r]
    return min(cands, key=lambda c: c[1]) if cands else (None, float("nan"))


def ratio(ours, peer, metric):
    """ours / peer; flips are counts: (ours + 1) / (peer + 1), so 0 against 0 is a tie."""
    return (ours + 1) / (peer + 1) if metric == "flips" else ours / peer


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--paths", type=int, default=2000)
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50])
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--select", action="store_true", help="also run every candidate configuration")
    ap.add_argument("--quick", action="store_true", help="400 paths, NFE 10 20")
    ap.add_argument("--processes", action="store_true",
                    help="only the default against our other configurations on VE, cosine VP, sub-VP and rectified flow "
                         "(half of --paths; no peer implements them)")
    args = ap.parse_args(argv)
    if args.quick:
        args.paths, args.nfe = 400, [10, 20]
    command = shlex.join(["python", "benchmarks/bench_default_sampler.py", *(sys.argv[1:] if argv is None else argv)])
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    print(f"command: {command}\ndate: {date}\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}\nversions: {versions()}\n", flush=True)
    if args.processes:
        rows = other_processes(args, functools.partial(print, flush=True))
        print(f"\nFor docs/samplers.md: `{command}`, {date}; {args.paths // 2} paths.\n")
        print("| process | data | NFE | default: RMS / median / flips | best other (by RMS) | its RMS / median / flips |")
        print("|---|---|---:|---|---|---|")
        for pname, mname, target, d, name, a in rows:
            print(f"| {pname} | {mname} | {target} | {d['rms']:.2e} / {d['median']:.2e} / {d['flips']} | {name} | "
                  f"{a['rms']:.2e} / {a['median']:.2e} / {a['flips']} |")
        return 0
    import peer_samplers as pk
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    if not pk.available():
        raise SystemExit("no peer is installed: pip install -c constraints.txt diffusers; pip install --no-deps k-diffusion")
    sde = VPSDE()
    mixtures = [("2-D", mixture_2d()), ("16-D", mixture_16d()), ("10 modes", mixture_10_modes()),
                ("8 modes 3-D (held out)", mixture_8_modes_3d()), ("32-D (held out)", mixture_32d())]
    t0 = time.perf_counter()
    results = {label: run_mixture(label, gm, sde, args, pk, functools.partial(print, flush=True)) for label, gm in mixtures}
    peers = ("k-diffusion", "diffusers")
    metrics = ("rms", "median", "flips")
    print(f"\nFor docs/samplers.md: `{command}`, {date}; {args.paths} paths; {time.perf_counter() - t0:.0f} s.\n")
    print("Against the best peer by RMS error (its median error and flips beside ours):\n")
    print("| data | NFE | default | best peer (by RMS) | RMS: default / peer | median: default / peer "
          "| flips: default / peer | default wins all three? |")
    print("|---|---:|---|---|---|---|---|---|")
    for label, _ in mixtures:
        res = results[label]
        for target in args.nfe:
            (cfg,) = [c for (lib, c), r in res.items() if lib == "default" and target in r]
            d = res[("default", cfg)][target]
            name, _ = best(res, peers, target, "rms")
            lib, peer_cfg = name.split(": ", 1)
            p = res[(lib, peer_cfg)][target]
            wins = d["rms"] < p["rms"] and d["median"] < p["median"] and d["flips"] <= p["flips"]
            print(f"| {label} | {target} | {cfg} | {name} | {d['rms']:.2e} / {p['rms']:.2e} | {d['median']:.2e} / "
                  f"{p['median']:.2e} | {d['flips']} / {p['flips']} | {'**yes**' if wins else 'no'} |")
    print("\nAgainst the best peer configuration for each measure separately (a different peer per cell):\n")
    print("| data | NFE | RMS: default / best | median: default / best | flips: default / best |")
    print("|---|---:|---|---|---|")
    for label, _ in mixtures:
        res = results[label]
        for target in args.nfe:
            (cfg,) = [c for (lib, c), r in res.items() if lib == "default" and target in r]
            d = res[("default", cfg)][target]
            cells = []
            for metric in metrics:
                name, value = best(res, peers, target, metric)
                fmt = "{:d}" if metric == "flips" else "{:.2e}"
                cells.append(f"{fmt.format(d[metric])} / {fmt.format(value)} ({name})")
            print(f"| {label} | {target} | " + " | ".join(cells) + " |")
    if args.select:
        print("\nCandidates: worst ratio ours / best peer by RMS (RMS, median, (flips + 1)) over the mixtures chosen from "
              "(the first three; lower is better, below 1 wins everywhere):\n")
        for target in args.nfe:
            rows = []
            for (lib, cfg) in results[mixtures[0][0]]:
                if lib != "ours":
                    continue
                worst = -1.0
                for label, _ in mixtures[:3]:
                    res = results[label]
                    if target not in res.get((lib, cfg), {}):
                        worst = float("inf")
                        continue
                    name, _ = best(res, peers, target, "rms")
                    peer = res[tuple(name.split(": ", 1))][target]
                    for metric in metrics:
                        worst = max(worst, ratio(res[(lib, cfg)][target][metric], peer[metric], metric))
                rows.append((worst, cfg))
            rows.sort()
            print(f"NFE {target}: " + "; ".join(f"{cfg} {w:.2f}" for w, cfg in rows[:12]))
    print(f"\nthe default: {[(t, default_sampler(t)) for t in args.nfe]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

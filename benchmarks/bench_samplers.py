"""Diffusion samplers on the exact Gaussian-mixture oracle: error against NFE, ours against k-diffusion and diffusers.

Run:  python benchmarks/bench_samplers.py [--out DIR]     (full run, about 2.5 minutes on 2 CPU cores)
      python benchmarks/bench_samplers.py --quick         (smoke run, about 1.5 minutes)

Data: two fixed Gaussian mixtures (``mixture_2d``: 7 anisotropic components in 2-D with unequal
weights; ``mixture_16d``: 5 components in 16-D, means of norm 3, covariance eigenvalues in
[0.05, 0.5], built from a fixed seed) diffused by ``VPSDE()`` (beta 0.1..20, T = 1, eps = 1e-3).
``diffusion.oracle.GaussianMixture`` gives the exact score, Tweedie mean and projected CDFs.

1. Deterministic samplers, pathwise. One x_T (``--paths`` prior draws, fixed seed) for every
   sampler. Reference x_eps: our PF-ODE with ``dopri5`` at rtol = atol = 1e-10 (its distance to the
   rtol = atol = 1e-9 solution is printed: the reference's own error). Error: RMS over paths and
   coordinates of x_eps - reference (RMS of |x_eps - ref| / sqrt(dim)). Ours:
   ``sample(sde, gm.score_fn(sde), n, method=m, steps=k, grid=g, x_T=x_T, denoise=False,
   backend="numba")``, NFE = ``Samples.nfe``. Peers: every sampler of
   ``peer_samplers.KDIFF_SAMPLERS`` and ``DIFFUSERS_SAMPLERS`` on each grid it supports, with
   ``x0_hat(x, t) = gm.tweedie(x, t[0], sde)`` on float64 tensors. Step counts are chosen per sampler
   so that its NFE is the largest value <= each target of --nfe (5 10 20 40 80 160).
2. Headline: at NFE 10 and 20 the best of ours (sampler + grid) against the best of each peer.
3. Stochastic samplers (ours), 2-D mixture, distribution error of x_eps (``denoise=False``) against
   the exact p_eps: mode-weight chi-square (K - 1 degrees of freedom) and max |weight - pi_k| / SE, and
   the one-sample sliced KS statistic (mean over --directions random unit directions of the KS
   distance between projected samples and ``gm.projected_cdf``). Starting states are exact draws of
   p_T (so the N(0, I) prior's small mismatch is not counted). Noise floor: the same statistics for
   exact samples of p_eps of the same size (mean and spread over --floor-repeats seeds).

Compilation. ``sample`` reuses its compiled problems per score kernel (and sdekit per time change),
so only the first call of each kind compiles; that one-time cost is reported separately and the
per-configuration times are warm.

Writes with --out DIR: ``samplers_pathwise.csv``, ``samplers_stochastic.csv`` and
``samplers_error_vs_nfe.png`` (error against NFE, each sampler on its best grid at NFE 20).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import functools
import importlib.metadata
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import diffusion.sampling as dsampling  # noqa: E402
import sdekit  # noqa: E402
from diffusion import VPSDE, sample  # noqa: E402
from diffusion.oracle import GaussianMixture  # noqa: E402

OURS_DET = {  # method: grids
    "euler": ("uniform", "quadratic", "logsnr", "karras"),
    "heun": ("uniform", "quadratic", "logsnr", "karras"),
    "rk4": ("uniform", "quadratic", "logsnr", "karras"),
    "ddim": ("quadratic", "logsnr", "karras"),
    "dpmpp_2m": ("quadratic", "logsnr", "karras"),
    "dpmpp_3m": ("quadratic", "logsnr", "karras"),
    "exp_ab3": ("quadratic", "logsnr", "karras"),
    "exp_ab2": ("quadratic", "logsnr", "karras"),
    "unipc": ("quadratic", "logsnr", "karras"),
    "unipc3": ("quadratic", "logsnr", "karras"),
    # "@eps": the same exponential integrator on the noise-prediction form (sample(..., prediction="eps"))
    "dpmpp_2m@eps": ("quadratic", "logsnr", "karras"),
    "dpmpp_3m@eps": ("quadratic", "logsnr", "karras"),
    "exp_ab3@eps": ("quadratic", "logsnr", "karras"),
}
# NFE of ``steps`` steps: (per step, extra). exp_ab3 spends one more evaluation (its start-up).
NFE_COST = {"euler": (1, 0), "heun": (2, 0), "rk4": (4, 0), "ddim": (1, 0), "dpmpp_2m": (1, 0), "dpmpp_3m": (1, 0),
            "exp_ab3": (1, 1), "exp_ab2": (1, 0), "unipc": (1, 0), "unipc3": (1, 0),
            "dpmpp_2m@eps": (1, 0), "dpmpp_3m@eps": (1, 0), "exp_ab3@eps": (1, 1)}
OURS_STOCH = ("euler_maruyama", "sra1", "sriw1", "ddpm", "pc")
PEER_GRID_NAME = {"karras": "karras", "logsnr": "logsnr", "uniform_t": "uniform"}  # peer grid -> our name


# --------------------------------------------------------------------------- the two mixtures
def mixture_2d() -> GaussianMixture:
    """7 components: 6 on a circle of radius 4 and one at the centre, rotated anisotropic covariances."""
    angles = np.arange(6) * (2 * np.pi / 6) + 0.3
    means = np.vstack([4.0 * np.c_[np.cos(angles), np.sin(angles)], [[0.0, 0.0]]])
    weights = np.array([0.24, 0.18, 0.15, 0.13, 0.11, 0.10, 0.09])
    covs = []
    for k in range(7):
        th = 0.9 * k
        rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        covs.append(rot @ np.diag([0.35 - 0.03 * k, 0.02 + 0.01 * k]) @ rot.T)  # axis ratios 17:1 .. 2.1:1
    return GaussianMixture(weights, means, np.array(covs))


def mixture_16d(seed: int = 16) -> GaussianMixture:
    """5 components in 16-D: random means of norm 3, random SPD covariances with eigenvalues in [0.05, 0.5]."""
    rng = np.random.default_rng(seed)
    K, D = 5, 16
    means = rng.standard_normal((K, D))
    means *= 3.0 / np.linalg.norm(means, axis=1, keepdims=True)
    covs = []
    for _ in range(K):
        q, _ = np.linalg.qr(rng.standard_normal((D, D)))
        covs.append(q @ np.diag(rng.uniform(0.05, 0.5, D)) @ q.T)
    covs = np.array(covs)
    return GaussianMixture([0.3, 0.25, 0.2, 0.15, 0.1], means, 0.5 * (covs + covs.transpose(0, 2, 1)))


# --------------------------------------------------------------------------- runs
@dataclass
class Run:
    dim: int
    library: str
    sampler: str
    grid: str
    target: int
    steps: int
    nfe: int
    error: float  # RMS over paths and coordinates of x_eps - reference
    median: float  # median over paths of |x_eps - reference| / sqrt(dim)
    switched: float  # fraction of paths ending in another mixture component than the reference path
    seconds: float


def steps_for(target: int, per_step: int, extra: int = 0) -> int:
    """The most steps whose NFE = per_step * steps + extra is at most target (0 if none)."""
    return max(0, (target - extra) // per_step)


def rms(x, ref) -> float:
    return float(np.sqrt(np.mean((np.asarray(x) - ref) ** 2)))


def errors(x, ref, labels_ref, gm, sde):
    """(RMS error, median per-path error, fraction of paths that switched component) of x against ref."""
    x = np.asarray(x)
    per_path = np.sqrt(np.mean((x - ref) ** 2, axis=1))
    labels = gm.responsibilities(x, t=sde.eps, sde=sde).argmax(axis=1)
    return float(np.sqrt(np.mean(per_path**2))), float(np.median(per_path)), float(np.mean(labels != labels_ref))


def peer_lists(pk):
    """(library, sampler, grid, per-step NFE, runner(x0_hat, x_T, steps)) for every peer configuration."""
    if pk is None:
        return []
    found = pk.available()
    out = []
    if "k-diffusion" in found:
        for name in pk.KDIFF_SAMPLERS:
            per = 2 if name in ("sample_heun", "sample_dpm_2") else 1
            for g in pk.GRIDS:
                out.append(("k-diffusion", name.removeprefix("sample_"), g, per,
                            functools.partial(pk.kdiff_sample, name, grid=g)))
    if "diffusers" in found:
        for name, (_, layout, _, _) in pk.DIFFUSERS_SAMPLERS.items():
            per = 2 if layout == "heun" else 1
            for g in pk.GRIDS:
                if layout == "ddim" and g != "uniform_t":
                    continue
                out.append(("diffusers", name, g, per, functools.partial(pk.diffusers_sample, name, grid=g)))
    return out


def pathwise(label, gm, sde, args, pk, log):
    """All deterministic runs on one mixture; returns (runs, reference info)."""
    import torch

    dim, n = gm.dim, args.paths
    score = gm.score_fn(sde)
    x_T = sde.prior_sample(n, dim, seed=args.seed)
    common = dict(x_T=x_T, denoise=False, backend="numba")
    t0 = time.perf_counter()
    ref_s = sample(sde, score, n, method="dopri5", rtol=1e-10, atol=1e-10, **common)
    t1 = time.perf_counter()
    ref9 = sample(sde, score, n, method="dopri5", rtol=1e-9, atol=1e-9, **common)
    t2 = time.perf_counter()
    ref = np.asarray(ref_s.x)
    labels_ref = gm.responsibilities(ref, t=sde.eps, sde=sde).argmax(axis=1)
    info = {"ref_nfe": ref_s.nfe, "ref_seconds": t1 - t0, "ref9_nfe": ref9.nfe, "ref9_seconds": t2 - t1,
            "ref_error": rms(ref9.x, ref), "ref_max": float(np.abs(np.asarray(ref9.x) - ref).max())}
    log(f"{label}: {n} paths, reference dopri5 rtol=atol=1e-10: NFE {ref_s.nfe} ({t1 - t0:.1f} s incl. compile); "
        f"1e-9: NFE {ref9.nfe}; RMS difference {info['ref_error']:.2e} (max {info['ref_max']:.2e})")

    runs: list[Run] = []
    compile_s: dict = {}
    for name, grids in OURS_DET.items():
        per, extra = NFE_COST[name]
        method, _, pred = name.partition("@")
        for grid in grids:
            fam = f"exponential ({pred or 'x0'})" if method in dsampling.EXP_METHODS else f"PF-ODE on {grid}"
            for target in args.nfe:
                k = steps_for(target, per, extra)
                if k < 1:
                    continue
                kw = dict(prediction=pred) if pred else {}
                if fam not in compile_s:  # first call of this problem: compile, then time a warm call
                    t = time.perf_counter()
                    sample(sde, score, n, method=method, steps=k, grid=grid, **kw, **common)
                    compile_s[fam] = time.perf_counter() - t
                s = sample(sde, score, n, method=method, steps=k, grid=grid, **kw, **common)
                if s.nfe != per * k + extra:
                    raise AssertionError(f"{name}: NFE {s.nfe}, expected {per * k + extra}")
                runs.append(Run(dim, "ours", name, grid, target, k, s.nfe, *errors(s.x, ref, labels_ref, gm, sde),
                                s.seconds))
                log(f"  ours        {name:14s} {grid:10s} {describe(runs[-1])}")
    for fam, sec in compile_s.items():
        log(f"  first call (compile included), {fam}: {sec:.1f} s")
    info["compile"] = compile_s

    x_T_torch = torch.as_tensor(np.asarray(x_T), dtype=torch.float64)

    def x0_hat(x, t):
        return gm.tweedie(x, min(float(t[0]), sde.T), sde)

    peers = peer_lists(pk)
    if any(p[0] == "k-diffusion" for p in peers):
        # harness check: DDIM (our exp_euler) and k-diffusion's Euler (Euler in x / alpha against s = sigma / alpha)
        # are the same map on the same grid, so they must agree to rounding
        for grid in ("logsnr", "karras"):
            ours = np.asarray(sample(sde, score, n, method="ddim", steps=10, grid=grid, **common).x)
            kd, _ = pk.kdiff_sample("sample_euler", x0_hat, x_T_torch, 10, grid=grid)
            info[f"check_{grid}"] = rms(kd.numpy(), ours)
            log(f"  check: our ddim vs k-diffusion euler, {grid} grid, 10 steps: RMS difference {info[f'check_{grid}']:.1e}")
    for lib, name, grid, per, runner in peers:
        for target in args.nfe:
            k = steps_for(target, per)
            if k < 1:
                continue
            t = time.perf_counter()
            x, nfe = runner(x0_hat, x_T_torch, k)
            sec = time.perf_counter() - t
            runs.append(Run(dim, lib, name, PEER_GRID_NAME[grid], target, k, nfe,
                            *errors(x.numpy(), ref, labels_ref, gm, sde), sec))
            log(f"  {lib:11s} {name:14s} {PEER_GRID_NAME[grid]:10s} {describe(runs[-1])}")
    return runs, info


def describe(r: Run) -> str:
    return (f"steps {r.steps:4d} NFE {r.nfe:4d}  error {r.error:.3e} (median {r.median:.2e}, switched "
            f"{100 * r.switched:4.1f}%)  {r.seconds:7.3f} s")


def best_at(runs, library, target, key="error"):
    """Best (lowest ``key``) run of ``library`` among each sampler+grid's largest NFE <= target."""
    cands = {}
    for r in runs:
        if r.library == library and r.nfe <= target:
            sg = (r.sampler, r.grid)
            if sg not in cands or r.nfe > cands[sg].nfe:
                cands[sg] = r
    return min(cands.values(), key=lambda r: getattr(r, key)) if cands else None


# --------------------------------------------------------------------------- distribution error
def sliced_ks(x, gm, sde, t, dirs):
    n = x.shape[0]
    lo, hi = np.arange(n) / n, np.arange(1, n + 1) / n
    ks = []
    for u in dirs:
        z = np.sort(x @ u)
        F = gm.projected_cdf(z, u, t=t, sde=sde)
        ks.append(max((hi - F).max(), (F - lo).max()))
    return float(np.mean(ks)), float(np.max(ks))


def mode_stats(x, gm, sde, t):
    n = x.shape[0]
    w_hat = gm.mode_weights(x, t=t, sde=sde)
    pi = gm.weights
    chi2 = float(n * (((w_hat - pi) ** 2) / pi).sum())
    z = float((np.abs(w_hat - pi) / np.sqrt(pi * (1 - pi) / n)).max())
    return chi2, z


def stochastic(gm, sde, args, log):
    n, eps = args.samples, sde.eps
    score = gm.score_fn(sde)
    dirs = np.random.default_rng(args.seed + 1).standard_normal((args.directions, gm.dim))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    p_eps, p_T = gm.diffused(sde, eps), gm.diffused(sde, sde.T)
    floor = []
    for r in range(args.floor_repeats):
        x = p_eps.sample(n, seed=1000 + r)
        floor.append((*mode_stats(x, gm, sde, eps), *sliced_ks(x, gm, sde, eps, dirs)))
    floor = np.array(floor)
    fl = {"chi2": floor[:, 0], "z": floor[:, 1], "ks": floor[:, 2], "ks_max": floor[:, 3]}
    log(f"noise floor, exact samples of p_eps (n = {n}, {args.floor_repeats} seeds; E[KS] of one direction is about "
        f"0.87/sqrt(n) = {0.8687 / math.sqrt(n):.4f}): chi2 "
        f"{fl['chi2'].mean():.1f} ± {fl['chi2'].std(ddof=1):.1f} (df {gm.n_components - 1}), max|dw|/SE "
        f"{fl['z'].mean():.2f} ± {fl['z'].std(ddof=1):.2f}, sliced KS {fl['ks'].mean():.4f} ± "
        f"{fl['ks'].std(ddof=1):.4f} (max over directions {fl['ks_max'].mean():.4f})")
    x_T = p_T.sample(n, seed=args.seed + 2)
    rows, first = [], True
    for method in OURS_STOCH:
        for k in args.sde_steps:
            if first:
                t = time.perf_counter()
                sample(sde, score, n, method="sra1", steps=k, x_T=x_T, denoise=False, backend="numba", seed=args.seed)
                log(f"  first call of the reverse SDE (compile included): {time.perf_counter() - t:.1f} s")
                first = False
            kw = dict(snr=0.16, corrector_steps=1) if method == "pc" else {}
            s = sample(sde, score, n, method=method, steps=k, grid="uniform", x_T=x_T, denoise=False,
                       backend="numba", seed=args.seed, **kw)
            x = np.asarray(s.x)
            chi2, z = mode_stats(x, gm, sde, eps)
            ks, ks_max = sliced_ks(x, gm, sde, eps, dirs)
            rows.append(dict(method=method, steps=k, nfe=s.nfe, chi2=chi2, max_z=z, sliced_ks=ks, sliced_ks_max=ks_max,
                             seconds=s.seconds))
            log(f"  {method:15s} steps {k:4d} NFE {s.nfe:4d}  chi2 {chi2:8.1f}  max|dw|/SE {z:6.2f}  sliced KS "
                f"{ks:.4f} (max {ks_max:.4f})  {s.seconds:6.2f} s")
    return rows, fl


# --------------------------------------------------------------------------- output
def fmt_row_name(r):
    return f"{r.sampler} / {r.grid}"


def headline_table(all_runs, dims, targets, libs, key="error"):
    """Best of ours against the best of each peer at each target NFE, ranked by ``key`` ("error" or "median")."""
    head = "error" if key == "error" else "median error"
    lines = [f"| data | NFE | ours: best (sampler / grid) | {head} | "
             + " | ".join(f"{lib}: best | {head}" for lib in libs[1:]) + " | best peer / ours | ours wins? |",
             "|---|---:|---|---:|" + "---|---:|" * (len(libs) - 1) + "---:|---|"]
    for label, dim in dims:
        runs = [r for r in all_runs if r.dim == dim]
        for target in targets:
            best = {lib: best_at(runs, lib, target, key) for lib in libs}
            cells = []
            for lib in libs:
                r = best[lib]
                if r is None:
                    cells += ["—", "—"]
                    continue
                at = "" if r.nfe == target else f" (NFE {r.nfe})"
                cells += [f"{fmt_row_name(r)}{at}", f"{getattr(r, key):.2e}"]
            peers = [best[lib] for lib in libs[1:] if best[lib] is not None]
            ours = best["ours"]
            if peers and ours:
                bp = min(peers, key=lambda r: getattr(r, key))
                ratio = getattr(bp, key) / getattr(ours, key)
                verdict = "**yes**" if ratio > 1 else "no"
                cells += [f"{ratio:.2f}", verdict]
            else:
                cells += ["—", "—"]
            lines.append(f"| {label} | {target} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def grid_table(runs, dim, targets):
    """Rows: library/sampler/grid; columns: error at each target NFE (actual NFE in brackets when lower)."""
    keys = []
    for r in runs:
        if r.dim == dim and (r.library, r.sampler, r.grid) not in keys:
            keys.append((r.library, r.sampler, r.grid))
    head = "| library | sampler | grid | " + " | ".join(f"NFE {t}" for t in targets) + " | time (s, all NFE) |"
    lines = [head, "|---|---|---|" + "---:|" * (len(targets) + 1)]
    for key in keys:
        cells, sec = [], 0.0
        for t in targets:
            r = next((r for r in runs if r.dim == dim and (r.library, r.sampler, r.grid) == key and r.target == t), None)
            if r is None:
                cells.append("—")
            else:
                sec += r.seconds
                cells.append(f"{r.error:.2e}" + ("" if r.nfe == t else f" ({r.nfe})"))
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + f" | {sec:.2f} |")
    return "\n".join(lines)


def best_grid_table(runs, dim, targets, pick=20):
    """Each sampler on its best grid (lowest error at NFE ``pick``)."""
    best = best_grids(runs, dim, pick)
    head = ("| library | sampler | best grid | " + " | ".join(f"NFE {t}" for t in targets)
            + " | paths switched at NFE 10 / 20 |")
    lines = [head, "|---|---|---|" + "---:|" * (len(targets) + 1)]
    for (lib, sampler), grid in best.items():
        cells = []
        for t in targets:
            r = next((r for r in runs if r.dim == dim and (r.library, r.sampler, r.grid, r.target) == (lib, sampler, grid, t)),
                     None)
            cells.append("—" if r is None else f"{r.error:.2e}" + ("" if r.nfe == t else f" ({r.nfe})"))
        sw = [next((f"{100 * r.switched:.1f}%" for r in runs if r.dim == dim and r.target == t
                    and (r.library, r.sampler, r.grid) == (lib, sampler, grid)), "—") for t in (10, 20)]
        lines.append(f"| {lib} | {sampler} | {grid} | " + " | ".join(cells) + f" | {sw[0]} / {sw[1]} |")
    return "\n".join(lines)


def best_grids(runs, dim, pick):
    best = {}
    for r in runs:
        if r.dim != dim:
            continue
        key = (r.library, r.sampler)
        score_r = next((q.error for q in runs if q.dim == dim and (q.library, q.sampler, q.grid) == (*key, r.grid)
                        and q.target == pick), math.inf)
        if key not in best or score_r < best[key][1]:
            best[key] = (r.grid, score_r)
    return {k: v[0] for k, v in best.items()}


def ours_grid_table(runs, dims, targets=(10, 20)):
    """Our samplers on every grid at the target NFEs, both mixtures (the grid's effect at a glance)."""
    grids = ("uniform", "quadratic", "logsnr", "karras")
    cols = [(label, dim, t) for label, dim in dims for t in targets]
    lines = ["| sampler | grid | " + " | ".join(f"{label}, NFE {t}" for label, _, t in cols) + " |",
             "|---|---|" + "---:|" * len(cols)]
    for method, mgrids in OURS_DET.items():
        for g in grids:
            if g not in mgrids:
                continue
            cells = []
            for _, dim, t in cols:
                r = next((r for r in runs if (r.dim, r.library, r.sampler, r.grid, r.target) == (dim, "ours", method, g, t)),
                         None)
                cells.append("—" if r is None else f"{r.error:.2e}" + ("" if r.nfe == t else f" ({r.nfe})"))
            lines.append(f"| {method} | {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stochastic_table(rows, fl, n, df):
    lines = [f"| method | steps | NFE | mode χ² (df {df}) | max \\|Δw\\|/SE | sliced KS (mean of directions) | time (s) |",
             "|---|---:|---:|---:|---:|---:|---:|",
             f"| exact samples of p_eps (floor, n = {n}) | — | — | {fl['chi2'].mean():.1f} ± {fl['chi2'].std(ddof=1):.1f} | "
             f"{fl['z'].mean():.2f} ± {fl['z'].std(ddof=1):.2f} | {fl['ks'].mean():.4f} ± {fl['ks'].std(ddof=1):.4f} | — |"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['steps']} | {r['nfe']} | {r['chi2']:.1f} | {r['max_z']:.2f} | "
                     f"{r['sliced_ks']:.4f} | {r['seconds']:.2f} |")
    return "\n".join(lines)


def plot(all_runs, dims, infos, path, peers_shown=3):
    """Error against NFE: each of our samplers on its best grid (at NFE 20), and each peer's best ``peers_shown``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(dims), figsize=(7 * len(dims), 5.6), squeeze=False)
    styles = {"ours": ("-", "o", plt.get_cmap("tab10")), "k-diffusion": ("--", "s", plt.get_cmap("Dark2")),
              "diffusers": (":", "^", plt.get_cmap("tab20b"))}
    order: dict = {}  # a fixed colour per library and sampler, the same in every panel
    for r in all_runs:
        order.setdefault(r.library, [])
        if r.sampler not in order[r.library]:
            order[r.library].append(r.sampler)
    for ax, (label, dim) in zip(axes[0], dims, strict=True):
        best = best_grids(all_runs, dim, 20)
        shown = []
        for lib in styles:
            keys = [(k, g) for k, g in best.items() if k[0] == lib]
            at20 = {k: next((r.error for r in all_runs if r.dim == dim and (r.library, r.sampler, r.grid) == (*k, g)
                             and r.target == 20), math.inf) for k, g in keys}
            keys.sort(key=lambda kg: at20[kg[0]])
            shown += [(lib, k, g) for k, g in (keys if lib == "ours" else keys[:peers_shown])]
        for lib, (_, sampler), grid in shown:
            i = order[lib].index(sampler) * (2 if lib == "diffusers" else 1)
            rs = sorted((r for r in all_runs if r.dim == dim and (r.library, r.sampler, r.grid) == (lib, sampler, grid)),
                        key=lambda r: r.nfe)
            ls, mk, cmap = styles[lib]
            ax.loglog([r.nfe for r in rs], [r.error for r in rs], ls, marker=mk, ms=4, color=cmap(i),
                      lw=2.0 if lib == "ours" else 1.2, label=f"{lib}: {sampler} ({grid})")
        for t in (10, 20):
            ax.axvline(t, color="grey", lw=0.6, alpha=0.6)
        ax.set_xlabel("NFE (score / denoiser evaluations per sample)")
        ax.set_ylabel("RMS error of x_eps against the reference, per coordinate")
        ax.set_title(f"{label}: best grid per sampler (at NFE 20)\n"
                     f"reference's own error {infos[dim]['ref_error']:.0e}; peers: best {peers_shown} each", fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7, loc="lower left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def versions():
    out = [f"python {platform.python_version()}", f"numpy {np.__version__}", f"numba {numba.__version__} "
           f"({numba.get_num_threads()} threads)", f"sdekit {sdekit.__version__}"]
    for name in ("torch", "k-diffusion", "diffusers"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out.append(f"{name} {importlib.metadata.version(name)}")
    return ", ".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--paths", type=int, default=2000, help="paths of the pathwise comparison")
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 40, 80, 160], help="target NFE values")
    ap.add_argument("--samples", type=int, default=20000, help="samples of the stochastic comparison")
    ap.add_argument("--sde-steps", type=int, nargs="+", default=[25, 50, 100, 200], help="steps of the stochastic samplers")
    ap.add_argument("--directions", type=int, default=64, help="random directions of the sliced KS statistic")
    ap.add_argument("--floor-repeats", type=int, default=10, help="exact samples drawn for the noise floor")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--no-peers", action="store_true", help="ours only")
    ap.add_argument("--out", type=Path, help="write the CSV files and the plot here")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 500 paths, NFE 5 10 20 40, 5000 samples at 25 and 100 steps, 3 floor seeds")
    args = ap.parse_args(argv)
    if args.quick:
        args.paths, args.nfe, args.samples, args.sde_steps, args.floor_repeats = 500, [5, 10, 20, 40], 5000, [25, 100], 3
    args.nfe = sorted(set(args.nfe))
    targets = [t for t in (10, 20) if t in args.nfe] or args.nfe[:2]

    t_start = time.perf_counter()
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    command = shlex.join(["python", "benchmarks/bench_samplers.py", *(sys.argv[1:] if argv is None else argv)])
    machine = f"{platform.machine()} {platform.processor() or ''}".strip() + f", {os.cpu_count()} CPUs"
    print(f"command: {command}\ndate: {date}\nmachine: {machine}, load average {os.getloadavg()[0]:.2f}")
    pk = None
    if not args.no_peers:
        import peer_samplers as pk
        import torch

        torch.set_num_threads(min(2, os.cpu_count() or 1))
        if not pk.available():
            print("no peer is installed (see benchmarks/peer_samplers.py): ours only")
    print(f"versions: {versions()}\n")

    def log(msg):
        print(msg, flush=True)

    sde = VPSDE()
    assert (sde.beta_min, sde.beta_max, sde.T, sde.eps) == (0.1, 20.0, 1.0, 1e-3)
    mixtures = [("2-D, 7 components", mixture_2d()), ("16-D, 5 components", mixture_16d())]
    all_runs, infos = [], {}
    # sample() reuses compiled problems per score kernel: only the first call of each kind compiles
    for label, gm in mixtures:
        t = time.perf_counter()
        runs, info = pathwise(label, gm, sde, args, pk, log)
        info["seconds"] = time.perf_counter() - t
        log(f"{label}: pathwise part {info['seconds']:.1f} s\n")
        all_runs += runs
        infos[gm.dim] = info
    t = time.perf_counter()
    log(f"stochastic samplers, 2-D mixture, {args.samples} samples, uniform grid, x_eps against p_eps:")
    srows, floor = stochastic(mixtures[0][1], sde, args, log)
    stoch_seconds = time.perf_counter() - t
    log(f"stochastic part {stoch_seconds:.1f} s")
    total = time.perf_counter() - t_start

    libs = ["ours"] + [lib for lib in ("k-diffusion", "diffusers") if any(r.library == lib for r in all_runs)]
    dims = [(label.split(",")[0], gm.dim) for label, gm in mixtures]
    print(f"\n\nFor docs/benchmarks.md:\n\n`{command}`, {date}; {machine}; {versions()}. Total {total:.0f} s.\n")
    for label, gm in mixtures:
        i = infos[gm.dim]
        print(f"- {label}: reference dopri5 rtol = atol = 1e-10, NFE {i['ref_nfe']}; its RMS distance to the 1e-9 "
              f"solution {i['ref_error']:.1e} (max {i['ref_max']:.1e}).")
    print("\nHeadline (error: RMS over paths and coordinates of x_eps − reference; NFE in brackets where a sampler "
          "cannot land on the target and its largest NFE below it is used):\n")
    print(headline_table(all_runs, dims, targets, libs))
    print("\nThe same, ranked by the median over paths of the per-path error (insensitive to the few paths that "
          "end in another mixture component than the reference):\n")
    print(headline_table(all_runs, dims, targets, libs, key="median"))
    for label, gm in mixtures:
        print(f"\nEach sampler on its best grid (at NFE 20), {label}:\n")
        print(best_grid_table(all_runs, gm.dim, args.nfe))
    print(f"\nOurs on every grid at NFE {' and '.join(map(str, targets))} (RMS error):\n")
    print(ours_grid_table(all_runs, dims, targets))
    for label, gm in mixtures:
        print(f"\nAll samplers and grids, {label} (NFE in brackets where lower than the column's):\n")
        print(grid_table(all_runs, gm.dim, args.nfe))
    print(f"\nStochastic samplers (ours), 2-D mixture, {args.samples} samples, uniform grid, x_eps (denoise=False) "
          f"against the exact p_eps; sliced KS over {args.directions} directions:\n")
    print(stochastic_table(srows, floor, args.samples, mixtures[0][1].n_components - 1))
    print("\nTimes: " + "; ".join(f"{label} pathwise {infos[gm.dim]['seconds']:.0f} s" for label, gm in mixtures)
          + f"; stochastic {stoch_seconds:.0f} s; total {total:.0f} s.")

    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "samplers_pathwise.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(asdict(all_runs[0])))
            w.writeheader()
            w.writerows(asdict(r) for r in all_runs)
        with open(args.out / "samplers_stochastic.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(srows[0]))
            w.writeheader()
            w.writerows(srows)
        plot(all_runs, dims, infos, args.out / "samplers_error_vs_nfe.png")
        print(f"\nwrote {args.out / 'samplers_pathwise.csv'}, {args.out / 'samplers_stochastic.csv'}, "
              f"{args.out / 'samplers_error_vs_nfe.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

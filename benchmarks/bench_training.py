"""Quality bars of trained score models (the training issue), measured end to end on this CPU.

2-D toy sets (moons, swiss roll, checkerboard, 8 Gaussians): train with the
command line's defaults (timed), then for 5 sampling seeds draw 5,000 samples
with sra1 (100 steps) and dpmpp_2m (20 log-SNR steps) and report the sliced W1
and sliced KS distances to held-out data over their noise floors (two
independent data samples of the same size, 8 pairs); where the data law has a
closed-form density, the PF-ODE KL(data || model) on 1,000 held-out points.

Digits (``--digits``): train the class-conditional U-Net (timed), sample 50 of
each class with classifier-free guidance weights 0, 1 and 3 and score them with
a logistic-regression classifier fitted on the real training digits; write the
sample grid; PF-ODE bits/dim of the 297 held-out digits with 4 Hutchinson
probes per image.

    python benchmarks/bench_training.py                # 2-D sets, ~6 min on 2 cores
    python benchmarks/bench_training.py --digits       # adds the digits, ~15 min more
    python benchmarks/bench_training.py --only digits --digits

Writes ``RESULTS/training.json`` (default ``bench_out/``) and the plots.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from diffusion.runs import Run, evaluate_samples, likelihood_run, plot_samples, sample_run, train_run

TOYS = ("moons", "swiss_roll", "checkerboard", "gmm")
SAMPLERS = (("sra1", 100, "uniform"), ("dpmpp_2m", 20, "logsnr"))


def toy(name: str, out: Path, seeds: int) -> dict:
    t0 = time.perf_counter()
    train_run(out / name, name, force=True, progress=False, eval_every=0, log=lambda s: None)
    train_s = time.perf_counter() - t0
    run = Run.load(out / name)
    res = {"train_seconds": train_s, "steps": run.step}
    for method, steps, grid in SAMPLERS:
        w1, ks = [], []
        for seed in range(seeds):
            x, _, last = sample_run(run, method=method, steps=steps, n=5000, grid=grid, seed=seed)
            m = evaluate_samples(run, x, seed=seed)
            w1.append(m["sliced_w1_ratio"])
            ks.append(m["sliced_ks_ratio"])
            if seed == 0:
                plot_samples(run, x, out / f"{name}_{method}.png", title=f"{name}: {method}, NFE {last.nfe}")
        res[method] = {"nfe": last.nfe, "w1_ratio": w1, "ks_ratio": ks}
        print(f"{name:>12} {method:>9} NFE {last.nfe:>3}: sliced W1 / floor {np.mean(w1):.2f} ± {np.std(w1):.2f}, "
              f"sliced KS / floor {np.mean(ks):.2f} ± {np.std(ks):.2f} ({seeds} seeds; trained {train_s:.0f} s)",
              flush=True)
    lk = likelihood_run(run)
    res["likelihood"] = lk
    kl = f", KL(data||model) {lk['kl']:.3f} ± {lk['kl_se']:.3f} nats" if "kl" in lk else ""
    print(f"{name:>12} held-out NLL {lk['nll']:.3f} ± {lk['nll_se']:.3f} nats{kl}", flush=True)
    return res


def digits(out: Path, guidance=(0.0, 1.0, 3.0)) -> dict:
    t0 = time.perf_counter()
    train_run(out / "digits", "digits", force=True, progress=False)
    train_s = time.perf_counter() - t0
    run = Run.load(out / "digits")
    res = {"train_seconds": train_s, "steps": run.step, "guidance": {}}
    print(f"digits: trained {run.step} steps in {train_s:.0f} s", flush=True)
    for w in guidance:
        for method, steps, grid in SAMPLERS:
            x, labels, last = sample_run(run, method=method, steps=steps, n=500, grid=grid, seed=0, guidance=w)
            m = evaluate_samples(run, x, labels)
            res["guidance"][f"{method} w={w:g}"] = {"nfe": last.nfe, **m}
            print(f"digits {method:>9} guidance {w:g}: classifier accuracy {100 * m['accuracy']:.1f}% ± "
                  f"{100 * m['accuracy_se']:.1f}% (classifier on real held-out digits: "
                  f"{100 * m['classifier_test_accuracy']:.1f}%)", flush=True)
            plot_samples(run, x, out / f"digits_{method}_w{w:g}.png", labels=labels,
                         title=f"digits: {method} ({grid}, NFE {last.nfe}), guidance {w:g}")
    lk = likelihood_run(run, n_probes=4)
    res["likelihood"] = lk
    print(f"digits: held-out bits/dim {lk['bits_per_dim']:.3f} ± {lk['bits_per_dim_se']:.3f} (of which Hutchinson "
          f"± {lk['bits_per_dim_hutchinson_se']:.4f}), {lk['seconds']:.0f} s", flush=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--digits", action="store_true", help="also train and measure the digits model (~15 min)")
    ap.add_argument("--only", nargs="*", help="data sets to run (default: the four toy sets)")
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    out = Path(args.out)
    os.makedirs(out, exist_ok=True)
    results = {}
    for name in args.only or TOYS:
        if name in TOYS:
            results[name] = toy(name, out, args.seeds)
    if args.digits:
        results["digits"] = digits(out)
    path = out / "training.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**old, **results}, indent=2, default=float) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""``python -m diffusion``: train a score model, sample it with any integrator, measure its likelihood.

    python -m diffusion train --data moons --out runs/moons
    python -m diffusion sample --run runs/moons --method sra1 --steps 100 --n 5000 --out samples.png
    python -m diffusion likelihood --run runs/moons

Errors in what was asked (a missing run, a corrupt checkpoint, an unknown data
set or method, a bad number) are reported in one line on stderr with exit
status 2; they never touch a run's files.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from sdekit.checks import writable_path

from . import datasets
from .demo import FIRST_CALL_SAMPLES
from .grids import GRIDS
from .sampling import METHODS

__all__ = ["main", "build_parser"]


def _number(cast, *, positive: bool):
    """An argparse type: an integer (``cast=int``) or finite number (``float``), > 0 or >= 0."""
    what = ("a positive " if positive else "a non-negative ") + ("integer" if cast is int else "number")

    def check(text):
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (math.isfinite(v) and (v > 0 if positive else v >= 0)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v

    return check


_positive_int, _nonneg_int = _number(int, positive=True), _number(int, positive=False)
_positive_float, _nonneg_float = _number(float, positive=True), _number(float, positive=False)


def _choice(options, what):
    def check(text):
        if text not in options:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; choose one of: {', '.join(options)}")
        return text

    return check


# --------------------------------------------------------------------------- verbs
def _train(args) -> int:
    from .runs import train_run

    config = {k: getattr(args, k) for k in ("loss", "weighting", "ema_decay", "grad_clip", "label_dropout", "seed",
                                              "lr_schedule", "warmup") if getattr(args, k) is not None}
    try:
        train_run(args.out, args.data, sde=args.sde, schedule=args.schedule, model=args.model, hidden=args.hidden,
                  depth=args.depth, width=args.width, conditional=args.conditional, n=args.n,
                  data_seed=args.data_seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                  eval_every=args.eval_every, checkpoint_every=args.checkpoint_every, resume=args.resume,
                  force=args.force, progress=not args.no_progress, **config)
    except KeyboardInterrupt:
        print(f"\ninterrupted; {Path(args.out) / 'checkpoint.pt'} holds the last checkpoint: continue with "
              f"python -m diffusion train --out {args.out} --resume", file=sys.stderr)
        return 130
    return 0


def _describe(m: dict) -> str:
    parts = []
    if "sliced_w1" in m:
        parts.append(f"sliced W1 to held-out data {m['sliced_w1']:.4f} (noise floor of two data samples "
                     f"{m['sliced_w1_floor']:.4f} ± {m['sliced_w1_floor_std']:.4f}; ratio {m['sliced_w1_ratio']:.2f})")
        parts.append(f"sliced KS {m['sliced_ks']:.4f} (floor {m['sliced_ks_floor']:.4f} ± "
                     f"{m['sliced_ks_floor_std']:.4f}; ratio {m['sliced_ks_ratio']:.2f})")
    if "accuracy" in m:
        parts.append(f"classifier accuracy on the requested classes {100 * m['accuracy']:.1f}% ± "
                     f"{100 * m['accuracy_se']:.1f}% (the classifier scores {100 * m['classifier_test_accuracy']:.1f}%"
                     " on held-out real digits)")
    return "\n".join(parts)


def _sample(args) -> int:
    from .runs import Run, evaluate_samples, plot_samples, sample_run

    out = Path(args.out) if args.out else Path(args.run) / "samples.png"
    writable_path(out, "--out")
    writable_path(out.with_suffix(".npz"), "--out (its samples file)")
    if args.json:
        writable_path(args.json, "--json")
    run = Run.load(args.run, ema=not args.no_ema)
    n = args.n or (100 if run.data == "digits" else 5000)
    if args.nfe is not None and args.steps is not None:
        raise ValueError("give --steps or --nfe, not both: --nfe is the budget of score evaluations and sets the steps.")
    options = dict(method=args.method, steps=args.steps, nfe=args.nfe, grid=args.grid, seed=args.seed, label=args.label,
                   guidance=args.guidance)
    first = sample_run(run, n=min(n, FIRST_CALL_SAMPLES), **options)[2].seconds  # compilation and set-up
    x, labels, last = sample_run(run, n=n, **options)
    out.parent.mkdir(parents=True, exist_ok=True)
    what = f"class {args.label}" if args.label is not None else ("all classes" if run.conditional else "")
    guided = f", guidance {args.guidance:g}" if args.guidance else ""
    title = (f"{run.data}: {n} samples, {last.method} {len(last.times) - 1} steps ({last.grid} grid, NFE {last.nfe}"
             f"{guided}{', ' + what if what else ''})")
    np.savez(out.with_suffix(".npz"), x=x, labels=labels)
    calls = " (each two network calls: conditional and unconditional)" if args.guidance else ""
    print(f"sampled {n} points with {last.method} on the {last.grid} grid: {last.nfe} score evaluations per sample{calls}, "
          f"{last.seconds:.1f} s (first call on {min(n, FIRST_CALL_SAMPLES)} samples, compilation and set-up: "
          f"{first:.1f} s)")
    metrics = evaluate_samples(run, x, labels if run.conditional else None, seed=args.seed)
    text = _describe(metrics)
    if text:
        print(text)
    plot_samples(run, x, out, labels=labels, title=title)
    print(f"wrote {out} and {out.with_suffix('.npz')}")
    if args.json:
        Path(args.json).write_text(json.dumps({"method": last.method, "steps": len(last.times) - 1, "nfe": last.nfe,
                                               "seconds": last.seconds, "first_call_seconds": first, **metrics},
                                              indent=2) + "\n")
    return 0


def _likelihood(args) -> int:
    from .runs import Run, likelihood_run

    if args.json:
        writable_path(args.json, "--json")
    run = Run.load(args.run, ema=not args.no_ema)
    options = dict(divergence=args.divergence, n_probes=args.probes, rtol=args.rtol, atol=args.atol, seed=args.seed)
    first = likelihood_run(run, n=2, **options)["seconds"]  # compilation and set-up, on two points
    r = likelihood_run(run, n=args.n, **options)
    hut = f", Hutchinson part ± {r['nll_hutchinson_se']:.3f}" if "nll_hutchinson_se" in r else ""
    print(f"{run.data}: held-out negative log-likelihood {r['nll']:.4f} ± {r['nll_se']:.4f} nats per point "
          f"(n={r['n']}, {r['divergence']} divergence{hut}; {r['seconds']:.1f} s, after a first call on 2 points "
          f"for compilation and set-up: {first:.1f} s)")
    if run.data == "digits":
        hutchinson_part = (f", of which Hutchinson ± {r['bits_per_dim_hutchinson_se']:.4f}"
                           if "bits_per_dim_hutchinson_se" in r else "")
        print(f"bits/dim {r['bits_per_dim']:.4f} ± {r['bits_per_dim_se']:.4f}{hutchinson_part} (dequantised 17-level pixels; "
              f"uniform over the levels would be {math.log2(17):.3f})")
    else:
        print(f"bits/dim {r['bits_per_dim']:.4f} ± {r['bits_per_dim_se']:.4f} (continuous density, dim {r['dim']})")
    if "kl" in r:
        print(f"the data law's exact entropy on these points is {r['data_entropy']:.4f} nats: "
              f"KL(data || model) ≈ {r['kl']:.4f} ± {r['kl_se']:.4f} nats")
    if args.json:
        Path(args.json).write_text(json.dumps({**r, "first_call_seconds": first}, indent=2) + "\n")
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m diffusion", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="verb", required=True)

    t = sub.add_parser("train", help="train a score network on a data set into a run folder")
    t.add_argument("--data", type=_choice(datasets.DATASETS, "dataset"),
                   help=f"data set: {', '.join(datasets.DATASETS)} (not needed with --resume)")
    t.add_argument("--out", required=True, help="run folder (checkpoint.pt, run.json, losses.png)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint; it keeps its settings (only --steps, "
                        "--checkpoint-every and --eval-every may change, and run.json records it)")
    t.add_argument("--force", action="store_true", help="overwrite a run already in --out")
    t.add_argument("--steps", type=_positive_int, help="total optimiser steps (2-D: 8000, digits: 5000)")
    t.add_argument("--batch-size", type=_positive_int, help="batch size (2-D: 512, digits: 128)")
    t.add_argument("--lr", type=_positive_float, help="peak learning rate (default 2e-3)")
    t.add_argument("--lr-schedule", choices=("cosine", "constant"), help="learning-rate schedule (default cosine)")
    t.add_argument("--warmup", type=_nonneg_int, help="linear warm-up steps (default 100)")
    t.add_argument("--sde", type=_choice(("vp", "subvp", "ve"), "SDE"), help="vp (default), subvp, ve")
    t.add_argument("--schedule", choices=("linear", "cosine"), help="VP noise schedule (default linear)")
    t.add_argument("--loss", choices=("dsm", "ddpm", "ssm"),
                   help="dsm (default), ddpm (L_simple) or ssm (sliced score matching at random times)")
    t.add_argument("--weighting", choices=("sigma2", "likelihood", "none"), help="DSM weighting (default sigma2)")
    t.add_argument("--model", choices=("mlp", "unet"), help="network (2-D: mlp, digits: unet)")
    t.add_argument("--hidden", type=_positive_int, help="MLP width (default 128)")
    t.add_argument("--depth", type=_positive_int, help="MLP residual blocks (default 3)")
    t.add_argument("--width", type=_positive_int, help="U-Net channels (default 32)")
    t.add_argument("--conditional", action=argparse.BooleanOptionalAction, default=None,
                   help="class-conditional network with label dropout (default: on for digits)")
    t.add_argument("--label-dropout", type=_nonneg_float, help="probability of the no-class label (default 0.1)")
    t.add_argument("--n", type=_positive_int, help="training rows of a 2-D set (default 20000; digits: 1500)")
    t.add_argument("--data-seed", type=_nonneg_int, help="seed of the generated data (default 0)")
    t.add_argument("--seed", type=_nonneg_int, help="seed of the weights and batches (default 0)")
    t.add_argument("--ema-decay", type=_nonneg_float, help="EMA decay (default 0.999)")
    t.add_argument("--grad-clip", type=_nonneg_float, help="gradient-norm clip, 0 for none (default 1)")
    t.add_argument("--eval-every", type=_nonneg_int, help="evaluate on held-out data every N steps (0: never)")
    t.add_argument("--checkpoint-every", type=_positive_int, help="checkpoint every N steps")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)

    s = sub.add_parser("sample", help="sample a trained run with any integrator and plot the samples")
    s.add_argument("--run", required=True, help="run folder written by train")
    s.add_argument("--method", type=_choice(tuple(METHODS), "method"),
                   help="sampler (default: the default sampler for the --nfe budget); one of " + ", ".join(METHODS))
    s.add_argument("--steps", type=_positive_int, help="steps (default 100 with --method)")
    s.add_argument("--nfe", type=_positive_int,
                   help="budget of score evaluations per sample (default 20 without --method); instead of --steps")
    s.add_argument("--grid", type=_choice(tuple(GRIDS), "grid"),
                   help="time grid (default: the default sampler's, or uniform with --method): " + ", ".join(GRIDS))
    s.add_argument("--n", type=_positive_int, help="number of samples (2-D: 5000, digits: 100)")
    s.add_argument("--label", type=_nonneg_int, help="class to sample (class-conditional runs; default: every class)")
    s.add_argument("--guidance", type=_nonneg_float, default=0.0,
                   help="classifier-free guidance weight w: (1+w) s(x|y) - w s(x) (default 0)")
    s.add_argument("--seed", type=_nonneg_int, default=0)
    s.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their EMA")
    s.add_argument("--out", help="plot file (default RUN/samples.png; the samples go beside it as .npz)")
    s.add_argument("--json", help="also write the metrics to this JSON file")
    s.set_defaults(func=_sample)

    lk = sub.add_parser("likelihood", help="held-out log-likelihood through the probability-flow ODE")
    lk.add_argument("--run", required=True, help="run folder written by train")
    lk.add_argument("--n", type=_positive_int, help="held-out points (2-D: 1000; digits: the 297 test images)")
    lk.add_argument("--divergence", choices=("exact", "hutchinson"),
                    help="exact (default for 2-D) or Hutchinson (default for images)")
    lk.add_argument("--probes", type=_positive_int, default=4, help="Hutchinson probes per point (default 4)")
    lk.add_argument("--rtol", type=_positive_float, default=1e-5, help="dopri5 relative tolerance")
    lk.add_argument("--atol", type=_positive_float, default=1e-5, help="dopri5 absolute tolerance")
    lk.add_argument("--seed", type=_nonneg_int, default=0)
    lk.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their EMA")
    lk.add_argument("--json", help="also write the results to this JSON file")
    lk.set_defaults(func=_likelihood)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError, FloatingPointError) as exc:  # OSError: an output that became unwritable
        print(f"python -m diffusion {args.verb}: error: {exc}", file=sys.stderr)
        return 2

"""The sampling part of the README's main job: samplers on the exact Gaussian-mixture oracle.

Prints, for a few samplers, NFE, the time of the first call (compilation and
set-up, on a few samples) apart from the time of the run, mode weights and the
sliced KS distance to the exact data law (with its noise floor), the pathwise
error of the deterministic samplers against a tight reference, a likelihood
check, and writes ``samples_oracle.png`` (scatter of each sampler's output) and
``sampler_errors.png`` (pathwise error against NFE).

``quick=True`` keeps every part but runs fewer samplers, chosen to share their
compiled code: the exponential-integrator family (``ddim``, ``dpmpp_2m``,
``exp_ab3``) for the pathwise errors, against ``exp_ab3`` on many steps
instead of ``dopri5``, and a shorter training.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from .likelihood import log_likelihood
from .oracle import GaussianMixture
from .sampling import sample
from .sdes import VPSDE

__all__ = ["run", "run_training", "demo_mixture", "sdekit_demo_section"]

# Samples of the untimed first call of each sampler (its compilation and set-up).
FIRST_CALL_SAMPLES = 8


def demo_mixture() -> GaussianMixture:
    """Three separated 2-D components with unequal weights and anisotropic covariances."""
    covs = np.array([[[0.09, 0.03], [0.03, 0.05]], [[0.04, 0.0], [0.0, 0.16]], [[0.12, -0.05], [-0.05, 0.06]]])
    return GaussianMixture([0.5, 0.3, 0.2], [[-2.0, 0.0], [2.0, 1.0], [0.5, -2.5]], covs)


def run(out: str, quick: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)
    sde, gm = VPSDE(), demo_mixture()
    score = gm.score_fn(sde)
    n = 5000 if quick else 20_000
    floor = math.sqrt(math.pi / 2) * math.log(2) / math.sqrt(n)
    print(f"\ndiffusion demo: {n} samples of a 2-D, 3-component Gaussian mixture under the VP SDE, exact score")
    print(f"sliced KS noise floor of exact samples: {floor:.4f}; mixture weights {gm.weights.tolist()}")
    runs = [("sra1", dict(steps=100)), ("euler_maruyama", dict(steps=400)), ("ddpm", dict(steps=1000)),
            ("rk4", dict(steps=25, grid="logsnr")), ("dpmpp_2m", dict(steps=20, grid="logsnr")),
            ("exp_ab3", dict(steps=19, grid="logsnr"))]
    if quick:
        runs = [runs[0], runs[2], runs[4]]
    fig, axes = plt.subplots(1, len(runs) + 1, figsize=(3.2 * (len(runs) + 1), 3.4), sharex=True, sharey=True)
    exact = gm.sample(n, seed=1)
    axes[0].scatter(exact[:, 0], exact[:, 1], s=1, alpha=0.3)
    axes[0].set_title("exact")
    print(f"first call: {FIRST_CALL_SAMPLES} samples first (compilation and set-up), timed apart from the run")
    print(f"{'method':>15} {'grid':>8} {'NFE':>5} {'first s':>8} {'run s':>6}  mode weights           sliced KS")
    for ax, (method, kw) in zip(axes[1:], runs, strict=True):
        first = sample(sde, score, FIRST_CALL_SAMPLES, method=method, seed=2, **kw).seconds
        r = sample(sde, score, n, method=method, seed=2, **kw)
        w = gm.mode_weights(r.x)
        ks = gm.sliced_ks(r.x)
        print(f"{method:>15} {r.grid:>8} {r.nfe:>5} {first:>8.2f} {r.seconds:>6.2f}  {np.round(w, 3)!s:<22} {ks:.4f}")
        ax.scatter(r.x[:, 0], r.x[:, 1], s=1, alpha=0.3)
        ax.set_title(f"{method} (NFE {r.nfe})")
    fig.tight_layout()
    path = os.path.join(out, "samples_oracle.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")

    # pathwise error of the deterministic samplers from the same starting noise
    curves = {"euler (uniform)": ("euler", "uniform", [10, 20, 40, 80]),
              "heun (logsnr)": ("heun", "logsnr", [5, 10, 20, 40]),
              "rk4 (logsnr)": ("rk4", "logsnr", [3, 5, 10, 20]),
              "ddim (logsnr)": ("ddim", "logsnr", [10, 20, 40, 80]),
              "dpmpp_2m (logsnr)": ("dpmpp_2m", "logsnr", [10, 20, 40, 80]),
              "exp_ab3 (logsnr)": ("exp_ab3", "logsnr", [9, 19, 39, 79])}
    m = 500
    x_T = sde.prior_sample(m, 2, seed=3)
    rms = lambda a, b: float(np.sqrt(np.mean(np.sum((a - b) ** 2, axis=1))))  # noqa: E731
    if quick:
        # the exponential family shares its compiled code with the dpmpp_2m above; the reference is exp_ab3
        # (third order) on 1,280 log-SNR steps, its own error estimated from the same method on 640
        curves = {k: v for k, v in curves.items() if k.split()[0] in ("ddim", "dpmpp_2m", "exp_ab3")}
        ref, half = (sample(sde, score, m, method="exp_ab3", steps=s, grid="logsnr", x_T=x_T, denoise=False).x
                     for s in (1280, 640))
        reference = f"exp_ab3 on 1280 log-SNR steps (its distance to 640 steps: {rms(ref, half):.1e})"
    else:
        ref = sample(sde, score, m, method="dopri5", x_T=x_T, denoise=False, rtol=1e-10, atol=1e-10).x
        reference = "dopri5 (rtol 1e-10)"
    fig, ax = plt.subplots(figsize=(6, 4.5))
    print(f"\npathwise RMS error at eps against {reference}, same starting noise:")
    for label, (method, grid, steps) in curves.items():
        nfe, err = [], []
        for s in steps:
            r = sample(sde, score, m, method=method, steps=s, grid=grid, x_T=x_T, denoise=False)
            nfe.append(r.nfe)
            err.append(rms(r.x, ref))
        print(f"  {label:>18}: " + ", ".join(f"NFE {a}: {b:.2e}" for a, b in zip(nfe, err, strict=True)))
        ax.loglog(nfe, err, "o-", label=label)
    ax.set_xlabel("score evaluations (NFE)")
    ax.set_ylabel("RMS error at eps")
    ax.set_title("probability-flow samplers, 2-D mixture (VP)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out, "sampler_errors.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")

    x = gm.diffused(sde, sde.eps).sample(20, seed=4)
    t0 = time.perf_counter()
    lik = log_likelihood(sde, score, x, divergence=gm.divergence_fn(sde), prior=lambda y: gm.log_prob(y, sde.T, sde),
                         rtol=1e-10, atol=1e-10)
    err = np.max(np.abs(lik.log_prob - gm.log_prob(x, sde.eps, sde)))
    print(f"\nPF-ODE log-likelihood (exact divergence and p_T) vs the mixture density: max error {err:.1e} nats "
          f"({lik.nfe} evaluations per point, {time.perf_counter() - t0:.1f} s including the compilation of its "
          "augmented ODE)")


def run_training(out: str, quick: bool = False) -> None:
    """Train a score network on two moons (about a minute on 2 cores; ``quick``: 1,500 steps), sample it with a
    stochastic and a deterministic integrator, score both against held-out data, and write the plots
    (``moons_run/losses.png``, ``moons_sra1.png``, ``moons_dpmpp_2m.png``) — what
    ``python -m diffusion train`` / ``sample`` do."""
    from .runs import evaluate_samples, plot_samples, sample_run, train_run

    folder = os.path.join(out, "moons_run")
    steps = 1500 if quick else 8000
    print(f"\ndiffusion training demo: an MLP score network on two moons, {steps} steps "
          "(python -m diffusion train --data moons)")
    run = train_run(folder, "moons", steps=steps, force=True, progress=False, eval_every=steps // 2)
    n = 2000 if quick else 5000
    for method, steps_, grid in (("sra1", 100, "uniform"), ("dpmpp_2m", 20, "logsnr")):
        first = sample_run(run, method=method, steps=steps_, n=FIRST_CALL_SAMPLES, grid=grid, seed=1)[2].seconds
        x, labels, last = sample_run(run, method=method, steps=steps_, n=n, grid=grid, seed=1)
        m = evaluate_samples(run, x)
        path = os.path.join(out, f"moons_{method}.png")
        plot_samples(run, x, path, title=f"moons: {method}, {steps_} steps ({grid}), NFE {last.nfe}")
        print(f"{method:>9} ({grid}, NFE {last.nfe}, first call {first:.2f} s, run {last.seconds:.1f} s): "
              f"sliced W1 / floor {m['sliced_w1_ratio']:.2f}, "
              f"sliced KS / floor {m['sliced_ks_ratio']:.2f} ({n} samples vs held-out data); wrote {path}")


def sdekit_demo_section(out: str, quick: bool = False) -> None:
    """The diffusion part of ``sdekit demo`` (registered in the entry-point group ``sdekit.demo``): the
    samplers on the exact mixture (:func:`run`), then a trained score network (:func:`run_training`)."""
    run(out, quick=quick)
    run_training(out, quick=quick)

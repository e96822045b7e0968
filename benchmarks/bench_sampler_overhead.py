"""Sampler overhead per score evaluation: diffusion.sample against k-diffusion, in one run, on one thread.

Run:  python benchmarks/bench_sampler_overhead.py [--n 4096] [--steps 50] [--repeat 7] [--backends numba numpy torch]

What is measured: the wall time of one sampler call whose score costs almost
nothing, divided by its score evaluations (NFE): the per-NFE cost of
everything that is not the model (step weights, array updates, checks,
bookkeeping). Both sides use the exact score of N(0, I) data under the VP SDE
(beta_min 0.1, beta_max 20), whose marginals are N(0, I) at every t:

* sdekit: ``Score(lambda t, x, p: -x, sde)`` (``parameterisation="score"``),
  ``diffusion.sample(..., x_T=x_T, denoise=False, grid="logsnr")`` with
  ``backend`` numba, numpy or torch (torch: float64 on the CPU); the call
  includes everything ``sample`` does (grid, checks, the solve);
* k-diffusion: its variable ``x / alpha_t`` at noise level ``s = sigma_t / alpha_t``,
  where the data N(0, I) has the denoiser ``D(x, s) = x / (1 + s^2)``;
  ``sample_dpmpp_2m`` and ``sample_euler`` on ``get_sigmas_exponential`` (uniform
  in log s, i.e. in the log-SNR, the same grid as sdekit's "logsnr"), built
  once outside the timed call.

The state is ``--n`` x 2 float64, ``--steps`` steps. One thread everywhere
(``torch.set_num_threads(1)``, ``NUMBA_NUM_THREADS=1``, the BLAS thread
variables set to 1 before NumPy loads). Each sampler runs once untimed
(Numba compilation and caches excluded); then ``--repeat`` rounds time every
sampler once each (interleaved, so a passing load on a shared machine falls on
all alike), and each keeps its fastest call. The "score alone" rows time the
near-free score by itself (NumPy ``-x``; torch ``x / (1 + s^2)``, k-diffusion's
denoiser), and the overhead per NFE is the time per NFE less that: everything
but the model, including sdekit's conversion of the score to ``x0_hat`` and
``sample``'s set-up (grid, checks) spread over the NFE.

Printed: a markdown table with the overhead ratios of sdekit ``dpmpp_2m``,
``dpmpp_3m`` and ``ddim`` to k-diffusion's ``sample_dpmpp_2m`` and of sdekit
``euler`` to ``sample_euler`` (goal of issue 14: <= 0.5). k-diffusion's
``sample_euler`` draws ``randn_like(x)`` every step even without churn; that
cost is its own. k-diffusion is the ``peers`` set-up of
benchmarks/peer_samplers.py (only its sampling.py is loaded).
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peer_samplers  # noqa: E402

import diffusion  # noqa: E402

SDEKIT_METHODS = ("dpmpp_2m", "dpmpp_3m", "ddim", "euler")
# sdekit method -> the k-diffusion sampler it is compared with
PEER_OF = {"dpmpp_2m": "sample_dpmpp_2m", "dpmpp_3m": "sample_dpmpp_2m", "ddim": "sample_dpmpp_2m",
           "euler": "sample_euler"}
GOAL = 0.5


def best_times(calls: dict, repeat: int) -> dict:
    """Seconds of the fastest call of each entry of ``calls`` (label -> function), after one untimed call of each.

    The calls are interleaved (round ``r`` times every entry once), so that a load that comes and goes on a shared
    machine falls on all entries alike.
    """
    for call in calls.values():
        call()
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeat):
        for label, call in calls.items():
            start = time.perf_counter()
            call()
            best[label] = min(best[label], time.perf_counter() - start)
    return best


def repeat_call(fn, *args):
    """``fn(*args)`` 100 times, each result dropped before the next call (as a sampler's step drops it)."""
    for _ in range(100):
        fn(*args)


def gaussian_score(t, x, p):
    """The exact score of N(0, I) data under the VP SDE: the marginal is N(0, I) at every t."""
    return -x


def sdekit_calls(sde, n, steps, backends) -> dict:
    """label -> (call, NFE) for every sdekit method and backend, and the score alone (100 calls)."""
    score = diffusion.Score(gaussian_score, sde, parameterisation="score", dim=2)
    x_T = np.random.default_rng(0).standard_normal((n, 2))
    calls = {}
    for backend in backends:
        start = torch.as_tensor(x_T) if backend == "torch" else x_T
        for method in SDEKIT_METHODS:

            def call(method=method, backend=backend, start=start):
                return diffusion.sample(sde, score, n, method=method, steps=steps, grid="logsnr", x_T=start,
                                        denoise=False, backend=backend)

            calls[f"sdekit {method} ({backend})"] = (call, call().nfe)
    calls["score alone: NumPy -x"] = (lambda: repeat_call(gaussian_score, 0.5, x_T, ()), 100)
    return calls


def kdiff_calls(n, steps) -> dict:
    """label -> (call, NFE) for k-diffusion's sample_dpmpp_2m and sample_euler, and its denoiser alone (100 calls)."""
    kd = peer_samplers._kdiff_sampling()
    s_min = float(peer_samplers.kd_sigma(torch.tensor(peer_samplers.EPS, dtype=torch.float64)))
    s_max = float(peer_samplers.kd_sigma(torch.tensor(peer_samplers.T, dtype=torch.float64)))
    sigmas = kd.get_sigmas_exponential(steps + 1, s_min, s_max, device="cpu").to(torch.float64)[:-1]
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((n, 2))) * sigmas[0]

    def denoiser(x_kd, s):
        return x_kd / (1.0 + s * s)[:, None]

    calls = {}
    for name in ("sample_dpmpp_2m", "sample_euler"):
        sampler = getattr(kd, name)
        calls[f"k-diffusion {name} (torch)"] = (lambda sampler=sampler: sampler(denoiser, x, sigmas, disable=True), steps)
    calls["score alone: torch x / (1 + s^2)"] = (lambda: repeat_call(denoiser, x, sigmas[3] * x.new_ones([n])), 100)
    return calls


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--backends", nargs="+", default=["numba", "numpy", "torch"], choices=["numba", "numpy", "torch"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sde = diffusion.VPSDE(0.1, 20.0)
    print(f"# {platform.processor() or platform.machine()}, python {platform.python_version()}, torch {torch.__version__}, "
          f"numpy {np.__version__}; n={args.n} x 2, steps={args.steps}, best of {args.repeat}, 1 thread")
    try:
        calls = kdiff_calls(args.n, args.steps)
    except ImportError as exc:
        calls = {}
        print(f"# k-diffusion not loaded ({exc}); sdekit rows only")
    calls.update(sdekit_calls(sde, args.n, args.steps, args.backends))
    best = best_times({label: call for label, (call, _) in calls.items()}, args.repeat)
    per_nfe = {label: best[label] / nfe for label, (_, nfe) in calls.items()}
    # overhead: the per-NFE time less the score alone (sdekit's NumPy score also stands for its Numba compilation)
    score_of = {"sdekit": "score alone: NumPy -x", "k-diffusion": "score alone: torch x / (1 + s^2)"}
    overhead = {label: per_nfe[label] - per_nfe[score_of[label.split()[0]]]
                for label in per_nfe if not label.startswith("score") and score_of[label.split()[0]] in per_nfe}
    print(f"\n| sampler | NFE | us per NFE | overhead us per NFE | overhead ratio to k-diffusion (goal <= {GOAL}) |")
    print("|---|---|---|---|---|")
    for label, (_, nfe) in calls.items():
        if label.startswith("score"):
            print(f"| {label} | 1 | {per_nfe[label] * 1e6:.1f} | | |")
            continue
        method = label.split()[1]
        peer = f"k-diffusion {PEER_OF[method]} (torch)" if label.startswith("sdekit") else None
        ratio = f"{overhead[label] / overhead[peer]:.2f} (vs {PEER_OF[method]})" if peer in overhead else ""
        print(f"| {label} | {nfe} | {per_nfe[label] * 1e6:.1f} | {overhead[label] * 1e6:.1f} | {ratio} |")

if __name__ == "__main__":
    main()

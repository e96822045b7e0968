"""Speed of the torch backend against the cost of torch's own normals, and against torchsde.

Run:  python benchmarks/bench_torch.py [--paths 100000] [--steps 1000] [--repeat 3] [--device cpu]
      python benchmarks/bench_torch.py --quick            (smoke run: 2000 paths x 100 steps)
      python benchmarks/bench_torch.py --device cuda      (adds the large float32 run of section 4)

Problem: scalar OU, dX = theta (mu - X) dt + sigma dW with theta=1, mu=0.5,
sigma=0.3, x0=2 on [0, 1], only X_T saved. Times are the best of --repeat runs,
in ns per path-step (wall time / (paths * steps)). Prints, in one run:

1. the floor: ``Tensor.normal_()`` filling one (paths,) buffer per step in a
   loop over the steps, as a torch solver draws its noise, in float64 and float32;
2. sdekit's torch backend, methods euler, sra1 and sriw1 in float64 and
   float32, eager and with ``compile=True`` ("+compile": each step fused by
   torch.compile); the ratio of euler to (1) in the same dtype (target <= 1.5),
   and the numba backend's euler (float64) for reference;
3. torchsde's ``sdeint`` (when importable) on --peer-paths paths (default
   paths/10; torchsde is slow), against sdekit on the same paths and dtype:
   euler (diagonal noise) vs euler (target >= 5x), srk with additive noise
   (Rößler's SRA1 tableau) vs sra1 and srk with diagonal noise (SRID2) vs
   sriw1 (targets >= 10x). Each torchsde method runs twice: as ``sdeint``
   makes its Brownian motion by default, and with a ``BrownianInterval``
   given the fixed step (``dt=``), which torchsde documents as the efficient
   set-up for fixed-step solvers. Then the sample mean and std of X_T of the
   euler runs next to the exact OU values;
4. on CUDA only: float32 Euler–Maruyama on --gpu-paths paths, in path-steps
   per second, against the memory-bandwidth bound (state read and written
   once per step: 8 bytes per path-step; 16 if the increment is also written
   and read once), with the bandwidth from --bandwidth-gbs or the device name.

Ends with a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import math
import os
import platform
import shlex
import sys
import time

import numba
import torch

import sdekit as sk

THETA, MU, SIGMA, X0, T = 1.0, 0.5, 0.3, 2.0, 1.0
DTYPES = (torch.float64, torch.float32)
# "+compile": the same method with solve(..., compile=True) (the step fused by torch.compile).
SDEKIT_METHODS = ("euler", "sra1", "sriw1", "euler+compile", "sra1+compile", "sriw1+compile")
# torchsde method and noise type -> the sdekit method it is compared with.
PEER_RUNS = (("euler", "diagonal", "euler"), ("srk", "additive", "sra1"), ("srk", "diagonal", "sriw1"))
TARGETS = {"euler": 5.0, "sra1": 10.0, "sriw1": 10.0}
# Peak memory bandwidth in GB/s, matched in order against torch.cuda.get_device_name().
BANDWIDTH_GBS = (("H200", 4800), ("H100 PCIe", 2000), ("H100 NVL", 3900), ("H100", 3350),
                 ("A100-SXM4-80GB", 2039), ("A100 80GB PCIe", 1935), ("A100", 1555))


def dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


def exact_moments():
    """Mean and std of X_T for OU started at X0."""
    mean = MU + (X0 - MU) * math.exp(-THETA * T)
    var = SIGMA**2 * (1 - math.exp(-2 * THETA * T)) / (2 * THETA)
    return mean, math.sqrt(var)


def ou_problem():
    return sk.SDE(lambda t, x, p: p[0] * (p[1] - x), lambda t, x, p: p[2], noise="additive", params=(THETA, MU, SIGMA))


class Timer:
    """Best-of wall times; synchronises the device around each run on CUDA."""

    def __init__(self, device, repeat):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.repeat = repeat

    def best(self, fn, repeat=None):
        best = math.inf
        for _ in range(repeat or self.repeat):
            self.sync()
            t = time.perf_counter()
            fn()
            self.sync()
            best = min(best, time.perf_counter() - t)
        return best


class Report:
    """Prints one line per measurement and keeps the rows for the closing markdown table."""

    def __init__(self):
        self.rows = []

    def line(self, what, dtype, n, m, seconds, ratio="", target=""):
        ns = seconds / (n * m) * 1e9
        print(f"  {what:<46} {dtype_name(dtype):>7} {n:>9,} x {m:<5} {ns:9.2f} ns   {ratio:<28} {target}")
        self.rows.append((what, dtype_name(dtype), f"{n:,} x {m}", f"{ns:.2f}", ratio, target))
        return seconds


def verdict(ratio, target, at_most):
    ok = ratio <= target if at_most else ratio >= target
    return f"target {'<=' if at_most else '>='} {target:g}: {'met' if ok else 'MISSED'}"


# ---------------------------------------------------------------- 1. normal_()

def draw_normals(n, m, dtype, device):
    buf = torch.empty(n, dtype=dtype, device=device)
    for _ in range(m):
        buf.normal_()
    return buf


# ---------------------------------------------------------------- 2. sdekit

def solve(problem, n, m, method, dtype, device, backend="torch"):
    method, _, fused = method.partition("+")
    kw = {"backend": "torch", "device": device, "dtype": dtype} if backend == "torch" else {"backend": backend}
    if fused:
        kw["compile"] = True
    return sk.solve(problem, X0, (0.0, T), method=method, n_steps=m, n_paths=n, seed=0, save_at=[T], **kw)


def time_sdekit(timer, problem, n, m, method, dtype, device):
    solve(problem, min(n, 1000), m, method, dtype, device)  # compile/caches
    return timer.best(lambda: solve(problem, n, m, method, dtype, device))


# ---------------------------------------------------------------- 3. torchsde

class OUDiagonal(torch.nn.Module):
    """OU for torchsde with noise_type 'diagonal': g returns (batch, state), multiplied elementwise."""

    noise_type, sde_type = "diagonal", "ito"

    def f(self, t, y):
        return THETA * (MU - y)

    def g(self, t, y):
        return torch.full_like(y, SIGMA)


class OUAdditive(OUDiagonal):
    """OU for torchsde with noise_type 'additive': g returns (batch, state, noise) = (batch, 1, 1)."""

    noise_type = "additive"

    def g(self, t, y):
        return y.new_full((y.shape[0], 1, 1), SIGMA)


def torchsde_solve(torchsde, noise, method, y0, m, dt_hint):
    sde = OUDiagonal() if noise == "diagonal" else OUAdditive()
    ts = torch.tensor([0.0, T], dtype=y0.dtype, device=y0.device)
    bm = None  # sdeint's default BrownianInterval
    if dt_hint:
        bm = torchsde.BrownianInterval(0.0, T, size=y0.shape, dtype=y0.dtype, device=y0.device, dt=T / m,
                                       levy_area_approximation="space-time" if method == "srk" else "none")
    return torchsde.sdeint(sde, y0, ts, method=method, dt=T / m, bm=bm)


def peer_section(timer, report, problem, n, m, device):
    try:
        import torchsde
    except ImportError:
        print("\n3. torchsde: not installed (pip install -e .[peers]); skipped")
        return
    print(f"\n3. torchsde {torchsde.__version__} sdeint against sdekit (torch backend), both on {n:,} paths "
          f"(--peer-paths); ratio = torchsde / sdekit, same dtype")
    mean, std = exact_moments()
    samples = []
    for dtype in DTYPES:
        y0 = torch.full((n, 1), X0, dtype=dtype, device=device)
        ours = {meth: report.line(f"sdekit {meth}", dtype, n, m, time_sdekit(timer, problem, n, m, meth, dtype, device))
                for meth in SDEKIT_METHODS}
        if dtype == torch.float64:
            samples.append(("sdekit euler", solve(problem, n, m, "euler", dtype, device).x[-1, :, 0]))
        for method, noise, pair in PEER_RUNS:
            for dt_hint in (False, True):
                label = f"torchsde {method} ({noise}, {'bm with dt=' if dt_hint else 'default bm'})"
                run = functools.partial(torchsde_solve, torchsde, noise, method, y0, m, dt_hint)
                t = timer.best(run)
                r, rc = t / ours[pair], t / ours[pair + "+compile"]
                report.line(label, dtype, n, m, t, f"{r:.1f}x sdekit {pair}, {rc:.1f}x {pair}+compile",
                            verdict(max(r, rc), TARGETS[pair], at_most=False))
                if method == "euler" and dtype == torch.float64:
                    samples.append((label, run()[-1, :, 0]))
    print(f"\n   X_T on {n:,} paths, float64 (exact: mean {mean:.4f}, std {std:.4f}; "
          f"standard error of the mean {std / math.sqrt(n):.4f})")
    for label, x in samples:
        x = x.double()
        print(f"   {label:<44} mean {x.mean().item():.4f}  std {x.std().item():.4f}")


# ---------------------------------------------------------------- 4. CUDA

def bandwidth_gbs(device, flag):
    if flag is not None:
        return flag
    name = torch.cuda.get_device_name(device)
    for key, gbs in BANDWIDTH_GBS:
        if key in name:
            return gbs
    sys.exit(f"unknown memory bandwidth for {name!r}: pass --bandwidth-gbs")


def gpu_section(timer, report, problem, n, m, device, bw_gbs):
    dtype = torch.float32
    print(f"\n4. {torch.cuda.get_device_name(device)}: float32 Euler–Maruyama on {n:,} paths x {m} steps; "
          f"peak bandwidth {bw_gbs:g} GB/s")
    t_rng = report.line("torch normal_() per step", dtype, n, m, timer.best(lambda: draw_normals(n, m, dtype, device)))
    t_em = time_sdekit(timer, problem, n, m, "euler", dtype, device)
    report.line("sdekit euler", dtype, n, m, t_em, f"{t_em / t_rng:.2f}x normal_()")
    rate = n * m / t_em
    print(f"   {rate:.3e} path-steps per second")
    for nbytes, what in ((2 * 4, "state read + written"), (4 * 4, "state + increment, each read + written")):
        bound = bw_gbs * 1e9 / nbytes
        print(f"   bound at {nbytes:2d} B/path-step ({what}): {bound:.3e} path-steps/s; "
              f"sdekit reaches {rate / bound:6.1%} ({rate * nbytes / 1e9:.0f} GB/s effective)")


# ---------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--paths", type=int, default=100_000)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--peer-paths", type=int, default=None, help="paths for the torchsde comparison (default paths/10)")
    ap.add_argument("--gpu-paths", type=int, default=10_000_000, help="paths of the large CUDA run (section 4)")
    ap.add_argument("--bandwidth-gbs", type=float, default=None, help="device memory bandwidth (default: by name)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2000 paths x 100 steps, one repeat")
    args = ap.parse_args(argv)
    if args.quick:
        args.paths, args.steps, args.repeat, args.gpu_paths = 2000, 100, 1, 100_000
    n, m = args.paths, args.steps
    peer_n = args.peer_paths or max(1, n // 10)
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        bw = bandwidth_gbs(device, args.bandwidth_gbs)
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
    timer, report = Timer(device, args.repeat), Report()
    problem = ou_problem()

    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    command = shlex.join(["python", "benchmarks/bench_torch.py", *(sys.argv[1:] if argv is None else argv)])
    versions = (f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
                f"numba {numba.__version__} ({numba.get_num_threads()} threads)")
    print(f"{date}  device: {device} ({device_name}), {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}\n{versions}")
    print(f"problem: scalar OU, X_T only; ns per path-step, best of {args.repeat}\n")

    print(f"1. floor: Tensor.normal_() into a ({n:,},) buffer, once per step")
    t_rng = {dt: report.line("torch normal_() per step", dt, n, m, timer.best(lambda dt=dt: draw_normals(n, m, dt, device)))
             for dt in DTYPES}

    print(f"\n2. sdekit, torch backend on {device}")
    for dtype in DTYPES:
        for meth in SDEKIT_METHODS:
            t = time_sdekit(timer, problem, n, m, meth, dtype, device)
            if meth.startswith("euler"):
                r = t / t_rng[dtype]
                report.line(f"sdekit {meth}", dtype, n, m, t, f"{r:.2f}x normal_()", verdict(r, 1.5, at_most=True))
            else:
                report.line(f"sdekit {meth}", dtype, n, m, t)
    solve(problem, 1000, m, "euler", None, None, backend="numba")
    t_nb = timer.best(lambda: solve(problem, n, m, "euler", None, None, backend="numba"))
    report.line("sdekit euler, numba backend (CPU)", torch.float64, n, m, t_nb)

    peer_section(timer, report, problem, peer_n, m, device)

    if device.type == "cuda":
        gpu_section(timer, report, problem, args.gpu_paths, m, device, bw)

    print("\nFor docs/benchmarks.md:\n")
    print(f"`{command}` on {device} ({device_name}), {date}; {versions}.\n")
    print("| what | dtype | paths x steps | ns / path-step | ratio | target |")
    print("|---|---|---|---:|---|---|")
    for row in report.rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""sdekit against its peers in one run: speed and strong error, side by side.

Run:  python benchmarks/peers.py [--paths 4000] [--sdeint-paths 200] [--steps 64 256 1024] [--repeat 3]
      python benchmarks/peers.py --quick            (smoke run: 400 paths, 20 for sdeint, 16 and 64 steps)
      python benchmarks/peers.py --libraries sdekit torchsde

Problems (T = 1, only X_T saved):

* GBM, Itô, scalar noise: dX = a X dt + b X dW, a = 1.5, b = 0.8, x0 = 1;
  exact X_T = x0 exp((a - b^2/2) T + b W_T). Methods: Euler–Maruyama, an
  order-1 scheme (Milstein) and an order-1.5 stochastic Runge–Kutta (SRK).
* Ornstein–Uhlenbeck, additive noise: dX = theta (mu - X) dt + sigma dW,
  theta = 1, mu = 0.5, sigma = 0.3, x0 = 2. Methods: Euler–Maruyama and an
  order-1.5 SRK for additive noise.

Libraries: sdekit (numba backend, the reference of every ratio, and its torch
backend), torchsde, sdeint and diffrax, each skipped with a message when it
is not importable. Every library runs in float64 on the CPU with its own
default threads.

Strong error E|X_T - X_T^exact| over the paths, with its Monte Carlo standard
error. Each library is driven by a Brownian path whose values on the step grid
are read back after the solve: the increments dW_k and, where the path has it,
the space-time Lévy area H_k of every step.

* sdekit and sdeint share one ``sdekit.BrownianPath`` (sdeint takes its
  increments through ``dW=`` and, for SRI2, the repeated integral
  ``I = (dW^2 - h)/2``, exact for scalar noise); sdeint runs on the first
  --sdeint-paths paths only, since it integrates one path at a time in Python.
* torchsde: a ``BrownianInterval`` with ``dt=`` (its documented set-up for
  fixed steps; space-time Lévy area for srk), queried on the step grid after
  the solve.
* diffrax: ``UnsafeBrownianPath`` (its fast path for fixed steps; it draws
  each step's sample from the key and the step's end points, so evaluating it
  again on the same grid returns the same values), and for Euler also a
  ``VirtualBrownianTree`` with ``tol = dt/2``.

GBM's exact solution needs only W_T = sum_k dW_k. OU's depends on the whole
path: X_T = mu + (x0 - mu) e^{-theta T} + sigma int_0^T e^{-theta (T-u)} dW_u.
Given the grid data, that integral is Gaussian with a known conditional mean
(on each step, the projection of e^{-theta (T-u)} onto 1 and, with H, onto
u - t_k) and a known, path-independent conditional variance s^2: what the
grid does not resolve, about sigma^2 theta^4 h^4 (1 - e^{-2 theta T}) / (1440 theta)
with H, and sigma^2 theta^2 h^2 (1 - e^{-2 theta T}) / (24 theta) without. Every scheme's
X_T is a function of the grid data, so E|X_T^exact - X_T| given the grid data
is the mean of a folded normal, |D| erf(|D|/(s sqrt 2)) + s sqrt(2/pi)
exp(-D^2/(2 s^2)) with D = X_T - (conditional mean), computed exactly; its average
over the paths estimates the strong error without bias, and without the noise
of sampling the unresolved part. A check line compares this, for sdekit, with
the error against sdekit's own exact solution on a 2^16-step grid.

Timing: wall time per path-step of the solve (for sdekit also its Brownian
tree; for the peers also their Brownian path), best of --repeat after a warm-up
(numba compilation, diffrax's jit compilation done ahead of time), one run only
when a run takes more than 5 s. ratio = peer time / sdekit (numba) time for the
same problem, step count and number of paths, with sdekit's scheme of the same
kind (euler, milstein, sriw1 for GBM; euler, sra1 for OU).

Ends with a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numba
import numpy as np
from scipy.special import erf

import sdekit as sk

T = 1.0
GBM_A, GBM_B, GBM_X0 = 1.5, 0.8, 1.0
OU_THETA, OU_MU, OU_SIGMA, OU_X0 = 1.0, 0.5, 0.3, 2.0
LIBRARIES = ("sdekit", "torchsde", "sdeint", "diffrax")
SLOW_RUN_S = 5.0  # a run longer than this is not repeated


# ---------------------------------------------------------------- exact solutions on the grid data

def gbm_errors(x, dw, hh, h):
    """|X_T - exact| per path; the exact GBM solution needs only W_T."""
    w_t = dw.sum(axis=0)
    exact = GBM_X0 * np.exp((GBM_A - 0.5 * GBM_B**2) * T + GBM_B * w_t)
    return np.abs(x - exact)


def _ou_cell(h, with_levy):
    """On one step [t_k, t_k + h], with s = u - t_k and phi(s) = e^{theta s}:

    the conditional mean of int phi dW given dW (and H) is alpha dW + beta int (s - h/2) dW,
    where int (s - h/2) dW = -h H; returns alpha, beta and the residual variance
    int (phi - alpha - beta (s - h/2))^2 ds (Gauss–Legendre quadrature, exact to round-off).
    """
    z, w = np.polynomial.legendre.leggauss(12)
    s, w = 0.5 * h * (z + 1.0), 0.5 * h * w
    phi, p1 = np.exp(OU_THETA * s), s - 0.5 * h
    alpha = (w @ phi) / h
    beta = (w @ (phi * p1)) / (h**3 / 12.0) if with_levy else 0.0
    resid = phi - alpha - beta * p1
    return alpha, beta, w @ resid**2


def ou_conditional(dw, hh, h):
    """Mean (per path) and standard deviation (all paths) of the exact OU X_T given the grid data."""
    n = dw.shape[0]
    alpha, beta, v = _ou_cell(h, hh is not None)
    c = np.exp(-OU_THETA * (T - h * np.arange(n)))  # e^{-theta (T - t_k)}
    stoch = c @ dw * alpha
    if hh is not None:
        stoch -= beta * h * (c @ hh)
    mean = OU_MU + (OU_X0 - OU_MU) * math.exp(-OU_THETA * T) + OU_SIGMA * stoch
    return mean, OU_SIGMA * math.sqrt(v * (c @ c))


def ou_errors(x, dw, hh, h):
    """E|X_T - exact| per path given the grid data: the mean of a folded normal."""
    mean, s = ou_conditional(dw, hh, h)
    d = np.abs(x - mean)
    if s == 0.0:
        return d
    z = d / (s * math.sqrt(2.0))
    return d * erf(z) + s * math.sqrt(2.0 / math.pi) * np.exp(-z * z)


ERRORS = {"gbm": gbm_errors, "ou": ou_errors}


@dataclass
class Result:
    """One solve: wall seconds, X_T per path and the grid data, (n_steps, n_paths) arrays (hh may be None)."""

    seconds: float
    x: np.ndarray
    dw: np.ndarray
    hh: np.ndarray | None


def best_of(fn, repeat):
    """Best wall time of ``fn()`` over ``repeat`` runs (one run if it is slow) and its last result."""
    best, out = math.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
        best = min(best, dt)
        if dt > SLOW_RUN_S:
            break
    return best, out


# ---------------------------------------------------------------- sdekit

def sdekit_problem(problem):
    if problem == "gbm":
        return sk.problems.gbm(a=GBM_A, b=GBM_B, x0=GBM_X0, T=T)
    return sk.problems.ornstein_uhlenbeck(theta=OU_THETA, mu=OU_MU, sigma=OU_SIGMA, x0=OU_X0, T=T)


def sdekit_path(seed, n_steps, n_paths):
    """The path sdekit and sdeint share: the same for every step count (a dyadic refinement) and path count."""
    return sk.BrownianPath.for_steps(seed, (0.0, T), n_steps, n_paths=n_paths, noise_dim=1, levy_area=True)


def sdekit_solver(backend, repeat):
    def solve(problem, method, n_steps, n_paths, seed):
        ep = sdekit_problem(problem)
        bm = sdekit_path(seed, n_steps, n_paths)

        def run():
            return sk.solve(ep.problem, ep.x0, ep.t_span, method=method, n_steps=n_steps, brownian=bm, save_at=[T],
                            backend=backend)

        run()  # compile (numba) or warm up (torch)
        seconds, sol = best_of(run, repeat)
        x = sol.x[-1, :, 0]
        dw, hh = bm.increments(n_steps)
        return Result(seconds, np.asarray(x.numpy() if hasattr(x, "numpy") else x), dw[:, :, 0], hh[:, :, 0])

    return solve


def fine_grid_check(method, n_steps, n_paths, seed):
    """sdekit's OU error against its exact solution on a 2^16-step grid, and against the conditional exact."""
    ep = sdekit_problem("ou")
    bm = sdekit_path(seed, n_steps, n_paths)
    x = sk.solve(ep.problem, ep.x0, ep.t_span, method=method, n_steps=n_steps, brownian=bm, save_at=[T]).x[-1, :, 0]
    fine = np.abs(x - ep.exact(bm, ep.x0, ep.t_span)[:, 0])
    dw, hh = bm.increments(n_steps)
    return fine, ou_errors(x, dw[:, :, 0], hh[:, :, 0], T / n_steps)


# ---------------------------------------------------------------- sdeint

def sdeint_solver(sdeint):
    def solve(problem, method, n_steps, n_paths, seed):
        bm = sdekit_path(seed, n_steps, n_paths)
        dw, hh = bm.increments(n_steps)  # (n_steps, n_paths, 1)
        h = T / n_steps
        tspan = np.linspace(0.0, T, n_steps + 1)
        if problem == "gbm":
            y0 = np.array([GBM_X0])

            def f(y, t):
                return GBM_A * y

            def g(y, t):
                return (GBM_B * y).reshape(1, 1)
        else:
            y0, sig = np.array([OU_X0]), np.array([[OU_SIGMA]])

            def f(y, t):
                return OU_THETA * (OU_MU - y)

            def g(y, t):
                return sig

        def one(i):
            dwi = dw[:, i, :]
            if method == "itoEuler":
                return sdeint.itoEuler(f, g, y0, tspan, dW=dwi)
            # I_11 = (dW^2 - h) / 2: the exact repeated Itô integral for one Brownian component.
            return sdeint.itoSRI2(f, g, y0, tspan, dW=dwi, I=(0.5 * (dwi**2 - h))[:, :, None])

        t = time.perf_counter()
        x = np.array([one(i)[-1, 0] for i in range(n_paths)])
        return Result(time.perf_counter() - t, x, dw[:, :, 0], hh[:, :, 0])

    return solve


# ---------------------------------------------------------------- torchsde

def torchsde_solver(torch, torchsde, repeat):
    class GBM(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return GBM_A * y

        def g(self, t, y):
            return GBM_B * y

    class OU(torch.nn.Module):
        noise_type, sde_type = "additive", "ito"

        def f(self, t, y):
            return OU_THETA * (OU_MU - y)

        def g(self, t, y):
            return y.new_full((y.shape[0], 1, 1), OU_SIGMA)

    def solve(problem, method, n_steps, n_paths, seed):
        sde, x0 = (GBM(), GBM_X0) if problem == "gbm" else (OU(), OU_X0)
        f64 = torch.float64
        y0 = torch.full((n_paths, 1), x0, dtype=f64)
        ts = torch.tensor([0.0, T], dtype=f64)
        h = T / n_steps
        levy = method == "srk"
        paths = []

        def run():  # a fresh BrownianInterval each run; the same entropy and queries give the same path
            bm = torchsde.BrownianInterval(0.0, T, size=(n_paths, 1), dtype=f64, entropy=seed, dt=h,
                                           levy_area_approximation="space-time" if levy else "none")
            paths.append(bm)
            with torch.no_grad():
                return torchsde.sdeint(sde, y0, ts, method=method, dt=h, bm=bm)

        seconds, ys = best_of(run, repeat)
        bm, grid = paths[-1], np.linspace(0.0, T, n_steps + 1)
        dw, hh = np.empty((n_steps, n_paths)), np.empty((n_steps, n_paths)) if levy else None
        for k in range(n_steps):
            if levy:
                w, u = bm(float(grid[k]), float(grid[k + 1]), return_U=True)  # U = h (W/2 + H)
                hh[k] = (u / h - 0.5 * w)[:, 0].numpy()
            else:
                w = bm(float(grid[k]), float(grid[k + 1]))
            dw[k] = w[:, 0].numpy()
        return Result(seconds, ys[-1, :, 0].numpy(), dw, hh)

    return solve


# ---------------------------------------------------------------- diffrax

def diffrax_solver(jax, diffrax, repeat, max_steps):
    jnp, jr = jax.numpy, jax.random
    compiled = {}

    def terms_for(problem, stratonovich):
        if problem == "gbm":
            a = GBM_A - 0.5 * GBM_B**2 if stratonovich else GBM_A  # the same SDE in Stratonovich form
            return (lambda t, y, args: a * y), (lambda t, y, args: GBM_B * y), jnp.array(GBM_X0)
        return (lambda t, y, args: OU_THETA * (OU_MU - y)), (lambda t, y, args: jnp.array(OU_SIGMA)), jnp.array(OU_X0)

    def build(problem, method, tree):
        solver = getattr(diffrax, method)()
        levy = diffrax.SpaceTimeLevyArea if method in ("SRA1", "ShARK", "SlowRK") else diffrax.BrownianIncrement
        drift, diffusion, y0 = terms_for(problem, stratonovich=method == "SlowRK")

        def path(key, dt):
            if tree:
                return diffrax.VirtualBrownianTree(0.0, T, tol=dt / 2, shape=(), key=key, levy_area=levy)
            return diffrax.UnsafeBrownianPath(shape=(), key=key, levy_area=levy)

        def one(key, dt):
            terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, path(key, dt)))
            adjoint = diffrax.RecursiveCheckpointAdjoint() if tree else diffrax.ForwardMode()
            sol = diffrax.diffeqsolve(terms, solver, 0.0, T, dt0=dt, y0=y0, saveat=diffrax.SaveAt(t1=True),
                                      max_steps=max_steps, adjoint=adjoint)
            return sol.ys[-1]

        def grid(key, dt, ks):
            # The solver's step k runs from k dt to (k + 1) dt: exact in binary for dt = T / 2^j.
            bm = path(key, dt)
            inc = jax.vmap(lambda k: bm.evaluate(k * dt, (k + 1) * dt, use_levy=True))(ks)
            return inc.W, getattr(inc, "H", None)

        return jax.jit(jax.vmap(one, in_axes=(0, None))), jax.jit(jax.vmap(grid, in_axes=(0, None, None))), levy

    def solve(problem, method, n_steps, n_paths, seed, tree=False):
        keys = jr.split(jr.key(seed), n_paths)
        dt = jnp.asarray(T / n_steps)
        spec = (problem, method, tree, n_paths)
        if spec not in compiled:
            fn, grid, levy = build(problem, method, tree)
            compiled[spec] = fn.lower(keys, dt).compile(), grid, levy  # compiled once for every step count
        fn, grid, levy = compiled[spec]
        seconds, y = best_of(lambda: fn(keys, dt).block_until_ready(), repeat)
        w, hh = grid(keys, dt, jnp.arange(n_steps))
        hh = None if levy is diffrax.BrownianIncrement else np.asarray(hh).T
        return Result(seconds, np.asarray(y), np.asarray(w).T, hh)

    return solve


# ---------------------------------------------------------------- the comparison

@dataclass
class Case:
    """One (problem, kind of scheme): sdekit's scheme and the peers' schemes of the same kind."""

    problem: str
    kind: str
    sdekit_method: str
    sdekit_order: str
    peers: list  # (library, method, nominal strong order, note)


CASES = (
    Case("gbm", "euler", "euler", "0.5", [
        ("torchsde", "euler", "0.5", ""), ("sdeint", "itoEuler", "0.5", ""),
        ("diffrax", "Euler", "0.5", ""), ("diffrax-vbt", "Euler", "0.5", "")]),
    Case("gbm", "milstein", "milstein", "1.0", [
        ("torchsde", "milstein", "1.0", "derivative of g by autograd"), ("sdeint", "itoSRI2", "1.0", "Rößler SRI2"),
        ("diffrax", "ItoMilstein", "1.0", "")]),
    Case("gbm", "srk", "sriw1", "1.5", [
        ("torchsde", "srk", "1.5", "SRID2"),
        ("diffrax", "SlowRK", "1.5", "on the Stratonovich form; diffrax has no Itô SRK")]),
    Case("ou", "euler", "euler", "1.0", [
        ("torchsde", "euler", "1.0", ""), ("sdeint", "itoEuler", "1.0", ""),
        ("diffrax", "Euler", "1.0", ""), ("diffrax-vbt", "Euler", "1.0", "")]),
    Case("ou", "srk", "sra1", "1.5", [
        ("torchsde", "srk", "1.5", "SRA1"), ("sdeint", "itoSRI2", "1.0", "sdeint has no order-1.5 scheme"),
        ("diffrax", "SRA1", "1.5", ""), ("diffrax", "ShARK", "1.5", "")]),
)
PROBLEM_TITLES = {"gbm": "GBM (Itô, scalar)", "ou": "OU (additive)"}
LIBRARY_TITLES = {"sdekit-torch": "sdekit (torch backend)", "diffrax": "diffrax (UnsafeBrownianPath)",
                  "diffrax-vbt": "diffrax (VirtualBrownianTree)"}


@dataclass
class Row:
    case: Case
    library: str
    method: str
    order: str
    note: str
    paths: int
    ns: dict = field(default_factory=dict)
    ratio: dict = field(default_factory=dict)
    err: dict = field(default_factory=dict)  # n_steps -> (mean, standard error)

    def observed_order(self):
        """Least-squares slope of log(error) against log(h) over the step counts."""
        n = sorted(k for k, (e, _) in self.err.items() if e > 0)
        if len(n) < 2:
            return math.nan
        return -np.polyfit(np.log(n), np.log([self.err[k][0] for k in n]), 1)[0]


def import_peers(wanted):
    """{library: module(s) or None}, and a message for each one that is missing."""
    found = {}
    for lib, modules, hint in (("torchsde", ("torch", "torchsde"), "pip install torchsde"),
                               ("sdeint", ("sdeint",), "pip install sdeint"),
                               ("diffrax", ("jax", "diffrax"), "pip install diffrax (brings jax and jaxlib)")):
        if lib not in wanted:
            continue
        try:
            found[lib] = tuple(importlib.import_module(m) for m in modules)
        except ImportError as exc:
            found[lib] = None
            print(f"{lib}: not installed ({exc}; {hint}); skipped")
    return found


def versions(found):
    import torch

    out = [f"python {platform.python_version()}", f"numpy {np.__version__}",
           f"numba {numba.__version__} ({numba.get_num_threads()} threads)",
           f"torch {torch.__version__} ({torch.get_num_threads()} threads)", f"sdekit {sk.__version__}"]
    for mods in found.values():
        for m in mods or ():
            if m.__name__ != "torch":
                out.append(f"{m.__name__} {getattr(m, '__version__', None) or _dist_version(m.__name__)}")
    return ", ".join(out)


def _dist_version(name):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def fmt_err(e):
    mean, se = e
    return f"{mean:.2e} ± {se:.1e}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--paths", type=int, default=4000, help="paths for sdekit, torchsde and diffrax")
    ap.add_argument("--sdeint-paths", type=int, default=200, help="paths for sdeint (pure Python, one path at a time)")
    ap.add_argument("--steps", type=int, nargs="+", default=[64, 256, 1024], help="step counts (powers of 2)")
    ap.add_argument("--repeat", type=int, default=3, help="timing: best of this many runs")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--libraries", nargs="+", choices=LIBRARIES, default=list(LIBRARIES))
    ap.add_argument("--quick", action="store_true", help="smoke run: 400 paths, 20 for sdeint, 16 and 64 steps")
    args = ap.parse_args(argv)
    if args.quick:
        args.paths, args.sdeint_paths, args.steps, args.repeat = 400, 20, [16, 64], 1
    steps = sorted(args.steps)
    if any(n & (n - 1) for n in steps):
        ap.error("--steps must be powers of 2 (the diffrax path is read back on the step grid)")

    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    command = shlex.join(["python", "benchmarks/peers.py", *(sys.argv[1:] if argv is None else argv)])
    machine = f"{platform.machine()} {platform.processor() or ''}".strip() + f", {os.cpu_count()} CPUs"
    print(f"command: {command}\ndate: {date}\nmachine: {machine}, load average {os.getloadavg()[0]:.2f}")
    found = import_peers(args.libraries)
    if found.get("diffrax"):
        found["diffrax"][0].config.update("jax_enable_x64", True)
    vers = versions(found)
    print(f"versions: {vers}")
    print(f"paths: {args.paths} (sdeint: {args.sdeint_paths}); steps: {steps}; float64; timing best of {args.repeat}\n")

    solvers: dict[str, Callable] = {"sdekit": sdekit_solver("numba", args.repeat)}
    if "sdekit" in args.libraries:
        solvers["sdekit-torch"] = sdekit_solver("torch", args.repeat)
    if found.get("torchsde"):
        solvers["torchsde"] = torchsde_solver(*found["torchsde"], args.repeat)
    if found.get("sdeint"):
        solvers["sdeint"] = sdeint_solver(*found["sdeint"])
    if found.get("diffrax"):
        dfx = diffrax_solver(*found["diffrax"], args.repeat, max_steps=steps[-1])
        solvers["diffrax"] = dfx
        solvers["diffrax-vbt"] = lambda *a: dfx(*a, tree=True)

    reference: dict = {}  # (problem, sdekit method, n_steps, n_paths) -> sdekit seconds

    def sdekit_seconds(case, n, paths):
        key = (case.problem, case.sdekit_method, n, paths)
        if key not in reference:
            reference[key] = solvers["sdekit"](case.problem, case.sdekit_method, n, paths, args.seed).seconds
        return reference[key]

    rows = []
    for case in CASES:
        print(f"{PROBLEM_TITLES[case.problem]}, {case.kind}:")
        entries = [("sdekit", case.sdekit_method, case.sdekit_order, "")]
        if "sdekit" in args.libraries:
            entries.append(("sdekit-torch", case.sdekit_method, case.sdekit_order, ""))
        entries += [p for p in case.peers if p[0] in solvers]
        for lib, method, order, note in entries:
            paths = args.sdeint_paths if lib == "sdeint" else args.paths
            row = Row(case, lib, method, order, note, paths)
            for n in steps:
                res = solvers[lib](case.problem, method, n, paths, args.seed)
                if lib == "sdekit":
                    reference[(case.problem, method, n, paths)] = res.seconds
                e = ERRORS[case.problem](res.x, res.dw, res.hh, T / n)
                row.err[n] = (e.mean(), e.std(ddof=1) / math.sqrt(e.size))
                row.ns[n] = res.seconds / (paths * n) * 1e9
                row.ratio[n] = res.seconds / sdekit_seconds(case, n, paths)
                print(f"  {LIBRARY_TITLES.get(lib, lib) + ' ' + method:<44} {paths:>5} paths x {n:<5} "
                      f"{row.ns[n]:9.1f} ns/path-step {row.ratio[n]:7.1f}x sdekit   E|err| {fmt_err(row.err[n])}",
                      flush=True)
            print(f"  {'':<44} observed order {row.observed_order():.2f} (nominal {order})")
            rows.append(row)

    print("\nCheck of the OU exact solution (sdekit sra1 and euler): strong error against sdekit's exact solution "
          "on a 2^16-step grid (one sample of the unresolved part) and against the conditional exact solution "
          "used above")
    for method in ("sra1", "euler"):
        for n in steps:
            fine, cond = fine_grid_check(method, n, args.paths, args.seed)
            se = fine.std(ddof=1) / math.sqrt(fine.size)
            print(f"  {method:<5} {n:>5} steps: fine grid {fine.mean():.4e} ± {se:.1e}, conditional {cond.mean():.4e}, "
                  f"mean |difference per path| {np.abs(fine - cond).mean():.1e}")

    n_top = steps[-1]
    print("\nFor docs/benchmarks.md:\n")
    print(f"`{command}`, {date}; {machine}; {vers}.\n")
    head = " | ".join(f"E\\|err\\| {n} steps" for n in steps)
    print(f"| problem | kind | library | method | strong order | ns / path-step ({n_top} steps) | × sdekit | {head} "
          "| observed order |")
    print("|---|---|---|---|---|---:|---:|" + "---:|" * len(steps) + "---:|")
    for r in rows:
        method = f"`{r.method}`" + (f" ({r.note})" if r.note else "")
        lib = LIBRARY_TITLES.get(r.library, r.library) + (f", {r.paths} paths" if r.paths != args.paths else "")
        errs = " | ".join(fmt_err(r.err[n]) for n in steps)
        print(f"| {PROBLEM_TITLES[r.case.problem]} | {r.case.kind} | {lib} | {method} | {r.order} | {r.ns[n_top]:.1f} | "
              f"{r.ratio[n_top]:.1f} | {errs} | {r.observed_order():.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

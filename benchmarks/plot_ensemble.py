"""Convergence of Monte Carlo option prices from ``sdekit.ensemble``: docs/img/ensemble_convergence.png.

A European call and an up-and-out barrier call under geometric Brownian motion (S0 = K = 100, barrier 130,
r = 0.05, sigma = 0.2, T = 1), estimated from nested ensembles of 4^5 ... 4^11 paths (the same seed: path i is
the same in every run, so each estimate extends the previous one), against the Black–Scholes price and the
exact price of the barrier option monitored at the 64 save times. log S is simulated,
dY = (r - sigma^2/2) dt + sigma dW, which Euler–Maruyama solves exactly on its grid. The discretely monitored
price is computed by quadrature (the density of log S carried from date to date by convolution with the Gaussian
transition on a fine grid, cut at the barrier); for comparison the closed-form continuous-monitoring price
(Reiner & Rubinstein 1991) is shown, unshifted and with the barrier shifted by exp(0.5826 sigma sqrt(T/64))
(Broadie, Glasserman & Kou 1997). Prints the table quoted in docs/ensembles.md.

    python benchmarks/plot_ensemble.py                  # a few minutes on 2 cores
    python benchmarks/plot_ensemble.py --max-power 9    # quicker: up to 4^9 paths
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from scipy.signal import fftconvolve
from scipy.stats import norm

import sdekit

S0, K, H, R, SIGMA, T, N_STEPS = 100.0, 100.0, 130.0, 0.05, 0.2, 1.0, 64
BGK_BETA = 0.5826  # -zeta(1/2) / sqrt(2 pi), Broadie, Glasserman & Kou (1997)


def black_scholes_call(t: float) -> float:
    """Black–Scholes (1973) price of a European call maturing at ``t``."""
    d1 = (np.log(S0 / K) + (R + 0.5 * SIGMA**2) * t) / (SIGMA * np.sqrt(t))
    return S0 * norm.cdf(d1) - K * np.exp(-R * t) * norm.cdf(d1 - SIGMA * np.sqrt(t))


def up_and_out_call(barrier: float) -> float:
    """Continuously monitored up-and-out call with K < barrier (Reiner & Rubinstein 1991; Haug 2007, §4.17.1)."""
    s = SIGMA * np.sqrt(T)
    mu = (R - 0.5 * SIGMA**2) / SIGMA**2
    disc = K * np.exp(-R * T)
    x1 = np.log(S0 / K) / s + (1 + mu) * s
    x2 = np.log(S0 / barrier) / s + (1 + mu) * s
    y1 = np.log(barrier**2 / (S0 * K)) / s + (1 + mu) * s
    y2 = np.log(barrier / S0) / s + (1 + mu) * s
    w1, w2 = (barrier / S0) ** (2 * (mu + 1)), (barrier / S0) ** (2 * mu)
    a = S0 * norm.cdf(x1) - disc * norm.cdf(x1 - s)
    b = S0 * norm.cdf(x2) - disc * norm.cdf(x2 - s)
    c = w1 * S0 * norm.cdf(-y1) - w2 * disc * norm.cdf(-y1 + s)
    d = w1 * S0 * norm.cdf(-y2) - w2 * disc * norm.cdf(-y2 + s)
    return float(a - b + c - d)


def discretely_monitored_up_and_out_call(n_dates: int, n_grid: int = 8000) -> float:
    """Up-and-out call monitored at ``n_dates`` equally spaced dates (the last at T), by quadrature.

    The density of log S below the barrier is carried from date to date by convolution with the Gaussian
    transition (midpoint rule on ``n_grid`` cells from 10 standard deviations below the spot up to log H;
    mass at or above log H is killed). Error about 1e-5 at ``n_grid = 8000`` (it falls as the square of the cell).
    """
    dt = T / n_dates
    drift, sd = (R - 0.5 * SIGMA**2) * dt, SIGMA * np.sqrt(dt)
    lo, top = np.log(S0) - 10 * SIGMA * np.sqrt(T), np.log(H)
    h = (top - lo) / n_grid
    y = lo + h * (np.arange(n_grid) + 0.5)
    kernel = norm.pdf(h * np.arange(1 - n_grid, n_grid) - drift, scale=sd) * h
    density = norm.pdf(y - np.log(S0) - drift, scale=sd)
    for _ in range(n_dates - 1):
        density = fftconvolve(density, kernel)[n_grid - 1 : 2 * n_grid - 1]
    return float(np.exp(-R * T) * h * np.sum(density * np.maximum(np.exp(y) - K, 0.0)))


class UpAndOut:
    """Discounted payoff of an up-and-out call monitored at the save times (a user reducer)."""

    def init(self, t, dim):
        return np.zeros(3)  # paths, sum of payoffs, sum of squared payoffs

    def update(self, state, t, x_chunk, failed_mask):
        log_s = x_chunk[:, ~failed_mask, 0]
        alive = (log_s < np.log(H)).all(axis=0)
        payoff = np.where(alive, np.exp(-R * t[-1]) * np.maximum(np.exp(log_s[-1]) - K, 0.0), 0.0)
        return state + [log_s.shape[1], payoff.sum(), (payoff * payoff).sum()]

    def merge(self, a, b):
        return a + b

    def finalize(self, state):
        n, total, squares = state
        price = total / n
        return price, np.sqrt((squares / n - price**2) / (n - 1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-power", type=int, default=11, help="largest ensemble: 4^max_power paths")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "img",
                                                      "ensemble_convergence.png"))
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log_gbm = sdekit.SDE(lambda t, y, p: p[0] - 0.5 * p[1] ** 2 + 0.0 * y, lambda t, y, p: p[1], noise="additive",
                         params=(R, SIGMA))
    save_at = np.linspace(0.0, T, N_STEPS + 1)[1:]
    european, barrier = black_scholes_call(T), discretely_monitored_up_and_out_call(N_STEPS)
    shifted = up_and_out_call(H * np.exp(BGK_BETA * SIGMA * np.sqrt(T / N_STEPS)))
    print(f"references: Black–Scholes {european:.4f}; up-and-out monitored at the 64 dates (quadrature) {barrier:.4f}; "
          f"closed form, continuous monitoring {up_and_out_call(H):.4f}, at the BGK-shifted barrier {shifted:.4f}")
    print("| paths | European call | s.e. | z | up-and-out call | s.e. | z | seconds |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for power in range(5, args.max_power + 1):
        n = 4**power
        res = sdekit.ensemble(log_gbm, np.log(S0), (0.0, T), method="euler", n_steps=N_STEPS, n_paths=n, seed=11,
                              save_at=save_at, statistics=("phi_mean",),
                              phi=lambda t, y: np.exp(-R * t) * np.maximum(np.exp(y) - K, 0.0),
                              reducers={"up_and_out": UpAndOut()})
        e, e_se = res.phi_mean[-1, 0], res.phi_mean_se[-1, 0]
        b, b_se = res.extra["up_and_out"]
        rows.append((n, e, e_se, b, b_se))
        print(f"| {n} | {e:.4f} | {e_se:.4f} | {(e - european) / e_se:+.2f} | {b:.4f} | {b_se:.4f} | "
              f"{(b - barrier) / b_se:+.2f} | {res.wall_seconds:.1f} |", flush=True)
    n, e, e_se, b, b_se = (np.array(c) for c in zip(*rows, strict=True))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, value, se, ref, label, colour in ((axes[0], e, e_se, european, "European call", "C0"),
                                              (axes[1], b, b_se, barrier, "up-and-out call (64 dates)", "C1")):
        ax.errorbar(n, value, yerr=2 * se, fmt="o-", color=colour, capsize=3, label="estimate ± 2 s.e.")
        ax.axhline(ref, color="k", ls="--", lw=1, label="exact" if ax is axes[0] else "exact (quadrature)")
        ax.set(xscale="log", xlabel="paths", ylabel="price", title=label)
        axes[2].loglog(n, np.abs(value - ref), "o-", color=colour, label=f"{label}: |estimate − exact|")
        axes[2].loglog(n, se, ":", color=colour, label=f"{label}: s.e.")
    axes[1].axhline(shifted, color="C2", ls=":", lw=1.5, label="continuous closed form, BGK-shifted barrier")
    axes[1].set_ylim(barrier - 0.5, barrier + 0.5)
    axes[2].loglog(n, e_se[0] * np.sqrt(n[0] / n), "k-", lw=0.8, label="slope −1/2")
    axes[2].set(xlabel="paths", ylabel="error", title="error and standard error")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {os.path.relpath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

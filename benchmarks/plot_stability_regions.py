"""Stability regions of the drift part of sdekit's fixed-step schemes: docs/img/stability_regions.png.

The region of a one-step method with stability function ``R`` is ``{z = h lambda : |R(z)| <= 1}``, the step
sizes for which ``x' = lambda x`` is not amplified (Hairer & Wanner, *Solving ODEs II*, IV.2-IV.3):

* explicit Euler (the drift of euler / euler_heun / milstein): ``R(z) = 1 + z``;
* the two-stage drift of SRA1/SRIW1 and ODE heun/midpoint: ``R(z) = 1 + z + z^2/2``; RK4: the Taylor polynomial of
  degree 4;
* the theta-method (the drift of implicit_euler with ``theta=``): ``R(z) = (1 + (1 - theta) z) / (1 - theta z)``,
  A-stable for ``theta >= 1/2`` (theta = 1: everything outside the disc ``|z - 1| < 1``);
* SK-ROCK with ``s`` stages: ``R_s(z) = T_s(w0 + w1 z) / T_s(w0)``, ``w0 = 1 + eta/s^2``, ``w1 = T_s(w0) / T_s'(w0)``,
  ``eta = 0.05`` (Abdulle, Almuslimani & Vilmart 2018, eq. (2.7)); its region is a thin strip along the negative
  real axis reaching ``-(2 - 4 eta / 3) s^2``.

Run: ``python benchmarks/plot_stability_regions.py [--out docs/img/stability_regions.png]``. Besides the figure it
prints each region's extent along the negative real axis, computed from the same functions.
"""

from __future__ import annotations

import argparse

import numpy as np
from numpy.polynomial import chebyshev


def euler(z):
    return 1 + z


def rk2(z):
    return 1 + z + z**2 / 2


def rk4(z):
    return 1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24


def theta_method(theta):
    return lambda z: (1 + (1 - theta) * z) / (1 - theta * z)


def skrock(s, eta=0.05):
    """SK-ROCK's drift stability function with ``s`` stages (damped Chebyshev polynomial of the first kind)."""
    t_s = chebyshev.Chebyshev.basis(s)
    w0 = 1 + eta / s**2
    w1 = t_s(w0) / t_s.deriv()(w0)
    return lambda z: t_s(w0 + w1 * z) / t_s(w0)


def real_extent(r, limit):
    """The first ``x > 0`` with ``|R(-x)| > 1`` (grid of 1e-3, up to ``limit``); ``inf`` if none."""
    x = np.arange(1, int(limit * 1000) + 1) * 1e-3
    outside = np.nonzero(np.abs(r(-x)) > 1 + 1e-9)[0]
    return float(x[outside[0]]) if outside.size else np.inf


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/img/stability_regions.png")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (near, far) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1, 1.6]})
    x, y = np.meshgrid(np.linspace(-6, 3, 901), np.linspace(-4, 4, 801))
    z = x + 1j * y
    schemes = [("explicit Euler", euler, "C0"), ("SRA1/SRIW1 drift, heun", rk2, "C1"), ("RK4", rk4, "C2"),
               ("θ-method θ=1 (implicit_euler)", theta_method(1.0), "C3"), ("θ = 1/2 (the left half-plane)", theta_method(0.5), "C4"),
               ("θ = 0.75", theta_method(0.75), "C5")]
    for label, r, color in schemes:
        explicit = "θ" not in label
        with np.errstate(all="ignore"):
            if explicit:  # the explicit regions are bounded: shaded; the θ-methods' are the outsides of their curves
                near.contourf(x, y, np.abs(r(z)), levels=[0, 1], colors=[color], alpha=0.18)
            near.contour(x, y, np.abs(r(z)), levels=[1], colors=[color], linewidths=1.5,
                         linestyles="solid" if explicit else "dashed")
        near.plot([], [], color=color, ls="solid" if explicit else "dashed", label=label)
    near.axhline(0, color="k", lw=0.5)
    near.axvline(0, color="k", lw=0.5)
    near.set(xlabel="Re hλ", ylabel="Im hλ", aspect="equal")
    near.set_title("explicit: inside (shaded); θ-methods: outside (dashed)", fontsize=10)
    near.legend(loc="lower left", fontsize=7)

    x, y = np.meshgrid(np.linspace(-210, 5, 2151), np.linspace(-8, 8, 321))
    z = x + 1j * y
    for s, color in ((3, "C0"), (5, "C1"), (10, "C2")):
        r = skrock(s)
        far.contourf(x, y, np.abs(r(z)), levels=[0, 1], colors=[color], alpha=0.25)
        far.contour(x, y, np.abs(r(z)), levels=[1], colors=[color], linewidths=1.0)
        far.plot([], [], color=color, label=f"SK-ROCK s={s} (reaches {-real_extent(r, 300):.1f})")
    far.contour(x, y, np.abs(euler(z)), levels=[1], colors=["k"], linewidths=1.5)
    far.plot([], [], color="k", label="explicit Euler (reaches -2)")
    far.set(xlabel="Re hλ", ylabel="Im hλ (stretched)")
    far.set_title("SK-ROCK (η = 0.05): stability interval ~1.93 s²", fontsize=10)
    far.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    print("extent along the negative real axis (first x with |R(-x)| > 1):")
    for label, r in [("explicit Euler", euler), ("two-stage RK (SRA1/SRIW1 drift, heun, midpoint)", rk2), ("RK4", rk4),
                     ("theta = 1", theta_method(1.0)), ("theta = 0.5", theta_method(0.5))]:
        print(f"  {label:50s} {real_extent(r, 50):.4g}")
    for s in (3, 5, 10):
        print(f"  {'SK-ROCK s=' + str(s):50s} {real_extent(skrock(s), 300):.4g}")


if __name__ == "__main__":
    main()

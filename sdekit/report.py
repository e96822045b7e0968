"""Tables and plots of a convergence :class:`~sdekit.convergence.Study`.

The study record holds the numbers (per-path errors, standard errors, fits,
work); this module only presents them: a text, markdown or CSV table
(:func:`table`, :func:`save_csv`) and the error-vs-step and work-precision
figures (:func:`plot`).
"""

from __future__ import annotations

import csv
import io

import numpy as np

from .checks import require

__all__ = ["table", "save_csv", "plot"]


def _fit_lines(study, fits, label):
    lines = []
    for m in study.methods:
        f = fits.get(m)
        if f is None:
            lines.append(f"{label} order {m}: not fitted (errors within their Monte Carlo noise)")
            continue
        local = " ".join(f"{v:.2f}" for v in f.local_slopes)
        status = "asymptotic" if f.asymptotic else "NOT asymptotic: local slopes still drift, use finer steps"
        lines.append(f"{label} order {m}: {f} ({f.confidence:.0%} interval); local slopes {local} ({status})")
    return lines


def table(study, fmt: str = "text") -> str:
    """The errors of ``study`` as a table: ``fmt`` is ``"text"``, ``"markdown"`` or ``"csv"``."""
    recs = study.records()
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(recs[0]))
        w.writeheader()
        w.writerows(recs)
        return buf.getvalue()
    if fmt not in ("text", "markdown"):
        raise ValueError(f"`fmt` must be 'text', 'markdown' or 'csv', got {fmt!r}.")
    head = ["method", "steps", "dt", "strong error ± se", "weak error ± se", "evals/path", "ns/path-step"]
    rows = [[r["method"], str(r["steps"]), f"{r['dt']:.3g}", f"{r['strong_error']:.3e} ± {r['strong_se']:.1e}",
             f"{r['weak_error']:+.3e} ± {r['weak_se']:.1e}", f"{r['evals_per_path']:.0f}",
             f"{r['ns_per_path_step']:.1f}"] for r in recs]
    title = (f"{study.problem}: {study.n_paths} paths, reference {study.reference}, weak functional phi = "
             f"{study.phi}, backend {study.backend}")
    fits = _fit_lines(study, study.strong_fits, "strong") + _fit_lines(study, study.weak_fits, "weak")
    if study.reference_error is not None:
        fits.append(f"reference error (vs. the same method on half the steps): {study.reference_error:.2e}")
    if fmt == "markdown":
        lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines + [""] + [f"- {f}" for f in fits])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt_row = "  ".join(f"{{:>{w}}}" for w in widths).format
    return "\n".join([title, fmt_row(*head)] + [fmt_row(*r) for r in rows] + fits)


def save_csv(study, path) -> None:
    """Write :func:`table` in CSV to ``path``."""
    with open(path, "w", newline="") as fh:
        fh.write(table(study, "csv"))


def plot(study, path, kind: str = "errors"):
    """Save a figure (PNG or SVG by extension) and return it.

    ``kind="errors"``: log-log strong and weak error against the step
    size, error bars of 2 standard errors, reference slopes (weak errors
    within 2 standard errors of zero are drawn hollow: they are not fitted);
    ``kind="work"``: work-precision, strong error against wall time and
    against function evaluations per path.
    """
    matplotlib = require("matplotlib", extra="plot", what="plotting a convergence study")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if kind not in ("errors", "work"):
        raise ValueError(f"`kind` must be 'errors' or 'work', got {kind!r}.")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    if kind == "errors":
        _plot_errors(study, axes[0], "strong")
        _plot_errors(study, axes[1], "weak")
    else:
        for ax, what in zip(axes, ("seconds", "evals"), strict=True):
            for m in study.methods:
                x = study.seconds[m] if what == "seconds" else study.evals[m]
                ax.errorbar(x, study.strong_error(m), yerr=2 * study.strong_se(m), marker="o", label=m)
            ax.set(xscale="log", yscale="log", ylabel="strong error",
                   xlabel="wall time of the solve [s]" if what == "seconds" else "function evaluations per path",
                   title=f"{study.problem}: work-precision")
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig


def _plot_errors(study, ax, which):
    import matplotlib.ticker

    fits = study.strong_fits if which == "strong" else study.weak_fits
    for m in study.methods:
        err = study.strong_error(m) if which == "strong" else np.abs(study.weak_error(m))
        se = study.strong_se(m) if which == "strong" else study.weak_se(m)
        f = fits.get(m)
        label = f"{m} (order {f.order:.2f})" if f is not None else m
        line = ax.errorbar(study.dts, err, yerr=2 * se, marker="o", capsize=2, label=label)
        noise = err <= 2 * se  # within the Monte Carlo noise: drawn hollow, not fitted
        if which == "weak" and noise.any():
            ax.plot(study.dts[noise], err[noise], "o", color=line[0].get_color(), mfc="white", zorder=3)
    first = study.strong_error(study.methods[0]) if which == "strong" else np.abs(study.weak_error(study.methods[0]))
    if first[0] > 0:
        for p, ls in [(0.5, ":"), (1.0, "--"), (1.5, "-."), (2.0, "-")]:
            ax.plot(study.dts, first[0] * (study.dts / study.dts[0]) ** p, "k", ls=ls, lw=0.8, alpha=0.5,
                    label=f"slope {p}")
    ylabel = "strong error E|X - X_ref|" if which == "strong" else f"weak error |E phi(X) - E phi(X_ref)|, phi={study.phi}"
    ax.set(xscale="log", yscale="log", xlabel="step size dt", ylabel=ylabel, title=f"{study.problem}: {which}")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=7)

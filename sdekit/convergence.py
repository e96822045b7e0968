"""Strong and weak error studies on one refinable Brownian path, with fitted orders.

Every step count of a study reads the same :class:`~sdekit.BrownianPath`
(its grids are exact sub-samples of each other), so the errors differ only
by the discretisation. Orders are least-squares slopes of log error against
log step size, with a bootstrap confidence interval over paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .brownian import BrownianPath
from .problems import ExactProblem
from .schemes import get_scheme
from .solve import solve

__all__ = ["OrderFit", "StrongStudy", "fit_order", "fit_weak_order", "strong_study", "weak_errors"]


@dataclass(frozen=True)
class OrderFit:
    """A fitted convergence order: slope of log(error) vs log(dt), bootstrap CI, local slopes."""

    order: float
    ci_low: float
    ci_high: float
    local_slopes: np.ndarray
    confidence: float = 0.95

    def contains_or_exceeds(self, declared: float) -> bool:
        """True if the interval contains ``declared`` or lies above it."""
        return self.ci_low <= declared <= self.ci_high or self.ci_low > declared

    def __str__(self):
        return f"{self.order:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}]"


def _slope(log_dt, log_err):
    A = np.vstack([log_dt, np.ones_like(log_dt)]).T
    return np.linalg.lstsq(A, log_err, rcond=None)[0][0]


def fit_order(dts, per_path_errors, *, n_boot=1000, confidence=0.95, seed=0) -> OrderFit:
    """Fit ``mean error ~ C dt^p`` across step sizes.

    ``per_path_errors`` is (n_levels, n_paths): the absolute error of each
    path at each step size. The interval comes from resampling paths (the
    same resample at every level, preserving the correlation between levels).
    """
    dts = np.asarray(dts, float)
    e = np.asarray(per_path_errors, float)
    log_dt = np.log(dts)
    mean = e.mean(axis=1)
    order = _slope(log_dt, np.log(mean))
    rng = np.random.default_rng(seed)
    n = e.shape[1]
    boots = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        boots[b] = _slope(log_dt, np.log(e[:, idx].mean(axis=1)))
    a = (1 - confidence) / 2
    lo, hi = np.quantile(boots, [a, 1 - a])
    local = np.diff(np.log(mean)) / np.diff(log_dt)
    return OrderFit(float(order), float(lo), float(hi), local, confidence)


def fit_weak_order(dts, errors, std_errors, *, z=1.96) -> OrderFit:
    """Fit ``|e| = C dt^p (1 + b dt)`` by weighted least squares; interval from the standard errors.

    The correction term ``b dt`` absorbs the next order of the error
    expansion, which otherwise biases a straight-line fit on coarse grids;
    weights are the Monte Carlo standard errors, taken as absolute, and the
    interval is ``p ± z * se(p)`` from the fit's covariance. Meaningful only
    where ``|e|`` stands well above its standard error.
    """
    from scipy.optimize import curve_fit

    h = np.asarray(dts, float)
    e = np.abs(np.asarray(errors, float))
    s = np.asarray(std_errors, float)
    x = np.log(h)
    p0 = np.polyfit(x, np.log(e), 1)

    def model(hh, logc, p, b):
        return np.exp(logc) * hh**p * (1.0 + b * hh)

    popt, pcov = curve_fit(model, h, e, p0=[p0[1], p0[0], 0.0], sigma=s, absolute_sigma=True, maxfev=10000)
    order, se = popt[1], float(np.sqrt(pcov[1, 1]))
    local = np.diff(np.log(e)) / np.diff(x)
    return OrderFit(float(order), float(order - z * se), float(order + z * se), local)


@dataclass(frozen=True)
class StrongStudy:
    """Strong errors ``E|X_T - X_T^exact|`` of several methods on one path."""

    problem: str
    steps: np.ndarray
    dts: np.ndarray
    methods: tuple
    errors: dict  # method -> (n_levels, n_paths) absolute errors
    fits: dict = field(default_factory=dict)

    def mean_error(self, method):
        return self.errors[method].mean(axis=1)

    def std_error(self, method):
        e = self.errors[method]
        return e.std(axis=1, ddof=1) / np.sqrt(e.shape[1])

    def table(self) -> str:
        """A plain-text table: error ± standard error per step count, and the fitted order."""
        head = f"{'steps':>7} " + " ".join(f"{m:>22}" for m in self.methods)
        rows = [head]
        for i, n in enumerate(self.steps):
            rows.append(f"{n:>7} " + " ".join(
                f"{self.mean_error(m)[i]:>11.3e} ± {self.std_error(m)[i]:<8.1e}" for m in self.methods))
        rows.append(f"{'order':>7} " + " ".join(f"{str(self.fits[m]):>22}" for m in self.methods))
        return "\n".join(rows)


def _final(sol) -> np.ndarray:
    """The last saved states as NumPy (torch results are moved to the host)."""
    x = sol.x[-1]
    return x if isinstance(x, np.ndarray) else x.detach().cpu().double().numpy()


def strong_study(exact: ExactProblem, methods, steps, *, n_paths=1000, seed=0, backend="numba",
                 n_boot=1000) -> StrongStudy:
    """Strong error of each method at each step count, on one Brownian path per sample."""
    steps = np.asarray(sorted(steps), dtype=np.int64)
    t0, t1 = exact.t_span
    if exact.problem.is_sde:
        m = exact.problem.noise_dim(exact.x0.size)
        bm = BrownianPath.for_steps(seed, (t0, t1), int(steps[0]), n_paths=n_paths, noise_dim=m, levy_area=True)
        ref = exact.exact(bm, exact.x0, (t0, t1))
    else:
        bm = None
        ref = np.broadcast_to(exact.exact(None, exact.x0, (t0, t1)), (n_paths, exact.x0.size))
    errors, fits = {}, {}
    for meth in methods:
        get_scheme(meth, exact.problem)
        e = np.empty((len(steps), n_paths))
        for i, n in enumerate(steps):
            kw = dict(brownian=bm) if bm is not None else dict(n_paths=n_paths)
            sol = solve(exact.problem, exact.x0, (t0, t1), method=meth, n_steps=int(n), save_at=[t1],
                        backend=backend, **kw)
            e[i] = np.sqrt(np.sum((_final(sol) - ref) ** 2, axis=1))
        errors[meth] = e
        fits[meth] = fit_order((t1 - t0) / steps, e, n_boot=n_boot, seed=seed)
    return StrongStudy(exact.name, steps, (t1 - t0) / steps, tuple(methods), errors, fits)


def weak_errors(exact: ExactProblem, method, steps, phi, *, n_paths=20000, seed=0, backend="numba"):
    """Weak errors ``E phi(X_T) - E phi(X_T^exact)`` with common random numbers.

    Both terms are averaged over the same paths, so the Monte Carlo noise of
    ``phi(X_T^exact)`` cancels; returns ``(steps, errors, standard_errors)``.
    """
    steps = np.asarray(sorted(steps), dtype=np.int64)
    t0, t1 = exact.t_span
    m = exact.problem.noise_dim(exact.x0.size)
    bm = BrownianPath.for_steps(seed, (t0, t1), int(steps[0]), n_paths=n_paths, noise_dim=m, levy_area=True)
    ref = phi(exact.exact(bm, exact.x0, (t0, t1)))
    errs, ses = [], []
    for n in steps:
        sol = solve(exact.problem, exact.x0, (t0, t1), method=method, n_steps=int(n), brownian=bm, save_at=[t1],
                    backend=backend)
        d = phi(_final(sol)) - ref
        d = d.reshape(d.shape[0], -1).sum(axis=1)
        errs.append(d.mean())
        ses.append(d.std(ddof=1) / np.sqrt(len(d)))
    return steps, np.array(errs), np.array(ses)

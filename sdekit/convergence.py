"""Accuracy against step count: strong and weak errors, fitted orders, work-precision.

One call, :func:`study`, solves a problem with several methods at several
step counts and measures every error against a reference on the **same**
Brownian path per sample (the grids of a :class:`~sdekit.BrownianPath` are
exact sub-samples of each other), so errors differ only by the discretisation:

* the reference is the exact solution of an :class:`~sdekit.problems.ExactProblem`
  (``reference="exact"``), or, analytic-free, a fine solve with a chosen
  high-order method on the same path (``reference="sriw1"``, say);
* strong error ``E|X_T - X_T^ref|`` (Euclidean norm per path) and weak error
  ``E phi(X_T) - E phi(X_T^ref)``, both averaged over the same paths (common
  random numbers: the Monte Carlo noise of ``phi(X_T^ref)`` cancels), each
  with its Monte Carlo standard error;
* fitted orders with confidence intervals (strong: bootstrap over paths;
  weak: weighted fit with a next-order correction), the local slopes between
  consecutive step counts with their standard errors, and a check that the
  fit lies in the asymptotic range;
* work: wall time of each solve and function evaluations per path.

Results are a plain :class:`Study` record of errors, standard errors, fits
and work; :mod:`sdekit.report` turns it into tables (text, markdown, CSV) and
plots (error vs step; work-precision) saved to PNG or SVG.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .brownian import BrownianPath, dyadic_level
from .problem import ODE, SDE
from .problems import ExactProblem, get_problem
from .schemes import get_scheme
from .solve import solve

__all__ = [
    "OrderFit", "Study", "study", "fit_order", "fit_weak_order", "parse_steps",
]


# --------------------------------------------------------------------------- fits
@dataclass(frozen=True)
class OrderFit:
    """A fitted convergence order: slope of log(error) vs log(dt) with its interval.

    ``local_slopes[i]`` is the slope between step sizes ``i`` and ``i+1`` and
    ``local_se`` its standard error. ``asymptotic`` says whether every local
    slope in the fitted range agrees with the fitted order (within
    ``max(0.05, 2 se)``): if not, the errors are still pre-asymptotic and the
    fit should use finer steps (or ``fit_from`` in :func:`study`).

    A weak fit also carries its lack of fit: ``scatter`` is the Birge ratio
    ``sqrt(chi^2 / dof)`` of the residuals in units of their standard errors
    (``None`` when the fit has no spare degree of freedom), and ``power_law``
    is False when the residuals reject the model ``C dt^p (1 + b dt)`` at the
    0.1 % level (the errors are not a power law within their noise; the
    interval is then dominated by the model's misfit, not by Monte Carlo noise).
    """

    order: float
    ci_low: float
    ci_high: float
    local_slopes: np.ndarray
    confidence: float = 0.95
    local_se: np.ndarray | None = None
    scatter: float | None = None
    power_law: bool = True

    def contains_or_exceeds(self, declared: float) -> bool:
        """True if the interval contains ``declared`` or lies above it."""
        return self.ci_low <= declared <= self.ci_high or self.ci_low > declared

    @property
    def asymptotic(self) -> bool:
        se = np.zeros_like(self.local_slopes) if self.local_se is None else self.local_se
        tol = np.maximum(0.05, 2.0 * se)
        return bool(np.all(np.abs(self.local_slopes - self.order) <= tol))

    def __str__(self):
        text = f"{self.order:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}]"
        if not self.power_law:
            text += f" (not a power law within the noise: residuals {self.scatter:.1f} standard errors)"
        return text


def _slope(log_dt, log_err):
    """Least-squares slope of ``log_err`` (last axis: one value per step size; any leading axes) against ``log_dt``."""
    centred = log_dt - log_dt.mean()
    return (log_err - log_err.mean(axis=-1, keepdims=True)) @ centred / (centred @ centred)


def fit_order(dts, per_path_errors, *, n_boot=1000, confidence=0.95, seed=0) -> OrderFit:
    """Fit ``mean error ~ C dt^p`` across step sizes.

    ``per_path_errors`` is (n_levels, n_paths): the absolute error of each
    path at each step size. The interval comes from resampling paths (the
    same resample at every level, preserving the correlation between levels);
    the local slopes' standard errors come from the same resamples.
    """
    dts = np.asarray(dts, float)
    e = np.asarray(per_path_errors, float)
    if e.ndim != 2 or e.shape[0] != len(dts) or e.shape[1] < 2:
        raise ValueError(f"`per_path_errors` must have shape (len(dts), n_paths) = ({len(dts)}, n_paths >= 2) for a "
                         f"bootstrap interval, got {e.shape}.")
    log_dt = np.log(dts)
    mean = e.mean(axis=1)
    order = float(_slope(log_dt, np.log(mean)))
    rng = np.random.default_rng(seed)
    n = e.shape[1]
    log_mean_boots = np.empty((n_boot, len(dts)))
    chunk = max(1, 2**22 // n)  # resamples per block: (chunk, n) counts in memory at once
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        # each resample's multiplicities of the n paths, applied to every level alike (the same paths at each level)
        picks = rng.integers(0, n, (size, n)) + n * np.arange(size)[:, None]
        counts = np.bincount(picks.ravel(), minlength=size * n).reshape(size, n)
        log_mean_boots[start:start + size] = np.log(counts @ e.T / n)
    boots = _slope(log_dt, log_mean_boots)
    local_boots = np.diff(log_mean_boots, axis=1) / np.diff(log_dt)
    a = (1 - confidence) / 2
    lo, hi = np.quantile(boots, [a, 1 - a])
    local = np.diff(np.log(mean)) / np.diff(log_dt)
    return OrderFit(float(order), float(lo), float(hi), local, confidence, local_boots.std(axis=0, ddof=1))


def fit_weak_order(dts, errors, std_errors, *, z=1.96) -> OrderFit:
    """Fit ``|e| = C dt^p (1 + b dt)`` by weighted least squares; interval from the standard errors and the misfit.

    The correction term ``b dt`` absorbs the next order of the error
    expansion, which otherwise biases a straight-line fit on coarse grids;
    weights are the Monte Carlo standard errors, taken as absolute. Weak errors
    on common random numbers can be nearly deterministic (tiny standard errors),
    so the higher terms of the expansion the model leaves out can bias ``p`` by
    many standard errors. The interval therefore accounts for lack of fit: with
    ``chi^2`` the weighted residual sum and ``dof = levels - 3``, a Birge ratio
    ``B = sqrt(chi^2 / dof) > 1`` scales the standard error of ``p`` by ``B``
    and the normal quantile ``z`` becomes Student's ``t`` with ``dof`` degrees
    of freedom (the scale is then estimated from the residuals: Birge 1932,
    Phys. Rev. 40, 207; Seber & Wild 1989, Nonlinear Regression, §2.2);
    otherwise the interval is ``p ± z se(p)``. ``power_law`` is False where
    ``chi^2`` exceeds its 99.9 % quantile. Meaningful only where ``|e|``
    stands well above its standard error.
    """
    from scipy.optimize import curve_fit
    from scipy.stats import chi2 as chi2_law
    from scipy.stats import t as student_t

    h = np.asarray(dts, float)
    e = np.abs(np.asarray(errors, float))
    s = np.asarray(std_errors, float)
    if not (h.ndim == e.ndim == s.ndim == 1 and h.size == e.size == s.size >= 3):
        raise ValueError(f"`dts`, `errors` and `std_errors` must be 1-D of one length >= 3 (three parameters are fitted), "
                         f"got shapes {h.shape}, {e.shape}, {s.shape}.")
    if not (np.all(s > 0) and np.all(e > 0)):
        raise ValueError("`errors` must be nonzero and `std_errors` positive (the fit is in log scale, weighted by the "
                         "standard errors); drop the levels whose error is within its noise.")
    x = np.log(h)
    p0 = np.polyfit(x, np.log(e), 1)

    def model(dt, logc, p, b):
        return np.exp(logc) * dt**p * (1.0 + b * dt)

    popt, pcov = curve_fit(model, h, e, p0=[p0[1], p0[0], 0.0], sigma=s, absolute_sigma=True, maxfev=10000)
    order, se = popt[1], float(np.sqrt(pcov[1, 1]))
    confidence = float(math.erf(z / math.sqrt(2.0)))
    dof = h.size - 3
    scatter, power_law, quantile = None, True, z
    if dof > 0:
        chi2 = float((((e - model(h, *popt)) / s) ** 2).sum())
        scatter = math.sqrt(chi2 / dof)
        power_law = bool(chi2 <= chi2_law.ppf(0.999, dof))
        if scatter > 1.0:
            se *= scatter
            quantile = float(student_t.ppf(0.5 + confidence / 2, dof))
    local = np.diff(np.log(e)) / np.diff(x)
    rel = s / e
    local_se = np.sqrt(rel[1:] ** 2 + rel[:-1] ** 2) / np.abs(np.diff(x))
    return OrderFit(float(order), float(order - quantile * se), float(order + quantile * se), local, confidence, local_se,
                    scatter, power_law)


# --------------------------------------------------------------------------- the record
@dataclass(frozen=True)
class Study:
    """Errors, standard errors, fits and work of several methods at several step counts.

    ``strong[m]`` is (n_levels, n_paths) of per-path errors ``|X_T - X_T^ref|``;
    ``weak[m]`` is (n_levels, n_paths) of per-path differences
    ``phi(X_T) - phi(X_T^ref)`` (their mean is the weak error, their standard
    deviation / sqrt(n) its standard error). ``seconds[m]`` and ``evals[m]``
    are the wall time of each solve and the function evaluations (drift plus
    diffusion) per path. ``first_call_seconds[m]`` is the wall time of each
    method's untimed first solve (at the coarsest step count, before the timed
    ones): compilation and set-up, kept out of ``seconds`` (absent for the
    numpy backend, which compiles nothing).
    """

    problem: str
    reference: str
    steps: np.ndarray
    dts: np.ndarray
    methods: tuple
    n_paths: int
    strong: dict
    weak: dict
    seconds: dict
    evals: dict
    strong_fits: dict = field(default_factory=dict)
    weak_fits: dict = field(default_factory=dict)
    phi: str = "x"
    reference_error: float | None = None
    backend: str = "numba"
    first_call_seconds: dict = field(default_factory=dict)

    # -- numbers ----------------------------------------------------------------------------
    def strong_error(self, method) -> np.ndarray:
        return self.strong[method].mean(axis=1)

    def strong_se(self, method) -> np.ndarray:
        e = self.strong[method]
        return e.std(axis=1, ddof=1) / np.sqrt(e.shape[1]) if e.shape[1] > 1 else np.zeros(e.shape[0])

    def weak_error(self, method) -> np.ndarray:
        return self.weak[method].mean(axis=1)

    def weak_se(self, method) -> np.ndarray:
        d = self.weak[method]
        return d.std(axis=1, ddof=1) / np.sqrt(d.shape[1]) if d.shape[1] > 1 else np.zeros(d.shape[0])

    # -- tables -----------------------------------------------------------------------------
    def records(self) -> list[dict]:
        """One plain dict per (method, step count)."""
        out = []
        for m in self.methods:
            se_s, e_s, e_w, se_w = self.strong_se(m), self.strong_error(m), self.weak_error(m), self.weak_se(m)
            for i, n in enumerate(self.steps):
                out.append({
                    "method": m, "steps": int(n), "dt": float(self.dts[i]),
                    "strong_error": float(e_s[i]), "strong_se": float(se_s[i]),
                    "weak_error": float(e_w[i]), "weak_se": float(se_w[i]),
                    "seconds": float(self.seconds[m][i]), "evals_per_path": float(self.evals[m][i]),
                    "ns_per_path_step": float(self.seconds[m][i] / (self.n_paths * n) * 1e9),
                })
        return out

    def table(self, fmt: str = "text") -> str:
        """The errors as a table: ``fmt`` is ``"text"``, ``"markdown"`` or ``"csv"`` (see :func:`sdekit.report.table`)."""
        from . import report

        return report.table(self, fmt)

    def save_csv(self, path) -> None:
        """Write :meth:`table` in CSV to ``path``."""
        from . import report

        report.save_csv(self, path)

    def plot(self, path, kind: str = "errors"):
        """Save a figure (PNG or SVG by extension) and return it (see :func:`sdekit.report.plot`)."""
        from . import report

        return report.plot(self, path, kind)




# --------------------------------------------------------------------------- running a study
def parse_steps(spec) -> list[int]:
    """Step counts from ``"8..1024"`` (doubling), ``"8,16,64"`` or a list of ints."""
    if isinstance(spec, str):
        s = spec.replace(" ", "")
        try:
            if ".." in s:
                lo, hi = (int(v) for v in s.split(".."))
                if lo < 1 or hi < lo:
                    raise ValueError
                out = [lo]
                while out[-1] * 2 <= hi:
                    out.append(out[-1] * 2)
                if out[-1] != hi:
                    raise ValueError(f"`steps` {spec!r}: {hi} is not {lo} times a power of two.")
            else:
                out = [int(v) for v in s.split(",") if v]
        except ValueError as exc:
            msg = str(exc) if str(exc).startswith("`steps`") else (
                f"`steps` must look like '8..1024' (doubling) or '8,16,32', got {spec!r}.")
            raise ValueError(msg) from None
    else:
        out = [int(v) for v in spec]
    if len(out) < 2 or any(v < 1 for v in out):
        raise ValueError(f"`steps` needs at least two positive step counts, got {out}.")
    return sorted(set(out))


def _final(sol) -> np.ndarray:
    """The last saved states as NumPy (torch results are moved to the host)."""
    x = sol.x[-1]
    return x if isinstance(x, np.ndarray) else x.detach().cpu().double().numpy()


def _phi_values(phi, x):
    v = np.asarray(phi(x), dtype=float)
    return v.reshape(v.shape[0], -1).sum(axis=1) if v.ndim > 1 else v


def _resolve(problem, x0, t_span):
    """(name, problem, x0, t_span, exact-or-None) from an ExactProblem, a name or an SDE/ODE."""
    if isinstance(problem, str):
        problem = get_problem(problem)
    if isinstance(problem, ExactProblem):
        x0 = problem.x0 if x0 is None else np.asarray(x0, float)
        t_span = problem.t_span if t_span is None else t_span
        return problem.name, problem.problem, x0, tuple(float(v) for v in t_span), problem.exact
    if isinstance(problem, SDE | ODE):
        if x0 is None or t_span is None:
            raise ValueError("a plain SDE/ODE needs `x0` and `t_span` (an ExactProblem carries its own).")
        return type(problem).__name__, problem, np.asarray(x0, float), tuple(float(v) for v in t_span), None
    raise ValueError(
        f"`problem` must be an ExactProblem, a problem name, or an SDE/ODE, got {type(problem).__name__}."
    )


def _check_paths(n_paths) -> None:
    """``n_paths``: an integer >= 2 (a standard error, and the bootstrap interval of an order, need two samples)."""
    if isinstance(n_paths, bool) or not isinstance(n_paths, int | np.integer) or n_paths < 2:
        raise ValueError(f"`n_paths` must be an integer >= 2 (a standard error needs at least two sample paths), "
                         f"got {n_paths!r}.")


def study(problem, methods, steps, *, x0=None, t_span=None, n_paths: int = 1000, seed: int = 0,
          reference: str | None = None, reference_steps: int | None = None, phi=None, phi_name: str | None = None,
          backend: str = "numba", n_boot: int = 1000, confidence: float = 0.95, fit_from: int | None = None,
          progress: bool = False) -> Study:
    """Strong and weak errors of ``methods`` at each of ``steps``, on one Brownian path per sample.

    Parameters
    ----------
    problem : ExactProblem, str or SDE/ODE
        A problem of :mod:`sdekit.problems` (or its name), or any problem
        with ``x0``, ``t_span`` and an analytic-free ``reference``.
    methods : list of str
    steps : list of int or str
        Step counts (``"8..1024"`` doubles from 8 to 1024). They must be
        dyadic refinements of each other, so that one path serves them all.
    n_paths, seed : int
        Samples (at least 2: every error carries its standard error) and the seed of their Brownian path.
    reference : str, optional
        ``"exact"`` (the default for an ExactProblem) or a method name: the
        reference is then that method on ``reference_steps`` steps (default
        ``16 * max(steps)``) on the same path; its own error, estimated from
        the same method on half the steps, is reported as ``reference_error``.
    phi : callable, optional
        Weak functional ``phi(x)`` on the (n_paths, dim) final states; one
        number per path (an array result is summed over its components).
        Default: ``x``, summed over components.
    backend : str
        Passed to :func:`sdekit.solve` (``"numba"``, ``"numpy"``, ``"torch"``).
    n_boot, confidence : int, float
        Bootstrap resamples and level of the strong-order interval (the weak
        interval is normal-theory at the same level).
    fit_from : int, optional
        Fit orders on step counts ``>= fit_from`` only (the asymptotic range);
        default: all. Errors at every step count are reported either way.
    progress : bool
        Show a progress bar (tqdm) over the solves.
    """
    name, prob, x0, (t0, t1), exact = _resolve(problem, x0, t_span)
    _check_paths(n_paths)
    if not (isinstance(n_boot, int | np.integer) and not isinstance(n_boot, bool) and n_boot >= 2):
        raise ValueError(f"`n_boot` must be an integer >= 2 (bootstrap resamples of the order interval), got {n_boot!r}.")
    if not (isinstance(confidence, float | int) and 0 < confidence < 1):
        raise ValueError(f"`confidence` must lie in (0, 1), got {confidence!r}.")
    methods = [methods] if isinstance(methods, str) else list(methods)
    if not methods:
        raise ValueError("`methods` is empty; give at least one method name.")
    for m in methods:
        get_scheme(m, prob)
    steps = np.asarray(parse_steps(steps), dtype=np.int64)
    reference = ("exact" if exact is not None else None) if reference is None else reference
    if reference is None:
        raise ValueError("this problem has no exact solution: pass reference='<method>' (e.g. 'sriw1' or 'rk4').")
    if reference == "exact" and exact is None:
        raise ValueError("reference='exact' needs an ExactProblem; pass reference='<method>' instead.")
    if reference != "exact":
        get_scheme(reference, prob)
        reference_steps = int(16 * steps[-1] if reference_steps is None else reference_steps)
    phi_name = phi_name or ("x" if phi is None else getattr(phi, "__name__", "phi"))
    phi = (lambda x: x) if phi is None else phi

    if prob.is_sde:
        m = prob.noise_dim(x0.size)
        brownian = BrownianPath.for_steps(seed, (min(t0, t1), max(t0, t1)), int(steps[0]), n_paths=n_paths, noise_dim=m,
                                    levy_area=True)
        for n in list(steps) + ([reference_steps] if reference != "exact" else []):
            if dyadic_level(int(n), brownian.base_steps) is None:
                raise ValueError(
                    f"step count {n} is not {steps[0]} times a power of two; every step count of a study must "
                    f"refine the coarsest one ({steps[0]}), so that one Brownian path serves them all."
                )
        kw = {"brownian": brownian}
    else:
        brownian, kw = None, {"n_paths": n_paths}

    def run(method, n):
        t = time.perf_counter()
        sol = solve(prob, x0, (t0, t1), method=method, n_steps=int(n), save_at=[t1], backend=backend, **kw)
        el = time.perf_counter() - t
        if not sol.success:
            raise RuntimeError(f"{method} with {n} steps: {sol.message}")
        return _final(sol), el, (sol.stats.n_drift_evals + sol.stats.n_diffusion_evals) / sol.stats.n_paths

    from tqdm.auto import tqdm

    bar = tqdm(total=len(methods) * len(steps) + (reference != "exact"), disable=not progress, desc=name,
               unit="solve", leave=False)
    reference_error = None
    if reference == "exact":
        ref = exact(brownian, x0, (t0, t1)) if prob.is_sde else np.broadcast_to(exact(None, x0, (t0, t1)), (n_paths, x0.size))
        ref_label = "exact"
    else:
        ref, _, _ = run(reference, reference_steps)
        half, _, _ = run(reference, reference_steps // 2)
        reference_error = float(np.sqrt(((ref - half) ** 2).sum(axis=1)).mean())
        ref_label = f"{reference} on {reference_steps} steps"
        bar.update()
    phi_ref = _phi_values(phi, ref)

    strong, weak, seconds, evals, first_call = {}, {}, {}, {}, {}
    for meth in methods:
        if backend != "numpy":
            first_call[meth] = run(meth, steps[0])[1]  # compile / warm up outside the timings
        e = np.empty((len(steps), n_paths))
        d = np.empty((len(steps), n_paths))
        sec = np.empty(len(steps))
        ev = np.empty(len(steps))
        for i, n in enumerate(steps):
            x, sec[i], ev[i] = run(meth, n)
            e[i] = np.sqrt(((x - ref) ** 2).sum(axis=1))
            d[i] = _phi_values(phi, x) - phi_ref
            bar.update()
        strong[meth], weak[meth], seconds[meth], evals[meth] = e, d, sec, ev
    bar.close()

    dts = abs(t1 - t0) / steps
    st = Study(name, ref_label, steps, dts, tuple(methods), n_paths, strong, weak, seconds, evals,
               phi=phi_name, reference_error=reference_error, backend=backend, first_call_seconds=first_call)
    rng = steps >= (fit_from or 0)
    if rng.sum() < 2:
        raise ValueError(f"fit_from={fit_from} leaves fewer than two step counts to fit; lower it.")
    for meth in methods:
        if np.all(st.strong_error(meth)[rng] > 0):
            st.strong_fits[meth] = fit_order(dts[rng], strong[meth][rng], n_boot=n_boot, confidence=confidence,
                                             seed=seed)
        we, ws = st.weak_error(meth), st.weak_se(meth)
        keep = np.nonzero((np.abs(we) > 2.0 * ws) & rng)[0]  # levels whose bias stands above the noise
        if len(keep) >= 3:
            try:
                st.weak_fits[meth] = fit_weak_order(dts[keep], we[keep], np.maximum(ws[keep], 1e-300),
                                                    z=_z(confidence))
            except (RuntimeError, ValueError):  # curve_fit did not converge: leave unfitted
                pass
    return st


def _z(confidence):
    from scipy.stats import norm

    return float(norm.ppf(0.5 + confidence / 2))

"""``solve``: validate -> pick the scheme and the backend -> run -> Solution."""

from __future__ import annotations

import math
import numbers
import os

import numpy as np

from . import checks
from .backends import PathPlan, Tolerances, Work, get_backend
from .brownian import BrownianPath
from .events import EventLog, check_events
from .problem import ODE, SDE
from .schemes import SCHEMES, _adaptive, get_scheme, implicit, stabilized
from .schemes._stability import stability_boundary
from .semilinear import ORDERS, SemilinearODE, step_grid, with_lower_order_final
from .solution import Solution

__all__ = ["solve"]


_FAILURE_TEXT = {
    _adaptive.MAX_STEPS: "max_steps reached",
    _adaptive.STEP_UNDERFLOW: "step size underflow",
    _adaptive.NONFINITE: "non-finite state",
    _adaptive.NEWTON: "Newton iteration did not converge; give the problem a correct `jac`, or take smaller steps",
    _adaptive.UNSTABLE: ("explicit scheme unstable at this step size (the state grew a thousandfold against a contracting "
                         "drift); use implicit_euler / skrock, or a smaller step"),
}


def solve(
    problem,
    x0,
    t_span,
    *,
    method: str,
    n_steps: int | None = None,
    dt: float | None = None,
    n_paths: int | None = None,
    seed: int | None = None,
    brownian: BrownianPath | None = None,
    save_at=None,
    backend: str = "numba",
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 100_000,
    device=None,
    dtype=None,
    compile: bool = False,  # noqa: A002 - torch's word for it
    t_grid=None,
    spectral_radius: float | None = None,
    detect_instability: bool = True,
    theta: float | None = None,
    lower_order_final: bool = False,
    events=None,
    dt0: float | None = None,
    dt_max: float | None = None,
) -> Solution:
    """Solve an SDE or ODE for many paths.

    Parameters
    ----------
    problem : SDE, ODE or SemilinearODE
    x0 : float, (dim,) or (n_paths, dim)
        Initial state, shared by all paths or one row per path.
    t_span : (t0, t1)
        ``t1 < t0`` integrates backwards in time (reverse-time SDEs run from
        ``T`` down to ``eps``); the Brownian increments then run along that
        direction.
    method : str
        A scheme from :func:`sdekit.list_schemes`: SDE ``"euler"``,
        ``"euler_heun"``, ``"milstein"``, ``"sra1"``, ``"sriw1"``; ODE ``"euler"``,
        ``"heun"``, ``"midpoint"``, ``"rk4"``, ``"dopri5"`` (adaptive);
        SemilinearODE also the exponential integrators ``"exp_euler"``,
        ``"exp_ab2"``, ``"exp_ab3"``, ``"exp_ab3_ramp"``.
    n_steps, dt : int, float
        Fixed-step methods take exactly one; ``dt`` must divide the span.
    n_paths : int, optional
        Number of paths; defaults to the rows of ``x0``, the paths of
        ``brownian``, or 1.
    seed : int, optional
        Seed of the Brownian path made for this solve (random if omitted;
        the path used is returned in ``Solution.brownian``).
    brownian : BrownianPath, optional
        Drive the solve with this path (instead of ``seed``): its ``t_span``
        must be the solve's span and ``n_steps`` a dyadic refinement of its base grid.
    save_at : sequence of float, optional
        Times to store. Fixed-step default: every step; adaptive default:
        ``t0`` and ``t1``. Only these states are kept in memory.
    backend : {"numba", "numpy", "torch"}
        ``"torch"`` runs on torch tensors (CPU or GPU) and is differentiable:
        ``Solution.x`` is then a tensor, with gradients to ``x0`` and to
        tensors in ``params``.
    rtol, atol : float, optional
        Tolerances of adaptive methods (defaults 1e-6 and 1e-9). On an SDE,
        giving either makes ``"euler"`` (Itô, Lamba's estimate),
        ``"euler_heun"`` (Stratonovich), ``"sra1"``/``"sra3"`` (additive noise)
        and ``"sriw1"`` (diagonal Itô noise) adapt their steps **per path** on
        the solve's Brownian path, with the embedded error estimates of
        :mod:`sdekit.schemes._embedded`; each path has its own steps, rejections
        and end (``Solution.steps_per_path``, ``rejected_per_path``). A
        rejected step is retried on the same path (refined by the Brownian
        bridge), so rejections do not bias the law. Save times are stepped to
        exactly; the default saves ``t0`` and ``t1``
        (:mod:`sdekit.schemes._paths`). On ``backend="torch"`` the paths
        step as one batch with masks and the functions receive ``t`` as an
        ``(n, 1)`` tensor, one time per path (write time dependence with
        torch operations or :mod:`sdekit.ops`); gradients flow to ``x0`` and
        ``params`` with the chosen steps held fixed
        (:mod:`sdekit.backends.torch_paths`).
    max_steps : int
        Step budget per path of adaptive methods (accepted and rejected).
    device, dtype : optional
        Torch backend only: where and in which precision to solve
        (``torch.float32`` or ``torch.float64``). Default: those of ``x0``
        if it is a tensor, else ``"cpu"`` and ``float64``.
    compile : bool
        Torch backend, fixed-step Runge–Kutta schemes: fuse each step with
        ``torch.compile``.
    t_grid : sequence of float, optional
        Exponential integrators: the step times (from ``t0`` to ``t1``),
        instead of ``n_steps``/``dt``.
    spectral_radius : float, optional
        Stabilized schemes ``"skrock"``/``"srock"`` only: a bound of the spectral radius of the drift's
        Jacobian along the paths; the number of stages per step follows from ``|h| * spectral_radius``
        (:mod:`sdekit.schemes.stabilized`). Default: estimated once by power iteration at ``t0`` and ``x0``;
        give a bound when the stiffness grows along the path.
    detect_instability : bool
        Explicit fixed-step schemes: stop a path whose state grew a
        thousandfold while the drift along its last step lies outside the
        scheme's stability interval (rule: ``sdekit.schemes._stability``,
        docs/stiff.md); it is reported as failed ("explicit scheme
        unstable"). False lets such paths run on (to study a divergence).
    theta : float, optional
        Drift-implicit schemes (``"implicit_euler"``, ``"implicit_euler_heun"``,
        ``"implicit_milstein"``) only: the weight in [0, 1] of the drift at the
        end of the step (default 1, drift-implicit Euler; 0.5 the trapezoidal
        rule; below 0.5 the drift is no longer A-stable). See
        :mod:`sdekit.schemes.implicit`.
    lower_order_final : bool
        Exponential integrators only: lower the final steps' orders as
        diffusers' schedulers do (``lower_order_final=True`` there; see
        :func:`sdekit.semilinear.lowered_final_orders`). Default False.
    events : list of sdekit.Event, optional
        Functions of the state whose zero crossings are detected per path
        (:mod:`sdekit.events`): terminal events stop their path
        (``Solution.event_t``, ``event_x``, ``event_id``); every firing is in
        ``Solution.events``. SDE crossings between steps are found through the
        Brownian bridge (no discrete-monitoring bias); ODE crossings by
        root-finding. Any fixed-step explicit scheme, the adaptive SDE schemes
        and ``dopri5``.
    dt0 : float, optional
        Adaptive SDE steps: the first step size (default: estimated from the
        sizes of the state, drift and diffusion).
    dt_max : float, optional
        Adaptive SDE steps: the largest step. An error estimate sees only the
        step it is made on: bound the step to resolve features of the
        coefficients shorter than the steps the tolerance would allow.

    Returns
    -------
    Solution
        ``x`` has shape ``(len(t), n_paths, dim)``. Paths whose state became
        non-finite (or unstable, see ``detect_instability``) are reported in
        ``failed`` / ``failure_time`` and hold NaN
        from then on; the other paths are unaffected.
    """

    events = check_events(events)
    scheme, problem = _scheme(problem, method, t_grid)
    if theta is not None:
        scheme = implicit.with_theta(scheme, theta)
    if lower_order_final is not False:
        scheme = with_lower_order_final(scheme, lower_order_final)
    if spectral_radius is not None and scheme.family is not stabilized.STABILIZED:
        raise ValueError(f"`spectral_radius` applies to the stabilized schemes 'skrock'/'srock'; drop it for {scheme.name}.")
    engine = get_backend(backend)
    options = engine.options(problem, x0, device=device, dtype=dtype, compile=compile)
    t0, t1 = checks.time_span(t_span)
    if n_paths is not None:
        n_paths = checks.positive_int(n_paths, "n_paths")
    if brownian is not None and not isinstance(brownian, BrownianPath):
        raise ValueError(f"`brownian` must be an sdekit.BrownianPath, got {type(brownian).__name__}.")
    if brownian is not None and n_paths is None:
        n_paths = brownian.n_paths
    inputs = engine.prepare(problem, x0, n_paths, options)
    adaptive_sde = problem.is_sde and (rtol is not None or atol is not None)
    n_steps, h, grid, tolerances = _steps(scheme, t0, t1, n_steps, dt, t_grid, rtol, atol, max_steps, options.compile,
                                          adaptive_sde)
    if dt0 is not None and not adaptive_sde:
        raise ValueError("`dt0` is the first step of an adaptive SDE solve (give `rtol`/`atol`); drop it here.")
    dt0 = None if dt0 is None else checks.positive_float(dt0, "dt0")
    if dt_max is not None and not adaptive_sde:
        raise ValueError("`dt_max` bounds the steps of an adaptive SDE solve (give `rtol`/`atol`); drop it here.")
    dt_max = None if dt_max is None else checks.positive_float(dt_max, "dt_max")
    noise = _noise(problem, scheme, seed, brownian, t0, t1, n_steps, inputs.n_paths, inputs.noise_dim)
    engine.probe(inputs, t0)
    save_at = None if save_at is None else checks.times(save_at, "save_at")
    adaptive = scheme.adaptive or adaptive_sde
    n_save = save_at.size if save_at is not None else (2 if adaptive else n_steps + 1)
    _check_memory(engine.name, scheme, inputs, n_save, n_steps, save_at is None, adaptive)
    if grid is None:
        save_t, save_idx = _save_points(save_at, t0, t1, h, n_steps)
    else:
        save_t, save_idx = _grid_save_points(save_at, grid)
    if scheme.family is stabilized.STABILIZED:
        plan = stabilized.solve_plan(scheme, problem, inputs, t0, h, spectral_radius)
    else:
        plan = None if adaptive or grid is not None else scheme.plan(problem, inputs.dim)
    path_plan = _path_plan(scheme, problem, inputs.dim, plan, adaptive_sde, events)
    if not isinstance(detect_instability, bool):
        raise ValueError(f"`detect_instability` must be True or False, got {detect_instability!r}.")
    beta = stability_boundary(plan) if plan is not None and detect_instability else 0.0
    work = Work(scheme, t0, t1, save_t, save_idx, plan=plan, n_steps=n_steps, h=h, grid=grid, brownian=noise,
                tolerances=tolerances, stability_boundary=beta, events=events, dt0=dt0, dt_max=dt_max,
                path_plan=path_plan)
    return _solution(engine.run(inputs, work), work, engine.name)


def _scheme(problem, method, t_grid):
    """``(scheme, problem)``: the scheme ``method`` names for ``problem``, and the problem it integrates (a
    SemilinearODE solved by a general ODE scheme becomes its :meth:`~SemilinearODE.as_ode`)."""
    if isinstance(problem, SemilinearODE):
        if method in ORDERS:
            return SCHEMES[("semilinear", method)], problem
        problem = problem.as_ode()
    if not isinstance(problem, SDE | ODE):
        raise ValueError(
            f"`problem` must be an sdekit.SDE, ODE or SemilinearODE, got {type(problem).__name__}."
        )
    if t_grid is not None:
        raise ValueError(
            f"`t_grid` applies to the exponential integrators of a SemilinearODE; {method!r} steps uniformly. "
            "For a non-uniform grid t = phi(u) solve sdekit.time_change(problem, phi, dphi) with uniform steps in u."
        )
    return get_scheme(method, problem), problem


def _tolerances(rtol, atol, max_steps):
    return Tolerances(1e-6 if rtol is None else checks.positive_float(rtol, "rtol"),
                      1e-9 if atol is None else checks.positive_float(atol, "atol"), checks.step_budget(max_steps))


def _steps(scheme, t0, t1, n_steps, dt, t_grid, rtol, atol, max_steps, compile_, adaptive_sde=False):
    """The steps of ``scheme``: ``(n_steps, h, grid, tolerances)``.

    Fixed-step Runge–Kutta schemes: ``n_steps`` and the signed step ``h``; exponential integrators: ``n_steps``
    and the step times ``grid`` (from ``n_steps``/``dt`` or ``t_grid``); adaptive schemes (and SDE schemes given
    ``rtol``/``atol``, ``adaptive_sde``): the :class:`~sdekit.backends.Tolerances` (``n_steps`` 0). The other
    entries are None.
    """
    if adaptive_sde:
        if getattr(scheme, "embedded", None) is None:
            ok = sorted(s.name for s in SCHEMES.values() if s.kind == "sde" and getattr(s, "embedded", None) is not None)
            raise ValueError(f"{scheme.name} has no error estimate to adapt its steps; drop `rtol`/`atol` (fixed steps: "
                             f"`n_steps`/`dt`) or use one of {ok}.")
        if n_steps is not None or dt is not None:
            raise ValueError(f"`rtol`/`atol` make {scheme.name} choose its own steps per path; drop `n_steps`/`dt` "
                             "(or drop `rtol`/`atol` for fixed steps).")
        if compile_:
            raise ValueError("`compile` applies to fixed-step methods; adaptive SDE steps are decided per path at run time.")
        return 0, None, None, _tolerances(rtol, atol, max_steps)
    if scheme.adaptive:
        if n_steps is not None or dt is not None:
            raise ValueError(f"{scheme.name} chooses its own steps; drop `n_steps`/`dt` and set `rtol`/`atol`.")
        tolerances = _tolerances(rtol, atol, max_steps)
        if compile_:
            raise ValueError("`compile` applies to fixed-step methods; dopri5 decides its steps at run time.")
        return 0, None, None, tolerances
    if rtol is not None or atol is not None:
        raise ValueError(f"`rtol`/`atol` apply to adaptive methods (ODE 'dopri5', 'rodas4', ...; SDE 'euler', "
                         f"'euler_heun', 'sra1', 'sriw1'); {scheme.name} uses fixed steps.")
    if scheme.kind != "semilinear":
        if (n_steps is None) == (dt is None):
            raise ValueError(f"{scheme.name} uses fixed steps: give exactly one of `n_steps` or `dt`.")
        n_steps = checks.step_count(n_steps, dt, abs(t1 - t0), "the solve")
        return n_steps, checks.step_size(t0, t1, n_steps), None, None
    if compile_:
        raise ValueError("`compile` applies to the Runge–Kutta schemes; the exponential integrators run eagerly.")
    if sum(v is not None for v in (n_steps, dt, t_grid)) > 1:
        raise ValueError("give one of `n_steps`, `dt` (uniform steps) or `t_grid` (the step times), not several.")
    if t_grid is None:
        if n_steps is None and dt is None:
            raise ValueError(f"{scheme.name} needs `n_steps` or `dt` (uniform steps), or `t_grid` (the step times).")
        n_steps = checks.step_count(n_steps, dt, abs(t1 - t0), scheme.name)
        checks.step_size(t0, t1, n_steps)
    else:
        t_grid = checks.times(t_grid, "t_grid")
    grid = step_grid(t0, t1, n_steps, t_grid)
    return grid.size - 1, None, grid, None


def _noise(problem, scheme, seed, brownian, t0, t1, n_steps, n_paths, noise_dim):
    """The Brownian path of an SDE: ``brownian`` checked against the solve, or a path made from ``seed`` (random
    if None). None for an ODE, which refuses both."""
    if not problem.is_sde:
        if brownian is not None or seed is not None:
            raise ValueError("an ODE draws no noise: drop `seed`/`brownian`.")
        return None
    lo, hi = min(t0, t1), max(t0, t1)
    if brownian is None:
        if seed is None:
            seed = int(np.random.SeedSequence().entropy)
        elif not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}.")
        return BrownianPath.for_steps(seed, (lo, hi), max(n_steps, 1), n_paths=n_paths, noise_dim=noise_dim,
                                      levy_area=scheme.levy_area)
    if seed is not None:
        raise ValueError("give either `seed` or `brownian`, not both (the path carries its own seed).")
    span = hi - lo
    if not (math.isclose(brownian.t_span[0], lo, abs_tol=1e-12 * span)
            and math.isclose(brownian.t_span[1], hi, abs_tol=1e-12 * span)):
        raise ValueError(
            f"`brownian` covers {brownian.t_span} but the solve spans ({lo}, {hi}); make the path on the solve's interval."
        )
    if brownian.n_paths != n_paths:
        raise ValueError(f"`brownian` has {brownian.n_paths} paths but n_paths={n_paths}.")
    if brownian.noise_dim != noise_dim:
        raise ValueError(
            f"`brownian` has noise_dim={brownian.noise_dim} but this problem needs {noise_dim} Brownian components."
        )
    if scheme.levy_area and not brownian.levy_area:
        raise ValueError(f"{scheme.name} needs the Lévy area: make the path with levy_area=True.")
    if n_steps:  # adaptive steps (0) read the path at any time
        brownian.level(n_steps)
    return brownian


def _path_plan(scheme, problem, dim, plan, adaptive_sde, events):
    """The :class:`~sdekit.backends.PathPlan` of a solve that runs path by path (adaptive SDE steps, or events), else
    None; schemes that cannot run so are refused in one line."""
    if not adaptive_sde and not events:
        return None
    if adaptive_sde or scheme.adaptive:
        if scheme.adaptive and getattr(scheme, "embedded", None) is None:
            raise ValueError(f"events are not supported with {scheme.name}; use 'dopri5' or a fixed-step method.")
        from .schemes._embedded import embedded_plan, estimate_order

        if adaptive_sde and scheme.name == "euler" and problem.noise != "additive":
            raise ValueError(
                "adaptive 'euler' (Euler–Maruyama) is refused on multiplicative Itô noise: steps chosen from the path "
                "bias the quadratic variation it relies on and it converges to a wrong solution (Gaines & Lyons 1997); "
                "use 'milstein' or 'sriw1' (Itô), 'euler_heun' (Stratonovich), or fixed steps.")

        step, tab, n_drift, n_diffusion = embedded_plan(scheme, problem, dim)
        return PathPlan(step, tab, n_drift, n_diffusion, 1.0 / estimate_order(step, problem, scheme), True)
    from .backends.numba_kernels import JACOBIAN_STEPS

    if plan is None or scheme.kind == "semilinear" or scheme.family is stabilized.STABILIZED or plan.step in JACOBIAN_STEPS:
        raise ValueError(f"events are not supported with {scheme.name}; use an explicit fixed-step scheme, an adaptive "
                         "SDE scheme or 'dopri5'.")
    from .backends.paths import attempt_of

    return PathPlan(attempt_of(plan.step, False), plan.tab, plan.n_drift, plan.n_diffusion, 1.0, False)


def _solution(result, work, backend):
    failed = ~np.isnan(result.failure_time)
    n_paths, n_failed = failed.size, int(failed.sum())
    codes, counts = np.unique(result.failure_codes[failed], return_counts=True)
    failure_reasons = {}
    for code, count in zip(codes, counts, strict=True):  # a fixed-step backend records non-finite states as code 0
        reason = _FAILURE_TEXT.get(int(code), "non-finite state")
        failure_reasons[reason] = failure_reasons.get(reason, 0) + int(count)
    if n_failed:
        first = result.failure_time[failed]
        when = first.min() if work.t1 > work.t0 else first.max()
        codes = {int(c) for c in result.failure_codes[failed] if c}
        why = ", ".join(_FAILURE_TEXT[c] for c in sorted(codes)) if codes else "non-finite state"
        status = "failure"
        message = (
            f"{n_failed} of {n_paths} paths failed ({why}; first at t={when:.6g}); see Solution.failed "
            "and Solution.failure_time. The other paths are complete."
        )
    else:
        status = "success"
        steps = result.stats.n_accepted // n_paths
        message = f"{n_paths} paths integrated with {work.scheme.name} ({steps} steps per path on average)."
    per_path = result.per_path if result.per_path is not None else _uniform_per_path(result, work)
    return Solution(
        t=work.save_t, x=result.x, stats=result.stats, status=status, message=message, brownian=work.brownian,
        failed=failed, failure_time=result.failure_time, method=work.scheme.name, backend=backend,
        failure_reasons=failure_reasons, steps_per_path=per_path["steps"], rejected_per_path=per_path["rejected"],
        drift_evals_per_path=per_path["drift_evals"], diffusion_evals_per_path=per_path["diffusion_evals"],
        event_t=per_path["event_t"], event_x=per_path["event_x"], event_id=per_path["event_id"],
        events=per_path["events"],
    )


def _uniform_per_path(result, work):
    """The per-path records of a run whose paths share their steps (fixed steps; the torch batch integrators), from
    the totals; no events."""
    stats = result.stats
    n = max(stats.n_paths, 1)
    dim = int(result.x.shape[2])

    def each(total):
        return np.full(stats.n_paths, total // n, dtype=np.int64)

    return {"steps": each(stats.n_accepted), "rejected": each(stats.n_rejected), "drift_evals": each(stats.n_drift_evals),
            "diffusion_evals": each(stats.n_diffusion_evals), "event_t": np.full(stats.n_paths, np.nan),
            "event_x": np.full((stats.n_paths, dim), np.nan), "event_id": np.full(stats.n_paths, -1, dtype=np.int64),
            "events": EventLog.empty(dim)}


def _memory_limit() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    except (ValueError, OSError, AttributeError):
        return 8 << 30



def memory_need(backend, *, adaptive, n_save, n_paths, dim, m, n_steps, itemsize=8, matrix_noise=False,
                default_save=True, n_threads=None, device=None, exponential=False):
    """Bytes a solve allocates at its peak, by backend: an upper estimate of every array it makes.

    Counted: the saved states, the saved times and grid indices with the temporaries that compute them, the
    per-path failure records, and the backend's own working set (its ``working_memory``: Numba's per-thread
    sub-batch, Brownian blocks and tree state; NumPy's increments of a batch of paths; torch's batch working set
    and its copies of the saved states).
    """
    f8 = 8
    out = n_save * n_paths * dim * itemsize
    save = (3 if default_save else 6) * n_save * f8  # times + indices + one temporary (save_at: a few more)
    paths = 3 * n_paths * f8  # failure times, codes, the expanded x0
    width = dim * max(m, 1) if matrix_noise else max(dim, m, 1)
    if exponential:  # the exponential integrators: the saved states' list and stack, the grid's arrays, the history of D
        return 2 * out + f8 * (4 * (n_steps + 1) + 3 * n_paths) + 16 * n_paths * dim * itemsize
    return out + save + paths + get_backend(backend).working_memory(
        adaptive=adaptive, n_save=n_save, n_paths=n_paths, dim=dim, m=m, n_steps=n_steps, itemsize=itemsize,
        width=width, device=device, n_threads=n_threads)


def _save_points(s, t0, t1, grid_h, n_steps):
    """Saved times and (for fixed steps) their grid indices; ``s`` is the checked ``save_at`` (or None)."""
    direction = 1.0 if t1 > t0 else -1.0
    if s is None:
        if grid_h is None:
            return np.array([t0, t1]), None
        idx = np.arange(n_steps + 1, dtype=np.int64)
        t = idx.astype(np.float64)  # t0 + (t1 - t0) * (idx / n), in place: one array besides idx
        t /= n_steps
        t *= t1 - t0
        t += t0
        return t, idx
    span = abs(t1 - t0)
    tol = 1e-10 * span
    lo, hi = min(t0, t1), max(t0, t1)
    if np.any(s < lo - tol) or np.any(s > hi + tol):
        raise ValueError(f"`save_at` times must lie in t_span ({t0}, {t1}).")
    if np.any(np.diff(s) * direction <= 0):
        order = "increasing" if direction > 0 else "decreasing (t_span runs backwards)"
        raise ValueError(f"`save_at` must be strictly {order}.")
    s = np.clip(s, lo, hi)
    if grid_h is None:
        return s, None
    k = np.rint((s - t0) / grid_h).astype(np.int64)
    off = np.abs(t0 + k * grid_h - s)
    if np.any(off > tol):
        bad = s[np.argmax(off)]
        raise ValueError(
            f"save_at time {bad} is not on the step grid (t0={t0}, dt={abs(grid_h)}); fixed-step methods "
            "save only at grid times. Choose n_steps so that every save_at time is a multiple of dt."
        )
    t = k.astype(np.float64)
    t /= n_steps
    t *= t1 - t0
    t += t0
    return t, k


def _grid_save_points(s, grid):
    """Saved times and their indices on the step times ``grid`` of an exponential integrator (``s``: the checked
    ``save_at``, or None for every step)."""
    if s is None:
        save_idx = np.arange(grid.size, dtype=np.int64)
    else:
        save_idx = np.array([int(np.argmin(np.abs(grid - v))) for v in s], dtype=np.int64)
        off = np.abs(grid[save_idx] - s)
        if np.any(off > 1e-10 * abs(grid[-1] - grid[0])) or np.any(np.diff(save_idx) <= 0):
            raise ValueError("`save_at` times must be distinct points of the step grid, in the order of integration.")
    return grid[save_idx], save_idx


def _check_memory(backend, scheme, inputs, n_save, n_steps, default_save, adaptive):
    """Refuse a solve whose arrays (every one it allocates, see :func:`memory_need`) exceed half the memory."""
    device, dtype, problem = inputs.options.device, inputs.options.dtype, inputs.problem
    need = memory_need(backend, adaptive=adaptive, n_save=n_save, n_paths=inputs.n_paths, dim=inputs.dim,
                       m=inputs.noise_dim, n_steps=n_steps, itemsize=8 if dtype is None else dtype.itemsize,
                       matrix_noise=bool(problem.is_sde and problem.matrix_noise), default_save=default_save,
                       device=device, exponential=scheme.kind == "semilinear")
    limit, where = _memory_limit(), "memory"
    if device is not None and device.type == "cuda":
        import torch

        limit, where = torch.cuda.mem_get_info(device)[0] // 2, f"free memory on {device}"
    if need > limit:
        raise ValueError(
            f"storing {n_save} time points for {inputs.n_paths} paths of dim {inputs.dim} (with the solve's work arrays) needs "
            f"{need / 2**30:.1f} GiB (more than half the {where}); pass save_at with fewer times (e.g. save_at=[t1])."
        )

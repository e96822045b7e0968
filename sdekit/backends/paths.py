"""Per-path runs of the numpy and numba backends: adaptive SDE steps and events.

Both run :func:`sdekit.schemes._paths.integrate_path` one path at a time (the
numba backend compiled, a few paths per thread; the numpy backend as Python),
so a path's steps, rejections and events never depend on the batch it came in
or the thread that ran it. :func:`solve` routes a solve here when an SDE
scheme adapts its steps (``rtol``/``atol`` given) or when events are given.
"""

from __future__ import annotations

import warnings

import numpy as np
from numba import types
from numba.core.errors import NumbaExperimentalFeatureWarning

from .. import _cursor, checks, ops
from .._rng import lane_keys
from ..schemes import _paths
from ..solution import Stats
from . import Inputs, Result, Work, no_failures

__all__ = ["attempt_of", "memory_per_thread", "run_numba", "run_numpy"]

# The kernels take the scheme's step and the user's functions as first-class functions; Numba flags the feature.
warnings.filterwarnings("ignore", category=NumbaExperimentalFeatureWarning, message="First-class function type")

# Event firings kept per path on a first run; a path that fires more is run again with room for all of them.
LOG_CAPACITY = 8
# Event function slots of the compiled per-path kernel: solves with up to this many events share one kernel.
EVENT_SLOTS = 4


def attempt_of(step, embedded: bool):
    """``step`` in the form the integrator calls, ``(f, g, p, tab, t, x, h, sqrt|h|, dw, levy_area) -> (x_new,
    err)``: an embedded step already is; a plain step returns ``x`` as its (unused) error."""
    if embedded:
        return step
    if step not in _PLAIN:
        def attempt(f, g, p, tab, t, x, h, sq, dw, levy_area):
            return step(f, g, p, tab, t, x, h, dw, levy_area), x

        attempt.__name__ = attempt.__qualname__ = f"attempt_{step.__name__}"
        _PLAIN[step] = ops.jittable(attempt)
    return _PLAIN[step]


_PLAIN: dict = {}


def positions(work: Work):
    """``(lo, hi, n_cells, cell_length, tau0, tau1)``: the span in the cell units of the solve's Brownian path (an
    ODE: one cell, the span)."""
    lo, hi = min(work.t0, work.t1), max(work.t0, work.t1)
    if work.brownian is not None:
        n_cells, cell_length = work.brownian.base_steps, work.brownian.cell_length
    else:
        n_cells, cell_length = 1, hi - lo
    tau0, tau1 = (0.0, float(n_cells)) if work.t1 > work.t0 else (float(n_cells), 0.0)
    return lo, hi, n_cells, cell_length, tau0, tau1


def save_positions(work: Work, lo, n_cells, cell_length, tau0, tau1, n_fixed):
    """The saved times as cell positions, computed as the integrator computes its step ends (so that equal times
    compare equal): grid indices for fixed steps, the span's ends exactly."""
    direction = 1.0 if tau1 > tau0 else -1.0
    if work.save_idx is not None:
        h_cells = abs(tau1 - tau0) / n_fixed
        return np.array([tau1 if k == n_fixed else tau0 + direction * k * h_cells for k in work.save_idx], dtype=np.float64)
    out = (np.asarray(work.save_t, dtype=np.float64) - lo) / cell_length
    out[work.save_t == work.t0] = tau0
    out[work.save_t == work.t1] = tau1
    return np.clip(out, 0.0, float(n_cells))


def _arrays(inputs: Inputs, work: Work, capacity: int):
    n, dim = inputs.n_paths, inputs.dim
    return {
        "out": np.full((work.save_t.size, n, dim), np.nan),
        "log_t": np.full((n, capacity), np.nan), "log_x": np.full((n, capacity, dim), np.nan),
        "log_id": np.full((n, capacity), -1, dtype=np.int64), "log_n": np.zeros(n, dtype=np.int64),
        "ev_t": np.full(n, np.nan), "ev_id": np.full(n, -1, dtype=np.int64), "ev_x": np.full((n, dim), np.nan),
        "steps": np.zeros(n, dtype=np.int64), "rejected": np.zeros(n, dtype=np.int64),
        "n_f": np.zeros(n, dtype=np.int64), "n_g": np.zeros(n, dtype=np.int64),
    }


def _result(inputs: Inputs, work: Work, a, failure_time, failure_codes) -> Result:
    """The backend's Result, with the per-path counts and the events."""
    n = inputs.n_paths
    stats = Stats(int(a["steps"].sum() + a["rejected"].sum()), int(a["steps"].sum()), int(a["rejected"].sum()),
                  int(a["n_f"].sum()), int(a["n_g"].sum()), n)
    counts = np.minimum(a["log_n"], a["log_t"].shape[1])
    rows = np.repeat(np.arange(n), counts)
    cols = np.concatenate([np.arange(c) for c in counts]) if n else np.zeros(0, dtype=np.int64)
    order = np.lexsort((a["log_t"][rows, cols] * (1.0 if work.t1 > work.t0 else -1.0), rows))  # by path, then time
    rows, cols = rows[order], cols[order]
    from ..events import EventLog

    log = EventLog(rows.astype(np.int64), a["log_id"][rows, cols], a["log_t"][rows, cols], a["log_x"][rows, cols])
    per_path = {"steps": a["steps"], "rejected": a["rejected"], "drift_evals": a["n_f"], "diffusion_evals": a["n_g"],
                "event_t": a["ev_t"], "event_x": a["ev_x"], "event_id": a["ev_id"], "events": log}
    return Result(a["out"], failure_time, failure_codes, stats, per_path)


def _run(inputs: Inputs, work: Work, run_paths) -> Result:
    """Run every path with ``run_paths(a, capacity)``; paths whose events overflow the log run again with room."""
    capacity = LOG_CAPACITY
    while True:
        a = _arrays(inputs, work, capacity)
        failure_time, failure_codes = no_failures(inputs.n_paths)
        run_paths(a, capacity, failure_time, failure_codes)
        most = int(a["log_n"].max()) if inputs.n_paths else 0
        if most <= capacity:
            return _result(inputs, work, a, failure_time, failure_codes)
        capacity = most  # a path is a pure function of its seed: the rerun fires the same events


def common_arguments(inputs: Inputs, work: Work):
    """The integrator's arguments shared by every path (see :func:`sdekit.schemes._paths.integrate_path`)."""
    lo, hi, n_cells, cell_length, tau0, tau1 = positions(work)
    plan = work.path_plan
    n_fixed = int(work.n_steps) if not plan.adaptive else 1
    save_tau = save_positions(work, lo, n_cells, cell_length, tau0, tau1, n_fixed)
    tol = work.tolerances
    rtol, atol, max_steps = (tol.rtol, tol.atol, tol.max_steps) if tol is not None else (0.0, 0.0, n_fixed + 1)
    dt0 = 0.0 if work.dt0 is None else float(work.dt0)
    dt_max = 0.0 if work.dt_max is None else float(work.dt_max)
    return dict(exponent=plan.exponent, adaptive=plan.adaptive, n_drift=plan.n_drift, n_diffusion=plan.n_diffusion,
                tau0=tau0, tau1=tau1, lo=lo, hi=hi, n_cells=n_cells, cell_length=cell_length, n_fixed=n_fixed, rtol=rtol,
                atol=atol, max_steps=max_steps, dt0=dt0, dt_max=dt_max, save_tau=save_tau)


def path_source(work: Work):
    """``(seed key, index of path 0, with Lévy area)`` of the solve's Brownian path (an ODE: placeholders)."""
    if work.brownian is None:
        return np.uint64(0), 0, False
    return work.brownian._seed_key, work.brownian.first_path, bool(work.brownian.levy_area)


def event_settings(work: Work):
    """``(direction int64 (k,), terminal bool (k,), bridge bool (k,))`` of the solve's events (one unused slot when
    there are none)."""
    k = max(len(work.events), 1)
    direction = np.zeros(k, dtype=np.int64)
    terminal = np.zeros(k, dtype=np.bool_)
    bridge = np.zeros(k, dtype=np.bool_)
    for i, ev in enumerate(work.events):
        direction[i], terminal[i], bridge[i] = ev.direction, ev.terminal, ev.bridge
    return direction, terminal, bridge


# --------------------------------------------------------------------------- numpy
def _event_function(ev, name):
    """An event function with its result checked on every call: one real value per path, as an (n,) array."""

    def wrapped(t, x, p):
        r = ev.g(t, x, p)
        n = x.shape[0]
        r = checks.check_result(r, name, x.shape, (n, 1)) if np.ndim(r) == 2 else checks.check_result(r, name, x.shape, (n,))
        return np.asarray(r, dtype=np.float64).reshape(n)

    return wrapped


def run_numpy(inputs: Inputs, work: Work) -> Result:
    from .numpy_backend import step_functions

    if batched(work):
        result = run_numpy_batched(inputs, work)
        if result is not None:
            return result
    problem, dim, m = inputs.problem, inputs.dim, inputs.noise_dim
    f, g = step_functions(problem, dim, m)
    args = common_arguments(inputs, work)
    direction, terminal, bridge = event_settings(work)
    events = tuple(_event_function(ev, f"events[{i}]") for i, ev in enumerate(work.events))
    plan = work.path_plan
    seed_key, first_path, levy_area = path_source(work)

    def run_paths(a, capacity, failure_time, failure_codes):
        x0 = inputs.x0
        for i in range(inputs.n_paths):
            keys = lane_keys(seed_key, first_path + i, 1, max(m, 1))
            cursor = _cursor.new_cursor(keys, args["n_cells"], args["cell_length"], levy_area)
            xi = np.array(x0[i : i + 1] if x0.shape[0] > 1 else x0[:1], dtype=np.float64)
            res = np.full((args["save_tau"].size, dim), np.nan)
            ev_x = np.full((1, dim), np.nan)
            code, t_end, acc, rej, nf, ng, n_log, ev_t, ev_id = _paths.integrate_path(
                plan.attempt, f, g, inputs.params, plan.tab, args["exponent"], args["adaptive"], args["n_drift"],
                args["n_diffusion"], xi, args["tau0"], args["tau1"], args["lo"], args["hi"], args["n_cells"],
                args["cell_length"], args["n_fixed"], args["rtol"], args["atol"], args["max_steps"], args["dt0"],
                args["dt_max"], args["save_tau"], res, cursor, m, keys[0], events, len(events), direction, terminal, bridge,
                a["log_t"][i],
                a["log_x"][i], a["log_id"][i], ev_x)
            _store(a, i, res, code, t_end, acc, rej, nf, ng, n_log, ev_t, ev_id, ev_x, failure_time, failure_codes)

    return _run(inputs, work, run_paths)


def _store(a, i, res, code, t_end, acc, rej, nf, ng, n_log, ev_t, ev_id, ev_x, failure_time, failure_codes):
    a["out"][:, i, :] = res
    a["steps"][i], a["rejected"][i], a["n_f"][i], a["n_g"][i], a["log_n"][i] = acc, rej, nf, ng, n_log
    a["ev_t"][i], a["ev_id"][i] = ev_t, ev_id
    a["ev_x"][i] = ev_x[0]
    if code != 0:
        failure_time[i], failure_codes[i] = t_end, code


# --------------------------------------------------------------------------- numba
_KERNELS: dict = {}


def attempt_signature(matrix: bool, rows: bool):
    """The compiled type of an attempt (see :func:`attempt_of`) whose functions take the time as a number, or as an
    (n, 1) column with ``rows`` (the batched integrator); ``matrix``: an (n, dim, m) diffusion."""
    from .numba_kernels import F64_2, F64_3, FLAT

    t = F64_2 if rows else types.float64
    fn_f = types.FunctionType(F64_2(t, F64_2, FLAT))
    fn_g = types.FunctionType((F64_3 if matrix else F64_2)(t, F64_2, FLAT))
    return types.Tuple((F64_2, F64_2))(fn_f, fn_g, FLAT, F64_2, t, F64_2, t, t, F64_2, F64_2)


_ATTEMPTS: dict = {}


def compiled_attempt(attempt, matrix: bool, rows: bool):
    """``attempt`` compiled for :func:`attempt_signature` (cached on disk): a first-class function the integrator
    kernels take as an argument, so that they are compiled once for every scheme."""
    from .numba_kernels import CachedKernel

    key = (attempt, matrix, rows)
    if key not in _ATTEMPTS:
        _ATTEMPTS[key] = CachedKernel(attempt, attempt_signature(matrix, rows))
    return _ATTEMPTS[key].compiled


def _kernel_signature(matrix: bool, n_slots: int):
    from .numba_kernels import F64_1, F64_2, F64_3, FLAT, FN2, FN3

    fne = types.FunctionType(F64_1(types.float64, F64_2, FLAT))
    i64, f64, b1 = types.int64, types.float64, types.boolean
    i64_1, i64_2 = types.int64[::1], types.int64[:, ::1]
    return types.void(
        types.FunctionType(attempt_signature(matrix, False)), FN2, FN3 if matrix else FN2, FLAT, F64_2, f64, b1, i64, i64,
        F64_2, f64, f64, f64, f64, i64, f64, i64, f64, f64,
        i64, f64, f64, F64_1, F64_3, types.uint64, i64, i64, b1, types.UniTuple(fne, n_slots), i64, i64_1,
        types.boolean[::1], types.boolean[::1], F64_2, F64_3, i64_2, i64_1, F64_1, i64_1, F64_2, i64_1, i64_1, i64_1,
        i64_1, F64_1, i64_1, i64, i64,
    )


def path_kernel(matrix: bool, n_slots: int):
    """The compiled kernel that integrates paths ``lo..hi-1`` one at a time with a compiled attempt
    (:func:`compiled_attempt`; ``matrix``: an (n, dim, m) diffusion; ``n_slots`` event functions), compiled on
    first use and cached on disk."""
    from .numba_kernels import CachedKernel

    key = ("path", matrix, n_slots)
    if key not in _KERNELS:
        def run_range(step, f, g, p, tab, exponent, adaptive, n_drift, n_diffusion, x0, tau0, tau1, lo, hi, n_cells,
                      cell_length, n_fixed, rtol, atol, max_steps, dt0, dt_max, save_tau, out, seed_key, first_path, m,
                      levy_area, events, n_events, ev_direction, ev_terminal, ev_bridge, log_t, log_x, log_id, log_n, ev_t, ev_id,
                      ev_x, steps, rejected, n_f, n_g, fail_t, codes, path_lo, path_hi):
            dim = x0.shape[1]
            for i in range(path_lo, path_hi):
                keys = lane_keys(seed_key, first_path + i, 1, max(m, 1))
                cursor = _cursor.new_cursor(keys, n_cells, cell_length, levy_area)
                xi = np.empty((1, dim))
                r = i if x0.shape[0] > 1 else 0
                for c in range(dim):
                    xi[0, c] = x0[r, c]
                res = np.full((save_tau.shape[0], dim), np.nan)
                exv = np.full((1, dim), np.nan)
                code, t_end, acc, rej, nf, ng, n_log, et, eid = _paths.integrate_path(
                    step, f, g, p, tab, exponent, adaptive, n_drift, n_diffusion, xi, tau0, tau1, lo, hi, n_cells,
                    cell_length, n_fixed, rtol, atol, max_steps, dt0, dt_max, save_tau, res, cursor, m, keys[0], events,
                    n_events, ev_direction, ev_terminal, ev_bridge, log_t[i], log_x[i], log_id[i], exv)
                for j in range(save_tau.shape[0]):
                    for c in range(dim):
                        out[j, i, c] = res[j, c]
                steps[i], rejected[i], n_f[i], n_g[i], log_n[i] = acc, rej, nf, ng, n_log
                ev_t[i], ev_id[i] = et, eid
                for c in range(dim):
                    ev_x[i, c] = exv[0, c]
                if code != 0:
                    fail_t[i], codes[i] = t_end, code

        run_range.__qualname__ = f"paths{'_matrix' if matrix else ''}_{n_slots}"
        _KERNELS[key] = CachedKernel(run_range, _kernel_signature(matrix, n_slots), nogil=True)
    return _KERNELS[key]


def _placeholders():
    """``(no_event, no_diffusion)``: compiled stand-ins for the event slot of a solve without events and the
    diffusion of an ODE (never called)."""
    from .numba_kernels import F64_1, F64_2, FLAT, cached_kernel

    if not _PLACEHOLDERS:
        @cached_kernel(F64_1(types.float64, F64_2, FLAT))
        def no_event(t, x, p):
            return np.zeros(x.shape[0])

        @cached_kernel(F64_2(types.float64, F64_2, FLAT))
        def no_diffusion(t, x, p):
            return np.zeros_like(x)

        _PLACEHOLDERS.extend([no_event, no_diffusion])
    return _PLACEHOLDERS[0].compiled, _PLACEHOLDERS[1].compiled


_PLACEHOLDERS: list = []


def run_numba(inputs: Inputs, work: Work) -> Result:
    import numba

    if batched(work):
        result = run_numba_batched(inputs, work)
        if result is not None:
            return result
    from .numba_adapters import ERR_SLOT, adapter, flatten_params, shape_error
    from .numba_backend import _ranges, _run_parallel

    problem, dim, m = inputs.problem, inputs.dim, inputs.noise_dim
    matrix = bool(problem.is_sde and problem.matrix_noise)
    flat, layout = flatten_params(inputs.params)
    n_params = flat.size
    names = ("drift", "diffusion") if m else ("rhs",)
    forms = ("2d", "3d" if matrix else "2d") if m else ("2d",)
    fns = [adapter(problem, name, form, dim, m, layout, slot) for slot, (name, form) in enumerate(zip(names, forms, strict=True))]
    no_event, no_diffusion = _placeholders()
    f, g = fns[0], (fns[1] if m else no_diffusion)
    slot0 = len(names)
    events = tuple(adapter(_EventHolder(ev.g), "g", "event", dim, m, layout, slot0 + i) for i, ev in enumerate(work.events))
    all_names = names + tuple(f"events[{i}]" for i in range(len(events)))
    all_forms = forms + ("event",) * len(events)
    n_slots = max(len(events), EVENT_SLOTS)  # up to EVENT_SLOTS events share one compiled kernel
    events_arg = events + (no_event,) * (n_slots - len(events))
    flat = np.concatenate([flat, np.zeros(ERR_SLOT * len(all_names))])
    args = common_arguments(inputs, work)
    direction, terminal, bridge = event_settings(work)
    plan = work.path_plan
    kernel = path_kernel(matrix, n_slots)
    step = compiled_attempt(plan.attempt, matrix, False)
    seed_key, first_path, levy_area = path_source(work)
    x0 = np.ascontiguousarray(inputs.x0, dtype=np.float64)
    tab = np.ascontiguousarray(plan.tab, dtype=np.float64)

    def run_paths(a, capacity, failure_time, failure_codes):
        def integrate(lo, hi):
            thread_flat = flat.copy()
            kernel(step, f, g, thread_flat, tab, args["exponent"], args["adaptive"], args["n_drift"], args["n_diffusion"], x0,
                   args["tau0"], args["tau1"], args["lo"], args["hi"], args["n_cells"], args["cell_length"],
                   args["n_fixed"], args["rtol"], args["atol"], args["max_steps"], args["dt0"], args["dt_max"],
                   args["save_tau"], a["out"], np.uint64(seed_key), first_path, m, levy_area, events_arg, len(events), direction, terminal,
                   bridge, a["log_t"], a["log_x"], a["log_id"], a["log_n"], a["ev_t"], a["ev_id"], a["ev_x"], a["steps"],
                   a["rejected"], a["n_f"], a["n_g"], failure_time, failure_codes, lo, hi)
            err = shape_error(thread_flat, n_params, all_names, dim, m, all_forms)
            if err is not None:
                raise err

        _run_parallel(integrate, _ranges(inputs.n_paths, 16, numba.get_num_threads()))

    return _run(inputs, work, run_paths)


# --------------------------------------------------------------------------- batches (adaptive SDE, no events)
BATCH = 256  # paths per batch of the batched integrator: each round calls the scheme once on those still running


def _kernel_batch_signature(matrix: bool):
    from .numba_kernels import F64_1, F64_2, F64_3, FLAT

    fn2 = types.FunctionType(F64_2(F64_2, F64_2, FLAT))
    fn3 = types.FunctionType(F64_3(F64_2, F64_2, FLAT))
    i64, f64, b1, i64_1 = types.int64, types.float64, types.boolean, types.int64[::1]
    return types.void(
        types.FunctionType(attempt_signature(matrix, True)), fn2, fn3 if matrix else fn2, FLAT, F64_2, f64, i64, i64,
        F64_2, f64, f64, f64, f64, i64, f64, f64, f64, i64, f64, f64,
        F64_1, F64_3, types.uint64, i64, i64, b1, i64, i64_1, i64_1, i64_1, i64_1, F64_1, i64_1, i64, i64,
    )


def batch_kernel(matrix: bool):
    """The compiled kernel of the batched integrator (:func:`sdekit.schemes._paths.integrate_batch`) for paths
    ``lo..hi-1``, in batches of ``batch`` paths, with a compiled attempt (:func:`compiled_attempt`); compiled on
    first use and cached on disk."""
    from .numba_kernels import CachedKernel

    key = ("batch", matrix)
    if key not in _KERNELS:
        def run_batches(step, f, g, p, tab, exponent, n_drift, n_diffusion, x0, tau0, tau1, lo, hi, n_cells, cell_length,
                        rtol, atol, max_steps, dt0, dt_max, save_tau, out, seed_key, first_path, m, levy_area, batch, steps,
                        rejected, n_f, n_g, fail_t, codes, path_lo, path_hi):
            dim = x0.shape[1]
            for b0 in range(path_lo, path_hi, batch):
                b1 = min(path_hi, b0 + batch)
                xb = np.empty((b1 - b0, dim))
                for a in range(b1 - b0):
                    r = b0 + a if x0.shape[0] > 1 else 0
                    for c in range(dim):
                        xb[a, c] = x0[r, c]
                cursors = [_cursor.new_cursor(lane_keys(seed_key, first_path + b0 + a, 1, max(m, 1)), n_cells,
                                              cell_length, levy_area) for a in range(b1 - b0)]
                _paths.integrate_batch(step, f, g, p, tab, exponent, n_drift, n_diffusion, xb, tau0, tau1, lo, hi,
                                       n_cells, cell_length, rtol, atol, max_steps, dt0, dt_max, save_tau,
                                       out[:, b0:b1, :],
                                       cursors, m, steps[b0:b1], rejected[b0:b1], n_f[b0:b1], n_g[b0:b1],
                                       fail_t[b0:b1], codes[b0:b1])

        run_batches.__qualname__ = f"batches{'_matrix' if matrix else ''}"
        _KERNELS[key] = CachedKernel(run_batches, _kernel_batch_signature(matrix), nogil=True)
    return _KERNELS[key]


def rows_agree(f_rows, f_scalar, t_col, x) -> bool:
    """Whether ``f_rows(t_col, x)`` (one time per row) equals ``f_scalar(t_i, x_i)`` row by row: a function that
    reads its time argument only elementwise can run a batch of paths at different times."""
    try:
        batch = np.asarray(f_rows(t_col, x), dtype=np.float64)
    except Exception:  # noqa: BLE001 - any failure means: call it one path at a time
        return False
    for i in range(x.shape[0]):
        single = np.asarray(f_scalar(float(t_col[i, 0]), x[i : i + 1]), dtype=np.float64)
        if batch.shape[1:] != single.shape[1:] or not np.allclose(batch[i], single[0], rtol=1e-12, atol=1e-300):
            return False
    return True


def _probe_rows(inputs: Inputs, work: Work):
    """``(t_col, x)``: three rows at three different times of the span, to check :func:`rows_agree`."""
    x = np.repeat(np.asarray(inputs.x0[:1], dtype=np.float64), 3, axis=0)
    x = x + np.array([[0.0], [1e-3], [-2e-3]]) * (1.0 + np.abs(x))
    t_col = (work.t0 + (work.t1 - work.t0) * np.array([0.0, 0.37, 0.81]))[:, None]
    return t_col, x


def batched(work: Work) -> bool:
    """Whether a per-path run can use the batched integrator: adaptive SDE steps without events."""
    return work.path_plan.adaptive and not work.events and work.brownian is not None


def run_numba_batched(inputs: Inputs, work: Work):
    """The batched numba run, or None when the problem's functions need a scalar time (then one path at a time)."""
    import numba

    from .numba_adapters import ERR_SLOT, adapter, flatten_params, shape_error
    from .numba_backend import _ranges, _run_parallel

    problem, dim, m = inputs.problem, inputs.dim, inputs.noise_dim
    matrix = bool(problem.matrix_noise)
    flat, layout = flatten_params(inputs.params)
    n_params = flat.size
    names, forms = ("drift", "diffusion"), ("2d_t", "3d_t" if matrix else "2d_t")
    try:
        f, g = (adapter(problem, name, form, dim, m, layout, slot) for slot, (name, form) in enumerate(zip(names, forms,
                                                                                                            strict=True)))
    except ValueError:
        return None  # does not compile with one time per row
    scalar = [adapter(problem, name, form.removesuffix("_t"), dim, m, layout, slot)
              for slot, (name, form) in enumerate(zip(names, forms, strict=True))]
    flat = np.concatenate([flat, np.zeros(ERR_SLOT * len(names))])
    t_col, x_probe = _probe_rows(inputs, work)
    for rows_fn, one in zip((f, g), scalar, strict=True):
        if not rows_agree(lambda t, x, fn=rows_fn: fn(t, x, flat.copy()), lambda t, x, fn=one: fn(t, x, flat.copy()),
                          t_col, x_probe):
            return None
    args = common_arguments(inputs, work)
    plan = work.path_plan
    kernel = batch_kernel(matrix)
    step = compiled_attempt(plan.attempt, matrix, True)
    x0 = np.ascontiguousarray(inputs.x0, dtype=np.float64)
    tab = np.ascontiguousarray(plan.tab, dtype=np.float64)
    a = _arrays(inputs, work, 1)
    failure_time, failure_codes = no_failures(inputs.n_paths)

    def integrate(lo, hi):
        thread_flat = flat.copy()
        kernel(step, f, g, thread_flat, tab, args["exponent"], args["n_drift"], args["n_diffusion"], x0, args["tau0"],
               args["tau1"], args["lo"], args["hi"], args["n_cells"], args["cell_length"], args["rtol"], args["atol"],
               args["max_steps"], args["dt0"], args["dt_max"], args["save_tau"], a["out"],
               np.uint64(work.brownian._seed_key),
               work.brownian.first_path, m, bool(work.brownian.levy_area), BATCH, a["steps"], a["rejected"], a["n_f"],
               a["n_g"], failure_time, failure_codes, lo, hi)
        err = shape_error(thread_flat, n_params, names, dim, m, forms)
        if err is not None:
            raise err

    _run_parallel(integrate, _ranges(inputs.n_paths, BATCH, numba.get_num_threads()))
    return _result(inputs, work, a, failure_time, failure_codes)


def run_numpy_batched(inputs: Inputs, work: Work):
    """The batched integrator on NumPy arrays, or None when the functions need a scalar time."""
    from .numpy_backend import step_functions

    problem, dim, m = inputs.problem, inputs.dim, inputs.noise_dim
    f, g = step_functions(problem, dim, m)
    t_col, x_probe = _probe_rows(inputs, work)
    for fn in (f, g):
        if not rows_agree(lambda t, x, fn=fn: fn(t, x, inputs.params), lambda t, x, fn=fn: fn(t, x, inputs.params),
                          t_col, x_probe):
            return None
    args = common_arguments(inputs, work)
    plan = work.path_plan
    a = _arrays(inputs, work, 1)
    failure_time, failure_codes = no_failures(inputs.n_paths)
    brownian = work.brownian
    for b0 in range(0, inputs.n_paths, BATCH):
        b1 = min(inputs.n_paths, b0 + BATCH)
        x0 = np.array(np.broadcast_to(inputs.x0[b0:b1] if inputs.x0.shape[0] > 1 else inputs.x0, (b1 - b0, dim)))
        cursors = [_cursor.new_cursor(lane_keys(brownian._seed_key, brownian.first_path + i, 1, m), args["n_cells"],
                                      args["cell_length"], brownian.levy_area) for i in range(b0, b1)]
        _paths.integrate_batch(plan.attempt, f, g, inputs.params, plan.tab, args["exponent"], args["n_drift"],
                               args["n_diffusion"], x0, args["tau0"], args["tau1"], args["lo"], args["hi"],
                               args["n_cells"], args["cell_length"], args["rtol"], args["atol"], args["max_steps"],
                               args["dt0"], args["dt_max"], args["save_tau"], a["out"][:, b0:b1], cursors, m, a["steps"][b0:b1],
                               a["rejected"][b0:b1], a["n_f"][b0:b1], a["n_g"][b0:b1], failure_time[b0:b1],
                               failure_codes[b0:b1])
    return _result(inputs, work, a, failure_time, failure_codes)


class _EventHolder:
    """An event function as the attribute ``g`` the adapter factory reads (adapters are cached per function)."""

    def __init__(self, g):
        self.g = g


def memory_per_thread(n_save: int, dim: int, m: int, capacity: int = LOG_CAPACITY) -> int:
    """Bytes one thread holds for one path: its saved states, the cursor's branch and the step's temporaries."""
    return 8 * (n_save * dim + 4 * (_cursor.DEPTH + 2) * max(m, 1) + 24 * dim + capacity * (dim + 2))


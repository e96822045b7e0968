"""Per-path SDE steps on the torch backend: adaptive steps and events, batched with masks, on any device.

The algorithm is :func:`sdekit.schemes._paths.integrate_batch` (the numpy and
numba backends' batched integrator) written with tensor operations: every path
has its own cell position ``tau``, step ``h`` and save index, held as tensors;
each round selects the running paths (``index_select``), proposes their step
ends (snapped to the dyadic grid in float64 as :func:`~sdekit.schemes._paths.snapped_end`,
truncated to the next save time or the end), reads their Brownian increments
and Lévy areas between the current and the proposed position (on the CPU with
the compiled cursor of :mod:`sdekit._cursor`, elsewhere with
:func:`sdekit._torch_bridge.interval_torch` on the device: the same tree,
equal to round-off), calls the scheme's embedded step once on all of
them with ``t``, ``h`` and ``sqrt|h|`` as ``(n, 1)`` columns, and accepts or
rejects each path with the same controller (constants, error norm, failure
codes). With the same seed a path takes the same steps as on the numba backend
(up to round-off in the step-size factor, which the dyadic snapping absorbs
almost always) and reaches the same state to round-off.

With adaptive steps the user functions (drift, diffusion, events) therefore
receive ``t`` as an ``(n, 1)`` tensor, one time per path; a function that fails with it, or gives other values than with a scalar
``t``, is refused at the start with one line saying so.

Gradients flow: the accepted states are written with out-of-place
``index_copy``, so ``Solution.x`` is differentiable with respect to ``x0`` and
tensors in ``params`` (discretise-then-optimise; the step sizes, chosen from
the detached error estimates, are constants of the graph).

SDE events (the explicit fixed-step schemes and the adaptive ones) are
:func:`~sdekit.schemes._paths.integrate_path`'s, batched: after each accepted
step every event function is evaluated on the paths that moved, the noise
scale ``|grad G . sigma|`` by one-sided differences where a crossing is
possible, the Brownian-bridge crossing probability and the inverse-Gaussian
crossing time from the same counter-based keys (path, accepted step, event),
so a path fires the same events at the same times as on the numpy and numba
backends. Fixed steps with events pass ``t`` and ``h`` as numbers (every
running path is at the same step). ODE events (root finding) run on the numpy
and numba backends only. ``Solution.event_x`` and ``Solution.events`` are
NumPy arrays; the saved states after a terminal event are the (differentiable)
state at the event.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit

from .. import _cursor
from .._rng import lane_keys
from .._torch_bridge import _signed, _uniform_open, interval_torch, mix64, normals
from ..events import EventLog
from ..schemes._adaptive import MAX_STEPS, NONFINITE, STEP_UNDERFLOW
from ..schemes._paths import C_EVENT, NEGLIGIBLE, PROJECTION_ITERATIONS, QMAX, QMIN, SAFETY, SNAP
from ..schemes._steps import apply_noise
from ..solution import Stats
from . import Inputs, Result, Work, no_failures
from .paths import common_arguments
from .torch_backend import _batches, step_functions

__all__ = ["run"]

# devices whose Brownian values come from the compiled cursor (CPU tensors share memory with NumPy); elsewhere
# interval_torch computes them on the device
COMPILED_TREE_DEVICES = ("cpu",)

_TIME_HINT = ("adaptive torch solves pass t as an (n, 1) tensor, one time per path; write the time dependence with "
              "torch operations or sdekit.ops")


def run(inputs: Inputs, work: Work) -> Result:
    """Per-path steps on the batch of ``inputs``: adaptive SDE steps, or any SDE steps with events
    (``work.path_plan``)."""
    problem, dim, m = inputs.problem, inputs.dim, inputs.noise_dim
    if not problem.is_sde:
        raise ValueError("ODE events run on the numpy and numba backends; pass backend='numba' (or 'numpy') for an ODE "
                         "solve with events.")
    f, g = step_functions(problem, dim, m)
    if work.path_plan.adaptive:
        functions = [(f, "drift"), (g, "diffusion")]
        functions += [(_event_function(ev, f"events[{i}]"), f"events[{i}]") for i, ev in enumerate(work.events)]
        check_row_times(functions, inputs.params, inputs.x0, work.t0, work.t1)
    args = common_arguments(inputs, work)
    brownian = work.brownian
    n = inputs.n_paths
    counts = {name: np.zeros(n, dtype=np.int64) for name in ("steps", "rejected", "drift_evals", "diffusion_evals")}
    failure_time, failure_codes = no_failures(n)
    event_t, event_id, event_x = np.full(n, np.nan), np.full(n, -1, dtype=np.int64), np.full((n, dim), np.nan)
    log = []
    outs = []
    for lo, hi, x0 in _batches(inputs):
        out, batch_counts, fail_t, codes, record = integrate(work.path_plan, f, g, inputs.params, x0, brownian,
                                                             range(lo, hi), args, work.events)
        outs.append(out)
        for name, v in batch_counts.items():
            counts[name][lo:hi] = v
        failure_time[lo:hi], failure_codes[lo:hi] = fail_t, codes
        if record is not None:
            event_t[lo:hi], event_id[lo:hi] = record.event_t.cpu().numpy(), record.event_id.cpu().numpy()
            event_x[lo:hi] = record.event_x.detach().cpu().double().numpy()
            log += [(rows.cpu().numpy() + lo, e, t.cpu().numpy(), x.detach().cpu().double().numpy())
                    for rows, e, t, x in record.log]
    accepted, rejected = int(counts["steps"].sum()), int(counts["rejected"].sum())
    stats = Stats(accepted + rejected, accepted, rejected, int(counts["drift_evals"].sum()),
                  int(counts["diffusion_evals"].sum()), n)
    per_path = dict(counts, event_t=event_t, event_x=event_x, event_id=event_id,
                    events=_event_log(log, dim, 1.0 if work.t1 > work.t0 else -1.0))
    x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
    return Result(x, failure_time, failure_codes, stats, per_path)


def _event_log(log, dim, direction):
    """The :class:`~sdekit.events.EventLog` of the firings ``(paths, event, times, states)``, by path, then time."""
    if not log:
        return EventLog.empty(dim)
    paths = np.concatenate([r for r, _, _, _ in log]).astype(np.int64)
    events = np.concatenate([np.full(r.size, e, dtype=np.int64) for r, e, _, _ in log])
    times = np.concatenate([t for _, _, t, _ in log])
    states = np.concatenate([x for _, _, _, x in log])
    order = np.lexsort((direction * times, paths))
    return EventLog(paths[order], events[order], times[order], states[order])


def check_row_times(functions, p, x0, t0, t1):
    """Call each of the ``(function, name)`` (drift, diffusion, events) on three rows at three different times
    (``t`` a (3, 1) tensor) and compare each row with the call at its scalar time; one ValueError line when a
    function fails or disagrees."""
    x = x0[:1].detach().expand(3, x0.shape[1])
    x = x + torch.tensor([[0.0], [1e-3], [-2e-3]], dtype=x.dtype, device=x.device) * (1.0 + x.abs())
    times = [t0 + (t1 - t0) * s for s in (0.0, 0.37, 0.81)]
    t_col = torch.tensor(times, dtype=x.dtype, device=x.device)[:, None]
    tol = 1e-9 if x.dtype == torch.float64 else 1e-4
    for fn, name in functions:
        with torch.no_grad():
            try:
                rows = fn(t_col, x, p)
            except Exception as exc:  # noqa: BLE001 - re-raised with the fix
                first = str(exc).splitlines()[0] if str(exc) else ""
                raise ValueError(f"`{name}(t, x, params)` raised {type(exc).__name__} ({first}) with t a (3, 1) tensor: "
                                 f"{_TIME_HINT}.") from exc
            scale = float(rows.abs().max()) if rows.numel() else 0.0
            for i, ti in enumerate(times):
                single = fn(ti, x[i : i + 1], p)
                if not torch.allclose(rows[i], single[0], rtol=tol, atol=tol * scale, equal_nan=True):
                    raise ValueError(f"`{name}(t, x, params)` gives other values with t a (3, 1) tensor than with one "
                                     f"time per call: {_TIME_HINT}, elementwise in t.")


def brownian_values(brownian, keys, rows, tau_a, tau_b, args):
    """``(dW, H)`` float64 ``(len(rows), m)`` of the paths ``rows`` of the batch between cell positions ``tau_a`` and
    ``tau_b``: by the compiled cursor when ``keys`` holds the paths' indices in ``brownian`` (CPU), else by
    :func:`~sdekit._torch_bridge.interval_torch` on the device (``keys``: the batch's (n, m) lane keys); H is 0
    without Lévy area."""
    m, n_cells, cell_length, levy_area = brownian.noise_dim, args["n_cells"], args["cell_length"], bool(brownian.levy_area)
    if keys.ndim == 1:
        k = rows.numel()
        dw, area = np.zeros((k, m)), np.zeros((k, m))
        row_intervals(np.uint64(brownian._seed_key), keys[rows].numpy(), m, n_cells, cell_length, levy_area,
                      tau_a.numpy(), tau_b.numpy(), dw, area)
        return torch.from_numpy(dw), torch.from_numpy(area)
    dw, area = interval_torch(keys[rows].reshape(-1), m, n_cells, cell_length, levy_area, tau_a, tau_b)
    return dw, torch.zeros_like(dw) if area is None else area


@njit(cache=True, nogil=True)
def row_intervals(seed_key, paths, noise_dim, n_cells, cell_length, levy_area, tau_a, tau_b, dw_out, area_out):
    """``W(tau_b) - W(tau_a)`` and H of the paths ``paths`` (indices in the seed's stream), one cursor each
    (:func:`sdekit._cursor.intervals` for any set of paths)."""
    for i in range(paths.shape[0]):
        cur = _cursor.new_cursor(lane_keys(seed_key, paths[i], 1, noise_dim), n_cells, cell_length, levy_area)
        _cursor.cursor_start(cur, tau_a[i])
        _cursor.cursor_query(cur, tau_b[i], dw_out[i], area_out[i])


def time_at(tau, lo, hi, n_cells, cell_length):
    """The times of cell positions ``tau`` (float64 tensor), the span's ends exactly (as ``_paths.time_at``)."""
    return torch.where(tau == 0.0, lo, torch.where(tau == n_cells, hi, lo + tau * cell_length))


def snapped_ends(tau, direction, step_cells):
    """:func:`sdekit.schemes._paths.snapped_end` of each path: the spacing ``2**-k`` with the smallest ``k >= 0``
    such that ``2**-k <= step_cells / SNAP`` is ``k = 1 - e`` for ``step_cells / SNAP = mantissa * 2**e``,
    ``mantissa`` in [0.5, 1) (exact: no logarithm), at most ``k = 48``."""
    _, e = torch.frexp(step_cells / SNAP)
    k = (1 - e).clamp(0, 48)
    spacing = torch.ldexp(torch.ones_like(step_cells), -k)
    return torch.floor((tau + direction * step_cells) / spacing + 0.5) * spacing


def initial_steps(f, g, p, t, x, atol, rtol, span, m):
    """:func:`sdekit.schemes._paths.initial_steps` on tensors: the first step of every row (float64 (n,))."""
    n, dim = x.shape
    xd = x.detach().double()
    sc = atol + rtol * xd.abs()
    with torch.no_grad():
        fx = f(t, x, p).double()
        d2 = torch.zeros(n, dtype=torch.float64, device=x.device)
        if m > 0:
            gx = g(t, x, p)
            for j in range(m):
                e = torch.zeros((n, m), dtype=x.dtype, device=x.device)
                e[:, j] = 1.0
                col = apply_noise(gx, e).double() / sc
                d2 = d2 + (col * col / dim).sum(dim=1)
    d0 = torch.sqrt(((xd / sc) ** 2 / dim).sum(dim=1)).clamp_min(1.0)
    d1 = torch.sqrt(((fx / sc) ** 2 / dim).sum(dim=1))
    dn = torch.sqrt(d2)
    out = torch.full((n,), span, dtype=torch.float64, device=x.device)
    out = torch.where(d1 > 1e-12, torch.minimum(out, 0.01 * d0 / d1), out)
    return torch.where(dn > 1e-12, torch.minimum(out, (0.1 * d0 / dn) ** 2), out)


def integrate(plan, f, g, p, x0, brownian, paths, args, events):
    """One batch of paths (``x0`` (n, dim); ``paths``: their indices in ``brownian``, a range), as
    :func:`sdekit.schemes._paths.integrate_batch` (adaptive) or equal steps (``plan.adaptive`` False), with the SDE
    ``events`` of :func:`sdekit.schemes._paths.integrate_path`. Returns ``(saved states (n_save, n, dim), per-path
    counts, failure times, failure codes, event record)``."""
    device, dtype = x0.device, x0.dtype
    f64 = dict(dtype=torch.float64, device=device)
    n, dim = x0.shape
    m = brownian.noise_dim
    first_path = brownian.first_path + paths.start
    lanes = torch.as_tensor(lane_keys(brownian._seed_key, first_path, n, m).view(np.int64), device=device).reshape(n, m)
    # the compiled cursor (CPU) takes the paths' indices and derives their keys; interval_torch takes the keys
    keys = torch.arange(first_path, first_path + n) if device.type in COMPILED_TREE_DEVICES else lanes
    tau0, tau1, lo, hi = args["tau0"], args["tau1"], args["lo"], args["hi"]
    n_cells, cell_length = args["n_cells"], args["cell_length"]
    rtol, atol, max_steps, exponent = args["rtol"], args["atol"], args["max_steps"], args["exponent"]
    adaptive, n_fixed = plan.adaptive, args["n_fixed"]
    direction = 1.0 if tau1 > tau0 else -1.0
    save_tau = torch.as_tensor(args["save_tau"], **f64)
    n_save = int(save_tau.numel())
    save_ext = torch.cat([save_tau, torch.tensor([tau1], **f64)])  # index n_save: no save left, step to the end
    pieces = [[] for _ in range(n_save)]  # per save time: (rows, states) of the paths that reached it
    first = 0
    while first < n_save and float(save_tau[first]) == tau0:
        pieces[first].append((torch.arange(n, device=device), x0))
        first += 1
    x = x0
    tau = torch.full((n,), tau0, **f64)
    si = torch.full((n,), first, dtype=torch.int64, device=device)
    zeros = dict(dtype=torch.int64, device=device)
    steps, rejected, n_f, n_g = (torch.zeros(n, **zeros) for _ in range(4))
    codes = torch.zeros(n, **zeros)
    fail_t = torch.full((n,), math.nan, **f64)
    t_start = time_at(torch.tensor(tau0, **f64), lo, hi, n_cells, cell_length)
    if not adaptive:
        h_cells = torch.full((n,), abs(tau1 - tau0) / n_fixed, **f64)
    elif args["dt0"] > 0.0:
        h_cells = torch.full((n,), args["dt0"] / cell_length, **f64)
    else:
        t_col = torch.full((n, 1), float(t_start), dtype=dtype, device=device)
        h_cells = initial_steps(f, g, p, t_col, x, atol, rtol, abs(tau1 - tau0) * cell_length, m) / cell_length
        n_f += 1
        n_g += 1 if m > 0 else 0
    record = EventRecord(events, lanes[:, 0], m, x0, float(t_start), p, scalar_time=not adaptive) if events else None
    nonfinite = torch.zeros(n, dtype=torch.bool, device=device)
    running = torch.ones(n, dtype=torch.bool, device=device)
    while True:
        rows = running.nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        if args["dt_max"] > 0.0:
            h_cells = h_cells.clamp_max(args["dt_max"] / cell_length)
        tau_r, proposal = tau[rows], h_cells[rows]
        if adaptive:
            tau_stop = save_ext[si[rows]]
            tau_stop = torch.where(direction * (tau_stop - tau1) < 0.0, tau_stop, tau1)
            end = snapped_ends(tau_r, direction, proposal)
            cut = (direction * (end - tau_stop) >= 0.0) | ((tau_stop - end).abs() < 0.1 * proposal)
            end = torch.where(cut, tau_stop, end)
            budget = steps[rows] + rejected[rows] >= max_steps
            stop = budget | (end == tau_r) | (direction * (end - tau_r) < 0.0)
            if bool(stop.any()):
                gone = rows[stop]
                running[gone] = False
                codes[gone] = torch.where(budget[stop], MAX_STEPS, torch.where(nonfinite[gone], NONFINITE, STEP_UNDERFLOW))
                fail_t[gone] = time_at(tau_r[stop], lo, hi, n_cells, cell_length)
                keep = ~stop
                rows, tau_r, proposal, end, cut = rows[keep], tau_r[keep], proposal[keep], end[keep], cut[keep]
                if rows.numel() == 0:
                    continue
        else:  # the grid positions of integrate_path's equal steps
            following = steps[rows] + 1
            end = torch.where(following == n_fixed, tau1, tau0 + direction * following.to(torch.float64) * proposal)
        h = (end - tau_r) * cell_length
        t_r = time_at(tau_r, lo, hi, n_cells, cell_length)
        if adaptive:  # one time and step per path
            t_col, h_col, sq_col = t_r[:, None].to(dtype), h[:, None].to(dtype), torch.sqrt(h.abs())[:, None].to(dtype)
        else:  # every running path is at the same step: the fixed steps take a number
            t_col, h_col = float(t_r[0]), float(h[0])
            sq_col = math.sqrt(abs(h_col))
        dw, area = brownian_values(brownian, keys, rows, tau_r, end, args)
        dw, area = dw.to(dtype), area.to(dtype)
        xa = x[rows]
        x_new, err_v = plan.attempt(f, g, p, plan.tab, t_col, xa, h_col, sq_col, dw, area)
        n_f[rows] += plan.n_drift
        n_g[rows] += plan.n_diffusion
        xn = x_new.detach().double()
        if adaptive:  # the controller, in float64 on the detached values
            scaled = err_v.detach().double() / (atol + rtol * torch.maximum(xa.detach().double().abs(), xn.abs()))
            err = torch.sqrt((scaled * scaled).sum(dim=1) / dim)
            finite = torch.isfinite(xn).all(dim=1) & torch.isfinite(err)
            step_cells = (end - tau_r).abs()
            shrink = torch.pow(err, -exponent) * SAFETY
            smaller = torch.minimum(step_cells, proposal)
            h_rejected = torch.where(finite, smaller * shrink.clamp_min(QMIN), 0.2 * smaller)
            grown = step_cells * torch.where(err == 0.0, QMAX, shrink.clamp(QMIN, QMAX))
            h_accepted = torch.where(cut, torch.maximum(grown, proposal), grown)
            ok = finite & (err <= 1.0)
            nonfinite[rows] = ~finite
            h_cells[rows] = torch.where(ok, h_accepted, h_rejected)
            rejected[rows] += (~ok).to(torch.int64)
        else:
            ok = torch.isfinite(xn).all(dim=1)
            if not bool(ok.all()):
                gone = rows[~ok]
                running[gone] = False
                codes[gone] = NONFINITE
                fail_t[gone] = time_at(end[~ok], lo, hi, n_cells, cell_length)
        done = rows[ok]
        if done.numel() == 0:
            continue
        x_done, end_done = x_new[ok], end[ok]
        if record is not None:
            stopped, stop_states = record.step(g, p, n_g, done, steps[done], t_r[ok], xa[ok], h[ok], end_done, x_done,
                                               lo, hi, n_cells, cell_length)
        steps[done] += 1
        if record is not None and bool(stopped.any()):
            # a terminal event: the path stops, its remaining saves hold the state at the event
            gone, states = done[stopped], stop_states[stopped]
            running[gone] = False
            _hold(pieces, si, gone, states, n_save)
            keep = ~stopped
            done, x_done, end_done = done[keep], x_done[keep], end_done[keep]
        tau[done] = end_done
        x = x.index_copy(0, done, x_done)
        _save(pieces, save_ext, si, done, x_done, end_done, n_save)
        running[done[direction * (tau1 - end_done) <= 0.0]] = False
    nan = torch.full((n, dim), math.nan, dtype=dtype, device=device)
    saved = []
    for k in range(n_save):
        if pieces[k]:
            idx = torch.cat([r for r, _ in pieces[k]])
            saved.append(nan.index_copy(0, idx, torch.cat([v for _, v in pieces[k]])))
        else:
            saved.append(nan)
    out = torch.stack(saved) if saved else x0.new_zeros((0, n, dim))
    counts = {"steps": steps, "rejected": rejected, "drift_evals": n_f, "diffusion_evals": n_g}
    return (out, {k: v.cpu().numpy() for k, v in counts.items()}, fail_t.cpu().numpy(), codes.cpu().numpy(),
            record)


def _save(pieces, save_ext, si, rows, states, ends, n_save):
    """Record ``states`` of ``rows`` (just moved to cell positions ``ends``) at every save time they reached."""
    while True:
        index = si[rows]
        hit = (index < n_save) & (save_ext[index] == ends)
        if not bool(hit.any()):
            return
        for k in torch.unique(index[hit]).tolist():
            sel = hit & (index == k)
            pieces[k].append((rows[sel], states[sel]))
        si[rows[hit]] += 1


def _hold(pieces, si, rows, states, n_save):
    """Paths ``rows`` stopped at an event: every save time they have not reached holds ``states``."""
    index = si[rows]
    for k in range(int(index.min()), n_save):
        sel = index <= k
        pieces[k].append((rows[sel], states[sel]))
    si[rows] = n_save


# --------------------------------------------------------------------------- SDE events
_C_EVENT = _signed(C_EVENT)


def _event_function(ev, name):
    """An event function with its result checked: one value per path, returned as an (n,) tensor."""

    def checked(t, x, p):
        r = ev.g(t, x, p)
        n = x.shape[0]
        if not isinstance(r, torch.Tensor) or tuple(r.shape) not in ((n,), (n, 1)):
            shape = tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__
            raise ValueError(f"`{name}` returned {shape} for x of shape {tuple(x.shape)}; it must return a tensor "
                             "with one value per path, shape (n,) or (n, 1).")
        return r.reshape(n)

    return checked


def counter_uniforms(keys):
    """:func:`sdekit.schemes._paths.counter_uniform` of int64 keys."""
    return _uniform_open(mix64(keys))


def inverse_gaussians(mean, shape, keys):
    """:func:`sdekit.schemes._paths.inverse_gaussian` of each entry (float64 tensors, int64 keys)."""
    z = normals(mix64(keys ^ 1))
    y = z * z
    levy = shape / y.clamp_min(1e-300)
    my = mean * y
    root = torch.sqrt(4.0 * mean * shape * y + my * my)
    x = (mean * (1.0 - 2.0 * my / (root + my))).clamp_min(1e-300)
    x = torch.where(counter_uniforms(keys ^ 2) <= mean / (mean + x), x, mean * mean / x)
    return torch.where(mean < 1e300, x, levy)


def crossing_thetas(g0, g1, scale, h_abs, direction, keys):
    """:func:`sdekit.schemes._paths.crossing_theta` of each row (float64 tensors; -1 where no crossing)."""
    no_noise = (g0 == 0.0) | ~(scale > 0.0)
    rising, falling = g0 < 0.0, g0 > 0.0
    wanted = rising if direction > 0 else falling | (g0 == 0.0) if direction < 0 else torch.ones_like(rising)
    line = torch.where(g1 == 0.0, 1.0, g0 / torch.where(g0 == g1, 1.0, g0 - g1))
    theta_line = torch.where((g0 != 0.0) & (g0 * g1 <= 0.0) & wanted, line, -1.0)
    side = torch.where(g0 > 0.0, 1.0, -1.0)
    blocked = (side > 0.0) if direction > 0 else (side < 0.0) if direction < 0 else torch.zeros_like(rising)
    d0 = g0.abs() / scale
    d1 = side * g1 / scale
    exponent = 2.0 * d0 * d1 / h_abs
    missed = (d1 > 0.0) & ((exponent > NEGLIGIBLE) | (counter_uniforms(keys) >= torch.exp(-exponent)))
    mean = torch.where(d1 != 0.0, d0 / d1.abs(), math.inf)
    u = inverse_gaussians(mean, d0 * d0 / h_abs, keys ^ 7)
    theta_bridge = torch.where(blocked | missed, -1.0, u / (1.0 + u))
    return torch.where(no_noise, theta_line, theta_bridge)


class EventRecord:
    """The SDE events of a batch (:func:`sdekit.schemes._paths.integrate_path`'s event loop, batched): each path's
    last event values and noise scales, which events fired, the terminal event and every firing."""

    def __init__(self, events, path_keys, m, x0, t0, p, scalar_time):
        n, dim = x0.shape
        self.m, self.scalar_time = m, scalar_time
        device = x0.device
        self.functions = [_event_function(ev, f"events[{i}]") for i, ev in enumerate(events)]
        self.settings = [(int(ev.direction), bool(ev.terminal), bool(ev.bridge)) for ev in events]
        self.path_keys = path_keys
        t_col = t0 if scalar_time else torch.full((n, 1), t0, dtype=x0.dtype, device=device)
        with torch.no_grad():
            self.g_old = torch.stack([fn(t_col, x0, p).double() for fn in self.functions], dim=1)
        self.scale_prev = torch.full_like(self.g_old, math.inf)
        self.fired = torch.zeros_like(self.g_old, dtype=torch.bool)
        self.event_t = torch.full((n,), math.nan, dtype=torch.float64, device=device)
        self.event_id = torch.full((n,), -1, dtype=torch.int64, device=device)
        self.event_x = x0.new_full((n, dim), math.nan)
        self.log = []  # (paths, event, times, states) of each firing

    def step(self, g, p, n_g, rows, accepted, t, x, h, end, x_new, lo, hi, n_cells, cell_length):
        """The events of the accepted steps of paths ``rows`` (``accepted`` steps before, from ``t``, ``x`` over
        ``h`` to cell position ``end`` and ``x_new``). Returns ``(stopped, states)``: the paths a terminal event
        stops, and the states at their events."""
        k, dim = x.shape
        n_events = len(self.functions)
        dtype = x.dtype
        t_new = time_at(end, lo, hi, n_cells, cell_length)
        if self.scalar_time:  # fixed steps: the same times on every path
            t_col, t_new_col = float(t[0]), float(t_new[0])
        else:
            t_col, t_new_col = t[:, None].to(dtype), t_new[:, None].to(dtype)
        thetas = torch.full((k, n_events), -1.0, dtype=torch.float64, device=x.device)
        states = []
        for e, (fn, (direction, _, bridge)) in enumerate(zip(self.functions, self.settings, strict=True)):
            state = x.new_full((k, dim), math.nan)
            active = ~self.fired[rows, e]
            g0 = self.g_old[rows, e]
            with torch.no_grad():
                g1 = fn(t_new_col, x_new, p).double()
            far = (2.0 * g0 * g1 > NEGLIGIBLE * (9.0 * self.scale_prev[rows, e] ** 2 * h.abs())) if bridge else True
            check = (active & ~((g0 * g1 > 0.0) & far)).nonzero().squeeze(1)
            if check.numel():
                xs = x[check]
                t_check = t_col if self.scalar_time else t_col[check]
                with torch.no_grad():
                    gx = g(t_check, xs, p)
                n_g[rows[check]] += 1
                scale, slopes, cols = _event_scale(fn, p, t_check, xs.detach(), gx.detach(), g0[check], self.m)
                self.scale_prev[rows[check], e] = scale
                keys = event_keys(self.path_keys[rows[check]], accepted[check], e)
                theta = crossing_thetas(g0[check], g1[check], scale, h[check].abs(), direction, keys)
                thetas[check, e] = theta
                lin = xs + theta[:, None].to(dtype) * (x_new[check] - xs)
                g_lin = g0[check] + theta * (g1[check] - g0[check])
                v = sum(slopes[:, j, None] * cols[j] for j in range(len(cols)))
                acc = (slopes * slopes).sum(dim=1)
                shift = torch.where(acc > 0.0, g_lin / torch.where(acc > 0.0, acc, 1.0), 0.0)[:, None] * v
                moved = lin - shift.to(dtype)
                fired = (theta >= 0.0).nonzero().squeeze(1)
                if fired.numel():
                    t_event = t[check][fired] + theta[fired] * h[check][fired]
                    moved = moved.index_copy(0, fired, _onto_level(fn, p, t_event, moved[fired], v[fired].to(dtype),
                                                                   self.scalar_time))
                state = state.index_copy(0, check, moved)
            states.append(state)
            self.g_old[rows[active], e] = g1[active]
        states = torch.stack(states, dim=1)
        terminal = torch.tensor([s[1] for s in self.settings], device=x.device)
        first, first_event = torch.where((thetas >= 0.0) & terminal, thetas, 2.0).min(dim=1)
        fire = (thetas >= 0.0) & (thetas <= first[:, None])
        self.fired[rows] |= fire
        for e in range(n_events):
            hit = fire[:, e]
            if bool(hit.any()):
                self.log.append((rows[hit], e, t[hit] + thetas[hit, e] * h[hit], states[hit, e]))
        stopped = first < 2.0
        stop_states = states[torch.arange(k, device=x.device), first_event]
        if bool(stopped.any()):
            gone = rows[stopped]
            self.event_t[gone] = t[stopped] + first[stopped] * h[stopped]
            self.event_id[gone] = first_event[stopped]
            self.event_x = self.event_x.index_copy(0, gone, stop_states[stopped])
        return stopped, stop_states


def _onto_level(fn, p, t_event, x, v, scalar_time):
    """:func:`sdekit.schemes._paths.onto_level` on rows: ``x`` (k, dim) moved along ``v`` onto the event's level by
    Newton's method at the rows' event times ``t_event`` (k,) (row by row with number times when the functions take
    a scalar time)."""
    if scalar_time:
        moved = torch.cat([_newton_rows(fn, p, float(t_event[i]), x[i : i + 1], v[i : i + 1]) for i in range(x.shape[0])])
    else:
        moved = _newton_rows(fn, p, t_event[:, None].to(x.dtype), x, v)
    return x + (moved - x).detach()  # the Newton correction is a constant of the graph


def _newton_rows(fn, p, t, x, v):
    vn = torch.sqrt((v.double() ** 2).sum(dim=1))
    xk = x
    with torch.no_grad():
        gk = fn(t, xk, p).double()
        for _ in range(PROJECTION_ITERATIONS):
            xn = torch.sqrt((xk.double() ** 2).sum(dim=1)).clamp_min(1.0)
            eps = 1e-7 * xn / torch.where(vn > 0.0, vn, 1.0)
            slope = (fn(t, xk + (eps[:, None] * v.double()).to(x.dtype), p).double() - gk) / eps
            ok = (vn > 0.0) & (gk != 0.0) & torch.isfinite(gk) & (slope != 0.0) & torch.isfinite(slope)
            step = torch.where(ok, gk / torch.where(ok, slope, 1.0), 0.0)
            if not bool(ok.any()):
                break
            xk = xk - (step[:, None] * v.double()).to(x.dtype)
            gk = fn(t, xk, p).double()
    return xk


def _event_scale(fn, p, t_col, x, gx, g0, m):
    """``|grad G . sigma|`` of an event at ``(t, x)`` per row by one-sided differences along each noise direction
    (:func:`sdekit.schemes._paths.event_scale`): ``(scale, slopes (k, m), noise directions [(k, dim)] in float64)``."""
    k = x.shape[0]
    xd = x.double()
    xn = torch.sqrt((xd * xd).sum(dim=1)).clamp_min(1.0)
    slopes = torch.zeros((k, m), dtype=torch.float64, device=x.device)
    cols = []
    for j in range(m):
        unit = torch.zeros((k, m), dtype=x.dtype, device=x.device)
        unit[:, j] = 1.0
        col = apply_noise(gx, unit).double()
        cols.append(col)
        cn = torch.sqrt((col * col).sum(dim=1))
        eps = 1e-7 * xn / torch.where(cn > 0.0, cn, 1.0)
        with torch.no_grad():
            moved = fn(t_col, (xd + eps[:, None] * col).to(x.dtype), p).double()
        slopes[:, j] = torch.where(cn > 0.0, (moved - g0) / eps, 0.0)
    return torch.sqrt((slopes * slopes).sum(dim=1)), slopes, cols


def event_keys(path_keys, accepted, event):
    """:func:`sdekit.schemes._paths.event_key` of each row (int64 tensors)."""
    return mix64(path_keys ^ mix64(accepted * 1024 + event) ^ _C_EVENT)

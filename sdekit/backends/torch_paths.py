"""Per-path adaptive SDE steps on the torch backend: the batched integrator with masks, on any device.

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

User functions therefore receive ``t`` as an ``(n, 1)`` tensor, one time per
path; a function that fails with it, or gives other values than with a scalar
``t``, is refused at the start with one line saying so.

Gradients flow: the accepted states are written with out-of-place
``index_copy``, so ``Solution.x`` is differentiable with respect to ``x0`` and
tensors in ``params`` (discretise-then-optimise; the step sizes, chosen from
the detached error estimates, are constants of the graph).

Events are not run here (:mod:`sdekit.backends.paths` runs them on the numpy
and numba backends).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit

from .. import _cursor
from .._rng import lane_keys
from .._torch_bridge import interval_torch
from ..events import EventLog
from ..schemes._adaptive import MAX_STEPS, NONFINITE, STEP_UNDERFLOW
from ..schemes._paths import QMAX, QMIN, SAFETY, SNAP
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
    """Adaptive SDE steps per path on the batch of ``inputs`` (``work.path_plan`` adaptive, no events)."""
    if work.events:
        raise ValueError("events run on the numpy and numba backends; pass backend='numba' (or 'numpy') for a solve "
                         "with events.")
    problem, dim, m = inputs.problem, inputs.dim, inputs.noise_dim
    f, g = step_functions(problem, dim, m)
    check_row_times(f, g, inputs.params, inputs.x0, work.t0, work.t1)
    args = common_arguments(inputs, work)
    brownian = work.brownian
    n = inputs.n_paths
    counts = {name: np.zeros(n, dtype=np.int64) for name in ("steps", "rejected", "drift_evals", "diffusion_evals")}
    failure_time, failure_codes = no_failures(n)
    outs = []
    for lo, hi, x0 in _batches(inputs):
        out, batch_counts, fail_t, codes = integrate(work.path_plan, f, g, inputs.params, x0, brownian, range(lo, hi),
                                                     args)
        outs.append(out)
        for name, v in batch_counts.items():
            counts[name][lo:hi] = v
        failure_time[lo:hi], failure_codes[lo:hi] = fail_t, codes
    accepted, rejected = int(counts["steps"].sum()), int(counts["rejected"].sum())
    stats = Stats(accepted + rejected, accepted, rejected, int(counts["drift_evals"].sum()),
                  int(counts["diffusion_evals"].sum()), n)
    per_path = dict(counts, event_t=np.full(n, np.nan), event_x=np.full((n, dim), np.nan),
                    event_id=np.full(n, -1, dtype=np.int64), events=EventLog.empty(dim))
    x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
    return Result(x, failure_time, failure_codes, stats, per_path)


def check_row_times(f, g, p, x0, t0, t1):
    """Call the drift and the diffusion on three rows at three different times (``t`` a (3, 1) tensor) and compare
    each row with the call at its scalar time; one ValueError line when a function fails or disagrees."""
    x = x0[:1].detach().expand(3, x0.shape[1])
    x = x + torch.tensor([[0.0], [1e-3], [-2e-3]], dtype=x.dtype, device=x.device) * (1.0 + x.abs())
    times = [t0 + (t1 - t0) * s for s in (0.0, 0.37, 0.81)]
    t_col = torch.tensor(times, dtype=x.dtype, device=x.device)[:, None]
    tol = 1e-9 if x.dtype == torch.float64 else 1e-4
    for fn, name in ((f, "drift"), (g, "diffusion")):
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


def integrate(plan, f, g, p, x0, brownian, paths, args):
    """One batch of paths (``x0`` (n, dim); ``paths``: their indices in ``brownian``, a range): ``(saved states
    (n_save, n, dim), per-path counts, failure times, failure codes)``, as
    :func:`sdekit.schemes._paths.integrate_batch`."""
    device, dtype = x0.device, x0.dtype
    f64 = dict(dtype=torch.float64, device=device)
    n, dim = x0.shape
    m = brownian.noise_dim
    first_path = brownian.first_path + paths.start
    if device.type in COMPILED_TREE_DEVICES:  # the paths' indices: the compiled cursor derives their keys
        keys = torch.arange(first_path, first_path + n)
    else:
        keys = torch.as_tensor(lane_keys(brownian._seed_key, first_path, n, m).view(np.int64), device=device).reshape(n, m)
    tau0, tau1, lo, hi = args["tau0"], args["tau1"], args["lo"], args["hi"]
    n_cells, cell_length = args["n_cells"], args["cell_length"]
    rtol, atol, max_steps, exponent = args["rtol"], args["atol"], args["max_steps"], args["exponent"]
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
    if args["dt0"] > 0.0:
        h_cells = torch.full((n,), args["dt0"] / cell_length, **f64)
    else:
        t_start = torch.full((n, 1), float(time_at(torch.tensor(tau0), lo, hi, n_cells, cell_length)), dtype=dtype,
                             device=device)
        h_cells = initial_steps(f, g, p, t_start, x, atol, rtol, abs(tau1 - tau0) * cell_length, m) / cell_length
        n_f += 1
        n_g += 1 if m > 0 else 0
    nonfinite = torch.zeros(n, dtype=torch.bool, device=device)
    running = torch.ones(n, dtype=torch.bool, device=device)
    while True:
        rows = running.nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        tau_r, proposal = tau[rows], h_cells[rows]
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
        h = (end - tau_r) * cell_length
        t_col = time_at(tau_r, lo, hi, n_cells, cell_length)[:, None].to(dtype)
        h_col = h[:, None].to(dtype)
        sq_col = torch.sqrt(h.abs())[:, None].to(dtype)
        dw, area = brownian_values(brownian, keys, rows, tau_r, end, args)
        dw, area = dw.to(dtype), area.to(dtype)
        xa = x[rows]
        x_new, err_v = plan.attempt(f, g, p, plan.tab, t_col, xa, h_col, sq_col, dw, area)
        n_f[rows] += plan.n_drift
        n_g[rows] += plan.n_diffusion
        # the controller, in float64 on the detached values
        xd, xn = xa.detach().double(), x_new.detach().double()
        scaled = err_v.detach().double() / (atol + rtol * torch.maximum(xd.abs(), xn.abs()))
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
        done = rows[ok]
        if done.numel() == 0:
            continue
        x_done, end_done = x_new[ok], end[ok]
        steps[done] += 1
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
    return out, {k: v.cpu().numpy() for k, v in counts.items()}, fail_t.cpu().numpy(), codes.cpu().numpy()


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

"""The torch backend: the step functions on batched tensors, on CPU or GPU, differentiable.

Every step of every scheme is the function of ``schemes._steps`` that the
other backends run, applied to a ``(n, dim)`` tensor that holds a whole batch
of paths: one Python-level step per time step, each a handful of tensor
kernels over all paths. Nothing loops over paths in Python.

* **Noise.** Increments come in blocks from :mod:`sdekit._torch_bridge`: on
  CPU the compiled tree of the numba backend fills them (the same numbers,
  bit for bit), on other devices the same counter-based tree runs as tensor
  kernels on the device. Either way a seed gives the same path on every
  backend, up to round-off.
* **Gradients.** The solve is ordinary torch code, so autograd differentiates
  it with respect to ``x0`` and to tensors in ``params`` (discretise-then-
  optimise: memory grows with the number of steps).
* **Non-finite states.** A state that is not finite stays so (every scheme
  adds to the current state), so the backend checks once per block of steps;
  when a path has failed inside a block the block is replayed without
  gradients to find the step. Saved states of a failed path are NaN from its
  failure on.
* **dopri5** steps the whole batch with one step size, controlled by the
  worst path (the error norm is the maximum over paths of the per-path RMS
  norm of the other backends). With one path it takes exactly the steps of
  the numpy and numba backends; with many, each path meets the tolerance
  but the steps, and so the round-off, depend on the batch.
"""

from __future__ import annotations

import importlib
import math
import numbers
import types
import weakref

import numpy as np
import torch

from .. import _torch_bridge
from ..schemes import _adaptive

_DEVICE_HINT = "Move it to the solve's device (tensor.to(device), module.to(device)) or pass device=... to solve."


def _tensor_result(r, name, x, target):
    """Check one result of a user function against the state ``x``; numbers become tensors."""
    if isinstance(r, numbers.Real) and not isinstance(r, bool):
        return torch.full((1,) * len(target), float(r), dtype=x.dtype, device=x.device)
    if isinstance(r, np.ndarray):
        raise ValueError(
            f"`{name}` returned a NumPy array on the torch backend; return a torch tensor "
            "(write the function with torch operations or sdekit.ops)."
        )
    if not isinstance(r, torch.Tensor):
        raise ValueError(f"`{name}` returned {type(r).__name__}; it must return a torch tensor or a number.")
    if r.is_complex():
        raise ValueError(
            f"`{name}` returned a {r.dtype} tensor; sdekit integrates real states (split real and imaginary parts "
            "into two components)."
        )
    if r.device != x.device:
        raise ValueError(f"`{name}` returned a tensor on {r.device}, but the state is on {x.device}. {_DEVICE_HINT}")
    if r.dtype != x.dtype:
        raise ValueError(
            f"`{name}` returned {r.dtype} for a state of {x.dtype}; compute in the state's dtype "
            f"(e.g. tensor.to(x.dtype)), or pass dtype={r.dtype} to solve."
        )
    return r


def wrap(fn, name, target_fn):
    """``fn`` with its result checked on every call (type, dtype, device, shape) and broadcast to ``target_fn(n)``."""
    def wrapped(t, x, p):
        r = fn(t, x, p)
        target = target_fn(x.shape[0])
        if not isinstance(r, torch.Tensor) or r.shape != target or r.dtype != x.dtype:
            r = _tensor_result(r, name, x, target)
            if r.shape != target:
                if not _broadcasts(tuple(r.shape), target):
                    raise ValueError(
                        f"`{name}` returned shape {tuple(r.shape)} for x of shape {tuple(x.shape)}; it must broadcast "
                        f"to {target} (one row per path, trailing axes aligned)."
                    )
                r = r.expand(target)
        return r

    return wrapped


def _broadcasts(shape, target) -> bool:
    return len(shape) <= len(target) and all(s in (1, t) for s, t in zip(shape[::-1], target[::-1], strict=False))


def _zero_diffusion(t, x, p):
    return torch.zeros_like(x)


# --------------------------------------------------------------------------- validation
def _check_tensor(v, what, device, dtype):
    if v.device != device:
        raise ValueError(f"{what} is on {v.device} but the solve runs on {device}. {_DEVICE_HINT}")
    if v.is_floating_point() and v.dtype != dtype:
        raise ValueError(
            f"{what} has dtype {v.dtype} but the solve runs in {dtype}; convert it (tensor.to({dtype})) "
            f"or pass dtype={v.dtype} to solve."
        )


def params_on(params, device, dtype):
    """The problem's params on the solve's device: arrays become tensors, tensors are checked."""
    out = []
    for i, v in enumerate(params):
        if isinstance(v, np.ndarray):
            out.append(torch.as_tensor(v, dtype=dtype, device=device))
        elif isinstance(v, torch.Tensor):
            if v.is_complex():
                raise ValueError(f"`params[{i}]` must be real, got a {v.dtype} tensor.")
            _check_tensor(v, f"`params[{i}]`", device, dtype)
            out.append(v)
        else:
            out.append(v)
    return tuple(out)


def _probe(fn, name, t, x, params, target, extra=""):
    try:
        with torch.no_grad():
            r = fn(t, x, params)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        msg = str(exc)
        hint = f" {_DEVICE_HINT}" if "device" in msg else ""
        raise ValueError(
            f"`{name}(t, x, params)` raised {type(exc).__name__}: {msg} when called with t={t} and x a tensor of "
            f"shape {tuple(x.shape)}, {x.dtype}, on {x.device} (a batch of states; index components as x[:, i])."
            f"{hint}"
        ) from exc
    r = _tensor_result(r, name, x, target)
    if not _broadcasts(tuple(r.shape), target):
        raise ValueError(
            f"`{name}` returned shape {tuple(r.shape)} for x of shape {tuple(x.shape)}; "
            f"it must broadcast to {target}{extra} (one row per path, trailing axes aligned)."
        )
    return r.expand(target)


def check_problem(problem, x0, params, t0, dim, m):
    """The entry probe of :func:`sdekit.solve` on a small batch of the solve's device and dtype."""
    mod = importlib.import_module("..solve", __package__)  # the probes shared with the numpy entry
    x0n = x0[: mod.probe_rows(dim, m)].detach().cpu().double().numpy()  # only the probe's rows leave the device

    def evaluate(fn, name, x, target, extra):
        tx = torch.as_tensor(x, dtype=x0.dtype, device=x0.device)
        return _probe(fn, name, t0, tx, params, target, extra).detach().cpu().double().numpy()

    # float32 (and TF32 convolutions on GPU) round differently by batch
    mod.check_functions(problem, x0n, dim, m, evaluate, rtol=1e-7 if x0.dtype == torch.float64 else 1e-2)


def paths_per_batch(n_paths: int, width: int, device) -> int:
    """Paths per batch for states of ``width`` numbers: the whole solve unless its working set would be large."""
    budget = (1 << 27) if device is not None and device.type == "cuda" else (1 << 23)
    return int(max(1, min(n_paths, budget // (16 * width))))


def batch_size(plan) -> int:
    """Paths per batch of ``plan`` (see :func:`paths_per_batch`)."""
    width = max(plan.dim, plan.m, 1) * (max(plan.m, 1) if plan.problem.is_sde and plan.problem.matrix_noise else 1)
    return paths_per_batch(plan.n_paths, width, plan.device)


# --------------------------------------------------------------------------- fixed steps
def _functions(plan):
    dim, m, pr = plan.dim, plan.m, plan.problem
    if not pr.is_sde:
        return wrap(pr.rhs, "rhs", lambda n: (n, dim)), _zero_diffusion
    f = wrap(pr.drift, "drift", lambda n: (n, dim))
    if pr.matrix_noise:
        return f, wrap(pr.diffusion, "diffusion", lambda n: (n, dim, m))
    return f, wrap(pr.diffusion, "diffusion", lambda n: (n, dim))


class _Blocks:
    """Blocks ``(k0, K, dW, H)`` of a batch's increments in the solve's dtype (step counts only for ODEs)."""

    def __init__(self, plan, lo, hi):
        self.plan = plan
        self.src = None
        if plan.m:
            self.src = _torch_bridge.blocks(plan.brownian, plan.n_steps, lo, hi, reverse=plan.reverse,
                                            device=plan.device, dtype=plan.dtype)

    def recycle(self, ok: bool):
        """Let the generator reuse its buffers (only when no autograd graph holds the increments)."""
        if hasattr(self.src, "reuse"):
            self.src.reuse = ok

    def __iter__(self):
        plan = self.plan
        if self.src is None:
            K = 64
            for k0 in range(0, plan.n_steps, K):
                yield k0, min(K, plan.n_steps - k0), None, None
            return
        k0 = 0
        for dw, hh in self.src:
            if dw.dtype != plan.dtype:
                dw = dw.to(plan.dtype)
                hh = None if hh is None else hh.to(plan.dtype)
            yield k0, dw.shape[0], dw, hh
            k0 += dw.shape[0]


def _first_bad_step(plan, f, g, p, x, k0, K, dw, hh, zero, newly):
    """Replay a block without gradients; the step (absolute index) where each ``newly`` path failed."""
    first = torch.full((x.shape[0],), k0 + K - 1, dtype=torch.int64, device=x.device)
    found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    with torch.no_grad():
        for j in range(K):
            d = zero if dw is None else dw[j]
            x = plan.step(f, g, p, plan.tab, plan.t0 + (k0 + j) * plan.h, x, plan.h, d, zero if hh is None else hh[j])
            bad = ~torch.isfinite(x).all(dim=1) & ~found
            first = torch.where(bad, k0 + j, first)
            found |= bad
            if bool(found[newly].all()):
                break
    return first[newly]


class _Tab:
    """A packed tableau as nested Python floats with NumPy-style indexing (``tab[i, j]``, row slices).

    torch.compile treats NumPy arrays as tensors, which would make the
    tableau's zero tests data-dependent; plain floats are constants.
    """

    def __init__(self, rows):
        self.rows = rows
        self.shape = (len(rows), len(rows[0]))

    def __getitem__(self, k):
        if isinstance(k, tuple):
            return self.rows[k[0]][k[1]]
        if isinstance(k, slice):
            return _Tab(self.rows[k])
        return self.rows[k]


_COMPILED = weakref.WeakKeyDictionary()


def _stepper(plan, f, g):
    """``step(t, x, dw, hh)`` for the solve: eager, or fused by torch.compile (cached per problem)."""
    p, tab, h, step = plan.params_t, plan.tab, plan.h, plan.step
    if not plan.compile:
        return lambda t, x, dw, hh: step(f, g, p, tab, t, x, h, dw, hh)
    key = (step, h, str(plan.device), plan.dtype, plan.dim, plan.m, plan.tab.tobytes())
    cache = _COMPILED.setdefault(plan.problem, {})
    if key not in cache:
        rows = _Tab(plan.tab.tolist())

        def fused_step(t, x, dw, hh):
            return step(f, g, p, rows, t, x, h, dw, hh)

        # torch.compile caches per code object, with a limit on recompilations; a fresh code object per
        # (problem, scheme, step size, ...) keeps one solve's compilations from evicting another's.
        code = fused_step.__code__.replace(co_name=f"sdekit_step_{len(cache)}_{id(plan.problem):x}")
        fresh = types.FunctionType(code, fused_step.__globals__, code.co_name, None, fused_step.__closure__)
        cache[key] = torch.compile(fresh)
    fused = cache[key]
    checked = []

    def run(t, x, dw, hh):
        if checked:
            return fused(t, x, dw, hh)
        try:
            r = fused(t, x, dw, hh)
        except Exception as exc:  # noqa: BLE001 - re-raised with the fix
            raise ValueError(
                f"compile=True: torch.compile could not fuse the {plan.scheme.name} step with your functions "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); pass compile=False."
            ) from exc
        checked.append(True)
        return r

    return run


class _Times:
    """Step start times ``t0 + k h``: Python floats (eager) or 0-d float64 tensors (compiled: no recompile per t),
    made per step (a list of them would cost a Python object per step)."""

    def __init__(self, plan):
        self.t0, self.h = plan.t0, plan.h
        self.grid = None
        if plan.compile:
            self.grid = torch.arange(plan.n_steps, dtype=torch.float64, device=plan.device) * plan.h + plan.t0

    def __getitem__(self, k):
        return self.t0 + k * self.h if self.grid is None else self.grid[k]


def _times(plan):
    return _Times(plan)


def run_fixed(plan):
    f, g = _functions(plan)
    p, h, n = plan.params_t, plan.h, plan.n_steps
    stepper = _stepper(plan, f, g)
    times = _times(plan)
    save = plan.save_idx  # an int64 array: no Python object per saved time
    nb_max = batch_size(plan)
    outs = []
    never = n + 1
    for lo in range(0, plan.n_paths, nb_max):
        hi = min(plan.n_paths, lo + nb_max)
        nb = hi - lo
        x = plan.x0[lo:hi] if plan.x0.shape[0] > 1 else plan.x0.expand(nb, plan.dim)
        zero = x.new_zeros((nb, max(plan.m, 1)))
        fail_step = torch.full((nb,), never, dtype=torch.int64, device=plan.device)
        saved = []
        si = 0
        if save.size and save[0] == 0:
            saved.append(x)
            si = 1
        blocks = _Blocks(plan, lo, hi)
        for k0, K, dw, hh in blocks:
            x_start = x
            for j in range(K):
                k = k0 + j
                x = stepper(times[k], x, zero if dw is None else dw[j], zero if hh is None else hh[j])
                if si < len(save) and save[si] == k + 1:
                    saved.append(x)
                    si += 1
            bad = ~torch.isfinite(x.detach()).all(dim=1) & (fail_step == never)
            if bool(bad.any()):
                rows = bad.nonzero().squeeze(1)
                fail_step[rows] = _first_bad_step(plan, f, g, p, x_start.detach(), k0, K, dw, hh, zero, rows) + 1
            blocks.recycle(not x.requires_grad)
        out = torch.stack(saved)
        failed = fail_step != never
        if bool(failed.any()):
            idx = torch.as_tensor(save, dtype=torch.int64, device=plan.device)
            dead = idx[:, None] >= fail_step[None, :]
            out = torch.where(dead[:, :, None], torch.full_like(out, math.nan), out)
            fs = fail_step.cpu().numpy()
            rows = np.nonzero(fs != never)[0]
            plan.failure_time[lo + rows] = (plan.t0 + (fs[rows] - 1) * h) + h  # t_k + h, as the other backends
        outs.append(out)
    plan.out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


# --------------------------------------------------------------------------- adaptive (dopri5)
def _rows_rms(v):
    return torch.sqrt(torch.mean(v * v, dim=1))


def run_adaptive(plan):
    """Batch-stepped embedded RK with the controller of :mod:`sdekit.schemes._adaptive`."""
    tab = plan.scheme.tableau
    A, b, c, P = (np.asarray(a, dtype=np.float64) for a in (tab.A, tab.b, tab.c, tab.dense))
    e = b - np.asarray(tab.b_err, dtype=np.float64)
    f = wrap(plan.problem.rhs, "rhs", lambda n: (n, plan.dim))
    p = plan.params_t
    nb_max = batch_size(plan)
    totals = np.zeros(3, dtype=np.int64)
    outs = []
    for lo in range(0, plan.n_paths, nb_max):
        hi = min(plan.n_paths, lo + nb_max)
        x = plan.x0[lo:hi] if plan.x0.shape[0] > 1 else plan.x0.expand(hi - lo, plan.dim)
        out, counts, fail_t, codes = _integrate_batch(f, p, A, b, e, c, P, plan, x)
        totals += counts * (hi - lo)
        plan.failure_time[lo:hi] = fail_t
        plan.codes[lo:hi] = codes
        outs.append(out)
    plan.out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
    return tuple(int(v) for v in totals)


def _integrate_batch(f, p, A, b, e, c, P, plan, x):
    t0, t1, rtol, atol = plan.t0, plan.t1, plan.rtol, plan.atol
    save_t = [float(s) for s in plan.save_t]
    n = x.shape[0]
    s = b.shape[0]
    direction = 1.0 if t1 > t0 else -1.0
    span = abs(t1 - t0)
    fsal = c[s - 1] == 1.0 and np.all(A[s - 1] == b)
    live = torch.ones(n, dtype=torch.bool, device=x.device)
    fail_t = np.full(n, np.nan)
    codes = np.zeros(n, dtype=np.int64)
    saved = [None] * len(save_t)
    t = t0
    si = 0
    while si < len(save_t) and save_t[si] == t0:
        saved[si] = x
        si += 1

    def norm(v, scale):
        r = _rows_rms((v / scale).detach())
        r = torch.where(live, r, torch.zeros_like(r))
        return r

    def start():
        """Hairer's initial step of the live paths; also each path's scaled norms of f (n1) and its change (n2)."""
        k0 = f(t, x, p)
        sc = atol + rtol * x.detach().abs()
        n1 = norm(k0, sc)
        h0 = _adaptive.first_trial_step(float(norm(x, sc).max()), float(n1.max()), span)
        f1 = f(t + direction * h0, x + (direction * h0) * k0, p)
        n2 = norm(f1 - k0, sc) / h0
        return k0, n1, n2, _adaptive.initial_step(h0, float(n1.max()), float(n2.max()), span)

    k0, n1, n2, habs = start()
    nfev = 2
    err_prev = 1e-4
    h_acc = habs
    errs = None
    nonfinite = False
    accepted = rejected = 0
    K = [k0] + [None] * (s - 1)

    def fail(rows_mask, code):
        nonlocal x, live
        rows = (rows_mask & live).nonzero().squeeze(1).cpu().numpy()
        fail_t[rows] = t
        codes[rows] = code
        live = live & ~rows_mask
        x = torch.where(rows_mask[:, None], torch.full_like(x, math.nan), x)

    while direction * (t1 - t) > 0.0 and bool(live.any()):
        if accepted + rejected >= plan.max_steps:
            fail(live, _adaptive.MAX_STEPS)
            break
        remaining = abs(t1 - t)
        last = habs >= remaining
        if last:
            habs = remaining
        if habs <= 10.0 * np.finfo(np.float64).eps * max(abs(t), span):
            # The paths that force the step down (error above tolerance or non-finite, else the one that
            # sets the step size) fail here, as they would on their own; the others go on from the last
            # accepted step size.
            if errs is None:  # no step tried yet: the paths that set the initial step fail, the others start again
                fail(((n1 >= n1.max()) | (n2 >= n2.max())) & live, _adaptive.STEP_UNDERFLOW)
                if bool(live.any()):
                    K[0], n1, n2, habs = start()
                    h_acc = habs
                    nfev += 2
                continue
            culprits = (~torch.isfinite(errs) | (errs > 1.0)) & live
            if not bool(culprits.any()):  # the last step was accepted: the path that controls the step size
                culprits = (errs >= errs.max()) & live
            fail(culprits, _adaptive.NONFINITE if nonfinite else _adaptive.STEP_UNDERFLOW)
            habs, nonfinite = h_acc, False
            K[0] = f(t, x, p)
            nfev += 1
            continue
        h = direction * habs
        for i in range(1, s):
            xi = x
            for j in range(i):
                if A[i, j] != 0.0:
                    xi = xi + (A[i, j] * h) * K[j]
            K[i] = f(t + c[i] * h, xi, p)
        nfev += s - 1
        x_new = x
        err_v = torch.zeros_like(x)
        for i in range(s):
            if b[i] != 0.0:
                x_new = x_new + (b[i] * h) * K[i]
            if e[i] != 0.0:
                err_v = err_v + (e[i] * h) * K[i]
        errs = norm(err_v, atol + rtol * torch.maximum(x.detach().abs(), x_new.detach().abs()))
        err = float(errs.max())
        if not math.isfinite(err):
            rejected += 1
            habs *= 0.2
            nonfinite = True
            continue
        nonfinite = False
        if err <= 1.0:
            t_new = t1 if last else t + h
            while si < len(save_t) and direction * (save_t[si] - t_new) <= 0.0:
                if save_t[si] == t_new:
                    saved[si] = x_new
                else:
                    th = (save_t[si] - t) / h
                    xs = x
                    for i in range(s):
                        w = _adaptive.dense_weight(P, i, th)
                        if w != 0.0:
                            xs = xs + (w * h) * K[i]
                    saved[si] = xs
                si += 1
            t, x = t_new, x_new
            accepted += 1
            h_acc = habs
            K[0] = K[s - 1] if fsal else f(t, x, p)
            nfev += 0 if fsal else 1
            habs *= _adaptive.accept_factor(err, err_prev)
            err_prev = max(err, 1e-4)
        else:
            rejected += 1
            habs *= _adaptive.reject_factor(err)
    nan = torch.full_like(x, math.nan)
    out = torch.stack([nan if v is None else v for v in saved])
    dead = ~live
    if bool(dead.any()):
        # Saved states after a path's failure are NaN (it stopped there).
        ft = torch.as_tensor(np.nan_to_num(fail_t, nan=np.inf), device=x.device)
        st = torch.as_tensor(save_t, device=x.device)
        after = (direction * (st[:, None] - ft[None, :]) > 0) & dead[None, :]
        out = torch.where(after[:, :, None], torch.full_like(out, math.nan), out)
    return out, np.array([accepted, rejected, nfev], dtype=np.int64), fail_t, codes

"""The torch backend: the step functions on batched tensors, on CPU or GPU, differentiable.

Every step of every scheme is the function of ``schemes._steps`` that the
other backends run, applied to a ``(n, dim)`` tensor that holds a whole batch
of paths: one Python-level step per time step, each a handful of tensor
kernels over all paths. Nothing loops over paths in Python.

* **Noise.** Increments come in blocks from :meth:`BrownianPath.blocks
  <sdekit.BrownianPath.blocks>`: on CPU the compiled tree of the numba
  backend fills them (the same numbers, bit for bit), on other devices the
  same counter-based tree runs as tensor kernels on the device. Either way a
  seed gives the same path on every backend, up to round-off.
* **Gradients.** The solve is ordinary torch code, so autograd differentiates
  it with respect to ``x0`` and to tensors in ``params`` (discretise-then-
  optimise: memory grows with the number of steps).
* **Non-finite states.** A state that is not finite stays so (every scheme
  adds to the current state), so the backend checks once per block of steps;
  when a path has failed inside a block the block is replayed without
  gradients to find the step. Saved states of a failed path are NaN from its
  failure on. The instability rule of the explicit schemes
  (:mod:`sdekit.schemes._stability`): each step compares ``max|x|`` per path
  with the rule's trigger as tensors; on the CPU the rows that pass it are
  judged at that step (one bool read per step), on other devices the block
  is replayed for them afterwards (no synchronisation per step).
* **dopri5** steps the whole batch with one step size, controlled by the
  worst path (the error norm is the maximum over paths of the per-path RMS
  norm of the other backends). With one path it takes exactly the steps of
  the numpy and numba backends; with many, each path meets the tolerance
  but the steps, and so the round-off, depend on the batch.
"""

from __future__ import annotations

import math
import numbers
import types
import weakref

import numpy as np
import torch

from .. import checks
from ..params import is_record
from ..schemes import _adaptive, _stability
from ..schemes._stability import nonfinite_code
from ..semilinear import SemilinearODE
from ..solution import Stats
from . import Inputs, Options, Result, Work, fixed_step_stats, no_failures, rosenbrock
from .numpy_backend import integrate_exponential

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
    """The problem's params on the solve's device: arrays become tensors, tensors are checked; tuples and
    records (:mod:`sdekit.params`) keep their structure."""

    def on_device(v, path):
        if isinstance(v, tuple):
            if is_record(v):
                return type(v)(*(on_device(e, f"{path}.{n}") for n, e in zip(v._fields, v, strict=True)))
            return tuple(on_device(e, f"{path}[{i}]") for i, e in enumerate(v))
        if isinstance(v, np.ndarray):
            return torch.as_tensor(v, dtype=dtype, device=device)
        if isinstance(v, torch.Tensor):
            if v.is_complex():
                raise ValueError(f"`{path}` must be real, got a {v.dtype} tensor.")
            _check_tensor(v, f"`{path}`", device, dtype)
        return v

    return on_device(params, "params")


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


def _device_dtype(x0, device, dtype):
    """Device and dtype of a torch solve: from ``x0`` if it is a tensor, else the arguments (cpu, float64)."""
    if device is not None:
        try:
            device = torch.device(device)
        except (TypeError, RuntimeError):
            raise ValueError(f"`device` must be a torch device or a string like 'cpu' or 'cuda', got {device!r}.") from None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError("device='cuda' but CUDA is not available on this machine; use device='cpu'.")
            if device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        raise ValueError(f"`dtype` must be torch.float32 or torch.float64, got {dtype!r}.")
    if checks.is_tensor(x0):
        _check_x0_kind(x0)
        if device is not None and x0.device != device:
            raise ValueError(f"`x0` is on {x0.device} but device={device}; move x0 (x0.to(device)) or drop `device`.")
        if x0.is_floating_point():
            if dtype is not None and x0.dtype != dtype:
                raise ValueError(f"`x0` has dtype {x0.dtype} but dtype={dtype}; convert x0 (x0.to(dtype)) or drop `dtype`.")
            if x0.dtype not in (torch.float32, torch.float64):
                raise ValueError(f"`x0` has dtype {x0.dtype}; the torch backend solves in float32 or float64.")
            dtype = x0.dtype
        device = x0.device
    return torch.device("cpu") if device is None else device, torch.float64 if dtype is None else dtype


def _check_x0_kind(x0):
    if x0.is_complex():
        raise ValueError(f"`x0` must be real; got a {x0.dtype} tensor (split real and imaginary parts into two components).")
    if x0.dtype == torch.bool:
        raise ValueError("`x0` must be real numbers, got a bool tensor; pass x0.double() if that is meant.")


class TorchBackend:
    """The torch backend: tensors on the solve's device and dtype, differentiable (see the module docstring)."""

    name = "torch"

    def options(self, problem, x0, *, device=None, dtype=None, compile=False) -> Options:  # noqa: A002
        device, dtype = _device_dtype(x0, device, dtype)
        return Options(device, dtype, bool(compile))

    def prepare(self, problem, x0, n_paths, options) -> Inputs:
        device, dtype = options.device, options.dtype
        x0 = x0.to(dtype) if checks.is_tensor(x0) else torch.as_tensor(checks.x0_array(x0), dtype=dtype, device=device)
        x0, n_paths = checks.initial_states(x0, n_paths)
        noise_dim = problem.noise_dim(x0.shape[1]) if problem.is_sde else 0
        return Inputs(problem, x0, n_paths, noise_dim, params_on(problem.params, device, dtype), options)

    def probe(self, inputs, t0) -> None:
        """The entry probe of :func:`sdekit.checks.check_functions` on a small batch of the solve's device and
        dtype (the exponential integrators' D is checked on every call instead)."""
        problem, x0 = inputs.problem, inputs.x0
        if isinstance(problem, SemilinearODE):
            return
        dim, m = inputs.dim, inputs.noise_dim
        rows = x0[: checks.probe_rows(dim, m)].detach().cpu().double().numpy()  # only the probe's rows leave the device

        def evaluate(fn, name, x, target, extra):
            tx = torch.as_tensor(x, dtype=x0.dtype, device=x0.device)
            return _probe(fn, name, t0, tx, inputs.params, target, extra).detach().cpu().double().numpy()

        # float32 (and TF32 convolutions on GPU) round differently by batch
        checks.check_functions(problem, rows, dim, m, evaluate, rtol=1e-7 if x0.dtype == torch.float64 else 1e-2)

    def working_memory(self, *, adaptive, n_save, n_paths, dim, m, n_steps, itemsize, width, device, n_threads):
        """Two more copies of the saved states (their stack, and ``cat``/NaN masking) and a batch's working set."""
        batch = paths_per_batch(n_paths, width, device)
        work = 16 * batch * width * itemsize + 4 * batch * max(m, 1) * min(n_steps, 1 << 12) * itemsize
        return 2 * n_save * n_paths * dim * itemsize + work

    def run(self, inputs, work) -> Result:
        if work.path_plan is not None:  # adaptive SDE steps per path (events are refused there)
            from .torch_paths import run as run_paths

            return run_paths(inputs, work)
        if work.scheme.kind == "semilinear":
            return run_exponential(inputs, work)
        if work.scheme.adaptive:
            return rosenbrock.run_torch(inputs, work) if rosenbrock.solves(work) else run_adaptive(inputs, work)
        return run_fixed(inputs, work)


BACKEND = TorchBackend()


def paths_per_batch(n_paths: int, width: int, device) -> int:
    """Paths per batch for states of ``width`` numbers: the whole solve unless its working set would be large."""
    budget = (1 << 27) if device is not None and device.type == "cuda" else (1 << 23)
    return int(max(1, min(n_paths, budget // (16 * width))))


def batch_size(inputs: Inputs) -> int:
    """Paths per batch of a solve (see :func:`paths_per_batch`)."""
    m, problem = inputs.noise_dim, inputs.problem
    width = max(inputs.dim, m, 1) * (max(m, 1) if problem.is_sde and problem.matrix_noise else 1)
    return paths_per_batch(inputs.n_paths, width, inputs.options.device)


def _batches(inputs: Inputs):
    """``(lo, hi, x0 of the batch)`` for each batch of paths."""
    size, x0 = batch_size(inputs), inputs.x0
    for lo in range(0, inputs.n_paths, size):
        hi = min(inputs.n_paths, lo + size)
        yield lo, hi, x0[lo:hi] if x0.shape[0] > 1 else x0.expand(hi - lo, inputs.dim)


# --------------------------------------------------------------------------- fixed steps
def step_functions(problem, dim: int, m: int):
    """``(f, g)``: the drift (an ODE's ``rhs``) and the diffusion as the steps call them, each result checked
    (tensor, device, dtype, shape) and broadcast to ``(n, dim)`` (a matrix diffusion to ``(n, dim, m)``); an ODE's
    diffusion is zero."""
    if not problem.is_sde:
        return wrap(problem.rhs, "rhs", lambda n: (n, dim)), _zero_diffusion
    f = wrap(problem.drift, "drift", lambda n: (n, dim))
    jac = getattr(problem, "jac", None)  # read by the drift-implicit steps (``_steps.drift_jacobian``)
    f.jacobian = None if jac is None else wrap(jac, "jac", lambda n: (n, dim, dim))
    if problem.matrix_noise:
        return f, wrap(problem.diffusion, "diffusion", lambda n: (n, dim, m))
    return f, wrap(problem.diffusion, "diffusion", lambda n: (n, dim))


# devices on which the instability rule is judged at each step (a bool read per step is cheap there); elsewhere the
# trigger is accumulated over a block and the block replayed for the rows that passed it
PER_STEP_DEVICES = ("cpu",)
ODE_BLOCK_STEPS = 64  # steps between the finiteness checks of an ODE (an SDE checks once per block of increments)


def _blocks(inputs: Inputs, work: Work, lo: int, hi: int, records_graph):
    """``(first_step, dw, levy_area)`` blocks of paths ``lo..hi-1`` in the solve's dtype (``dw`` None for ODEs).

    The CPU generator recycles its buffers while ``records_graph()`` is False (the state after the previous block
    needs no gradient, so no graph holds its increments).
    """
    if not inputs.noise_dim:
        return ((first_step, None, None) for first_step in range(0, work.n_steps, ODE_BLOCK_STEPS))
    options = inputs.options
    return work.brownian.blocks(work.n_steps, paths=range(lo, hi), reverse=work.reverse, device=options.device,
                                dtype=options.dtype, reuse_buffers=lambda: not records_graph())


def _replay_block(work, f, g, params, x, first_step, n_block, dw, levy_area, zero, scale, nonfinite):
    """Replay a block's steps without gradients on some rows (``x``: their states at the block's start, ``dw``,
    ``levy_area``, ``zero``: their increments), step by step as the other backends run it: the non-finite check and
    the instability rule (:mod:`sdekit.schemes._stability`, with ``work.stability_boundary``; it updates ``scale``,
    the rows' reference scales). Returns ``(fail_step, codes)``: per row the index of the first state it failed at
    (``work.n_steps + 1`` if none) and its failure code."""
    plan, h, beta = work.plan, work.h, work.stability_boundary
    never = work.n_steps + 1
    fail = torch.full((x.shape[0],), never, dtype=torch.int64, device=x.device)
    codes = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    with torch.no_grad():
        for j in range(n_block):
            t = work.t0 + (first_step + j) * h
            x_next = plan.step(f, g, params, plan.tab, t, x, h, zero if dw is None else dw[j],
                               zero if levy_area is None else levy_area[j])
            if beta > 0.0:
                norm = x_next.abs().amax(dim=1)  # NaN for a row holding NaN: neither branch takes it
                live = (fail == never) & torch.isfinite(norm)
                fresh = live & (scale == 0.0)
                scale[fresh] = norm[fresh]
                rows = (live & ~fresh & (norm > _stability.GROWTH * scale)).nonzero().squeeze(1)
                if rows.numel():
                    _judge_grown(f, params, t, h, beta, x[rows], x_next[rows], norm[rows], rows, scale, fail, codes,
                                 first_step + j + 1)
            bad = ~torch.isfinite(x_next).all(dim=1) & (fail == never)
            fail[bad] = first_step + j + 1
            codes[bad] = nonfinite
            x = x_next
    return fail, codes


def _judge_grown(f, params, t, h, beta, old, new, norm, rows, scale, fail, codes, step_index):
    """The drift test of the instability rule on the grown ``rows`` (``old``, ``new``: their states before and after
    the step from ``t``, ``norm`` their new ``max|x|``): unstable rows fail at ``step_index`` with code UNSTABLE, the
    others take ``norm`` as their reference scale."""
    d = new - old
    dd, df = (d * d).sum(dim=1), (d * (f(t, new, params) - f(t, old, params))).sum(dim=1)
    unstable = (h * df < -beta * dd) & torch.isfinite(df) & torch.isfinite(dd)
    fail[rows[unstable]] = step_index
    codes[rows[unstable]] = _stability.UNSTABLE
    scale[rows[~unstable]] = norm[~unstable]


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


def _stepper(inputs: Inputs, work: Work, f, g):
    """``step(t, x, dw, levy_area)`` for the solve: eager, or fused by torch.compile (cached per problem)."""
    params, h, step, tab, options = inputs.params, work.h, work.plan.step, work.plan.tab, inputs.options
    if not options.compile:
        return lambda t, x, dw, levy_area: step(f, g, params, tab, t, x, h, dw, levy_area)
    key = (step, h, str(options.device), options.dtype, inputs.dim, inputs.noise_dim, tab.tobytes())
    cache = _COMPILED.setdefault(inputs.problem, {})
    if key not in cache:
        rows = _Tab(tab.tolist())

        def fused_step(t, x, dw, levy_area):
            return step(f, g, params, rows, t, x, h, dw, levy_area)

        # torch.compile caches per code object, with a limit on recompilations; a fresh code object per
        # (problem, scheme, step size, ...) keeps one solve's compilations from evicting another's.
        code = fused_step.__code__.replace(co_name=f"sdekit_step_{len(cache)}_{id(inputs.problem):x}")
        fresh = types.FunctionType(code, fused_step.__globals__, code.co_name, None, fused_step.__closure__)
        cache[key] = torch.compile(fresh)
    fused = cache[key]
    checked = []

    def run(t, x, dw, levy_area):
        if checked:
            return fused(t, x, dw, levy_area)
        try:
            r = fused(t, x, dw, levy_area)
        except Exception as exc:  # noqa: BLE001 - re-raised with the fix
            raise ValueError(
                f"compile=True: torch.compile could not fuse the {work.scheme.name} step with your functions "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); pass compile=False."
            ) from exc
        checked.append(True)
        return r

    return run


class _Times:
    """Step start times ``t0 + k h``: Python floats (eager) or 0-d float64 tensors (compiled: no recompile per t),
    made per step (a list of them would cost a Python object per step)."""

    def __init__(self, inputs: Inputs, work: Work):
        self.t0, self.h = work.t0, work.h
        self.grid = None
        if inputs.options.compile:
            self.grid = torch.arange(work.n_steps, dtype=torch.float64, device=inputs.options.device) * work.h + work.t0

    def __getitem__(self, k):
        return self.t0 + k * self.h if self.grid is None else self.grid[k]


def run_fixed(inputs: Inputs, work: Work) -> Result:
    f, g = step_functions(inputs.problem, inputs.dim, inputs.noise_dim)
    params, h, n_steps, device = inputs.params, work.h, work.n_steps, inputs.options.device
    stepper = _stepper(inputs, work, f, g)
    times = _Times(inputs, work)
    save_idx = work.save_idx  # an int64 array: no Python object per saved time
    failure_time, failure_codes = no_failures(inputs.n_paths)
    outs = []
    never = n_steps + 1
    beta, nonfinite = work.stability_boundary, nonfinite_code(work.plan.step)
    # the instability rule: on the CPU judged at the step a row passes the trigger (a test of one bool per step);
    # on other devices the trigger is accumulated without synchronising and the block replayed for those rows
    per_step = beta > 0.0 and torch.device(device).type in PER_STEP_DEVICES
    for lo, hi, x in _batches(inputs):
        zero = x.new_zeros((hi - lo, max(inputs.noise_dim, 1)))
        fail_step = torch.full((hi - lo,), never, dtype=torch.int64, device=device)
        codes = torch.zeros((hi - lo,), dtype=torch.int64, device=device)
        scale = x.detach().abs().amax(dim=1)  # the instability rule's reference scale per path
        saved = []
        next_save = 0
        if save_idx.size and save_idx[0] == 0:
            saved.append(x)
            next_save = 1
        for first_step, dw, levy_area in _blocks(inputs, work, lo, hi, lambda: x.requires_grad):  # noqa: B023 - the current state, on purpose
            n_block = min(n_steps - first_step, ODE_BLOCK_STEPS) if dw is None else dw.shape[0]
            x_start = x
            if beta > 0.0:  # the rule's trigger, step by step as a tensor
                scale_start = scale.clone()
                unset = bool((scale == 0.0).any())  # rows whose first non-zero state sets their scale (rule step 1)
                threshold = None if unset else _stability.GROWTH * scale
                grown = None if per_step else torch.zeros_like(scale, dtype=torch.bool)
            for j in range(n_block):
                k = first_step + j
                x_prev = x
                x = stepper(times[k], x, zero if dw is None else dw[j], zero if levy_area is None else levy_area[j])
                if beta > 0.0:
                    norm = x.detach().abs().amax(dim=1)
                    if unset:
                        scale = torch.where((scale == 0.0) & torch.isfinite(norm), norm, scale)
                    over = norm > (_stability.GROWTH * scale if unset else threshold)
                    if not per_step:
                        grown |= over
                    elif bool(over.any()):
                        rows = (over & torch.isfinite(norm) & (fail_step == never)).nonzero().squeeze(1)
                        with torch.no_grad():
                            _judge_grown(f, params, times[k], h, beta, x_prev.detach()[rows], x.detach()[rows],
                                         norm[rows], rows, scale, fail_step, codes, k + 1)
                        threshold = None if unset else _stability.GROWTH * scale
                if next_save < save_idx.size and save_idx[next_save] == k + 1:
                    saved.append(x)
                    next_save += 1
            # rows to replay step by step: non-finite ones, and (instability rule, off the CPU) those that passed the
            # trigger in the block; the others took at most rule step 1, which the tracking above did exactly
            suspect = ~torch.isfinite(x.detach()).all(dim=1)
            if beta > 0.0 and not per_step:
                suspect |= grown
            suspect &= fail_step == never
            if bool(suspect.any()):
                rows = suspect.nonzero().squeeze(1)
                row_scale = scale_start[rows]
                row_fail, row_codes = _replay_block(
                    work, f, g, params, x_start.detach()[rows], first_step, n_block,
                    None if dw is None else dw[:, rows], None if levy_area is None else levy_area[:, rows],
                    zero[rows], row_scale, nonfinite)
                scale[rows] = row_scale
                fail_step[rows] = row_fail
                codes[rows] = row_codes
        out = torch.stack(saved)
        failed = fail_step != never
        if bool(failed.any()):
            idx = torch.as_tensor(save_idx, dtype=torch.int64, device=device)
            dead = idx[:, None] >= fail_step[None, :]
            out = torch.where(dead[:, :, None], torch.full_like(out, math.nan), out)
            steps = fail_step.cpu().numpy()
            rows = np.nonzero(steps != never)[0]
            failure_time[lo + rows] = (work.t0 + (steps[rows] - 1) * h) + h  # t_k + h, as the other backends
            failure_codes[lo + rows] = codes.cpu().numpy()[rows]
        outs.append(out)
    x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
    return Result(x, failure_time, failure_codes, fixed_step_stats(work, inputs.n_paths, inputs.noise_dim))


# --------------------------------------------------------------------------- exponential integrators
def _nonlinear(fn):
    """The exponential integrators' D, checked on every call (a real tensor broadcastable to x) and broadcast."""

    def checked(t, x, params):
        d = fn(t, x, params)
        if d.shape != x.shape or d.is_complex():
            if d.is_complex() or not checks.broadcasts_to(tuple(d.shape), tuple(x.shape)):
                raise ValueError(f"`nonlinear` returned shape {tuple(d.shape)}, {d.dtype} for x of shape "
                                 f"{tuple(x.shape)}; it must be real and broadcast to {tuple(x.shape)} (one row per path).")
            d = d.expand_as(x)
        return d

    return checked


def _combine(factor, x, terms):
    """``factor x + sum_j c_j v_j`` over the ``(c_j, v_j)`` in ``terms``: one new tensor, the terms added in place
    (``add_(v, alpha=c)``: no temporary per term)."""
    out = x.mul(factor)
    for c, v in terms:
        out.add_(v, alpha=c)
    return out


def run_exponential(inputs: Inputs, work: Work) -> Result:
    """The exponential integrators on the whole batch (the loop of :func:`numpy_backend.integrate_exponential`)."""
    x = inputs.x0.expand(inputs.n_paths, inputs.dim) if inputs.x0.shape[0] == 1 else inputs.x0
    device = x.device
    saved, failure_time = integrate_exponential(
        inputs.problem, work, _nonlinear(inputs.problem.nonlinear), inputs.params, x,
        combine=_combine, all_finite=lambda v: math.isfinite(float(v.detach().sum())),
        finite_rows=lambda v: torch.isfinite(v.detach()).all(dim=1).cpu().numpy(),
        with_nan_rows=lambda v, rows: torch.where(torch.as_tensor(rows, device=device)[:, None],
                                                  torch.full_like(v, math.nan), v),
    )
    return Result(torch.stack(saved), failure_time, no_failures(inputs.n_paths)[1],
                  fixed_step_stats(work, inputs.n_paths, 0))


# --------------------------------------------------------------------------- adaptive (dopri5)
def _rows_rms(v):
    return torch.sqrt(torch.mean(v * v, dim=1))


def run_adaptive(inputs: Inputs, work: Work) -> Result:
    """Batch-stepped embedded RK with the controller of :mod:`sdekit.schemes._adaptive`."""
    tab = work.scheme.tableau
    A, b, c, P = (np.asarray(a, dtype=np.float64) for a in (tab.A, tab.b, tab.c, tab.dense))
    e = b - np.asarray(tab.b_err, dtype=np.float64)
    f = wrap(inputs.problem.rhs, "rhs", lambda n: (n, inputs.dim))
    totals = np.zeros(3, dtype=np.int64)  # accepted, rejected, evaluations per path, summed over the paths
    failure_time, failure_codes = no_failures(inputs.n_paths)
    outs = []
    for lo, hi, x in _batches(inputs):
        out, counts, failure_time[lo:hi], failure_codes[lo:hi] = _integrate_batch(f, inputs.params, A, b, e, c, P, work, x)
        totals += counts * (hi - lo)
        outs.append(out)
    accepted, rejected, evaluations = (int(v) for v in totals)
    stats = Stats(accepted + rejected, accepted, rejected, evaluations, 0, inputs.n_paths)
    return Result(outs[0] if len(outs) == 1 else torch.cat(outs, dim=1), failure_time, failure_codes, stats)


def _integrate_batch(f, p, A, b, e, c, P, work, x):
    """One batch: ``(saved states, [accepted, rejected, evaluations], failure_time, failure_codes)``."""
    t0, t1, rtol, atol = work.t0, work.t1, work.tolerances.rtol, work.tolerances.atol
    save_t = [float(s) for s in work.save_t]
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
    next_save = 0
    while next_save < len(save_t) and save_t[next_save] == t0:
        saved[next_save] = x
        next_save += 1

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
        if accepted + rejected >= work.tolerances.max_steps:
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
            while next_save < len(save_t) and direction * (save_t[next_save] - t_new) <= 0.0:
                if save_t[next_save] == t_new:
                    saved[next_save] = x_new
                else:
                    theta = (save_t[next_save] - t) / h
                    xs = x
                    for i in range(s):
                        w = _adaptive.dense_weight(P, i, theta)
                        if w != 0.0:
                            xs = xs + (w * h) * K[i]
                    saved[next_save] = xs
                next_save += 1
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

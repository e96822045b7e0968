"""``solve``: validate once, pick the backend, run, return a Solution."""

from __future__ import annotations

import importlib
import math
import numbers
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _bridge, _rng, semilinear
from ._jitcache import heal_module
from .backends import BACKENDS
from .brownian import BrownianPath
from .problem import ODE, SDE
from .schemes import SCHEMES, Scheme, _adaptive, get_scheme, step_plan
from .semilinear import SemilinearODE
from .solution import Solution, Stats

__all__ = ["solve"]


for _mod in (_rng, _bridge):
    heal_module(_mod)

_FAILURE_TEXT = {
    _adaptive.MAX_STEPS: "max_steps reached",
    _adaptive.STEP_UNDERFLOW: "step size underflow",
    _adaptive.NONFINITE: "non-finite state",
}


@dataclass
class _Plan:
    problem: Any
    scheme: Scheme
    step: Any
    tab: np.ndarray
    x0: np.ndarray
    dim: int
    m: int
    n_paths: int
    t0: float
    t1: float
    h: float
    n_steps: int
    reverse: bool
    brownian: BrownianPath | None
    save_idx: np.ndarray
    save_t: np.ndarray
    out: np.ndarray
    failure_time: np.ndarray
    codes: np.ndarray
    rtol: float
    atol: float
    max_steps: int
    device: Any = None
    dtype: Any = None
    params_t: tuple = ()
    compile: bool = False


def _positive_int(v, name):
    if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {v!r}.")
    return int(v)


def _positive_float(v, name):
    if isinstance(v, complex | np.complexfloating):
        raise ValueError(f"`{name}` must be a positive real number, got {v!r}.")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a positive number, got {v!r}.") from None
    if not (math.isfinite(f) and f > 0):
        raise ValueError(f"`{name}` must be a positive finite number, got {v!r}.")
    return f


def _real_scalar(v, name):
    """``float(v)``, refusing complex numbers (``float`` of a NumPy complex would drop the imaginary part)."""
    if isinstance(v, complex | np.complexfloating) or (_is_tensor(v) and v.is_complex()):
        raise ValueError(f"`{name}` must be real, got {v!r}.")
    return float(v)


def _t_span(t_span):
    try:
        t0, t1 = (_real_scalar(v, "t_span") for v in t_span)
    except (TypeError, ValueError) as exc:
        if "must be real" in str(exc):
            raise
        raise ValueError(f"`t_span` must be a pair (t0, t1), got {t_span!r}.") from None
    if not (math.isfinite(t0) and math.isfinite(t1)):
        raise ValueError(f"`t_span` must be finite, got {t_span!r}.")
    if t0 == t1:
        raise ValueError(f"`t_span` must have t0 != t1 (t1 < t0 integrates backwards), got {t_span!r}.")
    if not math.isfinite(t1 - t0):
        raise ValueError(f"`t_span` must have a finite length t1 - t0 (it overflows float64), got {t_span!r}.")
    return t0, t1


# Step counts are float64-exact integers, so that t0 + k * h hits every grid time.
MAX_STEPS = 2**53


def _n_steps(n_steps, dt, span, name):
    """The fixed step count from ``n_steps`` or ``dt`` (exactly one given), bounded so that the grid is representable."""
    if dt is not None:
        dt = _positive_float(dt, "dt")
        q = span / dt
        if not (math.isfinite(q) and q <= MAX_STEPS):
            raise ValueError(f"dt={dt} gives {q:.3g} steps over the span {span}, more than {MAX_STEPS} (2**53); choose a larger dt.")
        n_steps = int(round(q))
        if n_steps < 1 or abs(n_steps * dt - span) > 1e-9 * span:
            raise ValueError(
                f"dt={dt} does not divide the span {span}; choose dt = span / n for an integer n, or pass n_steps."
            )
    n_steps = _positive_int(n_steps, "n_steps")
    if n_steps > MAX_STEPS:
        raise ValueError(f"`n_steps` must be at most 2**53 (float64-exact step indices), got {n_steps}; {name} would never finish.")
    return n_steps


def _check_step(t0, t1, n_steps):
    """The step must move the time: ``t0 + h != t0`` (else the grid collapses in round-off)."""
    h = (t1 - t0) / n_steps
    if h == 0.0 or t0 + h == t0 or t1 - h == t1:
        raise ValueError(
            f"the step (t1 - t0) / n_steps = {h:.3g} is below the float64 resolution of t_span ({t0}, {t1}); "
            "use fewer steps or shift the time origin (t_span closer to 0)."
        )
    return h


def _times(v, name):
    """A real, finite, non-empty 1-D float64 array of times (``save_at``, ``t_grid``)."""
    try:
        a = np.asarray(v)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a 1-D sequence of times.") from None
    if a.dtype.kind == "c":
        raise ValueError(f"`{name}` must be real times, got complex values.")
    if a.dtype.kind not in "fiu":
        try:
            a = np.array(v, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"`{name}` must be a 1-D sequence of real times, got dtype {a.dtype}.") from None
    s = np.atleast_1d(np.array(a, dtype=np.float64))
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"`{name}` must be a non-empty 1-D sequence of times, got shape {s.shape}.")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"`{name}` times must be finite.")
    return s


def _max_steps(v):
    v = _positive_int(v, "max_steps")
    if v >= 2**63:
        raise ValueError(f"`max_steps` must be below 2**63, got {v}.")
    return v


def _is_tensor(v) -> bool:
    return type(v).__module__.startswith("torch") and hasattr(v, "detach")


def _x0_array(x0):
    """``x0`` as float64 NumPy (numba and numpy backends); complex, boolean and non-numeric input is refused."""
    if _is_tensor(x0):
        if x0.requires_grad:
            raise ValueError("`x0` requires grad; gradients through solve need backend='torch'.")
        if x0.device.type != "cpu":
            raise ValueError(f"`x0` is on {x0.device}; use backend='torch' for device tensors, or pass x0.cpu().")
        _x0_tensor_kind(x0)
        x0 = x0.detach().numpy()
    if x0 is None:
        raise ValueError("`x0` must be a number or an array of numbers, got None.")
    try:
        a = np.asarray(x0)
    except (TypeError, ValueError):
        raise ValueError(f"`x0` must be a number or an array of numbers, got {type(x0).__name__}.") from None
    if a.dtype.kind == "c" or (a.dtype == object and any(isinstance(v, complex | np.complexfloating) for v in a.flat)):
        raise ValueError("`x0` must be real; got complex values (sdekit integrates real states: split real and "
                         "imaginary parts into two components).")
    if a.dtype.kind == "b":
        raise ValueError("`x0` must be real numbers, got booleans; pass x0.astype(float) if that is meant.")
    try:
        return np.array(a, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"`x0` must be a number or an array of numbers, got {type(x0).__name__}.") from None


def _x0_tensor_kind(x0):
    if x0.is_complex():
        raise ValueError(f"`x0` must be real; got a {x0.dtype} tensor (split real and imaginary parts into two components).")
    import torch

    if x0.dtype == torch.bool:
        raise ValueError("`x0` must be real numbers, got a bool tensor; pass x0.double() if that is meant.")


def _torch_device_dtype(x0, device, dtype):
    """Device and dtype of a torch solve: from ``x0`` if it is a tensor, else the arguments (cpu, float64)."""
    import torch

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
    if _is_tensor(x0):
        _x0_tensor_kind(x0)
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


def _x0_tensor(x0, device, dtype):
    import torch

    if _is_tensor(x0):
        return x0.to(dtype)
    return torch.as_tensor(_x0_array(x0), dtype=dtype, device=device)


def _x0(a, n_paths):
    """Shape checks of ``x0`` (a float64 array, or the torch backend's tensor)."""
    if a.ndim == 0:
        a = a.reshape(1, 1)
    elif a.ndim == 1:
        a = a.reshape(1, -1)
    elif a.ndim != 2:
        raise ValueError(f"`x0` must be a scalar, (dim,) or (n_paths, dim); got shape {a.shape}.")
    if a.shape[1] == 0:
        raise ValueError("`x0` must have at least one component.")
    if a.shape[0] == 0:
        raise ValueError(f"`x0` has 0 rows (shape {tuple(a.shape)}); pass one row per path, or a 1-D x0 shared by all paths.")
    if a.shape[0] > 1:
        if n_paths is None:
            n_paths = a.shape[0]
        elif a.shape[0] != n_paths:
            raise ValueError(
                f"`x0` has {a.shape[0]} rows but n_paths={n_paths}; pass one row per path, "
                "or a 1-D x0 shared by all paths."
            )
    finite = bool(a.isfinite().all()) if _is_tensor(a) else np.all(np.isfinite(a))
    if not finite:
        raise ValueError("`x0` contains NaN or infinite values.")
    return (a if _is_tensor(a) else np.ascontiguousarray(a)), (1 if n_paths is None else n_paths)


def broadcasts_to(shape, target) -> bool:
    """True when an array of ``shape`` broadcasts to ``target`` in the NumPy sense (trailing axes aligned)."""
    if len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(shape[::-1], target[::-1], strict=False))


def check_result(r, name, x_shape, target, extra=""):
    """``r`` (a user function's result) as a real float64 array broadcast to ``target``; one-line errors otherwise.

    Used on every call by the numpy backend and by the entry probes.
    """
    if not isinstance(r, np.ndarray) or r.dtype.kind != "f":
        if _is_tensor(r):
            raise ValueError(f"`{name}` returned a torch tensor; use backend='torch', or return a NumPy array.")
        kind = np.asarray(r).dtype.kind
        if kind == "c":
            raise ValueError(
                f"`{name}` returned complex values; sdekit integrates real states (split real and imaginary parts "
                "into two components)."
            )
        if kind not in "fiub":
            raise ValueError(f"`{name}` returned {type(r).__name__} of dtype {np.asarray(r).dtype}; return real numbers.")
        r = np.asarray(r, dtype=np.float64)
    if r.shape != target and not broadcasts_to(r.shape, target):
        raise ValueError(
            f"`{name}` returned shape {r.shape} for x of shape {tuple(x_shape)}; it must broadcast to {target}{extra} "
            "(one row per path, trailing axes aligned)."
        )
    return np.broadcast_to(r, target)


def _probe(fn, name, t, x, params, target, extra=""):
    """Call ``fn`` once on a small batch and check the shape and type it returns."""
    try:
        r = fn(t, x, params)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise ValueError(
            f"`{name}(t, x, params)` raised {type(exc).__name__}: {exc} when called with t={t} and x of shape "
            f"{x.shape} (a batch of states). Functions receive a batch x of shape (n, dim); "
            "index components as x[:, i]."
        ) from exc
    return check_result(r, name, x.shape, target, extra)


def probe_rows(dim: int, m: int) -> int:
    """Rows of the probe batch: at least 3 and neither ``dim`` nor ``m``, so that a result with a wrong number of
    rows can not pass as a per-component (or per-noise) vector by broadcasting."""
    n = 3
    while n in (dim, m):
        n += 1
    return n


def probe_batch(x0, n):
    """``n`` distinct states near the first rows of ``x0`` (row ``r`` shifted by ``r * 1e-3 * (1 + |x|)``)."""
    rows = x0[:n] if x0.shape[0] >= n else np.concatenate([x0, np.broadcast_to(x0[-1:], (n - x0.shape[0], x0.shape[1]))])
    return np.array(rows + 1e-3 * np.arange(n)[:, None] * (1.0 + np.abs(rows)))


def _quiet(call, x):
    """``call(x)``, or None where it raises or is not finite (probes never blame a function for off-domain states)."""
    try:
        with np.errstate(all="ignore"):
            r = np.asarray(call(x), dtype=np.float64)
    except Exception:  # noqa: BLE001 - a probe at a perturbed state may leave the function's domain
        return None
    return r if np.all(np.isfinite(r)) else None


# Relative tolerance of the row-independence probe. A batch and a single row take different BLAS kernels, so a
# function that computes in float32 inside (a network cast to float32) differs between the two by ~1e-6 relative;
# taking rows from a neighbouring path changes the value by ~1e-3 relative (probe rows differ by that much).
ROW_RTOL = 1e-5


def check_rows_independent(call, name, x, r0, rtol=ROW_RTOL):
    """Every path's value must depend on its own row only (the backends split the paths into batches).

    ``call(x)`` evaluates the function on the numpy batch ``x`` and returns its value broadcast to the target; ``r0``
    is ``call(x)``. Each row is compared with the same row evaluated alone, to ``rtol`` (default :data:`ROW_RTOL`).
    """
    if not np.all(np.isfinite(r0)):
        return
    for i in range(x.shape[0]):
        ri = _quiet(call, x[i : i + 1])
        if ri is None:
            continue
        if not np.allclose(ri[0], r0[i], rtol=rtol, atol=rtol * float(np.max(np.abs(r0), initial=0.0))):
            raise ValueError(
                f"`{name}` mixes paths: its row {i} on a batch differs from its value on that row alone. x holds one "
                "path per row; index components as x[:, i] (not rows, x[i]) and do not reduce over rows."
            )


def check_diagonal(call, x, g0, rtol):
    """Diagonal noise: sigma_i may depend on x_i and t only; ``(i, j)`` of a detected dependence on x_j, else None.

    Components are perturbed in groups (by the bits of their index, and the complements): every pair i != j
    differs in some bit, so 4 ceil(log2 dim) calls see every dependence; a hit is then pinned down per component.
    """
    dim = x.shape[1]
    scale = rtol * max(float(np.max(np.abs(g0), initial=0.0)), 1e-300)

    def moved(S, delta):
        xq = x.copy()
        xq[:, S] += delta * (1.0 + np.abs(xq[:, S]))
        g1 = _quiet(call, xq)
        if g1 is None:
            return None
        return ~np.all(np.abs(g1 - g0) <= rtol * np.maximum(np.abs(g0), np.abs(g1)) + scale, axis=0)

    idx = np.arange(dim)
    for b in range(max(1, math.ceil(math.log2(dim)))):
        on = ((idx >> b) & 1) == 1
        for S in (on, ~on):
            for delta in (0.25, 0.6):
                changed = moved(S, delta)
                if changed is None or not np.any(changed & ~S):
                    continue
                i = int(np.argmax(changed & ~S))
                for j in np.nonzero(S)[0]:
                    c = moved(np.array([j]), delta)
                    if c is not None and c[i]:
                        return i, int(j)
                return i, int(np.nonzero(S)[0][0])
    return None


def diagonal_error(i, j, dim):
    return ValueError(
        f"noise='diagonal' but component {i} of `diffusion` depends on x[:, {j}] (diagonal noise needs sigma_i(t, x_i)); "
        f"declare noise='general' with noise_dim={dim}, returning the (dim, dim) matrix diag(sigma) per path, and solve "
        "with 'euler' (Ito) or 'euler_heun' (Stratonovich): 'milstein' and 'sriw1' assume diagonal noise."
    )


def check_functions(problem, x0, dim, m, evaluate, rtol=1e-9):
    """Probe the user's functions on a small batch near ``x0``: shapes and types, paths kept apart, the declared noise.

    ``evaluate(fn, name, x, target, extra)`` calls ``fn`` on the NumPy batch ``x`` the way a backend does (its
    device and dtype) and returns the checked value as a float64 NumPy array broadcast to ``target``. ``rtol`` is
    the backend's rounding level, used by the additive and diagonal checks (rows: at least :data:`ROW_RTOL`).
    """
    n = probe_rows(dim, m)
    xp = probe_batch(x0, n)
    fns = [("rhs", problem.rhs, (n, dim), "")] if not problem.is_sde else [("drift", problem.drift, (n, dim), "")]
    if problem.is_sde:
        if problem.matrix_noise:
            extra = f" (noise={problem.noise!r} with noise_dim={m}: a (dim, m) matrix per path)"
            fns.append(("diffusion", problem.diffusion, (n, dim, m), extra))
        else:
            fns.append(("diffusion", problem.diffusion, (n, dim), f" (noise={problem.noise!r})"))
    values = {}
    for name, fn, target, extra in fns:

        def call(x, fn=fn, name=name, target=target, extra=extra):
            return evaluate(fn, name, x, (x.shape[0],) + target[1:], extra)

        r0 = call(xp)
        check_rows_independent(call, name, xp, r0, max(rtol, ROW_RTOL))
        values[name] = (r0, call)
    if not problem.is_sde:
        return
    g0, call = values["diffusion"]
    if problem.noise == "additive":
        if not np.allclose(g0, call(xp + 1.0), rtol=rtol, atol=0.0):
            raise ValueError(
                "noise='additive' but `diffusion` depends on x; declare noise='diagonal', 'scalar' or 'general'."
            )
    elif problem.noise == "diagonal" and dim > 1:
        hit = check_diagonal(call, xp, g0, rtol)
        if hit is not None:
            raise diagonal_error(*hit, dim)


def _check_problem_shapes(problem, x0, t0, dim, m):
    """The entry probe of the numba and numpy backends (float64 NumPy calls)."""
    p = problem.params
    check_functions(problem, x0, dim, m, lambda fn, name, x, target, extra: _probe(fn, name, t0, x, p, target, extra))


def _memory_limit() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def memory_need(backend, *, adaptive, n_save, n_paths, dim, m, n_steps, itemsize=8, matrix_noise=False,
                default_save=True, n_threads=None, device=None):
    """Bytes a solve allocates at its peak, by backend: an upper estimate of every array it makes.

    Counted: the saved states (torch: the list of states, their stack and one copy for ``cat``/NaN masking), the
    saved times and grid indices with the temporaries that compute them, the per-path failure records, and the
    working set: Numba's per-thread sub-batch, Brownian blocks and tree state; NumPy's increments of a batch of
    paths (all its steps); torch's batch working set.
    """
    f8 = 8
    out = n_save * n_paths * dim * itemsize
    save = (3 if default_save else 6) * n_save * f8  # times + indices + one temporary (save_at: a few more)
    paths = 3 * n_paths * f8  # failure times, codes, the expanded x0
    width = dim * max(m, 1) if matrix_noise else max(dim, m, 1)
    if backend == "numba":
        if n_threads is None:
            import numba

            n_threads = numba.get_num_threads()
        if adaptive:
            work = n_threads * (2 * n_save * dim + 16 * dim) * f8
        else:
            from .backends import numba_backend

            nb = min(numba_backend.sub_batch(dim, m), n_paths)
            levels = max(1, math.ceil(math.log2(max(n_steps, 1)))) + 1
            blocks = 2 * numba_backend.block_steps(nb, m, max(1, n_steps)) * nb * m * f8
            work = n_threads * (blocks + 4 * levels * nb * m * f8 + 24 * nb * width * f8)
        return out + save + paths + work
    if backend == "numpy":
        if adaptive:
            work = 16 * dim * f8
        else:
            from .backends import numpy_backend

            nb = numpy_backend.batch_paths(n_paths, n_steps, m)
            work = 3 * n_steps * nb * m * f8 + 24 * nb * width * f8
        return out + save + paths + work
    from .backends import torch_backend

    nb = torch_backend.paths_per_batch(n_paths, width, device)
    work = 16 * nb * width * itemsize + 4 * nb * max(m, 1) * min(n_steps, 1 << 12) * itemsize
    return 3 * out + save + paths + work


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


def _check_memory(backend, scheme, problem, n_save, n_paths, dim, m, n_steps, dtype, device, default_save):
    """Refuse a solve whose arrays (every one it allocates, see :func:`memory_need`) exceed half the memory."""
    itemsize = 8 if dtype is None else dtype.itemsize
    need = memory_need(backend, adaptive=scheme.adaptive, n_save=n_save, n_paths=n_paths, dim=dim, m=m,
                       n_steps=n_steps or 0, itemsize=itemsize, matrix_noise=bool(problem.is_sde and problem.matrix_noise),
                       default_save=default_save, device=device)
    limit, where = _memory_limit(), "memory"
    if device is not None and device.type == "cuda":
        import torch

        limit, where = torch.cuda.mem_get_info(device)[0] // 2, f"free memory on {device}"
    if need > limit:
        raise ValueError(
            f"storing {n_save} time points for {n_paths} paths of dim {dim} (with the solve's work arrays) needs "
            f"{need / 2**30:.1f} GiB (more than half the {where}); pass save_at with fewer times (e.g. save_at=[t1])."
        )


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
) -> Solution:
    """Solve an SDE or ODE for many paths.

    Parameters
    ----------
    problem : SDE or ODE
    x0 : float, (dim,) or (n_paths, dim)
        Initial state, shared by all paths or one row per path.
    t_span : (t0, t1)
        ``t1 < t0`` integrates backwards in time (reverse-time SDEs run from
        ``T`` down to ``eps``); the Brownian increments then run along that
        direction.
    method : str
        A scheme from :func:`sdekit.list_schemes`: SDE ``"euler"``,
        ``"euler_heun"``, ``"milstein"``, ``"sra1"``, ``"sriw1"``; ODE ``"euler"``,
        ``"heun"``, ``"midpoint"``, ``"rk4"``, ``"dopri5"`` (adaptive).
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
        Tolerances of adaptive methods (defaults 1e-6 and 1e-9).
    max_steps : int
        Step budget per path of adaptive methods.
    device, dtype : optional
        Torch backend only: where and in which precision to solve
        (``torch.float32`` or ``torch.float64``). Default: those of ``x0``
        if it is a tensor, else ``"cpu"`` and ``float64``.

    Returns
    -------
    Solution
        ``x`` has shape ``(len(t), n_paths, dim)``. Paths whose state became
        non-finite are reported in ``failed`` / ``failure_time`` and hold NaN
        from then on; the other paths are unaffected.
    """
    if isinstance(problem, SemilinearODE):
        if method in semilinear.ORDERS:
            if rtol is not None or atol is not None:
                raise ValueError(f"`rtol`/`atol` apply to adaptive methods ('dopri5'); {method} uses fixed steps.")
            return _solve_semilinear(problem, x0, t_span, method, n_steps, t_grid, n_paths, save_at, backend, device,
                                     dtype, seed, brownian, compile, dt)
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
    scheme = get_scheme(method, problem)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}.")
    if backend == "torch":
        device, dtype = _torch_device_dtype(x0, device, dtype)
    else:
        if device is not None or dtype is not None or compile:
            raise ValueError(
                f"`device`, `dtype` and `compile` apply to backend='torch'; backend={backend!r} runs compiled "
                "Numba (or NumPy) on the CPU in float64."
            )
        for i, v in enumerate(problem.params):
            if _is_tensor(v):
                raise ValueError(
                    f"`params[{i}]` is a torch tensor; solve with backend='torch', or pass a NumPy array "
                    "(tensor.detach().cpu().numpy())."
                )
    t0, t1 = _t_span(t_span)
    span = abs(t1 - t0)
    if n_paths is not None:
        n_paths = _positive_int(n_paths, "n_paths")
    if brownian is not None and not isinstance(brownian, BrownianPath):
        raise ValueError(f"`brownian` must be an sdekit.BrownianPath, got {type(brownian).__name__}.")
    if brownian is not None and n_paths is None:
        n_paths = brownian.n_paths
    x0a, n_paths = _x0(_x0_tensor(x0, device, dtype) if backend == "torch" else _x0_array(x0), n_paths)
    dim = x0a.shape[1]
    m = problem.noise_dim(dim) if problem.is_sde else 0

    if scheme.adaptive:
        if n_steps is not None or dt is not None:
            raise ValueError(f"{scheme.name} chooses its own steps; drop `n_steps`/`dt` and set `rtol`/`atol`.")
        rtol = 1e-6 if rtol is None else _positive_float(rtol, "rtol")
        atol = 1e-9 if atol is None else _positive_float(atol, "atol")
        max_steps = _max_steps(max_steps)
        h = None
        if compile:
            raise ValueError("`compile` applies to fixed-step methods; dopri5 decides its steps at run time.")
    else:
        if rtol is not None or atol is not None:
            raise ValueError(f"`rtol`/`atol` apply to adaptive methods ('dopri5'); {scheme.name} uses fixed steps.")
        if (n_steps is None) == (dt is None):
            raise ValueError(f"{scheme.name} uses fixed steps: give exactly one of `n_steps` or `dt`.")
        n_steps = _n_steps(n_steps, dt, span, "the solve")
        h = _check_step(t0, t1, n_steps)

    if problem.is_sde:
        if brownian is not None:
            if seed is not None:
                raise ValueError("give either `seed` or `brownian`, not both (the path carries its own seed).")
            lo, hi = min(t0, t1), max(t0, t1)
            if not (math.isclose(brownian.t_span[0], lo, abs_tol=1e-12 * span)
                    and math.isclose(brownian.t_span[1], hi, abs_tol=1e-12 * span)):
                raise ValueError(
                    f"`brownian` covers {brownian.t_span} but the solve spans ({lo}, {hi}); "
                    "make the path on the solve's interval."
                )
            if brownian.n_paths != n_paths:
                raise ValueError(f"`brownian` has {brownian.n_paths} paths but n_paths={n_paths}.")
            if brownian.noise_dim != m:
                raise ValueError(
                    f"`brownian` has noise_dim={brownian.noise_dim} but this problem needs {m} Brownian components."
                )
            if scheme.levy_area and not brownian.levy_area:
                raise ValueError(f"{scheme.name} needs the Lévy area: make the path with levy_area=True.")
            brownian.level(n_steps)
        else:
            if seed is None:
                seed = int(np.random.SeedSequence().entropy)
            elif not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
                raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}.")
            brownian = BrownianPath.for_steps(
                seed, (min(t0, t1), max(t0, t1)), n_steps, n_paths=n_paths, noise_dim=m, levy_area=scheme.levy_area
            )
    elif brownian is not None or seed is not None:
        raise ValueError("an ODE draws no noise: drop `seed`/`brownian`.")

    params_t = ()
    if backend == "torch":
        from .backends import torch_backend

        params_t = torch_backend.params_on(problem.params, device, dtype)
        torch_backend.check_problem(problem, x0a, params_t, t0, dim, m)
    else:
        _check_problem_shapes(problem, x0a, t0, dim, m)
    s_at = None if save_at is None else _times(save_at, "save_at")
    n_save = s_at.size if s_at is not None else (2 if scheme.adaptive else n_steps + 1)
    _check_memory(backend, scheme, problem, n_save, n_paths, dim, m, n_steps, dtype, device, save_at is None)
    save_t, save_idx = _save_points(s_at, t0, t1, h, n_steps)
    step, tab, n_f, n_g = step_plan(scheme, problem, dim)
    if backend == "torch":
        out = None  # the backend returns a tensor
    else:
        out = np.full((save_t.size, n_paths, dim), np.nan) if scheme.adaptive else np.empty((save_t.size, n_paths, dim))
    plan = _Plan(
        problem=problem, scheme=scheme, step=step, tab=tab, x0=x0a, dim=dim, m=m, n_paths=n_paths,
        t0=t0, t1=t1, h=h, n_steps=n_steps, reverse=t1 < t0, brownian=brownian if problem.is_sde else None,
        save_idx=save_idx, save_t=save_t, out=out, failure_time=np.full(n_paths, np.nan),
        codes=np.zeros(n_paths, dtype=np.int64), rtol=rtol, atol=atol, max_steps=max_steps,
        device=device, dtype=dtype, params_t=params_t, compile=bool(compile),
    )
    mod = importlib.import_module(f".backends.{backend}_backend", __package__)
    if scheme.adaptive:
        acc, rej, nfev = mod.run_adaptive(plan)
        stats = Stats(acc + rej, acc, rej, nfev, 0, n_paths)
    else:
        mod.run_fixed(plan)
        total = n_steps * n_paths
        stats = Stats(total, total, 0, n_f * total, n_g * total if m else 0, n_paths)
    return _solution(plan, stats, backend)


def _solution(plan, stats, backend):
    failed = ~np.isnan(plan.failure_time)
    n_failed = int(failed.sum())
    if n_failed:
        first = plan.failure_time[failed]
        when = first.min() if plan.t1 > plan.t0 else first.max()
        codes = {int(c) for c in plan.codes[failed] if c}
        why = ", ".join(_FAILURE_TEXT[c] for c in sorted(codes)) if codes else "non-finite state"
        status = "failure"
        message = (
            f"{n_failed} of {plan.n_paths} paths failed ({why}; first at t={when:.6g}); see Solution.failed "
            "and Solution.failure_time. The other paths are complete."
        )
    else:
        status = "success"
        message = f"{plan.n_paths} paths integrated with {plan.scheme.name} ({stats.n_accepted // plan.n_paths} steps per path on average)."
    return Solution(
        t=plan.save_t, x=plan.out, stats=stats, status=status, message=message, brownian=plan.brownian,
        failed=failed, failure_time=plan.failure_time, method=plan.scheme.name, backend=backend,
    )


def _solve_semilinear(problem, x0, t_span, method, n_steps, t_grid, n_paths, save_at, backend, device, dtype, seed,
                      brownian, compile_, dt=None):
    """``solve`` for the exponential integrators (one evaluation of D per step on the whole batch)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}.")
    if seed is not None or brownian is not None:
        raise ValueError("an ODE draws no noise: drop `seed`/`brownian`.")
    if compile_:
        raise ValueError("`compile` applies to the Runge–Kutta schemes; the exponential integrators run eagerly.")
    if backend == "torch":
        device, dtype = _torch_device_dtype(x0, device, dtype)
    elif device is not None or dtype is not None:
        raise ValueError(f"`device` and `dtype` apply to backend='torch', not {backend!r}.")
    t0, t1 = _t_span(t_span)
    if n_paths is not None:
        n_paths = _positive_int(n_paths, "n_paths")
    if sum(v is not None for v in (n_steps, dt, t_grid)) > 1:
        raise ValueError("give one of `n_steps`, `dt` (uniform steps) or `t_grid` (the step times), not several.")
    if t_grid is None:
        if n_steps is None and dt is None:
            raise ValueError(f"{method} needs `n_steps` or `dt` (uniform steps), or `t_grid` (the step times).")
        n_steps = _n_steps(n_steps, dt, abs(t1 - t0), method)
        _check_step(t0, t1, n_steps)
    else:
        t_grid = _times(t_grid, "t_grid")
    grid = semilinear._grid(t0, t1, n_steps, t_grid)
    n = grid.size - 1
    xa, n_paths = _x0(_x0_tensor(x0, device, dtype) if backend == "torch" else _x0_array(x0), n_paths)
    dim = xa.shape[1]
    if backend == "torch":
        from .backends import torch_backend

        params = torch_backend.params_on(problem.params, device, dtype)
        x = xa.expand(n_paths, dim) if xa.shape[0] == 1 else xa
    else:
        for i, v in enumerate(problem.params):
            if _is_tensor(v):
                raise ValueError(f"`params[{i}]` is a torch tensor; solve with backend='torch'.")
        params = problem.params
        xp = probe_batch(xa, probe_rows(dim, 0))
        r0 = _probe(problem.nonlinear, "nonlinear", t0, xp, params, xp.shape)
        check_rows_independent(lambda v: check_result(problem.nonlinear(t0, v, params), "nonlinear", v.shape, v.shape),
                               "nonlinear", xp, r0, 1e-9)
        x = None
    n_save = (n + 1) if save_at is None else None
    if save_at is None:
        save_idx = np.arange(n + 1)
    else:
        s = _times(save_at, "save_at")
        n_save = s.size
        save_idx = np.array([int(np.argmin(np.abs(grid - v))) for v in s])
        off = np.abs(grid[save_idx] - s)
        if s.ndim != 1 or np.any(off > 1e-10 * abs(t1 - t0)) or np.any(np.diff(save_idx) <= 0):
            raise ValueError("`save_at` times must be distinct points of the step grid, in the order of integration.")
    itemsize = 8 if dtype is None else dtype.itemsize
    need = 2 * n_save * n_paths * dim * itemsize + 8 * (4 * grid.size + 3 * n_paths) + 16 * n_paths * dim * itemsize
    if need > _memory_limit():
        raise ValueError(
            f"storing {n_save} time points for {n_paths} paths of dim {dim} needs {need / 2**30:.1f} GiB (more than half "
            "the memory); pass save_at with fewer times (e.g. save_at=[t1])."
        )
    if x is None:
        x = np.array(np.broadcast_to(xa, (n_paths, dim)))
    saved, fail_t = semilinear.run(problem, x, grid, method, save_idx, backend, params,
                                   "torch" if backend == "torch" else "numpy")
    if backend == "torch":
        import torch

        out = torch.stack(saved)
    else:
        out = np.stack(saved)
    total = n * n_paths
    stats = Stats(total, total, 0, semilinear.evaluations(method, n) * n_paths, 0, n_paths)
    plan = _Plan(problem=problem, scheme=SCHEMES[("semilinear", method)], step=None, tab=None, x0=xa, dim=dim, m=0,
                 n_paths=n_paths, t0=t0, t1=t1, h=None, n_steps=n, reverse=t1 < t0, brownian=None, save_idx=save_idx,
                 save_t=grid[save_idx], out=out, failure_time=fail_t, codes=np.zeros(n_paths, dtype=np.int64),
                 rtol=None, atol=None, max_steps=n)
    return _solution(plan, stats, backend)

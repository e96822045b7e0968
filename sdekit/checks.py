"""Argument and function checks shared by ``solve`` and the backends: one-line ValueErrors that name the fix.

* arguments: positive counts and numbers, the time span, step counts and sizes, time sequences;
* initial states: ``x0`` as a real float64 array (or the torch backend's tensor) of shape ``(rows, dim)``;
* output paths of the command lines (:func:`writable_path`);
* optional dependencies (torch, matplotlib, scikit-learn: the extras of the distribution), :func:`require`;
* the user's functions: the entry probe that calls them once on a small batch (shapes and types, paths kept
  apart, the declared noise structure) and the per-call result check of the NumPy backend.
"""

from __future__ import annotations

import importlib
import math
import numbers
import os
import tempfile

import numpy as np


def positive_int(v, name):
    """``v`` as an int >= 1; the error names the argument ``name``."""
    if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {v!r}.")
    return int(v)


def positive_float(v, name):
    """``v`` as a finite float > 0."""
    if isinstance(v, complex | np.complexfloating):
        raise ValueError(f"`{name}` must be a positive real number, got {v!r}.")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a positive number, got {v!r}.") from None
    if not (math.isfinite(f) and f > 0):
        raise ValueError(f"`{name}` must be a positive finite number, got {v!r}.")
    return f


def real_scalar(v, name):
    """``float(v)``, refusing complex numbers (``float`` of a NumPy complex would drop the imaginary part)."""
    if isinstance(v, complex | np.complexfloating) or (is_tensor(v) and v.is_complex()):
        raise ValueError(f"`{name}` must be real, got {v!r}.")
    return float(v)


def time_span(t_span):
    """``(t0, t1)`` as floats: finite, distinct, with a finite length."""
    try:
        t0, t1 = (real_scalar(v, "t_span") for v in t_span)
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


def step_count(n_steps, dt, span, name):
    """The fixed step count from ``n_steps`` or ``dt`` (exactly one given), bounded so that the grid is representable."""
    if dt is not None:
        dt = positive_float(dt, "dt")
        q = span / dt
        if not (math.isfinite(q) and q <= MAX_STEPS):
            raise ValueError(f"dt={dt} gives {q:.3g} steps over the span {span}, more than {MAX_STEPS} (2**53); choose a larger dt.")
        n_steps = int(round(q))
        if n_steps < 1 or abs(n_steps * dt - span) > 1e-9 * span:
            raise ValueError(
                f"dt={dt} does not divide the span {span}; choose dt = span / n for an integer n, or pass n_steps."
            )
    n_steps = positive_int(n_steps, "n_steps")
    if n_steps > MAX_STEPS:
        raise ValueError(f"`n_steps` must be at most 2**53 (float64-exact step indices), got {n_steps}; {name} would never finish.")
    return n_steps


def step_size(t0, t1, n_steps):
    """The step must move the time: ``t0 + h != t0`` (else the grid collapses in round-off)."""
    h = (t1 - t0) / n_steps
    if h == 0.0 or t0 + h == t0 or t1 - h == t1:
        raise ValueError(
            f"the step (t1 - t0) / n_steps = {h:.3g} is below the float64 resolution of t_span ({t0}, {t1}); "
            "use fewer steps or shift the time origin (t_span closer to 0)."
        )
    return h


def times(v, name):
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


def step_budget(v):
    """``max_steps`` of an adaptive solve: a positive int64."""
    v = positive_int(v, "max_steps")
    if v >= 2**63:
        raise ValueError(f"`max_steps` must be below 2**63, got {v}.")
    return v


def is_tensor(v) -> bool:
    """True for a torch tensor (checked without importing torch)."""
    return type(v).__module__.startswith("torch") and hasattr(v, "detach")


def x0_array(x0):
    """``x0`` as float64 NumPy (numba and numpy backends); complex, boolean and non-numeric input is refused."""
    if is_tensor(x0):
        if x0.requires_grad:
            raise ValueError("`x0` requires grad; gradients through solve need backend='torch'.")
        if x0.device.type != "cpu":
            raise ValueError(f"`x0` is on {x0.device}; use backend='torch' for device tensors, or pass x0.cpu().")
        x0_tensor_kind(x0)
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


def x0_tensor_kind(x0):
    if x0.is_complex():
        raise ValueError(f"`x0` must be real; got a {x0.dtype} tensor (split real and imaginary parts into two components).")
    import torch

    if x0.dtype == torch.bool:
        raise ValueError("`x0` must be real numbers, got a bool tensor; pass x0.double() if that is meant.")


def initial_states(a, n_paths):
    """``(x0 as (rows, dim), n_paths)``: shape checks of ``x0`` (a float64 array, or the torch backend's tensor).

    ``rows`` is 1 (one state shared by all paths) or ``n_paths``; ``n_paths`` defaults to the rows.
    """
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
    finite = bool(a.isfinite().all()) if is_tensor(a) else np.all(np.isfinite(a))
    if not finite:
        raise ValueError("`x0` contains NaN or infinite values.")
    return (a if is_tensor(a) else np.ascontiguousarray(a)), (1 if n_paths is None else n_paths)


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
        if is_tensor(r):
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


def probe(fn, name, t, x, params, target, extra=""):
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


def quiet(call, x):
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
    atol = rtol * float(np.max(np.abs(r0), initial=0.0))
    for i in range(x.shape[0]):
        ri = quiet(call, x[i : i + 1])
        if ri is None:
            continue
        # np.allclose's test, written out (both sides are finite here; allclose costs ~20 us on a few numbers)
        if not np.all(np.abs(ri[0] - r0[i]) <= atol + rtol * np.abs(r0[i])):
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
        g1 = quiet(call, xq)
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


JAC_RTOL = 1e-3  # agreement of a user Jacobian with central differences of the drift (relative to the larger one)


def check_jacobian(jac, f0, call_f, xp, dim, evaluate, rtol):
    """Refuse a ``jac`` of the wrong shape, mixing rows, or disagreeing with central differences of the drift.

    The differences use the step ``delta_j = 1e-4 (1 + |x_j|)`` (float64; ``1e-2 (1 + |x_j|)`` when the backend
    computes in float32, ``rtol`` above 1e-6), truncation error ``O(delta^2)``; the check compares
    ``max |J - J_fd|`` with ``JAC_RTOL`` times ``max |J_fd| + max |f| / (1 + max |x|)`` (the second term bounds the
    differences' rounding), which a Jacobian with a wrong entry, sign or factor fails.
    """
    name = "jac"

    def call(x):
        return evaluate(jac, name, x, (x.shape[0], dim, dim), " (the drift's Jacobian, J[r, i, j] = d f_i / d x_j)")

    J = call(xp)
    check_rows_independent(call, name, xp, J, ROW_RTOL)
    step = (1e-4 if rtol <= 1e-6 else 1e-2) * (1.0 + np.abs(xp))
    J_fd = np.empty_like(J)
    for j in range(dim):
        up, down = xp.copy(), xp.copy()
        up[:, j] += step[:, j]
        down[:, j] -= step[:, j]
        J_fd[:, :, j] = (call_f(up) - call_f(down)) / (2.0 * step[:, j : j + 1])
    scale = float(np.max(np.abs(J_fd), initial=0.0)) + float(np.max(np.abs(f0), initial=0.0)) / (1.0 + float(np.max(np.abs(xp))))
    err = np.abs(J - J_fd)
    worst = np.unravel_index(int(np.argmax(err)), err.shape)
    if not err[worst] <= JAC_RTOL * max(scale, 1e-300):
        r, i, j = (int(v) for v in worst)
        raise ValueError(
            f"`jac` disagrees with the drift: at the probe point J[{i}, {j}] = {J[worst]:.6g} but central differences of "
            f"the drift give {J_fd[worst]:.6g} (row {r}); fix jac (J[r, i, j] = d drift_i / d x_j) or drop it to use "
            "finite differences."
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
    if getattr(problem, "jac", None) is not None:
        check_jacobian(problem.jac, *values["drift" if problem.is_sde else "rhs"], xp, dim, evaluate, rtol)
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


def writable_path(path, option: str, *, folder: bool = False) -> None:
    """Refuse, before any long work, an output ``path`` that cannot be written (one line naming ``option``).

    The nearest existing ancestor must be a folder we can create files in (probed
    with a temporary file, which also holds for root and read-only mounts); an
    existing ``path`` must be a file (a folder for ``folder=True``).
    """
    p = os.path.abspath(path)
    if os.path.exists(p) and os.path.isdir(p) != folder:
        kind = "a file" if folder else "a folder"
        raise ValueError(f"{option} {path} is {kind}; give {'a folder' if folder else 'a file name'} there.")
    parent = p if folder and os.path.isdir(p) else os.path.dirname(p)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{option} {path} cannot be written: {parent} is a file, not a folder; choose another path.")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise ValueError(f"{option} {path} cannot be written ({exc.strerror or exc} in {parent}); choose a "
                         "writable path.") from None


# import name -> the distribution pip installs it from, where they differ
_DISTRIBUTIONS = {"sklearn": "scikit-learn"}


class MissingDependency(ModuleNotFoundError, ValueError):
    """An optional dependency is not installed: the message names the extra of sdekit that installs it.

    It is an ``ImportError`` (what a missing package raises) and a ``ValueError`` (the command lines report those
    in one line: the argument that asked for the package cannot be served by this installation).
    """


def require(module: str, *, extra: str, what: str):
    """Import and return ``module`` (an optional dependency) that ``what`` needs.

    If its package is not installed, raise :class:`MissingDependency` in one line: what needs it and the pip
    command that installs the ``extra`` of sdekit holding it. An import error from inside an installed package
    (a broken installation) is raised unchanged.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.partition(".")[0]
        if exc.name is None or exc.name.partition(".")[0] != top:
            raise
        package = _DISTRIBUTIONS.get(top, top)
        raise MissingDependency(
            f"{what} needs {package}, which is not installed; install the sdekit extra that brings it, from the "
            f'sdekit checkout: pip install -c constraints.txt -e ".[{extra}]"', name=top) from None

"""Math functions that work unchanged on every backend.

A problem written with ``+ - * / **`` and these functions solves on the
``numpy`` and ``numba`` backends (and on ``torch`` tensors) without changes::

    from sdekit import ops
    drift = lambda t, x, p: p[0] * ops.sin(x) - x ** 3

Inside Numba-compiled code each function is NumPy's ufunc; called from Python
it dispatches on the argument: a ``torch.Tensor`` goes to ``torch``, anything
else to NumPy. Plain ``np.sin`` also works on the numpy and numba backends,
but not on torch tensors that carry gradients or live on a GPU.
"""

from __future__ import annotations

import inspect
import sys

import numba
import numpy as np
from numba.extending import overload

__all__ = [
    "abs", "arccos", "arctan", "cos", "cosh", "exp", "expm1", "log", "log1p", "sigmoid", "sin", "sinh", "sqrt",
    "tan", "tanh", "where", "maximum", "minimum", "transpose", "concatenate", "jittable",
]


def _torch_tensor(x):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _unary(name, np_fn, torch_name):
    def fn(x):
        if _torch_tensor(x):
            return getattr(sys.modules["torch"], torch_name)(x)
        return np_fn(x)

    fn.__name__ = name
    fn.__qualname__ = name
    fn.__doc__ = f"Elementwise ``{name}`` on NumPy arrays, Numba-compiled code and torch tensors."

    @overload(fn, inline="always")
    def _ov(x):
        return lambda x: np_fn(x)

    return fn


def _np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


abs = _unary("abs", np.abs, "abs")  # noqa: A001
arccos = _unary("arccos", np.arccos, "arccos")
arctan = _unary("arctan", np.arctan, "arctan")
cos = _unary("cos", np.cos, "cos")
cosh = _unary("cosh", np.cosh, "cosh")
exp = _unary("exp", np.exp, "exp")
expm1 = _unary("expm1", np.expm1, "expm1")
log = _unary("log", np.log, "log")
log1p = _unary("log1p", np.log1p, "log1p")
sin = _unary("sin", np.sin, "sin")
sinh = _unary("sinh", np.sinh, "sinh")
sqrt = _unary("sqrt", np.sqrt, "sqrt")
tan = _unary("tan", np.tan, "tan")
tanh = _unary("tanh", np.tanh, "tanh")


def sigmoid(x):
    """Logistic function ``1 / (1 + exp(-x))`` on every backend."""
    if _torch_tensor(x):
        return sys.modules["torch"].sigmoid(x)
    return _np_sigmoid(x)


@overload(sigmoid, inline="always")
def _ov_sigmoid(x):
    return lambda x: 1.0 / (1.0 + np.exp(-x))


def _binary(name, np_fn, torch_name):
    def fn(a, b):
        if _torch_tensor(a) or _torch_tensor(b):
            torch = sys.modules["torch"]
            a_, b_ = (v if _torch_tensor(v) else torch.as_tensor(v) for v in (a, b))
            return getattr(torch, torch_name)(a_, b_)
        return np_fn(a, b)

    fn.__name__ = name
    fn.__qualname__ = name
    fn.__doc__ = f"Elementwise ``{name}`` on NumPy arrays, Numba-compiled code and torch tensors."

    @overload(fn, inline="always")
    def _ov(a, b):
        return lambda a, b: np_fn(a, b)

    return fn


maximum = _binary("maximum", np.maximum, "maximum")
minimum = _binary("minimum", np.minimum, "minimum")


def where(cond, a, b):
    """``a`` where ``cond`` holds, else ``b``, on every backend."""
    if _torch_tensor(cond) or _torch_tensor(a) or _torch_tensor(b):
        torch = sys.modules["torch"]
        return torch.where(cond, a, b)
    return np.where(cond, a, b)


@overload(where, inline="always")
def _ov_where(cond, a, b):
    return lambda cond, a, b: np.where(cond, a, b)


def transpose(a, axes):
    """Permute the axes of ``a`` (``np.transpose(a, axes)``; ``tensor.permute(axes)`` on torch)."""
    if _torch_tensor(a):
        return a.permute(tuple(axes))
    return np.transpose(a, axes)


@overload(transpose, inline="always")
def _ov_transpose(a, axes):
    return lambda a, axes: np.transpose(a, axes)


def concatenate(arrays, axis):
    """Join a tuple of arrays along ``axis`` (``np.concatenate``; ``torch.cat`` on tensors)."""
    if any(_torch_tensor(a) for a in arrays):
        return sys.modules["torch"].cat(tuple(arrays), dim=axis)
    return np.concatenate(arrays, axis)


@overload(concatenate, inline="always")
def _ov_concatenate(arrays, axis):
    return lambda arrays, axis: np.concatenate(arrays, axis)


def jittable(fn):
    """Let a helper function be called from problem functions on every backend.

    Problem functions run as Python on the numpy and torch backends and are
    compiled by Numba on the numba backend, where every function they call
    must be compilable. ``jittable(fn)`` registers ``fn`` with Numba (it is
    compiled, for the argument types of each call, when a compiled function
    calls it) and returns ``fn`` unchanged, so the same Python function keeps
    working on NumPy arrays and torch tensors::

        @ops.jittable
        def alpha(t, p):
            return ops.exp(-0.5 * p[0] * t)

        drift = lambda t, x, p: -alpha(t, p) * x   # numba, numpy and torch

    ``fn`` must be written with ``ops`` functions and array operators (no
    keyword-only or variadic arguments). Registering twice is harmless;
    Numba-compiled functions are returned as they are.
    """
    if isinstance(fn, numba.core.dispatcher.Dispatcher) or getattr(fn, "_sdekit_jittable", False):
        return fn
    if not callable(fn):
        raise ValueError(f"`jittable` takes a function, got {type(fn).__name__}.")
    params = inspect.signature(fn).parameters.values()
    if any(p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params):
        raise ValueError(f"`jittable`: {fn.__name__} must take positional arguments only (no *args, **kw or keyword-only).")
    ns = {"fn": fn}
    names = []
    for i, p in enumerate(params):  # defaults too: Numba requires the typer's signature to be the function's
        if p.default is p.empty:
            names.append(p.name)
        else:
            ns[f"_default{i}"] = p.default
            names.append(f"{p.name}=_default{i}")
    exec(f"def typer({', '.join(names)}):\n    return fn\n", ns)  # noqa: S102 - the typing function mirrors fn's signature
    overload(fn)(ns["typer"])
    try:
        fn._sdekit_jittable = True
    except AttributeError:  # builtins and other objects without a __dict__
        pass
    return fn

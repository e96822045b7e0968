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

import sys

import numpy as np
from numba.extending import overload

__all__ = [
    "abs", "arctan", "cos", "cosh", "exp", "expm1", "log", "log1p", "sigmoid", "sin", "sinh", "sqrt",
    "tan", "tanh", "where", "maximum", "minimum", "transpose",
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

"""Problems: stochastic and ordinary differential equations."""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable

import numpy as np

from .params import is_record

__all__ = ["SDE", "ODE", "NOISE_TYPES", "CALCULI"]

NOISE_TYPES = ("scalar", "diagonal", "additive", "general")
CALCULI = ("ito", "stratonovich")


def _check_callable(fn, name):
    if not callable(fn):
        raise ValueError(f"`{name}` must be a function f(t, x, params), got {type(fn).__name__}.")


def _normalise_params(params) -> tuple:
    """Params become a tuple (or record) of floats, float64 arrays, torch tensors and records.

    The rules are those of :mod:`sdekit.params`: records (namedtuples) keep their class and nest, a plain
    tuple inside a record is a nested group, and at the top level of a plain tuple a tuple or list is an array.
    """
    if params is None:
        return ()
    if not isinstance(params, tuple | list):
        raise ValueError(
            f"`params` must be a tuple of numbers or arrays (or a namedtuple record), got {type(params).__name__}; "
            "for a single parameter write params=(value,)."
        )
    return _normalise_group(params, "params", in_record=False)


def _normalise_group(group, path: str, *, in_record: bool):
    """A tuple, list or record of parameters, normalised entry by entry; ``path`` names it in errors."""
    if is_record(group):
        return type(group)(*(_normalise_entry(v, f"{path}.{name}", in_record=True)
                             for name, v in zip(group._fields, group, strict=True)))
    return tuple(_normalise_entry(v, f"{path}[{i}]", in_record=in_record) for i, v in enumerate(group))


def _normalise_entry(p, path: str, *, in_record: bool):
    if is_record(p) or (in_record and type(p) is tuple):
        return _normalise_group(p, path, in_record=True)
    if isinstance(p, numbers.Real):  # bool included
        return float(p)
    if isinstance(p, numbers.Complex):
        raise ValueError(f"`{path}` must be real, got {p!r}; pass real and imaginary parts as two parameters.")
    if isinstance(p, np.ndarray | list | tuple):
        try:
            a = np.asarray(p)
            if a.dtype.kind == "c" or (a.dtype == object and any(isinstance(v, numbers.Complex)
                                                                   and not isinstance(v, numbers.Real) for v in a.flat)):
                raise ValueError(f"`{path}` must be real, got complex values; pass real and imaginary parts "
                                 "as two parameters.")
            return np.ascontiguousarray(a, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            if "must be real" in str(exc):
                raise
            raise ValueError(f"`{path}` must be a number or an array of numbers, got {type(p).__name__}.") from None
    if type(p).__module__.startswith("torch"):
        if p.is_complex():
            raise ValueError(f"`{path}` must be real, got a {p.dtype} tensor.")
        return p  # torch tensors are kept for the torch backend
    raise ValueError(f"`{path}` must be a number or an array (or a namedtuple record of them), got {type(p).__name__}.")


class Params:
    """The ``params`` attribute of a problem: normalised (and checked) on every assignment.

    A later ``problem.params = ...`` is held to the same rules as the constructor's argument, so that a bare
    number, a complex value or a non-numeric object is refused there in one line, not deep inside a solve.
    """

    def __get__(self, obj, objtype=None):
        return self if obj is None else obj.__dict__["_params"]

    def __set__(self, obj, value):
        obj.__dict__["_params"] = _normalise_params(value)


class ParamsCarrier:
    """Base of the problem classes: ``params`` (normalised on assignment) and :meth:`with_params`."""

    params = Params()

    def with_params(self, params):
        """A copy of this problem carrying other parameters.

        The functions are shared, not copied, so the numba backend reuses what
        it compiled for them: solving the copy compiles nothing new.

        Parameters
        ----------
        params : tuple
            Numbers and arrays (or torch tensors), checked and normalised as
            the constructor's ``params`` are.

        Returns
        -------
        same type as this problem
            A shallow copy whose ``params`` are the normalised ``params``;
            this problem is unchanged.

        Examples
        --------
        >>> decay = ODE(lambda t, x, p: -p[0] * x, params=(1.0,))
        >>> decay.with_params((2.0,)).params, decay.params
        ((2.0,), (1.0,))
        """
        twin = copy.copy(self)
        twin.params = params
        return twin


class SDE(ParamsCarrier):
    """A stochastic differential equation dX = mu(t, X) dt + sigma(t, X) dW.

    Parameters
    ----------
    drift, diffusion : callable
        ``f(t, x, params)``. ``t`` is a float, ``x`` a batch of states of shape
        ``(n, dim)`` and ``params`` the tuple given here. ``drift`` returns an
        array broadcastable to ``(n, dim)``. ``diffusion`` returns, by noise type:

        * ``"diagonal"``: broadcastable to ``(n, dim)``, component ``i`` driven by
          ``W_i``; ``sigma_i`` may depend on ``x_i`` only (that is what makes the
          noise commutative and the higher orders hold);
        * ``"scalar"``: broadcastable to ``(n, dim)``, all components driven by one ``W``;
        * ``"additive"``: independent of ``x``; broadcastable to ``(n, dim)``
          (one ``W_i`` per component), or with ``noise_dim=m`` a ``(dim, m)`` matrix;
        * ``"general"``: ``(n, dim, noise_dim)`` or ``(dim, noise_dim)``.
    noise : {"scalar", "diagonal", "additive", "general"}
    calculus : {"ito", "stratonovich"}
        How ``sigma dW`` is read. For additive noise the two coincide.
    noise_dim : int, optional
        Number of Brownian components ``m``: required for ``"general"``,
        optional for ``"additive"``.
    commutative : bool
        Only for ``"general"``: declare that the noise commutes
        (``L^j sigma_k = L^k sigma_j``), which lets Milstein reach order 1.
    params : tuple
        Numbers and arrays passed to both functions.
    jac : callable, optional
        The drift's Jacobian ``jac(t, x, params)``: an array broadcastable to
        ``(n, dim, dim)`` with ``J[r, i, j] = d drift_i / d x_j`` at row ``r``
        (a ``(dim, dim)`` matrix is used for every row). Read by the
        drift-implicit schemes (``implicit_euler``, ...) for their Newton
        iterations; without it they take finite differences (numpy, numba) or
        autograd (torch). The entry probe compares it with a finite difference
        of the drift and refuses one that disagrees.

    Examples
    --------
    >>> ou = SDE(lambda t, x, p: p[0] * (p[1] - x), lambda t, x, p: p[2],
    ...          noise="additive", params=(1.0, 0.5, 0.3))
    """

    is_sde = True

    def __init__(
        self,
        drift: Callable,
        diffusion: Callable,
        *,
        noise: str,
        calculus: str = "ito",
        noise_dim: int | None = None,
        commutative: bool = False,
        params: tuple = (),
        jac: Callable | None = None,
    ):
        _check_callable(drift, "drift")
        _check_callable(diffusion, "diffusion")
        if jac is not None:
            _check_callable(jac, "jac")
        if noise not in NOISE_TYPES:
            raise ValueError(f"`noise` must be one of {NOISE_TYPES}, got {noise!r}.")
        if calculus not in CALCULI:
            raise ValueError(f"`calculus` must be 'ito' or 'stratonovich', got {calculus!r}.")
        if noise_dim is not None and (
            not isinstance(noise_dim, numbers.Integral) or isinstance(noise_dim, bool) or noise_dim < 1
        ):
            raise ValueError(f"`noise_dim` must be a positive integer, got {noise_dim!r}.")
        if noise == "general" and noise_dim is None:
            raise ValueError("noise='general' needs `noise_dim`, the number of Brownian components m.")
        if noise in ("scalar", "diagonal") and noise_dim is not None:
            raise ValueError(
                f"noise={noise!r} fixes the number of Brownian components; drop `noise_dim` "
                "(or use noise='general' for a (dim, m) diffusion matrix)."
            )
        if commutative and noise != "general":
            raise ValueError("`commutative` applies to noise='general' only; the other noise types commute.")
        self.drift = drift
        self.diffusion = diffusion
        self.noise = noise
        self.calculus = calculus
        self._noise_dim = None if noise_dim is None else int(noise_dim)
        self.commutative = bool(commutative) or noise != "general"
        self.params = _normalise_params(params)
        self.jac = jac

    @property
    def matrix_noise(self) -> bool:
        """True when the diffusion is a (dim, m) matrix applied to dW."""
        return self.noise == "general" or (self.noise == "additive" and self._noise_dim is not None)

    def noise_dim(self, dim: int) -> int:
        """Number of Brownian components for a state of dimension ``dim``."""
        if self.noise == "scalar":
            return 1
        if self._noise_dim is not None:
            return self._noise_dim
        return dim

    def calculi(self) -> tuple[str, ...]:
        """Calculi under which the problem may be solved (additive: both)."""
        return CALCULI if self.noise == "additive" else (self.calculus,)

    def __repr__(self):
        nd = "" if self._noise_dim is None else f", noise_dim={self._noise_dim}"
        return f"SDE(noise={self.noise!r}, calculus={self.calculus!r}{nd}, params={self.params!r})"


class ODE(ParamsCarrier):
    """An ordinary differential equation dx/dt = rhs(t, x, params).

    ``rhs`` is called on a batch ``x`` of shape ``(n, dim)`` and returns an
    array broadcastable to it; ``params`` is a tuple of numbers and arrays.
    ``jac(t, x, params)``, optional, is the Jacobian of ``rhs``, broadcastable
    to ``(n, dim, dim)`` with ``J[r, i, j] = d rhs_i / d x_j`` (see :class:`SDE`).
    """

    is_sde = False
    noise = None

    def __init__(self, rhs: Callable, *, params: tuple = (), jac: Callable | None = None):
        _check_callable(rhs, "rhs")
        if jac is not None:
            _check_callable(jac, "jac")
        self.rhs = rhs
        self.params = _normalise_params(params)
        self.jac = jac

    @property
    def drift(self):
        return self.rhs

    def __repr__(self):
        return f"ODE(params={self.params!r})"

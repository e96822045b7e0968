"""Transformations of problems that give new problems."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable

from . import ops
from .problem import ODE, SDE, _normalise_params

__all__ = ["time_change", "TimeChanged"]

TimeChanged = namedtuple("TimeChanged", "problem time")
TimeChanged.__doc__ = """The params of a time-changed problem: the original problem's and those of ``phi``, ``dphi``."""

# wrapper functions per (drift, diffusion, phi, dphi): the numba backend
# compiles per function object, so a repeated time change with new parameter values compiles nothing
_WRAPPERS: dict = {}
_MAX_WRAPPERS = 256


def time_change(problem, phi: Callable, dphi: Callable, *, params: tuple = ()):
    """The problem in a new time variable ``u`` with ``t = phi(u)``.

    For an SDE ``dX = mu(t, X) dt + sigma(t, X) dW_t`` the time-changed
    process ``Y(u) = X(phi(u))`` solves

        ``dY = phi'(u) mu(phi(u), Y) du + sqrt(|phi'(u)|) sigma(phi(u), Y) dB_u``

    in law (``W_{phi(u)}`` is a Brownian motion run at speed ``|phi'|``), in
    either calculus; for an ODE the second term is absent and the identity is
    exact. A decreasing ``phi`` runs the original problem backwards in ``t``
    while ``u`` increases: this is how a non-uniform time grid
    ``t_k = phi(k / n)`` is stepped by any fixed-step scheme with uniform steps
    in ``u``.

    Parameters
    ----------
    problem : SDE or ODE
    phi, dphi : callable
        ``phi(u, params)`` and its derivative, smooth and with ``dphi`` of one
        sign. Written with :mod:`sdekit.ops` they run on every backend.
    params : tuple
        Parameters of ``phi`` and ``dphi``.

    Returns
    -------
    SDE or ODE
        Same noise type and calculus; its ``params`` are the record
        ``TimeChanged(problem=problem.params, time=params)`` (see :mod:`sdekit.params`).

    Notes
    -----
    A scheme of order ``p`` keeps order ``p`` in ``u`` when ``phi`` is smooth
    on the span. The Brownian path of a solve is then a path in ``u``.
    """
    if not isinstance(problem, SDE | ODE):
        raise ValueError(f"`problem` must be an sdekit.SDE or sdekit.ODE, got {type(problem).__name__}.")
    for name, fn in (("phi", phi), ("dphi", dphi)):
        if not callable(fn):
            raise ValueError(f"`{name}` must be a function {name}(u, params), got {type(fn).__name__}.")
    own = _normalise_params(params)
    key = (problem.drift, problem.diffusion if problem.is_sde else None, phi, dphi)
    if key not in _WRAPPERS:
        if len(_WRAPPERS) >= _MAX_WRAPPERS:
            _WRAPPERS.pop(next(iter(_WRAPPERS)))
        _WRAPPERS[key] = _wrappers(problem, phi, dphi)
    drift, diffusion = _WRAPPERS[key]
    both = TimeChanged(problem=problem.params, time=own)
    if not problem.is_sde:
        return ODE(drift, params=both)
    return SDE(drift, diffusion, noise=problem.noise, calculus=problem.calculus, noise_dim=problem._noise_dim,
               commutative=problem.commutative and problem.noise == "general", params=both)


def _wrappers(problem, phi, dphi):
    phi, dphi = ops.jittable(phi), ops.jittable(dphi)
    mu = ops.jittable(problem.drift)

    def drift(u, x, p):
        return dphi(u, p.time) * mu(phi(u, p.time), x, p.problem)

    if not problem.is_sde:
        return drift, None
    sig = ops.jittable(problem.diffusion)

    def diffusion(u, x, p):
        return ops.sqrt(ops.abs(dphi(u, p.time))) * sig(phi(u, p.time), x, p.problem)

    return drift, diffusion

"""Stabilized explicit SDE schemes: SK-ROCK and S-ROCK, with the stage number chosen from a spectral radius.

Both schemes take ``s`` damped first-kind Chebyshev stages of the drift per step; their stability interval
on the negative real axis grows like ``c s^2``, so a step ``h`` on a drift whose Jacobian has spectral radius
``rho`` needs only ``s ~ sqrt(h rho / c)`` drift evaluations (explicit Euler would need ``h rho / 2`` steps).

Stability interval. With ``w0 = 1 + eta / s^2`` and ``w1 = T_s(w0) / T_s'(w0)`` (``T_s`` the Chebyshev
polynomial of the first kind) the drift stability function is ``T_s(w0 + w1 p) / T_s(w0)``, bounded by 1 in
modulus exactly for ``p = h lambda`` in ``[-2 w0 / w1, 0]``: :func:`stability_interval`, ``ell(s) = 2 w0 / w1``
(``~ (2 - 4 eta / 3) s^2``).

* ``skrock`` (Abdulle, Almuslimani & Vilmart 2018, SIAM/ASA J. Uncertain. Quantif. 6(2), eq. (2.7)-(2.9)):
  damping ``eta = 0.05``, so ``ell(s) ~ 1.94 s^2``; the noise enters at the first stage. On
  ``dX = lambda X dt + mu X dW`` it is mean-square stable on the whole interval for every noise the
  equation itself tolerates up to ``mu^2 <= 1.9 |lambda|`` (checked in tests/test_stabilized.py).
* ``srock`` (Abdulle & Cirilli 2008, SIAM J. Sci. Comput. 30(2), the Itô method with the noise added at the
  last stage, evaluated at ``K_{s-1}``): the damping grows with ``s`` as Abdulle & Cirilli tabulate it,
  ``eta`` = 3.7, 5.9, 10.8, 13.5, 15.8, 17 at ``s`` = 3, 10, 50, 100, 150, 200 (linearly interpolated),
  so ``ell(s)`` falls from ``0.94 s^2`` (s = 3) to ``0.34 s^2`` (s = 200). The damping buys mean-square
  stability, but not on the whole interval: the stages are chosen on ``0.8 ell(s)``, mean-square stable for
  ``mu^2 <= 1.5 |lambda|`` from ``s = 3`` on (``s >= 3`` always). Near the equation's own limit
  ``mu^2 -> 2 |lambda|`` use ``skrock``.

Stage choice. ``s`` is the smallest stage number (at least ``min_stages``) with
``usable(s) >= SAFETY * |h| * rho``, ``SAFETY = 1.2``; ``skrock`` goes up to 1000 stages, ``srock`` to 200
(the end of its damping table); a step beyond that is refused with the step to use instead.

Spectral radius. ``solve(..., spectral_radius=rho)`` takes the user's bound of the drift Jacobian's spectral
radius over the path. Without it, :func:`estimate_spectral_radius` estimates it once, at ``t0`` and the
initial states (at most 16 of them, evenly spaced), by nonlinear power iteration on finite differences of
the drift (at most 50 iterations, stopped when the estimate moves by less than 1 %; the same arithmetic on
every backend, on torch under ``no_grad``). The estimate holds where it was made: a problem whose stiffness
grows along the path (the Jacobian's spectral radius larger later, or away from ``x0``) needs a user bound.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import sys

import numpy as np

from . import _steps
from ._stability import STABILITY_BOUNDARY
from .base import Family, Scheme, StepPlan, pack_tableau, register

__all__ = ["SAFETY", "SKROCK", "SROCK", "STABILIZED", "chebyshev_tab", "check_spectral_radius", "estimate_spectral_radius",
           "plan_for_step", "solve_plan", "srock_damping", "stability_interval", "stages_for"]

SAFETY = 1.2
SKROCK_DAMPING = 0.05
# Abdulle & Cirilli (2008): damping eta of S-ROCK at these stage numbers.
SROCK_TABLE_STAGES = (3, 10, 50, 100, 150, 200)
SROCK_TABLE_DAMPING = (3.7, 5.9, 10.8, 13.5, 15.8, 17.0)
SROCK_USABLE_FRACTION = 0.8
MAX_POWER_ITERATIONS = 50
POWER_ITERATION_RTOL = 0.01
ESTIMATE_ROWS = 16


def srock_damping(s: int) -> float:
    """S-ROCK's damping ``eta`` at ``s`` stages (Abdulle & Cirilli 2008's table, linear in ``s``, constant outside)."""
    return float(np.interp(s, SROCK_TABLE_STAGES, SROCK_TABLE_DAMPING))


def _chebyshev(s: int, w: float):
    """``(T_0(w), ..., T_s(w))`` and ``T_s'(w) = s U_{s-1}(w)`` by the three-term recurrences."""
    t = [1.0, w]
    u_prev, u = 1.0, 2.0 * w  # U_0, U_1
    for _ in range(2, s + 1):
        t.append(2.0 * w * t[-1] - t[-2])
        u_prev, u = u, 2.0 * w * u - u_prev
    u_sm1 = 1.0 if s == 1 else u_prev  # U_{s-1}
    return t[: s + 1], s * u_sm1


def _damping(name: str, s: int) -> float:
    return SKROCK_DAMPING if name == "skrock" else srock_damping(s)


def stability_interval(name: str, s: int) -> float:
    """``ell(s) = 2 w0 / w1``: the drift stability function of ``name`` at ``s`` stages is at most 1 in modulus
    exactly for ``h lambda`` in ``[-ell(s), 0]``."""
    w0 = 1.0 + _damping(name, s) / (s * s)
    t, dt_s = _chebyshev(s, w0)
    return 2.0 * w0 * dt_s / t[s]


def chebyshev_tab(name: str, s: int) -> np.ndarray:
    """The packed ``tab`` of :func:`sdekit.schemes._steps.skrock` / ``srock`` at ``s`` stages.

    Rows ``mu``, ``nu``, ``kappa`` (stage ``j`` in column ``j - 1``) and ``c`` (column ``j``: time fraction of
    ``K_j``, ``c_0 = 0``). Abdulle, Almuslimani & Vilmart (2018), eq. (2.8)-(2.9): ``mu_1 = w1 / w0``,
    ``nu_1 = s w1 / 2``, ``kappa_1 = s w1 / w0``, and for ``j >= 2`` with ``b_j = 1 / T_j(w0)``:
    ``mu_j = 2 w1 b_j / b_{j-1}``, ``nu_j = 2 w0 b_j / b_{j-1}``, ``kappa_j = -b_j / b_{j-2}``; S-ROCK's
    Chebyshev stages are the same recurrence with its damping.
    """
    w0 = 1.0 + _damping(name, s) / (s * s)
    t, dt_s = _chebyshev(s, w0)
    w1 = t[s] / dt_s
    mu, nu, kappa, c = np.zeros(s), np.zeros(s), np.zeros(s), np.zeros(s + 1)
    mu[0], nu[0], kappa[0] = w1 / w0, s * w1 / 2.0, s * w1 / w0
    c[1] = mu[0]
    for j in range(2, s + 1):
        mu[j - 1] = 2.0 * w1 * t[j - 1] / t[j]
        nu[j - 1] = 2.0 * w0 * t[j - 1] / t[j]
        kappa[j - 1] = -t[j - 2] / t[j]
        c[j] = mu[j - 1] + nu[j - 1] * c[j - 1] + kappa[j - 1] * c[j - 2]
    return pack_tableau(mu, nu, kappa, c[:s])


_LIMITS = {"skrock": (1, 1000, 1.0), "srock": (3, 200, SROCK_USABLE_FRACTION)}


def stages_for(name: str, h_rho: float) -> int:
    """The smallest stage number whose usable stability interval covers ``SAFETY * h_rho`` (``h_rho = |h| rho``)."""
    lo, hi, fraction = _LIMITS[name]
    need = SAFETY * h_rho
    if fraction * stability_interval(name, hi) < need:
        raise ValueError(
            f"{name} needs |h| * spectral_radius <= {fraction * stability_interval(name, hi) / SAFETY:.4g} "
            f"({hi} stages), got {h_rho:.4g}; use more steps (n_steps) or method='implicit_euler'."
        )
    s = max(lo, int(math.sqrt(need / (2.0 * fraction))))  # ell(s) < 2 s^2 : a lower start
    while fraction * stability_interval(name, s) < need:
        s += 1
    return s


def plan_for_step(scheme, h_rho: float) -> StepPlan:
    """The plan of ``scheme`` (``skrock`` or ``srock``) for a step with ``|h| rho = h_rho``."""
    s = stages_for(scheme.name, h_rho)
    return StepPlan(STEPS[scheme.name], chebyshev_tab(scheme.name, s), s, 1)


def _is_tensor(x) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _row_norms(v):
    if _is_tensor(v):
        import torch

        return torch.linalg.vector_norm(v, dim=1, keepdim=True)
    return np.sqrt((v * v).sum(axis=1, keepdims=True))


def estimate_spectral_radius(f, t, x, p) -> float:
    """Spectral radius of the drift's Jacobian at the states ``x`` (n, dim), by nonlinear power iteration.

    Each row ``r`` iterates ``v <- (f(x_r + v) - f(x_r)) * delta_r / |f(x_r + v) - f(x_r)|`` with
    ``|v| = delta_r = sqrt(eps) (1 + |x_r|)`` from a fixed pseudo-random start, and reads
    ``|f(x_r + v) - f(x_r)| / delta_r`` (as ROCK2 does, Abdulle & Medovikov 2001, Numer. Math. 90); the
    largest over the rows is returned once it moves by less than 1 % (at most 50 iterations). ``f`` is the
    backend's drift (NumPy arrays or torch tensors).
    """
    is_tensor = _is_tensor(x)
    torch = sys.modules.get("torch")
    rows = np.unique(np.linspace(0, x.shape[0] - 1, min(ESTIMATE_ROWS, x.shape[0])).round().astype(np.int64))
    start = np.random.default_rng(0).standard_normal((rows.size, x.shape[1]))
    with torch.no_grad() if is_tensor else contextlib.nullcontext():
        if is_tensor:
            x = x[torch.as_tensor(rows, device=x.device)].detach()
            v = torch.as_tensor(start, dtype=x.dtype, device=x.device)
            eps = torch.finfo(x.dtype).eps
        else:
            x = np.asarray(x, dtype=np.float64)[rows]
            v, eps = start, np.finfo(np.float64).eps
        delta = math.sqrt(eps) * (1.0 + _row_norms(x))
        v = v * (delta / _row_norms(v))
        fx = f(t, x, p)
        estimate = 0.0
        for _ in range(MAX_POWER_ITERATIONS):
            d = f(t, x + v, p) - fx
            nd = _row_norms(d)
            new = float((nd / delta).max())
            if abs(new - estimate) <= POWER_ITERATION_RTOL * new:
                return new
            estimate = new
            v = d * (delta / (nd + 1e-300 * delta))
        return estimate


def check_spectral_radius(value) -> float:
    """The user's ``spectral_radius``: a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"`spectral_radius` must be a finite number >= 0 (a bound of the drift Jacobian's spectral "
                         f"radius), got {value!r}.")
    return float(value)


def solve_plan(scheme, problem, inputs, t0, h, spectral_radius) -> StepPlan:
    """The plan :func:`sdekit.solve` runs for a stabilized scheme: ``spectral_radius`` (checked) or the estimate
    at ``t0`` and the initial states ``inputs.x0`` with the backend's drift, and the stage number for ``|h|``."""
    if spectral_radius is None:
        if _is_tensor(inputs.x0):
            from ..backends.torch_backend import step_functions
        else:
            from ..backends.numpy_backend import step_functions
        f, _ = step_functions(problem, inputs.dim, inputs.noise_dim)
        rho = estimate_spectral_radius(f, t0, inputs.x0, inputs.params)
    else:
        rho = check_spectral_radius(spectral_radius)
    return plan_for_step(scheme, abs(h) * rho)


STEPS = {"skrock": _steps.skrock, "srock": _steps.srock}
# The instability check (sdekit.schemes._stability) applies with the drift's interval [-ell(s), 0] of the stages a
# step runs (s = tab.shape[1]): a spectral_radius below the real one is then reported, not delivered.
STABILITY_BOUNDARY[_steps.skrock] = lambda tab: stability_interval("skrock", tab.shape[1])
STABILITY_BOUNDARY[_steps.srock] = lambda tab: stability_interval("srock", tab.shape[1])
# Without a step size and a spectral radius (Scheme.plan(problem, dim), Stepper) the plan is the fewest stages.
STABILIZED = Family("stabilized", lambda scheme, problem, dim: plan_for_step(scheme, 0.0),
                    steps=(_steps.skrock, _steps.srock))

_ORDERS_STRONG = {"scalar": 0.5, "diagonal": 0.5, "additive": 1.0, "commutative": 0.5, "general": 0.5}
_ORDERS_WEAK = dict.fromkeys(_ORDERS_STRONG, 1.0)

SKROCK = register(Scheme(
    "skrock", "sde", dict(_ORDERS_STRONG), dict(_ORDERS_WEAK), ("ito",), family=STABILIZED,
    reference="Abdulle, Almuslimani & Vilmart (2018), SIAM/ASA J. Uncertain. Quantif. 6(2), eq. (2.7)-(2.9).",
))
SROCK = register(Scheme(
    "srock", "sde", dict(_ORDERS_STRONG), dict(_ORDERS_WEAK), ("ito",), family=STABILIZED,
    reference="Abdulle & Cirilli (2008), SIAM J. Sci. Comput. 30(2), S-ROCK for Itô SDEs (noise at the last stage).",
))

"""One step at a time: the fixed-step schemes of :func:`sdekit.solve` as a public stepping API.

:class:`Stepper` runs the very step function ``solve`` runs, with the same
checks on the user's functions, for callers that drive the time loop
themselves (a sampler that mixes SDE steps with other updates, say).
"""

from __future__ import annotations

import numbers

import numpy as np

from .checks import require
from .schemes import get_scheme, implicit, stabilized

__all__ = ["Stepper"]

_BACKENDS = ("numpy", "torch")


class Stepper:
    """One fixed step of a scheme on a batch of states, on NumPy arrays or torch tensors.

    Parameters
    ----------
    problem : SDE or ODE
    method : str or Scheme
        A fixed-step scheme (see :func:`sdekit.list_schemes`); the adaptive
        ``dopri5`` chooses its own steps and is solved by :func:`sdekit.solve`.
    dim : int
        State dimension.
    backend : {"numpy", "torch"}
        ``"numpy"``: ``x`` and ``dw`` are float NumPy arrays. ``"torch"``: they
        are tensors (any device and floating dtype; NumPy arrays in ``params``
        are moved to the state's device and dtype), and the step is
        differentiable.
    theta : float, optional
        The drift weight of the drift-implicit schemes (as ``solve(..., theta=)``).
    spectral_radius : float, optional
        The stabilized schemes ``"skrock"``/``"srock"`` (required there): a bound of the spectral radius of
        the drift's Jacobian; each step takes the stages that make ``|h| * spectral_radius`` stable, as
        ``solve(..., spectral_radius=)`` does.

    Attributes
    ----------
    scheme : Scheme
    n_drift, n_diffusion : int
        Evaluations of the drift and of the diffusion per step (``n_diffusion``
        is 0 for an ODE; for ``skrock``/``srock``, whose stages follow the step
        size, those of the last step).
    noise_dim : int
        Number of Brownian components ``m`` (0 for an ODE).

    Notes
    -----
    ``step(t, x, h, dw)`` with ``t_k = t0 + k h`` and ``dw`` the increments
    of a :class:`~sdekit.BrownianPath` on the grid of ``n`` steps
    (``path.increments(n, reverse=h < 0)``) takes exactly the steps of
    ``solve(problem, x0, (t0, t0 + n h), method=method, n_steps=n,
    brownian=path, backend="numpy")``. Reverse time follows ``solve``: the
    step ``h`` is negative and ``dw = W(t + h) - W(t)`` is the increment along
    the direction of integration (Anderson 1982, Stoch. Proc. Appl. 12(3),
    for reverse-time SDEs).

    Examples
    --------
    >>> import numpy as np, sdekit as sk
    >>> ou = sk.SDE(lambda t, x, p: -x, lambda t, x, p: 0.5, noise="additive")
    >>> stepper = sk.Stepper(ou, "euler", 1)
    >>> x = np.ones((4, 1))
    >>> dw = np.random.default_rng(0).normal(scale=0.1, size=(4, 1))
    >>> stepper.step(0.0, x, 0.01, dw).shape
    (4, 1)
    """

    def __init__(self, problem, method, dim: int, *, backend: str = "numpy", theta: float | None = None,
                 spectral_radius: float | None = None):
        if backend not in _BACKENDS:
            raise ValueError(f"unknown backend {backend!r} for Stepper; choose one of {list(_BACKENDS)}.")
        if not isinstance(dim, numbers.Integral) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"`dim` must be a positive integer, got {dim!r}.")
        scheme = get_scheme(method, problem)
        if scheme.adaptive:
            raise ValueError(f"{scheme.name} chooses its own step sizes; Stepper takes a fixed-step method, "
                             "or solve the problem with sdekit.solve.")
        if theta is not None:
            scheme = implicit.with_theta(scheme, theta)
        self._spectral_radius, self._stabilized_plans = None, {}
        if scheme.family is stabilized.STABILIZED:
            if spectral_radius is None:
                raise ValueError(f"{scheme.name} takes its number of stages from |h| * spectral_radius: pass "
                                 "Stepper(..., spectral_radius=...), a bound of the drift Jacobian's spectral radius.")
            self._spectral_radius = stabilized.check_spectral_radius(spectral_radius)
        elif spectral_radius is not None:
            raise ValueError(f"`spectral_radius` applies to the stabilized schemes 'skrock'/'srock'; drop it for {scheme.name}.")
        dim = int(dim)
        plan = scheme.plan(problem, dim)
        self.problem, self.scheme, self.dim, self.backend = problem, scheme, dim, backend
        self.noise_dim = problem.noise_dim(dim) if problem.is_sde else 0
        self.n_drift, self.n_diffusion = plan.n_drift, plan.n_diffusion
        self._step, self._tab = plan.step, plan.tab
        if backend == "numpy":
            from .backends.numpy_backend import step_functions
        else:
            require("torch", extra="torch", what="Stepper(backend='torch')")
            from .backends.torch_backend import step_functions
        self._drift, self._diffusion = step_functions(problem, dim, self.noise_dim)
        self._params: dict = {}

    def __repr__(self):
        return f"Stepper({self.scheme.name!r}, dim={self.dim}, backend={self.backend!r})"

    def _params_for(self, x):
        """The problem's params as the step reads them (torch: NumPy arrays moved to the state's device and dtype)."""
        if self.backend == "numpy":
            return self.problem.params
        key = (x.device, x.dtype)
        if key not in self._params:
            from .backends.torch_backend import params_on

            self._params[key] = params_on(self.problem.params, x.device, x.dtype)
        return self._params[key]

    def _check_array(self, v, name, shape):
        if self.backend == "numpy":
            if not isinstance(v, np.ndarray) or v.dtype.kind != "f":
                raise ValueError(f"`{name}` must be a float NumPy array on backend='numpy', got {type(v).__name__}"
                                 f"{'' if not isinstance(v, np.ndarray) else ' of dtype ' + str(v.dtype)}.")
        else:
            import torch

            if not isinstance(v, torch.Tensor) or not v.is_floating_point():
                raise ValueError(f"`{name}` must be a floating-point torch tensor on backend='torch', got "
                                 f"{type(v).__name__}.")
        if tuple(v.shape) != shape:
            raise ValueError(f"`{name}` has shape {tuple(v.shape)}; it must be {shape} for x of shape {shape[:1] + (self.dim,)}.")

    def step(self, t, x, h, dw=None, levy_area=None):
        """Advance the batch ``x`` from ``t`` to ``t + h``.

        Parameters
        ----------
        t : float
            Current time.
        x : array or tensor, shape (n, dim)
            The states of ``n`` paths.
        h : float
            The signed step (negative integrates backwards in time).
        dw : array or tensor, shape (n, noise_dim)
            ``W(t + h) - W(t)`` along the direction of integration; omitted
            (``None``) for an ODE.
        levy_area : array or tensor, shape (n, noise_dim), optional
            The space-time Lévy area ``H`` of the step, as returned by
            ``BrownianPath.increments`` for a path made with
            ``levy_area=True``; required by the schemes with
            ``scheme.levy_area`` (``sra1``, ``sriw1``, ...), unused otherwise.

        Returns
        -------
        array or tensor, shape (n, dim)
            The states at ``t + h``.
        """
        if getattr(x, "ndim", None) != 2 or x.shape[1] != self.dim:
            raise ValueError(f"`x` must have shape (n, {self.dim}), got {tuple(getattr(x, 'shape', ()))}.")
        self._check_array(x, "x", (x.shape[0], self.dim))
        if not isinstance(h, numbers.Real) or isinstance(h, bool) or h == 0 or not np.isfinite(h):
            raise ValueError(f"`h` must be a non-zero finite number, got {h!r}.")
        n, m = x.shape[0], self.noise_dim
        if not m:
            if dw is not None or levy_area is not None:
                raise ValueError("an ODE draws no noise: drop `dw`/`levy_area`.")
            dw = area = x[:, :0]
        else:
            if dw is None:
                raise ValueError(f"`dw` is required for an SDE: the Brownian increments of the step, shape ({n}, {m}).")
            self._check_array(dw, "dw", (n, m))
            if levy_area is None:
                if self.scheme.levy_area:
                    raise ValueError(f"{self.scheme.name} needs the Lévy area of each step: pass `levy_area` (from "
                                     "BrownianPath(..., levy_area=True).increments, which returns (dw, levy_area)).")
                area = dw * 0.0
            else:
                self._check_array(levy_area, "levy_area", (n, m))
                area = levy_area
        step, tab = self._step, self._tab
        if self._spectral_radius is not None:  # the stages that make this step size stable
            if abs(h) not in self._stabilized_plans:  # a loop reuses a few step sizes: their plans once each
                if len(self._stabilized_plans) >= 64:  # a loop with ever new step sizes keeps no growing table
                    self._stabilized_plans.clear()
                self._stabilized_plans[abs(h)] = stabilized.plan_for_step(self.scheme, abs(h) * self._spectral_radius)
            plan = self._stabilized_plans[abs(h)]
            step, tab, self.n_drift = plan.step, plan.tab, plan.n_drift
        return step(self._drift, self._diffusion, self._params_for(x), tab, t, x, h, dw, area)

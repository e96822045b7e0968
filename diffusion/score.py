"""Score functions in any parameterisation, and guidance as transforms of scores.

A network (or an exact oracle) predicts one of four equivalent quantities at
``x_t = alpha_t x_0 + sigma_t eps``:

=========== ============================================= ====================
name         prediction                                    score from it
=========== ============================================= ====================
``score``    ``s = grad log p_t(x)``                       ``s``
``eps``      ``eps_hat = -sigma_t s``                      ``-eps_hat / sigma_t``
``x0``       ``x0_hat = (x + sigma_t^2 s) / alpha_t``      ``(alpha_t x0_hat - x) / sigma_t^2``
``v``        ``v_hat = alpha_t eps_hat - sigma_t x0_hat``  via ``eps_hat = (sigma_t x + alpha_t v_hat) / (alpha_t^2 + sigma_t^2)``
=========== ============================================= ====================

(``x0_hat`` is Tweedie's posterior mean; the ``v`` inversion holds for any
``alpha_t, sigma_t``, not only VP's ``alpha^2 + sigma^2 = 1``.)

A :class:`Score` holds the prediction function ``fn(t, x, params)`` in
sdekit's problem-function convention and exposes the score as a *kernel*
``kernel(t, x, params)``; plain functions written with :mod:`sdekit.ops`
therefore solve on every sdekit backend, torch modules on the torch backend.

References
----------
Ho, Jain & Abbeel (2020), DDPM (eps); Salimans & Ho (2022), progressive
distillation (v); Efron (2011), Tweedie's formula. Dhariwal & Nichol (2021)
(classifier guidance); Ho & Salimans (2022) (classifier-free guidance).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import numpy as np

from sdekit import ops
from sdekit.params import extend, map_leaves

from .formulas import eps_from_score, x0_from_score
from .sdes import DiffusionSDE, same_process

__all__ = ["Score", "PARAMETERISATIONS", "classifier_guidance", "classifier_free_guidance", "convert"]

PARAMETERISATIONS = ("score", "eps", "x0", "v")


# Conversions between a prediction and the score, given the coefficients a = alpha_t, s = sigma_t
# (floats, or columns for one time per row); the score -> eps and score -> x0 directions are those of
# diffusion.formulas. Used by kernels and by Python methods.
def _score_from_score(pred, x, a, s):
    return pred


def _score_from_eps(pred, x, a, s):
    return -pred / s


def _score_from_x0(pred, x, a, s):
    return (a * pred - x) / (s * s)


def _score_from_v(pred, x, a, s):
    return -(s * x + a * pred) / ((a * a + s * s) * s)


def _v_from_score(sc, x, a, s):
    return a * eps_from_score(sc, x, a, s) - s * x0_from_score(sc, x, a, s)


_TO_SCORE = {k: ops.jittable(f) for k, f in zip(PARAMETERISATIONS, (_score_from_score, _score_from_eps, _score_from_x0,
                                                                      _score_from_v), strict=True)}
_FROM_SCORE = {"score": _TO_SCORE["score"], "eps": eps_from_score, "x0": x0_from_score, "v": ops.jittable(_v_from_score)}


def _is_tensor(v) -> bool:
    return type(v).__module__.startswith("torch") and hasattr(v, "detach")


def _coefficients(sde, t, x):
    """``alpha_t, sigma_t`` shaped to multiply ``x``: floats for a scalar t, columns for one t per row."""
    if _is_tensor(t) and t.ndim == 0:
        t = float(t)
    if isinstance(t, numbers.Real):
        return float(sde.alpha(float(t))), float(sde.sigma(float(t)))
    if _is_tensor(x) and not _is_tensor(t):
        import torch

        t = torch.as_tensor(np.asarray(t), dtype=x.dtype, device=x.device)
    elif not _is_tensor(x):
        t = np.asarray(t, dtype=np.float64)
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"`t` must be a number or one time per row of x (shape ({x.shape[0]},)); got shape {tuple(t.shape)}.")
    return sde.alpha(t)[:, None], sde.sigma(t)[:, None]


def convert(pred, x, t, sde: DiffusionSDE, *, source: str, target: str):
    """Convert a prediction between parameterisations (``"score"``, ``"eps"``, ``"x0"``, ``"v"``).

    ``t`` is a number or one time per row of ``x``.
    """
    for name, v in (("source", source), ("target", target)):
        if v not in PARAMETERISATIONS:
            raise ValueError(f"`{name}` must be one of {PARAMETERISATIONS}, got {v!r}.")
    a, s = _coefficients(sde, t, x)
    score = _TO_SCORE[source](pred, x, a, s)
    return _FROM_SCORE[target](score, x, a, s)


def params_like(params: tuple, x) -> tuple:
    """``params`` with arrays moved to ``x``'s backend (torch tensors on its device and dtype), records and
    tuples kept."""
    if not _is_tensor(x):
        return params
    import torch

    return map_leaves(lambda v: torch.as_tensor(v, dtype=x.dtype, device=x.device) if isinstance(v, np.ndarray) else v,
                      params)


class Score:
    """A score function ``s(t, x) ~ grad log p_t(x)`` for a diffusion SDE.

    Parameters
    ----------
    fn : callable
        ``fn(t, x, params)`` returns the prediction for a batch ``x`` of shape
        ``(n, dim)`` at time ``t`` (a float) — sdekit's problem-function
        convention. Written with :mod:`sdekit.ops` and array operators it runs
        on NumPy, torch and compiled Numba alike.
    sde : DiffusionSDE
        The process whose marginals the prediction refers to.
    parameterisation : {"score", "eps", "x0", "v"}
        What ``fn`` predicts.
    params : tuple
        Numbers and arrays passed to ``fn``.
    dim : int, optional
        State dimension, when known (samplers then need no ``dim``).
    backends : tuple of str
        sdekit backends the function runs on (torch modules: ``("torch",)``).

    Attributes
    ----------
    params : record
        What :attr:`kernel` reads: ``sdekit.params.extend(sde.params, model=params)``, the SDE's
        parameters (in their positions) followed by the field ``model``, the ``params`` given here.
    kernel : callable
        ``kernel(t, x, p)`` with ``p = self.params``: the score, in the form sdekit problems call.
    """

    def __init__(self, fn: Callable, sde: DiffusionSDE, *, parameterisation: str = "score", params: tuple = (),
                 dim: int | None = None, backends: tuple = ("numba", "numpy", "torch")):
        if not callable(fn):
            raise ValueError(f"`fn` must be a function fn(t, x, params), got {type(fn).__name__}.")
        if not isinstance(sde, DiffusionSDE):
            raise ValueError(f"`sde` must be a diffusion SDE (VPSDE, SubVPSDE, VESDE), got {type(sde).__name__}.")
        if parameterisation not in PARAMETERISATIONS:
            raise ValueError(f"`parameterisation` must be one of {PARAMETERISATIONS}, got {parameterisation!r}.")
        if not isinstance(params, tuple):
            raise ValueError(f"`params` must be a tuple, got {type(params).__name__}.")
        if dim is not None and (not isinstance(dim, numbers.Integral) or dim < 1):
            raise ValueError(f"`dim` must be a positive integer, got {dim!r}.")
        self.fn = fn
        self.sde = sde
        self.parameterisation = parameterisation
        self.user_params = params
        self.params = extend(sde.params, model=params)
        self.dim = None if dim is None else int(dim)
        self.backends = tuple(backends)
        alpha, sigma = sde.kernels.alpha, sde.kernels.sigma
        to_score = _TO_SCORE[parameterisation]
        if "numba" in self.backends:
            fn = ops.jittable(fn)

        def kernel(t, x, p):
            pred = fn(t, x, p.model)
            if pred.shape != x.shape:  # every call (cheap); Score.check names the shapes at the samplers' entry
                raise ValueError("the score function returned an array of another shape than its input x (n, dim)")
            return to_score(pred, x, alpha(t, p), sigma(t, p))  # the SDE's kernels read p's leading fields

        self.kernel = ops.jittable(kernel) if "numba" in self.backends else kernel

    @classmethod
    def from_kernel(cls, kernel: Callable, sde: DiffusionSDE, params: tuple, *, dim=None, backends=None) -> Score:
        """A Score whose ``kernel(t, x, params)`` already returns the score and reads the full ``params``.

        ``params`` begins with the SDE's parameters (``sde.params + (...)``, or a record made by
        ``sdekit.params.extend(sde.params, ...)``): the reverse-time problems read them there.
        """
        self = cls.__new__(cls)
        self.fn, self.sde, self.parameterisation = kernel, sde, "score"
        self.user_params = self.params = params if isinstance(params, tuple) else tuple(params)
        self.dim = dim
        self.backends = ("numba", "numpy", "torch") if backends is None else tuple(backends)
        self.kernel = ops.jittable(kernel) if "numba" in self.backends else kernel
        return self

    @classmethod
    def from_module(cls, module, sde: DiffusionSDE, *, parameterisation: str = "eps", time_input="t",
                    dim: int | None = None, dtype=None) -> Score:
        """Wrap a torch module called as ``module(x, c)`` with ``c`` one conditioning value per row.

        ``time_input`` maps ``t`` to what the network was trained with:
        ``"t"``, ``"log_snr"``, ``"edm_sigma"`` (``sigma_t / alpha_t``), or a
        function of ``t``. The score then runs on the torch backend only.

        ``dtype``: the network's floating type (default: that of its first
        parameter, if it has one). States of another type (the samplers
        integrate in float64 by default) are cast to it on the way in, and
        the prediction is cast back, so a float32 network samples in float64.
        """
        import torch

        if not isinstance(module, torch.nn.Module) and not callable(module):
            raise ValueError(f"`module` must be a torch.nn.Module, got {type(module).__name__}.")
        if dtype is None and isinstance(module, torch.nn.Module):
            first = next(iter(module.parameters()), None)
            dtype = None if first is None else first.dtype
        maps = {"t": lambda t: t, "log_snr": sde.log_snr, "edm_sigma": sde.edm_sigma}
        if callable(time_input):
            to_c = time_input
        elif time_input in maps:
            to_c = maps[time_input]
        else:
            raise ValueError(f"`time_input` must be 't', 'log_snr', 'edm_sigma' or a function, got {time_input!r}.")

        def fn(t, x, p):
            c = to_c(float(t)) if not _is_tensor(t) else to_c(t)
            if dtype is None or x.dtype == dtype:
                c = torch.as_tensor(c, dtype=x.dtype, device=x.device).expand(x.shape[0])
                return module(x, c)
            c = torch.as_tensor(c, dtype=dtype, device=x.device).expand(x.shape[0])
            return module(x.to(dtype), c).to(x.dtype)

        return cls(fn, sde, parameterisation=parameterisation, dim=dim, backends=("torch",))

    # predictions ------------------------------------------------------------
    def score(self, x, t):
        """``grad log p_t(x)`` for the rows of ``x`` (``t`` a number, or one per row)."""
        if isinstance(t, numbers.Real) or (_is_tensor(t) and t.ndim == 0):
            return self.kernel(float(t), x, params_like(self.params, x))
        a, s = _coefficients(self.sde, t, x)
        return _TO_SCORE[self.parameterisation](self.fn(t, x, params_like(self.user_params, x)), x, a, s)

    __call__ = score

    def predict(self, x, t, target: str):
        """The prediction in parameterisation ``target`` (``"score"``, ``"eps"``, ``"x0"``, ``"v"``)."""
        if target not in PARAMETERISATIONS:
            raise ValueError(f"`target` must be one of {PARAMETERISATIONS}, got {target!r}.")
        a, s = _coefficients(self.sde, t, x)
        return _FROM_SCORE[target](self.score(x, t), x, a, s)

    def eps(self, x, t):
        """Noise prediction ``-sigma_t s``."""
        return self.predict(x, t, "eps")

    def x0(self, x, t):
        """Tweedie's denoised mean ``(x + sigma_t^2 s) / alpha_t``."""
        return self.predict(x, t, "x0")

    def v(self, x, t):
        """Velocity prediction ``alpha_t eps - sigma_t x0``."""
        return self.predict(x, t, "v")

    def check(self, x, t=None, *, what: str = "x") -> None:
        """Evaluate the score once on (up to 3 rows of) ``x`` at ``t`` (default ``T``) and check what it returns.

        A score must return one finite, floating-point row per row of ``x``
        (shape ``(n, dim)``); anything else (another width, a fixed number of
        rows, one value per row, integers, NaN) is a one-line ``ValueError``
        naming the score and the shapes, before a solver broadcasts or
        compiles it into a wrong answer or a traceback. ``what`` names ``x``
        in the message (``"x_T"``, ``"the data"``).
        """
        name = getattr(self.fn, "__qualname__", type(self.fn).__name__)
        if self.dim is not None and x.shape[1] != self.dim:
            raise ValueError(f"{what} has dimension {x.shape[1]} (shape {tuple(x.shape)}) but the score {name} is for "
                             f"dimension {self.dim}; give {what} of shape (n, {self.dim}).")
        probe = x[: min(3, x.shape[0])]
        t = self.sde.T if t is None else float(t)
        try:
            if self.fn is self.kernel:  # from_kernel: the kernel reads the full parameters
                out = self.kernel(t, probe, params_like(self.params, probe))
            else:
                out = self.fn(t, probe, params_like(self.user_params, probe))
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise ValueError(f"the score {name} fails on {what} of shape {tuple(probe.shape)} (t={t:g}): "
                             f"{type(exc).__name__}: {first}; check the dimension of {what}.") from exc
        shape = tuple(getattr(out, "shape", ()))
        if shape != tuple(probe.shape):
            raise ValueError(f"the score {name} returned shape {shape} for {what} of shape {tuple(probe.shape)} "
                             f"(t={t:g}); it must return one row per row of its input: shape (n, dim).")
        if _is_tensor(out):
            floating, finite = out.is_floating_point(), bool(out.isfinite().all()) if out.is_floating_point() else True
        else:
            out = np.asarray(out)
            floating = out.dtype.kind == "f"
            finite = bool(np.isfinite(out).all()) if floating else True
        if not floating:
            raise ValueError(f"the score {name} returned {out.dtype} values; it must return floating-point numbers "
                             f"of {what}'s type.")
        if not finite:
            raise ValueError(f"the score {name} returned NaN or infinite values at t={t:g} on {what}; check the "
                             "function (or its parameters).")

    def check_backend(self, backend: str):
        if backend not in self.backends:
            raise ValueError(
                f"this score runs on the {'/'.join(self.backends)} backend(s) (a torch module cannot be compiled by "
                f"Numba); use backend='torch', not {backend!r}."
            )

    def __repr__(self):
        return f"Score(parameterisation={self.parameterisation!r}, sde={self.sde!r}, dim={self.dim})"


def _finite(v, name) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a finite number, got {v!r}.") from None
    if not np.isfinite(f):
        raise ValueError(f"`{name}` must be a finite number, got {v!r}.")
    return f


def _combine(a: Score, b: Score, wa: float, wb: float) -> Score:
    """The score ``wa * a + wb * b`` (same SDE), as a new kernel on the record
    ``extend(sde.params, first=a.params, second=b.params)``."""
    if not same_process(a.sde, b.sde):
        # each kernel reads its own SDE's coefficients: a sum over two processes is the score of neither
        raise ValueError(f"both scores must refer to the same diffusion SDE, got {a.sde!r} and {b.sde!r}; build them "
                         "with one SDE.")
    if a.dim is not None and b.dim is not None and a.dim != b.dim:
        raise ValueError(f"both scores must have the same dimension, got {a.dim} and {b.dim}.")
    ka, kb = a.kernel, b.kernel

    def kernel(t, x, p):
        return wa * ka(t, x, p.first) + wb * kb(t, x, p.second)

    backends = tuple(k for k in a.backends if k in b.backends)
    return Score.from_kernel(kernel, a.sde, extend(a.sde.params, first=a.params, second=b.params), dim=a.dim or b.dim,
                             backends=backends)


def classifier_guidance(score: Score, classifier_grad: Score, scale: float) -> Score:
    """Classifier guidance: ``s(x) + scale * grad_x log p_t(y | x)``.

    ``classifier_grad`` is the gradient of the (noise-conditional) classifier's
    log-probability of the wanted class, given as a :class:`Score`. With
    ``scale = 1`` and exact terms this is the exact class-conditional score
    ``grad log p_t(x | y)`` (Dhariwal & Nichol 2021).
    """
    for name, v in (("score", score), ("classifier_grad", classifier_grad)):
        if not isinstance(v, Score):
            raise ValueError(f"`{name}` must be a diffusion.Score, got {type(v).__name__}.")
    return _combine(score, classifier_grad, 1.0, _finite(scale, "scale"))


def classifier_free_guidance(conditional: Score, unconditional: Score, weight: float) -> Score:
    """Classifier-free guidance: ``(1 + w) s(x | y) - w s(x)`` (Ho & Salimans 2022).

    ``weight = 0`` is the conditional score; ``w > 0`` sharpens toward the class.
    """
    for name, v in (("conditional", conditional), ("unconditional", unconditional)):
        if not isinstance(v, Score):
            raise ValueError(f"`{name}` must be a diffusion.Score, got {type(v).__name__}.")
    w = _finite(weight, "weight")
    return _combine(conditional, unconditional, 1.0 + w, -w)

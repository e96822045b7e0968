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
``velocity`` ``u = alpha'_t x0_hat + sigma'_t eps_hat``     ``2 (f(t) x - u) / g(t)^2``
=========== ============================================= ====================

(``x0_hat`` is Tweedie's posterior mean; the ``v`` inversion holds for any
``alpha_t, sigma_t``, not only VP's ``alpha^2 + sigma^2 = 1``. ``velocity`` is
flow matching's prediction, the probability-flow drift ``f x - g^2 s / 2``
(:mod:`diffusion.flow`; Lipman et al. 2023), for any process.)

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

from .formulas import eps_from_score, flow_velocity, x0_from_score
from .sdes import DiffusionSDE, same_process

__all__ = ["Score", "PARAMETERISATIONS", "classifier_guidance", "classifier_free_guidance", "convert"]

PARAMETERISATIONS = ("score", "eps", "x0", "v", "velocity")


# Conversions between a prediction and the score, given the coefficients a = alpha_t, s = sigma_t
# (floats, or columns for one time per row; "velocity" reads f(t), g(t)^2 instead: _READS); the
# score -> eps and score -> x0 directions are those of diffusion.formulas. Used by kernels and by Python methods.
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


def _score_from_velocity(pred, x, f, g2):
    # inverts the probability-flow drift u = f x - g^2 s / 2
    return 2.0 * (f * x - pred) / g2


def _velocity_from_score(sc, x, f, g2):
    return flow_velocity(f, g2, x, sc)


_TO_SCORE = {k: ops.jittable(f) for k, f in (("score", _score_from_score), ("eps", _score_from_eps), ("x0", _score_from_x0),
                                             ("v", _score_from_v), ("velocity", _score_from_velocity))}
_FROM_SCORE = {"score": _TO_SCORE["score"], "eps": eps_from_score, "x0": x0_from_score, "v": ops.jittable(_v_from_score),
               "velocity": ops.jittable(_velocity_from_score)}
# the process coefficients a conversion reads (DiffusionSDE method names = Kernels fields); default alpha, sigma
_READS = {"velocity": ("f", "g2")}


def _reads(parameterisation: str) -> tuple:
    return _READS.get(parameterisation, ("alpha", "sigma"))


def _sigma_data(parameterisation, sigma_data):
    """EDM's ``sigma_data`` checked (default 0.5 for ``"edm"``; None for the other parameterisations)."""
    if parameterisation != "edm":
        if sigma_data is not None:
            raise ValueError(f"`sigma_data` applies to parameterisation='edm' only, not {parameterisation!r}; drop it.")
        return None
    if sigma_data is None:
        return 0.5
    if isinstance(sigma_data, bool) or not isinstance(sigma_data, numbers.Real) or not (np.isfinite(sigma_data) and sigma_data > 0):
        raise ValueError(f"`sigma_data` must be a positive finite number (the data's standard deviation; EDM uses 0.5), "
                         f"got {sigma_data!r}.")
    return float(sigma_data)


# EDM preconditioning (Karras et al. 2022, Table 1 and eq. 7) in the process's coordinates: with the noise level
# k = sigma_t / alpha_t of x_edm = x / alpha_t = x0 + k n and q = k^2 + sigma_data^2, the network F is called as
# F(c_noise, c_in x_edm) with c_in = 1/sqrt(q), c_noise = ln(k)/4, and D = c_skip x_edm + c_out F with
# c_skip = sigma_data^2/q, c_out = k sigma_data/sqrt(q) is the x0 prediction. The score (alpha D - x)/sigma^2 is
# then -x/(alpha^2 q) + sigma_data F/(sigma sqrt(q)) (no cancellation at small sigma).
def _edm_inputs(x, a, s, sigma_data):
    level = s / a
    return 0.25 * ops.log(level), x / (a * ops.sqrt(level * level + sigma_data * sigma_data))


def _score_from_edm(pred, x, a, s, sigma_data):
    level = s / a
    q = level * level + sigma_data * sigma_data
    return sigma_data * pred / (s * ops.sqrt(q)) - x / (a * a * q)


ops.jittable(_edm_inputs)
ops.jittable(_score_from_edm)


def _edm_kernel(fn, alpha, sigma, sigma_data):
    """The score kernel of EDM's network ``fn(c_noise, c_in x / alpha_t, params)``."""

    def kernel(t, x, p):
        a, s = alpha(t, p), sigma(t, p)
        c_noise, x_in = _edm_inputs(x, a, s, sigma_data)
        pred = fn(c_noise, x_in, p.model)
        if pred.shape != x.shape:
            raise ValueError("the score function returned an array of another shape than its input x (n, dim)")
        return _score_from_edm(pred, x, a, s, sigma_data)

    return kernel


def _is_tensor(v) -> bool:
    return type(v).__module__.startswith("torch") and hasattr(v, "detach")


def _coefficients(sde, t, x, parameterisation="score"):
    """The two coefficients the conversion of ``parameterisation`` reads (``alpha_t, sigma_t``, or ``f(t), g(t)^2``
    for ``"velocity"``), shaped to multiply ``x``: floats for a scalar t, columns for one t per row."""
    first, second = (getattr(sde, name) for name in _reads(parameterisation))
    if _is_tensor(t) and t.ndim == 0:
        t = float(t)
    if isinstance(t, numbers.Real):
        return float(first(float(t))), float(second(float(t)))
    if _is_tensor(x) and not _is_tensor(t):
        import torch

        t = torch.as_tensor(np.asarray(t), dtype=x.dtype, device=x.device)
    elif not _is_tensor(x):
        t = np.asarray(t, dtype=np.float64)
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"`t` must be a number or one time per row of x (shape ({x.shape[0]},)); got shape {tuple(t.shape)}.")
    return first(t)[:, None], second(t)[:, None]


def convert(pred, x, t, sde: DiffusionSDE, *, source: str, target: str):
    """Convert a prediction between parameterisations (``"score"``, ``"eps"``, ``"x0"``, ``"v"``, ``"velocity"``).

    ``t`` is a number or one time per row of ``x``.
    """
    for name, v in (("source", source), ("target", target)):
        if v not in PARAMETERISATIONS:
            raise ValueError(f"`{name}` must be one of {PARAMETERISATIONS}, got {v!r}.")
    score = _TO_SCORE[source](pred, x, *_coefficients(sde, t, x, source))
    return _FROM_SCORE[target](score, x, *_coefficients(sde, t, x, target))


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
    parameterisation : {"score", "eps", "x0", "v", "velocity"}
        What ``fn`` predicts (``"velocity"``: flow matching's ``alpha'_t x0 + sigma'_t eps``).
        ``"edm"``: ``fn`` is EDM's raw network, called as ``fn(c_noise, c_in x / alpha_t, params)``
        and wrapped as the x0 prediction ``D = c_skip x / alpha_t + c_out F`` with
        ``c_skip = sd^2/(k^2+sd^2)``, ``c_out = k sd/sqrt(k^2+sd^2)``, ``c_in = 1/sqrt(k^2+sd^2)``,
        ``c_noise = ln(k)/4``, ``k = sigma_t/alpha_t`` (Karras et al. 2022, Table 1 and eq. 7).
    sigma_data : float, optional
        EDM's data standard deviation ``sd`` (``parameterisation="edm"`` only; default 0.5).
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
                 dim: int | None = None, backends: tuple = ("numba", "numpy", "torch"), sigma_data: float | None = None):
        if not callable(fn):
            raise ValueError(f"`fn` must be a function fn(t, x, params), got {type(fn).__name__}.")
        if not isinstance(sde, DiffusionSDE):
            raise ValueError(f"`sde` must be a diffusion SDE (VPSDE, SubVPSDE, VESDE), got {type(sde).__name__}.")
        if parameterisation not in PARAMETERISATIONS + ("edm",):
            raise ValueError(f"`parameterisation` must be one of {PARAMETERISATIONS + ('edm',)}, got {parameterisation!r}.")
        self.sigma_data = _sigma_data(parameterisation, sigma_data)
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
        first, second = (getattr(sde.kernels, name) for name in _reads(parameterisation))
        to_score = _TO_SCORE.get(parameterisation)
        if "numba" in self.backends:
            fn = ops.jittable(fn)

        def kernel(t, x, p):
            pred = fn(t, x, p.model)
            if pred.shape != x.shape:  # every call (cheap); Score.check names the shapes at the samplers' entry
                raise ValueError("the score function returned an array of another shape than its input x (n, dim)")
            return to_score(pred, x, first(t, p), second(t, p))  # the SDE's kernels read p's leading fields

        if parameterisation == "edm":  # fn is EDM's network F(c_noise, c_in x / alpha_t), wrapped as D (Karras et al. 2022)
            kernel = _edm_kernel(fn, first, second, self.sigma_data)
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
                    dim: int | None = None, dtype=None, sigma_data: float | None = None) -> Score:
        """Wrap a torch module called as ``module(x, c)`` with ``c`` one conditioning value per row.

        ``time_input`` maps ``t`` to what the network was trained with:
        ``"t"``, ``"log_snr"``, ``"edm_sigma"`` (``sigma_t / alpha_t``), or a
        function of ``t``. The score then runs on the torch backend only.

        ``parameterisation="edm"``: the module is EDM's raw network ``F`` called
        as ``module(c_in x / alpha_t, c_noise)`` and wrapped as the denoiser
        ``D = c_skip x / alpha_t + c_out F`` with ``sigma_data`` (default 0.5)
        (Karras et al. 2022, Table 1; see :class:`Score`); ``time_input`` does
        not apply. This is how :func:`diffusion.training.edm_loss` trains it.

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
        if parameterisation == "edm" and not (isinstance(time_input, str) and time_input == "t"):
            raise ValueError("`time_input` does not apply to parameterisation='edm': the network receives EDM's "
                             "c_noise = ln(sigma)/4; drop `time_input`.")
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

        return cls(fn, sde, parameterisation=parameterisation, dim=dim, backends=("torch",), sigma_data=sigma_data)

    @classmethod
    def from_diffusers(cls, unet, scheduler, *, sample_shape=None, dtype=None) -> Score:
        """A diffusers network (``unet(x, timestep).sample``) with the scheduler it was trained with: its
        ``alphas_cumprod`` give the process (:class:`diffusion.adapters.DiscreteVPSDE`), its
        ``config.prediction_type`` the parameterisation; states are flat rows ``(B, C*H*W)``.
        See :func:`diffusion.adapters.score_from_diffusers`."""
        from .adapters import score_from_diffusers

        return score_from_diffusers(unet, scheduler, sample_shape=sample_shape, dtype=dtype)

    @classmethod
    def from_k_diffusion(cls, denoiser, sde: DiffusionSDE | None = None, *, dim: int | None = None, sample_shape=None,
                         dtype=None) -> Score:
        """A k-diffusion denoiser ``D(x, sigma)`` (``x = x0 + sigma n``) as the ``x0`` prediction
        ``D(x_t / alpha_t, sigma_t / alpha_t)`` of ``sde`` (default: the VE process between the denoiser's
        ``sigma_min`` and ``sigma_max``). See :func:`diffusion.adapters.score_from_k_diffusion`."""
        from .adapters import score_from_k_diffusion

        return score_from_k_diffusion(denoiser, sde, dim=dim, sample_shape=sample_shape, dtype=dtype)

    # predictions ------------------------------------------------------------
    def score(self, x, t):
        """``grad log p_t(x)`` for the rows of ``x`` (``t`` a number, or one per row)."""
        if isinstance(t, numbers.Real) or (_is_tensor(t) and t.ndim == 0):
            return self.kernel(float(t), x, params_like(self.params, x))
        if self.parameterisation == "edm":
            a, s = _coefficients(self.sde, t, x)
            c_noise, x_in = _edm_inputs(x, a, s, self.sigma_data)
            pred = self.fn(c_noise[:, 0], x_in, params_like(self.user_params, x))
            return _score_from_edm(pred, x, a, s, self.sigma_data)
        pred = self.fn(t, x, params_like(self.user_params, x))
        return _TO_SCORE[self.parameterisation](pred, x, *_coefficients(self.sde, t, x, self.parameterisation))

    __call__ = score

    def predict(self, x, t, target: str):
        """The prediction in parameterisation ``target`` (``"score"``, ``"eps"``, ``"x0"``, ``"v"``)."""
        if target not in PARAMETERISATIONS:
            raise ValueError(f"`target` must be one of {PARAMETERISATIONS}, got {target!r}.")
        return _FROM_SCORE[target](self.score(x, t), x, *_coefficients(self.sde, t, x, target))

    def eps(self, x, t):
        """Noise prediction ``-sigma_t s``."""
        return self.predict(x, t, "eps")

    def x0(self, x, t):
        """Tweedie's denoised mean ``(x + sigma_t^2 s) / alpha_t``."""
        return self.predict(x, t, "x0")

    def v(self, x, t):
        """v-prediction ``alpha_t eps - sigma_t x0`` (Salimans & Ho 2022)."""
        return self.predict(x, t, "v")

    def velocity(self, x, t):
        """Flow matching's velocity ``alpha'_t x0 + sigma'_t eps``, the probability-flow drift ``f x - g^2 s / 2``."""
        return self.predict(x, t, "velocity")

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
            if self.fn is self.kernel or self.parameterisation == "edm":  # from_kernel / EDM: the kernel feeds fn
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

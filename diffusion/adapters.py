"""Real models: diffusers UNets and schedulers, and k-diffusion denoisers, with sdekit's integrators.

Three adapters, all importing diffusers (an optional dependency: ``pip install sdekit[diffusers]``) only
inside the functions that need it:

* :class:`DiscreteVPSDE`: the discrete-time VP process of a diffusers scheduler (its ``alphas_cumprod``
  over ``N`` training timesteps) as a :class:`~diffusion.sdes.DiffusionSDE` in continuous ``t``;
* :func:`score_from_diffusers` (``Score.from_diffusers(unet, scheduler)``): a diffusers network, image-shaped
  ``(B, C, H, W)``, as a :class:`~diffusion.score.Score` on flat ``(B, C*H*W)`` states; and
  :func:`score_from_k_diffusion` (``Score.from_k_diffusion(denoiser)``): a k-diffusion denoiser ``D(x, sigma)``;
* :class:`SdekitScheduler`: a diffusers-compatible scheduler (``set_timesteps``, ``step``, ``add_noise``,
  ``init_noise_sigma``, ``scale_model_input``) whose steps are sdekit's exponential integrators, so an existing
  diffusers sampling loop (or pipeline) samples with them.

The time map
------------
Training timestep ``k = 0, ..., N-1`` (noise level ``alphas_cumprod[k]``) sits at ``t_k = (k + 1) / N``, and
``log alphas_cumprod`` is interpolated piecewise linearly in ``t`` between these knots, with the knot
``log abar(0) = 0`` (clean data) added at ``t = 0``. This is DPM-Solver's ``NoiseScheduleVP('discrete')``
(Lu et al. 2022, DPM-Solver, Appendix; their ``t_k = (k+1)/N`` and linear interpolation of ``log alpha``)
with one change, the knot at 0 instead of linear extrapolation below ``1/N``. Chosen because every integer
timestep is hit *exactly* (a grid through the ``t_k`` reproduces a diffusers loop to round-off), ``alpha_t``
and ``sigma_t`` are continuous and monotone (so ``lambda_t`` can be inverted, for log-SNR grids), and the
network sees the continuous timestep ``t N - 1`` it was trained on at the knots (DPM-Solver's
``(t - 1/N) 1000`` for ``N = 1000``). ``beta(t) = -d log abar / dt`` is piecewise constant.

References
----------
Lu, Zhou, Bao, Chen, Li & Zhu (2022), DPM-Solver, NeurIPS (discrete-time schedules, Appendix) and
DPM-Solver++, arXiv:2211.01095 (Alg. 2, the 2M update). Song, Meng & Ermon (2021), DDIM, ICLR (eq. 12).
Karras, Aittala, Aila & Laine (2022), EDM, NeurIPS (the denoiser ``D(x, sigma)`` of ``x = x0 + sigma n``).
von Platen et al. (2022), diffusers (the scheduler interface).
"""

from __future__ import annotations

import math
import sys
from collections import namedtuple

import numba
import numpy as np
from numba.extending import overload

from sdekit import ops, semilinear
from sdekit.checks import positive_float, require

from .score import Score, convert
from .sdes import VESDE, DiffusionSDE, _variance_preserving

__all__ = ["DiscreteVPSDE", "DiscreteSchedule", "SdekitScheduler", "score_from_diffusers", "score_from_k_diffusion",
           "unflatten", "PREDICTION_TYPES"]

# diffusers' scheduler.config.prediction_type -> the Score parameterisation
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
# the schedulers whose timesteps SdekitScheduler takes over, and the sdekit methods it steps with
SUPPORTED_SCHEDULERS = ("DDIMScheduler", "DPMSolverMultistepScheduler")
SCHEDULER_METHODS = {"ddim": "exp_euler", "dpmpp_2m": "dpmpp_2m", "exp_ab2": "exp_ab2", "dpmpp_3m": "exp_ab3_ramp"}

# The knots of a schedule: times (N+1,) = k/N and -log alphas_cumprod with 0 prepended (strictly increasing).
DiscreteSchedule = namedtuple("DiscreteSchedule", "times neg_log_alphas_cumprod")


# --------------------------------------------------------------------------- kernels
def _is_torch(v) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(v, torch.Tensor)


def _torch_knots(t, xp, fp):
    """``t``, ``xp``, ``fp`` as tensors of one dtype and device (that of whichever is a tensor)."""
    import torch

    ref = next(v for v in (fp, xp, t) if _is_torch(v))
    as_t = [torch.as_tensor(v, dtype=ref.dtype, device=ref.device) for v in (t, xp, fp)]
    return as_t[0], as_t[1].contiguous(), as_t[2]


def _segment(t, xp):
    """Index ``k`` of the knot interval ``[xp[k], xp[k+1])`` holding ``t`` (clamped to the first and last)."""
    if _is_torch(t):
        import torch

        k = torch.searchsorted(xp, t.reshape(-1).contiguous(), right=True).reshape(t.shape)
        return torch.clamp(k - 1, 0, xp.shape[0] - 2)
    return np.minimum(np.maximum(np.searchsorted(xp, t, side="right") - 1, 0), xp.shape[0] - 2)


def interpolate(t, xp, fp):
    """Piecewise linear interpolation of the knots ``(xp, fp)`` (``xp`` increasing) at ``t``, clamped outside.

    ``np.interp`` on NumPy values and in Numba-compiled code, the same formula on torch tensors (a float ``t``
    with tensor knots gives a 0-d tensor).
    """
    if _is_torch(t) or _is_torch(xp) or _is_torch(fp):
        t, xp, fp = _torch_knots(t, xp, fp)
        t = t.clamp(xp[0], xp[-1])
        k = _segment(t, xp)
        return fp[k] + (t - xp[k]) * (fp[k + 1] - fp[k]) / (xp[k + 1] - xp[k])
    return np.interp(t, xp, fp)


def slope(t, xp, fp):
    """Slope of the piecewise linear interpolant of ``(xp, fp)`` on the interval holding ``t``."""
    if _is_torch(t) or _is_torch(xp) or _is_torch(fp):
        t, xp, fp = _torch_knots(t, xp, fp)
    k = _segment(t, xp)
    return (fp[k + 1] - fp[k]) / (xp[k + 1] - xp[k])


@overload(interpolate, inline="always")
def _ov_interpolate(t, xp, fp):
    return lambda t, xp, fp: np.interp(t, xp, fp)


@overload(slope, inline="always")
def _ov_slope(t, xp, fp):
    def impl(t, xp, fp):
        k = min(max(np.searchsorted(xp, t, side="right") - 1, 0), xp.shape[0] - 2)
        return (fp[k + 1] - fp[k]) / (xp[k + 1] - xp[k])

    if isinstance(t, numba.types.Float):
        return impl
    return None


def _discrete_log_abar(t, p):
    return -interpolate(t, p[0], p[1])


def _discrete_beta(t, p):
    return slope(t, p[0], p[1])


def _discrete_t_from_log_snr(lam, p):
    # log abar = -log(1 + exp(-2 lambda)), then the inverse of the increasing knots -log abar(t)
    return interpolate(np.log1p(np.exp(-2.0 * lam)) if not _is_torch(lam) else (-2.0 * lam).exp().log1p(), p[1], p[0])


@overload(_discrete_t_from_log_snr, inline="always")
def _ov_t_from_log_snr(lam, p):
    return lambda lam, p: np.interp(np.log1p(np.exp(-2.0 * lam)), p[1], p[0])


_discrete_t_from_log_snr._sdekit_jittable = True  # its overload above is what Numba compiles
for _fn in (_discrete_log_abar, _discrete_beta):
    ops.jittable(_fn)
DISCRETE_VP = _variance_preserving(_discrete_beta, _discrete_log_abar, _discrete_t_from_log_snr)

# equal schedules share one knot array, so that two processes built from equal schedulers are the same process
# (diffusion.sdes.same_process compares the parameter records, and arrays compare by identity there)
_KNOTS: dict = {}


def _shared_knots(values: np.ndarray) -> np.ndarray:
    key = values.tobytes()
    if key not in _KNOTS:
        values = values.copy()
        _KNOTS[key] = values
    return _KNOTS[key]


class DiscreteVPSDE(DiffusionSDE):
    """The VP process of a discrete-time schedule ``alphas_cumprod`` (DDPM's ``abar_k``, ``k = 0, ..., N-1``).

    Training timestep ``k`` sits at ``t_k = (k + 1) / N``; ``log alpha_t^2 = log abar(t)`` is piecewise linear
    in ``t`` through these knots and ``(0, 0)`` (see the module notes: DPM-Solver's discrete schedule, Lu et
    al. 2022, with a knot at 0), so ``beta(t) = -d log abar/dt`` is piecewise constant and the forward SDE is
    ``dx = -beta/2 x dt + sqrt(beta) dW`` as for :class:`~diffusion.VPSDE`.

    Parameters
    ----------
    alphas_cumprod : array (N,)
        Strictly decreasing, in (0, 1].
    eps : float, optional
        End time of sampling (default ``1/N``, the lowest training timestep). ``T = 1`` (timestep ``N - 1``).
    """

    def __init__(self, alphas_cumprod, *, eps: float | None = None):
        if _is_torch(alphas_cumprod):
            alphas_cumprod = alphas_cumprod.detach().cpu().double().numpy()
        abar = np.asarray(alphas_cumprod, dtype=np.float64)
        if abar.ndim != 1 or abar.size < 2 or not np.all(np.isfinite(abar)):
            raise ValueError(f"`alphas_cumprod` must be a finite 1-D array of at least 2 values, got shape {abar.shape}.")
        if not (abar[0] <= 1.0 and abar[-1] > 0.0 and np.all(np.diff(abar) < 0)):
            raise ValueError("`alphas_cumprod` must be strictly decreasing within (0, 1] (every beta in (0, 1)).")
        self.num_train_timesteps = n = abar.size
        neg_log = np.concatenate([[0.0], -np.log(abar)])
        if not np.all(np.diff(neg_log) > 0):  # abar[0] == 1 would repeat the knot at t = 0
            raise ValueError("`alphas_cumprod[0]` must be below 1 (beta_0 > 0).")
        self.params = DiscreteSchedule(_shared_knots(np.arange(n + 1) / n), _shared_knots(neg_log))
        self.kernels = DISCRETE_VP
        self.T = 1.0
        self.eps = 1.0 / n if eps is None else positive_float(eps, "eps")
        if self.eps >= self.T:
            raise ValueError(f"`eps` ({eps}) must be smaller than T (1).")

    @classmethod
    def from_scheduler(cls, scheduler, *, eps: float | None = None) -> DiscreteVPSDE:
        """The process of a diffusers scheduler with ``alphas_cumprod`` (DDPM, DDIM, DPM-Solver, UniPC, Euler...)."""
        abar = getattr(scheduler, "alphas_cumprod", None)
        if abar is None or not hasattr(getattr(scheduler, "config", None), "get"):
            raise ValueError(f"`scheduler` must be a diffusers scheduler of a discrete-time VP schedule (with "
                             f"`alphas_cumprod`), got {type(scheduler).__name__}.")
        return cls(abar, eps=eps)

    def time_of_timestep(self, timestep):
        """``t = (k + 1) / N`` of training timestep ``k`` (an integer, or an array of them)."""
        return (np.asarray(timestep, dtype=np.float64) + 1.0) / self.num_train_timesteps

    def timestep(self, t):
        """The (continuous) training timestep ``t N - 1`` of time ``t``; the integer ``k`` at ``t = (k + 1)/N``."""
        return t * self.num_train_timesteps - 1.0

    def beta(self, t):
        """``beta(t) = g(t)^2`` (piecewise constant)."""
        return self.g2(t)

    def _log_snr_from_sigma(self, s):
        return 0.5 * np.log1p(-s * s) - np.log(s)

    def __repr__(self):
        return f"DiscreteVPSDE(num_train_timesteps={self.num_train_timesteps}, eps={self.eps})"


# --------------------------------------------------------------------------- scores
def _prediction_of(scheduler) -> str:
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"scheduler.config.prediction_type {kind!r} is not supported; it must be one of "
                         f"{list(PREDICTION_TYPES)}.")
    return PREDICTION_TYPES[kind]


def _sample_shape(unet, sample_shape) -> tuple:
    config = getattr(unet, "config", None)
    if sample_shape is None:
        if config is None or config.get("in_channels") is None or config.get("sample_size") is None:
            raise ValueError("give `sample_shape` (C, H, W): the network has no config with in_channels and sample_size.")
        size = config["sample_size"]
        size = (size, size) if isinstance(size, int) else tuple(size)
        sample_shape = (config["in_channels"], *size)
    sample_shape = tuple(int(v) for v in sample_shape)
    if len(sample_shape) < 1 or min(sample_shape) < 1:
        raise ValueError(f"`sample_shape` must be positive sizes, e.g. (C, H, W); got {sample_shape}.")
    if config is not None and config.get("out_channels") not in (None, sample_shape[0]):
        raise ValueError(f"the network's out_channels ({config['out_channels']}) differ from its in_channels "
                         f"({sample_shape[0]}); a prediction must have the sample's shape.")
    return sample_shape


def _network_dtype(module, dtype):
    if dtype is not None:
        return dtype
    first = next(iter(module.parameters()), None) if hasattr(module, "parameters") else None
    return None if first is None else first.dtype


def score_from_diffusers(unet, scheduler, *, sample_shape=None, dtype=None) -> Score:
    """``Score.from_diffusers``: a diffusers network and the scheduler it was trained with, as a :class:`Score`.

    Parameters
    ----------
    unet : torch.nn.Module
        Called as ``unet(x, timestep).sample`` (``UNet2DModel``; a module returning a tensor also works) on
        ``x`` of shape ``(B, *sample_shape)``.
    scheduler : diffusers scheduler
        Any scheduler with ``alphas_cumprod`` (DDPM, DDIM, DPMSolverMultistep, UniPC, Euler...): its schedule
        gives the process (:class:`DiscreteVPSDE`) and ``config.prediction_type`` the parameterisation
        (``epsilon`` -> ``"eps"``, ``v_prediction`` -> ``"v"``, ``sample`` -> ``"x0"``). Its sampler options
        (clipping, thresholding) are not read: they belong to a sampler.
    sample_shape : tuple, optional
        ``(C, H, W)``; default ``(in_channels, sample_size, sample_size)`` from ``unet.config``.
    dtype : torch.dtype, optional
        The network's floating type (default: that of its parameters); states of another type are cast.

    Returns
    -------
    Score
        On flat states ``(B, C*H*W)`` (``dim = C*H*W``; the samplers work on rows), torch backend only, with
        ``sample_shape`` recorded (:func:`unflatten` gives images back). The network receives the continuous
        timestep ``t N - 1`` as a float tensor, one per row: the integer ``k`` exactly on the training
        timesteps ``t = (k+1)/N`` (rounded there, so the input equals diffusers' own).
    """
    torch = require("torch", extra="torch", what="Score.from_diffusers")
    if not callable(unet):
        raise ValueError(f"`unet` must be a torch module called as unet(x, timestep), got {type(unet).__name__}.")
    sde = DiscreteVPSDE.from_scheduler(scheduler)
    parameterisation = _prediction_of(scheduler)
    shape = _sample_shape(unet, sample_shape)
    dim = math.prod(shape)
    net_dtype = _network_dtype(unet, dtype)
    n_train = sde.num_train_timesteps

    def fn(t, x, p):
        dtype_in = net_dtype if net_dtype is not None else x.dtype
        u = sde.timestep(torch.as_tensor(t, dtype=torch.float64, device=x.device))
        u = torch.where((u - u.round()).abs() < 1e-9 * n_train, u.round(), u)  # the training timestep on a knot
        u = u.to(dtype_in).expand(x.shape[0]) if u.ndim == 0 else u.to(dtype_in)
        out = unet(x.reshape(x.shape[0], *shape).to(dtype_in), u)
        out = getattr(out, "sample", out)
        return out.reshape(x.shape[0], dim).to(x.dtype)

    score = Score(fn, sde, parameterisation=parameterisation, dim=dim, backends=("torch",))
    score.sample_shape = shape
    return score


def score_from_k_diffusion(denoiser, sde: DiffusionSDE | None = None, *, dim: int | None = None,
                           sample_shape=None, dtype=None) -> Score:
    """``Score.from_k_diffusion``: a k-diffusion (EDM) denoiser ``D(x, sigma)`` as a :class:`Score`.

    ``D`` denoises ``x = x0 + sigma n`` (Karras et al. 2022, eq. 2): its output is ``E[x0 | x]``. Any
    process ``x_t = alpha_t x0 + sigma_t eps`` is that variable after dividing by ``alpha_t``, with
    ``sigma = sigma_t / alpha_t`` (:meth:`~diffusion.sdes.DiffusionSDE.edm_sigma`), so the Score predicts
    ``x0_hat = D(x_t / alpha_t, sigma_t / alpha_t)`` (parameterisation ``"x0"``) for any ``sde``.

    Parameters
    ----------
    denoiser : callable
        ``denoiser(x, sigma)`` with ``sigma`` one value per row (a tensor of shape ``(B,)``).
    sde : DiffusionSDE, optional
        Default: the VE process (:class:`~diffusion.VESDE`) between the denoiser's ``sigma_min`` and
        ``sigma_max`` (k-diffusion's wrappers have both), i.e. k-diffusion's own variable (``alpha = 1``).
    dim, sample_shape : optional
        The flat dimension, or the denoiser's sample shape ``(C, H, W)`` (states are flattened to rows).
    dtype : torch.dtype, optional
        The denoiser's floating type (default: that of its parameters, if any).
    """
    torch = require("torch", extra="torch", what="Score.from_k_diffusion")
    if not callable(denoiser):
        raise ValueError(f"`denoiser` must be a function denoiser(x, sigma), got {type(denoiser).__name__}.")
    if sde is None:
        low, high = getattr(denoiser, "sigma_min", None), getattr(denoiser, "sigma_max", None)
        if low is None or high is None:
            raise ValueError("give `sde`: the denoiser has no sigma_min/sigma_max to build the VE process from "
                             "(e.g. sde=VESDE(sigma_min=0.002, sigma_max=80)).")
        sde = VESDE(float(low), float(high))
    elif not isinstance(sde, DiffusionSDE):
        raise ValueError(f"`sde` must be a diffusion SDE (VPSDE, VESDE, ...), got {type(sde).__name__}.")
    if sample_shape is not None:
        shape = _sample_shape(None, sample_shape)
        if dim is not None and dim != math.prod(shape):
            raise ValueError(f"`dim` ({dim}) must be the product of `sample_shape` {shape}.")
        dim = math.prod(shape)
    else:
        shape = None
    net_dtype = _network_dtype(denoiser, dtype)

    def fn(t, x, p):
        dtype_in = net_dtype if net_dtype is not None else x.dtype
        a, s = sde.alpha(t), sde.sigma(t)
        a = torch.as_tensor(a, dtype=x.dtype, device=x.device)
        sigma = (torch.as_tensor(s, dtype=x.dtype, device=x.device) / a).expand(x.shape[0])
        a_rows = a[:, None] if a.ndim == 1 else a
        x_kd = x / a_rows
        x_in = x_kd if shape is None else x_kd.reshape(x.shape[0], *shape)
        out = denoiser(x_in.to(dtype_in), sigma.to(dtype_in))
        return out.reshape(x.shape).to(x.dtype)

    score = Score(fn, sde, parameterisation="x0", dim=dim, backends=("torch",))
    score.sample_shape = shape
    return score


def unflatten(x, score_or_shape):
    """Rows ``(B, C*H*W)`` (``Samples.x``) back to images ``(B, C, H, W)``, for a Score from
    :func:`score_from_diffusers` (its ``sample_shape``) or a given shape."""
    shape = getattr(score_or_shape, "sample_shape", score_or_shape)
    if shape is None or isinstance(shape, Score):
        raise ValueError("`score_or_shape` must be a Score with a sample_shape (Score.from_diffusers) or a shape (C, H, W).")
    shape = tuple(int(v) for v in shape)
    if x.ndim != 2 or x.shape[1] != math.prod(shape):
        raise ValueError(f"`x` must have shape (n, {math.prod(shape)}) to become (n, *{shape}), got {tuple(x.shape)}.")
    return x.reshape(x.shape[0], *shape)


# --------------------------------------------------------------------------- the scheduler
class SdekitScheduler:
    """A diffusers-compatible scheduler whose steps are sdekit's exponential integrators.

    Made with :meth:`from_scheduler` from a diffusers ``DDIMScheduler`` or ``DPMSolverMultistepScheduler``,
    whose timesteps (``set_timesteps``, every ``timestep_spacing`` and ``steps_offset``), final noise level
    (DDIM's ``set_alpha_to_one``, DPM-Solver's ``final_sigmas_type``) and prediction type it keeps. Step ``i``
    goes from ``timesteps[i]`` to ``timesteps[i + 1]`` with the update of :func:`sdekit.semilinear.grid_weights`
    on the grid's log-SNR values (the same weights, hence the same numbers, as ``diffusion.sample`` with that
    method on that grid), ``x_(i+1) = (sigma_(i+1)/sigma_i) x_i + alpha_(i+1) sum_j w_ij x0_hat_(i-j)``
    (data prediction, DPM-Solver++); a final step to noise level 0 returns ``x0_hat`` (DDIM's step to
    ``alphas_cumprod = 1``; DPM-Solver's first-order final step to sigma 0).

    Attributes
    ----------
    timesteps : torch.Tensor
        The integer timesteps of the loop (after :meth:`set_timesteps`).
    init_noise_sigma : float
        1 (a VP process starts from ``N(0, I)``).
    order : int
        1 (one network evaluation per step; what diffusers pipelines read).
    config : FrozenDict
        The source scheduler's configuration.
    method : str
        The diffusion method (``"ddim"``, ``"dpmpp_2m"``, ``"exp_ab2"``, ``"dpmpp_3m"``).
    sde : DiscreteVPSDE
        The process.
    """

    order = 1
    init_noise_sigma = 1.0

    def __init__(self, source, method: str):
        if method not in SCHEDULER_METHODS:
            raise ValueError(f"`method` must be one of {list(SCHEDULER_METHODS)} (one network evaluation per step), "
                             f"got {method!r}.")
        self._source = source
        self.method = method
        self.sde = DiscreteVPSDE.from_scheduler(source)
        self.prediction = _prediction_of(source)
        self.config = source.config
        self.timesteps = None
        self.num_inference_steps = None

    @classmethod
    def from_scheduler(cls, scheduler, method: str = "dpmpp_2m") -> SdekitScheduler:
        """The sdekit scheduler taking over ``scheduler``'s timesteps, final noise level and prediction type.

        ``scheduler``: a diffusers ``DDIMScheduler`` or ``DPMSolverMultistepScheduler``. Refused in one line:
        another type, ``clip_sample`` or ``thresholding`` (sdekit's integrators do not clip), and DPM-Solver's
        sigma-spaced timesteps (``use_karras_sigmas`` and the like: the network would see rounded timesteps
        of other noise levels).
        """
        name = type(scheduler).__name__
        if name not in SUPPORTED_SCHEDULERS:
            raise ValueError(f"SdekitScheduler.from_scheduler takes a diffusers {' or '.join(SUPPORTED_SCHEDULERS)}, "
                             f"got {name}; build one from your scheduler's config (DDIMScheduler.from_config(s.config)).")
        config = scheduler.config
        for option in ("clip_sample", "thresholding", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
                       "use_lu_lambdas", "use_flow_sigmas"):
            if config.get(option, False):
                raise ValueError(f"{name} with {option}=True is not supported by SdekitScheduler; build the scheduler "
                                 f"with {option}=False.")
        return cls(type(scheduler).from_config(config), method)

    def __len__(self):
        return self.sde.num_train_timesteps

    def set_timesteps(self, num_inference_steps: int, device=None):
        """Choose the timesteps as the source scheduler does, and compute every step's weights once."""
        self._source.set_timesteps(num_inference_steps, device=device)
        self.timesteps = self._source.timesteps
        self.num_inference_steps = len(self.timesteps)
        steps = self.timesteps.detach().cpu().numpy().astype(np.int64)
        n_train = self.sde.num_train_timesteps
        if type(self._source).__name__ == "DDIMScheduler":
            # DDIM steps from k to k - N // n (or to the final level below 0), whatever the spacing
            targets = steps - n_train // num_inference_steps
            if np.any(targets[:-1] != steps[1:]):
                raise ValueError(f"DDIMScheduler (timestep_spacing={self.config.get('timestep_spacing')!r}) steps from k to "
                                 f"k - {n_train // num_inference_steps}, not to the next of its timesteps; use "
                                 "timestep_spacing='leading', or a num_inference_steps that divides num_train_timesteps.")
            final_is_data = bool(self.config.get("set_alpha_to_one", True)) and targets[-1] < 0
        else:
            final_is_data = self.config.get("final_sigmas_type", "zero") == "zero"
        times = self.sde.time_of_timestep(steps)
        if np.any(np.diff(times) >= 0):
            raise ValueError("the scheduler's timesteps must be strictly decreasing.")
        # the last step goes to the data (x0_hat) or to training timestep 0, t = 1/N (a zero step if already there)
        final = 0.0 if final_is_data else 1.0 / n_train
        grid = times if (final_is_data or final >= times[-1]) else np.append(times, final)
        self._final_is_data = final_is_data
        self._times = times
        self._grid = grid
        log_factor = np.log(self.sde.sigma(grid))
        clock = self.sde.log_snr(grid)
        weights = semilinear.grid_weights(SCHEDULER_METHODS[self.method], clock) if grid.size > 1 else None
        self._state_factor = np.exp(log_factor[1:] - log_factor[:-1]).tolist()
        self._coefficients = [] if weights is None else (np.exp(log_factor[1:] + clock[1:])[:, None]
                                                          * weights.weights).tolist()
        self._orders = [] if weights is None else weights.orders.tolist()
        self._history = []
        self._step_index = 0

    def scale_model_input(self, sample, timestep=None):
        """The network's input is the state itself (VP)."""
        return sample

    def step(self, model_output, timestep, sample, eta: float = 0.0, use_clipped_model_output: bool = False,
             generator=None, return_dict: bool = True):
        """One step from ``timestep`` (the next of :attr:`timesteps`) to the one after it.

        ``eta`` must be 0 (the integrators are deterministic); ``use_clipped_model_output`` and ``generator``
        are accepted for diffusers pipelines and have nothing to change here. Returns diffusers'
        ``SchedulerOutput(prev_sample=...)``, or ``(prev_sample,)`` with ``return_dict=False``.
        """
        if self.timesteps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step().")
        if eta != 0:
            raise ValueError(f"`eta` must be 0: SdekitScheduler integrates the probability-flow ODE, got eta={eta}.")
        k = self._step_index
        if k >= len(self._times):
            raise ValueError("step() was called after the last timestep; call set_timesteps() again to sample anew.")
        expected = int(self.timesteps[k])
        if int(timestep) != expected:
            raise ValueError(f"step() got timestep {int(timestep)} but the next one is {expected}; step through "
                             "scheduler.timesteps in order.")
        if tuple(model_output.shape) != tuple(sample.shape):
            raise ValueError(f"`model_output` has shape {tuple(model_output.shape)} but `sample` has {tuple(sample.shape)}; "
                             "they must match.")
        x0_hat = convert(model_output.to(sample.dtype), sample, float(self._times[k]), self.sde, source=self.prediction,
                         target="x0")
        self._history.insert(0, x0_hat)
        del self._history[semilinear.ORDERS[SCHEDULER_METHODS[self.method]]:]
        if k == len(self._times) - 1 and self._final_is_data:
            prev = x0_hat
        elif k >= len(self._coefficients):  # already at the final level
            prev = sample
        else:
            prev = self._state_factor[k] * sample
            for c, d in zip(self._coefficients[k][: self._orders[k]], self._history, strict=False):
                prev = prev + c * d
        self._step_index = k + 1
        if not return_dict:
            return (prev,)
        outputs = require("diffusers.schedulers.scheduling_utils", extra="diffusers", what="SdekitScheduler.step")
        return outputs.SchedulerOutput(prev_sample=prev)

    def add_noise(self, original_samples, noise, timesteps):
        """``sqrt(abar_k) x0 + sqrt(1 - abar_k) noise`` for one training timestep ``k`` per sample."""
        import torch

        steps = torch.as_tensor(timesteps, device=original_samples.device).long().reshape(-1)
        abar = torch.as_tensor(np.exp(-self.sde.params.neg_log_alphas_cumprod[1:]), dtype=original_samples.dtype,
                               device=original_samples.device)[steps]
        abar = abar.reshape(-1, *([1] * (original_samples.ndim - 1)))
        return abar.sqrt() * original_samples + (1.0 - abar).sqrt() * noise

    def __repr__(self):
        return f"SdekitScheduler(method={self.method!r}, source={type(self._source).__name__}, sde={self.sde!r})"

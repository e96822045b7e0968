"""Training objectives for score networks, and an exponential moving average of weights.

* :func:`dsm_loss` — continuous-time denoising score matching (Vincent 2011; Song et al.
  2021): ``E_t E_{x0, z} lambda(t) |s_theta(x_t, t) + z / sigma_t|^2 / 2`` with
  ``x_t = alpha_t x0 + sigma_t z``; weightings ``"sigma2"`` (``lambda = sigma_t^2``,
  the usual one, the same as noise-prediction MSE), ``"likelihood"`` (``lambda = g(t)^2``,
  Song, Durkan, Murray & Ermon 2021: the loss bounds the negative log-likelihood) and
  ``"none"``. Its minimiser is the true score of ``p_t``.
* :func:`ddpm_loss` — DDPM's ``L_simple`` (Ho et al. 2020): ``E |eps - eps_theta(x_t, t)|^2``
  at ``N`` discrete times ``t_i = i / N``; minimiser ``eps* = -sigma_t grad log p_t``.
* :func:`ssm_loss` — sliced score matching (Song, Garg, Shi & Ermon 2019):
  ``E_v [v^T grad_x (v^T s(x)) + (v^T s(x))^2 / 2]``; with ``variance_reduction=True``
  the second term is its expectation ``|s(x)|^2 / 2`` over Gaussian ``v`` (SSM-VR).
  Its minimiser is ``grad log p``; it needs no noise, so it fits a score at one noise
  level (or at ``sigma = 0``). :func:`noisy_ssm_loss` applies it to ``x_t ~ p_t`` at random
  times with DSM's weightings (``TrainConfig(loss="ssm")``).
* :func:`flow_matching_loss` — conditional flow matching (Lipman et al. 2023, eq. 9; Liu et al. 2023,
  eq. 1): ``E_t E_{x0, z} |v_theta(x_t, t) - (alpha'_t x0 + sigma'_t z)|^2``; its minimiser is the
  velocity ``E[alpha'_t x0 + sigma'_t z | x_t]``, the probability-flow drift (:mod:`diffusion.flow`;
  ``TrainConfig(loss="fm")``).
* :func:`edm_loss` — EDM's preconditioned denoising loss (Karras et al. 2022, eq. 2 with Table 1):
  ``E_k E_{x0, n} lambda(k) |D(x0 + k n) - x0|^2``, ``lambda = (k^2 + sd^2)/(k sd)^2``, noise levels
  ``ln k ~ N(P_mean, P_std^2)``; the network is EDM's ``F`` (``Score.from_module(net, sde,
  parameterisation="edm")``; ``TrainConfig(loss="edm")``).

Randomness comes from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sdekit.checks import require

from .flow import interpolant_derivatives
from .models import drop_labels
from .score import convert
from .sdes import DiffusionSDE

torch = require("torch", extra="diffusion", what="diffusion.training")

__all__ = ["dsm_loss", "ddpm_loss", "ssm_loss", "noisy_ssm_loss", "flow_matching_loss", "edm_loss", "TIME_SAMPLINGS", "LOSSES", "EMA",
           "WEIGHTINGS", "TrainConfig", "train", "save_checkpoint",
           "load_checkpoint", "write_atomic"]

WEIGHTINGS = ("sigma2", "likelihood", "none")
LOSSES = ("dsm", "ddpm", "ssm", "fm", "edm")
TIME_SAMPLINGS = ("uniform", "logit_normal")


def _times(n, sde, t, generator, like):
    if t is not None:
        return torch.full((n,), float(t), dtype=like.dtype, device=like.device)
    u = torch.rand(n, generator=generator, dtype=like.dtype, device=like.device)
    return sde.eps + (sde.T - sde.eps) * u


def _perturb(sde, x0, t, generator):
    """``(t, z, alpha_t, sigma_t, x_t)`` for the batch ``x0``: ``t ~ U(eps, T)`` (or fixed), ``z ~ N(0, I)``."""
    tt = _times(x0.shape[0], sde, t, generator, x0)
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    a, s = sde.alpha(tt)[:, None], sde.sigma(tt)[:, None]
    return tt, z, a, s, a * x0 + s * z


def _check_weighting(weighting):
    if weighting not in WEIGHTINGS:
        raise ValueError(f"`weighting` must be one of {WEIGHTINGS}, got {weighting!r}.")


def _net_score(net, x, t, sde, parameterisation, y):
    pred = net(x, t) if y is None else net(x, t, y)
    return convert(pred, x, t, sde, source=parameterisation, target="score")


def dsm_loss(net, sde: DiffusionSDE, x0, *, weighting: str = "sigma2", parameterisation: str | None = None,
             t=None, y=None, generator: torch.Generator | None = None):
    """Denoising score matching loss of ``net(x, t[, y])`` on the batch ``x0`` (a scalar tensor).

    ``t``: a fixed time instead of ``t ~ U(eps, T)``. ``parameterisation``
    defaults to ``net.parameterisation`` (the network's prediction is converted
    to a score first).
    """
    _check_weighting(weighting)
    param = parameterisation or getattr(net, "parameterisation", "score")
    tt, z, _, s, xt = _perturb(sde, x0, t, generator)
    score = _net_score(net, xt, tt, sde, param, y)
    if weighting == "sigma2":
        # sigma^2 |s + z/sigma|^2 = |sigma s + z|^2: computed without dividing by a small sigma
        per = ((s * score + z) ** 2).sum(dim=1)
    else:
        lam = sde.g2(tt) if weighting == "likelihood" else torch.ones_like(tt)
        per = lam * ((score + z / s) ** 2).sum(dim=1)
    return 0.5 * per.mean()


def ddpm_loss(net, sde: DiffusionSDE, x0, *, n_steps: int = 1000, parameterisation: str | None = None, y=None,
              generator: torch.Generator | None = None):
    """DDPM's ``L_simple``: noise-prediction MSE at ``t_i = i / n_steps``, ``i`` uniform in ``1..n_steps``."""
    param = parameterisation or getattr(net, "parameterisation", "eps")
    n = x0.shape[0]
    i = torch.randint(1, n_steps + 1, (n,), generator=generator, device=x0.device)
    tt = (i.to(x0.dtype) / n_steps) * sde.T
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    xt = sde.alpha(tt)[:, None] * x0 + sde.sigma(tt)[:, None] * z
    pred = net(xt, tt) if y is None else net(xt, tt, y)
    eps = pred if param == "eps" else convert(pred, xt, tt, sde, source=param, target="eps")
    return ((eps - z) ** 2).sum(dim=1).mean()


def ssm_loss(score, x, *, n_projections: int = 1, variance_reduction: bool = True,
             generator: torch.Generator | None = None, weights=None):
    """Sliced score matching loss of ``score(x)`` (a function of the batch ``x``), with Gaussian projections.

    ``weights``: one non-negative weight per row (the mean of the weighted terms is returned).
    """
    x = x.detach().requires_grad_(True)
    s = score(x)
    total = 0.0
    for _ in range(n_projections):
        v = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        sv = (s * v).sum()
        grad = torch.autograd.grad(sv, x, create_graph=True)[0]
        term1 = (grad * v).sum(dim=1)
        term2 = 0.5 * (s * s).sum(dim=1) if variance_reduction else 0.5 * ((s * v).sum(dim=1)) ** 2
        per = term1 + term2
        total = total + (per if weights is None else weights * per).mean()
    return total / n_projections


def noisy_ssm_loss(net, sde: DiffusionSDE, x0, *, weighting: str = "sigma2", n_projections: int = 1,
                   variance_reduction: bool = True, parameterisation: str | None = None, t=None, y=None,
                   generator: torch.Generator | None = None):
    """Sliced score matching of ``net`` at random times: :func:`ssm_loss` on ``x_t ~ p_t``, weighted by ``lambda(t)``.

    Score matching needs no knowledge of the noise that made ``x_t``: per time
    it equals ``E |s - grad log p_t|^2 / 2`` up to a constant (Hyvärinen
    2005), the same objective as :func:`dsm_loss` (Vincent 2011), so both have
    the true score as minimiser; SSM pays a Jacobian-vector product per
    projection for it. Weightings as :func:`dsm_loss`.
    """
    _check_weighting(weighting)
    param = parameterisation or getattr(net, "parameterisation", "score")
    tt, _, _, _, xt = _perturb(sde, x0, t, generator)
    lam = {"sigma2": lambda: sde.sigma(tt) ** 2, "likelihood": lambda: sde.g2(tt),
           "none": lambda: torch.ones_like(tt)}[weighting]()
    return ssm_loss(lambda x: _net_score(net, x, tt, sde, param, y), xt, n_projections=n_projections,
                    variance_reduction=variance_reduction, generator=generator, weights=lam)


def flow_matching_loss(net, process: DiffusionSDE, x0, *, time_sampling: str = "uniform", parameterisation: str | None = None,
                       t=None, y=None, generator: torch.Generator | None = None):
    """Conditional flow-matching loss of ``net(x, t[, y])`` on the batch ``x0`` (a scalar tensor).

    ``E_t E_{x0, z} |v_theta(x_t, t) - (alpha'_t x0 + sigma'_t z)|^2`` with ``x_t = alpha_t x0 + sigma_t z``
    (Lipman et al. 2023, eq. 9; rectified flow, ``v = z - x0``: Liu et al. 2023, eq. 1). Per time it equals
    ``E |v_theta - v|^2`` plus a constant, with ``v(t, x) = E[alpha'_t x0 + sigma'_t z | x_t = x]`` the velocity
    (the probability-flow drift), so ``v`` is the minimiser. Any :class:`DiffusionSDE` works
    (``alpha' = f alpha``, ``sigma' = g^2/(2 sigma) + f sigma``); :class:`diffusion.flow.FlowMatching` is the usual one.

    ``time_sampling``: ``"uniform"`` draws ``t ~ U(eps, T)``; ``"logit_normal"`` draws ``t = eps + (T - eps) u``,
    ``u = sigmoid(n)``, ``n ~ N(0, 1)``, which spends the batch on intermediate times, where the velocity is hardest
    to predict (the conditional target's variance about ``v`` is largest), and little near the ends (Esser et al.
    2024, Scaling rectified flow transformers, §3.1, found it the best of their samplings). ``t``: a fixed time
    instead. ``parameterisation`` defaults to ``net.parameterisation`` (else ``"velocity"``); another one is
    converted to a velocity first.
    """
    if time_sampling not in TIME_SAMPLINGS:
        raise ValueError(f"`time_sampling` must be one of {TIME_SAMPLINGS}, got {time_sampling!r}.")
    param = parameterisation or getattr(net, "parameterisation", "velocity")
    n = x0.shape[0]
    if t is not None:
        tt = torch.full((n,), float(t), dtype=x0.dtype, device=x0.device)
    else:
        if time_sampling == "uniform":
            u = torch.rand(n, generator=generator, dtype=x0.dtype, device=x0.device)
        else:
            u = torch.sigmoid(torch.randn(n, generator=generator, dtype=x0.dtype, device=x0.device))
        tt = process.eps + (process.T - process.eps) * u
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    xt = process.alpha(tt)[:, None] * x0 + process.sigma(tt)[:, None] * z
    dalpha, dsigma = interpolant_derivatives(process, tt)
    target = dalpha[:, None] * x0 + dsigma[:, None] * z
    pred = net(xt, tt) if y is None else net(xt, tt, y)
    velocity = pred if param == "velocity" else convert(pred, xt, tt, process, source=param, target="velocity")
    return ((velocity - target) ** 2).sum(dim=1).mean()


def edm_loss(net, sde: DiffusionSDE, x0, *, sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2, y=None,
             generator: torch.Generator | None = None):
    """EDM's training loss of the raw network ``F = net(c_in x_edm, c_noise[, y])`` on the batch ``x0`` (a scalar tensor).

    Noise levels ``k = sigma_t / alpha_t`` are drawn as ``ln k ~ N(p_mean, p_std^2)`` and mapped to times
    ``t = sde.t_from_edm_sigma(k)`` clipped to ``[sde.eps, sde.T]`` (so ``k`` is clipped to the process's levels);
    ``x_edm = x_t / alpha_t = x0 + k n``. The loss is ``E lambda(k) |D - x0|^2`` with ``D = c_skip x_edm + c_out F``
    and ``lambda(k) = (k^2 + sd^2)/(k sd)^2 = 1/c_out^2``, i.e. ``E |F - (x0 - c_skip x_edm)/c_out|^2`` summed over
    dimensions and averaged over the batch (Karras et al. 2022, eq. 2 and 8, Table 1: ``P_mean = -1.2``,
    ``P_std = 1.2``, ``sd = sigma_data = 0.5``). Its minimiser is ``F* = (E[x0 | x_edm] - c_skip x_edm)/c_out``,
    the network that :meth:`diffusion.Score.from_module` with ``parameterisation="edm"`` turns into the exact score.
    """
    sigma_data = _positive(sigma_data, "sigma_data")
    p_std = _positive(p_std, "p_std")
    if not _real(p_mean):
        raise ValueError(f"`p_mean` must be a finite number, got {p_mean!r}.")
    n = x0.shape[0]
    log_level = p_mean + p_std * torch.randn(n, generator=generator, dtype=x0.dtype, device=x0.device)
    tt = sde.t_from_edm_sigma(torch.exp(log_level)).clamp(sde.eps, sde.T)
    level = sde.edm_sigma(tt)[:, None]
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    x_edm = x0 + level * z
    q = level * level + sigma_data * sigma_data
    c_skip, c_out, c_in = sigma_data**2 / q, level * sigma_data / torch.sqrt(q), 1.0 / torch.sqrt(q)
    c_noise = 0.25 * torch.log(level[:, 0])
    pred = net(c_in * x_edm, c_noise) if y is None else net(c_in * x_edm, c_noise, y)
    return ((pred - (x0 - c_skip * x_edm) / c_out) ** 2).sum(dim=1).mean()


def _positive(v, name) -> float:
    if not (_real(v) and v > 0):
        raise ValueError(f"`{name}` must be a positive finite number, got {v!r}.")
    return float(v)


class EMA:
    """Exponential moving average of a module's parameters (and a copy of its buffers).

    ``update()`` after each optimiser step: ``avg = decay avg + (1 - decay) param``;
    ``module`` is the averaged network to sample from. With ``warmup=True`` the
    decay is ``min(decay, (1 + k) / (10 + k))`` at update ``k`` (early averages do
    not remember the initial weights).
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999, *, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"`decay` must lie in [0, 1), got {decay}.")
        self.decay, self.warmup, self.updates = float(decay), bool(warmup), 0
        self.model = model
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self):
        d = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        for avg, p in zip(self.module.parameters(), self.model.parameters(), strict=True):
            avg.mul_(d).add_(p.detach(), alpha=1 - d)
        for avg, b in zip(self.module.buffers(), self.model.buffers(), strict=True):
            avg.copy_(b)
        self.updates += 1

    def state_dict(self):
        return {"decay": self.decay, "warmup": self.warmup, "updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state):
        self.decay, self.warmup, self.updates = state["decay"], state["warmup"], state["updates"]
        self.module.load_state_dict(state["module"])


# --------------------------------------------------------------------------- training loop
@dataclass
class TrainConfig:
    """Settings of :func:`train` (all saved in every checkpoint)."""

    loss: str = "dsm"  # "dsm", "ddpm" (L_simple), "ssm" (sliced score matching at random times), "fm" (flow matching) or "edm" (EDM)
    weighting: str = "sigma2"  # DSM weighting: "sigma2", "likelihood", "none"
    sigma_data: float = 0.5  # loss="edm": EDM's data standard deviation (Karras et al. 2022, Table 1)
    p_mean: float = -1.2  # loss="edm": ln(noise level) ~ N(p_mean, p_std^2)
    p_std: float = 1.2
    steps: int = 2000
    batch_size: int = 256
    lr: float = 2e-3
    lr_schedule: str = "cosine"  # "constant", or "cosine" decay to 0 after a linear warm-up
    warmup: int = 100  # linear warm-up steps of the learning rate
    ema_decay: float = 0.999  # in [0, 1)
    grad_clip: float | None = 1.0  # gradient-norm clip; 0 or None: no clipping
    label_dropout: float = 0.1  # class-conditional networks: probability of the no-class token, in [0, 1)
    checkpoint_every: int = 500
    seed: int = 0

    def __post_init__(self):
        """Check every field (a wrong value would train silently wrong: a negative clip flips the gradients)."""
        if self.loss not in LOSSES:
            raise ValueError(f"`loss` must be one of {LOSSES}, got {self.loss!r}.")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"`weighting` must be one of {WEIGHTINGS}, got {self.weighting!r}.")
        for name, v in (("sigma_data", self.sigma_data), ("p_std", self.p_std)):
            _positive(v, name)
        if not _real(self.p_mean):
            raise ValueError(f"`p_mean` must be a finite number, got {self.p_mean!r}.")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"`lr_schedule` must be 'constant' or 'cosine', got {self.lr_schedule!r}.")
        for name, low in (("steps", 1), ("batch_size", 1), ("checkpoint_every", 1), ("warmup", 0), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < low:
                what = "a positive" if low else "a non-negative"
                raise ValueError(f"`{name}` must be {what} integer, got {v!r}.")
            setattr(self, name, int(v))
        if not (_real(self.lr) and self.lr > 0):
            raise ValueError(f"`lr` must be a positive finite number, got {self.lr!r}.")
        if not (_real(self.ema_decay) and 0.0 <= self.ema_decay < 1.0):
            raise ValueError(f"`ema_decay` must lie in [0, 1), got {self.ema_decay!r}.")
        if not (self.grad_clip is None or (_real(self.grad_clip) and self.grad_clip >= 0)):
            raise ValueError(f"`grad_clip` must be a positive finite number (0 or None: no clipping), got "
                             f"{self.grad_clip!r}.")
        if not (_real(self.label_dropout) and 0.0 <= self.label_dropout < 1.0):
            raise ValueError(f"`label_dropout` must lie in [0, 1) (1 would never show the network a label), got "
                             f"{self.label_dropout!r}.")


def _real(v) -> bool:
    """A finite real number (not a bool)."""
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool) and math.isfinite(v)


def _lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of ``config.lr`` at ``step``: linear warm-up, then constant or cosine decay to zero."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    if config.lr_schedule == "constant":
        return 1.0
    span = max(config.steps - config.warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - config.warmup, span) / span))


CHECKPOINT = "checkpoint.pt"


def _temp_name(name: str) -> re.Pattern:
    """Names :func:`write_atomic` gives its temporary files for ``name`` (``tempfile.mkstemp``'s 8 random characters)."""
    return re.compile(re.escape(name) + r"\.[A-Za-z0-9_]{8}\.tmp")


def write_atomic(path, write: Callable) -> None:
    """Write a file atomically: ``write(fh)`` into a temporary file in the same folder, fsync, rename over ``path``.

    Temporary files of ``path`` left by a killed writer (``path.name.XXXXXXXX.tmp``,
    this function's own names only) are removed first: one run folder has one writer.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stale = _temp_name(path.name)
    for old in path.parent.iterdir():
        if stale.fullmatch(old.name):
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_checkpoint(path, state: dict):
    """Write ``state`` atomically (:func:`write_atomic`): a reader sees the old checkpoint or the new one, whole."""
    write_atomic(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path) -> dict:
    """Read a checkpoint; a missing, truncated or foreign file is a clear error, never a silent load."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}; train first (or check the run folder).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - every unpickling failure means the same thing here
        raise ValueError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {exc}); delete it and "
                         "resume from an earlier one, or retrain.") from exc
    need = {"model", "ema", "optimizer", "scheduler", "step", "generator", "config", "losses"}
    if not isinstance(state, dict) or not need <= set(state):
        raise ValueError(f"{path} is not a diffusion training checkpoint (missing {sorted(need - set(state or {}))}).")
    return state


def load_weights(net: torch.nn.Module, weights: dict, source) -> None:
    """``net.load_state_dict(weights)``, with a one-line error when the weights belong to another network."""
    try:
        net.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else (first[0] if first else "")
        raise ValueError(f"{source} holds the weights of another network than this {type(net).__name__} "
                         f"({detail[:160]}); load it with the network it was trained with.") from None


def train(net: torch.nn.Module, sde: DiffusionSDE, x, config: TrainConfig, *, labels=None, out=None,
          resume: bool = False, progress: bool = True, log: Callable | None = None,
          evaluate: Callable | None = None, eval_every: int | None = None, evals: list | None = None,
          extra: dict | None = None, log_eval: Callable[[str], None] | None = None,
          on_checkpoint: Callable[[dict], None] | None = None) -> dict:
    """Train ``net`` on the rows of ``x``; returns ``{"ema": EMA, "losses": [...], "evals": [...], "step": int}``.

    Every ``config.checkpoint_every`` steps (and at the end) the model, EMA,
    optimiser, learning-rate schedule, step, random-generator state, losses and
    evaluations are written atomically to ``out/checkpoint.pt`` (with
    ``extra``'s entries). ``resume=True`` continues from that file exactly: the
    resumed run's weights equal an uninterrupted run's. An interrupted run
    loses at most the steps since its last checkpoint.

    ``log(step, loss)`` is called after every step. ``evaluate(step, module)``
    is called every ``eval_every`` steps (and at the end) with the EMA network
    and returns a dict of numbers, kept in ``evals`` and the checkpoint and
    printed (through ``log_eval``, default the progress bar). It must not use
    the global torch random state if the run is to resume exactly (the
    training draws from its own generator). ``on_checkpoint(state)`` is called
    after each checkpoint is written (files that must describe the checkpoint,
    such as a run's ``run.json``, are written there).
    """
    if eval_every is not None and evaluate is None:
        raise ValueError("`eval_every` needs `evaluate`, the function that evaluates the network.")
    if evaluate is not None and not (isinstance(eval_every, int) and eval_every >= 1):
        raise ValueError(f"`eval_every` must be a positive integer, got {eval_every!r}.")
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"`x` must have shape (n, dim), got {tuple(x.shape)}.")
    y_all = None if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.long)
    conditional = bool(getattr(net, "n_classes", None))
    if conditional and y_all is None:
        raise ValueError("a class-conditional network needs `labels`.")
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(_lr_factor, config=config))
    ema = EMA(net, config.ema_decay)
    losses: list = []
    step = 0
    ckpt = None if out is None else Path(out) / CHECKPOINT
    if resume:
        if ckpt is None:
            raise ValueError("`resume` needs `out`, the run folder holding the checkpoint.")
        state = load_checkpoint(ckpt)
        load_weights(net, state["model"], ckpt)
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        step, losses = int(state["step"]), list(state["losses"])
        evals = list(state.get("evals", [])) if evals is None else evals
    evals = [] if evals is None else evals

    def snapshot():
        state = {"model": net.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "step": step, "generator": gen.get_state(),
                 "config": asdict(config), "losses": losses, "evals": evals, **(extra or {})}
        save_checkpoint(ckpt, state)
        if on_checkpoint is not None:
            on_checkpoint(state)

    def run_evaluation():
        net.eval()
        result = {"step": step, **{k: v for k, v in evaluate(step, ema.module).items() if k != "step"}}
        net.train()
        evals.append(result)
        text = f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in result.items() if k != "step")
        (log_eval or tqdm.write)(text)

    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc="train", dynamic_ncols=True)
    net.train()
    while step < config.steps:
        idx = torch.randint(x.shape[0], (config.batch_size,), generator=gen)
        xb = x[idx]
        yb = None
        if conditional:
            yb = drop_labels(y_all[idx], net.n_classes, config.label_dropout, generator=gen)
        if config.loss == "dsm":
            loss = dsm_loss(net, sde, xb, weighting=config.weighting, y=yb, generator=gen)
        elif config.loss == "ssm":
            loss = noisy_ssm_loss(net, sde, xb, weighting=config.weighting, y=yb, generator=gen)
        elif config.loss == "edm":
            loss = edm_loss(net, sde, xb, sigma_data=config.sigma_data, p_mean=config.p_mean, p_std=config.p_std, y=yb,
                            generator=gen)
        elif config.loss == "fm":
            loss = flow_matching_loss(net, sde, xb, y=yb, generator=gen)
        else:
            loss = ddpm_loss(net, sde, xb, y=yb, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        opt.step()
        sched.step()
        ema.update()
        step += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"the loss became {value} at step {step}; lower `lr` or check the data.")
        losses.append(value)
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if evaluate is not None and (step % eval_every == 0 or step == config.steps) and \
                not (evals and evals[-1]["step"] == step):
            run_evaluation()
        if ckpt is not None and (step % config.checkpoint_every == 0 or step == config.steps):
            snapshot()
        if log is not None:
            log(step, value)
    bar.close()
    net.eval()
    return {"ema": ema, "losses": losses, "evals": evals, "step": step}

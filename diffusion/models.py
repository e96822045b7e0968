"""Score networks in torch: an MLP for low-dimensional data and a small U-Net for images.

Both are called as ``net(x, c)`` (optionally ``net(x, c, y)`` with class labels),
where ``c`` is one conditioning value per row (the time ``t``, or the log-SNR;
see :meth:`diffusion.Score.from_module`'s ``time_input``), and predict the
quantity of their ``parameterisation`` (``"eps"`` by default). Wrap a trained
network with :func:`as_score` to sample it with any integrator.

Class conditioning reserves label ``n_classes`` as the "no class" token: training
with label dropout (:func:`drop_labels`) makes the same network the conditional
and the unconditional model that classifier-free guidance combines.

References
----------
Vaswani et al. (2017) (sinusoidal embeddings); Ronneberger et al. (2015) and
Ho et al. (2020) (U-Net for diffusion); Ho & Salimans (2022) (label dropout).
"""

from __future__ import annotations

import math

from sdekit.checks import require

from .score import PARAMETERISATIONS, Score
from .sdes import DiffusionSDE

torch = require("torch", extra="diffusion", what="diffusion.models (the score networks)")
nn = torch.nn

__all__ = ["SinusoidalEmbedding", "ScoreMLP", "UNet", "as_score", "drop_labels"]


class SinusoidalEmbedding(nn.Module):
    """``[sin(w_k c), cos(w_k c)]`` with frequencies ``w_k`` geometric from 1 to ``max_freq``.

    ``scale`` multiplies ``c`` first (times in [0, 1] use ``scale=1000`` as DDPM's
    integer steps do; log-SNR values in about [-10, 10] use ``scale=1``).
    """

    def __init__(self, dim: int, *, scale: float = 1000.0, max_period: float = 10_000.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"`dim` must be an even number >= 2, got {dim}.")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
        self.register_buffer("freqs", freqs, persistent=False)
        self.scale = float(scale)

    def forward(self, c):
        a = (self.scale * c.reshape(-1, 1)) * self.freqs.to(c.dtype)
        return torch.cat([torch.sin(a), torch.cos(a)], dim=1)


def _check_classes(n_classes):
    if n_classes is not None and (not isinstance(n_classes, int) or n_classes < 1):
        raise ValueError(f"`n_classes` must be a positive integer or None, got {n_classes!r}.")


class ScoreMLP(nn.Module):
    """MLP with a sinusoidal embedding of the conditioning value, for low-dimensional data.

    Parameters
    ----------
    dim : int
        Data dimension.
    hidden : int
        Width of the hidden layers.
    depth : int
        Number of hidden layers (residual blocks of Linear + SiLU).
    embed : int
        Size of the time embedding.
    n_classes : int, optional
        Class-conditional when given: ``forward(x, c, y)`` with ``y`` in
        ``0..n_classes`` (``n_classes`` = unconditional).
    time_scale : float
        ``scale`` of the embedding (1000 for ``t`` in [0, 1]).
    parameterisation : str
        What the network predicts (used by :func:`as_score`).
    """

    def __init__(self, dim: int, *, hidden: int = 128, depth: int = 3, embed: int = 32, n_classes: int | None = None,
                 time_scale: float = 1000.0, parameterisation: str = "eps"):
        super().__init__()
        if parameterisation not in PARAMETERISATIONS:
            raise ValueError(f"`parameterisation` must be one of {PARAMETERISATIONS}, got {parameterisation!r}.")
        _check_classes(n_classes)
        self.dim, self.n_classes, self.parameterisation = int(dim), n_classes, parameterisation
        self.embed = SinusoidalEmbedding(embed, scale=time_scale)
        self.cond = nn.Sequential(nn.Linear(embed, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.label = nn.Embedding(n_classes + 1, hidden) if n_classes else None
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x, c, y=None):
        h = self.inp(x)
        e = self.cond(self.embed(c).to(x.dtype))
        if self.label is not None:
            e = e + self.label(_labels(y, self.n_classes, x))
        for block in self.blocks:
            h = h + block(h + e)
        return self.out(h)


class _ResBlock(nn.Module):
    def __init__(self, c_in, c_out, emb, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb, c_out)
        self.norm2 = nn.GroupNorm(min(groups, c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, e):
        h = self.conv1(torch.nn.functional.silu(self.norm1(x)))
        h = h + self.emb(e)[:, :, None, None]
        h = self.conv2(torch.nn.functional.silu(self.norm2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """A small U-Net for square images (e.g. the 8x8 digits), on flattened inputs.

    ``forward(x, c[, y])`` takes ``x`` of shape ``(n, channels * size * size)`` —
    the flat states sdekit integrates — reshapes it to images, and returns the
    prediction flattened again. Two resolutions (``size`` and ``size / 2``), a
    residual block per level and a middle block; the time (and label) embedding
    is added in every block.
    """

    def __init__(self, size: int = 8, channels: int = 1, *, width: int = 32, embed: int = 64,
                 n_classes: int | None = None, time_scale: float = 1000.0, parameterisation: str = "eps"):
        super().__init__()
        if parameterisation not in PARAMETERISATIONS:
            raise ValueError(f"`parameterisation` must be one of {PARAMETERISATIONS}, got {parameterisation!r}.")
        if size % 2:
            raise ValueError(f"`size` must be even (one down-sampling), got {size}.")
        _check_classes(n_classes)
        self.size, self.channels, self.n_classes = size, channels, n_classes
        self.dim = channels * size * size
        self.parameterisation = parameterisation
        self.embed = nn.Sequential(SinusoidalEmbedding(embed, scale=time_scale), nn.Linear(embed, embed), nn.SiLU(),
                                   nn.Linear(embed, embed))
        self.label = nn.Embedding(n_classes + 1, embed) if n_classes else None
        g = 8
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.down1 = _ResBlock(width, width, embed, g)
        self.pool = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.down2 = _ResBlock(2 * width, 2 * width, embed, g)
        self.mid = _ResBlock(2 * width, 2 * width, embed, g)
        self.up2 = _ResBlock(4 * width, 2 * width, embed, g)
        self.upsample = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.up1 = _ResBlock(2 * width, width, embed, g)
        self.out = nn.Sequential(nn.GroupNorm(g, width), nn.SiLU(), nn.Conv2d(width, channels, 3, padding=1))

    def forward(self, x, c, y=None):
        n = x.shape[0]
        e = self.embed(c.to(x.dtype))
        if self.label is not None:
            e = e + self.label(_labels(y, self.n_classes, x))
        h0 = self.inp(x.reshape(n, self.channels, self.size, self.size))
        h1 = self.down1(h0, e)
        h2 = self.down2(self.pool(h1), e)
        m = self.mid(h2, e)
        u2 = self.up2(torch.cat([m, h2], dim=1), e)
        u1 = self.up1(torch.cat([self.upsample(u2), h1], dim=1), e)
        return self.out(u1).reshape(n, self.dim)


def _labels(y, n_classes, x):
    """Labels as a long tensor on ``x``'s device; ``None`` means unconditional (label ``n_classes``)."""
    if y is None:
        return torch.full((x.shape[0],), n_classes, dtype=torch.long, device=x.device)
    y = torch.as_tensor(y, device=x.device).long()
    if y.ndim == 0:
        y = y.expand(x.shape[0])
    if y.shape != (x.shape[0],) or bool(((y < 0) | (y > n_classes)).any()):
        raise ValueError(f"labels must be one integer in 0..{n_classes} per row ({n_classes} = unconditional).")
    return y


def drop_labels(y, n_classes: int, p: float, generator: torch.Generator | None = None):
    """Replace each label by the unconditional token ``n_classes`` with probability ``p``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"`p` must lie in [0, 1], got {p}.")
    drop = torch.rand(y.shape, generator=generator, device=y.device) < p
    return torch.where(drop, torch.full_like(y, n_classes), y)


def as_score(net: nn.Module, sde: DiffusionSDE, *, label=None, time_input="t") -> Score:
    """A :class:`~diffusion.Score` from a trained network (torch backend).

    ``label``: sample class ``label`` from a class-conditional network (``None``:
    its unconditional mode). Combine two such scores with
    :func:`diffusion.classifier_free_guidance` for guidance.
    """
    if getattr(net, "n_classes", None):
        module = lambda x, c: net(x, c, label)  # noqa: E731
    elif label is not None:
        raise ValueError("`label` needs a class-conditional network (built with n_classes).")
    else:
        module = net
    dtype = next(net.parameters()).dtype
    return Score.from_module(module, sde, parameterisation=net.parameterisation, time_input=time_input, dim=net.dim,
                             dtype=dtype)

"""Deterministic samplers of k-diffusion and diffusers, driven by an exactly known denoiser.

Run:  python benchmarks/peer_samplers.py      (self-check: errors against the exact flow, < 1 min)

Both peers integrate the probability-flow ODE of the VP SDE (Song et al.:
beta_min = 0.1, beta_max = 20, T = 1) from x_T at t = T down to t = EPS = 1e-3:

    B(t) = beta_min t + (beta_max - beta_min) t^2 / 2,  alpha_t = exp(-B/2),  sigma_t^2 = 1 - exp(-B).

The data model is a torch function ``x0_hat(x, t)``: the Tweedie mean E[x_0 | x_t = x]
for x of shape (n, d), float64, and t a 1-d float64 tensor of n equal times in (0, 1]
(equivalently eps_hat = (x - alpha_t x0_hat) / sigma_t). Both adapters take x_T in the
VP variable and return (x at t = EPS in the VP variable, NFE), one model call on the
whole batch counting as 1 NFE. Step grids (``grid=``), the same three on both peers:
"karras" (uniform in s^(1/rho), rho = 7), "logsnr" (uniform in log s, i.e. in the log-SNR)
and "uniform_t" (uniform in t), where s = sigma_t / alpha_t runs from s(T) to s(EPS).

* ``kdiff_sample``: k-diffusion's samplers work on x_kd = x / alpha_t with noise level s;
  the denoiser is D(x_kd, s) = x0_hat(alpha_t x_kd, t(s)) with t(s) the inverse of
  s(t) = sqrt(e^B - 1). The grid comes from k-diffusion's own ``get_sigmas_karras``,
  ``get_sigmas_exponential`` or ``get_sigmas_vp``, built in float64, without the 0 they
  append (we stop at EPS, not at 0). With a nonzero last sigma none of the supported
  samplers takes its special last step (sample_heun and sample_dpm_2 fall back to Euler,
  sample_dpmpp_2m to first order, sample_dpmpp_3m_sde returns the denoiser output, all
  only when sigmas[i+1] == 0), so every step is a full step of the method.
* ``diffusers_sample``: the discrete schedulers see N training timesteps; timestep n in
  {0..N-1} is t_n = EPS + (T - EPS) n / (N - 1) (= (n + 1) / 1000 for N = 1000), and
  ``trained_betas`` make alphas_cumprod[n] = alpha(t_n)^2. Every timestep handed to the
  model is an integer, so the model is evaluated exactly where the solver believes it is;
  the run starts at timestep N-1 (t = T) and ends at timestep 0 (t = EPS). The schedulers
  keep betas, alphas_cumprod and sigmas in float32: the adapter puts the exact float64
  values back. Choices per scheduler: ``DIFFUSERS_SAMPLERS`` and the comments above it.

Both peers are optional: the module imports without them, the adapters then raise
ImportError, and ``available()`` says which peers load. k-diffusion's package __init__
imports torchvision, kornia, clean-fid, wandb, ...; only ``k_diffusion/sampling.py`` is
loaded here, as a file, next to a stand-in for its ``utils`` (the one helper it uses,
``append_dims``), so it needs just torchsde, torchdiffeq, scipy and tqdm. Set-up (the CPU
torch kept by constraints.txt):

    .venv/bin/pip install -c constraints.txt diffusers
    .venv/bin/pip install -c constraints.txt --no-deps k-diffusion
    .venv/bin/pip install -c constraints.txt torchsde torchdiffeq
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import math
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

BETA_MIN, BETA_MAX = 0.1, 20.0
T, EPS = 1.0, 1e-3
GRIDS = ("karras", "logsnr", "uniform_t")

X0Hat = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- VP schedule (torch, float64)

def vp_B(t: torch.Tensor) -> torch.Tensor:
    """Integrated noise rate B(t) = beta_min t + (beta_max - beta_min) t^2 / 2."""
    return BETA_MIN * t + 0.5 * (BETA_MAX - BETA_MIN) * t * t


def vp_alpha(t: torch.Tensor) -> torch.Tensor:
    """Signal scale alpha_t = exp(-B(t) / 2)."""
    return torch.exp(-0.5 * vp_B(t))


def vp_sigma(t: torch.Tensor) -> torch.Tensor:
    """Noise scale sigma_t = sqrt(1 - exp(-B(t)))."""
    return torch.sqrt(-torch.expm1(-vp_B(t)))


def kd_sigma(t: torch.Tensor) -> torch.Tensor:
    """Noise level of k-diffusion and diffusers, s = sigma_t / alpha_t = sqrt(exp(B(t)) - 1)."""
    return torch.sqrt(torch.expm1(vp_B(t)))


def t_of_kd_sigma(s: torch.Tensor) -> torch.Tensor:
    """Inverse of ``kd_sigma``: B = log(1 + s^2), t = 2B / (beta_min + sqrt(beta_min^2 + 2 (beta_max - beta_min) B))."""
    B = torch.log1p(s * s)
    return 2.0 * B / (BETA_MIN + torch.sqrt(BETA_MIN**2 + 2.0 * (BETA_MAX - BETA_MIN) * B))


def _f64(t: float) -> torch.Tensor:
    return torch.tensor(t, dtype=torch.float64)


def _check_grid(grid: str) -> None:
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, not {grid!r}")


# --------------------------------------------------------------------------- loading the peers

@functools.cache
def _kdiff_sampling() -> types.ModuleType:
    """``k_diffusion/sampling.py`` loaded as ``_peer_k_diffusion.sampling`` (without the package __init__)."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed: .venv/bin/pip install -c constraints.txt --no-deps k-diffusion "
                          "&& .venv/bin/pip install -c constraints.txt torchsde torchdiffeq")
    path = Path(list(spec.submodule_search_locations)[0]) / "sampling.py"
    package = types.ModuleType("_peer_k_diffusion")
    package.__path__ = []
    utils = types.ModuleType("_peer_k_diffusion.utils")

    def append_dims(x, target_dims):  # k_diffusion.utils.append_dims, the only helper sampling.py uses
        dims_to_append = target_dims - x.ndim
        if dims_to_append < 0:
            raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
        return x[(...,) + (None,) * dims_to_append]

    utils.append_dims = append_dims
    package.utils = utils
    file_spec = importlib.util.spec_from_file_location("_peer_k_diffusion.sampling", path)
    module = importlib.util.module_from_spec(file_spec)
    names = (package.__name__, utils.__name__, file_spec.name)
    sys.modules.update(zip(names, (package, utils, module), strict=True))
    try:
        file_spec.loader.exec_module(module)  # needs scipy, torchdiffeq, torchsde, tqdm
    except ImportError as exc:
        for name in names:
            sys.modules.pop(name, None)
        raise ImportError(f"k_diffusion/sampling.py does not import ({exc}); "
                          ".venv/bin/pip install -c constraints.txt torchsde torchdiffeq") from exc
    package.sampling = module
    return module


@functools.cache
def _diffusers() -> types.ModuleType:
    try:
        import diffusers
    except ImportError as exc:
        raise ImportError(f"diffusers is not importable ({exc}); .venv/bin/pip install -c constraints.txt diffusers") from exc
    return diffusers


def available() -> dict[str, str]:
    """The peers that load, as {"k-diffusion": version, "diffusers": version} (missing ones left out)."""
    found = {}
    for name, loader in (("k-diffusion", _kdiff_sampling), ("diffusers", _diffusers)):
        try:
            loader()
        except ImportError:
            continue
        found[name] = importlib.metadata.version(name)
    return found


@contextlib.contextmanager
def _default_float64():
    """k-diffusion builds its grids with torch.linspace/torch.tensor in the default dtype: make that float64."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# --------------------------------------------------------------------------- k-diffusion

# name: (nominal order, keyword arguments). NFE per step: 2 for heun and dpm_2, 1 for the others.
KDIFF_SAMPLERS: dict[str, tuple[int, dict]] = {
    "sample_euler": (1, {}),
    "sample_heun": (2, {}),
    "sample_dpm_2": (2, {}),
    "sample_lms": (4, {}),  # its default order 4, coefficients by scipy quad; the 3 start-up steps use orders 1-3
    "sample_dpmpp_2m": (2, {}),
    # DPM-Solver++(3M): the SDE sampler with eta = 0 is the deterministic 3rd-order multistep method; the
    # dummy noise sampler (never called at eta = 0) spares it building a torchsde Brownian tree. Measured order 2:
    # its second-difference term D2 = (D1_0 - D1_1) / (r0 + r1) is about h^2 D''/2 where the phi_3 weight needs
    # h^2 D'' (doubling it gives order >= 3); diffusers' DPMSolverMultistepScheduler(solver_order=3) has the same.
    "sample_dpmpp_3m_sde": (3, {"eta": 0.0, "noise_sampler": lambda sigma, sigma_next: None}),
}


def kdiff_sigmas(n_steps: int, *, grid: str = "karras", rho: float = 7.0) -> torch.Tensor:
    """The n_steps + 1 noise levels s(T) = sigmas[0] > ... > sigmas[-1] = s(EPS) of k-diffusion's own grid, float64.

    "karras": ``get_sigmas_karras``, "logsnr": ``get_sigmas_exponential``, "uniform_t": ``get_sigmas_vp`` (the
    VP noise levels at t uniform in [EPS, 1]). k-diffusion appends a final 0, which is dropped.
    """
    kd = _kdiff_sampling()
    _check_grid(grid)
    s_min, s_max = float(kd_sigma(_f64(EPS))), float(kd_sigma(_f64(T)))
    with _default_float64():
        if grid == "karras":
            sigmas = kd.get_sigmas_karras(n_steps + 1, s_min, s_max, rho=rho)
        elif grid == "logsnr":
            sigmas = kd.get_sigmas_exponential(n_steps + 1, s_min, s_max)
        else:
            assert T == 1.0  # get_sigmas_vp runs from t = 1
            sigmas = kd.get_sigmas_vp(n_steps + 1, beta_d=BETA_MAX - BETA_MIN, beta_min=BETA_MIN, eps_s=EPS)
    assert sigmas.dtype == torch.float64 and sigmas[-1] == 0
    return sigmas[:-1]


def kdiff_sample(name: str, x0_hat: X0Hat, x_T: torch.Tensor, n_steps: int, *, grid: str = "karras",
                 rho: float = 7.0) -> tuple[torch.Tensor, int]:
    """Run k-diffusion's ``name`` (a key of KDIFF_SAMPLERS) with n_steps steps from t = T to t = EPS.

    x_T: (n, d) float64 in the VP variable. Returns (x at t = EPS in the VP variable, NFE).
    torch's global RNG state is left as it was (euler/heun/dpm_2 draw churn noise they do not use).
    """
    kd = _kdiff_sampling()
    if name not in KDIFF_SAMPLERS:
        raise ValueError(f"unknown k-diffusion sampler {name!r}; choose from {sorted(KDIFF_SAMPLERS)}")
    sigmas = kdiff_sigmas(n_steps, grid=grid, rho=rho)
    nfe = 0

    def denoiser(x_kd: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        nonlocal nfe
        nfe += 1
        t = t_of_kd_sigma(sigma)
        return x0_hat(vp_alpha(t)[:, None] * x_kd, t)

    x_kd = x_T / vp_alpha(_f64(T))
    with torch.random.fork_rng(devices=[]):
        x_kd = getattr(kd, name)(denoiser, x_kd, sigmas, disable=True, **KDIFF_SAMPLERS[name][1])
    return vp_alpha(_f64(EPS)) * x_kd, nfe


# --------------------------------------------------------------------------- diffusers

# name: (scheduler class, layout, nominal order, config). The layouts, all on the integer timestep grid
# g[0] = N-1 > g[1] > ... > g[n] = 0 (t = T down to t = EPS), see ``diffusers_timesteps``:
#   "multistep": set_timesteps(n); for grid="uniform_t" diffusers' own timestep_spacing="linspace" is exactly
#                g[:-1] (checked); for the other grids the timesteps are replaced by g[:-1] afterwards (only
#                DPMSolverMultistepScheduler takes custom timesteps). final_sigmas_type="sigma_min" makes the last
#                step end at alphas_cumprod[0], i.e. t = EPS (the default "zero" ends at sigma = 0, t = 0, with a
#                forced first-order last step). lower_order_final=False: the methods keep their order on the last
#                steps (diffusers lowers it in runs under 15 steps, a stability device for guided sampling that only
#                costs accuracy here), euler_at_final=False. DEIS always ends at alphas_cumprod[0].
#   "euler":     set_timesteps(timesteps=g[:-1]) with final_sigmas_type="sigma_min". The default linspace spacing
#                would give fractional timesteps (sigmas interpolated linearly between training sigmas, not the VP
#                ones) and n-1 steps down to timestep 0 followed by a last step to sigma = 0 or a zero-length one.
#   "heun":      set_timesteps(timesteps=g); the scheduler always appends sigma = 0, so the run stops before that
#                last (Euler) step, after n full Heun steps ending at timestep 0.
#   "ddim":      DDIM steps from timestep k to k - N // n, whatever the next listed timestep is. Only the "leading"
#                spacing with steps_offset = N // n - 1 and N a multiple of n gives a consistent run N-1, N-1-N//n,
#                ..., N//n - 1 and then to "timestep -1" = final_alpha_cumprod = alphas_cumprod[0]
#                (set_alpha_to_one=False), t = EPS: uniform in t only. clip_sample=False (its default clips x0 to
#                [-1, 1]).
# Euler and Heun step x / alpha_t (the sigma-scaled variable, as k-diffusion) and take the model input from
# scale_model_input, which divides by sqrt(1 + s^2) = 1 / alpha_t: the adapter starts them from x_T / alpha_T
# and multiplies the result by alpha_EPS.
# Prediction type: "sample" (x0) for the data-prediction solvers (DPM-Solver++, UniPC with predict_x0), whose
# update uses x0 directly; "epsilon" for DEIS (a noise-prediction method), DDIM, Euler and Heun. With the exact
# model both are exact to rounding.
DIFFUSERS_SAMPLERS: dict[str, tuple[str, str, int, dict]] = {
    "dpmpp_2m": ("DPMSolverMultistepScheduler", "multistep", 2,
                 {"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint", "prediction_type": "sample",
                  "final_sigmas_type": "sigma_min", "lower_order_final": False, "euler_at_final": False}),
    "dpmpp_3m": ("DPMSolverMultistepScheduler", "multistep", 3,
                 {"algorithm_type": "dpmsolver++", "solver_order": 3, "prediction_type": "sample",
                  "final_sigmas_type": "sigma_min", "lower_order_final": False, "euler_at_final": False}),
    "unipc_2": ("UniPCMultistepScheduler", "multistep", 3,  # UniP-2 with the UniC corrector: order 3
                {"solver_order": 2, "solver_type": "bh2", "predict_x0": True, "prediction_type": "sample",
                 "final_sigmas_type": "sigma_min", "lower_order_final": False}),
    "unipc_3": ("UniPCMultistepScheduler", "multistep", 4,
                {"solver_order": 3, "solver_type": "bh2", "predict_x0": True, "prediction_type": "sample",
                 "final_sigmas_type": "sigma_min", "lower_order_final": False}),
    "deis_2": ("DEISMultistepScheduler", "multistep", 2,
               {"solver_order": 2, "algorithm_type": "deis", "prediction_type": "epsilon", "lower_order_final": False}),
    "deis_3": ("DEISMultistepScheduler", "multistep", 3,
               {"solver_order": 3, "algorithm_type": "deis", "prediction_type": "epsilon", "lower_order_final": False}),
    "ddim": ("DDIMScheduler", "ddim", 1,
             {"prediction_type": "epsilon", "clip_sample": False, "set_alpha_to_one": False, "timestep_spacing": "leading"}),
    "euler": ("EulerDiscreteScheduler", "euler", 1, {"prediction_type": "epsilon", "final_sigmas_type": "sigma_min"}),
    "heun": ("HeunDiscreteScheduler", "heun", 2, {"prediction_type": "epsilon"}),
}


def diffusers_train_times(n_train: int) -> torch.Tensor:
    """t_n = EPS + (T - EPS) n / (N - 1) of the training timesteps n = 0..N-1 (float64)."""
    return EPS + (T - EPS) * torch.arange(n_train, dtype=torch.float64) / (n_train - 1)


def diffusers_timesteps(n_steps: int, n_train: int, *, grid: str = "uniform_t", rho: float = 7.0) -> np.ndarray:
    """The integer grid g[0] = N-1 > ... > g[n_steps] = 0 (int64): ``grid`` rounded to the training timesteps.

    "uniform_t" is diffusers' own timestep_spacing="linspace", round(linspace(0, N-1, n+1)) reversed; "karras" and
    "logsnr" are the noise levels of kdiff_sigmas (same formulas), mapped to t and rounded to the nearest timestep.
    """
    _check_grid(grid)
    if grid == "uniform_t":
        g = np.linspace(0, n_train - 1, n_steps + 1).round()[::-1].astype(np.int64)
    else:
        s_min, s_max = kd_sigma(_f64(EPS)), kd_sigma(_f64(T))
        ramp = torch.linspace(0, 1, n_steps + 1, dtype=torch.float64)
        if grid == "karras":
            s = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        else:
            s = torch.exp(torch.log(s_max) + ramp * (torch.log(s_min) - torch.log(s_max)))
        g = ((t_of_kd_sigma(s) - EPS) / (T - EPS) * (n_train - 1)).round().to(torch.int64).numpy()
    if g[0] != n_train - 1 or g[-1] != 0 or np.any(np.diff(g) >= 0):
        raise ValueError(f"{n_steps} steps of the {grid!r} grid do not fit on {n_train} training timesteps: {g}")
    return g


def diffusers_sample(name: str, x0_hat: X0Hat, x_T: torch.Tensor, n_steps: int, *, grid: str = "uniform_t",
                     rho: float = 7.0, n_train: int | None = None) -> tuple[torch.Tensor, int]:
    """Run the diffusers scheduler ``name`` (a key of DIFFUSERS_SAMPLERS) with n_steps steps from t = T to t = EPS.

    x_T: (n, d) float64 in the VP variable. Returns (x at t = EPS in the VP variable, NFE); NFE = n_steps, 2 n_steps
    for heun. grid: "uniform_t" (diffusers' default spacing), "karras" or "logsnr" (rounded to the training timesteps,
    see ``diffusers_timesteps``; "ddim" takes "uniform_t" only). n_train (N), the number of training timesteps:
    by default 1000 for "uniform_t", 10**6 for the other grids (so that rounding moves their points by little:
    near EPS they are far denser than 1/1000), and for "ddim" the multiple of n_steps nearest 1000 (960 for 80 steps).
    Limit of the peer: DPMSolverMultistepScheduler.step and EulerDiscreteScheduler.step round the state to float32 on
    every step (a hard-coded "upcast"): dpmpp_2m differs from k-diffusion's on the same grid by 1e-6 (40 steps) to
    4e-6 (640 steps) for x of order 1, a floor for dpmpp_2m/3m and euler.
    """
    diffusers = _diffusers()
    if name not in DIFFUSERS_SAMPLERS:
        raise ValueError(f"unknown diffusers sampler {name!r}; choose from {sorted(DIFFUSERS_SAMPLERS)}")
    _check_grid(grid)
    cls_name, layout, _, config = DIFFUSERS_SAMPLERS[name]
    config = dict(config)
    if layout == "ddim":
        if grid != "uniform_t":
            raise ValueError("DDIMScheduler steps uniformly in the timestep: grid must be 'uniform_t'")
        n_train = n_train or n_steps * max(1, round(1000 / n_steps))
        if n_train % n_steps:
            raise ValueError(f"DDIM needs n_train ({n_train}) to be a multiple of n_steps ({n_steps})")
        config["steps_offset"] = n_train // n_steps - 1
    n_train = n_train or (1000 if grid == "uniform_t" else 10**6)

    t_train = diffusers_train_times(n_train)
    abar = vp_alpha(t_train) ** 2                                      # alphas_cumprod[n] = alpha(t_n)^2
    betas = 1.0 - abar / torch.cat([abar.new_ones(1), abar[:-1]])       # beta_n = 1 - abar_n / abar_{n-1}
    sched = getattr(diffusers, cls_name)(num_train_timesteps=n_train, trained_betas=betas.numpy(), **config)
    # The scheduler keeps betas and their cumulative product in float32: put the exact values back.
    sched.betas, sched.alphas, sched.alphas_cumprod = betas, 1.0 - betas, abar

    g = diffusers_timesteps(n_steps, n_train, grid=grid, rho=rho)
    s = kd_sigma(t_train[torch.from_numpy(g)])                         # the exact noise levels of the grid
    if layout == "ddim":
        sched.final_alpha_cumprod = abar[0]
        sched.set_timesteps(n_steps)
        timesteps = sched.timesteps
    else:
        if layout == "multistep":
            sched.set_timesteps(n_steps)
            if grid == "uniform_t":
                assert torch.equal(sched.timesteps, torch.from_numpy(g[:-1].copy())), sched.timesteps
            sched.timesteps = torch.from_numpy(g[:-1].copy())
            exact = s
        elif layout == "euler":
            sched.set_timesteps(timesteps=g[:-1].tolist())
            exact = s
        else:  # heun: the noise levels interleaved as the scheduler lays them out, then its final 0
            sched.set_timesteps(timesteps=g.tolist())
            exact = torch.cat([s[:1], s[1:].repeat_interleave(2), s.new_zeros(1)])
        if layout != "multistep" or grid == "uniform_t":  # the scheduler's own float32 sigmas must be ours
            assert torch.allclose(sched.sigmas.double(), exact, rtol=1e-6, atol=0), (sched.sigmas, exact)
        sched.sigmas = exact
        timesteps = sched.timesteps[:-1] if layout == "heun" else sched.timesteps
    assert int(timesteps[0]) == n_train - 1, timesteps

    scaled = layout in ("euler", "heun")
    prediction = config["prediction_type"]
    nfe = 0

    def model(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        nonlocal nfe
        nfe += 1
        n = int(round(float(timestep)))
        assert abs(float(timestep) - n) < 1e-6, "the model must see integer timesteps"
        t = t_train[n]
        x0 = x0_hat(x, t.expand(x.shape[0]))
        return x0 if prediction == "sample" else (x - vp_alpha(t) * x0) / vp_sigma(t)

    x = x_T / vp_alpha(_f64(T)) if scaled else x_T.clone()
    for timestep in timesteps:
        x = sched.step(model(sched.scale_model_input(x, timestep), timestep), timestep, x).prev_sample
    if scaled:
        x = vp_alpha(_f64(EPS)) * x
    return x, nfe


# --------------------------------------------------------------------------- Gaussian data: exact denoiser and flow

def gaussian_x0_hat(mu, s0: float) -> X0Hat:
    """Tweedie mean for data N(mu, s0^2 I): x0_hat(x, t) = mu + alpha s0^2 (x - alpha mu) / (alpha^2 s0^2 + sigma^2)."""
    mu = torch.as_tensor(mu, dtype=torch.float64)

    def x0_hat(x: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        if t.ndim == 1:
            t = t[:, None]
        a, s2 = vp_alpha(t), -torch.expm1(-vp_B(t))
        return mu + a * s0**2 * (x - a * mu) / (a * a * s0**2 + s2)

    return x0_hat


def gaussian_flow(mu, s0: float, x_T: torch.Tensor, t: float) -> torch.Tensor:
    """Exact PF-ODE solution at time t from x_T at T: alpha_t mu + (std_t / std_T) (x_T - alpha_T mu)."""
    mu = torch.as_tensor(mu, dtype=torch.float64)

    def mean_std(u: float) -> tuple[torch.Tensor, torch.Tensor]:
        a = vp_alpha(_f64(u))
        return a * mu, torch.sqrt(a * a * s0**2 - torch.expm1(-vp_B(_f64(u))))

    (m_t, std_t), (m_T, std_T) = mean_std(t), mean_std(T)
    return m_t + std_t / std_T * (x_T - m_T)


def _self_check(n_paths: int = 1000, steps: tuple[int, ...] = (10, 20, 40, 80)) -> None:
    mu, s0 = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.5
    x0_hat = gaussian_x0_hat(mu, s0)
    x_T = torch.randn(n_paths, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = gaussian_flow(mu, s0, x_T, EPS)
    peers = available()
    print(f"VP PF-ODE from T={T} to eps={EPS}, data N(mu={mu.tolist()}, {s0}^2 I), d=2, {n_paths} paths, one x_T for all.")
    print(f"RMS error of x_eps against the exact flow; slope: fitted order over n_steps, last: local order "
          f"{steps[-2]}->{steps[-1]}; ord: nominal order. Peers: {peers or 'none'}")
    runs = []
    for grid in GRIDS:
        if "k-diffusion" in peers:
            runs += [(f"k-diffusion {name}", grid, order, functools.partial(kdiff_sample, name, grid=grid))
                     for name, (order, _) in KDIFF_SAMPLERS.items()]
        if "diffusers" in peers:
            runs += [(f"diffusers {name}", grid, order, functools.partial(diffusers_sample, name, grid=grid))
                     for name, (_, layout, order, _) in DIFFUSERS_SAMPLERS.items() if layout != "ddim" or grid == "uniform_t"]
    print(f"{'sampler':32s}{'grid':>10s}" + "".join(f"{'n=' + str(n):>10s}" for n in steps)
          + f"{'slope':>7s}{'last':>6s}{'ord':>4s}  NFE")
    for label, grid, order, run in runs:
        errs, nfes = [], []
        for n in steps:
            x, nfe = run(x0_hat, x_T, n)
            errs.append(math.sqrt(float(((x - exact) ** 2).sum(dim=1).mean())))
            nfes.append(nfe)
        slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
        last = math.log(errs[-2] / errs[-1]) / math.log(steps[-1] / steps[-2])
        print(f"{label:32s}{grid:>10s}" + "".join(f"{e:10.2e}" for e in errs)
              + f"{slope:7.2f}{last:6.2f}{order:4d}  {'/'.join(map(str, nfes))}")


if __name__ == "__main__":
    _self_check()

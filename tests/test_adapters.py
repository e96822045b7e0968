"""Real models: diffusers networks and schedulers, k-diffusion denoisers (diffusion.adapters).

A tiny randomly initialised ``UNet2DModel`` is built here (nothing downloaded), in float64. The references
are diffusers' own scheduler loops on the same network and starting noise. diffusers keeps its schedule in
float32 (``alphas_cumprod``, DPM-Solver's ``sigmas``) and DPM-Solver rounds the state to float32 in every
step, so the loops agree to float32 round-off carried through the steps: the tolerance is 1e-5 of the
sample's scale (``max(1, max |x|)``; a random network's samples reach a few hundred).
"""

import numba
import numpy as np
import pytest
import torch

import diffusion
from diffusion import VPSDE, Score, TimeGrid
from diffusion.adapters import DISCRETE_VP, DiscreteVPSDE, SdekitScheduler, unflatten

diffusers = pytest.importorskip("diffusers")

STEPS = 10


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    net = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "UpBlock2D"))
    return net.double().eval()


@pytest.fixture(scope="module")
def x_T():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def diffusers_loop(unet, scheduler, x_T, steps=STEPS):
    """The standard diffusers sampling loop."""
    scheduler.set_timesteps(steps)
    x = x_T * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(scheduler.scale_model_input(x, t), t).sample, t, x).prev_sample
    return x


def assert_reproduces(ours, reference):
    scale = max(1.0, reference.abs().max().item())
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max().item() <= 1e-5 * scale


def test_discrete_schedule_hits_every_training_timestep():
    sched = diffusers.DDPMScheduler()
    sde = DiscreteVPSDE.from_scheduler(sched)
    abar = sched.alphas_cumprod.double().numpy()
    k = np.arange(1000)
    t = sde.time_of_timestep(k)
    np.testing.assert_array_equal(sde.timestep(t), k)
    np.testing.assert_allclose(sde.alpha(t) ** 2, abar, rtol=1e-14)
    np.testing.assert_allclose(sde.sigma(t) ** 2, 1 - abar, rtol=1e-12)
    # log abar is linear between the knots: beta = -d log abar/dt is N log(abar_(k-1) / abar_k) on ((k)/N, (k+1)/N)
    mid = (k[1:] + 0.5) / 1000
    np.testing.assert_allclose(sde.beta(mid), 1000 * np.log(abar[:-1] / abar[1:]), rtol=1e-10)
    np.testing.assert_allclose(sde.alpha(mid) ** 2, np.sqrt(abar[:-1] * abar[1:]), rtol=1e-12)
    lam = sde.log_snr(np.array([0.0004, 0.2501, 0.999]))
    np.testing.assert_allclose(sde.t_from_log_snr(lam), [0.0004, 0.2501, 0.999], rtol=1e-12)
    # the compiled kernels (numba backend) and the torch ones compute the same numbers
    alpha, g2, t_from_log_snr = DISCRETE_VP.alpha, DISCRETE_VP.g2, DISCRETE_VP.t_from_log_snr
    compiled = numba.njit(lambda t, p: (alpha(t, p), g2(t, p), t_from_log_snr(-1.0, p)))
    tensors = tuple(torch.as_tensor(a) for a in sde.params)
    for s in (0.0003, 0.25, 0.7771):
        got = compiled(s, sde.params)
        np.testing.assert_allclose(got, (sde.alpha(s), sde.g2(s), sde.t_from_log_snr(-1.0)), rtol=1e-14)
        np.testing.assert_allclose([float(DISCRETE_VP.alpha(s, tensors)), float(DISCRETE_VP.g2(s, tensors))], got[:2],
                                   rtol=1e-14)
    # equal schedules are one process
    assert diffusion.sdes.same_process(sde, DiscreteVPSDE.from_scheduler(diffusers.DDIMScheduler()))


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_reproduces_diffusers_ddim(unet, x_T, spacing):
    # eta = 0 (the default of step), clip_sample=False (sdekit does not clip), set_alpha_to_one=True: the last
    # step goes to alphas_cumprod = 1, i.e. returns x0_hat; steps_offset 1 shifts the leading timesteps
    ddim = diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=True, timestep_spacing=spacing, steps_offset=1)
    reference = diffusers_loop(unet, ddim, x_T)
    ours = diffusers_loop(unet, SdekitScheduler.from_scheduler(ddim, method="ddim"), x_T)
    assert_reproduces(ours, reference)
    # set_alpha_to_one=False: the last step goes to alphas_cumprod[0] (timestep 0)
    ddim = diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=False, timestep_spacing=spacing)
    assert_reproduces(diffusers_loop(unet, SdekitScheduler.from_scheduler(ddim, method="ddim"), x_T),
                      diffusers_loop(unet, ddim, x_T))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_dpmpp_2m_reproduces_diffusers_dpm_solver(unet, x_T, prediction_type):
    # DPM-Solver++(2M): solver_order=2, lower_order_final=True with final_sigmas_type="zero" (the last step is
    # first order, to sigma 0: x0_hat), timestep_spacing="linspace" (the defaults)
    dpm = diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True,
                                                final_sigmas_type="zero", prediction_type=prediction_type)
    reference = diffusers_loop(unet, dpm, x_T)
    sdekit_scheduler = SdekitScheduler.from_scheduler(dpm, method="dpmpp_2m")
    assert_reproduces(diffusers_loop(unet, sdekit_scheduler, x_T), reference)
    # the same method through diffusion.sample on the scheduler's grid: one implementation
    score = Score.from_diffusers(unet, dpm)
    times = score.sde.time_of_timestep(dpm.timesteps.numpy())  # 999, 899, 799, ... (linspace, rounded)
    samples = diffusion.sample(score.sde, score, 2, method="dpmpp_2m", grid=times, x_T=x_T.reshape(2, -1), backend="torch")
    assert samples.nfe == STEPS
    assert_reproduces(unflatten(samples.x, score), reference)


def test_sample_ddim_equals_the_scheduler_loop(unet, x_T):
    # trailing spacing: timesteps 999, 899, ..., 99, i.e. t = 1, 0.9, ..., 0.1, the uniform grid to eps = 0.1,
    # and the last step to alphas_cumprod = 1 is sample()'s final denoising (x0_hat)
    ddim = diffusers.DDIMScheduler(clip_sample=False, timestep_spacing="trailing")
    score = Score.from_diffusers(unet, ddim)
    assert score.dim == 3 * 8 * 8 and score.sample_shape == (3, 8, 8)
    samples = diffusion.sample(score.sde, score, 2, method="ddim", steps=STEPS - 1,
                               grid=TimeGrid(score.sde, "uniform", eps=0.1), x_T=x_T.reshape(2, -1), backend="torch")
    np.testing.assert_allclose(samples.times, score.sde.time_of_timestep(np.arange(999, 0, -100)), rtol=1e-14)
    assert samples.nfe == STEPS
    scheduled = diffusers_loop(unet, SdekitScheduler.from_scheduler(ddim, method="ddim"), x_T)
    assert (unflatten(samples.x, score) - scheduled).abs().max().item() < 1e-10 * scheduled.abs().max().item()
    assert_reproduces(unflatten(samples.x, score), diffusers_loop(unet, ddim, x_T))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_prediction_types_give_the_schedulers_x0(unet, x_T, prediction_type):
    ddim = diffusers.DDIMScheduler(clip_sample=False, prediction_type=prediction_type)
    score = Score.from_diffusers(unet, ddim)
    assert score.parameterisation == {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[prediction_type]
    ddim.set_timesteps(STEPS)
    for k in (901, 501, 1):
        with torch.no_grad():
            reference = ddim.step(unet(x_T, k).sample, k, x_T).pred_original_sample
            ours = score.x0(x_T.reshape(2, -1), float(score.sde.time_of_timestep(k)))
        assert_reproduces(unflatten(ours, score), reference)


class GaussianDenoiser(torch.nn.Module):
    """The exact denoiser of data N(mu, s^2 I) under x = x0 + sigma n: mu + s^2 / (s^2 + sigma^2) (x - mu)."""

    sigma_min, sigma_max = 0.01, 20.0

    def __init__(self, mu, s):
        super().__init__()
        self.mu, self.s = mu, s

    def forward(self, x, sigma):
        shrink = self.s**2 / (self.s**2 + sigma**2)
        return self.mu + shrink.reshape(-1, *([1] * (x.ndim - 1))) * (x - self.mu)


def test_k_diffusion_denoiser_gives_the_exact_score():
    mu, s = 0.7, 1.3
    denoiser = GaussianDenoiser(mu, s)
    x = torch.randn(5, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    # the score of an x0 prediction, (alpha x0_hat - x) / sigma^2, cancels ~ (s^2 + sigma^2) / sigma^2 <= 2e4 of
    # round-off (sigma >= 0.01): rtol 1e-9
    score = Score.from_k_diffusion(denoiser, dim=12)  # VE between the denoiser's sigma_min and sigma_max
    assert score.sde.sigma_min == 0.01 and score.sde.sigma_max == 20.0
    for t in (0.05, 0.5, 1.0):
        sigma = float(score.sde.sigma(t))
        torch.testing.assert_close(score.score(x, t), -(x - mu) / (s**2 + sigma**2), rtol=1e-9, atol=0)
    vp = VPSDE()
    score = Score.from_k_diffusion(denoiser, vp, sample_shape=(3, 2, 2))
    for t in (0.05, 0.5, 1.0):
        a, sigma = float(vp.alpha(t)), float(vp.sigma(t))
        torch.testing.assert_close(score.score(x, t), -(x - a * mu) / (a**2 * s**2 + sigma**2), rtol=1e-9, atol=0)
    # one time per row
    t_rows = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    a, sigma = vp.alpha(t_rows)[:, None], vp.sigma(t_rows)[:, None]
    torch.testing.assert_close(score.score(x, t_rows), -(x - torch.as_tensor(a * mu)) / torch.as_tensor(a**2 * s**2 + sigma**2),
                               rtol=1e-9, atol=0)


def test_diffusers_pipeline_samples_with_the_sdekit_scheduler(unet):
    net = unet.float()
    try:
        ddim = diffusers.DDIMScheduler(clip_sample=False, prediction_type="v_prediction")
        scheduler = SdekitScheduler.from_scheduler(ddim, method="dpmpp_2m")
        pipe = diffusers.DDPMPipeline(unet=net, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        images = pipe(batch_size=2, num_inference_steps=6, output_type="np", generator=torch.Generator().manual_seed(3)).images
        noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
        expected = (diffusers_loop(net, scheduler, noise, steps=6) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    finally:
        unet.double()
    np.testing.assert_allclose(images, expected, atol=1e-6)
    # add_noise is the forward marginal at each sample's training timestep, as diffusers' own
    x0, eps, steps = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8), torch.tensor([0, 500, 999])
    torch.testing.assert_close(scheduler.add_noise(x0, eps, steps), ddim.add_noise(x0, eps, steps), rtol=1e-6, atol=1e-6)
    assert scheduler.scale_model_input(x0, 5) is x0 and scheduler.init_noise_sigma == 1.0


def test_bad_input_is_refused_in_one_line(unet, x_T):
    def refused(match, fn, *args, **kwargs):
        with pytest.raises(ValueError, match=match) as info:
            fn(*args, **kwargs)
        assert "\n" not in str(info.value)

    refused("DDIMScheduler or DPMSolverMultistepScheduler", SdekitScheduler.from_scheduler, diffusers.EulerDiscreteScheduler())
    refused("clip_sample=True", SdekitScheduler.from_scheduler, diffusers.DDIMScheduler())
    refused("use_karras_sigmas=True", SdekitScheduler.from_scheduler,
            diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True))
    refused("`method`", SdekitScheduler.from_scheduler, diffusers.DPMSolverMultistepScheduler(), method="exp_ab3")
    linspace = SdekitScheduler.from_scheduler(diffusers.DDIMScheduler(clip_sample=False, timestep_spacing="linspace"))
    refused("not to the next of its timesteps", linspace.set_timesteps, STEPS)
    trailing = SdekitScheduler.from_scheduler(diffusers.DDIMScheduler(clip_sample=False, timestep_spacing="trailing"))
    refused(r"k - 166, not to the next", trailing.set_timesteps, 6)  # 999 -> 833, but the next timestep is 832
    refused("prediction_type", Score.from_diffusers, unet, diffusers.DDIMScheduler(prediction_type="flow"))
    refused("alphas_cumprod", Score.from_diffusers, unet, diffusers.FlowMatchEulerDiscreteScheduler())
    refused("out_channels", Score.from_diffusers, unet, diffusers.DDIMScheduler(), sample_shape=(1, 8, 8))
    score = Score.from_diffusers(unet, diffusers.DDIMScheduler())
    refused(r"`x_T` must have shape \(n, dim\) = \(2, 192\)", diffusion.sample, score.sde, score, 2, method="ddim", steps=2,
            x_T=torch.zeros(2, 3 * 8 * 7), backend="torch")
    refused(r"shape \(n, 192\)", unflatten, torch.zeros(2, 191), score)
    scheduler = SdekitScheduler.from_scheduler(diffusers.DDIMScheduler(clip_sample=False), method="ddim")
    refused("set_timesteps", scheduler.step, x_T, 901, x_T)
    scheduler.set_timesteps(STEPS)
    refused("next one is 900", scheduler.step, x_T, 800, x_T)
    refused("`eta` must be 0", scheduler.step, x_T, 900, x_T, eta=0.5)
    refused("`model_output` has shape", scheduler.step, x_T[:1], 900, x_T)
    refused("sigma_min/sigma_max", Score.from_k_diffusion, lambda x, sigma: x)
    refused("strictly decreasing", DiscreteVPSDE, [0.9, 0.95])

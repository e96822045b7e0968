"""Custom sampling grids: ``sample(grid=<array of times>)`` and ``sample(sigmas=<array of EDM noise levels>)``.

A custom array equal to a named grid's times must give that grid's run (to round-off): the exponential
integrators and the chains step on the given times, and the general sdekit schemes integrate the time change
whose map interpolates the times monotonically in log-SNR, which is exactly the ``"logsnr"`` map when the
times are equally spaced in log-SNR. Every method runs on an arbitrary custom grid, a second-order scheme
keeps its order on one, and bad arrays are refused in one line.
"""

import numpy as np
import pytest

import diffusion
from diffusion import VESDE, VPSDE, SubVPSDE, sample
from diffusion.demo import demo_mixture
from diffusion.grids import TimeGrid

VP = VPSDE()
N = 32  # paths: equality to round-off needs few


@pytest.fixture(scope="module")
def score():
    return demo_mixture().score_fn(VP)


def _geometric_times(sde, n):
    """A grid none of the named kinds make: geometric from T to eps."""
    return sde.T * (sde.eps / sde.T) ** (np.arange(n + 1) / n)


@pytest.mark.parametrize("method, kind, keywords", [
    ("heun", "logsnr", {}),  # a general ODE scheme: the time change through the interpolating map
    ("euler_maruyama", "logsnr", {}),  # a general SDE scheme: the same map, the same Brownian path in u
    ("dpmpp_2m", "karras", {}),  # an exponential integrator on the given times
    ("ddpm", "quadratic", {}),  # a chain on the given times
    ("ddim", "uniform", {"eta": 0.5}),
])
def test_custom_times_equal_to_a_named_grid_give_its_run(score, method, kind, keywords):
    named = sample(VP, score, N, method=method, steps=12, grid=kind, seed=3, backend="numpy", **keywords)
    custom = sample(VP, score, N, method=method, grid=TimeGrid(VP, kind).times(12), seed=3, backend="numpy",
                    **keywords)
    assert custom.grid == "custom" and named.grid == kind
    assert custom.nfe == named.nfe
    np.testing.assert_allclose(custom.times, named.times, rtol=1e-15, atol=0)
    np.testing.assert_allclose(custom.x, named.x, rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", ["dpmpp_2m", "ddpm", "heun"])
def test_sigmas_of_the_karras_grid_give_the_karras_run(score, method):
    times = TimeGrid(VP, "karras").times(10)
    named = sample(VP, score, N, method=method, steps=10, grid="karras", seed=5, backend="numpy")
    custom = sample(VP, score, N, method=method, sigmas=VP.edm_sigma(times), seed=5, backend="numpy")
    assert custom.grid == "custom" and custom.nfe == named.nfe
    np.testing.assert_allclose(custom.times, times, rtol=1e-12, atol=0)
    if method == "heun":
        # the general schemes integrate the log-SNR interpolant of the Karras times, not Karras' own map: the same
        # grid points, a map that differs between them by O(h^4) in log-SNR; the samples agree to the scheme's error
        np.testing.assert_allclose(custom.x, named.x, rtol=0, atol=0.05)
    else:
        np.testing.assert_allclose(custom.x, named.x, rtol=0, atol=1e-10)


def test_every_method_runs_on_a_custom_grid_with_the_right_nfe(score):
    times = _geometric_times(VP, 6)
    per_step = {"euler": 1, "euler_maruyama": 1, "heun": 2, "midpoint": 2, "rk4": 4, "ddim": 1, "ddpm": 1, "dpmpp_2m": 1}
    for method in diffusion.METHODS:
        if method == "dopri5":
            with pytest.raises(ValueError, match="dopri5 chooses its own steps"):
                sample(VP, score, 8, method=method, grid=times, backend="numpy")
            continue
        out = sample(VP, score, 8, method=method, grid=times, seed=1, backend="numpy")
        assert out.grid == "custom" and np.all(np.isfinite(out.x)), method
        np.testing.assert_array_equal(out.times, times)
        if method in per_step:  # score evaluations: per step, plus the final denoising step
            assert out.nfe == per_step[method] * 6 + 1, method


def test_heun_keeps_order_two_on_a_custom_grid(score):
    """Pathwise error against a tight dopri5 reference from the same x_T: halving every step of a geometric grid
    (the refined grid contains the coarse one) divides Heun's error by about 4."""
    x_T = VP.prior_sample(16, 2, seed=9)
    reference = sample(VP, score, 16, method="dopri5", x_T=x_T, rtol=1e-10, atol=1e-10, denoise=False,
                       backend="numpy").x
    errors = []
    for n in (40, 80):
        x = sample(VP, score, 16, method="heun", grid=_geometric_times(VP, n), x_T=x_T, denoise=False,
                   backend="numpy").x
        errors.append(np.sqrt(np.mean((x - reference) ** 2)))
    assert 3.0 < errors[0] / errors[1] < 5.5, errors


def test_custom_grid_on_torch_and_ve(score):
    ve = VESDE()
    ve_score = demo_mixture().score_fn(ve)
    times = TimeGrid(ve, "logsnr").times(8)
    a = sample(ve, ve_score, N, method="heun", grid=times, seed=2, backend="numpy")
    b = sample(ve, ve_score, N, method="heun", grid="logsnr", steps=8, seed=2, backend="torch")
    np.testing.assert_allclose(a.x, b.x.numpy(), rtol=0, atol=1e-9)


@pytest.mark.parametrize("keywords, message", [
    ({"grid": [1.0, 0.5, 0.6, 1e-3]}, "`grid` must be strictly decreasing"),
    ({"grid": [1.0, np.nan, 1e-3]}, "`grid` contains NaN"),
    ({"grid": [[1.0, 1e-3]]}, "`grid` must be a 1-D array of at least 2 times"),
    ({"grid": [1.0]}, "`grid` must be a 1-D array of at least 2 times"),
    ({"grid": [0.9, 1e-3]}, "`grid` must start at the SDE's start time T=1.0"),
    ({"grid": [1.0, 0.5, 0.0]}, "`grid` must end at a positive time"),
    ({"grid": [1.0, 0.5, -0.1]}, "`grid` must end at a positive time"),
    ({"sigmas": [157.0, 1.0, 0.1]}, "`sigmas` must start at the SDE's noise level at T"),
    ({"sigmas": [float(VP.edm_sigma(1.0)), 1.0, 0.0]}, "drop it, sigmas"),
    ({"sigmas": [float(VP.edm_sigma(1.0)), 1.0, 2.0]}, "`sigmas` must be strictly decreasing"),
    ({"sigmas": [float(VP.edm_sigma(1.0)), 0.1], "grid": "karras"}, "either as `grid` or as `sigmas`"),
    ({"grid": [1.0, 0.5, 1e-3], "steps": 3}, "`steps`=3 disagrees with the custom grid's 2 steps"),
    ({"grid": [1.0, 0.5, 1e-3], "eps": 1e-2}, "`eps`=0.01 disagrees with the custom grid's last time"),
    ({"grid": [1.0, 0.5, 1e-3], "rho": 5.0}, "`rho` applies to grid='karras' or 'power' only"),
])
def test_bad_custom_grids_are_refused_in_one_line(score, keywords, message):
    with pytest.raises(ValueError, match=message) as info:
        sample(VP, score, 4, method="ddim", backend="numpy", **keywords)
    assert "\n" not in str(info.value)


def test_sigmas_must_be_positive():
    with pytest.raises(ValueError, match=r"`sigmas` must be positive, got -0.5;"):
        TimeGrid.from_sigmas(VP, [float(VP.edm_sigma(VP.T)), 1.0, -0.5])


def test_a_custom_grid_may_start_within_a_relative_1e9_of_t():
    """The start tolerance is relative to T (here T = 2, so 1.5e-9 off is within it, 1e-8 off is not)."""
    sde = VPSDE(T=2.0)
    TimeGrid.from_times(sde, [2.0 + 1.5e-9, 1.0, sde.eps])
    with pytest.raises(ValueError, match="must start at the SDE's start time"):
        TimeGrid.from_times(sde, [2.0 + 2e-8, 1.0, sde.eps])


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_a_custom_grid_map_is_scipys_pchip_of_the_log_snr(sde):
    """Between the given times the map steps through the monotone cubic (PCHIP) of the log-SNR at the knots
    ``u_k = k/n``: SciPy's independent ``PchipInterpolator`` (Fritsch & Butland 1984), ends included; its derivative
    ``dphi`` is that of ``phi``."""
    from scipy.interpolate import PchipInterpolator

    times = np.array([sde.T, 0.8, 0.55, 0.5, 0.2, 0.04, sde.eps])
    grid = TimeGrid.from_times(sde, times)
    n = times.size - 1
    lam = PchipInterpolator(np.arange(n + 1) / n, np.asarray(sde.log_snr(times), dtype=float))
    for u in np.linspace(0.002, 0.998, 31):
        t = float(grid.phi(u, grid.params))
        assert float(sde.log_snr(t)) == pytest.approx(float(lam(u)), rel=1e-9, abs=1e-9)
        fd = (float(grid.phi(u + 1e-7, grid.params)) - float(grid.phi(u - 1e-7, grid.params))) / 2e-7
        assert float(grid.dphi(u, grid.params)) == pytest.approx(fd, rel=1e-5)


def test_the_power_grid_needs_rho_of_at_least_one_and_karras_does_not():
    with pytest.raises(ValueError, match=r"the power grid needs `rho` >= 1"):
        TimeGrid(VPSDE(), "power", rho=0.5)
    times = TimeGrid(VPSDE(), "karras", rho=0.5).times(4)
    assert times[0] == VPSDE().T and np.all(np.diff(times) < 0)


def test_grid_ends_outside_the_process_are_refused():
    """A grid's T may not pass the process's T, and an EDM level so small that its time underflows to 0 is refused."""
    with pytest.raises(ValueError, match="T"):
        TimeGrid(VPSDE(), "uniform", T=1.5)
    for sde in (VPSDE(), VESDE()):
        with pytest.raises(ValueError, match="not strictly decreasing and positive"):
            TimeGrid.from_sigmas(sde, [float(sde.edm_sigma(sde.T)), 1.0, 1e-300])


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(), SubVPSDE()], ids=["vp", "ve", "subvp"])
def test_noise_levels_one_ulp_apart_that_map_to_one_time_are_refused(sde):
    """Half the top noise level and the float just below it are distinct sigmas, but the time map is so flat there
    (dt/dsigma ~ 1e-3) that they give the same time: a zero-length step, refused in one line."""
    top = float(sde.edm_sigma(sde.T))
    a = 0.5 * top
    b = float(np.nextafter(a, 0.0))
    times = np.asarray(sde.t_from_edm_sigma(np.array([a, b])), dtype=float)
    assert times[0] == times[1]  # the premise: one time for both levels
    with pytest.raises(ValueError, match="not strictly decreasing and positive"):
        TimeGrid.from_sigmas(sde, [top, a, b])

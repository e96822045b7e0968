"""Adaptive SDE steps per path on the torch backend (sdekit.backends.torch_paths) against the numpy/numba runs.

The numpy backend runs the compiled integrator's own source (``schemes._paths.integrate_batch``) as Python, so it
is the reference here (no compilation); one case checks the numba backend too. With the same seed every path must
take the same accepted and rejected steps and reach the same states to round-off.
"""

import math

import numpy as np
import pytest

import sdekit
from sdekit import ops

torch = pytest.importorskip("torch")

MU, SIGMA = 0.5, 0.6
GBM = sdekit.SDE(drift=lambda t, x, p: MU * x, diffusion=lambda t, x, p: SIGMA * x, noise="diagonal")
OU = sdekit.SDE(drift=lambda t, x, p: -2.0 * (x - 1.0), diffusion=lambda t, x, p: 0.7 + 0.0 * x, noise="additive")
# two components, diagonal noise, coefficients that depend on time
TIMED = sdekit.SDE(
    drift=lambda t, x, p: -(1.0 + 0.5 * ops.sin(3.0 * t)) * x + ops.cos(t),
    diffusion=lambda t, x, p: 0.4 * (1.0 + t) * ops.sin(x) + 0.1,
    noise="diagonal",
)
TIMED_STRATONOVICH = sdekit.SDE(drift=TIMED.drift, diffusion=TIMED.diffusion, noise="diagonal", calculus="stratonovich")


def pair(problem, x0, span, reference="numpy", device="cpu", dtype=None, **kw):
    """The same solve on the reference backend and on torch."""
    ref = sdekit.solve(problem, x0, span, backend=reference, **kw)
    got = sdekit.solve(problem, x0, span, backend="torch", device=device, dtype=dtype, **kw)
    return ref, got


def assert_parity(ref, got, share=1.0, tol=1e-10):
    """At least ``share`` of the paths take the same steps and rejections; those reach the same states."""
    same = (ref.steps_per_path == got.steps_per_path) & (ref.rejected_per_path == got.rejected_per_path)
    assert same.mean() >= share, same.mean()
    x = got.x.detach().cpu().double().numpy()
    assert x.shape == ref.x.shape
    np.testing.assert_allclose(x[:, same], ref.x[:, same], rtol=tol, atol=tol)
    np.testing.assert_array_equal(got.drift_evals_per_path[same], ref.drift_evals_per_path[same])
    assert got.stats.n_accepted == got.steps_per_path.sum()


@pytest.mark.parametrize(("method", "rtol"), [("sriw1", 1e-3), ("milstein", 1e-2)])
def test_gbm_same_steps_and_states_as_numpy(method, rtol):
    ref, got = pair(GBM, 1.0, (0.0, 1.0), method=method, rtol=rtol, atol=1e-4, seed=11, n_paths=24,
                    save_at=[0.0, 0.3, 1.0])
    assert_parity(ref, got)
    assert got.rejected_per_path.sum() > 0  # the controller's rejection branch ran
    assert not got.failed.any()


def test_gbm_sriw1_same_as_numba():
    ref, got = pair(GBM, 1.0, (0.0, 1.0), reference="numba", method="sriw1", rtol=1e-2, atol=1e-4, seed=5, n_paths=16)
    assert_parity(ref, got)


def test_ou_sra1_reverse_time():
    ref, got = pair(OU, 0.3, (2.0, 0.25), method="sra1", rtol=1e-3, atol=1e-5, seed=2, n_paths=24,
                    save_at=[2.0, 1.3, 0.25])
    assert_parity(ref, got)
    assert got.t[-1] == 0.25


def test_time_dependent_two_dims_nonzero_start_non_dyadic_saves():
    save = [0.5, 0.61, 0.9 + 1 / 3, 1.7]
    x0 = np.array([[0.4, -0.2]])
    ref, got = pair(TIMED, x0, (0.5, 1.7), method="sriw1", rtol=1e-3, atol=1e-5, seed=7, n_paths=20, save_at=save)
    assert_parity(ref, got)
    ref2, got2 = pair(TIMED_STRATONOVICH, x0, (0.5, 1.7), method="euler_heun", rtol=1e-2, atol=1e-4, seed=7, n_paths=20,
                      save_at=save, dt0=0.01)
    assert_parity(ref2, got2)


def test_brownian_values_on_the_device_tree(monkeypatch):
    """Off the CPU the Brownian values come from interval_torch; run that branch on the CPU."""
    from sdekit.backends import torch_paths

    monkeypatch.setattr(torch_paths, "COMPILED_TREE_DEVICES", ())
    ref, got = pair(GBM, 1.0, (1.0, 0.0), method="sriw1", rtol=1e-2, atol=1e-4, seed=9, n_paths=12,
                    save_at=[1.0, 0.45, 0.0])
    assert_parity(ref, got)


def test_per_path_fields_and_failures():
    got = sdekit.solve(GBM, 1.0, (0.0, 1.0), method="sriw1", rtol=1e-4, atol=1e-6, seed=1, n_paths=6,
                       backend="torch", max_steps=10)
    ref = sdekit.solve(GBM, 1.0, (0.0, 1.0), method="sriw1", rtol=1e-4, atol=1e-6, seed=1, n_paths=6,
                       backend="numpy", max_steps=10)
    assert got.failed.all() and ref.failed.all()  # the step budget runs out on every path
    np.testing.assert_array_equal(got.failure_time, ref.failure_time)
    assert (got.steps_per_path + got.rejected_per_path == 10).all()
    assert np.isnan(got.event_t).all() and (got.event_id == -1).all() and len(got.events) == 0
    assert torch.isnan(got.x[-1]).all()


def test_float32_follows_float64():
    ref, got = pair(GBM, 1.0, (0.0, 1.0), dtype=torch.float32, method="sriw1", rtol=1e-2, atol=1e-4, seed=11,
                    n_paths=24)
    assert got.x.dtype == torch.float32
    assert_parity(ref, got, share=0.9, tol=1e-4)


def test_gradients_flow_to_x0():
    x0 = torch.tensor([[1.3]], dtype=torch.float64, requires_grad=True)
    sol = sdekit.solve(GBM, x0, (0.0, 1.0), method="sriw1", rtol=1e-2, atol=1e-6, seed=4, n_paths=8, backend="torch")
    end = sol.x[-1].sum()
    end.backward()
    # each path's step map is linear in its state: d x_T / d x0 = x_T / x0 with the steps held fixed
    assert math.isclose(float(x0.grad), float(end.detach()) / 1.3, rel_tol=1e-12)


def test_tensor_time_errors_name_the_fix():
    scalar_only = sdekit.SDE(drift=lambda t, x, p: math.sin(t) * x, diffusion=lambda t, x, p: 0.2 * x, noise="diagonal")
    with pytest.raises(ValueError, match=r"adaptive torch solves pass t as an \(n, 1\) tensor"):
        sdekit.solve(scalar_only, 1.0, (0.0, 1.0), method="sriw1", rtol=1e-2, seed=1, n_paths=4, backend="torch")
    first_row = sdekit.SDE(drift=lambda t, x, p: t.reshape(-1)[0] * x if torch.is_tensor(t) else t * x,
                           diffusion=lambda t, x, p: 0.2 * x, noise="diagonal")
    with pytest.raises(ValueError, match=r"gives other values with t a \(3, 1\) tensor"):
        sdekit.solve(first_row, 1.0, (0.0, 1.0), method="sriw1", rtol=1e-2, seed=1, n_paths=4, backend="torch")
    with pytest.raises(ValueError, match=r"`events\[0\]\(t, x, params\)` raised .* adaptive torch solves pass t"):
        sdekit.solve(GBM, 1.0, (0.0, 1.0), method="sriw1", rtol=1e-2, seed=1, n_paths=4, backend="torch",
                     events=[sdekit.Event(lambda t, x, p: x[:, 0] - math.exp(t))])


EVENTS = [sdekit.Event(lambda t, x, p: x[:, 0] - 1.5),
          sdekit.Event(lambda t, x, p: x[:, 0] - 1.2, terminal=False),
          sdekit.Event(lambda t, x, p: x[:, 0] - 0.8, terminal=False, direction=-1)]


@pytest.mark.parametrize(("span", "steps"), [((0.0, 1.0), dict(method="sriw1", rtol=1e-2, atol=1e-4)),
                                             ((1.0, 0.0), dict(method="sriw1", rtol=1e-2, atol=1e-4)),
                                             ((0.0, 1.0), dict(method="euler", n_steps=16))])
def test_sde_events_same_as_numpy(span, steps):
    ref, got = pair(GBM, 1.0, span, seed=3, n_paths=40, events=EVENTS, save_at=[span[0], 0.5, span[1]], **steps)
    assert_parity(ref, got)
    assert np.isfinite(ref.event_t).sum() >= 5 and len(ref.events) > np.isfinite(ref.event_t).sum()  # both kinds fired
    np.testing.assert_array_equal(got.event_id, ref.event_id)
    np.testing.assert_allclose(got.event_t, ref.event_t, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.event_x, ref.event_x, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(got.events.path, ref.events.path)
    np.testing.assert_array_equal(got.events.event, ref.events.event)
    np.testing.assert_allclose(got.events.t, ref.events.t, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.events.x, ref.events.x, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(got.diffusion_evals_per_path, ref.diffusion_evals_per_path)


def test_ode_events_are_refused_on_torch():
    decay = sdekit.ODE(lambda t, x, p: -x)
    with pytest.raises(ValueError, match="ODE events run on the numpy and numba backends"):
        sdekit.solve(decay, 1.0, (0.0, 1.0), method="rk4", n_steps=8, backend="torch",
                     events=[sdekit.Event(lambda t, x, p: x[:, 0] - 0.5)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_same_steps_and_states():
    ref, got = pair(TIMED, np.array([[0.4, -0.2]]), (0.5, 1.7), device="cuda", method="sriw1", rtol=1e-3, atol=1e-5,
                    seed=7, n_paths=64, save_at=[0.5, 0.61, 1.7])
    assert got.x.device.type == "cuda"
    assert_parity(ref, got, share=0.95, tol=1e-9)

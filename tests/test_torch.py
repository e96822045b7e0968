"""The torch backend: same Brownian paths as Numba, gradients, float32, devices and bad input."""

import math

import numpy as np
import pytest
import torch

import sdekit as sk
from sdekit import _rng, _torch_bridge, problems
from sdekit.backends import torch_backend

OU = problems.ornstein_uhlenbeck()


# --------------------------------------------------------------------------- random numbers and paths
def test_hash_is_bit_identical():
    z = np.random.default_rng(0).integers(0, 2**63, 4000, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    ref = np.array([_rng.mix64(v) for v in z], dtype=np.uint64)
    got = _torch_bridge.mix64(torch.from_numpy(z.view(np.int64))).numpy().view(np.uint64)
    np.testing.assert_array_equal(got, ref)


def test_normals_match_the_compiled_ziggurat():
    """Fast-path draws are bit-identical; the slow path (libm vs torch math) agrees to an ulp or two."""
    bits = np.random.default_rng(1).integers(0, 2**63, 100_000, dtype=np.uint64) * np.uint64(2)
    ref = np.array([_rng.normal_from_bits(b, _rng.ZIG_K, _rng.ZIG_W, _rng.ZIG_F, _rng.ZIG_R) for b in bits])
    got = _torch_bridge.normals(torch.from_numpy(bits.view(np.int64))).numpy()
    np.testing.assert_allclose(got, ref, rtol=4e-16, atol=0)
    assert (got == ref).mean() > 0.98
    # The sample holds tail draws and wedge rejections, so the slow paths were exercised.
    assert np.sum(np.abs(ref) > _rng.ZIG_R) > 0


@pytest.mark.parametrize("levy", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("n_steps, block_steps", [(24, None), (3 * 64, 4), (1000, 16), (7, 1)])
def test_torch_tree_equals_numba_tree(levy, reverse, n_steps, block_steps):
    """Breadth-first blocks in torch reproduce the depth-first compiled walk, whatever the block size."""
    bm = sk.BrownianPath.for_steps(5, (0.0, 2.0), n_steps, n_paths=37, noise_dim=2, levy_area=levy)
    ref = bm.increments(n_steps, reverse=reverse)
    blocks = list(bm.blocks(n_steps, reverse=reverse, device="cpu", generator="torch", block_steps=block_steps))
    dw = torch.cat([b.dw for b in blocks]).numpy()
    if levy:
        np.testing.assert_allclose(dw, ref[0], rtol=0, atol=1e-15)
        np.testing.assert_allclose(torch.cat([b.levy_area for b in blocks]).numpy(), ref[1], rtol=0, atol=1e-15)
    else:
        np.testing.assert_allclose(dw, ref, rtol=0, atol=1e-15)


def test_increments_as_tensors_and_path_subsets():
    bm = sk.BrownianPath.for_steps(9, (0.0, 1.0), 48, n_paths=40, noise_dim=3, levy_area=True)
    dw, hh = bm.increments(48)
    for gen in ("numba", "torch"):
        tdw, thh = bm.increments(48, paths=range(10, 25), device="cpu", generator=gen)
        assert isinstance(tdw, torch.Tensor) and tdw.dtype == torch.float64
        np.testing.assert_allclose(tdw.numpy(), dw[:, 10:25], atol=1e-15, rtol=0)
        np.testing.assert_allclose(thh.numpy(), hh[:, 10:25], atol=1e-15, rtol=0)
    f32 = bm.increments(48, dtype=torch.float32)[0]
    assert f32.dtype == torch.float32
    np.testing.assert_allclose(f32.numpy(), dw, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="generator"):
        bm.increments(48, device="cpu", generator="philox")


def test_same_seed_same_paths_across_backends_and_batch_splits(monkeypatch):
    kw = dict(method="sra1", n_steps=64, seed=4, save_at=[0.5, 1.0])
    ref = sk.solve(OU.problem, 2.0, (0, 1), n_paths=500, backend="numba", **kw)
    whole = sk.solve(OU.problem, 2.0, (0, 1), n_paths=500, backend="torch", **kw)
    monkeypatch.setattr(torch_backend, "batch_size", lambda plan: 77)
    split = sk.solve(OU.problem, 2.0, (0, 1), n_paths=500, backend="torch", **kw)
    np.testing.assert_allclose(whole.x.numpy(), ref.x, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(split.x.numpy(), whole.x.numpy())
    # A BrownianPath made for one backend drives another.
    bm = ref.brownian
    again = sk.solve(OU.problem, 2.0, (0, 1), brownian=bm, backend="torch", **{k: v for k, v in kw.items() if k != "seed"})
    np.testing.assert_array_equal(again.x.numpy(), whole.x.numpy())


# --------------------------------------------------------------------------- numerics
def test_float32_follows_float64_on_the_same_path():
    kw = dict(method="sriw1", n_steps=100, n_paths=2000, seed=3, save_at=[1.0], backend="torch")
    gbm = problems.gbm(a=1.0, b=0.5)
    a = sk.solve(gbm.problem, gbm.x0, gbm.t_span, dtype=torch.float64, **kw)
    b = sk.solve(gbm.problem, gbm.x0, gbm.t_span, dtype=torch.float32, **kw)
    assert b.x.dtype == torch.float32
    rel = (b.x.double() - a.x).abs() / a.x.abs()
    # float32 round-off accumulated over 100 steps: a few hundred ulps at most.
    assert rel.max() < 2e-5, rel.max()


def test_torch_functions_and_modules_as_drift():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()
    sde = sk.SDE(lambda t, x, p: net(x) - x, lambda t, x, p: p[0] * torch.sigmoid(x), noise="diagonal",
                 params=(0.2,))
    sol = sk.solve(sde, np.array([0.5, -0.5]), (0, 1), method="milstein", n_steps=32, n_paths=64, seed=1,
                   backend="torch")
    assert sol.success and sol.x.shape == (33, 64, 2) and sol.x.requires_grad
    ref = sk.solve(sde, np.array([0.5, -0.5]), (0, 1), method="milstein", n_steps=32, n_paths=64, seed=1,
                   backend="torch", dtype=torch.float64)
    np.testing.assert_array_equal(sol.x.detach().numpy(), ref.x.detach().numpy())


@pytest.mark.parametrize("method", ["euler", "milstein", "euler_heun", "sra1", "sriw1"])
def test_gradients_match_finite_differences(method):
    """gradcheck (float64) with respect to x0 and a parameter tensor through the whole solve."""
    stratonovich = method == "euler_heun"
    additive = method == "sra1"

    def run(x0, theta, sigma):
        if additive:
            sde = sk.SDE(lambda t, x, p: -p[0] * torch.sin(x), lambda t, x, p: p[1] * (1.0 + t), noise="additive",
                         params=(theta, sigma))
        else:
            sde = sk.SDE(lambda t, x, p: -p[0] * x + torch.sin(x), lambda t, x, p: p[1] * torch.cos(x),
                         noise="diagonal", calculus="stratonovich" if stratonovich else "ito", params=(theta, sigma))
        return sk.solve(sde, x0, (0.0, 1.0), method=method, n_steps=8, seed=2, backend="torch", save_at=[0.5, 1.0]).x

    x0 = torch.tensor([[0.3, -0.2], [1.0, 0.5], [0.1, 0.1]], dtype=torch.float64, requires_grad=True)
    theta = torch.tensor([0.7, 1.3], dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(run, (x0, theta, sigma), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_gradient_of_an_ode_matches_the_exact_derivative():
    """x' = a x: d x(T) / d a = T x0 e^{aT}; fixed-step rk4 by gradcheck, dopri5 against the exact value."""
    a = torch.tensor(-0.8, dtype=torch.float64, requires_grad=True)
    x0 = torch.tensor([[1.5]], dtype=torch.float64)
    ode = sk.ODE(lambda t, x, p: p[0] * x, params=(a,))
    assert torch.autograd.gradcheck(
        lambda a: sk.solve(sk.ODE(lambda t, x, p: p[0] * x, params=(a,)), x0, (0, 1), method="rk4", n_steps=10,
                           backend="torch").x[-1],
        (a,),
    )
    sol = sk.solve(ode, x0, (0.0, 2.0), method="dopri5", rtol=1e-10, atol=1e-12, backend="torch")
    (g,) = torch.autograd.grad(sol.x[-1, 0, 0], a)
    exact = 2.0 * 1.5 * math.exp(-0.8 * 2.0)
    assert abs(g.item() - exact) < 1e-7 * abs(exact)


def test_batched_dopri5_meets_the_tolerance_on_every_path():
    ex = problems.gaussian_pf_ode()
    x0 = np.random.default_rng(0).normal(size=(50, ex.x0.size))
    sol = sk.solve(ex.problem, x0, ex.t_span, method="dopri5", rtol=1e-8, atol=1e-10, backend="torch",
                   save_at=[0.0, 0.3, 1.0])
    for i, t in enumerate([0.0, 0.3, 1.0]):
        exact = np.stack([ex.exact(None, r, (0.0, t)) for r in x0])
        np.testing.assert_allclose(sol.x[i].numpy(), exact, rtol=1e-6, atol=1e-8)
    assert sol.stats.n_paths == 50 and sol.stats.n_accepted % 50 == 0


def test_reverse_time_matches_numba():
    ex = problems.gbm()
    kw = dict(method="sriw1", n_steps=40, n_paths=200, seed=8)
    a = sk.solve(ex.problem, ex.x0, (1.0, 0.0), backend="numba", **kw)
    b = sk.solve(ex.problem, ex.x0, (1.0, 0.0), backend="torch", **kw)
    np.testing.assert_allclose(b.x.numpy(), a.x, rtol=1e-12)
    np.testing.assert_array_equal(b.t, a.t)


def test_compiled_steps_give_the_eager_results_and_gradients():
    """compile=True fuses each step with torch.compile: same numbers, same gradients."""
    theta = torch.tensor([0.7], dtype=torch.float64, requires_grad=True)
    sde = sk.SDE(lambda t, x, p: -p[0] * x + torch.sin(t * x), lambda t, x, p: 0.3 * torch.cos(x), noise="diagonal",
                 params=(theta,))
    kw = dict(method="sriw1", n_steps=16, n_paths=64, seed=2, backend="torch", save_at=[0.5, 1.0])
    eager = sk.solve(sde, 0.5, (0.0, 1.0), **kw)
    fused = sk.solve(sde, 0.5, (0.0, 1.0), compile=True, **kw)
    np.testing.assert_allclose(fused.x.detach().numpy(), eager.x.detach().numpy(), rtol=1e-12, atol=1e-14)
    (ge,) = torch.autograd.grad(eager.x[-1].sum(), theta)
    (gf,) = torch.autograd.grad(fused.x[-1].sum(), theta)
    np.testing.assert_allclose(gf.numpy(), ge.numpy(), rtol=1e-10)
    with pytest.raises(ValueError, match="compile.*fixed-step"):
        sk.solve(sk.ODE(lambda t, x, p: -x), 1.0, (0, 1), method="dopri5", backend="torch", compile=True)
    with pytest.raises(ValueError, match="compile.*backend='torch'"):
        sk.solve(sde, 0.5, (0.0, 1.0), method="euler", n_steps=4, seed=0, compile=True)


# --------------------------------------------------------------------------- failures
def test_blow_up_is_reported_at_the_same_time_as_numba():
    """dX = X^2 dt + 0.5 X dW blows up; the failure time and the NaN freeze match the numba backend."""
    sde = sk.SDE(lambda t, x, p: x * x, lambda t, x, p: 0.5 * x, noise="diagonal")
    x0 = np.array([[0.5], [3.0], [0.2], [5.0]])
    kw = dict(method="euler", n_steps=200, seed=0, t_span=(0.0, 2.0))
    a = sk.solve(sde, x0, kw.pop("t_span"), backend="numba", **kw)
    b = sk.solve(sde, x0, (0.0, 2.0), backend="torch", **kw)
    assert not a.success and not b.success
    np.testing.assert_array_equal(b.failed, a.failed)
    np.testing.assert_array_equal(b.failure_time, a.failure_time)
    np.testing.assert_array_equal(np.isnan(b.x.numpy()), np.isnan(a.x))
    np.testing.assert_allclose(b.x.numpy(), a.x, rtol=1e-12)
    assert "paths failed" in b.message


def test_dopri5_failure_leaves_the_other_paths_alone():
    ode = sk.ODE(lambda t, x, p: x * x)  # x0 = 2 blows up at t = 0.5; x0 = 0.2 does not before t = 5
    sol = sk.solve(ode, np.array([[2.0], [0.2]]), (0.0, 1.0), method="dopri5", backend="torch", save_at=[0.25, 1.0])
    assert list(sol.failed) == [True, False]
    assert abs(sol.failure_time[0] - 0.5) < 1e-6  # where the step size underflows, as on the numba backend
    assert np.isnan(sol.x[1, 0, 0].item())
    np.testing.assert_allclose(sol.x[:, 1, 0].numpy(), [0.2 / (1 - 0.2 * 0.25), 0.2 / (1 - 0.2)], rtol=1e-5)
    np.testing.assert_allclose(sol.x[0, 0, 0].item(), 2.0 / (1 - 0.5), rtol=1e-5)


# --------------------------------------------------------------------------- bad input
def _ou(**kw):
    return sk.SDE(lambda t, x, p: p[0] * (p[1] - x), lambda t, x, p: p[2], noise="additive", **kw)


@pytest.mark.parametrize(
    "kwargs, x0, match",
    [
        (dict(dtype=torch.float64), torch.ones(3, dtype=torch.float32), "x0.*float32.*dtype"),
        (dict(dtype=torch.float16), 1.0, "float32 or torch.float64"),
        (dict(device="cpu"), torch.ones(3, device="meta"), "x0.*meta.*device"),
        (dict(device="bogus"), 1.0, "device"),
        (dict(backend="numba", device="cpu"), 1.0, "backend='torch'"),
        (dict(backend="numba"), torch.ones(2, requires_grad=True), "requires grad.*backend='torch'"),
        (dict(), torch.tensor([1.0, float("nan")]), "NaN"),
    ],
)
def test_bad_tensors_and_options(kwargs, x0, match):
    kw = dict(method="euler", n_steps=4, seed=0, backend="torch") | kwargs
    with pytest.raises(ValueError, match=match):
        sk.solve(_ou(params=(1.0, 0.5, 0.3)), x0, (0, 1), **kw)


def test_cuda_request_without_cuda_names_the_fix():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA is not available.*device='cpu'"):
        sk.solve(_ou(params=(1.0, 0.5, 0.3)), 1.0, (0, 1), method="euler", n_steps=4, seed=0, backend="torch",
                 device="cuda")


@pytest.mark.parametrize(
    "params, match",
    [
        ((torch.tensor(1.0, dtype=torch.float32), 0.5, 0.3), r"params\[0\].*float32.*float64"),
        ((torch.tensor(1.0, device="meta"), 0.5, 0.3), r"params\[0\].*meta"),
    ],
)
def test_bad_parameter_tensors(params, match):
    with pytest.raises(ValueError, match=match):
        sk.solve(_ou(params=params), 1.0, (0, 1), method="euler", n_steps=4, seed=0, backend="torch")


def test_parameter_tensors_need_the_torch_backend():
    with pytest.raises(ValueError, match=r"params\[0\].*backend='torch'"):
        sk.solve(_ou(params=(torch.tensor(1.0), 0.5, 0.3)), 1.0, (0, 1), method="euler", n_steps=4, seed=0)


@pytest.mark.parametrize(
    "drift, match",
    [
        (lambda t, x, p: torch.zeros(x.shape[0], 3, dtype=x.dtype), r"drift.*shape \(3, 3\).*\(3, 1\)"),
        (lambda t, x, p: x.float(), "drift.*float32.*float64"),
        (lambda t, x, p: x.to("meta"), "drift.*meta.*device"),
        (lambda t, x, p: np.zeros((x.shape[0], 1)), "NumPy array.*torch tensor"),
        (lambda t, x, p: x @ torch.ones(3, 3, dtype=x.dtype), "drift.*raised RuntimeError.*batch of states"),
    ],
)
def test_bad_drift_results(drift, match):
    sde = sk.SDE(drift, lambda t, x, p: 0.3, noise="additive")
    with pytest.raises(ValueError, match=match):
        sk.solve(sde, 1.0, (0, 1), method="euler", n_steps=4, seed=0, backend="torch")


# --------------------------------------------------------------------------- GPU (skipped without CUDA)
@pytest.mark.gpu
def test_gpu_placement_and_parity_with_cpu():
    dev = torch.device("cuda")
    x0 = torch.full((1,), 2.0, device=dev)
    sol = sk.solve(OU.problem, x0, (0, 1), method="sra1", n_steps=128, n_paths=4096, seed=5, backend="torch")
    assert sol.x.device.type == "cuda" and sol.x.dtype == torch.float32
    ref = sk.solve(OU.problem, 2.0, (0, 1), method="sra1", n_steps=128, n_paths=4096, seed=5, backend="numba")
    np.testing.assert_allclose(sol.x.cpu().double().numpy(), ref.x, rtol=2e-5, atol=2e-6)
    sol64 = sk.solve(OU.problem, 2.0, (0, 1), method="sra1", n_steps=128, n_paths=4096, seed=5, backend="torch",
                     device="cuda", dtype=torch.float64)
    np.testing.assert_allclose(sol64.x.cpu().numpy(), ref.x, rtol=1e-10)


@pytest.mark.gpu
def test_gpu_tree_equals_numba_tree():
    bm = sk.BrownianPath.for_steps(5, (0.0, 2.0), 1000, n_paths=300, noise_dim=2, levy_area=True)
    dw, hh = bm.increments(1000)
    gdw, ghh = bm.increments(1000, device="cuda")
    np.testing.assert_allclose(gdw.cpu().numpy(), dw, rtol=0, atol=1e-15)
    np.testing.assert_allclose(ghh.cpu().numpy(), hh, rtol=0, atol=1e-15)


@pytest.mark.gpu
def test_gpu_gradients_and_dopri5():
    dev = torch.device("cuda")
    a = torch.tensor(-0.8, dtype=torch.float64, device=dev, requires_grad=True)
    ode = sk.ODE(lambda t, x, p: p[0] * x, params=(a,))
    sol = sk.solve(ode, torch.tensor([[1.5]], dtype=torch.float64, device=dev), (0.0, 2.0), method="dopri5",
                   rtol=1e-10, atol=1e-12, backend="torch")
    (g,) = torch.autograd.grad(sol.x[-1, 0, 0], a)
    assert abs(g.item() - 3.0 * math.exp(-1.6)) < 1e-7

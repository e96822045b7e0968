"""Training objectives against their closed-form minimisers (Vincent 2011; Ho et al. 2020), EMA, and the networks."""

import math

import numpy as np
import pytest
import torch

import diffusion
import diffusion.datasets
from diffusion.models import ScoreMLP, UNet, as_score, drop_labels
from diffusion.training import EMA, ddpm_loss, dsm_loss, ssm_loss

F64 = torch.float64


class Affine(torch.nn.Module):
    """s(x) = a x + b with scalar a: the family that holds the Gaussian optimum."""

    def __init__(self, dim, parameterisation="score"):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(-0.5, dtype=F64))
        self.b = torch.nn.Parameter(torch.zeros(dim, dtype=F64))
        self.parameterisation = parameterisation

    def forward(self, x, t):
        return self.a * x + self.b


def fit(model, loss_fn, steps=60):
    """Minimise a deterministic (fixed-seed) loss with L-BFGS."""
    opt = torch.optim.LBFGS(model.parameters(), max_iter=steps, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)


def gaussian_data(n, mu, v, dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return mu + math.sqrt(v) * torch.randn(n, dim, generator=g, dtype=F64)


@pytest.mark.parametrize("weighting", ["sigma2", "likelihood", "none"])
def test_dsm_minimiser_is_the_gaussian_score(weighting):
    """VE at a fixed noise sigma: the DSM optimum is s*(x) = -(x - mu)/(v + sigma^2) (Vincent 2011)."""
    sde, t, mu, v, n = diffusion.VESDE(), 0.3, torch.tensor([1.0, -2.0], dtype=F64), 0.5, 100_000
    x0 = gaussian_data(n, mu, v)
    model = Affine(2)
    fit(model, lambda: dsm_loss(model, sde, x0, t=t, weighting=weighting, generator=torch.Generator().manual_seed(1)))
    s2 = float(sde.sigma(t)) ** 2
    # a is a ratio of sample second moments: relative standard error about sqrt(2/n) ~ 0.5%, 4 s.e. = 2%
    assert model.a.item() == pytest.approx(-1 / (v + s2), rel=0.02)
    np.testing.assert_allclose(model.b.detach().numpy(), (mu / (v + s2)).numpy(), rtol=0.03, atol=0.02 / (v + s2))


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
def test_dsm_through_other_parameterisations(param):
    """A network predicting eps / x0 / v is converted to a score first: same optimum in score space."""
    sde, t, mu, v, n = diffusion.VPSDE(), 0.4, torch.tensor([0.5, 1.0], dtype=F64), 0.25, 50_000
    x0 = gaussian_data(n, mu, v, seed=3)
    model = Affine(2, parameterisation=param)
    fit(model, lambda: dsm_loss(model, sde, x0, t=t, generator=torch.Generator().manual_seed(2)))
    a, s = float(sde.alpha(t)), float(sde.sigma(t))
    x = torch.tensor([[0.3, -0.7], [1.2, 2.0]], dtype=F64)
    learned = diffusion.convert(model(x, t), x, t, sde, source=param, target="score")
    exact = -(x - a * mu) / (a * a * v + s * s)
    np.testing.assert_allclose(learned.detach().numpy(), exact.numpy(), rtol=0.03, atol=0.03)


def test_l_simple_minimiser_is_the_optimal_noise_prediction():
    """eps*(x, t) = -sigma_t grad log p_t(x) = sigma_t (x - alpha_t mu)/(alpha_t^2 v + sigma_t^2) (Ho et al. 2020, §3.2)."""
    sde = diffusion.VPSDE(T=0.5)  # with n_steps = 1 every draw is at t = T = 0.5
    mu, v, n = torch.tensor([1.0, 0.0], dtype=F64), 0.3, 100_000
    x0 = gaussian_data(n, mu, v, seed=4)
    model = Affine(2, parameterisation="eps")
    fit(model, lambda: ddpm_loss(model, sde, x0, n_steps=1, generator=torch.Generator().manual_seed(5)))
    a, s = float(sde.alpha(0.5)), float(sde.sigma(0.5))
    c = a * a * v + s * s
    assert model.a.item() == pytest.approx(s / c, rel=0.02)
    np.testing.assert_allclose(model.b.detach().numpy(), (-s * a * mu / c).numpy(), atol=0.02)


@pytest.mark.parametrize("vr", [True, False])
def test_sliced_score_matching_recovers_minus_inverse_covariance(vr):
    """A linear model s(x) = A x trained by SSM reaches the exact minimiser of the objective on its data and
    projections, which tends to A = -Sigma^{-1} (Hyvarinen 2005; Song et al. 2019, eq. 8).

    The objective is quadratic in A: with variance reduction mean v^T A v + |A x|^2 / 2, minimised by A = -V S^{-1}
    (V = mean v v^T, S = mean x x^T); without it mean v^T A v + (v^T A x)^2 / 2, whose normal equations in vec(A)
    are sum (x x^T (x) v v^T) vec(A) = -sum vec(v v^T). L-BFGS must reach it to 1e-6; the minimiser itself is within
    5 standard errors of -Sigma^{-1} (delta method: A = -V S^{-1} with V and S means of n k and n rows)."""
    sigma = torch.tensor([[1.0, 0.6], [0.6, 2.0]], dtype=F64)
    n, k = 50_000, 4
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n, 2, generator=g, dtype=F64) @ torch.linalg.cholesky(sigma).T
    A = torch.nn.Parameter(-torch.eye(2, dtype=F64))
    opt = torch.optim.LBFGS([A], max_iter=200, tolerance_grad=1e-14, tolerance_change=1e-16,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = ssm_loss(lambda y: y @ A.T, x, n_projections=k, variance_reduction=vr,
                        generator=torch.Generator().manual_seed(8))
        loss.backward()
        return loss

    opt.step(closure)
    gen = torch.Generator().manual_seed(8)
    v = torch.stack([torch.randn(x.shape, generator=gen, dtype=F64) for _ in range(k)]).numpy()  # the loss's draws
    xn = x.numpy()
    V = np.einsum("jni,jnk->ik", v, v) / (n * k)
    if vr:
        exact = -V @ np.linalg.inv(xn.T @ xn / n)
    else:  # vec(A) row-major: A[i, l] at 2 i + l; d/dA of (v^T A x)^2 / 2 is (v^T A x) v x^T
        M = np.einsum("jni,jnk,nl,nm->iklm", v, v, xn, xn).transpose(0, 2, 1, 3).reshape(4, 4) / (n * k)
        exact = np.linalg.solve(M, -V.reshape(4)).reshape(2, 2)
    np.testing.assert_allclose(A.detach().numpy(), exact, rtol=0, atol=1e-6)
    target = -np.linalg.inv(sigma.numpy())
    # delta method for -V S^{-1}: the entries' spread is about |Sigma^{-1}| sqrt(2 / (n k) + 2 / n) (vr); without
    # variance reduction the fourth moments of v double it
    se = np.abs(target).max() * math.sqrt(2.0 / (n * k) + 2.0 / n) * (1.0 if vr else 2.0)
    np.testing.assert_allclose(exact, target, rtol=0, atol=5 * se)


class _LinearScore(torch.nn.Module):
    parameterisation = "score"

    def __init__(self, A, b):
        super().__init__()
        self.A, self.b = torch.nn.Parameter(A), torch.nn.Parameter(b)

    def forward(self, x, t):
        return x @ self.A.T + self.b


def test_noisy_sliced_score_matching_equals_dsm_up_to_a_constant():
    """Hyvarinen/Vincent: at a fixed t, SSM on x_t and DSM differ by a constant independent of the model.

    Two linear score models; over 8 seeds the contrast (DSM - SSM)(model 1) - (DSM - SSM)(model 2) has mean
    zero within 4 standard errors, while DSM itself separates the models by many standard errors.
    """
    from diffusion.training import noisy_ssm_loss

    sde = diffusion.VPSDE()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(20_000, 2, generator=g, dtype=F64) * torch.tensor([0.5, 1.5], dtype=F64) + 1.0
    models = [_LinearScore(-torch.eye(2, dtype=F64), torch.zeros(2, dtype=F64)),
              _LinearScore(torch.tensor([[-2.0, 0.3], [0.1, -0.5]], dtype=F64), torch.tensor([0.2, -0.4], dtype=F64))]
    contrast, gap = [], []
    for k in range(8):
        d = []
        for m in models:
            dsm = float(dsm_loss(m, sde, x0, t=0.3, generator=torch.Generator().manual_seed(1000 + k)).detach())
            ssm = float(noisy_ssm_loss(m, sde, x0, t=0.3, generator=torch.Generator().manual_seed(2000 + k)).detach())
            d.append((dsm, ssm))
        contrast.append((d[0][0] - d[0][1]) - (d[1][0] - d[1][1]))
        gap.append(d[0][0] - d[1][0])
    c, se = np.mean(contrast), np.std(contrast, ddof=1) / math.sqrt(8)
    assert abs(c) < 4 * se + 1e-12
    assert abs(np.mean(gap)) > 10 * np.std(gap, ddof=1) / math.sqrt(8)


def test_ema_average_and_state():
    model = torch.nn.Linear(2, 1, dtype=F64)
    ema = EMA(model, decay=0.9, warmup=False)
    w0 = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()
    np.testing.assert_allclose(ema.module.weight.numpy(), (0.9 * w0 + 0.1 * (w0 + 1.0)).numpy(), rtol=1e-12)
    other = EMA(torch.nn.Linear(2, 1, dtype=F64), decay=0.5)
    other.load_state_dict(ema.state_dict())
    np.testing.assert_allclose(other.module.weight.numpy(), ema.module.weight.numpy())
    assert other.updates == 1 and other.decay == 0.9
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.0)


def test_networks_shapes_conditioning_and_sampling():
    mlp = ScoreMLP(2, hidden=16, depth=2, n_classes=3)
    x, c = torch.randn(5, 2), torch.rand(5)
    assert mlp(x, c).shape == (5, 2)
    assert mlp(x, c, torch.tensor([0, 1, 2, 3, 0])).shape == (5, 2)
    assert not torch.allclose(mlp(x, c, 0), mlp(x, c, 1))
    with pytest.raises(ValueError, match="labels"):
        mlp(x, c, torch.tensor([4, 0, 0, 0, 0]))
    unet = UNet(8, 1, width=8, embed=16, n_classes=10)
    assert unet(torch.randn(3, 64), torch.rand(3), torch.tensor([1, 2, 10])).shape == (3, 64)
    y = drop_labels(torch.zeros(10_000, dtype=torch.long), 10, 0.2, generator=torch.Generator().manual_seed(0))
    frac = float((y == 10).double().mean())
    assert abs(frac - 0.2) < 4 * math.sqrt(0.2 * 0.8 / 10_000)
    # a network wrapped as a Score samples with any integrator (torch backend)
    sde = diffusion.VPSDE()
    score = as_score(mlp, sde, label=1)
    r = diffusion.sample(sde, score, 16, method="dpmpp_2m", steps=5, grid="logsnr", seed=0, dtype=torch.float32)
    assert r.x.shape == (16, 2) and r.nfe == 6
    with pytest.raises(ValueError, match="class-conditional"):
        as_score(ScoreMLP(2), sde, label=1)


# --------------------------------------------------------------------------- data
@pytest.mark.parametrize("name", diffusion.datasets.DATASETS)
def test_datasets_are_generated_reproducibly(name):
    a = diffusion.datasets.load(name, 500, seed=1)
    b = diffusion.datasets.load(name, 500, seed=1)
    np.testing.assert_array_equal(a.x, b.x)
    assert a.x.shape == (500, 64 if name == "digits" else 2) and np.isfinite(a.x).all()
    assert not np.array_equal(a.x, diffusion.datasets.load(name, 500, seed=2).x)
    if name != "digits":
        assert 0.2 < a.x.std(axis=0).min() and a.x.std(axis=0).max() < 2.5  # about unit scale


def test_digits_dequantisation_and_checkerboard_support():
    d = diffusion.datasets.load("digits")
    assert d.x.shape == (1797, 64) and d.n_classes == 10 and sorted(set(d.labels)) == list(range(10))
    k = np.floor((d.x + 1) / d.bin_width)
    from sklearn.datasets import load_digits

    np.testing.assert_array_equal(k, load_digits().data)  # each pixel stays inside its grey level
    c = diffusion.datasets.load("checkerboard", 4000, seed=0).x
    cell = np.floor(c + 2)
    assert np.all((cell.sum(axis=1) % 2) == 0)
    with pytest.raises(ValueError, match="unknown dataset"):
        diffusion.datasets.load("mnist")


# --------------------------------------------------------------------------- training loop, checkpoints
class _Stop(Exception):
    pass


def _tiny_run(out, steps, resume=False, checkpoint_every=5, interrupt_at=None, evaluate=None, seed=0):
    from diffusion.training import TrainConfig, train

    def log(step, loss):
        if step == interrupt_at:
            raise _Stop  # as if the process were killed after this step

    torch.manual_seed(seed)
    net = ScoreMLP(2, hidden=16, depth=1)
    data = diffusion.datasets.load("moons", 256, seed=0)
    cfg = TrainConfig(steps=steps, batch_size=32, checkpoint_every=checkpoint_every, seed=3, warmup=4)
    res = train(net, diffusion.VPSDE(), data.x, cfg, out=out, resume=resume, progress=False, log=log,
                evaluate=evaluate, eval_every=None if evaluate is None else 4)
    return net, res


def _evaluate(step, module):
    # uses the sampler (its own seeded noise) and torch's global random state: neither may disturb training
    torch.rand(3)
    x = np.asarray(diffusion.sample(diffusion.VPSDE(), diffusion.models.as_score(module, diffusion.VPSDE()), 8,
                                    method="ddim", steps=3, seed=1).x)
    return {"mean": float(x.mean())}


@pytest.mark.parametrize("evaluate", [None, _evaluate], ids=["plain", "with-evaluation"])
def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, evaluate):
    full, res_full = _tiny_run(tmp_path / "full", 20, evaluate=evaluate)
    with pytest.raises(_Stop):
        _tiny_run(tmp_path / "split", 20, interrupt_at=13, evaluate=evaluate)  # last checkpoint at step 10
    from diffusion.training import load_checkpoint

    assert load_checkpoint(tmp_path / "split" / "checkpoint.pt")["step"] == 10
    net, res = _tiny_run(tmp_path / "split", 20, resume=True, evaluate=evaluate, seed=123)  # other initial weights
    for a, b in zip(full.state_dict().values(), net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(res_full["ema"].module.state_dict().values(), res["ema"].module.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert res["losses"] == res_full["losses"] and res["step"] == 20
    assert res["evals"] == res_full["evals"]
    if evaluate is not None:
        assert [e["step"] for e in res["evals"]] == [4, 8, 12, 16, 20]


def test_learning_rate_schedule():
    from diffusion.training import TrainConfig, _lr_factor

    cfg = TrainConfig(steps=1000, warmup=100)
    assert _lr_factor(0, cfg) == pytest.approx(0.01) and _lr_factor(99, cfg) == pytest.approx(1.0)
    assert _lr_factor(100, cfg) == pytest.approx(1.0) and _lr_factor(550, cfg) == pytest.approx(0.5)
    assert _lr_factor(1000, cfg) == pytest.approx(0.0, abs=1e-12)
    assert _lr_factor(700, TrainConfig(steps=1000, lr_schedule="constant")) == 1.0
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")


def test_checkpoints_are_atomic_and_damage_is_reported(tmp_path):
    from diffusion.training import CHECKPOINT, load_checkpoint

    _tiny_run(tmp_path, 10)
    path = tmp_path / CHECKPOINT
    assert load_checkpoint(path)["step"] == 10
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]  # no temporary file left behind
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        _tiny_run(tmp_path, 20, resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing" / CHECKPOINT)
    torch.save({"something": 1}, path)
    with pytest.raises(ValueError, match="not a diffusion training checkpoint"):
        load_checkpoint(path)


def test_trained_network_approaches_the_exact_gaussian_score():
    """DSM training on N(mu, 0.25 I): the EMA network's score is within a few percent of the exact one.

    Relative L2 error over samples of p_t; measured 6% at t = 0.05 (where the score is steepest,
    |s| ~ 4) and 0.9-1.7% for t >= 0.2 after 1,000 steps (7% and 1-2% after 1,500: more steps do not
    tighten it); the bounds leave about 3x margin. A wrong target or weighting (a sign, a missing
    sigma or alpha) puts the error at order one.
    """
    from diffusion.training import TrainConfig, train

    sde = diffusion.VPSDE()
    rng = np.random.default_rng(0)
    mu, v = np.array([1.0, -0.5]), 0.25
    x = mu + math.sqrt(v) * rng.standard_normal((20_000, 2))
    torch.manual_seed(0)
    net = ScoreMLP(2, hidden=64, depth=2)
    res = train(net, sde, x, TrainConfig(steps=1000, batch_size=256, lr=3e-3, seed=0), progress=False)
    score = as_score(res["ema"].module, sde)
    for t, bound in [(0.05, 0.18), (0.2, 0.05), (0.5, 0.05), (0.9, 0.05)]:
        a, s = float(sde.alpha(t)), float(sde.sigma(t))
        c = a * a * v + s * s
        xs = torch.as_tensor(a * mu + math.sqrt(c) * rng.standard_normal((2000, 2)), dtype=torch.float32)
        exact = -(xs - torch.as_tensor(a * mu, dtype=torch.float32)) / c
        err = (score.score(xs, t) - exact).square().sum(1).mean().sqrt() / exact.square().sum(1).mean().sqrt()
        assert float(err) < bound, (t, float(err))


@pytest.mark.parametrize("loss", ["ddpm", "ssm"])
def test_training_loop_runs_every_objective(loss):
    from diffusion.training import TrainConfig, train

    torch.manual_seed(0)
    net = ScoreMLP(2, hidden=16, depth=1)
    data = diffusion.datasets.load("gmm", 512, seed=0)
    res = train(net, diffusion.VPSDE(), data.x, TrainConfig(loss=loss, steps=200, batch_size=64, warmup=10),
                progress=False)
    first, last = np.mean(res["losses"][:20]), np.mean(res["losses"][-20:])
    assert np.all(np.isfinite(res["losses"])) and last < first


# --------------------------------------------------------------------------- losses on their own draws, exactly
def test_flow_matching_loss_is_the_squared_velocity_error_on_its_own_draws():
    """Rectified flow (``alpha = 1 - t``, ``sigma = t``): the target is ``z - x0`` (Liu et al. 2023, eq. 1). With a fixed
    time and a network predicting ``c x``, the loss is ``mean_i |c x_t,i - (z_i - x0_i)|^2`` with the same normals."""
    from diffusion import RectifiedFlow
    from diffusion.training import flow_matching_loss

    class Linear(torch.nn.Module):
        parameterisation = "velocity"

        def forward(self, x, t):
            return 0.7 * x

    x0 = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    for time_sampling in ("uniform", "logit_normal"):
        loss = flow_matching_loss(Linear(), RectifiedFlow(), x0, t=0.3, time_sampling=time_sampling,
                                  generator=torch.Generator().manual_seed(5))
        z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
        xt = 0.7 * x0 + 0.3 * z
        expected = ((0.7 * xt - (z - x0)) ** 2).sum(dim=1).mean()
        assert float(loss) == pytest.approx(float(expected), rel=1e-12)
    with pytest.raises(ValueError, match="time_sampling"):
        flow_matching_loss(Linear(), RectifiedFlow(), x0, time_sampling="normal")


@pytest.mark.parametrize("variance_reduction", [True, False])
def test_ssm_loss_is_its_formula_on_its_own_projections(variance_reduction):
    """Sliced score matching of a linear score ``s(x) = A x`` (Song et al. 2019, eq. 8): per projection ``v``, the term
    ``v^T A v + |s|^2 / 2`` (with variance reduction, the expectation over ``v`` of ``(v.s)^2 / 2`` taken exactly) or
    ``v^T A v + (v.s)^2 / 2``; the loss averages over rows and projections, with the same normals ``v``."""
    A = torch.tensor([[-1.0, 0.4], [0.1, -2.0]], dtype=F64)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    w = torch.rand(50, generator=torch.Generator().manual_seed(2), dtype=F64)
    loss = ssm_loss(lambda y: y @ A.T, x, n_projections=3, variance_reduction=variance_reduction, weights=w,
                    generator=torch.Generator().manual_seed(3))
    g, s, total = torch.Generator().manual_seed(3), x @ A.T, 0.0
    for _ in range(3):
        v = torch.randn(x.shape, generator=g, dtype=F64)
        quad = ((v @ A) * v).sum(dim=1)
        second = 0.5 * (s * s).sum(dim=1) if variance_reduction else 0.5 * (s * v).sum(dim=1) ** 2
        total += (w * (quad + second)).mean()
    assert float(loss.detach()) == pytest.approx(float(total) / 3, rel=1e-12)


def test_edm_loss_defaults_are_karras_table_1():
    """EDM's published training distribution and data scale (Karras et al. 2022, Table 1): P_mean = -1.2,
    P_std = 1.2, sigma_data = 0.5."""
    from diffusion.training import edm_loss

    net = torch.nn.Linear(2, 2).to(F64)

    def raw(x, c_noise):
        return net(x)

    x0 = torch.randn(32, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    sde = diffusion.VPSDE()
    default = edm_loss(raw, sde, x0, generator=torch.Generator().manual_seed(6))
    explicit = edm_loss(raw, sde, x0, sigma_data=0.5, p_mean=-1.2, p_std=1.2, generator=torch.Generator().manual_seed(6))
    other = edm_loss(raw, sde, x0, sigma_data=0.6, generator=torch.Generator().manual_seed(6))
    assert float(default) == float(explicit) != float(other)


def test_foreign_checkpoints_and_weights_name_what_is_wrong(tmp_path):
    """The error lists exactly the entries a checkpoint lacks, and the mismatched parameter of foreign weights."""
    from diffusion.training import load_checkpoint, load_weights

    path = tmp_path / "partial.pt"
    torch.save({"model": {}, "ema": {}, "optimizer": {}, "scheduler": {}, "step": 3, "generator": None}, path)
    with pytest.raises(ValueError, match=r"missing \['config', 'losses'\]\)"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match=r"size mismatch for weight"):
        load_weights(torch.nn.Linear(3, 2, bias=False), torch.nn.Linear(2, 2, bias=False).state_dict(), "run/x.pt")


def test_edm_loss_with_labels_is_the_loss_of_the_network_given_them():
    """A class-conditional network that ignores its labels has the unconditional loss, on the same draws."""
    from diffusion.training import edm_loss

    net = torch.nn.Linear(2, 2).to(F64)
    x0 = torch.randn(32, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    labels = torch.arange(32) % 3
    sde = diffusion.VPSDE()
    plain = edm_loss(lambda x, c: net(x), sde, x0, generator=torch.Generator().manual_seed(6))
    given = edm_loss(lambda x, c, y: net(x), sde, x0, y=labels, generator=torch.Generator().manual_seed(6))
    assert float(given) == float(plain)


def test_evaluations_are_logged_with_every_metric_but_the_step():
    from diffusion.training import TrainConfig, train

    lines = []
    torch.manual_seed(0)
    net = ScoreMLP(2, hidden=8, depth=1)
    x = diffusion.datasets.load("moons", 64, seed=0).x
    train(net, diffusion.VPSDE(), x, TrainConfig(steps=4, batch_size=16, seed=1, warmup=1), progress=False,
          evaluate=lambda step, model: {"step": -1, "held_out": 0.5 + step, "ratio": 2.0}, eval_every=2, log_eval=lines.append)
    assert lines == ["step 2: held_out 2.5, ratio 2", "step 4: held_out 4.5, ratio 2"]

"""sdekit.ensemble: streaming statistics against exact laws, identity under any chunking, the Reducer protocol."""

import dataclasses
import importlib
import random
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

import sdekit
from sdekit import _kll
from sdekit.ensemble import MomentsReducer, QuantileReducer, _absorb

ensemble_module = importlib.import_module("sdekit.ensemble")  # the module (sdekit.ensemble is the function)
OU = sdekit.problems.ornstein_uhlenbeck()  # theta 1, mu 0.5, sigma 0.3, x0 2
GBM = sdekit.problems.gbm()  # a 1.5, b 0.8, x0 1 (Itô)
TIMES = np.array([0.25, 0.5, 1.0])


def euler_ou_law(t, n_steps, theta=1.0, mu=0.5, sigma=0.3, x0=2.0, T=1.0):
    """Mean and variance of the Euler chain X_{k+1} = X_k + theta (mu - X_k) h + sigma dW_k after t/h steps:
    a Gaussian AR(1) chain, mean mu + (x0 - mu) r^k, variance sigma^2 h (1 - r^{2k}) / (1 - r^2), r = 1 - theta h."""
    h = T / n_steps
    k = np.rint(t / h)
    r = 1.0 - theta * h
    return mu + (x0 - mu) * r**k, sigma**2 * h * (1 - r ** (2 * k)) / (1 - r * r)


def euler_gbm_moments(t, n_steps, a=1.5, b=0.8, x0=1.0, T=1.0):
    """Mean and variance of the Euler chain X_{k+1} = X_k (1 + a h + b dW_k): E = x0 (1 + a h)^k and
    E X^2 = x0^2 ((1 + a h)^2 + b^2 h)^k (the factors are independent)."""
    h = T / n_steps
    k = np.rint(t / h)
    mean = x0 * (1 + a * h) ** k
    return mean, x0**2 * ((1 + a * h) ** 2 + b * b * h) ** k - mean**2


def run(problem=OU, **kw):
    args = dict(method="euler", n_steps=16, n_paths=3000, seed=7, save_at=TIMES, leaf_paths=256)
    args.update(kw)
    return sdekit.ensemble(problem.problem, problem.x0, problem.t_span, **args)


# ------------------------------------------------------------------------------------------------ against exact laws


@pytest.mark.parametrize("case", ["ou_euler_chain", "ou_sra1_exact", "gbm_euler_chain"])
def test_streaming_moments_within_4_standard_errors(case):
    """Mean and variance at three times within 4 s.e. of their exact values. Euler's chains have closed-form laws
    (so no discretisation bias enters); sra1 on OU has a mean bias of about theta^3 h^2 T (x0 - mu) / 6 = 6e-5 at
    h = 1/64, a twentieth of the standard error of 2^15 paths (1.1e-3), so the continuous OU law is the target."""
    n_steps, n_paths = 64, 1 << 15
    if case == "gbm_euler_chain":
        r = run(GBM, method="euler", n_steps=n_steps, n_paths=n_paths, leaf_paths=4096)
        mean, var = euler_gbm_moments(TIMES, n_steps)
    elif case == "ou_euler_chain":
        r = run(OU, method="euler", n_steps=n_steps, n_paths=n_paths, leaf_paths=4096)
        mean, var = euler_ou_law(TIMES, n_steps)
    else:
        r = run(OU, method="sra1", n_steps=n_steps, n_paths=n_paths, leaf_paths=4096)
        mean = OU.mean(TIMES, 2.0)
        var = OU.second_moment(TIMES, 2.0) - mean**2
    assert r.n_failed == 0 and r.mean.shape == r.var.shape == (3, 1)
    assert np.all(np.abs(r.mean[:, 0] - mean) < 4 * r.mean_se[:, 0]), (r.mean[:, 0], mean, r.mean_se[:, 0])
    assert np.all(np.abs(r.var[:, 0] - var) < 4 * r.var_se[:, 0]), (r.var[:, 0], var, r.var_se[:, 0])


def test_quantiles_within_sketch_rank_error():
    """KLL quantiles of OU (Euler chain: exactly Gaussian) and GBM (Milstein, 256 steps: its pathwise error,
    about 1e-3 relative, moves ranks by ~0.1 %) at three times: the exact CDF at the estimate is within the stated
    rank error of the sketch plus 4 binomial standard errors of the empirical quantile, sqrt(q (1 - q) / n)."""
    n_paths, levels = 1 << 15, np.array([0.05, 0.25, 0.5, 0.75, 0.95])
    tolerance = _kll.RANK_ERROR_99[200] + 4 * np.sqrt(levels * (1 - levels) / n_paths)
    r = run(OU, method="euler", n_steps=64, n_paths=n_paths, statistics=("quantiles",), quantiles=levels, leaf_paths=4096)
    mean, var = euler_ou_law(TIMES, 64)
    assert r.quantiles.shape == (5, 3, 1) and r.mean is None
    ranks = stats.norm.cdf(r.quantiles[:, :, 0], loc=mean, scale=np.sqrt(var))
    assert np.all(np.abs(ranks - levels[:, None]) < tolerance[:, None]), ranks
    g = run(GBM, method="milstein", n_steps=256, n_paths=n_paths, statistics=("quantiles",), quantiles=levels,
            leaf_paths=4096)
    log_mean, log_sd = (1.5 - 0.5 * 0.8**2) * TIMES, 0.8 * np.sqrt(TIMES)
    ranks = stats.norm.cdf((np.log(g.quantiles[:, :, 0]) - log_mean) / log_sd)
    assert np.all(np.abs(ranks - levels[:, None]) < tolerance[:, None]), ranks


def test_histogram_chi_square_against_exact_density():
    """Counts of the OU Euler chain (exactly Gaussian) at t = 0.5 and 1 on 20 bins plus under/overflow: Pearson's
    chi-square against the exact probabilities stays below its 1 - alpha quantile, alpha = 0.001 (21 degrees of
    freedom)."""
    n_paths = 1 << 14
    r = run(OU, method="euler", n_steps=64, n_paths=n_paths, statistics=("histogram",), bins=(0.6, 2.2, 20),
            leaf_paths=4096)
    h = r.histogram
    assert h.counts.shape == (3, 1, 20) and h.edges.shape == (21,)
    assert np.all(h.counts.sum(-1) + h.underflow + h.overflow == n_paths)
    mean, var = euler_ou_law(TIMES, 64)
    for j in (1, 2):
        cdf = stats.norm.cdf(h.edges, loc=mean[j], scale=np.sqrt(var[j]))
        expected = n_paths * np.concatenate([[cdf[0]], np.diff(cdf), [1 - cdf[-1]]])
        observed = np.concatenate([h.underflow[j], h.counts[j, 0], h.overflow[j]])
        keep = expected > 5  # Pearson's rule: merge the near-empty tails into their neighbours
        observed = np.concatenate([[observed[: np.argmax(keep)].sum()], observed[keep], [0]])
        chi2 = ((observed[1:-1] - expected[keep]) ** 2 / expected[keep]).sum()
        assert chi2 < stats.chi2.ppf(0.999, keep.sum() - 1), (j, chi2)


def test_phi_moments_discounted_payoff():
    """phi(t, x) = exp(-r t) max(x - K, 0) of GBM's Euler chain: phi_mean equals the mean of phi over the full
    solve's paths to round-off (same paths), with phi_mean_se = sqrt(phi_var / n)."""
    def payoff(t, x):
        return np.exp(-0.05 * t) * np.maximum(x[:, 0] - 1.2, 0.0)

    r = run(GBM, statistics=("phi_mean", "phi_var"), phi=payoff)
    sol = sdekit.solve(GBM.problem, GBM.x0, GBM.t_span, method="euler", n_steps=16, n_paths=3000, seed=7, save_at=TIMES)
    values = np.stack([payoff(t, sol.x[j]) for j, t in enumerate(TIMES)])
    assert r.phi_mean.shape == (3, 1) and r.mean is None
    np.testing.assert_allclose(r.phi_mean[:, 0], values.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(r.phi_var[:, 0], values.var(axis=1, ddof=1), rtol=1e-10)
    np.testing.assert_allclose(r.phi_mean_se, np.sqrt(r.phi_var / 3000), rtol=1e-14)


# ------------------------------------------------------------------------------------------------ reducers


@dataclasses.dataclass(frozen=True)
class BarrierHit:
    """Fraction of paths whose first component reaches ``barrier`` at one of the save times (discrete monitoring)."""

    barrier: float

    def init(self, t, dim):
        return 0, 0

    def update(self, state, t, x_chunk, failed_mask):
        hit = (x_chunk[:, ~failed_mask, 0] >= self.barrier).any(axis=0)
        return state[0] + int(hit.sum()), state[1] + hit.size

    def merge(self, a, b):
        return a[0] + b[0], a[1] + b[1]

    def finalize(self, state):
        return state[0] / state[1]


def test_user_reducer_equals_full_paths_computation():
    assert isinstance(BarrierHit(3.0), sdekit.Reducer)
    times = np.linspace(1 / 16, 1.0, 16)
    r = run(GBM, save_at=times, reducers={"hit": BarrierHit(3.0)}, statistics=())
    sol = sdekit.solve(GBM.problem, GBM.x0, GBM.t_span, method="euler", n_steps=16, n_paths=3000, seed=7, save_at=times)
    expected = (sol.x[:, :, 0] >= 3.0).any(axis=0).mean()
    assert 0.05 < expected < 0.95 and r.extra["hit"] == expected


def test_merged_moments_match_numpy_two_pass():
    """Chan/Pébay merges of 37 uneven leaves of data with a large offset (1e6, unit spread) against numpy's two-pass
    moments: they agree to the data's own resolution, 1e6 * eps = 2e-10 of the spread (each sum to a few of those)."""
    rng = np.random.default_rng(3)
    x = 1e6 + rng.standard_normal((2, 5000, 3)) @ np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.5], [0.0, 0.0, 2.0]])
    reducer = MomentsReducer(with_cross=True)
    cuts = np.sort(rng.choice(np.arange(1, 5000), 36, replace=False))
    state = reducer.init(np.zeros(2), 3)
    for part in np.split(np.arange(5000), cuts):
        state = reducer.merge(state, reducer.update(reducer.init(np.zeros(2), 3), None, x[:, part], np.zeros(part.size, bool)))
    out = reducer.finalize(state)
    dev = x - x.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(out["mean"], x.mean(axis=1), rtol=1e-14)
    resolution = 1e6 * np.finfo(float).eps
    np.testing.assert_allclose(out["var"], x.var(axis=1, ddof=1), rtol=10 * resolution)
    np.testing.assert_allclose(out["cov"], np.einsum("tni,tnj->tij", dev, dev) / 4999, atol=10 * resolution)
    assert np.all(np.abs(state.m3 - (dev**3).sum(axis=1)) <= 10 * resolution * (np.abs(dev) ** 3).sum(axis=1))
    np.testing.assert_allclose(state.m4, (dev**4).sum(axis=1), rtol=10 * resolution)


# ------------------------------------------------------------------------------------------------ determinism


def _all_fields(problem):
    return dict(problem=problem, statistics=("mean", "var", "cov", "min", "max", "quantiles", "histogram", "phi_mean",
                                             "phi_var"),
                bins=(-1.0, 3.0, 16), phi=lambda t, x: x.sum(axis=1) ** 2, reducers={"hit": BarrierHit(1.2)},
                n_paths=97 * 64 + 13, leaf_paths=64, sketch_k=32)


def _assert_identical(a, b):
    for f in dataclasses.fields(a):
        if f.name in ("wall_seconds", "chunk_paths", "n_chunks"):
            continue
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if isinstance(va, tuple):  # the Histogram record
            assert all(np.array_equal(u, v) for u, v in zip(va, vb, strict=True)), f.name
        elif isinstance(va, np.ndarray):
            assert np.array_equal(va, vb), f.name
        else:
            assert va == vb, f.name


def test_identical_for_any_chunking_and_finish_order(monkeypatch):
    """One chunk, 98 chunks of one leaf, 33 chunks of three leaves (not aligned) and those chunks finishing in a
    shuffled order give bit-identical statistics; n_paths is not a multiple of the leaf."""
    problem = sdekit.problems.ou_matrix()
    one = run(chunk_paths=10**6, **_all_fields(problem))
    many = run(chunk_paths=64, **_all_fields(problem))
    threes = run(chunk_paths=150, **_all_fields(problem))
    assert (one.n_chunks, many.n_chunks, threes.n_chunks, threes.chunk_paths) == (1, 98, 33, 192)
    real = ensemble_module._chunk_results

    def shuffled(chunks, client, progress, retries):
        results = list(real(chunks, client, progress, retries))
        random.Random(5).shuffle(results)
        yield from results

    monkeypatch.setattr(ensemble_module, "_chunk_results", shuffled)
    mixed = run(chunk_paths=150, **_all_fields(problem))
    assert one.cov.shape == (3, 2, 2) and one.quantiles.shape == (5, 3, 2) and one.histogram.counts.shape == (3, 2, 16)
    for other in (many, threes, mixed):
        _assert_identical(one, other)


@pytest.mark.parametrize("backend", ["numba", "numpy", "torch"])
def test_chunk_rows_equal_full_solve_rows(backend):
    """A solve driven by path.paths_slice(a, b) gives the rows a:b of the full solve, bit for bit (sra1 reads the
    increments and the Lévy areas)."""
    path = sdekit.BrownianPath.for_steps(11, (0.0, 1.0), 8, n_paths=50, levy_area=True)
    full = sdekit.solve(OU.problem, OU.x0, (0.0, 1.0), method="sra1", n_steps=8, brownian=path, backend=backend)
    part = sdekit.solve(OU.problem, OU.x0, (0.0, 1.0), method="sra1", n_steps=8, brownian=path.paths_slice(17, 41),
                        backend=backend)
    assert np.array_equal(np.asarray(full.x)[:, 17:41], np.asarray(part.x))


def test_paths_slice_reads_the_same_numbers():
    path = sdekit.BrownianPath.for_steps(2, (0.0, 2.0), 6, n_paths=40, noise_dim=2, levy_area=True)
    part = path.paths_slice(5, 30).paths_slice(3, 20)  # paths 8..24
    dw, area = path.increments(12)
    pdw, parea = part.increments(12)
    assert part.first_path == 8 and part.n_paths == 17
    assert np.array_equal(dw[:, 8:25], pdw) and np.array_equal(area[:, 8:25], parea)
    assert np.array_equal(path.W([0.3, 1.7])[:, 8:25], part.W([0.3, 1.7]))
    tdw, tarea = path.increments(12, generator="torch", device="cpu")
    pt, _ = part.increments(12, generator="torch", device="cpu")
    assert np.array_equal(tdw.numpy()[:, 8:25], pt.numpy())
    with pytest.raises(ValueError, match="paths_slice needs 0 <= start < stop"):
        path.paths_slice(10, 41)


def test_ensemble_equals_solve_of_the_same_paths_for_every_scheme():
    """Each scheme through ensemble() reads the paths a plain solve with the same seed reads: the streamed mean
    equals the mean of the solve's states to round-off (ODEs: one x0 row per path)."""
    ode = sdekit.ODE(lambda t, x, p: -p[0] * x + np.sin(t), params=(1.3,))
    x0_rows = np.linspace(-1.0, 1.0, 300)[:, None]
    strat = sdekit.problems.gbm(calculus="stratonovich")
    cases = [(GBM, m) for m in ("euler", "milstein", "sriw1")] + [(OU, m) for m in ("sra1", "sra3")] + [
        (strat, "euler_heun")]
    for problem, method in cases:
        kw = dict(method=method, n_steps=8, save_at=TIMES, backend="numpy")
        r = sdekit.ensemble(problem.problem, problem.x0, problem.t_span, n_paths=300, seed=4, leaf_paths=64,
                            chunk_paths=128, **kw)
        sol = sdekit.solve(problem.problem, problem.x0, problem.t_span, n_paths=300, seed=4, **kw)
        np.testing.assert_allclose(r.mean[:, 0], sol.x[:, :, 0].mean(axis=1), rtol=1e-13, err_msg=method)
    semilinear = sdekit.SemilinearODE(lambda t, p: -p[0] * t, lambda t, p: p[0] * t, lambda t, x, p: -x, params=(2.0,))
    for problem, method, kw in ((ode, "rk4", dict(n_steps=8)), (ode, "dopri5", dict(rtol=1e-8)),
                                (semilinear, "exp_ab2", dict(n_steps=8))):
        r = sdekit.ensemble(problem, x0_rows, (0.0, 1.0), method=method, n_paths=300, save_at=TIMES, leaf_paths=64,
                            chunk_paths=100, backend="numpy", **kw)
        sol = sdekit.solve(problem, x0_rows, (0.0, 1.0), method=method, save_at=TIMES, backend="numpy", **kw)
        assert r.seed is None
        np.testing.assert_allclose(r.mean[:, 0], sol.x[:, :, 0].mean(axis=1), rtol=1e-13, atol=1e-15, err_msg=method)
        np.testing.assert_allclose(r.var[:, 0], sol.x[:, :, 0].var(axis=1, ddof=1), rtol=1e-11, err_msg=method)


def test_torch_backend_matches_numba():
    a = run(OU, method="sra1", backend="torch", chunk_paths=1000)
    b = run(OU, method="sra1")
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-13)
    np.testing.assert_allclose(a.var, b.var, rtol=1e-10)
    assert a.backend == "torch"


# ------------------------------------------------------------------------------------------------ failures, errors


def test_failed_paths_are_counted_and_left_out():
    """dX = X^3 dt + 2 dW from 0 blows up on the paths that wander past |X| ~ 2.5: they are counted with their reason
    and the statistics are those of the other paths of the same solve."""
    blowup = sdekit.SDE(lambda t, x, p: x**3, lambda t, x, p: 2.0, noise="additive")
    kw = dict(method="euler", n_steps=32, save_at=[0.25, 0.5], seed=3)
    r = sdekit.ensemble(blowup, 0.0, (0.0, 0.5), n_paths=2000, leaf_paths=256, statistics=("mean", "max"), **kw)
    sol = sdekit.solve(blowup, 0.0, (0.0, 0.5), n_paths=2000, **kw)
    n_failed = int(sol.failed.sum())
    assert 0 < n_failed < 2000 and r.n_failed == n_failed and r.failures == {"non-finite state": n_failed}
    kept = sol.x[:, ~sol.failed, 0]
    np.testing.assert_allclose(r.mean[:, 0], kept.mean(axis=1), rtol=1e-12)
    assert np.array_equal(r.max[:, 0], kept.max(axis=1)) and np.all(np.isfinite(r.max))


class NoMerge:
    def init(self, t, dim):
        return 0

    def update(self, state, t, x, failed):
        return state

    def finalize(self, state):
        return state


@pytest.mark.parametrize("kwargs, message", [
    (dict(statistics=("mean", "median")), "unknown statistic 'median'"),
    (dict(chunk_paths=0), "`chunk_paths` must be a positive integer"),
    (dict(save_at=None), "`save_at` is required"),
    (dict(save_at="later"), "`save_at`"),
    (dict(statistics=("quantiles",), quantiles=(0.5, 1.0)), "strictly between 0 and 1"),
    (dict(statistics=("histogram",)), "needs `bins`"),
    (dict(statistics=("histogram",), bins=[0.0, 1.0, 1.0]), "strictly increasing"),
    (dict(statistics=("histogram",), bins=(1.0, 0.0, 5)), "finite lo < hi"),
    (dict(reducers={"r": NoMerge()}), "reducer 'r' lacks the method\\(s\\) merge"),
    (dict(statistics=("phi_mean",)), "need `phi`"),
    (dict(leaf_paths=100), "power of two"),
    (dict(n_paths=0), "`n_paths` must be a positive integer"),
])
def test_bad_arguments_get_one_clear_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        run(**kwargs)
    assert "\n" not in str(info.value)


def test_no_dask_import_without_client():
    code = ("import sys, sdekit; p = sdekit.problems.ornstein_uhlenbeck(); "
            "sdekit.ensemble(p.problem, p.x0, p.t_span, method='euler', n_steps=4, n_paths=100, seed=1, save_at=[1.0], "
            "backend='numpy'); print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# ------------------------------------------------------------------------------------------------ the sketch


def test_kll_rank_error_within_stated_bound():
    """The sketch's rank error on 200 independent columns of 2^15 uniform items (leaves of 4096 merged in the
    ensemble's tree): the 99th percentile over columns, at each of 19 levels, is below RANK_ERROR_99[200]; and
    the sketch is a pure function of its leaves (the same merges twice give the same numbers)."""
    n, columns, leaf = 1 << 15, 200, 4096
    levels = np.linspace(0.05, 0.95, 19)
    data = np.random.default_rng(1).random((n, columns))
    reducer = QuantileReducer(tuple(levels), 200, 9)
    reducers = {"q": reducer}
    finals = []
    for _ in range(2):
        nodes = {}
        for i in range(n // leaf):
            x = data[None, i * leaf : (i + 1) * leaf]
            _absorb(nodes, 0, i, {"q": reducer.update(reducer.init(np.zeros(1), columns), None, x, np.zeros(leaf, bool))},
                    reducers)
        (root,) = nodes.values()
        finals.append(reducer.finalize(root["q"])["quantiles"][:, 0])
    assert np.array_equal(finals[0], finals[1])
    ranks = np.stack([np.mean(data <= estimate, axis=0) for estimate in finals[0]])  # (levels, columns)
    error = np.quantile(np.abs(ranks - levels[:, None]), 0.99, axis=1)
    assert np.all(error < _kll.RANK_ERROR_99[200]), error

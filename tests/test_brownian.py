"""Brownian paths: law of increments and Lévy area, bridge, refinement, determinism."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import stats

import sdekit as sk
from sdekit.brownian import dyadic_level

ALPHA = 1e-3  # KS tests reject at this level; seeds fixed


def test_increments_are_iid_normal_with_variance_h():
    bm = sk.BrownianPath(11, t_span=(0.0, 2.0), n_paths=20000)
    n = 8
    dw = bm.increments(n)[:, :, 0]
    h = 2.0 / n
    z = (dw / np.sqrt(h)).ravel()
    assert stats.kstest(z, "norm").pvalue > ALPHA
    # Independence of neighbouring increments: |corr| within 4 standard errors (1/sqrt(N)).
    r = np.corrcoef(dw[:-1].ravel(), dw[1:].ravel())[0, 1]
    assert abs(r) < 4 / np.sqrt(dw[:-1].size)
    # Independence across paths.
    r2 = np.corrcoef(dw[:, :-1].ravel(), dw[:, 1:].ravel())[0, 1]
    assert abs(r2) < 4 / np.sqrt(dw[:, 1:].size)


def test_levy_area_law_and_independence():
    bm = sk.BrownianPath(12, n_paths=20000, levy_area=True)
    dw, hh = bm.increments(4)
    h = 0.25
    assert stats.kstest((hh / np.sqrt(h / 12)).ravel(), "norm").pvalue > ALPHA
    assert stats.kstest((dw / np.sqrt(h)).ravel(), "norm").pvalue > ALPHA
    r = np.corrcoef(dw.ravel(), hh.ravel())[0, 1]
    assert abs(r) < 4 / np.sqrt(dw.size)


@pytest.mark.parametrize("levy", [False, True])
@pytest.mark.parametrize("base", [1, 3])
def test_refinement_is_an_exact_subsample(levy, base):
    bm = sk.BrownianPath(5, n_paths=7, noise_dim=2, base_steps=base, levy_area=levy)
    coarse, fine = bm.increments(4 * base), bm.increments(8 * base)
    if levy:
        (cw, ch), (fw, fh) = coarse, fine
        np.testing.assert_allclose(cw, fw[0::2] + fw[1::2], atol=1e-14)
        # Space-time Lévy area of a union: H = (H_l + H_r)/2 + (dW_l - dW_r)/4.
        np.testing.assert_allclose(ch, 0.5 * (fh[0::2] + fh[1::2]) + 0.25 * (fw[0::2] - fw[1::2]), atol=1e-14)
    else:
        np.testing.assert_allclose(coarse, fine[0::2] + fine[1::2], atol=1e-14)


def test_bridge_moments_at_a_non_dyadic_time():
    bm = sk.BrownianPath(3, n_paths=40000)
    w = bm.W([0.3, 1.0])
    w3, w1 = w[0, :, 0], w[1, :, 0]
    n = w3.size
    resid = w3 - 0.3 * w1  # bridge: E[W_.3 | W_1] = .3 W_1, Var = .3 * .7
    assert abs(resid.mean()) < 4 * np.sqrt(0.21 / n)
    assert abs(resid.var() - 0.21) < 4 * 0.21 * np.sqrt(2 / n)
    assert abs(np.corrcoef(resid, w1)[0, 1]) < 4 / np.sqrt(n)
    assert abs(w3.var() - 0.3) < 4 * 0.3 * np.sqrt(2 / n)


def test_values_agree_with_the_grid():
    bm = sk.BrownianPath(8, t_span=(0.5, 2.5), n_paths=5, noise_dim=3, base_steps=5, levy_area=True)
    grid = bm.grid(20)
    np.testing.assert_allclose(bm.W(grid), bm.on_grid(20), atol=1e-13)
    np.testing.assert_array_equal(bm.W(0.5), np.zeros((5, 3)))


def test_reverse_reading_is_the_negated_forward_path():
    bm = sk.BrownianPath(4, n_paths=6, base_steps=3, levy_area=True)
    (fw, fh), (rw, rh) = bm.increments(12), bm.increments(12, reverse=True)
    np.testing.assert_array_equal(rw, -fw[::-1])
    np.testing.assert_array_equal(rh, fh[::-1])


def test_batch_split_gives_the_same_numbers():
    bm = sk.BrownianPath(9, n_paths=100, levy_area=True)
    whole = bm.increments(16)
    parts = [bm.increments(16, paths=range(a, b)) for a, b in [(0, 37), (37, 38), (38, 100)]]
    np.testing.assert_array_equal(whole[0], np.concatenate([p[0] for p in parts], axis=1))
    np.testing.assert_array_equal(whole[1], np.concatenate([p[1] for p in parts], axis=1))


def test_path_does_not_depend_on_n_paths():
    a = sk.BrownianPath(9, n_paths=10).increments(8)
    b = sk.BrownianPath(9, n_paths=1000).increments(8)
    np.testing.assert_array_equal(a, b[:, :10])


def test_different_seeds_and_components_differ():
    a = sk.BrownianPath(1, n_paths=3, noise_dim=2).increments(4)
    b = sk.BrownianPath(2, n_paths=3, noise_dim=2).increments(4)
    assert not np.any(a == b)
    assert not np.any(a[..., 0] == a[..., 1])


_SCRIPT = """
import hashlib, sdekit as sk
ou = sk.SDE(lambda t, x, p: p[0] * (p[1] - x), lambda t, x, p: p[2], noise="additive", params=(1.0, 0.5, 0.3))
s = sk.solve(ou, 2.0, (0, 1), method="sra1", n_steps=64, n_paths=5000, seed=3, save_at=[0.5, 1.0])
print(hashlib.sha256(s.x.tobytes()).hexdigest())
"""


def test_same_result_for_any_thread_count():
    out = []
    for threads in ("1", "2"):
        env = dict(os.environ, NUMBA_NUM_THREADS=threads)
        r = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, check=True)
        out.append(r.stdout.strip().splitlines()[-1])
    assert out[0] == out[1]


def test_dyadic_level():
    assert dyadic_level(1000, 125) == 3
    assert dyadic_level(1000, 1) is None
    assert dyadic_level(5, 5) == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(seed=-1), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(seed=1, t_span=(1.0, 0.0)), "t0 < t1"),
        (dict(seed=1, n_paths=0), "n_paths"),
        (dict(seed=1, noise_dim=0), "noise_dim"),
        (dict(seed=1, base_steps=2.0), "base_steps"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sk.BrownianPath(**kwargs)


def test_bad_queries():
    bm = sk.BrownianPath(1, n_paths=4, base_steps=3)
    with pytest.raises(ValueError, match="dyadic refinement"):
        bm.increments(8)
    with pytest.raises(ValueError, match="t_span"):
        bm.W(1.5)
    with pytest.raises(ValueError, match="contiguous range"):
        bm.increments(3, paths=range(0, 10))


@pytest.mark.parametrize("levy", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("block_steps", [None, 1, 5, 24])
@pytest.mark.parametrize("paths", [None, range(3, 11), slice(0, 1)])
def test_blocks_concatenate_to_the_increments(levy, reverse, block_steps, paths):
    bm = sk.BrownianPath(21, t_span=(-1.0, 2.0), n_paths=11, noise_dim=2, base_steps=3, levy_area=levy)
    whole = bm.increments(24, paths=paths, reverse=reverse)
    dw, area = whole if levy else (whole, None)
    blocks = list(bm.blocks(24, paths=paths, reverse=reverse, block_steps=block_steps))
    assert [b.first_step for b in blocks] == list(np.cumsum([0] + [b.dw.shape[0] for b in blocks[:-1]]))
    assert all(b.dw.shape[0] <= (block_steps or 24) for b in blocks)
    np.testing.assert_array_equal(np.concatenate([b.dw for b in blocks]), dw)
    if levy:
        np.testing.assert_array_equal(np.concatenate([b.levy_area for b in blocks]), area)
    else:
        assert all(b.levy_area is None for b in blocks)


def test_reused_block_buffers_hold_the_same_numbers():
    """Reused buffers are refilled in place for every full block (one array), and the short last block is its own."""
    bm = sk.BrownianPath(22, n_paths=6, base_steps=5, levy_area=True)
    dw, area = bm.increments(40)
    buffers = []
    for b in bm.blocks(40, block_steps=6, reuse_buffers=True):
        np.testing.assert_array_equal(b.dw, dw[b.first_step : b.first_step + b.dw.shape[0]])
        np.testing.assert_array_equal(b.levy_area, area[b.first_step : b.first_step + b.dw.shape[0]])
        buffers.append(b.dw)
    assert [x.shape[0] for x in buffers] == [6] * 6 + [4]
    assert all(x is buffers[0] for x in buffers[:6]) and buffers[6] is not buffers[0]


@pytest.mark.parametrize("generator", ["numba", "torch"])
@pytest.mark.parametrize("levy", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_torch_cpu_blocks_equal_numpy_blocks(generator, levy, reverse):
    bm = sk.BrownianPath(23, t_span=(0.0, 3.0), n_paths=9, noise_dim=2, base_steps=3, levy_area=levy)
    ref = list(bm.blocks(96, paths=range(2, 9), reverse=reverse))
    got = list(bm.blocks(96, paths=range(2, 9), reverse=reverse, block_steps=8, device="cpu", generator=generator))
    assert all(isinstance(b.dw, torch.Tensor) and b.dw.dtype == torch.float64 for b in got)
    for name in ("dw", "levy_area") if levy else ("dw",):
        expected = np.concatenate([getattr(b, name) for b in ref])
        np.testing.assert_allclose(torch.cat([getattr(b, name) for b in got]).numpy(), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", [None, torch.float32])
def test_tensor_blocks_default_to_cpu_float64_and_take_a_dtype(dtype):
    """``device`` or ``dtype`` alone makes torch blocks: CPU by default, float64 by default; float32 blocks are the
    float64 numbers rounded."""
    bm = sk.BrownianPath(24, n_paths=5, noise_dim=2, base_steps=4)
    ref = np.concatenate([b.dw for b in bm.blocks(16)])
    got = list(bm.blocks(16, dtype=dtype) if dtype is not None else bm.blocks(16, device="cpu"))
    expected_dtype = torch.float64 if dtype is None else dtype
    assert all(b.dw.device.type == "cpu" and b.dw.dtype == expected_dtype for b in got)
    host = np.float32 if dtype is torch.float32 else np.float64
    np.testing.assert_array_equal(torch.cat([b.dw for b in got]).numpy(), ref.astype(host))


@pytest.mark.parametrize("n_steps", [0, -4, 2.5, "8"])
def test_grids_that_are_not_positive_integers_are_refused(n_steps):
    with pytest.raises(ValueError, match="`n_steps` must be a positive integer"):
        sk.BrownianPath(1, base_steps=4).level(n_steps)


def test_bad_block_steps():
    with pytest.raises(ValueError, match="block_steps"):
        sk.BrownianPath(1).blocks(4, block_steps=0)


def test_paths_slice_bounds_and_a_one_step_grid():
    """``paths_slice`` takes exactly ``0 <= start < stop <= n_paths``; a grid of one step is a grid."""
    bm = sk.BrownianPath(3, n_paths=4, base_steps=1)
    for start, stop in ((-1, 2), (2, 2), (0, 5)):
        with pytest.raises(ValueError, match="paths_slice needs"):
            bm.paths_slice(start, stop)
    np.testing.assert_array_equal(bm.paths_slice(0, 4).increments(1)[0], bm.increments(1)[0])
    assert bm.level(1) == 0 and bm.level(8) == 3


def test_a_brownian_path_is_an_immutable_value():
    """A path is its seed and settings: frozen (no attribute can change under a running solve) and hashable."""
    import dataclasses

    bm = sk.BrownianPath(3, n_paths=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        bm.n_paths = 5
    assert hash(bm) == hash(sk.BrownianPath(3, n_paths=4))


def test_a_negative_first_path_is_refused():
    with pytest.raises(ValueError, match="first_path"):
        sk.BrownianPath(3, n_paths=4, first_path=-1)


@pytest.mark.parametrize("tensors", [False, True])
def test_more_paths_than_a_block_holds_give_blocks_of_one_step(tensors):
    """Paths whose increments alone exceed the block budget (2^17 numbers for NumPy, 2^22 for torch) are read one step
    per block, the same numbers as the whole grid at once."""
    n = (1 << 22) + 3 if tensors else (1 << 17) + 3
    bm = sk.BrownianPath(5, n_paths=n, base_steps=1)
    blocks = list(bm.blocks(2, device="cpu") if tensors else bm.blocks(2))
    assert [b.dw.shape[0] for b in blocks] == [1, 1]
    ref = bm.increments(2, paths=range(n - 3, n))  # (steps, paths, noise_dim): no Lévy area
    got = np.concatenate([np.asarray(b.dw[:, -3:]) for b in blocks])
    np.testing.assert_array_equal(got, ref)


def test_the_ziggurat_tail_is_the_normal_tail_and_is_drawn_at_its_rate():
    """The ziggurat's base layer ends at r = 3.654...: its tail mass P(|Z| > r) is erfc(r / sqrt 2) (SciPy's normal
    survival function), and the generator's increments on a unit cell exceed r in that share of 10^6 draws, within
    4 binomial standard errors (Marsaglia & Tsang 2000)."""
    from sdekit import _rng

    assert _rng.ZIG_TAIL == pytest.approx(2.0 * stats.norm.sf(_rng.ZIG_R), rel=1e-12)
    n = 1_000_000
    z = sk.BrownianPath(3, (0.0, 1.0), n_paths=n, noise_dim=1, base_steps=1).increments(1)[0, :, 0]
    share = float(np.mean(np.abs(z) > _rng.ZIG_R))
    assert abs(share - _rng.ZIG_TAIL) < 4.0 * math.sqrt(_rng.ZIG_TAIL * (1 - _rng.ZIG_TAIL) / n), share

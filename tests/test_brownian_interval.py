"""Brownian increments and space-time Lévy areas on any interval: law, additivity, the grid, cursor/torch parity."""

import numpy as np
import pytest
import torch
from scipy import stats

import sdekit as sk
from sdekit import _bridge, _cursor, _rng
from sdekit._torch_bridge import interval_torch

ALPHA = 1e-3  # KS tests reject at this level; seeds fixed


def _k(dw, area, h):
    """``integral_a^b (W_u - W_a) du`` of an interval of length ``h`` from its ``(dW, H)``."""
    return h * (area + 0.5 * dw)


def _random_intervals(rng, n, t1):
    s, t = np.sort(rng.uniform(0.0, t1, (2, n)), axis=0)
    return s, t


@pytest.mark.parametrize("levy", [False, True])
def test_law_on_random_non_dyadic_intervals(levy):
    bp = sk.BrownianPath(21, (0.0, 3.0), n_paths=6000, base_steps=3, levy_area=levy)
    s, t = _random_intervals(np.random.default_rng(0), bp.n_paths, 3.0)  # many span several cells
    out = bp.interval(s, t)
    dw, area = out if levy else (out, None)
    h = (t - s)[:, None]
    assert stats.kstest((dw / np.sqrt(h)).ravel(), "norm").pvalue > ALPHA
    if levy:
        assert stats.kstest((area / np.sqrt(h / 12)).ravel(), "norm").pvalue > ALPHA
        assert abs(np.corrcoef(dw.ravel(), area.ravel())[0, 1]) < 4 / np.sqrt(dw.size)


def test_leaf_split_at_one_half_is_the_midpoint_split():
    rng = np.random.default_rng(1)
    dw, area, xi1, xi2 = rng.normal(size=(4, 50))
    length = 0.37
    w, k = _cursor.leaf_split.py_func(dw, area, 0.5, xi1, xi2, length, True)
    left, _, left_area, _ = _bridge.split_node.py_func(dw, area, xi1, xi2, np.sqrt(length), np.sqrt(length / 12), True)
    np.testing.assert_allclose(w, left, atol=1e-14)
    np.testing.assert_allclose(k, _k(left, left_area, length / 2), atol=1e-14)
    w, _ = _cursor.leaf_split.py_func(dw, area, 0.5, xi1, xi2, length, False)
    left, *_ = _bridge.split_node.py_func(dw, area, xi1, xi2, np.sqrt(length), 0.0, False)
    np.testing.assert_allclose(w, left, atol=1e-14)


@pytest.mark.parametrize("theta", [0.013, 0.3, 0.77])
def test_leaf_split_has_the_joint_law_of_brownian_motion(theta):
    # (W_a, K_a, S, K) with a = theta h is Gaussian with Cov(W_u, W_v) = min(u, v):
    # Var W_a = a, Cov(W_a, K_a) = a^2/2, Var K_a = a^3/3, Cov(W_a, S) = a, Cov(W_a, K) = a h - a^2/2,
    # Cov(K_a, S) = a^2/2, Cov(K_a, K) = a^2 h/2 - a^3/6, Var S = h, Cov(S, K) = h^2/2, Var K = h^3/3.
    n, h = 400_000, 2.0
    a = theta * h
    rng = np.random.default_rng(2)
    dw, area = np.sqrt(h) * rng.normal(size=n), np.sqrt(h / 12) * rng.normal(size=n)
    w, k = _cursor.leaf_split.py_func(dw, area, theta, rng.normal(size=n), rng.normal(size=n), h, True)
    sample = np.cov(np.stack([w, k, dw, _k(dw, area, h)]))
    exact = np.array([
        [a, a**2 / 2, a, a * h - a**2 / 2],
        [a**2 / 2, a**3 / 3, a**2 / 2, a**2 * h / 2 - a**3 / 6],
        [a, a**2 / 2, h, h**2 / 2],
        [a * h - a**2 / 2, a**2 * h / 2 - a**3 / 6, h**2 / 2, h**3 / 3],
    ])
    standard_error = np.sqrt((np.outer(np.diag(exact), np.diag(exact)) + exact**2) / n)
    assert np.all(np.abs(sample - exact) < 5 * standard_error)
    # Without Lévy area: the Brownian bridge, Var(W_a | S) = a (h - a) / h.
    w, _ = _cursor.leaf_split.py_func(dw, area, theta, rng.normal(size=n), 0.0, h, False)
    resid = w - theta * dw
    assert abs(resid.var() - a * (h - a) / h) < 5 * a * (h - a) / h * np.sqrt(2 / n)
    assert abs(np.corrcoef(resid, dw)[0, 1]) < 5 / np.sqrt(n)


def test_non_dyadic_splits_of_leaves_have_the_law_of_the_pieces():
    # Times deep inside 2**-48 leaves: [0, s] then [s, cell] of one cell, for s at fractions of a leaf.
    bp = sk.BrownianPath(3, (0.0, 1.0), n_paths=6000, levy_area=True)
    leaf = 2.0**-48
    s = np.full(bp.n_paths, 0.25 + 0.3 * leaf)  # the leaf split draws W and K at fraction 0.3 of its leaf
    dw1, area1 = bp.interval(0.0, s)
    dw2, area2 = bp.interval(s, 1.0)
    for z in (dw1 / np.sqrt(s[:, None]), area1 / np.sqrt(s[:, None] / 12), dw2 / np.sqrt(1 - s[:, None]),
              area2 / np.sqrt((1 - s[:, None]) / 12)):
        assert stats.kstest(z.ravel(), "norm").pvalue > ALPHA
    assert abs(np.corrcoef(dw1.ravel(), dw2.ravel())[0, 1]) < 4 / np.sqrt(bp.n_paths)


def test_additivity_over_any_split_point():
    bp = sk.BrownianPath(5, (1.0, 4.0), n_paths=300, noise_dim=2, base_steps=5, levy_area=True)
    rng = np.random.default_rng(3)
    s, u, t = np.sort(rng.uniform(1.0, 4.0, (3, bp.n_paths)), axis=0)
    (dw1, a1), (dw2, a2), (dw, a) = bp.interval(s, u), bp.interval(u, t), bp.interval(s, t)
    h1, h2 = (u - s)[:, None], (t - u)[:, None]
    np.testing.assert_allclose(dw1 + dw2, dw, atol=1e-13)
    np.testing.assert_allclose(_k(dw1, a1, h1) + _k(dw2, a2, h2) + h2 * dw1, _k(dw, a, h1 + h2), atol=1e-13)
    for i in range(0, bp.n_paths, 60):  # W(t) - W(s) of a path is its interval too
        one = range(i, i + 1)
        np.testing.assert_allclose(bp.W(t[i], paths=one) - bp.W(s[i], paths=one), dw[i : i + 1], atol=1e-13)


@pytest.mark.parametrize("levy", [False, True])
def test_dyadic_grid_intervals_are_the_increments(levy):
    bp = sk.BrownianPath(9, (0.5, 2.0), n_paths=7, noise_dim=2, base_steps=3, levy_area=levy)
    n = 24
    grid = bp.grid(n)
    steps = bp.increments(n)
    for k in range(n):
        forward, backward = bp.interval(grid[k], grid[k + 1]), bp.interval(grid[k + 1], grid[k])
        if levy:
            np.testing.assert_allclose(forward[0], steps[0][k], atol=1e-14)
            np.testing.assert_allclose(forward[1], steps[1][k], atol=1e-13)
            np.testing.assert_allclose(backward[0], -steps[0][k], atol=1e-14)
            np.testing.assert_allclose(backward[1], steps[1][k], atol=1e-13)
        else:
            np.testing.assert_allclose(forward, steps[k], atol=1e-14)
            np.testing.assert_allclose(backward, -steps[k], atol=1e-14)
    # A coarse step across cells is the union of the fine ones.
    dw = steps[0] if levy else steps
    whole = bp.interval(grid[2], grid[19])
    np.testing.assert_allclose(whole[0] if levy else whole, dw[2:19].sum(axis=0), atol=1e-13)
    if levy:
        h = grid[1] - grid[0]
        k_sum, dw_sum = np.zeros_like(dw[0]), np.zeros_like(dw[0])
        for j in range(2, 19):
            k_sum, dw_sum = k_sum + _k(dw[j], steps[1][j], h) + h * dw_sum, dw_sum + dw[j]
        np.testing.assert_allclose(_k(whole[0], whole[1], 17 * h), k_sum, atol=1e-13)
    np.testing.assert_allclose(bp.W(grid), bp.on_grid(n), atol=1e-13)


def test_cursor_walk_matches_interval_torch_and_w():
    bp = sk.BrownianPath(11, (0.0, 2.0), n_paths=2, noise_dim=3, base_steps=2, levy_area=True)
    rng = np.random.default_rng(4)
    dw, area = np.empty(3), np.empty(3)
    n_cells, cell = bp.base_steps, bp.cell_length
    for p in range(bp.n_paths):
        cur = _cursor.new_cursor(_rng.lane_keys(bp._seed_key, p, 1, 3), n_cells, cell, True)
        position = 0.0
        starts, ends, cursor_dw, cursor_area = [], [], [], []
        for r in range(70):
            kind = r % 5
            if kind == 0:  # anywhere, non-dyadic
                target = rng.uniform(0, n_cells)
            elif kind == 1:  # an adaptive step ahead, snapped to a dyadic grid
                target = min(n_cells, np.floor((position + rng.uniform(0.5, 1.5) * 2.0**-9) * 2**12) / 2**12)
            elif kind == 2:  # a retry between the current point and a rejected one, or just behind it
                target = min(n_cells, max(0.0, position + rng.uniform(-1.0, 1.0) * 2.0**-11))
            elif kind == 3:  # cell ends
                target = float(rng.integers(0, n_cells + 1))
            else:  # inside the current leaf
                target = min(n_cells, position + rng.uniform(0, 1) * 2.0**-49)
            _cursor.cursor_query(cur, target, dw, area)
            starts.append(position)
            ends.append(target)
            cursor_dw.append(dw.copy())
            cursor_area.append(area.copy())
            u = rng.uniform()
            if u < 0.6:
                _cursor.cursor_move(cur, target)
                position = target
            elif u < 0.7:  # a move that its query did not precede
                position = rng.uniform(0, n_cells)
                _cursor.cursor_move(cur, position)
        starts, ends = np.array(starts), np.array(ends)
        # The path's p-th row, read as a path of that many queries (one per "path") through BrownianPath and torch.
        keys = _rng.lane_keys(bp._seed_key, p, 1, 3)
        many = torch.as_tensor(np.tile(keys, len(starts)).view(np.int64))
        t_dw, t_area = interval_torch(many, 3, n_cells, cell, True, torch.as_tensor(starts), torch.as_tensor(ends))
        ref_dw, ref_area = np.empty((len(starts), 3)), np.empty((len(starts), 3))
        for q in range(len(starts)):
            fresh = _cursor.new_cursor(keys, n_cells, cell, True)
            _cursor.cursor_start(fresh, starts[q])
            _cursor.cursor_query(fresh, ends[q], ref_dw[q], ref_area[q])
        same_leaf = np.floor(starts * 2**48) == np.floor(ends * 2**48)  # non-dyadic times of one leaf: each drawn alone
        np.testing.assert_allclose(np.array(cursor_dw), ref_dw, atol=1e-13)
        np.testing.assert_allclose(t_dw.numpy(), ref_dw, atol=1e-13)
        np.testing.assert_allclose(np.array(cursor_area)[~same_leaf], ref_area[~same_leaf], atol=1e-11)
        np.testing.assert_allclose(t_area.numpy()[~same_leaf], ref_area[~same_leaf], atol=1e-11)
        public = bp.interval(starts[0] * cell, ends[0] * cell, paths=range(p, p + 1))
        np.testing.assert_allclose(public[0][0], ref_dw[0], atol=1e-13)
        assert cell == 1.0  # times in cell units are the times
        one = range(p, p + 1)
        exact = (bp._in_cells(starts, "s") == starts) & (bp._in_cells(ends, "t") == ends)  # not snapped to a grid point
        assert exact.mean() > 0.5
        w_dw = bp.W(ends, paths=one)[:, 0] - bp.W(starts, paths=one)[:, 0]
        np.testing.assert_allclose(w_dw[exact], ref_dw[exact], atol=1e-12)


def test_tensor_results_on_the_cpu():
    bp = sk.BrownianPath(2, (0.0, 1.0), n_paths=5, noise_dim=2, levy_area=True)
    s, t = np.linspace(0.1, 0.5, 5), np.linspace(0.9, 0.2, 5)
    dw, area = bp.interval(s, t)
    tdw, tarea = bp.interval(s, t, dtype=torch.float32)
    assert tdw.dtype == torch.float32 and tdw.shape == (5, 2)
    np.testing.assert_allclose(tdw.numpy(), dw, rtol=1e-6)
    np.testing.assert_allclose(tarea.numpy(), area, rtol=1e-6)
    zero_dw, zero_area = bp.interval(0.3, 0.3)
    assert not zero_dw.any() and not zero_area.any()


def test_bad_input():
    bp = sk.BrownianPath(0, (0.0, 1.0), n_paths=3)
    with pytest.raises(ValueError, match="`t` must lie in the path's t_span"):
        bp.interval(0.0, 1.5)
    with pytest.raises(ValueError, match="`s` must be a scalar or 1-D with one time per path"):
        bp.interval(np.zeros(2), 1.0)
    with pytest.raises(ValueError, match="`s` must lie"):
        bp.interval(np.nan, 1.0)
    cur = _cursor.new_cursor(_rng.lane_keys(bp._seed_key, 0, 1, 1), 1, 1.0, False)
    with pytest.raises(ValueError, match="tau must lie in"):
        _cursor.cursor_query(cur, 1.5, np.empty(1), np.empty(1))
    with pytest.raises(ValueError, match="tau_a"):
        interval_torch(torch.zeros(1, dtype=torch.int64), 1, 1, 1.0, False, torch.tensor([0.0]), torch.tensor([2.0]))


def test_the_interpreted_cursor_gives_the_compiled_cursors_numbers():
    """The cursor's query and move run as plain Python (``py_func``: every index bounds-checked, where compiled code
    would read past an array silently) and compiled, on one walk that steps, retries, jumps and queries inside
    2**-48 leaves: the same increments and areas to the last bit."""
    bp = sk.BrownianPath(5, (0.0, 1.0), n_paths=1, noise_dim=2, base_steps=2, levy_area=True)
    keys = _rng.lane_keys(bp._seed_key, 0, 1, 2)
    cursors = [_cursor.new_cursor(keys, bp.base_steps, bp.cell_length, True) for _ in range(2)]
    query = (_cursor.cursor_query.py_func, _cursor.cursor_query)
    move = (_cursor.cursor_move.py_func, _cursor.cursor_move)
    rng = np.random.default_rng(9)
    position = 0.0
    for r in range(60):
        kind = r % 4
        if kind == 0:
            target = rng.uniform(0, bp.base_steps)
        elif kind == 1:
            target = min(bp.base_steps, np.floor((position + rng.uniform(0.5, 1.5) * 2.0**-9) * 2**12) / 2**12)
        elif kind == 2:
            target = min(bp.base_steps, max(0.0, position + rng.uniform(-1.0, 1.0) * 2.0**-11))
        else:  # inside the current leaf
            target = min(bp.base_steps, position + rng.uniform(0, 1) * 2.0**-49)
        out = [(np.empty(2), np.empty(2)) for _ in range(2)]
        for k in range(2):
            query[k](cursors[k], target, *out[k])
        np.testing.assert_array_equal(out[0][0], out[1][0])
        np.testing.assert_array_equal(out[0][1], out[1][1])
        if rng.uniform() < 0.7:
            for k in range(2):
                move[k](cursors[k], target)
            position = target

"""Brownian increments and space-time Levy areas on any interval of the virtual Brownian tree (private).

The tree is the one of :mod:`sdekit._bridge` (same keys, same splits), read at
arbitrary times rather than on a fixed grid. A time ``tau`` in cell units is
the point ``cell + (j + theta) / 2**DEPTH`` with ``0 <= j < 2**DEPTH`` and
``0 <= theta < 1``; a dyadic point (``theta == 0``) with ``t`` trailing zero
bits in ``j`` is the left end of a node at level ``DEPTH - t`` (level 0 when
``j == 0``), and only the nodes above that level are needed to reach it.

A point inside a leaf of length ``h = cell_length / 2**DEPTH`` (``theta > 0``)
is drawn by the exact conditional law of ``(W_a, integral_0^a W)`` given the
leaf's ``(dW, H)`` (:func:`leaf_split`), with two normals keyed by the leaf's
heap index and the kinds 2 and 3. One non-dyadic time therefore always gives
the same value; two different non-dyadic times in the same leaf are each
exact but not jointly exact (each is conditioned on the leaf only).

Pieces are combined as ``(dW, K, length)`` with ``K = integral_s^t (W_u - W_s) du
= length * (H + dW / 2)``: ``K = K1 + K2 + length2 * dW1`` for adjacent pieces,
which never subtracts large cumulative integrals.

A :class:`Cursor` holds one path's branch of the tree at a current point (node
and sibling ``(dW, H)`` per level), so a query near it splits only the nodes
below the common ancestor of the two points. The tree with space-time Levy area
is J. Foster, "Numerical approximations for stochastic differential
equations", Oxford DPhil thesis (2020); the splits are Gaussian conditioning
(e.g. Rasmussen & Williams 2006, "Gaussian processes for machine learning",
eq. A.6).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from ._bridge import _ROOT, split_node
from ._rng import ZIG_F, ZIG_K, ZIG_R, ZIG_W, cell_constant, lane_keys, mix64, node_constant, normal_from_bits

DEPTH = 48  # levels below a base cell (== BrownianPath.MAX_DEPTH)
INSIDE_LEAF = DEPTH + 1  # the "level" of a point strictly inside a leaf (theta > 0)
LEAF_KIND_INCREMENT = 2  # draw kinds of the split of a leaf at a fraction (0/1: node splits)
LEAF_KIND_AREA = 3
_LEAVES = 1 << DEPTH
LEAF = DEPTH + 1  # index of the leaf pieces in Cursor.branch


class Cursor(NamedTuple):
    """One path's branch of the Brownian tree at a current point, and the branch of the last queried point.

    Row 0 of the two-row arrays is the current point, row 1 the last query's target.

    Attributes
    ----------
    n_cells, cell_length, levy_area :
        The path: ``n_cells`` base cells of length ``cell_length``; with space-time Levy area or not.
    keys : uint64 array (3, m)
        Row 0: the stream keys of the path's lanes (noise components); row ``1 + r``: their keys in the base cell of
        point ``r``.
    point : int64 array (2, 4)
        ``(cell, j, level, first_level)``: the point's cell, leaf index, its level (the level of the node
        whose left end it is, or ``INSIDE_LEAF``), and for row 1 the first level of the branch it computed.
    reals : float64 array (2, 2 + m)
        ``(theta, tau, ...)``: the fraction of the point inside its leaf, its time (row 1: the last queried time,
        NaN when stale), then the output of a :func:`cursor_move` not preceded by its query (row 0 ``dW``, row 1 ``H``).
    branch : float64 array (2, 4, DEPTH + 2, m)
        ``branch[r, :, level]``: ``(dW, H)`` of the node containing point ``r`` at that level, then ``(dW, H)`` of
        that node's sibling; ``branch[r, :, LEAF]`` for a point inside a leaf: ``(dW, K)`` of the leaf's part before
        the point, then after it.
    """

    n_cells: int
    cell_length: float
    levy_area: bool
    keys: np.ndarray
    point: np.ndarray
    reals: np.ndarray
    branch: np.ndarray


@njit(cache=True)
def new_cursor(lane_keys, n_cells, cell_length, levy_area):
    """A :class:`Cursor` over one path's lanes (``lane_keys``: uint64 ``(m,)``), with its current point at 0."""
    m = lane_keys.shape[0]
    keys = np.zeros((3, m), dtype=np.uint64)
    keys[0] = lane_keys
    cur = Cursor(n_cells, cell_length, levy_area, keys, np.zeros((2, 4), dtype=np.int64), np.zeros((2, 2 + m)),
                 np.zeros((2, 4, DEPTH + 2, m)))
    cursor_start(cur, 0.0)
    return cur


@njit(inline="always", cache=True)
def leaf_split(increment, area, theta, xi_increment, xi_area, length, levy_area):
    """``(W_a, K_a)`` at ``a = theta * length`` inside a node of length ``length`` with ``(dW, H) = (increment, area)``.

    ``K_a = integral_0^a (W_u - W_0) du``. With ``s = theta``, ``u = 1 - s`` and
    ``(S, H)`` the node's ``(dW, H)``, Gaussian conditioning of ``(W_a, K_a)``
    on ``(S, H)`` (independent, variances ``h`` and ``h/12``; covariances from
    ``Cov(W_x, W_y) = min(x, y)``) gives, in units of the node,

    * ``E W_a = s S + 6 s u H``, ``E K_a = h (s^2/2 S + s^2 (3 - 2s) H)``;
    * ``Var W_a = h s u (1 - 3 s u)``, ``Var K_a = h^3 s^3 u^3 / 3``,
      ``Cov(W_a, K_a) = h^2 s^2 u^2 (1 - 2s) / 2``,

    drawn as ``W_a = E W_a + sqrt(h s u (1 - 3su)) xi1`` and ``K_a = E K_a +
    h^{3/2} (s^2 u^2 (1 - 2s) / (2 sqrt(s u (1 - 3su))) xi1 + sqrt(s^3 u^3 / (12 (1 - 3su))) xi2)``.
    At ``s = 1/2`` this is the midpoint split of :func:`sdekit._bridge.split_node`.
    Without Levy area ``W_a = s S + sqrt(h s u) xi1`` (Brownian bridge) and ``K_a`` is 0.
    Needs ``0 < theta < 1``. Runs on floats, in Numba and on torch tensors (no ``math`` calls).
    """
    s = theta
    su = s * (1.0 - s)
    if levy_area:
        reduced = 1.0 - 3.0 * su
        sd_increment = (su * reduced) ** 0.5
        w = s * increment + 6.0 * su * area + length**0.5 * sd_increment * xi_increment
        k = length * (0.5 * s * s * increment + s * s * (3.0 - 2.0 * s) * area) + length**1.5 * (
            0.5 * su * su * (1.0 - 2.0 * s) / sd_increment * xi_increment + (su * su * su / (12.0 * reduced)) ** 0.5 * xi_area)
        return w, k
    return s * increment + (length * su) ** 0.5 * xi_increment, 0.0 * s


@njit(inline="always", cache=True)
def _join(dw1, k1, len1, dw2, k2, len2):
    """The piece ``[a, c]`` from adjacent pieces ``[a, b]`` then ``[b, c]``, each ``(dW, K, length)``."""
    return dw1 + dw2, k1 + k2 + len2 * dw1, len1 + len2


@njit(inline="always", cache=True)
def _normal(key, node, kind):
    return normal_from_bits(mix64(key ^ node_constant(node, kind)), ZIG_K, ZIG_W, ZIG_F, ZIG_R)


@njit(inline="always", cache=True)
def _bit_length(x):
    """Number of bits of the non-negative int64 ``x`` (0 for 0), by halving."""
    n = 0
    if x >> 32:
        x >>= 32
        n += 32
    if x >> 16:
        x >>= 16
        n += 16
    if x >> 8:
        x >>= 8
        n += 8
    if x >> 4:
        x >>= 4
        n += 4
    if x >> 2:
        x >>= 2
        n += 2
    if x >> 1:
        x >>= 1
        n += 1
    return n + x


@njit(inline="always", cache=True)
def _position(tau, n_cells):
    """``(cell, j, level, theta)`` of the time ``tau`` in cell units (see the module docstring)."""
    if not (0.0 <= tau <= n_cells):
        raise ValueError("tau must lie in [0, n_cells]")
    if tau >= n_cells:
        return n_cells, 0, 0, 0.0
    cell = min(int(math.floor(tau)), n_cells - 1)
    scaled = (tau - cell) * float(_LEAVES)  # exact: a power of two
    j = min(int(math.floor(scaled)), _LEAVES - 1)
    theta = scaled - j
    if theta > 0.0:
        return cell, j, INSIDE_LEAF, theta
    if j == 0:
        return cell, 0, 0, 0.0
    return cell, j, DEPTH + 1 - _bit_length(j & -j), 0.0  # DEPTH minus the trailing zero bits of j


@njit(inline="always", cache=True)
def _root(cell_key, cell_length, levy_area):
    """``(dW, H)`` of a base cell's root, as :func:`sdekit._bridge._draw_cell_roots` draws them."""
    dw = math.sqrt(cell_length) * _normal(cell_key, _ROOT, 0)
    area = math.sqrt(cell_length / 12.0) * _normal(cell_key, _ROOT, 1) if levy_area else 0.0
    return dw, area


@njit(inline="always", cache=True)
def _descend(cur, i, first_level, increment, area, sibling_increment, sibling_area, j, level, theta):
    """Walk lane ``i`` from the node at ``first_level`` (containing the target) down to the target, into row 1.

    Returns the target's prefix and suffix inside that node: ``(dW, K, length)`` twice.
    """
    cell_key = cur.keys[2, i]
    length = cur.cell_length / (1 << first_level)
    cur.branch[1, 0, first_level, i] = increment
    cur.branch[1, 1, first_level, i] = area
    cur.branch[1, 2, first_level, i] = sibling_increment
    cur.branch[1, 3, first_level, i] = sibling_area
    pre_dw = pre_k = pre_len = 0.0
    suf_dw = suf_k = suf_len = 0.0
    last = max(first_level, min(level, DEPTH))
    for lev in range(first_level, last):
        node = (1 << lev) + (j >> (DEPTH - lev))
        xi_area = _normal(cell_key, node, 1) if cur.levy_area else 0.0
        left, right, left_area, right_area = split_node(
            increment, area, _normal(cell_key, node, 0), xi_area, math.sqrt(length), math.sqrt(length / 12.0), cur.levy_area)
        length = cur.cell_length / (1 << (lev + 1))
        if (j >> (DEPTH - lev - 1)) & 1:
            pre_dw, pre_k, pre_len = _join(pre_dw, pre_k, pre_len, left, length * (left_area + 0.5 * left), length)
            increment, area, sibling_increment, sibling_area = right, right_area, left, left_area
        else:
            suf_dw, suf_k, suf_len = _join(right, length * (right_area + 0.5 * right), length, suf_dw, suf_k, suf_len)
            increment, area, sibling_increment, sibling_area = left, left_area, right, right_area
        cur.branch[1, 0, lev + 1, i] = increment
        cur.branch[1, 1, lev + 1, i] = area
        cur.branch[1, 2, lev + 1, i] = sibling_increment
        cur.branch[1, 3, lev + 1, i] = sibling_area
    node_k = length * (area + 0.5 * increment)
    if level <= DEPTH:
        suf_dw, suf_k, suf_len = _join(increment, node_k, length, suf_dw, suf_k, suf_len)
        return pre_dw, pre_k, pre_len, suf_dw, suf_k, suf_len
    leaf = (1 << DEPTH) + j
    xi_area = _normal(cell_key, leaf, LEAF_KIND_AREA) if cur.levy_area else 0.0
    w, k = leaf_split(increment, area, theta, _normal(cell_key, leaf, LEAF_KIND_INCREMENT), xi_area, length, cur.levy_area)
    before = theta * length
    after = length - before
    k_after = node_k - k - after * w
    cur.branch[1, 0, LEAF, i] = w
    cur.branch[1, 1, LEAF, i] = k
    cur.branch[1, 2, LEAF, i] = increment - w
    cur.branch[1, 3, LEAF, i] = k_after
    pre_dw, pre_k, pre_len = _join(pre_dw, pre_k, pre_len, w, k, before)
    suf_dw, suf_k, suf_len = _join(increment - w, k_after, after, suf_dw, suf_k, suf_len)
    return pre_dw, pre_k, pre_len, suf_dw, suf_k, suf_len


@njit(inline="always", cache=True)
def _current_piece(cur, i, level, suffix):
    """Suffix (or prefix) of the current point inside its node at ``level``, from the stored branch: ``(dW, K, length)``."""
    j = cur.point[0, 1]
    point_level = cur.point[0, 2]
    if point_level == INSIDE_LEAF:
        lev = DEPTH
        length = cur.cell_length / (1 << DEPTH)
        before = cur.reals[0, 0] * length
        if suffix:
            dw, k, total = cur.branch[0, 2, LEAF, i], cur.branch[0, 3, LEAF, i], length - before
        else:
            dw, k, total = cur.branch[0, 0, LEAF, i], cur.branch[0, 1, LEAF, i], before
    else:
        lev = point_level
        length = cur.cell_length / (1 << lev)
        if suffix:
            dw = cur.branch[0, 0, lev, i]
            k, total = length * (cur.branch[0, 1, lev, i] + 0.5 * dw), length
        else:
            dw = k = total = 0.0
    while lev > level:
        sib = cur.branch[0, 2, lev, i]
        sib_k = length * (cur.branch[0, 3, lev, i] + 0.5 * sib)
        is_right = (j >> (DEPTH - lev)) & 1
        if suffix and not is_right:
            dw, k, total = _join(dw, k, total, sib, sib_k, length)
        elif not suffix and is_right:
            dw, k, total = _join(sib, sib_k, length, dw, k, total)
        lev -= 1
        length = cur.cell_length / (1 << lev)
    return dw, k, total


@njit(cache=True)
def _whole_cells(cur, i, first, end):
    """``(dW, K, length)`` of the base cells ``first .. end - 1`` of lane ``i``."""
    dw = k = total = 0.0
    for cell in range(first, end):
        root_dw, root_area = _root(mix64(cur.keys[0, i] ^ cell_constant(cell)), cur.cell_length, cur.levy_area)
        dw, k, total = _join(dw, k, total, root_dw, cur.cell_length * (root_area + 0.5 * root_dw), cur.cell_length)
    return dw, k, total


@njit(cache=True)
def cursor_query(cur, tau, dw_out, area_out):
    """``W(tau) - W(current)`` into ``dw_out`` and, with Levy area, the space-time Levy area of the interval into ``area_out``.

    ``dw_out`` and ``area_out`` are float64 arrays of length m (``area_out`` is
    not touched without Levy area). ``tau`` (cell units, in ``[0, n_cells]``)
    may lie before or after the current point; ``H = K / h - dW / 2`` is that of
    ``[min, max]`` (orientation-free). The current point does not move; the
    target's branch is kept (row 1) for a :func:`cursor_move` to it.
    """
    cell, j, level, theta = _position(tau, cur.n_cells)
    m = cur.keys.shape[1]
    point = cur.point
    point[1, 0], point[1, 1], point[1, 2] = cell, j, level
    cur.reals[1, 0] = theta
    cur.reals[1, 1] = tau
    cur_cell, cur_j, cur_level, cur_theta = point[0, 0], point[0, 1], point[0, 2], cur.reals[0, 0]
    if cell == cur_cell and j == cur_j and theta == cur_theta:
        point[1, 3] = INSIDE_LEAF + 1  # nothing to copy on a move
        for i in range(m):
            cur.keys[2, i] = cur.keys[1, i]
            dw_out[i] = 0.0
            if cur.levy_area:
                area_out[i] = 0.0
        return
    forward = cell > cur_cell or (cell == cur_cell and (j > cur_j or (j == cur_j and theta > cur_theta)))
    if cell != cur_cell:
        point[1, 3] = 0
        for i in range(m):
            cur.keys[2, i] = mix64(cur.keys[0, i] ^ cell_constant(cell))
            root_dw = root_area = 0.0
            if cell < cur.n_cells:
                root_dw, root_area = _root(cur.keys[2, i], cur.cell_length, cur.levy_area)
            pre_dw, pre_k, pre_len, suf_dw, suf_k, suf_len = _descend(cur, i, 0, root_dw, root_area, 0.0, 0.0, j, level, theta)
            if forward:
                dw, k, total = _current_piece(cur, i, 0, True)
                mid_dw, mid_k, mid_len = _whole_cells(cur, i, cur_cell + 1, cell)
                dw, k, total = _join(dw, k, total, mid_dw, mid_k, mid_len)
                dw, k, total = _join(dw, k, total, pre_dw, pre_k, pre_len)
            else:
                mid_dw, mid_k, mid_len = _whole_cells(cur, i, cell + 1, cur_cell)
                dw, k, total = _join(suf_dw, suf_k, suf_len, mid_dw, mid_k, mid_len)
                if cur_cell < cur.n_cells:
                    own_dw, own_k, own_len = _current_piece(cur, i, 0, False)
                    dw, k, total = _join(dw, k, total, own_dw, own_k, own_len)
            dw_out[i] = dw if forward else -dw
            if cur.levy_area:
                area_out[i] = k / total - 0.5 * dw
        return
    common = DEPTH - _bit_length(j ^ cur_j)  # deepest level where both points share a node
    for i in range(m):
        cur.keys[2, i] = cur.keys[1, i]
    if common >= cur_level:
        # The target lies inside the node whose left end is the current point.
        point[1, 3] = cur_level
        for i in range(m):
            dw, k, total, _, _, _ = _descend(cur, i, cur_level, cur.branch[0, 0, cur_level, i],
                                             cur.branch[0, 1, cur_level, i], cur.branch[0, 2, cur_level, i],
                                             cur.branch[0, 3, cur_level, i], j, level, theta)
            dw_out[i] = dw
            if cur.levy_area:
                area_out[i] = k / total - 0.5 * dw
        return
    if common == DEPTH:
        # Both points in one leaf, the current one inside it: each is the leaf's split at its own fraction.
        point[1, 3] = DEPTH
        leaf_length = cur.cell_length / (1 << DEPTH)
        a, b = cur_theta * leaf_length, theta * leaf_length
        for i in range(m):
            w_b, k_b, _, _, _, _ = _descend(cur, i, DEPTH, cur.branch[0, 0, DEPTH, i], cur.branch[0, 1, DEPTH, i],
                                            cur.branch[0, 2, DEPTH, i], cur.branch[0, 3, DEPTH, i], j, level, theta)
            w_a, k_a = cur.branch[0, 0, LEAF, i], cur.branch[0, 1, LEAF, i]
            dw = w_b - w_a
            k = k_b - k_a - (b - a) * w_a if forward else k_a - k_b - (a - b) * w_b
            dw_out[i] = dw
            if cur.levy_area:
                area_out[i] = k / abs(b - a) - 0.5 * (dw if forward else -dw)
        return
    # The points part at level common + 1: the target is in the sibling of the current point's node there.
    first = common + 1
    point[1, 3] = first
    for i in range(m):
        pre_dw, pre_k, pre_len, suf_dw, suf_k, suf_len = _descend(
            cur, i, first, cur.branch[0, 2, first, i], cur.branch[0, 3, first, i], cur.branch[0, 0, first, i],
            cur.branch[0, 1, first, i], j, level, theta)
        own_dw, own_k, own_len = _current_piece(cur, i, first, forward)
        if forward:
            dw, k, total = _join(own_dw, own_k, own_len, pre_dw, pre_k, pre_len)
        else:
            dw, k, total = _join(suf_dw, suf_k, suf_len, own_dw, own_k, own_len)
        dw_out[i] = dw if forward else -dw
        if cur.levy_area:
            area_out[i] = k / total - 0.5 * dw


@njit(cache=True)
def cursor_move(cur, tau):
    """Make ``tau`` the current point: copies the branch computed by the preceding ``cursor_query(cur, tau, ...)``."""
    if not cur.reals[1, 1] == tau:
        cursor_query(cur, tau, cur.reals[0, 2:], cur.reals[1, 2:])
    point = cur.point
    first = point[1, 3]
    last = min(point[1, 2], DEPTH)
    m = cur.keys.shape[1]
    for i in range(m):
        cur.keys[1, i] = cur.keys[2, i]
        for lev in range(first, last + 1):
            cur.branch[0, 0, lev, i] = cur.branch[1, 0, lev, i]
            cur.branch[0, 1, lev, i] = cur.branch[1, 1, lev, i]
            cur.branch[0, 2, lev, i] = cur.branch[1, 2, lev, i]
            cur.branch[0, 3, lev, i] = cur.branch[1, 3, lev, i]
        if point[1, 2] == INSIDE_LEAF and first <= INSIDE_LEAF:
            for r in range(4):
                cur.branch[0, r, LEAF, i] = cur.branch[1, r, LEAF, i]
    point[0, 0], point[0, 1], point[0, 2] = point[1, 0], point[1, 1], point[1, 2]
    cur.reals[0, 0] = cur.reals[1, 0]
    cur.reals[0, 1] = tau
    cur.reals[1, 1] = np.nan


@njit(cache=True)
def cursor_start(cur, tau):
    """Make ``tau`` (cell units, in ``[0, n_cells]``) the current point, walking its branch from the cell's root."""
    cell, j, level, theta = _position(tau, cur.n_cells)
    cur.point[1, 0], cur.point[1, 1], cur.point[1, 2], cur.point[1, 3] = cell, j, level, 0
    cur.reals[1, 0] = theta
    for i in range(cur.keys.shape[1]):
        cur.keys[2, i] = mix64(cur.keys[0, i] ^ cell_constant(cell))
        root_dw = root_area = 0.0
        if cell < cur.n_cells:
            root_dw, root_area = _root(cur.keys[2, i], cur.cell_length, cur.levy_area)
        _descend(cur, i, 0, root_dw, root_area, 0.0, 0.0, j, level, theta)
    cur.reals[1, 1] = tau
    cursor_move(cur, tau)


@njit(cache=True, nogil=True)
def intervals(seed_key, first_path, n_paths, noise_dim, n_cells, cell_length, levy_area, tau_a, tau_b, dw_out, area_out):
    """``W(tau_b) - W(tau_a)`` (and ``H`` of the interval) of each path, through a cursor per path.

    ``tau_a``, ``tau_b``: float64 ``(n_paths,)`` in cell units; ``dw_out``,
    ``area_out``: ``(n_paths, noise_dim)`` (``area_out`` is not written without Levy area).
    """
    for p in range(n_paths):
        cur = new_cursor(lane_keys(seed_key, first_path + p, 1, noise_dim), n_cells, cell_length, levy_area)
        cursor_start(cur, tau_a[p])
        cursor_query(cur, tau_b[p], dw_out[p], area_out[p])


@njit(cache=True, nogil=True)
def values(seed_key, first_path, n_paths, noise_dim, n_cells, cell_length, levy_area, times, out):
    """W at ``times`` (cell units, in ``[0, n_cells]``) for each path: ``out`` is ``(len(times), n_paths, noise_dim)``.

    A cursor per path visits the times in increasing order and sums the
    increments between them, so ``W(t)`` is ``intervals(0, t)`` up to round-off.
    """
    order = np.argsort(times)
    dw = np.empty(noise_dim)
    for p in range(n_paths):
        cur = new_cursor(lane_keys(seed_key, first_path + p, 1, noise_dim), n_cells, cell_length, levy_area)
        w = np.zeros(noise_dim)
        for r in range(times.shape[0]):
            t = times[order[r]]
            cursor_query(cur, t, dw, cur.reals[1, 2:])
            cursor_move(cur, t)
            for c in range(noise_dim):
                w[c] += dw[c]
                out[order[r], p, c] = w[c]

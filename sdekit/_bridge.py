"""Numba kernels of the dyadic Brownian tree (private; read through ``BrownianPath.blocks``).

A path on ``[t0, t1]`` is split into ``n_cells`` base cells of length
``cell_length``. In each cell the increment ``dW`` (and, with Levy area, the
space-time Levy area ``H``) of the root is drawn, and every node of the binary
tree below it is split into its two halves by the exact conditional law
(:func:`split_node`). The split of the node with heap index ``q`` (root 1,
children ``2q`` and ``2q + 1``) uses normals keyed by ``q`` alone, so a grid of
``n_cells * 2**depth`` steps is an exact sub-sample of the grid of
``n_cells * 2**(depth + 1)`` steps.

Leaves are produced in time order (or reverse time order) by a depth-first
walk that keeps one pending sibling per level (:class:`TreeWalk`): memory
``O(depth)`` per lane, one split (one or two normals) per step.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from ._rng import ZIG_F, ZIG_K, ZIG_R, ZIG_W, cell_constant, lane_keys, mix64, node_constant, normal_from_bits

_ROOT = 0  # node index of a cell's root draw; splits use heap indices >= 1


class TreeWalk(NamedTuple):
    """State of the depth-first walk over the leaves of the tree, for a set of lanes.

    A lane is one (path, noise component) pair. Level 0 is a base cell's root,
    level ``depth`` its leaves (the steps). The walk is resumable: each call of
    :func:`fill` continues where the previous one stopped.

    Attributes
    ----------
    n_cells, depth, cell_length :
        The grid: ``n_cells * 2**depth`` steps over ``n_cells`` cells of that length.
    reverse : bool
        Leaves are visited from the end of the path to its start.
    levy_area : bool
        The path carries space-time Levy areas.
    lane_keys : uint64 array (lanes,)
        Stream key of each lane.
    cell_keys : uint64 array (lanes,)
        Key of each lane's current base cell.
    node_increment, node_area : float64 arrays (depth + 1, lanes)
        ``dW`` and ``H`` of the node on the walk's current branch, per level.
    pending_increment, pending_area : float64 arrays (depth + 1, lanes)
        ``dW`` and ``H`` of that node's sibling, not visited yet.
    normals : float64 array (2, lanes)
        Scratch for the standard normals of one split (increment, area).
    """

    n_cells: int
    depth: int
    cell_length: float
    reverse: bool
    levy_area: bool
    lane_keys: np.ndarray
    cell_keys: np.ndarray
    node_increment: np.ndarray
    node_area: np.ndarray
    pending_increment: np.ndarray
    pending_area: np.ndarray
    normals: np.ndarray


@njit(cache=True)
def new_walk(seed_key, first_path, n_paths, noise_dim, n_cells, depth, cell_length, reverse, levy_area):
    """A :class:`TreeWalk` at the start of paths ``first_path .. first_path + n_paths - 1``."""
    lanes = n_paths * noise_dim
    return TreeWalk(
        n_cells, depth, cell_length, reverse, levy_area,
        lane_keys(seed_key, first_path, n_paths, noise_dim), np.empty(lanes, dtype=np.uint64),
        np.zeros((depth + 1, lanes)), np.zeros((depth + 1, lanes)), np.zeros((depth + 1, lanes)),
        np.zeros((depth + 1, lanes)), np.empty((2, lanes)),
    )


@njit(inline="always", cache=True)
def split_node(increment, area, xi_increment, xi_area, sqrt_length, area_std, levy_area):
    """Split a node of length ``h`` into its two halves, by the exact conditional law.

    Parameters
    ----------
    increment, area :
        ``dW`` and space-time Levy area ``H`` of the node (``area`` is ignored
        without Levy area).
    xi_increment, xi_area :
        Independent standard normals of the node (``xi_area`` only with Levy area).
    sqrt_length, area_std :
        ``sqrt(h)`` and ``sqrt(h / 12)`` (the standard deviation of ``H``).

    Returns
    -------
    (left_increment, right_increment, left_area, right_area)
        The areas are 0 without Levy area.

    Notes
    -----
    With ``S = dW``: without Levy area ``D = sqrt(h) xi1``; with it
    ``D = 3H + sqrt(h)/2 xi1``, ``E = 2H - D/2``, ``F = sqrt(h/12) xi2``,
    ``H_left = (E + F)/2``, ``H_right = (E - F)/2``; then
    ``dW_left = (S + D)/2`` and ``dW_right = (S - D)/2``. This follows from
    ``H = (H_left + H_right)/2 + (dW_left - dW_right)/4`` and Gaussian
    conditioning: the Brownian tree with space-time Levy area of J. Foster,
    "Numerical approximations for stochastic differential equations", Oxford
    DPhil thesis (2020).
    """
    if levy_area:
        d = 3.0 * area + 0.5 * sqrt_length * xi_increment
        e = 2.0 * area - 0.5 * d
        f = area_std * xi_area
        return 0.5 * (increment + d), 0.5 * (increment - d), 0.5 * (e + f), 0.5 * (e - f)
    d = sqrt_length * xi_increment
    return 0.5 * (increment + d), 0.5 * (increment - d), 0.0, 0.0


@njit(cache=True)
def _draw_normals(keys, node_kind_constant, scale, out, row):
    """``out[row, i]`` = ``scale`` times the standard normal of lane ``i`` keyed by ``keys[i] ^ node_kind_constant``."""
    for i in range(keys.shape[0]):
        out[row, i] = scale * normal_from_bits(mix64(keys[i] ^ node_kind_constant), ZIG_K, ZIG_W, ZIG_F, ZIG_R)


@njit(cache=True)
def _draw_cell_roots(walk, cell):
    """Enter base cell ``cell``: its keys, and its root ``dW`` (and ``H``) at level 0."""
    lanes = walk.lane_keys.shape[0]
    cell_key = cell_constant(cell)
    for i in range(lanes):
        walk.cell_keys[i] = mix64(walk.lane_keys[i] ^ cell_key)
    _draw_normals(walk.cell_keys, node_constant(_ROOT, 0), math.sqrt(walk.cell_length), walk.node_increment, 0)
    if walk.levy_area:
        _draw_normals(walk.cell_keys, node_constant(_ROOT, 1), math.sqrt(walk.cell_length / 12.0), walk.node_area, 0)


@njit(cache=True)
def _split_level(walk, level, node, node_length):
    """Split the current node at ``level`` (heap index ``node``): the child visited first becomes current."""
    lanes = walk.lane_keys.shape[0]
    sqrt_length = math.sqrt(node_length)
    _draw_normals(walk.cell_keys, node_constant(node, 0), 1.0, walk.normals, 0)
    current, pending = walk.node_increment, walk.pending_increment
    left, right = (pending, current) if walk.reverse else (current, pending)
    if walk.levy_area:
        _draw_normals(walk.cell_keys, node_constant(node, 1), 1.0, walk.normals, 1)
        area_std = math.sqrt(node_length / 12.0)
        left_area, right_area = (walk.pending_area, walk.node_area) if walk.reverse else (walk.node_area, walk.pending_area)
        for i in range(lanes):
            left[level + 1, i], right[level + 1, i], left_area[level + 1, i], right_area[level + 1, i] = split_node(
                current[level, i], walk.node_area[level, i], walk.normals[0, i], walk.normals[1, i], sqrt_length,
                area_std, True)
    else:
        for i in range(lanes):
            left[level + 1, i], right[level + 1, i], _, _ = split_node(
                current[level, i], 0.0, walk.normals[0, i], 0.0, sqrt_length, 0.0, False)


@njit(cache=True)
def _next_leaf(walk, step):
    """Advance the walk to step ``step`` (integration order); its ``dW`` and ``H`` are then in row ``depth``."""
    depth = walk.depth
    leaves = 1 << depth
    cell = step >> depth
    leaf = step & (leaves - 1)
    if leaf == 0:
        _draw_cell_roots(walk, walk.n_cells - 1 - cell if walk.reverse else cell)
        first_level = 0
    else:
        # The walk resumes at the pending sibling of the deepest common ancestor of this leaf and the previous one.
        first_level = depth
        rest = leaf
        while (rest & 1) == 0:
            rest >>= 1
            first_level -= 1
        for i in range(walk.lane_keys.shape[0]):
            walk.node_increment[first_level, i] = walk.pending_increment[first_level, i]
        if walk.levy_area:
            for i in range(walk.lane_keys.shape[0]):
                walk.node_area[first_level, i] = walk.pending_area[first_level, i]
    time_leaf = leaves - 1 - leaf if walk.reverse else leaf  # leaf position in time order
    for level in range(first_level, depth):
        _split_level(walk, level, (1 << level) + (time_leaf >> (depth - level)), walk.cell_length / (1 << level))


@njit(cache=True, nogil=True)
def fill(walk, first_step, out_dw, out_area, first_lane):
    """Steps ``first_step .. first_step + len(out_dw) - 1`` of the walk's lanes, continuing the walk.

    ``out_dw`` and ``out_area`` are ``(k, lanes_total)``; the walk's lanes go to
    columns ``first_lane ..``. ``out_dw[j]`` is the increment of step
    ``first_step + j`` in the direction of integration (with ``reverse`` the
    negative of the forward increment of that cell); ``H`` is orientation-free.
    ``out_area`` is not touched without Levy area.
    """
    lanes = walk.lane_keys.shape[0]
    depth = walk.depth
    sign = -1.0 if walk.reverse else 1.0
    for row in range(out_dw.shape[0]):
        _next_leaf(walk, first_step + row)
        for i in range(lanes):
            out_dw[row, first_lane + i] = sign * walk.node_increment[depth, i]
        if walk.levy_area:
            for i in range(lanes):
                out_area[row, first_lane + i] = walk.node_area[depth, i]

"""The Brownian tree in torch kernels: the numbers of ``_rng``/``_bridge`` on any device.

The hash and the ziggurat of :mod:`sdekit._rng` are written again with int64
tensor operations (:func:`mix64`, :func:`normals`), and the tree is expanded
level by level (breadth first) over a whole block of leaves at once, so a step
costs a few element-wise kernels over all lanes. The split of a node is
:func:`sdekit._bridge.split_node` itself, run on tensors. Keys that do not
depend on the lane (per cell, per node) are hashed on the host by the compiled
:mod:`sdekit._rng`.

Integer hashing is exact (int64 arithmetic wraps like uint64; logical shifts
are arithmetic shifts with the sign bits masked off). The normal of a ziggurat
draw is then the same double as the compiled one; the ~1.2 % of draws that
take the slow path (wedge, tail, Box-Muller fallback) go through ``log``/
``exp``/``cos``, whose last bit may differ between libm and a device's math
library. So paths agree with the compiled tree to round-off, not always bit
for bit.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._bridge import split_node
from ._cursor import DEPTH, INSIDE_LEAF, LEAF_KIND_AREA, LEAF_KIND_INCREMENT, leaf_split
from ._rng import C_CELL, C_NODE, C_RETRY, ZIG_F, ZIG_K, ZIG_R, ZIG_W, cell_constants, node_constants
from .brownian import BrownianBlock

_TWO53_INV = 1.0 / 9007199254740992.0
_TWO_PI = 2.0 * math.pi
# the compiled splits' own sources, applied to tensors (plain functions already under NUMBA_DISABLE_JIT=1)
_split_node = getattr(split_node, "py_func", split_node)
_leaf_split = getattr(leaf_split, "py_func", leaf_split)


def _signed(u) -> int:
    """A uint64 value as the int64 with the same bits."""
    u = int(u) & 0xFFFFFFFFFFFFFFFF
    return u - (1 << 64) if u >> 63 else u


_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)
_C_RETRY = _signed(C_RETRY)
_C_CELL = _signed(C_CELL)
_C_NODE = _signed(C_NODE)


def _srl(z, s):
    """Logical right shift of int64 bits."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def mix64(z):
    """SplitMix64 finaliser on int64 tensors (bit-identical to ``_rng.mix64``)."""
    z = (z ^ _srl(z, 30)) * _M1
    z = (z ^ _srl(z, 27)) * _M2
    return z ^ _srl(z, 31)


_TABLES: dict = {}


def _tables(device):
    key = str(device)
    if key not in _TABLES:
        _TABLES[key] = (
            torch.as_tensor(ZIG_K.view(np.int64), device=device),
            torch.as_tensor(ZIG_W, device=device),
            torch.as_tensor(ZIG_F, device=device),
        )
    return _TABLES[key]


def _uniform_open(bits):
    return (_srl(bits, 11).to(torch.float64) + 0.5) * _TWO53_INV


def normals(bits):
    """Standard normals (float64) from int64 bits: ``_rng.normal_from_bits`` element-wise."""
    shape = bits.shape
    bits = bits.reshape(-1)
    zk, zw, zf = _tables(bits.device)
    i = bits & 255
    j = _srl(bits, 11)
    x = j.to(torch.float64) * zw[i]
    x = torch.where((bits & 256) != 0, -x, x)
    slow = (j >= zk[i]).nonzero().squeeze(1)
    if slow.numel():
        x[slow] = _normal_slow(bits[slow], i[slow], x[slow], zf)
    return x.reshape(shape)


def _normal_slow(bits, i, x, zf):
    """Wedge test, tail and rejection for the lanes that left the fast path."""
    b2 = mix64(bits ^ _C_RETRY)
    ax = x.abs()
    # Wedge: accept x under the density, else an independent Box-Muller normal.
    ip = torch.clamp(i + 1, max=256)
    y = zf[i] + _uniform_open(b2) * (zf[ip] - zf[i])
    b3 = mix64(b2 ^ _C_RETRY)
    b4 = mix64(b3 ^ _C_RETRY)
    rad = torch.sqrt(-2.0 * torch.log(_uniform_open(b3)))
    bm = rad * torch.cos(_TWO_PI * _uniform_open(b4))
    out = torch.where(y < torch.exp(-0.5 * ax * ax), x, bm)
    tail = (i == 0).nonzero().squeeze(1)
    if tail.numel():
        sign = torch.where(x[tail] < 0.0, -1.0, 1.0).to(x.dtype)
        b = b2[tail]
        res = torch.empty_like(sign)
        todo = torch.arange(tail.numel(), device=x.device)
        while todo.numel():
            bt = b[todo]
            b3 = mix64(bt ^ _C_RETRY)
            a = -torch.log(_uniform_open(bt)) / ZIG_R
            e = -torch.log(_uniform_open(b3))
            ok = 2.0 * e > a * a
            res[todo[ok]] = sign[todo[ok]] * (ZIG_R + a[ok])
            b[todo] = mix64(b3 ^ _C_RETRY)
            todo = todo[~ok]
        out[tail] = res
    return out


class TorchTree:
    """The dyadic tree of a set of lanes on a torch device, read in blocks of whole subtrees.

    Parameters
    ----------
    lane_keys : numpy uint64 array
        Stream keys of the lanes, path-major (``_rng.lane_keys``).
    noise_dim, n_cells, depth, cell_length, levy_area :
        The path: ``n_cells * 2**depth`` steps over cells of ``cell_length``.
    device : torch.device
    """

    def __init__(self, lane_keys, noise_dim, n_cells, depth, cell_length, levy_area, device):
        self.device = torch.device(device)
        self.keys = torch.as_tensor(lane_keys.view(np.int64), device=self.device)
        self.noise_dim, self.n_cells, self.depth = noise_dim, n_cells, depth
        self.cell_length, self.levy_area = cell_length, levy_area

    def _roots(self, cells):
        """Cell keys and root (dW, H) of the given cells: tensors (C, 1, lanes)."""
        cell_keys = torch.as_tensor(cell_constants(np.asarray(cells, dtype=np.uint64)).view(np.int64), device=self.device)
        cell_keys = mix64(self.keys[None, :] ^ cell_keys[:, None])
        root = np.zeros(1, dtype=np.uint64)
        dw = math.sqrt(self.cell_length) * normals(mix64(cell_keys ^ int(node_constants(root, 0).view(np.int64)[0])))
        area = None
        if self.levy_area:
            area = math.sqrt(self.cell_length / 12.0) * normals(
                mix64(cell_keys ^ int(node_constants(root, 1).view(np.int64)[0])))[:, None, :]
        return cell_keys, dw[:, None, :], area

    def _node_normals(self, cell_keys, nodes, kind):
        constants = torch.as_tensor(node_constants(nodes, kind).view(np.int64), device=self.device)
        return normals(mix64(cell_keys[:, None, :] ^ constants[None, :, None]))

    def _split(self, cell_keys, dw, area, level, first_node):
        """Split every node of a frontier at ``level``: positions ``first_node + r`` in each cell."""
        width = dw.shape[1]
        nodes = (1 << level) + first_node + np.arange(width, dtype=np.uint64)
        node_length = self.cell_length / (1 << level)
        xi_area = self._node_normals(cell_keys, nodes, 1) if self.levy_area else 0.0
        left, right, left_area, right_area = _split_node(
            dw, 0.0 if area is None else area, self._node_normals(cell_keys, nodes, 0), xi_area, math.sqrt(node_length),
            math.sqrt(node_length / 12.0), self.levy_area)
        dw = torch.stack((left, right), dim=2).reshape(dw.shape[0], 2 * width, -1)
        if self.levy_area:
            area = torch.stack((left_area, right_area), dim=2).reshape(dw.shape[0], 2 * width, -1)
        return dw, area

    def _expand(self, cell_keys, dw, area, level, first_node):
        while level < self.depth:
            dw, area = self._split(cell_keys, dw, area, level, first_node)
            level += 1
            first_node *= 2
        return dw, area

    def _in_order(self, dw, area, reverse):
        """(C, P, lanes) leaves in time order -> ``(dw, area)`` (k, n_paths, noise_dim) in integration order."""
        k = dw.shape[0] * dw.shape[1]
        dw = dw.reshape(k, -1, self.noise_dim)
        area = None if area is None else area.reshape(k, -1, self.noise_dim)
        if reverse:
            dw = -dw.flip(0)
            area = None if area is None else area.flip(0)
        return dw, area

    def _depth_first(self, cell_keys, dw, area, level, node, reverse, breadth_levels):
        if self.depth - level <= breadth_levels:
            yield self._in_order(*self._expand(cell_keys, dw, area, level, node), reverse)
            return
        dw, area = self._split(cell_keys, dw, area, level, node)
        halves = [(dw[:, :1], None if area is None else area[:, :1], 2 * node),
                  (dw[:, 1:], None if area is None else area[:, 1:], 2 * node + 1)]
        if reverse:
            halves.reverse()
        for half_dw, half_area, child in halves:
            yield from self._depth_first(cell_keys, half_dw, half_area, level + 1, child, reverse, breadth_levels)

    def _parts(self, reverse, block_steps):
        # The lowest ``breadth_levels`` levels are expanded breadth first within a block; above them the tree is
        # walked depth first, or whole cells are batched when a block holds at least one cell.
        breadth_levels = max(0, min(self.depth, int(math.floor(math.log2(max(1, block_steps))))))
        cells = list(range(self.n_cells - 1, -1, -1) if reverse else range(self.n_cells))
        if breadth_levels == self.depth:
            cells_per_block = max(1, block_steps >> self.depth)
            for c in range(0, self.n_cells, cells_per_block):
                cell_keys, dw, area = self._roots(sorted(cells[c : c + cells_per_block]))
                yield self._in_order(*self._expand(cell_keys, dw, area, 0, 0), reverse)
            return
        for cell in cells:
            cell_keys, dw, area = self._roots([cell])
            yield from self._depth_first(cell_keys, dw, area, 0, 0, reverse, breadth_levels)

    def blocks(self, reverse, block_steps):
        """:class:`~sdekit.brownian.BrownianBlock` of float64 tensors, at most ``block_steps`` steps each."""
        first_step = 0
        for dw, area in self._parts(bool(reverse), block_steps):
            yield BrownianBlock(first_step, dw, area)
            first_step += dw.shape[0]


def _keyed_normals(keys, node, kind):
    """Normals of node ``node`` (int64 tensor of heap indices) and draw ``kind`` under the keys: ``_cursor._normal``."""
    return normals(mix64(keys ^ mix64((node * 2 + kind) ^ _C_NODE)))


def _positions(tau, n_cells):
    """``(cell, j, level, theta)`` of times in cell units, as ``_cursor._position`` (int64 and float64 tensors)."""
    end = tau >= n_cells
    cell = torch.floor(tau).to(torch.int64).clamp(max=n_cells - 1)
    scaled = (tau - cell.to(torch.float64)) * float(1 << DEPTH)
    j = torch.floor(scaled).to(torch.int64).clamp(max=(1 << DEPTH) - 1)
    theta = scaled - j.to(torch.float64)
    cell = torch.where(end, n_cells, cell)
    j = torch.where(end, 0, j)
    theta = torch.where(end, 0.0, theta)
    trailing = torch.log2((j & -j).clamp(min=1).to(torch.float64)).round().to(torch.int64)
    level = torch.where(j == 0, 0, DEPTH - trailing)
    return cell, j, torch.where(theta > 0.0, INSIDE_LEAF, level), theta


def _join(first, second):
    """Adjacent pieces ``(dW, K, length)``: ``K = K1 + K2 + length2 * dW1``."""
    return first[0] + second[0], first[1] + second[1] + second[2] * first[0], first[2] + second[2]


def _where(mask, a, b):
    return tuple(torch.where(mask, x, y) for x, y in zip(a, b, strict=True))


def interval_torch(lane_keys, noise_dim, n_cells, cell_length, levy_area, tau_a, tau_b):
    """``W(tau_b) - W(tau_a)`` and the space-time Levy area of the interval, per path, on ``lane_keys``' device.

    The same tree, keys and leaf law as the cursor of :mod:`sdekit._cursor`,
    batched over paths: for each path the nodes from the cell roots (or the
    common ancestor of the two points) down to each point's level are split
    level by level with masks, the suffix of the earlier point and the prefix of
    the later one are accumulated as ``(dW, K, length)``, with the whole cells
    between them.

    Parameters
    ----------
    lane_keys : int64 tensor (n * noise_dim,)
        Lane keys (``_rng.lane_keys`` viewed as int64), path-major.
    noise_dim, n_cells, cell_length, levy_area :
        The path.
    tau_a, tau_b : float64 tensors (n,)
        The two times of each path in cell units, in ``[0, n_cells]``.

    Returns
    -------
    (dw, area)
        ``(n, noise_dim)`` float64 tensors; ``area`` is None without Levy area and 0 where ``tau_a == tau_b``.
    """
    device = lane_keys.device
    f64 = torch.float64
    tau_a = torch.as_tensor(tau_a, dtype=f64, device=device).repeat_interleave(noise_dim)
    tau_b = torch.as_tensor(tau_b, dtype=f64, device=device).repeat_interleave(noise_dim)
    if not bool(((tau_a >= 0) & (tau_a <= n_cells) & (tau_b >= 0) & (tau_b <= n_cells)).all()):
        raise ValueError(f"`tau_a` and `tau_b` must lie in [0, n_cells={n_cells}].")
    sign = torch.where(tau_b >= tau_a, 1.0, -1.0).to(f64)
    ca, ja, ka, tha = _positions(torch.minimum(tau_a, tau_b), n_cells)
    cb, jb, kb, thb = _positions(torch.maximum(tau_a, tau_b), n_cells)
    keys_a = mix64(lane_keys ^ mix64(ca ^ _C_CELL))
    keys_b = mix64(lane_keys ^ mix64(cb ^ _C_CELL))
    zero = torch.zeros_like(tau_a)
    root_index = torch.zeros_like(ca)

    def root(keys):
        dw = math.sqrt(cell_length) * _keyed_normals(keys, root_index, 0)
        return dw, (math.sqrt(cell_length / 12.0) * _keyed_normals(keys, root_index, 1) if levy_area else zero)

    def whole(node, length):
        return node[0], length * (node[1] + 0.5 * node[0]), torch.full_like(zero, length)

    def leaf(node, keys, j, theta, length, before_part):
        index = (1 << DEPTH) + j
        theta = torch.where(theta > 0.0, theta, 0.5)  # lanes that do not use this split
        xi_area = _keyed_normals(keys, index, LEAF_KIND_AREA) if levy_area else 0.0
        w, k = _leaf_split(node[0], node[1], theta, _keyed_normals(keys, index, LEAF_KIND_INCREMENT), xi_area, length,
                           levy_area)
        before = theta * length
        if before_part:
            return w, k, before
        return node[0] - w, length * (node[1] + 0.5 * node[0]) - k - (length - before) * w, length - before

    empty = tau_a == tau_b
    same = (ca == cb) & ~empty
    node_a = root(keys_a)  # the common node while the points share one, then the earlier point's node
    node_b = root(keys_b)
    together, active_a, active_b = same, ~same & ~empty, ~same & ~empty
    suffix_a = prefix_b = middle = same_leaf = (zero, zero, zero)
    top = int(torch.maximum(ka, kb).clamp(max=DEPTH).max()) if tau_a.numel() else -1
    for level in range(top + 1):
        length = cell_length / (1 << level)
        child = cell_length / (1 << (level + 1))
        # The earlier point is the left end of the common node: the interval is the later point's prefix in it.
        start = together & (ka == level)
        node_b = _where(start, node_a, node_b)
        active_b, together = active_b | start, together & ~start
        done = active_a & (ka <= level)
        suffix_a = _where(done, _join(whole(node_a, length), suffix_a), suffix_a)
        active_a = active_a & ~done
        active_b = active_b & ~(kb <= level)
        if level == DEPTH:
            suffix_a = _where(active_a, _join(leaf(node_a, keys_a, ja, tha, length, False), suffix_a), suffix_a)
            prefix_b = _where(active_b, _join(prefix_b, leaf(node_b, keys_b, jb, thb, length, True)), prefix_b)
            # Both points inside one leaf: each is the leaf's split at its own fraction.
            w_a, k_a, a = leaf(node_a, keys_a, ja, tha, length, True)
            w_b, k_b, b = leaf(node_a, keys_a, jb, thb, length, True)
            same_leaf = _where(together, (w_b - w_a, k_b - k_a - (b - a) * w_a, b - a), same_leaf)
            break
        index_a = (1 << level) + (ja >> (DEPTH - level))
        index_b = (1 << level) + (jb >> (DEPTH - level))
        xi_a = _keyed_normals(keys_a, index_a, 1) if levy_area else 0.0
        xi_b = _keyed_normals(keys_b, index_b, 1) if levy_area else 0.0
        sq, area_std = math.sqrt(length), math.sqrt(length / 12.0)
        left_a, right_a, left_area_a, right_area_a = _split_node(
            node_a[0], node_a[1], _keyed_normals(keys_a, index_a, 0), xi_a, sq, area_std, levy_area)
        left_b, right_b, left_area_b, right_area_b = _split_node(
            node_b[0], node_b[1], _keyed_normals(keys_b, index_b, 0), xi_b, sq, area_std, levy_area)
        left_a, left_b = (left_a, left_area_a + zero), (left_b, left_area_b + zero)
        right_a, right_b = (right_a, right_area_a + zero), (right_b, right_area_b + zero)
        bit_a = ((ja >> (DEPTH - level - 1)) & 1) == 1
        bit_b = ((jb >> (DEPTH - level - 1)) & 1) == 1
        suffix_a = _where(active_a & ~bit_a, _join(whole(right_a, child), suffix_a), suffix_a)
        prefix_b = _where(active_b & bit_b, _join(prefix_b, whole(left_b, child)), prefix_b)
        part = together & (bit_a != bit_b)
        node_b = _where(active_b, _where(bit_b, right_b, left_b), _where(part, right_a, node_b))
        node_a = _where(active_a | together, _where(bit_a, right_a, left_a), node_a)
        active_a, active_b, together = active_a | part, active_b | part, together & ~part
    for offset in range(1, int((cb - ca - 1).max()) + 1 if bool((~same & ~empty).any()) else 1):
        use = ~same & ~empty & (offset < cb - ca)
        cell_keys = mix64(lane_keys ^ mix64((ca + offset) ^ _C_CELL))
        middle = _where(use, _join(middle, whole(root(cell_keys), cell_length)), middle)
    total = _where(together, same_leaf, _join(_join(suffix_a, middle), prefix_b))
    dw = (sign * total[0]).reshape(-1, noise_dim)
    if not levy_area:
        return dw, None
    area = torch.where(total[2] > 0.0, total[1] / torch.where(total[2] > 0.0, total[2], 1.0) - 0.5 * total[0], 0.0)
    return dw, area.reshape(-1, noise_dim)

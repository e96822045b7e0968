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
from ._rng import C_RETRY, ZIG_F, ZIG_K, ZIG_R, ZIG_W, cell_constants, node_constants
from .brownian import BrownianBlock

_TWO53_INV = 1.0 / 9007199254740992.0
_TWO_PI = 2.0 * math.pi
_split_node = split_node.py_func  # the compiled split's own source, applied to tensors


def _signed(u) -> int:
    """A uint64 value as the int64 with the same bits."""
    u = int(u) & 0xFFFFFFFFFFFFFFFF
    return u - (1 << 64) if u >> 63 else u


_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)
_C_RETRY = _signed(C_RETRY)


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

"""The Brownian tree on torch devices: the numbers of ``_rng``/``_bridge``, in blocks.

Two generators produce the same increments:

* ``"numba"`` (CPU tensors): the compiled tree of ``_bridge`` fills a host
  block, split over threads by sub-batches of paths; the tensor shares its
  memory (no copy for float64);
* ``"torch"`` (any device, the default off the CPU): the same hash and
  ziggurat written with int64 tensor operations, and the tree expanded level
  by level (breadth first) over a whole block of leaves at once, so a step
  costs a few element-wise kernels over all lanes.

Integer hashing is exact in both (int64 arithmetic wraps like uint64; logical
shifts are arithmetic shifts with the sign bits masked off). The normal of a
ziggurat draw is then the same double on both; the ~1.2 % of draws that take
the slow path (wedge, tail, Box-Muller fallback) go through ``log``/``exp``/
``cos``, whose last bit may differ between libm and a device's math library.
So paths agree to round-off, not always bit for bit.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch

from . import _bridge
from ._rng import C_CELL, C_COMPONENT, C_NODE, C_PATH, C_RETRY, ZIG_F, ZIG_K, ZIG_R, ZIG_W

_TWO53_INV = 1.0 / 9007199254740992.0
_TWO_PI = 2.0 * math.pi


def _signed(u) -> int:
    """A uint64 value as the int64 with the same bits."""
    u = int(u) & 0xFFFFFFFFFFFFFFFF
    return u - (1 << 64) if u >> 63 else u


_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)
_C_PATH, _C_COMPONENT, _C_CELL, _C_RETRY = (_signed(c) for c in (C_PATH, C_COMPONENT, C_CELL, C_RETRY))


def _srl(z, s):
    """Logical right shift of int64 bits."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def mix64(z):
    """SplitMix64 finaliser on int64 tensors (bit-identical to ``_rng.mix64``)."""
    z = (z ^ _srl(z, 30)) * _M1
    z = (z ^ _srl(z, 27)) * _M2
    return z ^ _srl(z, 31)


def _mix64_host(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on NumPy uint64 arrays (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def node_constants(q: np.ndarray, kind: int) -> np.ndarray:
    """``_rng.node_constant`` for an array of heap indices, as int64 bits."""
    z = (np.asarray(q, dtype=np.uint64) * np.uint64(2) + np.uint64(kind)) ^ C_NODE
    return _mix64_host(z).view(np.int64)


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


def lane_keys(seed_key, lo: int, hi: int, m: int, device) -> torch.Tensor:
    """Stream keys of paths ``lo..hi-1`` and their ``m`` components, flattened (path-major)."""
    paths = torch.arange(lo, hi, dtype=torch.int64, device=device)
    pk = mix64(mix64(paths ^ _C_PATH) ^ _signed(seed_key))
    comp = mix64(torch.arange(m, dtype=torch.int64, device=device) ^ _C_COMPONENT)
    return mix64(pk[:, None] ^ comp[None, :]).reshape(-1)


class TreeBlocks:
    """Increments of a path range, produced in integration order as blocks of whole subtrees.

    Iterating yields ``(dW, H)`` with shapes ``(K, nb, m)`` (``H`` is None
    without Lévy area); the blocks cover the ``n_steps`` steps in order.
    ``max_elems`` bounds the leaves times lanes of one block.
    """

    def __init__(self, bm, n_steps, lo, hi, *, reverse, device, max_elems=1 << 22):
        self.m0, self.L, self.h0, self.levy = bm.base_steps, bm.level(n_steps), bm.cell_length, bm.levy_area
        self.nb, self.m = hi - lo, bm.noise_dim
        self.reverse = bool(reverse)
        self.device = torch.device(device)
        self.keys = lane_keys(bm._key, lo, hi, self.m, self.device)
        lanes = self.keys.numel()
        # Levels expanded breadth first in one block (the rest of the tree is walked depth first).
        self.b = max(0, min(self.L, int(math.floor(math.log2(max(1, max_elems // lanes))))))
        self.cells_per_block = max(1, max_elems // (lanes << self.L)) if self.b == self.L else 1

    # -- tree pieces -------------------------------------------------------------------------
    def _roots(self, cells):
        """Cell keys and root (dW, H) of the given cells: tensors (C, 1, lanes)."""
        cj = _mix64_host(np.asarray(cells, dtype=np.uint64) ^ C_CELL).view(np.int64)
        ck = mix64(self.keys[None, :] ^ torch.as_tensor(cj, device=self.device)[:, None])
        w = math.sqrt(self.h0) * normals(mix64(ck ^ int(node_constants([0], 0)[0])))
        h = math.sqrt(self.h0 / 12.0) * normals(mix64(ck ^ int(node_constants([0], 1)[0]))) if self.levy else None
        return ck, w[:, None, :], (None if h is None else h[:, None, :])

    def _split(self, ck, w, h, lvl, pos0):
        """Split every node of a frontier at level ``lvl``; rows ``pos0 + r`` of each cell."""
        P = w.shape[1]
        q = (1 << lvl) + pos0 + np.arange(P, dtype=np.uint64)
        hn = self.h0 / (1 << lvl)
        sq = math.sqrt(hn)
        c0 = torch.as_tensor(node_constants(q, 0), device=self.device)
        xi = normals(mix64(ck[:, None, :] ^ c0[None, :, None]))
        if self.levy:
            c1 = torch.as_tensor(node_constants(q, 1), device=self.device)
            z = math.sqrt(hn / 12.0) * normals(mix64(ck[:, None, :] ^ c1[None, :, None]))
            d = 3.0 * h + (0.5 * sq) * xi
            e = 2.0 * h - 0.5 * d
            hl, hr = 0.5 * (e + z), 0.5 * (e - z)
            h = torch.stack((hl, hr), dim=2).reshape(w.shape[0], 2 * P, -1)
        else:
            d = sq * xi
        w = torch.stack((0.5 * (w + d), 0.5 * (w - d)), dim=2).reshape(w.shape[0], 2 * P, -1)
        return w, h

    def _expand(self, ck, w, h, lvl, pos0):
        while lvl < self.L:
            w, h = self._split(ck, w, h, lvl, pos0)
            lvl += 1
            pos0 *= 2
        return w, h

    def _emit(self, w, h):
        """(C, P, lanes) leaves in time order -> a block in integration order."""
        K = w.shape[0] * w.shape[1]
        w = w.reshape(K, self.nb, self.m)
        h = None if h is None else h.reshape(K, self.nb, self.m)
        if self.reverse:
            w = -w.flip(0)
            h = None if h is None else h.flip(0)
        return w, h

    def _dfs(self, ck, w, h, lvl, pos):
        if self.L - lvl <= self.b:
            yield self._emit(*self._expand(ck, w, h, lvl, pos))
            return
        wc, hc = self._split(ck, w, h, lvl, pos)
        halves = [(wc[:, :1], None if hc is None else hc[:, :1], 2 * pos),
                  (wc[:, 1:], None if hc is None else hc[:, 1:], 2 * pos + 1)]
        if self.reverse:
            halves.reverse()
        for wh, hh, p in halves:
            yield from self._dfs(ck, wh, hh, lvl + 1, p)

    def __iter__(self):
        order = range(self.m0 - 1, -1, -1) if self.reverse else range(self.m0)
        order = list(order)
        if self.b == self.L:
            for c in range(0, self.m0, self.cells_per_block):
                cells = sorted(order[c : c + self.cells_per_block])
                ck, w, h = self._roots(cells)
                yield self._emit(*self._expand(ck, w, h, 0, 0))
            return
        for j in order:
            ck, w, h = self._roots([j])
            yield from self._dfs(ck, w, h, 0, 0)


class NumbaBlocks:
    """The same blocks from the compiled ``_bridge`` tree (CPU), sub-batches of paths on threads.

    With ``reuse`` the two host buffers are recycled between blocks: only safe
    when the consumer keeps no reference to a block once it asks for the next
    (no autograd graph holds the increments).
    """

    def __init__(self, bm, n_steps, lo, hi, *, reverse, max_elems=1 << 22, sub_batch=4096, dtype=np.float64,
                 reuse=False):
        self.bm, self.n, self.reverse = bm, n_steps, bool(reverse)
        self.L = bm.level(n_steps)
        self.m = bm.noise_dim
        self.nb = hi - lo
        self.K = int(max(1, min(n_steps, max_elems // max(1, self.nb * self.m))))
        # Equal sub-batches, a multiple of the thread count of them, at most ``sub_batch`` paths each.
        threads = numba.get_num_threads()
        n_sub = -(-max(threads, -(-self.nb // sub_batch)) // threads) * threads
        size = max(1, -(-self.nb // n_sub))
        self.subs = [(b, min(hi, b + size)) for b in range(lo, hi, size)]
        self.lo = lo
        self.dtype = dtype
        self.reuse = reuse

    def _fill(self, states, subs, k0, k1, dw, hh):
        bm, m = self.bm, self.m
        for b, e in subs:
            _bridge.fill_range(states[b], k0, k1, bm.base_steps, self.L, bm.cell_length, self.reverse,
                               bm.levy_area, dw, hh, (b - self.lo) * m, (e - self.lo) * m)

    def __iter__(self):
        bm, m, nb = self.bm, self.m, self.nb
        states = {}
        for b, e in self.subs:
            states[b] = _bridge.new_state(e - b, m, self.L)
            _bridge.start_paths(states[b], bm._key, b, e - b)
        n_threads = min(numba.get_num_threads(), len(self.subs))
        per = -(-len(self.subs) // n_threads)
        groups = [self.subs[i : i + per] for i in range(0, len(self.subs), per)]
        pool = ThreadPoolExecutor(max_workers=n_threads) if n_threads > 1 else None
        hshape = (nb, m) if bm.levy_area else (1, 1)
        spare = []
        try:
            for k0 in range(0, self.n, self.K):
                k1 = min(self.n, k0 + self.K)
                if spare and spare[0][0].shape[0] == k1 - k0:
                    dw, hh = spare.pop(0)
                else:
                    dw = np.empty((k1 - k0, nb, m), dtype=self.dtype)
                    hh = np.empty((k1 - k0,) + hshape if bm.levy_area else (1, 1, 1), dtype=self.dtype)
                if pool is None:
                    self._fill(states, self.subs, k0, k1, dw, hh)
                else:
                    for fut in [pool.submit(self._fill, states, g, k0, k1, dw, hh) for g in groups]:
                        fut.result()
                yield torch.from_numpy(dw), (torch.from_numpy(hh) if bm.levy_area else None)
                if self.reuse:
                    spare.append((dw, hh))
        finally:
            if pool is not None:
                pool.shutdown()


def blocks(bm, n_steps, lo, hi, *, reverse, device, generator=None, max_elems=None, dtype=torch.float64,
           reuse=False):
    """Increment blocks of paths ``lo..hi-1`` on ``device`` (see :class:`TreeBlocks`).

    ``dtype`` is the dtype of the blocks (the tree is computed in float64);
    ``reuse`` lets the CPU generator recycle its buffers (see :class:`NumbaBlocks`).
    """
    device = torch.device(device)
    if generator is None:
        generator = "numba" if device.type == "cpu" else "torch"
    if generator == "numba":
        if device.type != "cpu":
            raise ValueError("generator='numba' makes CPU tensors; use generator='torch' on other devices.")
        npdt = np.float32 if dtype == torch.float32 else np.float64
        return NumbaBlocks(bm, n_steps, lo, hi, reverse=reverse, dtype=npdt, reuse=reuse,
                           **({} if max_elems is None else {"max_elems": max_elems}))
    if generator == "torch":
        return TreeBlocks(bm, n_steps, lo, hi, reverse=reverse, device=device,
                          **({} if max_elems is None else {"max_elems": max_elems}))
    raise ValueError(f"`generator` must be 'numba' or 'torch', got {generator!r}.")

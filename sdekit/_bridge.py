"""Numba kernels of the dyadic Brownian tree (private; see ``brownian.py``).

A path on ``[ta, tb]`` is split into ``m0`` base cells of length ``h0``. In
each cell the increment ``dW`` (and, with Levy area, the space-time Levy area
``H``) of the root is drawn, and every node of the binary tree below it is
split into its two halves by the exact conditional law. The split of node
``q`` uses normals keyed by ``q`` alone, so a grid of ``m0 * 2**L`` steps is
an exact sub-sample of the grid of ``m0 * 2**(L+1)`` steps.

Split of a node of length ``h`` (halves ``k = h/2``), with ``S = dW``:

* without Levy area: ``D = sqrt(h) xi1``;
* with Levy area ``H`` (Var ``h/12``): ``D = 3H + sqrt(h)/2 xi1``,
  ``E = 2H - D/2``, ``F = sqrt(h/12) xi2``, ``H_left = (E+F)/2``,
  ``H_right = (E-F)/2``;

then ``dW_left = (S + D)/2`` and ``dW_right = (S - D)/2``. This follows from
``H = (H_l + H_r)/2 + (dW_l - dW_r)/4`` and Gaussian conditioning (the same
construction as Foster's Brownian tree with space-time Levy area; see
J. Foster, "Numerical approximations for stochastic differential equations",
Oxford DPhil thesis, 2020).

Leaves are produced in time order (or reverse time order) by a depth-first
walk that keeps one pending sibling per level: memory ``O(L)`` per path,
one split (one or two normals) per step.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, uint64

from ._rng import C_CELL, ZIG_F, ZIG_K, ZIG_R, ZIG_W, component_keys, mix64, node_constant, normal_from_bits

_ROOT = 0  # node index of a cell's root draw; splits use heap indices >= 1


@njit(cache=True)
def new_state(nb, m, L):
    """Work arrays for ``nb`` paths of ``m`` components, flattened to ``nb * m`` lanes."""
    n = nb * m
    keys = np.empty(n, dtype=np.uint64)
    cell = np.empty(n, dtype=np.uint64)
    cw = np.zeros((L + 1, n))
    sw = np.zeros((L + 1, n))
    ch = np.zeros((L + 1, n))
    sh = np.zeros((L + 1, n))
    z = np.empty((2, n))
    return keys, cell, cw, sw, ch, sh, z


@njit(cache=True)
def start_paths(state, seed_key, path_lo, nb):
    keys = state[0]
    m = keys.shape[0] // max(nb, 1)
    component_keys(seed_key, path_lo, nb, m, keys.reshape((nb, m)))


@njit(cache=True)
def _normals(keys, kw, z, row, scale):
    """``z[row, i] = scale * N(keys[i] ^ kw)`` for every lane."""
    for i in range(keys.shape[0]):
        z[row, i] = scale * normal_from_bits(mix64(keys[i] ^ kw), ZIG_K, ZIG_W, ZIG_F, ZIG_R)


@njit(cache=True)
def _draw_root(state, j, h0, levy):
    keys, cell, cw, sw, ch, sh, z = state
    cj = mix64(uint64(j) ^ C_CELL)
    for i in range(keys.shape[0]):
        cell[i] = mix64(keys[i] ^ cj)
    _normals(cell, node_constant(_ROOT, 0), cw, 0, math.sqrt(h0))
    if levy:
        _normals(cell, node_constant(_ROOT, 1), ch, 0, math.sqrt(h0 / 12.0))


@njit(cache=True)
def _split(state, lvl, q, h, levy, first_right):
    """Split the current node at level ``lvl`` (heap index ``q``, length ``h``)."""
    keys, cell, cw, sw, ch, sh, z = state
    n = keys.shape[0]
    sq = math.sqrt(h)
    _normals(cell, node_constant(q, 0), z, 0, 1.0)
    a, b = (sw, cw) if first_right else (cw, sw)  # a gets the left child, b the right
    if levy:
        _normals(cell, node_constant(q, 1), z, 1, math.sqrt(h / 12.0))
        ha, hb = (sh, ch) if first_right else (ch, sh)
        for i in range(n):
            s = cw[lvl, i]
            hh = ch[lvl, i]
            d = 3.0 * hh + 0.5 * sq * z[0, i]
            e = 2.0 * hh - 0.5 * d
            ha[lvl + 1, i] = 0.5 * (e + z[1, i])
            hb[lvl + 1, i] = 0.5 * (e - z[1, i])
            a[lvl + 1, i] = 0.5 * (s + d)
            b[lvl + 1, i] = 0.5 * (s - d)
    else:
        for i in range(n):
            s = cw[lvl, i]
            d = sq * z[0, i]
            a[lvl + 1, i] = 0.5 * (s + d)
            b[lvl + 1, i] = 0.5 * (s - d)


@njit(cache=True)
def next_increment(state, k, m0, L, h0, reverse, levy, out_dw, out_h):
    """Leaf ``k`` in integration order: ``out_dw`` = W(t_{k+1}) - W(t_k), ``out_h`` = H (flat lanes).

    With ``reverse`` the walk runs from the right end of the path to the left,
    so ``out_dw`` is the increment in the direction of integration (the
    negative of the forward increment of that cell); ``H`` is orientation-free.
    """
    keys, cell, cw, sw, ch, sh, z = state
    n = keys.shape[0]
    nleaf = 1 << L
    kc = k >> L
    i = k & (nleaf - 1)
    if i == 0:
        _draw_root(state, m0 - 1 - kc if reverse else kc, h0, levy)
        start = 0
    else:
        tz = 0
        ii = i
        while (ii & 1) == 0:
            ii >>= 1
            tz += 1
        start = L - tz
        for j in range(n):
            cw[start, j] = sw[start, j]
        if levy:
            for j in range(n):
                ch[start, j] = sh[start, j]
    ifwd = nleaf - 1 - i if reverse else i
    for lvl in range(start, L):
        _split(state, lvl, (1 << lvl) + (ifwd >> (L - lvl)), h0 / (1 << lvl), levy, reverse)
    sgn = -1.0 if reverse else 1.0
    for j in range(n):
        out_dw[j] = sgn * cw[L, j]
    if levy:
        for j in range(n):
            out_h[j] = ch[L, j]


@njit(cache=True, nogil=True)
def fill(state, k0, k1, m0, L, h0, reverse, levy, out_dw, out_h):
    """Leaves ``k0..k1-1`` into ``out_*[0:k1-k0]`` (each (nb, m)); continues the walk in ``state``."""
    for k in range(k0, k1):
        next_increment(state, k, m0, L, h0, reverse, levy, out_dw[k - k0].reshape(-1), out_h[k - k0].reshape(-1))


@njit(cache=True, nogil=True)
def fill_range(state, k0, k1, m0, L, h0, reverse, levy, out_dw, out_h, a, z):
    """Like :func:`fill`, into the flat lanes ``a..z-1`` of wider blocks ``out_*`` (k1-k0, n, m)."""
    for k in range(k0, k1):
        dw = out_dw[k - k0].reshape(-1)[a:z]
        hh = out_h[k - k0].reshape(-1)[a:z] if levy else out_h[0].reshape(-1)
        next_increment(state, k, m0, L, h0, reverse, levy, dw, hh)


@njit(cache=True, nogil=True)
def increments(seed_key, path_lo, nb, m, m0, L, h0, reverse, levy, out_dw, out_h):
    """All increments of paths ``path_lo..path_lo+nb-1``: ``out_*`` is (n_steps, nb, m)."""
    state = new_state(nb, m, L)
    start_paths(state, seed_key, path_lo, nb)
    fill(state, 0, m0 << L, m0, L, h0, reverse, levy, out_dw, out_h)


@njit(cache=True, nogil=True)
def values(seed_key, path_lo, nb, m, m0, h0, levy, max_depth, s, out):
    """W at scaled times ``s`` (in units of base cells, ``0 <= s <= m0``).

    Descends the tree to the node whose end point is ``s``; below
    ``max_depth`` levels it interpolates linearly inside the last node.
    ``out`` is (len(s), nb, m); W is 0 at the start of the path.
    """
    state = new_state(nb, m, 0)
    start_paths(state, seed_key, path_lo, nb)
    cell, cw, ch = state[1], state[2], state[4]
    n = nb * m
    flat = out.reshape((s.shape[0], n))
    starts = np.zeros((m0 + 1, n))
    for j in range(m0):
        _draw_root(state, j, h0, levy)
        for i in range(n):
            starts[j + 1, i] = starts[j, i] + cw[0, i]
    for ti in range(s.shape[0]):
        sv = s[ti]
        if sv >= m0:
            for i in range(n):
                flat[ti, i] = starts[m0, i]
            continue
        # Times within a few ulps of a node are that node (grid times are computed in floating point).
        tol = 8.0 * 2.220446049250313e-16 * max(1.0, sv)
        j = min(int(math.floor(sv + tol)), m0 - 1)
        _draw_root(state, j, h0, levy)
        for i in range(n):
            acc = starts[j, i]
            lo = float(j)
            width = 1.0
            q = 1
            lvl = 0
            wcur = cw[0, i]
            hcur = ch[0, i]
            ck = cell[i]
            while True:
                if abs(sv - lo) <= tol:
                    break
                if abs(sv - (lo + width)) <= tol:
                    acc += wcur
                    break
                if lvl == max_depth:
                    acc += wcur * (sv - lo) / width
                    break
                hn = h0 * width
                xi1 = normal_from_bits(mix64(ck ^ node_constant(q, 0)), ZIG_K, ZIG_W, ZIG_F, ZIG_R)
                if levy:
                    d = 3.0 * hcur + 0.5 * math.sqrt(hn) * xi1
                    e = 2.0 * hcur - 0.5 * d
                    f = math.sqrt(hn / 12.0) * normal_from_bits(
                        mix64(ck ^ node_constant(q, 1)), ZIG_K, ZIG_W, ZIG_F, ZIG_R
                    )
                else:
                    d = math.sqrt(hn) * xi1
                    e = 0.0
                    f = 0.0
                width *= 0.5
                if sv < lo + width:
                    wcur = 0.5 * (wcur + d)
                    hcur = 0.5 * (e + f)
                    q = 2 * q
                else:
                    acc += 0.5 * (wcur + d)
                    wcur = 0.5 * (wcur - d)
                    hcur = 0.5 * (e - f)
                    lo += width
                    q = 2 * q + 1
                lvl += 1
            flat[ti, i] = acc

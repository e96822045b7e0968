"""Counter-based normal variates: the randomness behind every Brownian path.

Every normal that sdekit draws is a pure function of ``(seed, path, component,
base cell, tree node, kind)``. Nothing is drawn "in order", so the same seed
gives the same numbers whatever the thread count, the batch split or the order
in which paths are visited; this is what makes paths reproducible and
refinable.

The 64-bit hash is the SplitMix64 finaliser (Steele, Lea & Flood 2014,
"Fast splittable pseudorandom number generators", OOPSLA), applied to keys
built by xor-ing hashed coordinates. Bits become normals with the ziggurat
method of Marsaglia & Tsang (2000), J. Stat. Softw. 5(8), 256 layers; the
rare slow paths (wedge test, tail, rejection) are exact: a rejected proposal
is replaced by an independent Box-Muller normal, which leaves the output law
exactly N(0, 1) because the ziggurat's accepted draws are exactly normal.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, uint64

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S8 = np.uint64(8)
_S11 = np.uint64(11)
_ONE = np.uint64(1)
_LOW8 = np.uint64(255)
# Distinct odd constants that separate the coordinates of a key.
C_PATH = np.uint64(0x9E3779B97F4A7C15)
C_COMPONENT = np.uint64(0xD1B54A32D192ED03)
C_CELL = np.uint64(0x8CB92BA72F3D8DD7)
C_NODE = np.uint64(0xCA5A826395121157)
C_RETRY = np.uint64(0xA0761D6478BD642F)
_TWO53_INV = 1.0 / 9007199254740992.0
_TWO_PI = 2.0 * math.pi


@njit(inline="always", cache=True)
def mix64(z):
    """SplitMix64 finaliser: a bijection of uint64 with full avalanche."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def _ziggurat_tables():
    """Marsaglia-Tsang tables for the normal with 256 equal-area layers.

    Layer ``i >= 1`` is the box ``[0, x[i]] x [f(x[i]), f(x[i+1])]``; layer 0 is
    ``[0, r] x [0, f(r)]`` plus the tail beyond ``r``, given the virtual width
    ``x[0] = v / f(r)`` so that every layer has area ``v``.
    """
    r = 3.6541528853610088
    v = 4.92867323399e-3
    f = lambda t: math.exp(-0.5 * t * t)  # noqa: E731
    x = np.zeros(257)
    x[0] = v / f(r)
    x[1] = r
    for i in range(2, 256):
        x[i] = math.sqrt(-2.0 * math.log(v / x[i - 1] + f(x[i - 1])))
    x[256] = 0.0
    k = np.array([int((x[i + 1] / x[i]) * 2.0**53) for i in range(256)], dtype=np.uint64)
    w = x[:256] * _TWO53_INV
    fx = np.array([f(t) for t in x])
    tail = math.erfc(r / math.sqrt(2.0))  # P(|Z| > r), used only in tests
    return k, w, fx, r, tail


ZIG_K, ZIG_W, ZIG_F, ZIG_R, ZIG_TAIL = _ziggurat_tables()


@njit(inline="always", cache=True)
def _uniform_open(bits):
    """A double in (0, 1) from the top 53 bits."""
    return (float(bits >> _S11) + 0.5) * _TWO53_INV


@njit(cache=True)
def _normal_slow(bits, i, x, zk, zw, zf, r):
    """Wedge test, tail and rejection of the ziggurat (about 1.2% of draws)."""
    b2 = mix64(bits ^ C_RETRY)
    ax = abs(x)
    sign = -1.0 if x < 0.0 else 1.0
    if i == 0:
        # Tail beyond r, sampled exactly (Marsaglia 1964) with a counter chain.
        while True:
            b3 = mix64(b2 ^ C_RETRY)
            a = -math.log(_uniform_open(b2)) / r
            b = -math.log(_uniform_open(b3))
            if 2.0 * b > a * a:
                return sign * (r + a)
            b2 = mix64(b3 ^ C_RETRY)
    y = zf[i] + _uniform_open(b2) * (zf[i + 1] - zf[i])
    if y < math.exp(-0.5 * ax * ax):
        return x
    # Rejected: an independent exact normal keeps the law exactly N(0, 1).
    b3 = mix64(b2 ^ C_RETRY)
    b4 = mix64(b3 ^ C_RETRY)
    rad = math.sqrt(-2.0 * math.log(_uniform_open(b3)))
    return rad * math.cos(_TWO_PI * _uniform_open(b4))


@njit(inline="always", cache=True)
def normal_from_bits(bits, zk, zw, zf, r):
    """Standard normal from 64 random bits (ziggurat, exact)."""
    i = bits & _LOW8
    j = bits >> _S11
    x = float(j) * zw[i]
    if (bits >> _S8) & _ONE:
        x = -x
    if j < zk[i]:
        return x
    return _normal_slow(bits, i, x, zk, zw, zf, r)


@njit(inline="always", cache=True)
def node_constant(node, kind):
    """Hash of a tree node (heap index) and draw kind (0: increment, 1: Levy area)."""
    return mix64((uint64(node) * uint64(2) + uint64(kind)) ^ C_NODE)


@njit(inline="always", cache=True)
def cell_constant(cell):
    """Hash of a base cell's index."""
    return mix64(uint64(cell) ^ C_CELL)


@njit(cache=True)
def node_constants(nodes, kind):
    """:func:`node_constant` of every heap index in the 1-D array ``nodes`` (uint64 array)."""
    out = np.empty(nodes.shape[0], dtype=np.uint64)
    for i in range(nodes.shape[0]):
        out[i] = node_constant(nodes[i], kind)
    return out


@njit(cache=True)
def cell_constants(cells):
    """:func:`cell_constant` of every cell index in the 1-D array ``cells`` (uint64 array)."""
    out = np.empty(cells.shape[0], dtype=np.uint64)
    for i in range(cells.shape[0]):
        out[i] = cell_constant(cells[i])
    return out


@njit(cache=True)
def lane_keys(seed_key, first_path, n_paths, noise_dim):
    """Stream keys of paths ``first_path .. first_path + n_paths - 1``, one per (path, component) lane.

    Returns a uint64 array of ``n_paths * noise_dim`` keys, path-major (the
    lanes of a path are consecutive, as in a C-ordered ``(n_paths, noise_dim)``
    array).
    """
    out = np.empty(n_paths * noise_dim, dtype=np.uint64)
    for path in range(n_paths):
        path_key = mix64(seed_key ^ mix64(uint64(first_path + path) ^ C_PATH))
        for component in range(noise_dim):
            out[path * noise_dim + component] = mix64(path_key ^ mix64(uint64(component) ^ C_COMPONENT))
    return out


def seed_to_key(seed) -> np.uint64:
    """Turn a user seed (any non-negative int) into a well-mixed 64-bit key."""
    state = np.random.SeedSequence(seed).generate_state(1, dtype=np.uint64)
    return np.uint64(state[0])

"""Guards against silent wrong answers: what user functions return is checked on every call, the declared noise is
probed, frozen globals recompile, memory is estimated in full and a damaged Numba cache heals itself."""

import importlib
import importlib.util
import os
import pickle
import shutil
import subprocess
import sys
import tracemalloc

import numba
import numba.core.caching
import numpy as np
import pytest

import sdekit as sk
from sdekit import problems

solve_mod = importlib.import_module("sdekit.solve")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(sk.__file__)))


# --------------------------------------------------------------------------- case 3: diagonal noise is diagonal
def _coupled(x):
    return 0.1 * (x + x.sum(axis=1, keepdims=True))  # sigma_i depends on every x_j


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_diagonal_noise_that_couples_components_is_refused(backend):
    sde = sk.SDE(lambda t, x, p: -x, lambda t, x, p: 0.1 * (x + x[:, ::-1]), noise="diagonal")
    with pytest.raises(ValueError, match=r"noise='diagonal' but component 0 of `diffusion` depends on x\[:, 2\].*"
                                         r"noise='general' with noise_dim=3.*'euler'"):
        sk.solve(sde, [1.0, 2.0, 3.0], (0.0, 1.0), method="sriw1", n_steps=8, seed=1, backend=backend)


def test_diagonal_noise_that_couples_components_is_refused_on_torch():
    import torch
    sde = sk.SDE(lambda t, x, p: -x, lambda t, x, p: 0.1 * torch.flip(x, (1,)), noise="diagonal")
    with pytest.raises(ValueError, match=r"component 0 of `diffusion` depends on x\[:, 1\]"):
        sk.solve(sde, [1.0, 2.0], (0.0, 1.0), method="euler", n_steps=8, seed=1, backend="torch")


@pytest.mark.parametrize(
    "sigma",
    [
        lambda t, x, p: 0.2 * x,  # GBM
        lambda t, x, p: 0.1 * np.sqrt(1.0 + x * x) + 0.05 * t,
        lambda t, x, p: np.array([0.1, 0.3, 0.2]) * np.sin(x) + 0.4,  # per-component constants
        lambda t, x, p: 0.3 + 0.0 * x[:, :1],  # one column broadcast: no dependence on any x_j
    ],
)
def test_componentwise_diagonal_noise_passes(sigma):
    """No false alarms: sigma_i(t, x_i) in several forms passes the probe on the numpy entry."""
    sde = sk.SDE(lambda t, x, p: -x, sigma, noise="diagonal")
    sol = sk.solve(sde, [1.0, 0.5, 2.0], (0.0, 1.0), method="sriw1", n_steps=4, n_paths=3, seed=2, backend="numpy")
    assert sol.success


# --------------------------------------------------------------------------- case 4: shapes on every call
def test_wrong_number_of_rows_is_refused_at_the_entry():
    with pytest.raises(ValueError, match=r"`rhs` returned shape \(2, 1\) for x of shape \(3, 1\); it must broadcast to \(3, 1\)"):
        sk.solve(sk.ODE(lambda t, x, p: -x[:2]), 1.0, (0.0, 1.0), method="rk4", n_steps=4, n_paths=2048)
    # (n,) against (n, 2): would broadcast along the components and mix paths
    with pytest.raises(ValueError, match=r"`rhs` returned shape \(3,\) for x of shape \(3, 2\)"):
        sk.solve(sk.ODE(lambda t, x, p: -x[:, 0]), [1.0, 2.0], (0.0, 1.0), method="rk4", n_steps=4, n_paths=2048)
    # a row of x used for every path: right shape, wrong answer
    with pytest.raises(ValueError, match=r"`rhs` mixes paths.*x\[:, i\]"):
        sk.solve(sk.ODE(lambda t, x, p: -x[0]), np.arange(8.0).reshape(4, 2), (0.0, 1.0), method="rk4", n_steps=4)


def test_a_float32_network_is_not_taken_for_mixing_paths():
    """A network computing in float32 rounds a batch and a single row differently (~1e-6): that is no mixing."""
    import torch
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 512), torch.nn.Tanh(), torch.nn.Linear(512, 512), torch.nn.Tanh(),
                              torch.nn.Linear(512, 2))
    x0 = torch.randn(64, 2, dtype=torch.float64)
    with torch.no_grad():
        for scale in (1.0, 2.0, 3.0):
            sol = sk.solve(sk.ODE(lambda t, x, p: net(x.float()).double()), x0 * scale, (0.0, 1.0), method="rk4",
                           n_steps=4, backend="torch")
            assert sol.success
        # the same network reading row 0 for every path is still refused
        with pytest.raises(ValueError, match="mixes paths"):
            sk.solve(sk.ODE(lambda t, x, p: net(x[:1].float()).double().expand(x.shape[0], 2)), x0, (0.0, 1.0),
                     method="rk4", n_steps=4, backend="torch")


def _rows3(t, x, p):
    return -x[:3]  # right on the 3-row probe, wrong on every larger batch


@pytest.mark.parametrize("backend", ["numba", "numpy", "torch"])
def test_every_call_checks_the_shape(backend):
    x0 = np.ones((2048, 2))
    with pytest.raises(ValueError, match=r"`rhs` returned shape \(3, 2\) for x of shape \((2048|\d+), 2\)"):
        sk.solve(sk.ODE(_rows3), x0, (0.0, 1.0), method="rk4", n_steps=4, backend=backend)
    if backend != "numba":  # on numba the SDE's drift takes the same (flat) adapter path as rhs above
        sde = sk.SDE(_rows3, lambda t, x, p: 0.1, noise="additive")
        with pytest.raises(ValueError, match=r"`drift` returned shape \(3, 2\)"):
            sk.solve(sde, x0, (0.0, 1.0), method="euler", n_steps=4, seed=1, backend=backend)


def test_every_call_checks_matrix_noise_and_dopri5():
    g = sk.SDE(lambda t, x, p: -x, lambda t, x, p: 0.1 * np.ones((min(x.shape[0], 3), 2, 2)), noise="general",
               noise_dim=2)
    with pytest.raises(ValueError, match=r"`diffusion` returned shape \(3, 2, 2\) for x of shape \(\d+, 2\); it must "
                                         r"broadcast to \(\d+, 2, 2\)"):
        sk.solve(g, np.ones((500, 2)), (0.0, 1.0), method="euler", n_steps=4, seed=1)

    def one_row_wrong(t, x, p):  # right at t0 (the probes), wrong later: only the per-call check sees it
        if t < 0.5:
            return -x
        return np.ones((3, 1)) * -x[0, 0]

    for backend in ("numba", "numpy"):
        with pytest.raises(ValueError, match=r"`rhs` returned shape \(3, 1\) for x of shape \(1, 1\)"):
            sk.solve(sk.ODE(one_row_wrong), np.ones((4, 1)), (0.0, 1.0), method="dopri5", backend=backend)


def test_semilinear_nonlinear_shape_is_checked():
    def bad(t, x, p):
        return -x[:3]

    sl = sk.SemilinearODE(lambda t, p: -t, lambda t, p: t, bad)
    with pytest.raises(ValueError, match=r"`nonlinear` returned shape \(3, 1\) for x of shape \(64, 1\)"):
        sk.solve(sl, np.ones((64, 1)), (0.1, 1.0), method="exp_euler", n_steps=4, backend="numpy")


# --------------------------------------------------------------------------- case 5: frozen globals
K = 1.0
KA = np.array([1.0])


def test_changed_global_recompiles_with_a_warning():
    global K
    f = sk.ODE(lambda t, x, p: -K * x)
    K = 1.0
    a = sk.solve(f, 1.0, (0.0, 1.0), method="rk4", n_steps=32).x[-1, 0, 0]
    K = 3.0
    with pytest.warns(RuntimeWarning, match=r"`rhs` reads `K` \(1.0 -> 3.0\).*recompiling.*`params`"):
        b = sk.solve(f, 1.0, (0.0, 1.0), method="rk4", n_steps=32).x[-1, 0, 0]
    ref = sk.solve(f, 1.0, (0.0, 1.0), method="rk4", n_steps=32, backend="numpy").x[-1, 0, 0]
    K = 1.0
    assert abs(a - np.exp(-1.0)) < 1e-6 and abs(b - np.exp(-3.0)) < 1e-5 and b == pytest.approx(ref, rel=1e-12)


def test_changed_closure_and_global_array_recompile():
    def make():
        k = 1.0

        def rhs(t, x, p):
            return -k * KA[0] * x

        def set_k(v):
            nonlocal k
            k = v

        return rhs, set_k

    rhs, set_k = make()
    f = sk.ODE(rhs)
    sk.solve(f, 1.0, (0.0, 1.0), method="rk4", n_steps=32)
    set_k(2.0)
    with pytest.warns(RuntimeWarning, match="`rhs` reads `k`"):
        b = sk.solve(f, 1.0, (0.0, 1.0), method="rk4", n_steps=32).x[-1, 0, 0]
    assert abs(b - np.exp(-2.0)) < 1e-5
    KA[0] = 1.5  # a global array, changed in place
    with pytest.warns(RuntimeWarning, match="`rhs` reads `KA`"):
        c = sk.solve(f, 1.0, (0.0, 1.0), method="rk4", n_steps=32).x[-1, 0, 0]
    KA[0] = 1.0
    assert abs(c - np.exp(-3.0)) < 1e-5


def test_changed_global_of_a_numba_function_recompiles():
    import numba

    global K
    K = 1.0
    f = sk.ODE(numba.njit(lambda t, x, p: -K * x))
    sk.solve(f, 1.0, (0.0, 1.0), method="rk4", n_steps=32)
    K = 2.0
    with pytest.warns(RuntimeWarning, match="`rhs` reads `K`"):
        b = sk.solve(f, 1.0, (0.0, 1.0), method="rk4", n_steps=32).x[-1, 0, 0]
    K = 1.0
    assert abs(b - np.exp(-2.0)) < 1e-5


def test_changed_global_of_a_semilinear_nonlinearity_recompiles():
    global K
    K = 1.0
    sl = sk.SemilinearODE(lambda t, p: -t, lambda t, p: t, lambda t, x, p: K * np.cos(x))

    def run(backend):
        return sk.solve(sl, np.ones((4, 1)), (0.1, 1.0), method="exp_ab2", n_steps=16, backend=backend).x[-1]

    a = run("numba")
    K = 2.5
    with pytest.warns(RuntimeWarning, match="`nonlinear` reads `K`"):
        b = run("numba")
    ref = run("numpy")
    K = 1.0
    assert np.abs(a - b).max() > 1e-3  # the change matters
    np.testing.assert_allclose(b, ref, rtol=1e-12)


# --------------------------------------------------------------------------- case 6: non-real and out-of-range input
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x0=np.array([1.0 + 2.0j])), r"`x0` must be real"),
        (dict(x0=[1.0, 2.0j]), r"`x0` must be real"),
        (dict(x0=np.array([True])), r"`x0` must be real numbers, got booleans"),
        (dict(x0=None), r"`x0` must be a number or an array of numbers, got None"),
        (dict(x0=np.zeros((0, 1))), r"`x0` has 0 rows"),
        (dict(x0=np.array([{"a": 1}], dtype=object)), r"`x0` must be a number or an array"),
        (dict(t_span=(-1e308, 1e308)), r"`t_span` must have a finite length"),
        (dict(t_span=(0.0, np.complex128(1.0 + 1.0j))), r"`t_span` must be real"),
        (dict(n_steps=10**30), r"`n_steps` must be at most 2\*\*53"),
        (dict(n_steps=None, dt=5e-324), r"dt=5e-324 gives .* steps"),
        (dict(t_span=(1e20, 1e20 + 1e6), n_steps=2**40), r"below the float64 resolution"),
        (dict(save_at=np.array([0.5 + 1.0j])), r"`save_at` must be real times"),
        (dict(n_steps=None, dt=np.complex128(0.125 + 1j)), r"`dt` must be a positive real number"),
        (dict(method="dopri5", problem=sk.ODE(lambda t, x, p: -x), max_steps=10**30), r"`max_steps` must be below 2\*\*63"),
        (dict(problem=sk.SDE(lambda t, x, p: -x * (1 + 0j), lambda t, x, p: 0.1, noise="additive"), backend="numpy"),
         r"`drift` returned complex values"),
        (dict(problem=sk.SDE(lambda t, x, p: -x * 1j, lambda t, x, p: 0.1, noise="additive"), n_paths=4000),
         r"`drift` returned complex values"),
    ],
)
def test_non_real_and_out_of_range_input(kwargs, match):
    kw = dict(problem=problems.ornstein_uhlenbeck().problem, x0=1.0, t_span=(0.0, 1.0), method="euler", n_steps=8)
    kw.update(kwargs)
    if kw["method"] == "dopri5":
        kw.pop("n_steps")
    with pytest.raises(ValueError, match=match):
        sk.solve(kw.pop("problem"), kw.pop("x0"), kw.pop("t_span"), **kw)


def test_complex_params_are_refused():
    for p in (1j, np.complex128(1.0), np.array([1.0, 2j]), [1.0, 1j]):
        with pytest.raises(ValueError, match=r"`params\[0\]` must be real"):
            sk.ODE(lambda t, x, p: -x, params=(p,))


def test_complex_tensors_are_refused():
    import torch
    ode = sk.ODE(lambda t, x, p: -x)
    with pytest.raises(ValueError, match=r"`x0` must be real"):
        sk.solve(ode, torch.ones(2, dtype=torch.complex128), (0.0, 1.0), method="rk4", n_steps=4, backend="torch")
    with pytest.raises(ValueError, match=r"`x0` must be real"):
        sk.solve(ode, torch.ones(2, dtype=torch.complex128), (0.0, 1.0), method="rk4", n_steps=4)
    with pytest.raises(ValueError, match=r"`params\[0\]` must be real"):
        sk.ODE(lambda t, x, p: -x, params=(torch.ones(2, dtype=torch.complex128),))


def test_semilinear_path_shares_the_checks():
    sl = sk.SemilinearODE(lambda t, p: -t, lambda t, p: t, lambda t, x, p: -x)
    with pytest.raises(ValueError, match=r"`n_steps` must be at most 2\*\*53"):
        sk.solve(sl, 1.0, (0.1, 1.0), method="exp_euler", n_steps=10**30)
    with pytest.raises(ValueError, match=r"`save_at` must be real times"):
        sk.solve(sl, 1.0, (0.1, 1.0), method="exp_euler", n_steps=4, save_at=[1.0 + 1j])
    with pytest.raises(ValueError, match=r"`t_grid` must be real times"):
        sk.solve(sl, 1.0, (0.1, 1.0), method="exp_euler", t_grid=np.array([0.1, 1.0 + 1j]))
    with pytest.raises(ValueError, match=r"`x0` must be real"):
        sk.solve(sl, 1.0 + 1j, (0.1, 1.0), method="exp_euler", n_steps=4)
    with pytest.raises(ValueError, match=r"`t_span` must have a finite length"):
        sk.solve(sl, 1.0, (-1e308, 1e308), method="exp_euler", n_steps=4)


# --------------------------------------------------------------------------- case 7: memory counts every array
def _decay(t, x, p):
    return -x


def test_memory_estimate_covers_the_measured_peak():
    """One path, many steps: the saved times and grid indices dominate, not the states."""
    ode = sk.ODE(_decay)
    n = 200_000  # tracemalloc traces Numba's allocations too, which slows the kernel down
    sk.solve(ode, 1.0, (0.0, 1.0), method="euler", n_steps=8)  # compile outside the measurement
    tracemalloc.start()
    sk.solve(ode, 1.0, (0.0, 1.0), method="euler", n_steps=n)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    est = solve_mod.memory_need("numba", adaptive=False, n_save=n + 1, n_paths=1, dim=1, m=0, n_steps=n)
    states = 8 * (n + 1)
    assert peak > 2.5 * states  # times and indices count as much as the states
    assert peak <= est <= 3 * peak


def test_memory_guard_refuses_what_only_the_states_would_allow(monkeypatch):
    n = 200_000
    states = 8 * (n + 1)
    monkeypatch.setattr(solve_mod, "_memory_limit", lambda: 2 * states)  # the states alone fit, the solve does not
    with pytest.raises(ValueError, match=r"storing 200001 time points .* needs .* GiB.*save_at=\[t1\]"):
        sk.solve(sk.ODE(_decay), 1.0, (0.0, 1.0), method="euler", n_steps=n)


# --------------------------------------------------------------------------- case 9: a truncated cache file heals
_HEAL = """
import warnings
import numpy as np
import sdekit as sk
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    ou = sk.SDE(lambda t, x, p: -x, lambda t, x, p: 0.5, noise="additive")
    sol = sk.solve(ou, 1.0, (0.0, 1.0), method="euler", n_steps=8, n_paths=4, seed=3, backend="numpy")
print("SUCCESS", sol.success, np.isfinite(sol.x).all())
print("WARNINGS", [str(m.message) for m in w if "cache" in str(m.message)])
"""


def test_truncated_numba_cache_file_is_discarded_and_recompiled(tmp_path):
    """On a copy of the cache (NUMBA_CACHE_DIR): the shared cache of the other tests is never touched."""
    ou = sk.SDE(lambda t, x, p: -x, lambda t, x, p: 0.5, noise="additive")
    sk.solve(ou, 1.0, (0.0, 1.0), method="euler", n_steps=8, n_paths=4, seed=3, backend="numpy")  # fills the cache
    src = os.path.join(ROOT, "sdekit", "__pycache__")
    # Where Numba's user-provided cache locator puts sdekit's entries under NUMBA_CACHE_DIR.
    sub = numba.core.caching._CacheLocator.get_suitable_cache_subpath(os.path.join(ROOT, "sdekit", "_bridge.py"))
    dst = os.path.join(str(tmp_path), sub)
    os.makedirs(dst)
    for name in os.listdir(src):
        if name.endswith((".nbi", ".nbc")):
            shutil.copy2(os.path.join(src, name), dst)
    from sdekit import _bridge

    entry = f"_bridge.new_walk-{_bridge.new_walk.py_func.__code__.co_firstlineno}."  # the current source's entries
    bad = sorted(n for n in os.listdir(dst) if n.startswith(entry) and n.endswith(".nbc"))
    assert bad, "the cache of _bridge.new_walk should exist after a solve"
    for name in bad:  # every specialization, whichever of them the solve loads
        with open(os.path.join(dst, name), "r+b") as fh:
            fh.truncate(max(1, os.path.getsize(os.path.join(dst, name)) // 3))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", _HEAL], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "SUCCESS True True" in out.stdout
    assert "new_walk" in out.stdout and "discarded it and compiling again" in out.stdout
    for name in os.listdir(dst):  # the bad entry is gone, the recompiled one reads back whole
        if name.startswith(entry) and name.endswith(".nbc"):
            with open(os.path.join(dst, name), "rb") as fh:
                pickle.loads(fh.read())


_TINY = """
from numba import njit

@njit(cache=True)
def plus_one(x):
    return x + 1.0
"""


def _load_tiny(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_kernel_cache_is_keyed_on_every_source_the_kernels_compile_in(tmp_path, monkeypatch):
    """Numba stamps a cache entry with the defining file only; sdekit's kernels inline the steps, the adaptive
    integrator and the Brownian tree from other files, so an edit there must make the cached kernels stale."""
    from sdekit import _jitcache
    from sdekit.backends import numba_backend, numba_kernels

    files = [os.path.join(ROOT, "sdekit", p) for p in _jitcache.KERNEL_SOURCES]
    assert all(os.path.exists(f) for f in files)
    assert _jitcache.DIGEST == _jitcache.source_digest(files)
    copies = []
    for f in files:
        shutil.copy(f, tmp_path / os.path.basename(f))
        copies.append(str(tmp_path / os.path.basename(f)))
    before = _jitcache.source_digest(copies)
    with open(copies[2], "a") as fh:  # schemes/_steps.py edited alone
        fh.write("# edited\n")
    assert _jitcache.source_digest(copies) != before
    kernels = [numba_kernels.fixed_step_kernel(step, matrix_noise=False) for step in numba_kernels.DIAGONAL_STEPS]
    kernels += [numba_kernels.fixed_step_kernel(step, matrix_noise=True) for step in numba_kernels.MATRIX_STEPS]
    for kernel in [*kernels, numba_backend._adaptive_range]:
        assert kernel.compiled._cache._cache_file._source_stamp[1] == _jitcache.DIGEST
    # the mechanism on a tiny cached function: same digest -> cache hit; another digest -> stale, compiled again
    src = tmp_path / "tiny_kernel.py"
    src.write_text(_TINY)
    first = _jitcache.heal_cache(_load_tiny(src, "tiny_kernel_a").plus_one)
    assert first(1.0) == 2.0 and first.stats.cache_misses
    same = _jitcache.heal_cache(_load_tiny(src, "tiny_kernel_b").plus_one)
    assert same(1.0) == 2.0 and same.stats.cache_hits and not same.stats.cache_misses
    monkeypatch.setattr(_jitcache, "DIGEST", "another-source")
    other = _jitcache.heal_cache(_load_tiny(src, "tiny_kernel_c").plus_one)
    assert other(1.0) == 2.0 and other.stats.cache_misses and not other.stats.cache_hits

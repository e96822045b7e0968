"""Every bad input gets a ValueError that names the argument and the fix."""

import numpy as np
import pytest

import sdekit as sk
from sdekit import problems

OU = problems.ornstein_uhlenbeck().problem
GBM = problems.gbm().problem
GBM_S = problems.gbm(calculus="stratonovich").problem
LIN = problems.commuting_linear().problem
NONCOMM = sk.SDE(lambda t, x, p: -x, lambda t, x, p: np.ones((x.shape[0], 2, 2)), noise="general", noise_dim=2)
ODE = problems.gaussian_pf_ode().problem


def _solve(problem=OU, x0=1.0, t_span=(0.0, 1.0), **kw):
    kw.setdefault("method", "euler")
    if kw["method"] != "dopri5":
        kw.setdefault("n_steps", 8)
    return sk.solve(problem, x0, t_span, **kw)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="rk45"), r"unknown method 'rk45' for an SDE; choose one of"),
        (dict(method="rk4"), r"'rk4' is an ODE method"),
        (dict(problem=ODE, x0=[1.0, 0.0], method="sra1"), r"'sra1' is an SDE method"),
        (dict(problem=NONCOMM, x0=[1.0, 0.0], method="milstein"), r"non-commutative 'general'.*commutative=True"),
        (dict(problem=LIN, x0=[1, 1, 1.0], method="sriw1"), r"sriw1 supports noise .*this problem has 'commutative'"),
        (dict(problem=GBM, method="sra1"), r"sra1 supports noise \['additive'\]; this problem has 'scalar'"),
        (dict(problem=GBM_S, method="euler"), r"euler solves ito SDEs; this problem is stratonovich. Use one of"),
        (dict(problem=GBM, method="euler_heun"), r"euler_heun solves stratonovich SDEs"),
        (dict(backend="cuda"), r"unknown backend 'cuda'"),
        (dict(t_span=(1.0, 1.0)), r"`t_span` must have t0 != t1"),
        (dict(t_span=(0.0, np.nan)), r"`t_span` must be finite"),
        (dict(t_span=(0.0, 1.0, 2.0)), r"`t_span` must be a pair"),
        (dict(n_steps=0), r"`n_steps` must be a positive integer"),
        (dict(n_steps=2.5), r"`n_steps` must be a positive integer"),
        (dict(n_steps=None, dt=0.3), r"dt=0.3 does not divide the span"),
        (dict(n_steps=8, dt=0.125), r"exactly one of `n_steps` or `dt`"),
        (dict(n_steps=None), r"exactly one of `n_steps` or `dt`"),
        (dict(x0=np.ones((3, 1)), n_paths=5), r"`x0` has 3 rows but n_paths=5"),
        (dict(x0=np.ones((2, 2, 2))), r"`x0` must be a scalar, \(dim,\) or \(n_paths, dim\)"),
        (dict(x0=[np.nan]), r"`x0` contains NaN"),
        (dict(x0="abc"), r"`x0` must be a number or an array"),
        (dict(n_paths=0), r"`n_paths` must be a positive integer"),
        (dict(save_at=[0.5, 2.0]), r"`save_at` times must lie in t_span"),
        (dict(save_at=[0.5, 0.25]), r"`save_at` must be strictly increasing"),
        (dict(save_at=[1 / 3]), r"not on the step grid.*Choose n_steps"),
        (dict(rtol=1e-3), r"`rtol`/`atol` make euler choose its own steps per path; drop `n_steps`/`dt`"),
        (dict(problem=GBM, rtol=1e-3, n_steps=None), r"adaptive 'euler' \(Euler–Maruyama\) is refused on multiplicative Itô noise"),
        (dict(method="implicit_euler", rtol=1e-3, n_steps=None), r"implicit_euler has no error estimate to adapt"),
        (dict(problem=ODE, x0=[1.0, 0.0], method="dopri5", n_steps=10), r"dopri5 chooses its own steps"),
        (dict(problem=ODE, x0=[1.0, 0.0], method="dopri5", rtol=-1.0), r"`rtol` must be a positive finite number"),
        (dict(problem=ODE, x0=[1.0, 0.0], method="rk4", seed=3), r"an ODE draws no noise"),
        (dict(seed=-3), r"`seed` must be a non-negative integer"),
        (dict(problem="ou"), r"`problem` must be an sdekit.SDE, ODE or SemilinearODE"),
        (dict(n_paths=10**7, n_steps=10**4), r"needs .* GiB \(more than half the memory\); pass save_at with fewer times"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _solve(**kwargs)


def test_brownian_mismatches():
    bm = sk.BrownianPath(1, t_span=(0.0, 1.0), n_paths=4, base_steps=1)
    with pytest.raises(ValueError, match="give either `seed` or `brownian`"):
        _solve(brownian=bm, seed=1)
    with pytest.raises(ValueError, match=r"`brownian` covers \(0.0, 1.0\) but the solve spans \(0.0, 2.0\)"):
        _solve(brownian=bm, t_span=(0.0, 2.0))
    with pytest.raises(ValueError, match="`brownian` has 4 paths but n_paths=3"):
        _solve(brownian=bm, n_paths=3)
    with pytest.raises(ValueError, match="sra1 needs the Lévy area: make the path with levy_area=True"):
        _solve(brownian=bm, method="sra1")
    with pytest.raises(ValueError, match=r"n_steps=12 is not a dyadic refinement.*for_steps"):
        _solve(brownian=bm, n_steps=12)
    with pytest.raises(ValueError, match="noise_dim=1 but this problem needs 2 Brownian components"):
        _solve(problem=LIN, x0=[1, 1, 1.0], brownian=bm, method="euler")
    with pytest.raises(ValueError, match="must be an sdekit.BrownianPath"):
        _solve(brownian="path")


def test_functions_returning_the_wrong_shape():
    bad = sk.SDE(lambda t, x, p: np.zeros(5), lambda t, x, p: 1.0, noise="additive")
    with pytest.raises(ValueError, match=r"`drift` returned shape \(5,\) for x of shape \(3, 1\); it must broadcast"):
        _solve(problem=bad)
    bad_g = sk.SDE(lambda t, x, p: -x, lambda t, x, p: np.ones((3, 3)), noise="general", noise_dim=2)
    with pytest.raises(ValueError, match=r"`diffusion` returned shape \(3, 3\).*noise_dim=2"):
        _solve(problem=bad_g, x0=[1.0, 1.0])


def test_function_that_raises_is_explained():
    bad = sk.SDE(lambda t, x, p: x[0, 5], lambda t, x, p: 1.0, noise="additive")
    with pytest.raises(ValueError, match=r"`drift\(t, x, params\)` raised IndexError.*batch of states"):
        _solve(problem=bad)


def test_additive_noise_that_depends_on_x():
    bad = sk.SDE(lambda t, x, p: -x, lambda t, x, p: x, noise="additive")
    with pytest.raises(ValueError, match="noise='additive' but `diffusion` depends on x"):
        _solve(problem=bad)


def test_function_numba_cannot_compile_names_the_fix():
    table = {"a": 1.0}
    bad = sk.SDE(lambda t, x, p: -x * table["a"], lambda t, x, p: 1.0, noise="additive")
    with pytest.raises(ValueError, match=r"`drift` could not be compiled by Numba.*backend='numpy'"):
        _solve(problem=bad)
    # ... and the numpy backend runs it.
    assert _solve(problem=bad, backend="numpy").success


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(noise="colored"), r"`noise` must be one of"),
        (dict(noise="additive", calculus="ito-ish"), r"`calculus` must be 'ito' or 'stratonovich'"),
        (dict(noise="general"), r"noise='general' needs `noise_dim`"),
        (dict(noise="diagonal", noise_dim=2), r"drop `noise_dim`"),
        (dict(noise="diagonal", commutative=True), r"`commutative` applies to noise='general' only"),
        (dict(noise="additive", params=1.0), r"`params` must be a tuple.*params=\(value,\)"),
        (dict(noise="additive", params=("a",)), r"`params\[0\]` must be a number or an array"),
    ],
)
def test_bad_problem_definitions(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sk.SDE(lambda t, x, p: -x, lambda t, x, p: 1.0, **kwargs)
    with pytest.raises(ValueError, match="`drift` must be a function"):
        sk.SDE(1.0, lambda t, x, p: 1.0, noise="additive")

"""numpy (reference) and numba backends agree on the same Brownian path to round-off."""

import numpy as np
import pytest

import sdekit as sk
from sdekit import problems
from sdekit.schemes import list_schemes

PROBLEMS = {
    "ou": problems.ornstein_uhlenbeck(),
    "gbm": problems.gbm(),
    "gbm_stratonovich": problems.gbm(calculus="stratonovich"),
    "diagonal_gbm": problems.diagonal_gbm(),
    "linear": problems.commuting_linear(),
    "linear_stratonovich": problems.commuting_linear(calculus="stratonovich"),
}
ADDITIVE_MATRIX = sk.SDE(
    lambda t, x, p: -x + p[0] * np.sin(t),
    lambda t, x, p: p[1] * (1.0 + t),
    noise="additive", noise_dim=2, params=(0.5, np.array([[0.3, 0.1], [0.0, 0.2], [0.05, -0.1]])),
)


# The drift-implicit and stabilized schemes (Newton iterations, many stages: the costliest cases) run on one problem
# per kernel they use and calculus, i.e. per (step function, matrix noise, calculus); the explicit schemes on every problem.
_ONE_PROBLEM_PER_KERNEL = ("implicit_euler", "implicit_euler_heun", "implicit_milstein", "stabilized")  # family names


def _cases():
    kernels_seen = set()
    for name, ex in PROBLEMS.items():
        for s in list_schemes("sde"):
            try:
                sk.get_scheme(s.name, ex.problem)
            except ValueError:
                continue
            if s.family.name in _ONE_PROBLEM_PER_KERNEL:
                kernel = (s.name, s.plan(ex.problem, ex.x0.size).step, ex.problem.matrix_noise, ex.problem.calculus)
                if kernel in kernels_seen:
                    continue
                kernels_seen.add(kernel)
            yield pytest.param(ex.problem, ex.x0, s.name, id=f"{s.name}-{name}")
    for meth in ("euler", "euler_heun", "sra1"):
        yield pytest.param(ADDITIVE_MATRIX, np.array([1.0, -1.0, 0.5]), meth, id=f"{meth}-additive_matrix")


def _x(sol):
    return sol.x if isinstance(sol.x, np.ndarray) else sol.x.numpy()


# numpy is the reference; torch runs in float64 on the CPU. The bar for torch is 1e-10 relative.
PAIRS = [pytest.param("numpy", "numba", 1e-12, id="numpy-numba"), pytest.param("numba", "torch", 1e-10, id="numba-torch")]


@pytest.mark.parametrize("ref, other, rtol", PAIRS)
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("problem, x0, method", list(_cases()))
def test_sde_backends_agree(problem, x0, method, direction, ref, other, rtol):
    span = (0.0, 1.0) if direction == "forward" else (1.0, 0.2)
    kw = dict(method=method, n_steps=24, n_paths=300, seed=21, save_at=None)
    a = sk.solve(problem, x0, span, backend=ref, **kw)
    b = sk.solve(problem, x0, span, backend=other, **kw)
    assert a.success and b.success
    np.testing.assert_allclose(_x(b), _x(a), rtol=rtol, atol=1e-14)
    np.testing.assert_array_equal(a.t, b.t)


@pytest.mark.parametrize("ref, other, rtol", PAIRS)
@pytest.mark.parametrize("method", [s.name for s in list_schemes("ode")])
def test_ode_backends_agree(method, ref, other, rtol):
    ex = problems.gaussian_pf_ode()
    kw = dict(method=method, save_at=[0.0, 0.25, 0.5, 1.0])
    adaptive = sk.get_scheme(method, ex.problem).adaptive
    if not adaptive:
        kw["n_steps"] = 16
    # torch steps a batch with one step size, so its adaptive schemes match the per-path integrators on one path.
    x0 = np.array([[1.0, -1.0]]) if adaptive and other == "torch" else np.array([[1.0, -1.0], [0.3, 0.2]])
    a = sk.solve(ex.problem, x0, (0.0, 1.0), backend=ref, **kw)
    b = sk.solve(ex.problem, x0, (0.0, 1.0), backend=other, **kw)
    np.testing.assert_allclose(_x(b), _x(a), rtol=rtol, atol=1e-14)
    if method.startswith("rodas") and other == "torch":  # torch's Jacobian by autograd, numba's by differences of f
        assert (a.stats.n_accepted, a.stats.n_rejected) == (b.stats.n_accepted, b.stats.n_rejected)
    else:
        assert a.stats == b.stats


def test_results_do_not_depend_on_the_batch():
    ou = PROBLEMS["ou"].problem
    big = sk.solve(ou, 2.0, (0, 1), method="sra1", n_steps=32, n_paths=5000, seed=4, save_at=[1.0])
    small = sk.solve(ou, 2.0, (0, 1), method="sra1", n_steps=32, n_paths=700, seed=4, save_at=[1.0])
    np.testing.assert_array_equal(small.x, big.x[:, :700])


@pytest.mark.parametrize("name", ["gbm", "diagonal_gbm", "ou"])
def test_written_out_sriw1_equals_the_tableau_interpreter(name):
    """The fast SRIW1 step and the generic SRI stepper with the SRIW1 tableau agree to round-off."""
    from sdekit import tableaus
    from sdekit.backends.numpy_backend import wrap
    from sdekit.schemes import _steps
    from sdekit.schemes.rossler import sri_tab

    ex = PROBLEMS[name]
    p = ex.problem
    dim = ex.x0.size
    f = wrap(p.drift, lambda n: (n, dim))
    g = wrap(p.diffusion, lambda n: (n, dim))
    bm = sk.BrownianPath(3, n_paths=50, noise_dim=p.noise_dim(dim), levy_area=True)
    dw, hh = bm.increments(4)
    x = np.broadcast_to(ex.x0, (50, dim)).copy()
    tab = sri_tab(tableaus.SRIW1)
    for k, h in enumerate([0.25, 0.25, -0.25, 0.25]):
        a = _steps.sriw1(f, g, p.params, tab, 0.1 * k, x, h, dw[k], hh[k])
        b = _steps.sri(f, g, p.params, tab, 0.1 * k, x, h, dw[k], hh[k])
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
        x = a

"""The registry is built from scheme declarations: a new tableau scheme is one declaration, and runs everywhere.

Also: every step function a registered scheme can plan has a compiled Numba branch that takes the numpy
step, and an unknown step fails loudly (Python side before the call; in the kernel, an error code).
"""

import math

import numpy as np
import pytest

import sdekit as sk
from sdekit import convergence, problems
from sdekit import tableaus as tb
from sdekit.backends import numba_kernels
from sdekit.schemes import SCHEMES, Scheme, list_schemes, register
from sdekit.schemes.rossler import BOTH_CALCULI, SRA, SRI


@pytest.fixture
def sra3_copy():
    """A new SRA-family scheme, declared in one statement and registered for the test only."""
    scheme = register(Scheme("sra3_copy", "sde", {"additive": 1.5}, {"additive": 3.0}, BOTH_CALCULI, levy_area=True,
                             tableau=tb.SRA3, family=SRA, reference="Rößler (2010), SRA3, under a test name."))
    yield scheme
    del SCHEMES[("sde", "sra3_copy")]


def test_a_declared_tableau_scheme_is_registered_and_checked(sra3_copy):
    ou = problems.ornstein_uhlenbeck().problem
    assert sk.get_scheme("sra3_copy", ou) is sra3_copy
    assert sra3_copy in list_schemes("sde")
    plan = sra3_copy.plan(ou, 1)
    assert (plan.n_drift, plan.n_diffusion) == (3, 3)
    with pytest.raises(ValueError, match=r"sra3_copy supports noise \['additive'\]; this problem has 'scalar'"):
        sk.get_scheme("sra3_copy", problems.gbm().problem)
    with pytest.raises(ValueError, match="'sra3_copy' is already registered as a 'sde' scheme"):
        register(sra3_copy)


# Strong order on the additive-noise exact problems: OU on every backend, and the coupled 2-D OU with a
# (2, 2) noise matrix on numba (whose matrix kernel is a separate code path; numpy and torch run the same
# step on either shape). 300 paths on 64..1024 steps put the 95% interval within about +-0.1 of the fit.
@pytest.mark.parametrize("make, backend", [
    (problems.ornstein_uhlenbeck, "numpy"), (problems.ornstein_uhlenbeck, "numba"), (problems.ornstein_uhlenbeck, "torch"),
    (problems.ou_matrix, "numba"),
], ids=["ou-numpy", "ou-numba", "ou-torch", "ou_matrix-numba"])
def test_a_declared_tableau_scheme_shows_its_strong_order_on_every_backend(sra3_copy, make, backend):
    exact = make()
    declared = sra3_copy.order_for(exact.problem)
    st = convergence.study(exact, ["sra3_copy"], [64, 128, 256, 512, 1024], n_paths=300, seed=7, n_boot=300,
                           backend=backend)
    fit = st.strong_fits["sra3_copy"]
    assert fit.contains_or_exceeds(declared), f"{exact.name} on {backend}: {fit} vs declared {declared}"
    assert fit.ci_high - fit.ci_low < 0.4, f"interval too wide: {fit}"


# Problems that between them make every family plan each of its steps.
_PROBLEMS = [
    problems.gbm().problem, problems.gbm(calculus="stratonovich").problem, problems.diagonal_gbm().problem,
    problems.ornstein_uhlenbeck().problem, problems.ou_matrix().problem, problems.commuting_linear().problem,
    problems.commuting_linear(calculus="stratonovich").problem, problems.gaussian_pf_ode().problem,
]


@pytest.fixture
def sri_generic():
    """SRIW1's tableau on the generic SRI interpreter (registered schemes run SRIW1's written-out step)."""
    scheme = register(Scheme("sriw1_generic", "sde", {"scalar": 1.5, "diagonal": 1.5, "additive": 1.5}, {}, ("ito",),
                             levy_area=True, tableau=tb.SRIW1, family=SRI, matrix_noise=False))
    yield scheme
    del SCHEMES[("sde", "sriw1_generic")]


def _planned_steps():
    """``{step: (scheme, problem)}``: one registered scheme and problem that plan each step function."""
    found = {}
    for scheme in list_schemes():
        for problem in _PROBLEMS:
            try:
                sk.get_scheme(scheme, problem)
            except ValueError:
                continue
            if scheme.family is not None and not scheme.adaptive:
                found.setdefault(scheme.plan(problem, 3 if problem.noise == "general" else 2).step, (scheme, problem))
    return found


def test_every_step_of_every_family_is_planned_and_has_a_kernel_branch(sri_generic):
    planned = _planned_steps()
    family_steps = {step for s in list_schemes() if s.family is not None for step in s.family.steps}
    assert family_steps == set(planned), "a family step is not exercised by any problem here"
    assert family_steps <= set(numba_kernels.KERNEL_STEPS), "a step has no compiled kernel"


@pytest.mark.parametrize("step", list(numba_kernels.KERNEL_STEPS), ids=lambda s: s.__name__)
def test_each_kernel_branch_takes_the_numpy_step(step, sri_generic):
    scheme, problem = _planned_steps()[step]
    dim = 3 if problem.noise == "general" else 2
    x0 = np.linspace(0.5, 1.0, dim)
    kw = dict(method=scheme.name, n_steps=4, save_at=None)
    if problem.is_sde:
        kw.update(n_paths=3, seed=2)
    a = sk.solve(problem, x0, (0.0, 1.0), backend="numpy", **kw)
    b = sk.solve(problem, x0, (0.0, 1.0), backend="numba", **kw)
    np.testing.assert_allclose(b.x, a.x, rtol=1e-12, atol=1e-14)


def test_an_unknown_step_fails_loudly():
    def not_a_step(f, g, p, tab, t, x, h, dw, levy_area):
        return x

    with pytest.raises(ValueError, match="no compiled kernel for the step 'not_a_step'"):
        numba_kernels.fixed_step_kernel(not_a_step, matrix_noise=False)
    with pytest.raises(ValueError, match="'sri' acts componentwise"):
        numba_kernels.fixed_step_kernel(sk.schemes._steps.sri, matrix_noise=True)
    with pytest.raises(ValueError, match="'milstein_general' takes a \\(dim, m\\) diffusion matrix only"):
        numba_kernels.fixed_step_kernel(sk.schemes._steps.milstein_general, matrix_noise=False)


def test_each_step_has_a_kernel_of_its_own():
    """One kernel per step (and noise shape), each with its own name and so its own cache entry: a solve compiles
    only the kernel it runs, and no kernel can load another step's code."""
    kernels = {(step, matrix): numba_kernels.fixed_step_kernel(step, matrix)
               for step in numba_kernels.KERNEL_STEPS for matrix in (False, True)
               if step in (numba_kernels.MATRIX_STEPS if matrix else numba_kernels.DIAGONAL_STEPS)}
    assert {step for step, _ in kernels} == set(numba_kernels.KERNEL_STEPS)
    names = {kernel.py_func.__qualname__ for kernel in kernels.values()}
    assert len(names) == len(kernels)
    assert all(numba_kernels.fixed_step_kernel(step, matrix) is kernel for (step, matrix), kernel in kernels.items())


@pytest.mark.parametrize("orders", [{"diagonal": 0.0}, {"diagonal": -0.5}, {"diagonal": math.inf}, {"diagonal": "1"}])
def test_a_scheme_declaring_no_convergence_is_refused(orders):
    """A declared order is the rate the registry-driven tests hold the scheme to (tests/test_orders.py): 0, a
    negative, an infinite or a non-numeric one would let any result pass."""
    from sdekit.schemes import Scheme

    with pytest.raises(ValueError, match=r"scheme 'bad': strong_order must map noise types to positive orders"):
        Scheme("bad", "sde", orders, {"diagonal": 1.0})
    with pytest.raises(ValueError, match=r"scheme 'bad': weak_order must map"):
        Scheme("bad", "sde", {"diagonal": 1.0}, orders)

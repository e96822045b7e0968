"""Every (scheme, noise type) in the registry shows its declared order on an exact problem.

The registry is read, so a new scheme or a new supported noise type brings
its test with it. Strong errors are measured against the exact solution on
the same Brownian path; the order is fitted with a 95% bootstrap interval
over paths, which must contain the declared order or lie above it (linear
problems such as OU often show more), and be narrower than ±0.2.
"""

import numpy as np
import pytest

import sdekit as sk
from sdekit import convergence, problems
from sdekit.schemes import list_schemes

# One exact problem per noise class and calculus. Non-commutative general
# noise has no closed-form solution here; its order 0.5 is not asserted.
EXACT = {
    ("scalar", "ito"): lambda: problems.gbm(a=1.0, b=0.5),
    ("scalar", "stratonovich"): lambda: problems.gbm(a=1.0, b=0.5, calculus="stratonovich"),
    ("diagonal", "ito"): lambda: problems.diagonal_gbm(),
    ("diagonal", "stratonovich"): lambda: problems.diagonal_gbm(calculus="stratonovich"),
    ("additive", "ito"): lambda: problems.ornstein_uhlenbeck(),
    ("additive", "stratonovich"): lambda: problems.ornstein_uhlenbeck(),
    ("commutative", "ito"): lambda: problems.commuting_linear(),
    ("commutative", "stratonovich"): lambda: problems.commuting_linear(calculus="stratonovich"),
}

CASES = [
    pytest.param(s.name, noise, calc, id=f"{s.name}-{noise}-{calc}")
    for s in list_schemes("sde")
    for noise in s.strong_order
    for calc in s.calculus
    if (noise, calc) in EXACT
]


# The asymptotic range: on these problems the local slopes have settled (to
# within about 0.01) from 256 steps on; coarser grids bias the fitted slope by
# more than the Monte Carlo interval, which covers sampling noise only.
STEPS = [256, 512, 1024, 2048, 4096]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("method, noise, calculus", CASES)
def test_strong_order(method, noise, calculus, backend):
    exact = EXACT[(noise, calculus)]()
    declared = sk.get_scheme(method, exact.problem).order_for(exact.problem)
    st = convergence.strong_study(exact, [method], STEPS, n_paths=1000, seed=7, n_boot=500, backend=backend)
    fit = st.fits[method]
    assert fit.contains_or_exceeds(declared), f"{method} on {exact.name}: {fit} vs declared {declared}"
    assert fit.ci_high - fit.ci_low < 0.4, f"interval too wide: {fit}"


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("method", [s.name for s in list_schemes("ode") if not s.adaptive])
def test_ode_order_on_the_gaussian_flow(method, backend):
    exact = problems.gaussian_pf_ode()
    declared = sk.get_scheme(method, exact.problem).order_for(exact.problem)
    st = convergence.strong_study(exact, [method], [32, 64, 128, 256], n_paths=3, n_boot=10, backend=backend)
    fit = st.fits[method]
    # Deterministic: no sampling interval; the local slopes must all sit at the order.
    assert np.all(np.abs(fit.local_slopes - declared) < 0.1), fit.local_slopes


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_dopri5_error_follows_the_tolerance(backend):
    exact = problems.gaussian_pf_ode()
    ref = exact.exact(None, exact.x0, exact.t_span)
    errs = []
    for rtol in (1e-4, 1e-6, 1e-8):
        sol = sk.solve(exact.problem, exact.x0, exact.t_span, method="dopri5", rtol=rtol, atol=rtol * 1e-2,
                       backend=backend)
        errs.append(np.abs(np.asarray(sol.x[-1, 0]) - ref).max())
        assert errs[-1] < 10 * rtol
    assert errs[0] > errs[1] > errs[2]


def test_dopri5_dense_output_and_reverse_time():
    exact = problems.gaussian_pf_ode()
    ts = np.linspace(0, 1, 7)
    sol = sk.solve(exact.problem, exact.x0, (0.0, 1.0), method="dopri5", save_at=ts, rtol=1e-9, atol=1e-12)
    for i, t in enumerate(ts):
        np.testing.assert_allclose(sol.x[i, 0], exact.exact(None, exact.x0, (0.0, t)), rtol=1e-7, atol=1e-9)
    back = sk.solve(exact.problem, sol.x[-1, 0], (1.0, 0.0), method="dopri5", rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(back.x[-1, 0], exact.x0, rtol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("method, steps", [("euler", [4, 8, 16, 32, 64]), ("sriw1", [4, 8, 16, 32, 64])])
def test_weak_order_on_gbm_mean(method, steps):
    """Weak order with common random numbers: E X_T - E X_T^exact on the same paths."""
    exact = problems.gbm(a=1.0, b=0.5)
    declared = sk.get_scheme(method, exact.problem).weak_order["scalar"]
    steps, err, se = convergence.weak_errors(exact, method, steps, lambda x: x, n_paths=100000, seed=4)
    assert np.all(np.abs(err) > 10 * se), (err, se)  # the bias stands well above the Monte Carlo noise
    fit = convergence.fit_weak_order(1.0 / steps, err, se)
    assert fit.contains_or_exceeds(declared), str(fit)
    assert fit.ci_high - fit.ci_low < 0.4, str(fit)

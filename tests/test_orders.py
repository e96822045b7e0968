"""Every (scheme, noise type) in the registry shows its declared order on an exact problem.

The registry is read, so a new scheme or a new supported noise type brings
its test with it. Strong errors are measured against the exact solution on
the same Brownian path; the order is fitted with a 95% bootstrap interval
over paths, which must contain the declared order or lie above it (linear
problems such as OU often show more), and be narrower than ±0.2.

The linear problems (GBM, commuting linear systems) have ``sigma'' = 0``, which hides
errors of difference quotients of ``sigma``; every (scheme, noise class, calculus) is
also tested on a problem whose diffusion is nonlinear in ``x`` (Lamperti-solvable,
:func:`sdekit.problems.lamperti`).
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
# more than the Monte Carlo interval, which covers sampling noise only. That
# remaining bias is allowed for (SETTLED): drift-implicit Euler on the commuting
# linear systems, whose error is mostly the drift's, C h (1 - c h) with c ~ |A|
# (backward Euler: (1 - z)^-n e^{-nz} = 1 + n z^2 / 2 + n z^3 / 3 + ...), fits
# 0.999 [0.999, 1.000]: order 1 approached from below, by 0.001.
STEPS = [256, 512, 1024, 2048, 4096]
SETTLED = 0.01


# torch runs the same step source as numba; it repeats every case of the explicit schemes, and one case of each
# drift-implicit and stabilized scheme (whose torch steps tests/test_parity.py checks against numba step by step:
# their Newton iterations and many stages make a 4,096-step torch study cost minutes).
_NEWTON_OR_STAGES = ("implicit_euler", "implicit_euler_heun", "implicit_milstein", "stabilized")  # family names
_TORCH_ONE_CASE = {s.name for s in list_schemes("sde") if s.family is not None and s.family.name in _NEWTON_OR_STAGES}
_FIRST_CASE = {}
for _p in CASES:
    _FIRST_CASE.setdefault(_p.values[0], _p.values)
ORDER_CASES = [
    pytest.param(*p.values, backend, id=f"{p.id}-{backend}")
    for p in CASES
    for backend in ("numba", "torch")
    if backend == "numba" or p.values[0] not in _TORCH_ONE_CASE or _FIRST_CASE[p.values[0]] == p.values
]


@pytest.mark.slow
@pytest.mark.parametrize("method, noise, calculus, backend", ORDER_CASES)
def test_strong_order(method, noise, calculus, backend):
    _assert_declared_strong_order(EXACT[(noise, calculus)](), method, STEPS, 1000, backend)


def _assert_declared_strong_order(exact, method, steps, n_paths, backend):
    """The fitted strong order's 95% bootstrap interval contains or exceeds the declared order (less SETTLED), and is
    narrower than 0.4."""
    declared = sk.get_scheme(method, exact.problem).order_for(exact.problem)
    st = convergence.study(exact, [method], steps, n_paths=n_paths, seed=7, n_boot=500, backend=backend)
    fit = st.strong_fits[method]
    assert fit.contains_or_exceeds(declared - SETTLED), f"{method} on {exact.name}: {fit} vs declared {declared}"
    assert fit.ci_high - fit.ci_low < 0.4, f"interval too wide: {fit}"


# Diffusion nonlinear in x (sigma'' != 0), exact by the Lamperti transform, t0 = 0.5 and a
# time-dependent drift. Scalar: sinh family, one component; diagonal: arctan family, two
# components with different coefficients; commutative: sinh family, 2 components driven by
# 2 Brownian motions through a full matrix. Additive noise cannot be nonlinear in x, and
# non-commutative general noise has no exact solution here.
NONLINEAR = {
    (noise, calc): (lambda kind=kind, lam_noise=lam_noise, calc=calc: problems.lamperti(kind, lam_noise, calc))
    for noise, kind, lam_noise in [("scalar", "sinh", "scalar"), ("diagonal", "arctan", "diagonal"),
                                   ("commutative", "sinh", "general")]
    for calc in ("ito", "stratonovich")
}
# numba runs every case; torch (the same step source) runs milstein, the scheme with calculus-dependent
# support values. 500 paths on 256..2048 steps (the local slopes have settled there) keep every 95%
# interval narrower than 0.15 at a few seconds per case, most of it compiling the problem's functions.
NONLINEAR_CASES = [
    pytest.param(s.name, noise, calc, backend, id=f"{s.name}-{noise}-{calc}-{backend}")
    for s in list_schemes("sde")
    for noise in s.strong_order
    for calc in s.calculus
    if (noise, calc) in NONLINEAR
    for backend in (("numba", "torch") if s.name == "milstein" else ("numba",))
]
NONLINEAR_STEPS = [256, 512, 1024, 2048]


def test_every_nonlinear_capable_noise_class_is_covered():
    """Each (scheme, noise, calculus) of the registry whose diffusion can depend on x has a nonlinear problem."""
    for s in list_schemes("sde"):
        for noise in set(s.strong_order) & {"scalar", "diagonal", "commutative"}:
            for calc in s.calculus:
                assert (noise, calc) in NONLINEAR, (s.name, noise, calc)


@pytest.mark.slow
@pytest.mark.parametrize("method, noise, calculus, backend", NONLINEAR_CASES)
def test_strong_order_with_diffusion_nonlinear_in_x(method, noise, calculus, backend):
    _assert_declared_strong_order(NONLINEAR[(noise, calculus)](), method, NONLINEAR_STEPS, 500, backend)


@pytest.mark.parametrize("calculus", ["ito", "stratonovich"])
@pytest.mark.parametrize("noise", ["scalar", "general"])
def test_milstein_mean_local_error_is_order_h2(noise, calculus):
    """One step of milstein from x0 on the exact problem without drift: E[X_1 - X(h)] = O(h^2).

    The derivative-free step replaces ``L^j sigma`` by a difference quotient. Read with the
    Stratonovich ``dW_j dW_k`` (mean ``h delta_jk``), a one-sided quotient leaves a mean local
    error ``(1/4) sum_j sigma_j^T (D^2 sigma) sigma_j h^{3/2}`` (scalar: ``(1/4) sigma'' sigma^2 h^{3/2}``,
    22 h^2 here at h = 1e-4), which makes the global order 1/2; the consistent step has
    ``O(h^2)`` (coefficient about 0.2 here). Common random numbers and 200,000 paths: the tolerance is
    4 standard errors plus ``h^2``.
    """
    ex = problems.lamperti("sinh", noise, calculus, kappa=0.0)
    sde = ex.problem
    step, tab, _, _ = sk.get_scheme("milstein", sde).plan(sde, ex.x0.size)
    h = 1e-4
    m = sde.noise_dim(ex.x0.size)
    rng = np.random.default_rng(11)
    dw = np.sqrt(h) * rng.standard_normal((200_000, m))
    x = np.tile(ex.x0, (dw.shape[0], 1))
    p = sde.params
    if calculus == "ito":  # no drift in the Stratonovich form: the Itô drift is the correction alone
        assert np.allclose(sde.drift(0.0, x, p), 0.5 * p[1] * x)
    y = step(sde.drift, sde.diffusion, p, tab, 0.0, x, h, dw, np.zeros_like(dw))
    B = p[2] if noise == "general" else p[2][:, None]
    exact = np.sinh(np.arcsinh(x) + dw @ B.T)
    d = (y - exact).sum(axis=1)
    mean, se = d.mean(), d.std(ddof=1) / np.sqrt(d.size)
    assert abs(mean) < 4 * se + h * h, (mean, se)


@pytest.mark.parametrize("calculus, per_step", [("ito", 2), ("stratonovich", 3)])
@pytest.mark.parametrize("noise", ["scalar", "general"])
def test_milstein_counts_the_diffusion_evaluations_it_makes(noise, calculus, per_step):
    """Stats report the diffusion calls the step makes (Stratonovich: central quotients, one more per component)."""
    ex = problems.lamperti("sinh", noise, calculus)
    m = ex.problem.noise_dim(ex.x0.size)
    expected = per_step if noise == "scalar" else 1 + (per_step - 1) * m
    calls = []

    def g(t, x, p):
        calls.append(t)
        return ex.problem.diffusion(t, x, p)

    sde = sk.SDE(ex.problem.drift, g, noise=ex.problem.noise, calculus=calculus, commutative=noise == "general",
                 noise_dim=m if noise == "general" else None, params=ex.problem.params)
    counts, stats = [], []
    for n in (4, 8):  # the difference removes calls made outside the steps (entry checks)
        calls.clear()
        sol = sk.solve(sde, ex.x0, ex.t_span, method="milstein", n_steps=n, n_paths=8, seed=0, backend="numpy")
        counts.append(len(calls))
        stats.append(sol.stats.n_diffusion_evals / sol.stats.n_paths)
    assert counts[1] - counts[0] == 4 * expected
    assert stats == [4 * expected, 8 * expected]


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("method", [s.name for s in list_schemes("ode") if not s.adaptive])
def test_ode_order_on_the_gaussian_flow(method, backend):
    exact = problems.gaussian_pf_ode()
    declared = sk.get_scheme(method, exact.problem).order_for(exact.problem)
    st = convergence.study(exact, [method], [32, 64, 128, 256], n_paths=3, n_boot=10, backend=backend)
    fit = st.strong_fits[method]
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
    st = convergence.study(exact, [method], steps, n_paths=100000, seed=4, n_boot=10)
    steps, err, se = st.steps, st.weak_error(method), st.weak_se(method)
    assert np.all(np.abs(err) > 10 * se), (err, se)  # the bias stands well above the Monte Carlo noise
    fit = convergence.fit_weak_order(1.0 / steps, err, se)
    assert fit.contains_or_exceeds(declared), str(fit)
    assert fit.ci_high - fit.ci_low < 0.4, str(fit)

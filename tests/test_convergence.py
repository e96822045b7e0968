"""The convergence harness: its statistics against closed forms, its modes, tables and command line."""

import csv
import io
import math
import subprocess
import sys

import numpy as np
import pytest
from cli_checks import one_line_error
from scipy.stats import norm

from sdekit import convergence, problems


def test_weak_error_and_its_standard_error_match_the_closed_form_for_em_on_gbm():
    """EM on GBM: E X^h_T = x0 (1 + a h)^n; Var(X^h_T - X_T) from the moments of both (same path)."""
    a, b, x0, T, n_paths = 1.0, 0.5, 1.0, 1.0, 20000
    st = convergence.study(problems.gbm(a=a, b=b, x0=x0, T=T), ["euler"], [4, 8, 16, 32], n_paths=n_paths, seed=11,
                           n_boot=50)
    for i, n in enumerate(st.steps):
        h = T / n
        mean_d = x0 * (1 + a * h) ** n - x0 * math.exp(a * T)
        e_hh = x0**2 * ((1 + a * h) ** 2 + b * b * h) ** n
        e_xx = x0**2 * math.exp((2 * a + b * b) * T)
        e_hx = x0**2 * (math.exp(a * h) * (1 + a * h + b * b * h)) ** n
        sd = math.sqrt(e_hh - 2 * e_hx + e_xx - mean_d**2)
        err, se = st.weak_error("euler")[i], st.weak_se("euler")[i]
        assert abs(se - sd / math.sqrt(n_paths)) < 0.1 * sd / math.sqrt(n_paths), (n, se, sd)
        assert abs(err - mean_d) < 4 * se, (n, err, mean_d, se)


def test_strong_error_and_its_standard_error_match_the_closed_form_for_em_on_ou():
    """EM on OU is a linear Gaussian recursion: X^h_T - X_T is Gaussian with known mean and variance."""
    theta, mu, sigma, x0, T, n_paths = 1.0, 0.5, 0.3, 2.0, 1.0, 20000
    ex = problems.ornstein_uhlenbeck(theta, mu, sigma, x0, T, ref_level=12)  # reference error ~1e-7
    st = convergence.study(ex, ["euler"], [4, 8, 16, 32], n_paths=n_paths, seed=12, n_boot=50)
    for i, n in enumerate(st.steps):
        h = T / n
        r = 1 - theta * h
        m = (r**n - math.exp(-theta * T)) * (x0 - mu)
        var = 0.0
        for k in range(n):
            c, lo, hi = r ** (n - 1 - k), k * h, (k + 1) * h
            i1 = (math.exp(-theta * (T - hi)) - math.exp(-theta * (T - lo))) / theta
            i2 = (math.exp(-2 * theta * (T - hi)) - math.exp(-2 * theta * (T - lo))) / (2 * theta)
            var += sigma**2 * (c * c * h - 2 * c * i1 + i2)
        s = math.sqrt(var)
        mean_abs = s * math.sqrt(2 / math.pi) * math.exp(-m * m / (2 * var)) + m * (1 - 2 * norm.cdf(-m / s))
        sd_abs = math.sqrt(var + m * m - mean_abs**2)
        err, se = st.strong_error("euler")[i], st.strong_se("euler")[i]
        assert abs(se - sd_abs / math.sqrt(n_paths)) < 0.1 * sd_abs / math.sqrt(n_paths), (n, se, sd_abs)
        assert abs(err - mean_abs) < 4 * se, (n, err, mean_abs, se)
        # The weak error of E X_T is exactly the mean of the difference.
        assert abs(st.weak_error("euler")[i] - m) < 4 * st.weak_se("euler")[i]


@pytest.mark.parametrize(
    "name, method, order",
    [("gbm", "euler", 0.5), ("ou", "euler", 1.0), ("gbm", "milstein", 1.0), ("ou", "sra1", 1.5),
     ("gbm", "sriw1", 1.5), ("gaussian_pf_ode", "rk4", 4.0)],
)
def test_the_harness_recovers_known_orders(name, method, order):
    ode = name == "gaussian_pf_ode"
    st = convergence.study(name, [method], [16, 32, 64, 128] if ode else [256, 512, 1024, 2048],
                           n_paths=2 if ode else 800, seed=3, n_boot=300)
    fit = st.strong_fits[method]
    if ode:  # deterministic: no sampling interval, the slopes themselves sit at the order
        assert np.all(np.abs(fit.local_slopes - order) < 0.1), fit.local_slopes
    else:
        assert fit.contains_or_exceeds(order), f"{method} on {name}: {fit}"


def test_analytic_free_reference_agrees_with_the_exact_one():
    kw = dict(n_paths=1000, seed=5, n_boot=200)
    exact = convergence.study("gbm", ["euler", "milstein"], "16..256", **kw)
    fine = convergence.study("gbm", ["euler", "milstein"], "16..256", reference="sriw1", reference_steps=8192, **kw)
    assert fine.reference == "sriw1 on 8192 steps"
    assert fine.reference_error < 1e-3
    for m in ("euler", "milstein"):
        # The reference's own error is far below the schemes': the per-path errors hardly move.
        np.testing.assert_allclose(fine.strong_error(m), exact.strong_error(m), rtol=0.02)
        np.testing.assert_allclose(fine.weak_error(m), exact.weak_error(m), atol=2 * fine.reference_error)
        a, b = exact.strong_fits[m], fine.strong_fits[m]
        assert a.ci_low <= b.ci_high and b.ci_low <= a.ci_high, (a, b)


def test_plain_problem_with_a_fine_reference_and_matrix_additive_noise():
    ex = problems.ou_matrix()
    st = convergence.study(ex.problem, ["euler", "sra1"], "8..64", x0=ex.x0, t_span=ex.t_span, n_paths=300,
                           reference="sra1", reference_steps=1024, n_boot=100)
    assert st.problem == "SDE" and st.strong_fits["sra1"].order > 1.4
    truth = convergence.study(ex, ["euler", "sra1"], "8..64", n_paths=300, n_boot=100)
    np.testing.assert_allclose(st.strong_error("euler"), truth.strong_error("euler"), rtol=0.02)


def test_records_tables_and_work_counts():
    st = convergence.study("gbm", ["euler", "milstein"], [8, 16, 32, 64], n_paths=200, n_boot=50)
    recs = st.records()
    assert len(recs) == 8 and {r["method"] for r in recs} == {"euler", "milstein"}
    rows = list(csv.DictReader(io.StringIO(st.table("csv"))))
    assert len(rows) == 8 and float(rows[0]["strong_error"]) == pytest.approx(recs[0]["strong_error"])
    # Function evaluations per path: euler 1 drift + 1 diffusion per step, milstein 1 + 2.
    np.testing.assert_array_equal(st.evals["euler"], 2 * st.steps)
    np.testing.assert_array_equal(st.evals["milstein"], 3 * st.steps)
    assert np.all(st.seconds["euler"] > 0)
    md = st.table("markdown")
    assert md.count("\n| euler |") == 4 and "strong order euler" in md
    assert "local slopes" in st.table()
    with pytest.raises(ValueError, match="fmt"):
        st.table("latex")


def test_plots_are_written(tmp_path):
    st = convergence.study("ou", ["euler", "sra1"], [8, 16, 32], n_paths=100, n_boot=20)
    for name, kind in (("e.png", "errors"), ("w.svg", "work")):
        st.plot(tmp_path / name, kind=kind)
        assert (tmp_path / name).stat().st_size > 5000
    assert (tmp_path / "w.svg").read_text().lstrip().startswith("<?xml")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(problem="gbm", steps="8,12"), "12 is not 8 times a power of two"),
        (dict(problem="gbm", steps="8..100"), "100 is not 8 times a power of two"),
        (dict(problem="gbm", steps="8"), "at least two"),
        (dict(problem="gbm", steps="x..y"), "'8..1024'"),
        (dict(problem="nope"), "unknown problem"),
        (dict(problem=problems.gbm().problem), "needs `x0` and `t_span`"),
        (dict(problem=problems.gbm().problem, x0=[1.0], t_span=(0, 1)), "reference='<method>'"),
        (dict(problem="gbm", methods=["rk4"]), "unknown method"),
        (dict(problem="gbm", fit_from=64), "fewer than two"),
        (dict(problem="gbm", n_paths=1), "`n_paths` must be an integer >= 2"),
        (dict(problem="gaussian_pf_ode", methods=["rk4"], n_paths=0), "`n_paths`"),
        (dict(problem="gbm", n_boot=1), "`n_boot`"),
    ],
)
def test_bad_study_arguments(kwargs, match):
    kw = dict(methods=["euler"], steps="8..32", n_paths=20, n_boot=10) | kwargs
    with pytest.raises(ValueError, match=match):
        convergence.study(kw.pop("problem"), kw.pop("methods"), kw.pop("steps"), **kw)


def test_converge_command_end_to_end(tmp_path):
    out, work, table = tmp_path / "out.png", tmp_path / "work.svg", tmp_path / "t.csv"
    r = subprocess.run(
        [sys.executable, "-m", "sdekit", "converge", "--problem", "gbm", "--methods", "euler,milstein,sriw1",
         "--steps", "8..64", "--paths", "200", "--plot", str(out), "--work-plot", str(work), "--csv", str(table),
         "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert "strong order sriw1" in r.stdout and "weak order" in r.stdout
    assert "first calls (compile and set-up, not in the times above): euler " in r.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and work.stat().st_size > 5000
    assert len(table.read_text().strip().splitlines()) == 1 + 3 * 4
    bad = subprocess.run([sys.executable, "-m", "sdekit", "converge", "--problem", "nope"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode != 0 and "unknown problem" in bad.stderr


def test_fit_order_needs_two_paths():
    with pytest.raises(ValueError, match="n_paths >= 2"):
        convergence.fit_order([0.1, 0.05], [[1.0], [0.5]])


def _converge(*args):
    return subprocess.run([sys.executable, "-m", "sdekit", "converge", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_converge_refuses_one_path_and_unwritable_outputs_before_solving(tmp_path):
    """One path has no standard error (the old command printed an interval of zero width); an output that cannot
    be written is refused before the study runs, not after it."""
    one_line_error(_converge("--problem", "gbm", "--paths", 1, "--no-progress"), "--paths", ">= 2")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for option in ("--plot", "--work-plot", "--csv"):
        r = _converge("--problem", "gbm", "--steps", "8..16", "--paths", 20, "--no-progress", option,
                      blocker / "out.png")
        one_line_error(r, option, "is a file, not a folder")
        assert "strong order" not in r.stdout  # nothing was solved
    one_line_error(_converge("--problem", "gbm", "--paths", 20, "--plot", tmp_path), "--plot", "is a folder")


# --------------------------------------------------------------------------- the fits' intervals, against their levels
def _proportional_errors(rng, dts, order, n_paths, level_noise):
    """Per-path errors ``dt^order A_i B_ki``: ``A_i`` (lognormal, shared by every level, as the errors of one path are)
    and ``B_ki`` (mean 1, independent). ``E e_k = dt_k^order E A`` exactly, so the true order is ``order``."""
    shared = rng.lognormal(0.0, 1.0, n_paths)
    own = rng.gamma(1.0 / level_noise**2, level_noise**2, (len(dts), n_paths)) if level_noise else 1.0
    return np.asarray(dts)[:, None] ** order * shared * own


def test_fit_order_defaults_to_a_95_percent_interval_of_1000_resamples():
    dts = 1.0 / np.array([8, 16, 32])
    e = _proportional_errors(np.random.default_rng(3), dts, 1.0, 50, 0.3)
    default, explicit = convergence.fit_order(dts, e), convergence.fit_order(dts, e, n_boot=1000, confidence=0.95, seed=0)
    assert default.confidence == 0.95
    assert (default.ci_low, default.ci_high) == (explicit.ci_low, explicit.ci_high)


def test_strong_interval_collapses_on_errors_proportional_across_levels():
    """Errors proportional across levels on every path: every resample of the paths (the same paths at every
    level) has the slope ``order`` exactly, so the interval is that point. Resampling each level independently
    would not."""
    dts = 1.0 / np.array([8, 16, 32, 64])
    e = _proportional_errors(np.random.default_rng(0), dts, 1.5, 200, 0.0)
    fit = convergence.fit_order(dts, e, n_boot=200)
    assert fit.order == pytest.approx(1.5, abs=1e-12)
    assert fit.ci_low == pytest.approx(1.5, abs=1e-12) and fit.ci_high == pytest.approx(1.5, abs=1e-12)


@pytest.mark.parametrize("confidence", [0.95, 0.8])
def test_strong_interval_covers_the_true_order_at_its_level(confidence):
    """400 seeded studies with a known order: the bootstrap interval covers it in ``confidence`` of them, within
    3 standard errors of a binomial proportion (a wrong quantile level or per-level resampling is far outside)."""
    rng = np.random.default_rng(1)
    dts = 1.0 / np.array([8, 16, 32, 64])
    n_studies = 400
    covered = 0
    for _ in range(n_studies):
        fit = convergence.fit_order(dts, _proportional_errors(rng, dts, 1.0, 200, 0.3), n_boot=300,
                                    confidence=confidence, seed=int(rng.integers(2**31)))
        covered += fit.ci_low <= 1.0 <= fit.ci_high
    se = math.sqrt(confidence * (1 - confidence) / n_studies)
    assert abs(covered / n_studies - confidence) <= 3 * se, (covered, n_studies)


def _weak_model(dts, order=1.0):
    return 0.7 * dts**order * (1.0 + 1.5 * dts)


def test_weak_interval_covers_the_true_order_at_least_at_its_level():
    """Weak errors ``C dt^p (1 + b dt)`` plus normal noise of known standard error: the interval covers ``p`` in at
    least 95 % of 400 fits (minus 3 binomial standard errors). With the model right the lack-of-fit widening makes
    it conservative: measured 97.5 % (so the upper bound allows that, not 100 %)."""
    rng = np.random.default_rng(2)
    dts = 1.0 / np.array([8, 16, 32, 64, 128])
    se = 0.02 * _weak_model(dts)[0] * np.sqrt(dts / dts[0])
    n_fits, covered = 400, 0
    for _ in range(n_fits):
        fit = convergence.fit_weak_order(dts, _weak_model(dts) + se * rng.standard_normal(dts.size), se)
        covered += fit.ci_low <= 1.0 <= fit.ci_high
    assert 0.95 - 3 * math.sqrt(0.95 * 0.05 / n_fits) <= covered / n_fits <= 0.99, covered


@pytest.mark.parametrize("theta, steps", [(1.0, [8, 16, 32, 64, 128]), (4.0, [8, 16, 32, 64, 128]), (4.0, [4, 8, 16, 32])])
def test_weak_interval_accounts_for_lack_of_fit(theta, steps):
    """Euler's weak error in the mean of dX = -theta X dt + dW, X_0 = 1, is ``(1 - theta h)^(1/h) - exp(-theta)``
    exactly (order 1, with every higher power of h). With standard errors of 1e-4 of the error (nearly deterministic
    errors, as common random numbers give), the Monte Carlo interval alone excludes 1 (0.9992 [0.9990, 0.9995] at
    theta = 1); widened by the residual scatter it covers 1, and a misfit beyond the noise is reported."""
    h = 1.0 / np.array(steps, float)
    err = (1.0 - theta * h) ** (1.0 / h) - math.exp(-theta)
    fit = convergence.fit_weak_order(h, err, 1e-4 * np.abs(err))
    assert fit.ci_low <= 1.0 <= fit.ci_high, str(fit)
    assert fit.scatter is not None and fit.scatter > 1.0
    if not fit.power_law:
        assert "not a power law" in str(fit)


def test_weak_fit_flags_errors_that_are_not_a_power_law():
    """``dt + 40 dt^3`` with 0.1 % standard errors is no ``C dt^p (1 + b dt)``: flagged; the model itself is not."""
    dts = 1.0 / np.array([4, 8, 16, 32, 64])
    bent = convergence.fit_weak_order(dts, dts + 40 * dts**3, 1e-3 * dts)
    assert not bent.power_law and bent.scatter > 5 and "not a power law" in str(bent)
    clean = convergence.fit_weak_order(dts, _weak_model(dts), 1e-3 * _weak_model(dts))
    assert clean.power_law and clean.scatter < 1e-6
    assert clean.order == pytest.approx(1.0, abs=1e-8)
    assert clean.ci_high - clean.ci_low == pytest.approx(2 * 1.96 * (clean.ci_high - clean.order) / 1.96, rel=1e-12)


@pytest.mark.parametrize("args, match", [
    (([0.1, 0.05], [1.0, 0.5], [0.1, 0.1]), "length >= 3"),
    (([0.1, 0.05, 0.025], [1.0, 0.0, 0.2], [0.1, 0.1, 0.1]), "nonzero"),
    (([0.1, 0.05, 0.025], [1.0, 0.5, 0.2], [0.1, 0.0, 0.1]), "positive"),
])
def test_weak_fit_refuses_what_it_cannot_fit(args, match):
    with pytest.raises(ValueError, match=match):
        convergence.fit_weak_order(*args)


@pytest.mark.parametrize("spec, steps", [("8..64", [8, 16, 32, 64]), ("1..2", [1, 2]), ("3,6, 12", [3, 6, 12]),
                                         ([4, 8], [4, 8])])
def test_parse_steps(spec, steps):
    assert convergence.parse_steps(spec) == steps


@pytest.mark.parametrize("spec", ["0..8", "16..8", "-4..8", "8..48", "a..b"])
def test_parse_steps_refuses_ranges_that_are_not_doublings(spec):
    with pytest.raises(ValueError, match="steps"):
        convergence.parse_steps(spec)


def test_two_resamples_give_finite_local_standard_errors():
    """The smallest bootstrap (n_boot=2) still gives a standard error per local slope (sample std, ddof=1)."""
    dts = 1.0 / np.array([8, 16, 32])
    fit = convergence.fit_order(dts, _proportional_errors(np.random.default_rng(4), dts, 1.0, 40, 0.3), n_boot=2)
    assert np.all(np.isfinite(fit.local_se)) and np.all(fit.local_se >= 0)


def test_an_array_valued_phi_is_summed_over_its_components():
    """``phi`` returning (n, k) values: the weak error is that of the sum of the components."""
    kw = dict(methods=["euler"], steps=[4, 8, 16], n_paths=50, seed=2, n_boot=10, backend="numpy")
    both = convergence.study("ou", phi=lambda x: np.stack([x[:, 0], x[:, 0] ** 2], axis=1), **kw)
    summed = convergence.study("ou", phi=lambda x: x[:, 0] + x[:, 0] ** 2, **kw)
    np.testing.assert_allclose(both.weak_error("euler"), summed.weak_error("euler"), rtol=1e-12)

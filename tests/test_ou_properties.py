"""Property tests against the analytic Ornstein–Uhlenbeck process (hypothesis, seeded).

For random (theta, mu, sigma, x0, T) every applicable scheme's mean, variance
and covariance at two times agree with the exact values within 4 standard
errors. Euler-type schemes (euler, milstein and euler_heun coincide on
additive noise) are compared with the exact law of their own linear
recursion, so no discretisation bias enters the tolerance; SRA1/SRIW1
(weak order 2) with the continuous law, whose bias at 512 steps is ~1e-6.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import sdekit as sk
from sdekit import convergence, problems

params = st.tuples(
    st.floats(0.3, 2.0), st.floats(-1.0, 1.0), st.floats(0.1, 1.0), st.floats(-2.0, 2.0), st.floats(0.5, 2.0)
)
N = 20000
STEPS = 512


def _exact_moments(theta, mu, sigma, x0, s, t):
    mean = lambda u: mu + (x0 - mu) * np.exp(-theta * u)  # noqa: E731
    var = lambda u: sigma**2 * (1 - np.exp(-2 * theta * u)) / (2 * theta)  # noqa: E731
    cov = sigma**2 / (2 * theta) * (np.exp(-theta * (t - s)) - np.exp(-theta * (t + s)))
    return mean(s), mean(t), var(s), var(t), cov


def _euler_moments(theta, mu, sigma, x0, h, j, n):
    a = 1 - theta * h
    mean = lambda k: mu + a**k * (x0 - mu)  # noqa: E731
    var = lambda k: sigma**2 * h * (1 - a ** (2 * k)) / (1 - a**2)  # noqa: E731
    return mean(j), mean(n), var(j), var(n), a ** (n - j) * var(j)


@pytest.mark.parametrize("method", ["euler", "milstein", "euler_heun", "sra1", "sriw1"])
@given(p=params)
def test_ou_moments(method, p):
    theta, mu, sigma, x0, T = p
    prob = sk.SDE(lambda t, x, q: q[0] * (q[1] - x), lambda t, x, q: q[2], noise="additive",
                  params=(theta, mu, sigma))
    sol = sk.solve(prob, x0, (0.0, T), method=method, n_steps=STEPS, n_paths=N, seed=17, save_at=[T / 2, T])
    xs, xt = sol.x[0, :, 0], sol.x[1, :, 0]
    if method in ("sra1", "sriw1"):
        ms, mt, vs, vt, c = _exact_moments(theta, mu, sigma, x0, T / 2, T)
    else:
        ms, mt, vs, vt, c = _euler_moments(theta, mu, sigma, x0, T / STEPS, STEPS // 2, STEPS)
    assert abs(xs.mean() - ms) < 4 * np.sqrt(vs / N)
    assert abs(xt.mean() - mt) < 4 * np.sqrt(vt / N)
    assert abs(xs.var(ddof=1) - vs) < 4 * vs * np.sqrt(2 / (N - 1))
    assert abs(xt.var(ddof=1) - vt) < 4 * vt * np.sqrt(2 / (N - 1))
    cov = np.cov(xs, xt)[0, 1]
    assert abs(cov - c) < 4 * np.sqrt((vs * vt + c * c) / (N - 1))


@pytest.mark.parametrize("method, declared", [("euler", 1.0), ("sra1", 1.5)])
@given(p=params)
def test_ou_strong_order_on_the_same_path(method, declared, p):
    theta, mu, sigma, x0, T = p
    exact = problems.ornstein_uhlenbeck(theta, mu, sigma, x0, T)
    st_ = convergence.study(exact, [method], [32, 64, 128, 256], n_paths=400, seed=5, n_boot=300)
    fit = st_.strong_fits[method]
    assert fit.contains_or_exceeds(declared), str(fit)

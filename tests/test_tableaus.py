"""Coefficient tables check themselves; dopri5 agrees with scipy's independent copy."""

import dataclasses
import math

import numpy as np
import pytest
from scipy.integrate._ivp.rk import RK45

import sdekit as sk
from sdekit import tableaus as tb


def test_dopri5_matches_scipy():
    t = tb.DOPRI5
    # to round-off of the coefficients (rtol=0: assert_allclose's default relative 1e-7 would pass a wrong digit)
    np.testing.assert_allclose(t.A[:6, :5], RK45.A, rtol=0, atol=1e-15)
    np.testing.assert_allclose(t.b[:6], RK45.B, rtol=0, atol=1e-15)
    np.testing.assert_allclose(t.c[:6], RK45.C, rtol=0, atol=1e-15)
    np.testing.assert_allclose(t.b_err - t.b, RK45.E, rtol=0, atol=1e-15)  # scipy stores b_err - b
    np.testing.assert_allclose(t.dense, RK45.P, rtol=1e-15, atol=1e-15)


def _power_of_t(k):
    return lambda t, x, p: t**k + 0.0 * x


def _kutta3():
    """Kutta's third-order method (Kutta 1901; Butcher 2016, §23), not shipped: a user's Scheme of the ERK family, with
    a negative coefficient a31 = -1 that the stage loop must not skip."""
    from sdekit.schemes import Scheme
    from sdekit.schemes.runge_kutta import ERK

    tableau = tb.ButcherTableau("kutta3", np.array([[0.0, 0, 0], [0.5, 0, 0], [-1.0, 2.0, 0]]),
                                np.array([1 / 6, 2 / 3, 1 / 6]), np.array([0.0, 0.5, 1.0]), order=3)
    return Scheme("kutta3", "ode", {"ode": 3.0}, {"ode": 3.0}, tableau=tableau, family=ERK, reference="Kutta (1901).")


@pytest.mark.parametrize("method, order", [("euler", 1), ("heun", 2), ("midpoint", 2), ("rk4", 4), ("kutta3", 3)])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_one_solver_step_is_the_taylor_polynomial_and_integrates_polynomials_exactly(method, order, backend):
    """Through the solver, not the table: an explicit Runge–Kutta method with as many stages as its order p has the
    stability function ``R(z) = sum_{j <= p} z^j / j!`` (Hairer, Nørsett & Wanner 1993, §II.1, eq. 1.9), so one step of
    ``x' = x`` is that polynomial; and its quadrature ``sum b_i c_i^k`` is exact for ``x' = t^k``, ``k < p``, from any
    ``t0`` (Butcher 2016, §3.1)."""
    h = 0.3
    method = _kutta3() if method == "kutta3" else method
    one = sk.solve(sk.ODE(lambda t, x, p: x), 1.0, (0.0, h), method=method, n_steps=1, backend=backend)
    assert float(one.x[-1].ravel()[0]) == pytest.approx(sum(h**j / math.factorial(j) for j in range(order + 1)), rel=1e-14)
    t0 = 0.7
    for k in range(order):
        quad = sk.solve(sk.ODE(_power_of_t(k)), 0.0, (t0, t0 + h), method=method, n_steps=1, backend=backend)
        exact = ((t0 + h) ** (k + 1) - t0 ** (k + 1)) / (k + 1)
        assert float(quad.x[-1].ravel()[0]) == pytest.approx(exact, rel=1e-13), k


def test_weights_that_do_not_sum_to_one_fail_the_order_one_condition():
    with pytest.raises(ValueError, match=r"order-1 condition"):
        tb.ButcherTableau("twice", np.zeros((1, 1)), np.array([2.0]), np.zeros(1), order=1)


def test_mistyped_coefficients_are_rejected():
    with pytest.raises(ValueError, match=r"order-\d condition"):
        dataclasses.replace(tb.RK4, b=np.array([1 / 6, 1 / 3, 1 / 3 + 1e-3, 1 / 6 - 1e-3]))
    with pytest.raises(ValueError, match="order condition"):
        dataclasses.replace(tb.SRA1, alpha=np.array([0.3, 0.7]))
    with pytest.raises(ValueError, match="order condition"):
        dataclasses.replace(tb.SRIW1, beta4=np.array([-2, 5 / 3, -2 / 3, 1.01]))


def test_sriw1_skips_unused_drift_stages():
    np.testing.assert_array_equal(tb.SRIW1.need_f, [1, 1, 0, 0])


def test_sra_tableaus_check_their_drift_part():
    """SRA3's drift part is a third-order Runge–Kutta method; SRA1's is of order 2 only, which the check sees."""
    assert tb.SRA3.drift_order == 3
    with pytest.raises(ValueError, match=r"drift part \(A0, alpha, c0\): order-3 condition"):
        dataclasses.replace(tb.SRA1, drift_order=3)
    with pytest.raises(ValueError, match="order condition"):
        dataclasses.replace(tb.SRA3, B0=np.array([[0, 0, 0], [0, 0, 0], [1, 0.6, 0]]))

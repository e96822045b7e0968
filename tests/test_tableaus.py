"""Coefficient tables check themselves; dopri5 agrees with scipy's independent copy."""

import dataclasses

import numpy as np
import pytest
from scipy.integrate._ivp.rk import RK45

from sdekit import tableaus as tb


def test_dopri5_matches_scipy():
    t = tb.DOPRI5
    np.testing.assert_allclose(t.A[:6, :5], RK45.A, atol=1e-15)
    np.testing.assert_allclose(t.b[:6], RK45.B, atol=1e-15)
    np.testing.assert_allclose(t.c[:6], RK45.C, atol=1e-15)
    np.testing.assert_allclose(t.b_err - t.b, RK45.E, atol=1e-15)  # scipy stores b_err - b
    np.testing.assert_allclose(t.dense, RK45.P, atol=1e-14)


@pytest.mark.parametrize("tab", [tb.EULER, tb.HEUN, tb.MIDPOINT, tb.RK4, tb.DOPRI5])
def test_butcher_consistency(tab):
    np.testing.assert_allclose(tab.A.sum(axis=1), tab.c, atol=1e-14)
    assert abs(tab.b.sum() - 1) < 1e-14


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

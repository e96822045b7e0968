"""Named, nested parameters (sdekit.params): the same records reach the functions on every backend."""

import math
from collections import namedtuple

import numpy as np
import pytest
import torch

import sdekit
from sdekit.backends.numba_backend import flatten_params
from sdekit.params import extend, is_record, map_leaves

Drift = namedtuple("Drift", "rate mean")
Noise = namedtuple("Noise", "scale")
OUParams = namedtuple("OUParams", "drift noise")


def named_ou(rate=1.5, mean=(0.5, -0.25), scale=0.3):
    """dX = rate (mean - X) dt + scale dW with the coefficients read from nested records by name."""
    params = OUParams(drift=Drift(rate=rate, mean=np.array(mean)), noise=Noise(scale=scale))
    return sdekit.SDE(lambda t, x, p: p.drift.rate * (p.drift.mean - x), lambda t, x, p: p.noise.scale + 0.0 * x,
                      noise="additive", params=params)


def flat_ou(rate=1.5, mean=(0.5, -0.25), scale=0.3):
    return sdekit.SDE(lambda t, x, p: p[0] * (p[1] - x), lambda t, x, p: p[2] + 0.0 * x, noise="additive",
                      params=(rate, np.array(mean), scale))


def _numpy(x):
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@pytest.mark.parametrize("backend", ["numpy", "numba", "torch"])
def test_nested_records_solve_as_the_flat_tuple_does(backend):
    """Same seed, same scheme: the named version's paths equal the flat version's (round-off), and their mean
    at T is the exact OU mean within 4 standard errors."""
    kw = dict(method="sra1", n_steps=40, n_paths=400, seed=5, backend=backend, save_at=[1.0])
    x0 = np.array([2.0, 1.0])
    named = _numpy(sdekit.solve(named_ou(), x0, (0.0, 1.0), **kw).x[-1])
    flat = _numpy(sdekit.solve(flat_ou(), x0, (0.0, 1.0), **kw).x[-1])
    np.testing.assert_allclose(named, flat, rtol=1e-13, atol=1e-15)
    mean = np.array([0.5, -0.25]) + (x0 - np.array([0.5, -0.25])) * math.exp(-1.5)
    std = 0.3 * math.sqrt((1 - math.exp(-3.0)) / 3.0)
    assert np.all(np.abs(named.mean(axis=0) - mean) < 4 * std / math.sqrt(400))


def test_records_keep_their_class_and_leaves_are_normalised():
    p = named_ou(rate=2, mean=[1, 2]).params
    assert type(p) is OUParams and type(p.drift) is Drift and type(p.noise) is Noise
    assert isinstance(p.drift.rate, float) and p.drift.mean.dtype == np.float64
    # inside a record a plain tuple is a nested group; at the top of a plain tuple it is an array (as before)
    Group = namedtuple("Group", "inner")
    inner = sdekit.ODE(lambda t, x, p: 0.0 * x, params=Group(inner=(1, np.zeros(3)))).params.inner
    assert type(inner) is tuple and inner[0] == 1.0 and inner[1].shape == (3,)
    top = sdekit.ODE(lambda t, x, p: 0.0 * x, params=((1, 2),)).params
    assert isinstance(top[0], np.ndarray) and top[0].tolist() == [1.0, 2.0]


def test_layout_holds_structure_and_shapes_not_values():
    """New values of the same structure reuse the compiled code (same layout); another shape or class does not."""
    a = flatten_params(named_ou(rate=1.0, mean=(0.0, 0.0)).params)
    b = flatten_params(named_ou(rate=3.0, mean=(1.0, 2.0)).params)
    assert a[1] == b[1] and not np.array_equal(a[0], b[0])
    assert flatten_params(named_ou(mean=(0.0, 0.0, 0.0)).params)[1] != a[1]
    Other = namedtuple("OUParams", "drift noise")  # same name and fields, another class
    other = Other(*named_ou().params)
    assert flatten_params(sdekit.ODE(lambda t, x, p: 0.0 * x, params=other).params)[1] != a[1]


def test_changing_values_gives_the_new_answer_without_a_new_layout():
    """An ODE x' = -rate x read through a record, solved twice on numba with two rates: exp(-rate) both times."""
    Decay = namedtuple("Decay", "rate")
    ode = sdekit.ODE(lambda t, x, p: -p.rate * x, params=Decay(1.0))
    for rate in (1.0, 2.5):
        ode.params = Decay(rate)
        x = sdekit.solve(ode, 1.0, (0.0, 1.0), method="rk4", n_steps=200, backend="numba").x[-1, 0, 0]
        assert x == pytest.approx(math.exp(-rate), rel=1e-9)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_time_change_keeps_the_records(backend):
    """time_change nests the params (problem=..., time=...): a drift that reads names still solves, exactly for
    an ODE: x' = -rate x on t = u^2 T from u = 0 to 1 ends at exp(-rate T)."""
    Decay = namedtuple("Decay", "rate")
    Span = namedtuple("Span", "T")
    ode = sdekit.ODE(lambda t, x, p: -p.rate * x, params=Decay(0.7))
    changed = sdekit.time_change(ode, lambda u, q: q.T * u * u, lambda u, q: 2.0 * q.T * u, params=Span(T=2.0))
    assert changed.params.problem == Decay(0.7) and changed.params.time == Span(2.0)
    x = _numpy(sdekit.solve(changed, 1.0, (0.0, 1.0), method="rk4", n_steps=400, backend=backend).x[-1, 0, 0])
    assert float(x) == pytest.approx(math.exp(-1.4), rel=1e-8)


def test_refusals_name_the_field():
    Drift1 = namedtuple("Drift1", "rate")
    with pytest.raises(ValueError, match=r"`params\.drift\.rate` must be real"):
        sdekit.ODE(lambda t, x, p: x, params=OUParams(drift=Drift1(1j), noise=0.0))
    with pytest.raises(ValueError, match=r"`params\.noise` must be a number or an array \(or a namedtuple record of them\), got str"):
        sdekit.ODE(lambda t, x, p: x, params=OUParams(drift=Drift1(1.0), noise="loud"))
    with pytest.raises(ValueError, match=r"`params\.noise\[1\]` must be a number or an array of numbers"):
        sdekit.ODE(lambda t, x, p: x, params=OUParams(drift=Drift1(1.0), noise=(1.0, ["a", None])))
    tensor_inside = sdekit.ODE(lambda t, x, p: -p.drift.rate * x, params=OUParams(drift=Drift1(torch.tensor(1.0)),
                                                                                  noise=0.0))
    with pytest.raises(ValueError, match=r"`params\.drift\.rate` is a torch tensor; solve with backend='torch'"):
        flatten_params(tensor_inside.params)


def test_extend_and_map_leaves():
    Schedule = namedtuple("Schedule", "beta_min beta_max")
    p = extend(Schedule(0.1, 20.0), scale=2.0, offsets=(1.0, 2.0))
    assert p[:2] == (0.1, 20.0) and p.scale == 2.0 and p.offsets == (1.0, 2.0) and is_record(p)
    assert type(extend(Schedule(1.0, 2.0), scale=0.0, offsets=())) is type(p)  # one class per extension
    with pytest.raises(ValueError, match="already has the field"):
        extend(p, scale=1.0)
    with pytest.raises(ValueError, match="must be a namedtuple instance"):
        extend("0.1, 20.0", scale=1.0)
    doubled = map_leaves(lambda v: 2 * v, p)
    assert type(doubled) is type(p) and doubled.offsets == (2.0, 4.0) and doubled.beta_max == 40.0
    assert not is_record((1.0, 2.0))


def test_extend_names_the_fields_of_a_plain_tuple_by_position():
    wider = extend((1.0, [2.0, 3.0]), scale=4.0)
    assert wider[0] == 1.0 and wider.p0 == 1.0 and wider.scale == 4.0
    np.testing.assert_array_equal(wider.p1, [2.0, 3.0])
    assert type(extend((5.0, [6.0, 7.0]), scale=1.0)) is type(wider)  # one class: compiled code is reused
    with pytest.raises(ValueError, match="`record` must be a namedtuple instance or a parameters tuple, got float"):
        extend(1.0, scale=2.0)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_params_larger_than_any_fixed_buffer_compile_and_solve(backend):
    """A (4, 32, 32) covariance stack and a 3-D array after it: 4096 + 64 numbers (the numba adapter once typed the
    params on a fixed 4096-number buffer and failed to reshape them). The ODE x' = -A x with A read from the last
    block of the stack has the exact solution expm(-A t) x0; A = diag(a) here."""
    covs = np.zeros((4, 32, 32))
    a = np.linspace(0.5, 2.0, 32)
    covs[3] = np.diag(a)
    extra = np.ones((4, 4, 4))
    ode = sdekit.ODE(lambda t, x, p: -(x @ p[0][3].T) * p[1][0, 0, 0], params=(covs, extra))
    x0 = np.ones((3, 32))
    sol = sdekit.solve(ode, x0, (0.0, 1.0), method="rk4", n_steps=64, save_at=[1.0], backend=backend)
    # RK4's relative error on x' = -a x: |e^-z - R(z)| ~ z^5/120 per step, z = a h; 64 steps, twice that bound
    z = a.max() / 64
    np.testing.assert_allclose(sol.x[-1], np.exp(-a)[None, :] * x0, rtol=2 * 64 * z**5 / 120)

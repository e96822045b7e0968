"""Per-path stepping: adaptive SDE steps on the virtual Brownian path, and events, written once.

The same function, :func:`integrate_path`, runs as plain Python on NumPy arrays
(numpy backend) and compiled by Numba (numba backend), one path at a time, so
each path has its own steps, rejections and end; the torch backend runs the
same algorithm on a batch with masks (``sdekit.backends.torch_paths``).

Steps
-----
Time is kept in *cell units* ``tau = (t - lo) / cell_length`` of the path's
:class:`~sdekit.BrownianPath` (``lo`` the start of its span), where the
Brownian tree's dyadic points are exact binary fractions. An adaptive step's
end is snapped to the dyadic grid of spacing ``2**-k`` cells, the coarsest
with ``2**-k <= |h| / 8`` (the step changes by at most 1/16), so that its
Brownian values are nodes of the tree a fixed-step solve reads too, and a
rejected step is retried on the same path, refined by the bridge: no
rejection-sampling bookkeeping is needed and rejections do not bias the law
(the role of RSwM in Rackauckas & Nie 2017, DCDS-B 22(7), §4, is played by the
virtual path, as in the Brownian-tree approach of Gaines & Lyons 1997, SIAM J.
Appl. Math. 57(5)). Save times and the end of the span are stepped to exactly
(no interpolation: an SDE has no dense output of its strong order without the
path between the steps, and stepping to a save time keeps that order).

Controller: the error norm is the RMS of ``err / (atol + rtol max(|x|, |x_new|))``
(``err`` the scheme's embedded estimate, :mod:`sdekit.schemes._embedded`). A
step with norm ``<= 1`` is accepted; the next step is
``h * clamp(0.9 norm^(-1/q), 0.2, 1.125)`` (``h^q`` the size of the estimate:
the local error of the lower member of the embedded pair,
:func:`sdekit.schemes._embedded.estimate_order`); a rejected step is retried
with ``h * max(0.2, 0.9 norm^(-1/q))``. The growth bound 1.125 is
StochasticDiffEq's for SDEs (Rackauckas & Nie 2017), against 10 for ODEs: an
error estimate made from one Brownian sample is noisy, and a fast increase only
buys rejections (measured on GBM with milstein and sriw1 at rtol 1e-3: error x
attempts is 1.1–2.5x lower than with bounds 2 and 10).

Events
------
After each accepted step every event function is evaluated at the new state.

* ODE: a sign change (in the event's ``direction``) is located by the Illinois
  method (Dowell & Jarratt 1971, BIT 11) on ``G(t + theta h, X(t + theta h))``
  where ``X(t + theta h)`` is the scheme's own step of size ``theta h`` from the
  step's start (a continuous extension of the scheme's order; no interpolation
  error), to ``|dt| <= EVENT_TOL * max(1, |t|)``.
* SDE: between the two states the event function is treated as a Brownian
  bridge with the local noise scale ``s = |grad G . sigma|`` (finite
  differences of ``G`` along each noise direction). A sign change is a
  crossing; without one the crossing probability of the bridge,
  ``exp(-2 G0 G1 / (s^2 |h|))`` (Baldi 1995; Gobet 2000, ESAIM PS 4), decides it
  with a counter-based uniform, which removes the ``O(sqrt h)`` bias of
  checking only at the steps. The crossing time is drawn from the bridge's
  exact first-passage law given the crossing: with ``d0 = |G0| / s`` and
  ``d1`` the signed distance at the end, ``u = (T - t)/(t + h - T)`` is inverse
  Gaussian with mean ``d0 / |d1|`` and shape ``d0^2 / |h|`` (from the
  first-passage density and the Markov property; sampled by Michael, Schucany &
  Haas 1976). The state at the crossing is the straight line between the two
  states, moved along ``sum_j (grad G . sigma_j) sigma_j`` onto ``G = 0`` by
  Newton's method (exact in one step for a level of a scalar state).
"""

from __future__ import annotations

import math

import numpy as np
from numba.extending import register_jitable

from .. import _cursor
from .._rng import ZIG_F, ZIG_K, ZIG_R, ZIG_W, mix64, normal_from_bits
from ._adaptive import MAX_STEPS, NONFINITE, OK, STEP_UNDERFLOW
from ._steps import apply_noise

QMAX, QMIN, SAFETY = 1.125, 0.2, 0.9
SNAP = 8.0  # an adaptive step's end is snapped to a dyadic spacing of at most |h| / SNAP
EVENT_TOL = 1e-12  # ODE event times: |dt| <= EVENT_TOL * max(1, |t|)
EVENT_ITERATIONS = 100
PROJECTION_ITERATIONS = 16  # Newton steps that move an SDE event's state onto the level
NEGLIGIBLE = 40.0  # SDE events: a crossing probability below exp(-NEGLIGIBLE) (~4e-18) is not computed
C_EVENT = np.uint64(0x2545F4914F6CDD1D)
_TWO53_INV = 1.0 / 9007199254740992.0
_S11 = np.uint64(11)


@register_jitable
def snapped_end(tau, direction, step_cells):
    """The end of a step of ``step_cells`` cells from ``tau``, snapped to the coarsest dyadic spacing
    ``2**-k <= step_cells / SNAP`` (``k <= 48``)."""
    spacing = 1.0
    k = 0
    while spacing > step_cells / SNAP and k < _cursor.DEPTH:
        spacing *= 0.5
        k += 1
    return math.floor((tau + direction * step_cells) / spacing + 0.5) * spacing


@register_jitable
def error_norm(err, x, x_new, atol, rtol):
    """RMS of ``err / (atol + rtol max(|x|, |x_new|))`` over the state's components."""
    acc = 0.0
    for c in range(err.shape[1]):
        v = err[0, c] / (atol + rtol * max(abs(x[0, c]), abs(x_new[0, c])))
        acc += v * v
    return math.sqrt(acc / err.shape[1])


@register_jitable
def all_finite(x):
    for c in range(x.shape[1]):
        if not math.isfinite(x[0, c]):
            return False
    return True


@register_jitable
def rms(v):
    acc = 0.0
    n = 0
    for a in range(v.shape[0]):
        for c in range(v.shape[1]):
            acc += v[a, c] * v[a, c]
            n += 1
    return math.sqrt(acc / max(n, 1))


@register_jitable
def initial_step(f, g, p, t, x, atol, rtol, span, m):
    """A first step from the scaled sizes of ``x``, the drift and the diffusion (Hairer, Nørsett & Wanner 1993, II.4,
    for the drift; the noise term ``|sigma| sqrt(h)`` gets the same 1 % of the state's size). Rejections correct a
    guess that is too large."""
    sc = atol + rtol * np.abs(x)
    d0 = max(rms(x / sc), 1.0)
    d1 = rms(f(t, x, p) / sc)
    h = span
    if d1 > 1e-12:
        h = min(h, 0.01 * d0 / d1)
    if m > 0:
        gx = g(t, x, p)
        d2 = 0.0
        for j in range(m):
            d2 += rms(apply_noise(gx, unit_row(m, j)) / sc) ** 2
        d2 = math.sqrt(d2)
        if d2 > 1e-12:
            h = min(h, (0.1 * d0 / d2) ** 2)
    return h


@register_jitable
def unit_row(m, j):
    """The (1, m) row with 1 at ``j``: ``apply_noise(sigma, unit_row(m, j))`` is the j-th noise direction."""
    e = np.zeros((1, m))
    e[0, j] = 1.0
    return e


@register_jitable
def counter_uniform(key):
    """A double in (0, 1) from a 64-bit counter key."""
    return (float(np.uint64(mix64(np.uint64(key))) >> _S11) + 0.5) * _TWO53_INV


@register_jitable
def inverse_gaussian(mean, shape, key):
    """An inverse Gaussian variate (Michael, Schucany & Haas 1976, Am. Stat. 30(2)) from counter ``key``;
    ``mean = inf`` gives the Lévy limit ``shape / Z^2``."""
    z = normal_from_bits(np.uint64(mix64(np.uint64(key) ^ np.uint64(1))), ZIG_K, ZIG_W, ZIG_F, ZIG_R)
    y = z * z
    if not mean < 1e300:
        return shape / max(y, 1e-300)
    my = mean * y
    root = math.sqrt(4.0 * mean * shape * y + my * my)
    x = mean * (1.0 - 2.0 * my / (root + my))  # mean + mean^2 y / (2 shape) - mean/(2 shape) root, without cancellation
    x = max(x, 1e-300)
    if counter_uniform(np.uint64(key) ^ np.uint64(2)) <= mean / (mean + x):
        return x
    return mean * mean / x


@register_jitable
def event_key(path_key, step, event):
    """The counter key of event ``event`` on the ``step``-th accepted step of a path."""
    return np.uint64(mix64(np.uint64(path_key) ^ np.uint64(mix64(np.uint64(step) * np.uint64(1024) + np.uint64(event)))
                           ^ C_EVENT))


@register_jitable
def crossing_theta(g0, g1, scale, h_abs, direction, key):
    """SDE event on one step: the fraction of the step at which the bridge of ``G`` (noise scale ``scale``) first
    reaches 0, or -1.0 when it does not (``direction``: +1 only from below, -1 only from above, 0 both)."""
    if g0 == 0.0 or not (scale > 0.0):
        if g0 != 0.0 and g0 * g1 <= 0.0 and (direction == 0 or (direction > 0) == (g0 < 0.0)):
            return 1.0 if g1 == 0.0 else g0 / (g0 - g1)  # no noise along G: the straight line's crossing
        return -1.0
    side = 1.0 if g0 > 0.0 else -1.0
    if (direction > 0 and side > 0.0) or (direction < 0 and side < 0.0):
        return -1.0
    d0 = abs(g0) / scale
    d1 = side * g1 / scale  # signed distance at the end (<= 0: crossed)
    if d1 > 0.0:
        exponent = 2.0 * d0 * d1 / h_abs
        if exponent > NEGLIGIBLE or counter_uniform(key) >= math.exp(-exponent):
            return -1.0
    mean = d0 / abs(d1) if d1 != 0.0 else math.inf
    u = inverse_gaussian(mean, d0 * d0 / h_abs, np.uint64(key) ^ np.uint64(7))
    return u / (1.0 + u)


@register_jitable
def event_scale(ev, p, t, x, gx, g0, m, slopes):
    """``|grad G . sigma|`` of one event at ``(t, x)`` by one-sided differences along each noise direction
    ``sigma_j``; the slopes ``grad G . sigma_j`` go to ``slopes`` (m,)."""
    acc = 0.0
    xn = max(1.0, math.sqrt(np.sum(x * x)))
    for j in range(m):
        col = apply_noise(gx, unit_row(m, j))
        cn = math.sqrt(np.sum(col * col))
        if cn == 0.0:
            slopes[j] = 0.0
            continue
        eps = 1e-7 * xn / cn
        a = (ev(t, x + eps * col, p)[0] - g0) / eps
        slopes[j] = a
        acc += a * a
    return math.sqrt(acc)


@register_jitable
def onto_level(ev, p, t, x, v):
    """``x`` (1, dim) moved along ``v`` onto ``G = 0`` (``G = ev(t, ., p)``) by Newton's method on
    ``s -> G(x - s v)``, the derivative along ``v`` by a difference; exact in one step for a linear ``G``."""
    vn = math.sqrt(np.sum(v * v))
    xk = x.copy()
    if vn == 0.0:
        return xk
    gk = ev(t, xk, p)[0]
    for _ in range(PROJECTION_ITERATIONS):
        if gk == 0.0 or not math.isfinite(gk):
            break
        xn = max(1.0, math.sqrt(np.sum(xk * xk)))
        eps = 1e-7 * xn / vn
        slope = (ev(t, xk + eps * v, p)[0] - gk) / eps
        if slope == 0.0 or not math.isfinite(slope):
            break
        s = gk / slope
        xk = xk - s * v
        gk = ev(t, xk, p)[0]
        if abs(s) * vn <= 1e-14 * xn:
            break
    return xk


@register_jitable
def time_at(tau, lo, hi, n_cells, cell_length):
    """The time of cell position ``tau`` (the span's ends exactly)."""
    if tau == 0.0:
        return lo
    if tau == n_cells:
        return hi
    return lo + tau * cell_length


@register_jitable
def illinois(attempt, f, g, p, tab, ev, t, x, h, dw, area, g0, g1):
    """The fraction ``theta`` of an ODE step where the event ``ev`` changes sign, on the scheme's own step of size
    ``theta h`` from ``(t, x)`` (Illinois method: regula falsi with halving of the retained end's value).
    Returns ``(theta, steps taken)``."""
    a, b = 0.0, 1.0
    fa, fb = g0, g1
    side = 0
    tol = EVENT_TOL * max(1.0, abs(t)) / abs(h)
    theta = 1.0
    calls = 0
    for _ in range(EVENT_ITERATIONS):
        if b - a <= tol:
            break
        calls += 1
        theta = (a * fb - b * fa) / (fb - fa)
        if not (a < theta < b):
            theta = 0.5 * (a + b)
        xs, _ = attempt(f, g, p, tab, t, x, theta * h, math.sqrt(abs(theta * h)), dw, area)
        fm = ev(t + theta * h, xs, p)[0]
        if fm == 0.0:
            return theta, calls
        if (fm > 0.0) == (fb > 0.0):
            b, fb = theta, fm
            if side == 1:
                fa *= 0.5
            side = 1
        else:
            a, fa = theta, fm
            if side == -1:
                fb *= 0.5
            side = -1
    return b, calls


@register_jitable
def integrate_path(attempt, f, g, p, tab, exponent, adaptive, n_drift, n_diffusion, x0, tau0, tau1, lo, hi, n_cells,
                   cell_length, n_fixed, rtol, atol, max_steps, dt0, dt_max, save_tau, out, cursor, m, path_key, events,
                   n_events, ev_direction, ev_terminal, ev_bridge, log_t, log_x, log_id, ev_x):
    """Integrate one path (``x0`` of shape (1, dim)) from cell position ``tau0`` to ``tau1``.

    ``attempt(f, g, p, tab, t, x, h, sqrt|h|, dw, levy_area) -> (x_new, err)`` is one step of the scheme with its
    embedded error estimate (adaptive) or its plain step (``adaptive`` False: ``n_fixed`` equal steps), calling the
    drift ``n_drift`` and the diffusion ``n_diffusion`` times. ``save_tau``
    (cell positions, in the order of integration) get the states in ``out``; ``cursor`` reads the path's Brownian
    values (``m`` components; ``m == 0``: an ODE). ``events``: ``n_events`` event functions with their
    ``ev_direction``, ``ev_terminal`` and ``ev_bridge`` (SDE: bridge crossings between steps); every firing goes
    to ``log_t``/``log_x``/``log_id`` (as many as fit: the
    count is returned), the terminal one's state to ``ev_x``. ``exponent``: the controller's ``1 / q`` for an
    error estimate of size ``h^q``; ``dt0`` the first step and ``dt_max`` the largest (0: none).

    Returns ``(code, t_end, accepted, rejected, drift calls, diffusion calls, n_log, event_t, event_id)``.
    """
    direction = 1.0 if tau1 > tau0 else -1.0
    dim = x0.shape[1]
    x = x0.copy()
    tau = tau0
    t = time_at(tau, lo, hi, n_cells, cell_length)
    n_save = save_tau.shape[0]
    si = 0
    while si < n_save and save_tau[si] == tau:
        out[si] = x[0]
        si += 1
    dw = np.zeros((1, m))
    area = np.zeros((1, m))
    if m > 0:
        _cursor.cursor_start(cursor, tau)
    span_cells = abs(tau1 - tau0)
    nf = 0
    ng = 0
    if adaptive:
        if dt0 > 0.0:
            h_cells = dt0 / cell_length
        else:
            h_cells = initial_step(f, g, p, t, x, atol, rtol, span_cells * cell_length, m) / cell_length
            nf += 1
            ng += 1 if m > 0 else 0
    else:
        h_cells = span_cells / n_fixed
    g_old = np.zeros(max(n_events, 1))
    g_new = np.zeros(max(n_events, 1))
    scale_prev = np.full(max(n_events, 1), np.inf)
    fired = np.zeros(max(n_events, 1), dtype=np.bool_)
    thetas = np.full(max(n_events, 1), -1.0)
    slopes = np.zeros(max(m, 1))
    states = np.zeros((max(n_events, 1), dim))
    for e in range(n_events):
        g_old[e] = events[e](t, x, p)[0]
    n_log = 0
    event_t = np.nan
    event_id = -1
    accepted = 0
    rejected = 0
    code = OK
    nonfinite = False
    err = 0.0
    while direction * (tau1 - tau) > 0.0:
        if accepted + rejected >= max_steps:
            code = MAX_STEPS
            break
        if dt_max > 0.0:
            h_cells = min(h_cells, dt_max / cell_length)
        proposal = h_cells
        if adaptive:
            tau_stop = tau1
            if si < n_save and direction * (save_tau[si] - tau1) < 0.0:
                tau_stop = save_tau[si]
            tau_new = snapped_end(tau, direction, h_cells)
            truncated = False
            if direction * (tau_new - tau_stop) >= 0.0 or abs(tau_stop - tau_new) < 0.1 * h_cells:
                tau_new = tau_stop
                truncated = True
            if tau_new == tau or direction * (tau_new - tau) < 0.0:
                code = NONFINITE if nonfinite else STEP_UNDERFLOW
                break
        else:
            tau_new = tau1 if accepted + 1 == n_fixed else tau0 + direction * (accepted + 1) * h_cells
            truncated = False
        t_new = time_at(tau_new, lo, hi, n_cells, cell_length)
        h = (tau_new - tau) * cell_length
        if m > 0:
            _cursor.cursor_query(cursor, tau_new, dw[0], area[0])
        x_new, err_v = attempt(f, g, p, tab, t, x, h, math.sqrt(abs(h)), dw, area)
        nf += n_drift
        ng += n_diffusion
        step_cells = abs(tau_new - tau)
        if adaptive:
            err = error_norm(err_v, x, x_new, atol, rtol)
            if not (math.isfinite(err) and all_finite(x_new)):
                rejected += 1
                h_cells = 0.2 * min(step_cells, proposal)
                nonfinite = True
                continue
            nonfinite = False
            if err > 1.0:
                rejected += 1
                h_cells = min(step_cells, proposal) * max(QMIN, SAFETY * err ** -exponent)
                continue
        elif not all_finite(x_new):
            code = NONFINITE
            t = t_new
            break
        # Accepted: the events of the step.
        first = 2.0
        first_event = -1
        for e in range(n_events):
            thetas[e] = -1.0
            if fired[e] and m > 0:
                continue
            g_new[e] = events[e](t_new, x_new, p)[0]
            if m > 0:
                # skip the noise scale where even three times the last one leaves a negligible crossing probability
                # (multiplied out: a last scale of 0, no noise along G, must not divide by zero in compiled code)
                if g_old[e] * g_new[e] > 0.0 and (not ev_bridge[e] or 2.0 * g_old[e] * g_new[e] > NEGLIGIBLE * (
                        9.0 * scale_prev[e] ** 2 * abs(h))):
                    continue
                gx = g(t, x, p)
                ng += 1
                scale = event_scale(events[e], p, t, x, gx, g_old[e], m, slopes)
                scale_prev[e] = scale
                theta = crossing_theta(g_old[e], g_new[e], scale, abs(h), ev_direction[e],
                                       event_key(path_key, accepted, e))
                if theta >= 0.0:
                    thetas[e] = theta
                    lin = x + theta * (x_new - x)
                    g_lin = g_old[e] + theta * (g_new[e] - g_old[e])
                    v = np.zeros((1, dim))
                    acc = 0.0
                    for j in range(m):
                        v += slopes[j] * apply_noise(gx, unit_row(m, j))
                        acc += slopes[j] * slopes[j]
                    start = lin - (g_lin / acc) * v if acc > 0.0 else lin
                    states[e] = onto_level(events[e], p, t + theta * h, start, v)[0]
            else:
                crossed = g_old[e] * g_new[e] < 0.0 or (g_new[e] == 0.0 and g_old[e] != 0.0)
                rising = g_old[e] < 0.0
                if crossed and (ev_direction[e] == 0 or (ev_direction[e] > 0) == rising):
                    theta, calls = illinois(attempt, f, g, p, tab, events[e], t, x, h, dw, area, g_old[e], g_new[e])
                    thetas[e] = theta
                    xs, _ = attempt(f, g, p, tab, t, x, theta * h, math.sqrt(abs(theta * h)), dw, area)
                    states[e] = xs[0]
                    nf += (calls + 1) * n_drift
            if thetas[e] >= 0.0 and ev_terminal[e] and thetas[e] < first:
                first = thetas[e]
                first_event = e
        for e in range(n_events):
            if thetas[e] >= 0.0 and thetas[e] <= first:
                fired[e] = True
                if n_log < log_t.shape[0]:
                    log_t[n_log] = t + thetas[e] * h
                    log_x[n_log] = states[e]
                    log_id[n_log] = e
                n_log += 1
            g_old[e] = g_new[e]
        if m > 0:
            _cursor.cursor_move(cursor, tau_new)
        accepted += 1
        if first_event >= 0:
            event_id = first_event
            event_t = t + first * h
            ev_x[0] = states[first_event]
            while si < n_save:  # the stopped path keeps its state at the event
                out[si] = ev_x[0]
                si += 1
            t = event_t
            break
        tau, t, x = tau_new, t_new, x_new
        while si < n_save and save_tau[si] == tau:
            out[si] = x[0]
            si += 1
        if adaptive:
            factor = QMAX if err == 0.0 else min(QMAX, max(QMIN, SAFETY * err ** -exponent))
            h_cells = step_cells * factor
            if truncated:  # a step cut short to reach a save time says little about the step size
                h_cells = max(h_cells, proposal)
    return code, t, accepted, rejected, nf, ng, n_log, event_t, event_id


@register_jitable
def unit_rows(n, m, j):
    """The (n, m) rows with 1 at column ``j``."""
    e = np.zeros((n, m))
    for a in range(n):
        e[a, j] = 1.0
    return e


@register_jitable
def initial_steps(f, g, p, t, x, atol, rtol, span, m):
    """:func:`initial_step` of every row of ``x`` at the times ``t`` (an (n, 1) column), in one call of ``f`` and
    ``g``."""
    n, dim = x.shape
    sc = atol + rtol * np.abs(x)
    fx = f(t, x, p)
    out = np.full(n, span)
    d2 = np.zeros(n)
    if m > 0:
        gx = g(t, x, p)
        for j in range(m):
            col = apply_noise(gx, unit_rows(n, m, j)) / sc
            for a in range(n):
                for c in range(dim):
                    d2[a] += col[a, c] * col[a, c] / dim
    for a in range(n):
        d0 = 0.0
        d1 = 0.0
        for c in range(dim):
            d0 += (x[a, c] / sc[a, c]) ** 2 / dim
            d1 += (fx[a, c] / sc[a, c]) ** 2 / dim
        d0 = max(math.sqrt(d0), 1.0)
        d1 = math.sqrt(d1)
        dn = math.sqrt(d2[a])
        if d1 > 1e-12:
            out[a] = min(out[a], 0.01 * d0 / d1)
        if dn > 1e-12:
            out[a] = min(out[a], (0.1 * d0 / dn) ** 2)
    return out


@register_jitable
def integrate_batch(attempt, f, g, p, tab, exponent, n_drift, n_diffusion, x0, tau0, tau1, lo, hi, n_cells,
                    cell_length, rtol, atol, max_steps, dt0, dt_max, save_tau, out, cursors, m, steps, rejected, n_f, n_g,
                    fail_t, codes):
    """Adaptive SDE steps for a batch of paths, each with its own steps: :func:`integrate_path`'s algorithm (no
    events) with the scheme called once per round on the paths still running, at their own times.

    ``attempt`` and the functions take the time as an (n, 1) column (one time per path). ``x0`` (B, dim): the
    batch's initial states; ``out`` (n_save, B, dim); ``cursors``: one per path; the per-path counts and failures
    go to ``steps``, ``rejected``, ``n_f``, ``n_g``, ``fail_t``, ``codes`` (length B).
    """
    n_paths, dim = x0.shape
    direction = 1.0 if tau1 > tau0 else -1.0
    x = x0.copy()
    tau = np.full(n_paths, tau0)
    n_save = save_tau.shape[0]
    si = np.zeros(n_paths, dtype=np.int64)
    for a in range(n_paths):
        while si[a] < n_save and save_tau[si[a]] == tau0:
            out[si[a], a] = x[a]
            si[a] += 1
        if m > 0:
            _cursor.cursor_start(cursors[a], tau0)
    t_start = time_at(tau0, lo, hi, n_cells, cell_length)
    span_cells = abs(tau1 - tau0)
    if dt0 > 0.0:
        h_cells = np.full(n_paths, dt0 / cell_length)
    else:
        h_cells = initial_steps(f, g, p, np.full((n_paths, 1), t_start), x, atol, rtol, span_cells * cell_length,
                                m) / cell_length
        for a in range(n_paths):
            n_f[a] += 1
            n_g[a] += 1 if m > 0 else 0
    nonfinite = np.zeros(n_paths, dtype=np.bool_)
    running = np.ones(n_paths, dtype=np.bool_)
    rows = np.arange(n_paths)
    n_run = n_paths
    while n_run > 0:
        # the running paths, their step ends and Brownian values
        k = 0
        for a in range(n_paths):
            if running[a]:
                rows[k] = a
                k += 1
        n_run = k
        if n_run == 0:
            break
        xa = np.empty((n_run, dim))
        ta = np.empty((n_run, 1))
        ha = np.empty((n_run, 1))
        sa = np.empty((n_run, 1))
        dw = np.zeros((n_run, m))
        area = np.zeros((n_run, m))
        tau_new = np.empty(n_run)
        proposal = np.empty(n_run)
        truncated = np.zeros(n_run, dtype=np.bool_)
        k = 0
        for i in range(n_run):
            a = rows[i]
            if dt_max > 0.0:
                h_cells[a] = min(h_cells[a], dt_max / cell_length)
            tau_stop = tau1
            if si[a] < n_save and direction * (save_tau[si[a]] - tau1) < 0.0:
                tau_stop = save_tau[si[a]]
            end = snapped_end(tau[a], direction, h_cells[a])
            cut = False
            if direction * (end - tau_stop) >= 0.0 or abs(tau_stop - end) < 0.1 * h_cells[a]:
                end = tau_stop
                cut = True
            if steps[a] + rejected[a] >= max_steps or end == tau[a] or direction * (end - tau[a]) < 0.0:
                running[a] = False
                codes[a] = MAX_STEPS if steps[a] + rejected[a] >= max_steps else (
                    NONFINITE if nonfinite[a] else STEP_UNDERFLOW)
                fail_t[a] = time_at(tau[a], lo, hi, n_cells, cell_length)
                continue
            rows[k] = a
            proposal[k] = h_cells[a]
            truncated[k] = cut
            tau_new[k] = end
            for c in range(dim):
                xa[k, c] = x[a, c]
            ta[k, 0] = time_at(tau[a], lo, hi, n_cells, cell_length)
            ha[k, 0] = (end - tau[a]) * cell_length
            sa[k, 0] = math.sqrt(abs(ha[k, 0]))
            if m > 0:
                _cursor.cursor_query(cursors[a], end, dw[k], area[k])
            k += 1
        n_try = k
        if n_try == 0:
            continue
        if n_try < n_run:
            xa, ta, ha, sa, dw, area = xa[:n_try], ta[:n_try], ha[:n_try], sa[:n_try], dw[:n_try], area[:n_try]
        x_new, err_v = attempt(f, g, p, tab, ta, xa, ha, sa, dw, area)
        for k in range(n_try):
            a = rows[k]
            step_cells = abs(tau_new[k] - tau[a])
            n_f[a] += n_drift
            n_g[a] += n_diffusion
            acc = 0.0
            finite = True
            for c in range(dim):
                v = err_v[k, c] / (atol + rtol * max(abs(xa[k, c]), abs(x_new[k, c])))
                acc += v * v
                if not math.isfinite(x_new[k, c]):
                    finite = False
            err = math.sqrt(acc / dim)
            if not (finite and math.isfinite(err)):
                rejected[a] += 1
                h_cells[a] = 0.2 * min(step_cells, proposal[k])
                nonfinite[a] = True
                continue
            nonfinite[a] = False
            if err > 1.0:
                rejected[a] += 1
                h_cells[a] = min(step_cells, proposal[k]) * max(QMIN, SAFETY * err ** -exponent)
                continue
            if m > 0:
                _cursor.cursor_move(cursors[a], tau_new[k])
            steps[a] += 1
            tau[a] = tau_new[k]
            for c in range(dim):
                x[a, c] = x_new[k, c]
            while si[a] < n_save and save_tau[si[a]] == tau[a]:
                out[si[a], a] = x[a]
                si[a] += 1
            factor = QMAX if err == 0.0 else min(QMAX, max(QMIN, SAFETY * err ** -exponent))
            h_cells[a] = step_cells * factor
            if truncated[k]:
                h_cells[a] = max(h_cells[a], proposal[k])
            if direction * (tau1 - tau[a]) <= 0.0:
                running[a] = False

"""Events: functions of the state whose zero crossings are detected per path during a solve.

``solve(..., events=[Event(g), ...])`` evaluates each event function after
every accepted step of every path. A *terminal* event stops its path at the
first crossing: ``Solution.event_t``, ``event_x`` and ``event_id`` hold, per
path, the time, state and index of the terminal event that fired first (NaN,
NaN and -1 where none did), and the path's later saved states hold its state
at the event (the stopped process ``X_{t ∧ T}``). Every firing, terminal or
not, is listed in ``Solution.events``.

How a crossing is located (:mod:`sdekit.schemes._paths`): on an ODE by
root-finding on the scheme's own continuous extension, to a time tolerance of
``1e-12 max(1, |t|)``; on an SDE by the Brownian-bridge crossing probability
between the steps and an exact draw of the bridge's first-passage time, which
removes the ``O(sqrt h)`` bias of checking the sign only at the steps
(Gobet 2000, ESAIM: Probab. Stat. 4, 1–36). A Brownian path that reaches a
level crosses it infinitely often right after, so on an SDE each event fires at
most once per path: its first passage.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Event", "EventLog"]


@dataclass(frozen=True)
class Event:
    """A function of the state whose sign change is an event.

    Parameters
    ----------
    g : callable
        ``g(t, x, params)`` on a batch ``x`` of shape ``(n, dim)``, returning one
        value per path (shape ``(n,)``, ``(n, 1)`` or a number); the event is
        a crossing of 0. Written like the problem's functions (NumPy and
        :mod:`sdekit.ops` on the numba backend, torch operations on torch).
    terminal : bool
        Stop the path at its first crossing (default True).
    direction : {0, 1, -1}
        As in ``scipy.integrate.solve_ivp``: 1 only crossings from negative to
        positive, -1 only from positive to negative, 0 both.
    name : str, optional
        A label for messages and :class:`EventLog` readers.
    bridge : bool
        SDEs: also detect crossings between the steps through the Brownian
        bridge (default True). False checks the sign at the steps only
        (discrete monitoring, which misses crossings and is biased by
        ``O(sqrt h)``; for comparisons).
    """

    g: Callable
    terminal: bool = True
    direction: int = 0
    name: str = ""
    bridge: bool = True

    def __post_init__(self):
        if not callable(self.g):
            raise ValueError(f"Event: `g` must be a function g(t, x, params), got {type(self.g).__name__}.")
        if not isinstance(self.terminal, bool | np.bool_):
            raise ValueError(f"Event: `terminal` must be True or False, got {self.terminal!r}.")
        if not isinstance(self.direction, numbers.Integral) or isinstance(self.direction, bool) or self.direction not in (-1, 0, 1):
            raise ValueError(f"Event: `direction` must be 1 (rising), -1 (falling) or 0 (both), got {self.direction!r}.")
        if not isinstance(self.bridge, bool | np.bool_):
            raise ValueError(f"Event: `bridge` must be True or False, got {self.bridge!r}.")
        object.__setattr__(self, "terminal", bool(self.terminal))
        object.__setattr__(self, "bridge", bool(self.bridge))
        object.__setattr__(self, "direction", int(self.direction))


@dataclass(frozen=True)
class EventLog:
    """Every event firing of a solve, ordered by path and, within a path, by time.

    Attributes
    ----------
    path : ndarray of int64 (k,)
        The path that fired.
    event : ndarray of int64 (k,)
        Index of the event in ``solve(..., events=[...])``.
    t : ndarray (k,)
        Time of the firing.
    x : ndarray (k, dim)
        State at the firing.
    """

    path: np.ndarray
    event: np.ndarray
    t: np.ndarray
    x: np.ndarray

    def __len__(self):
        return int(self.path.size)

    @classmethod
    def empty(cls, dim: int) -> EventLog:
        """The log of a solve in which nothing fired (states of ``dim`` components)."""
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros((0, dim)))

    def of(self, event: int) -> EventLog:
        """The firings of one event."""
        keep = self.event == event
        return EventLog(self.path[keep], self.event[keep], self.t[keep], self.x[keep])


def check_events(events) -> tuple:
    """``events`` as a tuple of :class:`Event` (a bare function becomes ``Event(fn)``); one-line errors."""
    if events is None:
        return ()
    if isinstance(events, Event) or callable(events):
        events = [events]
    try:
        items = list(events)
    except TypeError:
        raise ValueError(f"`events` must be a list of sdekit.Event, got {type(events).__name__}.") from None
    out = []
    for i, ev in enumerate(items):
        if isinstance(ev, Event):
            out.append(ev)
        elif callable(ev):
            out.append(Event(ev))
        else:
            raise ValueError(f"`events[{i}]` must be an sdekit.Event (or a function g(t, x, params)), got {type(ev).__name__}.")
    return tuple(out)

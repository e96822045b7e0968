"""Named, nested parameters for problem functions.

A problem's ``params`` is a tuple of numbers and arrays that sdekit passes to the problem's functions
``f(t, x, params)``; the compiled (Numba) backend packs it into one float64 array and unpacks it inside the
kernel, so that new values never recompile anything. Instead of addressing a long flat tuple by counted
positions (``p[n + 3]``), give the parameters names with a *record*: any :func:`collections.namedtuple`
(or :class:`typing.NamedTuple`) instance. Records nest, and every backend hands the function the same
records, so the function reads ``p.drift.rate`` or ``p.grid.t0`` on NumPy, compiled by Numba and on torch:

>>> from collections import namedtuple
>>> import numpy as np
>>> import sdekit
>>> Drift = namedtuple("Drift", "rate mean")
>>> P = namedtuple("P", "drift noise")
>>> ou = sdekit.SDE(lambda t, x, p: p.drift.rate * (p.drift.mean - x), lambda t, x, p: p.noise + 0.0 * x,
...                 noise="additive", params=P(drift=Drift(rate=1.0, mean=np.array([0.5])), noise=0.3))
>>> ou.params.drift.rate
1.0

Rules (applied when a problem is made or its ``params`` assigned):

* the top level is a tuple, a list or a record;
* a number becomes a float; a NumPy array, or a list, becomes a float64 array; a torch tensor is kept (for
  the torch backend, which also turns the arrays into tensors on the solve's device);
* a record keeps its class, its fields normalised by these rules; a plain tuple *inside a record* is a
  nested group of parameters (a tuple of numbers, arrays and records), so a record can carry a whole
  parameters tuple of another function as one field;
* in a plain top-level tuple, an entry that is a tuple is an array (``params=((1.0, 2.0),)`` gives one
  array of two numbers), as it always was.

The Numba backend compiles a problem once per *layout*: the record classes, the nesting and the shapes of
the arrays; the values themselves are read at run time.

:func:`extend` makes a record that keeps the fields, and so the positions, of another record and adds
named fields after them: a function that reads the first record by position (``p[0]``) reads the
extended one unchanged, and a function that reads the new fields reads them by name.
:func:`map_leaves` applies a function to every number and array of a parameters tuple, keeping its
structure (to move them to a device, say).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

__all__ = ["is_record", "extend", "map_leaves"]


def is_record(value) -> bool:
    """Whether ``value`` is a record: an instance of a :func:`collections.namedtuple` class."""
    return isinstance(value, tuple) and isinstance(getattr(type(value), "_fields", None), tuple)


@functools.cache
def _extended_class(base: type, names: tuple[str, ...]) -> type:
    from collections import namedtuple

    clash = sorted(set(base._fields) & set(names))
    if clash:
        raise ValueError(f"{base.__name__} already has the field(s) {clash}; give the new fields other names.")
    return namedtuple(f"{base.__name__}With{''.join(n.title().replace('_', '') for n in names)}", base._fields + names)


@functools.cache
def _positional_class(n: int) -> type:
    from collections import namedtuple

    return namedtuple(f"Params{n}", [f"p{i}" for i in range(n)])


def extend(record, **fields):
    """A record with the fields of ``record`` followed by ``fields`` (in the order given).

    The class is made once per (class of ``record``, new field names), so records extended the same way
    share one class and the Numba backend compiles their functions once.

    Parameters
    ----------
    record : namedtuple instance, or a plain parameters tuple
        A plain tuple is first made a record with the fields ``p0, p1, ...``
        (its values normalised as a problem's ``params``), so that functions
        reading it by position keep working.
        The record to extend; its fields keep their positions.
    **fields
        The new fields and their values.

    Examples
    --------
    >>> from collections import namedtuple
    >>> Schedule = namedtuple("Schedule", "beta_min beta_max")
    >>> p = extend(Schedule(0.1, 20.0), scale=2.0)
    >>> p[0], p.beta_max, p.scale
    (0.1, 20.0, 2.0)
    """
    if not is_record(record):
        if not isinstance(record, tuple | list):
            raise ValueError(f"`record` must be a namedtuple instance or a parameters tuple, got {type(record).__name__}; "
                             "make one with collections.namedtuple.")
        from .problem import _normalise_params

        values = _normalise_params(tuple(record))
        record = _positional_class(len(values))(*values)
    if not fields:
        raise ValueError("`extend` needs at least one new field, e.g. extend(record, scale=2.0).")
    cls = _extended_class(type(record), tuple(fields))
    return cls(*record, *fields.values())


def map_leaves(function: Callable, params):
    """``params`` with every number and array replaced by ``function(value)``, records and tuples rebuilt.

    ``params`` is a normalised parameters tuple (a problem's ``params``): its tuples and records are groups,
    everything else a leaf.
    """
    if is_record(params):
        return type(params)(*(map_leaves(function, v) for v in params))
    if isinstance(params, tuple):
        return tuple(map_leaves(function, v) for v in params)
    return function(params)

"""The scheme registry: every method, what it supports and what it promises.

Each :class:`Scheme` declares its strong and weak order per noise type, the
calculi it solves and its family (step function, coefficient packing and
evaluation counts); the registry is built from these declarations, one
module per family (``euler``, ``milstein``, ``rossler``, ``runge_kutta``,
``exponential``). The convergence tests read the declarations, so a new
scheme brings its own test. ``"general"`` orders are for non-commutative
matrix noise and ``"commutative"`` for general noise declared commutative.
"""

from __future__ import annotations

from . import euler, exponential, milstein, rossler, runge_kutta  # noqa: F401 - importing registers the schemes
from .base import SCHEMES, Family, Scheme, StepPlan, get_scheme, list_schemes, noise_class, pack_tableau, register

__all__ = ["Family", "Scheme", "SCHEMES", "StepPlan", "get_scheme", "list_schemes", "noise_class", "pack_tableau",
           "register"]


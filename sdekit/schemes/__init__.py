"""The scheme registry: every method, what it supports and what it promises.

Each :class:`Scheme` declares its strong and weak order per noise type, the
calculi it solves and its family (step function, coefficient packing and
evaluation counts); the registry is built from these declarations, one
module per family (``euler``, ``milstein``, ``rossler``, ``runge_kutta``,
``exponential``). Every public module of this package is imported here, so a
new family is a new file and nothing else. The convergence tests read the declarations, so a new
scheme brings its own test. ``"general"`` orders are for non-commutative
matrix noise and ``"commutative"`` for general noise declared commutative.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import SCHEMES, Family, Scheme, StepPlan, get_scheme, list_schemes, noise_class, pack_tableau, register

__all__ = ["Family", "Scheme", "SCHEMES", "StepPlan", "get_scheme", "list_schemes", "noise_class", "pack_tableau",
           "register"]

# Importing a family module registers its schemes (in file-name order, which fixes the order of list_schemes).
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

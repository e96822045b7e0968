"""Backends interpret the schemes of ``sdekit.schemes`` on an array library.

A backend module provides ``run_fixed(plan)`` and ``run_adaptive(plan)``,
which fill ``plan.out`` / ``plan.failure_time`` and return the
``(n_accepted, n_rejected, n_drift_evals)`` counts (adaptive only). The plan
is built and validated once by :func:`sdekit.solve`. The torch backend sets
``plan.out`` to a tensor instead of filling a preallocated array.
"""

BACKENDS = ("numba", "numpy", "torch")

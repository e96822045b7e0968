"""sdekit: fast, correct solvers for stochastic and ordinary differential equations.

Public API::

    SDE, ODE             problems
    SemilinearODE        x' = A'(t) x + exp(A + lambda) lambda' D(t, x), for the exponential integrators
    time_change          a problem in a new time variable (non-uniform grids, reverse time)
    BrownianPath         seeded, refinable Brownian paths (read block by block as BrownianBlock records)
    solve                integrate a problem, returns a Solution
    ensemble             streaming statistics of many paths, in chunks (optionally on Dask), EnsembleResult;
                         Reducer: the protocol of a user statistic
    Stepper              one fixed step of a scheme at a time (for hand-written time loops)
    Solution, Stats      results
    list_schemes, get_scheme, Scheme
    ops                  math functions that work on every backend
    params               named, nested parameters (records) for the problems' functions
    problems             exact test problems (OU, GBM, linear systems, ...)
    convergence          strong/weak error studies and fitted orders; report: their tables and plots
"""

from . import convergence, ops, params, problems, report
from .backends import BACKENDS
from .brownian import BrownianBlock, BrownianPath
from .ensemble import EnsembleResult, Reducer, ensemble
from .events import Event, EventLog
from .problem import ODE, SDE
from .schemes import Scheme, get_scheme, list_schemes
from .semilinear import SemilinearODE
from .solution import Solution, Stats
from .solve import solve
from .stepping import Stepper
from .transform import time_change

__all__ = [
    "SDE", "ODE", "BrownianPath", "params", "solve", "Solution", "Stats", "Scheme", "get_scheme", "list_schemes", "ops",
    "problems", "convergence", "report", "SemilinearODE", "time_change", "BACKENDS", "Stepper", "BrownianBlock",
    "ensemble", "EnsembleResult", "Reducer", "Event", "EventLog",
]
__version__ = "0.1.0"

"""Chunks of an ensemble as Dask tasks (the optional ``distributed`` extra).

:func:`map_chunks` runs a function on a stream of chunk specifications on a ``dask.distributed.Client`` and yields
the results as the chunks finish, keeping only a bounded number of tasks submitted at a time, so an ensemble of
10^5 chunks never holds 10^5 futures (or their results) at once. Dask is imported only when it is called.

Order of completion is arbitrary; the caller (``sdekit.ensemble``) merges the results in a fixed tree order keyed by
the chunk index, which makes the statistics independent of it. A task whose worker dies is rescheduled by the Dask
scheduler on another worker (a lost result of a finished task is recomputed the same way); a task that raises is
retried ``retries`` times, and then its exception is raised here.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .checks import require

__all__ = ["map_chunks"]


def map_chunks(client, fn: Callable[[Any], Any], specs: Iterable, *, retries: int = 2, progress: bool = False,
               max_in_flight: int | None = None) -> Iterator[tuple[int, Any]]:
    """Run ``fn(spec)`` for every spec as Dask tasks; yield ``(index, result)`` as the tasks finish.

    Parameters
    ----------
    client : dask.distributed.Client
        The cluster to run on (a ``LocalCluster``'s client, or one connected to a scheduler of a real cluster).
    fn : callable
        The chunk function, called on a worker as ``fn(spec)``. It is serialized with cloudpickle, so it must be
        importable on the workers or picklable by value (closures and lambdas are).
    specs : iterable
        The chunk specifications, consumed lazily: at most ``max_in_flight`` of them are on the cluster at a time.
        ``index`` is the position of the spec in this iterable.
    retries : int, default 2
        How many times Dask reruns a task that raised before its error is raised here. A task lost with its
        worker is rescheduled regardless (Dask's ``distributed.scheduler.allowed-failures`` bounds how many
        worker deaths one task may cause).
    progress : bool, default False
        Show a tqdm bar over the chunks (its total is ``len(specs)`` when the iterable has one).
    max_in_flight : int, optional
        Tasks submitted and not yet collected; default four times the number of worker threads of the cluster
        (at least 16), so that every thread has tasks queued while finished ones travel back. The results of
        finished tasks are collected in batches, one round trip to the cluster per batch, and the next tasks are
        submitted before a batch is handed to the caller: at most ``max_in_flight`` specs are on the cluster, and
        at most as many results wait here for the caller.

    Yields
    ------
    (int, object)
        The index of the spec and ``fn(spec)``, in order of completion.

    Raises
    ------
    sdekit.checks.MissingDependency
        When ``dask.distributed`` is not installed (it names the ``distributed`` extra).
    ValueError
        For ``retries < 0`` or ``max_in_flight < 1``.
    """
    distributed = require("distributed", extra="distributed", what="sdekit.ensemble(client=...)")
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ValueError(f"`retries` must be an integer >= 0, got {retries!r}.")
    if max_in_flight is None:
        max_in_flight = max(16, 4 * sum(client.nthreads().values()))
    elif not isinstance(max_in_flight, int) or isinstance(max_in_flight, bool) or max_in_flight < 1:
        raise ValueError(f"`max_in_flight` must be an integer >= 1, got {max_in_flight!r}.")
    return _stream(distributed, client, fn, specs, retries, progress, max_in_flight)


def _stream(distributed, client, fn, specs, retries, progress, max_in_flight):
    """The generator of :func:`map_chunks` (apart, so that its checks run at the call, not at the first result)."""
    from tqdm.auto import tqdm

    total = len(specs) if hasattr(specs, "__len__") else None
    run = uuid.uuid4().hex[:12]  # one name per call: task keys are unique on the scheduler and readable on its dashboard
    pending = enumerate(specs)
    in_flight = {}  # task key -> (index, future)
    # results come with their futures, gathered in batches: one round trip to the cluster per batch, not per task
    done = distributed.as_completed(with_results=True)

    def submit(count: int) -> None:
        batch = list(itertools.islice(pending, count))
        if not batch:
            return
        keys = [f"sdekit-chunk-{run}-{index}" for index, _ in batch]
        futures = client.map(fn, [spec for _, spec in batch], key=keys, pure=False, retries=retries)
        for (index, _), future in zip(batch, futures, strict=True):
            in_flight[future.key] = index, future
        done.update(futures)

    bar = tqdm(total=total, disable=not progress, desc="chunks", unit="chunk")
    try:
        submit(max_in_flight)
        for batch in done.batches():  # raises a task's error once its retries are spent
            finished = [(in_flight.pop(future.key)[0], result) for future, result in batch]
            for future, _ in batch:
                future.release()  # the result now lives here only; the cluster may forget it
            submit(max_in_flight - len(in_flight))
            bar.update(len(finished))
            yield from finished
    finally:
        bar.close()
        if in_flight:  # stopped early (an error, or the caller closed the iterator): cancel the rest
            client.cancel([future for _, future in in_flight.values()])

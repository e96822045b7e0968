"""Ensembles on a Dask cluster (``sdekit._distributed.map_chunks`` and ``sdekit.ensemble(client=...)``).

A ``LocalCluster`` of two single-threaded worker processes is started inside the module (nothing external). The
results must equal the one-machine run bit for bit, including when a worker dies in the middle of the run.
"""

import os
import sys
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
import cloudpickle  # noqa: E402  (a dependency of distributed)

from sdekit._distributed import map_chunks  # noqa: E402
from sdekit.checks import MissingDependency  # noqa: E402

# The functions below run on the workers, which cannot import this test module: ship them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as c:
            yield c


def _square_after_a_while(spec):
    index, pause = spec
    time.sleep(pause)
    return index * index


def _fail_on_three(spec):
    if spec == 3:
        raise RuntimeError("chunk 3 failed")
    return spec


def test_map_chunks_yields_each_result_once_and_submits_lazily(client):
    consumed = []

    def specs():
        for i in range(12):
            consumed.append(i)
            yield i, 0.02 * ((7 * i) % 5)  # uneven durations: completion order differs from submission order

    seen = {}
    for index, result in map_chunks(client, _square_after_a_while, specs(), max_in_flight=3):
        # at most 3 tasks on the cluster, and at most 3 finished results (one batch) waiting to be yielded
        assert len(consumed) - len(seen) <= 2 * 3
        seen[index] = result
    assert seen == {i: i * i for i in range(12)}


def test_map_chunks_raises_a_task_error_after_its_retries(client):
    with pytest.raises(RuntimeError, match="chunk 3 failed"):
        for _ in map_chunks(client, _fail_on_three, range(8), retries=1):
            pass


def test_map_chunks_checks_its_arguments(client):
    with pytest.raises(ValueError, match="`retries` must be an integer >= 0"):
        map_chunks(client, _fail_on_three, range(2), retries=-1)
    with pytest.raises(ValueError, match="`max_in_flight` must be an integer >= 1"):
        map_chunks(client, _fail_on_three, range(2), max_in_flight=0)


def test_without_dask_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # what an installation without the extra sees
    with pytest.raises(MissingDependency, match=r'-e "\.\[distributed\]"'):
        map_chunks(None, _fail_on_three, range(2))


def test_importing_sdekit_imports_no_dask():
    import subprocess

    code = "import sys, sdekit; print(sorted(m for m in ('dask', 'distributed') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def _exit_the_worker_once(marker):
    """``os._exit`` the worker running this, the first time any worker calls it (``marker`` is created atomically)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return
    os._exit(1)


def _square_or_exit(spec):
    index, marker = spec
    if index == 6:  # the first attempt of chunk 6 takes its worker down with it, after chunks have finished
        _exit_the_worker_once(marker)
    time.sleep(0.05)
    return index * index


def test_map_chunks_survives_a_worker_that_dies(client, tmp_path):
    marker = str(tmp_path / "exited")
    results = dict(map_chunks(client, _square_or_exit, [(i, marker) for i in range(16)]))
    assert os.path.exists(marker)  # a worker did exit
    assert results == {i: i * i for i in range(16)}


# ---------------------------------------------------------------------------------------------- sdekit.ensemble on Dask

# floating-point sums merged in the tree, and the quantile sketch: the statistics whose values depend on the merge
# order unless the order is fixed (counts, minima and maxima do not)
STATISTICS = ("mean", "var", "quantiles")


def _ou_ensemble(client, n_paths, chunk_paths):
    import sdekit
    from sdekit import problems

    ou = problems.ornstein_uhlenbeck()
    return sdekit.ensemble(ou.problem, ou.x0, ou.t_span, method="euler", n_steps=4, n_paths=n_paths, seed=7,
                           save_at=[0.5, 1.0], statistics=STATISTICS, chunk_paths=chunk_paths, client=client)


def _assert_identical(a, b):
    for name in ("mean", "mean_se", "var", "var_se", "quantiles"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert (a.n_paths, a.n_failed) == (b.n_paths, b.n_failed)


@pytest.fixture(scope="module")
def one_machine():
    """10^6 OU paths in one chunk, in this process: the reference of the Dask runs."""
    return _ou_ensemble(None, 10**6, 10**6)


def test_a_cluster_gives_the_one_machine_result(client, one_machine):
    on_dask = _ou_ensemble(client, 10**6, 3 * 4096)  # 82 chunks of 3 leaves (the last one of 2), on 2 workers
    assert on_dask.n_chunks == 82 and one_machine.n_chunks == 1
    _assert_identical(on_dask, one_machine)


def _chunk_or_exit(run_chunk, marker, exit_at_leaf, chunk):
    """The ensemble's chunk function, but the first attempt of the chunk starting at ``exit_at_leaf`` kills its worker."""
    if chunk.first_leaf == exit_at_leaf:
        _exit_the_worker_once(marker)
    return run_chunk(chunk)


def test_a_worker_killed_mid_run_changes_nothing(client, one_machine, tmp_path, monkeypatch):
    import functools

    from sdekit import _distributed

    marker = str(tmp_path / "exited")
    real_map_chunks = _distributed.map_chunks

    def map_chunks_that_kill_a_worker(client_, fn, specs, **kwargs):
        # chunks of 8 leaves: 31 chunks, at most 4 in flight, so the 16th (which kills its worker) is submitted
        # after at least 12 chunks have finished and been collected
        return real_map_chunks(client_, functools.partial(_chunk_or_exit, fn, marker, 15 * 8), specs,
                               max_in_flight=4, **kwargs)

    monkeypatch.setattr(_distributed, "map_chunks", map_chunks_that_kill_a_worker)
    on_dask = _ou_ensemble(client, 10**6, 8 * 4096)
    assert os.path.exists(marker), "no worker was killed"
    _assert_identical(on_dask, one_machine)

"""Ensembles on a Dask cluster (``sdekit._distributed.map_chunks`` and ``sdekit.ensemble(client=...)``).

A ``LocalCluster`` of two single-threaded worker processes is started inside the module (nothing external). The
results must equal the one-machine run bit for bit, including when a worker dies in the middle of the run.
"""

import os
import sys
import time

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
        assert len(consumed) - (len(seen) + 1) <= 3  # never more than 3 tasks submitted and not collected
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

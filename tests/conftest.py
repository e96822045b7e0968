import os

# Two xdist workers share two cores, each with torch's (and Numba's) two OpenMP threads: a thread that spins at a
# barrier while its partner waits for a core makes torch training 2-20x slower (300 MLP steps: 2.0 s alone, 6.3 s
# beside one busy core, 2.3 s so with passive waiting). Set before torch or Numba loads; subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest
from hypothesis import settings

# Seeded, reproducible property tests: the same examples on every run.
settings.register_profile("sdekit", derandomize=True, deadline=None, max_examples=6, print_blob=True)
settings.load_profile("sdekit")


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:  # torch is imported only where a test asks for CUDA (a run of sdekit's tests alone skips it)
        return
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in gpu_items:
        if not has_cuda:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _quiet_numpy():
    with np.errstate(over="ignore", invalid="ignore"):
        yield


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

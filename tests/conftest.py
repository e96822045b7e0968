import os

import numpy as np
import pytest
from hypothesis import settings

# Seeded, reproducible property tests: the same examples on every run.
settings.register_profile("sdekit", derandomize=True, deadline=None, max_examples=6, print_blob=True)
settings.load_profile("sdekit")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _quiet_numpy():
    with np.errstate(over="ignore", invalid="ignore"):
        yield


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

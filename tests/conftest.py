import os
import sys

import pytest
import torch

# the naive references live next to the tests
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seeded, and one thread: the tests' models are tiny, extra threads only contend."""
    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

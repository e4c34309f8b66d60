import os
import sys

import pytest
import torch

# the naive references live next to the tests
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

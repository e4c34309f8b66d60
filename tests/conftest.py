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


@pytest.fixture(autouse=True)
def _checkpoints_untrusted_after_each_test():
    """No test leaves the full unpickler on for the tests after it (in its worker process)."""
    from dbm_ltr.serialization import trust_checkpoints, trusted

    yield
    if trusted():
        trust_checkpoints(False)
        pytest.fail("the test left trust_checkpoints on: later reads would run pickled code")


@pytest.fixture(scope="session")
def fake_cifar10(tmp_path_factory):
    """Tiny CIFAR-10 in the .npz format of ../shared/data: 40 train / 10 test images a class."""
    from fakes import write_fake_cifar_npz

    return write_fake_cifar_npz(tmp_path_factory.mktemp("cifar10"), 10, 40, 10)


@pytest.fixture(scope="session")
def fake_cifar10_root(fake_cifar10):
    """The same tiny CIFAR-10 (the analysis and experiment tests' name for it)."""
    return fake_cifar10

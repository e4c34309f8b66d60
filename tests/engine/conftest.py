import pytest
from fakes import write_fake_cifar_npz


@pytest.fixture(scope="session")
def fake_cifar10(tmp_path_factory):
    """Tiny CIFAR-10 in the .npz format of ../shared/data: 40 train / 10 test images a class."""
    return write_fake_cifar_npz(tmp_path_factory.mktemp("cifar10"), 10, 40, 10)


def tiny_overrides(root, epochs=2):
    """A seconds-long CIFAR-10-LT run: IF 10 on the fake set (159 images), 2 epochs."""
    return [
        f"data.root={root}", f"optim.epochs={epochs}", "optim.warmup_epochs=1",
        "data.imbalance_factor=10", "data.workers=0", "optim.batch_size=32", "train.progress=false",
        "data.eval_batch_size=100",
    ]
